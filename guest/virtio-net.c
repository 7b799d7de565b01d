/*
 * virtio-net against a host that answers: the harness puts the device's tap in a network
 * namespace with an address and runs a UDP echo server there. The guest sends raw Ethernet
 * frames and checks what comes back:
 *   - ARP who-has for the host's address: the host kernel's reply names the tap's MAC;
 *   - UDP datagrams in frames of 60 to 1514 bytes to the echo server: every echo arrives
 *     intact (lengths, IPv4 and UDP checksums, payload), with mergeable receive buffers of
 *     1 KiB (big frames span two) and interrupts, then after a reset without merging, header
 *     and frame in descriptors of their own, indirect tables and polling;
 *   - a datagram whose UDP checksum is left to the device (NEEDS_CSUM): the harness's peer
 *     reads it on the tap with its virtio-net header, completes the checksum as the host
 *     kernel would and answers whether it came out right;
 *   - a burst of more datagrams than a queue holds: every echo arrives.
 *
 * Command line: net_mac= (the MAC the VMM was given), net_ip= (the guest's address),
 * net_host_ip=, net_host_mac= (the tap's), net_port= (UDP echo), net_csum_port= (checksum
 * verdicts), net_burst= (default 300), net_skip=num-buffers (the harness's list of what a VMM
 * does not do, with its reasons).
 *
 * With net_tx_pps=N the guest instead measures the VMM's transmit rate limit: it sends 2N
 * frames from CPL3 as fast as the queue takes them (ethertype 0x88b5, to the tap's MAC); the
 * first N spend the bucket's burst, the next N must take about a second. It prints
 * "net-rate: frames=F burst_us=B rest_us=R pps=P" for the harness, which counts the frames on
 * the tap.
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vnet.h"

#define REPLY_US      3000000 /* the host answers in microseconds; the guest runs emulated */
#define GUEST_PORT    40000
#define ETH_P_LOCAL   0x88b5 /* IEEE 802 local experimental: the host drops it quietly */
#define DEFAULT_BURST 300

static struct vnet net;
static struct virtio_device *dev;
static uint8_t want_mac[6], host_mac[6];
static uint32_t guest_ip, host_ip;
static uint16_t echo_port, csum_port;
static uint64_t burst = DEFAULT_BURST;
static uint8_t *frame, *rx, *payload;
static uint64_t others;          /* frames received that no check waited for */
static unsigned unmerged_frames; /* echoes received without MRG_RXBUF */
static unsigned bad_num_buffers; /* of those, headers whose num_buffers is not 1 */

static void required(const char *key, char *buf, size_t size)
{
    if (!cmdline_get(key, buf, size))
        bail_out("no %s= on the command line", key);
}

static void read_parameters(void)
{
    char text[32];
    required("net_mac", text, sizeof(text));
    if (!parse_mac(text, want_mac))
        bail_out("net_mac=%s is not a MAC address", text);
    required("net_host_mac", text, sizeof(text));
    if (!parse_mac(text, host_mac))
        bail_out("net_host_mac=%s is not a MAC address", text);
    required("net_ip", text, sizeof(text));
    if (!parse_ipv4(text, &guest_ip))
        bail_out("net_ip=%s is not an IPv4 address", text);
    required("net_host_ip", text, sizeof(text));
    if (!parse_ipv4(text, &host_ip))
        bail_out("net_host_ip=%s is not an IPv4 address", text);
    uint64_t v;
    if (!cmdline_get_u64("net_port", &v) || !v || v > 65535)
        bail_out("no valid net_port= on the command line");
    echo_port = (uint16_t)v;
    csum_port = (uint16_t)(echo_port + 1);
    if (cmdline_get_u64("net_csum_port", &v) && v && v <= 65535)
        csum_port = (uint16_t)v;
    cmdline_get_u64("net_burst", &burst);
}

/* The next frame that `want` accepts, within REPLY_US; others are answered (ARP) or counted. */
static int32_t receive_matching(bool (*want)(const uint8_t *f, int32_t len, void *ctx), void *ctx,
                                struct virtio_net_hdr *hdr)
{
    uint64_t deadline = time_us() + REPLY_US;
    int32_t len;
    while ((len = vnet_recv_until(&net, rx, 2048, hdr, deadline)) >= 0) {
        if (want(rx, len, ctx))
            return len;
        if (!vnet_answer_arp(&net, guest_ip, rx, len))
            others++;
    }
    return len;
}

