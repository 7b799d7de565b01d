/*
 * A virtio-blk disk served by a vhost-user back-end (tests/vhost_user/): the guest sees an
 * ordinary virtio-blk device, on either transport. The host fills the image with a known
 * pattern (the 8-byte word at byte offset o is mix64(o ^ HOST_SEED)); the guest reads the
 * whole disk and checks it, writes its own pattern (GUEST_SEED) over [1 MiB, 3 MiB), flushes,
 * and reads that back. The harness then checks the image file block by block.
 * With vub_hold=1 the guest then keeps reading, saying "# vub: holding" once, until the
 * device says it needs a reset (the harness kills the back-end) or 60 s pass.
 * With vub_stream=S the guest instead writes sequenced 4 KiB blocks for S seconds, 16 at a
 * time, over the whole disk (sequence number s into block s % blocks; the block's first word
 * is s, the others mix64((s << 9 | word) ^ STREAM_SEED)), says "# vub: streaming" once and
 * carries on while the harness kills and restarts the back-end; then it reads every block
 * back and checks that each holds the last sequence number it wrote there, and prints
 * "# vub: stream last=S errors=E". With vub_stream_fail=1 the back-end never comes back: the
 * guest expects I/O errors or DEVICE_NEEDS_RESET instead, and no request left unanswered.
 * With vub_resize=N the guest, once it read the capacity, says "# vub: waiting for a resize"
 * and waits (20 s at most) for a configuration interrupt after which the capacity is N sectors
 * (the back-end resized the disk and said so on its request channel), then skips the I/O.
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define HOST_SEED   0x686f73742d766275ull /* "host-vub" */
#define GUEST_SEED  0x67756573742d7662ull /* "guest-vb" */
#define WRITE_START (1u << 20)
#define WRITE_LEN   (2u << 20)
#define CHUNK       (64 * 1024)
#define WAIT_US     5000000
#define STREAM_SEED 0x73747265616d2d76ull /* "stream-v" */
#define STREAM_QD   16
#define BLOCK       4096

static struct virtio_device *disk;
static uint64_t disk_bytes;
static uint8_t *buf, *want;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct fill_args {
    uint8_t *a, *b;
    uint64_t offset, len, seed;
};

static uint64_t user_fill(uint64_t arg)
{
    struct fill_args *f = (struct fill_args *)arg;
    uint64_t *w = (uint64_t *)f->a;
    for (uint64_t i = 0; i < f->len / 8; i++)
        w[i] = mix64((f->offset + 8 * i) ^ f->seed);
    return 0;
}

/* 0 when equal, else 1 + the first differing byte. */
static uint64_t user_compare(uint64_t arg)
{
    struct fill_args *f = (struct fill_args *)arg;
    for (uint64_t i = 0; i < f->len; i++) {
        if (f->a[i] != f->b[i])
            return i + 1;
    }
    return 0;
}

static void fill(uint8_t *p, uint64_t offset, uint64_t len, uint64_t seed)
{
    struct fill_args f = {.a = p, .offset = offset, .len = len, .seed = seed};
    run_user(user_fill, (uint64_t)&f);
}

static bool same(const uint8_t *a, const uint8_t *b, uint64_t len, uint64_t disk_offset)
{
    struct fill_args f = {.a = (uint8_t *)a, .b = (uint8_t *)b, .len = len};
    uint64_t at = run_user(user_compare, (uint64_t)&f);
    if (at)
        diag("first difference at disk byte %lu", disk_offset + at - 1);
    return at == 0;
}

/* One request per CHUNK over [offset, offset + len), one at a time. */
static bool io(uint32_t type, uint64_t offset, uint8_t *p, uint64_t len)
{
    struct virtq *q = &disk->queues[0];
    for (uint64_t done = 0; done < len; done += CHUNK) {
        uint32_t n = len - done < CHUNK ? (uint32_t)(len - done) : CHUNK;
        int st = vblk_sync(q, type, (offset + done) / SECTOR_SIZE, p + done, n, 16384);
        if (st != VIRTIO_BLK_S_OK) {
            diag("request type %u at byte %lu: %s %d", type, offset + done,
                 st < 0 ? "no answer" : "status", st);
            return false;
        }
    }
    return true;
}

