#include "virtio/vsock.h"

#include "backends/uds.h"
#include "snapshot/format.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define VSOCK_QUEUE_SIZE 256
#define RXQ              0
#define TXQ              1
#define EVQ              2
#define BATCH            64 /* packets per round before interrupting the guest */

#define VIRTIO_VSOCK_F_STREAM 0

#define NS_PER_MS          1000000ULL
#define CONNECT_TIMEOUT_NS (5000 * NS_PER_MS)  /* guest answers a REQUEST, host sends CONNECT */
#define CLOSE_TIMEOUT_NS   (10000 * NS_PER_MS) /* host program takes what the guest sent */
#define TIMER_TICK_NS      (250 * NS_PER_MS)
/* Tell the guest about freed room once this much accumulated: fewer
 * packets than one update per write, and never a stall (see flush()). */
#define CREDIT_THRESHOLD (VSOCK_CONN_BUF / 4)
#define HELLO_MAX        24 /* "CONNECT 4294967295\n" fits */
/* Local ports of host-initiated connections count from here, as Firecracker's do. */
#define VSOCK_FIRST_HOST_PORT (1u << 30)

enum conn_state {
    CONN_HELLO,      /* the host program connected; its CONNECT line is due */
    CONN_CONNECTING, /* REQUEST for the guest queued or sent; RESPONSE is due */
    CONN_ESTABLISHED,
};

/* What a connection has to tell the guest (bits of conn->pending). */
#define P_REQUEST  1u
#define P_RESPONSE 2u
#define P_RW       4u
#define P_SHUTDOWN 8u
#define P_CREDIT   16u

struct vsock_conn {
    struct virtio_vsock *v;
    struct vsock_conn *next, *prev; /* every connection */
    struct vsock_conn *hnext;       /* hash chain, once addressed */
    struct vsock_conn *pnext;       /* pending list */
    bool queued, hashed;
    enum conn_state state;
    uint32_t guest_port, host_port;
    int fd;
    struct event_handler *h;
    uint32_t events; /* current epoll interest */
    bool hup;        /* host side hung up: fd out of epoll, reads drain what is left */
    unsigned pending;
    uint32_t guest_shut;   /* SHUTDOWN flags from the guest so far */
    bool host_eof;         /* read the end of the host program's stream */
    bool rd_shut, wr_shut; /* shutdown() done on fd */
    uint64_t deadline;     /* CLOCK_MONOTONIC ns; 0 = none */
    char hello[HELLO_MAX];
    unsigned hello_len;
    /* Towards the guest: its receive window and what we sent into it. */
    uint32_t peer_buf_alloc, peer_fwd_cnt, rx_cnt;
    /* Towards the host: guest bytes taken, written to fd, last advertised. */
    uint32_t recv_cnt, fwd_cnt, fwd_cnt_sent;
    uint8_t *buf; /* VSOCK_CONN_BUF bytes, allocated on first need */
    uint32_t buf_head, buf_len;
};

/* ---- packet checks ------------------------------------------------------ */

enum vsock_verdict vsock_check_packet(const struct vsock_hdr *h, uint64_t payload_len,
                                      uint64_t guest_cid, const char **why)
{
    enum vsock_verdict v = VSOCK_REPLY_RST;
    *why = NULL;
    if (h->src_cid != guest_cid) {
        /* A reply would go to an address the guest does not own. */
        *why = "source CID is not the guest's";
        return VSOCK_DROP;
    }
    if (h->len > VSOCK_MAX_PKT)
        *why = "payload larger than 64 KiB";
    else if (h->len > payload_len) {
        *why = "len beyond the buffer";
        return VSOCK_DROP;
    } else if (h->dst_cid != VSOCK_HOST_CID)
        *why = "not addressed to the host (CID 2)";
    else if (h->type != VSOCK_TYPE_STREAM)
        *why = "socket type other than stream";
    else if (h->op == VSOCK_OP_INVALID || h->op > VSOCK_OP_CREDIT_REQUEST)
        *why = "unknown op";
    else if (h->op != VSOCK_OP_RW && h->len)
        *why = "payload on a control packet";
    else
        v = VSOCK_ACCEPT;
    /* Never answer an RST with an RST. */
    if (v == VSOCK_REPLY_RST && h->op == VSOCK_OP_RST)
        v = VSOCK_DROP;
    return v;
}

static void count_bad(struct virtio_vsock *v, uint64_t *counter, const char *why)
{
    (*counter)++;
    log_limited(&v->log_bad, LOG_WARN, "%s: guest packet refused: %s", v->dev.name, why);
}

/* ---- connection table --------------------------------------------------- */

static unsigned hash_of(uint32_t guest_port, uint32_t host_port)
{
    uint32_t x = guest_port * 0x9e3779b1u ^ host_port * 0x85ebca6bu;
    return (x >> 16) % (sizeof(((struct virtio_vsock *)0)->hash) / sizeof(void *));
}

static struct vsock_conn *conn_find(struct virtio_vsock *v, uint32_t guest_port, uint32_t host_port)
{
    for (struct vsock_conn *c = v->hash[hash_of(guest_port, host_port)]; c; c = c->hnext) {
        if (c->guest_port == guest_port && c->host_port == host_port)
            return c;
    }
    return NULL;
}

static void conn_set_key(struct virtio_vsock *v, struct vsock_conn *c, uint32_t guest_port,
                         uint32_t host_port)
{
    c->guest_port = guest_port;
    c->host_port = host_port;
    unsigned b = hash_of(guest_port, host_port);
    c->hnext = v->hash[b];
    v->hash[b] = c;
    c->hashed = true;
}

static void on_conn_event(void *opaque, uint32_t events);

