/*
 * The device life cycle, for every virtio device at once: virtio-blk (two request queues),
 * virtio-net (a tap the harness runs a UDP echo server and a beacon behind), virtio-console
 * (input trickling in), virtio-rng and virtio-vsock (the harness's peer connects from the host
 * side and listens there). For each device in turn:
 *
 *   missing queue   each of its queues left disabled (its size and rings programmed, a request
 *                   or canary-filled buffers in them, never enabled) while the driver goes live
 *                   with the others and work for it arrives from both sides: notifications of
 *                   it and of a queue index the device does not have, frames or connections
 *                   from the host, input, an RST the device owes. The queues that are enabled
 *                   must be served, the disabled one must stay untouched (rings, buffers, no
 *                   interrupt on its own vector), NEEDS_RESET must stay clear;
 *   regs-live       queue registers written while live read back unchanged (and the device
 *                   keeps using its rings); MSI-X vectors stay writable;
 *   clear-bits      a status write that clears DRIVER_OK, FEATURES_OK or ACKNOWLEDGE without
 *                   a reset: the status keeps every bit and adds NEEDS_RESET, a configuration
 *                   interrupt arrives, queue registers are frozen, DRIVER_OK again brings
 *                   nothing back (a request gets no answer);
 *   queue-size,     an activation that fails half-way (its last queue of size 48, or with its
 *   rings-outside   rings at 1 TiB): NEEDS_RESET and a configuration interrupt, then two clean
 *                   set-ups in a row work;
 *   bus-master      (virtio-pci) bus mastering turned off while live: NEEDS_RESET, nothing
 *                   served, then a reset recovers;
 *   cycles          20 rounds of set-up, use and reset (the status reads 0 right after the
 *                   write of 0).
 *
 * After every case the device must work again after a reset and a clean set-up, and every
 * other device must still work as it was (no reset). Requests that must not be served write
 * to the disk's sector 0 (the harness checks that it never changes) or print a line on the
 * console that the harness checks is absent; the disk's sectors 8-15 take the real writes,
 * whose last contents the guest reports as "# lifecycle-blk-data: CKSUM LENGTH".
 *
 * Command line: net_mac=, net_ip=, net_host_ip=, net_host_mac=, net_port= (UDP echo) as for
 * virtio-net; vsock_listen_port= (the host connects there, writes "ping N\n" and expects
 * "pong N\n"), vsock_echo_port= (the host echoes there), vsock_dead_port= (nobody listens);
 * lifecycle_only=DEVICE,... runs those devices' cases only; lifecycle_absent=DEVICE,... names
 * devices the harness did not attach (their cases skip); lifecycle_skip=CASE,DEVICE,
 * DEVICE:CASE,... skips cases a VMM does differently (the harness says why); the cases are
 * missing (or missing-q0, -q1, -q2: one queue), regs-live, clear-bits, queue-size,
 * rings-outside, bus-master and cycles.
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vblk.h"
#include "vnet.h"
#include "vsock.h"

#define WAIT_US       2000000 /* an answer the device owes (the guest runs emulated) */
#define QUIET_US      200000  /* how long a request the device must not serve waits */
#define PHASE_US      300000  /* how long work for a disabled queue keeps arriving */
#define ACCEPT_US     3000000 /* the host's peer connects every 100 ms */
#define CYCLES        20
#define ABSENT_SIZE   16
#define CANARY        0xa5
#define OUTSIDE_RAM   0x10000000000ull /* 1 TiB: no RAM there */
#define BAD_SIZE      48
#define DATA_SECTOR   8 /* sectors 8-15 take the real writes */
#define DATA_LEN      4096
#define CONSOLE_RXQ   0
#define CONSOLE_TXQ   1
#define CONSOLE_BUFS  8
#define CONSOLE_BUF   256
#define NET_RX_BUFS   32
#define NET_BUF       2048
#define GUEST_PORT    40000
#define MAX_TESTS     80
#define INPUT_MARK    "trickled input line"
#define NEVER_PRINTED "virtio-lifecycle: this line must never reach the console"

enum { BLK, NET, CONSOLE, RNG, VSOCK, TARGETS };

struct target {
    const char *name;
    uint32_t device_id;
    unsigned nqueues;   /* the queues this driver sets up */
    int spare_queue;    /* left disabled in the regs-live case (-1: none) */
    unsigned bad_queue; /* the queue a half-way activation breaks */
    struct virtio_device *d;
    bool up; /* set up and serving, as far as the guest knows */
};

static struct target targets[TARGETS] = {
    [BLK] = {"blk", VIRTIO_ID_BLOCK, 2, 1, 1, NULL, false},
    [NET] = {"net", VIRTIO_ID_NET, 2, -1, 1, NULL, false},
    [CONSOLE] = {"console", VIRTIO_ID_CONSOLE, 2, -1, 1, NULL, false},
    [RNG] = {"rng", VIRTIO_ID_RNG, 1, -1, 0, NULL, false},
    [VSOCK] = {"vsock", VIRTIO_ID_VSOCK, 3, VSOCK_EVQ, VSOCK_EVQ, NULL, false},
};

enum lc_case {
    MISSING_Q0,
    MISSING_Q1,
    MISSING_Q2,
    REGS_LIVE,
    CLEAR_DRIVER_OK,
    CLEAR_FEATURES_OK,
    CLEAR_ACKNOWLEDGE,
    BAD_QUEUE_SIZE,
    BAD_RINGS,
    BUS_MASTER,
    CYCLES_CASE,
    CASES
};

/* Names for lifecycle_skip=. */
static const char *const case_names[CASES] = {
    [MISSING_Q0] = "missing",           [MISSING_Q1] = "missing",
    [MISSING_Q2] = "missing",           [REGS_LIVE] = "regs-live",
    [CLEAR_DRIVER_OK] = "clear-bits",   [CLEAR_FEATURES_OK] = "clear-bits",
    [CLEAR_ACKNOWLEDGE] = "clear-bits", [BAD_QUEUE_SIZE] = "queue-size",
    [BAD_RINGS] = "rings-outside",      [BUS_MASTER] = "bus-master",
    [CYCLES_CASE] = "cycles",
};

/* What work for each disabled queue looks like, per device and queue. */
static const char *const missing_what[TARGETS][3] = {
    [BLK] = {"request queue 0 disabled and notified", "request queue 1 disabled and notified"},
    [NET] = {"receive queue disabled while the host sends frames",
             "transmit queue disabled while frames come in"},
    [CONSOLE] = {"receive queue disabled while input keeps coming", "transmit queue disabled"},
    [RNG] = {"its queue disabled and notified"},
    [VSOCK] = {"receive queue disabled while the host connects and an RST is due",
               "transmit queue disabled while the host connects", "event queue disabled"},
};

/* ---- state --------------------------------------------------------------------------------- */

