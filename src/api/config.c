#include "api/config.h"

#include "api/cpu_config.h"
#include "arch/x86/cpuid.h"
#include "backends/block.h"
#include "mmds/store.h"
#include "util/error.h"
#include "virtio/poll_window.h"
#include "virtio/vhost_user_fs.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- JSON helpers ----------------------------------------------------- */

static char *dup_str(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void replace_str(char **slot, char *value)
{
    free(*slot);
    *slot = value;
}

static int expect_object(const cJSON *v, const char *what)
{
    if (!v || !cJSON_IsObject(v))
        return error_set("%s must be a JSON object", what);
    return 0;
}

/* Refuses fields the schema does not have, as Firecracker's parser does,
 * so that a misspelt option is an error rather than silently ignored. */
static int only_fields(const cJSON *obj, const char *what, const char *const *allowed)
{
    for (const cJSON *f = obj->child; f; f = f->next) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = f->string && !strcmp(f->string, *a);
        if (!ok)
            return error_set("%s: unknown field `%s`", what, f->string ? f->string : "");
        for (const cJSON *g = f->next; g; g = g->next) {
            if (g->string && f->string && !strcmp(g->string, f->string))
                return error_set("%s: duplicate field `%s`", what, f->string);
        }
    }
    return 0;
}

/* A field that is absent or null counts as not given. */
static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_string(const cJSON *obj, const char *what, const char *name, bool required,
                      const char **out)
{
    const cJSON *v = field(obj, name);
    if (!v) {
        if (required)
            return error_set("%s: missing field `%s`", what, name);
        *out = NULL;
        return 0;
    }
    if (!cJSON_IsString(v))
        return error_set("%s: `%s` must be a string", what, name);
    *out = v->valuestring;
    return 0;
}

static int get_bool(const cJSON *obj, const char *what, const char *name, bool required, bool *out,
                    bool *given)
{
    const cJSON *v = field(obj, name);
    if (given)
        *given = v != NULL;
    if (!v)
        return required ? error_set("%s: missing field `%s`", what, name) : 0;
    if (!cJSON_IsBool(v))
        return error_set("%s: `%s` must be true or false", what, name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_u64(const cJSON *obj, const char *what, const char *name, bool required,
                   uint64_t max, uint64_t *out, bool *given)
{
    const cJSON *v = field(obj, name);
    if (given)
        *given = v != NULL;
    if (!v)
        return required ? error_set("%s: missing field `%s`", what, name) : 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!cJSON_IsNumber(v) || d < 0 || d != floor(d) || d > (double)max)
        return error_set("%s: `%s` must be a whole number from 0 to %llu", what, name,
                         (unsigned long long)max);
    *out = (uint64_t)d;
    return 0;
}

bool api_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > API_MAX_ID_BYTES)
        return false;
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
            return false;
    }
    return true;
}

static int check_id(const char *what, const char *id)
{
    if (!api_id_valid(id))
        return error_set("%s: invalid id '%s' (1 to %d letters, digits, '_', '-' or '.')", what, id,
                         API_MAX_ID_BYTES);
    return 0;
}

/* ---- rate limiters ---------------------------------------------------- */

static int parse_token_bucket(const cJSON *v, const char *what, struct token_bucket_config *tb)
{
    static const char *const fields[] = {"size", "one_time_burst", "refill_time", NULL};
    if (expect_object(v, what) < 0 || only_fields(v, what, fields) < 0)
        return -1;
    *tb = (struct token_bucket_config){0};
    if (get_u64(v, what, "size", true, UINT64_MAX >> 12, &tb->size, NULL) < 0 ||
        get_u64(v, what, "one_time_burst", false, UINT64_MAX >> 12, &tb->one_time_burst, NULL) <
            0 ||
        get_u64(v, what, "refill_time", true, UINT64_MAX >> 12, &tb->refill_ms, NULL) < 0)
        return -1;
    /* A bucket that never refills limits nothing, as in Firecracker. */
    if (tb->refill_ms == 0)
        tb->size = 0;
    return 0;
}

static int parse_rate_limiter(const cJSON *v, const char *what, struct rate_limit_config *rl)
{
    static const char *const fields[] = {"bandwidth", "ops", NULL};
    char sub[96];
    memset(rl, 0, sizeof(*rl));
    if (expect_object(v, what) < 0 || only_fields(v, what, fields) < 0)
        return -1;
    const cJSON *b = field(v, "bandwidth"), *o = field(v, "ops");
    snprintf(sub, sizeof(sub), "%s.bandwidth", what);
    if (b && parse_token_bucket(b, sub, &rl->bandwidth) < 0)
        return -1;
    snprintf(sub, sizeof(sub), "%s.ops", what);
    if (o && parse_token_bucket(o, sub, &rl->ops) < 0)
        return -1;
    return 0;
}

/* Firecracker's shape: every field present, null where not set. */
static cJSON *bucket_json(const struct token_bucket_config *tb)
{
    if (!tb->size)
        return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "size", (double)tb->size);
    if (tb->one_time_burst)
        cJSON_AddNumberToObject(o, "one_time_burst", (double)tb->one_time_burst);
    else
        cJSON_AddNullToObject(o, "one_time_burst");
    cJSON_AddNumberToObject(o, "refill_time", (double)tb->refill_ms);
    return o;
}

cJSON *api_rate_limiter_json(const struct rate_limit_config *rl)
{
    /* A limiter without buckets limits nothing: Firecracker shows none. */
    if (!rl->bandwidth.size && !rl->ops.size)
        return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "bandwidth", bucket_json(&rl->bandwidth));
    cJSON_AddItemToObject(o, "ops", bucket_json(&rl->ops));
    return o;
}

/* ---- the configuration ------------------------------------------------- */

void api_config_init(struct api_config *c)
{
    memset(c, 0, sizeof(*c));
    c->machine.vcpu_count = VM_DEFAULT_CPUS;
    c->machine.mem_size_mib = VM_DEFAULT_MEMORY_MIB;
    strcpy(c->machine.cpu_template, "None");
    strcpy(c->machine.huge_pages, "None");
    c->logger.level = LOG_INFO;
    c->serial_out_fd = -1;
    c->vsock.listen_fd = -1;
}

static void free_drive(struct api_drive *d)
{
    free(d->id);
    free(d->path);
    free(d->socket);
    free(d->partuuid);
    memset(d, 0, sizeof(*d));
}

static void free_pmem(struct api_pmem *p)
{
    free(p->id);
    free(p->path);
    memset(p, 0, sizeof(*p));
}

static void free_fs(struct api_fs *f)
{
    free(f->id);
    free(f->tag);
    free(f->socket);
    memset(f, 0, sizeof(*f));
}

static void free_net(struct api_net *n)
{
    if (n->tap_fd >= 0)
        close(n->tap_fd);
    free(n->id);
    free(n->host_dev_name);
    free(n->vhost_user_socket);
    free(n->guest_mac);
    memset(n, 0, sizeof(*n));
}

void api_config_free(struct api_config *c)
{
    free(c->kernel_path);
    free(c->initrd_path);
    free(c->boot_args);
    for (unsigned i = 0; i < c->ndrives; i++)
        free_drive(&c->drives[i]);
    for (unsigned i = 0; i < c->nnets; i++)
        free_net(&c->nets[i]);
    for (unsigned i = 0; i < c->npmem; i++)
        free_pmem(&c->pmem[i]);
    for (unsigned i = 0; i < c->nfs; i++)
        free_fs(&c->fs[i]);
    free(c->logger.log_path);
    free(c->logger.module);
    free(c->metrics_path);
    if (c->vsock.listen_fd >= 0) {
        close(c->vsock.listen_fd);
        unlink(c->vsock.uds_path);
    }
    free(c->vsock.uds_path);
    free(c->vsock.vsock_id);
    free(c->custom_cpu);
    free(c->serial_out_path);
    if (c->serial_out_fd >= 0)
        close(c->serial_out_fd);
    for (unsigned i = 0; i < c->mmds.nifaces; i++)
        free(c->mmds.ifaces[i]);
    api_config_init(c);
}

int api_put_boot_source(struct api_config *c, const cJSON *body)
{
    static const char *const fields[] = {"kernel_image_path", "initrd_path", "boot_args", NULL};
    const char *what = "boot-source", *kernel, *initrd, *args;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "kernel_image_path", true, &kernel) < 0 ||
        get_string(body, what, "initrd_path", false, &initrd) < 0 ||
        get_string(body, what, "boot_args", false, &args) < 0)
        return -1;
    if (!*kernel)
        return error_set("%s: `kernel_image_path` is empty", what);
    /* Checked now so that the mistake is reported where it was made. */
    if (access(kernel, R_OK) < 0)
        return error_errno("%s: cannot read kernel image '%s'", what, kernel);
    if (initrd && access(initrd, R_OK) < 0)
        return error_errno("%s: cannot read initrd '%s'", what, initrd);
    if (args && strlen(args) >= 4096)
        return error_set("%s: `boot_args` is longer than 4095 bytes", what);
    replace_str(&c->kernel_path, dup_str(kernel));
    replace_str(&c->initrd_path, dup_str(initrd));
    replace_str(&c->boot_args, dup_str(args));
    c->has_boot_source = true;
    return 0;
}

static uint64_t host_ram_mib(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return UINT64_MAX;
    return ((uint64_t)pages * (uint64_t)page) >> 20;
}

/* A field that is present and not null counts as given. */
static bool any_field_given(const cJSON *obj)
{
    for (const cJSON *f = obj->child; f; f = f->next) {
        if (!cJSON_IsNull(f))
            return true;
    }
    return false;
}

void api_set_custom_cpu(struct api_config *c, struct cpu_custom_template *t)
{
    free(c->custom_cpu);
    c->custom_cpu = t;
    strcpy(c->machine.cpu_template, "None");
}

