#include "arch/x86/cpu_template.h"

#include "util/error.h"

#include <stdio.h>
#include <string.h>

#define BIT(n) (1u << (n))

/* ---- what the static templates change ------------------------------------
 *
 * Each static template makes a guest look like the CPU of an EC2 instance
 * family (as Firecracker defines them, so that a fleet moving from
 * Firecracker sees the same guest CPU): the version fields of that CPU, and
 * the features it lacks hidden. Everything else is what KVM offers. */

/* Leaf 1 EAX: stepping, model, family, extended model and extended family
 * (processor type and the reserved bits stay). */
#define VERSION_FIELDS    0x0fff3fffu
#define VERSION_E5_2666V3 0x000306f2u /* Haswell-EP, family 6 model 0x3f stepping 2 (T2) */
#define VERSION_E5_2680V2 0x000306e4u /* Ivy Bridge-EP, family 6 model 0x3e stepping 4 (C3) */

/* Leaf 1 ECX */
#define L1C_DTES64  BIT(2)
#define L1C_MONITOR BIT(3)
#define L1C_DSCPL   BIT(4)
#define L1C_VMX     BIT(5)
#define L1C_SMX     BIT(6)
#define L1C_EIST    BIT(7)
#define L1C_TM2     BIT(8)
#define L1C_CNXTID  BIT(10)
#define L1C_SDBG    BIT(11)
#define L1C_FMA     BIT(12)
#define L1C_XTPR    BIT(14)
#define L1C_PDCM    BIT(15)
#define L1C_DCA     BIT(18)
#define L1C_MOVBE   BIT(22)
/* Monitoring, debug-store, power and virtualization features no guest of
 * these instances sees. */
#define L1C_HOST_ONLY                                                                              \
    (L1C_DTES64 | L1C_MONITOR | L1C_DSCPL | L1C_VMX | L1C_TM2 | L1C_CNXTID | L1C_SDBG | L1C_XTPR | \
     L1C_PDCM)

/* Leaf 1 EDX */
#define L1D_MCE    BIT(7)
#define L1D_MTRR   BIT(12)
#define L1D_PSN    BIT(18)
#define L1D_DS     BIT(21)
#define L1D_ACPI   BIT(22)
#define L1D_SS     BIT(27)
#define L1D_TM     BIT(29)
#define L1D_IA64   BIT(30)
#define L1D_PBE    BIT(31)
#define L1D_HIDDEN (L1D_PSN | L1D_DS | L1D_ACPI | L1D_SS | L1D_TM | L1D_PBE)

/* Leaf 7.0 EBX */
#define L7B_SGX        BIT(2)
#define L7B_BMI1       BIT(3)
#define L7B_HLE        BIT(4)
#define L7B_AVX2       BIT(5)
#define L7B_BMI2       BIT(8)
#define L7B_ERMS       BIT(9)
#define L7B_INVPCID    BIT(10)
#define L7B_RTM        BIT(11)
#define L7B_RDTM       BIT(12)
#define L7B_MPX        BIT(14)
#define L7B_RDTA       BIT(15)
#define L7B_AVX512F    BIT(16)
#define L7B_AVX512DQ   BIT(17)
#define L7B_RDSEED     BIT(18)
#define L7B_ADX        BIT(19)
#define L7B_AVX512IFMA BIT(21)
#define L7B_PCOMMIT    BIT(22)
#define L7B_CLFLUSHOPT BIT(23)
#define L7B_CLWB       BIT(24)
#define L7B_PT         BIT(25)
#define L7B_AVX512PF   BIT(26)
#define L7B_AVX512ER   BIT(27)
#define L7B_AVX512CD   BIT(28)
#define L7B_SHA        BIT(29)
#define L7B_AVX512BW   BIT(30)
#define L7B_AVX512VL   BIT(31)
#define L7B_AVX512                                                                                 \
    (L7B_AVX512F | L7B_AVX512DQ | L7B_AVX512IFMA | L7B_AVX512PF | L7B_AVX512ER | L7B_AVX512CD |    \
     L7B_AVX512BW | L7B_AVX512VL)
/* Hidden by C3 and T2 alike: SGX, TSX, resource director, MPX, RDSEED,
 * ADX, Processor Trace, cache-line flush and write-back, SHA, AVX-512. */
#define L7B_HIDDEN_BOTH                                                                            \
    (L7B_SGX | L7B_HLE | L7B_RTM | L7B_RDTM | L7B_MPX | L7B_RDTA | L7B_RDSEED | L7B_ADX |          \
     L7B_CLFLUSHOPT | L7B_CLWB | L7B_PT | L7B_SHA | L7B_AVX512)

