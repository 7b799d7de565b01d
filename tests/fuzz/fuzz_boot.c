/* libFuzzer target: kernel image parsing and loading (ELF, PVH note,
 * bzImage) into a small guest. Guest memory is malloc'd so that
 * AddressSanitizer sees any write outside it. */
#include "arch/x86/boot.h"
#include "arch/x86/layout.h"
#include "vmm/memory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MEM_SIZE (8u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *ram;
    if (!ram)
        ram = malloc(MEM_SIZE);
    struct guest_memory mem;
    guest_memory_layout(&mem, ram, MEM_SIZE, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    struct elf_info elf;
    struct bzimage_info bz;
    elf_parse(data, size, &elf);
    bzimage_parse(data, size, &bz);
    struct boot_request req = {
        .kernel = data, .kernel_size = size, .initrd_fd = -1, .cmdline = "console=ttyS0"};
    struct boot_entry e;
    boot_load(&mem, &req, &e);
    return 0;
}