static struct vnet_options merged_options(void)
{
    return (struct vnet_options){
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_STATUS) |
                    VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) | VIRTIO_BIT(VIRTIO_NET_F_CSUM) |
                    VIRTIO_BIT(VIRTIO_F_EVENT_IDX),
        .rx_interrupts = true,
        .rx_buf_size = 1024,
    };
}

/* ---- the checks ---------------------------------------------------------------------------- */

static enum test_result find_device(void)
{
    dev = virtio_find(VIRTIO_ID_NET, 0);
    if (!dev)
        return TEST_FAIL;
    frame = phys_alloc(4096, 4096);
    rx = phys_alloc(4096, 4096);
    payload = phys_alloc(4096, 4096);
    return TEST_PASS;
}

static enum test_result negotiate(void)
{
    if (!dev)
        return skip("no device");
    struct vnet_options o = merged_options();
    if (!vnet_open(&net, dev, &o))
        return TEST_FAIL;
    uint64_t want = o.features | VIRTIO_BIT(VIRTIO_F_VERSION_1);
    diag("device features 0x%lx, negotiated 0x%lx, queues of %u", dev->device_features,
         dev->features, net.rxq->size);
    return (dev->features & want) == want ? TEST_PASS : TEST_FAIL;
}

static enum test_result mac_from_config(void)
{
    if (!net.dev)
        return skip("no device");
    return vnet_mac_is(&net, want_mac) ? TEST_PASS : TEST_FAIL;
}

static enum test_result link_up(void)
{
    if (!net.dev)
        return skip("no device");
    return vnet_link_up(&net) ? TEST_PASS : TEST_FAIL;
}

static bool is_arp_reply(const uint8_t *f, int32_t len, void *ctx)
{
    struct arp_view *a = ctx;
    return parse_arp(f, (size_t)len, a) && a->op == ARP_REPLY && a->spa == host_ip &&
           a->tpa == guest_ip;
}

static enum test_result arp(void)
{
    if (!net.dev)
        return skip("no device");
    static const uint8_t zero[6];
    size_t n = frame_arp(frame, ARP_REQUEST, net.mac, guest_ip, zero, host_ip);
    if (vnet_send(&net, NULL, frame, (uint32_t)n) < 0)
        return TEST_FAIL;
    struct arp_view a;
    int32_t len = receive_matching(is_arp_reply, &a, NULL);
    if (len < 0) {
        diag("no ARP reply (%lu other frames)", others);
        return TEST_FAIL;
    }
    char spa[16], sha[18], tha[18];
    format_ipv4(spa, a.spa);
    format_mac(sha, a.sha);
    format_mac(tha, a.tha);
    diag("ARP reply: %s is at %s (to %s), a %d-byte frame", spa, sha, tha, len);
    return !memcmp(a.sha, host_mac, 6) && !memcmp(a.tha, net.mac, 6) &&
                   !memcmp(rx + 6, host_mac, 6) && !memcmp(rx, net.mac, 6)
               ? TEST_PASS
               : TEST_FAIL;
}

static struct udp_endpoints to_port(uint16_t port, uint16_t from)
{
    struct udp_endpoints e = {.src_ip = guest_ip, .dst_ip = host_ip};
    memcpy(e.src_mac, net.mac, 6);
    memcpy(e.dst_mac, host_mac, 6);
    e.src_port = from;
    e.dst_port = port;
    return e;
}

struct udp_wait {
    uint16_t from_port, to_port;
    struct udp_view u;
};

static bool is_udp_from(const uint8_t *f, int32_t len, void *ctx)
{
    struct udp_wait *w = ctx;
    return parse_udp(f, (size_t)len, &w->u) && w->u.e.src_ip == host_ip &&
           w->u.e.src_port == w->from_port && w->u.e.dst_port == w->to_port;
}

