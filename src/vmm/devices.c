#include "vmm/devices.h"

#include "arch/x86/layout.h"
#include "util/error.h"
#include "util/log.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/net.h"
#include "virtio/pmem.h"
#include "virtio/rng.h"
#include "virtio/vhost_user_blk.h"
#include "virtio/vhost_user_fs.h"
#include "virtio/vhost_user_net.h"
#include "virtio/vsock.h"
#include "vmm/vm.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* Interrupt lines for virtio-mmio devices, edge-triggered ISA lines as the
 * MP table lists them (pins 16-23 included: no PCI device takes them when
 * devices are on virtio-mmio), 19 in all as Firecracker's GSI 5-23. Never
 * the PIT (0), keyboard (1), cascade (2) or COM2/COM1 (3, 4). The lines a
 * guest's own drivers may claim come last: the PS/2 mouse (12), the FPU
 * error line (13) and the RTC alarm (8; ember's RTC raises none, Linux's
 * rtc-cmos still asks for it). */
static const unsigned mmio_irqs[] = {5,  6,  7,  9,  10, 11, 14, 15, 16, 17,
                                     18, 19, 20, 21, 22, 23, 12, 13, 8};
_Static_assert(sizeof(mmio_irqs) / sizeof(mmio_irqs[0]) == VM_MAX_MMIO_DEVICES,
               "one interrupt line per virtio-mmio device");
#define PCI_WINDOW_START 0xe0000000ULL
#define PCI_WINDOW_END   0xfec00000ULL

static int attach(struct vm *vm, struct virtio_dev *dev, void *model, void (*destroy)(void *))
{
    struct vm_virtio *v = calloc(1, sizeof(*v));
    if (!v)
        return error_set("out of memory");
    v->dev = dev;
    v->model = model;
    v->destroy = destroy;
    vm->virtio[vm->nvirtio++] = v;
    if (vm->cfg.transport == TRANSPORT_PCI) {
        v->on_pci = true;
        return virtio_pci_init(&v->pci, dev, &vm->pci, &vm->irqchip, vm->vm_fd);
    }
    unsigned index = vm->next_mmio_irq;
    if (index >= VM_MAX_MMIO_DEVICES)
        return error_set("too many virtio-mmio devices: no interrupt line is left for %s (at "
                         "most %d devices, as in Firecracker); use --transport pci (ember run) "
                         "or --enable-pci (API) for more",
                         dev->name, VM_MAX_MMIO_DEVICES);
    vm->next_mmio_irq++;
    uint64_t base = LAYOUT_VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_WINDOW;
    if (virtio_mmio_init(&v->mmio, dev, vm->vm_fd, base, mmio_irqs[index]) < 0)
        return -1;
    return bus_register(&vm->mmio, base, VIRTIO_MMIO_WINDOW, virtio_mmio_io, &v->mmio, dev->name);
}

/* The machine-wide polling bound of the I/O threads: a CPU placement's (0: none). */
static unsigned machine_poll_us(const struct vm_config *cfg)
{
    return cfg->placement.set ? cfg->placement.poll_us : 0;
}

static void destroy_blk(void *model)
{
    virtio_blk_destroy(model);
    free(model);
}

static void destroy_vhost_user_blk(void *model)
{
    vhost_user_blk_destroy(model);
    free(model);
}

/* A drive whose data path is a vhost-user back-end. */
static int create_vhost_user_drive(struct vm *vm, const struct drive_config *dc, const char *name)
{
    struct vhost_user_blk *b = calloc(1, sizeof(*b));
    if (!b)
        return error_set("out of memory");
    struct vhost_user_blk_options o = {
        .socket = dc->socket, .unsafe = dc->unsafe, .reconnect_s = dc->reconnect_s};
    if (vhost_user_blk_init(b, name, &o, &vm->mem) < 0) {
        vhost_user_blk_destroy(b);
        free(b);
        return -1;
    }
    if (attach(vm, &b->vud.dev, b, destroy_vhost_user_blk) < 0)
        return -1;
    vm->virtio[vm->nvirtio - 1]->vhost_user = true;
    vm->virtio[vm->nvirtio - 1]->drive_id = dc->id;
    log_info("%s: vhost-user back-end at %s, %llu sectors, %u queue(s)", name, dc->socket,
             (unsigned long long)b->capacity, b->vud.dev.nqueues);
    return 0;
}

