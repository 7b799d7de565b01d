#include "virtio/pmem.h"

#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

/* Configuration space (5.19.4): where the memory is and how large. */
struct pmem_config_space {
    uint64_t start;
    uint64_t size;
};

static void arm_timer(struct virtio_pmem *p, uint64_t ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(ns / 1000000000ULL),
                                          .tv_nsec = (long)(ns % 1000000000ULL)}};
    timerfd_settime(p->timer_fd, 0, &its, NULL);
}

/* Takes one flush's worth of tokens (one op, the file's size in bytes), or
 * arms the timer for when they will be there and returns false. */
static bool rate_allow(struct virtio_pmem *p)
{
    if (token_bucket_unlimited(&p->ops_bucket) && token_bucket_unlimited(&p->bytes_bucket))
        return true;
    uint64_t wait = token_bucket_wait_ns(&p->ops_bucket, 1);
    uint64_t wait_bytes = token_bucket_wait_ns(&p->bytes_bucket, p->file_len);
    if (wait_bytes > wait)
        wait = wait_bytes;
    if (wait) {
        if (!p->throttled)
            p->throttled_events++;
        p->throttled = true;
        arm_timer(p, wait);
        return false;
    }
    p->throttled = false;
    token_bucket_take(&p->ops_bucket, 1);
    token_bucket_take(&p->bytes_bucket, p->file_len);
    return true;
}

/* Checks one request and notes where its response goes. A request without
 * 4 writable bytes cannot be answered: false, the device then fails. A
 * request that can be answered but is not a FLUSH gets EIO. */
static bool take_request(struct virtio_pmem *p, const struct virtq_chain *c,
                         struct pmem_pending *out)
{
    struct virtio_dev *d = &p->dev;
    *out = (struct pmem_pending){.head = c->head, .ret = VIRTIO_PMEM_RESP_OK};
    uint32_t room = 0;
    for (unsigned i = 0; i < c->nin && room < 4; i++) {
        const struct virtq_buf *b = &c->bufs[c->nout + i];
        if (!b->len)
            continue;
        uint32_t n = b->len < 4 - room ? b->len : 4 - room;
        out->resp[out->nresp] = b->hva;
        out->resp_len[out->nresp++] = (uint8_t)n;
        room += n;
    }
    if (room < 4)
        return false;
    uint32_t type;
    if (c->out_len < sizeof(type) || virtq_chain_read(c, 0, &type, sizeof(type)) < sizeof(type)) {
        p->bad_requests++;
        log_limited(&d->log_guest_error, LOG_WARN,
                    "%s: request of %llu readable bytes, a FLUSH has 4: answered EIO", d->name,
                    (unsigned long long)c->out_len);
        out->ret = VIRTIO_PMEM_RESP_EIO;
    } else if (type != VIRTIO_PMEM_REQ_TYPE_FLUSH) {
        p->bad_requests++;
        log_limited(&d->log_guest_error, LOG_WARN,
                    "%s: unknown request type %u (FLUSH is 0): answered EIO", d->name, type);
        out->ret = VIRTIO_PMEM_RESP_EIO;
    }
    return true;
}

static void answer(const struct pmem_pending *r)
{
    uint8_t bytes[4];
    uint32_t v = r->ret; /* little-endian, as the host */
    memcpy(bytes, &v, sizeof(bytes));
    unsigned done = 0;
    for (unsigned i = 0; i < r->nresp; i++) {
        memcpy(r->resp[i], bytes + done, r->resp_len[i]);
        done += r->resp_len[i];
    }
}

/* One batch: every request in the ring now, then one msync for all of
 * them, then the answers. Each request was made before the msync began, so
 * it covers what the guest wrote before asking; a flood of FLUSHes costs
 * one msync per batch (and the rate limiter's tokens), not one each. */