static bool set_up(void)
{
    uint64_t wanted = VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX) |
                      VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) | VIRTIO_BIT(VIRTIO_BLK_F_SEG_MAX) |
                      VIRTIO_BIT(VIRTIO_BLK_F_BLK_SIZE);
    if (!virtio_begin(disk, wanted, true))
        return false;
    diag("%s: offered 0x%lx, negotiated 0x%lx", disk->name, disk->device_features, disk->features);
    if (!virtio_has(disk, VIRTIO_BLK_F_FLUSH) || !virtio_queue_setup(disk, 0, 0, true))
        return false;
    virtio_driver_ok(disk);
    uint8_t status = virtio_get_status(disk);
    if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        diag("status 0x%x after DRIVER_OK", status);
        return false;
    }
    return true;
}

static enum test_result bring_up(void)
{
    virtio_discover();
    disk = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!disk)
        return TEST_FAIL;
    return set_up() ? TEST_PASS : TEST_FAIL;
}

static enum test_result capacity(void)
{
    if (!disk)
        return skip("no disk");
    uint64_t sectors = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY), want_sectors = 0;
    diag("capacity %lu sectors", sectors);
    if (!cmdline_get_u64("vub_sectors", &want_sectors))
        return skip("no vub_sectors= on the command line");
    uint64_t resized = 0;
    if (sectors == want_sectors && cmdline_get_u64("vub_resize", &resized) && resized) {
        uint64_t seen = disk->config_irqs;
        uint32_t generation = virtio_config_generation(disk);
        printf("# vub: waiting for a resize\n");
        bool irq = virtio_wait_config_irq(disk, seen, 20000000);
        sectors = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY);
        printf("# vub: %s, generation %s, capacity %lu sectors\n",
               irq ? "a configuration interrupt" : "no configuration interrupt",
               virtio_config_generation(disk) != generation ? "changed" : "unchanged", sectors);
        return irq && sectors == resized ? TEST_PASS : TEST_FAIL;
    }
    disk_bytes = sectors * SECTOR_SIZE;
    if (sectors != want_sectors || disk_bytes < WRITE_START + WRITE_LEN || disk_bytes > 64 * MIB ||
        disk_bytes % CHUNK)
        return TEST_FAIL;
    buf = phys_alloc(disk_bytes, 4096);
    want = phys_alloc(disk_bytes, 4096);
    return TEST_PASS;
}

static enum test_result read_host_data(void)
{
    if (!buf)
        return skip("no disk");
    if (!io(VIRTIO_BLK_T_IN, 0, buf, disk_bytes))
        return TEST_FAIL;
    fill(want, 0, disk_bytes, HOST_SEED);
    return same(buf, want, disk_bytes, 0) ? TEST_PASS : TEST_FAIL;
}

