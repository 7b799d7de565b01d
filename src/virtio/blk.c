#include "virtio/blk.h"

#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define BLK_QUEUE_SIZE 256
#define SECTOR         512ULL

/* What a drive takes on for its guest, at most:
 * - requests: BLK_QUEUE_SIZE (256) slots per queue, 16 queues at most; a slot holds a request
 *   taken from the ring until it is answered (with its iovecs: about 1 MiB per queue, allocated
 *   when the device is made);
 * - one read or write: BLK_SEG_MAX segments of BLK_SIZE_MAX bytes, BLK_REQUEST_MAX_BYTES in all
 *   (below), done in place in guest memory;
 * - one merged I/O: MERGE_MAX_BYTES, and BLK_QUEUE_SIZE iovecs;
 * - bounce memory (cache=none, buffers O_DIRECT cannot take): the backend's pool,
 *   BLK_BOUNCE_CHUNKS x BLK_BOUNCE_CHUNK (2 MiB), whatever the requests (backends/block.h). */

/* What one read or write may carry, offered to the driver (SEG_MAX, SIZE_MAX) and enforced:
 * at most BLK_SEG_MAX data segments (pieces of descriptors' buffers holding data), each at
 * most BLK_SIZE_MAX bytes, so at most BLK_REQUEST_MAX_BYTES in all; a request beyond them gets
 * VIRTIO_BLK_S_IOERR. Linux 6.1 takes seg_max as its max_segments (a chain is then header,
 * segments and status: the queue size) and size_max as its max_segment_size; its requests are
 * at most 1280 KiB (max_sectors_kb), so 4 MiB segments split none of them, and every request
 * Linux builds stays within both limits. */
#define BLK_SEG_MAX           (BLK_QUEUE_SIZE - 2)
#define BLK_SIZE_MAX          (4u << 20)
#define BLK_REQUEST_MAX_BYTES ((uint64_t)BLK_SEG_MAX * BLK_SIZE_MAX) /* 1016 MiB */
/* The used ring reports data and status byte in 32 bits. */
_Static_assert(BLK_REQUEST_MAX_BYTES < UINT32_MAX, "a request's length must fit a used element");

/* Discard and write-zeroes: one range per request, of at most 2 GiB - 512. */
#define BLK_MAX_DISCARD_SECTORS 0x3fffffu

/* Reads or writes that continue each other on disk are merged into one I/O of at most this. */
#define MERGE_MAX_BYTES (1u << 20)

/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* Request types and status (5.2.6). */
#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK           0
#define VIRTIO_BLK_S_IOERR        1
#define VIRTIO_BLK_S_UNSUPP       2

#define WRITE_ZEROES_FLAG_UNMAP 1

struct blk_req_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

struct blk_segment {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

struct blk_request {
    struct blk_io io;
    struct blk_queue *queue;
    uint32_t head;
    uint8_t *status;
    uint32_t written;
    struct blk_request *next_free;
    struct blk_request *merged; /* requests whose data rides on this one's I/O */
    uint64_t start_ns;          /* taken off the ring (reads and writes: the metrics) */
    struct iovec iov[BLK_QUEUE_SIZE];
};

struct blk_queue {
    struct virtio_blk *blk;
    unsigned index;
    struct virtq_chain chain;
    struct blk_request *reqs;
    struct blk_request *free_list;
    bool completed;                            /* used entries pushed since the last signal */
    bool held;                                 /* chain popped but waiting for rate-limit tokens */
    unsigned inflight;                         /* requests taken and not yet returned */
    struct blk_request *batch[BLK_QUEUE_SIZE]; /* reads and writes not yet submitted */
    unsigned nbatch;
    bool kicks_forced; /* the timer fired: ask for kicks even while busy */
};

/* ---- configuration space ------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void build_config(struct virtio_blk *b)
{
    uint8_t *c = b->config;
    memset(c, 0, sizeof(b->config));
    memcpy(c + 0, &b->capacity, 8);
    put32(c + 8, BLK_SIZE_MAX);
    put32(c + 12, BLK_SEG_MAX);
    /* blk_size: with O_DIRECT, the storage's own block (4 KiB disks refuse
     * 512-byte writes); the protocol still counts 512-byte sectors. */
    uint32_t block = b->backend.align > SECTOR ? b->backend.align : SECTOR;
    put32(c + 20, block);
    uint16_t nq = (uint16_t)b->opts.queues;
    memcpy(c + 34, &nq, 2);
    put32(c + 36, BLK_MAX_DISCARD_SECTORS);
    put32(c + 40, 1); /* max_discard_seg */
    put32(c + 44, 1); /* discard_sector_alignment */
    put32(c + 48, BLK_MAX_DISCARD_SECTORS);
    put32(c + 52, 1); /* max_write_zeroes_seg */
    c[56] = 1;        /* write_zeroes_may_unmap */
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_blk *b = d->opaque;
    memcpy(data, b->config + offset, len);
}

/* ---- requests -------------------------------------------------------- */

