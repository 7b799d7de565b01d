#include "sandbox/policy.h"

#include "sandbox/filters.h"
#include "sandbox/rules.h"
#include "util/error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Firecracker's categories, and what they become. */
enum category { CAT_VMM, CAT_API, CAT_VCPU, NCATEGORIES };
static const char *const category_names[NCATEGORIES] = {"vmm", "api", "vcpu"};

struct parsed {
    bool present;
    struct sc_filter filter;
    struct sc_rule *rules;
};

struct policy {
    struct parsed category[NCATEGORIES];
    struct parsed kind[SECCOMP_NKINDS]; /* ember's own names */
};

static void policy_free(struct policy *p)
{
    for (int i = 0; i < NCATEGORIES; i++)
        free(p->category[i].rules);
    for (int i = 0; i < SECCOMP_NKINDS; i++)
        free(p->kind[i].rules);
}

/* JSON numbers are doubles: above 2^53 they are no longer exact. */
#define EXACT_MAX 9007199254740992.0

static int parse_uint(const cJSON *v, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > max || d != floor(d))
        return -1;
    *out = (uint64_t)d;
    return 0;
}

/* "allow", "trap", "log", "kill_process", "kill_thread" (and "kill", an
 * older spelling), {"errno": N}, {"trace": N}. A thread killed alone would
 * leave the machine half-alive, so kill_thread ends the process. */
static int parse_action(const cJSON *v, uint32_t *out, const char *where)
{
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        if (!strcmp(s, "allow"))
            *out = SCMP_ACT_ALLOW;
        else if (!strcmp(s, "trap"))
            *out = SCMP_ACT_TRAP;
        else if (!strcmp(s, "log"))
            *out = SCMP_ACT_LOG;
        else if (!strcmp(s, "kill_process") || !strcmp(s, "kill_thread") || !strcmp(s, "kill"))
            *out = SCMP_ACT_KILL_PROCESS;
        else
            return error_set("%s: unknown action \"%s\" (use allow, trap, log, kill_process, "
                             "kill_thread, {\"errno\": N} or {\"trace\": N})",
                             where, s);
        return 0;
    }
    if (cJSON_IsObject(v) && v->child && !v->child->next) {
        const cJSON *c = v->child;
        bool is_errno = !strcmp(c->string, "errno"), is_trace = !strcmp(c->string, "trace");
        uint64_t n;
        if ((is_errno || is_trace) && parse_uint(c, is_errno ? 4095 : 65535, &n) == 0) {
            *out = is_errno ? SCMP_ACT_ERRNO((uint32_t)n) : SCMP_ACT_TRACE((uint32_t)n);
            return 0;
        }
        if (is_errno || is_trace)
            return error_set("%s: \"%s\" takes a number from 0 to %d", where, c->string,
                             is_errno ? 4095 : 65535);
    }
    return error_set("%s: unknown action (use allow, trap, log, kill_process, kill_thread, "
                     "{\"errno\": N} or {\"trace\": N})",
                     where);
}

/* Only these fields: a misspelt one (say "arg" for "args") would quietly
 * widen the filter. */
static int check_fields(const cJSON *o, const char *const *allowed, const char *where)
{
    for (const cJSON *c = o->child; c; c = c->next) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = !strcmp(c->string, *a);
        if (!ok)
            return error_set("%s: unknown field \"%s\"", where, c->string);
        for (const cJSON *d = o->child; d != c; d = d->next) {
            if (!strcmp(d->string, c->string))
                return error_set("%s: \"%s\" given twice", where, c->string);
        }
    }
    return 0;
}

