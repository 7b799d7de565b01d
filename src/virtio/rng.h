/* virtio-rng (virtio 1.2, 5.4): bytes from the host's getrandom(), paced
 * by a token bucket so that a guest cannot drain the host's entropy pool
 * or burn a core. */
#ifndef EMBER_VIRTIO_RNG_H
#define EMBER_VIRTIO_RNG_H

#include "util/ratelimit.h"
#include "virtio/device.h"

#define VIRTIO_RNG_DEFAULT_RATE (1u << 20) /* bytes per second */

struct virtio_rng {
    struct virtio_dev dev;
    struct virtq_chain chain;
    bool chain_pending; /* popped, waiting for tokens */
    bool frozen;        /* a snapshot is being taken: nothing is taken from the ring */
    struct token_bucket bucket;
    int timer_fd;
    struct event_handler *timer_handler;
    uint64_t bytes, requests;
    uint64_t host_fails;       /* getrandom() gave less than asked: a request filled short */
    uint64_t limited, wakeups; /* the rate limiter held a request back; its timer fired */
};

/* rate: bytes per second (0 = unlimited); burst: bucket size (0 = rate). */
int virtio_rng_init(struct virtio_rng *r, const struct guest_memory *mem, uint64_t rate,
                    uint64_t burst);
void virtio_rng_destroy(struct virtio_rng *r);

#endif
