/* Snapshots of the legacy devices (serial, i8042, RTC, boot timer): a device driven into a
 * busy state through its registers, saved, and restored into a freshly initialised one
 * answers every register read as the original does; a section cut short, one field too
 * many, or a value the device could never hold is refused with the device untouched. */
#include "devices/boot_timer.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "snapshot/format.h"
#include "suites.h"
#include "util/error.h"
#include "util/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTION "device.test"

/* ---- a section as a list of fields, to cut and edit ------------------------------------ */

struct field {
    uint8_t type;
    uint64_t v;
    uint8_t blob[256];
    uint32_t len;
};

#define FIELDS_MAX 32

struct fields {
    struct field f[FIELDS_MAX];
    size_t n;
};

typedef void (*save_fn)(void *dev, struct snapshot_writer *w);
typedef int (*restore_fn)(void *dev, struct snapshot_cursor *c);

static uint8_t *save_file(save_fn save, void *dev, size_t *len)
{
    struct snapshot_writer *w = snapshot_writer_new();
    ck_assert_ptr_nonnull(w);
    snapshot_begin_section(w, SECTION);
    save(dev, w);
    uint8_t *buf;
    ck_assert_msg(snapshot_writer_finish(w, &buf, len) == 0, "%s", error_get());
    snapshot_writer_free(w);
    return buf;
}

static int restore_file(restore_fn restore, void *dev, const uint8_t *buf, size_t len)
{
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_msg(r != NULL, "%s", error_get());
    struct snapshot_cursor c;
    ck_assert_int_eq(snapshot_section(r, SECTION, &c), 0);
    error_clear();
    int rc = restore(dev, &c);
    snapshot_reader_free(r);
    return rc;
}

/* Splits a device's saved section into its fields (the type byte leads each one). */
static void parse(save_fn save, void *dev, struct fields *out)
{
    size_t len;
    uint8_t *buf = save_file(save, dev, &len);
    struct snapshot_reader *r = snapshot_reader_open(buf, len, SNAPSHOT_FILE_MAX);
    ck_assert_ptr_nonnull(r);
    struct snapshot_cursor c;
    ck_assert_int_eq(snapshot_section(r, SECTION, &c), 0);
    out->n = 0;
    while (c.pos < c.len) {
        ck_assert_uint_lt(out->n, FIELDS_MAX);
        struct field *f = &out->f[out->n++];
        memset(f, 0, sizeof(*f));
        f->type = c.data[c.pos];
        int rc;
        uint8_t u8;
        uint16_t u16;
        uint32_t u32;
        switch (f->type) {
        case SNAPSHOT_FIELD_U8:
            rc = snapshot_get_u8(&c, &u8);
            f->v = u8;
            break;
        case SNAPSHOT_FIELD_U16:
            rc = snapshot_get_u16(&c, &u16);
            f->v = u16;
            break;
        case SNAPSHOT_FIELD_U32:
            rc = snapshot_get_u32(&c, &u32);
            f->v = u32;
            break;
        case SNAPSHOT_FIELD_U64:
            rc = snapshot_get_u64(&c, &f->v);
            break;
        case SNAPSHOT_FIELD_BYTES:
            /* Its length follows the type byte, little-endian. */
            f->len = (uint32_t)c.data[c.pos + 1] | (uint32_t)c.data[c.pos + 2] << 8 |
                     (uint32_t)c.data[c.pos + 3] << 16 | (uint32_t)c.data[c.pos + 4] << 24;
            ck_assert_uint_le(f->len, sizeof(f->blob));
            rc = snapshot_get_bytes(&c, f->blob, f->len);
            break;
        default:
            ck_abort_msg("field type %u in a device section", f->type);
            return;
        }
        ck_assert_msg(rc == 0, "%s", error_get());
    }
    snapshot_reader_free(r);
    free(buf);
}

