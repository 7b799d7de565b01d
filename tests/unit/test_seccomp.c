#include "sandbox/filters.h"
#include "sandbox/policy.h"
#include "sandbox/rules.h"
#include "sandbox/seccomp.h"
#include "suites.h"
#include "util/error.h"
#include "vmm/exit_status.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the README's table follows the filters ------------------------------ */

/* "| `KIND` | ... | N (M) | ..." in README.md: the kind's row of the table
 * of filters; N system calls, M rules. */
static bool readme_counts(const char *kind, unsigned *syscalls, unsigned *rules)
{
    FILE *f = fopen("README.md", "re");
    ck_assert_msg(f, "README.md not found: run the unit tests from the repository's top");
    char line[1024], want[64];
    snprintf(want, sizeof(want), "| `%s` |", kind);
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        if (strncmp(line, want, strlen(want)) != 0)
            continue;
        /* The third column. */
        char *col = line;
        for (int bars = 0; bars < 3 && col; bars++)
            col = strchr(col + 1, '|');
        found = col && sscanf(col + 1, " %u (%u)", syscalls, rules) == 2;
    }
    fclose(f);
    return found;
}

START_TEST(readme_lists_every_filter_size)
{
    for (int k = 0; k < SECCOMP_NKINDS; k++) {
        unsigned s = 0, r = 0;
        const char *name = seccomp_kind_name(k);
        ck_assert_msg(readme_counts(name, &s, &r),
                      "README.md has no row \"| `%s` | ... | SYSCALLS (RULES) |\" in its table of "
                      "seccomp filters",
                      name);
        ck_assert_msg(s == seccomp_builtin_syscalls(k) && r == seccomp_builtin_rules(k),
                      "the %s filter lets %u system calls through with %u rules, the README says "
                      "%u (%u): update the README's table (and say why the filter changed)",
                      name, seccomp_builtin_syscalls(k), seccomp_builtin_rules(k), s, r);
    }
}
END_TEST

START_TEST(builtin_filters_compile)
{
    for (int k = 0; k < SECCOMP_NKINDS; k++) {
        const struct sc_filter *parts[] = {sc_builtin_filter(k)};
        struct sc_program p;
        ck_assert_msg(sc_compile(parts, 1, SCMP_ACT_TRAP, &p) == 0, "%s: %s", seccomp_kind_name(k),
                      error_get());
        ck_assert_uint_gt(p.len, 4);
        sc_program_free(&p);
    }
}
END_TEST

/* ---- enforcement, in a child process ------------------------------------- */

/* Runs fn in a child with stderr in a pipe; returns its wait status and
 * what it wrote. */
static int in_child(void (*fn)(void *), void *arg, char *err, size_t errlen)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], STDERR_FILENO);
        fn(arg);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n < errlen - 1 && (r = read(p[0], err + n, errlen - 1 - n)) > 0)
        n += (size_t)r;
    err[n] = '\0';
    close(p[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return status;
}

static void forbidden_in_stdin_thread(void *arg)
{
    (void)arg;
    bool usage;
    if (seccomp_setup(true, NULL, &usage) < 0)
        _exit(99);
    seccomp_enter(SECCOMP_STDIN, "stdin");
    syscall(SYS_getpgid, 0); /* the console copier never asks for its process group */
    _exit(0);
}

START_TEST(violation_ends_the_process_with_its_status_and_a_line)
{
    char err[1024];
    int status = in_child(forbidden_in_stdin_thread, NULL, err, sizeof(err));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SECCOMP_VIOLATION,
                  "status %#x, stderr: %s", status, err);
    ck_assert_msg(strstr(err, "thread stdin (stdin) made a forbidden system call: getpgid (121)"),
                  "%s", err);
}
END_TEST

static void disabled_allows_everything(void *arg)
{
    (void)arg;
    bool usage;
    if (seccomp_setup(false, NULL, &usage) < 0)
        _exit(99);
    seccomp_enter(SECCOMP_STDIN, "stdin");
    syscall(SYS_getpgid, 0);
    _exit(7);
}

START_TEST(no_seccomp_installs_nothing)
{
    char err[256];
    int status = in_child(disabled_allows_everything, NULL, err, sizeof(err));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 7, "status %#x: %s", status, err);
}
END_TEST

/* ---- policy files -------------------------------------------------------- */

static int compile(const char *text, struct sock_fprog progs[SECCOMP_NKINDS],
                   bool covered[SECCOMP_NKINDS])
{
    return sc_policy_compile(text, strlen(text), progs, covered);
}

