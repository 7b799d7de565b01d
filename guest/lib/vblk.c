/* virtio-blk requests: header (device-readable), data, status byte (device-writable). */
#include "vblk.h"

#include "io.h"

#define VBLK_MAX_BUFS   (VIRTQ_INDIRECT_MAX)
#define VBLK_TIMEOUT_US 5000000

int vblk_submit(struct virtq *q, struct vblk_req *r, uint32_t type, uint64_t sector, void *data,
                uint32_t len, uint32_t seg)
{
    struct vbuf bufs[VBLK_MAX_BUFS];
    unsigned n = 0;
    r->type = type;
    r->reserved = 0;
    r->sector = sector;
    r->status = 0xff;
    bufs[n++] = (struct vbuf){(uint64_t)r, 16, false};
    if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES) {
        r->sector = 0;
        r->seg_sector = sector;
        r->seg_sectors = len / SECTOR_SIZE;
        bufs[n++] = (struct vbuf){(uint64_t)&r->seg_sector, 16, false};
    } else if (len) {
        bool write = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
        uint32_t step = seg ? seg : len;
        for (uint32_t off = 0; off < len; off += step) {
            if (n == VBLK_MAX_BUFS - 1)
                bail_out("vblk: a %u-byte request in %u-byte buffers needs too many", len, seg);
            uint32_t part = len - off < step ? len - off : step;
            bufs[n++] = (struct vbuf){(uint64_t)data + off, part, write};
        }
    }
    bufs[n++] = (struct vbuf){(uint64_t)&r->status, 1, true};
    return virtq_add(q, bufs, n, r);
}

int vblk_sync(struct virtq *q, uint32_t type, uint64_t sector, void *data, uint32_t len,
              uint32_t seg)
{
    static struct vblk_req req;
    req.seg_flags = 0;
    if (vblk_submit(q, &req, type, sector, data, len, seg) < 0)
        return -1;
    virtq_kick(q);
    if (!virtq_wait(q, VBLK_TIMEOUT_US)) {
        diag("vblk: request type %u at sector %lu: no completion within %u ms", type, sector,
             VBLK_TIMEOUT_US / 1000);
        return -1;
    }
    uint32_t written;
    if (virtq_get(q, &written) != &req)
        bail_out("vblk: a completion for another request");
    return READ_ONCE(req.status);
}
