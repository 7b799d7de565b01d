/*
 * Bounds arithmetic at the edges of every window a driver reaches, on a virtio-blk disk (with
 * virtio-rng beside it, which must never notice): offsets and lengths whose sum overflows 32
 * bits, the last entry of a table and the one after it, the end of a configuration space and
 * beyond it, rings at the end of RAM (the last byte inside, and a few bytes past it) and near
 * 2^64. Reads outside what exists must return 0 or all-ones, writes there must change
 * nothing, and the device must keep working; after each test the disk is reset, set up again
 * and read.
 *
 * bounds_skip=NAME,... skips tests by name (the harness lists there where QEMU, the reference,
 * does something else that the specification allows, and says what).
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define WAIT_US        1000000
#define RING_SIZE      16
#define DESC_BYTES     (16 * RING_SIZE)
#define AVAIL_BYTES    (6 + 2 * RING_SIZE)
#define USED_BYTES     (6 + 8 * RING_SIZE)
#define MMIO_QUEUE_SEL 0x030
#define MMIO_QUEUE_MAX 0x034
#define MMIO_QUEUE_NUM 0x038
#define MMIO_DESC_LOW  0x080
#define MMIO_CONFIG    0x100
#define MMIO_WINDOW    0x1000
#define PCI_Q_SELECT   0x16
#define PCI_Q_SIZE     0x18
#define PCI_Q_DESC     0x20
#define PCI_NUM_QUEUES 0x12

static struct virtio_device *disk, *rng;
static uint8_t *buf;
static uint8_t first_sector[512];
static uint64_t ram_end; /* end of the RAM region holding the image */

/* ---- PCI configuration access ---------------------------------------------------------------- */

static void pci_select(uint8_t slot, uint8_t fn, uint32_t offset)
{
    outl(0xcf8, 0x80000000u | (uint32_t)slot << 11 | (uint32_t)fn << 8 | (offset & 0xfc));
}

static uint32_t cfg_read32(uint8_t slot, uint32_t offset)
{
    pci_select(slot, 0, offset);
    return inl(0xcfc);
}

static void cfg_write32(uint8_t slot, uint32_t offset, uint32_t v)
{
    pci_select(slot, 0, offset);
    outl(0xcfc, v);
}

static uint16_t cfg_read16(uint8_t slot, uint32_t offset)
{
    pci_select(slot, 0, offset);
    return inw((uint16_t)(0xcfc + (offset & 2)));
}

static uint8_t cfg_read8(uint8_t slot, uint32_t offset)
{
    pci_select(slot, 0, offset);
    return inb((uint16_t)(0xcfc + (offset & 3)));
}

static void cfg_write8(uint8_t slot, uint32_t offset, uint8_t v)
{
    pci_select(slot, 0, offset);
    outb((uint16_t)(0xcfc + (offset & 3)), v);
}

/* The vendor capability of a type (4.1.4): its offset in configuration space, or 0. */
static uint8_t find_cap(uint8_t slot, uint8_t cfg_type)
{
    uint8_t ptr = cfg_read8(slot, 0x34) & 0xfc;
    for (int guard = 0; ptr && guard < 48; guard++) {
        if (cfg_read8(slot, ptr) == 0x09 && cfg_read8(slot, ptr + 3u) == cfg_type)
            return ptr;
        ptr = cfg_read8(slot, ptr + 1u) & 0xfc;
    }
    return 0;
}

static bool zero_or_ones(uint64_t v, unsigned len)
{
    uint64_t ones = len >= 8 ? ~0ull : (1ull << (8 * len)) - 1;
    return v == 0 || v == ones;
}

/* ---- the disk -------------------------------------------------------------------------------- */

static bool disk_up(void)
{
    return virtio_begin(disk, 0, false) && virtio_queue_setup(disk, 0, RING_SIZE, false) &&
           (virtio_driver_ok(disk), !(virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET));
}

static bool disk_reads(void)
{
    int status = vblk_sync(&disk->queues[0], VIRTIO_BLK_T_IN, 0, buf, 512, 0);
    return status == VIRTIO_BLK_S_OK && !memcmp(buf, first_sector, 512);
}

static bool rng_works(void)
{
    struct vbuf b = {(uint64_t)buf + 1024, 32, true};
    return virtq_transfer(&rng->queues[0], &b, 1, WAIT_US) > 0;
}

/* After a test: the disk, reset and set up again, reads its first sector as before; the rng,
 * never touched, still works. */
