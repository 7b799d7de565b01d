#include "api/server.h"

#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

/* Stop reading from a client that does not read its answers. */
#define OUTPUT_HIGH_WATER (256u << 10)
#define READ_CHUNK        16384

struct api_conn {
    struct api_server *server;
    int fd;
    struct event_handler *handler;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    bool closing;                 /* close once the output is written */
    bool peer_done;               /* the client shut down its side */
    bool continue_sent;           /* "100 Continue" went out for the request in progress */
    uint64_t request_deadline_ns; /* 0: no partial request */
    uint64_t write_deadline_ns;   /* 0: output not stalled */
    struct api_conn *next;
};

static void conn_close(struct api_conn *c)
{
    struct api_server *s = c->server;
    for (struct api_conn **p = &s->conns; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    s->nconns--;
    event_loop_del(s->loop, c->handler);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static bool out_append(struct api_conn *c, const char *data, size_t len)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len)
            cap *= 2;
        char *n = realloc(c->out, cap);
        if (!n)
            return false;
        c->out = n;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return true;
}

static void respond(struct api_conn *c, int status, const char *body, bool keep_alive)
{
    char *msg;
    size_t n = http_format_response(&msg, status, body, body ? strlen(body) : 0, keep_alive);
    if (!n || !out_append(c, msg, n))
        c->closing = true;
    if (n)
        free(msg);
    if (!keep_alive)
        c->closing = true;
}

static void respond_error(struct api_conn *c, int status, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "fault_message", message);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    respond(c, status, body, false);
    free(body);
}

/* Writes what it can; returns false if the connection was closed. */
static bool flush_output(struct api_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_close(c);
            return false;
        }
        c->out_off += (size_t)n;
        c->write_deadline_ns = 0;
    }
    bool pending = c->out_off < c->out_len;
    if (!pending && (c->closing || (c->peer_done && c->in_len == 0))) {
        conn_close(c);
        return false;
    }
    if (pending && !c->write_deadline_ns)
        c->write_deadline_ns = monotonic_ns() + c->server->request_timeout_ms * 1000000ULL;
    /* Read only while the client keeps up with its answers. */
    uint32_t events = 0;
    if (pending)
        events |= EPOLLOUT;
    if (!c->closing && !c->peer_done && c->out_len - c->out_off < OUTPUT_HIGH_WATER)
        events |= EPOLLIN | EPOLLRDHUP;
    event_loop_mod(c->server->loop, c->handler, events);
    return true;
}

/* Answers every complete request in the input buffer, in order. */
static void process_input(struct api_conn *c)
{
    struct api_server *s = c->server;
    size_t off = 0;
    while (!c->closing && off < c->in_len && c->out_len - c->out_off < OUTPUT_HIGH_WATER) {
        struct http_request req;
        enum http_parse_result r =
            http_parse_request(c->in + off, c->in_len - off, &s->limits, &req);
        if (r == HTTP_ERROR) {
            s->dropped_malformed++;
            log_debug("API: malformed request: %s", req.error_message);
            respond_error(c, req.error_status, req.error_message);
            off = c->in_len;
            break;
        }
        if (r == HTTP_INCOMPLETE) {
            if (req.head_complete && req.expect_continue && !c->continue_sent) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (!out_append(c, cont, sizeof(cont) - 1))
                    c->closing = true;
                c->continue_sent = true;
            }
            break;
        }
        int status = 500;
        char *body = NULL;
        s->handle(s->opaque, &req, &status, &body);
        respond(c, status, body, req.keep_alive);
        free(body);
        off += req.consumed;
        c->continue_sent = false;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        c->request_deadline_ns = 0;
    }
    /* The clock for a request starts with its first byte. */
    if (c->in_len && !c->request_deadline_ns)
        c->request_deadline_ns = monotonic_ns() + s->request_timeout_ms * 1000000ULL;
    if (!c->in_len)
        c->request_deadline_ns = 0;
}

static void on_conn(void *opaque, uint32_t events)
{
    struct api_conn *c = opaque;
    struct api_server *s = c->server;
    if (events & EPOLLERR) {
        conn_close(c);
        return;
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) && !c->peer_done && !c->closing) {
        /* The buffer holds at most one maximal request plus a read. */
        size_t limit = s->limits.max_head + s->limits.max_payload + READ_CHUNK;
        if (c->in_cap - c->in_len < READ_CHUNK && c->in_cap < limit) {
            size_t cap = c->in_cap ? c->in_cap * 2 : READ_CHUNK * 2;
            if (cap > limit)
                cap = limit;
            char *n = realloc(c->in, cap);
            if (!n) {
                conn_close(c);
                return;
            }
            c->in = n;
            c->in_cap = cap;
        }
        size_t room = c->in_cap - c->in_len;
        if (room) {
            ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
            if (n > 0)
                c->in_len += (size_t)n;
            else if (n == 0)
                c->peer_done = true;
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_close(c);
                return;
            }
        }
        process_input(c);
        if (c->peer_done && c->in_len)
            c->closing = true; /* a request cut short: nothing more will come */
    } else if (events & EPOLLOUT) {
        /* Room to answer again: requests held back may go on. */
        process_input(c);
    }
    flush_output(c);
}

