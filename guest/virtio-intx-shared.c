/*
 * Shared INTx lines: with more virtio-pci functions than interrupt lines, some functions share
 * a line, and a level-triggered line must stay asserted while any function on it has an
 * interrupt pending (PCI 3.0, 2.2.6). With MSI-X off on every disk, the guest finds each
 * function's IOAPIC pin by raising its interrupt alone, picks two functions A and B on one
 * pin, lets both raise an interrupt while the pin is masked, then makes A deassert in one of
 * four ways: its ISR read (acknowledged), a device reset, Interrupt Disable, MSI-X turned on.
 * Unmasked, the pin must still deliver B's interrupt (B's handler acknowledges it; A's driver,
 * which turned its interrupt off, does not answer). Afterwards the line must be quiet (A's
 * interrupt, if it kept one pending behind Interrupt Disable, comes when that is cleared), and
 * both disks must work with interrupts. An interrupt counts for a disk only when the handler
 * found its ISR set.
 *
 * Needs virtio-pci disks, at least two of them on one pin (the harness gives nine).
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define WAIT_US       1000000
#define QUIET_US      100000
#define FIRST_PIN     16
#define PINS          8
#define PIN_VECTOR(p) (0xc0 + (p)-FIRST_PIN)
#define MAX_DISKS     VIRTIO_MAX_DEVICES
#define QUEUE_SIZE    16
#define MAX_EXTRA     2 /* deliveries after both were acknowledged: a storm is far more */

/* PCI configuration access of our own: the library's is private to it. */
#define PCI_COMMAND      0x04
#define PCI_INTX_DISABLE 0x0400
#define MSIX_ENABLE      0x8000

static uint32_t pci_read32(uint8_t slot, uint32_t offset)
{
    outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (offset & 0xfc));
    return inl(0xcfc);
}

static void pci_write16(uint8_t slot, uint32_t offset, uint16_t value)
{
    outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (offset & 0xfc));
    outw((uint16_t)(0xcfc + (offset & 2)), value);
}

static uint16_t pci_read16(uint8_t slot, uint32_t offset)
{
    return (uint16_t)(pci_read32(slot, offset) >> (8 * (offset & 2)));
}

struct disk {
    struct virtio_device *d;
    int pin;                   /* -1: not found yet */
    volatile uint64_t irqs;    /* interrupts in which its ISR had a bit set */
    volatile uint8_t isr_seen; /* ISR bits the handler read */
    volatile int last_pin;     /* where the last of those came */
    struct vblk_req req;
};

static struct disk disks[MAX_DISKS];
static unsigned ndisks;
static uint8_t *buf;
/* Who the handler acknowledges on each pin. */
static struct disk *on_pin[PINS][MAX_DISKS];
static unsigned on_pin_count[PINS];
static volatile uint64_t pin_irqs[PINS];
static struct disk *a_disk, *b_disk;
static int shared_pin = -1;

static void pin_interrupt(struct interrupt_frame *frame)
{
    unsigned p = (unsigned)frame->vector - PIN_VECTOR(FIRST_PIN);
    pin_irqs[p]++;
    for (unsigned i = 0; i < on_pin_count[p]; i++) {
        struct disk *k = on_pin[p][i];
        uint8_t isr = mmio_read8(k->d->isr); /* acknowledges it */
        if (isr) {
            k->isr_seen |= isr;
            k->last_pin = (int)(FIRST_PIN + p);
            k->irqs++;
        }
    }
    lapic_eoi();
}

/* Takes vectors the local APIC still holds with every pin masked and nobody listening: on
 * these hosts a level-triggered vector comes once more after its EOI (under QEMU as under
 * ember), with no device behind it. */
static void drain(void)
{
    unsigned saved[PINS];
    for (unsigned p = 0; p < PINS; p++) {
        saved[p] = on_pin_count[p];
        on_pin_count[p] = 0;
    }
    virtio_irq_window(5000);
    for (unsigned p = 0; p < PINS; p++)
        on_pin_count[p] = saved[p];
}