static void destroy_vhost_user_fs(void *model)
{
    vhost_user_fs_destroy(model);
    free(model);
}

static int create_vhost_user_fs(struct vm *vm, const struct fs_config *fc, const char *name)
{
    struct vhost_user_fs *f = calloc(1, sizeof(*f));
    if (!f)
        return error_set("out of memory");
    struct vhost_user_fs_options o = {.tag = fc->tag,
                                      .socket = fc->socket,
                                      .num_queues = fc->num_queues,
                                      .reconnect_s = fc->reconnect_s};
    if (vhost_user_fs_init(f, name, &o, &vm->mem) < 0) {
        vhost_user_fs_destroy(f);
        free(f);
        return -1;
    }
    if (attach(vm, &f->vud.dev, f, destroy_vhost_user_fs) < 0)
        return -1;
    vm->virtio[vm->nvirtio - 1]->vhost_user = true;
    log_info("%s: virtio-fs '%s', vhost-user back-end at %s, %u request queue(s)", name, fc->tag,
             fc->socket, f->vud.dev.nqueues - 1);
    return 0;
}

static void destroy_vhost_user_net(void *model)
{
    vhost_user_net_destroy(model);
    free(model);
}

/* A network interface whose data path is a vhost-user back-end. */
static int create_vhost_user_net(struct vm *vm, const struct net_config *nc, const char *name)
{
    if (nc->mmds_ipv4)
        return error_set("%s: MMDS answers on ember's own network data path, not on a vhost-user "
                         "back-end's",
                         nc->id ? nc->id : name);
    struct vhost_user_net *n = calloc(1, sizeof(*n));
    if (!n)
        return error_set("out of memory");
    struct vhost_user_net_options o = {.id = nc->id,
                                       .socket = nc->vhost_user_socket,
                                       .server = nc->vhost_user_server,
                                       .has_mac = nc->has_mac,
                                       .reconnect_s = nc->reconnect_s};
    memcpy(o.mac, nc->mac, 6);
    if (vhost_user_net_init(n, name, &o, &vm->mem) < 0) {
        vhost_user_net_destroy(n);
        free(n);
        return -1;
    }
    if (attach(vm, &n->vud.dev, n, destroy_vhost_user_net) < 0)
        return -1;
    vm->virtio[vm->nvirtio - 1]->vhost_user = true;
    const uint8_t *m = n->opts.mac;
    log_info("%s: vhost-user back-end at %s (%s mode), MAC %02x:%02x:%02x:%02x:%02x:%02x, "
             "features 0x%llx of the back-end's 0x%llx",
             name, nc->vhost_user_socket, nc->vhost_user_server ? "server" : "client", m[0], m[1],
             m[2], m[3], m[4], m[5], (unsigned long long)n->vud.dev.host_features,
             (unsigned long long)n->vud.backend_features);
    return 0;
}

static void destroy_net(void *model)
{
    virtio_net_destroy(model);
    free(model);
}

/* "tcp:8080:80+udp:5353:53" into slirp forwards. */
static int parse_forwards(const char *spec, struct net_options *o)
{
    const char *p = spec;
    while (p && *p) {
        char proto[4];
        unsigned host, guest;
        int used = 0;
        if (sscanf(p, "%3[a-z]:%u:%u%n", proto, &host, &guest, &used) != 3 || host == 0 ||
            host > 65535 || guest == 0 || guest > 65535 ||
            (strcmp(proto, "tcp") && strcmp(proto, "udp")))
            return error_set("bad port forward '%s' (use tcp:HOSTPORT:GUESTPORT)", p);
        if (o->nforwards == NET_MAX_FORWARDS)
            return error_set("at most %d port forwards", NET_MAX_FORWARDS);
        o->forwards[o->nforwards++] = (struct slirp_forward){.udp = !strcmp(proto, "udp"),
                                                             .host_port = (uint16_t)host,
                                                             .guest_port = (uint16_t)guest};
        p += used;
        if (*p == '+')
            p++;
        else if (*p)
            return error_set("bad port forward list '%s'", spec);
    }
    return 0;
}

static void destroy_rng(void *model)
{
    virtio_rng_destroy(model);
    free(model);
}

static void destroy_console(void *model)
{
    virtio_console_destroy(model);
    free(model);
}

