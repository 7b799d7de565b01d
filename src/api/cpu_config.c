#include "api/cpu_config.h"

#include "util/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WHAT "cpu-config"

/* Refuses fields outside `allowed`, so that a misspelt key is an error
 * rather than a modifier silently not applied. */
static int known_fields(const cJSON *obj, const char *where, const char *const *allowed,
                        const char *hint)
{
    for (const cJSON *f = obj->child; f; f = f->next) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = f->string && !strcmp(f->string, *a);
        if (!ok)
            return error_set(WHAT ": %s: unknown field `%.40s`%s", where,
                             f->string ? f->string : "", hint);
        for (const cJSON *g = f->next; g; g = g->next) {
            if (g->string && !strcmp(g->string, f->string))
                return error_set(WHAT ": %s: duplicate field `%.40s`", where, f->string);
        }
    }
    return 0;
}

static const cJSON *required(const cJSON *obj, const char *where, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v || cJSON_IsNull(v)) {
        error_set(WHAT ": %s: missing field `%s`", where, name);
        return NULL;
    }
    return v;
}

/* A string holding a number with its base: "0x..." or "0b...", as
 * Firecracker writes leaves, subleaves and MSR addresses. */
static int parse_prefixed_u32(const cJSON *v, const char *where, const char *name, uint32_t *out)
{
    if (!cJSON_IsString(v))
        return error_set(WHAT ": %s: `%s` must be a string such as \"0x1\" or \"0b1\"", where,
                         name);
    const char *s = v->valuestring;
    int base = !strncmp(s, "0x", 2) ? 16 : !strncmp(s, "0b", 2) ? 2 : 0;
    if (!base)
        return error_set(WHAT ": %s: `%s` '%.40s' needs a 0x (hexadecimal) or 0b (binary) prefix",
                         where, name, s);
    const char *digits = s + 2;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(digits, &end, base);
    if (!*digits || *end || errno || n > UINT32_MAX || *digits == '-' || *digits == '+' ||
        *digits == ' ')
        return error_set(WHAT ": %s: `%s` '%.40s' is not a 32-bit number", where, name, s);
    *out = (uint32_t)n;
    return 0;
}

static int parse_bitmap(const cJSON *v, const char *where, unsigned bits, uint64_t *mask,
                        uint64_t *value)
{
    if (!cJSON_IsString(v))
        return error_set(WHAT ": %s: `bitmap` must be a string such as \"0b10xx\"", where);
    if (cpu_bitmap_parse(v->valuestring, bits, mask, value) < 0)
        return error_prefix(WHAT ": %s", where);
    return 0;
}

static int parse_caps(const cJSON *arr, struct cpu_custom_template *t)
{
    if (!cJSON_IsArray(arr))
        return error_set(WHAT ": `kvm_capabilities` must be an array of strings");
    for (const cJSON *v = arr->child; v; v = v->next) {
        if (t->mods.ncaps == CPU_MODS_MAX_CAPS)
            return error_set(WHAT ": at most %d `kvm_capabilities`", CPU_MODS_MAX_CAPS);
        if (!cJSON_IsString(v))
            return error_set(WHAT ": `kvm_capabilities` entries must be strings (\"N\" or \"!N\")");
        const char *s = v->valuestring;
        bool remove = *s == '!';
        const char *digits = s + remove;
        char *end;
        errno = 0;
        unsigned long long n = strtoull(digits, &end, 10);
        if (*digits < '0' || *digits > '9' || *end || errno || n > UINT32_MAX)
            return error_set(WHAT ": kvm capability '%.40s' is not a number (\"N\" to require "
                                  "capability N, \"!N\" to drop it from the checks)",
                             s);
        t->caps[t->mods.ncaps++] = (struct kvm_cap_modifier){.cap = (uint32_t)n, .remove = remove};
    }
    return 0;
}

static int parse_register(const cJSON *v, enum cpuid_register *out, const char *where)
{
    static const char *const names[] = {"eax", "ebx", "ecx", "edx"};
    if (cJSON_IsString(v)) {
        for (int i = 0; i < 4; i++) {
            if (!strcmp(v->valuestring, names[i])) {
                *out = (enum cpuid_register)i;
                return 0;
            }
        }
    }
    return error_set(WHAT ": %s: `register` must be one of eax, ebx, ecx, edx", where);
}

