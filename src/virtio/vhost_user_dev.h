/* The part of a vhost-user device that does not depend on its type (vhost_user_blk.c,
 * vhost_user_fs.c): a virtio device whose data path is a back-end process reached over a
 * unix socket (vhost_user/). At DRIVER_OK it hands the back-end guest memory (shared
 * memfd), the rings, each queue's kick eventfd (the one KVM signals) and a call eventfd per
 * queue, which ember relays to the transport's interrupt (so that MSI-X masking and INTx
 * stay the transport's business). A reset takes the rings back (GET_VRING_BASE). A back-end
 * that goes away makes the device need a reset (one log line); ember keeps running.
 * The device type supplies its configuration space (read_config) and what it offers. */
#ifndef EMBER_VIRTIO_VHOST_USER_DEV_H
#define EMBER_VIRTIO_VHOST_USER_DEV_H

#include "vhost_user/vhost_user.h"
#include "virtio/device.h"

#define VHOST_USER_DEV_MAX_QUEUES 17 /* virtio-fs: hiprio + 16 request queues */

struct vhost_user_dev;

struct vhost_user_dev_call {
    struct vhost_user_dev *owner;
    unsigned queue;
    int fd;
    struct event_handler *handler;
};

struct vhost_user_dev {
    struct virtio_dev dev; /* dev.opaque is this structure */
    struct vhost_user vu;
    const char *socket;
    void *model; /* the device type's structure */
    uint64_t backend_features;
    struct virtio_dev_ops ops;
    struct vhost_user_dev_call calls[VHOST_USER_DEV_MAX_QUEUES];
    struct event_handler *socket_handler;
    bool running;     /* [io] the back-end has the rings */
    uint64_t relayed; /* [io] interrupts relayed from the back-end */
};

/* Connects to the back-end at socket, negotiates the protocol features of `wanted` it has,
 * and requires VIRTIO_F_VERSION_1 and shared guest memory; -1 with why. Call
 * vhost_user_dev_destroy afterwards in any case. */
int vhost_user_dev_connect(struct vhost_user_dev *v, const char *name, const char *socket,
                           const struct guest_memory *mem, uint64_t wanted_protocol);
/* The virtio device itself, offering `offered` (already the back-end's features that the
 * type passes on) with nqueues queues (at most VHOST_USER_DEV_MAX_QUEUES). */
int vhost_user_dev_init(struct vhost_user_dev *v, const char *name, uint32_t device_id,
                        uint64_t offered, unsigned nqueues, uint16_t queue_size,
                        uint32_t config_size,
                        void (*read_config)(struct virtio_dev *d, uint32_t offset, void *data,
                                            uint32_t len),
                        void *model, const struct guest_memory *mem);
void vhost_user_dev_destroy(struct vhost_user_dev *v);

#endif
