/*
 * Host memory a guest can make a VMM spend: one workload per run (res_part=), each shaped to
 * make a careless device allocate in proportion to what the guest asks, not to what it owns.
 * The harness measures the VMM's peak RSS around the run; the guest checks that every request
 * ends (completes, or fails with an error status), and that the device works after a reset.
 *
 * res_part=blk: reads from sector 0 whose buffers all point at one buffer 8 bytes past a 4 KiB
 *   boundary (a cache=none disk must bounce them): res_requests= (default 2) at once of as
 *   many buffers of as many bytes as the disk allows (seg_max, size_max; 32 MiB each when it
 *   offers no size_max), at most res_read_mib= MiB (default 512), which must complete; then as
 *   many of 32 buffers of 32 MiB (1 GiB), past size_max if the disk has one, which may fail
 *   with IOERR. The harness stamps the first and last sector of every MiB with its number: a
 *   completed read must leave the right stamps in the buffer, and after a reset the first MiB
 *   must read back stamped.
 * res_part=net: frames of 1514 bytes, then of 65550 (the largest a device takes without
 *   segmentation), res_net_ms= each (default 1000), the transmit queue kept full, to
 *   net_host_mac= (nobody: the bridge floods them to a slow link).
 * res_part=vsock: vsock_conns= connections (default 300) to the host's port vsock_port=, whose
 *   program accepts and never reads; data on every connection as far as the credit goes, then
 *   a packet beyond the credit on a few of them, which must be reset (RST).
 * res_part=console: res_console_mib= MiB (default 8) through the console's transmit queue in
 *   64 KiB buffers of 64-byte lines "console flood NNNNNNNN ...", while the host reads the
 *   VMM's output slowly.
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vblk.h"
#include "vnet.h"
#include "vsock.h"

#define WAIT_US       5000000
#define MIB_BYTES     (1024 * 1024)
#define BLK_SEGMENTS  32
#define BLK_BUF_BYTES (32 * MIB_BYTES)
#define BLK_MISALIGN  8 /* bytes past a 4 KiB boundary: neither sector- nor page-aligned */
#define MAX_REQUESTS  4

static char part[16];

/* ---- virtio-blk ------------------------------------------------------------------------------ */

#define VIRTIO_BLK_F_SIZE_MAX 1
#define BLK_CFG_SIZE_MAX      8
#define BLK_MAX_SEGMENTS      254 /* and header and status: 256, the largest indirect table */

static struct virtio_device *blk;
static uint8_t *blk_buf;             /* BLK_BUF_BYTES, misaligned */
static struct virtq_desc *blk_table; /* MAX_REQUESTS indirect tables */
static uint32_t seg_max = BLK_SEGMENTS, size_max = BLK_BUF_BYTES;

static bool blk_up(void)
{
    return virtio_begin(blk, VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC), false) &&
           virtio_queue_setup(blk, 0, 0, false) &&
           (virtio_driver_ok(blk), !(virtio_get_status(blk) & VIRTIO_STATUS_NEEDS_RESET));
}

static enum test_result blk_find(void)
{
    blk = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!blk)
        return TEST_FAIL;
    uint8_t *base = phys_alloc(BLK_BUF_BYTES + 4096, 4096);
    blk_buf = base + BLK_MISALIGN;
    blk_table = phys_alloc(MAX_REQUESTS * (BLK_MAX_SEGMENTS + 2) * 16, 4096);
    if (!blk_up())
        return TEST_FAIL;
    if (!virtio_has(blk, VIRTIO_F_INDIRECT_DESC)) {
        diag("the disk offers no indirect descriptors");
        return TEST_FAIL;
    }
    bool has_seg_max = blk->device_features & VIRTIO_BIT(VIRTIO_BLK_F_SEG_MAX);
    bool has_size_max = blk->device_features & VIRTIO_BIT(VIRTIO_BLK_F_SIZE_MAX);
    if (has_seg_max)
        seg_max = virtio_config_read32(blk, VIRTIO_BLK_CFG_SEG_MAX);
    if (has_size_max)
        size_max = virtio_config_read32(blk, BLK_CFG_SIZE_MAX);
    diag("capacity %lu sectors; seg_max %u%s, size_max %u%s",
         virtio_config_read64(blk, VIRTIO_BLK_CFG_CAPACITY), seg_max,
         has_seg_max ? "" : " (not offered)", size_max, has_size_max ? "" : " (not offered)");
    return seg_max && size_max >= 4096 ? TEST_PASS : TEST_FAIL;
}