static void serve(struct virtio_pmem *p)
{
    struct virtio_dev *d = &p->dev;
    struct virtq *q = &d->queues[0].vq;
    /* Tokens are spent on batches, not on kicks that find nothing. */
    if (p->frozen || !virtq_has_avail(q))
        return;
    if (!rate_allow(p))
        return;
    unsigned n = 0, flushes = 0;
    while (n < VIRTIO_PMEM_QUEUE_SIZE) {
        int got = virtio_dev_pop(d, 0, &p->chain);
        if (got < 0)
            return; /* the device failed: nothing is answered */
        if (got == 0)
            break;
        if (!take_request(p, &p->chain, &p->pending[n])) {
            /* Chains taken before it are dropped with the queue: after the
             * reset the driver owns its buffers again. */
            p->bad_requests++;
            virtio_dev_fail(d, "pmem request without 4 writable bytes for its response");
            return;
        }
        if (p->pending[n].ret == VIRTIO_PMEM_RESP_OK)
            flushes++;
        p->requests++;
        n++;
    }
    if (flushes) {
        p->flushes++;
        if (msync(p->map, p->file_len, MS_SYNC) < 0) {
            int err = errno;
            p->flush_fails++;
            log_limited(&p->log_flush, LOG_ERROR, "%s: flushing '%s' failed: %s", d->name,
                        p->opts.path, strerror(err));
            for (unsigned i = 0; i < n; i++)
                p->pending[i].ret = VIRTIO_PMEM_RESP_EIO;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        answer(&p->pending[i]);
        virtq_push(q, p->pending[i].head, 4);
    }
    if (n)
        virtio_dev_signal_used(d, 0);
    /* A full batch may have more behind it: come back through the event
     * loop, so that a flood cannot keep resets and other work waiting. */
    if (n == VIRTIO_PMEM_QUEUE_SIZE)
        arm_timer(p, 1);
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    (void)q;
    struct virtio_pmem *p = d->opaque;
    p->queue_events++;
    serve(p);
}

static void on_timer(void *opaque, uint32_t events)
{
    struct virtio_pmem *p = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(p->timer_fd, &v, sizeof(v));
    (void)ignored;
    if (p->throttled)
        p->limiter_events++;
    if (virtio_dev_queue_live(&p->dev, 0))
        serve(p);
}

static int activate(struct virtio_dev *d)
{
    struct virtio_pmem *p = d->opaque;
    p->throttled = false;
    p->frozen = false;
    p->timer_handler = event_loop_add(&d->io.loop, p->timer_fd, EPOLLIN, on_timer, p);
    if (!p->timer_handler) {
        p->activate_fails++;
        return -1;
    }
    /* Requests may be waiting from before DRIVER_OK. */
    if (virtio_dev_queue_live(d, 0))
        serve(p);
    return 0;
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_pmem *p = d->opaque;
    arm_timer(p, 0);
    if (p->timer_handler)
        event_loop_del(&d->io.loop, p->timer_handler);
    p->timer_handler = NULL;
    p->throttled = false;
    p->frozen = false;
}

/* ---- snapshots ---------------------------------------------------------- */

/* A batch is taken, flushed and answered within one call on this thread: none is ever in
 * flight when freeze runs. Nothing more is taken until thaw. The file itself is not part of
 * a snapshot (as a drive's image is not); what the guest wrote is in it (a shared mapping). */
static void freeze(struct virtio_dev *d)
{
    struct virtio_pmem *p = d->opaque;
    p->frozen = true;
    arm_timer(p, 0);
}

static void thaw(struct virtio_dev *d)
{
    struct virtio_pmem *p = d->opaque;
    p->frozen = false;
    serve(p);
}

/* Where the guest found the memory and how large (its driver mapped it there), and the rate
 * limiter's budgets. */
static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_pmem *p = d->opaque;
    snapshot_put_u64(w, p->gpa);
    snapshot_put_u64(w, p->map_len);
    token_bucket_snapshot_save(w, &p->bytes_bucket);
    token_bucket_snapshot_save(w, &p->ops_bucket);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    struct virtio_pmem *p = d->opaque;
    uint64_t gpa, len;
    if (snapshot_get_u64(c, &gpa) < 0 || snapshot_get_u64(c, &len) < 0)
        return -1;
    if (gpa != p->gpa || len != p->map_len)
        return error_set("the guest knows its memory at 0x%llx, %llu MiB; this device's is at "
                         "0x%llx, %llu MiB (another file size or device layout)",
                         (unsigned long long)gpa, (unsigned long long)(len >> 20),
                         (unsigned long long)p->gpa, (unsigned long long)(p->map_len >> 20));
    if (token_bucket_snapshot_restore(c, &p->bytes_bucket, "bandwidth") < 0 ||
        token_bucket_snapshot_restore(c, &p->ops_bucket, "operations") < 0)
        return -1;
    return 0;
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_pmem *p = d->opaque;
    struct pmem_config_space cs = {.start = p->gpa, .size = p->map_len};
    memcpy(data, (uint8_t *)&cs + offset, len);
}

