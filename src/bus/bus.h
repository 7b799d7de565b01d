/* An address space (port I/O or MMIO) mapping non-overlapping ranges to
 * device handlers. Lookup is a binary search over a sorted array, under a
 * read lock so that ranges can move while vCPUs run (PCI BARs). */
#ifndef EMBER_BUS_BUS_H
#define EMBER_BUS_BUS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* offset is relative to the range's base; len is 1, 2, 4 or 8. */
typedef void (*bus_io_fn)(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                          bool is_write);

struct bus_range {
    uint64_t base;
    uint64_t len;
    bus_io_fn fn;
    void *opaque;
    const char *name;
};

struct bus {
    const char *name; /* "pio" or "mmio", for messages */
    pthread_rwlock_t lock;
    struct bus_range *ranges; /* sorted by base */
    unsigned count, capacity;
};

void bus_init(struct bus *bus, const char *name);
void bus_destroy(struct bus *bus);
/* Fails (with an error naming both devices) when [base, base+len) overlaps
 * a registered range, is empty or wraps. */
int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_io_fn fn, void *opaque,
                 const char *name);
/* Removes the range registered at exactly base for opaque. */
int bus_unregister(struct bus *bus, uint64_t base, void *opaque);
/* Calls the handler whose range holds all of [addr, addr+len), outside the
 * lock. Returns false when none does (reads are then filled with all-ones, as
 * on real buses). */
bool bus_dispatch(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write);

#endif
