#include "virtio/vhost_user_dev.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The back-end used buffers on a queue: the transport interrupts the driver (MSI-X vector
 * with its mask and pending bit, or INTx, or the mmio interrupt status). The back-end
 * already applied the driver's notification suppression. */
static void on_call(void *opaque, uint32_t events)
{
    struct vhost_user_dev_call *c = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(c->fd, &v, sizeof(v));
    (void)ignored;
    struct virtio_dev *d = &c->owner->dev;
    if (d->active) {
        d->interrupts++;
        c->owner->relayed++;
        d->transport->notify_queue(d, c->queue);
    }
}

/* The socket is readable between messages: the back-end went away (or broke the protocol). */
static void on_socket(void *opaque, uint32_t events)
{
    struct vhost_user_dev *v = opaque;
    (void)events;
    if (vhost_user_check_idle(&v->vu) == 0)
        return;
    char why[256];
    snprintf(why, sizeof(why), "vhost-user back-end at %s: %s", v->socket, error_get());
    /* Level-triggered: unwatched now, or it would fire again. */
    event_loop_del(&v->dev.io.loop, v->socket_handler);
    v->socket_handler = NULL;
    v->running = false; /* nobody to take the rings back from */
    virtio_dev_fail_host(&v->dev, why);
}

static int start_backend(struct vhost_user_dev *v)
{
    struct virtio_dev *d = &v->dev;
    struct vhost_user *vu = &v->vu;
    if (vhost_user_set_features(vu, d->driver_features) < 0 ||
        vhost_user_set_mem_table(vu, d->mem) < 0)
        return -1;
    v->running = true;
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
            vhost_user_set_vring_call(vu, i, v->calls[i].fd) < 0)
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
    struct vhost_user_dev *v = d->opaque;
    if (v->vu.broken)
        return error_set("the vhost-user back-end at %s is gone", v->socket);
    for (unsigned i = 0; i < d->nqueues; i++) {
        v->calls[i].handler =
            event_loop_add(&d->io.loop, v->calls[i].fd, EPOLLIN, on_call, &v->calls[i]);
        if (!v->calls[i].handler)
            return -1;
    }
    v->socket_handler =
        event_loop_add(&d->io.loop, vhost_user_fd(&v->vu), EPOLLIN | EPOLLRDHUP, on_socket, v);
    if (!v->socket_handler)
        return -1;
    if (start_backend(v) < 0)
        return error_prefix("vhost-user back-end at %s", v->socket);
    return 0;
}

/* Takes the rings back: GET_VRING_BASE stops each (the back-end finishes what it took). */
static void stop_backend(struct vhost_user_dev *v)
{
    struct virtio_dev *d = &v->dev;
    if (!v->running)
        return;
    v->running = false;
    for (unsigned i = 0; i < d->nqueues && !v->vu.broken; i++) {
        if (!virtio_dev_queue_live(d, i))
            continue;
        unsigned base;
        if (vhost_user_get_vring_base(&v->vu, i, &base) < 0)
            log_error("%s: stopping ring %u: %s", d->name, i, error_get());
    }
}

static void quiesce(struct virtio_dev *d)
{
    struct vhost_user_dev *v = d->opaque;
    stop_backend(v);
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (v->calls[i].handler)
            event_loop_del(&d->io.loop, v->calls[i].handler);
        v->calls[i].handler = NULL;
    }
    if (v->socket_handler)
        event_loop_del(&d->io.loop, v->socket_handler);
    v->socket_handler = NULL;
}

static bool features_ok(struct virtio_dev *d, uint64_t f)
{
    (void)d;
    (void)f;
    return true;
}

int vhost_user_dev_connect(struct vhost_user_dev *v, const char *name, const char *socket,
                           const struct guest_memory *mem, uint64_t wanted_protocol)
{
    memset(v, 0, sizeof(*v));
    v->vu.fd = -1;
    v->socket = socket;
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++)
        v->calls[i] = (struct vhost_user_dev_call){.owner = v, .queue = i, .fd = -1};
    if (!mem->has_memfd)
        return error_set("%s: a vhost-user back-end needs guest memory it can map (shared)", name);
    if (vhost_user_connect(&v->vu, name, socket, VHOST_USER_TIMEOUT_MS) < 0)
        return -1;
    if (vhost_user_handshake(&v->vu, wanted_protocol) < 0)
        return error_prefix("%s: %s", name, socket);
    v->backend_features = v->vu.features;
    if (!(v->backend_features & (1ULL << VIRTIO_F_VERSION_1)))
        return error_set("%s: the vhost-user back-end at %s does not offer VIRTIO_F_VERSION_1 "
                         "(ember's devices are modern only)",
                         name, socket);
    return 0;
}

int vhost_user_dev_init(struct vhost_user_dev *v, const char *name, uint32_t device_id,
                        uint64_t offered, unsigned nqueues, uint16_t queue_size,
                        uint32_t config_size,
                        void (*read_config)(struct virtio_dev *d, uint32_t offset, void *data,
                                            uint32_t len),
                        void *model, const struct guest_memory *mem)
{
    if (nqueues == 0 || nqueues > VHOST_USER_DEV_MAX_QUEUES)
        return error_set("%s: %u queues (1 to %d)", name, nqueues, VHOST_USER_DEV_MAX_QUEUES);
    v->model = model;
    v->ops = (struct virtio_dev_ops){
        .read_config = read_config,
        .activate = activate,
        .quiesce = quiesce,
        .features_ok = features_ok,
    };
    for (unsigned i = 0; i < nqueues; i++) {
        v->calls[i].fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (v->calls[i].fd < 0)
            return error_errno("%s: eventfd", name);
    }
    if (virtio_dev_init_confined(&v->dev, name, device_id, offered, nqueues, queue_size,
                                 config_size, &v->ops, v, mem, SECCOMP_VHOST_USER) < 0)
        return -1;
    /* virtio_dev_init adds what ember's own rings do; only what the back-end does stays. */
    v->dev.host_features = offered;
    v->dev.kicks_external = true;
    return 0;
}

void vhost_user_dev_destroy(struct vhost_user_dev *v)
{
    if (v->dev.queues)
        virtio_dev_destroy(&v->dev);
    if (v->relayed)
        log_info("%s: %llu interrupts relayed from the back-end", v->dev.name,
                 (unsigned long long)v->relayed);
    vhost_user_close(&v->vu);
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++) {
        if (v->calls[i].fd >= 0)
            close(v->calls[i].fd);
        v->calls[i].fd = -1;
    }
}
