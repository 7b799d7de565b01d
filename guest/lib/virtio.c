/*
 * Virtio driver core: discovery, negotiation, interrupts, queues. Written from the virtio 1.2
 * specification: 2.1 status, 2.7 split virtqueues, 4.1 virtio-pci, 4.2 virtio-mmio.
 */
#include "virtio.h"

#include "io.h"

struct virtio_device virtio_devices[VIRTIO_MAX_DEVICES];
unsigned virtio_device_count;

/* ---- virtio-mmio registers (4.2.2) --------------------------------------------------------- */

#define MMIO_MAGIC_VALUE         0x000
#define MMIO_VERSION             0x004
#define MMIO_DEVICE_ID           0x008
#define MMIO_DEVICE_FEATURES     0x010
#define MMIO_DEVICE_FEATURES_SEL 0x014
#define MMIO_DRIVER_FEATURES     0x020
#define MMIO_DRIVER_FEATURES_SEL 0x024
#define MMIO_QUEUE_SEL           0x030
#define MMIO_QUEUE_NUM_MAX       0x034
#define MMIO_QUEUE_NUM           0x038
#define MMIO_QUEUE_READY         0x044
#define MMIO_QUEUE_NOTIFY        0x050
#define MMIO_INTERRUPT_STATUS    0x060
#define MMIO_INTERRUPT_ACK       0x064
#define MMIO_STATUS              0x070
#define MMIO_QUEUE_DESC_LOW      0x080
#define MMIO_QUEUE_DESC_HIGH     0x084
#define MMIO_QUEUE_DRIVER_LOW    0x090
#define MMIO_QUEUE_DRIVER_HIGH   0x094
#define MMIO_QUEUE_DEVICE_LOW    0x0a0
#define MMIO_QUEUE_DEVICE_HIGH   0x0a4
#define MMIO_CONFIG_GENERATION   0x0fc
#define MMIO_CONFIG              0x100
#define MMIO_MAGIC               0x74726976 /* "virt" */

#define MMIO_INT_USED   1
#define MMIO_INT_CONFIG 2

/* ---- virtio-pci common configuration (4.1.4.3) ------------------------------------------- */

#define PCI_DEVICE_FEATURE_SELECT 0x00
#define PCI_DEVICE_FEATURE        0x04
#define PCI_DRIVER_FEATURE_SELECT 0x08
#define PCI_DRIVER_FEATURE        0x0c
#define PCI_CONFIG_MSIX_VECTOR    0x10
#define PCI_NUM_QUEUES            0x12
#define PCI_DEVICE_STATUS         0x14
#define PCI_CONFIG_GENERATION     0x15
#define PCI_QUEUE_SELECT          0x16
#define PCI_QUEUE_SIZE            0x18
#define PCI_QUEUE_MSIX_VECTOR     0x1a
#define PCI_QUEUE_ENABLE          0x1c
#define PCI_QUEUE_NOTIFY_OFF      0x1e
#define PCI_QUEUE_DESC            0x20
#define PCI_QUEUE_DRIVER          0x28
#define PCI_QUEUE_DEVICE          0x30

/* Capability types (4.1.4). */
#define PCI_CAP_COMMON  1
#define PCI_CAP_NOTIFY  2
#define PCI_CAP_ISR     3
#define PCI_CAP_DEVICE  4
#define PCI_CAP_PCI_CFG 5

/* ---- PCI configuration space (type 1 access, bus 0) ---------------------------------------- */

#define PCI_ADDRESS_PORT     0xcf8
#define PCI_DATA_PORT        0xcfc
#define PCI_COMMAND          0x04
#define PCI_STATUS           0x06
#define PCI_BAR0             0x10
#define PCI_SUBSYSTEM_ID     0x2e
#define PCI_INTERRUPT_LINE   0x3c
#define PCI_CAP_PTR          0x34
#define PCI_CMD_MEMORY       0x0002
#define PCI_CMD_MASTER       0x0004
#define PCI_CMD_INTX_DISABLE 0x0400
#define PCI_STATUS_CAPS      0x0010
#define PCI_CAP_ID_VENDOR    0x09
#define PCI_CAP_ID_MSIX      0x11
#define MSIX_ENABLE          0x8000
#define MSIX_FUNCTION_MASK   0x4000
#define PCI_VENDOR_VIRTIO    0x1af4
/* Where BARs that read 0 (or lie above 4 GiB, beyond our page tables) get placed. */
#define PCI_ASSIGN_START 0xc0000000ull
#define PCI_ASSIGN_END   0xd0000000ull

static void pci_select(uint8_t slot, uint32_t offset)
{
    outl(PCI_ADDRESS_PORT, 0x80000000u | (uint32_t)slot << 11 | (offset & 0xfc));
}

static uint32_t pci_read32(uint8_t slot, uint32_t offset)
{
    pci_select(slot, offset);
    return inl(PCI_DATA_PORT);
}

static uint16_t pci_read16(uint8_t slot, uint32_t offset)
{
    pci_select(slot, offset);
    return inw((uint16_t)(PCI_DATA_PORT + (offset & 2)));
}

static uint8_t pci_read8(uint8_t slot, uint32_t offset)
{
    pci_select(slot, offset);
    return inb((uint16_t)(PCI_DATA_PORT + (offset & 3)));
}

static void pci_write32(uint8_t slot, uint32_t offset, uint32_t value)
{
    pci_select(slot, offset);
    outl(PCI_DATA_PORT, value);
}

static void pci_write16(uint8_t slot, uint32_t offset, uint16_t value)
{
    pci_select(slot, offset);
    outw((uint16_t)(PCI_DATA_PORT + (offset & 2)), value);
}

/* ---- discovery ----------------------------------------------------------------------------- */

static const char *type_name(uint32_t id)
{
    switch (id) {
    case VIRTIO_ID_BLOCK:
        return "block";
    case VIRTIO_ID_CONSOLE:
        return "console";
    case VIRTIO_ID_RNG:
        return "rng";
    case 1:
        return "net";
    case 19:
        return "vsock";
    default:
        return "other";
    }
}

static struct virtio_device *new_device(enum virtio_transport transport, uint32_t device_id)
{
    if (virtio_device_count == VIRTIO_MAX_DEVICES) {
        diag("virtio: more than %d devices, ignoring the rest", VIRTIO_MAX_DEVICES);
        return NULL;
    }
    struct virtio_device *d = &virtio_devices[virtio_device_count];
    *d = (struct virtio_device){.transport = transport, .device_id = device_id};
    d->index = virtio_device_count++;
    d->vector_base = (uint8_t)(VIRTIO_VECTOR_FIRST + 8 * d->index);
    d->config_vector = VIRTIO_NO_VECTOR;
    for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++) {
        d->queues[q].dev = d;
        d->queues[q].index = (uint16_t)q;
        d->queues[q].vector = VIRTIO_NO_VECTOR;
    }
    return d;
}

