#include "virtio/pci.h"

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

/* Capability types (4.1.4). */
#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR    3
#define CAP_DEVICE 4
#define CAP_PCI    5

/* Common configuration fields (4.1.4.3). */
enum {
    CC_DEVICE_FEATURE_SELECT = 0x00,
    CC_DEVICE_FEATURE = 0x04,
    CC_DRIVER_FEATURE_SELECT = 0x08,
    CC_DRIVER_FEATURE = 0x0c,
    CC_CONFIG_MSIX_VECTOR = 0x10,
    CC_NUM_QUEUES = 0x12,
    CC_DEVICE_STATUS = 0x14,
    CC_CONFIG_GENERATION = 0x15,
    CC_QUEUE_SELECT = 0x16,
    CC_QUEUE_SIZE = 0x18,
    CC_QUEUE_MSIX_VECTOR = 0x1a,
    CC_QUEUE_ENABLE = 0x1c,
    CC_QUEUE_NOTIFY_OFF = 0x1e,
    CC_QUEUE_DESC = 0x20,
    CC_QUEUE_DRIVER = 0x28,
    CC_QUEUE_DEVICE = 0x30,
    CC_QUEUE_NOTIFY_DATA = 0x38,
    CC_QUEUE_RESET = 0x3a,
    CC_SIZE = 0x3c,
};

#define MSIX_CTRL_ENABLE  0x8000
#define MSIX_CTRL_MASK    0x4000
#define MSIX_ENTRY_MASKED 1

#define ISR_QUEUE  1
#define ISR_CONFIG 2

static uint16_t msix_control(const struct virtio_pci *p)
{
    uint16_t v;
    memcpy(&v, p->fn.config + p->msix_cap + 2, 2);
    return v;
}

static bool msix_enabled(const struct virtio_pci *p)
{
    return msix_control(p) & MSIX_CTRL_ENABLE;
}

/* ---- vector eventfds ---------------------------------------------------- */

/* Whether vector vec's interrupt reaches the guest now: MSI-X on, neither the function nor
 * the entry masked, an address in the LAPIC window. Under msix_lock. */
static bool vector_deliverable(const struct virtio_pci *p, unsigned vec)
{
    const struct msix_entry *e = &p->table[vec];
    return msix_enabled(p) && !(msix_control(p) & MSIX_CTRL_MASK) &&
           !(e->ctrl & MSIX_ENTRY_MASKED) && (e->addr_lo & 0xfff00000u) == 0xfee00000u &&
           !e->addr_hi;
}

/* Each vector's eventfd is bound to its GSI in KVM (KVM_IRQFD) exactly while the vector is
 * deliverable, so that a writer outside ember (a vhost-user back-end handed the eventfd)
 * interrupts the guest with no hop through ember, and masking holds: an unbound eventfd
 * keeps what is written to it, which is the vector's pending bit (collect_pending), and
 * KVM delivers it when the eventfd is bound again. Under msix_lock. */
static void sync_irqfd(struct virtio_pci *p, unsigned vec)
{
    bool want = vector_deliverable(p, vec);
    if (!p->irqchip || p->vector_fd[vec] < 0 || p->irqfd_bound[vec] == want)
        return;
    struct kvm_irqfd irqfd = {.fd = (uint32_t)p->vector_fd[vec],
                              .gsi = (uint32_t)p->vector_gsi[vec],
                              .flags = want ? 0 : KVM_IRQFD_FLAG_DEASSIGN};
    if (ioctl(p->vm_fd, KVM_IRQFD, &irqfd) < 0) {
        log_limited(&p->log_irqfd, LOG_ERROR, "%s: KVM_IRQFD %s for MSI-X vector %u: %s",
                    p->dev->name, want ? "binding" : "unbinding", vec, strerror(errno));
        return;
    }
    p->irqfd_bound[vec] = want;
}

/* Hands KVM the routes of the deliverable vectors whose entry changed, in one call: each
 * KVM_SET_GSI_ROUTING waits for a grace period, and a driver writes an entry's address and
 * data (three dwords) while it is masked, then unmasks it. A vector that is not deliverable
 * is not bound to its GSI, so its route is not used until then. Under msix_lock. */
static void commit_stale_routes(struct virtio_pci *p)
{
    uint64_t due = 0;
    for (unsigned v = 0; v < p->nvectors; v++) {
        if ((p->route_stale >> v & 1) && vector_deliverable(p, v))
            due |= 1ULL << v;
    }
    if (!due || !p->irqchip)
        return;
    if (irqchip_commit_routes(p->irqchip) < 0) {
        log_limited(&p->log_irqfd, LOG_ERROR, "%s: MSI-X routes: %s", p->dev->name, error_get());
        return;
    }
    p->route_stale &= ~due;
}

