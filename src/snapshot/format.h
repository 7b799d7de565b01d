/* ember's snapshot file format: a header, a table of named sections and a CRC-64 trailer
 * (docs/snapshot-format.md). Each section is a stream of typed fields that one device or
 * vCPU writes and reads back in the same order. This module knows nothing of KVM or of
 * devices: it builds and checks files; the snapshot orchestration decides what goes in them.
 *
 * Writing: sections are opened in turn and filled with snapshot_put_*; any failure is kept
 * (later puts do nothing) and reported once by snapshot_writer_finish.
 * Reading: snapshot_reader_open validates the whole file (magic, version, size, section
 * table, checksum) before a single field is handed out; each snapshot_get_* checks the
 * field's type and the section's end and, once one fails, so does every later one. */
#ifndef EMBER_SNAPSHOT_FORMAT_H
#define EMBER_SNAPSHOT_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SNAPSHOT_MAGIC          "EMBERSNP"
#define SNAPSHOT_FORMAT_VERSION 1u
/* A section name: 1..31 characters of [A-Za-z0-9._-]. */
#define SNAPSHOT_NAME_MAX     31
#define SNAPSHOT_SECTIONS_MAX 4096
/* Device and vCPU state only (guest memory goes to its own file): a few hundred KiB at
 * most, so anything past this bound is refused before it is read. */
#define SNAPSHOT_FILE_MAX (64u << 20)

/* Field types, written in front of each field so a reader that reads fields in another
 * order than they were written fails at the first one instead of reading garbage. */
enum snapshot_field_type {
    SNAPSHOT_FIELD_U8 = 1,
    SNAPSHOT_FIELD_U16 = 2,
    SNAPSHOT_FIELD_U32 = 3,
    SNAPSHOT_FIELD_U64 = 4,
    SNAPSHOT_FIELD_BYTES = 5,
    SNAPSHOT_FIELD_STRING = 6,
};

struct snapshot_writer;

struct snapshot_writer *snapshot_writer_new(void);
void snapshot_writer_free(struct snapshot_writer *w);
/* Starts a new section; later puts go to it. A bad or repeated name fails the writer. */
void snapshot_begin_section(struct snapshot_writer *w, const char *name);
void snapshot_put_u8(struct snapshot_writer *w, uint8_t v);
void snapshot_put_u16(struct snapshot_writer *w, uint16_t v);
void snapshot_put_u32(struct snapshot_writer *w, uint32_t v);
void snapshot_put_u64(struct snapshot_writer *w, uint64_t v);
void snapshot_put_bytes(struct snapshot_writer *w, const void *data, size_t len);
/* A NUL-terminated string, stored without its NUL. */
void snapshot_put_string(struct snapshot_writer *w, const char *s);
/* Builds the file into a new malloc'd buffer (*out, *out_len; the caller frees it).
 * Returns -1 with the writer's first error if any put failed. */
int snapshot_writer_finish(struct snapshot_writer *w, uint8_t **out, size_t *out_len);
/* Builds the file and writes all of it to fd. */
int snapshot_writer_write_fd(struct snapshot_writer *w, int fd);

/* Reads a whole snapshot file from fd into a new malloc'd buffer, refusing one larger than
 * max_size (at most SNAPSHOT_FILE_MAX) before reading it. */
int snapshot_read_fd(int fd, size_t max_size, uint8_t **out, size_t *out_len);

struct snapshot_reader;

/* Validates data[0..len) and returns a reader over it (data is borrowed and must outlive
 * the reader), or NULL with the reason in error_get(). */
struct snapshot_reader *snapshot_reader_open(const uint8_t *data, size_t len, size_t max_size);
void snapshot_reader_free(struct snapshot_reader *r);
uint32_t snapshot_reader_version(const struct snapshot_reader *r);
size_t snapshot_reader_section_count(const struct snapshot_reader *r);
/* The i-th section's name and length, in file order (for --describe-snapshot). */
const char *snapshot_reader_section_name(const struct snapshot_reader *r, size_t i);
size_t snapshot_reader_section_length(const struct snapshot_reader *r, size_t i);
bool snapshot_reader_has_section(const struct snapshot_reader *r, const char *name);

/* A read position in one section. Its fields are the format module's; callers keep it on
 * their stack and pass it to snapshot_get_*. */
struct snapshot_cursor {
    const uint8_t *data;
    size_t len;
    size_t pos;
    bool failed;
    char name[SNAPSHOT_NAME_MAX + 1];
};

/* Opens the named section; a missing one is an error naming it. */
int snapshot_section(const struct snapshot_reader *r, const char *name, struct snapshot_cursor *c);
int snapshot_get_u8(struct snapshot_cursor *c, uint8_t *v);
int snapshot_get_u16(struct snapshot_cursor *c, uint16_t *v);
int snapshot_get_u32(struct snapshot_cursor *c, uint32_t *v);
int snapshot_get_u64(struct snapshot_cursor *c, uint64_t *v);
/* A byte field of exactly len bytes (state structures have a fixed size). */
int snapshot_get_bytes(struct snapshot_cursor *c, void *dst, size_t len);
/* A string field that fits in cap bytes with its NUL and holds no NUL of its own. */
int snapshot_get_string(struct snapshot_cursor *c, char *dst, size_t cap);
/* Fails if the section holds fields nobody read (a writer newer than its reader). */
int snapshot_section_end(struct snapshot_cursor *c);

/* CRC-64/XZ (ECMA-182 polynomial, reflected, initial and final value all ones). */
uint64_t snapshot_crc64(uint64_t crc, const void *data, size_t len);

#endif
