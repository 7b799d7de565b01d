#include "virtio/vhost_user_dev.h"

#include "sandbox/seccomp.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void backend_lost(struct vhost_user_dev *v, const char *why, bool taken);

/* ---- the back-end's request channel -------------------------------------------- */

static int channel_config_changed(void *opaque)
{
    struct vhost_user_dev *v = opaque;
    return v->config_changed(v);
}

static void close_channel(struct vhost_user_dev *v)
{
    if (v->channel_handler)
        event_loop_del(&v->dev.io.loop, v->channel_handler);
    v->channel_handler = NULL;
    vhost_user_channel_close(&v->channel);
}

/* The back-end sent requests of its own. Each wake-up reads at most a buffer's worth and reads
 * the configuration again at most once, so a back-end that floods the channel costs bounded
 * work per message and no memory; one that breaks it loses it (the device goes on). */
static void on_channel(void *opaque, uint32_t events)
{
    struct vhost_user_dev *v = opaque;
    (void)events;
    struct vhost_user_channel_stats st;
    int r = vhost_user_channel_serve(&v->channel, v->config_changed ? channel_config_changed : NULL,
                                     v, &st);
    v->channel_requests += st.requests;
    if (st.refused)
        log_limited(&v->log_channel, LOG_WARN,
                    "%s: vhost-user back-end at %s: %u request(s) on its channel refused: %s",
                    v->dev.name, v->socket, st.refused, st.why);
    if (r == 0)
        return;
    if (st.closed)
        log_debug("%s: the vhost-user back-end closed its request channel", v->dev.name);
    else
        log_limited(&v->log_channel, LOG_WARN,
                    "%s: vhost-user back-end at %s: %s; its request channel closed", v->dev.name,
                    v->socket, error_get());
    close_channel(v);
}

/* The channel to a back-end that offers it, made on a new connection (the back-end's end
 * handed over); its handler added where the I/O thread runs (watch: now). */
static int open_channel(struct vhost_user_dev *v, bool watch)
{
    v->channel.fd = -1;
    if (!vhost_user_has_protocol(&v->vu, VHOST_USER_PROTOCOL_F_BACKEND_REQ))
        return 0;
    if (vhost_user_open_channel(&v->vu, &v->channel) < 0)
        return -1;
    if (watch) {
        v->channel_handler =
            event_loop_add(&v->dev.io.loop, v->channel.fd, EPOLLIN | EPOLLRDHUP, on_channel, v);
        if (!v->channel_handler)
            return -1;
    }
    return 0;
}

static void watch_channel(void *arg)
{
    struct vhost_user_dev *v = arg;
    if (v->channel.fd >= 0 && !v->channel_handler)
        v->channel_handler =
            event_loop_add(&v->dev.io.loop, v->channel.fd, EPOLLIN | EPOLLRDHUP, on_channel, v);
}

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
    backend_lost(v, error_get(), true);
}

unsigned vhost_user_dev_outstanding(const struct vhost_user_dev *v, unsigned q)
{
    const struct virtq *vq = &v->dev.queues[q].vq;
    if (!virtio_dev_queue_live(&v->dev, q) || !vq->avail || !vq->used)
        return 0;
    uint16_t avail = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);
    uint16_t used = __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
    return (uint16_t)(avail - used);
}

/* Gives the back-end the device as it stands. resume: a new back-end after the old one went
 * away, which continues each ring from its used index (what the guest was answered): the
 * requests past it were either failed already or are in the inflight buffer, from which the
 * back-end submits them again. */