/* A file whose section holds the first n of the given fields. */
static uint8_t *build(const struct fields *fs, size_t n, size_t *len)
{
    struct snapshot_writer *w = snapshot_writer_new();
    ck_assert_ptr_nonnull(w);
    snapshot_begin_section(w, SECTION);
    for (size_t i = 0; i < n; i++) {
        const struct field *f = &fs->f[i];
        switch (f->type) {
        case SNAPSHOT_FIELD_U8:
            snapshot_put_u8(w, (uint8_t)f->v);
            break;
        case SNAPSHOT_FIELD_U16:
            snapshot_put_u16(w, (uint16_t)f->v);
            break;
        case SNAPSHOT_FIELD_U32:
            snapshot_put_u32(w, (uint32_t)f->v);
            break;
        case SNAPSHOT_FIELD_U64:
            snapshot_put_u64(w, f->v);
            break;
        default:
            snapshot_put_bytes(w, f->blob, f->len);
            break;
        }
    }
    uint8_t *buf;
    ck_assert_int_eq(snapshot_writer_finish(w, &buf, len), 0);
    snapshot_writer_free(w);
    return buf;
}

/* Restoring these fields fails, names `want`, and leaves every byte of the device as it was
 * (the lock, the callbacks and the counters included). */
static void assert_refused(const struct fields *fs, size_t n, restore_fn restore, void *dev,
                           size_t dev_size, const char *want)
{
    uint8_t *before = malloc(dev_size);
    ck_assert_ptr_nonnull(before);
    memcpy(before, dev, dev_size);
    size_t len;
    uint8_t *buf = build(fs, n, &len);
    ck_assert_int_eq(restore_file(restore, dev, buf, len), -1);
    ck_assert_msg(strstr(error_get(), want) != NULL, "\"%s\" does not say \"%s\"", error_get(),
                  want);
    ck_assert_msg(memcmp(before, dev, dev_size) == 0, "a refused restore changed the device (%s)",
                  error_get());
    free(buf);
    free(before);
}

/* Every prefix of the section is refused naming the first field missing (names[i] is
 * field i's, with its device), and so is the section with a field added. */
static void assert_cuts_refused(const struct fields *good, restore_fn restore, void *dev,
                                size_t dev_size, const char *const *names)
{
    for (size_t n = 0; n < good->n; n++)
        assert_refused(good, n, restore, dev, dev_size, names[n]);
    struct fields more = *good;
    ck_assert_uint_lt(more.n, FIELDS_MAX);
    more.f[more.n] = (struct field){.type = SNAPSHOT_FIELD_U8, .v = 0};
    more.n++;
    assert_refused(&more, more.n, restore, dev, dev_size, "left unread");
}

/* The good fields with field i's value replaced. */
static void assert_value_refused(const struct fields *good, size_t i, uint64_t v,
                                 restore_fn restore, void *dev, size_t dev_size, const char *want)
{
    struct fields bad = *good;
    ck_assert_uint_lt(i, bad.n);
    ck_assert_uint_ne(bad.f[i].type, SNAPSHOT_FIELD_BYTES);
    bad.f[i].v = v;
    assert_refused(&bad, bad.n, restore, dev, dev_size, want);
}

/* ---- serial ---------------------------------------------------------------------------- */

struct uart_harness {
    struct serial s;
    int irq, irq_calls;
    size_t out_len;
};

static void uart_set_irq(void *opaque, int level)
{
    struct uart_harness *h = opaque;
    h->irq = level;
    h->irq_calls++;
}

static void uart_output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)buf;
    ((struct uart_harness *)opaque)->out_len += len;
}

static void uart_new(struct uart_harness *h)
{
    memset(h, 0, sizeof(*h));
    struct serial_ops ops = {uart_set_irq, uart_output, NULL, h};
    serial_init(&h->s, &ops);
}

static uint8_t uart_rd(struct uart_harness *h, unsigned reg)
{
    uint8_t v = 0;
    serial_io(&h->s, reg, &v, 1, false);
    return v;
}

static void uart_wr(struct uart_harness *h, unsigned reg, uint8_t v)
{
    serial_io(&h->s, reg, &v, 1, true);
}

static void uart_save(void *dev, struct snapshot_writer *w)
{
    serial_save(&((struct uart_harness *)dev)->s, w);
}

static int uart_restore(void *dev, struct snapshot_cursor *c)
{
    return serial_restore(&((struct uart_harness *)dev)->s, c);
}

