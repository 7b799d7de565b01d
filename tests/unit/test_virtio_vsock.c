/* virtio-vsock end to end without KVM: a fake driver with three queues in
 * fake guest memory, the real device on its iothread, and real unix
 * sockets on the host side. */
#include "backends/uds.h"
#include "cli.h"
#include "suites.h"
#include "poll_race.h"
#include "util/clock.h"
#include "util/error.h"
#include "virtio/vsock.h"
#include "virtq_fake.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define QSIZE      256
#define NRX        64
#define RX_BUF_LEN (VSOCK_HDR_LEN + 4096)
#define RX_DATA    0x100000ULL /* NRX buffers, 8 KiB apart */
#define TX_DATA    0x400000ULL /* NTX slots, 68 KiB apart */
#define NTX        32
#define TX_SLOT    0x11000ULL
#define GUEST_CID  3

struct drv_queue {
    uint64_t desc, avail, used;
    uint16_t avail_idx, used_seen;
};

static struct guest_memory mem;
static struct drv_queue dq[3];
static struct virtio_vsock vs;
static char dir[64], path[96];
static unsigned tx_next;
static bool hold_rx; /* the driver keeps used receive buffers */
static uint16_t held[NRX];
static unsigned nheld;
static int config_irqs;
static unsigned test_poll_us; /* the device's polling bound (0: none) */
static bool test_poll_adaptive;
/* The driver kicks the transmit queue only when the device asks (EVENT_IDX), as Linux does;
 * false: after every packet. */
static bool kick_as_asked;

static void fake_notify_queue(struct virtio_dev *d, unsigned q)
{
    (void)d;
    (void)q;
}

static void fake_notify_config(struct virtio_dev *d)
{
    (void)d;
    __atomic_add_fetch(&config_irqs, 1, __ATOMIC_SEQ_CST);
}

static const struct virtio_transport_ops fake_transport = {fake_notify_queue, fake_notify_config,
                                                           NULL};

static void *ptr(uint64_t gpa, uint64_t len)
{
    return gpa_to_hva(&mem, gpa, len);
}

static void set_desc(unsigned q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    struct virtq_desc *d = ptr(dq[q].desc + 16ULL * i, 16);
    *d = (struct virtq_desc){addr, len, flags, next};
}

static void publish(unsigned q, uint16_t head)
{
    struct virtq_avail *a = ptr(dq[q].avail, 6 + 2ULL * QSIZE);
    a->ring[dq[q].avail_idx % QSIZE] = head;
    dq[q].avail_idx++;
    __atomic_store_n(&a->idx, dq[q].avail_idx, __ATOMIC_RELEASE);
}

static struct virtq_used *used_of(unsigned q)
{
    return ptr(dq[q].used, 6 + 8ULL * QSIZE);
}

static void post_rx(uint16_t i)
{
    set_desc(0, i, RX_DATA + 0x2000ULL * i, RX_BUF_LEN, VIRTQ_DESC_F_WRITE, 0);
    publish(0, i);
}

static void setup(void)
{
    guest_memory_map(&mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    snprintf(dir, sizeof(dir), "/tmp/ember-vsock-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/v.sock", dir);
    ck_assert_msg(virtio_vsock_init(&vs, GUEST_CID, path, &mem) == 0, "%s", error_get());
    vs.poll_us = test_poll_us;
    vs.poll_adaptive = test_poll_adaptive;
    vs.dev.transport = &fake_transport;
    kick_as_asked = false;
    config_irqs = 0;
    tx_next = 0;
    hold_rx = false;
    nheld = 0;
    struct virtio_dev *d = &vs.dev;
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    /* A split-ring driver: everything offered but packed rings. */
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < 3; q++) {
        dq[q] = (struct drv_queue){.desc = 0x10000 + 0x10000ULL * q,
                                   .avail = 0x14000 + 0x10000ULL * q,
                                   .used = 0x18000 + 0x10000ULL * q};
        d->queues[q].cfg = (struct virtq_config){.size = QSIZE,
                                                 .desc_gpa = dq[q].desc,
                                                 .avail_gpa = dq[q].avail,
                                                 .used_gpa = dq[q].used};
        d->queues[q].enabled = true;
    }
    for (uint16_t i = 0; i < NRX; i++)
        post_rx(i);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
    ck_assert(vs.dev.active);
}

static void teardown(void)
{
    virtio_vsock_destroy(&vs);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
    guest_memory_free(&mem);
}

/* Sends one packet from the guest: header and payload in two descriptors
 * (as Linux does), or in one when split is false. Waits until the device
 * took it. */
