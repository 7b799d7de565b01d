#include "arch/x86/regs.h"

#include "arch/x86/layout.h"
#include "util/error.h"

#include <string.h>
#include <sys/ioctl.h>

#define CR0_PE   0x1ULL
#define CR0_ET   0x10ULL
#define CR0_PG   0x80000000ULL
#define CR4_PAE  0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

/* KVM's view of the GDT descriptor at selector sel. */
static struct kvm_segment segment_from_gdt(uint64_t desc, uint16_t sel)
{
    return (struct kvm_segment){
        .base = (uint32_t)(((desc >> 16) & 0xffffff) | ((desc >> 32) & 0xff000000)),
        .limit = (uint32_t)((desc & 0xffff) | ((desc >> 32) & 0xf0000)),
        .selector = sel,
        .type = (desc >> 40) & 0xf,
        .present = (desc >> 47) & 1,
        .dpl = (desc >> 45) & 3,
        .db = (desc >> 54) & 1,
        .s = (desc >> 44) & 1,
        .l = (desc >> 53) & 1,
        .g = (desc >> 55) & 1,
    };
}

static void scale_limit(struct kvm_segment *s)
{
    /* KVM wants the limit in bytes. */
    if (s->g)
        s->limit = (s->limit << 12) | 0xfff;
}

void regs_for_boot(const struct boot_entry *e, struct kvm_regs *regs, struct kvm_sregs *sregs)
{
    bool long_mode = e->protocol == BOOT_LINUX64;
    uint64_t code = long_mode ? gdt_entry(0xa09b, 0, 0xfffff) : gdt_entry(0xc09b, 0, 0xfffff);
    uint64_t data = gdt_entry(0xc093, 0, 0xfffff);
    uint64_t tss = gdt_entry(0x008b, 0, 0x67);

    struct kvm_segment cs = segment_from_gdt(code, LAYOUT_GDT_CODE_SEL);
    struct kvm_segment ds = segment_from_gdt(data, LAYOUT_GDT_DATA_SEL);
    struct kvm_segment tr = segment_from_gdt(tss, LAYOUT_GDT_TSS_SEL);
    scale_limit(&cs);
    scale_limit(&ds);
    scale_limit(&tr);

    sregs->cs = cs;
    sregs->ds = sregs->es = sregs->fs = sregs->gs = sregs->ss = ds;
    sregs->tr = tr;
    sregs->gdt.base = LAYOUT_GDT;
    sregs->gdt.limit = 5 * 8 - 1;
    sregs->idt.base = 0;
    sregs->idt.limit = 0;
    sregs->cr0 = CR0_PE | CR0_ET;
    sregs->cr4 = 0;
    sregs->efer = 0;
    if (long_mode) {
        sregs->cr0 |= CR0_PG;
        sregs->cr3 = LAYOUT_PML4;
        sregs->cr4 = CR4_PAE;
        sregs->efer = EFER_LME | EFER_LMA;
    }

    memset(regs, 0, sizeof(*regs));
    regs->rflags = 0x2; /* reserved bit; interrupts off */
    regs->rip = e->entry;
    if (long_mode)
        regs->rsi = e->info_gpa;
    else
        regs->rbx = e->info_gpa;
}

int regs_setup_boot_vcpu(int vcpu_fd, const struct boot_entry *e)
{
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
        return error_errno("KVM_GET_SREGS");
    regs_for_boot(e, &regs, &sregs);
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
        return error_errno("KVM_SET_SREGS");
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0)
        return error_errno("KVM_SET_REGS");
    return 0;
}

#define APIC_LVT_LINT0   0x350
#define APIC_LVT_LINT1   0x360
#define APIC_MODE_NMI    0x4
#define APIC_MODE_EXTINT 0x7

static void set_lvt_mode(struct kvm_lapic_state *lapic, unsigned reg, unsigned mode)
{
    uint32_t v;
    memcpy(&v, &lapic->regs[reg], 4);
    v = (v & ~0x700u) | (mode << 8);
    memcpy(&lapic->regs[reg], &v, 4);
}

int regs_setup_common(int vcpu_fd)
{
    struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
    if (ioctl(vcpu_fd, KVM_SET_FPU, &fpu) < 0)
        return error_errno("KVM_SET_FPU");
    struct kvm_lapic_state lapic;
    if (ioctl(vcpu_fd, KVM_GET_LAPIC, &lapic) < 0)
        return error_errno("KVM_GET_LAPIC");
    set_lvt_mode(&lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    if (ioctl(vcpu_fd, KVM_SET_LAPIC, &lapic) < 0)
        return error_errno("KVM_SET_LAPIC");
    return 0;
}