/* FIFOs on with a divisor and scratch value, every interrupt enabled, an overrun from
 * loopback, modem-status deltas from leaving it, and a FIFO that wraps around its ring. */
static void uart_busy(struct uart_harness *h)
{
    uart_wr(h, 2, 0xc1); /* FIFOs on, trigger level bits */
    uart_wr(h, 3, 0x80);
    uart_wr(h, 0, 0x01);
    uart_wr(h, 1, 0x02);
    uart_wr(h, 3, 0x1b); /* 8E1, DLAB off */
    uart_wr(h, 7, 0x5a);
    /* Loopback: every modem input changes, RI falls; then a FIFO and two more bytes. */
    uart_wr(h, 4, 0x10);
    uart_wr(h, 4, 0x1f);
    uart_wr(h, 4, 0x1b);
    for (unsigned i = 0; i < SERIAL_RX_FIFO + 2; i++)
        uart_wr(h, 0, (uint8_t)(0x40 + i));
    uart_wr(h, 4, 0x0b); /* DTR, RTS, OUT2: back on the line */
    for (unsigned i = 0; i < 10; i++)
        uart_rd(h, 0);
    ck_assert_uint_eq(serial_receive(&h->s, (const uint8_t *)"wxyz", 4), 4);
    uart_wr(h, 1, 0x0f);
    ck_assert_uint_eq(h->s.rx_count, SERIAL_RX_FIFO - 10 + 4);
    ck_assert_int_eq(h->irq, 1);
}

/* What the guest reads, in an order that walks through every pending interrupt (reads
 * acknowledge), the divisor latch, the whole FIFO, and a byte transmitted after. */
static size_t uart_trace(struct uart_harness *h, uint8_t *t)
{
    size_t n = 0;
    t[n++] = (uint8_t)h->irq;
    t[n++] = uart_rd(h, 2); /* line status interrupt */
    t[n++] = uart_rd(h, 5); /* overrun, data ready; clears the error */
    t[n++] = uart_rd(h, 2); /* data interrupt */
    t[n++] = uart_rd(h, 6); /* modem status with its deltas */
    t[n++] = uart_rd(h, 6); /* deltas cleared by the read */
    for (unsigned reg = 1; reg < 8; reg++)
        t[n++] = uart_rd(h, reg);
    uint8_t lcr = uart_rd(h, 3);
    uart_wr(h, 3, lcr | 0x80);
    t[n++] = uart_rd(h, 0);
    t[n++] = uart_rd(h, 1);
    uart_wr(h, 3, lcr);
    while (uart_rd(h, 5) & 0x01)
        t[n++] = uart_rd(h, 0);
    t[n++] = (uint8_t)h->irq;
    t[n++] = uart_rd(h, 2); /* transmitter empty, then nothing */
    t[n++] = uart_rd(h, 2);
    t[n++] = (uint8_t)h->irq;
    uart_wr(h, 0, 'k');
    t[n++] = (uint8_t)h->out_len;
    t[n++] = (uint8_t)h->irq;
    return n;
}

START_TEST(serial_round_trip)
{
    struct uart_harness *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    ck_assert(a && b);
    uart_new(a);
    uart_busy(a);
    ck_assert_uint_gt(a->s.rx_head + a->s.rx_count, SERIAL_RX_FIFO); /* wraps */
    uart_new(b);
    size_t len;
    uint8_t *buf = save_file(uart_save, a, &len);
    ck_assert_msg(restore_file(uart_restore, b, buf, len) == 0, "%s", error_get());
    /* The restored line was raised through set_irq, not left to the next access. */
    ck_assert_int_eq(b->irq, 1);
    ck_assert_int_eq(b->irq_calls, 1);
    uint8_t ta[256], tb[256];
    size_t na = uart_trace(a, ta), nb = uart_trace(b, tb);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_eq(na, 2 + 4 + 7 + 2 + (SERIAL_RX_FIFO - 6) + 6);
    ck_assert_mem_eq(ta, tb, na);
    /* Nothing host-side travelled: b's counters are its own. */
    ck_assert_uint_eq(b->s.tx_bytes, 1);
    ck_assert_uint_eq(b->s.rx_bytes, 0);
    free(buf);

    /* A quiet UART restored over a busy one lowers the line. */
    uart_new(a);
    buf = save_file(uart_save, a, &len);
    uart_busy(b);
    int calls = b->irq_calls;
    ck_assert_int_eq(restore_file(uart_restore, b, buf, len), 0);
    ck_assert_int_eq(b->irq, 0);
    ck_assert_int_eq(b->irq_calls, calls + 1);
    ck_assert_uint_eq(uart_rd(b, 5), 0x60);
    ck_assert_uint_eq(uart_rd(b, 1), 0);
    free(buf);
    serial_destroy(&a->s);
    serial_destroy(&b->s);
    free(a);
    free(b);
}
END_TEST