static int parse_condition(const cJSON *o, struct sc_cond *c, const char *where)
{
    static const char *const fields[] = {"index", "type", "op", "val", "comment", NULL};
    if (!cJSON_IsObject(o))
        return error_set("%s: a condition must be an object", where);
    if (check_fields(o, fields, where) < 0)
        return -1;
    const cJSON *index = cJSON_GetObjectItemCaseSensitive(o, "index");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(o, "op");
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(o, "val");
    uint64_t n;
    if (!index || parse_uint(index, 1e9, &n) < 0 || n > 5)
        return error_set("%s: \"index\" must be an argument number from 0 to 5", where);
    c->index = (uint8_t)n;
    bool dword;
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "dword"))
        dword = true;
    else if (cJSON_IsString(type) && !strcmp(type->valuestring, "qword"))
        dword = false;
    else
        return error_set("%s: \"type\" must be \"dword\" or \"qword\"", where);
    uint64_t max = dword ? 0xffffffffu : (uint64_t)EXACT_MAX;
    if (!val || parse_uint(val, (double)max, &c->value) < 0)
        return error_set("%s: \"val\" must be an integer from 0 to %llu%s", where,
                         (unsigned long long)max,
                         dword ? " (a dword)" : " (larger values are not exact in JSON)");
    c->mask = 0;
    static const struct {
        const char *name;
        enum scmp_compare op;
    } ops[] = {{"eq", SCMP_CMP_EQ}, {"ne", SCMP_CMP_NE}, {"lt", SCMP_CMP_LT},
               {"le", SCMP_CMP_LE}, {"gt", SCMP_CMP_GT}, {"ge", SCMP_CMP_GE}};
    if (cJSON_IsString(op)) {
        size_t i;
        for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
            if (!strcmp(op->valuestring, ops[i].name))
                break;
        }
        if (i == sizeof(ops) / sizeof(ops[0]))
            return error_set("%s: unknown operator \"%s\" (use eq, ne, lt, le, gt, ge or "
                             "{\"masked_eq\": MASK})",
                             where, op->valuestring);
        c->op = (uint8_t)ops[i].op;
        /* A 32-bit argument may come with garbage in its upper half: compare
         * the lower half only, as Firecracker does. */
        if (ops[i].op == SCMP_CMP_EQ && dword) {
            c->op = SCMP_CMP_MASKED_EQ;
            c->mask = 0xffffffffu;
        }
        return 0;
    }
    const cJSON *m = cJSON_IsObject(op) && op->child && !op->child->next ? op->child : NULL;
    if (m && !strcmp(m->string, "masked_eq")) {
        if (parse_uint(m, (double)max, &c->mask) < 0)
            return error_set("%s: the mask of \"masked_eq\" must be an integer from 0 to %llu",
                             where, (unsigned long long)max);
        c->op = SCMP_CMP_MASKED_EQ;
        return 0;
    }
    return error_set("%s: unknown operator (use eq, ne, lt, le, gt, ge or {\"masked_eq\": MASK})",
                     where);
}

static int parse_rule(const cJSON *o, struct sc_rule *r, const char *where)
{
    static const char *const fields[] = {"syscall", "args", "comment", NULL};
    if (!cJSON_IsObject(o))
        return error_set("%s: a rule must be an object", where);
    if (check_fields(o, fields, where) < 0)
        return -1;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "syscall");
    if (!cJSON_IsString(name))
        return error_set("%s: \"syscall\" (a system call's name) is missing", where);
    /* Names of this architecture only: another's resolve to a negative
     * placeholder. */
    int nr = seccomp_syscall_resolve_name_arch(SCMP_ARCH_X86_64, name->valuestring);
    if (nr < 0)
        return error_set("%s: \"%.64s\" is not a system call on x86_64", where, name->valuestring);
    memset(r, 0, sizeof(*r));
    r->nr = nr;
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "args");
    if (!args)
        return 0;
    if (!cJSON_IsArray(args))
        return error_set("%s (%s): \"args\" must be a list of conditions", where,
                         name->valuestring);
    int n = cJSON_GetArraySize(args);
    if (n > SC_MAX_CONDS)
        return error_set("%s (%s): at most %d conditions", where, name->valuestring, SC_MAX_CONDS);
    int i = 0;
    for (const cJSON *c = args->child; c; c = c->next, i++) {
        char at[160];
        snprintf(at, sizeof(at), "%s (%s), condition %d", where, name->valuestring, i + 1);
        if (parse_condition(c, &r->conds[i], at) < 0)
            return -1;
        /* libseccomp compares an argument once per rule (seccompiler's
         * "ge 3 and lt 1024" on one argument cannot be said in one rule). */
        for (int j = 0; j < i; j++) {
            if (r->conds[j].index == r->conds[i].index)
                return error_set("%s: argument %u is compared already in this rule; ember "
                                 "compiles policies with libseccomp, which takes one comparison "
                                 "per argument and rule",
                                 at, r->conds[i].index);
        }
    }
    r->nconds = (uint8_t)n;
    return 0;
}