static void expect_refused(const char *text, const char *message)
{
    struct sock_fprog progs[SECCOMP_NKINDS];
    bool covered[SECCOMP_NKINDS];
    ck_assert_msg(compile(text, progs, covered) < 0, "accepted: %s", text);
    ck_assert_msg(strstr(error_get(), message), "for %s: got \"%s\", expected \"%s\"", text,
                  error_get(), message);
}

#define VCPU(rules)                                                                                \
    "{\"vcpu\": {\"default_action\": \"allow\", \"filter_action\": \"trap\", "                     \
    "\"filter\": [" rules "]}}"

START_TEST(policy_refusals_say_what_is_wrong)
{
    expect_refused("", "not a JSON policy");
    expect_refused("\x01\x02\x00\x03 binary", "not the binary filters");
    expect_refused("{\"vcpu\": ", "not valid JSON");
    expect_refused("[]", "not a JSON policy");
    expect_refused("{\"gpu\": {}}", "unknown thread category \"gpu\"");
    expect_refused("{\"vcpu\": {\"default_action\": \"allow\", \"filter_action\": \"trap\"}}",
                   "needs default_action, filter_action and a filter list");
    expect_refused("{\"vcpu\": {\"default_action\": \"deny\", \"filter_action\": \"trap\", "
                   "\"filter\": []}}",
                   "unknown action \"deny\"");
    expect_refused("{\"vcpu\": {\"default_action\": {\"errno\": 70000}, \"filter_action\": "
                   "\"trap\", \"filter\": []}}",
                   "\"errno\" takes a number from 0 to 4095");
    expect_refused(VCPU("{\"syscall\": \"no_such_call\"}"),
                   "rule 1: \"no_such_call\" is not a system call on x86_64");
    expect_refused(VCPU("{\"syscall\": \"mmap2\"}"), "is not a system call on x86_64");
    expect_refused(VCPU("{\"syscall\": \"read\", \"arg\": []}"), "unknown field \"arg\"");
    expect_refused(VCPU("{\"syscall\": \"ioctl\", \"args\": [{\"index\": 6, \"type\": \"dword\", "
                        "\"op\": \"eq\", \"val\": 1}]}"),
                   "\"index\" must be an argument number from 0 to 5");
    expect_refused(VCPU("{\"syscall\": \"ioctl\", \"args\": [{\"index\": 1, \"type\": \"byte\", "
                        "\"op\": \"eq\", \"val\": 1}]}"),
                   "\"type\" must be \"dword\" or \"qword\"");
    expect_refused(VCPU("{\"syscall\": \"ioctl\", \"args\": [{\"index\": 1, \"type\": \"dword\", "
                        "\"op\": \"like\", \"val\": 1}]}"),
                   "unknown operator \"like\"");
    expect_refused(VCPU("{\"syscall\": \"ioctl\", \"args\": [{\"index\": 1, \"type\": \"dword\", "
                        "\"op\": \"eq\", \"val\": 4294967296}]}"),
                   "\"val\" must be an integer from 0 to 4294967295");
    expect_refused(VCPU("{\"syscall\": \"ioctl\", \"args\": [{\"index\": 1, \"type\": \"qword\", "
                        "\"op\": \"eq\", \"val\": -1}]}"),
                   "\"val\" must be an integer");
    expect_refused("{\"vcpu\": {\"default_action\": \"allow\", \"filter_action\": \"trap\", "
                   "\"filter\": []}, \"vcpu\": {\"default_action\": \"allow\", "
                   "\"filter_action\": \"trap\", \"filter\": []}}",
                   "given twice");
}
END_TEST

START_TEST(policy_categories_map_onto_kinds)
{
    struct sock_fprog progs[SECCOMP_NKINDS];
    bool covered[SECCOMP_NKINDS];
    const char *text = "{\"vmm\": {\"default_action\": \"trap\", \"filter_action\": \"allow\", "
                       "\"filter\": [{\"syscall\": \"read\"}]},"
                       " \"vcpu\": {\"default_action\": \"trap\", \"filter_action\": \"allow\", "
                       "\"filter\": [{\"syscall\": \"ioctl\", \"comment\": \"KVM_RUN\", \"args\": "
                       "[{\"index\": 1, \"type\": \"dword\", \"op\": \"eq\", \"val\": 44672}]}]},"
                       " \"slirp\": {\"default_action\": \"allow\", \"filter_action\": "
                       "{\"errno\": 1}, \"filter\": []}}";
    ck_assert_msg(compile(text, progs, covered) == 0, "%s", error_get());
    bool want[SECCOMP_NKINDS] = {
        [SECCOMP_MAIN] = true,      [SECCOMP_VCPU] = true,    [SECCOMP_BLK] = true,
        [SECCOMP_NET] = true,       [SECCOMP_CONSOLE] = true, [SECCOMP_RNG] = true,
        [SECCOMP_VSOCK] = true,     [SECCOMP_PMEM] = true,    [SECCOMP_SLIRP] = true,
        [SECCOMP_VHOST_USER] = true};
    for (int k = 0; k < SECCOMP_NKINDS; k++)
        ck_assert_msg(covered[k] == want[k], "%s covered %d", seccomp_kind_name(k), covered[k]);
    sc_policy_free(progs, covered);
}
END_TEST

