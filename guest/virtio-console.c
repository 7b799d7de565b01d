/*
 * virtio-console (port 0 only, no MULTIPORT): the guest writes a greeting, waits for one line
 * of host input on the receive queue, and echoes it back as "virtio-console echo: LINE". The
 * harness pipes console_input= into the VMM's console and looks for both lines on its output;
 * then console_bulk_len= more bytes, which must arrive with the cksum console_bulk_cksum=.
 */
#include "guest.h"
#include "io.h"
#include "virtio.h"

#define RECEIVEQ      0
#define TRANSMITQ     1
#define RX_BUFFERS    8
#define RX_BUF_SIZE   512
#define WAIT_US       5000000
#define INPUT_WAIT_US 10000000
#define MAX_LINE      256

#define GREETING "virtio-console: hello from the guest"

static struct virtio_device *console;
static bool up;
static char line[MAX_LINE + 1];
static size_t line_len;
static uint8_t *rx_buffers;

static enum test_result find_console(void)
{
    console = virtio_find(VIRTIO_ID_CONSOLE, 0);
    return console ? TEST_PASS : TEST_FAIL;
}

static enum test_result bring_up(void)
{
    if (!console)
        return skip("no console");
    uint64_t wanted = VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
    if (!virtio_begin(console, wanted, true) || !virtio_queue_setup(console, RECEIVEQ, 0, true) ||
        !virtio_queue_setup(console, TRANSMITQ, 0, true))
        return TEST_FAIL;
    /* Receive buffers go in before DRIVER_OK, so input can land at once. */
    struct virtq *rx = &console->queues[RECEIVEQ];
    rx_buffers = phys_alloc(RX_BUFFERS * RX_BUF_SIZE, 64);
    for (unsigned i = 0; i < RX_BUFFERS; i++) {
        struct vbuf b = {(uint64_t)(rx_buffers + i * RX_BUF_SIZE), RX_BUF_SIZE, true};
        if (virtq_add(rx, &b, 1, rx_buffers + i * RX_BUF_SIZE) < 0)
            return TEST_FAIL;
    }
    virtio_driver_ok(console);
    virtq_kick(rx);
    diag("features 0x%lx; %u cols x %u rows", console->features, virtio_config_read16(console, 0),
         virtio_config_read16(console, 2));
    up = !(virtio_get_status(console) & VIRTIO_STATUS_NEEDS_RESET);
    return up ? TEST_PASS : TEST_FAIL;
}

static bool transmit(const char *text, size_t len)
{
    static char buf[MAX_LINE + 64];
    if (len > sizeof(buf))
        return false;
    memcpy(buf, text, len);
    struct vbuf b = {(uint64_t)buf, (uint32_t)len, false};
    return virtq_transfer(&console->queues[TRANSMITQ], &b, 1, WAIT_US) >= 0;
}

static enum test_result greet(void)
{
    if (!up)
        return skip("console not up");
    return transmit(GREETING "\n", sizeof(GREETING)) ? TEST_PASS : TEST_FAIL;
}

/* Host input as a stream: the receive buffer being read, given back when used up. */
static uint8_t *rx_cur;
static uint32_t rx_len, rx_off;

static int rx_byte(uint64_t deadline)
{
    struct virtq *rx = &console->queues[RECEIVEQ];
    while (rx_off >= rx_len) {
        if (rx_cur) {
            struct vbuf b = {(uint64_t)rx_cur, RX_BUF_SIZE, true};
            virtq_add(rx, &b, 1, rx_cur);
            virtq_kick(rx);
            rx_cur = NULL;
        }
        uint64_t now = time_us();
        if (now >= deadline || (!virtq_has_used(rx) && !virtq_wait(rx, deadline - now)))
            return -1;
        rx_cur = virtq_get(rx, &rx_len);
        rx_off = 0;
        if (rx_len > RX_BUF_SIZE) {
            diag("the device says it wrote %u bytes into a %u-byte buffer", rx_len, RX_BUF_SIZE);
            rx_len = RX_BUF_SIZE;
        }
    }
    return rx_cur[rx_off++];
}

static enum test_result receive_line(void)
{
    if (!up)
        return skip("console not up");
    uint64_t start = time_us();
    int c;
    while ((c = rx_byte(start + INPUT_WAIT_US)) >= 0 && c != '\n') {
        if (line_len < MAX_LINE)
            line[line_len++] = (char)c;
    }
    line[line_len] = '\0';
    if (c < 0) {
        diag("no complete line within %u ms (got \"%s\")", INPUT_WAIT_US / 1000, line);
        return TEST_FAIL;
    }
    char want[MAX_LINE + 1];
    if (!cmdline_get("console_input", want, sizeof(want))) {
        diag("got \"%s\"; no console_input= to compare with", line);
        return TEST_FAIL;
    }
    diag("got \"%s\" after %lu ms", line, (time_us() - start) / 1000);
    return strlen(want) == line_len && !strncmp(want, line, line_len) ? TEST_PASS : TEST_FAIL;
}

/* console_bulk_len= bytes after the line, with the cksum(1) CRC console_bulk_cksum=: more than
 * the receive buffers and the VMM's input buffer hold at once. */
static enum test_result receive_bulk(void)
{
    if (!up)
        return skip("console not up");
    uint64_t len, want;
    if (!cmdline_get_u64("console_bulk_len", &len) || !cmdline_get_u64("console_bulk_cksum", &want))
        return skip("no console_bulk_len= and console_bulk_cksum= on the command line");
    uint64_t start = time_us(), got = 0;
    uint32_t crc = 0;
    while (got < len) {
        int c = rx_byte(start + INPUT_WAIT_US);
        if (c < 0)
            break;
        uint8_t byte = (uint8_t)c;
        crc = cksum_update(crc, &byte, 1);
        got++;
    }
    uint32_t sum = cksum_final(crc, got);
    diag("%lu of %lu bytes in %lu ms, cksum %u, expected %lu", got, len, (time_us() - start) / 1000,
         sum, want);
    return got == len && sum == want ? TEST_PASS : TEST_FAIL;
}

static enum test_result echo(void)
{
    if (!line_len)
        return skip("no input line");
    char out[MAX_LINE + 40];
    int n = snprintf(out, sizeof(out), "virtio-console echo: %s\n", line);
    return transmit(out, (size_t)n) ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-console found", find_console},
    {"features negotiated, queues up", bring_up},
    {"output reaches the host", greet},
    {"a line of host input arrives", receive_line},
    {"the line is echoed back", echo},
    {"bulk input arrives complete and in order", receive_bulk},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
