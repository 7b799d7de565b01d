/* Runs commands side by side, interleaved, and reports wall time from
 * process start to exit and peak resident memory (ru_maxrss) for each.
 *
 *   runbench [--runs N] [--warmup N] [--gap-ms N] NAME -- CMD ARGS... ';' NAME -- ...
 *
 * The first command is the reference for the printed ratios. A run that
 * exits with a status other than its expected one (--expect NAME=STATUS,
 * default 0) is reported and makes runbench fail: a benchmark of a broken
 * run is no figure. Output goes to /dev/null. */
#include <fcntl.h>
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
    long rss_kib[MAX_RUNS];
};

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
    if (slot >= 0) {
        c->wall_ms[slot] = end - start;
        c->cpu_ms[slot] = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 +
                          ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
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
    printf("%-12s %10s %10s %10s %10s %12s %10s %10s\n", "command", "wall ms", "min", "max",
           "cpu ms", "peak RSS KiB", "wall x", "RSS x");
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
        printf("%-12s %10.1f %10.1f %10.1f %10.1f %12ld %10.2f %10.2f\n", cmds[c].name, w, mn, mx,
               median_d(cmds[c].cpu_ms, runs), rss, w / ref_wall, (double)rss / (double)ref_rss);
    }
    printf("(medians of %d interleaved runs; x = relative to %s)\n", runs, cmds[0].name);
    return 0;
}
