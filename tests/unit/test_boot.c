#include "arch/x86/boot.h"
#include "arch/x86/layout.h"
#include "suites.h"
#include "util/error.h"
#include "vmm/memory.h"

#include <asm/bootparam.h>
#include <elf.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1ULL << 20)

static struct guest_memory mem;

static void setup_mem(void)
{
    ck_assert_int_eq(guest_memory_map(&mem, 64 * MIB, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
}

static void teardown_mem(void)
{
    guest_memory_free(&mem);
}

/* ---- image builders -------------------------------------------------- */

struct seg {
    uint64_t paddr;
    uint32_t filesz, memsz;
    uint8_t fill;
};

/* An x86-64 ELF executable with the given segments and, optionally, a PVH
 * note. Returns its size; buf must hold 64 KiB. */
static size_t build_elf(uint8_t *buf, uint64_t entry, const struct seg *segs, unsigned nsegs,
                        bool pvh, uint32_t pvh_entry)
{
    memset(buf, 0, 65536);
    Elf64_Ehdr *eh = (Elf64_Ehdr *)buf;
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_ident[EI_VERSION] = EV_CURRENT;
    eh->e_type = ET_EXEC;
    eh->e_machine = EM_X86_64;
    eh->e_version = EV_CURRENT;
    eh->e_entry = entry;
    eh->e_phoff = sizeof(*eh);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    eh->e_phnum = (uint16_t)(nsegs + (pvh ? 1 : 0));
    eh->e_ehsize = sizeof(*eh);
    Elf64_Phdr *ph = (Elf64_Phdr *)(buf + eh->e_phoff);
    size_t off = 4096;
    for (unsigned i = 0; i < nsegs; i++) {
        ph[i] = (Elf64_Phdr){.p_type = PT_LOAD,
                             .p_offset = off,
                             .p_vaddr = segs[i].paddr,
                             .p_paddr = segs[i].paddr,
                             .p_filesz = segs[i].filesz,
                             .p_memsz = segs[i].memsz,
                             .p_align = 4096};
        memset(buf + off, segs[i].fill, segs[i].filesz);
        off += (segs[i].filesz + 4095) & ~4095u;
    }
    if (pvh) {
        uint32_t note[5] = {4, 4, XEN_ELFNOTE_PHYS32_ENTRY, 0, pvh_entry};
        memcpy(&note[3], "Xen", 4);
        memcpy(buf + off, note, sizeof(note));
        ph[nsegs] = (Elf64_Phdr){.p_type = PT_NOTE, .p_offset = off, .p_filesz = sizeof(note)};
        off += sizeof(note);
    }
    return off;
}

/* A minimal bzImage: one setup sector after the boot sector, a payload. */
static size_t build_bzimage(uint8_t *buf, uint16_t version, uint32_t payload)
{
    size_t setup = 2 * 512;
    memset(buf, 0, setup + payload);
    buf[0x1f1] = 1; /* setup_sects */
    buf[0x1fe] = 0x55;
    buf[0x1ff] = 0xaa;
    buf[0x200] = 0xeb;          /* jmp */
    buf[0x201] = 0x268 - 0x202; /* header ends at 0x268 */
    memcpy(buf + 0x202, "HdrS", 4);
    buf[0x206] = (uint8_t)version;
    buf[0x207] = (uint8_t)(version >> 8);
    buf[0x211] = LOADED_HIGH;
    uint32_t initrd_max = 0x7fffffff, cmdline_size = 255, init_size = 8 * MIB;
    uint64_t pref = 16 * MIB;
    memcpy(buf + 0x22c, &initrd_max, 4);
    buf[0x234] = 1; /* relocatable */
    buf[0x236] = XLF_KERNEL_64;
    memcpy(buf + 0x238, &cmdline_size, 4);
    memcpy(buf + 0x258, &pref, 8);
    memcpy(buf + 0x260, &init_size, 4);
    for (uint32_t i = 0; i < payload; i++)
        buf[setup + i] = (uint8_t)(i * 7);
    return setup + payload;
}

static int make_initrd(size_t size, uint8_t seed)
{
    int fd = memfd_create("initrd", 0);
    ck_assert_int_ge(fd, 0);
    uint8_t *data = malloc(size);
    for (size_t i = 0; i < size; i++)
        data[i] = (uint8_t)(i ^ seed);
    ck_assert_int_eq(write(fd, data, size), (ssize_t)size);
    free(data);
    return fd;
}

static struct boot_request request(const uint8_t *img, size_t size, const char *cmdline)
{
    return (struct boot_request){
        .kernel = img, .kernel_size = size, .initrd_fd = -1, .cmdline = cmdline};
}

/* ---- ELF and PVH ----------------------------------------------------- */

START_TEST(pvh_elf_loads_segments_and_start_info)
{
    static uint8_t img[65536];
    struct seg segs[2] = {{.paddr = 0x100000, .filesz = 0x1800, .memsz = 0x3000, .fill = 0xa5},
                          {.paddr = 0x200000, .filesz = 0x100, .memsz = 0x100, .fill = 0x5a}};
    size_t size = build_elf(img, 0xffffffff81000000ULL, segs, 2, true, 0x100040);
    /* Stale bytes where .bss goes must be cleared. */
    memset(gpa_to_hva(&mem, 0x101800, 0x1800), 0xee, 0x1800);
    int initrd = make_initrd(10000, 3);
    struct boot_request req = request(img, size, "console=ttyS0 hello=\"a b\"");
    req.initrd_fd = initrd;
    req.initrd_size = 10000;
    struct boot_entry e;
    ck_assert_msg(boot_load(&mem, &req, &e) == 0, "%s", error_get());
    close(initrd);

    ck_assert_int_eq(e.protocol, BOOT_PVH);
    ck_assert_uint_eq(e.entry, 0x100040);
    ck_assert_uint_eq(e.info_gpa, LAYOUT_PVH_INFO);
    const uint8_t *k = gpa_to_hva(&mem, 0x100000, 0x3000);
    ck_assert_uint_eq(k[0], 0xa5);
    ck_assert_uint_eq(k[0x17ff], 0xa5);
    ck_assert_uint_eq(k[0x1800], 0);
    ck_assert_uint_eq(k[0x2fff], 0);
    ck_assert_uint_eq(*(uint8_t *)gpa_to_hva(&mem, 0x2000ff, 1), 0x5a);

    const uint32_t *info = gpa_to_hva(&mem, LAYOUT_PVH_INFO, 56);
    ck_assert_uint_eq(info[0], PVH_START_MAGIC);
    ck_assert_uint_eq(info[1], 1);
    ck_assert_uint_eq(info[3], 1); /* nr_modules */
    uint64_t cmdline_paddr, memmap_paddr, modlist_paddr;
    memcpy(&modlist_paddr, &info[4], 8);
    memcpy(&cmdline_paddr, &info[6], 8);
    memcpy(&memmap_paddr, &info[10], 8);
    ck_assert_str_eq(gpa_to_hva(&mem, cmdline_paddr, 1), "console=ttyS0 hello=\"a b\"");
    const uint64_t *mod = gpa_to_hva(&mem, modlist_paddr, 32);
    ck_assert_uint_eq(mod[0], e.initrd_start);
    ck_assert_uint_eq(mod[1], 10000);
    /* The initrd sits page-aligned at the top of RAM, bytes intact. */
    ck_assert_uint_eq(e.initrd_start % 4096, 0);
    ck_assert_uint_le(e.initrd_start + 10000, 64 * MIB);
    ck_assert_uint_gt(e.initrd_start + 10000 + 4096, 64 * MIB);
    const uint8_t *rd = gpa_to_hva(&mem, e.initrd_start, 10000);
    for (size_t i = 0; i < 10000; i++)
        ck_assert_uint_eq(rd[i], (uint8_t)(i ^ 3));
    /* Memory map: low RAM, reserved EBDA and BIOS area, RAM from 1 MiB. */
    uint32_t n = info[12];
    ck_assert_uint_eq(n, 4);
    const uint8_t *mm = gpa_to_hva(&mem, memmap_paddr, n * 24);
    uint64_t addr, len;
    uint32_t type;
    memcpy(&addr, mm + 3 * 24, 8);
    memcpy(&len, mm + 3 * 24 + 8, 8);
    memcpy(&type, mm + 3 * 24 + 16, 4);
    ck_assert_uint_eq(addr, 1 * MIB);
    ck_assert_uint_eq(len, 63 * MIB);
    ck_assert_uint_eq(type, E820_RAM);
}
END_TEST

START_TEST(elf_without_note_boots_64bit_with_boot_params)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x1000000, .filesz = 0x1000, .memsz = 0x2000, .fill = 1};
    size_t size = build_elf(img, 0x1000000, &seg, 1, false, 0);
    struct boot_request req = request(img, size, "root=/dev/vda");
    struct boot_entry e;
    ck_assert_msg(boot_load(&mem, &req, &e) == 0, "%s", error_get());
    ck_assert_int_eq(e.protocol, BOOT_LINUX64);
    ck_assert_uint_eq(e.entry, 0x1000000);
    ck_assert_uint_eq(e.info_gpa, LAYOUT_ZERO_PAGE);
    const struct boot_params *bp = gpa_to_hva(&mem, LAYOUT_ZERO_PAGE, sizeof(*bp));
    ck_assert_uint_eq(bp->hdr.boot_flag, 0xaa55);
    ck_assert_uint_eq(bp->hdr.header, 0x53726448);
    ck_assert_uint_eq(bp->hdr.type_of_loader, 0xff);
    ck_assert_str_eq(gpa_to_hva(&mem, bp->hdr.cmd_line_ptr, 1), "root=/dev/vda");
    ck_assert_uint_eq(bp->hdr.ramdisk_size, 0);
    ck_assert_uint_eq(bp->e820_entries, 4);
    ck_assert_uint_eq(bp->e820_table[0].addr, 0);
    ck_assert_uint_eq(bp->e820_table[0].size, LAYOUT_EBDA);
    ck_assert_uint_eq(bp->e820_table[0].type, E820_RAM);
    ck_assert_uint_eq(bp->e820_table[3].addr + bp->e820_table[3].size, 64 * MIB);
    /* Identity-mapped page tables: PML4 -> PDPT -> PD with 2 MiB pages. */
    const uint64_t *pml4 = gpa_to_hva(&mem, LAYOUT_PML4, 8);
    const uint64_t *pd = gpa_to_hva(&mem, LAYOUT_PD, 4 * 4096);
    ck_assert_uint_eq(pml4[0] & ~0xfffULL, LAYOUT_PDPT);
    ck_assert_uint_eq(pd[8] & ~0xfffULL, 8 * 2 * MIB);
    ck_assert_uint_eq(pd[8] & 0x80, 0x80);
    ck_assert_uint_eq(pd[2047] & ~0xfffULL, 4096 * MIB - 2 * MIB);
    /* GDT: 64-bit code at 0x10, flat data at 0x18. */
    const uint64_t *gdt = gpa_to_hva(&mem, LAYOUT_GDT, 40);
    ck_assert_uint_eq((gdt[2] >> 53) & 1, 1);
    ck_assert_uint_eq((gdt[3] >> 41) & 1, 1);
}
END_TEST

