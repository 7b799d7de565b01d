#include "api/api.h"

#include "api/cpu_config.h"
#include "backends/net.h"
#include "backends/uds.h"
#include "devices/i8042.h"
#include "migration/migration.h"
#include "sandbox/seccomp.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/version.h"
#include "virtio/blk.h"
#include "virtio/net.h"
#include "virtio/pmem.h"
#include "virtio/vhost_user_blk.h"
#include "vmm/devices.h"
#include "vmm/exit_status.h"
#include "vmm/snapshot.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* ---- responses --------------------------------------------------------- */

static char *print_json(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static int fault(char **out, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "fault_message", message);
    *out = print_json(o);
    return 400;
}

/* The error recorded by the failing layer becomes the fault message. */
static int fault_from_error(char **out)
{
    return fault(out, error_get()[0] ? error_get() : "request failed");
}

static int not_after_start(char **out)
{
    return fault(out, "this operation is only allowed before the machine starts "
                      "(InstanceStart was already sent)");
}

static int not_before_start(char **out)
{
    return fault(out, "this operation needs a running machine (send InstanceStart first)");
}

/* ---- state -------------------------------------------------------------- */

static void on_metrics_timer(void *opaque, uint32_t events)
{
    struct api *a = opaque;
    (void)events;
    uint64_t ticks;
    ssize_t ignored = read(a->metrics_timer_fd, &ticks, sizeof(ticks));
    (void)ignored;
    if (api_metrics_flush(&a->metrics, a->vm_created ? a->vm : NULL) < 0)
        log_warn("metrics: %s", error_get());
}

int api_init(struct api *a, struct event_loop *loop, struct vm *vm, const char *instance_id,
             bool enable_pci, size_t mmds_size_limit)
{
    memset(a, 0, sizeof(*a));
    api_config_init(&a->cfg);
    a->loop = loop;
    a->vm = vm;
    a->enable_pci = enable_pci;
    a->metrics_timer_fd = -1;
    snprintf(a->instance_id, sizeof(a->instance_id), "%s",
             instance_id ? instance_id : "anonymous-instance");
    api_metrics_init(&a->metrics);
    if (mmds_store_init(&a->mmds, mmds_size_limit) < 0)
        return -1;
    mmds_store_configure(&a->mmds, MMDS_V1, false, a->instance_id);
    api_metrics_watch_mmds(&a->metrics, &a->mmds.metrics);
    return 0;
}

int api_load_metadata(struct api *a, const char *text, size_t text_len)
{
    cJSON *doc = cJSON_ParseWithLength(text, text_len);
    if (!doc)
        return error_set("the metadata is not valid JSON (near byte %zu)",
                         (size_t)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : 0));
    enum mmds_result r = mmds_store_put(&a->mmds, doc);
    cJSON_Delete(doc);
    if (r == MMDS_TOO_LARGE)
        return error_set("the metadata is larger than the MMDS size limit (%zu bytes)",
                         a->mmds.limit);
    if (r != MMDS_OK)
        return error_set("out of memory");
    return 0;
}

bool api_instance_started(const struct api *a)
{
    return a->vm_created && a->vm->started;
}

static const char *state_name(struct api *a)
{
    if (!api_instance_started(a))
        return "Not started";
    return vm_is_paused(a->vm) ? "Paused" : "Running";
}

int api_apply_logger(struct api *a, const struct api_logger *l)
{
    if (l->log_path && log_open(l->log_path) < 0)
        return -1;
    log_set_level(l->level);
    log_set_format(l->show_level, l->show_log_origin);
    free(a->cfg.logger.log_path);
    free(a->cfg.logger.module);
    a->cfg.logger = *l;
    return 0;
}

int api_apply_metrics(struct api *a, const char *path)
{
    if (api_metrics_enabled(&a->metrics))
        return error_set("metrics are already configured (to '%s')", a->cfg.metrics_path);
    if (api_metrics_open(&a->metrics, path) < 0)
        return -1;
    a->metrics_timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (a->metrics_timer_fd < 0)
        return error_errno("timerfd_create");
    struct itimerspec its = {.it_interval.tv_sec = API_METRICS_PERIOD_S,
                             .it_value.tv_sec = API_METRICS_PERIOD_S};
    timerfd_settime(a->metrics_timer_fd, 0, &its, NULL);
    a->metrics_timer = event_loop_add(a->loop, a->metrics_timer_fd, EPOLLIN, on_metrics_timer, a);
    if (!a->metrics_timer)
        return -1;
    if (a->cfg.metrics_path != path) {
        free(a->cfg.metrics_path);
        a->cfg.metrics_path = strdup(path);
    }
    return 0;
}

struct build {
    struct api *a;
    int result, status;
    char error[512];
};

static void build_machine(void *arg)
{
    struct build *b = arg;
    struct api *a = b->a;
    b->result = -1;
    if (vm_create(a->vm, &a->vm_cfg, a->loop) < 0) {
        snprintf(b->error, sizeof(b->error), "cannot create the machine: %s", error_get());
        b->status = a->vm->create_status;
        vm_destroy(a->vm);
        return;
    }
    a->vm_created = true;
    if (vm_start(a->vm, true) < 0) {
        /* vm_start asked the machine to stop; the loop ends and
         * api_finish reports it. */
        snprintf(b->error, sizeof(b->error), "cannot start the machine: %s", error_get());
        b->status = EXIT_HOST_ERROR;
        return;
    }
    b->result = 0;
}

/* Setup is over: from now on the main thread serves the API, the console
 * and the metrics, with the narrower filter. */
static void builder_done(struct api *a)
{
    if (a->builder)
        iothread_stop(a->builder);
    a->builder = NULL;
    seccomp_enter(SECCOMP_MAIN, "main");
}

