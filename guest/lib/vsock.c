/* virtio-vsock driver core for the test guests (virtio 1.2, 5.10.6). */
#include "vsock.h"

#include "io.h"

#define FIRST_LOCAL_PORT 49152
#define EVENT_BUFS       4
#define EVENT_BUF        8 /* struct virtio_vsock_event: le32 id, and room to spare */

static void allocate(struct vsock *v)
{
    if (v->rx_mem)
        return;
    v->rx_mem = phys_alloc((size_t)VSOCK_RX_BUFS * VSOCK_RX_BUF, 4096);
    v->ev_mem = phys_alloc(EVENT_BUFS * EVENT_BUF, 64);
    v->tx_mem = phys_alloc((size_t)VIRTQ_MAX_SIZE * VSOCK_TX_SLOT, 4096);
    v->tx_free = phys_alloc(VIRTQ_MAX_SIZE * sizeof(uint16_t), 16);
    v->conns = phys_alloc(VSOCK_CONNS * sizeof(struct vsock_conn), 64);
}

void vsock_attach(struct vsock *v, struct virtio_device *d)
{
    allocate(v);
    v->dev = d;
    v->cid = virtio_config_read64(d, 0);
    v->rxq = d->queues[VSOCK_RXQ].size ? &d->queues[VSOCK_RXQ] : NULL;
    v->txq = d->queues[VSOCK_TXQ].size ? &d->queues[VSOCK_TXQ] : NULL;
    v->evq = d->queues[VSOCK_EVQ].size ? &d->queues[VSOCK_EVQ] : NULL;
    memset(v->conns, 0, VSOCK_CONNS * sizeof(struct vsock_conn));
    v->listen_port = 0;
    if (!v->next_port)
        v->next_port = FIRST_LOCAL_PORT;
    v->rx_packets = v->tx_packets = v->requests_refused = v->rsts_received = v->events = 0;
    v->bad_packets = 0;
    v->tx_slots = v->tx_nfree = 0;
    if (v->txq) {
        v->tx_slots = v->txq->size;
        for (unsigned i = v->tx_slots; i-- > 0;)
            v->tx_free[v->tx_nfree++] = (uint16_t)i;
        virtq_suppress_interrupts(v->txq);
    }
    if (v->rxq) {
        for (unsigned i = 0; i < VSOCK_RX_BUFS && i < v->rxq->size; i++) {
            uint8_t *buf = v->rx_mem + (size_t)i * VSOCK_RX_BUF;
            struct vbuf b = {(uint64_t)buf, VSOCK_RX_BUF, true};
            virtq_add(v->rxq, &b, 1, buf);
        }
        virtq_suppress_interrupts(v->rxq);
        virtq_kick(v->rxq);
    }
    if (v->evq) {
        for (unsigned i = 0; i < EVENT_BUFS && i < v->evq->size; i++) {
            uint8_t *buf = v->ev_mem + i * EVENT_BUF;
            struct vbuf b = {(uint64_t)buf, EVENT_BUF, true};
            virtq_add(v->evq, &b, 1, buf);
        }
        virtq_suppress_interrupts(v->evq);
        virtq_kick(v->evq);
    }
}

bool vsock_open(struct vsock *v, struct virtio_device *d)
{
    uint64_t f = VIRTIO_BIT(VIRTIO_F_EVENT_IDX) | VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC);
    if (!virtio_begin(d, f, true))
        return false;
    for (unsigned q = 0; q < 3; q++) {
        if (!virtio_queue_setup(d, q, 0, false))
            return false;
    }
    virtio_driver_ok(d);
    if (virtio_get_status(d) & VIRTIO_STATUS_NEEDS_RESET) {
        diag("vsock: the device needs a reset right after DRIVER_OK");
        return false;
    }
    vsock_attach(v, d);
    return true;
}

/* ---- sending ------------------------------------------------------------------------------- */

unsigned vsock_tx_reclaim(struct vsock *v)
{
    if (!v->txq)
        return 0;
    unsigned count = 0;
    uint8_t *slot;
    while ((slot = virtq_get(v->txq, NULL))) {
        v->tx_free[v->tx_nfree++] = (uint16_t)((size_t)(slot - v->tx_mem) / VSOCK_TX_SLOT);
        count++;
    }
    return count;
}

bool vsock_send(struct vsock *v, const struct vsock_hdr *h, const void *payload, uint32_t len)
{
    if (!v->txq || len > VSOCK_MAX_WRITE)
        return false;
    if (!v->tx_nfree)
        vsock_tx_reclaim(v);
    if (!v->tx_nfree || !v->txq->num_free)
        return false;
    uint16_t i = v->tx_free[--v->tx_nfree];
    uint8_t *slot = v->tx_mem + (size_t)i * VSOCK_TX_SLOT;
    struct vsock_hdr *out = (struct vsock_hdr *)slot;
    *out = *h;
    if (!out->src_cid)
        out->src_cid = v->cid;
    if (!out->dst_cid)
        out->dst_cid = VSOCK_HOST_CID;
    if (!out->type)
        out->type = VSOCK_TYPE_STREAM;
    if (!out->buf_alloc)
        out->buf_alloc = VSOCK_CONN_BUF;
    out->len = len;
    if (len)
        memcpy(slot + VSOCK_HDR_LEN, payload, len);
    struct vbuf b = {(uint64_t)slot, VSOCK_HDR_LEN + len, false};
    if (virtq_add(v->txq, &b, 1, slot) < 0) {
        v->tx_free[v->tx_nfree++] = i;
        return false;
    }
    virtq_kick(v->txq);
    v->tx_packets++;
    return true;
}

