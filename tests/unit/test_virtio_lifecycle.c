/* The device life cycle every virtio device shares (virtio/device.c), driven
 * through the real virtio-mmio register window without KVM: status bits only
 * ever added, NEEDS_RESET after a driver error, queue registers read-only
 * while live, activation all or nothing, absent queues, reset always
 * bringing the device back. virtio-rng and virtio-console are the devices. */
#include "suites.h"
#include "util/error.h"
#include "virtio/console.h"
#include "virtio/mmio.h"
#include "virtio/rng.h"
#include "virtq_fake.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
    REG_DRIVER_FEATURES = 0x020,
    REG_DRIVER_FEATURES_SEL = 0x024,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM = 0x038,
    REG_QUEUE_READY = 0x044,
    REG_QUEUE_NOTIFY = 0x050,
    REG_INTERRUPT_STATUS = 0x060,
    REG_STATUS = 0x070,
    REG_QUEUE_DESC_LOW = 0x080,
    REG_QUEUE_DESC_HIGH = 0x084,
    REG_QUEUE_DRIVER_LOW = 0x090,
    REG_QUEUE_DEVICE_LOW = 0x0a0,
};

#define ACK    VIRTIO_STATUS_ACKNOWLEDGE
#define DRIVER VIRTIO_STATUS_DRIVER
#define FEAT   VIRTIO_STATUS_FEATURES_OK
#define LIVE   VIRTIO_STATUS_DRIVER_OK
#define NEEDS  VIRTIO_STATUS_NEEDS_RESET

/* Queue q's rings: one fake queue's layout, moved by q pages. */
#define RING_STRIDE 0x40000ULL
#define DATA        (FAKE_DATA + 0x10000)

static struct fake_queue f;
static struct virtio_mmio m;

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

/* ACKNOWLEDGE, DRIVER, VERSION_1 (nothing else), FEATURES_OK. */
static void negotiate(void)
{
    wr(REG_STATUS, 0);
    wr(REG_STATUS, ACK);
    wr(REG_STATUS, ACK | DRIVER);
    wr(REG_DRIVER_FEATURES_SEL, 1);
    wr(REG_DRIVER_FEATURES, 1); /* VERSION_1 */
    wr(REG_DRIVER_FEATURES_SEL, 0);
    wr(REG_DRIVER_FEATURES, 0);
    wr(REG_STATUS, ACK | DRIVER | FEAT);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT);
}

static void setup_queue(unsigned q, uint32_t size)
{
    uint64_t off = RING_STRIDE * q;
    wr(REG_QUEUE_SEL, q);
    wr(REG_QUEUE_NUM, size);
    wr(REG_QUEUE_DESC_LOW, (uint32_t)(FAKE_DESC + off));
    wr(REG_QUEUE_DESC_HIGH, 0);
    wr(REG_QUEUE_DRIVER_LOW, (uint32_t)(FAKE_AVAIL + off));
    wr(REG_QUEUE_DEVICE_LOW, (uint32_t)(FAKE_USED + off));
    wr(REG_QUEUE_READY, 1);
}

/* A driver's view of queue q in the fake memory (its own avail index). */
struct ring {
    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    uint16_t next;
};

static struct ring ring_of(unsigned q)
{
    uint64_t off = RING_STRIDE * q;
    memset(fake_ptr(&f, FAKE_DESC + off, RING_STRIDE), 0, RING_STRIDE);
    return (struct ring){.desc = (void *)fake_ptr(&f, FAKE_DESC + off, 16 * 16),
                         .avail = (void *)fake_ptr(&f, FAKE_AVAIL + off, 6 + 2 * 16),
                         .used = (void *)fake_ptr(&f, FAKE_USED + off, 6 + 8 * 16)};
}

/* One writable buffer of len bytes at DATA, published on r; the device is told through
 * QueueNotify (no ioeventfd here: the register write signals the kick eventfd). */
static void offer(struct ring *r, unsigned q, uint32_t len)
{
    r->desc[0] = (struct virtq_desc){DATA, len, VIRTQ_DESC_F_WRITE, 0};
    r->avail->ring[r->next % 16] = 0;
    r->next++;
    __atomic_store_n(&r->avail->idx, r->next, __ATOMIC_RELEASE);
    wr(REG_QUEUE_NOTIFY, q);
}

