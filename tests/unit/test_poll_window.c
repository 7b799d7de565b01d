/* The I/O threads' polling window (virtio/poll_window.h): fixed and adaptive, on a clock
 * given here. */
#include "suites.h"
#include "virtio/poll_window.h"

START_TEST(off_never_polls)
{
    struct poll_window w;
    poll_window_init(&w, 0, true);
    ck_assert(!poll_window_on(&w));
    poll_window_start(&w, 1000);
    ck_assert(!w.polling);
    ck_assert(!poll_window_keep(&w, 1000, false));
}
END_TEST

START_TEST(fixed_window)
{
    struct poll_window w;
    poll_window_init(&w, 50, false);
    ck_assert_uint_eq(w.window_ns, 50000);
    poll_window_start(&w, 1000000);
    ck_assert(w.polling);
    ck_assert(poll_window_keep(&w, 1049999, false));
    poll_window_work(&w, 1040000); /* work restarts the window */
    ck_assert(poll_window_keep(&w, 1089999, false));
    ck_assert(!poll_window_keep(&w, 1090000, false));
    ck_assert(!w.polling);
    /* A fixed window never changes, whenever kicks come. */
    poll_window_start(&w, 1090001);
    ck_assert_uint_eq(w.window_ns, 50000);
    ck_assert_uint_eq(w.grows + w.shrinks, 0);
    /* Bounded to POLL_WINDOW_MAX_US. */
    poll_window_init(&w, POLL_WINDOW_MAX_US + 1, false);
    ck_assert_uint_eq(w.bound_ns, POLL_WINDOW_MAX_US * 1000ull);
}
END_TEST

START_TEST(adaptive_grows_to_catch_kicks)
{
    struct poll_window w;
    poll_window_init(&w, 1000, true);
    ck_assert_uint_eq(w.window_ns, POLL_WINDOW_MIN_NS);
    uint64_t t = 1000000;
    poll_window_start(&w, t);
    /* The first window closes; a kick 30 us later would have been caught by a window of 38 us
     * or more: it doubles up to 64 us. */
    t += POLL_WINDOW_MIN_NS;
    ck_assert(!poll_window_keep(&w, t, false));
    ck_assert_uint_eq(w.window_ns, POLL_WINDOW_MIN_NS); /* already the least */
    t += 30000;
    poll_window_start(&w, t);
    ck_assert_uint_eq(w.window_ns, 64000);
    ck_assert_uint_eq(w.grows, 1);
    /* Work every 40 us is now caught without a kick, and the window stays. */
    for (int i = 0; i < 10; i++) {
        t += 40000;
        ck_assert(poll_window_keep(&w, t - 1, false));
        poll_window_work(&w, t);
    }
    ck_assert_uint_eq(w.window_ns, 64000);
    /* A kick further after the window than the bound allows does not grow it. */
    t += 64000;
    ck_assert(!poll_window_keep(&w, t, false));
    ck_assert_uint_eq(w.window_ns, 32000); /* closed without work: halved */
    t += 2000000;
    poll_window_start(&w, t);
    ck_assert_uint_eq(w.window_ns, 32000);
    /* Never beyond the bound. */
    t += 32000;
    ck_assert(!poll_window_keep(&w, t, false));
    t += 990000;
    poll_window_start(&w, t);
    ck_assert_uint_le(w.window_ns, 1000000);
}
END_TEST

START_TEST(adaptive_shrinks_when_idle)
{
    struct poll_window w;
    poll_window_init(&w, 1000, true);
    w.window_ns = 1000000;
    uint64_t t = 5000000;
    for (int i = 0; i < 20; i++) {
        poll_window_start(&w, t);
        t += w.window_ns;
        ck_assert(!poll_window_keep(&w, t, false));
        t += 10000000; /* idle long after each window: nothing to catch */
    }
    ck_assert_uint_eq(w.window_ns, POLL_WINDOW_MIN_NS);
    ck_assert_uint_eq(w.grows, 0);
}
END_TEST

START_TEST(pending_keeps_to_the_bound)
{
    struct poll_window w;
    poll_window_init(&w, 100, true);
    poll_window_start(&w, 1000);
    /* Requests in flight: polling goes on past the window, up to the bound, and the window is
     * not shrunk for it. */
    ck_assert(poll_window_keep(&w, 1000 + 99999, true));
    ck_assert(!poll_window_keep(&w, 1000 + 100000, true));
    ck_assert_uint_eq(w.window_ns, POLL_WINDOW_MIN_NS);
    ck_assert_uint_eq(w.shrinks, 0);
}
END_TEST

START_TEST(resume_and_stop)
{
    struct poll_window w;
    poll_window_init(&w, 100, true);
    poll_window_start(&w, 1000);
    ck_assert(!poll_window_keep(&w, 1000 + POLL_WINDOW_MIN_NS, false));
    /* A request that raced with the switch: polling resumes, the window unchanged. */
    poll_window_resume(&w, 1000 + POLL_WINDOW_MIN_NS + 1);
    ck_assert(w.polling);
    ck_assert_uint_eq(w.window_ns, POLL_WINDOW_MIN_NS);
    ck_assert_uint_eq(w.grows, 0);
    poll_window_stop(&w, 50000);
    ck_assert(!w.polling);
    ck_assert(!poll_window_keep(&w, 50001, false));
}
END_TEST

Suite *poll_window_suite(void)
{
    Suite *s = suite_create("poll_window");
    TCase *tc = tcase_create("window");
    tcase_add_test(tc, off_never_polls);
    tcase_add_test(tc, fixed_window);
    tcase_add_test(tc, adaptive_grows_to_catch_kicks);
    tcase_add_test(tc, adaptive_shrinks_when_idle);
    tcase_add_test(tc, pending_keeps_to_the_bound);
    tcase_add_test(tc, resume_and_stop);
    suite_add_tcase(s, tc);
    return s;
}
