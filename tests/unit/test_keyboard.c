/* The i8042's keyboard data path: scancodes, translation, IRQ 1, the
 * keyboard's answers to its commands. */
#include "devices/i8042.h"
#include "suites.h"

#include <string.h>

static int irq_level, irq_rises;

static void record_irq(void *opaque, int level)
{
    (void)opaque;
    if (level && !irq_level)
        irq_rises++;
    irq_level = level;
}

static void setup(struct i8042 *c)
{
    irq_level = irq_rises = 0;
    i8042_init(c, NULL, NULL);
    i8042_connect_irq(c, record_irq, NULL);
}

static uint8_t status(struct i8042 *c)
{
    uint8_t v;
    i8042_command_io(c, 0, &v, 1, false);
    return v;
}

static void command(struct i8042 *c, uint8_t cmd)
{
    i8042_command_io(c, 0, &cmd, 1, true);
}

static void data_write(struct i8042 *c, uint8_t v)
{
    i8042_data_io(c, 0, &v, 1, true);
}

/* Reads every byte in the output buffer, as a driver's interrupt handler does. */
static size_t drain(struct i8042 *c, uint8_t *out, size_t max)
{
    size_t n = 0;
    while ((status(c) & 1) && n < max)
        i8042_data_io(c, 0, &out[n++], 1, false);
    return n;
}

START_TEST(ctrl_alt_del_translated)
{
    struct i8042 c;
    setup(&c);
    ck_assert(i8042_send_ctrl_alt_del(&c));
    ck_assert_int_eq(irq_level, 1);
    uint8_t got[32];
    size_t n = drain(&c, got, sizeof(got));
    /* Set 1: Ctrl, Alt, E0 Del make; E0 Del, Alt, Ctrl break. */
    static const uint8_t want[] = {0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d};
    ck_assert_uint_eq(n, sizeof(want));
    ck_assert_mem_eq(got, want, sizeof(want));
    ck_assert_int_eq(irq_level, 0);
    /* Each byte after a read comes with a new edge. */
    ck_assert_int_eq(irq_rises, (int)sizeof(want));
}
END_TEST

START_TEST(ctrl_alt_del_untranslated_and_without_interrupts)
{
    struct i8042 c;
    setup(&c);
    command(&c, 0x60); /* write command byte: no translation, no keyboard interrupt */
    data_write(&c, 0x04);
    ck_assert(i8042_send_ctrl_alt_del(&c));
    ck_assert_int_eq(irq_rises, 0); /* polled, not interrupted */
    uint8_t got[32];
    size_t n = drain(&c, got, sizeof(got));
    static const uint8_t want[] = {0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0,
                                   0x71, 0xf0, 0x11, 0xf0, 0x14};
    ck_assert_uint_eq(n, sizeof(want));
    ck_assert_mem_eq(got, want, sizeof(want));
}
END_TEST

START_TEST(full_fifo_refuses_a_whole_sequence)
{
    struct i8042 c;
    setup(&c);
    ck_assert(i8042_send_ctrl_alt_del(&c));  /* 8 bytes of 16 */
    ck_assert(!i8042_send_ctrl_alt_del(&c)); /* 8 more might not fit untranslated: refused */
    uint8_t got[32];
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 8);
    ck_assert(i8042_send_ctrl_alt_del(&c));
}
END_TEST

START_TEST(keyboard_answers_commands)
{
    struct i8042 c;
    setup(&c);
    command(&c, 0x60);
    data_write(&c, 0x44); /* polled from now on */
    uint8_t got[8];
    data_write(&c, 0xf2); /* identify */
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 3);
    ck_assert_uint_eq(got[0], 0xfa);
    ck_assert_uint_eq(got[1], 0xab);
    ck_assert_uint_eq(got[2], 0x83);
    data_write(&c, 0xff); /* reset */
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 2);
    ck_assert_uint_eq(got[1], 0xaa);
    data_write(&c, 0xed); /* LEDs, then their argument */
    data_write(&c, 0x07);
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 2);
    ck_assert_uint_eq(got[0], 0xfa);
    ck_assert_uint_eq(got[1], 0xfa);
    data_write(&c, 0xf0); /* get scancode set */
    data_write(&c, 0x00);
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 3);
    ck_assert_uint_eq(got[2], 2);
    data_write(&c, 0xee); /* echo */
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 1);
    ck_assert_uint_eq(got[0], 0xee);
    command(&c, 0xd2); /* write keyboard output buffer */
    data_write(&c, 0x42);
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 1);
    ck_assert_uint_eq(got[0], 0x42);
    command(&c, 0x20); /* read command byte */
    ck_assert_uint_eq(drain(&c, got, sizeof(got)), 1);
    ck_assert_uint_eq(got[0], 0x44);
}
END_TEST

Suite *keyboard_suite(void)
{
    Suite *s = suite_create("keyboard");
    TCase *t = tcase_create("i8042");
    tcase_add_test(t, ctrl_alt_del_translated);
    tcase_add_test(t, ctrl_alt_del_untranslated_and_without_interrupts);
    tcase_add_test(t, full_fifo_refuses_a_whole_sequence);
    tcase_add_test(t, keyboard_answers_commands);
    suite_add_tcase(s, t);
    return s;
}
