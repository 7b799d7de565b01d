/* The virtio PCI transport for modern devices (virtio 1.2, 4.1): common,
 * notify, ISR, device and PCI-cfg capabilities in one memory BAR, MSI-X
 * vectors delivered through KVM GSI routes and irqfds, INTx as fallback,
 * and queue notifications matched by KVM_IOEVENTFD wherever the guest
 * places the BAR. */
#ifndef EMBER_VIRTIO_PCI_H
#define EMBER_VIRTIO_PCI_H

#include "arch/x86/irqchip.h"
#include "bus/pci.h"
#include "virtio/device.h"

#include <pthread.h>

#define VIRTIO_PCI_MAX_VECTORS 33

struct msix_entry {
    uint32_t addr_lo, addr_hi, data, ctrl;
};

struct virtio_pci {
    struct virtio_dev *dev;
    struct pci_function fn;
    struct irqchip *irqchip; /* NULL in unit tests */
    int vm_fd;
    unsigned nvectors;
    pthread_mutex_t msix_lock;
    struct msix_entry table[VIRTIO_PCI_MAX_VECTORS];
    uint64_t pending; /* PBA bits */
    int vector_gsi[VIRTIO_PCI_MAX_VECTORS];
    int vector_fd[VIRTIO_PCI_MAX_VECTORS];
    bool irqfd_bound[VIRTIO_PCI_MAX_VECTORS]; /* vector_fd bound to its GSI in KVM */
    uint64_t route_stale; /* vectors whose entry changed since KVM last got their route */
    struct log_limit log_irqfd;
    uint16_t config_vector;
    uint8_t isr; /* atomic */
    bool intx_asserted;
    bool bus_master;       /* Bus Master Enable as last written */
    int msix_cap, cfg_cap; /* capability offsets */
    uint64_t notify_addr;  /* where ioeventfds are registered (0: none) */
    bool ioeventfd_any_len;
    uint32_t device_features_sel, driver_features_sel;
    uint16_t queue_sel;
    uint64_t msix_fired, msix_masked, intx_fired;
};

/* vm_fd < 0 and irqchip NULL (unit tests): interrupts are only recorded. */
int virtio_pci_init(struct virtio_pci *p, struct virtio_dev *dev, struct pci_bus *bus,
                    struct irqchip *irqchip, int vm_fd);
void virtio_pci_destroy(struct virtio_pci *p);
/* BAR layout, for tests and guests. */
#define VIRTIO_PCI_COMMON_OFF  0x0000
#define VIRTIO_PCI_ISR_OFF     0x1000
#define VIRTIO_PCI_DEVICE_OFF  0x2000
#define VIRTIO_PCI_NOTIFY_OFF  0x3000
#define VIRTIO_PCI_MSIX_OFF    0x4000
#define VIRTIO_PCI_PBA_OFF     0x5000
#define VIRTIO_PCI_BAR_SIZE    0x8000
#define VIRTIO_PCI_NOTIFY_MULT 4
void virtio_pci_bar_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);

struct snapshot_writer;
struct snapshot_cursor;
/* Snapshots: the function's configuration space, the MSI-X table and pending bits, the
 * interrupt state and the register selectors. The restore re-programs the vectors' routes
 * and places the BAR (its ioeventfds) before the device itself is restored. */
void virtio_pci_save(struct virtio_pci *p, struct snapshot_writer *w);
int virtio_pci_restore(struct virtio_pci *p, struct snapshot_cursor *c);

#endif
