/*
 * virtio-vsock (virtio 1.2, 5.10) on top of lib/virtio.h: stream connections to and from the
 * host (CID 2), with the specification's credit accounting in both directions.
 *
 * Small on purpose: a handful of connections, payloads of one receive buffer, everything
 * polled. vsock_poll() handles every packet the device has used: it answers REQUESTs for the
 * port given to vsock_listen() (others get an RST), keeps each connection's credit, and
 * collects stream bytes in the connection until the caller reads them. CPL0 only.
 */
#ifndef GUEST_VSOCK_H
#define GUEST_VSOCK_H

#include "virtio.h"

#define VIRTIO_ID_VSOCK 19

#define VSOCK_RXQ 0
#define VSOCK_TXQ 1
#define VSOCK_EVQ 2

#define VSOCK_HOST_CID 2
#define VSOCK_HDR_LEN  44

#define VSOCK_OP_REQUEST        1
#define VSOCK_OP_RESPONSE       2
#define VSOCK_OP_RST            3
#define VSOCK_OP_SHUTDOWN       4
#define VSOCK_OP_RW             5
#define VSOCK_OP_CREDIT_UPDATE  6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_TYPE_STREAM       1
#define VSOCK_SHUTDOWN_RCV      1
#define VSOCK_SHUTDOWN_SEND     2

#define VSOCK_RX_BUF    4096 /* bytes per receive buffer: a header and up to 4052 payload bytes */
#define VSOCK_RX_BUFS   32
#define VSOCK_CONN_BUF  4096 /* buf_alloc advertised, and what a connection holds unread */
#define VSOCK_CONNS     8
#define VSOCK_TX_SLOT   512 /* a header and up to 468 payload bytes per packet sent */
#define VSOCK_MAX_WRITE (VSOCK_TX_SLOT - VSOCK_HDR_LEN)

struct vsock_hdr {
    uint64_t src_cid;
    uint64_t dst_cid;
    uint32_t src_port;
    uint32_t dst_port;
    uint32_t len;
    uint16_t type;
    uint16_t op;
    uint32_t flags;
    uint32_t buf_alloc;
    uint32_t fwd_cnt;
} __attribute__((packed));

enum vsock_state {
    VSOCK_FREE,
    VSOCK_CONNECTING, /* REQUEST sent, RESPONSE due */
    VSOCK_OPEN,
    VSOCK_CLOSED, /* reset by the peer (or refused), or shut down both ways */
};

struct vsock_conn {
    enum vsock_state state;
    bool claimed; /* handed to the caller (vsock_connect, vsock_claim): freed by vsock_close */
    bool refused; /* an RST answered our REQUEST */
    bool peer_shut_send;
    uint32_t local_port, peer_port;
    uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt; /* the peer's window and what we sent */
    uint32_t fwd_cnt, fwd_cnt_sent;                /* bytes the caller took, last advertised */
    uint32_t len;                                  /* unread bytes in data */
    uint8_t data[VSOCK_CONN_BUF];
};

struct vsock {
    struct virtio_device *dev;
    uint64_t cid;
    struct virtq *rxq, *txq, *evq; /* NULL: that queue is not set up */
    uint8_t *rx_mem, *ev_mem, *tx_mem;
    uint16_t *tx_free;
    unsigned tx_slots, tx_nfree;
    struct vsock_conn *conns; /* VSOCK_CONNS */
    uint32_t listen_port;     /* 0: refuse every REQUEST */
    uint32_t next_port;
    uint64_t rx_packets, tx_packets, requests_refused, rsts_received, events;
    uint64_t bad_packets; /* received packets that break a rule (diagnosed) */
};

/* Resets the device, negotiates VERSION_1 (and EVENT_IDX, INDIRECT_DESC if offered), sets up
 * all three queues, goes live and posts every buffer. The queues are polled; configuration
 * interrupts count in d->config_irqs. False, with a diagnostic, on failure. */
bool vsock_open(struct vsock *v, struct virtio_device *d);
/* For a device the caller has set up itself (virtio_begin, some queues, DRIVER_OK): forgets
 * every connection, posts receive and event buffers on the queues that are set up, and sends
 * on the transmit queue if that one is. */
void vsock_attach(struct vsock *v, struct virtio_device *d);

/* One packet: h as given (src_cid, dst_cid, type and credit filled in when left 0), payload
 * copied after it. False when there is no transmit queue or no room. Kicks. */
bool vsock_send(struct vsock *v, const struct vsock_hdr *h, const void *payload, uint32_t len);
/* Takes back the transmit buffers the device has used; returns how many. */
unsigned vsock_tx_reclaim(struct vsock *v);
/* Handles every packet and event the device has used; returns how many packets. */
unsigned vsock_poll(struct vsock *v);

/* REQUESTs for port are answered from now on (0: none). */
void vsock_listen(struct vsock *v, uint32_t port);
/* Connects to the host's port: the connection, or NULL (*refused: the host answered with RST;
 * else no answer within timeout_us). */
struct vsock_conn *vsock_connect(struct vsock *v, uint32_t port, uint64_t timeout_us,
                                 bool *refused);
/* Takes over an open connection the listener accepted, for the caller to read and write. */
void vsock_claim(struct vsock_conn *c);
bool vsock_write(struct vsock *v, struct vsock_conn *c, const void *data, uint32_t len);
/* Waits up to timeout_us for bytes: copies up to size, returns the count; 0 when the peer
 * shut its sending side (or reset) with nothing left; -1 on timeout. */
int32_t vsock_read(struct vsock *v, struct vsock_conn *c, void *buf, uint32_t size,
                   uint64_t timeout_us);
/* Sends an RST (if the connection is still up) and frees the slot. */
void vsock_close(struct vsock *v, struct vsock_conn *c);

#endif
