#include "arch/x86/cpu_template.h"
#include "suites.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>

#define CAP 32

/* Every leaf a static template touches, each register set to `fill`, and
 * leaf 0 naming `vendor`. */
static struct kvm_cpuid2 *fake_cpuid(const char *vendor, uint32_t fill)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + CAP * sizeof(c->entries[0]));
    static const struct {
        uint32_t function, index, flags;
    } leaves[] = {
        {1, 0, 0},
        {7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX},
        {0xd, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX},
        {0xd, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX},
        {0x80000001, 0, 0},
        {0x80000008, 0, 0},
    };
    struct kvm_cpuid_entry2 *e = &c->entries[c->nent++];
    e->eax = 0x1f;
    memcpy(&e->ebx, vendor, 4);
    memcpy(&e->edx, vendor + 4, 4);
    memcpy(&e->ecx, vendor + 8, 4);
    for (size_t i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
        e = &c->entries[c->nent++];
        *e = (struct kvm_cpuid_entry2){.function = leaves[i].function,
                                       .index = leaves[i].index,
                                       .flags = leaves[i].flags,
                                       .eax = fill,
                                       .ebx = fill,
                                       .ecx = fill,
                                       .edx = fill};
    }
    return c;
}

static struct kvm_cpuid_entry2 *entry(struct kvm_cpuid2 *c, uint32_t f, uint32_t i)
{
    struct kvm_cpuid_entry2 *e = cpuid_find(c, f, i);
    ck_assert_ptr_nonnull(e);
    return e;
}

/* What a template must do to one register, written as Firecracker's
 * documentation of the EC2 CPU families gives it: the bits of `decided`
 * are forced to those of `value`, the others are the host's. */
struct expected_register {
    uint32_t leaf, subleaf;
    char reg; /* 'a', 'b', 'c', 'd' */
    uint32_t decided, value;
};

static uint32_t reg_value(struct kvm_cpuid_entry2 *e, char r)
{
    return r == 'a' ? e->eax : r == 'b' ? e->ebx : r == 'c' ? e->ecx : e->edx;
}

static void check_template(enum cpu_template t, const char *vendor,
                           const struct expected_register *want, size_t n)
{
    const struct cpu_modifiers *m = cpu_template_modifiers(t);
    ck_assert_ptr_nonnull(m);
    /* On a host with every bit on and on one with every bit off: the
     * decided bits come out as the template says, the others unchanged. */
    for (int fill = 0; fill < 2; fill++) {
        uint32_t in = fill ? 0xffffffffu : 0;
        struct kvm_cpuid2 *c = fake_cpuid(vendor, in);
        ck_assert_int_eq(cpu_template_check_vendor(c, t), 0);
        ck_assert_int_eq(cpu_modifiers_apply_cpuid(c, m), 0);
        for (size_t i = 0; i < n; i++) {
            uint32_t got = reg_value(entry(c, want[i].leaf, want[i].subleaf), want[i].reg);
            uint32_t expect = (in & ~want[i].decided) | want[i].value;
            ck_assert_msg(got == expect, "%s leaf %#x.%u e%cx: %#x, want %#x", cpu_template_name(t),
                          want[i].leaf, want[i].subleaf, want[i].reg, got, expect);
        }
        /* Nothing else changed. */
        for (unsigned k = 1; k < c->nent; k++) {
            struct kvm_cpuid_entry2 *e = &c->entries[k];
            const char regs[] = "abcd";
            for (int r = 0; r < 4; r++) {
                bool listed = false;
                for (size_t i = 0; i < n; i++)
                    listed |= want[i].leaf == e->function && want[i].subleaf == e->index &&
                              want[i].reg == regs[r];
                if (!listed)
                    ck_assert_uint_eq(reg_value(e, regs[r]), in);
            }
        }
        free(c);
    }
    /* Refused on the other vendor, with Firecracker's words. */
    struct kvm_cpuid2 *c =
        fake_cpuid(strcmp(vendor, "GenuineIntel") ? "GenuineIntel" : "AuthenticAMD", 0);
    ck_assert_int_eq(cpu_template_check_vendor(c, t), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "CPU vendor mismatched between actual CPU and CPU "
                                              "template"));
    free(c);
}

