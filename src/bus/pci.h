/* A PCI bus 0 with a host bridge: configuration space through ports
 * 0xcf8/0xcfc (type 1 access), BARs that move when the guest reprograms
 * them, capability lists, and legacy INTx lines. Functions supply their
 * config space image and react to writes through hooks. */
#ifndef EMBER_BUS_PCI_H
#define EMBER_BUS_PCI_H

#include "bus/bus.h"
#include "util/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define PCI_SLOTS               32
#define PCI_CONFIG_SIZE         256
#define PCI_NUM_BARS            6
#define PCI_CONFIG_ADDRESS_PORT 0xcf8
#define PCI_CONFIG_DATA_PORT    0xcfc

/* Standard header offsets. */
#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_REVISION       0x08
#define PCI_CLASS_PROG     0x09
#define PCI_HEADER_TYPE    0x0e
#define PCI_BAR0           0x10
#define PCI_SUBSYS_VENDOR  0x2c
#define PCI_SUBSYS_ID      0x2e
#define PCI_CAP_PTR        0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN  0x3d

#define PCI_COMMAND_MEMORY       0x2
#define PCI_COMMAND_MASTER       0x4
#define PCI_COMMAND_INTX_DISABLE 0x400
#define PCI_STATUS_CAP_LIST      0x10
#define PCI_STATUS_INTERRUPT     0x08

#define PCI_CAP_ID_MSIX   0x11
#define PCI_CAP_ID_VENDOR 0x09

struct pci_function;

struct pci_bar {
    uint64_t addr; /* as programmed */
    uint64_t size; /* power of two; 0: unused */
    bool is64;
    bool mapped; /* registered on the MMIO bus at addr */
    uint64_t mapped_addr;
    bus_io_fn fn;
    void *opaque;
};

struct pci_function_ops {
    /* After a config write lands in config[] (offset within a capability
     * or anywhere the function made writable). */
    void (*config_written)(struct pci_function *f, uint32_t offset, uint32_t len);
    /* Before a config read, to refresh config[] (e.g. the virtio PCI cfg
     * window). */
    void (*config_reading)(struct pci_function *f, uint32_t offset, uint32_t len);
    /* A BAR appeared at addr or went away (mapped == false). */
    void (*bar_mapped)(struct pci_function *f, unsigned bar, uint64_t addr, bool mapped);
};

struct pci_function {
    struct pci_bus *bus;
    unsigned slot;
    char name[24];
    uint8_t config[PCI_CONFIG_SIZE];
    uint8_t wmask[PCI_CONFIG_SIZE]; /* bits the guest may change */
    struct pci_bar bars[PCI_NUM_BARS];
    uint8_t next_cap; /* where the next capability goes */
    const struct pci_function_ops *ops;
    void *opaque;
    unsigned intx_gsi;
};

struct pci_bus {
    pthread_mutex_t lock; /* config space accesses */
    uint32_t config_address;
    struct pci_function *slots[PCI_SLOTS];
    struct pci_function host_bridge;
    struct bus *mmio;
    uint64_t mmio_next, mmio_end; /* where ember places BARs */
    struct log_limit log_bar;     /* BARs the guest placed where they cannot go */
};

int pci_bus_init(struct pci_bus *pb, struct bus *pio, struct bus *mmio, uint64_t window_start,
                 uint64_t window_end);
void pci_bus_destroy(struct pci_bus *pb);

/* Prepares a function's header; the caller then adds BARs and caps. */
void pci_function_init(struct pci_function *f, const char *name, uint16_t vendor, uint16_t device,
                       uint32_t class_code, uint8_t revision, uint16_t subsys_vendor,
                       uint16_t subsys_id, const struct pci_function_ops *ops, void *opaque);
/* A memory BAR of size bytes served by fn; ember assigns its address. */
int pci_function_add_bar(struct pci_function *f, unsigned bar, uint64_t size, bool is64,
                         bus_io_fn fn, void *opaque);
/* Appends a capability of len bytes (data[0] is its id); returns its
 * offset or -1. wmask marks guest-writable bits (may be NULL). */
int pci_function_add_cap(struct pci_function *f, const uint8_t *data, const uint8_t *wmask,
                         uint8_t len);
/* Plugs the function into the next free slot, with INTA on gsi. */
int pci_bus_add(struct pci_bus *pb, struct pci_function *f, unsigned intx_gsi);
/* IOAPIC input for INTA of a slot: pins 16-23, swizzled by slot. */
unsigned pci_slot_intx_gsi(unsigned slot);

/* Config space access as the 0xcf8/0xcfc handlers perform it (for tests). */
uint32_t pci_config_read(struct pci_bus *pb, unsigned slot, uint32_t offset, uint32_t len);
void pci_config_write(struct pci_bus *pb, unsigned slot, uint32_t offset, uint32_t len,
                      uint32_t value);

struct snapshot_writer;
struct snapshot_cursor;
/* Snapshots: the configuration space as the guest left it and the BAR addresses. A restore
 * goes into a function built the same way: bits the guest cannot write must match (else it is
 * another function), the BARs are placed again (their hooks run: ioeventfds follow). */
void pci_function_save(const struct pci_function *f, struct snapshot_writer *w);
int pci_function_restore(struct pci_function *f, struct snapshot_cursor *c);

#endif
