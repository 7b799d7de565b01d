/*
 * virtio-net packet rates with a poll-mode driver whose hot loop runs at CPL3, where guest code
 * runs natively on these hosts: the figures then measure the VMM, not the CPL0 emulator. The
 * device never interrupts (polled queues, used_event kept behind), and the driver kicks only
 * when the device asks (event index). Receive buffers are 2 KiB and mergeable.
 *
 * Workloads, each for perf_ms= milliseconds (default 2000), timed with the TSC (calibrated
 * against the PIT at CPL0 first):
 *   tx-64, tx-1500  frames of 64 and 1500 bytes (the frame the device is handed, without the
 *                   virtio-net header), ethertype 0x88b5 to net_host_mac=, the transmit queue
 *                   kept full;
 *   rx-64, rx-1500  whatever arrives (bench/netgen injects frames of that size into the tap),
 *                   counted and handed straight back; frames of another size count as other.
 * For each it prints
 *   net-perf: begin NAME settle_ms=S run_ms=R
 * then spins S ms at CPL3, runs R ms, spins S ms more (quiet periods in which bench/net.sh reads
 * KVM's exit counters and the tap's statistics; perf_settle_ms=, default 300), and prints
 *   net-perf: result NAME frames=N bytes=B us=T pps=P mbps=M.MM kicks=K other=O
 * perf_only=NAME runs one workload (or a comma-separated list).
 */
#include "guest.h"
#include "inet.h"
#include "io.h"
#include "vnet.h"

#define ETH_P_LOCAL 0x88b5

static uint64_t settle_ms = 300;

struct workload {
    const char *name;
    bool tx, rx;
    uint32_t size;
};

static const struct workload workloads[] = {
    {"tx-64", true, false, 64},     {"tx-1500", true, false, 1500}, {"rx-64", false, true, 64},
    {"rx-1500", false, true, 1500}, {"bidi-64", true, true, 64},
};

/* Everything the CPL3 loop touches. */
struct run {
    struct vnet *n;
    const struct workload *w;
    uint8_t *frame;
    uint64_t settle_cycles, run_cycles;
    uint64_t frames, other, cycles, kicks;
    uint64_t rx_frames; /* bidi: received while sending */
};

static struct run run;
static struct vnet net;

static void spin(uint64_t cycles)
{
    uint64_t end = rdtsc() + cycles;
    while (rdtsc() < end)
        cpu_relax();
}

/* Takes whatever was received, hands the buffers back. */
static void take_received(struct run *r, uint64_t *count)
{
    int32_t len;
    while ((len = vnet_recv(r->n, NULL, 0, NULL)) != -1) {
        if (len >= 0 && (uint32_t)len == r->w->size)
            (*count)++;
        else
            r->other++;
    }
}

/* Keeps the transmit queue full until the time is up, then waits for the last frames; bidi
 * also takes what arrives meanwhile. */
static void transmit(struct run *r)
{
    struct vnet *n = r->n;
    uint64_t kicks = n->txq->kicks, base = n->tx_completed;
    uint64_t start = rdtsc(), deadline = start + r->run_cycles, now = start;
    while (now < deadline) {
        while (vnet_queue_tx(n, NULL, r->frame, r->w->size) == 0)
            ;
        virtq_kick(n->txq);
        vnet_tx_reclaim(n);
        if (r->w->rx)
            take_received(r, &r->rx_frames);
        now = rdtsc();
    }
    while (n->txq->num_free != n->txq->size)
        vnet_tx_reclaim(n);
    r->cycles = rdtsc() - start;
    r->frames = n->tx_completed - base;
    r->kicks = n->txq->kicks - kicks;
}

static void receive(struct run *r)
{
    struct vnet *n = r->n;
    uint64_t kicks = n->rxq->kicks;
    uint64_t start = rdtsc(), deadline = start + r->run_cycles, now = start;
    while (now < deadline) {
        int32_t len = vnet_recv(n, NULL, 0, NULL);
        if (len >= 0) {
            r->frames += (uint32_t)len == r->w->size;
            r->other += (uint32_t)len != r->w->size;
        } else if (len == -2) {
            r->other++;
        }
        now = rdtsc();
    }
    r->cycles = now - start;
    r->kicks = n->rxq->kicks - kicks;
}