static void tx_raw(const void *hdr, uint32_t hdr_len, const void *data, uint32_t len, bool split)
{
    uint16_t slot = (uint16_t)(tx_next++ % NTX);
    uint64_t gpa = TX_DATA + TX_SLOT * slot;
    memcpy(ptr(gpa, hdr_len), hdr, hdr_len);
    if (len)
        memcpy(ptr(gpa + hdr_len, len), data, len);
    uint16_t d0 = (uint16_t)(slot * 2);
    if (split && len) {
        set_desc(1, d0, gpa, hdr_len, VIRTQ_DESC_F_NEXT, (uint16_t)(d0 + 1));
        set_desc(1, (uint16_t)(d0 + 1), gpa + hdr_len, len, 0, 0);
    } else {
        set_desc(1, d0, gpa, hdr_len + len, 0, 0);
    }
    uint16_t target = (uint16_t)(dq[1].avail_idx + 1);
    publish(1, d0);
    /* EVENT_IDX: the device asks for a kick when the index passes avail_event, after the
     * used ring. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t event;
    memcpy(&event, &used_of(1)->ring[QSIZE], sizeof(event));
    if (!kick_as_asked || race_driver_needs_kick(event, target, (uint16_t)(target - 1)))
        virtio_dev_kick(&vs.dev, 1);
    /* Busy at first (a polling device takes it within microseconds, and a sleep here would
     * stretch the gaps between packets), then sleeping; 2 s in all. */
    for (uint64_t start = monotonic_ns(), now = start; now - start < 2000000000ull;
         now = monotonic_ns()) {
        if ((int16_t)(__atomic_load_n(&used_of(1)->idx, __ATOMIC_ACQUIRE) - target) >= 0)
            return;
        if (now - start > 2000000)
            usleep(250);
    }
    ck_abort_msg("transmit packet not completed (device polling: %d, kick asked at %u)",
                 __atomic_load_n(&vs.poll.polling, __ATOMIC_ACQUIRE), event);
}

static struct vsock_hdr hdr(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len)
{
    return (struct vsock_hdr){.src_cid = GUEST_CID,
                              .dst_cid = VSOCK_HOST_CID,
                              .src_port = src_port,
                              .dst_port = dst_port,
                              .len = len,
                              .type = VSOCK_TYPE_STREAM,
                              .op = op,
                              .buf_alloc = 1u << 20};
}

static void tx(struct vsock_hdr h, const void *data)
{
    tx_raw(&h, sizeof(h), data, h.len, true);
}

/* Waits up to ms for the device's next packet to the guest; the buffer
 * goes back to the device. Returns false on timeout. */
static bool rx(struct vsock_hdr *h, void *data, uint32_t *len, int ms)
{
    for (int i = 0; i <= ms * 4; i++) {
        uint16_t idx = __atomic_load_n(&used_of(0)->idx, __ATOMIC_ACQUIRE);
        if (idx != dq[0].used_seen) {
            struct virtq_used_elem e = used_of(0)->ring[dq[0].used_seen % QSIZE];
            dq[0].used_seen++;
            ck_assert_uint_ge(e.len, VSOCK_HDR_LEN);
            uint8_t *buf = ptr(RX_DATA + 0x2000ULL * e.id, RX_BUF_LEN);
            memcpy(h, buf, sizeof(*h));
            ck_assert_uint_eq(e.len, VSOCK_HDR_LEN + h->len);
            if (data)
                memcpy(data, buf + VSOCK_HDR_LEN, h->len);
            if (len)
                *len = h->len;
            if (hold_rx) {
                held[nheld++] = (uint16_t)e.id;
            } else {
                post_rx((uint16_t)e.id);
                virtio_dev_kick(&vs.dev, 0);
            }
            return true;
        }
        if (i < ms * 4)
            usleep(250);
    }
    return false;
}

static void expect(uint16_t op, uint32_t src_port, uint32_t dst_port, struct vsock_hdr *out)
{
    struct vsock_hdr h;
    ck_assert_msg(rx(&h, NULL, NULL, 2000), "no packet (expected op %u)", op);
    ck_assert_uint_eq(h.op, op);
    ck_assert_uint_eq(h.src_cid, VSOCK_HOST_CID);
    ck_assert_uint_eq(h.dst_cid, GUEST_CID);
    ck_assert_uint_eq(h.src_port, src_port);
    ck_assert_uint_eq(h.dst_port, dst_port);
    ck_assert_uint_eq(h.type, VSOCK_TYPE_STREAM);
    if (out)
        *out = h;
}

static void expect_nothing(int ms)
{
    struct vsock_hdr h;
    ck_assert_msg(!rx(&h, NULL, NULL, ms), "unexpected packet op %u len %u", h.op, h.len);
}

static int port_listener(uint32_t port)
{
    char p[128];
    snprintf(p, sizeof(p), "%s_%u", path, port);
    int fd = uds_listen(p);
    ck_assert_msg(fd >= 0, "%s", error_get());
    return fd;
}

static int accept_wait(int lfd)
{
    struct pollfd pfd = {lfd, POLLIN, 0};
    ck_assert_int_eq(poll(&pfd, 1, 2000), 1);
    int fd = accept(lfd, NULL, NULL);
    ck_assert_int_ge(fd, 0);
    return fd;
}

