/*
 * A hostile virtio driver. For each device (virtio-blk, virtio-rng, virtio-console) in turn it
 * breaks the rules one way at a time, then checks that the device set DEVICE_NEEDS_RESET and
 * raised a configuration interrupt, that it works again after a reset, and that the other
 * devices kept working. Attacks on the disk are writes to sector 0: the harness checks that
 * the image did not change.
 *
 * hostile_skip=ATTACK,DEVICE:ATTACK,... skips attacks (the harness lists there what a VMM does
 * not flag); hostile_device_timeout_ms= bounds the wait for NEEDS_RESET (default 1000).
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define WAIT_US        2000000
#define OUTSIDE_RAM    0x10000000000ull /* 1 TiB: no RAM there */
#define BAD_QUEUE_SIZE 48               /* below every maximum here */
#define CONSOLE_TXQ    1

enum attack {
    LOOP,
    OUTSIDE,
    HUGE_LEN,
    AVAIL_JUMP,
    HEAD_INDEX,
    NEXT_INDEX,
    INDIRECT_LEN,
    INDIRECT_NESTED,
    WRITE_BEFORE_READ,
    RINGS_OUTSIDE,
    QUEUE_SIZE,
    NO_STATUS,
    ATTACKS
};

static const struct {
    const char *name; /* for hostile_skip= */
    const char *what;
} attacks[ATTACKS] = {
    [LOOP] = {"loop", "looped descriptor chain"},
    [OUTSIDE] = {"outside", "buffer outside RAM"},
    [HUGE_LEN] = {"huge-len", "buffer length 0xffffffff"},
    [AVAIL_JUMP] = {"avail-jump", "avail index jumps past the queue size"},
    [HEAD_INDEX] = {"head-index", "avail ring names a descriptor >= queue size"},
    [NEXT_INDEX] = {"next-index", "next names a descriptor >= queue size"},
    [INDIRECT_LEN] = {"indirect-len", "indirect table of 24 bytes"},
    [INDIRECT_NESTED] = {"indirect-nested", "indirect descriptor inside an indirect table"},
    [WRITE_BEFORE_READ] = {"write-before-read", "writable descriptor before a readable one"},
    [RINGS_OUTSIDE] = {"rings-outside", "rings placed outside RAM"},
    [QUEUE_SIZE] = {"queue-size", "queue size 48 (not a power of two)"},
    [NO_STATUS] = {"no-status", "request without a status byte"},
};

enum { BLK, RNG, CONSOLE, TARGETS };

struct target {
    const char *name;
    uint32_t device_id;
    unsigned nqueues, attack_queue;
    struct virtio_device *d;
    bool up;
};

static struct target targets[TARGETS] = {
    [BLK] = {"blk", VIRTIO_ID_BLOCK, 1, 0, NULL, false},
    [RNG] = {"rng", VIRTIO_ID_RNG, 1, 0, NULL, false},
    [CONSOLE] = {"console", VIRTIO_ID_CONSOLE, 2, CONSOLE_TXQ, NULL, false},
};

static uint8_t *sector0; /* the disk's first 4 KiB, read before any attack */
static uint8_t *scratch; /* buffers the attacks point at */
static uint64_t status_timeout_us = 1000000;

#define FEATURES (VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX))

/* ---- normal operation ---------------------------------------------------------------------- */

static bool target_up(struct target *t)
{
    t->up = false;
    if (!virtio_begin(t->d, FEATURES, true))
        return false;
    for (unsigned q = 0; q < t->nqueues; q++) {
        if (!virtio_queue_setup(t->d, q, 0, true))
            return false;
    }
    virtio_driver_ok(t->d);
    t->up = !(virtio_get_status(t->d) & VIRTIO_STATUS_NEEDS_RESET);
    return t->up;
}

