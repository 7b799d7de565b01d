#include "devices/boot_timer.h"
#include "devices/debug_exit.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 2026-11-25 13:45:56 UTC, a Wednesday. */
static time_t fixed_now(void)
{
    return 1795614356;
}

static uint8_t cmos_read(struct rtc *r, uint8_t reg)
{
    uint8_t v = reg;
    rtc_io(r, 0, &v, 1, true);
    rtc_io(r, 1, &v, 1, false);
    return v;
}

static void cmos_write(struct rtc *r, uint8_t reg, uint8_t v)
{
    rtc_io(r, 0, &reg, 1, true);
    rtc_io(r, 1, &v, 1, true);
}

START_TEST(rtc_reads_host_time_in_bcd_and_binary)
{
    struct rtc r;
    rtc_init(&r, 128 << 20, 0);
    r.now = fixed_now;
    ck_assert_uint_eq(cmos_read(&r, 0x00), 0x56);
    ck_assert_uint_eq(cmos_read(&r, 0x02), 0x45);
    ck_assert_uint_eq(cmos_read(&r, 0x04), 0x13);
    ck_assert_uint_eq(cmos_read(&r, 0x06), 4); /* Wednesday = 4 (Sunday = 1) */
    ck_assert_uint_eq(cmos_read(&r, 0x07), 0x25);
    ck_assert_uint_eq(cmos_read(&r, 0x08), 0x11);
    ck_assert_uint_eq(cmos_read(&r, 0x09), 0x26);
    ck_assert_uint_eq(cmos_read(&r, 0x32), 0x20);
    ck_assert_uint_eq(cmos_read(&r, 0x0a) & 0x80, 0); /* no update in progress */
    ck_assert_uint_eq(cmos_read(&r, 0x0d), 0x80);     /* time valid */
    cmos_write(&r, 0x0b, 0x06);                       /* binary, 24 h */
    ck_assert_uint_eq(cmos_read(&r, 0x00), 56);
    ck_assert_uint_eq(cmos_read(&r, 0x04), 13);
    cmos_write(&r, 0x0b, 0x04); /* binary, 12 h: 1 PM */
    ck_assert_uint_eq(cmos_read(&r, 0x04), 0x80 | 1);
    /* Extended memory above 1 MiB in KiB, capped at 0xffff; memory above
     * 16 MiB in 64 KiB units. */
    ck_assert_uint_eq(cmos_read(&r, 0x30) | cmos_read(&r, 0x31) << 8, 0xffff);
    ck_assert_uint_eq(cmos_read(&r, 0x34) | cmos_read(&r, 0x35) << 8, (128 - 16) * 16);
    struct rtc small;
    rtc_init(&small, 32 << 20, 0);
    ck_assert_uint_eq(cmos_read(&small, 0x30) | cmos_read(&small, 0x31) << 8, 31 * 1024);
}
END_TEST

START_TEST(rtc_guest_sets_time_as_offset)
{
    struct rtc r;
    rtc_init(&r, 128 << 20, 0);
    r.now = fixed_now;
    cmos_write(&r, 0x09, 0x30); /* year 2030 in BCD */
    ck_assert_uint_eq(cmos_read(&r, 0x09), 0x30);
    ck_assert_uint_eq(cmos_read(&r, 0x08), 0x11);
    ck_assert_int_gt(r.offset, 3 * 365 * 86400);
    cmos_write(&r, 0x00, 0x99); /* invalid BCD seconds: ignored */
    ck_assert_uint_eq(cmos_read(&r, 0x00), 0x56);
    cmos_write(&r, 0x20, 0xab); /* plain CMOS RAM */
    ck_assert_uint_eq(cmos_read(&r, 0x20), 0xab);
    /* Index port ignores the NMI-mask bit. */
    cmos_write(&r, 0x80 | 0x20, 0xcd);
    ck_assert_uint_eq(cmos_read(&r, 0x20), 0xcd);
}
END_TEST

static int resets;
static void count_reset(void *opaque)
{
    (void)opaque;
    resets++;
}

