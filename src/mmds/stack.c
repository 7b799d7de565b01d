#include "mmds/stack.h"

#include "mmds/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ETH_HLEN        14
#define ETH_P_IP        0x0800
#define ETH_P_ARP       0x0806
#define ARP_LEN         28
#define IP_HLEN         20
#define TCP_HLEN        20
#define IPPROTO_TCP     6
#define MMDS_IP_TTL     1 /* answers go no further than the guest */
#define DEFAULT_MSS     536
#define TCP_FIN         0x01
#define TCP_SYN         0x02
#define TCP_RST         0x04
#define TCP_PSH         0x08
#define TCP_ACK         0x10
#define DUP_ACKS_RESEND 3

/* Firecracker's MMDS MAC address, which guests may have seen in ARP caches. */
static const uint8_t mmds_mac[6] = {0x06, 0x01, 0x23, 0x45, 0x67, 0x01};

enum conn_state { CONN_FREE, CONN_SYN_RCVD, CONN_OPEN };

struct mmds_conn {
    enum conn_state state;
    uint8_t peer_mac[6];
    uint32_t peer_ip;
    uint16_t peer_port;
    uint32_t iss;      /* our SYN */
    uint32_t snd_una;  /* oldest byte not acknowledged */
    uint32_t snd_nxt;  /* next to send (rewound to snd_una to send again) */
    uint32_t snd_max;  /* after the last byte ever sent */
    uint32_t send_end; /* after the last byte of the answers so far: where our FIN goes */
    uint32_t rcv_nxt;
    uint32_t peer_wnd;
    uint16_t mss;
    bool fin_received, fin_queued, ack_pending, probe;
    uint8_t dup_acks, retries;
    uint64_t deadline; /* retransmission or window probe; 0: none */
    uint64_t last_active;
    uint8_t rx[MMDS_RX_BUF];
    size_t rx_len;
    char *tx; /* the answer being sent, its first byte at tx_seq */
    size_t tx_len;
    uint32_t tx_seq;
};

/* ---- sequence numbers and checksums ---------------------------------------- */

static bool seq_lt(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) < 0;
}

static bool seq_gt(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) > 0;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += get16(p + i);
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint32_t pseudo_sum(uint32_t src, uint32_t dst, size_t tcp_len)
{
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_TCP +
           (uint32_t)tcp_len;
}

/* ---- life of a stack --------------------------------------------------------- */

int mmds_stack_init(struct mmds_stack *st, struct mmds_store *store, uint32_t ip, uint32_t iss_seed,
                    const char *name)
{
    memset(st, 0, sizeof(*st));
    st->store = store;
    st->ip = ip;
    st->iss_seed = iss_seed;
    st->name = name;
    memcpy(st->mac, mmds_mac, 6);
    st->conns = calloc(MMDS_MAX_CONNS, sizeof(*st->conns));
    return st->conns ? 0 : -1;
}

static void conn_free(struct mmds_stack *st, struct mmds_conn *c)
{
    (void)st;
    free(c->tx);
    memset(c, 0, sizeof(*c));
}

static void conn_destroy(struct mmds_stack *st, struct mmds_conn *c)
{
    atomic_fetch_add_explicit(&st->store->metrics.connections_destroyed, 1, memory_order_relaxed);
    conn_free(st, c);
}

void mmds_stack_reset(struct mmds_stack *st)
{
    for (unsigned i = 0; st->conns && i < MMDS_MAX_CONNS; i++) {
        if (st->conns[i].state != CONN_FREE)
            conn_destroy(st, &st->conns[i]);
    }
    st->nrsts = 0;
    st->arp_pending = false;
}

void mmds_stack_destroy(struct mmds_stack *st)
{
    if (!st->conns)
        return;
    mmds_stack_reset(st);
    free(st->conns);
    st->conns = NULL;
    char what[64];
    snprintf(what, sizeof(what), "%s: MMDS: malformed frames", st->name ? st->name : "net");
    log_limit_flush(&st->log_bad, LOG_WARN, what);
}

