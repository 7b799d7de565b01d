#include "virtio/rng.h"

#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"

#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define RNG_QUEUE_SIZE 64
/* Bytes given for one request at most: the device may fill less than the
 * buffers offer (5.4.6), and a request of gigabytes (descriptors may repeat
 * the same memory) must not keep this thread busy or overflow a used length. */
#define RNG_MAX_REQUEST (64 * 1024)

static void arm_timer(struct virtio_rng *r, uint64_t ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)(ns / 1000000000ULL),
                                          .tv_nsec = (long)(ns % 1000000000ULL)}};
    timerfd_settime(r->timer_fd, 0, &its, NULL);
}

/* Fills as many pending requests as the bucket allows. */
static void serve(struct virtio_rng *r)
{
    struct virtio_dev *d = &r->dev;
    struct virtq *q = &d->queues[0].vq;
    bool pushed = false;
    if (r->frozen)
        return; /* thaw comes back */
    for (;;) {
        if (!r->chain_pending) {
            int got = virtio_dev_pop(d, 0, &r->chain);
            if (got < 0)
                return;
            if (got == 0)
                break;
            r->chain_pending = true;
        }
        if (r->chain.in_len == 0) {
            /* Nothing writable: complete it empty rather than stall. */
            virtq_push(q, r->chain.head, 0);
            r->chain_pending = false;
            pushed = true;
            continue;
        }
        uint64_t want = r->chain.in_len < RNG_MAX_REQUEST ? r->chain.in_len : RNG_MAX_REQUEST;
        /* Short of tokens: keep this request and come back when it can
         * be filled (up to a burst), not a byte per wakeup. Asking before
         * taking means a wait of 0 is never mistaken for a timer. */
        uint64_t wait_ns = token_bucket_wait_ns(&r->bucket, want);
        if (wait_ns) {
            r->limited++;
            arm_timer(r, wait_ns);
            break;
        }
        uint64_t allowed = token_bucket_take(&r->bucket, want);
        uint64_t written = 0;
        for (unsigned i = 0; i < r->chain.nin && written < allowed; i++) {
            struct virtq_buf *b = &r->chain.bufs[r->chain.nout + i];
            uint64_t n = b->len < allowed - written ? b->len : allowed - written;
            uint64_t done = 0;
            while (done < n) {
                ssize_t got = getrandom(b->hva + done, n - done, 0);
                if (got <= 0) {
                    r->host_fails++;
                    break;
                }
                done += (uint64_t)got;
            }
            written += done;
            if (done < n)
                break;
        }
        virtq_push(q, r->chain.head, (uint32_t)written);
        r->chain_pending = false;
        r->bytes += written;
        r->requests++;
        pushed = true;
    }
    if (pushed)
        virtio_dev_signal_used(d, 0);
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    (void)q;
    struct virtio_rng *r = d->opaque;
    virtq_enable_kicks(&d->queues[0].vq, false);
    serve(r);
}

static void on_timer(void *opaque, uint32_t events)
{
    struct virtio_rng *r = opaque;
    (void)events;
    uint64_t v;
    r->wakeups++;
    ssize_t ignored = read(r->timer_fd, &v, sizeof(v));
    (void)ignored;
    if (r->dev.active)
        serve(r);
}

static int activate(struct virtio_dev *d)
{
    struct virtio_rng *r = d->opaque;
    r->chain_pending = false;
    r->frozen = false;
    r->timer_handler = event_loop_add(&d->io.loop, r->timer_fd, EPOLLIN, on_timer, r);
    if (!r->timer_handler)
        return -1;
    /* Buffers may be waiting from before DRIVER_OK; a queue the driver
     * left disabled has no rings to look at. */
    if (d->queues[0].enabled)
        serve(r);
    return 0;
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_rng *r = d->opaque;
    arm_timer(r, 0);
    if (r->timer_handler)
        event_loop_del(&d->io.loop, r->timer_handler);
    r->timer_handler = NULL;
    /* A request waiting for tokens is dropped with the queue: after a
     * reset the driver owns its buffers again. */
    r->chain_pending = false;
    r->frozen = false;
}

/* ---- snapshots ---------------------------------------------------------- */

/* A request waiting for tokens is the last one taken from the ring: it goes back there, to be
 * taken again after thaw or in the restored VM. */
static void freeze(struct virtio_dev *d)
{
    struct virtio_rng *r = d->opaque;
    if (r->chain_pending && virtio_dev_queue_live(d, 0))
        virtq_unpop(&d->queues[0].vq, 1);
    r->chain_pending = false;
    r->frozen = true;
    arm_timer(r, 0);
}

static void thaw(struct virtio_dev *d)
{
    struct virtio_rng *r = d->opaque;
    r->frozen = false;
    serve(r);
}

static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_rng *r = d->opaque;
    token_bucket_snapshot_save(w, &r->bucket);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *c)
{
    struct virtio_rng *r = d->opaque;
    return token_bucket_snapshot_restore(c, &r->bucket, "bandwidth");
}

static const struct virtio_dev_ops rng_ops = {
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .freeze = freeze,
    .save = save,
    .restore = restore,
    .thaw = thaw,
};

int virtio_rng_init(struct virtio_rng *r, const struct guest_memory *mem, uint64_t rate,
                    uint64_t burst)
{
    memset(r, 0, sizeof(*r));
    r->timer_fd = -1;
    token_bucket_init(&r->bucket, rate, burst);
    if (virtq_chain_alloc(&r->chain, RNG_QUEUE_SIZE) < 0)
        return -1;
    r->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (r->timer_fd < 0)
        return error_errno("rng: timerfd");
    return virtio_dev_init(&r->dev, "rng", VIRTIO_ID_RNG, 0, 1, RNG_QUEUE_SIZE, 0, &rng_ops, r,
                           mem);
}

void virtio_rng_destroy(struct virtio_rng *r)
{
    virtio_dev_destroy(&r->dev);
    if (r->timer_fd >= 0)
        close(r->timer_fd);
    virtq_chain_free(&r->chain);
}
