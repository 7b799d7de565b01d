#include "backends/vhost_net.h"

#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vhost.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int vhost_net_open(struct vhost_net *v)
{
    memset(v, 0, sizeof(*v));
    v->fd = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
    if (v->fd < 0)
        return error_errno("/dev/vhost-net");
    if (ioctl(v->fd, VHOST_SET_OWNER, NULL) < 0 ||
        ioctl(v->fd, VHOST_GET_FEATURES, &v->features) < 0) {
        error_errno("vhost-net setup");
        vhost_net_close(v);
        return -1;
    }
    return 0;
}

void vhost_net_close(struct vhost_net *v)
{
    if (v->running)
        vhost_net_stop(v, NULL);
    if (v->fd >= 0)
        close(v->fd);
    v->fd = -1;
}

static int set_mem_table(struct vhost_net *v, const struct guest_memory *mem)
{
    struct vhost_memory *table =
        calloc(1, sizeof(*table) + mem->nregions * sizeof(table->regions[0]));
    if (!table)
        return error_set("out of memory");
    table->nregions = mem->nregions;
    for (unsigned i = 0; i < mem->nregions; i++) {
        table->regions[i] = (struct vhost_memory_region){
            .guest_phys_addr = mem->regions[i].gpa,
            .memory_size = mem->regions[i].size,
            .userspace_addr = (uintptr_t)mem->regions[i].hva,
        };
    }
    int r = ioctl(v->fd, VHOST_SET_MEM_TABLE, table);
    free(table);
    return r < 0 ? error_errno("VHOST_SET_MEM_TABLE") : 0;
}

int vhost_net_start(struct vhost_net *v, const struct guest_memory *mem, uint64_t features,
                    const struct vhost_ring *rings, unsigned nrings, int tap_fd)
{
    /* Its writes to guest RAM would be missing from Diff snapshots: the caller then serves
     * the queues in user space, where ember logs them (vhost's own dirty log is not used). */
    if (mem->dirty)
        return error_set("vhost-net does not log its writes to guest memory for dirty page "
                         "tracking (track_dirty_pages)");
    /* The kernel acknowledges only what it implements. */
    uint64_t acked = features & v->features;
    if (ioctl(v->fd, VHOST_SET_FEATURES, &acked) < 0)
        return error_errno("VHOST_SET_FEATURES");
    if (set_mem_table(v, mem) < 0)
        return -1;
    for (unsigned i = 0; i < nrings; i++) {
        const struct vhost_ring *r = &rings[i];
        struct vhost_vring_state num = {.index = i, .num = r->size};
        /* A restored or thawed ring goes on from where the device stood. */
        struct vhost_vring_state base = {.index = i, .num = r->next_avail};
        struct vhost_vring_addr addr = {
            .index = i,
            .desc_user_addr = (uintptr_t)r->desc,
            .avail_user_addr = (uintptr_t)r->avail,
            .used_user_addr = (uintptr_t)r->used,
        };
        struct vhost_vring_file kick = {.index = i, .fd = r->kick_fd};
        struct vhost_vring_file call = {.index = i, .fd = r->call_fd};
        if (ioctl(v->fd, VHOST_SET_VRING_NUM, &num) < 0 ||
            ioctl(v->fd, VHOST_SET_VRING_BASE, &base) < 0 ||
            ioctl(v->fd, VHOST_SET_VRING_ADDR, &addr) < 0 ||
            ioctl(v->fd, VHOST_SET_VRING_KICK, &kick) < 0 ||
            ioctl(v->fd, VHOST_SET_VRING_CALL, &call) < 0)
            return error_errno("vhost-net ring %u setup", i);
        struct vhost_vring_state busyloop = {.index = i, .num = v->busyloop_us};
        if (v->busyloop_us && !v->busyloop_refused &&
            ioctl(v->fd, VHOST_SET_VRING_BUSYLOOP_TIMEOUT, &busyloop) < 0) {
            /* Busy polling is an optimisation: the rings work without it. */
            log_warn("vhost-net: the kernel refused busy polling of the rings "
                     "(VHOST_SET_VRING_BUSYLOOP_TIMEOUT %u us): %s; they are served on kicks",
                     v->busyloop_us, strerror(errno));
            v->busyloop_refused = true;
        }
    }
    for (unsigned i = 0; i < nrings; i++) {
        struct vhost_vring_file backend = {.index = i, .fd = tap_fd};
        if (ioctl(v->fd, VHOST_NET_SET_BACKEND, &backend) < 0) {
            error_errno("VHOST_NET_SET_BACKEND");
            v->nrings = i;
            v->running = true;
            vhost_net_stop(v, NULL);
            return -1;
        }
    }
    v->nrings = nrings;
    v->running = true;
    return 0;
}

int vhost_net_stop(struct vhost_net *v, uint16_t *next_avail)
{
    int result = 0;
    for (unsigned i = 0; i < v->nrings; i++) {
        struct vhost_vring_file backend = {.index = i, .fd = -1};
        if (ioctl(v->fd, VHOST_NET_SET_BACKEND, &backend) < 0)
            log_warn("vhost-net: detaching ring %u: %s", i, strerror(errno));
        /* Split rings: the kernel's next avail index, free-running 16 bits. */
        struct vhost_vring_state base = {.index = i};
        if (ioctl(v->fd, VHOST_GET_VRING_BASE, &base) < 0) {
            if (result == 0)
                error_errno("VHOST_GET_VRING_BASE of ring %u", i);
            result = -1;
        } else if (next_avail) {
            next_avail[i] = (uint16_t)base.num;
        }
    }
    v->running = false;
    v->nrings = 0;
    return result;
}
