/*
 * MMDS from a guest that speaks raw frames: a TCP client of its own on virtio-net, talking to
 * the VMM's metadata service at mmds_ip= (default 169.254.169.254). The harness configures
 * MMDS on the interface with the metadata {"latest": {"meta-data": {"ami-id": "ami-12345678",
 * "hostname": "mmds-guest"}}} and says which version it chose (mmds_version=V1 or V2):
 *   - ARP who-has the MMDS address: the reply names Firecracker's MMDS MAC;
 *   - a GET over a fresh connection (V2: a token from PUT /latest/api/token first, and a GET
 *     without it refused with 401), the answer's status, headers and body checked;
 *   - out-of-order segments (the request's second half first): acknowledged, nothing answered
 *     until the first half comes, then one answer;
 *   - a duplicate segment: acknowledged again, not taken twice;
 *   - a zero window: nothing but a one-byte probe until the guest opens it, then the answer;
 *   - a RST from the guest ends the connection: later segments on it get a RST;
 *   - a request head larger than MMDS takes: the connection is reset;
 *   - a flood (200 SYNs from different ports, 100 malformed frames): MMDS still answers.
 * The frames for MMDS never reach the host's tap (the harness checks ember's metrics). The
 * guest ends with the i8042 reset, so that the VMM exits 0 and writes its last metrics.
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vnet.h"

#define REPLY_US    5000000 /* MMDS answers in microseconds; the guest runs emulated */
#define QUIET_US    300000  /* how long "nothing comes" is waited for */
#define IPPROTO_TCP 6
#define TCP_FIN     0x01
#define TCP_SYN     0x02
#define TCP_RST     0x04
#define TCP_PSH     0x08
#define TCP_ACK     0x10
#define RX_SIZE     4096

static const uint8_t mmds_mac[6] = {0x06, 0x01, 0x23, 0x45, 0x67, 0x01};
static struct vnet net;
static struct virtio_device *dev;
static uint32_t guest_ip = 0x0a000002, mmds_ip = 0xa9fea9fe;
static bool v2;
static uint8_t *frame, *rx;
static uint16_t next_port = 41000;
static char token[80];

struct conn {
    uint16_t port;
    uint32_t seq, ack; /* ours next, theirs next */
    uint16_t window;
};

struct seg {
    uint16_t dport;
    uint32_t seq, ack;
    uint8_t flags;
    uint16_t window;
    const uint8_t *data;
    uint32_t len;
};

/* ---- frames ------------------------------------------------------------------------------- */

static size_t build_tcp(uint8_t *f, const struct conn *c, uint32_t seq, uint8_t flags,
                        const void *data, size_t len)
{
    memcpy(f, mmds_mac, 6);
    memcpy(f + 6, net.mac, 6);
    put16(f + 12, ETH_P_IP);
    uint8_t *ip = f + ETH_HLEN, *t = ip + IP_HLEN;
    size_t tcp_len = 20 + len;
    memset(ip, 0, IP_HLEN);
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(IP_HLEN + tcp_len));
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    put32(ip + 12, guest_ip);
    put32(ip + 16, mmds_ip);
    put16(ip + 10, (uint16_t)~inet_fold(inet_sum(ip, IP_HLEN, 0)));
    memset(t, 0, 20);
    put16(t, c->port);
    put16(t + 2, 80);
    put32(t + 4, seq);
    put32(t + 8, (flags & TCP_ACK) ? c->ack : 0);
    t[12] = 5 << 4;
    t[13] = flags;
    put16(t + 14, c->window);
    if (len)
        memcpy(t + 20, data, len);
    uint32_t pseudo = (guest_ip >> 16) + (guest_ip & 0xffff) + (mmds_ip >> 16) +
                      (mmds_ip & 0xffff) + IPPROTO_TCP + (uint32_t)tcp_len;
    put16(t + 16, (uint16_t)~inet_fold(inet_sum(t, tcp_len, pseudo)));
    return ETH_HLEN + IP_HLEN + tcp_len;
}

static bool send_raw(const void *f, size_t len)
{
    vnet_tx_reclaim(&net);
    return vnet_send(&net, NULL, f, (uint32_t)len) >= 0;
}

/* A segment at seq (the connection's own position is not moved). */
static bool send_at(const struct conn *c, uint32_t seq, uint8_t flags, const void *data, size_t len)
{
    return send_raw(frame, build_tcp(frame, c, seq, flags, data, len));
}

static bool send_seg(struct conn *c, uint8_t flags, const void *data, size_t len)
{
    bool ok = send_at(c, c->seq, flags, data, len);
    c->seq += (uint32_t)len + !!(flags & TCP_SYN) + !!(flags & TCP_FIN);
    return ok;
}