/* A control packet (len 0) on connection c. */
static bool send_op(struct vsock *v, struct vsock_conn *c, uint16_t op, uint32_t flags)
{
    struct vsock_hdr h = {.src_port = c->local_port,
                          .dst_port = c->peer_port,
                          .op = op,
                          .flags = flags,
                          .buf_alloc = VSOCK_CONN_BUF,
                          .fwd_cnt = c->fwd_cnt};
    if (!vsock_send(v, &h, NULL, 0))
        return false;
    c->fwd_cnt_sent = c->fwd_cnt;
    return true;
}

/* An RST back to the sender of h, which has no connection here. */
static void refuse(struct vsock *v, const struct vsock_hdr *h)
{
    struct vsock_hdr r = {.src_port = h->dst_port, .dst_port = h->src_port, .op = VSOCK_OP_RST};
    vsock_send(v, &r, NULL, 0);
}

/* ---- receiving ----------------------------------------------------------------------------- */

static struct vsock_conn *find(struct vsock *v, uint32_t local_port, uint32_t peer_port)
{
    for (unsigned i = 0; i < VSOCK_CONNS; i++) {
        struct vsock_conn *c = &v->conns[i];
        if (c->state != VSOCK_FREE && c->local_port == local_port && c->peer_port == peer_port)
            return c;
    }
    return NULL;
}

/* A free slot; closed connections nobody claimed are reused. */
static struct vsock_conn *new_conn(struct vsock *v)
{
    for (unsigned i = 0; i < VSOCK_CONNS; i++) {
        struct vsock_conn *c = &v->conns[i];
        if (c->state == VSOCK_FREE || (c->state == VSOCK_CLOSED && !c->claimed)) {
            memset(c, 0, sizeof(*c));
            return c;
        }
    }
    return NULL;
}

static void handle(struct vsock *v, const struct vsock_hdr *h, const uint8_t *payload,
                   uint32_t avail)
{
    if (h->dst_cid != v->cid || h->src_cid != VSOCK_HOST_CID || h->type != VSOCK_TYPE_STREAM ||
        h->len > avail) {
        diag("vsock: bad packet: cid %lu -> %lu, type %u, op %u, len %u of %u", h->src_cid,
             h->dst_cid, h->type, h->op, h->len, avail);
        v->bad_packets++;
        return;
    }
    struct vsock_conn *c = find(v, h->dst_port, h->src_port);
    if (h->op == VSOCK_OP_REQUEST) {
        if (!c && v->listen_port && h->dst_port == v->listen_port)
            c = new_conn(v);
        else
            c = NULL; /* a REQUEST for a connection we have is an error too */
        if (!c) {
            v->requests_refused++;
            refuse(v, h);
            return;
        }
        c->state = VSOCK_OPEN;
        c->local_port = h->dst_port;
        c->peer_port = h->src_port;
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
        send_op(v, c, VSOCK_OP_RESPONSE, 0);
        return;
    }
    if (!c) {
        if (h->op != VSOCK_OP_RST)
            refuse(v, h);
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case VSOCK_OP_RESPONSE:
        if (c->state == VSOCK_CONNECTING)
            c->state = VSOCK_OPEN;
        break;
    case VSOCK_OP_RST:
        v->rsts_received++;
        c->refused = c->state == VSOCK_CONNECTING;
        c->state = VSOCK_CLOSED;
        break;
    case VSOCK_OP_SHUTDOWN:
        if (h->flags & VSOCK_SHUTDOWN_SEND)
            c->peer_shut_send = true;
        if ((h->flags & (VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV)) ==
            (VSOCK_SHUTDOWN_SEND | VSOCK_SHUTDOWN_RCV)) {
            /* Both ways: the connection is over; the RST tells the peer we agree. */
            send_op(v, c, VSOCK_OP_RST, 0);
            c->state = VSOCK_CLOSED;
        }
        break;
    case VSOCK_OP_RW:
        if (c->state != VSOCK_OPEN || h->len > VSOCK_CONN_BUF - c->len) {
            diag("vsock: %u stream bytes beyond the credit given (%u unread)", h->len, c->len);
            v->bad_packets++;
            send_op(v, c, VSOCK_OP_RST, 0);
            c->state = VSOCK_CLOSED;
            break;
        }
        memcpy(c->data + c->len, payload, h->len);
        c->len += h->len;
        break;
    case VSOCK_OP_CREDIT_REQUEST:
        send_op(v, c, VSOCK_OP_CREDIT_UPDATE, 0);
        break;
    default: /* CREDIT_UPDATE: taken above */
        break;
    }
}

