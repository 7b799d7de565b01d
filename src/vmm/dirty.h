/* Dirty pages of guest RAM since the last collection: KVM's log of the guest's writes (memory
 * slots created with KVM_MEM_LOG_DIRTY_PAGES, slot i = mem->regions[i]) joined with ember's
 * own (guest_memory_mark_dirty). For Diff snapshots; generic enough for live migration's
 * rounds.
 *
 * Ember marks a device's writable buffers when it takes a request (virtq_pop), not when it
 * writes them. A snapshot collects with the devices frozen and drained, so every write of a
 * request is logged before the collection. A caller that collects while requests are in flight
 * (a migration round) may see a page before a device's write lands in it: its final round
 * must then also count the pages of the requests that were in flight. */
#ifndef EMBER_VMM_DIRTY_H
#define EMBER_VMM_DIRTY_H

#include "vmm/memory.h"

#include <stdint.h>

/* Sets bitmap_out (guest_memory_bitmap_words(mem) words; bit i = the page at
 * mem->base + i * GUEST_PAGE_SIZE) to the pages written since the last collection or reset,
 * and starts a new interval: KVM's logs are read and cleared (KVM_GET_DIRTY_LOG, which clears
 * as it reads without manual protection), ember's bitmap is swapped to zero word by word, so
 * writes that race with the collection are counted in this interval or the next, never lost.
 * Fails when tracking is off (mem->dirty NULL). On failure the interval's pages are lost: the
 * caller's next snapshot must be a Full one. */
int dirty_collect(int vm_fd, struct guest_memory *mem, uint64_t *bitmap_out);
/* Gives collected pages back (ORed into ember's bitmap), so the next collection reports them
 * again: for a Diff that could not be written. No-op when tracking is off. */
void dirty_requeue(struct guest_memory *mem, const uint64_t *bitmap);
/* Collects and discards: after a Full snapshot, the next Diff holds only what changes since. */
int dirty_reset(int vm_fd, struct guest_memory *mem);
/* Pages set in a bitmap of guest_memory_bitmap_words(mem) words. */
uint64_t dirty_count(const struct guest_memory *mem, const uint64_t *bitmap);

#endif
