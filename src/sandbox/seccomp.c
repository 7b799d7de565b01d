#include "sandbox/seccomp.h"

#include "sandbox/filters.h"
#include "sandbox/policy.h"
#include "util/error.h"
#include "util/log.h"
#include "virtio/device.h"
#include "vmm/exit_status.h"

#include <errno.h>
#include <malloc.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

/* builtin_bpf[kind] and syscall_names[nr], made by bpfgen at build time. */
#include "seccomp_bpf.h"

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1 /* si_code of a SIGSYS raised by a filter */
#endif

static struct {
    bool enabled;
    struct sock_fprog progs[SECCOMP_NKINDS];
    int metrics_fd;
    /* The teardown helper: its stack names a violation as its own, and it
     * hands the ending of the process to ember's main thread. */
    uintptr_t helper_stack, helper_stack_size;
    int ember_pid;
    int helper_violation;
} state = {.metrics_fd = -1};

static uint64_t faults;

/* The kind and name of the calling thread, set when it installs its
 * filter; read by the SIGSYS handler. */
static __thread const char *thread_kind;
static __thread char thread_name[16];

enum seccomp_kind seccomp_kind_of_device(uint32_t virtio_device_id)
{
    switch (virtio_device_id) {
    case VIRTIO_ID_BLOCK:
        return SECCOMP_BLK;
    case VIRTIO_ID_NET:
        return SECCOMP_NET;
    case VIRTIO_ID_CONSOLE:
        return SECCOMP_CONSOLE;
    case VIRTIO_ID_RNG:
        return SECCOMP_RNG;
    case VIRTIO_ID_VSOCK:
        return SECCOMP_VSOCK;
    case VIRTIO_ID_PMEM:
        return SECCOMP_PMEM;
    default:
        return SECCOMP_NONE;
    }
}

bool seccomp_enabled(void)
{
    return state.enabled;
}

uint64_t seccomp_fault_count(void)
{
    return __atomic_load_n(&faults, __ATOMIC_RELAXED);
}

void seccomp_set_metrics_fd(int fd)
{
    __atomic_store_n(&state.metrics_fd, fd, __ATOMIC_RELAXED);
}

unsigned seccomp_builtin_syscalls(enum seccomp_kind kind)
{
    const struct sc_filter *f = sc_builtin_filter(kind);
    return f ? sc_allowed_syscalls(f) : 0;
}

unsigned seccomp_builtin_rules(enum seccomp_kind kind)
{
    const struct sc_filter *f = sc_builtin_filter(kind);
    return f ? sc_allowed_rules(f) : 0;
}

/* ---- the violation: a SIGSYS on the thread that made the call ------------ */

/* Only what is async-signal-safe from here on: the handler formats into a
 * buffer on its stack and writes it with write(2). */
struct line {
    char buf[512];
    size_t len;
};

static void put(struct line *l, const char *s)
{
    while (*s && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = *s++;
}

static void put_uint(struct line *l, uint64_t v, unsigned base)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (base == 16)
        put(l, "0x");
    while (n > 0 && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = digits[--n];
}

static void write_all(int fd, const struct line *l)
{
    if (fd >= 0) {
        ssize_t ignored = write(fd, l->buf, l->len);
        (void)ignored;
    }
}

/* Firecracker's metrics carry seccomp.num_faults; the violation's own line
 * is the last the file gets. */
static void write_metrics_line(void)
{
    int fd = __atomic_load_n(&state.metrics_fd, __ATOMIC_RELAXED);
    if (fd < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct line l = {.len = 0};
    put(&l, "{\"utc_timestamp_ms\":");
    put_uint(&l, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000, 10);
    put(&l, ",\"seccomp\":{\"num_faults\":");
    put_uint(&l, __atomic_load_n(&faults, __ATOMIC_RELAXED), 10);
    put(&l, "}}\n");
    write_all(fd, &l);
}

static void report(const siginfo_t *si, const void *ucv, const char *kind, const char *name)
{
    struct line l = {.len = 0};
    put(&l, "ember: seccomp: thread ");
    put(&l, name);
    put(&l, " (");
    put(&l, kind);
    put(&l, ") made a forbidden system call: ");
    int nr = si->si_syscall;
    if (si->si_arch != AUDIT_ARCH_X86_64) {
        put(&l, "number ");
        put_uint(&l, (uint64_t)(unsigned)nr, 10);
        put(&l, " of another architecture (");
        put_uint(&l, si->si_arch, 16);
        put(&l, ")");
    } else {
        const char *sys = nr >= 0 && (size_t)nr < sizeof(syscall_names) / sizeof(syscall_names[0])
                              ? syscall_names[nr]
                              : NULL;
        put(&l, sys ? sys : "unknown");
        put(&l, " (");
        put_uint(&l, (uint64_t)(unsigned)nr, 10);
        put(&l, ")");
#if defined(__x86_64__)
        const ucontext_t *uc = ucv;
        static const int regs[6] = {REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9};
        put(&l, ", arguments ");
        for (int i = 0; i < 6; i++) {
            if (i)
                put(&l, " ");
            put_uint(&l, (uint64_t)uc->uc_mcontext.gregs[regs[i]], 16);
        }
#endif
    }
    put(&l, "; ember stops (exit status 148)\n");
    write_all(STDERR_FILENO, &l);
    int log_fd = log_get_fd();
    if (log_fd != STDERR_FILENO)
        write_all(log_fd, &l);
}

/* The raw system call, not _exit(): nothing of the C library's or a
 * sanitizer's exit paths runs between the report and the end; a call they
 * made outside the filter would raise a second SIGSYS, blocked here, and
 * the kernel would kill ember with the signal instead of the status. */
static _Noreturn void end_process(int status)
{
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

static void on_sigsys(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    char here;
    bool in_helper =
        state.helper_stack_size && (uintptr_t)&here - state.helper_stack < state.helper_stack_size;
    if (si->si_code != SYS_SECCOMP) {
        /* Not a filter's: the teardown helper's report of its own
         * violation, or someone else's SIGSYS, which ends ember as the
         * signal would. */
        if (!in_helper && __atomic_load_n(&state.helper_violation, __ATOMIC_ACQUIRE))
            end_process(EXIT_SECCOMP_VIOLATION);
        end_process(EXIT_SIGNAL_BASE + SIGSYS);
    }
    __atomic_add_fetch(&faults, 1, __ATOMIC_RELAXED);
    /* The helper shares the main thread's thread-local storage: it is
     * named by its stack instead. */
    const char *kind = in_helper ? "teardown" : thread_kind ? thread_kind : "unconfined";
    const char *name = in_helper ? "teardown" : thread_kind ? thread_name : "?";
    report(si, ucv, kind, name);
    write_metrics_line();
    if (in_helper) {
        /* exit_group here would end the helper alone: ember's main thread
         * ends the process with the same status. */
        __atomic_store_n(&state.helper_violation, 1, __ATOMIC_RELEASE);
        syscall(SYS_tgkill, state.ember_pid, state.ember_pid, SIGSYS);
    }
    end_process(EXIT_SECCOMP_VIOLATION);
}

/* ---- installing ---------------------------------------------------------- */

static int install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, NULL) < 0)
        return error_errno("seccomp: sigaction(SIGSYS)");
    return 0;
}