unsigned mmds_stack_connections(const struct mmds_stack *st)
{
    unsigned n = 0;
    for (unsigned i = 0; i < MMDS_MAX_CONNS; i++)
        n += st->conns[i].state != CONN_FREE;
    return n;
}

static void bad_frame(struct mmds_stack *st, _Atomic uint64_t *counter, const char *why)
{
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    log_limited(&st->log_bad, LOG_WARN, "%s: MMDS: dropping a frame from the guest: %s", st->name,
                why);
}

/* ---- the guest's frames --------------------------------------------------------- */

bool mmds_stack_claims(const struct mmds_stack *st, const uint8_t *f, size_t len)
{
    if (len < ETH_HLEN)
        return false;
    uint16_t type = get16(f + 12);
    /* The target address of an ARP packet, the destination of an IPv4 one, where a
     * well-formed frame has them; the rest is checked once the frame is taken. */
    if (type == ETH_P_ARP)
        return len >= ETH_HLEN + ARP_LEN && get32(f + ETH_HLEN + 24) == st->ip;
    if (type == ETH_P_IP)
        return len >= ETH_HLEN + IP_HLEN && get32(f + ETH_HLEN + 16) == st->ip;
    return false;
}

static void queue_rst(struct mmds_stack *st, uint32_t ip, uint16_t port, uint32_t seq, uint32_t ack,
                      bool with_ack)
{
    if (st->nrsts == MMDS_MAX_RSTS)
        return; /* a flood: the guest will retry or time out */
    st->rsts[st->nrsts++] =
        (struct mmds_rst){.ip = ip, .port = port, .seq = seq, .ack = ack, .with_ack = with_ack};
}

static void conn_abort(struct mmds_stack *st, struct mmds_conn *c)
{
    queue_rst(st, c->peer_ip, c->peer_port, c->snd_nxt, c->rcv_nxt, true);
    conn_destroy(st, c);
}

static uint64_t rto(const struct mmds_conn *c)
{
    uint64_t ms = (uint64_t)MMDS_RTO_MS << (c->retries < 8 ? c->retries : 8);
    return ms < MMDS_RTO_MAX_MS ? ms : MMDS_RTO_MAX_MS;
}

static struct mmds_conn *find_conn(struct mmds_stack *st, uint32_t ip, uint16_t port)
{
    for (unsigned i = 0; i < MMDS_MAX_CONNS; i++) {
        struct mmds_conn *c = &st->conns[i];
        if (c->state != CONN_FREE && c->peer_ip == ip && c->peer_port == port)
            return c;
    }
    return NULL;
}

/* A free slot, or the one idle the longest (reset to make room). */
static struct mmds_conn *new_conn(struct mmds_stack *st)
{
    struct mmds_conn *oldest = NULL;
    for (unsigned i = 0; i < MMDS_MAX_CONNS; i++) {
        struct mmds_conn *c = &st->conns[i];
        if (c->state == CONN_FREE)
            return c;
        if (!oldest || c->last_active < oldest->last_active)
            oldest = c;
    }
    conn_abort(st, oldest);
    return oldest;
}

static void arm_persist(struct mmds_conn *c, uint64_t now_ms);

struct segment {
    uint32_t seq, ack;
    uint8_t flags;
    uint16_t window;
    uint16_t mss; /* the MSS option, 0: none */
    const uint8_t *payload;
    size_t len;
};

/* Takes a complete request from the buffer when no answer is pending, and closes our side
 * once the guest has closed its own and nothing more can come. */
