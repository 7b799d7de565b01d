#include "util/ratelimit.h"

#include "snapshot/format.h"
#include "util/error.h"

#include <time.h>

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

/* What the bucket holds at `now`: whole tokens, and the time since the last one it earned
 * (kept towards the next). Changes nothing, so that a snapshot can read it too. */
static void settle(const struct token_bucket *b, uint64_t now, uint64_t *tokens, uint64_t *last_ns)
{
    *tokens = b->tokens;
    *last_ns = b->last_ns;
    if (b->tokens >= b->burst || now < b->last_ns) {
        /* Full (or still spending a one-time burst): time passes unused. */
        *last_ns = now;
        return;
    }
    uint64_t elapsed = now - b->last_ns;
    /* Whole tokens only; keep the remainder of time for the next refill. */
    unsigned __int128 earned = (unsigned __int128)elapsed * b->rate / 1000000000ULL;
    if (earned == 0)
        return;
    if (earned >= b->burst - b->tokens) {
        *tokens = b->burst;
        *last_ns = now;
        return;
    }
    *tokens = b->tokens + (uint64_t)earned;
    *last_ns = b->last_ns + (uint64_t)(earned * 1000000000ULL / b->rate);
}

static void refill(struct token_bucket *b)
{
    settle(b, monotonic_ns(), &b->tokens, &b->last_ns);
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

void token_bucket_save(const struct token_bucket *b, struct token_bucket_state *s)
{
    uint64_t now = monotonic_ns(), last;
    *s = (struct token_bucket_state){.rate = b->rate, .burst = b->burst};
    if (b->rate == 0)
        return; /* unlimited: no budget */
    settle(b, now, &s->tokens, &last);
    s->credit_ns = now - last;
}

int token_bucket_restore(struct token_bucket *b, const struct token_bucket_state *s)
{
    if (s->rate != b->rate || s->burst != b->burst)
        return error_set("a limit of %llu per second with a bucket of %llu, not the %llu per "
                         "second and %llu configured",
                         (unsigned long long)s->rate, (unsigned long long)s->burst,
                         (unsigned long long)b->rate, (unsigned long long)b->burst);
    if (b->rate == 0) {
        if (s->tokens || s->credit_ns)
            return error_set("a budget of %llu tokens for an unlimited bucket",
                             (unsigned long long)s->tokens);
        return 0;
    }
    /* A bucket never holds more than it started with: its size, or a one-time burst on top. */
    uint64_t most = b->tokens > b->burst ? b->tokens : b->burst;
    if (s->tokens > most)
        return error_set("%llu tokens in a bucket that holds at most %llu",
                         (unsigned long long)s->tokens, (unsigned long long)most);
    /* Time is only kept towards one token, which takes 1e9 / rate ns. */
    uint64_t token_ns = 1000000000ULL / b->rate + 1;
    if (s->credit_ns > token_ns)
        return error_set("%llu ns towards the next token, which takes %llu",
                         (unsigned long long)s->credit_ns, (unsigned long long)token_ns);
    uint64_t now = monotonic_ns();
    b->tokens = s->tokens;
    b->last_ns = now > s->credit_ns ? now - s->credit_ns : 0;
    return 0;
}

void token_bucket_snapshot_save(struct snapshot_writer *w, const struct token_bucket *b)
{
    struct token_bucket_state s;
    token_bucket_save(b, &s);
    snapshot_put_u64(w, s.rate);
    snapshot_put_u64(w, s.burst);
    snapshot_put_u64(w, s.tokens);
    snapshot_put_u64(w, s.credit_ns);
}

int token_bucket_snapshot_restore(struct snapshot_cursor *c, struct token_bucket *b,
                                  const char *what)
{
    struct token_bucket_state s;
    if (snapshot_get_u64(c, &s.rate) < 0 || snapshot_get_u64(c, &s.burst) < 0 ||
        snapshot_get_u64(c, &s.tokens) < 0 || snapshot_get_u64(c, &s.credit_ns) < 0)
        return -1;
    if (token_bucket_restore(b, &s) < 0)
        return error_prefix("%s rate limiter", what);
    return 0;
}
