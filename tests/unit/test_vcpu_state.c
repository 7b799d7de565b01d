/* vCPU state save and restore on this host's KVM: a real-mode guest counts
 * on a port, is paused, saved, clobbered, restored and resumed. */
#include "suites.h"
#include "util/error.h"
#include "vmm/vcpu_state.h"
#include "vmm/vm_state.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define GUEST_MEM            0x10000
#define GUEST_CODE           0x1000
#define COUNT_PORT           0x10
#define LAPIC_TMCCT          0x390 /* the timer's current count: it moves on its own */
#define XSAVE_XMM0           160   /* XMM0's offset in the XSAVE area's legacy region */
#define XSAVE_HEADER         512   /* XSTATE_BV, the first byte of the header */
#define XFEATURE_SSE         0x2
#define MSR_IA32_SYSENTER_CS 0x174

/* inc eax; out 0x10, eax; jmp back: one port exit per count. */
static const uint8_t counting_code[] = {0x66, 0x40, 0x66, 0xe7, COUNT_PORT, 0xeb, 0xf9};
#define OUT_END (GUEST_CODE + 5) /* where RIP is once the out completes */

struct test_vm {
    int kvm_fd, vm_fd, vcpu_fd;
    struct kvm_run *run;
    size_t run_size;
    uint8_t *mem;
    uint32_t last_count;
};

/* Skips (false) when this host has no usable KVM. */
static bool test_vm_open(struct test_vm *t)
{
    memset(t, 0, sizeof(*t));
    t->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (t->kvm_fd < 0) {
        fprintf(stderr, "# %s: skipped, cannot open /dev/kvm\n", tcase_name());
        return false;
    }
    t->vm_fd = ioctl(t->kvm_fd, KVM_CREATE_VM, 0);
    ck_assert_int_ge(t->vm_fd, 0);
    ck_assert_int_eq(ioctl(t->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL), 0);
    t->mem = mmap(NULL, GUEST_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(t->mem, MAP_FAILED);
    memcpy(t->mem + GUEST_CODE, counting_code, sizeof(counting_code));
    struct kvm_userspace_memory_region slot = {.slot = 0,
                                               .guest_phys_addr = 0,
                                               .memory_size = GUEST_MEM,
                                               .userspace_addr = (uintptr_t)t->mem};
    /* The slot before the irqchip: the other order makes the slot wait. */
    ck_assert_int_eq(ioctl(t->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot), 0);
    ck_assert_int_eq(ioctl(t->vm_fd, KVM_CREATE_IRQCHIP, 0), 0);
    struct kvm_pit_config pit = {.flags = 0};
    ck_assert_int_eq(ioctl(t->vm_fd, KVM_CREATE_PIT2, &pit), 0);
    t->vcpu_fd = ioctl(t->vm_fd, KVM_CREATE_VCPU, 0);
    ck_assert_int_ge(t->vcpu_fd, 0);

    /* The host's CPUID, so the MSRs a real guest has are there to save. */
    unsigned n = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(cpuid->entries[0]));
    ck_assert_ptr_nonnull(cpuid);
    cpuid->nent = n;
    ck_assert_int_eq(ioctl(t->kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid), 0);
    ck_assert_int_eq(ioctl(t->vcpu_fd, KVM_SET_CPUID2, cpuid), 0);
    free(cpuid);

    int size = ioctl(t->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    ck_assert_int_gt(size, 0);
    t->run_size = (size_t)size;
    t->run = mmap(NULL, t->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, t->vcpu_fd, 0);
    ck_assert_ptr_ne(t->run, MAP_FAILED);

    struct kvm_sregs sregs;
    ck_assert_int_eq(ioctl(t->vcpu_fd, KVM_GET_SREGS, &sregs), 0);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    ck_assert_int_eq(ioctl(t->vcpu_fd, KVM_SET_SREGS, &sregs), 0);
    struct kvm_regs regs = {.rip = GUEST_CODE, .rflags = 0x2};
    ck_assert_int_eq(ioctl(t->vcpu_fd, KVM_SET_REGS, &regs), 0);
    return true;
}

static void test_vm_close(struct test_vm *t)
{
    munmap(t->run, t->run_size);
    close(t->vcpu_fd);
    close(t->vm_fd);
    munmap(t->mem, GUEST_MEM);
    close(t->kvm_fd);
}

/* Runs the guest for n counts; each must be one more than the last. */
static void run_counts(struct test_vm *t, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        ck_assert_int_eq(ioctl(t->vcpu_fd, KVM_RUN, 0), 0);
        ck_assert_uint_eq(t->run->exit_reason, KVM_EXIT_IO);
        ck_assert_uint_eq(t->run->io.port, COUNT_PORT);
        ck_assert_uint_eq(t->run->io.direction, KVM_EXIT_IO_OUT);
        ck_assert_uint_eq(t->run->io.size, 4);
        uint32_t v;
        memcpy(&v, (uint8_t *)t->run + t->run->io.data_offset, 4);
        ck_assert_uint_eq(v, t->last_count + 1);
        t->last_count = v;
    }
}

