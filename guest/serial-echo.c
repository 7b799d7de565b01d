/* Echoes what arrives on COM1, line by line, taking each byte from the
 * UART's receive interrupt (IRQ 4 through the IOAPIC). A line "quit" ends
 * the VM through debug-exit (status 1), "reset" through the i8042 (0).
 * The host side (tests/console/) types into the VMM's stdin and reads the
 * echo from its stdout. */
#include "guest.h"
#include "io.h"

#define COM1        0x3f8
#define UART_IER    1
#define UART_FCR    2
#define UART_MCR    4
#define UART_LSR    5
#define IER_RDI     0x01
#define MCR_OUT2    0x08
#define LSR_DR      0x01
#define VECTOR_UART 0x50

static volatile uint8_t ring[256];
static volatile uint32_t ring_head, ring_tail;

static volatile bool throttled;

/* Takes what the UART holds; when the ring is full, leaves the rest in the
 * UART and masks its interrupt, so the host side has to wait (flow
 * control, not loss). */
static void on_uart(struct interrupt_frame *frame)
{
    (void)frame;
    while (inb(COM1 + UART_LSR) & LSR_DR) {
        if (ring_head - ring_tail == sizeof(ring)) {
            outb(COM1 + UART_IER, 0);
            throttled = true;
            break;
        }
        ring[ring_head++ % sizeof(ring)] = inb(COM1);
    }
    lapic_eoi();
}

static int next_byte(void)
{
    while (ring_tail == ring_head)
        __asm__ volatile("sti; hlt; cli");
    int c = ring[ring_tail++ % sizeof(ring)];
    if (throttled) {
        throttled = false;
        outb(COM1 + UART_IER, IER_RDI); /* room again: what waits raises the line */
    }
    return c;
}

void guest_main(void)
{
    platform_discover();
    if (!platform.has_ioapic)
        bail_out("no IOAPIC in the MP table or MADT");
    lapic_enable();
    const struct isa_irq_route *r = &platform.isa_irq[4];
    interrupt_set_handler(VECTOR_UART, on_uart);
    ioapic_route(r->gsi, VECTOR_UART, lapic_id(), r->level, r->active_low);
    outb(COM1 + UART_FCR, 0x01); /* FIFOs on; what already arrived stays */
    outb(COM1 + UART_MCR, MCR_OUT2);
    outb(COM1 + UART_IER, IER_RDI);
    printf("serial-echo: ready (IRQ 4 -> GSI %u)\n", r->gsi);
    char line[128];
    size_t len = 0;
    for (;;) {
        int c = next_byte();
        if (c == '\r' || c == '\n') {
            line[len] = '\0';
            if (len)
                printf("echo: %s\n", line);
            if (len == 4 && !strncmp(line, "quit", 4))
                debug_exit(0);
            if (len == 5 && !strncmp(line, "reset", 5))
                i8042_reset();
            len = 0;
        } else if (len < sizeof(line) - 1) {
            line[len++] = (char)c;
        }
    }
}
