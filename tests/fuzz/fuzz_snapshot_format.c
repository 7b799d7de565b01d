/* libFuzzer target: the snapshot file reader as a corrupt or hostile file reaches it.
 * The input is taken two ways:
 *   - as a file, byte for byte (the checksum almost always stops it, so this covers the
 *     checks before the checksum);
 *   - as a file with its trailer rewritten to the right CRC-64 (so the section table and
 *     field checks after the checksum are reached too).
 * Each accepted file has every section read with a sequence of get_* calls chosen by the
 * input; reads must never go past the buffer (ASan), and every section listed must be
 * found by its name, and a failed read leaves the cursor where it was, failed. */
#include "snapshot/format.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const uint8_t *file, size_t len, const uint8_t *script, size_t script_len)
{
    struct snapshot_reader *r = snapshot_reader_open(file, len, SNAPSHOT_FILE_MAX);
    if (!r) {
        if (error_get()[0] == '\0')
            abort(); /* a refusal always says why */
        return;
    }
    if (snapshot_reader_version(r) != SNAPSHOT_FORMAT_VERSION)
        abort();
    size_t count = snapshot_reader_section_count(r);
    size_t step = 0;
    for (size_t i = 0; i < count; i++) {
        const char *name = snapshot_reader_section_name(r, i);
        struct snapshot_cursor c;
        if (!name || snapshot_section(r, name, &c) < 0)
            abort();
        if (c.len != snapshot_reader_section_length(r, i))
            abort();
        for (int n = 0; n < 64 && !c.failed; n++) {
            uint8_t op = script_len ? script[step++ % script_len] : (uint8_t)n;
            uint8_t v8;
            uint16_t v16;
            uint32_t v32;
            uint64_t v64;
            uint8_t bytes[64];
            char str[32];
            size_t before = c.pos;
            int rc;
            switch (op % 7) {
            case 0:
                rc = snapshot_get_u8(&c, &v8);
                break;
            case 1:
                rc = snapshot_get_u16(&c, &v16);
                break;
            case 2:
                rc = snapshot_get_u32(&c, &v32);
                break;
            case 3:
                rc = snapshot_get_u64(&c, &v64);
                break;
            case 4:
                rc = snapshot_get_bytes(&c, bytes, (op >> 3) % sizeof(bytes));
                break;
            case 5:
                rc = snapshot_get_string(&c, str, sizeof(str));
                if (rc == 0 && strlen(str) >= sizeof(str))
                    abort();
                break;
            default:
                rc = snapshot_section_end(&c);
                break;
            }
            if (c.pos > c.len || (rc < 0 && !c.failed) || (rc < 0 && c.pos != before))
                abort();
        }
    }
    snapshot_reader_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    /* The first byte says how much of the tail is a script of reads, not file. */
    size_t script_len = size ? data[0] % 32 : 0;
    if (script_len + 1 > size)
        script_len = 0;
    const uint8_t *script = data + (size ? 1 : 0);
    const uint8_t *file = script + script_len;
    size_t len = size - (size_t)(file - data);
    if (size == 0)
        len = 0;

    /* Copies of exactly len bytes, so any read past the end is caught. */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    if (len)
        memcpy(copy, file, len);
    error_clear();
    exercise(copy, len, script, script_len);

    if (len >= 8) {
        uint64_t crc = snapshot_crc64(0, copy, len - 8);
        for (int i = 0; i < 8; i++)
            copy[len - 8 + i] = (uint8_t)(crc >> (8 * i));
        error_clear();
        exercise(copy, len, script, script_len);
    }
    free(copy);
    return 0;
}
