/* User-mode networking through libslirp, loaded with dlopen() only when a
 * guest asks for it: libslirp brings GLib, whose weight every other VM
 * would otherwise carry. libslirp is not thread-safe, so one thread owns
 * the Slirp instance; frames cross to and from the device's iothread
 * through two bounded queues. */
#include "backends/net.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <slirp/libslirp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define QUEUE_FRAMES 512
#define QUEUE_BYTES  (2u << 20) /* frames waiting in one direction: what the guest can pin */
#define MAX_FRAME    65536
#define MAX_POLLFDS  1024
#define MAX_TIMERS   16

struct frame {
    uint32_t len;
    uint8_t *data;
};

struct frame_queue {
    struct frame frames[QUEUE_FRAMES];
    unsigned head, count;
    size_t bytes;
};

struct slirp_timer {
    bool used, armed;
    SlirpTimerId id;
    void *cb_opaque;
    int64_t expire_ms;
};

struct slirp_api {
    Slirp *(*new_)(const SlirpConfig *, const SlirpCb *, void *);
    void (*cleanup)(Slirp *);
    void (*pollfds_fill)(Slirp *, uint32_t *, SlirpAddPollCb, void *);
    void (*pollfds_poll)(Slirp *, int, SlirpGetREventsCb, void *);
    void (*input)(Slirp *, const uint8_t *, int);
    void (*handle_timer)(Slirp *, SlirpTimerId, void *);
    int (*add_hostfwd)(Slirp *, int, struct in_addr, int, struct in_addr, int);
};

struct user_net {
    struct slirp_api api;
    void *lib;
    Slirp *slirp;
    pthread_t thread;
    bool stop;
    int wake_fd;    /* to the slirp thread: frames to send, or stop */
    int rx_fd;      /* to the device: frames for the guest */
    int tx_room_fd; /* to the device: the send queue has room again */
    pthread_mutex_t lock;
    struct frame_queue to_guest, to_net;
    bool to_net_was_full;
    struct slirp_timer timers[MAX_TIMERS];
    struct pollfd pollfds[MAX_POLLFDS];
    int npollfds;
    uint64_t rx_dropped;
    struct log_limit log_guest, log_timers; /* what the guest's traffic can cause */
};

static void wake(int fd)
{
    uint64_t one = 1;
    ssize_t ignored = write(fd, &one, sizeof(one));
    (void)ignored;
}

static void drain(int fd)
{
    uint64_t v;
    ssize_t ignored = read(fd, &v, sizeof(v));
    (void)ignored;
}

static bool queue_push(struct frame_queue *q, const void *data, size_t len)
{
    if (q->count == QUEUE_FRAMES || len > MAX_FRAME || q->bytes + len > QUEUE_BYTES)
        return false;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return false;
    memcpy(copy, data, len);
    q->frames[(q->head + q->count) % QUEUE_FRAMES] = (struct frame){(uint32_t)len, copy};
    q->count++;
    q->bytes += len;
    return true;
}

static bool queue_pop(struct frame_queue *q, struct frame *out)
{
    if (!q->count)
        return false;
    *out = q->frames[q->head];
    q->head = (q->head + 1) % QUEUE_FRAMES;
    q->count--;
    q->bytes -= out->len;
    return true;
}

/* ---- callbacks, on the slirp thread ---------------------------------- */

static ssize_t cb_send_packet(const void *buf, size_t len, void *opaque)
{
    struct user_net *u = opaque;
    pthread_mutex_lock(&u->lock);
    bool ok = len <= MAX_FRAME && queue_push(&u->to_guest, buf, len);
    if (!ok)
        u->rx_dropped++; /* the guest is not taking frames: TCP retransmits */
    pthread_mutex_unlock(&u->lock);
    if (ok)
        wake(u->rx_fd);
    return (ssize_t)len;
}

static void cb_guest_error(const char *msg, void *opaque)
{
    struct user_net *u = opaque;
    log_limited(&u->log_guest, LOG_WARN, "user networking: guest error: %s", msg);
}

static int64_t cb_clock_ns(void *opaque)
{
    (void)opaque;
    return (int64_t)monotonic_ns();
}

static void *cb_timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    struct user_net *u = opaque;
    for (unsigned i = 0; i < MAX_TIMERS; i++) {
        if (!u->timers[i].used) {
            u->timers[i] = (struct slirp_timer){.used = true, .id = id, .cb_opaque = cb_opaque};
            return &u->timers[i];
        }
    }
    log_limited(&u->log_timers, LOG_ERROR, "user networking: out of timers");
    return NULL;
}

static void cb_timer_free(void *timer, void *opaque)
{
    (void)opaque;
    if (timer)
        memset(timer, 0, sizeof(struct slirp_timer));
}

static void cb_timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
    (void)opaque;
    struct slirp_timer *t = timer;
    if (t) {
        t->expire_ms = expire_ms;
        t->armed = true;
    }
}

