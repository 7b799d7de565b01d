/* A driver's side of a split virtqueue in fake guest memory, for tests. */
#ifndef EMBER_TESTS_UNIT_VIRTQ_FAKE_H
#define EMBER_TESTS_UNIT_VIRTQ_FAKE_H

#include "arch/x86/layout.h"
#include "virtio/queue.h"
#include "vmm/memory.h"

#include <string.h>

#define FAKE_MEM      (16u << 20)
#define FAKE_DESC     0x10000ULL
#define FAKE_AVAIL    0x20000ULL
#define FAKE_USED     0x30000ULL
#define FAKE_DATA     0x100000ULL
#define FAKE_INDIRECT 0x80000ULL

struct fake_queue {
    struct guest_memory mem;
    struct virtq_config cfg;
    uint16_t size;
    uint16_t avail_idx;
};

static inline void fake_queue_init(struct fake_queue *f, uint16_t size)
{
    guest_memory_map(&f->mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    f->size = size;
    f->avail_idx = 0;
    f->cfg = (struct virtq_config){
        .size = size, .desc_gpa = FAKE_DESC, .avail_gpa = FAKE_AVAIL, .used_gpa = FAKE_USED};
}

static inline void fake_queue_free(struct fake_queue *f)
{
    guest_memory_free(&f->mem);
}

static inline struct virtq_desc *fake_desc(struct fake_queue *f, uint16_t i)
{
    return (struct virtq_desc *)gpa_to_hva(&f->mem, FAKE_DESC + 16ULL * i, 16);
}

static inline void fake_set_desc(struct fake_queue *f, uint16_t i, uint64_t addr, uint32_t len,
                                 uint16_t flags, uint16_t next)
{
    *fake_desc(f, i) = (struct virtq_desc){addr, len, flags, next};
}

static inline struct virtq_avail *fake_avail(struct fake_queue *f)
{
    return gpa_to_hva(&f->mem, FAKE_AVAIL, 6 + 2ULL * f->size);
}

static inline struct virtq_used *fake_used(struct fake_queue *f)
{
    return gpa_to_hva(&f->mem, FAKE_USED, 6 + 8ULL * f->size);
}

/* Makes head available to the device. */
static inline void fake_publish(struct fake_queue *f, uint16_t head)
{
    struct virtq_avail *a = fake_avail(f);
    a->ring[f->avail_idx % f->size] = head;
    f->avail_idx++;
    __atomic_store_n(&a->idx, f->avail_idx, __ATOMIC_RELEASE);
}

static inline uint8_t *fake_ptr(struct fake_queue *f, uint64_t gpa, uint64_t len)
{
    return gpa_to_hva(&f->mem, gpa, len);
}

#endif
