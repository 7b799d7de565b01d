/*
 * A small virtio 1.2 driver library for the test guests: device discovery (virtio-mmio from the
 * command line, virtio-pci by scanning bus 0), status and feature negotiation, split virtqueues
 * with indirect descriptors and event index, interrupts (MSI-X or an IOAPIC pin) or polling,
 * and device configuration reads under config_generation.
 *
 * Everything is identity-mapped and user-accessible, so the queue functions (virtq_*) also run
 * at CPL3; the device functions (virtio_*) touch PCI configuration ports and run at CPL0 only.
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "guest.h"

/* Device status (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER      0x02
#define VIRTIO_STATUS_DRIVER_OK   0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

/* Reserved feature bits (6). */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX     29
#define VIRTIO_F_VERSION_1     32
#define VIRTIO_BIT(n)          (UINT64_C(1) << (n))

/* Device types (5). */
#define VIRTIO_ID_BLOCK   2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_ID_RNG     4

/* Split virtqueue layout (2.7). */
#define VIRTQ_DESC_F_NEXT          1
#define VIRTQ_DESC_F_WRITE         2
#define VIRTQ_DESC_F_INDIRECT      4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY     1

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct virtq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[]; /* then used_event */
};

struct virtq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct virtq_used {
    uint16_t flags;
    uint16_t idx;
    struct virtq_used_elem ring[]; /* then avail_event */
};

#define VIRTQ_MAX_SIZE      256 /* the largest queue this driver sets up */
#define VIRTQ_INDIRECT_MAX  32  /* entries of one indirect table */
#define VIRTIO_MAX_DEVICES  24
#define VIRTIO_MAX_QUEUES   4
#define VIRTIO_NO_VECTOR    0xffff
#define VIRTIO_VECTOR_FIRST 0x50 /* IDT vectors: 8 per device, config/line first */
#define VIRTIO_VECTOR_INTX  0x4f /* virtio-pci INTx, one device at a time */

enum virtio_transport { VIRTIO_MMIO, VIRTIO_PCI };

struct virtio_device;

/* One buffer of a request: guest-physical address, length, device-writable or not. */
struct vbuf {
    uint64_t addr;
    uint32_t len;
    bool write;
};

struct virtq {
    struct virtio_device *dev;
    uint16_t index;
    uint16_t size; /* 0: not set up */
    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    uint64_t notify_addr; /* the register a kick writes */
    uint32_t notify_value;
    unsigned notify_width; /* bytes: 2 (pci) or 4 (mmio) */
    bool event_idx;        /* negotiated: the rings carry used_event/avail_event */
    bool use_indirect;     /* put multi-buffer requests in indirect tables */
    bool interrupts;       /* the driver asked for used-buffer interrupts */
    uint16_t free_head, num_free;
    uint16_t avail_idx;          /* the next avail->idx */
    uint16_t kicked_idx;         /* avail_idx at the last kick decision */
    uint16_t last_used;          /* used entries consumed */
    void **token;                /* per head */
    uint16_t *chain_len;         /* descriptors per head, 1 for an indirect request */
    struct virtq_desc *indirect; /* VIRTQ_INDIRECT_MAX entries per head */
    void *memory;                /* rings and per-head arrays, VIRTQ_MAX_SIZE capacity */
    uint16_t vector;             /* MSI-X table entry or VIRTIO_NO_VECTOR */
    volatile uint64_t irq_count; /* interrupts that reached this queue's handler */
    uint64_t irq_seen;           /* irq_count when virtq_wait last returned */
    uint64_t kicks;              /* notifications written */
};

struct virtio_device {
    enum virtio_transport transport;
    uint32_t device_id;
    unsigned index; /* in virtio_devices[] */
    char name[32];
    /* virtio-mmio */
    uint64_t mmio_base;
    unsigned irq;
    /* virtio-pci */
    uint8_t slot;
    uint16_t pci_device_id;
    uint64_t common, isr, device_cfg, notify_base;
    uint32_t notify_mult;
    uint64_t msix_table, msix_pba;
    uint16_t msix_entries;
    uint8_t msix_cap;
    uint8_t cfg_cap;       /* VIRTIO_PCI_CAP_PCI_CFG, 0 if none */
    uint8_t struct_bar[5]; /* BAR of each structure type (1 common ... 4 device) */
    uint8_t msix_bar[2];   /* BARs of the MSI-X table and PBA */
    uint64_t bar_addr[6];  /* as placed */
    volatile uint64_t intx_irqs;
    /* negotiated state */
    uint64_t device_features, features;
    bool irq_ready; /* IOAPIC route or MSI-X vectors in place */
    uint8_t vector_base;
    uint16_t config_vector;
    volatile uint64_t config_irqs; /* configuration change interrupts */
    volatile uint64_t line_irqs;   /* virtio-mmio: interrupts on the line */
    volatile uint32_t last_isr;
    struct virtq queues[VIRTIO_MAX_QUEUES];
    uint64_t bar_size[6]; /* virtio-pci: as sized at discovery */
};