/* Shared by T2, T2S, T2CL and T2A. */
#define T2_LEAVES                                                                                  \
    {1, 0, 'a', 0x0fff3fff, 0x000306f2}, {1, 0, 'c', 0x0004cdfc, 0},                               \
        {1, 0, 'd', 0xe8641080, 0x00001080}, {7, 0, 'b', 0xffefda14, 0x00000200},                  \
        {7, 0, 'c', 0x40415f5e, 0}, {7, 0, 'd', 0x0000011c, 0}, {0xd, 0, 'a', 0x000002f8, 0},      \
    {                                                                                              \
        0xd, 1, 'a', 0x0000000e, 0                                                                 \
    }

START_TEST(c3_template)
{
    static const struct expected_register want[] = {
        {1, 0, 'a', 0x0fff3fff, 0x000306e4}, {1, 0, 'c', 0x0040dd3c, 0},
        {1, 0, 'd', 0xa8641080, 0x00001080}, {7, 0, 'b', 0xffafdd3c, 0},
        {7, 0, 'c', 0x4041481e, 0},          {7, 0, 'd', 0x0000000c, 0},
        {0xd, 0, 'a', 0x000002f8, 0},        {0xd, 1, 'a', 0x0000000e, 0},
        {0x80000001, 0, 'c', 0x00000120, 0}, {0x80000001, 0, 'd', 0x04000000, 0},
    };
    check_template(CPU_TEMPLATE_C3, "GenuineIntel", want, sizeof(want) / sizeof(want[0]));
    ck_assert_uint_eq(cpu_template_modifiers(CPU_TEMPLATE_C3)->nmsr, 0);
}
END_TEST

START_TEST(t2_template)
{
    static const struct expected_register want[] = {
        T2_LEAVES,
        {0x80000001, 0, 'c', 0x20000100, 0},
        {0x80000001, 0, 'd', 0x04000000, 0},
        {0x80000008, 0, 'b', 0x00000200, 0},
    };
    check_template(CPU_TEMPLATE_T2, "GenuineIntel", want, sizeof(want) / sizeof(want[0]));
    check_template(CPU_TEMPLATE_T2S, "GenuineIntel", want, sizeof(want) / sizeof(want[0]));
    ck_assert_uint_eq(cpu_template_modifiers(CPU_TEMPLATE_T2)->nmsr, 0);

    /* By name, what T2 promises a guest. */
    struct kvm_cpuid2 *c = fake_cpuid("GenuineIntel", 0xffffffffu);
    ck_assert_int_eq(cpu_modifiers_apply_cpuid(c, cpu_template_modifiers(CPU_TEMPLATE_T2)), 0);
    struct kvm_cpuid_entry2 *l1 = entry(c, 1, 0), *l7 = entry(c, 7, 0);
    ck_assert_uint_eq((l1->eax >> 8) & 0xf, 6);                                 /* family */
    ck_assert_uint_eq(((l1->eax >> 12) & 0xf0) | ((l1->eax >> 4) & 0xf), 0x3f); /* model */
    ck_assert_uint_eq(l1->eax & 0xf, 2);                                        /* stepping */
    ck_assert(!(l1->ecx & (1u << 5)));                                          /* VMX */
    ck_assert(!(l1->ecx & (1u << 3)));                                          /* MONITOR */
    ck_assert(l1->edx & (1u << 7) && l1->edx & (1u << 12));                     /* MCE MTRR */
    ck_assert(!(l7->ebx & (1u << 16)) && !(l7->ebx & (1u << 31)));              /* AVX-512 */
    ck_assert(!(l7->ebx & (1u << 14)));                                         /* MPX */
    ck_assert(!(l7->ebx & (1u << 4)) && !(l7->ebx & (1u << 11)));               /* TSX */
    ck_assert(l7->ebx & (1u << 9));                                             /* ERMS */
    ck_assert(l7->ebx & (1u << 5));                                             /* AVX2 kept */
    ck_assert(!(l7->ecx & (1u << 3)));                                          /* PKU */
    ck_assert(!(l7->edx & (1u << 4)));                                          /* FSRM */
    ck_assert(!(entry(c, 0x80000001, 0)->edx & (1u << 26)));                    /* 1G pages */
    ck_assert_uint_eq(entry(c, 0xd, 0)->eax & 0x2f8, 0); /* no MPX/AVX-512/PKRU state */
    free(c);
}
END_TEST

