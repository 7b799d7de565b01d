#include "virtio/device.h"

#include "sandbox/seccomp.h"
#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

int virtio_dev_init(struct virtio_dev *d, const char *name, uint32_t device_id, uint64_t features,
                    unsigned nqueues, uint16_t queue_max_size, uint32_t config_size,
                    const struct virtio_dev_ops *ops, void *opaque, const struct guest_memory *mem)
{
    return virtio_dev_init_confined(d, name, device_id, features, nqueues, queue_max_size,
                                    config_size, ops, opaque, mem,
                                    seccomp_kind_of_device(device_id));
}

int virtio_dev_init_confined(struct virtio_dev *d, const char *name, uint32_t device_id,
                             uint64_t features, unsigned nqueues, uint16_t queue_max_size,
                             uint32_t config_size, const struct virtio_dev_ops *ops, void *opaque,
                             const struct guest_memory *mem, int confinement)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->name, sizeof(d->name), "%s", name);
    d->device_id = device_id;
    /* Modern devices only; indirect descriptors, event index and packed
     * rings always offered. */
    d->host_features = features | (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_INDIRECT_DESC) |
                       (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_RING_PACKED);
    d->nqueues = nqueues;
    d->queue_max_size = queue_max_size;
    d->config_size = config_size;
    d->ops = ops;
    d->opaque = opaque;
    d->mem = mem;
    pthread_mutex_init(&d->lock, NULL);
    d->queues = calloc(nqueues, sizeof(*d->queues));
    if (!d->queues)
        return error_set("out of memory");
    for (unsigned i = 0; i < nqueues; i++) {
        d->queues[i].dev = d;
        d->queues[i].index = i;
        d->queues[i].kick_fd = -1;
        d->queues[i].msix_vector = VIRTIO_NO_VECTOR;
        d->queues[i].cfg.size = queue_max_size;
    }
    for (unsigned i = 0; i < nqueues; i++) {
        d->queues[i].kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (d->queues[i].kick_fd < 0)
            return error_errno("%s: eventfd", name);
    }
    if (iothread_start(&d->io, name, confinement) < 0)
        return -1;
    return 0;
}

/* Forgets the rings of every queue: an absent queue reads as empty. */
static void wipe_rings(struct virtio_dev *d)
{
    for (unsigned i = 0; i < d->nqueues; i++)
        memset(&d->queues[i].vq, 0, sizeof(d->queues[i].vq));
}

static void quiesce_on_io(void *arg)
{
    struct virtio_dev *d = arg;
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (d->queues[i].kick_handler)
            event_loop_del(&d->io.loop, d->queues[i].kick_handler);
        d->queues[i].kick_handler = NULL;
    }
    if (d->active && d->ops->quiesce)
        d->ops->quiesce(d);
    d->active = false;
    wipe_rings(d);
}

void virtio_dev_destroy(struct virtio_dev *d)
{
    if (d->io.running) {
        iothread_call(&d->io, quiesce_on_io, d);
        iothread_stop(&d->io);
    }
    for (unsigned i = 0; d->queues && i < d->nqueues; i++) {
        if (d->queues[i].kick_fd >= 0)
            close(d->queues[i].kick_fd);
    }
    free(d->queues);
    d->queues = NULL;
    pthread_mutex_destroy(&d->lock);
    /* What the rate limits held back is counted, not lost. */
    char what[64];
    snprintf(what, sizeof(what), "%s: guest errors", d->name);
    log_limit_flush(&d->log_guest_error, LOG_WARN, what);
    snprintf(what, sizeof(what), "%s: status and feature errors", d->name);
    log_limit_flush(&d->log_status, LOG_WARN, what);
    snprintf(what, sizeof(what), "%s: ignored queue register writes", d->name);
    log_limit_flush(&d->log_register, LOG_WARN, what);
}

bool virtio_dev_has_feature(const struct virtio_dev *d, unsigned bit)
{
    return (d->driver_features >> bit) & 1;
}

bool virtio_dev_queue_live(const struct virtio_dev *d, unsigned q)
{
    return d->active && q < d->nqueues && virtq_is_set_up(&d->queues[q].vq);
}

