/*
 * virtio-blk through its guest interface, on whatever transport the VMM offers (virtio-mmio
 * from the command line, virtio-pci on bus 0). The harness gives two drives:
 *   a writable one (id blk_id=, blk_queues= queues, blk_sectors= sectors) that gets a pattern
 *   across the whole disk, then zeroes in one range; the guest prints the cksum(1) of the
 *   final contents as "# blk-checksum: CRC BYTES" for the harness to compare with the file;
 *   a read-only one (id ro_id=, cksum ro_cksum=) that must refuse writes.
 * Bulk work (filling, comparing, checksums) runs at CPL3, where code runs natively.
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define CHUNK          (64 * 1024)
#define SEG            8192
#define DEPTH          16
#define WAIT_US        5000000
#define PATTERN_SEED   0x656d6265722d626cull /* "ember-bl" */
#define ZERO_SECTOR    4096                  /* 2 MiB in: stays zero at the end */
#define DISCARD_SECTOR 6144                  /* 3 MiB in: discarded, then restored */
#define MATRIX_SECTOR  8192                  /* 4 MiB in: scratch for the feature matrix */
#define RANGE_BYTES    (64 * 1024)

#define WANTED_ALL                                                                                 \
    (VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX) |                         \
     VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) | VIRTIO_BIT(VIRTIO_BLK_F_DISCARD) |                           \
     VIRTIO_BIT(VIRTIO_BLK_F_WRITE_ZEROES) | VIRTIO_BIT(VIRTIO_BLK_F_MQ) |                         \
     VIRTIO_BIT(VIRTIO_BLK_F_BLK_SIZE) | VIRTIO_BIT(VIRTIO_BLK_F_SEG_MAX) |                        \
     VIRTIO_BIT(VIRTIO_BLK_F_RO))

static struct virtio_device *disk, *ro_disk;
static uint64_t capacity; /* sectors */
static uint64_t disk_bytes;
static uint8_t *expected; /* what the disk should hold */
static uint8_t *readback;
static unsigned queues_up;
static bool pattern_written;

/* ---- CPL3 helpers ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct range_args {
    uint8_t *a, *b;
    uint64_t offset; /* disk byte offset of a[0] */
    uint64_t len;
};

/* The pattern: each 8-byte word is a hash of its disk offset. */
static uint64_t user_fill(uint64_t arg)
{
    struct range_args *r = (struct range_args *)arg;
    uint64_t *w = (uint64_t *)r->a;
    for (uint64_t i = 0; i < r->len / 8; i++)
        w[i] = mix64((r->offset + 8 * i) ^ PATTERN_SEED);
    return 0;
}

/* 0 when equal, else 1 + the first differing byte. */
static uint64_t user_compare(uint64_t arg)
{
    struct range_args *r = (struct range_args *)arg;
    for (uint64_t i = 0; i < r->len; i++) {
        if (r->a[i] != r->b[i])
            return i + 1;
    }
    return 0;
}

static uint64_t user_zero(uint64_t arg)
{
    struct range_args *r = (struct range_args *)arg;
    for (uint64_t i = 0; i < r->len / 8; i++)
        ((uint64_t *)r->a)[i] = 0;
    return 0;
}

static uint64_t user_cksum(uint64_t arg)
{
    struct range_args *r = (struct range_args *)arg;
    return cksum_final(cksum_update(0, r->a, r->len), r->len);
}

static void fill_pattern(uint8_t *buf, uint64_t disk_offset, uint64_t len)
{
    struct range_args r = {.a = buf, .offset = disk_offset, .len = len};
    run_user(user_fill, (uint64_t)&r);
}

static bool same(const uint8_t *a, const uint8_t *b, uint64_t len, const char *what)
{
    struct range_args r = {.a = (uint8_t *)a, .b = (uint8_t *)b, .len = len};
    uint64_t at = run_user(user_compare, (uint64_t)&r);
    if (at)
        diag("%s: first difference at byte %lu of %lu", what, at - 1, len);
    return at == 0;
}

static uint32_t cksum_of(const uint8_t *buf, uint64_t len)
{
    struct range_args r = {.a = (uint8_t *)buf, .len = len};
    return (uint32_t)run_user(user_cksum, (uint64_t)&r);
}

/* ---- device bring-up and bulk I/O --------------------------------------------------------- */

static bool bring_up(struct virtio_device *d, uint64_t wanted, bool irq_setup, bool interrupts,
                     unsigned nqueues)
{
    if (!virtio_begin(d, wanted, irq_setup))
        return false;
    for (unsigned q = 0; q < nqueues; q++) {
        if (!virtio_queue_setup(d, q, 0, interrupts))
            return false;
    }
    virtio_driver_ok(d);
    uint8_t status = virtio_get_status(d);
    if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        diag("%s: status 0x%x after DRIVER_OK", d->name, status);
        return false;
    }
    return true;
}

