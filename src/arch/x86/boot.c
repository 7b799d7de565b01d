#include "arch/x86/boot.h"

#include "arch/x86/layout.h"
#include "util/error.h"

#include <asm/bootparam.h>
#include <elf.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define PAGE_SIZE 4096ULL
#define SZ_1M     (1ULL << 20)

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static uint64_t align_down(uint64_t v, uint64_t a)
{
    return v & ~(a - 1);
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* ---- format detection and parsing ------------------------------------ */

bool boot_is_elf(const uint8_t *data, size_t size)
{
    return size >= SELFMAG && memcmp(data, ELFMAG, SELFMAG) == 0;
}

/* Offsets into a bzImage file (Documentation/arch/x86/boot.rst). */
#define BZ_SETUP_SECTS     0x1f1
#define BZ_BOOT_FLAG       0x1fe
#define BZ_JUMP            0x200
#define BZ_HEADER          0x202
#define BZ_VERSION         0x206
#define BZ_LOADFLAGS       0x211
#define BZ_INITRD_ADDR_MAX 0x22c
#define BZ_RELOCATABLE     0x234
#define BZ_XLOADFLAGS      0x236
#define BZ_CMDLINE_SIZE    0x238
#define BZ_PREF_ADDRESS    0x258
#define BZ_INIT_SIZE       0x260
#define BZ_MIN_FILE        0x268 /* through init_size and handover_offset */

/* LOADED_HIGH, XLF_KERNEL_64 and XLF_CAN_BE_LOADED_ABOVE_4G come from
 * <asm/bootparam.h>. */

bool boot_is_bzimage(const uint8_t *data, size_t size)
{
    return size >= BZ_MIN_FILE && memcmp(data + BZ_HEADER, "HdrS", 4) == 0;
}

int bzimage_parse(const uint8_t *data, size_t size, struct bzimage_info *out)
{
    memset(out, 0, sizeof(*out));
    if (size < BZ_MIN_FILE)
        return error_set("bzImage is truncated: %zu bytes, its header alone needs %d", size,
                         BZ_MIN_FILE);
    if (memcmp(data + BZ_HEADER, "HdrS", 4) != 0)
        return error_set("not a bzImage: no \"HdrS\" magic at offset 0x%x", BZ_HEADER);
    if (rd16(data + BZ_BOOT_FLAG) != 0xaa55)
        return error_set("not a bzImage: boot flag is 0x%04x, expected 0xaa55",
                         rd16(data + BZ_BOOT_FLAG));
    out->version = rd16(data + BZ_VERSION);
    if (out->version < 0x0206)
        return error_set("bzImage speaks boot protocol %u.%02u; ember needs 2.06 or later",
                         out->version >> 8, out->version & 0xff);
    unsigned sects = data[BZ_SETUP_SECTS] ? data[BZ_SETUP_SECTS] : 4;
    out->setup_size = (size_t)(sects + 1) * 512;
    if (out->setup_size >= size)
        return error_set("bzImage is truncated: %zu bytes, setup alone is %zu", size,
                         out->setup_size);
    /* The byte after the jump opcode gives the header's end. */
    out->header_end = BZ_JUMP + 2 + data[BZ_JUMP + 1];
    if (out->header_end > out->setup_size ||
        out->header_end > BZ_SETUP_SECTS + sizeof(struct setup_header))
        out->header_end = BZ_SETUP_SECTS + sizeof(struct setup_header);
    if (out->header_end > size)
        return error_set("bzImage is truncated inside its setup header");
    if (!(data[BZ_LOADFLAGS] & LOADED_HIGH))
        return error_set("bzImage is a zImage (not loaded high); ember boots only bzImages");
    uint16_t xloadflags = out->version >= 0x020c ? rd16(data + BZ_XLOADFLAGS) : XLF_KERNEL_64;
    if (!(xloadflags & XLF_KERNEL_64))
        return error_set("bzImage has no 64-bit entry point (a 32-bit kernel?)");
    out->can_load_above_4g = xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G;
    out->cmdline_max = rd32(data + BZ_CMDLINE_SIZE);
    out->initrd_addr_max = rd32(data + BZ_INITRD_ADDR_MAX);
    if (out->version >= 0x020a) {
        out->pref_address = rd64(data + BZ_PREF_ADDRESS);
        out->init_size = rd32(data + BZ_INIT_SIZE);
    } else {
        out->pref_address = LAYOUT_HIMEM;
        out->init_size = (uint32_t)(size - out->setup_size);
    }
    return 0;
}

static int parse_notes(const uint8_t *p, uint64_t len, struct elf_info *out)
{
    while (len >= 12) {
        uint32_t namesz = rd32(p), descsz = rd32(p + 4), type = rd32(p + 8);
        uint64_t name_len = align_up(namesz, 4), desc_len = align_up(descsz, 4);
        if (name_len > len - 12 || desc_len > len - 12 - name_len)
            return error_set("ELF note overruns its segment");
        const uint8_t *name = p + 12, *desc = name + name_len;
        if (namesz == 4 && memcmp(name, "Xen", 4) == 0 && type == XEN_ELFNOTE_PHYS32_ENTRY) {
            if (descsz != 4 && descsz != 8)
                return error_set("PVH entry note has a %u-byte value; expected 4 or 8", descsz);
            uint64_t entry = descsz == 4 ? rd32(desc) : rd64(desc);
            if (entry > 0xffffffffULL)
                return error_set("PVH entry 0x%llx is above 4 GiB", (unsigned long long)entry);
            out->has_pvh = true;
            out->pvh_entry = (uint32_t)entry;
        }
        p += 12 + name_len + desc_len;
        len -= 12 + name_len + desc_len;
    }
    return 0;
}

int elf_parse(const uint8_t *data, size_t size, struct elf_info *out)
{
    memset(out, 0, sizeof(*out));
    if (size < sizeof(Elf64_Ehdr))
        return error_set("ELF kernel is truncated: %zu bytes is less than its header", size);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)data;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0)
        return error_set("not an ELF file (bad magic)");
    if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB)
        return error_set("ELF kernel is not 64-bit little-endian");
    if (eh->e_machine != EM_X86_64)
        return error_set("ELF kernel is for machine %u, not x86-64", eh->e_machine);
    if (eh->e_type != ET_EXEC)
        return error_set("ELF kernel is not an executable (e_type %u)", eh->e_type);
    if (eh->e_phentsize != sizeof(Elf64_Phdr))
        return error_set("ELF program header size is %u, expected %zu", eh->e_phentsize,
                         sizeof(Elf64_Phdr));
    if (eh->e_phnum == 0)
        return error_set("ELF kernel has no program headers");
    if (eh->e_phoff > size || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
        return error_set("ELF program headers lie beyond the end of the file (truncated?)");
    out->entry = eh->e_entry;
    out->lowest = UINT64_MAX;
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, data + eh->e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
        if (ph.p_type == PT_LOAD || ph.p_type == PT_NOTE) {
            if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset)
                return error_set("ELF segment %u lies beyond the end of the file (truncated?)", i);
        }
        if (ph.p_type == PT_NOTE) {
            if (parse_notes(data + ph.p_offset, ph.p_filesz, out) < 0)
                return -1;
            continue;
        }
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
            continue;
        if (ph.p_filesz > ph.p_memsz)
            return error_set("ELF segment %u has more file bytes than memory bytes", i);
        if (ph.p_paddr + ph.p_memsz < ph.p_paddr)
            return error_set("ELF segment %u wraps around the address space", i);
        if (out->nsegments == ELF_MAX_LOAD_SEGMENTS)
            return error_set("ELF kernel has more than %d loadable segments",
                             ELF_MAX_LOAD_SEGMENTS);
        out->segments[out->nsegments++] = (struct elf_segment){
            .file_offset = ph.p_offset,
            .file_size = ph.p_filesz,
            .paddr = ph.p_paddr,
            .mem_size = ph.p_memsz,
        };
        if (ph.p_paddr < out->lowest)
            out->lowest = ph.p_paddr;
        if (ph.p_paddr + ph.p_memsz > out->highest)
            out->highest = ph.p_paddr + ph.p_memsz;
    }
    if (out->nsegments == 0)
        return error_set("ELF kernel has no loadable segments");
    return 0;
}