static void signal_queues(struct virtio_blk *b)
{
    for (unsigned i = 0; i < b->opts.queues; i++) {
        if (b->queues[i].completed) {
            b->queues[i].completed = false;
            virtio_dev_signal_used(&b->dev, i);
        }
    }
}

static void finish_request(struct blk_request *r, uint8_t status)
{
    struct blk_queue *q = r->queue;
    struct virtio_blk *b = q->blk;
    if (status != VIRTIO_BLK_S_OK) {
        if (status == VIRTIO_BLK_S_UNSUPP)
            b->unsupported++;
        else
            b->errors++;
    }
    *r->status = status;
    /* Logged again now that they are written: a migration pass may have collected and sent
     * these pages between the request's taking (when they were first logged) and now. */
    const struct guest_memory *mem = b->dev.queues[q->index].vq.mem;
    guest_memory_mark_dirty(mem, r->status, 1);
    if (r->io.op == BLK_READ && r->io.iov) {
        int n = (int)(r->io.iov - r->iov) + r->io.iovcnt;
        for (int i = 0; i < n && i < BLK_QUEUE_SIZE; i++)
            guest_memory_mark_dirty(mem, r->iov[i].iov_base, r->iov[i].iov_len);
    }
    q->inflight--;
    /* A device that was reset while this was in flight no longer owns
     * the ring: the result is dropped, as the driver expects after reset. */
    if (b->dev.active && !b->dev.queues[q->index].vq.broken) {
        virtq_push(&b->dev.queues[q->index].vq, r->head, r->written);
        q->completed = true;
    }
    r->next_free = q->free_list;
    q->free_list = r;
}

/* The time a read or write took, from the ring to its completion. */
static void record_time(struct virtio_blk *b, const struct blk_request *r, enum blk_op op,
                        uint64_t now)
{
    latency_record(op == BLK_READ ? &b->read_time : &b->write_time, now - r->start_ns);
}

static void io_done(void *opaque, struct blk_io *io)
{
    (void)opaque;
    struct blk_request *r = (struct blk_request *)io;
    struct virtio_blk *b = r->queue->blk;
    uint64_t now = io->op == BLK_READ || io->op == BLK_WRITE ? monotonic_ns() : 0;
    /* Requests merged into this I/O share its outcome. */
    for (struct blk_request *m = r->merged, *next; m; m = next) {
        next = m->merged;
        m->merged = NULL;
        if (io->result < 0) {
            finish_request(m, VIRTIO_BLK_S_IOERR);
        } else {
            if (io->op == BLK_READ)
                b->reads++;
            else
                b->writes++;
            record_time(b, m, io->op, now);
            finish_request(m, VIRTIO_BLK_S_OK);
        }
    }
    r->merged = NULL;
    if (io->result < 0) {
        log_limited(&b->log_io_error, LOG_WARN, "%s: host I/O error: %s (reported to the guest)",
                    b->dev.name, strerror(-io->result));
        finish_request(r, VIRTIO_BLK_S_IOERR);
        return;
    }
    if (io->op == BLK_READ) {
        b->reads++;
        b->read_bytes += io->len;
        record_time(b, r, io->op, now);
    } else if (io->op == BLK_WRITE) {
        b->writes++;
        b->write_bytes += io->len;
        record_time(b, r, io->op, now);
    } else if (io->op == BLK_FLUSH) {
        b->flushes++;
    } else {
        b->discards++;
    }
    finish_request(r, VIRTIO_BLK_S_OK);
}

static bool in_range(const struct virtio_blk *b, uint64_t sector, uint64_t sectors)
{
    return sector <= b->capacity && sectors <= b->capacity - sector;
}

/* A read or write beyond the limits offered to the driver: IOERR, logged with a rate limit
 * per kind. */
static void refuse(struct blk_request *r, enum blk_refusal why, uint64_t value)
{
    static const char *const what[BLK_REFUSALS] = {
        [BLK_REFUSE_TOO_LONG] = "bytes of data in a request",
        [BLK_REFUSE_SEGMENTS] = "data segments in a request",
        [BLK_REFUSE_SEGMENT_SIZE] = "bytes in a data segment",
    };
    static const uint64_t limit[BLK_REFUSALS] = {
        [BLK_REFUSE_TOO_LONG] = BLK_REQUEST_MAX_BYTES,
        [BLK_REFUSE_SEGMENTS] = BLK_SEG_MAX,
        [BLK_REFUSE_SEGMENT_SIZE] = BLK_SIZE_MAX,
    };
    struct virtio_blk *b = r->queue->blk;
    b->refused[why]++;
    log_limited(&b->log_refusal[why], LOG_WARN, "%s: %llu %s, more than the %llu offered: IOERR",
                b->dev.name, (unsigned long long)value, what[why], (unsigned long long)limit[why]);
    finish_request(r, VIRTIO_BLK_S_IOERR);
}

/* Builds iovecs over the chain's buffers from byte `skip` for `len` bytes,
 * readable (out) or writable (in) side. Returns the count. */
