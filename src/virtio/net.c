#include "virtio/net.h"

#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "virtio/net_features.h"

#include <errno.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define NET_QUEUE_SIZE 256
#define RXQ            0
#define TXQ            1
#define BATCH          64  /* frames per round before interrupting the guest */
#define BUDGET         256 /* frames one way before the other way (and timers) get a turn */

#define HDR_F_NEEDS_CSUM 1
#define GSO_NONE         0
#define GSO_TCPV4        1
#define GSO_UDP          3
#define GSO_TCPV6        4
#define GSO_ECN          0x80

struct net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};

_Static_assert(sizeof(struct net_hdr) == VIRTIO_NET_HDR_LEN, "virtio_net_hdr_v1 is 12 bytes");

static bool has(const struct virtio_net *n, unsigned bit)
{
    return virtio_dev_has_feature(&n->dev, bit);
}

static void count_drop(struct virtio_net *n, uint64_t *counter, const char *why)
{
    (*counter)++;
    log_limited(&n->log_drop, LOG_WARN, "%s: dropping a frame: %s", n->dev.name, why);
}

static void arm_timer(struct virtio_net *n, uint64_t ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(ns / 1000000000ULL),
                                          .tv_nsec = (long)(ns % 1000000000ULL)}};
    if (ns == 0)
        its.it_value.tv_nsec = 1;
    timerfd_settime(n->timer_fd, 0, &its, NULL);
}

/* Takes tokens for one frame of len bytes, or arms the timer. */
static bool tokens(struct virtio_net *n, struct token_bucket *bytes, struct token_bucket *ops,
                   uint64_t len)
{
    if (token_bucket_unlimited(bytes) && token_bucket_unlimited(ops))
        return true;
    uint64_t wait = token_bucket_wait_ns(ops, 1), wb = token_bucket_wait_ns(bytes, len);
    if (wb > wait)
        wait = wb;
    if (wait) {
        (*(bytes == &n->rx_bytes_tb ? &n->rx_limited : &n->tx_limited))++;
        arm_timer(n, wait);
        return false;
    }
    token_bucket_take(ops, 1);
    token_bucket_take(bytes, len);
    return true;
}

/* ---- MMDS ---------------------------------------------------------------- */

static void process_rx(struct virtio_net *n);

