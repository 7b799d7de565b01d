/* Ethernet, ARP, IPv4 and UDP (RFC 826, 791, 768, 1071) for the network test guests. */
#include "inet.h"

uint32_t inet_sum(const void *data, size_t len, uint32_t sum)
{
    const uint8_t *p = data;
    for (; len > 1; len -= 2, p += 2)
        sum += get16(p);
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

uint16_t inet_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

uint32_t udp_pseudo_sum(uint32_t src, uint32_t dst, uint16_t udp_len)
{
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_UDP + udp_len;
}

bool parse_ipv4(const char *s, uint32_t *ip)
{
    uint32_t v = 0;
    for (int part = 0; part < 4; part++) {
        unsigned n = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 3) {
            n = n * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (!digits || n > 255 || *s != (part < 3 ? '.' : '\0'))
            return false;
        if (part < 3)
            s++;
        v = v << 8 | n;
    }
    *ip = v;
    return true;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool parse_mac(const char *s, uint8_t mac[6])
{
    for (int i = 0; i < 6; i++) {
        int hi = hex_digit(s[0]), lo = hex_digit(s[1]);
        if (hi < 0 || lo < 0 || s[2] != (i < 5 ? ':' : '\0'))
            return false;
        mac[i] = (uint8_t)(hi << 4 | lo);
        s += 3;
    }
    return true;
}

void format_ipv4(char *buf, uint32_t ip)
{
    snprintf(buf, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

void format_mac(char *buf, const uint8_t m[6])
{
    snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static size_t eth_header(uint8_t *f, const uint8_t dst[6], const uint8_t src[6], uint16_t type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    put16(f + 12, type);
    return ETH_HLEN;
}

size_t frame_arp(uint8_t *f, uint16_t op, const uint8_t sha[6], uint32_t spa, const uint8_t tha[6],
                 uint32_t tpa)
{
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    uint8_t *a = f + eth_header(f, op == ARP_REQUEST ? broadcast : tha, sha, ETH_P_ARP);
    put16(a, 1); /* Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, sha, 6);
    put32(a + 14, spa);
    memcpy(a + 18, tha, 6);
    put32(a + 24, tpa);
    return ARP_FRAME_LEN;
}

size_t frame_udp(uint8_t *f, const struct udp_endpoints *e, const void *payload, size_t len,
                 bool partial_csum)
{
    static uint16_t ip_id = 1;
    uint8_t *ip = f + eth_header(f, e->dst_mac, e->src_mac, ETH_P_IP);
    uint16_t udp_len = (uint16_t)(UDP_HLEN + len);
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + udp_len));
    put16(ip + 4, ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    put16(ip + 10, 0);
    put32(ip + 12, e->src_ip);
    put32(ip + 16, e->dst_ip);
    put16(ip + 10, (uint16_t)~inet_fold(inet_sum(ip, IP_HLEN, 0)));
    uint8_t *udp = ip + IP_HLEN;
    put16(udp, e->src_port);
    put16(udp + 2, e->dst_port);
    put16(udp + 4, udp_len);
    put16(udp + 6, 0);
    memcpy(udp + UDP_HLEN, payload, len);
    uint32_t pseudo = udp_pseudo_sum(e->src_ip, e->dst_ip, udp_len);
    if (partial_csum) {
        put16(udp + 6, inet_fold(pseudo));
    } else {
        uint16_t c = (uint16_t)~inet_fold(inet_sum(udp, udp_len, pseudo));
        put16(udp + 6, c ? c : 0xffff);
    }
    return UDP_FRAME_HLEN + len;
}

bool parse_arp(const uint8_t *f, size_t len, struct arp_view *a)
{
    if (len < ARP_FRAME_LEN || get16(f + 12) != ETH_P_ARP)
        return false;
    const uint8_t *p = f + ETH_HLEN;
    if (get16(p) != 1 || get16(p + 2) != ETH_P_IP || p[4] != 6 || p[5] != 4)
        return false;
    a->op = get16(p + 6);
    memcpy(a->sha, p + 8, 6);
    a->spa = get32(p + 14);
    memcpy(a->tha, p + 18, 6);
    a->tpa = get32(p + 24);
    return true;
}

bool parse_udp(const uint8_t *f, size_t len, struct udp_view *u)
{
    if (len < ETH_HLEN + IP_HLEN || get16(f + 12) != ETH_P_IP)
        return false;
    const uint8_t *ip = f + ETH_HLEN;
    unsigned ihl = (ip[0] & 15) * 4u;
    if ((ip[0] >> 4) != 4 || ip[9] != IPPROTO_UDP)
        return false;
    memset(u, 0, sizeof(*u));
    memcpy(u->e.dst_mac, f, 6);
    memcpy(u->e.src_mac, f + 6, 6);
    if (ihl < IP_HLEN || ETH_HLEN + ihl + UDP_HLEN > len) {
        u->error = "truncated IPv4 or UDP header";
        return true;
    }
    u->e.src_ip = get32(ip + 12);
    u->e.dst_ip = get32(ip + 16);
    uint16_t total = get16(ip + 2);
    if (total < ihl + UDP_HLEN || ETH_HLEN + (size_t)total > len) {
        u->error = "IPv4 total length beyond the frame";
        return true;
    }
    if (inet_fold(inet_sum(ip, ihl, 0)) != 0xffff) {
        u->error = "bad IPv4 header checksum";
        return true;
    }
    if (get16(ip + 6) & 0x3fff) {
        u->error = "a fragment";
        return true;
    }
    const uint8_t *udp = ip + ihl;
    uint16_t udp_len = get16(udp + 4);
    if (udp_len < UDP_HLEN || udp_len != total - ihl) {
        u->error = "UDP length does not match the IPv4 length";
        return true;
    }
    if (get16(udp + 6) &&
        inet_fold(inet_sum(udp, udp_len, udp_pseudo_sum(u->e.src_ip, u->e.dst_ip, udp_len))) !=
            0xffff) {
        u->error = "bad UDP checksum";
        return true;
    }
    u->e.src_port = get16(udp);
    u->e.dst_port = get16(udp + 2);
    u->payload = udp + UDP_HLEN;
    u->len = udp_len - UDP_HLEN;
    return true;
}
