#include "virtio/vhost_user_net.h"

#include "util/error.h"
#include "virtio/net_features.h"

#include <string.h>
#include <sys/random.h>

/* What ember passes on from a back-end: the offloads and mergeable receive buffers (the data
 * path's business alone). Not CTRL_VQ (nor what needs it: CTRL_RX, GUEST_ANNOUNCE, MQ's
 * steering): ember would have to serve a control queue and tell the back-end; not MQ (one
 * queue pair); not MTU (the configuration space is ember's and names none); not packed rings,
 * IN_ORDER or ACCESS_PLATFORM (as for vhost-user-blk: where a lost back-end stopped must be an
 * index, no IOMMU). */
#define SUPPORTED_FEATURES                                                                         \
    ((1ULL << VIRTIO_NET_F_CSUM) | (1ULL << VIRTIO_NET_F_GUEST_CSUM) |                             \
     (1ULL << VIRTIO_NET_F_GUEST_TSO4) | (1ULL << VIRTIO_NET_F_GUEST_TSO6) |                       \
     (1ULL << VIRTIO_NET_F_GUEST_ECN) | (1ULL << VIRTIO_NET_F_GUEST_UFO) |                         \
     (1ULL << VIRTIO_NET_F_HOST_TSO4) | (1ULL << VIRTIO_NET_F_HOST_TSO6) |                         \
     (1ULL << VIRTIO_NET_F_HOST_ECN) | (1ULL << VIRTIO_NET_F_HOST_UFO) |                           \
     (1ULL << VIRTIO_NET_F_MRG_RXBUF) | (1ULL << VIRTIO_F_INDIRECT_DESC) |                         \
     (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_VERSION_1))
/* What ember's configuration space serves. */
#define EMULATED_FEATURES ((1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS))

#define VUN_QUEUE_SIZE 256
#define VUN_QUEUES     2 /* receive, transmit */

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct vhost_user_dev *v = d->opaque;
    struct vhost_user_net *n = v->model;
    memcpy(data, n->config + offset, len);
}

/* The frames past each ring's used index when a back-end went away without an inflight
 * buffer: nothing to fail. Receive buffers are simply offered to the next back-end again;
 * frames to send may be sent once more by it (a network may duplicate a frame, and the
 * guest's stack copes), which loses none. [io] */
static int keep_frames(struct vhost_user_dev *v, unsigned q)
{
    (void)v;
    (void)q;
    return 0;
}

int vhost_user_net_init(struct vhost_user_net *n, const char *name,
                        const struct vhost_user_net_options *opts, const struct guest_memory *mem)
{
    memset(n, 0, sizeof(*n));
    /* Refused before connecting is destroyed as connected: no descriptors yet. */
    n->vud.vu.fd = -1;
    n->vud.listener.fd = -1;
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++)
        n->vud.calls[i].fd = -1;
    n->vud.timer_fd = -1;
    n->vud.inflight.fd = -1;
    n->opts = *opts;
    if (!opts->socket || !*opts->socket)
        return error_set("%s: no vhost-user socket", name);
    uint8_t mac[6];
    if (opts->has_mac) {
        memcpy(mac, opts->mac, 6);
        if (mac[0] & 1)
            return error_set("%s: the MAC address is a multicast one", name);
    } else {
        /* Random, locally administered, unicast (as ember's other network devices). */
        if (getrandom(mac, 6, 0) != 6)
            return error_errno("%s: getrandom", name);
        mac[0] = (uint8_t)((mac[0] & 0xfe) | 0x02);
        memcpy(n->opts.mac, mac, 6);
    }
    uint16_t status = VIRTIO_NET_S_LINK_UP, pairs = 1;
    memcpy(n->config, mac, 6);
    memcpy(n->config + 6, &status, 2);
    memcpy(n->config + 8, &pairs, 2);

    /* Not BACKEND_REQ: the configuration space is ember's, a back-end has nothing to say
     * about it. */
    uint64_t wanted = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
    int r = opts->server ? vhost_user_dev_listen(&n->vud, name, opts->socket, mem, wanted,
                                                 VHOST_USER_NET_ACCEPT_WAIT_S * 1000)
                         : vhost_user_dev_connect(&n->vud, name, opts->socket, mem, wanted);
    if (r < 0)
        return -1;
    n->vud.emulated_features = EMULATED_FEATURES;
    n->vud.fail_requests = keep_frames;
    vhost_user_dev_set_reconnect(&n->vud, opts->reconnect_s);
    uint64_t offered = (n->vud.backend_features & SUPPORTED_FEATURES) | EMULATED_FEATURES;
    return vhost_user_dev_init(&n->vud, name, VIRTIO_ID_NET, offered, VUN_QUEUES, VUN_QUEUE_SIZE,
                               sizeof(n->config), read_config, n, mem);
}

void vhost_user_net_destroy(struct vhost_user_net *n)
{
    vhost_user_dev_destroy(&n->vud);
}
