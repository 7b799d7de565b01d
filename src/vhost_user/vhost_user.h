/* The front-end side of the vhost-user protocol (QEMU's docs/interop/vhost-user.rst): a
 * device's data path runs in a back-end process that maps guest memory itself, while ember
 * sets it up over a unix socket and hands it the queues' kick and call eventfds.
 *
 * The back-end is another process and may be buggy or hostile: every reply is checked
 * (header, request, exact size, no descriptors), every wait for one is bounded by
 * timeout_ms, and a closed socket is an error. After any protocol error the connection is
 * broken: every later call fails at once (the two ends no longer agree on where a message
 * starts). One thread at a time uses a connection. */
#ifndef EMBER_VHOST_USER_VHOST_USER_H
#define EMBER_VHOST_USER_VHOST_USER_H

#include "vmm/memory.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define VHOST_USER_TIMEOUT_MS 5000

/* A virtio feature bit that is the protocol's, never the guest's: the back-end speaks the
 * protocol features (GET/SET_PROTOCOL_FEATURES), and its rings start disabled. */
#define VHOST_USER_F_PROTOCOL_FEATURES 30

/* Protocol features ember uses. */
#define VHOST_USER_PROTOCOL_F_MQ                  0
#define VHOST_USER_PROTOCOL_F_REPLY_ACK           3
#define VHOST_USER_PROTOCOL_F_BACKEND_REQ         5
#define VHOST_USER_PROTOCOL_F_CONFIG              9
#define VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD      12
#define VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS 15

/* The largest device configuration space GET_CONFIG/SET_CONFIG carry. */
#define VHOST_USER_MAX_CONFIG 256

struct vhost_user {
    int fd;
    int timeout_ms;
    bool broken;                /* a protocol error or a closed socket */
    uint64_t features;          /* the back-end's virtio features (GET_FEATURES) */
    uint64_t protocol_features; /* negotiated (both sides) */
    char name[32];              /* for messages: the device's name */
    /* CONFIGURE_MEM_SLOTS: GET_MAX_MEM_SLOTS' answer (0: not asked yet) and the regions this
     * back-end was given by ADD_MEM_REG, both for this connection only. */
    uint64_t max_mem_slots;
    unsigned nmem_added;
    struct guest_region mem_added[GUEST_MEM_MAX_REGIONS];
};

/* Connects to the back-end listening on path (ember is the client); -1 with a message. */
int vhost_user_connect(struct vhost_user *vu, const char *name, const char *path, int timeout_ms);
/* An already connected socket (tests); taken over. */
int vhost_user_from_fd(struct vhost_user *vu, const char *name, int fd, int timeout_ms);
void vhost_user_close(struct vhost_user *vu);
/* The socket's descriptor, to watch between messages: readable means the back-end closed
 * it or sent what nobody asked for. */
int vhost_user_fd(const struct vhost_user *vu);
/* Called when that descriptor is readable between messages: -1 (connection broken) with
 * why. */
int vhost_user_check_idle(struct vhost_user *vu);

/* GET_FEATURES; with VHOST_USER_F_PROTOCOL_FEATURES, GET_PROTOCOL_FEATURES and
 * SET_PROTOCOL_FEATURES (what both know of `wanted`); then SET_OWNER. */
int vhost_user_handshake(struct vhost_user *vu, uint64_t wanted_protocol);
bool vhost_user_has_protocol(const struct vhost_user *vu, unsigned bit);

/* The messages, one call each. Those that can fail are acknowledged (REPLY_ACK) when the
 * back-end offers it: a non-zero acknowledgement is an error. */
int vhost_user_get_features(struct vhost_user *vu, uint64_t *features);
/* VHOST_USER_F_PROTOCOL_FEATURES is added when the back-end offered it. */
int vhost_user_set_features(struct vhost_user *vu, uint64_t features);
int vhost_user_get_protocol_features(struct vhost_user *vu, uint64_t *features);
int vhost_user_set_protocol_features(struct vhost_user *vu, uint64_t features);
int vhost_user_set_owner(struct vhost_user *vu);
/* The back-end's queue count (needs PROTOCOL_F_MQ); 1 to 0xffff. */
int vhost_user_get_queue_num(struct vhost_user *vu, uint64_t *num);
/* The device's configuration space [offset, offset + len), len <= VHOST_USER_MAX_CONFIG
 * (needs PROTOCOL_F_CONFIG). */
int vhost_user_get_config(struct vhost_user *vu, uint32_t offset, void *buf, uint32_t len);
int vhost_user_set_config(struct vhost_user *vu, uint32_t offset, const void *buf, uint32_t len);
/* Guest RAM's regions, each with the memfd it lives in (mem->has_memfd required), in one
 * SET_MEM_TABLE. */
int vhost_user_set_mem_table(struct vhost_user *vu, const struct guest_memory *mem);
/* GET_MAX_MEM_SLOTS (needs CONFIGURE_MEM_SLOTS): the back-end's memory slots, checked (1 to
 * VHU_MAX_MEM_SLOTS_LIMIT, at least `needed`) and kept in vu->max_mem_slots. */