/* Linux memparse: a number with an optional K/M/G suffix; *end is set past it. */
static bool parse_size(const char *s, const char **end, uint64_t *value)
{
    uint64_t v = 0;
    unsigned base = 10;
    const char *p = s;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    const char *digits = p;
    for (;; p++) {
        unsigned digit;
        if (*p >= '0' && *p <= '9')
            digit = (unsigned)(*p - '0');
        else if (base == 16 && *p >= 'a' && *p <= 'f')
            digit = (unsigned)(*p - 'a' + 10);
        else if (base == 16 && *p >= 'A' && *p <= 'F')
            digit = (unsigned)(*p - 'A' + 10);
        else
            break;
        v = v * base + digit;
    }
    if (p == digits)
        return false;
    if (*p == 'K' || *p == 'k')
        v <<= 10, p++;
    else if (*p == 'M' || *p == 'm')
        v <<= 20, p++;
    else if (*p == 'G' || *p == 'g')
        v <<= 30, p++;
    *end = p;
    *value = v;
    return true;
}

/* One "virtio_mmio.device=<size>@<base>:<irq>[:<id>]" word (the Linux syntax). */
static void add_mmio(const char *spec)
{
    uint64_t size, base, irq;
    const char *p;
    if (!parse_size(spec, &p, &size) || *p != '@' || !parse_size(p + 1, &p, &base) || *p != ':' ||
        !parse_size(p + 1, &p, &irq)) {
        diag("virtio: cannot parse virtio_mmio.device=%s", spec);
        return;
    }
    if (base >= 4 * GIB || size < 0x100 || irq >= 24) {
        diag("virtio: virtio_mmio.device=%s is out of reach", spec);
        return;
    }
    uint32_t magic = mmio_read32(base + MMIO_MAGIC_VALUE);
    uint32_t version = mmio_read32(base + MMIO_VERSION);
    uint32_t id = mmio_read32(base + MMIO_DEVICE_ID);
    if (magic != MMIO_MAGIC) {
        diag("virtio: no virtio-mmio device at 0x%lx (magic 0x%x)", base, magic);
        return;
    }
    if (id == 0)
        return; /* a placeholder transport */
    if (version != 2) {
        diag("virtio: mmio@0x%lx: version %u (legacy) not supported", base, version);
        return;
    }
    struct virtio_device *d = new_device(VIRTIO_MMIO, id);
    if (!d)
        return;
    d->mmio_base = base;
    d->irq = (unsigned)irq;
    snprintf(d->name, sizeof(d->name), "mmio@0x%lx", base);
    diag("virtio: %s irq %u: %s (type %u)", d->name, d->irq, type_name(id), id);
}

static void discover_mmio(void)
{
    static const char key[] = "virtio_mmio.device=";
    const char *p = boot_info.cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *word = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        size_t len = (size_t)(p - word), key_len = sizeof(key) - 1;
        if (len > key_len && !strncmp(word, key, key_len)) {
            char spec[64];
            size_t n = len - key_len < sizeof(spec) - 1 ? len - key_len : sizeof(spec) - 1;
            memcpy(spec, word + key_len, n);
            spec[n] = '\0';
            add_mmio(spec);
        }
    }
}

static uint64_t next_bar_addr = PCI_ASSIGN_START;

/* The address of a memory BAR, placed by us when it reads 0 or lies above 4 GiB. */
static uint64_t pci_bar(uint8_t slot, unsigned bar, uint64_t *size_out)
{
    uint32_t reg = PCI_BAR0 + 4 * bar;
    uint32_t lo = pci_read32(slot, reg);
    if (lo & 1)
        return 0; /* I/O space: not used by modern virtio */
    bool is64 = (lo & 6) == 4;
    uint32_t hi = is64 ? pci_read32(slot, reg + 4) : 0;
    uint64_t addr = ((uint64_t)hi << 32) | (lo & ~0xfu);
    /* Size it (decode is off while we do). */
    uint16_t command = pci_read16(slot, PCI_COMMAND);
    pci_write16(slot, PCI_COMMAND, command & ~PCI_CMD_MEMORY);
    pci_write32(slot, reg, 0xffffffffu);
    uint32_t mask = pci_read32(slot, reg) & ~0xfu;
    pci_write32(slot, reg, lo);
    uint64_t size = mask ? (uint64_t)(~mask) + 1 : 0;
    if (size && (addr == 0 || addr + size > 4 * GIB)) {
        uint64_t placed = (next_bar_addr + size - 1) & ~(size - 1);
        if (placed + size > PCI_ASSIGN_END) {
            diag("virtio: no room to place BAR %u of slot %u", bar, slot);
        } else {
            next_bar_addr = placed + size;
            pci_write32(slot, reg, (uint32_t)placed | (lo & 0xf));
            if (is64)
                pci_write32(slot, reg + 4, 0);
            diag("virtio: 00:%02x.0 BAR %u (%lu KiB) was at 0x%lx, placed at 0x%lx", slot, bar,
                 size >> 10, addr, placed);
            addr = placed;
        }
    }
    pci_write16(slot, PCI_COMMAND, command);
    *size_out = size;
    return addr;
}