static void sync_irqfds(struct virtio_pci *p)
{
    commit_stale_routes(p);
    for (unsigned v = 0; v < p->nvectors; v++)
        sync_irqfd(p, v);
}

/* What outside writers signalled on vectors that are not deliverable becomes their pending
 * bits (the PBA as the guest reads it, a snapshot). Under msix_lock. */
static void collect_pending(struct virtio_pci *p)
{
    for (unsigned v = 0; v < p->nvectors; v++) {
        uint64_t n;
        if (p->vector_fd[v] >= 0 && !p->irqfd_bound[v] &&
            read(p->vector_fd[v], &n, sizeof(n)) == (ssize_t)sizeof(n) && n)
            p->pending |= 1ULL << v;
    }
}

/* ---- interrupts ------------------------------------------------------ */

static void set_intx(struct virtio_pci *p, bool level)
{
    if (p->intx_asserted == level)
        return;
    p->intx_asserted = level;
    uint16_t status;
    memcpy(&status, p->fn.config + PCI_STATUS, 2);
    status = level ? (status | PCI_STATUS_INTERRUPT) : (status & ~PCI_STATUS_INTERRUPT);
    memcpy(p->fn.config + PCI_STATUS, &status, 2);
    if (p->irqchip)
        irqchip_set_shared_line(p->irqchip, p->fn.intx_gsi, p->fn.slot, level);
}

/* Under msix_lock. */
static void fire_vector(struct virtio_pci *p, unsigned vec)
{
    const struct msix_entry *e = &p->table[vec];
    bool masked = (msix_control(p) & MSIX_CTRL_MASK) || (e->ctrl & MSIX_ENTRY_MASKED);
    if (masked) {
        p->pending |= 1ULL << vec;
        p->msix_masked++;
        return;
    }
    /* An address outside the LAPIC window is no interrupt: drop it. */
    if ((e->addr_lo & 0xfff00000u) != 0xfee00000u || e->addr_hi) {
        log_debug("%s: MSI-X vector %u has no valid address", p->dev->name, vec);
        return;
    }
    p->msix_fired++;
    if (p->vector_fd[vec] >= 0) {
        uint64_t one = 1;
        ssize_t ignored = write(p->vector_fd[vec], &one, sizeof(one));
        (void)ignored;
    }
}

static void interrupt(struct virtio_pci *p, uint16_t vec, uint8_t isr_bit)
{
    pthread_mutex_lock(&p->msix_lock);
    if (msix_enabled(p)) {
        if (vec < p->nvectors)
            fire_vector(p, vec);
    } else {
        __atomic_or_fetch(&p->isr, isr_bit, __ATOMIC_SEQ_CST);
        p->intx_fired++;
        uint16_t cmd;
        memcpy(&cmd, p->fn.config + PCI_COMMAND, 2);
        if (!(cmd & PCI_COMMAND_INTX_DISABLE))
            set_intx(p, true);
    }
    pthread_mutex_unlock(&p->msix_lock);
}

static void notify_queue(struct virtio_dev *d, unsigned q)
{
    struct virtio_pci *p = d->transport_opaque;
    interrupt(p, __atomic_load_n(&d->queues[q].msix_vector, __ATOMIC_ACQUIRE), ISR_QUEUE);
}

static void notify_config(struct virtio_dev *d)
{
    struct virtio_pci *p = d->transport_opaque;
    interrupt(p, __atomic_load_n(&p->config_vector, __ATOMIC_ACQUIRE), ISR_CONFIG);
}

/* With MSI-X on, queue q's vector's eventfd: written by anyone, it interrupts the guest as
 * notify_queue would (sync_irqfd). */
static int queue_irqfd(struct virtio_dev *d, unsigned q)
{
    struct virtio_pci *p = d->transport_opaque;
    uint16_t vec = __atomic_load_n(&d->queues[q].msix_vector, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&p->msix_lock);
    int fd = p->irqchip && msix_enabled(p) && vec < p->nvectors ? p->vector_fd[vec] : -1;
    pthread_mutex_unlock(&p->msix_lock);
    return fd;
}

static const struct virtio_transport_ops pci_transport = {
    .notify_queue = notify_queue,
    .notify_config = notify_config,
    .queue_irqfd = queue_irqfd,
};

