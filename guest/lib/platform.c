/*
 * Finds the CPUs, the IOAPIC and the ISA IRQ routing: from the Intel MP table when there is
 * one (what ember provides), else from the ACPI MADT.
 */
#include "guest.h"
#include "io.h"

struct platform platform;

struct __attribute__((packed)) mp_floating_pointer {
    char signature[4]; /* "_MP_" */
    uint32_t config_table;
    uint8_t length; /* in 16-byte units */
    uint8_t revision;
    uint8_t checksum;
    uint8_t default_config;
    uint8_t features2;
    uint8_t reserved[3];
};

struct __attribute__((packed)) mp_config_table {
    char signature[4]; /* "PCMP" */
    uint16_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem[8];
    char product[12];
    uint32_t oem_table;
    uint16_t oem_table_size;
    uint16_t entry_count;
    uint32_t lapic_addr;
    uint16_t extended_length;
    uint8_t extended_checksum;
    uint8_t reserved;
};

enum { MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_IO_INTERRUPT, MP_LOCAL_INTERRUPT };
#define MP_CPU_ENABLED    0x1
#define MP_CPU_BSP        0x2
#define MP_IOAPIC_ENABLED 0x1
#define MP_INT_TYPE_INT   0

/* MPS INTI flags, shared by MP table interrupt entries and MADT overrides. */
#define INTI_POLARITY_MASK 0x3
#define INTI_ACTIVE_LOW    0x3
#define INTI_TRIGGER_MASK  0xc
#define INTI_LEVEL         0xc

struct __attribute__((packed)) acpi_rsdp {
    char signature[8]; /* "RSD PTR " */
    uint8_t checksum;
    char oem[6];
    uint8_t revision;
    uint32_t rsdt;
    uint32_t length;
    uint64_t xsdt;
    uint8_t extended_checksum;
    uint8_t reserved[3];
};

struct __attribute__((packed)) acpi_header {
    char signature[4];
    uint32_t length;
    uint8_t revision;
    uint8_t checksum;
    char oem[6];
    char oem_table[8];
    uint32_t oem_revision;
    uint32_t creator;
    uint32_t creator_revision;
};

enum { MADT_LAPIC = 0, MADT_IOAPIC = 1, MADT_OVERRIDE = 2, MADT_X2APIC = 9 };
#define MADT_CPU_ENABLED        0x1
#define MADT_CPU_ONLINE_CAPABLE 0x2

static bool in_reach(uint64_t addr, uint64_t len)
{
    return addr >= 0x400 && addr < 4 * GIB && len <= 4 * GIB - addr;
}

static bool checksum_ok(const void *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += ((const uint8_t *)p)[i];
    return sum == 0;
}

/* Scans [start, start+len) on 16-byte boundaries for a structure with a valid checksum. */
static uint64_t scan(uint64_t start, uint64_t len, const char *signature, size_t sig_len,
                     size_t checksum_len)
{
    if (!in_reach(start, len))
        return 0;
    for (uint64_t addr = start; addr + checksum_len <= start + len; addr += 16) {
        if (!memcmp((const void *)addr, signature, sig_len) &&
            checksum_ok((const void *)addr, checksum_len))
            return addr;
    }
    return 0;
}

static uint64_t ebda_start(void)
{
    uint64_t ebda = (uint64_t)phys_read16(0x40e) << 4;
    return ebda >= 0x80000 && ebda < 0xa0000 ? ebda : 0;
}

static uint64_t find_mp_floating_pointer(void)
{
    uint64_t base_kib = phys_read16(0x413);
    uint64_t base_end = base_kib >= 512 && base_kib <= 640 ? base_kib * 1024 : 0xa0000;
    uint64_t candidates[][2] = {
        {ebda_start(), 1024}, {base_end - 1024, 1024}, {0x9fc00, 1024}, {0xf0000, 0x10000}};
    for (size_t i = 0; i < ARRAY_SIZE(candidates); i++) {
        if (!candidates[i][0])
            continue;
        uint64_t addr = scan(candidates[i][0], candidates[i][1], "_MP_", 4, 16);
        if (addr)
            return addr;
    }
    return 0;
}

static void add_cpu(uint8_t apic_id)
{
    if (platform.cpu_count < MAX_CPUS)
        platform.cpu_apic_ids[platform.cpu_count++] = apic_id;
    else
        platform.cpus_ignored++;
}

