#include "backends/block.h"

#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define BLK_DEFAULT_ALIGN 512

static unsigned dio_alignment(int fd, const struct stat *st)
{
    if (S_ISBLK(st->st_mode)) {
        int ssz = 0;
        if (ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0)
            return (unsigned)ssz;
        return BLK_DEFAULT_ALIGN;
    }
#ifdef STATX_DIOALIGN
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
        sx.stx_dio_mem_align)
        return sx.stx_dio_offset_align > sx.stx_dio_mem_align ? sx.stx_dio_offset_align
                                                              : sx.stx_dio_mem_align;
#endif
    return 4096; /* safe for every file system */
}

/* Whether the file lives in memory and cannot be read with RWF_NOWAIT, so that io_uring
 * would punt every read to a worker thread (tmpfs on the kernels of 2025). */
static bool in_memory_without_nowait(int fd, unsigned align)
{
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0 ||
        (sfs.f_type != TMPFS_MAGIC && sfs.f_type != RAMFS_MAGIC && sfs.f_type != HUGETLBFS_MAGIC))
        return false;
    size_t size = align > 4096 ? align : 4096;
    void *buf = NULL;
    if (posix_memalign(&buf, size, size) != 0)
        return false;
    struct iovec iov = {.iov_base = buf, .iov_len = size};
    bool refused = preadv2(fd, &iov, 1, 0, RWF_NOWAIT) < 0 && errno == EOPNOTSUPP;
    free(buf);
    return refused;
}