static void add_pci(uint8_t slot, uint16_t device)
{
    uint32_t type = device >= 0x1040 ? device - 0x1040u : pci_read16(slot, PCI_SUBSYSTEM_ID);
    if (!(pci_read16(slot, PCI_STATUS) & PCI_STATUS_CAPS)) {
        diag("virtio: 00:%02x.0 has no capability list", slot);
        return;
    }
    struct virtio_device *d = new_device(VIRTIO_PCI, type);
    if (!d)
        return;
    d->slot = slot;
    d->pci_device_id = device;
    snprintf(d->name, sizeof(d->name), "pci 00:%02x.0", slot);
    uint64_t bar_addr[6] = {0}, bar_size[6] = {0};
    bool bar_known[6] = {false};
    uint64_t *found[5] = {NULL, &d->common, &d->notify_base, &d->isr, &d->device_cfg};
    uint8_t ptr = pci_read8(slot, PCI_CAP_PTR) & 0xfc;
    for (int guard = 0; ptr && guard < 48; guard++) {
        uint8_t id = pci_read8(slot, ptr), next = pci_read8(slot, ptr + 1) & 0xfc;
        if (id == PCI_CAP_ID_VENDOR) {
            uint8_t cfg_type = pci_read8(slot, ptr + 3), bar = pci_read8(slot, ptr + 4);
            uint32_t offset = pci_read32(slot, ptr + 8), length = pci_read32(slot, ptr + 12);
            /* The first capability of each type that we can use wins (4.1.4.1). */
            if (cfg_type == PCI_CAP_PCI_CFG && !d->cfg_cap)
                d->cfg_cap = ptr;
            if (cfg_type >= 1 && cfg_type <= 4 && bar < 6 && !*found[cfg_type]) {
                if (!bar_known[bar]) {
                    bar_addr[bar] = pci_bar(slot, bar, &bar_size[bar]);
                    bar_known[bar] = true;
                }
                if (bar_addr[bar] && (uint64_t)offset + length <= bar_size[bar]) {
                    *found[cfg_type] = bar_addr[bar] + offset;
                    d->struct_bar[cfg_type] = bar;
                    if (cfg_type == PCI_CAP_NOTIFY)
                        d->notify_mult = pci_read32(slot, ptr + 16);
                }
            }
        } else if (id == PCI_CAP_ID_MSIX) {
            uint16_t control = pci_read16(slot, ptr + 2);
            uint32_t table = pci_read32(slot, ptr + 4), pba = pci_read32(slot, ptr + 8);
            for (unsigned i = 0; i < 2; i++) {
                unsigned bar = (i ? pba : table) & 7;
                if (!bar_known[bar]) {
                    bar_addr[bar] = pci_bar(slot, bar, &bar_size[bar]);
                    bar_known[bar] = true;
                }
                d->msix_bar[i] = (uint8_t)bar;
            }
            d->msix_cap = ptr;
            d->msix_entries = (uint16_t)((control & 0x7ff) + 1);
            uint64_t tbar = bar_addr[table & 7], pbar = bar_addr[pba & 7];
            d->msix_table = tbar ? tbar + (table & ~7u) : 0;
            d->msix_pba = pbar ? pbar + (pba & ~7u) : 0;
        }
        ptr = next;
    }
    memcpy(d->bar_addr, bar_addr, sizeof(bar_addr));
    memcpy(d->bar_size, bar_size, sizeof(bar_size));
    pci_write16(slot, PCI_COMMAND, pci_read16(slot, PCI_COMMAND) | PCI_CMD_MEMORY | PCI_CMD_MASTER);
    diag("virtio: %s (1af4:%04x): %s (type %u), common 0x%lx, notify 0x%lx x%u, %u MSI-X "
         "vectors",
         d->name, device, type_name(type), type, d->common, d->notify_base, d->notify_mult,
         d->msix_entries);
    if (!d->common || !d->notify_base || !d->isr) {
        diag("virtio: %s lacks a common, notify or ISR structure; ignored", d->name);
        virtio_device_count--;
    }
}

static void discover_pci(void)
{
    for (uint8_t slot = 0; slot < 32; slot++) {
        uint32_t id = pci_read32(slot, 0);
        uint16_t vendor = (uint16_t)id, device = (uint16_t)(id >> 16);
        if (vendor == 0xffff || vendor == 0)
            continue;
        if (vendor == PCI_VENDOR_VIRTIO && device >= 0x1000 && device <= 0x107f)
            add_pci(slot, device);
    }
}

unsigned virtio_discover(void)
{
    static bool done;
    if (done)
        return virtio_device_count;
    done = true;
    discover_mmio();
    discover_pci();
    if (!virtio_device_count)
        diag("virtio: no devices found");
    return virtio_device_count;
}

struct virtio_device *virtio_find(uint32_t device_id, unsigned nth)
{
    virtio_discover();
    for (unsigned i = 0; i < virtio_device_count; i++) {
        if (virtio_devices[i].device_id == device_id && nth-- == 0)
            return &virtio_devices[i];
    }
    return NULL;
}

/* ---- status, features, configuration ------------------------------------------------------- */

static uint32_t mmio_reg(const struct virtio_device *d, uint32_t reg)
{
    return mmio_read32(d->mmio_base + reg);
}

static void mmio_set(const struct virtio_device *d, uint32_t reg, uint32_t value)
{
    mmio_write32(d->mmio_base + reg, value);
}

uint8_t virtio_get_status(struct virtio_device *d)
{
    if (d->transport == VIRTIO_MMIO)
        return (uint8_t)mmio_reg(d, MMIO_STATUS);
    return mmio_read8(d->common + PCI_DEVICE_STATUS);
}

void virtio_set_status(struct virtio_device *d, uint8_t status)
{
    if (d->transport == VIRTIO_MMIO)
        mmio_set(d, MMIO_STATUS, status);
    else
        mmio_write8(d->common + PCI_DEVICE_STATUS, status);
}

bool virtio_reset(struct virtio_device *d)
{
    virtio_set_status(d, 0);
    for (int i = 0; i < 100000; i++) {
        if (virtio_get_status(d) == 0) {
            for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++)
                d->queues[q].size = 0;
            d->features = 0;
            return true;
        }
        cpu_relax();
    }
    diag("virtio: %s: status stays 0x%x after a reset", d->name, virtio_get_status(d));
    return false;
}

bool virtio_has(const struct virtio_device *d, unsigned feature)
{
    return (d->features >> feature) & 1;
}

static uint64_t device_features(struct virtio_device *d)
{
    uint64_t f = 0;
    for (uint32_t sel = 0; sel < 2; sel++) {
        uint32_t word;
        if (d->transport == VIRTIO_MMIO) {
            mmio_set(d, MMIO_DEVICE_FEATURES_SEL, sel);
            word = mmio_reg(d, MMIO_DEVICE_FEATURES);
        } else {
            mmio_write32(d->common + PCI_DEVICE_FEATURE_SELECT, sel);
            word = mmio_read32(d->common + PCI_DEVICE_FEATURE);
        }
        f |= (uint64_t)word << (32 * sel);
    }
    return f;
}

static void driver_features(struct virtio_device *d, uint64_t f)
{
    for (uint32_t sel = 0; sel < 2; sel++) {
        uint32_t word = (uint32_t)(f >> (32 * sel));
        if (d->transport == VIRTIO_MMIO) {
            mmio_set(d, MMIO_DRIVER_FEATURES_SEL, sel);
            mmio_set(d, MMIO_DRIVER_FEATURES, word);
        } else {
            mmio_write32(d->common + PCI_DRIVER_FEATURE_SELECT, sel);
            mmio_write32(d->common + PCI_DRIVER_FEATURE, word);
        }
    }
}

uint32_t virtio_config_generation(struct virtio_device *d)
{
    if (d->transport == VIRTIO_MMIO)
        return mmio_reg(d, MMIO_CONFIG_GENERATION);
    return mmio_read8(d->common + PCI_CONFIG_GENERATION);
}

