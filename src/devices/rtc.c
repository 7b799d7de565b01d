#include "devices/rtc.h"

#include "snapshot/format.h"
#include "util/error.h"

#include <inttypes.h>
#include <string.h>

enum {
    REG_SECONDS = 0x00,
    REG_SECONDS_ALARM = 0x01,
    REG_MINUTES = 0x02,
    REG_MINUTES_ALARM = 0x03,
    REG_HOURS = 0x04,
    REG_HOURS_ALARM = 0x05,
    REG_DAY_OF_WEEK = 0x06,
    REG_DAY = 0x07,
    REG_MONTH = 0x08,
    REG_YEAR = 0x09,
    REG_A = 0x0a,
    REG_B = 0x0b,
    REG_C = 0x0c,
    REG_D = 0x0d,
    REG_CENTURY = 0x32,
};

#define B_SET    0x80 /* guest is updating the time */
#define B_BINARY 0x04 /* values in binary rather than BCD */
#define B_24H    0x02
#define D_VRT    0x80 /* battery good, time valid */
#define HOUR_PM  0x80

static time_t host_now(void)
{
    return time(NULL);
}

void rtc_init(struct rtc *rtc, uint64_t ram_below_4g, uint64_t ram_above_4g)
{
    memset(rtc, 0, sizeof(*rtc));
    pthread_mutex_init(&rtc->lock, NULL);
    rtc->now = host_now;
    rtc->cmos[REG_A] = 0x26; /* 32.768 kHz time base, 1024 Hz rate */
    rtc->cmos[REG_B] = B_24H;
    rtc->cmos[REG_D] = D_VRT;
    /* Memory size bytes, as firmware leaves them for older guests. */
    uint64_t base_kib = 640;
    rtc->cmos[0x15] = (uint8_t)base_kib;
    rtc->cmos[0x16] = (uint8_t)(base_kib >> 8);
    uint64_t ext_kib = ram_below_4g > (1 << 20) ? (ram_below_4g - (1 << 20)) >> 10 : 0;
    if (ext_kib > 0xffff)
        ext_kib = 0xffff;
    rtc->cmos[0x17] = rtc->cmos[0x30] = (uint8_t)ext_kib;
    rtc->cmos[0x18] = rtc->cmos[0x31] = (uint8_t)(ext_kib >> 8);
    uint64_t above_16m = ram_below_4g > (16 << 20) ? (ram_below_4g - (16 << 20)) >> 16 : 0;
    if (above_16m > 0xffff)
        above_16m = 0xffff;
    rtc->cmos[0x34] = (uint8_t)above_16m;
    rtc->cmos[0x35] = (uint8_t)(above_16m >> 8);
    uint64_t above_4g = ram_above_4g >> 16;
    rtc->cmos[0x5b] = (uint8_t)above_4g;
    rtc->cmos[0x5c] = (uint8_t)(above_4g >> 8);
    rtc->cmos[0x5d] = (uint8_t)(above_4g >> 16);
}

static uint8_t to_bcd(unsigned v)
{
    return (uint8_t)(((v / 10) << 4) | (v % 10));
}

static unsigned from_bcd(uint8_t v)
{
    return (v >> 4) * 10 + (v & 0xf);
}

static uint8_t encode(const struct rtc *rtc, unsigned v)
{
    return (rtc->cmos[REG_B] & B_BINARY) ? (uint8_t)v : to_bcd(v);
}

static unsigned decode(const struct rtc *rtc, uint8_t v)
{
    return (rtc->cmos[REG_B] & B_BINARY) ? v : from_bcd(v);
}

static void guest_time(const struct rtc *rtc, struct tm *tm)
{
    time_t t = (time_t)(rtc->now() + rtc->offset);
    gmtime_r(&t, tm);
}

static uint8_t read_time_reg(const struct rtc *rtc, uint8_t reg)
{
    struct tm tm;
    guest_time(rtc, &tm);
    switch (reg) {
    case REG_SECONDS:
        return encode(rtc, (unsigned)tm.tm_sec);
    case REG_MINUTES:
        return encode(rtc, (unsigned)tm.tm_min);
    case REG_HOURS:
        if (rtc->cmos[REG_B] & B_24H)
            return encode(rtc, (unsigned)tm.tm_hour);
        else {
            unsigned h = (unsigned)tm.tm_hour % 12;
            return (uint8_t)(encode(rtc, h ? h : 12) | (tm.tm_hour >= 12 ? HOUR_PM : 0));
        }
    case REG_DAY_OF_WEEK:
        return encode(rtc, (unsigned)tm.tm_wday + 1);
    case REG_DAY:
        return encode(rtc, (unsigned)tm.tm_mday);
    case REG_MONTH:
        return encode(rtc, (unsigned)tm.tm_mon + 1);
    case REG_YEAR:
        return encode(rtc, (unsigned)(tm.tm_year + 1900) % 100);
    default: /* REG_CENTURY */
        return encode(rtc, (unsigned)(tm.tm_year + 1900) / 100);
    }
}

