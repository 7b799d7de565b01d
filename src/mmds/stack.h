/* The MMDS network stack of one virtio-net interface: the frames the guest sends to the MMDS
 * address are handed here instead of to the host (mmds_stack_claims, mmds_stack_receive), and
 * what MMDS sends back is taken from here before anything from the host
 * (mmds_stack_next_frame). It answers ARP for the address and serves HTTP (mmds/http.h) over
 * a small TCP of its own on IPv4: passive open, in-order data (out-of-order and duplicate
 * segments are acknowledged and dropped, the guest sends them again), the peer's window
 * (zero-window probes included), retransmission on a timer with backoff and after three
 * duplicate ACKs, FIN and RST. Everything is bounded: MMDS_MAX_CONNS connections (the idlest
 * makes room for a new one), a request buffer each, one answer at a time each, a fixed queue
 * of RSTs. Malformed frames are counted in the store's metrics and dropped. One thread (the
 * device's I/O thread) drives a stack; times are CLOCK_MONOTONIC milliseconds passed in. */
#ifndef EMBER_MMDS_STACK_H
#define EMBER_MMDS_STACK_H

#include "mmds/store.h"
#include "util/log.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MMDS_MAX_CONNS   30   /* as Firecracker's */
#define MMDS_RX_BUF      4096 /* one request, head and body, at most */
#define MMDS_MAX_RSTS    32   /* RSTs waiting to be sent; more are dropped */
#define MMDS_MSS         1460
#define MMDS_MAX_FRAME   (14 + 20 + 24 + MMDS_MSS) /* the largest frame MMDS sends */
#define MMDS_PORT        80
#define MMDS_RTO_MS      250 /* first retransmission; doubles up to MMDS_RTO_MAX_MS */
#define MMDS_RTO_MAX_MS  4000
#define MMDS_MAX_RETRIES 8 /* then the connection is reset */

struct mmds_conn;

struct mmds_rst {
    uint32_t ip;
    uint16_t port;
    uint32_t seq, ack;
    bool with_ack;
};

struct mmds_stack {
    struct mmds_store *store;
    uint32_t ip;          /* MMDS's address, host order */
    uint8_t mac[6];       /* MMDS's MAC address */
    uint8_t guest_mac[6]; /* where answers go: the source of the last frame taken */
    bool arp_pending;     /* an ARP request to answer */
    uint8_t arp_mac[6];   /* its sender */
    uint32_t arp_ip;
    struct mmds_conn *conns; /* MMDS_MAX_CONNS */
    unsigned next_conn;      /* where the next round of sending starts */
    struct mmds_rst rsts[MMDS_MAX_RSTS];
    unsigned nrsts;
    uint32_t iss_seed; /* initial sequence numbers: seed plus a counter */
    uint32_t iss_count;
    uint16_t ip_id;
    const char *name; /* the device's, in log lines */
    struct log_limit log_bad;
};

/* A stack answering at ip (host order) from store; iss_seed varies the initial sequence
 * numbers. Allocates its connections now (no allocation but answers' buffers afterwards). */
int mmds_stack_init(struct mmds_stack *st, struct mmds_store *store, uint32_t ip, uint32_t iss_seed,
                    const char *name);
void mmds_stack_destroy(struct mmds_stack *st);
/* Forgets every connection and pending frame (the device was reset). */
void mmds_stack_reset(struct mmds_stack *st);

/* Whether a frame the guest sends is for MMDS (an ARP request for its address, or IPv4 to
 * it): such frames go to mmds_stack_receive and never to the host. Looks at len bytes of f. */
bool mmds_stack_claims(const struct mmds_stack *st, const uint8_t *f, size_t len);
/* Takes a claimed frame. csum_partial: the guest left the TCP checksum to the device
 * (VIRTIO_NET_HDR_F_NEEDS_CSUM), so it is not checked. */
void mmds_stack_receive(struct mmds_stack *st, const uint8_t *f, size_t len, bool csum_partial,
                        uint64_t now_ms);
/* The next frame MMDS sends, written to buf (at least MMDS_MAX_FRAME bytes): its length, or 0
 * when there is none now. */
size_t mmds_stack_next_frame(struct mmds_stack *st, uint8_t *buf, size_t cap, uint64_t now_ms);
/* Runs the timers that are due (a retransmission or a probe scheduled, a connection given up),
 * each then due again later or not at all, whether or not the guest takes frames now. */
void mmds_stack_run_timers(struct mmds_stack *st, uint64_t now_ms);
/* The earliest time a timer (retransmission, window probe) needs the stack: 0 when none. */
uint64_t mmds_stack_next_deadline(const struct mmds_stack *st);
/* Connections open now. */
unsigned mmds_stack_connections(const struct mmds_stack *st);

#endif
