/* virtio-blk end to end without KVM: a fake driver in fake guest memory,
 * the real device model, its iothread and both block backends. */
#include "suites.h"
#include "util/error.h"
#include "virtio/blk.h"
#include "virtq_fake.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
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
static char path[64];
static int queue_irqs, config_irqs;
static bool sync_backend;
static struct rate_limit_config test_limit;
static bool test_unsafe;
static unsigned test_poll_us;
static bool test_direct;

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

static const struct virtio_transport_ops fake_transport = {fake_notify_queue, fake_notify_config};

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
    fake_queue_init(&f, 16);
    snprintf(path, sizeof(path), "/tmp/ember-blk-test-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    uint8_t *data = malloc(DISK_SIZE);
    for (unsigned i = 0; i < DISK_SIZE; i++)
        data[i] = (uint8_t)(i / 512 + i);
    ck_assert_int_eq(write(fd, data, DISK_SIZE), DISK_SIZE);
    free(data);
    close(fd);
    struct blk_options o = {.path = path,
                            .id = "serial-42",
                            .readonly = readonly,
                            .unsafe = test_unsafe,
                            .direct = test_direct,
                            .queues = 1,
                            .poll_us = test_poll_us,
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
                *used_len = fake_used(&f)->ring[before % 16].len;
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

START_TEST(polling_serves_without_kicks)
{
    ck_assert_int_eq(request(0, 0, 512, true, NULL), 0); /* the first kick starts polling */
    ck_assert(blk.polling);
    /* While polling, new requests need no kick. */
    uint32_t hdr[4] = {0, 0, 3, 0};
    memcpy(fake_ptr(&f, HDR, 16), hdr, 16);
    *fake_ptr(&f, STATUS, 1) = 0xee;
    uint16_t before = fake_used(&f)->idx;
    fake_publish(&f, 0);
    for (int i = 0; i < 2000 && __atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) == before;
         i++)
        usleep(100);
    ck_assert_uint_ne(fake_used(&f)->idx, before);
    ck_assert_uint_eq(*fake_ptr(&f, STATUS, 1), 0);
    ck_assert_uint_gt(blk.poll_hits, 0);
    /* Quiet for longer than the window: polling stops, kicks are asked for. */
    usleep(50000);
    ck_assert(!blk.polling);
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
    test_poll_us = 10000;
    setup();
    test_poll_us = 0;
}

START_TEST(direct_io_announces_the_storage_block)
{
    uint32_t blk_size;
    virtio_dev_config_access(&blk.dev, 20, &blk_size, 4, false);
    ck_assert_uint_ge(blk_size, 512);
    ck_assert_uint_eq(blk_size, blk.backend.align);
    /* Whole blocks at block offsets go straight through O_DIRECT. */
    ck_assert_int_eq(request(0, blk_size / 512, blk_size, true, NULL), 0);
    uint8_t expect[4096];
    file_read(blk_size, expect, blk_size > sizeof(expect) ? sizeof(expect) : blk_size);
    ck_assert_mem_eq(fake_ptr(&f, BUF, 16), expect, 16);
}
END_TEST

static void setup_direct(void)
{
    sync_backend = false;
    test_direct = true;
    setup();
    test_direct = false;
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

static void add_common(TCase *t)
{
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
    suite_add_tcase(s, limited);
    TCase *polling = tcase_create("polling");
    tcase_add_checked_fixture(polling, setup_polling, teardown);
    tcase_add_test(polling, polling_serves_without_kicks);
    tcase_add_test(polling, read_write_flush);
    suite_add_tcase(s, polling);
    TCase *direct = tcase_create("cache=none");
    tcase_add_checked_fixture(direct, setup_direct, teardown);
    tcase_add_test(direct, direct_io_announces_the_storage_block);
    suite_add_tcase(s, direct);
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
