/* Snapshot file format: writer, validating reader and CRC-64 (docs/snapshot-format.md). */
#include "snapshot/format.h"
#include "util/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_SIZE      24 /* magic[8], version u32, section count u32, file size u64 */
#define NAME_FIELD_SIZE  32 /* NUL-padded name */
#define TABLE_ENTRY_SIZE (NAME_FIELD_SIZE + 16) /* name, offset u64, length u64 */
#define TRAILER_SIZE     8                      /* CRC-64 of every byte before it */

/* ---- little-endian helpers ---- */

static void store_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t load_le(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---- CRC-64/XZ ---- */

static uint64_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
    for (unsigned n = 0; n < 256; n++) {
        uint64_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xc96c5795d7870f42ull : c >> 1;
        crc_table[n] = c;
    }
}

uint64_t snapshot_crc64(uint64_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_table_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- section names ---- */

static bool name_valid(const char *name, size_t len)
{
    if (len == 0 || len > SNAPSHOT_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* ---- writer ---- */

struct section_buf {
    char name[SNAPSHOT_NAME_MAX + 1];
    uint8_t *data;
    size_t len, cap;
};

struct snapshot_writer {
    struct section_buf *sections;
    size_t count, cap;
    bool failed;
    char error[192]; /* the first failure, reported by finish */
};

__attribute__((format(printf, 2, 3))) static void writer_fail(struct snapshot_writer *w,
                                                              const char *fmt, ...)
{
    if (w->failed)
        return;
    w->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof(w->error), fmt, ap);
    va_end(ap);
}

struct snapshot_writer *snapshot_writer_new(void)
{
    struct snapshot_writer *w = calloc(1, sizeof(*w));
    if (!w)
        error_set("snapshot: out of memory");
    return w;
}

void snapshot_writer_free(struct snapshot_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++)
        free(w->sections[i].data);
    free(w->sections);
    free(w);
}

void snapshot_begin_section(struct snapshot_writer *w, const char *name)
{
    if (w->failed)
        return;
    size_t len = strnlen(name, SNAPSHOT_NAME_MAX + 1);
    if (!name_valid(name, len)) {
        writer_fail(w, "snapshot: bad section name \"%.40s\"", name);
        return;
    }
    for (size_t i = 0; i < w->count; i++) {
        if (strcmp(w->sections[i].name, name) == 0) {
            writer_fail(w, "snapshot: section \"%s\" written twice", name);
            return;
        }
    }
    if (w->count == SNAPSHOT_SECTIONS_MAX) {
        writer_fail(w, "snapshot: more than %u sections", SNAPSHOT_SECTIONS_MAX);
        return;
    }
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct section_buf *s = realloc(w->sections, cap * sizeof(*s));
        if (!s) {
            writer_fail(w, "snapshot: out of memory");
            return;
        }
        w->sections = s;
        w->cap = cap;
    }
    struct section_buf *s = &w->sections[w->count++];
    memset(s, 0, sizeof(*s));
    memcpy(s->name, name, len);
}

/* Room for n more bytes in the current section, or NULL with the writer failed. */
static uint8_t *writer_reserve(struct snapshot_writer *w, size_t n)
{
    if (w->failed)
        return NULL;
    if (w->count == 0) {
        writer_fail(w, "snapshot: field written before any section");
        return NULL;
    }
    struct section_buf *s = &w->sections[w->count - 1];
    if (n > SNAPSHOT_FILE_MAX - s->len) {
        writer_fail(w, "snapshot: section \"%s\" exceeds %u bytes", s->name, SNAPSHOT_FILE_MAX);
        return NULL;
    }
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n)
            cap *= 2;
        uint8_t *d = realloc(s->data, cap);
        if (!d) {
            writer_fail(w, "snapshot: out of memory");
            return NULL;
        }
        s->data = d;
        s->cap = cap;
    }
    uint8_t *p = s->data + s->len;
    s->len += n;
    return p;
}

static void put_scalar(struct snapshot_writer *w, enum snapshot_field_type type, uint64_t v,
                       unsigned bytes)
{
    uint8_t *p = writer_reserve(w, 1 + bytes);
    if (!p)
        return;
    p[0] = (uint8_t)type;
    store_le(p + 1, v, bytes);
}