static void cb_register_fd(int fd, void *opaque)
{
    (void)fd;
    (void)opaque;
}

static void cb_notify(void *opaque)
{
    struct user_net *u = opaque;
    wake(u->wake_fd);
}

static int cb_add_poll(int fd, int events, void *opaque)
{
    struct user_net *u = opaque;
    if (u->npollfds == MAX_POLLFDS)
        return -1;
    short ev = 0;
    if (events & SLIRP_POLL_IN)
        ev |= POLLIN;
    if (events & SLIRP_POLL_OUT)
        ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI)
        ev |= POLLPRI;
    u->pollfds[u->npollfds] = (struct pollfd){.fd = fd, .events = ev};
    return u->npollfds++;
}

static int cb_get_revents(int idx, void *opaque)
{
    struct user_net *u = opaque;
    if (idx < 0 || idx >= u->npollfds)
        return 0;
    short r = u->pollfds[idx].revents;
    int out = 0;
    if (r & POLLIN)
        out |= SLIRP_POLL_IN;
    if (r & POLLOUT)
        out |= SLIRP_POLL_OUT;
    if (r & POLLPRI)
        out |= SLIRP_POLL_PRI;
    if (r & POLLERR)
        out |= SLIRP_POLL_ERR;
    if (r & POLLHUP)
        out |= SLIRP_POLL_HUP;
    return out;
}

static const SlirpCb callbacks = {
    .send_packet = cb_send_packet,
    .guest_error = cb_guest_error,
    .clock_get_ns = cb_clock_ns,
    .timer_free = cb_timer_free,
    .timer_mod = cb_timer_mod,
    .register_poll_fd = cb_register_fd,
    .unregister_poll_fd = cb_register_fd,
    .notify = cb_notify,
    .timer_new_opaque = cb_timer_new_opaque,
};

static void *slirp_main(void *arg)
{
    struct user_net *u = arg;
    /* Before the first frame from the guest or packet from the network. */
    seccomp_enter(SECCOMP_SLIRP, "slirp");
    while (!__atomic_load_n(&u->stop, __ATOMIC_ACQUIRE)) {
        uint32_t timeout = UINT32_MAX;
        int64_t now = (int64_t)(monotonic_ns() / 1000000);
        for (unsigned i = 0; i < MAX_TIMERS; i++) {
            struct slirp_timer *t = &u->timers[i];
            if (t->used && t->armed) {
                int64_t left = t->expire_ms - now;
                uint32_t l = left < 0 ? 0 : (uint32_t)left;
                if (l < timeout)
                    timeout = l;
            }
        }
        u->npollfds = 0;
        cb_add_poll(u->wake_fd, SLIRP_POLL_IN, u);
        u->api.pollfds_fill(u->slirp, &timeout, cb_add_poll, u);
        int r = poll(u->pollfds, (nfds_t)u->npollfds, timeout == UINT32_MAX ? -1 : (int)timeout);
        u->api.pollfds_poll(u->slirp, r < 0, cb_get_revents, u);
        if (u->pollfds[0].revents & POLLIN)
            drain(u->wake_fd);
        /* Frames from the guest. */
        for (;;) {
            struct frame f;
            pthread_mutex_lock(&u->lock);
            bool got = queue_pop(&u->to_net, &f);
            bool room = got && u->to_net_was_full;
            if (room)
                u->to_net_was_full = false;
            pthread_mutex_unlock(&u->lock);
            if (!got)
                break;
            if (room)
                wake(u->tx_room_fd);
            u->api.input(u->slirp, f.data, f.len);
            free(f.data);
        }
        now = (int64_t)(monotonic_ns() / 1000000);
        for (unsigned i = 0; i < MAX_TIMERS; i++) {
            struct slirp_timer *t = &u->timers[i];
            if (t->used && t->armed && t->expire_ms <= now) {
                t->armed = false;
                u->api.handle_timer(u->slirp, t->id, t->cb_opaque);
            }
        }
    }
    return NULL;
}

/* ---- the device side --------------------------------------------------- */

static ssize_t user_recv(struct net_backend *be, const struct iovec *iov, int n)
{
    struct user_net *u = be->priv;
    struct frame f;
    pthread_mutex_lock(&u->lock);
    bool got = queue_pop(&u->to_guest, &f);
    pthread_mutex_unlock(&u->lock);
    if (!got) {
        /* Reset the doorbell, then look once more: a frame queued in
         * between rings it again. */
        drain(u->rx_fd);
        pthread_mutex_lock(&u->lock);
        got = queue_pop(&u->to_guest, &f);
        pthread_mutex_unlock(&u->lock);
        if (!got)
            return -EAGAIN;
    }
    size_t done = 0;
    for (int i = 0; i < n && done < f.len; i++) {
        size_t c = iov[i].iov_len < f.len - done ? iov[i].iov_len : f.len - done;
        memcpy(iov[i].iov_base, f.data + done, c);
        done += c;
    }
    free(f.data);
    return (ssize_t)f.len; /* more than copied: the caller sees truncation */
}