static uint64_t config_base(const struct virtio_device *d)
{
    return d->transport == VIRTIO_MMIO ? d->mmio_base + MMIO_CONFIG : d->device_cfg;
}

/* Reads in natural widths, retried until the generation holds still (4.1.4.3, 4.2.2.2). */
void virtio_config_read(struct virtio_device *d, uint32_t offset, void *buf, uint32_t len)
{
    uint64_t base = config_base(d);
    uint8_t *out = buf;
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint32_t before = virtio_config_generation(d);
        uint32_t i = 0;
        while (i < len) {
            uint32_t at = offset + i;
            if (at % 4 == 0 && len - i >= 4) {
                uint32_t v = mmio_read32(base + at);
                memcpy(out + i, &v, 4);
                i += 4;
            } else if (at % 2 == 0 && len - i >= 2) {
                uint16_t v = mmio_read16(base + at);
                memcpy(out + i, &v, 2);
                i += 2;
            } else {
                out[i] = mmio_read8(base + at);
                i += 1;
            }
        }
        if (virtio_config_generation(d) == before)
            return;
    }
    diag("virtio: %s: config_generation never settles", d->name);
}

uint8_t virtio_config_read8(struct virtio_device *d, uint32_t offset)
{
    uint8_t v;
    virtio_config_read(d, offset, &v, 1);
    return v;
}

uint16_t virtio_config_read16(struct virtio_device *d, uint32_t offset)
{
    uint16_t v;
    virtio_config_read(d, offset, &v, 2);
    return v;
}

uint32_t virtio_config_read32(struct virtio_device *d, uint32_t offset)
{
    uint32_t v;
    virtio_config_read(d, offset, &v, 4);
    return v;
}

uint64_t virtio_config_read64(struct virtio_device *d, uint32_t offset)
{
    uint64_t v;
    virtio_config_read(d, offset, &v, 8);
    return v;
}

/* ---- interrupts ------------------------------------------------------------------------------ */

static void virtio_interrupt(struct interrupt_frame *frame)
{
    unsigned v = (unsigned)frame->vector - VIRTIO_VECTOR_FIRST;
    struct virtio_device *d = &virtio_devices[v / 8];
    unsigned slot = v % 8;
    if (d->transport == VIRTIO_MMIO) {
        /* One line for everything: the status register says why. */
        uint32_t status = mmio_reg(d, MMIO_INTERRUPT_STATUS);
        mmio_set(d, MMIO_INTERRUPT_ACK, status);
        d->last_isr = status;
        d->line_irqs++;
        if (status & MMIO_INT_USED) {
            for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++)
                d->queues[q].irq_count++;
        }
        if (status & MMIO_INT_CONFIG)
            d->config_irqs++;
    } else {
        /* A vector may serve several queues when the device has few. */
        if (d->config_vector == slot)
            d->config_irqs++;
        for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++) {
            if (d->queues[q].vector == slot)
                d->queues[q].irq_count++;
        }
    }
    lapic_eoi();
}

/* MSI-X table entry i goes to vector_base + i: 0 for configuration changes, 1 + q for queue q
 * (queues beyond the table share its last entry). */
static bool setup_interrupts(struct virtio_device *d)
{
    if (d->irq_ready)
        return true;
    lapic_enable();
    for (unsigned i = 0; i < 8; i++)
        interrupt_set_handler((uint8_t)(d->vector_base + i), virtio_interrupt);
    if (d->transport == VIRTIO_MMIO) {
        platform_discover();
        unsigned pin = d->irq;
        if (d->irq < 16 && platform.isa_irq_listed[d->irq])
            pin = platform.isa_irq[d->irq].gsi;
        if (pin >= ioapic_pin_count()) {
            diag("virtio: %s: IRQ %u has no IOAPIC pin", d->name, d->irq);
            return false;
        }
        /* Edge-triggered, active high, as for an ISA line. */
        ioapic_route(pin, d->vector_base, lapic_id(), false, false);
        d->irq_ready = true;
        return true;
    }
    if (!d->msix_table || !d->msix_entries) {
        diag("virtio: %s has no usable MSI-X table", d->name);
        return false;
    }
    unsigned entries = d->msix_entries < 8 ? d->msix_entries : 8;
    for (unsigned i = 0; i < entries; i++) {
        uint64_t e = d->msix_table + 16 * i;
        mmio_write32(e + 0, 0xfee00000u | (uint32_t)lapic_id() << 12);
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, d->vector_base + i); /* fixed delivery, edge */
        mmio_write32(e + 12, 0);                 /* unmasked */
    }
    uint16_t control = pci_read16(d->slot, d->msix_cap + 2);
    control = (uint16_t)((control | MSIX_ENABLE) & ~MSIX_FUNCTION_MASK);
    pci_write16(d->slot, d->msix_cap + 2, control);
    d->irq_ready = true;
    return true;
}

