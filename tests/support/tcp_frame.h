/* What the MMDS unit test and fuzz target share: big-endian fields, the
 * Internet checksum, and a guest's well-formed Ethernet + IPv4 + TCP frame
 * (no options, checksums right). Header-only: both builds include it. */
#ifndef EMBER_TESTS_TCP_FRAME_H
#define EMBER_TESTS_TCP_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t tf_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t tf_get32(const uint8_t *p)
{
    return (uint32_t)tf_get16(p) << 16 | tf_get16(p + 2);
}

static inline void tf_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void tf_put32(uint8_t *p, uint32_t v)
{
    tf_put16(p, (uint16_t)(v >> 16));
    tf_put16(p + 2, (uint16_t)v);
}

/* The one's-complement sum of p folded and inverted, starting from sum. */
static inline uint16_t tf_csum(const uint8_t *p, size_t len, uint32_t sum)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += tf_get16(p + i);
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

struct tf_segment {
    const uint8_t *dst_mac, *src_mac;
    uint32_t src_ip, dst_ip;
    uint16_t sport, dport, window;
    uint32_t seq, ack;
    uint8_t flags;
};

/* Writes the frame into f (room for 54 + len bytes); returns its length. */
static inline size_t tf_build(uint8_t *f, const struct tf_segment *s, const void *data, size_t len)
{
    memcpy(f, s->dst_mac, 6);
    memcpy(f + 6, s->src_mac, 6);
    tf_put16(f + 12, 0x0800);
    uint8_t *ip = f + 14, *t = ip + 20;
    size_t tcp_len = 20 + len;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    tf_put16(ip + 2, (uint16_t)(20 + tcp_len));
    ip[8] = 64;
    ip[9] = 6;
    tf_put32(ip + 12, s->src_ip);
    tf_put32(ip + 16, s->dst_ip);
    tf_put16(ip + 10, tf_csum(ip, 20, 0));
    memset(t, 0, 20);
    tf_put16(t, s->sport);
    tf_put16(t + 2, s->dport);
    tf_put32(t + 4, s->seq);
    tf_put32(t + 8, s->ack);
    t[12] = 5 << 4;
    t[13] = s->flags;
    tf_put16(t + 14, s->window);
    if (len)
        memcpy(t + 20, data, len);
    uint32_t pseudo = (s->src_ip >> 16) + (s->src_ip & 0xffff) + (s->dst_ip >> 16) +
                      (s->dst_ip & 0xffff) + 6 + (uint32_t)tcp_len;
    tf_put16(t + 16, tf_csum(t, tcp_len, pseudo));
    return 14 + 20 + tcp_len;
}

#endif
