#include "backends/net.h"

#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define VNET_HDR_LEN 12 /* struct virtio_net_hdr_v1, with num_buffers */

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
}

static const struct net_backend_ops tap_ops = {
    .recv = tap_recv,
    .send = tap_send,
    .set_offloads = tap_set_offloads,
    .close = tap_close,
};

int net_tap_open(struct net_backend *be, const char *ifname, uint64_t sndbuf)
{
    memset(be, 0, sizeof(*be));
    be->rx_fd = be->tx_fd = -1;
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
    return 0;
}