static ssize_t read_wait(int fd, void *buf, size_t len)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    ck_assert_int_eq(poll(&pfd, 1, 2000), 1);
    return recv(fd, buf, len, MSG_DONTWAIT);
}

static int host_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* The guest connects to host port 5100 from guest port 1234. */
static int open_guest_conn(int lfd, uint32_t guest_buf_alloc)
{
    struct vsock_hdr h = hdr(VSOCK_OP_REQUEST, 1234, 5100, 0);
    h.buf_alloc = guest_buf_alloc;
    tx(h, NULL);
    struct vsock_hdr r;
    expect(VSOCK_OP_RESPONSE, 5100, 1234, &r);
    ck_assert_uint_eq(r.buf_alloc, VSOCK_CONN_BUF);
    ck_assert_uint_eq(r.fwd_cnt, 0);
    return accept_wait(lfd);
}

START_TEST(guest_connects_to_host)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20);
    tx(hdr(VSOCK_OP_RW, 1234, 5100, 5), "hello");
    char buf[64];
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 5);
    ck_assert_mem_eq(buf, "hello", 5);
    ck_assert_int_eq(write(fd, "world!", 6), 6);
    struct vsock_hdr h;
    uint32_t len;
    ck_assert(rx(&h, buf, &len, 2000));
    ck_assert_uint_eq(h.op, VSOCK_OP_RW);
    ck_assert_uint_eq(len, 6);
    ck_assert_mem_eq(buf, "world!", 6);
    ck_assert_uint_eq(h.fwd_cnt, 5); /* what the host program took */
    /* The host program ends its stream: the guest hears SHUTDOWN(SEND). */
    shutdown(fd, SHUT_WR);
    expect(VSOCK_OP_SHUTDOWN, 5100, 1234, &h);
    ck_assert_uint_eq(h.flags, VSOCK_SHUTDOWN_SEND);
    /* Clean close from the guest: the host sees EOF, the guest an RST. */
    struct vsock_hdr s = hdr(VSOCK_OP_SHUTDOWN, 1234, 5100, 0);
    s.flags = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
    s.fwd_cnt = 6;
    tx(s, NULL);
    expect(VSOCK_OP_RST, 5100, 1234, NULL);
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    ck_assert_uint_eq(vs.conns_opened, 1);
    ck_assert_uint_eq(vs.bad_packets + vs.credit_violations, 0);
    close(fd);
    close(lfd);
}
END_TEST

/* The host program writes and closes at once: its bytes still reach the
 * guest, then a SHUTDOWN, then an RST when the guest sends more. */
START_TEST(host_hangs_up)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20);
    ck_assert_int_eq(write(fd, "bye", 3), 3);
    close(fd);
    struct vsock_hdr h;
    char buf[16];
    uint32_t len;
    ck_assert(rx(&h, buf, &len, 2000));
    ck_assert_uint_eq(h.op, VSOCK_OP_RW);
    ck_assert_uint_eq(len, 3);
    ck_assert_mem_eq(buf, "bye", 3);
    expect(VSOCK_OP_SHUTDOWN, 5100, 1234, &h);
    /* RCV too when ember saw the hang-up before the end of the stream. */
    ck_assert_uint_eq(h.flags & VSOCK_SHUTDOWN_SEND, VSOCK_SHUTDOWN_SEND);
    /* Data the host can no longer take ends the connection. */
    tx(hdr(VSOCK_OP_RW, 1234, 5100, 2), "hi");
    expect(VSOCK_OP_RST, 5100, 1234, NULL);
    ck_assert_uint_eq(vs.nconns, 0);
    close(lfd);
}
END_TEST

START_TEST(guest_connect_refused)
{
    tx(hdr(VSOCK_OP_REQUEST, 1234, 5999, 0), NULL);
    expect(VSOCK_OP_RST, 5999, 1234, NULL);
    ck_assert_uint_eq(vs.conns_refused, 1);
}
END_TEST

/* The host program connects with "CONNECT 5200\n"; returns the host port
 * the guest was told. */
static uint32_t host_opens(int fd, uint32_t guest_port)
{
    char line[32];
    int n = snprintf(line, sizeof(line), "CONNECT %u\n", guest_port);
    ck_assert_int_eq(write(fd, line, (size_t)n), n);
    struct vsock_hdr h;
    ck_assert(rx(&h, NULL, NULL, 2000));
    ck_assert_uint_eq(h.op, VSOCK_OP_REQUEST);
    ck_assert_uint_eq(h.dst_port, guest_port);
    ck_assert_uint_eq(h.dst_cid, GUEST_CID);
    ck_assert_uint_ge(h.src_port, 1u << 30);
    ck_assert_uint_eq(h.buf_alloc, VSOCK_CONN_BUF);
    return h.src_port;
}