START_TEST(serial_refuses_bad_sections)
{
    struct uart_harness *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    ck_assert(a && b);
    uart_new(a);
    uart_busy(a);
    struct fields good;
    parse(uart_save, a, &good);
    ck_assert_uint_eq(good.n, 12);
    /* The target is busy too, so "unchanged" is not "still fresh". */
    uart_new(b);
    uart_wr(b, 1, 0x02);
    uart_wr(b, 7, 0x33);
    size_t sz = sizeof(*b);
    static const char *const names[] = {"serial: IER",
                                        "serial: LCR",
                                        "serial: MCR",
                                        "serial: LSR errors",
                                        "serial: MSR",
                                        "serial: SCR",
                                        "serial: DLL",
                                        "serial: DLM",
                                        "serial: FCR",
                                        "serial: THR-empty pending",
                                        "serial: receive FIFO count",
                                        "serial: receive FIFO data"};
    assert_cuts_refused(&good, uart_restore, b, sz, names);
    assert_value_refused(&good, 0, 0x10, uart_restore, b, sz, "serial: IER 0x10");
    assert_value_refused(&good, 2, 0x20, uart_restore, b, sz, "serial: MCR 0x20");
    assert_value_refused(&good, 3, 0x01, uart_restore, b, sz, "serial: LSR error bits");
    assert_value_refused(&good, 4, 0x00, uart_restore, b, sz, "serial: MSR 0x00");
    assert_value_refused(&good, 8, 0x02, uart_restore, b, sz, "serial: FCR 0x02");
    assert_value_refused(&good, 9, 2, uart_restore, b, sz, "serial: THR-empty");
    /* A FIFO count past the FIFO, with as many bytes as it claims. */
    struct fields bad = good;
    bad.f[10].v = SERIAL_RX_FIFO + 1;
    bad.f[11].len = SERIAL_RX_FIFO + 1;
    assert_refused(&bad, bad.n, uart_restore, b, sz, "serial: receive FIFO count 65");
    /* A count that disagrees with the bytes that follow it. */
    bad = good;
    bad.f[10].v = 3;
    assert_refused(&bad, bad.n, uart_restore, b, sz, "serial: receive FIFO data");
    ck_assert_int_eq(b->irq_calls, 1); /* only its own THRI enable */
    /* The good fields restore (this harness reads them back right). */
    size_t len;
    uint8_t *buf = build(&good, good.n, &len);
    ck_assert_int_eq(restore_file(uart_restore, b, buf, len), 0);
    free(buf);
    serial_destroy(&a->s);
    serial_destroy(&b->s);
    free(a);
    free(b);
}
END_TEST

/* ---- i8042 ----------------------------------------------------------------------------- */

struct kbd_harness {
    struct i8042 c;
    int irq, irq_calls, rises;
};

static void kbd_set_irq(void *opaque, int level)
{
    struct kbd_harness *h = opaque;
    if (level && !h->irq)
        h->rises++;
    h->irq = level;
    h->irq_calls++;
}

static void kbd_new(struct kbd_harness *h)
{
    memset(h, 0, sizeof(*h));
    i8042_init(&h->c, NULL, NULL);
    i8042_connect_irq(&h->c, kbd_set_irq, h);
}

static uint8_t kbd_status(struct kbd_harness *h)
{
    uint8_t v = 0;
    i8042_command_io(&h->c, 0, &v, 1, false);
    return v;
}

