/* Time from the TSC, calibrated once against PIT channel 0 (read back, no interrupt needed). */
#include "guest.h"
#include "io.h"

uint64_t tsc_hz;
static uint64_t tsc_at_calibration;

#define CALIBRATION_PIT_TICKS 11932 /* 10 ms */

bool tsc_calibrate(void)
{
    outb(0x43, 0x30); /* channel 0, mode 0, count 0xffff: counts down for 55 ms */
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    uint16_t start = pit_read_counter0();
    uint64_t tsc_start = rdtsc();
    uint16_t now = start;
    /* Bounded in iterations too: a PIT that never counts must not hang the guest. */
    for (int i = 0; i < 100000 && (uint16_t)(start - now) < CALIBRATION_PIT_TICKS; i++)
        now = pit_read_counter0();
    uint64_t tsc_end = rdtsc();
    uint16_t elapsed = (uint16_t)(start - now);
    pit_stop();
    if (elapsed < CALIBRATION_PIT_TICKS || tsc_end <= tsc_start)
        return false;
    tsc_hz = (tsc_end - tsc_start) * PIT_HZ / elapsed;
    tsc_at_calibration = tsc_start;
    return true;
}

static void ensure_calibrated(void)
{
    if (!tsc_hz && !tsc_calibrate())
        bail_out("cannot calibrate the TSC: PIT channel 0 does not count");
}

uint64_t time_us(void)
{
    ensure_calibrated();
    return (rdtsc() - tsc_at_calibration) * 1000000 / tsc_hz;
}

void udelay(uint64_t us)
{
    ensure_calibrated();
    uint64_t end = rdtsc() + us * tsc_hz / 1000000;
    while (rdtsc() < end)
        cpu_relax();
}