static int start_backend(struct vhost_user_dev *v, bool resume)
{
    struct virtio_dev *d = &v->dev;
    struct vhost_user *vu = &v->vu;
    bool by_region;
    unsigned had = vu->nmem_added;
    if (vhost_user_set_features(vu, d->driver_features & ~v->emulated_features) < 0 ||
        vhost_user_give_memory(vu, d->mem, &by_region) < 0)
        return -1;
    if (by_region && had == vu->nmem_added)
        log_debug("%s: the back-end has guest memory already (ADD_MEM_REG on this connection)",
                  d->name);
    else if (by_region)
        log_debug("%s: guest memory given by ADD_MEM_REG: %u region(s), the back-end has %llu "
                  "slots",
                  d->name, vu->nmem_added - had, (unsigned long long)vu->max_mem_slots);
    else
        log_debug("%s: guest memory given by SET_MEM_TABLE: %u region(s)", d->name,
                  d->mem->nregions);
    if (vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)) {
        /* The buffer lives as long as the guest's requests may: from DRIVER_OK to the reset,
         * across back-ends. */
        if (v->inflight.fd < 0 &&
            vhost_user_get_inflight_fd(vu, d->nqueues, d->queue_max_size, &v->inflight) < 0)
            return -1;
        if (vhost_user_set_inflight_fd(vu, &v->inflight) < 0)
            return -1;
    }

    v->running = true;
    v->direct_rings = 0;
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (!virtio_dev_queue_live(d, i))
            continue;
        /* The back-end signals the transport's own eventfd where there is one (an MSI-X
         * vector: KVM interrupts the guest, masking included, with ember on no path);
         * otherwise ember's, relayed by on_call. */
        int call = d->transport->queue_irqfd ? d->transport->queue_irqfd(d, i) : -1;
        if (call >= 0)
            v->direct_rings++;
        else
            call = v->calls[i].fd;
        struct virtq *q = &d->queues[i].vq;
        struct virtq_position pos;
        virtq_get_position(q, &pos);
        if (resume)
            pos.next_avail = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
        /* The call descriptor before the kick: a back-end may serve the ring as soon as it has
         * the kick (libvhost-user does, ring enabled or not), and after a reconnection the
         * kick eventfd holds the driver's notifications already; answering without a call
         * descriptor, qemu-storage-daemon gives up the connection. */
        if (vhost_user_set_vring_num(vu, i, q->size) < 0 ||
            vhost_user_set_vring_base(vu, i, pos.next_avail) < 0 ||
            vhost_user_set_vring_addr(vu, i, q->desc, q->avail, q->used) < 0 ||
            vhost_user_set_vring_call(vu, i, call) < 0 ||
            vhost_user_set_vring_kick(vu, i, d->queues[i].kick_fd) < 0)
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

/* ---- reconnection ------------------------------------------------------------ */

static unsigned elapsed_ms(const struct vhost_user_dev *v)
{
    return (unsigned)((monotonic_ns() - v->gone_ns) / 1000000);
}

static void arm_timer(struct vhost_user_dev *v, unsigned ms)
{
    struct itimerspec t = {
        .it_value = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000}};
    if (timerfd_settime(v->timer_fd, 0, &t, NULL) < 0)
        log_error("%s: arming the reconnection timer failed", v->dev.name);
}

/* Server mode: whether the listener wakes the I/O thread (off while an attempt is due from
 * the timer, and after a listener that stays readable without a connection to take). */
static void watch_listener(struct vhost_user_dev *v, bool on)
{
    if (v->listen_handler &&
        event_loop_mod(&v->dev.io.loop, v->listen_handler, on ? EPOLLIN : 0) < 0)
        log_error("%s: watching %s: %s", v->dev.name, v->socket, error_get());
}

/* The requests past each ring's used index that no back-end will answer: completed with an
 * error by the device type where it can. -1 when some are left that it cannot. */
static int fail_outstanding(struct vhost_user_dev *v, unsigned *failed)
{
    struct virtio_dev *d = &v->dev;
    *failed = 0;
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (!vhost_user_dev_outstanding(v, i))
            continue;
        int n = v->fail_requests ? v->fail_requests(v, i) : -1;
        if (n < 0)
            return -1;
        *failed += (unsigned)n;
        if (n)
            d->transport->notify_queue(d, i);
    }
    return 0;
}

/* The device needs a reset: the requests in flight failed where the type can, one line with
 * why. late: the back-end did not come back within the limit. */