START_TEST(host_connects_to_guest)
{
    int fd = host_connect();
    uint32_t hp = host_opens(fd, 5200);
    tx(hdr(VSOCK_OP_RESPONSE, 5200, hp, 0), NULL);
    char buf[64], want[32];
    int n = snprintf(want, sizeof(want), "OK %u\n", hp);
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), n);
    ck_assert_mem_eq(buf, want, (size_t)n);
    ck_assert_int_eq(write(fd, "ping", 4), 4);
    struct vsock_hdr h;
    uint32_t len;
    ck_assert(rx(&h, buf, &len, 2000));
    ck_assert_uint_eq(h.op, VSOCK_OP_RW);
    ck_assert_mem_eq(buf, "ping", 4);
    tx(hdr(VSOCK_OP_RW, 5200, hp, 4), "pong");
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 4);
    ck_assert_mem_eq(buf, "pong", 4);
    /* The guest resets: the host program's socket closes. */
    tx(hdr(VSOCK_OP_RST, 5200, hp, 0), NULL);
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    expect_nothing(50);
    close(fd);
}
END_TEST

START_TEST(host_connect_refused_or_bad)
{
    char buf[16];
    int fd = host_connect();
    uint32_t hp = host_opens(fd, 5300);
    tx(hdr(VSOCK_OP_RST, 5300, hp, 0), NULL); /* nobody listens in the guest */
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    close(fd);
    fd = host_connect();
    ck_assert_int_eq(write(fd, "HELLO 5\n", 8), 8);
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    close(fd);
    fd = host_connect();
    ck_assert_int_eq(write(fd, "CONNECT 99999999999\n", 20), 20);
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    close(fd);
    expect_nothing(50);
}
END_TEST

START_TEST(credit_towards_guest)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 100);
    char data[1000];
    for (int i = 0; i < 1000; i++)
        data[i] = (char)i;
    ck_assert_int_eq(write(fd, data, sizeof(data)), 1000);
    struct vsock_hdr h;
    uint32_t len, got = 0;
    char buf[4096];
    while (got < 100) {
        ck_assert(rx(&h, buf, &len, 2000));
        ck_assert_uint_eq(h.op, VSOCK_OP_RW);
        ck_assert_mem_eq(buf, data + got, len);
        got += len;
    }
    ck_assert_uint_eq(got, 100);
    expect_nothing(100); /* the guest's window is full */
    struct vsock_hdr u = hdr(VSOCK_OP_CREDIT_UPDATE, 1234, 5100, 0);
    u.buf_alloc = 100;
    u.fwd_cnt = 100;
    tx(u, NULL);
    while (got < 200) {
        ck_assert(rx(&h, buf, &len, 2000));
        ck_assert_mem_eq(buf, data + got, len);
        got += len;
    }
    ck_assert_uint_eq(got, 200);
    expect_nothing(100);
    /* A guest that asks is told ember's window. */
    tx(hdr(VSOCK_OP_CREDIT_REQUEST, 1234, 5100, 0), NULL);
    expect(VSOCK_OP_CREDIT_UPDATE, 5100, 1234, &h);
    ck_assert_uint_eq(h.buf_alloc, VSOCK_CONN_BUF);
    close(fd);
    close(lfd);
}
END_TEST

static uint8_t pattern(uint64_t i, uint8_t x)
{
    return (uint8_t)((i * 7 + (i >> 10)) ^ x);
}

#define STREAM_BYTES (1u << 20)

struct host_side {
    int fd;
    uint64_t got;
    bool ok;
};

static void *host_writer(void *arg)
{
    struct host_side *s = arg;
    uint8_t buf[8192];
    for (uint64_t off = 0; off < STREAM_BYTES; off += sizeof(buf)) {
        for (unsigned i = 0; i < sizeof(buf); i++)
            buf[i] = pattern(off + i, 0x5a);
        ck_assert_int_eq(send(s->fd, buf, sizeof(buf), MSG_NOSIGNAL), (ssize_t)sizeof(buf));
    }
    shutdown(s->fd, SHUT_WR);
    return NULL;
}

static void *host_reader(void *arg)
{
    struct host_side *s = arg;
    uint8_t buf[3000];
    s->ok = true;
    for (unsigned round = 0;; round++) {
        ssize_t r = recv(s->fd, buf, sizeof(buf), 0);
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != pattern(s->got + (uint64_t)i, 0))
                s->ok = false;
        s->got += (uint64_t)r;
        if (round % 16 == 0)
            usleep(1000); /* a slow reader: ember must buffer and hold the guest back */
    }
    return NULL;
}

/* 1 MiB each way at once through small windows: nothing lost, nothing
 * reordered, no credit violated on either side. */