/* ember's `cpu_placement`: {"vmm": LIST, "vcpu": LIST, "poll_us": N}, both cpulists and the
 * I/O threads' polling bound (0: off; absent: the default) (vmm/placement.h). */
static int get_placement(const cJSON *body, const char *what, struct cpu_placement *out)
{
    static const char *const fields[] = {"vmm", "vcpu", "poll_us", NULL};
    const cJSON *v = field(body, "cpu_placement");
    if (!v)
        return 0;
    char inner[64];
    snprintf(inner, sizeof(inner), "%s: `cpu_placement`", what);
    const char *vmm, *vcpu;
    if (expect_object(v, inner) < 0 || only_fields(v, inner, fields) < 0 ||
        get_string(v, inner, "vmm", true, &vmm) < 0 ||
        get_string(v, inner, "vcpu", true, &vcpu) < 0)
        return -1;
    uint64_t poll_us = PLACEMENT_POLL_DEFAULT_US;
    if (get_u64(v, inner, "poll_us", false, POLL_WINDOW_MAX_US, &poll_us, NULL) < 0)
        return -1;
    if (cpu_placement_from_lists(vmm, vcpu, out) < 0)
        return error_prefix("%s", inner);
    out->poll_us = (unsigned)poll_us;
    return 0;
}

int api_put_machine_config(struct api_config *c, const cJSON *body, bool partial)
{
    static const char *const fields[] = {
        "vcpu_count",        "mem_size_mib", "smt",           "cpu_template",
        "track_dirty_pages", "huge_pages",   "cpu_placement", NULL};
    const char *what = "machine-config";
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0)
        return -1;
    /* As in Firecracker: a PATCH must change something. */
    if (partial && !any_field_given(body))
        return error_set("Empty PATCH request.");
    /* PUT replaces: what it leaves out takes the default value, except
     * the CPU template, which stays as Firecracker keeps it. */
    struct api_machine m = c->machine;
    if (!partial) {
        m.smt = m.track_dirty_pages = false;
        strcpy(m.huge_pages, "None");
        m.placement.set = false;
    }
    uint64_t vcpus = m.vcpu_count, mem = m.mem_size_mib;
    const char *tmpl, *huge;
    if (get_u64(body, what, "vcpu_count", !partial, API_MAX_VCPUS, &vcpus, NULL) < 0 ||
        get_u64(body, what, "mem_size_mib", !partial, UINT64_MAX >> 20, &mem, NULL) < 0 ||
        get_bool(body, what, "smt", false, &m.smt, NULL) < 0 ||
        get_bool(body, what, "track_dirty_pages", false, &m.track_dirty_pages, NULL) < 0 ||
        get_string(body, what, "cpu_template", false, &tmpl) < 0 ||
        get_string(body, what, "huge_pages", false, &huge) < 0)
        return -1;
    if (vcpus < 1)
        return error_set("%s: `vcpu_count` must be from 1 to %d", what, API_MAX_VCPUS);
    if (m.smt && vcpus > 1 && vcpus % 2)
        return error_set("%s: `vcpu_count` %llu with `smt`: The number of vCPUs must be greater "
                         "than 0, less than %d and must be 1 or an even number if SMT is enabled.",
                         what, (unsigned long long)vcpus, API_MAX_VCPUS);
    if (mem < VM_MIN_MEMORY_MIB)
        return error_set("%s: `mem_size_mib` must be at least %d", what, VM_MIN_MEMORY_MIB);
    /* The host's RAM is not checked here: as in Firecracker, a size the host
     * cannot back fails at InstanceStart (api_config_to_vm), not before. */
    if (tmpl) {
        enum cpu_template t;
        if (!strcmp(tmpl, "None"))
            strcpy(m.cpu_template, "None");
        else if (strlen(tmpl) < sizeof(m.cpu_template) && cpu_template_parse(tmpl, &t) == 0)
            strcpy(m.cpu_template, tmpl);
        else
            return error_set("%s: unknown `cpu_template` '%.40s' (None, C3, T2, T2S, T2CL, T2A, "
                             "or ember's host and baseline)",
                             what, tmpl);
    }
    if (huge) {
        if (!strcmp(huge, "None") || !strcmp(huge, "Transparent") || !strcmp(huge, "2M"))
            strcpy(m.huge_pages, huge);
        else
            return error_set("%s: unknown `huge_pages` '%s' (None, Transparent, 2M)", what, huge);
    }
    /* With huge pages, a whole number of them (Firecracker's rule, also for
     * transparent ones). */
    if (strcmp(m.huge_pages, "None") != 0 && mem % 2)
        return error_set("%s: `mem_size_mib` %llu is not a multiple of the 2 MiB page size "
                         "`huge_pages` %s uses",
                         what, (unsigned long long)mem, m.huge_pages);
    if (get_placement(body, what, &m.placement) < 0)
        return -1;
    /* Against the vCPU count this request leaves (a PATCH of either must keep them agreeing),
     * and the CPUs ember was given at start. */
    if (cpu_placement_check_host(&m.placement, (unsigned)vcpus) < 0)
        return error_prefix("%s: `cpu_placement`", what);
    m.vcpu_count = (unsigned)vcpus;
    m.mem_size_mib = mem;
    c->machine = m;
    /* A static template given (None included) replaces a custom one. */
    if (tmpl) {
        free(c->custom_cpu);
        c->custom_cpu = NULL;
    }
    return 0;
}

static struct api_drive *find_drive(struct api_config *c, const char *id)
{
    for (unsigned i = 0; i < c->ndrives; i++) {
        if (!strcmp(c->drives[i].id, id))
            return &c->drives[i];
    }
    return NULL;
}

bool api_path_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > API_MAX_ID_BYTES)
        return false;
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_')
            return false;
    }
    return true;
}

static int check_path_id(const char *what, const char *path_id, const char *body_id,
                         const char *field_name)
{
    /* Firecracker's rule for the ids of its API paths: letters, digits and
     * '_' only (ember: ASCII ones, at most API_MAX_ID_BYTES). The configuration
     * file's ids (no path) take api_id_valid's wider set. */
    if (path_id && !*path_id)
        return error_set("%s: the ID cannot be empty", what);
    if (path_id && !api_path_id_valid(path_id))
        return error_set("%s: invalid id '%s': API resource IDs can only contain alphanumeric "
                         "characters and underscores (at most %d)",
                         what, path_id, API_MAX_ID_BYTES);
    if (check_id(what, body_id) < 0)
        return -1;
    if (path_id && strcmp(path_id, body_id) != 0)
        return error_set("%s: the id in the path ('%s') differs from `%s` in the body ('%s')", what,
                         path_id, field_name, body_id);
    return 0;
}

static int store_drive(struct api_config *c, struct api_drive *d)
{
    struct api_drive *old = find_drive(c, d->id);
    for (unsigned i = 0; d->is_root && i < c->npmem; i++) {
        if (c->pmem[i].is_root)
            return error_set("Drive config error: Attempt to add block as a root device while the "
                             "root device defined as a pmem device");
    }
    if (d->is_root) {
        for (unsigned i = 0; i < c->ndrives; i++) {
            if (c->drives[i].is_root && &c->drives[i] != old)
                return error_set("drive '%s': drive '%s' is already the root device", d->id,
                                 c->drives[i].id);
        }
    }
    if (!old && c->ndrives == VM_MAX_DRIVES)
        return error_set("drive '%s': at most %d drives", d->id, VM_MAX_DRIVES);
    if (old) {
        free_drive(old);
        *old = *d;
    } else {
        c->drives[c->ndrives++] = *d;
    }
    return 0;
}

/* A drive served by a vhost-user back-end listening at sock (connected at InstanceStart). */
static int put_vhost_user_drive(struct api_config *c, const char *id, const char *sock,
                                const cJSON *body, bool is_root, const char *partuuid,
                                const char *cache, bool ro_given)
{
    uint64_t reconnect = VHOST_USER_RECONNECT_DEFAULT_S;
    if (get_u64(body, "drive", "reconnect_s", false, VHOST_USER_RECONNECT_MAX_S, &reconnect, NULL) <
        0)
        return -1;
    if (ro_given || field(body, "rate_limiter") || field(body, "io_engine"))
        return error_set("drive '%s': a vhost-user drive (`socket`) takes no `is_read_only`, "
                         "`rate_limiter` or `io_engine`: its back-end decides them",
                         id);
    if (!*sock)
        return error_set("drive '%s': `socket` is empty", id);
    struct stat st;
    if (stat(sock, &st) < 0)
        return error_errno("drive '%s': vhost-user socket '%s'", id, sock);
    if (!S_ISSOCK(st.st_mode))
        return error_set("drive '%s': '%s' is not a socket", id, sock);
    struct api_drive d = {
        .is_root = is_root, .cache_unsafe = true, .reconnect_s = (unsigned)reconnect};
    if (cache && !strcmp(cache, "Writeback"))
        d.cache_unsafe = false;
    else if (cache && strcmp(cache, "Unsafe") != 0)
        return error_set("drive '%s': unknown `cache_type` '%s' (Unsafe, Writeback)", id, cache);
    d.id = strdup(id);
    d.socket = strdup(sock);
    d.partuuid = dup_str(is_root ? partuuid : NULL);
    if (!d.id || !d.socket || (is_root && partuuid && !d.partuuid)) {
        free_drive(&d);
        return error_set("out of memory");
    }
    if (store_drive(c, &d) < 0) {
        free_drive(&d);
        return -1;
    }
    return 0;
}

