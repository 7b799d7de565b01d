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

/*
 * The CRC of POSIX cksum(1): polynomial 0x04c11db7, most significant bit first, over the data
 * and then the length (least significant byte first, as few bytes as it needs), inverted. The
 * harness checks disk images with the cksum tool. Table-driven: meant for CPL3, where code
 * runs natively.
 */
static uint32_t cksum_table[256];

static void cksum_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i << 24;
        for (int bit = 0; bit < 8; bit++)
            c = (c & 0x80000000u) ? (c << 1) ^ 0x04c11db7u : c << 1;
        cksum_table[i] = c;
    }
}

uint32_t cksum_update(uint32_t crc, const void *data, size_t len)
{
    if (!cksum_table[1])
        cksum_table_init();
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++)
        crc = (crc << 8) ^ cksum_table[(crc >> 24) ^ p[i]];
    return crc;
}

uint32_t cksum_final(uint32_t crc, uint64_t total_len)
{
    for (; total_len; total_len >>= 8) {
        uint8_t byte = (uint8_t)total_len;
        crc = cksum_update(crc, &byte, 1);
    }
    return ~crc;
}
