/* Waits for Ctrl+Alt+Del from the i8042 keyboard (IRQ 1 through the PIC), as the VMM's
 * SendCtrlAltDel delivers it, then powers off through the i8042. Meanwhile it prints a tick
 * line every second (PIT, IRQ 0), so that a test can see it run, pause and resume. It runs
 * until the keys arrive: tests drive it through ember's API. */
#include "guest.h"
#include "io.h"

#define TICK_HZ 100

static volatile uint64_t ticks;
static volatile bool ctrl, alt, extended, saw_ctrl_alt_del;
static volatile unsigned scancodes;

static void on_tick(struct interrupt_frame *frame)
{
    (void)frame;
    ticks++;
    pic_eoi(0);
}

/* Scancode set 1, as the controller delivers it with translation on (its default). */
static void on_key(struct interrupt_frame *frame)
{
    (void)frame;
    while (inb(0x64) & 1) {
        uint8_t code = inb(0x60);
        scancodes++;
        if (code == 0xe0) {
            extended = true;
            continue;
        }
        bool release = code & 0x80;
        uint8_t key = code & 0x7f;
        if (key == 0x1d)
            ctrl = !release;
        else if (key == 0x38)
            alt = !release;
        else if (key == 0x53 && extended && !release && ctrl && alt)
            saw_ctrl_alt_del = true;
        extended = false;
    }
    pic_eoi(1);
}

void guest_main(void)
{
    printf("1..1\n");
    lapic_enable();
    ioapic_mask_all();
    lapic_write(LAPIC_LVT_LINT0, LVT_EXTINT); /* virtual wire: the PIC reaches the BSP */
    pic_init();
    interrupt_set_handler(VECTOR_PIC_BASE + 0, on_tick);
    interrupt_set_handler(VECTOR_PIC_BASE + 1, on_key);
    /* Keyboard interrupts on, translation on (what Linux leaves set). */
    outb(0x64, 0x60);
    outb(0x60, 0x45);
    pic_set_mask(0, false);
    pic_set_mask(1, false);
    pit_start_periodic(TICK_HZ);
    printf("# keyboard: waiting for Ctrl+Alt+Del\n");
    uint64_t next_report = TICK_HZ;
    for (;;) {
        __asm__ volatile("cli");
        if (saw_ctrl_alt_del)
            break;
        if (ticks >= next_report) {
            printf("# tick %lu\n", (unsigned long)(ticks / TICK_HZ));
            next_report += TICK_HZ;
            continue;
        }
        __asm__ volatile("sti; hlt");
    }
    pit_stop();
    printf("ok 1 - received Ctrl+Alt+Del (%u scancode bytes)\n", scancodes);
    i8042_reset();
    debug_exit(0);
}
