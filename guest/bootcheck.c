/*
 * Checks what the VMM sets up for a guest at boot. Expected values come from the command line
 * (tests/guest/run.sh puts them there); a check whose key is absent is skipped:
 *   expect_mem_mib=N       the memory map describes exactly N MiB of RAM
 *   cmdline_sum=0xH        FNV-1a of the command line bytes before " cmdline_sum="
 *   initrd_size=N initrd_sum=0xH   the initrd (word_hash32)
 *   expect_cpus=N          N vCPUs are listed (MP table, else MADT) and all start
 *   expect_epoch=S         the CMOS RTC reads within [S - 60, S + 300]
 */
#include "guest.h"
#include "io.h"

#define RTC_EARLY_SLACK_S 60
#define RTC_LATE_SLACK_S  300
#define TIMER_HZ          1000
#define TIMER_MIN_TICKS   20
#define TIMER_TIMEOUT_US  2000000
#define LOW_MMIO_START    0xfec00000ull /* IOAPIC; LAPIC at 0xfee00000 */

static enum test_result check_boot_info(void)
{
    diag("boot protocol: %s%s", boot_info.protocol_name,
         boot_info.protocol == BOOT_PROTOCOL_PVH ? "" : " (boot_params)");
    if (boot_info.protocol == BOOT_PROTOCOL_PVH)
        diag("hvm_start_info version %u", boot_info.pvh_version);
    diag("command line (%zu bytes): %s", boot_info.cmdline_len, boot_info.cmdline);
    diag("initrd: 0x%lx, %lu bytes; RSDP from the VMM: 0x%lx", boot_info.initrd_base,
         boot_info.initrd_size, boot_info.rsdp);
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        diag("memory [0x%010lx-0x%010lx) type %u", r->base, r->base + r->size, r->type);
    }
    if (boot_info.empty_memory_entries)
        diag("%u memory map entries of size 0 ignored", boot_info.empty_memory_entries);
    if (boot_info.memory_from_firmware)
        diag("no memory map from the VMM: read the RAM size from the CMOS");
    if (!boot_info.memory_count) {
        diag("the memory map is empty");
        return TEST_FAIL;
    }
    if (boot_info.cmdline_truncated) {
        diag("command line longer than %d bytes", MAX_CMDLINE - 1);
        return TEST_FAIL;
    }
    return TEST_PASS;
}

/* Bytes of [base, end) covered by regions of type RAM. */
static uint64_t ram_in(uint64_t base, uint64_t end)
{
    uint64_t total = 0;
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        uint64_t lo = r->base > base ? r->base : base;
        uint64_t hi = r->base + r->size < end ? r->base + r->size : end;
        if (r->type == MEMORY_RAM && hi > lo)
            total += hi - lo;
    }
    return total;
}

static bool regions_overlap(void)
{
    bool overlap = false;
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        for (size_t j = i + 1; j < boot_info.memory_count; j++) {
            const struct memory_region *a = &boot_info.memory[i], *b = &boot_info.memory[j];
            if (a->base < b->base + b->size && b->base < a->base + a->size) {
                diag("memory map entries %zu and %zu overlap", i, j);
                overlap = true;
            }
        }
    }
    return overlap;
}

