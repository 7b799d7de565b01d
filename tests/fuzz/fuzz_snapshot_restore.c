/* libFuzzer target: what a snapshot state file holds beyond its container (fuzz_snapshot_format
 * covers that), as a corrupt or hostile file reaches the code that restores from it, without
 * KVM. Each input is one section's fields, fed to its restore on a freshly made device:
 *
 *   [target] [options] fields...
 *
 *   target % 18: 0 serial, 1 i8042, 2 RTC, 3 boot timer (their *_restore); 4 the machine's
 *     configuration (vm_snapshot_read_config); 5 a whole state file, its CRC made right, read
 *     as a load reads it before KVM (header, configuration, CPUID: vm_snapshot_read_machine);
 *     6 + k: virtio device k % 6 (blk, net, console, rng, vsock, pmem) on virtio-mmio (k < 6)
 *     or virtio-pci, restored as restore_devices does (common state with the model's own,
 *     then the transport's, the section's end, then the device resumed).
 *   options: the device's configuration (read-only, rate limits, MTU...), which the
 *     section must match.
 *
 * Checked: a refusal says why; a refused legacy device is byte for byte as before (their
 * restores promise it); a restored legacy device or configuration saves what restores to the
 * same (save, restore into a new one, save again: equal); a restored virtio device answers
 * every register, its queue vectors are ones the guest could have set, it runs its restored
 * queues over (zeroed) guest memory without crashing or spinning, and a reset written by the
 * driver brings it back to status 0.
 *
 * EMBER_FUZZ_WRITE_SEEDS=DIR: writes seeds to DIR, each section saved by ember's own code from
 * a device the way a running machine leaves it, and exits (tests/fuzz/make_seeds.py). */
#include "arch/x86/layout.h"
#include "bus/bus.h"
#include "bus/pci.h"
#include "devices/boot_timer.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "snapshot/format.h"
#include "support/net_pair.h"
#include "support/virtio_harness.h"
#include "util/error.h"
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
#include "vmm/memory.h"
#include "vmm/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sanitizer/common_interface_defs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    T_SERIAL,
    T_I8042,
    T_RTC,
    T_BOOT_TIMER,
    T_CONFIG,
    T_MACHINE,
    T_VIRTIO,
    T_COUNT = T_VIRTIO + 12
};
#define MEM_SIZE    (2u << 20)
#define SPIN_ROUNDS 4096

static struct {
    char dir[64];
    char blk_path[128], pmem_path[128], vsock_path[128];
    struct guest_memory mem;
} g;

static struct virtio_harness h;

static void cleanup(void);
static bool trace; /* FUZZ_RESTORE_TRACE set: each input's outcome on stderr */

static void outcome(const char *what, int rc)
{
    if (trace)
        fprintf(stderr, "%s: %s\n", what, rc == 0 ? "restored" : error_get());
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_snapshot_restore: invariant broken: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (last error: %s)\n", error_get());
    va_end(ap);
    cleanup();
    abort();
}

/* A cursor over fields as a section holds them (the container is fuzz_snapshot_format's). */
static struct snapshot_cursor cursor(const uint8_t *data, size_t len)
{
    struct snapshot_cursor c = {.data = data, .len = len};
    snprintf(c.name, sizeof(c.name), "device.fuzz");
    return c;
}

/* A section's fields as a writer lays them out: *len bytes, malloc'd. */
typedef void (*save_fn)(void *dev, struct snapshot_writer *w);

static uint8_t *section_bytes(save_fn save, void *dev, size_t *len)
{
    struct snapshot_writer *w = snapshot_writer_new();
    if (!w)
        die("out of memory");
    snapshot_begin_section(w, "s");
    save(dev, w);
    uint8_t *file;
    size_t flen;
    if (snapshot_writer_finish(w, &file, &flen) < 0)
        die("a save failed");
    snapshot_writer_free(w);
    struct snapshot_reader *r = snapshot_reader_open(file, flen, SNAPSHOT_FILE_MAX);
    struct snapshot_cursor c;
    if (!r || snapshot_section(r, "s", &c) < 0)
        die("a saved file does not read back");
    uint8_t *out = malloc(c.len ? c.len : 1);
    if (!out)
        die("out of memory");
    memcpy(out, c.data, c.len);
    *len = c.len;
    snapshot_reader_free(r);
    free(file);
    return out;
}

