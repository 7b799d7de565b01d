/* virtio-pmem (virtio/pmem.c) through its virtio-mmio window, without KVM:
 * the configuration space, FLUSH requests and their answers, requests a
 * hostile driver may send (wrong type, no room for the answer, a writable
 * header), batches of flushes sharing one msync, the rate limiter, and a
 * read-only mapping. */
#include "suites.h"
#include "util/error.h"
#include "virtio/mmio.h"
#include "virtio/pmem.h"
#include "virtq_fake.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    REG_DEVICE_ID = 0x008,
    REG_DRIVER_FEATURES = 0x020,
    REG_DRIVER_FEATURES_SEL = 0x024,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM = 0x038,
    REG_QUEUE_READY = 0x044,
    REG_QUEUE_NOTIFY = 0x050,
    REG_STATUS = 0x070,
    REG_QUEUE_DESC_LOW = 0x080,
    REG_QUEUE_DRIVER_LOW = 0x090,
    REG_QUEUE_DEVICE_LOW = 0x0a0,
    REG_CONFIG = 0x100,
};

#define LIVE_STATUS                                                                                \
    (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |                \
     VIRTIO_STATUS_DRIVER_OK)
#define QSIZE     16
#define REQ       FAKE_DATA            /* request headers, 16 bytes apart */
#define RESP      (FAKE_DATA + 0x1000) /* responses, 16 bytes apart */
#define PMEM_GPA  0x140000000ULL
#define FILE_SIZE ((3ULL << 20) + 5) /* not a multiple of 2 MiB */

static struct fake_queue f;
static struct virtio_mmio m;
static struct virtio_pmem pm;
static char path[64];
static uint16_t next_desc;

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