void snapshot_put_u8(struct snapshot_writer *w, uint8_t v)
{
    put_scalar(w, SNAPSHOT_FIELD_U8, v, 1);
}

void snapshot_put_u16(struct snapshot_writer *w, uint16_t v)
{
    put_scalar(w, SNAPSHOT_FIELD_U16, v, 2);
}

void snapshot_put_u32(struct snapshot_writer *w, uint32_t v)
{
    put_scalar(w, SNAPSHOT_FIELD_U32, v, 4);
}

void snapshot_put_u64(struct snapshot_writer *w, uint64_t v)
{
    put_scalar(w, SNAPSHOT_FIELD_U64, v, 8);
}

static void put_blob(struct snapshot_writer *w, enum snapshot_field_type type, const void *data,
                     size_t len)
{
    if (len > SNAPSHOT_FILE_MAX) {
        writer_fail(w, "snapshot: a field of %zu bytes exceeds %u", len, SNAPSHOT_FILE_MAX);
        return;
    }
    uint8_t *p = writer_reserve(w, 5 + len);
    if (!p)
        return;
    p[0] = (uint8_t)type;
    store_le(p + 1, len, 4);
    if (len)
        memcpy(p + 5, data, len);
}

void snapshot_put_bytes(struct snapshot_writer *w, const void *data, size_t len)
{
    put_blob(w, SNAPSHOT_FIELD_BYTES, data, len);
}

void snapshot_put_string(struct snapshot_writer *w, const char *s)
{
    put_blob(w, SNAPSHOT_FIELD_STRING, s, strlen(s));
}

int snapshot_writer_finish(struct snapshot_writer *w, uint8_t **out, size_t *out_len)
{
    if (w->failed)
        return error_set("%s", w->error);
    /* Every term is bounded (sections by SNAPSHOT_SECTIONS_MAX, each by SNAPSHOT_FILE_MAX),
     * so the sum cannot overflow a 64-bit size; the total is checked against the cap. */
    uint64_t total = HEADER_SIZE + (uint64_t)w->count * TABLE_ENTRY_SIZE + TRAILER_SIZE;
    for (size_t i = 0; i < w->count; i++)
        total += w->sections[i].len;
    if (total > SNAPSHOT_FILE_MAX)
        return error_set("snapshot: %llu bytes exceed the %u-byte limit", (unsigned long long)total,
                         SNAPSHOT_FILE_MAX);
    uint8_t *buf = calloc(1, (size_t)total);
    if (!buf)
        return error_set("snapshot: out of memory for %llu bytes", (unsigned long long)total);
    memcpy(buf, SNAPSHOT_MAGIC, 8);
    store_le(buf + 8, SNAPSHOT_FORMAT_VERSION, 4);
    store_le(buf + 12, w->count, 4);
    store_le(buf + 16, total, 8);
    size_t offset = HEADER_SIZE + w->count * TABLE_ENTRY_SIZE;
    for (size_t i = 0; i < w->count; i++) {
        const struct section_buf *s = &w->sections[i];
        uint8_t *entry = buf + HEADER_SIZE + i * TABLE_ENTRY_SIZE;
        memcpy(entry, s->name, strlen(s->name)); /* the rest stays zero */
        store_le(entry + NAME_FIELD_SIZE, offset, 8);
        store_le(entry + NAME_FIELD_SIZE + 8, s->len, 8);
        if (s->len)
            memcpy(buf + offset, s->data, s->len);
        offset += s->len;
    }
    store_le(buf + offset, snapshot_crc64(0, buf, offset), 8);
    *out = buf;
    *out_len = (size_t)total;
    return 0;
}

int snapshot_writer_write_fd(struct snapshot_writer *w, int fd)
{
    uint8_t *buf;
    size_t len;
    if (snapshot_writer_finish(w, &buf, &len) < 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : EIO;
            free(buf);
            errno = saved;
            return error_errno("snapshot: write");
        }
        done += (size_t)n;
    }
    free(buf);
    return 0;
}

/* ---- reading a file ---- */

