/* libFuzzer target: the virtio devices (blk, net, console, rng, vsock, pmem) on both transports
 * (virtio-mmio; virtio-pci with its PCI configuration space, BAR moves, MSI-X table and PBA
 * and the PCI_CFG window), driven the way a guest driver and the host drive them: register
 * accesses of every width, ring contents (split and packed, indirect tables, well-formed
 * requests for each device), host-side events (frames from the host, vsock connections,
 * console input, block completions, rate limiter timers), over guest RAM in two regions
 * split around the 32-bit hole.
 *
 * Deterministic: right after the device is made its I/O thread is stopped and its event
 * loop recreated, so iothread_call() runs its work inline on this thread, and the harness
 * runs the loop itself between operations. A failure then reproduces from its input alone.
 *
 * Guest RAM is a mapping with an inaccessible page before and after each region, so that
 * any access past a region faults. After every input the device is reset through its
 * transport and the harness checks that the reset is complete (status 0, the queue
 * registers back to their defaults, nothing left registered in the event loop), that the
 * device no longer touches guest memory (RAM is made inaccessible while host-side events
 * arrive), that no handler keeps firing without input, and that no file descriptor leaked.
 *
 * Input: a 4-byte header, then operations until the input ends.
 *   header[0]  bits 0-2 device (blk, net, console, rng, vsock, pmem), bit 3 PCI (else MMIO),
 *              bit 4 one RAM region only (no RAM above 4 GiB)
 *   header[1..2] device options (little-endian, see make_blk, make_net, make_device)
 *   header[3]  rate limits (see limit_from)
 *   operation: one byte (bits 0-6: opcode modulo OP_COUNT; bit 7: the event loop does not
 *              run after it) and its operands, see run_op.
 * tests/fuzz/make_seeds.py writes the seeds in this format. */
#include "arch/x86/layout.h"
#include "backends/uds.h"
#include "bus/bus.h"
#include "bus/pci.h"
#include "support/net_pair.h"
#include "support/virtio_harness.h"
#include "util/eventloop.h"
#include "util/log.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/mmio.h"
#include "virtio/net.h"
#include "virtio/pci.h"
#include "virtio/pmem.h"
#include "virtio/rng.h"
#include "virtio/vsock.h"

#include <dirent.h>
#include <sanitizer/common_interface_defs.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* ---- guest RAM ------------------------------------------------------------------------ */

#define PAGE        4096u
#define REGION_SIZE (512u << 10)
#define HIGH_GPA    (1ULL << 32)
#define RING_AREA   (128u << 10) /* queue q's rings at RING_STRIDE * q in a region */
#define RING_STRIDE 0x2000u
#define MAX_QUEUES  VIRTIO_BLK_MAX_QUEUES

/* ---- limits that keep one input short --------------------------------------------------- */

#define MAX_OPS        512
#define WAIT_BUDGET_US 4000 /* time an input may spend waiting for timers */
#define SPIN_ROUNDS    4096 /* loop rounds with events, once no input arrives any more */
#define SPIN_NS        (500 * 1000000ULL)
#define MAX_HOST_FDS   8
#define MAX_LOG_LINES  64 /* per input: every line a guest can cause is rate limited */

#define OTHER_DEVICE 0xe0100000ULL /* another device's range, for BARs moved onto it */

/* Process-wide: made once. */
static struct {
    uint8_t *map;
    size_t map_len;
    uint8_t *region[2]; /* host addresses of the low and the high region */
    char dir[64];
    char vsock_path[128];
    int listeners[2]; /* PATH_1, PATH_2: host programs guest connections reach */
    char blk_path[2][128];
    char pmem_path[128];
    char log_path[128];
    int log_fd; /* the log, read back to count lines */
} g;

/* One input's machine. */
static struct {
    struct virtio_harness vh; /* the device and its transport */
    struct guest_memory mem;
    int clients[MAX_HOST_FDS];  /* vsock: host programs connected to PATH */
    int accepted[MAX_HOST_FDS]; /* vsock: guest connections accepted on PATH_1/PATH_2 */
    /* The driver's view of each queue. */
    struct {
        uint16_t next_desc;          /* split: next descriptor index */
        uint16_t next_slot, next_id; /* packed: next ring slot and buffer id */
        bool wrap;                   /* packed: the driver's wrap counter */
    } q[MAX_QUEUES];
    uint64_t bump[2]; /* data allocation in each region */
    long wait_left_us;
    uint64_t console_bytes, console_space_calls;
    /* The driver wrote DEVICE_NEEDS_RESET itself: the device may be serving with it set (a
     * bit only the device should set; see check_state). Until the next reset. */
    bool driver_wrote_needs_reset;
} h;

/* ---- input ------------------------------------------------------------------------------ */

static const uint8_t *in_p;
static size_t in_n;

static uint8_t u8(void)
{
    if (!in_n)
        return 0;
    in_n--;
    return *in_p++;
}

static uint16_t u16(void)
{
    uint16_t lo = u8();
    return (uint16_t)(lo | u8() << 8);
}

static uint32_t u32(void)
{
    uint32_t lo = u16();
    return lo | (uint32_t)u16() << 16;
}

static uint64_t u64(void)
{
    uint64_t lo = u32();
    return lo | (uint64_t)u32() << 32;
}

/* Up to len bytes of input into buf; the rest of buf gets a pattern. */
static void take(uint8_t *buf, size_t len)
{
    size_t n = len < in_n ? len : in_n;
    memcpy(buf, in_p, n);
    in_p += n;
    in_n -= n;
    for (size_t i = n; i < len; i++)
        buf[i] = (uint8_t)(i * 7 + 1);
}

static bool trace; /* FUZZ_DEVICES_TRACE set: what each input did, on stderr */

static void cleanup(void);

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_devices: invariant broken: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    cleanup(); /* abort() skips atexit */
    abort();
}

/* ---- guest memory, the driver's side -------------------------------------------------- */

static uint64_t region_gpa(unsigned r)
{
    return r ? HIGH_GPA : 0;
}

static unsigned nregions(void)
{
    return h.mem.nregions;
}

static void guest_put(uint64_t gpa, const void *src, uint64_t len)
{
    void *p = gpa_to_hva(&h.mem, gpa, len);
    if (p && len)
        memcpy(p, src, len);
}

static bool guest_get(uint64_t gpa, void *dst, uint64_t len)
{
    void *p = gpa_to_hva(&h.mem, gpa, len);
    if (p)
        memcpy(dst, p, len);
    return p != NULL;
}

static void guest_protect(int prot)
{
    if (mprotect(g.region[0], REGION_SIZE, prot) < 0 ||
        mprotect(g.region[1], REGION_SIZE, prot) < 0)
        die("mprotect: %s", strerror(errno));
}

/* Where a buffer of len bytes goes: sel picks the region and a place (inside it, ending at
 * its end, crossing its end, straddling 4 GiB, or any address the input gives). */
static uint64_t place(uint8_t sel, uint64_t len)
{
    unsigned r = (sel >> 3) & 1;
    if (r >= nregions())
        r = 0;
    uint64_t end = region_gpa(r) + REGION_SIZE;
    switch (sel & 7) {
    case 4:
        return end - len;
    case 5:
        return end - len + 1 + (sel >> 4);
    case 6:
        return HIGH_GPA - len / 2;
    case 7:
        return u64();
    default: {
        uint64_t room = REGION_SIZE - RING_AREA;
        uint64_t need = (len + 15) & ~15ULL;
        if (need > room)
            return region_gpa(r) + RING_AREA; /* runs off the region's end: refused */
        if (h.bump[r] + need > room)
            h.bump[r] = 0;
        uint64_t gpa = region_gpa(r) + RING_AREA + h.bump[r];
        h.bump[r] += need;
        return gpa;
    }
    }
}

/* ---- transports ------------------------------------------------------------------------ */

static void mmio_rw(uint64_t addr, void *data, uint32_t len, bool is_write)
{
    bus_dispatch(&h.vh.mmio, addr, data, len, is_write);
}

static uint64_t bar0(void)
{
    return h.vh.vpci.fn.bars[0].addr;
}

/* ---- the life-cycle rule, checked around every register write ------------------------- */

/* What a register write may change, and what the rule says about it. */
struct state {
    uint8_t status;
    bool active;
    uint32_t config_generation;
    uint16_t command; /* PCI */
    struct {
        struct virtq_config cfg;
        bool enabled;
    } q[MAX_QUEUES];
};

static uint16_t pci_command(void);
static int epoll_registrations(bool print);

static void snapshot(struct state *s)
{
    struct virtio_dev *d = h.vh.dev;
    s->status = __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    s->active = d->active;
    s->config_generation = __atomic_load_n(&d->config_generation, __ATOMIC_SEQ_CST);
    s->command = h.vh.pci ? pci_command() : 0;
    for (unsigned q = 0; q < d->nqueues && q < MAX_QUEUES; q++) {
        s->q[q].cfg = d->queues[q].cfg;
        s->q[q].enabled = d->queues[q].enabled;
    }
}

static bool same_queue(const struct state *a, const struct state *b, unsigned q)
{
    const struct virtq_config *x = &a->q[q].cfg, *y = &b->q[q].cfg;
    return x->size == y->size && x->desc_gpa == y->desc_gpa && x->avail_gpa == y->avail_gpa &&
           x->used_gpa == y->used_gpa;
}

/* Whatever happened (a register write, a round of the event loop), the state the device is
 * in must be one the rule allows. */