static uint64_t user_run(uint64_t arg)
{
    struct run *r = (struct run *)arg;
    spin(r->settle_cycles);
    if (r->w->tx)
        transmit(r);
    else
        receive(r);
    spin(r->settle_cycles);
    return 0;
}

static bool run_workload(const struct workload *w, uint64_t run_ms)
{
    uint64_t ms_cycles = tsc_hz / 1000;
    run.n = &net;
    run.w = w;
    run.settle_cycles = settle_ms * ms_cycles;
    run.run_cycles = run_ms * ms_cycles;
    run.frames = run.other = run.cycles = run.kicks = run.rx_frames = 0;
    printf("net-perf: begin %s settle_ms=%lu run_ms=%lu\n", w->name, settle_ms, run_ms);
    run_user(user_run, (uint64_t)&run);
    uint64_t us = run.cycles * 1000000 / tsc_hz;
    uint64_t bytes = run.frames * w->size;
    uint64_t pps = us ? run.frames * 1000000 / us : 0;
    uint64_t centi_mbps = us ? bytes * 8 * 100 / us : 0; /* bits/us = Mbit/s */
    printf("net-perf: result %s frames=%lu bytes=%lu us=%lu pps=%lu mbps=%lu.%02lu kicks=%lu "
           "other=%lu",
           w->name, run.frames, bytes, us, pps, centi_mbps / 100, centi_mbps % 100, run.kicks,
           run.other);
    if (w->tx && w->rx)
        printf(" rx_frames=%lu rx_pps=%lu", run.rx_frames, us ? run.rx_frames * 1000000 / us : 0);
    printf("\n");
    return run.frames > 0;
}

/* Whether perf_only= names this workload; without perf_only=, every one runs. */
static bool selected(const char *name)
{
    char only[64];
    return !cmdline_get("perf_only", only, sizeof(only)) || !only[0] ||
           cmdline_list_has("perf_only", name);
}

void guest_main(void)
{
    tsc_calibrate();
    user_mode_init();
    printf("1..1\n");
    struct virtio_device *d = virtio_find(VIRTIO_ID_NET, 0);
    if (!d)
        bail_out("no virtio-net device");
    struct vnet_options o = {
        .features = VIRTIO_BIT(VIRTIO_NET_F_MAC) | VIRTIO_BIT(VIRTIO_NET_F_MRG_RXBUF) |
                    VIRTIO_BIT(VIRTIO_F_EVENT_IDX),
        .rx_buf_size = 2048,
    };
    if (!vnet_open(&net, d, &o))
        bail_out("cannot set up %s", d->name);
    virtq_suppress_interrupts(net.rxq);
    uint8_t host_mac[6] = {0x02, 0, 0, 0, 0, 1};
    char text[32];
    if (cmdline_get("net_host_mac", text, sizeof(text)) && !parse_mac(text, host_mac))
        bail_out("net_host_mac=%s is not a MAC address", text);
    run.frame = phys_alloc(2048, 4096);
    memcpy(run.frame, host_mac, 6);
    memcpy(run.frame + 6, net.mac, 6);
    put16(run.frame + 12, ETH_P_LOCAL);
    for (unsigned i = ETH_HLEN; i < 2048; i++)
        run.frame[i] = (uint8_t)i;
    uint64_t run_ms = 2000;
    cmdline_get_u64("perf_ms", &run_ms);
    cmdline_get_u64("perf_settle_ms", &settle_ms);
    char mac[18];
    format_mac(mac, net.mac);
    printf("net-perf: device %s transport=%s mac=%s features=0x%lx queue_size=%u tsc_khz=%lu\n",
           d->name, d->transport == VIRTIO_PCI ? "pci" : "mmio", mac, d->features, net.rxq->size,
           tsc_hz / 1000);
    bool ok = true;
    for (size_t i = 0; i < ARRAY_SIZE(workloads); i++) {
        if (selected(workloads[i].name))
            ok = run_workload(&workloads[i], run_ms) && ok;
    }
    virtio_reset(d);
    printf("%sok 1 - every workload moved frames\n", ok ? "" : "not ");
    debug_exit(ok ? 0 : 1);
}
