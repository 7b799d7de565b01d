/* CPU templates as lists of bit changes: Firecracker's static templates
 * (C3, T2, T2S, T2CL on Intel, T2A on AMD) and custom ones (PUT
 * /cpu-config). Each change sets chosen bits of one CPUID register or one
 * MSR and leaves the others as KVM reports them. */
#ifndef EMBER_ARCH_X86_CPU_TEMPLATE_H
#define EMBER_ARCH_X86_CPU_TEMPLATE_H

#include "arch/x86/cpuid.h"

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cpuid_register { CPUID_EAX, CPUID_EBX, CPUID_ECX, CPUID_EDX };

/* The bits of `mask` in register `reg` of leaf/subleaf become those of
 * `value`; the entry's KVM flags become `flags`. */
struct cpuid_modifier {
    uint32_t leaf, subleaf;
    uint32_t flags;
    enum cpuid_register reg;
    uint32_t mask, value;
};

struct msr_modifier {
    uint32_t index;
    uint64_t mask, value;
};

/* A KVM capability the template needs (checked at start) or, with
 * remove, one it says may be missing. */
struct kvm_cap_modifier {
    uint32_t cap;
    bool remove;
};

/* Bounds for custom templates (a static one has far fewer). */
#define CPU_MODS_MAX_CPUID 256
#define CPU_MODS_MAX_MSR   64
#define CPU_MODS_MAX_CAPS  64

struct cpu_modifiers {
    unsigned ncpuid, nmsr, ncaps;
    const struct cpuid_modifier *cpuid;
    const struct msr_modifier *msr;
    const struct kvm_cap_modifier *caps;
};

/* The changes a static template makes; NULL for host and baseline (which
 * cpuid_filter handles). */
const struct cpu_modifiers *cpu_template_modifiers(enum cpu_template t);

/* Refuses a static template on a host of the other vendor (leaf 0 of
 * KVM's supported CPUID names it), with Firecracker's words. */
int cpu_template_check_vendor(struct kvm_cpuid2 *supported, enum cpu_template t);

/* Applies the CPUID changes; a leaf/subleaf KVM does not report is an
 * error, as is a leaf the template names twice with different flags. */
int cpu_modifiers_apply_cpuid(struct kvm_cpuid2 *c, const struct cpu_modifiers *m);

/* After KVM_SET_CPUID2, names the bits the template decides that the vCPU
 * does not have as decided (read back with KVM_GET_CPUID2): some hosts pass
 * parts of the real CPUID through. Writes "LEAF.SUBLEAF REG BITS" items,
 * space-separated, e.g. "0x7.0 ebx 0x10000"; returns how many. */
int cpu_modifiers_leaks(struct kvm_cpuid2 *actual, const struct cpu_modifiers *m, char *buf,
                        size_t len);

static inline uint64_t msr_modifier_apply(const struct msr_modifier *m, uint64_t v)
{
    return (v & ~m->mask) | (m->value & m->mask);
}

/* Parses Firecracker's bitmap notation ("0b" optional, then '0', '1',
 * 'x' for bits left alone and '_' as a separator, most significant bit
 * first, at most `bits` digits) into mask and value. */
int cpu_bitmap_parse(const char *s, unsigned bits, uint64_t *mask, uint64_t *value);

/* A custom template owns its arrays. */
struct cpu_custom_template {
    struct cpu_modifiers mods; /* points into the arrays below */
    struct cpuid_modifier cpuid[CPU_MODS_MAX_CPUID];
    struct msr_modifier msr[CPU_MODS_MAX_MSR];
    struct kvm_cap_modifier caps[CPU_MODS_MAX_CAPS];
};

#endif
