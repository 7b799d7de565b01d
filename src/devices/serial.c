#include "devices/serial.h"

#include "snapshot/format.h"
#include "util/error.h"

#include <string.h>

/* Registers */
enum { UART_DATA, UART_IER, UART_IIR_FCR, UART_LCR, UART_MCR, UART_LSR, UART_MSR, UART_SCR };

#define IER_RDI  0x01 /* received data available */
#define IER_THRI 0x02 /* transmitter holding register empty */
#define IER_RLSI 0x04 /* receiver line status */
#define IER_MSI  0x08 /* modem status */

#define IIR_NONE  0x01
#define IIR_MSI   0x00
#define IIR_THRI  0x02
#define IIR_RDI   0x04
#define IIR_RLSI  0x06
#define IIR_FIFOS 0xc0

#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02

#define LCR_DLAB 0x80

#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10

#define LSR_DR     0x01
#define LSR_OE     0x02
#define LSR_BI     0x10
#define LSR_THRE   0x20
#define LSR_TEMT   0x40
#define LSR_ERRORS (LSR_OE | 0x04 | 0x08 | LSR_BI)

#define MSR_DCTS   0x01
#define MSR_DDSR   0x02
#define MSR_TERI   0x04
#define MSR_DDCD   0x08
#define MSR_CTS    0x10
#define MSR_DSR    0x20
#define MSR_RI     0x40
#define MSR_DCD    0x80
#define MSR_DELTAS 0x0f

void serial_init(struct serial *s, const struct serial_ops *ops)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->ops = *ops;
    s->mcr = MCR_OUT2;
    s->msr = MSR_DCD | MSR_DSR | MSR_CTS;
    s->dll = 0x0c; /* 9600 baud */
}

void serial_destroy(struct serial *s)
{
    pthread_mutex_destroy(&s->lock);
}

static uint8_t iir(const struct serial *s)
{
    uint8_t fifo = (s->fcr & FCR_ENABLE) ? IIR_FIFOS : 0;
    if ((s->ier & IER_RLSI) && (s->lsr_errors & LSR_ERRORS))
        return fifo | IIR_RLSI;
    if ((s->ier & IER_RDI) && s->rx_count)
        return fifo | IIR_RDI;
    if ((s->ier & IER_THRI) && s->thri)
        return fifo | IIR_THRI;
    if ((s->ier & IER_MSI) && (s->msr & MSR_DELTAS))
        return fifo | IIR_MSI;
    return fifo | IIR_NONE;
}

/* The line follows "an interrupt is pending", as the ISA wiring does. */
static void update_irq(struct serial *s)
{
    int level = (iir(s) & IIR_NONE) ? 0 : 1;
    if (level != s->irq_level) {
        s->irq_level = level;
        if (s->ops.set_irq)
            s->ops.set_irq(s->ops.opaque, level);
    }
}

/* With FIFOs off the UART holds one byte, as a 16450 does. */
static unsigned rx_capacity(const struct serial *s)
{
    return (s->fcr & FCR_ENABLE) ? SERIAL_RX_FIFO : 1;
}

static bool rx_push(struct serial *s, uint8_t byte)
{
    if (s->rx_count == SERIAL_RX_FIFO) {
        s->lsr_errors |= LSR_OE;
        return false;
    }
    s->rx[(s->rx_head + s->rx_count) % SERIAL_RX_FIFO] = byte;
    s->rx_count++;
    return true;
}

/* The modem inputs MSR shows for this MCR: in loopback mode they mirror the
 * modem outputs, otherwise the host side is always there. */
static uint8_t msr_inputs(uint8_t mcr)
{
    if (!(mcr & MCR_LOOP))
        return MSR_DCD | MSR_DSR | MSR_CTS;
    uint8_t msr = 0;
    if (mcr & MCR_DTR)
        msr |= MSR_DSR;
    if (mcr & MCR_RTS)
        msr |= MSR_CTS;
    if (mcr & MCR_OUT1)
        msr |= MSR_RI;
    if (mcr & MCR_OUT2)
        msr |= MSR_DCD;
    return msr;
}

/* A loopback MCR write: the inputs follow the outputs, each change latched in a delta bit. */
static void loopback_msr(struct serial *s)
{
    uint8_t old = s->msr;
    uint8_t msr = msr_inputs(s->mcr);
    uint8_t deltas = old & MSR_DELTAS;
    if ((old ^ msr) & MSR_CTS)
        deltas |= MSR_DCTS;
    if ((old ^ msr) & MSR_DSR)
        deltas |= MSR_DDSR;
    if ((old ^ msr) & MSR_DCD)
        deltas |= MSR_DDCD;
    if ((old & MSR_RI) && !(msr & MSR_RI))
        deltas |= MSR_TERI;
    s->msr = msr | deltas;
}

