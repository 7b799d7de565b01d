/* The machine as Firecracker's API and configuration file describe it
 * (boot-source, machine-config, drives, network-interfaces, logger,
 * metrics, entropy, vsock), parsed from JSON with the same validation for
 * both, and mapped onto ember's struct vm_config. One parser serves
 * `PUT /...` requests and `--config-file`. */
#ifndef EMBER_API_CONFIG_H
#define EMBER_API_CONFIG_H

#include "arch/x86/cpu_template.h"
#include "util/log.h"
#include "vmm/vm.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#define API_MAX_NETS     VM_MAX_NETS
#define API_MAX_VCPUS    32
#define API_MAX_ID_BYTES 64
/* The kernel command line when boot-source gives no boot_args: Firecracker's
 * (no console: 8250.nr_uarts=0; shutdown on reboot; the i8042 probed
 * quickly). */
#define API_DEFAULT_BOOT_ARGS                                                                      \
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd "             \
    "swiotlb=noforce"

struct api_drive {
    char *id;
    char *path;   /* a file, or */
    char *socket; /* a vhost-user back-end's socket */
    char *partuuid;
    bool is_root;
    bool readonly;
    bool cache_unsafe;    /* cache_type "Unsafe" (Firecracker's default) or "Writeback" */
    unsigned reconnect_s; /* vhost-user: reconnect_s, how long to wait for a lost back-end */
    bool io_sync;         /* io_engine "Sync" (Firecracker's default) or "Async" */
    bool has_rate_limiter;
    struct rate_limit_config rate_limit;
};

/* PUT /pmem/{id}, the configuration file's "pmem". */
struct api_pmem {
    char *id;
    char *path;
    bool is_root;  /* root_device: root=/dev/pmemN */
    bool readonly; /* read_only: mapped read-only */
    bool has_rate_limiter;
    struct rate_limit_config rate_limit;
};

/* PUT /fs/{id} (ember's own: Firecracker has no virtio-fs), the configuration file's "fs". */
struct api_fs {
    char *id;
    char *tag;
    char *socket;         /* the vhost-user back-end's (virtiofsd) */
    unsigned num_queues;  /* request queues */
    unsigned reconnect_s; /* how long to wait for a back-end that went away; 0: never */
};

struct api_net {
    char *id;
    char *host_dev_name;     /* a tap, or NULL with: */
    char *vhost_user_socket; /* ember's own field: a vhost-user-net back-end's socket */
    bool vhost_user_server;  /* vhost_user_mode "server": ember listens on it */
    unsigned reconnect_s;    /* vhost-user: how long to wait for a back-end that went away */
    char *guest_mac;
    unsigned mtu; /* 0: not given */
    bool has_rx, has_tx;
    struct rate_limit_config rx, tx;
    /* The tap, attached by the API's PUT (api.c), -1 until then (a
     * configuration file's taps are attached at start); closed with it. */
    int tap_fd;
};

struct api_machine {
    unsigned vcpu_count;
    uint64_t mem_size_mib;
    bool smt;
    bool track_dirty_pages;
    char cpu_template[16]; /* as given: "None", "host", "baseline", "C3", "T2", ... */
    char huge_pages[16];   /* "None", "Transparent" or "2M" (hugetlbfs) */
    /* ember's own `cpu_placement` {"vmm": LIST, "vcpu": LIST}: the host CPUs of ember's
     * threads (vmm/placement.h); not set unless given */
    struct cpu_placement placement;
};

struct api_logger {
    bool set;
    char *log_path;
    enum log_level level;
    bool show_level, show_log_origin;
    char *module;
};

struct api_entropy {
    bool set;
    bool has_rate_limiter;
    struct rate_limit_config rate_limit;
};

/* PUT /mmds/config, the configuration file's "mmds-config". */
struct api_mmds {
    bool set;
    bool v2;
    char *ifaces[API_MAX_NETS];
    unsigned nifaces;
    uint32_t ipv4; /* host order; 169.254.169.254 unless given */
    bool imds_compat;
};