extern struct virtio_device virtio_devices[VIRTIO_MAX_DEVICES];
extern unsigned virtio_device_count;

/* Finds every device (once): virtio_mmio.device= entries, then PCI bus 0. */
unsigned virtio_discover(void);
/* The nth device of a type, or NULL. */
struct virtio_device *virtio_find(uint32_t device_id, unsigned nth);

/* Waits up to timeout_us for the device to set DEVICE_NEEDS_RESET; *status is the last value
 * read. */
bool virtio_wait_needs_reset(struct virtio_device *d, uint64_t timeout_us, uint8_t *status);
/* Status register and reset; a reset waits until the device reads back 0. */
uint8_t virtio_get_status(struct virtio_device *d);
void virtio_set_status(struct virtio_device *d, uint8_t status);
bool virtio_reset(struct virtio_device *d);

/*
 * Reset, ACKNOWLEDGE, DRIVER, then the features: VERSION_1 plus those of `wanted` that the
 * device offers; FEATURES_OK must stick. With interrupts, vectors or the IOAPIC pin are set up
 * too (config interrupts count in d->config_irqs). Returns false, with a diagnostic, on failure.
 */
bool virtio_begin(struct virtio_device *d, uint64_t wanted, bool interrupts);
/* Reset, ACKNOWLEDGE, DRIVER, then exactly `features` (whatever the device offered) and
 * FEATURES_OK: whether the device kept FEATURES_OK. For testing refusals. */
bool virtio_try_features(struct virtio_device *d, uint64_t features);
/* Sets up queue q with `size` entries (0: the device's maximum, at most VIRTQ_MAX_SIZE), in
 * memory the library owns; interrupts for it only if asked. */
bool virtio_queue_setup(struct virtio_device *d, unsigned q, uint16_t size, bool interrupts);
/* Programs queue q with arbitrary ring addresses and size (for misbehaving on purpose). */
bool virtio_queue_setup_raw(struct virtio_device *d, unsigned q, uint16_t size, uint64_t desc,
                            uint64_t avail, uint64_t used);
/* Programs queue q's size, ring addresses and (virtio-pci) MSI-X vector without enabling it:
 * a queue the device must leave alone. d->queues[q] is not touched. */
bool virtio_queue_program(struct virtio_device *d, unsigned q, uint16_t size, uint64_t desc,
                          uint64_t avail, uint64_t used, uint16_t vector);
/* Notifies queue index q whether or not it is set up, or exists: virtio-mmio writes q to
 * QueueNotify; virtio-pci writes q where the queue's notification goes (for an index beyond
 * num_queues, where notify_off = q would put it). False when that is outside the BAR. */
bool virtio_notify_index(struct virtio_device *d, unsigned q);

/* Queue registers as the driver reads them back. virtio-mmio has only QueueReady to read
 * (enable); its other queue registers are write-only, so the rest stays 0 there. */
struct virtio_queue_regs {
    uint16_t size, enable, vector;
    uint64_t desc, driver, device;
};
void virtio_queue_read_regs(struct virtio_device *d, unsigned q, struct virtio_queue_regs *r);
/* Writes size, the three addresses and enable of queue q as given (enable 0 included, which
 * a driver must not write), whatever state the device is in; not the vector. */
void virtio_queue_write_regs(struct virtio_device *d, unsigned q,
                             const struct virtio_queue_regs *r);
/* virtio-pci: writes queue q's MSI-X vector and returns what reads back. */
uint16_t virtio_queue_set_vector(struct virtio_device *d, unsigned q, uint16_t vector);

/* Maximum size the device allows for queue q (0: no such queue). */
uint16_t virtio_queue_max(struct virtio_device *d, unsigned q);
void virtio_driver_ok(struct virtio_device *d);
bool virtio_has(const struct virtio_device *d, unsigned feature);

