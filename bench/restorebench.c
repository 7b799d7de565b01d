/* One run of bench/snapshot.sh: starts a VMM that restores (or boots) the snapbench guest
 * (guest/snapbench.c) and times it from just before the process is spawned to the guest's
 * first byte on the VMM's stdout, the guest running again.
 *
 *   restorebench [OPTIONS] -- CMD ARGS...
 *   --api-sock PATH   CMD serves Firecracker's API there: connect (retrying) and send
 *                     PUT /snapshot/load with --load's body; it must answer 204
 *   --load JSON       that body
 *   --boot            a cold boot: also wait for the guest's "snapbench: ready" line and the
 *                     first byte after it
 *   --touch           then have the guest touch all its memory ('t') and wait for its report
 *   --handler-sock P  --handler ARGS... ';' is started first (a page-fault handler), and CMD
 *                     only once P exists; ended after the run
 *   --handler ARGS... ';'
 *   --log FILE        CMD's (and the handler's) stderr (default /dev/null)
 *   --timeout-ms N    for each wait (default 60000)
 *
 * Prints one line of key=value words: running_ms (spawn to the first byte), connect_ms (to an
 * accepting API socket), load_ms (the PUT sent to its answer), ready_ms (--boot: to the ready
 * line), the process's VmRSS, RssAnon, RssFile and the guest's share (the resident size of its
 * largest mapping, guest RAM) in KiB right after the first byte (rss_*), and with --touch the
 * guest's report (read_us, write_us, resident_us) and the same sizes after it (touched_*).
 * Exits 1 with a message when a step fails or times out. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spawn.h"
#include "timing.h"

static int timeout_ms = 60000;
static pid_t child = -1, handler = -1;

/* The guest's output since the last mark; only the tail matters. */
static char outbuf[1 << 16];
static size_t outlen;
static size_t line_end; /* where the last line wait_line found ends, '\n' included */

static void end_process(pid_t *pid, int sig)
{
    if (*pid <= 0)
        return;
    kill(*pid, sig);
    waitpid(*pid, NULL, 0);
    *pid = -1;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "restorebench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    end_process(&child, SIGKILL);
    end_process(&handler, SIGKILL);
    exit(1);
}

static pid_t spawn(char **argv, int in_fd, int out_fd, const char *log)
{
    pid_t pid = bench_spawn("restorebench", argv, in_fd, out_fd, log);
    if (pid < 0)
        die("fork: %s", strerror(errno));
    return pid;
}

static void pause_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static int try_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        die("socket path too long: %s", path);
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        return fd;
    close(fd);
    return -1;
}

static void check_alive(const char *what)
{
    int status;
    if (waitpid(child, &status, WNOHANG) == child) {
        child = -1;
        die("%s: the VMM exited (status %d) before", what,
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    }
}

/* Reads what the VMM printed, waiting at most until the deadline; returns bytes read (0: time
 * is up). */
static size_t read_output(int fd, double deadline)
{
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, left < 100 ? (int)left + 1 : 100);
        if (n < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        if (n <= 0) {
            check_alive("waiting for the guest");
            continue;
        }
        char buf[4096];
        ssize_t got = read(fd, buf, sizeof(buf));
        if (got == 0)
            die("the VMM closed its stdout; its output ended with: %.200s", outbuf);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("read: %s", strerror(errno));
        }
        if (outlen + (size_t)got >= sizeof(outbuf)) { /* keep the last half */
            size_t keep = sizeof(outbuf) / 2;
            memmove(outbuf, outbuf + outlen - keep, keep);
            outlen = keep;
        }
        memcpy(outbuf + outlen, buf, (size_t)got);
        outlen += (size_t)got;
        outbuf[outlen] = 0;
        return (size_t)got;
    }
}

/* Waits for a whole line starting with prefix; returns it (in outbuf, NUL-terminated). */
static char *wait_line(int fd, const char *prefix, const char *what)
{
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        for (char *p = strstr(outbuf, prefix); p; p = strstr(p + 1, prefix)) {
            char *end = strchr(p, '\n');
            if (end) {
                line_end = (size_t)(end + 1 - outbuf);
                *end = 0;
                if (end > p && end[-1] == '\r')
                    end[-1] = 0;
                return p;
            }
        }
        if (!read_output(fd, deadline))
            die("%s: no '%s' line within %d ms; output ends with: %.200s", what, prefix, timeout_ms,
                outlen > 200 ? outbuf + outlen - 200 : outbuf);
    }
}

