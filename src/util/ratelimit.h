/* A token bucket: `rate` tokens per second, at most `burst` saved up. A
 * rate of 0 means unlimited. Used for bytes and for operations. */
#ifndef EMBER_UTIL_RATELIMIT_H
#define EMBER_UTIL_RATELIMIT_H

#include "util/clock.h"

#include <stdbool.h>
#include <stdint.h>

/* A limit in Firecracker's terms: `size` tokens refilled every
 * `refill_ms`, plus a one-time burst. A size of 0 means unlimited. */
struct token_bucket_config {
    uint64_t size;
    uint64_t one_time_burst;
    uint64_t refill_ms;
};

/* Limits for a device: bytes and requests. */
struct rate_limit_config {
    struct token_bucket_config bandwidth;
    struct token_bucket_config ops;
};

struct token_bucket {
    uint64_t rate;  /* tokens per second; 0 = unlimited */
    uint64_t burst; /* bucket size */
    uint64_t tokens;
    uint64_t last_ns;
};

void token_bucket_init(struct token_bucket *b, uint64_t rate, uint64_t burst);
/* Firecracker's terms: `size` tokens refilled every `refill_ms`, plus a
 * one-time burst spent before the refill rate applies. */
void token_bucket_init_fc(struct token_bucket *b, uint64_t size, uint64_t one_time_burst,
                          uint64_t refill_ms);
bool token_bucket_unlimited(const struct token_bucket *b);
/* Takes up to want tokens; returns how many were taken. */
uint64_t token_bucket_take(struct token_bucket *b, uint64_t want);
/* Nanoseconds until at least `want` tokens (capped at burst) are there. */
uint64_t token_bucket_wait_ns(struct token_bucket *b, uint64_t want);

/* A bucket's budget, for snapshots: its limits (to check against the configuration of the
 * bucket it is restored onto), the whole tokens it holds and the refill time it has earned
 * towards the next token, as of one moment. Relative values only: another process's or
 * host's monotonic clock has another origin. */
struct token_bucket_state {
    uint64_t rate, burst;
    uint64_t tokens;
    uint64_t credit_ns;
};
void token_bucket_save(const struct token_bucket *b, struct token_bucket_state *s);
/* Onto a bucket made from the same limits: the bucket goes on from the saved budget (no
 * refill for the time in between, no wait for time already earned). Refuses limits other
 * than the bucket's, more tokens than the bucket could ever hold (its size, or what it
 * started with when a one-time burst came on top) and more credit than one token takes. */
int token_bucket_restore(struct token_bucket *b, const struct token_bucket_state *s);

struct snapshot_writer;
struct snapshot_cursor;
/* The state above as four u64 fields of a snapshot section (docs/snapshot-format.md). */
void token_bucket_snapshot_save(struct snapshot_writer *w, const struct token_bucket *b);
/* Reads them back and restores b; `what` names the bucket in the error message. */
int token_bucket_snapshot_restore(struct snapshot_cursor *c, struct token_bucket *b,
                                  const char *what);

#endif