START_TEST(t2s_and_t2cl_set_arch_capabilities)
{
    const struct cpu_modifiers *s = cpu_template_modifiers(CPU_TEMPLATE_T2S);
    ck_assert_uint_eq(s->nmsr, 1);
    ck_assert_uint_eq(s->msr[0].index, 0x10a);
    /* T2S decides every bit. */
    ck_assert_uint_eq(msr_modifier_apply(&s->msr[0], 0), 0x0c0a0c4cull);
    ck_assert_uint_eq(msr_modifier_apply(&s->msr[0], ~0ull), 0x0c0a0c4cull);

    static const struct expected_register want[] = {
        T2_LEAVES,
        {0x80000001, 0, 'c', 0x200001c0, 0},
        {0x80000001, 0, 'd', 0x07c00000, 0},
        {0x80000008, 0, 'b', 0x00000200, 0},
    };
    check_template(CPU_TEMPLATE_T2CL, "GenuineIntel", want, sizeof(want) / sizeof(want[0]));
    const struct cpu_modifiers *cl = cpu_template_modifiers(CPU_TEMPLATE_T2CL);
    ck_assert_uint_eq(cl->nmsr, 1);
    ck_assert_uint_eq(cl->msr[0].index, 0x10a);
    /* T2CL passes the host's vulnerability bits and clears the rest. */
    ck_assert_uint_eq(msr_modifier_apply(&cl->msr[0], ~0ull), ~0xffffffffe2f51e00ull);
    ck_assert_uint_eq(msr_modifier_apply(&cl->msr[0], 0), 0);
    ck_assert_uint_eq(msr_modifier_apply(&cl->msr[0], 1u << 5), 1u << 5); /* MDS_NO */
}
END_TEST

START_TEST(t2a_template)
{
    static const struct expected_register want[] = {
        T2_LEAVES,
        {0x80000001, 0, 'c', 0x200001c4, 0},
        {0x80000001, 0, 'd', 0x06400000, 0},
        {0x80000008, 0, 'b', 0x001c0205, 0x001c0004},
    };
    check_template(CPU_TEMPLATE_T2A, "AuthenticAMD", want, sizeof(want) / sizeof(want[0]));
}
END_TEST

START_TEST(templates_without_modifiers)
{
    ck_assert_ptr_null(cpu_template_modifiers(CPU_TEMPLATE_HOST));
    ck_assert_ptr_null(cpu_template_modifiers(CPU_TEMPLATE_BASELINE));
    /* host and baseline run on any vendor. */
    struct kvm_cpuid2 *c = fake_cpuid("AuthenticAMD", 0);
    ck_assert_int_eq(cpu_template_check_vendor(c, CPU_TEMPLATE_BASELINE), 0);
    ck_assert_int_eq(cpu_template_check_vendor(c, CPU_TEMPLATE_HOST), 0);
    free(c);
    const char *names[] = {"host", "baseline", "C3", "T2", "T2S", "T2CL", "T2A"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        enum cpu_template t;
        ck_assert_int_eq(cpu_template_parse(names[i], &t), 0);
        ck_assert_str_eq(cpu_template_name(t), names[i]);
    }
    enum cpu_template t;
    ck_assert_int_eq(cpu_template_parse("t2", &t), -1);
    ck_assert_int_eq(cpu_template_parse("None", &t), -1); /* the API's word, not a template */
    ck_assert_int_eq(cpu_template_parse("T2X", &t), -1);
}
END_TEST

