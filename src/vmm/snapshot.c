#include "vmm/snapshot.h"

#include "mmds/store.h"
#include "snapshot/format.h"
#include "snapshot/memfile.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"
#include "util/version.h"
#include "vmm/devices.h"
#include "vmm/dirty.h"
#include "vmm/exit_status.h"
#include "vmm/vcpu.h"
#include "vmm/vcpu_state.h"
#include "vmm/vm_state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATH_FIELD_MAX 4096

/* ---- the configuration ------------------------------------------------------------------- */

/* Strings of a loaded configuration live as long as the process (one load per process). */
static char **loaded_strings;
static size_t nloaded_strings;

static const char *keep_string(const char *s)
{
    char *copy = strdup(s);
    char **grown = copy ? realloc(loaded_strings, (nloaded_strings + 1) * sizeof(*grown)) : NULL;
    if (!grown) {
        free(copy);
        return NULL;
    }
    loaded_strings = grown;
    loaded_strings[nloaded_strings++] = copy;
    return copy;
}

static void put_opt_string(struct snapshot_writer *w, const char *s)
{
    snapshot_put_u8(w, s != NULL);
    if (s)
        snapshot_put_string(w, s);
}

static int get_opt_string(struct snapshot_cursor *c, const char **out)
{
    uint8_t present;
    *out = NULL;
    if (snapshot_get_u8(c, &present) < 0)
        return -1;
    if (!present)
        return 0;
    char buf[PATH_FIELD_MAX];
    if (snapshot_get_string(c, buf, sizeof(buf)) < 0)
        return -1;
    *out = keep_string(buf);
    return *out ? 0 : error_set("out of memory");
}

static int get_bool(struct snapshot_cursor *c, bool *out)
{
    uint8_t v;
    if (snapshot_get_u8(c, &v) < 0)
        return -1;
    if (v > 1)
        return error_set("section %s: a flag of value %u", c->name, v);
    *out = v;
    return 0;
}

static void put_bucket(struct snapshot_writer *w, const struct token_bucket_config *b)
{
    snapshot_put_u64(w, b->size);
    snapshot_put_u64(w, b->one_time_burst);
    snapshot_put_u64(w, b->refill_ms);
}

static int get_bucket(struct snapshot_cursor *c, struct token_bucket_config *b)
{
    return snapshot_get_u64(c, &b->size) < 0 || snapshot_get_u64(c, &b->one_time_burst) < 0 ||
                   snapshot_get_u64(c, &b->refill_ms) < 0
               ? -1
               : 0;
}

static void put_limit(struct snapshot_writer *w, const struct rate_limit_config *l)
{
    put_bucket(w, &l->bandwidth);
    put_bucket(w, &l->ops);
}

static int get_limit(struct snapshot_cursor *c, struct rate_limit_config *l)
{
    return get_bucket(c, &l->bandwidth) < 0 || get_bucket(c, &l->ops) < 0 ? -1 : 0;
}

void vm_snapshot_put_config(struct snapshot_writer *w, const struct vm_config *cfg)
{
    put_opt_string(w, cfg->kernel_path);
    put_opt_string(w, cfg->initrd_path);
    put_opt_string(w, cfg->cmdline);
    snapshot_put_u64(w, cfg->memory_mib);
    snapshot_put_u32(w, cfg->ncpus);
    snapshot_put_u8(w, cfg->debug_exit);
    snapshot_put_u8(w, cfg->boot_timer);
    snapshot_put_u8(w, cfg->hugetlb);
    snapshot_put_u32(w, (uint32_t)cfg->cpu_template);
    snapshot_put_u8(w, cfg->smt);
    snapshot_put_u32(w, (uint32_t)cfg->transport);
    snapshot_put_u32(w, (uint32_t)cfg->console);
    snapshot_put_u8(w, cfg->rng);
    snapshot_put_u64(w, cfg->rng_rate);
    put_bucket(w, &cfg->rng_limit);
    snapshot_put_u8(w, cfg->blk_sync);
    snapshot_put_u32(w, cfg->ndrives);
    for (unsigned i = 0; i < cfg->ndrives; i++) {
        const struct drive_config *d = &cfg->drives[i];
        put_opt_string(w, d->path);
        put_opt_string(w, d->id);
        snapshot_put_u8(w, d->readonly);
        snapshot_put_u8(w, d->direct);
        snapshot_put_u8(w, d->unsafe);
        snapshot_put_u32(w, (uint32_t)d->engine);
        snapshot_put_u8(w, d->is_root);
        put_opt_string(w, d->partuuid);
        snapshot_put_u32(w, d->queues);
        snapshot_put_u32(w, d->poll_us);
        put_limit(w, &d->rate_limit);
    }
    snapshot_put_u32(w, cfg->nnets);
    for (unsigned i = 0; i < cfg->nnets; i++) {
        const struct net_config *n = &cfg->nets[i];
        put_opt_string(w, n->id);
        put_opt_string(w, n->tap);
        snapshot_put_u8(w, n->user);
        put_opt_string(w, n->forwards);
        snapshot_put_bytes(w, n->mac, sizeof(n->mac));
        snapshot_put_u8(w, n->has_mac);
        snapshot_put_u32(w, n->mtu);
        snapshot_put_u32(w, (uint32_t)n->vhost);
        snapshot_put_u64(w, n->sndbuf);
        put_limit(w, &n->rx_limit);
        put_limit(w, &n->tx_limit);
        snapshot_put_u32(w, n->mmds_ipv4);
    }
    put_opt_string(w, cfg->vsock.id);
    snapshot_put_u64(w, cfg->vsock.guest_cid);
    put_opt_string(w, cfg->vsock.uds_path);
    snapshot_put_u32(w, cfg->npmem);
    for (unsigned i = 0; i < cfg->npmem; i++) {
        const struct pmem_config *p = &cfg->pmem[i];
        put_opt_string(w, p->id);
        put_opt_string(w, p->path);
        snapshot_put_u8(w, p->readonly);
        snapshot_put_u8(w, p->is_root);
        put_limit(w, &p->rate_limit);
    }
    snapshot_put_u8(w, cfg->mmds != NULL);
    snapshot_put_u32(w, cfg->mmds ? (uint32_t)cfg->mmds->version : 0);
    snapshot_put_u8(w, cfg->mmds ? cfg->mmds->imds_compat : 0);
}