static void write_config(struct virtio_dev *d, uint32_t offset, const void *data, uint32_t len)
{
    (void)data;
    struct virtio_pmem *p = d->opaque;
    __atomic_fetch_add(&p->config_writes, 1, __ATOMIC_RELAXED);
    /* Read-only for the driver (5.19.4). */
    log_limited(&d->log_register, LOG_WARN,
                "%s: ignored a write of %u bytes to the read-only configuration at %u", d->name,
                len, offset);
}

static const struct virtio_dev_ops pmem_ops = {
    .read_config = read_config,
    .write_config = write_config,
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .freeze = freeze,
    .save = save,
    .restore = restore,
    .thaw = thaw,
};

/* The file, then anonymous memory up to the next 2 MiB: one reservation of
 * the whole, the file mapped over its start. */
static int map_file(struct virtio_pmem *p)
{
    int prot = PROT_READ | (p->opts.readonly ? 0 : PROT_WRITE);
    void *area = mmap(NULL, p->map_len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED)
        return error_errno("pmem '%s': cannot reserve %llu MiB", p->opts.path,
                           (unsigned long long)(p->map_len >> 20));
    void *file = mmap(area, p->file_len, prot, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, p->fd, 0);
    if (file == MAP_FAILED) {
        int err = errno;
        munmap(area, p->map_len);
        errno = err;
        return error_errno("pmem '%s': cannot map the file", p->opts.path);
    }
    p->map = area;
    return 0;
}