int api_start_instance(struct api *a, int *status)
{
    *status = EXIT_USAGE;
    if (api_instance_started(a))
        return error_set("the machine has already started");
    vm_config_defaults(&a->vm_cfg);
    /* Firecracker's guests find their devices on the kernel command line
     * (virtio-mmio) unless PCI was asked for. */
    a->vm_cfg.transport = a->enable_pci ? TRANSPORT_PCI : TRANSPORT_MMIO;
    a->vm_cfg.boot_timer = a->boot_timer;
    if (api_config_to_vm(&a->cfg, &a->vm_cfg) < 0)
        return -1;
    a->vm_cfg.mmds = &a->mmds;
    if (a->cfg.mmds.set) {
        /* The configuration file's mmds-config comes this way (PUT /mmds/config did it already). */
        mmds_store_configure(&a->mmds, a->cfg.mmds.v2 ? MMDS_V2 : MMDS_V1, a->cfg.mmds.imds_compat,
                             a->instance_id);
    }
    struct build b = {.a = a};
    if (a->builder)
        iothread_call(a->builder, build_machine, &b);
    else
        build_machine(&b);
    if (b.result < 0) {
        *status = b.status;
        return error_set("%s", b.error);
    }
    builder_done(a);
    log_info("machine started: %u vCPU(s), %llu MiB, %u drive(s)", a->vm_cfg.ncpus,
             (unsigned long long)a->vm_cfg.memory_mib, a->vm_cfg.ndrives);
    return 0;
}

int api_finish(struct api *a, int no_vm_status)
{
    int status = no_vm_status;
    if (a->builder)
        iothread_stop(a->builder);
    a->builder = NULL;
    if (a->vm_created) {
        if (a->vm->started)
            status = vm_finish(a->vm);
        if (api_metrics_flush(&a->metrics, a->vm) < 0)
            log_warn("metrics: %s", error_get());
        vm_destroy(a->vm);
        a->vm_created = false;
    } else if (api_metrics_flush(&a->metrics, NULL) < 0) {
        log_warn("metrics: %s", error_get());
    }
    if (a->metrics_timer)
        event_loop_del(a->loop, a->metrics_timer);
    if (a->metrics_timer_fd >= 0)
        close(a->metrics_timer_fd);
    a->metrics_timer = NULL;
    a->metrics_timer_fd = -1;
    api_metrics_close(&a->metrics);
    api_config_free(&a->cfg);
    mmds_store_destroy(&a->mmds);
    return status;
}

/* ---- handlers ----------------------------------------------------------- */

static int get_instance(struct api *a, char **out)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", a->instance_id);
    cJSON_AddStringToObject(o, "state", state_name(a));
    cJSON_AddStringToObject(o, "vmm_version", EMBER_FIRECRACKER_VERSION);
    cJSON_AddStringToObject(o, "app_name", "ember");
    *out = print_json(o);
    return 200;
}

static int get_version(char **out)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "firecracker_version", EMBER_FIRECRACKER_VERSION);
    *out = print_json(o);
    return 200;
}

static int do_action(struct api *a, const cJSON *body, char **out)
{
    enum api_action action;
    if (api_parse_action(body, &action) < 0)
        return fault_from_error(out);
    switch (action) {
    case API_ACTION_INSTANCE_START: {
        if (api_instance_started(a))
            return not_after_start(out);
        int status;
        if (api_start_instance(a, &status) < 0)
            return fault_from_error(out);
        return 204;
    }
    case API_ACTION_CTRL_ALT_DEL:
        if (!api_instance_started(a))
            return not_before_start(out);
        i8042_send_ctrl_alt_del(&a->vm->i8042);
        log_info("sent Ctrl+Alt+Del to the guest keyboard");
        return 204;
    case API_ACTION_FLUSH_METRICS:
        /* As Firecracker: the periodic flush runs from the start, this one
         * only once the machine does. */
        if (!api_instance_started(a))
            return fault(out, "the requested operation is not supported before starting the "
                              "machine (FlushMetrics needs InstanceStart first)");
        if (api_metrics_flush(&a->metrics, a->vm_created ? a->vm : NULL) < 0)
            return fault_from_error(out);
        return 204;
    }
    return fault(out, "unknown action");
}

static int patch_vm(struct api *a, const cJSON *body, char **out)
{
    bool pause;
    if (api_parse_vm_state(body, &pause) < 0)
        return fault_from_error(out);
    if (!api_instance_started(a))
        return not_before_start(out);
    uint64_t start = monotonic_us();
    if ((pause ? vm_pause(a->vm) : vm_resume(a->vm)) < 0)
        return fault_from_error(out);
    /* Firecracker's latencies: the machine's part, and the request's (from its dispatch). */
    uint64_t end = monotonic_us();
    api_metrics_set_latency(
        &a->metrics, pause ? API_LATENCY_VMM_PAUSE_VM : API_LATENCY_VMM_RESUME_VM, end - start);
    api_metrics_set_latency(&a->metrics, pause ? API_LATENCY_PAUSE_VM : API_LATENCY_RESUME_VM,
                            end - a->request_start_us);
    log_info("machine %s", pause ? "paused" : "resumed");
    return 204;
}

/* ember's own, as Cloud Hypervisor's vm.nmi: an NMI to every vCPU (a hung Linux guest
 * answers with its backtraces, or panics if told to). */
static int put_vm_nmi(struct api *a, const cJSON *body, char **out)
{
    if (!cJSON_IsObject(body) || body->child)
        return fault(out, "PUT /vm/nmi takes an empty object: {}");
    if (!api_instance_started(a))
        return not_before_start(out);
    if (vm_inject_nmi(a->vm) < 0)
        return fault_from_error(out);
    log_info("NMI sent to every vCPU");
    return 204;
}

__attribute__((format(printf, 2, 3))) static void deprecated(struct api *a, const char *fmt, ...);