/* Streams [sector, sector + bytes/512) through queue q in `chunk`-byte requests split into
 * `seg`-byte buffers, up to `depth` in flight; every status must be OK. */
static bool stream(struct virtq *q, uint32_t type, uint64_t sector, uint8_t *buf, uint64_t bytes,
                   uint32_t chunk, uint32_t seg, unsigned depth)
{
    static struct vblk_req reqs[DEPTH];
    bool busy[DEPTH] = {false};
    uint64_t next = 0, done = 0, total = (bytes + chunk - 1) / chunk;
    unsigned inflight = 0;
    bool ok = true;
    if (depth > DEPTH)
        depth = DEPTH;
    while (done < total) {
        bool added = false;
        while (next < total && inflight < depth) {
            unsigned slot = 0;
            while (busy[slot])
                slot++;
            uint64_t off = next * chunk;
            uint32_t len = bytes - off < chunk ? (uint32_t)(bytes - off) : chunk;
            if (vblk_submit(q, &reqs[slot], type, sector + off / SECTOR_SIZE, buf + off, len, seg) <
                0)
                break;
            busy[slot] = true;
            inflight++;
            next++;
            added = true;
        }
        if (added)
            virtq_kick(q);
        if (!virtq_has_used(q) && !virtq_wait(q, WAIT_US)) {
            diag("queue %u: %lu of %lu requests still outstanding after %u ms", q->index,
                 total - done, total, WAIT_US / 1000);
            return false;
        }
        struct vblk_req *r;
        while ((r = virtq_get(q, NULL))) {
            if (READ_ONCE(r->status) != VIRTIO_BLK_S_OK) {
                diag("request type %u at sector %lu: status %u", r->type, r->sector, r->status);
                ok = false;
            }
            busy[r - reqs] = false;
            inflight--;
            done++;
        }
    }
    return ok;
}

/* ---- the checks ---------------------------------------------------------------------------- */

static enum test_result find_drives(void)
{
    virtio_discover();
    for (unsigned i = 0; virtio_find(VIRTIO_ID_BLOCK, i); i++) {
        struct virtio_device *d = virtio_find(VIRTIO_ID_BLOCK, i);
        if (!virtio_begin(d, 0, false))
            continue;
        bool ro = (d->device_features >> VIRTIO_BLK_F_RO) & 1;
        virtio_reset(d);
        if (ro && !ro_disk)
            ro_disk = d;
        else if (!ro && !disk)
            disk = d;
    }
    diag("writable drive: %s; read-only drive: %s", disk ? disk->name : "none",
         ro_disk ? ro_disk->name : "none");
    return disk && ro_disk ? TEST_PASS : TEST_FAIL;
}

static enum test_result negotiate(void)
{
    if (!disk)
        return skip("no writable drive");
    uint64_t expected_queues = 1;
    cmdline_get_u64("blk_queues", &expected_queues);
    if (!virtio_begin(disk, WANTED_ALL, true))
        return TEST_FAIL;
    diag("offered 0x%lx, negotiated 0x%lx", disk->device_features, disk->features);
    uint64_t must = VIRTIO_BIT(VIRTIO_F_VERSION_1) | VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) |
                    VIRTIO_BIT(VIRTIO_F_EVENT_IDX) | VIRTIO_BIT(VIRTIO_BLK_F_FLUSH) |
                    VIRTIO_BIT(VIRTIO_BLK_F_DISCARD) | VIRTIO_BIT(VIRTIO_BLK_F_WRITE_ZEROES);
    bool ok = (disk->features & must) == must;
    if (!ok)
        diag("missing features 0x%lx", must & ~disk->features);
    unsigned nq = 1;
    if (virtio_has(disk, VIRTIO_BLK_F_MQ))
        nq = virtio_config_read16(disk, VIRTIO_BLK_CFG_NUM_QUEUES);
    diag("%u queue(s), expected %lu", nq, expected_queues);
    if (nq != expected_queues || nq > VIRTIO_MAX_QUEUES)
        ok = false;
    queues_up = nq < VIRTIO_MAX_QUEUES ? nq : VIRTIO_MAX_QUEUES;
    for (unsigned q = 0; ok && q < queues_up; q++)
        ok = virtio_queue_setup(disk, q, 0, true);
    if (ok) {
        virtio_driver_ok(disk);
        ok = !(virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET);
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result check_capacity(void)
{
    if (!disk || !queues_up)
        return skip("drive not set up");
    capacity = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY);
    uint64_t want = 0;
    diag("capacity %lu sectors; blk_size %u; seg_max %u", capacity,
         virtio_config_read32(disk, VIRTIO_BLK_CFG_BLK_SIZE),
         virtio_config_read32(disk, VIRTIO_BLK_CFG_SEG_MAX));
    if (!cmdline_get_u64("blk_sectors", &want))
        return skip("no blk_sectors= on the command line");
    disk_bytes = capacity * SECTOR_SIZE;
    if (capacity != want || disk_bytes < (MATRIX_SECTOR + 1024) * SECTOR_SIZE ||
        disk_bytes > 64 * MIB || disk_bytes % CHUNK)
        return TEST_FAIL;
    expected = phys_alloc(disk_bytes, 4096);
    readback = phys_alloc(disk_bytes, 4096);
    return TEST_PASS;
}

