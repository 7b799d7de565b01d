/* One live migration of bench/snapshot.sh, timed as the guest sees it: the snapbench guest
 * (guest/snapbench.c) prints a byte every 50 us, so the gap between the source VMM's last byte
 * and the destination VMM's first is the guest's downtime.
 *
 *   migratebench [--log FILE] [--timeout-ms N (150000)] --dst-ready PATH -- SRC... ';' DST... ';'
 *                MIG...
 *
 * SRC (the source VMM, booting the guest) runs until the guest's ready line and 100 ms more;
 * DST (the destination VMM) is started and waited for until PATH exists (its API socket, or
 * the socket it listens on for the migration); then MIG (the command that migrates) runs, and
 * the clock starts just before it. Prints one line: total_ms (MIG's run), downtime_ms (the
 * source's last byte to the destination's first), dst_first_ms (from MIG's start to the
 * destination's first byte), the destination's VmRSS and the guest RAM mapping's share in KiB,
 * and MIG's own last output line after "mig: ". Exits 1 with a message when a step fails. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spawn.h"
#include "timing.h"

static pid_t src = -1, dst = -1, mig = -1;

static void end_process(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = -1;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "migratebench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    end_process(&mig);
    end_process(&src);
    end_process(&dst);
    exit(1);
}

static pid_t spawn(char **argv, int in_fd, int out_fd, const char *log)
{
    pid_t pid = bench_spawn("migratebench", argv, in_fd, out_fd, log);
    if (pid < 0)
        die("fork: %s", strerror(errno));
    return pid;
}

/* argv from i up to ';' (replaced by NULL); i moves past it. */
static char **take_command(int argc, char **argv, int *i, bool last)
{
    char **cmd = &argv[*i];
    while (*i < argc && strcmp(argv[*i], ";"))
        (*i)++;
    if (*i == argc && !last)
        die("a command without a ';' after it");
    if (*i < argc)
        argv[(*i)++] = NULL;
    if (!cmd[0])
        die("an empty command");
    return cmd;
}

/* Reads what fd has; returns the bytes read, 0 at EOF, -1 when nothing is there yet. */
static ssize_t drain(int fd, char *keep, size_t keep_size, size_t *kept)
{
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? -1 : 0;
    if (keep && n > 0) {
        if ((size_t)n >= keep_size)
            n = (ssize_t)keep_size - 1;
        if (*kept + (size_t)n >= keep_size)
            *kept = 0; /* only the last lines matter */
        memcpy(keep + *kept, buf, (size_t)n);
        *kept += (size_t)n;
        keep[*kept] = 0;
    }
    return n;
}

static void rss(pid_t pid, long *vm, long *guest)
{
    char path[64], line[512];
    *vm = *guest = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f))
        sscanf(line, "VmRSS: %ld", vm);
    if (f)
        fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
    f = fopen(path, "r");
    unsigned long lo, hi, size = 0, largest = 0;
    long r;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            size = hi - lo;
        else if (sscanf(line, "Rss: %ld", &r) == 1 && size > largest) {
            largest = size;
            *guest = r;
        }
    }
    if (f)
        fclose(f);
}