int api_put_drive(struct api_config *c, const char *path_id, const cJSON *body)
{
    static const char *const fields[] = {
        "drive_id",   "path_on_host", "is_root_device", "partuuid", "is_read_only",
        "cache_type", "rate_limiter", "io_engine",      "socket",   "reconnect_s",
        NULL};
    const char *what = "drive", *id, *path, *partuuid, *cache, *engine, *sock;
    struct api_drive d = {0};
    bool ro_given;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "drive_id", true, &id) < 0 ||
        check_path_id(what, path_id, id, "drive_id") < 0 ||
        get_bool(body, what, "is_root_device", true, &d.is_root, NULL) < 0 ||
        get_string(body, what, "path_on_host", false, &path) < 0 ||
        get_string(body, what, "partuuid", false, &partuuid) < 0 ||
        get_bool(body, what, "is_read_only", false, &d.readonly, &ro_given) < 0 ||
        get_string(body, what, "cache_type", false, &cache) < 0 ||
        get_string(body, what, "io_engine", false, &engine) < 0 ||
        get_string(body, what, "socket", false, &sock) < 0)
        return -1;
    /* Firecracker's rules: exactly one of the two; a vhost-user drive's back-end decides
     * what a file's drive sets here. */
    if (sock && path)
        return error_set("drive '%s': give exactly one of `path_on_host` and `socket`", id);
    if (sock)
        return put_vhost_user_drive(c, id, sock, body, d.is_root, partuuid, cache, ro_given);
    if (field(body, "reconnect_s"))
        return error_set("drive '%s': `reconnect_s` is for a vhost-user drive (`socket`)", id);
    if (!path || !*path)
        return error_set("drive '%s': missing field `path_on_host`", id);
    if (access(path, d.readonly ? R_OK : R_OK | W_OK) < 0)
        return error_errno("drive '%s': cannot open '%s'%s", id, path,
                           d.readonly ? "" : " for reading and writing");
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) /* Firecracker's open fails (EISDIR) */
        return error_set("drive '%s': '%s' is a directory", id, path);
    d.cache_unsafe = true;
    if (cache && !strcmp(cache, "Writeback"))
        d.cache_unsafe = false;
    else if (cache && strcmp(cache, "Unsafe") != 0)
        return error_set("drive '%s': unknown `cache_type` '%s' (Unsafe, Writeback)", id, cache);
    d.io_sync = true;
    if (engine && !strcmp(engine, "Async"))
        d.io_sync = false;
    else if (engine && strcmp(engine, "Sync") != 0)
        return error_set("drive '%s': unknown `io_engine` '%s' (Sync, Async)", id, engine);
    const cJSON *rl = field(body, "rate_limiter");
    if (rl) {
        if (parse_rate_limiter(rl, "drive rate_limiter", &d.rate_limit) < 0)
            return -1;
        d.has_rate_limiter = true;
    }
    struct api_drive *old = find_drive(c, id);
    for (unsigned i = 0; d.is_root && i < c->npmem; i++) {
        if (c->pmem[i].is_root)
            return error_set("Drive config error: Attempt to add block as a root device while the "
                             "root device defined as a pmem device");
    }
    if (d.is_root) {
        for (unsigned i = 0; i < c->ndrives; i++) {
            if (c->drives[i].is_root && &c->drives[i] != old)
                return error_set("drive '%s': drive '%s' is already the root device", id,
                                 c->drives[i].id);
        }
    }
    if (!old && c->ndrives == VM_MAX_DRIVES)
        return error_set("drive '%s': at most %d drives", id, VM_MAX_DRIVES);
    d.id = strdup(id);
    d.path = strdup(path);
    d.partuuid = dup_str(d.is_root ? partuuid : NULL);
    if (!d.id || !d.path || (d.is_root && partuuid && !d.partuuid)) {
        free_drive(&d);
        return error_set("out of memory");
    }
    if (old) {
        free_drive(old);
        *old = d;
    } else {
        c->drives[c->ndrives++] = d;
    }
    return 0;
}

static struct api_pmem *find_pmem(struct api_config *c, const char *id)
{
    for (unsigned i = 0; i < c->npmem; i++) {
        if (!strcmp(c->pmem[i].id, id))
            return &c->pmem[i];
    }
    return NULL;
}

int api_put_pmem(struct api_config *c, const char *path_id, const cJSON *body)
{
    static const char *const fields[] = {"id",        "path_on_host", "root_device",
                                         "read_only", "rate_limiter", NULL};
    const char *what = "pmem", *id, *path;
    struct api_pmem p = {0};
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "id", true, &id) < 0 || check_path_id(what, path_id, id, "id") < 0 ||
        get_string(body, what, "path_on_host", true, &path) < 0 ||
        get_bool(body, what, "root_device", false, &p.is_root, NULL) < 0 ||
        get_bool(body, what, "read_only", false, &p.readonly, NULL) < 0)
        return -1;
    const cJSON *rl = field(body, "rate_limiter");
    if (rl) {
        if (parse_rate_limiter(rl, "pmem rate_limiter", &p.rate_limit) < 0)
            return -1;
        p.has_rate_limiter = true;
    }
    /* Firecracker's rules and words: one root device, a drive or a pmem. */
    if (p.is_root) {
        for (unsigned i = 0; i < c->ndrives; i++) {
            if (c->drives[i].is_root)
                return error_set("Pmem config error: Attempt to add pmem as a root device while "
                                 "the root device defined as a block device");
        }
    }
    struct api_pmem *old = find_pmem(c, id);
    for (unsigned i = 0; p.is_root && i < c->npmem; i++) {
        if (c->pmem[i].is_root && &c->pmem[i] != old)
            return error_set("Pmem config error: A root pmem device already exist");
    }
    if (!old && c->npmem == VM_MAX_PMEM)
        return error_set("pmem '%s': at most %d pmem devices", id, VM_MAX_PMEM);
    /* ember looks at the file now, as at a drive's PUT (Firecracker: at
     * InstanceStart); its size is checked when it is mapped. */
    if (!*path)
        return error_set("pmem '%s': `path_on_host` is empty", id);
    struct stat st;
    if (stat(path, &st) < 0)
        return error_errno("pmem '%s': cannot open '%s'", id, path);
    if (!S_ISREG(st.st_mode))
        return error_set("pmem '%s': '%s' is not a regular file", id, path);
    if (st.st_size == 0)
        return error_set("pmem '%s': '%s' is empty", id, path);
    if (access(path, p.readonly ? R_OK : R_OK | W_OK) < 0)
        return error_errno("pmem '%s': cannot open '%s'%s", id, path,
                           p.readonly ? "" : " for reading and writing");
    p.id = strdup(id);
    p.path = strdup(path);
    if (!p.id || !p.path) {
        free_pmem(&p);
        return error_set("out of memory");
    }
    if (old) {
        free_pmem(old);
        *old = p;
    } else {
        c->pmem[c->npmem++] = p;
    }
    return 0;
}

int api_put_fs(struct api_config *c, const char *path_id, const cJSON *body)
{
    static const char *const fields[] = {"fs_id",      "tag",         "socket",
                                         "num_queues", "reconnect_s", NULL};
    const char *what = "fs", *id, *tag, *sock;
    uint64_t queues = 1, reconnect = VHOST_USER_RECONNECT_DEFAULT_S;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "fs_id", true, &id) < 0 ||
        check_path_id(what, path_id, id, "fs_id") < 0 ||
        get_string(body, what, "tag", true, &tag) < 0 ||
        get_string(body, what, "socket", true, &sock) < 0 ||
        get_u64(body, what, "num_queues", false, UINT32_MAX, &queues, NULL) < 0 ||
        get_u64(body, what, "reconnect_s", false, VHOST_USER_RECONNECT_MAX_S, &reconnect, NULL) < 0)
        return -1;
    if (queues == 0 || queues > VHOST_USER_FS_MAX_QUEUES)
        return error_set("fs '%s': `num_queues` (request queues) must be 1 to %d", id,
                         VHOST_USER_FS_MAX_QUEUES);
    if (vhost_user_fs_check_tag(tag) < 0)
        return error_prefix("fs '%s'", id);
    struct api_fs *old = NULL;
    for (unsigned i = 0; i < c->nfs; i++) {
        if (!strcmp(c->fs[i].id, id))
            old = &c->fs[i];
    }
    for (unsigned i = 0; i < c->nfs; i++) {
        if (&c->fs[i] != old && !strcmp(c->fs[i].tag, tag))
            return error_set("fs '%s': the tag '%s' is fs '%s''s already", id, tag, c->fs[i].id);
    }
    if (!old && c->nfs == VM_MAX_FS)
        return error_set("fs '%s': at most %d virtio-fs devices", id, VM_MAX_FS);
    if (!*sock)
        return error_set("fs '%s': `socket` is empty", id);
    struct stat st;
    if (stat(sock, &st) < 0)
        return error_errno("fs '%s': vhost-user socket '%s'", id, sock);
    if (!S_ISSOCK(st.st_mode))
        return error_set("fs '%s': '%s' is not a socket", id, sock);
    struct api_fs f = {.id = strdup(id),
                       .tag = strdup(tag),
                       .socket = strdup(sock),
                       .num_queues = (unsigned)queues,
                       .reconnect_s = (unsigned)reconnect};
    if (!f.id || !f.tag || !f.socket) {
        free_fs(&f);
        return error_set("out of memory");
    }
    if (old) {
        free_fs(old);
        *old = f;
    } else {
        c->fs[c->nfs++] = f;
    }
    return 0;
}

int api_parse_pmem_update(const char *path_id, const cJSON *body, struct api_pmem_update *u)
{
    static const char *const fields[] = {"id", "rate_limiter", NULL};
    const char *what = "pmem", *id;
    memset(u, 0, sizeof(*u));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "id", true, &id) < 0 || check_path_id(what, path_id, id, "id") < 0)
        return -1;
    const cJSON *rl = field(body, "rate_limiter");
    if (rl) {
        if (parse_rate_limiter(rl, "pmem rate_limiter", &u->rate_limit) < 0)
            return -1;
        u->has_rate_limiter = true;
    }
    return 0;
}

