#include "virtio/mmio.h"

#include "snapshot/format.h"

#include "util/error.h"
#include "util/log.h"
#include "util/teardown.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

enum {
    REG_MAGIC = 0x000,
    REG_VERSION = 0x004,
    REG_DEVICE_ID = 0x008,
    REG_VENDOR_ID = 0x00c,
    REG_DEVICE_FEATURES = 0x010,
    REG_DEVICE_FEATURES_SEL = 0x014,
    REG_DRIVER_FEATURES = 0x020,
    REG_DRIVER_FEATURES_SEL = 0x024,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM_MAX = 0x034,
    REG_QUEUE_NUM = 0x038,
    REG_QUEUE_READY = 0x044,
    REG_QUEUE_NOTIFY = 0x050,
    REG_INTERRUPT_STATUS = 0x060,
    REG_INTERRUPT_ACK = 0x064,
    REG_STATUS = 0x070,
    REG_QUEUE_DESC_LOW = 0x080,
    REG_QUEUE_DESC_HIGH = 0x084,
    REG_QUEUE_DRIVER_LOW = 0x090,
    REG_QUEUE_DRIVER_HIGH = 0x094,
    REG_QUEUE_DEVICE_LOW = 0x0a0,
    REG_QUEUE_DEVICE_HIGH = 0x0a4,
    REG_SHM_SEL = 0x0ac,
    REG_SHM_LEN_LOW = 0x0b0,
    REG_SHM_LEN_HIGH = 0x0b4,
    REG_SHM_BASE_LOW = 0x0b8,
    REG_SHM_BASE_HIGH = 0x0bc,
    REG_QUEUE_RESET = 0x0c0,
    REG_CONFIG_GENERATION = 0x0fc,
    REG_CONFIG = 0x100,
};

#define MMIO_MAGIC   0x74726976 /* "virt" */
#define MMIO_VERSION 2
#define MMIO_VENDOR  0x52424d45 /* "EMBR" */

#define INT_USED_BUFFER   1
#define INT_CONFIG_CHANGE 2

static void raise_interrupt(struct virtio_mmio *m, uint32_t why)
{
    __atomic_or_fetch(&m->interrupt_status, why, __ATOMIC_SEQ_CST);
    if (m->irq_fd >= 0) {
        uint64_t one = 1;
        ssize_t ignored = write(m->irq_fd, &one, sizeof(one));
        (void)ignored;
    }
}

static void notify_queue(struct virtio_dev *d, unsigned q)
{
    (void)q;
    raise_interrupt(d->transport_opaque, INT_USED_BUFFER);
}

static void notify_config(struct virtio_dev *d)
{
    raise_interrupt(d->transport_opaque, INT_CONFIG_CHANGE);
}

static const struct virtio_transport_ops mmio_transport = {
    .notify_queue = notify_queue,
    .notify_config = notify_config,
};

int virtio_mmio_init(struct virtio_mmio *m, struct virtio_dev *dev, int vm_fd, uint64_t base,
                     unsigned gsi)
{
    memset(m, 0, sizeof(*m));
    m->dev = dev;
    m->vm_fd = vm_fd;
    m->base = base;
    m->gsi = gsi;
    m->irq_fd = -1;
    dev->transport = &mmio_transport;
    dev->transport_opaque = m;
    if (vm_fd < 0)
        return 0;
    m->irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->irq_fd < 0)
        return error_errno("%s: eventfd", dev->name);
    struct kvm_irqfd irqfd = {.fd = (uint32_t)m->irq_fd, .gsi = gsi};
    if (ioctl(vm_fd, KVM_IRQFD, &irqfd) < 0)
        return error_errno("%s: KVM_IRQFD on GSI %u", dev->name, gsi);
    /* The driver writes the queue index to QueueNotify: one ioeventfd per
     * queue, told apart by the value. */
    for (unsigned q = 0; q < dev->nqueues; q++) {
        struct kvm_ioeventfd io = {
            .datamatch = q,
            .addr = base + REG_QUEUE_NOTIFY,
            .len = 4,
            .fd = dev->queues[q].kick_fd,
            .flags = KVM_IOEVENTFD_FLAG_DATAMATCH,
        };
        if (ioctl(vm_fd, KVM_IOEVENTFD, &io) < 0) {
            log_warn("%s: KVM_IOEVENTFD failed (%s); kicks will exit to ember", dev->name,
                     strerror(errno));
            return 0;
        }
    }
    m->ioeventfds = true;
    return 0;
}