unsigned vsock_poll(struct vsock *v)
{
    unsigned count = 0;
    if (v->evq) {
        uint8_t *buf;
        while ((buf = virtq_get(v->evq, NULL))) {
            v->events++;
            struct vbuf b = {(uint64_t)buf, EVENT_BUF, true};
            virtq_add(v->evq, &b, 1, buf);
            virtq_kick(v->evq);
        }
    }
    if (!v->rxq)
        return 0;
    uint8_t *buf;
    uint32_t used;
    while ((buf = virtq_get(v->rxq, &used))) {
        count++;
        v->rx_packets++;
        if (used < VSOCK_HDR_LEN || used > VSOCK_RX_BUF) {
            diag("vsock: used length %u of a %u-byte receive buffer", used, VSOCK_RX_BUF);
            v->bad_packets++;
        } else {
            struct vsock_hdr h;
            memcpy(&h, buf, sizeof(h));
            handle(v, &h, buf + VSOCK_HDR_LEN, used - VSOCK_HDR_LEN);
        }
        struct vbuf b = {(uint64_t)buf, VSOCK_RX_BUF, true};
        virtq_add(v->rxq, &b, 1, buf);
        virtq_kick(v->rxq);
    }
    vsock_tx_reclaim(v);
    return count;
}

/* ---- connections --------------------------------------------------------------------------- */

void vsock_listen(struct vsock *v, uint32_t port)
{
    v->listen_port = port;
}

struct vsock_conn *vsock_connect(struct vsock *v, uint32_t port, uint64_t timeout_us, bool *refused)
{
    *refused = false;
    struct vsock_conn *c = new_conn(v);
    if (!c) {
        diag("vsock: no free connection slot");
        return NULL;
    }
    c->state = VSOCK_CONNECTING;
    c->claimed = true;
    c->local_port = v->next_port++;
    c->peer_port = port;
    if (!send_op(v, c, VSOCK_OP_REQUEST, 0)) {
        c->state = VSOCK_FREE;
        return NULL;
    }
    uint64_t start = time_us();
    while (c->state == VSOCK_CONNECTING && time_us() - start < timeout_us) {
        if (!vsock_poll(v))
            cpu_relax();
    }
    if (c->state == VSOCK_OPEN)
        return c;
    *refused = c->refused;
    if (c->state == VSOCK_CONNECTING)
        send_op(v, c, VSOCK_OP_RST, 0);
    c->state = VSOCK_FREE;
    return NULL;
}

void vsock_claim(struct vsock_conn *c)
{
    c->claimed = true;
}

bool vsock_write(struct vsock *v, struct vsock_conn *c, const void *data, uint32_t len)
{
    const uint8_t *p = data;
    uint64_t start = time_us();
    while (len) {
        if (c->state != VSOCK_OPEN)
            return false;
        uint32_t credit = c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt);
        if (c->tx_cnt - c->peer_fwd_cnt >= c->peer_buf_alloc)
            credit = 0;
        uint32_t n = len < credit ? len : credit;
        if (n > VSOCK_MAX_WRITE)
            n = VSOCK_MAX_WRITE;
        if (!n) {
            if (time_us() - start > 2000000) {
                diag("vsock: no credit from the peer for 2 s");
                return false;
            }
            vsock_poll(v);
            continue;
        }
        struct vsock_hdr h = {.src_port = c->local_port,
                              .dst_port = c->peer_port,
                              .op = VSOCK_OP_RW,
                              .fwd_cnt = c->fwd_cnt};
        if (!vsock_send(v, &h, p, n)) {
            if (time_us() - start > 2000000)
                return false;
            vsock_poll(v);
            continue;
        }
        c->fwd_cnt_sent = c->fwd_cnt;
        c->tx_cnt += n;
        p += n;
        len -= n;
    }
    return true;
}

int32_t vsock_read(struct vsock *v, struct vsock_conn *c, void *buf, uint32_t size,
                   uint64_t timeout_us)
{
    uint64_t start = time_us();
    while (!c->len) {
        if (c->state != VSOCK_OPEN || c->peer_shut_send)
            return 0;
        if (time_us() - start > timeout_us)
            return -1;
        if (!vsock_poll(v))
            cpu_relax();
    }
    uint32_t n = c->len < size ? c->len : size;
    memcpy(buf, c->data, n);
    memmove(c->data, c->data + n, c->len - n);
    c->len -= n;
    c->fwd_cnt += n;
    /* Tell the peer about the room once half the buffer was freed since the last word. */
    if (c->state == VSOCK_OPEN && c->fwd_cnt - c->fwd_cnt_sent >= VSOCK_CONN_BUF / 2)
        send_op(v, c, VSOCK_OP_CREDIT_UPDATE, 0);
    return (int32_t)n;
}

void vsock_close(struct vsock *v, struct vsock_conn *c)
{
    if (c->state == VSOCK_OPEN || c->state == VSOCK_CONNECTING)
        send_op(v, c, VSOCK_OP_RST, 0);
    memset(c, 0, sizeof(*c));
}
