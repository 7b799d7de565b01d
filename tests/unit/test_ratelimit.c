#include "suites.h"
#include "util/ratelimit.h"

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

Suite *ratelimit_suite(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *t = tcase_create("token bucket");
    tcase_add_test(t, bucket_spends_and_refills);
    tcase_add_test(t, unlimited_and_firecracker_terms);
    suite_add_tcase(s, t);
    return s;
}
