/* virtio-blk (virtio 1.2, 5.2) on a raw image: reads, writes, flush,
 * get-id, discard and write-zeroes, one or more queues, served on the
 * device's iothread through the block backend (io_uring or synchronous). */
#ifndef EMBER_VIRTIO_BLK_H
#define EMBER_VIRTIO_BLK_H

#include "backends/block.h"
#include "util/latency.h"
#include "util/ratelimit.h"
#include "virtio/device.h"
#include "virtio/poll_window.h"

#define VIRTIO_BLK_ID_BYTES   20
#define VIRTIO_BLK_MAX_QUEUES 16

struct blk_options {
    const char *path;
    const char *id; /* serial the guest reads with GET_ID; default: drive name */
    bool readonly;
    bool direct; /* cache=none: O_DIRECT, host page cache bypassed */
    bool unsafe; /* flushes not offered: the host cache may lose data */
    unsigned queues;
    enum blk_engine engine; /* default: io_uring unless synchronous I/O is faster */
    unsigned poll_us;       /* after work, poll the rings this long before sleeping */
    bool poll_adaptive;     /* poll_us is the bound of an adaptive window (poll_window.h) */
    struct rate_limit_config rate_limit;
};

struct blk_request;
struct blk_queue;

/* Reads and writes refused for going beyond what the device offers (see blk.c). */
enum blk_refusal {
    BLK_REFUSE_TOO_LONG,     /* more data than seg_max x size_max */
    BLK_REFUSE_SEGMENTS,     /* more data segments than seg_max */
    BLK_REFUSE_SEGMENT_SIZE, /* a segment longer than size_max */
    BLK_REFUSALS
};

struct virtio_blk {
    struct virtio_dev dev;
    struct blk_options opts;
    char serial[VIRTIO_BLK_ID_BYTES];
    uint64_t capacity; /* 512-byte sectors */
    struct blk_backend backend;
    struct event_handler *completion_handler;
    struct token_bucket bytes_bucket, ops_bucket;
    int throttle_fd; /* timerfd: tokens will be there */
    struct event_handler *throttle_handler;
    bool throttled;
    struct poll_window poll; /* kicks off while it polls: the iothread watches the rings */
    int kick_timer_fd;       /* timerfd: kicks back on if completions are slow */
    struct event_handler *kick_timer_handler;
    bool kick_timer_armed;
    bool frozen; /* a snapshot is being taken: nothing is taken from the rings */
    struct blk_queue *queues;
    uint8_t config[60];
    struct log_limit log_io_error, log_refusal[BLK_REFUSALS];
    /* Counters (iothread). */
    uint64_t reads, writes, read_bytes, write_bytes, flushes, discards, errors, unsupported;
    uint64_t throttle_events, poll_hits, poll_rounds, merges;
    uint64_t poll_races;         /* work found right after kicks were asked for again */
    uint64_t completion_wakeups; /* the backend's eventfd fired (edge-triggered: once per batch) */
    uint64_t refused[BLK_REFUSALS]; /* also counted in errors */
    uint64_t throttle_wakeups;      /* the rate limiter's timer fired */
    uint64_t empty_kicks;           /* a notification that found its queue empty */
    uint64_t slots_full;            /* requests left in the ring: every slot in flight */
    /* PATCH /drives (main thread): backing files changed, and changes refused. */
    uint64_t updates, update_fails;
    /* Reads and writes, from the ring to their completion (iothread). */
    struct latency_stats read_time, write_time;
};

int virtio_blk_init(struct virtio_blk *b, const char *name, const struct blk_options *opts,
                    const struct guest_memory *mem);
void virtio_blk_destroy(struct virtio_blk *b);
/* Points the running device at another image (any thread but its own):
 * in-flight requests finish on the old one, the capacity and the
 * configuration space follow the new one, and the driver gets a
 * configuration interrupt. The device keeps the path pointer. */
int virtio_blk_change_backing(struct virtio_blk *b, const char *path);

/* New rate limits for a running device (from any thread). */
void virtio_blk_change_limits(struct virtio_blk *b, const struct rate_limit_config *rl);

#endif
