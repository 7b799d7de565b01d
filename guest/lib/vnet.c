/* virtio-net driver core for the test guests (virtio 1.2, 5.1.6). */
#include "vnet.h"

#include "inet.h"
#include "io.h"

#define RX_MAX_BUF 4096 /* the largest receive buffer vnet_open accepts */
/* How long the rest of a merged frame may lag its first buffer (devices publish them at once;
 * the guest's own slowness is what this allows for). */
#define MERGE_WAIT_US 1000000

bool vnet_open(struct vnet *n, struct virtio_device *d, const struct vnet_options *o)
{
    uint32_t size = o->rx_buf_size ? o->rx_buf_size : 2048;
    if (size > RX_MAX_BUF || size < (o->rx_split ? 1 : VNET_HDR_LEN + 1)) {
        diag("vnet: receive buffers of %u bytes not supported", size);
        return false;
    }
    if (!n->rx_mem) {
        n->rx_mem = phys_alloc((size_t)VIRTQ_MAX_SIZE * RX_MAX_BUF, 4096);
        n->rx_hdrs = phys_alloc((size_t)VIRTQ_MAX_SIZE * 16, 4096);
        n->tx_mem = phys_alloc((size_t)VIRTQ_MAX_SIZE * VNET_TX_SLOT, 4096);
        n->tx_free = phys_alloc(VIRTQ_MAX_SIZE * sizeof(uint16_t), 16);
    }
    n->dev = d;
    n->rxq = &d->queues[VNET_RXQ];
    n->txq = &d->queues[VNET_TXQ];
    n->rx_frames = n->rx_merged = n->tx_frames = n->tx_completed = 0;
    n->last_num_buffers = 0;
    if (!virtio_begin(d, o->features, o->rx_interrupts))
        return false;
    n->mergeable = virtio_has(d, VIRTIO_NET_F_MRG_RXBUF);
    n->rx_split = o->rx_split;
    n->rx_buf_size = size;
    if (!n->mergeable && size - (o->rx_split ? 0 : VNET_HDR_LEN) < 1514) {
        /* 5.1.6.3.1: without merging, every buffer must hold a whole frame. */
        diag("vnet: %u-byte receive buffers need VIRTIO_NET_F_MRG_RXBUF", size);
        return false;
    }
    if (!virtio_queue_setup(d, VNET_RXQ, o->queue_size, o->rx_interrupts) ||
        !virtio_queue_setup(d, VNET_TXQ, o->queue_size, false))
        return false;
    /* Transmit completions are reclaimed by polling: nothing waits for them. */
    virtq_suppress_interrupts(n->txq);
    n->tx_slots = n->txq->size;
    n->tx_nfree = 0;
    for (unsigned i = n->tx_slots; i-- > 0;)
        n->tx_free[n->tx_nfree++] = (uint16_t)i;
    if (virtio_has(d, VIRTIO_NET_F_MAC))
        virtio_config_read(d, VNET_CFG_MAC, n->mac, 6);
    else
        memset(n->mac, 0, 6);
    virtio_driver_ok(d);
    /* Every buffer to the device; split chains take two descriptors each. */
    n->rx_bufs = o->rx_split ? n->rxq->size / 2 : n->rxq->size;
    for (unsigned i = 0; i < n->rx_bufs; i++) {
        uint8_t *buf = n->rx_mem + (size_t)i * RX_MAX_BUF;
        struct vbuf b[2] = {{(uint64_t)buf, size, true}};
        unsigned count = 1;
        if (o->rx_split) {
            b[0] = (struct vbuf){(uint64_t)(n->rx_hdrs + 16 * i), VNET_HDR_LEN, true};
            b[1] = (struct vbuf){(uint64_t)buf, size, true};
            count = 2;
        }
        if (virtq_add(n->rxq, b, count, buf) < 0) {
            diag("vnet: receive queue full after %u buffers", i);
            return false;
        }
    }
    virtq_kick(n->rxq);
    return true;
}

bool vnet_link_up(struct vnet *n)
{
    if (!virtio_has(n->dev, VIRTIO_NET_F_STATUS))
        return true;
    return virtio_config_read16(n->dev, VNET_CFG_STATUS) & VIRTIO_NET_S_LINK_UP;
}

/* ---- transmit ------------------------------------------------------------------------------ */

