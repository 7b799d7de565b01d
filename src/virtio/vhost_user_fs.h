/* virtio-fs (virtio 1.2 section 5.11) through a vhost-user back-end (virtiofsd), on the
 * common vhost-user device layer (vhost_user_dev.h). The back-end serves FUSE requests from
 * the queues: queue 0 is the high-priority queue, queues 1..N the request queues. ember
 * emulates the configuration space itself (the tag the guest mounts by and N); the back-end
 * bounds N (GET_QUEUE_NUM) when it says (PROTOCOL_F_MQ). */
#ifndef EMBER_VIRTIO_VHOST_USER_FS_H
#define EMBER_VIRTIO_VHOST_USER_FS_H

#include "virtio/vhost_user_dev.h"

#include <stddef.h>

#define VHOST_USER_FS_TAG_MAX    36 /* bytes, NUL padded in the configuration space */
#define VHOST_USER_FS_MAX_QUEUES (VHOST_USER_DEV_MAX_QUEUES - 1) /* request queues */
/* tag[36], num_request_queues (le32): notify_buf_size is there only with
 * VIRTIO_FS_F_NOTIFICATION, which ember does not offer. */
#define VHOST_USER_FS_CONFIG 40

struct vhost_user_fs_options {
    const char *tag;
    const char *socket;
    unsigned num_queues;  /* request queues; 0: 1 */
    unsigned reconnect_s; /* how long to wait for a back-end that went away; 0: never */
};

struct vhost_user_fs {
    struct vhost_user_dev vud;
    uint8_t config[VHOST_USER_FS_CONFIG]; /* fixed once made */
};

/* Whether tag is one a guest can mount by: 1 to 36 bytes, printable ASCII without spaces or
 * commas (a mount option list would split it); -1 with why. */
int vhost_user_fs_check_tag(const char *tag);
/* The configuration space for tag and n request queues (both checked before). */
void vhost_user_fs_make_config(uint8_t config[VHOST_USER_FS_CONFIG], const char *tag, unsigned n);
/* Connects to the back-end and makes the device; -1 with why. */
int vhost_user_fs_init(struct vhost_user_fs *f, const char *name,
                       const struct vhost_user_fs_options *opts, const struct guest_memory *mem);
void vhost_user_fs_destroy(struct vhost_user_fs *f);

#endif
