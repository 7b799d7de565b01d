/* libFuzzer target: the CPU placement parsers (vmm/placement.h), `--cpu-placement`'s spec and
 * the cpulists of machine-config's `cpu_placement`. What a parser takes must format back to a
 * list that parses to the same CPUs, and a placement taken never has a CPU in both sets or a
 * vCPU CPU twice. */
#include "vmm/placement.h"
#include "support/input.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_set_round_trip(const cpu_set_t *s)
{
    static char text[8 * PLACEMENT_MAX_CPU];
    cpulist_format_set(s, text, sizeof(text));
    cpu_set_t back;
    if (CPU_COUNT(s) == 0)
        return;
    if (cpulist_parse_set(text, &back) != 0 || !CPU_EQUAL(s, &back))
        abort();
}

static void check_ordered_round_trip(const uint16_t *cpus, unsigned n)
{
    static char text[8 * PLACEMENT_MAX_CPU];
    static uint16_t back[PLACEMENT_MAX_VCPUS];
    unsigned m;
    cpulist_format_ordered(cpus, n, text, sizeof(text));
    if (n == 0)
        return;
    if (cpulist_parse_ordered(text, back, PLACEMENT_MAX_VCPUS, &m) != 0 || m != n ||
        memcmp(back, cpus, n * sizeof(*cpus)) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_input_string(data, size);
    if (!text)
        return 0;
    cpu_set_t s;
    if (cpulist_parse_set(text, &s) == 0)
        check_set_round_trip(&s);
    static uint16_t cpus[PLACEMENT_MAX_VCPUS];
    unsigned n;
    if (cpulist_parse_ordered(text, cpus, PLACEMENT_MAX_VCPUS, &n) == 0) {
        if (n == 0 || n > PLACEMENT_MAX_VCPUS)
            abort();
        check_ordered_round_trip(cpus, n);
    }
    static struct cpu_placement p;
    if (cpu_placement_parse(text, &p) == 0) {
        if (!p.set || p.nvcpu == 0 || p.nvcpu > PLACEMENT_MAX_VCPUS || CPU_COUNT(&p.vmm) == 0)
            abort();
        cpu_set_t seen;
        CPU_ZERO(&seen);
        for (unsigned i = 0; i < p.nvcpu; i++) {
            if (p.vcpu[i] >= PLACEMENT_MAX_CPU || CPU_ISSET(p.vcpu[i], &p.vmm) ||
                CPU_ISSET(p.vcpu[i], &seen))
                abort();
            CPU_SET(p.vcpu[i], &seen);
        }
        check_set_round_trip(&p.vmm);
        check_ordered_round_trip(p.vcpu, p.nvcpu);
        /* Whatever the host, the check answers without harm. */
        cpu_placement_check_host(&p, p.nvcpu);
    } else if (p.set) {
        abort();
    }
    free(text);
    return 0;
}