static int put_snapshot_create(struct api *a, const cJSON *body, char **out)
{
    struct api_snapshot_create req;
    if (api_parse_snapshot_create(body, &req) < 0)
        return fault_from_error(out);
    if (!api_instance_started(a))
        return not_before_start(out);
    struct vm_snapshot_create_params p = {
        .type = req.diff ? VM_SNAPSHOT_DIFF : VM_SNAPSHOT_FULL,
        .snapshot_path = req.snapshot_path,
        .mem_file_path = req.mem_file_path,
    };
    struct vm_snapshot_create_stats st;
    uint64_t start = monotonic_us();
    if (vm_snapshot_create(a->vm, &p, &st) < 0)
        return fault_from_error(out);
    uint64_t end = monotonic_us();
    api_metrics_set_latency(&a->metrics,
                            req.diff ? API_LATENCY_VMM_DIFF_CREATE_SNAPSHOT
                                     : API_LATENCY_VMM_FULL_CREATE_SNAPSHOT,
                            end - start);
    api_metrics_set_latency(
        &a->metrics, req.diff ? API_LATENCY_DIFF_CREATE_SNAPSHOT : API_LATENCY_FULL_CREATE_SNAPSHOT,
        end - a->request_start_us);
    log_info("%s snapshot written to %s (%llu bytes) and %s (%llu pages, %llu of zeros left "
             "out) in %llu us",
             req.diff ? "diff" : "full", req.snapshot_path, (unsigned long long)st.state_bytes,
             req.mem_file_path, (unsigned long long)st.pages_written,
             (unsigned long long)st.pages_skipped, (unsigned long long)(end - start));
    return 204;
}

static void overrides_to_load(const struct api_overrides *o, struct vm_snapshot_load_params *p)
{
    p->nnet_overrides = o->nnet;
    for (unsigned i = 0; i < o->nnet; i++) {
        p->net_overrides[i].iface_id = o->net[i].iface_id;
        p->net_overrides[i].host_dev_name = o->net[i].host_dev_name;
    }
    p->vsock_uds_path = o->vsock_uds_path;
}

struct load {
    struct api *a;
    const struct vm_snapshot_load_params *p;
    struct vm_config cfg;
    int result, status;
    char error[512];
};

static void load_machine(void *arg)
{
    struct load *l = arg;
    l->result = vm_snapshot_load(l->a->vm, l->a->loop, l->p, &l->cfg, &l->status);
    if (l->result < 0)
        snprintf(l->error, sizeof(l->error), "%s", error_get());
}

static int put_snapshot_load(struct api *a, const cJSON *body, char **out)
{
    struct api_snapshot_load req;
    if (api_parse_snapshot_load(body, &req) < 0)
        return fault_from_error(out);
    if (a->vm_created)
        return fault(out, "the machine exists already: a snapshot loads only into a new ember "
                          "process");
    if (a->configured)
        return fault(out, "Loading a microVM snapshot not allowed after configuring "
                          "boot-specific resources.");
    if (req.deprecated_mem_file_path)
        deprecated(a, "PUT /snapshot/load: mem_file_path field is deprecated.");
    if (req.deprecated_enable_diff)
        deprecated(a, "PUT /snapshot/load: enable_diff_snapshots field is deprecated.");
    struct vm_snapshot_load_params p = {
        .snapshot_path = req.snapshot_path,
        .ram_source = req.uffd ? VM_RAM_UFFD : VM_RAM_FILE,
        .backend_path = req.backend_path,
        .track_dirty_pages = req.track_dirty_pages,
        .resume_vm = req.resume_vm,
        .clock_realtime = req.clock_realtime,
        .vsock_uds_path = req.overrides.vsock_uds_path,
        .attach_console = true,
        .mmds = &a->mmds,
        .instance_id = a->instance_id,
    };
    overrides_to_load(&req.overrides, &p);
    struct load l = {.a = a, .p = &p};
    uint64_t start = monotonic_us();
    if (a->builder)
        iothread_call(a->builder, load_machine, &l);
    else
        load_machine(&l);
    if (l.result < 0) {
        if (a->vm->started) {
            /* It was built and then could not start: the machine is stopping; ember ends
             * as after a failed InstanceStart. */
            a->vm_created = true;
        }
        return fault(out, l.error);
    }
    a->vm_created = true;
    a->vm_cfg = l.cfg;
    api_config_adopt_vm(&a->cfg, &a->vm_cfg, &a->mmds);
    builder_done(a);
    uint64_t end = monotonic_us();
    api_metrics_set_latency(&a->metrics, API_LATENCY_VMM_LOAD_SNAPSHOT, end - start);
    api_metrics_set_latency(&a->metrics, API_LATENCY_LOAD_SNAPSHOT, end - a->request_start_us);
    log_info("snapshot %s loaded in %llu us: %u vCPU(s), %llu MiB, %s", req.snapshot_path,
             (unsigned long long)(end - start), l.cfg.ncpus, (unsigned long long)l.cfg.memory_mib,
             req.resume_vm ? "running" : "paused");
    return 204;
}

/* ---- live migration (ember's own routes) ------------------------------------------------ */

static void migration_to_metrics(struct api *a, const struct migration_stats *st)
{
    a->metrics.migration.rounds = st->rounds;
    a->metrics.migration.pages = st->pages_sent;
    a->metrics.migration.bytes = st->bytes_sent;
    a->metrics.migration.dirty_pages = st->last_dirty_pages;
    a->metrics.migration.bandwidth_bps = st->bandwidth_bps;
    a->metrics.migration.downtime_us = st->downtime_us;
    a->metrics.migration.total_us = st->total_us;
}

/* Each pre-copy pass: the metrics file gets a line, so that progress can be followed. */
static void migration_progress(void *opaque, const struct migration_stats *st)
{
    struct api *a = opaque;
    migration_to_metrics(a, st);
    if (api_metrics_enabled(&a->metrics) && api_metrics_flush(&a->metrics, a->vm) < 0)
        log_warn("metrics: %s", error_get());
}

static int put_migration_send(struct api *a, const cJSON *body, char **out)
{
    struct api_migration_send req;
    if (api_parse_migration_send(body, &req) < 0)
        return fault_from_error(out);
    if (!api_instance_started(a))
        return not_before_start(out);
    struct migration_send_params p = {
        .url = req.destination_url,
        .downtime_ms = req.downtime_ms,
        .timeout_ms = req.timeout_s * 1000,
        .max_rounds = (unsigned)req.max_rounds,
        .local = req.local,
        .progress = migration_progress,
        .opaque = a,
    };
    struct migration_stats st;
    int r = migration_send_vm(a->vm, &p, &st);
    migration_to_metrics(a, &st);
    if (r < 0) {
        a->metrics.migration.failed++;
        return fault_from_error(out);
    }
    a->metrics.migration.completed++;
    return 204;
}

