/* virtio-net's user-space data path without KVM: a fake driver with a receive and a transmit
 * queue in fake guest memory, the real device on its I/O thread, and a backend on one end of
 * a datagram socketpair (one frame a datagram, bare Ethernet frames), the test holding the
 * other end as the host's side. The cases are about polling (poll_window.h): frames served
 * while the driver is told not to kick, and none lost when polling starts or stops. */
#include "suites.h"
#include "poll_race.h"
#include "util/clock.h"
#include "util/error.h"
#include "virtio/net.h"
#include "virtq_fake.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define QSIZE      64
#define RXQ        0
#define TXQ        1
#define FRAME_LEN  60
#define RX_BUF_LEN 2048
#define RX_DATA    0x100000ULL /* receive buffer i: RX_DATA + RX_BUF_LEN * i */
#define TX_DATA    0x200000ULL /* transmit slot i: TX_DATA + 0x100 * i */

struct drv_queue {
    uint64_t desc, avail, used;
    uint16_t avail_idx;
};

static struct guest_memory mem;
static struct drv_queue dq[2];
static struct virtio_net net;
static int host_fd; /* the host's end of the backend's socketpair */
static unsigned test_poll_us;
static bool test_poll_adaptive;
static struct rate_limit_config test_tx_limit;
static int irqs[2];

static void notify_queue(struct virtio_dev *d, unsigned q)
{
    (void)d;
    if (q < 2)
        __atomic_add_fetch(&irqs[q], 1, __ATOMIC_SEQ_CST);
}

static void notify_config(struct virtio_dev *d)
{
    (void)d;
}

static const struct virtio_transport_ops transport = {notify_queue, notify_config, NULL};

/* ---- the backend: one frame per datagram ---------------------------------------------------- */

static ssize_t sock_recv(struct net_backend *be, const struct iovec *iov, int n)
{
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t r = recvmsg(be->rx_fd, &m, MSG_DONTWAIT);
    return r < 0 ? -errno : r;
}

static ssize_t sock_send(struct net_backend *be, const struct iovec *iov, int n)
{
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t r = sendmsg(be->tx_fd, &m, MSG_DONTWAIT);
    return r < 0 ? -errno : r;
}

static void sock_close(struct net_backend *be)
{
    close(be->rx_fd);
}

static const struct net_backend_ops sock_ops = {
    .recv = sock_recv, .send = sock_send, .close = sock_close};

/* ---- the driver ----------------------------------------------------------------------------- */

static void *ptr(uint64_t gpa, uint64_t len)
{
    void *p = gpa_to_hva(&mem, gpa, len);
    ck_assert_ptr_nonnull(p);
    return p;
}

static struct virtq_used *used_of(unsigned q)
{
    return ptr(dq[q].used, 6 + 8ULL * QSIZE);
}

static uint16_t used_idx(unsigned q)
{
    return __atomic_load_n(&used_of(q)->idx, __ATOMIC_ACQUIRE);
}

/* Where the device asks to be kicked (EVENT_IDX): after the used ring. */
static uint16_t avail_event(unsigned q)
{
    uint16_t e;
    memcpy(&e, &used_of(q)->ring[QSIZE], sizeof(e));
    return e;
}

/* Makes head available on q, and kicks as a driver with EVENT_IDX does: only when the new
 * index passed the one the device asked to be kicked at. Returns whether it kicked. */