START_TEST(elf_entry_must_be_physical)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x1000000, .filesz = 0x1000, .memsz = 0x1000, .fill = 1};
    size_t size = build_elf(img, 0xffffffff81000000ULL, &seg, 1, false, 0);
    struct boot_request req = request(img, size, "");
    struct boot_entry e;
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "entry point"));
}
END_TEST

START_TEST(elf_bad_images_refused)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x100000, .filesz = 0x1000, .memsz = 0x1000, .fill = 1};
    struct boot_entry e;
    size_t size = build_elf(img, 0x100000, &seg, 1, true, 0x100000);

    /* Truncated inside the header, the program headers, the segment. */
    struct boot_request req = request(img, 40, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    req = request(img, sizeof(Elf64_Ehdr) + 10, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "truncated"));
    req = request(img, 4096 + 100, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "truncated"));

    /* Wrong class and machine. */
    img[EI_CLASS] = ELFCLASS32;
    req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "64-bit"));
    img[EI_CLASS] = ELFCLASS64;
    ((Elf64_Ehdr *)img)->e_machine = EM_AARCH64;
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "not x86-64"));

    /* Not an ELF, not a bzImage. */
    memset(img, 0x41, 4096);
    req = request(img, 4096, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "neither a bzImage"));
    req = request(img, 100, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "too small"));
}
END_TEST

