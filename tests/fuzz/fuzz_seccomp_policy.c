/* libFuzzer target: seccomp policy files (Firecracker's seccompiler JSON,
 * --seccomp-filter), parsed and compiled with libseccomp as ember does at
 * start. A policy comes from the operator, but it is parsed before any
 * filter is on: it must be refused cleanly, never crash ember. */
#include "sandbox/policy.h"
#include "util/error.h"

#include <linux/filter.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > SC_POLICY_MAX_BYTES)
        return 0;
    /* A private copy: ASan then sees any read past the end. */
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    struct sock_fprog progs[SECCOMP_NKINDS];
    bool covered[SECCOMP_NKINDS];
    memset(progs, 0, sizeof(progs));
    if (sc_policy_compile(text, size, progs, covered) == 0) {
        for (int k = 0; k < SECCOMP_NKINDS; k++) {
            /* A covered kind has a program the kernel would take. */
            if (covered[k] &&
                (progs[k].len == 0 || progs[k].len > BPF_MAXINSNS || !progs[k].filter))
                abort();
        }
        sc_policy_free(progs, covered);
    } else {
        /* Refused with one line that says why. */
        const char *why = error_get();
        if (!why[0] || strchr(why, '\n'))
            abort();
        for (int k = 0; k < SECCOMP_NKINDS; k++) {
            if (covered[k])
                abort();
        }
    }
    free(text);
    return 0;
}