/* The enum-valued fields, checked against what ember knows. */
static int check_enum(const char *what, uint32_t v, uint32_t count)
{
    return v < count ? 0 : error_set("the configuration's %s is %u (unknown)", what, v);
}

static int load_config(struct snapshot_cursor *cur, struct vm_config *cfg, bool *has_mmds,
                       uint32_t *mmds_version, bool *imds_compat)
{
    struct snapshot_cursor c = *cur;
    vm_config_defaults(cfg);
    uint32_t tmpl, transport, console, n;
    if (get_opt_string(&c, &cfg->kernel_path) < 0 || get_opt_string(&c, &cfg->initrd_path) < 0 ||
        get_opt_string(&c, &cfg->cmdline) < 0 || snapshot_get_u64(&c, &cfg->memory_mib) < 0 ||
        snapshot_get_u32(&c, &cfg->ncpus) < 0 || get_bool(&c, &cfg->debug_exit) < 0 ||
        get_bool(&c, &cfg->boot_timer) < 0 || get_bool(&c, &cfg->hugetlb) < 0 ||
        snapshot_get_u32(&c, &tmpl) < 0 || get_bool(&c, &cfg->smt) < 0 ||
        snapshot_get_u32(&c, &transport) < 0 || snapshot_get_u32(&c, &console) < 0 ||
        get_bool(&c, &cfg->rng) < 0 || snapshot_get_u64(&c, &cfg->rng_rate) < 0 ||
        get_bucket(&c, &cfg->rng_limit) < 0 || get_bool(&c, &cfg->blk_sync) < 0)
        return -1;
    if (check_enum("CPU template", tmpl, CPU_TEMPLATE_T2A + 1) < 0 ||
        check_enum("transport", transport, 2) < 0 || check_enum("console", console, 2) < 0)
        return -1;
    cfg->cpu_template = (enum cpu_template)tmpl;
    cfg->transport = (enum virtio_transport_kind)transport;
    cfg->console = (enum console_kind)console;
    /* Guest RAM below 4 PiB and vCPUs KVM can count: vm_create checks the rest. */
    if (cfg->memory_mib < VM_MIN_MEMORY_MIB || cfg->memory_mib > (1ULL << 32))
        return error_set("the configuration's memory size %llu MiB is out of range",
                         (unsigned long long)cfg->memory_mib);
    if (cfg->ncpus == 0 || cfg->ncpus > 255)
        return error_set("the configuration's vCPU count %u is out of range", cfg->ncpus);

    if (snapshot_get_u32(&c, &n) < 0)
        return -1;
    if (n > VM_MAX_DRIVES)
        return error_set("the configuration has %u drives (at most %u)", n, VM_MAX_DRIVES);
    cfg->ndrives = n;
    for (unsigned i = 0; i < n; i++) {
        struct drive_config *d = &cfg->drives[i];
        uint32_t engine;
        if (get_opt_string(&c, &d->path) < 0 || get_opt_string(&c, &d->id) < 0 ||
            get_bool(&c, &d->readonly) < 0 || get_bool(&c, &d->direct) < 0 ||
            get_bool(&c, &d->unsafe) < 0 || snapshot_get_u32(&c, &engine) < 0 ||
            get_bool(&c, &d->is_root) < 0 || get_opt_string(&c, &d->partuuid) < 0 ||
            snapshot_get_u32(&c, &d->queues) < 0 || snapshot_get_u32(&c, &d->poll_us) < 0 ||
            get_limit(&c, &d->rate_limit) < 0)
            return -1;
        if (check_enum("drive engine", engine, 3) < 0)
            return -1;
        if (!d->path)
            return error_set("drive %u has no path", i);
        d->engine = (int)engine;
    }
    if (snapshot_get_u32(&c, &n) < 0)
        return -1;
    if (n > VM_MAX_NETS)
        return error_set("the configuration has %u network interfaces (at most %u)", n,
                         VM_MAX_NETS);
    cfg->nnets = n;
    for (unsigned i = 0; i < n; i++) {
        struct net_config *nc = &cfg->nets[i];
        uint32_t vhost;
        if (get_opt_string(&c, &nc->id) < 0 || get_opt_string(&c, &nc->tap) < 0 ||
            get_bool(&c, &nc->user) < 0 || get_opt_string(&c, &nc->forwards) < 0 ||
            snapshot_get_bytes(&c, nc->mac, sizeof(nc->mac)) < 0 ||
            get_bool(&c, &nc->has_mac) < 0 || snapshot_get_u32(&c, &nc->mtu) < 0 ||
            snapshot_get_u32(&c, &vhost) < 0 || snapshot_get_u64(&c, &nc->sndbuf) < 0 ||
            get_limit(&c, &nc->rx_limit) < 0 || get_limit(&c, &nc->tx_limit) < 0 ||
            snapshot_get_u32(&c, &nc->mmds_ipv4) < 0)
            return -1;
        if (check_enum("vhost mode", vhost, 3) < 0)
            return -1;
        nc->vhost = (int)vhost;
    }
    if (get_opt_string(&c, &cfg->vsock.id) < 0 || snapshot_get_u64(&c, &cfg->vsock.guest_cid) < 0 ||
        get_opt_string(&c, &cfg->vsock.uds_path) < 0 || snapshot_get_u32(&c, &n) < 0)
        return -1;
    if (n > VM_MAX_PMEM)
        return error_set("the configuration has %u pmem devices (at most %u)", n, VM_MAX_PMEM);
    cfg->npmem = n;
    for (unsigned i = 0; i < n; i++) {
        struct pmem_config *p = &cfg->pmem[i];
        if (get_opt_string(&c, &p->id) < 0 || get_opt_string(&c, &p->path) < 0 ||
            get_bool(&c, &p->readonly) < 0 || get_bool(&c, &p->is_root) < 0 ||
            get_limit(&c, &p->rate_limit) < 0)
            return -1;
        if (!p->path)
            return error_set("pmem device %u has no path", i);
    }
    if (get_bool(&c, has_mmds) < 0 || snapshot_get_u32(&c, mmds_version) < 0 ||
        get_bool(&c, imds_compat) < 0)
        return -1;
    if (*has_mmds && *mmds_version != MMDS_V1 && *mmds_version != MMDS_V2)
        return error_set("the configuration's MMDS version %u is unknown", *mmds_version);
    int ret = snapshot_section_end(&c);
    *cur = c;
    return ret;
}

