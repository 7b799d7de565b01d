#include "vmm/vcpu.h"

#include "arch/x86/regs.h"
#include "sandbox/seccomp.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "vmm/exit_status.h"
#include "vmm/vm.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KICK_SIGNAL (SIGRTMIN + 0)

static void kick_handler(int sig)
{
    (void)sig; /* its only job is to interrupt KVM_RUN */
}

int vcpu_init_kick_signal(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(KICK_SIGNAL, &sa, NULL) < 0)
        return error_errno("sigaction");
    return 0;
}

/* Reads back what KVM made of the CPUID we set: a host that passes the
 * real CPUID through cannot hide features, and the user must know. */
static void check_template(struct vcpu *vcpu, struct kvm_cpuid2 *buf, unsigned capacity)
{
    buf->nent = capacity;
    if (ioctl(vcpu->fd, KVM_GET_CPUID2, buf) < 0)
        return;
    char names[256];
    if (cpuid_template_leaks(buf, vcpu->vm->cfg.cpu_template, names, sizeof(names)) > 0)
        log_warn("this host's KVM keeps these features visible despite --cpu-template %s: %s "
                 "(it passes the real CPUID through); a Linux guest here may need "
                 "clearcpuid=/noxsave on its command line",
                 cpu_template_name(vcpu->vm->cfg.cpu_template), names);
    const struct cpu_modifiers *mods[2] = {cpu_template_modifiers(vcpu->vm->cfg.cpu_template),
                                           vcpu->vm->cfg.custom_cpu};
    for (int i = 0; i < 2; i++) {
        char bits[1024];
        if (mods[i] && cpu_modifiers_leaks(buf, mods[i], bits, sizeof(bits)) > 0)
            log_warn("this host's KVM does not give the guest these CPUID bits as the %s CPU "
                     "template sets them: %s (leaf.subleaf register bits; it passes the real "
                     "CPUID through)",
                     i == 0 ? cpu_template_name(vcpu->vm->cfg.cpu_template) : "custom", bits);
    }
}

/* A template's MSR changes on top of what KVM gives the vCPU once its
 * CPUID is set (KVM derives some MSRs, ARCH_CAPABILITIES among them, from
 * it). */
static int apply_msr_modifiers(struct vcpu *vcpu, const struct cpu_modifiers *m)
{
    for (unsigned i = 0; m && i < m->nmsr; i++) {
        /* struct kvm_msrs ends in a flexible array: one entry after it. */
        union {
            struct kvm_msrs hdr;
            uint8_t bytes[sizeof(struct kvm_msrs) + sizeof(struct kvm_msr_entry)];
        } msrs = {.hdr.nmsrs = 1};
        msrs.hdr.entries[0].index = m->msr[i].index;
        if (ioctl(vcpu->fd, KVM_GET_MSRS, &msrs) != 1)
            return error_set("Template changes an MSR entry not supported by KVM: Register "
                             "Address: %#x",
                             m->msr[i].index);
        uint64_t want = msr_modifier_apply(&m->msr[i], msrs.hdr.entries[0].data);
        msrs.hdr.entries[0].data = want;
        if (ioctl(vcpu->fd, KVM_SET_MSRS, &msrs) != 1)
            return error_set("KVM refused the template's value %#llx for MSR %#x",
                             (unsigned long long)want, m->msr[i].index);
    }
    return 0;
}