/* ---- legacy devices ------------------------------------------------------------------------ */

static void set_irq(void *opaque, int level)
{
    (void)opaque;
    if (level != 0 && level != 1)
        die("IRQ level %d", level);
}

static void serial_output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)opaque;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < len; i++)
        sink ^= buf[i];
    (void)sink;
}

static time_t fixed_now(void)
{
    return 1700000000;
}

union legacy {
    struct serial serial;
    struct i8042 i8042;
    struct rtc rtc;
    struct boot_timer boot_timer;
};

static void legacy_new(unsigned t, union legacy *d)
{
    memset(d, 0, sizeof(*d));
    switch (t) {
    case T_SERIAL: {
        struct serial_ops ops = {set_irq, serial_output, NULL, NULL};
        serial_init(&d->serial, &ops);
        break;
    }
    case T_I8042:
        i8042_init(&d->i8042, NULL, NULL);
        i8042_connect_irq(&d->i8042, set_irq, NULL);
        break;
    case T_RTC:
        rtc_init(&d->rtc, 256 << 20, 0);
        d->rtc.now = fixed_now;
        break;
    default:
        boot_timer_init(&d->boot_timer);
        break;
    }
}

static void legacy_free(unsigned t, union legacy *d)
{
    if (t == T_SERIAL)
        serial_destroy(&d->serial);
}

static size_t legacy_size(unsigned t)
{
    switch (t) {
    case T_SERIAL:
        return sizeof(struct serial);
    case T_I8042:
        return sizeof(struct i8042);
    case T_RTC:
        return sizeof(struct rtc);
    default:
        return sizeof(struct boot_timer);
    }
}

static int legacy_restore(unsigned t, union legacy *d, struct snapshot_cursor *c)
{
    switch (t) {
    case T_SERIAL:
        return serial_restore(&d->serial, c);
    case T_I8042:
        return i8042_restore(&d->i8042, c);
    case T_RTC:
        return rtc_restore(&d->rtc, c);
    default:
        return boot_timer_restore(&d->boot_timer, c);
    }
}

static void save_serial(void *d, struct snapshot_writer *w)
{
    serial_save(d, w);
}
static void save_i8042(void *d, struct snapshot_writer *w)
{
    i8042_save(d, w);
}
static void save_rtc(void *d, struct snapshot_writer *w)
{
    rtc_save(d, w);
}
static void save_boot_timer(void *d, struct snapshot_writer *w)
{
    boot_timer_save(d, w);
}
static const save_fn legacy_save[] = {save_serial, save_i8042, save_rtc, save_boot_timer};

/* Every register read, as a guest would (reads change some state: that is the point). */
static void legacy_reads(unsigned t, union legacy *d)
{
    uint8_t v;
    switch (t) {
    case T_SERIAL:
        for (unsigned r = 0; r < 8; r++)
            serial_io(&d->serial, r, &v, 1, false);
        break;
    case T_I8042:
        for (unsigned i = 0; i < 4; i++) {
            i8042_command_io(&d->i8042, 0, &v, 1, false);
            i8042_data_io(&d->i8042, 0, &v, 1, false);
        }
        break;
    case T_RTC:
        for (unsigned r = 0; r < 128; r++) {
            uint8_t idx = (uint8_t)r;
            rtc_io(&d->rtc, 0, &idx, 1, true);
            rtc_io(&d->rtc, 1, &v, 1, false);
        }
        break;
    default:
        boot_timer_io(&d->boot_timer, 0, &v, 1, false);
        break;
    }
}

