#include "devices/i8042.h"

#include "snapshot/format.h"
#include "util/error.h"

#include <string.h>

#define STATUS_OUTPUT_FULL 0x01
#define STATUS_SYSTEM      0x04 /* self-test passed */
#define STATUS_COMMAND     0x08 /* last write was to the command port */
#define STATUS_UNLOCKED    0x10 /* keyboard not inhibited */

/* Command byte bits. */
#define CB_KBD_INTERRUPT 0x01
#define CB_KBD_DISABLED  0x10
#define CB_TRANSLATE     0x40

#define CMD_READ_COMMAND_BYTE  0x20
#define CMD_WRITE_COMMAND_BYTE 0x60
#define CMD_SELF_TEST          0xaa
#define CMD_INTERFACE_TEST     0xab
#define CMD_DISABLE_KBD        0xad
#define CMD_ENABLE_KBD         0xae
#define CMD_WRITE_OUTPUT_PORT  0xd1
#define CMD_WRITE_KBD_OUTPUT   0xd2
#define CMD_PULSE_RESET        0xfe

/* Keyboard commands (written to the data port) and replies. */
#define KBD_SET_LEDS      0xed
#define KBD_ECHO          0xee
#define KBD_SCANCODE_SET  0xf0
#define KBD_GET_ID        0xf2
#define KBD_SET_TYPEMATIC 0xf3
#define KBD_RESET         0xff
#define KBD_ACK           0xfa
#define KBD_SELF_TEST_OK  0xaa

void i8042_init(struct i8042 *c, void (*on_reset)(void *), void *opaque)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    c->on_reset = on_reset;
    c->opaque = opaque;
    c->command_byte = 0x45; /* translate, system flag, keyboard interrupt */
    c->scancode_set = 2;
}

void i8042_connect_irq(struct i8042 *c, void (*set_irq)(void *, int), void *opaque)
{
    pthread_mutex_lock(&c->lock);
    c->set_irq = set_irq;
    c->irq_opaque = opaque;
    pthread_mutex_unlock(&c->lock);
}

/* IRQ 1 follows "output buffer full with keyboard interrupts enabled". The
 * PIC sees ISA lines as edges, so each new byte after a read needs the
 * line to drop and rise again: update_irq runs after every change. */
static void update_irq(struct i8042 *c)
{
    int level = c->fifo_count && (c->command_byte & CB_KBD_INTERRUPT);
    if (level != c->irq_level) {
        c->irq_level = level;
        if (c->set_irq)
            c->set_irq(c->irq_opaque, level);
    }
}

static bool push(struct i8042 *c, uint8_t v)
{
    if (c->fifo_count == I8042_FIFO_SIZE) {
        c->bytes_dropped++;
        return false;
    }
    c->fifo[(c->fifo_head + c->fifo_count) % I8042_FIFO_SIZE] = v;
    c->fifo_count++;
    return true;
}

static uint8_t pop(struct i8042 *c)
{
    if (!c->fifo_count)
        return c
            ->fifo[(c->fifo_head + I8042_FIFO_SIZE - 1) % I8042_FIFO_SIZE]; /* last byte again */
    uint8_t v = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % I8042_FIFO_SIZE;
    c->fifo_count--;
    return v;
}

/* Scancode set 2 to set 1, as the controller translates when the command
 * byte says so (Linux expects it by default). Only the keys ember sends. */
static uint8_t translate(uint8_t set2)
{
    switch (set2) {
    case 0x14: /* left Ctrl */
        return 0x1d;
    case 0x11: /* left Alt */
        return 0x38;
    case 0x71: /* Delete (after 0xe0) */
        return 0x53;
    default:
        return set2;
    }
}

/* Queues one key event given in set 2 (prefix 0xe0 for extended keys). */
static bool key_event(struct i8042 *c, bool extended, uint8_t code, bool release)
{
    unsigned need = 1 + extended + (release && !(c->command_byte & CB_TRANSLATE));
    if (I8042_FIFO_SIZE - c->fifo_count < need) {
        c->bytes_dropped += need;
        return false;
    }
    if (extended)
        push(c, 0xe0);
    if (c->command_byte & CB_TRANSLATE) {
        push(c, (uint8_t)(translate(code) | (release ? 0x80 : 0)));
    } else {
        if (release)
            push(c, 0xf0);
        push(c, code);
    }
    return true;
}

bool i8042_send_ctrl_alt_del(struct i8042 *c)
{
    pthread_mutex_lock(&c->lock);
    bool ok = true;
    /* Whole sequence or nothing: a half-pressed Ctrl would stick. The
     * untranslated sequence is the longer one (10 bytes). */
    if (I8042_FIFO_SIZE - c->fifo_count < 10) {
        c->bytes_dropped++;
        ok = false;
    } else {
        key_event(c, false, 0x14, false);
        key_event(c, false, 0x11, false);
        key_event(c, true, 0x71, false);
        key_event(c, true, 0x71, true);
        key_event(c, false, 0x11, true);
        key_event(c, false, 0x14, true);
        c->keys_sent += 3;
    }
    update_irq(c);
    pthread_mutex_unlock(&c->lock);
    return ok;
}