int snapshot_read_fd(int fd, size_t max_size, uint8_t **out, size_t *out_len)
{
    if (max_size > SNAPSHOT_FILE_MAX)
        max_size = SNAPSHOT_FILE_MAX;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return error_errno("snapshot: fstat");
    if (!S_ISREG(st.st_mode))
        return error_set("snapshot: not a regular file");
    if (st.st_size < 0 || (uint64_t)st.st_size > max_size)
        return error_set("snapshot: file is %lld bytes, more than the %zu allowed",
                         (long long)st.st_size, max_size);
    /* One byte more than the size seen, to notice a file that grew since fstat. */
    size_t cap = (size_t)st.st_size + 1;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return error_set("snapshot: out of memory for %zu bytes", cap);
    size_t len = 0;
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buf);
            errno = saved;
            return error_errno("snapshot: read");
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len != (size_t)st.st_size) {
        free(buf);
        return error_set("snapshot: file changed size while being read");
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* ---- reader ---- */

struct section_ref {
    char name[SNAPSHOT_NAME_MAX + 1];
    const uint8_t *data;
    size_t len;
};

struct snapshot_reader {
    uint32_t version;
    size_t count;
    struct section_ref *sections;
};

/* Walks a section's fields: every type known, every length within the section. */
static int check_fields(const struct section_ref *s)
{
    size_t pos = 0;
    while (pos < s->len) {
        size_t at = pos;
        uint8_t type = s->data[pos++];
        uint64_t need;
        switch (type) {
        case SNAPSHOT_FIELD_U8:
            need = 1;
            break;
        case SNAPSHOT_FIELD_U16:
            need = 2;
            break;
        case SNAPSHOT_FIELD_U32:
            need = 4;
            break;
        case SNAPSHOT_FIELD_U64:
            need = 8;
            break;
        case SNAPSHOT_FIELD_BYTES:
        case SNAPSHOT_FIELD_STRING:
            if (s->len - pos < 4)
                return error_set("snapshot: section \"%s\": field at %zu cut short", s->name, at);
            need = load_le(s->data + pos, 4);
            pos += 4;
            break;
        default:
            return error_set("snapshot: section \"%s\": unknown field type %u at %zu", s->name,
                             type, at);
        }
        if (need > s->len - pos)
            return error_set("snapshot: section \"%s\": field at %zu runs past its end", s->name,
                             at);
        pos += (size_t)need;
    }
    return 0;
}

static int parse(struct snapshot_reader *r, const uint8_t *data, size_t len, size_t max_size)
{
    if (max_size > SNAPSHOT_FILE_MAX)
        max_size = SNAPSHOT_FILE_MAX;
    if (len > max_size)
        return error_set("snapshot: file is %zu bytes, more than the %zu allowed", len, max_size);
    if (len < 8 || memcmp(data, SNAPSHOT_MAGIC, 8) != 0)
        return error_set("snapshot: not an ember snapshot (bad magic)");
    if (len < HEADER_SIZE + TRAILER_SIZE)
        return error_set("snapshot: truncated (%zu bytes, the header alone needs %d)", len,
                         HEADER_SIZE + TRAILER_SIZE);
    /* The version comes before anything else: another version may lay out the rest
     * differently, and its user needs to hear that rather than "corrupt". */
    r->version = (uint32_t)load_le(data + 8, 4);
    if (r->version != SNAPSHOT_FORMAT_VERSION)
        return error_set("snapshot: format version %u is not supported (this ember reads "
                         "version %u)",
                         r->version, SNAPSHOT_FORMAT_VERSION);
    uint64_t declared = load_le(data + 16, 8);
    if (declared != len)
        return error_set("snapshot: %s (header says %llu bytes, file has %zu)",
                         declared > len ? "truncated" : "trailing bytes",
                         (unsigned long long)declared, len);
    size_t body = len - TRAILER_SIZE;
    uint64_t want = load_le(data + body, 8), got = snapshot_crc64(0, data, body);
    if (want != got)
        return error_set("snapshot: checksum mismatch (file says %016llx, contents give "
                         "%016llx): the file is corrupt",
                         (unsigned long long)want, (unsigned long long)got);
    uint64_t count = load_le(data + 12, 4);
    if (count > SNAPSHOT_SECTIONS_MAX)
        return error_set("snapshot: %llu sections, more than %u", (unsigned long long)count,
                         SNAPSHOT_SECTIONS_MAX);
    if (HEADER_SIZE + count * TABLE_ENTRY_SIZE > body)
        return error_set("snapshot: section table of %llu entries runs past the file",
                         (unsigned long long)count);
    r->sections = calloc(count ? (size_t)count : 1, sizeof(*r->sections));
    if (!r->sections)
        return error_set("snapshot: out of memory");
    /* Sections follow the table back to back, in table order, and end at the trailer:
     * no byte of the file is outside the header, table, a section or the trailer. */
    size_t expect = HEADER_SIZE + (size_t)count * TABLE_ENTRY_SIZE;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *entry = data + HEADER_SIZE + i * TABLE_ENTRY_SIZE;
        struct section_ref *s = &r->sections[i];
        size_t name_len = strnlen((const char *)entry, NAME_FIELD_SIZE);
        if (!name_valid((const char *)entry, name_len))
            return error_set("snapshot: section %zu has a bad name", i);
        for (size_t k = name_len; k < NAME_FIELD_SIZE; k++)
            if (entry[k])
                return error_set("snapshot: section %zu has a bad name", i);
        memcpy(s->name, entry, name_len);
        uint64_t offset = load_le(entry + NAME_FIELD_SIZE, 8);
        uint64_t length = load_le(entry + NAME_FIELD_SIZE + 8, 8);
        if (offset != expect || length > body - expect)
            return error_set("snapshot: section \"%s\" (offset %llu, %llu bytes) is not "
                             "where the table says sections lie",
                             s->name, (unsigned long long)offset, (unsigned long long)length);
        for (size_t k = 0; k < i; k++)
            if (strcmp(r->sections[k].name, s->name) == 0)
                return error_set("snapshot: section \"%s\" appears twice", s->name);
        s->data = data + offset;
        s->len = (size_t)length;
        expect += s->len;
        r->count = i + 1;
        if (check_fields(s) < 0)
            return -1;
    }
    if (expect != body)
        return error_set("snapshot: %zu bytes between the last section and the checksum",
                         body - expect);
    return 0;
}

