/* The API's HTTP parser and its configuration and route validation,
 * without a socket or a machine. */
#include "api/api.h"
#include "api/config.h"
#include "api/cpu_config.h"
#include "api/http.h"
#include "api/server.h"
#include "backends/block.h"
#include "suites.h"
#include "util/error.h"
#include "virtio/vhost_user_dev.h"
#include "util/eventloop.h"
#include "vmm/devices.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static struct http_limits limits;

static enum http_parse_result parse(const char *s, struct http_request *r)
{
    http_limits_default(&limits);
    return http_parse_request(s, strlen(s), &limits, r);
}

/* ---- HTTP ----------------------------------------------------------------- */

START_TEST(http_get_and_put)
{
    struct http_request r;
    ck_assert_int_eq(parse("GET /machine-config?x=1 HTTP/1.1\r\nHost: l\r\n\r\n", &r),
                     HTTP_COMPLETE);
    ck_assert_int_eq(r.method, HTTP_GET);
    ck_assert_str_eq(r.path, "/machine-config");
    ck_assert(r.keep_alive);
    ck_assert_uint_eq(r.body_len, 0);
    const char *put = "PUT /actions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
    ck_assert_int_eq(parse(put, &r), HTTP_COMPLETE);
    ck_assert_int_eq(r.method, HTTP_PUT);
    ck_assert_uint_eq(r.body_len, 2);
    ck_assert(!memcmp(r.body, "{}", 2));
    ck_assert_uint_eq(r.consumed, strlen(put));
    ck_assert_int_eq(parse("DELETE / HTTP/1.1\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert_int_eq(r.method, HTTP_OTHER);
    ck_assert_str_eq(r.method_name, "DELETE");
    /* Bare LF line ends and blank lines before the request are tolerated. */
    ck_assert_int_eq(parse("\r\n\nGET / HTTP/1.1\nA: b\n\n", &r), HTTP_COMPLETE);
}
END_TEST

/* Firecracker's server takes absolute-form targets; the path is what counts. */
START_TEST(http_absolute_form)
{
    struct http_request r;
    ck_assert_int_eq(parse("PUT http://localhost/machine-config?x=1 HTTP/1.1\r\n"
                           "Content-Length: 2\r\n\r\n{}",
                           &r),
                     HTTP_COMPLETE);
    ck_assert_str_eq(r.path, "/machine-config");
    ck_assert_int_eq(parse("GET HTTP://localhost HTTP/1.1\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert_str_eq(r.path, "/");
    ck_assert_int_eq(parse("GET https://h?q HTTP/1.1\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert_str_eq(r.path, "/");
    ck_assert_int_eq(parse("GET ftp://h/ HTTP/1.1\r\n\r\n", &r), HTTP_ERROR);
    ck_assert_int_eq(parse("GET http://h\x01/ HTTP/1.1\r\n\r\n", &r), HTTP_ERROR);
}
END_TEST

START_TEST(http_every_split_is_incomplete)
{
    const char *req =
        "PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\nX-A: b\r\n\r\n{\"state\":\"Paused\"}";
    size_t len = strlen(req);
    struct http_request r;
    http_limits_default(&limits);
    for (size_t i = 0; i < len; i++)
        ck_assert_int_eq(http_parse_request(req, i, &limits, &r), HTTP_INCOMPLETE);
    ck_assert_int_eq(http_parse_request(req, len, &limits, &r), HTTP_COMPLETE);
    ck_assert_uint_eq(r.consumed, len);
}
END_TEST

START_TEST(http_pipelined)
{
    const char *two =
        "PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n";
    struct http_request r;
    http_limits_default(&limits);
    size_t len = strlen(two), off = 0;
    ck_assert_int_eq(http_parse_request(two, len, &limits, &r), HTTP_COMPLETE);
    ck_assert_str_eq(r.path, "/a");
    off += r.consumed;
    ck_assert_int_eq(http_parse_request(two + off, len - off, &limits, &r), HTTP_COMPLETE);
    ck_assert_str_eq(r.path, "/b");
    off += r.consumed;
    ck_assert_int_eq(http_parse_request(two + off, len - off, &limits, &r), HTTP_INCOMPLETE);
}
END_TEST

START_TEST(http_connection_semantics)
{
    struct http_request r;
    ck_assert_int_eq(parse("GET / HTTP/1.0\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert(!r.keep_alive);
    ck_assert_int_eq(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert(r.keep_alive);
    ck_assert_int_eq(parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", &r), HTTP_COMPLETE);
    ck_assert(!r.keep_alive);
    ck_assert_int_eq(
        parse("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", &r),
        HTTP_INCOMPLETE);
    ck_assert(r.head_complete && r.expect_continue);
}
END_TEST

static void expect_error(const char *req, int status, const char *msg)
{
    struct http_request r;
    ck_assert_int_eq(parse(req, &r), HTTP_ERROR);
    ck_assert_int_eq(r.error_status, status);
    ck_assert_msg(strstr(r.error_message, msg), "'%s' lacks '%s'", r.error_message, msg);
    ck_assert(!r.keep_alive);
}

START_TEST(http_malformed)
{
    expect_error("garbage\r\n\r\n", 400, "request line");
    expect_error("GET /\r\n\r\n", 400, "request line");
    expect_error("GET / HTTP/1.1 extra\r\n\r\n", 400, "version");
    expect_error("GET / HTTP/2.0\r\n\r\n", 400, "version");
    expect_error("G(T / HTTP/1.1\r\n\r\n", 400, "method");
    expect_error("GET x HTTP/1.1\r\n\r\n", 400, "'/'");
    expect_error("GET /a\x01 HTTP/1.1\r\n\r\n", 400, "target");
    expect_error("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "header line");
    expect_error("GET / HTTP/1.1\r\n: empty name\r\n\r\n", 400, "header line");
    expect_error("GET / HTTP/1.1\r\nA B: c\r\n\r\n", 400, "header name");
    expect_error("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400, "folded");
    expect_error("GET / HTTP/1.1\r\nA: \x02\r\n\r\n", 400, "control");
    expect_error("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length");
    expect_error("PUT / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400, "Content-Length");
    expect_error("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400,
                 "Content-Length");
    expect_error("PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
                 "conflicting");
    expect_error("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding");
    expect_error("PUT / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417, "100-continue");
}
END_TEST

START_TEST(http_limits_hold)
{
    struct http_request r;
    http_limits_default(&limits);
    /* Too large a body is refused from the head alone, before it arrives. */
    const char *big = "PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n";
    ck_assert_int_eq(http_parse_request(big, strlen(big), &limits, &r), HTTP_ERROR);
    ck_assert_int_eq(r.error_status, 400);
    const char *fits = "PUT / HTTP/1.1\r\nContent-Length: 51200\r\n\r\n";
    ck_assert_int_eq(http_parse_request(fits, strlen(fits), &limits, &r), HTTP_INCOMPLETE);
    limits.max_payload = 10;
    const char *small = "PUT / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
    ck_assert_int_eq(http_parse_request(small, strlen(small), &limits, &r), HTTP_ERROR);

    /* A request line that never ends, headers that never end, too many. */
    http_limits_default(&limits);
    size_t n = limits.max_line + 10;
    char *buf = malloc(limits.max_head * 2 + 256);
    memset(buf, 'a', n);
    memcpy(buf, "GET /", 5);
    ck_assert_int_eq(http_parse_request(buf, n, &limits, &r), HTTP_ERROR);
    int len = sprintf(buf, "GET / HTTP/1.1\r\n");
    while ((size_t)len < limits.max_head + 100)
        len += sprintf(buf + len, "X-Pad: %0200d\r\n", 0);
    ck_assert_int_eq(http_parse_request(buf, (size_t)len, &limits, &r), HTTP_ERROR);
    ck_assert_ptr_nonnull(strstr(r.error_message, "headers"));
    len = sprintf(buf, "GET / HTTP/1.1\r\n");
    for (unsigned i = 0; i <= limits.max_headers; i++)
        len += sprintf(buf + len, "H%u: 1\r\n", i);
    len += sprintf(buf + len, "\r\n");
    ck_assert_int_eq(http_parse_request(buf, (size_t)len, &limits, &r), HTTP_ERROR);
    ck_assert_ptr_nonnull(strstr(r.error_message, "headers"));
    /* A path longer than the buffer for it. */
    len = sprintf(buf, "GET /");
    memset(buf + len, 'p', HTTP_MAX_PATH);
    len += HTTP_MAX_PATH;
    len += sprintf(buf + len, " HTTP/1.1\r\n\r\n");
    ck_assert_int_eq(http_parse_request(buf, (size_t)len, &limits, &r), HTTP_ERROR);
    free(buf);
}
END_TEST

START_TEST(http_response_format)
{
    char *out;
    size_t n = http_format_response(&out, 204, NULL, 0, true);
    ck_assert_uint_gt(n, 0);
    ck_assert(!strncmp(out, "HTTP/1.1 204 No Content\r\n", 25));
    ck_assert(!memcmp(out + n - 4, "\r\n\r\n", 4));
    free(out);
    n = http_format_response(&out, 400, "{\"a\":1}", 7, false);
    ck_assert_ptr_nonnull(memmem(out, n, "Content-Length: 7\r\n", 19));
    ck_assert_ptr_nonnull(memmem(out, n, "Connection: close", 17));
    ck_assert(!memcmp(out + n - 7, "{\"a\":1}", 7));
    free(out);
}
END_TEST

START_TEST(http_needed_once_the_head_is_in)
{
    const char *req = "PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    size_t len = strlen(req), head = len - 10;
    struct http_request r;
    http_limits_default(&limits);
    ck_assert_int_eq(http_parse_request(req, head - 1, &limits, &r), HTTP_INCOMPLETE);
    ck_assert(!r.head_complete);
    for (size_t i = head; i < len; i++) {
        ck_assert_int_eq(http_parse_request(req, i, &limits, &r), HTTP_INCOMPLETE);
        ck_assert(r.head_complete);
        ck_assert_uint_eq(r.needed, len);
    }
    ck_assert_int_eq(http_parse_request(req, len, &limits, &r), HTTP_COMPLETE);
    ck_assert_uint_eq(r.needed, r.consumed);
}
END_TEST

/* ---- the server, stepped one loop round at a time --------------------------- */

struct server_fixture {
    struct event_loop loop;
    struct api_server server;
    char path[64];
};

static void answer_ok(void *opaque, const struct http_request *req, int *status, char **body)
{
    (void)opaque;
    (void)req;
    *status = 200;
    *body = strdup("{}");
}

static void server_up(struct server_fixture *f, unsigned max_connections)
{
    ck_assert_int_eq(event_loop_init(&f->loop), 0);
    snprintf(f->path, sizeof(f->path), "/tmp/ember-unit-api-%d.sock", (int)getpid());
    struct http_limits lim;
    http_limits_default(&lim);
    struct api_server_options opts;
    api_server_options_default(&opts);
    opts.max_connections = max_connections;
    ck_assert_int_eq(api_server_start(&f->server, &f->loop, f->path, &lim, &opts, answer_ok, NULL),
                     0);
}

static void server_down(struct server_fixture *f)
{
    api_server_stop(&f->server);
    event_loop_destroy(&f->loop);
}

/* One round of the loop; it must have something to do (the bound only keeps a broken
 * server from hanging the test). */
static void round_of(struct server_fixture *f)
{
    ck_assert_int_gt(event_loop_run_once(&f->loop, 10000), 0);
}

static int client(struct server_fixture *f)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, f->path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void say(int fd, const char *text)
{
    ck_assert_int_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
}

/* What the server has sent so far, without waiting; *eof when it has closed. */
static size_t heard(int fd, char *buf, size_t cap, bool *eof)
{
    size_t n = 0;
    *eof = false;
    while (n < cap - 1) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, MSG_DONTWAIT);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        *eof = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
    }
    buf[n] = '\0';
    return n;
}

static unsigned count_of(const char *hay, const char *needle)
{
    unsigned n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

START_TEST(server_answers_a_burst_a_turn_at_a_time)
{
    static struct server_fixture f;
    server_up(&f, 4);
    int c = client(&f);
    round_of(&f); /* accepted */
    char burst[40 * 32] = "";
    for (int i = 0; i < 40; i++)
        strcat(burst, "GET / HTTP/1.1\r\n\r\n");
    say(c, burst);
    /* One turn answers 16 of the 40 pipelined requests; the rest wait for later turns,
     * after whatever else the loop has to do. */
    static char buf[65536];
    bool eof;
    round_of(&f);
    heard(c, buf, sizeof(buf), &eof);
    ck_assert_uint_eq(count_of(buf, "HTTP/1.1 200"), 16);
    unsigned total = 16;
    for (int turn = 0; turn < 10 && total < 40; turn++) {
        round_of(&f);
        heard(c, buf, sizeof(buf), &eof);
        total += count_of(buf, "HTTP/1.1 200");
    }
    ck_assert_uint_eq(total, 40);
    ck_assert(!eof);
    close(c);
    server_down(&f);
}
END_TEST

START_TEST(server_full_makes_room_then_refuses)
{
    static struct server_fixture f;
    static char buf[4096];
    bool eof;
    server_up(&f, 2);
    int a = client(&f);
    round_of(&f);
    say(a, "GET / HTTP/1.1\r\n\r\n");
    round_of(&f); /* answered: a is idle */
    int b = client(&f);
    round_of(&f);
    say(b, "GET / HTTP/1.1\r\n"); /* a request in progress */
    round_of(&f);
    /* Full: the idle connection makes room for the newcomer. */
    int c = client(&f);
    round_of(&f);
    heard(a, buf, sizeof(buf), &eof);
    ck_assert(eof);
    say(c, "GET / HTTP/1.1\r\n");
    round_of(&f);
    /* Full, every connection busy: the newcomer is told so and closed. */
    int d = client(&f);
    round_of(&f);
    heard(d, buf, sizeof(buf), &eof);
    ck_assert(!strncmp(buf, "HTTP/1.1 503 ", 13));
    ck_assert_ptr_nonnull(strstr(buf, "Connection: close\r\n"));
    ck_assert_ptr_nonnull(strstr(buf, "\r\n\r\n{\"error\":"));
    ck_assert(eof);
    /* The busy ones were kept. */
    say(b, "\r\n");
    round_of(&f);
    heard(b, buf, sizeof(buf), &eof);
    ck_assert(!strncmp(buf, "HTTP/1.1 200 ", 13));
    const uint64_t *ev = f.server.stats.events;
    ck_assert_uint_eq(ev[API_SERVER_ACCEPTED], 3);
    ck_assert_uint_eq(ev[API_SERVER_EVICTED], 1);
    ck_assert_uint_eq(ev[API_SERVER_REFUSED], 1);
    close(a);
    close(b);
    close(c);
    close(d);
    server_down(&f);
}
END_TEST

/* ---- configuration -------------------------------------------------------- */

static char image[64];

static void make_image(void)
{
    strcpy(image, "/tmp/ember-unit-XXXXXX");
    int fd = mkstemp(image);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
    close(fd);
}

static int put_json(int (*fn)(struct api_config *, const cJSON *), struct api_config *c,
                    const char *text)
{
    cJSON *j = cJSON_Parse(text);
    ck_assert_ptr_nonnull(j);
    int r = fn(c, j);
    cJSON_Delete(j);
    return r;
}

static int put_machine(struct api_config *c, const char *text, bool partial)
{
    cJSON *j = cJSON_Parse(text);
    ck_assert_ptr_nonnull(j);
    int r = api_put_machine_config(c, j, partial);
    cJSON_Delete(j);
    return r;
}

static int put_drive(struct api_config *c, const char *id, const char *fmt)
{
    char text[1024];
    snprintf(text, sizeof(text), fmt, image);
    cJSON *j = cJSON_Parse(text);
    ck_assert_ptr_nonnull(j);
    int r = api_put_drive(c, id, j);
    cJSON_Delete(j);
    return r;
}

#define ck_error_has(s) ck_assert_msg(strstr(error_get(), s), "'%s' lacks '%s'", error_get(), s)

/* Two CPUs this process may run on, or false (one CPU: only the refusals are tested). */
static bool two_cpus(unsigned *a, unsigned *b)
{
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof(s), &s) < 0 || CPU_COUNT(&s) < 2)
        return false;
    unsigned n = 0;
    for (unsigned c = 0; c < CPU_SETSIZE && n < 2; c++) {
        if (CPU_ISSET(c, &s))
            *(n++ ? b : a) = c;
    }
    return true;
}

/* A machine-config body for one vCPU and 64 MiB whose cpu_placement is the JSON value placement. */
static void machine_with_placement(char *text, size_t size, const char *placement)
{
    snprintf(text, size, "{\"vcpu_count\":1,\"mem_size_mib\":64,\"cpu_placement\":%s}", placement);
}

START_TEST(machine_config_cpu_placement)
{
    struct api_config c;
    api_config_init(&c);
    char text[256], machine[128];
    unsigned vmm, vcpu;
    if (two_cpus(&vmm, &vcpu)) {
        char placement[64];
        snprintf(placement, sizeof(placement), "{\"vmm\":\"%u\",\"vcpu\":\"%u\"}", vmm, vcpu);
        machine_with_placement(machine, sizeof(machine), placement);
        ck_assert_msg(put_machine(&c, machine, false) == 0, "%s", error_get());
        ck_assert(c.machine.placement.set);
        ck_assert_uint_eq(c.machine.placement.vcpu[0], vcpu);
        /* GET shows it back in the same words. */
        cJSON *j = api_machine_config_json(&c);
        const cJSON *pl = cJSON_GetObjectItem(j, "cpu_placement");
        ck_assert_ptr_nonnull(pl);
        char want[16];
        snprintf(want, sizeof(want), "%u", vmm);
        ck_assert_str_eq(cJSON_GetObjectItem(pl, "vmm")->valuestring, want);
        snprintf(want, sizeof(want), "%u", vcpu);
        ck_assert_str_eq(cJSON_GetObjectItem(pl, "vcpu")->valuestring, want);
        cJSON_Delete(j);
        /* Onto the machine. */
        struct vm_config vm;
        vm_config_defaults(&vm);
        c.has_boot_source = true;
        c.kernel_path = strdup("k");
        ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
        ck_assert(vm.placement.set);
        ck_assert_uint_eq(vm.placement.vcpu[0], vcpu);
        /* A PATCH keeps it, and must keep the vCPU count agreeing with it. */
        ck_assert_int_eq(put_machine(&c, "{\"mem_size_mib\":128}", true), 0);
        ck_assert(c.machine.placement.set);
        ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2}", true), -1);
        ck_error_has("1 vcpu CPU(s) for 2 vCPU(s)");
        ck_assert_uint_eq(c.machine.vcpu_count, 1);
        /* The configuration file's machine-config takes it the same way. */
        struct api_config doc;
        api_config_init(&doc);
        snprintf(
            text, sizeof(text),
            "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},\"machine-config\":%s}",
            machine);
        ck_assert_msg(api_config_parse_document(&doc, text, strlen(text)) == 0, "%s", error_get());
        ck_assert(doc.machine.placement.set);
        ck_assert_uint_eq(doc.machine.placement.vcpu[0], vcpu);
        api_config_free(&doc);
        /* A PUT without it clears it; GET then shows Firecracker's fields alone. */
        ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2,\"mem_size_mib\":64}", false), 0);
        ck_assert(!c.machine.placement.set);
        j = api_machine_config_json(&c);
        ck_assert_ptr_null(cJSON_GetObjectItem(j, "cpu_placement"));
        cJSON_Delete(j);
    }
    static const struct {
        const char *placement, *error;
    } bad[] = {
        {"{\"vmm\":\"0\",\"vcpu\":\"0\"}", "must not overlap"},
        {"{\"vmm\":\"0\",\"vcpu\":\"1,1\"}", "listed twice"},
        {"{\"vmm\":\"0\",\"vcpu\":\"1000\"}", "does not exist"},
        {"{\"vmm\":\"0\",\"vcpu\":\"5000\"}", "below 1024"},
        {"{\"vmm\":\"0\",\"vcpu\":\"1-2\"}", "for 1 vCPU"},
        {"{\"vmm\":\"0-\",\"vcpu\":\"1\"}", "`cpu_placement`: vmm: an empty item"},
        {"{\"vmm\":\"0\"}", "missing field `vcpu`"},
        {"{\"vmm\":0,\"vcpu\":\"1\"}", "`vmm` must be a string"},
        {"{\"vmm\":\"0\",\"vcpu\":\"1\",\"poll\":\"on\"}", "unknown field `poll`"},
        {"[\"0\",\"1\"]", "`cpu_placement` must be a JSON object"},
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        machine_with_placement(machine, sizeof(machine), bad[i].placement);
        ck_assert_msg(put_machine(&c, machine, false) == -1, "%s taken", bad[i].placement);
        ck_assert_msg(strstr(error_get(), bad[i].error), "%s: '%s' lacks '%s'", bad[i].placement,
                      error_get(), bad[i].error);
        ck_assert(!c.machine.placement.set);
    }
    api_config_free(&c);
}
END_TEST

START_TEST(machine_config_rules)
{
    struct api_config c;
    api_config_init(&c);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":4,\"mem_size_mib\":512}", false), 0);
    ck_assert_uint_eq(c.machine.vcpu_count, 4);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2}", true), 0);
    ck_assert_uint_eq(c.machine.mem_size_mib, 512);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2}", false), -1);
    ck_error_has("mem_size_mib");
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":33,\"mem_size_mib\":128}", false), -1);
    /* SMT: one vCPU or an even number of them. */
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":3,\"mem_size_mib\":128,\"smt\":true}", false),
                     -1);
    ck_error_has("1 or an even number if SMT is enabled");
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":128,\"smt\":true}", false),
                     0);
    ck_assert(c.machine.smt);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":3}", true), -1);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":4}", true), 0);
    ck_assert(c.machine.smt);
    /* PUT without smt turns it off again. */
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":3,\"mem_size_mib\":128}", false), 0);
    ck_assert(!c.machine.smt);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":128,\"smt\":1}", false),
                     -1);
    ck_error_has("true or false");
    ck_assert_int_eq(
        put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":128,\"cpu_template\":\"T3\"}", false),
        -1);
    ck_error_has("unknown `cpu_template`");
    ck_assert_int_eq(
        put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":128,\"cpu_template\":\"T2S\"}", false),
        0);
    ck_assert_str_eq(c.machine.cpu_template, "T2S");
    /* A PUT that leaves the template out keeps it, as in Firecracker. */
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2,\"mem_size_mib\":128}", false), 0);
    ck_assert_str_eq(c.machine.cpu_template, "T2S");
    /* An empty PATCH is refused with Firecracker's words; nulls count as absent. */
    ck_assert_int_eq(put_machine(&c, "{}", true), -1);
    ck_error_has("Empty PATCH request.");
    ck_assert_int_eq(put_machine(&c, "{\"smt\":null}", true), -1);
    ck_assert_int_eq(put_machine(&c, "{\"cpu_template\":\"baseline\"}", true), 0);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":1,\"vcpu_count\":2}", true), -1);
    ck_error_has("duplicate");
    /* A rejected update changes nothing. */
    ck_assert_uint_eq(c.machine.vcpu_count, 2);
    ck_assert_str_eq(c.machine.cpu_template, "baseline");
    /* Firecracker's rules: huge pages need a whole number of 2 MiB pages; the host's RAM is
     * checked at InstanceStart, not here; an empty PATCH is refused. */
    ck_assert_int_eq(
        put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":128,\"huge_pages\":\"2M\"}", false), 0);
    ck_assert_str_eq(c.machine.huge_pages, "2M");
    ck_assert_int_eq(put_machine(&c, "{\"mem_size_mib\":127}", true), -1);
    ck_error_has("multiple of the 2 MiB");
    ck_assert_int_eq(
        put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":127,\"huge_pages\":\"Transparent\"}",
                    false),
        -1);
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":1,\"mem_size_mib\":127}", false), 0);
    ck_assert_int_eq(put_machine(&c, "{}", true), -1);
    ck_error_has("Empty PATCH request.");
    ck_assert_int_eq(
        put_machine(&c,
                    "{\"vcpu_count\":1,\"mem_size_mib\":1099511627776,\"track_dirty_pages\":true}",
                    false),
        0);
    ck_assert(c.machine.track_dirty_pages);
    struct vm_config vm;
    vm_config_defaults(&vm);
    c.has_boot_source = true;
    ck_assert_int_eq(api_config_to_vm(&c, &vm), -1);
    ck_error_has("more than this host's");
    c.has_boot_source = false;
    api_config_free(&c);
}
END_TEST

