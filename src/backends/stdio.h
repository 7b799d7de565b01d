/* ember's standard input and output as a guest console: output written
 * whole, input delivered with back-pressure to a device (the serial port
 * now, virtio-console later). On a terminal, input is raw and Ctrl-A is an
 * escape key: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h helps. */
#ifndef EMBER_BACKENDS_STDIO_H
#define EMBER_BACKENDS_STDIO_H

#include "util/eventloop.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STDIO_ESCAPE_KEY 0x01 /* Ctrl-A */

struct stdio_sink {
    /* Takes up to len bytes; returns how many it took. */
    size_t (*deliver)(void *opaque, const uint8_t *buf, size_t len);
    void *opaque;
};

struct stdio_console {
    int in_fd, out_fd;
    int watch_fd; /* in_fd, or a pipe fed by a copier thread */
    bool is_tty, escape, eof, out_broken, armed;
    /* Output to a file or FIFO of the API's (PUT /serial): never waited
     * for; what does not fit now is dropped and counted. */
    bool out_lossy;
    uint64_t out_dropped;
    uint64_t out_errors; /* writes that failed (the output is then given up) */
    struct event_loop *loop;
    struct event_handler *handler;
    int resume_fd; /* eventfd: the device has room again */
    struct event_handler *resume_handler;
    struct stdio_sink sink;
    void (*on_quit)(void *opaque);
    void *quit_opaque;
    uint8_t pending[256];
    size_t pending_off, pending_len;
    pthread_t copier;
    bool has_copier;
};

/* Starts watching in_fd (raw mode if it is a terminal). */
int stdio_console_start(struct stdio_console *c, struct event_loop *loop, int in_fd, int out_fd,
                        const struct stdio_sink *sink, void (*on_quit)(void *), void *opaque);
void stdio_console_stop(struct stdio_console *c);
/* Output goes to out_fd without waiting when it is full (after
 * stdio_console_start, before the guest runs). */
void stdio_console_set_lossy(struct stdio_console *c, bool lossy);
/* Writes guest output (any thread). */
void stdio_console_output(void *opaque, const uint8_t *buf, size_t len);
/* The sink has room again (any thread). */
void stdio_console_resume(void *opaque);

#endif
