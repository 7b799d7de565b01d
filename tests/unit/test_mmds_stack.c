/* The MMDS network stack on crafted frames, with a clock the test moves: ARP, the TCP
 * handshake, HTTP for V1 and V2, out-of-order and duplicate segments, a shut window and its
 * probes, retransmission by timer and by duplicate ACKs, RST both ways, oversized requests,
 * malformed frames and floods. */
#include "mmds/http.h"
#include "mmds/stack.h"
#include "suites.h"
#include "../support/tcp_frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MMDS_IP  0xa9fea9feu /* 169.254.169.254 */
#define GUEST_IP 0x0a000002u

static const uint8_t guest_mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
static struct mmds_store store;
static struct mmds_stack st;
static uint64_t now;

static void setup(void)
{
    ck_assert_int_eq(mmds_store_init(&store, MMDS_DEFAULT_SIZE_LIMIT), 0);
    cJSON *doc = cJSON_Parse("{\"latest\":{\"meta-data\":{\"ami-id\":\"ami-12345678\","
                             "\"hostname\":\"vm1\"}},\"n\":5}");
    ck_assert_int_eq(mmds_store_put(&store, doc), MMDS_OK);
    cJSON_Delete(doc);
    ck_assert_int_eq(mmds_stack_init(&st, &store, MMDS_IP, 1000, "net0"), 0);
    now = 1000;
}

static void teardown(void)
{
    mmds_stack_destroy(&st);
    mmds_store_destroy(&store);
}

static uint64_t metric(_Atomic uint64_t *m)
{
    return atomic_load(m);
}

#define SYN 0x02
#define FIN 0x01
#define RST 0x04
#define PSH 0x08
#define ACK 0x10

/* One guest connection: its port and where its sequence numbers are. */
struct peer {
    uint16_t port;
    uint32_t seq; /* next to send */
    uint32_t ack; /* next expected from MMDS */
    uint16_t window;
};

static size_t build(uint8_t *f, uint16_t port, uint16_t dport, uint32_t seq, uint32_t ack,
                    uint8_t flags, uint16_t window, const void *data, size_t len)
{
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct tf_segment s = {.dst_mac = broadcast,
                           .src_mac = guest_mac,
                           .src_ip = GUEST_IP,
                           .dst_ip = MMDS_IP,
                           .sport = port,
                           .dport = dport,
                           .window = window,
                           .seq = seq,
                           .ack = ack,
                           .flags = flags};
    return tf_build(f, &s, data, len);
}

static void send_seg(struct peer *p, uint8_t flags, const char *data, size_t len)
{
    uint8_t f[8192];
    size_t n = build(f, p->port, 80, p->seq, p->ack, flags, p->window, data, len);
    ck_assert(mmds_stack_claims(&st, f, n));
    mmds_stack_receive(&st, f, n, false, now);
    p->seq += (uint32_t)len + !!(flags & SYN) + !!(flags & FIN);
}

struct seg {
    uint16_t dport;
    uint32_t seq, ack;
    uint8_t flags;
    uint16_t window, mss;
    char data[2048];
    size_t len;
};

/* The next frame MMDS sends, checked down to its checksums. */
static bool next_seg(struct seg *s)
{
    uint8_t f[MMDS_MAX_FRAME];
    size_t n = mmds_stack_next_frame(&st, f, sizeof(f), now);
    if (!n)
        return false;
    ck_assert_uint_ge(n, 54);
    ck_assert_mem_eq(f, guest_mac, 6);
    ck_assert_uint_eq(tf_get16(f + 12), 0x0800);
    const uint8_t *ip = f + 14, *t = ip + 20;
    ck_assert_uint_eq(tf_csum(ip, 20, 0), 0);
    ck_assert_uint_eq(tf_get32(ip + 12), MMDS_IP);
    ck_assert_uint_eq(tf_get32(ip + 16), GUEST_IP);
    size_t tcp_len = tf_get16(ip + 2) - 20u;
    ck_assert_uint_eq(14 + 20 + tcp_len, n);
    uint32_t pseudo = (GUEST_IP >> 16) + (GUEST_IP & 0xffff) + (MMDS_IP >> 16) +
                      (MMDS_IP & 0xffff) + 6 + (uint32_t)tcp_len;
    ck_assert_uint_eq(tf_csum(t, tcp_len, pseudo), 0);
    ck_assert_uint_eq(tf_get16(t), 80);
    memset(s, 0, sizeof(*s));
    s->dport = tf_get16(t + 2);
    s->seq = tf_get32(t + 4);
    s->ack = tf_get32(t + 8);
    s->flags = t[13];
    s->window = tf_get16(t + 14);
    size_t doff = (size_t)(t[12] >> 4) * 4;
    if (doff == 24 && t[20] == 2)
        s->mss = tf_get16(t + 22);
    s->len = tcp_len - doff;
    ck_assert_uint_le(s->len, sizeof(s->data));
    memcpy(s->data, t + doff, s->len);
    return true;
}

