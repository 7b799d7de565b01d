#include "arch/x86/cpuid.h"

#include "util/error.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#define BIT(n) (1u << (n))

/* Leaf 1 */
#define ECX_FMA        BIT(12)
#define ECX_CX16       BIT(13)
#define ECX_TSCDEADLN  BIT(24)
#define ECX_POPCNT     BIT(23)
#define ECX_XSAVE      BIT(26)
#define ECX_OSXSAVE    BIT(27)
#define ECX_AVX        BIT(28)
#define ECX_F16C       BIT(29)
#define ECX_HYPERVISOR BIT(31)
#define EDX_HTT        BIT(28)
/* Leaf 7.0 */
#define EBX7_FSGSBASE BIT(0)
#define EBX7_AVX2     BIT(5)
#define EBX7_ERMS     BIT(9)
#define EBX7_AVX512F  BIT(16)
#define EBX7_SMAP     BIT(20)
#define EBX7_AVX512_ALL                                                                            \
    (BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31))
/* AVX-512 VBMI/VBMI2/VNNI/BITALG/VPOPCNTDQ, PKU/OSPKE, VAES, VPCLMULQDQ */
#define ECX7_XSAVE_DEPENDENT                                                                       \
    (BIT(1) | BIT(3) | BIT(4) | BIT(6) | BIT(9) | BIT(10) | BIT(11) | BIT(12) | BIT(14))
#define EDX7_FSRM BIT(4)
/* AVX512_4VNNIW/4FMAPS, VP2INTERSECT, AMX-BF16, AVX512_FP16, AMX-TILE, AMX-INT8 */
#define EDX7_XSAVE_DEPENDENT (BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25))
/* Leaf 7.1 EAX: AVX-VNNI, AVX512_BF16, fast zero-length/short rep movs/stos/cmps */
#define EAX71_HIDDEN (BIT(4) | BIT(5) | BIT(10) | BIT(11) | BIT(12))
/* Leaf 0x80000001 ECX: ABM (LZCNT+POPCNT), XOP, FMA4, TOPOEXT */
#define ECX81_ABM  BIT(5)
#define ECX81_XOP  BIT(11)
#define ECX81_FMA4 BIT(16)
/* Leaf 0x40000001 EAX: KVM paravirtual features */
#define KVM_FEAT_CLOCKSOURCE  BIT(0)
#define KVM_FEAT_CLOCKSOURCE2 BIT(3)
#define KVM_FEAT_PV_UNHALT    BIT(7)
#define KVM_FEAT_PV_SEND_IPI  BIT(11)
#define KVM_FEAT_PV_SCHED_YLD BIT(13)
#define KVM_FEAT_HC_MAP_GPA   BIT(16)
#define KVM_FEAT_CLOCK_STABLE BIT(24)

static const char *const template_names[] = {
    [CPU_TEMPLATE_HOST] = "host", [CPU_TEMPLATE_BASELINE] = "baseline",
    [CPU_TEMPLATE_C3] = "C3",     [CPU_TEMPLATE_T2] = "T2",
    [CPU_TEMPLATE_T2S] = "T2S",   [CPU_TEMPLATE_T2CL] = "T2CL",
    [CPU_TEMPLATE_T2A] = "T2A",
};

int cpu_template_parse(const char *name, enum cpu_template *out)
{
    for (size_t i = 0; i < sizeof(template_names) / sizeof(template_names[0]); i++) {
        if (strcmp(name, template_names[i]) == 0) {
            *out = (enum cpu_template)i;
            return 0;
        }
    }
    return error_set("unknown CPU template '%.40s' (host, baseline, C3, T2, T2S, T2CL, T2A)", name);
}

const char *cpu_template_name(enum cpu_template t)
{
    return (size_t)t < sizeof(template_names) / sizeof(template_names[0]) ? template_names[t]
                                                                          : "host";
}

struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *cpuid, unsigned function, unsigned index)
{
    for (unsigned i = 0; i < cpuid->nent; i++) {
        struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
        if (e->function != function)
            continue;
        if ((e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) && e->index != index)
            continue;
        return e;
    }
    return NULL;
}

struct kvm_cpuid2 *cpuid_get_supported(int kvm_fd, unsigned extra, unsigned *capacity)
{
    for (unsigned n = 64; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (n + extra) * sizeof(c->entries[0]));
        if (!c) {
            error_set("out of memory");
            return NULL;
        }
        c->nent = n;
        if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            *capacity = n + extra;
            return c;
        }
        int e = errno;
        free(c);
        if (e != E2BIG) {
            errno = e;
            error_errno("KVM_GET_SUPPORTED_CPUID");
            return NULL;
        }
    }
    error_set("KVM_GET_SUPPORTED_CPUID: too many entries");
    return NULL;
}

static unsigned bits_for(unsigned count)
{
    unsigned b = 0;
    while ((1u << b) < count)
        b++;
    return b;
}

