/* Ethernet, ARP, IPv4 and UDP frames for the network test guests: building, and parsing with
 * every length and checksum checked. Addresses are in host order; frames in network order. */
#ifndef GUEST_INET_H
#define GUEST_INET_H

#include "guest.h"

#define ETH_HLEN       14
#define ETH_MIN_FRAME  60 /* without the FCS */
#define ETH_MAX_FRAME  1514
#define ETH_P_IP       0x0800
#define ETH_P_ARP      0x0806
#define IP_HLEN        20
#define UDP_HLEN       8
#define UDP_FRAME_HLEN (ETH_HLEN + IP_HLEN + UDP_HLEN) /* 42 */
#define ARP_FRAME_LEN  42
#define ARP_REQUEST    1
#define ARP_REPLY      2
#define IPPROTO_UDP    17

static inline uint16_t htons(uint16_t v)
{
    return (uint16_t)(v << 8 | v >> 8);
}

static inline uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

/* The ones' complement sum of data (RFC 1071), added to sum, not folded. */
uint32_t inet_sum(const void *data, size_t len, uint32_t sum);
/* Folds a sum to 16 bits (not complemented). */
uint16_t inet_fold(uint32_t sum);
/* The sum of the UDP pseudo-header. */
uint32_t udp_pseudo_sum(uint32_t src, uint32_t dst, uint16_t udp_len);

bool parse_ipv4(const char *s, uint32_t *ip);
bool parse_mac(const char *s, uint8_t mac[6]);
/* "a.b.c.d" and "xx:xx:xx:xx:xx:xx" into buf (16 and 18 bytes at least). */
void format_ipv4(char *buf, uint32_t ip);
void format_mac(char *buf, const uint8_t mac[6]);

struct udp_endpoints {
    uint8_t src_mac[6], dst_mac[6];
    uint32_t src_ip, dst_ip;
    uint16_t src_port, dst_port;
};

/* An ARP frame (42 bytes): op, sender and target; the Ethernet destination is the broadcast
 * address for a request and the target for a reply. */
size_t frame_arp(uint8_t *f, uint16_t op, const uint8_t sha[6], uint32_t spa, const uint8_t tha[6],
                 uint32_t tpa);
/*
 * An Ethernet + IPv4 + UDP frame around payload; returns its length. With partial_csum the UDP
 * checksum field holds the folded pseudo-header sum, as a driver leaves it for a device that
 * completes the checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM: csum_start 34, csum_offset 6).
 */
size_t frame_udp(uint8_t *f, const struct udp_endpoints *e, const void *payload, size_t len,
                 bool partial_csum);

struct arp_view {
    uint16_t op;
    uint8_t sha[6], tha[6];
    uint32_t spa, tpa;
};
/* An ARP frame for IPv4 over Ethernet, or false. */
bool parse_arp(const uint8_t *f, size_t len, struct arp_view *a);

struct udp_view {
    struct udp_endpoints e;
    const uint8_t *payload;
    size_t len;
    const char *error; /* why a frame that is IPv4 UDP is malformed, or NULL */
};
/* An IPv4 UDP frame (no fragments, no options needed): false if not one. When it is one but
 * a length or checksum is wrong, returns true with u->error set. */
bool parse_udp(const uint8_t *f, size_t len, struct udp_view *u);

#endif