static void conn_serve(struct mmds_stack *st, struct mmds_conn *c, uint64_t now_ms)
{
    if (c->tx || c->fin_queued || c->state != CONN_OPEN)
        return;
    size_t req_len;
    switch (mmds_http_frame(c->rx, c->rx_len, MMDS_RX_BUF, &req_len)) {
    case MMDS_HTTP_TOO_LARGE:
        /* A request that cannot fit the buffer: the connection goes, as in Firecracker. */
        bad_frame(st, &st->store->metrics.rx_accepted_err, "an HTTP request larger than 4 KiB");
        conn_abort(st, c);
        return;
    case MMDS_HTTP_INCOMPLETE:
        if (c->fin_received)
            c->fin_queued = true;
        return;
    case MMDS_HTTP_REQUEST:
        break;
    }
    struct mmds_http_reply r;
    mmds_store_lock(st->store);
    bool ok = mmds_http_answer(st->store, c->rx, req_len, now_ms, &r);
    mmds_store_unlock(st->store);
    memmove(c->rx, c->rx + req_len, c->rx_len - req_len);
    c->rx_len -= req_len;
    c->ack_pending = true; /* the window opened */
    if (!ok) {
        free(r.data);
        conn_abort(st, c);
        return;
    }
    c->tx = r.data;
    c->tx_len = r.len;
    c->tx_seq = c->send_end;
    c->send_end += (uint32_t)r.len;
    if (r.close)
        c->fin_queued = true;
}

/* Done: both sides closed, our FIN acknowledged, nothing left to say. */
static bool conn_done(const struct mmds_conn *c)
{
    return c->state == CONN_OPEN && c->fin_received && c->fin_queued && !c->ack_pending &&
           c->snd_una == c->send_end + 1;
}

static void conn_input(struct mmds_stack *st, struct mmds_conn *c, const struct segment *s,
                       uint64_t now_ms)
{
    c->last_active = now_ms;
    uint32_t rcv_wnd = (uint32_t)(MMDS_RX_BUF - c->rx_len);
    if (s->flags & TCP_RST) {
        /* Only one that falls in the window counts (RFC 5961): a blind guess does not. */
        if (s->seq == c->rcv_nxt ||
            (!seq_lt(s->seq, c->rcv_nxt) && seq_lt(s->seq, c->rcv_nxt + (rcv_wnd ? rcv_wnd : 1))))
            conn_destroy(st, c);
        else
            c->ack_pending = true;
        return;
    }
    if (s->flags & TCP_SYN) {
        if (c->state == CONN_SYN_RCVD && s->seq + 1 == c->rcv_nxt)
            c->snd_nxt = c->iss; /* our SYN-ACK was lost: again */
        else
            c->ack_pending = true; /* a SYN in a connection: a challenge ACK */
        return;
    }
    if (!(s->flags & TCP_ACK))
        return;
    if (c->state == CONN_SYN_RCVD) {
        if (s->ack != c->iss + 1) {
            queue_rst(st, c->peer_ip, c->peer_port, s->ack, 0, false);
            return;
        }
        c->state = CONN_OPEN;
        c->snd_una = c->iss + 1;
        if (seq_lt(c->snd_nxt, c->snd_una))
            c->snd_nxt = c->snd_una;
        c->retries = 0;
        c->deadline = 0;
    } else if (seq_gt(s->ack, c->snd_max)) {
        c->ack_pending = true; /* acknowledges what was never sent */
        return;
    } else if (seq_gt(s->ack, c->snd_una)) {
        c->snd_una = s->ack;
        if (seq_lt(c->snd_nxt, c->snd_una))
            c->snd_nxt = c->snd_una;
        c->dup_acks = 0;
        c->retries = 0;
        c->deadline = c->snd_una != c->snd_max ? now_ms + rto(c) : 0;
    } else if (s->ack == c->snd_una && s->len == 0 && !(s->flags & TCP_FIN) &&
               c->snd_una != c->snd_max && s->window == c->peer_wnd) {
        if (++c->dup_acks == DUP_ACKS_RESEND)
            c->snd_nxt = c->snd_una; /* lost: send again without waiting for the timer */
    }
    c->peer_wnd = s->window;
    if (c->tx && !seq_lt(c->snd_una, c->tx_seq + (uint32_t)c->tx_len)) {
        free(c->tx); /* the whole answer arrived */
        c->tx = NULL;
        c->tx_len = 0;
    }
    if (s->len) {
        int32_t d = (int32_t)(s->seq - c->rcv_nxt);
        c->ack_pending = true;
        if (d <= 0 && (size_t) - (int64_t)d < s->len && !c->fin_received) {
            /* In order (or overlapping what we have): take what fits; the rest comes again. */
            size_t skip = (size_t) - (int64_t)d, take = s->len - skip;
            if (take > MMDS_RX_BUF - c->rx_len)
                take = MMDS_RX_BUF - c->rx_len;
            memcpy(c->rx + c->rx_len, s->payload + skip, take);
            c->rx_len += take;
            c->rcv_nxt += (uint32_t)take;
        }
        /* Out of order or a duplicate: dropped, the ACK says what we expect. */
    }
    if (s->flags & TCP_FIN) {
        if (!c->fin_received && s->seq + (uint32_t)s->len == c->rcv_nxt) {
            c->rcv_nxt++;
            c->fin_received = true;
        }
        c->ack_pending = true;
    }
    conn_serve(st, c, now_ms);
    if (c->state != CONN_FREE)
        arm_persist(c, now_ms);
}

