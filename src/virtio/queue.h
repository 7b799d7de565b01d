/* Split virtqueues (virtio 1.2, section 2.7), device side. Every value read
 * from the guest is checked before use: ring placement, descriptor indexes,
 * chain length, buffer addresses and lengths, buffer direction, avail index
 * jumps. A violation marks the queue broken and returns an error; the
 * device then asks the driver for a reset (DEVICE_NEEDS_RESET). */
#ifndef EMBER_VIRTIO_QUEUE_H
#define EMBER_VIRTIO_QUEUE_H

#include "vmm/memory.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define VIRTQ_MAX_SIZE 32768

#define VIRTQ_DESC_F_NEXT     1
#define VIRTQ_DESC_F_WRITE    2
#define VIRTQ_DESC_F_INDIRECT 4

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct virtq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[]; /* then used_event */
};

struct virtq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct virtq_used {
    uint16_t flags;
    uint16_t idx;
    struct virtq_used_elem ring[]; /* then avail_event */
};

/* Packed rings (2.8): one descriptor ring used both ways, and two event
 * suppression areas in place of the avail and used rings. */
#define VIRTQ_PACKED_F_AVAIL (1u << 7)
#define VIRTQ_PACKED_F_USED  (1u << 15)

struct virtq_packed_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
};

#define VIRTQ_EVENT_ENABLE  0
#define VIRTQ_EVENT_DISABLE 1
#define VIRTQ_EVENT_DESC    2

struct virtq_packed_event {
    uint16_t off_wrap; /* descriptor index, wrap counter in bit 15 */
    uint16_t flags;
};

/* What the driver programmed (through a transport) for one queue. For a
 * packed ring, avail_gpa is the driver event area and used_gpa the device
 * event area. */
struct virtq_config {
    uint16_t size;
    uint64_t desc_gpa, avail_gpa, used_gpa;
    bool packed; /* VIRTIO_F_RING_PACKED negotiated */
};

struct virtq {
    const struct guest_memory *mem;
    uint16_t size;
    bool event_idx; /* VIRTIO_F_EVENT_IDX negotiated */
    bool indirect;  /* VIRTIO_F_INDIRECT_DESC negotiated */
    bool broken;
    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    uint16_t last_avail; /* next avail entry to take */
    uint16_t used_idx;   /* shadow of used->idx */
    uint16_t signalled;  /* used_idx when we last interrupted */
    bool signalled_valid;
    /* Packed rings: positions and wrap counters on each side. */
    bool packed;
    struct virtq_packed_desc *pdesc;
    struct virtq_packed_event *driver_event, *device_event;
    uint16_t next_avail, next_used;
    bool avail_wrap, used_wrap;
    bool signalled_wrap;
    uint16_t popped[64]; /* ring slots of the last chains popped, for unpop */
    unsigned npopped;
    char error[160]; /* first violation, for the log */
};

/* One buffer of a chain, already translated to host memory. */
struct virtq_buf {
    uint8_t *hva;
    uint32_t len;
};

/* A descriptor chain popped from the avail ring. Readable buffers come
 * first (out[]), then writable ones (in[]), as the spec requires. */
struct virtq_chain {
    /* What virtq_push needs to return it: the head descriptor (split), or
     * the buffer id and the ring slots it took (packed). Opaque. */
    uint32_t head;
    unsigned nout, nin;
    uint64_t out_len, in_len;
    unsigned capacity;              /* of bufs[] */
    struct virtq_buf *bufs;         /* out[0..nout) then in[0..nin) */
    const struct guest_memory *mem; /* the queue's, for virtq_chain_mark_written */
};

/* Validates placement and alignment and maps the rings. */
int virtq_init(struct virtq *q, const struct guest_memory *mem, const struct virtq_config *cfg,
               bool event_idx, bool indirect);
/* Allocates room for the longest chain a queue of this size may carry. */
int virtq_chain_alloc(struct virtq_chain *c, unsigned capacity);
void virtq_chain_free(struct virtq_chain *c);

/* Whether virtq_init set the queue up. A queue that was not (zeroed: the
 * driver did not enable it) is absent: it pops nothing, takes no pushes,
 * never asks for an interrupt and has no kicks to enable. */
bool virtq_is_set_up(const struct virtq *q);
/* Takes the next available chain: 1 taken, 0 none pending, -1 violation
 * (q->error says which; the queue is then broken). */
int virtq_pop(struct virtq *q, struct virtq_chain *chain);
/* Gives the last n popped chains back (at most 64), to be popped again. */
void virtq_unpop(struct virtq *q, uint16_t n);
/* Returns a chain's head with the number of bytes written into it. */
void virtq_push(struct virtq *q, uint32_t head, uint32_t written);
/* Whether the driver wants an interrupt for what was pushed since the last
 * time this returned true (EVENT_IDX or NO_INTERRUPT). */
bool virtq_should_notify(struct virtq *q);
/* Asks the driver not to kick (false) or to kick (true) for new buffers.
 * After enabling, returns true when buffers arrived meanwhile (re-check). */
bool virtq_enable_kicks(struct virtq *q, bool enable);
/* Asks the driver to kick when it adds buffers beyond those in the ring now (for a device that
 * looked at them and found them too few), and returns true when some were added meanwhile. */
bool virtq_enable_kicks_for_more(struct virtq *q);
bool virtq_has_avail(struct virtq *q);

/* Where the device stands in a ring, for snapshots: the next avail entry it takes and the
 * next used entry it writes (split: free-running 16-bit indices), or, for a packed ring, the
 * two positions with their wrap counters. */
struct virtq_position {
    uint16_t next_avail, next_used;
    bool avail_wrap, used_wrap;
};
void virtq_get_position(const struct virtq *q, struct virtq_position *p);
/* Puts a ring that virtq_init just set up at p (checked: a packed position inside the ring;
 * a split ring's used index at most a ring's length behind its avail index). The next
 * interrupt decision is made as after a reset (no notification is assumed sent). */
int virtq_set_position(struct virtq *q, const struct virtq_position *p);

/* Logs the first `written` bytes of the chain's writable buffers as written by the device
 * again (vmm/dirty.h), right before its push: virtq_pop logged them when they were taken, but
 * a live migration may have collected the log between the two, before the data landed. */
void virtq_chain_mark_written(const struct virtq_chain *c, uint64_t written);

/* Copies helpers over a chain's readable/writable buffers. */
size_t virtq_chain_read(const struct virtq_chain *c, uint64_t offset, void *dst, size_t len);
size_t virtq_chain_write(const struct virtq_chain *c, uint64_t offset, const void *src, size_t len);

#endif
