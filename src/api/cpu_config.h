/* Custom CPU templates in Firecracker's JSON (`PUT /cpu-config`, the
 * configuration file's "cpu-config"): kvm_capabilities, cpuid_modifiers
 * and msr_modifiers, validated in full before anything is kept. */
#ifndef EMBER_API_CPU_CONFIG_H
#define EMBER_API_CPU_CONFIG_H

#include "arch/x86/cpu_template.h"

#include <cjson/cJSON.h>
#include <linux/kvm.h>

/* Parses body into a new template (free() it); on error returns NULL with
 * error_get() saying which field is wrong and why. */
struct cpu_custom_template *api_parse_cpu_config(const cJSON *body);

/* Names the first leaf/subleaf the template changes that `supported`
 * (KVM_GET_SUPPORTED_CPUID) lacks, as an error. */
int api_cpu_config_check_leaves(const struct cpu_custom_template *t,
                                const struct kvm_cpuid2 *supported);

#endif