START_TEST(drives_map_onto_the_machine)
{
    make_image();
    struct api_config c;
    api_config_init(&c);
    ck_assert_int_eq(
        put_drive(&c, "rootfs",
                  "{\"drive_id\":\"rootfs\",\"path_on_host\":\"%s\",\"is_root_device\":"
                  "true,\"partuuid\":\"abcd-01\"}"),
        0);
    ck_assert_int_eq(
        put_drive(&c, "data",
                  "{\"drive_id\":\"data\",\"path_on_host\":\"%s\",\"is_root_device\":"
                  "false,\"is_read_only\":true,\"cache_type\":\"Writeback\",\"io_engine\":"
                  "\"Async\",\"rate_limiter\":{\"bandwidth\":{\"size\":1000,\"refill_time\":"
                  "100,\"one_time_burst\":5},\"ops\":{\"size\":10,\"refill_time\":0}}}"),
        0);
    ck_assert_int_eq(
        put_drive(&c, "x", "{\"drive_id\":\"x\",\"path_on_host\":\"%s\",\"is_root_device\":true}"),
        -1);
    ck_error_has("root device");
    ck_assert_int_eq(
        put_drive(&c, "y", "{\"drive_id\":\"z\",\"path_on_host\":\"%s\",\"is_root_device\":false}"),
        -1);
    ck_assert_int_eq(
        put_drive(&c, NULL,
                  "{\"drive_id\":\"a/b\",\"path_on_host\":\"%s\",\"is_root_device\":false}"),
        -1);
    ck_error_has("invalid id");
    ck_assert_uint_eq(c.ndrives, 2);
    ck_assert_int_eq(put_json(api_put_boot_source, &c, "{\"kernel_image_path\":\"/etc/hostname\"}"),
                     0);

    struct vm_config vm;
    vm_config_defaults(&vm);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_uint_eq(vm.ndrives, 2);
    ck_assert(vm.drives[0].is_root && vm.drives[0].unsafe &&
              vm.drives[0].engine == BLK_ENGINE_SYNC);
    ck_assert_str_eq(vm.drives[0].partuuid, "abcd-01");
    ck_assert(!vm.drives[1].is_root && !vm.drives[1].unsafe &&
              vm.drives[1].engine == BLK_ENGINE_URING);
    ck_assert(vm.drives[1].readonly);
    ck_assert_uint_eq(vm.drives[1].rate_limit.bandwidth.size, 1000);
    ck_assert_uint_eq(vm.drives[1].rate_limit.bandwidth.one_time_burst, 5);
    ck_assert_uint_eq(vm.drives[1].rate_limit.bandwidth.refill_ms, 100);
    ck_assert_uint_eq(vm.drives[1].rate_limit.ops.size, 0); /* never refills: no limit */
    ck_assert_str_eq(vm.kernel_path, "/etc/hostname");

    /* Entropy with a limiter; a network interface maps onto a tap. */
    ck_assert_int_eq(
        put_json(api_put_entropy, &c,
                 "{\"rate_limiter\":{\"bandwidth\":{\"size\":64,\"refill_time\":10}}}"),
        0);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert(vm.rng);
    ck_assert_uint_eq(vm.rng_limit.size, 64);
    cJSON *net = cJSON_Parse("{\"iface_id\":\"eth0\",\"host_dev_name\":\"tap0\","
                             "\"guest_mac\":\"02:00:00:00:00:2a\",\"mtu\":1400,"
                             "\"tx_rate_limiter\":{\"ops\":{\"size\":100,\"refill_time\":1000}}}");
    ck_assert_int_eq(api_put_net(&c, "eth0", net), 0);
    cJSON_Delete(net);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_uint_eq(vm.nnets, 1);
    ck_assert_str_eq(vm.nets[0].tap, "tap0");
    ck_assert_str_eq(vm.nets[0].id, "eth0");
    ck_assert(vm.nets[0].has_mac && vm.nets[0].mac[5] == 0x2a);
    ck_assert_uint_eq(vm.nets[0].mtu, 1400);
    ck_assert_uint_eq(vm.nets[0].tx_limit.ops.size, 100);
    api_config_free(&c);
    unlink(image);
}
END_TEST