static struct vnet net;
static struct vsock vs;
static uint8_t *scratch;    /* buffers of single requests */
static uint8_t *absent_mem; /* rings and buffers of a disabled queue */
static uint8_t *junk_rings; /* zeroed: addresses written to live queue registers */
static uint8_t *bad_rings;  /* rings of a queue of size 48 */
static uint8_t *blk_data;   /* what sectors 8-15 hold, once written */
static bool blk_written;
static unsigned blk_round;
static uint8_t *console_rx; /* CONSOLE_BUFS buffers */
static uint8_t *net_rx;     /* NET_RX_BUFS buffers for a receive queue set up by hand */
static uint8_t *net_tx;     /* frames for a transmit queue set up by hand */
static uint8_t *frame, *rxframe;
static uint8_t guest_mac[6], host_mac[6];
static uint32_t guest_ip, host_ip;
static uint16_t echo_port;
static bool net_params;
static uint32_t vsock_listen_port = 5000, vsock_echo_port = 6000, vsock_dead_port = 6999;
static unsigned token;

static bool in_list(const char *key, const char *word)
{
    return cmdline_list_has(key, word);
}

/* ---- one device at a time: set-up, use ----------------------------------------------------- */

static uint64_t features_of(const struct target *t)
{
    switch (t->device_id) {
    case VIRTIO_ID_BLOCK:
        return VIRTIO_BIT(VIRTIO_BLK_F_MQ);
    case VIRTIO_ID_NET:
        return VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_STATUS);
    default:
        return 0;
    }
}

/* Reset, features, interrupts (configuration changes are counted on every device). */
static bool begin(struct target *t)
{
    t->up = false;
    return virtio_begin(t->d, features_of(t), true);
}

/* Every queue is polled: interrupts are for configuration changes (and the absence of any on
 * a disabled queue's vector). A line interrupt missed under a stream of frames cannot stall a
 * wait that way. */
static bool setup_queue(struct target *t, unsigned q)
{
    return virtio_queue_setup(t->d, q, 0, false);
}

static void console_post(struct virtq *rx)
{
    for (unsigned i = 0; i < CONSOLE_BUFS; i++) {
        struct vbuf b = {(uint64_t)(console_rx + i * CONSOLE_BUF), CONSOLE_BUF, true};
        virtq_add(rx, &b, 1, console_rx + i * CONSOLE_BUF);
    }
    virtq_kick(rx);
}

static void net_rx_post(struct virtq *rx)
{
    for (unsigned i = 0; i < NET_RX_BUFS && i < rx->size; i++) {
        struct vbuf b = {(uint64_t)(net_rx + i * NET_BUF), NET_BUF, true};
        virtq_add(rx, &b, 1, net_rx + i * NET_BUF);
    }
    virtq_kick(rx);
}

/* After a set-up by hand (begin, some queues, DRIVER_OK): buffers on the receive-type queues
 * that are set up. */
static void attach(struct target *t)
{
    struct virtio_device *d = t->d;
    if (t->device_id == VIRTIO_ID_CONSOLE && d->queues[CONSOLE_RXQ].size)
        console_post(&d->queues[CONSOLE_RXQ]);
    else if (t->device_id == VIRTIO_ID_NET && d->queues[VNET_RXQ].size)
        net_rx_post(&d->queues[VNET_RXQ]);
    else if (t->device_id == VIRTIO_ID_VSOCK)
        vsock_attach(&vs, d);
}

static bool live(struct target *t)
{
    uint8_t status = virtio_get_status(t->d);
    if ((status & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET)) !=
        VIRTIO_STATUS_DRIVER_OK) {
        diag("%s: status 0x%02x after DRIVER_OK", t->name, status);
        return false;
    }
    return true;
}

/* A clean set-up of every queue. */
static bool open_target(struct target *t)
{
    struct virtio_device *d = t->d;
    t->up = false;
    if (t->device_id == VIRTIO_ID_NET) {
        /* Interrupts set up for configuration changes, the receive queue then polled too. */
        struct vnet_options o = {.features = features_of(t), .rx_interrupts = true};
        if (!vnet_open(&net, d, &o))
            return false;
        virtq_suppress_interrupts(net.rxq);
    } else if (t->device_id == VIRTIO_ID_VSOCK) {
        if (!vsock_open(&vs, d))
            return false;
    } else {
        if (!begin(t))
            return false;
        for (unsigned q = 0; q < t->nqueues; q++) {
            if (!setup_queue(t, q))
                return false;
        }
        virtio_driver_ok(d);
        attach(t);
    }
    t->up = live(t);
    return t->up;
}

/* ---- virtio-blk ---- */

static bool blk_use(struct target *t)
{
    struct virtio_device *d = t->d;
    uint8_t *buf = scratch;
    int s = vblk_sync(&d->queues[0], VIRTIO_BLK_T_IN, DATA_SECTOR, buf, DATA_LEN, 0);
    if (s != VIRTIO_BLK_S_OK) {
        diag("blk: read status %d", s);
        return false;
    }
    if (blk_written && memcmp(buf, blk_data, DATA_LEN)) {
        diag("blk: sectors %u-%u do not hold what was written last", DATA_SECTOR, DATA_SECTOR + 7);
        return false;
    }
    /* A new pattern, on the second queue when it is set up. */
    blk_round++;
    for (unsigned i = 0; i < DATA_LEN; i++)
        buf[i] = (uint8_t)(blk_round * 37 + i * 7 + (i >> 9));
    struct virtq *wq = d->queues[1].size ? &d->queues[1] : &d->queues[0];
    s = vblk_sync(wq, VIRTIO_BLK_T_OUT, DATA_SECTOR, buf, DATA_LEN, 0);
    if (s != VIRTIO_BLK_S_OK) {
        diag("blk: write status %d", s);
        return false;
    }
    memcpy(blk_data, buf, DATA_LEN);
    blk_written = true;
    memset(buf, 0, DATA_LEN);
    s = vblk_sync(&d->queues[0], VIRTIO_BLK_T_IN, DATA_SECTOR, buf, DATA_LEN, 0);
    if (s != VIRTIO_BLK_S_OK || memcmp(buf, blk_data, DATA_LEN)) {
        diag("blk: read back status %d, %s", s,
             memcmp(buf, blk_data, DATA_LEN) ? "contents differ" : "contents right");
        return false;
    }
    return true;
}