static void kbd_command(struct kbd_harness *h, uint8_t v)
{
    i8042_command_io(&h->c, 0, &v, 1, true);
}

static uint8_t kbd_data_read(struct kbd_harness *h)
{
    uint8_t v = 0;
    i8042_data_io(&h->c, 0, &v, 1, false);
    return v;
}

static void kbd_data_write(struct kbd_harness *h, uint8_t v)
{
    i8042_data_io(&h->c, 0, &v, 1, true);
}

static void kbd_save(void *dev, struct snapshot_writer *w)
{
    i8042_save(&((struct kbd_harness *)dev)->c, w);
}

static int kbd_restore(void *dev, struct snapshot_cursor *c)
{
    return i8042_restore(&((struct kbd_harness *)dev)->c, c);
}

/* A command byte of the guest's, scancode set 3, bytes queued past the ring's start, a
 * keyboard command waiting for its argument and a controller command for its data. */
static void kbd_busy(struct kbd_harness *h)
{
    kbd_command(h, 0x60);
    kbd_data_write(h, 0x65); /* translate, system, interrupts, keyboard off */
    kbd_data_write(h, 0xf0);
    kbd_data_write(h, 0x03); /* scancode set 3 */
    kbd_data_write(h, 0xf2); /* identify: ACK AB 83 */
    kbd_data_read(h);
    kbd_data_read(h);
    ck_assert(i8042_send_ctrl_alt_del(&h->c));
    kbd_data_write(h, 0xed); /* set LEDs: waits for its argument */
    kbd_command(h, 0xd2);    /* write keyboard output: waits for its byte */
    ck_assert_uint_eq(h->c.fifo_count, 12);
    ck_assert_uint_eq(h->c.pending_command, 0xd2);
    ck_assert_uint_eq(h->c.pending_kbd_command, 0xed);
    ck_assert_int_eq(h->irq, 1);
}

static size_t kbd_drain(struct kbd_harness *h, uint8_t *t)
{
    size_t n = 0;
    while (kbd_status(h) & 0x01) {
        t[n++] = kbd_data_read(h);
        t[n++] = (uint8_t)h->irq;
    }
    return n;
}

/* What the guest reads: the pending commands finished (0xf2 is the LEDs' argument, not an
 * identify), the queue drained, the scancode set and command byte asked for, the FIFO filled
 * until bytes are dropped, drained and read once more; then how often IRQ 1 rose. */
static size_t kbd_trace(struct kbd_harness *h, uint8_t *t)
{
    size_t n = 0;
    int rises = h->rises;
    t[n++] = (uint8_t)h->irq;
    t[n++] = kbd_status(h);
    kbd_data_write(h, 0x42); /* the pending 0xd2's byte */
    t[n++] = kbd_status(h);
    kbd_data_write(h, 0xf2);
    n += kbd_drain(h, t + n);
    kbd_data_write(h, 0xf0); /* which scancode set? */
    kbd_data_write(h, 0x00);
    kbd_command(h, 0x20); /* the command byte */
    for (unsigned i = 0; i < I8042_FIFO_SIZE; i++)
        kbd_data_write(h, 0xee); /* echo */
    n += kbd_drain(h, t + n);
    t[n++] = kbd_data_read(h); /* empty: the last byte again */
    t[n++] = kbd_status(h);
    t[n++] = (uint8_t)h->irq;
    t[n++] = (uint8_t)(h->rises - rises);
    return n;
}