/* A segment for no connection: a SYN opens one, anything else but a RST gets a RST. */
static void no_conn_input(struct mmds_stack *st, uint32_t ip, uint16_t port, const uint8_t *mac,
                          const struct segment *s, uint64_t now_ms)
{
    if (s->flags & TCP_RST)
        return;
    if ((s->flags & (TCP_SYN | TCP_ACK | TCP_FIN)) != TCP_SYN) {
        uint32_t ack = s->seq + (uint32_t)s->len + !!(s->flags & TCP_SYN) + !!(s->flags & TCP_FIN);
        if (s->flags & TCP_ACK)
            queue_rst(st, ip, port, s->ack, 0, false);
        else
            queue_rst(st, ip, port, 0, ack, true);
        return;
    }
    struct mmds_conn *c = new_conn(st);
    memset(c, 0, sizeof(*c));
    c->state = CONN_SYN_RCVD;
    memcpy(c->peer_mac, mac, 6);
    c->peer_ip = ip;
    c->peer_port = port;
    c->iss = st->iss_seed + st->iss_count++ * 0x10000u;
    c->snd_una = c->snd_nxt = c->snd_max = c->iss;
    c->send_end = c->iss + 1;
    c->rcv_nxt = s->seq + 1; /* data on a SYN is not taken: it comes again */
    c->peer_wnd = s->window;
    c->mss = s->mss ? (s->mss < MMDS_MSS ? s->mss : MMDS_MSS) : DEFAULT_MSS;
    if (c->mss < 64)
        c->mss = 64;
    c->last_active = now_ms;
    atomic_fetch_add_explicit(&st->store->metrics.connections_created, 1, memory_order_relaxed);
}

/* The MSS option of a SYN's options, 0 when absent; false when the options are malformed. */
static bool parse_options(const uint8_t *o, size_t len, uint16_t *mss)
{
    *mss = 0;
    for (size_t i = 0; i < len;) {
        if (o[i] == 0)
            break;
        if (o[i] == 1) {
            i++;
            continue;
        }
        if (i + 1 >= len || o[i + 1] < 2 || o[i + 1] > len - i)
            return false;
        if (o[i] == 2 && o[i + 1] == 4)
            *mss = get16(o + i + 2);
        i += o[i + 1];
    }
    return true;
}