static void route_pin(unsigned pin, bool on)
{
    if (on)
        ioapic_route(pin, (uint8_t)PIN_VECTOR(pin), lapic_id(), true, true);
    else
        ioapic_mask(pin);
}

static void route_all(bool on)
{
    for (unsigned p = FIRST_PIN; p < FIRST_PIN + PINS; p++)
        route_pin(p, on);
}

static void msix(struct disk *k, bool on)
{
    uint16_t control = pci_read16(k->d->slot, k->d->msix_cap + 2u);
    control = on ? control | MSIX_ENABLE : control & ~MSIX_ENABLE;
    pci_write16(k->d->slot, k->d->msix_cap + 2u, control);
}

static void intx_disable(struct disk *k, bool disable)
{
    uint16_t command = pci_read16(k->d->slot, PCI_COMMAND);
    command = disable ? command | PCI_INTX_DISABLE : command & ~PCI_INTX_DISABLE;
    pci_write16(k->d->slot, PCI_COMMAND, command);
}

/* The disk up with MSI-X off: its interrupts go through INTx and the ISR. */
static bool disk_up(struct disk *k)
{
    if (k->d->msix_cap)
        msix(k, false);
    intx_disable(k, false);
    if (!virtio_begin(k->d, 0, false) || !virtio_queue_setup(k->d, 0, QUEUE_SIZE, true))
        return false;
    virtio_driver_ok(k->d);
    return !(virtio_get_status(k->d) & VIRTIO_STATUS_NEEDS_RESET);
}

/* Queues a read, kicks, and polls until the device has used it (it raised its interrupt,
 * whatever the IOAPIC does with it); the used entry is taken. */
static bool raise_one(struct disk *k)
{
    struct virtq *q = &k->d->queues[0];
    if (vblk_submit(q, &k->req, VIRTIO_BLK_T_IN, 0, buf, 512, 0) < 0)
        return false;
    virtq_notify(q);
    for (uint64_t start = time_us(); time_us() - start < WAIT_US;) {
        if (virtq_get(q, NULL) == &k->req)
            return k->req.status == VIRTIO_BLK_S_OK;
        udelay(100);
    }
    diag("%s: the read did not complete", k->d->name);
    return false;
}

