#include "suites.h"
#include "snapshot/format.h"
#include "util/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Header fields' offsets, as docs/snapshot-format.md lays them out. */
#define OFF_VERSION   8
#define OFF_COUNT     12
#define OFF_SIZE      16
#define OFF_TABLE     24
#define ENTRY_SIZE    48
#define ENTRY_OFF_OFF 32
#define ENTRY_LEN_OFF 40

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrites the trailer so a deliberately edited file passes the checksum and reaches the
 * check the test is after. */
static void reseal(uint8_t *buf, size_t len)
{
    put_le(buf + len - 8, snapshot_crc64(0, buf, len - 8), 8);
}

/* A file with two sections of every field type. */
static uint8_t *sample(size_t *len)
{
    struct snapshot_writer *w = snapshot_writer_new();
    ck_assert_ptr_nonnull(w);
    snapshot_begin_section(w, "machine-config");
    snapshot_put_u8(w, 0xa5);
    snapshot_put_u16(w, 0xbeef);
    snapshot_put_u32(w, 0xdeadbeef);
    snapshot_put_u64(w, 0x0123456789abcdefull);
    snapshot_put_string(w, "ember");
    snapshot_begin_section(w, "vcpu.0");
    uint8_t regs[37];
    for (size_t i = 0; i < sizeof(regs); i++)
        regs[i] = (uint8_t)(i * 7);
    snapshot_put_bytes(w, regs, sizeof(regs));
    snapshot_put_string(w, "");
    snapshot_begin_section(w, "device.blk0"); /* empty sections are allowed */
    uint8_t *buf;
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, len), 0);
    snapshot_writer_free(w);
    return buf;
}

static void assert_refused(const uint8_t *buf, size_t len, const char *needle)
{
    error_clear();
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    if (r)
        ck_abort_msg("a file expected to be refused (%s) was accepted", needle);
    ck_assert_msg(strstr(error_get(), needle), "error \"%s\" lacks \"%s\"", error_get(), needle);
}

START_TEST(crc64_matches_the_published_check_value)
{
    /* CRC-64/XZ's check value, as the CRC catalogue lists it. */
    ck_assert_uint_eq(snapshot_crc64(0, "123456789", 9), 0x995dc9bbdf1939faull);
    /* Chaining over pieces gives the same as one pass. */
    ck_assert_uint_eq(snapshot_crc64(snapshot_crc64(0, "1234", 4), "56789", 5),
                      0x995dc9bbdf1939faull);
}
END_TEST