static void check_state(const char *after)
{
    struct virtio_dev *d = h.vh.dev;
    uint8_t st = __atomic_load_n(&d->status, __ATOMIC_SEQ_CST);
    if ((st & VIRTIO_STATUS_DRIVER_OK) && !(st & VIRTIO_STATUS_FEATURES_OK))
        die("%s: status 0x%02x (DRIVER_OK without FEATURES_OK) after %s", d->name, st, after);
    if ((st & VIRTIO_STATUS_NEEDS_RESET) && d->active && !h.driver_wrote_needs_reset)
        die("%s: still serving with DEVICE_NEEDS_RESET (status 0x%02x) after %s", d->name, st,
            after);
    if ((st & VIRTIO_STATUS_DRIVER_OK) && !(st & VIRTIO_STATUS_NEEDS_RESET) && !d->active)
        die("%s: live (status 0x%02x) but not serving after %s", d->name, st, after);
    if (!(st & VIRTIO_STATUS_DRIVER_OK) && d->active)
        die("%s: serving without DRIVER_OK (status 0x%02x) after %s", d->name, st, after);
    if ((st & VIRTIO_STATUS_FEATURES_OK) && ((d->driver_features & ~d->host_features) ||
                                             !(d->driver_features >> VIRTIO_F_VERSION_1 & 1)))
        die("%s: FEATURES_OK with features 0x%llx (offered 0x%llx) after %s", d->name,
            (unsigned long long)d->driver_features, (unsigned long long)d->host_features, after);
}

/* A register write took the device from b to now. status_written: the value, when the write
 * was one to the status register (-1 otherwise). */
static void check_transition(const struct state *b, int status_written, const char *what)
{
    struct virtio_dev *d = h.vh.dev;
    struct state a;
    snapshot(&a);
    check_state(what);
    if (a.status == 0 && (status_written == 0 || b->status != 0)) {
        /* A reset, complete when the write returns: nothing the driver set is left. */
        h.driver_wrote_needs_reset = false;
        if (d->driver_features)
            die("%s: driver features 0x%llx survive a reset", d->name,
                (unsigned long long)d->driver_features);
        for (unsigned q = 0; q < d->nqueues && q < MAX_QUEUES; q++) {
            const struct virtq_config *c = &a.q[q].cfg;
            if (a.q[q].enabled || c->size != d->queue_max_size || c->desc_gpa || c->avail_gpa ||
                c->used_gpa)
                die("%s: queue %u keeps its registers across a reset", d->name, q);
        }
        if (b->status != 0 && epoll_registrations(false) != 1 && epoll_registrations(true))
            die("%s: descriptors still registered in the event loop after a reset", d->name);
        return;
    }
    if (status_written == 0)
        die("%s: status 0x%02x after a reset", d->name, a.status);
    /* Bits are only ever added. */
    if (b->status & ~a.status)
        die("%s: status 0x%02x -> 0x%02x after %s: bits cleared without a reset", d->name,
            b->status, a.status, what);
    if (b->status & VIRTIO_STATUS_NEEDS_RESET) {
        if (a.status != b->status)
            die("%s: status 0x%02x -> 0x%02x after %s while the device needs a reset", d->name,
                b->status, a.status, what);
    } else if (status_written > 0 && ((uint8_t)b->status & ~(uint8_t)status_written)) {
        /* A write that would clear bits: refused, the device stops, NEEDS_RESET and a
         * configuration interrupt. */
        if (a.status != (b->status | VIRTIO_STATUS_NEEDS_RESET))
            die("%s: status 0x%02x, written 0x%02x: now 0x%02x, not 0x%02x", d->name, b->status,
                status_written, a.status, b->status | VIRTIO_STATUS_NEEDS_RESET);
        if (a.config_generation == b->config_generation)
            die("%s: no configuration interrupt for NEEDS_RESET (status 0x%02x written over "
                "0x%02x)",
                d->name, status_written, b->status);
    }
    /* Queue registers are read-only while the device is live or needs a reset, a queue's
     * layout while it is enabled (MSI-X vectors are not checked: they stay writable). */
    bool frozen = b->status & (VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_NEEDS_RESET);
    for (unsigned q = 0; q < d->nqueues && q < MAX_QUEUES; q++) {
        if ((frozen || b->q[q].enabled) && !same_queue(b, &a, q))
            die("%s: queue %u's layout changed after %s (status 0x%02x, %s)", d->name, q, what,
                b->status, b->q[q].enabled ? "enabled" : "not enabled");
        if (frozen && a.q[q].enabled != b->q[q].enabled)
            die("%s: queue %u enable changed after %s (status 0x%02x)", d->name, q, what,
                b->status);
    }
    /* PCI: Bus Master Enable cleared while live stops the device, without an interrupt. */
    if (h.vh.pci && (b->command & PCI_COMMAND_MASTER) && !(a.command & PCI_COMMAND_MASTER) &&
        (b->status & VIRTIO_STATUS_DRIVER_OK) && !(b->status & VIRTIO_STATUS_NEEDS_RESET) &&
        !(a.status & VIRTIO_STATUS_NEEDS_RESET))
        die("%s: bus mastering off while live, yet no NEEDS_RESET (status 0x%02x)", d->name,
            a.status);
}

/* The status value a write of len bytes at BAR/window offset off writes, or -1. */
static int status_value(uint64_t off, const void *data, uint32_t len)
{
    if (!(h.vh.pci ? off == 0x14 && len == 1 : off == 0x70 && len == 4))
        return -1;
    uint8_t v;
    memcpy(&v, data, 1);
    return v;
}

/* A register of the device's window (virtio-mmio) or BAR 0 (virtio-pci). */
static void reg_rw(uint64_t off, void *data, uint32_t len, bool is_write)
{
    uint64_t addr = (h.vh.pci ? bar0() : MMIO_BASE) + off;
    if (!is_write) {
        mmio_rw(addr, data, len, false);
        return;
    }
    struct state before;
    snapshot(&before);
    /* Where the BAR is, the window is not: a miss is no status write. */
    bool hits = h.vh.pci ? (h.vh.vpci.fn.bars[0].mapped &&
                            h.vh.vpci.fn.bars[0].mapped_addr == bar0() && off < VIRTIO_PCI_BAR_SIZE)
                         : off < VIRTIO_MMIO_WINDOW;
    int status = hits ? status_value(off, data, len) : -1;
    if (status > 0 && (status & VIRTIO_STATUS_NEEDS_RESET) &&
        !(before.status & VIRTIO_STATUS_NEEDS_RESET))
        h.driver_wrote_needs_reset = true;
    mmio_rw(addr, data, len, true);
    check_transition(&before, status, "a register write");
}

static void reg_write(uint64_t off, uint32_t len, uint64_t v)
{
    reg_rw(off, &v, len, true);
}

static uint64_t reg_read(uint64_t off, uint32_t len)
{
    uint64_t v = 0;
    reg_rw(off, &v, len, false);
    return len < 8 ? v & ((1ULL << (8 * len)) - 1) : v;
}

/* PCI configuration space through ports 0xcf8/0xcfc, as a guest reaches it. */
static void cfg_rw(uint32_t address, uint32_t reg, uint32_t len, uint32_t *v, bool is_write)
{
    uint32_t a = address | (reg & 0xfc);
    struct state before;
    if (is_write)
        snapshot(&before);
    bus_dispatch(&h.vh.pio, PCI_CONFIG_ADDRESS_PORT, (uint8_t *)&a, 4, true);
    bus_dispatch(&h.vh.pio, PCI_CONFIG_DATA_PORT + (reg & 3), (uint8_t *)v, len, is_write);
    if (is_write)
        check_transition(&before, -1, "a PCI configuration write");
}

static uint16_t pci_command(void)
{
    uint16_t v;
    memcpy(&v, h.vh.vpci.fn.config + PCI_COMMAND, 2);
    return v;
}

static uint32_t cfg_address(void)
{
    return 0x80000000u | h.vh.vpci.fn.slot << 11;
}

static void cfg_write(uint32_t reg, uint32_t len, uint32_t v)
{
    cfg_rw(cfg_address(), reg, len, &v, true);
}

static uint32_t cfg_read(uint32_t reg, uint32_t len)
{
    uint32_t v = 0;
    cfg_rw(cfg_address(), reg, len, &v, false);
    return v;
}

/* virtio-mmio registers (4.2.2) and virtio-pci common configuration (4.1.4.3). */
enum {
    M_DEVICE_FEATURES = 0x10,
    M_DEVICE_FEATURES_SEL = 0x14,
    M_DRIVER_FEATURES = 0x20,
    M_DRIVER_FEATURES_SEL = 0x24,
    M_QUEUE_SEL = 0x30,
    M_QUEUE_NUM_MAX = 0x34,
    M_QUEUE_NUM = 0x38,
    M_QUEUE_READY = 0x44,
    M_QUEUE_NOTIFY = 0x50,
    M_STATUS = 0x70,
    M_QUEUE_DESC = 0x80,
    M_QUEUE_DRIVER = 0x90,
    M_QUEUE_DEVICE = 0xa0,
    M_CONFIG = 0x100,
    P_DFSELECT = 0x00,
    P_DF = 0x04,
    P_GFSELECT = 0x08,
    P_GF = 0x0c,
    P_MSIX_CONFIG = 0x10,
    P_STATUS = 0x14,
    P_QUEUE_SELECT = 0x16,
    P_QUEUE_SIZE = 0x18,
    P_QUEUE_MSIX = 0x1a,
    P_QUEUE_ENABLE = 0x1c,
    P_QUEUE_DESC = 0x20,
    P_QUEUE_DRIVER = 0x28,
    P_QUEUE_DEVICE = 0x30,
};

static void reset_driver_model(void);

static void status_write(uint8_t v)
{
    if (h.vh.pci)
        reg_write(P_STATUS, 1, v);
    else
        reg_write(M_STATUS, 4, v);
}

static uint8_t status_read(void)
{
    return (uint8_t)(h.vh.pci ? reg_read(P_STATUS, 1) : reg_read(M_STATUS, 4));
}

static uint32_t device_features(uint32_t sel)
{
    reg_write(h.vh.pci ? P_DFSELECT : M_DEVICE_FEATURES_SEL, 4, sel);
    return (uint32_t)reg_read(h.vh.pci ? P_DF : M_DEVICE_FEATURES, 4);
}

