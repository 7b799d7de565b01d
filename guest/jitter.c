/*
 * CPU jitter as the guest sees it: the guest of bench/jitter.sh. A tight loop at CPL3 (native
 * speed on these hosts, where CPL0 code is emulated) reads the TSC for jitter.ms= milliseconds
 * (default 2000; 1-60000, anything else is refused: Bail out! and debug-exit 1) with interrupts
 * off, and looks at the gap between each read and the one before. The loop's own cost is a few
 * nanoseconds; a larger gap is time the vCPU did not run: the host ran something else on its CPU
 * (another thread, an interrupt, its own work on an exit). Nothing in the loop exits or needs an
 * interrupt (one that comes to a vCPU at CPL3 arrives late on these hosts).
 *
 * jitter.settle_ms= (default 0, at most 10000) adds a spin of that long at CPL3 before and after
 * the measured loop, which behaves as the loop does: bench/jitter.sh reads the host's statistics
 * in them, so that its window holds the whole loop and nothing but CPL3 spinning.
 *
 * Prints, before the first spin and after the last:
 *   jitter: begin ms=M settle_ms=S tsc_khz=K
 *   jitter: ms=M iters=N max_gap_ns=G gaps_over_10us=C gt1us=A gt100us=B gt1ms=D stolen_us=S
 *           tsc_backwards=T
 * gtX: gaps longer than X (so gt1us >= gaps_over_10us >= gt100us >= gt1ms); stolen_us: the sum
 * of the gaps over 10 us; tsc_backwards: reads smaller than the one before (counted as no gap).
 * Then one TAP line, ok when the loop ran at least once, and debug-exit.
 */
#include "guest.h"
#include "io.h"

#define DEFAULT_MS 2000
#define MAX_MS     60000u
#define MAX_SETTLE 10000u

/* What the CPL3 loop takes in and gives back; thresholds and the end in TSC cycles. */
struct jitter {
    uint64_t run_cycles, settle_cycles;
    uint64_t over_1us, over_10us, over_100us, over_1ms;
    uint64_t iters, max_gap, gt1us, gt10us, gt100us, gt1ms, stolen, backwards;
};

static struct jitter jitter;

static void spin(uint64_t cycles)
{
    uint64_t end = rdtsc() + cycles;
    while (rdtsc() < end)
        cpu_relax();
}

/* At CPL3, interrupts off: counters live in registers, written back once at the end. */
static uint64_t user_loop(uint64_t arg)
{
    struct jitter *j = (struct jitter *)arg;
    uint64_t iters = 0, max_gap = 0, gt1us = 0, gt10us = 0, gt100us = 0, gt1ms = 0;
    uint64_t stolen = 0, backwards = 0;
    spin(j->settle_cycles);
    uint64_t prev = rdtsc(), end = prev + j->run_cycles;
    for (;;) {
        uint64_t now = rdtsc();
        iters++;
        if (now < prev) {
            backwards++;
        } else {
            uint64_t gap = now - prev;
            if (gap > max_gap)
                max_gap = gap;
            if (gap > j->over_1us) {
                gt1us++;
                if (gap > j->over_10us) {
                    gt10us++;
                    stolen += gap;
                    gt100us += gap > j->over_100us;
                    gt1ms += gap > j->over_1ms;
                }
            }
        }
        prev = now;
        if (now >= end)
            break;
    }
    j->iters = iters;
    j->max_gap = max_gap;
    j->gt1us = gt1us;
    j->gt10us = gt10us;
    j->gt100us = gt100us;
    j->gt1ms = gt1ms;
    j->stolen = stolen;
    j->backwards = backwards;
    spin(j->settle_cycles);
    return 0;
}

/* cycles * 10^9 / tsc_hz without overflowing 64 bits for any gap the loop can see. */
static uint64_t cycles_to_ns(uint64_t cycles)
{
    uint64_t khz = tsc_hz / 1000;
    return cycles / khz * 1000000 + cycles % khz * 1000000 / khz;
}

/* KEY=: absent, the default; present, a number of milliseconds in [min, max] or the run is
 * refused. */
static uint64_t option_ms(const char *key, uint64_t fallback, unsigned min, unsigned max)
{
    char text[32];
    uint64_t ms;
    if (!cmdline_get(key, text, sizeof(text)))
        return fallback;
    if (strlen(text) >= sizeof(text) - 1 || !parse_u64(text, &ms) || ms < min || ms > max)
        bail_out("%s=%s: a number of milliseconds from %u to %u, please", key, text, min, max);
    return ms;
}

void guest_main(void)
{
    printf("1..1\n");
    uint64_t ms = option_ms("jitter.ms", DEFAULT_MS, 1, MAX_MS);
    uint64_t settle_ms = option_ms("jitter.settle_ms", 0, 0, MAX_SETTLE);
    if (!tsc_calibrate() || tsc_hz < 1000000)
        bail_out("cannot calibrate the TSC against the PIT");
    user_mode_init();
    jitter.run_cycles = ms * (tsc_hz / 1000);
    jitter.settle_cycles = settle_ms * (tsc_hz / 1000);
    jitter.over_1us = tsc_hz / 1000000;
    jitter.over_10us = tsc_hz / 100000;
    jitter.over_100us = tsc_hz / 10000;
    jitter.over_1ms = tsc_hz / 1000;
    printf("jitter: begin ms=%lu settle_ms=%lu tsc_khz=%lu\n", ms, settle_ms, tsc_hz / 1000);
    run_user(user_loop, (uint64_t)&jitter);
    printf("jitter: ms=%lu iters=%lu max_gap_ns=%lu gaps_over_10us=%lu gt1us=%lu gt100us=%lu "
           "gt1ms=%lu stolen_us=%lu tsc_backwards=%lu\n",
           ms, jitter.iters, cycles_to_ns(jitter.max_gap), jitter.gt10us, jitter.gt1us,
           jitter.gt100us, jitter.gt1ms, cycles_to_ns(jitter.stolen) / 1000, jitter.backwards);
    bool ok = jitter.iters > 0;
    printf("%sok 1 - the TSC loop ran %lu ms at CPL3\n", ok ? "" : "not ", ms);
    debug_exit(ok ? 0 : 1);
}