/* A write of 0x5a to sector 0 in desc[0..2] (header, data, status): it must never land. */
static void blk_sector0_write(struct virtq_desc *desc, uint8_t *mem)
{
    struct vblk_req *r = (struct vblk_req *)mem;
    *r = (struct vblk_req){.type = VIRTIO_BLK_T_OUT, .sector = 0, .status = CANARY};
    memset(mem + 64, 0x5a, 512);
    desc[0] = (struct virtq_desc){(uint64_t)r, 16, VIRTQ_DESC_F_NEXT, 1};
    desc[1] = (struct virtq_desc){(uint64_t)mem + 64, 512, VIRTQ_DESC_F_NEXT, 2};
    desc[2] = (struct virtq_desc){(uint64_t)&r->status, 1, VIRTQ_DESC_F_WRITE, 0};
}

/* ---- virtio-net ---- */

static bool read_net_parameters(void)
{
    char text[32];
    uint64_t v;
    if (!cmdline_get("net_mac", text, sizeof(text)) || !parse_mac(text, guest_mac) ||
        !cmdline_get("net_host_mac", text, sizeof(text)) || !parse_mac(text, host_mac) ||
        !cmdline_get("net_ip", text, sizeof(text)) || !parse_ipv4(text, &guest_ip) ||
        !cmdline_get("net_host_ip", text, sizeof(text)) || !parse_ipv4(text, &host_ip) ||
        !cmdline_get_u64("net_port", &v) || !v || v > 65535)
        return false;
    echo_port = (uint16_t)v;
    return true;
}

static size_t udp_to_echo(uint8_t *f, const char *text)
{
    struct udp_endpoints e = {
        .src_ip = guest_ip, .dst_ip = host_ip, .src_port = GUEST_PORT, .dst_port = echo_port};
    memcpy(e.src_mac, guest_mac, 6);
    memcpy(e.dst_mac, host_mac, 6);
    return frame_udp(f, &e, text, strlen(text), false);
}

/* A datagram to the echo server and its echo back (stale echoes and beacons pass by). */
static bool net_use(void)
{
    char text[48];
    snprintf(text, sizeof(text), "virtio-lifecycle echo %u", ++token);
    size_t n = udp_to_echo(frame, text);
    uint64_t start = time_us();
    unsigned other = 0, sent = 0;
    while (time_us() - start < WAIT_US) {
        /* Once more halfway: the host may have had to ask for our MAC while nobody answered
         * ARP, and given up on the first echo. */
        if (sent < 2 && time_us() - start >= sent * (WAIT_US / 2)) {
            if (vnet_send(&net, NULL, frame, (uint32_t)n) < 0) {
                diag("net: no room to send");
                return false;
            }
            sent++;
        }
        int32_t len = vnet_recv_wait(&net, rxframe, NET_BUF, NULL, WAIT_US / 10);
        vnet_tx_reclaim(&net);
        if (len == -2)
            return false;
        if (len < 0)
            continue;
        struct udp_view u;
        if (parse_udp(rxframe, (size_t)len, &u) && !u.error && u.e.src_port == echo_port &&
            u.len == strlen(text) && !memcmp(u.payload, text, u.len))
            return true;
        if (!vnet_answer_arp(&net, guest_ip, rxframe, len))
            other++;
    }
    diag("net: no echo of \"%s\" (%u other frames)", text, other);
    return false;
}

/* ---- virtio-console ---- */

static bool console_transmit(struct virtio_device *d, const char *text)
{
    size_t len = strlen(text);
    memcpy(scratch, text, len);
    struct vbuf b = {(uint64_t)scratch, (uint32_t)len, false};
    return virtq_transfer(&d->queues[CONSOLE_TXQ], &b, 1, WAIT_US) >= 0;
}

/* Input that came in on the receive queue: true once it holds a whole trickled line. */
static bool console_input(struct virtio_device *d, uint64_t timeout_us)
{
    static char window[2 * CONSOLE_BUF + 1];
    size_t have = 0;
    struct virtq *rx = &d->queues[CONSOLE_RXQ];
    uint64_t start = time_us();
    while (time_us() - start < timeout_us) {
        uint32_t len;
        uint8_t *buf = virtq_get(rx, &len);
        if (!buf) {
            cpu_relax();
            continue;
        }
        if (len > CONSOLE_BUF) {
            diag("console: %u bytes used of a %u-byte buffer", len, CONSOLE_BUF);
            return false;
        }
        if (have + len > sizeof(window) - 1) {
            size_t keep = sizeof(window) - 1 - len;
            memmove(window, window + have - keep, keep);
            have = keep;
        }
        memcpy(window + have, buf, len);
        have += len;
        window[have] = '\0';
        struct vbuf b = {(uint64_t)buf, CONSOLE_BUF, true};
        virtq_add(rx, &b, 1, buf);
        virtq_kick(rx);
        for (size_t i = 0; i + sizeof(INPUT_MARK) <= have; i++) {
            if (!memcmp(window + i, INPUT_MARK, sizeof(INPUT_MARK) - 1))
                return true;
        }
    }
    diag("console: no input line within %lu ms", timeout_us / 1000);
    return false;
}

static bool console_use(struct virtio_device *d)
{
    char line[64];
    snprintf(line, sizeof(line), "virtio-lifecycle: console output %u\n", ++token);
    if (!console_transmit(d, line)) {
        diag("console: transmit not completed");
        return false;
    }
    return console_input(d, WAIT_US);
}

/* ---- virtio-rng ---- */

static bool rng_use(struct virtio_device *d)
{
    memset(scratch, 0, 64);
    struct vbuf b = {(uint64_t)scratch, 64, true};
    int64_t len = virtq_transfer(&d->queues[0], &b, 1, WAIT_US);
    bool varied = false;
    for (int64_t i = 1; i < len && i < 64; i++)
        varied |= scratch[i] != scratch[0];
    if (len <= 0 || !varied)
        diag("rng: read returned %ld bytes%s", len, len > 0 ? ", all alike" : "");
    return len > 0 && varied;
}

/* ---- virtio-vsock ---- */

/* A connection to the host's echo port with a line each way, and an RST from a dead port. */
static bool vsock_echo(void)
{
    bool refused;
    struct vsock_conn *c = vsock_connect(&vs, vsock_echo_port, WAIT_US, &refused);
    if (!c) {
        diag("vsock: connecting to host port %u: %s", vsock_echo_port,
             refused ? "refused" : "no answer");
        return false;
    }
    char line[48], back[48];
    snprintf(line, sizeof(line), "virtio-lifecycle %u\n", ++token);
    uint32_t len = (uint32_t)strlen(line), got = 0;
    bool ok = vsock_write(&vs, c, line, len);
    while (ok && got < len) {
        int32_t n = vsock_read(&vs, c, back + got, len - got, WAIT_US);
        if (n <= 0)
            break;
        got += (uint32_t)n;
    }
    ok = ok && got == len && !memcmp(back, line, len);
    if (!ok)
        diag("vsock: the echo brought %u of %u bytes back", got, len);
    vsock_close(&vs, c);
    struct vsock_conn *dead = vsock_connect(&vs, vsock_dead_port, WAIT_US, &refused);
    if (dead || !refused) {
        diag("vsock: host port %u (nobody listens) %s", vsock_dead_port,
             dead ? "accepted" : "did not answer");
        if (dead)
            vsock_close(&vs, dead);
        return false;
    }
    return ok;
}