/* A write to a time field moves the guest's clock by the difference. */
static void write_time_reg(struct rtc *rtc, uint8_t reg, uint8_t v)
{
    struct tm tm;
    guest_time(rtc, &tm);
    unsigned x = decode(rtc, v & (reg == REG_HOURS ? 0x7f : 0xff));
    switch (reg) {
    case REG_SECONDS:
        if (x > 59)
            return;
        tm.tm_sec = (int)x;
        break;
    case REG_MINUTES:
        if (x > 59)
            return;
        tm.tm_min = (int)x;
        break;
    case REG_HOURS:
        if (!(rtc->cmos[REG_B] & B_24H)) {
            if (x < 1 || x > 12)
                return;
            x = (x % 12) + ((v & HOUR_PM) ? 12 : 0);
        }
        if (x > 23)
            return;
        tm.tm_hour = (int)x;
        break;
    case REG_DAY:
        if (x < 1 || x > 31)
            return;
        tm.tm_mday = (int)x;
        break;
    case REG_MONTH:
        if (x < 1 || x > 12)
            return;
        tm.tm_mon = (int)x - 1;
        break;
    case REG_YEAR:
        if (x > 99)
            return;
        tm.tm_year = (tm.tm_year + 1900) / 100 * 100 + (int)x - 1900;
        break;
    case REG_CENTURY:
        if (x < 19 || x > 99)
            return;
        tm.tm_year = (int)x * 100 + (tm.tm_year + 1900) % 100 - 1900;
        break;
    default: /* day of week follows from the date */
        return;
    }
    time_t t = timegm(&tm);
    if (t != (time_t)-1)
        rtc->offset = (int64_t)t - (int64_t)rtc->now();
}

static bool is_time_reg(uint8_t reg)
{
    return reg <= REG_YEAR || reg == REG_CENTURY;
}

static bool is_alarm_reg(uint8_t reg)
{
    return reg == REG_SECONDS_ALARM || reg == REG_MINUTES_ALARM || reg == REG_HOURS_ALARM;
}

void rtc_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct rtc *rtc = opaque;
    if (len != 1) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    pthread_mutex_lock(&rtc->lock);
    if (offset == 0) {
        /* Index port; bit 7 is the NMI mask, which we do not model. */
        if (is_write)
            rtc->index = data[0] & 0x7f;
        else
            data[0] = 0xff;
    } else if (!is_write) {
        uint8_t reg = rtc->index;
        if (is_time_reg(reg) && !is_alarm_reg(reg))
            data[0] = read_time_reg(rtc, reg);
        else if (reg == REG_A)
            data[0] = rtc->cmos[REG_A] & 0x7f; /* never mid-update */
        else if (reg == REG_C) {
            data[0] = rtc->cmos[REG_C];
            rtc->cmos[REG_C] = 0; /* reading acknowledges */
        } else
            data[0] = rtc->cmos[reg];
    } else {
        uint8_t reg = rtc->index, v = data[0];
        if (is_time_reg(reg) && !is_alarm_reg(reg))
            write_time_reg(rtc, reg, v);
        else if (reg == REG_A)
            rtc->cmos[REG_A] = v & 0x7f;
        else if (reg == REG_C || reg == REG_D)
            ; /* read-only */
        else
            rtc->cmos[reg] = v;
    }
    pthread_mutex_unlock(&rtc->lock);
}

/* The guest can set years 1900-9999 (century 19-99): its offset from any host clock of
 * this era stays within 10000 years, and so far from overflowing time_t arithmetic. */
#define OFFSET_MAX ((int64_t)10000 * 366 * 86400)

void rtc_save(struct rtc *rtc, struct snapshot_writer *w)
{
    uint8_t index, cmos[sizeof(rtc->cmos)];
    int64_t offset;
    pthread_mutex_lock(&rtc->lock);
    index = rtc->index;
    memcpy(cmos, rtc->cmos, sizeof(cmos));
    offset = rtc->offset;
    pthread_mutex_unlock(&rtc->lock);
    snapshot_put_u8(w, index);
    snapshot_put_bytes(w, cmos, sizeof(cmos));
    snapshot_put_u64(w, (uint64_t)offset);
}

int rtc_restore(struct rtc *rtc, struct snapshot_cursor *c)
{
    uint8_t index, cmos[sizeof(rtc->cmos)];
    uint64_t raw;
    if (snapshot_get_u8(c, &index) < 0)
        return error_prefix("rtc: index");
    if (snapshot_get_bytes(c, cmos, sizeof(cmos)) < 0)
        return error_prefix("rtc: CMOS registers");
    if (snapshot_get_u64(c, &raw) < 0)
        return error_prefix("rtc: offset");
    if (snapshot_section_end(c) < 0)
        return error_prefix("rtc");
    /* Two's complement, as saved; converted without relying on implementation-defined
     * narrowing. */
    int64_t offset = raw > INT64_MAX ? -(int64_t)(~raw) - 1 : (int64_t)raw;
    if (index >= sizeof(rtc->cmos))
        return error_set("rtc: index 0x%02x is beyond the %zu CMOS registers", index,
                         sizeof(rtc->cmos));
    /* Register A's update-in-progress bit is never stored; C and D are read-only and
     * this clock raises no interrupt, so they hold what rtc_init put there. */
    if (cmos[REG_A] & 0x80)
        return error_set("rtc: register A 0x%02x has update-in-progress set", cmos[REG_A]);
    if (cmos[REG_C] != 0)
        return error_set("rtc: register C 0x%02x flags interrupts this clock never raises",
                         cmos[REG_C]);
    if (cmos[REG_D] != D_VRT)
        return error_set("rtc: register D 0x%02x is not 0x%02x (read-only)", cmos[REG_D], D_VRT);
    if (offset > OFFSET_MAX || offset < -OFFSET_MAX)
        return error_set("rtc: offset %" PRId64 " s from host time is beyond 10000 years", offset);

    pthread_mutex_lock(&rtc->lock);
    rtc->index = index;
    memcpy(rtc->cmos, cmos, sizeof(rtc->cmos));
    rtc->offset = offset;
    pthread_mutex_unlock(&rtc->lock);
    return 0;
}
