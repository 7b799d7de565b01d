/* The API's HTTP server: a unix socket served on the main thread's event
 * loop. Many clients at once, keep-alive, pipelined requests answered in
 * order, limits on every size, and a deadline for each request so that a
 * slow client is dropped without holding up the others. */
#ifndef EMBER_API_SERVER_H
#define EMBER_API_SERVER_H

#include "api/http.h"
#include "util/eventloop.h"

#include <stdint.h>

#define API_SERVER_MAX_CONNECTIONS    128
#define API_SERVER_REQUEST_TIMEOUT_MS 5000 /* from a request's first byte to its last */

/* Answers one request: sets *status and, for a body, *body (malloc'd JSON,
 * freed by the server). */
typedef void (*api_request_fn)(void *opaque, const struct http_request *req, int *status,
                               char **body);

struct api_conn;

struct api_server {
    struct event_loop *loop;
    int listen_fd;
    struct event_handler *listen_handler;
    char *path;
    struct http_limits limits;
    api_request_fn handle;
    void *opaque;
    struct api_conn *conns;
    unsigned nconns;
    int timer_fd; /* sweeps deadlines while connections are open */
    struct event_handler *timer_handler;
    bool timer_armed;
    unsigned request_timeout_ms;
    uint64_t dropped_slow, dropped_malformed, rejected_full;
};

/* Creates the socket at path (a stale socket file nobody listens on is
 * replaced; anything else there is an error) and starts accepting. */
int api_server_start(struct api_server *s, struct event_loop *loop, const char *path,
                     const struct http_limits *limits, api_request_fn handle, void *opaque);
/* Closes every connection and the socket, and removes the socket file. */
void api_server_stop(struct api_server *s);

#endif