static void destroy_vsock(void *model)
{
    virtio_vsock_destroy(model);
    free(model);
}

static void destroy_pmem(void *model)
{
    virtio_pmem_destroy(model);
    free(model);
}

/* KVM memory slots: RAM takes the first ones (at most 2: below and above
 * the hole), pmem devices the ones after. */
#define PMEM_FIRST_SLOT 2

int vm_create_pmem_regions(struct vm *vm)
{
    const struct vm_config *cfg = &vm->cfg;
    if (!cfg->npmem)
        return 0;
    if (cfg->npmem > VM_MAX_PMEM)
        return error_set("at most %d pmem devices", VM_MAX_PMEM);
    /* Past the end of RAM and the 32-bit hole, whichever is higher. */
    uint64_t ram_end = LAYOUT_MMIO_HOLE_END;
    for (unsigned i = 0; i < vm->mem.nregions; i++) {
        uint64_t end = vm->mem.regions[i].gpa + vm->mem.regions[i].size;
        if (end > ram_end)
            ram_end = end;
    }
    uint64_t area = (ram_end + LAYOUT_PMEM_AREA_ALIGN - 1) & ~(LAYOUT_PMEM_AREA_ALIGN - 1);
    uint64_t next = area;
    for (unsigned i = 0; i < cfg->npmem; i++) {
        const struct pmem_config *pc = &cfg->pmem[i];
        struct virtio_pmem *p = calloc(1, sizeof(*p));
        if (!p)
            return error_set("out of memory");
        char name[16];
        snprintf(name, sizeof(name), "pmem%u", i);
        struct pmem_options o = {
            .id = pc->id, .path = pc->path, .readonly = pc->readonly, .rate_limit = pc->rate_limit};
        if (virtio_pmem_init(p, name, &o, &vm->mem) < 0) {
            destroy_pmem(p);
            return -1;
        }
        vm->pmem[i] = p;
        if (p->map_len > LAYOUT_PMEM_AREA_MAX - (next - area))
            return error_set("pmem '%s': '%s' does not fit: the pmem devices take at most %llu "
                             "GiB of guest physical memory in all",
                             pc->id ? pc->id : name, pc->path,
                             (unsigned long long)(LAYOUT_PMEM_AREA_MAX >> 30));
        virtio_pmem_set_region(p, next);
        struct kvm_userspace_memory_region region = {
            .slot = PMEM_FIRST_SLOT + i,
            .flags = pc->readonly ? KVM_MEM_READONLY : 0,
            .guest_phys_addr = next,
            .memory_size = p->map_len,
            .userspace_addr = (uintptr_t)p->map,
        };
        if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
            return error_errno("pmem '%s': KVM_SET_USER_MEMORY_REGION (slot %u, %llu MiB at "
                               "0x%llx)",
                               pc->id ? pc->id : name, region.slot,
                               (unsigned long long)(p->map_len >> 20), (unsigned long long)next);
        /* Writes to a read-only slot come back as MMIO exits. */
        if (pc->readonly &&
            bus_register(&vm->mmio, next, p->map_len, virtio_pmem_readonly_io, p, name) < 0)
            return -1;
        log_info("%s: %s, %llu bytes at 0x%llx (%llu MiB), %s", name, pc->path,
                 (unsigned long long)p->file_len, (unsigned long long)next,
                 (unsigned long long)(p->map_len >> 20), pc->readonly ? "read-only" : "read-write");
        next += p->map_len;
    }
    return 0;
}

static void console_output(void *opaque, const uint8_t *buf, size_t len)
{
    struct vm *vm = opaque;
    stdio_console_output(&vm->console, buf, len);
}

static void console_input_space(void *opaque)
{
    struct vm *vm = opaque;
    stdio_console_resume(&vm->console);
}

static int append_cmdline(struct vm *vm, const char *extra)
{
    size_t old = strlen(vm->full_cmdline), add = strlen(extra);
    char *s = realloc(vm->full_cmdline, old + add + 2);
    if (!s)
        return error_set("out of memory");
    if (old)
        s[old++] = ' ';
    memcpy(s + old, extra, add + 1);
    vm->full_cmdline = s;
    return 0;
}

