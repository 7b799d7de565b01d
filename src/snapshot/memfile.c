#include "snapshot/memfile.h"

#include "util/error.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all_at(int fd, const uint8_t *data, uint64_t len, uint64_t offset)
{
    while (len) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t n = pwrite(fd, data, chunk, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return error_errno("cannot write the memory file at offset %llu",
                               (unsigned long long)offset);
        data += n;
        offset += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return 0;
}

int memfile_write_full(const struct guest_memory *mem, int fd, struct memfile_stats *stats)
{
    struct memfile_stats st = {0};
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)mem->ram_size) < 0)
        return error_errno("cannot size the memory file to %llu bytes",
                           (unsigned long long)mem->ram_size);
    uint64_t pages = mem->ram_size / MEMFILE_PAGE;
    uint64_t run_start = 0, run_len = 0;
    for (uint64_t i = 0; i < pages; i++) {
        const uint8_t *p = mem->base + i * MEMFILE_PAGE;
        if (guest_page_is_zero(p)) {
            st.pages_skipped++;
            if (run_len && write_all_at(fd, mem->base + run_start * MEMFILE_PAGE,
                                        run_len * MEMFILE_PAGE, run_start * MEMFILE_PAGE) < 0)
                return -1;
            run_len = 0;
            continue;
        }
        st.pages_written++;
        if (!run_len)
            run_start = i;
        run_len++;
    }
    if (run_len && write_all_at(fd, mem->base + run_start * MEMFILE_PAGE, run_len * MEMFILE_PAGE,
                                run_start * MEMFILE_PAGE) < 0)
        return -1;
    if (stats)
        *stats = st;
    return 0;
}

static bool bit_set(const uint64_t *bitmap, uint64_t i)
{
    return bitmap[i / 64] >> (i % 64) & 1;
}

/* The next run of set bits at or after *from: [*start, *end); false when none is left. */
static bool next_run(const uint64_t *bitmap, uint64_t pages, uint64_t *from, uint64_t *start,
                     uint64_t *end)
{
    uint64_t i = *from;
    while (i < pages) {
        uint64_t w = bitmap[i / 64] >> (i % 64);
        if (w) {
            i += (uint64_t)__builtin_ctzll(w);
            break;
        }
        i = (i / 64 + 1) * 64;
    }
    if (i >= pages)
        return false;
    *start = i;
    while (i < pages && bit_set(bitmap, i))
        i++;
    *end = *from = i;
    return true;
}

/* lseek for SEEK_DATA/SEEK_HOLE; ENXIO (no data past off) gives size. */
static int seek_extent(int fd, uint64_t off, int whence, uint64_t size, uint64_t *out)
{
    off_t r = lseek(fd, (off_t)off, whence);
    if (r < 0 && errno == ENXIO) {
        *out = size;
        return 0;
    }
    if (r < 0)
        return error_errno("cannot find the %s of the memory file past offset %llu",
                           whence == SEEK_DATA ? "data" : "holes", (unsigned long long)off);
    *out = (uint64_t)r;
    return 0;
}

