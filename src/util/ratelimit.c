#include "util/ratelimit.h"

#include <time.h>

uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void token_bucket_init(struct token_bucket *b, uint64_t rate, uint64_t burst)
{
    b->rate = rate;
    b->burst = burst ? burst : rate;
    b->tokens = b->burst;
    b->last_ns = monotonic_ns();
}

bool token_bucket_unlimited(const struct token_bucket *b)
{
    return b->rate == 0;
}

static void refill(struct token_bucket *b)
{
    uint64_t now = monotonic_ns();
    if (b->tokens >= b->burst) {
        /* Full (or still spending a one-time burst): time passes unused. */
        b->last_ns = now;
        return;
    }
    uint64_t elapsed = now - b->last_ns;
    /* Whole tokens only; keep the remainder of time for the next refill. */
    unsigned __int128 earned = (unsigned __int128)elapsed * b->rate / 1000000000ULL;
    if (earned == 0)
        return;
    uint64_t used_ns = (uint64_t)(earned * 1000000000ULL / b->rate);
    b->last_ns += used_ns;
    if (earned >= b->burst - b->tokens) {
        b->tokens = b->burst;
        b->last_ns = now;
    } else {
        b->tokens += (uint64_t)earned;
    }
}

void token_bucket_init_fc(struct token_bucket *b, uint64_t size, uint64_t one_time_burst,
                          uint64_t refill_ms)
{
    if (size == 0 || refill_ms == 0) {
        token_bucket_init(b, 0, 0);
        return;
    }
    unsigned __int128 rate = (unsigned __int128)size * 1000 / refill_ms;
    token_bucket_init(b, rate ? (uint64_t)rate : 1, size);
    b->tokens += one_time_burst;
}

uint64_t token_bucket_take(struct token_bucket *b, uint64_t want)
{
    if (b->rate == 0)
        return want;
    refill(b);
    uint64_t got = want < b->tokens ? want : b->tokens;
    b->tokens -= got;
    return got;
}

uint64_t token_bucket_wait_ns(struct token_bucket *b, uint64_t want)
{
    if (b->rate == 0)
        return 0;
    refill(b);
    if (want > b->burst)
        want = b->burst;
    if (b->tokens >= want)
        return 0;
    uint64_t missing = want - b->tokens;
    return (uint64_t)((unsigned __int128)missing * 1000000000ULL / b->rate) + 1;
}
