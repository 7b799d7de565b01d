/* The guest's side of MMDS over HTTP/1.x: one request in, one answer out, as Firecracker's
 * metadata service answers. GET reads the data store at the request's path (JSON with
 * `Accept: application/json`, the IMDS text format otherwise); PUT /latest/api/token issues a
 * V2 session token; under V2 a GET needs a valid token (`X-metadata-token` or
 * `X-aws-ec2-metadata-token`), under V1 it is only counted. Everything the guest sends is
 * hostile: any byte sequence gets a well-formed answer or none. No I/O here. */
#ifndef EMBER_MMDS_HTTP_H
#define EMBER_MMDS_HTTP_H

#include "mmds/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MMDS_TOKEN_PATH "/latest/api/token"

enum mmds_http_framing {
    MMDS_HTTP_INCOMPLETE, /* more bytes are needed */
    MMDS_HTTP_REQUEST,    /* a request of *len bytes (head and body) is there */
    MMDS_HTTP_TOO_LARGE,  /* the request cannot fit in cap bytes */
};

/* Where the first request in buf ends: its head ends at the first empty line; a body of
 * Content-Length bytes follows. A request that would need more than cap bytes is too large. */
enum mmds_http_framing mmds_http_frame(const uint8_t *buf, size_t len, size_t cap, size_t *req_len);

struct mmds_http_reply {
    char *data; /* the whole answer, malloc'd */
    size_t len;
    int status;
    bool close; /* the client asked to close after it */
};

/* Answers the request req[0..len) (as mmds_http_frame delimited it) from the store, at
 * now_ms (token expiry). False only without memory. */
bool mmds_http_answer(struct mmds_store *s, const uint8_t *req, size_t len, uint64_t now_ms,
                      struct mmds_http_reply *out);

#endif