static bool publish(unsigned q, uint16_t head, bool may_kick)
{
    struct virtq_avail *a = ptr(dq[q].avail, 6 + 2ULL * QSIZE);
    uint16_t old = dq[q].avail_idx;
    a->ring[old % QSIZE] = head;
    dq[q].avail_idx++;
    __atomic_store_n(&a->idx, dq[q].avail_idx, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t event = avail_event(q);
    if (!may_kick || !race_driver_needs_kick(event, dq[q].avail_idx, old))
        return false;
    virtio_dev_kick(&net.dev, q);
    return true;
}

/* Transmit slot k (its own descriptor): a header, then a frame whose first byte is tag. */
static bool send_frame(uint16_t k, uint8_t tag, bool may_kick)
{
    uint64_t gpa = TX_DATA + 0x100ULL * k;
    memset(ptr(gpa, VIRTIO_NET_HDR_LEN + FRAME_LEN), 0, VIRTIO_NET_HDR_LEN + FRAME_LEN);
    *(uint8_t *)ptr(gpa + VIRTIO_NET_HDR_LEN, 1) = tag;
    *(struct virtq_desc *)ptr(dq[TXQ].desc + 16ULL * k, 16) =
        (struct virtq_desc){gpa, VIRTIO_NET_HDR_LEN + FRAME_LEN, 0, 0};
    return publish(TXQ, k, may_kick);
}

/* Receive buffer k (its own descriptor) made available. */
static bool post_rx(uint16_t k, bool may_kick)
{
    *(struct virtq_desc *)ptr(dq[RXQ].desc + 16ULL * k, 16) =
        (struct virtq_desc){RX_DATA + RX_BUF_LEN * k, RX_BUF_LEN, VIRTQ_DESC_F_WRITE, 0};
    return publish(RXQ, k, may_kick);
}

/* Waits up to ms for q's used index to reach idx. */
static bool wait_used(unsigned q, uint16_t idx, int ms)
{
    uint64_t deadline = monotonic_ns() + (uint64_t)ms * 1000000;
    while ((int16_t)(used_idx(q) - idx) < 0) {
        if (monotonic_ns() > deadline)
            return false;
    }
    return true;
}

/* The host's next frame from the guest: its first byte, or -1 after ms without one. */
static int host_read(int ms)
{
    struct pollfd p = {host_fd, POLLIN, 0};
    if (poll(&p, 1, ms) != 1)
        return -1;
    uint8_t buf[128];
    ssize_t r = recv(host_fd, buf, sizeof(buf), MSG_DONTWAIT);
    ck_assert_int_eq(r, FRAME_LEN); /* bare: not a vnet_hdr backend */
    return buf[0];
}

static void host_write(uint8_t tag)
{
    uint8_t frame[FRAME_LEN] = {tag};
    ck_assert_int_eq(send(host_fd, frame, sizeof(frame), 0), (ssize_t)sizeof(frame));
}

static void setup(void)
{
    ck_assert_int_eq(guest_memory_map(&mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    host_fd = sv[1];
    struct net_backend be = {.ops = &sock_ops,
                             .kind = "socketpair",
                             .rx_fd = sv[0],
                             .tx_fd = sv[0],
                             .tx_wait_events = EPOLLOUT};
    struct net_options o = {.backend = &be,
                            .vhost = VHOST_OFF,
                            .poll_us = test_poll_us,
                            .poll_adaptive = test_poll_adaptive,
                            .tx_limit = test_tx_limit};
    ck_assert_msg(virtio_net_init(&net, "net0", &o, &mem) == 0, "%s", error_get());
    memset(irqs, 0, sizeof(irqs));
    struct virtio_dev *d = &net.dev;
    d->transport = &transport;
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    /* A split-ring driver with EVENT_IDX: everything offered but packed rings. */
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    ck_assert(virtio_dev_has_feature(d, VIRTIO_F_EVENT_IDX));
    for (unsigned q = 0; q < 2; q++) {
        dq[q] = (struct drv_queue){.desc = 0x10000 + 0x10000ULL * q,
                                   .avail = 0x14000 + 0x10000ULL * q,
                                   .used = 0x18000 + 0x10000ULL * q};
        d->queues[q].cfg = (struct virtq_config){.size = QSIZE,
                                                 .desc_gpa = dq[q].desc,
                                                 .avail_gpa = dq[q].avail,
                                                 .used_gpa = dq[q].used};
        d->queues[q].enabled = true;
    }
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
    ck_assert(d->active);
}

static void teardown(void)
{
    virtio_net_destroy(&net);
    close(host_fd);
    guest_memory_free(&mem);
}

static bool polling(void)
{
    return __atomic_load_n(&net.poll.polling, __ATOMIC_ACQUIRE);
}

static void shorten_poll_window(void *arg)
{
    (void)arg;
    net.poll.window_ns = net.poll.bound_ns = 1000000;
}

/* ---- cases ---------------------------------------------------------------------------------- */

START_TEST(tx_polled_without_kicks)
{
    /* The window is long (1 s): polling cannot end, however slow this machine, before the
     * frames below show that they need no kick. */
    ck_assert(send_frame(0, 0x40, true)); /* the first one kicks, which starts polling */
    ck_assert_int_eq(host_read(2000), 0x40);
    ck_assert(wait_used(TXQ, 1, 2000));
    ck_assert(polling());
    uint64_t kicks = __atomic_load_n(&net.dev.queues[TXQ].kicks, __ATOMIC_SEQ_CST);
    for (uint16_t k = 1; k < 20; k++) {
        ck_assert(!send_frame(k, (uint8_t)(0x40 + k), true)); /* not asked for */
        ck_assert_int_eq(host_read(2000), 0x40 + k);
    }
    ck_assert(wait_used(TXQ, 20, 2000));
    ck_assert_uint_eq(__atomic_load_n(&net.dev.queues[TXQ].kicks, __ATOMIC_SEQ_CST), kicks);
    ck_assert_uint_gt(__atomic_load_n(&net.poll_hits, __ATOMIC_SEQ_CST), 0);
    /* Interrupts only as the driver asks: its used_event (0, never moved) was passed once. */
    ck_assert_int_eq(__atomic_load_n(&irqs[TXQ], __ATOMIC_SEQ_CST), 1);
    /* A short window now: once quiet for longer, polling stops and kicks are asked for at
     * the next index. */
    iothread_call(&net.dev.io, shorten_poll_window, NULL);
    for (int i = 0; i < 50000 && polling(); i++)
        usleep(100);
    ck_assert(!polling());
    ck_assert_uint_eq(avail_event(TXQ), 20);
    ck_assert(send_frame(20, 0x60, true));
    ck_assert_int_eq(host_read(2000), 0x60);
}
END_TEST

START_TEST(rx_buffers_polled_without_kicks)
{
    /* One buffer, kicked for (the device's event index is still 0): polling starts, and the
     * host's first frame takes it. */
    ck_assert(post_rx(0, true));
    host_write(0x11);
    ck_assert(wait_used(RXQ, 1, 2000));
    ck_assert(polling());
    /* The second finds no buffer: it waits for one, which the device looks for itself. */
    host_write(0x12);
    for (int i = 0; i < 20000 && !__atomic_load_n(&net.rx_starved, __ATOMIC_SEQ_CST); i++)
        usleep(100);
    ck_assert(__atomic_load_n(&net.rx_starved, __ATOMIC_SEQ_CST));
    uint64_t kicks = __atomic_load_n(&net.dev.queues[RXQ].kicks, __ATOMIC_SEQ_CST);
    ck_assert(!post_rx(1, true)); /* not asked for: the device polls */
    ck_assert(wait_used(RXQ, 2, 2000));
    struct virtq_used_elem e = used_of(RXQ)->ring[1];
    ck_assert_uint_eq(e.id, 1);
    ck_assert_uint_eq(e.len, VIRTIO_NET_HDR_LEN + FRAME_LEN);
    ck_assert_uint_eq(*(uint8_t *)ptr(RX_DATA + RX_BUF_LEN + VIRTIO_NET_HDR_LEN, 1), 0x12);
    ck_assert_uint_eq(__atomic_load_n(&net.dev.queues[RXQ].kicks, __ATOMIC_SEQ_CST), kicks);
    ck_assert_uint_eq(net.no_rx_buffers, 1);
    /* Starved again as polling stops: the device asks for a kick for more buffers. */
    host_write(0x13);
    iothread_call(&net.dev.io, shorten_poll_window, NULL);
    for (int i = 0; i < 50000 && polling(); i++)
        usleep(100);
    ck_assert(!polling());
    ck_assert(__atomic_load_n(&net.rx_starved, __ATOMIC_SEQ_CST));
    ck_assert(post_rx(2, true));
    ck_assert(wait_used(RXQ, 3, 2000));
    ck_assert_uint_eq(*(uint8_t *)ptr(RX_DATA + 2 * RX_BUF_LEN + VIRTIO_NET_HDR_LEN, 1), 0x13);
}
END_TEST

/* A snapshot stops polling with kicks off; thaw serves what came meanwhile and asks for kicks
 * again, so the next frame is kicked for and polling starts over. */
START_TEST(freeze_stops_polling_thaw_asks_for_kicks)
{
    ck_assert(send_frame(0, 0x50, true));
    ck_assert_int_eq(host_read(2000), 0x50);
    ck_assert(polling());
    ck_assert_int_eq(virtio_dev_freeze(&net.dev), 0);
    ck_assert(!polling());
    ck_assert(!send_frame(1, 0x51, true)); /* kicks were off: none asked for */
    ck_assert_int_eq(host_read(50), -1);   /* frozen: nothing moves */
    virtio_dev_thaw(&net.dev);
    ck_assert_int_eq(host_read(2000), 0x51);
    ck_assert(wait_used(TXQ, 2, 2000));
    ck_assert(!polling());
    ck_assert_uint_eq(avail_event(TXQ), 2);
    ck_assert(send_frame(2, 0x52, true));
    ck_assert_int_eq(host_read(2000), 0x52);
    ck_assert(polling());
}
END_TEST

/* A driver that kicks only when the device asks, sending at gaps around the poll window's
 * length, so that frames land while the device polls, just as it stops and asks for kicks
 * again, and while it sleeps. A frame that raced with the switch and was neither seen by the
 * last look nor kicked for would never be sent. */
static void race_polling_switch(unsigned frames)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    unsigned read = 0;
    for (unsigned i = 0; i < frames; i++) {
        uint16_t before = used_idx(TXQ);
        send_frame((uint16_t)(i % QSIZE), (uint8_t)i, true);
        ck_assert_msg(wait_used(TXQ, (uint16_t)(before + 1), 2000),
                      "frame %u never sent (device polling: %d, kick asked at %u)", i, polling(),
                      avail_event(TXQ));
        /* The host's side is read now and then: its system calls would stretch every gap. */
        if (i % 32 == 31 || i == frames - 1) {
            for (; read <= i; read++)
                ck_assert_int_eq(host_read(2000), (uint8_t)read);
        }
        race_spin_ns(race_next(&seed) % (3 * net.poll.bound_ns)); /* 0 to 3 windows */
    }
}

START_TEST(polling_switch_loses_no_frame)
{
    race_polling_switch(3000);
    printf("net polling race: %llu frame(s) found right after kicks were asked for again, "
           "%llu polled, %llu kicked\n",
           (unsigned long long)net.poll_races, (unsigned long long)net.poll_hits,
           (unsigned long long)net.dev.queues[TXQ].kicks);
    /* Both paths ran: some frames came while it polled, some woke it by a kick. */
    ck_assert_uint_gt(net.poll_hits, 0);
    ck_assert_uint_gt(net.dev.queues[TXQ].kicks, 0);
}
END_TEST

START_TEST(adaptive_window_adapts)
{
    race_polling_switch(500);
    ck_assert_uint_gt(net.poll.grows, 0);
    ck_assert_uint_le(net.poll.window_ns, net.poll.bound_ns);
    ck_assert_uint_ge(net.poll.window_ns, POLL_WINDOW_MIN_NS);
}
END_TEST

/* A transmit queue the rate limiter holds back is not spun on: polling stops within its
 * window, and the limiter's timer sends the frame. */
START_TEST(throttled_queue_not_polled)
{
    ck_assert(send_frame(0, 0x70, true)); /* the bucket's one frame */
    ck_assert_int_eq(host_read(2000), 0x70);
    send_frame(1, 0x71, true); /* waits ~1 s for the next token */
    for (int i = 0; i < 5000 && !__atomic_load_n(&net.tx_limited, __ATOMIC_SEQ_CST); i++)
        usleep(100);
    ck_assert_uint_eq(__atomic_load_n(&net.tx_limited, __ATOMIC_SEQ_CST), 1);
    /* The window is 20 ms: long past it, and well before the token, polling has stopped. */
    usleep(200000);
    ck_assert(!polling());
    ck_assert_uint_eq(used_idx(TXQ), 1);
    ck_assert_int_eq(host_read(3000), 0x71);
    ck_assert(wait_used(TXQ, 2, 2000));
}
END_TEST

static void setup_long_poll(void)
{
    test_poll_us = POLL_WINDOW_MAX_US;
    setup();
    test_poll_us = 0;
}

static void setup_short_poll(void)
{
    test_poll_us = 200;
    setup();
    test_poll_us = 0;
}

static void setup_adaptive_poll(void)
{
    test_poll_us = 200;
    test_poll_adaptive = true;
    setup();
    test_poll_us = 0;
    test_poll_adaptive = false;
}

static void setup_throttled_poll(void)
{
    test_poll_us = 20000;
    test_tx_limit = (struct rate_limit_config){.ops = {.size = 1, .refill_ms = 1000}};
    setup();
    test_poll_us = 0;
    test_tx_limit = (struct rate_limit_config){0};
}

Suite *virtio_net_suite(void)
{
    Suite *s = suite_create("virtio_net");
    TCase *t = tcase_create("polling");
    tcase_add_checked_fixture(t, setup_long_poll, teardown);
    tcase_add_test(t, tx_polled_without_kicks);
    tcase_add_test(t, rx_buffers_polled_without_kicks);
    tcase_add_test(t, freeze_stops_polling_thaw_asks_for_kicks);
    tcase_set_timeout(t, 30);
    suite_add_tcase(s, t);
    TCase *race = tcase_create("polling_race");
    tcase_add_checked_fixture(race, setup_short_poll, teardown);
    tcase_add_test(race, polling_switch_loses_no_frame);
    tcase_set_timeout(race, 60);
    suite_add_tcase(s, race);
    TCase *adaptive = tcase_create("polling_adaptive");
    tcase_add_checked_fixture(adaptive, setup_adaptive_poll, teardown);
    tcase_add_test(adaptive, adaptive_window_adapts);
    tcase_set_timeout(adaptive, 60);
    suite_add_tcase(s, adaptive);
    TCase *limited = tcase_create("polling_limited");
    tcase_add_checked_fixture(limited, setup_throttled_poll, teardown);
    tcase_add_test(limited, throttled_queue_not_polled);
    tcase_set_timeout(limited, 30);
    suite_add_tcase(s, limited);
    return s;
}