void virtio_mmio_destroy(struct virtio_mmio *m)
{
    /* The device model may be gone already: only the transport's own state here. A driver that
     * stopped answering its interrupts: worth a line when a guest hung. */
    uint32_t isr = __atomic_load_n(&m->interrupt_status, __ATOMIC_SEQ_CST);
    if (isr)
        log_info("virtio-mmio at %#llx: interrupt status %#x unacknowledged at exit",
                 (unsigned long long)m->base, isr);
    if (m->irq_fd >= 0) {
        struct kvm_irqfd irqfd = {
            .fd = (uint32_t)m->irq_fd, .gsi = m->gsi, .flags = KVM_IRQFD_FLAG_DEASSIGN};
        /* Closing the eventfd detaches it too, without waiting: enough
         * when the VM is about to go anyway. */
        if (!async_teardown_active())
            ioctl(m->vm_fd, KVM_IRQFD, &irqfd);
        close(m->irq_fd);
    }
    m->irq_fd = -1;
}

int virtio_mmio_cmdline(const struct virtio_mmio *m, char *buf, size_t len)
{
    return snprintf(buf, len, "virtio_mmio.device=4K@0x%llx:%u", (unsigned long long)m->base,
                    m->gsi);
}

static struct virtio_queue *selected(struct virtio_mmio *m)
{
    return m->queue_sel < m->dev->nqueues ? &m->dev->queues[m->queue_sel] : NULL;
}

static uint32_t read_reg(struct virtio_mmio *m, uint32_t reg)
{
    struct virtio_dev *d = m->dev;
    struct virtio_queue *q = selected(m);
    switch (reg) {
    case REG_MAGIC:
        return MMIO_MAGIC;
    case REG_VERSION:
        return MMIO_VERSION;
    case REG_DEVICE_ID:
        return d->device_id;
    case REG_VENDOR_ID:
        return MMIO_VENDOR;
    case REG_DEVICE_FEATURES:
        return virtio_dev_host_features(d, m->device_features_sel);
    case REG_QUEUE_NUM_MAX:
        return q ? d->queue_max_size : 0;
    case REG_QUEUE_READY:
        return q ? q->enabled : 0;
    case REG_INTERRUPT_STATUS:
        return __atomic_load_n(&m->interrupt_status, __ATOMIC_SEQ_CST);
    case REG_STATUS:
        return __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    case REG_SHM_LEN_LOW:
    case REG_SHM_LEN_HIGH:
        return 0xffffffff; /* no shared memory regions */
    case REG_CONFIG_GENERATION:
        return __atomic_load_n(&d->config_generation, __ATOMIC_SEQ_CST);
    default:
        return 0; /* write-only or reserved */
    }
}

/* A 64-bit queue address programmed as two 32-bit halves. */
static void write_half(struct virtio_mmio *m, enum virtio_queue_reg reg, bool high, uint32_t v)
{
    uint64_t shift = high ? 32 : 0;
    virtio_dev_write_queue(m->dev, m->queue_sel, reg, (uint64_t)v << shift, 0xffffffffULL << shift);
}