/* Publishes one request as an indirect table of n entries. */
static bool add_indirect(struct virtq *q, struct virtq_desc *table, unsigned n, void *token)
{
    if (!q->num_free)
        return false;
    uint16_t head = q->free_head;
    struct virtq_desc *d = &q->desc[head];
    q->free_head = d->next;
    q->num_free--;
    *d = (struct virtq_desc){(uint64_t)table, n * 16, VIRTQ_DESC_F_INDIRECT, d->next};
    q->chain_len[head] = 1;
    q->token[head] = token;
    q->avail->ring[q->avail_idx % q->size] = head;
    barrier();
    q->avail_idx++;
    WRITE_ONCE(q->avail->idx, q->avail_idx);
    return true;
}

/* The harness stamps the first and the last sector of every MiB with its sector number. */
static uint64_t stamp(const uint8_t *sector)
{
    uint64_t v;
    memcpy(&v, sector, 8);
    return v;
}

/* nreq reads from sector 0 at once, each of nseg buffers of seg_bytes that all point at
 * blk_buf; each must complete or fail with IOERR. A completed one leaves its last buffer's
 * part of the disk in blk_buf: the stamps say whether it is the right part. */
static enum test_result big_reads(unsigned nreq, unsigned nseg, uint32_t seg_bytes, bool may_fail)
{
    uint64_t total = (uint64_t)nseg * seg_bytes;
    uint64_t capacity = virtio_config_read64(blk, VIRTIO_BLK_CFG_CAPACITY);
    if (capacity * SECTOR_SIZE < total) {
        diag("the disk holds %lu sectors, fewer than one read", capacity);
        return TEST_FAIL;
    }
    static struct vblk_req reqs[MAX_REQUESTS];
    struct virtq *q = &blk->queues[0];
    for (unsigned r = 0; r < nreq; r++) {
        struct virtq_desc *t = blk_table + r * (BLK_MAX_SEGMENTS + 2);
        reqs[r] = (struct vblk_req){.type = VIRTIO_BLK_T_IN, .sector = 0, .status = 0xff};
        t[0] = (struct virtq_desc){(uint64_t)&reqs[r], 16, VIRTQ_DESC_F_NEXT, 1};
        for (unsigned i = 1; i <= nseg; i++)
            t[i] = (struct virtq_desc){(uint64_t)blk_buf, seg_bytes,
                                       VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, (uint16_t)(i + 1)};
        t[nseg + 1] = (struct virtq_desc){(uint64_t)&reqs[r].status, 1, VIRTQ_DESC_F_WRITE, 0};
        if (!add_indirect(q, t, nseg + 2, &reqs[r]))
            return TEST_FAIL;
    }
    diag("%u reads of %lu MiB at once, each %u buffers of %u bytes at 0x%lx", nreq, total >> 20,
         nseg, seg_bytes, (uint64_t)blk_buf);
    uint64_t start = time_us();
    virtq_notify(q);
    unsigned done = 0, ok = 0, ioerr = 0;
    while (done < nreq && time_us() - start < 60 * (uint64_t)WAIT_US) {
        uint32_t len;
        struct vblk_req *r = virtq_get(q, &len);
        if (!r) {
            if (virtio_get_status(blk) & VIRTIO_STATUS_NEEDS_RESET)
                break;
            udelay(1000);
            continue;
        }
        uint8_t status = READ_ONCE(r->status);
        diag("request %ld: status %u, %u bytes written, after %lu ms", r - reqs, status, len,
             (time_us() - start) / 1000);
        done++;
        ok += status == VIRTIO_BLK_S_OK;
        ioerr += status == VIRTIO_BLK_S_IOERR;
    }
    diag("%u of %u ended (%u OK, %u IOERR) in %lu ms; device status 0x%02x", done, nreq, ok, ioerr,
         (time_us() - start) / 1000, virtio_get_status(blk));
    bool data_ok = true;
    if (ok) {
        uint64_t first = stamp(blk_buf), last = stamp(blk_buf + seg_bytes - SECTOR_SIZE);
        uint64_t want_first = (total - seg_bytes) / SECTOR_SIZE,
                 want_last = total / SECTOR_SIZE - 1;
        data_ok = first == want_first && last == want_last;
        diag("the buffer holds sectors %lu..%lu (stamps %lu, %lu)", want_first, want_last, first,
             last);
    }
    bool ended = done == nreq && ok + ioerr == nreq && (may_fail || ok == nreq);
    return ended && data_ok ? TEST_PASS : TEST_FAIL;
}

