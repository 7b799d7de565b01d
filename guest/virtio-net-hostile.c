/*
 * Malformed frames on a virtio-net transmit queue. Each attack is one chain that a device must
 * not pass to the host: shorter than an Ethernet header, no room for the virtio-net header,
 * longer than 64 KiB, unknown header flags, segmentation (GSO) without the feature, a checksum
 * position (csum_start, csum_offset) outside the frame, a writable buffer in the chain. The
 * frames that can carry one carry a UDP datagram for the harness's echo server (the 64 KiB one
 * at its start, the rest padding), so a frame that got through comes back. After each attack
 * a good datagram must be echoed, the bad chain must come back as used, and the device must
 * not have asked for a reset.
 *
 * Command line: as virtio-net (net_mac=, net_ip=, net_host_ip=, net_host_mac=, net_port=);
 * net_skip=ATTACK,... skips attacks (the harness lists there what a VMM passes on, and says
 * what it does instead).
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vnet.h"

#define REPLY_US   3000000
#define GUEST_PORT 41000
#define HUGE_FRAME 65552 /* beyond 64 KiB + an Ethernet header */

enum attack { SHORT, NO_HEADER, HUGE, FLAGS, GSO, CSUM_START, CSUM_OFFSET, WRITABLE, ATTACKS };

static const struct {
    const char *name; /* for net_skip= */
    const char *what;
} attacks[ATTACKS] = {
    [SHORT] = {"short", "a 10-byte frame, shorter than an Ethernet header"},
    [NO_HEADER] = {"no-header", "a chain of 8 bytes, shorter than the virtio-net header"},
    [HUGE] = {"huge", "a frame of 65552 bytes, longer than 64 KiB"},
    [FLAGS] = {"flags", "unknown header flags (0x80)"},
    [GSO] = {"gso", "GSO TCPv4 without VIRTIO_NET_F_HOST_TSO4"},
    [CSUM_START] = {"csum-start", "NEEDS_CSUM with csum_start past the end of the frame"},
    [CSUM_OFFSET] = {"csum-offset", "NEEDS_CSUM with csum_offset past the end of the frame"},
    [WRITABLE] = {"writable", "a device-writable buffer in the transmit chain"},
};

static struct vnet net;
static struct virtio_device *dev;
static uint8_t host_mac[6];
static uint32_t guest_ip, host_ip;
static uint16_t echo_port;
static uint8_t *frame, *rx, *big;
static char token; /* marks the hostile chains: vnet_tx_reclaim leaves them alone */

static void read_parameters(void)
{
    char text[32];
    uint64_t v;
    if (!cmdline_get("net_host_mac", text, sizeof(text)) || !parse_mac(text, host_mac))
        bail_out("no valid net_host_mac= on the command line");
    if (!cmdline_get("net_ip", text, sizeof(text)) || !parse_ipv4(text, &guest_ip))
        bail_out("no valid net_ip= on the command line");
    if (!cmdline_get("net_host_ip", text, sizeof(text)) || !parse_ipv4(text, &host_ip))
        bail_out("no valid net_host_ip= on the command line");
    if (!cmdline_get_u64("net_port", &v) || !v || v > 65535)
        bail_out("no valid net_port= on the command line");
    echo_port = (uint16_t)v;
}

static bool skipped(enum attack a)
{
    return cmdline_list_has("net_skip", attacks[a].name);
}

static size_t udp_frame(uint8_t *f, uint16_t from, bool partial)
{
    static const char text[] = "virtio-net-hostile datagram";
    struct udp_endpoints e = {.src_ip = guest_ip, .dst_ip = host_ip};
    memcpy(e.src_mac, net.mac, 6);
    memcpy(e.dst_mac, host_mac, 6);
    e.src_port = from;
    e.dst_port = echo_port;
    return frame_udp(f, &e, text, sizeof(text) - 1, partial);
}

/* Receives until the echo to port `want` arrives; true if it did. *stray counts echoes of
 * the attack's datagram (port `bad`) that came first. Answers ARP requests on the way. */
