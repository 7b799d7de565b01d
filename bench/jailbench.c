/* Start to a ready API socket, through ember-jailer and without it: the time
 * from the fork of the jailer (or of ember) to the first connection on the API
 * socket that answers GET / with 200, for one instance at a time and for N
 * started together.
 *   jailbench plain  EMBER BASE RUNS N
 *   jailbench jailer EMBER BASE RUNS N JAILER [CGROUP_PARENT]
 * RUNS instances in all, N at a time (N = 1: one after the other). With
 * CGROUP_PARENT each jail also gets a cpuset and a pids group (cgroup v1)
 * under it. Root. Prints the median, 90th percentile and maximum in ms. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
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

#include "timing.h"

#define UID_ARG       "60123"
#define GID_ARG       "60124"
#define MAX_PARALLEL  64
#define READY_TIMEOUT 10000.0 /* ms */
#define POLL_INTERVAL 20000   /* ns */

struct instance {
    pid_t pid;
    char id[64];
    char sock[PATH_MAX];
    char dir[PATH_MAX]; /* the jail's directory, removed afterwards */
    double start, ready;
};

static const char *mode, *ember, *base, *jailer, *cgroup_parent;

static void start(struct instance *in, int n)
{
    bool jail = !strcmp(mode, "jailer");
    snprintf(in->id, sizeof(in->id), "jb-%d-%d", (int)getpid(), n);
    if (jail) {
        snprintf(in->dir, sizeof(in->dir), "%s/ember/%s", base, in->id);
        snprintf(in->sock, sizeof(in->sock), "%s/root/run/ember.socket", in->dir);
    } else {
        in->dir[0] = '\0';
        snprintf(in->sock, sizeof(in->sock), "%s/%s.sock", base, in->id);
    }
    in->ready = 0;
    in->start = now_ms();
    in->pid = fork();
    if (in->pid != 0)
        return;
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (!jail) {
        execl(ember, ember, "--api-sock", in->sock, (char *)NULL);
        _exit(127);
    }
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)jailer;
    argv[k++] = "--id";
    argv[k++] = in->id;
    argv[k++] = "--exec-file";
    argv[k++] = (char *)ember;
    argv[k++] = "--uid";
    argv[k++] = UID_ARG;
    argv[k++] = "--gid";
    argv[k++] = GID_ARG;
    argv[k++] = "--chroot-base-dir";
    argv[k++] = (char *)base;
    if (cgroup_parent) {
        argv[k++] = "--parent-cgroup";
        argv[k++] = (char *)cgroup_parent;
        argv[k++] = "--cgroup";
        argv[k++] = "cpuset.mems=0";
        argv[k++] = "--cgroup";
        argv[k++] = "pids.max=64";
    }
    argv[k] = NULL;
    execv(jailer, argv);
    _exit(127);
}

/* Connects and asks GET /: ready when the answer is 200. */
static bool probe(struct instance *in)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", in->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return false;
    }
    static const char req[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    char buf[512];
    size_t len = 0;
    bool ok = write(fd, req, sizeof(req) - 1) == (ssize_t)(sizeof(req) - 1);
    while (ok && len < sizeof(buf) - 1 && !memchr(buf, '\n', len)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            ok = false;
        else
            len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return ok && strstr(buf, " 200 ") != NULL;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void finish(struct instance *in)
{
    kill(in->pid, SIGKILL);
    waitpid(in->pid, NULL, 0);
    if (in->dir[0])
        nftw(in->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        unlink(in->sock);
    if (cgroup_parent) {
        static const char *const controllers[] = {"cpuset", "pids"};
        for (int i = 0; i < 2; i++) {
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "/sys/fs/cgroup/%s/%s/%s", controllers[i], cgroup_parent,
                     in->id);
            for (int tries = 0; rmdir(path) < 0 && errno == EBUSY && tries < 1000; tries++)
                usleep(1000);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr,
                "usage: jailbench plain|jailer EMBER BASE RUNS N [JAILER [CGROUP_PARENT]]\n");
        return 2;
    }
    mode = argv[1];
    ember = argv[2];
    base = argv[3];
    int runs = atoi(argv[4]), parallel = atoi(argv[5]);
    jailer = argc > 6 ? argv[6] : NULL;
    cgroup_parent = argc > 7 ? argv[7] : NULL;
    if (runs < 1 || parallel < 1 || parallel > MAX_PARALLEL || (!strcmp(mode, "jailer") && !jailer))
        return 2;
    double *t = calloc((size_t)runs, sizeof(double));
    struct instance in[MAX_PARALLEL];
    int done = 0;
    while (done < runs) {
        int n = runs - done < parallel ? runs - done : parallel;
        for (int i = 0; i < n; i++)
            start(&in[i], done + i);
        int ready = 0;
        while (ready < n) {
            for (int i = 0; i < n; i++) {
                if (in[i].ready || !probe(&in[i]))
                    continue;
                in[i].ready = now_ms();
                ready++;
            }
            for (int i = 0; i < n; i++) {
                if (!in[i].ready && now_ms() - in[i].start > READY_TIMEOUT) {
                    fprintf(stderr, "jailbench: %s not ready after %.0f ms\n", in[i].id,
                            READY_TIMEOUT);
                    for (int k = 0; k < n; k++)
                        finish(&in[k]);
                    return 1;
                }
            }
            struct timespec wait = {0, POLL_INTERVAL};
            nanosleep(&wait, NULL);
        }
        for (int i = 0; i < n; i++) {
            t[done + i] = in[i].ready - in[i].start;
            finish(&in[i]);
        }
        done += n;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    printf("%-22s %3d at a time: median %7.2f ms  p90 %7.2f ms  max %7.2f ms  (%d runs)\n",
           !strcmp(mode, "plain") ? "ember"
           : cgroup_parent        ? "jailer + cgroups"
                                  : "jailer",
           parallel, t[runs / 2], t[(int)(0.9 * (runs - 1) + 0.5)], t[runs - 1], runs);
    free(t);
    return 0;
}