uint32_t virtio_dev_host_features(const struct virtio_dev *d, uint32_t sel)
{
    return sel < 2 ? (uint32_t)(d->host_features >> (32 * sel)) : 0;
}

void virtio_dev_set_driver_features(struct virtio_dev *d, uint32_t sel, uint32_t value)
{
    /* Features are fixed once FEATURES_OK is set (3.1.1). */
    if (sel >= 2 || (d->status & VIRTIO_STATUS_FEATURES_OK))
        return;
    uint64_t mask = 0xffffffffULL << (32 * sel);
    d->driver_features = (d->driver_features & ~mask) | ((uint64_t)value << (32 * sel));
}

void virtio_dev_config_access(struct virtio_dev *d, uint64_t offset, void *data, uint32_t len,
                              bool is_write)
{
    if (offset > d->config_size || (uint64_t)len > d->config_size - offset) {
        __atomic_add_fetch(&d->cfg_fails, 1, __ATOMIC_RELAXED);
        if (!is_write)
            memset(data, 0, len);
        return;
    }
    if (is_write) {
        if (d->ops->write_config)
            d->ops->write_config(d, (uint32_t)offset, data, len);
        else
            __atomic_add_fetch(&d->cfg_fails, 1, __ATOMIC_RELAXED);
    } else if (d->ops->read_config) {
        d->ops->read_config(d, (uint32_t)offset, data, len);
    } else {
        memset(data, 0, len);
    }
}

static const char *const queue_reg_names[] = {
    [VIRTIO_QUEUE_SIZE] = "size",          [VIRTIO_QUEUE_DESC] = "descriptor area",
    [VIRTIO_QUEUE_DRIVER] = "driver area", [VIRTIO_QUEUE_DEVICE] = "device area",
    [VIRTIO_QUEUE_ENABLE] = "enable",
};

bool virtio_dev_write_queue(struct virtio_dev *d, unsigned index, enum virtio_queue_reg reg,
                            uint64_t value, uint64_t mask)
{
    if (index >= d->nqueues)
        return false;
    struct virtio_queue *q = &d->queues[index];
    uint8_t status = __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    /* The iothread serves the rings as they were at DRIVER_OK; changing them
     * under it, or after an error, would hand it rings nobody checked. */
    const char *why = (status & VIRTIO_STATUS_NEEDS_RESET)         ? "the device needs a reset"
                      : (status & VIRTIO_STATUS_DRIVER_OK)         ? "the device is live"
                      : (q->enabled && reg != VIRTIO_QUEUE_ENABLE) ? "the queue is enabled"
                                                                   : NULL;
    if (why) {
        log_limited(&d->log_register, LOG_WARN, "%s: queue %u %s written while %s; ignored",
                    d->name, index, queue_reg_names[reg], why);
        return false;
    }
    switch (reg) {
    case VIRTIO_QUEUE_SIZE:
        q->cfg.size = (uint16_t)((q->cfg.size & ~mask) | (value & mask));
        break;
    case VIRTIO_QUEUE_DESC:
        q->cfg.desc_gpa = (q->cfg.desc_gpa & ~mask) | (value & mask);
        break;
    case VIRTIO_QUEUE_DRIVER:
        q->cfg.avail_gpa = (q->cfg.avail_gpa & ~mask) | (value & mask);
        break;
    case VIRTIO_QUEUE_DEVICE:
        q->cfg.used_gpa = (q->cfg.used_gpa & ~mask) | (value & mask);
        break;
    case VIRTIO_QUEUE_ENABLE:
        q->enabled = value & mask & 1;
        break;
    }
    return true;
}

static void on_kick(void *opaque, uint32_t events)
{
    struct virtio_queue *q = opaque;
    struct virtio_dev *d = q->dev;
    (void)events;
    /* Edge-triggered: every signal of the eventfd wakes us, so its counter
     * need not be read back (a system call saved per kick). */
    d->kicks++;
    q->kicks++;
    if (virtio_dev_queue_live(d, q->index) && !q->vq.broken && d->ops->queue_notify)
        d->ops->queue_notify(d, q->index);
}

