#include "util/iothread.h"

#include "sandbox/seccomp.h"
#include "util/clock.h"
#include "util/error.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* How long a polling thread goes without looking at its events. */
#define IOTHREAD_SPIN_NS 20000

struct iothread_call {
    void (*fn)(void *);
    void *arg;
    bool finished;
    struct iothread_call *next;
};

static void run_calls(void *opaque, uint32_t events)
{
    struct iothread *t = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(t->call_fd, &v, sizeof(v));
    (void)ignored;
    pthread_mutex_lock(&t->lock);
    while (t->calls) {
        struct iothread_call *c = t->calls;
        t->calls = c->next;
        pthread_mutex_unlock(&t->lock);
        c->fn(c->arg);
        pthread_mutex_lock(&t->lock);
        c->finished = true;
        pthread_cond_broadcast(&t->done);
    }
    pthread_mutex_unlock(&t->lock);
}

static void *iothread_main(void *arg)
{
    struct iothread *t = arg;
    /* Named by itself (prctl): naming another thread goes through /proc, which a jail lacks. */
    pthread_setname_np(pthread_self(), t->name);
    /* Termination signals belong to the main thread. A seccomp violation's
     * SIGSYS must get through: blocked, the kernel would kill the process
     * without the report. */
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSYS);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    /* Before the first event: everything after may come from the guest. */
    seccomp_enter((enum seccomp_kind)t->confinement, t->name);
    int timeout = -1;
    while (!__atomic_load_n(&t->loop.stop, __ATOMIC_ACQUIRE)) {
        if (event_loop_run_once(&t->loop, timeout) < 0) {
            fprintf(stderr, "ember: %s: %s\n", t->name, error_get());
            break;
        }
        timeout = t->idle ? t->idle(t->idle_opaque) : -1;
        /* Polling: look again without a system call for a while before the next epoll_wait,
         * which costs more than a look at the rings (nested, a few microseconds). Events
         * (kicks, completions' eventfd, calls, stop) wait at most IOTHREAD_SPIN_NS for it. */
        uint64_t until = timeout == 0 ? monotonic_ns() + IOTHREAD_SPIN_NS : 0;
        while (timeout == 0 && monotonic_ns() < until && t->idle)
            timeout = t->idle(t->idle_opaque);
    }
    return NULL;
}

int iothread_start(struct iothread *t, const char *name, int confinement)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->confinement = confinement;
    if (event_loop_init(&t->loop) < 0)
        return -1;
    t->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t->call_fd < 0) {
        event_loop_destroy(&t->loop);
        return error_errno("eventfd");
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->done, NULL);
    if (!event_loop_add(&t->loop, t->call_fd, EPOLLIN, run_calls, t))
        return -1;
    int r = pthread_create(&t->thread, NULL, iothread_main, t);
    if (r != 0) {
        errno = r;
        return error_errno("cannot start I/O thread %s", name);
    }
    t->running = true;
    return 0;
}

bool iothread_is_current(const struct iothread *t)
{
    return t->running && pthread_equal(pthread_self(), t->thread);
}

/* Queues c and wakes the thread (under t->lock). */
static void enqueue(struct iothread *t, struct iothread_call *c)
{
    struct iothread_call **tail = &t->calls;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
    uint64_t one = 1;
    ssize_t ignored = write(t->call_fd, &one, sizeof(one));
    (void)ignored;
}

void iothread_call(struct iothread *t, void (*fn)(void *), void *arg)
{
    if (!t->running || iothread_is_current(t)) {
        fn(arg);
        return;
    }
    struct iothread_call c = {.fn = fn, .arg = arg};
    pthread_mutex_lock(&t->lock);
    enqueue(t, &c);
    while (!c.finished)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

static void hold_here(void *arg)
{
    struct iothread *t = arg;
    pthread_mutex_lock(&t->lock);
    t->held = true;
    pthread_cond_broadcast(&t->done);
    while (t->hold_wanted)
        pthread_cond_wait(&t->done, &t->lock);
    t->held = false;
    pthread_cond_broadcast(&t->done);
    pthread_mutex_unlock(&t->lock);
}

int iothread_hold(struct iothread *t)
{
    if (!t->running)
        return 0;
    if (iothread_is_current(t))
        return error_set("%s: an I/O thread cannot hold itself", t->name);
    struct iothread_call *c = calloc(1, sizeof(*c));
    if (!c)
        return error_set("out of memory");
    c->fn = hold_here;
    c->arg = t;
    pthread_mutex_lock(&t->lock);
    t->hold_wanted = true;
    t->hold_call = c;
    enqueue(t, c);
    while (!t->held)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

void iothread_release(struct iothread *t)
{
    if (!t->hold_call)
        return;
    pthread_mutex_lock(&t->lock);
    t->hold_wanted = false;
    pthread_cond_broadcast(&t->done);
    while (!t->hold_call->finished)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
    free(t->hold_call);
    t->hold_call = NULL;
}

void iothread_stop(struct iothread *t)
{
    if (!t->running)
        return;
    event_loop_stop(&t->loop);
    pthread_join(t->thread, NULL);
    /* Calls queued after the loop ended run here, on the caller. */
    pthread_mutex_lock(&t->lock);
    while (t->calls) {
        struct iothread_call *c = t->calls;
        t->calls = c->next;
        c->fn(c->arg);
        c->finished = true;
    }
    pthread_cond_broadcast(&t->done);
    pthread_mutex_unlock(&t->lock);
    t->running = false;
    close(t->call_fd);
    event_loop_destroy(&t->loop);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->done);
}