static bool recovers(void)
{
    bool ok = virtio_reset(disk) && disk_up() && disk_reads();
    if (!ok)
        diag("the disk does not work after a reset");
    if (!rng_works()) {
        diag("the rng stopped working");
        ok = false;
    }
    return ok;
}

static bool skipped(const char *name)
{
    return cmdline_list_has("bounds_skip", name);
}

#define SKIP_REASON "in bounds_skip=: this VMM does otherwise (the harness says what)"

/* ---- VIRTIO_PCI_CAP_PCI_CFG window (4.1.4.9) ------------------------------------------------- */

struct window_case {
    uint8_t bar;
    uint32_t offset, length;
};

/* Points the window at a read-only register (num_queues), so that a later write to its data
 * (or to configuration space that holds it) changes nothing. */
static void park_window(uint8_t cap)
{
    uint8_t bar = disk->struct_bar[1];
    cfg_write8(disk->slot, cap + 4u, bar);
    cfg_write32(disk->slot, cap + 8u,
                (uint32_t)(disk->common - disk->bar_addr[bar]) + PCI_NUM_QUEUES);
    cfg_write32(disk->slot, cap + 12u, 2);
}

static bool window_cases(uint8_t cap, const struct window_case *cases, unsigned count)
{
    bool ok = true;
    for (unsigned i = 0; i < count; i++) {
        const struct window_case *c = &cases[i];
        cfg_write8(disk->slot, cap + 4u, c->bar);
        cfg_write32(disk->slot, cap + 8u, c->offset);
        cfg_write32(disk->slot, cap + 12u, c->length);
        cfg_write32(disk->slot, cap + 16u, 0); /* a write through the window, then a read */
        uint32_t v = cfg_read32(disk->slot, cap + 16u);
        unsigned len = c->length == 1 || c->length == 2 ? c->length : 4;
        if (!zero_or_ones(len == 4 ? v : v & ((1u << (8 * len)) - 1), len)) {
            diag("window bar %u offset 0x%x length 0x%x read 0x%x", c->bar, c->offset, c->length,
                 v);
            ok = false;
        }
    }
    park_window(cap);
    return ok;
}

/* After window accesses: the device's status is as before, and the window works. */
static bool window_after(uint8_t status_before)
{
    uint8_t bar = disk->struct_bar[1];
    uint8_t after = virtio_get_status(disk);
    uint32_t through = virtio_pci_cfg_window_read(
        disk, bar, (uint32_t)(disk->common - disk->bar_addr[bar]) + PCI_NUM_QUEUES, 2);
    uint16_t direct = mmio_read16(disk->common + PCI_NUM_QUEUES);
    diag("status 0x%02x before, 0x%02x after; num_queues %u through the window, %u direct",
         status_before, after, through, direct);
    park_window(find_cap(disk->slot, 5));
    return status_before == after && through == direct;
}