START_TEST(round_trip)
{
    size_t len;
    uint8_t *buf = sample(&len);
    ck_assert_int_eq(memcmp(buf, SNAPSHOT_MAGIC, 8), 0);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_msg(r, "%s", error_get());
    ck_assert_uint_eq(snapshot_reader_version(r), SNAPSHOT_FORMAT_VERSION);
    ck_assert_uint_eq(snapshot_reader_section_count(r), 3);
    ck_assert_str_eq(snapshot_reader_section_name(r, 0), "machine-config");
    ck_assert_str_eq(snapshot_reader_section_name(r, 2), "device.blk0");
    ck_assert_uint_eq(snapshot_reader_section_length(r, 2), 0);
    ck_assert_ptr_null(snapshot_reader_section_name(r, 3));
    ck_assert(snapshot_reader_has_section(r, "vcpu.0"));
    ck_assert(!snapshot_reader_has_section(r, "vcpu.1"));

    /* Sections are read in any order. */
    struct snapshot_cursor c;
    ck_assert_int_eq(snapshot_section(r, "vcpu.0", &c), 0);
    uint8_t regs[37];
    ck_assert_int_eq(snapshot_get_bytes(&c, regs, sizeof(regs)), 0);
    for (size_t i = 0; i < sizeof(regs); i++)
        ck_assert_uint_eq(regs[i], (uint8_t)(i * 7));
    char s[8];
    ck_assert_int_eq(snapshot_get_string(&c, s, sizeof(s)), 0);
    ck_assert_str_eq(s, "");
    ck_assert_int_eq(snapshot_section_end(&c), 0);

    ck_assert_int_eq(snapshot_section(r, "machine-config", &c), 0);
    uint8_t a;
    uint16_t b;
    uint32_t d;
    uint64_t e;
    ck_assert_int_eq(snapshot_get_u8(&c, &a), 0);
    ck_assert_int_eq(snapshot_get_u16(&c, &b), 0);
    ck_assert_int_eq(snapshot_get_u32(&c, &d), 0);
    ck_assert_int_eq(snapshot_get_u64(&c, &e), 0);
    ck_assert_int_eq(snapshot_get_string(&c, s, sizeof(s)), 0);
    ck_assert_uint_eq(a, 0xa5);
    ck_assert_uint_eq(b, 0xbeef);
    ck_assert_uint_eq(d, 0xdeadbeef);
    ck_assert_uint_eq(e, 0x0123456789abcdefull);
    ck_assert_str_eq(s, "ember");
    ck_assert_int_eq(snapshot_section_end(&c), 0);

    ck_assert_int_eq(snapshot_section(r, "device.blk0", &c), 0);
    ck_assert_int_eq(snapshot_section_end(&c), 0);
    snapshot_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(fields_are_little_endian_and_typed)
{
    size_t len;
    uint8_t *buf = sample(&len);
    /* The first section follows a three-entry table; its first fields are u8 0xa5 and
     * u16 0xbeef, each behind its type byte. */
    const uint8_t *sec = buf + OFF_TABLE + 3 * ENTRY_SIZE;
    const uint8_t want[] = {SNAPSHOT_FIELD_U8, 0xa5, SNAPSHOT_FIELD_U16, 0xef, 0xbe};
    ck_assert_int_eq(memcmp(sec, want, sizeof(want)), 0);
    ck_assert_uint_eq(buf[OFF_VERSION], SNAPSHOT_FORMAT_VERSION);
    ck_assert_uint_eq(buf[OFF_SIZE] | (size_t)buf[OFF_SIZE + 1] << 8, len);
    free(buf);
}
END_TEST

START_TEST(reads_fail_cleanly_and_stay_failed)
{
    size_t len;
    uint8_t *buf = sample(&len);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_ptr_nonnull(r);
    struct snapshot_cursor c;
    uint32_t v32;
    uint8_t v8;

    /* The wrong type: a u32 asked where a u8 lies. */
    ck_assert_int_eq(snapshot_section(r, "machine-config", &c), 0);
    error_clear();
    ck_assert_int_eq(snapshot_get_u32(&c, &v32), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "u32 wanted, u8 found"));
    ck_assert_ptr_nonnull(strstr(error_get(), "machine-config"));
    /* Once failed, every later read fails, even one that would have matched. */
    ck_assert_int_eq(snapshot_get_u8(&c, &v8), -1);
    ck_assert_int_eq(snapshot_section_end(&c), -1);

    /* Past the end of an empty section. */
    ck_assert_int_eq(snapshot_section(r, "device.blk0", &c), 0);
    error_clear();
    ck_assert_int_eq(snapshot_get_u8(&c, &v8), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "past the section's end"));

    /* A byte field of another size than the one stored. */
    ck_assert_int_eq(snapshot_section(r, "vcpu.0", &c), 0);
    uint8_t big[64];
    ck_assert_int_eq(snapshot_get_bytes(&c, big, sizeof(big)), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "64 bytes wanted, 37 found"));

    /* A string longer than the caller's buffer. */
    ck_assert_int_eq(snapshot_section(r, "machine-config", &c), 0);
    ck_assert_int_eq(snapshot_get_u8(&c, &v8), 0);
    uint16_t v16;
    uint64_t v64;
    ck_assert_int_eq(snapshot_get_u16(&c, &v16), 0);
    ck_assert_int_eq(snapshot_get_u32(&c, &v32), 0);
    ck_assert_int_eq(snapshot_get_u64(&c, &v64), 0);
    char small[5];
    ck_assert_int_eq(snapshot_get_string(&c, small, sizeof(small)), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "does not fit"));

    /* Fields left unread. */
    ck_assert_int_eq(snapshot_section(r, "machine-config", &c), 0);
    ck_assert_int_eq(snapshot_get_u8(&c, &v8), 0);
    ck_assert_int_eq(snapshot_section_end(&c), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "left unread"));

    /* A missing section is named. */
    ck_assert_int_eq(snapshot_section(r, "device.net0", &c), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "no section \"device.net0\""));
    ck_assert_int_eq(snapshot_get_u8(&c, &v8), -1);
    snapshot_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(every_flipped_byte_is_refused)
{
    size_t len;
    uint8_t *buf = sample(&len);
    for (size_t i = 0; i < len; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            buf[i] ^= (uint8_t)(1u << bit);
            struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
            ck_assert_msg(!r, "byte %zu bit %u flipped and accepted", i, bit);
            buf[i] ^= (uint8_t)(1u << bit);
        }
    }
    free(buf);
}
END_TEST