static bool check_id(struct virtio_device *d, const char *key)
{
    char want[VIRTIO_BLK_ID_BYTES + 1];
    if (!cmdline_get(key, want, sizeof(want))) {
        diag("no %s= on the command line", key);
        return false;
    }
    static char id[VIRTIO_BLK_ID_BYTES + 1];
    memset(id, 0, sizeof(id));
    int status = vblk_sync(&d->queues[0], VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES, 0);
    diag("%s: GET_ID status %d: \"%s\", expected \"%s\"", d->name, status, id, want);
    return status == VIRTIO_BLK_S_OK && !strncmp(id, want, VIRTIO_BLK_ID_BYTES);
}

static enum test_result get_id(void)
{
    if (!disk || !queues_up)
        return skip("drive not set up");
    return check_id(disk, "blk_id") ? TEST_PASS : TEST_FAIL;
}

static enum test_result write_pattern(void)
{
    if (!expected)
        return skip("capacity unknown");
    uint64_t start = time_us();
    fill_pattern(expected, 0, disk_bytes);
    uint64_t filled = time_us();
    struct virtq *q = &disk->queues[0];
    bool ok = stream(q, VIRTIO_BLK_T_OUT, 0, expected, disk_bytes, CHUNK, SEG, DEPTH);
    uint64_t end = time_us();
    diag("%lu KiB: pattern made in %lu us (CPL3), written in %lu us; %lu kicks, %lu interrupts",
         disk_bytes >> 10, filled - start, end - filled, q->kicks, q->irq_count);
    pattern_written = ok;
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result read_pattern(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    struct virtq *q = &disk->queues[0];
    uint64_t start = time_us();
    bool ok = stream(q, VIRTIO_BLK_T_IN, 0, readback, disk_bytes, CHUNK, 4096, DEPTH);
    diag("read back in %lu us", time_us() - start);
    return ok && same(readback, expected, disk_bytes, "read back") ? TEST_PASS : TEST_FAIL;
}

static enum test_result flush(void)
{
    if (!disk || !queues_up)
        return skip("drive not set up");
    int status = vblk_sync(&disk->queues[0], VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
    return status == VIRTIO_BLK_S_OK ? TEST_PASS : TEST_FAIL;
}

static enum test_result beyond_capacity(void)
{
    if (!capacity)
        return skip("capacity unknown");
    struct virtq *q = &disk->queues[0];
    int at_end = vblk_sync(q, VIRTIO_BLK_T_IN, capacity, readback, SECTOR_SIZE, 0);
    int straddle = vblk_sync(q, VIRTIO_BLK_T_IN, capacity - 1, readback, 2 * SECTOR_SIZE, 0);
    int far = vblk_sync(q, VIRTIO_BLK_T_IN, 1ull << 62, readback, SECTOR_SIZE, 0);
    int write_end = vblk_sync(q, VIRTIO_BLK_T_OUT, capacity, expected, SECTOR_SIZE, 0);
    diag("status: read at capacity %d, across the end %d, at 2^62 %d, write at capacity %d", at_end,
         straddle, far, write_end);
    return at_end == VIRTIO_BLK_S_IOERR && straddle == VIRTIO_BLK_S_IOERR &&
                   far == VIRTIO_BLK_S_IOERR && write_end == VIRTIO_BLK_S_IOERR
               ? TEST_PASS
               : TEST_FAIL;
}

static enum test_result odd_requests(void)
{
    if (!capacity)
        return skip("capacity unknown");
    struct virtq *q = &disk->queues[0];
    int unknown = vblk_sync(q, 0x99, 0, readback, SECTOR_SIZE, 0);
    int partial = vblk_sync(q, VIRTIO_BLK_T_IN, 0, readback, 100, 0);
    /* Discard takes no flags: UNMAP is write-zeroes' only. */
    static struct vblk_req req;
    req = (struct vblk_req){.type = VIRTIO_BLK_T_DISCARD,
                            .seg_sector = DISCARD_SECTOR,
                            .seg_sectors = 8,
                            .seg_flags = VIRTIO_BLK_WRITE_ZEROES_UNMAP,
                            .status = 0xff};
    struct vbuf b[3] = {{(uint64_t)&req, 16, false},
                        {(uint64_t)&req.seg_sector, 16, false},
                        {(uint64_t)&req.status, 1, true}};
    int64_t len = virtq_transfer(q, b, 3, WAIT_US);
    diag("status: unknown type %d, 100-byte read %d, discard with the unmap flag %d (len %ld)",
         unknown, partial, req.status, len);
    return unknown == VIRTIO_BLK_S_UNSUPP && partial == VIRTIO_BLK_S_IOERR &&
                   req.status == VIRTIO_BLK_S_UNSUPP
               ? TEST_PASS
               : TEST_FAIL;
}

static enum test_result write_zeroes(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (!virtio_has(disk, VIRTIO_BLK_F_WRITE_ZEROES))
        return skip("WRITE_ZEROES not negotiated");
    struct virtq *q = &disk->queues[0];
    diag("max_write_zeroes_sectors %u",
         virtio_config_read32(disk, VIRTIO_BLK_CFG_MAX_WRITE_ZEROES));
    /* The first half plainly, the second half with UNMAP (the device may deallocate it). */
    int status = vblk_sync(q, VIRTIO_BLK_T_WRITE_ZEROES, ZERO_SECTOR, NULL, RANGE_BYTES / 2, 0);
    static struct vblk_req req;
    req.seg_flags = VIRTIO_BLK_WRITE_ZEROES_UNMAP;
    vblk_submit(q, &req, VIRTIO_BLK_T_WRITE_ZEROES, ZERO_SECTOR + RANGE_BYTES / 2 / SECTOR_SIZE,
                NULL, RANGE_BYTES / 2, 0);
    virtq_kick(q);
    bool unmap_done = virtq_wait(q, WAIT_US) && virtq_get(q, NULL) == &req;
    int unmap_status = unmap_done ? req.status : -1;
    uint8_t *got = readback + ZERO_SECTOR * SECTOR_SIZE;
    uint8_t *want = expected + ZERO_SECTOR * SECTOR_SIZE;
    struct range_args r = {.a = want, .len = RANGE_BYTES};
    run_user(user_zero, (uint64_t)&r);
    int read = vblk_sync(q, VIRTIO_BLK_T_IN, ZERO_SECTOR, got, RANGE_BYTES, SEG);
    diag("write-zeroes status %d, with UNMAP %d, read status %d", status, unmap_status, read);
    return status == VIRTIO_BLK_S_OK && unmap_status == VIRTIO_BLK_S_OK &&
                   read == VIRTIO_BLK_S_OK && same(got, want, RANGE_BYTES, "zeroed range")
               ? TEST_PASS
               : TEST_FAIL;
}

static enum test_result discard(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (!virtio_has(disk, VIRTIO_BLK_F_DISCARD))
        return skip("DISCARD not negotiated");
    struct virtq *q = &disk->queues[0];
    diag("max_discard_sectors %u", virtio_config_read32(disk, VIRTIO_BLK_CFG_MAX_DISCARD));
    int status = vblk_sync(q, VIRTIO_BLK_T_DISCARD, DISCARD_SECTOR, NULL, RANGE_BYTES, 0);
    /* Discarded data reads back as anything: put the pattern back for the final check. */
    uint8_t *data = expected + DISCARD_SECTOR * SECTOR_SIZE;
    int rewrite = vblk_sync(q, VIRTIO_BLK_T_OUT, DISCARD_SECTOR, data, RANGE_BYTES, SEG);
    diag("discard status %d, rewrite status %d", status, rewrite);
    return status == VIRTIO_BLK_S_OK && rewrite == VIRTIO_BLK_S_OK ? TEST_PASS : TEST_FAIL;
}

static enum test_result multiqueue(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (queues_up < 2)
        return skip("one queue only");
    static struct vblk_req reqs[2][4];
    uint64_t irqs_before[2];
    for (unsigned q = 0; q < 2; q++) {
        irqs_before[q] = disk->queues[q].irq_count;
        for (unsigned i = 0; i < 4; i++) {
            uint64_t sector = (q * 4 + i) * (CHUNK / SECTOR_SIZE);
            if (vblk_submit(&disk->queues[q], &reqs[q][i], VIRTIO_BLK_T_IN, sector,
                            readback + sector * SECTOR_SIZE, CHUNK, SEG) < 0)
                return TEST_FAIL;
        }
    }
    virtq_kick(&disk->queues[0]);
    virtq_kick(&disk->queues[1]);
    bool ok = true;
    for (unsigned q = 0; q < 2; q++) {
        unsigned got = 0;
        while (got < 4) {
            if (!virtq_has_used(&disk->queues[q]) && !virtq_wait(&disk->queues[q], WAIT_US)) {
                diag("queue %u: %u of 4 completions", q, got);
                return TEST_FAIL;
            }
            struct vblk_req *r;
            while ((r = virtq_get(&disk->queues[q], NULL))) {
                if (r < reqs[q] || r >= reqs[q] + 4 || r->status != VIRTIO_BLK_S_OK) {
                    diag("queue %u: a foreign completion or a bad status", q);
                    ok = false;
                }
                got++;
            }
        }
        /* Completions may have been reaped before their interrupt got in. */
        if (!virtq_wait_irq(&disk->queues[q], irqs_before[q], WAIT_US))
            ok = false;
        diag("queue %u: 4 completions, %lu interrupts", q,
             disk->queues[q].irq_count - irqs_before[q]);
    }
    return ok && same(readback, expected, 8 * CHUNK, "multiqueue reads") ? TEST_PASS : TEST_FAIL;
}

/* Unusual but legal layouts: a header split in two, data and status in one buffer, a write of
 * one sector at an odd sector. */
static enum test_result layouts(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (!bring_up(disk, WANTED_ALL, true, true, 1))
        return TEST_FAIL;
    struct virtq *q = &disk->queues[0];
    static struct vblk_req req;
    uint64_t sector = MATRIX_SECTOR + 1024 + 1; /* odd */
    uint8_t *src = expected + sector * SECTOR_SIZE;
    /* Write: 8 + 8 bytes of header, data, status. */
    req = (struct vblk_req){.type = VIRTIO_BLK_T_OUT, .sector = sector, .status = 0xff};
    struct vbuf w[4] = {{(uint64_t)&req, 8, false},
                        {(uint64_t)&req + 8, 8, false},
                        {(uint64_t)src, SECTOR_SIZE, false},
                        {(uint64_t)&req.status, 1, true}};
    int64_t wlen = virtq_transfer(q, w, 4, WAIT_US);
    uint8_t wstatus = req.status;
    /* Read: header, then one buffer for data and status together. */
    static uint8_t in[SECTOR_SIZE + 1];
    memset(in, 0xee, sizeof(in));
    req = (struct vblk_req){.type = VIRTIO_BLK_T_IN, .sector = sector};
    struct vbuf r[2] = {{(uint64_t)&req, 16, false}, {(uint64_t)in, sizeof(in), true}};
    int64_t rlen = virtq_transfer(q, r, 2, WAIT_US);
    diag("write: used length %ld, status %u; read: used length %ld, status %u", wlen, wstatus, rlen,
         in[SECTOR_SIZE]);
    return wstatus == VIRTIO_BLK_S_OK && in[SECTOR_SIZE] == VIRTIO_BLK_S_OK &&
                   rlen == SECTOR_SIZE + 1 && same(in, src, SECTOR_SIZE, "odd sector")
               ? TEST_PASS
               : TEST_FAIL;
}

/* One read on queue 0 (4 KiB at sector 0), completion found by polling. */
static bool poll_one_read(struct virtq *q)
{
    static struct vblk_req req;
    if (vblk_submit(q, &req, VIRTIO_BLK_T_IN, 0, readback, 4096, 0) < 0)
        return false;
    virtq_kick(q);
    uint64_t start = time_us();
    while (!virtq_has_used(q)) {
        if (time_us() - start > WAIT_US)
            return false;
        cpu_relax();
    }
    return virtq_get(q, NULL) == &req && req.status == VIRTIO_BLK_S_OK;
}

static enum test_result msix_masking(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("MSI-X is virtio-pci's");
    if (!bring_up(disk, WANTED_ALL, true, true, 1))
        return TEST_FAIL;
    struct virtq *q = &disk->queues[0];
    bool ok = true;
    for (int function = 0; function < 2; function++) {
        virtio_irq_window(20000);
        uint64_t before = q->irq_count;
        if (function)
            virtio_msix_function_mask(disk, true);
        else
            virtio_msix_mask(disk, q->vector, true);
        bool done = poll_one_read(q);
        virtio_irq_window(20000);
        bool quiet = q->irq_count == before;
        bool pending = virtio_msix_pending(disk, q->vector);
        if (function)
            virtio_msix_function_mask(disk, false);
        else
            virtio_msix_mask(disk, q->vector, false);
        bool delivered = virtq_wait_irq(q, before, WAIT_US);
        bool cleared = !virtio_msix_pending(disk, q->vector);
        diag("%s mask: request %s, %s while masked, PBA bit %s; on unmask the interrupt %s, PBA "
             "bit %s",
             function ? "function" : "vector", done ? "done" : "lost",
             quiet ? "no interrupt" : "an interrupt", pending ? "set" : "clear",
             delivered ? "arrived" : "did not arrive", cleared ? "cleared" : "still set");
        ok = ok && done && quiet && pending && delivered && cleared;
    }
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result cfg_window(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("the configuration window is virtio-pci's");
    if (!disk->cfg_cap)
        return TEST_FAIL;
    unsigned bar = disk->struct_bar[1];
    uint32_t base = (uint32_t)(disk->common - disk->bar_addr[bar]);
    uint32_t status = virtio_pci_cfg_window_read(disk, bar, base + 0x14, 1);
    uint32_t queues = virtio_pci_cfg_window_read(disk, bar, base + 0x12, 2);
    uint32_t features = virtio_pci_cfg_window_read(disk, bar, base + 0x04, 4);
    uint8_t direct_status = virtio_get_status(disk);
    uint16_t direct_queues = *(volatile uint16_t *)(disk->common + 0x12);
    diag("through the window: status 0x%x, num_queues %u, features 0x%x; in the BAR: status "
         "0x%x, num_queues %u",
         status, queues, features, direct_status, direct_queues);
    return status == direct_status && queues == direct_queues && features ? TEST_PASS : TEST_FAIL;
}

static enum test_result move_bar(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("BARs are virtio-pci's");
    unsigned bar = disk->struct_bar[2]; /* the one with the notify structure */
    uint64_t old = disk->bar_addr[bar];
    uint64_t to = 0xc8000000ull + ((uint64_t)disk->index << 20);
    if (!bring_up(disk, WANTED_ALL, true, true, 1) || !virtio_pci_move_bar(disk, bar, to))
        return TEST_FAIL;
    /* Requests kick through the moved notify address. */
    struct virtq *q = &disk->queues[0];
    bool ok = stream(q, VIRTIO_BLK_T_IN, 0, readback, 16 * CHUNK, CHUNK, SEG, 4) &&
              same(readback, expected, 16 * CHUNK, "reads after the move");
    diag("BAR %u moved from 0x%lx to 0x%lx: %lu kicks", bar, old, to, q->kicks);
    /* A fresh set-up at the new place, then back. */
    ok = ok && bring_up(disk, WANTED_ALL, true, true, 1) &&
         vblk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0) == VIRTIO_BLK_S_OK;
    ok = virtio_pci_move_bar(disk, bar, old) && ok;
    return ok ? TEST_PASS : TEST_FAIL;
}

/* The IOAPIC pins INTA# of the disk may reach: the MP table's, or without a table entry (QEMU's
 * qboot writes none) all the PCI pins 16-23; the interrupt line register names an 8259 input. */
static void intx_pins(unsigned *first, unsigned *last)
{
    platform_discover();
    bool listed = platform.pci_inta_listed[disk->slot];
    *first = listed ? platform.pci_inta[disk->slot].gsi : 16;
    *last = listed ? *first : 23;
    diag("INTA# of slot %u: IOAPIC pin %u-%u (%s; interrupt line %u)", disk->slot, *first, *last,
         listed ? "MP table" : "no MP table entry", virtio_pci_interrupt_line(disk));
}

/* The disk in INTx mode, queue 0 up; false if that cannot be done. */
static bool intx_up(unsigned first, unsigned last)
{
    virtio_irq_window(20000); /* MSI-X interrupts of earlier tests land first */
    disk->intx_irqs = 0;
    if (!virtio_begin(disk, WANTED_ALL, false))
        return false;
    for (unsigned pin = first; pin <= last; pin++) {
        if (!virtio_pci_use_intx(disk, true, pin))
            return false;
    }
    if (!virtio_queue_setup(disk, 0, 0, true))
        return false;
    virtio_driver_ok(disk);
    return true;
}

static void intx_down(unsigned first, unsigned last)
{
    virtio_reset(disk);
    for (unsigned pin = first; pin <= last; pin++)
        virtio_pci_use_intx(disk, false, pin);
}

static enum test_result intx(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("INTx is virtio-pci's");
    unsigned first, last;
    intx_pins(&first, &last);
    if (!intx_up(first, last))
        return TEST_FAIL;
    struct virtq *q = &disk->queues[0];
    bool ok = stream(q, VIRTIO_BLK_T_IN, 0, readback, 8 * CHUNK, CHUNK, SEG, 4);
    for (uint64_t start = time_us(); !disk->intx_irqs && time_us() - start < WAIT_US;)
        virtio_irq_window(1000);
    diag("%lu INTx interrupts, ISR 0x%x at the last", disk->intx_irqs, disk->last_isr);
    intx_down(first, last);
    return ok && disk->intx_irqs ? TEST_PASS : TEST_FAIL;
}

/* PCI: setting Interrupt Disable deasserts an asserted INTx#; clearing it asserts it again
 * while the device still has an interrupt pending (its ISR is not read meanwhile). */
static enum test_result intx_disable(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("INTx is virtio-pci's");
    unsigned first, last;
    intx_pins(&first, &last);
    if (!intx_up(first, last))
        return TEST_FAIL;
    for (unsigned pin = first; pin <= last; pin++)
        ioapic_mask(pin);
    bool done = poll_one_read(&disk->queues[0]); /* the device raises INTx, nobody listens */
    virtio_pci_intx_disable(disk, true);
    for (unsigned pin = first; pin <= last; pin++)
        ioapic_route(pin, VIRTIO_VECTOR_INTX, lapic_id(), true, true);
    virtio_irq_window(20000);
    uint64_t while_disabled = disk->intx_irqs;
    virtio_pci_intx_disable(disk, false);
    for (uint64_t start = time_us(); !disk->intx_irqs && time_us() - start < WAIT_US;)
        virtio_irq_window(1000);
    diag("request %s; %lu interrupts with Interrupt Disable set, %lu after clearing it",
         done ? "done" : "lost", while_disabled, disk->intx_irqs - while_disabled);
    bool ok = done && while_disabled == 0 && disk->intx_irqs > 0;
    intx_down(first, last);
    return ok ? TEST_PASS : TEST_FAIL;
}

/* A PCI function must not master the bus while Bus Master Enable is clear: a request queued
 * then must leave memory alone (no data, no status, no used entry). Afterwards the device is
 * set up again (QEMU takes DRIVER_OK away meanwhile). */
static enum test_result bus_master_off(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (disk->transport != VIRTIO_PCI)
        return skip("bus mastering is PCI's");
    if (!bring_up(disk, WANTED_ALL, true, false, 1))
        return TEST_FAIL;
    struct virtq *q = &disk->queues[0];
    static struct vblk_req req;
    memset(readback, 0xaa, 4096);
    virtio_pci_bus_master(disk, false);
    vblk_submit(q, &req, VIRTIO_BLK_T_IN, 0, readback, 4096, 0);
    virtq_notify(q);
    udelay(100000);
    bool untouched =
        readback[0] == 0xaa && readback[4095] == 0xaa && req.status == 0xff && !virtq_has_used(q);
    diag("with bus mastering off: data %s, status 0x%02x, used index %u; device status 0x%02x",
         readback[0] == 0xaa ? "untouched" : "written", req.status, q->used->idx,
         virtio_get_status(disk));
    virtio_pci_bus_master(disk, true);
    bool works = bring_up(disk, WANTED_ALL, true, true, 1) &&
                 vblk_sync(q, VIRTIO_BLK_T_IN, 0, readback, 4096, 0) == VIRTIO_BLK_S_OK &&
                 same(readback, expected, 4096, "read after bus mastering is back");
    return untouched && works ? TEST_PASS : TEST_FAIL;
}

/* Writes and reads a scratch range with one feature set and mode. */
static enum test_result matrix(bool indirect, bool event_idx, bool interrupts)
{
    if (!pattern_written)
        return skip("pattern not written");
    uint64_t wanted = VIRTIO_BIT(VIRTIO_BLK_F_FLUSH);
    if (indirect)
        wanted |= VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC);
    if (event_idx)
        wanted |= VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
    /* Interrupts the last test left pending land now, not in this test's counts. */
    virtio_irq_window(20000);
    if (!bring_up(disk, wanted, true, interrupts, 1))
        return TEST_FAIL;
    bool ok = virtio_has(disk, VIRTIO_F_INDIRECT_DESC) == indirect &&
              virtio_has(disk, VIRTIO_F_EVENT_IDX) == event_idx;
    struct virtq *q = &disk->queues[0];
    uint64_t off = MATRIX_SECTOR * SECTOR_SIZE + (indirect * 2 + event_idx) * RANGE_BYTES;
    uint8_t *data = expected + off;
    /* Four 16 KiB requests at a time in 2 KiB buffers (10 descriptors each). */
    ok = ok && stream(q, VIRTIO_BLK_T_OUT, off / SECTOR_SIZE, data, RANGE_BYTES, 16384, 2048, 4);
    ok = ok &&
         stream(q, VIRTIO_BLK_T_IN, off / SECTOR_SIZE, readback + off, RANGE_BYTES, 16384, 1024, 4);
    ok = ok && same(readback + off, data, RANGE_BYTES, "scratch range");
    /* Let interrupts still pending arrive: at least one must, or none at all. */
    if (interrupts)
        ok = virtq_wait_irq(q, 0, WAIT_US) && ok;
    else
        virtio_irq_window(20000);
    diag("%s: %lu kicks, %lu interrupts for 8 requests", interrupts ? "interrupts" : "polling",
         q->kicks, q->irq_count);
    /* Devices (QEMU's and ember's alike) send the first interrupt after a reset whatever
     * used_event says: the spec only says when they must, not when they must not. */
    if (!interrupts && q->irq_count > (event_idx ? 1u : 0u))
        ok = false;
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result matrix_on_on_irq(void)
{
    return matrix(true, true, true);
}
static enum test_result matrix_on_on_poll(void)
{
    return matrix(true, true, false);
}
static enum test_result matrix_on_off_irq(void)
{
    return matrix(true, false, true);
}
static enum test_result matrix_on_off_poll(void)
{
    return matrix(true, false, false);
}
static enum test_result matrix_off_on_irq(void)
{
    return matrix(false, true, true);
}
static enum test_result matrix_off_on_poll(void)
{
    return matrix(false, true, false);
}
static enum test_result matrix_off_off_irq(void)
{
    return matrix(false, false, true);
}
static enum test_result matrix_off_off_poll(void)
{
    return matrix(false, false, false);
}

static enum test_result read_only(void)
{
    if (!ro_disk)
        return skip("no read-only drive");
    if (!bring_up(ro_disk, WANTED_ALL, true, true, 1))
        return TEST_FAIL;
    bool ok = virtio_has(ro_disk, VIRTIO_BLK_F_RO);
    uint64_t sectors = virtio_config_read64(ro_disk, VIRTIO_BLK_CFG_CAPACITY);
    uint64_t bytes = sectors * SECTOR_SIZE, want_sum = 0;
    if (!bytes || bytes > 16 * MIB || bytes % CHUNK || !cmdline_get_u64("ro_cksum", &want_sum)) {
        diag("read-only drive: %lu sectors; ro_cksum= given: %s", sectors,
             cmdline_get_u64("ro_cksum", &want_sum) ? "yes" : "no");
        return TEST_FAIL;
    }
    struct virtq *q = &ro_disk->queues[0];
    uint8_t *buf = phys_alloc(bytes, 4096);
    ok = stream(q, VIRTIO_BLK_T_IN, 0, buf, bytes, CHUNK, SEG, 8) && ok;
    uint32_t sum = cksum_of(buf, bytes);
    diag("read-only drive: %lu bytes, cksum %u, expected %lu", bytes, sum, want_sum);
    ok = ok && sum == want_sum && check_id(ro_disk, "ro_id");
    return ok ? TEST_PASS : TEST_FAIL;
}

static enum test_result read_only_write(void)
{
    if (!ro_disk || !ro_disk->queues[0].size)
        return skip("read-only drive not set up");
    struct virtq *q = &ro_disk->queues[0];
    int write = vblk_sync(q, VIRTIO_BLK_T_OUT, 0, expected, 4096, 0);
    int zeroes = virtio_has(ro_disk, VIRTIO_BLK_F_WRITE_ZEROES)
                     ? vblk_sync(q, VIRTIO_BLK_T_WRITE_ZEROES, 0, NULL, 4096, 0)
                     : VIRTIO_BLK_S_IOERR;
    diag("write status %d, write-zeroes status %d", write, zeroes);
    return write == VIRTIO_BLK_S_IOERR && zeroes != VIRTIO_BLK_S_OK ? TEST_PASS : TEST_FAIL;
}

static enum test_result final_contents(void)
{
    if (!pattern_written)
        return skip("pattern not written");
    if (!bring_up(disk, WANTED_ALL, true, true, 1))
        return TEST_FAIL;
    struct virtq *q = &disk->queues[0];
    bool ok = stream(q, VIRTIO_BLK_T_IN, 0, readback, disk_bytes, CHUNK, SEG, DEPTH) &&
              vblk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0) == VIRTIO_BLK_S_OK;
    uint32_t sum = cksum_of(readback, disk_bytes);
    printf("# blk-checksum: %u %lu\n", sum, disk_bytes);
    return ok && same(readback, expected, disk_bytes, "final contents") ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"two virtio-blk drives found, one read-only", find_drives},
    {"features negotiated (VERSION_1, INDIRECT_DESC, EVENT_IDX, FLUSH, DISCARD, WRITE_ZEROES)",
     negotiate},
    {"capacity matches the image", check_capacity},
    {"GET_ID returns the drive id", get_id},
    {"pattern written across the whole disk", write_pattern},
    {"pattern reads back intact", read_pattern},
    {"flush completes", flush},
    {"requests beyond the capacity fail with IOERR", beyond_capacity},
    {"unknown type UNSUPP, partial sector IOERR, discard flags UNSUPP", odd_requests},
    {"write-zeroes: the range reads back as zeroes", write_zeroes},
    {"discard completes", discard},
    {"multiqueue: requests complete on both queues, each with its interrupt", multiqueue},
    {"split header, data and status in one buffer, an odd sector", layouts},
    {"MSI-X: masked interrupts wait in the PBA, arrive on unmask", msix_masking},
    {"common configuration readable through the PCI configuration window", cfg_window},
    {"BAR moved by the driver: registers and notifications follow", move_bar},
    {"INTx when MSI-X is off", intx},
    {"INTx: Interrupt Disable deasserts the line, clearing it asserts it again", intx_disable},
    {"bus mastering off: a queued request leaves memory alone", bus_master_off},
    {"indirect + event idx, interrupts", matrix_on_on_irq},
    {"indirect + event idx, polling (interrupts suppressed)", matrix_on_on_poll},
    {"indirect only, interrupts", matrix_on_off_irq},
    {"indirect only, polling (interrupts suppressed)", matrix_on_off_poll},
    {"event idx only, interrupts", matrix_off_on_irq},
    {"event idx only, polling (interrupts suppressed)", matrix_off_on_poll},
    {"neither, interrupts", matrix_off_off_irq},
    {"neither, polling (interrupts suppressed)", matrix_off_off_poll},
    {"read-only drive: VIRTIO_BLK_F_RO, reads match, GET_ID", read_only},
    {"read-only drive: writes fail with IOERR", read_only_write},
    {"whole disk reads back as expected after all writes", final_contents},
};

void guest_main(void)
{
    tsc_calibrate();
    user_mode_init();
    tap_run(tests, ARRAY_SIZE(tests));
}
