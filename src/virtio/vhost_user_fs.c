#include "virtio/vhost_user_fs.h"

#include "util/error.h"

#include <string.h>

/* What ember passes on from a back-end: not NOTIFICATION (a notification queue and
 * notify_buf_size ember does not have), not packed rings nor ACCESS_PLATFORM (as for
 * vhost-user-blk). */
#define SUPPORTED_FEATURES                                                                         \
    ((1ULL << VIRTIO_F_INDIRECT_DESC) | (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_VERSION_1))

#define VUF_QUEUE_SIZE 256

int vhost_user_fs_check_tag(const char *tag)
{
    size_t n = strlen(tag);
    if (n == 0)
        return error_set("the virtio-fs tag is empty");
    if (n > VHOST_USER_FS_TAG_MAX)
        return error_set("the virtio-fs tag '%s' is %zu bytes long (at most %d)", tag, n,
                         VHOST_USER_FS_TAG_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)tag[i];
        if (c <= ' ' || c >= 0x7f || c == ',')
            return error_set("the virtio-fs tag may hold printable ASCII characters other than "
                             "space and ',' only (byte %zu is 0x%02x)",
                             i, c);
    }
    return 0;
}

void vhost_user_fs_make_config(uint8_t config[VHOST_USER_FS_CONFIG], const char *tag, unsigned n)
{
    memset(config, 0, VHOST_USER_FS_CONFIG);
    memcpy(config, tag, strnlen(tag, VHOST_USER_FS_TAG_MAX));
    uint32_t le = n; /* x86: little-endian already */
    memcpy(config + VHOST_USER_FS_TAG_MAX, &le, sizeof(le));
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct vhost_user_dev *v = d->opaque;
    struct vhost_user_fs *f = v->model;
    memcpy(data, f->config + offset, len);
}

int vhost_user_fs_init(struct vhost_user_fs *f, const char *name,
                       const struct vhost_user_fs_options *opts, const struct guest_memory *mem)
{
    memset(f, 0, sizeof(*f));
    /* Refused before connecting is destroyed as connected: no descriptors yet. */
    f->vud.vu.fd = -1;
    for (unsigned i = 0; i < VHOST_USER_DEV_MAX_QUEUES; i++)
        f->vud.calls[i].fd = -1;
    f->vud.timer_fd = -1;
    f->vud.inflight.fd = -1;
    f->vud.channel.fd = -1;
    /* The parsers (--fs, PUT /fs) check these too; a device never trusts its caller. */
    unsigned n = opts->num_queues ? opts->num_queues : 1;
    if (vhost_user_fs_check_tag(opts->tag) < 0)
        return error_prefix("%s", name);
    if (n > VHOST_USER_FS_MAX_QUEUES)
        return error_set("%s: %u request queues (1 to %d)", name, n, VHOST_USER_FS_MAX_QUEUES);
    /* Not BACKEND_REQ: virtiofsd's requests of its own map files into a DAX window ember does
     * not have, and the configuration space is ember's. */
    uint64_t wanted = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                      (1ULL << VHOST_USER_PROTOCOL_F_MQ) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
    if (vhost_user_dev_connect(&f->vud, name, opts->socket, mem, wanted) < 0)
        return -1;
    struct vhost_user *vu = &f->vud.vu;
    if (vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_MQ)) {
        uint64_t backend_queues;
        if (vhost_user_get_queue_num(vu, &backend_queues) < 0)
            return error_prefix("%s: %s", name, opts->socket);
        if (n + 1 > backend_queues)
            return error_set("%s: the vhost-user back-end at %s serves %llu queue(s): %u request "
                             "queue(s) and the high-priority queue need %u",
                             name, opts->socket, (unsigned long long)backend_queues, n, n + 1);
    }
    vhost_user_dev_set_reconnect(&f->vud, opts->reconnect_s);
    vhost_user_fs_make_config(f->config, opts->tag, n);
    uint64_t offered = f->vud.backend_features & SUPPORTED_FEATURES;
    return vhost_user_dev_init(&f->vud, name, VIRTIO_ID_FS, offered, n + 1, VUF_QUEUE_SIZE,
                               sizeof(f->config), read_config, f, mem);
}

void vhost_user_fs_destroy(struct vhost_user_fs *f)
{
    vhost_user_dev_destroy(&f->vud);
}