static void fuzz_legacy(unsigned t, const uint8_t *data, size_t len)
{
    static union legacy a, before, b;
    legacy_new(t, &a);
    memcpy(&before, &a, sizeof(a));
    struct snapshot_cursor c = cursor(data, len);
    error_clear();
    int rc = legacy_restore(t, &a, &c);
    outcome("legacy", rc);
    if (rc < 0) {
        if (!error_get()[0])
            die("target %u: refused without a reason", t);
        if (memcmp(&before, &a, legacy_size(t)))
            die("target %u: a refused restore changed the device", t);
        legacy_free(t, &a);
        return;
    }
    /* What it holds now saves into what restores to the same. */
    size_t n1, n2;
    uint8_t *s1 = section_bytes(legacy_save[t], &a, &n1);
    legacy_new(t, &b);
    struct snapshot_cursor c1 = cursor(s1, n1);
    if (legacy_restore(t, &b, &c1) < 0)
        die("target %u: a restored device's own save is refused", t);
    uint8_t *s2 = section_bytes(legacy_save[t], &b, &n2);
    /* The boot timer saves the time counted so far, which goes on counting. */
    if (t != T_BOOT_TIMER && (n1 != n2 || memcmp(s1, s2, n1)))
        die("target %u: save, restore, save differs", t);
    free(s1);
    free(s2);
    legacy_reads(t, &a);
    legacy_free(t, &a);
    legacy_free(t, &b);
}

/* ---- the configuration ----------------------------------------------------------------------- */

static void put_config(void *cfg, struct snapshot_writer *w)
{
    vm_snapshot_put_config(w, cfg);
}

static void fuzz_config(const uint8_t *data, size_t len)
{
    struct snapshot_cursor c = cursor(data, len);
    struct vm_snapshot_machine m;
    error_clear();
    int rc = vm_snapshot_read_config(&c, &m);
    outcome("config", rc);
    if (rc < 0) {
        if (!error_get()[0])
            die("a configuration refused without a reason");
        vm_snapshot_machine_free(&m, false);
        return;
    }
    if (m.cfg.ndrives > VM_MAX_DRIVES || m.cfg.nnets > VM_MAX_NETS || m.cfg.npmem > VM_MAX_PMEM ||
        m.cfg.ncpus == 0 || m.cfg.ncpus > 255)
        die("a configuration accepted out of bounds");
    size_t n1, n2;
    uint8_t *s1 = section_bytes(put_config, &m.cfg, &n1);
    struct snapshot_cursor c1 = cursor(s1, n1);
    struct vm_snapshot_machine m2;
    if (vm_snapshot_read_config(&c1, &m2) < 0)
        die("a configuration's own save is refused");
    uint8_t *s2 = section_bytes(put_config, &m2.cfg, &n2);
    if (n1 != n2 || memcmp(s1, s2, n1))
        die("configuration: save, restore, save differs");
    free(s1);
    free(s2);
    vm_snapshot_machine_free(&m2, false);
    vm_snapshot_machine_free(&m, false);
}

static void fuzz_machine(const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, data, len);
    if (len >= 8) {
        uint64_t crc = snapshot_crc64(0, copy, len - 8);
        for (int i = 0; i < 8; i++)
            copy[len - 8 + i] = (uint8_t)(crc >> (8 * i));
    }
    error_clear();
    struct snapshot_reader *r = snapshot_reader_open(copy, len, SNAPSHOT_FILE_MAX);
    if (r) {
        struct vm_snapshot_machine m;
        int rc = vm_snapshot_read_machine(r, &m);
        outcome("machine", rc);
        if (rc == 0) {
            for (unsigned i = 0; i < m.cfg.ncpus; i++) {
                if (!m.cpuid[i] || m.cpuid[i]->nent == 0 || m.cpuid[i]->nent > 256)
                    die("vCPU %u's CPUID accepted with %u entries", i,
                        m.cpuid[i] ? m.cpuid[i]->nent : 0);
            }
        } else if (!error_get()[0]) {
            die("a state file refused without a reason");
        }
        vm_snapshot_machine_free(&m, false);
        snapshot_reader_free(r);
    }
    free(copy);
}

/* ---- virtio devices ---------------------------------------------------------------------------
 */

static void console_output(void *opaque, const uint8_t *buf, size_t len)
{
    serial_output(opaque, buf, len);
}

static const struct rate_limit_config some_limit = {.bandwidth = {1 << 20, 4096, 100},
                                                    .ops = {100, 10, 1000}};