static enum test_result write_and_flush(void)
{
    if (!buf)
        return skip("no disk");
    fill(buf, WRITE_START, WRITE_LEN, GUEST_SEED);
    if (!io(VIRTIO_BLK_T_OUT, WRITE_START, buf, WRITE_LEN))
        return TEST_FAIL;
    int st = vblk_sync(&disk->queues[0], VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
    if (st != VIRTIO_BLK_S_OK) {
        diag("flush: %d", st);
        return TEST_FAIL;
    }
    diag("# vub: written");
    return TEST_PASS;
}

static enum test_result read_back(void)
{
    if (!buf)
        return skip("no disk");
    if (!io(VIRTIO_BLK_T_IN, 0, buf, disk_bytes))
        return TEST_FAIL;
    fill(want + WRITE_START, WRITE_START, WRITE_LEN, GUEST_SEED);
    return same(buf, want, disk_bytes, 0) ? TEST_PASS : TEST_FAIL;
}

/* The back-end signals the vector's eventfd, which ember unbinds from KVM while the vector is
 * masked: its interrupt is pending in the PBA until the vector is unmasked. */
static enum test_result msix_masking(void)
{
    if (!buf)
        return skip("no disk");
    if (disk->transport != VIRTIO_PCI)
        return skip("MSI-X is virtio-pci's");
    static struct vblk_req req = {.type = VIRTIO_BLK_T_IN, .sector = 0};
    req.status = 0xff;
    struct vbuf bufs[3] = {
        {(uint64_t)&req, 16, false}, {(uint64_t)buf, 4096, true}, {(uint64_t)&req.status, 1, true}};
    struct msix_masked_request r;
    bool ok = virtq_msix_masked_request(disk, &disk->queues[0], bufs, 3, &req, WAIT_US, &r);
    bool done = r.done && req.status == VIRTIO_BLK_S_OK;
    diag("request %s, %s while masked, PBA bit %s; on unmask the interrupt %s, PBA bit %s",
         done ? "done" : "lost", r.quiet ? "no interrupt" : "an interrupt",
         r.pending ? "set" : "clear", r.delivered ? "arrived" : "did not arrive",
         r.cleared ? "cleared" : "still set");
    return ok && done ? TEST_PASS : TEST_FAIL;
}

/* A reset takes the rings back from the back-end (GET_VRING_BASE); the next DRIVER_OK hands
 * them over again from the start. */
static enum test_result reset_and_again(void)
{
    if (!buf)
        return skip("no disk");
    if (!virtio_reset(disk) || !set_up())
        return TEST_FAIL;
    if (!io(VIRTIO_BLK_T_IN, 0, buf, disk_bytes))
        return TEST_FAIL;
    return same(buf, want, disk_bytes, 0) ? TEST_PASS : TEST_FAIL;
}

/* The back-end is killed meanwhile: requests stop being answered and the device, told by
 * ember, sets DEVICE_NEEDS_RESET. */
static enum test_result hold_until_gone(void)
{
    uint64_t hold = 0;
    if (!cmdline_get_u64("vub_hold", &hold) || !hold)
        return skip("no vub_hold=1");
    if (!buf)
        return skip("no disk");
    printf("# vub: holding\n");
    uint64_t start = time_us();
    while (time_us() - start < 60000000) {
        uint8_t status = virtio_get_status(disk);
        if (status & VIRTIO_STATUS_NEEDS_RESET) {
            diag("DEVICE_NEEDS_RESET after %lu ms", (time_us() - start) / 1000);
            /* The driver's way on: a reset, which ember answers without its back-end. */
            return virtio_reset(disk) ? TEST_PASS : TEST_FAIL;
        }
        vblk_sync(&disk->queues[0], VIRTIO_BLK_T_IN, 0, buf, 4096, 0);
    }
    diag("the device never said it needs a reset");
    return TEST_FAIL;
}

static void stream_fill(uint64_t *w, uint64_t seq)
{
    w[0] = seq;
    for (uint64_t j = 1; j < BLOCK / 8; j++)
        w[j] = mix64((seq << 9 | j) ^ STREAM_SEED);
}

static bool in_flight(const bool *busy, const uint64_t *block_of, uint64_t b)
{
    for (unsigned k = 0; k < STREAM_QD; k++) {
        if (busy[k] && block_of[k] == b)
            return true;
    }
    return false;
}

/* Writes sequenced blocks while the harness kills and restarts the back-end. Every write is
 * answered; the ones in flight when it died fail with VIRTIO_BLK_S_IOERR when the back-end
 * cannot resume them (no INFLIGHT_SHMFD), and their blocks are written again, as a file
 * system would. Afterwards each block holds the last sequence number written there with
 * success. vub_stream_fail=1: the back-end never comes back; once ember gives up the device
 * needs a reset, and no request is left unanswered. */
static enum test_result stream(void)
{
    uint64_t seconds = 0, expect_fail = 0;
    if (!cmdline_get_u64("vub_stream", &seconds) || !seconds)
        return skip("no vub_stream=S");
    if (!buf)
        return skip("no disk");
    cmdline_get_u64("vub_stream_fail", &expect_fail);
    struct virtq *q = &disk->queues[0];
    static struct vblk_req reqs[STREAM_QD];
    static uint64_t seq_of[STREAM_QD], block_of[STREAM_QD];
    uint64_t blocks = disk_bytes / BLOCK;
    uint64_t *last_ok = phys_alloc(blocks * sizeof(uint64_t), 8);
    bool *redo = phys_alloc(blocks, 8);
    for (uint64_t b = 0; b < blocks; b++) {
        last_ok[b] = UINT64_MAX;
        redo[b] = false;
    }
    uint8_t *data = phys_alloc(STREAM_QD * BLOCK, 4096);
    uint64_t seq = 0, errors = 0, outstanding = 0, next_block = 0, redo_left = 0;
    bool busy[STREAM_QD] = {false}, needs_reset = false;
    uint64_t start = time_us(), end = start + seconds * 1000000;
    printf("# vub: streaming\n");
    for (;;) {
        bool more =
            !needs_reset && (time_us() < end || next_block % blocks || redo_left || seq < blocks);
        if (expect_fail && errors)
            more = false;
        if (!more && !outstanding)
            break;
        for (unsigned k = 0; k < STREAM_QD && more; k++) {
            if (busy[k])
                continue;
            /* Failed blocks first, then the next in turn; once time is up, only to the end of
             * the pass and the failed ones. */
            uint64_t b = UINT64_MAX;
            if (redo_left) {
                for (uint64_t i = 0; i < blocks && b == UINT64_MAX; i++)
                    if (redo[i] && !in_flight(busy, block_of, i))
                        b = i;
                if (b == UINT64_MAX)
                    break;
                redo[b] = false;
                redo_left--;
            } else if (in_flight(busy, block_of, next_block % blocks)) {
                break; /* never two writes of one block at once: either could land last */
            } else if (time_us() < end || next_block % blocks || seq < blocks) {
                b = next_block++ % blocks;
            } else {
                break;
            }
            uint8_t *p = data + k * BLOCK;
            stream_fill((uint64_t *)p, seq);
            if (vblk_submit(q, &reqs[k], VIRTIO_BLK_T_OUT, b * (BLOCK / SECTOR_SIZE), p, BLOCK, 0) <
                0)
                break;
            seq_of[k] = seq++;
            block_of[k] = b;
            busy[k] = true;
            outstanding++;
        }
        if (!outstanding)
            continue;
        virtq_kick(q);
        uint64_t wait_start = time_us();
        while (!virtq_has_used(q)) {
            if (virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET)
                needs_reset = true;
            if (time_us() - wait_start > 30000000) {
                diag("%lu write(s) unanswered for 30 s", outstanding);
                return TEST_FAIL;
            }
            if (needs_reset && !virtq_has_used(q)) {
                diag("DEVICE_NEEDS_RESET with %lu write(s) unanswered", outstanding);
                return expect_fail ? TEST_PASS : TEST_FAIL;
            }
            cpu_relax();
        }
        struct vblk_req *r;
        while ((r = virtq_get(q, NULL))) {
            unsigned k = (unsigned)(r - reqs);
            uint64_t b = block_of[k];
            if (r->status == VIRTIO_BLK_S_OK) {
                /* Completions may come out of order: the newest write of the block counts. */
                if (last_ok[b] == UINT64_MAX || seq_of[k] > last_ok[b])
                    last_ok[b] = seq_of[k];
            } else {
                if (!errors)
                    diag("write %lu (block %lu): status %u", seq_of[k], b, r->status);
                errors++;
                if (!redo[b]) {
                    redo[b] = true;
                    redo_left++;
                }
            }
            busy[k] = false;
            outstanding--;
        }
    }
    /* A back-end that never comes back: once ember gives up on it (reconnect=S), the device
     * needs a reset; waited for, so that ember's give-up is seen whether or not writes were in
     * flight (and failed at once) when the back-end died. */
    uint64_t give_up_start = time_us();
    while (expect_fail && !needs_reset && time_us() - give_up_start < 30000000) {
        needs_reset = virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET;
        cpu_relax();
    }
    needs_reset = needs_reset || (virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET);
    uint64_t sum = 0;
    for (uint64_t b = 0; b < blocks; b++)
        sum += last_ok[b];
    printf("# vub: stream writes=%lu errors=%lu needs_reset=%d sum=%lu\n", seq, errors, needs_reset,
           sum);
    if (expect_fail)
        return needs_reset ? TEST_PASS : TEST_FAIL;
    if (needs_reset)
        return TEST_FAIL;
    if (vblk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0) != VIRTIO_BLK_S_OK)
        return TEST_FAIL;
    if (!io(VIRTIO_BLK_T_IN, 0, buf, disk_bytes))
        return TEST_FAIL;
    for (uint64_t b = 0; b < blocks; b++) {
        stream_fill((uint64_t *)want, last_ok[b]);
        if (!same(buf + b * BLOCK, want, BLOCK, b * BLOCK)) {
            diag("block %lu holds sequence %lu, not %lu", b, *(uint64_t *)(buf + b * BLOCK),
                 last_ok[b]);
            return TEST_FAIL;
        }
    }
    return TEST_PASS;
}

static const struct guest_test tests[] = {
    {"vhost-user disk found, features negotiated, DRIVER_OK", bring_up},
    {"capacity from the back-end's configuration space", capacity},
    {"the host's data reads back", read_host_data},
    {"2 MiB written and flushed", write_and_flush},
    {"the whole disk reads back: the guest's data over the host's", read_back},
    {"MSI-X: a masked vector's interrupt waits in the PBA, arrives on unmask", msix_masking},
    {"reset, set up again: the whole disk still reads back", reset_and_again},
    {"back-end gone: the device needs a reset, ember answers the reset", hold_until_gone},
    {"sequenced writes across a back-end restart: all answered, the last of each block read "
     "back",
     stream},
};

void guest_main(void)
{
    tsc_calibrate();
    user_mode_init();
    tap_run(tests, ARRAY_SIZE(tests));
}
