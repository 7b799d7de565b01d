#include "api/metrics.h"

#include "mmds/store.h"
#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/log.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/net.h"
#include "virtio/pmem.h"
#include "virtio/rng.h"
#include "virtio/vsock.h"
#include "vmm/devices.h"
#include "vmm/vcpu.h"
#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void api_metrics_init(struct api_metrics *m)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

int api_metrics_open(struct api_metrics *m, const char *path)
{
    /* Read-write and non-blocking, as Firecracker opens it: a FIFO nobody
     * reads yet opens at once (write-only would fail with ENXIO; ember
     * holding a read end also means no EPIPE), and a reader that does not
     * keep up costs metrics lines, counted, never the main loop. */
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0)
        return error_errno("cannot open metrics file '%s'", path);
    if (m->fd >= 0)
        close(m->fd);
    m->fd = fd;
    seccomp_set_metrics_fd(fd);
    return 0;
}

/* Writes what is left of a line a full FIFO took only in part; true once
 * nothing is left. A line longer than PIPE_BUF can be cut short, and the
 * reader must never get half a line followed by the next one. */
static bool finish_pending(struct api_metrics *m)
{
    while (m->pending_len) {
        ssize_t w = write(m->fd, m->pending + m->pending_off, m->pending_len);
        if (w <= 0)
            return false;
        m->pending_off += (size_t)w;
        m->pending_len -= (size_t)w;
    }
    free(m->pending);
    m->pending = NULL;
    m->pending_off = 0;
    return true;
}

bool api_metrics_enabled(const struct api_metrics *m)
{
    return m->fd >= 0;
}

void api_metrics_watch_server(struct api_metrics *m, const struct api_server_stats *stats)
{
    m->server = stats;
}

void api_metrics_set_startup(struct api_metrics *m, uint64_t wall_us, uint64_t cpu_us)
{
    m->startup_time_us = wall_us;
    m->startup_time_cpu_us = cpu_us;
}

/* The start-up gauges, as Firecracker names them. */
static void add_startup(cJSON *api, const struct api_metrics *m)
{
    static const char *const names[] = {"process_startup_time_us", "process_startup_time_cpu_us"};
    const uint64_t values[] = {m->startup_time_us, m->startup_time_cpu_us};
    for (int i = 0; i < 2; i++) {
        cJSON *o = cJSON_GetObjectItemCaseSensitive(api, names[i]);
        if (o)
            cJSON_SetNumberValue(o, (double)values[i]);
        else
            cJSON_AddNumberToObject(api, names[i], (double)values[i]);
    }
}

void api_metrics_count_request(struct api_metrics *m, const char *route, int status)
{
    for (unsigned i = 0; i < m->nroutes; i++) {
        if (m->routes[i].status == status && !strcmp(m->routes[i].route, route)) {
            m->routes[i].count++;
            return;
        }
    }
    if (m->nroutes == m->routes_cap) {
        unsigned cap = m->routes_cap ? m->routes_cap * 2 : 16;
        struct api_route_count *n = realloc(m->routes, cap * sizeof(*n));
        if (!n)
            return;
        m->routes = n;
        m->routes_cap = cap;
    }
    struct api_route_count *r = &m->routes[m->nroutes++];
    snprintf(r->route, sizeof(r->route), "%s", route);
    r->status = status;
    r->count = 1;
}

/* Device threads update these counters; a relaxed read may be a little
 * stale, never torn (aligned 64-bit loads). */
static double counter(const uint64_t *v)
{
    return (double)__atomic_load_n(v, __ATOMIC_RELAXED);
}

static void add_vcpus(cJSON *root, struct vm *vm)
{
    cJSON *all = cJSON_AddObjectToObject(root, "vcpu");
    uint64_t exits = 0, io = 0, mmio = 0, intr = 0;
    for (unsigned i = 0; i < vm->ncpus && vm->vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        uint64_t e = __atomic_load_n(&v->exits, __ATOMIC_RELAXED);
        uint64_t pio = __atomic_load_n(&v->io_exits, __ATOMIC_RELAXED);
        uint64_t mm = __atomic_load_n(&v->mmio_exits, __ATOMIC_RELAXED);
        uint64_t in = __atomic_load_n(&v->intr_exits, __ATOMIC_RELAXED);
        char name[16];
        snprintf(name, sizeof(name), "vcpu%u", i);
        cJSON *o = cJSON_AddObjectToObject(root, name);
        cJSON_AddNumberToObject(o, "exits", (double)e);
        cJSON_AddNumberToObject(o, "exit_io", (double)pio);
        cJSON_AddNumberToObject(o, "exit_mmio", (double)mm);
        cJSON_AddNumberToObject(o, "exit_signal", (double)in);
        cJSON_AddNumberToObject(o, "exit_other", (double)(e - pio - mm - in));
        cJSON_AddNumberToObject(o, "unhandled_io", counter(&v->unhandled_io));
        exits += e;
        io += pio;
        mmio += mm;
        intr += in;
    }
    cJSON_AddNumberToObject(all, "exits", (double)exits);
    cJSON_AddNumberToObject(all, "exit_io", (double)io);
    cJSON_AddNumberToObject(all, "exit_mmio", (double)mmio);
    cJSON_AddNumberToObject(all, "exit_signal", (double)intr);
    cJSON_AddNumberToObject(all, "exit_other", (double)(exits - io - mmio - intr));
}

