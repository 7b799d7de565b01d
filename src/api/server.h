/* The API's HTTP server: a unix socket served on the main thread's event
 * loop. Many clients at once, keep-alive, pipelined requests answered in
 * order, limits on every size, and bounds on what a client can hold:
 * - a request must arrive whole within the request timeout (408, closed);
 * - a client must read its answers: one that leaves them unread for the
 *   request timeout is closed;
 * - a connection with no request in progress is closed after the idle
 *   timeout;
 * - at most max_connections are open; when full, the longest-idle one is
 *   closed to admit a newcomer, and only when every connection has a
 *   request in progress is the newcomer refused (503, closed);
 * - a connection's pipelined requests are answered a few at a time, in
 *   turn with every other ready file of the loop. */
#ifndef EMBER_API_SERVER_H
#define EMBER_API_SERVER_H

#include "api/http.h"
#include "util/eventloop.h"
#include "util/log.h"

#include <stdint.h>

#define API_SERVER_MAX_CONNECTIONS    32
#define API_SERVER_REQUEST_TIMEOUT_MS 5000 /* from a request's first byte to its last */
/* Longer than the 90 s Go's HTTP clients keep an idle pooled connection by default, so that
 * such a client retires it first and never sends a request into one being closed. */
/* Idle connections are kept (Firecracker never closes them, and the Go clients
 * that drive it keep theirs forever: closing one could race a PUT the client is
 * writing on it); the connection bound still holds, by closing the one idle the
 * longest to make room. */
#define API_SERVER_IDLE_TIMEOUT_MS 0
#define API_SERVER_MAX_TIMEOUT_MS  86400000u /* one day: the largest timeout accepted */

struct api_server_options {
    unsigned max_connections;
    unsigned request_timeout_ms;
    unsigned idle_timeout_ms; /* 0: idle connections stay until the server is full */
};

/* What happened to connections, counted for the metrics. The ones that end or refuse a
 * connection are also logged, with a rate limit per kind: clients must not flood the log. */
enum api_server_event {
    API_SERVER_ACCEPTED,
    API_SERVER_REFUSED,         /* full, every connection with a request in progress: 503 */
    API_SERVER_EVICTED,         /* the longest-idle connection, closed to admit a new client */
    API_SERVER_IDLE_TIMEOUT,    /* closed after the idle timeout */
    API_SERVER_REQUEST_TIMEOUT, /* a request not whole within the request timeout: 408 */
    API_SERVER_WRITE_TIMEOUT,   /* answers left unread for the request timeout */
    API_SERVER_MALFORMED,       /* a request that is not valid HTTP: 4xx, closed */
    API_SERVER_NEVENTS
};

struct api_server_stats {
    uint64_t events[API_SERVER_NEVENTS];
};

/* The event's name in the metrics' api_server group. */
const char *api_server_event_metric(enum api_server_event e);

/* Answers one request: sets *status and, for a body, *body (malloc'd JSON,
 * freed by the server). */
/* A handler ORs this into *status when the request used something Firecracker
 * deprecates: the answer carries Firecracker's "Deprecation: true" header. */
#define API_STATUS_DEPRECATED (1 << 16)

typedef void (*api_request_fn)(void *opaque, const struct http_request *req, int *status,
                               char **body);

struct api_conn;

struct api_server {
    struct event_loop *loop;
    int listen_fd;
    struct event_handler *listen_handler;
    char *path;
    struct http_limits limits;
    struct api_server_options opts;
    api_request_fn handle;
    void *opaque;
    struct api_conn *conns;
    unsigned nconns;
    int timer_fd; /* one-shot, at the earliest deadline of any connection */
    struct event_handler *timer_handler;
    uint64_t timer_deadline_ns; /* 0: disarmed */
    uint64_t accept_resume_ns;  /* accepting paused (out of descriptors) until then; 0: not */
    struct api_server_stats stats;
    struct log_limit log_limits[API_SERVER_NEVENTS], log_accept;
};

void api_server_options_default(struct api_server_options *o);
/* Creates the socket at path (a stale socket file nobody listens on is
 * replaced; anything else there is an error) and starts accepting. opts
 * NULL: the defaults. */
int api_server_start(struct api_server *s, struct event_loop *loop, const char *path,
                     const struct http_limits *limits, const struct api_server_options *opts,
                     api_request_fn handle, void *opaque);
/* Closes every connection and the socket, and removes the socket file.
 * The counters stay readable. */
void api_server_stop(struct api_server *s);

#endif