static int chain_iov(const struct virtq_chain *c, bool writable, uint64_t skip, uint64_t len,
                     struct iovec *iov)
{
    unsigned first = writable ? c->nout : 0, n = writable ? c->nin : c->nout;
    int cnt = 0;
    for (unsigned i = 0; i < n && len; i++) {
        const struct virtq_buf *buf = &c->bufs[first + i];
        if (skip >= buf->len) {
            skip -= buf->len;
            continue;
        }
        uint64_t take = buf->len - skip;
        if (take > len)
            take = len;
        iov[cnt++] = (struct iovec){.iov_base = buf->hva + skip, .iov_len = (size_t)take};
        len -= take;
        skip = 0;
    }
    return cnt;
}

/* Submits the batched reads and writes, merging requests that continue
 * each other on disk into one I/O (sequential streams then cost one system
 * call and one completion per merge instead of per request). */
static void submit_batch(struct blk_queue *q)
{
    struct virtio_blk *b = q->blk;
    unsigned n = q->nbatch;
    q->nbatch = 0;
    struct blk_request **v = q->batch;
    /* By operation, then offset: insertion sort, as batches are small and
     * usually in order already. */
    for (unsigned i = 1; i < n; i++) {
        struct blk_request *x = v[i];
        unsigned j = i;
        while (j > 0 && (v[j - 1]->io.op > x->io.op ||
                         (v[j - 1]->io.op == x->io.op && v[j - 1]->io.offset > x->io.offset))) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    for (unsigned i = 0; i < n;) {
        struct blk_request *head = v[i];
        struct blk_request **tail = &head->merged;
        unsigned j = i + 1;
        while (j < n) {
            struct blk_request *next = v[j];
            struct blk_io *hio = &head->io, *nio = &next->io;
            if (nio->op != hio->op || nio->offset != hio->offset + hio->len ||
                hio->iovcnt + nio->iovcnt > BLK_QUEUE_SIZE || hio->len + nio->len > MERGE_MAX_BYTES)
                break;
            memcpy(&head->iov[hio->iovcnt], nio->iov, (size_t)nio->iovcnt * sizeof(struct iovec));
            hio->iovcnt += nio->iovcnt;
            hio->len += nio->len;
            *tail = next;
            tail = &next->merged;
            b->merges++;
            j++;
        }
        blk_backend_submit(&b->backend, &head->io);
        i = j;
    }
}

/* Starts one request. Returns false on a guest error that needs a reset. */
static bool start_request(struct blk_queue *q, struct blk_request *r, const char **why)
{
    struct virtio_blk *b = q->blk;
    const struct virtq_chain *c = &q->chain;
    if (c->in_len == 0) {
        *why = "request has no writable status byte";
        return false;
    }
    struct blk_req_header h;
    if (c->out_len < sizeof(h)) {
        *why = "request header shorter than 16 bytes";
        return false;
    }
    virtq_chain_read(c, 0, &h, sizeof(h));
    const struct virtq_buf *last = &c->bufs[c->nout + c->nin - 1];
    r->head = c->head;
    r->status = last->hva + last->len - 1;
    r->written = 1;
    uint64_t data_in = c->in_len - 1, data_out = c->out_len - sizeof(h);
    struct blk_io *io = &r->io;
    io->iov = r->iov;
    io->iovcnt = 0;

    switch (h.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
        bool is_read = h.type == VIRTIO_BLK_T_IN;
        uint64_t len = is_read ? data_in : data_out;
        if (len > BLK_REQUEST_MAX_BYTES) {
            refuse(r, BLK_REFUSE_TOO_LONG, len);
            return true;
        }
        if (len % SECTOR || !in_range(b, h.sector, len / SECTOR) ||
            (!is_read && b->opts.readonly)) {
            finish_request(r, VIRTIO_BLK_S_IOERR);
            return true;
        }
        if (len == 0) {
            finish_request(r, VIRTIO_BLK_S_OK);
            return true;
        }
        /* A chain holds at most BLK_QUEUE_SIZE buffers, so r->iov has room for them all. */
        int nseg = chain_iov(c, is_read, is_read ? 0 : sizeof(h), len, r->iov);
        if (nseg > BLK_SEG_MAX) {
            refuse(r, BLK_REFUSE_SEGMENTS, (uint64_t)nseg);
            return true;
        }
        for (int i = 0; i < nseg; i++) {
            if (r->iov[i].iov_len > BLK_SIZE_MAX) {
                refuse(r, BLK_REFUSE_SEGMENT_SIZE, r->iov[i].iov_len);
                return true;
            }
        }
        io->op = is_read ? BLK_READ : BLK_WRITE;
        io->offset = h.sector * SECTOR; /* no overflow: sector <= capacity */
        io->len = len;
        io->iovcnt = nseg;
        /* The data and the status byte: below 2^32 (BLK_REQUEST_MAX_BYTES). */
        if (is_read)
            r->written = 1 + (uint32_t)len;
        /* Held back until the batch is complete, to be merged with its
         * neighbours on disk. */
        r->merged = NULL;
        r->start_ns = monotonic_ns();
        q->batch[q->nbatch++] = r;
        return true;
    }
    case VIRTIO_BLK_T_FLUSH:
        /* What the driver sent before the flush goes out before it. */
        submit_batch(q);
        if (b->opts.unsafe) {
            /* Not offered; a driver that sends it anyway gets nothing synced. */
            finish_request(r, VIRTIO_BLK_S_OK);
            return true;
        }
        io->op = BLK_FLUSH;
        io->offset = io->len = 0;
        blk_backend_submit(&b->backend, io);
        return true;
    case VIRTIO_BLK_T_GET_ID: {
        uint64_t n = data_in < VIRTIO_BLK_ID_BYTES ? data_in : VIRTIO_BLK_ID_BYTES;
        struct iovec iov[BLK_QUEUE_SIZE];
        int cnt = chain_iov(c, true, 0, n, iov);
        uint64_t done = 0;
        for (int i = 0; i < cnt; i++) {
            memcpy(iov[i].iov_base, b->serial + done, iov[i].iov_len);
            done += iov[i].iov_len;
        }
        r->written = 1 + (uint32_t)n; /* n <= 20 */
        finish_request(r, VIRTIO_BLK_S_OK);
        return true;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
        submit_batch(q);
        bool zero = h.type == VIRTIO_BLK_T_WRITE_ZEROES;
        struct blk_segment seg;
        if (data_out != sizeof(seg)) {
            /* We offer one segment per request (max_*_seg = 1). */
            finish_request(r, data_out % sizeof(seg) ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR);
            return true;
        }
        virtq_chain_read(c, sizeof(h), &seg, sizeof(seg));
        uint32_t allowed_flags = zero ? WRITE_ZEROES_FLAG_UNMAP : 0;
        if (seg.flags & ~allowed_flags) {
            finish_request(r, VIRTIO_BLK_S_UNSUPP);
            return true;
        }
        if (b->opts.readonly || !in_range(b, seg.sector, seg.num_sectors) ||
            seg.num_sectors > BLK_MAX_DISCARD_SECTORS) {
            finish_request(r, VIRTIO_BLK_S_IOERR);
            return true;
        }
        io->op = !zero                                   ? BLK_DISCARD
                 : (seg.flags & WRITE_ZEROES_FLAG_UNMAP) ? BLK_ZERO_UNMAP
                                                         : BLK_ZERO;
        io->offset = seg.sector * SECTOR;
        io->len = (uint64_t)seg.num_sectors * SECTOR;
        blk_backend_submit(&b->backend, io);
        return true;
    }
    default:
        finish_request(r, VIRTIO_BLK_S_UNSUPP);
        return true;
    }
}