START_TEST(bitmaps)
{
    uint64_t m, v;
    ck_assert_int_eq(cpu_bitmap_parse("0b0101xxxx", 8, &m, &v), 0);
    ck_assert_uint_eq(m, 0xf0);
    ck_assert_uint_eq(v, 0x50);
    ck_assert_int_eq(cpu_bitmap_parse("0b0_101_xx_xx", 8, &m, &v), 0);
    ck_assert_uint_eq(m, 0xf0);
    ck_assert_uint_eq(v, 0x50);
    ck_assert_int_eq(cpu_bitmap_parse("1x0", 32, &m, &v), 0); /* "0b" is optional */
    ck_assert_uint_eq(m, 0x5);
    ck_assert_uint_eq(v, 0x4);
    char full[80] = "0b";
    memset(full + 2, '1', 64);
    full[66] = '\0';
    ck_assert_int_eq(cpu_bitmap_parse(full, 64, &m, &v), 0);
    ck_assert_uint_eq(m, ~0ull);
    ck_assert_uint_eq(v, ~0ull);
    ck_assert_int_eq(cpu_bitmap_parse(full, 32, &m, &v), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "more than 32 bits"));
    ck_assert_int_eq(cpu_bitmap_parse("0b0000_0000_0", 8, &m, &v), -1);
    ck_assert_int_eq(cpu_bitmap_parse("0b012", 8, &m, &v), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "0x32"));
    ck_assert_int_eq(cpu_bitmap_parse("0b0_x\xcf\xbd"
                                      "1",
                                      8, &m, &v),
                     -1);
    ck_assert_int_eq(cpu_bitmap_parse("0x12", 8, &m, &v), -1);
}
END_TEST

START_TEST(custom_modifiers_apply_on_top)
{
    struct kvm_cpuid2 *c = fake_cpuid("GenuineIntel", 0x0f0f0f0f);
    struct cpuid_modifier mods[] = {
        {1, 0, 0, CPUID_EBX, 0x000000ff, 0x000000a5},
        {1, 0, 0, CPUID_EBX, 0x0000ff00, 0x00003c00}, /* the same register twice: both */
        {7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, CPUID_EDX, 0xffffffff, 0},
    };
    struct cpu_modifiers m = {.ncpuid = 3, .cpuid = mods};
    ck_assert_int_eq(cpu_modifiers_apply_cpuid(c, &m), 0);
    ck_assert_uint_eq(entry(c, 1, 0)->ebx, 0x0f0f3ca5);
    ck_assert_uint_eq(entry(c, 7, 0)->edx, 0);
    ck_assert_uint_eq(entry(c, 7, 0)->ecx, 0x0f0f0f0f);
    /* A leaf or subleaf KVM does not report is refused, by number. */
    struct cpuid_modifier missing = {0x7, 5, 1, CPUID_EAX, 1, 1};
    m = (struct cpu_modifiers){.ncpuid = 1, .cpuid = &missing};
    ck_assert_int_eq(cpu_modifiers_apply_cpuid(c, &m), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "not supported by KVM: Leaf: 0x7, Subleaf: 0x5"));
    missing = (struct cpuid_modifier){0x1, 1, 0, CPUID_EAX, 1, 1};
    ck_assert_int_eq(cpu_modifiers_apply_cpuid(c, &m), -1);
    free(c);
}
END_TEST

