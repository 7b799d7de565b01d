/* libFuzzer target: the API's HTTP request parser on arbitrary bytes, fed
 * as the server feeds it: whole, then in two pieces, consuming pipelined
 * requests one after another. Small limits make every limit reachable. */
#include "api/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_request(const struct http_request *r, size_t len)
{
    if (r->consumed == 0 || r->consumed > len || strlen(r->path) >= sizeof(r->path))
        abort();
    if (r->body_len && (!r->body || r->body_len != r->content_length))
        abort();
    if (r->needed != r->consumed)
        abort();
}

/* An incomplete request whose head is in says how many bytes it needs: more than it has. */
static void check_incomplete(const struct http_request *r, size_t len)
{
    if (r->head_complete && r->needed <= len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct http_limits lim;
    http_limits_default(&lim);
    if (data[0] & 1) {
        lim.max_payload = 64;
        lim.max_head = 256;
        lim.max_headers = 4;
        lim.max_line = 64;
    }
    size_t split = size > 1 ? data[0] % size : 0;
    data++;
    size--;
    /* A private copy: ASan then sees any read past the end. */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    struct http_request r;
    size_t off = 0;
    while (off < size) {
        /* The same result whether the bytes came at once or in two reads. */
        if (split > off && split < size) {
            enum http_parse_result part = http_parse_request(buf + off, split - off, &lim, &r);
            if (part == HTTP_COMPLETE)
                check_request(&r, split - off);
            else if (part == HTTP_INCOMPLETE)
                check_incomplete(&r, split - off);
        }
        enum http_parse_result res = http_parse_request(buf + off, size - off, &lim, &r);
        if (res == HTTP_INCOMPLETE)
            check_incomplete(&r, size - off);
        if (res != HTTP_COMPLETE)
            break;
        check_request(&r, size - off);
        off += r.consumed;
    }
    free(buf);
    return 0;
}
