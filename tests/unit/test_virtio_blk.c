/* virtio-blk end to end without KVM: a fake driver in fake guest memory,
 * the real device model, its iothread and both block backends. */
#include "suites.h"
#include "util/error.h"
#include "util/clock.h"
#include "virtio/blk.h"
#include "poll_race.h"
#include "virtq_fake.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
#include <libgen.h>
#include <limits.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DISK_SIZE (1u << 20)
#define HDR       (FAKE_DATA)
#define BUF       (FAKE_DATA + 0x1000)
#define STATUS    (FAKE_DATA + 0x800)

struct segment {
    uint64_t sector;
    uint32_t num, flags;
};

static struct fake_queue f;
static struct virtio_blk blk;
static char path[600];
static int queue_irqs, config_irqs;
static bool sync_backend;
static struct rate_limit_config test_limit;
static bool test_unsafe;
static unsigned test_poll_us;
static bool test_poll_adaptive;
static bool test_direct;
static const char *test_dir = "/tmp"; /* where setup makes the image */
static uint64_t test_mem = FAKE_MEM;  /* guest RAM */
static uint16_t test_queue_size = 16;
static uint64_t test_image_size = DISK_SIZE; /* beyond DISK_SIZE, a hole */

static void fake_notify_queue(struct virtio_dev *d, unsigned q)
{
    (void)d;
    (void)q;
    __atomic_add_fetch(&queue_irqs, 1, __ATOMIC_SEQ_CST);
}

static void fake_notify_config(struct virtio_dev *d)
{
    (void)d;
    __atomic_add_fetch(&config_irqs, 1, __ATOMIC_SEQ_CST);
}

static const struct virtio_transport_ops fake_transport = {fake_notify_queue, fake_notify_config,
                                                           NULL};

static void driver_start(struct virtio_dev *d)
{
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    /* A split-ring driver: everything offered but packed rings. */
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    d->queues[0].cfg = f.cfg;
    d->queues[0].enabled = true;
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
}

static void setup_opts(bool readonly)
{
    fake_queue_init(&f, test_queue_size);
    if (test_mem != FAKE_MEM) {
        guest_memory_free(&f.mem);
        ck_assert_int_eq(
            guest_memory_map(&f.mem, test_mem, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END), 0);
    }
    snprintf(path, sizeof(path), "%s/ember-blk-test-XXXXXX", test_dir);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    uint8_t *data = malloc(DISK_SIZE);
    for (unsigned i = 0; i < DISK_SIZE; i++)
        data[i] = (uint8_t)(i / 512 + i);
    ck_assert_int_eq(write(fd, data, DISK_SIZE), DISK_SIZE);
    free(data);
    ck_assert_int_eq(ftruncate(fd, (off_t)test_image_size), 0);
    close(fd);
    struct blk_options o = {.path = path,
                            .id = "serial-42",
                            .readonly = readonly,
                            .unsafe = test_unsafe,
                            .direct = test_direct,
                            .queues = 1,
                            .poll_us = test_poll_us,
                            .poll_adaptive = test_poll_adaptive,
                            .engine = sync_backend ? BLK_ENGINE_SYNC : BLK_ENGINE_URING,
                            .rate_limit = test_limit};
    ck_assert_msg(virtio_blk_init(&blk, "blk0", &o, &f.mem) == 0, "%s", error_get());
    blk.dev.transport = &fake_transport;
    queue_irqs = config_irqs = 0;
    driver_start(&blk.dev);
    ck_assert(blk.dev.active);
}

static void setup(void)
{
    setup_opts(false);
}

static void setup_ro(void)
{
    setup_opts(true);
}

static void teardown(void)
{
    virtio_blk_destroy(&blk);
    unlink(path);
    fake_queue_free(&f);
}

/* Submits header + data + status as descriptors 0, 1, 2 and waits for the
 * device to return it. Returns the status byte (or -1 on timeout). */
static int request(uint32_t type, uint64_t sector, uint32_t data_len, bool data_writable,
                   uint32_t *used_len)
{
    uint32_t hdr[4] = {type, 0, (uint32_t)sector, (uint32_t)(sector >> 32)};
    memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
    *fake_ptr(&f, STATUS, 1) = 0xee;
    uint16_t after_hdr = data_len ? 1 : 2;
    fake_set_desc(&f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, after_hdr);
    if (data_len)
        fake_set_desc(&f, 1, BUF, data_len,
                      VIRTQ_DESC_F_NEXT | (data_writable ? VIRTQ_DESC_F_WRITE : 0), 2);
    fake_set_desc(&f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    uint16_t before = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
    fake_publish(&f, 0);
    virtio_dev_kick(&blk.dev, 0);
    for (int i = 0; i < 4000; i++) {
        uint16_t now = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
        if (now != before) {
            if (used_len)
                *used_len = fake_used(&f)->ring[before % f.size].len;
            return *fake_ptr(&f, STATUS, 1);
        }
        usleep(500);
    }
    return -1;
}

static void file_read(uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ck_assert_int_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len);
    close(fd);
}

START_TEST(read_write_flush)
{
    uint32_t used;
    ck_assert_int_eq(request(0 /* IN */, 8, 4096, true, &used), 0);
    ck_assert_uint_eq(used, 4097); /* data and status */
    uint8_t expect[4096];
    file_read(8 * 512, expect, sizeof(expect));
    ck_assert_mem_eq(fake_ptr(&f, BUF, 4096), expect, 4096);
    memset(fake_ptr(&f, BUF, 1024), 0x5c, 1024);
    ck_assert_int_eq(request(1 /* OUT */, 100, 1024, false, &used), 0);
    ck_assert_uint_eq(used, 1);
    uint8_t got[1024];
    file_read(100 * 512, got, sizeof(got));
    for (int i = 0; i < 1024; i++)
        ck_assert_uint_eq(got[i], 0x5c);
    ck_assert_int_eq(request(4 /* FLUSH */, 0, 0, false, NULL), 0);
    ck_assert_uint_eq(blk.flushes, 1);
    ck_assert_int_gt(__atomic_load_n(&queue_irqs, __ATOMIC_SEQ_CST), 0);
}
END_TEST

