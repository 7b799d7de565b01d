/* A test-only LD_PRELOAD library: makes one kind of ember thread attempt a
 * system call its seccomp filter forbids, from inside the real thread, after
 * the filter is on. Never part of ember.
 *
 *   EMBER_SECCOMP_TRIGGER=THREAD:CALL LD_PRELOAD=.../seccomp-trigger.so ember ...
 *
 * THREAD: main (the main thread), vcpu, blk, net, console, rng, vsock,
 * slirp, stdin, teardown. CALL: open (/etc/passwd), create (a new file in
 * /tmp), execve (/bin/true),
 * socket-inet (AF_INET), ptrace (PTRACE_TRACEME), kvm-create-vm (the ioctl,
 * which no thread needs once the machine exists), clone-process (a clone
 * without CLONE_THREAD, that is a new process).
 *
 * The call is made at the first place the thread reaches once its filter
 * is installed: the first epoll_wait() of the main and I/O threads, the
 * first KVM_RUN of a vCPU, the first poll() of the slirp thread, the first
 * read() of the console copier, the teardown helper closing standard error.
 * Threads are told apart by the names ember gives them
 * (pthread_setname_np), recorded here as they are given. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_THREADS 64

static struct {
    pthread_t thread;
    char name[16];
} named[MAX_THREADS];
static int nnamed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t main_thread;
static char want_thread[16], want_call[32];
static int fired;

static int (*real_setname)(pthread_t, const char *);
static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static ssize_t (*real_read)(int, void *, size_t);
static long (*real_syscall)(long, ...);

__attribute__((constructor)) static void init(void)
{
    main_thread = pthread_self();
    real_setname = dlsym(RTLD_NEXT, "pthread_setname_np");
    real_epoll_wait = dlsym(RTLD_NEXT, "epoll_wait");
    real_ioctl = dlsym(RTLD_NEXT, "ioctl");
    real_poll = dlsym(RTLD_NEXT, "poll");
    real_read = dlsym(RTLD_NEXT, "read");
    real_syscall = dlsym(RTLD_NEXT, "syscall");
    const char *spec = getenv("EMBER_SECCOMP_TRIGGER");
    const char *colon = spec ? strchr(spec, ':') : NULL;
    if (!colon || (size_t)(colon - spec) >= sizeof(want_thread))
        return;
    memcpy(want_thread, spec, (size_t)(colon - spec));
    snprintf(want_call, sizeof(want_call), "%s", colon + 1);
}

/* The kind of a thread by the name ember gave it ("vcpu1" -> "vcpu"). */
static bool is_wanted(const char *name)
{
    size_t n = strlen(want_thread);
    if (strncmp(name, want_thread, n) != 0)
        return false;
    for (const char *p = name + n; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
    }
    return true;
}

static bool current_is_wanted(void)
{
    if (!want_thread[0] || __atomic_load_n(&fired, __ATOMIC_ACQUIRE))
        return false;
    pthread_t self = pthread_self();
    if (!strcmp(want_thread, "main"))
        return pthread_equal(self, main_thread);
    bool found = false;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nnamed && !found; i++)
        found = pthread_equal(named[i].thread, self) && is_wanted(named[i].name);
    pthread_mutex_unlock(&lock);
    return found;
}

/* The forbidden call. Raw system calls: no library state, and the same
 * code in the teardown helper, which shares ember's memory but is not one
 * of its threads. */
static void attempt(void)
{
    if (__atomic_exchange_n(&fired, 1, __ATOMIC_ACQ_REL))
        return;
    static const char note[] = "seccomp-trigger: attempting the forbidden call\n";
    real_syscall(SYS_write, 2, note, sizeof(note) - 1);
    if (!strcmp(want_call, "open")) {
        real_syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY);
    } else if (!strcmp(want_call, "create")) {
        real_syscall(SYS_openat, AT_FDCWD, "/tmp/ember-seccomp-trigger", O_WRONLY | O_CREAT, 0600);
    } else if (!strcmp(want_call, "execve")) {
        static char *const argv[] = {"/bin/true", NULL};
        real_syscall(SYS_execve, "/bin/true", argv, NULL);
    } else if (!strcmp(want_call, "socket-inet")) {
        real_syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    } else if (!strcmp(want_call, "ptrace")) {
        real_syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
    } else if (!strcmp(want_call, "kvm-create-vm")) {
        real_syscall(SYS_ioctl, -1, KVM_CREATE_VM, 0);
    } else if (!strcmp(want_call, "clone-process")) {
        /* If a filter let it through, the child must not go on as ember. */
        if (real_syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0) == 0)
            real_syscall(SYS_exit_group, 0);
    }
    static const char survived[] = "seccomp-trigger: the forbidden call returned\n";
    real_syscall(SYS_write, 2, survived, sizeof(survived) - 1);
}

int pthread_setname_np(pthread_t t, const char *name)
{
    pthread_mutex_lock(&lock);
    if (nnamed < MAX_THREADS) {
        named[nnamed].thread = t;
        snprintf(named[nnamed].name, sizeof(named[nnamed].name), "%s", name);
        nnamed++;
    }
    pthread_mutex_unlock(&lock);
    return real_setname(t, name);
}

int epoll_wait(int epfd, struct epoll_event *events, int max, int timeout)
{
    if (current_is_wanted())
        attempt();
    return real_epoll_wait(epfd, events, max, timeout);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (request == KVM_RUN && current_is_wanted())
        attempt();
    return real_ioctl(fd, request, arg);
}

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    if (current_is_wanted())
        attempt();
    return real_poll(fds, n, timeout);
}

ssize_t read(int fd, void *buf, size_t len)
{
    if (current_is_wanted())
        attempt();
    return real_read(fd, buf, len);
}

/* The teardown helper is not a pthread, so it is recognised by its calls
 * alone: its first under the filter closes standard error (the last moment
 * this note can still be written), then it waits in syscall(SYS_recvmsg). */
long syscall(long nr, ...)
{
    va_list ap;
    va_start(ap, nr);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (((nr == SYS_close && a[0] == 2) || nr == SYS_recvmsg) && !strcmp(want_thread, "teardown"))
        attempt();
    return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