/* Within what the device offers: at most seg_max buffers of size_max bytes (32 of 32 MiB when
 * it offers neither), res_read_mib= MiB at most; res_requests= of them. Each must complete. */
static enum test_result blk_reads_within(void)
{
    if (!blk)
        return skip("no disk");
    uint64_t read_mib = 512, nreq = 2;
    cmdline_get_u64("res_read_mib", &read_mib);
    cmdline_get_u64("res_requests", &nreq);
    if (nreq < 1 || nreq > MAX_REQUESTS || read_mib < 1 || read_mib > 4095)
        bail_out("res_requests= must be 1-%d, res_read_mib= 1-4095", MAX_REQUESTS);
    uint32_t seg_bytes = size_max < BLK_BUF_BYTES ? size_max & ~(SECTOR_SIZE - 1) : BLK_BUF_BYTES;
    uint64_t nseg = seg_max < BLK_MAX_SEGMENTS ? seg_max : BLK_MAX_SEGMENTS;
    if (nseg > read_mib * MIB_BYTES / seg_bytes)
        nseg = read_mib * MIB_BYTES / seg_bytes;
    if (!nseg)
        return TEST_FAIL;
    return big_reads((unsigned)nreq, (unsigned)nseg, seg_bytes, false);
}

/* res_requests= reads of 32 buffers of 32 MiB, whatever size_max says: each completes or
 * fails with IOERR. */
static enum test_result blk_reads_beyond(void)
{
    if (!blk)
        return skip("no disk");
    uint64_t nreq = 2;
    cmdline_get_u64("res_requests", &nreq);
    return big_reads((unsigned)nreq, BLK_SEGMENTS, BLK_BUF_BYTES, true);
}

static enum test_result blk_after_reset(void)
{
    if (!blk)
        return skip("no disk");
    if (!virtio_reset(blk) || !blk_up())
        return TEST_FAIL;
    uint8_t *buf = phys_alloc(MIB_BYTES, 4096);
    int status = vblk_sync(&blk->queues[0], VIRTIO_BLK_T_IN, 0, buf, MIB_BYTES, 0);
    uint64_t first = stamp(buf), last = stamp(buf + MIB_BYTES - SECTOR_SIZE);
    diag("read of the first MiB: status %d, stamps %lu and %lu", status, first, last);
    virtio_reset(blk);
    return status == VIRTIO_BLK_S_OK && first == 0 && last == MIB_BYTES / SECTOR_SIZE - 1
               ? TEST_PASS
               : TEST_FAIL;
}

/* ---- virtio-net ------------------------------------------------------------------------------ */

#define NET_BIG_FRAME 65550
#define NET_ETHERTYPE 0x88b5 /* local experimental */

static struct vnet net;
static struct virtio_device *netdev;
static uint8_t host_mac[6];

static bool net_up(void)
{
    struct vnet_options o = {.features = 0};
    return vnet_open(&net, netdev, &o);
}

static enum test_result net_find(void)
{
    char text[32];
    if (!cmdline_get("net_host_mac", text, sizeof(text)) || !parse_mac(text, host_mac))
        bail_out("no valid net_host_mac= on the command line");
    netdev = virtio_find(VIRTIO_ID_NET, 0);
    return netdev && net_up() ? TEST_PASS : TEST_FAIL;
}

