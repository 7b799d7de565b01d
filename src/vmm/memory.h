/* Guest RAM: one anonymous mapping, presented to the guest as up to two
 * regions split around the 32-bit MMIO hole. Every translation from a
 * guest-physical address checks that the whole range lies in one region. */
#ifndef EMBER_VMM_MEMORY_H
#define EMBER_VMM_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_MEM_MAX_REGIONS 2
/* The unit of dirty tracking: KVM's (x86 small pages) and the memory file's. */
#define GUEST_PAGE_SIZE 4096u

struct guest_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *hva;
};

struct guest_memory {
    uint8_t *base;     /* start of the host mapping */
    uint64_t ram_size; /* bytes of guest RAM */
    bool owns_mapping; /* created by guest_memory_map (munmap on free) */
    bool has_memfd;    /* RAM is this memfd, mapped shared (another process may map it) */
    int memfd;
    bool owns_uffd; /* uffd below is open (guest_memory_map_uffd; closed on free) */
    int uffd;
    unsigned nregions;
    struct guest_region regions[GUEST_MEM_MAX_REGIONS];
    /* Pages ember itself wrote (KVM logs only the guest's writes): bit i is the page at
     * base + i * GUEST_PAGE_SIZE, set atomically from any thread. NULL: not tracked. */
    uint64_t *dirty;
};

/* Splits ram_size bytes at base into regions below and above the hole. */
void guest_memory_layout(struct guest_memory *mem, uint8_t *base, uint64_t ram_size,
                         uint64_t hole_start, uint64_t hole_end);
/* Maps ram_size bytes (MAP_NORESERVE) and lays them out around the hole. */
int guest_memory_map(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                     uint64_t hole_end);
/* The same from the host's hugetlbfs pool of 2 MiB pages (Firecracker's
 * huge_pages "2M"): ram_size a multiple of 2 MiB, every page reserved now,
 * so a pool too small fails here with the numbers, not at a guest fault. */
int guest_memory_map_hugetlb(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                             uint64_t hole_end);
/* Guest RAM in a memfd mapped MAP_SHARED, so that another process can map the same pages
 * (live migration to a new ember on this host; vhost-user back-ends). Faults on shared
 * memory cost more than on anonymous memory: only when asked for. */
int guest_memory_map_memfd(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                           uint64_t hole_end);
/* The same from the host's hugetlbfs pool of 2 MiB pages (huge pages asked for with a
 * vhost-user device): ram_size a multiple of 2 MiB, every page reserved now, a short pool
 * named. */
int guest_memory_map_memfd_hugetlb(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                                   uint64_t hole_end);
/* An existing memfd (of at least ram_size bytes) as guest RAM, shared; the descriptor is
 * taken over. */
int guest_memory_map_given_memfd(struct guest_memory *mem, int fd, uint64_t ram_size,
                                 uint64_t hole_start, uint64_t hole_end);
/* Guest RAM from a snapshot's memory file (fd, ram_size bytes or more):
 * mapped MAP_PRIVATE, so pages are read as the guest first touches them and
 * its writes never reach the file. */
int guest_memory_map_file(struct guest_memory *mem, int fd, uint64_t ram_size, uint64_t hole_start,
                          uint64_t hole_end);
/* Guest RAM served by an external page-fault handler, Firecracker's "Uffd" memory backend:
 * ram_size bytes mapped anonymous private (from 2 MiB hugetlbfs pages with hugetlb), every
 * region registered with a new userfaultfd for missing pages, then, over a connection to the
 * unix stream socket socket_path, one message: the JSON array of the regions
 * ({"base_host_virt_addr","size","offset","page_size","page_size_kib"}, offset = host address -
 * mem->base, the memory file's layout) with the userfaultfd attached (SCM_RIGHTS).
 * The call returns once the handler has read that message, or fails after timeout_ms (<= 0:
 * GUEST_MEM_UFFD_TIMEOUT_MS) for a handler that does not accept or read it, and at once for a
 * handler that closed the connection first. *sock_out is the connection, which the caller keeps
 * open while the guest lives (a handler may take its closing as the VM's end) and closes after
 * guest_memory_free. ember keeps its own copy of the userfaultfd in mem->uffd (closed by
 * guest_memory_free): were the handler to die, a fault then waits forever instead of the page
 * silently reading as zeros. Every thread touching guest RAM, ember's own included, waits on
 * the handler for each page it touches first. */
#define GUEST_MEM_UFFD_TIMEOUT_MS 5000
int guest_memory_map_uffd(struct guest_memory *mem, const char *socket_path, uint64_t ram_size,
                          uint64_t hole_start, uint64_t hole_end, bool hugetlb, int timeout_ms,
                          int *sock_out);
void guest_memory_free(struct guest_memory *mem);

/* Starts ember's side of dirty tracking (after the mapping exists): allocates the bitmap. */
int guest_memory_track_dirty(struct guest_memory *mem);
/* Words of a bitmap with a bit per page of guest RAM (GUEST_PAGE_SIZE pages). */
size_t guest_memory_bitmap_words(const struct guest_memory *mem);
void guest_memory_mark_dirty_range(const struct guest_memory *mem, const void *hva, uint64_t len);
/* Records that ember wrote [hva, hva+len) of guest RAM; bytes outside RAM are ignored. Free
 * when tracking is off (one test, inlined), a few atomic ORs when on. Any thread. */
static inline void guest_memory_mark_dirty(const struct guest_memory *mem, const void *hva,
                                           uint64_t len)
{
    if (__builtin_expect(mem->dirty != NULL, 0))
        guest_memory_mark_dirty_range(mem, hva, len);
}

/* Whether the GUEST_PAGE_SIZE bytes at p are all zero (snapshots and migration skip them). */
static inline bool guest_page_is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)(const void *)p;
    uint64_t acc = 0;
    for (unsigned i = 0; i < GUEST_PAGE_SIZE / 8; i++)
        acc |= w[i];
    return acc == 0;
}

/* Host pointer for [gpa, gpa+len) or NULL when any byte of it is not RAM
 * (or the range wraps). len 0 is treated as 1. */
void *gpa_to_hva(const struct guest_memory *mem, uint64_t gpa, uint64_t len);
/* Copies in/out of guest RAM; -1 (with an error) if the range is not RAM. guest_write marks
 * what it wrote dirty. */
int guest_write(const struct guest_memory *mem, uint64_t gpa, const void *src, uint64_t len);
int guest_read(const struct guest_memory *mem, uint64_t gpa, void *dst, uint64_t len);
/* End of the RAM region that contains gpa (0 if none). */
uint64_t guest_region_end(const struct guest_memory *mem, uint64_t gpa);

#endif
