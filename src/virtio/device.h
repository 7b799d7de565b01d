/* What every virtio device shares, whatever its transport: feature
 * negotiation, the status state machine, queues and their kick eventfds,
 * interrupts, reset, and the DEVICE_NEEDS_RESET path for guest errors.
 *
 * The life cycle, one rule for every device and both transports (virtio
 * 1.2, 2.1 and 3.1): status bits are only ever added; the only way back is
 * a reset (status 0). A write that would clear a bit, a ring the device
 * cannot serve or a request that breaks the rules stops the device and sets
 * DEVICE_NEEDS_RESET, after which nothing but a reset is accepted. Queue
 * registers are read-only while the device is live or needs a reset, a
 * queue's layout while that queue is enabled. A queue the driver did not
 * enable is absent: nothing is taken from it, written to it or signalled.
 *
 * Threads: transports run on vCPU threads and take dev->lock; the device's
 * I/O work runs on its iothread. Activation and reset are handed to the
 * iothread with iothread_call(), so queue state has one owner. The iothread
 * never takes dev->lock (a vCPU may hold it while waiting for the iothread);
 * status and config_generation are updated atomically for that reason. */
#ifndef EMBER_VIRTIO_DEVICE_H
#define EMBER_VIRTIO_DEVICE_H

#include "util/iothread.h"
#include "util/log.h"
#include "virtio/queue.h"
#include "vmm/memory.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

/* Reserved feature bits (6). */
#define VIRTIO_F_INDIRECT_DESC   28
#define VIRTIO_F_EVENT_IDX       29
#define VIRTIO_F_VERSION_1       32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_RING_PACKED     34

/* Device types (5). */
#define VIRTIO_ID_NET     1
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK   19
#define VIRTIO_ID_FS      26
#define VIRTIO_ID_PMEM    27

#define VIRTIO_NO_VECTOR 0xffff

struct virtio_dev;
struct snapshot_writer;
struct snapshot_cursor;

/* Device-specific behaviour. Calls marked [io] run on the device's
 * iothread; the others on the thread that touched the register. */
struct virtio_dev_ops {
    /* Reads/writes of the device-specific configuration space; offset and
     * len are already checked against config_size. */
    void (*read_config)(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len);
    void (*write_config)(struct virtio_dev *d, uint32_t offset, const void *data, uint32_t len);
    /* [io] The driver set DRIVER_OK; queues are mapped. Start serving. */
    int (*activate)(struct virtio_dev *d);
    /* [io] Stop serving and forget queue state; in-flight requests finish
     * first. Called on driver reset, on DEVICE_NEEDS_RESET and at exit. */
    void (*quiesce)(struct virtio_dev *d);
    /* [io] The driver kicked queue q (or polling found work). */
    void (*queue_notify)(struct virtio_dev *d, unsigned q);
    /* Feature bits that only make sense together get checked here; return
     * false to refuse FEATURES_OK. */
    bool (*features_ok)(struct virtio_dev *d, uint64_t features);

    /* Snapshots (vmm/snapshot.c), all optional. The vCPUs are paused first.
     * [io] freeze: finish every request in flight (data in guest memory,
     * chain in the used ring) and take back from any kernel data path
     * (vhost) the rings it serves, so that the queue positions describe
     * everything; afterwards the device's iothread is held (it runs nothing)
     * until the snapshot is written.
     * save / restore: the model's own state (rate limiter budgets, ...),
     * after the common state in the device's section; restore runs on a new
     * device before its activation and rejects values it cannot take.
     * [io] thaw: the snapshot is written; serve again as before freeze.
     * [io] restored: a restored device is active again (vsock sends its
     * TRANSPORT_RESET event here). */
    void (*freeze)(struct virtio_dev *d);
    void (*save)(struct virtio_dev *d, struct snapshot_writer *w);
    int (*restore)(struct virtio_dev *d, struct snapshot_cursor *c);
    void (*thaw)(struct virtio_dev *d);
    void (*restored)(struct virtio_dev *d);
};

