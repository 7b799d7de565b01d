/* The PS/2 controller (i8042) with a keyboard behind it: enough for a
 * guest to reset the machine (Linux's reboot=k: command 0xfe to port
 * 0x64) and for the host to type keys into the guest (Ctrl+Alt+Del, as
 * Firecracker's SendCtrlAltDel does). Keyboard bytes wait in a small FIFO
 * and raise IRQ 1 while the output buffer is full and the guest enabled
 * keyboard interrupts. No mouse (aux port). */
#ifndef EMBER_DEVICES_I8042_H
#define EMBER_DEVICES_I8042_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define I8042_DATA_PORT    0x60
#define I8042_COMMAND_PORT 0x64
#define I8042_KBD_IRQ      1
#define I8042_FIFO_SIZE    16

struct snapshot_writer;
struct snapshot_cursor;

struct i8042 {
    pthread_mutex_t lock;
    void (*on_reset)(void *opaque);
    void *opaque;
    void (*set_irq)(void *opaque, int level);
    void *irq_opaque;
    int irq_level;
    uint8_t command_byte;
    uint8_t pending_command;       /* controller command waiting for its data byte */
    uint8_t pending_kbd_command;   /* keyboard command waiting for its argument */
    uint8_t fifo[I8042_FIFO_SIZE]; /* bytes for the guest, oldest first */
    unsigned fifo_head, fifo_count;
    uint8_t scancode_set; /* what the keyboard says it sends (1-3); ember sends set 2 */
    uint64_t keys_sent, bytes_dropped;
    /* The guest's port accesses: byte-wide ones served, wider ones ignored; resets it asked for. */
    uint64_t reads, writes, missed_reads, missed_writes, resets;
};

void i8042_init(struct i8042 *c, void (*on_reset)(void *), void *opaque);
/* Where IRQ 1 goes (called with the new line level, under the device lock). */
void i8042_connect_irq(struct i8042 *c, void (*set_irq)(void *, int), void *opaque);
/* Bus handlers for the data (0x60) and command/status (0x64) ports. */
void i8042_data_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
void i8042_command_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* Presses and releases Ctrl, Alt and Delete, as a keyboard would (any
 * thread). Returns false if the FIFO had no room for the whole sequence. */
bool i8042_send_ctrl_alt_del(struct i8042 *c);

/* Snapshot of the controller and keyboard state the guest sees (command byte, pending
 * commands, scancode set, the output FIFO as it lies in its ring), into the section the
 * caller opened (docs/snapshot-format.md). The reset and IRQ callbacks and the counters
 * belong to the device restored into (made by i8042_init and i8042_connect_irq). */
void i8042_save(struct i8042 *c, struct snapshot_writer *w);
/* Reads and checks the whole section (its end included) before changing anything: on
 * failure the device is as it was and error_get() names the field. Then drives IRQ 1 to
 * the restored level through set_irq. */
int i8042_restore(struct i8042 *c, struct snapshot_cursor *cur);

#endif