/* A TCP segment from MMDS to the guest, checked (addresses, both checksums); false otherwise. */
static bool parse_seg(const uint8_t *f, int32_t len, struct seg *s)
{
    if (len < ETH_HLEN + IP_HLEN + 20 || get16(f + 12) != ETH_P_IP || memcmp(f + 6, mmds_mac, 6))
        return false;
    const uint8_t *ip = f + ETH_HLEN;
    size_t total = get16(ip + 2);
    if (ip[0] != 0x45 || ip[9] != IPPROTO_TCP || get32(ip + 12) != mmds_ip ||
        get32(ip + 16) != guest_ip || total > (size_t)len - ETH_HLEN || total < IP_HLEN + 20)
        return false;
    if (inet_fold(inet_sum(ip, IP_HLEN, 0)) != 0xffff) {
        diag("a segment from MMDS with a bad IPv4 checksum");
        return false;
    }
    const uint8_t *t = ip + IP_HLEN;
    size_t tcp_len = total - IP_HLEN, doff = (size_t)(t[12] >> 4) * 4;
    uint32_t pseudo = (mmds_ip >> 16) + (mmds_ip & 0xffff) + (guest_ip >> 16) +
                      (guest_ip & 0xffff) + IPPROTO_TCP + (uint32_t)tcp_len;
    if (doff < 20 || doff > tcp_len || inet_fold(inet_sum(t, tcp_len, pseudo)) != 0xffff) {
        diag("a segment from MMDS with a bad TCP header or checksum");
        return false;
    }
    *s = (struct seg){.dport = get16(t + 2),
                      .seq = get32(t + 4),
                      .ack = get32(t + 8),
                      .flags = t[13],
                      .window = get16(t + 14),
                      .data = t + doff,
                      .len = (uint32_t)(tcp_len - doff)};
    return get16(t) == 80;
}

/* The next segment from MMDS for port, within timeout_us; others are dropped. */
static bool recv_seg(uint16_t port, struct seg *s, uint64_t timeout_us)
{
    uint64_t start = time_us();
    while (time_us() - start < timeout_us) {
        int32_t len = vnet_recv_wait(&net, rx, RX_SIZE, NULL, timeout_us - (time_us() - start));
        if (len < 0)
            return false;
        vnet_tx_reclaim(&net);
        if (parse_seg(rx, len, s) && s->dport == port)
            return true;
    }
    return false;
}

/* ---- a TCP client --------------------------------------------------------------------------- */

static bool tcp_connect(struct conn *c)
{
    uint16_t port = next_port++;
    *c = (struct conn){.port = port, .seq = 0x1000000u * (port & 0xff), .window = 65535};
    send_seg(c, TCP_SYN, NULL, 0);
    struct seg s;
    if (!recv_seg(c->port, &s, REPLY_US) || s.flags != (TCP_SYN | TCP_ACK) || s.ack != c->seq) {
        diag("no SYN-ACK for port %u", c->port);
        return false;
    }
    c->ack = s.seq + 1;
    return send_seg(c, TCP_ACK, NULL, 0);
}

/* Reads an HTTP answer: in-order data is taken and acknowledged, anything else gets a
 * duplicate ACK. Returns its length (NUL-terminated in out), or -1. */
static int read_answer(struct conn *c, char *out, size_t cap)
{
    size_t got = 0;
    uint64_t start = time_us();
    while (time_us() - start < REPLY_US) {
        struct seg s;
        if (!recv_seg(c->port, &s, REPLY_US))
            break;
        if (s.flags & TCP_RST) {
            diag("reset while reading an answer");
            return -1;
        }
        if (!s.len)
            continue;
        if (s.seq != c->ack || got + s.len >= cap) {
            send_seg(c, TCP_ACK, NULL, 0);
            continue;
        }
        memcpy(out + got, s.data, s.len);
        got += s.len;
        c->ack += s.len;
        send_seg(c, TCP_ACK, NULL, 0);
        out[got] = '\0';
        const char *body = NULL;
        for (size_t i = 0; i + 3 < got && !body; i++)
            if (!memcmp(out + i, "\r\n\r\n", 4))
                body = out + i + 4;
        const char *cl = NULL;
        for (size_t i = 0; i + 16 < got && !cl; i++)
            if (!memcmp(out + i, "Content-Length: ", 16))
                cl = out + i + 16;
        if (body && cl) {
            uint64_t n = 0;
            while (*cl >= '0' && *cl <= '9')
                n = n * 10 + (uint64_t)(*cl++ - '0');
            if ((size_t)(body - out) + n == got)
                return (int)got;
        }
    }
    diag("an incomplete answer (%zu bytes)", got);
    return -1;
}

