/* virtio-console (virtio 1.2, 5.3) with one port: the guest's hvc0. Output
 * goes to a sink (ember's stdout); input comes from the host side through
 * a small buffer, with back-pressure when the guest has no buffers. */
#ifndef EMBER_VIRTIO_CONSOLE_H
#define EMBER_VIRTIO_CONSOLE_H

#include "virtio/device.h"

#include <pthread.h>

#define VIRTIO_CONSOLE_INPUT_BUF 4096

struct virtio_console {
    struct virtio_dev dev;
    struct virtq_chain chain;
    void (*output)(void *opaque, const uint8_t *buf, size_t len);
    void (*input_space)(void *opaque); /* host may offer input again */
    void *opaque;
    /* Host input waiting for receive buffers; producer: any thread. */
    pthread_mutex_t input_lock;
    uint8_t input[VIRTIO_CONSOLE_INPUT_BUF];
    size_t input_head, input_len;
    bool input_was_full;
    int input_fd; /* eventfd: input arrived */
    struct event_handler *input_handler;
    uint16_t cols, rows;
    uint64_t tx_bytes, rx_bytes;
};

int virtio_console_init(struct virtio_console *c, const struct guest_memory *mem,
                        void (*output)(void *, const uint8_t *, size_t),
                        void (*input_space)(void *), void *opaque);
void virtio_console_destroy(struct virtio_console *c);
/* Offers host input; returns how many bytes were taken (any thread). */
size_t virtio_console_receive(struct virtio_console *c, const uint8_t *buf, size_t len);

#endif