bool virtio_begin(struct virtio_device *d, uint64_t wanted, bool interrupts)
{
    if (!virtio_reset(d))
        return false;
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    d->device_features = device_features(d);
    uint64_t f = d->device_features & (wanted | VIRTIO_BIT(VIRTIO_F_VERSION_1));
    if (!(f & VIRTIO_BIT(VIRTIO_F_VERSION_1))) {
        diag("virtio: %s does not offer VERSION_1 (features 0x%lx)", d->name, d->device_features);
        virtio_set_status(d, VIRTIO_STATUS_FAILED);
        return false;
    }
    driver_features(d, f);
    uint8_t status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    virtio_set_status(d, status);
    if (!(virtio_get_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
        diag("virtio: %s refused features 0x%lx", d->name, f);
        virtio_set_status(d, VIRTIO_STATUS_FAILED);
        return false;
    }
    d->features = f;
    if (interrupts) {
        if (!setup_interrupts(d))
            return false;
        if (d->transport == VIRTIO_PCI) {
            mmio_write16(d->common + PCI_CONFIG_MSIX_VECTOR, 0);
            d->config_vector = mmio_read16(d->common + PCI_CONFIG_MSIX_VECTOR);
            if (d->config_vector != 0) {
                diag("virtio: %s refused MSI-X vector 0 for configuration changes", d->name);
                return false;
            }
        }
    } else if (d->transport == VIRTIO_PCI) {
        mmio_write16(d->common + PCI_CONFIG_MSIX_VECTOR, VIRTIO_NO_VECTOR);
        d->config_vector = VIRTIO_NO_VECTOR;
    }
    return true;
}

bool virtio_try_features(struct virtio_device *d, uint64_t features)
{
    if (!virtio_reset(d))
        return false;
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    d->device_features = device_features(d);
    driver_features(d, features);
    virtio_set_status(d,
                      VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    return virtio_get_status(d) & VIRTIO_STATUS_FEATURES_OK;
}

void virtio_driver_ok(struct virtio_device *d)
{
    virtio_set_status(d, virtio_get_status(d) | VIRTIO_STATUS_DRIVER_OK);
}

/* ---- virtio-pci specifics ------------------------------------------------------------------ */

bool virtio_pci_move_bar(struct virtio_device *d, unsigned bar, uint64_t addr)
{
    if (d->transport != VIRTIO_PCI || bar >= 6 || !d->bar_addr[bar] || addr >= 4 * GIB)
        return false;
    uint32_t reg = PCI_BAR0 + 4 * bar;
    uint16_t command = pci_read16(d->slot, PCI_COMMAND);
    pci_write16(d->slot, PCI_COMMAND, command & ~PCI_CMD_MEMORY);
    uint32_t lo = pci_read32(d->slot, reg);
    pci_write32(d->slot, reg, (uint32_t)addr | (lo & 0xf));
    if ((lo & 6) == 4)
        pci_write32(d->slot, reg + 4, 0);
    pci_write16(d->slot, PCI_COMMAND, command);
    uint64_t old = d->bar_addr[bar];
    uint64_t placed = pci_read32(d->slot, reg) & ~0xfull;
    if (placed != addr) {
        diag("virtio: %s BAR %u reads 0x%lx after moving it to 0x%lx", d->name, bar, placed, addr);
        return false;
    }
    d->bar_addr[bar] = addr;
    uint64_t *structs[5] = {NULL, &d->common, &d->notify_base, &d->isr, &d->device_cfg};
    for (unsigned t = 1; t < 5; t++) {
        if (*structs[t] && d->struct_bar[t] == bar)
            *structs[t] = *structs[t] - old + addr;
    }
    if (d->msix_table && d->msix_bar[0] == bar)
        d->msix_table = d->msix_table - old + addr;
    if (d->msix_pba && d->msix_bar[1] == bar)
        d->msix_pba = d->msix_pba - old + addr;
    for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++) {
        struct virtq *vq = &d->queues[q];
        if (vq->size && d->struct_bar[PCI_CAP_NOTIFY] == bar)
            vq->notify_addr = vq->notify_addr - old + addr;
    }
    return true;
}

uint32_t virtio_pci_cfg_window_read(struct virtio_device *d, unsigned bar, uint32_t offset,
                                    unsigned len)
{
    if (!d->cfg_cap)
        return 0xffffffffu;
    /* struct virtio_pci_cfg_cap: cap.bar at +4, cap.offset at +8, cap.length at +12, the data
     * at +16. */
    pci_select(d->slot, d->cfg_cap + 4u);
    outb((uint16_t)(PCI_DATA_PORT + ((d->cfg_cap + 4u) & 3)), (uint8_t)bar);
    pci_write32(d->slot, d->cfg_cap + 8u, offset);
    pci_write32(d->slot, d->cfg_cap + 12u, len);
    uint32_t v = pci_read32(d->slot, d->cfg_cap + 16u);
    return len == 4 ? v : v & ((1u << (8 * len)) - 1);
}

void virtio_msix_mask(struct virtio_device *d, unsigned entry, bool masked)
{
    mmio_write32(d->msix_table + 16 * entry + 12, masked ? 1 : 0);
}

bool virtio_msix_pending(struct virtio_device *d, unsigned entry)
{
    return (mmio_read32(d->msix_pba + 4 * (entry / 32)) >> (entry % 32)) & 1;
}

void virtio_msix_function_mask(struct virtio_device *d, bool masked)
{
    uint16_t control = pci_read16(d->slot, d->msix_cap + 2u);
    control = masked ? control | MSIX_FUNCTION_MASK : control & ~MSIX_FUNCTION_MASK;
    pci_write16(d->slot, d->msix_cap + 2u, control);
}

static struct virtio_device *intx_device;

static void intx_interrupt(struct interrupt_frame *frame)
{
    (void)frame;
    struct virtio_device *d = intx_device;
    /* Reading the ISR acknowledges it and lowers the line. */
    uint8_t isr = d ? mmio_read8(d->isr) : 0;
    if (d && isr) {
        d->intx_irqs++;
        d->last_isr = isr;
        if (isr & 1) {
            for (unsigned q = 0; q < VIRTIO_MAX_QUEUES; q++)
                d->queues[q].irq_count++;
        }
        if (isr & 2)
            d->config_irqs++;
    }
    lapic_eoi();
}

uint8_t virtio_pci_interrupt_line(struct virtio_device *d)
{
    return pci_read8(d->slot, PCI_INTERRUPT_LINE);
}

void virtio_pci_intx_disable(struct virtio_device *d, bool disable)
{
    uint16_t command = pci_read16(d->slot, PCI_COMMAND);
    command = disable ? command | PCI_CMD_INTX_DISABLE : command & ~PCI_CMD_INTX_DISABLE;
    pci_write16(d->slot, PCI_COMMAND, command);
}

void virtio_pci_bus_master(struct virtio_device *d, bool enable)
{
    uint16_t command = pci_read16(d->slot, PCI_COMMAND);
    command = enable ? command | PCI_CMD_MASTER : command & ~PCI_CMD_MASTER;
    pci_write16(d->slot, PCI_COMMAND, command);
}

bool virtio_pci_use_intx(struct virtio_device *d, bool intx, unsigned pin)
{
    if (d->transport != VIRTIO_PCI || !d->msix_cap)
        return false;
    uint16_t control = pci_read16(d->slot, d->msix_cap + 2u);
    if (!intx) {
        ioapic_mask(pin);
        pci_write16(d->slot, d->msix_cap + 2u, control | MSIX_ENABLE);
        intx_device = NULL;
        return true;
    }
    if (pin >= ioapic_pin_count())
        return false;
    lapic_enable();
    intx_device = d;
    interrupt_set_handler(VIRTIO_VECTOR_INTX, intx_interrupt);
    pci_write16(d->slot, d->msix_cap + 2u, control & ~MSIX_ENABLE);
    uint16_t command = pci_read16(d->slot, PCI_COMMAND);
    pci_write16(d->slot, PCI_COMMAND, command & ~PCI_CMD_INTX_DISABLE);
    ioapic_route(pin, VIRTIO_VECTOR_INTX, lapic_id(), true, true);
    return true;
}

/* ---- queue setup --------------------------------------------------------------------------- */

/* Where the parts of a queue live in its memory (laid out for VIRTQ_MAX_SIZE entries). */
#define QMEM_DESC     0x0000
#define QMEM_AVAIL    0x1000
#define QMEM_USED     0x2000
#define QMEM_TOKEN    0x3000
#define QMEM_LEN      0x3800
#define QMEM_INDIRECT 0x4000
#define QMEM_SIZE     (QMEM_INDIRECT + VIRTQ_MAX_SIZE * VIRTQ_INDIRECT_MAX * 16)

uint16_t virtio_queue_max(struct virtio_device *d, unsigned q)
{
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_SEL, q);
        uint32_t max = mmio_reg(d, MMIO_QUEUE_NUM_MAX);
        return max > 0xffff ? 0xffff : (uint16_t)max;
    }
    if (q >= mmio_read16(d->common + PCI_NUM_QUEUES))
        return 0;
    mmio_write16(d->common + PCI_QUEUE_SELECT, (uint16_t)q);
    return mmio_read16(d->common + PCI_QUEUE_SIZE);
}