START_TEST(i8042_round_trip)
{
    struct kbd_harness a, b;
    kbd_new(&a);
    kbd_busy(&a);
    kbd_new(&b);
    size_t len;
    uint8_t *buf = save_file(kbd_save, &a, &len);
    ck_assert_msg(restore_file(kbd_restore, &b, buf, len) == 0, "%s", error_get());
    ck_assert_int_eq(b.irq, 1);
    ck_assert_int_eq(b.irq_calls, 1);
    free(buf);
    uint8_t ta[128], tb[128];
    size_t na = kbd_trace(&a, ta), nb = kbd_trace(&b, tb);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(ta, tb, na);
    ck_assert_uint_eq(ta[1], 0x1d); /* output full, a command waiting for data */
    ck_assert_uint_eq(ta[2], 0x15); /* ... which it got */
    ck_assert_uint_eq(na, 3 + 2 * 14 + 2 * 16 + 4);
    ck_assert_uint_eq(ta[na - 4], 0xee); /* read empty, its last echo again */
    ck_assert_uint_eq(b.c.keys_sent, 0); /* counters are the device's own */
    ck_assert_uint_eq(a.c.keys_sent, 3);
    /* Drained at the save: the restored buffer still reads back the last byte. */
    buf = save_file(kbd_save, &a, &len);
    kbd_new(&b);
    ck_assert_int_eq(restore_file(kbd_restore, &b, buf, len), 0);
    ck_assert_int_eq(b.irq, 0);
    ck_assert_uint_eq(kbd_status(&b) & 0x01, 0);
    ck_assert_uint_eq(kbd_data_read(&b), 0xee);
    free(buf);
    pthread_mutex_destroy(&a.c.lock);
    pthread_mutex_destroy(&b.c.lock);
}
END_TEST

START_TEST(i8042_refuses_bad_sections)
{
    struct kbd_harness a, b;
    kbd_new(&a);
    kbd_busy(&a);
    struct fields good;
    parse(kbd_save, &a, &good);
    ck_assert_uint_eq(good.n, 7);
    kbd_new(&b);
    kbd_command(&b, 0xaa); /* self test: one byte queued, IRQ up */
    size_t sz = sizeof(b);
    static const char *const names[] = {"i8042: command byte",
                                        "i8042: pending controller command",
                                        "i8042: pending keyboard command",
                                        "i8042: scancode set",
                                        "i8042: output FIFO head",
                                        "i8042: output FIFO count",
                                        "i8042: output FIFO:"};
    assert_cuts_refused(&good, kbd_restore, &b, sz, names);
    assert_value_refused(&good, 1, 0xaa, kbd_restore, &b, sz, "i8042: pending controller");
    assert_value_refused(&good, 2, 0xff, kbd_restore, &b, sz, "i8042: pending keyboard");
    assert_value_refused(&good, 3, 0, kbd_restore, &b, sz, "i8042: scancode set 0");
    assert_value_refused(&good, 3, 4, kbd_restore, &b, sz, "i8042: scancode set 4");
    assert_value_refused(&good, 4, I8042_FIFO_SIZE, kbd_restore, &b, sz, "i8042: output FIFO head");
    assert_value_refused(&good, 5, I8042_FIFO_SIZE + 1, kbd_restore, &b, sz,
                         "i8042: output FIFO count 17");
    struct fields bad = good;
    bad.f[6].len = I8042_FIFO_SIZE - 1; /* a ring of the wrong size */
    assert_refused(&bad, bad.n, kbd_restore, &b, sz, "i8042: output FIFO:");
    ck_assert_int_eq(b.irq_calls, 1);
    pthread_mutex_destroy(&a.c.lock);
    pthread_mutex_destroy(&b.c.lock);
}
END_TEST

/* ---- RTC ------------------------------------------------------------------------------- */

/* 2026-11-25 13:45:56 UTC; a later host clock for a restore 100 s after. */
static time_t fixed_now(void)
{
    return 1795614356;
}

static time_t later_now(void)
{
    return 1795614356 + 100;
}

static uint8_t cmos_read(struct rtc *r, uint8_t reg)
{
    uint8_t v = reg;
    rtc_io(r, 0, &v, 1, true);
    rtc_io(r, 1, &v, 1, false);
    return v;
}

static void cmos_write(struct rtc *r, uint8_t reg, uint8_t v)
{
    rtc_io(r, 0, &reg, 1, true);
    rtc_io(r, 1, &v, 1, true);
}

static void rtc_new(struct rtc *r, time_t (*now)(void))
{
    rtc_init(r, 256 << 20, 0);
    r->now = now;
}

static void rtc_save_fn(void *dev, struct snapshot_writer *w)
{
    rtc_save(dev, w);
}

static int rtc_restore_fn(void *dev, struct snapshot_cursor *c)
{
    return rtc_restore(dev, c);
}

