/* ember's own seccomp filters, one per thread kind (tables in filters.c). */
#ifndef EMBER_SANDBOX_FILTERS_H
#define EMBER_SANDBOX_FILTERS_H

#include "sandbox/rules.h"
#include "sandbox/seccomp.h"

/* What a violation does in ember's own filters: a SIGSYS that ember
 * reports (SCMP_ACT_TRAP), or, in a learning build (make SECCOMP_LEARN=1),
 * the kernel's log line and nothing else. */
#ifdef EMBER_SECCOMP_LEARN
#define SC_VIOLATION SCMP_ACT_LOG
#else
#define SC_VIOLATION SCMP_ACT_TRAP
#endif

const struct sc_filter *sc_builtin_filter(enum seccomp_kind kind);
/* What AddressSanitizer's runtime needs in every thread (its allocator,
 * its reports, LeakSanitizer at exit); NULL in other builds. */
const struct sc_filter *sc_sanitizer_allowance(void);

#endif