/* One ordinary request, completed with an interrupt. */
static bool target_works(struct target *t)
{
    if (!t->up)
        return false;
    struct virtio_device *d = t->d;
    if (t->device_id == VIRTIO_ID_BLOCK) {
        uint8_t *buf = scratch + 0x8000;
        int status = vblk_sync(&d->queues[0], VIRTIO_BLK_T_IN, 0, buf, 4096, 1024);
        if (status != VIRTIO_BLK_S_OK) {
            diag("blk: read status %d", status);
            return false;
        }
        if (sector0 && memcmp(buf, sector0, 4096)) {
            diag("blk: sector 0 changed");
            return false;
        }
        return true;
    }
    if (t->device_id == VIRTIO_ID_RNG) {
        struct vbuf b = {(uint64_t)scratch + 0x9000, 32, true};
        int64_t len = virtq_transfer(&d->queues[0], &b, 1, WAIT_US);
        if (len <= 0)
            diag("rng: read returned %ld", len);
        return len > 0;
    }
    static const char line[] = "virtio-hostile: the console still works\n";
    memcpy(scratch + 0xa000, line, sizeof(line) - 1);
    struct vbuf b = {(uint64_t)scratch + 0xa000, sizeof(line) - 1, false};
    bool ok = virtq_transfer(&d->queues[CONSOLE_TXQ], &b, 1, WAIT_US) >= 0;
    if (!ok)
        diag("console: transmit did not complete");
    return ok;
}

/* ---- the attacks ----------------------------------------------------------------------------- */

/* A well-formed request for the target as a chain in desc[0..]; returns its length. The disk's
 * is a write of 512 bytes of 0x5a to sector 0. */
static unsigned template_request(struct target *t, struct virtq_desc *desc)
{
    static struct vblk_req req;
    uint8_t *data = scratch;
    memset(data, 0x5a, 512);
    unsigned n = 0;
    if (t->device_id == VIRTIO_ID_BLOCK) {
        req = (struct vblk_req){.type = VIRTIO_BLK_T_OUT, .sector = 0, .status = 0xff};
        desc[n++] = (struct virtq_desc){(uint64_t)&req, 16, 0, 0};
        desc[n++] = (struct virtq_desc){(uint64_t)data, 512, 0, 0};
        desc[n++] = (struct virtq_desc){(uint64_t)&req.status, 1, VIRTQ_DESC_F_WRITE, 0};
    } else if (t->device_id == VIRTIO_ID_RNG) {
        desc[n++] = (struct virtq_desc){(uint64_t)data, 256, VIRTQ_DESC_F_WRITE, 0};
        desc[n++] = (struct virtq_desc){(uint64_t)data + 256, 256, VIRTQ_DESC_F_WRITE, 0};
    } else {
        memcpy(data, "hostile\n", 8);
        desc[n++] = (struct virtq_desc){(uint64_t)data, 8, 0, 0};
        desc[n++] = (struct virtq_desc){(uint64_t)data + 8, 8, 0, 0};
    }
    for (unsigned i = 0; i + 1 < n; i++) {
        desc[i].flags |= VIRTQ_DESC_F_NEXT;
        desc[i].next = (uint16_t)(i + 1);
    }
    return n;
}

/* The index of the descriptor that carries the data (the one to corrupt). */
static unsigned data_desc(struct target *t)
{
    return t->device_id == VIRTIO_ID_BLOCK ? 1 : 0;
}

static void publish(struct virtq *q, uint16_t head)
{
    q->avail->ring[q->avail_idx % q->size] = head;
    barrier();
    q->avail_idx++;
    WRITE_ONCE(q->avail->idx, q->avail_idx);
    mb();
    virtq_notify(q);
}

/* Sets the device up with one bad queue (rings outside RAM, or a bad size). */
static void bad_queue_setup(struct target *t, enum attack a)
{
    struct virtio_device *d = t->d;
    t->up = false;
    if (!virtio_begin(d, FEATURES, true))
        return;
    for (unsigned q = 0; q < t->nqueues; q++) {
        if (q != t->attack_queue) {
            virtio_queue_setup(d, q, 0, true);
            continue;
        }
        uint64_t base = (uint64_t)scratch + 0x10000; /* room for 256 entries */
        if (a == RINGS_OUTSIDE)
            virtio_queue_setup_raw(d, q, 64, OUTSIDE_RAM, OUTSIDE_RAM + 0x1000,
                                   OUTSIDE_RAM + 0x2000);
        else
            virtio_queue_setup_raw(d, q, BAD_QUEUE_SIZE, base, base + 0x1000, base + 0x2000);
    }
    virtio_driver_ok(d);
}

