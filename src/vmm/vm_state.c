#include "vmm/vm_state.h"

#include "util/error.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

static int ioctl_retry(int fd, unsigned long request, void *arg)
{
    int r;
    do {
        r = ioctl(fd, request, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

static int get_chip(int vm_fd, unsigned id, const char *name, struct kvm_irqchip *chip)
{
    memset(chip, 0, sizeof(*chip));
    chip->chip_id = id;
    if (ioctl_retry(vm_fd, KVM_GET_IRQCHIP, chip) < 0)
        return error_errno("KVM_GET_IRQCHIP (%s)", name);
    return 0;
}

static int set_chip(int vm_fd, const char *name, const struct kvm_irqchip *saved)
{
    struct kvm_irqchip chip = *saved;
    if (ioctl_retry(vm_fd, KVM_SET_IRQCHIP, &chip) < 0)
        return error_errno("KVM_SET_IRQCHIP (%s)", name);
    return 0;
}

int vm_state_save(int vm_fd, struct vm_state *state)
{
    memset(state, 0, sizeof(*state));
    if (get_chip(vm_fd, KVM_IRQCHIP_PIC_MASTER, "PIC master", &state->pic_master) < 0 ||
        get_chip(vm_fd, KVM_IRQCHIP_PIC_SLAVE, "PIC slave", &state->pic_slave) < 0 ||
        get_chip(vm_fd, KVM_IRQCHIP_IOAPIC, "IOAPIC", &state->ioapic) < 0)
        return -1;
    if (ioctl_retry(vm_fd, KVM_GET_PIT2, &state->pit) < 0)
        return error_errno("KVM_GET_PIT2");
    if (ioctl_retry(vm_fd, KVM_GET_CLOCK, &state->clock) < 0)
        return error_errno("KVM_GET_CLOCK");
    return 0;
}

int vm_state_restore(int vm_fd, const struct vm_state *state, bool clock_realtime)
{
    /* What can be refused is refused before the VM changes: the chip ids
     * travel in the state, and a corrupt one must not land elsewhere. */
    if (state->pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER ||
        state->pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
        state->ioapic.chip_id != KVM_IRQCHIP_IOAPIC)
        return error_set("KVM_SET_IRQCHIP: the saved interrupt controllers are out of order");
    struct kvm_clock_data clock = {.clock = state->clock.clock};
    if (clock_realtime) {
        int flags = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK);
        if (flags < 0 || !(flags & KVM_CLOCK_REALTIME))
            return error_set("KVM_SET_CLOCK: this host's KVM cannot advance the guest clock "
                             "by the real time passed (no KVM_CLOCK_REALTIME)");
        if (!(state->clock.flags & KVM_CLOCK_REALTIME))
            return error_set("KVM_SET_CLOCK: the saved clock has no real time to advance from "
                             "(the host that saved it lacked KVM_CLOCK_REALTIME)");
        clock.flags = KVM_CLOCK_REALTIME;
        clock.realtime = state->clock.realtime;
    }
    if (set_chip(vm_fd, "PIC master", &state->pic_master) < 0 ||
        set_chip(vm_fd, "PIC slave", &state->pic_slave) < 0 ||
        set_chip(vm_fd, "IOAPIC", &state->ioapic) < 0)
        return -1;
    struct kvm_pit_state2 pit = state->pit;
    if (ioctl_retry(vm_fd, KVM_SET_PIT2, &pit) < 0)
        return error_errno("KVM_SET_PIT2");
    if (ioctl_retry(vm_fd, KVM_SET_CLOCK, &clock) < 0)
        return error_errno("KVM_SET_CLOCK");
    return 0;
}
