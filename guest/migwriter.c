/*
 * The guest of the live migration tests: it writes its virtio-blk disk without a pause and
 * keeps a memory pattern, so that a migration that loses a write, a page or its place shows,
 * in the guest or later in the disk image.
 *
 * The BSP writes 512-byte blocks in sequence: write number S (from 0) goes to block
 * S % blocks, wrapping over the disk (or its first blocks= blocks). A block holds
 *   word 0 magic "MIGWRITE", 1 S, 2 the block's index, 3 S / blocks (the pass over the disk),
 *   4..62 pattern_word(S, i), 63 the FNV-1a-64 hash of words 0..62 taken word by word.
 * One request at a time, polled; after every flush_every= writes (default 16) a FLUSH, then
 *   migwriter: flushed N dirtied D
 * meaning writes 0..N-1 are on the disk (D: pages the dirtier wrote so far, 0 without one).
 * With each write the BSP also rewrites one of pattern_pages= pages (default 256) in turn and
 * verifies all of them every 64 writes (eight words per page): a page that came back stale
 * or from elsewhere prints
 *   migwriter: MISMATCH page P word W expected 0xX got 0xY
 * and the guest ends with debug-exit 1. A failed request ends it the same way.
 *
 * With several vCPUs and dirty_rate=R (pages per second), the first AP writes one word into
 * each page of a dirty_mib= region (default 16 MiB) in turn at that rate, so that a
 * migration finds pages dirtied in every pre-copy pass.
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define BLOCK_SIZE    512
#define BLOCK_WORDS   (BLOCK_SIZE / 8)
#define PAGE_SIZE     4096
#define PAGE_WORDS    (PAGE_SIZE / 8)
#define MAGIC         0x4554495257474947ull /* "MIGWRITE" little-endian */
#define VERIFY_EVERY  64
#define SPOTS         8 /* words checked per pattern page, spread over it */
#define FNV64_OFFSET  0xcbf29ce484222325ull
#define FNV64_PRIME   0x100000001b3ull
#define PATTERN_STEP  0x9e3779b97f4a7c15ull
#define MAX_PAGES     65536
#define MAX_DIRTY_MIB 1024

static uint64_t block[BLOCK_WORDS] __attribute__((aligned(BLOCK_SIZE)));
static volatile uint64_t *pattern;
static uint64_t pattern_pages = 256;

/* The dirtier: set up by the BSP, run by the first AP. */
static volatile uint64_t *dirty_region;
static uint64_t dirty_pages_total, dirty_rate;
static volatile int dirty_go;
static volatile uint64_t dirtied;
static volatile int ap_claimed;

static uint64_t pattern_word(uint64_t seq, uint64_t i)
{
    return (seq + 1) * PATTERN_STEP ^ (i << 48 | i);
}

static uint64_t block_hash(const uint64_t *w)
{
    uint64_t h = FNV64_OFFSET;
    for (unsigned i = 0; i < BLOCK_WORDS - 1; i++)
        h = (h ^ w[i]) * FNV64_PRIME;
    return h;
}

/* Memory write number m goes to page m % pattern_pages. */
static uint64_t memory_word(uint64_t m, uint64_t page, unsigned spot)
{
    return (m + 1) * PATTERN_STEP ^ page << 32 ^ spot;
}

static void write_pattern(uint64_t m)
{
    uint64_t page = m % pattern_pages;
    volatile uint64_t *p = pattern + page * PAGE_WORDS;
    for (unsigned s = 0; s < SPOTS; s++)
        p[s * (PAGE_WORDS / SPOTS)] = memory_word(m, page, s);
}

/* Every page holds what the last memory write to it (before next_m) left. */
static void verify_pattern(uint64_t next_m)
{
    for (uint64_t page = 0; page < pattern_pages; page++) {
        uint64_t m = page + (next_m - 1 - page) / pattern_pages * pattern_pages;
        volatile uint64_t *p = pattern + page * PAGE_WORDS;
        for (unsigned s = 0; s < SPOTS; s++) {
            uint64_t want = memory_word(m, page, s), got = p[s * (PAGE_WORDS / SPOTS)];
            if (got != want) {
                printf("migwriter: MISMATCH page %lu word %u expected 0x%lx got 0x%lx\n", page,
                       s * (PAGE_WORDS / SPOTS), want, got);
                debug_exit(1);
            }
        }
    }
}

