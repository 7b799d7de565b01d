/* CPL3 support: a TSS for the stack switch on the way back, and the exit through #UD. */
#include "guest.h"

struct __attribute__((packed)) tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
};

struct tss64 tss __attribute__((aligned(16)));
extern uint64_t gdt[];
extern const char user_exit_point[];
_Noreturn void user_return(uint64_t result);

#define VECTOR_INVALID_OPCODE 6

static void invalid_opcode(struct interrupt_frame *frame)
{
    if ((frame->cs & 3) == 3 && frame->rip == (uint64_t)user_exit_point)
        user_return(frame->rdi);
    exception_report(frame);
}

void user_mode_init(void)
{
    static bool done;
    if (done)
        return; /* ltr faults on a TSS already marked busy */
    done = true;
    uint64_t base = (uint64_t)&tss;
    uint64_t limit = sizeof(tss) - 1;
    tss.iomap_base = sizeof(tss); /* no I/O bitmap: CPL3 port access faults */
    /* 64-bit available TSS descriptor (type 9, present) in GDT slots 6 and 7. */
    gdt[SEL_TSS / 8] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89ull << 40 |
                       ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
    gdt[SEL_TSS / 8 + 1] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
    interrupt_set_handler(VECTOR_INVALID_OPCODE, invalid_opcode);
}
