/* The CPUID a vCPU sees: what KVM supports, filtered per vCPU (APIC id,
 * topology, hypervisor bit) and through a CPU template. */
#ifndef EMBER_ARCH_X86_CPUID_H
#define EMBER_ARCH_X86_CPUID_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>

enum cpu_template {
    CPU_TEMPLATE_HOST,     /* everything KVM offers */
    CPU_TEMPLATE_BASELINE, /* without what software and nested hosts cannot run */
    /* Firecracker's static templates (cpu_template.h) */
    CPU_TEMPLATE_C3,
    CPU_TEMPLATE_T2,
    CPU_TEMPLATE_T2S,
    CPU_TEMPLATE_T2CL,
    CPU_TEMPLATE_T2A,
};

int cpu_template_parse(const char *name, enum cpu_template *out);
const char *cpu_template_name(enum cpu_template t);

struct cpuid_params {
    unsigned vcpu_id; /* also the APIC id */
    unsigned ncpus;
    unsigned threads_per_core; /* 1, or 2 with SMT (ncpus even); 0 counts as 1 */
    enum cpu_template template;
    bool tsc_deadline; /* KVM emulates the LAPIC TSC-deadline timer */
};

/* Filters entries in place (may add topology subleaves up to the array's
 * capacity `max`, may drop entries). */
int cpuid_filter(struct kvm_cpuid2 *cpuid, unsigned max, const struct cpuid_params *p);
/* The entry for function/index or NULL. */
struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *cpuid, unsigned function, unsigned index);

/* After KVM_SET_CPUID2, names (space-separated, into buf) the features the
 * template hides that the vCPU still reports (read back with
 * KVM_GET_CPUID2): some hosts pass parts of the real CPUID through.
 * Returns how many. */
int cpuid_template_leaks(struct kvm_cpuid2 *actual, enum cpu_template t, char *buf, size_t len);

/* KVM_GET_SUPPORTED_CPUID into a fresh allocation (free()), with room for
 * `extra` more entries. */
struct kvm_cpuid2 *cpuid_get_supported(int kvm_fd, unsigned extra, unsigned *capacity);

#endif
