#include "devices/i8042.h"

#include <string.h>

#define STATUS_OUTPUT_FULL 0x01
#define STATUS_SYSTEM      0x04 /* self-test passed */
#define STATUS_COMMAND     0x08 /* last write was to the command port */

#define CMD_READ_COMMAND_BYTE  0x20
#define CMD_WRITE_COMMAND_BYTE 0x60
#define CMD_SELF_TEST          0xaa
#define CMD_INTERFACE_TEST     0xab
#define CMD_WRITE_OUTPUT_PORT  0xd1
#define CMD_PULSE_RESET        0xfe

void i8042_init(struct i8042 *c, void (*on_reset)(void *), void *opaque)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    c->on_reset = on_reset;
    c->opaque = opaque;
    c->command_byte = 0x45; /* translate, system flag, keyboard interrupt */
}

static void put_output(struct i8042 *c, uint8_t v)
{
    c->output = v;
    c->output_full = true;
}

void i8042_command_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct i8042 *c = opaque;
    (void)offset;
    if (len != 1) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    bool reset = false;
    pthread_mutex_lock(&c->lock);
    if (!is_write) {
        /* The input buffer is never full: writers need not wait. */
        data[0] = STATUS_SYSTEM | (c->output_full ? STATUS_OUTPUT_FULL : 0) |
                  (c->pending_command ? STATUS_COMMAND : 0);
    } else {
        c->pending_command = 0;
        switch (data[0]) {
        case CMD_READ_COMMAND_BYTE:
            put_output(c, c->command_byte);
            break;
        case CMD_WRITE_COMMAND_BYTE:
        case CMD_WRITE_OUTPUT_PORT:
            c->pending_command = data[0];
            break;
        case CMD_SELF_TEST:
            put_output(c, 0x55);
            break;
        case CMD_INTERFACE_TEST:
            put_output(c, 0x00);
            break;
        case CMD_PULSE_RESET:
            reset = true;
            break;
        default:
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (reset && c->on_reset)
        c->on_reset(c->opaque);
}

void i8042_data_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct i8042 *c = opaque;
    (void)offset;
    if (len != 1) {
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    bool reset = false;
    pthread_mutex_lock(&c->lock);
    if (!is_write) {
        data[0] = c->output;
        c->output_full = false;
    } else if (c->pending_command == CMD_WRITE_COMMAND_BYTE) {
        c->command_byte = data[0];
        c->pending_command = 0;
    } else if (c->pending_command == CMD_WRITE_OUTPUT_PORT) {
        /* Bit 0 of the output port is the CPU reset line (active low). */
        reset = !(data[0] & 1);
        c->pending_command = 0;
    }
    pthread_mutex_unlock(&c->lock);
    if (reset && c->on_reset)
        c->on_reset(c->opaque);
}
