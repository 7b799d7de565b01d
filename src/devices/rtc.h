/* The CMOS real-time clock (MC146818 registers) with the host's time of
 * day, plus the CMOS bytes that describe memory size. Time the guest sets
 * is kept as an offset from the host clock. */
#ifndef EMBER_DEVICES_RTC_H
#define EMBER_DEVICES_RTC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define RTC_PORT     0x70
#define RTC_PORT_LEN 2

struct snapshot_writer;
struct snapshot_cursor;

struct rtc {
    pthread_mutex_t lock;
    uint8_t index;
    uint8_t cmos[128];
    int64_t offset;      /* guest time minus host time, seconds */
    time_t (*now)(void); /* host clock; replaceable for tests */
};

void rtc_init(struct rtc *rtc, uint64_t ram_below_4g, uint64_t ram_above_4g);
void rtc_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);

/* Snapshot of the index, the CMOS bytes and the guest's offset from host time, into the
 * section the caller opened (docs/snapshot-format.md). The offset, not the time of day, is
 * what is kept: the restored clock reads the restoring host's time plus the offset, so it
 * has counted the time the machine spent saved, as a battery-backed clock does and as the
 * guest's kvmclock does when restored with the real time passed. */
void rtc_save(struct rtc *rtc, struct snapshot_writer *w);
/* Reads and checks the whole section (its end included) before changing anything: on
 * failure the device is as it was and error_get() names the field. The host clock (now)
 * stays the restored device's. */
int rtc_restore(struct rtc *rtc, struct snapshot_cursor *c);

#endif
