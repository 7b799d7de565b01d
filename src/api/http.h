/* HTTP/1.1 requests as the API server receives them, parsed from a byte
 * buffer without I/O: the caller appends what it read and asks again. A
 * request is either complete (with its length in the buffer), incomplete,
 * or an error that ends the connection. Only Content-Length framing: the
 * API's bodies are small JSON documents. */
#ifndef EMBER_API_HTTP_H
#define EMBER_API_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_PATH            1024
#define HTTP_DEFAULT_MAX_PAYLOAD 51200 /* bytes of body, as Firecracker's default */
#define HTTP_DEFAULT_MAX_HEAD    8192  /* request line and headers together */
#define HTTP_DEFAULT_MAX_HEADERS 64
#define HTTP_DEFAULT_MAX_LINE    2048 /* one request or header line */

struct http_limits {
    size_t max_payload;
    size_t max_head;
    unsigned max_headers;
    size_t max_line;
};

enum http_method { HTTP_GET, HTTP_PUT, HTTP_PATCH, HTTP_OTHER };

enum http_parse_result {
    HTTP_INCOMPLETE, /* need more bytes */
    HTTP_COMPLETE,   /* a whole request; see consumed */
    HTTP_ERROR,      /* answer error_status with error_message, then close */
};

struct http_request {
    enum http_method method;
    char method_name[16];
    char path[HTTP_MAX_PATH]; /* without the query string */
    int minor_version;        /* HTTP/1.x */
    bool keep_alive;
    bool head_complete;   /* the headers are in, even if the body is not */
    bool expect_continue; /* "Expect: 100-continue" */
    size_t content_length;
    const char *body; /* points into the caller's buffer */
    size_t body_len;
    size_t consumed; /* bytes of the buffer this request occupies */
    /* Once the head is in (complete or not): the bytes the whole request occupies, so that a
     * caller holding fewer need not parse again until more have come. */
    size_t needed;
    int error_status;
    char error_message[160];
};

void http_limits_default(struct http_limits *l);
/* Parses the request at the start of buf[0..len). */
enum http_parse_result http_parse_request(const char *buf, size_t len,
                                          const struct http_limits *limits,
                                          struct http_request *req);
const char *http_status_text(int status);
/* Formats a response head (and copies body) into a new malloc'd buffer;
 * returns its length or 0 on allocation failure. */
size_t http_format_response(char **out, int status, const char *body, size_t body_len,
                            bool keep_alive);
/* The same with extra header lines (each ending in "\r\n"; NULL: none). */
size_t http_format_response_with(char **out, int status, const char *extra_headers,
                                 const char *body, size_t body_len, bool keep_alive);

#endif
