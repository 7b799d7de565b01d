/*
 * Physical memory for device rings and buffers: a bump allocator over the RAM region that holds
 * the end of the image (identity-mapped, so an address is both a pointer and a bus address).
 * Nothing is ever freed; memory is not zeroed unless asked (zeroing is slow at CPL0 here).
 */
#include "guest.h"

extern char __image_end[];

static uint64_t next_free, limit;

static void alloc_init(void)
{
    uint64_t start = (uint64_t)__image_end;
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type == MEMORY_RAM && r->base <= start && start < r->base + r->size) {
            next_free = start;
            limit = r->base + r->size < 4 * GIB ? r->base + r->size : 4 * GIB;
            return;
        }
    }
    bail_out("no RAM region holds the end of the image (0x%lx)", start);
}

void *phys_alloc(size_t size, size_t align)
{
    if (!limit)
        alloc_init();
    if (align < 16)
        align = 16;
    uint64_t addr = (next_free + align - 1) & ~(uint64_t)(align - 1);
    if (addr + size > limit || addr + size < addr)
        bail_out("out of memory: %zu bytes wanted, 0x%lx-0x%lx free", size, next_free, limit);
    next_free = addr + size;
    return (void *)addr;
}

void *phys_alloc_zeroed(size_t size, size_t align)
{
    void *p = phys_alloc(size, align);
    memset(p, 0, size);
    return p;
}

uint64_t phys_free_bytes(void)
{
    if (!limit)
        alloc_init();
    return limit - next_free;
}