/* The device the options say, its iothread stopped: the harness runs its loop. */
static int make_device(uint8_t opt)
{
    int r = -1;
    struct rate_limit_config limit = (opt & 2) ? some_limit : (struct rate_limit_config){0};
    switch (h.kind) {
    case BLK: {
        if (truncate(g.blk_path, 0) < 0 || truncate(g.blk_path, 64 << 10) < 0)
            die("truncate: %s", strerror(errno));
        struct blk_options o = {.path = g.blk_path,
                                .readonly = opt & 1,
                                .engine = BLK_ENGINE_SYNC,
                                .queues = 1 + (opt >> 2 & 1),
                                .rate_limit = limit};
        vh_dev(&h);
        r = virtio_blk_init(&h.u.blk, "blk0", &o, &g.mem);
        break;
    }
    case NET: {
        struct net_pair_options po = {.vnet_hdr = true, .offloads = opt & 1};
        struct net_backend be;
        if (net_pair_open(&be, &po, &h.net_host_fd) < 0)
            return -1;
        struct net_options o = {.backend = &be, .vhost = VHOST_OFF};
        if (opt & 4)
            o.mtu = 1500;
        o.rx_limit = limit;
        o.tx_limit = limit;
        vh_dev(&h);
        r = virtio_net_init(&h.u.net, "net0", &o, &g.mem);
        break;
    }
    case CONSOLE:
        vh_dev(&h);
        r = virtio_console_init(&h.u.console, &g.mem, console_output, NULL, NULL);
        break;
    case RNG:
        vh_dev(&h);
        r = virtio_rng_init(&h.u.rng, &g.mem, (opt & 2) ? 1 << 20 : 0, (opt & 2) ? 512 : 0);
        break;
    case PMEM: {
        if (truncate(g.pmem_path, 2 << 20) < 0)
            die("%s: %s", g.pmem_path, strerror(errno));
        struct pmem_options o = {
            .id = "pmem_fuzz", .path = g.pmem_path, .readonly = opt & 1, .rate_limit = limit};
        vh_dev(&h);
        r = virtio_pmem_init(&h.u.pmem, "pmem0", &o, &g.mem);
        if (r == 0)
            virtio_pmem_set_region(&h.u.pmem, 1ULL << 40);
        break;
    }
    default:
        vh_dev(&h);
        r = virtio_vsock_init(&h.u.vsock, 3, g.vsock_path, &g.mem);
        break;
    }
    if (r < 0)
        return -1;
    if (vh_take_loop(&h) < 0)
        die("event_loop_init");
    return 0;
}

static int make_transport(void)
{
    vh_buses_init(&h);
    return vh_transport_init(&h);
}

static bool loop_round(void)
{
    int n = vh_loop_round(&h, 0);
    if (n < 0)
        die("event loop failed");
    return n > 0;
}

/* The restored device serves what its rings hold; a loop still busy after this many rounds
 * with nothing new coming is a device spinning. */
static void run_until_idle(void)
{
    unsigned rounds = 0;
    while (loop_round()) {
        if (++rounds > SPIN_ROUNDS)
            die("%s: the event loop is still busy after %u rounds (spinning)", h.dev->name, rounds);
    }
}

static void reg_rw(uint64_t off, void *data, uint32_t len, bool is_write)
{
    uint64_t base = h.pci ? h.vpci.fn.bars[0].addr : MMIO_BASE;
    bus_dispatch(&h.mmio, base + off, data, len, is_write);
}

static void cfg_rw(uint32_t reg, uint32_t len, uint32_t *v, bool is_write)
{
    uint32_t a = 0x80000000u | h.vpci.fn.slot << 11 | (reg & 0xfc);
    bus_dispatch(&h.pio, PCI_CONFIG_ADDRESS_PORT, (uint8_t *)&a, 4, true);
    bus_dispatch(&h.pio, PCI_CONFIG_DATA_PORT + (reg & 3), (uint8_t *)v, len, is_write);
}

/* Every register, read as a guest reads them. */
static void virtio_reads(void)
{
    uint32_t v;
    if (h.pci) {
        for (uint32_t reg = 0; reg < 256; reg += 4)
            cfg_rw(reg, 4, &v, false);
    }
    /* The registers and the device configuration: the start of each region. */
    static const uint32_t pci_regions[] = {VIRTIO_PCI_COMMON_OFF, VIRTIO_PCI_ISR_OFF,
                                           VIRTIO_PCI_DEVICE_OFF, VIRTIO_PCI_MSIX_OFF,
                                           VIRTIO_PCI_PBA_OFF};
    for (unsigned r = 0; r < (h.pci ? 5 : 1); r++) {
        uint32_t start = h.pci ? pci_regions[r] : 0, span = h.pci ? 0x100 : 0x200;
        for (uint32_t off = start; off < start + span; off += 4) {
            v = 0;
            reg_rw(off, &v, 4, false);
        }
    }
}