START_TEST(get_id_and_errors)
{
    uint32_t used;
    ck_assert_int_eq(request(8 /* GET_ID */, 0, 20, true, &used), 0);
    ck_assert_uint_eq(used, 21);
    ck_assert_str_eq((char *)fake_ptr(&f, BUF, 20), "serial-42");
    /* Last sector is fine, one past it is not, nor one that straddles. */
    ck_assert_int_eq(request(0, DISK_SIZE / 512 - 1, 512, true, NULL), 0);
    ck_assert_int_eq(request(0, DISK_SIZE / 512, 512, true, NULL), 1);
    ck_assert_int_eq(request(0, DISK_SIZE / 512 - 1, 1024, true, NULL), 1);
    ck_assert_int_eq(request(0, UINT64_MAX - 1, 512, true, NULL), 1); /* overflow */
    ck_assert_int_eq(request(0, 0, 100, true, NULL), 1);              /* not whole sectors */
    ck_assert_int_eq(request(77, 0, 512, true, NULL), 2);             /* unknown type */
    ck_assert(blk.dev.active);                                        /* all reported, no reset */
    ck_assert_int_eq(__atomic_load_n(&config_irqs, __ATOMIC_SEQ_CST), 0);
}
END_TEST

START_TEST(discard_and_write_zeroes)
{
    struct segment seg = {4, 8, 0};
    memcpy(fake_ptr(&f, BUF, 16), &seg, 16);
    ck_assert_int_eq(request(13 /* WRITE_ZEROES */, 0, 16, false, NULL), 0);
    uint8_t got[8 * 512];
    file_read(4 * 512, got, sizeof(got));
    for (size_t i = 0; i < sizeof(got); i++)
        ck_assert_uint_eq(got[i], 0);
    seg = (struct segment){64, 8, 0};
    memcpy(fake_ptr(&f, BUF, 16), &seg, 16);
    ck_assert_int_eq(request(11 /* DISCARD */, 0, 16, false, NULL), 0);
    seg = (struct segment){DISK_SIZE / 512 - 2, 8, 0}; /* past the end */
    memcpy(fake_ptr(&f, BUF, 16), &seg, 16);
    ck_assert_int_eq(request(13, 0, 16, false, NULL), 1);
    seg = (struct segment){0, 8, 0x80}; /* reserved flag */
    memcpy(fake_ptr(&f, BUF, 16), &seg, 16);
    ck_assert_int_eq(request(13, 0, 16, false, NULL), 2);
}
END_TEST

START_TEST(readonly_drive_refuses_writes)
{
    ck_assert(virtio_dev_host_features(&blk.dev, 0) & (1u << 5)); /* VIRTIO_BLK_F_RO */
    uint8_t before[512], after[512];
    file_read(0, before, 512);
    memset(fake_ptr(&f, BUF, 512), 0x11, 512);
    ck_assert_int_eq(request(1, 0, 512, false, NULL), 1);
    file_read(0, after, 512);
    ck_assert_mem_eq(before, after, 512);
    uint64_t seg[2] = {0, 8};
    memcpy(fake_ptr(&f, BUF, 16), seg, 16);
    ck_assert_int_eq(request(13, 0, 16, false, NULL), 1);
    ck_assert_int_eq(request(0, 0, 512, true, NULL), 0); /* reads still work */
}
END_TEST

static bool wait_needs_reset(void)
{
    for (int i = 0; i < 4000; i++) {
        if (__atomic_load_n(&blk.dev.status, __ATOMIC_SEQ_CST) & VIRTIO_STATUS_NEEDS_RESET)
            return true;
        usleep(500);
    }
    return false;
}

START_TEST(malformed_request_needs_reset_then_recovers)
{
    /* A request with no writable status byte cannot be answered. */
    uint32_t hdr[4] = {0, 0, 0, 0};
    memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
    fake_set_desc(&f, 0, HDR, 16, 0, 0);
    fake_publish(&f, 0);
    virtio_dev_kick(&blk.dev, 0);
    ck_assert(wait_needs_reset());
    ck_assert_int_eq(__atomic_load_n(&config_irqs, __ATOMIC_SEQ_CST), 1);
    ck_assert(!blk.dev.active);
    /* Reset and start again: the device serves requests once more. */
    pthread_mutex_lock(&blk.dev.lock);
    virtio_dev_set_status(&blk.dev, 0);
    pthread_mutex_unlock(&blk.dev.lock);
    ck_assert_uint_eq(blk.dev.status, 0);
    memset(fake_used(&f), 0, 6 + 8 * 16);
    memset(fake_avail(&f), 0, 6 + 2 * 16);
    f.avail_idx = 0;
    driver_start(&blk.dev);
    ck_assert_int_eq(request(0, 0, 512, true, NULL), 0);
}
END_TEST

START_TEST(short_header_needs_reset)
{
    fake_set_desc(&f, 0, HDR, 8, VIRTQ_DESC_F_NEXT, 2);
    fake_set_desc(&f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    fake_publish(&f, 0);
    virtio_dev_kick(&blk.dev, 0);
    ck_assert(wait_needs_reset());
}
END_TEST

START_TEST(ring_violation_needs_reset)
{
    fake_publish(&f, 200); /* head beyond the queue */
    virtio_dev_kick(&blk.dev, 0);
    ck_assert(wait_needs_reset());
    ck_assert_int_eq(__atomic_load_n(&config_irqs, __ATOMIC_SEQ_CST), 1);
}
END_TEST

START_TEST(activation_refuses_rings_outside_ram)
{
    struct virtio_dev *d = &blk.dev;
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, 0);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 1, 1); /* VERSION_1 */
    virtio_dev_set_status(d, 0xb);
    d->queues[0].cfg = f.cfg;
    d->queues[0].cfg.used_gpa = FAKE_MEM - 8;
    d->queues[0].enabled = true;
    virtio_dev_set_status(d, 0xf);
    pthread_mutex_unlock(&d->lock);
    ck_assert(!d->active);
    ck_assert(d->status & VIRTIO_STATUS_NEEDS_RESET);
    ck_assert_int_eq(config_irqs, 1);
}
END_TEST

START_TEST(features_without_version_1_refused)
{
    struct virtio_dev *d = &blk.dev;
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, 0);
    virtio_dev_set_status(d, 3);
    virtio_dev_set_driver_features(d, 0, 1u << 9); /* FLUSH, no VERSION_1 */
    virtio_dev_set_status(d, 0xb);
    ck_assert_uint_eq(d->status & VIRTIO_STATUS_FEATURES_OK, 0);
    virtio_dev_set_driver_features(d, 1, 1u << 31); /* a bit never offered */
    virtio_dev_set_status(d, 0xb);
    ck_assert_uint_eq(d->status & VIRTIO_STATUS_FEATURES_OK, 0);
    pthread_mutex_unlock(&d->lock);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

START_TEST(ops_limit_paces_requests)
{
    /* 5 requests per 100 ms: 15 requests need at least 200 ms. */
    double start = now_s();
    for (int i = 0; i < 15; i++)
        ck_assert_int_eq(request(0, (uint64_t)i, 512, true, NULL), 0);
    double took = now_s() - start;
    ck_assert_msg(took >= 0.18, "15 requests took %.3f s", took);
    ck_assert_uint_ge(blk.throttle_events, 1);
    /* Lifted at run time (the API's PATCH /drives): no more pacing. */
    struct rate_limit_config none = {0};
    virtio_blk_change_limits(&blk, &none);
    start = now_s();
    for (int i = 0; i < 15; i++)
        ck_assert_int_eq(request(0, (uint64_t)i, 512, true, NULL), 0);
    took = now_s() - start;
    ck_assert_msg(took < 0.15, "15 unlimited requests took %.3f s", took);
}
END_TEST