static bool str_eq(const char *a, const char *b)
{
    size_t n = strlen(b);
    return strlen(a) == n && !strncmp(a, b, n);
}

static int status_of(const char *a)
{
    if (strncmp(a, "HTTP/1.1 ", 9))
        return -1;
    return (a[9] - '0') * 100 + (a[10] - '0') * 10 + (a[11] - '0');
}

static const char *body_of(const char *a)
{
    for (const char *p = a; *p; p++)
        if (!strncmp(p, "\r\n\r\n", 4))
            return p + 4;
    return "";
}

static bool contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (!strncmp(p, needle, n))
            return true;
    return false;
}

/* The request's token header under V2, empty under V1. */
static void token_header(char *buf, size_t size)
{
    if (v2)
        snprintf(buf, size, "X-metadata-token: %s\r\n", token);
    else
        buf[0] = '\0';
}

static int request(struct conn *c, const char *req, char *out, size_t cap)
{
    send_seg(c, TCP_ACK | TCP_PSH, req, strlen(req));
    return read_answer(c, out, cap);
}

static bool get_ami(struct conn *c, char *ans, size_t cap)
{
    char req[256], tok[128];
    token_header(tok, sizeof(tok));
    snprintf(req, sizeof(req), "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: mmds\r\n%s\r\n",
             tok);
    if (request(c, req, ans, cap) < 0)
        return false;
    diag("%d %s", status_of(ans), body_of(ans));
    return status_of(ans) == 200 && !strncmp(body_of(ans), "ami-12345678", 13);
}

/* The answers the checks read. */
static char ans[4096];

/* A fresh connection and, in req, the GET of the hostname with the token header. */
static bool connect_for_hostname(struct conn *c, char *req, size_t size)
{
    if (!tcp_connect(c))
        return false;
    char tok[128];
    token_header(tok, sizeof(tok));
    snprintf(req, size, "GET /latest/meta-data/hostname HTTP/1.1\r\n%s\r\n", tok);
    return true;
}

/* The hostname's answer, read whole, is 200 and the metadata's hostname. */
static enum test_result expect_hostname(struct conn *c)
{
    if (read_answer(c, ans, sizeof(ans)) < 0)
        return TEST_FAIL;
    diag("%d %s", status_of(ans), body_of(ans));
    return status_of(ans) == 200 && str_eq(body_of(ans), "mmds-guest") ? TEST_PASS : TEST_FAIL;
}

/* ---- the checks -------------------------------------------------------------------------------
 */

static enum test_result find_device(void)
{
    dev = virtio_find(VIRTIO_ID_NET, 0);
    if (!dev)
        return TEST_FAIL;
    frame = phys_alloc(8192, 4096);
    rx = phys_alloc(RX_SIZE, 4096);
    struct vnet_options o = {
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF),
        .rx_buf_size = 2048,
    };
    return vnet_open(&net, dev, &o) ? TEST_PASS : TEST_FAIL;
}

static enum test_result arp(void)
{
    if (!net.dev)
        return skip("no device");
    static const uint8_t zero[6];
    size_t n = frame_arp(frame, ARP_REQUEST, net.mac, guest_ip, zero, mmds_ip);
    send_raw(frame, n);
    uint64_t start = time_us();
    while (time_us() - start < REPLY_US) {
        int32_t len = vnet_recv_wait(&net, rx, RX_SIZE, NULL, REPLY_US);
        struct arp_view a;
        if (len > 0 && parse_arp(rx, (size_t)len, &a) && a.op == ARP_REPLY) {
            char sha[18];
            format_mac(sha, a.sha);
            diag("ARP reply: MMDS is at %s", sha);
            return a.spa == mmds_ip && a.tpa == guest_ip && !memcmp(a.sha, mmds_mac, 6) &&
                           !memcmp(a.tha, net.mac, 6)
                       ? TEST_PASS
                       : TEST_FAIL;
        }
    }
    return TEST_FAIL;
}