int virtio_dev_watch_kicks(struct virtio_dev *d)
{
    if (d->kicks_external)
        return 0;
    for (unsigned i = 0; i < d->nqueues; i++) {
        struct virtio_queue *q = &d->queues[i];
        if (!q->enabled || q->kick_handler)
            continue;
        q->kick_handler = event_loop_add(&d->io.loop, q->kick_fd, EPOLLIN | EPOLLET, on_kick, q);
        if (!q->kick_handler)
            return -1;
    }
    return 0;
}

void virtio_dev_kick(struct virtio_dev *d, unsigned q)
{
    if (q >= d->nqueues)
        return;
    uint64_t one = 1;
    ssize_t ignored = write(d->queues[q].kick_fd, &one, sizeof(one));
    (void)ignored;
}

/* ---- activation and reset ------------------------------------------- */

struct activate_call {
    struct virtio_dev *d;
    int result;
    char why[200];
};

static void activate_on_io(void *arg)
{
    struct activate_call *c = arg;
    struct virtio_dev *d = c->d;
    c->result = -1;
    if (d->active) {
        /* The life cycle allows one activation per reset; never serve twice. */
        snprintf(c->why, sizeof(c->why), "activated twice without a reset");
        return;
    }
    bool event_idx = virtio_dev_has_feature(d, VIRTIO_F_EVENT_IDX);
    bool indirect = virtio_dev_has_feature(d, VIRTIO_F_INDIRECT_DESC);
    wipe_rings(d);
    for (unsigned i = 0; i < d->nqueues; i++) {
        struct virtio_queue *q = &d->queues[i];
        if (!q->enabled)
            continue;
        if (q->cfg.size > d->queue_max_size) {
            snprintf(c->why, sizeof(c->why), "queue %u size %u exceeds the maximum %u", i,
                     q->cfg.size, d->queue_max_size);
            wipe_rings(d);
            return;
        }
        struct virtq_config cfg = q->cfg;
        cfg.packed = virtio_dev_has_feature(d, VIRTIO_F_RING_PACKED);
        if (virtq_init(&q->vq, d->mem, &cfg, event_idx, indirect) < 0 ||
            (q->has_restore_position && virtq_set_position(&q->vq, &q->restore_position) < 0)) {
            snprintf(c->why, sizeof(c->why), "queue %u: %s", i, error_get());
            wipe_rings(d);
            return;
        }
        q->has_restore_position = false;
    }
    d->active = true;
    if (virtio_dev_watch_kicks(d) < 0 || (d->ops->activate && d->ops->activate(d) < 0)) {
        snprintf(c->why, sizeof(c->why), "activation failed: %s", error_get());
        /* Nothing stays registered: the driver's reset starts from scratch. */
        quiesce_on_io(d);
        return;
    }
    c->result = 0;
}

static void reset_state(struct virtio_dev *d)
{
    __atomic_store_n(&d->status, 0, __ATOMIC_SEQ_CST);
    d->driver_features = 0;
    for (unsigned i = 0; i < d->nqueues; i++) {
        struct virtio_queue *q = &d->queues[i];
        q->enabled = false;
        q->msix_vector = VIRTIO_NO_VECTOR;
        q->cfg = (struct virtq_config){.size = d->queue_max_size};
        memset(&q->vq, 0, sizeof(q->vq));
    }
}

/* Sets DEVICE_NEEDS_RESET and tells the driver: the only way on is a reset.
 * From any thread: not under d->lock on the iothread's side. */
static void mark_needs_reset(struct virtio_dev *d, bool interrupt)
{
    __atomic_or_fetch(&d->status, VIRTIO_STATUS_NEEDS_RESET, __ATOMIC_SEQ_CST);
    if (!interrupt)
        return;
    __atomic_add_fetch(&d->config_generation, 1, __ATOMIC_SEQ_CST);
    if (d->transport && d->transport->notify_config)
        d->transport->notify_config(d);
}

static bool needs_reset(const struct virtio_dev *d)
{
    return __atomic_load_n(&d->status, __ATOMIC_SEQ_CST) & VIRTIO_STATUS_NEEDS_RESET;
}