/* Leaf 7.0 ECX */
#define L7C_AVX512VBMI      BIT(1)
#define L7C_UMIP            BIT(2)
#define L7C_PKU             BIT(3)
#define L7C_OSPKE           BIT(4)
#define L7C_AVX512VBMI2     BIT(6)
#define L7C_GFNI            BIT(8)
#define L7C_VAES            BIT(9)
#define L7C_VPCLMULQDQ      BIT(10)
#define L7C_AVX512VNNI      BIT(11)
#define L7C_AVX512BITALG    BIT(12)
#define L7C_AVX512VPOPCNTDQ BIT(14)
#define L7C_LA57            BIT(16)
#define L7C_RDPID           BIT(22)
#define L7C_SGXLC           BIT(30)
#define L7C_C3_HIDDEN                                                                              \
    (L7C_AVX512VBMI | L7C_UMIP | L7C_PKU | L7C_OSPKE | L7C_AVX512VNNI | L7C_AVX512VPOPCNTDQ |      \
     L7C_LA57 | L7C_RDPID | L7C_SGXLC)
#define L7C_T2_HIDDEN                                                                              \
    (L7C_C3_HIDDEN | L7C_AVX512VBMI2 | L7C_GFNI | L7C_VAES | L7C_VPCLMULQDQ | L7C_AVX512BITALG)

/* Leaf 7.0 EDX */
#define L7D_AVX512_4VNNIW       BIT(2)
#define L7D_AVX512_4FMAPS       BIT(3)
#define L7D_FSRM                BIT(4)
#define L7D_AVX512_VP2INTERSECT BIT(8)

/* Leaf 0xd.0 EAX: the XSAVE state components of MPX (3, 4), AVX-512 (5-7)
 * and PKRU (9). */
#define LD0A_HIDDEN (BIT(3) | BIT(4) | BIT(5) | BIT(6) | BIT(7) | BIT(9))
/* Leaf 0xd.1 EAX: XSAVEC, XGETBV with ECX=1, XSAVES/XRSTORS. */
#define LD1A_HIDDEN (BIT(1) | BIT(2) | BIT(3))

/* Leaf 0x80000001 ECX */
#define L81C_SVM         BIT(2)
#define L81C_ABM         BIT(5)
#define L81C_SSE4A       BIT(6)
#define L81C_MISALIGNSSE BIT(7)
#define L81C_PREFETCHW   BIT(8)
#define L81C_MONITORX    BIT(29)
/* Leaf 0x80000001 EDX */
#define L81D_MMXEXT  BIT(22)
#define L81D_MMX     BIT(23)
#define L81D_FXSR    BIT(24)
#define L81D_FFXSR   BIT(25)
#define L81D_PAGE1GB BIT(26)

/* Leaf 0x80000008 EBX */
#define L88B_CLZERO                 BIT(0)
#define L88B_RSTR_FP_ERR_PTRS       BIT(2)
#define L88B_WBNOINVD               BIT(9)
#define L88B_IBRS_PREFERRED         BIT(18)
#define L88B_IBRS_SAME_MODE         BIT(19)
#define L88B_EFER_LMSLE_UNSUPPORTED BIT(20)

#define IDX KVM_CPUID_FLAG_SIGNIFCANT_INDEX
#define DECIDE(leaf, sub, flags, reg, mask, value)                                                 \
    {                                                                                              \
        leaf, sub, flags, reg, mask, value                                                         \
    }
#define CLEAR(leaf, sub, flags, reg, bits)                                                         \
    {                                                                                              \
        leaf, sub, flags, reg, bits, 0                                                             \
    }

