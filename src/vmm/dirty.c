#include "vmm/dirty.h"

#include "util/error.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* ORs nbits bits of src (from bit 0) into dst from bit dst_bit on. */
static void or_bits(uint64_t *dst, uint64_t dst_bit, const uint64_t *src, uint64_t nbits)
{
    unsigned shift = dst_bit % 64;
    uint64_t *d = dst + dst_bit / 64;
    uint64_t words = (nbits + 63) / 64;
    for (uint64_t i = 0; i < words; i++) {
        uint64_t v = src[i];
        if (i == words - 1 && nbits % 64)
            v &= ~0ULL >> (64 - nbits % 64); /* KVM pads the slot's bitmap to 64 bits */
        if (!v)
            continue;
        d[i] |= v << shift;
        if (shift)
            d[i + 1] |= v >> (64 - shift);
    }
}

int dirty_collect(int vm_fd, struct guest_memory *mem, uint64_t *bitmap_out)
{
    if (!mem->dirty)
        return error_set("dirty page tracking is off for this machine (track_dirty_pages)");
    size_t words = guest_memory_bitmap_words(mem);
    memset(bitmap_out, 0, words * sizeof(uint64_t));
    uint64_t *slot_bits = NULL;
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        uint64_t first = (uint64_t)(r->hva - mem->base) / GUEST_PAGE_SIZE;
        uint64_t pages = r->size / GUEST_PAGE_SIZE;
        if ((uint64_t)(r->hva - mem->base) % GUEST_PAGE_SIZE || r->size % GUEST_PAGE_SIZE ||
            first + pages > mem->ram_size / GUEST_PAGE_SIZE) {
            free(slot_bits);
            return error_set("guest memory region %u is not whole pages of RAM", i);
        }
        /* Where the slot starts on a word boundary, KVM writes straight into the result (whole
         * words, the padding past the slot's last page zero; a next slot then starts inside
         * that word and is ORed in after). */
        uint64_t *bits = bitmap_out + first / 64;
        if (first % 64) {
            free(slot_bits);
            slot_bits = calloc((pages + 63) / 64 + 1, sizeof(uint64_t));
            if (!slot_bits)
                return error_set("out of memory for the dirty page bitmap");
            bits = slot_bits;
        }
        struct kvm_dirty_log log = {.slot = i, .dirty_bitmap = bits};
        if (ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
            int err = errno;
            free(slot_bits);
            errno = err;
            return error_errno("KVM_GET_DIRTY_LOG (slot %u)", i);
        }
        if (bits == slot_bits)
            or_bits(bitmap_out, first, slot_bits, pages);
    }
    free(slot_bits);
    /* Ember's own writes: taken and cleared atomically, so a mark racing with us stays in
     * this interval or the next. */
    for (size_t w = 0; w < words; w++) {
        if (__atomic_load_n(&mem->dirty[w], __ATOMIC_RELAXED))
            bitmap_out[w] |= __atomic_exchange_n(&mem->dirty[w], 0, __ATOMIC_RELAXED);
    }
    uint64_t pages = mem->ram_size / GUEST_PAGE_SIZE;
    if (pages % 64)
        bitmap_out[words - 1] &= ~0ULL >> (64 - pages % 64);
    return 0;
}

void dirty_requeue(struct guest_memory *mem, const uint64_t *bitmap)
{
    if (!mem->dirty)
        return;
    size_t words = guest_memory_bitmap_words(mem);
    for (size_t w = 0; w < words; w++) {
        if (bitmap[w])
            __atomic_fetch_or(&mem->dirty[w], bitmap[w], __ATOMIC_RELAXED);
    }
}

int dirty_reset(int vm_fd, struct guest_memory *mem)
{
    uint64_t *bits = calloc(guest_memory_bitmap_words(mem) + 1, sizeof(uint64_t));
    if (!bits)
        return error_set("out of memory for the dirty page bitmap");
    int rc = dirty_collect(vm_fd, mem, bits);
    free(bits);
    return rc;
}

uint64_t dirty_count(const struct guest_memory *mem, const uint64_t *bitmap)
{
    uint64_t n = 0;
    size_t words = guest_memory_bitmap_words(mem);
    for (size_t w = 0; w < words; w++)
        n += (uint64_t)__builtin_popcountll(bitmap[w]);
    return n;
}
