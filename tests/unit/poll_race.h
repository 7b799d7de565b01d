/* What the polling race tests of the devices share (test_virtio_blk.c, test_virtio_net.c,
 * test_virtio_vsock.c): a driver that kicks only when EVENT_IDX says so, and gaps between its
 * requests drawn around the device's polling window. */
#ifndef EMBER_TESTS_UNIT_POLL_RACE_H
#define EMBER_TESTS_UNIT_POLL_RACE_H

#include "util/clock.h"

#include <stdbool.h>
#include <stdint.h>

/* EVENT_IDX (virtio 1.2, 2.7.10): after moving the available index from old_idx to new_idx,
 * the driver kicks only if it passed the index the device asked to be kicked at (event). */
static inline bool race_driver_needs_kick(uint16_t event, uint16_t new_idx, uint16_t old_idx)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

/* Busy-waits ns (usleep is far coarser than a poll window). */
static inline void race_spin_ns(uint64_t ns)
{
    uint64_t end = monotonic_ns() + ns;
    while (monotonic_ns() < end)
        ;
}

/* The next of a fixed pseudo-random sequence (seeded by the caller), 31 bits. */
static inline uint64_t race_next(uint64_t *seed)
{
    *seed = *seed * 6364136223846793005u + 1442695040888963407u;
    return *seed >> 33;
}

#endif