struct snapshot_reader *snapshot_reader_open(const uint8_t *data, size_t len, size_t max_size)
{
    struct snapshot_reader *r = calloc(1, sizeof(*r));
    if (!r) {
        error_set("snapshot: out of memory");
        return NULL;
    }
    if (parse(r, data, len, max_size) < 0) {
        snapshot_reader_free(r);
        return NULL;
    }
    return r;
}

void snapshot_reader_free(struct snapshot_reader *r)
{
    if (!r)
        return;
    free(r->sections);
    free(r);
}

uint32_t snapshot_reader_version(const struct snapshot_reader *r)
{
    return r->version;
}

size_t snapshot_reader_section_count(const struct snapshot_reader *r)
{
    return r->count;
}

const char *snapshot_reader_section_name(const struct snapshot_reader *r, size_t i)
{
    return i < r->count ? r->sections[i].name : NULL;
}

size_t snapshot_reader_section_length(const struct snapshot_reader *r, size_t i)
{
    return i < r->count ? r->sections[i].len : 0;
}

static const struct section_ref *find_section(const struct snapshot_reader *r, const char *name)
{
    for (size_t i = 0; i < r->count; i++)
        if (strcmp(r->sections[i].name, name) == 0)
            return &r->sections[i];
    return NULL;
}

bool snapshot_reader_has_section(const struct snapshot_reader *r, const char *name)
{
    return find_section(r, name) != NULL;
}

int snapshot_section(const struct snapshot_reader *r, const char *name, struct snapshot_cursor *c)
{
    memset(c, 0, sizeof(*c));
    const struct section_ref *s = find_section(r, name);
    if (!s) {
        c->failed = true;
        return error_set("snapshot: no section \"%.40s\"", name);
    }
    c->data = s->data;
    c->len = s->len;
    memcpy(c->name, s->name, sizeof(c->name));
    return 0;
}

__attribute__((format(printf, 2, 3))) static int cursor_fail(struct snapshot_cursor *c,
                                                             const char *fmt, ...)
{
    c->failed = true;
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return error_set("snapshot: section \"%s\" at byte %zu: %s", c->name, c->pos, what);
}