int api_parse_drive_update(const char *path_id, const cJSON *body, struct api_drive_update *u)
{
    static const char *const fields[] = {"drive_id", "path_on_host", "rate_limiter", NULL};
    const char *what = "drive update", *id, *path;
    memset(u, 0, sizeof(*u));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "drive_id", true, &id) < 0 ||
        check_path_id(what, path_id, id, "drive_id") < 0 ||
        get_string(body, what, "path_on_host", false, &path) < 0)
        return -1;
    const cJSON *rl = field(body, "rate_limiter");
    if (rl) {
        if (parse_rate_limiter(rl, "drive rate_limiter", &u->rate_limit) < 0)
            return -1;
        u->has_rate_limiter = true;
    }
    if (path) {
        if (!*path)
            return error_set("%s: `path_on_host` is empty", what);
        u->path = strdup(path);
        if (!u->path)
            return error_set("out of memory");
    }
    return 0;
}

int api_parse_net_update(const char *path_id, const cJSON *body, struct api_net_update *u)
{
    static const char *const fields[] = {"iface_id", "rx_rate_limiter", "tx_rate_limiter", NULL};
    const char *what = "network interface update", *id;
    memset(u, 0, sizeof(*u));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "iface_id", true, &id) < 0 ||
        check_path_id(what, path_id, id, "iface_id") < 0)
        return -1;
    const cJSON *rx = field(body, "rx_rate_limiter"), *tx = field(body, "tx_rate_limiter");
    if (rx && parse_rate_limiter(rx, "rx_rate_limiter", &u->rx) < 0)
        return -1;
    if (tx && parse_rate_limiter(tx, "tx_rate_limiter", &u->tx) < 0)
        return -1;
    u->has_rx = rx != NULL;
    u->has_tx = tx != NULL;
    return 0;
}

static bool mac_valid(const char *s)
{
    if (strlen(s) != 17)
        return false;
    for (int i = 0; i < 17; i++) {
        if (i % 3 == 2 ? s[i] != ':' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* An interface served by a vhost-user back-end: what only a tap takes is refused; the path
 * checked as far as it can be before InstanceStart (client mode: the back-end listens there
 * already; server mode: ember will make the socket there). */
static int check_vhost_user_net(const cJSON *body, const char *id, const char *sock,
                                const char *mode, bool *server)
{
    const char *what = "network interface";
    if (field(body, "rx_rate_limiter") || field(body, "tx_rate_limiter") || field(body, "mtu"))
        return error_set("%s '%s': a vhost-user interface (`vhost_user_socket`) takes no "
                         "`rx_rate_limiter`, `tx_rate_limiter` or `mtu`: its back-end's data "
                         "path decides them",
                         what, id);
    if (!*sock)
        return error_set("%s '%s': `vhost_user_socket` is empty", what, id);
    if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return error_set("%s '%s': `vhost_user_socket` is longer than %zu bytes", what, id,
                         sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    *server = false;
    if (mode && !strcmp(mode, "server"))
        *server = true;
    else if (mode && strcmp(mode, "client"))
        return error_set("%s '%s': unknown `vhost_user_mode` '%s' (client, server)", what, id,
                         mode);
    struct stat st;
    if (!*server) {
        if (stat(sock, &st) < 0)
            return error_errno("%s '%s': vhost-user socket '%s'", what, id, sock);
        if (!S_ISSOCK(st.st_mode))
            return error_set("%s '%s': '%s' is not a socket", what, id, sock);
    } else if (lstat(sock, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        return error_set("%s '%s': '%s' exists and is not a socket (server mode: ember makes "
                         "the socket)",
                         what, id, sock);
    }
    return 0;
}

static int put_net(struct api_config *c, const char *path_id, const cJSON *body, bool apply)
{
    static const char *const fields[] = {"iface_id",
                                         "host_dev_name",
                                         "guest_mac",
                                         "mtu",
                                         "rx_rate_limiter",
                                         "tx_rate_limiter",
                                         "allow_mmds_requests",
                                         "vhost_user_socket",
                                         "vhost_user_mode",
                                         "reconnect_s",
                                         NULL};
    const char *what = "network interface", *id, *dev, *mac, *sock, *mode;
    struct api_net n = {0};
    uint64_t mtu = 0, reconnect = VHOST_USER_RECONNECT_DEFAULT_S;
    bool mtu_given, server = false;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "iface_id", true, &id) < 0 ||
        check_path_id(what, path_id, id, "iface_id") < 0 ||
        get_string(body, what, "host_dev_name", false, &dev) < 0 ||
        get_string(body, what, "vhost_user_socket", false, &sock) < 0 ||
        get_string(body, what, "vhost_user_mode", false, &mode) < 0 ||
        get_u64(body, what, "reconnect_s", false, VHOST_USER_RECONNECT_MAX_S, &reconnect, NULL) <
            0 ||
        get_string(body, what, "guest_mac", false, &mac) < 0 ||
        get_u64(body, what, "mtu", false, 65535, &mtu, &mtu_given) < 0)
        return -1;
    if (!dev == !sock)
        return error_set("%s '%s': give exactly one of `host_dev_name` (a tap) and "
                         "`vhost_user_socket`",
                         what, id);
    if (!sock && (mode || field(body, "reconnect_s")))
        return error_set("%s '%s': `vhost_user_mode` and `reconnect_s` are for a vhost-user "
                         "interface (`vhost_user_socket`)",
                         what, id);
    if (sock && check_vhost_user_net(body, id, sock, mode, &server) < 0)
        return -1;
    if (dev && (!*dev || strlen(dev) >= 16))
        return error_set("%s '%s': `host_dev_name` must be a tap device name of 1 to 15 bytes",
                         what, id);
    if (mac && !mac_valid(mac))
        return error_set("%s '%s': `guest_mac` '%s' is not of the form 12:34:56:78:9a:bc", what, id,
                         mac);
    if (mtu_given && mtu < 68)
        return error_set("%s '%s': `mtu` must be from 68 to 65535", what, id);
    const cJSON *rx = field(body, "rx_rate_limiter"), *tx = field(body, "tx_rate_limiter");
    if (rx && parse_rate_limiter(rx, "rx_rate_limiter", &n.rx) < 0)
        return -1;
    if (tx && parse_rate_limiter(tx, "tx_rate_limiter", &n.tx) < 0)
        return -1;
    n.has_rx = rx != NULL;
    n.has_tx = tx != NULL;
    n.mtu = (unsigned)mtu;
    struct api_net *old = NULL;
    for (unsigned i = 0; i < c->nnets; i++) {
        if (!strcmp(c->nets[i].id, id))
            old = &c->nets[i];
        else if (dev && c->nets[i].host_dev_name && !strcmp(c->nets[i].host_dev_name, dev))
            return error_set("%s '%s': tap device '%s' is already used by '%s'", what, id, dev,
                             c->nets[i].id);
        else if (sock && c->nets[i].vhost_user_socket &&
                 !strcmp(c->nets[i].vhost_user_socket, sock))
            return error_set("%s '%s': vhost-user socket '%s' is already used by '%s'", what, id,
                             sock, c->nets[i].id);
        else if (mac && c->nets[i].guest_mac && !strcasecmp(c->nets[i].guest_mac, mac))
            return error_set("%s '%s': MAC address %s is already used by '%s'", what, id, mac,
                             c->nets[i].id);
    }
    if (!old && c->nnets == API_MAX_NETS)
        return error_set("at most %d network interfaces", API_MAX_NETS);
    if (!apply)
        return 0;
    n.tap_fd = -1;
    n.id = strdup(id);
    n.host_dev_name = dup_str(dev);
    n.vhost_user_socket = dup_str(sock);
    n.vhost_user_server = server;
    n.reconnect_s = sock ? (unsigned)reconnect : 0;
    n.guest_mac = dup_str(mac);
    if (!n.id || (dev && !n.host_dev_name) || (sock && !n.vhost_user_socket) ||
        (mac && !n.guest_mac)) {
        free_net(&n);
        return error_set("out of memory");
    }
    if (old) {
        free_net(old);
        *old = n;
    } else {
        c->nets[c->nnets++] = n;
    }
    return 0;
}

int api_put_net(struct api_config *c, const char *path_id, const cJSON *body)
{
    return put_net(c, path_id, body, true);
}

int api_check_net(const struct api_config *c, const char *path_id, const cJSON *body)
{
    /* put_net changes nothing when not applying. */
    return put_net((struct api_config *)c, path_id, body, false);
}

int api_parse_logger(const cJSON *body, struct api_logger *out)
{
    static const char *const fields[] = {"log_path",        "level",  "show_level",
                                         "show_log_origin", "module", NULL};
    const char *what = "logger", *path, *level, *module;
    struct api_logger l = {.set = true, .level = LOG_INFO};
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "log_path", false, &path) < 0 ||
        get_string(body, what, "level", false, &level) < 0 ||
        get_bool(body, what, "show_level", false, &l.show_level, NULL) < 0 ||
        get_bool(body, what, "show_log_origin", false, &l.show_log_origin, NULL) < 0 ||
        get_string(body, what, "module", false, &module) < 0)
        return -1;
    if (level && log_level_parse(level, &l.level) < 0)
        return error_prefix("%s", what);
    if (path && !*path)
        return error_set("%s: `log_path` is empty", what);
    l.log_path = dup_str(path);
    l.module = dup_str(module);
    *out = l;
    return 0;
}

int api_parse_metrics(const cJSON *body, char **path_out)
{
    static const char *const fields[] = {"metrics_path", NULL};
    const char *what = "metrics", *path;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "metrics_path", true, &path) < 0)
        return -1;
    if (!*path)
        return error_set("%s: `metrics_path` is empty", what);
    *path_out = strdup(path);
    return *path_out ? 0 : error_set("out of memory");
}