/* Arms the MMDS timer for the stack's next deadline (retransmission, window probe). */
static void mmds_arm_timer(struct virtio_net *n)
{
    uint64_t ms = mmds_stack_next_deadline(n->mmds);
    struct itimerspec its = {
        .it_value = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000}};
    timerfd_settime(n->mmds_timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void on_mmds_timer(void *opaque, uint32_t events)
{
    struct virtio_net *n = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(n->mmds_timer_fd, &v, sizeof(v));
    (void)ignored;
    if (!n->dev.active || n->frozen)
        return; /* thaw arms it again */
    /* The timers run even when the guest takes no frames (no receive buffers): the next
     * deadline is then later, never one already past, which would spin this thread. */
    mmds_stack_run_timers(n->mmds, mmds_now_ms());
    process_rx(n);
    mmds_arm_timer(n);
}

/* A checked transmit frame for MMDS goes to its stack (a copy: the guest may change its
 * buffers meanwhile) and not to the host. False when it is not for MMDS. */
static bool mmds_detour(struct virtio_net *n, const struct virtq_chain *c, const struct net_hdr *h)
{
    uint8_t head[42]; /* enough to see an ARP target or an IPv4 destination */
    uint64_t len = c->out_len - VIRTIO_NET_HDR_LEN;
    size_t peek = len < sizeof(head) ? (size_t)len : sizeof(head);
    virtq_chain_read(c, VIRTIO_NET_HDR_LEN, head, peek);
    if (!mmds_stack_claims(n->mmds, head, peek))
        return false;
    virtq_chain_read(c, VIRTIO_NET_HDR_LEN, n->mmds_frame, (size_t)len);
    mmds_stack_receive(n->mmds, n->mmds_frame, (size_t)len, (h->flags & HDR_F_NEEDS_CSUM) != 0,
                       mmds_now_ms());
    return true;
}

/* ---- transmit ---------------------------------------------------------- */

/* Whether a guest's header asks only for what was negotiated and fits the
 * frame (the host kernel checks again; a guest gets no further). */
static const char *check_tx_header(const struct virtio_net *n, const struct net_hdr *h,
                                   uint64_t frame_len)
{
    if (frame_len < 14)
        return "shorter than an Ethernet header";
    if (frame_len > VIRTIO_NET_MAX_FRAME)
        return "longer than 64 KiB";
    if (h->flags & ~HDR_F_NEEDS_CSUM)
        return "unknown header flags";
    if (h->flags & HDR_F_NEEDS_CSUM) {
        if (!has(n, VIRTIO_NET_F_CSUM))
            return "checksum offload not negotiated";
        if ((uint32_t)h->csum_start + h->csum_offset + 2 > frame_len)
            return "checksum position outside the frame";
    }
    uint8_t gso = h->gso_type & ~GSO_ECN;
    if (gso == GSO_NONE)
        return (h->gso_type & GSO_ECN) ? "ECN without segmentation" : NULL;
    bool ok = (gso == GSO_TCPV4 && has(n, VIRTIO_NET_F_HOST_TSO4)) ||
              (gso == GSO_TCPV6 && has(n, VIRTIO_NET_F_HOST_TSO6)) ||
              (gso == GSO_UDP && has(n, VIRTIO_NET_F_HOST_UFO));
    if (!ok)
        return "segmentation offload not negotiated";
    if ((h->gso_type & GSO_ECN) && !has(n, VIRTIO_NET_F_HOST_ECN))
        return "ECN not negotiated";
    if (!(h->flags & HDR_F_NEEDS_CSUM) || h->gso_size == 0 || h->hdr_len > frame_len)
        return "inconsistent segmentation header";
    return NULL;
}

/* Builds the iovec of a transmit chain past skip bytes. */
static int tx_iov(const struct virtq_chain *c, uint64_t skip, struct iovec *iov)
{
    int cnt = 0;
    for (unsigned i = 0; i < c->nout; i++) {
        const struct virtq_buf *b = &c->bufs[i];
        if (skip >= b->len) {
            skip -= b->len;
            continue;
        }
        iov[cnt++] = (struct iovec){.iov_base = b->hva + skip, .iov_len = b->len - skip};
        skip = 0;
    }
    return cnt;
}

static void process_tx(struct virtio_net *n);

static void on_tx_room(void *opaque, uint32_t events)
{
    struct virtio_net *n = opaque;
    (void)events;
    event_loop_del(&n->dev.io.loop, n->tx_handler);
    n->tx_handler = NULL;
    if (n->dev.active)
        process_tx(n);
}

/* Pops and checks frames until NET_TX_BATCH are held; malformed ones go back at once. False
 * when the queue broke. */
static bool fill_tx(struct virtio_net *n, bool *pushed)
{
    struct virtio_dev *d = &n->dev;
    struct virtq *q = &d->queues[TXQ].vq;
    while (n->tx_held < NET_TX_BATCH && n->tx_consumed < BUDGET) {
        struct virtq_chain *c = &n->tx_chains[n->tx_held];
        int got = virtq_pop(q, c);
        if (got < 0) {
            virtio_dev_fail(d, q->error);
            return false;
        }
        if (got == 0) {
            if (n->tx_held == 0 && n->tx_consumed == 0)
                n->no_tx_frames++;
            break;
        }
        struct net_hdr h;
        const char *bad = NULL;
        if (c->nin)
            bad = "writable buffer in a transmit chain";
        else if (c->out_len < sizeof(h))
            bad = "no virtio-net header";
        else {
            virtq_chain_read(c, 0, &h, sizeof(h));
            bad = check_tx_header(n, &h, c->out_len - sizeof(h));
        }
        if (bad) {
            n->tx_malformed++;
            count_drop(n, &n->tx_dropped, bad);
            virtq_push(q, c->head, 0);
            *pushed = true;
            n->tx_consumed++;
            continue;
        }
        if (!tokens(n, &n->tx_bytes_tb, &n->tx_ops_tb, c->out_len - sizeof(h))) {
            /* Taken again when the timer says the bucket has refilled. */
            virtq_unpop(q, 1);
            n->tx_throttled = true;
            break;
        }
        if (n->opts.has_mac && c->out_len >= sizeof(h) + 12) {
            uint8_t src[6];
            virtq_chain_read(c, sizeof(h) + 6, src, sizeof(src));
            if (memcmp(src, n->opts.mac, sizeof(src)))
                n->tx_spoofed_mac++; /* counted, as Firecracker does, and sent */
        }
        if (n->mmds && mmds_detour(n, c, &h)) {
            virtq_push(q, c->head, 0);
            *pushed = true;
            n->mmds_detoured = true;
            n->tx_consumed++;
            continue;
        }
        /* A tap takes the header ember checked, not the guest's copy, which another vCPU
         * could have changed since. */
        memcpy(n->tx_hdrs[n->tx_held], &h, sizeof(h));
        n->tx_held++;
    }
    return true;
}

static void swap_held(struct virtio_net *n, unsigned a, unsigned b)
{
    if (a == b)
        return;
    struct virtq_chain c = n->tx_chains[a];
    n->tx_chains[a] = n->tx_chains[b];
    n->tx_chains[b] = c;
    uint8_t h[VIRTIO_NET_HDR_LEN];
    memcpy(h, n->tx_hdrs[a], sizeof(h));
    memcpy(n->tx_hdrs[a], n->tx_hdrs[b], sizeof(h));
    memcpy(n->tx_hdrs[b], h, sizeof(h));
}

/* Hands the held frames to the backend (a batch where it takes one) and returns to the
 * guest those it took or refused for good; frames it had no room for stay held, in order,
 * and the host's room is waited for. Returns how many went back to the guest. */
static unsigned send_held(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    struct virtq *q = &d->queues[TXQ].vq;
    struct iovec iov[2 * (NET_QUEUE_SIZE + 1)]; /* room for the longest chain, and more */
    struct net_frame frames[NET_TX_BATCH];
    ssize_t res[NET_TX_BATCH];
    unsigned k = 0, used = 0;
    for (; k < n->tx_held; k++) {
        const struct virtq_chain *c = &n->tx_chains[k];
        if (used + c->nout + 1 > sizeof(iov) / sizeof(iov[0]))
            break; /* the rest go next round */
        int cnt = 0;
        if (n->be.vnet_hdr)
            iov[used + cnt++] =
                (struct iovec){.iov_base = n->tx_hdrs[k], .iov_len = VIRTIO_NET_HDR_LEN};
        cnt += tx_iov(c, VIRTIO_NET_HDR_LEN, iov + used + cnt);
        frames[k] = (struct net_frame){.iov = iov + used, .cnt = cnt};
        used += (unsigned)cnt;
    }
    if (k > 1 && n->be.ops->send_batch) {
        n->be.ops->send_batch(&n->be, frames, k, res);
    } else {
        for (unsigned i = 0; i < k; i++) {
            res[i] = n->be.ops->send(&n->be, frames[i].iov, frames[i].cnt);
            if (res[i] == -EAGAIN) {
                for (unsigned j = i + 1; j < k; j++)
                    res[j] = -EAGAIN; /* not tried: they must not overtake it */
                break;
            }
        }
    }
    unsigned kept = 0, returned = 0;
    for (unsigned i = 0; i < k; i++) {
        if (res[i] == -EAGAIN) {
            swap_held(n, i, kept++);
            continue;
        }
        if (res[i] < 0) {
            n->tap_write_fails++;
            count_drop(n, &n->tx_dropped, strerror((int)-res[i]));
        } else {
            n->tx_frames++;
            n->tx_bytes += n->tx_chains[i].out_len - VIRTIO_NET_HDR_LEN;
        }
        virtq_push(q, n->tx_chains[i].head, 0);
        returned++;
    }
    bool full = kept > 0;
    for (unsigned i = k; i < n->tx_held; i++)
        swap_held(n, i, kept++);
    n->tx_held = kept;
    if (full) {
        /* The host side is full: wait for room. */
        n->tx_pushback++;
        if (!n->tx_handler)
            n->tx_handler =
                event_loop_add(&d->io.loop, n->be.tx_fd, n->be.tx_wait_events, on_tx_room, n);
    }
    return returned;
}

static void process_tx_queue(struct virtio_net *n);

static void process_tx(struct virtio_net *n)
{
    /* Whatever brought us here (a kick, room on the host, the rate limiter's timer) is work
     * the polling window counts from, not only what poll_idle finds itself. */
    if (n->poll.polling)
        poll_window_work(&n->poll, monotonic_ns());
    process_tx_queue(n);
    if (n->mmds_detoured && n->dev.active) {
        /* MMDS may have answers: they go to the receive queue now. */
        n->mmds_detoured = false;
        process_rx(n);
        mmds_arm_timer(n);
    }
}

static void process_tx_queue(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    struct virtq *q = &d->queues[TXQ].vq;
    if (n->tx_handler || !virtio_dev_queue_live(d, TXQ) || n->frozen)
        return; /* waiting for room (on_tx_room comes back), no transmit queue, or frozen */
    bool pushed = false;
    n->tx_throttled = false;
    n->tx_consumed = 0;
    virtq_enable_kicks(q, false);
    for (unsigned done = 0;;) {
        if (!fill_tx(n, &pushed))
            return;
        if (n->tx_consumed >= BUDGET && !n->tx_held) {
            /* Frames that went nowhere near the host (dropped, or MMDS's) count too: a guest
             * that keeps sending them gets the same turn as one that keeps the tap busy. */
            virtio_dev_kick(d, TXQ);
            break;
        }
        if (n->tx_held == 0) {
            if (n->tx_throttled)
                break; /* the timer comes back, kicks stay off meanwhile */
            if (n->poll.polling)
                break; /* no kicks while the I/O thread polls the ring (poll_idle) */
            if (virtq_enable_kicks(q, true)) {
                virtq_enable_kicks(q, false);
                continue;
            }
            break;
        }
        unsigned returned = send_held(n);
        if (returned) {
            virtio_dev_signal_used(d, TXQ);
            pushed = false;
        }
        if (n->tx_handler || n->tx_throttled)
            break;
        done += returned;
        if (done >= BUDGET) {
            /* A guest that keeps the queue full would otherwise keep this thread here, and
             * frames from the host would wait: come back after the loop's other events. */
            virtio_dev_kick(d, TXQ);
            break;
        }
    }
    if (pushed)
        virtio_dev_signal_used(d, TXQ);
}

/* ---- receive ----------------------------------------------------------- */

static void watch_rx(struct virtio_net *n, bool on)
{
    if (on == n->rx_watching)
        return;
    event_loop_mod(&n->dev.io.loop, n->rx_handler, on ? EPOLLIN : 0);
    n->rx_watching = on;
}

/* Places rx_buf into guest buffers: true when delivered (or dropped),
 * false when the guest has no buffers (then the frame waits). */
static bool deliver(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    struct virtq *q = &d->queues[RXQ].vq;
    bool merge = has(n, VIRTIO_NET_F_MRG_RXBUF);
    size_t len = n->rx_pending;
    unsigned nchains = 0;
    uint64_t room = 0;
    while (room < len) {
        if (nchains == sizeof(n->rx_chains) / sizeof(n->rx_chains[0]) || (nchains && !merge))
            break;
        int got = virtq_pop(q, &n->rx_chains[nchains]);
        if (got < 0) {
            virtio_dev_fail(d, q->error);
            n->rx_pending = 0;
            return true;
        }
        if (got == 0) {
            virtq_unpop(q, (uint16_t)nchains);
            return false;
        }
        if (n->rx_chains[nchains].nout) {
            /* A receive buffer the device may not write: the driver's bug. */
            virtq_unpop(q, (uint16_t)(nchains + 1));
            virtio_dev_fail(d, "readable buffer in a receive chain");
            n->rx_pending = 0;
            return true;
        }
        room += n->rx_chains[nchains].in_len;
        nchains++;
    }
    if (room < len) {
        /* Too big for the buffers the guest offers: the frame goes, the
         * buffers stay for the next one. */
        virtq_unpop(q, (uint16_t)nchains);
        count_drop(n, &n->rx_dropped, "larger than the guest's receive buffers");
        n->rx_pending = 0;
        return true;
    }
    struct net_hdr *h = (struct net_hdr *)n->rx_buf;
    h->num_buffers = (uint16_t)nchains;
    size_t off = 0;
    for (unsigned i = 0; i < nchains; i++) {
        size_t take = n->rx_chains[i].in_len < len - off ? n->rx_chains[i].in_len : len - off;
        virtq_chain_write(&n->rx_chains[i], 0, n->rx_buf + off, take);
        virtq_chain_mark_written(&n->rx_chains[i], take);
        virtq_push(q, n->rx_chains[i].head, (uint32_t)take);
        off += take;
    }
    n->rx_frames++;
    n->rx_bytes += len - sizeof(*h);
    n->rx_pending = 0;
    return true;
}

static void process_rx(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    struct virtq *q = &d->queues[RXQ].vq;
    if (n->frozen)
        return; /* thaw comes back */
    if (!virtio_dev_queue_live(d, RXQ)) {
        /* No receive queue: frames stay with the host, which drops (and
         * counts) what does not fit; the tap is not watched meanwhile. */
        watch_rx(n, false);
        return;
    }
    bool pushed = false;
    unsigned round = 0;
    for (;;) {
        /* The tap stays readable: the loop brings us back after the transmit side's turn. */
        if (round == BUDGET && !n->rx_pending)
            break;
        if (!n->rx_pending && n->mmds) {
            /* MMDS's frames first: they are few, and the guest waits for them. */
            size_t len = mmds_stack_next_frame(n->mmds, n->rx_buf + sizeof(struct net_hdr),
                                               VIRTIO_NET_MAX_FRAME, mmds_now_ms());
            if (len) {
                memset(n->rx_buf, 0, sizeof(struct net_hdr));
                n->rx_pending = len + sizeof(struct net_hdr);
            }
        }
        if (!n->rx_pending) {
            size_t skip = n->be.vnet_hdr ? 0 : sizeof(struct net_hdr);
            struct iovec iov = {.iov_base = n->rx_buf + skip,
                                .iov_len = VIRTIO_NET_MAX_FRAME + sizeof(struct net_hdr) - skip};
            ssize_t r = n->be.ops->recv(&n->be, &iov, 1);
            if (r == -EAGAIN)
                break;
            if (r < 0) {
                n->tap_read_fails++;
                count_drop(n, &n->rx_dropped, strerror((int)-r));
                break;
            }
            if ((size_t)r > iov.iov_len || (size_t)r + skip < sizeof(struct net_hdr)) {
                count_drop(n, &n->rx_dropped, "frame from the host too large");
                continue;
            }
            if (skip)
                memset(n->rx_buf, 0, sizeof(struct net_hdr)); /* no offload info */
            n->rx_pending = (size_t)r + skip;
        }
        /* A frame that waited for buffers paid for itself when it first tried. */
        if (!n->rx_charged) {
            if (!tokens(n, &n->rx_bytes_tb, &n->rx_ops_tb,
                        n->rx_pending - sizeof(struct net_hdr))) {
                watch_rx(n, false);
                break;
            }
            n->rx_charged = true;
        }
        if (!deliver(n)) {
            if (!n->rx_starved)
                n->no_rx_buffers++;
            n->rx_starved = true;
            /* Not enough buffers: stop reading the host until the guest adds more (its kick
             * on the receive queue, or, while the I/O thread polls, poll_idle finding them),
             * which pushes back on it. The ring may still hold the buffers just given back,
             * too few for this frame: only new ones count. */
            if (!n->poll.polling && virtq_enable_kicks_for_more(q))
                continue;
            watch_rx(n, false);
            break;
        }
        n->rx_charged = n->rx_starved = false;
        if (!d->active)
            return;
        pushed = true;
        if (++round % BATCH == 0)
            virtio_dev_signal_used(d, RXQ);
    }
    if (pushed)
        virtio_dev_signal_used(d, RXQ);
}

/* ---- polling (user-space data path) ------------------------------------ */

/* Whether the transmit ring is worth looking at: live, and not waiting for the host's room
 * (on_tx_room comes back) or for the rate limiter's tokens (its timer comes back), which
 * polling would only spin on. */
static bool tx_can_take(const struct virtio_net *n)
{
    return virtio_dev_queue_live(&n->dev, TXQ) && !n->tx_handler && !n->tx_throttled;
}

/* Whether a frame waits for receive buffers the guest has yet to give (its tokens taken). */
static bool rx_wants_buffers(const struct virtio_net *n)
{
    return virtio_dev_queue_live(&n->dev, RXQ) && n->rx_starved && n->rx_pending;
}

/* Work came (a kick, or frames from the host): the I/O thread polls for what follows. */
static void start_polling(struct virtio_net *n)
{
    if (!poll_window_on(&n->poll))
        return;
    if (n->poll.polling)
        poll_window_work(&n->poll, monotonic_ns());
    else
        poll_window_start(&n->poll, monotonic_ns());
}

/* After each round of the I/O thread's events while polling (poll_window.h): the transmit
 * ring, and the receive ring when a frame waits for buffers, are looked at with kicks off.
 * Frames from the host are not read here: the loop's epoll_wait, which a polling thread calls
 * without a timeout at least every 20 us (util/iothread.c), reports the backend's descriptor,
 * and a read per look would cost the system call the thread saves. Returns the iothread's next
 * wait: 0 while polling, -1 (until an event) once it stopped. */
static int poll_idle(void *opaque)
{
    struct virtio_net *n = opaque;
    struct virtio_dev *d = &n->dev;
    if (!d->active || !n->poll.polling || n->frozen)
        return -1;
    bool work = false;
    if (tx_can_take(n) && virtq_has_avail(&d->queues[TXQ].vq)) {
        process_tx(n);
        work = true;
    }
    if (d->active && rx_wants_buffers(n) && virtq_has_avail(&d->queues[RXQ].vq)) {
        /* As a kick of the receive queue would: the host read again (process_rx stops
         * watching it if the frame still finds too few buffers: mergeable ones can be). */
        watch_rx(n, true);
        process_rx(n);
        work = work || !n->rx_starved;
    }
    if (!d->active)
        return -1;
    if (work) {
        n->poll_hits++;
        poll_window_work(&n->poll, monotonic_ns());
        return 0;
    }
    if (poll_window_keep(&n->poll, monotonic_ns(), false))
        return 0;
    /* The window closed: ask for kicks again, and look once more for work that raced with
     * that (the driver may have added a buffer before it saw kicks were wanted). */
    if ((tx_can_take(n) && virtq_enable_kicks(&d->queues[TXQ].vq, true)) ||
        (rx_wants_buffers(n) && virtq_enable_kicks_for_more(&d->queues[RXQ].vq))) {
        n->poll_races++;
        poll_window_resume(&n->poll, monotonic_ns());
        return 0;
    }
    return -1;
}

static void on_rx(void *opaque, uint32_t events)
{
    struct virtio_net *n = opaque;
    (void)events;
    n->rx_host_events++;
    if (!n->dev.active)
        return;
    uint64_t before = n->rx_frames;
    process_rx(n);
    /* The guest answers what it receives (a stream's acknowledgements): polled for. */
    if (n->rx_frames != before && n->dev.active)
        start_polling(n);
}

static void on_timer(void *opaque, uint32_t events)
{
    struct virtio_net *n = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(n->timer_fd, &v, sizeof(v));
    (void)ignored;
    /* One timer serves both directions: the fire counts for the one that waited on it. */
    (*(n->tx_throttled ? &n->tx_limiter_wakeups : &n->rx_limiter_wakeups))++;
    if (!n->dev.active || n->frozen)
        return;
    if (virtio_dev_queue_live(&n->dev, RXQ))
        watch_rx(n, true);
    process_rx(n);
    process_tx(n);
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    struct virtio_net *n = d->opaque;
    if (n->frozen)
        return; /* thaw looks at both queues */
    /* Before the queue is served: what it takes, it takes with kicks left off. */
    start_polling(n);
    if (q == TXQ) {
        process_tx(n);
    } else if (q == RXQ) {
        /* New receive buffers: resume reading the host. */
        virtq_enable_kicks(&d->queues[RXQ].vq, false);
        watch_rx(n, true);
        process_rx(n);
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

static bool features_ok(struct virtio_dev *d, uint64_t f)
{
    struct virtio_net *n = d->opaque;
    if (!n->be.offloads || !n->be.ops->set_offloads)
        return true;
    /* The host may hand us only what the guest can take. */
    unsigned tun = 0;
    if (f & (1ULL << VIRTIO_NET_F_GUEST_CSUM)) {
        tun |= TUN_F_CSUM;
        if (f & (1ULL << VIRTIO_NET_F_GUEST_TSO4))
            tun |= TUN_F_TSO4;
        if (f & (1ULL << VIRTIO_NET_F_GUEST_TSO6))
            tun |= TUN_F_TSO6;
        if (f & (1ULL << VIRTIO_NET_F_GUEST_ECN))
            tun |= TUN_F_TSO_ECN;
        if (f & (1ULL << VIRTIO_NET_F_GUEST_UFO))
            tun |= TUN_F_UFO;
    }
    if (n->be.ops->set_offloads(&n->be, tun) < 0) {
        log_limited(&n->log_host, LOG_WARN, "%s: %s", d->name, error_get());
        return false;
    }
    return true;
}

/* vhost used buffers on queue q: interrupt the guest through the transport,
 * which knows how (MSI-X vector, INTx, mmio interrupt status). The kernel
 * already applied the driver's notification suppression. */
static void on_vhost_call(void *opaque, uint32_t events)
{
    struct vhost_call *c = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(c->fd, &v, sizeof(v));
    (void)ignored;
    struct virtio_dev *d = &c->net->dev;
    if (d->active) {
        d->interrupts++;
        d->transport->notify_queue(d, c->queue);
    }
}

static int start_vhost(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    struct vhost_ring rings[2];
    for (unsigned i = 0; i < 2; i++) {
        struct virtq *q = &d->queues[i].vq;
        if (!virtio_dev_queue_live(d, i))
            return error_set("queue %u is not enabled, and vhost-net needs both", i);
        struct virtq_position pos;
        virtq_get_position(q, &pos);
        rings[i] = (struct vhost_ring){.size = q->size,
                                       .next_avail = pos.next_avail,
                                       .desc = q->desc,
                                       .avail = q->avail,
                                       .used = q->used,
                                       .kick_fd = d->queues[i].kick_fd,
                                       .call_fd = n->calls[i].fd};
    }
    if (vhost_net_start(&n->vhost, d->mem, d->driver_features, rings, 2, n->be.rx_fd) < 0)
        return -1;
    n->vhost_running = true;
    /* Buffers the driver made available while no one served the rings (a restored or
     * thawed device) were kicked for already: the kernel looks at them now. */
    for (unsigned i = 0; i < 2; i++)
        virtio_dev_kick(d, i);
    return 0;
}

/* ember moves the frames: the host side and the timers watched, the queues looked at. */
static int serve_in_user_space(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    n->tx_held = 0;
    n->tx_throttled = false;
    n->rx_pending = 0;
    n->rx_charged = n->rx_starved = false;
    poll_window_init(&n->poll, n->opts.poll_us, n->opts.poll_adaptive);
    if (poll_window_on(&n->poll)) {
        d->io.idle = poll_idle;
        d->io.idle_opaque = n;
    }
    n->rx_handler = event_loop_add(&d->io.loop, n->be.rx_fd, EPOLLIN, on_rx, n);
    n->timer_handler = event_loop_add(&d->io.loop, n->timer_fd, EPOLLIN, on_timer, n);
    if (!n->rx_handler || !n->timer_handler)
        return -1;
    n->rx_watching = true;
    if (n->mmds) {
        n->mmds_timer_handler =
            event_loop_add(&d->io.loop, n->mmds_timer_fd, EPOLLIN, on_mmds_timer, n);
        if (!n->mmds_timer_handler)
            return -1;
    }
    process_tx(n);
    process_rx(n);
    return 0;
}

/* vhost-net could not start: ember serves the queues itself. */
static int fall_back_to_user_space(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    log_limited(&n->log_host, LOG_WARN,
                "%s: vhost-net failed (%s); serving the queues in user space", d->name,
                error_get());
    d->kicks_external = false;
    if (virtio_dev_watch_kicks(d) < 0)
        return -1;
    return serve_in_user_space(n);
}

static int activate(struct virtio_dev *d)
{
    struct virtio_net *n = d->opaque;
    n->frozen = n->vhost_paused = false;
    poll_window_init(&n->poll, 0, false); /* serve_in_user_space turns it on */
    if (n->use_vhost) {
        for (unsigned i = 0; i < 2; i++) {
            n->calls[i].handler =
                event_loop_add(&d->io.loop, n->calls[i].fd, EPOLLIN, on_vhost_call, &n->calls[i]);
            if (!n->calls[i].handler)
                return -1;
        }
        if (start_vhost(n) == 0)
            return 0;
        return fall_back_to_user_space(n);
    }
    return serve_in_user_space(n);
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_net *n = d->opaque;
    d->io.idle = NULL;
    poll_window_stop(&n->poll, monotonic_ns());
    if (n->vhost_running)
        vhost_net_stop(&n->vhost, NULL);
    n->vhost_running = n->vhost_paused = false;
    n->frozen = false;
    for (unsigned i = 0; i < 2; i++) {
        if (n->calls[i].handler)
            event_loop_del(&d->io.loop, n->calls[i].handler);
        n->calls[i].handler = NULL;
    }
    /* A vhost failure fell back to user space: try the kernel again next time. */
    d->kicks_external = n->use_vhost;
    struct event_handler **hs[] = {&n->rx_handler, &n->tx_handler, &n->timer_handler,
                                   &n->mmds_timer_handler};
    for (unsigned i = 0; i < 4; i++) {
        if (*hs[i])
            event_loop_del(&d->io.loop, *hs[i]);
        *hs[i] = NULL;
    }
    arm_timer(n, 0);
    struct itimerspec off = {0};
    timerfd_settime(n->timer_fd, 0, &off, NULL);
    n->rx_watching = false;
    if (n->mmds) {
        /* The guest's connections to MMDS end with the reset. */
        mmds_stack_reset(n->mmds);
        timerfd_settime(n->mmds_timer_fd, 0, &off, NULL);
        n->mmds_detoured = false;
    }
    /* A frame read from the host but not delivered is lost with the
     * reset, as on a real NIC. */
    n->rx_pending = 0;
    n->rx_charged = n->rx_starved = false;
    n->tx_held = 0;
    n->tx_throttled = false;
}

/* ---- snapshots ---------------------------------------------------------- */

/* The kernel's data path stops and hands its positions over, so that the queues' state
 * (saved by virtio_dev_save) says where the device stands. */
static void pause_vhost(struct virtio_net *n)
{
    struct virtio_dev *d = &n->dev;
    uint16_t next_avail[2];
    int r = vhost_net_stop(&n->vhost, next_avail);
    n->vhost_running = false;
    n->vhost_paused = true;
    if (r < 0) {
        log_limited(&n->log_host, LOG_ERROR, "%s: %s", d->name, error_get());
        virtio_dev_fail(d, "vhost-net did not say where it stopped in its rings");
        return;
    }
    for (unsigned i = 0; i < 2; i++) {
        struct virtq *q = &d->queues[i].vq;
        /* The kernel wrote the used index itself; ember's copy of it is stale. */
        struct virtq_position pos = {
            .next_avail = next_avail[i],
            .next_used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE),
        };
        if (virtq_set_position(q, &pos) < 0) {
            log_limited(&n->log_host, LOG_ERROR, "%s: vhost-net's ring %u: %s", d->name, i,
                        error_get());
            virtio_dev_fail(d, "vhost-net left its rings in a state ember cannot take over");
            return;
        }
        /* An interrupt the kernel asked for that ember has not raised yet: raised now,
         * before the snapshot holds the interrupt controller's state. */
        uint64_t v;
        if (read(n->calls[i].fd, &v, sizeof(v)) == sizeof(v) && v) {
            d->interrupts++;
            d->transport->notify_queue(d, i);
        }
    }
}

/* Transmit frames taken from the ring are answered: those the host still has no room for
 * are dropped (and counted), as a full tap drops them. A frame read from the host and not
 * yet delivered stays with this process: it is not guest state. */
static void freeze(struct virtio_dev *d)
{
    struct virtio_net *n = d->opaque;
    /* Polling stops with kicks off: thaw serves both queues, which asks for them again. */
    d->io.idle = NULL;
    poll_window_stop(&n->poll, monotonic_ns());
    if (n->vhost_running) {
        pause_vhost(n);
        n->frozen = true;
        return;
    }
    if (n->tx_handler)
        event_loop_del(&d->io.loop, n->tx_handler);
    n->tx_handler = NULL;
    bool pushed = false;
    if (n->tx_held && virtio_dev_queue_live(d, TXQ)) {
        pushed = send_held(n) > 0;
        if (n->tx_handler)
            event_loop_del(&d->io.loop, n->tx_handler);
        n->tx_handler = NULL;
        struct virtq *q = &d->queues[TXQ].vq;
        for (unsigned i = 0; i < n->tx_held; i++) {
            n->tx_frozen_drops++;
            count_drop(n, &n->tx_dropped, "no room on the host when a snapshot was taken");
            virtq_push(q, n->tx_chains[i].head, 0);
            pushed = true;
        }
    }
    n->tx_held = 0;
    if (pushed)
        virtio_dev_signal_used(d, TXQ);
    n->frozen = true;
    watch_rx(n, false);
    struct itimerspec off = {0};
    timerfd_settime(n->timer_fd, 0, &off, NULL);
    if (n->mmds)
        timerfd_settime(n->mmds_timer_fd, 0, &off, NULL);
}

static void thaw(struct virtio_dev *d)
{
    struct virtio_net *n = d->opaque;
    n->frozen = false;
    if (n->vhost_paused) {
        n->vhost_paused = false;
        if (start_vhost(n) == 0)
            return;
        /* It worked before the snapshot; should it fail now, the queues are served
         * anyway. */
        if (fall_back_to_user_space(n) < 0)
            virtio_dev_fail(d, "cannot serve the queues again after a snapshot");
        return;
    }
    if (poll_window_on(&n->poll)) {
        d->io.idle = poll_idle;
        d->io.idle_opaque = n;
    }
    if (virtio_dev_queue_live(d, RXQ))
        watch_rx(n, true);
    process_tx(n);
    process_rx(n);
    if (n->mmds)
        mmds_arm_timer(n);
}

/* The rate limiters' budgets, receive then transmit, bytes then frames. */
static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_net *n = d->opaque;
    token_bucket_snapshot_save(w, &n->rx_bytes_tb);
    token_bucket_snapshot_save(w, &n->rx_ops_tb);
    token_bucket_snapshot_save(w, &n->tx_bytes_tb);
    token_bucket_snapshot_save(w, &n->tx_ops_tb);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    struct virtio_net *n = d->opaque;
    if (token_bucket_snapshot_restore(c, &n->rx_bytes_tb, "receive bandwidth") < 0 ||
        token_bucket_snapshot_restore(c, &n->rx_ops_tb, "receive frames") < 0 ||
        token_bucket_snapshot_restore(c, &n->tx_bytes_tb, "transmit bandwidth") < 0 ||
        token_bucket_snapshot_restore(c, &n->tx_ops_tb, "transmit frames") < 0)
        return -1;
    return 0;
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_net *n = d->opaque;
    memcpy(data, n->config + offset, len);
}

static const struct virtio_dev_ops net_ops = {
    .read_config = read_config,
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .features_ok = features_ok,
    .freeze = freeze,
    .save = save,
    .restore = restore,
    .thaw = thaw,
};

static void set_limits(struct virtio_net *n, const struct rate_limit_config *rx,
                       const struct rate_limit_config *tx)
{
    if (rx) {
        n->opts.rx_limit = *rx;
        token_bucket_init_fc(&n->rx_bytes_tb, rx->bandwidth.size, rx->bandwidth.one_time_burst,
                             rx->bandwidth.refill_ms);
        token_bucket_init_fc(&n->rx_ops_tb, rx->ops.size, rx->ops.one_time_burst,
                             rx->ops.refill_ms);
    }
    if (tx) {
        n->opts.tx_limit = *tx;
        token_bucket_init_fc(&n->tx_bytes_tb, tx->bandwidth.size, tx->bandwidth.one_time_burst,
                             tx->bandwidth.refill_ms);
        token_bucket_init_fc(&n->tx_ops_tb, tx->ops.size, tx->ops.one_time_burst,
                             tx->ops.refill_ms);
    }
}

struct limits_change {
    struct virtio_net *net;
    const struct rate_limit_config *rx, *tx;
    bool refused;
};

static void change_limits_on_io(void *arg)
{
    struct limits_change *c = arg;
    struct virtio_net *n = c->net;
    if (n->use_vhost) {
        c->refused = true;
        return;
    }
    set_limits(n, c->rx, c->tx);
    /* Frames held back by the old limits are looked at again. */
    if (n->dev.active)
        arm_timer(n, 0);
}

int virtio_net_change_limits(struct virtio_net *n, const struct rate_limit_config *rx,
                             const struct rate_limit_config *tx)
{
    struct limits_change c = {.net = n, .rx = rx, .tx = tx};
    iothread_call(&n->dev.io, change_limits_on_io, &c);
    if (c.refused)
        return error_set("%s: the kernel's vhost-net moves its frames, and it has no rate "
                         "limits (start it with vhost=off)",
                         n->dev.name);
    return 0;
}

int virtio_net_init(struct virtio_net *n, const char *name, const struct net_options *opts,
                    const struct guest_memory *mem)
{
    memset(n, 0, sizeof(*n));
    n->timer_fd = -1;
    n->mmds_timer_fd = -1;
    n->vhost.fd = -1;
    for (unsigned i = 0; i < 2; i++)
        n->calls[i] = (struct vhost_call){.net = n, .queue = i, .fd = -1};
    n->be.rx_fd = n->be.tx_fd = -1;
    n->opts = *opts;
    set_limits(n, &opts->rx_limit, &opts->tx_limit);
    int r = 0;
    if (opts->backend)
        n->be = *opts->backend;
    else
        r = opts->user         ? net_user_open(&n->be, opts->forwards, opts->nforwards)
            : opts->has_tap_fd ? net_tap_open_fd(&n->be, opts->tap, opts->tap_fd, opts->sndbuf)
                               : net_tap_open(&n->be, opts->tap, opts->sndbuf);
    if (r < 0)
        return -1;
    n->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (n->timer_fd < 0)
        return error_errno("%s: timerfd", name);
    bool limits =
        !token_bucket_unlimited(&n->rx_bytes_tb) || !token_bucket_unlimited(&n->rx_ops_tb) ||
        !token_bucket_unlimited(&n->tx_bytes_tb) || !token_bucket_unlimited(&n->tx_ops_tb);
    if (opts->mmds && opts->mmds_ipv4) {
        /* MMDS answers from ember's own data path, which the kernel's vhost-net bypasses. */
        if (opts->vhost == VHOST_ON)
            return error_set("%s: vhost=on and MMDS exclude each other (MMDS frames are "
                             "answered in user space)",
                             name);
        uint32_t seed;
        if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
            return error_errno("getrandom");
        n->mmds = calloc(1, sizeof(*n->mmds));
        n->mmds_frame = malloc(VIRTIO_NET_MAX_FRAME);
        if (!n->mmds || !n->mmds_frame ||
            mmds_stack_init(n->mmds, opts->mmds, opts->mmds_ipv4, seed, n->dev.name) < 0)
            return error_set("out of memory");
        n->mmds_timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (n->mmds_timer_fd < 0)
            return error_errno("%s: timerfd", name);
    }
    if (!opts->user && opts->vhost != VHOST_OFF && !n->mmds) {
        if (limits && opts->vhost == VHOST_AUTO) {
            log_info("%s: rate limits are enforced in user space: not using vhost-net", name);
        } else if (vhost_net_open(&n->vhost) == 0) {
            n->use_vhost = true;
            /* ember's thread is not on the kernel's data path: the polling bound becomes the
             * kernel's own busy polling of the rings (fixed: vhost does not adapt it). */
            n->vhost.busyloop_us = opts->poll_us;
            for (unsigned i = 0; i < 2; i++) {
                n->calls[i].fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (n->calls[i].fd < 0)
                    return error_errno("%s: eventfd", name);
            }
            log_info("%s: vhost-net: frames move in the kernel", name);
        } else if (opts->vhost == VHOST_ON) {
            return error_prefix("%s: vhost=on", name);
        } else {
            log_info("%s: vhost-net unavailable (%s); ember moves the frames in user space", name,
                     error_get());
        }
    }
    n->rx_buf = malloc(VIRTIO_NET_MAX_FRAME + sizeof(struct net_hdr));
    if (!n->rx_buf)
        return error_set("out of memory");
    for (unsigned i = 0; i < sizeof(n->rx_chains) / sizeof(n->rx_chains[0]); i++) {
        if (virtq_chain_alloc(&n->rx_chains[i], NET_QUEUE_SIZE) < 0)
            return -1;
    }
    for (unsigned i = 0; i < NET_TX_BATCH; i++) {
        if (virtq_chain_alloc(&n->tx_chains[i], NET_QUEUE_SIZE) < 0)
            return -1;
    }

    uint8_t mac[6];
    if (opts->has_mac) {
        memcpy(mac, opts->mac, 6);
    } else {
        /* Random, locally administered, unicast. */
        if (getrandom(mac, 6, 0) != 6)
            return error_errno("getrandom");
        mac[0] = (uint8_t)((mac[0] & 0xfe) | 0x02);
    }
    memcpy(n->config, mac, 6);
    uint16_t status = VIRTIO_NET_S_LINK_UP, pairs = 1;
    memcpy(n->config + 6, &status, 2);
    memcpy(n->config + 8, &pairs, 2);
    uint16_t mtu = (uint16_t)opts->mtu;
    memcpy(n->config + 10, &mtu, 2);

    uint64_t features = (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_MRG_RXBUF) |
                        (1ULL << VIRTIO_NET_F_STATUS);
    if (opts->mtu)
        features |= 1ULL << VIRTIO_NET_F_MTU;
    if (n->be.offloads)
        features |= (1ULL << VIRTIO_NET_F_CSUM) | (1ULL << VIRTIO_NET_F_GUEST_CSUM) |
                    (1ULL << VIRTIO_NET_F_GUEST_TSO4) | (1ULL << VIRTIO_NET_F_GUEST_TSO6) |
                    (1ULL << VIRTIO_NET_F_GUEST_ECN) | (1ULL << VIRTIO_NET_F_GUEST_UFO) |
                    (1ULL << VIRTIO_NET_F_HOST_TSO4) | (1ULL << VIRTIO_NET_F_HOST_TSO6) |
                    (1ULL << VIRTIO_NET_F_HOST_ECN) | (1ULL << VIRTIO_NET_F_HOST_UFO);
    if (virtio_dev_init(&n->dev, name, VIRTIO_ID_NET, features, 2, NET_QUEUE_SIZE,
                        sizeof(n->config), &net_ops, n, mem) < 0)
        return -1;
    n->dev.kicks_external = n->use_vhost;
    /* The kernel's vhost-net walks split rings only. */
    if (n->use_vhost)
        n->dev.host_features &= ~(1ULL << VIRTIO_F_RING_PACKED);
    return 0;
}

void virtio_net_destroy(struct virtio_net *n)
{
    virtio_dev_destroy(&n->dev);
    /* The iothread is gone: the counters hold still. Drops are the test of a hostile guest. */
    if (n->rx_frames || n->tx_frames || n->rx_dropped || n->tx_dropped)
        log_info("%s: received %llu frames, %llu bytes, %llu dropped; sent %llu frames, %llu "
                 "bytes, %llu dropped; %llu waits for room on the host side; polling found "
                 "work %llu times, %llu of them as it stopped",
                 n->dev.name, (unsigned long long)n->rx_frames, (unsigned long long)n->rx_bytes,
                 (unsigned long long)n->rx_dropped, (unsigned long long)n->tx_frames,
                 (unsigned long long)n->tx_bytes, (unsigned long long)n->tx_dropped,
                 (unsigned long long)n->tx_pushback, (unsigned long long)n->poll_hits,
                 (unsigned long long)n->poll_races);
    if (n->be.ops && n->be.ops->close)
        n->be.ops->close(&n->be);
    if (n->timer_fd >= 0)
        close(n->timer_fd);
    n->timer_fd = -1;
    if (n->mmds_timer_fd >= 0)
        close(n->mmds_timer_fd);
    n->mmds_timer_fd = -1;
    if (n->mmds)
        mmds_stack_destroy(n->mmds);
    free(n->mmds);
    free(n->mmds_frame);
    n->mmds = NULL;
    n->mmds_frame = NULL;
    if (n->use_vhost)
        vhost_net_close(&n->vhost);
    for (unsigned i = 0; i < 2; i++) {
        if (n->calls[i].fd >= 0)
            close(n->calls[i].fd);
        n->calls[i].fd = -1;
    }
    for (unsigned i = 0; i < sizeof(n->rx_chains) / sizeof(n->rx_chains[0]); i++)
        virtq_chain_free(&n->rx_chains[i]);
    for (unsigned i = 0; i < NET_TX_BATCH; i++)
        virtq_chain_free(&n->tx_chains[i]);
    free(n->rx_buf);
    n->rx_buf = NULL;
    char what[64];
    snprintf(what, sizeof(what), "%s: dropped frames", n->dev.name);
    log_limit_flush(&n->log_drop, LOG_WARN, what);
}
