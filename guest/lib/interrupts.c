/* IDT, exception reports and interrupt dispatch. */
#include "guest.h"
#include "io.h"

struct idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type; /* 0x8e: present interrupt gate, DPL0 */
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

#define GATE_INTERRUPT 0x8e
#define ISR_STUB_SIZE  16

extern const char isr_stubs[];
static struct idt_gate idt[256] __attribute__((aligned(16)));
static interrupt_handler handlers[256];
volatile uint64_t stray_interrupts;

static const char *const exception_names[32] = {"#DE divide error",
                                                "#DB debug",
                                                "NMI",
                                                "#BP breakpoint",
                                                "#OF overflow",
                                                "#BR bound range",
                                                "#UD invalid opcode",
                                                "#NM device not available",
                                                "#DF double fault",
                                                "coprocessor segment overrun",
                                                "#TS invalid TSS",
                                                "#NP segment not present",
                                                "#SS stack fault",
                                                "#GP general protection",
                                                "#PF page fault",
                                                "reserved",
                                                "#MF x87 error",
                                                "#AC alignment check",
                                                "#MC machine check",
                                                "#XM SIMD error",
                                                "#VE virtualization",
                                                "#CP control protection"};

void idt_load(void)
{
    struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } pointer = {sizeof(idt) - 1, (uint64_t)idt};
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

static void set_gate(unsigned v)
{
    uint64_t addr = (uint64_t)isr_stubs + v * ISR_STUB_SIZE;
    idt[v] = (struct idt_gate){
        .offset_low = (uint16_t)addr,
        .selector = SEL_CODE64,
        .type = GATE_INTERRUPT,
        .offset_mid = (uint16_t)(addr >> 16),
        .offset_high = (uint32_t)(addr >> 32),
    };
}

/* Gates for the exceptions, the PIC's vectors (which may fire spuriously
 * once remapped) and the spurious vector; the rest as handlers are set.
 * Every gate costs emulated instructions at boot on the test hosts. */
void idt_init(void)
{
    for (unsigned v = 0; v < 32; v++)
        set_gate(v);
    for (unsigned v = VECTOR_PIC_BASE; v < VECTOR_PIC_BASE + 16; v++)
        set_gate(v);
    set_gate(VECTOR_SPURIOUS);
    idt_load();
}

void interrupt_set_handler(uint8_t vector, interrupt_handler handler)
{
    handlers[vector] = handler;
    set_gate(vector);
}

_Noreturn void exception_report(const struct interrupt_frame *f)
{
    const char *name =
        f->vector < 32 && exception_names[f->vector] ? exception_names[f->vector] : "exception";
    printf("# exception %lu (%s) on CPU with APIC id %u\n", f->vector, name, lapic_id());
    printf("#   rip=0x%lx cs=0x%lx rflags=0x%lx error=0x%lx cr2=0x%lx\n", f->rip, f->cs, f->rflags,
           f->error_code, read_cr2());
    printf("#   rsp=0x%lx rax=0x%lx rbx=0x%lx rcx=0x%lx rdx=0x%lx\n", f->rsp, f->rax, f->rbx,
           f->rcx, f->rdx);
    printf("#   rsi=0x%lx rdi=0x%lx rbp=0x%lx\n", f->rsi, f->rdi, f->rbp);
    bail_out("unexpected exception %lu (%s) at rip=0x%lx", f->vector, name, f->rip);
}

void interrupt_dispatch(struct interrupt_frame *frame);

void interrupt_dispatch(struct interrupt_frame *frame)
{
    uint8_t vector = (uint8_t)frame->vector;
    if (handlers[vector]) {
        handlers[vector](frame);
        return;
    }
    if (vector < 32)
        exception_report(frame);
    if (vector == VECTOR_SPURIOUS)
        return;
    /* A late tick of a timer that was just stopped, for instance: count it, acknowledge it. */
    stray_interrupts++;
    if (vector >= VECTOR_PIC_BASE && vector < VECTOR_PIC_BASE + 16)
        pic_eoi(vector - VECTOR_PIC_BASE);
    else
        lapic_eoi();
}