/* Bytes a request moves, for the bandwidth limit. */
static uint64_t request_bytes(const struct virtq_chain *c)
{
    uint64_t in = c->in_len ? c->in_len - 1 : 0;
    uint64_t out = c->out_len > sizeof(struct blk_req_header) ? c->out_len - 16 : 0;
    return in > out ? in : out;
}

static void arm_throttle(struct virtio_blk *b, uint64_t ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(ns / 1000000000ULL),
                                          .tv_nsec = (long)(ns % 1000000000ULL)}};
    if (ns == 0)
        its.it_value.tv_nsec = 1;
    timerfd_settime(b->throttle_fd, 0, &its, NULL);
}

/* Takes the tokens a request needs, or arms the timer for when they will
 * be there and returns false. A request larger than a bucket waits for a
 * full bucket and empties it. */
static bool rate_allow(struct virtio_blk *b, const struct virtq_chain *c)
{
    if (token_bucket_unlimited(&b->ops_bucket) && token_bucket_unlimited(&b->bytes_bucket))
        return true;
    uint64_t bytes = request_bytes(c);
    uint64_t wait = token_bucket_wait_ns(&b->ops_bucket, 1);
    uint64_t wait_bytes = token_bucket_wait_ns(&b->bytes_bucket, bytes);
    if (wait_bytes > wait)
        wait = wait_bytes;
    if (wait) {
        if (!b->throttled)
            b->throttle_events++;
        b->throttled = true;
        arm_throttle(b, wait);
        return false;
    }
    b->throttled = false;
    token_bucket_take(&b->ops_bucket, 1);
    token_bucket_take(&b->bytes_bucket, bytes);
    return true;
}

static void reap(struct virtio_blk *b)
{
    blk_backend_reap(&b->backend, io_done, b);
}

#define KICK_TIMER_NS 1000000 /* longest a request may wait for a completion to be seen */

static void arm_kick_timer(struct virtio_blk *b)
{
    if (b->kick_timer_armed || b->kick_timer_fd < 0)
        return;
    struct itimerspec its = {.it_value = {.tv_nsec = KICK_TIMER_NS}};
    timerfd_settime(b->kick_timer_fd, 0, &its, NULL);
    b->kick_timer_armed = true;
}