static const char *type_name(unsigned type)
{
    static const char *const names[] = {"?", "u8", "u16", "u32", "u64", "bytes", "string"};
    return type < sizeof(names) / sizeof(names[0]) ? names[type] : "?";
}

/* Takes a field's type byte (and, for blobs, its length), leaving pos on its value. */
static int take_header(struct snapshot_cursor *c, enum snapshot_field_type want, size_t *len)
{
    if (c->failed)
        return -1;
    if (c->pos >= c->len)
        return cursor_fail(c, "%s wanted past the section's end", type_name(want));
    uint8_t type = c->data[c->pos];
    if (type != want)
        return cursor_fail(c, "%s wanted, %s found", type_name(want), type_name(type));
    if (want == SNAPSHOT_FIELD_BYTES || want == SNAPSHOT_FIELD_STRING) {
        if (c->len - c->pos < 5)
            return cursor_fail(c, "%s cut short", type_name(want));
        *len = (size_t)load_le(c->data + c->pos + 1, 4);
        if (*len > c->len - c->pos - 5)
            return cursor_fail(c, "%s of %zu bytes runs past the section's end", type_name(want),
                               *len);
        c->pos += 5;
    } else {
        if (c->len - c->pos - 1 < *len)
            return cursor_fail(c, "%s runs past the section's end", type_name(want));
        c->pos += 1;
    }
    return 0;
}

static int get_scalar(struct snapshot_cursor *c, enum snapshot_field_type type, unsigned bytes,
                      uint64_t *v)
{
    size_t len = bytes;
    if (take_header(c, type, &len) < 0)
        return -1;
    *v = load_le(c->data + c->pos, bytes);
    c->pos += bytes;
    return 0;
}

int snapshot_get_u8(struct snapshot_cursor *c, uint8_t *v)
{
    uint64_t x;
    if (get_scalar(c, SNAPSHOT_FIELD_U8, 1, &x) < 0)
        return -1;
    *v = (uint8_t)x;
    return 0;
}

int snapshot_get_u16(struct snapshot_cursor *c, uint16_t *v)
{
    uint64_t x;
    if (get_scalar(c, SNAPSHOT_FIELD_U16, 2, &x) < 0)
        return -1;
    *v = (uint16_t)x;
    return 0;
}

int snapshot_get_u32(struct snapshot_cursor *c, uint32_t *v)
{
    uint64_t x;
    if (get_scalar(c, SNAPSHOT_FIELD_U32, 4, &x) < 0)
        return -1;
    *v = (uint32_t)x;
    return 0;
}

int snapshot_get_u64(struct snapshot_cursor *c, uint64_t *v)
{
    return get_scalar(c, SNAPSHOT_FIELD_U64, 8, v);
}

int snapshot_get_bytes(struct snapshot_cursor *c, void *dst, size_t len)
{
    size_t have;
    size_t start = c->pos;
    if (take_header(c, SNAPSHOT_FIELD_BYTES, &have) < 0)
        return -1;
    if (have != len) {
        c->pos = start;
        return cursor_fail(c, "%zu bytes wanted, %zu found", len, have);
    }
    if (len)
        memcpy(dst, c->data + c->pos, len);
    c->pos += len;
    return 0;
}

int snapshot_get_string(struct snapshot_cursor *c, char *dst, size_t cap)
{
    size_t have;
    size_t start = c->pos;
    if (take_header(c, SNAPSHOT_FIELD_STRING, &have) < 0)
        return -1;
    if (cap == 0 || have > cap - 1) {
        c->pos = start;
        return cursor_fail(c, "string of %zu bytes does not fit in %zu", have, cap);
    }
    if (memchr(c->data + c->pos, '\0', have)) {
        c->pos = start;
        return cursor_fail(c, "string holds a NUL");
    }
    memcpy(dst, c->data + c->pos, have);
    dst[have] = '\0';
    c->pos += have;
    return 0;
}

int snapshot_section_end(struct snapshot_cursor *c)
{
    if (c->failed)
        return -1;
    if (c->pos != c->len)
        return cursor_fail(c, "%zu bytes left unread", c->len - c->pos);
    return 0;
}
