#include "api/http.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void http_limits_default(struct http_limits *l)
{
    *l = (struct http_limits){.max_payload = HTTP_DEFAULT_MAX_PAYLOAD,
                              .max_head = HTTP_DEFAULT_MAX_HEAD,
                              .max_headers = HTTP_DEFAULT_MAX_HEADERS,
                              .max_line = HTTP_DEFAULT_MAX_LINE};
}

static enum http_parse_result fail(struct http_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum http_parse_result fail(struct http_request *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error_message, sizeof(r->error_message), fmt, ap);
    va_end(ap);
    r->error_status = status;
    r->keep_alive = false;
    return HTTP_ERROR;
}

/* RFC 9110 token characters (method and header names). */
static bool is_tchar(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Finds the end of the line starting at p (before end): returns the
 * position of its '\n' or NULL. Bare LF is accepted as a line end. */
static const char *line_end(const char *p, const char *end)
{
    return memchr(p, '\n', (size_t)(end - p));
}

static bool header_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

static void trim(const char **s, const char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t'))
        (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
        (*e)--;
}

/* Whether the comma-separated header value [s, e) holds token `want`. */
static bool value_has_token(const char *s, const char *e, const char *want)
{
    size_t wl = strlen(want);
    while (s < e) {
        const char *comma = memchr(s, ',', (size_t)(e - s));
        const char *ie = comma ? comma : e, *is = s;
        trim(&is, &ie);
        if ((size_t)(ie - is) == wl && strncasecmp(is, want, wl) == 0)
            return true;
        s = comma ? comma + 1 : e;
    }
    return false;
}

static enum http_parse_result parse_request_line(const char *s, const char *e,
                                                 struct http_request *r)
{
    const char *sp1 = memchr(s, ' ', (size_t)(e - s));
    if (!sp1 || sp1 == s)
        return fail(r, 400, "malformed request line");
    size_t mlen = (size_t)(sp1 - s);
    if (mlen >= sizeof(r->method_name))
        return fail(r, 400, "request method too long");
    for (const char *p = s; p < sp1; p++) {
        if (!is_tchar((unsigned char)*p))
            return fail(r, 400, "malformed request method");
    }
    memcpy(r->method_name, s, mlen);
    r->method_name[mlen] = '\0';
    r->method = !strcmp(r->method_name, "GET")     ? HTTP_GET
                : !strcmp(r->method_name, "PUT")   ? HTTP_PUT
                : !strcmp(r->method_name, "PATCH") ? HTTP_PATCH
                                                   : HTTP_OTHER;
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(e - target));
    if (!sp2 || sp2 == target)
        return fail(r, 400, "malformed request line");
    const char *version = sp2 + 1;
    if (e - version != 8 || memcmp(version, "HTTP/1.", 7) != 0 ||
        (version[7] != '0' && version[7] != '1'))
        return fail(r, 400, "unsupported HTTP version (HTTP/1.0 and HTTP/1.1 are)");
    r->minor_version = version[7] - '0';
    r->keep_alive = r->minor_version == 1;
    /* origin-form, or absolute-form as Firecracker's server takes it
     * ("PUT http://localhost/machine-config HTTP/1.1"): the scheme and the
     * authority are skipped, the path is what counts. */
    size_t tlen = (size_t)(sp2 - target);
    size_t scheme = tlen >= 7 && !strncasecmp(target, "http://", 7)    ? 7
                    : tlen >= 8 && !strncasecmp(target, "https://", 8) ? 8
                                                                       : 0;
    if (scheme) {
        const char *slash = memchr(target + scheme, '/', tlen - scheme);
        const char *query = memchr(target + scheme, '?', tlen - scheme);
        if (query && (!slash || query < slash))
            slash = NULL; /* "http://host?x": the path is "/" */
        for (const char *p = target + scheme; p < (slash ? slash : sp2); p++) {
            unsigned char c = (unsigned char)*p;
            if (c <= ' ' || c >= 0x7f)
                return fail(r, 400, "malformed request target");
        }
        if (!slash) {
            strcpy(r->path, "/");
            return HTTP_COMPLETE;
        }
        target = slash;
    }
    if (*target != '/')
        return fail(r, 400,
                    "the request target must be a path starting with '/' or an "
                    "absolute URI");
    const char *query = memchr(target, '?', (size_t)(sp2 - target));
    const char *path_end = query ? query : sp2;
    size_t plen = (size_t)(path_end - target);
    if (plen >= sizeof(r->path))
        return fail(r, 400, "request path longer than %d bytes", HTTP_MAX_PATH - 1);
    for (const char *p = target; p < sp2; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c >= 0x7f)
            return fail(r, 400, "malformed request target");
    }
    memcpy(r->path, target, plen);
    r->path[plen] = '\0';
    return HTTP_COMPLETE;
}

