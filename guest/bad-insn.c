/*
 * Executes popcnt at CPL0. On ember's nested test hosts the CPL0 instruction emulator cannot
 * run it and KVM_RUN fails with KVM_EXIT_INTERNAL_ERROR (emulation failure), which the VMM
 * must report. On a host with hardware virtualization it simply runs: then this guest says so
 * and fails, because the VMM path under test was not reached.
 */
#include "guest.h"

__attribute__((noinline)) uint64_t deliberately_emulator_unsupported(uint64_t value);

__attribute__((noinline)) uint64_t deliberately_emulator_unsupported(uint64_t value)
{
    uint64_t bits;
    __asm__ volatile("popcnt %1, %0" : "=r"(bits) : "r"(value));
    return bits;
}

void guest_main(void)
{
    printf("1..1\n");
    diag("executing popcnt at CPL0: expect KVM_EXIT_INTERNAL_ERROR");
    uint64_t bits = deliberately_emulator_unsupported(0xf0f0);
    printf("not ok 1 - popcnt at CPL0 ran (result %lu) instead of stopping the VM\n", bits);
    debug_exit(1);
}