struct metric_field {
    const char *key;
    const uint64_t *v;
};

/* A device's counters under name, and added into total when there is one. */
static void add_fields(cJSON *root, cJSON *total, const char *name, const struct metric_field *f,
                       size_t n)
{
    cJSON *o = cJSON_AddObjectToObject(root, name);
    for (size_t i = 0; i < n; i++) {
        double v = counter(f[i].v);
        cJSON_AddNumberToObject(o, f[i].key, v);
        if (!total)
            continue;
        cJSON *t = cJSON_GetObjectItemCaseSensitive(total, f[i].key);
        if (t)
            cJSON_SetNumberValue(t, t->valuedouble + v);
        else
            cJSON_AddNumberToObject(total, f[i].key, v);
    }
}

#define ADD_FIELDS(root, total, name, f)                                                           \
    add_fields(root, total, name, f, sizeof(f) / sizeof((f)[0]))

static void add_blk(cJSON *root, cJSON *total, struct virtio_blk *b)
{
    char name[64];
    snprintf(name, sizeof(name), "block_%s", b->opts.id ? b->opts.id : b->dev.name);
    const struct metric_field f[] = {
        {"read_count", &b->reads},          {"write_count", &b->writes},
        {"read_bytes", &b->read_bytes},     {"write_bytes", &b->write_bytes},
        {"flush_count", &b->flushes},       {"discard_count", &b->discards},
        {"io_errors", &b->errors},          {"unsupported", &b->unsupported},
        {"interrupts", &b->dev.interrupts}, {"queue_kicks", &b->dev.kicks}};
    ADD_FIELDS(root, total, name, f);
}

static void add_net(cJSON *root, cJSON *total, struct virtio_net *n)
{
    char name[64];
    snprintf(name, sizeof(name), "net_%s", n->opts.id ? n->opts.id : n->dev.name);
    /* rx: towards the guest; dropped: a frame larger than the guest's buffers, or one the
     * host could not give; tx dropped: malformed frames from the guest. */
    const struct metric_field f[] = {
        {"rx_packets_count", &n->rx_frames},    {"rx_bytes_count", &n->rx_bytes},
        {"rx_dropped_count", &n->rx_dropped},   {"tx_packets_count", &n->tx_frames},
        {"tx_bytes_count", &n->tx_bytes},       {"tx_dropped_count", &n->tx_dropped},
        {"tx_waits_for_room", &n->tx_pushback}, {"interrupts", &n->dev.interrupts},
        {"queue_kicks", &n->dev.kicks}};
    ADD_FIELDS(root, total, name, f);
    /* Frames the guest had no buffers for wait in the tap, and the kernel drops them there. */
    uint64_t host_drops;
    if (n->opts.tap && net_tap_host_drops(n->opts.tap, &host_drops) == 0) {
        cJSON_AddNumberToObject(cJSON_GetObjectItemCaseSensitive(root, name),
                                "rx_tap_dropped_count", (double)host_drops);
        cJSON *t = cJSON_GetObjectItemCaseSensitive(total, "rx_tap_dropped_count");
        if (t)
            cJSON_SetNumberValue(t, t->valuedouble + (double)host_drops);
        else
            cJSON_AddNumberToObject(total, "rx_tap_dropped_count", (double)host_drops);
    }
}

static void add_vsock(cJSON *root, struct virtio_vsock *v)
{
    const struct metric_field f[] = {{"rx_packets_count", &v->rx_packets},
                                     {"rx_bytes_count", &v->rx_bytes},
                                     {"tx_packets_count", &v->tx_packets},
                                     {"tx_bytes_count", &v->tx_bytes},
                                     {"conns_opened", &v->conns_opened},
                                     {"conns_refused", &v->conns_refused},
                                     {"rsts_sent", &v->rsts_sent},
                                     {"bad_packets", &v->bad_packets},
                                     {"credit_violations", &v->credit_violations}};
    ADD_FIELDS(root, NULL, "vsock", f);
}

void api_metrics_watch_mmds(struct api_metrics *m, const struct mmds_metrics *mmds)
{
    m->mmds = mmds;
}

