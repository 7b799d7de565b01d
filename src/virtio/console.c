#include "virtio/console.h"

#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"

#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define CONSOLE_QUEUE_SIZE 64
#define RECEIVEQ           0
#define TRANSMITQ          1

#define VIRTIO_CONSOLE_F_SIZE 0

/* Moves buffered host input into the guest's receive buffers. */
static void deliver_input(struct virtio_console *c)
{
    struct virtio_dev *d = &c->dev;
    struct virtq *q = &d->queues[RECEIVEQ].vq;
    bool pushed = false, notify_host = false;
    pthread_mutex_lock(&c->input_lock);
    while (c->input_len) {
        int got = virtq_pop(q, &c->chain);
        if (got < 0) {
            pthread_mutex_unlock(&c->input_lock);
            virtio_dev_fail(d, q->error);
            return;
        }
        if (got == 0) {
            /* No buffers: the guest's kick on the receive queue brings us
             * back. */
            if (virtq_enable_kicks(q, true)) {
                virtq_enable_kicks(q, false);
                continue;
            }
            break;
        }
        uint32_t written = 0;
        for (unsigned i = 0; i < c->chain.nin && c->input_len; i++) {
            struct virtq_buf *b = &c->chain.bufs[c->chain.nout + i];
            uint32_t off = 0;
            while (off < b->len && c->input_len) {
                size_t run = VIRTIO_CONSOLE_INPUT_BUF - c->input_head;
                if (run > c->input_len)
                    run = c->input_len;
                if (run > b->len - off)
                    run = b->len - off;
                memcpy(b->hva + off, c->input + c->input_head, run);
                c->input_head = (c->input_head + run) % VIRTIO_CONSOLE_INPUT_BUF;
                c->input_len -= run;
                off += (uint32_t)run;
            }
            written += off;
        }
        virtq_push(q, c->chain.head, written);
        c->rx_bytes += written;
        pushed = true;
    }
    if (c->input_was_full && c->input_len < VIRTIO_CONSOLE_INPUT_BUF) {
        c->input_was_full = false;
        notify_host = true;
    }
    pthread_mutex_unlock(&c->input_lock);
    if (pushed)
        virtio_dev_signal_used(d, RECEIVEQ);
    if (notify_host && c->input_space)
        c->input_space(c->opaque);
}

static void transmit(struct virtio_console *c)
{
    struct virtio_dev *d = &c->dev;
    struct virtq *q = &d->queues[TRANSMITQ].vq;
    bool pushed = false;
    virtq_enable_kicks(q, false);
    for (;;) {
        int got = virtio_dev_pop(d, TRANSMITQ, &c->chain);
        if (got < 0)
            return;
        if (got == 0)
            break;
        for (unsigned i = 0; i < c->chain.nout; i++) {
            c->output(c->opaque, c->chain.bufs[i].hva, c->chain.bufs[i].len);
            c->tx_bytes += c->chain.bufs[i].len;
        }
        virtq_push(q, c->chain.head, 0);
        pushed = true;
    }
    if (pushed)
        virtio_dev_signal_used(d, TRANSMITQ);
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    struct virtio_console *c = d->opaque;
    if (q == TRANSMITQ)
        transmit(c);
    else
        deliver_input(c);
}

static void on_input(void *opaque, uint32_t events)
{
    struct virtio_console *c = opaque;
    (void)events;
    uint64_t v;
    ssize_t ignored = read(c->input_fd, &v, sizeof(v));
    (void)ignored;
    /* A receive queue the driver left disabled has no rings: input
     * waits in the buffer until a reset brings one. */
    if (c->dev.active && c->dev.queues[RECEIVEQ].enabled)
        deliver_input(c);
}

static int activate(struct virtio_dev *d)
{
    struct virtio_console *c = d->opaque;
    c->input_handler = event_loop_add(&d->io.loop, c->input_fd, EPOLLIN, on_input, c);
    if (!c->input_handler)
        return -1;
    if (d->queues[TRANSMITQ].enabled)
        transmit(c);
    if (d->queues[RECEIVEQ].enabled)
        deliver_input(c);
    return 0;
}

static void quiesce(struct virtio_dev *d)
{
    struct virtio_console *c = d->opaque;
    if (c->input_handler)
        event_loop_del(&d->io.loop, c->input_handler);
    c->input_handler = NULL;
}

static void read_config(struct virtio_dev *d, uint32_t offset, void *data, uint32_t len)
{
    struct virtio_console *c = d->opaque;
    uint8_t cfg[12] = {0};
    memcpy(cfg + 0, &c->cols, 2);
    memcpy(cfg + 2, &c->rows, 2);
    /* max_nr_ports (4) and emerg_wr (8) stay 0: one port, no emergency write. */
    memcpy(data, cfg + offset, len);
}

