/* Packed virtqueues (virtio 1.2, 2.8), device side, against a fake driver
 * in fake guest memory. */
#include "suites.h"
#include "util/error.h"
#include "virtq_fake.h"

#define RING   0x10000ULL
#define DRIVER 0x20000ULL /* driver event suppression area */
#define DEVICE 0x30000ULL /* device event suppression area */

struct packed_driver {
    struct guest_memory mem;
    struct virtq_config cfg;
    uint16_t size, next, used_next;
    bool wrap, used_wrap;
};

static struct packed_driver drv;
static struct virtq q;
static struct virtq_chain chain;

static struct virtq_packed_desc *pdesc(uint16_t i)
{
    return gpa_to_hva(&drv.mem, RING + 16ULL * i, 16);
}

static void driver_init(uint16_t size)
{
    guest_memory_map(&drv.mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    drv.size = size;
    drv.next = drv.used_next = 0;
    drv.wrap = drv.used_wrap = true;
    drv.cfg = (struct virtq_config){
        .size = size, .desc_gpa = RING, .avail_gpa = DRIVER, .used_gpa = DEVICE, .packed = true};
}

struct buf {
    uint64_t addr;
    uint32_t len;
    bool write;
};

/* Makes a chain of n buffers available with buffer id; the first
 * descriptor's flags are written last, as a driver must. */
static void offer(const struct buf *b, unsigned n, uint16_t id)
{
    uint16_t first = drv.next;
    uint16_t first_flags = 0;
    for (unsigned i = 0; i < n; i++) {
        uint16_t flags =
            (uint16_t)((i + 1 < n ? VIRTQ_DESC_F_NEXT : 0) | (b[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                       (drv.wrap ? VIRTQ_PACKED_F_AVAIL : VIRTQ_PACKED_F_USED));
        struct virtq_packed_desc *d = pdesc(drv.next);
        d->addr = b[i].addr;
        d->len = b[i].len;
        d->id = id;
        if (i == 0)
            first_flags = flags;
        else
            d->flags = flags;
        if (++drv.next == drv.size) {
            drv.next = 0;
            drv.wrap = !drv.wrap;
        }
    }
    __atomic_store_n(&pdesc(first)->flags, first_flags, __ATOMIC_RELEASE);
}

/* The next used element, if the device wrote one. */
static bool take_used(uint16_t *id, uint32_t *len, uint16_t chain_slots)
{
    struct virtq_packed_desc *d = pdesc(drv.used_next);
    uint16_t flags = d->flags;
    bool avail = flags & VIRTQ_PACKED_F_AVAIL, used = flags & VIRTQ_PACKED_F_USED;
    if (avail != drv.used_wrap || used != drv.used_wrap)
        return false;
    *id = d->id;
    *len = d->len;
    drv.used_next = (uint16_t)(drv.used_next + chain_slots);
    if (drv.used_next >= drv.size) {
        drv.used_next = (uint16_t)(drv.used_next - drv.size);
        drv.used_wrap = !drv.used_wrap;
    }
    return true;
}

static void setup(void)
{
    driver_init(8);
    ck_assert_msg(virtq_init(&q, &drv.mem, &drv.cfg, false, true) == 0, "%s", error_get());
    ck_assert_int_eq(virtq_chain_alloc(&chain, 8), 0);
}

static void teardown(void)
{
    virtq_chain_free(&chain);
    guest_memory_free(&drv.mem);
}

static void expect_violation(const char *needle)
{
    ck_assert_int_eq(virtq_pop(&q, &chain), -1);
    ck_assert_msg(strstr(q.error, needle), "error '%s' lacks '%s'", q.error, needle);
}

START_TEST(pop_push_round_trip)
{
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
    struct buf b[3] = {
        {FAKE_DATA, 16, false}, {FAKE_DATA + 0x100, 100, false}, {FAKE_DATA + 0x200, 1, true}};
    offer(b, 3, 42);
    ck_assert(virtq_has_avail(&q));
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.nout, 2);
    ck_assert_uint_eq(chain.nin, 1);
    ck_assert_uint_eq(chain.out_len, 116);
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
    virtq_push(&q, chain.head, 1);
    uint16_t id;
    uint32_t len;
    ck_assert(take_used(&id, &len, 3));
    ck_assert_uint_eq(id, 42);
    ck_assert_uint_eq(len, 1);
}
END_TEST

START_TEST(wraps_around_many_times)
{
    /* Chains of 3 in a ring of 8: positions and wrap counters cycle. */
    for (unsigned i = 0; i < 50; i++) {
        struct buf b[3] = {{FAKE_DATA, 8, false}, {FAKE_DATA + 8, 8, false}, {FAKE_DATA, 4, true}};
        offer(b, 3, (uint16_t)(i % 5));
        ck_assert_int_eq(virtq_pop(&q, &chain), 1);
        ck_assert_uint_eq(chain.nout + chain.nin, 3);
        virtq_push(&q, chain.head, 4);
        uint16_t id;
        uint32_t len;
        ck_assert_msg(take_used(&id, &len, 3), "round %u", i);
        ck_assert_uint_eq(id, i % 5);
    }
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
}
END_TEST

START_TEST(out_of_order_completion)
{
    struct buf a[1] = {{FAKE_DATA, 8, true}}, b[2] = {{FAKE_DATA, 8, false}, {FAKE_DATA, 8, true}};
    offer(a, 1, 1);
    offer(b, 2, 2);
    struct virtq_chain c2;
    virtq_chain_alloc(&c2, 8);
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_int_eq(virtq_pop(&q, &c2), 1);
    /* The second finishes first: its used element goes in the first slot,
     * and the device skips by the chain it returns. */
    virtq_push(&q, c2.head, 8);
    virtq_push(&q, chain.head, 8);
    uint16_t id;
    uint32_t len;
    ck_assert(take_used(&id, &len, 2));
    ck_assert_uint_eq(id, 2);
    ck_assert(take_used(&id, &len, 1));
    ck_assert_uint_eq(id, 1);
    virtq_chain_free(&c2);
}
END_TEST

START_TEST(unpop_gives_chains_back)
{
    struct buf b[2] = {{FAKE_DATA, 8, true}, {FAKE_DATA + 8, 8, true}};
    for (uint16_t i = 0; i < 3; i++)
        offer(b, 2, i);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    virtq_unpop(&q, 2); /* the last two go back, across the ring's end */
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.head & 0xffff, 1);
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.head & 0xffff, 2);
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
}
END_TEST

