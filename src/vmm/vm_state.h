/* The VM-wide KVM state a snapshot carries: the in-kernel interrupt
 * controllers, the PIT and the guest clock. */
#ifndef EMBER_VMM_VM_STATE_H
#define EMBER_VMM_VM_STATE_H

#include <linux/kvm.h>
#include <stdbool.h>

struct vm_state {
    struct kvm_irqchip pic_master, pic_slave, ioapic;
    struct kvm_pit_state2 pit;
    struct kvm_clock_data clock; /* flags say whether realtime is valid */
};

/* Reads the three irqchips, the PIT and the clock of a VM whose vCPUs are
 * paused. Each failure names the ioctl. */
int vm_state_save(int vm_fd, struct vm_state *state);
/* Writes them back in the same order. With clock_realtime the guest clock
 * is advanced by the wall-clock time since the save (KVM_CLOCK_REALTIME),
 * which needs a host that supports it and a state saved with it. Restore
 * this before the vCPUs' state, once the memory slots exist. */
int vm_state_restore(int vm_fd, const struct vm_state *state, bool clock_realtime);

#endif