static void driver_features(uint32_t sel, uint32_t v)
{
    reg_write(h.vh.pci ? P_GFSELECT : M_DRIVER_FEATURES_SEL, 4, sel);
    reg_write(h.vh.pci ? P_GF : M_DRIVER_FEATURES, 4, v);
}

static void queue_select(uint32_t q)
{
    if (h.vh.pci)
        reg_write(P_QUEUE_SELECT, 2, q);
    else
        reg_write(M_QUEUE_SEL, 4, q);
}

enum queue_reg { Q_SIZE, Q_DESC, Q_DRIVER, Q_DEVICE, Q_ENABLE, Q_VECTOR, Q_REG_COUNT };

/* Writes a register of the selected queue; split says 64-bit addresses go as two halves. */
static void queue_write(enum queue_reg r, uint64_t v, bool split)
{
    static const uint32_t mmio_off[] = {M_QUEUE_NUM,    M_QUEUE_DESC,  M_QUEUE_DRIVER,
                                        M_QUEUE_DEVICE, M_QUEUE_READY, 0};
    static const uint32_t pci_off[] = {P_QUEUE_SIZE,   P_QUEUE_DESC,   P_QUEUE_DRIVER,
                                       P_QUEUE_DEVICE, P_QUEUE_ENABLE, P_QUEUE_MSIX};
    if (r == Q_SIZE || r == Q_ENABLE || r == Q_VECTOR) {
        if (h.vh.pci)
            reg_write(pci_off[r], 2, v);
        else if (r != Q_VECTOR)
            reg_write(mmio_off[r], 4, v);
        return;
    }
    if (h.vh.pci && !split) {
        reg_write(pci_off[r], 8, v);
        return;
    }
    uint32_t off = h.vh.pci ? pci_off[r] : mmio_off[r];
    reg_write(off, 4, (uint32_t)v);
    reg_write(off + 4, 4, v >> 32);
}

static uint64_t queue_read(enum queue_reg r)
{
    static const uint32_t mmio_off[] = {M_QUEUE_NUM_MAX, 0, 0, 0, M_QUEUE_READY, 0};
    static const uint32_t pci_off[] = {P_QUEUE_SIZE,   P_QUEUE_DESC,   P_QUEUE_DRIVER,
                                       P_QUEUE_DEVICE, P_QUEUE_ENABLE, P_QUEUE_MSIX};
    if (h.vh.pci)
        return reg_read(pci_off[r], r >= Q_DESC && r <= Q_DEVICE ? 8 : 2);
    return mmio_off[r] ? reg_read(mmio_off[r], 4) : 0;
}

static void notify(uint32_t q, uint8_t how)
{
    if (!h.vh.pci) {
        reg_write(M_QUEUE_NOTIFY, 4, how & 1 ? q | (uint32_t)u16() << 16 : q);
        return;
    }
    /* One notify address per queue; drivers write the queue index (16 bits). */
    uint32_t len = (how & 1) ? 1u << (how >> 1 & 3) : 2;
    reg_write(VIRTIO_PCI_NOTIFY_OFF + (uint64_t)q * VIRTIO_PCI_NOTIFY_MULT, len, q);
}

static void config_rw(uint32_t off, void *data, uint32_t len, bool is_write)
{
    reg_rw((h.vh.pci ? VIRTIO_PCI_DEVICE_OFF : M_CONFIG) + (uint64_t)off, data, len, is_write);
}

/* ---- the event loop, run by the harness ---------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* One round as the I/O thread runs it: events, then the idle hook. True if anything ran
 * or the idle hook wants another round at once. */
static bool loop_round(int timeout_ms)
{
    int n = vh_loop_round(&h.vh, timeout_ms);
    if (n < 0)
        die("event loop failed");
    return n > 0;
}

/* Handlers registered in the device's epoll set, from /proc (the loop keeps its list
 * private). */
static int epoll_registrations(bool print)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", h.vh.dev->io.loop.epoll_fd);
    FILE *f = fopen(path, "re");
    if (!f)
        die("%s: %s", path, strerror(errno));
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "tfd:", 4) != 0)
            continue;
        n++;
        int fd = atoi(line + 4);
        char link[64], target[128] = "?";
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof(target) - 1);
        target[len > 0 ? len : 1] = '\0';
        if (print)
            fprintf(stderr, "  registered: fd %d (%s): %s", fd, target, line);
    }
    fclose(f);
    return n;
}

/* Runs the loop until nothing is ready. A handler that keeps firing with no new input is a
 * device spinning its thread. */
static void run_until_idle(void)
{
    uint64_t start = now_ns();
    for (unsigned rounds = 0; loop_round(0); rounds++) {
        if (rounds > SPIN_ROUNDS && now_ns() - start > SPIN_NS) {
            epoll_registrations(true);
            die("%s: the event loop is still busy after %u rounds with no input (spinning)",
                h.vh.dev->name, rounds);
        }
    }
}

static void run_rounds(unsigned n)
{
    for (unsigned i = 0; i < n && loop_round(0); i++)
        ;
}

/* Lets time pass for timers (rate limiters, the block kick timer), within the budget. */
static void wait_us(long us)
{
    if (us > h.wait_left_us)
        us = h.wait_left_us;
    if (us <= 0)
        return;
    h.wait_left_us -= us;
    uint64_t end = now_ns() + (uint64_t)us * 1000;
    for (uint64_t t = now_ns(); t < end; t = now_ns()) {
        int ms = (int)((end - t + 999999) / 1000000);
        loop_round(ms);
    }
    run_until_idle();
}

/* The open descriptors, as a bitmap of the first 1024; their number is returned. */
static int open_fds(uint64_t set[16])
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        die("/proc/self/fd: %s", strerror(errno));
    memset(set, 0, 16 * sizeof(set[0]));
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d))
            continue;
        n++;
        if (fd < 1024)
            set[fd / 64] |= 1ULL << (fd % 64);
    }
    closedir(d);
    return n;
}

static void check_fds(const uint64_t before[16])
{
    uint64_t after[16];
    open_fds(after);
    for (int fd = 0; fd < 1024; fd++) {
        if ((after[fd / 64] >> (fd % 64) & 1) && !(before[fd / 64] >> (fd % 64) & 1)) {
            char link[64], target[256] = "?";
            snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, target, sizeof(target) - 1);
            target[n > 0 ? n : 1] = '\0';
            die("file descriptor %d (%s) left open after the input", fd, target);
        }
    }
}

/* ---- host side ------------------------------------------------------------------------ */

static void console_output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)opaque;
    (void)buf;
    h.console_bytes += len;
}

static void console_input_space(void *opaque)
{
    (void)opaque;
    h.console_space_calls++;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void drain_fd(int fd)
{
    static uint8_t sink[70000];
    if (fd < 0)
        return;
    for (int i = 0; i < 64 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        ;
}

/* Sends len bytes, the first 64 from the input (taken whether or not fd is open). */
static void send_bytes(int fd, size_t len)
{
    static uint8_t buf[65536];
    if (len > sizeof(buf))
        len = sizeof(buf);
    take(buf, len < 64 ? len : 64);
    if (fd < 0)
        return;
    ssize_t ignored = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)ignored;
}

/* ---- devices ---------------------------------------------------------------------------- */

static const struct token_bucket_config buckets[] = {
    {0, 0, 0},   {1, 0, 1},      {2, 1, 1},          {4096, 0, 1},
    {512, 0, 2}, {65536, 0, 10}, {1 << 20, 4096, 1}, {100, 1000, 1000},
};

/* Bits 0-2 the bandwidth bucket, 3-5 the operations bucket; bit 6 no bandwidth limit, bit 7
 * no operations limit. */
static struct rate_limit_config limit_from(uint8_t sel)
{
    struct rate_limit_config rl = {.bandwidth = buckets[sel & 7], .ops = buckets[sel >> 3 & 7]};
    if (sel & 0x40)
        rl.bandwidth = (struct token_bucket_config){0, 0, 0};
    if (sel & 0x80)
        rl.ops = (struct token_bucket_config){0, 0, 0};
    return rl;
}

static const uint64_t disk_sizes[] = {64 << 10, 0,           512,  4096 + 100,
                                      1 << 20,  65536 + 511, 8192, 2 << 20};

static int make_blk(uint16_t opt, uint8_t lim)
{
    static const enum blk_engine engines[] = {BLK_ENGINE_SYNC, BLK_ENGINE_URING, BLK_ENGINE_AUTO,
                                              BLK_ENGINE_SYNC};
    /* Fresh images: zeroes, the size the input says. */
    for (unsigned i = 0; i < 2; i++) {
        if (truncate(g.blk_path[i], 0) < 0 ||
            truncate(g.blk_path[i], (off_t)(i ? 64 << 10 : disk_sizes[opt >> 10 & 7])) < 0)
            die("truncate: %s", strerror(errno));
    }
    struct blk_options o = {
        .path = g.blk_path[0],
        .id = (opt & 0x2000) ? "a-serial-of-twenty-bytes-or-more" : NULL,
        .readonly = opt & 1,
        .unsafe = opt & 2,
        .direct = opt & 4,
        .engine = engines[opt >> 3 & 3],
        .queues = 1 + (opt >> 5 & 15),
        .poll_us = (opt & 0x200) ? 30 : 0,
        .rate_limit = limit_from(lim),
    };
    vh_dev(&h.vh);
    return virtio_blk_init(&h.vh.u.blk, "blk0", &o, &h.mem);
}

static int make_net(uint16_t opt, uint8_t lim)
{
    struct net_pair_options po = {.vnet_hdr = opt & 1,
                                  .offloads = opt & 2,
                                  .refuse_offloads = opt & 4,
                                  .batch = opt & 8,
                                  .sndbuf = (opt & 16) ? 4096 : 0};
    struct net_backend be;
    if (net_pair_open(&be, &po, &h.vh.net_host_fd) < 0)
        return -1;
    struct net_options o = {.backend = &be, .vhost = VHOST_OFF};
    if (opt & 32)
        o.mtu = 1500;
    if (opt & 64) {
        o.has_mac = true;
        memcpy(o.mac, "\x52\x54\x00\x12\x34\x56", 6);
    }
    if (opt & 128) {
        /* A CPU placement's polling: kicks off while the harness's idle rounds poll. */
        o.poll_us = 30;
        o.poll_adaptive = opt & 0x4000;
    }
    o.rx_limit = limit_from(lim);
    o.tx_limit = limit_from((uint8_t)(lim * 37 + (opt >> 8)));
    vh_dev(&h.vh);
    return virtio_net_init(&h.vh.u.net, "net0", &o, &h.mem);
}

static int make_device(uint16_t opt, uint8_t lim)
{
    int r = -1;
    switch (h.vh.kind) {
    case BLK:
        r = make_blk(opt, lim);
        break;
    case NET:
        r = make_net(opt, lim);
        break;
    case CONSOLE:
        vh_dev(&h.vh);
        r = virtio_console_init(&h.vh.u.console, &h.mem, console_output, console_input_space, NULL);
        break;
    case RNG: {
        static const uint64_t rates[] = {0, 1 << 20, 4096, 1000000};
        vh_dev(&h.vh);
        r = virtio_rng_init(&h.vh.u.rng, &h.mem, rates[opt & 3], (opt & 4) ? 512 : 0);
        break;
    }
    case PMEM: {
        /* Sizes around the 2 MiB the device rounds up to; 0: refused, never made. */
        static const off_t sizes[] = {4096, 2 << 20, (2 << 20) + 1, 3 << 20, 5, 0, 4096, 8192};
        if (truncate(g.pmem_path, sizes[opt >> 1 & 7]) < 0)
            die("%s: %s", g.pmem_path, strerror(errno));
        struct pmem_options o = {.id = "pmem_fuzz",
                                 .path = g.pmem_path,
                                 .readonly = opt & 1,
                                 .rate_limit = limit_from(lim)};
        vh_dev(&h.vh);
        r = virtio_pmem_init(&h.vh.u.pmem, "pmem0", &o, &h.mem);
        if (r == 0)
            virtio_pmem_set_region(&h.vh.u.pmem, 1ULL << 40);
        break;
    }
    case VSOCK:
    default: {
        /* The last one is refused: the device is never made. */
        static const uint64_t cids[] = {3, 0, 3, 52, 0xfffffffe, 0xffffffff, 3, 0x100000000ULL};
        vh_dev(&h.vh);
        r = virtio_vsock_init(&h.vh.u.vsock, cids[opt & 7], g.vsock_path, &h.mem);
        h.vh.u.vsock.poll_us = (opt & 8) ? 30 : 0; /* a CPU placement's polling */
        h.vh.u.vsock.poll_adaptive = opt & 16;
        break;
    }
    }
    if (r < 0)
        return -1;
    /* The harness is the I/O thread from here on: iothread_call() runs inline (the thread
     * is not running) and the loop is run by run_until_idle(). */
    if (vh_take_loop(&h.vh) < 0)
        die("event_loop_init");
    return 0;
}

static void other_device_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len,
                            bool is_write)
{
    (void)opaque;
    (void)offset;
    if (!is_write)
        memset(data, 0, len);
}

