/* The monotonic clock, for timeouts, rates and latencies. Read through the vDSO: no system
 * call, so every thread may read it whatever its seccomp filter. */
#ifndef EMBER_UTIL_CLOCK_H
#define EMBER_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t monotonic_us(void)
{
    return monotonic_ns() / 1000;
}

#endif
