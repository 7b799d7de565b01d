#include "net_pair.h"

#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct pair_priv {
    bool refuse_offloads;
};

static ssize_t pair_recv(struct net_backend *be, const struct iovec *iov, int n)
{
    /* MSG_TRUNC: the length of a frame larger than the buffer, as the device must see it. */
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t r = recvmsg(be->rx_fd, &m, MSG_DONTWAIT | MSG_TRUNC);
    return r < 0 ? -errno : r;
}

static ssize_t pair_send(struct net_backend *be, const struct iovec *iov, int n)
{
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t r = sendmsg(be->tx_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    return r < 0 ? -errno : r;
}

/* In order, and nothing after a frame refused for want of room (the contract of send_batch). */
static void pair_send_batch(struct net_backend *be, const struct net_frame *f, unsigned n,
                            ssize_t *res)
{
    unsigned i = 0;
    for (; i < n; i++) {
        res[i] = pair_send(be, f[i].iov, f[i].cnt);
        if (res[i] == -EAGAIN)
            break;
    }
    for (; i < n; i++)
        res[i] = -EAGAIN;
}

static int pair_set_offloads(struct net_backend *be, unsigned flags)
{
    const struct pair_priv *p = be->priv;
    if (p->refuse_offloads)
        return error_set("offloads 0x%x refused", flags);
    return 0;
}

static void pair_close(struct net_backend *be)
{
    if (be->rx_fd >= 0)
        close(be->rx_fd);
    if (be->tx_fd >= 0)
        close(be->tx_fd);
    be->rx_fd = be->tx_fd = -1;
    free(be->priv);
    be->priv = NULL;
}

static const struct net_backend_ops pair_ops = {
    .recv = pair_recv,
    .send = pair_send,
    .set_offloads = pair_set_offloads,
    .close = pair_close,
};

static const struct net_backend_ops pair_batch_ops = {
    .recv = pair_recv,
    .send = pair_send,
    .send_batch = pair_send_batch,
    .set_offloads = pair_set_offloads,
    .close = pair_close,
};

int net_pair_open(struct net_backend *be, const struct net_pair_options *o, int *host_fd)
{
    *be = (struct net_backend){.rx_fd = -1, .tx_fd = -1};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return error_errno("socketpair");
    if (o->sndbuf)
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &o->sndbuf, sizeof(o->sndbuf));
    /* epoll takes one registration per descriptor: transmit waits on a second one. */
    int tx = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
    struct pair_priv *p = calloc(1, sizeof(*p));
    if (tx < 0 || !p) {
        if (tx >= 0)
            close(tx);
        close(sv[0]);
        close(sv[1]);
        free(p);
        return error_set("net pair: out of resources");
    }
    p->refuse_offloads = o->refuse_offloads;
    be->ops = o->batch ? &pair_batch_ops : &pair_ops;
    be->kind = "pair";
    be->vnet_hdr = o->vnet_hdr;
    be->offloads = o->offloads;
    be->rx_fd = sv[0];
    be->tx_fd = tx;
    be->tx_wait_events = EPOLLOUT;
    be->priv = p;
    *host_fd = sv[1];
    return 0;
}