/* Delivers what was held back while masked (under msix_lock). */
static void deliver_pending(struct virtio_pci *p)
{
    if (!msix_enabled(p) || (msix_control(p) & MSIX_CTRL_MASK))
        return;
    for (unsigned v = 0; v < p->nvectors; v++) {
        if ((p->pending >> v & 1) && !(p->table[v].ctrl & MSIX_ENTRY_MASKED)) {
            p->pending &= ~(1ULL << v);
            fire_vector(p, v);
        }
    }
}

static void msix_table_io(struct virtio_pci *p, uint64_t off, uint8_t *data, uint32_t len,
                          bool is_write)
{
    /* Entries are accessed as aligned dwords (or qwords). */
    if ((len != 4 && len != 8) || off % len || off >= p->nvectors * 16ULL ||
        len > p->nvectors * 16ULL - off) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    pthread_mutex_lock(&p->msix_lock);
    for (uint32_t done = 0; done < len; done += 4) {
        unsigned vec = (unsigned)((off + done) / 16), word = (unsigned)((off + done) % 16) / 4;
        struct msix_entry *e = &p->table[vec];
        uint32_t *field = word == 0   ? &e->addr_lo
                          : word == 1 ? &e->addr_hi
                          : word == 2 ? &e->data
                                      : &e->ctrl;
        if (!is_write) {
            memcpy(data + done, field, 4);
            continue;
        }
        uint32_t v;
        memcpy(&v, data + done, 4);
        if (word == 3)
            v &= MSIX_ENTRY_MASKED;
        *field = v;
        if (word < 3 && p->irqchip && p->vector_gsi[vec] >= 0 &&
            irqchip_stage_msi_route(p->irqchip, (unsigned)p->vector_gsi[vec],
                                    (uint64_t)e->addr_hi << 32 | e->addr_lo, e->data) == 0)
            p->route_stale |= 1ULL << vec; /* to KVM by sync_irqfds, once deliverable */
    }
    if (is_write) {
        sync_irqfds(p);
        deliver_pending(p);
    }
    pthread_mutex_unlock(&p->msix_lock);
}

/* ---- common configuration ------------------------------------------ */

static struct virtio_queue *selected_queue(struct virtio_pci *p)
{
    return p->queue_sel < p->dev->nqueues ? &p->dev->queues[p->queue_sel] : NULL;
}

static uint64_t common_read(struct virtio_pci *p, uint32_t off)
{
    struct virtio_dev *d = p->dev;
    struct virtio_queue *q = selected_queue(p);
    switch (off) {
    case CC_DEVICE_FEATURE_SELECT:
        return p->device_features_sel;
    case CC_DEVICE_FEATURE:
        return virtio_dev_host_features(d, p->device_features_sel);
    case CC_DRIVER_FEATURE_SELECT:
        return p->driver_features_sel;
    case CC_DRIVER_FEATURE:
        return p->driver_features_sel < 2
                   ? (uint32_t)(d->driver_features >> (32 * p->driver_features_sel))
                   : 0;
    case CC_CONFIG_MSIX_VECTOR:
        return p->config_vector;
    case CC_NUM_QUEUES:
        return d->nqueues;
    case CC_DEVICE_STATUS:
        return __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    case CC_CONFIG_GENERATION:
        return __atomic_load_n(&d->config_generation, __ATOMIC_SEQ_CST) & 0xff;
    case CC_QUEUE_SELECT:
        return p->queue_sel;
    case CC_QUEUE_SIZE:
        return q ? q->cfg.size : 0;
    case CC_QUEUE_MSIX_VECTOR:
        return q ? q->msix_vector : VIRTIO_NO_VECTOR;
    case CC_QUEUE_ENABLE:
        return q ? q->enabled : 0;
    case CC_QUEUE_NOTIFY_OFF:
        return q ? p->queue_sel : 0;
    case CC_QUEUE_DESC:
        return q ? q->cfg.desc_gpa : 0;
    case CC_QUEUE_DRIVER:
        return q ? q->cfg.avail_gpa : 0;
    case CC_QUEUE_DEVICE:
        return q ? q->cfg.used_gpa : 0;
    default:
        return 0;
    }
}

static uint16_t checked_vector(const struct virtio_pci *p, uint16_t v)
{
    /* A vector the device cannot serve reads back as NO_VECTOR (4.1.5.1.2). */
    return v < p->nvectors ? v : VIRTIO_NO_VECTOR;
}

