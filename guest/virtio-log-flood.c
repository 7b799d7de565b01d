/*
 * Guest-controlled log volume: the guest breaks the rules many times over, in ways a VMM may
 * want to log, and the harness counts what the VMM wrote to its log. On virtio-blk and
 * virtio-rng each:
 *   - flood_status= (default 50000) status writes, once the device is live, that alternate
 *     between ACKNOWLEDGE | DRIVER and ACKNOWLEDGE: each of the latter clears a bit;
 *   - flood_notify= (default 50000) notifications of a queue that does not exist;
 *   - flood_bad= (default 1000) malformed requests, each followed by a reset and a clean set-up
 *     (the disk: a looped descriptor chain; rng: an avail ring naming a descriptor beyond the
 *     queue), and as many refused negotiations (the disk: FEATURES_OK with a feature it did not
 *     offer; rng: DRIVER_OK without FEATURES_OK).
 * The time each flood took is printed ("# log-flood: ..."); after each the device must work
 * again after a reset, and the other device must never stop working.
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define WAIT_US           2000000
#define NEEDS_RESET_US    1000000
#define RING_SIZE         16
#define MMIO_QUEUE_NOTIFY 0x050
#define MMIO_STATUS       0x070
#define PCI_DEVICE_STATUS 0x14
#define GONE_QUEUE        0x7fff /* no device here has that many queues */

enum { BLK, RNG, TARGETS };

struct target {
    const char *name;
    uint32_t device_id;
    struct virtio_device *d;
    uint8_t *rings; /* for the malformed requests: desc, avail, used of RING_SIZE entries */
};

static struct target targets[TARGETS] = {
    [BLK] = {"blk", VIRTIO_ID_BLOCK, NULL, NULL},
    [RNG] = {"rng", VIRTIO_ID_RNG, NULL, NULL},
};

static uint64_t flood_status = 50000, flood_notify = 50000, flood_bad = 1000;
static uint8_t *scratch;

/* ---- normal operation ------------------------------------------------------------------------ */

static bool target_up(struct target *t)
{
    return virtio_begin(t->d, 0, false) && virtio_queue_setup(t->d, 0, 0, false) &&
           (virtio_driver_ok(t->d), !(virtio_get_status(t->d) & VIRTIO_STATUS_NEEDS_RESET));
}

static bool target_works(struct target *t)
{
    if (t->device_id == VIRTIO_ID_BLOCK) {
        int status = vblk_sync(&t->d->queues[0], VIRTIO_BLK_T_IN, 0, scratch, 4096, 0);
        return status == VIRTIO_BLK_S_OK;
    }
    struct vbuf b = {(uint64_t)scratch, 64, true};
    return virtq_transfer(&t->d->queues[0], &b, 1, WAIT_US) > 0;
}

/* After an attack on t: t works after a reset, and so do the others (without one). */
static bool all_work(struct target *t)
{
    bool ok = virtio_reset(t->d) && target_up(t) && target_works(t);
    if (!ok)
        diag("%s does not work after a reset", t->name);
    for (unsigned o = 0; o < TARGETS; o++) {
        if (&targets[o] != t && !target_works(&targets[o])) {
            diag("%s stopped working", targets[o].name);
            ok = false;
        }
    }
    return ok;
}

static uint64_t elapsed_ms(uint64_t start)
{
    return (time_us() - start) / 1000;
}

/* ---- the floods ------------------------------------------------------------------------------ */

static void write_status(struct virtio_device *d, uint8_t status)
{
    if (d->transport == VIRTIO_MMIO)
        mmio_write32(d->mmio_base + MMIO_STATUS, status);
    else
        mmio_write8(d->common + PCI_DEVICE_STATUS, status);
}