static bool page_dirty(uint64_t gpa)
{
    uint64_t page = gpa / 4096; /* guest RAM starts at 0 */
    return (__atomic_load_n(&f.mem.dirty[page / 64], __ATOMIC_RELAXED) >> (page % 64)) & 1;
}

/* A migration pass may collect the dirty log between a request's taking (when its writable
 * buffers are first logged) and its completion: the status byte and the data read are logged
 * again when written, or the pass would have sent those pages before the device wrote them. */
START_TEST(completion_logs_its_writes_again)
{
    ck_assert_int_eq(guest_memory_track_dirty(&f.mem), 0);
    /* One request per 300 ms: the first passes, the next is held that long. */
    struct rate_limit_config one = {.ops = {.size = 1, .refill_ms = 300}};
    virtio_blk_change_limits(&blk, &one);
    ck_assert_int_eq(request(0, 1, 512, true, NULL), 0);
    uint32_t hdr[4] = {0 /* IN */, 0, 7, 0};
    memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
    *fake_ptr(&f, STATUS, 1) = 0xee;
    fake_set_desc(&f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    fake_set_desc(&f, 1, BUF, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    fake_set_desc(&f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    uint16_t before = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
    fake_publish(&f, 0);
    virtio_dev_kick(&blk.dev, 0);
    /* Taken, and held for a token. */
    for (int i = 0; i < 2000 && !__atomic_load_n(&blk.throttled, __ATOMIC_ACQUIRE); i++)
        usleep(100);
    ck_assert(__atomic_load_n(&blk.throttled, __ATOMIC_ACQUIRE));
    ck_assert(page_dirty(BUF) && page_dirty(STATUS));
    /* The collection. */
    for (size_t w = 0; w < guest_memory_bitmap_words(&f.mem); w++)
        __atomic_store_n(&f.mem.dirty[w], 0, __ATOMIC_RELAXED);
    for (int i = 0; i < 4000 && __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) == before;
         i++)
        usleep(500);
    ck_assert_uint_ne(__atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE), before);
    ck_assert_uint_eq(*fake_ptr(&f, STATUS, 1), 0);
    ck_assert_msg(page_dirty(STATUS), "the status byte's page is not logged after completion");
    ck_assert_msg(page_dirty(BUF), "the data's page is not logged after the read");
}
END_TEST

START_TEST(unsafe_cache_offers_no_flush)
{
    ck_assert_uint_eq(virtio_dev_host_features(&blk.dev, 0) & (1u << 9), 0);
    ck_assert_int_eq(request(4 /* FLUSH */, 0, 0, false, NULL), 0);
    ck_assert_uint_eq(blk.flushes, 0);
}
END_TEST

static void setup_limited(void)
{
    sync_backend = false;
    test_limit = (struct rate_limit_config){.ops = {.size = 5, .refill_ms = 100}};
    setup();
    test_limit = (struct rate_limit_config){0};
}

static void shorten_poll_window(void *arg)
{
    (void)arg;
    blk.poll.window_ns = blk.poll.bound_ns = 1000000;
}

START_TEST(polling_serves_without_kicks)
{
    /* The poll window is long (1 s): polling cannot end, however slow this machine, before
     * the request below shows that it needs no kick. */
    ck_assert_int_eq(request(0, 0, 512, true, NULL), 0); /* the first kick starts polling */
    ck_assert(__atomic_load_n(&blk.poll.polling, __ATOMIC_ACQUIRE));
    uint32_t hdr[4] = {0, 0, 3, 0};
    memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
    *fake_ptr(&f, STATUS, 1) = 0xee;
    uint16_t before = fake_used(&f)->idx;
    fake_publish(&f, 0);
    for (int i = 0; i < 50000 && __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) == before;
         i++)
        usleep(100);
    ck_assert_uint_ne(fake_used(&f)->idx, before);
    ck_assert_uint_eq(*fake_ptr(&f, STATUS, 1), 0);
    ck_assert_uint_gt(blk.poll_hits, 0);
    /* A short window now: once quiet for longer, polling stops and kicks are asked for. */
    iothread_call(&blk.dev.io, shorten_poll_window, NULL);
    for (int i = 0; i < 50000 && __atomic_load_n(&blk.poll.polling, __ATOMIC_ACQUIRE); i++)
        usleep(100);
    ck_assert(!__atomic_load_n(&blk.poll.polling, __ATOMIC_ACQUIRE));
    /* EVENT_IDX was negotiated: the device asks for a kick at its next index. */
    uint16_t avail_event;
    memcpy(&avail_event, &fake_used(&f)->ring[16], 2);
    ck_assert_uint_eq(avail_event, 2);
    ck_assert_int_eq(request(0, 1, 512, true, NULL), 0);
}
END_TEST

static void setup_polling(void)
{
    sync_backend = false;
    test_poll_us = POLL_WINDOW_MAX_US;
    setup();
    test_poll_us = 0;
}

/* A driver that kicks only when the device asks (EVENT_IDX: the new index passed avail_event),
 * submitting at gaps around the poll window's length, so that requests land while the device
 * polls, just as it stops and asks for kicks again, and while it sleeps. A request that raced
 * with the switch and was neither seen by the last look nor kicked for would never complete. */
