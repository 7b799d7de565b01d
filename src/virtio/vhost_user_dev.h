/* The part of a vhost-user device that does not depend on its type (vhost_user_blk.c,
 * vhost_user_fs.c): a virtio device whose data path is a back-end process reached over a
 * unix socket (vhost_user/). At DRIVER_OK it hands the back-end guest memory (shared
 * memfd), the rings, each queue's kick eventfd (the one KVM signals) and a call eventfd per
 * queue: the transport's own where it has one (virtio-pci with MSI-X: the vector's KVM
 * irqfd, which the transport unbinds while the vector is masked), so that kicks and
 * interrupts go between KVM and the back-end alone; otherwise (INTx, virtio-mmio, whose
 * interrupt status ember sets) one that ember relays to the transport's interrupt. A reset takes
 * the rings back (GET_VRING_BASE). A back-end that goes away is connected to again (reconnect_ms:
 * bounded exponential back-off) and given the rings where they stand, the guest's device resumed
 * without a reset; requests it had taken are resubmitted by the new back-end from the inflight
 * buffer (INFLIGHT_SHMFD), or, without one, completed with an error by the device type
 * (fail_requests) or the device made to need a reset. A back-end that does not come back in time:
 * the same errors, then DEVICE_NEEDS_RESET. One rate-limited log line per event; ember keeps
 * running. The device type supplies its configuration space (read_config) and what it offers. */
#ifndef EMBER_VIRTIO_VHOST_USER_DEV_H
#define EMBER_VIRTIO_VHOST_USER_DEV_H

#include "vhost_user/vhost_user.h"
#include "virtio/device.h"

#define VHOST_USER_DEV_MAX_QUEUES 17 /* virtio-fs: hiprio + 16 request queues */

/* Reconnection: the default total time, the limit of the option, the back-off's bounds. */
#define VHOST_USER_RECONNECT_DEFAULT_S 10
#define VHOST_USER_RECONNECT_MAX_S     3600
#define VHOST_USER_BACKOFF_FIRST_MS    50
#define VHOST_USER_BACKOFF_MAX_MS      2000

struct vhost_user_dev;

struct vhost_user_dev_call {
    struct vhost_user_dev *owner;
    unsigned queue;
    int fd;
    struct event_handler *handler;
};

struct vhost_user_dev {
    struct virtio_dev dev; /* dev.opaque is this structure */
    struct vhost_user vu;
    const char *socket;
    void *model; /* the device type's structure */
    uint64_t backend_features;
    struct virtio_dev_ops ops;
    struct vhost_user_dev_call calls[VHOST_USER_DEV_MAX_QUEUES];
    struct event_handler *socket_handler;
    bool running;          /* [io] the back-end has the rings */
    uint64_t relayed;      /* [io] interrupts relayed from the back-end */
    unsigned direct_rings; /* [io] rings whose back-end signals the transport's irqfd itself */

    uint64_t wanted_protocol;
    unsigned reconnect_ms; /* how long to try a back-end that went away; 0: never */
    int timer_fd;          /* the back-off's timerfd */
    struct event_handler *timer_handler;
    bool reconnecting;                      /* [io] the back-end is gone, the timer armed */
    uint64_t gone_ns;                       /* [io] when it went */
    unsigned backoff_ms;                    /* [io] the next wait */
    char gone_why[192];                     /* [io] why it went, for the give-up line */
    uint64_t reconnects;                    /* [io] back-ends resumed */
    struct vhost_user_inflight inflight;    /* [io] fd -1: none */
    struct log_limit log_backend, log_back; /* the back-end lost; back (or not) */
    /* The device type completes queue q's requests that no back-end will finish, with an
     * error the driver understands (blk: VIRTIO_BLK_S_IOERR): how many, or -1 when it
     * cannot. NULL: it never can (the device then needs a reset). [io] */
    int (*fail_requests)(struct vhost_user_dev *v, unsigned q);

    /* The back-end's request channel (BACKEND_REQ, when the type wants it and the back-end
     * offers it), one per connection, served on the I/O thread. */
    struct vhost_user_channel channel; /* fd -1: none */
    struct event_handler *channel_handler;
    struct log_limit log_channel;
    uint64_t channel_requests; /* [io] requests the back-ends sent on it */
    /* The back-end said its configuration space changed (CONFIG_CHANGE_MSG): the device type
     * reads it again and gives the driver a configuration interrupt; 0, or -1 with why.
     * NULL: the configuration is ember's, the request is refused. [io] */
    int (*config_changed)(struct vhost_user_dev *v);
    /* Server mode (listener.fd >= 0): ember listens on socket and the back-end connects; one
     * that went away is waited for on the listener (reconnect_ms as in client mode), and
     * while one is served, further connections are refused. */
    struct vhost_user_listener listener;
    struct event_handler *listen_handler;
    struct log_limit log_refused;
    /* Features the device type serves itself (net: MAC, STATUS from its configuration
     * space): offered to the driver, never sent to the back-end. */
    uint64_t emulated_features;
};

/* Connects to the back-end at socket, negotiates the protocol features of `wanted` it has,
 * and requires VIRTIO_F_VERSION_1 and shared guest memory; -1 with why. Call
 * vhost_user_dev_destroy afterwards in any case. */
int vhost_user_dev_connect(struct vhost_user_dev *v, const char *name, const char *socket,
                           const struct guest_memory *mem, uint64_t wanted_protocol);
/* Server mode: listens on socket (a stale socket file replaced) and waits at most wait_ms
 * for the back-end to connect, then as vhost_user_dev_connect; -1 with why. The socket file
 * is removed by vhost_user_dev_destroy. */
int vhost_user_dev_listen(struct vhost_user_dev *v, const char *name, const char *socket,
                          const struct guest_memory *mem, uint64_t wanted_protocol,
                          unsigned wait_ms);
/* Sets the reconnection time (seconds, 0: never), before the device starts. */
void vhost_user_dev_set_reconnect(struct vhost_user_dev *v, unsigned seconds);
/* Requests on queue q the driver made available and nobody answered (avail - used). [io] */
unsigned vhost_user_dev_outstanding(const struct vhost_user_dev *v, unsigned q);
/* The virtio device itself, offering `offered` (already the back-end's features that the
 * type passes on) with nqueues queues (at most VHOST_USER_DEV_MAX_QUEUES). */
int vhost_user_dev_init(struct vhost_user_dev *v, const char *name, uint32_t device_id,
                        uint64_t offered, unsigned nqueues, uint16_t queue_size,
                        uint32_t config_size,
                        void (*read_config)(struct virtio_dev *d, uint32_t offset, void *data,
                                            uint32_t len),
                        void *model, const struct guest_memory *mem);
void vhost_user_dev_destroy(struct vhost_user_dev *v);

#endif
