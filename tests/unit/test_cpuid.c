#include "arch/x86/cpuid.h"
#include "suites.h"

#include <stdlib.h>
#include <string.h>

#define CAP 64

/* A host-like supported set: every feature the templates care about on. */
static struct kvm_cpuid2 *fake_supported(void)
{
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + CAP * sizeof(c->entries[0]));
    struct kvm_cpuid_entry2 e[] = {
        {.function = 0, .eax = 0x1f},
        {.function = 1, .eax = 0xa50f00, .ebx = 0x00000800, .ecx = 0xfffa3203, .edx = 0x178bfbff},
        {.function = 7,
         .index = 0,
         .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
         .ebx = 0xffffffff,
         .ecx = 0xffffffff,
         .edx = 0xffffffff},
        {.function = 7, .index = 1, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .eax = 0xffffffff},
        {.function = 0xb, .index = 0, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 2},
        {.function = 0xb, .index = 1, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .ebx = 64},
        {.function = 0xd, .index = 0, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .eax = 7},
        {.function = 0xd, .index = 1, .flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX, .eax = 0xf},
        {.function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b},
        {.function = 0x40000001, .eax = 0x01ffffff},
        {.function = 0x80000001, .ecx = 0xffffffff},
        {.function = 0x80000008, .ecx = 0x0000703f},
        {.function = 0x8000001e, .eax = 5, .ebx = 0x105},
    };
    c->nent = sizeof(e) / sizeof(e[0]);
    memcpy(c->entries, e, sizeof(e));
    return c;
}

static struct kvm_cpuid_entry2 *leaf(struct kvm_cpuid2 *c, unsigned f, unsigned i)
{
    struct kvm_cpuid_entry2 *e = cpuid_find(c, f, i);
    ck_assert_ptr_nonnull(e);
    return e;
}

START_TEST(per_vcpu_topology)
{
    struct kvm_cpuid2 *c = fake_supported();
    struct cpuid_params p = {.vcpu_id = 2, .ncpus = 3, .template = CPU_TEMPLATE_HOST};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
    struct kvm_cpuid_entry2 *l1 = leaf(c, 1, 0);
    ck_assert_uint_eq(l1->ebx >> 24, 2);          /* APIC id */
    ck_assert_uint_eq((l1->ebx >> 16) & 0xff, 3); /* logical processors */
    ck_assert_uint_eq((l1->ebx >> 8) & 0xff, 8);  /* CLFLUSH size kept */
    ck_assert(l1->ecx & (1u << 31));              /* hypervisor */
    ck_assert(l1->edx & (1u << 28));              /* HTT with >1 CPU */
    struct kvm_cpuid_entry2 *smt = leaf(c, 0xb, 0), *core = leaf(c, 0xb, 1);
    ck_assert_uint_eq(smt->ebx, 1);
    ck_assert_uint_eq(smt->edx, 2);
    ck_assert_uint_eq(core->ebx, 3);
    ck_assert_uint_eq(core->eax, 2); /* ceil(log2(3)) */
    ck_assert_uint_eq((core->ecx >> 8) & 0xff, 2);
    ck_assert_uint_eq((leaf(c, 0xb, 2)->ecx >> 8) & 0xff, 0); /* end of list */
    ck_assert_uint_eq(leaf(c, 0x80000008, 0)->ecx & 0xff, 2);
    ck_assert_uint_eq(leaf(c, 0x8000001e, 0)->eax, 2);
    /* Host template leaves features alone. */
    ck_assert(l1->ecx & (1u << 13));
    ck_assert_ptr_nonnull(cpuid_find(c, 0xd, 0));
    ck_assert_uint_eq(leaf(c, 0x40000001, 0)->eax, 0x01ffffff);
    free(c);
}
END_TEST

START_TEST(single_cpu_has_no_htt)
{
    struct kvm_cpuid2 *c = fake_supported();
    struct cpuid_params p = {.vcpu_id = 0, .ncpus = 1, .template = CPU_TEMPLATE_HOST};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
    ck_assert(!(leaf(c, 1, 0)->edx & (1u << 28)));
    ck_assert_uint_eq(leaf(c, 0xb, 1)->ebx, 1);
    free(c);
}
END_TEST

