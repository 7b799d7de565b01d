/* A vCPU's complete KVM state, read out in the order KVM requires on save
 * and written back in the order it requires on restore (for snapshots). */
#ifndef EMBER_VMM_VCPU_STATE_H
#define EMBER_VMM_VCPU_STATE_H

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds the MSR list KVM offers (41 here); a longer one is refused. */
#define VCPU_STATE_MAX_MSRS 256

#define VCPU_STATE_MSR_IA32_TSC          0x10
#define VCPU_STATE_MSR_IA32_TSC_DEADLINE 0x6e0

/* What this host's KVM can save, probed once per VM: every vCPU of the VM
 * is saved with the same shape. */
struct vcpu_state_layout {
    bool sregs2;         /* KVM_GET/SET_SREGS2 (PDPTRs included) */
    bool kvmclock_ctrl;  /* KVM_KVMCLOCK_CTRL after restore */
    uint32_t xsave_size; /* bytes of KVM_GET_XSAVE2 (at least struct kvm_xsave) */
    uint32_t nmsrs;
    /* The MSRs that read back on a vCPU, IA32_TSC first and TSC_DEADLINE
     * last: KVM_SET_MSRS applies them in order, and the deadline is
     * relative to the TSC. */
    uint32_t msr_indices[VCPU_STATE_MAX_MSRS];
};

struct vcpu_state {
    struct kvm_mp_state mp_state;
    struct kvm_regs regs;
    struct kvm_sregs sregs;   /* when the layout has no sregs2 */
    struct kvm_sregs2 sregs2; /* when it has */
    struct kvm_xsave *xsave;  /* layout.xsave_size bytes (FPU and SSE included) */
    struct kvm_xcrs xcrs;
    struct kvm_lapic_state lapic;
    struct kvm_debugregs debugregs;
    struct kvm_vcpu_events events;
    uint32_t nmsrs;
    struct kvm_msr_entry msrs[VCPU_STATE_MAX_MSRS];
    uint32_t tsc_khz; /* the guest TSC's rate when saved */
};

/* Checks the capabilities a save needs and fills the layout; vcpu_fd is any
 * vCPU of vm_fd, on which each listed MSR is tried (some cannot be read). */
int vcpu_state_layout_probe(struct vcpu_state_layout *layout, int kvm_fd, int vm_fd, int vcpu_fd);
/* The same without the MSR list (nmsrs 0): a restore takes the list it saved and lets
 * KVM_SET_MSRS say which MSR it refuses, instead of trying each one first. */
int vcpu_state_layout_caps(struct vcpu_state_layout *layout, int kvm_fd, int vm_fd);
/* Allocates the state's buffers for the layout; vcpu_state_free releases them. */
int vcpu_state_init(struct vcpu_state *state, const struct vcpu_state_layout *layout);
void vcpu_state_free(struct vcpu_state *state);

/* Runs the vCPU once with immediate_exit set, so that KVM completes a
 * pending port or MMIO instruction (whose data the caller has already put
 * in run) before the state is read. Call on a vCPU that is not running. */
int vcpu_state_complete_pending(int vcpu_fd, struct kvm_run *run);
/* Reads the state: MP_STATE first (it latches pending INIT/SIPI), then the
 * rest. Each failure names the ioctl. */
int vcpu_state_save(int vcpu_fd, const struct vcpu_state_layout *layout, struct vcpu_state *state);
/* Writes the state back: the TSC rate checked first, MP_STATE, REGS, SREGS,
 * XSAVE, XCRS, LAPIC (after SREGS, whose APIC base resets it; before MSRS,
 * for TSC_DEADLINE), DEBUGREGS, MSRS (TSC before TSC_DEADLINE), VCPU_EVENTS
 * (after REGS), then KVMCLOCK_CTRL. A restore onto a different TSC rate is
 * refused: this KVM cannot scale the TSC. */
int vcpu_state_restore(int vcpu_fd, const struct vcpu_state_layout *layout,
                       const struct vcpu_state *state);

#endif
