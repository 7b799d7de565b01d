/* A stand-in for the agent a Firecracker client runs in its guest (firecracker-containerd's
 * listens on vsock port 10789): answers the host's vsock connections on agent_port= (default
 * 10789), each "ping N" line with "pong N", and like `keyboard` waits for Ctrl+Alt+Del, then
 * powers off through the i8042. It prints the guest CID the device gives (Firecracker's
 * clients may leave it 0). The vsock device is polled each PIT tick (100 Hz); the guest
 * halts in between. Never ends by itself: tests/clients drives it. */
#include "guest.h"
#include "io.h"
#include "vsock.h"

#define TICK_HZ 100

static volatile uint64_t ticks;
static volatile bool ctrl, alt, extended, saw_ctrl_alt_del;
static struct vsock vs;
static unsigned pongs;

static void on_tick(struct interrupt_frame *frame)
{
    (void)frame;
    ticks++;
    pic_eoi(0);
}

/* Scancode set 1, as the controller delivers it with translation on (its default). */
static void on_key(struct interrupt_frame *frame)
{
    (void)frame;
    while (inb(0x64) & 1) {
        uint8_t code = inb(0x60);
        if (code == 0xe0) {
            extended = true;
            continue;
        }
        bool release = code & 0x80;
        uint8_t key = code & 0x7f;
        if (key == 0x1d)
            ctrl = !release;
        else if (key == 0x38)
            alt = !release;
        else if (key == 0x53 && extended && !release && ctrl && alt)
            saw_ctrl_alt_del = true;
        extended = false;
    }
    pic_eoi(1);
}

static uint32_t line_length(const uint8_t *p, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++) {
        if (p[i] == '\n')
            return i + 1;
    }
    return 0;
}

/* Every whole line each connection holds: "ping N" gets "pong N", anything else an RST. */
static void serve(void)
{
    vsock_poll(&vs);
    for (unsigned i = 0; i < VSOCK_CONNS; i++) {
        struct vsock_conn *c = &vs.conns[i];
        if (c->state == VSOCK_OPEN && !c->claimed) {
            vsock_claim(c);
            diag("vsock-agent: connection from host port %u", c->peer_port);
        }
        if (!c->claimed)
            continue;
        uint32_t n;
        while (c->state == VSOCK_OPEN && (n = line_length(c->data, c->len)) > 0) {
            char line[64], reply[80];
            if (n > sizeof(line) - 1 || vsock_read(&vs, c, line, n, 0) != (int32_t)n || n < 7 ||
                memcmp(line, "ping ", 5)) {
                diag("vsock-agent: not a ping line; connection reset");
                vsock_close(&vs, c);
                break;
            }
            line[n - 1] = '\0';
            snprintf(reply, sizeof(reply), "pong %s\n", line + 5);
            if (vsock_write(&vs, c, reply, (uint32_t)strlen(reply)))
                pongs++;
        }
        if (c->claimed && c->state == VSOCK_CLOSED)
            vsock_close(&vs, c); /* the host hung up: the slot is free again */
    }
}

void guest_main(void)
{
    printf("1..3\n");
    (void)time_us(); /* calibrates the TSC against the PIT before the PIT ticks */
    uint64_t port = 10789;
    cmdline_get_u64("agent_port", &port);
    struct virtio_device *d = virtio_find(VIRTIO_ID_VSOCK, 0);
    bool up = d && port && port <= 0xffffffffu && vsock_open(&vs, d);
    printf("%s 1 - vsock device live, guest CID %lu, listening on port %lu\n", up ? "ok" : "not ok",
           (unsigned long)vs.cid, (unsigned long)port);
    if (up)
        vsock_listen(&vs, (uint32_t)port);

    lapic_enable();
    ioapic_mask_all();
    lapic_write(LAPIC_LVT_LINT0, LVT_EXTINT); /* virtual wire: the PIC reaches the BSP */
    pic_init();
    interrupt_set_handler(VECTOR_PIC_BASE + 0, on_tick);
    interrupt_set_handler(VECTOR_PIC_BASE + 1, on_key);
    outb(0x64, 0x60); /* keyboard interrupts on, translation on (what Linux leaves set) */
    outb(0x60, 0x45);
    pic_set_mask(0, false);
    pic_set_mask(1, false);
    pit_start_periodic(TICK_HZ);
    printf("# vsock-agent: waiting for Ctrl+Alt+Del\n");
    for (;;) {
        __asm__ volatile("cli");
        if (saw_ctrl_alt_del)
            break;
        if (up)
            serve();
        __asm__ volatile("sti; hlt");
    }
    pit_stop();
    printf("ok 2 - answered %u ping(s)\n", pongs);
    printf("ok 3 - received Ctrl+Alt+Del\n");
    i8042_reset();
    debug_exit(0);
}
