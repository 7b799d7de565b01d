/* Raw disk images on the host: asynchronous reads, writes, flushes,
 * discards and zeroing through io_uring, or the same done synchronously
 * when io_uring is unavailable (old kernel, seccomp), asked for (--blk-sync, io=sync) or
 * faster (a file in memory whose reads io_uring cannot complete inline). */
#ifndef EMBER_BACKENDS_BLOCK_H
#define EMBER_BACKENDS_BLOCK_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

enum blk_op { BLK_READ, BLK_WRITE, BLK_FLUSH, BLK_DISCARD, BLK_ZERO, BLK_ZERO_UNMAP };

struct blk_io {
    enum blk_op op;
    uint64_t offset, len; /* bytes; len is the sum of iov for reads/writes */
    struct iovec *iov;    /* caller's array; may be advanced on short I/O */
    int iovcnt;
    int result; /* 0 or -errno, when done */
    uint64_t done_bytes;
    void *bounce;        /* aligned copy for O_DIRECT, when needed */
    struct blk_io *next; /* completion list (sync backend) */
};

struct blk_backend {
    int fd;
    bool direct, readonly;
    uint64_t size;
    unsigned align; /* O_DIRECT alignment for buffers and offsets */
    bool uring_ok;
    struct io_uring ring;
    unsigned ring_entries;
    unsigned pending_sqes;                      /* queued, not yet submitted */
    int event_fd;                               /* signalled on completions (io_uring) */
    struct blk_io *completed, **completed_tail; /* sync backend */
    unsigned inflight;
};

enum blk_engine {
    /* io_uring, except for a file in memory (tmpfs) that cannot be read without blocking
     * (no RWF_NOWAIT): io_uring would hand each of its requests to a kernel worker thread,
     * where a read on the I/O thread is a copy from memory. */
    BLK_ENGINE_AUTO,
    BLK_ENGINE_URING,
    BLK_ENGINE_SYNC,
};

/* Opens path (O_DIRECT when direct), with the engine asked for; io_uring falls back to
 * synchronous I/O where it is unavailable. */
int blk_backend_open(struct blk_backend *b, const char *path, bool readonly, bool direct,
                     enum blk_engine engine, unsigned queue_depth);
void blk_backend_close(struct blk_backend *b);
/* Queues an operation. Completion is reported by blk_backend_reap. */
void blk_backend_submit(struct blk_backend *b, struct blk_io *io);
/* Pushes queued operations to the kernel. */
void blk_backend_kick(struct blk_backend *b);
/* Calls done(io) for every finished operation; returns their number. */
unsigned blk_backend_reap(struct blk_backend *b, void (*done)(void *opaque, struct blk_io *io),
                          void *opaque);
/* Waits until nothing is in flight, reaping as it goes. */
void blk_backend_drain(struct blk_backend *b, void (*done)(void *opaque, struct blk_io *io),
                       void *opaque);
const char *blk_backend_kind(const struct blk_backend *b);

#endif
