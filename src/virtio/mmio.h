/* The virtio-mmio transport, version 2 (virtio 1.2, 4.2): a 4 KiB register
 * window per device, one interrupt line (an irqfd on a GSI), and a kick
 * eventfd per queue matched by KVM_IOEVENTFD on the QueueNotify register,
 * so that a notification never leaves the kernel. */
#ifndef EMBER_VIRTIO_MMIO_H
#define EMBER_VIRTIO_MMIO_H

#include "virtio/device.h"

#include <stdbool.h>
#include <stdint.h>

#define VIRTIO_MMIO_WINDOW 0x1000

struct virtio_mmio {
    struct virtio_dev *dev;
    int vm_fd;
    uint64_t base;
    unsigned gsi;
    int irq_fd; /* eventfd bound to gsi with KVM_IRQFD; -1 in unit tests */
    uint32_t device_features_sel, driver_features_sel, queue_sel;
    uint32_t interrupt_status; /* atomic: the iothread sets, the driver acks */
    bool ioeventfds;
};

/* Binds dev to a window at base and interrupt line gsi. vm_fd < 0 (tests)
 * skips KVM: kicks then go through the register handler. */
int virtio_mmio_init(struct virtio_mmio *m, struct virtio_dev *dev, int vm_fd, uint64_t base,
                     unsigned gsi);
void virtio_mmio_destroy(struct virtio_mmio *m);
/* Bus handler for the register window. */
void virtio_mmio_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* "virtio_mmio.device=4K@0x...:N": what the guest kernel needs to find it. */
int virtio_mmio_cmdline(const struct virtio_mmio *m, char *buf, size_t len);

struct snapshot_writer;
struct snapshot_cursor;
/* Snapshots: the register selectors and the interrupt status (the window, line and
 * ioeventfds come from the configuration). */
void virtio_mmio_save(struct virtio_mmio *m, struct snapshot_writer *w);
int virtio_mmio_restore(struct virtio_mmio *m, struct snapshot_cursor *c);

#endif
