/* The checksums tests/guest/run.sh puts on the command line, cheap enough for CPL0 here. */
#include "guest.h"

#define FNV32_OFFSET 0x811c9dc5u
#define FNV32_PRIME  0x01000193u

/* FNV-1a over bytes (command lines). */
uint32_t fnv1a32(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t hash = FNV32_OFFSET;
    for (size_t i = 0; i < len; i++)
        hash = (hash ^ p[i]) * FNV32_PRIME;
    return hash;
}

/*
 * FNV-1a step over little-endian 32-bit words, the last one zero-padded: a quarter of the
 * emulated instructions of the bytewise hash, for initrds.
 */
uint32_t word_hash32(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t hash = FNV32_OFFSET;
    size_t i = 0;
    for (; i + 4 <= len; i += 4)
        hash = (hash ^ *(const uint32_t *)(p + i)) * FNV32_PRIME;
    if (i < len) {
        uint32_t last = 0;
        memcpy(&last, p + i, len - i);
        hash = (hash ^ last) * FNV32_PRIME;
    }
    return hash;
}