static void process_queue(struct virtio_blk *b, unsigned index)
{
    struct blk_queue *q = &b->queues[index];
    struct virtq *vq = &b->dev.queues[index].vq;
    virtq_enable_kicks(vq, false);
    for (;;) {
        while (q->free_list) {
            if (!q->held) {
                int got = virtq_pop(vq, &q->chain);
                if (got < 0) {
                    submit_batch(q);
                    blk_backend_kick(&b->backend);
                    virtio_dev_fail(&b->dev, vq->error);
                    return;
                }
                if (got == 0)
                    break;
            }
            if (!rate_allow(b, &q->chain)) {
                /* Keep the chain; the throttle timer brings us back. */
                q->held = true;
                submit_batch(q);
                blk_backend_kick(&b->backend);
                return;
            }
            q->held = false;
            struct blk_request *r = q->free_list;
            q->free_list = r->next_free;
            q->inflight++;
            const char *why = NULL;
            if (!start_request(q, r, &why)) {
                r->next_free = q->free_list;
                q->free_list = r;
                q->inflight--;
                submit_batch(q);
                blk_backend_kick(&b->backend);
                virtio_dev_fail(&b->dev, why);
                return;
            }
        }
        if (!q->free_list) {
            if (virtq_has_avail(vq))
                b->slots_full++;
            break; /* every slot busy: completions bring us back */
        }
        if (b->poll.polling)
            break; /* no kicks while the iothread polls the ring */
        /* While requests are in flight, their completions bring us back to
         * look at the ring: the guest need not kick (each kick is an exit).
         * A timer bounds what a slow request could add to a new one's wait. */
        if (q->inflight && !q->kicks_forced) {
            arm_kick_timer(b);
            break;
        }
        if (!virtq_enable_kicks(vq, true))
            break;
        virtq_enable_kicks(vq, false);
    }
    submit_batch(q);
    blk_backend_kick(&b->backend);
}

/* Serves every queue until nothing completes any more: completions free
 * slots, may end a queue's last request (then it asks for kicks), and
 * synchronous backends complete while submitting. */
static void serve(struct virtio_blk *b)
{
    if (b->frozen)
        return; /* thaw serves what came meanwhile */
    /* Whatever brought us here (a kick, the completion eventfd, a timer) is work the polling
     * window counts from, not only what poll_idle finds itself. */
    if (b->poll.polling)
        poll_window_work(&b->poll, monotonic_ns());
    for (int round = 0; round < 64 && b->dev.active; round++) {
        for (unsigned i = 0; i < b->opts.queues && b->dev.active; i++) {
            if (b->dev.queues[i].enabled)
                process_queue(b, i);
        }
        if (blk_backend_reap(&b->backend, io_done, b) == 0)
            break;
    }
    signal_queues(b);
}

/* Whether queue i could take a request now: enabled, a free slot, nothing held back by the
 * rate limiter. A queue that cannot is woken by a completion or the throttle timer, and
 * polling it would spin until then. */
static bool queue_can_take(const struct virtio_blk *b, unsigned i)
{
    return b->dev.queues[i].enabled && b->queues[i].free_list && !b->queues[i].held;
}

/* Polling (poll_window.h): after work, the iothread keeps looking at the rings and the
 * completion queue for a window before it enables kicks and sleeps. A busy guest then submits
 * without exits, and completions need no wake-up. Returns the iothread's next wait: 0 while
 * polling, -1 (until an event) once it stopped. */
static int poll_idle(void *opaque)
{
    struct virtio_blk *b = opaque;
    if (!b->dev.active || !b->poll.polling || b->frozen)
        return -1;
    b->poll_rounds++;
    bool work = blk_backend_reap(&b->backend, io_done, b) > 0;
    for (unsigned i = 0; i < b->opts.queues; i++)
        work = work || (queue_can_take(b, i) && virtq_has_avail(&b->dev.queues[i].vq));
    if (work) {
        b->poll_hits++;
        serve(b);
        poll_window_work(&b->poll, monotonic_ns());
        return 0;
    }
    bool pending = false;
    for (unsigned i = 0; i < b->opts.queues; i++)
        pending = pending || b->queues[i].inflight;
    if (poll_window_keep(&b->poll, monotonic_ns(), pending))
        return 0;
    /* The window closed: ask for kicks again, and look once more for work that raced with
     * that (the driver may have added a request before it saw kicks were wanted). */
    for (unsigned i = 0; i < b->opts.queues; i++) {
        struct virtq *vq = &b->dev.queues[i].vq;
        if (queue_can_take(b, i) && virtq_enable_kicks(vq, true)) {
            b->poll_races++;
            poll_window_resume(&b->poll, monotonic_ns());
            return 0;
        }
    }
    return -1;
}

static void start_polling(struct virtio_blk *b)
{
    if (poll_window_on(&b->poll) && !b->poll.polling) {
        /* serve() takes the requests with kicks off and leaves them off while this polls. */
        poll_window_start(&b->poll, monotonic_ns());
    }
}

static void queue_notify(struct virtio_dev *d, unsigned index)
{
    struct virtio_blk *b = d->opaque;
    if (b->frozen)
        return; /* thaw looks at every queue */
    if (!virtq_has_avail(&d->queues[index].vq))
        b->empty_kicks++;
    start_polling(b);
    serve(b);
}