static void common_write(struct virtio_pci *p, uint32_t off, uint32_t len, uint64_t v)
{
    struct virtio_dev *d = p->dev;
    struct virtio_queue *q = selected_queue(p);
    switch (off) {
    case CC_DEVICE_FEATURE_SELECT:
        p->device_features_sel = (uint32_t)v;
        break;
    case CC_DRIVER_FEATURE_SELECT:
        p->driver_features_sel = (uint32_t)v;
        break;
    case CC_DRIVER_FEATURE:
        virtio_dev_set_driver_features(d, p->driver_features_sel, (uint32_t)v);
        break;
    case CC_CONFIG_MSIX_VECTOR:
        __atomic_store_n(&p->config_vector, checked_vector(p, (uint16_t)v), __ATOMIC_RELEASE);
        break;
    case CC_DEVICE_STATUS:
        virtio_dev_set_status(d, (uint8_t)v);
        if (v == 0) {
            __atomic_store_n(&p->config_vector, VIRTIO_NO_VECTOR, __ATOMIC_RELEASE);
            __atomic_store_n(&p->isr, 0, __ATOMIC_SEQ_CST);
            pthread_mutex_lock(&p->msix_lock);
            set_intx(p, false);
            pthread_mutex_unlock(&p->msix_lock);
        }
        break;
    case CC_QUEUE_SELECT:
        p->queue_sel = (uint16_t)v;
        break;
    case CC_QUEUE_SIZE:
        virtio_dev_write_queue(d, p->queue_sel, VIRTIO_QUEUE_SIZE, v, 0xffff);
        break;
    case CC_QUEUE_MSIX_VECTOR:
        if (q)
            __atomic_store_n(&q->msix_vector, checked_vector(p, (uint16_t)v), __ATOMIC_RELEASE);
        break;
    case CC_QUEUE_ENABLE:
        /* Only 1 may be written; disabling takes a reset (4.1.4.3.2). */
        if (v == 1)
            virtio_dev_write_queue(d, p->queue_sel, VIRTIO_QUEUE_ENABLE, 1, 1);
        break;
    case CC_QUEUE_DESC:
    case CC_QUEUE_DESC + 4:
    case CC_QUEUE_DRIVER:
    case CC_QUEUE_DRIVER + 4:
    case CC_QUEUE_DEVICE:
    case CC_QUEUE_DEVICE + 4: {
        uint32_t base = off & ~7u;
        enum virtio_queue_reg reg = base == CC_QUEUE_DESC     ? VIRTIO_QUEUE_DESC
                                    : base == CC_QUEUE_DRIVER ? VIRTIO_QUEUE_DRIVER
                                                              : VIRTIO_QUEUE_DEVICE;
        unsigned shift = len == 8 ? 0 : (off & 4) * 8;
        uint64_t mask = len == 8 ? ~0ULL : 0xffffffffULL << shift;
        virtio_dev_write_queue(d, p->queue_sel, reg, v << shift, mask);
        break;
    }
    default:
        break; /* read-only fields */
    }
}

/* Field widths, so that only natural accesses reach a field (4.1.3.1). */
static unsigned field_width(uint32_t off)
{
    switch (off) {
    case CC_DEVICE_STATUS:
    case CC_CONFIG_GENERATION:
        return 1;
    case CC_CONFIG_MSIX_VECTOR:
    case CC_NUM_QUEUES:
    case CC_QUEUE_SELECT:
    case CC_QUEUE_SIZE:
    case CC_QUEUE_MSIX_VECTOR:
    case CC_QUEUE_ENABLE:
    case CC_QUEUE_NOTIFY_OFF:
    case CC_QUEUE_NOTIFY_DATA:
    case CC_QUEUE_RESET:
        return 2;
    case CC_QUEUE_DESC:
    case CC_QUEUE_DRIVER:
    case CC_QUEUE_DEVICE:
        return 8;
    default:
        return 4;
    }
}

static void common_io(struct virtio_pci *p, uint32_t off, uint8_t *data, uint32_t len,
                      bool is_write)
{
    unsigned w = field_width(off & ~7u) == 8 ? 8 : field_width(off);
    bool ok = off < CC_SIZE && (len == w || (w == 8 && len == 4 && off % 4 == 0));
    if (!ok) {
        if (!is_write)
            memset(data, 0, len);
        return;
    }
    if (is_write) {
        uint64_t v = 0;
        memcpy(&v, data, len);
        common_write(p, off, len, v);
    } else {
        uint64_t v = common_read(p, off & ~(w == 8 ? 7u : 0u));
        if (w == 8 && len == 4 && (off & 4))
            v >>= 32;
        memcpy(data, &v, len);
    }
}

