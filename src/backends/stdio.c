#include "backends/stdio.h"

#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/log.h"
#include "util/term.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

static const char help_text[] = "\r\nember console escapes:\r\n"
                                "  Ctrl-A x       quit ember\r\n"
                                "  Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n"
                                "  Ctrl-A h       this help\r\n";

void stdio_console_set_lossy(struct stdio_console *c, bool lossy)
{
    c->out_lossy = lossy;
}

void stdio_console_output(void *opaque, const uint8_t *buf, size_t len)
{
    struct stdio_console *c = opaque;
    if (__atomic_load_n(&c->out_broken, __ATOMIC_RELAXED))
        return;
    while (len) {
        ssize_t n = write(c->out_fd, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN && c->out_lossy) {
            __atomic_add_fetch(&c->out_dropped, len, __ATOMIC_RELAXED);
            return;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = c->out_fd, .events = POLLOUT};
            poll(&p, 1, -1);
        } else {
            /* Reader gone: the guest keeps running, its output goes nowhere. */
            __atomic_add_fetch(&c->out_errors, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&c->out_broken, true, __ATOMIC_RELAXED);
            log_warn("console output failed (%s); discarding further guest output",
                     n < 0 ? strerror(errno) : "closed");
            return;
        }
    }
}

/* Turns escape sequences into actions and returns the bytes for the guest
 * (compacted in place). */
static size_t filter_escapes(struct stdio_console *c, uint8_t *buf, size_t len)
{
    size_t out = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = buf[i];
        if (c->escape) {
            c->escape = false;
            if (b == 'x' || b == 'X') {
                if (c->on_quit)
                    c->on_quit(c->quit_opaque);
            } else if (b == 'h' || b == 'H' || b == '?') {
                stdio_console_output(c, (const uint8_t *)help_text, sizeof(help_text) - 1);
            } else if (b == STDIO_ESCAPE_KEY) {
                buf[out++] = b;
            }
            continue;
        }
        if (b == STDIO_ESCAPE_KEY) {
            c->escape = true;
            continue;
        }
        buf[out++] = b;
    }
    return out;
}

static void arm(struct stdio_console *c, bool on)
{
    if (!c->handler)
        return;
    event_loop_mod(c->loop, c->handler, on ? EPOLLIN : 0);
}

/* Hands pending input to the device; true when all of it was taken. */
static bool deliver_pending(struct stdio_console *c)
{
    if (c->pending_off < c->pending_len)
        c->pending_off += c->sink.deliver(c->sink.opaque, c->pending + c->pending_off,
                                          c->pending_len - c->pending_off);
    return c->pending_off == c->pending_len;
}

/* Readable input: one read per wake-up (the fd may be blocking, e.g. a
 * terminal shared with the shell; the loop calls again while data
 * remains). */
static void on_input(void *opaque, uint32_t events)
{
    struct stdio_console *c = opaque;
    (void)events;
    if (!deliver_pending(c)) {
        arm(c, false);
        return;
    }
    ssize_t n = read(c->watch_fd, c->pending, sizeof(c->pending));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        /* End of input: the guest keeps running without it. */
        c->eof = true;
        event_loop_del(c->loop, c->handler);
        c->handler = NULL;
        return;
    }
    c->pending_off = 0;
    c->pending_len = c->is_tty ? filter_escapes(c, c->pending, (size_t)n) : (size_t)n;
    if (!deliver_pending(c)) {
        /* The device is full: stop reading until it says it has room. */
        arm(c, false);
    }
}

/* The device has room again (signalled through resume_fd). */
static void on_resume(void *opaque, uint32_t events)
{
    struct stdio_console *c = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(c->resume_fd, &v, sizeof(v));
    (void)ignored;
    if (deliver_pending(c) && !c->eof)
        arm(c, true);
}

void stdio_console_resume(void *opaque)
{
    struct stdio_console *c = opaque;
    /* Any thread: the loop thread does the delivering. */
    if (c->resume_fd >= 0) {
        uint64_t one = 1;
        ssize_t ignored = write(c->resume_fd, &one, sizeof(one));
        (void)ignored;
    }
}

/* Input that epoll cannot watch (a regular file, /dev/null) is copied
 * through a pipe by a thread; the pipe gives the same back-pressure. */
static void *copier_main(void *arg)
{
    int *fds = arg;
    int in = fds[0], out = fds[1];
    seccomp_enter(SECCOMP_STDIN, "stdin");
    uint8_t buf[4096];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                goto out;
            done += w;
        }
    }
out:
    close(out);
    return NULL;
}

static int copier_fds[2];

int stdio_console_start(struct stdio_console *c, struct event_loop *loop, int in_fd, int out_fd,
                        const struct stdio_sink *sink, void (*on_quit)(void *), void *opaque)
{
    memset(c, 0, sizeof(*c));
    c->resume_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->resume_fd < 0)
        return error_errno("eventfd");
    c->resume_handler = event_loop_add(loop, c->resume_fd, EPOLLIN, on_resume, c);
    if (!c->resume_handler)
        return -1;
    c->in_fd = in_fd;
    c->out_fd = out_fd;
    c->watch_fd = in_fd;
    c->loop = loop;
    c->sink = *sink;
    c->on_quit = on_quit;
    c->quit_opaque = opaque;
    struct stat st;
    if (in_fd < 0 || fstat(in_fd, &st) < 0) {
        c->eof = true;
        return 0;
    }
    c->is_tty = isatty(in_fd);
    if (c->is_tty && term_raw(in_fd) < 0)
        return -1;
    c->handler = event_loop_add(loop, in_fd, EPOLLIN, on_input, c);
    if (c->handler)
        return 0;
    if (errno != EPERM)
        return -1;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return error_errno("pipe");
    copier_fds[0] = in_fd;
    copier_fds[1] = p[1];
    int r = pthread_create(&c->copier, NULL, copier_main, copier_fds);
    if (r != 0) {
        close(p[0]);
        close(p[1]);
        errno = r;
        return error_errno("cannot start the console input thread");
    }
    pthread_setname_np(c->copier, "stdin");
    c->has_copier = true;
    c->watch_fd = p[0];
    c->handler = event_loop_add(loop, p[0], EPOLLIN, on_input, c);
    return c->handler ? 0 : -1;
}

void stdio_console_stop(struct stdio_console *c)
{
    if (c->handler)
        event_loop_del(c->loop, c->handler);
    c->handler = NULL;
    if (c->resume_handler)
        event_loop_del(c->loop, c->resume_handler);
    c->resume_handler = NULL;
    if (c->resume_fd >= 0)
        close(c->resume_fd);
    c->resume_fd = -1;
    if (c->has_copier) {
        /* The copier may sit in a blocking read: leave it, the process is
         * ending; only its pipe end is ours to close. */
        pthread_detach(c->copier);
        c->has_copier = false;
    }
    if (c->watch_fd != c->in_fd && c->watch_fd >= 0)
        close(c->watch_fd);
    c->watch_fd = -1;
    if (c->is_tty)
        term_restore();
}