static void fill_payload(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

/* One datagram of frame length flen to the echo server and its echo back; false with a
 * diagnostic when the echo is missing or differs. */
static bool echo_once(uint16_t flen, unsigned seed)
{
    size_t plen = flen - UDP_FRAME_HLEN;
    fill_payload(payload, plen, seed);
    struct udp_endpoints e = to_port(echo_port, (uint16_t)(GUEST_PORT + seed));
    size_t n = frame_udp(frame, &e, payload, plen, false);
    if (vnet_send(&net, NULL, frame, (uint32_t)n) < 0) {
        diag("%u bytes: transmit queue full", flen);
        return false;
    }
    struct udp_wait w = {.from_port = echo_port, .to_port = e.src_port};
    struct virtio_net_hdr hdr;
    int32_t len = receive_matching(is_udp_from, &w, &hdr);
    if (len < 0) {
        diag("%u-byte frame: no echo (%lu other frames)", flen, others);
        return false;
    }
    if (w.u.error) {
        diag("%u-byte frame: the echo is malformed: %s", flen, w.u.error);
        return false;
    }
    if (w.u.len != plen || memcmp(w.u.payload, payload, plen)) {
        diag("%u-byte frame: the echo's payload differs (%zu bytes back, %zu sent)", flen, w.u.len,
             plen);
        return false;
    }
    if ((size_t)len != n) {
        diag("%u-byte frame: the echo is a %d-byte frame", flen, len);
        return false;
    }
    if (!net.mergeable) {
        unmerged_frames++;
        bad_num_buffers += hdr.num_buffers != 1;
    }
    return true;
}

static bool echo_all_sizes(void)
{
    bool ok = true;
    uint64_t merged = net.rx_merged;
    for (size_t i = 0; i < VNET_CHECK_SIZES; i++)
        ok = echo_once(vnet_check_sizes[i], (unsigned)i) && ok;
    diag("%zu sizes from %u to %u bytes; %lu echoes spanned several buffers",
         (size_t)VNET_CHECK_SIZES, vnet_check_sizes[0], vnet_check_sizes[VNET_CHECK_SIZES - 1],
         net.rx_merged - merged);
    return ok;
}

static enum test_result echo_merged(void)
{
    if (!net.dev)
        return skip("no device");
    uint64_t irqs = net.rxq->irq_count, merged = net.rx_merged, want = 0;
    /* 1 KiB buffers: the echoes of frames above 1012 bytes need two. */
    for (size_t i = 0; i < VNET_CHECK_SIZES; i++)
        want += VNET_HDR_LEN + (uint32_t)vnet_check_sizes[i] > net.rx_buf_size;
    bool ok = echo_all_sizes();
    bool spans = net.rx_merged - merged == want;
    /* Echoes that arrived before the guest waited leave their interrupt pending (interrupts
     * are on only while it waits): one more echo, then a wait for its interrupt. */
    uint64_t before = net.rxq->irq_count;
    ok = echo_once(vnet_check_sizes[0], 99) && ok;
    bool interrupts = virtq_wait_irq(net.rxq, before, REPLY_US);
    diag("receive interrupts: %lu", net.rxq->irq_count - irqs);
    if (!spans)
        diag("expected %lu echoes in two buffers, saw %lu", want, net.rx_merged - merged);
    return ok && spans && interrupts ? TEST_PASS : TEST_FAIL;
}

static enum test_result checksum_offload(void)
{
    if (!net.dev)
        return skip("no device");
    if (!virtio_has(dev, VIRTIO_NET_F_CSUM))
        return TEST_FAIL;
    static const char text[] = "ember checksum offload test: the device completes this sum";
    struct udp_endpoints e = to_port(csum_port, GUEST_PORT + 999);
    size_t n = frame_udp(frame, &e, text, sizeof(text) - 1, true);
    struct virtio_net_hdr hdr = {
        .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = ETH_HLEN + IP_HLEN, .csum_offset = 6};
    if (vnet_send(&net, &hdr, frame, (uint32_t)n) < 0)
        return TEST_FAIL;
    struct udp_wait w = {.from_port = csum_port, .to_port = e.src_port};
    if (receive_matching(is_udp_from, &w, NULL) < 0 || w.u.error) {
        diag("no verdict from the host's checksum peer%s%s", w.u.error ? ": " : "",
             w.u.error ? w.u.error : "");
        return TEST_FAIL;
    }
    char verdict[128];
    size_t len = w.u.len < sizeof(verdict) - 1 ? w.u.len : sizeof(verdict) - 1;
    memcpy(verdict, w.u.payload, len);
    verdict[len] = '\0';
    diag("host: %s", verdict);
    return !strncmp(verdict, "csum ok", 7) ? TEST_PASS : TEST_FAIL;
}

/* More datagrams than either queue holds, sent while the echoes come back. */
static enum test_result echo_burst(void)
{
    if (!net.dev)
        return skip("no device");
    static uint8_t seen[4096];
    if (burst > sizeof(seen))
        burst = sizeof(seen);
    memset(seen, 0, sizeof(seen));
    uint64_t sent = 0, got = 0, bad = 0;
    uint16_t port = GUEST_PORT + 500;
    struct udp_endpoints e = to_port(echo_port, port);
    uint64_t start = time_us(), last = start;
    while (got < burst && time_us() - last < REPLY_US) {
        if (sent < burst) {
            uint8_t p[16];
            memset(p, 0xa5, sizeof(p));
            put32(p, (uint32_t)sent);
            size_t n = frame_udp(frame, &e, p, sizeof(p), false);
            if (vnet_queue_tx(&net, NULL, frame, (uint32_t)n) == 0)
                sent++;
            if (sent % 16 == 0 || sent == burst)
                virtq_kick(net.txq);
        }
        int32_t len = vnet_recv(&net, rx, 2048, NULL);
        if (len == -2)
            return TEST_FAIL;
        if (len < 0) {
            vnet_tx_reclaim(&net);
            continue;
        }
        struct udp_view u;
        if (parse_udp(rx, (size_t)len, &u) && u.e.dst_port == port) {
            uint32_t seq = u.len == 16 && !u.error ? get32(u.payload) : UINT32_MAX;
            if (seq < burst && !seen[seq]) {
                seen[seq] = 1;
                got++;
                last = time_us();
            } else {
                bad++;
            }
        } else if (!vnet_answer_arp(&net, guest_ip, rx, len)) {
            others++;
        }
    }
    diag("%lu sent, %lu distinct echoes, %lu bad or repeated, in %lu ms", sent, got, bad,
         (time_us() - start) / 1000);
    return got == burst && !bad ? TEST_PASS : TEST_FAIL;
}

static enum test_result echo_unmerged(void)
{
    if (!net.dev)
        return skip("no device");
    struct vnet_options o = {
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) |
                    VIRTIO_BIT(VIRTIO_F_EVENT_IDX),
        .rx_buf_size = ETH_MAX_FRAME,
        .rx_split = true,
    };
    if (!virtio_reset(dev) || !vnet_open(&net, dev, &o))
        return TEST_FAIL;
    if (net.mergeable || !virtio_has(dev, VIRTIO_F_INDIRECT_DESC)) {
        diag("negotiated 0x%lx", dev->features);
        return TEST_FAIL;
    }
    return echo_all_sizes() ? TEST_PASS : TEST_FAIL;
}

