/*
 * The guest of the snapshot tests: a machine whose whole state shows in its output, so that a
 * restored copy can be checked against the moment it was saved.
 *
 * Every vCPU runs a loop at CPL3 (native speed on the nested test hosts, where CPL0 code is
 * emulated) that increments its own 64-bit counter, and counts its own LAPIC timer interrupts
 * (periodic, 100 Hz). The BSP's loop also runs memory rounds: round R verifies, page by page,
 * the pattern round R-1 left in snap_pages= pages (default 1024, 4 KiB each) spread evenly over
 * all of RAM above the image, then writes round R's pattern there. A page lost, stale or from
 * another machine after a restore fails the next verification.
 *
 * Output (COM1), one line every 10th tick of the BSP (~100 ms), from its timer interrupt:
 *   snapcount: start cpus=N pages=P first=0xA last=0xB
 *   snapcount: round R cpu0=C ticks0=T cpu1=C ticks1=T ... nmis=N tsc=S ok
 * R is the last completed round, C and T each vCPU's counter and tick count, N the NMIs all
 * vCPUs took, S the BSP's TSC. On a
 * failure: snapcount: MISMATCH page 0xADDR index I round R word W expected 0xX got 0xY snapcount:
 * FAIL reason then debug-exit 1 (without a debug-exit port the guest halts).
 */
#include "guest.h"
#include "io.h"

#define TICK_HZ            100
#define STATUS_EVERY_TICKS 10
#define DEFAULT_PAGES      1024
#define MAX_PAGES          65536
#define PAGE_SIZE          4096
#define PAGE_WORDS         (PAGE_SIZE / 8)
#define KERNEL_STACK_SIZE  16384
#define USER_STACK_SIZE    16384
#define VECTOR_NMI         2
#define VECTOR_UD          6
#define RFLAGS_IF          0x200
#define RFLAGS_RESERVED    0x2
#define UNCACHED_START     0xfe000000ull /* the identity map's uncached top 32 MiB */
#define PATTERN_STEP       0x9e3779b97f4a7c15ull

struct __attribute__((packed)) tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;
};

/* A cache line per vCPU: the counters are written at full speed by different CPUs. */
struct cpu_slot {
    volatile uint64_t count;
    volatile uint64_t ticks;
    volatile uint64_t nmis;
    uint64_t kernel_stack_top, user_stack_top;
    uint64_t gdt[8];
    struct tss64 tss;
} __attribute__((aligned(64)));

struct mismatch {
    uint64_t page, index, round, word, expected, got;
};

extern uint64_t gdt[]; /* boot.S: null, code64, data, code32, user data, user code64, TSS */

static struct cpu_slot cpus[MAX_CPUS];
static unsigned cpu_count;
static uint8_t index_of_apic_id[256];
static uint64_t lapic_mmio;
static uint32_t tick_initial_count;
static uint64_t *pages;
static unsigned page_count;
static volatile uint64_t rounds_done;
static volatile struct mismatch mismatch;
static volatile bool mismatch_found;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Word w of page i in round r holds pattern_base(r, i) + w * PATTERN_STEP: every round and every
 * page differ, so an old copy of a page never passes for the new one. */
static uint64_t pattern_base(uint64_t round, uint64_t index)
{
    return mix64(round * 0x100000001b3ull ^ index << 40 ^ 0x5eed);
}

static inline uint32_t apic_read(uint32_t reg)
{
    return mmio_read32(lapic_mmio + reg);
}

static inline void apic_write(uint32_t reg, uint32_t value)
{
    mmio_write32(lapic_mmio + reg, value);
}

static unsigned this_cpu(void)
{
    return index_of_apic_id[apic_read(LAPIC_ID) >> 24];
}