static void receive_tcp(struct mmds_stack *st, const uint8_t *mac, uint32_t src, const uint8_t *t,
                        size_t len, bool csum_partial, uint64_t now_ms)
{
    _Atomic uint64_t *err = &st->store->metrics.rx_accepted_err;
    if (len < TCP_HLEN)
        return bad_frame(st, err, "TCP header cut short");
    size_t doff = (size_t)(t[12] >> 4) * 4;
    if (doff < TCP_HLEN || doff > len)
        return bad_frame(st, err, "TCP header length out of bounds");
    if (!csum_partial && fold(sum16(t, len, pseudo_sum(src, st->ip, len))) != 0xffff)
        return bad_frame(st, err, "bad TCP checksum");
    struct segment s = {.seq = get32(t + 4),
                        .ack = get32(t + 8),
                        .flags = t[13] & 0x3f,
                        .window = get16(t + 14),
                        .payload = t + doff,
                        .len = len - doff};
    if ((s.flags & TCP_SYN) && (s.flags & (TCP_FIN | TCP_RST)))
        return bad_frame(st, err, "TCP flags that go not together");
    if (!parse_options(t + TCP_HLEN, doff - TCP_HLEN, &s.mss))
        return bad_frame(st, err, "malformed TCP options");
    atomic_fetch_add_explicit(&st->store->metrics.rx_count, 1, memory_order_relaxed);
    uint16_t port = get16(t);
    if (get16(t + 2) != MMDS_PORT) {
        /* Nothing listens there: a closed port answers with a RST. */
        if (!(s.flags & TCP_RST))
            queue_rst(st, src, port, (s.flags & TCP_ACK) ? s.ack : 0,
                      s.seq + (uint32_t)s.len + !!(s.flags & TCP_SYN) + !!(s.flags & TCP_FIN),
                      !(s.flags & TCP_ACK));
        return;
    }
    struct mmds_conn *c = find_conn(st, src, port);
    if (c) {
        /* A new SYN on a finished connection's address starts over. */
        conn_input(st, c, &s, now_ms);
        if (c->state != CONN_FREE && conn_done(c))
            conn_destroy(st, c);
    } else {
        no_conn_input(st, src, port, mac, &s, now_ms);
    }
}

static void receive_arp(struct mmds_stack *st, const uint8_t *f, size_t len)
{
    const uint8_t *a = f + ETH_HLEN;
    if (len < ETH_HLEN + ARP_LEN || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != 6 ||
        a[5] != 4)
        return bad_frame(st, &st->store->metrics.rx_bad_eth, "malformed ARP packet");
    if (get16(a + 6) != 1)
        return; /* not a request: nothing to answer */
    memcpy(st->arp_mac, a + 8, 6);
    st->arp_ip = get32(a + 14);
    st->arp_pending = true; /* the latest request is the one answered */
}

void mmds_stack_receive(struct mmds_stack *st, const uint8_t *f, size_t len, bool csum_partial,
                        uint64_t now_ms)
{
    atomic_fetch_add_explicit(&st->store->metrics.rx_accepted, 1, memory_order_relaxed);
    if (len < ETH_HLEN)
        return bad_frame(st, &st->store->metrics.rx_bad_eth, "shorter than an Ethernet header");
    memcpy(st->guest_mac, f + 6, 6);
    if (get16(f + 12) == ETH_P_ARP)
        return receive_arp(st, f, len);
    const uint8_t *ip = f + ETH_HLEN;
    size_t avail = len - ETH_HLEN;
    _Atomic uint64_t *err = &st->store->metrics.rx_accepted_err;
    if (avail < IP_HLEN || ip[0] >> 4 != 4)
        return bad_frame(st, err, "not an IPv4 header");
    size_t ihl = (size_t)(ip[0] & 15) * 4, total = get16(ip + 2);
    if (ihl < IP_HLEN || total < ihl || total > avail)
        return bad_frame(st, err, "IPv4 lengths out of bounds");
    if (fold(sum16(ip, ihl, 0)) != 0xffff)
        return bad_frame(st, err, "bad IPv4 header checksum");
    if (get16(ip + 6) & 0x3fff)
        return bad_frame(st, err, "IPv4 fragment (MMDS does not reassemble)");
    if (ip[9] != IPPROTO_TCP) {
        atomic_fetch_add_explicit(&st->store->metrics.rx_accepted_unusual, 1, memory_order_relaxed);
        return;
    }
    receive_tcp(st, f + 6, get32(ip + 12), ip + ihl, total - ihl, csum_partial, now_ms);
}

/* ---- what MMDS sends --------------------------------------------------------------- */