static bool skipped(const char *word)
{
    return cmdline_list_has("net_skip", word);
}

/* 5.1.6.4.1: without VIRTIO_NET_F_MRG_RXBUF the device MUST set num_buffers to 1. */
static enum test_result num_buffers_one(void)
{
    if (!net.dev)
        return skip("no device");
    if (skipped("num-buffers"))
        return skip("in net_skip=: this VMM leaves num_buffers 0 (the harness says why)");
    diag("%u of %u headers without MRG_RXBUF had num_buffers other than 1 (the last: %u)",
         bad_num_buffers, unmerged_frames, net.last_num_buffers);
    return unmerged_frames && !bad_num_buffers ? TEST_PASS : TEST_FAIL;
}

static enum test_result quiet_reset(void)
{
    if (!net.dev)
        return skip("no device");
    bool drained = vnet_tx_drain(&net, REPLY_US);
    diag("%lu frames received that no check waited for", others);
    return virtio_reset(dev) && drained ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-net device found", find_device},
    {"features VERSION_1, MAC, STATUS, MRG_RXBUF, CSUM and EVENT_IDX negotiated", negotiate},
    {"the MAC in the configuration space is the one the VMM was given", mac_from_config},
    {"link status is up", link_up},
    {"ARP who-has for the host: the host kernel answers with the tap's MAC", arp},
    {"UDP echo, frames of 60 to 1514 bytes, 1 KiB mergeable buffers, interrupts: intact",
     echo_merged},
    {"checksum offload (NEEDS_CSUM): the host gets a correct UDP checksum", checksum_offload},
    {"a burst of datagrams beyond the queue size: every echo arrives", echo_burst},
    {"after a reset, no merging, header apart, indirect, polling: echoes intact", echo_unmerged},
    {"without MRG_RXBUF every received header says num_buffers 1", num_buffers_one},
    {"every transmit buffer used, device reset", quiet_reset},
};