void virtio_pci_bar_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct virtio_pci *p = opaque;
    struct virtio_dev *d = p->dev;
    if (offset >= VIRTIO_PCI_MSIX_OFF && offset < VIRTIO_PCI_PBA_OFF) {
        msix_table_io(p, offset - VIRTIO_PCI_MSIX_OFF, data, len, is_write);
        return;
    }
    if (offset >= VIRTIO_PCI_PBA_OFF) {
        if (!is_write) {
            pthread_mutex_lock(&p->msix_lock);
            collect_pending(p);
            uint64_t pba = p->pending;
            pthread_mutex_unlock(&p->msix_lock);
            uint64_t off = offset - VIRTIO_PCI_PBA_OFF;
            memset(data, 0, len);
            if (off < 8)
                memcpy(data, (uint8_t *)&pba + off, len <= 8 - off ? len : 8 - off);
        }
        return;
    }
    if (offset >= VIRTIO_PCI_NOTIFY_OFF) {
        /* Reached only when no ioeventfd matched this write. */
        uint64_t q = (offset - VIRTIO_PCI_NOTIFY_OFF) / VIRTIO_PCI_NOTIFY_MULT;
        if (is_write && q < d->nqueues)
            virtio_dev_kick(d, (unsigned)q);
        else if (!is_write)
            memset(data, 0, len);
        return;
    }
    pthread_mutex_lock(&d->lock);
    if (offset >= VIRTIO_PCI_DEVICE_OFF) {
        virtio_dev_config_access(d, offset - VIRTIO_PCI_DEVICE_OFF, data, len, is_write);
    } else if (offset >= VIRTIO_PCI_ISR_OFF) {
        if (!is_write) {
            memset(data, 0, len);
            if (offset == VIRTIO_PCI_ISR_OFF) {
                /* Reading ISR acknowledges it and lowers INTx. */
                data[0] = __atomic_exchange_n(&p->isr, 0, __ATOMIC_SEQ_CST);
                pthread_mutex_lock(&p->msix_lock);
                set_intx(p, false);
                pthread_mutex_unlock(&p->msix_lock);
            }
        }
    } else {
        common_io(p, (uint32_t)offset, data, len, is_write);
    }
    pthread_mutex_unlock(&d->lock);
}

/* ---- notifications: ioeventfds follow the BAR ---------------------- */

static void set_ioeventfds(struct virtio_pci *p, uint64_t bar_addr, bool assign)
{
    if (p->vm_fd < 0)
        return;
    for (unsigned q = 0; q < p->dev->nqueues; q++) {
        struct kvm_ioeventfd io = {
            .addr = bar_addr + VIRTIO_PCI_NOTIFY_OFF + q * VIRTIO_PCI_NOTIFY_MULT,
            .len = p->ioeventfd_any_len ? 0 : 2,
            .fd = p->dev->queues[q].kick_fd,
            .flags = assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
        };
        if (ioctl(p->vm_fd, KVM_IOEVENTFD, &io) < 0 && assign) {
            if (io.len == 0 && q == 0) {
                /* No wildcard-length matches on this host: drivers write
                 * the 16-bit queue index. */
                p->ioeventfd_any_len = false;
                io.len = 2;
                if (ioctl(p->vm_fd, KVM_IOEVENTFD, &io) == 0)
                    continue;
            }
            log_warn("%s: KVM_IOEVENTFD failed (%s); kicks will exit to ember", p->dev->name,
                     strerror(errno));
        }
    }
}

static void bar_mapped(struct pci_function *f, unsigned bar, uint64_t addr, bool mapped)
{
    struct virtio_pci *p = f->opaque;
    if (bar != 0)
        return;
    if (mapped) {
        set_ioeventfds(p, addr, true);
        p->notify_addr = addr;
    } else if (p->notify_addr) {
        set_ioeventfds(p, p->notify_addr, false);
        p->notify_addr = 0;
    }
}

/* ---- configuration space hooks -------------------------------------- */

/* The VIRTIO_PCI_CAP_PCI_CFG window: BAR access through config space. */
static void cfg_window(struct virtio_pci *p, bool is_write)
{
    uint8_t *cap = p->fn.config + p->cfg_cap;
    uint8_t bar = cap[4];
    uint32_t offset, length;
    memcpy(&offset, cap + 8, 4);
    memcpy(&length, cap + 12, 4);
    /* In 64 bits: offset is the driver's, and offset + length may wrap 32. */
    if (bar != 0 || (length != 1 && length != 2 && length != 4) || offset % length ||
        (uint64_t)offset + length > VIRTIO_PCI_BAR_SIZE)
        return;
    virtio_pci_bar_io(p, offset, cap + 16, length, is_write);
}

/* Whether the access [offset, offset + len) touches [start, end), in 64 bits. */
static bool touches(uint32_t offset, uint32_t len, uint32_t start, uint32_t end)
{
    return offset < end && (uint64_t)offset + len > start;
}