static void race_polling_switch(unsigned requests)
{
    unsigned lost = 0;
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (unsigned i = 0; i < requests && !lost; i++) {
        uint32_t hdr[4] = {0 /* IN */, 0, i % (DISK_SIZE / 512), 0};
        memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
        *fake_ptr(&f, STATUS, 1) = 0xee;
        fake_set_desc(&f, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
        fake_set_desc(&f, 1, BUF, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
        fake_set_desc(&f, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
        uint16_t before = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
        uint16_t old_idx = f.avail_idx;
        fake_publish(&f, 0);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t event;
        memcpy(&event, &fake_used(&f)->ring[f.size], sizeof(event));
        if (race_driver_needs_kick(event, f.avail_idx, old_idx))
            virtio_dev_kick(&blk.dev, 0);
        uint64_t deadline = monotonic_ns() + 2000000000ull;
        while (__atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) == before) {
            if (monotonic_ns() > deadline) {
                lost++;
                break;
            }
        }
        ck_assert_msg(!lost, "request %u never completed (device polling: %d, kick asked at %u)", i,
                      __atomic_load_n(&blk.poll.polling, __ATOMIC_ACQUIRE), event);
        ck_assert_uint_eq(*fake_ptr(&f, STATUS, 1), 0);
        /* Every other gap anywhere in 0 to 3 windows, the others within a tenth of the
         * window's end, where the switch is. */
        uint64_t w = blk.poll.bound_ns, r = race_next(&seed);
        race_spin_ns(i % 2 ? r % (3 * w) : w - w / 10 + r % (w / 5));
    }
}

START_TEST(polling_switch_loses_no_request)
{
    race_polling_switch(6000);
    printf("blk polling race: %llu request(s) found right after kicks were asked for again, "
           "%llu polled, %llu kicked\n",
           (unsigned long long)blk.poll_races, (unsigned long long)blk.poll_hits,
           (unsigned long long)blk.dev.kicks);
    /* Both paths ran: some requests came while it polled, some woke it by a kick. */
    ck_assert_uint_gt(blk.poll_hits, 0);
    ck_assert_uint_gt(blk.dev.kicks, 0);
}
END_TEST

START_TEST(adaptive_window_adapts)
{
    /* Requests every ~3 windows' minimum: the window grows to catch them, within its bound. */
    race_polling_switch(500);
    ck_assert_uint_gt(blk.poll.grows, 0);
    ck_assert_uint_le(blk.poll.window_ns, blk.poll.bound_ns);
    ck_assert_uint_ge(blk.poll.window_ns, POLL_WINDOW_MIN_NS);
}
END_TEST

static void setup_short_poll(void)
{
    sync_backend = false;
    test_poll_us = 200;
    setup();
    test_poll_us = 0;
}

static void setup_adaptive_poll(void)
{
    sync_backend = false;
    test_poll_us = 200;
    test_poll_adaptive = true;
    setup();
    test_poll_us = 0;
    test_poll_adaptive = false;
}

/* ---- cache=none: O_DIRECT, the bounce pool and the request limits ------------------------ */

/* The directory of the unit-test binary (the build directory): a file system on disk, where
 * O_DIRECT works unless it is tmpfs too. */
static const char *build_dir(void)
{
    static char dir[512];
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    ck_assert_int_gt(n, 0);
    exe[n] = 0;
    snprintf(dir, sizeof(dir), "%s", dirname(exe));
    return dir;
}

static bool direct_unavailable;

/* Whether dir's file system takes O_DIRECT; if not, the reason is printed. */
static bool direct_works(const char *dir)
{
    char probe[600];
    snprintf(probe, sizeof(probe), "%s/ember-odirect-XXXXXX", dir);
    int fd = mkstemp(probe);
    ck_assert_int_ge(fd, 0);
    close(fd);
    fd = open(probe, O_RDWR | O_DIRECT);
    int err = errno;
    unlink(probe);
    if (fd >= 0) {
        close(fd);
        return true;
    }
    fprintf(stderr, "# cache=none tests skipped: %s refuses O_DIRECT (%s)\n", dir, strerror(err));
    return false;
}

static bool skip_direct(void)
{
    if (direct_unavailable)
        fprintf(stderr, "# %s: skipped, no O_DIRECT in the build directory\n", tcase_name());
    return direct_unavailable;
}

START_TEST(direct_io_announces_the_storage_block)
{
    if (skip_direct())
        return;
    uint32_t blk_size;
    virtio_dev_config_access(&blk.dev, 20, &blk_size, 4, false);
    ck_assert_uint_ge(blk_size, 512);
    ck_assert_uint_eq(blk_size, blk.backend.align);
    /* Whole blocks at block offsets go straight through O_DIRECT. */
    ck_assert_int_eq(request(0, blk_size / 512, blk_size, true, NULL), 0);
    uint8_t expect[4096];
    file_read(blk_size, expect, blk_size > sizeof(expect) ? sizeof(expect) : blk_size);
    ck_assert_mem_eq(fake_ptr(&f, BUF, 16), expect, 16);
    ck_assert_uint_eq(blk.backend.bounced_ios, 0); /* zero-copy */
}
END_TEST

static void setup_direct(void)
{
    sync_backend = false;
    test_dir = build_dir();
    direct_unavailable = !direct_works(test_dir);
    if (!direct_unavailable) {
        test_direct = true;
        setup();
    }
    test_direct = false;
    test_dir = "/tmp";
}

static void teardown_direct(void)
{
    if (!direct_unavailable)
        teardown();
}

/* The bounce fixtures: a sparse image of 1 GiB + 1 MiB (the setup's 1 MiB of data, then a
 * hole with marks every 4 MiB from BIG_READ_AT), 48 MiB of guest RAM, a queue of 256. */
#define BIG_MEM     (48ULL << 20)
#define BIG_IMAGE   ((1ULL << 30) + (1ULL << 20))
#define BIG_READ_AT (1ULL << 20)
#define PERIOD      (4ULL << 20) /* size_max */
#define SEG_MAX     254u
#define MISALIGN    64           /* bytes: below any O_DIRECT alignment */
#define BIG_BUF     (8ULL << 20) /* guest buffers for the large requests */
#define MARK_LEN    4096
#define WAIT_MS     120000

static const uint64_t marks[] = {0, 64 * 1024 - 512, 2 * 1024 * 1024 + 123 * 512,
                                 PERIOD - MARK_LEN};

/* What the image holds at offset o in the marked region: a function of o's place in its
 * period only, so that every 4 MiB piece of it reads the same. */
static uint8_t mark_byte(uint64_t in_period)
{
    return (uint8_t)(in_period * 7 / 3 + 1);
}

static void write_marks(void)
{
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    uint8_t buf[MARK_LEN];
    for (unsigned m = 0; m < sizeof(marks) / sizeof(marks[0]); m++) {
        for (unsigned i = 0; i < MARK_LEN; i++)
            buf[i] = mark_byte(marks[m] + i);
        for (uint64_t k = 0; k < SEG_MAX; k++)
            ck_assert_int_eq(
                pwrite(fd, buf, MARK_LEN, (off_t)(BIG_READ_AT + k * PERIOD + marks[m])), MARK_LEN);
    }
    close(fd);
}

/* What a read of one period from the marked region gives. */
static bool period_is_right(const uint8_t *got)
{
    for (uint64_t i = 0; i < PERIOD; i++) {
        uint8_t want = 0;
        for (unsigned m = 0; m < sizeof(marks) / sizeof(marks[0]); m++) {
            if (i >= marks[m] && i < marks[m] + MARK_LEN)
                want = mark_byte(i);
        }
        if (got[i] != want) {
            fprintf(stderr, "# byte %llu of the period: 0x%02x, not 0x%02x\n",
                    (unsigned long long)i, got[i], want);
            return false;
        }
    }
    return true;
}

static void setup_bounce(bool sync)
{
    sync_backend = sync;
    test_dir = build_dir();
    direct_unavailable = !direct_works(test_dir);
    if (!direct_unavailable) {
        test_direct = true;
        test_mem = BIG_MEM;
        test_queue_size = 256;
        test_image_size = BIG_IMAGE;
        setup();
        write_marks();
    }
    test_direct = false;
    test_mem = FAKE_MEM;
    test_queue_size = 16;
    test_image_size = DISK_SIZE;
    test_dir = "/tmp";
}

static void setup_bounce_uring(void)
{
    setup_bounce(false);
}

static void setup_bounce_sync(void)
{
    setup_bounce(true);
}

struct seg {
    uint64_t gpa;
    uint32_t len;
};

/* Publishes a request through indirect table `slot` (head descriptor slot, header and status
 * of its own): the header, segs[0..n) as data, then the status byte, in its own descriptor or,
 * with status_in_last, as the last segment's byte after its data. Returns the status gpa. */
static uint64_t publish_indirect(unsigned slot, uint32_t type, uint64_t sector,
                                 const struct seg *segs, unsigned n, bool status_in_last)
{
    bool writable = type == 0;
    uint64_t table = FAKE_INDIRECT + slot * 0x1000ULL, hdr = HDR + slot * 32ULL;
    uint64_t status = STATUS + slot;
    struct virtq_desc *t = (struct virtq_desc *)fake_ptr(&f, table, 16 * 256);
    uint32_t h[4] = {type, 0, (uint32_t)sector, (uint32_t)(sector >> 32)};
    memcpy(fake_ptr(&f, hdr, 16), h, 16);
    unsigned k = 0;
    t[k++] = (struct virtq_desc){hdr, 16, VIRTQ_DESC_F_NEXT, 1};
    for (unsigned i = 0; i < n; i++, k++) {
        bool shared = status_in_last && i == n - 1;
        uint32_t len = segs[i].len;
        if (shared)
            status = segs[i].gpa + len++;
        uint16_t flags =
            (uint16_t)((writable ? VIRTQ_DESC_F_WRITE : 0) | (shared ? 0 : VIRTQ_DESC_F_NEXT));
        t[k] = (struct virtq_desc){segs[i].gpa, len, flags, (uint16_t)(k + 1)};
    }
    if (!status_in_last)
        t[k++] = (struct virtq_desc){status, 1, VIRTQ_DESC_F_WRITE, 0};
    *fake_ptr(&f, status, 1) = 0xee;
    fake_set_desc(&f, (uint16_t)slot, table, 16 * k, VIRTQ_DESC_F_INDIRECT, 0);
    fake_publish(&f, (uint16_t)slot);
    return status;
}

/* Waits until n more used entries than `before` are there; false on a hang. */
static bool wait_used(uint16_t before, unsigned n)
{
    for (int i = 0; i < WAIT_MS; i++) {
        if ((uint16_t)(__atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) - before) >= n)
            return true;
        usleep(1000);
    }
    return false;
}

/* One request through indirect table 0; its status (-1 on a hang) and used length. */
static int indirect_request(uint32_t type, uint64_t sector, const struct seg *segs, unsigned n,
                            bool status_in_last, uint32_t *used_len)
{
    uint16_t before = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
    uint64_t status = publish_indirect(0, type, sector, segs, n, status_in_last);
    virtio_dev_kick(&blk.dev, 0);
    if (!wait_used(before, 1))
        return -1;
    if (used_len)
        *used_len = fake_used(&f)->ring[before % f.size].len;
    return *fake_ptr(&f, status, 1);
}

/* Peak resident memory of this process (kB), which a bounce buffer of a request's whole
 * length would raise by that length. */
static uint64_t peak_rss_kb(void)
{
    FILE *st = fopen("/proc/self/status", "r");
    ck_assert_ptr_nonnull(st);
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), st))
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
            break;
    fclose(st);
    ck_assert_uint_gt(kb, 0);
    return kb;
}