int vcpu_create(struct vcpu *vcpu, struct vm *vm, unsigned id)
{
    memset(vcpu, 0, sizeof(*vcpu));
    vcpu->vm = vm;
    vcpu->id = id;
    vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
    if (vcpu->fd < 0)
        return error_errno("KVM_CREATE_VCPU(%u)", id);
    void *run = mmap(NULL, vm->kvm.vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
    if (run == MAP_FAILED)
        return error_errno("mmap of vCPU %u state", id);
    vcpu->run = run;

    if (vm->cfg.restore_cpuid) {
        /* Restoring: the CPUID the guest saw; the registers and MSRs follow from the
         * snapshot (vmm/snapshot.c). */
        if (ioctl(vcpu->fd, KVM_SET_CPUID2, vm->cfg.restore_cpuid[id]) < 0)
            return error_errno("KVM_SET_CPUID2 on vCPU %u (from the snapshot)", id);
        return 0;
    }
    /* CPUID: KVM's supported set, filtered for this vCPU. */
    size_t bytes = sizeof(struct kvm_cpuid2) + vm->cpuid_capacity * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = malloc(bytes);
    if (!cpuid)
        return error_set("out of memory");
    memcpy(cpuid, vm->supported_cpuid,
           sizeof(struct kvm_cpuid2) + vm->supported_cpuid->nent * sizeof(struct kvm_cpuid_entry2));
    struct cpuid_params params = {
        .vcpu_id = id,
        .ncpus = vm->ncpus,
        .threads_per_core = vm->cfg.smt ? 2 : 1,
        .template = vm->cfg.cpu_template,
        .tsc_deadline = vm->kvm.tsc_deadline,
    };
    int r = cpuid_filter(cpuid, vm->cpuid_capacity, &params);
    if (r == 0 && ioctl(vcpu->fd, KVM_SET_CPUID2, cpuid) < 0)
        r = error_errno("KVM_SET_CPUID2 on vCPU %u", id);
    if (r == 0 && id == 0)
        check_template(vcpu, cpuid, vm->cpuid_capacity);
    free(cpuid);
    if (r < 0)
        return -1;
    if (apply_msr_modifiers(vcpu, cpu_template_modifiers(vm->cfg.cpu_template)) < 0 ||
        apply_msr_modifiers(vcpu, vm->cfg.custom_cpu) < 0)
        return -1;
    if (regs_setup_common(vcpu->fd) < 0)
        return -1;
    /* Only the bootstrap vCPU starts at the kernel; the others wait in KVM
     * for the guest's INIT/SIPI. */
    if (id == 0 && regs_setup_boot_vcpu(vcpu->fd, &vm->boot) < 0)
        return -1;
    return 0;
}

/* ---- reporting ------------------------------------------------------- */

static void code_bytes(struct vcpu *vcpu, uint64_t linear, char *out, size_t outlen)
{
    size_t pos = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < 16; i++) {
        struct kvm_translation tr = {.linear_address = linear + i};
        uint8_t *p = NULL;
        if (ioctl(vcpu->fd, KVM_TRANSLATE, &tr) == 0 && tr.valid)
            p = gpa_to_hva(&vcpu->vm->mem, tr.physical_address, 1);
        int n = p ? snprintf(out + pos, outlen - pos, "%s%02x", i ? " " : "", *p)
                  : snprintf(out + pos, outlen - pos, "%s??", i ? " " : "");
        if (n < 0 || (size_t)n >= outlen - pos)
            break;
        pos += (size_t)n;
    }
}

