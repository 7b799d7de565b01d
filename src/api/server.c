#include "api/server.h"

#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
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
#define OUTPUT_HIGH_WATER (64u << 10)
#define READ_CHUNK        16384
/* Requests answered for one connection, and connections taken from the
 * backlog, before the loop serves the others. */
#define REQUESTS_PER_TURN 16
#define ACCEPTS_PER_TURN  32
#define ACCEPT_PAUSE_MS   100 /* after accept() ran out of descriptors or memory */

static const char *const event_metric[API_SERVER_NEVENTS] = {
    [API_SERVER_ACCEPTED] = "connections_accepted_count",
    [API_SERVER_REFUSED] = "connections_refused_count",
    [API_SERVER_EVICTED] = "connections_evicted_count",
    [API_SERVER_IDLE_TIMEOUT] = "connections_idle_timeout_count",
    [API_SERVER_REQUEST_TIMEOUT] = "connections_request_timeout_count",
    [API_SERVER_WRITE_TIMEOUT] = "connections_write_timeout_count",
    [API_SERVER_MALFORMED] = "requests_malformed_count",
};

const char *api_server_event_metric(enum api_server_event e)
{
    return (unsigned)e < API_SERVER_NEVENTS ? event_metric[e] : "unknown";
}

/* Counts an event and logs it with a rate limit per kind; the metrics count them all. */
#define NOTE(s, ev, level, fmt, ...)                                                               \
    do {                                                                                           \
        (s)->stats.events[ev]++;                                                                   \
        log_limited_at(&(s)->log_limits[ev], level, __FILE__, __LINE__,                            \
                       "API: " fmt " (metrics: api_server.%s)", __VA_ARGS__, event_metric[ev]);    \
    } while (0)

struct api_conn {
    struct api_server *server;
    int fd;
    struct event_handler *handler;
    char *in;
    size_t in_len, in_cap;
    size_t in_needed; /* the request in progress occupies this much: parse again once it is in */
    bool more_input;  /* requests may wait in `in` for another turn */
    char *out;
    size_t out_len, out_off, out_cap;
    bool closing;                 /* close once the output is written */
    bool peer_done;               /* the client shut down its side */
    bool continue_sent;           /* "100 Continue" went out for the request in progress */
    uint64_t request_deadline_ns; /* 0: no partial request */
    uint64_t write_deadline_ns;   /* 0: output not stalled */
    uint64_t idle_since_ns;       /* 0: a request in progress or answers unwritten */
    struct api_conn *next;
};

static uint64_t ms_to_ns(unsigned ms)
{
    return (uint64_t)ms * 1000000ULL;
}

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
    const char *extra = status & API_STATUS_DEPRECATED ? "Deprecation: true\r\n" : NULL;
    status &= ~API_STATUS_DEPRECATED;
    size_t n =
        http_format_response_with(&msg, status, extra, body, body ? strlen(body) : 0, keep_alive);
    if (!n || !out_append(c, msg, n))
        c->closing = true;
    if (n)
        free(msg);
    if (!keep_alive)
        c->closing = true;
}

static char *error_body(const char *key, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, key, message);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return body;
}

static void respond_error(struct api_conn *c, int status, const char *message)
{
    char *body = error_body("fault_message", message);
    respond(c, status, body, false);
    free(body);
}

/* Writes what it can and chooses the events to wait for; returns false if
 * the connection was closed. */
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
    uint64_t now = monotonic_ns();
    if (pending && !c->write_deadline_ns)
        c->write_deadline_ns = now + ms_to_ns(c->server->opts.request_timeout_ms);
    /* Idle: every answer written, nothing of a next request read. */
    if (pending || c->in_len)
        c->idle_since_ns = 0;
    else if (!c->idle_since_ns)
        c->idle_since_ns = now;
    /* Read only while the client keeps up with its answers. Requests left
     * for another turn are taken up on the next EPOLLOUT, which a socket
     * with room reports at once, after the loop's other ready files. */
    uint32_t events = 0;
    if (pending || c->more_input)
        events |= EPOLLOUT;
    if (!c->closing && !c->peer_done && c->out_len - c->out_off < OUTPUT_HIGH_WATER)
        events |= EPOLLIN | EPOLLRDHUP;
    event_loop_mod(c->server->loop, c->handler, events);
    return true;
}

/* Answers the complete requests at the start of the input buffer, in
 * order, up to REQUESTS_PER_TURN and while the client reads its answers. */
