/* CMOS RTC: a consistent read, validated against the format status register B declares. */
#include "guest.h"
#include "io.h"

#define CMOS_INDEX   0x70
#define CMOS_DATA    0x71
#define RTC_SECONDS  0x00
#define RTC_MINUTES  0x02
#define RTC_HOURS    0x04
#define RTC_DAY      0x07
#define RTC_MONTH    0x08
#define RTC_YEAR     0x09
#define RTC_STATUS_A 0x0a
#define RTC_STATUS_B 0x0b
#define RTC_CENTURY  0x32
#define STATUS_A_UIP 0x80
#define STATUS_B_BIN 0x04
#define STATUS_B_24H 0x02
#define HOUR_PM      0x80

static uint8_t cmos_read(uint8_t reg)
{
    outb(CMOS_INDEX, reg); /* bit 7 clear: NMIs stay enabled */
    return inb(CMOS_DATA);
}

static void read_raw(uint8_t regs[7])
{
    for (int i = 0; i < 1000 && (cmos_read(RTC_STATUS_A) & STATUS_A_UIP); i++)
        ;
    regs[0] = cmos_read(RTC_SECONDS);
    regs[1] = cmos_read(RTC_MINUTES);
    regs[2] = cmos_read(RTC_HOURS);
    regs[3] = cmos_read(RTC_DAY);
    regs[4] = cmos_read(RTC_MONTH);
    regs[5] = cmos_read(RTC_YEAR);
    regs[6] = cmos_read(RTC_CENTURY);
}

static bool decode(uint8_t raw, bool binary, unsigned *value)
{
    if (binary) {
        *value = raw;
        return true;
    }
    if ((raw & 0xf) > 9 || (raw >> 4) > 9)
        return false;
    *value = (raw >> 4) * 10 + (raw & 0xf);
    return true;
}

bool rtc_read(struct rtc_time *time, char *error, size_t error_size)
{
    uint8_t regs[7], again[7];
    int tries = 0;
    /* Two equal reads in a row: no update happened in between. */
    do {
        read_raw(regs);
        read_raw(again);
    } while (memcmp(regs, again, sizeof(regs)) && ++tries < 5);
    *time = (struct rtc_time){.status_b = cmos_read(RTC_STATUS_B)};
    bool binary = time->status_b & STATUS_B_BIN;
    bool hours24 = time->status_b & STATUS_B_24H;
    bool pm = !hours24 && (regs[2] & HOUR_PM);
    unsigned year, century;
    static const char *const names[] = {"seconds", "minutes", "hours", "day", "month", "year"};
    unsigned *fields[] = {&time->second, &time->minute, &time->hour,
                          &time->day,    &time->month,  &year};
    for (int i = 0; i < 6; i++) {
        uint8_t raw = i == 2 ? (uint8_t)(regs[2] & ~(hours24 ? 0 : HOUR_PM)) : regs[i];
        if (!decode(raw, binary, fields[i])) {
            snprintf(error, error_size, "%s register 0x%02x is not BCD", names[i], regs[i]);
            return false;
        }
    }
    if (!hours24) {
        if (time->hour < 1 || time->hour > 12) {
            snprintf(error, error_size, "12-hour register holds %u", time->hour);
            return false;
        }
        time->hour = time->hour % 12 + (pm ? 12 : 0);
    }
    if (time->second > 59 || time->minute > 59 || time->hour > 23 || time->day < 1 ||
        time->day > 31 || time->month < 1 || time->month > 12 || year > 99) {
        snprintf(error, error_size, "out of range: %02u:%02u:%02u day %u month %u year %u",
                 time->hour, time->minute, time->second, time->day, time->month, year);
        return false;
    }
    /* The century register is optional (ACPI FADT names it); trust it only when plausible. */
    if (decode(regs[6], binary, &century) && century >= 19 && century <= 21) {
        time->year = century * 100 + year;
        time->century_register_used = true;
    } else {
        time->year = (year < 70 ? 2000 : 1900) + year;
    }
    return true;
}

uint64_t rtc_to_epoch(const struct rtc_time *t)
{
    static const uint16_t days_before_month[] = {0,   31,  59,  90,  120, 151,
                                                 181, 212, 243, 273, 304, 334};
    uint64_t days = 0;
    for (unsigned y = 1970; y < t->year; y++)
        days += (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 366 : 365;
    days += days_before_month[t->month - 1] + t->day - 1;
    bool leap = t->year % 4 == 0 && (t->year % 100 != 0 || t->year % 400 == 0);
    if (leap && t->month > 2)
        days++;
    return ((days * 24 + t->hour) * 60 + t->minute) * 60 + t->second;
}
