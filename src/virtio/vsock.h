/* virtio-vsock (virtio 1.2, 5.10): stream sockets between the guest and
 * host programs, served over unix sockets the way Firecracker does it.
 *
 *   guest connects to (CID 2, port P)  -> ember connects to unix socket PATH_P
 *   host connects to unix socket PATH, -> ember asks the guest for port P and
 *   writes "CONNECT P\n"                  answers "OK <host port>\n" once the
 *                                         guest accepted (or closes)
 *
 * Flow control is the spec's credit scheme in both directions: ember never
 * sends the guest more than the guest's buf_alloc allows, stops reading a
 * host socket while the guest has no credit or no receive buffers, and
 * buffers at most its own buf_alloc per connection of what the guest sent
 * and the host program has not read yet. Stream bytes are never dropped.
 * Hostile guest input is dropped or answered with RST, and counted. */
#ifndef EMBER_VIRTIO_VSOCK_H
#define EMBER_VIRTIO_VSOCK_H

#include "virtio/device.h"
#include "virtio/poll_window.h"

#include <stdint.h>

#define VSOCK_HOST_CID   2
#define VSOCK_HDR_LEN    44
#define VSOCK_MAX_PKT    (64u << 10)  /* largest payload accepted from the guest */
#define VSOCK_CONN_BUF   (256u << 10) /* buf_alloc ember advertises per connection */
#define VSOCK_MAX_CONNS  256
#define VSOCK_CTRL_QUEUE 128 /* RSTs waiting for a receive buffer */

#define VSOCK_OP_INVALID        0
#define VSOCK_OP_REQUEST        1
#define VSOCK_OP_RESPONSE       2
#define VSOCK_OP_RST            3
#define VSOCK_OP_SHUTDOWN       4
#define VSOCK_OP_RW             5
#define VSOCK_OP_CREDIT_UPDATE  6
#define VSOCK_OP_CREDIT_REQUEST 7

#define VSOCK_TYPE_STREAM 1

/* The event queue's one event (5.10.6.7): the driver drops every connection and reads the
 * guest CID again. Sent when a snapshot is taken (connections do not survive one). */
#define VIRTIO_VSOCK_EVENT_TRANSPORT_RESET 0

#define VSOCK_SHUTDOWN_RCV  1
#define VSOCK_SHUTDOWN_SEND 2

/* The packet header, little-endian on the wire (x86 hosts only). */
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

_Static_assert(sizeof(struct vsock_hdr) == VSOCK_HDR_LEN, "virtio_vsock_hdr is 44 bytes");

/* What to do with a packet from the guest, judged from its header alone. */
enum vsock_verdict {
    VSOCK_ACCEPT,    /* well formed: handle it */
    VSOCK_DROP,      /* malformed or not addressed from this guest: ignore */
    VSOCK_REPLY_RST, /* well formed enough to answer: refuse with RST */
};

/* Checks a header against the rules of 5.10.6; payload_len is what the
 * chain carries after the header. *why names the problem. */
enum vsock_verdict vsock_check_packet(const struct vsock_hdr *h, uint64_t payload_len,
                                      uint64_t guest_cid, const char **why);

struct vsock_conn;

struct virtio_vsock {
    struct virtio_dev dev;
    uint64_t guest_cid;
    char *uds_path;
    int listen_fd;
    bool keep_path; /* uds_path is another process's too: not removed at the end */
    struct event_handler *listen_handler;
    int timer_fd;
    struct event_handler *timer_handler;
    bool timer_armed;
    struct virtq_chain rx_chain, tx_chain, ev_chain;
    bool frozen; /* a snapshot is being taken: nothing moves */
    /* Set after init, before the driver starts the device: after work, the I/O thread polls
     * the transmit ring (and the receive ring while packets wait for buffers) for at most
     * poll_us, kicks off, before it sleeps; adaptive: the bound of an adaptive window
     * (poll_window.h). 0: no polling. */
    unsigned poll_us;
    bool poll_adaptive;
    struct poll_window poll;
    bool rx_starved; /* packets wait for the guest's receive buffers */
    /* A TRANSPORT_RESET is in the event queue's used ring and the driver has not given the
     * buffer back (its kick of the event queue): nothing goes to the guest meanwhile, or it
     * could take a new connection's packets as old ones and reset them too. */
    bool reset_unacked;
    /* Connections: every one in a list, the addressed ones in a hash. */
    struct vsock_conn *conns;
    struct vsock_conn *hash[64];
    unsigned nconns;
    uint32_t next_host_port;
    /* Connections with something for the guest, in order. */
    struct vsock_conn *pend_head, *pend_tail;
    /* RSTs for the guest (headers, ready to send). */
    struct vsock_hdr ctrl[VSOCK_CTRL_QUEUE];
    unsigned ctrl_head, ctrl_len;
    /* Counters (iothread). */
    uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
    uint64_t conns_opened, conns_refused, rsts_sent, rsts_dropped;
    uint64_t bad_packets, credit_violations, unknown_conn_packets;
    uint64_t conns_removed, conns_timed_out; /* closed for any reason; of those, by a deadline */
    /* The host program's socket failed: buffered bytes, bytes written directly, a read. */
    uint64_t flush_fails, write_fails, read_fails;
    /* TRANSPORT_RESET events sent; not sent for want of an event buffer. */
    uint64_t resets_sent, reset_fails;
    /* Polling found packets or receive buffers; of those, right after kicks were asked for
     * again. */
    uint64_t poll_hits, poll_races;
    struct log_limit log_bad, log_host; /* refused guest packets; host-side trouble */
};

/* guest_cid: any 32-bit value (--vsock asks for 3..0xfffffffe); uds_path: the host's unix
 * socket (created). */
/* The same with uds_path bound and listening already on listen_fd (-1: bind it now), which
 * the device owns from here (closed on failure too). */
int virtio_vsock_init_listening(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path,
                                int listen_fd, const struct guest_memory *mem);
int virtio_vsock_init(struct virtio_vsock *v, uint64_t guest_cid, const char *uds_path,
                      const struct guest_memory *mem);
void virtio_vsock_destroy(struct virtio_vsock *v);

#endif