static void config_written(struct pci_function *f, uint32_t offset, uint32_t len)
{
    struct virtio_pci *p = f->opaque;
    if (touches(offset, len, PCI_COMMAND, PCI_COMMAND + 2)) {
        /* Interrupt Disable deasserts INTx; clearing it asserts again
         * what is still pending (PCI 3.0, 6.2.2). */
        uint16_t cmd;
        memcpy(&cmd, p->fn.config + PCI_COMMAND, 2);
        pthread_mutex_lock(&p->msix_lock);
        bool pending = !msix_enabled(p) && __atomic_load_n(&p->isr, __ATOMIC_SEQ_CST);
        set_intx(p, pending && !(cmd & PCI_COMMAND_INTX_DISABLE));
        pthread_mutex_unlock(&p->msix_lock);
        /* Without Bus Master Enable a function must not touch memory:
         * stop the device (as a driver turning it off expects). */
        bool master = cmd & PCI_COMMAND_MASTER;
        if (p->bus_master && !master) {
            pthread_mutex_lock(&p->dev->lock);
            virtio_dev_stop(p->dev);
            pthread_mutex_unlock(&p->dev->lock);
        }
        p->bus_master = master;
    }
    if (touches(offset, len, (uint32_t)p->msix_cap + 2, (uint32_t)p->msix_cap + 4)) {
        pthread_mutex_lock(&p->msix_lock);
        if (msix_enabled(p))
            set_intx(p, false);
        sync_irqfds(p);
        deliver_pending(p);
        pthread_mutex_unlock(&p->msix_lock);
    }
    if (touches(offset, len, (uint32_t)p->cfg_cap + 16, (uint32_t)p->cfg_cap + 20))
        cfg_window(p, true);
}

static void config_reading(struct pci_function *f, uint32_t offset, uint32_t len)
{
    struct virtio_pci *p = f->opaque;
    if (touches(offset, len, (uint32_t)p->cfg_cap + 16, (uint32_t)p->cfg_cap + 20))
        cfg_window(p, false);
}

static const struct pci_function_ops virtio_pci_ops = {
    .config_written = config_written,
    .config_reading = config_reading,
    .bar_mapped = bar_mapped,
};

static int add_virtio_cap(struct virtio_pci *p, uint8_t type, uint32_t offset, uint32_t length,
                          uint8_t extra_len, uint32_t extra)
{
    uint8_t cap[20] = {PCI_CAP_ID_VENDOR, 0, (uint8_t)(16 + extra_len), type, 0 /* bar */};
    uint8_t wmask[20] = {0};
    memcpy(cap + 8, &offset, 4);
    memcpy(cap + 12, &length, 4);
    if (extra_len)
        memcpy(cap + 16, &extra, 4);
    if (type == CAP_PCI) {
        /* bar, offset, length and the data window are the driver's. */
        wmask[4] = 0xff;
        memset(wmask + 8, 0xff, 12);
    }
    return pci_function_add_cap(&p->fn, cap, wmask, (uint8_t)(16 + extra_len));
}

static uint32_t class_for(uint32_t device_id)
{
    switch (device_id) {
    case VIRTIO_ID_NET:
        return 0x020000; /* network controller */
    case VIRTIO_ID_BLOCK:
        return 0x018000; /* mass storage, other */
    case VIRTIO_ID_CONSOLE:
        return 0x078000; /* communication, other */
    default:
        return 0x088000; /* system peripheral, other */
    }
}

int virtio_pci_init(struct virtio_pci *p, struct virtio_dev *dev, struct pci_bus *bus,
                    struct irqchip *irqchip, int vm_fd)
{
    memset(p, 0, sizeof(*p));
    p->dev = dev;
    p->irqchip = irqchip;
    p->vm_fd = vm_fd;
    p->nvectors = dev->nqueues + 1;
    if (p->nvectors > VIRTIO_PCI_MAX_VECTORS)
        p->nvectors = VIRTIO_PCI_MAX_VECTORS;
    p->config_vector = VIRTIO_NO_VECTOR;
    p->ioeventfd_any_len = true;
    pthread_mutex_init(&p->msix_lock, NULL);
    for (unsigned v = 0; v < VIRTIO_PCI_MAX_VECTORS; v++) {
        p->vector_gsi[v] = -1;
        p->vector_fd[v] = -1;
        p->table[v].ctrl = MSIX_ENTRY_MASKED;
    }
    dev->transport = &pci_transport;
    dev->transport_opaque = p;