static void arm_timer(struct api_server *s, bool on)
{
    if (s->timer_armed == on)
        return;
    struct itimerspec its = {0};
    if (on)
        its.it_interval.tv_nsec = its.it_value.tv_nsec = 250 * 1000000L;
    timerfd_settime(s->timer_fd, 0, &its, NULL);
    s->timer_armed = on;
}

static void on_timer(void *opaque, uint32_t events)
{
    struct api_server *s = opaque;
    (void)events;
    uint64_t ticks;
    ssize_t ignored = read(s->timer_fd, &ticks, sizeof(ticks));
    (void)ignored;
    uint64_t now = monotonic_ns();
    struct api_conn *next;
    for (struct api_conn *c = s->conns; c; c = next) {
        next = c->next;
        bool slow_request = c->request_deadline_ns && now > c->request_deadline_ns;
        bool stalled_reader = c->write_deadline_ns && now > c->write_deadline_ns;
        if (slow_request && !stalled_reader) {
            s->dropped_slow++;
            log_debug("API: dropping a client whose request did not arrive within %u ms",
                      s->request_timeout_ms);
            respond_error(c, 408, "the request did not arrive in time");
            c->in_len = 0;
            c->request_deadline_ns = 0;
            flush_output(c);
        } else if (stalled_reader) {
            conn_close(c);
        }
    }
    if (!s->conns)
        arm_timer(s, false);
}

static void on_accept(void *opaque, uint32_t events)
{
    struct api_server *s = opaque;
    (void)events;
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                log_warn("API: accept: %s", strerror(errno));
            return;
        }
        if (s->nconns >= API_SERVER_MAX_CONNECTIONS) {
            s->rejected_full++;
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                       "Content-Length: 0\r\n\r\n";
            ssize_t ignored = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)ignored;
            close(fd);
            continue;
        }
        struct api_conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->server = s;
        c->fd = fd;
        c->handler = event_loop_add(s->loop, fd, EPOLLIN | EPOLLRDHUP, on_conn, c);
        if (!c->handler) {
            close(fd);
            free(c);
            continue;
        }
        c->next = s->conns;
        s->conns = c;
        s->nconns++;
        arm_timer(s, true);
    }
}

/* A socket file left behind by an ember that died is replaced; a live
 * server's socket, or a file that is not a socket, is not touched. */
static int clear_stale_socket(const char *path, const struct sockaddr_un *addr)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return 0;
    if (!S_ISSOCK(st.st_mode))
        return error_set("API socket path '%s' exists and is not a socket", path);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return error_errno("socket");
    int r = connect(probe, (const struct sockaddr *)addr, sizeof(*addr));
    int err = errno;
    close(probe);
    if (r == 0 || err != ECONNREFUSED)
        return error_set("API socket '%s' is in use by another process", path);
    if (unlink(path) < 0)
        return error_errno("cannot remove stale API socket '%s'", path);
    return 0;
}

int api_server_start(struct api_server *s, struct event_loop *loop, const char *path,
                     const struct http_limits *limits, api_request_fn handle, void *opaque)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->listen_fd = s->timer_fd = -1;
    s->limits = *limits;
    s->handle = handle;
    s->opaque = opaque;
    s->request_timeout_ms = API_SERVER_REQUEST_TIMEOUT_MS;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return error_set("API socket path '%s' is longer than %zu bytes", path,
                         sizeof(addr.sun_path) - 1);
    strcpy(addr.sun_path, path);
    if (clear_stale_socket(path, &addr) < 0)
        return -1;
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0)
        return error_errno("socket");
    if (bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        error_errno("cannot create API socket '%s'", path);
        goto fail;
    }
    s->path = strdup(path);
    if (listen(s->listen_fd, 128) < 0) {
        error_errno("listen on '%s'", path);
        goto fail;
    }
    s->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (s->timer_fd < 0) {
        error_errno("timerfd_create");
        goto fail;
    }
    s->timer_handler = event_loop_add(loop, s->timer_fd, EPOLLIN, on_timer, s);
    s->listen_handler = event_loop_add(loop, s->listen_fd, EPOLLIN, on_accept, s);
    if (!s->timer_handler || !s->listen_handler)
        goto fail;
    return 0;
fail:
    api_server_stop(s);
    return -1;
}

void api_server_stop(struct api_server *s)
{
    while (s->conns)
        conn_close(s->conns);
    if (s->listen_handler)
        event_loop_del(s->loop, s->listen_handler);
    if (s->timer_handler)
        event_loop_del(s->loop, s->timer_handler);
    s->listen_handler = s->timer_handler = NULL;
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->timer_fd >= 0)
        close(s->timer_fd);
    s->listen_fd = s->timer_fd = -1;
    if (s->path)
        unlink(s->path);
    free(s->path);
    s->path = NULL;
}
