/* Seccomp policies in Firecracker's seccompiler JSON format (the file
 * seccompiler-bin takes as input), compiled with libseccomp when ember
 * starts. Thread categories map onto ember's thread kinds:
 *   "vcpu"         -> vcpu
 *   "vmm"          -> main, and the virtio I/O threads (blk, net, console,
 *                     rng, vsock): Firecracker runs its devices on its vmm
 *                     thread
 *   "api"          -> main as well, joined with "vmm" (ember's main thread
 *                     serves the API too)
 * and ember's own kind names ("preboot", "main", "blk", ..., "teardown")
 * take precedence for their kind. A kind the file says nothing about keeps
 * ember's own filter. */
#ifndef EMBER_SANDBOX_POLICY_H
#define EMBER_SANDBOX_POLICY_H

#include "sandbox/seccomp.h"

#include <linux/filter.h>
#include <stdbool.h>
#include <stddef.h>

#define SC_POLICY_MAX_BYTES (1u << 20)
#define SC_POLICY_MAX_RULES 4096 /* per category: more cannot fit one BPF program */

/* Compiles text into progs[kind] for each kind the policy covers, setting
 * covered[kind]; the others are left alone. Returns -1 with error_get()
 * set (one line: what is wrong and where). */
int sc_policy_compile(const char *text, size_t len, struct sock_fprog progs[SECCOMP_NKINDS],
                      bool covered[SECCOMP_NKINDS]);
/* The same, from a file; kinds the file does not cover get ember's own
 * programs from builtin. */
int sc_policy_load(const char *path, struct sock_fprog progs[SECCOMP_NKINDS],
                   const struct sock_fprog builtin[SECCOMP_NKINDS]);
void sc_policy_free(struct sock_fprog progs[SECCOMP_NKINDS], const bool covered[SECCOMP_NKINDS]);

#endif