/* Waits (bounded) for the device to return n buffers on r. */
static bool returned(const struct ring *r, uint16_t n)
{
    for (int i = 0; i < 2000; i++) {
        if (__atomic_load_n(&r->used->idx, __ATOMIC_ACQUIRE) == n)
            return true;
        usleep(1000);
    }
    return false;
}

static void noop(void *arg)
{
    (void)arg;
}

/* Every event the iothread had when this is called has been handled. */
static void settle(struct virtio_dev *d)
{
    iothread_call(&d->io, noop, NULL);
    iothread_call(&d->io, noop, NULL);
}

static bool nothing_registered(const struct virtio_dev *d)
{
    for (unsigned i = 0; i < d->nqueues; i++) {
        if (d->queues[i].kick_handler || virtq_is_set_up(&d->queues[i].vq))
            return false;
    }
    return !d->active;
}

/* ---- virtio-rng -------------------------------------------------------------------------- */

static struct virtio_rng rng;

static void rng_setup(void)
{
    fake_queue_init(&f, 16);
    ck_assert_msg(virtio_rng_init(&rng, &f.mem, 0, 0) == 0, "%s", error_get());
    ck_assert_int_eq(virtio_mmio_init(&m, &rng.dev, -1, 0xd0000000, 5), 0);
}

static void rng_teardown(void)
{
    virtio_mmio_destroy(&m);
    virtio_rng_destroy(&rng);
    fake_queue_free(&f);
}

/* Brings the rng live with its queue and checks a request is served. */
static struct ring rng_live(void)
{
    negotiate();
    struct ring r = ring_of(0);
    setup_queue(0, 16);
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE);
    offer(&r, 0, 64);
    ck_assert(returned(&r, 1));
    ck_assert_uint_eq(r.used->ring[0].len, 64);
    return r;
}

START_TEST(cleared_driver_ok_needs_reset)
{
    struct ring r = rng_live();
    uint32_t irq_before = rd(REG_INTERRUPT_STATUS);
    wr(REG_STATUS, ACK | DRIVER | FEAT); /* DRIVER_OK cleared without a reset */
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE | NEEDS);
    ck_assert(!(irq_before & 2));
    ck_assert(rd(REG_INTERRUPT_STATUS) & 2); /* configuration change */
    ck_assert(nothing_registered(&rng.dev));
    /* The queue registers stay as they were. */
    wr(REG_QUEUE_SEL, 0);
    wr(REG_QUEUE_READY, 0);
    ck_assert_uint_eq(rd(REG_QUEUE_READY), 1);
    wr(REG_QUEUE_NUM, 8);
    wr(REG_QUEUE_DESC_LOW, 0x1000);
    ck_assert_uint_eq(rng.dev.queues[0].cfg.size, 16);
    ck_assert_uint_eq(rng.dev.queues[0].cfg.desc_gpa, FAKE_DESC);
    /* DRIVER_OK again does not bring it back: only a reset does. */
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE | NEEDS);
    offer(&r, 0, 64);
    settle(&rng.dev);
    ck_assert(nothing_registered(&rng.dev));
    ck_assert_uint_eq(r.used->idx, 1);
    /* Reset and a clean set-up: it works again. */
    r = rng_live();
    (void)r;
}
END_TEST

START_TEST(every_cleared_bit_is_refused)
{
    static const uint8_t from[] = {ACK | DRIVER, ACK | DRIVER | FEAT, ACK | DRIVER | FEAT | LIVE};
    for (unsigned i = 0; i < sizeof(from); i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            uint8_t s = from[i];
            if (!(s & (1u << bit)))
                continue;
            if (s & LIVE) {
                rng_live();
            } else if (s & FEAT) {
                negotiate();
            } else {
                wr(REG_STATUS, 0);
                wr(REG_STATUS, ACK);
                wr(REG_STATUS, ACK | DRIVER);
            }
            ck_assert_uint_eq(rd(REG_STATUS), s);
            wr(REG_STATUS, s & ~(1u << bit));
            ck_assert_uint_eq(rd(REG_STATUS), s | NEEDS);
            ck_assert(nothing_registered(&rng.dev));
        }
    }
    rng_live();
}
END_TEST