static int parse_cpuid(const cJSON *arr, struct cpu_custom_template *t)
{
    static const char *const leaf_fields[] = {"leaf", "subleaf", "flags", "modifiers", NULL};
    static const char *const reg_fields[] = {"register", "bitmap", NULL};
    if (!cJSON_IsArray(arr))
        return error_set(WHAT ": `cpuid_modifiers` must be an array");
    unsigned index = 0;
    for (const cJSON *l = arr->child; l; l = l->next, index++) {
        char where[48];
        snprintf(where, sizeof(where), "cpuid_modifiers[%u]", index);
        if (!cJSON_IsObject(l))
            return error_set(WHAT ": %s must be an object", where);
        if (known_fields(l, where, leaf_fields, "") < 0)
            return -1;
        const cJSON *leaf = required(l, where, "leaf"), *sub = required(l, where, "subleaf");
        const cJSON *flags = required(l, where, "flags"), *mods = required(l, where, "modifiers");
        uint32_t leaf_n, sub_n;
        if (!leaf || !sub || !flags || !mods ||
            parse_prefixed_u32(leaf, where, "leaf", &leaf_n) < 0 ||
            parse_prefixed_u32(sub, where, "subleaf", &sub_n) < 0)
            return -1;
        /* KVM knows one flag for an entry, that its subleaf matters; the
         * others it once had describe no current CPUID. */
        if (!cJSON_IsNumber(flags) ||
            (flags->valuedouble != 0 && flags->valuedouble != KVM_CPUID_FLAG_SIGNIFCANT_INDEX))
            return error_set(WHAT ": %s: `flags` must be 0, or 1 for a leaf whose subleaf "
                                  "matters",
                             where);
        if (!cJSON_IsArray(mods))
            return error_set(WHAT ": %s: `modifiers` must be an array", where);
        unsigned r = 0;
        for (const cJSON *m = mods->child; m; m = m->next, r++) {
            char rwhere[80];
            snprintf(rwhere, sizeof(rwhere), "%s.modifiers[%u]", where, r);
            if (!cJSON_IsObject(m))
                return error_set(WHAT ": %s must be an object", rwhere);
            if (known_fields(m, rwhere, reg_fields, "") < 0)
                return -1;
            const cJSON *reg = required(m, rwhere, "register");
            const cJSON *bitmap = required(m, rwhere, "bitmap");
            struct cpuid_modifier mod = {
                .leaf = leaf_n, .subleaf = sub_n, .flags = (uint32_t)flags->valuedouble};
            uint64_t mask, value;
            if (!reg || !bitmap || parse_register(reg, &mod.reg, rwhere) < 0 ||
                parse_bitmap(bitmap, rwhere, 32, &mask, &value) < 0)
                return -1;
            mod.mask = (uint32_t)mask;
            mod.value = (uint32_t)value;
            if (t->mods.ncpuid == CPU_MODS_MAX_CPUID)
                return error_set(WHAT ": at most %d CPUID register modifiers", CPU_MODS_MAX_CPUID);
            t->cpuid[t->mods.ncpuid++] = mod;
        }
    }
    return 0;
}

static int parse_msrs(const cJSON *arr, struct cpu_custom_template *t)
{
    static const char *const fields[] = {"addr", "bitmap", NULL};
    if (!cJSON_IsArray(arr))
        return error_set(WHAT ": `msr_modifiers` must be an array");
    unsigned index = 0;
    for (const cJSON *m = arr->child; m; m = m->next, index++) {
        char where[48];
        snprintf(where, sizeof(where), "msr_modifiers[%u]", index);
        if (!cJSON_IsObject(m))
            return error_set(WHAT ": %s must be an object", where);
        if (known_fields(m, where, fields, "") < 0)
            return -1;
        const cJSON *addr = required(m, where, "addr"), *bitmap = required(m, where, "bitmap");
        struct msr_modifier mod;
        if (!addr || !bitmap || parse_prefixed_u32(addr, where, "addr", &mod.index) < 0 ||
            parse_bitmap(bitmap, where, 64, &mod.mask, &mod.value) < 0)
            return -1;
        if (t->mods.nmsr == CPU_MODS_MAX_MSR)
            return error_set(WHAT ": at most %d `msr_modifiers`", CPU_MODS_MAX_MSR);
        t->msr[t->mods.nmsr++] = mod;
    }
    return 0;
}

struct cpu_custom_template *api_parse_cpu_config(const cJSON *body)
{
    static const char *const fields[] = {"kvm_capabilities", "cpuid_modifiers", "msr_modifiers",
                                         NULL};
    if (!cJSON_IsObject(body)) {
        error_set(WHAT " must be a JSON object");
        return NULL;
    }
    /* vcpu_features and reg_modifiers are Firecracker's for aarch64 hosts. */
    if (known_fields(body, "the template", fields,
                     " (an x86_64 template has kvm_capabilities, cpuid_modifiers and "
                     "msr_modifiers)") < 0)
        return NULL;
    struct cpu_custom_template *t = calloc(1, sizeof(*t));
    if (!t) {
        error_set("out of memory");
        return NULL;
    }
    t->mods.cpuid = t->cpuid;
    t->mods.msr = t->msr;
    t->mods.caps = t->caps;
    const cJSON *v;
    int r = 0;
    if ((v = cJSON_GetObjectItemCaseSensitive(body, "kvm_capabilities")) && !cJSON_IsNull(v))
        r = parse_caps(v, t);
    if (r == 0 && (v = cJSON_GetObjectItemCaseSensitive(body, "cpuid_modifiers")) &&
        !cJSON_IsNull(v))
        r = parse_cpuid(v, t);
    if (r == 0 && (v = cJSON_GetObjectItemCaseSensitive(body, "msr_modifiers")) && !cJSON_IsNull(v))
        r = parse_msrs(v, t);
    if (r < 0) {
        free(t);
        return NULL;
    }
    return t;
}

int api_cpu_config_check_leaves(const struct cpu_custom_template *t,
                                const struct kvm_cpuid2 *supported)
{
    for (unsigned i = 0; i < t->mods.ncpuid; i++) {
        const struct cpuid_modifier *m = &t->cpuid[i];
        bool found = false;
        for (unsigned k = 0; k < supported->nent && !found; k++)
            found = supported->entries[k].function == m->leaf &&
                    supported->entries[k].index == m->subleaf;
        if (!found)
            return error_set(WHAT ": this host's KVM has no CPUID leaf 0x%x subleaf 0x%x to "
                                  "change (Template changes a CPUID entry not supported by KVM)",
                             m->leaf, m->subleaf);
    }
    return 0;
}