static void probe_and_save(struct test_vm *t, struct vcpu_state_layout *layout,
                           struct vcpu_state *state)
{
    ck_assert_msg(vcpu_state_layout_probe(layout, t->kvm_fd, t->vm_fd, t->vcpu_fd) == 0, "%s",
                  error_get());
    ck_assert_int_eq(vcpu_state_init(state, layout), 0);
    ck_assert_msg(vcpu_state_complete_pending(t->vcpu_fd, t->run) == 0, "%s", error_get());
    ck_assert_msg(vcpu_state_save(t->vcpu_fd, layout, state) == 0, "%s", error_get());
}

/* Fills XMM0 with one byte, to see the SSE state travel; XSTATE_BV's SSE
 * bit says the registers hold more than their initial zeros. */
static void set_xmm0(int vcpu_fd, uint8_t byte)
{
    struct kvm_xsave xsave;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_GET_XSAVE, &xsave), 0);
    uint8_t *area = (uint8_t *)xsave.region;
    memset(area + XSAVE_XMM0, byte, 16);
    area[XSAVE_HEADER] |= XFEATURE_SSE;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_XSAVE, &xsave), 0);
}

/* Overwrites what restore must bring back: registers, segments, a debug
 * register, the APIC's task priority, XMM0 and an MSR. */
static void clobber_vcpu(int vcpu_fd)
{
    struct kvm_regs regs = {.rip = 0, .rflags = 0x2, .rax = 0xdead};
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_REGS, &regs), 0);
    struct kvm_sregs sregs;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_GET_SREGS, &sregs), 0);
    sregs.cs.base = 0x5000;
    sregs.cs.selector = 0x500;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_SREGS, &sregs), 0);
    struct kvm_debugregs dbg;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_GET_DEBUGREGS, &dbg), 0);
    dbg.db[0] = 0x1234;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_DEBUGREGS, &dbg), 0);
    struct kvm_lapic_state lapic;
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic), 0);
    lapic.regs[0x80] = 0xf0; /* TPR */
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_LAPIC, &lapic), 0);
    set_xmm0(vcpu_fd, 0x99);
    struct kvm_msrs *msr = calloc(1, sizeof(*msr) + sizeof(msr->entries[0]));
    ck_assert_ptr_nonnull(msr);
    msr->nmsrs = 1;
    msr->entries[0] = (struct kvm_msr_entry){.index = MSR_IA32_SYSENTER_CS, .data = 0x77};
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_SET_MSRS, msr), 1);
    free(msr);
}

START_TEST(guest_counts_on_after_restore)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    run_counts(&t, 40);
    struct vcpu_state_layout layout;
    struct vcpu_state state;
    probe_and_save(&t, &layout, &state);
    /* The last out completed before the save: RIP is past it. */
    ck_assert_uint_eq(state.regs.rip, OUT_END);
    ck_assert_uint_eq((uint32_t)state.regs.rax, 40);
    ck_assert_uint_eq(state.mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
    ck_assert_uint_gt(state.nmsrs, 0);
    ck_assert_uint_gt(state.tsc_khz, 0);

    clobber_vcpu(t.vcpu_fd);
    ck_assert_msg(vcpu_state_restore(t.vcpu_fd, &layout, &state) == 0, "%s", error_get());
    run_counts(&t, 40);
    ck_assert_uint_eq(t.last_count, 80);
    vcpu_state_free(&state);
    test_vm_close(&t);
}
END_TEST