START_TEST(indirect_table)
{
    struct virtq_packed_desc *table = gpa_to_hva(&drv.mem, FAKE_INDIRECT, 48);
    table[0] = (struct virtq_packed_desc){FAKE_DATA, 16, 0, 0};
    table[1] = (struct virtq_packed_desc){FAKE_DATA + 0x100, 512, 0, VIRTQ_DESC_F_WRITE};
    table[2] = (struct virtq_packed_desc){FAKE_DATA + 0x400, 1, 0, VIRTQ_DESC_F_WRITE};
    struct virtq_packed_desc *d = pdesc(0);
    d->addr = FAKE_INDIRECT;
    d->len = 48;
    d->id = 7;
    __atomic_store_n(&d->flags, (uint16_t)(VIRTQ_DESC_F_INDIRECT | VIRTQ_PACKED_F_AVAIL),
                     __ATOMIC_RELEASE);
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.nout, 1);
    ck_assert_uint_eq(chain.nin, 2);
    ck_assert_uint_eq(chain.head, 7u | 1u << 16); /* one ring slot */
}
END_TEST

START_TEST(violations)
{
    /* A chain whose next descriptor was never made available. */
    struct virtq_packed_desc *d = pdesc(0);
    *d = (struct virtq_packed_desc){FAKE_DATA, 8, 0, 0};
    __atomic_store_n(&d->flags, (uint16_t)(VIRTQ_DESC_F_NEXT | VIRTQ_PACKED_F_AVAIL),
                     __ATOMIC_RELEASE);
    expect_violation("not available");
}
END_TEST

START_TEST(chain_longer_than_ring)
{
    /* Every descriptor says NEXT and is available, in both laps. */
    for (uint16_t i = 0; i < 8; i++) {
        struct virtq_packed_desc *d = pdesc(i);
        *d = (struct virtq_packed_desc){FAKE_DATA, 8, 0,
                                        (uint16_t)(VIRTQ_DESC_F_NEXT | VIRTQ_PACKED_F_AVAIL)};
    }
    /* Past the ring's end the wrap counter flips: the same descriptors are
     * no longer available, so the walk stops there instead of looping. */
    expect_violation("not available");
}
END_TEST

START_TEST(bad_buffers_and_nested_indirect)
{
    struct buf b[1] = {{FAKE_MEM - 4, 8, false}};
    offer(b, 1, 0);
    expect_violation("not guest RAM");
    teardown();
    setup();
    struct virtq_packed_desc *table = gpa_to_hva(&drv.mem, FAKE_INDIRECT, 16);
    table[0] = (struct virtq_packed_desc){FAKE_INDIRECT, 16, 0, VIRTQ_DESC_F_INDIRECT};
    struct virtq_packed_desc *d = pdesc(0);
    *d = (struct virtq_packed_desc){FAKE_INDIRECT, 16, 0, 0};
    __atomic_store_n(&d->flags, (uint16_t)(VIRTQ_DESC_F_INDIRECT | VIRTQ_PACKED_F_AVAIL),
                     __ATOMIC_RELEASE);
    expect_violation("inside an indirect");
}
END_TEST