/* Binary mode, a guest-set date in 1999 (an offset below zero), alarms, CMOS RAM, and the
 * index left on a RAM byte. */
static void rtc_busy(struct rtc *r)
{
    cmos_write(r, 0x0b, 0x06 | 0x20); /* binary, 24 h, alarm interrupt enable */
    cmos_write(r, 0x0a, 0x2f);
    cmos_write(r, 0x32, 19);
    cmos_write(r, 0x09, 99);
    cmos_write(r, 0x01, 30); /* alarm 12:15:30 */
    cmos_write(r, 0x03, 15);
    cmos_write(r, 0x05, 12);
    for (uint8_t i = 0x40; i < 0x80; i++)
        cmos_write(r, i, (uint8_t)(i * 3));
    cmos_write(r, 0x15, 0x99); /* the guest may overwrite what firmware left too */
    uint8_t idx = 0x47;
    rtc_io(r, 0, &idx, 1, true);
    ck_assert_int_lt(r->offset, 0);
}

START_TEST(rtc_round_trip)
{
    struct rtc a, b;
    rtc_new(&a, fixed_now);
    rtc_busy(&a);
    rtc_new(&b, fixed_now);
    size_t len;
    uint8_t *buf = save_file(rtc_save_fn, &a, &len);
    ck_assert_msg(restore_file(rtc_restore_fn, &b, buf, len) == 0, "%s", error_get());
    /* The index came along: a data read without an index write reads register 0x47. */
    uint8_t va = 0, vb = 0;
    rtc_io(&a, 1, &va, 1, false);
    rtc_io(&b, 1, &vb, 1, false);
    ck_assert_uint_eq(va, (uint8_t)(0x47 * 3));
    ck_assert_uint_eq(vb, va);
    for (unsigned reg = 0; reg < 0x80; reg++)
        ck_assert_msg(cmos_read(&a, (uint8_t)reg) == cmos_read(&b, (uint8_t)reg), "register 0x%02x",
                      reg);
    ck_assert_uint_eq(cmos_read(&b, 0x09), 99);
    ck_assert_uint_eq(cmos_read(&b, 0x32), 19);
    ck_assert_ptr_eq(b.now, fixed_now); /* the host clock is the restored device's */

    /* Restored on a host clock 100 s later, the guest's clock has counted those 100 s. */
    struct rtc c;
    rtc_new(&c, later_now);
    ck_assert_int_eq(restore_file(rtc_restore_fn, &c, buf, len), 0);
    unsigned sa = cmos_read(&a, 0x00) + 60 * cmos_read(&a, 0x02);
    unsigned sc = cmos_read(&c, 0x00) + 60 * cmos_read(&c, 0x02);
    ck_assert_uint_eq((sa + 100) % 3600, sc);
    ck_assert_uint_eq(cmos_read(&c, 0x09), 99);
    free(buf);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
    pthread_mutex_destroy(&c.lock);
}
END_TEST

START_TEST(rtc_refuses_bad_sections)
{
    struct rtc a, b;
    rtc_new(&a, fixed_now);
    rtc_busy(&a);
    struct fields good;
    parse(rtc_save_fn, &a, &good);
    ck_assert_uint_eq(good.n, 3);
    rtc_new(&b, fixed_now);
    cmos_write(&b, 0x20, 0x77);
    size_t sz = sizeof(b);
    static const char *const names[] = {"rtc: index", "rtc: CMOS registers", "rtc: offset"};
    assert_cuts_refused(&good, rtc_restore_fn, &b, sz, names);
    assert_value_refused(&good, 0, 0x80, rtc_restore_fn, &b, sz, "rtc: index 0x80");
    assert_value_refused(&good, 2, (uint64_t)400000000000LL, rtc_restore_fn, &b, sz,
                         "rtc: offset 400000000000");
    assert_value_refused(&good, 2, (uint64_t)-400000000000LL, rtc_restore_fn, &b, sz,
                         "rtc: offset -400000000000");
    assert_value_refused(&good, 2, UINT64_C(1) << 63, rtc_restore_fn, &b, sz, "rtc: offset");
    struct fields bad = good;
    bad.f[1].blob[0x0a] |= 0x80;
    assert_refused(&bad, bad.n, rtc_restore_fn, &b, sz, "rtc: register A");
    bad = good;
    bad.f[1].blob[0x0c] = 0x40;
    assert_refused(&bad, bad.n, rtc_restore_fn, &b, sz, "rtc: register C");
    bad = good;
    bad.f[1].blob[0x0d] = 0x00;
    assert_refused(&bad, bad.n, rtc_restore_fn, &b, sz, "rtc: register D");
    bad = good;
    bad.f[1].len = 127;
    assert_refused(&bad, bad.n, rtc_restore_fn, &b, sz, "rtc: CMOS registers");
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}
END_TEST

