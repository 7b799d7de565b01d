/* A vCPU's registers at the first instruction. */
#ifndef EMBER_ARCH_X86_REGS_H
#define EMBER_ARCH_X86_REGS_H

#include "arch/x86/boot.h"

#include <linux/kvm.h>

/* Fills regs/sregs for the boot entry (used on the bootstrap vCPU). */
void regs_for_boot(const struct boot_entry *e, struct kvm_regs *regs, struct kvm_sregs *sregs);
/* Applies the boot state to a vCPU fd. */
int regs_setup_boot_vcpu(int vcpu_fd, const struct boot_entry *e);
/* FPU defaults and LAPIC LINT0 = ExtINT, LINT1 = NMI (every vCPU). */
int regs_setup_common(int vcpu_fd);

#endif
