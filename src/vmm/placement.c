#include "vmm/placement.h"

#include "util/error.h"
#include "util/log.h"
#include "util/teardown.h"
#include "virtio/poll_window.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* One number of a list: decimal digits only, below PLACEMENT_MAX_CPU. */
static int parse_cpu(const char **p, unsigned *out)
{
    const char *s = *p;
    if (*s == ',' || *s == '-' || *s == '\0')
        return error_set("an empty item in the CPU list");
    if (*s < '0' || *s > '9')
        return error_set("'%.20s' is not a CPU number", s);
    unsigned v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (unsigned)(*s - '0');
        if (v >= PLACEMENT_MAX_CPU)
            return error_set("CPU numbers must be below %d", PLACEMENT_MAX_CPU);
        s++;
    }
    *p = s;
    *out = v;
    return 0;
}

/* Walks a cpulist, calling add for each CPU in order (ranges ascending). */
static int walk_list(const char *s, int (*add)(void *opaque, unsigned cpu), void *opaque)
{
    if (!s || !*s)
        return error_set("an empty CPU list");
    if (strlen(s) > PLACEMENT_MAX_TEXT)
        return error_set("a CPU list longer than %d characters", PLACEMENT_MAX_TEXT);
    const char *p = s;
    for (;;) {
        unsigned lo, hi;
        if (parse_cpu(&p, &lo) < 0)
            return -1;
        hi = lo;
        if (*p == '-') {
            p++;
            if (parse_cpu(&p, &hi) < 0)
                return -1;
            if (hi < lo)
                return error_set("the range %u-%u goes down", lo, hi);
        }
        for (unsigned c = lo; c <= hi; c++) {
            if (add(opaque, c) < 0)
                return -1;
        }
        if (*p == '\0')
            return 0;
        if (*p != ',')
            return error_set("unexpected '%c' in the CPU list '%.40s'", *p, s);
        p++;
    }
}

static int add_to_set(void *opaque, unsigned cpu)
{
    cpu_set_t *set = opaque;
    if (CPU_ISSET(cpu, set))
        return error_set("CPU %u is listed twice", cpu);
    CPU_SET(cpu, set);
    return 0;
}

int cpulist_parse_set(const char *s, cpu_set_t *out)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (walk_list(s, add_to_set, &set) < 0)
        return -1;
    *out = set;
    return 0;
}

struct ordered {
    uint16_t *cpus;
    unsigned n, max;
    cpu_set_t seen;
};

static int add_ordered(void *opaque, unsigned cpu)
{
    struct ordered *o = opaque;
    if (CPU_ISSET(cpu, &o->seen))
        return error_set("CPU %u is listed twice", cpu);
    if (o->n == o->max)
        return error_set("more than %u CPUs", o->max);
    CPU_SET(cpu, &o->seen);
    o->cpus[o->n++] = (uint16_t)cpu;
    return 0;
}

int cpulist_parse_ordered(const char *s, uint16_t *out, unsigned max, unsigned *n)
{
    struct ordered o = {.cpus = out, .max = max};
    CPU_ZERO(&o.seen);
    if (walk_list(s, add_ordered, &o) < 0)
        return -1;
    *n = o.n;
    return 0;
}

/* Appends "lo" or "lo-hi" (after a comma unless first) to buf. */
static void put_range(char *buf, size_t size, size_t *len, unsigned lo, unsigned hi)
{
    if (*len >= size)
        return;
    int w = lo == hi ? snprintf(buf + *len, size - *len, "%s%u", *len ? "," : "", lo)
                     : snprintf(buf + *len, size - *len, "%s%u-%u", *len ? "," : "", lo, hi);
    *len = w < 0 || (size_t)w >= size - *len ? size : *len + (size_t)w;
}

void cpulist_format_ordered(const uint16_t *cpus, unsigned n, char *buf, size_t size)
{
    if (!size)
        return;
    buf[0] = '\0';
    size_t len = 0;
    for (unsigned i = 0; i < n;) {
        unsigned j = i;
        while (j + 1 < n && cpus[j + 1] == cpus[j] + 1)
            j++;
        put_range(buf, size, &len, cpus[i], cpus[j]);
        i = j + 1;
    }
    buf[size - 1] = '\0';
}

void cpulist_format_set(const cpu_set_t *set, char *buf, size_t size)
{
    if (!size)
        return;
    buf[0] = '\0';
    size_t len = 0;
    for (unsigned c = 0; c < PLACEMENT_MAX_CPU; c++) {
        if (!CPU_ISSET(c, set))
            continue;
        unsigned hi = c;
        while (hi + 1 < PLACEMENT_MAX_CPU && CPU_ISSET(hi + 1, set))
            hi++;
        put_range(buf, size, &len, c, hi);
        c = hi;
    }
    buf[size - 1] = '\0';
}

