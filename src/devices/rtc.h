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

struct rtc {
    pthread_mutex_t lock;
    uint8_t index;
    uint8_t cmos[128];
    int64_t offset;      /* guest time minus host time, seconds */
    time_t (*now)(void); /* host clock; replaceable for tests */
};

void rtc_init(struct rtc *rtc, uint64_t ram_below_4g, uint64_t ram_above_4g);
void rtc_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);

#endif