/* How a transport delivers an interrupt. Called from the iothread. */
struct virtio_transport_ops {
    void (*notify_queue)(struct virtio_dev *d, unsigned q);
    void (*notify_config)(struct virtio_dev *d);
    /* Optional: an eventfd that, written by anyone, interrupts the driver for queue q as
     * notify_queue does, masking honoured with no hop through ember (PCI with MSI-X on:
     * the queue's vector, bound in KVM while deliverable); -1 when there is none now (INTx,
     * no vector, mmio, whose interrupt status register ember must set). For data paths
     * outside ember (a vhost-user back-end). Valid until the device is reset. */
    int (*queue_irqfd)(struct virtio_dev *d, unsigned q);
};

struct virtio_queue {
    struct virtio_dev *dev;
    unsigned index;
    struct virtq_config cfg; /* as the driver programmed it */
    bool enabled;
    uint16_t msix_vector;
    int kick_fd; /* eventfd signalled by KVM (ioeventfd) or the transport */
    struct event_handler *kick_handler;
    struct virtq vq; /* valid while the device is active */
    /* A restored queue's position, applied when it is set up again. */
    struct virtq_position restore_position;
    bool has_restore_position;
    uint64_t kicks; /* the driver's notifications of this queue (metrics) */
};

struct virtio_dev {
    char name[16];
    uint32_t device_id;
    uint64_t host_features;
    uint64_t driver_features;
    uint8_t status;
    uint32_t config_generation;
    uint32_t config_size;
    unsigned nqueues;
    uint16_t queue_max_size;
    struct virtio_queue *queues;
    const struct guest_memory *mem;
    const struct virtio_dev_ops *ops;
    const struct virtio_transport_ops *transport;
    void *transport_opaque;
    void *opaque; /* the device model */
    pthread_mutex_t lock;
    struct iothread io;
    bool active;         /* [io] queues are being served */
    bool kicks_external; /* a kernel data path (vhost) takes the kicks */
    bool restore_active; /* restored from a live device: to activate */
    /* What the driver gets wrong, logged with a rate limit per kind: broken
     * rings and requests, status and feature misuse, ignored register writes. */
    struct log_limit log_guest_error, log_status, log_register;
    /* Counters for metrics: interrupts sent, notifications taken (all queues), DRIVER_OKs
     * that could not activate the device, configuration accesses outside its space or to
     * a read-only one. */
    uint64_t interrupts, kicks, activate_fails, cfg_fails;
};

int virtio_dev_init(struct virtio_dev *d, const char *name, uint32_t device_id, uint64_t features,
                    unsigned nqueues, uint16_t queue_max_size, uint32_t config_size,
                    const struct virtio_dev_ops *ops, void *opaque, const struct guest_memory *mem);
/* The same, its I/O thread confined by the seccomp filter of kind `confinement` (enum
 * seccomp_kind) instead of its device type's: a device whose thread does other work (a
 * vhost-user back-end's socket). */
int virtio_dev_init_confined(struct virtio_dev *d, const char *name, uint32_t device_id,
                             uint64_t features, unsigned nqueues, uint16_t queue_max_size,
                             uint32_t config_size, const struct virtio_dev_ops *ops, void *opaque,
                             const struct guest_memory *mem, int confinement);
void virtio_dev_destroy(struct virtio_dev *d);

/* ---- for transports (hold d->lock) ---------------------------------- */

/* Applies a status write: reset on 0, feature check on FEATURES_OK,
 * activation on DRIVER_OK. */
void virtio_dev_set_status(struct virtio_dev *d, uint8_t status);
/* The device's 32 feature bits from word sel (0 or 1; others read 0). */
uint32_t virtio_dev_host_features(const struct virtio_dev *d, uint32_t sel);
void virtio_dev_set_driver_features(struct virtio_dev *d, uint32_t sel, uint32_t value);
/* Device configuration space: an access outside it reads zeros and writes
 * nothing (offset and len are the guest's, checked here in 64 bits). */
