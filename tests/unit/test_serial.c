#include "backends/stdio.h"
#include "devices/serial.h"
#include "suites.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

struct harness {
    uint8_t out[256];
    size_t out_len;
    int irq;
    int irq_changes;
    int rx_space_calls;
};

static void set_irq(void *opaque, int level)
{
    struct harness *h = opaque;
    h->irq = level;
    h->irq_changes++;
}

static void output(void *opaque, const uint8_t *buf, size_t len)
{
    struct harness *h = opaque;
    memcpy(h->out + h->out_len, buf, len);
    h->out_len += len;
}

static void rx_space(void *opaque)
{
    ((struct harness *)opaque)->rx_space_calls++;
}

static struct serial uart;
static struct harness h;

static void setup(void)
{
    memset(&h, 0, sizeof(h));
    struct serial_ops ops = {set_irq, output, rx_space, &h};
    serial_init(&uart, &ops);
}

static void teardown(void)
{
    serial_destroy(&uart);
}

static uint8_t rd(unsigned reg)
{
    uint8_t v = 0;
    serial_io(&uart, reg, &v, 1, false);
    return v;
}

static void wr(unsigned reg, uint8_t v)
{
    serial_io(&uart, reg, &v, 1, true);
}

START_TEST(transmit_reaches_output)
{
    wr(0, 'h');
    wr(0, 'i');
    ck_assert_uint_eq(h.out_len, 2);
    ck_assert_mem_eq(h.out, "hi", 2);
    ck_assert_uint_eq(rd(5) & 0x60, 0x60); /* THRE and TEMT: always ready */
    ck_assert_int_eq(h.irq, 0);            /* no interrupt enabled */
}
END_TEST

START_TEST(thr_empty_interrupt_and_ack)
{
    ck_assert_uint_eq(rd(2) & 0x0f, 0x01); /* nothing pending */
    wr(1, 0x02);                           /* enable THRI */
    ck_assert_int_eq(h.irq, 1);
    ck_assert_uint_eq(rd(2) & 0x0f, 0x02); /* reading IIR acknowledges it */
    ck_assert_int_eq(h.irq, 0);
    ck_assert_uint_eq(rd(2) & 0x0f, 0x01);
    wr(0, 'x'); /* the byte leaves at once: empty again */
    ck_assert_int_eq(h.irq, 1);
    wr(1, 0x00);
    ck_assert_int_eq(h.irq, 0);
}
END_TEST

START_TEST(receive_with_interrupt_and_fifo_bits)
{
    wr(2, 0x01); /* FIFOs on */
    ck_assert_uint_eq(rd(2) & 0xc0, 0xc0);
    wr(1, 0x01); /* RDI */
    ck_assert_uint_eq(serial_receive(&uart, (const uint8_t *)"ab", 2), 2);
    ck_assert_int_eq(h.irq, 1);
    ck_assert_uint_eq(rd(2) & 0x0f, 0x04);
    ck_assert_uint_eq(rd(5) & 0x01, 0x01);
    ck_assert_uint_eq(rd(0), 'a');
    ck_assert_uint_eq(rd(0), 'b');
    ck_assert_uint_eq(rd(5) & 0x01, 0);
    ck_assert_int_eq(h.irq, 0);
    ck_assert_uint_eq(uart.rx_bytes, 2);
}
END_TEST

START_TEST(without_fifo_one_byte_waits)
{
    /* FIFOs off (the reset state): the UART holds one byte, like a 16450. */
    ck_assert_uint_eq(serial_receive(&uart, (const uint8_t *)"ab", 2), 1);
    ck_assert_uint_eq(serial_rx_space(&uart), 0);
    ck_assert_uint_eq(rd(0), 'a');
    ck_assert_int_eq(h.rx_space_calls, 1);
    ck_assert_uint_eq(serial_receive(&uart, (const uint8_t *)"b", 1), 1);
}
END_TEST

