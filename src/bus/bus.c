#include "bus/bus.h"

#include "util/error.h"

#include <stdlib.h>
#include <string.h>

void bus_init(struct bus *bus, const char *name)
{
    memset(bus, 0, sizeof(*bus));
    bus->name = name;
    pthread_rwlock_init(&bus->lock, NULL);
}

void bus_destroy(struct bus *bus)
{
    free(bus->ranges);
    pthread_rwlock_destroy(&bus->lock);
    bus->ranges = NULL;
    bus->count = bus->capacity = 0;
}

/* Index of the first range whose base is greater than addr. */
static unsigned upper_bound(const struct bus *bus, uint64_t addr)
{
    unsigned lo = 0, hi = bus->count;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (bus->ranges[mid].base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int bus_register(struct bus *bus, uint64_t base, uint64_t len, bus_io_fn fn, void *opaque,
                 const char *name)
{
    if (len == 0 || base + len < base)
        return error_set("%s bus: invalid range 0x%llx+0x%llx for %s", bus->name,
                         (unsigned long long)base, (unsigned long long)len, name);
    pthread_rwlock_wrlock(&bus->lock);
    unsigned pos = upper_bound(bus, base);
    const struct bus_range *prev = pos > 0 ? &bus->ranges[pos - 1] : NULL;
    const struct bus_range *next = pos < bus->count ? &bus->ranges[pos] : NULL;
    const struct bus_range *clash = NULL;
    if (prev && base - prev->base < prev->len)
        clash = prev;
    else if (next && next->base - base < len)
        clash = next;
    if (clash) {
        pthread_rwlock_unlock(&bus->lock);
        return error_set("%s bus: %s at 0x%llx+0x%llx overlaps %s at 0x%llx+0x%llx", bus->name,
                         name, (unsigned long long)base, (unsigned long long)len, clash->name,
                         (unsigned long long)clash->base, (unsigned long long)clash->len);
    }
    if (bus->count == bus->capacity) {
        unsigned cap = bus->capacity ? bus->capacity * 2 : 16;
        struct bus_range *r = realloc(bus->ranges, cap * sizeof(*r));
        if (!r) {
            pthread_rwlock_unlock(&bus->lock);
            return error_set("out of memory");
        }
        bus->ranges = r;
        bus->capacity = cap;
    }
    memmove(&bus->ranges[pos + 1], &bus->ranges[pos], (bus->count - pos) * sizeof(bus->ranges[0]));
    bus->ranges[pos] =
        (struct bus_range){.base = base, .len = len, .fn = fn, .opaque = opaque, .name = name};
    bus->count++;
    pthread_rwlock_unlock(&bus->lock);
    return 0;
}

int bus_unregister(struct bus *bus, uint64_t base, void *opaque)
{
    pthread_rwlock_wrlock(&bus->lock);
    unsigned pos = upper_bound(bus, base);
    if (pos == 0 || bus->ranges[pos - 1].base != base || bus->ranges[pos - 1].opaque != opaque) {
        pthread_rwlock_unlock(&bus->lock);
        return error_set("%s bus: nothing registered at 0x%llx", bus->name,
                         (unsigned long long)base);
    }
    pos--;
    memmove(&bus->ranges[pos], &bus->ranges[pos + 1],
            (bus->count - pos - 1) * sizeof(bus->ranges[0]));
    bus->count--;
    pthread_rwlock_unlock(&bus->lock);
    return 0;
}

bool bus_dispatch(struct bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write)
{
    struct bus_range hit = {0};
    pthread_rwlock_rdlock(&bus->lock);
    unsigned pos = upper_bound(bus, addr);
    if (pos > 0) {
        const struct bus_range *r = &bus->ranges[pos - 1];
        uint64_t off = addr - r->base;
        if (off < r->len && len <= r->len - off)
            hit = *r;
    }
    pthread_rwlock_unlock(&bus->lock);
    /* The handler runs outside the lock so that it may move ranges (a PCI
     * BAR write); devices live as long as the VM, so the copy stays valid. */
    if (!hit.fn) {
        if (!is_write)
            memset(data, 0xff, len);
        return false;
    }
    hit.fn(hit.opaque, addr - hit.base, data, len, is_write);
    return true;
}
