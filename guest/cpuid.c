/* The CPU the VMM shows: prints the CPUID leaves CPU templates and the
 * topology touch, then checks what the command line says must be there:
 *   cpuid_expect=LEAF.SUBLEAF.R:MASK:VALUE,...   (R: a, b, c or d; numbers
 *       decimal or 0x hex): (register & MASK) == VALUE
 *   msr_expect=INDEX:MASK:VALUE,...              the same for an MSR (rdmsr)
 * Ends through the i8042 (the VMM exits 0; the harness reads the TAP lines),
 * else through debug-exit; idle_ms=N waits first (an API client then has
 * its InstanceStart answer before the VMM goes). */
#include "guest.h"
#include "io.h"

#define MAX_CHECKS 48

struct check {
    bool msr;
    uint32_t leaf, subleaf; /* for an MSR: leaf is its index */
    char reg;
    uint64_t mask, value;
};

static struct check checks[MAX_CHECKS];
static unsigned nchecks;
static char list[2048];

static bool in_range(uint32_t leaf)
{
    uint32_t r[4];
    cpuid(leaf & 0xf0000000u, 0, r);
    return leaf <= r[0];
}

static void print_leaf(uint32_t leaf, uint32_t subleaf)
{
    uint32_t r[4];
    cpuid(leaf, subleaf, r);
    diag("cpuid 0x%08x.%u: eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x", leaf, subleaf, r[0], r[1],
         r[2], r[3]);
}

static void print_leaves(void)
{
    static const uint32_t plain[] = {0,          1,          7,          0xd,        0x40000000,
                                     0x40000001, 0x80000000, 0x80000001, 0x80000008, 0x8000001e};
    for (unsigned i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        if (in_range(plain[i]))
            print_leaf(plain[i], 0);
    }
    if (in_range(7))
        print_leaf(7, 1);
    if (in_range(0xd))
        print_leaf(0xd, 1);
    if (in_range(4)) {
        for (uint32_t i = 0; i < 8; i++) {
            uint32_t r[4];
            cpuid(4, i, r);
            if ((r[0] & 0x1f) == 0)
                break;
            print_leaf(4, i);
        }
    }
    for (uint32_t leaf = 0xb; leaf <= 0x1f; leaf += 0x14) {
        if (!in_range(leaf))
            continue;
        for (uint32_t i = 0; i < 4; i++) {
            uint32_t r[4];
            cpuid(leaf, i, r);
            print_leaf(leaf, i);
            if (((r[2] >> 8) & 0xff) == 0)
                break;
        }
    }
    uint32_t r[4];
    cpuid(7, 0, r);
    if (in_range(7) && (r[3] & (1u << 29))) /* IA32_ARCH_CAPABILITIES enumerated */
        diag("msr 0x10a: 0x%016llx", (unsigned long long)rdmsr(0x10a));
}

/* Splits "a:b:c" at the colons; false unless there are exactly three parts. */
static bool three_parts(char *s, char *parts[3])
{
    parts[0] = s;
    for (int i = 1; i < 3; i++) {
        char *colon = s;
        while (*colon && *colon != ':')
            colon++;
        if (!*colon)
            return false;
        *colon = '\0';
        s = parts[i] = colon + 1;
    }
    for (char *p = s; *p; p++) {
        if (*p == ':')
            return false;
    }
    return true;
}

static bool parse_check(char *word, bool msr, struct check *c)
{
    char *parts[3];
    uint64_t leaf, sub = 0;
    if (!three_parts(word, parts) || !parse_u64(parts[1], &c->mask) ||
        !parse_u64(parts[2], &c->value))
        return false;
    c->msr = msr;
    if (msr) {
        if (!parse_u64(parts[0], &leaf) || leaf > 0xffffffffu)
            return false;
        c->leaf = (uint32_t)leaf;
        return true;
    }
    /* LEAF.SUBLEAF.R */
    char *dot1 = parts[0];
    while (*dot1 && *dot1 != '.')
        dot1++;
    char *dot2 = *dot1 ? dot1 + 1 : dot1;
    while (*dot2 && *dot2 != '.')
        dot2++;
    if (!*dot1 || !*dot2 || dot2[1] < 'a' || dot2[1] > 'd' || dot2[2])
        return false;
    *dot1 = *dot2 = '\0';
    if (!parse_u64(parts[0], &leaf) || !parse_u64(dot1 + 1, &sub) || leaf > 0xffffffffu ||
        sub > 0xffffffffu || c->mask > 0xffffffffu)
        return false;
    c->leaf = (uint32_t)leaf;
    c->subleaf = (uint32_t)sub;
    c->reg = dot2[1];
    return true;
}

static void collect(const char *key, bool msr)
{
    if (!cmdline_get(key, list, sizeof(list)))
        return;
    char *word = list;
    while (*word) {
        char *end = word;
        while (*end && *end != ',')
            end++;
        bool last = !*end;
        *end = '\0';
        if (nchecks == MAX_CHECKS)
            bail_out("more than %d checks on the command line", MAX_CHECKS);
        if (!parse_check(word, msr, &checks[nchecks]))
            bail_out("%s: cannot read '%s' (LEAF.SUBLEAF.R:MASK:VALUE or INDEX:MASK:VALUE)", key,
                     word);
        nchecks++;
        if (last)
            break;
        word = end + 1;
    }
}

static bool run_check(const struct check *c)
{
    uint64_t got;
    if (c->msr) {
        got = rdmsr(c->leaf);
        diag("msr 0x%x & 0x%llx = 0x%llx, want 0x%llx", c->leaf, (unsigned long long)c->mask,
             (unsigned long long)(got & c->mask), (unsigned long long)c->value);
    } else {
        if (!in_range(c->leaf)) {
            diag("leaf 0x%x is beyond the highest leaf reported", c->leaf);
            return false;
        }
        uint32_t r[4];
        cpuid(c->leaf, c->subleaf, r);
        got = r[c->reg - 'a'];
        diag("cpuid 0x%x.%u e%cx & 0x%llx = 0x%llx, want 0x%llx", c->leaf, c->subleaf, c->reg,
             (unsigned long long)c->mask, (unsigned long long)(got & c->mask),
             (unsigned long long)c->value);
    }
    return (got & c->mask) == c->value;
}

void guest_main(void)
{
    print_leaves();
    collect("cpuid_expect", false);
    collect("msr_expect", true);
    bool all = true;
    printf("1..%u\n", nchecks + 1);
    uint32_t r[4];
    cpuid(0, 0, r);
    bool basic = r[0] >= 1;
    printf("%sok 1 - cpuid reports basic leaves\n", basic ? "" : "not ");
    all &= basic;
    for (unsigned i = 0; i < nchecks; i++) {
        bool ok = run_check(&checks[i]);
        all &= ok;
        if (checks[i].msr)
            printf("%sok %u - msr 0x%x\n", ok ? "" : "not ", i + 2, checks[i].leaf);
        else
            printf("%sok %u - cpuid 0x%x.%u e%cx\n", ok ? "" : "not ", i + 2, checks[i].leaf,
                   checks[i].subleaf, checks[i].reg);
    }
    guest_idle_if_asked();
    i8042_reset();
    diag("no i8042 reset happened, ending through the debug-exit port");
    debug_exit(all ? 0 : 1);
}
