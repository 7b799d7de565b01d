#include "bus/pci.h"

#include "snapshot/format.h"

#include "util/error.h"
#include "util/log.h"

#include <stdio.h>
#include <string.h>

#define BAR_MEM_TYPE_64 0x4

static void put16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint16_t get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

unsigned pci_slot_intx_gsi(unsigned slot)
{
    return 16 + (slot % 8);
}

void pci_function_init(struct pci_function *f, const char *name, uint16_t vendor, uint16_t device,
                       uint32_t class_code, uint8_t revision, uint16_t subsys_vendor,
                       uint16_t subsys_id, const struct pci_function_ops *ops, void *opaque)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name);
    f->ops = ops;
    f->opaque = opaque;
    uint8_t *c = f->config;
    put16(c + PCI_VENDOR_ID, vendor);
    put16(c + PCI_DEVICE_ID, device);
    c[PCI_REVISION] = revision;
    c[PCI_CLASS_PROG] = (uint8_t)class_code;
    c[PCI_CLASS_PROG + 1] = (uint8_t)(class_code >> 8);
    c[PCI_CLASS_PROG + 2] = (uint8_t)(class_code >> 16);
    c[PCI_HEADER_TYPE] = 0;
    put16(c + PCI_SUBSYS_VENDOR, subsys_vendor);
    put16(c + PCI_SUBSYS_ID, subsys_id);
    /* Command: memory decode, bus mastering, INTx disable are the guest's. */
    put16(f->wmask + PCI_COMMAND,
          PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    f->wmask[PCI_INTERRUPT_LINE] = 0xff;
    f->wmask[0x0c] = 0xff; /* cache line size */
    f->wmask[0x0d] = 0xff; /* latency timer */
    f->next_cap = 0x40;
}

int pci_function_add_bar(struct pci_function *f, unsigned bar, uint64_t size, bool is64,
                         bus_io_fn fn, void *opaque)
{
    if (bar >= PCI_NUM_BARS || (is64 && bar + 1 >= PCI_NUM_BARS) || size < 16 ||
        (size & (size - 1)))
        return error_set("%s: invalid BAR %u of size 0x%llx", f->name, bar,
                         (unsigned long long)size);
    f->bars[bar] = (struct pci_bar){.size = size, .is64 = is64, .fn = fn, .opaque = opaque};
    return 0;
}

int pci_function_add_cap(struct pci_function *f, const uint8_t *data, const uint8_t *wmask,
                         uint8_t len)
{
    unsigned off = (f->next_cap + 3u) & ~3u;
    if (len < 2 || off + len > PCI_CONFIG_SIZE)
        return error_set("%s: no room for a capability of %u bytes", f->name, len);
    memcpy(f->config + off, data, len);
    if (wmask)
        memcpy(f->wmask + off, wmask, len);
    /* Link it at the end of the list. */
    if (!f->config[PCI_CAP_PTR]) {
        f->config[PCI_CAP_PTR] = (uint8_t)off;
    } else {
        unsigned p = f->config[PCI_CAP_PTR];
        while (f->config[p + 1])
            p = f->config[p + 1];
        f->config[p + 1] = (uint8_t)off;
    }
    f->config[off + 1] = 0;
    put16(f->config + PCI_STATUS, get16(f->config + PCI_STATUS) | PCI_STATUS_CAP_LIST);
    f->next_cap = (uint8_t)(off + len);
    return (int)off;
}

/* Writes a BAR's address bits into config space. */
static void store_bar(struct pci_function *f, unsigned i)
{
    struct pci_bar *b = &f->bars[i];
    uint32_t lo = (uint32_t)b->addr | (b->is64 ? BAR_MEM_TYPE_64 : 0);
    put32(f->config + PCI_BAR0 + 4 * i, lo);
    if (b->is64)
        put32(f->config + PCI_BAR0 + 4 * (i + 1), (uint32_t)(b->addr >> 32));
}

static void update_mappings(struct pci_function *f)
{
    bool decode = get16(f->config + PCI_COMMAND) & PCI_COMMAND_MEMORY;
    struct bus *mmio = f->bus->mmio;
    for (unsigned i = 0; i < PCI_NUM_BARS; i++) {
        struct pci_bar *b = &f->bars[i];
        if (!b->size)
            continue;
        /* A BAR being sized reads as all-ones address: not a place. */
        bool want = decode && b->addr != 0 && (b->addr & ~(b->size - 1)) == b->addr &&
                    b->addr + b->size > b->addr && (b->is64 || b->addr + b->size <= (1ULL << 32));
        if (b->mapped && (!want || b->mapped_addr != b->addr)) {
            bus_unregister(mmio, b->mapped_addr, b->opaque);
            b->mapped = false;
            if (f->ops && f->ops->bar_mapped)
                f->ops->bar_mapped(f, i, b->mapped_addr, false);
        }
        if (want && !b->mapped) {
            if (bus_register(mmio, b->addr, b->size, b->fn, b->opaque, f->name) < 0) {
                log_limited(&f->bus->log_bar, LOG_WARN, "%s: BAR %u at 0x%llx not mapped: %s",
                            f->name, i, (unsigned long long)b->addr, error_get());
                continue;
            }
            b->mapped = true;
            b->mapped_addr = b->addr;
            if (f->ops && f->ops->bar_mapped)
                f->ops->bar_mapped(f, i, b->addr, true);
        }
    }
}