/* Keeps the transmit queue full of frames of frame_len bytes for ms milliseconds (all chains
 * point at one header and one frame), then waits for the device to use every one. */
static enum test_result net_flood(uint32_t frame_len, uint64_t ms)
{
    if (!netdev)
        return skip("no network device");
    static uint8_t header[VNET_HDR_LEN];
    static uint8_t *frame;
    static char token;
    if (!frame) {
        frame = phys_alloc(NET_BIG_FRAME, 4096);
        memcpy(frame, host_mac, 6);
        memcpy(frame + 6, net.mac, 6);
        frame[12] = NET_ETHERTYPE >> 8;
        frame[13] = NET_ETHERTYPE & 0xff;
    }
    struct virtq *q = net.txq;
    struct vbuf bufs[2] = {{(uint64_t)header, VNET_HDR_LEN, false},
                           {(uint64_t)frame, frame_len, false}};
    uint64_t sent = 0, used = 0, start = time_us(), last_progress = start;
    bool stuck = false;
    while (time_us() - start < ms * 1000) {
        while (virtq_get(q, NULL)) {
            used++;
            last_progress = time_us();
        }
        bool added = false;
        while (virtq_add(q, bufs, 2, &token) >= 0) {
            sent++;
            added = true;
        }
        if (added)
            virtq_kick(q);
        if (time_us() - last_progress > WAIT_US) {
            stuck = true;
            break;
        }
        udelay(200);
    }
    uint64_t drain_start = time_us();
    while (used < sent && time_us() - drain_start < 2 * (uint64_t)WAIT_US) {
        if (virtq_get(q, NULL))
            used++;
        else
            udelay(500);
    }
    diag("%lu frames of %u bytes queued in %lu ms, %lu came back used%s", sent, frame_len, ms, used,
         stuck ? " (the queue stood still for 5 s)" : "");
    return !stuck && used == sent && sent > 0 ? TEST_PASS : TEST_FAIL;
}

static enum test_result net_flood_mtu(void)
{
    uint64_t ms = 1000;
    cmdline_get_u64("res_net_ms", &ms);
    return net_flood(1514, ms);
}

static enum test_result net_flood_big(void)
{
    uint64_t ms = 1000;
    cmdline_get_u64("res_net_ms", &ms);
    return net_flood(NET_BIG_FRAME, ms);
}

