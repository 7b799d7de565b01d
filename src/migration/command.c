#include "migration/command.h"

#include "util/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define ANSWER_MAX 8192

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ember migrate --from SOCK --to SOCK --url URL [--downtime-ms N]\n"
            "                     [--timeout-s N] [--max-rounds N] [--local]\n"
            "  --from SOCK       the API socket of the ember running the machine\n"
            "  --to SOCK         the API socket of a new ember (nothing configured) to take it\n"
            "  --url URL         where the two meet: unix:PATH, or tcp:HOST:PORT (the\n"
            "                    destination listens there, the source connects)\n"
            "  --downtime-ms N   stop the guest once what is left takes about this long to\n"
            "                    send (default 300)\n"
            "  --timeout-s N     give up after this long; the source keeps running (default 120)\n"
            "  --max-rounds N    stop the guest after this many memory passes (default 30)\n"
            "  --local           same host: hand guest memory over (the source needs\n"
            "                    --memory SIZE,shared=on) instead of copying it\n"
            "  --network-override ID=TAP   the destination attaches interface ID to this tap\n"
            "                    (repeatable; over TCP, where nothing is handed over)\n"
            "  --vsock-override PATH       the destination's vsock socket\n");
}

struct call {
    const char *sock, *path;
    char body[8192]; /* 16 overrides of 100-byte names fit */
    unsigned timeout_s;
    int status;
    char answer[ANSWER_MAX];
};

/* One HTTP request on a new connection to a unix socket; the status, or -1. */
static int http_put(struct call *c)
{
    c->status = -1;
    c->answer[0] = '\0';
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(c->sock) >= sizeof(a.sun_path))
        return error_set("%s: socket path too long", c->sock);
    memcpy(a.sun_path, c->sock, strlen(c->sock));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno("socket");
    struct timeval tv = {.tv_sec = c->timeout_s + 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        error_errno("cannot connect to %s", c->sock);
        close(fd);
        return -1;
    }
    char req[8192 + 512];
    int n = snprintf(req, sizeof(req),
                     "PUT %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     c->path, strlen(c->body), c->body);
    if (n < 0 || (size_t)n >= sizeof(req) || write(fd, req, (size_t)n) != n) {
        error_errno("cannot send the request to %s", c->sock);
        close(fd);
        return -1;
    }
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, c->answer + got, sizeof(c->answer) - 1 - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
        if (got == sizeof(c->answer) - 1)
            break;
    }
    close(fd);
    c->answer[got] = '\0';
    if (sscanf(c->answer, "HTTP/1.1 %d", &c->status) != 1)
        return error_set("%s answered no HTTP status%s", c->sock, got ? "" : " (no answer)");
    return c->status;
}

static const char *answer_body(const struct call *c)
{
    const char *b = strstr(c->answer, "\r\n\r\n");
    return b && b[4] ? b + 4 : "";
}

static void *receive_thread(void *arg)
{
    struct call *c = arg;
    if (http_put(c) < 0)
        snprintf(c->answer, sizeof(c->answer), "%s", error_get());
    return NULL;
}

static int number(const char *opt, const char *v, unsigned max, unsigned *out)
{
    char *end;
    unsigned long n = strtoul(v ? v : "", &end, 10);
    if (!v || !*v || *end || n == 0 || n > max) {
        fprintf(stderr, "ember migrate: %s needs a whole number from 1 to %u\n", opt, max);
        return -1;
    }
    *out = (unsigned)n;
    return 0;
}

