#include "virtio/queue.h"

#include "util/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtio rings are little-endian");

/* Guest memory can change under us: read each shared field exactly once. */
#define READ_ONCE(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define WRITE_ONCE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

static int violation(struct virtq *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int violation(struct virtq *q, const char *fmt, ...)
{
    if (!q->broken) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(q->error, sizeof(q->error), fmt, ap);
        va_end(ap);
        q->broken = true;
    }
    return -1;
}

static int init_packed(struct virtq *q, const struct virtq_config *cfg)
{
    uint32_t n = cfg->size;
    /* Any size up to 32768 (2.8.10.1); the areas are 4-byte structures. */
    if (n == 0 || n > VIRTQ_MAX_SIZE)
        return error_set("queue size %u is not between 1 and %u", n, VIRTQ_MAX_SIZE);
    if (cfg->desc_gpa % 16 || cfg->avail_gpa % 4 || cfg->used_gpa % 4)
        return error_set("packed ring misaligned (desc 0x%llx, driver 0x%llx, device 0x%llx)",
                         (unsigned long long)cfg->desc_gpa, (unsigned long long)cfg->avail_gpa,
                         (unsigned long long)cfg->used_gpa);
    q->pdesc = gpa_to_hva(q->mem, cfg->desc_gpa, 16ULL * n);
    q->driver_event = gpa_to_hva(q->mem, cfg->avail_gpa, 4);
    q->device_event = gpa_to_hva(q->mem, cfg->used_gpa, 4);
    if (!q->pdesc || !q->driver_event || !q->device_event)
        return error_set("packed ring outside guest RAM (desc 0x%llx, driver 0x%llx, device "
                         "0x%llx, size %u)",
                         (unsigned long long)cfg->desc_gpa, (unsigned long long)cfg->avail_gpa,
                         (unsigned long long)cfg->used_gpa, n);
    q->packed = true;
    q->size = (uint16_t)n;
    /* Both wrap counters start at 1 (2.8.1). */
    q->avail_wrap = q->used_wrap = true;
    q->signalled_wrap = true;
    return 0;
}

int virtq_init(struct virtq *q, const struct guest_memory *mem, const struct virtq_config *cfg,
               bool event_idx, bool indirect)
{
    memset(q, 0, sizeof(*q));
    q->mem = mem;
    q->event_idx = event_idx;
    q->indirect = indirect;
    if (cfg->packed)
        return init_packed(q, cfg);
    uint32_t n = cfg->size;
    if (n == 0 || n > VIRTQ_MAX_SIZE || (n & (n - 1)))
        return error_set("queue size %u is not a power of two up to %u", n, VIRTQ_MAX_SIZE);
    if (cfg->desc_gpa % 16 || cfg->avail_gpa % 2 || cfg->used_gpa % 4)
        return error_set("queue rings misaligned (desc 0x%llx, avail 0x%llx, used 0x%llx)",
                         (unsigned long long)cfg->desc_gpa, (unsigned long long)cfg->avail_gpa,
                         (unsigned long long)cfg->used_gpa);
    uint64_t desc_len = 16ULL * n, avail_len = 6 + 2ULL * n, used_len = 6 + 8ULL * n;
    q->desc = gpa_to_hva(mem, cfg->desc_gpa, desc_len);
    q->avail = gpa_to_hva(mem, cfg->avail_gpa, avail_len);
    q->used = gpa_to_hva(mem, cfg->used_gpa, used_len);
    if (!q->desc || !q->avail || !q->used)
        return error_set("queue ring outside guest RAM (desc 0x%llx, avail 0x%llx, used 0x%llx, "
                         "size %u)",
                         (unsigned long long)cfg->desc_gpa, (unsigned long long)cfg->avail_gpa,
                         (unsigned long long)cfg->used_gpa, n);
    q->size = (uint16_t)n; /* at most 32768 */
    /* Both sides start counting at 0 after a reset. */
    q->last_avail = 0;
    q->used_idx = 0;
    return 0;
}