static void give_up(struct vhost_user_dev *v, const char *why, bool late)
{
    struct virtio_dev *d = &v->dev;
    char msg[512];
    unsigned failed = 0;
    v->reconnecting = false;
    close_channel(v);
    vhost_user_close(&v->vu);
    vhost_user_inflight_free(&v->inflight);
    int r = fail_outstanding(v, &failed);
    char errors[96] = "";
    if (failed)
        snprintf(errors, sizeof(errors), "; %u request(s) in flight failed with an I/O error",
                 failed);
    snprintf(msg, sizeof(msg), "vhost-user back-end at %s: %s%s%s%s", v->socket, why,
             late ? " (not back in time)" : "", errors,
             r < 0 ? "; requests in flight left unanswered until the reset" : "");
    virtio_dev_fail_host(d, msg);
}

/* The back-end went away (socket closed, a message failed). taken: it may have taken
 * requests from the rings. */
static void backend_lost(struct vhost_user_dev *v, const char *why, bool taken)
{
    struct virtio_dev *d = &v->dev;
    snprintf(v->gone_why, sizeof(v->gone_why), "%s", why);
    if (v->socket_handler)
        event_loop_del(&d->io.loop, v->socket_handler); /* level-triggered: it would fire again */
    v->socket_handler = NULL;
    v->running = false; /* nobody to take the rings back from */
    if (!v->reconnect_ms) {
        give_up(v, v->gone_why, false);
        return;
    }
    close_channel(v);
    vhost_user_close(&v->vu);
    unsigned failed = 0;
    /* Without an inflight buffer a new back-end cannot know which of the requests past the
     * used index the old one took (and maybe carried out): each is failed now, or, where the
     * type cannot, the device needs a reset. */
    if (taken && v->inflight.fd < 0 && fail_outstanding(v, &failed) < 0) {
        give_up(v, "it went away with requests in flight, no INFLIGHT_SHMFD to resume them", false);
        return;
    }
    log_limited(&v->log_backend, LOG_WARN,
                "%s: vhost-user back-end at %s: %s; reconnecting for up to %u s%s%.0u%s", d->name,
                v->socket, v->gone_why, v->reconnect_ms / 1000, failed ? " (" : "", failed,
                failed ? " request(s) in flight failed)" : "");
    v->reconnecting = true;
    watch_listener(v, true);
    v->gone_ns = monotonic_ns();
    v->backoff_ms = VHOST_USER_BACKOFF_FIRST_MS;
    arm_timer(v, v->backoff_ms);
}

/* 0: the back-end has the device again; -1: not there (yet), to be tried again; -2: it
 * answered but cannot take the device (a refusal, features missing): final. */
static int try_reconnect(struct vhost_user_dev *v)
{
    struct virtio_dev *d = &v->dev;
    if ((v->listener.fd >= 0
             ? vhost_user_accept(&v->vu, d->name, &v->listener, 0, VHOST_USER_TIMEOUT_MS)
             : vhost_user_connect(&v->vu, d->name, v->socket, VHOST_USER_TIMEOUT_MS)) < 0 ||
        vhost_user_handshake(&v->vu, v->wanted_protocol) < 0)
        return -1;
    uint64_t missing = d->driver_features & ~v->emulated_features & ~v->vu.features;
    if (missing) {
        error_set("the new back-end lacks features 0x%llx the driver uses",
                  (unsigned long long)missing);
        return -2;
    }
    if (v->inflight.fd >= 0 &&
        !vhost_user_has_protocol(&v->vu, VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)) {
        /* The requests in flight cannot reach this back-end. */
        unsigned failed;
        vhost_user_inflight_free(&v->inflight);
        if (fail_outstanding(v, &failed) < 0) {
            error_set("the new back-end has no INFLIGHT_SHMFD for the requests in flight");
            return -2;
        }
    }
    v->socket_handler =
        event_loop_add(&d->io.loop, vhost_user_fd(&v->vu), EPOLLIN | EPOLLRDHUP, on_socket, v);
    if (!v->socket_handler)
        return -2;
    if (open_channel(v, true) < 0)
        return v->vu.broken ? -1 : -2;
    if (start_backend(v, true) < 0)
        return v->vu.broken ? -1 : -2; /* gone again, or a refusal */
    return 0;
}

