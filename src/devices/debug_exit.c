#include "devices/debug_exit.h"

#include <string.h>

int debug_exit_status(uint32_t value)
{
    /* A process status keeps 8 bits, as with exit(). */
    return (int)(((value << 1) | 1) & 0xff);
}

void debug_exit_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct debug_exit *d = opaque;
    (void)offset;
    if (!is_write) {
        memset(data, 0, len);
        return;
    }
    uint32_t v = 0;
    memcpy(&v, data, len > 4 ? 4 : len);
    if (d->on_exit)
        d->on_exit(d->opaque, debug_exit_status(v));
}