static void set_isa_route(unsigned irq, uint32_t gsi, uint16_t flags)
{
    if (irq >= 16)
        return;
    platform.isa_irq[irq] = (struct isa_irq_route){
        .gsi = gsi,
        /* "Conforms to the bus" means active high, edge for ISA. */
        .active_low = (flags & INTI_POLARITY_MASK) == INTI_ACTIVE_LOW,
        .level = (flags & INTI_TRIGGER_MASK) == INTI_LEVEL,
    };
    platform.isa_irq_listed[irq] = true;
}

/* A PCI interrupt source: "conforms to the bus" means active low, level. */
static void set_pci_inta(unsigned slot, uint32_t gsi, uint16_t flags)
{
    platform.pci_inta[slot & 31] = (struct isa_irq_route){
        .gsi = gsi,
        .active_low = (flags & INTI_POLARITY_MASK) != 1,
        .level = (flags & INTI_TRIGGER_MASK) != 4,
    };
    platform.pci_inta_listed[slot & 31] = true;
}

static bool parse_mp_table(uint64_t fp_addr)
{
    const struct mp_floating_pointer *fp = (const void *)fp_addr;
    if (fp->default_config || !in_reach(fp->config_table, sizeof(struct mp_config_table))) {
        diag("MP floating pointer at 0x%lx: default configuration %u, no table used", fp_addr,
             fp->default_config);
        return false;
    }
    const struct mp_config_table *table = (const void *)(uint64_t)fp->config_table;
    if (memcmp(table->signature, "PCMP", 4) || !in_reach(fp->config_table, table->length) ||
        !checksum_ok(table, table->length)) {
        diag("MP configuration table at 0x%x: bad signature, length or checksum", fp->config_table);
        return false;
    }
    int isa_bus = -1, pci_bus = -1;
    const uint8_t *entry = (const uint8_t *)(table + 1);
    const uint8_t *end = (const uint8_t *)table + table->length;
    /* Walk by length, as Linux does: some firmware (QEMU's qboot) leaves entry_count 0. */
    while (entry < end) {
        size_t size = entry[0] == MP_PROCESSOR ? 20 : 8;
        if (entry + size > end)
            break;
        switch (entry[0]) {
        case MP_PROCESSOR:
            if (entry[3] & MP_CPU_ENABLED) {
                if (entry[3] & MP_CPU_BSP)
                    platform.bsp_index = (int)platform.cpu_count;
                add_cpu(entry[1]);
            }
            break;
        case MP_BUS:
            if (!memcmp(entry + 2, "ISA", 3))
                isa_bus = entry[1];
            else if (!memcmp(entry + 2, "PCI", 3) && pci_bus < 0)
                pci_bus = entry[1]; /* the first PCI bus entry: bus 0 */
            break;
        case MP_IOAPIC:
            if ((entry[3] & MP_IOAPIC_ENABLED) && !platform.has_ioapic) {
                platform.has_ioapic = true;
                platform.ioapic_id = entry[1];
                platform.ioapic_addr = *(const uint32_t *)(entry + 4);
            }
            break;
        case MP_IO_INTERRUPT:
            if (entry[1] == MP_INT_TYPE_INT && entry[4] == isa_bus)
                set_isa_route(entry[5], entry[7], *(const uint16_t *)(entry + 2));
            else if (entry[1] == MP_INT_TYPE_INT && entry[4] == pci_bus && (entry[5] & 3) == 0)
                set_pci_inta(entry[5] >> 2, entry[7], *(const uint16_t *)(entry + 2));
            break;
        case MP_LOCAL_INTERRUPT:
            break;
        default:
            diag("MP table: unknown entry type %u, stopping there", entry[0]);
            return platform.cpu_count > 0;
        }
        entry += size;
    }
    platform.table_addr = fp->config_table;
    return platform.cpu_count > 0;
}