static void transmit(struct serial *s, uint8_t byte)
{
    if (s->mcr & MCR_LOOP) {
        rx_push(s, byte);
    } else {
        s->tx_bytes++;
        if (s->ops.output)
            s->ops.output(s->ops.opaque, &byte, 1);
    }
    /* The byte leaves at once: the holding register is empty again. */
    s->thri = true;
}

static uint8_t read_reg(struct serial *s, unsigned reg)
{
    switch (reg) {
    case UART_DATA:
        if (s->lcr & LCR_DLAB)
            return s->dll;
        if (s->rx_count == 0)
            return 0;
        {
            uint8_t b = s->rx[s->rx_head];
            s->rx_head = (s->rx_head + 1) % SERIAL_RX_FIFO;
            s->rx_count--;
            return b;
        }
    case UART_IER:
        return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
    case UART_IIR_FCR: {
        uint8_t v = iir(s);
        /* Reading IIR acknowledges a transmitter-empty interrupt. */
        if ((v & 0x0f) == IIR_THRI)
            s->thri = false;
        return v;
    }
    case UART_LCR:
        return s->lcr;
    case UART_MCR:
        return s->mcr;
    case UART_LSR: {
        uint8_t v = LSR_THRE | LSR_TEMT | s->lsr_errors;
        if (s->rx_count)
            v |= LSR_DR;
        s->lsr_errors = 0;
        return v;
    }
    case UART_MSR: {
        uint8_t v = s->msr;
        s->msr &= (uint8_t)~MSR_DELTAS;
        return v;
    }
    default:
        return s->scr;
    }
}

static void write_reg(struct serial *s, unsigned reg, uint8_t v)
{
    switch (reg) {
    case UART_DATA:
        if (s->lcr & LCR_DLAB)
            s->dll = v;
        else
            transmit(s, v);
        break;
    case UART_IER:
        if (s->lcr & LCR_DLAB) {
            s->dlm = v;
        } else {
            /* Enabling the THR interrupt with the register empty raises it. */
            if (!(s->ier & IER_THRI) && (v & IER_THRI))
                s->thri = true;
            s->ier = v & 0x0f;
        }
        break;
    case UART_IIR_FCR:
        s->fcr = v & (FCR_ENABLE | 0xc0);
        if (v & FCR_CLEAR_RX)
            s->rx_head = s->rx_count = 0;
        break;
    case UART_LCR:
        s->lcr = v;
        break;
    case UART_MCR:
        s->mcr = v & 0x1f;
        if (s->mcr & MCR_LOOP)
            loopback_msr(s);
        else
            s->msr = (s->msr & MSR_DELTAS) | MSR_DCD | MSR_DSR | MSR_CTS;
        break;
    case UART_LSR:
    case UART_MSR:
        break; /* read-only */
    default:
        s->scr = v;
        break;
    }
}

void serial_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct serial *s = opaque;
    pthread_mutex_lock(&s->lock);
    /* Wider accesses touch consecutive registers, as on the real bus. */
    for (uint32_t i = 0; i < len && offset + i < 8; i++) {
        if (is_write)
            write_reg(s, (unsigned)(offset + i), data[i]);
        else
            data[i] = read_reg(s, (unsigned)(offset + i));
    }
    update_irq(s);
    /* Tell the host side once there is room again (FIFO drained, or the
     * loopback test that disconnected the line is over). */
    bool rx_space = false;
    if (s->rx_was_full && s->rx_count < rx_capacity(s) && !(s->mcr & MCR_LOOP)) {
        s->rx_was_full = false;
        rx_space = true;
    }
    pthread_mutex_unlock(&s->lock);
    if (rx_space && s->ops.rx_space)
        s->ops.rx_space(s->ops.opaque);
}

size_t serial_receive(struct serial *s, const uint8_t *buf, size_t len)
{
    size_t taken = 0;
    pthread_mutex_lock(&s->lock);
    /* In loopback mode the line is disconnected from the host. */
    if (!(s->mcr & MCR_LOOP)) {
        while (taken < len && s->rx_count < rx_capacity(s)) {
            rx_push(s, buf[taken]);
            taken++;
        }
        s->rx_bytes += taken;
        if (s->rx_count >= rx_capacity(s))
            s->rx_was_full = true;
    }
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    return taken;
}

size_t serial_rx_space(struct serial *s)
{
    pthread_mutex_lock(&s->lock);
    unsigned cap = rx_capacity(s);
    size_t space = (s->mcr & MCR_LOOP) || s->rx_count >= cap ? 0 : cap - s->rx_count;
    if (space == 0)
        s->rx_was_full = true;
    pthread_mutex_unlock(&s->lock);
    return space;
}

/* The guest-visible state, as it is saved: the FIFO oldest byte first. */
struct serial_state {
    uint8_t ier, lcr, mcr, lsr_errors, msr, scr, dll, dlm, fcr, thri, rx_count;
    uint8_t rx[SERIAL_RX_FIFO];
};

