/* ember-jailer's steps, in Firecracker's order: a clean process; every input
 * checked; the jail's directory with ember copied in; the network namespace;
 * resource limits; cgroups; the mount namespace and pivot into the jail;
 * device nodes; optionally a new session and a new PID namespace; the pid
 * file; the unprivileged uid:gid; ember. A failure removes what was made. */
#include "jailer/cgroup.h"
#include "jailer/chroot.h"
#include "jailer/devices.h"
#include "jailer/jailer.h"
#include "jailer/undo.h"
#include "util/error.h"
#include "util/version.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define NATIVE_MACHINE EM_AARCH64
#endif

struct jail {
    struct jail_args args;
    struct jail_paths paths;
    struct cgroup_plan cgroups;
    struct jail_devices devices;
    struct jail_dirs dirs;
    int exec_fd, netns_fd, dev_null_fd;
    int pid_fd; /* <exec_name>.pid in the jail: made before any fork, written once ember's pid is
                   known */
    uint64_t start_us;         /* CLOCK_MONOTONIC when the jailer started */
    uint64_t ancestors_cpu_us; /* CPU time of the jailer's processes before this one */
    int report_fd;             /* in a forked child: how it tells the waiting jailer */
};

static struct jail jail = {.exec_fd = -1,
                           .netns_fd = -1,
                           .dev_null_fd = -1,
                           .pid_fd = -1,
                           .report_fd = -1,
                           .dirs = {-1, -1, -1}};

static uint64_t clock_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Ends the jailer after a failed step: the message and what was undone or left. A forked
 * child hands both to the jailer process that waits for it, whose standard error the caller
 * sees (a daemonized child's is /dev/null) and which is still root. */
static _Noreturn void fail(void)
{
    if (jail.report_fd >= 0) {
        char msg[600];
        msg[0] = (char)jail_failure_status;
        snprintf(msg + 1, sizeof(msg) - 1, "%s", error_get());
        /* Nothing more to do if the jailer is gone: nobody would read it. */
        (void)write_all(jail.report_fd, msg, 1 + strlen(msg + 1));
        _exit(jail_failure_status);
    }
    fprintf(stderr, "ember-jailer: %s\n", error_get());
    undo_run();
    exit(jail_failure_status);
}

/* Nothing the caller left open or set in the environment reaches the jail. */
static int sanitize_process(void)
{
    /* A standard stream the caller closed would be the next file the jailer opens. */
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
            open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            return error_errno("cannot open /dev/null for the closed descriptor %d", fd);
    }
    if (syscall(SYS_close_range, 3u, ~0u, 0u) < 0) {
        if (errno != ENOSYS)
            return error_errno("close_range");
        DIR *d = opendir("/proc/self/fd");
        if (!d)
            return error_errno("cannot list /proc/self/fd");
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            int fd = atoi(e->d_name);
            if (fd > 2 && fd != dirfd(d))
                close(fd);
        }
        closedir(d);
    }
    if (clearenv() != 0)
        return error_set("cannot clear the environment");
    return 0;
}