static bool await_echo(uint16_t want, uint16_t bad, unsigned *stray)
{
    uint64_t start = time_us();
    while (time_us() - start < REPLY_US) {
        int32_t len = vnet_recv_wait(&net, rx, 2048, NULL, REPLY_US - (time_us() - start));
        if (len < 0)
            return false;
        vnet_tx_reclaim(&net);
        struct udp_view u;
        struct arp_view a;
        if (parse_udp(rx, (size_t)len, &u) && !u.error && u.e.src_port == echo_port) {
            if (u.e.dst_port == want)
                return true;
            if (u.e.dst_port == bad)
                (*stray)++;
        } else if (parse_arp(rx, (size_t)len, &a) && a.op == ARP_REQUEST && a.tpa == guest_ip) {
            static uint8_t reply[ARP_FRAME_LEN];
            frame_arp(reply, ARP_REPLY, net.mac, guest_ip, a.sha, a.spa);
            vnet_send(&net, NULL, reply, ARP_FRAME_LEN);
        }
    }
    return false;
}

static bool good_echo(uint16_t port, uint16_t bad, unsigned *stray)
{
    size_t n = udp_frame(frame, port, false);
    if (vnet_send(&net, NULL, frame, (uint32_t)n) < 0)
        return false;
    return await_echo(port, bad, stray);
}

/* ---- the attacks ----------------------------------------------------------------------------- */

static void launch(enum attack a, uint16_t port)
{
    static uint8_t chain_buf[2048] __attribute__((aligned(16)));
    static uint8_t writable[64];
    struct virtio_net_hdr *h = (struct virtio_net_hdr *)chain_buf;
    uint8_t *f = chain_buf + VNET_HDR_LEN;
    memset(h, 0, VNET_HDR_LEN);
    size_t n = udp_frame(f, port, false);
    struct vbuf b[2] = {{(uint64_t)chain_buf, 0, false}};
    unsigned count = 1;
    switch (a) {
    case SHORT:
        b[0].len = VNET_HDR_LEN + 10;
        break;
    case NO_HEADER:
        b[0].len = 8;
        break;
    case HUGE:
        /* The datagram, then padding to 65552 bytes: an IP stack would trim and deliver it. */
        memcpy(big, h, VNET_HDR_LEN);
        memcpy(big + VNET_HDR_LEN, f, n);
        b[0] = (struct vbuf){(uint64_t)big, VNET_HDR_LEN + HUGE_FRAME, false};
        break;
    case FLAGS:
        h->flags = 0x80;
        b[0].len = VNET_HDR_LEN + (uint32_t)n;
        break;
    case GSO:
        n = udp_frame(f, port, true);
        *h = (struct virtio_net_hdr){.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                     .gso_type = VIRTIO_NET_HDR_GSO_TCPV4,
                                     .hdr_len = UDP_FRAME_HLEN,
                                     .gso_size = 1000,
                                     .csum_start = ETH_HLEN + IP_HLEN,
                                     .csum_offset = 6};
        b[0].len = VNET_HDR_LEN + (uint32_t)n;
        break;
    case CSUM_START:
        n = udp_frame(f, port, true);
        *h = (struct virtio_net_hdr){.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                     .csum_start = (uint16_t)(n + 4),
                                     .csum_offset = 6};
        b[0].len = VNET_HDR_LEN + (uint32_t)n;
        break;
    case CSUM_OFFSET:
        n = udp_frame(f, port, true);
        *h = (struct virtio_net_hdr){.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                     .csum_start = ETH_HLEN + IP_HLEN,
                                     .csum_offset = 0xfff0};
        b[0].len = VNET_HDR_LEN + (uint32_t)n;
        break;
    case WRITABLE:
        b[0].len = VNET_HDR_LEN + (uint32_t)n;
        b[1] = (struct vbuf){(uint64_t)writable, sizeof(writable), true};
        count = 2;
        break;
    default:
        break;
    }
    if (virtq_add(net.txq, b, count, &token) < 0)
        bail_out("no room in the transmit queue for the attack");
    virtq_kick(net.txq);
}