static enum test_result token_if_v2(void)
{
    if (!net.dev)
        return skip("no device");
    if (!v2)
        return skip("MMDS V1: no token needed");
    struct conn c;
    if (!tcp_connect(&c))
        return TEST_FAIL;
    if (request(&c, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", ans, sizeof(ans)) < 0 ||
        status_of(ans) != 401) {
        diag("a GET without a token: %d", status_of(ans));
        return TEST_FAIL;
    }
    if (request(
            &c,
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 600\r\n\r\n",
            ans, sizeof(ans)) < 0 ||
        status_of(ans) != 200 || !contains(ans, "X-aws-ec2-metadata-token-ttl-seconds: 600\r\n"))
        return TEST_FAIL;
    snprintf(token, sizeof(token), "%s", body_of(ans));
    diag("token %s", token);
    return strlen(token) == 48 ? TEST_PASS : TEST_FAIL;
}

static enum test_result get(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    if (!tcp_connect(&c) || !get_ami(&c, ans, sizeof(ans)))
        return TEST_FAIL;
    char req[256], tok[128];
    token_header(tok, sizeof(tok));
    snprintf(req, sizeof(req),
             "GET /latest/meta-data/ HTTP/1.1\r\nAccept: application/json\r\n%s\r\n", tok);
    if (request(&c, req, ans, sizeof(ans)) < 0)
        return TEST_FAIL;
    diag("%s", body_of(ans));
    return status_of(ans) == 200 && contains(ans, "Content-Type: application/json\r\n") &&
                   !strncmp(body_of(ans),
                            "{\"ami-id\":\"ami-12345678\",\"hostname\":\"mmds-guest\"}", 60)
               ? TEST_PASS
               : TEST_FAIL;
}

static enum test_result out_of_order(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    char req[256];
    if (!connect_for_hostname(&c, req, sizeof(req)))
        return TEST_FAIL;
    size_t len = strlen(req), half = 16;
    send_at(&c, c.seq + (uint32_t)half, TCP_ACK, req + half, len - half);
    struct seg s;
    if (!recv_seg(c.port, &s, REPLY_US) || s.ack != c.seq || s.len) {
        diag("no duplicate ACK for an out-of-order segment");
        return TEST_FAIL;
    }
    if (recv_seg(c.port, &s, QUIET_US)) {
        diag("something answered half a request");
        return TEST_FAIL;
    }
    send_seg(&c, TCP_ACK, req, half);
    if (!recv_seg(c.port, &s, REPLY_US) || s.ack != c.seq)
        return TEST_FAIL;
    /* The rest, now in order. */
    send_seg(&c, TCP_ACK | TCP_PSH, req + half, len - half);
    return expect_hostname(&c);
}

static enum test_result duplicate(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    char req[256];
    if (!connect_for_hostname(&c, req, sizeof(req)))
        return TEST_FAIL;
    size_t len = strlen(req);
    uint32_t at = c.seq;
    send_seg(&c, TCP_ACK, req, 10); /* a partial request, then the same bytes again */
    struct seg s;
    if (!recv_seg(c.port, &s, REPLY_US) || s.ack != c.seq)
        return TEST_FAIL;
    send_at(&c, at, TCP_ACK, req, 10);
    if (!recv_seg(c.port, &s, REPLY_US) || s.ack != c.seq || s.len) {
        diag("the duplicate was not acknowledged as one");
        return TEST_FAIL;
    }
    send_seg(&c, TCP_ACK | TCP_PSH, req + 10, len - 10);
    if (expect_hostname(&c) != TEST_PASS)
        return TEST_FAIL;
    /* One answer, and no second one for the repeated bytes. */
    if (recv_seg(c.port, &s, QUIET_US) && s.len) {
        diag("data after the answer");
        return TEST_FAIL;
    }
    return TEST_PASS;
}

static enum test_result zero_window(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    char req[256];
    if (!connect_for_hostname(&c, req, sizeof(req)))
        return TEST_FAIL;
    c.window = 0;
    send_seg(&c, TCP_ACK | TCP_PSH, req, strlen(req));
    /* Nothing past the shut window: an ACK, then at most one-byte probes. */
    uint64_t start = time_us();
    unsigned probes = 0;
    struct seg s;
    while (time_us() - start < 3 * QUIET_US && recv_seg(c.port, &s, 3 * QUIET_US)) {
        if (s.len > 1) {
            diag("%u bytes sent into a zero window", s.len);
            return TEST_FAIL;
        }
        probes += s.len;
    }
    diag("%u window probes", probes);
    c.window = 65535;
    send_seg(&c, TCP_ACK, NULL, 0); /* the window opens */
    return expect_hostname(&c);
}

static enum test_result reset(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    if (!tcp_connect(&c))
        return TEST_FAIL;
    send_seg(&c, TCP_RST | TCP_ACK, NULL, 0);
    c.seq--; /* a RST takes no sequence space */
    send_seg(&c, TCP_ACK | TCP_PSH, "GET / HTTP/1.1\r\n\r\n", 18);
    struct seg s;
    if (!recv_seg(c.port, &s, REPLY_US) || !(s.flags & TCP_RST)) {
        diag("no RST for a segment on a connection the guest reset");
        return TEST_FAIL;
    }
    return TEST_PASS;
}

static enum test_result oversized(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    if (!tcp_connect(&c))
        return TEST_FAIL;
    static char junk[1000];
    memset(junk, 'h', sizeof(junk));
    memcpy(junk, "GET / HTTP/1.1\r\nX-Long: ", 24);
    for (int i = 0; i < 6; i++) {
        send_seg(&c, TCP_ACK, junk, sizeof(junk));
        struct seg s;
        while (recv_seg(c.port, &s, QUIET_US)) {
            if (s.flags & TCP_RST) {
                diag("reset after %d KB of head", i + 1);
                return i >= 3 ? TEST_PASS : TEST_FAIL;
            }
        }
    }
    diag("no reset for a 6 KB request head");
    return TEST_FAIL;
}

static enum test_result flood(void)
{
    if (!net.dev)
        return skip("no device");
    for (unsigned i = 0; i < 200; i++) {
        struct conn c = {.port = (uint16_t)(20000 + i), .seq = i, .window = 1000};
        send_seg(&c, TCP_SYN, NULL, 0);
        if (i % 16 == 0)
            while (vnet_recv(&net, rx, RX_SIZE, NULL) >= 0)
                ; /* drop the SYN-ACKs */
    }
    for (unsigned i = 0; i < 100; i++) {
        struct conn c = {.port = (uint16_t)(30000 + i), .seq = i, .window = 1000};
        size_t n = build_tcp(frame, &c, c.seq, TCP_SYN, NULL, 0);
        frame[ETH_HLEN + IP_HLEN + 16 + (i % 2)] ^= 0x55; /* a bad TCP checksum */
        if (i % 3 == 0)
            n = ETH_HLEN + IP_HLEN + 7; /* cut short */
        send_raw(frame, n);
    }
    while (vnet_recv_wait(&net, rx, RX_SIZE, NULL, QUIET_US) >= 0)
        ;
    struct conn c;
    return tcp_connect(&c) && get_ami(&c, ans, sizeof(ans)) ? TEST_PASS : TEST_FAIL;
}

static enum test_result close_connection(void)
{
    if (!net.dev)
        return skip("no device");
    struct conn c;
    if (!tcp_connect(&c))
        return TEST_FAIL;
    send_seg(&c, TCP_ACK | TCP_FIN, NULL, 0);
    struct seg s;
    bool fin = false;
    uint64_t start = time_us();
    while (!fin && time_us() - start < REPLY_US && recv_seg(c.port, &s, REPLY_US))
        fin = (s.flags & TCP_FIN) && s.seq == c.ack;
    if (!fin)
        return TEST_FAIL;
    c.ack++;
    send_seg(&c, TCP_ACK, NULL, 0);
    return TEST_PASS;
}

static const struct guest_test tests[] = {
    {"virtio-net device found and set up", find_device},
    {"ARP: MMDS answers for its address", arp},
    {"V2: no token, 401; PUT /latest/api/token issues one", token_if_v2},
    {"GET over a fresh connection, IMDS and JSON answers", get},
    {"out-of-order segments: dropped and acknowledged, then the answer", out_of_order},
    {"a duplicate segment is not taken twice", duplicate},
    {"zero window: only probes until it opens", zero_window},
    {"RST from the guest ends the connection", reset},
    {"an oversized request head resets the connection", oversized},
    {"a flood of SYNs and malformed frames: MMDS still answers", flood},
    {"FIN from the guest: MMDS closes too", close_connection},
};

void guest_main(void)
{
    tsc_calibrate();
    char text[32];
    if (cmdline_get("mmds_ip", text, sizeof(text)) && !parse_ipv4(text, &mmds_ip))
        bail_out("mmds_ip=%s is not an IPv4 address", text);
    v2 = cmdline_get("mmds_version", text, sizeof(text)) && !strncmp(text, "V2", 3);
    bool all = true;
    printf("1..%zu\n", ARRAY_SIZE(tests));
    for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
        enum test_result r = tests[i].run();
        printf("%sok %zu - %s%s\n", r == TEST_FAIL ? "not " : "", i + 1, tests[i].name,
               r == TEST_SKIP ? " # SKIP" : "");
        all &= r != TEST_FAIL;
    }
    printf("# mmds guest: %s\n", all ? "all passed" : "failures");
    i8042_reset();
    debug_exit(all ? 0 : 1);
}
