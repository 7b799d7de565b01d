/*
 * virtio-rng: several reads of random bytes (not all equal, not repeated), and with rng_rate=
 * (bytes per second, the VMM's limit) a large read that the limit visibly slows down: after
 * the bucket's first burst, the rest arrives at about that rate (timed with the TSC).
 */
#include "guest.h"
#include "io.h"
#include "virtio.h"

#define WAIT_US     5000000
#define SMALL_READS 4
#define SMALL_SIZE  64
#define LARGE_BUF   4096
#define LARGE_DEPTH 8

static struct virtio_device *rng;
static bool up;

static enum test_result find_rng(void)
{
    rng = virtio_find(VIRTIO_ID_RNG, 0);
    return rng ? TEST_PASS : TEST_FAIL;
}

static enum test_result bring_up(void)
{
    if (!rng)
        return skip("no rng");
    uint64_t wanted = VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
    if (!virtio_begin(rng, wanted, true) || !virtio_queue_setup(rng, 0, 0, true))
        return TEST_FAIL;
    virtio_driver_ok(rng);
    diag("features 0x%lx", rng->features);
    up = !(virtio_get_status(rng) & VIRTIO_STATUS_NEEDS_RESET);
    return up ? TEST_PASS : TEST_FAIL;
}

static enum test_result small_reads(void)
{
    if (!up)
        return skip("rng not up");
    static uint8_t buf[SMALL_READS][SMALL_SIZE];
    bool ok = true;
    for (unsigned r = 0; r < SMALL_READS; r++) {
        /* Two buffers per request: the device must fill across them. */
        struct vbuf b[2] = {{(uint64_t)buf[r], SMALL_SIZE / 2, true},
                            {(uint64_t)buf[r] + SMALL_SIZE / 2, SMALL_SIZE / 2, true}};
        memset(buf[r], 0, SMALL_SIZE);
        int64_t len = virtq_transfer(&rng->queues[0], b, 2, WAIT_US);
        unsigned distinct_from_first = 0;
        for (int64_t i = 1; i < len; i++)
            distinct_from_first += buf[r][i] != buf[r][0];
        diag("read %u: %ld bytes: %02x %02x %02x %02x ...", r, len, buf[r][0], buf[r][1], buf[r][2],
             buf[r][3]);
        if (len <= 1 || !distinct_from_first)
            ok = false;
        if (r > 0 && len == SMALL_SIZE && !memcmp(buf[r], buf[r - 1], SMALL_SIZE)) {
            diag("read %u repeats read %u", r, r - 1);
            ok = false;
        }
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

/* Reads `total` bytes with LARGE_DEPTH requests in flight; returns the microseconds taken. */
static uint64_t read_bytes(uint64_t total, bool *ok)
{
    struct virtq *q = &rng->queues[0];
    static uint8_t *bufs;
    if (!bufs)
        bufs = phys_alloc(LARGE_DEPTH * LARGE_BUF, 4096);
    uint64_t got = 0, start = time_us();
    unsigned inflight = 0, next = 0;
    *ok = true;
    while (got < total) {
        /* Buffers are only written to, never read: sharing them does no harm. */
        while (inflight < LARGE_DEPTH && got + (uint64_t)inflight * LARGE_BUF < total) {
            uint8_t *b = bufs + (next++ % LARGE_DEPTH) * LARGE_BUF;
            struct vbuf v = {(uint64_t)b, LARGE_BUF, true};
            if (virtq_add(q, &v, 1, b) < 0)
                break;
            inflight++;
        }
        virtq_kick(q);
        if (!virtq_has_used(q) && !virtq_wait(q, WAIT_US)) {
            diag("no completion within %u ms (%lu of %lu bytes)", WAIT_US / 1000, got, total);
            *ok = false;
            break;
        }
        uint32_t len;
        while (virtq_get(q, &len)) {
            inflight--;
            got += len;
        }
    }
    uint64_t elapsed = time_us() - start;
    /* Let what is still in flight land before anyone reuses the queue. */
    while (inflight && virtq_wait(q, WAIT_US)) {
        while (virtq_get(q, NULL))
            inflight--;
    }
    return elapsed;
}

static enum test_result rate_limit(void)
{
    if (!up)
        return skip("rng not up");
    uint64_t rate;
    if (!cmdline_get_u64("rng_rate", &rate) || rate == 0)
        return skip("no rng_rate= on the command line");
    bool ok1, ok2;
    /* A limiter may start with a second's worth saved up: drain that, then time half as
     * much, which should take about half a second. */
    uint64_t burst_us = read_bytes(rate, &ok1);
    uint64_t limited_us = read_bytes(rate / 2, &ok2);
    uint64_t expected_us = 500000;
    diag("%lu bytes in %lu us, then %lu bytes in %lu us (%lu bytes/s; limit %lu bytes/s)", rate,
         burst_us, rate / 2, limited_us, limited_us ? rate / 2 * 1000000 / limited_us : 0, rate);
    /* At most a second's worth is saved up at the start, so both reads together take at least
     * half a second: 70% of that is the limit at work. Timed from the start, a vCPU that was
     * off the CPU between the reads (the limiter refilling meanwhile) cannot hide it. 3x the
     * ideal for the second read leaves room for slow hosts. */
    return ok1 && ok2 && burst_us + limited_us >= expected_us * 7 / 10 &&
                   limited_us <= 3 * expected_us
               ? TEST_PASS
               : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-rng found", find_rng},
    {"features negotiated, queue up", bring_up},
    {"reads return random bytes, different each time", small_reads},
    {"the rate limit slows a large read to about rng_rate", rate_limit},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
