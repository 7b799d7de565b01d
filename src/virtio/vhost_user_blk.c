#include "virtio/vhost_user_blk.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_GEOMETRY     4
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* What ember passes on from a back-end. Not CONFIG_WCE (the guest's writes to the
 * configuration space would have to reach the back-end from a vCPU thread), not packed rings
 * (where a back-end stopped is then more than an index), not ACCESS_PLATFORM (no IOMMU). */
#define SUPPORTED_FEATURES                                                                         \
    ((1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |                            \
     (1ULL << VIRTIO_BLK_F_GEOMETRY) | (1ULL << VIRTIO_BLK_F_RO) |                                 \
     (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_FLUSH) |                              \
     (1ULL << VIRTIO_BLK_F_TOPOLOGY) | (1ULL << VIRTIO_BLK_F_MQ) |                                 \
     (1ULL << VIRTIO_BLK_F_DISCARD) | (1ULL << VIRTIO_BLK_F_WRITE_ZEROES) |                        \
     (1ULL << VIRTIO_F_INDIRECT_DESC) | (1ULL << VIRTIO_F_EVENT_IDX) |                             \
     (1ULL << VIRTIO_F_VERSION_1))

#define VUB_QUEUE_SIZE 256
/* Offset of num_queues in virtio-blk's configuration space (5.2.4). */
#define CONFIG_NUM_QUEUES 34

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct vhost_user_blk *b = d->opaque;
    pthread_mutex_lock(&b->config_lock);
    memcpy(data, b->config + offset, len);
    pthread_mutex_unlock(&b->config_lock);
}

/* The back-end used buffers on a queue: the transport interrupts the driver (MSI-X vector
 * with its mask and pending bit, or INTx, or the mmio interrupt status). The back-end
 * already applied the driver's notification suppression. */
static void on_call(void *opaque, uint32_t events)
{
    struct vhost_user_blk_call *c = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(c->fd, &v, sizeof(v));
    (void)ignored;
    struct virtio_dev *d = &c->blk->dev;
    if (d->active) {
        d->interrupts++;
        c->blk->relayed++;
        d->transport->notify_queue(d, c->queue);
    }
}

/* The socket is readable between messages: the back-end went away (or broke the protocol). */
static void on_socket(void *opaque, uint32_t events)
{
    struct vhost_user_blk *b = opaque;
    (void)events;
    if (vhost_user_check_idle(&b->vu) == 0)
        return;
    char why[256];
    snprintf(why, sizeof(why), "vhost-user back-end at %s: %s", b->socket, error_get());
    /* Level-triggered: unwatched now, or it would fire again. */
    event_loop_del(&b->dev.io.loop, b->socket_handler);
    b->socket_handler = NULL;
    b->running = false; /* nobody to take the rings back from */
    virtio_dev_fail_host(&b->dev, why);
}

static int start_backend(struct vhost_user_blk *b)
{
    struct virtio_dev *d = &b->dev;
    struct vhost_user *vu = &b->vu;
    if (vhost_user_set_features(vu, d->driver_features) < 0 ||
        vhost_user_set_mem_table(vu, d->mem) < 0)
        return -1;
    b->running = true;
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (!virtio_dev_queue_live(d, i))
            continue;
        struct virtq *q = &d->queues[i].vq;
        struct virtq_position pos;
        virtq_get_position(q, &pos);
        if (vhost_user_set_vring_num(vu, i, q->size) < 0 ||
            vhost_user_set_vring_base(vu, i, pos.next_avail) < 0 ||
            vhost_user_set_vring_addr(vu, i, q->desc, q->avail, q->used) < 0 ||
            vhost_user_set_vring_kick(vu, i, d->queues[i].kick_fd) < 0 ||
            vhost_user_set_vring_call(vu, i, b->calls[i].fd) < 0)
            return error_prefix("ring %u", i);
        /* With protocol features a ring starts disabled (and without, SET_VRING_ENABLE is
         * not part of the protocol). */
        if ((vu->features & (1ULL << VHOST_USER_F_PROTOCOL_FEATURES)) &&
            vhost_user_set_vring_enable(vu, i, true) < 0)
            return error_prefix("ring %u", i);
    }
    /* Requests the driver queued before the back-end had the rings were kicked for
     * already: the back-end looks at them now. */
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (virtio_dev_queue_live(d, i))
            virtio_dev_kick(d, i);
    }
    return 0;
}