static const struct cpuid_modifier c3_cpuid[] = {
    DECIDE(1, 0, 0, CPUID_EAX, VERSION_FIELDS, VERSION_E5_2680V2),
    CLEAR(1, 0, 0, CPUID_ECX, L1C_HOST_ONLY | L1C_FMA | L1C_MOVBE),
    DECIDE(1, 0, 0, CPUID_EDX, L1D_HIDDEN | L1D_MCE | L1D_MTRR, L1D_MCE | L1D_MTRR),
    /* Ivy Bridge has neither BMI nor AVX2 nor INVPCID; its fast string
     * operations (ERMS) are left as the host has them. */
    CLEAR(7, 0, IDX, CPUID_EBX, L7B_HIDDEN_BOTH | L7B_BMI1 | L7B_AVX2 | L7B_BMI2 | L7B_INVPCID),
    CLEAR(7, 0, IDX, CPUID_ECX, L7C_C3_HIDDEN),
    CLEAR(7, 0, IDX, CPUID_EDX, L7D_AVX512_4VNNIW | L7D_AVX512_4FMAPS),
    CLEAR(0xd, 0, IDX, CPUID_EAX, LD0A_HIDDEN),
    CLEAR(0xd, 1, IDX, CPUID_EAX, LD1A_HIDDEN),
    CLEAR(0x80000001, 0, 0, CPUID_ECX, L81C_ABM | L81C_PREFETCHW),
    CLEAR(0x80000001, 0, 0, CPUID_EDX, L81D_PAGE1GB),
};

/* T2 and its variants share the CPUID of a Haswell Xeon, which has ERMS:
 * the template says so whatever the host. */
#define T2_COMMON_CPUID                                                                            \
    DECIDE(1, 0, 0, CPUID_EAX, VERSION_FIELDS, VERSION_E5_2666V3),                                 \
        CLEAR(1, 0, 0, CPUID_ECX, L1C_HOST_ONLY | L1C_SMX | L1C_EIST | L1C_DCA),                   \
        DECIDE(1, 0, 0, CPUID_EDX, L1D_HIDDEN | L1D_IA64 | L1D_MCE | L1D_MTRR,                     \
               L1D_MCE | L1D_MTRR),                                                                \
        DECIDE(7, 0, IDX, CPUID_EBX, L7B_HIDDEN_BOTH | L7B_PCOMMIT | L7B_ERMS, L7B_ERMS),          \
        CLEAR(7, 0, IDX, CPUID_ECX, L7C_T2_HIDDEN),                                                \
        CLEAR(7, 0, IDX, CPUID_EDX,                                                                \
              L7D_AVX512_4VNNIW | L7D_AVX512_4FMAPS | L7D_FSRM | L7D_AVX512_VP2INTERSECT),         \
        CLEAR(0xd, 0, IDX, CPUID_EAX, LD0A_HIDDEN), CLEAR(0xd, 1, IDX, CPUID_EAX, LD1A_HIDDEN)

static const struct cpuid_modifier t2_cpuid[] = {
    T2_COMMON_CPUID,
    CLEAR(0x80000001, 0, 0, CPUID_ECX, L81C_PREFETCHW | L81C_MONITORX),
    CLEAR(0x80000001, 0, 0, CPUID_EDX, L81D_PAGE1GB),
    CLEAR(0x80000008, 0, 0, CPUID_EBX, L88B_WBNOINVD),
};

/* T2CL (for Cascade Lake and Ice Lake hosts) also clears the extended-leaf
 * bits that only AMD defines. */
static const struct cpuid_modifier t2cl_cpuid[] = {
    T2_COMMON_CPUID,
    CLEAR(0x80000001, 0, 0, CPUID_ECX,
          L81C_SSE4A | L81C_MISALIGNSSE | L81C_PREFETCHW | L81C_MONITORX),
    CLEAR(0x80000001, 0, 0, CPUID_EDX,
          L81D_MMXEXT | L81D_MMX | L81D_FXSR | L81D_FFXSR | L81D_PAGE1GB),
    CLEAR(0x80000008, 0, 0, CPUID_EBX, L88B_WBNOINVD),
};

/* T2A: the T2 guest CPU on AMD Milan hosts. */
static const struct cpuid_modifier t2a_cpuid[] = {
    T2_COMMON_CPUID,
    CLEAR(0x80000001, 0, 0, CPUID_ECX,
          L81C_SVM | L81C_SSE4A | L81C_MISALIGNSSE | L81C_PREFETCHW | L81C_MONITORX),
    CLEAR(0x80000001, 0, 0, CPUID_EDX, L81D_MMXEXT | L81D_FFXSR | L81D_PAGE1GB),
    /* Speculation-control hints a guest may rely on, set whatever the host. */
    DECIDE(0x80000008, 0, 0, CPUID_EBX,
           L88B_CLZERO | L88B_WBNOINVD | L88B_RSTR_FP_ERR_PTRS | L88B_IBRS_PREFERRED |
               L88B_IBRS_SAME_MODE | L88B_EFER_LMSLE_UNSUPPORTED,
           L88B_RSTR_FP_ERR_PTRS | L88B_IBRS_PREFERRED | L88B_IBRS_SAME_MODE |
               L88B_EFER_LMSLE_UNSUPPORTED),
};