/* The length of the first line in p, its newline included; 0 if there is none yet. */
static uint32_t line_length(const uint8_t *p, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++) {
        if (p[i] == '\n')
            return i + 1;
    }
    return 0;
}

/* A connection from the host: its "ping N" line answered with "pong N". */
static bool vsock_host_side(void)
{
    vsock_listen(&vs, vsock_listen_port);
    uint64_t start = time_us();
    bool ok = false;
    while (!ok && time_us() - start < ACCEPT_US) {
        if (!vsock_poll(&vs))
            cpu_relax();
        for (unsigned i = 0; i < VSOCK_CONNS && !ok; i++) {
            struct vsock_conn *c = &vs.conns[i];
            uint32_t n = c->state == VSOCK_OPEN ? line_length(c->data, c->len) : 0;
            if (!n)
                continue;
            char line[32];
            vsock_claim(c);
            if (n < sizeof(line) && n > 6 && !memcmp(c->data, "ping ", 5)) {
                char reply[32];
                memcpy(line, c->data + 5, n - 6);
                line[n - 6] = '\0';
                snprintf(reply, sizeof(reply), "pong %s\n", line);
                ok = vsock_write(&vs, c, reply, (uint32_t)strlen(reply));
                if (ok)
                    diag("vsock: host connection %s answered", line);
            }
            vsock_close(&vs, c);
        }
    }
    vsock_listen(&vs, 0);
    if (!ok)
        diag("vsock: no host connection delivered a ping within %u ms", ACCEPT_US / 1000);
    return ok;
}

static bool vsock_use(bool host_side)
{
    return vsock_echo() && (!host_side || vsock_host_side());
}

/* A real request that must succeed, on the device as it is. host_side: with a connection the
 * host starts too (virtio-vsock). */
static bool use(struct target *t, bool host_side)
{
    switch (t->device_id) {
    case VIRTIO_ID_BLOCK:
        return blk_use(t);
    case VIRTIO_ID_NET:
        return net_use();
    case VIRTIO_ID_CONSOLE:
        return console_use(t->d);
    case VIRTIO_ID_RNG:
        return rng_use(t->d);
    default:
        return vsock_use(host_side);
    }
}

static bool reopen_and_use(struct target *t)
{
    bool ok = open_target(t) && use(t, true);
    if (!ok)
        diag("%s does not work after a reset and a clean set-up", t->name);
    return ok;
}

static bool others_work(unsigned ti)
{
    bool ok = true;
    for (unsigned o = 0; o < TARGETS; o++) {
        if (o == ti || !targets[o].d || !targets[o].up)
            continue;
        if (!use(&targets[o], true)) {
            diag("%s stopped working", targets[o].name);
            ok = false;
        }
    }
    return ok;
}

/* ---- a disabled queue with work in it ----------------------------------------------------- */

struct absent {
    unsigned q;
    uint16_t vector; /* virtio-pci: its own MSI-X vector, or VIRTIO_NO_VECTOR when shared */
    uint8_t *bufs;   /* device-writable buffers (CANARY), or NULL */
    unsigned nbufs;
    uint8_t *status; /* virtio-blk: the status byte of the write to sector 0 */
};

static bool writable_queue(const struct target *t, unsigned q)
{
    switch (t->device_id) {
    case VIRTIO_ID_NET:
        return q == VNET_RXQ;
    case VIRTIO_ID_CONSOLE:
        return q == CONSOLE_RXQ;
    case VIRTIO_ID_RNG:
        return true;
    case VIRTIO_ID_VSOCK:
        return q != VSOCK_TXQ;
    default:
        return false;
    }
}

/* Rings at absent_mem (descriptors, avail, used filled with CANARY) holding what the device
 * would serve: a write to sector 0, a frame for the echo server, a console line that must
 * not appear, a vsock REQUEST; or buffers of CANARY for it to fill. Programmed, not enabled. */
static bool absent_prepare(struct target *t, unsigned q, struct absent *a)
{
    struct virtio_device *d = t->d;
    uint8_t *mem = absent_mem;
    struct virtq_desc *desc = (struct virtq_desc *)mem;
    struct virtq_avail *avail = (struct virtq_avail *)(mem + 0x1000);
    uint8_t *used = mem + 0x2000, *data = mem + 0x3000;
    memset(mem, 0, 0x2000);
    memset(used, CANARY, 0x1000);
    memset(data, CANARY, 0x2000);
    *a = (struct absent){.q = q, .vector = VIRTIO_NO_VECTOR};
    unsigned chains = 1;
    if (writable_queue(t, q)) {
        a->bufs = data;
        a->nbufs = chains = 4;
        for (unsigned i = 0; i < chains; i++)
            desc[i] = (struct virtq_desc){(uint64_t)(data + 256 * i), 256, VIRTQ_DESC_F_WRITE, 0};
    } else if (t->device_id == VIRTIO_ID_BLOCK) {
        blk_sector0_write(desc, data);
        a->status = &((struct vblk_req *)data)->status;
    } else if (t->device_id == VIRTIO_ID_NET) {
        memset(data, 0, VNET_HDR_LEN);
        size_t n = net_params ? udp_to_echo(data + VNET_HDR_LEN, "from a disabled queue") : 60;
        desc[0] = (struct virtq_desc){(uint64_t)data, (uint32_t)(VNET_HDR_LEN + n), 0, 0};
    } else if (t->device_id == VIRTIO_ID_CONSOLE) {
        memcpy(data, NEVER_PRINTED "\n", sizeof(NEVER_PRINTED));
        desc[0] = (struct virtq_desc){(uint64_t)data, sizeof(NEVER_PRINTED), 0, 0};
    } else {
        struct vsock_hdr *h = (struct vsock_hdr *)data;
        *h = (struct vsock_hdr){.src_cid = virtio_config_read64(d, 0),
                                .dst_cid = VSOCK_HOST_CID,
                                .src_port = 1234,
                                .dst_port = vsock_echo_port,
                                .type = VSOCK_TYPE_STREAM,
                                .op = VSOCK_OP_REQUEST,
                                .buf_alloc = VSOCK_CONN_BUF};
        desc[0] = (struct virtq_desc){(uint64_t)h, VSOCK_HDR_LEN, 0, 0};
    }
    for (unsigned i = 0; i < chains; i++)
        avail->ring[i] = (uint16_t)i;
    avail->idx = (uint16_t)chains;
    /* On virtio-pci the queue gets a vector of its own where the table has one: nothing may
     * arrive there. */
    if (d->transport == VIRTIO_PCI && d->irq_ready) {
        unsigned entries = d->msix_entries < 8 ? d->msix_entries : 8;
        uint16_t v = 1 + q < entries ? (uint16_t)(1 + q) : VIRTIO_NO_VECTOR;
        a->vector = v;
        d->queues[q].vector = v;
        d->queues[q].irq_count = 0;
    }
    return virtio_queue_program(d, q, ABSENT_SIZE, (uint64_t)desc, (uint64_t)avail, (uint64_t)used,
                                a->vector);
}