static void process_input(struct api_conn *c)
{
    struct api_server *s = c->server;
    size_t off = 0;
    unsigned answered = 0;
    c->more_input = false;
    while (!c->closing && off < c->in_len) {
        if (c->in_needed && c->in_len - off < c->in_needed)
            break; /* the rest of a request whose size is known has not come yet */
        if (answered == REQUESTS_PER_TURN || c->out_len - c->out_off >= OUTPUT_HIGH_WATER) {
            c->more_input = true;
            break;
        }
        struct http_request req;
        enum http_parse_result r =
            http_parse_request(c->in + off, c->in_len - off, &s->limits, &req);
        if (r == HTTP_ERROR) {
            NOTE(s, API_SERVER_MALFORMED, LOG_INFO, "malformed request (%s): answered %d, closed",
                 req.error_message, req.error_status);
            respond_error(c, req.error_status, req.error_message);
            off = c->in_len;
            break;
        }
        if (r == HTTP_INCOMPLETE) {
            if (req.head_complete) {
                c->in_needed = req.needed;
                if (req.expect_continue && !c->continue_sent) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    if (!out_append(c, cont, sizeof(cont) - 1))
                        c->closing = true;
                    c->continue_sent = true;
                }
            }
            break;
        }
        int status = 500;
        char *body = NULL;
        s->handle(s->opaque, &req, &status, &body);
        respond(c, status, body, req.keep_alive);
        free(body);
        off += req.consumed;
        answered++;
        c->in_needed = 0;
        c->continue_sent = false;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
        c->request_deadline_ns = 0;
    }
    /* The clock for a request starts with its first byte. */
    if (c->in_len && !c->request_deadline_ns)
        c->request_deadline_ns = monotonic_ns() + ms_to_ns(s->opts.request_timeout_ms);
    if (!c->in_len) {
        c->request_deadline_ns = 0;
        c->in_needed = 0;
    }
    /* Once the client has shut down its side, a partial request left over
     * will never be completed. */
    if (c->peer_done && c->in_len && !c->more_input)
        c->closing = true;
}

/* Whether the client has sent bytes not read yet: such a connection is not
 * idle, whatever its state says. */