/* ---- vCPUs ------------------------------------------------------------------------------- */

struct vcpu_save_job {
    struct vm *vm;
    struct vcpu_state_layout *layout;
    struct vcpu_state *states;
    struct kvm_cpuid2 **cpuid;
    unsigned cpuid_capacity;
};

static int probe_on_vcpu(struct vcpu *vcpu, void *arg)
{
    struct vcpu_save_job *job = arg;
    if (vcpu->id != 0)
        return 0;
    return vcpu_state_layout_probe(job->layout, job->vm->kvm.fd, job->vm->vm_fd, vcpu->fd);
}

static int save_on_vcpu(struct vcpu *vcpu, void *arg)
{
    struct vcpu_save_job *job = arg;
    if (vcpu_state_complete_pending(vcpu->fd, vcpu->run) < 0 ||
        vcpu_state_save(vcpu->fd, job->layout, &job->states[vcpu->id]) < 0)
        return -1;
    struct kvm_cpuid2 *cpuid = job->cpuid[vcpu->id];
    cpuid->nent = job->cpuid_capacity;
    if (ioctl(vcpu->fd, KVM_GET_CPUID2, cpuid) < 0)
        return error_errno("KVM_GET_CPUID2");
    return 0;
}

static void put_layout(struct snapshot_writer *w, const struct vcpu_state_layout *l)
{
    snapshot_put_u8(w, l->sregs2);
    snapshot_put_u32(w, l->xsave_size);
    snapshot_put_u32(w, l->nmsrs);
    snapshot_put_bytes(w, l->msr_indices, l->nmsrs * sizeof(l->msr_indices[0]));
}

static void save_vcpu(struct snapshot_writer *w, unsigned id, const struct vcpu_state_layout *l,
                      const struct vcpu_state *s, const struct kvm_cpuid2 *cpuid)
{
    char name[SNAPSHOT_NAME_MAX + 1];
    snprintf(name, sizeof(name), "vcpu.%u", id);
    snapshot_begin_section(w, name);
    put_layout(w, l);
    snapshot_put_u32(w, cpuid->nent);
    snapshot_put_bytes(w, cpuid->entries, cpuid->nent * sizeof(cpuid->entries[0]));
    snapshot_put_bytes(w, &s->mp_state, sizeof(s->mp_state));
    snapshot_put_bytes(w, &s->regs, sizeof(s->regs));
    if (l->sregs2)
        snapshot_put_bytes(w, &s->sregs2, sizeof(s->sregs2));
    else
        snapshot_put_bytes(w, &s->sregs, sizeof(s->sregs));
    snapshot_put_bytes(w, s->xsave, l->xsave_size);
    snapshot_put_bytes(w, &s->xcrs, sizeof(s->xcrs));
    snapshot_put_bytes(w, &s->lapic, sizeof(s->lapic));
    snapshot_put_bytes(w, &s->debugregs, sizeof(s->debugregs));
    snapshot_put_bytes(w, &s->events, sizeof(s->events));
    snapshot_put_bytes(w, s->msrs, s->nmsrs * sizeof(s->msrs[0]));
    snapshot_put_u32(w, s->tsc_khz);
}

#define MAX_CPUID_ENTRIES 256