START_TEST(elf_segment_checks)
{
    static uint8_t img[65536];
    struct boot_entry e;
    /* Beyond RAM. */
    struct seg big = {.paddr = 60 * MIB, .filesz = 0x1000, .memsz = 8 * MIB, .fill = 1};
    size_t size = build_elf(img, 60 * MIB, &big, 1, true, 60 * MIB);
    struct boot_request req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "raise --memory"));
    /* Below 1 MiB, over ember's boot data. */
    struct seg low = {.paddr = 0x8000, .filesz = 0x100, .memsz = 0x100, .fill = 1};
    size = build_elf(img, 0x8000, &low, 1, true, 0x8000);
    req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "below 1 MiB"));
    /* filesz > memsz. */
    struct seg odd = {.paddr = 0x100000, .filesz = 0x200, .memsz = 0x100, .fill = 1};
    size = build_elf(img, 0x100000, &odd, 1, true, 0x100000);
    req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    /* Wrapping segment. */
    struct seg wrap = {.paddr = UINT64_MAX - 0x10, .filesz = 0x10, .memsz = 0x100, .fill = 1};
    size = build_elf(img, 0x100000, &wrap, 1, true, 0x100000);
    req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "wraps"));
}
END_TEST

START_TEST(pvh_note_overrun_refused)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x100000, .filesz = 0x100, .memsz = 0x100, .fill = 1};
    size_t size = build_elf(img, 0x100000, &seg, 1, true, 0x100000);
    /* Note claims a name longer than its segment. */
    uint32_t huge = 0x10000;
    memcpy(img + 4096 * 2, &huge, 4);
    struct boot_request req = request(img, size, "");
    struct boot_entry e;
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "note"));
}
END_TEST

