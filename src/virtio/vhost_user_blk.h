/* vhost-user-blk: a virtio-blk device whose data path is a back-end process (a storage
 * daemon) reached over a unix socket (vhost_user/). ember offers the guest what the back-end
 * offers and ember can pass on, shows it the back-end's configuration space, and at
 * DRIVER_OK hands the back-end guest memory (shared memfd), the rings, each queue's kick
 * eventfd (the one KVM signals) and a call eventfd per queue, which ember relays to the
 * transport's interrupt (so that MSI-X masking and INTx stay the transport's business).
 * A reset takes the rings back (GET_VRING_BASE). A back-end that goes away makes the device
 * need a reset (one log line); ember keeps running. */
#ifndef EMBER_VIRTIO_VHOST_USER_BLK_H
#define EMBER_VIRTIO_VHOST_USER_BLK_H

#include "vhost_user/vhost_user.h"
#include "virtio/device.h"

#include <pthread.h>

#define VHOST_USER_BLK_MAX_QUEUES 16
#define VHOST_USER_BLK_CONFIG     60

struct vhost_user_blk_options {
    const char *socket;
    bool unsafe; /* flushes not offered (Firecracker's cache_type Unsafe) */
};

struct vhost_user_blk;

struct vhost_user_blk_call {
    struct vhost_user_blk *blk;
    unsigned queue;
    int fd;
    struct event_handler *handler;
};

struct vhost_user_blk {
    struct virtio_dev dev;
    struct vhost_user vu;
    const char *socket;
    /* The back-end's configuration space: read by vCPUs, replaced by the I/O thread on a
     * refresh; config_lock keeps a read whole (the I/O thread may not take dev.lock). */
    pthread_mutex_t config_lock;
    uint8_t config[VHOST_USER_BLK_CONFIG];
    uint64_t capacity; /* 512-byte sectors, as the back-end said */
    uint64_t backend_features;
    struct vhost_user_blk_call calls[VHOST_USER_BLK_MAX_QUEUES];
    struct event_handler *socket_handler;
    bool running;     /* [io] the back-end has the rings */
    uint64_t relayed; /* [io] interrupts relayed from the back-end */
};

/* Connects to the back-end and learns its features and configuration; -1 with why. */
int vhost_user_blk_init(struct vhost_user_blk *b, const char *name,
                        const struct vhost_user_blk_options *opts, const struct guest_memory *mem);
void vhost_user_blk_destroy(struct vhost_user_blk *b);
/* Reads the back-end's configuration space again (a disk it resized) and tells the driver
 * (configuration interrupt); on the device's thread, which owns the connection. Any other
 * thread. */
int vhost_user_blk_refresh(struct vhost_user_blk *b);

#endif