    /* Modern-only device: ids 0x1040 + type, revision 1 (4.1.2). */
    pci_function_init(&p->fn, dev->name, 0x1af4, (uint16_t)(0x1040 + dev->device_id),
                      class_for(dev->device_id), 1, 0x1af4, (uint16_t)dev->device_id,
                      &virtio_pci_ops, p);
    if (pci_function_add_bar(&p->fn, 0, VIRTIO_PCI_BAR_SIZE, false, virtio_pci_bar_io, p) < 0)
        return -1;
    if (add_virtio_cap(p, CAP_COMMON, VIRTIO_PCI_COMMON_OFF, CC_SIZE, 0, 0) < 0 ||
        add_virtio_cap(p, CAP_NOTIFY, VIRTIO_PCI_NOTIFY_OFF, dev->nqueues * VIRTIO_PCI_NOTIFY_MULT,
                       4, VIRTIO_PCI_NOTIFY_MULT) < 0 ||
        add_virtio_cap(p, CAP_ISR, VIRTIO_PCI_ISR_OFF, 1, 0, 0) < 0 ||
        (dev->config_size &&
         add_virtio_cap(p, CAP_DEVICE, VIRTIO_PCI_DEVICE_OFF, dev->config_size, 0, 0) < 0))
        return -1;
    p->cfg_cap = add_virtio_cap(p, CAP_PCI, 0, 0, 4, 0);
    if (p->cfg_cap < 0)
        return -1;
    uint8_t msix[12] = {PCI_CAP_ID_MSIX, 0};
    uint16_t ctrl = (uint16_t)(p->nvectors - 1);
    uint32_t table = VIRTIO_PCI_MSIX_OFF, pba = VIRTIO_PCI_PBA_OFF; /* BAR 0 */
    memcpy(msix + 2, &ctrl, 2);
    memcpy(msix + 4, &table, 4);
    memcpy(msix + 8, &pba, 4);
    uint8_t msix_wmask[12] = {0, 0, 0, (MSIX_CTRL_ENABLE | MSIX_CTRL_MASK) >> 8};
    p->msix_cap = pci_function_add_cap(&p->fn, msix, msix_wmask, sizeof(msix));
    if (p->msix_cap < 0)
        return -1;

    if (irqchip) {
        for (unsigned v = 0; v < p->nvectors; v++) {
            int gsi = irqchip_add_msi_route(irqchip, 0, 0);
            if (gsi < 0)
                return -1;
            p->vector_gsi[v] = gsi;
            p->vector_fd[v] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (p->vector_fd[v] < 0)
                return error_errno("%s: eventfd", dev->name);
            /* Bound to the GSI once the guest makes the vector deliverable (sync_irqfd). */
        }
    }
    int slot = pci_bus_add(bus, &p->fn, 0);
    if (slot < 0)
        return -1;
    p->fn.intx_gsi = pci_slot_intx_gsi((unsigned)slot);
    p->fn.config[PCI_INTERRUPT_LINE] = (uint8_t)p->fn.intx_gsi;
    return 0;
}

void virtio_pci_destroy(struct virtio_pci *p)
{
    for (unsigned v = 0; v < VIRTIO_PCI_MAX_VECTORS; v++) {
        if (p->vector_fd[v] < 0)
            continue;
        struct kvm_irqfd irqfd = {.fd = (uint32_t)p->vector_fd[v],
                                  .gsi = (uint32_t)p->vector_gsi[v],
                                  .flags = KVM_IRQFD_FLAG_DEASSIGN};
        if (p->irqfd_bound[v] && !async_teardown_active())
            ioctl(p->vm_fd, KVM_IRQFD, &irqfd);
        p->irqfd_bound[v] = false;
        close(p->vector_fd[v]);
        p->vector_fd[v] = -1;
    }
    pthread_mutex_destroy(&p->msix_lock);
}

/* ---- snapshots ------------------------------------------------------ */

void virtio_pci_save(struct virtio_pci *p, struct snapshot_writer *w)
{
    pthread_mutex_lock(&p->msix_lock);
    collect_pending(p);
    pci_function_save(&p->fn, w);
    snapshot_put_u32(w, p->nvectors);
    for (unsigned v = 0; v < p->nvectors; v++) {
        snapshot_put_u32(w, p->table[v].addr_lo);
        snapshot_put_u32(w, p->table[v].addr_hi);
        snapshot_put_u32(w, p->table[v].data);
        snapshot_put_u32(w, p->table[v].ctrl);
    }
    snapshot_put_u64(w, p->pending);
    snapshot_put_u16(w, p->config_vector);
    snapshot_put_u8(w, __atomic_load_n(&p->isr, __ATOMIC_SEQ_CST));
    snapshot_put_u8(w, p->intx_asserted);
    snapshot_put_u32(w, p->device_features_sel);
    snapshot_put_u32(w, p->driver_features_sel);
    snapshot_put_u16(w, p->queue_sel);
    pthread_mutex_unlock(&p->msix_lock);
}