static int check_kernel(void)
{
    uint32_t action = SECCOMP_RET_TRAP;
    if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) < 0)
        return error_errno("this kernel cannot filter system calls with seccomp (--no-seccomp "
                           "runs ember without filters)");
    return 0;
}

int seccomp_setup(bool enabled, const char *policy_path, bool *usage)
{
    *usage = false;
    state.enabled = false;
    if (!enabled)
        return 0;
    if (policy_path) {
        if (sc_policy_load(policy_path, state.progs, builtin_bpf) < 0) {
            *usage = true;
            return -1;
        }
    } else {
        for (int k = 0; k < SECCOMP_NKINDS; k++)
            state.progs[k] = builtin_bpf[k];
    }
    if (check_kernel() < 0 || install_handler() < 0)
        return -1;
    /* The vCPUs' kick signal is a number in the filters. */
    if (SIGRTMIN != 34)
        return error_set("seccomp: this C library's SIGRTMIN is %d, the filters expect 34; "
                         "--no-seccomp runs ember without them",
                         SIGRTMIN);
    /* What the C library would otherwise read lazily, in whichever thread
     * first needs it, after that thread's filter is on: the time zone
     * (/etc/localtime, the first gmtime_r of a log line), and the number of
     * CPUs (/sys/devices/system/cpu/online), which bounds malloc's arenas
     * when a ninth thread first allocates; set here to glibc's own default. */
    tzset();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, (int)(cpus > 0 ? cpus : 1) * 8);
    state.enabled = true;
    return 0;
}

void seccomp_enter(enum seccomp_kind kind, const char *name)
{
    if (!state.enabled || (unsigned)kind >= SECCOMP_NKINDS)
        return;
    thread_kind = seccomp_kind_name(kind);
    snprintf(thread_name, sizeof(thread_name), "%s", name);
#ifdef EMBER_SECCOMP_LEARN
    /* The kernel's log names the thread by its comm: make it the kind. */
    char comm[16];
    snprintf(comm, sizeof(comm), "sc-%s", thread_kind);
    prctl(PR_SET_NAME, comm, 0, 0, 0);
#endif
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &state.progs[kind]) < 0) {
        log_error("seccomp: thread %s cannot install its filter (%s); ember stops", name,
                  strerror(errno));
        _exit(EXIT_HOST_ERROR);
    }
}

void seccomp_note_teardown(const void *stack, unsigned long size, int ember_pid)
{
    state.helper_stack = (uintptr_t)stack;
    state.helper_stack_size = size;
    state.ember_pid = ember_pid;
}

void seccomp_enter_teardown(void)
{
    if (!state.enabled)
        return;
    static const char failed[] = "ember: seccomp: the teardown helper cannot install its filter; "
                                 "the machine will be destroyed as ember exits\n";
    if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &state.progs[SECCOMP_TEARDOWN]) < 0) {
        syscall(SYS_write, STDERR_FILENO, failed, sizeof(failed) - 1);
        syscall(SYS_exit, 0);
    }
}
