/*
 * vhost-user-net against a back-end that sends every frame back with its MAC addresses swapped
 * (DPDK testpmd's macswap forwarding on a vhost PMD port). The guest sends raw Ethernet frames
 * of the local experimental ethertype, each holding a sequence number and a pattern derived
 * from it, and checks that each comes back once, macswapped (to its own MAC, from the peer it
 * was sent to) and otherwise intact:
 *   - one frame at a time, a kick for each;
 *   - bursts of 256 frames (a full transmit ring) with a kick after every 16, every echo waited
 *     for by interrupt, no more echoes in flight than receive buffers posted;
 *   - frames of 60 to 1514 bytes, with mergeable receive buffers of 1 KiB (big frames span two).
 *
 * Command line: vun_mac= (the MAC the VMM was given). With vun_resume=S the guest then sends
 * one frame at a time for up to S seconds, each given 300 ms to come back: it prints
 * "# vun: streaming" first (the harness then kills the back-end and starts it again), and
 * passes once frames were lost and then 50 came back in a row: the traffic resumed.
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vnet.h"

#define ETH_P_LOCAL   0x88b5 /* IEEE 802 local experimental */
#define REPLY_US      3000000
#define BURST_MAX     256
#define KICK_EVERY    16
#define BURST_ROUNDS  4
#define SINGLE_FRAMES 64
#define RESUME_WAIT   300000 /* per frame while streaming */
#define RESUME_RUN    50

static struct vnet net;
static struct virtio_device *dev;
static uint8_t want_mac[6];
static const uint8_t peer_mac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
static uint8_t *frame, *rx;
static uint64_t resume_s, burst = BURST_MAX, burst_len;
static uint32_t next_seq = 1;
static uint64_t strays; /* frames received that were not an expected echo */

static uint8_t pattern_byte(uint32_t seq, uint32_t i)
{
    uint32_t x = seq * 2654435761u + i * 40503u;
    return (uint8_t)(x >> 13);
}

/* A frame of len bytes (at least 60): to the peer from us, sequence number and length, then
 * the pattern. */
static void build(uint8_t *f, uint32_t seq, uint32_t len)
{
    memcpy(f, peer_mac, 6);
    memcpy(f + 6, net.mac, 6);
    f[12] = ETH_P_LOCAL >> 8;
    f[13] = ETH_P_LOCAL & 0xff;
    memcpy(f + 14, &seq, 4);
    memcpy(f + 18, &len, 4);
    for (uint32_t i = 22; i < len; i++)
        f[i] = pattern_byte(seq, i);
}

/* The echo of a frame built by build(): its sequence number, or 0 when it is none. */
static uint32_t echo_seq(const uint8_t *f, int32_t len)
{
    uint32_t seq, flen;
    if (len < 60 || memcmp(f, net.mac, 6) || memcmp(f + 6, peer_mac, 6) || f[12] != 0x88 ||
        f[13] != 0xb5)
        return 0;
    memcpy(&seq, f + 14, 4);
    memcpy(&flen, f + 18, 4);
    if (flen != (uint32_t)len || seq == 0)
        return 0;
    for (uint32_t i = 22; i < flen; i++) {
        if (f[i] != pattern_byte(seq, i)) {
            diag("frame %u: byte %u is 0x%02x, not 0x%02x", seq, i, f[i], pattern_byte(seq, i));
            return 0;
        }
    }
    return seq;
}

/* The next echo within timeout_us: its sequence number, 0 on timeout, -1 (as ~0) on a device
 * error. */
static int64_t receive_echo(uint64_t timeout_us)
{
    uint64_t deadline = time_us() + timeout_us;
    int32_t len;
    while ((len = vnet_recv_until(&net, rx, 2048, NULL, deadline)) >= 0) {
        uint32_t seq = echo_seq(rx, len);
        if (seq)
            return seq;
        strays++;
    }
    return len == -2 ? -1 : 0;
}

