/*
 * virtio-blk throughput with a poll-mode driver whose hot loop runs at CPL3, where guest code
 * runs natively on these hosts: the figures then measure the VMM, not the CPL0 emulator. The
 * device does not interrupt (used_event kept behind), the driver polls the used ring and kicks
 * only when the device asks for it (event index).
 * The exception, randread-4k-qd1-irq: the device interrupts for every request (the queue's
 * MSI-X vector, or the mmio line) and the driver halts until the interrupt came, then looks at
 * the used ring, as an interrupt-driven driver (Linux) with nothing else to run does: the
 * VMM's interrupt path is in every request's latency. It runs at CPL0 (hlt is privileged;
 * an interrupt that comes while the vCPU runs CPL3 code is delivered late, seconds at times,
 * on these hosts), where the CPL0 emulator adds its own cost to every request: compare VMMs
 * on it, not with the other workloads.
 *
 * Workloads, each for perf_ms= milliseconds (default 2000), timed with the TSC (calibrated
 * against the PIT at CPL0 first): 4 KiB random reads at queue depth 1 and 32, 128 KiB
 * sequential reads and writes at depth 16. For each it prints
 *   blk-perf: begin NAME settle_ms=S run_ms=R
 * then spins S ms at CPL3, runs R ms, spins S ms more (quiet periods in which bench/blk.sh
 * reads KVM's exit counters; perf_settle_ms=, default 300), and prints
 *   blk-perf: result NAME ios=N bytes=B us=T iops=I mbps=M.MM errors=E kicks=K lat_mean_ns=L
 *             lat_p99_ns=P
 * where the latencies are each request's, from its submission to the driver seeing it used
 * (TSC; p99 from a histogram with 16 buckets per power of two, so within 6.25% above).
 * perf_only=NAME[,NAME...] runs only the workloads named; perf_misalign=BYTES (below 4096) shifts
 * every data buffer off its page by that much, so that a VMM with O_DIRECT storage has to copy
 * (bounce) them.
 */
#include "guest.h"
#include "io.h"
#include "vblk.h"

#define MAX_DEPTH 32
static uint64_t settle_ms = 300;

struct workload {
    const char *name;
    uint32_t type;
    uint32_t block;
    unsigned depth;
    bool random;
    bool irq; /* completions taken only after their interrupt */
};

static const struct workload workloads[] = {
    {"randread-4k-qd1", VIRTIO_BLK_T_IN, 4096, 1, true, false},
    {"randread-4k-qd32", VIRTIO_BLK_T_IN, 4096, 32, true, false},
    {"seqread-128k-qd16", VIRTIO_BLK_T_IN, 128 * 1024, 16, false, false},
    {"seqwrite-128k-qd16", VIRTIO_BLK_T_OUT, 128 * 1024, 16, false, false},
    {"randread-4k-qd1-irq", VIRTIO_BLK_T_IN, 4096, 1, true, true},
};

/* An interrupt-driven run gives up when a completion's interrupt has not come in this long. */
#define IRQ_WAIT_MS 1000

/* Request latencies in TSC cycles: below 16 one bucket each, above 16 buckets per power of
 * two. */
#define LAT_BUCKETS (61 * 16)

static unsigned lat_bucket(uint64_t v)
{
    if (v < 16)
        return (unsigned)v;
    unsigned msb = 63 - (unsigned)__builtin_clzll(v);
    return (msb - 3) * 16 + (unsigned)((v >> (msb - 4)) & 15);
}

/* The largest value of bucket i. */
static uint64_t lat_bucket_top(unsigned i)
{
    if (i < 16)
        return i;
    unsigned msb = i / 16 + 3;
    return ((uint64_t)(16 + i % 16) << (msb - 4)) + (1ull << (msb - 4)) - 1;
}

/* Everything the CPL3 loop touches. */
struct run {
    struct virtq *q;
    const struct workload *w;
    uint64_t blocks; /* of w->block bytes on the disk */
    uint64_t settle_cycles, run_cycles;
    uint8_t *buffers; /* MAX_DEPTH of 128 KiB */
    struct vblk_req reqs[MAX_DEPTH];
    uint64_t submitted[MAX_DEPTH]; /* TSC at each slot's submission */
    uint64_t ios, errors, cycles, kicks;
    uint64_t lat_sum;
    uint32_t lat_hist[LAT_BUCKETS];
    uint64_t next_block, rng;
    uint64_t irq_wait_cycles;
    bool irq_lost; /* a used buffer whose interrupt never came */
};