static bool absent_untouched(struct target *t, const struct absent *a)
{
    const uint8_t *used = absent_mem + 0x2000;
    bool ok = true;
    for (unsigned i = 0; i < 0x1000; i++) {
        if (used[i] != CANARY) {
            diag("%s: the used ring of disabled queue %u changed at byte %u", t->name, a->q, i);
            ok = false;
            break;
        }
    }
    for (unsigned i = 0; i < a->nbufs * 256; i++) {
        if (a->bufs[i] != CANARY) {
            diag("%s: a buffer of disabled queue %u was written", t->name, a->q);
            ok = false;
            break;
        }
    }
    if (a->status && *a->status != CANARY) {
        diag("%s: the write in disabled queue %u got status %u", t->name, a->q, *a->status);
        ok = false;
    }
    if (a->vector != VIRTIO_NO_VECTOR && t->d->queues[a->q].irq_count) {
        diag("%s: %lu interrupts on the vector of disabled queue %u", t->name,
             t->d->queues[a->q].irq_count, a->q);
        ok = false;
    }
    return ok;
}

/* The first queue index the device does not have. */
static unsigned first_missing_index(struct virtio_device *d)
{
    unsigned q = 0;
    while (q < 64 && virtio_queue_max(d, q))
        q++;
    return q;
}

static void notify_absent(struct virtio_device *d, unsigned q, unsigned nonexistent)
{
    for (int i = 0; i < 3; i++) {
        virtio_notify_index(d, q);
        virtio_notify_index(d, nonexistent);
    }
}

/* Frames from a transmit queue set up by hand; true once the device used them all. */
static bool net_raw_send(struct virtq *tx, unsigned count)
{
    static const uint8_t zero[6];
    for (unsigned i = 0; i < count; i++) {
        uint8_t *f = net_tx + i * NET_BUF;
        memset(f, 0, VNET_HDR_LEN);
        size_t n;
        if (i == 0) {
            n = frame_arp(f + VNET_HDR_LEN, ARP_REQUEST, guest_mac, guest_ip, zero, host_ip);
        } else {
            char text[48];
            snprintf(text, sizeof(text), "virtio-lifecycle unanswerable %u", i);
            n = udp_to_echo(f + VNET_HDR_LEN, text);
        }
        struct vbuf b = {(uint64_t)f, (uint32_t)(VNET_HDR_LEN + n), false};
        virtq_add(tx, &b, 1, f);
    }
    virtq_kick(tx);
    uint64_t start = time_us();
    unsigned done = 0;
    while (done < count && time_us() - start < WAIT_US) {
        if (virtq_get(tx, NULL))
            done++;
        else
            cpu_relax();
    }
    if (done < count)
        diag("net: %u of %u frames sent", done, count);
    return done == count;
}

/* Frames arriving on a receive queue set up by hand (the harness's beacons). */
static bool net_raw_receive(struct virtq *rx)
{
    uint64_t start = time_us();
    while (time_us() - start < WAIT_US) {
        uint32_t len;
        uint8_t *buf = virtq_get(rx, &len);
        if (!buf) {
            cpu_relax();
            continue;
        }
        if (len < VNET_HDR_LEN + ETH_HLEN || len > NET_BUF) {
            diag("net: used length %u of a receive buffer", len);
            return false;
        }
        return true;
    }
    diag("net: no frame arrived within %u ms", WAIT_US / 1000);
    return false;
}

/* A vsock packet on a transmit queue, waited for; for the vsock driver's own queue use. */
static bool vsock_raw_request(uint32_t port)
{
    struct vsock_hdr h = {.src_port = 1000 + port % 1000, .dst_port = port, .op = VSOCK_OP_REQUEST};
    if (!vsock_send(&vs, &h, NULL, 0))
        return false;
    uint64_t start = time_us();
    while (vs.txq->num_free != vs.txq->size && time_us() - start < WAIT_US)
        vsock_tx_reclaim(&vs);
    return vs.txq->num_free == vs.txq->size;
}

/* While queue m is disabled: work for it arrives, the queues that are enabled are served. */
static bool missing_phase(struct target *t, unsigned m)
{
    struct virtio_device *d = t->d;
    switch (t->device_id) {
    case VIRTIO_ID_BLOCK: {
        int s = vblk_sync(&d->queues[1 - m], VIRTIO_BLK_T_IN, DATA_SECTOR, scratch, 512, 0);
        if (s != VIRTIO_BLK_S_OK)
            diag("blk: a read on queue %u: status %d", 1 - m, s);
        return s == VIRTIO_BLK_S_OK;
    }
    case VIRTIO_ID_NET:
        if (m == VNET_RXQ) {
            /* The host answers (ARP, echoes) and its beacons keep coming: nowhere to go. */
            bool ok = net_raw_send(&d->queues[VNET_TXQ], 5);
            udelay(PHASE_US);
            return ok;
        }
        return net_raw_receive(&d->queues[VNET_RXQ]);
    case VIRTIO_ID_CONSOLE:
        if (m == CONSOLE_RXQ) {
            bool ok = console_transmit(d, "virtio-lifecycle: transmit without a receive queue\n");
            if (!ok)
                diag("console: transmit not completed");
            udelay(PHASE_US);
            return ok;
        }
        return console_input(d, WAIT_US);
    case VIRTIO_ID_RNG:
        udelay(PHASE_US / 4);
        return true;
    default:
        break;
    }
    if (m == VSOCK_RXQ) {
        /* Host connections keep arriving; a REQUEST to a dead port wants an RST back, one to
         * the echo port a RESPONSE: the receive queue is missing for all of them. */
        bool ok = vsock_raw_request(vsock_dead_port) && vsock_raw_request(vsock_echo_port);
        if (!ok)
            diag("vsock: transmit not completed");
        udelay(PHASE_US);
        return ok;
    }
    if (m == VSOCK_TXQ) {
        /* A host connection's REQUEST lands on the receive queue; it cannot be answered. */
        uint64_t start = time_us();
        while (!vs.rx_packets && time_us() - start < ACCEPT_US) {
            if (!vsock_poll(&vs))
                cpu_relax();
        }
        diag("vsock: %lu packets received without a transmit queue", vs.rx_packets);
        return true;
    }
    return vsock_use(true); /* no event queue: everything else works */
}

