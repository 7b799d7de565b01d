/* vhost-user-blk (virtio/vhost_user_blk.c) through its virtio-mmio window, without KVM, against
 * a fake back-end on a unix socket (a thread answering every request as a back-end would and
 * recording it): the features and configuration space the guest sees, the messages of an
 * activation and their order, kicks reaching the back-end, its interrupts reaching the
 * transport, a reset taking the rings back, and a back-end that goes away: for good, or
 * restarted (reconnection, with and without the inflight buffer). */
#include "suites.h"
#include "util/error.h"
#include "vhost_user/proto.h"
#include "virtio/mmio.h"
#include "virtio/vhost_user_blk.h"
#include "vhu_fake.h"
#include "virtq_fake.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum {
    REG_DEVICE_FEATURES = 0x010,
    REG_DEVICE_FEATURES_SEL = 0x014,
    REG_DRIVER_FEATURES = 0x020,
    REG_DRIVER_FEATURES_SEL = 0x024,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM = 0x038,
    REG_QUEUE_READY = 0x044,
    REG_QUEUE_NOTIFY = 0x050,
    REG_INTERRUPT_STATUS = 0x060,
    REG_INTERRUPT_ACK = 0x064,
    REG_STATUS = 0x070,
    REG_QUEUE_DESC_LOW = 0x080,
    REG_QUEUE_DRIVER_LOW = 0x090,
    REG_QUEUE_DEVICE_LOW = 0x0a0,
    REG_CONFIG = 0x100,
};

#define LIVE_STATUS                                                                                \
    (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |                \
     VIRTIO_STATUS_DRIVER_OK)
#define QSIZE 16

static struct fake_queue f;
static struct virtio_mmio m;
static struct vhost_user_blk b;

static void wr(uint32_t reg, uint32_t v)
{
    virtio_mmio_io(&m, reg, (uint8_t *)&v, 4, true);
}

static uint32_t rd(uint32_t reg)
{
    uint32_t v = 0;
    virtio_mmio_io(&m, reg, (uint8_t *)&v, 4, false);
    return v;
}

static void setup(void)
{
    uint64_t features = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VHOST_USER_F_PROTOCOL_FEATURES) |
                        (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_RING_PACKED) |
                        (1ULL << 9) /* FLUSH */ | (1ULL << 11) /* CONFIG_WCE */ | (1ULL << 6);
    uint64_t protocol = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                        (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) | (1ULL << 12);
    uint8_t config[60] = {0};
    uint64_t capacity = 4096;
    memcpy(config, &capacity, 8);
    uint32_t blk_size = 4096;
    memcpy(config + 20, &blk_size, 4);
    backend_start("vub", features, protocol, config, sizeof(config), 1);
    /* A back-end maps guest RAM: shared memory, as ember gives it with a vhost-user drive. */
    memset(&f, 0, sizeof(f));
    ck_assert_int_eq(
        guest_memory_map_memfd(&f.mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END), 0);
    f.size = QSIZE;
    f.cfg = (struct virtq_config){
        .size = QSIZE, .desc_gpa = FAKE_DESC, .avail_gpa = FAKE_AVAIL, .used_gpa = FAKE_USED};
    struct vhost_user_blk_options o = {.socket = be.path};
    ck_assert_msg(vhost_user_blk_init(&b, "blk0", &o, &f.mem) == 0, "%s", error_get());
    ck_assert_int_eq(virtio_mmio_init(&m, &b.vud.dev, -1, 0xd0000000, 5), 0);
}

static void teardown(void)
{
    virtio_mmio_destroy(&m);
    vhost_user_blk_destroy(&b);
    backend_stop();
    fake_queue_free(&f);
}

