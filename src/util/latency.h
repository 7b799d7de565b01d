/* How long something took, kept as Firecracker's latency aggregates are: the least and the
 * most (0: nothing yet) and the sum, in nanoseconds. One thread records; any thread may read
 * the fields (relaxed loads: a little stale, never torn). */
#ifndef EMBER_UTIL_LATENCY_H
#define EMBER_UTIL_LATENCY_H

#include <stdint.h>

struct latency_stats {
    uint64_t min_ns, max_ns, sum_ns;
};

static inline void latency_record(struct latency_stats *s, uint64_t ns)
{
    if (ns == 0)
        ns = 1; /* 0 means "nothing yet" */
    __atomic_store_n(&s->sum_ns, s->sum_ns + ns, __ATOMIC_RELAXED);
    if (s->min_ns == 0 || ns < s->min_ns)
        __atomic_store_n(&s->min_ns, ns, __ATOMIC_RELAXED);
    if (ns > s->max_ns)
        __atomic_store_n(&s->max_ns, ns, __ATOMIC_RELAXED);
}

#endif