static void drop_leaf(struct kvm_cpuid2 *c, unsigned function)
{
    unsigned out = 0;
    for (unsigned i = 0; i < c->nent; i++) {
        if (c->entries[i].function != function)
            c->entries[out++] = c->entries[i];
    }
    c->nent = out;
}

static unsigned threads_per_core(const struct cpuid_params *p)
{
    return p->threads_per_core > 1 && p->ncpus > 1 ? p->threads_per_core : 1;
}

/* Replaces every subleaf of an extended-topology leaf (0xb or 0x1f) with
 * two levels: threads per core (1, or 2 with SMT), then all ncpus in one
 * package. The APIC id is the vCPU index, so with SMT vCPUs 2k and 2k+1
 * are the threads of core k. */
static int set_topology_leaf(struct kvm_cpuid2 *c, unsigned max, unsigned function,
                             const struct cpuid_params *p)
{
    if (!cpuid_find(c, function, 0))
        return 0;
    drop_leaf(c, function);
    if (c->nent + 3 > max)
        return error_set("no room for CPUID topology leaves");
    unsigned threads = threads_per_core(p);
    struct kvm_cpuid_entry2 smt = {
        .function = function,
        .index = 0,
        .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        .eax = bits_for(threads),
        .ebx = threads,
        .ecx = 0 | (1u << 8), /* level 0, type SMT */
        .edx = p->vcpu_id,
    };
    struct kvm_cpuid_entry2 core = {
        .function = function,
        .index = 1,
        .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        .eax = bits_for(p->ncpus),
        .ebx = p->ncpus,
        .ecx = 1 | (2u << 8), /* level 1, type core */
        .edx = p->vcpu_id,
    };
    struct kvm_cpuid_entry2 end = {
        .function = function,
        .index = 2,
        .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        .ecx = 2, /* level 2, type invalid: the list ends */
        .edx = p->vcpu_id,
    };
    c->entries[c->nent++] = smt;
    c->entries[c->nent++] = core;
    c->entries[c->nent++] = end;
    return 0;
}

enum { REG_EAX, REG_EBX, REG_ECX, REG_EDX };

/* What the baseline template hides, by name, so that the same table masks
 * the bits and later checks that the host let them stay hidden. */
static const struct hidden_feature {
    uint32_t leaf, index;
    uint8_t reg;
    uint32_t mask;
    const char *name;
} baseline_hidden[] = {
    {1, 0, REG_ECX, ECX_CX16, "CX16"},
    {1, 0, REG_ECX, ECX_POPCNT, "POPCNT"},
    {1, 0, REG_ECX, ECX_XSAVE, "XSAVE"},
    {1, 0, REG_ECX, ECX_AVX | ECX_FMA | ECX_F16C, "AVX"},
    {7, 0, REG_EBX, EBX7_SMAP, "SMAP"},
    /* With FSGSBASE, Linux's NMI/#DB/#MC entry finds its per-CPU base with
     * LSL (or RDPID), which a CPL0 emulator without them cannot run: the
     * first NMI (an RCU stall report's backtrace, say) would stop the guest. */
    {7, 0, REG_EBX, EBX7_FSGSBASE, "FSGSBASE"},
    {7, 0, REG_EBX, EBX7_ERMS, "ERMS"},
    {7, 0, REG_EDX, EDX7_FSRM, "FSRM"},
    {7, 0, REG_EBX, EBX7_AVX2 | EBX7_AVX512_ALL, "AVX2/AVX-512"},
    {7, 0, REG_ECX, ECX7_XSAVE_DEPENDENT, "AVX-512/VAES/PKU"},
    {7, 0, REG_EDX, EDX7_XSAVE_DEPENDENT, "AVX-512/AMX"},
    {7, 1, REG_EAX, EAX71_HIDDEN, "AVX-VNNI/fast short REP"},
    {0x80000001, 0, REG_ECX, ECX81_ABM | ECX81_XOP | ECX81_FMA4, "ABM/XOP/FMA4"},
    /* Paravirtual features whose use needs a hypercall (vmmcall/vmcall):
     * PV IPIs, PV spinlock kicks, directed yield; and clock pairing, which
     * has no bit of its own: the guest only tries it on top of kvmclock,
     * so kvmclock goes too and the guest uses the TSC. */
    {0x40000001, 0, REG_EAX, KVM_FEAT_PV_UNHALT, "PV_UNHALT"},
    {0x40000001, 0, REG_EAX, KVM_FEAT_PV_SEND_IPI, "PV_SEND_IPI"},
    {0x40000001, 0, REG_EAX, KVM_FEAT_PV_SCHED_YLD, "PV_SCHED_YIELD"},
    {0x40000001, 0, REG_EAX, KVM_FEAT_HC_MAP_GPA, "HC_MAP_GPA_RANGE"},
    {0x40000001, 0, REG_EAX, KVM_FEAT_CLOCKSOURCE | KVM_FEAT_CLOCKSOURCE2 | KVM_FEAT_CLOCK_STABLE,
     "kvmclock"},
};