int api_put_entropy(struct api_config *c, const cJSON *body)
{
    static const char *const fields[] = {"rate_limiter", NULL};
    const char *what = "entropy";
    struct api_entropy e = {.set = true};
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0)
        return -1;
    const cJSON *rl = field(body, "rate_limiter");
    if (rl) {
        if (parse_rate_limiter(rl, "entropy rate_limiter", &e.rate_limit) < 0)
            return -1;
        e.has_rate_limiter = true;
    }
    c->entropy = e;
    return 0;
}

int api_put_vsock(struct api_config *c, const cJSON *body)
{
    static const char *const fields[] = {"guest_cid", "uds_path", "vsock_id", NULL};
    const char *what = "vsock", *uds, *id;
    uint64_t cid;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_u64(body, what, "guest_cid", true, UINT32_MAX, &cid, NULL) < 0 ||
        get_string(body, what, "uds_path", true, &uds) < 0 ||
        get_string(body, what, "vsock_id", false, &id) < 0)
        return -1;
    /* Any 32-bit CID, as Firecracker: firecracker-containerd sends 0 (the Go SDK's
     * VsockDevice without a CID) and reaches its agent through uds_path alone. */
    if (!*uds || strlen(uds) >= 100)
        return error_set("%s: `uds_path` must be a unix socket path of 1 to 99 bytes", what);
    char *uds_copy = strdup(uds), *id_copy = dup_str(id);
    if (!uds_copy || (id && !id_copy)) {
        free(uds_copy);
        free(id_copy);
        return error_set("out of memory");
    }
    free(c->vsock.uds_path);
    free(c->vsock.vsock_id);
    c->vsock = (struct api_vsock){
        .set = true, .guest_cid = cid, .uds_path = uds_copy, .vsock_id = id_copy, .listen_fd = -1};
    return 0;
}

int api_put_serial(struct api_config *c, const cJSON *body)
{
    static const char *const fields[] = {"serial_out_path", "rate_limiter", NULL};
    const char *what = "serial", *path;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "serial_out_path", false, &path) < 0)
        return -1;
    if (field(body, "rate_limiter"))
        return error_set("%s: `rate_limiter` is not supported yet", what);
    if (path && !*path)
        return error_set("%s: `serial_out_path` is empty", what);
    int fd = -1;
    char *copy = NULL;
    if (path) {
        /* As Firecracker opens it: created if missing, and a FIFO nobody
         * reads yet opens too; the guest's output never waits for it. */
        fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
        if (fd < 0)
            return error_errno("%s: cannot open '%s'", what, path);
        if (!(copy = strdup(path))) {
            close(fd);
            return error_set("out of memory");
        }
    }
    free(c->serial_out_path);
    if (c->serial_out_fd >= 0)
        close(c->serial_out_fd);
    c->serial_out_path = copy;
    c->serial_out_fd = fd;
    return 0;
}

int api_parse_action(const cJSON *body, enum api_action *out)
{
    static const char *const fields[] = {"action_type", NULL};
    const char *what = "action", *type;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "action_type", true, &type) < 0)
        return -1;
    if (!strcmp(type, "InstanceStart"))
        *out = API_ACTION_INSTANCE_START;
    else if (!strcmp(type, "SendCtrlAltDel"))
        *out = API_ACTION_CTRL_ALT_DEL;
    else if (!strcmp(type, "FlushMetrics"))
        *out = API_ACTION_FLUSH_METRICS;
    else
        return error_set("%s: unknown `action_type` '%s' (InstanceStart, SendCtrlAltDel, "
                         "FlushMetrics)",
                         what, type);
    return 0;
}

/* Dotted quad, four decimal octets without leading zeros (as Rust's Ipv4Addr reads them). */
static bool parse_ipv4(const char *s, uint32_t *out)
{
    uint32_t ip = 0;
    for (int part = 0; part < 4; part++) {
        if (part && *s++ != '.')
            return false;
        if (*s < '0' || *s > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9'))
            return false;
        unsigned v = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (v > 255)
            return false;
        ip = ip << 8 | v;
    }
    if (*s)
        return false;
    *out = ip;
    return true;
}

int api_put_mmds_config(struct api_config *c, const cJSON *body, bool *semantic)
{
    static const char *const fields[] = {"version", "network_interfaces", "ipv4_address",
                                         "imds_compat", NULL};
    const char *what = "mmds config", *version, *addr;
    struct api_mmds m = {.set = true, .ipv4 = API_MMDS_DEFAULT_IPV4};
    *semantic = false;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "version", false, &version) < 0 ||
        get_string(body, what, "ipv4_address", false, &addr) < 0 ||
        get_bool(body, what, "imds_compat", false, &m.imds_compat, NULL) < 0)
        return -1;
    if (version && strcmp(version, "V1") && strcmp(version, "V2"))
        return error_set("%s: unknown `version` '%s' (V1, V2)", what, version);
    m.v2 = version && !strcmp(version, "V2");
    const cJSON *list = field(body, "network_interfaces");
    if (!list)
        return error_set("%s: missing field `network_interfaces`", what);
    if (!cJSON_IsArray(list))
        return error_set("%s: `network_interfaces` must be an array of interface ids", what);
    for (const cJSON *i = list->child; i; i = i->next) {
        if (!cJSON_IsString(i))
            return error_set("%s: `network_interfaces` must be an array of interface ids", what);
    }
    if (addr && !parse_ipv4(addr, &m.ipv4))
        return error_set("%s: `ipv4_address` '%s' is not an IPv4 address", what, addr);
    /* Firecracker's checks, in its order, with its words. Link-local is 169.254.0.0/16
     * less its first and last /24, which RFC 3927 reserves. */
    *semantic = true;
    if ((m.ipv4 >> 16) != 0xa9fe || ((m.ipv4 >> 8) & 0xff) == 0 || ((m.ipv4 >> 8) & 0xff) == 255)
        return error_set("The MMDS IPv4 address is not link local.");
    if (!list->child)
        return error_set(
            "The list of network interface IDs that allow forwarding MMDS requests is empty.");
    for (const cJSON *i = list->child; i; i = i->next) {
        bool known = false;
        for (unsigned k = 0; k < c->nnets && !known; k++)
            known = !strcmp(c->nets[k].id, i->valuestring);
        if (!known)
            return error_set("The list of network interface IDs provided contains at least one "
                             "ID that does not correspond to any existing network interface.");
    }
    *semantic = false;
    for (const cJSON *i = list->child; i; i = i->next) {
        bool dup = false;
        for (unsigned k = 0; k < m.nifaces && !dup; k++)
            dup = !strcmp(m.ifaces[k], i->valuestring);
        if (dup)
            continue;
        /* At most API_MAX_NETS distinct ids: each names a configured interface. */
        if (!(m.ifaces[m.nifaces] = strdup(i->valuestring))) {
            for (unsigned k = 0; k < m.nifaces; k++)
                free(m.ifaces[k]);
            return error_set("out of memory");
        }
        m.nifaces++;
    }
    for (unsigned k = 0; k < c->mmds.nifaces; k++)
        free(c->mmds.ifaces[k]);
    c->mmds = m;
    return 0;
}

int api_parse_vm_state(const cJSON *body, bool *paused)
{
    static const char *const fields[] = {"state", NULL};
    const char *what = "vm", *state;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "state", true, &state) < 0)
        return -1;
    if (!strcmp(state, "Paused"))
        *paused = true;
    else if (!strcmp(state, "Resumed"))
        *paused = false;
    else
        return error_set("%s: unknown `state` '%s' (Paused, Resumed)", what, state);
    return 0;
}

/* ---- snapshots -------------------------------------------------------------- */

int api_parse_snapshot_create(const cJSON *body, struct api_snapshot_create *out)
{
    static const char *const fields[] = {"snapshot_type", "snapshot_path", "mem_file_path", NULL};
    const char *what = "snapshot/create", *type = NULL;
    memset(out, 0, sizeof(*out));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "snapshot_type", false, &type) < 0 ||
        get_string(body, what, "snapshot_path", true, &out->snapshot_path) < 0 ||
        get_string(body, what, "mem_file_path", true, &out->mem_file_path) < 0)
        return -1;
    if (type && !strcmp(type, "Diff"))
        out->diff = true;
    else if (type && strcmp(type, "Full"))
        return error_set("%s: unknown `snapshot_type` '%s' (Full, Diff)", what, type);
    if (!out->snapshot_path[0] || !out->mem_file_path[0])
        return error_set("%s: `snapshot_path` and `mem_file_path` must not be empty", what);
    return 0;
}

static int parse_net_overrides(const cJSON *v, struct api_overrides *out)
{
    static const char *const fields[] = {"iface_id", "host_dev_name", NULL};
    const char *what = "network_overrides";
    if (!cJSON_IsArray(v))
        return error_set("%s: expected an array", what);
    const cJSON *item;
    cJSON_ArrayForEach(item, v)
    {
        if (out->nnet == API_MAX_NET_OVERRIDES)
            return error_set("%s: more than %d entries", what, API_MAX_NET_OVERRIDES);
        unsigned i = out->nnet;
        if (expect_object(item, what) < 0 || only_fields(item, what, fields) < 0 ||
            get_string(item, what, "iface_id", true, &out->net[i].iface_id) < 0 ||
            get_string(item, what, "host_dev_name", true, &out->net[i].host_dev_name) < 0)
            return -1;
        if (!api_id_valid(out->net[i].iface_id))
            return error_set("%s: invalid iface_id '%s'", what, out->net[i].iface_id);
        size_t len = strlen(out->net[i].host_dev_name);
        if (len == 0 || len >= 16)
            return error_set("%s: host_dev_name '%s' is not a valid interface name", what,
                             out->net[i].host_dev_name);
        for (unsigned k = 0; k < i; k++) {
            if (!strcmp(out->net[k].iface_id, out->net[i].iface_id))
                return error_set("%s: iface_id '%s' given twice", what, out->net[i].iface_id);
        }
        out->nnet++;
    }
    return 0;
}