/* True when `word` is one of the command line's space-separated words. */
static bool cmdline_has_word(const char *cmdline, const char *word)
{
    size_t k = strlen(word);
    for (const char *p = cmdline; *p;) {
        p += strspn(p, " ");
        size_t len = strcspn(p, " ");
        if (len == k && !strncmp(p, word, k))
            return true;
        p += len;
    }
    return false;
}

int vm_create_virtio_devices(struct vm *vm)
{
    const struct vm_config *cfg = &vm->cfg;
    vm->full_cmdline = strdup(cfg->cmdline);
    if (!vm->full_cmdline)
        return error_set("out of memory");
    if (cfg->transport == TRANSPORT_PCI) {
        if (pci_bus_init(&vm->pci, &vm->pio, &vm->mmio, PCI_WINDOW_START, PCI_WINDOW_END) < 0)
            return -1;
        vm->has_pci = true;
    }
    /* The root drive goes first so that the guest names it vda. */
    unsigned order[VM_MAX_DRIVES], n = 0, roots = 0;
    for (unsigned i = 0; i < cfg->ndrives; i++) {
        if (cfg->drives[i].is_root) {
            order[n++] = i;
            roots++;
        }
    }
    for (unsigned i = 0; i < cfg->npmem; i++)
        roots += cfg->pmem[i].is_root;
    if (roots > 1)
        return error_set("only one drive or pmem device can be the root device");
    for (unsigned i = 0; i < cfg->ndrives; i++) {
        if (!cfg->drives[i].is_root)
            order[n++] = i;
    }
    for (unsigned k = 0; k < cfg->ndrives; k++) {
        unsigned i = order[k];
        const struct drive_config *dc = &cfg->drives[i];
        char name[16];
        snprintf(name, sizeof(name), "blk%u", k);
        if (dc->socket) {
            if (create_vhost_user_drive(vm, dc, name) < 0)
                return -1;
            continue;
        }
        struct virtio_blk *b = calloc(1, sizeof(*b));
        if (!b)
            return error_set("out of memory");
        struct blk_options o = {.path = dc->path,
                                .id = dc->id,
                                .readonly = dc->readonly,
                                .direct = dc->direct,
                                .unsafe = dc->unsafe,
                                .queues = dc->queues,
                                .poll_us = dc->poll_us ? dc->poll_us : machine_poll_us(cfg),
                                .poll_adaptive = !dc->poll_us,
                                .engine =
                                    cfg->blk_sync ? BLK_ENGINE_SYNC : (enum blk_engine)dc->engine,
                                .rate_limit = dc->rate_limit};
        if (virtio_blk_init(b, name, &o, &vm->mem) < 0) {
            virtio_blk_destroy(b);
            free(b);
            return -1;
        }
        if (attach(vm, &b->dev, b, destroy_blk) < 0)
            return -1;
        log_info("%s: %s, %llu sectors, %s%s, %u queue(s), %s I/O", name, dc->path,
                 (unsigned long long)b->capacity, dc->readonly ? "read-only" : "read-write",
                 dc->direct ? ", cache=none" : "", o.queues ? o.queues : 1,
                 blk_backend_kind(&b->backend));
    }
    for (unsigned i = 0; i < cfg->nnets; i++) {
        const struct net_config *nc = &cfg->nets[i];
        if (nc->vhost_user_socket) {
            char name[16];
            snprintf(name, sizeof(name), "net%u", i);
            if (create_vhost_user_net(vm, nc, name) < 0)
                return -1;
            continue;
        }
        struct virtio_net *net = calloc(1, sizeof(*net));
        if (!net)
            return error_set("out of memory");
        struct net_options o = {.id = nc->id,
                                .tap = nc->tap,
                                .user = nc->user,
                                .has_mac = nc->has_mac,
                                .mtu = nc->mtu,
                                .vhost = (enum vhost_mode)nc->vhost,
                                .sndbuf = nc->sndbuf,
                                .rx_limit = nc->rx_limit,
                                .tx_limit = nc->tx_limit,
                                .mmds = nc->mmds_ipv4 ? cfg->mmds : NULL,
                                .mmds_ipv4 = nc->mmds_ipv4,
                                .poll_us = machine_poll_us(cfg),
                                .poll_adaptive = true};
        memcpy(o.mac, nc->mac, 6);
        /* The API attached the tap at its PUT and keeps its descriptor: the
         * device takes a copy. */
        if (nc->has_tap_fd) {
            o.tap_fd = fcntl(nc->tap_fd, F_DUPFD_CLOEXEC, 0);
            if (o.tap_fd < 0) {
                free(net);
                return error_errno("tap '%s'", nc->tap);
            }
            o.has_tap_fd = true;
        }
        char name[16];
        snprintf(name, sizeof(name), "net%u", i);
        if ((nc->forwards && parse_forwards(nc->forwards, &o) < 0) ||
            virtio_net_init(net, name, &o, &vm->mem) < 0) {
            virtio_net_destroy(net);
            free(net);
            return -1;
        }
        if (attach(vm, &net->dev, net, destroy_net) < 0)
            return -1;
        log_info("%s: %s%s%s%s", name, net->be.kind, nc->tap ? " " : "", nc->tap ? nc->tap : "",
                 net->mmds ? ", MMDS" : "");
    }
    if (cfg->console == CONSOLE_VIRTIO) {
        struct virtio_console *c = calloc(1, sizeof(*c));
        if (!c)
            return error_set("out of memory");
        if (virtio_console_init(c, &vm->mem, console_output, console_input_space, vm) < 0 ||
            attach(vm, &c->dev, c, destroy_console) < 0)
            return -1;
        vm->vconsole = c;
    }
    if (cfg->rng) {
        struct virtio_rng *r = calloc(1, sizeof(*r));
        if (!r)
            return error_set("out of memory");
        uint64_t rate = cfg->rng_rate, burst = 0;
        if (cfg->rng_limit.size && cfg->rng_limit.refill_ms) {
            rate = cfg->rng_limit.size * 1000 / cfg->rng_limit.refill_ms;
            burst = cfg->rng_limit.size;
        }
        if (virtio_rng_init(r, &vm->mem, rate, burst) < 0 ||
            attach(vm, &r->dev, r, destroy_rng) < 0)
            return -1;
    }
    for (unsigned i = 0; i < cfg->npmem; i++) {
        struct virtio_pmem *p = vm->pmem[i];
        if (!p)
            return error_set("pmem%u was not mapped", i);
        vm->pmem[i] = NULL; /* the attached device owns it now */
        if (attach(vm, &p->dev, p, destroy_pmem) < 0)
            return -1;
    }
    if (cfg->nfs > VM_MAX_FS)
        return error_set("at most %d virtio-fs devices", VM_MAX_FS);
    for (unsigned i = 0; i < cfg->nfs; i++) {
        char name[16];
        snprintf(name, sizeof(name), "fs%u", i);
        if (create_vhost_user_fs(vm, &cfg->fs[i], name) < 0)
            return -1;
    }
    if (cfg->vsock.uds_path) {
        struct virtio_vsock *vs = calloc(1, sizeof(*vs));
        if (!vs)
            return error_set("out of memory");
        /* The API bound the socket at its PUT and keeps it: the device takes a copy. */
        int listen_fd = -1;
        if (cfg->vsock.has_listen_fd &&
            (listen_fd = fcntl(cfg->vsock.listen_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
            free(vs);
            return error_errno("vsock: %s", cfg->vsock.uds_path);
        }
        if (virtio_vsock_init_listening(vs, cfg->vsock.guest_cid, cfg->vsock.uds_path, listen_fd,
                                        &vm->mem) < 0) {
            /* Not the device's to remove: a shared path stays with its owner. */
            vs->keep_path = cfg->vsock.path_shared;
            virtio_vsock_destroy(vs);
            free(vs);
            return -1;
        }
        vs->keep_path = cfg->vsock.path_shared;
        vs->poll_us = machine_poll_us(cfg);
        vs->poll_adaptive = true;
        if (attach(vm, &vs->dev, vs, destroy_vsock) < 0)
            return -1;
        log_info("vsock: guest CID %llu, host socket %s", (unsigned long long)cfg->vsock.guest_cid,
                 cfg->vsock.uds_path);
    }
    for (unsigned i = 0; i < cfg->ndrives; i++) {
        const struct drive_config *dc = &cfg->drives[i];
        if (!dc->is_root)
            continue;
        char arg[128];
        if (dc->partuuid)
            snprintf(arg, sizeof(arg), "root=PARTUUID=%s %s", dc->partuuid,
                     dc->readonly ? "ro" : "rw");
        else
            snprintf(arg, sizeof(arg), "root=/dev/vda %s", dc->readonly ? "ro" : "rw");
        if (append_cmdline(vm, arg) < 0)
            return -1;
    }
    for (unsigned i = 0; i < cfg->npmem; i++) {
        if (!cfg->pmem[i].is_root)
            continue;
        /* Firecracker's words: the guest names them pmem0, pmem1, ... in order. */
        char arg[64];
        snprintf(arg, sizeof(arg), "root=/dev/pmem%u %s", i, cfg->pmem[i].readonly ? "ro" : "rw");
        if (append_cmdline(vm, arg) < 0)
            return -1;
    }
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->on_pci)
            continue;
        char arg[80];
        virtio_mmio_cmdline(&vm->virtio[i]->mmio, arg, sizeof(arg));
        if (append_cmdline(vm, arg) < 0)
            return -1;
    }
    /* Without a PCI bus, Linux would still probe configuration space (every
     * probe an exit); Firecracker adds pci=off in that case, and so does ember
     * (once: not when the user's arguments say it already). */
    if (!vm->has_pci && !cmdline_has_word(vm->full_cmdline, "pci=off") &&
        append_cmdline(vm, "pci=off") < 0)
        return -1;
    return 0;
}