static void on_completion(void *opaque, uint32_t events)
{
    struct virtio_blk *b = opaque;
    (void)events;
    b->completion_wakeups++;
    if (b->dev.active && !b->frozen)
        serve(b);
    else
        reap(b);
}

/* Requests have been in flight for a while without completing: ask for
 * kicks again so that new requests are not held up behind them. */
static void on_kick_timer(void *opaque, uint32_t events)
{
    struct virtio_blk *b = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(b->kick_timer_fd, &v, sizeof(v));
    (void)ignored;
    b->kick_timer_armed = false;
    if (!b->dev.active)
        return;
    for (unsigned i = 0; i < b->opts.queues; i++)
        b->queues[i].kicks_forced = true;
    serve(b);
    for (unsigned i = 0; i < b->opts.queues; i++)
        b->queues[i].kicks_forced = false;
}

static void on_throttle(void *opaque, uint32_t events)
{
    struct virtio_blk *b = opaque;
    (void)events;
    uint64_t v;
    b->throttle_wakeups++;
    ssize_t ignored = read(b->throttle_fd, &v, sizeof(v));
    (void)ignored;
    if (b->dev.active)
        serve(b);
}

static int activate(struct virtio_dev *d)
{
    struct virtio_blk *b = d->opaque;
    b->throttle_handler = event_loop_add(&d->io.loop, b->throttle_fd, EPOLLIN, on_throttle, b);
    b->kick_timer_handler =
        event_loop_add(&d->io.loop, b->kick_timer_fd, EPOLLIN, on_kick_timer, b);
    if (!b->throttle_handler || !b->kick_timer_handler)
        return -1;
    b->kick_timer_armed = false;
    b->frozen = false;
    for (unsigned i = 0; i < b->opts.queues; i++)
        b->queues[i].held = false;
    if (b->backend.event_fd >= 0) {
        b->completion_handler =
            event_loop_add(&d->io.loop, b->backend.event_fd, EPOLLIN | EPOLLET, on_completion, b);
        if (!b->completion_handler)
            return -1;
    }
    poll_window_init(&b->poll, b->opts.poll_us, b->opts.poll_adaptive);
    if (poll_window_on(&b->poll)) {
        d->io.idle = poll_idle;
        d->io.idle_opaque = b;
    }
    serve(b);
    return 0;
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_blk *b = d->opaque;
    d->io.idle = NULL;
    poll_window_stop(&b->poll, monotonic_ns());
    /* In-flight requests finish (their data reaches the image) before the
     * rings are given up. */
    blk_backend_drain(&b->backend, io_done, b);
    signal_queues(b);
    if (b->completion_handler)
        event_loop_del(&d->io.loop, b->completion_handler);
    b->completion_handler = NULL;
    if (b->throttle_handler)
        event_loop_del(&d->io.loop, b->throttle_handler);
    b->throttle_handler = NULL;
    if (b->kick_timer_handler)
        event_loop_del(&d->io.loop, b->kick_timer_handler);
    b->kick_timer_handler = NULL;
    struct itimerspec off = {0};
    timerfd_settime(b->kick_timer_fd, 0, &off, NULL);
    b->kick_timer_armed = false;
    /* A chain held back by the rate limiter belongs to the driver again. */
    for (unsigned i = 0; i < b->opts.queues; i++)
        b->queues[i].held = false;
}

/* ---- snapshots ---------------------------------------------------------- */

/* Everything taken from the rings is answered (data in guest memory or the image, used
 * entries pushed, interrupts sent), and nothing more is taken until thaw. */
static void freeze(struct virtio_dev *d)
{
    struct virtio_blk *b = d->opaque;
    b->frozen = true;
    d->io.idle = NULL;
    poll_window_stop(&b->poll, monotonic_ns());
    blk_backend_drain(&b->backend, io_done, b);
    for (unsigned i = 0; i < b->opts.queues; i++) {
        /* A chain held back by the rate limiter is the last one taken from its ring: it
         * goes back there, to be taken again after thaw or in the restored VM. */
        if (b->queues[i].held && virtio_dev_queue_live(d, i))
            virtq_unpop(&d->queues[i].vq, 1);
        b->queues[i].held = false;
    }
    signal_queues(b);
    struct itimerspec off = {0};
    timerfd_settime(b->kick_timer_fd, 0, &off, NULL);
    timerfd_settime(b->throttle_fd, 0, &off, NULL);
    b->kick_timer_armed = false;
}

static void thaw(struct virtio_dev *d)
{
    struct virtio_blk *b = d->opaque;
    b->frozen = false;
    if (poll_window_on(&b->poll)) {
        d->io.idle = poll_idle;
        d->io.idle_opaque = b;
    }
    /* What the driver added meanwhile, and kicks asked for again where the ring is idle. */
    serve(b);
}