START_TEST(streams_both_ways)
{
    int lfd = port_listener(5100);
    const uint32_t window = 16384;
    struct host_side hs = {.fd = open_guest_conn(lfd, window)};
    pthread_t w, r;
    pthread_create(&w, NULL, host_writer, &hs);
    pthread_create(&r, NULL, host_reader, &hs);
    uint64_t sent = 0, recvd = 0, consumed_reported = 0;
    uint32_t ember_fwd = 0, ember_alloc = VSOCK_CONN_BUF;
    bool host_done = false, bad = false;
    static uint8_t chunk[4096 + 64], buf[4096];
    for (int spin = 0; spin < 200000 && (!host_done || sent < STREAM_BYTES); spin++) {
        struct vsock_hdr h;
        uint32_t len;
        while (rx(&h, buf, &len, 0)) {
            ember_alloc = h.buf_alloc;
            ember_fwd = h.fwd_cnt;
            if (h.op == VSOCK_OP_SHUTDOWN) {
                host_done = true;
            } else if (h.op == VSOCK_OP_RW) {
                for (uint32_t i = 0; i < len; i++)
                    if (buf[i] != pattern(recvd + i, 0x5a))
                        bad = true;
                recvd += len;
                ck_assert_uint_le(recvd - consumed_reported, window);
            }
        }
        /* The guest consumes everything at once and says so now and then. */
        if (recvd - consumed_reported >= window / 2 || (recvd && host_done)) {
            struct vsock_hdr u = hdr(VSOCK_OP_CREDIT_UPDATE, 1234, 5100, 0);
            u.buf_alloc = window;
            u.fwd_cnt = (uint32_t)recvd;
            consumed_reported = recvd;
            tx(u, NULL);
        }
        uint32_t credit = ember_alloc - (uint32_t)(sent - ember_fwd);
        uint32_t n = STREAM_BYTES - sent < 4096 ? (uint32_t)(STREAM_BYTES - sent) : 4096;
        if (n > credit)
            n = credit;
        if (n) {
            for (uint32_t i = 0; i < n; i++)
                chunk[i] = pattern(sent + i, 0);
            struct vsock_hdr d = hdr(VSOCK_OP_RW, 1234, 5100, n);
            d.buf_alloc = window;
            d.fwd_cnt = (uint32_t)consumed_reported;
            tx(d, chunk);
            sent += n;
        } else {
            usleep(200);
        }
    }
    ck_assert(!bad);
    ck_assert_uint_eq(recvd, STREAM_BYTES);
    ck_assert_uint_eq(sent, STREAM_BYTES);
    struct vsock_hdr s = hdr(VSOCK_OP_SHUTDOWN, 1234, 5100, 0);
    s.flags = VSOCK_SHUTDOWN_RCV | VSOCK_SHUTDOWN_SEND;
    s.buf_alloc = window;
    s.fwd_cnt = (uint32_t)recvd;
    tx(s, NULL);
    pthread_join(w, NULL);
    pthread_join(r, NULL);
    ck_assert(hs.ok);
    ck_assert_uint_eq(hs.got, STREAM_BYTES);
    struct vsock_hdr h;
    bool rst = false;
    for (int i = 0; i < 10 && !rst; i++) {
        ck_assert(rx(&h, NULL, NULL, 2000));
        rst = h.op == VSOCK_OP_RST;
    }
    ck_assert(rst);
    ck_assert_uint_eq(vs.credit_violations, 0);
    ck_assert_uint_eq(vs.bad_packets, 0);
    close(hs.fd);
    close(lfd);
}
END_TEST

START_TEST(hostile_packets)
{
    struct vsock_hdr h = hdr(VSOCK_OP_REQUEST, 1, 5100, 0);
    h.src_cid = 77; /* not the guest: dropped without a word */
    tx(h, NULL);
    expect_nothing(50);
    h = hdr(VSOCK_OP_REQUEST, 1, 5100, 0);
    h.dst_cid = 9;
    tx(h, NULL);
    struct vsock_hdr r;
    ck_assert(rx(&r, NULL, NULL, 2000));
    ck_assert_uint_eq(r.op, VSOCK_OP_RST);
    ck_assert_uint_eq(r.src_cid, 9);
    h = hdr(VSOCK_OP_REQUEST, 1, 5100, 0);
    h.type = 2; /* seqpacket was not offered */
    tx(h, NULL);
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    tx(hdr(99, 1, 5100, 0), NULL);
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    tx(hdr(VSOCK_OP_INVALID, 1, 5100, 0), NULL);
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    tx(hdr(VSOCK_OP_RW, 1, 5100, 3), "abc"); /* no such connection */
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    tx(hdr(VSOCK_OP_RST, 1, 5100, 0), NULL); /* never answered */
    expect_nothing(50);
    h = hdr(VSOCK_OP_RW, 1, 5100, 1000); /* len beyond the buffer */
    tx_raw(&h, sizeof(h), "abc", 3, true);
    h = hdr(VSOCK_OP_REQUEST, 1, 5100, 2); /* payload on a control packet */
    tx(h, "xy");
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    tx_raw(&h, 20, NULL, 0, false); /* a short header */
    expect_nothing(50);
    static uint8_t big[VSOCK_MAX_PKT + 1];
    h = hdr(VSOCK_OP_RW, 1, 5100, VSOCK_MAX_PKT + 1); /* oversized */
    tx(h, big);
    expect(VSOCK_OP_RST, 5100, 1, NULL);
    ck_assert_uint_eq(vs.unknown_conn_packets, 1);
    ck_assert_uint_eq(vs.bad_packets, 9);

    /* Credit violation: the host program does not read and the guest
     * ignores ember's window. */
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20);
    bool reset = false;
    for (int i = 0; i < 16 && !reset; i++) {
        tx(hdr(VSOCK_OP_RW, 1234, 5100, VSOCK_MAX_PKT), big);
        while (rx(&r, NULL, NULL, 20))
            reset |= r.op == VSOCK_OP_RST;
    }
    ck_assert(reset);
    ck_assert_uint_eq(vs.credit_violations, 1);
    /* The device goes on: nothing needs a reset. */
    ck_assert(vs.dev.active);
    ck_assert_int_eq(__atomic_load_n(&config_irqs, __ATOMIC_SEQ_CST), 0);
    close(fd);
    close(lfd);
}
END_TEST