void vm_destroy_virtio_devices(struct vm *vm)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct vm_virtio *v = vm->virtio[i];
        /* Stop the device (draining I/O) before its transport goes. */
        if (v->destroy)
            v->destroy(v->model);
        if (v->on_pci)
            virtio_pci_destroy(&v->pci);
        else
            virtio_mmio_destroy(&v->mmio);
        free(v);
    }
    vm->nvirtio = 0;
    for (unsigned i = 0; i < VM_MAX_PMEM; i++) {
        if (vm->pmem[i])
            destroy_pmem(vm->pmem[i]);
        vm->pmem[i] = NULL;
    }
    free(vm->full_cmdline);
    vm->full_cmdline = NULL;
    if (vm->has_pci)
        pci_bus_destroy(&vm->pci);
    vm->has_pci = false;
}

const char *vm_vhost_user_device(const struct vm *vm)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->vhost_user)
            return vm->virtio[i]->dev->name;
    }
    return NULL;
}

bool vm_config_wants_vhost_user(const struct vm_config *cfg)
{
    for (unsigned i = 0; i < cfg->ndrives; i++) {
        if (cfg->drives[i].socket)
            return true;
    }
    for (unsigned i = 0; i < cfg->nnets; i++) {
        if (cfg->nets[i].vhost_user_socket)
            return true;
    }
    return cfg->nfs > 0;
}

