#include "backends/net.h"

#include "util/error.h"
#include "util/log.h"
#include "util/uring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <liburing.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VNET_HDR_LEN 12 /* struct virtio_net_hdr_v1, with num_buffers */
#define RING_ENTRIES 32

/* A write costs a system call per frame, and the call's own work is much of a small frame's
 * cost: an io_uring takes a batch of writes in one. */
struct tap_ring {
    struct io_uring ring;
    bool broken; /* a submission failed: writev from then on */
};

static ssize_t tap_recv(struct net_backend *be, const struct iovec *iov, int n)
{
    ssize_t r = readv(be->rx_fd, iov, n);
    return r < 0 ? -errno : r;
}

static ssize_t tap_send(struct net_backend *be, const struct iovec *iov, int n)
{
    ssize_t r = writev(be->tx_fd, iov, n);
    return r < 0 ? -errno : r;
}

static void tap_send_batch(struct net_backend *be, const struct net_frame *f, unsigned n,
                           ssize_t *res)
{
    struct tap_ring *t = be->priv;
    unsigned i = 0;
    while (i < n && !t->broken) {
        unsigned k = 0;
        for (; i + k < n; k++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
            if (!sqe)
                break;
            /* O_NONBLOCK makes a full tap -EAGAIN, not a wait. Not a registered file: the
             * kernel releases those when it tears the ring down, after ember has gone, and
             * the tap would stay busy for a while for the next process to attach it. */
            io_uring_prep_writev(sqe, be->tx_fd, f[i + k].iov, (unsigned)f[i + k].cnt, 0);
            io_uring_sqe_set_data64(sqe, i + k);
        }
        int submitted = io_uring_submit_and_wait(&t->ring, k);
        if (submitted < 0 || (unsigned)submitted < k) {
            /* Entries left in the ring would go out with a later submission, after the
             * frames written meanwhile: never use the ring again. */
            log_warn("tap: io_uring submission failed (%s); writing frames one by one",
                     strerror(submitted < 0 ? -submitted : EIO));
            t->broken = true;
        }
        for (unsigned got = 0; submitted > 0 && got < (unsigned)submitted;) {
            struct io_uring_cqe *cqe;
            int r = io_uring_wait_cqe(&t->ring, &cqe);
            if (r == -EINTR)
                continue;
            if (r < 0) {
                /* Completions cannot be reaped: nothing more is known of these frames. */
                log_error("tap: io_uring completions lost (%s)", strerror(-r));
                for (unsigned j = i; j < i + (unsigned)submitted; j++)
                    res[j] = -EIO;
                t->broken = true;
                break;
            }
            uint64_t at = io_uring_cqe_get_data64(cqe);
            if (at < n)
                res[at] = cqe->res;
            io_uring_cqe_seen(&t->ring, cqe);
            got++;
        }
        i += submitted > 0 ? (unsigned)submitted : 0;
    }
    for (; i < n; i++)
        res[i] = tap_send(be, f[i].iov, f[i].cnt);
}

static int tap_set_offloads(struct net_backend *be, unsigned flags)
{
    if (ioctl(be->rx_fd, TUNSETOFFLOAD, (unsigned long)flags) == 0)
        return 0;
    /* Older or newer kernels refuse some flags (UFO): try without. */
    if (ioctl(be->rx_fd, TUNSETOFFLOAD, (unsigned long)(flags & ~TUN_F_UFO)) == 0)
        return 0;
    return error_errno("TUNSETOFFLOAD 0x%x", flags);
}

static void tap_close(struct net_backend *be)
{
    if (be->rx_fd >= 0)
        close(be->rx_fd);
    if (be->tx_fd >= 0)
        close(be->tx_fd);
    be->rx_fd = be->tx_fd = -1;
    struct tap_ring *t = be->priv;
    if (t) {
        io_uring_queue_exit(&t->ring);
        free(t);
    }
    be->priv = NULL;
}

static const struct net_backend_ops tap_ops = {
    .recv = tap_recv,
    .send = tap_send,
    .set_offloads = tap_set_offloads,
    .close = tap_close,
};

static const struct net_backend_ops tap_batch_ops = {
    .recv = tap_recv,
    .send = tap_send,
    .send_batch = tap_send_batch,
    .set_offloads = tap_set_offloads,
    .close = tap_close,
};

/* A ring for batched writes, only while the tap's send buffer is unbounded: a bounded one
 * refuses frames when full, and a refused frame must not be overtaken by the frames after
 * it, which a batch would already have written. */
static void tap_open_ring(struct net_backend *be, const char *ifname)
{
    struct tap_ring *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    static const uint8_t ops[] = {IORING_OP_WRITEV};
    int r = uring_init_restricted(&t->ring, RING_ENTRIES, ops, 1, -1);
    if (r < 0) {
        log_info("tap %s: no io_uring (%s); frames are written one by one", ifname, strerror(-r));
        free(t);
        return;
    }
    be->priv = t;
    be->ops = &tap_batch_ops;
}

int net_tap_host_drops(const char *ifname, uint64_t *drops)
{
    char path[96];
    snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/tx_dropped", ifname);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    unsigned long long v;
    int ok = fscanf(f, "%llu", &v) == 1;
    fclose(f);
    if (!ok)
        return -1;
    *drops = v;
    return 0;
}

int net_tap_attach(const char *ifname)
{
    if (strlen(ifname) >= IFNAMSIZ)
        return error_set("tap name '%s' is longer than %d characters", ifname, IFNAMSIZ - 1);
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return error_errno("cannot open /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    memcpy(ifr.ifr_name, ifname, strlen(ifname));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        if (e == EPERM)
            return error_set("cannot attach tap '%s': permission denied (create it for this "
                             "user with `ip tuntap add %s mode tap user $USER`, or run as root)",
                             ifname, ifname);
        if (e == EBUSY)
            return error_set("tap '%s' is in use by another process", ifname);
        return error_errno("cannot attach tap '%s'", ifname);
    }
    return fd;
}

int net_tap_open(struct net_backend *be, const char *ifname, uint64_t sndbuf)
{
    int fd = net_tap_attach(ifname);
    return fd < 0 ? -1 : net_tap_open_fd(be, ifname, fd, sndbuf);
}

int net_tap_open_fd(struct net_backend *be, const char *ifname, int fd, uint64_t sndbuf)
{
    memset(be, 0, sizeof(*be));
    be->rx_fd = be->tx_fd = -1;
    int hdr = VNET_HDR_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) {
        close(fd);
        return error_errno("tap '%s': TUNSETVNETHDRSZ", ifname);
    }
    if (sndbuf) {
        int bytes = sndbuf > INT_MAX ? INT_MAX : (int)sndbuf;
        if (ioctl(fd, TUNSETSNDBUF, &bytes) < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return error_errno("tap '%s': TUNSETSNDBUF %d", ifname, bytes);
        }
    }
    /* No offloads until the guest says which frames it can take. */
    ioctl(fd, TUNSETOFFLOAD, 0UL);
    /* Transmit waits for room (EPOLLOUT) in the same event loop that watches the tap for
     * frames (EPOLLIN); epoll takes one registration per descriptor, so it gets its own. */
    int tx_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (tx_fd < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return error_errno("tap '%s': dup", ifname);
    }
    be->ops = &tap_ops;
    be->kind = "tap";
    be->vnet_hdr = true;
    be->offloads = true;
    be->rx_fd = fd;
    be->tx_fd = tx_fd;
    be->tx_wait_events = EPOLLOUT;
    if (!sndbuf)
        tap_open_ring(be, ifname);
    return 0;
}