/* With no receive buffers ember stops reading the host socket (the host
 * program blocks); the guest's new buffers and kick resume the stream with
 * nothing lost. */
START_TEST(no_rx_buffers_pushes_back)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20);
    ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    enum { TOTAL = 640 << 10 };
    static uint8_t data[TOTAL], got[TOTAL];
    for (unsigned i = 0; i < TOTAL; i++)
        data[i] = pattern(i, 0x33);
    size_t written = 0, recvd = 0;
    hold_rx = true;
    for (int round = 0; round < 200; round++) {
        ssize_t w = write(fd, data + written, TOTAL - written);
        if (w > 0)
            written += (size_t)w;
        struct vsock_hdr h;
        uint32_t len;
        bool any = false;
        while (rx(&h, got + recvd, &len, 10)) {
            ck_assert_uint_eq(h.op, VSOCK_OP_RW);
            recvd += len;
            any = true;
        }
        if (!any && nheld == NRX)
            break; /* every buffer used: ember must be waiting */
    }
    ck_assert_uint_eq(nheld, NRX);
    ck_assert_uint_le(recvd, NRX * 4096);
    ck_assert_uint_gt(written, recvd); /* the rest waits in the host socket */
    ck_assert(write(fd, data + written, TOTAL - written) < 0 && errno == EAGAIN);
    hold_rx = false;
    for (unsigned i = 0; i < nheld; i++)
        post_rx(held[i]);
    nheld = 0;
    virtio_dev_kick(&vs.dev, 0);
    for (int round = 0; round < 4000 && recvd < TOTAL; round++) {
        ssize_t w = written < TOTAL ? write(fd, data + written, TOTAL - written) : 0;
        if (w > 0)
            written += (size_t)w;
        struct vsock_hdr h;
        uint32_t len;
        while (rx(&h, got + recvd, &len, 1))
            recvd += len; /* within the guest's 1 MiB window: no update needed */
    }
    ck_assert_uint_eq(recvd, TOTAL);
    ck_assert_mem_eq(got, data, TOTAL);
    close(fd);
    close(lfd);
}
END_TEST

START_TEST(header_checks)
{
    const char *why;
    struct vsock_hdr h = hdr(VSOCK_OP_RW, 1, 2, 10);
    ck_assert_int_eq(vsock_check_packet(&h, 10, GUEST_CID, &why), VSOCK_ACCEPT);
    ck_assert_int_eq(vsock_check_packet(&h, 9, GUEST_CID, &why), VSOCK_DROP);
    h.len = VSOCK_MAX_PKT + 1;
    ck_assert_int_eq(vsock_check_packet(&h, 1u << 20, GUEST_CID, &why), VSOCK_REPLY_RST);
    h = hdr(VSOCK_OP_RST, 1, 2, 0);
    h.type = 7;
    ck_assert_int_eq(vsock_check_packet(&h, 0, GUEST_CID, &why), VSOCK_DROP);
    h = hdr(VSOCK_OP_SHUTDOWN, 1, 2, 0);
    h.src_cid = (1ULL << 32) | GUEST_CID; /* the upper half is reserved */
    ck_assert_int_eq(vsock_check_packet(&h, 0, GUEST_CID, &why), VSOCK_DROP);
    h.src_cid = GUEST_CID;
    h.dst_cid = (1ULL << 32) | VSOCK_HOST_CID;
    ck_assert_int_eq(vsock_check_packet(&h, 0, GUEST_CID, &why), VSOCK_REPLY_RST);
}
END_TEST

START_TEST(reset_closes_connections)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 4096);
    ck_assert_uint_eq(vs.nconns, 1);
    pthread_mutex_lock(&vs.dev.lock);
    virtio_dev_set_status(&vs.dev, 0);
    pthread_mutex_unlock(&vs.dev.lock);
    ck_assert_uint_eq(vs.nconns, 0);
    char buf[8];
    ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 0);
    close(fd);
    close(lfd);
}
END_TEST