unsigned vnet_tx_reclaim(struct vnet *n)
{
    unsigned count = 0;
    uint8_t *slot;
    while ((slot = virtq_get(n->txq, NULL))) {
        /* Chains the caller queued itself carry tokens outside the slots: not ours to free. */
        if (slot >= n->tx_mem && slot < n->tx_mem + (size_t)n->tx_slots * VNET_TX_SLOT) {
            n->tx_free[n->tx_nfree++] = (uint16_t)((size_t)(slot - n->tx_mem) / VNET_TX_SLOT);
            n->tx_completed++;
        }
        count++;
    }
    return count;
}

int vnet_queue_tx(struct vnet *n, const struct virtio_net_hdr *hdr, const void *frame, uint32_t len)
{
    if (len > VNET_TX_SLOT - VNET_HDR_LEN)
        bail_out("vnet: a %u-byte frame does not fit a transmit slot", len);
    if (!n->tx_nfree && !vnet_tx_reclaim(n))
        return -1;
    if (!n->tx_nfree || !n->txq->num_free)
        return -1;
    uint16_t i = n->tx_free[--n->tx_nfree];
    uint8_t *slot = n->tx_mem + (size_t)i * VNET_TX_SLOT;
    if (hdr)
        memcpy(slot, hdr, VNET_HDR_LEN);
    else
        memset(slot, 0, VNET_HDR_LEN);
    memcpy(slot + VNET_HDR_LEN, frame, len);
    struct vbuf b = {(uint64_t)slot, VNET_HDR_LEN + len, false};
    if (virtq_add(n->txq, &b, 1, slot) < 0) {
        n->tx_free[n->tx_nfree++] = i;
        return -1;
    }
    n->tx_frames++;
    return 0;
}

int vnet_send(struct vnet *n, const struct virtio_net_hdr *hdr, const void *frame, uint32_t len)
{
    if (vnet_queue_tx(n, hdr, frame, len) < 0)
        return -1;
    virtq_kick(n->txq);
    return 0;
}

bool vnet_tx_drain(struct vnet *n, uint64_t timeout_us)
{
    uint64_t start = time_us();
    for (;;) {
        vnet_tx_reclaim(n);
        if (n->txq->num_free == n->txq->size)
            return true;
        if (time_us() - start > timeout_us) {
            diag("vnet: %u transmit buffers still with the device after %lu ms",
                 n->txq->size - n->txq->num_free, timeout_us / 1000);
            return false;
        }
        cpu_relax();
    }
}

/* ---- receive ------------------------------------------------------------------------------- */

/* Gives buffer buf (as posted by vnet_open) back to the device. */
static void repost(struct vnet *n, uint8_t *buf)
{
    unsigned i = (unsigned)((size_t)(buf - n->rx_mem) / RX_MAX_BUF);
    struct vbuf b[2] = {{(uint64_t)buf, n->rx_buf_size, true}};
    unsigned count = 1;
    if (n->rx_split) {
        b[0] = (struct vbuf){(uint64_t)(n->rx_hdrs + 16 * i), VNET_HDR_LEN, true};
        b[1] = (struct vbuf){(uint64_t)buf, n->rx_buf_size, true};
        count = 2;
    }
    if (virtq_add(n->rxq, b, count, buf) < 0)
        bail_out("vnet: no room to give a receive buffer back");
}

static uint8_t *take_rx(struct vnet *n, uint32_t *len)
{
    uint8_t *buf = virtq_get(n->rxq, len);
    if (buf && (buf < n->rx_mem || buf >= n->rx_mem + (size_t)n->rx_bufs * RX_MAX_BUF))
        bail_out("vnet: a used receive entry with a token that is not a buffer");
    return buf;
}

