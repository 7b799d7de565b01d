#include "backends/block.h"

#include "util/error.h"
#include "util/log.h"
#include "util/uring.h"

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
/* The largest O_DIRECT alignment taken: a bounce chunk is at least this big. */
#define BLK_MAX_ALIGN (1u << 20)

/* One chunk of the bounce pool and, while it is in use, the piece of a request it carries. */
struct bounce_chunk {
    uint8_t *buf;
    struct blk_io *io;
    uint64_t pos;       /* where the piece starts in the request */
    uint32_t len, done; /* bytes of the piece, and of it transferred so far */
    struct bounce_chunk *next_free;
};

struct blk_bounce_pool {
    uint8_t *mem;
    size_t mem_size;
    uint32_t chunk_size;
    struct bounce_chunk chunks[BLK_BOUNCE_CHUNKS];
    struct bounce_chunk *free;
    struct blk_io *waiting, *waiting_last; /* requests in line for a chunk, oldest first */
};

/* io_uring user data: a request, or (low bit set) a bounce chunk. */
#define PIECE_TAG 1u

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

/* The bounce pool of an O_DIRECT backend: its memory is taken once, here (the pages become
 * resident when first used), and never grows. */
static int bounce_pool_init(struct blk_backend *b, const char *path)
{
    if (b->align > BLK_MAX_ALIGN)
        return error_set("drive '%s': O_DIRECT alignment of %u bytes is larger than %u", path,
                         b->align, BLK_MAX_ALIGN);
    struct blk_bounce_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return error_set("out of memory");
    b->bounce = p;
    /* Chunks are whole blocks, so that every piece after the first starts aligned. */
    p->chunk_size = (BLK_BOUNCE_CHUNK + b->align - 1) / b->align * b->align;
    p->mem_size = (size_t)p->chunk_size * BLK_BOUNCE_CHUNKS;
    void *mem = NULL;
    if (posix_memalign(&mem, b->align > 4096 ? b->align : 4096, p->mem_size) != 0)
        return error_set("drive '%s': no memory for %zu bytes of bounce buffers", path,
                         p->mem_size);
    p->mem = mem;
    for (unsigned i = BLK_BOUNCE_CHUNKS; i-- > 0;) {
        p->chunks[i].buf = p->mem + (size_t)i * p->chunk_size;
        p->chunks[i].next_free = p->free;
        p->free = &p->chunks[i];
    }
    b->bounce_bytes = p->mem_size;
    return 0;
}

int blk_backend_open(struct blk_backend *b, const char *path, bool readonly, bool direct,
                     enum blk_engine engine, unsigned queue_depth)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
    b->event_fd = -1;
    b->readonly = readonly;
    b->direct = direct;
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
    if (b->align > 1 && bounce_pool_init(b, path) < 0)
        return -1;
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
        /* What the engine submits, and nothing else (util/uring.h). */
        static const uint8_t ops[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_READ,
                                      IORING_OP_WRITE, IORING_OP_FSYNC,  IORING_OP_FALLOCATE};
        /* Every completion signals the eventfd (even those done inline at
         * submission: the others may come from task work in this thread,
         * which only the eventfd would reveal). */
        b->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int r = b->event_fd < 0 ? -errno
                                : uring_init_restricted(&b->ring, entries, ops,
                                                        sizeof(ops) / sizeof(ops[0]), b->event_fd);
        if (r == 0) {
            b->uring_ok = true;
            b->ring_entries = entries;
        } else if (b->event_fd >= 0) {
            close(b->event_fd);
            b->event_fd = -1;
        }
        if (!b->uring_ok)
            log_warn("drive '%s': io_uring unavailable (%s); using synchronous I/O", path,
                     strerror(-r));
    }
    return 0;
}