START_TEST(cmdline_limits)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x100000, .filesz = 0x100, .memsz = 0x100, .fill = 1};
    size_t size = build_elf(img, 0x100000, &seg, 1, true, 0x100000);
    char *line = malloc(BOOT_ELF_CMDLINE_MAX + 1);
    memset(line, 'x', BOOT_ELF_CMDLINE_MAX - 1);
    line[BOOT_ELF_CMDLINE_MAX - 1] = '\0'; /* longest accepted */
    struct boot_request req = request(img, size, line);
    struct boot_entry e;
    ck_assert_msg(boot_load(&mem, &req, &e) == 0, "%s", error_get());
    ck_assert_uint_eq(strlen(gpa_to_hva(&mem, LAYOUT_CMDLINE, 1)), BOOT_ELF_CMDLINE_MAX - 1);
    line[BOOT_ELF_CMDLINE_MAX - 1] = 'x';
    line[BOOT_ELF_CMDLINE_MAX] = '\0';
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "command line"));
    free(line);
}
END_TEST

START_TEST(initrd_too_big_refused)
{
    static uint8_t img[65536];
    struct seg seg = {.paddr = 0x100000, .filesz = 0x100, .memsz = 0x100, .fill = 1};
    size_t size = build_elf(img, 0x100000, &seg, 1, true, 0x100000);
    int fd = memfd_create("initrd", 0);
    ck_assert_int_eq(ftruncate(fd, 64 * MIB), 0);
    struct boot_request req = request(img, size, "");
    req.initrd_fd = fd;
    req.initrd_size = 64 * MIB;
    struct boot_entry e;
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "does not fit"));
    /* A file shorter than announced is caught too. */
    req.initrd_size = 1 * MIB;
    ck_assert_int_eq(ftruncate(fd, 4096), 0);
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "shorter"));
    close(fd);
}
END_TEST

/* ---- bzImage --------------------------------------------------------- */

START_TEST(bzimage_loads_with_header_and_initrd)
{
    static uint8_t img[1024 + 8192];
    size_t size = build_bzimage(img, 0x020f, 8192);
    int initrd = make_initrd(5000, 9);
    struct boot_request req = request(img, size, "console=ttyS0");
    req.initrd_fd = initrd;
    req.initrd_size = 5000;
    struct boot_entry e;
    ck_assert_msg(boot_load(&mem, &req, &e) == 0, "%s", error_get());
    close(initrd);
    ck_assert_int_eq(e.protocol, BOOT_LINUX64);
    ck_assert_uint_eq(e.entry, 0x100000 + 0x200);
    const uint8_t *k = gpa_to_hva(&mem, 0x100000, 8192);
    for (uint32_t i = 0; i < 8192; i++)
        ck_assert_uint_eq(k[i], (uint8_t)(i * 7));
    const struct boot_params *bp = gpa_to_hva(&mem, LAYOUT_ZERO_PAGE, sizeof(*bp));
    ck_assert_uint_eq(bp->hdr.version, 0x020f);
    ck_assert_uint_eq(bp->hdr.cmdline_size, 255);
    ck_assert_uint_eq(bp->hdr.type_of_loader, 0xff);
    ck_assert_str_eq(gpa_to_hva(&mem, bp->hdr.cmd_line_ptr, 1), "console=ttyS0");
    ck_assert_uint_eq(bp->hdr.ramdisk_image, e.initrd_start);
    ck_assert_uint_eq(bp->hdr.ramdisk_size, 5000);
    ck_assert_uint_ge(e.initrd_start, 16 * MIB + 8 * MIB); /* above init_size */
    ck_assert_uint_eq(bp->e820_entries, 4);
}
END_TEST