#define API_MMDS_DEFAULT_IPV4 0xa9fea9feu /* 169.254.169.254 */

struct api_vsock {
    bool set;
    uint64_t guest_cid;
    char *uds_path, *vsock_id;
    /* uds_path bound and listening since the API's PUT (api.c), -1 until
     * then; closed (and the socket file removed) with it. */
    int listen_fd;
};

/* Everything configured so far. Strings are owned (malloc'd). */
struct api_config {
    bool has_boot_source;
    char *kernel_path, *initrd_path, *boot_args;
    struct api_machine machine;
    /* PUT /cpu-config; it and a static cpu_template replace each other. */
    struct cpu_custom_template *custom_cpu;
    unsigned ndrives;
    struct api_drive drives[VM_MAX_DRIVES];
    unsigned nnets;
    struct api_net nets[API_MAX_NETS];
    unsigned npmem; /* in the order configured: the guest's pmem0, pmem1, ... */
    struct api_pmem pmem[VM_MAX_PMEM];
    unsigned nfs; /* in the order configured: fs0, fs1, ... */
    struct api_fs fs[VM_MAX_FS];
    struct api_logger logger;
    char *metrics_path;
    struct api_entropy entropy;
    struct api_vsock vsock;
    /* PUT /serial: where the serial port's output goes, opened when given
     * (read-write, non-blocking, as the logger's), -1 when not */
    char *serial_out_path;
    int serial_out_fd;
    struct api_mmds mmds;
};

/* A PATCH /drives/{id} after start: what changes. */
struct api_drive_update {
    char *path; /* NULL: unchanged */
    bool has_rate_limiter;
    struct rate_limit_config rate_limit;
};

/* PATCH /network-interfaces/{id}: new rate limits for a running interface. */
struct api_net_update {
    bool has_rx, has_tx;
    struct rate_limit_config rx, tx;
};

/* PATCH /pmem/{id}: new rate limits for a running device. */
struct api_pmem_update {
    bool has_rate_limiter;
    struct rate_limit_config rate_limit;
};

enum api_action { API_ACTION_INSTANCE_START, API_ACTION_CTRL_ALT_DEL, API_ACTION_FLUSH_METRICS };

void api_config_init(struct api_config *c);
void api_config_free(struct api_config *c);

/* Each parser validates body (a parsed JSON value) and applies it to c
 * only when all of it is valid; on error returns -1 with error_get() set
 * to the reason shown as the fault_message. */
int api_put_boot_source(struct api_config *c, const cJSON *body);
int api_put_machine_config(struct api_config *c, const cJSON *body, bool partial);
/* Takes t (a parsed custom template) in place of any CPU template. */
void api_set_custom_cpu(struct api_config *c, struct cpu_custom_template *t);
int api_put_drive(struct api_config *c, const char *path_id, const cJSON *body);
int api_parse_drive_update(const char *path_id, const cJSON *body, struct api_drive_update *u);
/* PUT /pmem/{id}: Firecracker's root device rules (one root, a drive or a
 * pmem device); the file must be there and readable (and writable unless
 * read_only). */
int api_put_pmem(struct api_config *c, const char *path_id, const cJSON *body);
int api_parse_pmem_update(const char *path_id, const cJSON *body, struct api_pmem_update *u);
/* PUT /fs/{id}: {"fs_id", "tag", "socket", "num_queues"}; the tag is checked
 * (vhost_user_fs_check_tag) and unique, the socket must be one now (connected at
 * InstanceStart), num_queues 1-16 (default 1). */