/* Interrupts on until cond holds or the time is up. */
static bool irq_window_until(volatile uint64_t *count, uint64_t since, uint64_t timeout_us)
{
    uint64_t start = time_us();
    irq_enable();
    while (READ_ONCE(*count) == since && time_us() - start < timeout_us)
        cpu_relax();
    irq_disable();
    return READ_ONCE(*count) != since;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static enum test_result find_disks(void)
{
    buf = phys_alloc(4096, 4096);
    lapic_enable();
    platform_discover();
    for (unsigned p = FIRST_PIN; p < FIRST_PIN + PINS; p++)
        interrupt_set_handler((uint8_t)PIN_VECTOR(p), pin_interrupt);
    route_all(false);
    for (struct virtio_device *d; ndisks < MAX_DISKS && (d = virtio_find(VIRTIO_ID_BLOCK, ndisks));)
        disks[ndisks++] = (struct disk){.d = d, .pin = -1};
    if (ndisks && disks[0].d->transport != VIRTIO_PCI)
        return skip("INTx is virtio-pci's");
    bool ok = ndisks >= 2;
    for (unsigned i = 0; i < ndisks; i++)
        ok &= disk_up(&disks[i]);
    diag("%u disks", ndisks);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* Each disk raises an interrupt alone, every pin listening: the pin it arrives on is its. */
static enum test_result find_pins(void)
{
    if (ndisks < 2 || disks[0].d->transport != VIRTIO_PCI)
        return skip("needs two virtio-pci disks");
    bool ok = true;
    for (unsigned i = 0; i < ndisks; i++) {
        struct disk *k = &disks[i];
        drain();
        for (unsigned p = 0; p < PINS; p++) {
            on_pin[p][0] = k;
            on_pin_count[p] = 1;
        }
        uint64_t irqs = k->irqs;
        k->last_pin = -1;
        if (!raise_one(k)) {
            ok = false;
            continue;
        }
        route_all(true);
        irq_window_until(&k->irqs, irqs, WAIT_US);
        route_all(false);
        k->pin = k->last_pin;
        diag("%s (interrupt line %u): pin %d", k->d->name, pci_read32(k->d->slot, 0x3c) & 0xff,
             k->pin);
        ok &= k->pin >= 0;
    }
    for (unsigned p = 0; p < PINS; p++)
        on_pin_count[p] = 0;
    /* The first pin with two disks. */
    for (unsigned i = 0; i < ndisks && shared_pin < 0; i++) {
        for (unsigned j = i + 1; j < ndisks && shared_pin < 0; j++) {
            if (disks[i].pin >= 0 && disks[i].pin == disks[j].pin) {
                a_disk = &disks[i];
                b_disk = &disks[j];
                shared_pin = disks[i].pin;
            }
        }
    }
    if (shared_pin >= 0) {
        unsigned p = (unsigned)shared_pin - FIRST_PIN;
        on_pin[p][0] = a_disk;
        on_pin[p][1] = b_disk;
        on_pin_count[p] = 2;
        diag("%s and %s share pin %d", a_disk->d->name, b_disk->d->name, shared_pin);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result shared_found(void)
{
    if (ndisks < 2 || disks[0].d->transport != VIRTIO_PCI)
        return skip("needs two virtio-pci disks");
    return shared_pin >= 0 ? TEST_PASS : TEST_FAIL;
}

enum deassert { ISR_READ, RESET, INTX_DISABLE, MSIX_ON };
static const char *const deassert_names[] = {
    [ISR_READ] = "its ISR read",
    [RESET] = "a reset",
    [INTX_DISABLE] = "Interrupt Disable",
    [MSIX_ON] = "MSI-X turned on",
};

/* Both raise an interrupt on the masked pin, `first` deasserts in the given way, the pin is
 * unmasked: `second`'s interrupt must arrive, and then the line must be quiet. */
static enum test_result shared_line(struct disk *first, struct disk *second, enum deassert how)
{
    if (shared_pin < 0)
        return skip("no two disks share a pin");
    unsigned p = (unsigned)shared_pin - FIRST_PIN;
    route_pin((unsigned)shared_pin, false);
    drain();
    first->isr_seen = second->isr_seen = 0;
    if (!raise_one(first) || !raise_one(second))
        return TEST_FAIL;
    uint8_t first_isr = 0;
    switch (how) {
    case ISR_READ:
        first_isr = mmio_read8(first->d->isr);
        break;
    case RESET:
        virtio_reset(first->d);
        break;
    case INTX_DISABLE:
        intx_disable(first, true);
        break;
    case MSIX_ON:
        msix(first, true);
        break;
    }
    /* Only B's driver answers meanwhile: A's is the one that turned its interrupt off. */
    on_pin[p][0] = second;
    on_pin_count[p] = 1;
    uint64_t second_irqs = second->irqs, pin_before = pin_irqs[p];
    route_pin((unsigned)shared_pin, true);
    bool delivered = irq_window_until(&second->irqs, second_irqs, WAIT_US);
    uint64_t after = pin_irqs[p];
    /* Quiet now: a line left asserted would interrupt again after every EOI. One comes
     * anyway here (see drain()). */
    virtio_irq_window(QUIET_US);
    uint64_t extra = pin_irqs[p] - after;
    uint8_t left = delivered ? 0 : mmio_read8(second->d->isr);
    diag("%s deasserted by %s%s; %s's interrupt %s (%lu on the pin)%s; %lu more in %u ms",
         first->d->name, deassert_names[how],
         how == ISR_READ ? (first_isr & 1 ? " (it read 0x1)" : " (it read 0!)") : "",
         second->d->name, delivered ? "delivered" : "lost", after - pin_before,
         delivered ? ""
         : left    ? ", its ISR still 0x1"
                   : ", its ISR 0",
         extra, QUIET_US / 1000);
    route_pin((unsigned)shared_pin, false);
    on_pin[p][0] = a_disk;
    on_pin[p][1] = b_disk;
    on_pin_count[p] = 2;
    /* Undo, and check that both work with interrupts. */
    bool restored = true;
    bool pending_later = true;
    switch (how) {
    case RESET:
        restored = disk_up(first);
        break;
    case INTX_DISABLE: {
        /* Its interrupt is still pending: clearing Interrupt Disable asserts the line again. */
        uint64_t irqs = first->irqs;
        drain();
        route_pin((unsigned)shared_pin, true);
        intx_disable(first, false);
        pending_later = irq_window_until(&first->irqs, irqs, WAIT_US);
        route_pin((unsigned)shared_pin, false);
        if (!pending_later)
            diag("%s's pending interrupt did not come when Interrupt Disable was cleared",
                 first->d->name);
        break;
    }
    case MSIX_ON:
        msix(first, false);
        mmio_read8(first->d->isr); /* what it raised while MSI-X was on */
        break;
    default:
        break;
    }
    bool work = true;
    for (struct disk *k = first; k; k = k == first ? second : NULL) {
        drain();
        uint64_t irqs = k->irqs;
        route_pin((unsigned)shared_pin, true);
        work &= raise_one(k) && irq_window_until(&k->irqs, irqs, WAIT_US);
        route_pin((unsigned)shared_pin, false);
    }
    if (!work)
        diag("the disks on pin %d do not both work with interrupts afterwards", shared_pin);
    bool ok = delivered && (second->isr_seen & 1) && extra <= MAX_EXTRA && restored &&
              pending_later && work && (how != ISR_READ || (first_isr & 1));
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result isr_read_a(void)
{
    return shared_line(a_disk, b_disk, ISR_READ);
}

static enum test_result isr_read_b(void)
{
    return shared_line(b_disk, a_disk, ISR_READ);
}

static enum test_result reset_a(void)
{
    return shared_line(a_disk, b_disk, RESET);
}

static enum test_result intx_disable_a(void)
{
    return shared_line(a_disk, b_disk, INTX_DISABLE);
}

static enum test_result msix_on_a(void)
{
    return shared_line(a_disk, b_disk, MSIX_ON);
}

static enum test_result all_disks_work(void)
{
    if (ndisks < 2 || disks[0].d->transport != VIRTIO_PCI)
        return skip("needs two virtio-pci disks");
    bool ok = true;
    for (unsigned p = 0; p < PINS; p++)
        on_pin_count[p] = 0;
    for (unsigned i = 0; i < ndisks; i++) {
        struct disk *k = &disks[i];
        unsigned p = (unsigned)(k->pin >= 0 ? k->pin : FIRST_PIN) - FIRST_PIN;
        on_pin[p][on_pin_count[p]++] = k;
    }
    for (unsigned i = 0; i < ndisks; i++) {
        struct disk *k = &disks[i];
        drain();
        uint64_t irqs = k->irqs;
        route_all(true);
        bool works = k->pin >= 0 && raise_one(k) && irq_window_until(&k->irqs, irqs, WAIT_US);
        route_all(false);
        if (!works)
            diag("%s: no interrupt for a read", k->d->name);
        ok &= works;
        virtio_reset(k->d);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-pci disks found, MSI-X off", find_disks},
    {"each disk's INTx reaches an IOAPIC pin", find_pins},
    {"two disks share a pin", shared_found},
    {"A's ISR read while B is pending: B's interrupt still delivered", isr_read_a},
    {"B's ISR read while A is pending: A's interrupt still delivered", isr_read_b},
    {"A reset while B is pending: B's interrupt still delivered", reset_a},
    {"A's Interrupt Disable while B is pending: B's interrupt still delivered", intx_disable_a},
    {"A's MSI-X turned on while B is pending: B's interrupt still delivered", msix_on_a},
    {"every disk interrupts for a read afterwards", all_disks_work},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
