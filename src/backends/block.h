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

/* O_DIRECT (cache=none) needs buffers, offsets and lengths aligned to the storage's block. A
 * read or write whose guest buffers are not goes through the backend's bounce pool: a fixed
 * set of BLK_BOUNCE_CHUNKS chunks of BLK_BOUNCE_CHUNK bytes (of the alignment, when that is
 * larger), allocated when the drive is opened. Such a request is done piece by piece, one
 * chunk per piece; while every chunk is busy, requests that need one wait in line (their
 * number is bounded by the caller's request slots) and go on as pieces complete. The host
 * memory a request can cost is thus fixed, whatever its length. */
#define BLK_BOUNCE_CHUNK  (64u << 10)
#define BLK_BOUNCE_CHUNKS 32u

struct blk_io {
    enum blk_op op;
    uint64_t offset, len; /* bytes; len is the sum of iov for reads/writes */
    struct iovec *iov;    /* caller's array; may be advanced on short I/O */
    int iovcnt;
    int result; /* 0 or -errno, when done */
    uint64_t done_bytes;
    /* The backend's own, for the bounce path. */
    bool bounce_queued;     /* waiting in line for a chunk */
    unsigned bounce_pieces; /* chunks in flight for it */
    uint64_t bounce_next;   /* first byte not yet given to a chunk */
    struct blk_io *next;    /* completion list, or the line for a chunk */
};

struct blk_bounce_pool;

/* Holds no pointer into itself: an idle backend may be copied to another place. */
struct blk_backend {
    int fd;
    bool direct, readonly;
    uint64_t size;
    unsigned align; /* O_DIRECT alignment for buffers and offsets */
    bool uring_ok;
    struct io_uring ring;
    unsigned ring_entries;
    unsigned pending_sqes;                     /* queued, not yet submitted */
    int event_fd;                              /* signalled on completions (io_uring) */
    struct blk_io *completed, *completed_last; /* finished, not yet reaped */
    unsigned inflight;
    struct blk_bounce_pool *bounce; /* cache=none only */
    /* Counters (the I/O thread's): the pool's size, the bytes of it held by pieces in flight
     * now and at most so far, requests that went through it and those that found it busy. */
    uint64_t bounce_bytes, bounce_in_use, bounce_peak, bounced_ios, bounce_waits;
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
/* Lets go of the image's lock, or takes it again (live migration hands the image to the
 * destination's ember, on this host, before that one opens it). */
int blk_backend_set_lock(struct blk_backend *b, bool held);
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