static int parse_filter(const cJSON *o, struct parsed *out, const char *category)
{
    static const char *const fields[] = {"default_action", "filter_action", "filter", "comment",
                                         NULL};
    char where[96];
    snprintf(where, sizeof(where), "\"%s\"", category);
    if (!cJSON_IsObject(o))
        return error_set("%s: must be an object with default_action, filter_action and filter",
                         where);
    if (check_fields(o, fields, where) < 0)
        return -1;
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(o, "default_action");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "filter_action");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "filter");
    if (!def || !act || !cJSON_IsArray(list))
        return error_set("%s: needs default_action, filter_action and a filter list", where);
    char at[128];
    snprintf(at, sizeof(at), "%s default_action", where);
    if (parse_action(def, &out->filter.default_action, at) < 0)
        return -1;
    snprintf(at, sizeof(at), "%s filter_action", where);
    if (parse_action(act, &out->filter.filter_action, at) < 0)
        return -1;
    int n = cJSON_GetArraySize(list);
    if (n > SC_POLICY_MAX_RULES)
        return error_set("%s: %d rules; at most %d", where, n, SC_POLICY_MAX_RULES);
    out->rules = calloc(n ? (size_t)n : 1, sizeof(*out->rules));
    if (!out->rules)
        return error_set("out of memory");
    int i = 0;
    for (const cJSON *r = list->child; r; r = r->next, i++) {
        snprintf(at, sizeof(at), "%s rule %d", where, i + 1);
        if (parse_rule(r, &out->rules[i], at) < 0)
            return -1;
    }
    out->filter.rules = out->rules;
    out->filter.nrules = (unsigned)n;
    out->present = true;
    return 0;
}

static int parse_policy(const cJSON *root, struct policy *p)
{
    if (!cJSON_IsObject(root))
        return error_set("the top level must be an object of thread categories");
    for (const cJSON *c = root->child; c; c = c->next) {
        struct parsed *slot = NULL;
        for (int i = 0; i < NCATEGORIES && !slot; i++) {
            if (!strcmp(c->string, category_names[i]))
                slot = &p->category[i];
        }
        for (int k = 0; k < SECCOMP_NKINDS && !slot; k++) {
            if (!strcmp(c->string, seccomp_kind_name(k)))
                slot = &p->kind[k];
        }
        if (!slot)
            return error_set(
                "unknown thread category \"%.64s\" (Firecracker's vmm, api, vcpu, or "
                "ember's preboot, main, vcpu, blk, net, console, rng, vsock, pmem, slirp, "
                "stdin, teardown)",
                c->string);
        if (slot->present)
            return error_set("thread category \"%s\" given twice", c->string);
        if (parse_filter(c, slot, c->string) < 0)
            return -1;
    }
    return 0;
}

/* What a kind's program is made of; 0 parts: the file does not cover it. */
static unsigned parts_for(const struct policy *p, enum seccomp_kind kind,
                          const struct sc_filter *parts[3])
{
    unsigned n = 0;
    if (p->kind[kind].present) {
        parts[n++] = &p->kind[kind].filter;
        return n;
    }
    switch (kind) {
    case SECCOMP_MAIN:
        if (p->category[CAT_VMM].present)
            parts[n++] = &p->category[CAT_VMM].filter;
        if (p->category[CAT_API].present)
            parts[n++] = &p->category[CAT_API].filter;
        break;
    case SECCOMP_VCPU:
        /* The same name in both: the file's "vcpu" is Firecracker's category. */
        if (p->category[CAT_VCPU].present)
            parts[n++] = &p->category[CAT_VCPU].filter;
        break;
    case SECCOMP_BLK:
    case SECCOMP_NET:
    case SECCOMP_CONSOLE:
    case SECCOMP_RNG:
    case SECCOMP_VSOCK:
    case SECCOMP_PMEM:
    case SECCOMP_VHOST_USER:
        if (p->category[CAT_VMM].present)
            parts[n++] = &p->category[CAT_VMM].filter;
        break;
    default:
        break;
    }
    return n;
}