static void assert_msrs_equal(const struct vcpu_state *a, const struct vcpu_state *b)
{
    ck_assert_uint_eq(a->nmsrs, b->nmsrs);
    for (uint32_t i = 0; i < a->nmsrs; i++) {
        ck_assert_uint_eq(a->msrs[i].index, b->msrs[i].index);
        if (a->msrs[i].index == VCPU_STATE_MSR_IA32_TSC)
            continue; /* it counts on */
        ck_assert_msg(a->msrs[i].data == b->msrs[i].data, "MSR 0x%x: 0x%llx before, 0x%llx after",
                      a->msrs[i].index, (unsigned long long)a->msrs[i].data,
                      (unsigned long long)b->msrs[i].data);
    }
}

START_TEST(restore_then_save_gives_the_same_state)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    run_counts(&t, 10);
    set_xmm0(t.vcpu_fd, 0x3c);
    struct vcpu_state_layout layout;
    struct vcpu_state before, after;
    probe_and_save(&t, &layout, &before);
    uint8_t xmm0[16];
    memset(xmm0, 0x3c, sizeof(xmm0));
    ck_assert_mem_eq((uint8_t *)before.xsave + XSAVE_XMM0, xmm0, sizeof(xmm0));
    clobber_vcpu(t.vcpu_fd);
    ck_assert_msg(vcpu_state_restore(t.vcpu_fd, &layout, &before) == 0, "%s", error_get());
    ck_assert_int_eq(vcpu_state_init(&after, &layout), 0);
    ck_assert_msg(vcpu_state_save(t.vcpu_fd, &layout, &after) == 0, "%s", error_get());

    ck_assert_mem_eq(&before.mp_state, &after.mp_state, sizeof(before.mp_state));
    ck_assert_mem_eq(&before.regs, &after.regs, sizeof(before.regs));
    if (layout.sregs2)
        ck_assert_mem_eq(&before.sregs2, &after.sregs2, sizeof(before.sregs2));
    else
        ck_assert_mem_eq(&before.sregs, &after.sregs, sizeof(before.sregs));
    ck_assert_mem_eq(before.xsave, after.xsave, layout.xsave_size);
    ck_assert_mem_eq(&before.xcrs, &after.xcrs, sizeof(before.xcrs));
    ck_assert_mem_eq(&before.debugregs, &after.debugregs, sizeof(before.debugregs));
    ck_assert_mem_eq(&before.events, &after.events, sizeof(before.events));
    ck_assert_mem_eq(before.lapic.regs, after.lapic.regs, LAPIC_TMCCT);
    ck_assert_mem_eq(before.lapic.regs + LAPIC_TMCCT + 4, after.lapic.regs + LAPIC_TMCCT + 4,
                     sizeof(before.lapic.regs) - LAPIC_TMCCT - 4);
    assert_msrs_equal(&before, &after);
    ck_assert_uint_eq(before.tsc_khz, after.tsc_khz);
    vcpu_state_free(&before);
    vcpu_state_free(&after);
    test_vm_close(&t);
}
END_TEST

START_TEST(msr_list_puts_tsc_first_and_deadline_last)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    struct vcpu_state_layout layout;
    ck_assert_msg(vcpu_state_layout_probe(&layout, t.kvm_fd, t.vm_fd, t.vcpu_fd) == 0, "%s",
                  error_get());
    ck_assert_uint_gt(layout.nmsrs, 1);
    ck_assert_uint_eq(layout.msr_indices[0], VCPU_STATE_MSR_IA32_TSC);
    bool deadline = false;
    for (uint32_t i = 0; i < layout.nmsrs; i++)
        deadline |= layout.msr_indices[i] == VCPU_STATE_MSR_IA32_TSC_DEADLINE;
    if (deadline)
        ck_assert_uint_eq(layout.msr_indices[layout.nmsrs - 1], VCPU_STATE_MSR_IA32_TSC_DEADLINE);
    else
        fprintf(stderr, "# %s: this vCPU has no TSC_DEADLINE MSR\n", tcase_name());
    ck_assert_uint_ge(layout.xsave_size, sizeof(struct kvm_xsave));
    test_vm_close(&t);
}
END_TEST

