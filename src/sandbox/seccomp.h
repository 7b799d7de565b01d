/* Per-thread seccomp filters. ember's threads are of a few kinds (the
 * main thread before and after the machine starts, vCPUs, one I/O thread
 * per virtio device, user networking, the console's input copier, the
 * teardown helper); each installs the filter of its kind itself, before it
 * first handles anything a guest or a client controls, and only for
 * itself (no TSYNC). A system call outside the filter ends the whole
 * process with EXIT_SECCOMP_VIOLATION and one log line naming the thread
 * and the system call. docs/architecture.md ("Confinement") has the why. */
#ifndef EMBER_SANDBOX_SECCOMP_H
#define EMBER_SANDBOX_SECCOMP_H

#include <stdbool.h>
#include <stdint.h>

enum seccomp_kind {
    SECCOMP_PREBOOT,    /* main thread, API mode, until InstanceStart */
    SECCOMP_MAIN,       /* main thread while the machine runs */
    SECCOMP_VCPU,       /* vcpuN */
    SECCOMP_BLK,        /* virtio-blk I/O thread */
    SECCOMP_NET,        /* virtio-net I/O thread */
    SECCOMP_CONSOLE,    /* virtio-console I/O thread */
    SECCOMP_RNG,        /* virtio-rng I/O thread */
    SECCOMP_VSOCK,      /* virtio-vsock I/O thread */
    SECCOMP_PMEM,       /* virtio-pmem I/O thread */
    SECCOMP_VHOST_USER, /* I/O thread of a vhost-user device */
    SECCOMP_SLIRP,      /* user networking (libslirp) */
    SECCOMP_STDIN,      /* copies a console input that epoll cannot watch */
    SECCOMP_TEARDOWN,   /* the helper process that outlives ember's exit */
    SECCOMP_NKINDS,
    SECCOMP_NONE = -1, /* a thread that installs nothing (unit tests) */
};

/* The kind's name, as in log lines, the README and policy files. */
const char *seccomp_kind_name(enum seccomp_kind kind);
/* The I/O thread kind of a virtio device type (VIRTIO_ID_*). */
enum seccomp_kind seccomp_kind_of_device(uint32_t virtio_device_id);

/* At start, before any other thread or process exists: enabled (the
 * default) or not (--no-seccomp); policy_path NULL for ember's own filters,
 * or a file in Firecracker's seccompiler JSON format (--seccomp-filter),
 * read and compiled now. Installs the SIGSYS handler that reports
 * violations. Returns -1 with error_get() set (and *usage true when the
 * fault is the policy file's). */
int seccomp_setup(bool enabled, const char *policy_path, bool *usage);
bool seccomp_enabled(void);

/* The calling thread installs the filter of its kind (no-op when disabled
 * or never set up). thread_name (the thread's own, e.g. "vcpu1") goes into
 * the violation line. A failure cannot be left behind: ember exits. */
void seccomp_enter(enum seccomp_kind kind, const char *thread_name);

/* For the teardown helper, which shares ember's memory but not its thread:
 * installs with raw system calls only, no library state. */
void seccomp_enter_teardown(void);
/* Where the teardown helper's stack lies, so that a violation there is
 * named as the helper's, and the process it reports to. */
void seccomp_note_teardown(const void *stack, unsigned long size, int ember_pid);

/* The metrics file, which gets one last line counting the violation. */
void seccomp_set_metrics_fd(int fd);
/* Violations so far (0 in a live process: a violation ends it). */
uint64_t seccomp_fault_count(void);

/* How many system calls, and rules, ember's own filter for kind lets
 * through (sanitizer builds add to these; see seccomp.c). */
unsigned seccomp_builtin_syscalls(enum seccomp_kind kind);
unsigned seccomp_builtin_rules(enum seccomp_kind kind);

#endif