static void check_pool_bounded(void)
{
    ck_assert_uint_eq(blk.backend.bounce_bytes, (uint64_t)BLK_BOUNCE_CHUNKS * BLK_BOUNCE_CHUNK);
    ck_assert_uint_gt(blk.backend.bounce_peak, 0);
    ck_assert_uint_le(blk.backend.bounce_peak, blk.backend.bounce_bytes);
    ck_assert_uint_eq(blk.backend.bounce_in_use, 0);
    if (sync_backend) /* one piece at a time, on the I/O thread */
        ck_assert_uint_eq(blk.backend.bounce_peak, BLK_BOUNCE_CHUNK);
    else /* a long request keeps every chunk busy, and no more */
        ck_assert_uint_eq(blk.backend.bounce_peak, blk.backend.bounce_bytes);
}

/* The review's case, scaled to what the limits allow: a read of seg_max x size_max (1016 MiB)
 * whose 254 segments all point at one 4 MiB guest buffer, misaligned, from a sparse image.
 * The data is right, and host memory stays within the pool. */
START_TEST(gigabyte_read_through_one_buffer_is_bounded)
{
    if (skip_direct())
        return;
    uint64_t buf = BIG_BUF + MISALIGN;
    memset(fake_ptr(&f, buf, PERIOD), 0xaa, PERIOD); /* resident before the measure */
    struct seg segs[SEG_MAX];
    for (unsigned i = 0; i < SEG_MAX; i++)
        segs[i] = (struct seg){buf, (uint32_t)PERIOD};
    uint64_t rss_before = peak_rss_kb();
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, BIG_READ_AT / 512, segs, SEG_MAX, false, &used), 0);
    uint64_t rss_grew_kb = peak_rss_kb() - rss_before;
    ck_assert_uint_eq(used, SEG_MAX * PERIOD + 1); /* 1016 MiB and the status byte */
    ck_assert(period_is_right(fake_ptr(&f, buf, PERIOD)));
    ck_assert_uint_eq(blk.backend.bounced_ios, 1);
    check_pool_bounded();
    /* A whole-request bounce buffer would have grown it by 1016 MiB. */
    ck_assert_msg(rss_grew_kb < 64 * 1024, "peak RSS grew by %llu kB",
                  (unsigned long long)rss_grew_kb);
    ck_assert_uint_eq(blk.read_bytes, SEG_MAX * PERIOD);
}
END_TEST