START_TEST(any_size_and_area_checks)
{
    struct virtq q2;
    struct virtq_config c = drv.cfg;
    c.size = 12; /* not a power of two: fine for packed rings */
    ck_assert_int_eq(virtq_init(&q2, &drv.mem, &c, false, false), 0);
    c.size = 0;
    ck_assert_int_eq(virtq_init(&q2, &drv.mem, &c, false, false), -1);
    c = drv.cfg;
    c.avail_gpa = DRIVER + 2; /* misaligned event area */
    ck_assert_int_eq(virtq_init(&q2, &drv.mem, &c, false, false), -1);
    c = drv.cfg;
    c.used_gpa = FAKE_MEM; /* just past the end of RAM */
    ck_assert_int_eq(virtq_init(&q2, &drv.mem, &c, false, false), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "outside guest RAM"));
}
END_TEST

START_TEST(event_suppression)
{
    struct virtq_packed_event *drv_ev = gpa_to_hva(&drv.mem, DRIVER, 4);
    struct virtq_packed_event *dev_ev = gpa_to_hva(&drv.mem, DEVICE, 4);
    struct buf b[1] = {{FAKE_DATA, 8, true}};
    offer(b, 1, 0);
    virtq_pop(&q, &chain);
    virtq_push(&q, chain.head, 0);
    drv_ev->flags = VIRTQ_EVENT_ENABLE;
    ck_assert(virtq_should_notify(&q));
    drv_ev->flags = VIRTQ_EVENT_DISABLE;
    offer(b, 1, 1);
    virtq_pop(&q, &chain);
    virtq_push(&q, chain.head, 0);
    ck_assert(!virtq_should_notify(&q));
    /* Kicks: disabled, then enabled. */
    virtq_enable_kicks(&q, false);
    ck_assert_uint_eq(dev_ev->flags, VIRTQ_EVENT_DISABLE);
    ck_assert(!virtq_enable_kicks(&q, true));
    ck_assert_uint_eq(dev_ev->flags, VIRTQ_EVENT_ENABLE);
    offer(b, 1, 2);
    ck_assert(virtq_enable_kicks(&q, true)); /* arrived meanwhile: reported */
}
END_TEST

START_TEST(event_index_mode)
{
    /* With EVENT_IDX: interrupt when the used position passes the driver's
     * event position; kicks asked for at the device's next position. */
    struct virtq qe;
    ck_assert_int_eq(virtq_init(&qe, &drv.mem, &drv.cfg, true, true), 0);
    struct virtq_packed_event *drv_ev = gpa_to_hva(&drv.mem, DRIVER, 4);
    struct virtq_packed_event *dev_ev = gpa_to_hva(&drv.mem, DEVICE, 4);
    struct buf b[1] = {{FAKE_DATA, 8, true}};
    for (uint16_t i = 0; i < 4; i++)
        offer(b, 1, i);
    drv_ev->flags = VIRTQ_EVENT_DESC;
    drv_ev->off_wrap = 2 | 0x8000; /* position 2, first lap */
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(virtq_pop(&qe, &chain), 1);
    virtq_push(&qe, 0 | 1u << 16, 0);    /* used position 0 -> 1 */
    ck_assert(virtq_should_notify(&qe)); /* the first always goes */
    virtq_push(&qe, 1 | 1u << 16, 0);    /* 1 -> 2: event 2 not yet written */
    ck_assert(!virtq_should_notify(&qe));
    virtq_push(&qe, 2 | 1u << 16, 0); /* 2 -> 3: written */
    ck_assert(virtq_should_notify(&qe));
    virtq_enable_kicks(&qe, true);
    ck_assert_uint_eq(dev_ev->flags, VIRTQ_EVENT_DESC);
    ck_assert_uint_eq(dev_ev->off_wrap, 4 | 0x8000);
}
END_TEST

Suite *virtq_packed_suite(void)
{
    Suite *s = suite_create("virtq-packed");
    TCase *t = tcase_create("packed");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, pop_push_round_trip);
    tcase_add_test(t, wraps_around_many_times);
    tcase_add_test(t, out_of_order_completion);
    tcase_add_test(t, unpop_gives_chains_back);
    tcase_add_test(t, indirect_table);
    tcase_add_test(t, violations);
    tcase_add_test(t, chain_longer_than_ring);
    tcase_add_test(t, bad_buffers_and_nested_indirect);
    tcase_add_test(t, any_size_and_area_checks);
    tcase_add_test(t, event_suppression);
    tcase_add_test(t, event_index_mode);
    suite_add_tcase(s, t);
    return s;
}