START_TEST(queue_registers_read_only_while_live)
{
    rng_live();
    wr(REG_QUEUE_SEL, 0);
    wr(REG_QUEUE_NUM, 4);
    wr(REG_QUEUE_DESC_LOW, 0x1000);
    wr(REG_QUEUE_DESC_HIGH, 1);
    wr(REG_QUEUE_READY, 0);
    struct virtio_queue *q = &rng.dev.queues[0];
    ck_assert_uint_eq(q->cfg.size, 16);
    ck_assert_uint_eq(q->cfg.desc_gpa, FAKE_DESC);
    ck_assert(q->enabled);
    ck_assert(rng.dev.active);
    /* Before DRIVER_OK, an enabled queue's layout is fixed too, its enable is not. */
    negotiate();
    setup_queue(0, 16);
    wr(REG_QUEUE_NUM, 4);
    ck_assert_uint_eq(q->cfg.size, 16);
    wr(REG_QUEUE_READY, 0);
    ck_assert(!q->enabled);
    wr(REG_QUEUE_NUM, 8);
    ck_assert_uint_eq(q->cfg.size, 8);
}
END_TEST

START_TEST(needs_reset_ignores_status_writes)
{
    negotiate();
    setup_queue(0, 48); /* not a power of two: activation fails */
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE | NEEDS);
    ck_assert(nothing_registered(&rng.dev));
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE | VIRTIO_STATUS_FAILED);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE | NEEDS);
    wr(REG_STATUS, 0);
    ck_assert_uint_eq(rd(REG_STATUS), 0);
    rng_live();
}
END_TEST

START_TEST(driver_ok_without_features_ok_ignored)
{
    wr(REG_STATUS, 0);
    wr(REG_STATUS, ACK | DRIVER);
    setup_queue(0, 16);
    wr(REG_STATUS, ACK | DRIVER | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER);
    ck_assert(nothing_registered(&rng.dev));
    rng_live();
}
END_TEST

START_TEST(absent_queue_and_unknown_queue)
{
    negotiate();
    /* Live with its only queue left disabled: a kick of it, of a queue that does not exist
     * and of an absurd one change nothing. */
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE);
    ck_assert(rng.dev.active);
    ck_assert(!virtio_dev_queue_live(&rng.dev, 0));
    ck_assert(!virtio_dev_queue_live(&rng.dev, 1));
    wr(REG_QUEUE_NOTIFY, 0);
    wr(REG_QUEUE_NOTIFY, 1);
    wr(REG_QUEUE_NOTIFY, 0xffff);
    settle(&rng.dev);
    ck_assert(rng.dev.active);
    rng_live();
}
END_TEST

START_TEST(many_cycles)
{
    /* Set up, use, reset; and set up, fail, reset: nothing stays registered between. */
    for (int i = 0; i < 50; i++) {
        rng_live();
        if (i % 2) {
            negotiate();
            setup_queue(0, 16);
            wr(REG_QUEUE_READY, 0);
            wr(REG_QUEUE_DESC_HIGH, 0x100); /* rings at 1 TiB */
            wr(REG_QUEUE_READY, 1);
            wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
            ck_assert(rd(REG_STATUS) & NEEDS);
            ck_assert(nothing_registered(&rng.dev));
        }
    }
    wr(REG_STATUS, 0);
    ck_assert(nothing_registered(&rng.dev));
}
END_TEST

/* ---- virtio-console: two queues, host input ----------------------------------------------- */

static struct virtio_console con;
static size_t out_bytes;

static void con_output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)opaque;
    (void)buf;
    __atomic_add_fetch(&out_bytes, len, __ATOMIC_SEQ_CST);
}

static void con_setup(void)
{
    fake_queue_init(&f, 16);
    out_bytes = 0;
    ck_assert_msg(virtio_console_init(&con, &f.mem, con_output, NULL, NULL) == 0, "%s",
                  error_get());
    ck_assert_int_eq(virtio_mmio_init(&m, &con.dev, -1, 0xd0000000, 5), 0);
}

static void con_teardown(void)
{
    virtio_mmio_destroy(&m);
    virtio_console_destroy(&con);
    fake_queue_free(&f);
}

