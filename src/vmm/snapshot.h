/* Snapshots of a whole machine (Firecracker's snapshot API underneath): a
 * state file in ember's format (snapshot/format.h, docs/snapshot-format.md)
 * holding the configuration, the KVM state of the VM and of every vCPU and
 * the state of every device, and a memory file holding guest RAM. A load
 * builds a new machine in a fresh process from the state file, with guest RAM
 * mapped from the memory file or served by a page-fault handler. */
#ifndef EMBER_VMM_SNAPSHOT_H
#define EMBER_VMM_SNAPSHOT_H

#include "vmm/vm.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum vm_snapshot_type { VM_SNAPSHOT_FULL, VM_SNAPSHOT_DIFF };

struct vm_snapshot_create_params {
    enum vm_snapshot_type type;
    const char *snapshot_path;
    const char *mem_file_path;
};

struct vm_snapshot_create_stats {
    uint64_t state_bytes;
    uint64_t pages_written, pages_skipped;
    uint64_t pause_us; /* devices frozen, state and memory written, devices thawed */
};

struct vm_snapshot_net_override {
    const char *iface_id;
    const char *host_dev_name;
};

struct vm_snapshot_load_params {
    const char *snapshot_path;
    enum vm_ram_source ram_source; /* VM_RAM_FILE or VM_RAM_UFFD */
    const char *backend_path;      /* the memory file, or the handler's socket */
    bool track_dirty_pages;
    bool resume_vm;
    bool clock_realtime;
    unsigned nnet_overrides;
    struct vm_snapshot_net_override net_overrides[VM_MAX_NETS];
    const char *vsock_uds_path;     /* NULL: as saved */
    bool attach_console;            /* stdin/stdout become the guest's console */
    struct mmds_store *mmds;        /* the process's metadata store, configured as saved */
    const char *instance_id;        /* what its tokens are bound to */
    struct guest_memory *ram_given; /* VM_RAM_GIVEN: guest RAM received (taken over) */
    /* A live migration on one host: the source's tap of each interface and its vsock
     * listener, used (duplicated) instead of opening them again. */
    bool has_tap_fd[VM_MAX_NETS];
    int tap_fd[VM_MAX_NETS];
    bool has_vsock_listen_fd;
    int vsock_listen_fd;
};

/* Writes a snapshot of a started, paused machine (it stays paused). On
 * failure nothing of the machine changed (the files may be partial). */
int vm_snapshot_create(struct vm *vm, const struct vm_snapshot_create_params *p,
                       struct vm_snapshot_create_stats *stats);

/* Builds the machine described by the snapshot into vm (never created) and
 * starts it, running or paused (resume_vm). On failure vm is destroyed and
 * nothing runs; *status is the exit status that fits. cfg_out gets the
 * configuration the machine was built from. */
int vm_snapshot_load(struct vm *vm, struct event_loop *loop,
                     const struct vm_snapshot_load_params *p, struct vm_config *cfg_out,
                     int *status);

/* For live migration (migration/): the state alone, and its devices frozen around it. */
int vm_snapshot_freeze_devices(struct vm *vm);
void vm_snapshot_thaw_devices(struct vm *vm);
/* The state file's bytes (a new malloc'd buffer) of a paused machine whose devices are frozen. */
int vm_snapshot_save_state(struct vm *vm, enum vm_snapshot_type type, uint8_t **out, size_t *len);
/* vm_snapshot_load from state bytes already read. */
int vm_snapshot_restore_state(struct vm *vm, struct event_loop *loop, const uint8_t *data,
                              size_t len, const struct vm_snapshot_load_params *p,
                              struct vm_config *cfg_out, int *status);

/* --describe-snapshot: the state file's format version and what it holds. */
int vm_snapshot_describe(const char *path, FILE *out);

#endif