/* A vhost-user drive (`socket`), from a configuration file as from PUT /drives. */
START_TEST(vhost_user_drive_in_config)
{
    make_image();
    char sock_path[64];
    snprintf(sock_path, sizeof(sock_path), "/tmp/ember-test-vub-%d.sock", (int)getpid());
    unlink(sock_path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
             "\"drives\":[{\"drive_id\":\"v\",\"socket\":\"%s\",\"is_root_device\":true,"
             "\"cache_type\":\"Writeback\"}]}",
             sock_path);
    struct api_config c;
    api_config_init(&c);
    ck_assert_msg(api_config_parse_document(&c, doc, strlen(doc)) == 0, "%s", error_get());
    struct vm_config vm;
    vm_config_defaults(&vm);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_uint_eq(vm.ndrives, 1);
    ck_assert_str_eq(vm.drives[0].socket, sock_path);
    ck_assert_ptr_null(vm.drives[0].path);
    ck_assert(vm.drives[0].is_root && !vm.drives[0].unsafe);
    ck_assert(vm_config_wants_vhost_user(&vm));
    api_config_free(&c);

    char text[512];
    static const struct {
        const char *fmt, *error;
    } bad[] = {
        {"{\"drive_id\":\"v\",\"is_root_device\":false,\"socket\":\"%s\",\"path_on_host\":"
         "\"%s\"}",
         "exactly one"},
        {"{\"drive_id\":\"v\",\"is_root_device\":false,\"socket\":\"%s\",\"is_read_only\":"
         "false}",
         "is_read_only"},
        {"{\"drive_id\":\"v\",\"is_root_device\":false,\"socket\":\"%s\",\"io_engine\":"
         "\"Async\"}",
         "io_engine"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        api_config_init(&c);
        snprintf(text, sizeof(text), bad[i].fmt, sock_path, image);
        cJSON *j = cJSON_Parse(text);
        ck_assert_ptr_nonnull(j);
        ck_assert_int_eq(api_put_drive(&c, "v", j), -1);
        ck_error_has(bad[i].error);
        cJSON_Delete(j);
        api_config_free(&c);
    }
    /* A path that is no socket. */
    api_config_init(&c);
    ck_assert_int_eq(put_drive(&c, "v",
                               "{\"drive_id\":\"v\",\"is_root_device\":false,"
                               "\"socket\":\"%s\"}"),
                     -1);
    ck_error_has("not a socket");
    api_config_free(&c);
    close(s);
    unlink(sock_path);
    unlink(image);
}
END_TEST

/* A vhost-user network interface (`vhost_user_socket`), from a configuration file as from PUT
 * /network-interfaces: exactly one of it and host_dev_name, no rate limiters or mtu. */
START_TEST(vhost_user_net_in_config)
{
    char sock_path[64];
    snprintf(sock_path, sizeof(sock_path), "/tmp/ember-test-vun-%d.sock", (int)getpid());
    unlink(sock_path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char doc[1024];
    snprintf(doc, sizeof(doc),
             "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
             "\"network-interfaces\":[{\"iface_id\":\"a\",\"vhost_user_socket\":\"%s\","
             "\"guest_mac\":\"02:00:00:00:00:2a\",\"reconnect_s\":7},"
             "{\"iface_id\":\"b\",\"vhost_user_socket\":\"/tmp/ember-test-vun-none\","
             "\"vhost_user_mode\":\"server\"}]}",
             sock_path);
    struct api_config c;
    api_config_init(&c);
    ck_assert_msg(api_config_parse_document(&c, doc, strlen(doc)) == 0, "%s", error_get());
    struct vm_config vm;
    vm_config_defaults(&vm);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_uint_eq(vm.nnets, 2);
    ck_assert_str_eq(vm.nets[0].vhost_user_socket, sock_path);
    ck_assert(!vm.nets[0].vhost_user_server && !vm.nets[0].tap);
    ck_assert_uint_eq(vm.nets[0].reconnect_s, 7);
    ck_assert(vm.nets[0].has_mac && vm.nets[0].mac[5] == 0x2a);
    ck_assert(vm.nets[1].vhost_user_server);
    ck_assert_uint_eq(vm.nets[1].reconnect_s, VHOST_USER_RECONNECT_DEFAULT_S);
    ck_assert(vm_config_wants_vhost_user(&vm));
    api_config_free(&c);

    char text[512];
    static const struct {
        const char *fmt, *error;
    } bad[] = {
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"%s\",\"host_dev_name\":\"t\"}",
         "exactly one"},
        {"{\"iface_id\":\"v\"}", "exactly one"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"%s\",\"mtu\":1500}", "mtu"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"%s\",\"rx_rate_limiter\":"
         "{\"ops\":{\"size\":1,\"refill_time\":1}}}",
         "rx_rate_limiter"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"%s\",\"vhost_user_mode\":\"x\"}",
         "vhost_user_mode"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"%s\",\"reconnect_s\":3601}", "reconnect_s"},
        {"{\"iface_id\":\"v\",\"host_dev_name\":\"t\",\"reconnect_s\":1}", "reconnect_s"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"/etc/hostname\"}", "not a socket"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"/etc/hostname\",\"vhost_user_mode\":"
         "\"server\"}",
         "not a socket"},
        {"{\"iface_id\":\"v\",\"vhost_user_socket\":\"\"}", "empty"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        api_config_init(&c);
        snprintf(text, sizeof(text), bad[i].fmt, sock_path);
        cJSON *j = cJSON_Parse(text);
        ck_assert_ptr_nonnull(j);
        ck_assert_int_eq(api_put_net(&c, "v", j), -1);
        ck_error_has(bad[i].error);
        cJSON_Delete(j);
        api_config_free(&c);
    }
    close(s);
    unlink(sock_path);
}
END_TEST

static int put_pmem(struct api_config *c, const char *id, const char *fmt)
{
    char text[1024];
    snprintf(text, sizeof(text), fmt, image);
    cJSON *j = cJSON_Parse(text);
    ck_assert_ptr_nonnull(j);
    int r = api_put_pmem(c, id, j);
    cJSON_Delete(j);
    return r;
}

START_TEST(pmem_maps_onto_the_machine)
{
    make_image();
    struct api_config c;
    api_config_init(&c);
    ck_assert_int_eq(put_pmem(&c, "p0",
                              "{\"id\":\"p0\",\"path_on_host\":\"%s\",\"root_device\":true,"
                              "\"rate_limiter\":{\"ops\":{\"size\":2,\"refill_time\":1000}}}"),
                     0);
    ck_assert_int_eq(
        put_pmem(&c, "p1", "{\"id\":\"p1\",\"path_on_host\":\"%s\",\"read_only\":true}"), 0);
    /* A second root, a root drive beside a root pmem, an unknown field, a mismatched id. */
    ck_assert_int_eq(
        put_pmem(&c, "p2", "{\"id\":\"p2\",\"path_on_host\":\"%s\",\"root_device\":true}"), -1);
    ck_error_has("A root pmem device already exist");
    ck_assert_int_eq(
        put_drive(&c, "r", "{\"drive_id\":\"r\",\"path_on_host\":\"%s\",\"is_root_device\":true}"),
        -1);
    ck_error_has("root device defined as a pmem device");
    ck_assert_int_eq(put_pmem(&c, "p2", "{\"id\":\"p2\",\"path_on_host\":\"%s\",\"dax\":1}"), -1);
    ck_error_has("unknown field `dax`");
    ck_assert_int_eq(put_pmem(&c, "p3", "{\"id\":\"p2\",\"path_on_host\":\"%s\"}"), -1);
    ck_assert_uint_eq(c.npmem, 2);
    ck_assert_int_eq(put_json(api_put_boot_source, &c, "{\"kernel_image_path\":\"/etc/hostname\"}"),
                     0);
    struct vm_config vm;
    vm_config_defaults(&vm);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_uint_eq(vm.npmem, 2);
    ck_assert_str_eq(vm.pmem[0].id, "p0");
    ck_assert(vm.pmem[0].is_root && !vm.pmem[0].readonly);
    ck_assert_uint_eq(vm.pmem[0].rate_limit.ops.size, 2);
    ck_assert(!vm.pmem[1].is_root && vm.pmem[1].readonly);
    ck_assert_str_eq(vm.pmem[1].path, image);
    /* Shown as Firecracker shows it. */
    cJSON *shown = api_config_json(&c);
    char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(shown, "pmem"));
    char want[1024];
    snprintf(want, sizeof(want),
             "[{\"id\":\"p0\",\"path_on_host\":\"%s\",\"root_device\":true,\"read_only\":false,"
             "\"rate_limiter\":{\"bandwidth\":null,\"ops\":{\"size\":2,\"one_time_burst\":null,"
             "\"refill_time\":1000}}},{\"id\":\"p1\",\"path_on_host\":\"%s\",\"root_device\":"
             "false,\"read_only\":true,\"rate_limiter\":null}]",
             image, image);
    ck_assert_str_eq(text, want);
    free(text);
    cJSON_Delete(shown);
    api_config_free(&c);
    unlink(image);
}
END_TEST

START_TEST(config_document)
{
    make_image();
    char doc[2048];
    snprintf(doc, sizeof(doc),
             "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\",\"boot_args\":\"a=b\"},"
             "\"drives\":[{\"drive_id\":\"r\",\"path_on_host\":\"%s\",\"is_root_device\":true}],"
             "\"machine-config\":{\"vcpu_count\":2,\"mem_size_mib\":64},"
             "\"logger\":{\"level\":\"Trace\",\"show_level\":true},"
             "\"metrics\":{\"metrics_path\":\"/tmp/m\"},\"entropy\":{}}",
             image);
    struct api_config c;
    api_config_init(&c);
    ck_assert_msg(api_config_parse_document(&c, doc, strlen(doc)) == 0, "%s", error_get());
    ck_assert_str_eq(c.boot_args, "a=b");
    ck_assert_uint_eq(c.machine.vcpu_count, 2);
    ck_assert_uint_eq(c.ndrives, 1);
    ck_assert(c.logger.set && c.logger.level == LOG_TRACE && c.logger.show_level);
    ck_assert_str_eq(c.metrics_path, "/tmp/m");
    ck_assert(c.entropy.set);
    api_config_free(&c);

    static const struct {
        const char *doc, *error;
    } bad[] = {
        {"{", "not valid JSON"},
        {"[]", "object"},
        {"{}", "boot-source"},
        {"{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},\"drives\":{}}", "array"},
        {"{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},\"mmds-config\":{}}",
         "network_interfaces"},
        {"{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},\"balloon\":{}}",
         "not supported"},
        {"{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},\"x\":1}", "unknown field"},
        {"{\"boot-source\":{\"kernel_image_path\":\"/nonexistent\"}}", "/nonexistent"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        api_config_init(&c);
        ck_assert_int_eq(api_config_parse_document(&c, bad[i].doc, strlen(bad[i].doc)), -1);
        ck_error_has(bad[i].error);
        api_config_free(&c);
    }
    unlink(image);
}
END_TEST

/* ---- custom CPU templates ---------------------------------------------------- */

static struct cpu_custom_template *parse_cpu(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    ck_assert_msg(j != NULL, "bad JSON in test: %.200s", text);
    struct cpu_custom_template *t = api_parse_cpu_config(j);
    cJSON_Delete(j);
    return t;
}

START_TEST(cpu_config_parsing)
{
    struct cpu_custom_template *t = parse_cpu(
        "{\"kvm_capabilities\":[\"171\",\"!172\"],"
        "\"cpuid_modifiers\":[{\"leaf\":\"0x7\",\"subleaf\":\"0b0\",\"flags\":1,\"modifiers\":["
        "{\"register\":\"ebx\",\"bitmap\":\"0bxxxxxxxxxxxxxxx0xxxxxxxxxxxxxxxx\"},"
        "{\"register\":\"edx\",\"bitmap\":\"0b1_x0\"}]},"
        "{\"leaf\":\"0x80000001\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[]}],"
        "\"msr_modifiers\":[{\"addr\":\"0x10a\",\"bitmap\":\"0b"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx01\"}]}");
    ck_assert_msg(t != NULL, "%s", error_get());
    ck_assert_uint_eq(t->mods.ncaps, 2);
    ck_assert(t->caps[0].cap == 171 && !t->caps[0].remove);
    ck_assert(t->caps[1].cap == 172 && t->caps[1].remove);
    ck_assert_uint_eq(t->mods.ncpuid, 2);
    ck_assert_ptr_eq(t->mods.cpuid, t->cpuid);
    ck_assert(t->cpuid[0].leaf == 7 && t->cpuid[0].subleaf == 0 && t->cpuid[0].flags == 1);
    ck_assert(t->cpuid[0].reg == CPUID_EBX && t->cpuid[0].mask == 1u << 16 && !t->cpuid[0].value);
    ck_assert(t->cpuid[1].reg == CPUID_EDX && t->cpuid[1].mask == 5 && t->cpuid[1].value == 4);
    ck_assert_uint_eq(t->mods.nmsr, 1);
    ck_assert(t->msr[0].index == 0x10a && t->msr[0].mask == 3 && t->msr[0].value == 1);
    free(t);
    /* Everything is optional; an empty template changes nothing. */
    t = parse_cpu("{}");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->mods.ncpuid + t->mods.nmsr + t->mods.ncaps, 0);
    free(t);

    static const struct {
        const char *json, *error;
    } bad[] = {
        {"[]", "object"},
        {"{\"vcpu_features\":[]}", "unknown field `vcpu_features`"},
        {"{\"reg_modifiers\":[]}", "x86_64 template"},
        {"{\"cpuid_modifiers\":[],\"cpuid_modifiers\":[]}", "duplicate"},
        {"{\"kvm_capabilities\":[\"x1\"]}", "not a number"},
        {"{\"kvm_capabilities\":[\"!\"]}", "not a number"},
        {"{\"kvm_capabilities\":[\"99999999999\"]}", "not a number"},
        {"{\"kvm_capabilities\":[5]}", "strings"},
        {"{\"cpuid_modifiers\":{}}", "array"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"flags\":0,\"modifiers\":[]}]}",
         "missing field `subleaf`"},
        {"{\"cpuid_modifiers\":[{\"leaf\":1,\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[]}]}",
         "must be a string"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[]}]"
         "}",
         "prefix"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1g\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[]"
         "}]"
         "}",
         "32-bit"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x100000000\",\"subleaf\":\"0x0\",\"flags\":0,"
         "\"modifiers\":[]}]}",
         "32-bit"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":2,\"modifiers\":[]}"
         "]}",
         "`flags`"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[],"
         "\"x\":1}]}",
         "unknown field `x`"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[{"
         "\"register\":\"rax\",\"bitmap\":\"0b1\"}]}]}",
         "eax, ebx, ecx, edx"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[{"
         "\"register\":\"eax\",\"bitmap\":\"0b12\"}]}]}",
         "cpuid_modifiers[0].modifiers[0]: bitmap"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[{"
         "\"register\":\"eax\",\"bitmap\":\"0b111111111111111111111111111111111\"}]}]}",
         "more than 32 bits"},
        {"{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[{"
         "\"register\":\"eax\"}]}]}",
         "missing field `bitmap`"},
        {"{\"msr_modifiers\":[{\"addr\":\"0x10a\",\"bitmap\":0}]}", "must be a string"},
        {"{\"msr_modifiers\":[{\"addr\":\"0x10a\"}]}", "missing field `bitmap`"},
        {"{\"msr_modifiers\":[{\"addr\":\"0x10a\",\"bitmap\":\"0b1\",\"value\":1}]}",
         "unknown field `value`"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = parse_cpu(bad[i].json);
        ck_assert_msg(t == NULL, "accepted %s", bad[i].json);
        ck_error_has(bad[i].error);
    }
    /* Bounded: more register modifiers than ember keeps are refused. */
    size_t cap = 64 + 128 * (CPU_MODS_MAX_CPUID + 1);
    char *big = malloc(cap);
    size_t n = (size_t)snprintf(big, cap, "{\"cpuid_modifiers\":[");
    for (int i = 0; i <= CPU_MODS_MAX_CPUID; i++)
        n += (size_t)snprintf(big + n, cap - n,
                              "%s{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":"
                              "[{\"register\":\"eax\",\"bitmap\":\"0b1\"}]}",
                              i ? "," : "");
    snprintf(big + n, cap - n, "]}");
    t = parse_cpu(big);
    ck_assert_ptr_null(t);
    ck_error_has("at most");
    free(big);
}
END_TEST

START_TEST(cpu_config_leaves_checked)
{
    struct cpu_custom_template *t = parse_cpu(
        "{\"cpuid_modifiers\":[{\"leaf\":\"0x1\",\"subleaf\":\"0x0\",\"flags\":0,\"modifiers\":[{"
        "\"register\":\"eax\",\"bitmap\":\"0b1\"}]},{\"leaf\":\"0x7\",\"subleaf\":\"0x3\","
        "\"flags\":"
        "1,\"modifiers\":[]}]}");
    ck_assert_ptr_nonnull(t);
    struct kvm_cpuid2 *supported =
        calloc(1, sizeof(*supported) + 2 * sizeof(supported->entries[0]));
    supported->nent = 2;
    supported->entries[0] = (struct kvm_cpuid_entry2){.function = 1};
    supported->entries[1] = (struct kvm_cpuid_entry2){.function = 7, .index = 0, .flags = 1};
    /* Leaf 7 subleaf 3 without register modifiers changes nothing here. */
    ck_assert_int_eq(api_cpu_config_check_leaves(t, supported), 0);
    free(t);
    t = parse_cpu(
        "{\"cpuid_modifiers\":[{\"leaf\":\"0x7\",\"subleaf\":\"0x3\",\"flags\":1,\"modifiers\":[{"
        "\"register\":\"eax\",\"bitmap\":\"0b1\"}]}]}");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(api_cpu_config_check_leaves(t, supported), -1);
    ck_error_has("leaf 0x7 subleaf 0x3");
    free(t);
    free(supported);
}
END_TEST

START_TEST(cpu_config_and_static_template_replace_each_other)
{
    struct api_config c;
    api_config_init(&c);
    ck_assert_int_eq(put_machine(&c, "{\"cpu_template\":\"T2\"}", true), 0);
    api_set_custom_cpu(&c, parse_cpu("{\"kvm_capabilities\":[\"1\"]}"));
    ck_assert_ptr_nonnull(c.custom_cpu);
    ck_assert_str_eq(c.machine.cpu_template, "None");
    /* Leaving the template out keeps the custom one; naming one drops it. */
    ck_assert_int_eq(put_machine(&c, "{\"vcpu_count\":2,\"mem_size_mib\":128}", false), 0);
    ck_assert_ptr_nonnull(c.custom_cpu);
    cJSON *j = api_machine_config_json(&c);
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "cpu_template")); /* as Firecracker shows it */
    cJSON_Delete(j);
    struct vm_config vm;
    vm_config_defaults(&vm);
    c.has_boot_source = true;
    c.kernel_path = strdup("/k");
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_ptr_eq(vm.custom_cpu, &c.custom_cpu->mods);
    ck_assert_int_eq(vm.cpu_template, CPU_TEMPLATE_HOST);
    ck_assert_int_eq(put_machine(&c, "{\"cpu_template\":\"C3\",\"smt\":true}", true), 0);
    ck_assert_ptr_null(c.custom_cpu);
    j = api_machine_config_json(&c);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "cpu_template")->valuestring, "C3");
    cJSON_Delete(j);
    ck_assert_int_eq(api_config_to_vm(&c, &vm), 0);
    ck_assert_ptr_null(vm.custom_cpu);
    ck_assert_int_eq(vm.cpu_template, CPU_TEMPLATE_C3);
    ck_assert(vm.smt);
    api_set_custom_cpu(&c, parse_cpu("{}"));
    ck_assert_int_eq(put_machine(&c, "{\"cpu_template\":\"None\"}", true), 0);
    ck_assert_ptr_null(c.custom_cpu);
    api_config_free(&c);

    /* The configuration file: inline, or the path of a file; after
     * machine-config, so the custom template wins. */
    char path[] = "/tmp/ember-cpu-config-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *tmpl = "{\"msr_modifiers\":[{\"addr\":\"0x10a\",\"bitmap\":\"0b0\"}]}";
    ck_assert_int_eq(write(fd, tmpl, strlen(tmpl)), (ssize_t)strlen(tmpl));
    close(fd);
    char doc[512];
    snprintf(doc, sizeof(doc),
             "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
             "\"machine-config\":{\"vcpu_count\":1,\"mem_size_mib\":64,\"cpu_template\":\"T2\"},"
             "\"cpu-config\":\"%s\"}",
             path);
    api_config_init(&c);
    ck_assert_msg(api_config_parse_document(&c, doc, strlen(doc)) == 0, "%s", error_get());
    ck_assert_ptr_nonnull(c.custom_cpu);
    ck_assert_uint_eq(c.custom_cpu->mods.nmsr, 1);
    ck_assert_str_eq(c.machine.cpu_template, "None");
    api_config_free(&c);
    unlink(path);
    const char *inline_doc = "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
                             "\"cpu-config\":{\"kvm_capabilities\":[\"!1\"]}}";
    api_config_init(&c);
    ck_assert_int_eq(api_config_parse_document(&c, inline_doc, strlen(inline_doc)), 0);
    ck_assert_uint_eq(c.custom_cpu->mods.ncaps, 1);
    api_config_free(&c);
    const char *missing = "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
                          "\"cpu-config\":\"/nonexistent/cpu.json\"}";
    api_config_init(&c);
    ck_assert_int_eq(api_config_parse_document(&c, missing, strlen(missing)), -1);
    ck_error_has("/nonexistent/cpu.json");
    api_config_free(&c);
    const char *wrong = "{\"boot-source\":{\"kernel_image_path\":\"/etc/hostname\"},"
                        "\"cpu-config\":{\"vcpu_features\":[]}}";
    api_config_init(&c);
    ck_assert_int_eq(api_config_parse_document(&c, wrong, strlen(wrong)), -1);
    ck_error_has("vcpu_features");
    api_config_free(&c);
}
END_TEST

/* ---- routes --------------------------------------------------------------- */

static int dispatch(struct api *a, const char *method, const char *path, const char *body,
                    char **out)
{
    free(*out);
    *out = NULL;
    return api_dispatch(a, method, path, body, body ? strlen(body) : 0, out);
}

START_TEST(routes_before_start)
{
    static struct vm vm;
    struct api a;
    ck_assert_int_eq(api_init(&a, NULL, &vm, "unit", false, MMDS_DEFAULT_SIZE_LIMIT), 0);
    char *out = NULL;
    ck_assert_int_eq(dispatch(&a, "GET", "/", NULL, &out), 200);
    ck_assert_ptr_nonnull(strstr(out, "\"Not started\""));
    ck_assert_ptr_nonnull(strstr(out, "\"unit\""));
    ck_assert_int_eq(dispatch(&a, "GET", "/machine-config", NULL, &out), 200);
    ck_assert_int_eq(dispatch(&a, "PATCH", "/machine-config", "{\"vcpu_count\":3}", &out), 204);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(dispatch(&a, "PUT", "/machine-config", "", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "fault_message"));
    ck_assert_int_eq(dispatch(&a, "PUT", "/machine-config", "{", &out), 400);
    ck_assert_int_eq(dispatch(&a, "GET", "/nope", NULL, &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "invalid request method and/or path"));
    ck_assert_int_eq(dispatch(&a, "POST", "/", "{}", &out), 400);
    ck_assert_int_eq(dispatch(&a, "PUT", "/snapshot/load", "{}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "snapshot_path"));
    ck_assert_int_eq(dispatch(&a, "PATCH", "/vm", "{\"state\":\"Paused\"}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "InstanceStart"));
    ck_assert_int_eq(dispatch(&a, "PATCH", "/drives/x", "{\"drive_id\":\"x\"}", &out), 400);
    ck_assert_int_eq(dispatch(&a, "PUT", "/actions", "{\"action_type\":\"SendCtrlAltDel\"}", &out),
                     400);
    ck_assert_int_eq(dispatch(&a, "PUT", "/actions", "{\"action_type\":\"FlushMetrics\"}", &out),
                     400);
    ck_assert_ptr_nonnull(strstr(out, "before starting"));
    /* Firecracker's request rules: slashes around the path do not count, a GET has no body,
     * ids in paths are letters, digits and '_'. */
    ck_assert_int_eq(dispatch(&a, "GET", "//machine-config/", NULL, &out), 200);
    ck_assert_int_eq(dispatch(&a, "GET", "/machine-config", "{}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "GET request cannot have a body"));
    ck_assert_int_eq(
        dispatch(&a, "PUT", "/drives/a-b", "{\"drive_id\":\"a-b\",\"is_root_device\":false}", &out),
        400);
    ck_assert_ptr_nonnull(strstr(out, "alphanumeric characters and underscores"));
    ck_assert_int_eq(
        dispatch(&a, "PATCH", "/network-interfaces/e%C3%A9", "{\"iface_id\":\"e%C3%A9\"}", &out),
        400);
    ck_assert_ptr_nonnull(strstr(out, "alphanumeric"));
    ck_assert(!a.deprecated_request);
    ck_assert_int_eq(dispatch(&a, "PATCH", "/machine-config", "{\"cpu_template\":\"None\"}", &out),
                     204);
    ck_assert(a.deprecated_request);
    ck_assert_int_eq(dispatch(&a, "PUT", "/actions", "{\"action_type\":\"InstanceStart\"}", &out),
                     400);
    ck_assert_ptr_nonnull(strstr(out, "boot source"));
    ck_assert_int_eq(dispatch(&a, "PUT", "/vsock", "{\"guest_cid\":3,\"uds_path\":\"/v\"}", &out),
                     204);
    /* Any 32-bit CID, as Firecracker (firecracker-containerd sends 0). */
    ck_assert_int_eq(dispatch(&a, "PUT", "/vsock", "{\"guest_cid\":0,\"uds_path\":\"/v\"}", &out),
                     204);
    ck_assert_int_eq(
        dispatch(&a, "PUT", "/vsock", "{\"guest_cid\":4294967296,\"uds_path\":\"/v\"}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "guest_cid"));
    ck_assert_int_eq(dispatch(&a, "GET", "/vm/config", NULL, &out), 200);
    ck_assert_ptr_nonnull(strstr(out, "\"vcpu_count\":3"));
    ck_assert_int_eq(dispatch(&a, "PATCH", "/machine-config", "{}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "Empty PATCH request."));
    ck_assert_int_eq(dispatch(&a, "PUT", "/cpu-config", "{\"cpuid_modifiers\":[]}", &out), 204);
    ck_assert_ptr_nonnull(a.cfg.custom_cpu);
    ck_assert_int_eq(dispatch(&a, "PUT", "/cpu-config", "{\"vcpu_features\":[]}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "vcpu_features"));
    ck_assert_int_eq(dispatch(&a, "GET", "/cpu-config", NULL, &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "invalid request method and/or path"));
    /* Requests are counted by route and status; ids and unknown paths fold. */
    cJSON *m = api_metrics_snapshot(&a.metrics, NULL);
    cJSON *api = cJSON_GetObjectItem(m, "api_server");
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(api, "GET /"), "200")->valueint, 1);
    ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(api, "other"), "400")->valueint, 2);
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(api, "PATCH /drives/{drive_id}"));
    cJSON_Delete(m);
    free(out);
    api_finish(&a, 0);
}
END_TEST

START_TEST(mmds_routes)
{
    static struct vm vm;
    struct api a;
    ck_assert_int_eq(api_init(&a, NULL, &vm, "unit", false, 64), 0);
    char *out = NULL;
    ck_assert_int_eq(dispatch(&a, "GET", "/mmds", NULL, &out), 200);
    ck_assert_str_eq(out, "{}");
    ck_assert_int_eq(dispatch(&a, "PATCH", "/mmds", "{\"a\":1}", &out), 400);
    ck_assert_ptr_nonnull(strstr(out, "MMDS error: The MMDS data store is not initialized."));
    ck_assert_int_eq(dispatch(&a, "PUT", "/mmds", "{\"b\":{\"y\":2,\"x\":1},\"a\":\"z\"}", &out),
                     204);
    ck_assert_int_eq(dispatch(&a, "PATCH", "/mmds", "{\"b\":{\"y\":null}}", &out), 204);
    ck_assert_int_eq(dispatch(&a, "GET", "/mmds", NULL, &out), 200);
    ck_assert_str_eq(out, "{\"a\":\"z\",\"b\":{\"x\":1}}");
    /* 64 bytes at most, as --mmds-size-limit 64 would say. */
    ck_assert_int_eq(dispatch(&a, "PATCH", "/mmds",
                              "{\"c\":\"0123456789012345678901234567890123456789012345678901234\"}",
                              &out),
                     413);
    ck_assert_ptr_nonnull(strstr(out, "MMDS limit exceeded error"));
    ck_assert_int_eq(dispatch(&a, "DELETE", "/mmds", NULL, &out), 400);
    ck_assert_int_eq(dispatch(&a, "PUT", "/mmds/config", "{\"network_interfaces\":[\"e\"]}", &out),
                     400);
    ck_assert_ptr_nonnull(strstr(out, "MMMDS config error: The list of network interface IDs "
                                      "provided contains at least one ID"));
    ck_assert_int_eq(dispatch(&a, "PUT", "/network-interfaces/e",
                              "{\"iface_id\":\"e\",\"host_dev_name\":\"t0\"}", &out),
                     204);
    ck_assert_int_eq(dispatch(&a, "PUT", "/mmds/config",
                              "{\"network_interfaces\":[\"e\"],\"ipv4_address\":\"169.254.0.9\"}",
                              &out),
                     400);
    ck_assert_ptr_nonnull(strstr(out, "not link local"));
    ck_assert_int_eq(dispatch(&a, "PUT", "/mmds/config",
                              "{\"network_interfaces\":[\"e\",\"e\"],\"version\":\"V2\","
                              "\"ipv4_address\":\"169.254.1.2\",\"imds_compat\":true}",
                              &out),
                     204);
    ck_assert_int_eq(a.mmds.version, MMDS_V2);
    ck_assert(a.mmds.imds_compat);
    ck_assert_uint_eq(a.cfg.mmds.nifaces, 1);
    ck_assert_uint_eq(a.cfg.mmds.ipv4, 0xa9fe0102u);
    struct vm_config vc;
    vm_config_defaults(&vc);
    ck_assert_int_eq(
        dispatch(&a, "PUT", "/boot-source", "{\"kernel_image_path\":\"/etc/hostname\"}", &out),
        204);
    ck_assert_int_eq(api_config_to_vm(&a.cfg, &vc), 0);
    ck_assert_uint_eq(vc.nets[0].mmds_ipv4, 0xa9fe0102u);
    ck_assert_int_eq(dispatch(&a, "GET", "/vm/config", NULL, &out), 200);
    ck_assert_ptr_nonnull(strstr(out,
                                 "\"mmds-config\":{\"version\":\"V2\",\"network_interfaces\":"
                                 "[\"e\"],\"ipv4_address\":\"169.254.1.2\",\"imds_compat\":true}"));
    free(out);
    api_finish(&a, 0);
}
END_TEST

static cJSON *api_group(const char *line)
{
    cJSON *o = cJSON_Parse(line);
    ck_assert_ptr_nonnull(o);
    cJSON *api = cJSON_DetachItemFromObject(o, "api_server");
    cJSON_Delete(o);
    ck_assert_ptr_nonnull(api);
    return api;
}

static double number(cJSON *o, const char *key)
{
    cJSON *n = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(cJSON_IsNumber(n), "no number %s", key);
    return n->valuedouble;
}

/* Firecracker's start-up figures are gauges: every line has them as they are, while the
 * counters beside them are changes since the line before. */
START_TEST(metrics_startup_gauges)
{
    char path[] = "/tmp/ember-unit-metrics-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    struct api_metrics m;
    api_metrics_init(&m);
    ck_assert_int_eq(api_metrics_open(&m, path), 0);
    api_metrics_set_startup(&m, 1234, 56);
    api_metrics_count_request(&m, "GET /", 200);
    ck_assert_int_eq(api_metrics_flush(&m, NULL), 0);
    ck_assert_int_eq(api_metrics_flush(&m, NULL), 0);
    api_metrics_close(&m);
    static char text[1 << 17];
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    unlink(path);
    text[n] = '\0';
    char *second = strchr(text, '\n');
    ck_assert_ptr_nonnull(second);
    *second++ = '\0';
    cJSON *a1 = api_group(text), *a2 = api_group(second);
    ck_assert(number(a1, "process_startup_time_us") == 1234);
    ck_assert(number(a1, "process_startup_time_cpu_us") == 56);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(a1, "GET /"), "200") == 1);
    ck_assert(number(a2, "process_startup_time_us") == 1234);
    ck_assert(number(a2, "process_startup_time_cpu_us") == 56);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(a2, "GET /"), "200") == 0);
    cJSON_Delete(a1);
    cJSON_Delete(a2);
}
END_TEST

/* Firecracker's per-route counters come from the requests by route and status, as changes
 * since the line before; every value is printed as the exact integer (no exponent, however
 * large); a counter that seems to step back reports no change. */
START_TEST(metrics_firecracker_names)
{
    char path[] = "/tmp/ember-unit-metrics-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    struct api_metrics m;
    api_metrics_init(&m);
    ck_assert_int_eq(api_metrics_open(&m, path), 0);
    api_metrics_set_startup(&m, UINT64_MAX - 1, 0);
    api_metrics_count_request(&m, "PUT /drives/{drive_id}", 204);
    api_metrics_count_request(&m, "PUT /drives/{drive_id}", 204);
    api_metrics_count_request(&m, "PUT /drives/{drive_id}", 400);
    api_metrics_count_request(&m, "PUT /mmds/config", 400);
    api_metrics_count_request(&m, "PATCH /mmds", 204);
    api_metrics_count_request(&m, "GET /", 400);
    api_metrics_count_deprecated(&m);
    ck_assert_int_eq(api_metrics_flush(&m, NULL), 0);
    api_metrics_count_request(&m, "PUT /drives/{drive_id}", 204);
    ck_assert_int_eq(api_metrics_flush(&m, NULL), 0);
    api_metrics_close(&m);
    static char text[1 << 17];
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    unlink(path);
    text[n] = '\0';
    char *second = strchr(text, '\n');
    ck_assert_ptr_nonnull(second);
    *second++ = '\0';
    ck_assert_ptr_nonnull(strstr(text, "\"process_startup_time_us\":18446744073709551614,"));
    ck_assert_ptr_nonnull(strstr(second, "\"process_startup_time_us\":18446744073709551614,"));
    cJSON *l1 = cJSON_Parse(text), *l2 = cJSON_Parse(second);
    ck_assert_ptr_nonnull(l1);
    ck_assert_ptr_nonnull(l2);
    cJSON *put1 = cJSON_GetObjectItemCaseSensitive(l1, "put_api_requests");
    cJSON *put2 = cJSON_GetObjectItemCaseSensitive(l2, "put_api_requests");
    ck_assert(number(put1, "drive_count") == 3 && number(put1, "drive_fails") == 1);
    ck_assert(number(put1, "mmds_count") == 1 && number(put1, "mmds_fails") == 1);
    ck_assert(number(put2, "drive_count") == 1 && number(put2, "drive_fails") == 0);
    ck_assert(number(put2, "mmds_count") == 0);
    cJSON *patch1 = cJSON_GetObjectItemCaseSensitive(l1, "patch_api_requests");
    ck_assert(number(patch1, "mmds_count") == 1 && number(patch1, "mmds_fails") == 0);
    cJSON *get1 = cJSON_GetObjectItemCaseSensitive(l1, "get_api_requests");
    ck_assert(number(get1, "instance_info_count") == 1 && number(get1, "instance_info_fails") == 1);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(l1, "deprecated_api"),
                     "deprecated_http_api_calls") == 1);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(l2, "deprecated_api"),
                     "deprecated_http_api_calls") == 0);
    /* Groups of devices the machine does not have are there, all 0. */
    cJSON *block = cJSON_GetObjectItemCaseSensitive(l1, "block");
    ck_assert(number(block, "read_count") == 0);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(block, "read_agg"), "sum_us") == 0);
    ck_assert(number(cJSON_GetObjectItemCaseSensitive(l1, "vsock"), "conns_added") == 0);
    cJSON_Delete(l1);
    cJSON_Delete(l2);
}
END_TEST