/* Firecracker's `mmds` group, under its names. */
static void add_mmds(cJSON *root, const struct mmds_metrics *mm)
{
    const struct {
        const char *key;
        const _Atomic uint64_t *v;
    } f[] = {{"rx_accepted", &mm->rx_accepted},
             {"rx_accepted_err", &mm->rx_accepted_err},
             {"rx_accepted_unusual", &mm->rx_accepted_unusual},
             {"rx_bad_eth", &mm->rx_bad_eth},
             {"rx_invalid_token", &mm->rx_invalid_token},
             {"rx_no_token", &mm->rx_no_token},
             {"rx_count", &mm->rx_count},
             {"tx_bytes", &mm->tx_bytes},
             {"tx_count", &mm->tx_count},
             {"tx_errors", &mm->tx_errors},
             {"tx_frames", &mm->tx_frames},
             {"connections_created", &mm->connections_created},
             {"connections_destroyed", &mm->connections_destroyed}};
    cJSON *o = cJSON_AddObjectToObject(root, "mmds");
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        cJSON_AddNumberToObject(o, f[i].key,
                                (double)atomic_load_explicit(f[i].v, memory_order_relaxed));
}

/* Firecracker's pmem groups: `pmem_<id>` per device and `pmem` summing
 * them, its field names first, then ember's own (flushes done, writes to a
 * read-only device dropped). */
static void add_pmem_groups(cJSON *root, struct vm *vm)
{
    cJSON *total = NULL;
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->dev->device_id != VIRTIO_ID_PMEM)
            continue;
        struct virtio_pmem *p = vm->virtio[i]->model;
        uint64_t event_fails = __atomic_load_n(&p->bad_requests, __ATOMIC_RELAXED) +
                               __atomic_load_n(&p->flush_fails, __ATOMIC_RELAXED);
        const struct metric_field f[] = {{"activate_fails", &p->activate_fails},
                                         {"cfg_fails", &p->config_writes},
                                         {"event_fails", &event_fails},
                                         {"queue_event_count", &p->queue_events},
                                         {"rate_limiter_throttled_events", &p->throttled_events},
                                         {"rate_limiter_event_count", &p->limiter_events},
                                         {"flush_count", &p->flushes},
                                         {"read_only_write_count", &p->ro_writes}};
        char name[80];
        snprintf(name, sizeof(name), "pmem_%s", p->opts.id ? p->opts.id : p->dev.name);
        if (!total)
            total = cJSON_CreateObject();
        ADD_FIELDS(root, total, name, f);
    }
    if (total)
        cJSON_AddItemToObject(root, "pmem", total);
}

cJSON *api_metrics_snapshot(const struct api_metrics *m, struct vm *vm)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *api = cJSON_AddObjectToObject(root, "api_server");
    for (unsigned i = 0; i < m->nroutes; i++) {
        cJSON *r = cJSON_GetObjectItemCaseSensitive(api, m->routes[i].route);
        if (!r)
            r = cJSON_AddObjectToObject(api, m->routes[i].route);
        char status[8];
        snprintf(status, sizeof(status), "%d", m->routes[i].status);
        cJSON_AddNumberToObject(r, status, (double)m->routes[i].count);
    }
    for (int e = 0; m->server && e < API_SERVER_NEVENTS; e++)
        cJSON_AddNumberToObject(api, api_server_event_metric((enum api_server_event)e),
                                (double)m->server->events[e]);
    add_startup(api, m);
    /* Firecracker's names: lines the rate limits held back, lines the log could not take,
     * metrics lines lost. */
    cJSON *logger = cJSON_AddObjectToObject(root, "logger");
    cJSON_AddNumberToObject(logger, "missed_log_count", (double)log_missed_count());
    cJSON_AddNumberToObject(logger, "log_fails", (double)log_fail_count());
    cJSON_AddNumberToObject(logger, "metrics_fails", (double)m->lines_lost);
    /* Always 0 here: a violation ends ember, its line written by the SIGSYS handler. */
    cJSON *seccomp = cJSON_AddObjectToObject(root, "seccomp");
    cJSON_AddNumberToObject(seccomp, "num_faults", (double)seccomp_fault_count());
    if (m->mmds)
        add_mmds(root, m->mmds);
    if (!vm || !vm->started)
        return root;
    add_vcpus(root, vm);
    cJSON *uart = cJSON_AddObjectToObject(root, "uart");
    cJSON_AddNumberToObject(uart, "tx_bytes", counter(&vm->com1.tx_bytes));
    cJSON_AddNumberToObject(uart, "rx_bytes", counter(&vm->com1.rx_bytes));
    /* Output a PUT /serial file or FIFO had no room for, dropped. */
    cJSON_AddNumberToObject(uart, "tx_dropped_bytes", counter(&vm->console.out_dropped));
    cJSON *blk_total = cJSON_CreateObject(), *net_total = cJSON_CreateObject();
    bool any_blk = false, any_net = false;
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        struct virtio_dev *d = vm->virtio[i]->dev;
        if (d->device_id == VIRTIO_ID_BLOCK) {
            add_blk(root, blk_total, vm->virtio[i]->model);
            any_blk = true;
        } else if (d->device_id == VIRTIO_ID_NET) {
            add_net(root, net_total, vm->virtio[i]->model);
            any_net = true;
        } else if (d->device_id == VIRTIO_ID_VSOCK) {
            add_vsock(root, vm->virtio[i]->model);
        } else if (d->device_id == VIRTIO_ID_RNG) {
            struct virtio_rng *r = vm->virtio[i]->model;
            cJSON *o = cJSON_AddObjectToObject(root, "entropy");
            cJSON_AddNumberToObject(o, "bytes", counter(&r->bytes));
            cJSON_AddNumberToObject(o, "requests", counter(&r->requests));
        } else if (d->device_id == VIRTIO_ID_CONSOLE) {
            struct virtio_console *c = vm->virtio[i]->model;
            cJSON *o = cJSON_AddObjectToObject(root, "virtio_console");
            cJSON_AddNumberToObject(o, "tx_bytes", counter(&c->tx_bytes));
            cJSON_AddNumberToObject(o, "rx_bytes", counter(&c->rx_bytes));
        }
    }
    add_pmem_groups(root, vm);
    if (any_blk)
        cJSON_AddItemToObject(root, "block", blk_total);
    else
        cJSON_Delete(blk_total);
    if (any_net)
        cJSON_AddItemToObject(root, "net", net_total);
    else
        cJSON_Delete(net_total);
    return root;
}