static int parse_overrides(const cJSON *body, struct api_overrides *out)
{
    static const char *const vsock_fields[] = {"uds_path", NULL};
    const cJSON *nets = field(body, "network_overrides");
    if (nets && parse_net_overrides(nets, out) < 0)
        return -1;
    const cJSON *vsock = field(body, "vsock_override");
    if (vsock) {
        if (expect_object(vsock, "vsock_override") < 0 ||
            only_fields(vsock, "vsock_override", vsock_fields) < 0 ||
            get_string(vsock, "vsock_override", "uds_path", true, &out->vsock_uds_path) < 0)
            return -1;
        if (!out->vsock_uds_path[0])
            return error_set("vsock_override: `uds_path` must not be empty");
    }
    return 0;
}

int api_parse_snapshot_load(const cJSON *body, struct api_snapshot_load *out)
{
    static const char *const fields[] = {"snapshot_path",     "mem_backend",
                                         "mem_file_path",     "enable_diff_snapshots",
                                         "resume_vm",         "track_dirty_pages",
                                         "network_overrides", "vsock_override",
                                         "clock_realtime",    NULL};
    static const char *const backend_fields[] = {"backend_type", "backend_path", NULL};
    const char *what = "snapshot/load";
    memset(out, 0, sizeof(*out));
    bool diff = false, track = false;
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "snapshot_path", true, &out->snapshot_path) < 0 ||
        get_bool(body, what, "enable_diff_snapshots", false, &diff, NULL) < 0 ||
        get_bool(body, what, "track_dirty_pages", false, &track, NULL) < 0 ||
        get_bool(body, what, "resume_vm", false, &out->resume_vm, NULL) < 0 ||
        get_bool(body, what, "clock_realtime", false, &out->clock_realtime, NULL) < 0)
        return -1;
    out->deprecated_enable_diff = field(body, "enable_diff_snapshots") != NULL;
    out->track_dirty_pages = diff || track;
    const cJSON *backend = field(body, "mem_backend");
    const cJSON *mem_file = field(body, "mem_file_path");
    if (backend && mem_file)
        return error_set("too many fields: either `mem_backend` or `mem_file_path` exclusively "
                         "is required.");
    if (!backend && !mem_file)
        return error_set("missing field: either `mem_backend` or `mem_file_path` is required");
    if (mem_file) {
        out->deprecated_mem_file_path = true;
        if (get_string(body, what, "mem_file_path", true, &out->backend_path) < 0)
            return -1;
    } else {
        const char *type;
        if (expect_object(backend, "mem_backend") < 0 ||
            only_fields(backend, "mem_backend", backend_fields) < 0 ||
            get_string(backend, "mem_backend", "backend_type", true, &type) < 0 ||
            get_string(backend, "mem_backend", "backend_path", true, &out->backend_path) < 0)
            return -1;
        if (!strcmp(type, "Uffd"))
            out->uffd = true;
        else if (strcmp(type, "File"))
            return error_set("mem_backend: unknown `backend_type` '%s' (File, Uffd)", type);
    }
    if (!out->snapshot_path[0] || !out->backend_path[0])
        return error_set("%s: the snapshot and memory paths must not be empty", what);
    return parse_overrides(body, &out->overrides);
}

/* An optional whole number from 1 to max; 0 when not given. */
static int get_positive(const cJSON *obj, const char *what, const char *name, uint64_t max,
                        uint64_t *out)
{
    bool given;
    if (get_u64(obj, what, name, false, max, out, &given) < 0)
        return -1;
    if (given && *out == 0)
        return error_set("%s: `%s` must be from 1 to %llu", what, name, (unsigned long long)max);
    return 0;
}

int api_parse_migration_send(const cJSON *body, struct api_migration_send *out)
{
    static const char *const fields[] = {"destination_url", "downtime_ms", "timeout_s",
                                         "max_rounds",      "local",       NULL};
    const char *what = "migration/send";
    memset(out, 0, sizeof(*out));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "destination_url", true, &out->destination_url) < 0 ||
        get_positive(body, what, "downtime_ms", 3600000, &out->downtime_ms) < 0 ||
        get_positive(body, what, "timeout_s", 86400, &out->timeout_s) < 0 ||
        get_positive(body, what, "max_rounds", 1000, &out->max_rounds) < 0 ||
        get_bool(body, what, "local", false, &out->local, NULL) < 0)
        return -1;
    return 0;
}

int api_parse_migration_receive(const cJSON *body, struct api_migration_receive *out)
{
    static const char *const fields[] = {"receiver_url", "timeout_s", "network_overrides",
                                         "vsock_override", NULL};
    const char *what = "migration/receive";
    memset(out, 0, sizeof(*out));
    if (expect_object(body, what) < 0 || only_fields(body, what, fields) < 0 ||
        get_string(body, what, "receiver_url", true, &out->receiver_url) < 0 ||
        get_positive(body, what, "timeout_s", 86400, &out->timeout_s) < 0)
        return -1;
    return parse_overrides(body, &out->overrides);
}

/* ---- the configuration file -------------------------------------------- */

static int unsupported_section(const cJSON *doc, const char *name, const char *what)
{
    const cJSON *v = field(doc, name);
    /* An empty list asks for nothing. */
    if (v && !(cJSON_IsArray(v) && !v->child))
        return error_set("%s is not supported yet (remove \"%s\")", what, name);
    return 0;
}

/* The configuration file's "cpu-config": the template itself or the path
 * of a file holding it. */
static int put_cpu_config_section(struct api_config *c, const cJSON *v)
{
    struct cpu_custom_template *t;
    if (cJSON_IsString(v)) {
        /* Non-blocking, so that a FIFO named here cannot stall the start. */
        int fd = open(v->valuestring, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            return error_errno("\"cpu-config\": cannot open '%s'", v->valuestring);
        struct stat st;
        char *text = NULL;
        ssize_t n = -1;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (1 << 20) &&
            (text = malloc((size_t)st.st_size + 1)))
            n = read(fd, text, (size_t)st.st_size + 1);
        close(fd);
        if (n < 0 || n > st.st_size) {
            free(text);
            return error_set("\"cpu-config\": cannot read '%s' (a regular file of less than 1 "
                             "MiB)",
                             v->valuestring);
        }
        cJSON *doc = cJSON_ParseWithLength(text, (size_t)n);
        free(text);
        if (!doc)
            return error_set("\"cpu-config\": '%s' is not valid JSON", v->valuestring);
        t = api_parse_cpu_config(doc);
        cJSON_Delete(doc);
    } else {
        t = api_parse_cpu_config(v);
    }
    if (!t)
        return -1;
    api_set_custom_cpu(c, t);
    return 0;
}

int api_config_parse_document(struct api_config *c, const char *text, size_t len)
{
    static const char *const sections[] = {
        "boot-source", "machine-config", "drives",     "network-interfaces",
        "logger",      "metrics",        "entropy",    "vsock",
        "balloon",     "mmds-config",    "cpu-config", "serial",
        "pmem",        "memory-hotplug", "fs",         NULL};
    cJSON *doc = cJSON_ParseWithLength(text, len);
    if (!doc)
        return error_set("the configuration is not valid JSON (near byte %zu)",
                         (size_t)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : 0));
    int r = -1;
    if (expect_object(doc, "the configuration") < 0 ||
        only_fields(doc, "the configuration", sections) < 0)
        goto out;
    const cJSON *v;
    if (!(v = field(doc, "boot-source"))) {
        error_set("the configuration needs \"boot-source\"");
        goto out;
    }
    if (api_put_boot_source(c, v) < 0)
        goto out;
    if ((v = field(doc, "machine-config")) && api_put_machine_config(c, v, false) < 0)
        goto out;
    if ((v = field(doc, "drives"))) {
        if (!cJSON_IsArray(v)) {
            error_set("\"drives\" must be an array");
            goto out;
        }
        for (const cJSON *d = v->child; d; d = d->next) {
            if (api_put_drive(c, NULL, d) < 0)
                goto out;
        }
    }
    if ((v = field(doc, "network-interfaces"))) {
        if (!cJSON_IsArray(v)) {
            error_set("\"network-interfaces\" must be an array");
            goto out;
        }
        for (const cJSON *n = v->child; n; n = n->next) {
            if (api_put_net(c, NULL, n) < 0)
                goto out;
        }
    }
    if ((v = field(doc, "logger"))) {
        struct api_logger l;
        if (api_parse_logger(v, &l) < 0)
            goto out;
        free(c->logger.log_path);
        free(c->logger.module);
        c->logger = l;
    }
    if ((v = field(doc, "metrics"))) {
        char *path;
        if (api_parse_metrics(v, &path) < 0)
            goto out;
        replace_str(&c->metrics_path, path);
    }
    /* After machine-config, as in Firecracker: a custom template wins. */
    if ((v = field(doc, "cpu-config")) && put_cpu_config_section(c, v) < 0)
        goto out;
    if ((v = field(doc, "entropy")) && api_put_entropy(c, v) < 0)
        goto out;
    if ((v = field(doc, "vsock")) && api_put_vsock(c, v) < 0)
        goto out;
    if ((v = field(doc, "serial")) && api_put_serial(c, v) < 0)
        goto out;
    bool semantic;
    if ((v = field(doc, "mmds-config")) && api_put_mmds_config(c, v, &semantic) < 0) {
        if (semantic)
            error_prefix("MMDS config error");
        goto out;
    }
    if ((v = field(doc, "pmem"))) {
        if (!cJSON_IsArray(v)) {
            error_set("\"pmem\" must be an array");
            goto out;
        }
        for (const cJSON *d = v->child; d; d = d->next) {
            if (api_put_pmem(c, NULL, d) < 0)
                goto out;
        }
    }
    if ((v = field(doc, "fs"))) {
        if (!cJSON_IsArray(v)) {
            error_set("\"fs\" must be an array");
            goto out;
        }
        for (const cJSON *d = v->child; d; d = d->next) {
            if (api_put_fs(c, NULL, d) < 0)
                goto out;
        }
    }
    if (unsupported_section(doc, "balloon", "the balloon device") < 0 ||
        unsupported_section(doc, "memory-hotplug", "memory hotplug") < 0)
        goto out;
    r = 0;
