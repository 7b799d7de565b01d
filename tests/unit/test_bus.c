#include "bus/bus.h"
#include "suites.h"
#include "util/error.h"

#include <string.h>

struct probe {
    uint64_t offset;
    uint32_t len;
    bool is_write;
    int calls;
    uint8_t value;
};

static void probe_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct probe *p = opaque;
    p->offset = offset;
    p->len = len;
    p->is_write = is_write;
    p->calls++;
    if (!is_write)
        memset(data, p->value, len);
}

START_TEST(dispatch_finds_range_and_offset)
{
    struct bus bus;
    struct probe a = {.value = 0xaa}, b = {.value = 0xbb}, c = {.value = 0xcc};
    bus_init(&bus, "test");
    /* Registered out of order: lookup must not depend on it. */
    ck_assert_int_eq(bus_register(&bus, 0x3f8, 8, probe_io, &b, "b"), 0);
    ck_assert_int_eq(bus_register(&bus, 0x60, 1, probe_io, &a, "a"), 0);
    ck_assert_int_eq(bus_register(&bus, 0x1000, 0x100, probe_io, &c, "c"), 0);
    uint8_t data[4] = {0};
    ck_assert(bus_dispatch(&bus, 0x3fd, data, 1, false));
    ck_assert_int_eq(b.calls, 1);
    ck_assert_uint_eq(b.offset, 5);
    ck_assert_uint_eq(data[0], 0xbb);
    ck_assert(bus_dispatch(&bus, 0x10fc, data, 4, true));
    ck_assert_uint_eq(c.offset, 0xfc);
    ck_assert(c.is_write);
    ck_assert(bus_dispatch(&bus, 0x60, data, 1, false));
    ck_assert_int_eq(a.calls, 1);
    bus_destroy(&bus);
}
END_TEST

START_TEST(unhandled_reads_all_ones)
{
    struct bus bus;
    struct probe a = {0};
    bus_init(&bus, "test");
    bus_register(&bus, 0x100, 0x10, probe_io, &a, "a");
    uint8_t data[4] = {0, 0, 0, 0};
    ck_assert(!bus_dispatch(&bus, 0xff, data, 4, false));
    ck_assert_uint_eq(data[0], 0xff);
    ck_assert_uint_eq(data[3], 0xff);
    /* Straddling the end of a range is not the device's access. */
    ck_assert(!bus_dispatch(&bus, 0x10e, data, 4, false));
    ck_assert(!bus_dispatch(&bus, 0x110, data, 1, true));
    ck_assert_int_eq(a.calls, 0);
    bus_destroy(&bus);
}
END_TEST

START_TEST(overlaps_and_bad_ranges_rejected)
{
    struct bus bus;
    struct probe a = {0};
    bus_init(&bus, "test");
    ck_assert_int_eq(bus_register(&bus, 0x100, 0x10, probe_io, &a, "first"), 0);
    ck_assert_int_eq(bus_register(&bus, 0x10f, 1, probe_io, &a, "second"), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "overlaps first"));
    ck_assert_int_eq(bus_register(&bus, 0xf0, 0x11, probe_io, &a, "third"), -1);
    ck_assert_int_eq(bus_register(&bus, 0x200, 0, probe_io, &a, "empty"), -1);
    ck_assert_int_eq(bus_register(&bus, UINT64_MAX - 1, 4, probe_io, &a, "wraps"), -1);
    /* Adjacent ranges are fine. */
    ck_assert_int_eq(bus_register(&bus, 0x110, 1, probe_io, &a, "next"), 0);
    ck_assert_int_eq(bus_register(&bus, 0xff, 1, probe_io, &a, "before"), 0);
    bus_destroy(&bus);
}
END_TEST

START_TEST(many_ranges_and_unregister)
{
    struct bus bus;
    static struct probe probes[200];
    bus_init(&bus, "test");
    for (unsigned i = 0; i < 200; i++) {
        unsigned slot = (i * 37) % 200; /* scrambled order */
        probes[slot] = (struct probe){.value = (uint8_t)slot};
        ck_assert_int_eq(
            bus_register(&bus, 0x1000 + slot * 0x10, 0x8, probe_io, &probes[slot], "p"), 0);
    }
    for (unsigned i = 0; i < 200; i++) {
        uint8_t v = 0;
        ck_assert(bus_dispatch(&bus, 0x1000 + i * 0x10 + 3, &v, 1, false));
        ck_assert_uint_eq(v, (uint8_t)i);
        uint8_t gap;
        ck_assert(!bus_dispatch(&bus, 0x1000 + i * 0x10 + 8, &gap, 1, false));
    }
    ck_assert_int_eq(bus_unregister(&bus, 0x1000 + 50 * 0x10, &probes[50]), 0);
    uint8_t v;
    ck_assert(!bus_dispatch(&bus, 0x1000 + 50 * 0x10, &v, 1, false));
    ck_assert(bus_dispatch(&bus, 0x1000 + 51 * 0x10, &v, 1, false));
    ck_assert_int_eq(bus_unregister(&bus, 0x1000 + 50 * 0x10, &probes[50]), -1);
    bus_destroy(&bus);
}
END_TEST

Suite *bus_suite(void)
{
    Suite *s = suite_create("bus");
    TCase *t = tcase_create("dispatch");
    tcase_add_test(t, dispatch_finds_range_and_offset);
    tcase_add_test(t, unhandled_reads_all_ones);
    tcase_add_test(t, overlaps_and_bad_ranges_rejected);
    tcase_add_test(t, many_ranges_and_unregister);
    suite_add_tcase(s, t);
    return s;
}
