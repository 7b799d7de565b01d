/*
 * Starts the other vCPUs with INIT-SIPI-SIPI, one at a time: each AP gets the one shared
 * boot stack pointer and reports its APIC id before the next is started.
 */
#include "guest.h"
#include "io.h"

#define ICR_INIT             0x500
#define ICR_STARTUP          0x600
#define ICR_LEVEL_ASSERT     0x4000
#define ICR_LEVEL_TRIG       0x8000
#define AP_REPORT_TIMEOUT_US 2000000

extern const char ap_trampoline_start[], ap_trampoline_end[];
extern char ap_stacks[];
extern uint64_t ap_stack_top;
_Noreturn void ap_main(void);

static volatile int ap_reported_id = -1;

void (*smp_ap_continue)(void);

_Noreturn void ap_main(void)
{
    idt_load();
    lapic_enable();
    void (*next)(void) = __atomic_load_n(&smp_ap_continue, __ATOMIC_ACQUIRE);
    __atomic_store_n(&ap_reported_id, lapic_id(), __ATOMIC_RELEASE);
    if (next)
        next();
    halt_forever();
}

static bool trampoline_page_is_ram(void)
{
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type == MEMORY_RAM && r->base <= AP_TRAMPOLINE_ADDR &&
            r->base + r->size >= AP_TRAMPOLINE_ADDR + 0x1000)
            return true;
    }
    return false;
}

static bool wait_for_report(uint64_t timeout_us)
{
    uint64_t end = time_us() + timeout_us;
    while (__atomic_load_n(&ap_reported_id, __ATOMIC_ACQUIRE) < 0) {
        if (time_us() > end)
            return false;
        cpu_relax();
    }
    return true;
}

bool smp_start_cpus(struct smp_result *result)
{
    *result = (struct smp_result){0};
    if (!trampoline_page_is_ram()) {
        diag("SMP: page 0x%x for the AP trampoline is not RAM in the memory map",
             AP_TRAMPOLINE_ADDR);
        return false;
    }
    memcpy((void *)AP_TRAMPOLINE_ADDR, ap_trampoline_start,
           (size_t)(ap_trampoline_end - ap_trampoline_start));
    lapic_enable();
    uint8_t self = lapic_id();
    bool ok = true;
    for (unsigned i = 0; i < platform.cpu_count; i++) {
        uint8_t apic_id = platform.cpu_apic_ids[i];
        if (apic_id == self) {
            result->reported[i] = true;
            result->reported_apic_id[i] = self;
            result->started++;
            continue;
        }
        ap_stack_top = (uint64_t)(ap_stacks + (i + 1) * AP_STACK_SIZE);
        __atomic_store_n(&ap_reported_id, -1, __ATOMIC_RELEASE);
        uint64_t start = time_us();
        bool sent = lapic_send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT | ICR_LEVEL_TRIG);
        udelay(10000);
        sent &= lapic_send_ipi(apic_id, ICR_INIT | ICR_LEVEL_TRIG); /* de-assert */
        uint32_t sipi = ICR_STARTUP | (AP_TRAMPOLINE_ADDR >> 12);
        sent &= lapic_send_ipi(apic_id, sipi);
        /* The second SIPI only if the first was lost, as the MP spec allows. */
        if (!wait_for_report(200))
            sent &= lapic_send_ipi(apic_id, sipi);
        if (!sent)
            diag("SMP: IPI to APIC id %u never left the ICR", apic_id);
        if (wait_for_report(AP_REPORT_TIMEOUT_US)) {
            result->reported[i] = true;
            result->reported_apic_id[i] = (uint8_t)ap_reported_id;
            result->start_us[i] = time_us() - start;
            result->started++;
        } else {
            diag("SMP: APIC id %u did not report within %u ms", apic_id,
                 AP_REPORT_TIMEOUT_US / 1000);
            ok = false;
        }
    }
    return ok;
}