out:
    cJSON_Delete(doc);
    return r;
}

/* ---- onto the machine ------------------------------------------------- */

int api_config_to_vm(const struct api_config *c, struct vm_config *vm)
{
    if (!c->has_boot_source)
        return error_set("cannot start without a boot source (PUT /boot-source first)");
    vm->kernel_path = c->kernel_path;
    vm->initrd_path = c->initrd_path;
    vm->cmdline = c->boot_args ? c->boot_args : API_DEFAULT_BOOT_ARGS;
    vm->memory_mib = c->machine.mem_size_mib;
    if (vm->memory_mib > host_ram_mib())
        return error_set("cannot start: `mem_size_mib` %llu is more than this host's %llu MiB of "
                         "RAM",
                         (unsigned long long)vm->memory_mib, (unsigned long long)host_ram_mib());
    vm->hugetlb = !strcmp(c->machine.huge_pages, "2M");
    vm->has_serial_out = c->serial_out_fd >= 0;
    vm->serial_out_fd = c->serial_out_fd;
    vm->ncpus = c->machine.vcpu_count;
    vm->placement = c->machine.placement;
    vm->cpu_template = CPU_TEMPLATE_HOST;
    if (strcmp(c->machine.cpu_template, "None") != 0 &&
        cpu_template_parse(c->machine.cpu_template, &vm->cpu_template) < 0)
        return -1;
    vm->custom_cpu = c->custom_cpu ? &c->custom_cpu->mods : NULL;
    vm->smt = c->machine.smt;
    vm->track_dirty_pages = c->machine.track_dirty_pages;
    if (c->vsock.set)
        vm->vsock = (struct vsock_config){.id = c->vsock.vsock_id,
                                          .guest_cid = c->vsock.guest_cid,
                                          .uds_path = c->vsock.uds_path,
                                          .has_listen_fd = c->vsock.listen_fd >= 0,
                                          .listen_fd = c->vsock.listen_fd};
    vm->nnets = c->nnets;
    for (unsigned i = 0; i < c->nnets; i++) {
        const struct api_net *n = &c->nets[i];
        struct net_config *nc = &vm->nets[i];
        *nc = (struct net_config){.id = n->id,
                                  .tap = n->host_dev_name,
                                  .vhost_user_socket = n->vhost_user_socket,
                                  .vhost_user_server = n->vhost_user_server,
                                  .reconnect_s = n->reconnect_s,
                                  .mtu = n->mtu,
                                  .has_tap_fd = n->tap_fd >= 0,
                                  .tap_fd = n->tap_fd};
        if (n->has_rx)
            nc->rx_limit = n->rx;
        if (n->has_tx)
            nc->tx_limit = n->tx;
        for (unsigned k = 0; k < c->mmds.nifaces; k++) {
            if (!strcmp(c->mmds.ifaces[k], n->id))
                nc->mmds_ipv4 = c->mmds.ipv4;
        }
        if (n->guest_mac) {
            unsigned b[6];
            sscanf(n->guest_mac, "%2x:%2x:%2x:%2x:%2x:%2x", &b[0], &b[1], &b[2], &b[3], &b[4],
                   &b[5]);
            for (int k = 0; k < 6; k++)
                nc->mac[k] = (uint8_t)b[k];
            nc->has_mac = true;
        }
    }
    vm->ndrives = c->ndrives;
    for (unsigned i = 0; i < c->ndrives; i++) {
        const struct api_drive *d = &c->drives[i];
        vm->drives[i] = (struct drive_config){
            .path = d->path,
            .socket = d->socket,
            .id = d->id,
            .readonly = d->readonly,
            .unsafe = d->cache_unsafe,
            .engine = d->io_sync ? BLK_ENGINE_SYNC : BLK_ENGINE_URING,
            .is_root = d->is_root,
            .partuuid = d->partuuid,
            .queues = 1,
            .reconnect_s = d->reconnect_s,
            .rate_limit = d->rate_limit,
        };
    }
    vm->npmem = c->npmem;
    for (unsigned i = 0; i < c->npmem; i++) {
        const struct api_pmem *p = &c->pmem[i];
        vm->pmem[i] = (struct pmem_config){.id = p->id,
                                           .path = p->path,
                                           .readonly = p->readonly,
                                           .is_root = p->is_root,
                                           .rate_limit = p->rate_limit};
    }
    vm->nfs = c->nfs;
    for (unsigned i = 0; i < c->nfs; i++) {
        const struct api_fs *f = &c->fs[i];
        vm->fs[i] = (struct fs_config){.id = f->id,
                                       .tag = f->tag,
                                       .socket = f->socket,
                                       .num_queues = f->num_queues,
                                       .reconnect_s = f->reconnect_s};
    }
    vm->rng = c->entropy.set;
    if (c->entropy.set) {
        /* Firecracker's entropy device is unlimited unless given a limiter. */
        vm->rng_rate = 0;
        vm->rng_limit = c->entropy.rate_limit.bandwidth;
    }
    return 0;
}

/* ---- back to JSON ------------------------------------------------------ */

/* GET /machine-config, GET /vm/config: Firecracker's shape, field for field
 * (cpu_template only when a static template is set, as Firecracker shows it;
 * otherwise absent). */
cJSON *api_machine_config_json(const struct api_config *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "vcpu_count", c->machine.vcpu_count);
    cJSON_AddNumberToObject(o, "mem_size_mib", (double)c->machine.mem_size_mib);
    cJSON_AddBoolToObject(o, "smt", c->machine.smt);
    /* Firecracker shows only a static template here. */
    if (strcmp(c->machine.cpu_template, "None") != 0)
        cJSON_AddStringToObject(o, "cpu_template", c->machine.cpu_template);
    cJSON_AddBoolToObject(o, "track_dirty_pages", c->machine.track_dirty_pages);
    cJSON_AddStringToObject(o, "huge_pages", c->machine.huge_pages);
    /* ember's own, shown only when set: a Firecracker client that never sets it sees
     * Firecracker's fields alone. */
    const struct cpu_placement *pl = &c->machine.placement;
    if (pl->set) {
        char vmm[PLACEMENT_MAX_TEXT], vcpu[PLACEMENT_MAX_TEXT];
        cpulist_format_set(&pl->vmm, vmm, sizeof(vmm));
        cpulist_format_ordered(pl->vcpu, pl->nvcpu, vcpu, sizeof(vcpu));
        cJSON *p = cJSON_AddObjectToObject(o, "cpu_placement");
        cJSON_AddStringToObject(p, "vmm", vmm);
        cJSON_AddStringToObject(p, "vcpu", vcpu);
        cJSON_AddNumberToObject(p, "poll_us", pl->poll_us);
    }
    return o;
}

static void add_string_or_null(cJSON *o, const char *name, const char *value)
{
    if (value)
        cJSON_AddStringToObject(o, name, value);
    else
        cJSON_AddNullToObject(o, name);
}

static cJSON *drive_json(const struct api_drive *d)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "drive_id", d->id);
    add_string_or_null(o, "partuuid", d->partuuid);
    cJSON_AddBoolToObject(o, "is_root_device", d->is_root);
    cJSON_AddStringToObject(o, "cache_type", d->cache_unsafe ? "Unsafe" : "Writeback");
    cJSON_AddBoolToObject(o, "is_read_only", d->readonly);
    add_string_or_null(o, "path_on_host", d->path);
    cJSON_AddItemToObject(o, "rate_limiter",
                          d->has_rate_limiter ? api_rate_limiter_json(&d->rate_limit)
                                              : cJSON_CreateNull());
    cJSON_AddStringToObject(o, "io_engine", d->io_sync ? "Sync" : "Async");
    add_string_or_null(o, "socket", d->socket);
    if (d->socket)
        cJSON_AddNumberToObject(o, "reconnect_s", d->reconnect_s);
    return o;
}

/* Firecracker's PmemConfig, field for field. */
static cJSON *pmem_json(const struct api_pmem *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", p->id);
    cJSON_AddStringToObject(o, "path_on_host", p->path);
    cJSON_AddBoolToObject(o, "root_device", p->is_root);
    cJSON_AddBoolToObject(o, "read_only", p->readonly);
    cJSON_AddItemToObject(o, "rate_limiter",
                          p->has_rate_limiter ? api_rate_limiter_json(&p->rate_limit)
                                              : cJSON_CreateNull());
    return o;
}