static int open_exec_file(struct jail *j)
{
    struct jail_args *a = &j->args;
    struct stat st;
    if (lstat(a->exec_file, &st) < 0)
        return jail_bad_input("--exec-file %s: %s", a->exec_file, strerror(errno));
    if (S_ISLNK(st.st_mode))
        return jail_bad_input("--exec-file %s is a symbolic link: give the file itself",
                              a->exec_file);
    if (!S_ISREG(st.st_mode))
        return jail_bad_input("--exec-file %s is not a regular file", a->exec_file);
    if (!(st.st_mode & 0111))
        return jail_bad_input("--exec-file %s is not executable", a->exec_file);
    j->exec_fd = open(a->exec_file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat opened;
    if (j->exec_fd < 0 || fstat(j->exec_fd, &opened) < 0)
        return jail_bad_input("--exec-file %s: %s", a->exec_file, strerror(errno));
    if (opened.st_dev != st.st_dev || opened.st_ino != st.st_ino)
        return jail_bad_input("--exec-file %s changed while the jailer looked at it", a->exec_file);
    /* The jail holds no interpreter for a script, and a program for another machine would
     * fail only after the jailer gave up root (and with it the means to clean up). */
    Elf64_Ehdr eh;
    if (pread(j->exec_fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
        return jail_bad_input("--exec-file %s is not an ELF program", a->exec_file);
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != NATIVE_MACHINE)
        return jail_bad_input("--exec-file %s is a program for another machine", a->exec_file);
    const char *slash = strrchr(a->exec_file, '/');
    a->exec_name = slash ? slash + 1 : a->exec_file;
    if (strlen(a->exec_name) > NAME_MAX - 8)
        return jail_bad_input("--exec-file %s: the file name is too long", a->exec_file);
    return 0;
}

static int open_netns(struct jail *j)
{
    const char *path = j->args.netns;
    j->netns_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (j->netns_fd < 0)
        return jail_bad_input("--netns %s: %s", path, strerror(errno));
    int type = ioctl(j->netns_fd, NS_GET_NSTYPE);
    if (type != CLONE_NEWNET)
        return jail_bad_input("--netns %s is not a network namespace", path);
    return 0;
}

static int validate(struct jail *j)
{
    struct jail_args *a = &j->args;
    if (geteuid() != 0)
        return jail_bad_input("ember-jailer must run as root (it mounts, makes device nodes and "
                              "changes users)");
    if (open_exec_file(j) < 0)
        return -1;
    if (!a->parent_cgroup)
        a->parent_cgroup = a->exec_name;
    if (chroot_paths(a, &j->paths) < 0)
        return -1;
    if (a->netns && open_netns(j) < 0)
        return -1;
    if (cgroup_plan(a, &j->cgroups) < 0)
        return -1;
    devices_probe(&j->devices);
    /* Opened on the host: the jail has no /dev/null. */
    if (a->daemonize) {
        j->dev_null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (j->dev_null_fd < 0)
            return error_errno("cannot open /dev/null");
    }
    return 0;
}

static int set_limit(int resource, const char *name, uint64_t value)
{
    struct rlimit r = {.rlim_cur = value, .rlim_max = value};
    if (setrlimit(resource, &r) < 0) {
        if (errno == EPERM || errno == EINVAL)
            return jail_bad_input("--resource-limit %s=%llu: refused: %s%s", name,
                                  (unsigned long long)value, strerror(errno),
                                  resource == RLIMIT_NOFILE ? " (at most /proc/sys/fs/nr_open)"
                                                            : "");
        return error_errno("--resource-limit %s=%llu", name, (unsigned long long)value);
    }
    return 0;
}

static int set_limits(const struct jail_args *a)
{
    if (a->fsize_set && set_limit(RLIMIT_FSIZE, "fsize", a->fsize) < 0)
        return -1;
    return set_limit(RLIMIT_NOFILE, "no-file", a->nofile);
}

/* The pid file is made (empty) by the jailer before it forks, so that a failure in a forked
 * child leaves the undo log, kept by the jailer that waits, complete; the process that knows
 * ember's pid writes it. */
static int make_pid_file(void)
{
    char name[NAME_MAX + 1];
    snprintf(name, sizeof(name), "%s.pid", jail.args.exec_name);
    jail.pid_fd =
        openat(jail.dirs.root, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (jail.pid_fd < 0) {
        if (errno == EEXIST)
            return jail_bad_input("%s/%s is already there: the jailer writes its own pid file",
                                  jail.paths.root, name);
        return error_errno("cannot create /%s in the jail", name);
    }
    if (undo_push_made(jail.dirs.root, jail.paths.root, name) < 0) {
        unlinkat(jail.dirs.root, name, 0);
        return -1;
    }
    return 0;
}

static int write_pid_file(pid_t pid)
{
    char text[24];
    snprintf(text, sizeof(text), "%d", (int)pid);
    if (write_all(jail.pid_fd, text, strlen(text)) < 0)
        return error_errno("cannot write /%s.pid in the jail", jail.args.exec_name);
    return 0;
}

static int drop_privileges(uid_t uid, gid_t gid)
{
    if (setgroups(0, NULL) < 0)
        return error_errno("cannot drop the supplementary groups");
    if (setresgid(gid, gid, gid) < 0)
        return error_errno("cannot change to group %u", (unsigned)gid);
    if (setresuid(uid, uid, uid) < 0)
        return error_errno("cannot change to user %u", (unsigned)uid);
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0 || ru != uid || eu != uid ||
        su != uid || rg != gid || eg != gid || sg != gid || (uid != 0 && setuid(0) == 0))
        return error_set("the change to %u:%u did not take", (unsigned)uid, (unsigned)gid);
    /* Nothing ember could run may gain privileges again. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return error_errno("PR_SET_NO_NEW_PRIVS");
    return 0;
}

static _Noreturn void exec_ember(void)
{
    const struct jail_args *a = &jail.args;
    if (drop_privileges(a->uid, a->gid) < 0)
        fail();
    char path[NAME_MAX + 2], start[24], cpu[24], parent_cpu[24];
    snprintf(path, sizeof(path), "/%s", a->exec_name);
    /* Firecracker's start-time flags: ember reports its start-up from them. The CPU time
     * of this process carries on in ember; that of the jailer's processes before it is
     * added through --parent-cpu-time-us. */
    uint64_t own_cpu = clock_us(CLOCK_PROCESS_CPUTIME_ID);
    snprintf(start, sizeof(start), "%llu", (unsigned long long)jail.start_us);
    snprintf(cpu, sizeof(cpu), "%llu", (unsigned long long)own_cpu);
    snprintf(parent_cpu, sizeof(parent_cpu), "%llu",
             (unsigned long long)(jail.ancestors_cpu_us + own_cpu));
    char **argv = calloc((size_t)a->ember_argc + 10, sizeof(char *));
    if (!argv) {
        error_set("out of memory");
        fail();
    }
    int n = 0;
    argv[n++] = path;
    argv[n++] = "--id";
    argv[n++] = (char *)a->id;
    argv[n++] = "--start-time-us";
    argv[n++] = start;
    argv[n++] = "--start-time-cpu-us";
    argv[n++] = cpu;
    argv[n++] = "--parent-cpu-time-us";
    argv[n++] = parent_cpu;
    for (int i = 0; i < a->ember_argc; i++)
        argv[n++] = a->ember_argv[i];
    argv[n] = NULL;
    char *envp[] = {NULL};
    signal(SIGXFSZ, SIG_DFL);
    execve(path, argv, envp);
    if (errno == ENOENT)
        error_errno("cannot run %s in the jail (is a loader or library it needs missing?)", path);
    else
        error_errno("cannot run %s in the jail", path);
    fail();
}

static pid_t fork_counted(bool new_pid_ns)
{
    uint64_t cpu = clock_us(CLOCK_PROCESS_CPUTIME_ID);
    /* Without CLONE_VM and a stack, clone is fork: the child starts where the parent is. */
    pid_t pid = new_pid_ns ? (pid_t)syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, NULL, NULL, NULL, 0)
                           : fork();
    if (pid == 0)
        jail.ancestors_cpu_us += cpu;
    return pid;
}

/* The jailer's last act when it forked: wait until ember runs (the report pipe closes
 * without a word as the last child execs), or until a child reports a failure. */
static _Noreturn void wait_for_ember(int report[2], pid_t child, bool reap_child)
{
    close(report[1]);
    char msg[600];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(report[0], msg + len, sizeof(msg) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (len += (size_t)n) == sizeof(msg) - 1)
            break;
    }
    if (len == 0) {
        if (reap_child)
            waitpid(child, NULL, 0);
        exit(JAIL_EXIT_OK);
    }
    msg[len] = '\0';
    waitpid(child, NULL, 0); /* it is exiting: it reported */
    jail_failure_status = (unsigned char)msg[0];
    fprintf(stderr, "ember-jailer: %s\n", msg + 1);
    undo_run();
    exit(jail_failure_status);
}

