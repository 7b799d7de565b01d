/* libFuzzer target: virtio-vsock's handling of guest packets. Each input
 * is a series of packets the guest transmits (header and payload bytes
 * from the input, a few header fields optionally forced to valid values so
 * that connections get made); the device answers into receive buffers and
 * talks to real unix sockets. Guest memory is malloc'd so that
 * AddressSanitizer sees any access outside it. The descriptor rings stay
 * valid: fuzz_virtq covers the ring walker.
 *
 * Record: flags (1 byte), length (2 bytes), then that many packet bytes.
 * flags: 1 split header and payload into two descriptors, 2 src_cid = the
 * guest's, 4 dst_cid = host, 8 type = stream, 16 len = payload length,
 * 32 ports small (1 or 2, where host listeners wait). */
#include "arch/x86/layout.h"
#include "backends/uds.h"
#include "util/log.h"
#include "virtio/vsock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MEM_SIZE  (8u << 20)
#define QSIZE     64
#define RX_BUFS   32
#define RX_DATA   0x100000u
#define TX_DATA   0x200000u
#define TX_SLOT   0x10100u
#define GUEST_CID 3

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *ram;
static struct guest_memory mem;
static struct virtio_vsock vs;
static int listeners[2];
static char path[128];

static void no_irq(struct virtio_dev *d, unsigned q)
{
    (void)d;
    (void)q;
}

static void no_config_irq(struct virtio_dev *d)
{
    (void)d;
}

static const struct virtio_transport_ops transport = {no_irq, no_config_irq, NULL};

static uint64_t desc_of(unsigned q)
{
    return 0x10000u + 0x4000u * q;
}

static struct virtq_desc *desc(unsigned q, unsigned i)
{
    return (struct virtq_desc *)(ram + desc_of(q) + 16 * i);
}

static struct virtq_avail *avail(unsigned q)
{
    return (struct virtq_avail *)(ram + desc_of(q) + 0x1000);
}

static struct virtq_used *used(unsigned q)
{
    return (struct virtq_used *)(ram + desc_of(q) + 0x2000);
}

static char dir[] = "/tmp/ember-fuzz-vsock-XXXXXX";

/* The sockets and their directory go when the fuzzer exits. */
static void cleanup(void)
{
    char p[160];
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s_%d", path, i + 1);
        unlink(p);
    }
    unlink(path);
    rmdir(dir);
}

static void init_once(void)
{
    ram = calloc(1, MEM_SIZE);
    guest_memory_layout(&mem, ram, MEM_SIZE, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END);
    log_open("/dev/null");
    if (!mkdtemp(dir))
        abort();
    atexit(cleanup);
    snprintf(path, sizeof(path), "%s/v.sock", dir);
    if (virtio_vsock_init(&vs, GUEST_CID, path, &mem) < 0)
        abort();
    vs.dev.transport = &transport;
    for (int i = 0; i < 2; i++) {
        char p[160];
        snprintf(p, sizeof(p), "%s_%d", path, i + 1);
        listeners[i] = uds_listen(p);
    }
}

static void start_device(void)
{
    struct virtio_dev *d = &vs.dev;
    memset(ram + 0x10000, 0, 0x10000);
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    /* A split-ring driver: everything offered but packed rings. */
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < 3; q++) {
        d->queues[q].cfg = (struct virtq_config){.size = QSIZE,
                                                 .desc_gpa = desc_of(q),
                                                 .avail_gpa = desc_of(q) + 0x1000,
                                                 .used_gpa = desc_of(q) + 0x2000};
        d->queues[q].enabled = true;
    }
    for (unsigned i = 0; i < RX_BUFS; i++) {
        *desc(0, i) = (struct virtq_desc){RX_DATA + 0x1100u * i, 0x1100, VIRTQ_DESC_F_WRITE, 0};
        avail(0)->ring[i] = (uint16_t)i;
    }
    avail(0)->idx = RX_BUFS;
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
}

static void stop_device(void)
{
    pthread_mutex_lock(&vs.dev.lock);
    virtio_dev_set_status(&vs.dev, 0);
    pthread_mutex_unlock(&vs.dev.lock);
    /* Connections the device made wait in the backlogs: clear them. */
    for (int i = 0; i < 2; i++) {
        int fd;
        while (listeners[i] >= 0 && (fd = uds_accept(listeners[i])) >= 0)
            close(fd);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ram)
        init_once();
    start_device();
    uint16_t n = 0;
    while (size >= 3 && n < QSIZE / 2) {
        uint8_t flags = data[0];
        size_t len = (size_t)(data[1] | data[2] << 8);
        data += 3;
        size -= 3;
        if (len > size)
            len = size;
        if (len > TX_SLOT)
            len = TX_SLOT;
        uint8_t *pkt = ram + TX_DATA + TX_SLOT * n;
        memset(pkt, 0, VSOCK_HDR_LEN);
        memcpy(pkt, data, len);
        data += len;
        size -= len;
        if (len < VSOCK_HDR_LEN && (flags & 0x3e))
            len = VSOCK_HDR_LEN; /* room for the forced fields */
        struct vsock_hdr h;
        memcpy(&h, pkt, sizeof(h));
        if (flags & 2)
            h.src_cid = GUEST_CID;
        if (flags & 4)
            h.dst_cid = VSOCK_HOST_CID;
        if (flags & 8)
            h.type = VSOCK_TYPE_STREAM;
        if ((flags & 16) && len >= VSOCK_HDR_LEN)
            h.len = (uint32_t)(len - VSOCK_HDR_LEN);
        if (flags & 32) {
            h.src_port %= 4;
            h.dst_port = 1 + h.dst_port % 2;
        }
        if (len >= VSOCK_HDR_LEN)
            memcpy(pkt, &h, sizeof(h));
        uint64_t gpa = TX_DATA + TX_SLOT * n;
        uint16_t d0 = (uint16_t)(2 * n);
        if ((flags & 1) && len > VSOCK_HDR_LEN) {
            *desc(1, d0) =
                (struct virtq_desc){gpa, VSOCK_HDR_LEN, VIRTQ_DESC_F_NEXT, (uint16_t)(d0 + 1)};
            *desc(1, d0 + 1u) =
                (struct virtq_desc){gpa + VSOCK_HDR_LEN, (uint32_t)(len - VSOCK_HDR_LEN), 0, 0};
        } else {
            *desc(1, d0) = (struct virtq_desc){gpa, (uint32_t)len, 0, 0};
        }
        avail(1)->ring[n % QSIZE] = d0;
        n++;
    }
    __atomic_store_n(&avail(1)->idx, n, __ATOMIC_RELEASE);
    virtio_dev_kick(&vs.dev, 1);
    /* Every packet comes back: none is ever held. */
    for (long spin = 0; __atomic_load_n(&used(1)->idx, __ATOMIC_ACQUIRE) != n; spin++) {
        if (spin > 2000000)
            abort();
        usleep(1);
    }
    stop_device();
    return 0;
}