/* ---- transmit rate limit (net_tx_pps=) ------------------------------------------------------ */

struct rate_run {
    struct vnet *n;
    uint8_t *frame;
    uint64_t frames, burst; /* frames to send; the first `burst` spend the bucket */
    uint64_t burst_cycles, rest_cycles;
};

static uint64_t user_rate(uint64_t arg)
{
    struct rate_run *r = (struct rate_run *)arg;
    uint64_t sent = 0, start = rdtsc(), burst_end = 0, base = r->n->tx_completed;
    while (r->n->tx_completed - base < r->frames) {
        while (sent < r->frames && vnet_queue_tx(r->n, NULL, r->frame, ETH_MIN_FRAME) == 0)
            sent++;
        virtq_kick(r->n->txq);
        vnet_tx_reclaim(r->n);
        if (!burst_end && r->n->tx_completed - base >= r->burst)
            burst_end = rdtsc();
        cpu_relax();
    }
    uint64_t end = rdtsc();
    r->burst_cycles = burst_end - start;
    r->rest_cycles = end - burst_end;
    return 0;
}

static uint64_t tx_pps;

static enum test_result rate_limit(void)
{
    if (!net.dev)
        return skip("no device");
    static struct rate_run r;
    r.n = &net;
    r.frame = frame;
    memcpy(frame, host_mac, 6);
    memcpy(frame + 6, net.mac, 6);
    put16(frame + 12, ETH_P_LOCAL);
    memset(frame + ETH_HLEN, 0x5a, ETH_MIN_FRAME - ETH_HLEN);
    r.burst = tx_pps;
    r.frames = 2 * tx_pps;
    run_user(user_rate, (uint64_t)&r);
    uint64_t burst_us = r.burst_cycles * 1000000 / tsc_hz;
    uint64_t rest_us = r.rest_cycles * 1000000 / tsc_hz;
    uint64_t total_us = burst_us + rest_us;
    uint64_t pps = total_us ? (r.frames - r.burst) * 1000000 / total_us : 0;
    printf("net-rate: frames=%lu burst_us=%lu rest_us=%lu pps=%lu\n", r.frames, burst_us, rest_us,
           pps);
    /* The bucket holds tx_pps frames at the start: the first tx_pps go at once, the others at
     * the limit, so all of them take at least a second however fast or slow this machine, and
     * measured from the start that bound cannot be blurred by this vCPU being descheduled
     * (which delays when it sees a completion, never the device). A device far slower than
     * its limit (three times) fails too. */
    return burst_us < 500000 && pps * 100 <= tx_pps * 105 && pps * 3 >= tx_pps ? TEST_PASS
                                                                               : TEST_FAIL;
}

static enum test_result rate_open(void)
{
    if (!dev)
        return skip("no device");
    struct vnet_options o = merged_options();
    o.rx_interrupts = false;
    o.features &= ~VIRTIO_BIT(VIRTIO_NET_F_CSUM);
    if (!vnet_open(&net, dev, &o))
        return TEST_FAIL;
    diag("net_tx_pps=%lu: sending %lu frames", tx_pps, 2 * tx_pps);
    return TEST_PASS;
}

static const struct guest_test rate_tests[] = {
    {"virtio-net device found", find_device},
    {"device set up for polling", rate_open},
    {"transmit rate: after the burst, frames go no faster than the VMM's limit", rate_limit},
    {"every transmit buffer used, device reset", quiet_reset},
};

void guest_main(void)
{
    tsc_calibrate();
    read_parameters();
    if (cmdline_get_u64("net_tx_pps", &tx_pps) && tx_pps) {
        user_mode_init();
        tap_run(rate_tests, ARRAY_SIZE(rate_tests));
    }
    tap_run(tests, ARRAY_SIZE(tests));
}