/* Size, ring addresses and (virtio-pci) MSI-X vector of queue q, which must not be enabled. */
static bool queue_program(struct virtio_device *d, unsigned q, uint16_t size, uint64_t desc,
                          uint64_t avail, uint64_t used, uint16_t vector)
{
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_SEL, q);
        if (mmio_reg(d, MMIO_QUEUE_READY)) {
            diag("virtio: %s queue %u is already live", d->name, q);
            return false;
        }
        mmio_set(d, MMIO_QUEUE_NUM, size);
        mmio_set(d, MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
        mmio_set(d, MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
        mmio_set(d, MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
        mmio_set(d, MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
        mmio_set(d, MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
        mmio_set(d, MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
        return true;
    }
    uint64_t c = d->common;
    mmio_write16(c + PCI_QUEUE_SELECT, (uint16_t)q);
    if (mmio_read16(c + PCI_QUEUE_ENABLE)) {
        diag("virtio: %s queue %u is already live", d->name, q);
        return false;
    }
    mmio_write16(c + PCI_QUEUE_SIZE, size);
    mmio_write16(c + PCI_QUEUE_MSIX_VECTOR, vector);
    if (mmio_read16(c + PCI_QUEUE_MSIX_VECTOR) != vector) {
        diag("virtio: %s refused MSI-X vector %u for queue %u", d->name, vector, q);
        return false;
    }
    mmio_write32(c + PCI_QUEUE_DESC, (uint32_t)desc);
    mmio_write32(c + PCI_QUEUE_DESC + 4, (uint32_t)(desc >> 32));
    mmio_write32(c + PCI_QUEUE_DRIVER, (uint32_t)avail);
    mmio_write32(c + PCI_QUEUE_DRIVER + 4, (uint32_t)(avail >> 32));
    mmio_write32(c + PCI_QUEUE_DEVICE, (uint32_t)used);
    mmio_write32(c + PCI_QUEUE_DEVICE + 4, (uint32_t)(used >> 32));
    return true;
}

bool virtio_queue_setup_raw(struct virtio_device *d, unsigned q, uint16_t size, uint64_t desc,
                            uint64_t avail, uint64_t used)
{
    struct virtq *vq = &d->queues[q];
    if (!queue_program(d, q, size, desc, avail, used, vq->vector))
        return false;
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_READY, 1);
        vq->notify_addr = d->mmio_base + MMIO_QUEUE_NOTIFY;
        vq->notify_value = q;
        vq->notify_width = 4;
        return true;
    }
    uint64_t c = d->common;
    uint16_t notify_off = mmio_read16(c + PCI_QUEUE_NOTIFY_OFF);
    mmio_write16(c + PCI_QUEUE_ENABLE, 1);
    vq->notify_addr = d->notify_base + (uint64_t)notify_off * d->notify_mult;
    vq->notify_value = q;
    vq->notify_width = 2;
    return true;
}

bool virtio_queue_program(struct virtio_device *d, unsigned q, uint16_t size, uint64_t desc,
                          uint64_t avail, uint64_t used, uint16_t vector)
{
    return queue_program(d, q, size, desc, avail, used, vector);
}

bool virtio_notify_index(struct virtio_device *d, unsigned q)
{
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_NOTIFY, q);
        return true;
    }
    uint64_t offset = (uint64_t)q; /* a queue the device lacks: where its notify_off would be */
    if (q < mmio_read16(d->common + PCI_NUM_QUEUES)) {
        mmio_write16(d->common + PCI_QUEUE_SELECT, (uint16_t)q);
        offset = mmio_read16(d->common + PCI_QUEUE_NOTIFY_OFF);
    }
    uint64_t addr = d->notify_base + offset * d->notify_mult;
    unsigned bar = d->struct_bar[PCI_CAP_NOTIFY];
    if (addr + 2 > d->bar_addr[bar] + d->bar_size[bar])
        return false;
    mmio_write16(addr, (uint16_t)q);
    return true;
}

void virtio_queue_read_regs(struct virtio_device *d, unsigned q, struct virtio_queue_regs *r)
{
    *r = (struct virtio_queue_regs){.vector = VIRTIO_NO_VECTOR};
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_SEL, q);
        r->enable = (uint16_t)mmio_reg(d, MMIO_QUEUE_READY);
        return;
    }
    uint64_t c = d->common;
    mmio_write16(c + PCI_QUEUE_SELECT, (uint16_t)q);
    r->size = mmio_read16(c + PCI_QUEUE_SIZE);
    r->enable = mmio_read16(c + PCI_QUEUE_ENABLE);
    r->vector = mmio_read16(c + PCI_QUEUE_MSIX_VECTOR);
    r->desc = mmio_read32(c + PCI_QUEUE_DESC) | (uint64_t)mmio_read32(c + PCI_QUEUE_DESC + 4) << 32;
    r->driver = mmio_read32(c + PCI_QUEUE_DRIVER) | (uint64_t)mmio_read32(c + PCI_QUEUE_DRIVER + 4)
                                                        << 32;
    r->device = mmio_read32(c + PCI_QUEUE_DEVICE) | (uint64_t)mmio_read32(c + PCI_QUEUE_DEVICE + 4)
                                                        << 32;
}

