/* Where a virtio-net device's frames go on the host. Each backend moves
 * whole frames; `vnet_hdr` says whether they carry the 12-byte virtio-net
 * header (a tap does, offloads included) or are bare Ethernet frames. */
#ifndef EMBER_BACKENDS_NET_H
#define EMBER_BACKENDS_NET_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct net_backend;

struct net_frame {
    const struct iovec *iov;
    int cnt;
};

struct net_backend_ops {
    /* One frame into iov; returns its length, -EAGAIN when none waits. */
    ssize_t (*recv)(struct net_backend *be, const struct iovec *iov, int n);
    /* One frame from iov; -EAGAIN when the host side is full. */
    ssize_t (*send)(struct net_backend *be, const struct iovec *iov, int n);
    /* Optional: n frames in one go, each as send would, in order; res[i] is frame i's
     * result. Frames after one refused with -EAGAIN may have gone: a backend offers this
     * only where the host side cannot be full. */
    void (*send_batch)(struct net_backend *be, const struct net_frame *f, unsigned n, ssize_t *res);
    /* Tells the host which offloaded frames the guest accepts (TUN_F_*). */
    int (*set_offloads)(struct net_backend *be, unsigned tun_flags);
    void (*close)(struct net_backend *be);
};

struct net_backend {
    const struct net_backend_ops *ops;
    const char *kind; /* "tap", "user" */
    bool vnet_hdr;
    bool offloads;           /* can take TUN_F_* offloads */
    int rx_fd;               /* readable: frames for the guest */
    int tx_fd;               /* signals room again after -EAGAIN */
    uint32_t tx_wait_events; /* what to wait for on tx_fd (EPOLLOUT, EPOLLIN) */
    void *priv;
};

/* A tap device (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), created or attached. With sndbuf, the
 * bytes of frames written and not yet gone from the host are limited to it (TUNSETSNDBUF):
 * a slow path on the host then pushes back on the guest instead of queueing. */
int net_tap_open(struct net_backend *be, const char *ifname, uint64_t sndbuf);
/* Its first step alone: the descriptor of tap ifname (created if missing and allowed),
 * or -1 saying why, so that the API's PUT /network-interfaces fails where it should. */
int net_tap_attach(const char *ifname);
/* The rest, on fd from net_tap_attach, which the backend owns from here (closed on
 * failure too). */
int net_tap_open_fd(struct net_backend *be, const char *ifname, int fd, uint64_t sndbuf);

/* Frames the kernel dropped on their way to the tap's reader (the guest), because the
 * reader did not keep up: the tap's tx_dropped in sysfs. -1 when it cannot be read. */
int net_tap_host_drops(const char *ifname, uint64_t *drops);

struct slirp_forward {
    bool udp;
    uint32_t host_addr; /* network order; 0 = any */
    uint16_t host_port, guest_port;
};

/* User-mode networking (libslirp): 10.0.2.0/24, the guest at 10.0.2.15,
 * the host at 10.0.2.2 (its loopback reachable), DNS at 10.0.2.3, DHCP. */
int net_user_open(struct net_backend *be, const struct slirp_forward *fwd, unsigned nfwd);

#endif