struct receive_job {
    struct api *a;
    const struct migration_receive_params *p;
    struct vm_config cfg;
    struct migration_stats st;
    int result, status;
    char error[512];
};

static void receive_machine(void *arg)
{
    struct receive_job *j = arg;
    j->result = migration_receive_vm(j->a->vm, j->a->loop, j->p, &j->cfg, &j->status, &j->st);
    if (j->result < 0)
        snprintf(j->error, sizeof(j->error), "%s", error_get());
}

static int put_migration_receive(struct api *a, const cJSON *body, char **out)
{
    struct api_migration_receive req;
    if (api_parse_migration_receive(body, &req) < 0)
        return fault_from_error(out);
    if (a->vm_created)
        return fault(out, "the machine exists already: a migration is received only by a new "
                          "ember process");
    if (a->configured)
        return fault(out, "a migration is received only by an ember process nothing was "
                          "configured for");
    struct migration_receive_params p = {
        .url = req.receiver_url,
        .timeout_ms = req.timeout_s * 1000,
        .load = {.attach_console = true, .mmds = &a->mmds, .instance_id = a->instance_id},
    };
    overrides_to_load(&req.overrides, &p.load);
    struct receive_job j = {.a = a, .p = &p};
    if (a->builder)
        iothread_call(a->builder, receive_machine, &j);
    else
        receive_machine(&j);
    migration_to_metrics(a, &j.st);
    if (j.result < 0) {
        a->metrics.migration.failed++;
        if (a->vm->started)
            a->vm_created = true;
        return fault(out, j.error);
    }
    a->metrics.migration.completed++;
    a->vm_created = true;
    a->vm_cfg = j.cfg;
    api_config_adopt_vm(&a->cfg, &a->vm_cfg, &a->mmds);
    builder_done(a);
    return 204;
}

static struct virtio_blk *find_blk(struct vm *vm, const char *id)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->dev->device_id != VIRTIO_ID_BLOCK || vm->virtio[i]->vhost_user)
            continue;
        struct virtio_blk *b = vm->virtio[i]->model;
        if (b->opts.id && !strcmp(b->opts.id, id))
            return b;
    }
    return NULL;
}

static struct vhost_user_blk *find_vhost_user_blk(struct vm *vm, const char *id)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (!vm->virtio[i]->vhost_user || vm->virtio[i]->dev->device_id != VIRTIO_ID_BLOCK)
            continue;
        const char *dev_id = vm->virtio[i]->drive_id;
        if (dev_id && !strcmp(dev_id, id))
            return vm->virtio[i]->model;
    }
    return NULL;
}

/* Firecracker's PATCH of a vhost-user drive: drive_id alone, the back-end's configuration
 * space read again. */
static int refresh_vhost_user_drive(struct api *a, const char *id, const struct api_drive_update *u,
                                    char **out)
{
    struct vhost_user_blk *v = find_vhost_user_blk(a->vm, id);
    if (!v)
        error_set("no drive '%s'", id);
    else if (u->path || u->has_rate_limiter)
        error_set("drive '%s' is served by a vhost-user back-end: neither `path_on_host` nor "
                  "`rate_limiter` can change (a PATCH with `drive_id` alone reads its "
                  "configuration again)",
                  id);
    else if (vhost_user_blk_refresh(v) < 0)
        error_prefix("drive '%s'", id);
    else {
        log_info("drive '%s': the vhost-user back-end's configuration read again: %llu sectors", id,
                 (unsigned long long)v->capacity);
        return 204;
    }
    return fault_from_error(out);
}

static int patch_drive(struct api *a, const char *id, const cJSON *body, char **out)
{
    struct api_drive_update u;
    if (api_parse_drive_update(id, body, &u) < 0)
        return fault_from_error(out);
    int status = 204;
    if (!api_instance_started(a)) {
        status = not_before_start(out);
        goto done;
    }
    struct api_drive *d = NULL;
    unsigned index = 0;
    for (unsigned i = 0; i < a->cfg.ndrives; i++) {
        if (!strcmp(a->cfg.drives[i].id, id)) {
            d = &a->cfg.drives[i];
            index = i;
        }
    }
    if (d && d->socket) {
        status = refresh_vhost_user_drive(a, id, &u, out);
        goto done;
    }
    struct virtio_blk *b = d ? find_blk(a->vm, id) : NULL;
    if (!b) {
        error_set("no drive '%s'", id);
        status = fault_from_error(out);
        goto done;
    }
    if (!u.path && !u.has_rate_limiter) {
        /* Firecracker takes a PATCH without either as a vhost-user drive's
         * refresh, which a virtio-blk drive refuses. */
        error_set("drive '%s': nothing to change (path_on_host or rate_limiter)", id);
        status = fault_from_error(out);
        goto done;
    }
    if (u.path) {
        if (virtio_blk_change_backing(b, u.path) < 0) {
            error_prefix("drive '%s'", id);
            status = fault_from_error(out);
            goto done;
        }
        log_info("drive '%s' now reads and writes '%s'", id, u.path);
        /* The device holds the new string now; the old one has no user. */
        free(d->path);
        d->path = u.path;
        a->vm->cfg.drives[index].path = u.path;
        u.path = NULL;
    }
    if (u.has_rate_limiter) {
        d->rate_limit = u.rate_limit;
        d->has_rate_limiter = true;
        a->vm->cfg.drives[index].rate_limit = u.rate_limit;
        virtio_blk_change_limits(b, &u.rate_limit);
        log_info("drive '%s': new rate limits in force", id);
    }
done:
    free(u.path);
    return status;
}