static bool bar_register(struct pci_function *f, uint32_t offset, unsigned *bar, bool *high)
{
    if (offset < PCI_BAR0 || offset >= PCI_BAR0 + 4 * PCI_NUM_BARS)
        return false;
    unsigned i = (offset - PCI_BAR0) / 4;
    if (i > 0 && f->bars[i - 1].is64 && f->bars[i - 1].size) {
        *bar = i - 1;
        *high = true;
        return true;
    }
    *bar = i;
    *high = false;
    return true;
}

static void write_bar(struct pci_function *f, unsigned i, bool high, uint32_t value)
{
    struct pci_bar *b = &f->bars[i];
    if (!b->size)
        return; /* unimplemented BARs read as 0 and ignore writes */
    if (high)
        b->addr = (b->addr & 0xffffffffULL) | ((uint64_t)value << 32);
    else
        b->addr = (b->addr & ~0xffffffffULL) | (value & ~0xfULL);
    /* Only address bits above the size are writable: sizing works. */
    b->addr &= ~(b->size - 1);
    if (!b->is64)
        b->addr &= 0xffffffffULL;
    store_bar(f, i);
}

/* Whether [offset, offset + len) is a 1-, 2- or 4-byte access inside configuration space. */
static bool config_access_ok(uint32_t offset, uint32_t len)
{
    return (len == 1 || len == 2 || len == 4) && (uint64_t)offset + len <= PCI_CONFIG_SIZE;
}

uint32_t pci_config_read(struct pci_bus *pb, unsigned slot, uint32_t offset, uint32_t len)
{
    if (!config_access_ok(offset, len))
        return 0xffffffffu;
    if (slot >= PCI_SLOTS || !pb->slots[slot])
        return 0xffffffffu >> (32 - 8 * len);
    struct pci_function *f = pb->slots[slot];
    if (f->ops && f->ops->config_reading)
        f->ops->config_reading(f, offset, len);
    uint32_t v = 0;
    memcpy(&v, f->config + offset, len);
    return v;
}

void pci_config_write(struct pci_bus *pb, unsigned slot, uint32_t offset, uint32_t len,
                      uint32_t value)
{
    if (slot >= PCI_SLOTS || !pb->slots[slot] || !config_access_ok(offset, len))
        return;
    struct pci_function *f = pb->slots[slot];
    unsigned bar;
    bool high;
    if (bar_register(f, offset, &bar, &high)) {
        if (len == 4 && offset % 4 == 0) {
            write_bar(f, bar, high, value);
            update_mappings(f);
        }
        return;
    }
    uint16_t old_command = get16(f->config + PCI_COMMAND);
    for (uint32_t i = 0; i < len; i++) {
        uint8_t m = f->wmask[offset + i], b = (uint8_t)(value >> (8 * i));
        f->config[offset + i] = (uint8_t)((f->config[offset + i] & ~m) | (b & m));
    }
    if (offset < PCI_COMMAND + 2 && (uint64_t)offset + len > PCI_COMMAND &&
        (get16(f->config + PCI_COMMAND) ^ old_command) & PCI_COMMAND_MEMORY)
        update_mappings(f);
    if (f->ops && f->ops->config_written)
        f->ops->config_written(f, offset, len);
}

static void address_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct pci_bus *pb = opaque;
    pthread_mutex_lock(&pb->lock);
    if (offset == 0 && len == 4) {
        if (is_write)
            memcpy(&pb->config_address, data, 4);
        else
            memcpy(data, &pb->config_address, 4);
    } else if (!is_write) {
        memset(data, 0xff, len);
    }
    pthread_mutex_unlock(&pb->lock);
}

static void data_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct pci_bus *pb = opaque;
    pthread_mutex_lock(&pb->lock);
    uint32_t a = pb->config_address;
    unsigned bus = (a >> 16) & 0xff, slot = (a >> 11) & 0x1f, fn = (a >> 8) & 0x7;
    uint32_t reg = (a & 0xfc) + (uint32_t)offset;
    bool ok = (a & 0x80000000u) && bus == 0 && fn == 0 && offset + len <= 4;
    if (is_write) {
        uint32_t v = 0;
        memcpy(&v, data, len);
        if (ok)
            pci_config_write(pb, slot, reg, len, v);
    } else {
        uint32_t v = ok ? pci_config_read(pb, slot, reg, len) : 0xffffffffu;
        memcpy(data, &v, len);
    }
    pthread_mutex_unlock(&pb->lock);
}