static void on_timer(void *opaque, uint32_t events)
{
    struct vhost_user_dev *v = opaque;
    (void)events;
    uint64_t ticks;
    ssize_t ignored = read(v->timer_fd, &ticks, sizeof(ticks));
    (void)ignored;
    if (!v->reconnecting)
        return;
    int r = try_reconnect(v);
    if (r == 0) {
        v->reconnecting = false;
        v->reconnects++;
        watch_listener(v, true);
        log_limited(&v->log_back, LOG_WARN,
                    "%s: vhost-user back-end at %s is back after %u ms; the device resumed%s",
                    v->dev.name, v->socket, elapsed_ms(v),
                    v->inflight.fd >= 0 ? ", the requests in flight resubmitted by it" : "");
        return;
    }
    bool retry = r == -1;
    log_info("%s: reconnection attempt after %u ms: %s", v->dev.name, elapsed_ms(v), error_get());
    char why[256];
    snprintf(why, sizeof(why), "%s", error_get());
    /* Rings handed to a back-end that failed half way: it may have taken requests. */
    bool handed = v->running;
    if (v->socket_handler)
        event_loop_del(&v->dev.io.loop, v->socket_handler);
    v->socket_handler = NULL;
    v->running = false;
    close_channel(v);
    vhost_user_close(&v->vu);
    unsigned failed;
    if (handed && v->inflight.fd < 0 && fail_outstanding(v, &failed) < 0) {
        give_up(v,
                "the new back-end went away with requests in flight, no INFLIGHT_SHMFD to "
                "resume them",
                false);
        return;
    }
    unsigned spent = elapsed_ms(v);
    if (!retry || spent >= v->reconnect_ms) {
        give_up(v, retry ? v->gone_why : why, retry);
        if (retry)
            log_limited(&v->log_back, LOG_ERROR, "%s: last reconnection attempt: %s", v->dev.name,
                        why);
        return;
    }
    v->backoff_ms = v->backoff_ms * 2 > VHOST_USER_BACKOFF_MAX_MS ? VHOST_USER_BACKOFF_MAX_MS
                                                                  : v->backoff_ms * 2;
    unsigned left = v->reconnect_ms - spent;
    arm_timer(v, v->backoff_ms < left ? v->backoff_ms : left);
}

/* Server mode: a connection waits on the listener. While the back-end is wanted back it is
 * tried at once (the timer's next attempt accepts it; the listener is watched again when a
 * back-end is served or lost); otherwise it is refused: one back-end at a time. */
static void on_listen(void *opaque, uint32_t events)
{
    struct vhost_user_dev *v = opaque;
    (void)events;
    watch_listener(v, false);
    if (v->reconnecting) {
        arm_timer(v, 1);
        return;
    }
    unsigned n = vhost_user_listener_refuse(&v->listener);
    if (n)
        log_limited(&v->log_refused, LOG_WARN, "%s: %u connection(s) to %s refused: %s",
                    v->dev.name, n, v->socket,
                    v->vu.fd >= 0 ? "a vhost-user back-end is connected already"
                                  : "the device needs a reset first");
    watch_listener(v, n > 0); /* none taken from a readable listener: not watched again */
}

