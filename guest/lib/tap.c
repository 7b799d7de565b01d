/* TAP output: "1..N", then "ok N - name" / "not ok N - name"; diagnostics start with '#'. */
#include "guest.h"

static void vdiag(const char *fmt, va_list args)
{
    printf("# ");
    vprintf(fmt, args);
    printf("\n");
}

void diag(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vdiag(fmt, args);
    va_end(args);
}

static const char *skip_reason;

enum test_result skip(const char *reason)
{
    skip_reason = reason;
    return TEST_SKIP;
}

_Noreturn void bail_out(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    printf("Bail out! ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    debug_exit(1);
}

_Noreturn void tap_run(const struct guest_test *tests, size_t count)
{
    bool all_passed = true;
    printf("1..%zu\n", count);
    for (size_t i = 0; i < count; i++) {
        skip_reason = "";
        enum test_result result = tests[i].run();
        if (result == TEST_SKIP)
            printf("ok %zu - %s # SKIP %s\n", i + 1, tests[i].name, skip_reason);
        else
            printf("%sok %zu - %s\n", result == TEST_PASS ? "" : "not ", i + 1, tests[i].name);
        all_passed &= result != TEST_FAIL;
    }
    guest_idle_if_asked();
    debug_exit(all_passed ? 0 : 1);
}