/* Where the driver writes the device status: 0 is a reset. */
static void driver_reset(void)
{
    if (h.pci) {
        uint16_t cmd;
        memcpy(&cmd, h.vpci.fn.config + PCI_COMMAND, 2);
        const struct pci_bar *bar = &h.vpci.fn.bars[0];
        if (!(cmd & PCI_COMMAND_MEMORY) || !bar->mapped || bar->mapped_addr != bar->addr)
            return; /* the guest cannot reach the registers: no reset either */
        uint8_t zero = 0;
        reg_rw(0x14, &zero, 1, true); /* common configuration: device_status */
    } else {
        uint32_t zero = 0;
        reg_rw(0x70, &zero, 4, true);
    }
    if (__atomic_load_n(&h.dev->status, __ATOMIC_SEQ_CST) != 0 || h.dev->active)
        die("%s: still status 0x%x (active %d) after the driver's reset", h.dev->name,
            h.dev->status, h.dev->active);
}

static void fuzz_virtio(unsigned k, uint8_t opt, const uint8_t *data, size_t len)
{
    memset(&h, 0, sizeof(h));
    h.net_host_fd = -1;
    h.kind = (enum kind)(k % KIND_COUNT);
    h.pci = k >= KIND_COUNT;
    madvise(g.mem.base, MEM_SIZE, MADV_DONTNEED); /* zeroes again */
    if (make_device(opt) < 0 || make_transport() < 0)
        die("%s: cannot make the device: %s", kind_names[h.kind], error_get());
    struct snapshot_cursor c = cursor(data, len);
    error_clear();
    int rc = virtio_dev_restore(h.dev, &c);
    if (rc == 0)
        rc = h.pci ? virtio_pci_restore(&h.vpci, &c) : virtio_mmio_restore(&h.vmmio, &c);
    if (rc == 0)
        rc = snapshot_section_end(&c);
    if (rc == 0)
        rc = virtio_dev_resume_restored(h.dev);
    outcome(h.dev->name, rc);
    if (rc < 0) {
        if (!error_get()[0])
            die("%s: refused without a reason", h.dev->name);
        vh_end(&h);
        return;
    }
    /* A status the driver could have reached: DRIVER_OK only after FEATURES_OK, which the
     * device grants only to modern drivers. */
    uint8_t status = h.dev->status;
    if ((status & VIRTIO_STATUS_DRIVER_OK) && !(status & VIRTIO_STATUS_FEATURES_OK))
        die("%s: restored with DRIVER_OK but not FEATURES_OK (0x%x)", h.dev->name, status);
    if ((status & VIRTIO_STATUS_FEATURES_OK) &&
        !(h.dev->driver_features & (1ULL << VIRTIO_F_VERSION_1)))
        die("%s: restored with FEATURES_OK for driver features 0x%llx (no VERSION_1)", h.dev->name,
            (unsigned long long)h.dev->driver_features);
    if (h.pci) {
        /* Vectors as the guest's writes leave them: none, or one of the table's. */
        for (unsigned q = 0; q < h.dev->nqueues; q++) {
            uint16_t vec = h.dev->queues[q].msix_vector;
            if (vec != VIRTIO_NO_VECTOR && vec >= h.vpci.nvectors)
                die("%s: queue %u restored with MSI-X vector %u of %u", h.dev->name, q, vec,
                    h.vpci.nvectors);
        }
    }
    run_until_idle();
    virtio_reads();
    run_until_idle();
    driver_reset();
    run_until_idle();
    vh_end(&h);
}

/* ---- seeds --------------------------------------------------------------------------------- */

static const char *seeds_dir;

static void write_seed(const char *name, uint8_t target, uint8_t opt, const uint8_t *body,
                       size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", seeds_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputc(target, f) == EOF || fputc(opt, f) == EOF ||
        (len && fwrite(body, 1, len, f) != len) || fclose(f) != 0)
        die("%s: cannot write", path);
}

