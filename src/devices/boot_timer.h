/* Firecracker's boot timer (--boot-timer): a guest that writes the byte 123
 * at the device's address once it has booted makes ember log how long the
 * boot took, wall and CPU time since the machine was asked to start, in the
 * line Firecracker's boot-time tests read:
 *
 *   Guest-boot-time =   1234 us 1 ms,    567 CPU us 0 CPU ms
 *
 * Every other access is ignored. */
#ifndef EMBER_DEVICES_BOOT_TIMER_H
#define EMBER_DEVICES_BOOT_TIMER_H

#include <stdbool.h>
#include <stdint.h>

/* Firecracker's address on x86: the first page of the 32-bit MMIO hole
 * (arch/x86/layout.h keeps it free). */
#define BOOT_TIMER_ADDR  0xc0000000ULL
#define BOOT_TIMER_SIZE  0x1000
#define BOOT_TIMER_MAGIC 123

#include "util/log.h"

struct snapshot_writer;
struct snapshot_cursor;

struct boot_timer {
    uint64_t start_us;     /* CLOCK_MONOTONIC */
    uint64_t start_cpu_us; /* CLOCK_PROCESS_CPUTIME_ID */
    /* Time counted by the process that saved a snapshot this one was restored from (0 on
     * a machine that booted here): the host clocks above start over in a new process. */
    uint64_t carried_us, carried_cpu_us;
    struct log_limit limit;
};

/* Starts the clock now. */
void boot_timer_init(struct boot_timer *t);
void boot_timer_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* The line for a boot that took these times (for the log and the tests). */
int boot_timer_format(char *buf, unsigned size, uint64_t wall_us, uint64_t cpu_us);

/* Snapshot of the wall and CPU time counted so far, into the section the caller opened
 * (docs/snapshot-format.md). The log's rate limit is the restored device's. */
void boot_timer_save(struct boot_timer *t, struct snapshot_writer *w);
/* Reads and checks the whole section before changing anything (on failure the device is
 * as it was, error_get() says why), then counts on from the saved times: the time the
 * machine spent saved is not counted. */
int boot_timer_restore(struct boot_timer *t, struct snapshot_cursor *c);

#endif
