/* Runs commands side by side, interleaved, and reports wall time from
 * process start to exit and peak resident memory (ru_maxrss) for each,
 * with the CPU time and the time off CPU (wall - CPU: waiting, whether
 * asleep, in a run queue or stolen by the hypervisor under this host) and
 * how often each command blocked (voluntary context switches) and
 * faulted pages in from disk (major faults: page cache the host evicted). A last
 * line gives the state of the host over the whole run from /proc/stat:
 * how busy its CPUs were, with and without the commands' own CPU time,
 * the time the hypervisor under it took (steal) and the load average, so
 * that figures from a busy or a preempted host show as such.
 *
 *   runbench [--runs N] [--warmup N] [--gap-ms N] NAME -- CMD ARGS... ';' NAME -- ...
 *
 * The first command is the reference for the printed ratios. A run that
 * exits with a status other than its expected one (--expect NAME=STATUS,
 * default 0) is reported and makes runbench fail: a benchmark of a broken
 * run is no figure. Output goes to /dev/null. */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"

#define MAX_CMDS 8
#define MAX_RUNS 1000

struct cmd {
    const char *name;
    char **argv;
    int expect;
    double wall_ms[MAX_RUNS];
    double cpu_ms[MAX_RUNS];
    double wait_ms[MAX_RUNS];
    double vcsw[MAX_RUNS];
    double majflt[MAX_RUNS];
    long rss_kib[MAX_RUNS];
};

/* Host CPU time by kind, in clock ticks, from the first line of /proc/stat. */
struct host_ticks {
    unsigned long long busy, idle, steal, total;
};

static int read_host_ticks(struct host_ticks *t)
{
    unsigned long long v[10] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return -1;
    /* user nice system idle iowait irq softirq steal (guest time is inside user) */
    t->busy = v[0] + v[1] + v[2] + v[5] + v[6];
    t->idle = v[3] + v[4];
    t->steal = v[7];
    t->total = t->busy + t->idle + t->steal;
    return 0;
}