static int activate(struct virtio_dev *d)
{
    struct vhost_user_blk *b = d->opaque;
    if (b->vu.broken)
        return error_set("the vhost-user back-end at %s is gone", b->socket);
    for (unsigned i = 0; i < d->nqueues; i++) {
        b->calls[i].handler =
            event_loop_add(&d->io.loop, b->calls[i].fd, EPOLLIN, on_call, &b->calls[i]);
        if (!b->calls[i].handler)
            return -1;
    }
    b->socket_handler =
        event_loop_add(&d->io.loop, vhost_user_fd(&b->vu), EPOLLIN | EPOLLRDHUP, on_socket, b);
    if (!b->socket_handler)
        return -1;
    if (start_backend(b) < 0)
        return error_prefix("vhost-user back-end at %s", b->socket);
    return 0;
}

/* Takes the rings back: GET_VRING_BASE stops each (the back-end finishes what it took). */
static void stop_backend(struct vhost_user_blk *b)
{
    struct virtio_dev *d = &b->dev;
    if (!b->running)
        return;
    b->running = false;
    for (unsigned i = 0; i < d->nqueues && !b->vu.broken; i++) {
        if (!virtio_dev_queue_live(d, i))
            continue;
        unsigned base;
        if (vhost_user_get_vring_base(&b->vu, i, &base) < 0)
            log_error("%s: stopping ring %u: %s", d->name, i, error_get());
    }
}

static void quiesce(struct virtio_dev *d)
{
    struct vhost_user_blk *b = d->opaque;
    stop_backend(b);
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (b->calls[i].handler)
            event_loop_del(&d->io.loop, b->calls[i].handler);
        b->calls[i].handler = NULL;
    }
    if (b->socket_handler)
        event_loop_del(&d->io.loop, b->socket_handler);
    b->socket_handler = NULL;
}

static bool features_ok(struct virtio_dev *d, uint64_t f)
{
    (void)d;
    (void)f;
    return true;
}

static const struct virtio_dev_ops vhost_user_blk_ops = {
    .read_config = read_config,
    .activate = activate,
    .quiesce = quiesce,
    .features_ok = features_ok,
};

/* The back-end's configuration space, checked where ember relies on it. */
static int read_backend_config(struct vhost_user_blk *b, const char *name, unsigned *nqueues)
{
    if (vhost_user_get_config(&b->vu, 0, b->config, sizeof(b->config)) < 0)
        return -1;
    memcpy(&b->capacity, b->config, sizeof(b->capacity));
    *nqueues = 1;
    if (b->backend_features & (1ULL << VIRTIO_BLK_F_MQ)) {
        uint16_t n;
        memcpy(&n, b->config + CONFIG_NUM_QUEUES, sizeof(n));
        uint64_t backend_queues = 1;
        if (vhost_user_has_protocol(&b->vu, VHOST_USER_PROTOCOL_F_MQ) &&
            vhost_user_get_queue_num(&b->vu, &backend_queues) < 0)
            return -1;
        if (n == 0)
            return error_set("%s: the back-end's configuration space has 0 queues", name);
        *nqueues = n;
        if (*nqueues > backend_queues)
            *nqueues = (unsigned)backend_queues;
        if (*nqueues > VHOST_USER_BLK_MAX_QUEUES)
            *nqueues = VHOST_USER_BLK_MAX_QUEUES;
        /* The guest sees the queues it gets. */
        n = (uint16_t)*nqueues;
        memcpy(b->config + CONFIG_NUM_QUEUES, &n, sizeof(n));
    }
    return 0;
}