static bool send_frame(uint32_t seq, uint32_t len, bool kick)
{
    build(frame, seq, len);
    uint64_t start = time_us();
    while ((kick ? vnet_send(&net, NULL, frame, len) : vnet_queue_tx(&net, NULL, frame, len)) < 0) {
        if (time_us() - start > REPLY_US) {
            diag("no transmit buffer came back in %u ms", REPLY_US / 1000);
            return false;
        }
        cpu_relax();
    }
    return true;
}

/* ---- the checks ---------------------------------------------------------------------------- */

static enum test_result find_device(void)
{
    dev = virtio_find(VIRTIO_ID_NET, 0);
    if (!dev)
        return TEST_FAIL;
    frame = phys_alloc(4096, 4096);
    rx = phys_alloc(4096, 4096);
    return TEST_PASS;
}

static enum test_result negotiate(void)
{
    if (!dev)
        return skip("no device");
    struct vnet_options o = {
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_STATUS) |
                    VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX),
        .rx_interrupts = true,
        .rx_buf_size = 1024,
    };
    if (!vnet_open(&net, dev, &o))
        return TEST_FAIL;
    uint64_t want = o.features | VIRTIO_BIT(VIRTIO_F_VERSION_1);
    diag("negotiated 0x%lx, queues of %u", dev->features, net.rxq->size);
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

static enum test_result one_at_a_time(void)
{
    if (!net.dev)
        return skip("no device");
    for (unsigned k = 0; k < SINGLE_FRAMES; k++) {
        uint32_t seq = next_seq++;
        if (!send_frame(seq, 64 + k, true))
            return TEST_FAIL;
        int64_t got = receive_echo(REPLY_US);
        if (got != seq) {
            diag("frame %u of %u: %s %ld (%lu stray frames)", k + 1, SINGLE_FRAMES,
                 got ? "got the echo of" : "no echo", got, strays);
            return TEST_FAIL;
        }
    }
    diag("%u frames echoed, %lu stray", SINGLE_FRAMES, strays);
    return TEST_PASS;
}

/* One echo of a burst's: within [first, first + burst), never twice. */
static bool take_echo(unsigned round, uint32_t first, uint8_t *seen, unsigned *got)
{
    int64_t seq = receive_echo(REPLY_US);
    if (seq <= 0) {
        diag("round %u: %u of %lu frames came back, then %s", round + 1, *got, burst,
             seq ? "a device error" : "none for 3 s");
        return false;
    }
    if (seq < first || (uint64_t)seq >= first + burst || seen[seq - first]++) {
        diag("round %u: frame %ld unexpected or twice", round + 1, seq);
        return false;
    }
    (*got)++;
    return true;
}

/* Bursts of a full transmit ring (256 frames), a kick after each 16: every one comes back
 * exactly once. Even rounds mix 60 to 760 bytes, odd rounds are 1514 bytes (two 1 KiB receive
 * buffers each). The echoes in flight are bounded by the receive buffers posted: a back-end
 * with no buffer for a frame drops it (testpmd counts it in TX-dropped), as a NIC does; a
 * driver that sends more than it can take back loses echoes. */
static enum test_result kick_every_16(void)
{
    if (!net.dev)
        return skip("no device");
    static uint8_t seen[BURST_MAX];
    uint64_t kicks = 0, waits = 0;
    for (unsigned round = 0; round < BURST_ROUNDS; round++) {
        uint32_t first = next_seq, len = round % 2 ? 1514 : 0;
        if (burst_len)
            len = (uint32_t)burst_len;
        uint32_t longest = len ? len : 760;
        unsigned per_frame = (VNET_HDR_LEN + longest + net.rx_buf_size - 1) / net.rx_buf_size;
        unsigned window = net.rx_bufs / per_frame;
        next_seq += (uint32_t)burst;
        memset(seen, 0, sizeof(seen));
        unsigned got = 0;
        for (unsigned k = 0; k < burst; k++) {
            /* Room in the receive ring for every echo on its way. */
            while (k - got >= window) {
                kicks += virtq_kick(net.txq);
                waits++;
                if (!take_echo(round, first, seen, &got))
                    return TEST_FAIL;
            }
            if (!send_frame(first + k, len ? len : 60 + (k % 8) * 100, false))
                return TEST_FAIL;
            if ((k + 1) % KICK_EVERY == 0)
                kicks += virtq_kick(net.txq);
        }
        kicks += virtq_kick(net.txq);
        while (got < burst) {
            if (!take_echo(round, first, seen, &got))
                return TEST_FAIL;
        }
    }
    diag("%u rounds of %lu frames, %lu waits for receive room, %lu kicks the device asked for",
         BURST_ROUNDS, burst, waits, kicks);
    return TEST_PASS;
}

