#include "snapshot/memfile.h"

#include "util/error.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

static bool page_is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)(const void *)p;
    uint64_t acc = 0;
    for (unsigned i = 0; i < MEMFILE_PAGE / 8; i++)
        acc |= w[i];
    return acc == 0;
}

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
        if (page_is_zero(p)) {
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
