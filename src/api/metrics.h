/* Metrics as JSON lines, one object per flush, written to a file or FIFO,
 * in Firecracker's schema: every group and field Firecracker writes (its
 * clients, Kata Containers and flintlock among them, parse them by name),
 * with ember's own counters beside them. A counter is reported as its
 * change since the previous line written, a gauge as it stands, each field
 * as Firecracker reports it (README "Metrics"). */
#ifndef EMBER_API_METRICS_H
#define EMBER_API_METRICS_H

#include "api/server.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct mmds_metrics;

struct api_route_count {
    char route[48];
    int status;
    uint64_t count;
};

/* Firecracker's latencies_us gauges that ember measures: the whole request, and the
 * machine's part of it. */
enum api_latency {
    API_LATENCY_PAUSE_VM,
    API_LATENCY_RESUME_VM,
    API_LATENCY_VMM_PAUSE_VM,
    API_LATENCY_VMM_RESUME_VM,
    API_LATENCY_FULL_CREATE_SNAPSHOT,
    API_LATENCY_DIFF_CREATE_SNAPSHOT,
    API_LATENCY_LOAD_SNAPSHOT,
    API_LATENCY_VMM_FULL_CREATE_SNAPSHOT,
    API_LATENCY_VMM_DIFF_CREATE_SNAPSHOT,
    API_LATENCY_VMM_LOAD_SNAPSHOT,
    API_LATENCIES
};

struct metrics_reported; /* the values the last line written reported, by name */

struct api_metrics {
    int fd; /* -1 until configured */
    /* The rest of a line a full FIFO took only in part, written before any
     * new line (which is dropped while it cannot be). */
    char *pending;
    size_t pending_off, pending_len;
    struct metrics_reported *reported;
    size_t reported_cap, reported_used;
    struct api_route_count *routes;
    unsigned nroutes, routes_cap;
    uint64_t lines_written, lines_lost;
    uint64_t deprecated_calls; /* requests answered with the Deprecation header */
    uint64_t latencies_us[API_LATENCIES];
    /* ember's live migration (not in Firecracker's schema): the last one's progress. */
    struct {
        uint64_t rounds, pages, bytes, dirty_pages, bandwidth_bps, downtime_us, total_us;
        uint64_t completed, failed;
    } migration;
    const struct api_server_stats *server; /* NULL: no API socket */
    /* Firecracker's start-up gauges, reported as they are (not as changes): microseconds
     * from the process's start (the jailer's, with its flags) to the API listening, wall
     * and CPU; 0 when not measured. */
    uint64_t startup_time_us, startup_time_cpu_us;
    const struct mmds_metrics *mmds; /* NULL: the mmds group's counters stay 0 */
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
void api_metrics_count_deprecated(struct api_metrics *m);
void api_metrics_set_latency(struct api_metrics *m, enum api_latency which, uint64_t us);
/* Counts a signal of those in Firecracker's signals group (SIGHUP, SIGPIPE, ...); safe in a
 * signal handler. */
void api_metrics_note_signal(int signo);
/* Writes one line; vm may be NULL (not started). A no-op when not open. */
int api_metrics_flush(struct api_metrics *m, struct vm *vm);
/* The line the next flush would write, with cumulative values instead of changes (tests). */
cJSON *api_metrics_snapshot(struct api_metrics *m, struct vm *vm);
/* The line as text (no newline), cumulative or as changes since the last line written;
 * malloc'd, NULL when out of memory. */
char *api_metrics_render(struct api_metrics *m, struct vm *vm, bool cumulative);
void api_metrics_close(struct api_metrics *m);

#endif
