#include "sandbox/rules.h"

#include "util/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static bool lets_through(uint32_t action)
{
    return action == SCMP_ACT_ALLOW || action == SCMP_ACT_LOG;
}

static uint32_t rule_action(const struct sc_filter *f, const struct sc_rule *r)
{
    return r->has_action ? r->action : f->filter_action;
}

static const char *name_of(int nr, char *buf, size_t len)
{
    char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    snprintf(buf, len, "%s", name ? name : "?");
    free(name);
    return buf;
}

/* libseccomp writes the program to a file descriptor: a memfd here. */
static int export_program(scmp_filter_ctx ctx, struct sc_program *out)
{
    int fd = memfd_create("ember-seccomp", MFD_CLOEXEC);
    if (fd < 0)
        return error_errno("seccomp: memfd_create");
    int r = seccomp_export_bpf(ctx, fd);
    struct stat st;
    if (r < 0 || fstat(fd, &st) < 0) {
        close(fd);
        return error_set("seccomp: cannot export the filter (%s)", strerror(r < 0 ? -r : errno));
    }
    size_t n = (size_t)st.st_size / sizeof(struct sock_filter);
    if (n == 0 || n > BPF_MAXINSNS) {
        close(fd);
        return error_set(
            "seccomp: the filter compiles to %zu instructions; the kernel takes 1 to %d", n,
            BPF_MAXINSNS);
    }
    out->insns = malloc(n * sizeof(struct sock_filter));
    if (!out->insns) {
        close(fd);
        return error_set("out of memory");
    }
    ssize_t got = pread(fd, out->insns, n * sizeof(struct sock_filter), 0);
    close(fd);
    if (got != (ssize_t)(n * sizeof(struct sock_filter))) {
        sc_program_free(out);
        return error_set("seccomp: cannot read the exported filter back");
    }
    out->len = (unsigned short)n;
    return 0;
}

int sc_compile(const struct sc_filter *const *parts, unsigned nparts, uint32_t bad_arch,
               struct sc_program *out)
{
    memset(out, 0, sizeof(*out));
    if (nparts == 0)
        return error_set("seccomp: nothing to compile");
    scmp_filter_ctx ctx = seccomp_init(parts[0]->default_action);
    if (!ctx)
        return error_set("seccomp: libseccomp cannot start a filter (bad default action?)");
    /* ember loads programs itself, thread by thread: never for all threads
     * at once (TSYNC), and it sets NO_NEW_PRIVS itself. */
    int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 0);
    if (r == 0)
        r = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, bad_arch);
    if (r < 0) {
        seccomp_release(ctx);
        return error_set("seccomp: libseccomp refused a filter attribute (%s)", strerror(-r));
    }
    for (unsigned p = 0; p < nparts; p++) {
        const struct sc_filter *f = parts[p];
        for (unsigned i = 0; i < f->nrules; i++) {
            const struct sc_rule *rule = &f->rules[i];
            struct scmp_arg_cmp cmp[SC_MAX_CONDS];
            unsigned n = rule->nconds < SC_MAX_CONDS ? rule->nconds : SC_MAX_CONDS;
            for (unsigned c = 0; c < n; c++) {
                const struct sc_cond *k = &rule->conds[c];
                cmp[c] = (struct scmp_arg_cmp){
                    .arg = k->index,
                    .op = (enum scmp_compare)k->op,
                    .datum_a = k->op == SCMP_CMP_MASKED_EQ ? k->mask : k->value,
                    .datum_b = k->op == SCMP_CMP_MASKED_EQ ? k->value : 0,
                };
            }
            uint32_t action = rule_action(f, rule);
            /* A rule that does what the default does adds nothing (and
             * libseccomp refuses it). */
            if (action == parts[0]->default_action)
                continue;
            r = seccomp_rule_add_exact_array(ctx, action, rule->nr, n, cmp);
            if (r < 0) {
                char name[32];
                seccomp_release(ctx);
                return error_set("seccomp: libseccomp refused the rule for %s (%d) (%s)",
                                 name_of(rule->nr, name, sizeof(name)), rule->nr, strerror(-r));
            }
        }
    }
    r = export_program(ctx, out);
    seccomp_release(ctx);
    return r;
}

void sc_program_free(struct sc_program *p)
{
    free(p->insns);
    p->insns = NULL;
    p->len = 0;
}

unsigned sc_allowed_rules(const struct sc_filter *f)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->nrules; i++)
        n += lets_through(rule_action(f, &f->rules[i]));
    return n;
}

unsigned sc_allowed_syscalls(const struct sc_filter *f)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->nrules; i++) {
        if (!lets_through(rule_action(f, &f->rules[i])))
            continue;
        bool seen = false;
        for (unsigned j = 0; j < i && !seen; j++)
            seen = f->rules[j].nr == f->rules[i].nr && lets_through(rule_action(f, &f->rules[j]));
        n += !seen;
    }
    return n;
}