static struct virtio_net *find_net(struct vm *vm, const char *id)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->dev->device_id != VIRTIO_ID_NET || vm->virtio[i]->vhost_user)
            continue;
        struct virtio_net *n = vm->virtio[i]->model;
        if (n->opts.id && !strcmp(n->opts.id, id))
            return n;
    }
    return NULL;
}

static int patch_net(struct api *a, const char *id, const cJSON *body, char **out)
{
    struct api_net_update u;
    if (api_parse_net_update(id, body, &u) < 0)
        return fault_from_error(out);
    if (!api_instance_started(a))
        return not_before_start(out);
    struct api_net *cfg = NULL;
    unsigned index = 0;
    for (unsigned i = 0; i < a->cfg.nnets; i++) {
        if (!strcmp(a->cfg.nets[i].id, id)) {
            cfg = &a->cfg.nets[i];
            index = i;
        }
    }
    if (cfg && cfg->vhost_user_socket) {
        error_set("network interface '%s' is served by a vhost-user back-end: its rate limits "
                  "are the back-end's",
                  id);
        return fault_from_error(out);
    }
    struct virtio_net *n = cfg ? find_net(a->vm, id) : NULL;
    if (!n) {
        error_set("no network interface '%s'", id);
        return fault_from_error(out);
    }
    if (virtio_net_change_limits(n, u.has_rx ? &u.rx : NULL, u.has_tx ? &u.tx : NULL) < 0)
        return fault_from_error(out);
    if (u.has_rx) {
        cfg->rx = a->vm->cfg.nets[index].rx_limit = u.rx;
        cfg->has_rx = true;
    }
    if (u.has_tx) {
        cfg->tx = a->vm->cfg.nets[index].tx_limit = u.tx;
        cfg->has_tx = true;
    }
    log_info("network interface '%s': new rate limits in force", id);
    return 204;
}

struct leaf_check {
    const struct cpu_custom_template *template;
    const char *kvm_path;
    int result;
    char error[256];
};

/* Runs where opening /dev/kvm is allowed (the builder thread when the
 * filters are on): a host without KVM leaves the check to InstanceStart. */
