/* virtio-pmem (virtio 1.2, 5.19): a host file mapped into the guest's
 * physical address space as persistent memory. The guest reads and writes
 * the mapping directly (no request per access); its only request is FLUSH,
 * which makes what it wrote durable in the file (msync).
 *
 * The file is opened and mapped here, at configuration time (before any
 * seccomp filter); the machine (vmm/devices.c) then places the mapping in
 * guest physical memory as its own KVM memory slot, read-only when asked,
 * and tells the device where with virtio_pmem_set_region(). The mapping
 * is a whole number of 2 MiB (the device's alignment, 5.19.6): a file of
 * another size is mapped in full and the rest of the last 2 MiB is private
 * anonymous memory that the guest can use but that never reaches the
 * file. */
#ifndef EMBER_VIRTIO_PMEM_H
#define EMBER_VIRTIO_PMEM_H

#include "util/ratelimit.h"
#include "virtio/device.h"

#define VIRTIO_PMEM_ALIGN      (2ULL << 20)
#define VIRTIO_PMEM_QUEUE_SIZE 256

/* Requests and responses (5.19.6). */
#define VIRTIO_PMEM_REQ_TYPE_FLUSH 0
#define VIRTIO_PMEM_RESP_OK        0
#define VIRTIO_PMEM_RESP_EIO       1

struct pmem_options {
    const char *id; /* the API's id, for logs and metrics */
    const char *path;
    bool readonly; /* mapped PROT_READ, a read-only memory slot */
    /* Each flush costs one op and the file's size in bytes, as in Firecracker. */
    struct rate_limit_config rate_limit;
};

/* One request waiting for the flush of its batch: where its response goes
 * (at most 4 writable buffers make up the 4 bytes of it). */
struct pmem_pending {
    uint32_t head;
    uint8_t nresp;
    uint8_t *resp[4];
    uint8_t resp_len[4];
    uint32_t ret; /* 0 until the batch's flush says otherwise; EIO for a bad request */
};

struct virtio_pmem {
    struct virtio_dev dev;
    struct pmem_options opts;
    int fd;
    uint8_t *map;      /* map_len bytes: the file, then anonymous memory */
    uint64_t file_len; /* bytes of the file, flushed by FLUSH */
    uint64_t map_len;  /* file_len rounded up to VIRTIO_PMEM_ALIGN: the guest's size */
    uint64_t gpa;      /* where the guest sees it (config space `start`) */
    struct virtq_chain chain;
    struct pmem_pending *pending; /* VIRTIO_PMEM_QUEUE_SIZE of them */
    struct token_bucket ops_bucket, bytes_bucket;
    int timer_fd; /* the rate limiter's wait, or a yield after a full batch */
    struct event_handler *timer_handler;
    bool throttled;
    bool frozen;                   /* a snapshot is being taken: nothing is taken from the ring */
    struct log_limit log_flush;    /* msync failures */
    struct log_limit log_ro_write; /* guest writes to a read-only mapping */
    /* Counters for metrics (iothread writes, others read; ro_writes and
     * config_writes are the vCPUs', atomically). */
    uint64_t requests, flushes, flush_fails, bad_requests, queue_events, throttled_events;
    uint64_t limiter_events;
    uint64_t activate_fails, config_writes, ro_writes;
};

/* Opens and maps the file; the device is ready but not yet placed. */
int virtio_pmem_init(struct virtio_pmem *p, const char *name, const struct pmem_options *o,
                     const struct guest_memory *mem);
/* Where the guest finds the mapping (2 MiB aligned); before the guest runs. */
void virtio_pmem_set_region(struct virtio_pmem *p, uint64_t gpa);
/* The MMIO exits of a read-only mapping: KVM turns the guest's writes to a
 * read-only slot into MMIO writes, which are dropped here (the file never
 * changes) with a rate-limited warning. A bus_io_fn; vCPU threads. */
void virtio_pmem_readonly_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                             bool is_write);
/* New rate limits (PATCH /pmem/{id}); any thread. */
void virtio_pmem_change_limits(struct virtio_pmem *p, const struct rate_limit_config *rl);
void virtio_pmem_destroy(struct virtio_pmem *p);

#endif
