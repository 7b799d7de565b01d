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
#include <inttypes.h>
#include <signal.h>
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

void api_metrics_watch_mmds(struct api_metrics *m, const struct mmds_metrics *mmds)
{
    m->mmds = mmds;
}

void api_metrics_set_startup(struct api_metrics *m, uint64_t wall_us, uint64_t cpu_us)
{
    m->startup_time_us = wall_us;
    m->startup_time_cpu_us = cpu_us;
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

void api_metrics_count_deprecated(struct api_metrics *m)
{
    m->deprecated_calls++;
}

void api_metrics_set_latency(struct api_metrics *m, enum api_latency which, uint64_t us)
{
    /* Under a microsecond rounds up to 1: 0 keeps meaning "never measured". */
    if ((unsigned)which < API_LATENCIES)
        m->latencies_us[which] = us ? us : 1;
}

/* ---- signals -------------------------------------------------------------- */

/* Firecracker's signals group: how often each arrived. SIGHUP stops ember (the last line
 * shows it), SIGPIPE is counted and otherwise ignored; the others end the process at once,
 * before any line could report them. */
enum { SIG_BUS, SIG_SEGV, SIG_XFSZ, SIG_XCPU, SIG_PIPE, SIG_HUP, SIG_ILL, NSIGNALS };
static uint64_t signal_counts[NSIGNALS];

void api_metrics_note_signal(int signo)
{
    int i = signo == SIGBUS    ? SIG_BUS
            : signo == SIGSEGV ? SIG_SEGV
            : signo == SIGXFSZ ? SIG_XFSZ
            : signo == SIGXCPU ? SIG_XCPU
            : signo == SIGPIPE ? SIG_PIPE
            : signo == SIGHUP  ? SIG_HUP
            : signo == SIGILL  ? SIG_ILL
                               : -1;
    if (i >= 0)
        __atomic_add_fetch(&signal_counts[i], 1, __ATOMIC_RELAXED);
}

/* ---- what the last line reported ---------------------------------------------- */

/* A counter's cumulative value as of the last line written, by its name ("group.field"):
 * the next line reports the change from it. Only counters that were ever non-zero have an
 * entry; their number is bounded by the schema, the devices and the API's routes. */
struct metrics_reported {
    char *key; /* NULL: a free slot */
    uint64_t value;
    uint64_t pending; /* the value of the line being written, kept once it is */
};

static uint64_t key_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static struct metrics_reported *slot_for(struct metrics_reported *t, size_t cap, const char *key)
{
    size_t i = (size_t)key_hash(key) & (cap - 1);
    while (t[i].key && strcmp(t[i].key, key))
        i = (i + 1) & (cap - 1);
    return &t[i];
}

static bool reported_grow(struct api_metrics *m)
{
    size_t cap = m->reported_cap ? m->reported_cap * 2 : 256;
    struct metrics_reported *t = calloc(cap, sizeof(*t));
    if (!t)
        return false;
    for (size_t i = 0; i < m->reported_cap; i++) {
        if (m->reported[i].key)
            *slot_for(t, cap, m->reported[i].key) = m->reported[i];
    }
    free(m->reported);
    m->reported = t;
    m->reported_cap = cap;
    return true;
}

/* The entry for key; with create, made if missing (NULL when out of memory). */
static struct metrics_reported *reported_find(struct api_metrics *m, const char *key, bool create)
{
    if (m->reported_cap) {
        struct metrics_reported *r = slot_for(m->reported, m->reported_cap, key);
        if (r->key || !create)
            return r->key ? r : NULL;
    } else if (!create) {
        return NULL;
    }
    if ((m->reported_used + 1) * 4 > m->reported_cap * 3 && !reported_grow(m))
        return NULL;
    struct metrics_reported *r = slot_for(m->reported, m->reported_cap, key);
    r->key = strdup(key);
    if (!r->key)
        return NULL;
    r->value = r->pending = 0;
    m->reported_used++;
    return r;
}

/* After a line was written: its values are what the next one counts from. */
static void reported_commit(struct api_metrics *m, bool written)
{
    for (size_t i = 0; i < m->reported_cap; i++) {
        struct metrics_reported *r = &m->reported[i];
        if (!r->key)
            continue;
        if (written)
            r->value = r->pending;
        else
            r->pending = r->value;
    }
}

/* ---- writing a line ------------------------------------------------------------- */

/* The line is written by hand, not through cJSON, so that every value is printed as the
 * exact unsigned integer it is (Go's decoders of these lines take uint64 fields, which
 * refuse exponents and fractions). */
#define MAX_DEPTH 4

struct emitter {
    struct api_metrics *m;
    bool cumulative; /* counters as they stand, not as changes (tests) */
    bool oom;
    char *buf;
    size_t len, cap;
    bool comma; /* the object being written has a member already */
    char path[256];
    size_t path_len, saved[MAX_DEPTH];
    unsigned depth;
};

static void put(struct emitter *e, const char *s, size_t n)
{
    if (e->oom)
        return;
    if (e->len + n + 2 > e->cap) { /* room for the newline and terminator too */
        size_t cap = e->cap ? e->cap : 8192;
        while (e->len + n + 2 > cap)
            cap *= 2;
        char *b = realloc(e->buf, cap);
        if (!b) {
            e->oom = true;
            return;
        }
        e->buf = b;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
}

/* Names come from the API's ids and routes: quoted and escaped as JSON wants. */
static void put_name(struct emitter *e, const char *s)
{
    put(e, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(e, esc, 2);
        } else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(e, esc, 6);
        } else {
            put(e, (const char *)&c, 1);
        }
    }
    put(e, "\"", 1);
}

static void put_u64(struct emitter *e, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%" PRIu64, v);
    put(e, t, (size_t)n);
}

static void member(struct emitter *e, const char *name)
{
    if (e->comma)
        put(e, ",", 1);
    put_name(e, name);
    put(e, ":", 1);
    e->comma = true;
}