static enum test_result status_flood(unsigned ti)
{
    struct target *t = &targets[ti];
    if (!target_up(t))
        return TEST_FAIL;
    const uint8_t values[2] = {VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER,
                               VIRTIO_STATUS_ACKNOWLEDGE};
    uint64_t start = time_us();
    for (uint64_t i = 0; i < flood_status; i++)
        write_status(t->d, values[i & 1]);
    uint64_t ms = elapsed_ms(start);
    diag("log-flood: %s: %lu status writes taking bits away in %lu ms; status now 0x%02x", t->name,
         flood_status, ms, virtio_get_status(t->d));
    return all_work(t) ? TEST_PASS : TEST_FAIL;
}

static enum test_result notify_flood(unsigned ti)
{
    struct target *t = &targets[ti];
    struct virtio_device *d = t->d;
    if (!target_up(t))
        return TEST_FAIL;
    uint64_t start = time_us();
    if (d->transport == VIRTIO_MMIO) {
        for (uint64_t i = 0; i < flood_notify; i++)
            mmio_write32(d->mmio_base + MMIO_QUEUE_NOTIFY, GONE_QUEUE);
    } else {
        /* The notification address a queue just past the last one would have. */
        uint64_t addr = d->notify_base + (uint64_t)d->notify_mult * 1;
        for (uint64_t i = 0; i < flood_notify; i++)
            mmio_write16(addr, GONE_QUEUE);
    }
    uint64_t ms = elapsed_ms(start);
    diag("log-flood: %s: %lu notifications of a queue that does not exist in %lu ms", t->name,
         flood_notify, ms);
    bool ok = !(virtio_get_status(d) & VIRTIO_STATUS_NEEDS_RESET) && target_works(t);
    return ok && all_work(t) ? TEST_PASS : TEST_FAIL;
}

/* One malformed request on a freshly set-up device, in rings of our own (set up without the
 * library's queue set-up, which clears 12 KiB of rings each time: slow at CPL0 here). */
static bool one_bad_request(struct target *t)
{
    struct virtio_device *d = t->d;
    struct virtq_desc *desc = (struct virtq_desc *)t->rings;
    struct virtq_avail *avail = (struct virtq_avail *)(t->rings + 0x1000);
    if (!virtio_begin(d, 0, false))
        return false;
    avail->flags = 0;
    avail->idx = 0;
    memset(t->rings + 0x2000, 0, 8); /* used flags and index */
    if (!virtio_queue_setup_raw(d, 0, RING_SIZE, (uint64_t)desc, (uint64_t)avail,
                                (uint64_t)(t->rings + 0x2000)))
        return false;
    virtio_driver_ok(d);
    uint16_t head = 0;
    if (t->device_id == VIRTIO_ID_BLOCK) {
        /* A looped chain: two readable descriptors that lead to each other. */
        static struct vblk_req req;
        req = (struct vblk_req){.type = VIRTIO_BLK_T_OUT, .status = 0xff};
        desc[0] = (struct virtq_desc){(uint64_t)&req, 16, VIRTQ_DESC_F_NEXT, 1};
        desc[1] = (struct virtq_desc){(uint64_t)scratch, 512, VIRTQ_DESC_F_NEXT, 0};
    } else {
        /* The avail ring names a descriptor beyond the queue. */
        head = RING_SIZE + 3;
    }
    avail->ring[0] = head;
    barrier();
    WRITE_ONCE(avail->idx, 1);
    mb();
    if (d->transport == VIRTIO_MMIO)
        mmio_write32(d->mmio_base + MMIO_QUEUE_NOTIFY, 0);
    else
        mmio_write16(d->notify_base, 0);
    for (uint64_t start = time_us(); time_us() - start < NEEDS_RESET_US;) {
        if (virtio_get_status(d) & VIRTIO_STATUS_NEEDS_RESET)
            return true;
        udelay(50);
    }
    return false;
}