static struct peer connect_peer(uint16_t port)
{
    struct peer p = {.port = port, .seq = 5000u * port, .window = 65535};
    send_seg(&p, SYN, NULL, 0);
    struct seg s;
    do /* past RSTs to connections this one made room for */
        ck_assert(next_seg(&s));
    while (s.dport != port);
    ck_assert_uint_eq(s.flags, SYN | ACK);
    ck_assert_uint_eq(s.ack, p.seq);
    ck_assert_uint_eq(s.mss, MMDS_MSS);
    p.ack = s.seq + 1;
    send_seg(&p, ACK, NULL, 0);
    ck_assert(!next_seg(&s));
    return p;
}

/* Collects the answer's bytes, acknowledging each segment, until a whole answer is in;
 * returns the flags seen. */
static uint8_t read_answer(struct peer *p, char *out, size_t cap)
{
    size_t got = 0;
    uint8_t flags = 0;
    struct seg s;
    while (next_seg(&s)) {
        flags |= s.flags;
        if (!s.len)
            continue;
        ck_assert_uint_eq(s.seq, p->ack);
        ck_assert_uint_lt(got + s.len, cap);
        memcpy(out + got, s.data, s.len);
        got += s.len;
        p->ack += (uint32_t)s.len;
        send_seg(p, ACK, NULL, 0);
    }
    out[got] = '\0';
    return flags;
}

static uint8_t request(struct peer *p, const char *req, char *out, size_t cap)
{
    send_seg(p, ACK | PSH, req, strlen(req));
    return read_answer(p, out, cap);
}

/* The body of an HTTP answer, and its status. */
static const char *body_of(const char *answer, int *status)
{
    ck_assert(sscanf(answer, "HTTP/1.%*c %d", status) == 1);
    const char *b = strstr(answer, "\r\n\r\n");
    ck_assert_ptr_nonnull(b);
    return b + 4;
}

START_TEST(arp)
{
    uint8_t f[60] = {0};
    memset(f, 0xff, 6);
    memcpy(f + 6, guest_mac, 6);
    tf_put16(f + 12, 0x0806);
    uint8_t *a = f + 14;
    tf_put16(a, 1);
    tf_put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    tf_put16(a + 6, 1);
    memcpy(a + 8, guest_mac, 6);
    tf_put32(a + 14, GUEST_IP);
    tf_put32(a + 24, 0x0a000001); /* someone else */
    ck_assert(!mmds_stack_claims(&st, f, sizeof(f)));
    tf_put32(a + 24, MMDS_IP);
    ck_assert(mmds_stack_claims(&st, f, sizeof(f)));
    mmds_stack_receive(&st, f, sizeof(f), false, now);
    uint8_t r[MMDS_MAX_FRAME];
    size_t n = mmds_stack_next_frame(&st, r, sizeof(r), now);
    ck_assert_uint_eq(n, 42);
    ck_assert_mem_eq(r, guest_mac, 6);
    static const uint8_t mmds_mac[6] = {0x06, 0x01, 0x23, 0x45, 0x67, 0x01};
    ck_assert_mem_eq(r + 6, mmds_mac, 6);
    ck_assert_uint_eq(tf_get16(r + 14 + 6), 2);
    ck_assert_mem_eq(r + 14 + 8, mmds_mac, 6);
    ck_assert_uint_eq(tf_get32(r + 14 + 14), MMDS_IP);
    ck_assert_uint_eq(tf_get32(r + 14 + 24), GUEST_IP);
    ck_assert_uint_eq(mmds_stack_next_frame(&st, r, sizeof(r), now), 0);
    /* A malformed ARP packet for the address is taken and dropped, counted. */
    a[4] = 7;
    mmds_stack_receive(&st, f, sizeof(f), false, now);
    ck_assert_uint_eq(mmds_stack_next_frame(&st, r, sizeof(r), now), 0);
    ck_assert_uint_eq(metric(&store.metrics.rx_bad_eth), 1);
}
END_TEST