START_TEST(baseline_hides_what_nested_hosts_cannot_run)
{
    struct kvm_cpuid2 *c = fake_supported();
    struct cpuid_params p = {.vcpu_id = 0, .ncpus = 2, .template = CPU_TEMPLATE_BASELINE};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
    uint32_t ecx1 = leaf(c, 1, 0)->ecx;
    ck_assert(!(ecx1 & (1u << 13))); /* CX16 */
    ck_assert(!(ecx1 & (1u << 23))); /* POPCNT */
    ck_assert(!(ecx1 & (1u << 26))); /* XSAVE */
    ck_assert(!(ecx1 & (1u << 27))); /* OSXSAVE */
    ck_assert(!(ecx1 & (1u << 28))); /* AVX */
    ck_assert(ecx1 & (1u << 0));     /* SSE3 stays */
    struct kvm_cpuid_entry2 *l7 = leaf(c, 7, 0);
    ck_assert(!(l7->ebx & (1u << 20))); /* SMAP */
    ck_assert(!(l7->ebx & (1u << 0)));  /* FSGSBASE */
    ck_assert(!(l7->ebx & (1u << 9)));  /* ERMS */
    ck_assert(!(l7->ebx & (1u << 5)));  /* AVX2 */
    ck_assert(!(l7->edx & (1u << 4)));  /* FSRM */
    ck_assert(l7->ebx & (1u << 7));     /* SMEP stays */
    ck_assert_ptr_null(cpuid_find(c, 0xd, 0));
    ck_assert_ptr_null(cpuid_find(c, 0xd, 1));
    ck_assert(!(leaf(c, 0x80000001, 0)->ecx & (1u << 5))); /* ABM */
    uint32_t kvm = leaf(c, 0x40000001, 0)->eax;
    ck_assert(!(kvm & (1u << 7)));  /* PV_UNHALT */
    ck_assert(!(kvm & (1u << 11))); /* PV_SEND_IPI */
    ck_assert(!(kvm & (1u << 13))); /* PV_SCHED_YIELD */
    ck_assert(!(kvm & (1u << 0)));  /* kvmclock: clock pairing rides on it */
    ck_assert(!(kvm & (1u << 3)));
    ck_assert(kvm & (1u << 5)); /* steal time (an MSR, no hypercall) stays */
    free(c);
}
END_TEST

START_TEST(bad_params_and_templates)
{
    struct kvm_cpuid2 *c = fake_supported();
    struct cpuid_params p = {.vcpu_id = 2, .ncpus = 2};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), -1);
    p.ncpus = 0;
    p.vcpu_id = 0;
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), -1);
    /* No room for topology subleaves. */
    p.ncpus = 1;
    ck_assert_int_eq(cpuid_filter(c, c->nent, &p), -1);
    enum cpu_template t;
    ck_assert_int_eq(cpu_template_parse("baseline", &t), 0);
    ck_assert_int_eq(t, CPU_TEMPLATE_BASELINE);
    ck_assert_int_eq(cpu_template_parse("host", &t), 0);
    ck_assert_int_eq(cpu_template_parse("T3", &t), -1);
    free(c);
}
END_TEST

START_TEST(leaks_name_what_the_host_kept)
{
    struct kvm_cpuid2 *c = fake_supported();
    struct cpuid_params p = {.vcpu_id = 0, .ncpus = 1, .template = CPU_TEMPLATE_BASELINE};
    ck_assert_int_eq(cpuid_filter(c, CAP, &p), 0);
    char names[256];
    ck_assert_int_eq(cpuid_template_leaks(c, CPU_TEMPLATE_BASELINE, names, sizeof(names)), 0);
    ck_assert_str_eq(names, "");
    /* A host that forces POPCNT and SMAP back on is caught, by name. */
    leaf(c, 1, 0)->ecx |= 1u << 23;
    leaf(c, 7, 0)->ebx |= 1u << 20;
    ck_assert_int_eq(cpuid_template_leaks(c, CPU_TEMPLATE_BASELINE, names, sizeof(names)), 2);
    ck_assert_str_eq(names, "POPCNT SMAP");
    /* The host template promises nothing. */
    ck_assert_int_eq(cpuid_template_leaks(c, CPU_TEMPLATE_HOST, names, sizeof(names)), 0);
    free(c);
}
END_TEST

Suite *cpuid_suite(void)
{
    Suite *s = suite_create("cpuid");
    TCase *t = tcase_create("filter");
    tcase_add_test(t, per_vcpu_topology);
    tcase_add_test(t, single_cpu_has_no_htt);
    tcase_add_test(t, baseline_hides_what_nested_hosts_cannot_run);
    tcase_add_test(t, bad_params_and_templates);
    tcase_add_test(t, leaks_name_what_the_host_kept);
    suite_add_tcase(s, t);
    return s;
}
