/* A small epoll loop. Handlers run on the loop's thread; a handler may add or
 * remove handlers (its own included) while it runs. */
#ifndef EMBER_UTIL_EVENTLOOP_H
#define EMBER_UTIL_EVENTLOOP_H

#include <stdbool.h>
#include <stdint.h>

typedef void (*event_fn)(void *opaque, uint32_t events);

struct event_handler;

struct event_loop {
    int epoll_fd;
    int wake_fd;                     /* eventfd: event_loop_stop() from any thread */
    bool stop;                       /* accessed atomically */
    struct event_handler *handlers;  /* live */
    struct event_handler *graveyard; /* removed during dispatch, freed after it */
    bool dispatching;
};

int event_loop_init(struct event_loop *loop);
void event_loop_destroy(struct event_loop *loop);
/* Watches fd for events (EPOLLIN...); returns a handle for event_loop_del. */
struct event_handler *event_loop_add(struct event_loop *loop, int fd, uint32_t events, event_fn fn,
                                     void *opaque);
int event_loop_mod(struct event_loop *loop, struct event_handler *h, uint32_t events);
void event_loop_del(struct event_loop *loop, struct event_handler *h);
/* Runs one round, waiting at most timeout_ms (-1: forever). */
int event_loop_run_once(struct event_loop *loop, int timeout_ms);
/* Runs until event_loop_stop(). */
int event_loop_run(struct event_loop *loop);
void event_loop_stop(struct event_loop *loop);

#endif