static struct vsock_conn *conn_new(struct virtio_vsock *v, int fd, enum conn_state state,
                                   uint32_t events)
{
    struct vsock_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->v = v;
    c->fd = fd;
    c->state = state;
    c->events = events;
    c->h = event_loop_add(&v->dev.io.loop, fd, events, on_conn_event, c);
    if (!c->h) {
        free(c);
        return NULL;
    }
    c->next = v->conns;
    if (v->conns)
        v->conns->prev = c;
    v->conns = c;
    v->nconns++;
    return c;
}

static void pending_remove(struct virtio_vsock *v, struct vsock_conn *c)
{
    if (!c->queued)
        return;
    struct vsock_conn *prev = NULL;
    for (struct vsock_conn *p = v->pend_head; p; prev = p, p = p->pnext) {
        if (p != c)
            continue;
        if (prev)
            prev->pnext = c->pnext;
        else
            v->pend_head = c->pnext;
        if (v->pend_tail == c)
            v->pend_tail = prev;
        break;
    }
    c->queued = false;
    c->pnext = NULL;
}

static void pending_append(struct virtio_vsock *v, struct vsock_conn *c)
{
    if (c->queued)
        return;
    c->queued = true;
    c->pnext = NULL;
    if (v->pend_tail)
        v->pend_tail->pnext = c;
    else
        v->pend_head = c;
    v->pend_tail = c;
}

