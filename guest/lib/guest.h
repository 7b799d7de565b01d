/* The test-guest runtime: everything a guest program uses. Only the BSP prints. */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIB           (UINT64_C(1) << 20)
#define GIB           (1024 * MIB)

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* serial.c: COM1, polled */
void serial_init(void);
void serial_write(const char *s, size_t len);

/* printf.c: %[-0][width][l|ll|z](d|i|u|x|X|p|s|c|%); '\n' goes out as "\r\n" */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list args);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* power.c: ways to end the VM */
#define DEBUG_EXIT_PORT 0xf4
_Noreturn void debug_exit(uint8_t value); /* the VMM exits with (value << 1) | 1 */
void i8042_reset(void);                   /* returns only if there is no i8042 */
_Noreturn void halt_forever(void);

/* bootinfo.c: what the VMM handed over, the same whichever boot protocol was used */
enum memory_type { MEMORY_RAM = 1, MEMORY_RESERVED = 2 };
struct memory_region {
    uint64_t base;
    uint64_t size;
    uint32_t type;
};
#define MAX_MEMORY_REGIONS 128
#define MAX_CMDLINE        4096
struct boot_info {
    int protocol; /* BOOT_PROTOCOL_* */
    const char *protocol_name;
    uint32_t pvh_version;
    char cmdline[MAX_CMDLINE];
    size_t cmdline_len;
    bool cmdline_truncated;
    struct memory_region memory[MAX_MEMORY_REGIONS];
    size_t memory_count;
    unsigned empty_memory_entries; /* size 0, left out of memory[] */
    bool memory_from_firmware;     /* PVH version 0: map read from the CMOS, not the VMM */
    uint64_t initrd_base;
    uint64_t initrd_size;
    uint64_t rsdp; /* 0 when the VMM did not say */
};
extern struct boot_info boot_info;
void boot_info_parse(int protocol, uint64_t info_addr);

/* cmdline.c: key=value words of the command line; values may be "double quoted" */
bool cmdline_get(const char *key, char *value, size_t size);
bool cmdline_get_u64(const char *key, uint64_t *value);
bool parse_u64(const char *s, uint64_t *value); /* decimal or 0x hex, whole string, no overflow */
/* Whether the comma-separated words of key= hold word (no key=: false). */
bool cmdline_list_has(const char *key, const char *word);

/* tap.c: a guest is a list of tests run in order; the result decides the debug-exit value */
enum test_result { TEST_FAIL, TEST_PASS, TEST_SKIP };
struct guest_test {
    const char *name;
    enum test_result (*run)(void);
};
void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
enum test_result skip(const char *reason); /* reason: a string that outlives the test */
_Noreturn void tap_run(const struct guest_test *tests, size_t count);
_Noreturn void bail_out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* idle.c: halt for ms milliseconds, woken by a LAPIC timer only (CPL0); tap_run does so before
 * it exits when the command line has idle_ms=N */
void guest_idle(uint64_t ms);
void guest_idle_if_asked(void);

/* Provided by each guest. */
void guest_main(void);

/* interrupts.c */
struct interrupt_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error_code;
    uint64_t rip, cs, rflags, rsp, ss;
};
typedef void (*interrupt_handler)(struct interrupt_frame *frame);
void idt_init(void);
void idt_load(void);
void interrupt_set_handler(uint8_t vector, interrupt_handler handler);
_Noreturn void exception_report(const struct interrupt_frame *frame); /* and fail the run */
extern volatile uint64_t stray_interrupts;

#define VECTOR_PIC_BASE     0x20 /* 0x20-0x2f */
#define VECTOR_IOAPIC_TIMER 0x30
#define VECTOR_LAPIC_TIMER  0x40
#define VECTOR_SPURIOUS     0xff

/* timer.c: the TSC, calibrated against the PIT */
extern uint64_t tsc_hz;
bool tsc_calibrate(void);
uint64_t time_us(void);
void udelay(uint64_t us);

/* pit.c, pic.c */
#define PIT_HZ 1193182
void pit_start_periodic(uint32_t hz);
void pit_stop(void);
uint16_t pit_read_counter0(void);
void pic_init(void);
void pic_mask_all(void);
void pic_set_mask(uint8_t irq, bool masked);
void pic_eoi(uint8_t irq);

