#include "suites.h"
#include "util/error.h"
#include "util/ratelimit.h"

#include <string.h>
#include <unistd.h>

START_TEST(bucket_spends_and_refills)
{
    struct token_bucket b;
    token_bucket_init(&b, 1000, 100); /* 1000 tokens/s, bucket of 100 */
    ck_assert_uint_eq(token_bucket_take(&b, 150), 100);
    ck_assert_uint_eq(token_bucket_take(&b, 1), 0);
    uint64_t wait = token_bucket_wait_ns(&b, 10);
    ck_assert_uint_gt(wait, 5000000); /* about 10 ms for 10 tokens */
    ck_assert_uint_le(wait, 10000001);
    usleep(30000);
    uint64_t got = token_bucket_take(&b, 1000);
    ck_assert_uint_ge(got, 25);
    ck_assert_uint_le(got, 100); /* never more than the bucket holds */
}
END_TEST

START_TEST(unlimited_and_firecracker_terms)
{
    struct token_bucket b;
    token_bucket_init(&b, 0, 0);
    ck_assert(token_bucket_unlimited(&b));
    ck_assert_uint_eq(token_bucket_take(&b, 1ULL << 40), 1ULL << 40);
    ck_assert_uint_eq(token_bucket_wait_ns(&b, 1ULL << 40), 0);
    /* 4096 bytes every 100 ms with a one-time burst of 8192. */
    token_bucket_init_fc(&b, 4096, 8192, 100);
    ck_assert_uint_eq(b.rate, 40960);
    ck_assert_uint_eq(token_bucket_take(&b, 100000), 4096 + 8192);
    ck_assert_uint_eq(token_bucket_take(&b, 1), 0);
    token_bucket_init_fc(&b, 0, 5, 100); /* size 0: no limit */
    ck_assert(token_bucket_unlimited(&b));
}
END_TEST

/* A bucket with N tokens left restores with N, plus at most what it earns from the restore
 * on: the time between save and restore does not refill it. */
START_TEST(snapshot_keeps_the_budget)
{
    struct token_bucket b, r;
    token_bucket_init(&b, 1000, 1000);
    ck_assert_uint_eq(token_bucket_take(&b, 600), 600);
    struct token_bucket_state s;
    token_bucket_save(&b, &s);
    ck_assert_uint_ge(s.tokens, 400);
    ck_assert_uint_le(s.tokens, 1000);
    usleep(100000); /* 100 tokens' worth that must not appear */
    token_bucket_init(&r, 1000, 1000);
    uint64_t t0 = monotonic_ns();
    ck_assert_int_eq(token_bucket_restore(&r, &s), 0);
    uint64_t got = token_bucket_take(&r, 1000);
    uint64_t earned = (monotonic_ns() - t0) / 1000000 + 2; /* 1000/s: 1 per ms, and credit */
    ck_assert_uint_ge(got, s.tokens);
    ck_assert_uint_le(got, s.tokens + earned);
    ck_assert_uint_lt(got, 1000); /* a fresh bucket would be full */
}
END_TEST

/* The time earned towards the next token carries over: 1 token/s, 600 ms into the wait for
 * it when saved, the restored bucket gives it about 400 ms later, not 1 s. */
START_TEST(snapshot_keeps_the_time_base)
{
    struct token_bucket b, r;
    token_bucket_init(&b, 1, 1);
    ck_assert_uint_eq(token_bucket_take(&b, 1), 1);
    usleep(600000);
    struct token_bucket_state s;
    token_bucket_save(&b, &s);
    ck_assert_uint_eq(s.tokens, 0);
    ck_assert_uint_ge(s.credit_ns, 600000000ULL);
    ck_assert_uint_le(s.credit_ns, 1000000001ULL);
    token_bucket_init(&r, 1, 1);
    uint64_t t0 = monotonic_ns();
    ck_assert_int_eq(token_bucket_restore(&r, &s), 0);
    uint64_t due = 1000000000ULL - s.credit_ns, t1 = 0;
    while (monotonic_ns() - t0 < 2000000000ULL) {
        if (token_bucket_take(&r, 1)) {
            t1 = monotonic_ns();
            break;
        }
        usleep(2000);
    }
    ck_assert_uint_ne(t1, 0);
    ck_assert_uint_ge(t1 - t0, due); /* not refilled at once, never early */
    /* A bucket that lost its credit would wait a whole second from the restore. */
    ck_assert_uint_lt(t1 - t0, 950000000ULL);
}
END_TEST

START_TEST(snapshot_refuses_what_the_bucket_cannot_hold)
{
    struct token_bucket b;
    struct token_bucket_state s;
    token_bucket_init_fc(&b, 4096, 8192, 100); /* 40960/s, bucket 4096, burst on top */
    token_bucket_save(&b, &s);
    ck_assert_uint_eq(s.tokens, 4096 + 8192);
    struct token_bucket fresh;
    token_bucket_init_fc(&fresh, 4096, 8192, 100);
    ck_assert_int_eq(token_bucket_restore(&fresh, &s), 0);

    struct token_bucket_state bad = s;
    bad.tokens = 4096 + 8192 + 1;
    token_bucket_init_fc(&fresh, 4096, 8192, 100);
    ck_assert_int_eq(token_bucket_restore(&fresh, &bad), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "tokens in a bucket"));
    /* Without the one-time burst configured, the bucket's size is the most. */
    token_bucket_init_fc(&fresh, 4096, 0, 100);
    ck_assert_int_eq(token_bucket_restore(&fresh, &s), -1);
    bad = s;
    bad.credit_ns = 1000000; /* a token takes 24 us */
    token_bucket_init_fc(&fresh, 4096, 8192, 100);
    ck_assert_int_eq(token_bucket_restore(&fresh, &bad), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "towards the next token"));
    /* Other limits than configured. */
    bad = s;
    bad.rate = 1000;
    token_bucket_init_fc(&fresh, 4096, 8192, 100);
    ck_assert_int_eq(token_bucket_restore(&fresh, &bad), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "not the 40960 per second"));
    token_bucket_init(&fresh, 0, 0);
    ck_assert_int_eq(token_bucket_restore(&fresh, &s), -1);
    /* Unlimited: no budget to carry. */
    struct token_bucket u;
    token_bucket_init(&u, 0, 0);
    token_bucket_save(&u, &s);
    ck_assert_int_eq(token_bucket_restore(&fresh, &s), 0);
    s.tokens = 1;
    ck_assert_int_eq(token_bucket_restore(&fresh, &s), -1);
}
END_TEST

Suite *ratelimit_suite(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *t = tcase_create("token bucket");
    tcase_add_test(t, bucket_spends_and_refills);
    tcase_add_test(t, unlimited_and_firecracker_terms);
    tcase_add_test(t, snapshot_keeps_the_budget);
    tcase_add_test(t, snapshot_keeps_the_time_base);
    tcase_add_test(t, snapshot_refuses_what_the_bucket_cannot_hold);
    suite_add_tcase(s, t);
    return s;
}