void virtio_dev_set_status(struct virtio_dev *d, uint8_t status)
{
    if (status == 0) {
        /* Reset: stop all I/O and wait for in-flight requests first. */
        iothread_call(&d->io, quiesce_on_io, d);
        reset_state(d);
        return;
    }
    /* DEVICE_NEEDS_RESET is the device's to set (2.1): a driver's write cannot. */
    status &= (uint8_t)~VIRTIO_STATUS_NEEDS_RESET;
    uint8_t old = __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    if (old & VIRTIO_STATUS_NEEDS_RESET) {
        log_limited(&d->log_status, LOG_WARN,
                    "%s: status 0x%02x written while the device needs a reset; ignored", d->name,
                    status);
        return;
    }
    /* Bits are only ever added (3.1.1): clearing one without a reset is a
     * driver error, and the device stops rather than guess what it meant. */
    uint8_t cleared = (uint8_t)(old & ~status);
    if (cleared) {
        log_limited(&d->log_status, LOG_WARN,
                    "%s: driver cleared status bits (0x%02x -> 0x%02x) without a reset; device "
                    "stopped until the driver resets it",
                    d->name, old, status);
        iothread_call(&d->io, quiesce_on_io, d);
        mark_needs_reset(d, true);
        return;
    }
    if ((status & VIRTIO_STATUS_FEATURES_OK) && !(old & VIRTIO_STATUS_FEATURES_OK)) {
        uint64_t f = d->driver_features;
        bool ok = (f & ~d->host_features) == 0 && (f & (1ULL << VIRTIO_F_VERSION_1)) &&
                  (!d->ops->features_ok || d->ops->features_ok(d, f));
        if (!ok) {
            log_limited(&d->log_status, LOG_WARN,
                        "%s: refusing driver features 0x%llx (offered 0x%llx; VERSION_1 "
                        "required)",
                        d->name, (unsigned long long)f, (unsigned long long)d->host_features);
            /* Leave FEATURES_OK clear: the driver reads it back and gives up. */
            status &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
        }
    }
    if ((status & VIRTIO_STATUS_DRIVER_OK) && !(old & VIRTIO_STATUS_DRIVER_OK)) {
        if (!(status & VIRTIO_STATUS_FEATURES_OK)) {
            log_limited(&d->log_status, LOG_WARN, "%s: DRIVER_OK without FEATURES_OK; ignored",
                        d->name);
            status &= (uint8_t)~VIRTIO_STATUS_DRIVER_OK;
        } else {
            /* Queue registers are read-only from here on (see virtio_dev_write_queue). */
            __atomic_store_n(&d->status, status, __ATOMIC_SEQ_CST);
            struct activate_call c = {.d = d};
            iothread_call(&d->io, activate_on_io, &c);
            if (c.result < 0) {
                d->activate_fails++;
                log_limited(&d->log_guest_error, LOG_WARN, "%s: %s; device needs a reset", d->name,
                            c.why);
                mark_needs_reset(d, true);
            }
            return;
        }
    }
    __atomic_store_n(&d->status, status, __ATOMIC_SEQ_CST);
}

void virtio_dev_stop(struct virtio_dev *d)
{
    uint8_t status = __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    if (!(status & VIRTIO_STATUS_DRIVER_OK) || (status & VIRTIO_STATUS_NEEDS_RESET))
        return;
    iothread_call(&d->io, quiesce_on_io, d);
    /* No interrupt: without bus mastering the function may not send one. */
    mark_needs_reset(d, false);
}

/* ---- interrupts and failure ----------------------------------------- */

void virtio_dev_signal_used(struct virtio_dev *d, unsigned q)
{
    if (!virtio_dev_queue_live(d, q) || !virtq_should_notify(&d->queues[q].vq))
        return;
    d->interrupts++;
    d->transport->notify_queue(d, q);
}

int virtio_dev_pop(struct virtio_dev *d, unsigned q, struct virtq_chain *chain)
{
    if (!virtio_dev_queue_live(d, q))
        return 0; /* an absent queue has nothing to give */
    struct virtq *vq = &d->queues[q].vq;
    for (;;) {
        int got = virtq_pop(vq, chain);
        if (got < 0) {
            virtio_dev_fail(d, vq->error);
            return -1;
        }
        if (got > 0)
            return 1;
        if (!virtq_enable_kicks(vq, true))
            return 0;
        virtq_enable_kicks(vq, false);
    }
}