static bool missing_queue(struct target *t, unsigned m)
{
    struct virtio_device *d = t->d;
    struct absent a = {.q = m, .vector = VIRTIO_NO_VECTOR};
    if (!begin(t))
        return false;
    /* Interrupts sent before the reset land now, not among those counted for the queue: the
     * host's KVM injects an irqfd's interrupt from a worker, later under load. */
    virtio_irq_window(20000);
    for (unsigned q = 0; q < t->nqueues; q++) {
        if (!(q == m ? absent_prepare(t, q, &a) : setup_queue(t, q)))
            return false;
    }
    virtio_driver_ok(d);
    attach(t);
    unsigned nonexistent = first_missing_index(d);
    notify_absent(d, m, nonexistent);
    bool served = missing_phase(t, m);
    notify_absent(d, m, nonexistent);
    virtio_irq_window(5000);
    uint8_t status = virtio_get_status(d);
    bool clear = !(status & VIRTIO_STATUS_NEEDS_RESET);
    bool untouched = absent_untouched(t, &a);
    diag("%s: status 0x%02x; the enabled queues %s; queue %u %s; notified it and index %u", t->name,
         status, served ? "served" : "NOT served", m, untouched ? "untouched" : "TOUCHED",
         nonexistent);
    return served && clear && untouched;
}

/* ---- status and registers ------------------------------------------------------------------ */

static bool same_regs(struct virtio_device *d, const struct virtio_queue_regs *a,
                      const struct virtio_queue_regs *b)
{
    if (a->enable != b->enable)
        return false;
    return d->transport == VIRTIO_MMIO || (a->size == b->size && a->desc == b->desc &&
                                           a->driver == b->driver && a->device == b->device);
}

/* Writes other values into every queue's registers; they must read back unchanged. MSI-X
 * vectors stay writable. */
static bool registers_frozen(struct target *t)
{
    struct virtio_device *d = t->d;
    bool ok = true;
    for (unsigned q = 0; q < t->nqueues; q++) {
        struct virtio_queue_regs before, after;
        virtio_queue_read_regs(d, q, &before);
        struct virtio_queue_regs junk = {.size = before.size > 2 ? before.size / 2 : 4,
                                         .enable = before.enable ? 0 : 1,
                                         .desc = (uint64_t)junk_rings,
                                         .driver = (uint64_t)junk_rings + 0x1000,
                                         .device = (uint64_t)junk_rings + 0x2000};
        virtio_queue_write_regs(d, q, &junk);
        virtio_queue_read_regs(d, q, &after);
        if (!same_regs(d, &before, &after)) {
            diag("%s: queue %u registers changed: enable %u -> %u, size %u -> %u, desc 0x%lx -> "
                 "0x%lx",
                 t->name, q, before.enable, after.enable, before.size, after.size, before.desc,
                 after.desc);
            ok = false;
        }
        if (d->transport == VIRTIO_PCI) {
            uint16_t none = virtio_queue_set_vector(d, q, VIRTIO_NO_VECTOR);
            uint16_t back = virtio_queue_set_vector(d, q, before.vector);
            if (none != VIRTIO_NO_VECTOR || back != before.vector) {
                diag("%s: queue %u MSI-X vector: wrote NO_VECTOR, read %u; wrote %u, read %u",
                     t->name, q, none, before.vector, back);
                ok = false;
            }
        }
    }
    return ok;
}

static bool regs_live(struct target *t)
{
    struct virtio_device *d = t->d;
    if (t->spare_queue < 0) {
        if (!open_target(t))
            return false;
    } else {
        /* A queue left disabled too: it must not come alive either. */
        if (!begin(t))
            return false;
        for (unsigned q = 0; q < t->nqueues; q++) {
            if (q != (unsigned)t->spare_queue && !setup_queue(t, q))
                return false;
        }
        virtio_driver_ok(d);
        attach(t);
        if (!live(t))
            return false;
    }
    bool frozen = registers_frozen(t);
    bool works = use(t, false);
    if (!works)
        diag("%s stopped working after the register writes", t->name);
    return frozen && works;
}

/* A request on the live device's first queue that must get no answer: a write to sector 0, a
 * frame, a console line that must not appear, random bytes, a vsock REQUEST. */
static bool unanswered(struct target *t)
{
    struct virtio_device *d = t->d;
    struct virtq *q;
    if (t->device_id == VIRTIO_ID_BLOCK) {
        static struct vblk_req r;
        memset(scratch, 0x5a, 512);
        q = &d->queues[0];
        vblk_submit(q, &r, VIRTIO_BLK_T_OUT, 0, scratch, 512, 0);
        virtq_kick(q);
    } else if (t->device_id == VIRTIO_ID_NET) {
        q = net.txq;
        size_t n = udp_to_echo(frame, "virtio-lifecycle: not to be sent");
        vnet_send(&net, NULL, frame, (uint32_t)n);
    } else if (t->device_id == VIRTIO_ID_CONSOLE) {
        q = &d->queues[CONSOLE_TXQ];
        memcpy(scratch, NEVER_PRINTED "\n", sizeof(NEVER_PRINTED));
        struct vbuf b = {(uint64_t)scratch, sizeof(NEVER_PRINTED), false};
        virtq_add(q, &b, 1, scratch);
        virtq_kick(q);
    } else if (t->device_id == VIRTIO_ID_RNG) {
        q = &d->queues[0];
        struct vbuf b = {(uint64_t)scratch, 64, true};
        virtq_add(q, &b, 1, scratch);
        virtq_kick(q);
    } else {
        q = vs.txq;
        struct vsock_hdr h = {.src_port = 999, .dst_port = vsock_echo_port, .op = VSOCK_OP_REQUEST};
        vsock_send(&vs, &h, NULL, 0);
    }
    uint64_t start = time_us();
    while (time_us() - start < QUIET_US) {
        if (virtq_has_used(q)) {
            diag("%s: a request was served", t->name);
            return false;
        }
        cpu_relax();
    }
    return true;
}

static bool clear_bit(struct target *t, uint8_t bit)
{
    struct virtio_device *d = t->d;
    if (!open_target(t))
        return false;
    virtio_irq_window(2000);
    uint64_t irqs = d->config_irqs;
    uint8_t before = virtio_get_status(d);
    uint8_t want = before | VIRTIO_STATUS_NEEDS_RESET;
    virtio_set_status(d, before & (uint8_t)~bit);
    uint8_t after = virtio_get_status(d);
    bool irq = virtio_wait_config_irq(d, irqs, WAIT_US);
    bool frozen = registers_frozen(t);
    virtio_set_status(d, before);
    uint8_t again = virtio_get_status(d);
    bool quiet = unanswered(t);
    diag("%s: status 0x%02x, wrote 0x%02x: reads 0x%02x, configuration interrupt %s; "
         "0x%02x again: reads 0x%02x%s",
         t->name, before, before & (uint8_t)~bit, after, irq ? "raised" : "missing", before, again,
         quiet ? ", requests unanswered" : "");
    return after == want && again == want && irq && frozen && quiet;
}