void virtq_get_position(const struct virtq *q, struct virtq_position *p)
{
    if (q->packed)
        *p = (struct virtq_position){.next_avail = q->next_avail,
                                     .next_used = q->next_used,
                                     .avail_wrap = q->avail_wrap,
                                     .used_wrap = q->used_wrap};
    else
        *p = (struct virtq_position){.next_avail = q->last_avail, .next_used = q->used_idx};
}

int virtq_set_position(struct virtq *q, const struct virtq_position *p)
{
    if (!virtq_is_set_up(q))
        return error_set("the queue is not set up");
    if (q->packed) {
        if (p->next_avail >= q->size || p->next_used >= q->size)
            return error_set("packed ring position %u/%u outside a ring of %u", p->next_avail,
                             p->next_used, q->size);
        q->next_avail = p->next_avail;
        q->next_used = p->next_used;
        q->avail_wrap = p->avail_wrap;
        q->used_wrap = p->used_wrap;
        q->signalled_wrap = p->used_wrap;
    } else {
        /* Everything taken was answered before the save (the devices drain), but a device
         * may still hold a chain it has taken; never more than a ring's worth. */
        if ((uint16_t)(p->next_avail - p->next_used) > q->size)
            return error_set("split ring positions avail %u, used %u are more than a ring "
                             "(%u) apart",
                             p->next_avail, p->next_used, q->size);
        q->last_avail = p->next_avail;
        q->used_idx = p->next_used;
    }
    q->signalled_valid = false;
    return 0;
}

int virtq_chain_alloc(struct virtq_chain *c, unsigned capacity)
{
    memset(c, 0, sizeof(*c));
    c->bufs = calloc(capacity, sizeof(*c->bufs));
    if (!c->bufs)
        return error_set("out of memory");
    c->capacity = capacity;
    return 0;
}

void virtq_chain_free(struct virtq_chain *c)
{
    free(c->bufs);
    memset(c, 0, sizeof(*c));
}

static uint16_t avail_idx(struct virtq *q)
{
    /* Acquire: the ring entries and descriptors written before idx. */
    return __atomic_load_n(&q->avail->idx, __ATOMIC_ACQUIRE);
}

static bool packed_is_avail(struct virtq *q, uint16_t pos, bool wrap)
{
    /* Acquire: the descriptor's other fields are read after its flags. */
    uint16_t flags = __atomic_load_n(&q->pdesc[pos].flags, __ATOMIC_ACQUIRE);
    bool avail = flags & VIRTQ_PACKED_F_AVAIL, used = flags & VIRTQ_PACKED_F_USED;
    return avail == wrap && used != wrap;
}

bool virtq_is_set_up(const struct virtq *q)
{
    return q->size != 0;
}

bool virtq_has_avail(struct virtq *q)
{
    if (q->broken || !virtq_is_set_up(q))
        return false;
    if (q->packed)
        return packed_is_avail(q, q->next_avail, q->avail_wrap);
    return avail_idx(q) != q->last_avail;
}

/* Adds one descriptor's buffer to the chain after checking it. */
static int add_buf(struct virtq *q, struct virtq_chain *c, const struct virtq_desc *d,
                   unsigned *count)
{
    if (++*count > q->size)
        return violation(q, "descriptor chain longer than the queue (loop?)");
    bool writable = d->flags & VIRTQ_DESC_F_WRITE;
    if (!writable && c->nin)
        return violation(q, "readable descriptor after a writable one");
    if (d->len == 0)
        return 0;
    uint8_t *hva = gpa_to_hva(q->mem, d->addr, d->len);
    if (!hva)
        return violation(q, "buffer 0x%llx+%u is not guest RAM", (unsigned long long)d->addr,
                         d->len);
    if (c->nout + c->nin >= c->capacity)
        return violation(q, "descriptor chain has too many buffers");
    c->bufs[c->nout + c->nin] = (struct virtq_buf){.hva = hva, .len = d->len};
    if (writable) {
        /* The device may write any of it, now or when the request completes: logged for
         * dirty tracking as it is taken (vmm/dirty.h). */
        guest_memory_mark_dirty(q->mem, hva, d->len);
        c->nin++;
        c->in_len += d->len;
    } else {
        c->nout++;
        c->out_len += d->len;
    }
    return 0;
}