int memfile_write_diff(const struct guest_memory *mem, int fd, const uint64_t *bitmap,
                       struct memfile_stats *stats)
{
    struct memfile_stats st = {0};
    if (mem->ram_size % MEMFILE_PAGE)
        return error_set("guest memory of %llu bytes is not whole pages",
                         (unsigned long long)mem->ram_size);
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)mem->ram_size) < 0)
        return error_errno("cannot size the memory file to %llu bytes",
                           (unsigned long long)mem->ram_size);
    uint64_t pages = mem->ram_size / MEMFILE_PAGE;
    uint64_t from = 0, start, end;
    while (next_run(bitmap, pages, &from, &start, &end)) {
        for (uint64_t i = start; i < end; i++)
            st.zero_pages += guest_page_is_zero(mem->base + i * MEMFILE_PAGE);
        st.pages_written += end - start;
        if (write_all_at(fd, mem->base + start * MEMFILE_PAGE, (end - start) * MEMFILE_PAGE,
                         start * MEMFILE_PAGE) < 0)
            return -1;
    }
    st.pages_skipped = pages - st.pages_written;
    /* A file system that drops written zeros (compression) or keeps extents coarser than a
     * page would make a merge lose a page or overwrite the base with zeros: check the file's
     * extents are exactly the runs written (two lseeks a run). */
    from = 0;
    uint64_t pos = 0;
    while (next_run(bitmap, pages, &from, &start, &end)) {
        uint64_t data = 0, hole = 0;
        if (seek_extent(fd, pos, SEEK_DATA, mem->ram_size, &data) < 0 ||
            seek_extent(fd, start * MEMFILE_PAGE, SEEK_HOLE, mem->ram_size, &hole) < 0)
            return -1;
        if (data != start * MEMFILE_PAGE || hole != end * MEMFILE_PAGE)
            return error_set("the file system does not keep the diff memory file's pages as "
                             "written (bytes %llu to %llu written, the file has data from byte "
                             "%llu, then a hole from byte %llu): it needs one with holes at page "
                             "granularity that keeps written zeros (ext4, xfs, btrfs, tmpfs "
                             "without huge pages)",
                             (unsigned long long)(start * MEMFILE_PAGE),
                             (unsigned long long)(end * MEMFILE_PAGE - 1), (unsigned long long)data,
                             (unsigned long long)hole);
        pos = hole;
    }
    uint64_t data = 0;
    if (seek_extent(fd, pos, SEEK_DATA, mem->ram_size, &data) < 0)
        return -1;
    if (data < mem->ram_size)
        return error_set("the file system reports data at page %llu of the diff memory file, "
                         "which was left a hole: it needs one with holes at page granularity "
                         "(ext4, xfs, btrfs, tmpfs without huge pages)",
                         (unsigned long long)(data / MEMFILE_PAGE));
    if (stats)
        *stats = st;
    return 0;
}

static int read_all_at(int fd, uint8_t *data, size_t len, uint64_t offset)
{
    while (len) {
        ssize_t n = pread(fd, data, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return error_errno("cannot read the diff memory file at offset %llu",
                               (unsigned long long)offset);
        if (n == 0)
            return error_set("the diff memory file ends early, at offset %llu",
                             (unsigned long long)offset);
        data += n;
        offset += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

#define MERGE_CHUNK (1u << 20)

int memfile_merge(int base_fd, int diff_fd)
{
    struct stat bs, ds;
    if (fstat(base_fd, &bs) < 0 || fstat(diff_fd, &ds) < 0)
        return error_errno("cannot stat the memory files");
    if (!S_ISREG(bs.st_mode) || !S_ISREG(ds.st_mode))
        return error_set("the memory files must be regular files");
    if (bs.st_dev == ds.st_dev && bs.st_ino == ds.st_ino)
        return error_set("the base and the diff are the same file");
    if (bs.st_size != ds.st_size)
        return error_set("the diff (%lld bytes) and the base (%lld bytes) differ in size: they "
                         "are not memory files of the same machine",
                         (long long)ds.st_size, (long long)bs.st_size);
    if (ds.st_size % MEMFILE_PAGE)
        return error_set("the memory files' size (%lld bytes) is not whole pages",
                         (long long)ds.st_size);
    uint64_t size = (uint64_t)ds.st_size, pos = 0;
    uint8_t *buf = malloc(MERGE_CHUNK);
    if (!buf)
        return error_set("out of memory");
    int rc = 0;
    while (pos < size) {
        uint64_t data = 0, hole = 0;
        if (seek_extent(diff_fd, pos, SEEK_DATA, size, &data) < 0) {
            rc = -1;
            break;
        }
        if (data >= size)
            break;
        if (seek_extent(diff_fd, data, SEEK_HOLE, size, &hole) < 0) {
            rc = -1;
            break;
        }
        if (hole > size)
            hole = size;
        if (data % MEMFILE_PAGE || hole % MEMFILE_PAGE || hole <= data) {
            rc = error_set("the diff's data extent %llu-%llu is not whole pages: not a diff "
                           "memory file, or one on a file system with coarser extents",
                           (unsigned long long)data, (unsigned long long)hole);
            break;
        }
        for (uint64_t off = data; off < hole && rc == 0;) {
            size_t n = hole - off > MERGE_CHUNK ? MERGE_CHUNK : (size_t)(hole - off);
            if (read_all_at(diff_fd, buf, n, off) < 0 || write_all_at(base_fd, buf, n, off) < 0)
                rc = -1;
            off += n;
        }
        if (rc < 0)
            break;
        pos = hole;
    }
    free(buf);
    return rc;
}
