/* virtio-blk requests (virtio 1.2, 5.2) on top of lib/virtio.h. */
#ifndef GUEST_VBLK_H
#define GUEST_VBLK_H

#include "virtio.h"

#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WRITE_ZEROES_UNMAP 1

/* Configuration space offsets. */
#define VIRTIO_BLK_CFG_CAPACITY         0
#define VIRTIO_BLK_CFG_SEG_MAX          12
#define VIRTIO_BLK_CFG_BLK_SIZE         20
#define VIRTIO_BLK_CFG_NUM_QUEUES       34
#define VIRTIO_BLK_CFG_MAX_DISCARD      36
#define VIRTIO_BLK_CFG_MAX_WRITE_ZEROES 48

#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR_SIZE         512

/* The driver's part of one request: header, discard/zeroes segment, status byte. */
struct vblk_req {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
    uint64_t seg_sector; /* discard and write-zeroes: one segment */
    uint32_t seg_sectors;
    uint32_t seg_flags;
    uint8_t status;
    uint8_t pad[7];
};

/*
 * Queues one request: data of len bytes at `data` (device-written for IN and GET_ID), split
 * into buffers of at most `seg` bytes (0: one buffer). Discard and write-zeroes take their
 * range from sector and len, and their flags from r->seg_flags as the caller left them.
 * Returns the head or -1 when the queue is full.
 */
int vblk_submit(struct virtq *q, struct vblk_req *r, uint32_t type, uint64_t sector, void *data,
                uint32_t len, uint32_t seg);
/* One request, waited for: its status, or -1 on timeout. */
int vblk_sync(struct virtq *q, uint32_t type, uint64_t sector, void *data, uint32_t len,
              uint32_t seg);

#endif