/* apic.c */
uint64_t lapic_base(void);
void lapic_enable(void);
uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t value);
uint8_t lapic_id(void);
void lapic_eoi(void);
bool lapic_send_ipi(uint8_t dest, uint32_t command); /* false: delivery never completed */
#define LAPIC_ID            0x20
#define LAPIC_VERSION       0x30
#define LAPIC_TPR           0x80
#define LAPIC_EOI           0xb0
#define LAPIC_SVR           0xf0
#define LAPIC_ICR_LOW       0x300
#define LAPIC_ICR_HIGH      0x310
#define LAPIC_LVT_TIMER     0x320
#define LAPIC_LVT_LINT0     0x350
#define LAPIC_LVT_LINT1     0x360
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE  0x3e0
#define LVT_MASKED          0x10000
#define LVT_TIMER_PERIODIC  0x20000
#define LVT_EXTINT          0x700

uint32_t ioapic_read(uint32_t reg);
void ioapic_write(uint32_t reg, uint32_t value);
unsigned ioapic_pin_count(void);
void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest, bool level, bool active_low);
void ioapic_mask(unsigned pin);
void ioapic_mask_all(void);

/* platform.c: CPUs, IOAPIC and ISA IRQ routing from the MP table, else the ACPI MADT */
struct isa_irq_route {
    uint32_t gsi;
    bool active_low;
    bool level;
};
struct platform {
    const char *source; /* "MP table", "ACPI MADT" or NULL */
    uint64_t table_addr;
    uint8_t cpu_apic_ids[MAX_CPUS];
    unsigned cpu_count;
    unsigned cpus_ignored; /* beyond MAX_CPUS */
    int bsp_index;         /* -1 when no entry is marked BSP (MADT has no such flag) */
    uint64_t ioapic_addr;
    uint8_t ioapic_id;
    bool has_ioapic;
    struct isa_irq_route isa_irq[16];
    bool isa_irq_listed[16];           /* the table said where this ISA IRQ goes */
    struct isa_irq_route pci_inta[32]; /* INTA# of PCI bus 0 slot n (MP table only) */
    bool pci_inta_listed[32];
    bool mp_found, acpi_found;
    uint64_t mp_addr, rsdp_addr;
};
extern struct platform platform;
void platform_discover(void);

/* smp.c */
struct smp_result {
    unsigned started;
    uint8_t reported_apic_id[MAX_CPUS];
    bool reported[MAX_CPUS];
    uint64_t start_us[MAX_CPUS]; /* INIT to report */
};
bool smp_start_cpus(struct smp_result *result);
/* Set before smp_start_cpus() to keep the APs busy: each calls it after reporting (on its own
 * AP_STACK_SIZE stack, interrupts off) instead of halting; halts if it returns. */
extern void (*smp_ap_continue)(void);

/* rtc.c */
struct rtc_time {
    unsigned second, minute, hour, day, month, year; /* year in full */
    uint8_t status_b;
    bool century_register_used;
};
bool rtc_read(struct rtc_time *time, char *error, size_t error_size);
uint64_t rtc_to_epoch(const struct rtc_time *time);

/* user.c: run fn(arg) at CPL3 and come back with its return value */
void user_mode_init(void);
uint64_t run_user(uint64_t (*fn)(uint64_t), uint64_t arg);

/* alloc.c: RAM after the image, never freed; physical address == pointer */
void *phys_alloc(size_t size, size_t align);
void *phys_alloc_zeroed(size_t size, size_t align);
uint64_t phys_free_bytes(void);

/* hash.c: the checksums the harness puts on the command line */
uint32_t fnv1a32(const void *data, size_t len);
uint32_t word_hash32(const void *data, size_t len);
/* POSIX cksum: crc = cksum_update(0, ...) over all the data, then cksum_final(crc, length). */
uint32_t cksum_update(uint32_t crc, const void *data, size_t len);
uint32_t cksum_final(uint32_t crc, uint64_t total_len);

#endif
