/* A port through which a test guest ends the VMM with a status of its
 * choosing: writing v exits with (v << 1) | 1, the convention test suites
 * already use with other VMMs, so the same guest runs everywhere. */
#ifndef EMBER_DEVICES_DEBUG_EXIT_H
#define EMBER_DEVICES_DEBUG_EXIT_H

#include <stdbool.h>
#include <stdint.h>

#define DEBUG_EXIT_PORT 0xf4
#define DEBUG_EXIT_SIZE 4

struct debug_exit {
    void (*on_exit)(void *opaque, int status);
    void *opaque;
};

void debug_exit_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);
/* The status a write of value v (len bytes wide) asks for. */
int debug_exit_status(uint32_t value);

#endif
