/* Guest memory files of snapshots: the whole of guest RAM, one file offset per byte of the
 * host mapping (offset = host address - mem->base), pages of zeros left as holes. */
#ifndef EMBER_SNAPSHOT_MEMFILE_H
#define EMBER_SNAPSHOT_MEMFILE_H

#include "vmm/memory.h"

#include <stdint.h>

#define MEMFILE_PAGE 4096u

struct memfile_stats {
    uint64_t pages_written; /* pages with data */
    uint64_t pages_skipped; /* pages of zeros left as holes */
};

/* Writes every page of guest RAM into fd (a new or truncated file): the file gets RAM's size,
 * pages that are all zeros stay holes. */
int memfile_write_full(const struct guest_memory *mem, int fd, struct memfile_stats *stats);

#endif