_Noreturn static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn static void fail(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    printf("snapcount: FAIL ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    debug_exit(1);
}

/* ---- CPL3: the loops ---------------------------------------------------------------------- */

/* A mismatch is reported from CPL0 (ports): the loop records it and executes ud2, which
 * ud_handler() recognises by the flag. */
static void report_mismatch(uint64_t page, uint64_t index, uint64_t round, uint64_t word,
                            uint64_t expected, uint64_t got)
{
    mismatch.page = page;
    mismatch.index = index;
    mismatch.round = round;
    mismatch.word = word;
    mismatch.expected = expected;
    mismatch.got = got;
    mismatch_found = true;
    __asm__ volatile("ud2" ::: "memory");
}

static void bsp_loop(uint64_t cpu)
{
    volatile uint64_t *count = &cpus[cpu].count;
    for (;;) {
        uint64_t round = rounds_done + 1;
        for (unsigned i = 0; i < page_count; i++) {
            volatile uint64_t *page = (volatile uint64_t *)pages[i];
            if (round > 1) {
                uint64_t value = pattern_base(round - 1, i);
                for (unsigned w = 0; w < PAGE_WORDS; w++, value += PATTERN_STEP) {
                    uint64_t got = page[w];
                    if (got != value)
                        report_mismatch(pages[i], i, round - 1, w, value, got);
                }
            }
            uint64_t value = pattern_base(round, i);
            for (unsigned w = 0; w < PAGE_WORDS; w++, value += PATTERN_STEP)
                page[w] = value;
            *count = *count + 1;
        }
        rounds_done = round;
    }
}

static void ap_loop(uint64_t cpu)
{
    volatile uint64_t *count = &cpus[cpu].count;
    for (;;)
        *count = *count + 1;
}

/* ---- CPL0: interrupts ---------------------------------------------------------------------- */

static void print_status(void)
{
    char line[64 + MAX_CPUS * 48];
    size_t n = (size_t)snprintf(line, sizeof(line), "snapcount: round %lu", rounds_done);
    for (unsigned i = 0; i < cpu_count && n < sizeof(line); i++)
        n += (size_t)snprintf(line + n, sizeof(line) - n, " cpu%u=%lu ticks%u=%lu", i,
                              cpus[i].count, i, cpus[i].ticks);
    uint64_t nmis = 0;
    for (unsigned i = 0; i < cpu_count; i++)
        nmis += cpus[i].nmis;
    printf("%s nmis=%lu tsc=%lu ok\n", line, nmis, rdtsc());
}

static void timer_tick(struct interrupt_frame *frame)
{
    (void)frame;
    unsigned cpu = this_cpu();
    uint64_t ticks = cpus[cpu].ticks + 1;
    cpus[cpu].ticks = ticks;
    if (cpu == 0 && ticks % STATUS_EVERY_TICKS == 0)
        print_status();
    apic_write(LAPIC_EOI, 0);
}

/* An NMI from the VMM (PUT /vm/nmi), counted: one per vCPU per request. */
static void nmi_handler(struct interrupt_frame *frame)
{
    (void)frame;
    cpus[this_cpu()].nmis++;
}

static void ud_handler(struct interrupt_frame *frame)
{
    if ((frame->cs & 3) != 3 || !mismatch_found)
        exception_report(frame);
    printf("snapcount: MISMATCH page 0x%lx index %lu round %lu word %lu expected 0x%lx got 0x%lx\n",
           mismatch.page, mismatch.index, mismatch.round, mismatch.word, mismatch.expected,
           mismatch.got);
    fail("memory changed behind the guest's back");
}

/* ---- CPL0: set-up ------------------------------------------------------------------------ */

/* Each vCPU gets its own GDT copy with its own TSS: ltr marks the descriptor busy, and an
 * interrupt at CPL3 needs this vCPU's kernel stack in rsp0. */
static void cpu_load_tss(unsigned cpu)
{
    struct cpu_slot *s = &cpus[cpu];
    memcpy(s->gdt, gdt, 6 * sizeof(uint64_t));
    s->tss.rsp[0] = s->kernel_stack_top;
    s->tss.iomap_base = sizeof(s->tss); /* no I/O bitmap: CPL3 port access faults */
    uint64_t base = (uint64_t)&s->tss, limit = sizeof(s->tss) - 1;
    s->gdt[SEL_TSS / 8] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89ull << 40 |
                          ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
    s->gdt[SEL_TSS / 8 + 1] = base >> 32;
    struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } pointer = {sizeof(s->gdt) - 1, (uint64_t)s->gdt};
    /* The same selectors describe the same segments: no segment register needs reloading. */
    __asm__ volatile("lgdt %0" : : "m"(pointer) : "memory");
    __asm__ volatile("ltr %w0" : : "r"(SEL_TSS));
}

static void start_timer(void)
{
    apic_write(LAPIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
    apic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | VECTOR_LAPIC_TIMER);
    apic_write(LAPIC_TIMER_INITIAL, tick_initial_count);
}

/* iretq to fn(cpu) at CPL3 with interrupts on; the loops never return. */
_Noreturn static void enter_user(void (*fn)(uint64_t), unsigned cpu)
{
    uint64_t rsp = cpus[cpu].user_stack_top - 8; /* as after a call: rsp + 8 aligned to 16 */
    __asm__ volatile(
        "pushq %[ss]\n\t"
        "pushq %[rsp]\n\t"
        "pushq %[flags]\n\t"
        "pushq %[cs]\n\t"
        "pushq %[rip]\n\t"
        "iretq"
        :
        : [ss] "i"(SEL_USER_DATA), [rsp] "r"(rsp), [flags] "i"(RFLAGS_IF | RFLAGS_RESERVED),
          [cs] "i"(SEL_USER_CODE64), [rip] "r"(fn), "D"((uint64_t)cpu)
        : "memory");
    __builtin_unreachable();
}

