/*
 * The guest of bench/snapshot.sh: a machine whose "running again" shows on the serial port, and
 * that prices its own first touches of memory after a restore.
 *
 * Boot: calibrates the TSC, starts the other vCPUs (they halt), writes one non-zero word into
 * every 4 KiB page of RAM above the image (`fill_mib=N` limits that, 0: none), so that a snapshot
 * holds that much data, then prints `snapbench: ready cpus=C pages=P fill_ms=F`.
 *
 * Then it loops at CPL0 for ever: one '.' on COM1 every `tick_us=` (default 50) microseconds,
 * and one poll of COM1's receiver. The first byte on the VMM's stdout after a restore is the
 * guest running again. Commands (one byte on COM1):
 *   t  read one word of every page above the image (the first touch after a restore: every
 *      page faults in), then write one word of each (copy-on-write, where a mapping is private),
 *      then read them all again (nothing left to fault), each pass at CPL3 timed with the TSC:
 *      `snapbench: touch pages=P read_us=R write_us=W resident_us=S`
 *   d  writes one word into each page of the first `dirty_mib=` (16) MiB above the image, with
 *      values never written before: `snapbench: dirtied pages=P`
 *   q  powers off (i8042, else debug-exit 0).
 * Reports start on a line of their own: the dots never end in a newline.
 */
#include "guest.h"
#include "io.h"

extern char __image_end[];

#define PAGE         4096u
#define COM1         0x3f8
#define UART_RBR     0
#define UART_LSR     5
#define LSR_DATA     0x01
#define DEFAULT_TICK 50
#define DEFAULT_DIRT 16

static uint64_t first_page, last_page; /* [first, last): RAM above the image, below 4 GiB */
static uint64_t generation = 1;        /* what the next fill or dirty pass writes */

/* The pages of the largest RAM region above the image: this guest's RAM is one region from
 * 1 MiB (ember and QEMU alike, below the 32-bit hole). */
static void find_pages(void)
{
    uint64_t start = ((uint64_t)__image_end + PAGE - 1) & ~(uint64_t)(PAGE - 1);
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type != MEMORY_RAM)
            continue;
        uint64_t from = r->base > start ? r->base : start;
        uint64_t to = r->base + r->size < 4 * GIB ? r->base + r->size : 4 * GIB;
        to &= ~(uint64_t)(PAGE - 1);
        if (to > from && to - from > last_page - first_page) {
            first_page = from;
            last_page = to;
        }
    }
}

/* ---- CPL3: the passes over memory (native speed on the nested hosts) ---------------------- */

struct pass {
    uint64_t from, to, value;
    uint64_t cycles, sum;
};

static uint64_t write_pass(uint64_t arg)
{
    struct pass *p = (struct pass *)arg;
    uint64_t start = rdtsc();
    for (uint64_t a = p->from; a < p->to; a += PAGE)
        *(volatile uint64_t *)a = p->value ^ a;
    p->cycles = rdtsc() - start;
    return 0;
}

static uint64_t read_pass(uint64_t arg)
{
    struct pass *p = (struct pass *)arg;
    uint64_t sum = 0;
    uint64_t start = rdtsc();
    for (uint64_t a = p->from; a < p->to; a += PAGE)
        sum += *(volatile uint64_t *)a;
    p->cycles = rdtsc() - start;
    p->sum = sum;
    return 0;
}

static uint64_t timed(uint64_t (*fn)(uint64_t), uint64_t from, uint64_t to, uint64_t value)
{
    struct pass p = {.from = from, .to = to, .value = value};
    run_user(fn, (uint64_t)&p);
    return p.cycles * 1000000 / tsc_hz;
}

/* ---- CPL0: the loop and its commands ------------------------------------------------------- */

static void touch(void)
{
    uint64_t read_us = timed(read_pass, first_page, last_page, 0);
    uint64_t write_us = timed(write_pass, first_page, last_page, ++generation << 48);
    uint64_t resident_us = timed(read_pass, first_page, last_page, 0);
    printf("\nsnapbench: touch pages=%lu read_us=%lu write_us=%lu resident_us=%lu\n",
           (last_page - first_page) / PAGE, read_us, write_us, resident_us);
}

static void dirty(uint64_t mib)
{
    uint64_t to = first_page + mib * MIB;
    if (to > last_page || to < first_page)
        to = last_page;
    timed(write_pass, first_page, to, ++generation << 48);
    printf("\nsnapbench: dirtied pages=%lu\n", (to - first_page) / PAGE);
}

void guest_main(void)
{
    uint64_t fill_mib = UINT64_MAX, tick_us = DEFAULT_TICK, dirty_mib = DEFAULT_DIRT;
    cmdline_get_u64("fill_mib", &fill_mib);
    cmdline_get_u64("tick_us", &tick_us);
    cmdline_get_u64("dirty_mib", &dirty_mib);
    if (!tsc_calibrate())
        bail_out("cannot calibrate the TSC: PIT channel 0 does not count");
    platform_discover();
    struct smp_result smp;
    unsigned cpus = 1;
    if (platform.cpu_count > 1) {
        if (!smp_start_cpus(&smp))
            bail_out("not every vCPU started");
        cpus = smp.started;
    }
    user_mode_init();
    find_pages();
    if (last_page <= first_page)
        bail_out("no RAM above the image");
    uint64_t fill_to = last_page;
    if (fill_mib != UINT64_MAX && fill_mib * MIB < last_page - first_page)
        fill_to = first_page + fill_mib * MIB;
    uint64_t fill_us = timed(write_pass, first_page, fill_to, generation << 48);
    printf("snapbench: ready cpus=%u pages=%lu filled=%lu fill_ms=%lu\n", cpus,
           (last_page - first_page) / PAGE, (fill_to - first_page) / PAGE, fill_us / 1000);
    for (;;) {
        outb(COM1, '.');
        if (inb(COM1 + UART_LSR) & LSR_DATA) {
            uint8_t c = inb(COM1 + UART_RBR);
            if (c == 't')
                touch();
            else if (c == 'd')
                dirty(dirty_mib);
            else if (c == 'q') {
                printf("\nsnapbench: bye\n");
                i8042_reset();
                debug_exit(0);
            }
        }
        udelay(tick_us);
    }
}
