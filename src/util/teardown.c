#include "util/teardown.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/fdpass.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HELPER_STACK (64 * 1024)

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static bool active;
static pid_t helper_pid = -1;
static int handover = -1; /* ember's end of the socket to the helper */

struct helper_args {
    int sock;  /* the helper's end */
    int pidfd; /* ember's, or -1 (a kernel without pidfd_open) */
};
static struct helper_args helper_args;

/* Closes descriptors lo to hi (raw calls: the helper has no library state). */
static void close_span(unsigned lo, unsigned hi)
{
    if (lo > hi || syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    for (unsigned fd = lo; fd <= hi && fd < 4096; fd++)
        syscall(SYS_close, fd);
}

/* Closes every descriptor but `keep_a`, `keep_b` (either may be -1) and standard error. */
static void close_all_but(int keep_a, int keep_b)
{
    unsigned keep[3] = {2, (unsigned)keep_a, (unsigned)keep_b}; /* -1: ~0U, sorted last */
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2 - i; j++)
            if (keep[j] > keep[j + 1]) {
                unsigned t = keep[j];
                keep[j] = keep[j + 1];
                keep[j + 1] = t;
            }
    unsigned from = 0;
    for (int i = 0; i < 3 && keep[i] != ~0U; i++) {
        if (keep[i] > from)
            close_span(from, keep[i] - 1);
        if (keep[i] >= from)
            from = keep[i] + 1;
    }
    close_span(from, ~0U);
}

/* Waits until ember's whole thread group is gone. KVM makes a thread in ember's group (the
 * huge-page recovery worker, a vhost task) that shares ember's memory: if the helper ended first,
 * that thread would be the memory's last user and the VM's destruction (its RCU and SRCU grace
 * periods, the PIT's worker stopped) would run in ember's group, before ember's exit is
 * reported, which the helper is there to avoid. A pidfd is readable once the group is empty. */
static void wait_for_ember(int pidfd)
{
    if (pidfd < 0)
        return;
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    for (int tries = 0; tries < 16; tries++) {
        if (syscall(SYS_ppoll, &p, 1, NULL, NULL, 0) == 1)
            return;
    }
}

/* Runs in the helper, on its own stack, in ember's address space: only
 * raw system calls, no library state. */
static int helper_main(void *arg)
{
    const struct helper_args *a = arg;
    syscall(SYS_prctl, PR_SET_NAME, "ember-teardown", 0, 0, 0);
    /* No parent-death signal: it would end the helper as ember's main thread exits, while KVM's
     * thread in ember's group may still hold the memory (wait_for_ember). The helper ends when
     * ember's end of the socket closes, which happens however ember dies. */
    /* The copy of ember's files taken at the clone goes: the helper keeps only what ember hands
     * over (the VM) and ember's pidfd, so that ember's sockets, taps, images and pipes close when
     * ember dies, as a client that waited for ember expects (a new machine on the same socket
     * path, tap or image must not find the old one still holding it). Standard error goes last:
     * the filter's failure message may need it. */
    close_all_but(a->sock, a->pidfd);
    seccomp_enter_teardown();
    if (a->sock != 2 && a->pidfd != 2)
        syscall(SYS_close, 2);
    /* Receive and keep: the descriptors arrive with the messages. Ember's end closes when ember
     * dies; the helper then waits for the rest of ember's thread group and ends, and what it
     * kept is released by its exit, which nobody waits for. */
    for (;;) {
        char data;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } control;
        struct iovec iov = {.iov_base = &data, .iov_len = 1};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = control.buf,
                             .msg_controllen = sizeof(control.buf)};
        long n = syscall(SYS_recvmsg, a->sock, &msg, MSG_CMSG_CLOEXEC);
        if (n == 0) {
            wait_for_ember(a->pidfd);
            syscall(SYS_exit, 0);
        }
    }
    return 0;
}

int async_teardown_start(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return error_errno("teardown helper socket");
    void *stack = mmap(NULL, HELPER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        close(sv[0]);
        close(sv[1]);
        return error_errno("teardown helper stack");
    }
    /* No exit signal: nobody needs to reap it while ember lives, and init
     * reaps it afterwards. Its own table of files (no CLONE_FILES): see helper_main. */
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd >= 0 && fcntl(pidfd, F_SETFD, FD_CLOEXEC) < 0) {
        close(pidfd);
        pidfd = -1;
    }
    helper_args = (struct helper_args){.sock = sv[1], .pidfd = pidfd};
    seccomp_note_teardown(stack, HELPER_STACK, getpid());
    pid_t pid = clone(helper_main, (char *)stack + HELPER_STACK, CLONE_VM, &helper_args);
    close(sv[1]);
    if (pidfd >= 0)
        close(pidfd);
    if (pid < 0) {
        close(sv[0]);
        munmap(stack, HELPER_STACK);
        return error_errno("cannot start the teardown helper");
    }
    handover = sv[0];
    helper_pid = pid;
    active = true;
    return 0;
}

void async_teardown_keep(int fd)
{
    if (handover < 0)
        return;
    char data = 0;
    union fdpass_control control;
    struct iovec iov = {.iov_base = &data, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    fdpass_attach(&msg, &control, fd);
    /* If it cannot be handed over, the VM is destroyed as ember exits: slower, not wrong. */
    if (sendmsg(handover, &msg, MSG_NOSIGNAL) < 0)
        active = false;
}

bool async_teardown_active(void)
{
    return active;
}

int async_teardown_pid(void)
{
    return helper_pid;
}
