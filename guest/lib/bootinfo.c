/*
 * Boot information from either protocol, copied out early: the AP trampoline and later tests
 * reuse low memory where the VMM may have left these structures.
 */
#include "guest.h"
#include "io.h"

struct boot_info boot_info;

#define HVM_START_MAGIC 0x336ec578

/* struct hvm_start_info (version 1 adds the memory map) */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};

struct hvm_memmap_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

/* Offsets into struct boot_params (the zero page) */
#define BP_ACPI_RSDP_ADDR    0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE  0x0c4
#define BP_EXT_CMD_LINE_PTR  0x0c8
#define BP_E820_ENTRIES      0x1e8
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21c
#define BP_CMD_LINE_PTR      0x228
#define BP_E820_TABLE        0x2d0
#define BP_E820_MAX          128
#define BP_E820_ENTRY_SIZE   20

/* Our page tables map the first 4 GiB only. */
static bool mapped(uint64_t addr, uint64_t len)
{
    return addr < 4 * GIB && len <= 4 * GIB - addr;
}

static void copy_cmdline(uint64_t addr)
{
    if (!addr || !mapped(addr, 1))
        return;
    const char *src = (const char *)addr;
    size_t n = 0;
    while (n < MAX_CMDLINE - 1 && mapped(addr + n, 1) && src[n])
        n++;
    memcpy(boot_info.cmdline, src, n);
    boot_info.cmdline[n] = '\0';
    boot_info.cmdline_len = n;
    boot_info.cmdline_truncated = n == MAX_CMDLINE - 1 && src[n];
}

static void add_region(uint64_t base, uint64_t size, uint32_t type)
{
    if (!size) {
        boot_info.empty_memory_entries++; /* QEMU's PVH map ends with one */
        return;
    }
    if (boot_info.memory_count < MAX_MEMORY_REGIONS)
        boot_info.memory[boot_info.memory_count++] = (struct memory_region){base, size, type};
}

static uint8_t cmos_read(uint8_t reg)
{
    outb(0x70, reg);
    return inb(0x71);
}

/*
 * PVH version 0 carries no memory map. The only VMM-independent source left is the pair of
 * CMOS size registers that PC firmware fills in (QEMU does): 0x34/0x35 = RAM above 16 MiB in
 * 64 KiB units, 0x5b-0x5d = RAM above 4 GiB in 64 KiB units.
 */
static void memory_map_from_cmos(void)
{
    uint64_t above_16m = ((uint64_t)cmos_read(0x35) << 8 | cmos_read(0x34)) << 16;
    uint64_t above_4g =
        ((uint64_t)cmos_read(0x5d) << 16 | (uint64_t)cmos_read(0x5c) << 8 | cmos_read(0x5b)) << 16;
    boot_info.memory_from_firmware = true;
    add_region(0, 0x9fc00, MEMORY_RAM);
    if (above_16m)
        add_region(MIB, 15 * MIB + above_16m, MEMORY_RAM);
    if (above_4g)
        add_region(4 * GIB, above_4g, MEMORY_RAM);
}

static void parse_pvh(uint64_t addr)
{
    boot_info.protocol_name = "PVH";
    if (!mapped(addr, sizeof(struct hvm_start_info)))
        bail_out("hvm_start_info at 0x%lx is out of reach", addr);
    const struct hvm_start_info *info = (const void *)addr;
    if (info->magic != HVM_START_MAGIC)
        bail_out("hvm_start_info at 0x%lx: bad magic 0x%x", addr, info->magic);
    boot_info.pvh_version = info->version;
    copy_cmdline(info->cmdline_paddr);
    boot_info.rsdp = info->rsdp_paddr;
    if (info->nr_modules && mapped(info->modlist_paddr, sizeof(struct hvm_modlist_entry))) {
        const struct hvm_modlist_entry *initrd = (const void *)info->modlist_paddr;
        boot_info.initrd_base = initrd->paddr;
        boot_info.initrd_size = initrd->size;
    }
    if (info->version >= 1 && info->memmap_paddr && info->memmap_entries &&
        mapped(info->memmap_paddr, info->memmap_entries * sizeof(struct hvm_memmap_entry))) {
        const struct hvm_memmap_entry *map = (const void *)info->memmap_paddr;
        for (uint32_t i = 0; i < info->memmap_entries; i++)
            add_region(map[i].addr, map[i].size, map[i].type);
    } else {
        memory_map_from_cmos();
    }
}

static void parse_linux64(uint64_t addr)
{
    boot_info.protocol_name = "Linux 64-bit";
    if (!mapped(addr, 4096))
        bail_out("boot_params at 0x%lx is out of reach", addr);
    const uint8_t *bp = (const uint8_t *)addr;
#define FIELD(type, offset) (*(const type *)(bp + (offset)))
    copy_cmdline((uint64_t)FIELD(uint32_t, BP_EXT_CMD_LINE_PTR) << 32 |
                 FIELD(uint32_t, BP_CMD_LINE_PTR));
    boot_info.initrd_base =
        (uint64_t)FIELD(uint32_t, BP_EXT_RAMDISK_IMAGE) << 32 | FIELD(uint32_t, BP_RAMDISK_IMAGE);
    boot_info.initrd_size =
        (uint64_t)FIELD(uint32_t, BP_EXT_RAMDISK_SIZE) << 32 | FIELD(uint32_t, BP_RAMDISK_SIZE);
    boot_info.rsdp = FIELD(uint64_t, BP_ACPI_RSDP_ADDR);
    unsigned entries = FIELD(uint8_t, BP_E820_ENTRIES);
    if (entries > BP_E820_MAX)
        entries = BP_E820_MAX;
    for (unsigned i = 0; i < entries; i++) {
        const uint8_t *e = bp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE;
        add_region(*(const uint64_t *)e, *(const uint64_t *)(e + 8), *(const uint32_t *)(e + 16));
    }
#undef FIELD
}

void boot_info_parse(int protocol, uint64_t info_addr)
{
    boot_info.protocol = protocol;
    if (protocol == BOOT_PROTOCOL_PVH)
        parse_pvh(info_addr);
    else
        parse_linux64(info_addr);
}