/* Forgets the output up to the end of the last line found (after_line), or all of it. */
static void mark(bool after_line)
{
    size_t off = after_line ? line_end : outlen;
    memmove(outbuf, outbuf + off, outlen - off);
    outlen -= off;
    outbuf[outlen] = 0;
}

static void put_load(const char *sock, const char *body, double *connect_ms, double *load_ms,
                     double t0)
{
    double deadline = now_ms() + timeout_ms;
    int fd;
    while ((fd = try_connect(sock)) < 0) {
        if (now_ms() > deadline)
            die("the API socket %s never accepted", sock);
        check_alive("connecting to the API");
        pause_us(20);
    }
    double connected = now_ms();
    *connect_ms = connected - t0;
    char req[8192];
    int n = snprintf(req, sizeof(req),
                     "PUT /snapshot/load HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    if (n < 0 || (size_t)n >= sizeof(req))
        die("load body too long");
    if (write(fd, req, (size_t)n) != n)
        die("write to the API: %s", strerror(errno));
    char resp[2048];
    size_t got = 0;
    while (got < sizeof(resp) - 1 && !strstr(resp, "\r\n\r\n")) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0)
            die("PUT /snapshot/load: no answer within %d ms", timeout_ms);
        ssize_t r = read(fd, resp + got, sizeof(resp) - 1 - got);
        if (r <= 0)
            die("PUT /snapshot/load: connection closed");
        got += (size_t)r;
        resp[got] = 0;
    }
    *load_ms = now_ms() - connected;
    if (strncmp(resp, "HTTP/1.1 204", 12) != 0) {
        /* the body may still be on its way: a short wait for the fault message */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) > 0) {
            ssize_t r = read(fd, resp + got, sizeof(resp) - 1 - got);
            if (r > 0)
                resp[got + (size_t)r] = 0;
        }
        for (char *c = resp; *c; c++)
            if (*c == '\r' || *c == '\n')
                *c = ' ';
        die("PUT /snapshot/load answered: %s", resp);
    }
    close(fd);
}

struct rss {
    long vm, anon, file, guest;
};

/* VmRSS, RssAnon, RssFile from status; the guest's share: the Rss of the largest mapping in
 * smaps (guest RAM dwarfs every other mapping of these VMMs). */
static struct rss read_rss(pid_t pid)
{
    struct rss r = {-1, -1, -1, -1};
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        die("%s: %s", path, strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        sscanf(line, "VmRSS: %ld", &r.vm);
        sscanf(line, "RssAnon: %ld", &r.anon);
        sscanf(line, "RssFile: %ld", &r.file);
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
    f = fopen(path, "r");
    if (!f)
        die("%s: %s", path, strerror(errno));
    unsigned long largest = 0, size = 0;
    unsigned long lo, hi;
    long rss;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            size = hi - lo;
        else if (sscanf(line, "Rss: %ld", &rss) == 1 && size > largest) {
            largest = size;
            r.guest = rss;
        }
    }
    fclose(f);
    return r;
}

static void print_rss(const char *prefix, struct rss r)
{
    printf(" %s_vmrss_kib=%ld %s_anon_kib=%ld %s_file_kib=%ld %s_guest_kib=%ld", prefix, r.vm,
           prefix, r.anon, prefix, r.file, prefix, r.guest);
}

static long field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    if (!p)
        die("no %s in '%s'", key, line);
    return strtol(p + strlen(key), NULL, 10);
}

