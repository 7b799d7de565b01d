/* libFuzzer target: custom CPU templates (PUT /cpu-config): the JSON
 * parser, the bitmap notation on its own, and a parsed template applied to
 * a CPUID table. Invariant: right after applying, reading the table back
 * finds every decided bit as the template set it. */
#include "api/cpu_config.h"
#include "support/input.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct kvm_cpuid2 *sample_cpuid(void)
{
    static const uint32_t leaves[][2] = {{0, 0},   {1, 0},   {4, 0},          {4, 1},
                                         {7, 0},   {7, 1},   {0xb, 0},        {0xb, 1},
                                         {0xd, 0}, {0xd, 1}, {0x80000001, 0}, {0x80000008, 0}};
    size_t n = sizeof(leaves) / sizeof(leaves[0]);
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
    if (!c)
        abort();
    c->nent = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        c->entries[i] = (struct kvm_cpuid_entry2){.function = leaves[i][0],
                                                  .index = leaves[i][1],
                                                  .eax = 0x12345678u * (uint32_t)(i + 1),
                                                  .ebx = 0x9abcdef0u ^ (uint32_t)i,
                                                  .ecx = ~(uint32_t)i,
                                                  .edx = (uint32_t)i << 7};
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_input_string(data, size);
    if (!text)
        return 0;
    uint64_t mask, value;
    if (cpu_bitmap_parse(text, 32, &mask, &value) == 0 && (mask >> 32 || value & ~mask))
        abort(); /* a 32-bit bitmap decides at most 32 bits, and only those it sets */
    cJSON *j = cJSON_ParseWithLength(text, size);
    if (j) {
        struct cpu_custom_template *t = api_parse_cpu_config(j);
        if (t) {
            struct kvm_cpuid2 *c = sample_cpuid();
            api_cpu_config_check_leaves(t, c);
            if (cpu_modifiers_apply_cpuid(c, &t->mods) == 0) {
                char leaks[1024];
                if (cpu_modifiers_leaks(c, &t->mods, leaks, sizeof(leaks)) != 0) {
                    fprintf(stderr, "invariant: applied bits read back differently: %s\n", leaks);
                    abort();
                }
            }
            for (unsigned i = 0; i < t->mods.nmsr; i++) {
                uint64_t v = msr_modifier_apply(&t->msr[i], 0x5555aaaa5555aaaaull);
                if ((v & t->msr[i].mask) != (t->msr[i].value & t->msr[i].mask))
                    abort();
            }
            free(c);
            free(t);
        }
        cJSON_Delete(j);
    }
    free(text);
    return 0;
}