static struct run run;
static struct virtio_device *disk;
static uint64_t capacity;

static void spin(uint64_t cycles)
{
    uint64_t end = rdtsc() + cycles;
    while (rdtsc() < end)
        cpu_relax();
}

static uint64_t next_sector(struct run *r)
{
    uint64_t block;
    if (r->w->random) {
        r->rng ^= r->rng << 13;
        r->rng ^= r->rng >> 7;
        r->rng ^= r->rng << 17;
        block = r->rng % r->blocks;
    } else {
        block = r->next_block++ % r->blocks;
    }
    return block * (r->w->block / SECTOR_SIZE);
}

static bool submit(struct run *r, unsigned slot)
{
    r->submitted[slot] = rdtsc();
    return vblk_submit(r->q, &r->reqs[slot], r->w->type, next_sector(r),
                       r->buffers + (size_t)slot * 128 * 1024, r->w->block, 0) >= 0;
}

/* The hot loop, at CPL3 (an interrupt-driven run: at CPL0): keep depth requests in flight
 * until the time is up, then drain. */
static uint64_t user_run(uint64_t arg)
{
    struct run *r = (struct run *)arg;
    spin(r->settle_cycles);
    uint64_t kicks = r->q->kicks;
    uint64_t start = rdtsc(), deadline = start + r->run_cycles, last = start;
    unsigned inflight = 0;
    for (unsigned slot = 0; slot < r->w->depth; slot++)
        inflight += submit(r, slot);
    virtq_kick(r->q);
    uint64_t seen = READ_ONCE(r->q->irq_count), waited = rdtsc();
    while (inflight) {
        bool added = false;
        struct vblk_req *req;
        if (r->w->irq) {
            /* Nothing is looked at before an interrupt says so: halted until one comes (sti
             * holds interrupts back until after the hlt, so none is missed). */
            irq_disable();
            uint64_t now = READ_ONCE(r->q->irq_count);
            if (now == seen) {
                if (rdtsc() - waited > r->irq_wait_cycles) {
                    r->irq_lost = true;
                    break;
                }
                __asm__ volatile("sti; hlt" ::: "memory");
                continue;
            }
            seen = now;
            waited = rdtsc();
        }
        while ((req = virtq_get(r->q, NULL))) {
            last = rdtsc();
            uint64_t lat = last - r->submitted[req - r->reqs];
            r->lat_sum += lat;
            r->lat_hist[lat_bucket(lat)]++;
            r->ios++;
            r->errors += req->status != VIRTIO_BLK_S_OK;
            inflight--;
            if (last < deadline) {
                inflight += submit(r, (unsigned)(req - r->reqs));
                added = true;
            }
        }
        if (added)
            virtq_kick(r->q);
        else
            cpu_relax();
    }
    r->cycles = last - start;
    r->kicks = r->q->kicks - kicks;
    spin(r->settle_cycles);
    return 0;
}