START_TEST(every_truncation_is_refused)
{
    size_t len;
    uint8_t *buf = sample(&len);
    for (size_t n = 0; n < len; n++) {
        /* A copy of exactly n bytes, so ASan sees any read past it. */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        struct snapshot_reader *r = snapshot_reader_open(cut, n, SNAPSHOT_FILE_MAX);
        ck_assert_msg(!r, "file cut to %zu of %zu bytes accepted", n, len);
        free(cut);
    }
    /* Past the magic, the message says what happened. */
    assert_refused(buf, len - 1, "truncated");
    free(buf);
}
END_TEST

START_TEST(wrong_magic_and_version_are_named)
{
    size_t len;
    uint8_t *buf = sample(&len);
    buf[0] = 'X';
    assert_refused(buf, len, "not an ember snapshot");
    buf[0] = SNAPSHOT_MAGIC[0];
    put_le(buf + OFF_VERSION, SNAPSHOT_FORMAT_VERSION + 1, 4);
    reseal(buf, len);
    char want[96];
    snprintf(want, sizeof(want), "format version %u is not supported (this ember reads version %u)",
             SNAPSHOT_FORMAT_VERSION + 1, SNAPSHOT_FORMAT_VERSION);
    assert_refused(buf, len, want);
    /* The version is checked before the checksum: a file from another version is reported
     * as such, not as corrupt. */
    buf[len - 1] ^= 1;
    assert_refused(buf, len, want);
    free(buf);
}
END_TEST

START_TEST(checksum_mismatch_is_named)
{
    size_t len;
    uint8_t *buf = sample(&len);
    buf[len / 2] ^= 0x40;
    assert_refused(buf, len, "checksum mismatch");
    free(buf);
}
END_TEST

START_TEST(size_cap_is_enforced)
{
    size_t len;
    uint8_t *buf = sample(&len);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, len - 1);
    ck_assert_ptr_null(r);
    ck_assert_ptr_nonnull(strstr(error_get(), "more than the"));
    r = snapshot_reader_open(buf, len, len);
    ck_assert_ptr_nonnull(r);
    snapshot_reader_free(r);

    /* Reading from a file refuses one over the cap before reading it. */
    char path[] = "/tmp/ember-snapfmt-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
    uint8_t *back;
    size_t back_len;
    ck_assert_int_eq(snapshot_read_fd(fd, len - 1, &back, &back_len), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "more than the"));
    ck_assert_int_eq(snapshot_read_fd(fd, SNAPSHOT_FILE_MAX, &back, &back_len), 0);
    ck_assert_uint_eq(back_len, len);
    ck_assert_int_eq(memcmp(back, buf, len), 0);
    free(back);
    close(fd);
    free(buf);
}
END_TEST