int blk_backend_set_lock(struct blk_backend *b, bool held)
{
    int op = held ? (b->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB : LOCK_UN;
    if (flock(b->fd, op) < 0)
        return error_set("cannot %s the drive's lock: %s", held ? "take back" : "release",
                         errno == EWOULDBLOCK ? "another process holds it now" : strerror(errno));
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
    /* After the ring: the kernel no longer writes into it. */
    if (b->bounce) {
        free(b->bounce->mem);
        free(b->bounce);
        b->bounce = NULL;
    }
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

/* Copies len bytes between buf and the request's buffers, from byte pos of the request. */
static void copy_iov(const struct blk_io *io, uint64_t pos, uint8_t *buf, uint64_t len, bool to_iov)
{
    for (int i = 0; i < io->iovcnt && len; i++) {
        uint64_t seg = io->iov[i].iov_len;
        if (pos >= seg) {
            pos -= seg;
            continue;
        }
        uint64_t n = seg - pos < len ? seg - pos : len;
        uint8_t *at = (uint8_t *)io->iov[i].iov_base + pos;
        if (to_iov)
            memcpy(at, buf, (size_t)n);
        else
            memcpy(buf, at, (size_t)n);
        buf += n;
        len -= n;
        pos = 0;
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

/* A finished request, for blk_backend_reap to report. */
static void complete(struct blk_backend *b, struct blk_io *io, int result)
{
    io->result = result;
    io->next = NULL;
    if (b->completed_last)
        b->completed_last->next = io;
    else
        b->completed = io;
    b->completed_last = io;
}

/* ---- synchronous path --------------------------------------------------- */

static int do_sync(struct blk_backend *b, struct blk_io *io)
{
    switch (io->op) {
    case BLK_READ:
    case BLK_WRITE:
        while (io->done_bytes < io->len) {
            off_t off = (off_t)(io->offset + io->done_bytes);
            int cnt = io->iovcnt > IOV_MAX ? IOV_MAX : io->iovcnt;
            ssize_t n = io->op == BLK_READ ? preadv(b->fd, io->iov, cnt, off)
                                           : pwritev(b->fd, io->iov, cnt, off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return -errno;
            if (n == 0)
                return -EIO; /* the image shrank under us */
            io->done_bytes += (uint64_t)n;
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

/* ---- io_uring path ---------------------------------------------------- */

static struct io_uring_sqe *get_sqe(struct blk_backend *b)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (!sqe) {
        blk_backend_kick(b);
        sqe = io_uring_get_sqe(&b->ring);
    }
    if (sqe)
        b->pending_sqes++;
    return sqe;
}

static bool prep_uring(struct blk_backend *b, struct blk_io *io)
{
    struct io_uring_sqe *sqe = get_sqe(b);
    if (!sqe)
        return false;
    off_t off = (off_t)(io->offset + io->done_bytes);
    switch (io->op) {
    case BLK_READ:
    case BLK_WRITE: {
        unsigned cnt = (unsigned)(io->iovcnt > IOV_MAX ? IOV_MAX : io->iovcnt);
        if (io->op == BLK_READ)
            io_uring_prep_readv(sqe, b->fd, io->iov, cnt, (uint64_t)off);
        else
            io_uring_prep_writev(sqe, b->fd, io->iov, cnt, (uint64_t)off);
        break;
    }
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
    return true;
}

/* ---- bounce path ------------------------------------------------------ */

static void bounce_enqueue(struct blk_bounce_pool *p, struct blk_io *io)
{
    io->bounce_queued = true;
    io->next = NULL;
    if (p->waiting_last)
        p->waiting_last->next = io;
    else
        p->waiting = io;
    p->waiting_last = io;
}

static struct blk_io *bounce_dequeue(struct blk_bounce_pool *p)
{
    struct blk_io *io = p->waiting;
    p->waiting = io->next;
    if (!p->waiting)
        p->waiting_last = NULL;
    io->next = NULL;
    io->bounce_queued = false;
    return io;
}

static int piece_sync(struct blk_backend *b, struct bounce_chunk *c)
{
    const struct blk_io *io = c->io;
    while (c->done < c->len) {
        uint8_t *at = c->buf + c->done;
        size_t left = c->len - c->done;
        off_t off = (off_t)(io->offset + c->pos + c->done);
        ssize_t n = io->op == BLK_READ ? pread(b->fd, at, left, off) : pwrite(b->fd, at, left, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* the image shrank under us */
        c->done += (uint32_t)n;
    }
    return 0;
}

static bool prep_piece(struct blk_backend *b, struct bounce_chunk *c)
{
    struct io_uring_sqe *sqe = get_sqe(b);
    if (!sqe)
        return false;
    const struct blk_io *io = c->io;
    uint64_t off = io->offset + c->pos + c->done;
    if (io->op == BLK_READ)
        io_uring_prep_read(sqe, b->fd, c->buf + c->done, c->len - c->done, off);
    else
        io_uring_prep_write(sqe, b->fd, c->buf + c->done, c->len - c->done, off);
    io_uring_sqe_set_data(sqe, (void *)((uintptr_t)c | PIECE_TAG));
    return true;
}

/* A piece is over: its data goes to the guest (reads), its chunk back to the pool, and the
 * request completes once it has no piece in flight and none to start (or failed). */
static void piece_done(struct blk_backend *b, struct bounce_chunk *c, int result)
{
    struct blk_bounce_pool *p = b->bounce;
    struct blk_io *io = c->io;
    if (result == 0) {
        if (io->op == BLK_READ)
            copy_iov(io, c->pos, c->buf, c->len, true);
        io->done_bytes += c->len;
    } else if (io->result == 0) {
        io->result = result;
    }
    c->io = NULL;
    c->next_free = p->free;
    p->free = c;
    b->bounce_in_use -= p->chunk_size;
    io->bounce_pieces--;
    if (!io->bounce_pieces && !io->bounce_queued)
        complete(b, io, io->result);
}

/* Gives free chunks to the requests in line, oldest first; a request that needs more goes
 * to the back of the line, so that a long one cannot keep the others waiting. */
static void bounce_pump(struct blk_backend *b)
{
    struct blk_bounce_pool *p = b->bounce;
    while (p->waiting) {
        if (p->waiting->result < 0) {
            /* Failed while in line: no more pieces for it. */
            struct blk_io *io = bounce_dequeue(p);
            if (!io->bounce_pieces)
                complete(b, io, io->result);
            continue;
        }
        if (!p->free)
            return;
        struct blk_io *io = bounce_dequeue(p);
        struct bounce_chunk *c = p->free;
        p->free = c->next_free;
        b->bounce_in_use += p->chunk_size;
        if (b->bounce_in_use > b->bounce_peak)
            b->bounce_peak = b->bounce_in_use;
        uint64_t left = io->len - io->bounce_next;
        c->io = io;
        c->pos = io->bounce_next;
        c->len = left < p->chunk_size ? (uint32_t)left : p->chunk_size;
        c->done = 0;
        io->bounce_next += c->len;
        io->bounce_pieces++;
        if (io->bounce_next < io->len)
            bounce_enqueue(p, io);
        if (io->op == BLK_WRITE)
            copy_iov(io, c->pos, c->buf, c->len, false);
        if (!b->uring_ok || !prep_piece(b, c))
            piece_done(b, c, piece_sync(b, c));
    }
}

static void bounce_start(struct blk_backend *b, struct blk_io *io)
{
    io->bounce_next = 0;
    io->bounce_pieces = 0;
    b->bounced_ios++;
    if (!b->bounce->free)
        b->bounce_waits++;
    bounce_enqueue(b->bounce, io);
    bounce_pump(b);
}

/* A piece's completion from io_uring: the rest of a short transfer goes on. */
static void piece_completed(struct blk_backend *b, struct bounce_chunk *c, int res)
{
    if (res < 0) {
        piece_done(b, c, res);
        return;
    }
    if (res == 0) {
        piece_done(b, c, -EIO); /* the image shrank under us */
        return;
    }
    c->done += (uint32_t)res;
    if (c->done < c->len) {
        if (prep_piece(b, c))
            return;
        piece_done(b, c, piece_sync(b, c));
        return;
    }
    piece_done(b, c, 0);
}

/* ---- submission and completion ------------------------------------------ */

void blk_backend_submit(struct blk_backend *b, struct blk_io *io)
{
    io->result = 0;
    io->done_bytes = 0;
    io->bounce_queued = false;
    io->next = NULL;
    b->inflight++;
    if ((io->op == BLK_READ || io->op == BLK_WRITE) && io->len && needs_bounce(b, io)) {
        bounce_start(b, io);
        return;
    }
    if (b->uring_ok && prep_uring(b, io))
        return;
    complete(b, io, do_sync(b, io));
}

void blk_backend_kick(struct blk_backend *b)
{
    if (b->uring_ok && b->pending_sqes) {
        int r = io_uring_submit(&b->ring);
        if (r >= 0)
            b->pending_sqes -= (unsigned)r > b->pending_sqes ? b->pending_sqes : (unsigned)r;
    }
}

/* A request's completion from io_uring: a short transfer goes on from where it stopped. */
static void io_completed(struct blk_backend *b, struct blk_io *io, int res)
{
    if ((io->op == BLK_READ || io->op == BLK_WRITE) && res >= 0) {
        if (res == 0) {
            complete(b, io, -EIO); /* the image shrank under us */
            return;
        }
        io->done_bytes += (uint64_t)res;
        iov_advance(io, (uint64_t)res);
        if (io->done_bytes < io->len) {
            if (prep_uring(b, io))
                return;
            complete(b, io, do_sync(b, io));
            return;
        }
        complete(b, io, 0);
        return;
    }
    if (res == -EOPNOTSUPP || res == -EINVAL) {
        /* Zeroing the file system cannot do: write zeros instead; a discard is only a hint. */
        if (io->op == BLK_ZERO || io->op == BLK_ZERO_UNMAP)
            res = zero_by_writing(b, io->offset, io->len);
        else if (io->op == BLK_DISCARD)
            res = 0;
    }
    complete(b, io, res < 0 ? res : 0);
}

unsigned blk_backend_reap(struct blk_backend *b, void (*done)(void *opaque, struct blk_io *io),
                          void *opaque)
{
    if (b->uring_ok) {
        struct io_uring_cqe *cqe;
        while (io_uring_peek_cqe(&b->ring, &cqe) == 0) {
            void *data = io_uring_cqe_get_data(cqe);
            int res = cqe->res;
            io_uring_cqe_seen(&b->ring, cqe);
            if ((uintptr_t)data & PIECE_TAG)
                piece_completed(b, (struct bounce_chunk *)((uintptr_t)data & ~(uintptr_t)PIECE_TAG),
                                res);
            else
                io_completed(b, data, res);
        }
    }
    /* Chunks freed above go to the requests in line. */
    if (b->bounce)
        bounce_pump(b);
    unsigned n = 0;
    while (b->completed) {
        struct blk_io *io = b->completed;
        b->completed = io->next;
        if (!b->completed)
            b->completed_last = NULL;
        b->inflight--;
        done(opaque, io);
        n++;
    }
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