/* ---- memory map ------------------------------------------------------ */

unsigned e820_build(const struct guest_memory *mem, struct e820_entry *out, unsigned max)
{
    struct e820_entry all[6];
    unsigned n = 0;
    all[n++] = (struct e820_entry){0, LAYOUT_EBDA, E820_RAM};
    all[n++] = (struct e820_entry){LAYOUT_EBDA, 0xa0000 - LAYOUT_EBDA, E820_RESERVED};
    all[n++] =
        (struct e820_entry){LAYOUT_BIOS_START, LAYOUT_HIMEM - LAYOUT_BIOS_START, E820_RESERVED};
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        uint64_t start = r->gpa < LAYOUT_HIMEM ? LAYOUT_HIMEM : r->gpa;
        if (r->gpa + r->size > start)
            all[n++] = (struct e820_entry){start, r->gpa + r->size - start, E820_RAM};
    }
    if (n > max)
        n = max;
    memcpy(out, all, n * sizeof(all[0]));
    return n;
}

/* ---- boot structures ------------------------------------------------- */

uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
    return ((uint64_t)(base & 0xff000000) << 32) | ((uint64_t)(flags & 0xf0ff) << 40) |
           ((uint64_t)(limit & 0x000f0000) << 32) | ((uint64_t)(base & 0x00ffffff) << 16) |
           (uint64_t)(limit & 0x0000ffff);
}

