/* virtio-net (virtio 1.2, 5.1) with one queue pair on a host backend: a
 * tap (virtio-net headers and offloads pass straight through) or user-mode
 * networking. Transmit never drops a valid frame: a full host side pushes
 * back on the guest. Malformed frames are dropped and counted. With MMDS on the
 * interface, frames for its address go to the MMDS stack (mmds/stack.h) instead of the
 * backend, and its answers come before the backend's frames. */
#ifndef EMBER_VIRTIO_NET_H
#define EMBER_VIRTIO_NET_H

#include "backends/net.h"
#include "backends/vhost_net.h"
#include "mmds/stack.h"
#include "util/ratelimit.h"
#include "virtio/device.h"
#include "virtio/poll_window.h"

#define VIRTIO_NET_HDR_LEN   12
#define VIRTIO_NET_MAX_FRAME 65550 /* a 64 KiB GSO frame and its Ethernet header */
#define NET_MAX_FORWARDS     8
#define NET_TX_BATCH         32 /* transmit frames handed to the backend at once */

enum vhost_mode { VHOST_AUTO, VHOST_OFF, VHOST_ON };

struct net_options {
    const char *id;  /* the API's iface_id, or NULL */
    const char *tap; /* tap interface name, or NULL */
    bool user;       /* user-mode networking instead */
    struct slirp_forward forwards[NET_MAX_FORWARDS];
    unsigned nforwards;
    uint8_t mac[6];
    bool has_mac;
    unsigned mtu;          /* 0: not announced (VIRTIO_NET_F_MTU off) */
    enum vhost_mode vhost; /* tap only: the kernel's data path */
    uint64_t sndbuf;       /* tap only: its send buffer (0: unlimited) */
    struct rate_limit_config rx_limit, tx_limit;
    /* After work, the I/O thread polls the rings this long (kicks off) before it sleeps; with
     * vhost-net, the kernel's busy polling of each ring (its VHOST_SET_VRING_BUSYLOOP_TIMEOUT).
     * 0: no polling. */
    unsigned poll_us;
    bool poll_adaptive; /* poll_us is the bound of an adaptive window (poll_window.h) */
    /* MMDS on this interface: frames to mmds_ipv4 (host order) are answered from this store
     * and never reach the backend. NULL: none. */
    struct mmds_store *mmds;
    uint32_t mmds_ipv4;
    /* A backend already open (tests): the device takes it over instead of opening one. */
    struct net_backend *backend;
    /* tap only: the tap's descriptor, attached already (net_tap_attach, the API's
     * PUT), which the device takes over */
    bool has_tap_fd;
    int tap_fd;
};

struct virtio_net;

struct virtio_net {
    struct virtio_dev dev;
    struct net_options opts;
    struct net_backend be;
    uint8_t config[12];
    struct virtq_chain rx_chains[64]; /* chains one merged frame may need */
    /* Transmit frames popped and checked but not yet taken by the host, oldest first, each
     * with the header ember checked (the one the host gets). */
    struct virtq_chain tx_chains[NET_TX_BATCH];
    uint8_t tx_hdrs[NET_TX_BATCH][VIRTIO_NET_HDR_LEN];
    unsigned tx_held;
    bool tx_throttled; /* the rate limiter's timer will call again */
    uint8_t *rx_buf;   /* one frame from the host, with its header */
    size_t rx_pending; /* bytes in rx_buf not yet given to the guest */
    bool rx_watching;  /* rx fd in the loop */
    bool rx_charged;   /* the rate limiter's tokens were taken for the frame in rx_buf */
    /* A frame waits in rx_buf and the ring had too few buffers for it: the guest's next ones
     * are awaited (kicked for, or looked for while polling). */
    bool rx_starved;
    /* Polling (user-space data path): kicks off while it polls, the I/O thread watches the
     * transmit ring, and the receive ring when a frame waits for buffers. */
    struct poll_window poll;
    struct event_handler *rx_handler, *tx_handler, *timer_handler;
    int timer_fd;
    struct vhost_net vhost;
    bool use_vhost; /* /dev/vhost-net opened */
    bool vhost_running;
    bool frozen;       /* a snapshot is being taken: nothing moves */
    bool vhost_paused; /* the kernel's data path stopped for it, to start again at thaw */
    struct vhost_call {
        struct virtio_net *net;
        unsigned queue;
        int fd; /* vhost signals it; ember raises the interrupt */
        struct event_handler *handler;
    } calls[2];
    struct token_bucket rx_bytes_tb, rx_ops_tb, tx_bytes_tb, tx_ops_tb;
    /* MMDS (opts.mmds): its network stack, a copy of the guest's frame it reads (guest memory
     * may change under it), and its retransmission timer. */
    struct mmds_stack *mmds;
    uint8_t *mmds_frame;
    int mmds_timer_fd;
    struct event_handler *mmds_timer_handler;
    bool mmds_detoured;   /* frames went to MMDS in this round of transmit */
    unsigned tx_consumed; /* frames of this round given back without reaching the host */
    /* Counters (iothread). */
    uint64_t rx_frames, rx_bytes, rx_dropped, tx_frames, tx_bytes, tx_dropped, tx_pushback;
    uint64_t tap_read_fails, tap_write_fails; /* the host refused a frame (also dropped) */
    uint64_t tx_malformed;                    /* frames the guest got wrong (also dropped) */
    uint64_t tx_spoofed_mac; /* frames whose source is not the configured guest_mac (sent) */
    uint64_t no_rx_buffers;  /* a frame waited: the guest had no receive buffers for it */
    uint64_t no_tx_frames;   /* a transmit round found no frame */
    uint64_t rx_limited, tx_limited;                 /* the rate limiter held a direction back */
    uint64_t rx_limiter_wakeups, tx_limiter_wakeups; /* its timer fired */
    uint64_t rx_host_events;                         /* the host side became readable */
    uint64_t tx_frozen_drops; /* frames the host had no room for when a snapshot was taken */
    uint64_t poll_hits;       /* polling found frames to send or receive buffers */
    uint64_t poll_races;      /* ... right after kicks were asked for again */
    struct log_limit log_drop, log_host; /* malformed or refused frames; host-side trouble */
};

int virtio_net_init(struct virtio_net *n, const char *name, const struct net_options *opts,
                    const struct guest_memory *mem);
void virtio_net_destroy(struct virtio_net *n);
/* New rate limits for a running device (NULL: that direction unchanged); from any thread. */
int virtio_net_change_limits(struct virtio_net *n, const struct rate_limit_config *rx,
                             const struct rate_limit_config *tx);

#endif