int cpu_placement_from_lists(const char *vmm, const char *vcpu, struct cpu_placement *p)
{
    memset(p, 0, sizeof(*p));
    if (!vmm)
        return error_set("no vmm CPUs (the host CPUs reserved for ember's own threads)");
    if (!vcpu)
        return error_set("no vcpu CPUs (one host CPU per vCPU, in vCPU order)");
    if (cpulist_parse_set(vmm, &p->vmm) < 0)
        return error_prefix("vmm");
    if (cpulist_parse_ordered(vcpu, p->vcpu, PLACEMENT_MAX_VCPUS, &p->nvcpu) < 0)
        return error_prefix("vcpu");
    for (unsigned i = 0; i < p->nvcpu; i++) {
        if (CPU_ISSET(p->vcpu[i], &p->vmm))
            return error_set("CPU %u is both a vmm and a vcpu CPU: the two sets must not overlap",
                             p->vcpu[i]);
    }
    p->poll_us = PLACEMENT_POLL_DEFAULT_US;
    p->set = true;
    return 0;
}

/* poll=US (1..POLL_WINDOW_MAX_US) or poll=off. */
static int parse_poll(const char *v, unsigned *out)
{
    if (!strcmp(v, "off")) {
        *out = 0;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long us = strtoul(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end || errno || us == 0 || us > POLL_WINDOW_MAX_US)
        return error_set("poll '%.20s': give the polling bound in microseconds (1-%u) or off", v,
                         POLL_WINDOW_MAX_US);
    *out = (unsigned)us;
    return 0;
}

int cpu_placement_parse(const char *spec, struct cpu_placement *p)
{
    memset(p, 0, sizeof(*p));
    size_t len = strlen(spec);
    if (len > 2 * PLACEMENT_MAX_TEXT)
        return error_set("longer than %d characters", 2 * PLACEMENT_MAX_TEXT);
    /* Each key's list gathered into its own copy (no longer than the spec). */
    char *vmm = calloc(1, len + 1), *vcpu = calloc(1, len + 1);
    char *copy = strdup(spec);
    int r = -1;
    if (!vmm || !vcpu || !copy) {
        error_set("out of memory");
        goto out;
    }
    char *current = NULL;
    bool have_vmm = false, have_vcpu = false, have_poll = false;
    unsigned poll_us = PLACEMENT_POLL_DEFAULT_US;
    /* Walked by hand, not with strtok, which would skip the empty items of ",,". */
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        char *eq = strchr(item, '=');
        if (eq) {
            *eq = '\0';
            bool *have;
            if (!strcmp(item, "poll")) {
                if (have_poll) {
                    error_set("poll given twice");
                    goto out;
                }
                have_poll = true;
                if (parse_poll(eq + 1, &poll_us) < 0)
                    goto out;
                current = NULL; /* nothing continues a poll value */
                goto next;
            }
            if (!strcmp(item, "vmm")) {
                current = vmm;
                have = &have_vmm;
            } else if (!strcmp(item, "vcpu")) {
                current = vcpu;
                have = &have_vcpu;
            } else {
                error_set("unknown key '%.20s' (vmm=LIST,vcpu=LIST[,poll=US|off])", item);
                goto out;
            }
            if (*have) {
                error_set("%s given twice", item);
                goto out;
            }
            *have = true;
            strcpy(current, eq + 1);
        } else if (!current) {
            error_set("'%.20s' is not part of a CPU list (vmm=LIST,vcpu=LIST[,poll=US|off])", item);
            goto out;
        } else {
            /* Another item of the current list, after its comma (an empty item stays empty
             * and fails the list's parse). */
            strcat(current, ",");
            strcat(current, item);
        }
    next:
        if (!comma)
            break;
        item = comma + 1;
    }
    r = cpu_placement_from_lists(have_vmm ? vmm : NULL, have_vcpu ? vcpu : NULL, p);
    if (r == 0)
        p->poll_us = poll_us;
out:
    free(vmm);
    free(vcpu);
    free(copy);
    return r;
}

/* One CPU of the placement against the host. */
static int check_cpu(unsigned cpu, const cpu_set_t *allowed, unsigned host_cpus)
{
    if (cpu >= host_cpus)
        return error_set("CPU %u does not exist: this host has %u (0-%u)", cpu, host_cpus,
                         host_cpus - 1);
    if (!CPU_ISSET(cpu, allowed)) {
        char list[256];
        cpulist_format_set(allowed, list, sizeof(list));
        return error_set("CPU %u is not one ember may run on (its CPUs: %s)", cpu, list);
    }
    return 0;
}