static size_t write_segment(struct mmds_stack *st, uint8_t *buf, const uint8_t *mac, uint32_t dst,
                            uint16_t port, const struct segment *s)
{
    size_t opt = s->mss ? 4 : 0, tcp_len = TCP_HLEN + opt + s->len;
    uint8_t *e = buf, *ip = buf + ETH_HLEN, *t = ip + IP_HLEN;
    memcpy(e, mac, 6);
    memcpy(e + 6, st->mac, 6);
    put16(e + 12, ETH_P_IP);
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + tcp_len));
    put16(ip + 4, st->ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = MMDS_IP_TTL;
    ip[9] = IPPROTO_TCP;
    put16(ip + 10, 0);
    put32(ip + 12, st->ip);
    put32(ip + 16, dst);
    put16(ip + 10, (uint16_t)~fold(sum16(ip, IP_HLEN, 0)));
    put16(t, MMDS_PORT);
    put16(t + 2, port);
    put32(t + 4, s->seq);
    put32(t + 8, (s->flags & TCP_ACK) ? s->ack : 0);
    t[12] = (uint8_t)(((TCP_HLEN + opt) / 4) << 4);
    t[13] = s->flags;
    put16(t + 14, s->window);
    put16(t + 16, 0);
    put16(t + 18, 0);
    if (opt) {
        t[20] = 2;
        t[21] = 4;
        put16(t + 22, s->mss);
    }
    if (s->len)
        memcpy(t + TCP_HLEN + opt, s->payload, s->len);
    put16(t + 16, (uint16_t)~fold(sum16(t, tcp_len, pseudo_sum(st->ip, dst, tcp_len))));
    return ETH_HLEN + IP_HLEN + tcp_len;
}

static size_t write_arp_reply(struct mmds_stack *st, uint8_t *buf)
{
    uint8_t *a = buf + ETH_HLEN;
    memcpy(buf, st->arp_mac, 6);
    memcpy(buf + 6, st->mac, 6);
    put16(buf + 12, ETH_P_ARP);
    put16(a, 1);
    put16(a + 2, ETH_P_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, 2);
    memcpy(a + 8, st->mac, 6);
    put32(a + 14, st->ip);
    memcpy(a + 18, st->arp_mac, 6);
    put32(a + 24, st->arp_ip);
    return ETH_HLEN + ARP_LEN;
}

/* Retransmission and window probes that are due. False when the connection went. */
static bool conn_timers(struct mmds_stack *st, struct mmds_conn *c, uint64_t now_ms)
{
    if (!c->deadline || now_ms < c->deadline)
        return true;
    c->deadline = 0;
    bool in_flight = c->snd_una != c->snd_max;
    if (!in_flight && !(c->tx && c->peer_wnd == 0))
        return true;
    /* A shut window may stay shut while the guest's program reads nothing: probes go on for
     * longer than retransmissions of lost segments do. */
    if (++c->retries > (c->peer_wnd == 0 ? 4 * MMDS_MAX_RETRIES : MMDS_MAX_RETRIES)) {
        conn_abort(st, c); /* the guest stopped answering */
        return false;
    }
    c->snd_nxt = c->snd_una;
    c->dup_acks = 0;
    c->probe = c->peer_wnd == 0;
    c->deadline = now_ms + rto(c);
    return true;
}

/* With an answer waiting behind a shut window and nothing in flight, a timer brings a probe. */
static void arm_persist(struct mmds_conn *c, uint64_t now_ms)
{
    if (c->state == CONN_OPEN && c->tx && c->peer_wnd == 0 && c->snd_una == c->snd_max &&
        !c->deadline)
        c->deadline = now_ms + rto(c);
}

