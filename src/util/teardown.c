#include "util/teardown.h"

#include "sandbox/seccomp.h"
#include "util/error.h"

#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HELPER_STACK (64 * 1024)

static bool active;

/* Runs in the helper, on its own stack, in ember's address space: only
 * raw system calls, no library state. */
static int helper_main(void *arg)
{
    pid_t parent = (pid_t)(intptr_t)arg;
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    syscall(SYS_prctl, PR_SET_NAME, "ember-teardown", 0, 0, 0);
    /* Ember may have died before the line above took effect. */
    if (syscall(SYS_getppid) != parent)
        syscall(SYS_exit, 0);
    seccomp_enter_teardown();
    for (;;)
        syscall(SYS_pause);
    return 0;
}

int async_teardown_start(void)
{
    void *stack = mmap(NULL, HELPER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return error_errno("teardown helper stack");
    /* No exit signal: nobody needs to reap it while ember lives, and init
     * reaps it afterwards. */
    seccomp_note_teardown(stack, HELPER_STACK, getpid());
    pid_t pid = clone(helper_main, (char *)stack + HELPER_STACK, CLONE_VM | CLONE_FILES,
                      (void *)(intptr_t)getpid());
    if (pid < 0) {
        munmap(stack, HELPER_STACK);
        return error_errno("cannot start the teardown helper");
    }
    active = true;
    return 0;
}

bool async_teardown_active(void)
{
    return active;
}
