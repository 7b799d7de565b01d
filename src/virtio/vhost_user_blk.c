#include "virtio/vhost_user_blk.h"

#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <string.h>

#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_GEOMETRY     4
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_TOPOLOGY     10
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* What ember passes on from a back-end. Not CONFIG_WCE (the guest's writes to the
 * configuration space would have to reach the back-end from a vCPU thread), not packed rings
 * (where a back-end stopped is then more than an index), not ACCESS_PLATFORM (no IOMMU). */
#define SUPPORTED_FEATURES                                                                         \
    ((1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |                            \
     (1ULL << VIRTIO_BLK_F_GEOMETRY) | (1ULL << VIRTIO_BLK_F_RO) |                                 \
     (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_FLUSH) |                              \
     (1ULL << VIRTIO_BLK_F_TOPOLOGY) | (1ULL << VIRTIO_BLK_F_MQ) |                                 \
     (1ULL << VIRTIO_BLK_F_DISCARD) | (1ULL << VIRTIO_BLK_F_WRITE_ZEROES) |                        \
     (1ULL << VIRTIO_F_INDIRECT_DESC) | (1ULL << VIRTIO_F_EVENT_IDX) |                             \
     (1ULL << VIRTIO_F_VERSION_1))

#define VUB_QUEUE_SIZE     256
#define VIRTIO_BLK_S_IOERR 1
/* Offset of num_queues in virtio-blk's configuration space (5.2.4). */
#define CONFIG_NUM_QUEUES 34

static int config_changed(struct vhost_user_dev *v);

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct vhost_user_dev *v = d->opaque;
    struct vhost_user_blk *b = v->model;
    pthread_mutex_lock(&b->config_lock);
    memcpy(data, b->config + offset, len);
    pthread_mutex_unlock(&b->config_lock);
}

/* The back-end's configuration space, checked where ember relies on it. */
static int read_backend_config(struct vhost_user_blk *b, const char *name, unsigned *nqueues)
{
    struct vhost_user *vu = &b->vud.vu;
    if (vhost_user_get_config(vu, 0, b->config, sizeof(b->config)) < 0)
        return -1;
    memcpy(&b->capacity, b->config, sizeof(b->capacity));
    *nqueues = 1;
    if (b->vud.backend_features & (1ULL << VIRTIO_BLK_F_MQ)) {
        uint16_t n;
        memcpy(&n, b->config + CONFIG_NUM_QUEUES, sizeof(n));
        uint64_t backend_queues = 1;
        if (vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_MQ) &&
            vhost_user_get_queue_num(vu, &backend_queues) < 0)
            return -1;
        if (n == 0)
            return error_set("%s: the back-end's configuration space has 0 queues", name);
        *nqueues = n;
        if (*nqueues > backend_queues)
            *nqueues = (unsigned)backend_queues;
        if (*nqueues > VHOST_USER_BLK_MAX_QUEUES)
            *nqueues = VHOST_USER_BLK_MAX_QUEUES;
        /* The guest sees the queues it gets. */
        n = (uint16_t)*nqueues;
        memcpy(b->config + CONFIG_NUM_QUEUES, &n, sizeof(n));
    }
    return 0;
}

/* Completes every request past the used index of queue qi with VIRTIO_BLK_S_IOERR (the status
 * byte, the last byte the device may write): the back-end that took them is gone and no
 * other will know of them. At most a ring's worth; -1 on a ring the driver broke. [io] */
static int fail_requests(struct vhost_user_dev *v, unsigned qi)
{
    struct virtq *q = &v->dev.queues[qi].vq;
    if (q->packed)
        return -1; /* never offered */
    uint16_t used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
    struct virtq_position pos = {.next_avail = used, .next_used = used};
    if (virtq_set_position(q, &pos) < 0)
        return -1;
    struct virtq_chain c;
    if (virtq_chain_alloc(&c, q->size) < 0)
        return -1;
    int n = 0, r = 0;
    while (n < q->size && (r = virtq_pop(q, &c)) == 1) {
        uint32_t written = 0;
        if (c.nin) {
            struct virtq_buf *status = &c.bufs[c.nout + c.nin - 1];
            if (status->len) {
                status->hva[status->len - 1] = VIRTIO_BLK_S_IOERR;
                written = 1;
            }
        }
        virtq_push(q, c.head, written);
        n++;
    }
    virtq_chain_free(&c);
    return r < 0 ? -1 : n;
}