/* The review's request as it was: 32 segments of 32 MiB on one buffer (1 GiB). */
START_TEST(review_request_is_refused)
{
    if (skip_direct())
        return;
    uint64_t buf = BIG_BUF + MISALIGN;
    memset(fake_ptr(&f, buf, 32ULL << 20), 0x5a, 32ULL << 20);
    struct seg segs[32];
    for (unsigned i = 0; i < 32; i++)
        segs[i] = (struct seg){buf, 32u << 20};
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, BIG_READ_AT / 512, segs, 32, false, &used), 1);
    ck_assert_uint_eq(used, 1);
    ck_assert_uint_eq(blk.refused[BLK_REFUSE_TOO_LONG], 1);
    ck_assert_uint_eq(blk.backend.bounced_ios, 0);
    for (uint64_t i = 0; i < (32ULL << 20); i += 4093)
        ck_assert_uint_eq(*fake_ptr(&f, buf + i, 1), 0x5a); /* nothing was read into it */
    ck_assert(blk.dev.active);
    ck_assert_int_eq(request(0, 0, 4096, true, NULL), 0);
}
END_TEST

/* More than 4 GiB in one request (160 segments of 32 MiB: 5 GiB): refused, both ways, and the
 * used length is the status byte alone (not the length modulo 2^32). */
START_TEST(request_over_4gib_is_refused)
{
    if (skip_direct())
        return;
    uint64_t buf = BIG_BUF;
    struct seg segs[160];
    for (unsigned i = 0; i < 160; i++)
        segs[i] = (struct seg){buf, 32u << 20};
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, 0, segs, 160, false, &used), 1);
    ck_assert_uint_eq(used, 1);
    uint8_t before[4096], after[4096];
    file_read(0, before, sizeof(before));
    memset(fake_ptr(&f, buf, 4096), 0x77, 4096);
    ck_assert_int_eq(indirect_request(1, 0, segs, 160, false, &used), 1);
    ck_assert_uint_eq(used, 1);
    file_read(0, after, sizeof(after));
    ck_assert_mem_eq(before, after, sizeof(after));
    ck_assert_uint_eq(blk.refused[BLK_REFUSE_TOO_LONG], 2);
    ck_assert_uint_eq(blk.errors, 2);
    ck_assert(blk.dev.active);
    ck_assert_int_eq(request(0, 0, 4096, true, NULL), 0);
}
END_TEST

START_TEST(limits_are_offered)
{
    if (skip_direct())
        return;
    uint32_t feat = virtio_dev_host_features(&blk.dev, 0);
    ck_assert(feat & (1u << 1)); /* SIZE_MAX */
    ck_assert(feat & (1u << 2)); /* SEG_MAX */
    uint32_t size_max, seg_max;
    virtio_dev_config_access(&blk.dev, 8, &size_max, 4, false);
    virtio_dev_config_access(&blk.dev, 12, &seg_max, 4, false);
    ck_assert_uint_eq(size_max, PERIOD);
    ck_assert_uint_eq(seg_max, SEG_MAX);
}
END_TEST

/* A segment one sector longer than size_max: IOERR; exactly size_max: served. */
START_TEST(segment_over_size_max_is_refused)
{
    if (skip_direct())
        return;
    struct seg seg = {BIG_BUF + MISALIGN, (uint32_t)PERIOD + 512};
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, BIG_READ_AT / 512, &seg, 1, false, &used), 1);
    ck_assert_uint_eq(used, 1);
    ck_assert_uint_eq(blk.refused[BLK_REFUSE_SEGMENT_SIZE], 1);
    ck_assert_int_eq(indirect_request(1, BIG_READ_AT / 512, &seg, 1, false, &used), 1);
    ck_assert_uint_eq(blk.refused[BLK_REFUSE_SEGMENT_SIZE], 2);
    seg.len = (uint32_t)PERIOD;
    ck_assert_int_eq(indirect_request(0, BIG_READ_AT / 512, &seg, 1, false, &used), 0);
    ck_assert_uint_eq(used, PERIOD + 1);
    ck_assert(period_is_right(fake_ptr(&f, seg.gpa, PERIOD)));
    ck_assert(blk.dev.active);
}
END_TEST

/* 255 data segments (the status byte shares the last one's descriptor, so that the chain
 * still fits the queue): IOERR; 254: served. */
START_TEST(segments_over_seg_max_are_refused)
{
    if (skip_direct())
        return;
    struct seg segs[SEG_MAX + 1];
    for (unsigned i = 0; i < SEG_MAX + 1; i++)
        segs[i] = (struct seg){BIG_BUF + MISALIGN + i * 1024ULL, 512};
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, 0, segs, SEG_MAX + 1, true, &used), 1);
    ck_assert_uint_eq(used, 1);
    ck_assert_uint_eq(blk.refused[BLK_REFUSE_SEGMENTS], 1);
    ck_assert_int_eq(indirect_request(0, 0, segs, SEG_MAX, true, &used), 0);
    ck_assert_uint_eq(used, SEG_MAX * 512 + 1);
    uint8_t expect[512];
    file_read((SEG_MAX - 1) * 512, expect, 512);
    ck_assert_mem_eq(fake_ptr(&f, segs[SEG_MAX - 1].gpa, 512), expect, 512);
    ck_assert(blk.dev.active);
}
END_TEST

/* Segments of awkward lengths at awkward addresses, some shorter than a sector, one across
 * many chunks: a bounced transfer of `total` bytes puts every byte in its place. */
static unsigned awkward_segments(struct seg *segs, uint64_t total)
{
    static const uint32_t lens[] = {100, 65948, 196615, 1, 511, 614413};
    unsigned n = 0;
    uint64_t gpa = BIG_BUF + MISALIGN, sum = 0;
    for (; n < sizeof(lens) / sizeof(lens[0]); n++) {
        segs[n] = (struct seg){gpa, lens[n]};
        sum += lens[n];
        gpa += lens[n] + 4096 + 37;
    }
    segs[n++] = (struct seg){gpa, (uint32_t)(total - sum)};
    return n;
}

START_TEST(bounced_read_puts_every_byte_in_place)
{
    if (skip_direct())
        return;
    struct seg segs[8];
    unsigned n = awkward_segments(segs, DISK_SIZE);
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(0, 0, segs, n, false, &used), 0);
    ck_assert_uint_eq(used, DISK_SIZE + 1);
    uint8_t *want = malloc(DISK_SIZE);
    file_read(0, want, DISK_SIZE);
    uint64_t at = 0;
    for (unsigned i = 0; i < n; i++) {
        ck_assert_mem_eq(fake_ptr(&f, segs[i].gpa, segs[i].len), want + at, segs[i].len);
        at += segs[i].len;
    }
    free(want);
    ck_assert_uint_eq(blk.backend.bounced_ios, 1);
    ck_assert_uint_eq(blk.backend.bounce_in_use, 0);
}
END_TEST