int main(int argc, char **argv)
{
    const char *log = "/dev/null", *ready_path = NULL;
    int timeout_ms = 150000; /* beyond ember migrate's own 120 s, so that its message is seen */
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "--log") && i + 1 < argc)
            log = argv[++i];
        else if (!strcmp(argv[i], "--dst-ready") && i + 1 < argc)
            ready_path = argv[++i];
        else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
            timeout_ms = atoi(argv[++i]);
        else
            die("unknown option %s", argv[i]);
    }
    if (i >= argc || !ready_path || timeout_ms <= 0) {
        fprintf(stderr, "usage: migratebench [--log FILE] [--timeout-ms N] --dst-ready PATH "
                        "-- SRC... ';' DST... ';' MIG...\n");
        return 2;
    }
    i++;
    char **src_cmd = take_command(argc, argv, &i, false);
    char **dst_cmd = take_command(argc, argv, &i, false);
    char **mig_cmd = take_command(argc, argv, &i, true);
    signal(SIGPIPE, SIG_IGN);

    /* The source, until its guest is ready and has run a little. */
    int so[2];
    if (pipe2(so, O_CLOEXEC) < 0)
        die("pipe: %s", strerror(errno));
    src = spawn(src_cmd, -1, so[1], log);
    close(so[1]);
    char out[1 << 14] = "";
    size_t kept = 0;
    double deadline = now_ms() + timeout_ms, ready_at = -1;
    while (ready_at < 0 || now_ms() < ready_at + 100) {
        struct pollfd p = {.fd = so[0], .events = POLLIN};
        if (now_ms() > deadline)
            die("the source's guest was not ready within %d ms", timeout_ms);
        if (poll(&p, 1, 10) > 0 && drain(so[0], out, sizeof(out), &kept) == 0)
            die("the source VMM ended before its guest was ready: %.200s", out);
        if (ready_at < 0 && strstr(out, "snapbench: ready"))
            ready_at = now_ms();
    }
    fcntl(so[0], F_SETFL, O_NONBLOCK);

    /* The destination, until it is there. */
    int di[2], dout[2];
    if (pipe2(di, O_CLOEXEC) < 0 || pipe2(dout, O_CLOEXEC | O_NONBLOCK) < 0)
        die("pipe: %s", strerror(errno));
    unlink(ready_path);
    dst = spawn(dst_cmd, di[0], dout[1], log);
    close(di[0]);
    close(dout[1]);
    struct stat st;
    while (stat(ready_path, &st) < 0) {
        if (now_ms() > deadline || waitpid(dst, NULL, WNOHANG) == dst)
            die("the destination never made %s", ready_path);
        drain(so[0], NULL, 0, NULL);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }

    /* The migration. */
    int mo[2];
    if (pipe2(mo, O_CLOEXEC | O_NONBLOCK) < 0)
        die("pipe: %s", strerror(errno));
    drain(so[0], NULL, 0, NULL);
    double t0 = now_ms(), last_src = t0, first_dst = -1, mig_end = -1;
    mig = spawn(mig_cmd, -1, mo[1], log);
    close(mo[1]);
    char mig_out[4096] = "";
    size_t mig_kept = 0;
    bool src_open = true;
    int mig_status = 0;
    deadline = t0 + timeout_ms;
    while (mig_end < 0 || first_dst < 0) {
        if (now_ms() > deadline)
            die("the migration did not end within %d ms (destination output %s)", timeout_ms,
                first_dst < 0 ? "none" : "seen");
        struct pollfd p[3] = {{.fd = src_open ? so[0] : -1, .events = POLLIN},
                              {.fd = dout[0], .events = POLLIN},
                              {.fd = mo[0], .events = POLLIN}};
        poll(p, 3, 1);
        double now = now_ms();
        if (src_open && (p[0].revents & (POLLIN | POLLHUP))) {
            ssize_t n;
            while ((n = drain(so[0], NULL, 0, NULL)) > 0)
                last_src = now;
            if (n == 0)
                src_open = false;
        }
        if (p[1].revents & POLLIN) {
            if (drain(dout[0], NULL, 0, NULL) > 0 && first_dst < 0)
                first_dst = now;
        }
        if (p[2].revents & POLLIN)
            drain(mo[0], mig_out, sizeof(mig_out), &mig_kept);
        if (mig_end < 0 && waitpid(mig, &mig_status, WNOHANG) == mig) {
            mig = -1;
            mig_end = now;
            while (drain(mo[0], mig_out, sizeof(mig_out), &mig_kept) > 0)
                ;
            if (!WIFEXITED(mig_status) || WEXITSTATUS(mig_status) != 0)
                die("the migration failed (status %d): %s (see the log)",
                    WIFEXITED(mig_status) ? WEXITSTATUS(mig_status) : 128 + WTERMSIG(mig_status),
                    mig_out);
        }
    }
    long vm_kib, guest_kib;
    rss(dst, &vm_kib, &guest_kib);
    char *nl;
    while ((nl = strrchr(mig_out, '\n')) && nl[1] == 0)
        *nl = 0;
    char *last_line = strrchr(mig_out, '\n') ? strrchr(mig_out, '\n') + 1 : mig_out;
    printf("total_ms=%.3f downtime_ms=%.3f dst_first_ms=%.3f dst_vmrss_kib=%ld dst_guest_kib=%ld "
           "mig: %s\n",
           mig_end - t0, first_dst - last_src, first_dst - t0, vm_kib, guest_kib, last_line);
    fflush(stdout);

    /* The guest powers off on the destination; the source (QEMU stays, paused) is ended. */
    if (write(di[1], "q", 1) == 1) {
        double end = now_ms() + 5000;
        while (now_ms() < end && waitpid(dst, NULL, WNOHANG) != dst) {
            drain(dout[0], NULL, 0, NULL);
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (waitpid(dst, NULL, WNOHANG) != 0)
            dst = -1;
    }
    end_process(&dst);
    end_process(&src);
    return 0;
}