void virtio_queue_write_regs(struct virtio_device *d, unsigned q, const struct virtio_queue_regs *r)
{
    if (d->transport == VIRTIO_MMIO) {
        mmio_set(d, MMIO_QUEUE_SEL, q);
        mmio_set(d, MMIO_QUEUE_NUM, r->size);
        mmio_set(d, MMIO_QUEUE_DESC_LOW, (uint32_t)r->desc);
        mmio_set(d, MMIO_QUEUE_DESC_HIGH, (uint32_t)(r->desc >> 32));
        mmio_set(d, MMIO_QUEUE_DRIVER_LOW, (uint32_t)r->driver);
        mmio_set(d, MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(r->driver >> 32));
        mmio_set(d, MMIO_QUEUE_DEVICE_LOW, (uint32_t)r->device);
        mmio_set(d, MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(r->device >> 32));
        mmio_set(d, MMIO_QUEUE_READY, r->enable);
        return;
    }
    uint64_t c = d->common;
    mmio_write16(c + PCI_QUEUE_SELECT, (uint16_t)q);
    mmio_write16(c + PCI_QUEUE_SIZE, r->size);
    mmio_write32(c + PCI_QUEUE_DESC, (uint32_t)r->desc);
    mmio_write32(c + PCI_QUEUE_DESC + 4, (uint32_t)(r->desc >> 32));
    mmio_write32(c + PCI_QUEUE_DRIVER, (uint32_t)r->driver);
    mmio_write32(c + PCI_QUEUE_DRIVER + 4, (uint32_t)(r->driver >> 32));
    mmio_write32(c + PCI_QUEUE_DEVICE, (uint32_t)r->device);
    mmio_write32(c + PCI_QUEUE_DEVICE + 4, (uint32_t)(r->device >> 32));
    mmio_write16(c + PCI_QUEUE_ENABLE, r->enable);
}

uint16_t virtio_queue_set_vector(struct virtio_device *d, unsigned q, uint16_t vector)
{
    if (d->transport != VIRTIO_PCI)
        return VIRTIO_NO_VECTOR;
    mmio_write16(d->common + PCI_QUEUE_SELECT, (uint16_t)q);
    mmio_write16(d->common + PCI_QUEUE_MSIX_VECTOR, vector);
    return mmio_read16(d->common + PCI_QUEUE_MSIX_VECTOR);
}

bool virtio_queue_setup(struct virtio_device *d, unsigned q, uint16_t size, bool interrupts)
{
    if (q >= VIRTIO_MAX_QUEUES) {
        diag("virtio: queue %u: this driver handles %u queues", q, VIRTIO_MAX_QUEUES);
        return false;
    }
    uint16_t max = virtio_queue_max(d, q);
    if (!max) {
        diag("virtio: %s has no queue %u", d->name, q);
        return false;
    }
    if (!size)
        size = max < VIRTQ_MAX_SIZE ? max : VIRTQ_MAX_SIZE;
    if (size > max || size > VIRTQ_MAX_SIZE || (size & (size - 1))) {
        diag("virtio: %s queue %u: size %u not possible (device max %u)", d->name, q, size, max);
        return false;
    }
    struct virtq *vq = &d->queues[q];
    if (!vq->memory)
        vq->memory = phys_alloc(QMEM_SIZE, 4096);
    uint8_t *mem = vq->memory;
    memset(mem, 0, QMEM_TOKEN); /* the rings; the rest is set up below */
    vq->desc = (struct virtq_desc *)(mem + QMEM_DESC);
    vq->avail = (struct virtq_avail *)(mem + QMEM_AVAIL);
    vq->used = (struct virtq_used *)(mem + QMEM_USED);
    vq->token = (void **)(mem + QMEM_TOKEN);
    vq->chain_len = (uint16_t *)(mem + QMEM_LEN);
    vq->indirect = (struct virtq_desc *)(mem + QMEM_INDIRECT);
    for (uint16_t i = 0; i < size; i++) {
        vq->desc[i].next = (uint16_t)(i + 1);
        vq->token[i] = NULL;
    }
    vq->free_head = 0;
    vq->num_free = size;
    vq->avail_idx = vq->kicked_idx = vq->last_used = 0;
    vq->event_idx = virtio_has(d, VIRTIO_F_EVENT_IDX);
    vq->use_indirect = virtio_has(d, VIRTIO_F_INDIRECT_DESC);
    vq->interrupts = interrupts;
    /* With vectors in place a polled queue keeps one too: suppression alone must keep it
     * quiet. */
    bool vector = d->irq_ready && d->transport == VIRTIO_PCI;
    unsigned entries = d->msix_entries < 8 ? d->msix_entries : 8;
    vq->vector = !vector           ? VIRTIO_NO_VECTOR
                 : 1 + q < entries ? (uint16_t)(1 + q)
                                   : (uint16_t)(entries - 1); /* shared with the last */
    vq->irq_count = vq->irq_seen = 0;
    vq->kicks = 0;
    vq->size = size; /* before placing used_event, which follows the avail ring */
    virtq_enable_interrupts(vq, interrupts);
    if (!virtio_queue_setup_raw(d, q, size, (uint64_t)vq->desc, (uint64_t)vq->avail,
                                (uint64_t)vq->used)) {
        vq->size = 0;
        return false;
    }
    return true;
}

/* ---- queue operations ---------------------------------------------------------------------- */

static uint16_t *used_event(struct virtq *q)
{
    return &q->avail->ring[q->size];
}

static uint16_t *avail_event(struct virtq *q)
{
    return (uint16_t *)&q->used->ring[q->size];
}