/* A FIFO nobody reads yet opens; a line longer than the FIFO has room for is
 * finished before the next one is written, so the reader only ever gets
 * whole lines; lines that find no room at all are dropped and counted. */
START_TEST(metrics_fifo_lines_stay_whole)
{
    char dir[] = "/tmp/ember-unit-fifo-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/metrics", dir);
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    struct api_metrics m;
    api_metrics_init(&m);
    ck_assert_int_eq(api_metrics_open(&m, path), 0);
    int reader = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ck_assert_int_ge(reader, 0);
    ck_assert_int_eq(fcntl(reader, F_SETPIPE_SZ, 4096), 4096);
    /* Lines of several KiB: many routes. */
    for (int i = 0; i < 150; i++) {
        char route[48];
        snprintf(route, sizeof(route), "GET /route-%d", i);
        api_metrics_count_request(&m, route, 200);
    }
    ck_assert_int_eq(api_metrics_flush(&m, NULL), 0); /* taken in part */
    ck_assert_ptr_nonnull(m.pending);
    ck_assert_int_eq(api_metrics_flush(&m, NULL), -1); /* no room: dropped */
    static char data[1 << 16];
    size_t len = 0;
    for (int round = 0; round < 64 && len < sizeof(data) / 2; round++) {
        ssize_t n;
        while ((n = read(reader, data + len, sizeof(data) - 1 - len)) > 0)
            len += (size_t)n;
        api_metrics_flush(&m, NULL);
    }
    data[len] = '\0';
    unsigned lines = 0;
    for (char *line = data, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = '\0';
        cJSON *o = cJSON_Parse(line);
        ck_assert_msg(o != NULL, "line %u is not whole JSON", lines);
        cJSON_Delete(o);
        lines++;
    }
    ck_assert_uint_ge(lines, 2);
    ck_assert_uint_ge(m.lines_lost, 1);
    api_metrics_close(&m);
    close(reader);
    unlink(path);
    rmdir(dir);
}
END_TEST