static const struct acpi_header *find_acpi_table(const struct acpi_rsdp *rsdp, const char *sig)
{
    bool use_xsdt = rsdp->revision >= 2 && rsdp->xsdt && in_reach(rsdp->xsdt, 36);
    uint64_t root_addr = use_xsdt ? rsdp->xsdt : rsdp->rsdt;
    if (!in_reach(root_addr, sizeof(struct acpi_header)))
        return NULL;
    const struct acpi_header *root = (const void *)root_addr;
    if (!in_reach(root_addr, root->length) || !checksum_ok(root, root->length))
        return NULL;
    size_t entry_size = use_xsdt ? 8 : 4;
    size_t count = (root->length - sizeof(*root)) / entry_size;
    const uint8_t *entries = (const uint8_t *)(root + 1);
    for (size_t i = 0; i < count; i++) {
        uint64_t addr =
            use_xsdt ? *(const uint64_t *)(entries + i * 8) : *(const uint32_t *)(entries + i * 4);
        if (!in_reach(addr, sizeof(struct acpi_header)))
            continue;
        const struct acpi_header *table = (const void *)addr;
        if (!memcmp(table->signature, sig, 4) && in_reach(addr, table->length) &&
            checksum_ok(table, table->length))
            return table;
    }
    return NULL;
}

static uint64_t find_rsdp(void)
{
    if (boot_info.rsdp && in_reach(boot_info.rsdp, 20) &&
        !memcmp((const void *)boot_info.rsdp, "RSD PTR ", 8))
        return boot_info.rsdp;
    uint64_t addr = ebda_start() ? scan(ebda_start(), 1024, "RSD PTR ", 8, 20) : 0;
    return addr ? addr : scan(0xe0000, 0x20000, "RSD PTR ", 8, 20);
}

static bool parse_madt(uint64_t rsdp_addr)
{
    const struct acpi_header *madt = find_acpi_table((const void *)rsdp_addr, "APIC");
    if (!madt)
        return false;
    const uint8_t *entry = (const uint8_t *)madt + sizeof(*madt) + 8; /* LAPIC address, flags */
    const uint8_t *end = (const uint8_t *)madt + madt->length;
    for (unsigned irq = 0; irq < 16; irq++)
        set_isa_route(irq, irq, 0); /* ACPI: identity unless overridden */
    while (entry + 2 <= end && entry[1] >= 2 && entry + entry[1] <= end) {
        switch (entry[0]) {
        case MADT_LAPIC:
            if (entry[1] >= 8 &&
                (*(const uint32_t *)(entry + 4) & (MADT_CPU_ENABLED | MADT_CPU_ONLINE_CAPABLE)))
                add_cpu(entry[3]);
            break;
        case MADT_X2APIC:
            if (entry[1] >= 16 && (*(const uint32_t *)(entry + 8) & MADT_CPU_ENABLED) &&
                *(const uint32_t *)(entry + 4) < 255)
                add_cpu((uint8_t) * (const uint32_t *)(entry + 4));
            break;
        case MADT_IOAPIC:
            if (entry[1] >= 12 && !platform.has_ioapic) {
                platform.has_ioapic = true;
                platform.ioapic_id = entry[2];
                platform.ioapic_addr = *(const uint32_t *)(entry + 4);
            }
            break;
        case MADT_OVERRIDE:
            if (entry[1] >= 10 && entry[2] == 0)
                set_isa_route(entry[3], *(const uint32_t *)(entry + 4),
                              *(const uint16_t *)(entry + 8));
            break;
        }
        entry += entry[1];
    }
    platform.table_addr = (uint64_t)madt;
    return platform.cpu_count > 0;
}

void platform_discover(void)
{
    if (platform.source)
        return;
    platform.bsp_index = -1;
    platform.mp_addr = find_mp_floating_pointer();
    platform.rsdp_addr = find_rsdp();
    platform.mp_found = platform.mp_addr != 0;
    platform.acpi_found = platform.rsdp_addr != 0;
    if (platform.mp_found && parse_mp_table(platform.mp_addr)) {
        platform.source = "MP table";
        return;
    }
    /* Start over: a half-parsed MP table must not leak into the MADT result. */
    uint64_t mp_addr = platform.mp_addr, rsdp_addr = platform.rsdp_addr;
    bool mp_found = platform.mp_found, acpi_found = platform.acpi_found;
    platform = (struct platform){.bsp_index = -1,
                                 .mp_addr = mp_addr,
                                 .rsdp_addr = rsdp_addr,
                                 .mp_found = mp_found,
                                 .acpi_found = acpi_found};
    if (platform.acpi_found && parse_madt(platform.rsdp_addr))
        platform.source = "ACPI MADT";
}