static int make_transport(void)
{
    vh_buses_init(&h.vh);
    if (bus_register(&h.vh.mmio, OTHER_DEVICE, PAGE, other_device_io, NULL, "other") < 0)
        return -1;
    return vh_transport_init(&h.vh);
}

/* ---- rings, the driver's side ------------------------------------------------------------ */

struct seg {
    uint64_t gpa;
    uint32_t len;
    bool writable;
};

#define MAX_SEGS 8

struct chain {
    struct seg s[MAX_SEGS];
    unsigned n;
};

static void add_seg(struct chain *c, uint64_t gpa, uint32_t len, bool writable)
{
    if (c->n < MAX_SEGS)
        c->s[c->n++] = (struct seg){gpa, len, writable};
}

/* A buffer of len bytes placed by sel, its contents (readable buffers) from src. */
static uint64_t add_buf(struct chain *c, uint8_t sel, const void *src, uint32_t len, bool writable)
{
    uint64_t gpa = place(sel, len);
    if (src)
        guest_put(gpa, src, len);
    add_seg(c, gpa, len, writable);
    return gpa;
}

static bool queue_packed(void)
{
    return (h.vh.dev->driver_features >> VIRTIO_F_RING_PACKED) & 1;
}

static void reset_driver_model(void)
{
    memset(h.q, 0, sizeof(h.q));
    for (unsigned i = 0; i < MAX_QUEUES; i++)
        h.q[i].wrap = true;
}

/* A chain operation's flags: bit 0 indirect table, bit 1 kick, bits 2-4 where buffers go
 * (place() mode), bit 5 which region, bit 6 data in three buffers, bit 7 a device-specific
 * variant (header and data in one buffer or two). */
static uint8_t chain_place(uint8_t flags)
{
    return (uint8_t)(flags >> 2 & 0xf);
}

static unsigned chain_pieces(uint8_t flags)
{
    return (flags & 0x40) ? 3 : 1;
}

