/* The vhost-user wire format (front-end side), private to src/vhost_user/ and its tests. */
#ifndef EMBER_VHOST_USER_PROTO_H
#define EMBER_VHOST_USER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
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
    VHU_SET_BACKEND_REQ_FD = 21,
    VHU_GET_CONFIG = 24,
    VHU_SET_CONFIG = 25,
    VHU_GET_INFLIGHT_FD = 31,
    VHU_SET_INFLIGHT_FD = 32,
    VHU_GET_MAX_MEM_SLOTS = 36,
    VHU_ADD_MEM_REG = 37,
};

/* What a back-end may ask on its request channel (PROTOCOL_F_BACKEND_REQ). */
enum vhu_backend_request {
    VHU_BACKEND_IOTLB_MSG = 1,
    VHU_BACKEND_CONFIG_CHANGE_MSG = 2,
    VHU_BACKEND_VRING_HOST_NOTIFIER_MSG = 3,
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

/* ADD_MEM_REG: one region, its memfd attached. */
struct vhu_mem_region_msg {
    uint64_t padding;
    struct vhu_mem_region region;
};

/* The most memory slots a back-end may claim (GET_MAX_MEM_SLOTS): KVM's user memory slots on
 * x86 (KVM_USER_MEM_SLOTS, 32764). No guest has more RAM regions than KVM has slots, so a
 * larger number counts nothing and is taken as a broken reply (Debian 12's qemu-storage-daemon
 * and virtiofsd, libvhost-user, say 32; QEMU as a front-end uses at most 512). */
#define VHU_MAX_MEM_SLOTS_LIMIT 32764u

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

/* The largest payload of a request on the back-end's channel ember reads (the largest the
 * protocol defines, an IOTLB message or a vring area, is 32 bytes); a larger one is a broken
 * channel. */
#define VHU_BACKEND_MAX_PAYLOAD 256u

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
/* GET_MAX_MEM_SLOTS' answer: 1 to VHU_MAX_MEM_SLOTS_LIMIT, and room for `needed` regions. */
int vhu_check_max_mem_slots(uint64_t slots, unsigned needed);
/* The back-end's request at the start of buf (len bytes read so far): 0 when its header or
 * payload is not all there yet, else the message's length (header and payload) with *h its
 * header; -1 with why for a message that breaks the channel (another version, the reply
 * flag, unknown flags, a payload over VHU_BACKEND_MAX_PAYLOAD). */
int vhu_parse_backend_request(const uint8_t *buf, size_t len, struct vhu_header *h);
const char *vhu_request_name(uint32_t request);

#endif