#define MSR_IA32_ARCH_CAPABILITIES 0x10a
/* IA32_ARCH_CAPABILITIES bits */
#define ARCH_CAP_RSBA                 (1ull << 2)
#define ARCH_CAP_SKIP_L1DFL_VMENTRY   (1ull << 3)
#define ARCH_CAP_IF_PSCHANGE_MC_NO    (1ull << 6)
#define ARCH_CAP_MISC_PACKAGE_CTLS    (1ull << 10)
#define ARCH_CAP_ENERGY_FILTERING_CTL (1ull << 11)
#define ARCH_CAP_FB_CLEAR             (1ull << 17)
#define ARCH_CAP_RRSBA                (1ull << 19)
#define ARCH_CAP_GDS_NO               (1ull << 26)
#define ARCH_CAP_RFDS_NO              (1ull << 27)

/* T2S fixes every bit, to what the oldest host of its pool (Skylake and
 * Cascade Lake) can honour, so that a guest may move between them. */
static const struct msr_modifier t2s_msr[] = {
    {MSR_IA32_ARCH_CAPABILITIES, ~0ull,
     ARCH_CAP_RSBA | ARCH_CAP_SKIP_L1DFL_VMENTRY | ARCH_CAP_IF_PSCHANGE_MC_NO |
         ARCH_CAP_MISC_PACKAGE_CTLS | ARCH_CAP_ENERGY_FILTERING_CTL | ARCH_CAP_FB_CLEAR |
         ARCH_CAP_RRSBA | ARCH_CAP_GDS_NO | ARCH_CAP_RFDS_NO},
};

/* T2CL passes the host's vulnerability bits through and clears the
 * controls and the reserved bits: MCU_CONTROL, MISC_PACKAGE_CTLS,
 * ENERGY_FILTERING_CTL, DOITM (9-12), bit 16, FB_CLEAR_CTRL (18), BHI_NO,
 * XAPIC_DISABLE_STATUS, bit 22, OVERCLOCKING_STATUS (20-23), GDS_CTRL (25)
 * and bits 29-63. */