static int walk_indirect(struct virtq *q, struct virtq_chain *c, const struct virtq_desc *d,
                         unsigned *count)
{
    if (!q->indirect)
        return violation(q, "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
    if (d->flags & VIRTQ_DESC_F_NEXT)
        return violation(q, "indirect descriptor with NEXT set");
    if (d->len == 0 || d->len % 16)
        return violation(q, "indirect table length %u is not a multiple of 16", d->len);
    uint32_t n = d->len / 16;
    if (n > q->size)
        return violation(q, "indirect table of %u entries exceeds the queue size", n);
    const struct virtq_desc *table = gpa_to_hva(q->mem, d->addr, d->len);
    if (!table)
        return violation(q, "indirect table 0x%llx+%u is not guest RAM",
                         (unsigned long long)d->addr, d->len);
    uint32_t i = 0;
    for (;;) {
        struct virtq_desc e;
        memcpy(&e, &table[i], sizeof(e));
        if (e.flags & VIRTQ_DESC_F_INDIRECT)
            return violation(q, "indirect descriptor inside an indirect table");
        if (add_buf(q, c, &e, count) < 0)
            return -1;
        if (!(e.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        if (e.next >= n)
            return violation(q, "indirect next index %u outside a table of %u", e.next, n);
        i = e.next;
    }
}

/* A packed indirect table: entries in order, each a packed descriptor of
 * which only the WRITE flag counts (2.8.19). */
static int packed_walk_indirect(struct virtq *q, struct virtq_chain *c,
                                const struct virtq_packed_desc *d, unsigned *count)
{
    if (!q->indirect)
        return violation(q, "indirect descriptor without VIRTIO_F_INDIRECT_DESC");
    if (d->len == 0 || d->len % 16)
        return violation(q, "indirect table length %u is not a multiple of 16", d->len);
    uint32_t n = d->len / 16;
    if (n > q->size)
        return violation(q, "indirect table of %u entries exceeds the queue size", n);
    const struct virtq_packed_desc *table = gpa_to_hva(q->mem, d->addr, d->len);
    if (!table)
        return violation(q, "indirect table 0x%llx+%u is not guest RAM",
                         (unsigned long long)d->addr, d->len);
    for (uint32_t i = 0; i < n; i++) {
        struct virtq_packed_desc e;
        memcpy(&e, &table[i], sizeof(e));
        if (e.flags & VIRTQ_DESC_F_INDIRECT)
            return violation(q, "indirect descriptor inside an indirect table");
        struct virtq_desc s = {.addr = e.addr, .len = e.len, .flags = e.flags & VIRTQ_DESC_F_WRITE};
        if (add_buf(q, c, &s, count) < 0)
            return -1;
    }
    return 0;
}

static int packed_pop(struct virtq *q, struct virtq_chain *c)
{
    if (!packed_is_avail(q, q->next_avail, q->avail_wrap))
        return 0;
    c->nout = c->nin = 0;
    c->out_len = c->in_len = 0;
    unsigned count = 0, slots = 0;
    uint16_t pos = q->next_avail;
    bool wrap = q->avail_wrap;
    uint16_t id;
    for (;;) {
        struct virtq_packed_desc d;
        memcpy(&d, &q->pdesc[pos], sizeof(d));
        if (slots > 0 && ((bool)(d.flags & VIRTQ_PACKED_F_AVAIL) != wrap ||
                          (bool)(d.flags & VIRTQ_PACKED_F_USED) == wrap))
            return violation(q, "chain continues into a descriptor that is not available");
        if (++slots > q->size)
            return violation(q, "descriptor chain longer than the queue");
        id = d.id;
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (d.flags & VIRTQ_DESC_F_NEXT)
                return violation(q, "indirect descriptor with NEXT set");
            if (packed_walk_indirect(q, c, &d, &count) < 0)
                return -1;
        } else {
            struct virtq_desc s = {
                .addr = d.addr, .len = d.len, .flags = d.flags & VIRTQ_DESC_F_WRITE};
            if (add_buf(q, c, &s, &count) < 0)
                return -1;
        }
        if (++pos == q->size) {
            pos = 0;
            wrap = !wrap;
        }
        if (!(d.flags & VIRTQ_DESC_F_NEXT) || (d.flags & VIRTQ_DESC_F_INDIRECT))
            break;
    }
    q->next_avail = pos;
    q->avail_wrap = wrap;
    /* The buffer id is in the chain's last descriptor (2.8.6). */
    c->head = (uint32_t)id | (uint32_t)slots << 16;
    q->popped[q->npopped++ % 64] = (uint16_t)slots;
    return 1;
}

int virtq_pop(struct virtq *q, struct virtq_chain *c)
{
    if (q->broken)
        return -1;
    if (!virtq_is_set_up(q))
        return 0; /* absent: nothing to take */
    if (q->packed)
        return packed_pop(q, c);
    uint16_t avail = avail_idx(q);
    if (avail == q->last_avail)
        return 0;
    if ((uint16_t)(avail - q->last_avail) > q->size)
        return violation(q, "avail index jumped from %u to %u (queue size %u)", q->last_avail,
                         avail, q->size);
    uint16_t head = READ_ONCE(q->avail->ring[q->last_avail % q->size]);
    if (head >= q->size)
        return violation(q, "avail ring names descriptor %u of %u", head, q->size);
    c->head = head;
    c->nout = c->nin = 0;
    c->out_len = c->in_len = 0;
    unsigned count = 0;
    uint16_t i = head;
    for (;;) {
        struct virtq_desc d;
        memcpy(&d, &q->desc[i], sizeof(d));
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (walk_indirect(q, c, &d, &count) < 0)
                return -1;
            /* An indirect descriptor is the chain's last (no NEXT). */
            break;
        }
        if (add_buf(q, c, &d, &count) < 0)
            return -1;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            break;
        if (d.next >= q->size)
            return violation(q, "next index %u outside a queue of %u", d.next, q->size);
        i = d.next;
    }
    q->last_avail++;
    return 1;
}

void virtq_unpop(struct virtq *q, uint16_t n)
{
    if (!virtq_is_set_up(q))
        return;
    if (!q->packed) {
        q->last_avail = (uint16_t)(q->last_avail - n);
        return;
    }
    for (; n && q->npopped; n--) {
        uint16_t slots = q->popped[--q->npopped % 64];
        if (q->next_avail >= slots) {
            q->next_avail = (uint16_t)(q->next_avail - slots);
        } else {
            q->next_avail = (uint16_t)(q->next_avail + q->size - slots);
            q->avail_wrap = !q->avail_wrap;
        }
    }
}

static void packed_push(struct virtq *q, uint32_t token, uint32_t written)
{
    uint16_t id = (uint16_t)token, slots = (uint16_t)(token >> 16);
    struct virtq_packed_desc *d = &q->pdesc[q->next_used];
    WRITE_ONCE(d->id, id);
    WRITE_ONCE(d->len, written);
    uint16_t flags = q->used_wrap ? (VIRTQ_PACKED_F_AVAIL | VIRTQ_PACKED_F_USED) : 0;
    if (written)
        flags |= VIRTQ_DESC_F_WRITE;
    /* Release: id and len before the flags that hand the entry back. */
    __atomic_store_n(&d->flags, flags, __ATOMIC_RELEASE);
    guest_memory_mark_dirty(q->mem, d, sizeof(*d));
    /* The used entry stands for the whole chain: skip its other slots. */
    uint32_t next = (uint32_t)q->next_used + (slots ? slots : 1);
    if (next >= q->size) {
        next -= q->size;
        q->used_wrap = !q->used_wrap;
    }
    q->next_used = (uint16_t)next;
    q->used_idx++; /* used entries written, for notification decisions */
}

void virtq_push(struct virtq *q, uint32_t head, uint32_t written)
{
    if (!virtq_is_set_up(q))
        return;
    if (q->packed) {
        packed_push(q, head, written);
        return;
    }
    struct virtq_used_elem *e = &q->used->ring[q->used_idx % q->size];
    WRITE_ONCE(e->id, head);
    WRITE_ONCE(e->len, written);
    q->used_idx++;
    /* Release: the element (and the data) before the index. */
    __atomic_store_n(&q->used->idx, q->used_idx, __ATOMIC_RELEASE);
    guest_memory_mark_dirty(q->mem, e, sizeof(*e));
    guest_memory_mark_dirty(q->mem, &q->used->idx, sizeof(q->used->idx));
}

static uint16_t *used_event(struct virtq *q)
{
    return &q->avail->ring[q->size];
}

static uint16_t *avail_event(struct virtq *q)
{
    return (uint16_t *)&q->used->ring[q->size];
}

/* Whether the driver's event position (off_wrap) lies in the used slots
 * written since the last notification: from (old, old_wrap) to the
 * current position. Positions are made comparable by unrolling wraps. */
static bool packed_need_event(struct virtq *q, uint16_t off_wrap, uint16_t old, bool old_wrap)
{
    uint32_t size = q->size;
    uint32_t event = off_wrap & 0x7fff;
    bool event_wrap = off_wrap >> 15;
    /* Linear positions: a wrap counter flip means one lap. */
    uint32_t now = q->next_used + (q->used_wrap == old_wrap ? 0 : size);
    uint32_t from = old;
    uint32_t ev = event + (event_wrap == old_wrap ? 0 : size);
    return ev >= from && ev < now;
}

static bool packed_should_notify(struct virtq *q)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = q->signalled;
    bool old_wrap = q->signalled_wrap, valid = q->signalled_valid;
    q->signalled = q->next_used;
    q->signalled_wrap = q->used_wrap;
    q->signalled_valid = true;
    struct virtq_packed_event e;
    memcpy(&e, q->driver_event, sizeof(e));
    if (e.flags == VIRTQ_EVENT_DISABLE)
        return false;
    if (e.flags != VIRTQ_EVENT_DESC || !q->event_idx || !valid)
        return true;
    return packed_need_event(q, e.off_wrap, old, old_wrap);
}