/* 3 MiB written through the 2 MiB pool into the hole: the image holds the guest's bytes. */
START_TEST(bounced_write_writes_the_right_bytes)
{
    if (skip_direct())
        return;
    const uint64_t total = 3ULL << 20, at = BIG_IMAGE - (4ULL << 20);
    struct seg segs[8];
    unsigned n = awkward_segments(segs, total);
    uint8_t *want = malloc(total);
    uint64_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *p = fake_ptr(&f, segs[i].gpa, segs[i].len);
        for (uint32_t j = 0; j < segs[i].len; j++, k++)
            p[j] = want[k] = (uint8_t)(k * 131 + (k >> 9) + 5);
    }
    uint32_t used = 0;
    ck_assert_int_eq(indirect_request(1, at / 512, segs, n, false, &used), 0);
    ck_assert_uint_eq(used, 1);
    uint8_t *got = malloc(total);
    file_read(at, got, total);
    ck_assert_mem_eq(got, want, total);
    free(got);
    free(want);
    ck_assert_uint_eq(blk.write_bytes, total);
    check_pool_bounded();
}
END_TEST

/* Three long reads at once: on io_uring the first takes every chunk and the others wait in
 * line for them; all three are right and the pool is never exceeded. */
START_TEST(requests_wait_for_the_pool)
{
    if (skip_direct())
        return;
    uint64_t buf = BIG_BUF + MISALIGN;
    struct seg segs[4];
    for (unsigned i = 0; i < 4; i++)
        segs[i] = (struct seg){buf, (uint32_t)PERIOD};
    uint16_t before = __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE);
    uint64_t status[3];
    for (unsigned r = 0; r < 3; r++)
        status[r] = publish_indirect(r, 0, (BIG_READ_AT + r * 8 * PERIOD) / 512, segs, 4, false);
    virtio_dev_kick(&blk.dev, 0);
    ck_assert(wait_used(before, 3));
    for (unsigned r = 0; r < 3; r++)
        ck_assert_uint_eq(*fake_ptr(&f, status[r], 1), 0);
    ck_assert(period_is_right(fake_ptr(&f, buf, PERIOD)));
    ck_assert_uint_eq(blk.backend.bounced_ios, 3);
    if (sync_backend)
        ck_assert_uint_eq(blk.backend.bounce_waits, 0);
    else
        ck_assert_uint_ge(blk.backend.bounce_waits, 2);
    check_pool_bounded();
    ck_assert_uint_eq(blk.read_bytes, 3 * 4 * PERIOD);
}
END_TEST

static void add_bounce(TCase *t)
{
    tcase_set_timeout(t, 300);
    tcase_add_test(t, limits_are_offered);
    tcase_add_test(t, gigabyte_read_through_one_buffer_is_bounded);
    tcase_add_test(t, review_request_is_refused);
    tcase_add_test(t, request_over_4gib_is_refused);
    tcase_add_test(t, segment_over_size_max_is_refused);
    tcase_add_test(t, segments_over_seg_max_are_refused);
    tcase_add_test(t, bounced_read_puts_every_byte_in_place);
    tcase_add_test(t, bounced_write_writes_the_right_bytes);
    tcase_add_test(t, requests_wait_for_the_pool);
}

static void setup_unsafe(void)
{
    sync_backend = false;
    test_unsafe = true;
    setup();
    test_unsafe = false;
}

/* Publishes a read of len bytes at sector into buf as descriptors d, d+1,
 * d+2 (header at hdr, status at status). */
static void queue_read(uint16_t d, uint64_t hdr, uint64_t sector, uint64_t buf, uint32_t len,
                       uint64_t status)
{
    uint32_t h[4] = {0, 0, (uint32_t)sector, (uint32_t)(sector >> 32)};
    memcpy(fake_ptr(&f, hdr, 16), h, 16);
    *fake_ptr(&f, status, 1) = 0xee;
    fake_set_desc(&f, d, hdr, 16, VIRTQ_DESC_F_NEXT, (uint16_t)(d + 1));
    fake_set_desc(&f, (uint16_t)(d + 1), buf, len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
                  (uint16_t)(d + 2));
    fake_set_desc(&f, (uint16_t)(d + 2), status, 1, VIRTQ_DESC_F_WRITE, 0);
    fake_publish(&f, d);
}

