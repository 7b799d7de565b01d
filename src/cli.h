/* The command line: `ember run ...`, `ember --help`, `ember --version`,
 * and Firecracker's top-level flags (`ember --api-sock PATH ...`), which
 * start the API instead of booting at once. */
#ifndef EMBER_CLI_H
#define EMBER_CLI_H

#include "util/log.h"
#include "vmm/vm.h"

#include <stdio.h>

enum cli_action {
    CLI_RUN,
    CLI_HELP,
    CLI_VERSION,
    CLI_API,
    CLI_DESCRIBE_SNAPSHOT, /* --describe-snapshot FILE */
    CLI_SNAPSHOT_VERSION,  /* --snapshot-version */
};

#define CLI_DEFAULT_API_SOCK "/run/ember.socket"
/* The default when ember runs under the name firecracker (Firecracker's). */
#define CLI_FIRECRACKER_API_SOCK "/run/firecracker.socket"

/* Firecracker's process flags. */
struct cli_api {
    const char *socket_path;
    bool no_api;
    const char *config_file;
    const char *id;
    const char *log_path;
    bool level_given;
    bool show_level, show_log_origin;
    const char *module;
    const char *metrics_path;
    uint64_t max_payload;
    unsigned request_timeout_ms; /* 0: the server's default */
    bool idle_timeout_given;
    unsigned idle_timeout_ms; /* 0 (given): idle connections are not timed out */
    bool enable_pci;
    bool boot_timer; /* --boot-timer: Firecracker's boot timer device */
    /* --metadata FILE: the MMDS store's first contents, loaded at start */
    const char *metadata_path;
    bool mmds_size_limit_given; /* --mmds-size-limit: the MMDS store's largest size */
    uint64_t mmds_size_limit;
    /* Firecracker's start-time flags, which the jailer passes: when the jailer started
     * (CLOCK_MONOTONIC, us), this process's CPU time at exec and the jailer's CPU time. */
    bool start_time_given, start_cpu_given;
    uint64_t start_time_us, start_time_cpu_us, parent_cpu_time_us;
};

struct cli {
    enum cli_action action;
    struct vm_config vm;
    enum log_level log_level;
    struct cli_api api;
    bool sync_teardown;         /* wait for the kernel to destroy the VM before exiting */
    bool no_seccomp;            /* --no-seccomp: no system call filters */
    const char *seccomp_filter; /* --seccomp-filter: a policy file instead of ember's own */
    const char *snapshot_path;  /* --describe-snapshot FILE */
    const char *run_api_sock;   /* ember run --api-sock PATH: the API's runtime routes */
};

/* Parses argv into *out. On error, returns -1 with error_get() set. */
int cli_parse(int argc, char **argv, struct cli *out);
/* --cpu-placement against --cpus and the CPUs ember may run on (vmm/placement.h). */
int cli_check_placement(const struct vm_config *vm);
void cli_usage(FILE *f);
/* Parses a decimal count with an optional K/M/G/T suffix relative to
 * unit_shift (20 for MiB: "512" = 512 MiB, "2G" = 2048). */
int cli_parse_size(const char *s, unsigned unit_shift, uint64_t *out);
int cli_parse_uint(const char *s, unsigned max, unsigned *out);
const char *cli_version(void);
/* `--version`: a first line as Firecracker's (its second word the version
 * Firecracker's clients compare, util/version.h), then ember's own. */
void cli_print_version(FILE *f);
/* Whether argv0 names the program firecracker (a link or copy of ember
 * installed under Firecracker's name). */
bool cli_named_firecracker(const char *argv0);
int cli_parse_drive(const char *spec, struct drive_config *d);
/* What a parsed drive's strings point into, freed (tests; ember keeps it). */
void cli_free_drive(struct drive_config *d);
int cli_parse_pmem(const char *spec, struct pmem_config *p);
/* --fs: the tag checked (vhost_user_fs_check_tag), queues 1-16 (default 1); id is the tag. */
int cli_parse_fs(const char *spec, struct fs_config *f);
/* What a parsed fs's strings point into, freed (tests; ember keeps it). */
void cli_free_fs(struct fs_config *f);
/* The strings it keeps (tap, id, forwards, vhost_user_socket) are the caller's: cli_free_net. */
int cli_parse_net(const char *spec, struct net_config *n);
void cli_free_net(struct net_config *n);
int cli_parse_vsock(const char *spec, struct vsock_config *v);

#endif