void virtio_dev_config_access(struct virtio_dev *d, uint64_t offset, void *data, uint32_t len,
                              bool is_write);

/* The queue registers a driver programs, whatever the transport calls them. */
enum virtio_queue_reg {
    VIRTIO_QUEUE_SIZE,
    VIRTIO_QUEUE_DESC,   /* descriptor area */
    VIRTIO_QUEUE_DRIVER, /* driver area (avail ring) */
    VIRTIO_QUEUE_DEVICE, /* device area (used ring) */
    VIRTIO_QUEUE_ENABLE,
};
/* Writes the bits `mask` of queue q's register from `value`, if the life
 * cycle allows it now (see above); an ignored write is logged with a rate
 * limit. Returns whether it was taken. */
bool virtio_dev_write_queue(struct virtio_dev *d, unsigned q, enum virtio_queue_reg reg,
                            uint64_t value, uint64_t mask);
/* A notify register write that did not go through an ioeventfd. */
void virtio_dev_kick(struct virtio_dev *d, unsigned q);
/* Stops a live device without a reset (PCI bus mastering turned off):
 * in-flight requests finish, nothing new is taken, and DEVICE_NEEDS_RESET
 * is set: the driver resets the device to use it again. Not logged: a
 * driver may do this. */
void virtio_dev_stop(struct virtio_dev *d);

/* ---- snapshots (vmm/snapshot.c) -------------------------------------- */

/* With the vCPUs paused: the model finishes what is in flight (ops->freeze),
 * then the iothread is held. */
int virtio_dev_freeze(struct virtio_dev *d);
/* The iothread released, the model serves again (ops->thaw). */
void virtio_dev_thaw(struct virtio_dev *d);
/* The common state (features, status, each queue's registers and position),
 * then the model's (ops->save). On a frozen device. */
void virtio_dev_save(struct virtio_dev *d, struct snapshot_writer *w);
/* Into a device just made from the same configuration, never activated:
 * every value is checked against what this device offers. The transport's
 * state follows, then virtio_dev_resume_restored. */
int virtio_dev_restore(struct virtio_dev *d, struct snapshot_cursor *c);
/* A device that was live when saved serves again from the saved positions
 * (ops->activate, then ops->restored); others stay as restored. */
int virtio_dev_resume_restored(struct virtio_dev *d);

/* ---- for device models (iothread) ---------------------------------- */

/* Interrupts the driver for queue q if it asked for it (EVENT_IDX etc.). */
void virtio_dev_signal_used(struct virtio_dev *d, unsigned q);
/* A guest error: log once, set DEVICE_NEEDS_RESET, stop serving, raise a
 * configuration interrupt. Other devices are unaffected. */
void virtio_dev_fail(struct virtio_dev *d, const char *why);
/* The same when the host side failed (a back-end process gone): logged once as such. */
void virtio_dev_fail_host(struct virtio_dev *d, const char *why);
/* The next chain of queue q, for a device that serves a queue until it is empty: 1 with a
 * chain; 0 when empty, the driver's kicks then enabled (and the ring looked at once more, so
 * that a chain added meanwhile does not wait for a kick that will not come); -1 when the
 * queue broke, the device then failed. Iothread only. */
int virtio_dev_pop(struct virtio_dev *d, unsigned q, struct virtq_chain *chain);
bool virtio_dev_has_feature(const struct virtio_dev *d, unsigned bit);
/* Whether queue q is being served: the device is active and the driver
 * enabled q before DRIVER_OK. Anything else is an absent queue. Iothread. */
bool virtio_dev_queue_live(const struct virtio_dev *d, unsigned q);
/* Starts watching kick eventfds on the iothread (called by activate). */
int virtio_dev_watch_kicks(struct virtio_dev *d);

#endif