int virtq_add(struct virtq *q, const struct vbuf *bufs, unsigned count, void *token)
{
    if (!count || !q->num_free)
        return -1;
    uint16_t head = q->free_head;
    if (q->use_indirect && count > 1 && count <= VIRTQ_INDIRECT_MAX) {
        struct virtq_desc *table = q->indirect + (size_t)head * VIRTQ_INDIRECT_MAX;
        for (unsigned i = 0; i < count; i++) {
            table[i].addr = bufs[i].addr;
            table[i].len = bufs[i].len;
            table[i].flags = (uint16_t)((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                                        (i + 1 < count ? VIRTQ_DESC_F_NEXT : 0));
            table[i].next = (uint16_t)(i + 1);
        }
        struct virtq_desc *d = &q->desc[head];
        q->free_head = d->next;
        d->addr = (uint64_t)table;
        d->len = count * (uint32_t)sizeof(*table);
        d->flags = VIRTQ_DESC_F_INDIRECT;
        q->num_free--;
        q->chain_len[head] = 1;
    } else {
        if (q->num_free < count)
            return -1;
        uint16_t i = head, last = head;
        for (unsigned n = 0; n < count; n++) {
            struct virtq_desc *d = &q->desc[i];
            d->addr = bufs[n].addr;
            d->len = bufs[n].len;
            d->flags = (uint16_t)((bufs[n].write ? VIRTQ_DESC_F_WRITE : 0) |
                                  (n + 1 < count ? VIRTQ_DESC_F_NEXT : 0));
            last = i;
            i = d->next; /* the free list is linked through next */
        }
        q->free_head = q->desc[last].next;
        q->num_free = (uint16_t)(q->num_free - count);
        q->chain_len[head] = (uint16_t)count;
    }
    q->token[head] = token;
    q->avail->ring[q->avail_idx % q->size] = head;
    barrier(); /* the entry before the index (x86 keeps stores in order) */
    q->avail_idx++;
    WRITE_ONCE(q->avail->idx, q->avail_idx);
    return head;
}

void virtq_notify(struct virtq *q)
{
    q->kicks++;
    if (q->notify_width == 2)
        mmio_write16(q->notify_addr, (uint16_t)q->notify_value);
    else
        mmio_write32(q->notify_addr, q->notify_value);
}

bool virtq_kick(struct virtq *q)
{
    mb(); /* our avail->idx store before reading the device's suppression */
    uint16_t old = q->kicked_idx, now = q->avail_idx;
    q->kicked_idx = now;
    if (old == now)
        return false;
    bool need;
    if (q->event_idx) {
        uint16_t event = READ_ONCE(*avail_event(q));
        need = (uint16_t)(now - event - 1) < (uint16_t)(now - old);
    } else {
        need = !(READ_ONCE(q->used->flags) & VIRTQ_USED_F_NO_NOTIFY);
    }
    if (need)
        virtq_notify(q);
    return need;
}

bool virtq_has_used(const struct virtq *q)
{
    return READ_ONCE(q->used->idx) != q->last_used;
}

void *virtq_get(struct virtq *q, uint32_t *len)
{
    if (!virtq_has_used(q))
        return NULL;
    barrier(); /* the index before the entry (x86 keeps loads in order) */
    struct virtq_used_elem e = q->used->ring[q->last_used % q->size];
    if (e.id >= q->size || !q->token[e.id])
        bail_out("virtio: %s queue %u: used entry %u names descriptor %u, not in flight",
                 q->dev->name, q->index, q->last_used, e.id);
    void *token = q->token[e.id];
    q->token[e.id] = NULL;
    uint16_t last = (uint16_t)e.id;
    for (uint16_t n = 1; n < q->chain_len[e.id]; n++)
        last = q->desc[last].next;
    q->desc[last].next = q->free_head;
    q->free_head = (uint16_t)e.id;
    q->num_free = (uint16_t)(q->num_free + q->chain_len[e.id]);
    q->last_used++;
    /* Suppressed, used_event stays where virtq_suppress_interrupts put it: moved along behind
     * last_used it would land among the entries a device is publishing while the driver
     * keeps up, and the device would interrupt for it. */
    if (q->event_idx && q->interrupts)
        WRITE_ONCE(*used_event(q), q->last_used);
    if (len)
        *len = e.len;
    return token;
}

bool virtq_enable_interrupts(struct virtq *q, bool enable)
{
    q->interrupts = enable;
    if (q->event_idx)
        WRITE_ONCE(*used_event(q), enable ? q->last_used : (uint16_t)(q->last_used - 1));
    else
        WRITE_ONCE(q->avail->flags, enable ? 0 : VIRTQ_AVAIL_F_NO_INTERRUPT);
    if (!enable)
        return false;
    mb();
    return q->size && virtq_has_used(q);
}

void virtq_suppress_interrupts(struct virtq *q)
{
    virtq_enable_interrupts(q, false);
}

bool virtq_wait(struct virtq *q, uint64_t timeout_us)
{
    uint64_t start = time_us();
    bool ok = false;
    /* Interrupts stay on for the whole wait: the CPL0 emulator here delivers them at its own
     * pace, and a window of one instruction (sti; pause; cli) is mostly missed. */
    if (q->interrupts)
        irq_enable();
    for (;;) {
        if (q->interrupts ? READ_ONCE(q->irq_count) != q->irq_seen && virtq_has_used(q)
                          : virtq_has_used(q)) {
            q->irq_seen = READ_ONCE(q->irq_count);
            ok = true;
            break;
        }
        if (time_us() - start > timeout_us)
            break;
        cpu_relax();
    }
    if (q->interrupts)
        irq_disable();
    return ok;
}

/* Waits, interrupts enabled, until an interrupt handler moves *count away from since. */
static bool wait_count_change(const volatile uint64_t *count, uint64_t since, uint64_t timeout_us)
{
    uint64_t start = time_us();
    bool ok = true;
    irq_enable();
    while (READ_ONCE(*count) == since) {
        if (time_us() - start > timeout_us) {
            ok = false;
            break;
        }
        cpu_relax();
    }
    irq_disable();
    return ok;
}

bool virtq_wait_irq(struct virtq *q, uint64_t since, uint64_t timeout_us)
{
    return wait_count_change(&q->irq_count, since, timeout_us);
}

void virtio_irq_window(uint64_t us)
{
    uint64_t start = time_us();
    irq_enable();
    while (time_us() - start < us)
        cpu_relax();
    irq_disable();
}

bool virtio_wait_config_irq(struct virtio_device *d, uint64_t seen, uint64_t timeout_us)
{
    return wait_count_change(&d->config_irqs, seen, timeout_us);
}

bool virtq_msix_masked_request(struct virtio_device *d, struct virtq *q, const struct vbuf *bufs,
                               unsigned count, void *token, uint64_t timeout_us,
                               struct msix_masked_request *r)
{
    *r = (struct msix_masked_request){0};
    virtio_irq_window(20000); /* whatever was pending arrives before counting */
    uint64_t before = q->irq_count;
    virtio_msix_mask(d, q->vector, true);
    r->done = virtq_add(q, bufs, count, token) >= 0;
    virtq_kick(q);
    uint64_t start = time_us();
    while (r->done && !virtq_has_used(q)) {
        if (time_us() - start > timeout_us)
            r->done = false;
        cpu_relax();
    }
    r->done = r->done && virtq_get(q, NULL) == token;
    virtio_irq_window(20000);
    r->quiet = q->irq_count == before;
    r->pending = virtio_msix_pending(d, q->vector);
    virtio_msix_mask(d, q->vector, false);
    r->delivered = virtq_wait_irq(q, before, timeout_us);
    r->cleared = !virtio_msix_pending(d, q->vector);
    return r->done && r->quiet && r->pending && r->delivered && r->cleared;
}

int64_t virtq_transfer(struct virtq *q, const struct vbuf *bufs, unsigned count,
                       uint64_t timeout_us)
{
    static char token;
    if (virtq_add(q, bufs, count, &token) < 0)
        return -1;
    virtq_kick(q);
    if (!virtq_wait(q, timeout_us))
        return -1;
    uint32_t len;
    if (virtq_get(q, &len) != &token)
        return -1;
    return len;
}

bool virtio_wait_needs_reset(struct virtio_device *d, uint64_t timeout_us, uint8_t *status)
{
    uint64_t start = time_us();
    do {
        *status = virtio_get_status(d);
        if (*status & VIRTIO_STATUS_NEEDS_RESET)
            return true;
        udelay(200);
    } while (time_us() - start < timeout_us);
    return false;
}