void serial_save(struct serial *s, struct snapshot_writer *w)
{
    struct serial_state st;
    pthread_mutex_lock(&s->lock);
    st.ier = s->ier;
    st.lcr = s->lcr;
    st.mcr = s->mcr;
    st.lsr_errors = s->lsr_errors;
    st.msr = s->msr;
    st.scr = s->scr;
    st.dll = s->dll;
    st.dlm = s->dlm;
    st.fcr = s->fcr;
    st.thri = s->thri;
    st.rx_count = (uint8_t)s->rx_count;
    for (unsigned i = 0; i < s->rx_count; i++)
        st.rx[i] = s->rx[(s->rx_head + i) % SERIAL_RX_FIFO];
    pthread_mutex_unlock(&s->lock);
    snapshot_put_u8(w, st.ier);
    snapshot_put_u8(w, st.lcr);
    snapshot_put_u8(w, st.mcr);
    snapshot_put_u8(w, st.lsr_errors);
    snapshot_put_u8(w, st.msr);
    snapshot_put_u8(w, st.scr);
    snapshot_put_u8(w, st.dll);
    snapshot_put_u8(w, st.dlm);
    snapshot_put_u8(w, st.fcr);
    snapshot_put_u8(w, st.thri);
    snapshot_put_u8(w, st.rx_count);
    snapshot_put_bytes(w, st.rx, st.rx_count);
}

/* Reads one field, naming it in the error. */
static int get_u8(struct snapshot_cursor *c, uint8_t *v, const char *field)
{
    return snapshot_get_u8(c, v) < 0 ? error_prefix("serial: %s", field) : 0;
}

/* Every value a guest could have produced through the registers, and no other. */
static int check_state(const struct serial_state *st)
{
    if (st->ier & ~(IER_RDI | IER_THRI | IER_RLSI | IER_MSI))
        return error_set("serial: IER 0x%02x has reserved bits set", st->ier);
    if (st->mcr & ~(MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2 | MCR_LOOP))
        return error_set("serial: MCR 0x%02x has reserved bits set", st->mcr);
    if (st->lsr_errors & ~LSR_ERRORS)
        return error_set("serial: LSR error bits 0x%02x are not error bits", st->lsr_errors);
    if ((st->msr & ~MSR_DELTAS) != msr_inputs(st->mcr))
        return error_set("serial: MSR 0x%02x does not follow MCR 0x%02x", st->msr, st->mcr);
    if (st->fcr & ~(FCR_ENABLE | 0xc0))
        return error_set("serial: FCR 0x%02x has bits that are not kept", st->fcr);
    if (st->thri > 1)
        return error_set("serial: THR-empty pending flag %u is not 0 or 1", st->thri);
    return 0;
}

int serial_restore(struct serial *s, struct snapshot_cursor *c)
{
    struct serial_state st;
    memset(&st, 0, sizeof(st));
    if (get_u8(c, &st.ier, "IER") < 0 || get_u8(c, &st.lcr, "LCR") < 0 ||
        get_u8(c, &st.mcr, "MCR") < 0 || get_u8(c, &st.lsr_errors, "LSR errors") < 0 ||
        get_u8(c, &st.msr, "MSR") < 0 || get_u8(c, &st.scr, "SCR") < 0 ||
        get_u8(c, &st.dll, "DLL") < 0 || get_u8(c, &st.dlm, "DLM") < 0 ||
        get_u8(c, &st.fcr, "FCR") < 0 || get_u8(c, &st.thri, "THR-empty pending") < 0 ||
        get_u8(c, &st.rx_count, "receive FIFO count") < 0)
        return -1;
    /* Loopback fills the FIFO past the one byte a FIFO-less UART takes, so only the
     * array bounds the count. */
    if (st.rx_count > SERIAL_RX_FIFO)
        return error_set("serial: receive FIFO count %u is larger than the FIFO (%u)", st.rx_count,
                         SERIAL_RX_FIFO);
    if (snapshot_get_bytes(c, st.rx, st.rx_count) < 0)
        return error_prefix("serial: receive FIFO data");
    if (snapshot_section_end(c) < 0)
        return error_prefix("serial");
    if (check_state(&st) < 0)
        return -1;

    pthread_mutex_lock(&s->lock);
    s->ier = st.ier;
    s->lcr = st.lcr;
    s->mcr = st.mcr;
    s->lsr_errors = st.lsr_errors;
    s->msr = st.msr;
    s->scr = st.scr;
    s->dll = st.dll;
    s->dlm = st.dlm;
    s->fcr = st.fcr;
    s->thri = st.thri != 0;
    memcpy(s->rx, st.rx, sizeof(s->rx));
    s->rx_head = 0;
    s->rx_count = st.rx_count;
    /* Told unconditionally: whatever the line was before, it now says what the restored
     * registers say. */
    s->irq_level = (iir(s) & IIR_NONE) ? 0 : 1;
    if (s->ops.set_irq)
        s->ops.set_irq(s->ops.opaque, s->irq_level);
    pthread_mutex_unlock(&s->lock);
    return 0;
}