START_TEST(adjacent_requests_are_merged)
{
    /* Three reads published together, two of them continuing each other on
     * disk (given in reverse order) and one elsewhere. */
    uint16_t before = fake_used(&f)->idx;
    queue_read(0, HDR, 8, BUF + 0x2000, 4096, STATUS);
    queue_read(3, HDR + 0x20, 0, BUF, 4096, STATUS + 1);
    queue_read(6, HDR + 0x40, 100, BUF + 0x4000, 512, STATUS + 2);
    virtio_dev_kick(&blk.dev, 0);
    for (int i = 0; i < 4000 && (uint16_t)(fake_used(&f)->idx - before) < 3; i++)
        usleep(500);
    ck_assert_uint_eq((uint16_t)(fake_used(&f)->idx - before), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_uint_eq(*fake_ptr(&f, STATUS + (uint64_t)i, 1), 0);
    uint8_t expect[8192];
    file_read(0, expect, sizeof(expect));
    ck_assert_mem_eq(fake_ptr(&f, BUF, 4096), expect, 4096);
    ck_assert_mem_eq(fake_ptr(&f, BUF + 0x2000, 4096), expect + 4096, 4096);
    file_read(100 * 512, expect, 512);
    ck_assert_mem_eq(fake_ptr(&f, BUF + 0x4000, 512), expect, 512);
    ck_assert_uint_eq(blk.merges, 1);
    ck_assert_uint_eq(blk.reads, 3);
    ck_assert_uint_eq(blk.read_bytes, 8192 + 512);
}
END_TEST

/* A file made in dir for the engine tests, or NULL when dir is not there. */
static char *engine_file(const char *dir)
{
    static char made[96];
    snprintf(made, sizeof(made), "%s/ember-engine-XXXXXX", dir);
    int fd = mkstemp(made);
    if (fd < 0)
        return NULL;
    ck_assert_int_eq(ftruncate(fd, 1 << 16), 0);
    close(fd);
    return made;
}

static bool nowait_refused(const char *file)
{
    int fd = open(file, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    char buf[512];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    bool refused = preadv2(fd, &iov, 1, 0, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP;
    close(fd);
    return refused;
}

START_TEST(auto_engine_chooses_by_the_file)
{
    struct blk_backend b;
    /* tmpfs: synchronous exactly when the kernel cannot read it without blocking. */
    char *shm = engine_file("/dev/shm");
    if (shm) {
        const char *want = nowait_refused(shm) ? "synchronous" : "io_uring";
        ck_assert_int_eq(blk_backend_open(&b, shm, false, false, BLK_ENGINE_AUTO, 8), 0);
        ck_assert_str_eq(blk_backend_kind(&b), want);
        blk_backend_close(&b);
        /* Asked for by name, io_uring stays. */
        ck_assert_int_eq(blk_backend_open(&b, shm, false, false, BLK_ENGINE_URING, 8), 0);
        ck_assert_str_eq(blk_backend_kind(&b), "io_uring");
        blk_backend_close(&b);
        unlink(shm);
    } else {
        fprintf(stderr, "# auto engine on tmpfs: skipped, no /dev/shm\n");
    }
    /* A file system that reads cached data without blocking keeps io_uring, and io=sync
     * is honoured. */
    char *disk = engine_file("/var/tmp");
    ck_assert_ptr_nonnull(disk);
    if (!nowait_refused(disk)) {
        ck_assert_int_eq(blk_backend_open(&b, disk, false, false, BLK_ENGINE_AUTO, 8), 0);
        ck_assert_str_eq(blk_backend_kind(&b), "io_uring");
        blk_backend_close(&b);
    }
    ck_assert_int_eq(blk_backend_open(&b, disk, false, false, BLK_ENGINE_SYNC, 8), 0);
    ck_assert_str_eq(blk_backend_kind(&b), "synchronous");
    blk_backend_close(&b);
    unlink(disk);
}
END_TEST

/* The image changed under a running device (PATCH /drives): requests go on, on the new one. */
START_TEST(changed_backing_keeps_serving)
{
    char other[600];
    snprintf(other, sizeof(other), "/tmp/ember-blk-other-XXXXXX");
    int fd = mkstemp(other);
    ck_assert_int_ge(fd, 0);
    uint8_t data[8192];
    memset(data, 0x3c, sizeof(data));
    ck_assert_int_eq(write(fd, data, sizeof(data)), sizeof(data));
    close(fd);
    ck_assert_msg(virtio_blk_change_backing(&blk, other) == 0, "%s", error_get());
    ck_assert_uint_eq(blk.capacity, sizeof(data) / 512);
    ck_assert_int_eq(__atomic_load_n(&config_irqs, __ATOMIC_SEQ_CST), 1);
    for (int i = 0; i < 3; i++) {
        memset(fake_ptr(&f, BUF, 512), 0, 512);
        ck_assert_int_eq(request(0, (uint64_t)i, 512, true, NULL), 0);
        ck_assert_mem_eq(fake_ptr(&f, BUF, 512), data, 512);
    }
    ck_assert_int_eq(request(0, sizeof(data) / 512, 512, true, NULL), 1); /* past its end */
    /* The new image's completions are watched edge-triggered, as the first one's: with
     * nothing in flight the I/O thread is not woken (a level-triggered watch of an eventfd
     * nobody reads would wake it without end). */
    uint64_t wakeups = __atomic_load_n(&blk.completion_wakeups, __ATOMIC_RELAXED);
    usleep(100000);
    ck_assert_uint_le(__atomic_load_n(&blk.completion_wakeups, __ATOMIC_RELAXED) - wakeups, 1);
    unlink(other);
}
END_TEST

static void add_common(TCase *t)
{
    tcase_add_test(t, changed_backing_keeps_serving);
    tcase_add_test(t, adjacent_requests_are_merged);
    tcase_add_test(t, read_write_flush);
    tcase_add_test(t, get_id_and_errors);
    tcase_add_test(t, discard_and_write_zeroes);
    tcase_add_test(t, malformed_request_needs_reset_then_recovers);
    tcase_add_test(t, short_header_needs_reset);
    tcase_add_test(t, ring_violation_needs_reset);
    tcase_add_test(t, activation_refuses_rings_outside_ram);
    tcase_add_test(t, features_without_version_1_refused);
}

static void use_uring(void)
{
    sync_backend = false;
    setup();
}

static void use_sync(void)
{
    sync_backend = true;
    setup();
}

Suite *virtio_blk_suite(void)
{
    Suite *s = suite_create("virtio-blk");
    TCase *uring = tcase_create("io_uring");
    tcase_add_checked_fixture(uring, use_uring, teardown);
    add_common(uring);
    suite_add_tcase(s, uring);
    TCase *sync = tcase_create("sync");
    tcase_add_checked_fixture(sync, use_sync, teardown);
    add_common(sync);
    suite_add_tcase(s, sync);
    TCase *limited = tcase_create("rate limit");
    tcase_add_checked_fixture(limited, setup_limited, teardown);
    tcase_add_test(limited, ops_limit_paces_requests);
    tcase_add_test(limited, completion_logs_its_writes_again);
    suite_add_tcase(s, limited);
    TCase *polling = tcase_create("polling");
    tcase_add_checked_fixture(polling, setup_polling, teardown);
    tcase_add_test(polling, polling_serves_without_kicks);
    tcase_add_test(polling, read_write_flush);
    suite_add_tcase(s, polling);
    TCase *race = tcase_create("polling_race");
    tcase_add_checked_fixture(race, setup_short_poll, teardown);
    tcase_add_test(race, polling_switch_loses_no_request);
    tcase_set_timeout(race, 60);
    suite_add_tcase(s, race);
    TCase *adaptive = tcase_create("polling_adaptive");
    tcase_add_checked_fixture(adaptive, setup_adaptive_poll, teardown);
    tcase_add_test(adaptive, adaptive_window_adapts);
    tcase_add_test(adaptive, read_write_flush);
    tcase_set_timeout(adaptive, 60);
    suite_add_tcase(s, adaptive);
    TCase *direct = tcase_create("cache=none");
    tcase_add_checked_fixture(direct, setup_direct, teardown_direct);
    tcase_add_test(direct, direct_io_announces_the_storage_block);
    suite_add_tcase(s, direct);
    TCase *bounce_uring = tcase_create("cache=none bounce, io_uring");
    tcase_add_checked_fixture(bounce_uring, setup_bounce_uring, teardown_direct);
    add_bounce(bounce_uring);
    suite_add_tcase(s, bounce_uring);
    TCase *bounce_sync = tcase_create("cache=none bounce, sync");
    tcase_add_checked_fixture(bounce_sync, setup_bounce_sync, teardown_direct);
    add_bounce(bounce_sync);
    suite_add_tcase(s, bounce_sync);
    TCase *unsafe = tcase_create("unsafe");
    tcase_add_checked_fixture(unsafe, setup_unsafe, teardown);
    tcase_add_test(unsafe, unsafe_cache_offers_no_flush);
    suite_add_tcase(s, unsafe);
    TCase *engine = tcase_create("engine");
    tcase_add_test(engine, auto_engine_chooses_by_the_file);
    suite_add_tcase(s, engine);
    TCase *ro = tcase_create("readonly");
    tcase_add_checked_fixture(ro, setup_ro, teardown);
    tcase_add_test(ro, readonly_drive_refuses_writes);
    suite_add_tcase(s, ro);
    return s;
}