int cpu_placement_check(const struct cpu_placement *p, unsigned ncpus, const cpu_set_t *allowed,
                        unsigned host_cpus)
{
    if (!p->set)
        return 0;
    if (p->nvcpu != ncpus)
        return error_set("%u vcpu CPU(s) for %u vCPU(s): give one host CPU per vCPU", p->nvcpu,
                         ncpus);
    for (unsigned c = 0; c < PLACEMENT_MAX_CPU; c++) {
        if (CPU_ISSET(c, &p->vmm) && check_cpu(c, allowed, host_cpus) < 0)
            return -1;
    }
    for (unsigned i = 0; i < p->nvcpu; i++) {
        if (check_cpu(p->vcpu[i], allowed, host_cpus) < 0)
            return -1;
    }
    return 0;
}

static struct {
    bool noted;
    cpu_set_t allowed;
    unsigned cpus;
} host;

/* How many CPUs the host can have (the highest in /sys's "possible" list, plus one), or
 * PLACEMENT_MAX_CPU when that cannot be read (a jail without /sys): then only the CPUs ember may
 * run on are checked. */
static unsigned host_possible_cpus(void)
{
    char text[PLACEMENT_MAX_TEXT + 2];
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (!f)
        return PLACEMENT_MAX_CPU;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    text[strcspn(text, "\n")] = '\0';
    cpu_set_t possible;
    if (cpulist_parse_set(text, &possible) < 0)
        return PLACEMENT_MAX_CPU;
    unsigned count = 0;
    for (unsigned c = 0; c < PLACEMENT_MAX_CPU; c++) {
        if (CPU_ISSET(c, &possible))
            count = c + 1;
    }
    return count;
}

void cpu_placement_note_host(void)
{
    if (host.noted)
        return;
    CPU_ZERO(&host.allowed);
    if (sched_getaffinity(0, sizeof(host.allowed), &host.allowed) < 0)
        CPU_SET(0, &host.allowed);
    host.cpus = host_possible_cpus();
    /* A CPU ember may run on exists, whatever the count says. */
    for (unsigned c = host.cpus; c < PLACEMENT_MAX_CPU; c++) {
        if (CPU_ISSET(c, &host.allowed))
            host.cpus = c + 1;
    }
    host.noted = true;
}

int cpu_placement_check_host(const struct cpu_placement *p, unsigned ncpus)
{
    cpu_placement_note_host();
    return cpu_placement_check(p, ncpus, &host.allowed, host.cpus);
}

static int set_affinity(pid_t tid, const cpu_set_t *set)
{
    return sched_setaffinity(tid, sizeof(*set), set);
}

int cpu_placement_apply(const struct cpu_placement *p)
{
    if (!p->set)
        return 0;
    char list[256];
    cpulist_format_set(&p->vmm, list, sizeof(list));
    /* The caller and the main thread: what the machine's threads are made from. */
    if (set_affinity(0, &p->vmm) < 0)
        return error_errno("cannot run on the vmm CPUs %s (are they in ember's cpuset?)", list);
    if (set_affinity(getpid(), &p->vmm) < 0)
        return error_errno("cannot move the main thread to the vmm CPUs %s", list);
    /* Any other thread there is now (none known beyond those, but a library's would count too):
     * through /proc when there is one (a jail may have none). A thread the kernel keeps where
     * it is (an io_uring worker) is left alone. */
    DIR *d = opendir("/proc/self/task");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long tid = strtol(e->d_name, &end, 10);
            if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end || tid <= 0)
                continue;
            if (set_affinity((pid_t)tid, &p->vmm) < 0 && errno != ESRCH)
                log_debug("thread %ld stays where it is: %s", tid, strerror(errno));
        }
        closedir(d);
    }
    int helper = async_teardown_pid();
    if (helper > 0 && set_affinity(helper, &p->vmm) < 0 && errno != ESRCH)
        return error_errno("cannot move the teardown helper to the vmm CPUs %s", list);
    return 0;
}

int cpu_placement_pin_vcpu(const struct cpu_placement *p, unsigned id)
{
    if (!p->set || id >= p->nvcpu)
        return error_set("internal: no host CPU for vCPU %u", id);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(p->vcpu[id], &one);
    if (set_affinity(0, &one) < 0)
        return error_errno("vCPU %u: cannot run on host CPU %u (is it in ember's cpuset?)", id,
                           p->vcpu[id]);
    return 0;
}
