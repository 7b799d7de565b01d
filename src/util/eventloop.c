#include "util/eventloop.h"

#include "util/error.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct event_handler {
    int fd;
    event_fn fn;
    void *opaque;
    bool dead;
    struct event_handler *next;
};

static void drain_wake(void *opaque, uint32_t events)
{
    struct event_loop *loop = opaque;
    uint64_t v;
    (void)events;
    ssize_t ignored = read(loop->wake_fd, &v, sizeof(v));
    (void)ignored;
}

int event_loop_init(struct event_loop *loop)
{
    *loop = (struct event_loop){.epoll_fd = -1, .wake_fd = -1};
    loop->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epoll_fd < 0)
        return error_errno("epoll_create1");
    loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wake_fd < 0) {
        close(loop->epoll_fd);
        return error_errno("eventfd");
    }
    if (!event_loop_add(loop, loop->wake_fd, EPOLLIN, drain_wake, loop)) {
        event_loop_destroy(loop);
        return -1;
    }
    return 0;
}

static void free_list(struct event_handler *h)
{
    while (h) {
        struct event_handler *next = h->next;
        free(h);
        h = next;
    }
}

void event_loop_destroy(struct event_loop *loop)
{
    free_list(loop->handlers);
    free_list(loop->graveyard);
    loop->handlers = loop->graveyard = NULL;
    if (loop->epoll_fd >= 0)
        close(loop->epoll_fd);
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    loop->epoll_fd = loop->wake_fd = -1;
}

struct event_handler *event_loop_add(struct event_loop *loop, int fd, uint32_t events, event_fn fn,
                                     void *opaque)
{
    struct event_handler *h = calloc(1, sizeof(*h));
    if (!h) {
        error_set("out of memory");
        return NULL;
    }
    h->fd = fd;
    h->fn = fn;
    h->opaque = opaque;
    struct epoll_event ev = {.events = events, .data.ptr = h};
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        error_errno("epoll_ctl(ADD, fd %d)", fd);
        free(h);
        return NULL;
    }
    h->next = loop->handlers;
    loop->handlers = h;
    return h;
}

int event_loop_mod(struct event_loop *loop, struct event_handler *h, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = h};
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_MOD, h->fd, &ev) < 0)
        return error_errno("epoll_ctl(MOD, fd %d)", h->fd);
    return 0;
}

void event_loop_del(struct event_loop *loop, struct event_handler *h)
{
    if (!h || h->dead)
        return;
    epoll_ctl(loop->epoll_fd, EPOLL_CTL_DEL, h->fd, NULL);
    h->dead = true;
    for (struct event_handler **p = &loop->handlers; *p; p = &(*p)->next) {
        if (*p == h) {
            *p = h->next;
            break;
        }
    }
    /* Events for h may still sit in the current batch: free it afterwards. */
    h->next = loop->graveyard;
    loop->graveyard = h;
    if (!loop->dispatching) {
        free_list(loop->graveyard);
        loop->graveyard = NULL;
    }
}

int event_loop_run_once(struct event_loop *loop, int timeout_ms)
{
    struct epoll_event events[32];
    int n = epoll_wait(loop->epoll_fd, events, 32, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        return error_errno("epoll_wait");
    }
    loop->dispatching = true;
    for (int i = 0; i < n; i++) {
        struct event_handler *h = events[i].data.ptr;
        if (!h->dead)
            h->fn(h->opaque, events[i].events);
    }
    loop->dispatching = false;
    free_list(loop->graveyard);
    loop->graveyard = NULL;
    return n;
}

int event_loop_run(struct event_loop *loop)
{
    while (!__atomic_load_n(&loop->stop, __ATOMIC_ACQUIRE)) {
        if (event_loop_run_once(loop, -1) < 0)
            return -1;
    }
    return 0;
}

void event_loop_stop(struct event_loop *loop)
{
    uint64_t one = 1;
    __atomic_store_n(&loop->stop, true, __ATOMIC_RELEASE);
    ssize_t ignored = write(loop->wake_fd, &one, sizeof(one));
    (void)ignored;
}
