/* The 8259 PIC pair and the 8254 PIT. */
#include "guest.h"
#include "io.h"

#define PIC1_COMMAND 0x20
#define PIC1_DATA    0x21
#define PIC2_COMMAND 0xa0
#define PIC2_DATA    0xa1
#define PIC_EOI      0x20

#define PIT_CHANNEL0 0x40
#define PIT_COMMAND  0x43

void pic_init(void)
{
    /* ICW1-4: cascade, edge, vectors 0x20-0x2f (away from exceptions), 8086 mode. */
    outb(PIC1_COMMAND, 0x11);
    outb(PIC2_COMMAND, 0x11);
    outb(PIC1_DATA, VECTOR_PIC_BASE);
    outb(PIC2_DATA, VECTOR_PIC_BASE + 8);
    outb(PIC1_DATA, 0x04); /* slave on IRQ2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    pic_mask_all();
}

void pic_mask_all(void)
{
    outb(PIC1_DATA, 0xff);
    outb(PIC2_DATA, 0xff);
}

void pic_set_mask(uint8_t irq, bool masked)
{
    uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;
    uint8_t bit = (uint8_t)(1u << (irq & 7));
    uint8_t mask = inb(port);
    outb(port, masked ? mask | bit : mask & ~bit);
    if (!masked && irq >= 8)
        pic_set_mask(2, false); /* the cascade line */
}

void pic_eoi(uint8_t irq)
{
    if (irq >= 8)
        outb(PIC2_COMMAND, PIC_EOI);
    outb(PIC1_COMMAND, PIC_EOI);
}

void pit_start_periodic(uint32_t hz)
{
    uint32_t divisor = PIT_HZ / hz;
    outb(PIT_COMMAND, 0x34); /* channel 0, low then high byte, mode 2 (rate generator) */
    outb(PIT_CHANNEL0, (uint8_t)divisor);
    outb(PIT_CHANNEL0, (uint8_t)(divisor >> 8));
}

void pit_stop(void)
{
    /* Mode 0 with the longest count: at most one more edge, 55 ms from now. */
    outb(PIT_COMMAND, 0x30);
    outb(PIT_CHANNEL0, 0xff);
    outb(PIT_CHANNEL0, 0xff);
}

uint16_t pit_read_counter0(void)
{
    outb(PIT_COMMAND, 0x00); /* latch channel 0 */
    uint8_t lo = inb(PIT_CHANNEL0);
    uint8_t hi = inb(PIT_CHANNEL0);
    return (uint16_t)(hi << 8 | lo);
}