START_TEST(write_fd_then_read_fd)
{
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_begin_section(w, "vm");
    snapshot_put_u64(w, 42);
    char path[] = "/tmp/ember-snapfmt-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    ck_assert_int_eq(snapshot_writer_write_fd(w, fd), 0);
    snapshot_writer_free(w);
    ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(snapshot_read_fd(fd, SNAPSHOT_FILE_MAX, &buf, &len), 0);
    close(fd);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_msg(r, "%s", error_get());
    struct snapshot_cursor c;
    uint64_t v;
    ck_assert_int_eq(snapshot_section(r, "vm", &c), 0);
    ck_assert_int_eq(snapshot_get_u64(&c, &v), 0);
    ck_assert_uint_eq(v, 42);
    ck_assert_int_eq(snapshot_section_end(&c), 0);
    snapshot_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(bad_section_tables_are_refused)
{
    size_t len;
    uint8_t *buf = sample(&len);
    uint8_t *copy = malloc(len);

    /* A section length reaching past the file. */
    memcpy(copy, buf, len);
    put_le(copy + OFF_TABLE + ENTRY_LEN_OFF, 1ull << 62, 8);
    reseal(copy, len);
    assert_refused(copy, len, "is not where the table says");

    /* An offset pointing back into the table. */
    memcpy(copy, buf, len);
    put_le(copy + OFF_TABLE + ENTRY_SIZE + ENTRY_OFF_OFF, 0, 8);
    reseal(copy, len);
    assert_refused(copy, len, "is not where the table says");

    /* A section count the file cannot hold, and one over the limit. */
    memcpy(copy, buf, len);
    put_le(copy + OFF_COUNT, 1000, 4);
    reseal(copy, len);
    assert_refused(copy, len, "runs past the file");
    put_le(copy + OFF_COUNT, 0xffffffffu, 4);
    reseal(copy, len);
    assert_refused(copy, len, "more than");

    /* Duplicate names: the third entry renamed like the first. */
    memcpy(copy, buf, len);
    memset(copy + OFF_TABLE + 2 * ENTRY_SIZE, 0, 32);
    memcpy(copy + OFF_TABLE + 2 * ENTRY_SIZE, "machine-config", 14);
    reseal(copy, len);
    assert_refused(copy, len, "appears twice");

    /* A name with a character outside the allowed set, and garbage after its NUL. */
    memcpy(copy, buf, len);
    copy[OFF_TABLE] = '/';
    reseal(copy, len);
    assert_refused(copy, len, "bad name");
    memcpy(copy, buf, len);
    copy[OFF_TABLE + 31] = 'x';
    reseal(copy, len);
    assert_refused(copy, len, "bad name");

    /* A field whose length runs past its section, and an unknown field type. */
    memcpy(copy, buf, len);
    uint8_t *vcpu = copy + OFF_TABLE + 3 * ENTRY_SIZE + 1 + 1 + 1 + 2 + 1 + 4 + 1 + 8 + 5 + 5;
    ck_assert_uint_eq(vcpu[0], SNAPSHOT_FIELD_BYTES);
    put_le(vcpu + 1, 48, 4); /* the section holds 47 bytes */
    reseal(copy, len);
    assert_refused(copy, len, "runs past its end");
    memcpy(copy, buf, len);
    vcpu[0] = 0x77;
    reseal(copy, len);
    assert_refused(copy, len, "unknown field type");

    /* The declared size disagrees with the file's (bytes appended). */
    uint8_t *longer = calloc(1, len + 8);
    memcpy(longer, buf, len);
    assert_refused(longer, len + 8, "trailing bytes");
    free(longer);
    free(copy);
    free(buf);
}
END_TEST

START_TEST(writer_refuses_bad_use)
{
    uint8_t *buf;
    size_t len;
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_put_u8(w, 1);
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "before any section"));
    snapshot_writer_free(w);

    w = snapshot_writer_new();
    snapshot_begin_section(w, "vm");
    snapshot_begin_section(w, "vm");
    /* The first failure is the one reported, whatever follows it. */
    snapshot_begin_section(w, "bad name");
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "\"vm\" written twice"));
    snapshot_writer_free(w);

    w = snapshot_writer_new();
    snapshot_begin_section(w, "a-name-of-thirty-two-characters!");
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "bad section name"));
    snapshot_writer_free(w);

    /* The longest name allowed round-trips. */
    w = snapshot_writer_new();
    snapshot_begin_section(w, "a-name-of-thirty-one-characters");
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), 0);
    snapshot_writer_free(w);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_msg(r, "%s", error_get());
    ck_assert(snapshot_reader_has_section(r, "a-name-of-thirty-one-characters"));
    snapshot_reader_free(r);
    free(buf);

    /* A file with no sections at all is well-formed; what it must contain is the
     * orchestration's business. */
    w = snapshot_writer_new();
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), 0);
    snapshot_writer_free(w);
    r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(snapshot_reader_section_count(r), 0);
    snapshot_reader_free(r);
    free(buf);
}
END_TEST

START_TEST(string_with_a_nul_is_refused)
{
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_begin_section(w, "s");
    snapshot_put_bytes(w, "ab\0cd", 5);
    uint8_t *buf;
    size_t len;
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, &len), 0);
    snapshot_writer_free(w);
    /* Stored as bytes: retyped as a string, it must still be refused for its NUL. */
    uint8_t *field = buf + OFF_TABLE + ENTRY_SIZE;
    ck_assert_uint_eq(field[0], SNAPSHOT_FIELD_BYTES);
    field[0] = SNAPSHOT_FIELD_STRING;
    reseal(buf, len);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_ptr_nonnull(r);
    struct snapshot_cursor c;
    char s[16];
    ck_assert_int_eq(snapshot_section(r, "s", &c), 0);
    ck_assert_int_eq(snapshot_get_string(&c, s, sizeof(s)), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "holds a NUL"));
    snapshot_reader_free(r);
    free(buf);
}
END_TEST

Suite *snapshot_format_suite(void)
{
    Suite *s = suite_create("snapshot_format");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, crc64_matches_the_published_check_value);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, fields_are_little_endian_and_typed);
    tcase_add_test(tc, reads_fail_cleanly_and_stay_failed);
    tcase_add_test(tc, every_flipped_byte_is_refused);
    tcase_add_test(tc, every_truncation_is_refused);
    tcase_add_test(tc, wrong_magic_and_version_are_named);
    tcase_add_test(tc, checksum_mismatch_is_named);
    tcase_add_test(tc, size_cap_is_enforced);
    tcase_add_test(tc, write_fd_then_read_fd);
    tcase_add_test(tc, bad_section_tables_are_refused);
    tcase_add_test(tc, writer_refuses_bad_use);
    tcase_add_test(tc, string_with_a_nul_is_refused);
    suite_add_tcase(s, tc);
    return s;
}