/* --daemonize and --new-pid-ns: the processes between the jailer and ember. Returns in the
 * process that is to become ember. */
static void start_processes(void)
{
    const struct jail_args *a = &jail.args;
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        error_errno("pipe");
        fail();
    }
    bool session_leader = getsid(0) == getpid();
    if (a->daemonize) {
        /* Firecracker's double fork: a new session, then a child that is not its leader
         * and so can never acquire a controlling terminal. */
        pid_t child = fork_counted(false);
        if (child < 0) {
            error_errno("cannot fork");
            fail();
        }
        if (child > 0)
            wait_for_ember(report, child, true);
        close(report[0]);
        jail.report_fd = report[1];
        if (setsid() < 0) {
            error_errno("setsid");
            fail();
        }
        pid_t grandchild = fork_counted(false);
        if (grandchild < 0) {
            error_errno("cannot fork");
            fail();
        }
        if (grandchild > 0)
            _exit(0);
        for (int fd = 0; fd < 3; fd++) {
            if (dup2(jail.dev_null_fd, fd) < 0) {
                error_errno("cannot redirect standard streams to /dev/null");
                fail();
            }
        }
        close(jail.dev_null_fd);
    }
    if (!a->new_pid_ns) {
        if (write_pid_file(getpid()) < 0)
            fail();
        return;
    }
    pid_t child = fork_counted(true);
    if (child < 0) {
        error_errno("cannot start a process in a new PID namespace");
        fail();
    }
    if (child > 0) {
        if (write_pid_file(child) < 0) {
            kill(child, SIGKILL);
            fail();
        }
        if (!a->daemonize)
            wait_for_ember(report, child, false);
        _exit(0); /* the daemon's parent: the jailer waits for its report pipe */
    }
    /* Process 1 of the new namespace. A jailer that leads its session would, on exit, send
     * SIGHUP to ember: ember leads a session of its own instead. */
    if (!a->daemonize && session_leader && setsid() < 0) {
        error_errno("setsid");
        fail();
    }
    if (jail.report_fd < 0) {
        close(report[0]);
        jail.report_fd = report[1];
    }
}