int main(int argc, char **argv)
{
    const char *api_sock = NULL, *load = NULL, *handler_sock = NULL, *log = "/dev/null";
    bool boot = false, touch = false;
    char **handler_argv = NULL;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--api-sock") && i + 1 < argc)
            api_sock = argv[++i];
        else if (!strcmp(argv[i], "--load") && i + 1 < argc)
            load = argv[++i];
        else if (!strcmp(argv[i], "--boot"))
            boot = true;
        else if (!strcmp(argv[i], "--touch"))
            touch = true;
        else if (!strcmp(argv[i], "--handler-sock") && i + 1 < argc)
            handler_sock = argv[++i];
        else if (!strcmp(argv[i], "--handler") && i + 1 < argc) {
            handler_argv = &argv[++i];
            while (i < argc && strcmp(argv[i], ";"))
                i++;
            if (i == argc)
                die("--handler: no ';' after its arguments");
            argv[i] = NULL;
        } else if (!strcmp(argv[i], "--log") && i + 1 < argc)
            log = argv[++i];
        else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
            timeout_ms = atoi(argv[++i]);
        else
            die("unknown option %s", argv[i]);
    }
    if (i + 1 >= argc || (api_sock && !load) || (!!handler_argv != !!handler_sock) ||
        timeout_ms <= 0) {
        fprintf(stderr, "usage: restorebench [--api-sock PATH --load JSON] [--boot] [--touch] "
                        "[--handler-sock P --handler ARGS... ';'] [--log FILE] -- CMD ARGS...\n");
        return 2;
    }
    char **cmd = &argv[i + 1];
    signal(SIGPIPE, SIG_IGN);
    if (api_sock)
        unlink(api_sock);

    double handler_ms = -1;
    if (handler_argv) {
        unlink(handler_sock);
        double h0 = now_ms();
        handler = spawn(handler_argv, -1, -1, log);
        struct stat st;
        while (stat(handler_sock, &st) < 0) {
            int status;
            if (waitpid(handler, &status, WNOHANG) == handler) {
                handler = -1;
                die("the page-fault handler exited before its socket %s appeared", handler_sock);
            }
            if (now_ms() - h0 > timeout_ms)
                die("the page-fault handler's socket %s never appeared", handler_sock);
            pause_us(20);
        }
        handler_ms = now_ms() - h0;
    }

    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
        die("pipe: %s", strerror(errno));
    double t0 = now_ms();
    child = spawn(cmd, in[0], out[1], log);
    close(in[0]);
    close(out[1]);

    double connect_ms = -1, load_ms = -1, ready_ms = -1;
    if (api_sock)
        put_load(api_sock, load, &connect_ms, &load_ms, t0);
    if (boot) {
        wait_line(out[0], "snapbench: ready", "booting");
        ready_ms = now_ms() - t0;
        mark(true);
    }
    while (outlen == 0)
        if (!read_output(out[0], now_ms() + timeout_ms))
            die("no output from the guest within %d ms", timeout_ms);
    double running_ms = now_ms() - t0;
    struct rss after = read_rss(child);

    printf("running_ms=%.3f connect_ms=%.3f load_ms=%.3f ready_ms=%.3f handler_ms=%.3f", running_ms,
           connect_ms, load_ms, ready_ms, handler_ms);
    print_rss("rss", after);
    if (touch) {
        mark(false);
        if (write(in[1], "t", 1) != 1)
            die("write to the guest: %s", strerror(errno));
        char *line = wait_line(out[0], "snapbench: touch", "touching memory");
        printf(" pages=%ld read_us=%ld write_us=%ld resident_us=%ld", field(line, "pages="),
               field(line, "read_us="), field(line, "write_us="), field(line, "resident_us="));
        print_rss("touched", read_rss(child));
    }
    printf("\n");
    fflush(stdout);

    /* A clean end (the guest powers off), so that the VM's teardown does not spill into the
     * next run's figures; SIGKILL if that does not come. */
    if (write(in[1], "q", 1) == 1) {
        double deadline = now_ms() + 5000;
        while (child > 0 && now_ms() < deadline) {
            if (waitpid(child, NULL, WNOHANG) == child) {
                child = -1;
                break;
            }
            char buf[4096];
            struct pollfd p = {.fd = out[0], .events = POLLIN};
            if (poll(&p, 1, 10) > 0 && read(out[0], buf, sizeof(buf)) <= 0)
                pause_us(1000);
        }
    }
    end_process(&child, SIGKILL);
    end_process(&handler, SIGTERM);
    return 0;
}
