/* Starting a benchmarked program: its standard input and output on the descriptors given
 * (/dev/null where -1), its standard error appended to a log. */
#ifndef EMBER_BENCH_SPAWN_H
#define EMBER_BENCH_SPAWN_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* The child's pid, or -1 when fork fails (errno set); who names the caller in the child's
 * message when exec fails. */
static inline pid_t bench_spawn(const char *who, char **argv, int in_fd, int out_fd,
                                const char *log)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int err = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int null = open("/dev/null", O_RDWR);
    dup2(in_fd >= 0 ? in_fd : null, 0);
    dup2(out_fd >= 0 ? out_fd : null, 1);
    dup2(err >= 0 ? err : null, 2);
    execvp(argv[0], argv);
    fprintf(stderr, "%s: cannot run %s: %s\n", who, argv[0], strerror(errno));
    _exit(127);
}

#endif
