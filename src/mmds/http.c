#include "mmds/http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_HEADERS 64

/* ---- framing ------------------------------------------------------------ */

/* The offset just past the empty line that ends the head, or 0. */
static size_t head_end(const uint8_t *b, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (b[i] != '\n')
            continue;
        if (b[i + 1] == '\n')
            return i + 2;
        if (b[i + 1] == '\r' && i + 2 < len && b[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

struct line {
    const char *p;
    size_t len;
};

/* The next line of the head from *pos (without its "\r\n" or "\n"). */
static struct line next_line(const uint8_t *b, size_t end, size_t *pos)
{
    size_t s = *pos, e = s;
    while (e < end && b[e] != '\n')
        e++;
    *pos = e < end ? e + 1 : end;
    size_t n = e - s;
    if (n && b[s + n - 1] == '\r')
        n--;
    return (struct line){(const char *)b + s, n};
}

static struct line trim(struct line l)
{
    while (l.len && (l.p[0] == ' ' || l.p[0] == '\t')) {
        l.p++;
        l.len--;
    }
    while (l.len && (l.p[l.len - 1] == ' ' || l.p[l.len - 1] == '\t'))
        l.len--;
    return l;
}

static bool line_is(struct line l, const char *s)
{
    return l.len == strlen(s) && !memcmp(l.p, s, l.len);
}

static bool name_is(struct line l, const char *s)
{
    return l.len == strlen(s) && !strncasecmp(l.p, s, l.len);
}

/* A decimal number of at most 32 bits, with an optional '+' (as Rust's u32 parser takes it). */
static bool parse_u32(struct line l, uint32_t *out)
{
    size_t i = l.len && l.p[0] == '+' ? 1 : 0;
    if (i == l.len)
        return false;
    uint64_t v = 0;
    for (; i < l.len; i++) {
        if (l.p[i] < '0' || l.p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(l.p[i] - '0');
        if (v > UINT32_MAX)
            return false;
    }
    *out = (uint32_t)v;
    return true;
}

struct header {
    struct line name, value;
};

/* The head's header lines; false when one has no ':'. */
static bool parse_headers(const uint8_t *b, size_t pos, size_t end, struct header *h, unsigned *n,
                          struct line *bad)
{
    *n = 0;
    while (pos < end) {
        struct line l = next_line(b, end, &pos);
        if (l.len == 0)
            break;
        const char *colon = memchr(l.p, ':', l.len);
        if (!colon) {
            *bad = l;
            return false;
        }
        if (*n == MAX_HEADERS)
            continue; /* the rest are not looked at */
        h[*n].name = trim((struct line){l.p, (size_t)(colon - l.p)});
        h[*n].value = trim((struct line){colon + 1, l.len - (size_t)(colon + 1 - l.p)});
        (*n)++;
    }
    return true;
}

enum mmds_http_framing mmds_http_frame(const uint8_t *buf, size_t len, size_t cap, size_t *req_len)
{
    size_t end = head_end(buf, len);
    if (!end)
        return len >= cap ? MMDS_HTTP_TOO_LARGE : MMDS_HTTP_INCOMPLETE;
    struct header h[MAX_HEADERS];
    unsigned n;
    struct line bad;
    uint32_t body = 0;
    size_t pos = 0;
    next_line(buf, end, &pos);
    if (parse_headers(buf, pos, end, h, &n, &bad)) {
        for (unsigned i = 0; i < n; i++) {
            if (name_is(h[i].name, "content-length") && !parse_u32(h[i].value, &body))
                body = 0; /* answered as a bad header */
        }
    }
    if ((uint64_t)end + body > cap)
        return MMDS_HTTP_TOO_LARGE;
    if (end + body > len)
        return MMDS_HTTP_INCOMPLETE;
    *req_len = end + body;
    return MMDS_HTTP_REQUEST;
}

/* ---- answers ------------------------------------------------------------ */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 501:
        return "Not Implemented";
    default:
        return "Internal Server Error";
    }
}

struct answer {
    bool http10;
    bool close;
    bool json;            /* Content-Type */
    bool allow;           /* 405: which methods are */
    struct line ttl_name; /* a token's lifetime header, echoed with the token */
    uint32_t ttl;
};

static bool reply(struct mmds_http_reply *out, const struct answer *a, int status, const char *body)
{
    size_t body_len = strlen(body);
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.%c %d %s\r\nServer: ember\r\nConnection: %s\r\n%sContent-Type: "
                     "%s\r\nContent-Length: %zu\r\n",
                     a->http10 ? '0' : '1', status, reason(status),
                     a->close ? "close" : "keep-alive", a->allow ? "Allow: GET, PUT\r\n" : "",
                     a->json ? "application/json" : "text/plain", body_len);
    if (n < 0 || (size_t)n >= sizeof(head))
        return false;
    if (a->ttl_name.len) {
        /* The name as the client spelt it (one of two, checked), bounded. */
        int m = snprintf(head + n, sizeof(head) - (size_t)n, "%.*s: %u\r\n", (int)a->ttl_name.len,
                         a->ttl_name.p, a->ttl);
        if (m < 0 || (size_t)m >= sizeof(head) - (size_t)n)
            return false;
        n += m;
    }
    size_t len = (size_t)n + 2 + body_len;
    char *data = malloc(len);
    if (!data)
        return false;
    memcpy(data, head, (size_t)n);
    memcpy(data + n, "\r\n", 2);
    memcpy(data + n + 2, body, body_len);
    free(out->data);
    out->data = data;
    out->len = len;
    out->status = status;
    out->close = a->close;
    return true;
}

static bool replyf(struct mmds_http_reply *out, const struct answer *a, int status, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));