static void begin(struct emitter *e, const char *name)
{
    member(e, name);
    put(e, "{", 1);
    e->comma = false;
    if (e->depth < MAX_DEPTH)
        e->saved[e->depth] = e->path_len;
    e->depth++;
    int n = snprintf(e->path + e->path_len, sizeof(e->path) - e->path_len, "%s.", name);
    if (n > 0 && (size_t)n < sizeof(e->path) - e->path_len)
        e->path_len += (size_t)n;
    else
        e->oom = true; /* never: names are bounded well below the buffer */
}

static void end(struct emitter *e)
{
    put(e, "}", 1);
    e->comma = true;
    e->depth--;
    if (e->depth < MAX_DEPTH)
        e->path_len = e->saved[e->depth];
    e->path[e->path_len] = '\0';
}

/* A value as it stands (Firecracker's SharedStoreMetric). */
static void gauge(struct emitter *e, const char *name, uint64_t value)
{
    member(e, name);
    put_u64(e, value);
}

/* A counter (Firecracker's SharedIncMetric): the change since the last line written. A
 * counter read while another thread moves a related one can seem to step back; it then
 * reports no change and keeps its highest value, so that nothing is counted twice. */
static void inc(struct emitter *e, const char *name, uint64_t cumulative)
{
    member(e, name);
    if (e->cumulative) {
        put_u64(e, cumulative);
        return;
    }
    char key[sizeof(e->path) + 64];
    snprintf(key, sizeof(key), "%s%s", e->path, name);
    struct metrics_reported *r = reported_find(e->m, key, cumulative != 0);
    if (!r) {
        if (cumulative)
            e->oom = true;
        put(e, "0", 1);
        return;
    }
    uint64_t delta = cumulative > r->value ? cumulative - r->value : 0;
    r->pending = cumulative > r->value ? cumulative : r->value;
    put_u64(e, delta);
}

/* Firecracker's LatencyAggregateMetrics, in microseconds: the least and the most as they
 * stand, their sum as a counter. */
static void latency(struct emitter *e, const char *name, const struct latency_stats *l)
{
    begin(e, name);
    gauge(e, "min_us", l->min_ns / 1000);
    gauge(e, "max_us", l->max_ns / 1000);
    inc(e, "sum_us", l->sum_ns / 1000);
    end(e);
}

/* Adds what another thread (a vCPU, a device) recorded into a total. */
static void latency_add(struct latency_stats *total, const struct latency_stats *s)
{
    uint64_t lo = __atomic_load_n(&s->min_ns, __ATOMIC_RELAXED);
    uint64_t hi = __atomic_load_n(&s->max_ns, __ATOMIC_RELAXED);
    if (lo && (!total->min_ns || lo < total->min_ns))
        total->min_ns = lo;
    if (hi > total->max_ns)
        total->max_ns = hi;
    total->sum_ns += __atomic_load_n(&s->sum_ns, __ATOMIC_RELAXED);
}

static const struct latency_stats not_measured;