static enum test_result frame_sizes(void)
{
    if (!net.dev)
        return skip("no device");
    unsigned merged_before = (unsigned)net.rx_merged;
    for (unsigned k = 0; k < VNET_CHECK_SIZES; k++) {
        uint32_t seq = next_seq++;
        if (!send_frame(seq, vnet_check_sizes[k], true))
            return TEST_FAIL;
        int64_t got = receive_echo(REPLY_US);
        if (got != seq) {
            diag("a %u-byte frame: %s", vnet_check_sizes[k], got ? "another came back" : "no echo");
            return TEST_FAIL;
        }
    }
    diag("%u sizes, %u echoes spanned two receive buffers", (unsigned)VNET_CHECK_SIZES,
         (unsigned)net.rx_merged - merged_before);
    return TEST_PASS;
}

/* One frame at a time for up to resume_s seconds: lost ones (the back-end gone), then
 * RESUME_RUN in a row that came back. */
static enum test_result resume(void)
{
    if (!net.dev)
        return skip("no device");
    if (!resume_s)
        return skip("no vun_resume=");
    printf("# vun: streaming\n");
    uint64_t start = time_us(), lost = 0, echoed = 0, run = 0, gap_start = 0, gap_us = 0;
    while (time_us() - start < resume_s * 1000000) {
        uint32_t seq = next_seq++;
        if (!send_frame(seq, 128, true))
            continue; /* the ring is full while nobody serves it */
        int64_t got;
        do
            got = receive_echo(RESUME_WAIT);
        while (got > 0 && got < seq); /* late echoes of frames given up on */
        if (got < 0)
            return TEST_FAIL;
        if (got == seq) {
            echoed++;
            run++;
            if (lost && !gap_us)
                gap_us = time_us() - gap_start;
            if (lost && run >= RESUME_RUN) {
                diag("%lu frames echoed, %lu lost over %lu ms, then %u in a row", echoed, lost,
                     gap_us / 1000, RESUME_RUN);
                return TEST_PASS;
            }
        } else {
            if (!lost)
                gap_start = time_us();
            lost++;
            run = 0;
            gap_us = 0;
        }
    }
    diag("%lu echoed, %lu lost, %lu in a row at the end", echoed, lost, run);
    return TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-net device found", find_device},
    {"VERSION_1, MAC, STATUS, MRG_RXBUF, EVENT_IDX negotiated", negotiate},
    {"MAC address from the configuration space", mac_from_config},
    {"link up", link_up},
    {"frames one at a time come back macswapped", one_at_a_time},
    {"bursts of 256 frames, a kick every 16: every frame comes back once", kick_every_16},
    {"frames of 60 to 1514 bytes come back intact", frame_sizes},
    {"traffic resumes after the back-end came back", resume},
};

void guest_main(void)
{
    tsc_calibrate();
    char text[32];
    if (!cmdline_get("vun_mac", text, sizeof(text)) || !parse_mac(text, want_mac))
        bail_out("no valid vun_mac= on the command line");
    cmdline_get_u64("vun_resume", &resume_s);
    /* vun_burst=N (1 to 256, default 256) frames of vun_len=L bytes (60 to 1514; default 60
     * to 760 and 1514 by turns) in each burst. */
    cmdline_get_u64("vun_burst", &burst);
    cmdline_get_u64("vun_len", &burst_len);
    if (!burst || burst > BURST_MAX || (burst_len && (burst_len < 60 || burst_len > 1514)))
        bail_out("vun_burst= is 1 to %u, vun_len= 60 to 1514", BURST_MAX);
    tap_run(tests, ARRAY_SIZE(tests));
}