static void launch(struct target *t, enum attack a)
{
    if (a == RINGS_OUTSIDE || a == QUEUE_SIZE) {
        bad_queue_setup(t, a);
        return;
    }
    struct virtq *q = &t->d->queues[t->attack_queue];
    struct virtq_desc *desc = q->desc;
    struct virtq_desc *table = (struct virtq_desc *)(scratch + 0x4000);
    unsigned n;
    switch (a) {
    case LOOP:
        /* The second descriptor leads back to the head: a loop of buffers in one direction. */
        template_request(t, desc);
        desc[1].flags |= VIRTQ_DESC_F_NEXT;
        desc[1].next = 0;
        publish(q, 0);
        break;
    case OUTSIDE:
        template_request(t, desc);
        desc[data_desc(t)].addr = OUTSIDE_RAM;
        publish(q, 0);
        break;
    case HUGE_LEN:
        template_request(t, desc);
        desc[data_desc(t)].len = 0xffffffffu;
        publish(q, 0);
        break;
    case AVAIL_JUMP:
        template_request(t, desc);
        q->avail->ring[q->avail_idx % q->size] = 0;
        q->avail_idx = (uint16_t)(q->avail_idx + q->size + 10);
        WRITE_ONCE(q->avail->idx, q->avail_idx);
        mb();
        virtq_notify(q);
        break;
    case HEAD_INDEX:
        template_request(t, desc);
        publish(q, (uint16_t)(q->size + 7));
        break;
    case NEXT_INDEX:
        template_request(t, desc);
        desc[0].flags |= VIRTQ_DESC_F_NEXT;
        desc[0].next = (uint16_t)(q->size + 3);
        publish(q, 0);
        break;
    case INDIRECT_LEN:
        n = template_request(t, table);
        desc[0] = (struct virtq_desc){(uint64_t)table, 24, VIRTQ_DESC_F_INDIRECT, 0};
        publish(q, 0);
        break;
    case INDIRECT_NESTED:
        n = template_request(t, table + 4);
        table[0] = (struct virtq_desc){(uint64_t)(table + 4), n * 16, VIRTQ_DESC_F_INDIRECT, 0};
        desc[0] = (struct virtq_desc){(uint64_t)table, 16, VIRTQ_DESC_F_INDIRECT, 0};
        publish(q, 0);
        break;
    case WRITE_BEFORE_READ:
        n = template_request(t, desc);
        /* Swap the roles: writable first, then a readable one. */
        desc[0].flags |= VIRTQ_DESC_F_WRITE;
        desc[n - 1].flags &= (uint16_t)~VIRTQ_DESC_F_WRITE;
        publish(q, 0);
        break;
    case NO_STATUS:
        template_request(t, desc);
        desc[1].flags &= (uint16_t)~VIRTQ_DESC_F_NEXT; /* header and data, no status */
        publish(q, 0);
        break;
    default:
        break;
    }
}

static bool in_skip_list(const char *word)
{
    return cmdline_list_has("hostile_skip", word);
}

/* hostile_skip= names ATTACK (on every device) or DEVICE:ATTACK. */
static bool skipped_by_cmdline(const struct target *t, enum attack a)
{
    char both[64];
    snprintf(both, sizeof(both), "%s:%s", t->name, attacks[a].name);
    return in_skip_list(attacks[a].name) || in_skip_list(both);
}

static enum test_result attack(unsigned ti, enum attack a)
{
    struct target *t = &targets[ti];
    if (!t->d)
        return skip("device missing");
    if (a == NO_STATUS && t->device_id != VIRTIO_ID_BLOCK)
        return skip("only virtio-blk requests carry a status byte");
    if (skipped_by_cmdline(t, a))
        return skip("in hostile_skip=: this VMM does not flag it (the harness says why)");
    struct virtio_device *d = t->d;
    if (a != RINGS_OUTSIDE && a != QUEUE_SIZE && !target_up(t)) {
        diag("%s: could not be set up before the attack", t->name);
        return TEST_FAIL;
    }
    /* Interrupts from the set-up land before counting starts. */
    virtio_irq_window(2000);
    uint64_t config_irqs = d->config_irqs;
    uint32_t generation = virtio_config_generation(d);
    diag("hostile: %s: %s", t->name, attacks[a].what);
    launch(t, a);
    uint8_t status;
    bool needs_reset = virtio_wait_needs_reset(d, status_timeout_us, &status);
    bool config_irq = virtio_wait_config_irq(d, config_irqs, WAIT_US);
    diag("status 0x%02x (NEEDS_RESET %s), configuration interrupt %s, config_generation %u -> "
         "%u",
         status, needs_reset ? "set" : "clear", config_irq ? "raised" : "missing", generation,
         virtio_config_generation(d));
    bool recovered = virtio_reset(d) && target_up(t) && target_works(t);
    if (!recovered)
        diag("%s does not work after a reset", t->name);
    bool others = true;
    for (unsigned o = 0; o < TARGETS; o++) {
        if (o != ti && targets[o].d && !target_works(&targets[o])) {
            diag("%s stopped working", targets[o].name);
            others = false;
        }
    }
    return needs_reset && config_irq && recovered && others ? TEST_PASS : TEST_FAIL;
}