static bool replyf(struct mmds_http_reply *out, const struct answer *a, int status, const char *fmt,
                   ...)
{
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    return reply(out, a, status, body);
}

static const struct header *find_header(const struct header *h, unsigned n, const char *a,
                                        const char *b)
{
    for (unsigned i = 0; i < n; i++) {
        if (name_is(h[i].name, a) || (b && name_is(h[i].name, b)))
            return &h[i];
    }
    return NULL;
}

/* The path of the request target: origin form as it is, absolute form without its
 * "http://host". Empty when there is none. */
static struct line target_path(struct line uri)
{
    static const char scheme[] = "http://";
    if (uri.len >= sizeof(scheme) - 1 && !strncasecmp(uri.p, scheme, sizeof(scheme) - 1)) {
        const char *p = uri.p + sizeof(scheme) - 1, *end = uri.p + uri.len;
        while (p < end && *p != '/')
            p++;
        return (struct line){p, (size_t)(end - p)};
    }
    if (uri.len && uri.p[0] == '/')
        return uri;
    return (struct line){uri.p, 0};
}

static bool answer_get(struct mmds_store *s, const struct header *h, unsigned nh, struct line path,
                       uint64_t now_ms, struct answer *a, struct mmds_http_reply *out)
{
    const struct header *tok = find_header(h, nh, "x-metadata-token", "x-aws-ec2-metadata-token");
    bool valid = tok && mmds_token_valid(&s->tokens, tok->value.p, tok->value.len, now_ms);
    if (!tok)
        atomic_fetch_add_explicit(&s->metrics.rx_no_token, 1, memory_order_relaxed);
    else if (!valid)
        atomic_fetch_add_explicit(&s->metrics.rx_invalid_token, 1, memory_order_relaxed);
    if (s->version == MMDS_V2 && !tok)
        return reply(out, a, 401,
                     "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` "
                     "header to specify the session token.");
    if (s->version == MMDS_V2 && !valid)
        return reply(out, a, 401, "MMDS token not valid.");
    const struct header *accept = find_header(h, nh, "accept", NULL);
    enum mmds_format format =
        accept && line_is(accept->value, "application/json") ? MMDS_FORMAT_JSON : MMDS_FORMAT_IMDS;
    char *p = malloc(path.len + 1), *value = NULL;
    if (!p)
        return false;
    memcpy(p, path.p, path.len);
    p[path.len] = '\0';
    enum mmds_result r = mmds_store_lookup_locked(s, p, format, &value);
    free(p);
    switch (r) {
    case MMDS_OK: {
        a->json = format == MMDS_FORMAT_JSON && !s->imds_compat;
        bool ok = reply(out, a, 200, value);
        free(value);
        return ok;
    }
    case MMDS_NOT_FOUND:
        return replyf(out, a, 404, "Resource not found: %.*s.",
                      (int)(path.len > 400 ? 400 : path.len), path.p);
    case MMDS_UNSUPPORTED:
        return reply(out, a, 501, "Cannot retrieve value. The value has an unsupported type.");
    default:
        return false;
    }
}

