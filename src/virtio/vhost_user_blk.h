/* vhost-user-blk: a virtio-blk device whose data path is a back-end process (a storage
 * daemon), on the common vhost-user device layer (vhost_user_dev.h). ember offers the guest
 * what the back-end offers and ember can pass on, and shows it the back-end's configuration
 * space (GET_CONFIG). */
#ifndef EMBER_VIRTIO_VHOST_USER_BLK_H
#define EMBER_VIRTIO_VHOST_USER_BLK_H

#include "virtio/vhost_user_dev.h"

#include <pthread.h>

#define VHOST_USER_BLK_MAX_QUEUES 16
#define VHOST_USER_BLK_CONFIG     60

struct vhost_user_blk_options {
    const char *socket;
    bool unsafe;          /* flushes not offered (Firecracker's cache_type Unsafe) */
    unsigned reconnect_s; /* how long to wait for a back-end that went away; 0: never */
};

struct vhost_user_blk {
    struct vhost_user_dev vud;
    /* The back-end's configuration space: read by vCPUs, replaced by the I/O thread on a
     * refresh; config_lock keeps a read whole (the I/O thread may not take dev.lock). */
    pthread_mutex_t config_lock;
    uint8_t config[VHOST_USER_BLK_CONFIG];
    uint64_t capacity;           /* 512-byte sectors, as the back-end said */
    struct log_limit log_config; /* the back-end's configuration changes */
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