int vhost_user_blk_init(struct vhost_user_blk *b, const char *name,
                        const struct vhost_user_blk_options *opts, const struct guest_memory *mem)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->config_lock, NULL);
    b->vu.fd = -1;
    b->socket = opts->socket;
    for (unsigned i = 0; i < VHOST_USER_BLK_MAX_QUEUES; i++)
        b->calls[i] = (struct vhost_user_blk_call){.blk = b, .queue = i, .fd = -1};
    if (!mem->has_memfd)
        return error_set("%s: a vhost-user back-end needs guest memory it can map (shared)", name);
    if (vhost_user_connect(&b->vu, name, opts->socket, VHOST_USER_TIMEOUT_MS) < 0)
        return -1;
    uint64_t wanted = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) | (1ULL << VHOST_USER_PROTOCOL_F_MQ);
    if (vhost_user_handshake(&b->vu, wanted) < 0)
        return error_prefix("%s: %s", name, opts->socket);
    b->backend_features = b->vu.features;
    if (!(b->backend_features & (1ULL << VIRTIO_F_VERSION_1)))
        return error_set("%s: the vhost-user back-end at %s does not offer VIRTIO_F_VERSION_1 "
                         "(ember's devices are modern only)",
                         name, opts->socket);
    if (!vhost_user_has_protocol(&b->vu, VHOST_USER_PROTOCOL_F_CONFIG))
        return error_set("%s: the vhost-user back-end at %s does not give its configuration "
                         "space (PROTOCOL_F_CONFIG), where the disk's size is",
                         name, opts->socket);
    unsigned nqueues;
    if (read_backend_config(b, name, &nqueues) < 0)
        return error_prefix("%s: %s", name, opts->socket);
    uint64_t offered = b->backend_features & SUPPORTED_FEATURES;
    if (opts->unsafe)
        offered &= ~(1ULL << VIRTIO_BLK_F_FLUSH);
    for (unsigned i = 0; i < nqueues; i++) {
        b->calls[i].fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (b->calls[i].fd < 0)
            return error_errno("%s: eventfd", name);
    }
    if (virtio_dev_init_confined(&b->dev, name, VIRTIO_ID_BLOCK, offered, nqueues, VUB_QUEUE_SIZE,
                                 sizeof(b->config), &vhost_user_blk_ops, b, mem,
                                 SECCOMP_VHOST_USER) < 0)
        return -1;
    /* virtio_dev_init adds what ember's own rings do; only what the back-end does stays. */
    b->dev.host_features = offered;
    b->dev.kicks_external = true;
    return 0;
}

struct refresh_call {
    struct vhost_user_blk *b;
    int result;
    char error[256];
};

static void refresh_on_io(void *arg)
{
    struct refresh_call *c = arg;
    struct vhost_user_blk *b = c->b;
    uint8_t config[VHOST_USER_BLK_CONFIG];
    c->result = vhost_user_get_config(&b->vu, 0, config, sizeof(config));
    if (c->result < 0) {
        snprintf(c->error, sizeof(c->error), "%s", error_get());
        return;
    }
    /* The queues the guest has stay as they are. */
    pthread_mutex_lock(&b->config_lock);
    memcpy(config + CONFIG_NUM_QUEUES, b->config + CONFIG_NUM_QUEUES, 2);
    memcpy(b->config, config, sizeof(config));
    memcpy(&b->capacity, config, sizeof(b->capacity));
    pthread_mutex_unlock(&b->config_lock);
    __atomic_add_fetch(&b->dev.config_generation, 1, __ATOMIC_SEQ_CST);
    if (b->dev.transport && b->dev.transport->notify_config)
        b->dev.transport->notify_config(&b->dev);
}

int vhost_user_blk_refresh(struct vhost_user_blk *b)
{
    struct refresh_call c = {.b = b};
    iothread_call(&b->dev.io, refresh_on_io, &c);
    if (c.result < 0)
        return error_set("%s", c.error);
    return 0;
}

void vhost_user_blk_destroy(struct vhost_user_blk *b)
{
    if (b->dev.queues)
        virtio_dev_destroy(&b->dev);
    if (b->relayed)
        log_info("%s: %llu interrupts relayed from the back-end", b->dev.name,
                 (unsigned long long)b->relayed);
    vhost_user_close(&b->vu);
    for (unsigned i = 0; i < VHOST_USER_BLK_MAX_QUEUES; i++) {
        if (b->calls[i].fd >= 0)
            close(b->calls[i].fd);
        b->calls[i].fd = -1;
    }
    pthread_mutex_destroy(&b->config_lock);
}
