/* libFuzzer target: the descriptor walker against arbitrary ring contents.
 * Guest memory is a malloc'd buffer so that AddressSanitizer sees any
 * access outside it. Split and packed rings. Input: queue size and flags, then the bytes of the
 * descriptor table, avail ring and memory holding indirect tables. */
#include "arch/x86/layout.h"
#include "virtio/queue.h"
#include "vmm/memory.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MEM_SIZE (256u << 10)
#define DESC     0x1000u
#define AVAIL    0x3000u
#define USED     0x4000u
#define SCRATCH  0x8000u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    static uint8_t *ram;
    if (!ram)
        ram = malloc(MEM_SIZE);
    memset(ram, 0, MEM_SIZE);
    struct guest_memory mem;
    guest_memory_layout(&mem, ram, MEM_SIZE, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);

    uint16_t qsize = (uint16_t)(1u << (data[0] % 9)); /* 1..256 */
    bool event_idx = data[1] & 1, indirect = data[1] & 2, packed = data[1] & 4;
    uint16_t last_avail = (uint16_t)(data[2] | data[3] << 8);
    data += 4;
    size -= 4;
    /* Spread the input over the table, the ring and scratch memory. */
    size_t n = size < 16u * qsize ? size : 16u * qsize;
    memcpy(ram + DESC, data, n);
    data += n;
    size -= n;
    n = size < 6u + 2u * qsize ? size : 6u + 2u * qsize;
    memcpy(ram + AVAIL, data, n);
    data += n;
    size -= n;
    n = size < MEM_SIZE - SCRATCH ? size : MEM_SIZE - SCRATCH;
    memcpy(ram + SCRATCH, data, n);

    struct virtq_config cfg = {
        .size = qsize, .desc_gpa = DESC, .avail_gpa = AVAIL, .used_gpa = USED};
    struct virtq q;
    if (virtq_init(&q, &mem, &cfg, event_idx, indirect) < 0)
        return 0;
    q.last_avail = last_avail;
    if (packed) {
        q.next_avail = (uint16_t)(last_avail % qsize);
        q.avail_wrap = last_avail & 0x8000;
    }
    struct virtq_chain chain;
    if (virtq_chain_alloc(&chain, qsize) < 0)
        return 0;
    for (int i = 0; i < 2 * qsize + 2; i++) {
        int r = virtq_pop(&q, &chain);
        if (r <= 0)
            break;
        /* Touch every byte the device would: reads and writes must stay in
         * guest memory. */
        uint8_t sink = 0;
        for (unsigned b = 0; b < chain.nout + chain.nin; b++) {
            if (chain.bufs[b].len) {
                sink ^= chain.bufs[b].hva[0];
                sink ^= chain.bufs[b].hva[chain.bufs[b].len - 1];
            }
        }
        uint8_t tmp[64];
        virtq_chain_read(&chain, 0, tmp, sizeof(tmp));
        virtq_chain_write(&chain, chain.in_len > 8 ? chain.in_len - 8 : 0, tmp, 8);
        virtq_push(&q, chain.head, (uint32_t)chain.in_len + sink * 0u);
        virtq_should_notify(&q);
    }
    virtq_enable_kicks(&q, true);
    virtq_chain_free(&chain);
    return 0;
}
