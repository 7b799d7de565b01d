/* Where ember's threads run on the host: `--cpu-placement vmm=LIST,vcpu=LIST` and the API's
 * machine-config `cpu_placement` {"vmm": LIST, "vcpu": LIST}. The host CPUs in `vmm` are
 * reserved for everything ember does that is not running the guest (the main thread with the
 * API and the event loop, every device I/O thread, user networking, the console copier, the
 * teardown helper); each vCPU thread runs on its own CPU of `vcpu`, given in vCPU order. A LIST
 * is Linux's cpulist format ("0-3,5"). Without a placement ember leaves affinity alone.
 * With one, the device I/O threads (on the reserved CPUs) also poll their rings after work, in
 * an adaptive window bounded by `poll=US` (default PLACEMENT_POLL_DEFAULT_US; `poll=off` or
 * API `poll_us` 0 turns polling off): virtio/poll_window.h.
 * docs/architecture.md ("Threads and host CPUs") has the why. */
#ifndef EMBER_VMM_PLACEMENT_H
#define EMBER_VMM_PLACEMENT_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* As many vCPUs as ember can have (cli.c's --cpus bound). */
#define PLACEMENT_MAX_VCPUS 256
/* A CPU number must be below this (the size of a cpu_set_t). */
#define PLACEMENT_MAX_CPU CPU_SETSIZE
/* The longest list or spec taken (ample for any real list). */
#define PLACEMENT_MAX_TEXT 4096

/* The bound of the machine-wide polling window when a placement does not say. */
#define PLACEMENT_POLL_DEFAULT_US 1000u

struct cpu_placement {
    bool set;
    unsigned poll_us;                   /* bound of the I/O threads' polling; 0: off */
    cpu_set_t vmm;                      /* reserved for every thread that is not a vCPU */
    unsigned nvcpu;                     /* how many vCPU CPUs were given */
    uint16_t vcpu[PLACEMENT_MAX_VCPUS]; /* host CPU of vCPU i */
};

/* A cpulist ("0-3,5": numbers and ascending ranges, comma-separated, no blanks) into a set;
 * a CPU may appear once only. -1 with error_get() set on anything else. */
int cpulist_parse_set(const char *s, cpu_set_t *out);
/* The same list in the order given (ranges ascending), at most max CPUs, each once. */
int cpulist_parse_ordered(const char *s, uint16_t *out, unsigned max, unsigned *n);
/* Back to text ("0-3,5"); an ordered list keeps its order. Truncated to size if longer. */
void cpulist_format_set(const cpu_set_t *set, char *buf, size_t size);
void cpulist_format_ordered(const uint16_t *cpus, unsigned n, char *buf, size_t size);

/* The two lists into *p (p->set true, polling at its default bound): each well formed, no vCPU
 * CPU twice, and no CPU in both. Whether the CPUs exist and match the vCPU count is
 * cpu_placement_check's. */
int cpu_placement_from_lists(const char *vmm, const char *vcpu, struct cpu_placement *p);
/* `vmm=LIST,vcpu=LIST[,poll=US|off]` (the --cpu-placement spec): items are split at the commas,
 * and an item without '=' continues the list of the key before it ("vmm=0,2,vcpu=1,3"). */
int cpu_placement_parse(const char *spec, struct cpu_placement *p);
/* Against the machine and host: one vCPU CPU per vCPU (ncpus), and every CPU one that exists
 * (below host_cpus) and that ember may run on (in allowed). */
int cpu_placement_check(const struct cpu_placement *p, unsigned ncpus, const cpu_set_t *allowed,
                        unsigned host_cpus);
/* The same against this host: the CPUs ember was allowed at start (cpu_placement_note_host). */
int cpu_placement_check_host(const struct cpu_placement *p, unsigned ncpus);

/* At start, before ember changes any affinity (and before any other thread exists): notes the
 * CPUs the process may run on (sched_getaffinity, which a cgroup cpuset bounds) and how many
 * the host has. Later calls do nothing. */
void cpu_placement_note_host(void);

/* Puts every thread that exists now (the caller, the main thread, any other of the process, the
 * teardown helper) on the reserved CPUs. Threads created afterwards inherit their creator's
 * affinity, so call it before the machine's threads are made, from a thread that makes them.
 * vCPU threads move to theirs themselves (cpu_placement_pin_vcpu). */
int cpu_placement_apply(const struct cpu_placement *p);
/* Moves the calling thread, vCPU id's, to its CPU (vmm/vcpu.c, before the guest runs). */
int cpu_placement_pin_vcpu(const struct cpu_placement *p, unsigned id);

#endif
