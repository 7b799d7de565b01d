/* ember-jailer: Firecracker's jailer for ember. It takes Firecracker's jailer
 * command line, builds a chroot jail (its own mount namespace, cgroups,
 * resource limits, optionally a network and a PID namespace), drops to an
 * unprivileged uid:gid and execs ember inside it. What every part shares. */
#ifndef EMBER_JAILER_JAILER_H
#define EMBER_JAILER_JAILER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit statuses of the jailer itself (once ember runs, its status is ember's). */
#define JAIL_EXIT_OK    0
#define JAIL_EXIT_USAGE 2 /* bad flags or input: nothing was left behind */
#define JAIL_EXIT_HOST  4 /* a step of building the jail failed */

#define JAIL_MAX_ID_LEN      64
#define JAIL_MAX_CGROUPS     64
#define JAIL_MAX_CGROUP_LINE 4096
#define JAIL_DEFAULT_BASE    "/srv/jailer"
#define JAIL_DEFAULT_NOFILE  2048 /* Firecracker's default RLIMIT_NOFILE */

/* One --cgroup FILE=VALUE. */
struct cgroup_setting {
    char file[256];
    char controller[64]; /* FILE up to its first '.' */
    char value[JAIL_MAX_CGROUP_LINE];
};

struct jail_args {
    const char *id;
    const char *exec_file;
    const char *exec_name; /* the exec file's name: the jail's <exec_name> */
    uid_t uid;
    gid_t gid;
    int cgroup_version; /* 1 or 2 */
    struct cgroup_setting cgroups[JAIL_MAX_CGROUPS];
    unsigned ncgroups;
    const char *parent_cgroup; /* default: exec_name */
    const char *chroot_base;
    const char *netns;
    bool fsize_set;
    uint64_t fsize;
    uint64_t nofile;
    bool daemonize;
    bool new_pid_ns;
    char **ember_argv; /* after "--" */
    int ember_argc;
    bool help, version;
};

/* The exit status a failure asks for: JAIL_EXIT_HOST unless the failing step
 * blamed its input with jail_bad_input(). */
extern int jail_failure_status;
/* Records the message (as error_set) and that it is bad input; returns -1. */
int jail_bad_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "ember-jailer: warning: ..." on stderr. */
void jail_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* args.c: parses argv; checks every value that can be checked without the
 * host (id, numbers, cgroup and rlimit syntax). */
int jail_parse_args(int argc, char **argv, struct jail_args *a);
void jail_usage(void);

/* snprintf for paths: -1 with a message when the result does not fit. */
int path_format(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Writes all of len bytes to fd in one write (cgroup files want that). */
int write_all(int fd, const char *buf, size_t len);
/* Reads a small file whole (at most size - 1 bytes), NUL-terminated; returns the length or -1. */
ssize_t read_small_file(int dirfd, const char *path, char *buf, size_t size);

#endif
