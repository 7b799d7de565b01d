/* The vhost-user wire format (front-end side), private to src/vhost_user/ and its tests. */
#ifndef EMBER_VHOST_USER_PROTO_H
#define EMBER_VHOST_USER_PROTO_H

#include <stdbool.h>
#include <stdint.h>

enum vhu_request {
    VHU_GET_FEATURES = 1,
    VHU_SET_FEATURES = 2,
    VHU_SET_OWNER = 3,
    VHU_SET_MEM_TABLE = 5,
    VHU_SET_VRING_NUM = 8,
    VHU_SET_VRING_ADDR = 9,
    VHU_SET_VRING_BASE = 10,
    VHU_GET_VRING_BASE = 11,
    VHU_SET_VRING_KICK = 12,
    VHU_SET_VRING_CALL = 13,
    VHU_GET_PROTOCOL_FEATURES = 15,
    VHU_SET_PROTOCOL_FEATURES = 16,
    VHU_GET_QUEUE_NUM = 17,
    VHU_SET_VRING_ENABLE = 18,
    VHU_GET_CONFIG = 24,
    VHU_SET_CONFIG = 25,
    VHU_GET_INFLIGHT_FD = 31,
    VHU_SET_INFLIGHT_FD = 32,
};

#define VHU_VERSION       0x1u
#define VHU_VERSION_MASK  0x3u
#define VHU_FLAG_REPLY    0x4u
#define VHU_FLAG_NEED_ACK 0x8u

/* SET_VRING_KICK/CALL: the ring in bits 0-7; bit 8: no descriptor attached. */
#define VHU_VRING_INDEX_MASK 0xffu
#define VHU_VRING_NOFD       0x100u

/* The memory table of SET_MEM_TABLE holds at most this many regions. */
#define VHU_MAX_MEM_REGIONS 8
/* Descriptors the front-end accepts in one receive (all closed: no reply carries one). */
#define VHU_MAX_FDS 8

struct vhu_header {
    uint32_t request;
    uint32_t flags;
    uint32_t size; /* of the payload that follows */
} __attribute__((packed));

struct vhu_vring_state {
    uint32_t index;
    uint32_t num;
};

struct vhu_vring_addr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc, used, avail, log;
};

struct vhu_mem_region {
    uint64_t guest_addr, size, user_addr, mmap_offset;
};

struct vhu_mem_table {
    uint32_t nregions;
    uint32_t padding;
    struct vhu_mem_region regions[VHU_MAX_MEM_REGIONS];
};

struct vhu_config {
    uint32_t offset, size, flags;
    uint8_t payload[256];
};
#define VHU_CONFIG_HEADER 12u

/* GET_INFLIGHT_FD / SET_INFLIGHT_FD: the shared buffer where the back-end records the
 * requests it took, so that a restarted back-end can submit them again. */
struct vhu_inflight {
    uint64_t mmap_size, mmap_offset;
    uint16_t num_queues, queue_size;
} __attribute__((packed));

/* The largest inflight buffer ember accepts: a split ring's record is 16 bytes per descriptor
 * plus a header, so 17 queues of 32768 descriptors stay far below. */
#define VHU_INFLIGHT_MAX (64ull << 20)

/* The largest payload of any reply the front-end reads. */
#define VHU_MAX_REPLY_PAYLOAD ((uint32_t)sizeof(struct vhu_config))

/* Whether h is the reply to `request` with a payload of exactly `size` bytes; -1 with a
 * message saying what is wrong. */
int vhu_check_reply_header(const struct vhu_header *h, uint32_t request, uint32_t size);
/* A GET_CONFIG reply for [offset, offset + len): the back-end's answer echoes both. */
int vhu_check_config_reply(const struct vhu_config *c, uint32_t offset, uint32_t len);
/* A GET_VRING_BASE reply for ring index: the ring's number echoed, a 16-bit position. */
int vhu_check_vring_base_reply(const struct vhu_vring_state *s, unsigned index);
/* An acknowledgement: 0 success, anything else the back-end's failure. */
int vhu_check_ack(uint64_t ack, uint32_t request);
/* A GET_INFLIGHT_FD reply: a size within (0, VHU_INFLIGHT_MAX], a page-aligned offset; the
 * descriptor's file holds [offset, offset + size) (file_size: its size). */
int vhu_check_inflight_reply(const struct vhu_inflight *in, int nfds, uint64_t file_size);
const char *vhu_request_name(uint32_t request);

#endif