/* The rate limiter's budgets; the rings' positions are the common state's. */
static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_blk *b = d->opaque;
    token_bucket_snapshot_save(w, &b->bytes_bucket);
    token_bucket_snapshot_save(w, &b->ops_bucket);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    struct virtio_blk *b = d->opaque;
    if (token_bucket_snapshot_restore(c, &b->bytes_bucket, "bandwidth") < 0 ||
        token_bucket_snapshot_restore(c, &b->ops_bucket, "operations") < 0)
        return -1;
    return 0;
}

static bool features_ok(struct virtio_dev *d, uint64_t f)
{
    (void)d;
    (void)f;
    return true;
}

static const struct virtio_dev_ops blk_ops = {
    .read_config = read_config,
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .features_ok = features_ok,
    .freeze = freeze,
    .save = save,
    .restore = restore,
    .thaw = thaw,
};

int virtio_blk_init(struct virtio_blk *b, const char *name, const struct blk_options *opts,
                    const struct guest_memory *mem)
{
    memset(b, 0, sizeof(*b));
    b->throttle_fd = -1;
    b->kick_timer_fd = -1;
    b->opts = *opts;
    const struct rate_limit_config *rl = &opts->rate_limit;
    token_bucket_init_fc(&b->bytes_bucket, rl->bandwidth.size, rl->bandwidth.one_time_burst,
                         rl->bandwidth.refill_ms);
    token_bucket_init_fc(&b->ops_bucket, rl->ops.size, rl->ops.one_time_burst, rl->ops.refill_ms);
    b->throttle_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    b->kick_timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (b->throttle_fd < 0 || b->kick_timer_fd < 0)
        return error_errno("%s: timerfd", name);
    if (b->opts.queues == 0)
        b->opts.queues = 1;
    if (b->opts.queues > VIRTIO_BLK_MAX_QUEUES)
        return error_set("drive %s: at most %d queues", name, VIRTIO_BLK_MAX_QUEUES);
    if (blk_backend_open(&b->backend, opts->path, opts->readonly, opts->direct, opts->engine,
                         b->opts.queues * BLK_QUEUE_SIZE) < 0)
        return -1;
    if (b->backend.size % SECTOR)
        log_warn("drive '%s': size is not a multiple of 512; the last %llu bytes are unused",
                 opts->path, (unsigned long long)(b->backend.size % SECTOR));
    b->capacity = b->backend.size / SECTOR;
    /* The serial is not NUL-terminated when it fills all 20 bytes. */
    const char *serial = opts->id ? opts->id : name;
    memcpy(b->serial, serial, strnlen(serial, sizeof(b->serial)));
    build_config(b);

    b->queues = calloc(b->opts.queues, sizeof(*b->queues));
    if (!b->queues)
        return error_set("out of memory");
    for (unsigned i = 0; i < b->opts.queues; i++) {
        struct blk_queue *q = &b->queues[i];
        q->blk = b;
        q->index = i;
        if (virtq_chain_alloc(&q->chain, BLK_QUEUE_SIZE) < 0)
            return -1;
        q->reqs = calloc(BLK_QUEUE_SIZE, sizeof(*q->reqs));
        if (!q->reqs)
            return error_set("out of memory");
        for (unsigned k = 0; k < BLK_QUEUE_SIZE; k++) {
            q->reqs[k].queue = q;
            q->reqs[k].next_free = q->free_list;
            q->free_list = &q->reqs[k];
        }
    }
    uint64_t features = (1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |
                        (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_DISCARD) |
                        (1ULL << VIRTIO_BLK_F_WRITE_ZEROES);
    if (!opts->unsafe)
        features |= 1ULL << VIRTIO_BLK_F_FLUSH;
    if (opts->readonly)
        features |= 1ULL << VIRTIO_BLK_F_RO;
    if (b->opts.queues > 1)
        features |= 1ULL << VIRTIO_BLK_F_MQ;
    return virtio_dev_init(&b->dev, name, VIRTIO_ID_BLOCK, features, b->opts.queues, BLK_QUEUE_SIZE,
                           sizeof(b->config), &blk_ops, b, mem);
}

void virtio_blk_destroy(struct virtio_blk *b)
{
    virtio_dev_destroy(&b->dev);
    for (unsigned i = 0; b->queues && i < b->opts.queues; i++) {
        virtq_chain_free(&b->queues[i].chain);
        free(b->queues[i].reqs);
    }
    free(b->queues);
    b->queues = NULL;
    blk_backend_close(&b->backend);
    if (b->throttle_fd >= 0)
        close(b->throttle_fd);
    b->throttle_fd = -1;
    if (b->kick_timer_fd >= 0)
        close(b->kick_timer_fd);
    b->kick_timer_fd = -1;
    char what[64];
    snprintf(what, sizeof(what), "%s: requests beyond the limits", b->dev.name);
    for (unsigned i = 0; i < BLK_REFUSALS; i++)
        log_limit_flush(&b->log_refusal[i], LOG_WARN, what);
}

/* ---- changing the backing image at run time -------------------------- */

/* The new image is opened, and the old one closed, by the caller (the API,
 * on the main thread), not on the device's I/O thread: the thread that
 * serves the guest opens and closes no files (its seccomp filter). The I/O
 * thread only lets the old image's requests finish and swaps the backends. */
struct change_backing {
    struct virtio_blk *blk;
    const char *path;
    struct blk_backend *fresh; /* NULL: the image closed to be reopened could not be */
    struct blk_backend old;    /* what the device let go of, for the caller to close */
    int result;
    char error[256];
};

/* Lets the requests in flight finish, then hands the current image over. */
static void release_backend(struct virtio_blk *b, struct blk_backend *old)
{
    blk_backend_drain(&b->backend, io_done, b);
    signal_queues(b);
    if (b->completion_handler)
        event_loop_del(&b->dev.io.loop, b->completion_handler);
    b->completion_handler = NULL;
    *old = b->backend;
    b->backend.fd = b->backend.event_fd = -1;
    b->backend.uring_ok = false;
    b->backend.bounce = NULL;
}

static void release_backing_on_io(void *arg)
{
    struct change_backing *cb = arg;
    release_backend(cb->blk, &cb->old);
}

static void install_backing_on_io(void *arg)
{
    struct change_backing *cb = arg;
    struct virtio_blk *b = cb->blk;
    if (!cb->fresh) { /* nothing left to serve from */
        virtio_dev_fail(&b->dev, "its image could not be reopened");
        return;
    }
    if (b->backend.fd >= 0)
        release_backend(b, &cb->old);
    b->backend = *cb->fresh;
    if (b->dev.active && b->backend.event_fd >= 0) {
        b->completion_handler = event_loop_add(&b->dev.io.loop, b->backend.event_fd,
                                               EPOLLIN | EPOLLET, on_completion, b);
        if (!b->completion_handler) {
            snprintf(cb->error, sizeof(cb->error), "%s", error_get());
            virtio_dev_fail(&b->dev, "cannot watch the new image's completions");
            cb->result = -1;
            return;
        }
    }
    b->opts.path = cb->path;
    b->capacity = b->backend.size / SECTOR;
    build_config(b);
    __atomic_add_fetch(&b->dev.config_generation, 1, __ATOMIC_SEQ_CST);
    if (b->dev.transport && b->dev.transport->notify_config)
        b->dev.transport->notify_config(&b->dev);
    cb->result = 0;
}

static int change_backing(struct virtio_blk *b, const char *path);

int virtio_blk_change_backing(struct virtio_blk *b, const char *path)
{
    int r = change_backing(b, path);
    __atomic_add_fetch(r < 0 ? &b->update_fails : &b->updates, 1, __ATOMIC_RELAXED);
    return r;
}

static int change_backing(struct virtio_blk *b, const char *path)
{
    /* The same file again (grown or shrunk in place) cannot be opened
     * beside the old descriptor, which holds its lock: close that first.
     * Only this function replaces b->backend, so its fd can be read here. */
    struct stat now, old;
    bool same_file = stat(path, &now) == 0 && fstat(b->backend.fd, &old) == 0 &&
                     now.st_dev == old.st_dev && now.st_ino == old.st_ino;
    struct blk_backend fresh;
    struct change_backing cb = {.blk = b, .path = path, .fresh = &fresh};
    cb.old.fd = cb.old.event_fd = -1;
    if (same_file) {
        iothread_call(&b->dev.io, release_backing_on_io, &cb);
        blk_backend_close(&cb.old);
    }
    /* Otherwise open first: on failure the device goes on with the old image. */
    if (blk_backend_open(&fresh, path, b->opts.readonly, b->opts.direct, b->opts.engine,
                         b->opts.queues * BLK_QUEUE_SIZE) < 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s", error_get());
        blk_backend_close(&fresh);
        if (same_file) {
            cb.fresh = NULL;
            iothread_call(&b->dev.io, install_backing_on_io, &cb);
        }
        return error_set("%s", why);
    }
    iothread_call(&b->dev.io, install_backing_on_io, &cb);
    blk_backend_close(&cb.old);
    if (cb.result < 0)
        return error_set("%s", cb.error);
    return 0;
}

struct change_limits {
    struct virtio_blk *blk;
    const struct rate_limit_config *rl;
};

static void change_limits_on_io(void *arg)
{
    struct change_limits *c = arg;
    struct virtio_blk *b = c->blk;
    const struct rate_limit_config *rl = c->rl;
    b->opts.rate_limit = *rl;
    token_bucket_init_fc(&b->bytes_bucket, rl->bandwidth.size, rl->bandwidth.one_time_burst,
                         rl->bandwidth.refill_ms);
    token_bucket_init_fc(&b->ops_bucket, rl->ops.size, rl->ops.one_time_burst, rl->ops.refill_ms);
    /* A request held back by the old limits is looked at again. */
    if (b->dev.active && b->throttle_fd >= 0)
        arm_throttle(b, 0);
}

void virtio_blk_change_limits(struct virtio_blk *b, const struct rate_limit_config *rl)
{
    struct change_limits c = {.blk = b, .rl = rl};
    iothread_call(&b->dev.io, change_limits_on_io, &c);
}