static void dirtier(void)
{
    /* One dirtier; any other AP halts. */
    if (__atomic_exchange_n(&ap_claimed, 1, __ATOMIC_ACQ_REL))
        halt_forever();
    while (!__atomic_load_n(&dirty_go, __ATOMIC_ACQUIRE))
        cpu_relax();
    uint64_t start = time_us(), done = 0;
    for (;;) {
        uint64_t now = time_us();
        /* A clock that went back (it must not, across a migration) stalls the dirtier, which
         * the tests see. */
        uint64_t due = now > start ? (now - start) * dirty_rate / 1000000 : done;
        /* A long stop (a loaded host, a migration's downtime) is made up for by one pass
         * over the region at most. */
        if (due > done + dirty_pages_total)
            done = due - dirty_pages_total;
        if (done >= due) {
            cpu_relax();
            continue;
        }
        for (; done < due; done++) {
            dirty_region[done % dirty_pages_total * PAGE_WORDS] = done;
            dirtied = done + 1;
        }
    }
}

static void start_dirtier(void)
{
    uint64_t mib = 16;
    cmdline_get_u64("dirty_mib", &mib);
    if (!cmdline_get_u64("dirty_rate", &dirty_rate) || dirty_rate == 0)
        return;
    if (mib == 0 || mib > MAX_DIRTY_MIB || mib * MIB > phys_free_bytes())
        bail_out("dirty_mib=%lu: not that much free RAM", mib);
    dirty_pages_total = mib * MIB / PAGE_SIZE;
    dirty_region = phys_alloc(mib * MIB, PAGE_SIZE);
    platform_discover();
    smp_ap_continue = dirtier;
    struct smp_result smp;
    if (platform.cpu_count < 2)
        bail_out("dirty_rate= needs a second vCPU (the machine has %u)", platform.cpu_count);
    if (!smp_start_cpus(&smp))
        bail_out("the APs did not start");
    __atomic_store_n(&dirty_go, 1, __ATOMIC_RELEASE);
    printf("migwriter: dirtier cpus=%u rate=%lu pages=%lu\n", smp.started, dirty_rate,
           dirty_pages_total);
}

static void fail_request(const char *what, uint64_t seq, int status)
{
    printf("migwriter: FAIL %s for write %lu: status %d\n", what, seq, status);
    debug_exit(1);
}

void guest_main(void)
{
    if (!tsc_calibrate())
        bail_out("cannot calibrate the TSC");
    struct virtio_device *disk = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!disk)
        bail_out("no virtio-blk device");
    if (!virtio_begin(disk, VIRTIO_BIT(VIRTIO_BLK_F_FLUSH), false) ||
        !virtio_queue_setup(disk, 0, 0, false))
        bail_out("cannot set up %s", disk->name);
    virtio_driver_ok(disk);
    bool can_flush = virtio_has(disk, VIRTIO_BLK_F_FLUSH);
    struct virtq *q = &disk->queues[0];
    uint64_t blocks = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY), limit = 0;
    if (cmdline_get_u64("blocks", &limit) && limit && limit < blocks)
        blocks = limit;
    uint64_t flush_every = 16;
    cmdline_get_u64("flush_every", &flush_every);
    cmdline_get_u64("pattern_pages", &pattern_pages);
    if (blocks == 0 || flush_every == 0 || pattern_pages == 0 || pattern_pages > MAX_PAGES)
        bail_out("blocks=%lu flush_every=%lu pattern_pages=%lu: all must be above 0", blocks,
                 flush_every, pattern_pages);
    pattern = phys_alloc(pattern_pages * PAGE_SIZE, PAGE_SIZE);
    uint64_t m = 0;
    for (; m < pattern_pages; m++)
        write_pattern(m);
    start_dirtier();
    printf("migwriter: start blocks=%lu flush_every=%lu pattern_pages=%lu flush=%s\n", blocks,
           flush_every, pattern_pages, can_flush ? "yes" : "no");
    for (uint64_t seq = 0;; seq++) {
        uint64_t b = seq % blocks;
        block[0] = MAGIC;
        block[1] = seq;
        block[2] = b;
        block[3] = seq / blocks;
        for (unsigned i = 4; i < BLOCK_WORDS - 1; i++)
            block[i] = pattern_word(seq, i);
        block[BLOCK_WORDS - 1] = block_hash(block);
        int st = vblk_sync(q, VIRTIO_BLK_T_OUT, b, block, BLOCK_SIZE, 0);
        if (st != VIRTIO_BLK_S_OK)
            fail_request("write", seq, st);
        write_pattern(m++);
        if (m % VERIFY_EVERY == 0)
            verify_pattern(m);
        if ((seq + 1) % flush_every == 0) {
            if (can_flush && (st = vblk_sync(q, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0)) != 0)
                fail_request("flush", seq, st);
            printf("migwriter: flushed %lu dirtied %lu\n", seq + 1, dirtied);
        }
    }
}