/* The CPUID of vCPU id, for vcpu_create (before the VM exists). */
static struct kvm_cpuid2 *load_cpuid(const struct snapshot_reader *r, unsigned id)
{
    char name[SNAPSHOT_NAME_MAX + 1];
    snprintf(name, sizeof(name), "vcpu.%u", id);
    struct snapshot_cursor c;
    uint8_t sregs2;
    uint32_t xsave_size, nmsrs, nent;
    uint32_t indices[VCPU_STATE_MAX_MSRS];
    if (snapshot_section(r, name, &c) < 0 || snapshot_get_u8(&c, &sregs2) < 0 ||
        snapshot_get_u32(&c, &xsave_size) < 0 || snapshot_get_u32(&c, &nmsrs) < 0)
        return NULL;
    if (nmsrs > VCPU_STATE_MAX_MSRS) {
        error_set("%s: %u MSRs (at most %u)", name, nmsrs, VCPU_STATE_MAX_MSRS);
        return NULL;
    }
    if (snapshot_get_bytes(&c, indices, nmsrs * sizeof(indices[0])) < 0 ||
        snapshot_get_u32(&c, &nent) < 0)
        return NULL;
    if (nent == 0 || nent > MAX_CPUID_ENTRIES) {
        error_set("%s: %u CPUID entries", name, nent);
        return NULL;
    }
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + nent * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) {
        error_set("out of memory");
        return NULL;
    }
    cpuid->nent = nent;
    if (snapshot_get_bytes(&c, cpuid->entries, nent * sizeof(cpuid->entries[0])) < 0) {
        free(cpuid);
        return NULL;
    }
    return cpuid;
}

static int restore_vcpu(const struct snapshot_reader *r, struct vcpu *vcpu,
                        const struct vcpu_state_layout *host)
{
    char name[SNAPSHOT_NAME_MAX + 1];
    snprintf(name, sizeof(name), "vcpu.%u", vcpu->id);
    struct snapshot_cursor c;
    struct vcpu_state_layout l;
    memset(&l, 0, sizeof(l));
    uint8_t sregs2;
    uint32_t nent;
    if (snapshot_section(r, name, &c) < 0 || snapshot_get_u8(&c, &sregs2) < 0 ||
        snapshot_get_u32(&c, &l.xsave_size) < 0 || snapshot_get_u32(&c, &l.nmsrs) < 0)
        return -1;
    if (l.nmsrs > VCPU_STATE_MAX_MSRS)
        return error_set("%s: %u MSRs", name, l.nmsrs);
    if (snapshot_get_bytes(&c, l.msr_indices, l.nmsrs * sizeof(l.msr_indices[0])) < 0)
        return -1;
    l.sregs2 = sregs2 != 0;
    /* The MSRs go back as saved: KVM_SET_MSRS names the first one this KVM refuses. */
    if (l.sregs2 != host->sregs2 || l.xsave_size != host->xsave_size)
        return error_set("%s: saved by a KVM with another vCPU state layout (SREGS2 %d, XSAVE %u "
                         "bytes; here %d, %u)",
                         name, l.sregs2, l.xsave_size, host->sregs2, host->xsave_size);
    l.kvmclock_ctrl = host->kvmclock_ctrl;
    struct vcpu_state s;
    if (vcpu_state_init(&s, &l) < 0)
        return -1;
    int ret = -1;
    if (snapshot_get_u32(&c, &nent) < 0 || nent > MAX_CPUID_ENTRIES)
        goto out;
    /* The CPUID was applied when the vCPU was made (load_cpuid); skipped here. */
    struct kvm_cpuid_entry2 skip[MAX_CPUID_ENTRIES];
    if (snapshot_get_bytes(&c, skip, nent * sizeof(skip[0])) < 0 ||
        snapshot_get_bytes(&c, &s.mp_state, sizeof(s.mp_state)) < 0 ||
        snapshot_get_bytes(&c, &s.regs, sizeof(s.regs)) < 0 ||
        (l.sregs2 ? snapshot_get_bytes(&c, &s.sregs2, sizeof(s.sregs2))
                  : snapshot_get_bytes(&c, &s.sregs, sizeof(s.sregs))) < 0 ||
        snapshot_get_bytes(&c, s.xsave, l.xsave_size) < 0 ||
        snapshot_get_bytes(&c, &s.xcrs, sizeof(s.xcrs)) < 0 ||
        snapshot_get_bytes(&c, &s.lapic, sizeof(s.lapic)) < 0 ||
        snapshot_get_bytes(&c, &s.debugregs, sizeof(s.debugregs)) < 0 ||
        snapshot_get_bytes(&c, &s.events, sizeof(s.events)) < 0 ||
        snapshot_get_bytes(&c, s.msrs, l.nmsrs * sizeof(s.msrs[0])) < 0 ||
        snapshot_get_u32(&c, &s.tsc_khz) < 0 || snapshot_section_end(&c) < 0)
        goto out;
    s.nmsrs = l.nmsrs;
    ret = vcpu_state_restore(vcpu->fd, &l, &s);
    if (ret < 0)
        error_prefix("vCPU %u", vcpu->id);
out:
    vcpu_state_free(&s);
    return ret;
}

/* ---- the VM ------------------------------------------------------------------------------ */

static void save_vm_state(struct snapshot_writer *w, const struct vm_state *s)
{
    snapshot_begin_section(w, "vm");
    snapshot_put_bytes(w, &s->pic_master, sizeof(s->pic_master));
    snapshot_put_bytes(w, &s->pic_slave, sizeof(s->pic_slave));
    snapshot_put_bytes(w, &s->ioapic, sizeof(s->ioapic));
    snapshot_put_bytes(w, &s->pit, sizeof(s->pit));
    snapshot_put_bytes(w, &s->clock, sizeof(s->clock));
}