/* A configuration with something in every list. */
static void seed_config(struct vm_config *cfg)
{
    vm_config_defaults(cfg);
    cfg->kernel_path = "/boot/vmlinux";
    cfg->cmdline = "console=ttyS0 reboot=k panic=1";
    cfg->memory_mib = 128;
    cfg->ncpus = 2;
    cfg->boot_timer = true;
    cfg->ndrives = 1;
    cfg->drives[0] = (struct drive_config){
        .path = "/tmp/rootfs.ext4", .id = "rootfs", .is_root = true, .queues = 1};
    cfg->drives[0].rate_limit = some_limit;
    cfg->nnets = 1;
    cfg->nets[0] = (struct net_config){.id = "eth0", .tap = "tap0", .has_mac = true, .mtu = 1500};
    memcpy(cfg->nets[0].mac, "\x06\x00\xac\x10\x00\x02", 6);
    cfg->vsock.id = "vsock0";
    cfg->vsock.guest_cid = 3;
    cfg->vsock.uds_path = "/tmp/v.sock";
    cfg->npmem = 1;
    cfg->pmem[0] = (struct pmem_config){.id = "pmem0", .path = "/tmp/pmem.img"};
}

static void put_cpuid_vcpu(struct snapshot_writer *w, unsigned id)
{
    char name[32];
    snprintf(name, sizeof(name), "vcpu.%u", id);
    snapshot_begin_section(w, name);
    snapshot_put_u8(w, 1);     /* SREGS2 */
    snapshot_put_u32(w, 4096); /* XSAVE bytes */
    uint32_t msrs[2] = {0x10, 0x174};
    snapshot_put_u32(w, 2);
    snapshot_put_bytes(w, msrs, sizeof(msrs));
    struct kvm_cpuid_entry2 e[2] = {{.function = 0, .eax = 0xd}, {.function = 1, .ecx = 1}};
    snapshot_put_u32(w, 2);
    snapshot_put_bytes(w, e, sizeof(e));
}

/* A state file's sections before the devices: what vm_snapshot_read_machine reads. */
static uint8_t *seed_machine(size_t *len)
{
    struct vm_config cfg;
    seed_config(&cfg);
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_begin_section(w, "meta");
    snapshot_put_string(w, "ember fuzz seed");
    snapshot_put_u8(w, 0);
    snapshot_put_u64(w, cfg.memory_mib << 20);
    snapshot_put_u32(w, cfg.ncpus);
    snapshot_put_u64(w, 1700000000);
    snapshot_begin_section(w, "config");
    vm_snapshot_put_config(w, &cfg);
    for (unsigned i = 0; i < cfg.ncpus; i++)
        put_cpuid_vcpu(w, i);
    uint8_t *out;
    if (snapshot_writer_finish(w, &out, len) < 0)
        die("seed machine");
    snapshot_writer_free(w);
    return out;
}

/* The driver's setup, done directly: features, queues 0x10000 apart, DRIVER_OK. */
static void driver_start(struct virtio_dev *d)
{
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < d->nqueues && q < 8; q++) {
        d->queues[q].cfg = (struct virtq_config){.size = 16,
                                                 .desc_gpa = 0x10000 + 0x10000ULL * q,
                                                 .avail_gpa = 0x14000 + 0x10000ULL * q,
                                                 .used_gpa = 0x18000 + 0x10000ULL * q};
        d->queues[q].enabled = true;
        d->queues[q].msix_vector =
            h.pci && q + 1 < h.vpci.nvectors ? (uint16_t)(q + 1) : VIRTIO_NO_VECTOR;
    }
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
}

static void save_virtio(void *unused, struct snapshot_writer *w)
{
    (void)unused;
    virtio_dev_save(h.dev, w);
    if (h.pci)
        virtio_pci_save(&h.vpci, w);
    else
        virtio_mmio_save(&h.vmmio, w);
}

