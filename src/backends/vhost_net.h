/* The kernel's vhost-net data path for a virtio-net device on a tap: the
 * kernel then moves frames between the tap and the guest's rings itself,
 * woken by the queues' ioeventfds, signalling eventfds that ember turns
 * into the transport's interrupts. Needs /dev/vhost-net; without it ember
 * serves the queues in user space. */
#ifndef EMBER_BACKENDS_VHOST_NET_H
#define EMBER_BACKENDS_VHOST_NET_H

#include "vmm/memory.h"

#include <stdbool.h>
#include <stdint.h>

struct vhost_ring {
    uint16_t size;
    uint16_t next_avail;       /* where the kernel starts taking buffers (0 after a reset) */
    void *desc, *avail, *used; /* host addresses of the rings */
    int kick_fd, call_fd;
};

struct vhost_net {
    int fd;
    uint64_t features; /* what the kernel offers */
    bool running;
    unsigned nrings;
    /* Set before vhost_net_start: how long the kernel's worker busy-polls a ring after work
     * before it waits for a kick (VHOST_SET_VRING_BUSYLOOP_TIMEOUT, microseconds); 0: not
     * asked for. A kernel that refuses it is logged once and runs without. */
    unsigned busyloop_us;
    bool busyloop_refused;
};

/* Opens /dev/vhost-net; -1 with a message saying why not (e.g. missing). */
int vhost_net_open(struct vhost_net *v);
void vhost_net_close(struct vhost_net *v);
/* Hands rings 0 (receive) and 1 (transmit) and the tap to the kernel. */
int vhost_net_start(struct vhost_net *v, const struct guest_memory *mem, uint64_t features,
                    const struct vhost_ring *rings, unsigned nrings, int tap_fd);
/* Takes them back; the kernel has finished with every buffer. With next_avail (one per
 * ring), where the kernel stopped in each avail ring (VHOST_GET_VRING_BASE); -1 when it
 * could not say (the rings are detached all the same). */
int vhost_net_stop(struct vhost_net *v, uint16_t *next_avail);

#endif
