/* Build-time tool (not part of ember): compiles ember's own filters with
 * libseccomp and prints them as C arrays, with the names of the x86_64
 * system calls, for seccomp.c to include. ember then starts without
 * compiling anything. */
#include "sandbox/filters.h"

#include "util/error.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_SYSCALL 1024

int main(void)
{
    printf("/* Generated at build time by src/sandbox/bpfgen.c from src/sandbox/filters.c. */\n");
    for (int k = 0; k < SECCOMP_NKINDS; k++) {
        const struct sc_filter *parts[2] = {sc_builtin_filter(k), sc_sanitizer_allowance()};
        struct sc_program p;
        if (sc_compile(parts, parts[1] ? 2 : 1, SC_VIOLATION, &p) < 0) {
            fprintf(stderr, "bpfgen: %s: %s\n", seccomp_kind_name(k), error_get());
            return 1;
        }
        printf("static const struct sock_filter builtin_bpf_%d[%u] = {\n", k, p.len);
        for (unsigned i = 0; i < p.len; i++)
            printf("    {0x%04x, %u, %u, 0x%08x},\n", p.insns[i].code, p.insns[i].jt, p.insns[i].jf,
                   p.insns[i].k);
        printf("};\n");
        sc_program_free(&p);
    }
    printf("static const struct sock_fprog builtin_bpf[%d] = {\n", SECCOMP_NKINDS);
    for (int k = 0; k < SECCOMP_NKINDS; k++)
        printf("    {sizeof(builtin_bpf_%d) / sizeof(struct sock_filter), "
               "(struct sock_filter *)builtin_bpf_%d},\n",
               k, k);
    printf("};\n");
    printf("static const char *const syscall_names[%d] = {\n", MAX_SYSCALL);
    for (int nr = 0; nr < MAX_SYSCALL; nr++) {
        char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_X86_64, nr);
        if (name)
            printf("    [%d] = \"%s\",\n", nr, name);
        free(name);
    }
    printf("};\n");
    return 0;
}