void virtio_dev_fail(struct virtio_dev *d, const char *why)
{
    /* Runs on the iothread, which owns the queues. One line per episode,
     * and episodes themselves rate limited: a driver that breaks the rules,
     * resets and breaks them again must not flood the log. `why` may point
     * into a queue that the quiesce below wipes: logged first. */
    if (!needs_reset(d))
        log_limited(&d->log_guest_error, LOG_ERROR,
                    "%s: guest error: %s; device stopped until the driver resets it", d->name, why);
    quiesce_on_io(d);
    /* Not under d->lock: a vCPU holding it may be waiting for this thread. */
    if (!needs_reset(d))
        mark_needs_reset(d, true);
}

void virtio_dev_fail_host(struct virtio_dev *d, const char *why)
{
    /* As virtio_dev_fail, but the host side broke: one line, not rate limited per guest
     * episode (the host side breaks once). */
    if (!needs_reset(d))
        log_error("%s: %s; device stopped until the driver resets it", d->name, why);
    quiesce_on_io(d);
    if (!needs_reset(d))
        mark_needs_reset(d, true);
}

/* ---- snapshots -------------------------------------------------------- */

static void freeze_on_io(void *arg)
{
    struct virtio_dev *d = arg;
    if (d->active && d->ops->freeze)
        d->ops->freeze(d);
}

static void thaw_on_io(void *arg)
{
    struct virtio_dev *d = arg;
    if (d->active && d->ops->thaw)
        d->ops->thaw(d);
}

static void restored_on_io(void *arg)
{
    struct virtio_dev *d = arg;
    if (d->active && d->ops->restored)
        d->ops->restored(d);
}

int virtio_dev_freeze(struct virtio_dev *d)
{
    iothread_call(&d->io, freeze_on_io, d);
    return iothread_hold(&d->io);
}

void virtio_dev_thaw(struct virtio_dev *d)
{
    iothread_release(&d->io);
    iothread_call(&d->io, thaw_on_io, d);
}

void virtio_dev_save(struct virtio_dev *d, struct snapshot_writer *w)
{
    snapshot_put_u32(w, d->device_id);
    snapshot_put_u64(w, d->host_features);
    snapshot_put_u64(w, d->driver_features);
    snapshot_put_u8(w, __atomic_load_n(&d->status, __ATOMIC_SEQ_CST));
    snapshot_put_u32(w, __atomic_load_n(&d->config_generation, __ATOMIC_SEQ_CST));
    snapshot_put_u8(w, d->active);
    snapshot_put_u32(w, d->nqueues);
    for (unsigned i = 0; i < d->nqueues; i++) {
        const struct virtio_queue *q = &d->queues[i];
        snapshot_put_u16(w, q->cfg.size);
        snapshot_put_u64(w, q->cfg.desc_gpa);
        snapshot_put_u64(w, q->cfg.avail_gpa);
        snapshot_put_u64(w, q->cfg.used_gpa);
        snapshot_put_u8(w, q->enabled);
        snapshot_put_u16(w, q->msix_vector);
        struct virtq_position pos = {0};
        bool live = virtio_dev_queue_live(d, i);
        if (live)
            virtq_get_position(&q->vq, &pos);
        snapshot_put_u8(w, live);
        snapshot_put_u16(w, pos.next_avail);
        snapshot_put_u16(w, pos.next_used);
        snapshot_put_u8(w, pos.avail_wrap);
        snapshot_put_u8(w, pos.used_wrap);
    }
    if (d->ops->save)
        d->ops->save(d, w);
}

