/* Seccomp filters as data: a default action, an action for the rules that
 * match, and rules (a system call, and conditions on its arguments that must
 * all hold). Both ember's own filters and a policy file's become this, and
 * libseccomp turns it into the BPF program the kernel runs. */
#ifndef EMBER_SANDBOX_RULES_H
#define EMBER_SANDBOX_RULES_H

#include <linux/filter.h>
#include <seccomp.h>
#include <stdbool.h>
#include <stdint.h>

#define SC_MAX_CONDS 6 /* one per system call argument */

/* arg <op> value, with op one of libseccomp's comparisons; for
 * SCMP_CMP_MASKED_EQ, (arg & mask) == value. */
struct sc_cond {
    uint8_t index;
    uint8_t op; /* enum scmp_compare */
    uint64_t mask;
    uint64_t value;
};

struct sc_rule {
    int nr;          /* the system call's number on x86_64 */
    bool has_action; /* false: the filter's filter_action */
    uint32_t action; /* SCMP_ACT_* */
    uint8_t nconds;  /* all must hold */
    struct sc_cond conds[SC_MAX_CONDS];
};

struct sc_filter {
    uint32_t default_action; /* no rule matched */
    uint32_t filter_action;  /* a rule matched, unless the rule has its own */
    const struct sc_rule *rules;
    unsigned nrules;
};

/* A compiled filter, as prctl(PR_SET_SECCOMP)/seccomp(2) take it. */
struct sc_program {
    struct sock_filter *insns;
    unsigned short len;
};

/* Compiles the rules of parts[0..nparts) into one program (their union):
 * the default action is parts[0]'s, each rule keeps its part's filter
 * action. Violations of a filter built for another architecture (32-bit
 * system calls) get bad_arch. Returns -1 with error_get() set. */
int sc_compile(const struct sc_filter *const *parts, unsigned nparts, uint32_t bad_arch,
               struct sc_program *out);
void sc_program_free(struct sc_program *p);

/* Distinct system calls that some rule of f lets through (ALLOW or LOG),
 * and the number of such rules. */
unsigned sc_allowed_syscalls(const struct sc_filter *f);
unsigned sc_allowed_rules(const struct sc_filter *f);

#endif