uint32_t vm_pci_slots(const struct vm *vm)
{
    uint32_t slots = 0;
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->on_pci)
            slots |= 1u << vm->virtio[i]->pci.fn.slot;
    }
    return slots;
}

int vm_set_drive_locks(struct vm *vm, bool held)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct vm_virtio *v = vm->virtio[i];
        if (v->dev->device_id != VIRTIO_ID_BLOCK || v->vhost_user)
            continue;
        struct virtio_blk *blk = v->model;
        if (blk_backend_set_lock(&blk->backend, held) < 0)
            return error_prefix("%s", v->dev->name);
    }
    return 0;
}

int vm_net_tap_fd(const struct vm *vm, unsigned index)
{
    unsigned seen = 0;
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        const struct vm_virtio *v = vm->virtio[i];
        if (v->dev->device_id != VIRTIO_ID_NET)
            continue;
        if (seen++ != index)
            continue;
        if (v->vhost_user)
            return -1;
        const struct virtio_net *n = v->model;
        return n->be.kind && !strcmp(n->be.kind, "tap") ? n->be.rx_fd : -1;
    }
    return -1;
}

void vm_vsock_own_path(struct vm *vm)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct vm_virtio *v = vm->virtio[i];
        if (v->dev->device_id == VIRTIO_ID_VSOCK)
            ((struct virtio_vsock *)v->model)->keep_path = false;
    }
}

int vm_vsock_listen_fd(const struct vm *vm)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        const struct vm_virtio *v = vm->virtio[i];
        if (v->dev->device_id == VIRTIO_ID_VSOCK)
            return ((const struct virtio_vsock *)v->model)->listen_fd;
    }
    return -1;
}