static void ap_continue(void)
{
    unsigned cpu = this_cpu();
    cpu_load_tss(cpu);
    start_timer();
    enter_user(ap_loop, cpu);
}

static uint32_t measure_timer_10ms(void)
{
    if (!tsc_calibrate())
        fail("cannot calibrate the TSC: PIT channel 0 does not count");
    apic_write(LAPIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
    apic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    apic_write(LAPIC_TIMER_INITIAL, 0xffffffff);
    udelay(10000);
    uint32_t counted = 0xffffffffu - apic_read(LAPIC_TIMER_CURRENT);
    apic_write(LAPIC_TIMER_INITIAL, 0);
    return counted;
}

/* RAM the guest may scribble on: above `from`, below the uncached top of the identity map. */
static uint64_t usable_ram(uint64_t from, uint64_t index_offset, uint64_t *page_at)
{
    uint64_t total = 0;
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type != MEMORY_RAM)
            continue;
        uint64_t lo =
            ((r->base > from ? r->base : from) + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
        uint64_t hi = (r->base + r->size < UNCACHED_START ? r->base + r->size : UNCACHED_START) &
                      ~(uint64_t)(PAGE_SIZE - 1);
        if (hi <= lo)
            continue;
        if (page_at && index_offset >= total && index_offset < total + (hi - lo))
            *page_at = lo + (index_offset - total);
        total += hi - lo;
    }
    return total;
}

static void choose_pages(void)
{
    uint64_t wanted = DEFAULT_PAGES;
    if (cmdline_get_u64("snap_pages", &wanted) && (wanted == 0 || wanted > MAX_PAGES))
        fail("snap_pages=%lu: 1 to %u", wanted, MAX_PAGES);
    pages = phys_alloc(wanted * sizeof(uint64_t), 64);
    uint64_t from = (uint64_t)phys_alloc(PAGE_SIZE, PAGE_SIZE); /* nothing is allocated after */
    uint64_t total = usable_ram(from, 0, NULL);
    if (total / PAGE_SIZE < wanted)
        fail("%lu pages wanted, %lu pages of RAM free", wanted, total / PAGE_SIZE);
    uint64_t stride = total / wanted & ~(uint64_t)(PAGE_SIZE - 1);
    page_count = (unsigned)wanted;
    for (unsigned i = 0; i < page_count; i++) {
        pages[i] = 0;
        usable_ram(from, i * stride, &pages[i]);
        if (!pages[i])
            fail("no page at offset 0x%lx of free RAM", i * stride);
    }
}

void guest_main(void)
{
    platform_discover();
    if (!platform.cpu_count)
        fail("no CPU list: neither an MP table nor an ACPI MADT");
    if (platform.cpus_ignored)
        fail("more than %u CPUs", MAX_CPUS);
    lapic_enable();
    lapic_mmio = lapic_base();
    uint8_t bsp_id = lapic_id();
    /* The BSP is cpu0 whatever its place in the table; the APs follow in table order. */
    cpu_count = 1;
    index_of_apic_id[bsp_id] = 0;
    for (unsigned i = 0; i < platform.cpu_count; i++)
        if (platform.cpu_apic_ids[i] != bsp_id)
            index_of_apic_id[platform.cpu_apic_ids[i]] = (uint8_t)cpu_count++;
    if (cpu_count != platform.cpu_count)
        fail("the BSP (APIC id %u) is not in the CPU list", bsp_id);

    uint32_t per_10ms = measure_timer_10ms();
    if (per_10ms < 100)
        fail("the LAPIC timer does not count (%u in 10 ms)", per_10ms);
    tick_initial_count = (uint32_t)((uint64_t)per_10ms * 100 / TICK_HZ);

    for (unsigned i = 0; i < cpu_count; i++) {
        cpus[i].kernel_stack_top = (uint64_t)phys_alloc(KERNEL_STACK_SIZE, 16) + KERNEL_STACK_SIZE;
        cpus[i].user_stack_top = (uint64_t)phys_alloc(USER_STACK_SIZE, 16) + USER_STACK_SIZE;
    }
    choose_pages();
    interrupt_set_handler(VECTOR_LAPIC_TIMER, timer_tick);
    interrupt_set_handler(VECTOR_UD, ud_handler);
    interrupt_set_handler(VECTOR_NMI, nmi_handler);

    smp_ap_continue = ap_continue;
    struct smp_result result;
    if (!smp_start_cpus(&result) || result.started != cpu_count)
        fail("%u of %u CPUs started", result.started, cpu_count);
    printf("snapcount: start cpus=%u pages=%u first=0x%lx last=0x%lx tsc_khz=%lu "
           "lapic_timer_khz=%u\n",
           cpu_count, page_count, pages[0], pages[page_count - 1], tsc_hz / 1000, per_10ms / 10);
    cpu_load_tss(0);
    start_timer();
    enter_user(bsp_loop, 0);
}