int api_put_fs(struct api_config *c, const char *path_id, const cJSON *body);
int api_put_net(struct api_config *c, const char *path_id, const cJSON *body);
/* Every check of api_put_net, changing nothing. */
int api_check_net(const struct api_config *c, const char *path_id, const cJSON *body);
int api_parse_net_update(const char *path_id, const cJSON *body, struct api_net_update *u);
int api_parse_logger(const cJSON *body, struct api_logger *out);
int api_parse_metrics(const cJSON *body, char **path);
int api_put_entropy(struct api_config *c, const cJSON *body);
int api_put_vsock(struct api_config *c, const cJSON *body);
/* PUT /serial: {"serial_out_path": PATH}; the file is opened now. */
int api_put_serial(struct api_config *c, const cJSON *body);
/* Validates an MMDS configuration against the interfaces configured so far and keeps it. The
 * errors of the values (address, interface list) are Firecracker's messages, without its
 * prefix; *semantic tells them from a body of the wrong shape. */
int api_put_mmds_config(struct api_config *c, const cJSON *body, bool *semantic);
int api_parse_action(const cJSON *body, enum api_action *out);
int api_parse_vm_state(const cJSON *body, bool *paused);

/* PUT /snapshot/create and PUT /snapshot/load, field for field as Firecracker takes them
 * (strings point into the body). */
struct api_snapshot_create {
    bool diff;
    const char *snapshot_path, *mem_file_path;
};
int api_parse_snapshot_create(const cJSON *body, struct api_snapshot_create *out);

#define API_MAX_NET_OVERRIDES 16
/* network_overrides and vsock_override: where a restored machine finds its host devices. */
struct api_overrides {
    unsigned nnet;
    struct {
        const char *iface_id, *host_dev_name;
    } net[API_MAX_NET_OVERRIDES];
    const char *vsock_uds_path; /* vsock_override.uds_path, or NULL */
};

struct api_snapshot_load {
    const char *snapshot_path;
    bool uffd;                /* mem_backend.backend_type Uffd (else File) */
    const char *backend_path; /* mem_backend.backend_path, or the deprecated mem_file_path */
    bool deprecated_mem_file_path, deprecated_enable_diff;
    bool track_dirty_pages, resume_vm, clock_realtime;
    struct api_overrides overrides;
};
int api_parse_snapshot_load(const cJSON *body, struct api_snapshot_load *out);

/* ember's own live migration routes (docs/migration.md). */
struct api_migration_send {
    const char *destination_url;
    uint64_t downtime_ms, timeout_s, max_rounds; /* 0: ember's defaults */
    bool local;
};
int api_parse_migration_send(const cJSON *body, struct api_migration_send *out);
struct api_migration_receive {
    const char *receiver_url;
    uint64_t timeout_s;
    struct api_overrides overrides; /* as a snapshot load takes them */
};
int api_parse_migration_receive(const cJSON *body, struct api_migration_receive *out);

/* Whether id is a valid resource id (drive, interface, instance). */
bool api_id_valid(const char *id);
/* Whether id may name a resource in an API path, by Firecracker's rule:
 * letters, digits and '_', 1 to API_MAX_ID_BYTES of them. */
bool api_path_id_valid(const char *id);

/* A whole configuration document (--config-file); logger and metrics are
 * returned in c for the caller to apply. */
int api_config_parse_document(struct api_config *c, const char *text, size_t len);

/* Maps c onto vm (which starts from vm_config_defaults); fails when
 * something needed is missing or not supported yet. Pointers in vm point
 * into c. */
/* After a snapshot load or a migration received: what GET /machine-config, /vm/config and the
 * others show becomes the machine that runs (as Firecracker fills its resources from the
 * snapshot). The logger and metrics settings stay. */
int api_config_adopt_vm(struct api_config *c, const struct vm_config *vm,
                        const struct mmds_store *mmds);
int api_config_to_vm(const struct api_config *c, struct vm_config *vm);

cJSON *api_machine_config_json(const struct api_config *c);
cJSON *api_config_json(const struct api_config *c);
cJSON *api_rate_limiter_json(const struct rate_limit_config *rl);

#endif