static int write_gdt(const struct guest_memory *mem, enum boot_protocol protocol)
{
    uint64_t gdt[5] = {
        0, 0,
        /* 0x10: code, 64-bit (L) for the Linux 64-bit entry, 32-bit (D) for PVH */
        protocol == BOOT_LINUX64 ? gdt_entry(0xa09b, 0, 0xfffff) : gdt_entry(0xc09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff), /* 0x18: flat data */
        gdt_entry(0x008b, 0, 0x67),    /* 0x20: busy TSS, required for VM entry */
    };
    return guest_write(mem, LAYOUT_GDT, gdt, sizeof(gdt));
}

/* Identity map of the low 4 GiB with 2 MiB pages: enough for the kernel, its
 * boot data and the local/IO APICs until the kernel builds its own tables. */
static int write_page_tables(const struct guest_memory *mem)
{
    uint64_t *pml4 = gpa_to_hva(mem, LAYOUT_PML4, PAGE_SIZE);
    uint64_t *pdpt = gpa_to_hva(mem, LAYOUT_PDPT, PAGE_SIZE);
    uint64_t *pd = gpa_to_hva(mem, LAYOUT_PD, 4 * PAGE_SIZE);
    if (!pml4 || !pdpt || !pd)
        return error_set("guest memory too small for boot page tables");
    memset(pml4, 0, PAGE_SIZE);
    memset(pdpt, 0, PAGE_SIZE);
    pml4[0] = LAYOUT_PDPT | 0x3; /* present, writable */
    for (uint64_t i = 0; i < 4; i++)
        pdpt[i] = (LAYOUT_PD + i * PAGE_SIZE) | 0x3;
    for (uint64_t i = 0; i < 4 * 512; i++)
        pd[i] = (i << 21) | 0x83; /* present, writable, 2 MiB page */
    return 0;
}