static enum test_result attack(enum attack a)
{
    if (!net.dev)
        return skip("no device");
    if (skipped(a))
        return skip("in net_skip=: this VMM passes it on (the harness says what happens)");
    uint16_t bad = (uint16_t)(GUEST_PORT + 2 * a), good = (uint16_t)(bad + 1);
    diag("hostile: %s", attacks[a].what);
    unsigned stray = 0;
    launch(a, bad);
    bool echoed = good_echo(good, bad, &stray);
    bool drained = vnet_tx_drain(&net, REPLY_US);
    uint8_t status = virtio_get_status(dev);
    diag("a good datagram %s; the attack's datagram came back %u times; status 0x%02x",
         echoed ? "echoed" : "NOT echoed", stray, status);
    return echoed && drained && !stray && !(status & VIRTIO_STATUS_NEEDS_RESET) ? TEST_PASS
                                                                                : TEST_FAIL;
}

#define ATTACK_TEST(a)                                                                             \
    static enum test_result attack_##a(void)                                                       \
    {                                                                                              \
        return attack(a);                                                                          \
    }
ATTACK_TEST(SHORT)
ATTACK_TEST(NO_HEADER)
ATTACK_TEST(HUGE)
ATTACK_TEST(FLAGS)
ATTACK_TEST(GSO)
ATTACK_TEST(CSUM_START)
ATTACK_TEST(CSUM_OFFSET)
ATTACK_TEST(WRITABLE)

/* ---- around the attacks -------------------------------------------------------------------- */

static enum test_result set_up(void)
{
    read_parameters();
    dev = virtio_find(VIRTIO_ID_NET, 0);
    if (!dev)
        return TEST_FAIL;
    frame = phys_alloc(4096, 4096);
    rx = phys_alloc(4096, 4096);
    big = phys_alloc(VNET_HDR_LEN + HUGE_FRAME, 4096);
    memset(big, 0, VNET_HDR_LEN + HUGE_FRAME);
    struct vnet_options o = {
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_CSUM) |
                    VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX),
        .rx_interrupts = true,
    };
    if (!vnet_open(&net, dev, &o))
        return TEST_FAIL;
    if (!virtio_has(dev, VIRTIO_NET_F_CSUM) || virtio_has(dev, VIRTIO_NET_F_HOST_TSO4)) {
        diag("negotiated 0x%lx: CSUM needed, HOST_TSO4 not wanted", dev->features);
        return TEST_FAIL;
    }
    return TEST_PASS;
}

static enum test_result baseline(void)
{
    if (!net.dev)
        return skip("no device");
    unsigned stray = 0;
    return good_echo(GUEST_PORT + 100, 0, &stray) ? TEST_PASS : TEST_FAIL;
}

static enum test_result final_check(void)
{
    if (!net.dev)
        return skip("no device");
    unsigned stray = 0;
    bool ok = good_echo(GUEST_PORT + 101, 0, &stray) && vnet_tx_drain(&net, REPLY_US);
    return virtio_reset(dev) && ok ? TEST_PASS : TEST_FAIL;
}

#define SUFFIX ": not passed on, chain used, device keeps working"
static const struct guest_test tests[] = {
    {"virtio-net set up with CSUM, without HOST_TSO4", set_up},
    {"a good datagram is echoed", baseline},
    {"frame shorter than an Ethernet header" SUFFIX, attack_SHORT},
    {"chain shorter than the virtio-net header" SUFFIX, attack_NO_HEADER},
    {"frame longer than 64 KiB" SUFFIX, attack_HUGE},
    {"unknown header flags" SUFFIX, attack_FLAGS},
    {"GSO without the feature" SUFFIX, attack_GSO},
    {"csum_start outside the frame" SUFFIX, attack_CSUM_START},
    {"csum_offset outside the frame" SUFFIX, attack_CSUM_OFFSET},
    {"writable buffer in a transmit chain" SUFFIX, attack_WRITABLE},
    {"good datagrams still echoed at the end; reset", final_check},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