Suite *api_suite(void)
{
    Suite *s = suite_create("api");
    TCase *t = tcase_create("http");
    tcase_add_test(t, http_get_and_put);
    tcase_add_test(t, http_absolute_form);
    tcase_add_test(t, http_every_split_is_incomplete);
    tcase_add_test(t, http_pipelined);
    tcase_add_test(t, http_connection_semantics);
    tcase_add_test(t, http_malformed);
    tcase_add_test(t, http_limits_hold);
    tcase_add_test(t, http_response_format);
    tcase_add_test(t, http_needed_once_the_head_is_in);
    suite_add_tcase(s, t);
    t = tcase_create("server");
    tcase_add_test(t, server_answers_a_burst_a_turn_at_a_time);
    tcase_add_test(t, server_full_makes_room_then_refuses);
    suite_add_tcase(s, t);
    t = tcase_create("config");
    tcase_add_test(t, machine_config_rules);
    tcase_add_test(t, machine_config_cpu_placement);
    tcase_add_test(t, drives_map_onto_the_machine);
    tcase_add_test(t, vhost_user_drive_in_config);
    tcase_add_test(t, vhost_user_net_in_config);
    tcase_add_test(t, pmem_maps_onto_the_machine);
    tcase_add_test(t, config_document);
    tcase_add_test(t, cpu_config_parsing);
    tcase_add_test(t, cpu_config_leaves_checked);
    tcase_add_test(t, cpu_config_and_static_template_replace_each_other);
    tcase_add_test(t, routes_before_start);
    tcase_add_test(t, mmds_routes);
    tcase_add_test(t, metrics_startup_gauges);
    tcase_add_test(t, metrics_firecracker_names);
    tcase_add_test(t, metrics_fifo_lines_stay_whole);
    suite_add_tcase(s, t);
    return s;
}