static void check_leaves(void *arg)
{
    struct leaf_check *lc = arg;
    lc->result = 0;
    int fd = open(lc->kvm_path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return;
    unsigned capacity;
    struct kvm_cpuid2 *supported = cpuid_get_supported(fd, 0, &capacity);
    close(fd);
    if (supported && api_cpu_config_check_leaves(lc->template, supported) < 0) {
        snprintf(lc->error, sizeof(lc->error), "%s", error_get());
        lc->result = -1;
    }
    free(supported);
}

static int put_cpu_config(struct api *a, const cJSON *body, char **out)
{
    if (api_instance_started(a))
        return not_after_start(out);
    struct cpu_custom_template *t = api_parse_cpu_config(body);
    if (!t)
        return fault_from_error(out);
    struct vm_config defaults;
    vm_config_defaults(&defaults);
    struct leaf_check lc = {.template = t, .kvm_path = defaults.kvm_path};
    if (a->builder)
        iothread_call(a->builder, check_leaves, &lc);
    else
        check_leaves(&lc);
    if (lc.result < 0) {
        free(t);
        return fault(out, lc.error);
    }
    api_set_custom_cpu(&a->cfg, t);
    return 204;
}

/* ---- MMDS ----------------------------------------------------------------- */

static int fault_status(char **out, int status, const char *message)
{
    fault(out, message);
    return status;
}

/* Firecracker's words for the store's states, kept as they are for clients that match them. */
static int mmds_store_fault(char **out, enum mmds_result r)
{
    switch (r) {
    case MMDS_TOO_LARGE:
        return fault_status(out, 413,
                            "MMDS limit exceeded error: The MMDS patch request doesn't fit.");
    case MMDS_NOT_INITIALIZED:
        return fault(out, "MMDS error: The MMDS data store is not initialized.");
    default:
        return fault(out, "MMDS error: out of memory");
    }
}

static int route_mmds(struct api *a, bool get, bool put, bool patch, const cJSON *body, char **out)
{
    if (!get && !put && !patch)
        return -1;
    /* As in Firecracker, the store answers whether or not the machine serves it to a guest
     * (started without MMDS, a PUT still fills it). */
    if (get) {
        *out = mmds_store_json(&a->mmds);
        return *out ? 200 : mmds_store_fault(out, MMDS_NO_MEMORY);
    }
    enum mmds_result r = put ? mmds_store_put(&a->mmds, body) : mmds_store_patch(&a->mmds, body);
    return r == MMDS_OK ? 204 : mmds_store_fault(out, r);
}

/* The request used something Firecracker deprecates: the answer carries the
 * Deprecation header and the log says what, as Firecracker's do. */
__attribute__((format(printf, 2, 3))) static void deprecated(struct api *a, const char *fmt, ...)
{
    char msg[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    a->deprecated_request = true;
    log_limited(&a->log_deprecated, LOG_WARN, "%s", msg);
}

static int put_mmds_config(struct api *a, const cJSON *body, char **out)
{
    if (api_instance_started(a))
        return not_after_start(out);
    bool semantic;
    if (api_put_mmds_config(&a->cfg, body, &semantic) < 0) {
        if (semantic) /* Firecracker's prefix, its spelling included */
            error_prefix("MMMDS config error");
        return fault_from_error(out);
    }
    if (!a->cfg.mmds.v2)
        deprecated(a, "PUT /mmds/config: V1 is deprecated. Use V2 instead.");
    mmds_store_configure(&a->mmds, a->cfg.mmds.v2 ? MMDS_V2 : MMDS_V1, a->cfg.mmds.imds_compat,
                         a->instance_id);
    return 204;
}

/* Routes Firecracker has that ember does not implement yet. */
static struct virtio_pmem *find_pmem(struct vm *vm, const char *id)
{
    for (unsigned i = 0; i < vm->nvirtio; i++) {
        if (vm->virtio[i]->dev->device_id != VIRTIO_ID_PMEM)
            continue;
        struct virtio_pmem *p = vm->virtio[i]->model;
        if (p->opts.id && !strcmp(p->opts.id, id))
            return p;
    }
    return NULL;
}

/* PATCH /pmem/{id}: after start, new rate limits for the device's flushes. */
static int patch_pmem(struct api *a, const char *id, const cJSON *body, char **out)
{
    struct api_pmem_update u;
    if (api_parse_pmem_update(id, body, &u) < 0)
        return fault_from_error(out);
    if (!api_instance_started(a))
        return not_before_start(out);
    struct api_pmem *cfg = NULL;
    for (unsigned i = 0; i < a->cfg.npmem; i++) {
        if (!strcmp(a->cfg.pmem[i].id, id))
            cfg = &a->cfg.pmem[i];
    }
    struct virtio_pmem *p = cfg ? find_pmem(a->vm, id) : NULL;
    if (!p) {
        error_set("Pmem config error: Unable to patch the pmem device: no pmem device '%s'. "
                  "Please verify the request arguments.",
                  id);
        return fault_from_error(out);
    }
    if (u.has_rate_limiter) {
        cfg->rate_limit = u.rate_limit;
        cfg->has_rate_limiter = true;
        /* The machine's configuration too: a snapshot carries the limits in force. */
        for (unsigned i = 0; i < a->vm->cfg.npmem; i++) {
            if (a->vm->cfg.pmem[i].id && !strcmp(a->vm->cfg.pmem[i].id, id))
                a->vm->cfg.pmem[i].rate_limit = u.rate_limit;
        }
        virtio_pmem_change_limits(p, &u.rate_limit);
        log_info("pmem '%s': new rate limits in force", id);
    }
    return 204;
}

static const struct {
    const char *path;
    const char *methods; /* space-separated */
    const char *feature;
} unsupported_routes[] = {
    {"/balloon", "GET PUT PATCH", "the balloon device"},
    {"/balloon/statistics", "GET PATCH", "the balloon device"},
    {"/balloon/hinting/start", "PATCH", "the balloon device"},
    {"/balloon/hinting/status", "GET", "the balloon device"},
    {"/balloon/hinting/stop", "PATCH", "the balloon device"},
    {"/hotplug/memory", "GET PUT PATCH", "memory hotplug"},
};

static bool method_in(const char *method, const char *list)
{
    size_t n = strlen(method);
    for (const char *p = list; *p;) {
        const char *sp = strchr(p, ' ');
        size_t len = sp ? (size_t)(sp - p) : strlen(p);
        if (len == n && !strncmp(p, method, n))
            return true;
        p += len + (sp ? 1 : 0);
    }
    return false;
}

/* "/drives/x" against "/drives/" returns "x" (non-empty, no '/'), else NULL. */
static const char *path_param(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(path, prefix, n) != 0 || !path[n] || strchr(path + n, '/'))
        return NULL;
    return path + n;
}

/* A device the configuration does not have yet must find an interrupt line
 * on virtio-mmio (vmm/devices.c), so that the request that asks for one too
 * many is the one refused, not InstanceStart. */
static int mmio_room_for_one_more(const struct api *a, const char *what)
{
    const struct api_config *c = &a->cfg;
    unsigned devices = c->ndrives + c->nnets + c->npmem + c->nfs + c->vsock.set + c->entropy.set;
    if (a->enable_pci || devices < VM_MAX_MMIO_DEVICES)
        return 0;
    return error_set("%s: the machine has %u virtio-mmio devices already, as many as have an "
                     "interrupt line (as in Firecracker); start ember with --enable-pci for more",
                     what, devices);
}

static bool has_drive(const struct api_config *c, const char *id)
{
    for (unsigned i = 0; i < c->ndrives; i++) {
        if (!strcmp(c->drives[i].id, id))
            return true;
    }
    return false;
}

static bool has_net(const struct api_config *c, const char *id)
{
    for (unsigned i = 0; i < c->nnets; i++) {
        if (!strcmp(c->nets[i].id, id))
            return true;
    }
    return false;
}

/* PUT /network-interfaces: the tap is attached now, as Firecracker does, so
 * that a tap that is missing (and cannot be made) or busy fails this request,
 * not InstanceStart. Replacing an interface on the same tap keeps it. */
static int put_net(struct api *a, const char *id, const cJSON *body, char **out)
{
    if (api_check_net(&a->cfg, id, body) < 0)
        return fault_from_error(out);
    if (!cJSON_GetObjectItemCaseSensitive(body, "host_dev_name")) {
        /* A vhost-user interface: its back-end is reached at InstanceStart. */
        if (api_put_net(&a->cfg, id, body) < 0)
            return fault_from_error(out);
        return 204;
    }
    const char *dev = cJSON_GetObjectItemCaseSensitive(body, "host_dev_name")->valuestring;
    struct api_net *old = NULL;
    for (unsigned i = 0; i < a->cfg.nnets; i++) {
        if (!strcmp(a->cfg.nets[i].id, id))
            old = &a->cfg.nets[i];
    }
    int fd;
    if (old && old->tap_fd >= 0 && old->host_dev_name && !strcmp(old->host_dev_name, dev)) {
        fd = old->tap_fd;
        old->tap_fd = -1;
    } else if ((fd = net_tap_attach(dev)) < 0) {
        error_prefix("network interface '%s'", id);
        return fault_from_error(out);
    }
    if (api_put_net(&a->cfg, id, body) < 0) {
        close(fd);
        return fault_from_error(out);
    }
    for (unsigned i = 0; i < a->cfg.nnets; i++) {
        if (!strcmp(a->cfg.nets[i].id, id))
            a->cfg.nets[i].tap_fd = fd;
    }
    return 204;
}

/* PUT /vsock: the host socket is bound now, as Firecracker does, so that a
 * path that cannot be bound fails this request. The same path again keeps
 * its socket. */
static int put_vsock(struct api *a, const cJSON *body, char **out)
{
    struct api_config scratch;
    api_config_init(&scratch);
    int r = api_put_vsock(&scratch, body);
    api_config_free(&scratch);
    if (r < 0)
        return fault_from_error(out);
    if (cJSON_GetObjectItemCaseSensitive(body, "vsock_id"))
        deprecated(a, "PUT /vsock: vsock_id field is deprecated.");
    const char *path = cJSON_GetObjectItemCaseSensitive(body, "uds_path")->valuestring;
    struct api_vsock *v = &a->cfg.vsock;
    int fd;
    if (v->set && v->listen_fd >= 0 && !strcmp(v->uds_path, path)) {
        fd = v->listen_fd;
    } else if ((fd = uds_listen(path)) < 0) {
        error_prefix("vsock");
        return fault_from_error(out);
    } else if (v->set && v->listen_fd >= 0) {
        close(v->listen_fd);
        unlink(v->uds_path);
    }
    v->listen_fd = -1;
    if (api_put_vsock(&a->cfg, body) < 0) {
        close(fd);
        unlink(path);
        return fault_from_error(out);
    }
    a->cfg.vsock.listen_fd = fd;
    return 204;
}

struct route_ctx {
    struct api *a;
    const char *method;
    const char *path;
    const cJSON *body;
    char **out;
};

static int invalid_route(struct route_ctx *r)
{
    char msg[HTTP_MAX_PATH + 80];
    snprintf(msg, sizeof(msg), "invalid request method and/or path: %s %s", r->method, r->path);
    return fault(r->out, msg);
}

static int route(struct route_ctx *r)
{
    struct api *a = r->a;
    const char *m = r->method, *p = r->path;
    bool get = !strcmp(m, "GET"), put = !strcmp(m, "PUT"), patch = !strcmp(m, "PATCH");
    const char *id;
    char **out = r->out;
    if (!strcmp(p, "/")) {
        if (!get)
            return invalid_route(r);
        return get_instance(a, out);
    }
    if (!strcmp(p, "/version")) {
        if (!get)
            return invalid_route(r);
        return get_version(out);
    }
    if (!strcmp(p, "/machine-config")) {
        if (get) {
            *out = print_json(api_machine_config_json(&a->cfg));
            return 200;
        }
        if (!put && !patch)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        if (api_put_machine_config(&a->cfg, r->body, patch) < 0)
            return fault_from_error(out);
        /* Firecracker deprecates the field (CPU templates go through /cpu-config). */
        if (cJSON_GetObjectItemCaseSensitive(r->body, "cpu_template"))
            deprecated(a, "%s /machine-config: cpu_template field is deprecated.", r->method);
        return 204;
    }
    if (!strcmp(p, "/boot-source")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        return api_put_boot_source(&a->cfg, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if ((id = path_param(p, "/drives/"))) {
        if (patch)
            return patch_drive(a, id, r->body, out);
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        if (!has_drive(&a->cfg, id) && mmio_room_for_one_more(a, "drive") < 0)
            return fault_from_error(out);
        return api_put_drive(&a->cfg, id, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if ((id = path_param(p, "/pmem/"))) {
        if (patch)
            return patch_pmem(a, id, r->body, out);
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        bool known = false;
        for (unsigned i = 0; i < a->cfg.npmem; i++)
            known = known || !strcmp(a->cfg.pmem[i].id, id);
        if (!known && mmio_room_for_one_more(a, "pmem") < 0)
            return fault_from_error(out);
        return api_put_pmem(&a->cfg, id, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if ((id = path_param(p, "/fs/"))) {
        /* ember's own route: Firecracker has no virtio-fs. */
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        bool known = false;
        for (unsigned i = 0; i < a->cfg.nfs; i++)
            known = known || !strcmp(a->cfg.fs[i].id, id);
        if (!known && mmio_room_for_one_more(a, "fs") < 0)
            return fault_from_error(out);
        return api_put_fs(&a->cfg, id, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if ((id = path_param(p, "/network-interfaces/"))) {
        if (patch)
            return patch_net(a, id, r->body, out);
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        if (!has_net(&a->cfg, id) && mmio_room_for_one_more(a, "network interface") < 0)
            return fault_from_error(out);
        return put_net(a, id, r->body, out);
    }
    if (!strcmp(p, "/actions")) {
        if (!put)
            return invalid_route(r);
        return do_action(a, r->body, out);
    }
    if (!strcmp(p, "/vm")) {
        if (!patch)
            return invalid_route(r);
        return patch_vm(a, r->body, out);
    }
    if (!strcmp(p, "/vm/nmi")) {
        if (!put)
            return invalid_route(r);
        return put_vm_nmi(a, r->body, out);
    }
    if (!strcmp(p, "/snapshot/create")) {
        if (!put)
            return invalid_route(r);
        return put_snapshot_create(a, r->body, out);
    }
    if (!strcmp(p, "/snapshot/load")) {
        if (!put)
            return invalid_route(r);
        return put_snapshot_load(a, r->body, out);
    }
    if (!strcmp(p, "/migration/send")) {
        if (!put)
            return invalid_route(r);
        return put_migration_send(a, r->body, out);
    }
    if (!strcmp(p, "/migration/receive")) {
        if (!put)
            return invalid_route(r);
        return put_migration_receive(a, r->body, out);
    }
    if (!strcmp(p, "/vm/config")) {
        if (!get)
            return invalid_route(r);
        *out = print_json(api_config_json(&a->cfg));
        return 200;
    }
    if (!strcmp(p, "/logger")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        struct api_logger l;
        if (api_parse_logger(r->body, &l) < 0)
            return fault_from_error(out);
        if (api_apply_logger(a, &l) < 0) {
            free(l.log_path);
            free(l.module);
            return fault_from_error(out);
        }
        return 204;
    }
    if (!strcmp(p, "/metrics")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        char *path;
        if (api_parse_metrics(r->body, &path) < 0)
            return fault_from_error(out);
        int rc = api_apply_metrics(a, path);
        free(path);
        return rc < 0 ? fault_from_error(out) : 204;
    }
    if (!strcmp(p, "/cpu-config")) {
        if (!put)
            return invalid_route(r);
        return put_cpu_config(a, r->body, out);
    }
    if (!strcmp(p, "/entropy")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        if (!a->cfg.entropy.set && mmio_room_for_one_more(a, "entropy") < 0)
            return fault_from_error(out);
        return api_put_entropy(&a->cfg, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if (!strcmp(p, "/serial")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        return api_put_serial(&a->cfg, r->body) < 0 ? fault_from_error(out) : 204;
    }
    if (!strcmp(p, "/vsock")) {
        if (!put)
            return invalid_route(r);
        if (api_instance_started(a))
            return not_after_start(out);
        if (!a->cfg.vsock.set && mmio_room_for_one_more(a, "vsock") < 0)
            return fault_from_error(out);
        return put_vsock(a, r->body, out);
    }
    if (!strcmp(p, "/mmds")) {
        int status = route_mmds(a, get, put, patch, r->body, out);
        return status < 0 ? invalid_route(r) : status;
    }
    if (!strcmp(p, "/mmds/config")) {
        if (!put)
            return invalid_route(r);
        return put_mmds_config(a, r->body, out);
    }
    for (size_t i = 0; i < sizeof(unsupported_routes) / sizeof(unsupported_routes[0]); i++) {
        if (strcmp(p, unsupported_routes[i].path) != 0)
            continue;
        if (!method_in(m, unsupported_routes[i].methods))
            return invalid_route(r);
        char msg[160];
        snprintf(msg, sizeof(msg), "ember does not support %s yet", unsupported_routes[i].feature);
        return fault(out, msg);
    }
    return invalid_route(r);
}

/* The route a request counts under in the metrics: ids and unknown paths
 * fold into one name each, so no client can grow the table. */
static const char *route_template(const char *method, const char *path)
{
    static const char *const fixed[] = {"/",
                                        "/version",
                                        "/machine-config",
                                        "/boot-source",
                                        "/actions",
                                        "/vm",
                                        "/vm/config",
                                        "/logger",
                                        "/metrics",
                                        "/entropy",
                                        "/vsock",
                                        "/mmds",
                                        "/mmds/config",
                                        "/cpu-config",
                                        "/serial",
                                        "/snapshot/create",
                                        "/snapshot/load"};
    if (strcmp(method, "GET") && strcmp(method, "PUT") && strcmp(method, "PATCH"))
        return "other"; /* any method name would otherwise make a new entry */
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (!strcmp(path, fixed[i]))
            return fixed[i];
    }
    if (path_param(path, "/drives/"))
        return "/drives/{drive_id}";
    if (path_param(path, "/network-interfaces/"))
        return "/network-interfaces/{iface_id}";
    if (path_param(path, "/pmem/"))
        return "/pmem/{id}";
    if (path_param(path, "/fs/"))
        return "/fs/{id}";
    for (size_t i = 0; i < sizeof(unsupported_routes) / sizeof(unsupported_routes[0]); i++) {
        if (!strcmp(path, unsupported_routes[i].path))
            return unsupported_routes[i].path;
    }
    return "other";
}

/* The path as Firecracker reads it: leading and trailing slashes do not
 * count ("//machine-config/" is "/machine-config"). */
static void normalize_path(const char *path, char *out, size_t size)
{
    while (path[0] == '/' && path[1] == '/')
        path++;
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n >= size)
        n = size - 1;
    memcpy(out, path, n);
    out[n] = '\0';
    if (!out[0])
        strcpy(out, "/");
}

int api_dispatch(struct api *a, const char *method, const char *raw_path, const char *body,
                 size_t body_len, char **out)
{
    *out = NULL;
    error_clear();
    a->deprecated_request = false;
    a->request_start_us = monotonic_us();
    char path[HTTP_MAX_PATH];
    normalize_path(raw_path, path, sizeof(path));
    struct route_ctx r = {.a = a, .method = method, .path = path, .out = out};
    cJSON *json = NULL;
    int status;
    bool wants_body = !strcmp(method, "PUT") || !strcmp(method, "PATCH");
    if (!strcmp(method, "GET") && body_len) {
        status = fault(out, "GET request cannot have a body");
        goto count;
    }
    if (wants_body && body_len == 0) {
        char msg[64];
        snprintf(msg, sizeof(msg), "empty %s request: a JSON body is required", method);
        status = fault(out, msg);
        goto count;
    }
    if (wants_body) {
        json = cJSON_ParseWithLength(body, body_len);
        if (!json) {
            const char *at = cJSON_GetErrorPtr();
            char msg[96];
            snprintf(msg, sizeof(msg), "the body is not valid JSON (near byte %zu)",
                     at && at >= body && at <= body + body_len ? (size_t)(at - body) : (size_t)0);
            status = fault(out, msg);
            goto count;
        }
    }
    r.body = json;
    status = route(&r);
    /* A snapshot loads only into a machine nothing was configured for (as in Firecracker):
     * the log, the metrics and the metadata's contents do not count. */
    if (status < 300 && wants_body && !a->vm_created && strcmp(path, "/logger") &&
        strcmp(path, "/metrics") && strcmp(path, "/mmds") && strcmp(path, "/snapshot/load") &&
        strcmp(path, "/migration/receive"))
        a->configured = true;
count:;
    char key[48];
    const char *tmpl = route_template(method, path);
    if (!strcmp(tmpl, "other"))
        snprintf(key, sizeof(key), "other");
    else
        snprintf(key, sizeof(key), "%s %s", method, tmpl);
    api_metrics_count_request(&a->metrics, key, status);
    if (a->deprecated_request)
        api_metrics_count_deprecated(&a->metrics);
    if (status >= 400)
        log_debug("API: %s %s -> %d %s", method, path, status, *out ? *out : "");
    else
        log_debug("API: %s %s -> %d", method, path, status);
    cJSON_Delete(json);
    return status;
}

void api_handle_request(void *opaque, const struct http_request *req, int *status, char **body)
{
    struct api *a = opaque;
    *status = api_dispatch(a, req->method_name, req->path, req->body, req->body_len, body);
    if (a->deprecated_request)
        *status |= API_STATUS_DEPRECATED;
}