bool virtq_should_notify(struct virtq *q)
{
    if (!virtq_is_set_up(q))
        return false;
    if (q->packed)
        return packed_should_notify(q);
    /* Order our used->idx store before reading the driver's suppression. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = q->signalled, now = q->used_idx;
    bool valid = q->signalled_valid;
    q->signalled = now;
    q->signalled_valid = true;
    if (!q->event_idx)
        return !(READ_ONCE(q->avail->flags) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    if (!valid)
        return true;
    /* Interrupt if used_event lies in (old, now]: the standard wrap-safe test. */
    uint16_t event = READ_ONCE(*used_event(q));
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

bool virtq_enable_kicks(struct virtq *q, bool enable)
{
    if (!virtq_is_set_up(q))
        return false;
    if (q->packed) {
        struct virtq_packed_event e = {.flags = VIRTQ_EVENT_DISABLE};
        if (enable && q->event_idx)
            e = (struct virtq_packed_event){
                .off_wrap = (uint16_t)(q->next_avail | (q->avail_wrap ? 0x8000 : 0)),
                .flags = VIRTQ_EVENT_DESC};
        else if (enable)
            e.flags = VIRTQ_EVENT_ENABLE;
        WRITE_ONCE(q->device_event->off_wrap, e.off_wrap);
        WRITE_ONCE(q->device_event->flags, e.flags);
        guest_memory_mark_dirty(q->mem, q->device_event, sizeof(*q->device_event));
    } else if (q->event_idx) {
        /* Ask to be kicked once the driver passes last_avail. */
        if (enable) {
            WRITE_ONCE(*avail_event(q), q->last_avail);
            guest_memory_mark_dirty(q->mem, avail_event(q), sizeof(uint16_t));
        }
    } else {
        uint16_t flags = READ_ONCE(q->used->flags);
        flags = enable ? (uint16_t)(flags & ~VIRTQ_USED_F_NO_NOTIFY)
                       : (uint16_t)(flags | VIRTQ_USED_F_NO_NOTIFY);
        WRITE_ONCE(q->used->flags, flags);
        guest_memory_mark_dirty(q->mem, &q->used->flags, sizeof(q->used->flags));
    }
    if (!enable)
        return false;
    /* The driver may have added buffers before it saw the change. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return virtq_has_avail(q);
}

bool virtq_enable_kicks_for_more(struct virtq *q)
{
    if (!virtq_is_set_up(q) || q->broken)
        return false;
    if (!q->packed) {
        uint16_t seen = avail_idx(q);
        if (q->event_idx) {
            WRITE_ONCE(*avail_event(q), seen);
            guest_memory_mark_dirty(q->mem, avail_event(q), sizeof(uint16_t));
        } else {
            WRITE_ONCE(q->used->flags,
                       (uint16_t)(READ_ONCE(q->used->flags) & ~VIRTQ_USED_F_NO_NOTIFY));
            guest_memory_mark_dirty(q->mem, &q->used->flags, sizeof(q->used->flags));
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return avail_idx(q) != seen;
    }
    /* The first slot the driver has not made available yet: a kick when it does. */
    uint16_t pos = q->next_avail;
    bool wrap = q->avail_wrap;
    for (unsigned i = 0; i < q->size && packed_is_avail(q, pos, wrap); i++) {
        if (++pos == q->size) {
            pos = 0;
            wrap = !wrap;
        }
    }
    struct virtq_packed_event e = {.flags = VIRTQ_EVENT_ENABLE};
    if (q->event_idx)
        e = (struct virtq_packed_event){.off_wrap = (uint16_t)(pos | (wrap ? 0x8000 : 0)),
                                        .flags = VIRTQ_EVENT_DESC};
    WRITE_ONCE(q->device_event->off_wrap, e.off_wrap);
    WRITE_ONCE(q->device_event->flags, e.flags);
    guest_memory_mark_dirty(q->mem, q->device_event, sizeof(*q->device_event));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return packed_is_avail(q, pos, wrap);
}

size_t virtq_chain_read(const struct virtq_chain *c, uint64_t offset, void *dst, size_t len)
{
    size_t done = 0;
    for (unsigned i = 0; i < c->nout && done < len; i++) {
        const struct virtq_buf *b = &c->bufs[i];
        if (offset >= b->len) {
            offset -= b->len;
            continue;
        }
        size_t n = b->len - offset;
        if (n > len - done)
            n = len - done;
        memcpy((uint8_t *)dst + done, b->hva + offset, n);
        done += n;
        offset = 0;
    }
    return done;
}

size_t virtq_chain_write(const struct virtq_chain *c, uint64_t offset, const void *src, size_t len)
{
    size_t done = 0;
    for (unsigned i = 0; i < c->nin && done < len; i++) {
        const struct virtq_buf *b = &c->bufs[c->nout + i];
        if (offset >= b->len) {
            offset -= b->len;
            continue;
        }
        size_t n = b->len - offset;
        if (n > len - done)
            n = len - done;
        memcpy(b->hva + offset, (const uint8_t *)src + done, n);
        done += n;
        offset = 0;
    }
    return done;
}
