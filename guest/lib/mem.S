/*
 * memcpy/memset/memcmp for the compiler and the runtime. The string instructions cost one
 * emulated step per element at CPL0 here, fewer than any loop, so move 8 bytes a step.
 */
    .text
    .code64
    .globl memcpy, memset, memmove, memcmp
memcpy:
    movq %rdi, %rax
    movq %rdx, %rcx
    shrq $3, %rcx
    rep movsq
    movq %rdx, %rcx
    andq $7, %rcx
    rep movsb
    ret

memmove:
    cmpq %rsi, %rdi
    jbe memcpy
    /* Overlapping with dst above src: copy backwards, bytewise (rare and small). */
    movq %rdi, %rax
    leaq -1(%rdi, %rdx), %rdi
    leaq -1(%rsi, %rdx), %rsi
    movq %rdx, %rcx
    std
    rep movsb
    cld
    ret

memset:
    movq %rdi, %r9
    movzbl %sil, %eax
    movabsq $0x0101010101010101, %r8
    imulq %r8, %rax
    movq %rdx, %rcx
    shrq $3, %rcx
    rep stosq
    movq %rdx, %rcx
    andq $7, %rcx
    rep stosb
    movq %r9, %rax
    ret

memcmp:
    xorl %eax, %eax
1:  testq %rdx, %rdx
    jz 2f
    movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    subl %ecx, %eax
    jnz 2f
    incq %rdi
    incq %rsi
    decq %rdx
    jmp 1b
2:  ret