static enum test_result bad_requests(unsigned ti)
{
    struct target *t = &targets[ti];
    uint64_t flagged = 0, start = time_us();
    for (uint64_t i = 0; i < flood_bad; i++)
        flagged += one_bad_request(t);
    uint64_t ms = elapsed_ms(start);
    diag("log-flood: %s: %lu malformed requests (%s), each after a reset, in %lu ms; %lu set "
         "NEEDS_RESET",
         t->name, flood_bad,
         t->device_id == VIRTIO_ID_BLOCK ? "looped chain" : "head beyond the queue", ms, flagged);
    return flagged == flood_bad && all_work(t) ? TEST_PASS : TEST_FAIL;
}

/* The disk: FEATURES_OK with a feature it did not offer; rng: DRIVER_OK without FEATURES_OK. */
static enum test_result refused_negotiations(unsigned ti)
{
    struct target *t = &targets[ti];
    struct virtio_device *d = t->d;
    uint64_t kept = 0, start = time_us();
    for (uint64_t i = 0; i < flood_bad; i++) {
        if (t->device_id == VIRTIO_ID_BLOCK) {
            /* Bit 23 is no virtio-blk feature. */
            kept += virtio_try_features(d, VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(23));
        } else {
            virtio_reset(d);
            virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
            virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
            virtio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                     VIRTIO_STATUS_DRIVER_OK);
            kept += (virtio_get_status(d) & VIRTIO_STATUS_DRIVER_OK) != 0;
        }
    }
    uint64_t ms = elapsed_ms(start);
    diag("log-flood: %s: %lu %s in %lu ms; %lu kept", t->name, flood_bad,
         t->device_id == VIRTIO_ID_BLOCK ? "FEATURES_OK with an unoffered feature"
                                         : "DRIVER_OK without FEATURES_OK",
         ms, kept);
    return all_work(t) ? TEST_PASS : TEST_FAIL;
}

/* ---- the test list --------------------------------------------------------------------------- */

static enum test_result find_devices(void)
{
    cmdline_get_u64("flood_status", &flood_status);
    cmdline_get_u64("flood_notify", &flood_notify);
    cmdline_get_u64("flood_bad", &flood_bad);
    scratch = phys_alloc(4096, 4096);
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        struct target *t = &targets[i];
        t->d = virtio_find(t->device_id, 0);
        t->rings = phys_alloc(0x3000, 4096);
        if (!t->d || !target_up(t) || !target_works(t)) {
            diag("%s: missing or not working", t->name);
            ok = false;
        }
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

#define ON(fn, ti)                                                                                 \
    static enum test_result fn##_##ti(void)                                                        \
    {                                                                                              \
        return targets[ti].d ? fn(ti) : skip("device missing");                                    \
    }
ON(status_flood, BLK)
ON(status_flood, RNG)
ON(notify_flood, BLK)
ON(notify_flood, RNG)
ON(bad_requests, BLK)
ON(bad_requests, RNG)
ON(refused_negotiations, BLK)
ON(refused_negotiations, RNG)

static enum test_result final_reset(void)
{
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++)
        ok &= targets[i].d && virtio_reset(targets[i].d);
    return ok ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"blk and rng found and working", find_devices},
    {"blk: status writes taking bits away, many: a reset brings it back", status_flood_BLK},
    {"rng: status writes taking bits away, many: a reset brings it back", status_flood_RNG},
    {"blk: notifications of a queue that does not exist, many: no harm", notify_flood_BLK},
    {"rng: notifications of a queue that does not exist, many: no harm", notify_flood_RNG},
    {"blk: looped chains, each after a reset: each flagged, then works", bad_requests_BLK},
    {"rng: heads beyond the queue, each after a reset: each flagged, then works", bad_requests_RNG},
    {"blk: FEATURES_OK with an unoffered feature, many: then works", refused_negotiations_BLK},
    {"rng: DRIVER_OK without FEATURES_OK, many: then works", refused_negotiations_RNG},
    {"both devices reset at the end", final_reset},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