static void write_reg(struct virtio_mmio *m, uint32_t reg, uint32_t v)
{
    struct virtio_dev *d = m->dev;
    switch (reg) {
    case REG_DEVICE_FEATURES_SEL:
        m->device_features_sel = v;
        break;
    case REG_DRIVER_FEATURES:
        virtio_dev_set_driver_features(d, m->driver_features_sel, v);
        break;
    case REG_DRIVER_FEATURES_SEL:
        m->driver_features_sel = v;
        break;
    case REG_QUEUE_SEL:
        m->queue_sel = v;
        break;
    case REG_QUEUE_NUM:
        /* A size that does not fit 16 bits fails the check at activation. */
        virtio_dev_write_queue(d, m->queue_sel, VIRTIO_QUEUE_SIZE, v > 0xffff ? 0 : v, 0xffff);
        break;
    case REG_QUEUE_READY:
        virtio_dev_write_queue(d, m->queue_sel, VIRTIO_QUEUE_ENABLE, v & 1, 1);
        break;
    case REG_QUEUE_NOTIFY:
        virtio_dev_kick(d, v & 0xffff);
        break;
    case REG_INTERRUPT_ACK:
        __atomic_and_fetch(&m->interrupt_status, ~v, __ATOMIC_SEQ_CST);
        break;
    case REG_STATUS:
        virtio_dev_set_status(d, (uint8_t)v);
        if (v == 0)
            __atomic_store_n(&m->interrupt_status, 0, __ATOMIC_SEQ_CST);
        break;
    case REG_QUEUE_DESC_LOW:
    case REG_QUEUE_DESC_HIGH:
        write_half(m, VIRTIO_QUEUE_DESC, reg == REG_QUEUE_DESC_HIGH, v);
        break;
    case REG_QUEUE_DRIVER_LOW:
    case REG_QUEUE_DRIVER_HIGH:
        write_half(m, VIRTIO_QUEUE_DRIVER, reg == REG_QUEUE_DRIVER_HIGH, v);
        break;
    case REG_QUEUE_DEVICE_LOW:
    case REG_QUEUE_DEVICE_HIGH:
        write_half(m, VIRTIO_QUEUE_DEVICE, reg == REG_QUEUE_DEVICE_HIGH, v);
        break;
    default:
        break; /* read-only or reserved: ignored */
    }
}

void virtio_mmio_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct virtio_mmio *m = opaque;
    struct virtio_dev *d = m->dev;
    pthread_mutex_lock(&d->lock);
    if (offset >= REG_CONFIG) {
        virtio_dev_config_access(d, offset - REG_CONFIG, data, len, is_write);
    } else if (len != 4 || offset % 4) {
        /* Registers are 32-bit only (4.2.2.2). */
        if (!is_write)
            memset(data, 0, len);
    } else if (is_write) {
        uint32_t v;
        memcpy(&v, data, 4);
        write_reg(m, (uint32_t)offset, v);
    } else {
        uint32_t v = read_reg(m, (uint32_t)offset);
        memcpy(data, &v, 4);
    }
    pthread_mutex_unlock(&d->lock);
}

void virtio_mmio_save(struct virtio_mmio *m, struct snapshot_writer *w)
{
    snapshot_put_u64(w, m->base);
    snapshot_put_u32(w, m->gsi);
    snapshot_put_u32(w, m->device_features_sel);
    snapshot_put_u32(w, m->driver_features_sel);
    snapshot_put_u32(w, m->queue_sel);
    snapshot_put_u32(w, __atomic_load_n(&m->interrupt_status, __ATOMIC_SEQ_CST));
}

int virtio_mmio_restore(struct virtio_mmio *m, struct snapshot_cursor *c)
{
    uint64_t base;
    uint32_t gsi, dsel, drsel, qsel, isr;
    if (snapshot_get_u64(c, &base) < 0 || snapshot_get_u32(c, &gsi) < 0 ||
        snapshot_get_u32(c, &dsel) < 0 || snapshot_get_u32(c, &drsel) < 0 ||
        snapshot_get_u32(c, &qsel) < 0 || snapshot_get_u32(c, &isr) < 0)
        return -1;
    if (base != m->base || gsi != m->gsi)
        return error_set("%s: the snapshot's device is at 0x%llx, IRQ %u; this one at 0x%llx, "
                         "IRQ %u",
                         m->dev->name, (unsigned long long)base, gsi, (unsigned long long)m->base,
                         m->gsi);
    if (isr & ~3u)
        return error_set("%s: interrupt status 0x%x", m->dev->name, isr);
    m->device_features_sel = dsel;
    m->driver_features_sel = drsel;
    m->queue_sel = qsel;
    __atomic_store_n(&m->interrupt_status, isr, __ATOMIC_SEQ_CST);
    return 0;
}