int vhost_user_get_max_mem_slots(struct vhost_user *vu, unsigned needed, uint64_t *slots);
/* Guest RAM to the back-end: with CONFIGURE_MEM_SLOTS, one ADD_MEM_REG per region it does not
 * have yet on this connection (its slots asked first; *by_region set), else SET_MEM_TABLE.
 * ember's regions never change while it runs, so a back-end never has one to remove
 * (REM_MEM_REG); a region that differs from the one given is refused. */
int vhost_user_give_memory(struct vhost_user *vu, const struct guest_memory *mem, bool *by_region);
int vhost_user_set_vring_num(struct vhost_user *vu, unsigned index, unsigned num);
/* Host addresses in ember's mapping of guest RAM (as in the memory table). */
int vhost_user_set_vring_addr(struct vhost_user *vu, unsigned index, const void *desc,
                              const void *avail, const void *used);
int vhost_user_set_vring_base(struct vhost_user *vu, unsigned index, unsigned base);
/* Stops ring index; *base is where the back-end stopped in the avail ring. */
int vhost_user_get_vring_base(struct vhost_user *vu, unsigned index, unsigned *base);
int vhost_user_set_vring_kick(struct vhost_user *vu, unsigned index, int fd);
int vhost_user_set_vring_call(struct vhost_user *vu, unsigned index, int fd);
int vhost_user_set_vring_enable(struct vhost_user *vu, unsigned index, bool enable);

/* The back-end's inflight buffer (PROTOCOL_F_INFLIGHT_SHMFD): shared memory where it
 * records the requests it took, handed to it again after it restarted so that it submits
 * them once more. ember maps it (proving it is what the back-end says) but never reads it. */
struct vhost_user_inflight {
    int fd; /* -1: none */
    void *addr;
    uint64_t size, offset;
    unsigned nqueues, queue_size;
};
/* GET_INFLIGHT_FD for nqueues rings of queue_size: the reply checked (one descriptor, a
 * bounded size the file holds), then mapped; -1 with why. */
int vhost_user_get_inflight_fd(struct vhost_user *vu, unsigned nqueues, unsigned queue_size,
                               struct vhost_user_inflight *out);
/* SET_INFLIGHT_FD: the buffer a back-end (maybe a restarted one) is to track requests in. */
int vhost_user_set_inflight_fd(struct vhost_user *vu, const struct vhost_user_inflight *in);
void vhost_user_inflight_free(struct vhost_user_inflight *in);

/* The back-end's request channel (PROTOCOL_F_BACKEND_REQ): a socketpair whose other end the
 * back-end got with SET_BACKEND_REQ_FD, on which it sends requests of its own (its
 * configuration changed, ...) and reads the answers it asked for (NEED_REPLY). Read in
 * bounded bites without blocking: a message not all there yet waits in buf. */
#define VHOST_USER_CHANNEL_BUF 4096
struct vhost_user_channel {
    int fd; /* ember's end, non-blocking; -1: none */
    uint32_t have;
    uint8_t buf[VHOST_USER_CHANNEL_BUF];
};
/* What one vhost_user_channel_serve did. */
struct vhost_user_channel_stats {
    unsigned requests;       /* whole requests read */
    unsigned config_changes; /* CONFIG_CHANGE_MSG among them */
    unsigned refused;        /* answered with a failure or ignored */
    bool closed;             /* the back-end closed its end */
    char why[128];           /* the first refusal's reason */
};
/* Makes the channel and hands the back-end its end (needs BACKEND_REQ); -1 with why. */
int vhost_user_open_channel(struct vhost_user *vu, struct vhost_user_channel *ch);
void vhost_user_channel_close(struct vhost_user_channel *ch);
/* Reads once (at most the buffer's room) and serves every whole request read: the
 * CONFIG_CHANGE_MSGs among them by one call of config_changed (NULL: refused), after the
 * read, so that what it reads covers each of them; every other request refused; an answer
 * (0, or 1 for a failure) to each that asks for one. -1 with why when the channel is of no
 * more use (closed, a message that breaks it, descriptors attached, answers not read): close
 * it. */
int vhost_user_channel_serve(struct vhost_user_channel *ch, int (*config_changed)(void *opaque),
                             void *opaque, struct vhost_user_channel_stats *st);

/* ---- server mode (listen.c) --------------------------------------------------
 * ember listens on a unix socket and the back-end connects (DPDK's vhost PMD with client=1).
 * One connection at a time: the listener's backlog is 1, and connections beyond the one
 * served are accepted and closed at once. */
struct vhost_user_listener {
    int fd; /* -1: none */
    dev_t dev;
    ino_t ino; /* the socket file ember made: removed at close only if it is still that file */
    char path[108];
};

/* Listens on path: a socket file left there by a process that is gone is replaced; anything
 * else there (a file, a socket someone listens on) is refused. -1 with why. */
int vhost_user_listen(struct vhost_user_listener *l, const char *name, const char *path);
/* Accepts the back-end's connection, waiting at most wait_ms (0: only one already waiting);
 * -1 with why (nobody came: errno EAGAIN). */
int vhost_user_accept(struct vhost_user *vu, const char *name, struct vhost_user_listener *l,
                      int wait_ms, int timeout_ms);
/* Accepts and closes connections waiting on the listener (at most 16): how many. */
unsigned vhost_user_listener_refuse(struct vhost_user_listener *l);
/* Closes the listener and removes its socket file. */
void vhost_user_listener_close(struct vhost_user_listener *l);

#endif