int pci_bus_init(struct pci_bus *pb, struct bus *pio, struct bus *mmio, uint64_t window_start,
                 uint64_t window_end)
{
    memset(pb, 0, sizeof(*pb));
    pthread_mutex_init(&pb->lock, NULL);
    pb->mmio = mmio;
    pb->mmio_next = window_start;
    pb->mmio_end = window_end;
    /* 00:00.0, a host bridge: guests look for one before trusting type 1
     * configuration access. */
    pci_function_init(&pb->host_bridge, "pci-host", 0x8086, 0x0d57, 0x060000, 0, 0, 0, NULL, NULL);
    pb->host_bridge.bus = pb;
    pb->slots[0] = &pb->host_bridge;
    if (bus_register(pio, PCI_CONFIG_ADDRESS_PORT, 4, address_io, pb, "pci config address") < 0 ||
        bus_register(pio, PCI_CONFIG_DATA_PORT, 4, data_io, pb, "pci config data") < 0)
        return -1;
    return 0;
}

void pci_bus_destroy(struct pci_bus *pb)
{
    pthread_mutex_destroy(&pb->lock);
}

int pci_bus_add(struct pci_bus *pb, struct pci_function *f, unsigned intx_gsi)
{
    unsigned slot;
    for (slot = 1; slot < PCI_SLOTS && pb->slots[slot]; slot++)
        ;
    if (slot == PCI_SLOTS)
        return error_set("no free PCI slot for %s", f->name);
    f->bus = pb;
    f->slot = slot;
    f->intx_gsi = intx_gsi;
    f->config[PCI_INTERRUPT_PIN] = 1; /* INTA */
    f->config[PCI_INTERRUPT_LINE] = (uint8_t)intx_gsi;
    /* Place the BARs as firmware would; decoding stays off until the
     * guest's driver turns it on. */
    for (unsigned i = 0; i < PCI_NUM_BARS; i++) {
        struct pci_bar *b = &f->bars[i];
        if (!b->size)
            continue;
        uint64_t addr = (pb->mmio_next + b->size - 1) & ~(b->size - 1);
        if (addr + b->size > pb->mmio_end)
            return error_set("PCI MMIO window full placing %s", f->name);
        b->addr = addr;
        pb->mmio_next = addr + b->size;
        store_bar(f, i);
    }
    pb->slots[slot] = f;
    return (int)slot;
}

void pci_function_save(const struct pci_function *f, struct snapshot_writer *w)
{
    snapshot_put_bytes(w, f->config, PCI_CONFIG_SIZE);
    for (unsigned i = 0; i < PCI_NUM_BARS; i++)
        snapshot_put_u64(w, f->bars[i].addr);
}

int pci_function_restore(struct pci_function *f, struct snapshot_cursor *c)
{
    uint8_t config[PCI_CONFIG_SIZE];
    uint64_t bars[PCI_NUM_BARS];
    if (snapshot_get_bytes(c, config, sizeof(config)) < 0)
        return -1;
    for (unsigned i = 0; i < PCI_NUM_BARS; i++) {
        if (snapshot_get_u64(c, &bars[i]) < 0)
            return -1;
    }
    for (unsigned off = 0; off < PCI_CONFIG_SIZE; off++) {
        /* The BARs come below; the status register's interrupt bit is the device's. */
        bool bar = off >= PCI_BAR0 && off < PCI_BAR0 + 4 * PCI_NUM_BARS;
        uint8_t fixed = (uint8_t)~f->wmask[off];
        if (off == PCI_STATUS)
            fixed &= (uint8_t)~PCI_STATUS_INTERRUPT;
        if (!bar && (config[off] ^ f->config[off]) & fixed)
            return error_set("%s: configuration byte 0x%02x is 0x%02x in the snapshot, 0x%02x "
                             "here (another device)",
                             f->name, off, config[off], f->config[off]);
    }
    for (unsigned i = 0; i < PCI_NUM_BARS; i++) {
        const struct pci_bar *b = &f->bars[i];
        if (!b->size ? bars[i] != 0
                     : (bars[i] & (b->size - 1)) != 0 || (!b->is64 && bars[i] > 0xffffffffULL))
            return error_set("%s: BAR %u address 0x%llx does not fit the BAR", f->name, i,
                             (unsigned long long)bars[i]);
    }
    memcpy(f->config, config, sizeof(config));
    for (unsigned i = 0; i < PCI_NUM_BARS; i++) {
        if (!f->bars[i].size)
            continue;
        f->bars[i].addr = bars[i];
        store_bar(f, i);
    }
    update_mappings(f);
    return 0;
}