/* The child installs progs[SECCOMP_VCPU] and reports what close() returned
 * for a few descriptors, as a string of errno values. */
struct policy_probe {
    const char *text;
};

static void probe_close(void *arg)
{
    const struct policy_probe *p = arg;
    struct sock_fprog progs[SECCOMP_NKINDS];
    bool covered[SECCOMP_NKINDS];
    if (compile(p->text, progs, covered) < 0 || !covered[SECCOMP_VCPU]) {
        fprintf(stderr, "compile: %s", error_get());
        _exit(98);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &progs[SECCOMP_VCPU]) < 0)
        _exit(97);
    /* The kernel takes the lower 32 bits of close()'s argument: the third
     * is descriptor 1000 with something above. */
    const unsigned long fds[] = {1000, 1001, (1ul << 32) + 1000, 5000};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        long r = syscall(SYS_close, fds[i]);
        fprintf(stderr, "%d ", r < 0 ? errno : 0);
    }
    _exit(0);
}

static void expect_close_errnos(const char *text, const char *want)
{
    struct policy_probe p = {text};
    char err[256];
    int status = in_child(probe_close, &p, err, sizeof(err));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x: %s", status, err);
    ck_assert_msg(!strcmp(err, want), "policy %s: close() gave \"%s\", expected \"%s\"", text, err,
                  want);
}

#define CLOSE_RULE_T(type, op, val)                                                                \
    "{\"vcpu\": {\"default_action\": \"allow\", \"filter_action\": {\"errno\": 99}, \"filter\": "  \
    "[{\"syscall\": \"close\", \"args\": [{\"index\": 0, \"type\": \"" type "\", \"op\": " op      \
    ", \"val\": " val "}]}]}}"
#define CLOSE_RULE(op, val) CLOSE_RULE_T("dword", op, val)

START_TEST(policy_conditions_compare_as_firecracker_says)
{
    /* EBADF (9) when the rule does not match, 99 when it does. "eq" on a
     * dword looks at the lower 32 bits only (as Firecracker's does), the
     * other operators at all 64. */
    expect_close_errnos(CLOSE_RULE("\"eq\"", "1000"), "99 9 99 9 ");
    expect_close_errnos(CLOSE_RULE_T("qword", "\"eq\"", "1000"), "99 9 9 9 ");
    expect_close_errnos(CLOSE_RULE("\"ne\"", "1000"), "9 99 99 99 ");
    expect_close_errnos(CLOSE_RULE("\"gt\"", "1000"), "9 99 99 99 ");
    expect_close_errnos(CLOSE_RULE("\"ge\"", "1001"), "9 99 99 99 ");
    expect_close_errnos(CLOSE_RULE("\"lt\"", "1001"), "99 9 9 9 ");
    expect_close_errnos(CLOSE_RULE("\"le\"", "1001"), "99 99 9 9 ");
    /* 1000 = 0x3e8, 1001 = 0x3e9, 5000 = 0x1388: bit 3 set in all; bit 32 in the third. */
    expect_close_errnos(CLOSE_RULE("{\"masked_eq\": 8}", "8"), "99 99 99 99 ");
    expect_close_errnos(CLOSE_RULE_T("qword", "{\"masked_eq\": 4294967296}", "4294967296"),
                        "9 9 99 9 ");
}
END_TEST

Suite *seccomp_suite(void)
{
    Suite *s = suite_create("seccomp");
    TCase *t = tcase_create("filters");
    tcase_add_test(t, readme_lists_every_filter_size);
    tcase_add_test(t, builtin_filters_compile);
    tcase_add_test(t, violation_ends_the_process_with_its_status_and_a_line);
    tcase_add_test(t, no_seccomp_installs_nothing);
    suite_add_tcase(s, t);
    t = tcase_create("policy");
    tcase_add_test(t, policy_refusals_say_what_is_wrong);
    tcase_add_test(t, policy_categories_map_onto_kinds);
    tcase_add_test(t, policy_conditions_compare_as_firecracker_says);
    suite_add_tcase(s, t);
    return s;
}