START_TEST(full_fifo_pushes_back_and_reports_space)
{
    uint8_t buf[200];
    memset(buf, 'z', sizeof(buf));
    wr(2, 0x01); /* FIFOs on */
    size_t taken = serial_receive(&uart, buf, sizeof(buf));
    ck_assert_uint_eq(taken, SERIAL_RX_FIFO);
    ck_assert_uint_eq(serial_receive(&uart, buf, 1), 0);
    ck_assert_uint_eq(serial_rx_space(&uart), 0);
    ck_assert_uint_eq(rd(5) & 0x02, 0); /* back-pressure, not overrun */
    ck_assert_int_eq(h.rx_space_calls, 0);
    rd(0);
    ck_assert_int_eq(h.rx_space_calls, 1);
    rd(0);
    ck_assert_int_eq(h.rx_space_calls, 1); /* once per full episode */
    ck_assert_uint_eq(serial_rx_space(&uart), 2);
    /* FCR can clear what is queued. */
    wr(2, 0x03);
    ck_assert_uint_eq(rd(5) & 0x01, 0);
}
END_TEST

START_TEST(loopback_mode)
{
    wr(4, 0x10 | 0x01 | 0x02); /* LOOP, DTR, RTS */
    uint8_t msr = rd(6);
    ck_assert_uint_eq(msr & 0x30, 0x30); /* DSR and CTS follow DTR and RTS */
    ck_assert_uint_eq(msr & 0x80, 0);    /* DCD follows OUT2, now off */
    wr(0, 0x5a);
    ck_assert_uint_eq(h.out_len, 0); /* not on the wire */
    ck_assert_uint_eq(rd(5) & 0x01, 1);
    ck_assert_uint_eq(rd(0), 0x5a);
    ck_assert_uint_eq(serial_receive(&uart, (const uint8_t *)"q", 1), 0); /* line cut */
    wr(4, 0x08);
    ck_assert_uint_eq(rd(6) & 0xb0, 0xb0);
    wr(0, 'k');
    ck_assert_uint_eq(h.out_len, 1);
}
END_TEST

START_TEST(divisor_latch_and_scratch)
{
    wr(3, 0x80);
    wr(0, 0x01);
    wr(1, 0x02);
    ck_assert_uint_eq(rd(0), 0x01);
    ck_assert_uint_eq(rd(1), 0x02);
    ck_assert_uint_eq(h.out_len, 0); /* DLAB writes are not data */
    wr(3, 0x03);
    ck_assert_uint_eq(rd(3), 0x03);
    ck_assert_uint_eq(rd(1), 0x00); /* IER again */
    wr(7, 0x99);
    ck_assert_uint_eq(rd(7), 0x99);
    /* A 2-byte access covers two registers; beyond the 8th is ignored. */
    uint8_t two[2] = {0, 0};
    serial_io(&uart, 6, two, 2, false);
    ck_assert_uint_eq(two[1], 0x99);
    uint8_t wide[4] = {1, 2, 3, 4};
    serial_io(&uart, 7, wide, 4, true);
    ck_assert_uint_eq(rd(7), 1);
}
END_TEST

/* PUT /serial's file or FIFO: guest output never waits for a reader; what does not fit is
 * dropped and counted. */
START_TEST(lossy_output_never_waits)
{
    int p[2];
    ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    ck_assert_int_eq(fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
    struct stdio_console c;
    memset(&c, 0, sizeof(c));
    c.out_fd = p[1];
    stdio_console_set_lossy(&c, true);
    static uint8_t chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 10; i++)
        stdio_console_output(&c, chunk, sizeof(chunk)); /* returns: the pipe holds 4096 */
    static uint8_t got[8192];
    ssize_t n = read(p[0], got, sizeof(got));
    ck_assert_int_gt(n, 0);
    ck_assert_int_le(n, 4096);
    ck_assert_uint_eq(c.out_dropped, 10 * sizeof(chunk) - (size_t)n);
    stdio_console_output(&c, chunk, 10); /* room again */
    ck_assert_int_eq(read(p[0], got, sizeof(got)), 10);
    close(p[0]);
    close(p[1]);
}
END_TEST

Suite *serial_suite(void)
{
    Suite *s = suite_create("serial");
    TCase *t = tcase_create("registers");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, transmit_reaches_output);
    tcase_add_test(t, thr_empty_interrupt_and_ack);
    tcase_add_test(t, receive_with_interrupt_and_fifo_bits);
    tcase_add_test(t, full_fifo_pushes_back_and_reports_space);
    tcase_add_test(t, without_fifo_one_byte_waits);
    tcase_add_test(t, loopback_mode);
    tcase_add_test(t, divisor_latch_and_scratch);
    tcase_add_test(t, lossy_output_never_waits);
    suite_add_tcase(s, t);
    return s;
}