/* An activation whose last queue is broken: size 48, or rings outside RAM. */
static bool half_way(struct target *t, bool rings_outside)
{
    struct virtio_device *d = t->d;
    if (!begin(t))
        return false;
    for (unsigned q = 0; q < t->nqueues; q++) {
        if (q != t->bad_queue) {
            if (!setup_queue(t, q))
                return false;
            continue;
        }
        d->queues[q].vector = VIRTIO_NO_VECTOR;
        uint64_t base = (uint64_t)bad_rings;
        bool done =
            rings_outside
                ? virtio_queue_setup_raw(d, q, 64, OUTSIDE_RAM, OUTSIDE_RAM + 0x1000,
                                         OUTSIDE_RAM + 0x2000)
                : virtio_queue_setup_raw(d, q, BAD_SIZE, base, base + 0x1000, base + 0x2000);
        if (!done)
            return false;
    }
    virtio_irq_window(2000);
    uint64_t irqs = d->config_irqs;
    virtio_driver_ok(d);
    uint8_t status;
    bool needs_reset = virtio_wait_needs_reset(d, WAIT_US / 2, &status);
    bool irq = virtio_wait_config_irq(d, irqs, WAIT_US);
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                             VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    bool still = virtio_get_status(d) & VIRTIO_STATUS_NEEDS_RESET;
    diag("%s: queue %u %s: status 0x%02x, configuration interrupt %s, NEEDS_RESET %s after "
         "DRIVER_OK again",
         t->name, t->bad_queue, rings_outside ? "rings at 1 TiB" : "of size 48", status,
         irq ? "raised" : "missing", still ? "kept" : "gone");
    /* Twice: whatever the failed activation left behind must not break the next ones. */
    bool recovered = reopen_and_use(t) && reopen_and_use(t);
    return needs_reset && irq && still && recovered;
}

static bool bus_master_off(struct target *t)
{
    struct virtio_device *d = t->d;
    if (!open_target(t))
        return false;
    virtio_pci_bus_master(d, false);
    uint8_t status;
    bool needs_reset = virtio_wait_needs_reset(d, WAIT_US / 2, &status);
    bool quiet = unanswered(t);
    virtio_pci_bus_master(d, true);
    bool still = virtio_get_status(d) & VIRTIO_STATUS_NEEDS_RESET;
    bool quiet_after = unanswered(t);
    diag("%s: bus mastering off: status 0x%02x%s; back on: NEEDS_RESET %s%s", t->name, status,
         quiet ? ", requests unanswered" : "", still ? "kept" : "gone",
         quiet_after ? ", requests unanswered" : "");
    return needs_reset && quiet && still && quiet_after;
}

static bool cycles(struct target *t)
{
    for (unsigned i = 0; i < CYCLES; i++) {
        if (!open_target(t) || !use(t, i + 1 == CYCLES)) {
            diag("%s: cycle %u of %u failed", t->name, i + 1, CYCLES);
            return false;
        }
        if (i + 1 == CYCLES)
            break;
        /* The reset is over when the write of 0 is (requests in flight finished first). */
        virtio_set_status(t->d, 0);
        uint8_t status = virtio_get_status(t->d);
        if (status != 0) {
            diag("%s: status 0x%02x read right after the write of 0", t->name, status);
            return false;
        }
        if (!virtio_reset(t->d))
            return false;
    }
    return true;
}

/* ---- running a case ------------------------------------------------------------------------ */

static enum test_result run_case(unsigned ti, enum lc_case c)
{
    struct target *t = &targets[ti];
    /* All devices are on one transport: decided even for a device that is not there. */
    if (c == BUS_MASTER && virtio_device_count && virtio_devices[0].transport != VIRTIO_PCI)
        return skip("virtio-pci only");
    char both[48];
    snprintf(both, sizeof(both), "%s:%s", t->name, case_names[c]);
    char queue[16] = "";
    if (c <= MISSING_Q2)
        snprintf(queue, sizeof(queue), "missing-q%u", (unsigned)(c - MISSING_Q0));
    if (in_list("lifecycle_skip", t->name) || in_list("lifecycle_skip", case_names[c]) ||
        in_list("lifecycle_skip", both) || (*queue && in_list("lifecycle_skip", queue)))
        return skip("in lifecycle_skip=: this VMM does it differently (the harness says why)");
    if (!t->d)
        return in_list("lifecycle_absent", t->name)
                   ? skip("device not attached (lifecycle_absent=)")
                   : TEST_FAIL;
    uint64_t start = time_us();
    bool ok;
    switch (c) {
    case MISSING_Q0:
    case MISSING_Q1:
    case MISSING_Q2:
        ok = missing_queue(t, (unsigned)(c - MISSING_Q0));
        break;
    case REGS_LIVE:
        ok = regs_live(t);
        break;
    case CLEAR_DRIVER_OK:
        ok = clear_bit(t, VIRTIO_STATUS_DRIVER_OK);
        break;
    case CLEAR_FEATURES_OK:
        ok = clear_bit(t, VIRTIO_STATUS_FEATURES_OK);
        break;
    case CLEAR_ACKNOWLEDGE:
        ok = clear_bit(t, VIRTIO_STATUS_ACKNOWLEDGE);
        break;
    case BAD_QUEUE_SIZE:
        ok = half_way(t, false);
        break;
    case BAD_RINGS:
        ok = half_way(t, true);
        break;
    case BUS_MASTER:
        ok = bus_master_off(t);
        break;
    default:
        ok = cycles(t);
        break;
    }
    /* Whatever happened, the device ends the case freshly set up and working. */
    bool recovered = reopen_and_use(t);
    uint64_t own = time_us() - start;
    bool others = others_work(ti);
    diag("%s: %s case: %lu ms, the other devices' checks %lu ms", t->name, case_names[c],
         own / 1000, (time_us() - start - own) / 1000);
    return ok && recovered && others ? TEST_PASS : TEST_FAIL;
}

#define CASE_FN(t, c)                                                                              \
    static enum test_result case_##t##_##c(void)                                                   \
    {                                                                                              \
        return run_case(t, c);                                                                     \
    }
#define CASES_OF(t)                                                                                \
    CASE_FN(t, MISSING_Q0)                                                                         \
    CASE_FN(t, MISSING_Q1)                                                                         \
    CASE_FN(t, MISSING_Q2)                                                                         \
    CASE_FN(t, REGS_LIVE)                                                                          \
    CASE_FN(t, CLEAR_DRIVER_OK)                                                                    \
    CASE_FN(t, CLEAR_FEATURES_OK)                                                                  \
    CASE_FN(t, CLEAR_ACKNOWLEDGE)                                                                  \
    CASE_FN(t, BAD_QUEUE_SIZE)                                                                     \
    CASE_FN(t, BAD_RINGS)                                                                          \
    CASE_FN(t, BUS_MASTER)                                                                         \
    CASE_FN(t, CYCLES_CASE)