int virtio_pmem_init(struct virtio_pmem *p, const char *name, const struct pmem_options *o,
                     const struct guest_memory *mem)
{
    memset(p, 0, sizeof(*p));
    p->fd = -1;
    p->timer_fd = -1;
    p->opts = *o;
    const struct rate_limit_config *rl = &o->rate_limit;
    token_bucket_init_fc(&p->bytes_bucket, rl->bandwidth.size, rl->bandwidth.one_time_burst,
                         rl->bandwidth.refill_ms);
    token_bucket_init_fc(&p->ops_bucket, rl->ops.size, rl->ops.one_time_burst, rl->ops.refill_ms);
    p->fd = open(o->path, (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (p->fd < 0)
        return error_errno("pmem '%s': cannot open '%s'%s", o->id ? o->id : name, o->path,
                           o->readonly ? "" : " for reading and writing");
    struct stat st;
    if (fstat(p->fd, &st) < 0)
        return error_errno("pmem '%s': %s", o->id ? o->id : name, o->path);
    if (!S_ISREG(st.st_mode))
        return error_set("pmem '%s': '%s' is not a regular file", o->id ? o->id : name, o->path);
    if (st.st_size <= 0)
        return error_set("pmem '%s': '%s' is empty", o->id ? o->id : name, o->path);
    p->file_len = (uint64_t)st.st_size;
    p->map_len = (p->file_len + VIRTIO_PMEM_ALIGN - 1) & ~(VIRTIO_PMEM_ALIGN - 1);
    if (map_file(p) < 0)
        return -1;
    p->pending = calloc(VIRTIO_PMEM_QUEUE_SIZE, sizeof(*p->pending));
    if (!p->pending || virtq_chain_alloc(&p->chain, VIRTIO_PMEM_QUEUE_SIZE) < 0)
        return error_set("out of memory");
    p->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (p->timer_fd < 0)
        return error_errno("%s: timerfd", name);
    return virtio_dev_init(&p->dev, name, VIRTIO_ID_PMEM, 0, 1, VIRTIO_PMEM_QUEUE_SIZE,
                           sizeof(struct pmem_config_space), &pmem_ops, p, mem);
}

void virtio_pmem_set_region(struct virtio_pmem *p, uint64_t gpa)
{
    p->gpa = gpa;
}

void virtio_pmem_readonly_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                             bool is_write)
{
    struct virtio_pmem *p = opaque;
    if (!is_write) {
        /* KVM serves reads from the slot; an exit for one cannot happen. */
        if (offset < p->map_len && len <= p->map_len - offset)
            memcpy(data, p->map + offset, len);
        else
            memset(data, 0xff, len);
        return;
    }
    __atomic_fetch_add(&p->ro_writes, 1, __ATOMIC_RELAXED);
    log_limited(&p->log_ro_write, LOG_WARN,
                "%s: the guest wrote %u bytes at offset 0x%llx of read-only '%s': dropped",
                p->dev.name, len, (unsigned long long)offset, p->opts.path);
}

struct change_limits {
    struct virtio_pmem *pmem;
    const struct rate_limit_config *rl;
};

static void change_limits_on_io(void *arg)
{
    struct change_limits *c = arg;
    struct virtio_pmem *p = c->pmem;
    const struct rate_limit_config *rl = c->rl;
    p->opts.rate_limit = *rl;
    token_bucket_init_fc(&p->bytes_bucket, rl->bandwidth.size, rl->bandwidth.one_time_burst,
                         rl->bandwidth.refill_ms);
    token_bucket_init_fc(&p->ops_bucket, rl->ops.size, rl->ops.one_time_burst, rl->ops.refill_ms);
    /* Requests held back by the old limits are looked at again. */
    p->throttled = false;
    if (p->dev.active)
        arm_timer(p, 1);
}

void virtio_pmem_change_limits(struct virtio_pmem *p, const struct rate_limit_config *rl)
{
    struct change_limits c = {.pmem = p, .rl = rl};
    iothread_call(&p->dev.io, change_limits_on_io, &c);
}

void virtio_pmem_destroy(struct virtio_pmem *p)
{
    virtio_dev_destroy(&p->dev);
    if (p->map)
        log_info("%s: %llu requests answered with %llu msyncs (%llu failed), %llu bad requests, "
                 "%llu writes to read-only memory dropped",
                 p->dev.name, (unsigned long long)p->requests, (unsigned long long)p->flushes,
                 (unsigned long long)p->flush_fails, (unsigned long long)p->bad_requests,
                 (unsigned long long)__atomic_load_n(&p->ro_writes, __ATOMIC_RELAXED));
    char what[64];
    snprintf(what, sizeof(what), "%s: flush failures", p->dev.name);
    log_limit_flush(&p->log_flush, LOG_ERROR, what);
    snprintf(what, sizeof(what), "%s: writes to read-only memory", p->dev.name);
    log_limit_flush(&p->log_ro_write, LOG_WARN, what);
    if (p->map)
        munmap(p->map, p->map_len);
    p->map = NULL;
    if (p->timer_fd >= 0)
        close(p->timer_fd);
    p->timer_fd = -1;
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    virtq_chain_free(&p->chain);
    free(p->pending);
    p->pending = NULL;
}
