/*
 * Entry points. Both boot protocols end in guest_start(protocol, info) on the BSP stack,
 * running in long mode on the static identity map below (4 GiB in 2 MiB pages):
 *   pvh_entry32    PVH: 32-bit protected mode, paging off, EBX = struct hvm_start_info.
 *   linux64_entry  Linux 64-bit boot protocol (ELF e_entry): long mode, RSI = boot_params.
 * APs arrive through the real-mode trampoline at ap_entry32 and end in ap_main().
 */
#include "layout.h"

    .section .text.boot, "ax"

    .code32
    .globl pvh_entry32
pvh_entry32:
    cli
    cld
    movl %ebx, %esi
    movl $BOOT_PROTOCOL_PVH, %edi
    lgdt gdt_pointer
    movl $pvh_far, %ebp
    jmp enter_long_mode

    .globl ap_entry32
ap_entry32:
    movl $ap_far, %ebp
    /* fall through */

/* Turns on PAE paging with our tables and long mode, then jumps through the far pointer at
 * %ebp. No stack is used: PVH promises none and APs share this path. */
enter_long_mode:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0
    ljmpl *(%ebp)

pvh_far:
    .long pvh_entry64
    .word SEL_CODE64
ap_far:
    .long ap_entry64
    .word SEL_CODE64

    .code64
pvh_entry64:
    /* Upper halves of registers are undefined after the mode switch. */
    movl %edi, %edi
    movl %esi, %esi
    jmp bsp_start64

    .globl linux64_entry
linux64_entry:
    cli
    cld
    movl $BOOT_PROTOCOL_LINUX64, %edi
    /* The protocol promises no stack; the far return below needs one. */
    movq $(bsp_stack + BSP_STACK_SIZE), %rsp
    /* Leave the VMM's GDT and page tables: both may live in memory we reuse. */
    lgdt gdt_pointer(%rip)
    movq $pml4, %rax
    movq %rax, %cr3
    pushq $SEL_CODE64
    leaq bsp_start64(%rip), %rax
    pushq %rax
    lretq

bsp_start64:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movq $(bsp_stack + BSP_STACK_SIZE), %rsp
    /* .bss is the tail of a PT_LOAD segment (p_memsz > p_filesz), which an
     * ELF loader zero-fills: not cleared again here, where every emulated
     * iteration would cost boot time. */
    call guest_start
    ud2

ap_entry64:
    movl $SEL_DATA, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq ap_stack_top(%rip), %rsp
    call ap_main
    ud2

/*
 * Real-mode code for the APs, copied to AP_TRAMPOLINE_ADDR by the BSP (SIPI vector 0x08).
 * It only enters protected mode and jumps to ap_entry32 in the image above 1 MiB.
 */
    .section .rodata.trampoline, "a"
    .code16
    .globl ap_trampoline_start, ap_trampoline_end
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl ap_gdt_pointer - ap_trampoline_start
    movl %cr0, %eax
    orl $CR0_PE, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
ap_gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:

    .section .data.boot, "aw"
    .code64
    .balign 16
    .globl gdt, gdt_end, gdt_pointer
gdt:
    .quad 0
    .quad 0x00af9a000000ffff /* 0x08 code, 64-bit, DPL0 */
    .quad 0x00cf92000000ffff /* 0x10 data, DPL0 */
    .quad 0x00cf9a000000ffff /* 0x18 code, 32-bit, DPL0 (AP start) */
    .quad 0x00cff2000000ffff /* 0x20 data, DPL3 */
    .quad 0x00affa000000ffff /* 0x28 code, 64-bit, DPL3 */
    .quad 0, 0               /* 0x30 TSS, filled in by user_mode_init() */
gdt_end:

    .balign 8
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .globl ap_stack_top
ap_stack_top:
    .quad 0

/* Identity map of the first 4 GiB; the top 32 MiB (APIC, IOAPIC, firmware) is uncached. */
    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + PTE_FLAGS
    .fill 511, 8, 0
pdpt:
    .quad pd + PTE_FLAGS
    .quad pd + 0x1000 + PTE_FLAGS
    .quad pd + 0x2000 + PTE_FLAGS
    .quad pd + 0x3000 + PTE_FLAGS
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 2048
    .if page >= 0x7f0
    .quad (page << 21) | 0x80 | 0x18 | PTE_FLAGS /* 2 MiB page, PCD|PWT */
    .else
    .quad (page << 21) | 0x80 | PTE_FLAGS
    .endif
    .set page, page + 1
    .endr

    .section .stacks, "aw", @nobits
    .balign 16
    .globl bsp_stack, ap_stacks
bsp_stack:
    .skip BSP_STACK_SIZE
ap_stacks:
    .skip AP_STACK_SIZE * MAX_CPUS