static void write_seeds(void)
{
    static const char *const legacy_names[] = {"serial", "i8042", "rtc", "boot-timer"};
    for (unsigned t = T_SERIAL; t <= T_BOOT_TIMER; t++) {
        static union legacy d;
        legacy_new(t, &d);
        if (t == T_BOOT_TIMER) { /* 5 s counted, the clocks not started: the same each time */
            d.boot_timer.carried_us = 5000000;
            d.boot_timer.carried_cpu_us = 1000000;
            d.boot_timer.start_us = d.boot_timer.start_cpu_us = UINT64_MAX;
        }
        if (t == T_SERIAL) { /* a guest's setup: FIFOs on, interrupts on, a divisor */
            uint8_t v[] = {0x80, 0x01, 0x00, 0x03, 0xc7, 0x0b, 0x0f};
            unsigned r[] = {3, 0, 1, 3, 2, 4, 1};
            for (unsigned i = 0; i < 7; i++)
                serial_io(&d.serial, r[i], &v[i], 1, true);
        }
        size_t n;
        uint8_t *s = section_bytes(legacy_save[t], &d, &n);
        char name[64];
        snprintf(name, sizeof(name), "%s", legacy_names[t]);
        write_seed(name, (uint8_t)t, 0, s, n);
        free(s);
        legacy_free(t, &d);
    }
    struct vm_config cfg;
    seed_config(&cfg);
    size_t n;
    uint8_t *s = section_bytes(put_config, &cfg, &n);
    write_seed("config", T_CONFIG, 0, s, n);
    free(s);
    s = seed_machine(&n);
    write_seed("machine", T_MACHINE, 0, s, n);
    free(s);

    for (unsigned k = 0; k < 12; k++) {
        for (unsigned variant = 0; variant < 2; variant++) {
            uint8_t opt = variant ? 2 : 0; /* rate limits on */
            memset(&h, 0, sizeof(h));
            h.net_host_fd = -1;
            h.kind = (enum kind)(k % KIND_COUNT);
            h.pci = k >= KIND_COUNT;
            if (make_device(opt) < 0 || make_transport() < 0)
                die("seed device %u: %s", k, error_get());
            if (variant) {
                driver_start(h.dev);
                if (virtio_dev_freeze(h.dev) < 0)
                    die("freeze: %s", error_get());
            }
            s = section_bytes(save_virtio, NULL, &n);
            char name[64];
            snprintf(name, sizeof(name), "%s-%s-%s", kind_names[h.kind], h.pci ? "pci" : "mmio",
                     variant ? "active" : "new");
            write_seed(name, (uint8_t)(T_VIRTIO + k), opt, s, n);
            free(s);
            if (variant)
                virtio_dev_thaw(h.dev);
            vh_end(&h);
        }
    }
}

/* ---- the target -------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > (1 << 16))
        return 0;
    unsigned t = data[0] % T_COUNT;
    uint8_t opt = data[1];
    /* A copy of exactly the body: a read past it is caught. */
    size_t len = size - 2;
    uint8_t *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 2, len);
    if (t <= T_BOOT_TIMER)
        fuzz_legacy(t, body, len);
    else if (t == T_CONFIG)
        fuzz_config(body, len);
    else if (t == T_MACHINE)
        fuzz_machine(body, len);
    else
        fuzz_virtio(t - T_VIRTIO, opt, body, len);
    free(body);
    return 0;
}

static void cleanup(void)
{
    if (!g.dir[0])
        return;
    unlink(g.blk_path);
    unlink(g.pmem_path);
    unlink(g.vsock_path);
    rmdir(g.dir);
    g.dir[0] = '\0';
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    trace = getenv("FUZZ_RESTORE_TRACE") != NULL;
    snprintf(g.dir, sizeof(g.dir), "/tmp/ember-fuzz-restore-XXXXXX");
    if (!mkdtemp(g.dir))
        die("mkdtemp: %s", strerror(errno));
    atexit(cleanup);
    __sanitizer_set_death_callback(cleanup);
    snprintf(g.blk_path, sizeof(g.blk_path), "%s/disk.img", g.dir);
    snprintf(g.pmem_path, sizeof(g.pmem_path), "%s/pmem.img", g.dir);
    snprintf(g.vsock_path, sizeof(g.vsock_path), "%s/v.sock", g.dir);
    for (unsigned i = 0; i < 2; i++) {
        int fd = open(i ? g.pmem_path : g.blk_path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0)
            die("%s", strerror(errno));
        close(fd);
    }
    if (guest_memory_map(&g.mem, MEM_SIZE, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END) < 0)
        die("guest memory: %s", error_get());
    seeds_dir = getenv("EMBER_FUZZ_WRITE_SEEDS");
    if (seeds_dir) {
        write_seeds();
        exit(0);
    }
    return 0;
}