/* Makes the chain available on queue q, as the driver programmed the queue, and kicks. */
static void publish(unsigned q, const struct chain *c, uint8_t flags)
{
    if (q >= h.vh.dev->nqueues || q >= MAX_QUEUES || c->n == 0)
        return;
    const struct virtq_config *cfg = &h.vh.dev->queues[q].cfg;
    uint16_t size = cfg->size;
    if (size == 0)
        return;
    bool indirect = flags & 1;
    uint64_t table = 0;
    if (indirect)
        table = place(chain_place(flags), 16ULL * c->n);
    if (!queue_packed()) {
        uint16_t head = (uint16_t)(h.q[q].next_desc % size);
        if (indirect) {
            for (unsigned i = 0; i < c->n; i++) {
                struct virtq_desc d = {c->s[i].gpa, c->s[i].len,
                                       (uint16_t)((c->s[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                                                  (i + 1 < c->n ? VIRTQ_DESC_F_NEXT : 0)),
                                       (uint16_t)(i + 1)};
                guest_put(table + 16ULL * i, &d, sizeof(d));
            }
            struct virtq_desc d = {table, 16 * c->n, VIRTQ_DESC_F_INDIRECT, 0};
            guest_put(cfg->desc_gpa + 16ULL * head, &d, sizeof(d));
            h.q[q].next_desc++;
        } else {
            for (unsigned i = 0; i < c->n; i++) {
                uint16_t at = (uint16_t)(h.q[q].next_desc++ % size);
                struct virtq_desc d = {c->s[i].gpa, c->s[i].len,
                                       (uint16_t)((c->s[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                                                  (i + 1 < c->n ? VIRTQ_DESC_F_NEXT : 0)),
                                       (uint16_t)(h.q[q].next_desc % size)};
                guest_put(cfg->desc_gpa + 16ULL * at, &d, sizeof(d));
            }
        }
        uint16_t idx = 0;
        guest_get(cfg->avail_gpa + 2, &idx, 2);
        guest_put(cfg->avail_gpa + 4 + 2ULL * (idx % size), &head, 2);
        idx++;
        guest_put(cfg->avail_gpa + 2, &idx, 2);
        return;
    }
    /* Packed: the chain in consecutive slots, the buffer id in each, the first slot's flags
     * written last (they hand the whole chain over). */
    uint16_t id = (uint16_t)(h.q[q].next_id++ % size);
    uint16_t avail_flags = h.q[q].wrap ? VIRTQ_PACKED_F_AVAIL : VIRTQ_PACKED_F_USED;
    uint16_t first_slot = h.q[q].next_slot, first_flags = 0;
    unsigned nd = indirect ? 1 : c->n;
    if (indirect) {
        for (unsigned i = 0; i < c->n; i++) {
            struct virtq_packed_desc d = {c->s[i].gpa, c->s[i].len, 0,
                                          c->s[i].writable ? VIRTQ_DESC_F_WRITE : 0};
            guest_put(table + 16ULL * i, &d, sizeof(d));
        }
    }
    for (unsigned i = 0; i < nd; i++) {
        uint16_t slot = h.q[q].next_slot;
        struct virtq_packed_desc d;
        if (indirect) {
            d = (struct virtq_packed_desc){table, 16 * c->n, id,
                                           VIRTQ_DESC_F_INDIRECT | avail_flags};
        } else {
            uint16_t f = avail_flags;
            if (c->s[i].writable)
                f |= VIRTQ_DESC_F_WRITE;
            if (i + 1 < nd)
                f |= VIRTQ_DESC_F_NEXT;
            d = (struct virtq_packed_desc){c->s[i].gpa, c->s[i].len, id, f};
        }
        if (i == 0) {
            first_flags = d.flags;
            d.flags = h.q[q].wrap ? VIRTQ_PACKED_F_USED : VIRTQ_PACKED_F_AVAIL; /* not yet */
        }
        guest_put(cfg->desc_gpa + 16ULL * slot, &d, sizeof(d));
        if (++h.q[q].next_slot >= size) {
            h.q[q].next_slot = 0;
            h.q[q].wrap = !h.q[q].wrap;
            avail_flags = h.q[q].wrap ? VIRTQ_PACKED_F_AVAIL : VIRTQ_PACKED_F_USED;
        }
    }
    guest_put(cfg->desc_gpa + 16ULL * first_slot + 14, &first_flags, 2);
}

/* ---- well-formed requests for each device ----------------------------------------------- */

static uint32_t pick_len(uint8_t sel)
{
    static const uint32_t lens[] = {1,    12,   44,   64,    100,   512,   1024,  1526,
                                    4096, 4140, 8192, 16384, 65536, 65562, 65580, 0};
    if (sel < 16)
        return lens[sel];
    if (sel < 32)
        return u16();
    if (sel == 255)
        return u32();
    return sel;
}

/* Writable buffers of len bytes in total, in n pieces. */
static void add_writable(struct chain *c, uint8_t sel, uint32_t len, unsigned n)
{
    if (n == 0)
        n = 1;
    for (unsigned i = 0; i < n; i++) {
        uint32_t part = i + 1 < n ? len / n : len - (len / n) * (n - 1);
        add_buf(c, (uint8_t)(sel + i), NULL, part, true);
    }
}

static void blk_request(struct chain *c, uint8_t flags)
{
    static const uint32_t types[] = {0, 1, 4, 8, 11, 13, 0, 1};
    uint8_t tsel = u8();
    uint32_t type = (tsel & 8) ? u32() : types[tsel & 7];
    uint8_t ssel = u8();
    uint64_t sector = ssel == 255 ? u64() : ssel;
    uint8_t nsel = u8();
    uint32_t len = nsel < 128 ? 512u * (nsel & 15) : pick_len(nsel & 31);
    unsigned pieces = chain_pieces(flags);
    uint8_t psel = chain_place(flags);
    struct {
        uint32_t type, reserved;
        uint64_t sector;
    } hdr = {type, 0, sector};
    if ((flags & 0x80) && len) {
        /* Header and data in one buffer (drivers may merge them). */
        static uint8_t buf[4096 + 16];
        uint32_t n = len + 16 <= sizeof(buf) ? len + 16 : 16;
        memcpy(buf, &hdr, 16);
        take(buf + 16, n - 16);
        add_buf(c, psel, buf, n, false);
    } else {
        add_buf(c, psel, &hdr, 16, false);
        if (type == 11 || type == 13) {
            struct {
                uint64_t sector;
                uint32_t num, flags;
            } seg;
            seg.sector = u8();
            seg.num = u8();
            seg.flags = u8() & 3;
            add_buf(c, psel, &seg, sizeof(seg), false);
        } else if (type == 1) {
            static uint8_t data[65536];
            uint32_t n = len < sizeof(data) ? len : sizeof(data);
            take(data, n < 64 ? n : 64);
            for (unsigned i = 0; i < pieces; i++) {
                uint32_t part = i + 1 < pieces ? n / pieces : n - (n / pieces) * (pieces - 1);
                add_buf(c, (uint8_t)(psel + i), data + (n / pieces) * i, part, false);
            }
        } else if (len) {
            add_writable(c, psel, type == 8 ? 20 : len, pieces);
        }
    }
    if (tsel & 0x10)
        add_buf(c, psel, NULL, 1 + (u8() & 3), true); /* status, with room to spare */
    else
        add_buf(c, psel, NULL, 1, true);
}

static void net_request(unsigned q, struct chain *c, uint8_t flags)
{
    uint8_t psel = chain_place(flags);
    if (q == 0) {
        add_writable(c, psel, pick_len(u8()), chain_pieces(flags));
        return;
    }
    static uint8_t frame[65562 + 12];
    uint8_t hsel = u8();
    uint32_t len = pick_len(u8());
    if (len > sizeof(frame) - 12)
        len = sizeof(frame) - 12;
    memset(frame, 0, 12);
    if (hsel & 1) {
        take(frame, 10); /* flags, gso type and sizes, checksum place as the input says */
    } else if (hsel & 2) {
        /* A well-formed checksum offload and TCPv4 segmentation request. */
        frame[0] = 1;
        frame[1] = (hsel & 4) ? 1 : 0;
        uint16_t hdr_len = 54, gso = 1448, start = 34, off = 16;
        memcpy(frame + 2, &hdr_len, 2);
        memcpy(frame + 4, &gso, 2);
        memcpy(frame + 6, &start, 2);
        memcpy(frame + 8, &off, 2);
    }
    take(frame + 12, len < 60 ? len : 60);
    for (uint32_t i = 60; i < len; i++)
        frame[12 + i] = (uint8_t)i;
    if (flags & 0x80) {
        add_buf(c, psel, frame, 12, false);
        add_buf(c, (uint8_t)(psel + 1), frame + 12, len, false);
    } else {
        add_buf(c, psel, frame, 12 + len, false);
    }
    if (hsel & 8)
        add_buf(c, psel, NULL, 16, true); /* writable buffer in a transmit chain */
}

static void vsock_request(unsigned q, struct chain *c, uint8_t flags)
{
    uint8_t psel = chain_place(flags);
    if (q != 1) {
        add_writable(c, psel, pick_len(u8()), chain_pieces(flags));
        return;
    }
    static const uint16_t ops[] = {
        VSOCK_OP_REQUEST,        VSOCK_OP_RESPONSE, VSOCK_OP_RW,  VSOCK_OP_CREDIT_UPDATE,
        VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_SHUTDOWN, VSOCK_OP_RST, VSOCK_OP_RW};
    static const uint32_t guest_ports[] = {1024, 1025, 1, 2};
    static const uint32_t host_ports[] = {1, 2, 1u << 30, (1u << 30) + 1, 3, 1, 2, 1u << 30};
    uint8_t osel = u8(), psel2 = u8();
    uint32_t len = (osel & 0x80) ? pick_len(u8()) : 0;
    if (len > VSOCK_MAX_PKT + 16)
        len = VSOCK_MAX_PKT + 16;
    struct vsock_hdr hd = {
        .src_cid = h.vh.u.vsock.guest_cid,
        .dst_cid = VSOCK_HOST_CID,
        .src_port = guest_ports[psel2 & 3],
        .dst_port = host_ports[psel2 >> 2 & 7],
        .len = len,
        .type = VSOCK_TYPE_STREAM,
        .op = ops[osel & 7],
        .flags = (osel >> 3) & 3,
        .buf_alloc = (psel2 & 0x20) ? 4096 : 65536,
        .fwd_cnt = 0,
    };
    if (osel & 0x20) {
        /* The fields the input says: CIDs, type, op, credit. */
        hd.src_cid = (osel & 0x40) ? u64() : hd.src_cid;
        hd.dst_cid = u8();
        hd.type = u8();
        hd.op = u8();
        hd.len = u32();
        hd.buf_alloc = u32();
        hd.fwd_cnt = u32();
    } else if (psel2 & 0x40) {
        hd.fwd_cnt = u16();
    }
    static uint8_t pkt[VSOCK_HDR_LEN + VSOCK_MAX_PKT + 16];
    memcpy(pkt, &hd, sizeof(hd));
    take(pkt + VSOCK_HDR_LEN, len < 64 ? len : 64);
    for (uint32_t i = 64; i < len; i++)
        pkt[VSOCK_HDR_LEN + i] = (uint8_t)i;
    if (flags & 0x80) {
        add_buf(c, psel, pkt, VSOCK_HDR_LEN, false);
        if (len)
            add_buf(c, (uint8_t)(psel + 1), pkt + VSOCK_HDR_LEN, len, false);
    } else {
        add_buf(c, psel, pkt, VSOCK_HDR_LEN + len, false);
    }
}

/* A FLUSH (or, with the variant bit, another type), its 4-byte answer in one or more
 * writable buffers; lengths other than 4 now and then. */
static void pmem_request(struct chain *c, uint8_t flags)
{
    uint8_t psel = chain_place(flags), sel = u8();
    uint32_t type = (flags & 0x80) ? u32() : VIRTIO_PMEM_REQ_TYPE_FLUSH;
    uint32_t hlen = (sel & 1) ? pick_len(u8()) : 4, rlen = (sel & 2) ? pick_len(u8()) : 4;
    uint8_t hdr[64] = {0};
    memcpy(hdr, &type, sizeof(type));
    add_buf(c, psel, hdr, hlen < sizeof(hdr) ? hlen : sizeof(hdr), (sel & 4) != 0);
    add_writable(c, (uint8_t)(psel + 1), rlen, chain_pieces(flags));
}

static void console_request(unsigned q, struct chain *c, uint8_t flags)
{
    uint8_t psel = chain_place(flags);
    uint32_t len = pick_len(u8());
    if (q == 0) {
        add_writable(c, psel, len, chain_pieces(flags));
        return;
    }
    static uint8_t text[65536];
    if (len > sizeof(text))
        len = sizeof(text);
    take(text, len < 32 ? len : 32);
    add_buf(c, psel, text, len, false);
}

/* A chain of descriptors as the input says, for what no well-formed builder covers. */
static void raw_chain(struct chain *c)
{
    unsigned n = 1 + (u8() & 7);
    for (unsigned i = 0; i < n; i++) {
        uint8_t sel = u8();
        uint32_t len = pick_len(u8());
        add_buf(c, sel, NULL, len, sel & 0x80);
    }
}

static void op_chain(void)
{
    uint8_t qsel = u8(), flags = u8();
    unsigned q = qsel % h.vh.dev->nqueues;
    struct chain c = {.n = 0};
    if (qsel & 0x80) {
        raw_chain(&c);
    } else {
        switch (h.vh.kind) {
        case BLK:
            blk_request(&c, flags);
            break;
        case NET:
            net_request(q, &c, flags);
            break;
        case CONSOLE:
            console_request(q, &c, flags);
            break;
        case RNG:
            add_writable(&c, chain_place(flags), pick_len(u8()), chain_pieces(flags));
            break;
        case PMEM:
            pmem_request(&c, flags);
            break;
        default:
            vsock_request(q, &c, flags);
            break;
        }
    }
    publish(q, &c, flags);
    if (flags & 2)
        notify(q, 0);
}

/* ---- operations -------------------------------------------------------------------------- */

/* The driver's set-up (3.1.1), through the transport's registers. */
static void op_init(void)
{
    uint8_t feat = u8();
    uint16_t qmask = u16();
    uint8_t size_sel = u8(), ring_sel = u8(), misc = u8();
    if (h.vh.pci) {
        cfg_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        if (misc & 2) {
            /* MSI-X on, every vector aimed at the LAPIC and unmasked. */
            cfg_write((uint32_t)h.vh.vpci.msix_cap + 2, 2, 0x8000);
            for (unsigned v = 0; v < h.vh.vpci.nvectors; v++) {
                reg_write(VIRTIO_PCI_MSIX_OFF + 16 * v, 4, 0xfee00000u);
                reg_write(VIRTIO_PCI_MSIX_OFF + 16 * v + 8, 4, 0x40 + v);
                reg_write(VIRTIO_PCI_MSIX_OFF + 16 * v + 12, 4, 0);
            }
            reg_write(P_MSIX_CONFIG, 2, 0);
        }
    }
    status_write(0);
    status_write(VIRTIO_STATUS_ACKNOWLEDGE);
    status_write(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    uint64_t offered = device_features(0) | (uint64_t)device_features(1) << 32;
    uint64_t want = offered;
    if (feat & 1)
        want &= ~(1ULL << VIRTIO_F_RING_PACKED);
    if (feat & 2)
        want &= ~(1ULL << VIRTIO_F_EVENT_IDX);
    if (feat & 4)
        want &= ~(1ULL << VIRTIO_F_INDIRECT_DESC);
    if (feat & 8)
        want &= ~0xffffffULL; /* none of the device's own */
    if (feat & 16)
        want = u64(); /* whatever the input says */
    driver_features(0, (uint32_t)want);
    driver_features(1, (uint32_t)(want >> 32));
    if (!(misc & 4))
        status_write(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(misc & 8) && !(status_read() & VIRTIO_STATUS_FEATURES_OK))
        return; /* refused: a driver gives up here */
    reset_driver_model();
    memset(h.bump, 0, sizeof(h.bump));
    bool packed = (want >> VIRTIO_F_RING_PACKED) & 1;
    for (unsigned q = 0; q < h.vh.dev->nqueues && q < MAX_QUEUES; q++) {
        if (!((qmask >> q) & 1))
            continue;
        queue_select(q);
        uint32_t max = (uint32_t)queue_read(Q_SIZE);
        uint32_t size = max;
        if (size_sel >= 1 && size_sel <= 16)
            size = 1u << (size_sel - 1);
        else if (size_sel == 17)
            size = u16();
        if (size_sel <= 16 && size > max && max)
            size = max;
        unsigned r = ring_sel & 1;
        if (r >= nregions())
            r = 0;
        /* Descriptor table, driver area, device area, one after the other. */
        uint64_t avail_off = 16ULL * size;
        uint64_t used_off = packed ? avail_off + 4 : (avail_off + 6 + 2ULL * size + 3) & ~3ULL;
        uint64_t len = used_off + (packed ? 4 : 6 + 8ULL * size);
        uint64_t end = region_gpa(r) + REGION_SIZE;
        uint64_t desc = region_gpa(r) + RING_STRIDE * q;
        switch (ring_sel >> 1 & 7) {
        case 1: /* the last bytes of the region */
            desc = ((end - len) & ~15ULL) - ((len + 15) & ~15ULL) * q;
            break;
        case 2: /* running past the region's end */
            desc = end - len + 16;
            break;
        case 3: /* from the hole into RAM above 4 GiB */
            desc = HIGH_GPA - avail_off / 2;
            break;
        case 4: /* misaligned */
            desc += 2 + 2 * (ring_sel >> 4 & 7);
            break;
        case 5: /* anywhere */
            desc = u64();
            break;
        default:
            break;
        }
        uint64_t avail = desc + avail_off, used = desc + used_off;
        /* A driver zeroes its rings before it hands them over. */
        void *p = gpa_to_hva(&h.mem, desc, len);
        if (p)
            memset(p, 0, len);
        queue_write(Q_SIZE, size, false);
        queue_write(Q_DESC, desc, ring_sel & 0x80);
        queue_write(Q_DRIVER, avail, ring_sel & 0x80);
        queue_write(Q_DEVICE, used, ring_sel & 0x80);
        if (misc & 2)
            queue_write(Q_VECTOR, q + 1, false);
        queue_write(Q_ENABLE, 1, false);
    }
    if (!(misc & 1))
        status_write(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
                     VIRTIO_STATUS_DRIVER_OK);
}

static uint32_t access_len(uint8_t sel)
{
    static const uint32_t lens[] = {4, 1, 2, 8, 4, 3, 5, 7};
    return lens[sel & 7];
}

/* A register access anywhere in the window or BAR (and past it). */
static void op_reg(bool is_write)
{
    static const uint32_t bases[] = {0, 0, 0x100, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000};
    uint8_t sel = u8();
    uint32_t off = bases[sel & 7] + u8();
    if (sel & 0x80)
        off = u16();
    uint32_t len = access_len(sel >> 3);
    if (is_write)
        reg_write(off, len, u64());
    else
        reg_read(off, len);
}

static void op_queue_reg(void)
{
    uint8_t qsel = u8(), which = u8();
    uint32_t q = qsel < 0xf0 ? qsel % (h.vh.dev->nqueues + 1) : (qsel == 0xff ? 0xffff : qsel);
    queue_select(q);
    enum queue_reg r = which % Q_REG_COUNT;
    if (which & 0x80) {
        queue_read(r);
        return;
    }
    uint64_t v;
    switch (r) {
    case Q_SIZE:
        v = (which & 0x40) ? u16() : 1u << (u8() & 15);
        break;
    case Q_ENABLE:
        v = (which & 0x40) ? u16() : 1;
        break;
    case Q_VECTOR:
        v = u16() % 40;
        break;
    default:
        if (which & 0x40) {
            v = u64();
        } else {
            v = region_gpa(u8() & 1);
            v += RING_STRIDE * (u8() & 63);
        }
        break;
    }
    queue_write(r, v, which & 0x20);
}

static void op_config(void)
{
    uint8_t mode = u8();
    uint32_t off = (mode & 2) ? u32() : u8();
    uint32_t len = 1 + (mode >> 2 & 7);
    uint64_t v = (mode & 1) ? u64() : 0;
    if (mode & 0x40) {
        /* What the transports call, with any offset and length. */
        pthread_mutex_lock(&h.vh.dev->lock);
        virtio_dev_config_access(h.vh.dev, off, &v, len, mode & 1);
        pthread_mutex_unlock(&h.vh.dev->lock);
        return;
    }
    config_rw(off, &v, len, mode & 1);
}

static void op_mem(void)
{
    uint8_t target = u8();
    uint8_t buf[64];
    uint64_t gpa;
    if (target & 0x80) {
        gpa = u64();
    } else {
        unsigned q = (target & 0xf) % h.vh.dev->nqueues;
        const struct virtq_config *cfg = &h.vh.dev->queues[q].cfg;
        uint64_t base = (target >> 4 & 3) == 0   ? cfg->desc_gpa
                        : (target >> 4 & 3) == 1 ? cfg->avail_gpa
                                                 : cfg->used_gpa;
        gpa = base + u16();
    }
    uint32_t len = 1 + (u8() & 63);
    take(buf, len);
    guest_put(gpa, buf, len);
}

static void op_host_net(uint8_t sub)
{
    switch (sub % 4) {
    case 0: { /* a frame from the host */
        static uint8_t frame[65562 + 100];
        uint32_t len = pick_len(u8());
        if (len > sizeof(frame))
            len = sizeof(frame);
        memset(frame, 0, 12);
        take(frame, len < 40 ? len : 40);
        ssize_t ignored = send(h.vh.net_host_fd, frame, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)ignored;
        break;
    }
    case 1: /* the host takes what was sent */
        drain_fd(h.vh.net_host_fd);
        break;
    case 2: { /* new limits from the API */
        struct rate_limit_config rx = limit_from(u8()), tx = limit_from(u8());
        uint8_t which = u8();
        virtio_net_change_limits(&h.vh.u.net, (which & 1) ? &rx : NULL, (which & 2) ? &tx : NULL);
        break;
    }
    default: /* a burst of frames */
        for (unsigned i = 0, n = 1 + (u8() & 31); i < n; i++) {
            uint8_t frame[74] = {0};
            ssize_t ignored = send(h.vh.net_host_fd, frame, sizeof(frame), MSG_DONTWAIT);
            (void)ignored;
        }
        break;
    }
}

static int *free_slot(int *fds)
{
    for (unsigned i = 0; i < MAX_HOST_FDS; i++) {
        if (fds[i] < 0)
            return &fds[i];
    }
    return NULL;
}

static void op_host_vsock(uint8_t sub)
{
    uint8_t i = u8() % MAX_HOST_FDS;
    switch (sub % 8) {
    case 0: { /* a host program connects and asks for a guest port */
        int none = -1, *slot = free_slot(h.clients);
        if (!slot)
            slot = &none;
        else
            *slot = uds_connect(g.vsock_path);
        static const char *const hellos[] = {"CONNECT 1024\n",   "CONNECT 1025\n",
                                             "CONNECT 1024\r\n", "CONNECT 4294967296\n",
                                             "connect 1\n",      "CONNECT \n"};
        uint8_t hs = u8();
        if (hs >= 6)
            send_bytes(*slot, hs & 31);
        else if (*slot >= 0)
            send(*slot, hellos[hs], strlen(hellos[hs]), MSG_DONTWAIT | MSG_NOSIGNAL);
        break;
    }
    case 1: /* stream bytes from a host program */
        send_bytes(h.clients[i], pick_len(u8()));
        break;
    case 2:
        close_fd(&h.clients[i]);
        break;
    case 3: { /* a host program ends its side of the stream, or both */
        uint8_t how = u8();
        int fd = (how & 2) ? h.accepted[i] : h.clients[i];
        if (fd >= 0)
            shutdown(fd, (how & 1) ? SHUT_RDWR : SHUT_WR);
        break;
    }
    case 4: { /* the host program on PATH_1/PATH_2 accepts a guest connection */
        int *slot = free_slot(h.accepted);
        int listener = g.listeners[u8() & 1];
        if (slot)
            *slot = uds_accept(listener);
        break;
    }
    case 5:
        send_bytes(h.accepted[i], pick_len(u8()));
        break;
    case 6:
        close_fd(&h.accepted[i]);
        break;
    default: /* host programs read what they were sent */
        for (unsigned k = 0; k < MAX_HOST_FDS; k++) {
            drain_fd(h.clients[k]);
            drain_fd(h.accepted[k]);
        }
        break;
    }
}

static void op_host(void)
{
    uint8_t sub = u8();
    switch (h.vh.kind) {
    case BLK: {
        if (sub & 1) {
            struct rate_limit_config rl = limit_from(u8());
            virtio_blk_change_limits(&h.vh.u.blk, &rl);
        } else if (sub & 2) {
            /* Another image, the same one again (maybe resized), or one that is not there. */
            uint8_t which = u8();
            const char *path = (which & 3) == 3 ? "/nonexistent/image" : g.blk_path[which & 1];
            if ((which & 4) && (which & 3) != 3)
                truncate(path, (off_t)disk_sizes[which >> 3 & 7]);
            virtio_blk_change_backing(&h.vh.u.blk, path);
        } else {
            /* The image shrinks or grows under the device. */
            truncate(g.blk_path[0], (off_t)disk_sizes[u8() & 7]);
        }
        break;
    }
    case NET:
        op_host_net(sub);
        break;
    case CONSOLE: {
        static uint8_t text[6000];
        uint32_t len = (sub & 1) ? sizeof(text) : 1u + u8();
        take(text, len < 64 ? len : 64);
        virtio_console_receive(&h.vh.u.console, text, len);
        break;
    }
    case RNG:
        break;
    case PMEM:
        /* The host's side: new limits (PATCH /pmem), or a vCPU's write to a read-only
         * mapping coming back as an MMIO exit. */
        if (sub & 1) {
            struct rate_limit_config rl = limit_from(u8());
            virtio_pmem_change_limits(&h.vh.u.pmem, &rl);
        } else {
            uint8_t bytes[8] = {0};
            virtio_pmem_readonly_io(&h.vh.u.pmem, (uint64_t)u32() << 8, bytes, 1u << (u8() & 3),
                                    (sub & 2) != 0);
        }
        break;
    default:
        op_host_vsock(sub);
        break;
    }
}

static void op_pci_config(void)
{
    uint8_t sel = u8(), reg = u8();
    uint32_t v = u32();
    uint32_t len = 1u << (sel & 3);
    if (len > 4)
        len = 4;
    uint32_t address = cfg_address();
    if (sel & 0x10)
        address = u32(); /* other functions, buses, or the enable bit off */
    if (sel & 0x20) {
        /* The ports themselves, at any offset and width. */
        bus_dispatch(&h.vh.pio, PCI_CONFIG_ADDRESS_PORT + (reg & 7), (uint8_t *)&v, len,
                     sel & 0x40);
        return;
    }
    cfg_rw(address, reg, len, &v, sel & 0x40);
}

static void op_pci_bar(void)
{
    static const uint32_t addrs[] = {0xe0000000u, 0xe0008000u, 0xe0100000u, 0xffffffffu,
                                     0,           0xfebf8000u, 0xffff8000u, 0xd0000000u};
    uint8_t sel = u8();
    uint32_t v = (sel & 8) ? u32() : addrs[sel & 7];
    uint32_t bar = (sel >> 4) % 6;
    if (sel & 0x80) {
        /* Decoding off while it moves, as firmware and drivers do. */
        uint32_t cmd = cfg_read(PCI_COMMAND, 2);
        cfg_write(PCI_COMMAND, 2, cmd & ~(uint32_t)PCI_COMMAND_MEMORY);
        cfg_write(PCI_BAR0 + 4 * bar, 4, v);
        cfg_write(PCI_COMMAND, 2, cmd);
    } else {
        cfg_write(PCI_BAR0 + 4 * bar, 4, v);
    }
}

static void op_msix(void)
{
    uint8_t sub = u8(), vec = u8();
    uint32_t v = u32();
    switch (sub % 5) {
    case 0: /* a table entry word */
        reg_write(VIRTIO_PCI_MSIX_OFF + 16ULL * (vec % 40) + 4 * (sub >> 3 & 3), 4, v);
        break;
    case 1: /* enable and function mask */
        cfg_write((uint32_t)h.vh.vpci.msix_cap + 2, 2, v & 0xc000);
        break;
    case 2:
        reg_read(VIRTIO_PCI_PBA_OFF + (vec & 15), access_len(sub >> 3));
        break;
    case 3: /* a whole entry, 8 bytes at a time */
        reg_write(VIRTIO_PCI_MSIX_OFF + 16ULL * (vec % 40), 8, 0xfee00000ULL);
        reg_write(VIRTIO_PCI_MSIX_OFF + 16ULL * (vec % 40) + 8, 8, (uint64_t)(v & 1) << 32);
        break;
    default:
        reg_read(VIRTIO_PCI_MSIX_OFF + 16ULL * (vec % 40) + (sub >> 3 & 15), access_len(sub >> 5));
        break;
    }
}

/* The VIRTIO_PCI_CAP_PCI_CFG window: BAR accesses through configuration space. */
static void op_cfg_window(void)
{
    uint8_t sel = u8();
    uint32_t cap = (uint32_t)h.vh.vpci.cfg_cap;
    uint32_t off = (sel & 1) ? u32() : (uint32_t)u16();
    uint32_t len = (sel & 2) ? u32() : 1u << (sel >> 2 & 3);
    uint8_t bar = (sel & 0x10) ? u8() : 0;
    cfg_write(cap + 4, 1, bar);
    cfg_write(cap + 8, 4, off);
    cfg_write(cap + 12, 4, len);
    if (sel & 0x20) {
        uint32_t v = u32();
        if (bar == 0 && off == 0x14 && len == 1 && (v & VIRTIO_STATUS_NEEDS_RESET))
            h.driver_wrote_needs_reset = true; /* the status register, through the window */
        cfg_write(cap + 16, 1u << (sel >> 6 & 2), v);
    } else {
        cfg_read(cap + 16, 1u << (sel >> 6 & 2));
    }
}

enum op {
    OP_INIT,
    OP_STATUS,
    OP_REG_WRITE,
    OP_REG_READ,
    OP_QUEUE_REG,
    OP_FEATURES,
    OP_CONFIG,
    OP_CHAIN,
    OP_KICK,
    OP_RUN,
    OP_WAIT,
    OP_MEM,
    OP_HOST,
    OP_PCI_CONFIG,
    OP_PCI_COMMAND,
    OP_PCI_BAR,
    OP_MSIX,
    OP_CFG_WINDOW,
    OP_RESET,
    OP_COUNT
};

static void check_reset(void);

static void run_op(enum op op)
{
    switch (op) {
    case OP_INIT:
        op_init();
        break;
    case OP_STATUS:
        status_write(u8());
        break;
    case OP_REG_WRITE:
        op_reg(true);
        break;
    case OP_REG_READ:
        op_reg(false);
        break;
    case OP_QUEUE_REG:
        op_queue_reg();
        break;
    case OP_FEATURES: {
        uint8_t sel = u8();
        uint32_t v = u32();
        if (sel & 1)
            device_features(sel >> 1);
        else
            driver_features(sel >> 1, v);
        break;
    }
    case OP_CONFIG:
        op_config();
        break;
    case OP_CHAIN:
        op_chain();
        break;
    case OP_KICK: {
        uint8_t how = u8();
        notify((how & 0x80) ? u16() : how % (h.vh.dev->nqueues + 1), how >> 4);
        break;
    }
    case OP_RUN:
        run_rounds(1 + u8() % 8);
        break;
    case OP_WAIT:
        wait_us(100 + 100 * (u8() % 20));
        break;
    case OP_MEM:
        op_mem();
        break;
    case OP_HOST:
        op_host();
        break;
    case OP_PCI_CONFIG:
        if (h.vh.pci)
            op_pci_config();
        break;
    case OP_PCI_COMMAND:
        if (h.vh.pci)
            cfg_write(PCI_COMMAND, 2, u16());
        break;
    case OP_PCI_BAR:
        if (h.vh.pci)
            op_pci_bar();
        break;
    case OP_MSIX:
        if (h.vh.pci)
            op_msix();
        break;
    case OP_CFG_WINDOW:
        if (h.vh.pci)
            op_cfg_window();
        break;
    case OP_RESET:
        check_reset();
        break;
    default:
        break;
    }
}

/* ---- invariants ----------------------------------------------------------------------------- */

/* The driver resets the device (status 0) and reads it back: the reset is complete, every
 * queue register is back to its default, and nothing of the device stays in its event loop
 * (the loop's own wake-up descriptor is the one registration left). */
static void check_reset(void)
{
    if (h.vh.pci) {
        /* The BAR where the driver reaches it, as a driver would make sure of. */
        cfg_write(PCI_BAR0, 4, PCI_WINDOW_START);
        cfg_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    }
    status_write(0);
    uint8_t status = status_read();
    if (status != 0)
        die("%s: status reads 0x%02x after a reset", h.vh.dev->name, status);
    for (unsigned q = 0; q < h.vh.dev->nqueues; q++) {
        queue_select(q);
        if (queue_read(Q_ENABLE) != 0)
            die("%s: queue %u still enabled after a reset", h.vh.dev->name, q);
        if (queue_read(Q_SIZE) != h.vh.dev->queue_max_size)
            die("%s: queue %u size %llu after a reset (maximum %u)", h.vh.dev->name, q,
                (unsigned long long)queue_read(Q_SIZE), h.vh.dev->queue_max_size);
        if (h.vh.pci && (queue_read(Q_DESC) || queue_read(Q_DRIVER) || queue_read(Q_DEVICE)))
            die("%s: queue %u addresses not cleared by a reset", h.vh.dev->name, q);
    }
    int regs = epoll_registrations(false);
    if (regs != 1 && epoll_registrations(true))
        die("%s: %d descriptors still registered in the event loop after a reset", h.vh.dev->name,
            regs - 1);
    reset_driver_model();
}

/* After a reset the device owns no guest memory: with RAM inaccessible, host-side events
 * arrive and the loop runs; any access faults. */
static void check_quiet_after_reset(void)
{
    guest_protect(PROT_NONE);
    switch (h.vh.kind) {
    case NET: {
        uint8_t frame[74] = {0};
        ssize_t ignored = send(h.vh.net_host_fd, frame, sizeof(frame), MSG_DONTWAIT);
        (void)ignored;
        break;
    }
    case VSOCK: {
        int fd = uds_connect(g.vsock_path);
        if (fd >= 0)
            send(fd, "CONNECT 1024\n", 13, MSG_DONTWAIT | MSG_NOSIGNAL);
        for (unsigned i = 0; i < MAX_HOST_FDS; i++)
            send_bytes(h.accepted[i], 16);
        run_until_idle();
        close_fd(&fd);
        break;
    }
    case CONSOLE:
        virtio_console_receive(&h.vh.u.console, (const uint8_t *)"late", 4);
        break;
    default:
        break;
    }
    run_until_idle();
    guest_protect(PROT_READ | PROT_WRITE);
}

/* ---- one input ------------------------------------------------------------------------------ */

/* What the device did, for checking that seeds reach what they mean to. */
static void print_trace(void)
{
    struct virtio_dev *d = h.vh.dev;
    fprintf(stderr, "%s on %s: status 0x%02x, %llu kicks, %llu interrupts; ", d->name,
            h.vh.pci ? "pci" : "mmio", d->status, (unsigned long long)d->kicks,
            (unsigned long long)d->interrupts);
    switch (h.vh.kind) {
    case BLK: {
        const struct virtio_blk *b = &h.vh.u.blk;
        fprintf(stderr,
                "%llu reads, %llu writes, %llu flushes, %llu discards, %llu errors, %llu "
                "unsupported, %llu throttled\n",
                (unsigned long long)b->reads, (unsigned long long)b->writes,
                (unsigned long long)b->flushes, (unsigned long long)b->discards,
                (unsigned long long)b->errors, (unsigned long long)b->unsupported,
                (unsigned long long)b->throttle_events);
        break;
    }
    case NET: {
        const struct virtio_net *n = &h.vh.u.net;
        fprintf(stderr,
                "rx %llu frames (%llu dropped), tx %llu frames (%llu dropped, %llu waits)\n",
                (unsigned long long)n->rx_frames, (unsigned long long)n->rx_dropped,
                (unsigned long long)n->tx_frames, (unsigned long long)n->tx_dropped,
                (unsigned long long)n->tx_pushback);
        break;
    }
    case CONSOLE:
        fprintf(stderr, "output %llu bytes, input %llu bytes\n",
                (unsigned long long)h.console_bytes, (unsigned long long)h.vh.u.console.rx_bytes);
        break;
    case RNG:
        fprintf(stderr, "%llu requests, %llu bytes\n", (unsigned long long)h.vh.u.rng.requests,
                (unsigned long long)h.vh.u.rng.bytes);
        break;
    case PMEM: {
        const struct virtio_pmem *p = &h.vh.u.pmem;
        fprintf(stderr, "%llu requests, %llu msyncs, %llu bad, %llu throttled\n",
                (unsigned long long)p->requests, (unsigned long long)p->flushes,
                (unsigned long long)p->bad_requests, (unsigned long long)p->throttled_events);
        break;
    }
    default: {
        const struct virtio_vsock *v = &h.vh.u.vsock;
        fprintf(stderr,
                "%llu connections, guest sent %llu packets %llu bytes, got %llu packets "
                "%llu bytes, %llu refused, %llu RSTs\n",
                (unsigned long long)v->conns_opened, (unsigned long long)v->tx_packets,
                (unsigned long long)v->tx_bytes, (unsigned long long)v->rx_packets,
                (unsigned long long)v->rx_bytes, (unsigned long long)v->bad_packets,
                (unsigned long long)v->rsts_sent);
        break;
    }
    }
}

/* Lines logged since the last call. */
static unsigned log_lines(void)
{
    static char buf[65536];
    unsigned n = 0;
    for (ssize_t r; (r = read(g.log_fd, buf, sizeof(buf))) > 0;) {
        for (ssize_t i = 0; i < r; i++)
            n += buf[i] == '\n';
    }
    if (lseek(g.log_fd, 0, SEEK_CUR) > (1 << 20)) {
        /* The log is appended to: start it again. */
        if (ftruncate(g.log_fd, 0) < 0 || lseek(g.log_fd, 0, SEEK_SET) < 0)
            die("%s: %s", g.log_path, strerror(errno));
    }
    return n;
}

static void begin(const uint8_t *data, size_t size)
{
    memset(&h, 0, sizeof(h));
    h.vh.net_host_fd = -1;
    for (unsigned i = 0; i < MAX_HOST_FDS; i++)
        h.clients[i] = h.accepted[i] = -1;
    h.wait_left_us = WAIT_BUDGET_US;
    in_p = data;
    in_n = size;
    /* Zeroes, page by page as they are touched again. */
    madvise(g.region[0], REGION_SIZE, MADV_DONTNEED);
    madvise(g.region[1], REGION_SIZE, MADV_DONTNEED);
    reset_driver_model();
}

static void end(void)
{
    vh_end(&h.vh);
    for (unsigned i = 0; i < MAX_HOST_FDS; i++) {
        close_fd(&h.clients[i]);
        close_fd(&h.accepted[i]);
    }
    /* Connections the device made to PATH_1/PATH_2 and nobody accepted. */
    for (unsigned i = 0; i < 2; i++) {
        for (int fd; (fd = uds_accept(g.listeners[i])) >= 0;)
            close(fd);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint64_t fds_before[16];
    open_fds(fds_before);
    if (!trace)
        log_lines();
    begin(data, size);
    uint8_t h0 = u8();
    uint16_t opt = u16();
    uint8_t lim = u8();
    h.vh.kind = (enum kind)((h0 & 7) % KIND_COUNT);
    h.vh.pci = h0 & 8;
    /* RAM below the hole and above 4 GiB, or below only. */
    guest_memory_layout(&h.mem, g.region[0], (h0 & 16) ? REGION_SIZE : 2 * REGION_SIZE, REGION_SIZE,
                        HIGH_GPA);
    if (h.mem.nregions == 2)
        h.mem.regions[1].hva = g.region[1]; /* its own mapping, guard pages around */
    if (make_device(opt, lim) < 0 || make_transport() < 0) {
        end();
        return 0;
    }
    for (unsigned n = 0; in_n && n < MAX_OPS; n++) {
        /* Bit 7: the I/O thread does not get to run before the next operation. */
        uint8_t op = u8();
        run_op((enum op)((op & 0x7f) % OP_COUNT));
        if (!(op & 0x80))
            run_until_idle();
        check_state("an operation");
    }
    run_until_idle();
    check_state("the last operation");
    if (trace)
        print_trace();
    check_reset();
    check_quiet_after_reset();
    end();
    check_fds(fds_before);
    unsigned lines = trace ? 0 : log_lines();
    if (lines > MAX_LOG_LINES)
        die("%u log lines for one input: a line the guest can cause is not rate limited", lines);
    return 0;
}

/* ---- once per process ----------------------------------------------------------------------- */

/* The temporary directory goes when the process ends, however it ends (short of a timeout). */
static void cleanup(void)
{
    if (!g.dir[0])
        return;
    for (unsigned i = 0; i < 2; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s_%u", g.vsock_path, i + 1);
        unlink(p);
        unlink(g.blk_path[i]);
    }
    unlink(g.vsock_path);
    unlink(g.log_path);
    rmdir(g.dir);
    g.dir[0] = '\0';
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    trace = getenv("FUZZ_DEVICES_TRACE") != NULL;
    /* [guard][low region][guard][high region][guard] */
    g.map_len = 3 * PAGE + 2 * REGION_SIZE;
    g.map = mmap(NULL, g.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.map == MAP_FAILED)
        die("mmap: %s", strerror(errno));
    g.region[0] = g.map + PAGE;
    g.region[1] = g.map + 2 * PAGE + REGION_SIZE;
    guest_protect(PROT_READ | PROT_WRITE);
    snprintf(g.dir, sizeof(g.dir), "/tmp/ember-fuzz-devices-XXXXXX");
    if (!mkdtemp(g.dir))
        die("mkdtemp: %s", strerror(errno));
    atexit(cleanup);
    __sanitizer_set_death_callback(cleanup);
    snprintf(g.vsock_path, sizeof(g.vsock_path), "%s/v.sock", g.dir);
    /* The log goes to a file read back after each input (stderr when tracing). */
    snprintf(g.log_path, sizeof(g.log_path), "%s/log", g.dir);
    if (!trace && log_open(g.log_path) < 0)
        die("%s", g.log_path);
    g.log_fd = open(g.log_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (g.log_fd < 0)
        die("%s: %s", g.log_path, strerror(errno));
    for (unsigned i = 0; i < 2; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s_%u", g.vsock_path, i + 1);
        g.listeners[i] = uds_listen(p);
        snprintf(g.blk_path[i], sizeof(g.blk_path[i]), "%s/disk%u.img", g.dir, i);
        int fd = open(g.blk_path[i], O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, 64 << 10) < 0)
            die("%s: %s", g.blk_path[i], strerror(errno));
        close(fd);
    }
    snprintf(g.pmem_path, sizeof(g.pmem_path), "%s/pmem.img", g.dir);
    int fd = open(g.pmem_path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        die("%s: %s", g.pmem_path, strerror(errno));
    close(fd);
    return 0;
}
