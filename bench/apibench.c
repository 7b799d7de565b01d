/* Measures ember's API: how soon and at what CPU cost a new process
 * accepts on its socket, and the latency of sequential requests on one
 * connection.
 *   apibench ready EMBER RUNS        start -> socket accepting, median of RUNS
 *   apibench latency EMBER COUNT     COUNT sequential GET / on one connection
 * CPU time is read from /proc at the moment the socket accepts: the sum
 * of the process's threads' run time (/proc/PID/task/TID/schedstat, in
 * ns), and utime+stime from /proc/PID/stat (in clock ticks, coarse). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

static pid_t spawn(const char *ember, const char *sock)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execl(ember, ember, "--api-sock", sock, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int try_connect(const char *sock)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Run time of every thread of pid, in ms (ns precision). */
static double schedstat_ms(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    double total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[320];
        snprintf(p, sizeof(p), "/proc/%d/task/%s/schedstat", pid, e->d_name);
        FILE *f = fopen(p, "r");
        unsigned long long ns;
        if (f && fscanf(f, "%llu", &ns) == 1)
            total += (double)ns / 1e6;
        if (f)
            fclose(f);
    }
    closedir(d);
    return total;
}

static double stat_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long utime = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) * 1e3 / (double)sysconf(_SC_CLK_TCK);
}

static int ready(const char *ember, int runs)
{
    char sock[64];
    snprintf(sock, sizeof(sock), "/tmp/ember-apibench-%d.sock", getpid());
    double *wall = calloc((size_t)runs, sizeof(double));
    double *cpu = calloc((size_t)runs, sizeof(double));
    double *ticks = calloc((size_t)runs, sizeof(double));
    for (int i = 0; i < runs; i++) {
        unlink(sock);
        double t0 = now_ms();
        pid_t pid = spawn(ember, sock);
        int fd;
        while ((fd = try_connect(sock)) < 0) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                fprintf(stderr, "apibench: ember exited before its socket accepted\n");
                return 1;
            }
            if (now_ms() - t0 > 5000) {
                fprintf(stderr, "apibench: no API socket after 5 s\n");
                kill(pid, SIGKILL);
                return 1;
            }
        }
        wall[i] = now_ms() - t0;
        cpu[i] = schedstat_ms(pid);
        if (cpu[i] <= 0) /* a read that raced the task list: once more */
            cpu[i] = schedstat_ms(pid);
        ticks[i] = stat_ms(pid);
        close(fd);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    unlink(sock);
    printf("ready: %d runs: wall %.2f ms median (min %.2f), CPU %.2f ms median (min %.2f) "
           "[schedstat], utime+stime %.1f ms median [stat, %ld ticks/s]\n",
           runs, percentile(wall, runs, 0.5), percentile(wall, runs, 0), percentile(cpu, runs, 0.5),
           percentile(cpu, runs, 0), percentile(ticks, runs, 0.5), sysconf(_SC_CLK_TCK));
    return 0;
}

/* Reads one response (head + Content-Length body); returns its status. */
static int read_response(int fd)
{
    static char buf[65536];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        char *cl = strcasestr(buf, "Content-Length:");
        size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        if (len >= (size_t)(end + 4 - buf) + body)
            return atoi(buf + 9);
    }
}

static int latency(const char *ember, int count)
{
    char sock[64];
    snprintf(sock, sizeof(sock), "/tmp/ember-apibench-%d.sock", getpid());
    unlink(sock);
    pid_t pid = spawn(ember, sock);
    int fd = -1;
    double t0 = now_ms();
    while ((fd = try_connect(sock)) < 0 && now_ms() - t0 < 5000)
        usleep(100);
    if (fd < 0) {
        fprintf(stderr, "apibench: no API socket\n");
        kill(pid, SIGKILL);
        return 1;
    }
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    double *lat = calloc((size_t)count, sizeof(double));
    for (int i = 0; i < count; i++) {
        double s = now_ms();
        if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1) ||
            read_response(fd) != 200) {
            fprintf(stderr, "apibench: request %d failed\n", i);
            kill(pid, SIGKILL);
            return 1;
        }
        lat[i] = (now_ms() - s) * 1e3;
    }
    close(fd);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    unlink(sock);
    printf(
        "latency: %d sequential GET / on one connection: p50 %.1f us, p99 %.1f us, max %.1f us\n",
        count, percentile(lat, count, 0.5), percentile(lat, count, 0.99),
        percentile(lat, count, 1.0));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 || atoi(argv[3]) <= 0) {
        fprintf(stderr, "usage: apibench ready|latency EMBER N\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(argv[1], "ready"))
        return ready(argv[2], atoi(argv[3]));
    if (!strcmp(argv[1], "latency"))
        return latency(argv[2], atoi(argv[3]));
    fprintf(stderr, "apibench: unknown mode '%s'\n", argv[1]);
    return 2;
}
