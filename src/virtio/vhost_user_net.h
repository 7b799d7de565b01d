/* vhost-user-net: a virtio-net device whose data path is a back-end process (a DPDK
 * application with a vhost PMD port, a software switch), on the common vhost-user device
 * layer (vhost_user_dev.h). One queue pair. ember offers the guest the back-end's net features
 * it can pass on, and serves the configuration space itself (MAC, link up): DPDK's back-ends
 * do not answer GET_CONFIG for net. The back-end listens (client mode, ember connects) or
 * ember listens and the back-end connects (server mode). */
#ifndef EMBER_VIRTIO_VHOST_USER_NET_H
#define EMBER_VIRTIO_VHOST_USER_NET_H

#include "virtio/vhost_user_dev.h"

#define VHOST_USER_NET_CONFIG 10 /* mac, status, max_virtqueue_pairs */
/* Server mode: how long building the machine waits for the back-end to connect. */
#define VHOST_USER_NET_ACCEPT_WAIT_S 10

struct vhost_user_net_options {
    const char *id; /* the API's iface_id, or NULL */
    const char *socket;
    bool server; /* ember listens on socket, the back-end connects */
    uint8_t mac[6];
    bool has_mac;         /* else a random, locally administered one */
    unsigned reconnect_s; /* how long to wait for a back-end that went away; 0: never */
};

struct vhost_user_net {
    struct vhost_user_dev vud;
    struct vhost_user_net_options opts; /* the strings are the caller's */
    uint8_t config[VHOST_USER_NET_CONFIG];
};

/* Connects to the back-end (or waits for it, server mode) and learns its features; -1 with
 * why. vhost_user_net_destroy afterwards in any case. */
int vhost_user_net_init(struct vhost_user_net *n, const char *name,
                        const struct vhost_user_net_options *opts, const struct guest_memory *mem);
void vhost_user_net_destroy(struct vhost_user_net *n);

#endif