static uint32_t *reg_of(struct kvm_cpuid_entry2 *e, uint8_t reg)
{
    switch (reg) {
    case REG_EAX:
        return &e->eax;
    case REG_EBX:
        return &e->ebx;
    case REG_ECX:
        return &e->ecx;
    default:
        return &e->edx;
    }
}

static void apply_baseline(struct kvm_cpuid2 *c)
{
    for (size_t i = 0; i < sizeof(baseline_hidden) / sizeof(baseline_hidden[0]); i++) {
        const struct hidden_feature *h = &baseline_hidden[i];
        struct kvm_cpuid_entry2 *e = cpuid_find(c, h->leaf, h->index);
        if (e)
            *reg_of(e, h->reg) &= ~h->mask;
    }
    /* The OS-enabled bit and XSAVE's own leaf go with XSAVE. */
    struct kvm_cpuid_entry2 *e = cpuid_find(c, 1, 0);
    if (e)
        e->ecx &= ~ECX_OSXSAVE;
    drop_leaf(c, 0xd);
}

int cpuid_template_leaks(struct kvm_cpuid2 *actual, enum cpu_template t, char *buf, size_t len)
{
    size_t used = 0;
    int count = 0;
    buf[0] = '\0';
    if (t != CPU_TEMPLATE_BASELINE)
        return 0;
    for (size_t i = 0; i < sizeof(baseline_hidden) / sizeof(baseline_hidden[0]); i++) {
        const struct hidden_feature *h = &baseline_hidden[i];
        struct kvm_cpuid_entry2 *e = cpuid_find(actual, h->leaf, h->index);
        if (!e || !(*reg_of(e, h->reg) & h->mask))
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", count ? " " : "", h->name);
        if (n > 0 && (size_t)n < len - used)
            used += (size_t)n;
        count++;
    }
    return count;
}

int cpuid_filter(struct kvm_cpuid2 *c, unsigned max, const struct cpuid_params *p)
{
    if (p->ncpus == 0 || p->vcpu_id >= p->ncpus)
        return error_set("invalid vCPU %u of %u", p->vcpu_id, p->ncpus);
    if (p->ncpus % threads_per_core(p) != 0)
        return error_set("%u vCPUs do not make whole cores of %u threads", p->ncpus,
                         threads_per_core(p));
    struct kvm_cpuid_entry2 *e;
    unsigned apic_id = p->vcpu_id;

    if ((e = cpuid_find(c, 1, 0))) {
        /* EBX: APIC id [31:24], logical processors per package [23:16],
         * CLFLUSH line size [15:8] (kept), brand index [7:0] (kept). */
        unsigned logical = p->ncpus > 255 ? 255 : p->ncpus;
        e->ebx = (e->ebx & 0xffff) | (logical << 16) | (apic_id << 24);
        e->ecx |= ECX_HYPERVISOR;
        if (p->tsc_deadline)
            e->ecx |= ECX_TSCDEADLN;
        else
            e->ecx &= ~ECX_TSCDEADLN;
        if (p->ncpus > 1)
            e->edx |= EDX_HTT;
        else
            e->edx &= ~EDX_HTT;
    }
    /* Intel deterministic cache parameters: cores per package [31:26];
     * the threads of a core share its L1 and L2, the package shares L3. */
    unsigned threads = threads_per_core(p);
    for (unsigned i = 0; i < c->nent; i++) {
        e = &c->entries[i];
        if (e->function != 4 || (e->eax & 0x1f) == 0)
            continue;
        unsigned logical = p->ncpus > 64 ? 64 : p->ncpus;
        unsigned cores = p->ncpus / threads > 64 ? 64 : p->ncpus / threads;
        unsigned level = (e->eax >> 5) & 0x7;
        unsigned sharing = level >= 3 ? logical : threads;
        e->eax = (e->eax & 0x3fff) | ((sharing - 1) << 14) | ((cores - 1) << 26);
    }
    if (set_topology_leaf(c, max, 0xb, p) < 0 || set_topology_leaf(c, max, 0x1f, p) < 0)
        return -1;
    if ((e = cpuid_find(c, 0x80000008, 0))) {
        /* AMD: NC [7:0] = cores - 1, ApicIdCoreIdSize [15:12]. */
        unsigned nc = p->ncpus > 256 ? 256 : p->ncpus;
        e->ecx = (e->ecx & ~0xf0ffu) | (nc - 1) | (bits_for(p->ncpus) << 12);
    }
    if ((e = cpuid_find(c, 0x8000001e, 0))) {
        /* AMD extended APIC id, core id and threads per core - 1; one
         * node. */
        e->eax = apic_id;
        e->ebx = ((apic_id / threads) & 0xff) | ((threads - 1) << 8);
        e->ecx = 0;
        e->edx = 0;
    }
    if ((e = cpuid_find(c, 0x80000001, 0))) {
        /* Legacy AMD multi-core flag follows the package size. */
        if (p->ncpus > 1)
            e->ecx |= BIT(1);
        else
            e->ecx &= ~BIT(1);
    }
    if (p->template == CPU_TEMPLATE_BASELINE)
        apply_baseline(c);
    return 0;
}