int virtio_dev_restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    uint32_t device_id, generation, nqueues;
    uint64_t host_features, driver_features;
    uint8_t status, active;
    if (snapshot_get_u32(c, &device_id) < 0 || snapshot_get_u64(c, &host_features) < 0 ||
        snapshot_get_u64(c, &driver_features) < 0 || snapshot_get_u8(c, &status) < 0 ||
        snapshot_get_u32(c, &generation) < 0 || snapshot_get_u8(c, &active) < 0 ||
        snapshot_get_u32(c, &nqueues) < 0)
        return -1;
    if (device_id != d->device_id)
        return error_set("%s: the snapshot holds a device of type %u here, not %u", d->name,
                         device_id, d->device_id);
    if (host_features != d->host_features)
        return error_set("%s: the snapshot's device offered features 0x%llx, this one 0x%llx",
                         d->name, (unsigned long long)host_features,
                         (unsigned long long)d->host_features);
    if (driver_features & ~host_features)
        return error_set("%s: driver features 0x%llx were never offered", d->name,
                         (unsigned long long)driver_features);
    if (nqueues != d->nqueues)
        return error_set("%s: the snapshot's device has %u queues, this one %u", d->name, nqueues,
                         d->nqueues);
    /* A status the driver's writes can reach (virtio_dev_set_status): DRIVER_OK only after
     * FEATURES_OK, granted only for features the device accepts, VERSION_1 among them. The
     * model's check also applies them to the host, as at FEATURES_OK (virtio-net: the tap's
     * offloads). */
    if ((status & VIRTIO_STATUS_DRIVER_OK) && !(status & VIRTIO_STATUS_FEATURES_OK))
        return error_set("%s: status 0x%02x: DRIVER_OK without FEATURES_OK", d->name, status);
    if ((status & VIRTIO_STATUS_FEATURES_OK) &&
        (!(driver_features & (1ULL << VIRTIO_F_VERSION_1)) ||
         (d->ops->features_ok && !d->ops->features_ok(d, driver_features))))
        return error_set("%s: driver features 0x%llx could not have been accepted", d->name,
                         (unsigned long long)driver_features);
    bool live = (status & VIRTIO_STATUS_DRIVER_OK) && !(status & VIRTIO_STATUS_NEEDS_RESET);
    if (active && (!live || !(status & VIRTIO_STATUS_FEATURES_OK)))
        return error_set("%s: an active device with status 0x%02x", d->name, status);
    d->driver_features = driver_features;
    for (unsigned i = 0; i < d->nqueues; i++) {
        struct virtio_queue *q = &d->queues[i];
        uint8_t enabled, has_pos, aw, uw;
        struct virtq_position pos;
        if (snapshot_get_u16(c, &q->cfg.size) < 0 || snapshot_get_u64(c, &q->cfg.desc_gpa) < 0 ||
            snapshot_get_u64(c, &q->cfg.avail_gpa) < 0 ||
            snapshot_get_u64(c, &q->cfg.used_gpa) < 0 || snapshot_get_u8(c, &enabled) < 0 ||
            snapshot_get_u16(c, &q->msix_vector) < 0 || snapshot_get_u8(c, &has_pos) < 0 ||
            snapshot_get_u16(c, &pos.next_avail) < 0 || snapshot_get_u16(c, &pos.next_used) < 0 ||
            snapshot_get_u8(c, &aw) < 0 || snapshot_get_u8(c, &uw) < 0)
            return -1;
        if (q->cfg.size > d->queue_max_size)
            return error_set("%s: queue %u of size %u (at most %u)", d->name, i, q->cfg.size,
                             d->queue_max_size);
        q->enabled = enabled != 0;
        pos.avail_wrap = aw != 0;
        pos.used_wrap = uw != 0;
        q->restore_position = pos;
        q->has_restore_position = active && has_pos;
    }
    if (d->ops->restore && d->ops->restore(d, c) < 0)
        return error_prefix("%s", d->name);
    /* Stored last: from here the transport shows the driver what it left. A device saved
     * live is activated by virtio_dev_resume_restored; DRIVER_OK stays set meanwhile, so the
     * queue registers are read-only already. */
    __atomic_store_n(&d->config_generation, generation, __ATOMIC_SEQ_CST);
    __atomic_store_n(&d->status, status, __ATOMIC_SEQ_CST);
    d->restore_active = active != 0;
    return 0;
}

int virtio_dev_resume_restored(struct virtio_dev *d)
{
    if (!d->restore_active)
        return 0;
    d->restore_active = false;
    struct activate_call c = {.d = d};
    iothread_call(&d->io, activate_on_io, &c);
    if (c.result < 0)
        return error_set("%s: cannot serve the restored queues: %s", d->name, c.why);
    iothread_call(&d->io, restored_on_io, d);
    return 0;
}
