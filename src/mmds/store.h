/* The MMDS data store: one JSON document per machine, replaced by `PUT /mmds`, merged into by
 * `PATCH /mmds` (JSON merge patch, RFC 7396), read by `GET /mmds` and by the guest through
 * each MMDS network stack (mmds/stack.h). It also holds what every stack shares: the version
 * (V1, V2), the IMDS compatibility switch, the session token authority and the `mmds`
 * metrics. The API thread writes it and the net devices' I/O threads read it, under its
 * lock. Object keys are kept sorted and unique, as Firecracker keeps them, so that answers
 * come out the same. */
#ifndef EMBER_MMDS_STORE_H
#define EMBER_MMDS_STORE_H

#include "mmds/token.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MMDS_DEFAULT_SIZE_LIMIT 51200 /* Firecracker's, the API's largest body */

enum mmds_version { MMDS_V1, MMDS_V2 };
enum mmds_format { MMDS_FORMAT_JSON, MMDS_FORMAT_IMDS };

enum mmds_result {
    MMDS_OK = 0,
    MMDS_TOO_LARGE = -1,       /* serialised, the document would pass the size limit */
    MMDS_NOT_INITIALIZED = -2, /* PATCH before any PUT */
    MMDS_NOT_FOUND = -3,       /* no value at that path */
    MMDS_UNSUPPORTED = -4,     /* IMDS format asked for a value that is no string or object */
    MMDS_NO_MEMORY = -5,
};

/* Firecracker's `mmds` metrics group, counted by every stack (any thread). */
struct mmds_metrics {
    _Atomic uint64_t rx_accepted;         /* frames taken off the transmit path for MMDS */
    _Atomic uint64_t rx_accepted_err;     /* of those, ones that could not be handled */
    _Atomic uint64_t rx_accepted_unusual; /* of those, IPv4 packets that were not TCP */
    _Atomic uint64_t rx_bad_eth;          /* frames too short for an Ethernet header */
    _Atomic uint64_t rx_invalid_token;    /* GETs with a token that does not open */
    _Atomic uint64_t rx_no_token;         /* GETs without a token */
    _Atomic uint64_t rx_count;            /* TCP segments handled */
    _Atomic uint64_t tx_bytes;            /* bytes of the frames MMDS sent */
    _Atomic uint64_t tx_count;            /* frames MMDS sent */
    _Atomic uint64_t tx_errors;           /* frames MMDS could not write */
    _Atomic uint64_t tx_frames;           /* frames MMDS sent */
    _Atomic uint64_t connections_created;
    _Atomic uint64_t connections_destroyed;
};

struct mmds_store {
    pthread_mutex_t lock;
    cJSON *data;   /* NULL: JSON null */
    bool data_set; /* a PUT happened: PATCH may merge */
    size_t limit;
    enum mmds_version version;
    bool imds_compat;
    struct mmds_tokens tokens;
    struct mmds_metrics metrics;
};

/* A store of at most limit bytes (serialised; 0: nothing fits), its token key drawn from
 * getrandom(): call it where getrandom is allowed (before the main thread's filter). */
int mmds_store_init(struct mmds_store *s, size_t limit);
void mmds_store_destroy(struct mmds_store *s);
/* Version, IMDS compatibility and the instance id the tokens are bound to. */
void mmds_store_configure(struct mmds_store *s, enum mmds_version version, bool imds_compat,
                          const char *instance_id);

/* Replaces the document with a copy of value. */
enum mmds_result mmds_store_put(struct mmds_store *s, const cJSON *value);
/* Merges patch into the document (RFC 7396); the document is unchanged on failure. */
enum mmds_result mmds_store_patch(struct mmds_store *s, const cJSON *patch);
/* The whole document as compact JSON ("{}" when never PUT), malloc'd; NULL without memory. */
char *mmds_store_json(struct mmds_store *s);
/* The value at path (an HTTP path: "//" folded, a trailing '/' ignored, then a JSON pointer,
 * RFC 6901) in the format asked for (the store's IMDS compatibility forces IMDS), malloc'd
 * into *out. The caller holds the lock (mmds_store_lock). */
enum mmds_result mmds_store_lookup_locked(struct mmds_store *s, const char *path,
                                          enum mmds_format format, char **out);
void mmds_store_lock(struct mmds_store *s);
void mmds_store_unlock(struct mmds_store *s);

/* For the tests: sorts object keys and keeps the last of duplicates, recursively. */
void mmds_json_normalize(cJSON *v);
/* RFC 7396 on a tree: returns the merged target (target is consumed; NULL stands for null). */
cJSON *mmds_json_merge_patch(cJSON *target, const cJSON *patch);

#endif
