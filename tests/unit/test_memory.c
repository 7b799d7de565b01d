#include "arch/x86/layout.h"
#include "suites.h"
#include "vmm/memory.h"

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)

START_TEST(small_guest_is_one_region)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 128 * MIB, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    ck_assert_uint_eq(m.nregions, 1);
    ck_assert_ptr_eq(gpa_to_hva(&m, 0, 1), m.base);
    ck_assert_ptr_eq(gpa_to_hva(&m, 128 * MIB - 8, 8), m.base + 128 * MIB - 8);
    ck_assert_ptr_null(gpa_to_hva(&m, 128 * MIB - 8, 9)); /* one byte past the end */
    ck_assert_ptr_null(gpa_to_hva(&m, 128 * MIB, 1));
    ck_assert_ptr_null(gpa_to_hva(&m, UINT64_MAX, 2));  /* wraps */
    ck_assert_ptr_null(gpa_to_hva(&m, 16, UINT64_MAX)); /* absurd length */
    uint32_t v = 0x12345678, back = 0;
    ck_assert_int_eq(guest_write(&m, 0x1000, &v, 4), 0);
    ck_assert_int_eq(guest_read(&m, 0x1000, &back, 4), 0);
    ck_assert_uint_eq(back, v);
    ck_assert_int_eq(guest_write(&m, 128 * MIB - 2, &v, 4), -1);
    guest_memory_free(&m);
}
END_TEST

START_TEST(large_guest_splits_around_hole)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 6 * GIB, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    ck_assert_uint_eq(m.nregions, 2);
    ck_assert_uint_eq(m.regions[0].size, LAYOUT_MMIO_HOLE_START);
    ck_assert_uint_eq(m.regions[1].gpa, LAYOUT_MMIO_HOLE_END);
    ck_assert_uint_eq(m.regions[1].size, 6 * GIB - LAYOUT_MMIO_HOLE_START);
    ck_assert_ptr_null(gpa_to_hva(&m, LAYOUT_MMIO_HOLE_START, 1));     /* the hole is no RAM */
    ck_assert_ptr_null(gpa_to_hva(&m, LAYOUT_MMIO_HOLE_START - 4, 8)); /* straddles into it */
    ck_assert_ptr_eq(gpa_to_hva(&m, LAYOUT_MMIO_HOLE_END, 1), m.base + LAYOUT_MMIO_HOLE_START);
    ck_assert_uint_eq(guest_region_end(&m, 5 * GIB), LAYOUT_MMIO_HOLE_END + m.regions[1].size);
    ck_assert_uint_eq(guest_region_end(&m, LAYOUT_MMIO_HOLE_START + 5), 0);
    guest_memory_free(&m);
}
END_TEST

Suite *memory_suite(void)
{
    Suite *s = suite_create("memory");
    TCase *t = tcase_create("layout");
    tcase_add_test(t, small_guest_is_one_region);
    tcase_add_test(t, large_guest_splits_around_hole);
    suite_add_tcase(s, t);
    return s;
}