static int activate(struct virtio_dev *d)
{
    struct vhost_user_dev *v = d->opaque;
    if (v->vu.broken && !v->reconnect_ms)
        return error_set("the vhost-user back-end at %s is gone", v->socket);
    if (v->reconnect_ms) {
        v->timer_handler = event_loop_add(&d->io.loop, v->timer_fd, EPOLLIN, on_timer, v);
        if (!v->timer_handler)
            return -1;
    }
    if (v->listener.fd >= 0) {
        v->listen_handler = event_loop_add(&d->io.loop, v->listener.fd, EPOLLIN, on_listen, v);
        if (!v->listen_handler)
            return -1;
    }
    for (unsigned i = 0; i < d->nqueues; i++) {
        v->calls[i].handler =
            event_loop_add(&d->io.loop, v->calls[i].fd, EPOLLIN, on_call, &v->calls[i]);
        if (!v->calls[i].handler)
            return -1;
    }
    if (v->vu.broken) {
        /* Gone while the device was not running: nothing was taken from the rings. */
        backend_lost(v, "it went away while the device was stopped", false);
        return 0;
    }
    v->socket_handler =
        event_loop_add(&d->io.loop, vhost_user_fd(&v->vu), EPOLLIN | EPOLLRDHUP, on_socket, v);
    if (!v->socket_handler)
        return -1;
    if (start_backend(v, false) < 0) {
        /* A back-end that went away meanwhile is waited for; one that refused is an error. */
        if (v->vu.broken && v->reconnect_ms) {
            backend_lost(v, error_get(), true);
            return 0;
        }
        return error_prefix("vhost-user back-end at %s", v->socket);
    }
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
    if (v->listen_handler)
        event_loop_del(&d->io.loop, v->listen_handler);
    v->listen_handler = NULL;
    if (v->timer_handler) {
        struct itimerspec off = {0};
        timerfd_settime(v->timer_fd, 0, &off, NULL);
        event_loop_del(&d->io.loop, v->timer_handler);
    }
    v->timer_handler = NULL;
    v->reconnecting = false;
    /* A reset: nothing is in flight any more; the next start asks for a new buffer. */
    vhost_user_inflight_free(&v->inflight);
}

static bool features_ok(struct virtio_dev *d, uint64_t f)
{
    (void)d;
    (void)f;
    return true;
}

static void prepare(struct vhost_user_dev *v, const char *socket, uint64_t wanted_protocol)
{
    memset(v, 0, sizeof(*v));
    v->vu.fd = -1;
    v->timer_fd = -1;
    v->inflight.fd = -1;
    v->channel.fd = -1;
    v->socket = socket;
    v->wanted_protocol = wanted_protocol;
    v->reconnect_ms = VHOST_USER_RECONNECT_DEFAULT_S * 1000;
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++)
        v->calls[i] = (struct vhost_user_dev_call){.owner = v, .queue = i, .fd = -1};
    v->listener.fd = -1;
}

/* The handshake with a back-end just connected (either mode). */
static int handshake(struct vhost_user_dev *v, const char *name, const char *socket,
                     const struct guest_memory *mem, uint64_t wanted_protocol)
{
    if (vhost_user_handshake(&v->vu, wanted_protocol) < 0)
        return error_prefix("%s: %s", name, socket);
    v->backend_features = v->vu.features;
    if (!(v->backend_features & (1ULL << VIRTIO_F_VERSION_1)))
        return error_set("%s: the vhost-user back-end at %s does not offer VIRTIO_F_VERSION_1 "
                         "(ember's devices are modern only)",
                         name, socket);
    uint64_t slots;
    if (vhost_user_has_protocol(&v->vu, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) &&
        vhost_user_get_max_mem_slots(&v->vu, mem->nregions, &slots) < 0)
        return error_prefix("%s: %s", name, socket);
    if (open_channel(v, false) < 0)
        return error_prefix("%s: %s", name, socket);
    return 0;
}

int vhost_user_dev_connect(struct vhost_user_dev *v, const char *name, const char *socket,
                           const struct guest_memory *mem, uint64_t wanted_protocol)
{
    prepare(v, socket, wanted_protocol);
    if (!mem->has_memfd)
        return error_set("%s: a vhost-user back-end needs guest memory it can map (shared)", name);
    if (vhost_user_connect(&v->vu, name, socket, VHOST_USER_TIMEOUT_MS) < 0)
        return -1;
    return handshake(v, name, socket, mem, wanted_protocol);
}

