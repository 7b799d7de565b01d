/* The control plane: Firecracker's API routes, answered on the main
 * thread, over ember's machine. Before InstanceStart requests shape a
 * configuration (api/config.h); InstanceStart builds and starts the
 * machine; afterwards only the runtime operations remain (pause, resume,
 * Ctrl+Alt+Del, drive updates, metrics). */
#ifndef EMBER_API_API_H
#define EMBER_API_API_H

#include "api/config.h"
#include "api/http.h"
#include "api/metrics.h"
#include "mmds/store.h"
#include "util/eventloop.h"
#include "util/iothread.h"
#include "vmm/vm.h"

#include <stdbool.h>

#define API_METRICS_PERIOD_S 60

struct api {
    struct api_config cfg;
    struct vm_config vm_cfg; /* what the machine was built from */
    struct vm *vm;           /* storage owned by the process */
    struct event_loop *loop;
    bool vm_created;
    bool configured; /* a boot resource was set: a snapshot can no longer be loaded */
    bool enable_pci;
    bool boot_timer;                 /* --boot-timer */
    bool deprecated_request;         /* the request being answered used a deprecated field */
    struct log_limit log_deprecated; /* a client can repeat deprecated requests at will */
    uint64_t request_start_us;       /* CLOCK_MONOTONIC: when the request being answered came */
    char instance_id[API_MAX_ID_BYTES + 1];
    struct api_metrics metrics;
    int metrics_timer_fd;
    struct event_handler *metrics_timer;
    /* Where InstanceStart builds the machine (NULL: on the caller): a
     * thread that never serves a client, so that the filter of the main
     * thread, which does, need not allow what building takes, and the
     * threads it starts inherit no filter but their own. */
    struct iothread *builder;
    /* The metadata store, made at start (its token key needs getrandom, which the API's
     * filter does not allow). As in Firecracker, it answers before and after InstanceStart,
     * whether or not an interface serves it to the guest. */
    struct mmds_store mmds;
};

/* mmds_size_limit: the metadata's largest size in bytes (0: MMDS_DEFAULT_SIZE_LIMIT). */
int api_init(struct api *a, struct event_loop *loop, struct vm *vm, const char *instance_id,
             bool enable_pci, size_t mmds_size_limit);
/* --metadata: the store's first contents, a JSON document of text_len bytes. */
int api_load_metadata(struct api *a, const char *text, size_t text_len);
/* Answers one HTTP request (the server's callback). */
void api_handle_request(void *opaque, const struct http_request *req, int *status, char **body);
/* Dispatches method + path + body; status and a malloc'd JSON body (or
 * NULL) come back. Also counts the request for metrics. */
int api_dispatch(struct api *a, const char *method, const char *path, const char *body,
                 size_t body_len, char **out_body);
/* Applies a logger / metrics configuration now. */
int api_apply_logger(struct api *a, const struct api_logger *l);
int api_apply_metrics(struct api *a, const char *path);
/* Builds and starts the machine from a->cfg (InstanceStart). On failure
 * *status says which exit status fits. */
int api_start_instance(struct api *a, int *status);
bool api_instance_started(const struct api *a);
/* After the loop ended: stops the machine if it runs, writes the last
 * metrics, frees everything; returns the machine's exit status, or
 * no_vm_status when none was started. */
int api_finish(struct api *a, int no_vm_status);

#endif
