/* A 16550A-compatible UART (8 registers). Bytes the guest transmits go to
 * an output callback; bytes from the host are queued for the guest with
 * back-pressure (never dropped). */
#ifndef EMBER_DEVICES_SERIAL_H
#define EMBER_DEVICES_SERIAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SERIAL_COM1_BASE 0x3f8
#define SERIAL_COM1_IRQ  4
#define SERIAL_RX_FIFO   64

struct snapshot_writer;
struct snapshot_cursor;

struct serial_ops {
    void (*set_irq)(void *opaque, int level);
    void (*output)(void *opaque, const uint8_t *buf, size_t len);
    /* Called (under no lock) when the receive FIFO had been full and now has
     * room, so the host side may offer more input. */
    void (*rx_space)(void *opaque);
    void *opaque;
};

struct serial {
    pthread_mutex_t lock;
    struct serial_ops ops;
    uint8_t ier, lcr, mcr, lsr_errors, msr, scr, dll, dlm, fcr;
    bool thri; /* transmitter-empty interrupt is pending */
    int irq_level;
    bool rx_was_full;
    uint8_t rx[SERIAL_RX_FIFO];
    unsigned rx_head, rx_count;
    uint64_t tx_bytes, rx_bytes;
};

void serial_init(struct serial *s, const struct serial_ops *ops);
void serial_destroy(struct serial *s);
/* Register access (offset 0-7), as the bus calls it. */
void serial_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* Queues up to len bytes of host input; returns how many were taken. */
size_t serial_receive(struct serial *s, const uint8_t *buf, size_t len);
size_t serial_rx_space(struct serial *s);

/* Snapshot of the guest-visible registers and the receive FIFO, into the section the caller
 * opened (docs/snapshot-format.md). The callbacks, the host's flow control and the counters
 * belong to the device being restored into (one serial_init made), which keeps them. */
void serial_save(struct serial *s, struct snapshot_writer *w);
/* Reads and checks the whole section (its end included) before changing anything: on
 * failure the device is as it was and error_get() names the field. Then drives the
 * interrupt line to the restored level through set_irq. */
int serial_restore(struct serial *s, struct snapshot_cursor *c);

#endif