/* Prints what a user needs to understand a guest failure. */
static void report(struct vcpu *vcpu, const char *what, const char *detail)
{
    struct kvm_regs r;
    struct kvm_sregs s;
    fprintf(stderr, "ember: guest stopped on vCPU %u: %s\n", vcpu->id, what);
    if (detail && *detail)
        fprintf(stderr, "  %s\n", detail);
    if (ioctl(vcpu->fd, KVM_GET_REGS, &r) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &s) < 0) {
        fprintf(stderr, "  (registers unavailable: %s)\n", strerror(errno));
        return;
    }
    char code[16 * 3 + 1];
    code_bytes(vcpu, s.cs.base + r.rip, code, sizeof(code));
    const char *mode = (s.efer & 0x400) ? (s.cs.l ? "64-bit" : "compatibility")
                       : (s.cr0 & 1)    ? (s.cs.db ? "32-bit protected" : "16-bit protected")
                                        : "real";
    fprintf(stderr,
            "  mode %s, cpl %u\n"
            "  rip %016llx  rsp %016llx  rflags %016llx\n"
            "  rax %016llx  rbx %016llx  rcx %016llx  rdx %016llx\n"
            "  rsi %016llx  rdi %016llx  rbp %016llx\n"
            "  r8  %016llx  r9  %016llx  r10 %016llx  r11 %016llx\n"
            "  r12 %016llx  r13 %016llx  r14 %016llx  r15 %016llx\n"
            "  cr0 %016llx  cr2 %016llx  cr3 %016llx  cr4 %016llx  efer %llx\n"
            "  cs %04x base %llx  ss %04x  gdt %llx/%x  idt %llx/%x\n"
            "  code at rip: %s\n",
            mode, s.cs.selector & 3, (unsigned long long)r.rip, (unsigned long long)r.rsp,
            (unsigned long long)r.rflags, (unsigned long long)r.rax, (unsigned long long)r.rbx,
            (unsigned long long)r.rcx, (unsigned long long)r.rdx, (unsigned long long)r.rsi,
            (unsigned long long)r.rdi, (unsigned long long)r.rbp, (unsigned long long)r.r8,
            (unsigned long long)r.r9, (unsigned long long)r.r10, (unsigned long long)r.r11,
            (unsigned long long)r.r12, (unsigned long long)r.r13, (unsigned long long)r.r14,
            (unsigned long long)r.r15, (unsigned long long)s.cr0, (unsigned long long)s.cr2,
            (unsigned long long)s.cr3, (unsigned long long)s.cr4, (unsigned long long)s.efer,
            s.cs.selector, (unsigned long long)s.cs.base, s.ss.selector,
            (unsigned long long)s.gdt.base, s.gdt.limit, (unsigned long long)s.idt.base,
            s.idt.limit, code);
}

static const char *internal_suberror(uint32_t sub)
{
    switch (sub) {
    case KVM_INTERNAL_ERROR_EMULATION:
        return "instruction emulation failed";
    case KVM_INTERNAL_ERROR_SIMUL_EX:
        return "exception while delivering an exception";
    case KVM_INTERNAL_ERROR_DELIVERY_EV:
        return "exit while delivering an event";
    case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON:
        return "unexpected hardware exit reason";
    default:
        return "unknown";
    }
}

/* ---- exit handling --------------------------------------------------- */

static void handle_io(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    uint32_t size = run->io.size, count = run->io.count;
    uint64_t offset = run->io.data_offset;
    if ((size != 1 && size != 2 && size != 4) || offset >= vcpu->vm->kvm.vcpu_mmap_size ||
        (uint64_t)size * count > vcpu->vm->kvm.vcpu_mmap_size - offset) {
        log_error("vCPU %u: malformed port I/O exit (size %u count %u)", vcpu->id, size, count);
        return;
    }
    uint8_t *data = (uint8_t *)run + offset;
    bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
    for (uint32_t i = 0; i < count; i++, data += size) {
        if (!bus_dispatch(&vcpu->vm->pio, run->io.port, data, size, is_write)) {
            vcpu->unhandled_io++;
            log_debug("vCPU %u: unhandled port %s 0x%x (%u bytes)", vcpu->id,
                      is_write ? "write" : "read", run->io.port, size);
        }
    }
}

static void handle_mmio(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    uint32_t len = run->mmio.len;
    if (len == 0 || len > sizeof(run->mmio.data)) {
        log_error("vCPU %u: malformed MMIO exit (len %u)", vcpu->id, len);
        return;
    }
    if (!bus_dispatch(&vcpu->vm->mmio, run->mmio.phys_addr, run->mmio.data, len,
                      run->mmio.is_write)) {
        vcpu->unhandled_io++;
        log_debug("vCPU %u: unhandled MMIO %s 0x%llx (%u bytes)", vcpu->id,
                  run->mmio.is_write ? "write" : "read", (unsigned long long)run->mmio.phys_addr,
                  len);
    }
}

/* Records the time handling an exit of this kind took (from start). */
static void exit_done(struct vcpu *vcpu, enum vcpu_exit_kind kind, uint64_t start)
{
    latency_record(&vcpu->exit_times[kind], monotonic_ns() - start);
}