START_TEST(bzimage_bad_images_refused)
{
    static uint8_t img[1024 + 4096];
    struct boot_entry e;
    size_t size = build_bzimage(img, 0x0205, 4096);
    struct boot_request req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "2.06"));

    size = build_bzimage(img, 0x020f, 4096);
    img[0x236] = 0; /* no 64-bit entry */
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "64-bit"));

    size = build_bzimage(img, 0x020f, 4096);
    img[0x211] = 0; /* zImage */
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "zImage"));

    size = build_bzimage(img, 0x020f, 4096);
    img[0x1fe] = 0; /* boot flag */
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "boot flag"));

    size = build_bzimage(img, 0x020f, 4096);
    req = request(img, 1000, ""); /* cut inside setup */
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "truncated"));

    char line[300];
    memset(line, 'y', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    req = request(img, size, line); /* header allows 255 */
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "accepts at most 255"));

    uint32_t init_size = 60 * MIB; /* needs 16 + 60 MiB */
    memcpy(img + 0x260, &init_size, 4);
    req = request(img, size, "");
    ck_assert_int_eq(boot_load(&mem, &req, &e), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "raise --memory"));
}
END_TEST

/* ---- memory map ------------------------------------------------------ */

START_TEST(e820_splits_around_hole)
{
    struct guest_memory big; /* reserved address space only: nothing is touched */
    ck_assert_int_eq(
        guest_memory_map(&big, 5ULL << 30, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END), 0);
    struct e820_entry map[8];
    unsigned n = e820_build(&big, map, 8);
    ck_assert_uint_eq(n, 5);
    ck_assert_uint_eq(map[3].addr, 1 * MIB);
    ck_assert_uint_eq(map[3].addr + map[3].size, LAYOUT_MMIO_HOLE_START);
    ck_assert_uint_eq(map[4].addr, 4ULL << 30);
    ck_assert_uint_eq(map[4].size, 2ULL << 30); /* 5 GiB - 3 GiB below the hole */
    uint64_t ram = 0;
    for (unsigned i = 0; i < n; i++) {
        if (map[i].type == E820_RAM)
            ram += map[i].size;
        if (i)
            ck_assert_uint_ge(map[i].addr, map[i - 1].addr + map[i - 1].size);
    }
    /* Only the legacy area between 640 KiB and 1 MiB is not RAM. */
    ck_assert_uint_eq(ram, (5ULL << 30) - (1 * MIB - LAYOUT_EBDA));
    n = e820_build(&big, map, 2);
    ck_assert_uint_eq(n, 2);
    guest_memory_free(&big);
}
END_TEST

Suite *boot_suite(void)
{
    Suite *s = suite_create("boot");
    TCase *elf = tcase_create("elf");
    tcase_add_checked_fixture(elf, setup_mem, teardown_mem);
    tcase_add_test(elf, pvh_elf_loads_segments_and_start_info);
    tcase_add_test(elf, elf_without_note_boots_64bit_with_boot_params);
    tcase_add_test(elf, elf_entry_must_be_physical);
    tcase_add_test(elf, elf_bad_images_refused);
    tcase_add_test(elf, elf_segment_checks);
    tcase_add_test(elf, pvh_note_overrun_refused);
    tcase_add_test(elf, cmdline_limits);
    tcase_add_test(elf, initrd_too_big_refused);
    suite_add_tcase(s, elf);
    TCase *bz = tcase_create("bzimage");
    tcase_add_checked_fixture(bz, setup_mem, teardown_mem);
    tcase_add_test(bz, bzimage_loads_with_header_and_initrd);
    tcase_add_test(bz, bzimage_bad_images_refused);
    suite_add_tcase(s, bz);
    TCase *map = tcase_create("e820");
    tcase_add_test(map, e820_splits_around_hole);
    suite_add_tcase(s, map);
    return s;
}