/* Turns cumulative values in cur into changes since prev, in place. */
static void subtract(cJSON *cur, const cJSON *prev)
{
    for (cJSON *c = cur->child; c; c = c->next) {
        const cJSON *p = prev ? cJSON_GetObjectItemCaseSensitive(prev, c->string) : NULL;
        if (cJSON_IsObject(c))
            subtract(c, p);
        else if (cJSON_IsNumber(c) && p && cJSON_IsNumber(p))
            cJSON_SetNumberValue(c, c->valuedouble - p->valuedouble);
    }
}

int api_metrics_flush(struct api_metrics *m, struct vm *vm)
{
    if (m->fd < 0)
        return 0;
    cJSON *now = api_metrics_snapshot(m, vm);
    cJSON *line = cJSON_Duplicate(now, true);
    if (!now || !line) {
        cJSON_Delete(now);
        cJSON_Delete(line);
        return error_set("out of memory");
    }
    subtract(line, m->previous);
    add_startup(cJSON_GetObjectItemCaseSensitive(line, "api_server"), m);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    cJSON_AddNumberToObject(line, "utc_timestamp_ms",
                            (double)ts.tv_sec * 1000 + (double)(ts.tv_nsec / 1000000));
    char *text = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    if (!text) {
        cJSON_Delete(now);
        return error_set("out of memory");
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the terminator: one write per line */
    ssize_t w = finish_pending(m) ? write(m->fd, text, len + 1) : -1;
    int err = w < 0 && !m->pending ? errno : EAGAIN;
    if (w <= 0) {
        /* Dropped whole. The changes it held stay for the next line: the
         * previous snapshot is kept. */
        free(text);
        cJSON_Delete(now);
        m->lines_lost++;
        if (err == EAGAIN || err == EWOULDBLOCK)
            return error_set("metrics line not written: the metrics FIFO is full (its reader is "
                             "not keeping up); the line is dropped and counted");
        return error_set("metrics line not written (%s)",
                         w < 0 ? strerror(err) : "nothing written");
    }
    cJSON_Delete(m->previous);
    m->previous = now;
    m->lines_written++;
    if ((size_t)w < len + 1) {
        /* Cut short by a full FIFO: the rest goes first next time. */
        m->pending = text;
        m->pending_off = (size_t)w;
        m->pending_len = len + 1 - (size_t)w;
        return 0;
    }
    free(text);
    return 0;
}

void api_metrics_close(struct api_metrics *m)
{
    seccomp_set_metrics_fd(-1);
    if (m->fd >= 0) {
        finish_pending(m);
        close(m->fd);
    }
    free(m->pending);
    m->pending = NULL;
    m->pending_len = m->pending_off = 0;
    m->fd = -1;
    cJSON_Delete(m->previous);
    m->previous = NULL;
    free(m->routes);
    m->routes = NULL;
    m->nroutes = m->routes_cap = 0;
}