static const struct msr_modifier t2cl_msr[] = {
    {MSR_IA32_ARCH_CAPABILITIES, 0xffffffffe2f51e00ull, 0},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct cpu_modifiers c3_mods = {.ncpuid = N(c3_cpuid), .cpuid = c3_cpuid};
static const struct cpu_modifiers t2_mods = {.ncpuid = N(t2_cpuid), .cpuid = t2_cpuid};
static const struct cpu_modifiers t2s_mods = {
    .ncpuid = N(t2_cpuid), .cpuid = t2_cpuid, .nmsr = N(t2s_msr), .msr = t2s_msr};
static const struct cpu_modifiers t2cl_mods = {
    .ncpuid = N(t2cl_cpuid), .cpuid = t2cl_cpuid, .nmsr = N(t2cl_msr), .msr = t2cl_msr};
static const struct cpu_modifiers t2a_mods = {.ncpuid = N(t2a_cpuid), .cpuid = t2a_cpuid};

const struct cpu_modifiers *cpu_template_modifiers(enum cpu_template t)
{
    switch (t) {
    case CPU_TEMPLATE_C3:
        return &c3_mods;
    case CPU_TEMPLATE_T2:
        return &t2_mods;
    case CPU_TEMPLATE_T2S:
        return &t2s_mods;
    case CPU_TEMPLATE_T2CL:
        return &t2cl_mods;
    case CPU_TEMPLATE_T2A:
        return &t2a_mods;
    case CPU_TEMPLATE_HOST:
    case CPU_TEMPLATE_BASELINE:
        break;
    }
    return NULL;
}

int cpu_template_check_vendor(struct kvm_cpuid2 *supported, enum cpu_template t)
{
    const char *want;
    switch (t) {
    case CPU_TEMPLATE_C3:
    case CPU_TEMPLATE_T2:
    case CPU_TEMPLATE_T2S:
    case CPU_TEMPLATE_T2CL:
        want = "GenuineIntel";
        break;
    case CPU_TEMPLATE_T2A:
        want = "AuthenticAMD";
        break;
    default:
        return 0;
    }
    struct kvm_cpuid_entry2 *e = cpuid_find(supported, 0, 0);
    char vendor[13] = "";
    if (e) {
        memcpy(vendor, &e->ebx, 4);
        memcpy(vendor + 4, &e->edx, 4);
        memcpy(vendor + 8, &e->ecx, 4);
    }
    if (strcmp(vendor, want) != 0)
        return error_set("Failed to get CPU template: CPU vendor mismatched between actual CPU and "
                         "CPU template. (%s is for %s hosts; this one is %s)",
                         cpu_template_name(t), want, vendor[0] ? vendor : "unknown");
    return 0;
}

static uint32_t *register_of(struct kvm_cpuid_entry2 *e, enum cpuid_register r)
{
    switch (r) {
    case CPUID_EAX:
        return &e->eax;
    case CPUID_EBX:
        return &e->ebx;
    case CPUID_ECX:
        return &e->ecx;
    case CPUID_EDX:
        break;
    }
    return &e->edx;
}

int cpu_modifiers_apply_cpuid(struct kvm_cpuid2 *c, const struct cpu_modifiers *m)
{
    for (unsigned i = 0; i < m->ncpuid; i++) {
        const struct cpuid_modifier *mod = &m->cpuid[i];
        /* The exact subleaf: a template that names subleaf 1 of a leaf
         * without subleaves names an entry KVM does not have. */
        struct kvm_cpuid_entry2 *e = NULL;
        for (unsigned k = 0; k < c->nent && !e; k++) {
            if (c->entries[k].function == mod->leaf && c->entries[k].index == mod->subleaf)
                e = &c->entries[k];
        }
        if (!e)
            return error_set("Template changes a CPUID entry not supported by KVM: Leaf: 0x%x, "
                             "Subleaf: 0x%x",
                             mod->leaf, mod->subleaf);
        e->flags = mod->flags;
        uint32_t *reg = register_of(e, mod->reg);
        *reg = (*reg & ~mod->mask) | (mod->value & mod->mask);
    }
    return 0;
}

int cpu_modifiers_leaks(struct kvm_cpuid2 *actual, const struct cpu_modifiers *m, char *buf,
                        size_t len)
{
    static const char *const names[] = {"eax", "ebx", "ecx", "edx"};
    size_t used = 0;
    int count = 0;
    buf[0] = '\0';
    for (unsigned i = 0; m && i < m->ncpuid; i++) {
        const struct cpuid_modifier *mod = &m->cpuid[i];
        /* One item per register: later modifiers of the same one join it. */
        bool seen = false;
        for (unsigned k = 0; k < i && !seen; k++)
            seen = m->cpuid[k].leaf == mod->leaf && m->cpuid[k].subleaf == mod->subleaf &&
                   m->cpuid[k].reg == mod->reg;
        if (seen)
            continue;
        struct kvm_cpuid_entry2 *e = NULL;
        for (unsigned k = 0; k < actual->nent && !e; k++) {
            if (actual->entries[k].function == mod->leaf &&
                actual->entries[k].index == mod->subleaf)
                e = &actual->entries[k];
        }
        if (!e)
            continue;
        uint32_t got = *register_of(e, mod->reg), want = got, decided = 0;
        for (unsigned k = i; k < m->ncpuid; k++) {
            const struct cpuid_modifier *o = &m->cpuid[k];
            if (o->leaf == mod->leaf && o->subleaf == mod->subleaf && o->reg == mod->reg) {
                want = (want & ~o->mask) | (o->value & o->mask);
                decided |= o->mask;
            }
        }
        uint32_t leaked = (got ^ want) & decided;
        if (!leaked)
            continue;
        int n = snprintf(buf + used, len - used, "%s0x%x.%u %s 0x%x", count ? " " : "", mod->leaf,
                         mod->subleaf, names[mod->reg], leaked);
        if (n > 0 && (size_t)n < len - used)
            used += (size_t)n;
        count++;
    }
    return count;
}

int cpu_bitmap_parse(const char *s, unsigned bits, uint64_t *mask, uint64_t *value)
{
    const char *digits = strncmp(s, "0b", 2) == 0 ? s + 2 : s;
    uint64_t m = 0, v = 0;
    unsigned n = 0;
    for (const char *p = digits; *p; p++) {
        if (*p == '_')
            continue;
        if (*p != '0' && *p != '1' && *p != 'x')
            return error_set("bitmap '%.80s': character 0x%02x is not 0, 1, x or _", s,
                             (unsigned char)*p);
        if (++n > bits)
            return error_set("bitmap '%.80s' has more than %u bits", s, bits);
        m <<= 1;
        v <<= 1;
        if (*p != 'x')
            m |= 1;
        if (*p == '1')
            v |= 1;
    }
    *mask = m;
    *value = v;
    return 0;
}