static int load_vm_state(const struct snapshot_reader *r, struct vm_state *s)
{
    struct snapshot_cursor c;
    if (snapshot_section(r, "vm", &c) < 0 ||
        snapshot_get_bytes(&c, &s->pic_master, sizeof(s->pic_master)) < 0 ||
        snapshot_get_bytes(&c, &s->pic_slave, sizeof(s->pic_slave)) < 0 ||
        snapshot_get_bytes(&c, &s->ioapic, sizeof(s->ioapic)) < 0 ||
        snapshot_get_bytes(&c, &s->pit, sizeof(s->pit)) < 0 ||
        snapshot_get_bytes(&c, &s->clock, sizeof(s->clock)) < 0)
        return -1;
    return snapshot_section_end(&c);
}

/* ---- devices ----------------------------------------------------------------------------- */

static void virtio_section_name(const struct vm_virtio *v, char *name, size_t len)
{
    snprintf(name, len, "virtio.%s", v->dev->name);
}

static void save_devices(struct snapshot_writer *w, struct vm *vm)
{
    char name[SNAPSHOT_NAME_MAX + 1];
    snapshot_begin_section(w, "device.com1");
    serial_save(&vm->com1, w);
    snapshot_begin_section(w, "device.i8042");
    i8042_save(&vm->i8042, w);
    snapshot_begin_section(w, "device.rtc");
    rtc_save(&vm->rtc, w);
    if (vm->cfg.boot_timer) {
        snapshot_begin_section(w, "device.boot-timer");
        boot_timer_save(&vm->boot_timer, w);
    }
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct vm_virtio *v = vm->virtio[i];
        virtio_section_name(v, name, sizeof(name));
        snapshot_begin_section(w, name);
        virtio_dev_save(v->dev, w);
        if (v->on_pci)
            virtio_pci_save(&v->pci, w);
        else
            virtio_mmio_save(&v->mmio, w);
    }
}

static int restore_devices(const struct snapshot_reader *r, struct vm *vm)
{
    char name[SNAPSHOT_NAME_MAX + 1];
    struct snapshot_cursor c;
    /* Each legacy device checks its whole section itself before it changes. */
    if (snapshot_section(r, "device.com1", &c) < 0 || serial_restore(&vm->com1, &c) < 0 ||
        snapshot_section(r, "device.i8042", &c) < 0 || i8042_restore(&vm->i8042, &c) < 0 ||
        snapshot_section(r, "device.rtc", &c) < 0 || rtc_restore(&vm->rtc, &c) < 0)
        return -1;
    if (vm->cfg.boot_timer && (snapshot_section(r, "device.boot-timer", &c) < 0 ||
                               boot_timer_restore(&vm->boot_timer, &c) < 0))
        return -1;
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct vm_virtio *v = vm->virtio[i];
        virtio_section_name(v, name, sizeof(name));
        if (snapshot_section(r, name, &c) < 0 || virtio_dev_restore(v->dev, &c) < 0 ||
            (v->on_pci ? virtio_pci_restore(&v->pci, &c) : virtio_mmio_restore(&v->mmio, &c)) < 0 ||
            snapshot_section_end(&c) < 0)
            return error_prefix("%s", name);
    }
    /* Every device's registers are in place before any serves its queues again. */
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (virtio_dev_resume_restored(vm->virtio[i]->dev) < 0)
            return -1;
    }
    return 0;
}

/* ---- the header section ------------------------------------------------------------------ */

static void save_meta(struct snapshot_writer *w, const struct vm *vm, enum vm_snapshot_type type)
{
    snapshot_begin_section(w, "meta");
    snapshot_put_string(w, "ember " EMBER_VERSION);
    snapshot_put_u8(w, (uint8_t)type);
    snapshot_put_u64(w, vm->mem.ram_size);
    snapshot_put_u32(w, vm->ncpus);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snapshot_put_u64(w, (uint64_t)ts.tv_sec);
}

struct meta {
    char creator[64];
    uint8_t type;
    uint64_t ram_size;
    uint32_t ncpus;
    uint64_t created;
};

static int load_meta(const struct snapshot_reader *r, struct meta *m)
{
    struct snapshot_cursor c;
    if (snapshot_section(r, "meta", &c) < 0 ||
        snapshot_get_string(&c, m->creator, sizeof(m->creator)) < 0 ||
        snapshot_get_u8(&c, &m->type) < 0 || snapshot_get_u64(&c, &m->ram_size) < 0 ||
        snapshot_get_u32(&c, &m->ncpus) < 0 || snapshot_get_u64(&c, &m->created) < 0)
        return -1;
    if (m->type > VM_SNAPSHOT_DIFF)
        return error_set("unknown snapshot type %u", m->type);
    return snapshot_section_end(&c);
}

/* ---- create ------------------------------------------------------------------------------ */

static int open_output(const char *what, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return error_errno("cannot create the %s '%s'", what, path);
    return fd;
}