int virtio_pci_restore(struct virtio_pci *p, struct snapshot_cursor *c)
{
    uint32_t nvectors;
    struct msix_entry table[VIRTIO_PCI_MAX_VECTORS];
    uint64_t pending;
    uint16_t config_vector, queue_sel;
    uint8_t isr, intx;
    uint32_t dsel, drsel;
    /* The configuration space first: it places the BAR, whose hook takes msix_lock. */
    if (pci_function_restore(&p->fn, c) < 0 || snapshot_get_u32(c, &nvectors) < 0)
        return -1;
    if (nvectors != p->nvectors)
        return error_set("%s: %u MSI-X vectors in the snapshot, %u here", p->dev->name, nvectors,
                         p->nvectors);
    for (unsigned v = 0; v < nvectors; v++) {
        if (snapshot_get_u32(c, &table[v].addr_lo) < 0 ||
            snapshot_get_u32(c, &table[v].addr_hi) < 0 || snapshot_get_u32(c, &table[v].data) < 0 ||
            snapshot_get_u32(c, &table[v].ctrl) < 0)
            return -1;
        if (table[v].ctrl & ~(uint32_t)MSIX_ENTRY_MASKED)
            return error_set("%s: MSI-X vector %u control 0x%x", p->dev->name, v, table[v].ctrl);
    }
    if (snapshot_get_u64(c, &pending) < 0 || snapshot_get_u16(c, &config_vector) < 0 ||
        snapshot_get_u8(c, &isr) < 0 || snapshot_get_u8(c, &intx) < 0 ||
        snapshot_get_u32(c, &dsel) < 0 || snapshot_get_u32(c, &drsel) < 0 ||
        snapshot_get_u16(c, &queue_sel) < 0)
        return -1;
    if (nvectors < 64 && (pending >> nvectors))
        return error_set("%s: MSI-X pending bits 0x%llx beyond %u vectors", p->dev->name,
                         (unsigned long long)pending, nvectors);
    if (config_vector != VIRTIO_NO_VECTOR && config_vector >= nvectors)
        return error_set("%s: configuration vector %u of %u", p->dev->name, config_vector,
                         nvectors);
    if (isr & ~(ISR_QUEUE | ISR_CONFIG))
        return error_set("%s: ISR 0x%x", p->dev->name, isr);
    /* The queues' vectors came with the device's common state: held to what the guest's
     * writes can leave there (checked_vector), as the configuration vector is. */
    for (unsigned q = 0; q < p->dev->nqueues; q++) {
        uint16_t vec = p->dev->queues[q].msix_vector;
        if (vec != VIRTIO_NO_VECTOR && vec >= nvectors)
            return error_set("%s: queue %u's MSI-X vector %u of %u", p->dev->name, q, vec,
                             nvectors);
    }
    pthread_mutex_lock(&p->msix_lock);
    memcpy(p->table, table, nvectors * sizeof(table[0]));
    p->pending = pending;
    p->config_vector = config_vector;
    __atomic_store_n(&p->isr, isr, __ATOMIC_SEQ_CST);
    p->device_features_sel = dsel;
    p->driver_features_sel = drsel;
    p->queue_sel = queue_sel;
    uint16_t cmd;
    memcpy(&cmd, p->fn.config + PCI_COMMAND, 2);
    p->bus_master = cmd & PCI_COMMAND_MASTER;
    int r = 0;
    if (p->irqchip) {
        for (unsigned v = 0; v < nvectors && r == 0; v++) {
            if (p->vector_gsi[v] >= 0)
                r = irqchip_stage_msi_route(p->irqchip, (unsigned)p->vector_gsi[v],
                                            (uint64_t)table[v].addr_hi << 32 | table[v].addr_lo,
                                            table[v].data);
        }
        if (r == 0)
            r = irqchip_commit_routes(p->irqchip);
        if (r == 0) {
            p->route_stale = 0;
            sync_irqfds(p);
        }
    }
    /* The line as it was: KVM's IOAPIC state comes back separately, but the sharing of the
     * line among functions is ember's. */
    p->intx_asserted = false;
    if (r == 0 && intx)
        set_intx(p, true);
    pthread_mutex_unlock(&p->msix_lock);
    return r;
}