static enum test_result cfg_window_wrap(void)
{
    if (disk->transport != VIRTIO_PCI)
        return skip("virtio-pci only");
    uint8_t cap = find_cap(disk->slot, 5);
    if (!cap)
        return TEST_FAIL;
    uint8_t bar = disk->struct_bar[1]; /* the common configuration's */
    const struct window_case cases[] = {
        {bar, 0xfffffffc, 4},
        {bar, 0xfffffffe, 2},
        {bar, 0xffffffff, 1},
        {bar, 0x80000000, 4},
        {bar, 0x00000001, 0xffffffff},
        {bar, 0x00000004, 0xfffffffc},
        {bar, 0, 0},
        {bar, 0, 3},
        {bar, 0, 8},
        {bar, 0xfffffff0, 0x20},
    };
    uint8_t status = virtio_get_status(disk);
    bool ok = window_cases(cap, cases, ARRAY_SIZE(cases));
    ok = window_after(status) && ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* cap.bar naming a BAR that does not exist (6) or nothing (0xff), at the offset of the
 * device status in the common configuration: nothing may be written there. */
static enum test_result cfg_window_bad_bar(void)
{
    if (disk->transport != VIRTIO_PCI)
        return skip("virtio-pci only");
    if (skipped("window-bar"))
        return skip(SKIP_REASON);
    uint8_t cap = find_cap(disk->slot, 5);
    if (!cap)
        return TEST_FAIL;
    uint32_t status_off = (uint32_t)(disk->common - disk->bar_addr[disk->struct_bar[1]]) + 0x14;
    const struct window_case cases[] = {{6, status_off, 1}, {0xff, status_off, 1}};
    uint8_t status = virtio_get_status(disk);
    bool ok = window_cases(cap, cases, ARRAY_SIZE(cases));
    ok = window_after(status) && ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* ---- PCI configuration space ----------------------------------------------------------------- */

static enum test_result pci_config_edges(void)
{
    if (disk->transport != VIRTIO_PCI)
        return skip("virtio-pci only");
    uint8_t slot = disk->slot;
    bool ok = true;
    park_window(find_cap(slot, 5)); /* the end of the space may hold the window's data */
    /* The last dword, word and byte of the 256-byte space: whatever they hold, a write of
     * all-ones to them must not make a difference to the device. */
    uint32_t last = cfg_read32(slot, 0xfc);
    uint16_t last16 = cfg_read16(slot, 0xfe);
    uint8_t last8 = cfg_read8(slot, 0xff);
    ok &= last16 == (uint16_t)(last >> 16) && last8 == (uint8_t)(last >> 24);
    cfg_write32(slot, 0xfc, 0xffffffff);
    uint32_t after = cfg_read32(slot, 0xfc);
    diag("config 0xfc reads 0x%08x, 0x%08x after writing all-ones", last, after);
    cfg_write32(slot, 0xfc, last);
    /* Port accesses that run past the data port (0xcfc-0xcff). */
    pci_select(slot, 0, 0);
    uint32_t straddle = inl(0xcfd);
    uint16_t straddle16 = inw(0xcff);
    diag("inl(0xcfd) 0x%08x, inw(0xcff) 0x%04x", straddle, straddle16);
    pci_select(slot, 0, 0x04);
    outl(0xcfd, 0);
    outw(0xcff, 0);
    /* Functions and buses that do not exist, and the enable bit clear: all-ones. */
    pci_select(slot, 1, 0);
    uint32_t fn1 = inl(0xcfc);
    outl(0xcf8, 0x80000000u | 1u << 16 | (uint32_t)slot << 11);
    uint32_t bus1 = inl(0xcfc);
    outl(0xcf8, (uint32_t)slot << 11);
    uint32_t disabled = inl(0xcfc);
    diag("function 1: 0x%08x; bus 1: 0x%08x; enable bit clear: 0x%08x", fn1, bus1, disabled);
    ok &= fn1 == 0xffffffff && bus1 == 0xffffffff && disabled == 0xffffffff;
    /* The function is intact: its id, command register (memory and bus master on). */
    uint32_t id = cfg_read32(slot, 0);
    uint16_t command = cfg_read16(slot, 0x04);
    ok &= (id & 0xffff) == 0x1af4 && (command & 0x6) == 0x6;
    ok = ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* ---- MSI-X table and PBA --------------------------------------------------------------------- */

static enum test_result msix_edges(void)
{
    if (disk->transport != VIRTIO_PCI)
        return skip("virtio-pci only");
    if (!disk->msix_table || !disk->msix_entries)
        return TEST_FAIL;
    unsigned n = disk->msix_entries;
    uint64_t last = disk->msix_table + 16 * (uint64_t)(n - 1), beyond = last + 16;
    bool ok = true;
    /* The last entry is the driver's: it keeps what is written. */
    mmio_write32(last + 0, 0xfee00000u);
    mmio_write32(last + 4, 0);
    mmio_write32(last + 8, 0x4321);
    mmio_write32(last + 12, 1);
    uint32_t data = mmio_read32(last + 8), ctrl = mmio_read32(last + 12);
    ok &= data == 0x4321 && (ctrl & 1);
    /* The one after it is nothing: reads 0 or all-ones, keeps nothing, changes nothing. */
    uint32_t before[4], wrote[4];
    for (unsigned w = 0; w < 4; w++)
        before[w] = mmio_read32(beyond + 4 * w);
    for (unsigned w = 0; w < 4; w++)
        mmio_write32(beyond + 4 * w, 0x5a5a0000u + w);
    for (unsigned w = 0; w < 4; w++) {
        wrote[w] = mmio_read32(beyond + 4 * w);
        ok &= zero_or_ones(before[w], 4) && wrote[w] == before[w];
    }
    ok &= mmio_read32(last + 8) == 0x4321;
    /* PBA: nothing pending, read-only; the word after the last bit is 0 or all-ones. */
    uint32_t pba = mmio_read32(disk->msix_pba);
    mmio_write32(disk->msix_pba, 0xffffffff);
    uint32_t pba_after = mmio_read32(disk->msix_pba);
    uint32_t pba_beyond = mmio_read32(disk->msix_pba + 8);
    diag("%u entries; beyond the last: 0x%x 0x%x 0x%x 0x%x, after writes 0x%x 0x%x 0x%x 0x%x; "
         "PBA 0x%x, 0x%x after writing all-ones, next qword 0x%x",
         n, before[0], before[1], before[2], before[3], wrote[0], wrote[1], wrote[2], wrote[3], pba,
         pba_after, pba_beyond);
    ok &= pba == 0 && pba_after == 0 && zero_or_ones(pba_beyond, 4);
    mmio_write32(last + 8, 0);
    ok = ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* ---- device configuration space -------------------------------------------------------------- */

static uint64_t config_base(void)
{
    return disk->transport == VIRTIO_MMIO ? disk->mmio_base + MMIO_CONFIG : disk->device_cfg;
}

static enum test_result device_config_edges(void)
{
    uint64_t base = config_base();
    /* Where the configuration ends: the device capability's length on virtio-pci (or 0x100,
     * beyond virtio-blk's in any VMM, when the capability spans a whole window); 0x100 on
     * virtio-mmio, whose size nothing tells. */
    uint32_t size = 0x100, window = MMIO_WINDOW - MMIO_CONFIG;
    if (disk->transport == VIRTIO_PCI) {
        uint8_t cap = find_cap(disk->slot, 4);
        uint32_t length = cap ? cfg_read32(disk->slot, cap + 12u) : 0;
        window = 0x1000;
        if (length && length < 0x100 && length % 4 == 0)
            size = length;
        else if (length < 0x1000)
            return skip("the configuration space's size is not known");
    }
    uint64_t capacity = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY);
    bool ok = true;
    uint32_t at_end = mmio_read32(base + size), last = mmio_read32(base + window - 4);
    uint8_t byte = mmio_read8(base + window - 1);
    mmio_write32(base + size, 0xdeadbeef);
    mmio_write32(base + window - 4, 0xdeadbeef);
    uint32_t at_end2 = mmio_read32(base + size), last2 = mmio_read32(base + window - 4);
    /* A read-only field keeps its value. */
    mmio_write32(base + VIRTIO_BLK_CFG_CAPACITY, 1);
    uint64_t capacity2 = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY);
    diag("size %u: at the end 0x%x (0x%x after a write), at the window's end 0x%x (0x%x), "
         "last byte 0x%x; capacity %lu, %lu after a write",
         size, at_end, at_end2, last, last2, byte, capacity, capacity2);
    ok &= zero_or_ones(at_end, 4) && at_end2 == at_end && zero_or_ones(last, 4) && last2 == last &&
          zero_or_ones(byte, 1) && capacity2 == capacity;
    ok = ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* virtio-mmio: the registers between the last defined one and the configuration space, and
 * accesses narrower than 32 bits. */
static enum test_result mmio_register_edges(void)
{
    if (disk->transport != VIRTIO_MMIO)
        return skip("virtio-mmio only");
    uint64_t base = disk->mmio_base;
    bool ok = true;
    for (uint32_t off = 0x0c4; off < 0x0fc; off += 4) {
        mmio_write32(base + off, 0xffffffff);
        uint32_t v = mmio_read32(base + off);
        if (!zero_or_ones(v, 4)) {
            diag("register 0x%03x reads 0x%x", off, v);
            ok = false;
        }
    }
    uint8_t narrow = mmio_read8(base + 0x070);
    mmio_write8(base + 0x070, 0); /* a narrow status write: not a reset */
    uint8_t status = virtio_get_status(disk);
    diag("a byte read of the status register: 0x%x; status after a byte write of 0: 0x%02x", narrow,
         status);
    ok &=
        zero_or_ones(narrow, 1) && status == (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                              VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    ok = ok && disk_reads();
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* ---- queue registers ------------------------------------------------------------------------- */

/* Selecting a queue that does not exist: it has no size, and writes to it go nowhere. */
static enum test_result queue_select_beyond(void)
{
    if (skipped("select-beyond"))
        return skip(SKIP_REASON);
    bool ok = true;
    if (!virtio_begin(disk, 0, false))
        return TEST_FAIL;
    uint32_t max, desc_after;
    if (disk->transport == VIRTIO_MMIO) {
        uint64_t base = disk->mmio_base;
        mmio_write32(base + MMIO_QUEUE_SEL, 0);
        mmio_write32(base + MMIO_DESC_LOW, 0x1000);
        mmio_write32(base + MMIO_QUEUE_SEL, 0xffffffff);
        max = mmio_read32(base + MMIO_QUEUE_MAX);
        mmio_write32(base + MMIO_QUEUE_NUM, 8);
        mmio_write32(base + MMIO_DESC_LOW, 0x2000);
        mmio_write32(base + MMIO_QUEUE_SEL, 0);
        desc_after = 0x1000; /* write-only on virtio-mmio: judged by the device working */
    } else {
        uint64_t c = disk->common;
        mmio_write16(c + PCI_Q_SELECT, 0);
        mmio_write32(c + PCI_Q_DESC, 0x1000);
        mmio_write16(c + PCI_Q_SELECT, 0xffff);
        max = mmio_read16(c + PCI_Q_SIZE);
        mmio_write16(c + PCI_Q_SIZE, 8);
        mmio_write32(c + PCI_Q_DESC, 0x2000);
        mmio_write16(c + PCI_Q_SELECT, 0);
        desc_after = mmio_read32(c + PCI_Q_DESC);
    }
    diag("queue 0xffff...: size %u; queue 0's descriptor address 0x%x afterwards", max, desc_after);
    ok &= max == 0 && desc_after == 0x1000;
    return recovers() && ok ? TEST_PASS : TEST_FAIL;
}

/* ---- rings at the edges of RAM and of the address space -------------------------------------- */

/* Sets the disk up with queue 0 at the given places, goes live and kicks it; whether the
 * device asked for a reset within a second. */
static bool rings_at(uint64_t desc, uint64_t avail, uint64_t used, uint8_t *status)
{
    if (!virtio_begin(disk, 0, false) ||
        !virtio_queue_setup_raw(disk, 0, RING_SIZE, desc, avail, used))
        return false;
    virtio_driver_ok(disk);
    virtq_notify(&disk->queues[0]);
    for (uint64_t start = time_us(); time_us() - start < WAIT_US;) {
        *status = virtio_get_status(disk);
        if (*status & VIRTIO_STATUS_NEEDS_RESET)
            return true;
        udelay(1000);
    }
    return false;
}

static enum test_result bad_rings(const char *name, uint64_t desc, uint64_t avail, uint64_t used)
{
    if (skipped(name))
        return skip(SKIP_REASON);
    uint8_t status = 0;
    bool flagged = rings_at(desc, avail, used, &status);
    diag("desc 0x%lx, avail 0x%lx, used 0x%lx (RAM ends at 0x%lx): status 0x%02x, NEEDS_RESET "
         "%s",
         desc, avail, used, ram_end, status, flagged ? "set" : "clear");
    return recovers() && flagged ? TEST_PASS : TEST_FAIL;
}

static enum test_result rings_near_2_64(void)
{
    return bad_rings("rings-2-64", 0xfffffffffffff000ull, 0xfffffffffffffff0ull,
                     0xffffffffffffe000ull);
}

static enum test_result avail_past_ram(void)
{
    uint64_t top = ram_end - 0x3000;
    return bad_rings("avail-past-ram", top, ram_end - AVAIL_BYTES + 2, top + 0x1000);
}

static enum test_result desc_past_ram(void)
{
    uint64_t top = ram_end - 0x3000;
    return bad_rings("desc-past-ram", ram_end - DESC_BYTES / 2, top, top + 0x1000);
}

static enum test_result used_past_ram(void)
{
    uint64_t top = ram_end - 0x3000;
    return bad_rings("used-past-ram", top, top + 0x1000, ram_end - 64);
}

/* The avail ring's last byte is RAM's last byte: a valid queue, which must work. */
static enum test_result rings_end_at_ram_end(void)
{
    uint64_t desc = ram_end - 0x2000, used = ram_end - 0x1000, avail = ram_end - AVAIL_BYTES;
    if (!virtio_begin(disk, 0, false))
        return TEST_FAIL;
    memset((void *)desc, 0, DESC_BYTES);
    memset((void *)used, 0, USED_BYTES);
    memset((void *)avail, 0, AVAIL_BYTES);
    if (!virtio_queue_setup_raw(disk, 0, RING_SIZE, desc, avail, used))
        return TEST_FAIL;
    /* The library's queue state (its per-head arrays stay where the first set-up put them),
     * over these rings. */
    struct virtq *q = &disk->queues[0];
    q->desc = (struct virtq_desc *)desc;
    q->avail = (struct virtq_avail *)avail;
    q->used = (struct virtq_used *)used;
    q->size = RING_SIZE;
    for (uint16_t i = 0; i < RING_SIZE; i++)
        q->desc[i].next = (uint16_t)(i + 1);
    q->free_head = 0;
    q->num_free = RING_SIZE;
    q->avail_idx = q->kicked_idx = q->last_used = 0;
    q->event_idx = q->use_indirect = false;
    virtio_driver_ok(disk);
    bool live = !(virtio_get_status(disk) & VIRTIO_STATUS_NEEDS_RESET);
    bool works = live && disk_reads();
    diag("rings at 0x%lx, 0x%lx, 0x%lx, the avail ring ending at RAM's end 0x%lx: %s", desc, avail,
         used, ram_end,
         works  ? "works"
         : live ? "the read failed"
                : "NEEDS_RESET");
    return recovers() && works ? TEST_PASS : TEST_FAIL;
}

static enum test_result queue_size_zero(void)
{
    if (skipped("size-zero"))
        return skip(SKIP_REASON);
    uint64_t top = ram_end - 0x3000;
    if (!virtio_begin(disk, 0, false))
        return TEST_FAIL;
    bool set = virtio_queue_setup_raw(disk, 0, 0, top, top + 0x1000, top + 0x2000);
    virtio_driver_ok(disk);
    virtq_notify(&disk->queues[0]);
    uint8_t status = 0;
    for (uint64_t start = time_us(); time_us() - start < WAIT_US;) {
        status = virtio_get_status(disk);
        if (status & VIRTIO_STATUS_NEEDS_RESET)
            break;
        udelay(1000);
    }
    diag("queue size 0: status 0x%02x", status);
    bool flagged = set && (status & VIRTIO_STATUS_NEEDS_RESET);
    return recovers() && flagged ? TEST_PASS : TEST_FAIL;
}

/* ---- the test list --------------------------------------------------------------------------- */

static enum test_result find_devices(void)
{
    disk = virtio_find(VIRTIO_ID_BLOCK, 0);
    rng = virtio_find(VIRTIO_ID_RNG, 0);
    buf = phys_alloc(4096, 4096);
    uint64_t image = (uint64_t)buf;
    for (size_t i = 0; i < boot_info.memory_count; i++) {
        const struct memory_region *r = &boot_info.memory[i];
        if (r->type == MEMORY_RAM && r->base <= image && image < r->base + r->size)
            ram_end = r->base + r->size;
    }
    if (!disk || !rng || !ram_end || ram_end > 4 * GIB)
        return TEST_FAIL;
    if (!disk_up() || !virtio_begin(rng, 0, false) || !virtio_queue_setup(rng, 0, 0, false))
        return TEST_FAIL;
    virtio_driver_ok(rng);
    int status = vblk_sync(&disk->queues[0], VIRTIO_BLK_T_IN, 0, buf, 512, 0);
    memcpy(first_sector, buf, 512);
    diag("RAM ends at 0x%lx", ram_end);
    return status == VIRTIO_BLK_S_OK && rng_works() ? TEST_PASS : TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"disk and rng found and working", find_devices},
    {"PCI_CFG window: offsets and lengths that wrap: 0 or all-ones, no effect", cfg_window_wrap},
    {"PCI_CFG window: a BAR that does not exist: 0 or all-ones, no effect", cfg_window_bad_bar},
    {"PCI configuration space: its end, straddling ports, absent functions and buses",
     pci_config_edges},
    {"MSI-X: the last entry keeps what is written, the one after keeps nothing; PBA read-only",
     msix_edges},
    {"device configuration: at and beyond its size 0 or all-ones, writes change nothing",
     device_config_edges},
    {"virtio-mmio: reserved registers and narrow accesses", mmio_register_edges},
    {"a queue selected beyond the last: no size, writes go nowhere", queue_select_beyond},
    {"rings near 2^64: NEEDS_RESET, then works", rings_near_2_64},
    {"avail ring 2 bytes past the end of RAM: NEEDS_RESET, then works", avail_past_ram},
    {"descriptor table across the end of RAM: NEEDS_RESET, then works", desc_past_ram},
    {"used ring across the end of RAM: NEEDS_RESET, then works", used_past_ram},
    {"rings that end exactly at the end of RAM: the disk works", rings_end_at_ram_end},
    {"queue size 0: NEEDS_RESET, then works", queue_size_zero},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