/* Every piece of state but guest memory into w (the machine paused, its devices frozen). */
static int build_state(struct vm *vm, enum vm_snapshot_type type, struct snapshot_writer *w)
{
    struct vcpu_state_layout *layout = calloc(1, sizeof(*layout));
    struct vcpu_state *states = calloc(vm->ncpus, sizeof(*states));
    struct kvm_cpuid2 **cpuid = calloc(vm->ncpus, sizeof(*cpuid));
    int ret = -1;
    if (!layout || !states || !cpuid) {
        error_set("out of memory");
        goto out;
    }
    struct vcpu_save_job job = {.vm = vm,
                                .layout = layout,
                                .states = states,
                                .cpuid = cpuid,
                                .cpuid_capacity = MAX_CPUID_ENTRIES};
    if (vm_run_on_vcpus(vm, probe_on_vcpu, &job) < 0)
        goto out;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        cpuid[i] = calloc(1, sizeof(struct kvm_cpuid2) +
                                 MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2));
        if (!cpuid[i] || vcpu_state_init(&states[i], layout) < 0) {
            error_set("out of memory");
            goto out;
        }
    }
    if (vm_run_on_vcpus(vm, save_on_vcpu, &job) < 0)
        goto out;
    struct vm_state vm_state;
    if (vm_state_save(vm->vm_fd, &vm_state) < 0)
        goto out;
    save_meta(w, vm, type);
    snapshot_begin_section(w, "config");
    vm_snapshot_put_config(w, &vm->cfg);
    save_vm_state(w, &vm_state);
    for (unsigned i = 0; i < vm->ncpus; i++)
        save_vcpu(w, i, layout, &states[i], cpuid[i]);
    save_devices(w, vm);
    ret = 0;
out:
    for (unsigned i = 0; states && i < vm->ncpus; i++)
        vcpu_state_free(&states[i]);
    for (unsigned i = 0; cpuid && i < vm->ncpus; i++)
        free(cpuid[i]);
    free(cpuid);
    free(states);
    free(layout);
    return ret;
}

int vm_snapshot_save_state(struct vm *vm, enum vm_snapshot_type type, uint8_t **out, size_t *len)
{
    struct snapshot_writer *w = snapshot_writer_new();
    if (!w)
        return error_set("out of memory");
    int r = build_state(vm, type, w);
    if (r == 0)
        r = snapshot_writer_finish(w, out, len);
    snapshot_writer_free(w);
    return r;
}

int vm_snapshot_freeze_devices(struct vm *vm)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (virtio_dev_freeze(vm->virtio[i]->dev) < 0) {
            while (i > 0)
                virtio_dev_thaw(vm->virtio[--i]->dev);
            return -1;
        }
    }
    return 0;
}

void vm_snapshot_thaw_devices(struct vm *vm)
{
    for (unsigned i = vm->nvirtio; i > 0; i--)
        virtio_dev_thaw(vm->virtio[i - 1]->dev);
}