int main(int argc, char **argv)
{
    jail.start_us = clock_us(CLOCK_MONOTONIC);
    if (sanitize_process() < 0)
        fail();
    struct jail_args *a = &jail.args;
    if (jail_parse_args(argc, argv, a) < 0)
        fail();
    if (a->help) {
        jail_usage();
        return JAIL_EXIT_OK;
    }
    if (a->version) {
        printf("ember-jailer v%s\nember-jailer %s, Firecracker's jailer as of Firecracker v%s\n",
               EMBER_FIRECRACKER_VERSION, EMBER_VERSION, EMBER_FIRECRACKER_API);
        return JAIL_EXIT_OK;
    }
    /* A write past --resource-limit fsize is an error the jailer reports, not a signal
     * that kills it; ember gets the default back. */
    signal(SIGXFSZ, SIG_IGN);
    if (validate(&jail) < 0)
        fail();
    if (chroot_create(a, &jail.paths, jail.exec_fd) < 0)
        fail();
    if (jail.netns_fd >= 0) {
        if (setns(jail.netns_fd, CLONE_NEWNET) < 0) {
            error_errno("cannot join the network namespace %s", a->netns);
            fail();
        }
        close(jail.netns_fd);
    }
    if (set_limits(a) < 0)
        fail();
    /* The last step that needs the host's /sys. */
    if (cgroup_setup(a, &jail.cgroups) < 0)
        fail();
    if (chroot_enter(&jail.paths) < 0)
        fail();
    if (chroot_make_folders(&jail.paths, a->uid, a->gid, &jail.dirs) < 0 ||
        devices_create(&jail.devices, jail.paths.root, jail.dirs.dev, jail.dirs.dev_net, a->uid,
                       a->gid) < 0 ||
        make_pid_file() < 0)
        fail();
    if (a->daemonize || a->new_pid_ns)
        start_processes();
    else if (write_pid_file(getpid()) < 0)
        fail();
    exec_ember();
}
