/* Metrics as JSON lines, one object per flush, written to a file or FIFO:
 * the API's requests by route and status and its server's connections
 * (accepted, refused, evicted, timed out), and the machine's counters
 * (vCPU exits by reason, block, serial, entropy and console devices).
 * Counters are reported as the change since the previous flush, as
 * Firecracker reports them. */
#ifndef EMBER_API_METRICS_H
#define EMBER_API_METRICS_H

#include "api/server.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

struct vm;
struct mmds_metrics;

struct api_route_count {
    char route[48];
    int status;
    uint64_t count;
};

struct api_metrics {
    int fd; /* -1 until configured */
    /* The rest of a line a full FIFO took only in part, written before any
     * new line (which is dropped while it cannot be). */
    char *pending;
    size_t pending_off, pending_len;
    cJSON *previous; /* cumulative values at the last flush */
    struct api_route_count *routes;
    unsigned nroutes, routes_cap;
    uint64_t lines_written, lines_lost;
    const struct api_server_stats *server; /* NULL: no API socket */
    /* Firecracker's start-up gauges, reported as they are (not as changes): microseconds
     * from the process's start (the jailer's, with its flags) to the API listening, wall
     * and CPU; 0 when not measured. */
    uint64_t startup_time_us, startup_time_cpu_us;
    const struct mmds_metrics *mmds; /* NULL: no `mmds` group */
};

void api_metrics_init(struct api_metrics *m);
/* Opens path for appending: a file (created if missing) or a FIFO, which
 * needs no reader yet. */
int api_metrics_open(struct api_metrics *m, const char *path);
bool api_metrics_enabled(const struct api_metrics *m);
/* Reports the server's counters in the api_server group from now on. */
void api_metrics_watch_server(struct api_metrics *m, const struct api_server_stats *stats);
/* Reports the metadata service's counters in the mmds group from now on. */
void api_metrics_watch_mmds(struct api_metrics *m, const struct mmds_metrics *mmds);
void api_metrics_set_startup(struct api_metrics *m, uint64_t wall_us, uint64_t cpu_us);
void api_metrics_count_request(struct api_metrics *m, const char *route, int status);
/* Writes one line; vm may be NULL (not started). A no-op when not open. */
int api_metrics_flush(struct api_metrics *m, struct vm *vm);
/* The cumulative counters as JSON (for tests and the flush). */
cJSON *api_metrics_snapshot(const struct api_metrics *m, struct vm *vm);
void api_metrics_close(struct api_metrics *m);

#endif