/* ---- boot timer ------------------------------------------------------------------------ */

static void timer_save_fn(void *dev, struct snapshot_writer *w)
{
    boot_timer_save(dev, w);
}

static int timer_restore_fn(void *dev, struct snapshot_cursor *c)
{
    return boot_timer_restore(dev, c);
}

/* The wall time the boot timer logs when the guest writes its magic byte. */
static uint64_t logged_wall_us(struct boot_timer *t)
{
    char path[] = "/tmp/ember-unit-boot-timer-snap-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(log_open(path), 0);
    enum log_level old = log_get_level();
    log_set_level(LOG_INFO);
    uint8_t b = BOOT_TIMER_MAGIC;
    boot_timer_io(t, 0, &b, 1, true);
    log_set_level(old);
    log_close();
    if (!getenv("EMBER_TEST_LOG"))
        log_open("/dev/null");
    char text[1024] = {0};
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    unlink(path);
    text[n] = '\0';
    const char *line = strstr(text, "Guest-boot-time = ");
    ck_assert_msg(line != NULL, "no boot time logged: %s", text);
    unsigned long long us;
    ck_assert_int_eq(sscanf(line, "Guest-boot-time = %llu us", &us), 1);
    return us;
}

START_TEST(boot_timer_round_trip)
{
    struct boot_timer a, b;
    boot_timer_init(&a);
    a.start_us -= 5000000; /* booted 5 s ago */
    boot_timer_init(&b);
    struct log_limit limit = b.limit;
    size_t len;
    uint8_t *buf = save_file(timer_save_fn, &a, &len);
    ck_assert_msg(restore_file(timer_restore_fn, &b, buf, len) == 0, "%s", error_get());
    ck_assert_mem_eq(&b.limit, &limit, sizeof(limit));
    /* The 5 s counted before the save count on; a restore does not start over. */
    uint64_t us = logged_wall_us(&b);
    ck_assert_uint_ge(us, 5000000);
    ck_assert_uint_lt(us, 5000000 + 60000000);
    free(buf);
}
END_TEST

START_TEST(boot_timer_refuses_bad_sections)
{
    struct boot_timer a, b;
    boot_timer_init(&a);
    struct fields good;
    parse(timer_save_fn, &a, &good);
    ck_assert_uint_eq(good.n, 2);
    boot_timer_init(&b);
    size_t sz = sizeof(b);
    static const char *const names[] = {"boot timer: wall time", "boot timer: CPU time"};
    assert_cuts_refused(&good, timer_restore_fn, &b, sz, names);
    assert_value_refused(&good, 0, UINT64_MAX, timer_restore_fn, &b, sz, "boot timer: ");
    assert_value_refused(&good, 1, UINT64_MAX / 2, timer_restore_fn, &b, sz,
                         "us of CPU time is beyond");
}
END_TEST

Suite *devices_snapshot_suite(void)
{
    Suite *s = suite_create("devices_snapshot");
    TCase *t = tcase_create("legacy");
    tcase_add_test(t, serial_round_trip);
    tcase_add_test(t, serial_refuses_bad_sections);
    tcase_add_test(t, i8042_round_trip);
    tcase_add_test(t, i8042_refuses_bad_sections);
    tcase_add_test(t, rtc_round_trip);
    tcase_add_test(t, rtc_refuses_bad_sections);
    tcase_add_test(t, boot_timer_round_trip);
    tcase_add_test(t, boot_timer_refuses_bad_sections);
    suite_add_tcase(s, t);
    return s;
}