/* ---- the test list ------------------------------------------------------------------------- */

static enum test_result find_devices(void)
{
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        targets[i].d = virtio_find(targets[i].device_id, 0);
        if (!targets[i].d) {
            diag("no %s device", targets[i].name);
            ok = false;
        }
    }
    scratch = phys_alloc(0x20000, 4096);
    uint64_t ms;
    if (cmdline_get_u64("hostile_device_timeout_ms", &ms))
        status_timeout_us = ms * 1000;
    return ok ? TEST_PASS : TEST_FAIL;
}

/* The device must refuse FEATURES_OK for features it did not offer and without VERSION_1. */
static enum test_result refused_features(void)
{
    struct target *t = &targets[BLK];
    if (!t->d)
        return skip("device missing");
    if (in_skip_list("features"))
        return skip("in hostile_skip=: this VMM does not flag it (the harness says why)");
    struct virtio_device *d = t->d;
    virtio_try_features(d, VIRTIO_BIT(VIRTIO_F_VERSION_1)); /* reads what is offered */
    uint64_t offered = d->device_features;
    uint64_t unoffered = 0;
    for (unsigned bit = 0; bit < 64 && !unoffered; bit++) {
        /* a device-type bit below 24 the device does not have */
        if (bit < 24 && !((offered >> bit) & 1))
            unoffered = VIRTIO_BIT(bit);
    }
    diag("hostile: blk: a feature the device did not offer");
    bool extra = virtio_try_features(d, VIRTIO_BIT(VIRTIO_F_VERSION_1) | unoffered);
    diag("hostile: blk: no VERSION_1");
    bool no_version = virtio_try_features(d, offered & ~VIRTIO_BIT(VIRTIO_F_VERSION_1));
    bool normal = virtio_try_features(d, VIRTIO_BIT(VIRTIO_F_VERSION_1));
    diag("FEATURES_OK with unoffered feature 0x%lx: %s; without VERSION_1: %s; VERSION_1 "
         "alone: %s",
         unoffered, extra ? "kept" : "refused", no_version ? "kept" : "refused",
         normal ? "kept" : "refused");
    bool ok = unoffered && !extra && !no_version && normal && target_up(t) && target_works(t);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* DRIVER_OK with a queue left disabled (the first queue: rng's only one, the console's
 * receive queue, while host input waits): the device must cope, and work after a reset. */
static enum test_result disabled_queue(unsigned ti)
{
    struct target *t = &targets[ti];
    if (!t->d)
        return skip("device missing");
    struct virtio_device *d = t->d;
    diag("%s: DRIVER_OK with queue 0 disabled", t->name);
    if (!virtio_begin(d, FEATURES, true))
        return TEST_FAIL;
    for (unsigned q = 1; q < t->nqueues; q++) {
        if (!virtio_queue_setup(d, q, 0, true))
            return TEST_FAIL;
    }
    virtio_driver_ok(d);
    bool tx_ok = true;
    if (ti == CONSOLE) {
        /* The console's transmit queue works; host input has nowhere to go meanwhile. */
        t->up = true;
        tx_ok = target_works(t);
    }
    udelay(200000);
    uint8_t status = virtio_get_status(d);
    diag("status 0x%02x after 200 ms%s", status,
         ti == CONSOLE ? (tx_ok ? "; transmit works" : "; transmit failed") : "");
    bool recovered = virtio_reset(d) && target_up(t) && target_works(t);
    bool others = true;
    for (unsigned o = 0; o < TARGETS; o++) {
        if (o != ti && targets[o].d && !target_works(&targets[o]))
            others = false;
    }
    return tx_ok && recovered && others ? TEST_PASS : TEST_FAIL;
}

static enum test_result disabled_queue_blk(void)
{
    return disabled_queue(BLK);
}

static enum test_result disabled_queue_rng(void)
{
    return disabled_queue(RNG);
}

static enum test_result disabled_queue_console(void)
{
    return disabled_queue(CONSOLE);
}

static enum test_result all_work(void)
{
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        if (!targets[i].d)
            continue;
        bool works = target_up(&targets[i]) && target_works(&targets[i]);
        if (!works)
            diag("%s does not work", targets[i].name);
        ok &= works;
    }
    if (targets[BLK].up) {
        sector0 = phys_alloc(4096, 4096);
        memcpy(sector0, scratch + 0x8000, 4096);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

#define ATTACK_TEST(t, a)                                                                          \
    static enum test_result attack_##t##_##a(void)                                                 \
    {                                                                                              \
        return attack(t, a);                                                                       \
    }

#define ATTACKS_ON(t)                                                                              \
    ATTACK_TEST(t, LOOP)                                                                           \
    ATTACK_TEST(t, OUTSIDE)                                                                        \
    ATTACK_TEST(t, HUGE_LEN)                                                                       \
    ATTACK_TEST(t, AVAIL_JUMP)                                                                     \
    ATTACK_TEST(t, HEAD_INDEX)                                                                     \
    ATTACK_TEST(t, NEXT_INDEX)                                                                     \
    ATTACK_TEST(t, INDIRECT_LEN)                                                                   \
    ATTACK_TEST(t, INDIRECT_NESTED)                                                                \
    ATTACK_TEST(t, WRITE_BEFORE_READ)                                                              \
    ATTACK_TEST(t, RINGS_OUTSIDE)                                                                  \
    ATTACK_TEST(t, QUEUE_SIZE)                                                                     \
    ATTACK_TEST(t, NO_STATUS)

ATTACKS_ON(BLK)
ATTACKS_ON(RNG)
ATTACKS_ON(CONSOLE)

#define SUFFIX ": NEEDS_RESET, config interrupt, recovers, others unaffected"
#define ENTRIES(t, dev)                                                                            \
    {dev ": looped descriptor chain" SUFFIX, attack_##t##_LOOP},                                   \
        {dev ": buffer outside RAM" SUFFIX, attack_##t##_OUTSIDE},                                 \
        {dev ": buffer length 0xffffffff" SUFFIX, attack_##t##_HUGE_LEN},                          \
        {dev ": avail index jump" SUFFIX, attack_##t##_AVAIL_JUMP},                                \
        {dev ": head index >= queue size" SUFFIX, attack_##t##_HEAD_INDEX},                        \
        {dev ": next index >= queue size" SUFFIX, attack_##t##_NEXT_INDEX},                        \
        {dev ": indirect table of bad length" SUFFIX, attack_##t##_INDIRECT_LEN},                  \
        {dev ": nested indirect table" SUFFIX, attack_##t##_INDIRECT_NESTED},                      \
        {dev ": writable before readable" SUFFIX, attack_##t##_WRITE_BEFORE_READ},                 \
        {dev ": rings outside RAM" SUFFIX, attack_##t##_RINGS_OUTSIDE},                            \
        {dev ": queue size not a power of two" SUFFIX, attack_##t##_QUEUE_SIZE},                   \
    {                                                                                              \
        dev ": request without a status byte" SUFFIX, attack_##t##_NO_STATUS                       \
    }

static enum test_result final_check(void)
{
    bool ok = true;
    for (unsigned i = 0; i < TARGETS; i++) {
        if (targets[i].d && !target_works(&targets[i]))
            ok = false;
    }
    /* Leave the devices reset: nothing in flight while the VMM shuts down. */
    for (unsigned i = 0; i < TARGETS; i++) {
        if (targets[i].d)
            virtio_reset(targets[i].d);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"blk, rng and console devices found", find_devices},
    {"all three work before any attack", all_work},
    {"blk: DRIVER_OK with its queue disabled, then a reset: works", disabled_queue_blk},
    {"rng: DRIVER_OK with its queue disabled, then a reset: works", disabled_queue_rng},
    {"console: DRIVER_OK without a receive queue while input waits: no harm",
     disabled_queue_console},
    {"blk: FEATURES_OK refused for an unoffered feature and without VERSION_1", refused_features},
    ENTRIES(BLK, "blk"),
    ENTRIES(RNG, "rng"),
    ENTRIES(CONSOLE, "console"),
    {"all three still work at the end", final_check},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
