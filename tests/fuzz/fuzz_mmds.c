/* libFuzzer target: MMDS's network stack and HTTP answers as a hostile guest reaches them.
 * The input is a script of records:
 *   byte 0        settings: bit 0 V2, bit 1 imds_compat, bit 2 checksums left to the device
 *   then records, each a type byte and its fields:
 *     0 raw frame:  len (1 byte), then that many bytes, taken as the guest sent them
 *     1 segment:    port (1), flags (1), window (2), seq mode (1), ack mode (1), len (1) and
 *                   the payload: a well-formed frame (checksums right) to MMDS from one of four
 *                   guest ports, its sequence numbers what that connection expects (mode 0),
 *                   off by a little (1), or taken from the input (2, 4 bytes each)
 *     2 time:       milliseconds to move the clock on (2)
 *     3 drain:      how many frames to take from the stack (1), tracked per port
 *     4 request:    HTTP bytes answered directly (len 2, then the bytes)
 * Every frame the stack sends is parsed back and must be well-formed (checksums included);
 * connections never pass their bound. ASan and UBSan catch the rest. */
#include "mmds/http.h"
#include "mmds/stack.h"
#include "../support/tcp_frame.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MMDS_IP  0xa9fea9feu
#define GUEST_IP 0x0a000002u

static struct mmds_store store;
static bool store_ready;

struct peer {
    uint32_t seq;      /* next the guest sends */
    uint32_t mmds_nxt; /* next expected from MMDS */
};

static uint32_t pseudo(uint32_t src, uint32_t dst, size_t len)
{
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6 + (uint32_t)len;
}

/* Checks a frame from MMDS and learns the sequence number it carries. */
static void check_output(const uint8_t *f, size_t n, struct peer *peers)
{
    if (n > MMDS_MAX_FRAME || n < 42)
        abort();
    if (tf_get16(f + 12) == 0x0806) {
        if (n != 42 || tf_get32(f + 14 + 14) != MMDS_IP)
            abort();
        return;
    }
    const uint8_t *ip = f + 14, *t = ip + 20;
    size_t total = tf_get16(ip + 2);
    if (tf_get16(f + 12) != 0x0800 || total + 14 != n || tf_csum(ip, 20, 0) != 0)
        abort();
    size_t tcp_len = total - 20, doff = (size_t)(t[12] >> 4) * 4;
    if (doff < 20 || doff > tcp_len ||
        tf_csum(t, tcp_len, pseudo(tf_get32(ip + 12), tf_get32(ip + 16), tcp_len)))
        abort();
    uint16_t port = tf_get16(t + 2);
    if (port >= 40000 && port < 40004) {
        struct peer *p = &peers[port - 40000];
        uint32_t end =
            tf_get32(t + 4) + (uint32_t)(tcp_len - doff) + !!(t[13] & 0x02) + !!(t[13] & 0x01);
        if ((int32_t)(end - p->mmds_nxt) > 0 || (t[13] & 0x02))
            p->mmds_nxt = end;
    }
}

static void drain(struct mmds_stack *st, unsigned max, uint64_t now, struct peer *peers)
{
    static uint8_t out[MMDS_MAX_FRAME];
    for (unsigned i = 0; i < max; i++) {
        size_t n = mmds_stack_next_frame(st, out, sizeof(out), now);
        if (!n)
            break;
        check_output(out, n, peers);
    }
}