/* Device configuration space, read consistently (config_generation). */
uint32_t virtio_config_generation(struct virtio_device *d);
void virtio_config_read(struct virtio_device *d, uint32_t offset, void *buf, uint32_t len);
uint8_t virtio_config_read8(struct virtio_device *d, uint32_t offset);
uint16_t virtio_config_read16(struct virtio_device *d, uint32_t offset);
uint32_t virtio_config_read32(struct virtio_device *d, uint32_t offset);
uint64_t virtio_config_read64(struct virtio_device *d, uint32_t offset);

/* ---- virtio-pci specifics (CPL0) ----------------------------------------------------------- */

/* Moves a BAR (decode off, new address, decode on); every structure in it follows. */
bool virtio_pci_move_bar(struct virtio_device *d, unsigned bar, uint64_t addr);
/* A BAR read through the VIRTIO_PCI_CAP_PCI_CFG window in configuration space. */
uint32_t virtio_pci_cfg_window_read(struct virtio_device *d, unsigned bar, uint32_t offset,
                                    unsigned len);
/* MSI-X: (un)masks table entry i; whether its PBA bit is set; the function mask. */
void virtio_msix_mask(struct virtio_device *d, unsigned entry, bool masked);
bool virtio_msix_pending(struct virtio_device *d, unsigned entry);
void virtio_msix_function_mask(struct virtio_device *d, bool masked);
/* Turns MSI-X off and takes INTx on IOAPIC pin `pin` (level, active low): queue interrupts
 * count in each queue's irq_count and d->intx_irqs; or turns MSI-X back on. */
bool virtio_pci_use_intx(struct virtio_device *d, bool intx, unsigned pin);
uint8_t virtio_pci_interrupt_line(struct virtio_device *d);
/* The Interrupt Disable and Bus Master Enable bits of the PCI command register. */
void virtio_pci_intx_disable(struct virtio_device *d, bool disable);
void virtio_pci_bus_master(struct virtio_device *d, bool enable);

/* ---- queues (CPL0 or CPL3) ----------------------------------------------------------------- */

/* Adds one request; returns its head, or -1 if the queue has no room. Multi-buffer requests
 * go into an indirect table when q->use_indirect. Publishes it in the avail ring. */
int virtq_add(struct virtq *q, const struct vbuf *bufs, unsigned count, void *token);
/* Notifies the device if it asked for it (EVENT_IDX or NO_NOTIFY); returns whether it did. */
bool virtq_kick(struct virtq *q);
/* Notifies the device whatever it asked for. */
void virtq_notify(struct virtq *q);
/* Takes the next used entry: its token (NULL if none), *len the bytes written. */
void *virtq_get(struct virtq *q, uint32_t *len);
bool virtq_has_used(const struct virtq *q);
/* Asks for (or suppresses) used-buffer interrupts; after enabling, true when entries arrived
 * meanwhile. */
bool virtq_enable_interrupts(struct virtq *q, bool enable);
/* Polling mode: used_event (or NO_INTERRUPT) set once just behind last_used, where a device
 * reaches it again only after 65536 entries. */
void virtq_suppress_interrupts(struct virtq *q);
/* Waits until a used entry is there; with interrupts, also for an interrupt newer than the
 * last wait. False on timeout. CPL0 only with interrupts (it enables them while waiting). */
bool virtq_wait(struct virtq *q, uint64_t timeout_us);
/* Interrupts on until q->irq_count differs from `since` (true) or the timeout (false), CPL0:
 * interrupts otherwise arrive only while something waits. */
bool virtq_wait_irq(struct virtq *q, uint64_t since, uint64_t timeout_us);
/* Interrupts on for `us` microseconds, so that pending ones arrive (CPL0). */
void virtio_irq_window(uint64_t us);
/* Waits for a configuration interrupt newer than `seen` (CPL0). */
bool virtio_wait_config_irq(struct virtio_device *d, uint64_t seen, uint64_t timeout_us);

/* A request made while queue q's MSI-X vector is masked (virtio-pci), as the spec has it: the
 * device answers it, no interrupt comes while masked, the vector's PBA bit is set, and
 * unmasking delivers the interrupt and clears the bit. The fields say what happened (done:
 * answered with token in time); ok when all of it did. CPL0. */
struct msix_masked_request {
    bool done, quiet, pending, delivered, cleared;
};
bool virtq_msix_masked_request(struct virtio_device *d, struct virtq *q, const struct vbuf *bufs,
                               unsigned count, void *token, uint64_t timeout_us,
                               struct msix_masked_request *r);

/* Submits bufs, kicks, waits for it, returns the bytes written (or -1 on timeout/mix-up). */
int64_t virtq_transfer(struct virtq *q, const struct vbuf *bufs, unsigned count,
                       uint64_t timeout_us);

#endif
