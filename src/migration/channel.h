/* The connection a live migration runs over: a unix or TCP stream, messages framed with a
 * header, every read and write bounded by a deadline so that a peer that stops answering
 * cannot hold ember forever (docs/migration.md has the protocol). */
#ifndef EMBER_MIGRATION_CHANNEL_H
#define EMBER_MIGRATION_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIGRATION_MAGIC   0x474d454dU /* "MEMG" little-endian: ember migration */
#define MIGRATION_VERSION 1u

enum migration_msg {
    MIGRATION_HELLO = 1,  /* source: version, RAM size, vCPUs, mode */
    MIGRATION_READY = 2,  /* destination: memory ready, send */
    MIGRATION_MEMORY = 3, /* source: u64 offset into RAM, then pages */
    MIGRATION_MEMFD = 4,  /* source, local mode: guest RAM's memfd (SCM_RIGHTS) */
    MIGRATION_STATE = 5,  /* source: the machine's state (a snapshot state file) */
    MIGRATION_DONE = 6,   /* destination: the machine runs here now */
    MIGRATION_ERROR = 7,  /* either side: why it gives up (a string) */
    MIGRATION_FD = 8,     /* source, unix socket: a tap or the vsock socket (SCM_RIGHTS) */
};

/* MIGRATION_FD's payload: what the descriptor is. */
enum migration_fd_kind { MIGRATION_FD_TAP = 1, MIGRATION_FD_VSOCK = 2 };
struct migration_fd_msg {
    uint32_t kind;
    uint32_t index; /* the tap's interface, in the configuration's order */
};

struct migration_header {
    uint32_t magic;
    uint32_t type;
    uint64_t length; /* payload bytes after the header */
};

/* A memory message carries at most this much guest memory. */
#define MIGRATION_CHUNK (4u << 20)

struct migration_hello {
    uint32_t version;
    uint32_t ncpus;
    uint64_t ram_size;
    uint32_t local; /* guest RAM comes as a memfd, not as pages */
    uint32_t reserved;
};

struct migration_url {
    bool tcp;
    char path[108]; /* unix */
    char host[256], port[8];
};

/* "unix:PATH" or "tcp:ADDRESS:PORT" (a numeric address; IPv6 in brackets). */
int migration_parse_url(const char *url, struct migration_url *u);

/* Milliseconds on CLOCK_MONOTONIC, for deadlines. */
uint64_t migration_now_ms(void);

/* A connected, non-blocking stream to u, or -1 (connecting ends at deadline_ms). */
int migration_connect(const struct migration_url *u, uint64_t deadline_ms);
/* A listening socket at u (a unix path must not exist yet); the first connection accepted
 * by migration_accept (the listener then closed, a unix path removed). */
int migration_listen(const struct migration_url *u);
int migration_accept(int listen_fd, const struct migration_url *u, uint64_t deadline_ms);

/* One message: header, then a and b (either may be empty); pass_fd >= 0 goes along with it
 * (SCM_RIGHTS, unix streams only). */
int migration_send(int fd, uint32_t type, const void *a, size_t alen, const void *b, size_t blen,
                   int pass_fd, uint64_t deadline_ms);
/* The next header (magic checked); *received_fd gets a descriptor that came with it (or -1;
 * pass NULL to refuse any). */
int migration_recv_header(int fd, struct migration_header *h, int *received_fd,
                          uint64_t deadline_ms);
int migration_recv_exact(int fd, void *buf, size_t len, uint64_t deadline_ms);
/* An ERROR message's text into buf (at most cap - 1 bytes kept; the rest read and dropped). */
int migration_recv_error(int fd, uint64_t length, char *buf, size_t cap, uint64_t deadline_ms);

#endif