static int write_snapshot(struct vm *vm, const struct vm_snapshot_create_params *p, int state_fd,
                          int mem_fd, struct vm_snapshot_create_stats *stats)
{
    uint8_t *state = NULL;
    size_t len = 0;
    if (vm_snapshot_save_state(vm, p->type, &state, &len) < 0)
        return -1;
    struct memfile_stats ms = {0};
    int r;
    if (p->type == VM_SNAPSHOT_DIFF) {
        uint64_t *bitmap = calloc(guest_memory_bitmap_words(&vm->mem), sizeof(*bitmap));
        r = bitmap ? dirty_collect(vm->vm_fd, &vm->mem, bitmap) : error_set("out of memory");
        if (r == 0 && memfile_write_diff(&vm->mem, mem_fd, bitmap, &ms) < 0) {
            /* The pages go back into the log: the next Diff still holds them. */
            dirty_requeue(&vm->mem, bitmap);
            r = -1;
        }
        free(bitmap);
    } else {
        r = memfile_write_full(&vm->mem, mem_fd, &ms);
        /* The next Diff holds what changes from this snapshot on. */
        if (r == 0 && vm->mem.dirty)
            r = dirty_reset(vm->vm_fd, &vm->mem);
    }
    size_t done = 0;
    while (r == 0 && done < len) {
        ssize_t n = write(state_fd, state + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            r = error_errno("cannot write the snapshot file");
        else
            done += (size_t)n;
    }
    free(state);
    if (r < 0)
        return -1;
    stats->state_bytes = len;
    stats->pages_written = ms.pages_written;
    stats->pages_skipped = ms.pages_skipped;
    return 0;
}

int vm_snapshot_create(struct vm *vm, const struct vm_snapshot_create_params *p,
                       struct vm_snapshot_create_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    if (!vm->started)
        return error_set("the machine has not started");
    if (!vm_is_paused(vm))
        return error_set("the machine is not paused: pause it first (PATCH /vm "
                         "{\"state\": \"Paused\"})");
    if (p->type == VM_SNAPSHOT_DIFF && !vm->mem.dirty)
        return error_set("Diff snapshots need dirty page tracking: set track_dirty_pages in "
                         "machine-config (or at snapshot load)");
    if (vm->cfg.ram_source == VM_RAM_UFFD)
        return error_set("a machine whose memory a page-fault handler serves cannot be "
                         "snapshotted");
    const char *vhu = vm_vhost_user_device(vm);
    if (vhu)
        return error_set("a machine with a vhost-user device (%s) cannot be snapshotted yet: "
                         "its back-end's state is not ember's to save",
                         vhu);
    int state_fd = open_output("snapshot file", p->snapshot_path);
    if (state_fd < 0)
        return -1;
    int mem_fd = open_output("memory file", p->mem_file_path);
    if (mem_fd < 0) {
        close(state_fd);
        return -1;
    }
    uint64_t start = monotonic_us();
    int r = vm_snapshot_freeze_devices(vm);
    if (r == 0) {
        r = write_snapshot(vm, p, state_fd, mem_fd, stats);
        char why[512];
        snprintf(why, sizeof(why), "%s", r < 0 ? error_get() : "");
        vm_snapshot_thaw_devices(vm);
        if (r < 0)
            error_set("%s", why);
    }
    char why[512];
    snprintf(why, sizeof(why), "%s", r < 0 ? error_get() : "");
    stats->pause_us = monotonic_us() - start;
    close(state_fd);
    close(mem_fd);
    if (r < 0)
        return error_set("%s", why);
    return 0;
}

/* ---- load -------------------------------------------------------------------------------- */

static int apply_overrides(struct vm_config *cfg, const struct vm_snapshot_load_params *p)
{
    for (unsigned i = 0; i < p->nnet_overrides; i++) {
        const struct vm_snapshot_net_override *o = &p->net_overrides[i];
        unsigned k = 0;
        while (k < cfg->nnets && !(cfg->nets[k].id && !strcmp(cfg->nets[k].id, o->iface_id)))
            k++;
        if (k == cfg->nnets)
            return error_set("network_overrides: the snapshot has no network interface '%s'",
                             o->iface_id);
        if (cfg->nets[k].user)
            return error_set("network_overrides: interface '%s' uses user networking, not a tap",
                             o->iface_id);
        cfg->nets[k].tap = keep_string(o->host_dev_name);
        if (!cfg->nets[k].tap)
            return error_set("out of memory");
    }
    for (unsigned i = 0; i < cfg->nnets; i++) {
        if (!p->has_tap_fd[i] || cfg->nets[i].user)
            continue;
        /* The device makes its own copy (vmm/devices.c). */
        cfg->nets[i].tap_fd = p->tap_fd[i];
        cfg->nets[i].has_tap_fd = true;
    }
    if (p->has_vsock_listen_fd && cfg->vsock.uds_path && !p->vsock_uds_path) {
        cfg->vsock.listen_fd = p->vsock_listen_fd;
        cfg->vsock.has_listen_fd = true;
        /* Its path is the source's until the migration has succeeded. */
        cfg->vsock.path_shared = true;
    }
    if (p->vsock_uds_path) {
        if (!cfg->vsock.uds_path)
            return error_set("vsock_override: the snapshot has no vsock device");
        cfg->vsock.uds_path = keep_string(p->vsock_uds_path);
        if (!cfg->vsock.uds_path)
            return error_set("out of memory");
    }
    return 0;
}

static int restore_machine(const struct snapshot_reader *r, struct vm *vm, bool clock_realtime)
{
    struct vm_state vm_state;
    if (load_vm_state(r, &vm_state) < 0 ||
        vm_state_restore(vm->vm_fd, &vm_state, clock_realtime) < 0)
        return -1;
    struct vcpu_state_layout *host = calloc(1, sizeof(*host));
    if (!host)
        return error_set("out of memory");
    int ret = vcpu_state_layout_caps(host, vm->kvm.fd, vm->vm_fd);
    for (unsigned i = 0; ret == 0 && i < vm->ncpus; i++)
        ret = restore_vcpu(r, &vm->vcpus[i], host);
    free(host);
    if (ret < 0)
        return -1;
    return restore_devices(r, vm);
}

int vm_snapshot_read_config(struct snapshot_cursor *c, struct vm_snapshot_machine *m)
{
    memset(m, 0, sizeof(*m));
    m->strings_mark = nloaded_strings;
    return load_config(c, &m->cfg, &m->has_mmds, &m->mmds_version, &m->imds_compat);
}

int vm_snapshot_read_machine(const struct snapshot_reader *rd, struct vm_snapshot_machine *m)
{
    memset(m, 0, sizeof(*m));
    m->strings_mark = nloaded_strings;
    struct meta meta;
    struct snapshot_cursor c;
    if (load_meta(rd, &meta) < 0 || snapshot_section(rd, "config", &c) < 0 ||
        vm_snapshot_read_config(&c, m) < 0)
        return -1;
    if (meta.ram_size != m->cfg.memory_mib << 20 || meta.ncpus != m->cfg.ncpus)
        return error_set("the snapshot's header and configuration disagree on the machine's size");
    m->cpuid = calloc(m->cfg.ncpus, sizeof(*m->cpuid));
    if (!m->cpuid)
        return error_set("out of memory");
    for (unsigned i = 0; i < m->cfg.ncpus; i++) {
        m->cpuid[i] = load_cpuid(rd, i);
        if (!m->cpuid[i])
            return -1;
    }
    return 0;
}

void vm_snapshot_machine_free(struct vm_snapshot_machine *m, bool keep_strings)
{
    for (unsigned i = 0; m->cpuid && i < m->cfg.ncpus; i++)
        free(m->cpuid[i]);
    free(m->cpuid);
    m->cpuid = NULL;
    /* A configuration nobody keeps: its strings go (a refused load no longer leaks them). */
    while (!keep_strings && nloaded_strings > m->strings_mark)
        free(loaded_strings[--nloaded_strings]);
}

int vm_snapshot_restore_state(struct vm *vm, struct event_loop *loop, const uint8_t *data,
                              size_t len, const struct vm_snapshot_load_params *p,
                              struct vm_config *cfg_out, int *status)
{
    *status = EXIT_USAGE;
    struct snapshot_reader *rd = snapshot_reader_open(data, len, SNAPSHOT_FILE_MAX);
    if (!rd)
        return -1;
    struct vm_snapshot_machine m;
    struct vm_config *cfg = &m.cfg;
    int mem_fd = -1;
    int ret = -1;
    bool built = false; /* vm holds the configuration's strings */
    if (vm_snapshot_read_machine(rd, &m) < 0)
        goto out;
    if (p->expect_ncpus && cfg->ncpus != p->expect_ncpus) {
        error_set("the state is of a machine with %u vCPUs, %u were announced", cfg->ncpus,
                  p->expect_ncpus);
        goto out;
    }
    if (apply_overrides(cfg, p) < 0)
        goto out;
    cfg->track_dirty_pages = p->track_dirty_pages;
    cfg->restore_cpuid = m.cpuid;
    cfg->ram_source = p->ram_source;
    if (p->ram_source == VM_RAM_FILE) {
        if (cfg->hugetlb) {
            error_set("a machine with huge pages restores only through a page-fault handler "
                      "(backend_type Uffd)");
            goto out;
        }
        mem_fd = open(p->backend_path, O_RDONLY | O_CLOEXEC);
        if (mem_fd < 0) {
            error_errno("cannot open the memory file '%s'", p->backend_path);
            goto out;
        }
        cfg->ram_fd = mem_fd;
    } else if (p->ram_source == VM_RAM_UFFD) {
        cfg->ram_uffd_path = p->backend_path;
    } else {
        cfg->ram_given = p->ram_given;
    }
    if (m.has_mmds && p->mmds) {
        mmds_store_configure(p->mmds, (enum mmds_version)m.mmds_version, m.imds_compat,
                             p->instance_id);
        cfg->mmds = p->mmds;
    }
    if (vm_create(vm, cfg, loop) < 0) {
        *status = vm->create_status;
        error_prefix("cannot build the snapshot's machine");
        vm_destroy(vm);
        goto out;
    }
    built = true;
    *status = EXIT_USAGE;
    if (restore_machine(rd, vm, p->clock_realtime) < 0) {
        built = false;
        error_prefix("cannot restore the snapshot");
        vm_destroy(vm);
        goto out;
    }
    /* Paused from its first instruction on: vCPUs park before their first KVM_RUN. */
    vm->paused = !p->resume_vm;
    if (vm_start(vm, p->attach_console) < 0) {
        *status = EXIT_HOST_ERROR;
        goto out;
    }
    *cfg_out = *cfg;
    ret = 0;
out:
    if (mem_fd >= 0)
        close(mem_fd);
    /* The vCPUs have their CPUID; the snapshot's bytes are no longer needed. */
    vm_snapshot_machine_free(&m, built);
    if (ret == 0)
        vm->cfg.restore_cpuid = NULL;
    snapshot_reader_free(rd);
    return ret;
}

int vm_snapshot_load(struct vm *vm, struct event_loop *loop,
                     const struct vm_snapshot_load_params *p, struct vm_config *cfg_out,
                     int *status)
{
    *status = EXIT_USAGE;
    int fd = open(p->snapshot_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_errno("cannot open the snapshot file '%s'", p->snapshot_path);
    uint8_t *data = NULL;
    size_t len = 0;
    struct stat st;
    int r = fstat(fd, &st) < 0 ? error_errno("cannot stat '%s'", p->snapshot_path)
            : !S_ISREG(st.st_mode)
                ? error_set("the snapshot file '%s' is not a regular file", p->snapshot_path)
                : snapshot_read_fd(fd, SNAPSHOT_FILE_MAX, &data, &len);
    close(fd);
    if (r < 0)
        return -1;
    r = vm_snapshot_restore_state(vm, loop, data, len, p, cfg_out, status);
    free(data);
    return r < 0 ? error_prefix("snapshot '%s'", p->snapshot_path) : 0;
}

/* ---- describe ---------------------------------------------------------------------------- */

int vm_snapshot_describe(const char *path, FILE *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return error_errno("cannot open '%s'", path);
    uint8_t *data = NULL;
    size_t len = 0;
    int r = snapshot_read_fd(fd, SNAPSHOT_FILE_MAX, &data, &len);
    close(fd);
    if (r < 0)
        return error_prefix("'%s'", path);
    struct snapshot_reader *rd = snapshot_reader_open(data, len, SNAPSHOT_FILE_MAX);
    if (!rd) {
        free(data);
        return error_prefix("'%s'", path);
    }
    struct meta m;
    r = load_meta(rd, &m);
    if (r == 0) {
        fprintf(out, "v%u.0.0\n", snapshot_reader_version(rd));
        fprintf(out, "created by: %s\ntype: %s\nmemory: %llu MiB\nvCPUs: %u\nsections:", m.creator,
                m.type == VM_SNAPSHOT_DIFF ? "Diff" : "Full",
                (unsigned long long)(m.ram_size >> 20), m.ncpus);
        for (size_t i = 0; i < snapshot_reader_section_count(rd); i++)
            fprintf(out, " %s (%zu)", snapshot_reader_section_name(rd, i),
                    snapshot_reader_section_length(rd, i));
        fputc('\n', out);
    }
    snapshot_reader_free(rd);
    free(data);
    return r < 0 ? error_prefix("'%s'", path) : 0;
}
