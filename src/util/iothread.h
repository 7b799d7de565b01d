/* A thread running its own event loop, for device work off the vCPU
 * threads. Other threads hand it work with iothread_call(), which runs a
 * function on the I/O thread and waits for it: device state is then only
 * ever touched by one thread. */
#ifndef EMBER_UTIL_IOTHREAD_H
#define EMBER_UTIL_IOTHREAD_H

#include "util/eventloop.h"

#include <pthread.h>
#include <stdbool.h>

struct iothread_call;

struct iothread {
    char name[16];
    int confinement; /* enum seccomp_kind: the filter the thread installs */
    struct event_loop loop;
    pthread_t thread;
    bool running;
    int call_fd; /* eventfd: calls are queued */
    pthread_mutex_t lock;
    pthread_cond_t done;
    struct iothread_call *calls;
    /* Runs after every round of events (for polling). Returns the time to
     * wait for the next round in ms: 0 to poll again at once, -1 to block. */
    int (*idle)(void *opaque);
    void *idle_opaque;
    /* iothread_hold: the thread waits in a call until released. */
    bool hold_wanted, held;
    struct iothread_call *hold_call;
};

/* confinement: the seccomp_kind whose filter the thread installs before its
 * first event (SECCOMP_NONE: none). */
int iothread_start(struct iothread *t, const char *name, int confinement);
/* Runs fn(arg) on the thread and waits for it (from any other thread; from
 * the thread itself it just calls fn). */
void iothread_call(struct iothread *t, void (*fn)(void *), void *arg);
/* Makes the thread stop between events and wait, running nothing, until
 * iothread_release (returns once it waits): a snapshot reads device state and
 * guest memory that nothing then changes. Not from the thread itself. */
int iothread_hold(struct iothread *t);
void iothread_release(struct iothread *t);
/* Stops the loop and joins the thread. */
void iothread_stop(struct iothread *t);
bool iothread_is_current(const struct iothread *t);

#endif