static enum http_parse_result parse_content_length(const char *s, const char *e, size_t *out,
                                                   struct http_request *r)
{
    if (s == e)
        return fail(r, 400, "empty Content-Length");
    uint64_t v = 0;
    for (const char *p = s; p < e; p++) {
        if (!isdigit((unsigned char)*p))
            return fail(r, 400, "malformed Content-Length");
        if (v > (UINT64_MAX - 9) / 10)
            return fail(r, 400, "Content-Length too large");
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *out = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
    return HTTP_COMPLETE;
}

enum http_parse_result http_parse_request(const char *buf, size_t len,
                                          const struct http_limits *lim, struct http_request *r)
{
    memset(r, 0, sizeof(*r));
    const char *p = buf, *end = buf + len;
    /* Tolerate blank lines before a request (RFC 9112, 2.2). */
    while (p < end && (*p == '\r' || *p == '\n') && (size_t)(p - buf) < lim->max_line)
        p++;
    const char *head_start = p;
    size_t head_room =
        (size_t)(end - head_start) < lim->max_head ? (size_t)(end - head_start) : lim->max_head;
    const char *head_end = head_start + head_room;

    const char *nl = line_end(p, head_end);
    if (!nl) {
        if ((size_t)(end - p) > lim->max_line)
            return fail(r, 400, "request line longer than %zu bytes", lim->max_line);
        return HTTP_INCOMPLETE;
    }
    const char *le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
    if ((size_t)(le - p) > lim->max_line)
        return fail(r, 400, "request line longer than %zu bytes", lim->max_line);
    if (parse_request_line(p, le, r) == HTTP_ERROR)
        return HTTP_ERROR;
    p = nl + 1;

    bool have_length = false, chunked = false, conn_close = false, conn_keep = false;
    size_t length = 0;
    unsigned nheaders = 0;
    for (;;) {
        nl = line_end(p, head_end);
        if (!nl) {
            if ((size_t)(end - head_start) >= lim->max_head)
                return fail(r, 400, "request headers larger than %zu bytes", lim->max_head);
            if ((size_t)(end - p) > lim->max_line)
                return fail(r, 400, "header line longer than %zu bytes", lim->max_line);
            return HTTP_INCOMPLETE;
        }
        le = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if ((size_t)(le - p) > lim->max_line)
            return fail(r, 400, "header line longer than %zu bytes", lim->max_line);
        if (le == p) { /* blank line: end of the head */
            p = nl + 1;
            break;
        }
        if (++nheaders > lim->max_headers)
            return fail(r, 400, "more than %u headers", lim->max_headers);
        if (*p == ' ' || *p == '\t')
            return fail(r, 400, "folded header lines are not accepted");
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (!colon || colon == p)
            return fail(r, 400, "malformed header line");
        for (const char *q = p; q < colon; q++) {
            if (!is_tchar((unsigned char)*q))
                return fail(r, 400, "malformed header name");
        }
        const char *vs = colon + 1, *ve = le;
        trim(&vs, &ve);
        for (const char *q = vs; q < ve; q++) {
            if ((unsigned char)*q < ' ' && *q != '\t')
                return fail(r, 400, "control character in a header value");
        }
        size_t nlen = (size_t)(colon - p);
        if (header_is(p, nlen, "Content-Length")) {
            size_t v = 0;
            if (parse_content_length(vs, ve, &v, r) == HTTP_ERROR)
                return HTTP_ERROR;
            if (have_length && v != length)
                return fail(r, 400, "conflicting Content-Length headers");
            have_length = true;
            length = v;
        } else if (header_is(p, nlen, "Transfer-Encoding")) {
            chunked = true;
        } else if (header_is(p, nlen, "Connection")) {
            conn_close |= value_has_token(vs, ve, "close");
            conn_keep |= value_has_token(vs, ve, "keep-alive");
        } else if (header_is(p, nlen, "Expect")) {
            if (!value_has_token(vs, ve, "100-continue"))
                return fail(r, 417, "only 'Expect: 100-continue' is understood");
            r->expect_continue = true;
        }
        p = nl + 1;
    }
    if (chunked)
        return fail(r, 501, "Transfer-Encoding is not supported; send a Content-Length");
    if (length > lim->max_payload)
        return fail(r, 400, "request payload of %zu bytes is larger than the limit of %zu bytes",
                    length, lim->max_payload);
    if (conn_close)
        r->keep_alive = false;
    else if (conn_keep)
        r->keep_alive = true;
    r->head_complete = true;
    r->content_length = length;
    r->needed = (size_t)(p - buf) + length; /* no overflow: length <= max_payload */
    if ((size_t)(end - p) < length)
        return HTTP_INCOMPLETE;
    r->body = length ? p : NULL;
    r->body_len = length;
    r->consumed = r->needed;
    return HTTP_COMPLETE;
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 417:
        return "Expectation Failed";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

size_t http_format_response(char **out, int status, const char *body, size_t body_len,
                            bool keep_alive)
{
    return http_format_response_with(out, status, NULL, body, body_len, keep_alive);
}

size_t http_format_response_with(char **out, int status, const char *extra_headers,
                                 const char *body, size_t body_len, bool keep_alive)
{
    char head[384];
    int n;
    const char *extra = extra_headers ? extra_headers : "";
    if (strlen(extra) > 128)
        return 0;
    if (status == 204 || status == 100)
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: ember API\r\nConnection: %s\r\n%s\r\n", status,
                     http_status_text(status), keep_alive ? "keep-alive" : "close", extra);
    else
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: ember API\r\nConnection: %s\r\n%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     status, http_status_text(status), keep_alive ? "keep-alive" : "close", extra,
                     body_len);
    if (status == 204 || status == 100)
        body_len = 0;
    char *buf = malloc((size_t)n + body_len);
    if (!buf)
        return 0;
    memcpy(buf, head, (size_t)n);
    if (body_len)
        memcpy(buf + n, body, body_len);
    *out = buf;
    return (size_t)n + body_len;
}
