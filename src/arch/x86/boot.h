/* Loading a kernel into guest memory: bzImage (Linux boot protocol, 64-bit
 * entry), uncompressed ELF vmlinux (64-bit entry with boot_params) and ELF
 * with a PVH note (32-bit entry with hvm_start_info). Parsing is separate
 * from loading so that every check can be unit-tested on plain buffers. */
#ifndef EMBER_ARCH_X86_BOOT_H
#define EMBER_ARCH_X86_BOOT_H

#include "vmm/memory.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Linux's COMMAND_LINE_SIZE on x86: the limit for kernels whose header does
 * not state one (ELF and PVH). */
#define BOOT_ELF_CMDLINE_MAX 2048

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define PVH_START_MAGIC          0x336ec578

enum boot_protocol {
    BOOT_LINUX64, /* 64-bit mode, paging on, RSI = boot_params */
    BOOT_PVH,     /* 32-bit protected mode, paging off, EBX = hvm_start_info */
};

/* Where the vCPU starts and what it finds there. */
struct boot_entry {
    enum boot_protocol protocol;
    const char *format; /* "bzImage", "ELF", "PVH ELF": for messages */
    uint64_t entry;     /* RIP */
    uint64_t info_gpa;  /* boot_params or hvm_start_info */
    uint64_t kernel_start, kernel_end;
    uint64_t initrd_start, initrd_size;
};

#define ELF_MAX_LOAD_SEGMENTS 16

struct elf_segment {
    uint64_t file_offset, file_size, paddr, mem_size;
};

struct elf_info {
    uint64_t entry; /* e_entry */
    bool has_pvh;
    uint32_t pvh_entry;
    unsigned nsegments;
    struct elf_segment segments[ELF_MAX_LOAD_SEGMENTS];
    uint64_t lowest, highest; /* physical extent of all segments */
};

struct bzimage_info {
    uint16_t version;
    size_t setup_size;     /* bytes before the protected-mode kernel */
    size_t header_end;     /* end of the setup header in the file */
    uint64_t pref_address; /* where the kernel wants to run */
    uint32_t init_size;    /* memory it needs from there */
    uint32_t cmdline_max;  /* longest command line it accepts */
    uint32_t initrd_addr_max;
    bool can_load_above_4g;
};

bool boot_is_elf(const uint8_t *data, size_t size);
bool boot_is_bzimage(const uint8_t *data, size_t size);
int elf_parse(const uint8_t *data, size_t size, struct elf_info *out);
int bzimage_parse(const uint8_t *data, size_t size, struct bzimage_info *out);

/* e820 types, as in the boot protocol. */
#define E820_RAM      1
#define E820_RESERVED 2

struct e820_entry {
    uint64_t addr, size;
    uint32_t type;
};

/* The guest's physical memory map; returns the number of entries. */
unsigned e820_build(const struct guest_memory *mem, struct e820_entry *out, unsigned max);

struct boot_request {
    const uint8_t *kernel;
    size_t kernel_size;
    int initrd_fd; /* -1: none */
    uint64_t initrd_size;
    const char *cmdline;
};

/* Validates and loads everything, writes the boot structures (GDT, page
 * tables, boot_params or hvm_start_info, command line) and fills *out. */
int boot_load(const struct guest_memory *mem, const struct boot_request *req,
              struct boot_entry *out);

/* A flat GDT descriptor and the matching KVM segment fields. */
uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit);

#endif