/* A group of counters all 0 here, each named. */
static void zeros(struct emitter *e, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        inc(e, names[i], 0);
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Device threads update these counters; a relaxed read may be a little
 * stale, never torn (aligned 64-bit loads). */
static uint64_t load(const uint64_t *v)
{
    return __atomic_load_n(v, __ATOMIC_RELAXED);
}

/* ---- the API's groups ----------------------------------------------------------- */

/* Firecracker's per-route counters: every request on the route, and those answered with an
 * error (Firecracker counts only the ones its parser refuses; ember counts every 4xx/5xx). */
struct route_metric {
    const char *route; /* as api.c names it: "METHOD /template" */
    const char *group;
    const char *count, *fails; /* fails NULL: Firecracker has no such counter */
};

static const struct route_metric route_metrics[] = {
    {"GET /", "get_api_requests", "instance_info_count", "instance_info_fails"},
    {"GET /machine-config", "get_api_requests", "machine_cfg_count", "machine_cfg_fails"},
    {"GET /mmds", "get_api_requests", "mmds_count", NULL},
    {"GET /version", "get_api_requests", "vmm_version_count", NULL},
    {"GET /hotplug/memory", "get_api_requests", "hotplug_memory_count", NULL},
    {"PUT /actions", "put_api_requests", "actions_count", "actions_fails"},
    {"PUT /boot-source", "put_api_requests", "boot_source_count", "boot_source_fails"},
    {"PUT /drives/{drive_id}", "put_api_requests", "drive_count", "drive_fails"},
    {"PUT /logger", "put_api_requests", "logger_count", "logger_fails"},
    {"PUT /machine-config", "put_api_requests", "machine_cfg_count", "machine_cfg_fails"},
    {"PUT /cpu-config", "put_api_requests", "cpu_cfg_count", "cpu_cfg_fails"},
    {"PUT /metrics", "put_api_requests", "metrics_count", "metrics_fails"},
    {"PUT /network-interfaces/{iface_id}", "put_api_requests", "network_count", "network_fails"},
    {"PUT /mmds", "put_api_requests", "mmds_count", "mmds_fails"},
    {"PUT /mmds/config", "put_api_requests", "mmds_count", "mmds_fails"},
    {"PUT /vsock", "put_api_requests", "vsock_count", "vsock_fails"},
    {"PUT /pmem/{id}", "put_api_requests", "pmem_count", "pmem_fails"},
    {"PUT /serial", "put_api_requests", "serial_count", "serial_fails"},
    {"PUT /hotplug/memory", "put_api_requests", "hotplug_memory_count", "hotplug_memory_fails"},
    {"PATCH /drives/{drive_id}", "patch_api_requests", "drive_count", "drive_fails"},
    {"PATCH /network-interfaces/{iface_id}", "patch_api_requests", "network_count",
     "network_fails"},
    {"PATCH /machine-config", "patch_api_requests", "machine_cfg_count", "machine_cfg_fails"},
    {"PATCH /mmds", "patch_api_requests", "mmds_count", "mmds_fails"},
    {"PATCH /hotplug/memory", "patch_api_requests", "hotplug_memory_count", "hotplug_memory_fails"},
    {"PATCH /pmem/{id}", "patch_api_requests", "pmem_count", "pmem_fails"},
};

/* The sum over routes of requests (fails: answered with an error) counted under name. */
static uint64_t route_total(const struct api_metrics *m, const char *group, const char *name)
{
    uint64_t total = 0;
    for (size_t k = 0; k < COUNT(route_metrics); k++) {
        const struct route_metric *rm = &route_metrics[k];
        bool as_count = !strcmp(rm->count, name);
        bool as_fails = rm->fails && !strcmp(rm->fails, name);
        if (strcmp(rm->group, group) || (!as_count && !as_fails))
            continue;
        for (unsigned i = 0; i < m->nroutes; i++) {
            if (!strcmp(m->routes[i].route, rm->route) && (as_count || m->routes[i].status >= 400))
                total += m->routes[i].count;
        }
    }
    return total;
}

static void request_group(struct emitter *e, const char *group, const char *const *names, size_t n)
{
    begin(e, group);
    for (size_t i = 0; i < n; i++)
        inc(e, names[i], route_total(e->m, group, names[i]));
    end(e);
}

static void add_requests(struct emitter *e)
{
    /* instance_info_fails and machine_cfg_fails: names Firecracker dropped that Kata reads. */
    static const char *const get[] = {
        "instance_info_count",  "machine_cfg_count",   "mmds_count",       "vmm_version_count",
        "hotplug_memory_count", "instance_info_fails", "machine_cfg_fails"};
    static const char *const put_[] = {
        "actions_count",        "actions_fails",       "boot_source_count", "boot_source_fails",
        "drive_count",          "drive_fails",         "logger_count",      "logger_fails",
        "machine_cfg_count",    "machine_cfg_fails",   "cpu_cfg_count",     "cpu_cfg_fails",
        "metrics_count",        "metrics_fails",       "network_count",     "network_fails",
        "mmds_count",           "mmds_fails",          "vsock_count",       "vsock_fails",
        "pmem_count",           "pmem_fails",          "serial_count",      "serial_fails",
        "hotplug_memory_count", "hotplug_memory_fails"};
    static const char *const patch[] = {
        "drive_count",          "drive_fails",          "network_count", "network_fails",
        "machine_cfg_count",    "machine_cfg_fails",    "mmds_count",    "mmds_fails",
        "hotplug_memory_count", "hotplug_memory_fails", "pmem_count",    "pmem_fails"};
    request_group(e, "get_api_requests", get, COUNT(get));
    request_group(e, "put_api_requests", put_, COUNT(put_));
    request_group(e, "patch_api_requests", patch, COUNT(patch));
    begin(e, "deprecated_api");
    inc(e, "deprecated_http_api_calls", e->m->deprecated_calls);
    end(e);
}

static void add_api_server(struct emitter *e)
{
    const struct api_metrics *m = e->m;
    begin(e, "api_server");
    gauge(e, "process_startup_time_us", m->startup_time_us);
    gauge(e, "process_startup_time_cpu_us", m->startup_time_cpu_us);
    /* Names Firecracker dropped that Kata reads: ember answers each request on the thread
     * that runs the machine's API, with no channel that could fail or time out. */
    inc(e, "sync_response_fails", 0);
    inc(e, "sync_vmm_send_timeout_count", 0);
    /* ember's: requests by route and status, and what the server did with connections. */
    for (unsigned i = 0; i < m->nroutes; i++) {
        bool first = true;
        for (unsigned j = 0; j < i; j++)
            first = first && strcmp(m->routes[j].route, m->routes[i].route);
        if (!first)
            continue;
        begin(e, m->routes[i].route);
        for (unsigned j = i; j < m->nroutes; j++) {
            if (strcmp(m->routes[j].route, m->routes[i].route))
                continue;
            char status[12];
            snprintf(status, sizeof(status), "%d", m->routes[j].status);
            inc(e, status, m->routes[j].count);
        }
        end(e);
    }
    for (int ev = 0; m->server && ev < API_SERVER_NEVENTS; ev++)
        inc(e, api_server_event_metric((enum api_server_event)ev), m->server->events[ev]);
    end(e);
}

static void add_logger(struct emitter *e)
{
    begin(e, "logger");
    /* A line that could not be written, by the timer or FlushMetrics alike. */
    inc(e, "missed_metrics_count", e->m->lines_lost);
    inc(e, "metrics_fails", e->m->lines_lost);
    /* Log lines lost: those the log could not take and those a rate limit held back (the
     * latter also on their own, Firecracker's later name for them). */
    inc(e, "missed_log_count", log_fail_count() + log_missed_count());
    inc(e, "rate_limited_log_count", log_missed_count());
    inc(e, "log_fails", log_fail_count()); /* the older name, which Kata reads */
    end(e);
}

static void add_mmds(struct emitter *e)
{
    const struct mmds_metrics *mm = e->m->mmds;
    const struct {
        const char *key;
        const _Atomic uint64_t *v;
    } f[] = {{"rx_accepted", mm ? &mm->rx_accepted : NULL},
             {"rx_accepted_err", mm ? &mm->rx_accepted_err : NULL},
             {"rx_accepted_unusual", mm ? &mm->rx_accepted_unusual : NULL},
             {"rx_bad_eth", mm ? &mm->rx_bad_eth : NULL},
             {"rx_invalid_token", mm ? &mm->rx_invalid_token : NULL},
             {"rx_no_token", mm ? &mm->rx_no_token : NULL},
             {"rx_count", mm ? &mm->rx_count : NULL},
             {"tx_bytes", mm ? &mm->tx_bytes : NULL},
             {"tx_count", mm ? &mm->tx_count : NULL},
             {"tx_errors", mm ? &mm->tx_errors : NULL},
             {"tx_frames", mm ? &mm->tx_frames : NULL},
             {"connections_created", mm ? &mm->connections_created : NULL},
             {"connections_destroyed", mm ? &mm->connections_destroyed : NULL}};
    begin(e, "mmds");
    for (size_t i = 0; i < COUNT(f); i++)
        inc(e, f[i].key, f[i].v ? atomic_load_explicit(f[i].v, memory_order_relaxed) : 0);
    end(e);
}

static void add_process_groups(struct emitter *e)
{
    const struct api_metrics *m = e->m;
    /* ember's own group: live migration, the last one's figures (gauges) and how many
     * ended each way. */
    begin(e, "migration");
    gauge(e, "rounds", m->migration.rounds);
    gauge(e, "pages_sent", m->migration.pages);
    gauge(e, "bytes_sent", m->migration.bytes);
    gauge(e, "dirty_pages", m->migration.dirty_pages);
    gauge(e, "bandwidth_bytes_per_s", m->migration.bandwidth_bps);
    gauge(e, "downtime_us", m->migration.downtime_us);
    gauge(e, "total_us", m->migration.total_us);
    gauge(e, "completed", m->migration.completed);
    gauge(e, "failed", m->migration.failed);
    end(e);
    begin(e, "latencies_us");
    gauge(e, "full_create_snapshot", m->latencies_us[API_LATENCY_FULL_CREATE_SNAPSHOT]);
    gauge(e, "diff_create_snapshot", m->latencies_us[API_LATENCY_DIFF_CREATE_SNAPSHOT]);
    gauge(e, "load_snapshot", m->latencies_us[API_LATENCY_LOAD_SNAPSHOT]);
    gauge(e, "pause_vm", m->latencies_us[API_LATENCY_PAUSE_VM]);
    gauge(e, "resume_vm", m->latencies_us[API_LATENCY_RESUME_VM]);
    gauge(e, "vmm_full_create_snapshot", m->latencies_us[API_LATENCY_VMM_FULL_CREATE_SNAPSHOT]);
    gauge(e, "vmm_diff_create_snapshot", m->latencies_us[API_LATENCY_VMM_DIFF_CREATE_SNAPSHOT]);
    gauge(e, "vmm_load_snapshot", m->latencies_us[API_LATENCY_VMM_LOAD_SNAPSHOT]);
    gauge(e, "vmm_pause_vm", m->latencies_us[API_LATENCY_VMM_PAUSE_VM]);
    gauge(e, "vmm_resume_vm", m->latencies_us[API_LATENCY_VMM_RESUME_VM]);
    end(e);
    /* Always 0 in a line written: a violation ends ember, its own line written by the
     * SIGSYS handler (sandbox/seccomp.c) with num_faults 1. */
    begin(e, "seccomp");
    gauge(e, "num_faults", seccomp_fault_count());
    end(e);
    /* A Rust panic has no counterpart in C: ember's fatal errors end it with an exit status
     * and a log line. device_events, a name Firecracker dropped that Kata reads, was never
     * counted by Firecracker either. */
    begin(e, "vmm");
    gauge(e, "panic_count", 0);
    inc(e, "device_events", 0);
    end(e);
    begin(e, "signals");
    gauge(e, "sigbus", load(&signal_counts[SIG_BUS]));
    gauge(e, "sigsegv", load(&signal_counts[SIG_SEGV]));
    gauge(e, "sigxfsz", load(&signal_counts[SIG_XFSZ]));
    gauge(e, "sigxcpu", load(&signal_counts[SIG_XCPU]));
    inc(e, "sigpipe", load(&signal_counts[SIG_PIPE]));
    gauge(e, "sighup", load(&signal_counts[SIG_HUP]));
    gauge(e, "sigill", load(&signal_counts[SIG_ILL]));
    end(e);
}

/* Devices ember does not have: Firecracker writes their groups always, all 0 until one
 * exists, and so does ember (the routes that would add them answer 400). */
static void add_absent_devices(struct emitter *e)
{
    static const char *const balloon[] = {
        "activate_fails",         "inflate_count",          "stats_updates_count",
        "stats_update_fails",     "deflate_count",          "event_fails",
        "free_page_report_count", "free_page_report_freed", "free_page_report_fails",
        "free_page_hint_count",   "free_page_hint_freed",   "free_page_hint_fails"};
    begin(e, "balloon");
    zeros(e, balloon, COUNT(balloon));
    end(e);
    static const char *const hotplug[] = {
        "activate_fails", "queue_event_fails",    "queue_event_count", "plug_count",
        "plug_bytes",     "plug_fails",           "unplug_count",      "unplug_bytes",
        "unplug_fails",   "unplug_discard_fails", "unplug_all_count",  "unplug_all_fails",
        "state_count",    "state_fails"};
    begin(e, "memory_hotplug");
    zeros(e, hotplug, COUNT(hotplug));
    latency(e, "plug_agg", &not_measured);
    latency(e, "unplug_agg", &not_measured);
    latency(e, "unplug_all_agg", &not_measured);
    latency(e, "state_agg", &not_measured);
    end(e);
}

/* ---- the machine's groups ------------------------------------------------------ */

static void add_vcpus(struct emitter *e, struct vm *vm)
{
    enum { IN, OUT, READ, WRITE, SIGNAL, ALL, FAIL, UNHANDLED, N };
    uint64_t total[N] = {0};
    unsigned n = vm && vm->vcpus ? vm->ncpus : 0;
    for (unsigned i = 0; i < n; i++) {
        struct vcpu *v = &vm->vcpus[i];
        uint64_t c[N] = {load(&v->io_in_exits),     load(&v->io_out_exits),
                         load(&v->mmio_read_exits), load(&v->mmio_write_exits),
                         load(&v->intr_exits),      load(&v->exits),
                         load(&v->failures),        load(&v->unhandled_io)};
        for (int k = 0; k < N; k++)
            total[k] += c[k];
    }
    begin(e, "vcpu");
    inc(e, "exit_io_in", total[IN]);
    inc(e, "exit_io_out", total[OUT]);
    inc(e, "exit_mmio_read", total[READ]);
    inc(e, "exit_mmio_write", total[WRITE]);
    inc(e, "failures", total[FAIL]);
    /* ember never calls KVM_KVMCLOCK_CTRL (a snapshot's restore would). */
    inc(e, "kvmclock_ctrl_fails", 0);
    /* The time handling each exit took: the least and the most of any vCPU, their sum. */
    static const char *const agg_names[] = {"exit_io_in_agg", "exit_io_out_agg",
                                            "exit_mmio_read_agg", "exit_mmio_write_agg"};
    for (int kind = 0; kind < 4; kind++) {
        struct latency_stats all = {0};
        for (unsigned i = 0; i < n; i++)
            latency_add(&all, &vm->vcpus[i].exit_times[kind]);
        latency(e, agg_names[kind], &all);
    }
    inc(e, "filter_cpuid", 0); /* a name Firecracker dropped that Kata reads; never counted */
    /* ember's: every exit, exits for a signal (a kick: pause, stop), accesses no device took. */
    inc(e, "exits", total[ALL]);
    inc(e, "exit_signal", total[SIGNAL]);
    inc(e, "unhandled_io", total[UNHANDLED]);
    end(e);
    /* ember's: the same per vCPU. */
    for (unsigned i = 0; i < n; i++) {
        struct vcpu *v = &vm->vcpus[i];
        char name[16];
        snprintf(name, sizeof(name), "vcpu%u", i);
        begin(e, name);
        inc(e, "exits", load(&v->exits));
        inc(e, "exit_io_in", load(&v->io_in_exits));
        inc(e, "exit_io_out", load(&v->io_out_exits));
        inc(e, "exit_mmio_read", load(&v->mmio_read_exits));
        inc(e, "exit_mmio_write", load(&v->mmio_write_exits));
        inc(e, "exit_signal", load(&v->intr_exits));
        inc(e, "failures", load(&v->failures));
        inc(e, "unhandled_io", load(&v->unhandled_io));
        end(e);
    }
}

static void add_legacy(struct emitter *e, struct vm *vm)
{
    bool on = vm != NULL;
    begin(e, "uart");
    /* A failed write gives the output up (one error); bytes an output had no room for are
     * lost (Firecracker's missed writes). ember serves accesses of any width, writes each
     * byte through (no buffer to flush) and has no rate limit on the port. */
    inc(e, "error_count", on ? load(&vm->console.out_errors) : 0);
    inc(e, "flush_count", 0);
    inc(e, "missed_read_count", 0);
    inc(e, "missed_write_count", on ? load(&vm->console.out_dropped) : 0);
    inc(e, "read_count", on ? load(&vm->com1.rx_bytes) : 0);
    inc(e, "write_count", on ? load(&vm->com1.tx_bytes) : 0);
    inc(e, "rate_limiter_dropped_bytes", 0);
    /* ember's names for the same bytes, kept for its users. */
    inc(e, "tx_bytes", on ? load(&vm->com1.tx_bytes) : 0);
    inc(e, "rx_bytes", on ? load(&vm->com1.rx_bytes) : 0);
    inc(e, "tx_dropped_bytes", on ? load(&vm->console.out_dropped) : 0);
    end(e);
    begin(e, "i8042");
    /* A reset cannot fail here: it stops the machine directly, with no event to signal. */
    inc(e, "error_count", 0);
    inc(e, "missed_read_count", on ? load(&vm->i8042.missed_reads) : 0);
    inc(e, "missed_write_count", on ? load(&vm->i8042.missed_writes) : 0);
    inc(e, "read_count", on ? load(&vm->i8042.reads) : 0);
    inc(e, "reset_count", on ? load(&vm->i8042.resets) : 0);
    inc(e, "write_count", on ? load(&vm->i8042.writes) : 0);
    inc(e, "keys_sent", on ? load(&vm->i8042.keys_sent) : 0);         /* ember's */
    inc(e, "bytes_dropped", on ? load(&vm->i8042.bytes_dropped) : 0); /* ember's */
    end(e);
    /* Firecracker's Arm clock (PL031), which Kata reads: its errors are accesses outside the
     * device's registers, which ember's x86 CMOS clock has no counterpart of. */
    static const char *const rtc[] = {"error_count", "missed_read_count", "missed_write_count"};
    begin(e, "rtc");
    zeros(e, rtc, COUNT(rtc));
    end(e);
}

/* Block devices: Firecracker's fields, then ember's. */
enum {
    BM_ACTIVATE_FAILS,
    BM_CFG_FAILS,
    BM_NO_AVAIL_BUFFER,
    BM_EVENT_FAILS,
    BM_EXECUTE_FAILS,
    BM_INVALID_REQS,
    BM_FLUSH,
    BM_QUEUE_EVENTS,
    BM_LIMITER_EVENTS,
    BM_UPDATES,
    BM_UPDATE_FAILS,
    BM_READ_BYTES,
    BM_WRITE_BYTES,
    BM_READS,
    BM_WRITES,
    BM_THROTTLED,
    BM_ENGINE_THROTTLED,
    BM_REMAINING,
    BM_DISCARDS, /* ember's from here */
    BM_IO_ERRORS,
    BM_UNSUPPORTED,
    BM_INTERRUPTS,
    BM_POLL_HITS,
    BM_POLL_RACES,
    BM_NFIELDS
};

static const char *const blk_names[BM_NFIELDS] = {
    "activate_fails",
    "cfg_fails",
    "no_avail_buffer",
    "event_fails",
    "execute_fails",
    "invalid_reqs_count",
    "flush_count",
    "queue_event_count",
    "rate_limiter_event_count",
    "update_count",
    "update_fails",
    "read_bytes",
    "write_bytes",
    "read_count",
    "write_count",
    "rate_limiter_throttled_events",
    "io_engine_throttled_events",
    "remaining_reqs_count",
    "discard_count",
    "io_errors",
    "unsupported",
    "interrupts",
    "poll_hits",
    "poll_races",
};

static void blk_values(struct virtio_blk *b, uint64_t *v)
{
    uint64_t refused = 0;
    for (unsigned i = 0; i < BLK_REFUSALS; i++)
        refused += load(&b->refused[i]);
    uint64_t errors = load(&b->errors);
    memset(v, 0, BM_NFIELDS * sizeof(*v));
    v[BM_ACTIVATE_FAILS] = load(&b->dev.activate_fails);
    v[BM_CFG_FAILS] = load(&b->dev.cfg_fails);
    /* event_fails: ember never reads a queue's eventfd (its kicks are edge triggered). */
    v[BM_NO_AVAIL_BUFFER] = load(&b->empty_kicks);
    /* Requests left in the ring because every slot of the engine is in flight. */
    v[BM_ENGINE_THROTTLED] = v[BM_REMAINING] = load(&b->slots_full);
    v[BM_EXECUTE_FAILS] = errors > refused ? errors - refused : 0; /* the host's I/O errors */
    v[BM_INVALID_REQS] = refused + load(&b->unsupported);
    v[BM_FLUSH] = load(&b->flushes);
    v[BM_QUEUE_EVENTS] = load(&b->dev.kicks);
    v[BM_LIMITER_EVENTS] = load(&b->throttle_wakeups);
    v[BM_UPDATES] = load(&b->updates);
    v[BM_UPDATE_FAILS] = load(&b->update_fails);
    v[BM_READ_BYTES] = load(&b->read_bytes);
    v[BM_WRITE_BYTES] = load(&b->write_bytes);
    v[BM_READS] = load(&b->reads);
    v[BM_WRITES] = load(&b->writes);
    v[BM_THROTTLED] = load(&b->throttle_events);
    v[BM_DISCARDS] = load(&b->discards);
    v[BM_IO_ERRORS] = errors;
    v[BM_UNSUPPORTED] = load(&b->unsupported);
    v[BM_INTERRUPTS] = load(&b->dev.interrupts);
    /* Polling (a drive's poll=US, or a CPU placement's): rounds that found work, and work
     * found right after kicks were asked for again. */
    v[BM_POLL_HITS] = load(&b->poll_hits);
    v[BM_POLL_RACES] = load(&b->poll_races);
}

/* time: reads' and writes', from the ring to their completion. */
static void blk_group(struct emitter *e, const char *name, const uint64_t *v,
                      const struct latency_stats time[2])
{
    begin(e, name);
    for (int i = 0; i < BM_NFIELDS; i++)
        inc(e, blk_names[i], v[i]);
    latency(e, "read_agg", &time[0]);
    latency(e, "write_agg", &time[1]);
    end(e);
}

enum {
    NM_ACTIVATE_FAILS,
    NM_CFG_FAILS,
    NM_MAC_UPDATES,
    NM_NO_RX_BUFFER,
    NM_NO_TX_BUFFER,
    NM_EVENT_FAILS,
    NM_RX_QUEUE_EVENTS,
    NM_RX_LIMITER_EVENTS,
    NM_RX_THROTTLED,
    NM_RX_TAP_EVENTS,
    NM_RX_BYTES,
    NM_RX_PACKETS,
    NM_RX_FAILS,
    NM_RX_COUNT,
    NM_TAP_READ_FAILS,
    NM_TAP_WRITE_FAILS,
    NM_TX_BYTES,
    NM_TX_MALFORMED,
    NM_TX_FAILS,
    NM_TX_COUNT,
    NM_TX_PACKETS,
    NM_TX_QUEUE_EVENTS,
    NM_TX_LIMITER_EVENTS,
    NM_TX_THROTTLED,
    NM_TX_SPOOFED,
    NM_TX_REMAINING,
    NM_RX_PARTIAL, /* names Firecracker dropped that Kata reads */
    NM_TX_PARTIAL,
    NM_RX_DROPPED, /* ember's from here */
    NM_TX_DROPPED,
    NM_TX_WAITS,
    NM_INTERRUPTS,
    NM_TAP_DROPPED,
    NM_POLL_HITS,
    NM_POLL_RACES,
    NM_NFIELDS
};

static const char *const net_names[NM_NFIELDS] = {
    "activate_fails",
    "cfg_fails",
    "mac_address_updates",
    "no_rx_avail_buffer",
    "no_tx_avail_buffer",
    "event_fails",
    "rx_queue_event_count",
    "rx_event_rate_limiter_count",
    "rx_rate_limiter_throttled",
    "rx_tap_event_count",
    "rx_bytes_count",
    "rx_packets_count",
    "rx_fails",
    "rx_count",
    "tap_read_fails",
    "tap_write_fails",
    "tx_bytes_count",
    "tx_malformed_frames",
    "tx_fails",
    "tx_count",
    "tx_packets_count",
    "tx_queue_event_count",
    "tx_rate_limiter_event_count",
    "tx_rate_limiter_throttled",
    "tx_spoofed_mac_count",
    "tx_remaining_reqs_count",
    "rx_partial_writes",
    "tx_partial_reads",
    "rx_dropped_count",
    "tx_dropped_count",
    "tx_waits_for_room",
    "interrupts",
    "rx_tap_dropped_count",
    "poll_hits",
    "poll_races",
};

static void net_values(struct virtio_net *n, uint64_t *v)
{
    memset(v, 0, NM_NFIELDS * sizeof(*v));
    /* mac_address_updates: the MAC in the configuration space is read-only here (a write is
     * a cfg_fails). event_fails: no queue eventfd is ever read. tx_remaining_reqs: a round
     * that ends at its budget leaves frames in the ring, uncounted. The partial reads and
     * writes Firecracker never counted either. */
    v[NM_ACTIVATE_FAILS] = load(&n->dev.activate_fails);
    v[NM_CFG_FAILS] = load(&n->dev.cfg_fails);
    v[NM_NO_RX_BUFFER] = load(&n->no_rx_buffers);
    v[NM_NO_TX_BUFFER] = load(&n->no_tx_frames);
    v[NM_RX_QUEUE_EVENTS] = n->dev.nqueues > 0 ? load(&n->dev.queues[0].kicks) : 0;
    v[NM_RX_LIMITER_EVENTS] = load(&n->rx_limiter_wakeups);
    v[NM_RX_THROTTLED] = load(&n->rx_limited);
    v[NM_RX_TAP_EVENTS] = load(&n->rx_host_events);
    v[NM_RX_BYTES] = load(&n->rx_bytes);
    v[NM_RX_PACKETS] = v[NM_RX_COUNT] = load(&n->rx_frames);
    v[NM_RX_FAILS] = v[NM_RX_DROPPED] = load(&n->rx_dropped);
    v[NM_TAP_READ_FAILS] = load(&n->tap_read_fails);
    v[NM_TAP_WRITE_FAILS] = load(&n->tap_write_fails);
    v[NM_TX_BYTES] = load(&n->tx_bytes);
    v[NM_TX_MALFORMED] = load(&n->tx_malformed);
    v[NM_TX_FAILS] = v[NM_TX_DROPPED] = load(&n->tx_dropped);
    v[NM_TX_COUNT] = v[NM_TX_PACKETS] = load(&n->tx_frames);
    v[NM_TX_QUEUE_EVENTS] = n->dev.nqueues > 1 ? load(&n->dev.queues[1].kicks) : 0;
    v[NM_TX_LIMITER_EVENTS] = load(&n->tx_limiter_wakeups);
    v[NM_TX_THROTTLED] = load(&n->tx_limited);
    v[NM_TX_SPOOFED] = load(&n->tx_spoofed_mac);
    v[NM_TX_WAITS] = load(&n->tx_pushback);
    v[NM_INTERRUPTS] = load(&n->dev.interrupts);
    /* Polling (a CPU placement's): rounds that found frames or receive buffers, and those found
     * right after kicks were asked for again. */
    v[NM_POLL_HITS] = load(&n->poll_hits);
    v[NM_POLL_RACES] = load(&n->poll_races);
    /* Frames the guest had no buffers for wait in the tap, and the kernel drops them there. */
    uint64_t host_drops;
    if (n->opts.tap && net_tap_host_drops(n->opts.tap, &host_drops) == 0)
        v[NM_TAP_DROPPED] = host_drops;
}

static void net_group(struct emitter *e, const char *name, const uint64_t *v)
{
    begin(e, name);
    for (int i = 0; i < NM_NFIELDS; i++)
        inc(e, net_names[i], v[i]);
    latency(e, "tap_write_agg", &not_measured); /* each write's time: not measured yet */
    end(e);
}

/* pmem devices: Firecracker's fields, then ember's. */
enum {
    PM_ACTIVATE_FAILS,
    PM_CFG_FAILS,
    PM_EVENT_FAILS,
    PM_QUEUE_EVENTS,
    PM_THROTTLED,
    PM_LIMITER_EVENTS,
    PM_FLUSHES, /* ember's from here */
    PM_READ_ONLY_WRITES,
    PM_NFIELDS
};

static const char *const pmem_names[PM_NFIELDS] = {
    "activate_fails",
    "cfg_fails",
    "event_fails",
    "queue_event_count",
    "rate_limiter_throttled_events",
    "rate_limiter_event_count",
    "flush_count",
    "read_only_write_count",
};

static void pmem_values(struct virtio_pmem *p, uint64_t *v)
{
    memset(v, 0, PM_NFIELDS * sizeof(*v));
    v[PM_ACTIVATE_FAILS] = load(&p->activate_fails);
    v[PM_CFG_FAILS] = load(&p->config_writes); /* the driver's writes to a read-only space */
    v[PM_EVENT_FAILS] = load(&p->bad_requests) + load(&p->flush_fails);
    v[PM_QUEUE_EVENTS] = load(&p->queue_events);
    v[PM_THROTTLED] = load(&p->throttled_events);
    v[PM_LIMITER_EVENTS] = load(&p->limiter_events);
    v[PM_FLUSHES] = load(&p->flushes);            /* msyncs */
    v[PM_READ_ONLY_WRITES] = load(&p->ro_writes); /* dropped */
}

static void pmem_group(struct emitter *e, const char *name, const uint64_t *v)
{
    begin(e, name);
    for (int i = 0; i < PM_NFIELDS; i++)
        inc(e, pmem_names[i], v[i]);
    end(e);
}

static void add_vsock(struct emitter *e, struct virtio_vsock *v)
{
    struct virtio_dev *d = v ? &v->dev : NULL;
    begin(e, "vsock");
    inc(e, "activate_fails", d ? load(&d->activate_fails) : 0);
    inc(e, "cfg_fails", d ? load(&d->cfg_fails) : 0);
    /* No queue eventfd is ever read (kicks are edge triggered), and connections are events
     * of the device's own loop, with no muxer between: these failures cannot happen. The
     * event queue's: a snapshot's TRANSPORT_RESET that found no buffer to go in. */
    inc(e, "rx_queue_event_fails", 0);
    inc(e, "tx_queue_event_fails", 0);
    inc(e, "ev_queue_event_fails", v ? load(&v->reset_fails) : 0);
    inc(e, "muxer_event_fails", 0);
    inc(e, "conn_event_fails", 0);
    inc(e, "rx_queue_event_count", d && d->nqueues > 0 ? load(&d->queues[0].kicks) : 0);
    inc(e, "tx_queue_event_count", d && d->nqueues > 1 ? load(&d->queues[1].kicks) : 0);
    inc(e, "rx_bytes_count", v ? load(&v->rx_bytes) : 0);
    inc(e, "tx_bytes_count", v ? load(&v->tx_bytes) : 0);
    inc(e, "rx_packets_count", v ? load(&v->rx_packets) : 0);
    inc(e, "tx_packets_count", v ? load(&v->tx_packets) : 0);
    inc(e, "conns_added", v ? load(&v->conns_opened) : 0);
    inc(e, "conns_killed", v ? load(&v->conns_timed_out) : 0);
    inc(e, "conns_removed", v ? load(&v->conns_removed) : 0);
    inc(e, "killq_resync", 0); /* ember keeps no kill queue to resynchronise */
    inc(e, "tx_flush_fails", v ? load(&v->flush_fails) : 0);
    inc(e, "tx_write_fails", v ? load(&v->write_fails) : 0);
    inc(e, "rx_read_fails", v ? load(&v->read_fails) : 0);
    /* ember's */
    inc(e, "conns_refused", v ? load(&v->conns_refused) : 0);
    inc(e, "rsts_sent", v ? load(&v->rsts_sent) : 0);
    inc(e, "bad_packets", v ? load(&v->bad_packets) : 0);
    inc(e, "credit_violations", v ? load(&v->credit_violations) : 0);
    inc(e, "poll_hits", v ? load(&v->poll_hits) : 0); /* polling, as the net groups' */
    inc(e, "poll_races", v ? load(&v->poll_races) : 0);
    end(e);
}

static void add_entropy(struct emitter *e, struct virtio_rng *r)
{
    struct virtio_dev *d = r ? &r->dev : NULL;
    begin(e, "entropy");
    inc(e, "activate_fails", d ? load(&d->activate_fails) : 0);
    inc(e, "entropy_event_fails", 0); /* no queue eventfd is ever read */
    inc(e, "entropy_event_count", d && d->nqueues > 0 ? load(&d->queues[0].kicks) : 0);
    inc(e, "entropy_bytes", r ? load(&r->bytes) : 0);
    inc(e, "host_rng_fails", r ? load(&r->host_fails) : 0);
    inc(e, "entropy_rate_limiter_throttled", r ? load(&r->limited) : 0);
    inc(e, "rate_limiter_event_count", r ? load(&r->wakeups) : 0);
    inc(e, "bytes", r ? load(&r->bytes) : 0);       /* ember's */
    inc(e, "requests", r ? load(&r->requests) : 0); /* ember's */
    end(e);
}

static void add_devices(struct emitter *e, struct vm *vm)
{
    uint64_t blk_total[BM_NFIELDS] = {0}, net_total[NM_NFIELDS] = {0}, v[NM_NFIELDS];
    struct latency_stats blk_time[2] = {{0}, {0}};
    uint64_t pmem_total[PM_NFIELDS] = {0};
    struct virtio_vsock *vsock = NULL;
    struct virtio_rng *rng = NULL;
    uint64_t interrupts = 0;
    unsigned n = vm ? vm->nvirtio : 0;
    for (unsigned i = 0; i < n; i++) {
        struct virtio_dev *d = vm->virtio[i]->dev;
        interrupts += load(&d->interrupts);
        char name[80];
        if (d->device_id == VIRTIO_ID_BLOCK && !vm->virtio[i]->vhost_user) {
            struct virtio_blk *b = vm->virtio[i]->model;
            snprintf(name, sizeof(name), "block_%.64s", b->opts.id ? b->opts.id : d->name);
            blk_values(b, v);
            struct latency_stats time[2] = {{0}, {0}};
            latency_add(&time[0], &b->read_time);
            latency_add(&time[1], &b->write_time);
            blk_group(e, name, v, time);
            latency_add(&blk_time[0], &b->read_time);
            latency_add(&blk_time[1], &b->write_time);
            for (int k = 0; k < BM_NFIELDS; k++)
                blk_total[k] += v[k];
        } else if (d->device_id == VIRTIO_ID_NET && !vm->virtio[i]->vhost_user) {
            struct virtio_net *nd = vm->virtio[i]->model;
            snprintf(name, sizeof(name), "net_%.64s", nd->opts.id ? nd->opts.id : d->name);
            net_values(nd, v);
            net_group(e, name, v);
            for (int k = 0; k < NM_NFIELDS; k++)
                net_total[k] += v[k];
        } else if (d->device_id == VIRTIO_ID_PMEM) {
            struct virtio_pmem *p = vm->virtio[i]->model;
            snprintf(name, sizeof(name), "pmem_%.64s", p->opts.id ? p->opts.id : d->name);
            pmem_values(p, v);
            pmem_group(e, name, v);
            for (int k = 0; k < PM_NFIELDS; k++)
                pmem_total[k] += v[k];
        } else if (d->device_id == VIRTIO_ID_VSOCK) {
            vsock = vm->virtio[i]->model;
        } else if (d->device_id == VIRTIO_ID_RNG) {
            rng = vm->virtio[i]->model;
        } else if (d->device_id == VIRTIO_ID_CONSOLE) {
            struct virtio_console *c = vm->virtio[i]->model;
            begin(e, "virtio_console"); /* ember's */
            inc(e, "tx_bytes", load(&c->tx_bytes));
            inc(e, "rx_bytes", load(&c->rx_bytes));
            end(e);
        }
    }
    /* The aggregates, there with no device too, as in Firecracker. */
    blk_group(e, "block", blk_total, blk_time);
    net_group(e, "net", net_total);
    pmem_group(e, "pmem", pmem_total);
    add_vsock(e, vsock);
    add_entropy(e, rng);
    begin(e, "interrupts");
    inc(e, "triggers", interrupts); /* the virtio devices' interrupts */
    /* MSI-X vector changes are not counted yet. */
    inc(e, "config_updates", 0);
    end(e);
}

char *api_metrics_render(struct api_metrics *m, struct vm *vm, bool cumulative)
{
    struct emitter e = {.m = m, .cumulative = cumulative};
    if (vm && !vm->started)
        vm = NULL;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    put(&e, "{", 1);
    member(&e, "utc_timestamp_ms");
    put_u64(&e, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
    add_api_server(&e);
    add_requests(&e);
    add_logger(&e);
    add_mmds(&e);
    add_process_groups(&e);
    add_absent_devices(&e);
    add_vcpus(&e, vm);
    add_legacy(&e, vm);
    add_devices(&e, vm);
    put(&e, "}", 1);
    if (e.oom) {
        free(e.buf);
        if (!cumulative)
            reported_commit(m, false);
        return NULL;
    }
    e.buf[e.len] = '\0';
    return e.buf;
}

cJSON *api_metrics_snapshot(struct api_metrics *m, struct vm *vm)
{
    char *text = api_metrics_render(m, vm, true);
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    free(text);
    return o;
}

int api_metrics_flush(struct api_metrics *m, struct vm *vm)
{
    if (m->fd < 0)
        return 0;
    char *text = api_metrics_render(m, vm, false);
    if (!text) {
        m->lines_lost++;
        return error_set("out of memory");
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the terminator (render leaves room): one write per line */
    ssize_t w = finish_pending(m) ? write(m->fd, text, len + 1) : -1;
    int err = w < 0 && !m->pending ? errno : EAGAIN;
    if (w <= 0) {
        /* Dropped whole. The changes it held stay for the next line. */
        free(text);
        reported_commit(m, false);
        m->lines_lost++;
        if (err == EAGAIN || err == EWOULDBLOCK)
            return error_set("metrics line not written: the metrics FIFO is full (its reader is "
                             "not keeping up); the line is dropped and counted");
        return error_set("metrics line not written (%s)",
                         w < 0 ? strerror(err) : "nothing written");
    }
    reported_commit(m, true);
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
    for (size_t i = 0; i < m->reported_cap; i++)
        free(m->reported[i].key);
    free(m->reported);
    m->reported = NULL;
    m->reported_cap = m->reported_used = 0;
    free(m->routes);
    m->routes = NULL;
    m->nroutes = m->routes_cap = 0;
}
