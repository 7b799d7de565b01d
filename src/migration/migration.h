/* Live migration of a running machine between two ember processes: pre-copy rounds of guest
 * memory driven by KVM's dirty log (and ember's own log of what its devices wrote) while the
 * guest runs, until what is left fits the downtime target; then the guest is paused, the last
 * pages and the machine's state (a snapshot state file) are sent, and the destination resumes
 * it. In local mode guest RAM (a memfd) is handed over instead of copied. The source ends
 * once the destination runs the machine; on any failure or timeout the source keeps running
 * as before. docs/migration.md has the protocol. */
#ifndef EMBER_MIGRATION_MIGRATION_H
#define EMBER_MIGRATION_MIGRATION_H

#include "vmm/snapshot.h"
#include "vmm/vm.h"

#include <stdbool.h>
#include <stdint.h>

struct migration_stats {
    unsigned rounds;           /* memory passes, the first (all memory) included */
    uint64_t pages_sent;       /* pages of guest memory sent, all rounds */
    uint64_t bytes_sent;       /* everything on the wire */
    uint64_t last_dirty_pages; /* dirty pages found by the last pass */
    uint64_t bandwidth_bps;    /* as measured in the last pass */
    uint64_t downtime_us;      /* guest paused to destination running */
    uint64_t total_us;
    bool completed;
};

struct migration_send_params {
    const char *url;      /* unix:PATH or tcp:HOST:PORT */
    uint64_t downtime_ms; /* stop the guest once what is left takes this long to send */
    uint64_t timeout_ms;  /* give up (the source keeps running) after this long */
    unsigned max_rounds;  /* then stop the guest whatever is left */
    bool local;           /* hand guest RAM over as a memfd (same host) */
    /* After each pass, for progress reports. */
    void (*progress)(void *opaque, const struct migration_stats *st);
    void *opaque;
};

/* Sends the running (or paused) machine. On success the machine has been handed over:
 * vm->migrated is set and the machine stops here (ember then exits with status 0). */
int migration_send_vm(struct vm *vm, const struct migration_send_params *p,
                      struct migration_stats *st);

struct migration_receive_params {
    const char *url;
    uint64_t timeout_ms;                 /* for the source to connect, and for each message after */
    struct vm_snapshot_load_params load; /* how the machine is built (ram_source is set here) */
};

/* Listens at url, takes one migration and runs the machine here (vm never created before). */
int migration_receive_vm(struct vm *vm, struct event_loop *loop,
                         const struct migration_receive_params *p, struct vm_config *cfg_out,
                         int *status, struct migration_stats *st);

#endif