static bool input_waiting(const struct api_conn *c)
{
    char b;
    return recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* Arms the timer for the earliest deadline of any connection. */
static void arm_timer(struct api_server *s)
{
    uint64_t next = 0;
    uint64_t idle_ns = ms_to_ns(s->opts.idle_timeout_ms);
    if (s->accept_resume_ns)
        next = s->accept_resume_ns;
    for (const struct api_conn *c = s->conns; c; c = c->next) {
        uint64_t d[3] = {c->request_deadline_ns, c->write_deadline_ns,
                         idle_ns && c->idle_since_ns ? c->idle_since_ns + idle_ns : 0};
        for (int i = 0; i < 3; i++) {
            if (d[i] && (!next || d[i] < next))
                next = d[i];
        }
    }
    if (next == s->timer_deadline_ns)
        return;
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(next / 1000000000ULL);
    its.it_value.tv_nsec = (long)(next % 1000000000ULL);
    if (timerfd_settime(s->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        s->timer_deadline_ns = next;
    else
        log_warn("API: timerfd_settime: %s", strerror(errno));
}

static void on_conn(void *opaque, uint32_t events)
{
    struct api_conn *c = opaque;
    struct api_server *s = c->server;
    if (events & EPOLLERR) {
        conn_close(c);
        arm_timer(s);
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
                arm_timer(s);
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
                arm_timer(s);
                return;
            }
        }
        process_input(c);
    } else if (events & EPOLLOUT) {
        /* Room to answer again, or requests waiting for their turn. */
        process_input(c);
    }
    flush_output(c);
    arm_timer(s);
}

static void on_timer(void *opaque, uint32_t events)
{
    struct api_server *s = opaque;
    (void)events;
    uint64_t ticks;
    ssize_t ignored = read(s->timer_fd, &ticks, sizeof(ticks));
    (void)ignored;
    s->timer_deadline_ns = 0; /* a one-shot timer, spent */
    uint64_t now = monotonic_ns();
    if (s->accept_resume_ns && now >= s->accept_resume_ns) {
        s->accept_resume_ns = 0;
        event_loop_mod(s->loop, s->listen_handler, EPOLLIN);
    }
    uint64_t idle_ns = ms_to_ns(s->opts.idle_timeout_ms);
    struct api_conn *next;
    for (struct api_conn *c = s->conns; c; c = next) {
        next = c->next;
        if (c->write_deadline_ns && now >= c->write_deadline_ns) {
            NOTE(s, API_SERVER_WRITE_TIMEOUT, LOG_WARN,
                 "closed a connection whose client left its answers unread for %u ms",
                 s->opts.request_timeout_ms);
            conn_close(c);
        } else if (c->request_deadline_ns && now >= c->request_deadline_ns) {
            NOTE(s, API_SERVER_REQUEST_TIMEOUT, LOG_WARN,
                 "a request did not arrive whole within %u ms: answered 408, closed",
                 s->opts.request_timeout_ms);
            respond_error(c, 408, "the request did not arrive in time");
            c->in_len = c->in_needed = 0;
            c->request_deadline_ns = 0;
            c->more_input = false;
            flush_output(c);
        } else if (idle_ns && c->idle_since_ns && now >= c->idle_since_ns + idle_ns) {
            if (input_waiting(c)) {
                c->idle_since_ns = now; /* a request is arriving: read it, do not close */
                continue;
            }
            NOTE(s, API_SERVER_IDLE_TIMEOUT, LOG_DEBUG, "closed a connection idle for %u ms",
                 s->opts.idle_timeout_ms);
            conn_close(c);
        }
    }
    arm_timer(s);
}

/* When full: closes the connection idle the longest, among those idle since
 * before `before` (so that clients just admitted get their turn to speak).
 * Returns whether one was closed. */
static bool evict_idle(struct api_server *s, uint64_t before)
{
    struct api_conn *oldest = NULL;
    for (struct api_conn *c = s->conns; c; c = c->next) {
        if (c->idle_since_ns && c->idle_since_ns < before && !input_waiting(c) &&
            (!oldest || c->idle_since_ns < oldest->idle_since_ns))
            oldest = c;
    }
    if (!oldest)
        return false;
    NOTE(s, API_SERVER_EVICTED, LOG_INFO,
         "%u connections open: closed one idle for %" PRIu64 " ms to admit a new client", s->nconns,
         (monotonic_ns() - oldest->idle_since_ns) / 1000000);
    conn_close(oldest);
    return true;
}

/* Every connection has a request in progress: the newcomer is told so, as
 * Firecracker tells it (503, Connection: close, a JSON "error"), and closed. */
static void refuse(struct api_server *s, int fd)
{
    NOTE(s, API_SERVER_REFUSED, LOG_WARN,
         "refused a client: %u connections open, each with a request in progress", s->nconns);
    char *body = error_body("error", "too many open connections to the API; try again later");
    char *msg = NULL;
    size_t n = body ? http_format_response(&msg, 503, body, strlen(body), false) : 0;
    if (n) {
        ssize_t ignored = send(fd, msg, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)ignored;
    }
    free(msg);
    free(body);
    /* Read what the client already sent, so that closing does not reset the
     * connection before it has read the answer. */
    char sink[4096];
    for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        ;
    close(fd);
}

static void on_accept(void *opaque, uint32_t events)
{
    struct api_server *s = opaque;
    (void)events;
    uint64_t round_start = monotonic_ns();
    /* Level-triggered: what is left in the backlog comes back next round. */
    for (int turn = 0; turn < ACCEPTS_PER_TURN; turn++) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED) {
                /* Out of descriptors or memory: the connection stays in the backlog and the
                 * level-triggered socket would call us again at once. Pause for a while. */
                log_limited(&s->log_accept, LOG_WARN, "API: accept: %s; pausing for %u ms",
                            strerror(errno), ACCEPT_PAUSE_MS);
                s->accept_resume_ns = monotonic_ns() + ms_to_ns(ACCEPT_PAUSE_MS);
                event_loop_mod(s->loop, s->listen_handler, 0);
            }
            break;
        }
        if (s->nconns >= s->opts.max_connections && !evict_idle(s, round_start)) {
            refuse(s, fd);
            continue;
        }
        struct api_conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->server = s;
        c->fd = fd;
        c->idle_since_ns = monotonic_ns();
        c->handler = event_loop_add(s->loop, fd, EPOLLIN | EPOLLRDHUP, on_conn, c);
        if (!c->handler) {
            close(fd);
            free(c);
            continue;
        }
        c->next = s->conns;
        s->conns = c;
        s->nconns++;
        s->stats.events[API_SERVER_ACCEPTED]++;
    }
    arm_timer(s);
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

void api_server_options_default(struct api_server_options *o)
{
    *o = (struct api_server_options){.max_connections = API_SERVER_MAX_CONNECTIONS,
                                     .request_timeout_ms = API_SERVER_REQUEST_TIMEOUT_MS,
                                     .idle_timeout_ms = API_SERVER_IDLE_TIMEOUT_MS};
}

int api_server_start(struct api_server *s, struct event_loop *loop, const char *path,
                     const struct http_limits *limits, const struct api_server_options *opts,
                     api_request_fn handle, void *opaque)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->listen_fd = s->timer_fd = -1;
    s->limits = *limits;
    if (opts)
        s->opts = *opts;
    else
        api_server_options_default(&s->opts);
    if (!s->opts.max_connections || !s->opts.request_timeout_ms ||
        s->opts.request_timeout_ms > API_SERVER_MAX_TIMEOUT_MS ||
        s->opts.idle_timeout_ms > API_SERVER_MAX_TIMEOUT_MS)
        return error_set("API server: invalid limits (connections %u, timeouts %u ms, %u ms)",
                         s->opts.max_connections, s->opts.request_timeout_ms,
                         s->opts.idle_timeout_ms);
    s->handle = handle;
    s->opaque = opaque;
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
