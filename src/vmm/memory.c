#include "vmm/memory.h"

#include "util/error.h"

#include <errno.h>
#include <linux/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

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

int guest_memory_map_file(struct guest_memory *mem, int fd, uint64_t ram_size, uint64_t hole_start,
                          uint64_t hole_end)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return error_errno("cannot stat the memory file");
    if (!S_ISREG(st.st_mode))
        return error_set("the memory file is not a regular file");
    if ((uint64_t)st.st_size < ram_size)
        return error_set("the memory file holds %llu bytes, less than the %llu MiB of guest memory "
                         "the snapshot describes",
                         (unsigned long long)st.st_size, (unsigned long long)(ram_size >> 20));
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED)
        return error_errno("cannot map the memory file (%llu MiB)",
                           (unsigned long long)(ram_size >> 20));
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    return 0;
}

/* A field of /proc/meminfo (a count of pages for the HugePages_ ones), or -1. */
static long long meminfo_field(const char *name)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -1;
    char line[128];
    long long v = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, name, n) && line[n] == ':') {
            v = strtoll(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

int guest_memory_map_hugetlb(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                             uint64_t hole_end)
{
    if (ram_size % SZ_2M)
        return error_set("guest memory of %llu MiB is not a whole number of 2 MiB huge pages",
                         (unsigned long long)(ram_size >> 20));
    /* No MAP_NORESERVE: the pages are reserved from the pool now. */
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        long long free_pages = meminfo_field("HugePages_Free");
        long long reserved = meminfo_field("HugePages_Rsvd");
        if (err == ENOMEM && free_pages >= 0 && reserved >= 0)
            return error_set("cannot back %llu MiB of guest memory with 2 MiB huge pages: it "
                             "needs %llu, the host has %lld free and not promised elsewhere "
                             "(reserve more in /proc/sys/vm/nr_hugepages)",
                             (unsigned long long)(ram_size >> 20),
                             (unsigned long long)(ram_size / SZ_2M),
                             free_pages > reserved ? free_pages - reserved : 0);
        errno = err;
        return error_errno("cannot map %llu MiB of guest memory from 2 MiB huge pages",
                           (unsigned long long)(ram_size >> 20));
    }
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    return 0;
}

void guest_memory_free(struct guest_memory *mem)
{
    if (mem->owns_mapping && mem->base)
        munmap(mem->base, mem->ram_size);
    free(mem->dirty);
    memset(mem, 0, sizeof(*mem));
}

size_t guest_memory_bitmap_words(const struct guest_memory *mem)
{
    uint64_t pages = (mem->ram_size + GUEST_PAGE_SIZE - 1) / GUEST_PAGE_SIZE;
    return (size_t)((pages + 63) / 64);
}

int guest_memory_track_dirty(struct guest_memory *mem)
{
    if (mem->dirty)
        return 0;
    size_t words = guest_memory_bitmap_words(mem);
    mem->dirty = calloc(words ? words : 1, sizeof(uint64_t));
    if (!mem->dirty)
        return error_set("out of memory for the dirty page bitmap");
    return 0;
}

void guest_memory_mark_dirty_range(const struct guest_memory *mem, const void *hva, uint64_t len)
{
    uintptr_t start = (uintptr_t)hva, base = (uintptr_t)mem->base;
    if (!len || start < base || start - base >= mem->ram_size)
        return;
    uint64_t off = start - base;
    uint64_t end = len > mem->ram_size - off ? mem->ram_size : off + len;
    uint64_t first = off / GUEST_PAGE_SIZE, last = (end - 1) / GUEST_PAGE_SIZE;
    for (uint64_t w = first / 64; w <= last / 64; w++) {
        uint64_t lo = w == first / 64 ? first % 64 : 0;
        uint64_t hi = w == last / 64 ? last % 64 : 63;
        uint64_t mask = (~0ULL >> (63 - hi)) & (~0ULL << lo);
        /* A plain load first: pages written again and again (a used ring) stay set, and
         * their cache line is not taken exclusive by every request. */
        if ((__atomic_load_n(&mem->dirty[w], __ATOMIC_RELAXED) & mask) != mask)
            __atomic_fetch_or(&mem->dirty[w], mask, __ATOMIC_RELAXED);
    }
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
    if (len) {
        memcpy(dst, src, len);
        guest_memory_mark_dirty(mem, dst, len);
    }
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
