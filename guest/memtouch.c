/*
 * Writes one byte to every 4 KiB page of the RAM the memory map lists above the image (below
 * 4 GiB, the identity map's reach), so that the host must back all of the guest's memory: the
 * jailer tests use it to run into a cgroup's memory limit. `touch_mib=N` stops after N MiB.
 * Prints `# touched N MiB` every 16 MiB, then `ok 1`, and powers off through the i8042 (the VMM
 * exits 0), or where there is none through debug-exit 0.
 */
#include "guest.h"

extern char __image_end[];

#define PAGE        4096u
#define REPORT_STEP (16 * MIB)

void guest_main(void)
{
    uint64_t limit = UINT64_MAX;
    if (cmdline_get_u64("touch_mib", &limit))
        limit *= MIB;
    printf("1..1\n");
    uint64_t start = ((uint64_t)__image_end + PAGE - 1) & ~(uint64_t)(PAGE - 1);
    uint64_t touched = 0, next_report = REPORT_STEP;
    for (size_t i = 0; i < boot_info.memory_count && touched < limit; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type != MEMORY_RAM)
            continue;
        uint64_t from = r->base > start ? r->base : start;
        uint64_t to = r->base + r->size < 4 * GIB ? r->base + r->size : 4 * GIB;
        for (uint64_t a = from; a + PAGE <= to && touched < limit; a += PAGE) {
            *(volatile uint8_t *)a = 0x5a;
            touched += PAGE;
            if (touched == next_report) {
                diag("touched %lu MiB", touched / MIB);
                next_report += REPORT_STEP;
            }
        }
    }
    printf("ok 1 - touched %lu MiB\n", touched / MIB);
    i8042_reset();
    debug_exit(0);
}