/* A well-formed segment from the guest's port to MMDS's port 80. */
static size_t build(uint8_t *f, uint16_t port, uint32_t seq, uint32_t ack, uint8_t flags,
                    uint16_t window, const uint8_t *payload, size_t len)
{
    static const uint8_t dst[6] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};
    static const uint8_t mac[6] = {0x52, 0x54, 0, 0x12, 0x34, 0x56};
    struct tf_segment s = {.dst_mac = dst,
                           .src_mac = mac,
                           .src_ip = GUEST_IP,
                           .dst_ip = MMDS_IP,
                           .sport = port,
                           .dport = 80,
                           .window = window,
                           .seq = seq,
                           .ack = ack,
                           .flags = flags};
    return tf_build(f, &s, payload, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!store_ready) {
        if (mmds_store_init(&store, 4096) < 0)
            abort();
        cJSON *doc = cJSON_Parse("{\"latest\":{\"meta-data\":{\"ami-id\":\"ami-1\",\"n\":3,"
                                 "\"list\":[\"a\",{\"b\":\"c\"}]}},\"a/b\":\"x\",\"t~\":null}");
        if (mmds_store_put(&store, doc) != MMDS_OK)
            abort();
        cJSON_Delete(doc);
        store_ready = true;
    }
    if (size < 1)
        return 0;
    uint8_t settings = data[0];
    mmds_store_configure(&store, (settings & 1) ? MMDS_V2 : MMDS_V1, (settings & 2) != 0, "fuzz");
    bool partial = (settings & 4) != 0;
    struct mmds_stack st;
    if (mmds_stack_init(&st, &store, MMDS_IP, 7777, "fuzz") < 0)
        abort();
    struct peer peers[4];
    for (unsigned i = 0; i < 4; i++)
        peers[i] = (struct peer){.seq = 1000u * (i + 1)};
    uint64_t now = 1000000;
    static uint8_t frame[4096];
    size_t i = 1;
    while (i < size) {
        uint8_t type = data[i++] % 5;
        if (type == 0) {
            if (i >= size)
                break;
            size_t len = data[i++];
            if (len > size - i)
                len = size - i;
            if (mmds_stack_claims(&st, data + i, len))
                mmds_stack_receive(&st, data + i, len, partial, now);
            i += len;
        } else if (type == 1) {
            if (size - i < 7)
                break;
            unsigned pi = data[i] % 4;
            uint8_t flags = data[i + 1];
            uint16_t window = tf_get16(data + i + 2);
            uint8_t seq_mode = data[i + 4] % 3, ack_mode = data[i + 5] % 3;
            size_t len = data[i + 6];
            i += 7;
            struct peer *p = &peers[pi];
            uint32_t seq = p->seq, ack = p->mmds_nxt;
            if (seq_mode == 1)
                seq += (uint32_t)(int8_t)flags;
            if (ack_mode == 1)
                ack -= (uint32_t)(window & 7);
            if (seq_mode == 2 && size - i >= 4) {
                seq = tf_get32(data + i);
                i += 4;
            }
            if (ack_mode == 2 && size - i >= 4) {
                ack = tf_get32(data + i);
                i += 4;
            }
            if (len > size - i)
                len = size - i;
            size_t n = build(frame, (uint16_t)(40000 + pi), seq, ack, flags, window, data + i, len);
            i += len;
            if (!mmds_stack_claims(&st, frame, n))
                abort();
            mmds_stack_receive(&st, frame, n, partial, now);
            if (seq_mode == 0)
                p->seq += (uint32_t)len + !!(flags & 0x02) + !!(flags & 0x01);
        } else if (type == 2) {
            if (size - i < 2)
                break;
            now += tf_get16(data + i);
            i += 2;
        } else if (type == 3) {
            if (i >= size)
                break;
            drain(&st, data[i++], now, peers);
        } else {
            if (size - i < 2)
                break;
            size_t len = tf_get16(data + i) % 8192;
            i += 2;
            if (len > size - i)
                len = size - i;
            size_t req_len;
            if (mmds_http_frame(data + i, len, MMDS_RX_BUF, &req_len) == MMDS_HTTP_REQUEST) {
                if (req_len > len)
                    abort();
                struct mmds_http_reply r;
                mmds_store_lock(&store);
                bool ok = mmds_http_answer(&store, data + i, req_len, now, &r);
                mmds_store_unlock(&store);
                if (ok && (!r.data || r.len < 12 || memcmp(r.data, "HTTP/1.", 7)))
                    abort();
                free(r.data);
            }
            i += len;
        }
        if (mmds_stack_connections(&st) > MMDS_MAX_CONNS)
            abort();
    }
    drain(&st, 1000, now, peers);
    now += 600000; /* every timer fires: retransmissions, probes, then resets */
    for (int k = 0; k < 40; k++) {
        drain(&st, 1000, now, peers);
        now += 5000;
    }
    mmds_stack_destroy(&st);
    return 0;
}