START_TEST(different_tsc_rate_is_refused_before_any_change)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    run_counts(&t, 5);
    struct vcpu_state_layout layout;
    struct vcpu_state state;
    probe_and_save(&t, &layout, &state);
    struct kvm_regs regs_before;
    ck_assert_int_eq(ioctl(t.vcpu_fd, KVM_GET_REGS, &regs_before), 0);

    struct vcpu_state faster = state;
    faster.tsc_khz = state.tsc_khz * 2;
    faster.regs.rax = 0x5555;
    ck_assert_int_eq(vcpu_state_restore(t.vcpu_fd, &layout, &faster), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "no TSC scaling"));
    faster.tsc_khz = state.tsc_khz / 2;
    ck_assert_int_eq(vcpu_state_restore(t.vcpu_fd, &layout, &faster), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "no TSC scaling"));

    struct kvm_regs regs_after;
    ck_assert_int_eq(ioctl(t.vcpu_fd, KVM_GET_REGS, &regs_after), 0);
    ck_assert_mem_eq(&regs_before, &regs_after, sizeof(regs_before));
    vcpu_state_free(&state);
    test_vm_close(&t);
}
END_TEST

START_TEST(failures_name_the_ioctl)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    struct vcpu_state_layout layout;
    struct vcpu_state state;
    probe_and_save(&t, &layout, &state);
    /* A file that is no vCPU fails the first ioctl of each direction. */
    int not_a_vcpu = t.kvm_fd;
    ck_assert_int_eq(vcpu_state_save(not_a_vcpu, &layout, &state), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "KVM_GET_MP_STATE"));
    ck_assert_int_eq(vcpu_state_restore(not_a_vcpu, &layout, &state), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "KVM_GET_TSC_KHZ"));
    /* A state saved with a different MSR list is refused by name. */
    state.nmsrs--;
    ck_assert_int_eq(vcpu_state_restore(t.vcpu_fd, &layout, &state), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "MSRs"));
    vcpu_state_free(&state);
    test_vm_close(&t);
}
END_TEST

/* Changes what vm_state_restore must bring back: the PIC's mask, an IOAPIC
 * redirection entry, the PIT's channel 0 reload value. */
static void clobber_vm(int vm_fd)
{
    struct kvm_irqchip chip = {.chip_id = KVM_IRQCHIP_PIC_MASTER};
    ck_assert_int_eq(ioctl(vm_fd, KVM_GET_IRQCHIP, &chip), 0);
    chip.chip.pic.imr ^= 0x5a;
    ck_assert_int_eq(ioctl(vm_fd, KVM_SET_IRQCHIP, &chip), 0);
    chip = (struct kvm_irqchip){.chip_id = KVM_IRQCHIP_IOAPIC};
    ck_assert_int_eq(ioctl(vm_fd, KVM_GET_IRQCHIP, &chip), 0);
    chip.chip.ioapic.redirtbl[3].bits ^= 0x31;
    ck_assert_int_eq(ioctl(vm_fd, KVM_SET_IRQCHIP, &chip), 0);
    struct kvm_pit_state2 pit;
    ck_assert_int_eq(ioctl(vm_fd, KVM_GET_PIT2, &pit), 0);
    pit.channels[0].count = 1234;
    ck_assert_int_eq(ioctl(vm_fd, KVM_SET_PIT2, &pit), 0);
}

START_TEST(vm_state_round_trips)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    run_counts(&t, 3);
    struct vm_state before, after;
    ck_assert_msg(vm_state_save(t.vm_fd, &before) == 0, "%s", error_get());
    clobber_vm(t.vm_fd);
    ck_assert_msg(vm_state_restore(t.vm_fd, &before, false) == 0, "%s", error_get());
    ck_assert_msg(vm_state_save(t.vm_fd, &after) == 0, "%s", error_get());
    ck_assert_mem_eq(&before.pic_master, &after.pic_master, sizeof(before.pic_master));
    ck_assert_mem_eq(&before.pic_slave, &after.pic_slave, sizeof(before.pic_slave));
    ck_assert_mem_eq(&before.ioapic, &after.ioapic, sizeof(before.ioapic));
    /* SET_PIT2 restarts each channel's count from now. */
    for (int i = 0; i < 3; i++) {
        before.pit.channels[i].count_load_time = after.pit.channels[i].count_load_time;
    }
    ck_assert_mem_eq(&before.pit, &after.pit, sizeof(before.pit));
    /* The clock was set back to its saved value and runs on from there. */
    ck_assert_uint_ge(after.clock.clock, before.clock.clock);
    run_counts(&t, 3);
    test_vm_close(&t);
}
END_TEST