static enum test_result net_after_reset(void)
{
    if (!netdev)
        return skip("no network device");
    if (!virtio_reset(netdev) || !net_up())
        return TEST_FAIL;
    static uint8_t frame[64];
    memcpy(frame, host_mac, 6);
    memcpy(frame + 6, net.mac, 6);
    frame[12] = NET_ETHERTYPE >> 8;
    frame[13] = NET_ETHERTYPE & 0xff;
    bool ok = vnet_send(&net, NULL, frame, sizeof(frame)) >= 0 && vnet_tx_drain(&net, WAIT_US);
    virtio_reset(netdev);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* ---- virtio-vsock ---------------------------------------------------------------------------- */

/* The library's driver (lib/vsock.h) keeps a handful of small connections: this part drives
 * the queues itself, with its packet format and constants. */
#define OP_REQUEST      VSOCK_OP_REQUEST
#define OP_RESPONSE     VSOCK_OP_RESPONSE
#define OP_RST          VSOCK_OP_RST
#define OP_RW           VSOCK_OP_RW
#define OP_CREDIT_UPD   VSOCK_OP_CREDIT_UPDATE
#define OP_CREDIT_REQ   VSOCK_OP_CREDIT_REQUEST
#define MAX_CONNS       512
#define RX_BUFS         128
#define RX_BUF_BYTES    256
#define TX_SLOTS        256
#define PAYLOAD_MAX     65536
#define GUEST_PORT_BASE 20000
#define GUEST_BUF_ALLOC 65536

enum conn_state { C_NONE, C_REQUESTED, C_OPEN, C_REFUSED, C_RESET };

struct conn {
    enum conn_state state;
    uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt;
};

static struct virtio_device *vsdev;
static uint64_t guest_cid;
static uint32_t host_port = 5000;
static struct conn *conns;
static unsigned nconns = 300;
static uint8_t *vs_rx, *vs_payload;
static struct vsock_hdr *tx_slots[TX_SLOTS];
static unsigned tx_free;
static uint64_t rsts_seen, credit_updates;

static void vs_post_rx(void *buf)
{
    struct vbuf b = {(uint64_t)buf, RX_BUF_BYTES, true};
    virtq_add(&vsdev->queues[VSOCK_RXQ], &b, 1, buf);
}

static bool vs_up(void)
{
    if (!virtio_begin(vsdev, 0, false))
        return false;
    for (unsigned q = 0; q < 3; q++) {
        if (!virtio_queue_setup(vsdev, q, q == VSOCK_TXQ ? 0 : RX_BUFS, false))
            return false;
    }
    for (unsigned i = 0; i < RX_BUFS; i++)
        vs_post_rx(vs_rx + i * RX_BUF_BYTES);
    /* The event queue gets buffers too, as a driver must give them (5.10.6.1). */
    static uint8_t events[4][8];
    for (unsigned i = 0; i < 4; i++) {
        struct vbuf b = {(uint64_t)events[i], sizeof(events[i]), true};
        virtq_add(&vsdev->queues[VSOCK_EVQ], &b, 1, events[i]);
    }
    virtio_driver_ok(vsdev);
    virtq_notify(&vsdev->queues[VSOCK_RXQ]);
    virtq_notify(&vsdev->queues[VSOCK_EVQ]);
    guest_cid = virtio_config_read64(vsdev, 0);
    tx_free = 0;
    for (unsigned i = 0; i < TX_SLOTS; i++)
        tx_slots[tx_free++] = (struct vsock_hdr *)(vs_rx + RX_BUFS * RX_BUF_BYTES + i * 64);
    return !(virtio_get_status(vsdev) & VIRTIO_STATUS_NEEDS_RESET);
}

static void vs_reclaim_tx(void)
{
    struct vsock_hdr *h;
    while ((h = virtq_get(&vsdev->queues[VSOCK_TXQ], NULL)))
        tx_slots[tx_free++] = h;
}

/* Sends one packet on connection i (len bytes of payload for OP_RW); false when the transmit
 * queue has no room even after taking back what the device used. */
static bool vs_send(unsigned i, uint16_t op, uint32_t len)
{
    vs_reclaim_tx();
    if (!tx_free)
        return false;
    struct vsock_hdr *h = tx_slots[--tx_free];
    *h = (struct vsock_hdr){.src_cid = guest_cid,
                            .dst_cid = VSOCK_HOST_CID,
                            .src_port = GUEST_PORT_BASE + i,
                            .dst_port = host_port,
                            .len = len,
                            .type = VSOCK_TYPE_STREAM,
                            .op = op,
                            .buf_alloc = GUEST_BUF_ALLOC};
    struct vbuf b[2] = {{(uint64_t)h, sizeof(*h), false}, {(uint64_t)vs_payload, len, false}};
    if (virtq_add(&vsdev->queues[VSOCK_TXQ], b, len ? 2 : 1, h) < 0) {
        tx_slots[tx_free++] = h;
        return false;
    }
    virtq_kick(&vsdev->queues[VSOCK_TXQ]);
    return true;
}

/* Takes what the device sent: answers to requests, credit updates, resets. Returns how many
 * packets came. */
static unsigned vs_poll_rx(void)
{
    struct virtq *q = &vsdev->queues[VSOCK_RXQ];
    unsigned n = 0;
    uint8_t *buf;
    uint32_t len;
    while ((buf = virtq_get(q, &len))) {
        n++;
        struct vsock_hdr h;
        memcpy(&h, buf, sizeof(h));
        unsigned i = h.dst_port - GUEST_PORT_BASE;
        if (len >= sizeof(h) && h.src_port == host_port && i < nconns) {
            struct conn *c = &conns[i];
            switch (h.op) {
            case OP_RESPONSE:
                if (c->state == C_REQUESTED)
                    c->state = C_OPEN;
                break;
            case OP_RST:
                c->state = c->state == C_REQUESTED ? C_REFUSED : C_RESET;
                rsts_seen++;
                break;
            case OP_CREDIT_UPD:
                credit_updates++;
                break;
            default:
                break;
            }
            c->peer_buf_alloc = h.buf_alloc;
            c->peer_fwd_cnt = h.fwd_cnt;
        }
        vs_post_rx(buf);
    }
    if (n)
        virtq_kick(q);
    return n;
}

static uint32_t credit(const struct conn *c)
{
    uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static unsigned count_state(enum conn_state s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < nconns; i++)
        n += conns[i].state == s;
    return n;
}

static enum test_result vs_find(void)
{
    uint64_t v;
    if (cmdline_get_u64("vsock_port", &v))
        host_port = (uint32_t)v;
    if (cmdline_get_u64("vsock_conns", &v) && v >= 1 && v <= MAX_CONNS)
        nconns = (unsigned)v;
    vsdev = virtio_find(VIRTIO_ID_VSOCK, 0);
    if (!vsdev)
        return TEST_FAIL;
    conns = phys_alloc_zeroed(MAX_CONNS * sizeof(*conns), 64);
    vs_rx = phys_alloc(RX_BUFS * RX_BUF_BYTES + TX_SLOTS * 64, 4096);
    vs_payload = phys_alloc(PAYLOAD_MAX, 4096);
    if (!vs_up())
        return TEST_FAIL;
    diag("guest CID %lu", guest_cid);
    return TEST_PASS;
}

/* Connects nconns times to the host's port, whose program accepts and never reads. */
static enum test_result vs_connect_many(void)
{
    if (!vsdev)
        return skip("no vsock device");
    uint64_t start = time_us();
    for (unsigned i = 0; i < nconns; i++) {
        conns[i] = (struct conn){.state = C_REQUESTED};
        while (!vs_send(i, OP_REQUEST, 0)) {
            vs_poll_rx();
            if (time_us() - start > 4 * (uint64_t)WAIT_US)
                return TEST_FAIL;
        }
        vs_poll_rx();
    }
    while (count_state(C_REQUESTED) && time_us() - start < 2 * (uint64_t)WAIT_US) {
        if (!vs_poll_rx())
            udelay(1000);
    }
    unsigned open = count_state(C_OPEN), refused = count_state(C_REFUSED);
    diag("%u connections asked for: %u open, %u refused, %u unanswered, in %lu ms", nconns, open,
         refused, count_state(C_REQUESTED), (time_us() - start) / 1000);
    return open > 0 && open + refused == nconns ? TEST_PASS : TEST_FAIL;
}

/* Sends on every open connection as far as its credit goes, until nothing moves for 300 ms:
 * what the host program does not read waits in the VMM, within the credit it gave. */
static enum test_result vs_fill(void)
{
    if (!vsdev)
        return skip("no vsock device");
    uint64_t start = time_us(), idle_since = start, bytes = 0, packets = 0;
    while (time_us() - idle_since < 300000 && time_us() - start < 6 * (uint64_t)WAIT_US) {
        bool moved = vs_poll_rx() > 0;
        for (unsigned i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            uint32_t len = c->state == C_OPEN ? credit(c) : 0;
            if (len > PAYLOAD_MAX)
                len = PAYLOAD_MAX;
            if (!len || !vs_send(i, OP_RW, len))
                continue;
            c->tx_cnt += len;
            bytes += len;
            packets++;
            moved = true;
        }
        if (moved)
            idle_since = time_us();
        else
            udelay(1000);
    }
    unsigned open = count_state(C_OPEN);
    diag("%lu bytes in %lu packets on %u connections in %lu ms; %lu credit updates, %u "
         "connections reset on the way",
         bytes, packets, open, (time_us() - start) / 1000, credit_updates, count_state(C_RESET));
    return bytes > 0 && open > 0 ? TEST_PASS : TEST_FAIL;
}

/* A packet beyond the credit on up to four connections: each must be reset. The credit is
 * asked for first (CREDIT_REQUEST), so that the packet goes past what the device has really
 * room for, not past an older, smaller figure. */
static enum test_result vs_beyond_credit(void)
{
    if (!vsdev)
        return skip("no vsock device");
    unsigned targets[4], n = 0;
    for (unsigned i = 0; i < nconns && n < 4; i++) {
        if (conns[i].state == C_OPEN)
            targets[n++] = i;
    }
    if (!n) {
        diag("no open connection");
        return TEST_FAIL;
    }
    uint64_t updates = credit_updates;
    for (unsigned k = 0; k < n; k++) {
        if (!vs_send(targets[k], OP_CREDIT_REQ, 0))
            return TEST_FAIL;
    }
    for (uint64_t start = time_us(); credit_updates - updates < n && time_us() - start < WAIT_US;)
        if (!vs_poll_rx())
            udelay(1000);
    unsigned over = 0;
    for (unsigned k = 0; k < n; k++) {
        struct conn *c = &conns[targets[k]];
        uint32_t len = credit(c) + 4096;
        if (c->state != C_OPEN || len > PAYLOAD_MAX)
            continue;
        if (!vs_send(targets[k], OP_RW, len))
            return TEST_FAIL;
        c->tx_cnt += len;
        over++;
    }
    unsigned reset = 0;
    for (uint64_t start = time_us(); time_us() - start < WAIT_US && reset < n;) {
        vs_poll_rx();
        reset = 0;
        for (unsigned k = 0; k < n; k++)
            reset += conns[targets[k]].state == C_RESET;
        if (reset < n)
            udelay(1000);
    }
    diag("%u connections sent 4 KiB past the credit the device last gave, %u reset", over, reset);
    return over == n && reset == n ? TEST_PASS : TEST_FAIL;
}

static enum test_result vs_after_reset(void)
{
    if (!vsdev)
        return skip("no vsock device");
    if (!virtio_reset(vsdev) || !vs_up())
        return TEST_FAIL;
    unsigned saved = nconns;
    nconns = 1;
    conns[0] = (struct conn){.state = C_REQUESTED};
    bool sent = vs_send(0, OP_REQUEST, 0);
    for (uint64_t start = time_us();
         sent && conns[0].state == C_REQUESTED && time_us() - start < WAIT_US;)
        if (!vs_poll_rx())
            udelay(1000);
    bool ok = conns[0].state == C_OPEN;
    diag("a new connection after the reset: %s", ok ? "open" : "not open");
    nconns = saved;
    virtio_reset(vsdev);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* ---- virtio-console -------------------------------------------------------------------------- */

#define CONSOLE_RXQ   0
#define CONSOLE_TXQ   1
#define CONSOLE_CHUNK 65536
#define CONSOLE_LINE  64

static struct virtio_device *console;
static uint8_t *console_chunk;

static bool console_up(void)
{
    return virtio_begin(console, 0, false) && virtio_queue_setup(console, CONSOLE_RXQ, 0, false) &&
           virtio_queue_setup(console, CONSOLE_TXQ, 0, false) &&
           (virtio_driver_ok(console), !(virtio_get_status(console) & VIRTIO_STATUS_NEEDS_RESET));
}

static enum test_result console_find(void)
{
    console = virtio_find(VIRTIO_ID_CONSOLE, 0);
    if (!console)
        return TEST_FAIL;
    console_chunk = phys_alloc(CONSOLE_CHUNK, 4096);
    /* 1024 lines of 64 bytes: "console flood NNNNNNNN " and letters up to the newline. */
    for (unsigned l = 0; l < CONSOLE_CHUNK / CONSOLE_LINE; l++) {
        char *p = (char *)console_chunk + l * CONSOLE_LINE;
        snprintf(p, CONSOLE_LINE, "console flood %08u ", l);
        for (unsigned i = 23; i < CONSOLE_LINE - 1; i++)
            p[i] = (char)('a' + i % 26);
        p[CONSOLE_LINE - 1] = '\n';
    }
    return console_up() ? TEST_PASS : TEST_FAIL;
}

static enum test_result console_flood(void)
{
    if (!console)
        return skip("no console");
    uint64_t mib = 8;
    cmdline_get_u64("res_console_mib", &mib);
    uint64_t chunks = mib * MIB_BYTES / CONSOLE_CHUNK, sent = 0, used = 0;
    struct virtq *q = &console->queues[CONSOLE_TXQ];
    struct vbuf b = {(uint64_t)console_chunk, CONSOLE_CHUNK, false};
    static char token;
    uint64_t start = time_us(), last_progress = start;
    while (used < chunks && time_us() - last_progress < 6 * (uint64_t)WAIT_US) {
        if (virtq_get(q, NULL)) {
            used++;
            last_progress = time_us();
            continue;
        }
        bool added = false;
        while (sent < chunks && virtq_add(q, &b, 1, &token) >= 0) {
            sent++;
            added = true;
        }
        if (added)
            virtq_kick(q);
        else
            udelay(500);
    }
    diag("%lu KiB in %lu buffers sent, %lu used, in %lu ms", sent * (CONSOLE_CHUNK / 1024), sent,
         used, (time_us() - start) / 1000);
    return used == chunks ? TEST_PASS : TEST_FAIL;
}

static enum test_result console_after_reset(void)
{
    if (!console)
        return skip("no console");
    if (!virtio_reset(console) || !console_up())
        return TEST_FAIL;
    static const char line[] = "virtio-resources: the console works after the flood\n";
    static char buf[sizeof(line)];
    memcpy(buf, line, sizeof(line) - 1);
    struct vbuf b = {(uint64_t)buf, sizeof(line) - 1, false};
    bool ok = virtq_transfer(&console->queues[CONSOLE_TXQ], &b, 1, WAIT_US) >= 0;
    virtio_reset(console);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* ---- the parts ------------------------------------------------------------------------------- */

static const struct guest_test blk_tests[] = {
    {"blk: disk found and up", blk_find},
    {"blk: large misaligned reads within the disk's limits, several at once: each completes",
     blk_reads_within},
    {"blk: reads of 32 misaligned buffers of 32 MiB, several at once: each completes or fails",
     blk_reads_beyond},
    {"blk: after a reset the disk reads back intact", blk_after_reset},
};

static const struct guest_test net_tests[] = {
    {"net: device found and up", net_find},
    {"net: the transmit queue kept full of 1514-byte frames: every one used", net_flood_mtu},
    {"net: the transmit queue kept full of 65550-byte frames: every one used", net_flood_big},
    {"net: after a reset a frame goes out", net_after_reset},
};

static const struct guest_test vsock_tests[] = {
    {"vsock: device found and up", vs_find},
    {"vsock: many connections to a host program that never reads: each answered", vs_connect_many},
    {"vsock: data on every connection as far as the credit goes", vs_fill},
    {"vsock: data beyond the credit resets the connection", vs_beyond_credit},
    {"vsock: after a reset a new connection opens", vs_after_reset},
};

static const struct guest_test console_tests[] = {
    {"console: device found and up", console_find},
    {"console: a flood of output while the host reads slowly: every buffer used", console_flood},
    {"console: after a reset a line goes out", console_after_reset},
};

void guest_main(void)
{
    tsc_calibrate();
    if (!cmdline_get("res_part", part, sizeof(part)))
        bail_out("no res_part= (blk, net, vsock or console) on the command line");
    if (!strncmp(part, "blk", sizeof(part)))
        tap_run(blk_tests, ARRAY_SIZE(blk_tests));
    if (!strncmp(part, "net", sizeof(part)))
        tap_run(net_tests, ARRAY_SIZE(net_tests));
    if (!strncmp(part, "vsock", sizeof(part)))
        tap_run(vsock_tests, ARRAY_SIZE(vsock_tests));
    if (!strncmp(part, "console", sizeof(part)))
        tap_run(console_tests, ARRAY_SIZE(console_tests));
    bail_out("res_part=%s: not blk, net, vsock or console", part);
}