/* Returns true while the vCPU should keep running. */
static bool handle_exit(struct vcpu *vcpu)
{
    struct kvm_run *run = vcpu->run;
    struct vm *vm = vcpu->vm;
    char detail[256];
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        uint64_t start = monotonic_ns();
        bool out = run->io.direction == KVM_EXIT_IO_OUT;
        (*(out ? &vcpu->io_out_exits : &vcpu->io_in_exits))++;
        handle_io(vcpu);
        exit_done(vcpu, out ? VCPU_EXIT_IO_OUT : VCPU_EXIT_IO_IN, start);
        return true;
    }
    case KVM_EXIT_MMIO: {
        uint64_t start = monotonic_ns();
        bool write = run->mmio.is_write;
        (*(write ? &vcpu->mmio_write_exits : &vcpu->mmio_read_exits))++;
        handle_mmio(vcpu);
        exit_done(vcpu, write ? VCPU_EXIT_MMIO_WRITE : VCPU_EXIT_MMIO_READ, start);
        return true;
    }
    case KVM_EXIT_INTR:
        vcpu->intr_exits++;
        return true;
    case KVM_EXIT_HLT:
        vcpu->failures++;
        report(vcpu, "HLT (KVM_EXIT_HLT): halted with nothing to wake it", NULL);
        vm_request_stop(vm, EXIT_GUEST_HLT);
        return false;
    case KVM_EXIT_SHUTDOWN:
        vcpu->failures++;
        report(vcpu, "triple fault (KVM_EXIT_SHUTDOWN)",
               "an exception occurred while delivering a double fault; the machine would reset");
        vm_request_stop(vm, EXIT_GUEST_TRIPLE_FAULT);
        return false;
    case KVM_EXIT_SYSTEM_EVENT:
        switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
            log_info("guest powered off");
            vm_request_stop(vm, EXIT_OK);
            return false;
        case KVM_SYSTEM_EVENT_RESET:
            log_info("guest requested a reset");
            vm_request_stop(vm, EXIT_OK);
            return false;
        case KVM_SYSTEM_EVENT_CRASH:
            vcpu->failures++;
            report(vcpu, "guest crash (KVM_EXIT_SYSTEM_EVENT, crash)", NULL);
            vm_request_stop(vm, EXIT_GUEST_CRASH);
            return false;
        default:
            snprintf(detail, sizeof(detail), "system event type %u", run->system_event.type);
            vcpu->failures++;
            report(vcpu, "unexpected system event (KVM_EXIT_SYSTEM_EVENT)", detail);
            vm_request_stop(vm, EXIT_GUEST_UNEXPECTED);
            return false;
        }
    case KVM_EXIT_INTERNAL_ERROR: {
        int n = snprintf(detail, sizeof(detail), "suberror %u (%s)", run->internal.suberror,
                         internal_suberror(run->internal.suberror));
        uint32_t ndata = run->internal.ndata;
        if (ndata > sizeof(run->internal.data) / sizeof(run->internal.data[0]))
            ndata = sizeof(run->internal.data) / sizeof(run->internal.data[0]);
        for (uint32_t i = 0; i < ndata && n > 0 && (size_t)n < sizeof(detail); i++)
            n += snprintf(detail + n, sizeof(detail) - (size_t)n, "%s%llx", i ? " " : ", data ",
                          (unsigned long long)run->internal.data[i]);
        vcpu->failures++;
        report(vcpu, "KVM internal error (KVM_EXIT_INTERNAL_ERROR)", detail);
        vm_request_stop(vm, EXIT_GUEST_INTERNAL_ERROR);
        return false;
    }
    case KVM_EXIT_FAIL_ENTRY:
        snprintf(detail, sizeof(detail), "hardware entry failure reason 0x%llx on cpu %u",
                 (unsigned long long)run->fail_entry.hardware_entry_failure_reason,
                 run->fail_entry.cpu);
        vcpu->failures++;
        report(vcpu, "VM entry failed (KVM_EXIT_FAIL_ENTRY)", detail);
        vm_request_stop(vm, EXIT_GUEST_FAIL_ENTRY);
        return false;
    default:
        snprintf(detail, sizeof(detail), "exit reason %u", run->exit_reason);
        vcpu->failures++;
        report(vcpu, "unexpected exit from KVM_RUN", detail);
        vm_request_stop(vm, EXIT_GUEST_UNEXPECTED);
        return false;
    }
}