START_TEST(i8042_reset_paths)
{
    struct i8042 c;
    resets = 0;
    i8042_init(&c, count_reset, NULL);
    uint8_t v = 0;
    i8042_command_io(&c, 0, &v, 1, false);
    ck_assert_uint_eq(v & 0x02, 0); /* input buffer never full */
    v = 0xaa;
    i8042_command_io(&c, 0, &v, 1, true);
    i8042_command_io(&c, 0, &v, 1, false);
    ck_assert_uint_eq(v & 0x01, 0x01);
    i8042_data_io(&c, 0, &v, 1, false);
    ck_assert_uint_eq(v, 0x55);
    ck_assert_int_eq(resets, 0);
    v = 0xfe; /* pulse reset line */
    i8042_command_io(&c, 0, &v, 1, true);
    ck_assert_int_eq(resets, 1);
    v = 0xd1; /* write output port with reset bit low */
    i8042_command_io(&c, 0, &v, 1, true);
    v = 0x00;
    i8042_data_io(&c, 0, &v, 1, true);
    ck_assert_int_eq(resets, 2);
    v = 0xd1; /* ... or high: no reset */
    i8042_command_io(&c, 0, &v, 1, true);
    v = 0x01;
    i8042_data_io(&c, 0, &v, 1, true);
    ck_assert_int_eq(resets, 2);
    uint32_t wide = 0xfe; /* only byte accesses count */
    i8042_command_io(&c, 0, (uint8_t *)&wide, 4, true);
    ck_assert_int_eq(resets, 2);
}
END_TEST

static int exit_status = -1;
static void record_exit(void *opaque, int status)
{
    (void)opaque;
    exit_status = status;
}

START_TEST(debug_exit_statuses)
{
    ck_assert_int_eq(debug_exit_status(0), 1);
    ck_assert_int_eq(debug_exit_status(1), 3);
    ck_assert_int_eq(debug_exit_status(0x10), 0x21);
    ck_assert_int_eq(debug_exit_status(0x80), 1); /* only 8 bits survive exit() */
    struct debug_exit d = {record_exit, NULL};
    uint8_t two[2] = {0x05, 0x00};
    debug_exit_io(&d, 0, two, 2, true);
    ck_assert_int_eq(exit_status, 11);
    uint8_t r[4] = {9, 9, 9, 9};
    debug_exit_io(&d, 0, r, 4, false);
    ck_assert_uint_eq(r[0], 0);
}
END_TEST

/* Firecracker's boot timer: only the byte 123 at offset 0 logs, in the shape Firecracker's
 * boot-time test reads. */
START_TEST(boot_timer_logs_the_magic_byte_only)
{
    char line[128];
    boot_timer_format(line, sizeof(line), 1234567, 8901);
    ck_assert_str_eq(line, "Guest-boot-time = 1234567 us 1234 ms,   8901 CPU us 8 CPU ms");
    char path[] = "/tmp/ember-unit-boot-timer-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(log_open(path), 0);
    enum log_level old = log_get_level();
    log_set_level(LOG_INFO);
    struct boot_timer t;
    boot_timer_init(&t);
    uint8_t b = BOOT_TIMER_MAGIC + 1;
    boot_timer_io(&t, 0, &b, 1, true); /* another value */
    b = BOOT_TIMER_MAGIC;
    boot_timer_io(&t, 1, &b, 1, true); /* another offset */
    uint8_t wide[4] = {BOOT_TIMER_MAGIC};
    boot_timer_io(&t, 0, wide, 4, true); /* another width */
    uint8_t r[4] = {1, 2, 3, 4};
    boot_timer_io(&t, 0, r, 4, false);
    ck_assert(r[0] == 0 && r[3] == 0); /* reads as zero */
    boot_timer_io(&t, 0, &b, 1, true);
    log_set_level(old);
    log_close();
    char text[1024] = {0};
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    unlink(path);
    text[n] = '\0';
    char *first = strstr(text, "Guest-boot-time = ");
    ck_assert_ptr_nonnull(first);
    ck_assert_ptr_null(strstr(first + 1, "Guest-boot-time"));
}
END_TEST

Suite *legacy_suite(void)
{
    Suite *s = suite_create("legacy");
    TCase *t = tcase_create("devices");
    tcase_add_test(t, rtc_reads_host_time_in_bcd_and_binary);
    tcase_add_test(t, rtc_guest_sets_time_as_offset);
    tcase_add_test(t, i8042_reset_paths);
    tcase_add_test(t, debug_exit_statuses);
    tcase_add_test(t, boot_timer_logs_the_magic_byte_only);
    suite_add_tcase(s, t);
    return s;
}