int blk_backend_open(struct blk_backend *b, const char *path, bool readonly, bool direct,
                     enum blk_engine engine, unsigned queue_depth)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
    b->event_fd = -1;
    b->readonly = readonly;
    b->direct = direct;
    b->completed_tail = &b->completed;
    int flags = (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? O_DIRECT : 0);
    b->fd = open(path, flags);
    if (b->fd < 0) {
        if (direct && errno == EINVAL)
            return error_set("cannot open '%s' with cache=none: its file system does not "
                             "support O_DIRECT (tmpfs does not); use cache=writeback",
                             path);
        return error_errno("cannot open drive '%s'", path);
    }
    struct stat st;
    if (fstat(b->fd, &st) < 0)
        return error_errno("cannot stat drive '%s'", path);
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(b->fd, BLKGETSIZE64, &b->size) < 0)
            return error_errno("cannot size block device '%s'", path);
    } else if (S_ISREG(st.st_mode)) {
        b->size = (uint64_t)st.st_size;
    } else {
        return error_set("drive '%s' is neither a regular file nor a block device", path);
    }
    /* Two machines writing one image corrupt it: take a lock (shared for
     * read-only users). */
    if (flock(b->fd, (readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0)
        return error_set("drive '%s' is in use by another process (%s)", path,
                         errno == EWOULDBLOCK ? "locked" : strerror(errno));
    b->align = direct ? dio_alignment(b->fd, &st) : 1;
    if (engine == BLK_ENGINE_AUTO && S_ISREG(st.st_mode) &&
        in_memory_without_nowait(b->fd, b->align)) {
        log_info("drive '%s': in memory, without non-blocking reads: synchronous I/O on the I/O "
                 "thread, which io_uring would hand to a kernel worker per request (io=uring "
                 "overrides)",
                 path);
        engine = BLK_ENGINE_SYNC;
    }
    if (engine != BLK_ENGINE_SYNC) {
        unsigned entries = 1;
        while (entries < queue_depth && entries < 4096)
            entries <<= 1;
        int r = io_uring_queue_init(entries, &b->ring, 0);
        if (r == 0) {
            b->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            /* Every completion signals the eventfd (even those done inline
             * at submission: the others may come from task work in this
             * thread, which only the eventfd would reveal). */
            if (b->event_fd >= 0 && io_uring_register_eventfd(&b->ring, b->event_fd) == 0) {
                b->uring_ok = true;
                b->ring_entries = entries;
            } else {
                io_uring_queue_exit(&b->ring);
                if (b->event_fd >= 0)
                    close(b->event_fd);
                b->event_fd = -1;
            }
        }
        if (!b->uring_ok)
            log_warn("drive '%s': io_uring unavailable (%s); using synchronous I/O", path,
                     strerror(r < 0 ? -r : errno));
    }
    return 0;
}

void blk_backend_close(struct blk_backend *b)
{
    if (b->uring_ok)
        io_uring_queue_exit(&b->ring);
    b->uring_ok = false;
    if (b->event_fd >= 0)
        close(b->event_fd);
    if (b->fd >= 0)
        close(b->fd);
    b->fd = b->event_fd = -1;
}

const char *blk_backend_kind(const struct blk_backend *b)
{
    return b->uring_ok ? "io_uring" : "synchronous";
}

/* ---- helpers ---------------------------------------------------------- */

static bool needs_bounce(const struct blk_backend *b, const struct blk_io *io)
{
    if (b->align <= 1)
        return false;
    if (io->offset % b->align || io->len % b->align)
        return true;
    for (int i = 0; i < io->iovcnt; i++) {
        if ((uintptr_t)io->iov[i].iov_base % b->align || io->iov[i].iov_len % b->align)
            return true;
    }
    return false;
}

static void copy_from_iov(void *dst, const struct iovec *iov, int n, uint64_t len)
{
    uint64_t done = 0;
    for (int i = 0; i < n && done < len; i++) {
        size_t c = iov[i].iov_len < len - done ? iov[i].iov_len : (size_t)(len - done);
        memcpy((uint8_t *)dst + done, iov[i].iov_base, c);
        done += c;
    }
}

static void copy_to_iov(const struct iovec *iov, int n, const void *src, uint64_t len)
{
    uint64_t done = 0;
    for (int i = 0; i < n && done < len; i++) {
        size_t c = iov[i].iov_len < len - done ? iov[i].iov_len : (size_t)(len - done);
        memcpy(iov[i].iov_base, (const uint8_t *)src + done, c);
        done += c;
    }
}

/* Drops the first n bytes of an iovec array in place. */
static void iov_advance(struct blk_io *io, uint64_t n)
{
    while (n && io->iovcnt) {
        if (n < io->iov[0].iov_len) {
            io->iov[0].iov_base = (uint8_t *)io->iov[0].iov_base + n;
            io->iov[0].iov_len -= n;
            return;
        }
        n -= io->iov[0].iov_len;
        io->iov++;
        io->iovcnt--;
    }
}

static int zero_by_writing(struct blk_backend *b, uint64_t offset, uint64_t len)
{
    static const uint8_t zeros[65536] __attribute__((aligned(4096)));
    while (len) {
        size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
        ssize_t w = pwrite(b->fd, zeros, n, (off_t)offset);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        offset += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

static int fallocate_mode(enum blk_op op)
{
    switch (op) {
    case BLK_DISCARD:
    case BLK_ZERO_UNMAP:
        return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    default:
        return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    }
}

/* ---- synchronous path --------------------------------------------------- */

static int do_sync(struct blk_backend *b, struct blk_io *io)
{
    switch (io->op) {
    case BLK_READ:
    case BLK_WRITE:
        while (io->done_bytes < io->len) {
            ssize_t n;
            off_t off = (off_t)(io->offset + io->done_bytes);
            if (io->bounce) {
                uint8_t *p = (uint8_t *)io->bounce + io->done_bytes;
                size_t left = (size_t)(io->len - io->done_bytes);
                n = io->op == BLK_READ ? pread(b->fd, p, left, off) : pwrite(b->fd, p, left, off);
            } else {
                int cnt = io->iovcnt > IOV_MAX ? IOV_MAX : io->iovcnt;
                n = io->op == BLK_READ ? preadv(b->fd, io->iov, cnt, off)
                                       : pwritev(b->fd, io->iov, cnt, off);
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return -errno;
            if (n == 0)
                return -EIO; /* the image shrank under us */
            io->done_bytes += (uint64_t)n;
            if (!io->bounce)
                iov_advance(io, (uint64_t)n);
        }
        return 0;
    case BLK_FLUSH:
        return fdatasync(b->fd) < 0 ? -errno : 0;
    case BLK_DISCARD:
    case BLK_ZERO:
    case BLK_ZERO_UNMAP:
        if (fallocate(b->fd, fallocate_mode(io->op), (off_t)io->offset, (off_t)io->len) == 0)
            return 0;
        if (io->op == BLK_DISCARD)
            return 0; /* discard is a hint; nothing is lost by ignoring it */
        return zero_by_writing(b, io->offset, io->len);
    }
    return -EINVAL;
}

static void complete_sync(struct blk_backend *b, struct blk_io *io, int result)
{
    io->result = result;
    io->next = NULL;
    *b->completed_tail = io;
    b->completed_tail = &io->next;
}

/* ---- io_uring path ---------------------------------------------------- */

static bool prep_uring(struct blk_backend *b, struct blk_io *io)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (!sqe) {
        blk_backend_kick(b);
        sqe = io_uring_get_sqe(&b->ring);
        if (!sqe)
            return false;
    }
    off_t off = (off_t)(io->offset + io->done_bytes);
    switch (io->op) {
    case BLK_READ:
    case BLK_WRITE:
        if (io->bounce) {
            uint8_t *p = (uint8_t *)io->bounce + io->done_bytes;
            unsigned left = (unsigned)(io->len - io->done_bytes);
            if (io->op == BLK_READ)
                io_uring_prep_read(sqe, b->fd, p, left, (uint64_t)off);
            else
                io_uring_prep_write(sqe, b->fd, p, left, (uint64_t)off);
        } else {
            unsigned cnt = (unsigned)(io->iovcnt > IOV_MAX ? IOV_MAX : io->iovcnt);
            if (io->op == BLK_READ)
                io_uring_prep_readv(sqe, b->fd, io->iov, cnt, (uint64_t)off);
            else
                io_uring_prep_writev(sqe, b->fd, io->iov, cnt, (uint64_t)off);
        }
        break;
    case BLK_FLUSH:
        io_uring_prep_fsync(sqe, b->fd, IORING_FSYNC_DATASYNC);
        break;
    case BLK_DISCARD:
    case BLK_ZERO:
    case BLK_ZERO_UNMAP:
        io_uring_prep_fallocate(sqe, b->fd, fallocate_mode(io->op), (uint64_t)io->offset,
                                (uint64_t)io->len);
        break;
    }
    io_uring_sqe_set_data(sqe, io);
    b->pending_sqes++;
    return true;
}

void blk_backend_submit(struct blk_backend *b, struct blk_io *io)
{
    io->result = 0;
    io->done_bytes = 0;
    io->bounce = NULL;
    b->inflight++;
    if ((io->op == BLK_READ || io->op == BLK_WRITE) && needs_bounce(b, io)) {
        io->bounce = aligned_alloc(b->align, (io->len + b->align - 1) / b->align * b->align);
        if (!io->bounce) {
            complete_sync(b, io, -ENOMEM);
            return;
        }
        if (io->op == BLK_WRITE)
            copy_from_iov(io->bounce, io->iov, io->iovcnt, io->len);
    }
    if (b->uring_ok && prep_uring(b, io))
        return;
    complete_sync(b, io, do_sync(b, io));
}

void blk_backend_kick(struct blk_backend *b)
{
    if (b->uring_ok && b->pending_sqes) {
        int r = io_uring_submit(&b->ring);
        if (r >= 0)
            b->pending_sqes -= (unsigned)r > b->pending_sqes ? b->pending_sqes : (unsigned)r;
    }
}

static void finish(struct blk_backend *b, struct blk_io *io,
                   void (*done)(void *opaque, struct blk_io *io), void *opaque)
{
    if (io->bounce) {
        if (io->op == BLK_READ && io->result == 0)
            copy_to_iov(io->iov, io->iovcnt, io->bounce, io->len);
        free(io->bounce);
        io->bounce = NULL;
    }
    b->inflight--;
    done(opaque, io);
}

unsigned blk_backend_reap(struct blk_backend *b, void (*done)(void *opaque, struct blk_io *io),
                          void *opaque)
{
    unsigned n = 0;
    while (b->completed) {
        struct blk_io *io = b->completed;
        b->completed = io->next;
        if (!b->completed)
            b->completed_tail = &b->completed;
        finish(b, io, done, opaque);
        n++;
    }
    if (!b->uring_ok)
        return n;
    struct io_uring_cqe *cqe;
    bool resubmitted = false;
    while (io_uring_peek_cqe(&b->ring, &cqe) == 0) {
        struct blk_io *io = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&b->ring, cqe);
        if ((io->op == BLK_READ || io->op == BLK_WRITE) && res >= 0) {
            if (res == 0) {
                io->result = -EIO; /* the image shrank under us */
            } else {
                io->done_bytes += (uint64_t)res;
                if (!io->bounce)
                    iov_advance(io, (uint64_t)res);
                if (io->done_bytes < io->len) {
                    /* Short transfer: go on from where it stopped. */
                    if (!prep_uring(b, io))
                        io->result = do_sync(b, io);
                    else {
                        resubmitted = true;
                        continue;
                    }
                }
            }
        } else if (res < 0) {
            if (res == -EOPNOTSUPP || res == -EINVAL) {
                /* Zeroing the file system cannot do: write zeros instead;
                 * a discard is only a hint. */
                if (io->op == BLK_ZERO || io->op == BLK_ZERO_UNMAP)
                    res = zero_by_writing(b, io->offset, io->len);
                else if (io->op == BLK_DISCARD)
                    res = 0;
            }
            io->result = res;
        }
        finish(b, io, done, opaque);
        n++;
    }
    if (resubmitted)
        blk_backend_kick(b);
    return n;
}

void blk_backend_drain(struct blk_backend *b, void (*done)(void *opaque, struct blk_io *io),
                       void *opaque)
{
    blk_backend_kick(b);
    while (b->inflight) {
        blk_backend_reap(b, done, opaque);
        if (!b->inflight)
            break;
        struct io_uring_cqe *cqe;
        if (b->uring_ok)
            io_uring_wait_cqe(&b->ring, &cqe);
    }
}
