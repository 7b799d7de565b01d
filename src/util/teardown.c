#include "util/teardown.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/fdpass.h"

#include <fcntl.h>
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

static bool active;
static pid_t helper_pid = -1;
static int handover = -1; /* ember's end of the socket to the helper */

struct helper_args {
    pid_t parent;
    int sock; /* the helper's end */
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

/* Runs in the helper, on its own stack, in ember's address space: only
 * raw system calls, no library state. */
static int helper_main(void *arg)
{
    const struct helper_args *a = arg;
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    syscall(SYS_prctl, PR_SET_NAME, "ember-teardown", 0, 0, 0);
    /* Ember may have died before the line above took effect. */
    if (syscall(SYS_getppid) != a->parent)
        syscall(SYS_exit, 0);
    /* The copy of ember's files taken at the clone goes: the helper keeps only what ember hands
     * over (the VM), so that ember's sockets, taps, images and pipes close when ember dies, as a
     * client that waited for ember expects (a new machine on the same socket path, tap or image
     * must not find the old one still holding it). Standard error goes last: the filter's
     * failure message may need it. */
    unsigned sock = (unsigned)a->sock;
    if (sock > 2) {
        close_span(0, 1);
        close_span(3, sock - 1);
    } else if (sock > 0) { /* ember started without standard streams */
        close_span(0, sock - 1);
    }
    close_span(sock + 1, ~0U);
    seccomp_enter_teardown();
    if (sock != 2)
        syscall(SYS_close, 2);
    /* Receive and keep: the descriptors arrive with the messages. Ember's end closes when ember
     * dies (or the parent-death signal comes first); either way the helper ends, and what it
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
        if (n == 0)
            syscall(SYS_exit, 0);
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
    helper_args = (struct helper_args){.parent = getpid(), .sock = sv[1]};
    seccomp_note_teardown(stack, HELPER_STACK, getpid());
    pid_t pid = clone(helper_main, (char *)stack + HELPER_STACK, CLONE_VM, &helper_args);
    close(sv[1]);
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
