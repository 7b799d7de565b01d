/*
 * virtio-net (virtio 1.2, 5.1) on top of lib/virtio.h: the 12-byte header, the MAC and link
 * status from the configuration space, receive buffers (mergeable, or one chain per frame with
 * the header in a descriptor of its own or not) and transmission of raw Ethernet frames.
 *
 * The queue functions (vnet_send, vnet_recv, ...) also run at CPL3, as the virtq_* ones do;
 * vnet_open and vnet_link_up touch the device and run at CPL0.
 */
#ifndef GUEST_VNET_H
#define GUEST_VNET_H

#include "virtio.h"

#define VIRTIO_ID_NET 1

/* Feature bits (5.1.3). */
#define VIRTIO_NET_F_CSUM       0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_MTU        3
#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_HOST_TSO4  11
#define VIRTIO_NET_F_HOST_TSO6  12
#define VIRTIO_NET_F_HOST_UFO   14
#define VIRTIO_NET_F_MRG_RXBUF  15
#define VIRTIO_NET_F_STATUS     16

#define VIRTIO_NET_S_LINK_UP 1

/* Configuration space offsets. */
#define VNET_CFG_MAC    0
#define VNET_CFG_STATUS 6

#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_GSO_NONE     0
#define VIRTIO_NET_HDR_GSO_TCPV4    1
#define VIRTIO_NET_HDR_GSO_UDP      3

#define VNET_RXQ 0
#define VNET_TXQ 1

/* struct virtio_net_hdr_v1: every VERSION_1 device uses all 12 bytes. */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
#define VNET_HDR_LEN 12

#define VNET_TX_SLOT 2048 /* bytes per transmit buffer: a header and a 1514-byte frame fit */

struct vnet_options {
    uint64_t features;    /* wanted besides VERSION_1 (those the device offers are taken) */
    bool rx_interrupts;   /* used-buffer interrupts on the receive queue (waits at CPL0) */
    uint32_t rx_buf_size; /* bytes per receive buffer (0: 2048); the header counts unless
                             rx_split */
    bool rx_split;        /* header and frame in two descriptors, apart in memory */
    uint16_t queue_size;  /* 0: the device's maximum, at most VIRTQ_MAX_SIZE */
};

struct vnet {
    struct virtio_device *dev;
    struct virtq *rxq, *txq;
    uint8_t mac[6];
    bool mergeable, rx_split;
    uint32_t rx_buf_size;
    unsigned rx_bufs;
    uint8_t *rx_mem;   /* rx_bufs buffers of rx_buf_size */
    uint8_t *rx_hdrs;  /* with rx_split: a header per buffer, 16 bytes apart */
    uint8_t *tx_mem;   /* tx_slots slots of VNET_TX_SLOT */
    uint16_t *tx_free; /* stack of free slots */
    unsigned tx_slots, tx_nfree;
    uint16_t last_num_buffers; /* of the last frame received */
    uint64_t rx_frames, rx_merged, tx_frames;
    uint64_t tx_completed; /* frames of the slots that the device has used */
};

/* Resets the device, negotiates VERSION_1 plus what o->features asks and the device offers,
 * sets up both queues, goes live and posts every receive buffer. The MAC is read when
 * negotiated. False, with a diagnostic, on failure. */
bool vnet_open(struct vnet *n, struct virtio_device *d, const struct vnet_options *o);
/* Link status (VIRTIO_NET_F_STATUS; up when not negotiated, as the specification says). */
bool vnet_link_up(struct vnet *n);

/* Queues one frame (copied into a transmit slot after the header; hdr NULL: all zero) without
 * kicking; -1 when no slot is free even after reclaiming. */
int vnet_queue_tx(struct vnet *n, const struct virtio_net_hdr *hdr, const void *frame,
                  uint32_t len);
/* vnet_queue_tx and a kick (if the device asks for one). */
int vnet_send(struct vnet *n, const struct virtio_net_hdr *hdr, const void *frame, uint32_t len);
/* Takes back the transmit buffers the device has used; returns how many. */
unsigned vnet_tx_reclaim(struct vnet *n);
/* Waits until the device has used every transmit buffer. */
bool vnet_tx_drain(struct vnet *n, uint64_t timeout_us);

/* The next received frame, if any: copies up to size bytes of it into buf (buf may be NULL),
 * stores its header in *hdr (may be NULL), gives the buffers back to the device and returns
 * the frame's length (without the header); -1 when none is there; -2 when the device broke a
 * rule (a used length beyond the buffer, num_buffers out of range), with a diagnostic. */
int32_t vnet_recv(struct vnet *n, void *buf, uint32_t size, struct virtio_net_hdr *hdr);
/* vnet_recv, waiting up to timeout_us (with an interrupt when the queue asked for them). */
int32_t vnet_recv_wait(struct vnet *n, void *buf, uint32_t size, struct virtio_net_hdr *hdr,
                       uint64_t timeout_us);
/* The next received frame before time_us() reaches deadline_us, copied into buf (size bytes),
 * with the transmit buffers the device has used meanwhile taken back: its length; -1 when none
 * came in time; -2 when the device broke a rule or the frame is longer than size (with a
 * diagnostic). For loops that wait for one frame among others. */
int32_t vnet_recv_until(struct vnet *n, void *buf, uint32_t size, struct virtio_net_hdr *hdr,
                        uint64_t deadline_us);
/* Whether the MAC address read from the configuration space is want (with a diagnostic). */
bool vnet_mac_is(const struct vnet *n, const uint8_t want[6]);

/* Frame lengths that the echo checks send: the shortest and longest Ethernet frames and those
 * around the edges of 512-byte and 1 KiB receive buffers once the 12-byte header is counted. */
#define VNET_CHECK_SIZES 18
extern const uint16_t vnet_check_sizes[VNET_CHECK_SIZES];

/* If frame f (len bytes, as vnet_recv returned it) is an ARP request for ip, sends the reply
 * from n's MAC address and returns true. */
bool vnet_answer_arp(struct vnet *n, uint32_t ip, const uint8_t *f, int32_t len);

#endif