START_TEST(v1_get_keepalive_and_close)
{
    struct peer p = connect_peer(40000);
    char ans[8192];
    int status;
    request(&p, "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "ami-12345678");
    ck_assert_int_eq(status, 200);
    ck_assert_ptr_nonnull(strstr(ans, "Content-Type: text/plain\r\n"));
    ck_assert_ptr_nonnull(strstr(ans, "Content-Length: 12\r\n"));
    request(&p, "GET /latest/meta-data HTTP/1.1\r\nAccept: application/json\r\n\r\n", ans,
            sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "{\"ami-id\":\"ami-12345678\",\"hostname\":\"vm1\"}");
    ck_assert_ptr_nonnull(strstr(ans, "Content-Type: application/json\r\n"));
    request(&p, "GET /latest/ HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "meta-data/");
    /* HTTP/1.0 without keep-alive: MMDS closes after the answer. */
    uint8_t flags =
        request(&p, "GET http://169.254.169.254/nope HTTP/1.0\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "Resource not found: /nope.");
    ck_assert_int_eq(status, 404);
    ck_assert_uint_eq(metric(&store.metrics.rx_no_token), 4); /* V1 counts, refuses nothing */
    ck_assert_uint_eq(flags & FIN, FIN);
    struct seg s;
    p.ack++;
    send_seg(&p, ACK | FIN, NULL, 0);
    ck_assert(next_seg(&s)); /* the ACK of our FIN */
    ck_assert_uint_eq(s.ack, p.seq);
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
    ck_assert_uint_eq(metric(&store.metrics.connections_created), 1);
    ck_assert_uint_eq(metric(&store.metrics.connections_destroyed), 1);
}
END_TEST

START_TEST(http_errors)
{
    struct peer p = connect_peer(40001);
    char ans[8192];
    int status;
    static const struct {
        const char *req;
        int status;
        const char *body;
    } cases[] = {
        {"GET /n HTTP/1.1\r\n\r\n", 501,
         "Cannot retrieve value. The value has an unsupported type."},
        {"DELETE /n HTTP/1.1\r\n\r\n", 405, "Not allowed HTTP method."},
        {"FOO /n HTTP/1.1\r\n\r\n", 501, "Unsupported HTTP method."},
        {"GET /n HTTP/2.0\r\n\r\n", 501, "Unsupported HTTP version."},
        {"GET /n\r\n\r\n", 400, "Invalid request."},
        {"GET x HTTP/1.1\r\n\r\n", 400, "Invalid URI."},
        {"GET /n HTTP/1.1\r\nbroken\r\n\r\n", 400,
         "Invalid header. Reason: Invalid format. Key: broken"},
        {"PUT /latest/api/token HTTP/1.1\r\n\r\n", 400,
         "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or "
         "`X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime."},
        {"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n", 400,
         "Invalid time to live value provided for token: 0. Please provide a value between 1 and "
         "21600."},
        {"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n", 400,
         "Invalid time to live value provided for token: 21601. Please provide a value between 1 "
         "and 21600."},
        {"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: ten\r\n\r\n", 400,
         "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:ten"},
        {"PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n"
         "X-metadata-token-ttl-seconds: 10\r\n\r\n",
         400, "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For"},
        {"PUT /token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 10\r\n\r\n", 404,
         "Resource not found: /token."},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        request(&p, cases[i].req, ans, sizeof(ans));
        ck_assert_str_eq(body_of(ans, &status), cases[i].body);
        ck_assert_int_eq(status, cases[i].status);
    }
    request(&p, "PATCH / HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_ptr_nonnull(strstr(ans, "Allow: GET, PUT\r\n"));
    /* A body (Content-Length) belongs to its request, not to the next one. */
    request(&p, "PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", ans, sizeof(ans));
    ck_assert_int_eq((body_of(ans, &status), status), 404);
    request(&p, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "vm1");
}
END_TEST

START_TEST(v2_tokens)
{
    mmds_store_configure(&store, MMDS_V2, false, "vm-a");
    struct peer p = connect_peer(40002);
    char ans[8192], token[128];
    int status;
    request(&p, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_int_eq((body_of(ans, &status), status), 401);
    ck_assert_str_eq(body_of(ans, &status),
                     "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` "
                     "header to specify the session token.");
    request(&p,
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
            ans, sizeof(ans));
    ck_assert_int_eq((body_of(ans, &status), status), 200);
    ck_assert_ptr_nonnull(strstr(ans, "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n"));
    snprintf(token, sizeof(token), "%s", body_of(ans, &status));
    ck_assert_uint_eq(strlen(token), MMDS_TOKEN_CHARS);
    char req[512];
    const char *names[] = {"X-metadata-token", "x-aws-ec2-metadata-token"};
    for (int i = 0; i < 2; i++) {
        snprintf(req, sizeof(req), "GET /latest/meta-data/hostname HTTP/1.1\r\n%s: %s\r\n\r\n",
                 names[i], token);
        request(&p, req, ans, sizeof(ans));
        ck_assert_str_eq(body_of(ans, &status), "vm1");
    }
    request(&p, "GET /latest HTTP/1.1\r\nX-metadata-token: AAAA\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "MMDS token not valid.");
    ck_assert_int_eq(status, 401);
    /* Expired: a minute later. */
    now += 60 * 1000;
    request(&p, req, ans, sizeof(ans));
    ck_assert_int_eq((body_of(ans, &status), status), 401);
    ck_assert_uint_eq(metric(&store.metrics.rx_no_token), 1);
    ck_assert_uint_eq(metric(&store.metrics.rx_invalid_token), 2);
    /* imds_compat: IMDS whatever Accept says. */
    mmds_store_configure(&store, MMDS_V2, true, "vm-a");
    request(&p, "PUT //latest//api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", ans,
            sizeof(ans));
    snprintf(token, sizeof(token), "%s", body_of(ans, &status));
    snprintf(req, sizeof(req),
             "GET /latest HTTP/1.1\r\nAccept: application/json\r\nX-metadata-token: %s\r\n\r\n",
             token);
    request(&p, req, ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "meta-data/");
}
END_TEST

START_TEST(out_of_order_and_duplicates)
{
    struct peer p = connect_peer(40003);
    const char *req = "GET /latest/meta-data/hostname HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t half = 20, len = strlen(req);
    /* The second half first: dropped, a duplicate ACK says what is expected. */
    struct peer later = p;
    later.seq += (uint32_t)half;
    send_seg(&later, ACK, req + half, len - half);
    struct seg s;
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.ack, p.seq);
    ck_assert_uint_eq(s.len, 0);
    ck_assert(!next_seg(&s));
    send_seg(&p, ACK, req, half);
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.ack, p.seq);
    /* The first half again (a duplicate), then one segment overlapping it and the rest. */
    struct peer dup = p;
    dup.seq -= (uint32_t)half;
    send_seg(&dup, ACK, req, half);
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.ack, p.seq);
    struct peer overlap = p;
    overlap.seq -= 5;
    send_seg(&overlap, ACK, req + half - 5, len - half + 5);
    p.seq = overlap.seq;
    char ans[4096];
    int status;
    read_answer(&p, ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "vm1");
}
END_TEST

START_TEST(window_and_retransmission)
{
    /* A large value, so that the answer takes several segments. */
    char big[6000];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "big", big);
    ck_assert_int_eq(mmds_store_put(&store, doc), MMDS_OK);
    cJSON_Delete(doc);
    struct peer p = connect_peer(40004);
    p.window = 0; /* the guest's buffer is full */
    send_seg(&p, ACK, "GET /big HTTP/1.1\r\n\r\n", 21);
    struct seg s;
    ck_assert(next_seg(&s)); /* the ACK of the request */
    ck_assert_uint_eq(s.len, 0);
    ck_assert(!next_seg(&s)); /* nothing past a shut window */
    uint64_t deadline = mmds_stack_next_deadline(&st);
    ck_assert_uint_gt(deadline, now);
    now = deadline;
    ck_assert(next_seg(&s)); /* a one-byte probe */
    ck_assert_uint_eq(s.len, 1);
    ck_assert_uint_eq(s.seq, p.ack);
    /* The window opens and the probe byte is taken: data flows, one MSS at a time. */
    p.window = 3000;
    p.ack += 1;
    send_seg(&p, ACK, NULL, 0);
    /* The SYN had no MSS option: 536 bytes a segment, as TCP's default says. */
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.seq, p.ack);
    ck_assert_uint_eq(s.len, 536);
    struct seg s2;
    size_t sent = s.len;
    while (next_seg(&s2)) {
        ck_assert_uint_eq(s2.seq, p.ack + sent);
        sent += s2.len;
    }
    ck_assert_uint_eq(sent, 3000); /* the window, no more */
    /* Not acknowledged: the timer sends the first again. Its deadline, once run, is later
     * (whether or not a frame can go now), never one already past. */
    now = mmds_stack_next_deadline(&st);
    mmds_stack_run_timers(&st, now);
    ck_assert_uint_gt(mmds_stack_next_deadline(&st), now);
    struct seg again;
    ck_assert(next_seg(&again));
    ck_assert_uint_eq(again.seq, s.seq);
    ck_assert_uint_eq(again.len, s.len);
    ck_assert_mem_eq(again.data, s.data, s.len);
    /* The first arrives, the second not: three duplicate ACKs bring it back at once. */
    p.ack += 536;
    send_seg(&p, ACK, NULL, 0);
    while (next_seg(&s2))
        ; /* what the opened window lets out */
    for (int i = 0; i < 3; i++)
        send_seg(&p, ACK, NULL, 0);
    ck_assert(next_seg(&s2));
    ck_assert_uint_eq(s2.seq, p.ack);
    p.ack += (uint32_t)s2.len;
    /* Then everything, in order, to the end. */
    p.window = 65535;
    char ans[8192];
    int status;
    send_seg(&p, ACK, NULL, 0);
    uint8_t flags = read_answer(&p, ans, sizeof(ans));
    ck_assert_uint_eq(flags & PSH, PSH);
    size_t n = strlen(ans);
    ck_assert_uint_gt(n, 100);
    ck_assert_str_eq(ans + n - 3, "vvv");
    ck_assert_uint_gt(p.ack - 1001, 5999); /* the whole answer, head and body, acknowledged */
    /* The connection carries on. */
    request(&p, "GET / HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "big");
    ck_assert_uint_eq(metric(&store.metrics.connections_destroyed), 0);
    /* A guest that stops answering: the connection goes after the retries, with a RST. */
    send_seg(&p, ACK, "GET /big HTTP/1.1\r\n\r\n", 21);
    for (int i = 0; i < 100 && mmds_stack_connections(&st); i++) {
        while (next_seg(&s))
            ;
        uint64_t d = mmds_stack_next_deadline(&st);
        if (d)
            now = d;
    }
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
    ck_assert_uint_eq(metric(&store.metrics.connections_destroyed), 1);
}
END_TEST

START_TEST(resets)
{
    struct peer p = connect_peer(40005);
    struct seg s;
    /* A RST outside the window is not believed; in it, it ends the connection. */
    struct peer blind = p;
    blind.seq += 100000;
    send_seg(&blind, RST, NULL, 0);
    ck_assert_uint_eq(mmds_stack_connections(&st), 1);
    while (next_seg(&s))
        ;
    send_seg(&p, RST, NULL, 0);
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
    ck_assert(!next_seg(&s)); /* never a RST for a RST */
    /* A segment for no connection gets a RST; so does a SYN to another port. */
    send_seg(&p, ACK, "GET / HTTP/1.1\r\n\r\n", 18);
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.flags & RST, RST);
    ck_assert_uint_eq(s.seq, p.ack);
    uint8_t f[128];
    size_t n = build(f, 40006, 81, 1, 0, SYN, 1000, NULL, 0);
    mmds_stack_receive(&st, f, n, false, now);
    ck_assert(next_seg(&s));
    ck_assert_uint_eq(s.flags, RST | ACK);
    ck_assert_uint_eq(s.ack, 2);
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
}
END_TEST

START_TEST(oversized_request)
{
    struct peer p = connect_peer(40007);
    char junk[1024];
    memset(junk, 'a', sizeof(junk));
    memcpy(junk, "GET / HTTP/1.1\r\nX: ", 19);
    struct seg s;
    for (int i = 0; i < 3; i++) {
        send_seg(&p, ACK, junk, sizeof(junk));
        while (next_seg(&s))
            ck_assert_uint_eq(s.flags & RST, 0);
    }
    ck_assert_uint_eq(mmds_stack_connections(&st), 1);
    send_seg(&p, ACK, junk, sizeof(junk)); /* the buffer is full, no end of head in it */
    bool reset = false;
    while (next_seg(&s))
        reset |= (s.flags & RST) != 0;
    ck_assert(reset);
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
}
END_TEST

START_TEST(malformed_and_floods)
{
    uint8_t f[256];
    size_t n = build(f, 40008, 80, 1, 0, SYN, 1000, NULL, 0);
    uint64_t errs = metric(&store.metrics.rx_accepted_err);
    /* Bad TCP checksum; bad IP checksum; a TCP header length beyond the segment; an IPv4
     * total length beyond the frame; a fragment; SYN with RST. */
    uint8_t g[256] = {0};
    memcpy(g, f, n);
    g[14 + 20 + 16] ^= 1;
    mmds_stack_receive(&st, g, n, false, now);
    memcpy(g, f, n);
    g[14 + 10] ^= 1;
    mmds_stack_receive(&st, g, n, false, now);
    memcpy(g, f, n);
    g[14 + 20 + 12] = 15 << 4;
    mmds_stack_receive(&st, g, n, true, now);
    memcpy(g, f, n);
    tf_put16(g + 14 + 2, 200);
    mmds_stack_receive(&st, g, n, true, now);
    size_t m = build(g, 40008, 80, 1, 0, SYN | RST, 1000, NULL, 0);
    mmds_stack_receive(&st, g, m, false, now);
    ck_assert_uint_eq(metric(&store.metrics.rx_accepted_err), errs + 5);
    /* Not TCP: unusual, dropped. */
    memcpy(g, f, n);
    g[14 + 9] = 17;
    g[14 + 10] = g[14 + 11] = 0;
    tf_put16(g + 14 + 10, tf_csum(g + 14, 20, 0));
    mmds_stack_receive(&st, g, n, false, now);
    ck_assert_uint_eq(metric(&store.metrics.rx_accepted_unusual), 1);
    ck_assert_uint_eq(mmds_stack_connections(&st), 0);
    struct seg s;
    ck_assert(!next_seg(&s));
    /* Truncated frames of every length are taken without harm. */
    for (size_t len = 0; len < n; len++)
        if (mmds_stack_claims(&st, f, len))
            mmds_stack_receive(&st, f, len, false, now);
    while (next_seg(&s))
        ;
    /* A SYN flood from 200 ports: never more than MMDS_MAX_CONNS connections. */
    for (uint16_t port = 1000; port < 1200; port++) {
        n = build(f, port, 80, port, 0, SYN, 1000, NULL, 0);
        mmds_stack_receive(&st, f, n, false, now++);
        ck_assert_uint_le(mmds_stack_connections(&st), MMDS_MAX_CONNS);
        if (port % 7 == 0)
            while (next_seg(&s))
                ;
    }
    ck_assert_uint_eq(mmds_stack_connections(&st), MMDS_MAX_CONNS);
    while (next_seg(&s))
        ;
    ck_assert_uint_ge(metric(&store.metrics.connections_created), 200);
    /* The newest connections still work. */
    struct peer p = connect_peer(2000);
    char ans[1024];
    int status;
    request(&p, "GET /latest/meta-data/hostname HTTP/1.1\r\n\r\n", ans, sizeof(ans));
    ck_assert_str_eq(body_of(ans, &status), "vm1");
}
END_TEST

Suite *mmds_stack_suite(void)
{
    Suite *s = suite_create("mmds_stack");
    TCase *t = tcase_create("stack");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, arp);
    tcase_add_test(t, v1_get_keepalive_and_close);
    tcase_add_test(t, http_errors);
    tcase_add_test(t, v2_tokens);
    tcase_add_test(t, out_of_order_and_duplicates);
    tcase_add_test(t, window_and_retransmission);
    tcase_add_test(t, resets);
    tcase_add_test(t, oversized_request);
    tcase_add_test(t, malformed_and_floods);
    suite_add_tcase(s, t);
    return s;
}