static bool run_workload(const struct workload *w, uint64_t run_ms)
{
    uint64_t ms_cycles = tsc_hz / 1000;
    run.q = &disk->queues[0];
    run.w = w;
    run.blocks = capacity * SECTOR_SIZE / w->block;
    run.settle_cycles = settle_ms * ms_cycles;
    run.run_cycles = run_ms * ms_cycles;
    run.ios = run.errors = run.cycles = run.kicks = run.lat_sum = 0;
    for (unsigned i = 0; i < LAT_BUCKETS; i++)
        run.lat_hist[i] = 0;
    run.next_block = 0;
    run.rng = 0x9e3779b97f4a7c15ull;
    run.irq_wait_cycles = IRQ_WAIT_MS * ms_cycles;
    run.irq_lost = false;
    /* Interrupts on at CPL3 for an interrupt-driven run; every used buffer asks for one. */
    virtq_enable_interrupts(run.q, w->irq);
    printf("blk-perf: begin %s settle_ms=%lu run_ms=%lu\n", w->name, settle_ms, run_ms);
    if (w->irq) {
        user_run((uint64_t)&run);
        irq_disable();
    } else {
        run_user(user_run, (uint64_t)&run);
    }
    virtq_enable_interrupts(run.q, false);
    if (run.irq_lost)
        printf("blk-perf: %s: a request completed and its interrupt did not come in %u ms\n",
               w->name, IRQ_WAIT_MS);
    uint64_t us = run.cycles * 1000000 / tsc_hz;
    uint64_t bytes = run.ios * w->block;
    uint64_t iops = us ? run.ios * 1000000 / us : 0;
    uint64_t centi_mbps = us ? bytes * 100 / us : 0; /* bytes/us = MB/s */
    uint64_t p99 = 0, below = 0;
    for (unsigned i = 0; i < LAT_BUCKETS && run.ios; i++) {
        below += run.lat_hist[i];
        if (below * 100 >= run.ios * 99) {
            p99 = lat_bucket_top(i);
            break;
        }
    }
    uint64_t khz = tsc_hz / 1000;
    uint64_t mean_ns = run.ios && khz ? run.lat_sum / run.ios * 1000000 / khz : 0;
    uint64_t p99_ns = khz ? p99 * 1000000 / khz : 0;
    printf("blk-perf: result %s ios=%lu bytes=%lu us=%lu iops=%lu mbps=%lu.%02lu errors=%lu "
           "kicks=%lu lat_mean_ns=%lu lat_p99_ns=%lu\n",
           w->name, run.ios, bytes, us, iops, centi_mbps / 100, centi_mbps % 100, run.errors,
           run.kicks, mean_ns, p99_ns);
    return run.errors == 0 && run.ios > 0 && !run.irq_lost;
}

void guest_main(void)
{
    tsc_calibrate();
    user_mode_init();
    printf("1..1\n");
    disk = virtio_find(VIRTIO_ID_BLOCK, 0);
    if (!disk)
        bail_out("no virtio-blk device");
    /* Polling, with event index to keep kicks rare; the queue has its interrupt for the
     * interrupt-driven run, suppressed in the others. */
    if (!virtio_begin(disk, VIRTIO_BIT(VIRTIO_F_EVENT_IDX), true) ||
        !virtio_queue_setup(disk, 0, 0, true))
        bail_out("cannot set up %s", disk->name);
    virtio_driver_ok(disk);
    capacity = virtio_config_read64(disk, VIRTIO_BLK_CFG_CAPACITY);
    uint64_t misalign = 0;
    cmdline_get_u64("perf_misalign", &misalign);
    if (misalign >= 4096)
        bail_out("perf_misalign=%lu: below 4096, please", misalign);
    run.buffers = (uint8_t *)phys_alloc((size_t)MAX_DEPTH * 128 * 1024 + 4096, 4096) + misalign;
    uint64_t run_ms = 2000;
    cmdline_get_u64("perf_ms", &run_ms);
    cmdline_get_u64("perf_settle_ms", &settle_ms);
    char only[2] = ""; /* only whether it is there and not empty: cmdline_list_has matches */
    bool all = !cmdline_get("perf_only", only, sizeof(only)) || !only[0];
    printf("blk-perf: device %s transport=%s features=0x%lx queue_size=%u capacity_mib=%lu "
           "tsc_khz=%lu misalign=%lu\n",
           disk->name, disk->transport == VIRTIO_PCI ? "pci" : "mmio", disk->features,
           disk->queues[0].size, capacity * SECTOR_SIZE / MIB, tsc_hz / 1000, misalign);
    if (capacity * SECTOR_SIZE < 16 * MIB)
        bail_out("the disk is too small (%lu sectors)", capacity);
    bool ok = true;
    for (size_t i = 0; i < ARRAY_SIZE(workloads); i++) {
        if (all || cmdline_list_has("perf_only", workloads[i].name))
            ok = run_workload(&workloads[i], run_ms) && ok;
    }
    virtio_reset(disk);
    printf("%sok 1 - every workload ran without errors\n", ok ? "" : "not ");
    debug_exit(ok ? 0 : 1);
}