static void make_file(uint64_t size)
{
    snprintf(path, sizeof(path), "/tmp/ember-pmem-test-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    if (size >= 5)
        ck_assert_int_eq(pwrite(fd, "ember", 5, 0), 5);
    close(fd);
}

static void start(bool readonly, const struct rate_limit_config *rl)
{
    fake_queue_init(&f, QSIZE);
    struct pmem_options o = {.id = "p0", .path = path, .readonly = readonly};
    if (rl)
        o.rate_limit = *rl;
    ck_assert_msg(virtio_pmem_init(&pm, "pmem0", &o, &f.mem) == 0, "%s", error_get());
    virtio_pmem_set_region(&pm, PMEM_GPA);
    ck_assert_int_eq(virtio_mmio_init(&m, &pm.dev, -1, 0xd0000000, 5), 0);
    next_desc = 0;
}

static void live(void)
{
    wr(REG_STATUS, 0);
    wr(REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    wr(REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    wr(REG_DRIVER_FEATURES_SEL, 1);
    wr(REG_DRIVER_FEATURES, 1); /* VERSION_1 */
    wr(REG_DRIVER_FEATURES_SEL, 0);
    wr(REG_DRIVER_FEATURES, 0);
    wr(REG_STATUS, LIVE_STATUS & ~VIRTIO_STATUS_DRIVER_OK);
    wr(REG_QUEUE_SEL, 0);
    wr(REG_QUEUE_NUM, QSIZE);
    wr(REG_QUEUE_DESC_LOW, (uint32_t)FAKE_DESC);
    wr(REG_QUEUE_DRIVER_LOW, (uint32_t)FAKE_AVAIL);
    wr(REG_QUEUE_DEVICE_LOW, (uint32_t)FAKE_USED);
    wr(REG_QUEUE_READY, 1);
    wr(REG_STATUS, LIVE_STATUS);
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
}

static void setup_rw(void)
{
    make_file(FILE_SIZE);
    start(false, NULL);
}

static void setup_ro(void)
{
    make_file(FILE_SIZE);
    start(true, NULL);
}

static void teardown(void)
{
    virtio_mmio_destroy(&m);
    virtio_pmem_destroy(&pm);
    fake_queue_free(&f);
    unlink(path);
}

static void noop(void *arg)
{
    (void)arg;
}

/* Every event the iothread had when this is called has been handled. */
static void settle(void)
{
    iothread_call(&pm.dev.io, noop, NULL);
    iothread_call(&pm.dev.io, noop, NULL);
}

/* Waits (bounded) for the device to have returned n chains. */
static bool returned(uint16_t n)
{
    for (int i = 0; i < 2000; i++) {
        if (__atomic_load_n(&fake_used(&f)->idx, __ATOMIC_ACQUIRE) == n)
            return true;
        usleep(1000);
    }
    return false;
}

/* A chain of the given buffers (len, writable) published as one request; returns its head. */
static uint16_t publish(const uint32_t *lens, const bool *writable, unsigned n, uint64_t *gpas)
{
    uint16_t head = next_desc;
    for (unsigned i = 0; i < n; i++) {
        uint16_t d = next_desc++;
        uint16_t flags =
            (writable[i] ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        fake_set_desc(&f, d, gpas[i], lens[i], flags, (uint16_t)(d + 1));
    }
    fake_publish(&f, head);
    return head;
}

/* A well-formed request of type `type`: header at REQ + 16 k, response at RESP + 16 k. */
static void request(unsigned k, uint32_t type)
{
    memcpy(fake_ptr(&f, REQ + 16 * k, 4), &type, 4);
    memset(fake_ptr(&f, RESP + 16 * k, 4), 0xaa, 4);
    uint32_t lens[] = {4, 4};
    bool w[] = {false, true};
    uint64_t gpas[] = {REQ + 16 * k, RESP + 16 * k};
    publish(lens, w, 2, gpas);
}

static uint32_t response(unsigned k)
{
    uint32_t v;
    memcpy(&v, fake_ptr(&f, RESP + 16 * k, 4), 4);
    return v;
}

static void kick(void)
{
    wr(REG_QUEUE_NOTIFY, 0);
}

START_TEST(config_space_and_mapping)
{
    ck_assert_uint_eq(rd(REG_DEVICE_ID), VIRTIO_ID_PMEM);
    ck_assert_uint_eq(pm.file_len, FILE_SIZE);
    ck_assert_uint_eq(pm.map_len, 4ULL << 20); /* rounded up to 2 MiB */
    uint64_t start = (uint64_t)rd(REG_CONFIG) | (uint64_t)rd(REG_CONFIG + 4) << 32;
    uint64_t size = (uint64_t)rd(REG_CONFIG + 8) | (uint64_t)rd(REG_CONFIG + 12) << 32;
    ck_assert_uint_eq(start, PMEM_GPA);
    ck_assert_uint_eq(size, 4ULL << 20);
    /* Past the 16 bytes: nothing. */
    ck_assert_uint_eq(rd(REG_CONFIG + 16), 0);
    /* The driver cannot move it. */
    wr(REG_CONFIG, 0x1234);
    ck_assert_uint_eq(rd(REG_CONFIG), (uint32_t)PMEM_GPA);
    ck_assert_uint_eq(pm.config_writes, 1);
    /* The file's bytes are the mapping's, the rest of the last 2 MiB reads zeros. */
    ck_assert_int_eq(memcmp(pm.map, "ember", 5), 0);
    ck_assert_uint_eq(pm.map[pm.map_len - 1], 0);
    /* A guest write through the mapping is the file's. */
    memcpy(pm.map + 4096, "pmem!", 5);
    char back[5];
    int fd = open(path, O_RDONLY);
    ck_assert_int_eq(pread(fd, back, 5, 4096), 5);
    close(fd);
    ck_assert_int_eq(memcmp(back, "pmem!", 5), 0);
}
END_TEST

START_TEST(flush_answers_ok)
{
    live();
    request(0, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(1));
    ck_assert_uint_eq(fake_used(&f)->ring[0].len, 4);
    ck_assert_uint_eq(response(0), VIRTIO_PMEM_RESP_OK);
    ck_assert_uint_eq(pm.flushes, 1);
    ck_assert_uint_eq(pm.bad_requests, 0);
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
}
END_TEST

START_TEST(flushes_of_one_batch_share_one_msync)
{
    live();
    for (unsigned k = 0; k < 5; k++)
        request(k, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(5));
    for (unsigned k = 0; k < 5; k++)
        ck_assert_uint_eq(response(k), VIRTIO_PMEM_RESP_OK);
    ck_assert_uint_eq(pm.flushes, 1);
}
END_TEST

START_TEST(unknown_type_answered_eio)
{
    live();
    request(0, 7);
    kick();
    ck_assert(returned(1));
    ck_assert_uint_eq(response(0), VIRTIO_PMEM_RESP_EIO);
    ck_assert_uint_eq(pm.bad_requests, 1);
    ck_assert_uint_eq(pm.flushes, 0);
    /* The device goes on: the next FLUSH is served. */
    request(1, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(2));
    ck_assert_uint_eq(response(1), VIRTIO_PMEM_RESP_OK);
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
}
END_TEST

START_TEST(short_header_answered_eio)
{
    live();
    /* Two readable bytes where the type needs four. */
    memset(fake_ptr(&f, RESP, 4), 0xaa, 4);
    uint32_t lens[] = {2, 4};
    bool w[] = {false, true};
    uint64_t gpas[] = {REQ, RESP};
    publish(lens, w, 2, gpas);
    kick();
    ck_assert(returned(1));
    ck_assert_uint_eq(response(0), VIRTIO_PMEM_RESP_EIO);
    ck_assert_uint_eq(pm.bad_requests, 1);
}
END_TEST

START_TEST(writable_header_answered_eio)
{
    live();
    /* The header is writable: no readable type at all; the answer goes in the
     * first writable bytes. */
    memset(fake_ptr(&f, REQ, 4), 0xaa, 4);
    uint32_t lens[] = {4, 4};
    bool w[] = {true, true};
    uint64_t gpas[] = {REQ, RESP};
    publish(lens, w, 2, gpas);
    kick();
    ck_assert(returned(1));
    uint32_t v;
    memcpy(&v, fake_ptr(&f, REQ, 4), 4);
    ck_assert_uint_eq(v, VIRTIO_PMEM_RESP_EIO);
    ck_assert_uint_eq(fake_used(&f)->ring[0].len, 4);
    ck_assert_uint_eq(rd(REG_STATUS), LIVE_STATUS);
}
END_TEST

START_TEST(no_room_for_the_answer_needs_reset)
{
    live();
    uint32_t type = VIRTIO_PMEM_REQ_TYPE_FLUSH;
    memcpy(fake_ptr(&f, REQ, 4), &type, 4);
    /* Readable only, then a writable buffer of 3 bytes: neither holds a response. */
    uint32_t lens[] = {4, 3};
    bool w[] = {false, true};
    uint64_t gpas[] = {REQ, RESP};
    publish(lens, w, 2, gpas);
    kick();
    settle();
    ck_assert(rd(REG_STATUS) & VIRTIO_STATUS_NEEDS_RESET);
    ck_assert_uint_eq(fake_used(&f)->idx, 0);
    ck_assert_uint_eq(pm.flushes, 0);
    /* A reset brings it back. */
    next_desc = 0;
    memset(fake_ptr(&f, FAKE_AVAIL, 6 + 2 * QSIZE), 0, 6 + 2 * QSIZE);
    memset(fake_ptr(&f, FAKE_USED, 6 + 8 * QSIZE), 0, 6 + 8 * QSIZE);
    f.avail_idx = 0;
    live();
    request(0, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(1));
    ck_assert_uint_eq(response(0), VIRTIO_PMEM_RESP_OK);
}
END_TEST

START_TEST(answer_split_over_buffers)
{
    live();
    uint32_t type = VIRTIO_PMEM_REQ_TYPE_FLUSH;
    memcpy(fake_ptr(&f, REQ, 4), &type, 4);
    memset(fake_ptr(&f, RESP, 32), 0xaa, 32);
    /* The type in 1 + 3 bytes, the answer in 2 + 1 + 1 bytes. */
    uint32_t lens[] = {1, 3, 2, 1, 1};
    bool w[] = {false, false, true, true, true};
    uint64_t gpas[] = {REQ, REQ + 1, RESP, RESP + 16, RESP + 20};
    publish(lens, w, 5, gpas);
    kick();
    ck_assert(returned(1));
    uint8_t *r = fake_ptr(&f, RESP, 32);
    ck_assert_uint_eq(r[0], 0);
    ck_assert_uint_eq(r[1], 0);
    ck_assert_uint_eq(r[2], 0xaa);
    ck_assert_uint_eq(r[16], 0);
    ck_assert_uint_eq(r[20], 0);
    ck_assert_uint_eq(pm.flushes, 1);
}
END_TEST

START_TEST(read_only_mapping)
{
    ck_assert(pm.opts.readonly);
    ck_assert_int_eq(memcmp(pm.map, "ember", 5), 0);
    /* A FLUSH of a read-only device succeeds: nothing to write back. */
    live();
    request(0, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(1));
    ck_assert_uint_eq(response(0), VIRTIO_PMEM_RESP_OK);
    /* KVM's MMIO exits for guest writes: dropped, counted, the file unchanged. */
    uint8_t junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    virtio_pmem_readonly_io(&pm, 0, junk, 8, true);
    virtio_pmem_readonly_io(&pm, pm.map_len - 4, junk, 4, true);
    ck_assert_uint_eq(pm.ro_writes, 2);
    ck_assert_int_eq(memcmp(pm.map, "ember", 5), 0);
    uint8_t back[5];
    virtio_pmem_readonly_io(&pm, 0, back, 5, false);
    ck_assert_int_eq(memcmp(back, "ember", 5), 0);
    /* Out of range reads cannot reach past the mapping. */
    uint8_t far[4];
    virtio_pmem_readonly_io(&pm, pm.map_len, far, 4, false);
    ck_assert_uint_eq(far[0], 0xff);
}
END_TEST

START_TEST(rate_limited_flush_waits)
{
    make_file(FILE_SIZE);
    /* A bucket of one flush's bytes (the file's size), refilled over days. */
    struct rate_limit_config rl = {.bandwidth = {.size = FILE_SIZE, .refill_ms = 100000000000ULL}};
    start(false, &rl);
    live();
    request(0, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    ck_assert(returned(1));
    request(1, VIRTIO_PMEM_REQ_TYPE_FLUSH);
    kick();
    settle();
    ck_assert_uint_eq(fake_used(&f)->idx, 1); /* held back */
    ck_assert_uint_eq(pm.throttled_events, 1);
    /* More kicks do not get it through either, nor count as new throttling. */
    kick();
    settle();
    ck_assert_uint_eq(fake_used(&f)->idx, 1);
    /* Lifting the limit (PATCH /pmem) lets it through. */
    struct rate_limit_config none = {0};
    virtio_pmem_change_limits(&pm, &none);
    ck_assert(returned(2));
    ck_assert_uint_eq(response(1), VIRTIO_PMEM_RESP_OK);
    ck_assert_uint_eq(pm.flushes, 2);
}
END_TEST

START_TEST(files_that_cannot_be_pmem)
{
    struct virtio_pmem p;
    fake_queue_init(&f, QSIZE);
    struct pmem_options o = {.id = "p", .path = "/nonexistent/ember-pmem"};
    ck_assert_int_lt(virtio_pmem_init(&p, "pmem0", &o, &f.mem), 0);
    ck_assert_ptr_nonnull(strstr(error_get(), "cannot open"));
    virtio_pmem_destroy(&p);
    o.path = "/tmp";
    o.readonly = true; /* a directory opens for reading */
    ck_assert_int_lt(virtio_pmem_init(&p, "pmem0", &o, &f.mem), 0);
    ck_assert_ptr_nonnull(strstr(error_get(), "not a regular file"));
    virtio_pmem_destroy(&p);
    o.readonly = false;
    make_file(0);
    o.path = path;
    ck_assert_int_lt(virtio_pmem_init(&p, "pmem0", &o, &f.mem), 0);
    ck_assert_ptr_nonnull(strstr(error_get(), "empty"));
    virtio_pmem_destroy(&p);
    unlink(path);
    fake_queue_free(&f);
}
END_TEST

Suite *virtio_pmem_suite(void)
{
    Suite *s = suite_create("virtio-pmem");
    TCase *t = tcase_create("rw");
    tcase_add_checked_fixture(t, setup_rw, teardown);
    tcase_add_test(t, config_space_and_mapping);
    tcase_add_test(t, flush_answers_ok);
    tcase_add_test(t, flushes_of_one_batch_share_one_msync);
    tcase_add_test(t, unknown_type_answered_eio);
    tcase_add_test(t, short_header_answered_eio);
    tcase_add_test(t, writable_header_answered_eio);
    tcase_add_test(t, no_room_for_the_answer_needs_reset);
    tcase_add_test(t, answer_split_over_buffers);
    suite_add_tcase(s, t);
    t = tcase_create("ro");
    tcase_add_checked_fixture(t, setup_ro, teardown);
    tcase_add_test(t, read_only_mapping);
    suite_add_tcase(s, t);
    t = tcase_create("limits");
    tcase_add_checked_fixture(t, NULL, teardown);
    tcase_add_test(t, rate_limited_flush_waits);
    suite_add_tcase(s, t);
    t = tcase_create("files");
    tcase_add_test(t, files_that_cannot_be_pmem);
    suite_add_tcase(s, t);
    return s;
}