START_TEST(cli_vsock)
{
    struct vsock_config c;
    ck_assert_int_eq(cli_parse_vsock("cid=3,uds=/tmp/v.sock", &c), 0);
    ck_assert_uint_eq(c.guest_cid, 3);
    ck_assert_str_eq(c.uds_path, "/tmp/v.sock");
    free((char *)c.uds_path);
    ck_assert_int_eq(cli_parse_vsock("guest_cid=4294967294,uds_path=/x,id=vsock0", &c), 0);
    ck_assert_uint_eq(c.guest_cid, 0xfffffffeu);
    ck_assert_str_eq(c.id, "vsock0");
    free((char *)c.uds_path);
    free((char *)c.id);
    ck_assert_int_eq(cli_parse_vsock("cid=2,uds=/x", &c), -1); /* the host's */
    ck_assert_int_eq(cli_parse_vsock("cid=4294967295,uds=/x", &c), -1);
    ck_assert_int_eq(cli_parse_vsock("cid=3", &c), -1);
    ck_assert_int_eq(cli_parse_vsock("uds=/x", &c), -1);
    ck_assert_int_eq(cli_parse_vsock("cid=3,uds=/x,port=1", &c), -1);
}
END_TEST

/* The API takes any 32-bit guest CID, as Firecracker does (firecracker-containerd sends 0):
 * the guest reads it from the configuration space and its packets carry it. */
START_TEST(any_32_bit_guest_cid)
{
    struct guest_memory m;
    guest_memory_map(&m, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    char d[64], p[80];
    snprintf(d, sizeof(d), "/tmp/ember-vsock-cid-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    snprintf(p, sizeof(p), "%s/v.sock", d);
    static const uint64_t cids[] = {0, 1, 2, 0xffffffffULL};
    for (unsigned i = 0; i < sizeof(cids) / sizeof(cids[0]); i++) {
        struct virtio_vsock v;
        ck_assert_msg(virtio_vsock_init(&v, cids[i], p, &m) == 0, "%s", error_get());
        uint64_t seen = 1234;
        v.dev.ops->read_config(&v.dev, 0, &seen, sizeof(seen));
        ck_assert_uint_eq(seen, cids[i]);
        struct vsock_hdr h = {.src_cid = cids[i],
                              .dst_cid = VSOCK_HOST_CID,
                              .type = VSOCK_TYPE_STREAM,
                              .op = VSOCK_OP_REQUEST};
        const char *why;
        ck_assert_int_eq(vsock_check_packet(&h, 0, cids[i], &why), VSOCK_ACCEPT);
        h.src_cid = cids[i] ^ 1; /* still only the guest's own CID */
        ck_assert_int_eq(vsock_check_packet(&h, 0, cids[i], &why), VSOCK_DROP);
        virtio_vsock_destroy(&v);
        unlink(p);
    }
    struct virtio_vsock v;
    ck_assert_int_eq(virtio_vsock_init(&v, 1ULL << 32, p, &m), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "32 bits"));
    virtio_vsock_destroy(&v);
    unlink(p);
    rmdir(d);
}
END_TEST

/* ---- polling (poll_window.h) ---------------------------------------------------------------- */

static bool polling(void)
{
    return __atomic_load_n(&vs.poll.polling, __ATOMIC_ACQUIRE);
}

static uint64_t kicks_of(unsigned q)
{
    return __atomic_load_n(&vs.dev.queues[q].kicks, __ATOMIC_SEQ_CST);
}

/* While the device polls (a 1 s window: it cannot end, however slow this machine, before the
 * packets show that they need no kick), the driver is not asked to kick for packets it sends,
 * and they are served. */
START_TEST(tx_polled_without_kicks)
{
    kick_as_asked = true;
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20); /* its REQUEST's kick starts polling */
    ck_assert(polling());
    uint64_t kicks = kicks_of(1);
    char buf[64];
    for (int i = 0; i < 20; i++) {
        tx(hdr(VSOCK_OP_RW, 1234, 5100, 5), "hello");
        ck_assert_int_eq(read_wait(fd, buf, sizeof(buf)), 5);
        ck_assert_mem_eq(buf, "hello", 5);
    }
    ck_assert_uint_eq(kicks_of(1), kicks);
    ck_assert_uint_gt(__atomic_load_n(&vs.poll_hits, __ATOMIC_SEQ_CST), 0);
    close(fd);
    close(lfd);
}
END_TEST

/* Data waits in the host socket for receive buffers: those the driver gives back are found
 * while the device polls, with no kick of the receive queue. */