void i8042_command_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct i8042 *c = opaque;
    (void)offset;
    if (len != 1) {
        __atomic_add_fetch(is_write ? &c->missed_writes : &c->missed_reads, 1, __ATOMIC_RELAXED);
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    bool reset = false;
    pthread_mutex_lock(&c->lock);
    (*(is_write ? &c->writes : &c->reads))++;
    if (!is_write) {
        /* The input buffer is never full: writers need not wait. */
        data[0] = STATUS_SYSTEM | STATUS_UNLOCKED | (c->fifo_count ? STATUS_OUTPUT_FULL : 0) |
                  (c->pending_command ? STATUS_COMMAND : 0);
    } else {
        c->pending_command = 0;
        switch (data[0]) {
        case CMD_READ_COMMAND_BYTE:
            push(c, c->command_byte);
            break;
        case CMD_WRITE_COMMAND_BYTE:
        case CMD_WRITE_OUTPUT_PORT:
        case CMD_WRITE_KBD_OUTPUT:
            c->pending_command = data[0];
            break;
        case CMD_SELF_TEST:
            push(c, 0x55);
            break;
        case CMD_INTERFACE_TEST:
            push(c, 0x00);
            break;
        case CMD_DISABLE_KBD:
            c->command_byte |= CB_KBD_DISABLED;
            break;
        case CMD_ENABLE_KBD:
            c->command_byte &= (uint8_t)~CB_KBD_DISABLED;
            break;
        case CMD_PULSE_RESET:
            reset = true;
            break;
        default:
            break;
        }
        update_irq(c);
    }
    if (reset)
        c->resets++;
    pthread_mutex_unlock(&c->lock);
    if (reset && c->on_reset)
        c->on_reset(c->opaque);
}

/* A byte the guest wrote to the data port with no controller command
 * pending goes to the keyboard, which answers as a PS/2 keyboard does. */
static void keyboard_write(struct i8042 *c, uint8_t v)
{
    if (c->pending_kbd_command) {
        if (c->pending_kbd_command == KBD_SCANCODE_SET && v == 0) {
            push(c, KBD_ACK);
            push(c, c->scancode_set);
        } else {
            if (c->pending_kbd_command == KBD_SCANCODE_SET && v <= 3)
                c->scancode_set = v;
            push(c, KBD_ACK);
        }
        c->pending_kbd_command = 0;
        return;
    }
    switch (v) {
    case KBD_SET_LEDS:
    case KBD_SCANCODE_SET:
    case KBD_SET_TYPEMATIC:
        c->pending_kbd_command = v;
        push(c, KBD_ACK);
        break;
    case KBD_ECHO:
        push(c, KBD_ECHO);
        break;
    case KBD_GET_ID:
        push(c, KBD_ACK);
        push(c, 0xab);
        push(c, 0x83); /* MF2 keyboard */
        break;
    case KBD_RESET:
        c->fifo_count = 0;
        push(c, KBD_ACK);
        push(c, KBD_SELF_TEST_OK);
        break;
    default: /* enable, disable, set defaults...: acknowledged */
        push(c, KBD_ACK);
        break;
    }
}

void i8042_data_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct i8042 *c = opaque;
    (void)offset;
    if (len != 1) {
        __atomic_add_fetch(is_write ? &c->missed_writes : &c->missed_reads, 1, __ATOMIC_RELAXED);
        if (!is_write)
            memset(data, 0xff, len);
        return;
    }
    bool reset = false;
    pthread_mutex_lock(&c->lock);
    (*(is_write ? &c->writes : &c->reads))++;
    if (!is_write) {
        data[0] = pop(c);
        /* Drop the line; update_irq raises it again for the next byte. */
        if (c->irq_level && c->set_irq) {
            c->irq_level = 0;
            c->set_irq(c->irq_opaque, 0);
        }
    } else if (c->pending_command == CMD_WRITE_COMMAND_BYTE) {
        c->command_byte = data[0];
        c->pending_command = 0;
    } else if (c->pending_command == CMD_WRITE_OUTPUT_PORT) {
        /* Bit 0 of the output port is the CPU reset line (active low). */
        reset = !(data[0] & 1);
        c->pending_command = 0;
    } else if (c->pending_command == CMD_WRITE_KBD_OUTPUT) {
        push(c, data[0]); /* as if the keyboard had sent it */
        c->pending_command = 0;
    } else {
        keyboard_write(c, data[0]);
    }
    update_irq(c);
    if (reset)
        c->resets++;
    pthread_mutex_unlock(&c->lock);
    if (reset && c->on_reset)
        c->on_reset(c->opaque);
}