int vhost_user_dev_listen(struct vhost_user_dev *v, const char *name, const char *socket,
                          const struct guest_memory *mem, uint64_t wanted_protocol,
                          unsigned wait_ms)
{
    prepare(v, socket, wanted_protocol);
    if (!mem->has_memfd)
        return error_set("%s: a vhost-user back-end needs guest memory it can map (shared)", name);
    if (vhost_user_listen(&v->listener, name, socket) < 0)
        return -1;
    log_info("%s: waiting up to %u s for a vhost-user back-end to connect to %s", name,
             wait_ms / 1000, socket);
    if (vhost_user_accept(&v->vu, name, &v->listener, (int)wait_ms, VHOST_USER_TIMEOUT_MS) < 0)
        return error_set("%s: no vhost-user back-end connected to %s within %u s (server "
                         "mode: the back-end connects, e.g. DPDK's vhost PMD with client=1)",
                         name, socket, wait_ms / 1000);
    return handshake(v, name, socket, mem, wanted_protocol);
}

void vhost_user_dev_set_reconnect(struct vhost_user_dev *v, unsigned seconds)
{
    if (seconds > VHOST_USER_RECONNECT_MAX_S)
        seconds = VHOST_USER_RECONNECT_MAX_S;
    v->reconnect_ms = seconds * 1000;
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
    /* Made here: the device's I/O thread may only arm it. */
    v->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (v->timer_fd < 0)
        return error_errno("%s: timerfd", name);
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
    iothread_call(&v->dev.io, watch_channel, v);
    if (v->channel.fd >= 0 && !v->channel_handler)
        return error_set("%s: watching the back-end's request channel failed", name);
    return 0;
}

/* At exit, the rings with requests the back-end had not answered (a receive ring's posted
 * buffers are such requests too): what a hung guest was waiting for. */
static void log_unanswered(struct vhost_user_dev *v)
{
    char line[512];
    size_t n = 0;
    for (unsigned i = 0; i < v->dev.nqueues && n < sizeof(line); i++) {
        unsigned left = vhost_user_dev_outstanding(v, i);
        if (!left)
            continue;
        const struct virtq *vq = &v->dev.queues[i].vq;
        int w =
            snprintf(line + n, sizeof(line) - n, "%s ring %u: %u (avail %u, used %u)", n ? "," : "",
                     i, left, (unsigned)__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE),
                     (unsigned)__atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE));
        if (w < 0)
            break;
        n += (size_t)w;
    }
    if (n)
        log_info("%s: requests left unanswered by the back-end at exit:%s", v->dev.name, line);
}

void vhost_user_dev_destroy(struct vhost_user_dev *v)
{
    if (v->dev.queues) {
        log_unanswered(v);
        virtio_dev_destroy(&v->dev);
    }
    if (v->direct_rings)
        log_info("%s: interrupts of %u ring(s) straight from the back-end to KVM", v->dev.name,
                 v->direct_rings);
    if (v->relayed)
        log_info("%s: %llu interrupts relayed from the back-end", v->dev.name,
                 (unsigned long long)v->relayed);
    if (v->reconnects)
        log_info("%s: resumed with %llu new back-end(s)", v->dev.name,
                 (unsigned long long)v->reconnects);
    if (v->channel_requests)
        log_info("%s: %llu request(s) from the back-end on its channel", v->dev.name,
                 (unsigned long long)v->channel_requests);
    log_limit_flush(&v->log_channel, LOG_WARN, "vhost-user back-end channel lines");
    log_limit_flush(&v->log_backend, LOG_WARN, "vhost-user back-end losses");
    log_limit_flush(&v->log_back, LOG_WARN, "vhost-user back-end returns");
    vhost_user_channel_close(&v->channel);
    vhost_user_close(&v->vu);
    vhost_user_listener_close(&v->listener);
    log_limit_flush(&v->log_refused, LOG_WARN, "refused vhost-user connections");
    vhost_user_inflight_free(&v->inflight);
    if (v->timer_fd >= 0)
        close(v->timer_fd);
    v->timer_fd = -1;
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++) {
        if (v->calls[i].fd >= 0)
            close(v->calls[i].fd);
        v->calls[i].fd = -1;
    }
}