/* The next segment of a connection, if it has one now. */
static bool conn_output(struct mmds_conn *c, uint64_t now_ms, struct segment *s)
{
    *s = (struct segment){.ack = c->rcv_nxt,
                          .flags = TCP_ACK,
                          .window = c->fin_received ? 0 : (uint16_t)(MMDS_RX_BUF - c->rx_len)};
    bool arm = false;
    if (c->state == CONN_SYN_RCVD) {
        if (c->snd_nxt != c->iss)
            return false;
        s->seq = c->iss;
        s->flags = TCP_SYN | TCP_ACK;
        s->mss = MMDS_MSS;
        c->snd_nxt = c->iss + 1;
        arm = true;
    } else {
        uint32_t data_end = c->tx ? c->tx_seq + (uint32_t)c->tx_len : c->send_end;
        uint32_t wnd_end = c->snd_una + c->peer_wnd;
        if (c->tx && seq_lt(c->snd_nxt, data_end)) {
            size_t n = data_end - c->snd_nxt;
            if (seq_lt(c->snd_nxt, wnd_end)) {
                if (n > wnd_end - c->snd_nxt)
                    n = wnd_end - c->snd_nxt;
            } else if (c->probe) {
                n = 1; /* one byte past a shut window asks whether it opened */
            } else {
                n = 0;
                arm_persist(c, now_ms);
            }
            c->probe = false;
            if (n > c->mss)
                n = c->mss;
            if (n) {
                s->seq = c->snd_nxt;
                s->payload = (const uint8_t *)c->tx + (c->snd_nxt - c->tx_seq);
                s->len = n;
                s->flags |= c->snd_nxt + (uint32_t)n == data_end ? TCP_PSH : 0;
                c->snd_nxt += (uint32_t)n;
                arm = true;
            }
        }
        if (!arm && c->fin_queued && !c->tx && c->snd_nxt == c->send_end) {
            s->seq = c->send_end;
            s->flags |= TCP_FIN;
            c->snd_nxt = c->send_end + 1;
            arm = true;
        }
        if (!arm && !c->ack_pending)
            return false;
        if (!arm)
            s->seq = c->snd_nxt;
    }
    if (arm) {
        if (seq_gt(c->snd_nxt, c->snd_max))
            c->snd_max = c->snd_nxt;
        if (!c->deadline)
            c->deadline = now_ms + rto(c);
    }
    c->ack_pending = false;
    return true;
}

void mmds_stack_run_timers(struct mmds_stack *st, uint64_t now_ms)
{
    for (unsigned i = 0; i < MMDS_MAX_CONNS; i++) {
        struct mmds_conn *c = &st->conns[i];
        if (c->state != CONN_FREE)
            conn_timers(st, c, now_ms);
    }
}

size_t mmds_stack_next_frame(struct mmds_stack *st, uint8_t *buf, size_t cap, uint64_t now_ms)
{
    struct mmds_metrics *m = &st->store->metrics;
    size_t len = 0;
    if (cap < MMDS_MAX_FRAME) {
        atomic_fetch_add_explicit(&m->tx_errors, 1, memory_order_relaxed);
        return 0;
    }
    if (st->arp_pending) {
        st->arp_pending = false;
        len = write_arp_reply(st, buf);
        goto sent;
    }
    mmds_stack_run_timers(st, now_ms);
    if (st->nrsts) {
        const struct mmds_rst *r = &st->rsts[0];
        struct segment s = {.seq = r->seq,
                            .ack = r->ack,
                            .flags = (uint8_t)(TCP_RST | (r->with_ack ? TCP_ACK : 0))};
        len = write_segment(st, buf, st->guest_mac, r->ip, r->port, &s);
        memmove(st->rsts, st->rsts + 1, --st->nrsts * sizeof(st->rsts[0]));
        goto sent;
    }
    for (unsigned k = 0; k < MMDS_MAX_CONNS; k++) {
        unsigned i = (st->next_conn + k) % MMDS_MAX_CONNS;
        struct mmds_conn *c = &st->conns[i];
        struct segment s;
        if (c->state == CONN_FREE || !conn_output(c, now_ms, &s))
            continue;
        len = write_segment(st, buf, c->peer_mac, c->peer_ip, c->peer_port, &s);
        st->next_conn = (i + 1) % MMDS_MAX_CONNS;
        if (conn_done(c))
            conn_destroy(st, c);
        goto sent;
    }
    return 0;
sent:
    atomic_fetch_add_explicit(&m->tx_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->tx_frames, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->tx_bytes, len, memory_order_relaxed);
    return len;
}

uint64_t mmds_stack_next_deadline(const struct mmds_stack *st)
{
    uint64_t next = 0;
    for (unsigned i = 0; i < MMDS_MAX_CONNS; i++) {
        const struct mmds_conn *c = &st->conns[i];
        if (c->state != CONN_FREE && c->deadline && (!next || c->deadline < next))
            next = c->deadline;
    }
    return next;
}