int32_t vnet_recv(struct vnet *n, void *out, uint32_t size, struct virtio_net_hdr *hdr_out)
{
    uint32_t used;
    uint8_t *buf = take_rx(n, &used);
    if (!buf)
        return -1;
    int32_t result;
    struct virtio_net_hdr hdr;
    const uint8_t *data;
    uint32_t data_len, room = n->rx_buf_size;
    if (n->rx_split) {
        unsigned i = (unsigned)((size_t)(buf - n->rx_mem) / RX_MAX_BUF);
        memcpy(&hdr, n->rx_hdrs + 16 * i, VNET_HDR_LEN);
        room += VNET_HDR_LEN;
        data = buf;
    } else {
        memcpy(&hdr, buf, VNET_HDR_LEN);
        data = buf + VNET_HDR_LEN;
    }
    if (used < VNET_HDR_LEN || used > room) {
        diag("vnet: used length %u of a %u-byte receive buffer", used, room);
        repost(n, buf);
        virtq_kick(n->rxq);
        return -2;
    }
    data_len = used - VNET_HDR_LEN;
    uint16_t nbufs = n->mergeable ? hdr.num_buffers : 1;
    n->last_num_buffers = hdr.num_buffers;
    if (nbufs == 0 || nbufs > n->rx_bufs) {
        diag("vnet: num_buffers %u (%u buffers posted)", hdr.num_buffers, n->rx_bufs);
        repost(n, buf);
        virtq_kick(n->rxq);
        return -2;
    }
    uint32_t total = data_len;
    if (out)
        memcpy(out, data, data_len < size ? data_len : size);
    repost(n, buf);
    result = 0;
    for (uint16_t k = 1; k < nbufs; k++) {
        uint64_t start = time_us();
        while (!(buf = take_rx(n, &used))) {
            if (time_us() - start > MERGE_WAIT_US) {
                diag("vnet: buffer %u of %u of a merged frame never came", k + 1, nbufs);
                virtq_kick(n->rxq);
                return -2;
            }
            cpu_relax();
        }
        if (used > n->rx_buf_size) {
            diag("vnet: used length %u of a %u-byte merged buffer", used, n->rx_buf_size);
            result = -2;
        } else {
            if (out && total < size)
                memcpy((uint8_t *)out + total, buf, used < size - total ? used : size - total);
            total += used;
        }
        repost(n, buf);
    }
    virtq_kick(n->rxq);
    if (result < 0)
        return result;
    n->rx_frames++;
    n->rx_merged += nbufs > 1;
    if (hdr_out)
        *hdr_out = hdr;
    return (int32_t)total;
}

int32_t vnet_recv_wait(struct vnet *n, void *buf, uint32_t size, struct virtio_net_hdr *hdr,
                       uint64_t timeout_us)
{
    uint64_t start = time_us();
    for (;;) {
        int32_t r = vnet_recv(n, buf, size, hdr);
        if (r != -1)
            return r;
        uint64_t spent = time_us() - start;
        if (spent >= timeout_us)
            return -1;
        if (n->rxq->interrupts)
            virtq_wait(n->rxq, timeout_us - spent);
        else
            cpu_relax();
    }
}

int32_t vnet_recv_until(struct vnet *n, void *buf, uint32_t size, struct virtio_net_hdr *hdr,
                        uint64_t deadline_us)
{
    uint64_t now = time_us();
    if (now >= deadline_us)
        return -1;
    int32_t len = vnet_recv_wait(n, buf, size, hdr, deadline_us - now);
    if (len < 0)
        return len;
    vnet_tx_reclaim(n);
    if ((uint32_t)len > size) {
        diag("a %d-byte frame: larger than any sent", len);
        return -2;
    }
    return len;
}

bool vnet_mac_is(const struct vnet *n, const uint8_t want[6])
{
    char got_text[18], want_text[18];
    format_mac(got_text, n->mac);
    format_mac(want_text, want);
    diag("MAC %s, expected %s", got_text, want_text);
    return !memcmp(n->mac, want, 6);
}

const uint16_t vnet_check_sizes[VNET_CHECK_SIZES] = {60,   61,   64,   100,  128,  256,
                                                     511,  512,  1000, 1011, 1012, 1013,
                                                     1024, 1025, 1400, 1500, 1513, 1514};

bool vnet_answer_arp(struct vnet *n, uint32_t ip, const uint8_t *f, int32_t len)
{
    struct arp_view a;
    if (len < 0 || !parse_arp(f, (size_t)len, &a) || a.op != ARP_REQUEST || a.tpa != ip)
        return false;
    static uint8_t reply[ARP_FRAME_LEN];
    size_t size = frame_arp(reply, ARP_REPLY, n->mac, ip, a.sha, a.spa);
    vnet_send(n, NULL, reply, (uint32_t)size);
    return true;
}