static void live(void)
{
    wr(REG_STATUS, 0);
    wr(REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    wr(REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    wr(REG_DRIVER_FEATURES_SEL, 1);
    wr(REG_DRIVER_FEATURES, 1); /* VERSION_1 */
    wr(REG_DRIVER_FEATURES_SEL, 0);
    wr(REG_DRIVER_FEATURES, 1u << 9); /* FLUSH */
    wr(REG_STATUS, LIVE_STATUS & ~VIRTIO_STATUS_DRIVER_OK);
    wr(REG_QUEUE_SEL, 0);
    wr(REG_QUEUE_NUM, QSIZE);
    wr(REG_QUEUE_DESC_LOW, (uint32_t)FAKE_DESC);
    wr(REG_QUEUE_DRIVER_LOW, (uint32_t)FAKE_AVAIL);
    wr(REG_QUEUE_DEVICE_LOW, (uint32_t)FAKE_USED);
    wr(REG_QUEUE_READY, 1);
    wr(REG_STATUS, LIVE_STATUS);
}

/* Waits (bounded) for cond. */
#define EVENTUALLY(cond)                                                                           \
    do {                                                                                           \
        int tries_ = 0;                                                                            \
        while (!(cond) && tries_++ < 2000)                                                         \
            usleep(1000);                                                                          \
        ck_assert_msg((cond), "never: %s", #cond);                                                 \
    } while (0)

START_TEST(features_and_config)
{
    wr(REG_DEVICE_FEATURES_SEL, 0);
    uint32_t lo = rd(REG_DEVICE_FEATURES);
    wr(REG_DEVICE_FEATURES_SEL, 1);
    uint32_t hi = rd(REG_DEVICE_FEATURES);
    /* What the back-end offers and ember passes on: not the protocol bit, packed rings or
     * CONFIG_WCE. */
    ck_assert_uint_eq(lo, (1u << 9) | (1u << 6) | (1u << VIRTIO_F_EVENT_IDX));
    ck_assert_uint_eq(hi, 1);                     /* VERSION_1 */
    ck_assert_uint_eq(rd(REG_CONFIG), 4096);      /* capacity, low half */
    ck_assert_uint_eq(rd(REG_CONFIG + 20), 4096); /* blk_size */
    ck_assert_uint_eq(b.capacity, 4096);
}
END_TEST

START_TEST(activation_hands_over_the_rings)
{
    live();
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    /* In order: features (with the protocol bit), memory, then the ring. */
    static const uint32_t want[] = {VHU_SET_FEATURES,    VHU_SET_MEM_TABLE,  VHU_GET_INFLIGHT_FD,
                                    VHU_SET_INFLIGHT_FD, VHU_SET_VRING_NUM,  VHU_SET_VRING_BASE,
                                    VHU_SET_VRING_ADDR,  VHU_SET_VRING_CALL, VHU_SET_VRING_KICK,
                                    VHU_SET_VRING_ENABLE};
    unsigned nwant = sizeof(want) / sizeof(want[0]);
    pthread_mutex_lock(&be.lock);
    unsigned first = 0;
    while (first < be.nlog && be.log[first] != VHU_SET_FEATURES)
        first++;
    ck_assert_uint_ge(be.nlog - first, nwant);
    for (unsigned i = 0; i < nwant; i++)
        ck_assert_uint_eq(be.log[first + i], want[i]);
    ck_assert_uint_eq(be.set_inflight, 1);
    ck_assert_int_ge(b.vud.inflight.fd, 0);
    ck_assert_uint_eq(be.set_features, (1ULL << VIRTIO_F_VERSION_1) | (1ULL << 9) |
                                           (1ULL << VHOST_USER_F_PROTOCOL_FEATURES));
    ck_assert_uint_eq(be.mem_fds, f.mem.nregions);
    int kick = be.kick_fd, call = be.call_fd;
    pthread_mutex_unlock(&be.lock);
    ck_assert_int_ge(kick, 0);
    ck_assert_int_ge(call, 0);

    /* The driver's notification reaches the back-end's kick descriptor (drain the one
     * activation sent first). */
    uint64_t v;
    ssize_t ignored = read(kick, &v, sizeof(v));
    (void)ignored;
    wr(REG_QUEUE_NOTIFY, 0);
    struct pollfd p = {.fd = kick, .events = POLLIN};
    ck_assert_int_eq(poll(&p, 1, 2000), 1);
    /* The back-end's interrupt reaches the transport. */
    ck_assert_uint_eq(rd(REG_INTERRUPT_STATUS) & 1, 0);
    v = 1;
    ck_assert_int_eq(write(call, &v, sizeof(v)), sizeof(v));
    EVENTUALLY(rd(REG_INTERRUPT_STATUS) & 1);
    wr(REG_INTERRUPT_ACK, 1);

    /* A reset takes the ring back. */
    wr(REG_STATUS, 0);
    ck_assert(logged(VHU_GET_VRING_BASE));
    /* And a second activation hands it over again. */
    live();
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
}
END_TEST

START_TEST(backend_gone)
{
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    backend_die();
    /* The device needs a reset and tells the driver; nothing else breaks. */
    EVENTUALLY(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
    EVENTUALLY(rd(REG_INTERRUPT_STATUS) & 2);
    ck_assert(b.vud.vu.broken);
    /* The reset is answered without the back-end; a new activation fails cleanly. */
    wr(REG_STATUS, 0);
    ck_assert_uint_eq(rd(REG_STATUS), 0);
    live();
    ck_assert(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
    wr(REG_STATUS, 0);
}
END_TEST

/* Two virtio-blk requests (header, status byte) made available on the ring: heads 0 and 2. */
static void two_requests(void)
{
    for (uint16_t i = 0; i < 2; i++) {
        uint64_t hdr = FAKE_DATA + 0x1000 * i;
        fake_set_desc(&f, (uint16_t)(2 * i), hdr, 16, VIRTQ_DESC_F_NEXT, (uint16_t)(2 * i + 1));
        fake_set_desc(&f, (uint16_t)(2 * i + 1), hdr + 0x100, 1, VIRTQ_DESC_F_WRITE, 0);
        *fake_ptr(&f, hdr + 0x100, 1) = 0xff;
        fake_publish(&f, (uint16_t)(2 * i));
    }
}

static uint8_t request_status(unsigned i)
{
    return *fake_ptr(&f, FAKE_DATA + 0x1000 * i + 0x100, 1);
}

/* With the inflight buffer, the back-end restarted on the same socket gets the device again
 * where it stands: the buffer handed over again (not a new one), each ring from its used
 * index; the requests it had taken are its to resubmit; the guest sees no reset. */
START_TEST(reconnect_with_inflight)
{
    vhost_user_dev_set_reconnect(&b.vud, 5);
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    int inflight_fd = b.vud.inflight.fd;
    ck_assert_int_ge(inflight_fd, 0);
    two_requests();
    /* The back-end took both and answered none. */
    backend_die();
    backend_revive(be.protocol);
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    ck_assert_uint_eq(__atomic_load_n(&be.connections, __ATOMIC_SEQ_CST), 2);
    ck_assert(!logged(VHU_GET_INFLIGHT_FD));
    ck_assert(logged(VHU_SET_INFLIGHT_FD));
    ck_assert_uint_eq(be.set_inflight, 2);
    ck_assert_uint_eq(be.vring_base[0], 0); /* the used index: both requests are the back-end's */
    ck_assert_uint_eq(fake_used(&f)->idx, 0);
    ck_assert_uint_eq(request_status(0), 0xff);
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
    EVENTUALLY(!__atomic_load_n(&b.vud.reconnecting, __ATOMIC_SEQ_CST));
    ck_assert_uint_eq(b.vud.reconnects, 1);
    /* The reset frees the buffer: a later activation asks for a new one. */
    wr(REG_STATUS, 0);
    ck_assert_int_lt(b.vud.inflight.fd, 0);
}
END_TEST

/* Without the inflight buffer the new back-end could not know which requests the old one
 * took: ember completes them with VIRTIO_BLK_S_IOERR at once, and the rings resume after
 * them. */
START_TEST(reconnect_without_inflight_fails_requests)
{
    uint64_t protocol =
        (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ULL << VHOST_USER_PROTOCOL_F_CONFIG);
    vhost_user_dev_set_reconnect(&b.vud, 5);
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    backend_die();
    backend_revive(protocol);
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    /* Reset and live again with the back-end that lacks it; then the requests, and its death. */
    wr(REG_STATUS, 0);
    ck_assert_int_lt(b.vud.inflight.fd, 0);
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE) && b.vud.running);
    ck_assert_int_lt(b.vud.inflight.fd, 0);
    two_requests();
    backend_die();
    EVENTUALLY(fake_used(&f)->idx == 2);
    ck_assert_uint_eq(request_status(0), 1); /* VIRTIO_BLK_S_IOERR */
    ck_assert_uint_eq(request_status(1), 1);
    ck_assert_uint_eq(fake_used(&f)->ring[0].len, 1);
    EVENTUALLY(rd(REG_INTERRUPT_STATUS) & 1);
    backend_revive(protocol);
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    ck_assert_uint_eq(be.vring_base[0], 2);
    ck_assert_uint_eq(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET, 0);
}
END_TEST

/* A back-end that never comes back: within the limit the requests in flight fail and the
 * device needs a reset; ember goes on. */
START_TEST(reconnect_gives_up)
{
    vhost_user_dev_set_reconnect(&b.vud, 1);
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    two_requests();
    backend_die();
    /* Gone for good: nobody listens any more. */
    close(be.listen_fd);
    unlink(be.path);
    be.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); /* for backend_stop */
    ck_assert_uint_eq(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET, 0);
    EVENTUALLY(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
    ck_assert_uint_eq(fake_used(&f)->idx, 2);
    ck_assert_uint_eq(request_status(0), 1);
    ck_assert_uint_eq(request_status(1), 1);
    EVENTUALLY(!__atomic_load_n(&b.vud.reconnecting, __ATOMIC_SEQ_CST));
    wr(REG_STATUS, 0);
    ck_assert_uint_eq(rd(REG_STATUS), 0);
}
END_TEST

/* A back-end that comes back without a feature the driver took cannot have the device: the
 * device needs a reset, without waiting out the limit. */
START_TEST(reconnect_refuses_fewer_features)
{
    vhost_user_dev_set_reconnect(&b.vud, 30);
    live();
    EVENTUALLY(logged(VHU_SET_VRING_ENABLE));
    backend_die();
    pthread_mutex_lock(&be.lock);
    be.features &= ~(1ULL << 9); /* FLUSH, which the driver took */
    pthread_mutex_unlock(&be.lock);
    backend_revive(be.protocol);
    EVENTUALLY(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
    ck_assert(!logged(VHU_SET_MEM_TABLE));
    EVENTUALLY(!__atomic_load_n(&b.vud.reconnecting, __ATOMIC_SEQ_CST));
    wr(REG_STATUS, 0);
}
END_TEST

/* A back-end whose inflight buffer is not what it says: the activation fails, nothing
 * crashes. */
START_TEST(bad_inflight_reply)
{
    static const struct {
        uint64_t size, offset, file;
        int nfds;
    } bad[] = {
        {1ULL << 40, 0, 4096, -1}, /* too large */
        {8192, 0, 4096, -1},       /* beyond the file's end */
        {4096, 100, 0, -1},        /* unaligned offset */
        {4096, 0, 0, 0},           /* no descriptor */
        {4096, 0, 0, 2},           /* two */
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        be.inflight_size = bad[i].size;
        be.inflight_offset = bad[i].offset;
        be.inflight_file = bad[i].file;
        be.inflight_nfds = bad[i].nfds;
        live();
        ck_assert_msg(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET, "case %u accepted", i);
        ck_assert_int_lt(b.vud.inflight.fd, 0);
        wr(REG_STATUS, 0);
        /* The connection is broken after a bad reply: a new back-end for the next case. */
        backend_die();
        backend_revive(be.protocol);
        vhost_user_close(&b.vud.vu);
        ck_assert_int_eq(vhost_user_connect(&b.vud.vu, "blk0", be.path, 2000), 0);
        ck_assert_int_eq(vhost_user_handshake(&b.vud.vu, b.vud.wanted_protocol), 0);
    }
}
END_TEST

START_TEST(refused_without_shared_memory)
{
    struct guest_memory anon;
    ck_assert_int_eq(guest_memory_map(&anon, 4 << 20, 1ULL << 32, 1ULL << 32), 0);
    struct vhost_user_blk other;
    struct vhost_user_blk_options o = {.socket = be.path};
    ck_assert_int_eq(vhost_user_blk_init(&other, "blk1", &o, &anon), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "shared"));
    vhost_user_blk_destroy(&other);
    guest_memory_free(&anon);
}
END_TEST

Suite *vhost_user_blk_suite(void)
{
    Suite *s = suite_create("vhost_user_blk");
    TCase *tc = tcase_create("device");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, features_and_config);
    tcase_add_test(tc, activation_hands_over_the_rings);
    tcase_add_test(tc, backend_gone);
    tcase_add_test(tc, refused_without_shared_memory);
    tcase_add_test(tc, reconnect_with_inflight);
    tcase_add_test(tc, reconnect_without_inflight_fails_requests);
    tcase_add_test(tc, reconnect_gives_up);
    tcase_add_test(tc, reconnect_refuses_fewer_features);
    tcase_add_test(tc, bad_inflight_reply);
    suite_add_tcase(s, tc);
    return s;
}