START_TEST(rx_buffers_polled_without_kicks)
{
    int lfd = port_listener(5100);
    int fd = open_guest_conn(lfd, 1u << 20);
    ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    static uint8_t data[NRX * 4096 + 8192];
    size_t written = 0;
    hold_rx = true;
    for (int round = 0; round < 400 && nheld < NRX; round++) {
        ssize_t w = write(fd, data + written, sizeof(data) - written);
        if (w > 0)
            written += (size_t)w;
        struct vsock_hdr h;
        while (nheld < NRX && rx(&h, NULL, NULL, 5))
            ck_assert_uint_eq(h.op, VSOCK_OP_RW);
    }
    ck_assert_uint_eq(nheld, NRX);
    for (int i = 0; i < 20000 && !__atomic_load_n(&vs.rx_starved, __ATOMIC_SEQ_CST); i++) {
        ssize_t w = write(fd, data + written, sizeof(data) - written);
        if (w > 0)
            written += (size_t)w;
        usleep(100);
    }
    ck_assert(__atomic_load_n(&vs.rx_starved, __ATOMIC_SEQ_CST));
    ck_assert(polling());
    uint64_t kicks = kicks_of(0);
    uint16_t used = __atomic_load_n(&used_of(0)->idx, __ATOMIC_ACQUIRE);
    post_rx(held[0]); /* no kick */
    nheld = 0;
    struct vsock_hdr h;
    ck_assert(rx(&h, NULL, NULL, 2000));
    ck_assert_uint_eq(h.op, VSOCK_OP_RW);
    ck_assert_uint_eq(__atomic_load_n(&used_of(0)->idx, __ATOMIC_ACQUIRE), (uint16_t)(used + 1));
    ck_assert_uint_eq(kicks_of(0), kicks);
    close(fd);
    close(lfd);
}
END_TEST

/* The driver kicks only when the device asks, sending at gaps around the poll window's
 * length, so that packets land while the device polls, just as it stops and asks for kicks
 * again, and while it sleeps: a packet neither seen by the last look nor kicked for would
 * never be taken (tx_raw fails). */
static void race_polling_switch(unsigned packets)
{
    kick_as_asked = true;
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (unsigned i = 0; i < packets; i++) {
        /* An RST for no connection: taken and dropped, nothing answered. */
        tx(hdr(VSOCK_OP_RST, 40000 + i % 1000, 5555, 0), NULL);
        race_spin_ns(race_next(&seed) % (3 * vs.poll.bound_ns)); /* 0-3 windows */
    }
    ck_assert_uint_eq(vs.tx_packets, packets);
}

START_TEST(polling_switch_loses_no_packet)
{
    race_polling_switch(3000);
    printf("vsock polling race: %llu packet(s) found right after kicks were asked for again, "
           "%llu polled, %llu kicked\n",
           (unsigned long long)vs.poll_races, (unsigned long long)vs.poll_hits,
           (unsigned long long)kicks_of(1));
    ck_assert_uint_gt(vs.poll_hits, 0);
    ck_assert_uint_gt(kicks_of(1), 0);
}
END_TEST

START_TEST(adaptive_window_adapts)
{
    race_polling_switch(500);
    ck_assert_uint_gt(vs.poll.grows, 0);
    ck_assert_uint_le(vs.poll.window_ns, vs.poll.bound_ns);
    ck_assert_uint_ge(vs.poll.window_ns, POLL_WINDOW_MIN_NS);
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

Suite *virtio_vsock_suite(void)
{
    Suite *s = suite_create("virtio_vsock");
    TCase *tc = tcase_create("vsock");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, header_checks);
    tcase_add_test(tc, guest_connects_to_host);
    tcase_add_test(tc, host_hangs_up);
    tcase_add_test(tc, guest_connect_refused);
    tcase_add_test(tc, host_connects_to_guest);
    tcase_add_test(tc, host_connect_refused_or_bad);
    tcase_add_test(tc, credit_towards_guest);
    tcase_add_test(tc, streams_both_ways);
    tcase_add_test(tc, no_rx_buffers_pushes_back);
    tcase_add_test(tc, hostile_packets);
    tcase_add_test(tc, reset_closes_connections);
    suite_add_tcase(s, tc);
    TCase *poll = tcase_create("polling");
    tcase_add_checked_fixture(poll, setup_long_poll, teardown);
    tcase_set_timeout(poll, 60);
    tcase_add_test(poll, tx_polled_without_kicks);
    tcase_add_test(poll, rx_buffers_polled_without_kicks);
    /* Everything else works the same while the device polls. */
    tcase_add_test(poll, streams_both_ways);
    tcase_add_test(poll, no_rx_buffers_pushes_back);
    tcase_add_test(poll, reset_closes_connections);
    suite_add_tcase(s, poll);
    TCase *race = tcase_create("polling_race");
    tcase_add_checked_fixture(race, setup_short_poll, teardown);
    tcase_add_test(race, polling_switch_loses_no_packet);
    tcase_set_timeout(race, 60);
    suite_add_tcase(s, race);
    TCase *adaptive = tcase_create("polling_adaptive");
    tcase_add_checked_fixture(adaptive, setup_adaptive_poll, teardown);
    tcase_add_test(adaptive, adaptive_window_adapts);
    tcase_set_timeout(adaptive, 60);
    suite_add_tcase(s, adaptive);
    TCase *cli = tcase_create("cli");
    tcase_add_test(cli, cli_vsock);
    tcase_add_test(cli, any_32_bit_guest_cid);
    suite_add_tcase(s, cli);
    return s;
}
