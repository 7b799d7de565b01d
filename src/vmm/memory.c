#include "vmm/memory.h"

#include "util/error.h"

#include <string.h>
#include <sys/mman.h>

#define SZ_2M (2ULL << 20)

void guest_memory_layout(struct guest_memory *mem, uint8_t *base, uint64_t ram_size,
                         uint64_t hole_start, uint64_t hole_end)
{
    memset(mem, 0, sizeof(*mem));
    mem->base = base;
    mem->ram_size = ram_size;
    uint64_t low = ram_size < hole_start ? ram_size : hole_start;
    mem->regions[0] = (struct guest_region){.gpa = 0, .size = low, .hva = base};
    mem->nregions = 1;
    if (ram_size > low) {
        mem->regions[1] =
            (struct guest_region){.gpa = hole_end, .size = ram_size - low, .hva = base + low};
        mem->nregions = 2;
    }
}

int guest_memory_map(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                     uint64_t hole_end)
{
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return error_errno("cannot map %llu MiB of guest memory",
                           (unsigned long long)(ram_size >> 20));
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    /* Huge pages for the bulk of RAM. The first 2 MiB hold small boot
     * structures scattered over many pages; backing them with one huge page
     * would cost 2 MiB of host memory for a few KiB of data. */
    if (ram_size > SZ_2M)
        madvise((uint8_t *)p + SZ_2M, ram_size - SZ_2M, MADV_HUGEPAGE);
    return 0;
}

void guest_memory_free(struct guest_memory *mem)
{
    if (mem->owns_mapping && mem->base)
        munmap(mem->base, mem->ram_size);
    memset(mem, 0, sizeof(*mem));
}

void *gpa_to_hva(const struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        len = 1;
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
            return r->hva + (gpa - r->gpa);
    }
    return NULL;
}

uint64_t guest_region_end(const struct guest_memory *mem, uint64_t gpa)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r->gpa + r->size;
    }
    return 0;
}

int guest_write(const struct guest_memory *mem, uint64_t gpa, const void *src, uint64_t len)
{
    void *dst = gpa_to_hva(mem, gpa, len);
    if (!dst)
        return error_set("guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                         (unsigned long long)len);
    if (len)
        memcpy(dst, src, len);
    return 0;
}

int guest_read(const struct guest_memory *mem, uint64_t gpa, void *dst, uint64_t len)
{
    const void *src = gpa_to_hva(mem, gpa, len);
    if (!src)
        return error_set("guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                         (unsigned long long)len);
    if (len)
        memcpy(dst, src, len);
    return 0;
}