/* With a CPU placement, before the guest runs and before the filter goes on. KVM starts a worker
 * thread of its own in ember's process (huge page recovery) at the VM's first KVM_RUN, with the
 * CPUs of the thread that made that call: this thread makes a first KVM_RUN that returns at once
 * (immediate_exit: the guest does not run) while it is still on the reserved CPUs it got from
 * its creator, so that the worker stays off the vCPUs' CPUs; then it moves to its own CPU. */
static int enter_placement(struct vcpu *vcpu)
{
    const struct cpu_placement *p = &vcpu->vm->cfg.placement;
    if (!p->set)
        return 0;
    __atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    int r = ioctl(vcpu->fd, KVM_RUN, 0);
    int e = errno;
    /* A kick meanwhile is not lost: what it asks (stop, pause) is in the VM's state, which the
     * loop reads before it runs the guest. */
    __atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    if (r == 0 || (e != EINTR && e != EAGAIN)) {
        errno = e;
        return error_errno("vCPU %u: KVM_RUN with immediate_exit", vcpu->id);
    }
    return cpu_placement_pin_vcpu(p, vcpu->id);
}

static void *vcpu_main(void *arg)
{
    struct vcpu *vcpu = arg;
    struct vm *vm = vcpu->vm;
    char name[16];
    snprintf(name, sizeof(name), "vcpu%u", vcpu->id);
    /* Named by itself (prctl): naming another thread goes through /proc, which a jail lacks. */
    pthread_setname_np(pthread_self(), name);
    if (enter_placement(vcpu) < 0) {
        vcpu->failures++;
        fprintf(stderr, "ember: %s\n", error_get());
        vm_request_stop(vm, EXIT_HOST_ERROR);
        return NULL;
    }
    /* Before the first KVM_RUN: every exit after it is the guest's doing. */
    seccomp_enter(SECCOMP_VCPU, name);
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, KICK_SIGNAL);
    /* The serial port's output to a reader that went away raises SIGPIPE here: its handler
     * counts it (the metrics' signals.sigpipe) and the write fails with EPIPE. */
    sigaddset(&kick, SIGPIPE);
    pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
    /* A machine restored without resuming starts paused. */
    vm_vcpu_park(vm, vcpu);
    while (!vm_is_stopping(vm)) {
        if (ioctl(vcpu->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                /* Kicked: to stop, or to park while the VM is paused. Clear
                 * the kick first: one that lands after this is kept. */
                __atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
                vm_vcpu_park(vm, vcpu);
                continue;
            }
            vcpu->failures++;
            fprintf(stderr, "ember: KVM_RUN failed on vCPU %u: %s\n", vcpu->id, strerror(errno));
            vm_request_stop(vm, EXIT_HOST_ERROR);
            break;
        }
        vcpu->exits++;
        if (!handle_exit(vcpu))
            break;
    }
    return NULL;
}

int vcpu_start(struct vcpu *vcpu)
{
    int r = pthread_create(&vcpu->thread, NULL, vcpu_main, vcpu);
    if (r != 0) {
        errno = r;
        return error_errno("cannot start vCPU %u thread", vcpu->id);
    }
    vcpu->started = true;
    return 0;
}

void vcpu_kick(struct vcpu *vcpu)
{
    if (!vcpu->started)
        return;
    /* immediate_exit covers a kick that lands just before KVM_RUN. */
    __atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pthread_kill(vcpu->thread, KICK_SIGNAL);
}

void vcpu_join(struct vcpu *vcpu)
{
    if (vcpu->started)
        pthread_join(vcpu->thread, NULL);
    vcpu->started = false;
}

void vcpu_destroy(struct vcpu *vcpu)
{
    if (vcpu->run)
        munmap(vcpu->run, vcpu->vm->kvm.vcpu_mmap_size);
    if (vcpu->fd >= 0)
        close(vcpu->fd);
    vcpu->run = NULL;
    vcpu->fd = -1;
}