static void conn_free(struct virtio_vsock *v, struct vsock_conn *c)
{
    pending_remove(v, c);
    if (c->hashed) {
        for (struct vsock_conn **p = &v->hash[hash_of(c->guest_port, c->host_port)]; *p;
             p = &(*p)->hnext) {
            if (*p == c) {
                *p = c->hnext;
                break;
            }
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        v->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->h)
        event_loop_del(&v->dev.io.loop, c->h);
    close(c->fd);
    free(c->buf);
    free(c);
    v->nconns--;
    v->conns_removed++;
}

static void queue_ctrl(struct virtio_vsock *v, const struct vsock_hdr *h)
{
    if (v->ctrl_len == VSOCK_CTRL_QUEUE) {
        /* Only RSTs queue here, and the guest is not taking them. */
        v->rsts_dropped++;
        return;
    }
    v->ctrl[(v->ctrl_head + v->ctrl_len) % VSOCK_CTRL_QUEUE] = *h;
    v->ctrl_len++;
}

/* Answers a guest packet with RST, addressed back to its sender. */
static void reply_rst(struct virtio_vsock *v, const struct vsock_hdr *h)
{
    if (h->op == VSOCK_OP_RST)
        return;
    struct vsock_hdr r = {.src_cid = h->dst_cid,
                          .dst_cid = h->src_cid,
                          .src_port = h->dst_port,
                          .dst_port = h->src_port,
                          .type = VSOCK_TYPE_STREAM,
                          .op = VSOCK_OP_RST};
    queue_ctrl(v, &r);
}

/* Closes a connection; with rst, the guest is told (if it ever knew). */
static void conn_kill(struct virtio_vsock *v, struct vsock_conn *c, bool rst)
{
    if (rst && c->state != CONN_HELLO) {
        struct vsock_hdr r = {.src_cid = VSOCK_HOST_CID,
                              .dst_cid = v->guest_cid,
                              .src_port = c->host_port,
                              .dst_port = c->guest_port,
                              .type = VSOCK_TYPE_STREAM,
                              .op = VSOCK_OP_RST};
        queue_ctrl(v, &r);
    }
    conn_free(v, c);
}

/* How many bytes the guest can take now. */
static uint32_t peer_credit(const struct vsock_conn *c)
{
    uint32_t in_flight = c->rx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static void conn_mark(struct virtio_vsock *v, struct vsock_conn *c, unsigned bits)
{
    c->pending |= bits;
    pending_append(v, c);
}

static void arm_timer(struct virtio_vsock *v)
{
    if (v->timer_armed)
        return;
    struct itimerspec its = {.it_value = {.tv_nsec = (long)TIMER_TICK_NS},
                             .it_interval = {.tv_nsec = (long)TIMER_TICK_NS}};
    timerfd_settime(v->timer_fd, 0, &its, NULL);
    v->timer_armed = true;
}

static void set_deadline(struct virtio_vsock *v, struct vsock_conn *c, uint64_t ns)
{
    c->deadline = monotonic_ns() + ns;
    arm_timer(v);
}

/* Whether ember should read the host program's stream for the guest. */
static bool wants_read(const struct vsock_conn *c)
{
    return c->state == CONN_ESTABLISHED && !c->host_eof && !(c->guest_shut & VSOCK_SHUTDOWN_RCV) &&
           peer_credit(c) > 0;
}

/* Sets the epoll interest from the connection's state: readable only while
 * the guest has credit (that is the back-pressure on the host program),
 * writable only while guest bytes wait. */
static void conn_update(struct virtio_vsock *v, struct vsock_conn *c)
{
    bool read = wants_read(c) && !(c->pending & P_RW);
    if (c->hup) {
        /* Out of epoll: what is left is read when the guest can take it. */
        if (read)
            conn_mark(v, c, P_RW);
        return;
    }
    uint32_t ev = 0;
    if (c->state == CONN_HELLO || read)
        ev |= EPOLLIN;
    if (c->buf_len)
        ev |= EPOLLOUT;
    if (ev != c->events && event_loop_mod(&v->dev.io.loop, c->h, ev) == 0)
        c->events = ev;
}

static void credit_check(struct virtio_vsock *v, struct vsock_conn *c)
{
    if (c->fwd_cnt - c->fwd_cnt_sent >= CREDIT_THRESHOLD)
        conn_mark(v, c, P_CREDIT);
}

/* Writes buffered guest bytes to the host program. Returns false when the
 * connection was closed. The guest's view of our credit can only reach zero
 * with more than 3/4 of the buffer still full (the threshold is 1/4), so
 * draining always produces an update before the guest would stall. */
static bool flush(struct virtio_vsock *v, struct vsock_conn *c)
{
    while (c->buf_len) {
        struct iovec iov[2];
        int n = 1;
        uint32_t first = VSOCK_CONN_BUF - c->buf_head;
        if (first >= c->buf_len) {
            iov[0] = (struct iovec){c->buf + c->buf_head, c->buf_len};
        } else {
            iov[0] = (struct iovec){c->buf + c->buf_head, first};
            iov[1] = (struct iovec){c->buf, c->buf_len - first};
            n = 2;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (r <= 0) {
            v->flush_fails++;
            conn_kill(v, c, true);
            return false;
        }
        c->buf_head = (uint32_t)((c->buf_head + (uint32_t)r) % VSOCK_CONN_BUF);
        c->buf_len -= (uint32_t)r;
        c->fwd_cnt += (uint32_t)r;
    }
    credit_check(v, c);
    if (c->buf_len)
        return true;
    /* Drained: now the guest's shutdown can reach the host program. */
    if (c->guest_shut == (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND)) {
        conn_kill(v, c, true);
        return false;
    }
    if ((c->guest_shut & VSOCK_SHUTDOWN_SEND) && !c->wr_shut) {
        shutdown(c->fd, SHUT_WR);
        c->wr_shut = true;
    }
    return true;
}

/* ---- device -> guest ----------------------------------------------------- */

static void fill_hdr(struct virtio_vsock *v, struct vsock_conn *c, struct vsock_hdr *h, uint16_t op,
                     uint32_t len, uint32_t flags)
{
    *h = (struct vsock_hdr){.src_cid = VSOCK_HOST_CID,
                            .dst_cid = v->guest_cid,
                            .src_port = c->host_port,
                            .dst_port = c->guest_port,
                            .len = len,
                            .type = VSOCK_TYPE_STREAM,
                            .op = op,
                            .flags = flags,
                            .buf_alloc = VSOCK_CONN_BUF,
                            .fwd_cnt = c->fwd_cnt};
    /* Every packet carries our credit: no separate update is due. */
    c->fwd_cnt_sent = c->fwd_cnt;
    c->pending &= ~P_CREDIT;
}

/* The writable part of chain past skip bytes, at most max bytes of it. */
static int chain_in_iov(const struct virtq_chain *ch, uint64_t skip, uint64_t max,
                        struct iovec *iov)
{
    int n = 0;
    for (unsigned i = 0; i < ch->nin && max; i++) {
        const struct virtq_buf *b = &ch->bufs[ch->nout + i];
        if (skip >= b->len) {
            skip -= b->len;
            continue;
        }
        uint64_t len = b->len - skip;
        if (len > max)
            len = max;
        iov[n++] = (struct iovec){b->hva + skip, len};
        max -= len;
        skip = 0;
    }
    return n;
}

/* Puts c's next packet for the guest into ch; returns the bytes written,
 * 0 when c had nothing to send after all (ch stays unused). c may be
 * freed on return. */
static uint32_t serve_conn(struct virtio_vsock *v, struct vsock_conn *c, struct virtq_chain *ch)
{
    struct vsock_hdr h;
    uint32_t payload = 0;
    bool have = false;
    pending_remove(v, c);
    if (c->pending & P_REQUEST) {
        c->pending &= ~P_REQUEST;
        fill_hdr(v, c, &h, VSOCK_OP_REQUEST, 0, 0);
        have = true;
    } else if (c->pending & P_RESPONSE) {
        c->pending &= ~P_RESPONSE;
        fill_hdr(v, c, &h, VSOCK_OP_RESPONSE, 0, 0);
        have = true;
    } else {
        if ((c->pending & P_RW) && wants_read(c)) {
            uint64_t want = peer_credit(c);
            if (want > ch->in_len - VSOCK_HDR_LEN)
                want = ch->in_len - VSOCK_HDR_LEN;
            if (want > VSOCK_MAX_PKT)
                want = VSOCK_MAX_PKT;
            struct iovec iov[VSOCK_QUEUE_SIZE];
            int n = chain_in_iov(ch, VSOCK_HDR_LEN, want, iov);
            ssize_t r = readv(c->fd, iov, n);
            if (r > 0) {
                /* Straight into guest memory; more may wait: stay pending. */
                fill_hdr(v, c, &h, VSOCK_OP_RW, (uint32_t)r, 0);
                c->rx_cnt += (uint32_t)r;
                v->rx_bytes += (uint64_t)r;
                payload = (uint32_t)r;
                have = true;
            } else if (r == 0) {
                c->host_eof = true;
                c->pending |= P_SHUTDOWN;
                c->pending &= ~P_RW;
            } else if (errno == EAGAIN || errno == EINTR) {
                c->pending &= ~P_RW;
            } else {
                v->read_fails++;
                conn_kill(v, c, true);
                return 0;
            }
        } else {
            c->pending &= ~P_RW; /* credit or stream ran out meanwhile */
        }
        if (!have && (c->pending & P_SHUTDOWN)) {
            c->pending &= ~P_SHUTDOWN;
            /* A host program that hung up takes nothing more either. */
            uint32_t flags = VSOCK_SHUTDOWN_SEND | (c->hup ? VSOCK_SHUTDOWN_RCV : 0);
            fill_hdr(v, c, &h, VSOCK_OP_SHUTDOWN, 0, flags);
            have = true;
        } else if (!have && (c->pending & P_CREDIT)) {
            fill_hdr(v, c, &h, VSOCK_OP_CREDIT_UPDATE, 0, 0);
            have = true;
        }
    }
    conn_update(v, c);
    if (c->pending)
        pending_append(v, c);
    if (!have)
        return 0;
    virtq_chain_write(ch, 0, &h, sizeof(h));
    return VSOCK_HDR_LEN + payload;
}

static void start_polling(struct virtio_vsock *v);

/* The next chain of queue q, as virtio_dev_pop takes it, except that while the I/O thread
 * polls an empty ring leaves the driver's kicks off: poll_idle looks at the ring instead. */
static int pop(struct virtio_vsock *v, unsigned q, struct virtq_chain *ch)
{
    struct virtio_dev *d = &v->dev;
    if (!v->poll.polling)
        return virtio_dev_pop(d, q, ch);
    if (!virtio_dev_queue_live(d, q))
        return 0;
    struct virtq *vq = &d->queues[q].vq;
    int got = virtq_pop(vq, ch);
    if (got < 0)
        virtio_dev_fail(d, vq->error);
    return got;
}

static void process_rx(struct virtio_vsock *v)
{
    struct virtio_dev *d = &v->dev;
    struct virtq *q = &d->queues[RXQ].vq;
    bool pushed = false;
    unsigned round = 0;
    if (v->frozen || v->reset_unacked)
        return; /* thaw, or the driver's acknowledgement, comes back */
    v->rx_starved = false;
    while (d->active && (v->ctrl_len || v->pend_head)) {
        int got = pop(v, RXQ, &v->rx_chain);
        if (got < 0)
            return;
        if (got == 0) {
            /* No buffers: host sockets wait (unread) until the guest's kick, or until
             * poll_idle finds buffers. */
            v->rx_starved = true;
            break;
        }
        struct virtq_chain *ch = &v->rx_chain;
        if (ch->nout || ch->in_len <= VSOCK_HDR_LEN) {
            virtq_unpop(q, 1);
            virtio_dev_fail(d, "receive buffer not writable or too small for a packet");
            return;
        }
        uint32_t written;
        if (v->ctrl_len) {
            written = VSOCK_HDR_LEN;
            virtq_chain_write(ch, 0, &v->ctrl[v->ctrl_head], VSOCK_HDR_LEN);
            v->ctrl_head = (v->ctrl_head + 1) % VSOCK_CTRL_QUEUE;
            v->ctrl_len--;
            v->rsts_sent++;
        } else {
            written = serve_conn(v, v->pend_head, ch);
        }
        if (!written) {
            virtq_unpop(q, 1);
            continue;
        }
        virtq_chain_mark_written(ch, written);
        virtq_push(q, ch->head, written);
        v->rx_packets++;
        pushed = true;
        if (++round % BATCH == 0)
            virtio_dev_signal_used(d, RXQ);
    }
    if (pushed)
        virtio_dev_signal_used(d, RXQ);
}

/* ---- host sockets --------------------------------------------------------- */

/* Reads the host program's "CONNECT <port>\n" a byte at a time, so that
 * stream bytes after it stay in the socket. */
static void read_hello(struct virtio_vsock *v, struct vsock_conn *c)
{
    for (;;) {
        char ch;
        ssize_t r = recv(c->fd, &ch, 1, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (c->hup)
                conn_free(v, c);
            return;
        }
        if (r <= 0 || c->hello_len == HELLO_MAX - 1) {
            conn_free(v, c);
            return;
        }
        if (ch != '\n') {
            c->hello[c->hello_len++] = ch;
            continue;
        }
        c->hello[c->hello_len] = '\0';
        break;
    }
    const char *p = c->hello;
    if (strncmp(p, "CONNECT ", 8) != 0) {
        conn_free(v, c);
        return;
    }
    p += 8;
    uint64_t port = 0;
    if (*p < '0' || *p > '9') {
        conn_free(v, c);
        return;
    }
    for (; *p >= '0' && *p <= '9' && port <= 0xffffffffULL; p++)
        port = port * 10 + (uint64_t)(*p - '0');
    if ((*p && *p != '\r') || port > 0xffffffffULL) {
        conn_free(v, c);
        return;
    }
    /* Local ports from 2^30 up, as Firecracker does, skipping ones in use. */
    uint32_t host_port;
    do {
        host_port = v->next_host_port++;
        if (v->next_host_port == 0)
            v->next_host_port = VSOCK_FIRST_HOST_PORT;
    } while (conn_find(v, (uint32_t)port, host_port));
    conn_set_key(v, c, (uint32_t)port, host_port);
    c->state = CONN_CONNECTING;
    set_deadline(v, c, CONNECT_TIMEOUT_NS);
    conn_mark(v, c, P_REQUEST);
    conn_update(v, c);
}

static void on_conn_event(void *opaque, uint32_t events)
{
    struct vsock_conn *c = opaque;
    struct virtio_vsock *v = c->v;
    if (events & (EPOLLHUP | EPOLLERR)) {
        /* Level-triggered HUP would fire forever: leave epoll and finish
         * with plain reads and writes. */
        c->hup = true;
        event_loop_del(&v->dev.io.loop, c->h);
        c->h = NULL;
        c->events = 0;
    }
    switch (c->state) {
    case CONN_HELLO:
        read_hello(v, c);
        break;
    case CONN_CONNECTING:
        if (c->hup)
            conn_kill(v, c, true);
        break;
    case CONN_ESTABLISHED:
        if (((events & EPOLLOUT) || c->hup) && !flush(v, c))
            break;
        if (((events & EPOLLIN) || c->hup) && wants_read(c))
            conn_mark(v, c, P_RW);
        conn_update(v, c);
        break;
    }
    uint64_t before = v->rx_packets;
    process_rx(v);
    /* The guest answers what it receives (credit updates, replies): polled for. */
    if (v->rx_packets != before && v->dev.active)
        start_polling(v);
}

static void on_accept(void *opaque, uint32_t events)
{
    struct virtio_vsock *v = opaque;
    (void)events;
    for (;;) {
        int fd = uds_accept(v->listen_fd);
        if (fd < 0)
            break;
        if (v->nconns >= VSOCK_MAX_CONNS) {
            close(fd);
            v->conns_refused++;
            continue;
        }
        struct vsock_conn *c = conn_new(v, fd, CONN_HELLO, EPOLLIN);
        if (!c) {
            close(fd);
            continue;
        }
        set_deadline(v, c, CONNECT_TIMEOUT_NS);
    }
}

static void on_timer(void *opaque, uint32_t events)
{
    struct virtio_vsock *v = opaque;
    (void)events;
    uint64_t ticks;
    ssize_t ignored = read(v->timer_fd, &ticks, sizeof(ticks));
    (void)ignored;
    uint64_t now = monotonic_ns();
    bool more = false;
    for (struct vsock_conn *c = v->conns, *next; c; c = next) {
        next = c->next;
        if (!c->deadline)
            continue;
        if (now < c->deadline) {
            more = true;
            continue;
        }
        /* A CONNECT line or a guest answer that never came, or a host
         * program that never took the guest's last bytes. */
        v->conns_timed_out++;
        conn_kill(v, c, true);
    }
    if (!more) {
        struct itimerspec off = {0};
        timerfd_settime(v->timer_fd, 0, &off, NULL);
        v->timer_armed = false;
    }
    process_rx(v);
}

/* ---- guest -> device ------------------------------------------------------ */

/* The guest connects to (CID 2, port P): ember connects to PATH_P. */
static void guest_connect(struct virtio_vsock *v, const struct vsock_hdr *h)
{
    if (v->nconns >= VSOCK_MAX_CONNS) {
        v->conns_refused++;
        reply_rst(v, h);
        return;
    }
    char path[UDS_PATH_MAX];
    snprintf(path, sizeof(path), "%s_%u", v->uds_path, h->dst_port);
    int fd = uds_connect(path);
    struct vsock_conn *c = fd < 0 ? NULL : conn_new(v, fd, CONN_ESTABLISHED, 0);
    if (!c) {
        if (fd >= 0)
            close(fd);
        v->conns_refused++;
        reply_rst(v, h);
        return;
    }
    conn_set_key(v, c, h->src_port, h->dst_port);
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    v->conns_opened++;
    conn_mark(v, c, P_RESPONSE);
    conn_update(v, c);
}

/* The host program's socket takes what it can; the rest waits in the
 * connection's buffer, which the guest's credit keeps within bounds. */
static void take_data(struct virtio_vsock *v, struct vsock_conn *c, const struct virtq_chain *ch,
                      uint32_t len)
{
    c->recv_cnt += len;
    v->tx_bytes += len;
    uint64_t off = VSOCK_HDR_LEN;
    if (!c->buf_len) {
        struct iovec iov[VSOCK_QUEUE_SIZE];
        int n = 0;
        uint64_t skip = off, left = len;
        for (unsigned i = 0; i < ch->nout && left; i++) {
            const struct virtq_buf *b = &ch->bufs[i];
            if (skip >= b->len) {
                skip -= b->len;
                continue;
            }
            uint64_t l = b->len - skip < left ? b->len - skip : left;
            iov[n++] = (struct iovec){b->hva + skip, l};
            left -= l;
            skip = 0;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r = n ? sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT) : 0;
        if (r < 0 && errno != EAGAIN && errno != EINTR) {
            v->write_fails++;
            conn_kill(v, c, true);
            return;
        }
        if (r > 0) {
            c->fwd_cnt += (uint32_t)r;
            off += (uint64_t)r;
            len -= (uint32_t)r;
        }
    }
    if (len && !c->buf) {
        c->buf = malloc(VSOCK_CONN_BUF);
        if (!c->buf) {
            log_limited(&v->log_host, LOG_ERROR, "%s: out of memory for a connection buffer",
                        v->dev.name);
            conn_kill(v, c, true);
            return;
        }
    }
    while (len) {
        uint32_t tail = (c->buf_head + c->buf_len) % VSOCK_CONN_BUF;
        uint32_t run = VSOCK_CONN_BUF - tail < len ? VSOCK_CONN_BUF - tail : len;
        virtq_chain_read(ch, off, c->buf + tail, run);
        c->buf_len += run;
        off += run;
        len -= run;
    }
    credit_check(v, c);
    conn_update(v, c);
}

static void handle_packet(struct virtio_vsock *v, const struct virtq_chain *ch)
{
    struct vsock_hdr h;
    if (ch->nin) {
        count_bad(v, &v->bad_packets, "writable buffer in a transmit chain");
        return;
    }
    if (ch->out_len < VSOCK_HDR_LEN) {
        count_bad(v, &v->bad_packets, "shorter than a packet header");
        return;
    }
    virtq_chain_read(ch, 0, &h, sizeof(h));
    const char *why;
    enum vsock_verdict verdict =
        vsock_check_packet(&h, ch->out_len - VSOCK_HDR_LEN, v->guest_cid, &why);
    if (verdict != VSOCK_ACCEPT) {
        count_bad(v, &v->bad_packets, why);
        if (verdict == VSOCK_REPLY_RST)
            reply_rst(v, &h);
        return;
    }
    v->tx_packets++;
    struct vsock_conn *c = conn_find(v, h.src_port, h.dst_port);
    if (!c) {
        if (h.op == VSOCK_OP_REQUEST) {
            guest_connect(v, &h);
        } else if (h.op != VSOCK_OP_RST) {
            v->unknown_conn_packets++;
            reply_rst(v, &h);
        }
        return;
    }
    if (h.op == VSOCK_OP_RST) {
        conn_kill(v, c, false);
        return;
    }
    /* The guest cannot have consumed more than we sent it. */
    if ((int32_t)(h.fwd_cnt - c->rx_cnt) > 0) {
        count_bad(v, &v->credit_violations, "fwd_cnt ahead of the bytes sent to the guest");
        conn_kill(v, c, true);
        return;
    }
    c->peer_buf_alloc = h.buf_alloc;
    c->peer_fwd_cnt = h.fwd_cnt;
    switch (h.op) {
    case VSOCK_OP_REQUEST:
        count_bad(v, &v->bad_packets, "REQUEST for a connection that exists");
        conn_kill(v, c, true);
        return;
    case VSOCK_OP_RESPONSE: {
        if (c->state != CONN_CONNECTING) {
            count_bad(v, &v->bad_packets, "RESPONSE to no REQUEST");
            conn_kill(v, c, true);
            return;
        }
        char ok[32];
        int n = snprintf(ok, sizeof(ok), "OK %u\n", c->host_port);
        /* A fresh socket's buffer takes these few bytes whole. */
        if (send(c->fd, ok, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
            conn_kill(v, c, true);
            return;
        }
        c->state = CONN_ESTABLISHED;
        c->deadline = 0;
        v->conns_opened++;
        break;
    }
    case VSOCK_OP_SHUTDOWN:
        if (c->state != CONN_ESTABLISHED) {
            count_bad(v, &v->bad_packets, "SHUTDOWN before the connection was set up");
            conn_kill(v, c, true);
            return;
        }
        c->guest_shut |= h.flags & (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND);
        if ((c->guest_shut & VSOCK_SHUTDOWN_RCV) && !c->rd_shut) {
            shutdown(c->fd, SHUT_RD);
            c->rd_shut = true;
        }
        if (!flush(v, c))
            return;
        if (c->guest_shut == (VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND))
            set_deadline(v, c, CLOSE_TIMEOUT_NS);
        break;
    case VSOCK_OP_RW:
        if (c->state != CONN_ESTABLISHED || (c->guest_shut & VSOCK_SHUTDOWN_SEND)) {
            count_bad(v, &v->bad_packets, "data outside an open stream");
            conn_kill(v, c, true);
            return;
        }
        if ((uint64_t)(c->recv_cnt - c->fwd_cnt) + h.len > VSOCK_CONN_BUF) {
            count_bad(v, &v->credit_violations, "data beyond the credit ember gave");
            conn_kill(v, c, true);
            return;
        }
        take_data(v, c, ch, h.len);
        return;
    case VSOCK_OP_CREDIT_REQUEST:
        conn_mark(v, c, P_CREDIT);
        break;
    default: /* CREDIT_UPDATE: the window was taken above */
        break;
    }
    conn_update(v, c);
}

static void process_tx(struct virtio_vsock *v)
{
    struct virtio_dev *d = &v->dev;
    struct virtq *q = &d->queues[TXQ].vq;
    bool pushed = false;
    unsigned round = 0;
    if (v->frozen)
        return; /* thaw comes back */
    /* Whatever brought us here (a kick, a thaw) is work the polling window counts from. */
    if (v->poll.polling)
        poll_window_work(&v->poll, monotonic_ns());
    virtq_enable_kicks(q, false);
    while (d->active) {
        int got = pop(v, TXQ, &v->tx_chain);
        if (got < 0)
            return;
        if (got == 0)
            break;
        /* Never held back: ember buffers within the credit it gave. */
        handle_packet(v, &v->tx_chain);
        virtq_push(q, v->tx_chain.head, 0);
        pushed = true;
        if (++round % BATCH == 0)
            virtio_dev_signal_used(d, TXQ);
    }
    if (pushed)
        virtio_dev_signal_used(d, TXQ);
    process_rx(v);
}

/* ---- polling --------------------------------------------------------------- */

/* Work came (a kick, or packets for the guest from a host socket): the I/O thread polls for
 * what follows. */
static void start_polling(struct virtio_vsock *v)
{
    if (!poll_window_on(&v->poll))
        return;
    if (v->poll.polling)
        poll_window_work(&v->poll, monotonic_ns());
    else
        poll_window_start(&v->poll, monotonic_ns());
}

/* Whether packets wait for receive buffers the guest has yet to give. */
static bool rx_wants_buffers(const struct virtio_vsock *v)
{
    return v->rx_starved && !v->reset_unacked && virtio_dev_queue_live(&v->dev, RXQ);
}

/* After each round of the I/O thread's events while polling (poll_window.h): the transmit
 * ring, and the receive ring while packets wait for buffers, looked at with kicks off (host
 * sockets stay in the loop's epoll set, which a polling thread looks at every 20 us at least:
 * util/iothread.c). The event queue carries only a snapshot's reset: never polled. Returns
 * the iothread's next wait: 0 while polling, -1 (until an event) once it stopped. */
static int poll_idle(void *opaque)
{
    struct virtio_vsock *v = opaque;
    struct virtio_dev *d = &v->dev;
    if (!d->active || !v->poll.polling || v->frozen)
        return -1;
    bool work = false;
    if (virtio_dev_queue_live(d, TXQ) && virtq_has_avail(&d->queues[TXQ].vq)) {
        process_tx(v); /* and what it has for the guest */
        work = true;
    }
    if (d->active && rx_wants_buffers(v) && virtq_has_avail(&d->queues[RXQ].vq)) {
        process_rx(v);
        work = true;
    }
    if (!d->active)
        return -1;
    if (work) {
        v->poll_hits++;
        poll_window_work(&v->poll, monotonic_ns());
        return 0;
    }
    if (poll_window_keep(&v->poll, monotonic_ns(), false))
        return 0;
    /* The window closed: ask for kicks again, and look once more for work that raced with
     * that (the driver may have added a buffer before it saw kicks were wanted). */
    if ((virtio_dev_queue_live(d, TXQ) && virtq_enable_kicks(&d->queues[TXQ].vq, true)) ||
        (rx_wants_buffers(v) && virtq_enable_kicks(&d->queues[RXQ].vq, true))) {
        v->poll_races++;
        poll_window_resume(&v->poll, monotonic_ns());
        return 0;
    }
    return -1;
}

static void set_polling(struct virtio_vsock *v)
{
    if (poll_window_on(&v->poll)) {
        v->dev.io.idle = poll_idle;
        v->dev.io.idle_opaque = v;
    }
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    struct virtio_vsock *v = d->opaque;
    if (q != EVQ && !v->frozen)
        start_polling(v); /* before the queue is served: kicks stay off */
    if (q == TXQ) {
        process_tx(v);
    } else if (q == RXQ) {
        virtq_enable_kicks(&d->queues[RXQ].vq, false);
        process_rx(v);
    } else if (q == EVQ && v->reset_unacked && !v->frozen) {
        /* The driver handled the reset and gave its event buffer back. */
        v->reset_unacked = false;
        process_rx(v);
    }
}

/* ---- snapshots -------------------------------------------------------------- */

/* Tells the driver that every connection is gone (TRANSPORT_RESET on the event queue).
 * False when it could not be told: no event queue, or no buffer in it. */
static bool send_transport_reset(struct virtio_vsock *v)
{
    struct virtio_dev *d = &v->dev;
    if (!virtio_dev_queue_live(d, EVQ)) {
        v->reset_fails++;
        log_limited(&v->log_host, LOG_WARN,
                    "%s: no event queue: the guest is not told its connections were reset",
                    d->name);
        return false;
    }
    struct virtq *q = &d->queues[EVQ].vq;
    struct virtq_chain *ch = &v->ev_chain;
    int got = virtq_pop(q, ch);
    if (got < 0) {
        virtio_dev_fail(d, q->error);
        return false;
    }
    if (got == 0) {
        v->reset_fails++;
        log_limited(&v->log_host, LOG_WARN,
                    "%s: no event buffer: the guest is not told its connections were reset",
                    d->name);
        return false;
    }
    uint32_t event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET; /* le32 id */
    if (ch->nout || ch->in_len < sizeof(event)) {
        virtq_unpop(q, 1);
        virtio_dev_fail(d, "event buffer not writable or shorter than an event");
        return false;
    }
    virtq_chain_write(ch, 0, &event, sizeof(event));
    /* Linux takes an event whose used length is exactly its size. */
    virtq_chain_mark_written(ch, sizeof(event));
    virtq_push(q, ch->head, sizeof(event));
    /* The driver's kick when it gives the buffer back is its acknowledgement: asked for
     * beyond the buffers in the ring now (Linux keeps eight there, so a kick for the next
     * one alone would never come). The vCPUs are paused: nothing is added meanwhile. */
    (void)virtq_enable_kicks_for_more(q);
    v->reset_unacked = true;
    v->resets_sent++;
    virtio_dev_signal_used(d, EVQ);
    return true;
}

/* Connections do not survive a snapshot, as in Firecracker: the host programs' sockets are
 * closed and the driver told to drop its side, here, in the VM that goes on, and, from its
 * saved memory, in every VM restored from the snapshot. */
static void freeze(struct virtio_dev *d)
{
    struct virtio_vsock *v = d->opaque;
    /* Polling stops with kicks off: thaw serves the transmit queue, which asks for them. */
    d->io.idle = NULL;
    poll_window_stop(&v->poll, monotonic_ns());
    while (v->conns)
        conn_free(v, v->conns);
    v->ctrl_len = v->ctrl_head = 0;
    struct itimerspec off = {0};
    timerfd_settime(v->timer_fd, 0, &off, NULL);
    v->timer_armed = false;
    send_transport_reset(v);
    v->frozen = true;
}

static void thaw(struct virtio_dev *d)
{
    struct virtio_vsock *v = d->opaque;
    v->frozen = false;
    set_polling(v);
    process_tx(v);
}

/* The restored used ring holds the reset sent when the snapshot was taken, whose interrupt
 * the restored guest may not have taken yet: raised again (a second one is harmless). If
 * that reset could not be sent, it is tried now. */
static void restored(struct virtio_dev *d)
{
    struct virtio_vsock *v = d->opaque;
    if (v->reset_unacked && virtio_dev_queue_live(d, EVQ)) {
        d->interrupts++;
        d->transport->notify_queue(d, EVQ);
        /* Asked for again (the restored guest memory holds the request already). */
        if (virtq_enable_kicks_for_more(&d->queues[EVQ].vq))
            v->reset_unacked = false;
        return;
    }
    send_transport_reset(v);
}

static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_vsock *v = d->opaque;
    snapshot_put_u8(w, v->reset_unacked);
    snapshot_put_u32(w, v->next_host_port);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    struct virtio_vsock *v = d->opaque;
    uint8_t unacked;
    uint32_t port;
    if (snapshot_get_u8(c, &unacked) < 0 || snapshot_get_u32(c, &port) < 0)
        return -1;
    if (unacked > 1)
        return error_set("reset flag %u is neither 0 nor 1", unacked);
    if (unacked && !d->queues[EVQ].has_restore_position)
        return error_set("a transport reset awaits acknowledgement on an event queue that was "
                         "not being served");
    if (port < VSOCK_FIRST_HOST_PORT)
        return error_set("next host port %u is below the first one, %u", port,
                         VSOCK_FIRST_HOST_PORT);
    v->reset_unacked = unacked != 0;
    v->next_host_port = port;
    return 0;
}

/* ---- lifecycle -------------------------------------------------------------- */

static int activate(struct virtio_dev *d)
{
    struct virtio_vsock *v = d->opaque;
    /* reset_unacked stays: a restored device keeps waiting for the driver's answer. */
    v->frozen = v->rx_starved = false;
    poll_window_init(&v->poll, v->poll_us, v->poll_adaptive);
    set_polling(v);
    v->listen_handler = event_loop_add(&d->io.loop, v->listen_fd, EPOLLIN, on_accept, v);
    v->timer_handler = event_loop_add(&d->io.loop, v->timer_fd, EPOLLIN, on_timer, v);
    if (!v->listen_handler || !v->timer_handler)
        return -1;
    if (d->queues[TXQ].enabled)
        process_tx(v);
    return 0;
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_vsock *v = d->opaque;
    d->io.idle = NULL;
    poll_window_stop(&v->poll, monotonic_ns());
    v->rx_starved = false;
    /* A reset forgets every connection, on both sides. */
    while (v->conns)
        conn_free(v, v->conns);
    v->ctrl_len = v->ctrl_head = 0;
    v->frozen = v->reset_unacked = false;
    struct event_handler **hs[] = {&v->listen_handler, &v->timer_handler};
    for (unsigned i = 0; i < 2; i++) {
        if (*hs[i])
            event_loop_del(&d->io.loop, *hs[i]);
        *hs[i] = NULL;
    }
    struct itimerspec off = {0};
    timerfd_settime(v->timer_fd, 0, &off, NULL);
    v->timer_armed = false;
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_vsock *v = d->opaque;
    uint64_t cid = v->guest_cid; /* le64 guest_cid */
    memcpy(data, (uint8_t *)&cid + offset, len);
}

static const struct virtio_dev_ops vsock_ops = {
    .read_config = read_config,
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .freeze = freeze,
    .save = save,
    .restore = restore,
    .thaw = thaw,
    .restored = restored,
};

int virtio_vsock_init(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path,
                      const struct guest_memory *mem)
{
    return virtio_vsock_init_listening(v, guest_cid, uds_path, -1, mem);
}

int virtio_vsock_init_listening(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path,
                                int listen_fd, const struct guest_memory *mem)
{
    memset(v, 0, sizeof(*v));
    /* Owned from here: the device's destroy closes it, whatever fails. */
    v->listen_fd = listen_fd;
    v->timer_fd = -1;
    v->next_host_port = VSOCK_FIRST_HOST_PORT;
    /* The host never addresses the guest by its CID (it connects through PATH), so any
     * 32-bit CID works; the API takes 0-2 and 2^32-1 as Firecracker does (--vsock does not). */
    if (guest_cid > 0xffffffffULL)
        return error_set("vsock: guest CID %llu does not fit 32 bits",
                         (unsigned long long)guest_cid);
    v->guest_cid = guest_cid;
    /* PATH_<port> must fit a socket address too. */
    if (strlen(uds_path) + sizeof("_4294967295") > UDS_PATH_MAX)
        return error_set("vsock: socket path '%s' is too long", uds_path);
    v->uds_path = strdup(uds_path);
    if (!v->uds_path)
        return error_set("out of memory");
    if (v->listen_fd < 0)
        v->listen_fd = uds_listen(uds_path);
    if (v->listen_fd < 0)
        return error_prefix("vsock");
    v->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (v->timer_fd < 0)
        return error_errno("vsock: timerfd");
    if (virtq_chain_alloc(&v->rx_chain, VSOCK_QUEUE_SIZE) < 0 ||
        virtq_chain_alloc(&v->tx_chain, VSOCK_QUEUE_SIZE) < 0 ||
        virtq_chain_alloc(&v->ev_chain, VSOCK_QUEUE_SIZE) < 0)
        return -1;
    return virtio_dev_init(&v->dev, "vsock", VIRTIO_ID_VSOCK, 1ULL << VIRTIO_VSOCK_F_STREAM, 3,
                           VSOCK_QUEUE_SIZE, sizeof(uint64_t), &vsock_ops, v, mem);
}

void virtio_vsock_destroy(struct virtio_vsock *v)
{
    virtio_dev_destroy(&v->dev);
    char what[64];
    snprintf(what, sizeof(what), "%s: refused guest packets", v->dev.name);
    log_limit_flush(&v->log_bad, LOG_WARN, what);
    if (v->tx_packets || v->rx_packets || v->bad_packets)
        log_info("vsock: %llu connections (%llu refused); guest sent %llu packets, %llu bytes, "
                 "received %llu packets, %llu bytes; refused packets %llu, credit violations %llu, "
                 "packets for unknown connections %llu, RSTs dropped %llu; polling found work "
                 "%llu times, %llu of them as it stopped",
                 (unsigned long long)v->conns_opened, (unsigned long long)v->conns_refused,
                 (unsigned long long)v->tx_packets, (unsigned long long)v->tx_bytes,
                 (unsigned long long)v->rx_packets, (unsigned long long)v->rx_bytes,
                 (unsigned long long)v->bad_packets, (unsigned long long)v->credit_violations,
                 (unsigned long long)v->unknown_conn_packets, (unsigned long long)v->rsts_dropped,
                 (unsigned long long)v->poll_hits, (unsigned long long)v->poll_races);
    if (v->listen_fd >= 0) {
        close(v->listen_fd);
        if (v->uds_path && !v->keep_path)
            unlink(v->uds_path);
    }
    if (v->timer_fd >= 0)
        close(v->timer_fd);
    v->listen_fd = v->timer_fd = -1;
    virtq_chain_free(&v->rx_chain);
    virtq_chain_free(&v->tx_chain);
    virtq_chain_free(&v->ev_chain);
    free(v->uds_path);
    v->uds_path = NULL;
}