static int write_cmdline(const struct guest_memory *mem, const char *cmdline, size_t max_len)
{
    size_t len = strlen(cmdline);
    if (len > max_len)
        return error_set("kernel command line is %zu bytes; this kernel accepts at most %zu", len,
                         max_len);
    if (len + 1 > LAYOUT_CMDLINE_MAX)
        return error_set("kernel command line is %zu bytes; ember allows at most %llu", len,
                         LAYOUT_CMDLINE_MAX - 1);
    return guest_write(mem, LAYOUT_CMDLINE, cmdline, len + 1);
}

/* Places the initrd page-aligned as high as allowed, above the kernel. */
static int load_initrd(const struct guest_memory *mem, const struct boot_request *req,
                       uint64_t kernel_end, uint64_t addr_max, struct boot_entry *out)
{
    if (req->initrd_fd < 0)
        return 0;
    uint64_t size = req->initrd_size;
    if (size == 0)
        return error_set("initrd is empty");
    uint64_t top = guest_region_end(mem, 0); /* below the MMIO hole */
    if (addr_max && addr_max < UINT64_MAX && addr_max + 1 < top)
        top = addr_max + 1;
    uint64_t low = align_up(kernel_end, PAGE_SIZE);
    if (size > top || align_down(top - size, PAGE_SIZE) < low)
        return error_set("initrd (%llu KiB) does not fit in guest memory above the kernel; "
                         "raise --memory",
                         (unsigned long long)(size >> 10));
    uint64_t start = align_down(top - size, PAGE_SIZE);
    uint8_t *dst = gpa_to_hva(mem, start, size);
    if (!dst)
        return error_set("initrd range is not guest RAM");
    /* Read straight into guest memory: no second copy of a large initrd. */
    uint64_t done = 0;
    while (done < size) {
        ssize_t n = pread(req->initrd_fd, dst + done, size - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return error_errno("cannot read initrd");
        if (n == 0)
            return error_set("initrd is shorter than expected (file changed while loading?)");
        done += (uint64_t)n;
    }
    out->initrd_start = start;
    out->initrd_size = size;
    return 0;
}

static int load_elf_segments(const struct guest_memory *mem, const uint8_t *data,
                             const struct elf_info *elf)
{
    for (unsigned i = 0; i < elf->nsegments; i++) {
        const struct elf_segment *s = &elf->segments[i];
        if (s->paddr < LAYOUT_HIMEM)
            return error_set("ELF segment at 0x%llx lies below 1 MiB, where ember keeps boot "
                             "data; link the kernel at 1 MiB or above",
                             (unsigned long long)s->paddr);
        uint8_t *dst = gpa_to_hva(mem, s->paddr, s->mem_size);
        if (!dst)
            return error_set("kernel needs guest memory up to 0x%llx (%llu MiB) but the guest "
                             "has %llu MiB; raise --memory",
                             (unsigned long long)(s->paddr + s->mem_size),
                             (unsigned long long)((s->paddr + s->mem_size + SZ_1M - 1) >> 20),
                             (unsigned long long)(mem->ram_size >> 20));
        memcpy(dst, data + s->file_offset, s->file_size);
        memset(dst + s->file_size, 0, s->mem_size - s->file_size);
    }
    return 0;
}

static void fill_e820_zero_page(const struct guest_memory *mem, struct boot_params *bp)
{
    struct e820_entry map[E820_MAX_ENTRIES_ZEROPAGE];
    unsigned n = e820_build(mem, map, E820_MAX_ENTRIES_ZEROPAGE);
    for (unsigned i = 0; i < n; i++) {
        bp->e820_table[i].addr = map[i].addr;
        bp->e820_table[i].size = map[i].size;
        bp->e820_table[i].type = map[i].type;
    }
    bp->e820_entries = (uint8_t)n;
}

static void fill_zero_page_common(const struct guest_memory *mem, struct boot_params *bp,
                                  const struct boot_entry *e)
{
    bp->hdr.type_of_loader = 0xff; /* "other" */
    bp->hdr.cmd_line_ptr = (uint32_t)LAYOUT_CMDLINE;
    bp->ext_cmd_line_ptr = (uint32_t)(LAYOUT_CMDLINE >> 32);
    bp->hdr.ramdisk_image = (uint32_t)e->initrd_start;
    bp->ext_ramdisk_image = (uint32_t)(e->initrd_start >> 32);
    bp->hdr.ramdisk_size = (uint32_t)e->initrd_size;
    bp->ext_ramdisk_size = (uint32_t)(e->initrd_size >> 32);
    fill_e820_zero_page(mem, bp);
}

static int load_bzimage(const struct guest_memory *mem, const struct boot_request *req,
                        struct boot_entry *out)
{
    struct bzimage_info bz;
    if (bzimage_parse(req->kernel, req->kernel_size, &bz) < 0)
        return -1;
    /* The protected-mode kernel goes at 1 MiB; the decompressor moves itself
     * to pref_address and needs init_size bytes from there. */
    uint64_t load = LAYOUT_HIMEM;
    uint64_t payload = req->kernel_size - bz.setup_size;
    uint64_t run_at = bz.pref_address > load ? bz.pref_address : load;
    uint64_t needed = run_at + bz.init_size;
    if (load + payload > needed)
        needed = load + payload;
    if (!gpa_to_hva(mem, load, needed - load))
        return error_set("bzImage needs guest memory up to %llu MiB but the guest has %llu MiB; "
                         "raise --memory",
                         (unsigned long long)((needed + SZ_1M - 1) >> 20),
                         (unsigned long long)(mem->ram_size >> 20));
    if (guest_write(mem, load, req->kernel + bz.setup_size, payload) < 0)
        return -1;
    out->protocol = BOOT_LINUX64;
    out->format = "bzImage";
    out->entry = load + 0x200;
    out->kernel_start = load;
    out->kernel_end = needed;
    if (write_cmdline(mem, req->cmdline, bz.cmdline_max) < 0)
        return -1;
    uint64_t addr_max = bz.initrd_addr_max ? bz.initrd_addr_max : 0x37ffffff;
    if (bz.can_load_above_4g)
        addr_max = UINT64_MAX;
    if (load_initrd(mem, req, out->kernel_end, addr_max, out) < 0)
        return -1;

    struct boot_params *bp = gpa_to_hva(mem, LAYOUT_ZERO_PAGE, sizeof(*bp));
    if (!bp)
        return error_set("guest memory too small for boot_params");
    memset(bp, 0, sizeof(*bp));
    /* The kernel reads its own setup header back from boot_params. */
    memcpy((uint8_t *)bp + BZ_SETUP_SECTS, req->kernel + BZ_SETUP_SECTS,
           bz.header_end - BZ_SETUP_SECTS);
    bp->hdr.code32_start = (uint32_t)load;
    fill_zero_page_common(mem, bp, out);
    out->info_gpa = LAYOUT_ZERO_PAGE;
    return 0;
}

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

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

static int write_pvh_info(const struct guest_memory *mem, const struct boot_entry *e)
{
    struct e820_entry map[LAYOUT_PVH_MEMMAP_MAX];
    unsigned n = e820_build(mem, map, LAYOUT_PVH_MEMMAP_MAX);
    struct hvm_memmap_table_entry table[LAYOUT_PVH_MEMMAP_MAX];
    memset(table, 0, sizeof(table));
    for (unsigned i = 0; i < n; i++)
        table[i] = (struct hvm_memmap_table_entry){map[i].addr, map[i].size, map[i].type, 0};
    if (guest_write(mem, LAYOUT_PVH_MEMMAP, table, n * sizeof(table[0])) < 0)
        return -1;
    struct hvm_start_info info = {
        .magic = PVH_START_MAGIC,
        .version = 1,
        .cmdline_paddr = LAYOUT_CMDLINE,
        .memmap_paddr = LAYOUT_PVH_MEMMAP,
        .memmap_entries = n,
    };
    if (e->initrd_size) {
        struct hvm_modlist_entry mod = {.paddr = e->initrd_start, .size = e->initrd_size};
        if (guest_write(mem, LAYOUT_PVH_MODLIST, &mod, sizeof(mod)) < 0)
            return -1;
        info.nr_modules = 1;
        info.modlist_paddr = LAYOUT_PVH_MODLIST;
    }
    return guest_write(mem, LAYOUT_PVH_INFO, &info, sizeof(info));
}

static int load_elf(const struct guest_memory *mem, const struct boot_request *req,
                    struct boot_entry *out)
{
    struct elf_info elf;
    if (elf_parse(req->kernel, req->kernel_size, &elf) < 0)
        return -1;
    if (load_elf_segments(mem, req->kernel, &elf) < 0)
        return -1;
    out->kernel_start = elf.lowest;
    out->kernel_end = elf.highest;
    if (write_cmdline(mem, req->cmdline, BOOT_ELF_CMDLINE_MAX - 1) < 0)
        return -1;
    if (load_initrd(mem, req, out->kernel_end, UINT64_MAX, out) < 0)
        return -1;
    if (elf.has_pvh) {
        out->protocol = BOOT_PVH;
        out->format = "PVH ELF";
        out->entry = elf.pvh_entry;
        out->info_gpa = LAYOUT_PVH_INFO;
        return write_pvh_info(mem, out);
    }
    if (!gpa_to_hva(mem, elf.entry, 1) || elf.entry < elf.lowest || elf.entry >= elf.highest)
        return error_set("ELF entry point 0x%llx is not inside the loaded kernel (a vmlinux "
                         "entry must be a physical address)",
                         (unsigned long long)elf.entry);
    out->protocol = BOOT_LINUX64;
    out->format = "ELF";
    out->entry = elf.entry;
    struct boot_params *bp = gpa_to_hva(mem, LAYOUT_ZERO_PAGE, sizeof(*bp));
    if (!bp)
        return error_set("guest memory too small for boot_params");
    memset(bp, 0, sizeof(*bp));
    /* No setup header in the file: give the kernel the fields it reads. */
    bp->hdr.boot_flag = 0xaa55;
    bp->hdr.header = 0x53726448; /* "HdrS" */
    bp->hdr.version = 0x020f;
    bp->hdr.cmdline_size = BOOT_ELF_CMDLINE_MAX - 1;
    bp->hdr.kernel_alignment = 0x1000000;
    bp->hdr.loadflags = LOADED_HIGH;
    fill_zero_page_common(mem, bp, out);
    out->info_gpa = LAYOUT_ZERO_PAGE;
    return 0;
}

int boot_load(const struct guest_memory *mem, const struct boot_request *req,
              struct boot_entry *out)
{
    memset(out, 0, sizeof(*out));
    if (!gpa_to_hva(mem, 0, LAYOUT_HIMEM))
        return error_set("guest memory is too small for the boot area");
    int r;
    if (boot_is_elf(req->kernel, req->kernel_size))
        r = load_elf(mem, req, out);
    else if (boot_is_bzimage(req->kernel, req->kernel_size))
        r = load_bzimage(mem, req, out);
    else if (req->kernel_size < BZ_MIN_FILE && req->kernel_size >= 4 &&
             memcmp(req->kernel, ELFMAG, 4) != 0)
        r = error_set("kernel image is %zu bytes: too small to be a bzImage or an ELF vmlinux",
                      req->kernel_size);
    else
        r = error_set("kernel image is neither a bzImage (no \"HdrS\" magic) nor an ELF file");
    if (r < 0)
        return -1;
    if (write_gdt(mem, out->protocol) < 0)
        return -1;
    if (out->protocol == BOOT_LINUX64 && write_page_tables(mem) < 0)
        return -1;
    return 0;
}
