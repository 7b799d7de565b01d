/* Just enough of the PS/2 controller for a guest to reset the machine
 * (Linux's reboot=k: command 0xfe to port 0x64). No keyboard or mouse. */
#ifndef EMBER_DEVICES_I8042_H
#define EMBER_DEVICES_I8042_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define I8042_DATA_PORT    0x60
#define I8042_COMMAND_PORT 0x64

struct i8042 {
    pthread_mutex_t lock;
    void (*on_reset)(void *opaque);
    void *opaque;
    uint8_t command_byte;
    uint8_t pending_command; /* command waiting for its data byte */
    bool output_full;
    uint8_t output;
};

void i8042_init(struct i8042 *c, void (*on_reset)(void *), void *opaque);
/* Bus handlers for the data (0x60) and command/status (0x64) ports. */
void i8042_data_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
void i8042_command_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);

#endif