void sc_policy_free(struct sock_fprog progs[SECCOMP_NKINDS], const bool covered[SECCOMP_NKINDS])
{
    for (int k = 0; k < SECCOMP_NKINDS; k++) {
        if (covered[k]) {
            free(progs[k].filter);
            progs[k].filter = NULL;
            progs[k].len = 0;
        }
    }
}

int sc_policy_compile(const char *text, size_t len, struct sock_fprog progs[SECCOMP_NKINDS],
                      bool covered[SECCOMP_NKINDS])
{
    memset(covered, 0, SECCOMP_NKINDS * sizeof(bool));
    size_t lead = 0;
    while (lead < len && strchr(" \t\r\n", text[lead]))
        lead++;
    if (memchr(text, '\0', len) || lead == len || text[lead] != '{')
        return error_set("not a JSON policy: ember takes seccompiler's JSON input (the file "
                         "seccompiler-bin compiles), not the binary filters seccompiler-bin "
                         "writes");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t off = end && end >= text ? (size_t)(end - text) : 0;
        return error_set("not valid JSON (near byte %zu)", off);
    }
    struct policy p;
    memset(&p, 0, sizeof(p));
    int r = parse_policy(root, &p);
    cJSON_Delete(root);
    const struct sc_filter *sanitizer = sc_sanitizer_allowance();
    for (int k = 0; r == 0 && k < SECCOMP_NKINDS; k++) {
        const struct sc_filter *parts[3];
        unsigned n = parts_for(&p, k, parts);
        if (!n)
            continue;
        if (sanitizer)
            parts[n++] = sanitizer;
        struct sc_program prog;
        if (sc_compile(parts, n, SCMP_ACT_TRAP, &prog) < 0) {
            r = error_prefix("thread kind %s", seccomp_kind_name(k));
            break;
        }
        progs[k] = (struct sock_fprog){.len = prog.len, .filter = prog.insns};
        covered[k] = true;
    }
    policy_free(&p);
    if (r < 0) {
        /* Nothing half-compiled is left: no kind is covered. */
        sc_policy_free(progs, covered);
        memset(covered, 0, SECCOMP_NKINDS * sizeof(bool));
        /* The message quotes the file's names, in which cJSON lets control
         * characters through: it stays one printable line. */
        char line[512];
        snprintf(line, sizeof(line), "%s", error_get());
        for (char *c = line; *c; c++) {
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = '?';
        }
        error_set("%s", line);
    }
    return r;
}

int sc_policy_load(const char *path, struct sock_fprog progs[SECCOMP_NKINDS],
                   const struct sock_fprog builtin[SECCOMP_NKINDS])
{
    FILE *f = fopen(path, "re");
    if (!f)
        return error_errno("--seccomp-filter: cannot open '%s'", path);
    char *text = malloc(SC_POLICY_MAX_BYTES + 1);
    size_t n = text ? fread(text, 1, SC_POLICY_MAX_BYTES + 1, f) : 0;
    bool failed = ferror(f);
    fclose(f);
    if (!text || failed || n > SC_POLICY_MAX_BYTES) {
        free(text);
        return error_set("--seccomp-filter '%s': %s", path,
                         !text    ? "out of memory"
                         : failed ? "read error"
                                  : "larger than 1 MiB");
    }
    bool covered[SECCOMP_NKINDS];
    int r = sc_policy_compile(text, n, progs, covered);
    free(text);
    if (r < 0)
        return error_prefix("--seccomp-filter '%s'", path);
    for (int k = 0; k < SECCOMP_NKINDS; k++) {
        if (!covered[k])
            progs[k] = builtin[k];
    }
    return 0;
}
