/*
 * Triple faults on purpose: with an empty IDT, #UD cannot be delivered, nor the #DF that
 * follows, so the CPU shuts down. The VMM must report the shutdown (KVM_EXIT_SHUTDOWN).
 */
#include "guest.h"

void guest_main(void)
{
    printf("1..1\n");
    diag("loading an empty IDT and executing ud2: expect a triple fault (SHUTDOWN)");
    struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } empty = {0, 0};
    __asm__ volatile("lidt %0; ud2" : : "m"(empty));
    printf("not ok 1 - the triple fault did not end the VM\n");
    debug_exit(1);
}