/* Saved whole, not just the bytes queued: an empty output buffer reads back the byte
 * before fifo_head, which the guest sees too. */
struct i8042_state {
    uint8_t command_byte, pending_command, pending_kbd_command, scancode_set;
    uint8_t fifo_head, fifo_count;
    uint8_t fifo[I8042_FIFO_SIZE];
};

void i8042_save(struct i8042 *c, struct snapshot_writer *w)
{
    struct i8042_state st;
    pthread_mutex_lock(&c->lock);
    st.command_byte = c->command_byte;
    st.pending_command = c->pending_command;
    st.pending_kbd_command = c->pending_kbd_command;
    st.scancode_set = c->scancode_set;
    st.fifo_head = (uint8_t)c->fifo_head;
    st.fifo_count = (uint8_t)c->fifo_count;
    memcpy(st.fifo, c->fifo, sizeof(st.fifo));
    pthread_mutex_unlock(&c->lock);
    snapshot_put_u8(w, st.command_byte);
    snapshot_put_u8(w, st.pending_command);
    snapshot_put_u8(w, st.pending_kbd_command);
    snapshot_put_u8(w, st.scancode_set);
    snapshot_put_u8(w, st.fifo_head);
    snapshot_put_u8(w, st.fifo_count);
    snapshot_put_bytes(w, st.fifo, sizeof(st.fifo));
}

/* Reads one field, naming it in the error. */
static int get_u8(struct snapshot_cursor *c, uint8_t *v, const char *field)
{
    return snapshot_get_u8(c, v) < 0 ? error_prefix("i8042: %s", field) : 0;
}

static int check_state(const struct i8042_state *st)
{
    /* The command byte is the guest's to write whole; the rest only holds what the
     * handlers above store. */
    switch (st->pending_command) {
    case 0:
    case CMD_WRITE_COMMAND_BYTE:
    case CMD_WRITE_OUTPUT_PORT:
    case CMD_WRITE_KBD_OUTPUT:
        break;
    default:
        return error_set("i8042: pending controller command 0x%02x takes no data byte",
                         st->pending_command);
    }
    switch (st->pending_kbd_command) {
    case 0:
    case KBD_SET_LEDS:
    case KBD_SCANCODE_SET:
    case KBD_SET_TYPEMATIC:
        break;
    default:
        return error_set("i8042: pending keyboard command 0x%02x takes no argument",
                         st->pending_kbd_command);
    }
    if (st->scancode_set < 1 || st->scancode_set > 3)
        return error_set("i8042: scancode set %u (1-3)", st->scancode_set);
    if (st->fifo_head >= I8042_FIFO_SIZE)
        return error_set("i8042: output FIFO head %u is outside the FIFO (%u bytes)", st->fifo_head,
                         I8042_FIFO_SIZE);
    if (st->fifo_count > I8042_FIFO_SIZE)
        return error_set("i8042: output FIFO count %u is larger than the FIFO (%u bytes)",
                         st->fifo_count, I8042_FIFO_SIZE);
    return 0;
}

int i8042_restore(struct i8042 *c, struct snapshot_cursor *cur)
{
    struct i8042_state st;
    if (get_u8(cur, &st.command_byte, "command byte") < 0 ||
        get_u8(cur, &st.pending_command, "pending controller command") < 0 ||
        get_u8(cur, &st.pending_kbd_command, "pending keyboard command") < 0 ||
        get_u8(cur, &st.scancode_set, "scancode set") < 0 ||
        get_u8(cur, &st.fifo_head, "output FIFO head") < 0 ||
        get_u8(cur, &st.fifo_count, "output FIFO count") < 0)
        return -1;
    if (snapshot_get_bytes(cur, st.fifo, sizeof(st.fifo)) < 0)
        return error_prefix("i8042: output FIFO");
    if (snapshot_section_end(cur) < 0)
        return error_prefix("i8042");
    if (check_state(&st) < 0)
        return -1;

    pthread_mutex_lock(&c->lock);
    c->command_byte = st.command_byte;
    c->pending_command = st.pending_command;
    c->pending_kbd_command = st.pending_kbd_command;
    c->scancode_set = st.scancode_set;
    c->fifo_head = st.fifo_head;
    c->fifo_count = st.fifo_count;
    memcpy(c->fifo, st.fifo, sizeof(c->fifo));
    /* Told unconditionally, so the line agrees with the restored state whatever it was. */
    c->irq_level = c->fifo_count && (c->command_byte & CB_KBD_INTERRUPT);
    if (c->set_irq)
        c->set_irq(c->irq_opaque, c->irq_level);
    pthread_mutex_unlock(&c->lock);
    return 0;
}