/* Snapshots: the host's input not yet delivered to the guest. Nothing else is the model's:
 * every chain taken from a ring is answered before the handler returns, and the
 * configuration (80x25, no emergency write) is fixed. */
static void save(struct virtio_dev *d, struct snapshot_writer *w)
{
    struct virtio_console *c = d->opaque;
    uint8_t buf[VIRTIO_CONSOLE_INPUT_BUF];
    pthread_mutex_lock(&c->input_lock);
    size_t len = c->input_len;
    for (size_t i = 0; i < len; i++)
        buf[i] = c->input[(c->input_head + i) % VIRTIO_CONSOLE_INPUT_BUF];
    pthread_mutex_unlock(&c->input_lock);
    snapshot_put_u32(w, (uint32_t)len);
    snapshot_put_bytes(w, buf, len);
}

static int restore(struct virtio_dev *d, struct snapshot_cursor *cur)
{
    struct virtio_console *c = d->opaque;
    uint8_t buf[VIRTIO_CONSOLE_INPUT_BUF];
    uint32_t len;
    if (snapshot_get_u32(cur, &len) < 0)
        return -1;
    if (len > VIRTIO_CONSOLE_INPUT_BUF)
        return error_set("%u bytes of input waiting, more than the %u a console buffers", len,
                         VIRTIO_CONSOLE_INPUT_BUF);
    if (snapshot_get_bytes(cur, buf, len) < 0)
        return -1;
    /* The saved input comes first; anything the host sent this process already follows, as
     * far as it fits. */
    pthread_mutex_lock(&c->input_lock);
    size_t kept = c->input_len, dropped = 0;
    if (kept > VIRTIO_CONSOLE_INPUT_BUF - len) {
        dropped = kept - (VIRTIO_CONSOLE_INPUT_BUF - len);
        kept -= dropped;
    }
    uint8_t later[VIRTIO_CONSOLE_INPUT_BUF];
    for (size_t i = 0; i < kept; i++)
        later[i] = c->input[(c->input_head + i) % VIRTIO_CONSOLE_INPUT_BUF];
    memcpy(c->input, buf, len);
    memcpy(c->input + len, later, kept);
    c->input_head = 0;
    c->input_len = len + kept;
    pthread_mutex_unlock(&c->input_lock);
    if (dropped)
        log_warn("%s: %zu bytes of input that came before the restore dropped for the saved "
                 "input",
                 d->name, dropped);
    return 0;
}

static const struct virtio_dev_ops console_ops = {
    .read_config = read_config,
    .activate = activate,
    .quiesce = quiesce,
    .queue_notify = queue_notify,
    .save = save,
    .restore = restore,
};

int virtio_console_init(struct virtio_console *c, const struct guest_memory *mem,
                        void (*output)(void *, const uint8_t *, size_t),
                        void (*input_space)(void *), void *opaque)
{
    memset(c, 0, sizeof(*c));
    c->output = output;
    c->input_space = input_space;
    c->opaque = opaque;
    c->cols = 80;
    c->rows = 25;
    pthread_mutex_init(&c->input_lock, NULL);
    c->input_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->input_fd < 0)
        return error_errno("console: eventfd");
    if (virtq_chain_alloc(&c->chain, CONSOLE_QUEUE_SIZE) < 0)
        return -1;
    return virtio_dev_init(&c->dev, "console", VIRTIO_ID_CONSOLE, 1ULL << VIRTIO_CONSOLE_F_SIZE, 2,
                           CONSOLE_QUEUE_SIZE, 12, &console_ops, c, mem);
}

void virtio_console_destroy(struct virtio_console *c)
{
    virtio_dev_destroy(&c->dev);
    if (c->input_fd >= 0)
        close(c->input_fd);
    virtq_chain_free(&c->chain);
    pthread_mutex_destroy(&c->input_lock);
}

size_t virtio_console_receive(struct virtio_console *c, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&c->input_lock);
    size_t space = VIRTIO_CONSOLE_INPUT_BUF - c->input_len;
    size_t take = len < space ? len : space;
    for (size_t i = 0; i < take; i++)
        c->input[(c->input_head + c->input_len + i) % VIRTIO_CONSOLE_INPUT_BUF] = buf[i];
    c->input_len += take;
    if (take < len)
        c->input_was_full = true;
    pthread_mutex_unlock(&c->input_lock);
    if (take) {
        uint64_t one = 1;
        ssize_t ignored = write(c->input_fd, &one, sizeof(one));
        (void)ignored;
    }
    return take;
}