int vhost_user_blk_init(struct vhost_user_blk *b, const char *name,
                        const struct vhost_user_blk_options *opts, const struct guest_memory *mem)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->config_lock, NULL);
    uint64_t wanted = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) | (1ULL << VHOST_USER_PROTOCOL_F_MQ) |
                      (1ULL << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) |
                      (1ULL << VHOST_USER_PROTOCOL_F_BACKEND_REQ);
    if (vhost_user_dev_connect(&b->vud, name, opts->socket, mem, wanted) < 0)
        return -1;
    if (!vhost_user_has_protocol(&b->vud.vu, VHOST_USER_PROTOCOL_F_CONFIG))
        return error_set("%s: the vhost-user back-end at %s does not give its configuration "
                         "space (PROTOCOL_F_CONFIG), where the disk's size is",
                         name, opts->socket);
    unsigned nqueues;
    if (read_backend_config(b, name, &nqueues) < 0)
        return error_prefix("%s: %s", name, opts->socket);
    uint64_t offered = b->vud.backend_features & SUPPORTED_FEATURES;
    if (opts->unsafe)
        offered &= ~(1ULL << VIRTIO_BLK_F_FLUSH);
    b->vud.fail_requests = fail_requests;
    b->vud.config_changed = config_changed;
    vhost_user_dev_set_reconnect(&b->vud, opts->reconnect_s);
    return vhost_user_dev_init(&b->vud, name, VIRTIO_ID_BLOCK, offered, nqueues, VUB_QUEUE_SIZE,
                               sizeof(b->config), read_config, b, mem);
}

/* Reads the back-end's configuration space again (a resized disk) and gives the driver a
 * configuration interrupt: for PATCH /drives and for the back-end's CONFIG_CHANGE_MSG. [io] */
static int refresh(struct vhost_user_blk *b)
{
    uint8_t config[VHOST_USER_BLK_CONFIG];
    if (vhost_user_get_config(&b->vud.vu, 0, config, sizeof(config)) < 0)
        return -1;
    /* The queues the guest has stay as they are. */
    pthread_mutex_lock(&b->config_lock);
    memcpy(config + CONFIG_NUM_QUEUES, b->config + CONFIG_NUM_QUEUES, 2);
    memcpy(b->config, config, sizeof(config));
    memcpy(&b->capacity, config, sizeof(b->capacity));
    pthread_mutex_unlock(&b->config_lock);
    __atomic_add_fetch(&b->vud.dev.config_generation, 1, __ATOMIC_SEQ_CST);
    struct virtio_dev *d = &b->vud.dev;
    if (d->transport && d->transport->notify_config)
        d->transport->notify_config(d);
    return 0;
}

struct refresh_call {
    struct vhost_user_blk *b;
    int result;
    char error[256];
};

static void refresh_on_io(void *arg)
{
    struct refresh_call *c = arg;
    c->result = refresh(c->b);
    if (c->result < 0)
        snprintf(c->error, sizeof(c->error), "%s", error_get());
}

/* The back-end's own notice (its request channel) that its configuration changed. [io] */
static int config_changed(struct vhost_user_dev *v)
{
    struct vhost_user_blk *b = v->model;
    if (refresh(b) < 0) {
        log_limited(&b->log_config, LOG_WARN,
                    "%s: reading the vhost-user back-end's changed configuration: %s", v->dev.name,
                    error_get());
        return -1;
    }
    log_limited(&b->log_config, LOG_INFO,
                "%s: the vhost-user back-end's configuration changed: %llu sectors", v->dev.name,
                (unsigned long long)b->capacity);
    return 0;
}

int vhost_user_blk_refresh(struct vhost_user_blk *b)
{
    struct refresh_call c = {.b = b};
    iothread_call(&b->vud.dev.io, refresh_on_io, &c);
    if (c.result < 0)
        return error_set("%s", c.error);
    return 0;
}

void vhost_user_blk_destroy(struct vhost_user_blk *b)
{
    vhost_user_dev_destroy(&b->vud);
    log_limit_flush(&b->log_config, LOG_INFO, "vhost-user configuration changes");
    pthread_mutex_destroy(&b->config_lock);
}