static enum test_result check_memory_map(void)
{
    uint64_t mib;
    if (!cmdline_get_u64("expect_mem_mib", &mib))
        return skip("no expect_mem_mib= on the command line");
    uint64_t size = mib * MIB;
    bool ok = !regions_overlap();
    /* RAM from 1 MiB up to the 32-bit MMIO hole, the rest from 4 GiB. */
    uint64_t below_hole = ram_in(MIB, 4 * GIB) + MIB;
    uint64_t above_4g = ram_in(4 * GIB, ~0ull);
    diag("RAM: %lu KiB below 1 MiB, %lu MiB from 1 MiB to 4 GiB, %lu MiB above 4 GiB",
         ram_in(0, MIB) / 1024, (below_hole - MIB) / MIB, above_4g / MIB);
    if (ram_in(MIB, below_hole) != below_hole - MIB) {
        diag("RAM from 1 MiB is not contiguous up to 0x%lx", below_hole);
        ok = false;
    }
    if (ram_in(4 * GIB, 4 * GIB + above_4g) != above_4g) {
        diag("RAM above 4 GiB is not contiguous from 4 GiB");
        ok = false;
    }
    if (below_hole + above_4g != size) {
        diag("RAM adds up to %lu MiB, expected %lu MiB (counting the first MiB as RAM)",
             (below_hole + above_4g) / MIB, mib);
        ok = false;
    }
    if (size <= 3 * GIB && below_hole != size) {
        diag("%lu MiB of RAM fits below 3 GiB but is split at 0x%lx", mib, below_hole);
        ok = false;
    }
    if (below_hole > LOW_MMIO_START) {
        diag("RAM reaches into the IOAPIC/LAPIC range: ends at 0x%lx", below_hole);
        ok = false;
    }
    if (ram_in(0, 0xa0000) < 512 * 1024) {
        diag("less than 512 KiB of RAM below 640 KiB");
        ok = false;
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_cmdline(void)
{
    static const char marker[] = " cmdline_sum=";
    const char *cmdline = boot_info.cmdline;
    const char *found = NULL;
    for (const char *p = cmdline; *p; p++) {
        if (!strncmp(p, marker, sizeof(marker) - 1))
            found = p;
    }
    if (!found)
        return skip("no cmdline_sum= on the command line");
    uint64_t expected;
    if (!cmdline_get_u64("cmdline_sum", &expected)) {
        diag("cmdline_sum= is not a number");
        return TEST_FAIL;
    }
    size_t len = (size_t)(found - cmdline);
    uint32_t sum = fnv1a32(cmdline, len);
    diag("FNV-1a of the first %zu bytes: 0x%08x, expected 0x%08lx", len, sum, expected);
    return sum == expected ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_initrd(void)
{
    uint64_t size, expected;
    if (!cmdline_get_u64("initrd_size", &size) || !cmdline_get_u64("initrd_sum", &expected))
        return skip("no initrd_size= and initrd_sum= on the command line");
    if (boot_info.initrd_size != size) {
        diag("initrd is %lu bytes, expected %lu", boot_info.initrd_size, size);
        return TEST_FAIL;
    }
    uint64_t base = boot_info.initrd_base;
    if (!base || base + size > 4 * GIB || ram_in(base, base + size) != size) {
        diag("initrd [0x%lx, 0x%lx) is not all RAM below 4 GiB", base, base + size);
        return TEST_FAIL;
    }
    uint64_t start = time_us();
    uint32_t sum = word_hash32((const void *)base, size);
    diag("initrd at 0x%lx: hash 0x%08x, expected 0x%08lx (%lu us)", base, sum, expected,
         time_us() - start);
    return sum == expected ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_cpus(void)
{
    uint64_t expected;
    if (!cmdline_get_u64("expect_cpus", &expected))
        return skip("no expect_cpus= on the command line");
    platform_discover();
    diag("MP floating pointer: %s (0x%lx); ACPI RSDP: %s (0x%lx)",
         platform.mp_found ? "found" : "none", platform.mp_addr,
         platform.acpi_found ? "found" : "none", platform.rsdp_addr);
    if (!platform.source) {
        diag("no CPU list: neither a usable MP table nor an ACPI MADT");
        return TEST_FAIL;
    }
    diag("CPUs from the %s at 0x%lx: %u listed", platform.source, platform.table_addr,
         platform.cpu_count);
    if (platform.cpu_count != expected || platform.cpus_ignored) {
        diag("expected %lu CPUs", expected);
        return TEST_FAIL;
    }
    lapic_enable();
    if (platform.bsp_index >= 0 && platform.cpu_apic_ids[platform.bsp_index] != lapic_id()) {
        diag("the table marks APIC id %u as BSP, but the BSP has APIC id %u",
             platform.cpu_apic_ids[platform.bsp_index], lapic_id());
        return TEST_FAIL;
    }
    struct smp_result result;
    bool ok = smp_start_cpus(&result);
    for (unsigned i = 0; i < platform.cpu_count; i++) {
        uint8_t id = platform.cpu_apic_ids[i];
        if (!result.reported[i])
            continue;
        if (id == lapic_id())
            diag("CPU %u: APIC id %u is the BSP", i, id);
        else
            diag("CPU %u: APIC id %u started, reported APIC id %u after %lu us", i, id,
                 result.reported_apic_id[i], result.start_us[i]);
        if (result.reported_apic_id[i] != id)
            ok = false;
    }
    return ok && result.started == expected ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_rtc(void)
{
    uint64_t expected;
    if (!cmdline_get_u64("expect_epoch", &expected))
        return skip("no expect_epoch= on the command line");
    struct rtc_time t;
    char error[96];
    if (!rtc_read(&t, error, sizeof(error))) {
        diag("RTC: %s", error);
        return TEST_FAIL;
    }
    uint64_t epoch = rtc_to_epoch(&t);
    diag("RTC: %04u-%02u-%02u %02u:%02u:%02u (%s, %s, century register %s), %ld s from "
         "expect_epoch",
         t.year, t.month, t.day, t.hour, t.minute, t.second, (t.status_b & 0x04) ? "binary" : "BCD",
         (t.status_b & 0x02) ? "24-hour" : "12-hour", t.century_register_used ? "used" : "not set",
         (long)(epoch - expected));
    return epoch + RTC_EARLY_SLACK_S >= expected && epoch <= expected + RTC_LATE_SLACK_S
               ? TEST_PASS
               : TEST_FAIL;
}

static volatile uint64_t ticks;

static void count_lapic_tick(struct interrupt_frame *frame)
{
    (void)frame;
    ticks++;
    lapic_eoi();
}

static void count_pic_tick(struct interrupt_frame *frame)
{
    (void)frame;
    ticks++;
    pic_eoi(0);
}

/* Counts ticks with interrupts on until enough arrived or time ran out. */
static bool wait_for_ticks(const char *what, unsigned nominal_hz)
{
    ticks = 0;
    uint64_t start = time_us(), now = start;
    irq_enable();
    while (READ_ONCE(ticks) < TIMER_MIN_TICKS && (now = time_us()) - start < TIMER_TIMEOUT_US)
        cpu_relax();
    irq_disable();
    uint64_t elapsed = time_us() - start;
    uint64_t count = ticks;
    diag("%s: %lu interrupts in %lu us (%lu Hz, programmed %u Hz)", what, count, elapsed,
         elapsed ? count * 1000000 / elapsed : 0, nominal_hz);
    return count >= TIMER_MIN_TICKS;
}

static enum test_result check_pit_ioapic(void)
{
    platform_discover();
    unsigned pin = 2;
    bool active_low = false, level = false;
    if (platform.isa_irq_listed[0]) {
        pin = platform.isa_irq[0].gsi;
        active_low = platform.isa_irq[0].active_low;
        level = platform.isa_irq[0].level;
    }
    diag("ISA IRQ 0 -> IOAPIC pin %u (%s%s)", pin,
         platform.isa_irq_listed[0] ? "from the " : "assumed, no table says",
         platform.isa_irq_listed[0] ? platform.source : "");
    if (pin >= ioapic_pin_count()) {
        diag("the IOAPIC has only %u pins", ioapic_pin_count());
        return TEST_FAIL;
    }
    lapic_enable();
    pic_mask_all();
    ioapic_mask_all();
    interrupt_set_handler(VECTOR_IOAPIC_TIMER, count_lapic_tick);
    ioapic_route(pin, VECTOR_IOAPIC_TIMER, lapic_id(), level, active_low);
    pit_start_periodic(TIMER_HZ);
    bool ok = wait_for_ticks("PIT via IOAPIC", TIMER_HZ);
    pit_stop();
    ioapic_mask(pin);
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_pit_pic(void)
{
    lapic_enable();
    ioapic_mask_all();
    lapic_write(LAPIC_LVT_LINT0, LVT_EXTINT); /* virtual wire: the PIC reaches the BSP */
    pic_init();
    interrupt_set_handler(VECTOR_PIC_BASE + 0, count_pic_tick);
    pic_set_mask(0, false);
    pit_start_periodic(TIMER_HZ);
    bool ok = wait_for_ticks("PIT via PIC", TIMER_HZ);
    pit_stop();
    pic_mask_all();
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_lapic_timer(void)
{
    lapic_enable();
    /* Measure the timer clock first: its frequency is the VMM's choice. */
    lapic_write(LAPIC_TIMER_DIVIDE, 0x3); /* divide by 16 */
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_TIMER_INITIAL, 0xffffffff);
    udelay(10000);
    uint64_t per_10ms = 0xffffffffu - lapic_read(LAPIC_TIMER_CURRENT);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    diag("LAPIC timer clock: %lu kHz after divide by 16", per_10ms / 10);
    if (per_10ms < 100) {
        diag("the LAPIC timer does not count");
        return TEST_FAIL;
    }
    interrupt_set_handler(VECTOR_LAPIC_TIMER, count_lapic_tick);
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | VECTOR_LAPIC_TIMER);
    lapic_write(LAPIC_TIMER_INITIAL, (uint32_t)(per_10ms * 100 / TIMER_HZ));
    bool ok = wait_for_ticks("LAPIC timer", TIMER_HZ);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    return ok ? TEST_PASS : TEST_FAIL;
}

#define USER_LOOP_ITERATIONS 100000000ull

static uint64_t user_loop(uint64_t iterations)
{
    uint64_t x = 0;
    for (uint64_t i = 0; i < iterations; i++)
        __asm__ volatile("add %1, %0" : "+r"(x) : "r"(i)); /* keep the loop a loop */
    return x;
}

static enum test_result check_user_mode(void)
{
    user_mode_init();
    uint64_t start = time_us();
    uint64_t result = run_user(user_loop, USER_LOOP_ITERATIONS);
    uint64_t elapsed = time_us() - start;
    uint64_t expected = USER_LOOP_ITERATIONS * (USER_LOOP_ITERATIONS - 1) / 2;
    diag("CPL3: %llu iterations in %lu us", USER_LOOP_ITERATIONS, elapsed);
    return result == expected ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"boot information is present", check_boot_info},
    {"memory map matches expect_mem_mib", check_memory_map},
    {"command line arrives intact", check_cmdline},
    {"initrd arrives intact", check_initrd},
    {"every vCPU starts and reports its APIC id", check_cpus},
    {"CMOS RTC is valid and near expect_epoch", check_rtc},
    {"PIT interrupts arrive through the IOAPIC", check_pit_ioapic},
    {"PIT interrupts arrive through the PIC", check_pit_pic},
    {"LAPIC timer interrupts arrive", check_lapic_timer},
    {"CPL3 code runs and returns", check_user_mode},
};

void guest_main(void)
{
    /* Before any check: calibrating reprograms PIT channel 0, which the timer checks use.
     * Guests that never measure time (hello) skip it and boot faster. */
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