int migration_command(int argc, char **argv)
{
    const char *from = NULL, *to = NULL, *url = NULL, *vsock = NULL;
    const char *nets[16];
    unsigned nnets = 0;
    unsigned downtime = 0, timeout = 120, rounds = 0;
    bool local = false;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(o, "--local")) {
            local = true;
            continue;
        }
        int r = 0;
        if (!strcmp(o, "--from"))
            from = v;
        else if (!strcmp(o, "--to"))
            to = v;
        else if (!strcmp(o, "--url"))
            url = v;
        else if (!strcmp(o, "--vsock-override"))
            vsock = v;
        else if (!strcmp(o, "--network-override")) {
            if (nnets == 16 || (v && !strchr(v, '='))) {
                fprintf(stderr, "ember migrate: --network-override ID=TAP, at most 16\n");
                return 2;
            }
            nets[nnets++] = v;
        } else if (!strcmp(o, "--downtime-ms"))
            r = number(o, v, 3600000, &downtime);
        else if (!strcmp(o, "--timeout-s"))
            r = number(o, v, 86400, &timeout);
        else if (!strcmp(o, "--max-rounds"))
            r = number(o, v, 1000, &rounds);
        else {
            fprintf(stderr, "ember migrate: unknown option '%s'\n", o);
            usage(stderr);
            return 2;
        }
        if (r < 0)
            return 2;
        if (!v) {
            fprintf(stderr, "ember migrate: %s needs a value\n", o);
            return 2;
        }
        i++;
    }
    if (!from || !to || !url) {
        usage(stderr);
        return 2;
    }
    /* What goes into the JSON bodies as it is: no quotes, no escapes, bounded. */
    const char *texts[18] = {url, vsock};
    for (unsigned i = 0; i < nnets; i++)
        texts[2 + i] = nets[i];
    for (unsigned i = 0; i < 2 + nnets; i++) {
        if (texts[i] &&
            (strchr(texts[i], '"') || strchr(texts[i], '\\') || strlen(texts[i]) > 100)) {
            fprintf(stderr, "ember migrate: '%s' is not usable here\n", texts[i]);
            return 2;
        }
    }
    static struct call recv_call, send_call;
    recv_call = (struct call){.sock = to, .path = "/migration/receive", .timeout_s = timeout};
    size_t rl = (size_t)snprintf(recv_call.body, sizeof(recv_call.body),
                                 "{\"receiver_url\": \"%s\", \"timeout_s\": %u", url, timeout);
    if (vsock)
        rl += (size_t)snprintf(recv_call.body + rl, sizeof(recv_call.body) - rl,
                               ", \"vsock_override\": {\"uds_path\": \"%s\"}", vsock);
    for (unsigned i = 0; i < nnets; i++) {
        const char *eq = strchr(nets[i], '=');
        rl += (size_t)snprintf(recv_call.body + rl, sizeof(recv_call.body) - rl,
                               "%s{\"iface_id\": \"%.*s\", \"host_dev_name\": \"%s\"}%s",
                               i == 0 ? ", \"network_overrides\": [" : ", ", (int)(eq - nets[i]),
                               nets[i], eq + 1, i + 1 == nnets ? "]" : "");
    }
    snprintf(recv_call.body + rl, sizeof(recv_call.body) - rl, "}");
    send_call = (struct call){.sock = from, .path = "/migration/send", .timeout_s = timeout};
    int len = snprintf(send_call.body, sizeof(send_call.body),
                       "{\"destination_url\": \"%s\", \"timeout_s\": %u, \"local\": %s", url,
                       timeout, local ? "true" : "false");
    if (downtime)
        len += snprintf(send_call.body + len, sizeof(send_call.body) - (size_t)len,
                        ", \"downtime_ms\": %u", downtime);
    if (rounds)
        len += snprintf(send_call.body + len, sizeof(send_call.body) - (size_t)len,
                        ", \"max_rounds\": %u", rounds);
    snprintf(send_call.body + len, sizeof(send_call.body) - (size_t)len, "}");
    pthread_t t;
    if (pthread_create(&t, NULL, receive_thread, &recv_call) != 0) {
        fprintf(stderr, "ember migrate: cannot start a thread\n");
        return 4;
    }
    /* The source retries its connection until the destination listens. */
    if (http_put(&send_call) < 0)
        snprintf(send_call.answer, sizeof(send_call.answer), "%s", error_get());
    pthread_join(t, NULL);
    bool ok = send_call.status == 204 && recv_call.status == 204;
    if (!ok) {
        fprintf(stderr, "ember migrate: source %s: %d %s\n", from, send_call.status,
                send_call.status > 0 ? answer_body(&send_call) : send_call.answer);
        fprintf(stderr, "ember migrate: destination %s: %d %s\n", to, recv_call.status,
                recv_call.status > 0 ? answer_body(&recv_call) : recv_call.answer);
        return 1;
    }
    printf("migrated: %s -> %s over %s\n", from, to, url);
    return 0;
}