static bool answer_put(struct mmds_store *s, const struct header *h, unsigned nh, struct line path,
                       uint64_t now_ms, struct answer *a, struct mmds_http_reply *out)
{
    const struct header *fwd = find_header(h, nh, "x-forwarded-for", NULL);
    if (fwd)
        return replyf(out, a, 400, "Invalid header. Reason: Unsupported header name. Key: %.*s",
                      (int)fwd->name.len, fwd->name.p);
    /* The path as a JSON pointer: runs of '/' fold. */
    char folded[sizeof(MMDS_TOKEN_PATH)];
    size_t k = 0;
    bool is_token_path = true;
    for (size_t i = 0; i < path.len && is_token_path; i++) {
        if (path.p[i] == '/' && k && folded[k - 1] == '/')
            continue;
        if (k == sizeof(folded) - 1)
            is_token_path = false;
        else
            folded[k++] = path.p[i];
    }
    folded[k] = '\0';
    if (!is_token_path || strcmp(folded, MMDS_TOKEN_PATH))
        return replyf(out, a, 404, "Resource not found: %.*s.",
                      (int)(path.len > 400 ? 400 : path.len), path.p);
    const struct header *ttl =
        find_header(h, nh, "x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds");
    if (!ttl)
        return reply(out, a, 400,
                     "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or "
                     "`X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's "
                     "lifetime.");
    uint32_t seconds;
    if (!parse_u32(ttl->value, &seconds))
        return replyf(out, a, 400, "Invalid header. Reason: Invalid value. Key:%.*s; Value:%.*s",
                      (int)ttl->name.len, ttl->name.p,
                      (int)(ttl->value.len > 100 ? 100 : ttl->value.len), ttl->value.p);
    char token[MMDS_TOKEN_CHARS + 1];
    if (!mmds_token_issue(&s->tokens, seconds, now_ms, token))
        return replyf(out, a, 400,
                      "Invalid time to live value provided for token: %u. Please provide a value "
                      "between %d and %d.",
                      seconds, MMDS_TOKEN_TTL_MIN, MMDS_TOKEN_TTL_MAX);
    a->ttl_name = ttl->name;
    a->ttl = seconds;
    return reply(out, a, 200, token);
}

bool mmds_http_answer(struct mmds_store *s, const uint8_t *req, size_t len, uint64_t now_ms,
                      struct mmds_http_reply *out)
{
    memset(out, 0, sizeof(*out));
    struct answer a = {0};
    size_t end = head_end(req, len);
    if (!end)
        end = len;
    size_t pos = 0;
    struct line l = next_line(req, end, &pos);
    /* METHOD SP target SP version, nothing else. */
    const char *sp1 = memchr(l.p, ' ', l.len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', l.len - (size_t)(sp1 + 1 - l.p)) : NULL;
    if (!sp1 || !sp2 || memchr(sp2 + 1, ' ', l.len - (size_t)(sp2 + 1 - l.p)))
        return reply(out, &a, 400, "Invalid request.");
    struct line method = {l.p, (size_t)(sp1 - l.p)};
    struct line uri = {sp1 + 1, (size_t)(sp2 - sp1 - 1)};
    struct line version = {sp2 + 1, l.len - (size_t)(sp2 + 1 - l.p)};
    if (line_is(version, "HTTP/1.0"))
        a.http10 = true;
    else if (!line_is(version, "HTTP/1.1"))
        return reply(out, &a, 501, "Unsupported HTTP version.");
    static const char *const known[] = {"GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"};
    bool is_known = false;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        is_known |= line_is(method, known[i]);
    if (!is_known)
        return reply(out, &a, 501, "Unsupported HTTP method.");
    struct header h[MAX_HEADERS];
    unsigned nh;
    struct line bad;
    if (!parse_headers(req, pos, end, h, &nh, &bad))
        return replyf(out, &a, 400, "Invalid header. Reason: Invalid format. Key: %.*s",
                      (int)(bad.len > 100 ? 100 : bad.len), bad.p);
    const struct header *conn = find_header(h, nh, "connection", NULL);
    a.close = conn ? name_is(conn->value, "close") : a.http10;
    if (a.http10 && conn && name_is(conn->value, "keep-alive"))
        a.close = false;
    const struct header *cl = find_header(h, nh, "content-length", NULL);
    uint32_t ignored;
    if (cl && !parse_u32(cl->value, &ignored))
        return replyf(out, &a, 400, "Invalid header. Reason: Invalid value. Key:%.*s; Value:%.*s",
                      (int)cl->name.len, cl->name.p,
                      (int)(cl->value.len > 100 ? 100 : cl->value.len), cl->value.p);
    struct line path = target_path(uri);
    if (path.len == 0)
        return reply(out, &a, 400, "Invalid URI.");
    if (line_is(method, "GET"))
        return answer_get(s, h, nh, path, now_ms, &a, out);
    if (line_is(method, "PUT"))
        return answer_put(s, h, nh, path, now_ms, &a, out);
    a.allow = true;
    return reply(out, &a, 405, "Not allowed HTTP method.");
}
