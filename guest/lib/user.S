/*
 * run_user(fn, arg): calls fn(arg) at CPL3 and returns its result. User code comes back through
 * a ud2 at user_exit_point: on the nested hosts ember is tested on, syscall and int $n from
 * CPL3 do not reach the guest kernel (int $n raises #UD), but exceptions do.
 */
#include "layout.h"

    .text
    .code64
    .globl run_user, user_return, user_exit_point
run_user:
    pushfq
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, user_saved_rsp(%rip)
    movq %rsp, tss + 4(%rip)    /* rsp0: interrupts from CPL3 land below the saved state */
    pushq $SEL_USER_DATA
    pushq $(user_stack + 16384)
    pushq $0x2                  /* RFLAGS: interrupts off, IOPL 0 */
    pushq $SEL_USER_CODE64
    pushq $user_entry
    movq %rdi, %rax
    movq %rsi, %rdi
    iretq

user_entry:
    call *%rax
    movq %rax, %rdi
user_exit_point:
    ud2

/* Called from the #UD handler with the result in %rdi: drop the interrupt frame. */
user_return:
    movq user_saved_rsp(%rip), %rsp
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq %rdi, %rax
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    popfq
    ret

    .bss
    .balign 8
user_saved_rsp:
    .quad 0

    .section .stacks, "aw", @nobits
    .balign 16
user_stack:
    .skip 16384
