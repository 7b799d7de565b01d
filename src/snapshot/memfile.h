/* Guest memory files of snapshots: the whole of guest RAM, one file offset per byte of the
 * host mapping (offset = host address - mem->base).
 *
 * Full: every page; pages of zeros are left as holes (they read as zeros).
 * Diff (Firecracker's format): a file of RAM's size holding the pages written since the last
 * snapshot (vmm/dirty.h) at their offsets, and holes everywhere else. In a Diff a hole means
 * "unchanged", not "zeros": a dirty page is written as data even when it is all zeros, since
 * the base may hold something else there. Merging a Diff onto its base = copying each of the
 * Diff's data extents (SEEK_DATA/SEEK_HOLE) onto the base at the same offset; Diffs are
 * merged oldest first. This needs a file system that keeps written zeros as data and reports
 * holes at page granularity (ext4, xfs, btrfs, tmpfs); memfile_write_diff checks the file it
 * wrote and fails on one that does not. */
#ifndef EMBER_SNAPSHOT_MEMFILE_H
#define EMBER_SNAPSHOT_MEMFILE_H

#include "vmm/memory.h"

#include <stdint.h>

#define MEMFILE_PAGE 4096u

struct memfile_stats {
    uint64_t pages_written; /* pages with data */
    uint64_t pages_skipped; /* holes: Full, pages of zeros; Diff, pages not dirty */
    uint64_t zero_pages;    /* Diff: dirty pages of zeros, written as data all the same */
};

/* Writes every page of guest RAM into fd (a new or truncated file): the file gets RAM's size,
 * pages that are all zeros stay holes. */
int memfile_write_full(const struct guest_memory *mem, int fd, struct memfile_stats *stats);
/* Writes a Diff into fd (a new or truncated file, on a file system as above): the pages whose
 * bit is set in bitmap (guest_memory_bitmap_words(mem) words, bit i = the page at
 * mem->base + i * MEMFILE_PAGE), holes elsewhere; then checks that the file's data extents
 * are exactly those pages. */
int memfile_write_diff(const struct guest_memory *mem, int fd, const uint64_t *bitmap,
                       struct memfile_stats *stats);
/* Copies every data extent of the Diff diff_fd onto base_fd (a Full or merged file, which
 * must have the same size; the extents must be whole pages). base_fd is not synced. */
int memfile_merge(int base_fd, int diff_fd);

#endif