START_TEST(activation_fails_half_way)
{
    for (int round = 0; round < 20; round++) {
        negotiate();
        setup_queue(0, 16);
        setup_queue(1, 48); /* the second queue is wrong */
        wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
        ck_assert(rd(REG_STATUS) & NEEDS);
        ck_assert(nothing_registered(&con.dev));
        /* A reset and a clean set-up: input reaches the guest. */
        negotiate();
        struct ring r = ring_of(0);
        setup_queue(0, 16);
        setup_queue(1, 16);
        wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
        ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE);
        offer(&r, 0, 16);
        ck_assert_uint_eq(virtio_console_receive(&con, (const uint8_t *)"hi", 2), 2);
        ck_assert(returned(&r, 1));
        ck_assert_uint_eq(r.used->ring[0].len, 2);
    }
}
END_TEST

START_TEST(input_without_receive_queue)
{
    /* Only the transmit queue: host input waits in the device's buffer, the receive
     * queue's (zeroed) rings are never touched. */
    negotiate();
    setup_queue(1, 16);
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(rd(REG_STATUS), ACK | DRIVER | FEAT | LIVE);
    ck_assert_uint_eq(virtio_console_receive(&con, (const uint8_t *)"waiting", 7), 7);
    wr(REG_QUEUE_NOTIFY, 0);
    settle(&con.dev);
    ck_assert(con.dev.active);
    /* After a reset with both queues, the buffered input arrives. */
    negotiate();
    struct ring r = ring_of(0);
    setup_queue(0, 16);
    setup_queue(1, 16);
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    offer(&r, 0, 16);
    ck_assert(returned(&r, 1));
    ck_assert_uint_eq(r.used->ring[0].len, 7);
    ck_assert(memcmp(fake_ptr(&f, DATA, 7), "waiting", 7) == 0);
}
END_TEST

START_TEST(output_without_transmit_queue)
{
    negotiate();
    setup_queue(0, 16);
    wr(REG_STATUS, ACK | DRIVER | FEAT | LIVE);
    wr(REG_QUEUE_NOTIFY, 1);
    settle(&con.dev);
    ck_assert(con.dev.active);
    ck_assert_uint_eq(out_bytes, 0);
}
END_TEST

/* ---- rate-limited log lines ----------------------------------------------------------------- */

START_TEST(log_limit_counts_what_it_suppresses)
{
    struct log_limit l = {0};
    uint64_t missed = log_missed_count();
    for (int i = 0; i < 1000; i++)
        log_limited(&l, LOG_WARN, "test line %d", i);
    ck_assert_uint_eq(l.total, 1000);
    /* One line written (the interval is seconds long), the rest counted. */
    ck_assert_uint_eq(l.suppressed, 999);
    ck_assert_uint_ge(log_missed_count() - missed, 999);
    log_limit_flush(&l, LOG_WARN, "test");
    ck_assert_uint_eq(l.suppressed, 0);
    /* The next interval lets a line through, with the count of what came before. */
    l.next_ns = 0;
    l.suppressed = 5;
    log_limited(&l, LOG_WARN, "again");
    ck_assert_uint_eq(l.suppressed, 0);
}
END_TEST

Suite *virtio_lifecycle_suite(void)
{
    Suite *s = suite_create("virtio-lifecycle");
    TCase *t = tcase_create("rng");
    tcase_add_checked_fixture(t, rng_setup, rng_teardown);
    tcase_add_test(t, cleared_driver_ok_needs_reset);
    tcase_add_test(t, every_cleared_bit_is_refused);
    tcase_add_test(t, queue_registers_read_only_while_live);
    tcase_add_test(t, needs_reset_ignores_status_writes);
    tcase_add_test(t, driver_ok_without_features_ok_ignored);
    tcase_add_test(t, absent_queue_and_unknown_queue);
    tcase_add_test(t, many_cycles);
    suite_add_tcase(s, t);
    t = tcase_create("console");
    tcase_add_checked_fixture(t, con_setup, con_teardown);
    tcase_add_test(t, activation_fails_half_way);
    tcase_add_test(t, input_without_receive_queue);
    tcase_add_test(t, output_without_transmit_queue);
    suite_add_tcase(s, t);
    t = tcase_create("log");
    tcase_add_test(t, log_limit_counts_what_it_suppresses);
    suite_add_tcase(s, t);
    return s;
}