static ssize_t user_send(struct net_backend *be, const struct iovec *iov, int n)
{
    struct user_net *u = be->priv;
    uint8_t buf[MAX_FRAME];
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        if (iov[i].iov_len > sizeof(buf) - len)
            return -EMSGSIZE;
        memcpy(buf + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    pthread_mutex_lock(&u->lock);
    bool ok = queue_push(&u->to_net, buf, len);
    if (!ok) {
        u->to_net_was_full = true;
        drain(u->tx_room_fd);
    }
    pthread_mutex_unlock(&u->lock);
    if (!ok)
        return -EAGAIN;
    wake(u->wake_fd);
    return (ssize_t)len;
}

static void free_queue(struct frame_queue *q)
{
    struct frame f;
    while (queue_pop(q, &f))
        free(f.data);
}

static void user_close(struct net_backend *be)
{
    struct user_net *u = be->priv;
    if (!u)
        return;
    if (u->slirp) {
        __atomic_store_n(&u->stop, true, __ATOMIC_RELEASE);
        wake(u->wake_fd);
        pthread_join(u->thread, NULL);
        u->api.cleanup(u->slirp);
    }
    free_queue(&u->to_guest);
    free_queue(&u->to_net);
    int fds[] = {u->wake_fd, u->rx_fd, u->tx_room_fd};
    for (unsigned i = 0; i < 3; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    /* The library stays loaded: GLib does not like being unloaded. */
    free(u);
    be->priv = NULL;
}

static const struct net_backend_ops user_ops = {
    .recv = user_recv,
    .send = user_send,
    .close = user_close,
};

static int load_api(struct user_net *u)
{
    u->lib = dlopen("libslirp.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!u->lib)
        return error_set("--net user needs libslirp (Debian package libslirp0): %s", dlerror());
#define SYM(field, name)                                                                           \
    do {                                                                                           \
        *(void **)&u->api.field = dlsym(u->lib, name);                                             \
        if (!u->api.field)                                                                         \
            return error_set("libslirp lacks %s", name);                                           \
    } while (0)
    SYM(new_, "slirp_new");
    SYM(cleanup, "slirp_cleanup");
    SYM(pollfds_fill, "slirp_pollfds_fill");
    SYM(pollfds_poll, "slirp_pollfds_poll");
    SYM(input, "slirp_input");
    SYM(handle_timer, "slirp_handle_timer");
    SYM(add_hostfwd, "slirp_add_hostfwd");
#undef SYM
    return 0;
}

int net_user_open(struct net_backend *be, const struct slirp_forward *fwd, unsigned nfwd)
{
    memset(be, 0, sizeof(*be));
    be->rx_fd = be->tx_fd = -1;
    struct user_net *u = calloc(1, sizeof(*u));
    if (!u)
        return error_set("out of memory");
    be->priv = u;
    be->ops = &user_ops;
    u->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    u->rx_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    u->tx_room_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&u->lock, NULL);
    if (u->wake_fd < 0 || u->rx_fd < 0 || u->tx_room_fd < 0) {
        user_close(be);
        return error_errno("eventfd");
    }
    if (load_api(u) < 0) {
        user_close(be);
        return -1;
    }
    SlirpConfig cfg = {
        .version = 4,
        .in_enabled = true,
        .if_mtu = 1500,
        .if_mru = 1500,
    };
    inet_pton(AF_INET, "10.0.2.0", &cfg.vnetwork);
    inet_pton(AF_INET, "255.255.255.0", &cfg.vnetmask);
    inet_pton(AF_INET, "10.0.2.2", &cfg.vhost);
    inet_pton(AF_INET, "10.0.2.15", &cfg.vdhcp_start);
    inet_pton(AF_INET, "10.0.2.3", &cfg.vnameserver);
    u->slirp = u->api.new_(&cfg, &callbacks, u);
    if (!u->slirp) {
        user_close(be);
        return error_set("libslirp could not start");
    }
    struct in_addr guest;
    inet_pton(AF_INET, "10.0.2.15", &guest);
    for (unsigned i = 0; i < nfwd; i++) {
        struct in_addr host = {.s_addr = fwd[i].host_addr};
        if (u->api.add_hostfwd(u->slirp, fwd[i].udp, host, fwd[i].host_port, guest,
                               fwd[i].guest_port) < 0) {
            int port = fwd[i].host_port;
            user_close(be);
            return error_set("cannot forward host port %d (in use?)", port);
        }
    }
    if (pthread_create(&u->thread, NULL, slirp_main, u) != 0) {
        u->api.cleanup(u->slirp);
        u->slirp = NULL;
        user_close(be);
        return error_set("cannot start the user networking thread");
    }
    pthread_setname_np(u->thread, "slirp");
    be->kind = "user";
    be->vnet_hdr = false;
    be->rx_fd = u->rx_fd;
    be->tx_fd = u->tx_room_fd;
    be->tx_wait_events = EPOLLIN;
    return 0;
}