START_TEST(smt_topology)
{
    /* Four vCPUs as two cores of two threads; vCPU 3 is thread 1 of core 1. */
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + CAP * sizeof(c->entries[0]));
    struct kvm_cpuid_entry2 e[] = {
        {.function = 1, .ebx = 0x800},
        /* L1d, L2 and L3 */
        {.function = 4, .index = 0, .flags = 1, .eax = (1 << 5) | 1},
        {.function = 4, .index = 1, .flags = 1, .eax = (2 << 5) | 3},
        {.function = 4, .index = 2, .flags = 1, .eax = (3 << 5) | 3},
        {.function = 0xb, .index = 0, .flags = 1},
        {.function = 0x1f, .index = 0, .flags = 1},
        {.function = 0x8000001e},
    };
    c->nent = sizeof(e) / sizeof(e[0]);
    memcpy(c->entries, e, sizeof(e));
    struct cpuid_params p = {.vcpu_id = 3, .ncpus = 4, .threads_per_core = 2};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
    struct kvm_cpuid_entry2 *l1 = entry(c, 1, 0);
    ck_assert_uint_eq((l1->ebx >> 16) & 0xff, 4); /* logical processors per package */
    ck_assert_uint_eq(l1->ebx >> 24, 3);          /* APIC id */
    ck_assert(l1->edx & (1u << 28));              /* HTT */
    for (unsigned i = 0; i < 3; i++) {
        uint32_t eax = entry(c, 4, i)->eax;
        ck_assert_uint_eq((eax >> 26) + 1, 2); /* cores per package */
        ck_assert_uint_eq(((eax >> 14) & 0xfff) + 1, i < 2 ? 2 : 4);
    }
    for (unsigned f = 0xb; f <= 0x1f; f += 0x14) {
        struct kvm_cpuid_entry2 *smt = entry(c, f, 0), *core = entry(c, f, 1);
        ck_assert_uint_eq(smt->eax & 0x1f, 1); /* one bit of thread id */
        ck_assert_uint_eq(smt->ebx, 2);
        ck_assert_uint_eq((smt->ecx >> 8) & 0xff, 1);
        ck_assert_uint_eq(core->eax & 0x1f, 2);
        ck_assert_uint_eq(core->ebx, 4);
        ck_assert_uint_eq((core->ecx >> 8) & 0xff, 2);
        ck_assert_uint_eq(smt->edx, 3);
    }
    struct kvm_cpuid_entry2 *amd = entry(c, 0x8000001e, 0);
    ck_assert_uint_eq(amd->ebx & 0xff, 1);        /* core id */
    ck_assert_uint_eq((amd->ebx >> 8) & 0xff, 1); /* threads per core - 1 */
    free(c);

    /* Without SMT, and with SMT on one vCPU, a core has one thread. */
    for (unsigned threads = 1; threads <= 2; threads++) {
        c = calloc(1, sizeof(*c) + CAP * sizeof(c->entries[0]));
        c->nent = sizeof(e) / sizeof(e[0]);
        memcpy(c->entries, e, sizeof(e));
        p = (struct cpuid_params){
            .vcpu_id = 0, .ncpus = threads == 1 ? 4 : 1, .threads_per_core = threads};
        ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
        ck_assert_uint_eq(entry(c, 0xb, 0)->ebx, 1);
        ck_assert_uint_eq(entry(c, 0xb, 0)->eax, 0);
        ck_assert_uint_eq(((entry(c, 4, 0)->eax >> 14) & 0xfff) + 1, 1);
        ck_assert_uint_eq((entry(c, 4, 0)->eax >> 26) + 1, p.ncpus);
        free(c);
    }
    /* SMT needs whole cores. */
    c = calloc(1, sizeof(*c) + CAP * sizeof(c->entries[0]));
    c->nent = sizeof(e) / sizeof(e[0]);
    memcpy(c->entries, e, sizeof(e));
    p = (struct cpuid_params){.vcpu_id = 0, .ncpus = 3, .threads_per_core = 2};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), -1);
    free(c);
}
END_TEST

Suite *cpu_template_suite(void)
{
    Suite *s = suite_create("cpu_template");
    TCase *t = tcase_create("templates");
    tcase_add_test(t, c3_template);
    tcase_add_test(t, t2_template);
    tcase_add_test(t, t2s_and_t2cl_set_arch_capabilities);
    tcase_add_test(t, t2a_template);
    tcase_add_test(t, templates_without_modifiers);
    tcase_add_test(t, bitmaps);
    tcase_add_test(t, custom_modifiers_apply_on_top);
    tcase_add_test(t, smt_topology);
    suite_add_tcase(s, t);
    return s;
}
