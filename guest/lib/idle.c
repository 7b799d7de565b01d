/*
 * idle_ms=N on the command line: before a guest exits it halts for N ms, woken only by a LAPIC
 * timer every 100 ms, so that whoever watches the VMM can see what its threads do while the
 * guest and its devices are idle (bench/hostile.sh checks that none of them spins).
 */
#include "guest.h"
#include "io.h"

#define IDLE_TICK_COUNT 100000000u /* LAPIC timer counts: 100 ms at KVM's 1 GHz APIC bus */

static void idle_tick(struct interrupt_frame *frame)
{
    (void)frame;
    lapic_eoi();
}

void guest_idle(uint64_t ms)
{
    lapic_enable();
    interrupt_set_handler(VECTOR_LAPIC_TIMER, idle_tick);
    lapic_write(LAPIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
    lapic_write(LAPIC_LVT_TIMER, VECTOR_LAPIC_TIMER);
    diag("idle: halting for %lu ms", ms);
    uint64_t start = time_us();
    while (time_us() - start < ms * 1000) {
        lapic_write(LAPIC_TIMER_INITIAL, IDLE_TICK_COUNT);
        /* sti takes effect after hlt: no tick slips in between and is lost. */
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    }
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    diag("idle: done after %lu ms", (time_us() - start) / 1000);
}

void guest_idle_if_asked(void)
{
    uint64_t ms;
    if (cmdline_get_u64("idle_ms", &ms) && ms)
        guest_idle(ms);
}
