/* libFuzzer target: the legacy devices' register state machines (16550A
 * UART, i8042 with its keyboard, CMOS RTC) driven by a guest's port I/O of
 * every width and offset, interleaved with host-side events (console input,
 * Ctrl+Alt+Del). Input: a sequence of 4-byte operations
 *   [device | write<<2 | width<<3] [offset] [value lo] [value hi]
 * with host events on device 3. Invariants checked after each step: the
 * FIFOs' counts within their sizes, IRQ levels 0 or 1. */
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned resets, irq_changes;
static size_t output_bytes;

static void set_irq(void *opaque, int level)
{
    int *line = opaque;
    if (level != 0 && level != 1)
        abort();
    *line = level;
    irq_changes++;
}

static void output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)opaque;
    /* Touch every byte: ASan checks the device handed out valid memory. */
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < len; i++)
        sink ^= buf[i];
    (void)sink;
    output_bytes += len;
}

static void rx_space(void *opaque)
{
    (void)opaque;
}

static void on_reset(void *opaque)
{
    (void)opaque;
    resets++;
}

static time_t fixed_now(void)
{
    return 1700000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int serial_line = 0, kbd_line = 0;
    struct serial s;
    struct serial_ops ops = {
        .set_irq = set_irq, .output = output, .rx_space = rx_space, .opaque = &serial_line};
    serial_init(&s, &ops);
    struct i8042 kbd;
    i8042_init(&kbd, on_reset, NULL);
    i8042_connect_irq(&kbd, set_irq, &kbd_line);
    struct rtc rtc;
    rtc_init(&rtc, 128u << 20, 1ull << 30);
    rtc.now = fixed_now;

    /* Port I/O comes in 1, 2 and 4 bytes (vcpu.c refuses other sizes). */
    static const uint32_t widths[] = {1, 2, 4, 1};
    for (size_t i = 0; i + 4 <= size; i += 4) {
        uint8_t op = data[i], offset = data[i + 1];
        uint64_t value = (uint64_t)data[i + 2] | (uint64_t)data[i + 3] << 8;
        bool is_write = op & 4;
        uint32_t len = widths[(op >> 3) & 3];
        uint8_t buf[8];
        memcpy(buf, &value, sizeof(buf));
        switch (op & 3) {
        case 0:
            serial_io(&s, offset % 8, buf, len, is_write);
            break;
        case 1:
            if (offset & 1)
                i8042_command_io(&kbd, 0, buf, len, is_write);
            else
                i8042_data_io(&kbd, 0, buf, len, is_write);
            break;
        case 2:
            rtc_io(&rtc, offset % RTC_PORT_LEN, buf, len, is_write);
            break;
        default:
            /* Host side: console input of up to 255 bytes, or the keyboard's salute. */
            if (is_write) {
                uint8_t in[255];
                size_t n = offset;
                for (size_t k = 0; k < n; k++)
                    in[k] = (uint8_t)(value + k);
                if (serial_receive(&s, in, n) > n)
                    abort();
            } else {
                i8042_send_ctrl_alt_del(&kbd);
            }
            break;
        }
        if (s.rx_count > SERIAL_RX_FIFO || kbd.fifo_count > I8042_FIFO_SIZE ||
            serial_rx_space(&s) > SERIAL_RX_FIFO)
            abort();
    }
    serial_destroy(&s);
    return 0;
}