START_TEST(vm_clock_realtime_advances_by_the_time_passed)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    /* KVM keeps a master clock (and so the realtime) once a vCPU ran. */
    run_counts(&t, 3);
    struct vm_state state, now;
    ck_assert_msg(vm_state_save(t.vm_fd, &state) == 0, "%s", error_get());
    int caps = ioctl(t.kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK);
    if (!(state.clock.flags & KVM_CLOCK_REALTIME) || caps < 0 || !(caps & KVM_CLOCK_REALTIME)) {
        fprintf(stderr, "# %s: skipped, this host's KVM has no KVM_CLOCK_REALTIME\n", tcase_name());
        test_vm_close(&t);
        return;
    }
    /* As if the snapshot had been taken 100 s of wall-clock time ago. */
    const uint64_t passed_ns = 100ULL * 1000000000ULL;
    state.clock.realtime -= passed_ns;
    ck_assert_msg(vm_state_restore(t.vm_fd, &state, true) == 0, "%s", error_get());
    ck_assert_msg(vm_state_save(t.vm_fd, &now) == 0, "%s", error_get());
    ck_assert_uint_ge(now.clock.clock, state.clock.clock + passed_ns);

    /* Without realtime in the saved state, asking for it is refused. */
    state.clock.flags &= ~(uint32_t)KVM_CLOCK_REALTIME;
    ck_assert_int_eq(vm_state_restore(t.vm_fd, &state, true), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "KVM_CLOCK_REALTIME"));
    test_vm_close(&t);
}
END_TEST

START_TEST(vm_state_with_misplaced_chip_is_refused)
{
    struct test_vm t;
    if (!test_vm_open(&t))
        return;
    struct vm_state state;
    ck_assert_msg(vm_state_save(t.vm_fd, &state) == 0, "%s", error_get());
    state.ioapic.chip_id = KVM_IRQCHIP_PIC_MASTER;
    ck_assert_int_eq(vm_state_restore(t.vm_fd, &state, false), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "KVM_SET_IRQCHIP"));
    ck_assert_int_eq(vm_state_save(t.kvm_fd, &state), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "KVM_GET_IRQCHIP (PIC master)"));
    test_vm_close(&t);
}
END_TEST

START_TEST(snapshot_restored_into_a_new_vm_counts_on)
{
    struct test_vm old, fresh;
    if (!test_vm_open(&old))
        return;
    run_counts(&old, 30);
    struct vcpu_state_layout layout, fresh_layout;
    struct vcpu_state state;
    struct vm_state vm;
    probe_and_save(&old, &layout, &state);
    ck_assert_msg(vm_state_save(old.vm_fd, &vm) == 0, "%s", error_get());
    test_vm_close(&old);

    /* A new VM, as a restoring process builds it: memory slot, irqchip,
     * PIT and vCPU first, then the VM's state, then the vCPU's. */
    ck_assert(test_vm_open(&fresh));
    ck_assert_msg(
        vcpu_state_layout_probe(&fresh_layout, fresh.kvm_fd, fresh.vm_fd, fresh.vcpu_fd) == 0, "%s",
        error_get());
    ck_assert_uint_eq(fresh_layout.nmsrs, layout.nmsrs);
    ck_assert_mem_eq(fresh_layout.msr_indices, layout.msr_indices,
                     layout.nmsrs * sizeof(layout.msr_indices[0]));
    ck_assert_msg(vm_state_restore(fresh.vm_fd, &vm, false) == 0, "%s", error_get());
    ck_assert_msg(vcpu_state_restore(fresh.vcpu_fd, &fresh_layout, &state) == 0, "%s", error_get());
    fresh.last_count = 30;
    run_counts(&fresh, 30);
    vcpu_state_free(&state);
    test_vm_close(&fresh);
}
END_TEST

Suite *vcpu_state_suite(void)
{
    Suite *s = suite_create("vcpu_state");
    TCase *t = tcase_create("kvm");
    tcase_set_timeout(t, 30);
    tcase_add_test(t, guest_counts_on_after_restore);
    tcase_add_test(t, restore_then_save_gives_the_same_state);
    tcase_add_test(t, msr_list_puts_tsc_first_and_deadline_last);
    tcase_add_test(t, different_tsc_rate_is_refused_before_any_change);
    tcase_add_test(t, failures_name_the_ioctl);
    tcase_add_test(t, vm_state_round_trips);
    tcase_add_test(t, vm_clock_realtime_advances_by_the_time_passed);
    tcase_add_test(t, vm_state_with_misplaced_chip_is_refused);
    tcase_add_test(t, snapshot_restored_into_a_new_vm_counts_on);
    suite_add_tcase(s, t);
    return s;
}