static cJSON *net_json(const struct api_net *n)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "iface_id", n->id);
    add_string_or_null(o, "host_dev_name", n->host_dev_name);
    if (n->vhost_user_socket) {
        /* ember's own fields, only on a vhost-user interface */
        cJSON_AddStringToObject(o, "vhost_user_socket", n->vhost_user_socket);
        cJSON_AddStringToObject(o, "vhost_user_mode", n->vhost_user_server ? "server" : "client");
        cJSON_AddNumberToObject(o, "reconnect_s", n->reconnect_s);
    }
    add_string_or_null(o, "guest_mac", n->guest_mac);
    if (n->mtu)
        cJSON_AddNumberToObject(o, "mtu", n->mtu);
    else
        cJSON_AddNullToObject(o, "mtu");
    cJSON_AddItemToObject(o, "rx_rate_limiter",
                          n->has_rx ? api_rate_limiter_json(&n->rx) : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "tx_rate_limiter",
                          n->has_tx ? api_rate_limiter_json(&n->tx) : cJSON_CreateNull());
    return o;
}

/* GET /vm/config: Firecracker's whole-configuration document as Firecracker
 * answers it: every section present, null or empty where nothing is set;
 * logger and metrics always null (Firecracker keeps them out: they are the
 * process's, not the machine's). */
cJSON *api_config_json(const struct api_config *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNullToObject(o, "balloon");
    cJSON *drives = cJSON_AddArrayToObject(o, "drives");
    for (unsigned i = 0; i < c->ndrives; i++)
        cJSON_AddItemToArray(drives, drive_json(&c->drives[i]));
    cJSON *b = cJSON_AddObjectToObject(o, "boot-source");
    cJSON_AddStringToObject(b, "kernel_image_path", c->has_boot_source ? c->kernel_path : "");
    add_string_or_null(b, "initrd_path", c->initrd_path);
    add_string_or_null(b, "boot_args", c->boot_args);
    cJSON_AddNullToObject(o, "cpu-config");
    cJSON_AddNullToObject(o, "logger");
    cJSON_AddItemToObject(o, "machine-config", api_machine_config_json(c));
    cJSON_AddNullToObject(o, "metrics");
    if (c->mmds.set) {
        cJSON *m = cJSON_AddObjectToObject(o, "mmds-config");
        cJSON_AddStringToObject(m, "version", c->mmds.v2 ? "V2" : "V1");
        cJSON *ids = cJSON_AddArrayToObject(m, "network_interfaces");
        for (unsigned i = 0; i < c->mmds.nifaces; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateString(c->mmds.ifaces[i]));
        char ip[16];
        snprintf(ip, sizeof(ip), "%u.%u.%u.%u", c->mmds.ipv4 >> 24, (c->mmds.ipv4 >> 16) & 0xff,
                 (c->mmds.ipv4 >> 8) & 0xff, c->mmds.ipv4 & 0xff);
        cJSON_AddStringToObject(m, "ipv4_address", ip);
        cJSON_AddBoolToObject(m, "imds_compat", c->mmds.imds_compat);
    } else {
        cJSON_AddNullToObject(o, "mmds-config");
    }
    cJSON *nets = cJSON_AddArrayToObject(o, "network-interfaces");
    for (unsigned i = 0; i < c->nnets; i++)
        cJSON_AddItemToArray(nets, net_json(&c->nets[i]));
    if (c->vsock.set) {
        cJSON *vs = cJSON_AddObjectToObject(o, "vsock");
        if (c->vsock.vsock_id)
            cJSON_AddStringToObject(vs, "vsock_id", c->vsock.vsock_id);
        cJSON_AddNumberToObject(vs, "guest_cid", (double)c->vsock.guest_cid);
        cJSON_AddStringToObject(vs, "uds_path", c->vsock.uds_path);
    } else {
        cJSON_AddNullToObject(o, "vsock");
    }
    if (c->entropy.set) {
        cJSON *e = cJSON_AddObjectToObject(o, "entropy");
        cJSON_AddItemToObject(e, "rate_limiter",
                              c->entropy.has_rate_limiter
                                  ? api_rate_limiter_json(&c->entropy.rate_limit)
                                  : cJSON_CreateNull());
    } else {
        cJSON_AddNullToObject(o, "entropy");
    }
    cJSON *pmem = cJSON_AddArrayToObject(o, "pmem");
    for (unsigned i = 0; i < c->npmem; i++)
        cJSON_AddItemToArray(pmem, pmem_json(&c->pmem[i]));
    cJSON_AddNullToObject(o, "memory-hotplug");
    /* ember's own (PUT /fs/{id}), shown only when there is one: Firecracker's clients see
     * Firecracker's sections. */
    cJSON *fs = c->nfs ? cJSON_AddArrayToObject(o, "fs") : NULL;
    for (unsigned i = 0; i < c->nfs; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "fs_id", c->fs[i].id);
        cJSON_AddStringToObject(f, "tag", c->fs[i].tag);
        cJSON_AddStringToObject(f, "socket", c->fs[i].socket);
        cJSON_AddNumberToObject(f, "num_queues", c->fs[i].num_queues);
        cJSON_AddNumberToObject(f, "reconnect_s", c->fs[i].reconnect_s);
        cJSON_AddItemToArray(fs, f);
    }
    return o;
}

static bool limit_set(const struct rate_limit_config *l)
{
    return l->bandwidth.size || l->ops.size;
}

int api_config_adopt_vm(struct api_config *c, const struct vm_config *vm,
                        const struct mmds_store *mmds)
{
    c->has_boot_source = true;
    replace_str(&c->kernel_path, dup_str(vm->kernel_path));
    replace_str(&c->initrd_path, dup_str(vm->initrd_path));
    replace_str(&c->boot_args, dup_str(vm->cmdline));
    c->machine.vcpu_count = vm->ncpus;
    c->machine.mem_size_mib = vm->memory_mib;
    c->machine.smt = vm->smt;
    c->machine.track_dirty_pages = vm->track_dirty_pages;
    snprintf(c->machine.cpu_template, sizeof(c->machine.cpu_template), "%s",
             vm->cpu_template == CPU_TEMPLATE_HOST ? "None" : cpu_template_name(vm->cpu_template));
    snprintf(c->machine.huge_pages, sizeof(c->machine.huge_pages), "%s",
             vm->hugetlb ? "2M" : "None");
    c->ndrives = vm->ndrives;
    for (unsigned i = 0; i < vm->ndrives; i++) {
        const struct drive_config *d = &vm->drives[i];
        c->drives[i] = (struct api_drive){
            .id = dup_str(d->id ? d->id : ""),
            .path = dup_str(d->path),
            .socket = dup_str(d->socket),
            .partuuid = dup_str(d->partuuid),
            .is_root = d->is_root,
            .readonly = d->readonly,
            .cache_unsafe = d->unsafe,
            .reconnect_s = d->reconnect_s,
            .io_sync = d->engine == BLK_ENGINE_SYNC,
            .has_rate_limiter = limit_set(&d->rate_limit),
            .rate_limit = d->rate_limit,
        };
    }
    c->nnets = vm->nnets;
    c->mmds.nifaces = 0;
    for (unsigned i = 0; i < vm->nnets; i++) {
        const struct net_config *n = &vm->nets[i];
        char mac[18];
        snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", n->mac[0], n->mac[1], n->mac[2],
                 n->mac[3], n->mac[4], n->mac[5]);
        c->nets[i] = (struct api_net){
            .id = dup_str(n->id ? n->id : ""),
            .host_dev_name = dup_str(n->tap),
            .vhost_user_socket = dup_str(n->vhost_user_socket),
            .vhost_user_server = n->vhost_user_server,
            .reconnect_s = n->reconnect_s,
            .guest_mac = n->has_mac ? dup_str(mac) : NULL,
            .mtu = n->mtu,
            .has_rx = limit_set(&n->rx_limit),
            .has_tx = limit_set(&n->tx_limit),
            .rx = n->rx_limit,
            .tx = n->tx_limit,
            .tap_fd = -1,
        };
        if (n->mmds_ipv4 && c->mmds.nifaces < API_MAX_NETS) {
            c->mmds.ifaces[c->mmds.nifaces++] = dup_str(n->id ? n->id : "");
            c->mmds.ipv4 = n->mmds_ipv4;
        }
    }
    c->mmds.set = c->mmds.nifaces > 0;
    c->mmds.v2 = mmds && mmds->version == MMDS_V2;
    c->mmds.imds_compat = mmds && mmds->imds_compat;
    c->npmem = vm->npmem;
    for (unsigned i = 0; i < vm->npmem; i++) {
        const struct pmem_config *p = &vm->pmem[i];
        c->pmem[i] = (struct api_pmem){.id = dup_str(p->id ? p->id : ""),
                                       .path = dup_str(p->path),
                                       .is_root = p->is_root,
                                       .readonly = p->readonly,
                                       .has_rate_limiter = limit_set(&p->rate_limit),
                                       .rate_limit = p->rate_limit};
    }
    c->nfs = vm->nfs;
    for (unsigned i = 0; i < vm->nfs; i++) {
        const struct fs_config *f = &vm->fs[i];
        c->fs[i] = (struct api_fs){.id = dup_str(f->id ? f->id : f->tag),
                                   .tag = dup_str(f->tag),
                                   .socket = dup_str(f->socket),
                                   .num_queues = f->num_queues ? f->num_queues : 1,
                                   .reconnect_s = f->reconnect_s};
    }
    c->entropy.set = vm->rng;
    c->entropy.has_rate_limiter = vm->rng && vm->rng_limit.size;
    c->entropy.rate_limit = (struct rate_limit_config){.bandwidth = vm->rng_limit};
    if (vm->vsock.uds_path) {
        c->vsock.set = true;
        c->vsock.guest_cid = vm->vsock.guest_cid;
        replace_str(&c->vsock.uds_path, dup_str(vm->vsock.uds_path));
        replace_str(&c->vsock.vsock_id, dup_str(vm->vsock.id));
        c->vsock.listen_fd = -1;
    }
    return 0;
}