CASES_OF(BLK)
CASES_OF(NET)
CASES_OF(CONSOLE)
CASES_OF(RNG)
CASES_OF(VSOCK)

#define CASE_ROW(t)                                                                                \
    {                                                                                              \
        case_##t##_MISSING_Q0, case_##t##_MISSING_Q1, case_##t##_MISSING_Q2, case_##t##_REGS_LIVE, \
            case_##t##_CLEAR_DRIVER_OK, case_##t##_CLEAR_FEATURES_OK,                              \
            case_##t##_CLEAR_ACKNOWLEDGE, case_##t##_BAD_QUEUE_SIZE, case_##t##_BAD_RINGS,         \
            case_##t##_BUS_MASTER, case_##t##_CYCLES_CASE                                          \
    }
static enum test_result (*const case_fns[TARGETS][CASES])(void) = {
    CASE_ROW(BLK), CASE_ROW(NET), CASE_ROW(CONSOLE), CASE_ROW(RNG), CASE_ROW(VSOCK),
};

static void case_name(char *buf, size_t size, const struct target *t, enum lc_case c)
{
    switch (c) {
    case MISSING_Q0:
    case MISSING_Q1:
    case MISSING_Q2:
        snprintf(buf, size,
                 "%s: %s: the rest served, it untouched, reset recovers, others unaffected",
                 t->name, missing_what[t - targets][c - MISSING_Q0]);
        break;
    case REGS_LIVE:
        snprintf(buf, size,
                 "%s: queue registers written while live read back unchanged, vectors writable",
                 t->name);
        break;
    case CLEAR_DRIVER_OK:
    case CLEAR_FEATURES_OK:
    case CLEAR_ACKNOWLEDGE:
        snprintf(buf, size,
                 "%s: status write clearing %s: bits kept plus NEEDS_RESET, config interrupt, "
                 "registers frozen, DRIVER_OK again serves nothing, reset recovers",
                 t->name,
                 c == CLEAR_DRIVER_OK     ? "DRIVER_OK"
                 : c == CLEAR_FEATURES_OK ? "FEATURES_OK"
                                          : "ACKNOWLEDGE");
        break;
    case BAD_QUEUE_SIZE:
    case BAD_RINGS:
        snprintf(buf, size,
                 "%s: activation with queue %u %s: NEEDS_RESET, config interrupt, two clean "
                 "set-ups work",
                 t->name, t->bad_queue,
                 c == BAD_QUEUE_SIZE ? "of size 48" : "with its rings outside RAM");
        break;
    case BUS_MASTER:
        snprintf(buf, size,
                 "%s: bus mastering off while live: NEEDS_RESET, nothing served, reset recovers",
                 t->name);
        break;
    default:
        snprintf(buf, size, "%s: %u cycles of set-up, use and reset", t->name, CYCLES);
        break;
    }
}

/* ---- the first and last checks ------------------------------------------------------------- */

static enum test_result find_and_open(void)
{
    scratch = phys_alloc(0x2000, 4096);
    absent_mem = phys_alloc(0x5000, 4096);
    junk_rings = phys_alloc_zeroed(0x3000, 4096);
    bad_rings = phys_alloc_zeroed(0x3000, 4096);
    blk_data = phys_alloc(DATA_LEN, 4096);
    console_rx = phys_alloc(CONSOLE_BUFS * CONSOLE_BUF, 64);
    net_rx = phys_alloc(NET_RX_BUFS * NET_BUF, 4096);
    net_tx = phys_alloc(8 * NET_BUF, 4096);
    frame = phys_alloc(NET_BUF, 64);
    rxframe = phys_alloc(NET_BUF, 64);
    uint64_t v;
    if (cmdline_get_u64("vsock_listen_port", &v))
        vsock_listen_port = (uint32_t)v;
    if (cmdline_get_u64("vsock_echo_port", &v))
        vsock_echo_port = (uint32_t)v;
    if (cmdline_get_u64("vsock_dead_port", &v))
        vsock_dead_port = (uint32_t)v;
    net_params = read_net_parameters();
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        struct target *t = &targets[i];
        t->d = virtio_find(t->device_id, 0);
        bool expected =
            !in_list("lifecycle_absent", t->name) && !in_list("lifecycle_skip", t->name);
        if (!t->d) {
            if (expected) {
                diag("no %s device", t->name);
                ok = false;
            }
            continue;
        }
        if (t->device_id == VIRTIO_ID_NET && !net_params) {
            diag("net: net_mac=, net_host_mac=, net_ip=, net_host_ip= or net_port= missing");
            ok = false;
        }
        if (t->device_id == VIRTIO_ID_BLOCK && virtio_queue_max(t->d, 1) == 0) {
            diag("blk: the disk has one queue; two are needed");
            ok = false;
        }
        bool works = open_target(t) && use(t, true);
        if (!works)
            diag("%s does not work", t->name);
        ok &= works;
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result final_check(void)
{
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        if (targets[i].d && targets[i].up && !use(&targets[i], true)) {
            diag("%s does not work at the end", targets[i].name);
            ok = false;
        }
    }
    if (blk_written)
        diag("lifecycle-blk-data: %u %u",
             cksum_final(cksum_update(0, blk_data, DATA_LEN), DATA_LEN), DATA_LEN);
    /* Leave the devices reset: nothing in flight while the VMM shuts down. */
    for (unsigned i = 0; i < TARGETS; i++) {
        if (targets[i].d)
            virtio_reset(targets[i].d);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

void guest_main(void)
{
    static struct guest_test tests[MAX_TESTS];
    static char names[MAX_TESTS][200];
    char only[128];
    bool some = cmdline_get("lifecycle_only", only, sizeof(only));
    size_t n = 0;
    tsc_calibrate();
    tests[n++] = (struct guest_test){"every device found, set up and working", find_and_open};
    for (unsigned ti = 0; ti < TARGETS; ti++) {
        struct target *t = &targets[ti];
        if (some && !in_list("lifecycle_only", t->name))
            continue;
        for (unsigned c = 0; c < CASES; c++) {
            if (c <= MISSING_Q2 && c - MISSING_Q0 >= t->nqueues)
                continue;
            case_name(names[n], sizeof(names[n]), t, (enum lc_case)c);
            tests[n] = (struct guest_test){names[n], case_fns[ti][c]};
            n++;
        }
    }
    tests[n++] = (struct guest_test){"every device still works at the end", final_check};
    tap_run(tests, n);
}