static void read_loadavg(char *buf, size_t len)
{
    snprintf(buf, len, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f)
        return;
    double a = 0, b = 0, c = 0;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
        snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

static double children_cpu_ms; /* every run's, warm-ups included */

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

static double median_d(const double *v, int n)
{
    double tmp[MAX_RUNS];
    memcpy(tmp, v, (size_t)n * sizeof(double));
    qsort(tmp, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static long median_l(const long *v, int n)
{
    long tmp[MAX_RUNS];
    memcpy(tmp, v, (size_t)n * sizeof(long));
    qsort(tmp, (size_t)n, sizeof(long), cmp_long);
    return tmp[n / 2];
}

static int run_once(struct cmd *c, int slot)
{
    double start = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execvp(c->argv[0], c->argv);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return -1;
    }
    double end = now_ms();
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != c->expect) {
        fprintf(stderr, "runbench: %s exited with %d, expected %d\n", c->name, code, c->expect);
        return -1;
    }
    double cpu = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 +
                 ru.ru_stime.tv_usec / 1e3;
    children_cpu_ms += cpu;
    if (slot >= 0) {
        c->wall_ms[slot] = end - start;
        c->cpu_ms[slot] = cpu;
        c->wait_ms[slot] = end - start - cpu;
        c->vcsw[slot] = (double)ru.ru_nvcsw;
        c->majflt[slot] = (double)ru.ru_majflt;
        c->rss_kib[slot] = ru.ru_maxrss;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int runs = 10, warmup = 1, gap_ms = 0;
    struct cmd cmds[MAX_CMDS];
    int ncmds = 0;
    int i = 1;
    const char *expects[MAX_CMDS];
    int nexpects = 0;
    while (i < argc && strncmp(argv[i], "--", 2) == 0 && argv[i][2]) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (strcmp(argv[i], "--gap-ms") == 0 && i + 1 < argc)
            gap_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc && nexpects < MAX_CMDS)
            expects[nexpects++] = argv[++i];
        else {
            fprintf(stderr, "runbench: unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (runs < 1 || runs > MAX_RUNS) {
        fprintf(stderr, "runbench: --runs must be 1..%d\n", MAX_RUNS);
        return 2;
    }
    while (i < argc && ncmds < MAX_CMDS) {
        struct cmd *c = &cmds[ncmds];
        memset(c, 0, sizeof(*c));
        c->name = argv[i++];
        if (i >= argc || strcmp(argv[i], "--") != 0) {
            fprintf(stderr, "runbench: expected -- after %s\n", c->name);
            return 2;
        }
        c->argv = &argv[++i];
        while (i < argc && strcmp(argv[i], ";") != 0)
            i++;
        if (i < argc)
            argv[i++] = NULL;
        for (int e = 0; e < nexpects; e++) {
            size_t n = strlen(c->name);
            if (strncmp(expects[e], c->name, n) == 0 && expects[e][n] == '=')
                c->expect = atoi(expects[e] + n + 1);
        }
        ncmds++;
    }
    if (ncmds == 0) {
        fprintf(stderr, "usage: runbench [--runs N] NAME -- CMD... ';' NAME -- CMD...\n");
        return 2;
    }
    struct host_ticks before, after;
    char load_before[64], load_after[64];
    bool have_ticks = read_host_ticks(&before) == 0;
    double host_start = now_ms();
    read_loadavg(load_before, sizeof(load_before));
    for (int w = 0; w < warmup; w++)
        for (int c = 0; c < ncmds; c++)
            if (run_once(&cmds[c], -1) < 0)
                return 1;
    /* Interleaved, so that drift in machine load hits every command alike. */
    for (int r = 0; r < runs; r++) {
        for (int c = 0; c < ncmds; c++) {
            /* A pause lets work a command leaves behind (a VM the kernel is
             * still destroying) finish before the next one is timed. */
            if (gap_ms)
                usleep((useconds_t)gap_ms * 1000);
            if (run_once(&cmds[c], r) < 0)
                return 1;
        }
    }
    double host_ms = now_ms() - host_start;
    have_ticks = have_ticks && read_host_ticks(&after) == 0;
    read_loadavg(load_after, sizeof(load_after));
    /* The columns up to RSS x keep their places: scripts read them by position. */
    printf("%-12s %10s %10s %10s %10s %12s %10s %10s %10s %8s %8s\n", "command", "wall ms", "min",
           "max", "cpu ms", "peak RSS KiB", "wall x", "RSS x", "off-cpu ms", "blocked", "majflt");
    double ref_wall = median_d(cmds[0].wall_ms, runs);
    long ref_rss = median_l(cmds[0].rss_kib, runs);
    for (int c = 0; c < ncmds; c++) {
        double w = median_d(cmds[c].wall_ms, runs);
        double mn = cmds[c].wall_ms[0], mx = cmds[c].wall_ms[0];
        for (int r = 1; r < runs; r++) {
            mn = cmds[c].wall_ms[r] < mn ? cmds[c].wall_ms[r] : mn;
            mx = cmds[c].wall_ms[r] > mx ? cmds[c].wall_ms[r] : mx;
        }
        long rss = median_l(cmds[c].rss_kib, runs);
        double majflt = 0;
        for (int r = 0; r < runs; r++)
            majflt += cmds[c].majflt[r];
        printf("%-12s %10.1f %10.1f %10.1f %10.1f %12ld %10.2f %10.2f %10.1f %8.0f %8.0f\n",
               cmds[c].name, w, mn, mx, median_d(cmds[c].cpu_ms, runs), rss, w / ref_wall,
               (double)rss / (double)ref_rss, median_d(cmds[c].wait_ms, runs),
               median_d(cmds[c].vcsw, runs), majflt);
    }
    printf("(medians of %d interleaved runs; x = relative to %s; off-cpu = wall - cpu; blocked = "
           "voluntary context switches; majflt = major page faults, all runs)\n",
           runs, cmds[0].name);
    if (have_ticks && after.total > before.total) {
        double total = (double)(after.total - before.total);
        double busy = (double)(after.busy - before.busy),
               steal = (double)(after.steal - before.steal);
        long hz = sysconf(_SC_CLK_TCK);
        double ours = hz > 0 ? children_cpu_ms * (double)hz / 1e3 : 0;
        double others = busy > ours ? busy - ours : 0;
        /* A line of its own, for scripts: host <busy%> <others%> <steal%> ... */
        printf("host: busy %.1f%% of %ld CPUs (others %.1f%%), steal %.1f%%, over %.1f s; load "
               "average %s at the start, %s at the end\n",
               100 * busy / total, sysconf(_SC_NPROCESSORS_ONLN), 100 * others / total,
               100 * steal / total, host_ms / 1e3, load_before, load_after);
    }
    return 0;
}
