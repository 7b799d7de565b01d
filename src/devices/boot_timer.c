#include "devices/boot_timer.h"

#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static uint64_t clock_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void boot_timer_init(struct boot_timer *t)
{
    memset(t, 0, sizeof(*t));
    t->start_us = clock_us(CLOCK_MONOTONIC);
    t->start_cpu_us = clock_us(CLOCK_PROCESS_CPUTIME_ID);
}

/* Wall and CPU time since the start, and before it whatever a snapshot carried over. */
static void elapsed(const struct boot_timer *t, uint64_t *wall_us, uint64_t *cpu_us)
{
    uint64_t now = clock_us(CLOCK_MONOTONIC), cpu = clock_us(CLOCK_PROCESS_CPUTIME_ID);
    *wall_us = t->carried_us + (now > t->start_us ? now - t->start_us : 0);
    *cpu_us = t->carried_cpu_us + (cpu > t->start_cpu_us ? cpu - t->start_cpu_us : 0);
}

int boot_timer_format(char *buf, unsigned size, uint64_t wall_us, uint64_t cpu_us)
{
    /* Firecracker's test harness reads exactly this shape. */
    return snprintf(buf, size, "Guest-boot-time = %6llu us %llu ms, %6llu CPU us %llu CPU ms",
                    (unsigned long long)wall_us, (unsigned long long)(wall_us / 1000),
                    (unsigned long long)cpu_us, (unsigned long long)(cpu_us / 1000));
}

void boot_timer_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct boot_timer *t = opaque;
    if (!is_write) {
        memset(data, 0, len);
        return;
    }
    if (len != 1 || offset != 0 || data[0] != BOOT_TIMER_MAGIC)
        return;
    uint64_t wall_us, cpu_us;
    elapsed(t, &wall_us, &cpu_us);
    char line[128];
    boot_timer_format(line, sizeof(line), wall_us, cpu_us);
    /* A guest may write it as often as it likes: a line each time, as in
     * Firecracker, but never more than the log's rate limit allows. */
    log_limited(&t->limit, LOG_INFO, "%s", line);
}

/* A machine counts for a thousand years at most; this keeps the sums above from wrapping. */
#define CARRIED_MAX (1000ULL * 366 * 86400 * 1000000)

void boot_timer_save(struct boot_timer *t, struct snapshot_writer *w)
{
    uint64_t wall_us, cpu_us;
    elapsed(t, &wall_us, &cpu_us);
    snapshot_put_u64(w, wall_us);
    snapshot_put_u64(w, cpu_us);
}

int boot_timer_restore(struct boot_timer *t, struct snapshot_cursor *c)
{
    uint64_t wall_us, cpu_us;
    if (snapshot_get_u64(c, &wall_us) < 0)
        return error_prefix("boot timer: wall time");
    if (snapshot_get_u64(c, &cpu_us) < 0)
        return error_prefix("boot timer: CPU time");
    if (snapshot_section_end(c) < 0)
        return error_prefix("boot timer");
    if (wall_us > CARRIED_MAX)
        return error_set("boot timer: %" PRIu64 " us of wall time is beyond 1000 years", wall_us);
    if (cpu_us > CARRIED_MAX)
        return error_set("boot timer: %" PRIu64 " us of CPU time is beyond 1000 years", cpu_us);
    t->carried_us = wall_us;
    t->carried_cpu_us = cpu_us;
    t->start_us = clock_us(CLOCK_MONOTONIC);
    t->start_cpu_us = clock_us(CLOCK_PROCESS_CPUTIME_ID);
    return 0;
}
