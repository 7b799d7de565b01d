/* The device models' snapshot hooks without KVM: a device is put in a state with requests
 * handled, frozen and saved (common state and the model's), the guest memory copied as the
 * memory file would hold it; a new device made the same way is restored from both and
 * resumed, and must serve the next request from the right ring position. */
#include "snapshot/format.h"
#include "suites.h"
#include "util/error.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/net.h"
#include "virtio/pmem.h"
#include "virtio/rng.h"
#include "virtio/vsock.h"
#include "virtq_fake.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define QSIZE 16
#define DATA  0x100000ULL /* per request slot k: DATA + 0x2000 * k */

static struct guest_memory mem;
static uint8_t *memfile; /* guest memory as saved */
static uint8_t *snap;    /* the state file */
static size_t snap_len;
static int irqs[4];

struct drv_queue {
    uint64_t desc, avail, used;
    uint16_t avail_idx;
};
static struct drv_queue dq[4];

static void notify_queue(struct virtio_dev *d, unsigned q)
{
    (void)d;
    if (q < 4)
        __atomic_add_fetch(&irqs[q], 1, __ATOMIC_SEQ_CST);
}

static void notify_config(struct virtio_dev *d)
{
    (void)d;
}

static const struct virtio_transport_ops transport = {notify_queue, notify_config, NULL};

static void *ptr(uint64_t gpa, uint64_t len)
{
    void *p = gpa_to_hva(&mem, gpa, len);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void set_desc(unsigned q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    *(struct virtq_desc *)ptr(dq[q].desc + 16ULL * i, 16) =
        (struct virtq_desc){addr, len, flags, next};
}

static struct virtq_avail *avail_of(unsigned q)
{
    return ptr(dq[q].avail, 6 + 2ULL * QSIZE);
}

static struct virtq_used *used_of(unsigned q)
{
    return ptr(dq[q].used, 6 + 8ULL * QSIZE);
}

static void publish(unsigned q, uint16_t head)
{
    struct virtq_avail *a = avail_of(q);
    a->ring[dq[q].avail_idx % QSIZE] = head;
    dq[q].avail_idx++;
    __atomic_store_n(&a->idx, dq[q].avail_idx, __ATOMIC_RELEASE);
}

static uint16_t used_idx(unsigned q)
{
    return __atomic_load_n(&used_of(q)->idx, __ATOMIC_ACQUIRE);
}

/* Waits up to ms for queue q's used index to reach idx. */
static bool wait_used(unsigned q, uint16_t idx, int ms)
{
    for (int i = 0; i < ms; i++) {
        if (used_idx(q) == idx)
            return true;
        usleep(1000);
    }
    return used_idx(q) == idx;
}

static void setup(void)
{
    ck_assert_int_eq(guest_memory_map(&mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    memfile = malloc(FAKE_MEM);
    ck_assert_ptr_nonnull(memfile);
    for (unsigned q = 0; q < 4; q++)
        dq[q] = (struct drv_queue){.desc = 0x10000 + 0x10000ULL * q,
                                   .avail = 0x14000 + 0x10000ULL * q,
                                   .used = 0x18000 + 0x10000ULL * q};
    memset(irqs, 0, sizeof(irqs));
    snap = NULL;
}

static void teardown(void)
{
    free(snap);
    free(memfile);
    guest_memory_free(&mem);
}

/* A split-ring driver sets the device up with its first nq queues. */
static void driver_start(struct virtio_dev *d, unsigned nq)
{
    d->transport = &transport;
    pthread_mutex_lock(&d->lock);
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_dev_set_driver_features(d, 0, virtio_dev_host_features(d, 0));
    virtio_dev_set_driver_features(
        d, 1, virtio_dev_host_features(d, 1) & ~(1u << (VIRTIO_F_RING_PACKED - 32)));
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < nq; q++) {
        d->queues[q].cfg = (struct virtq_config){.size = QSIZE,
                                                 .desc_gpa = dq[q].desc,
                                                 .avail_gpa = dq[q].avail,
                                                 .used_gpa = dq[q].used};
        d->queues[q].enabled = true;
    }
    virtio_dev_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    pthread_mutex_unlock(&d->lock);
    ck_assert(d->active);
}

/* ---- snapshots ------------------------------------------------------------ */

/* Freezes d and saves it into the state file, guest memory into the memory file. d stays
 * frozen (its iothread held) for the caller to look at; thaw it with virtio_dev_thaw. */
static void take(struct virtio_dev *d)
{
    ck_assert_int_eq(virtio_dev_freeze(d), 0);
    struct snapshot_writer *w = snapshot_writer_new();
    ck_assert_ptr_nonnull(w);
    snapshot_begin_section(w, "device");
    virtio_dev_save(d, w);
    free(snap);
    ck_assert_msg(snapshot_writer_finish(w, &snap, &snap_len) == 0, "%s", error_get());
    snapshot_writer_free(w);
    memcpy(memfile, ptr(0, FAKE_MEM), FAKE_MEM);
}

/* The saved guest memory back in place, and the driver's view of its avail rings with it. */
static void restore_memory(void)
{
    memcpy(ptr(0, FAKE_MEM), memfile, FAKE_MEM);
    for (unsigned q = 0; q < 4; q++)
        dq[q].avail_idx = avail_of(q)->idx;
}

/* Restores a device made from the same configuration and resumes it: 0, or -1 with
 * error_get() saying why it was refused. */
static int restore_device(struct virtio_dev *d)
{
    struct snapshot_reader *r = snapshot_reader_open(snap, snap_len, SNAPSHOT_FILE_MAX);
    ck_assert_msg(r != NULL, "%s", error_get());
    struct snapshot_cursor c;
    ck_assert_int_eq(snapshot_section(r, "device", &c), 0);
    d->transport = &transport;
    int ret = virtio_dev_restore(d, &c);
    if (ret == 0)
        ck_assert_msg(snapshot_section_end(&c) == 0, "%s", error_get());
    snapshot_reader_free(r);
    return ret == 0 ? virtio_dev_resume_restored(d) : -1;
}

/* Rewrites the state file with one field of the device's section changed to v: field
 * from_end counted from the section's last (0). Integer fields only. */
static void patch_field(unsigned from_end, uint64_t v)
{
    struct snapshot_reader *r = snapshot_reader_open(snap, snap_len, SNAPSHOT_FILE_MAX);
    ck_assert_ptr_nonnull(r);
    struct snapshot_cursor c;
    ck_assert_int_eq(snapshot_section(r, "device", &c), 0);
    size_t offsets[512], n = 0;
    for (size_t pos = 0; pos < c.len; n++) {
        ck_assert_uint_lt(n, 512);
        offsets[n] = pos;
        uint8_t type = c.data[pos++];
        static const size_t size[] = {0, 1, 2, 4, 8};
        if (type >= 1 && type <= 4) {
            pos += size[type];
        } else {
            ck_assert_uint_eq(type, SNAPSHOT_FIELD_BYTES);
            uint32_t len;
            memcpy(&len, c.data + pos, 4);
            pos += 4 + len;
        }
    }
    ck_assert_uint_gt(n, from_end);
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_begin_section(w, "device");
    for (size_t i = 0; i < n; i++) {
        const uint8_t *f = c.data + offsets[i];
        uint64_t x = 0;
        bool mine = i == n - 1 - from_end;
        switch (f[0]) {
        case SNAPSHOT_FIELD_U8:
            snapshot_put_u8(w, mine ? (uint8_t)v : f[1]);
            break;
        case SNAPSHOT_FIELD_U16:
            memcpy(&x, f + 1, 2);
            snapshot_put_u16(w, (uint16_t)(mine ? v : x));
            break;
        case SNAPSHOT_FIELD_U32:
            memcpy(&x, f + 1, 4);
            snapshot_put_u32(w, (uint32_t)(mine ? v : x));
            break;
        case SNAPSHOT_FIELD_U64:
            memcpy(&x, f + 1, 8);
            snapshot_put_u64(w, mine ? v : x);
            break;
        default: {
            ck_assert(!mine);
            uint32_t len;
            memcpy(&len, f + 1, 4);
            snapshot_put_bytes(w, f + 5, len);
        }
        }
    }
    snapshot_reader_free(r);
    free(snap);
    ck_assert_int_eq(snapshot_writer_finish(w, &snap, &snap_len), 0);
    snapshot_writer_free(w);
}

static void assert_refused(const char *what)
{
    ck_assert_msg(strstr(error_get(), what) != NULL, "'%s' not in '%s'", what, error_get());
}

/* The queue's saved positions: everything taken was answered. */
static void assert_settled(struct virtio_dev *d, unsigned q, uint16_t at)
{
    struct virtq_position p;
    virtq_get_position(&d->queues[q].vq, &p);
    ck_assert_uint_eq(p.next_avail, at);
    ck_assert_uint_eq(p.next_used, at);
}

/* ---- virtio-blk ------------------------------------------------------------ */

static char image[64];

static void make_image(void)
{
    snprintf(image, sizeof(image), "/tmp/ember-snapdev-XXXXXX");
    int fd = mkstemp(image);
    ck_assert_int_ge(fd, 0);
    uint8_t sector[512];
    for (unsigned s = 0; s < 64; s++) {
        memset(sector, (int)(s + 1), sizeof(sector));
        ck_assert_int_eq(write(fd, sector, sizeof(sector)), (ssize_t)sizeof(sector));
    }
    close(fd);
}

static void blk_make(struct virtio_blk *b, const struct rate_limit_config *rl)
{
    struct blk_options o = {.path = image, .queues = 1, .engine = BLK_ENGINE_URING};
    if (rl)
        o.rate_limit = *rl;
    ck_assert_msg(virtio_blk_init(b, "blk0", &o, &mem) == 0, "%s", error_get());
}

/* Request slot k (descriptors 3k..3k+2): a one-sector read of `sector`. */
static void blk_publish_read(unsigned k, uint64_t sector)
{
    uint64_t base = DATA + 0x2000ULL * k;
    uint32_t hdr[4] = {0 /* IN */, 0, (uint32_t)sector, 0};
    memcpy(ptr(base, 16), hdr, 16);
    *(uint8_t *)ptr(base + 0x10, 1) = 0xee;
    memset(ptr(base + 0x1000, 512), 0, 512);
    uint16_t d = (uint16_t)(3 * k);
    set_desc(0, d, base, 16, VIRTQ_DESC_F_NEXT, (uint16_t)(d + 1));
    set_desc(0, (uint16_t)(d + 1), base + 0x1000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
             (uint16_t)(d + 2));
    set_desc(0, (uint16_t)(d + 2), base + 0x10, 1, VIRTQ_DESC_F_WRITE, 0);
    publish(0, d);
}

/* Slot k's read came back whole: status OK and the sector's bytes. */
static void blk_assert_read(unsigned k, uint64_t sector)
{
    uint64_t base = DATA + 0x2000ULL * k;
    ck_assert_uint_eq(*(uint8_t *)ptr(base + 0x10, 1), 0);
    const uint8_t *data = ptr(base + 0x1000, 512);
    for (unsigned i = 0; i < 512; i++)
        ck_assert_uint_eq(data[i], sector + 1);
}

START_TEST(blk_restored_serves_the_next_request)
{
    make_image();
    struct virtio_blk a, b;
    blk_make(&a, NULL);
    driver_start(&a.dev, 1);
    for (unsigned k = 0; k < 3; k++) {
        blk_publish_read(k, k);
        virtio_dev_kick(&a.dev, 0);
        ck_assert(wait_used(0, (uint16_t)(k + 1), 2000));
        blk_assert_read(k, k);
    }
    take(&a.dev);
    assert_settled(&a.dev, 0, 3);
    virtio_dev_thaw(&a.dev);
    virtio_blk_destroy(&a);

    restore_memory();
    /* The used entries of the three answered requests must stay as they are. */
    for (unsigned i = 0; i < 3; i++)
        used_of(0)->ring[i] = (struct virtq_used_elem){0xdead, 0xbeef};
    blk_publish_read(3, 9); /* placed after the snapshot */
    blk_make(&b, NULL);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    ck_assert(b.dev.active);
    ck_assert(wait_used(0, 4, 2000));
    blk_assert_read(3, 9);
    ck_assert_uint_eq(used_of(0)->ring[3].id, 9);
    ck_assert_uint_eq(used_of(0)->ring[3].len, 513);
    for (unsigned i = 0; i < 3; i++)
        ck_assert_uint_eq(used_of(0)->ring[i].id, 0xdead);
    ck_assert_uint_eq(b.reads, 1);
    /* And on from there, kicked as usual. */
    blk_publish_read(4, 10);
    virtio_dev_kick(&b.dev, 0);
    ck_assert(wait_used(0, 5, 2000));
    blk_assert_read(4, 10);
    virtio_blk_destroy(&b);
    unlink(image);
}
END_TEST

/* A request held back by the rate limiter when the snapshot is taken goes back to the ring,
 * and the restored device's limiter goes on from the saved budget: the request waits for
 * the next token instead of being served from a refilled bucket. */
START_TEST(blk_held_request_and_budget)
{
    make_image();
    /* A bucket of 4 operations, refilled with one a second: the fifth request waits. */
    struct rate_limit_config rl = {.ops = {.size = 4, .refill_ms = 4000}};
    struct virtio_blk a, b;
    blk_make(&a, &rl);
    driver_start(&a.dev, 1);
    for (unsigned k = 0; k < 5; k++)
        blk_publish_read(k, k);
    virtio_dev_kick(&a.dev, 0);
    ck_assert(wait_used(0, 4, 2000));
    for (int i = 0; i < 2000 && !__atomic_load_n(&a.throttle_events, __ATOMIC_SEQ_CST); i++)
        usleep(1000);
    ck_assert_uint_ge(a.throttle_events, 1);
    take(&a.dev);
    assert_settled(&a.dev, 0, 4); /* the held chain went back */
    ck_assert_uint_eq(used_idx(0), 4);
    virtio_dev_thaw(&a.dev);
    virtio_blk_destroy(&a);

    restore_memory();
    blk_make(&b, &rl);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    usleep(200000);
    ck_assert_uint_eq(used_idx(0), 4); /* a refilled bucket would have served it */
    ck_assert(wait_used(0, 5, 3000));
    blk_assert_read(4, 4);
    virtio_blk_destroy(&b);

    /* Other limits than saved are refused. */
    restore_memory();
    blk_make(&b, NULL);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("blk0: operations rate limiter: a limit of 1 per second with a bucket of 4, "
                   "not the 0 per second");
    virtio_blk_destroy(&b);
    restore_memory();
    struct rate_limit_config other = {.ops = {.size = 3, .refill_ms = 1000}};
    blk_make(&b, &other);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("operations rate limiter: a limit of 1 per second with a bucket of 4, not "
                   "the 3 per second");
    virtio_blk_destroy(&b);
    /* More tokens than the bucket holds, more time than a token takes. */
    restore_memory();
    patch_field(1, 5);
    blk_make(&b, &rl);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("5 tokens in a bucket that holds at most 4");
    virtio_blk_destroy(&b);
    patch_field(1, 0);
    patch_field(0, 2000000000);
    blk_make(&b, &rl);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("towards the next token");
    virtio_blk_destroy(&b);
    unlink(image);
}
END_TEST

/* ---- virtio-net -------------------------------------------------------------- */

/* A host side the test controls: frames sent are counted, and `full` makes the host refuse
 * them (EAGAIN) as a full tap does. */
struct fake_host {
    bool full;
    unsigned sent;
    uint8_t last[128];
};

static ssize_t fake_recv(struct net_backend *be, const struct iovec *iov, int n)
{
    (void)be;
    (void)iov;
    (void)n;
    return -EAGAIN;
}

static ssize_t fake_send(struct net_backend *be, const struct iovec *iov, int n)
{
    struct fake_host *h = be->priv;
    if (__atomic_load_n(&h->full, __ATOMIC_SEQ_CST))
        return -EAGAIN;
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        size_t take = iov[i].iov_len;
        if (len < sizeof(h->last))
            memcpy(h->last + len, iov[i].iov_base,
                   take < sizeof(h->last) - len ? take : sizeof(h->last) - len);
        len += take;
    }
    __atomic_add_fetch(&h->sent, 1, __ATOMIC_SEQ_CST);
    return (ssize_t)len;
}

static void fake_close(struct net_backend *be)
{
    close(be->rx_fd);
    close(be->tx_fd);
}

static const struct net_backend_ops fake_ops = {
    .recv = fake_recv, .send = fake_send, .close = fake_close};

static void net_make(struct virtio_net *n, struct fake_host *h, const struct rate_limit_config *tx)
{
    memset(h, 0, sizeof(*h));
    struct net_backend be = {.ops = &fake_ops,
                             .kind = "fake",
                             .rx_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                             .tx_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                             .tx_wait_events = EPOLLIN,
                             .priv = h};
    struct net_options o = {.backend = &be, .vhost = VHOST_OFF};
    if (tx)
        o.tx_limit = *tx;
    ck_assert_msg(virtio_net_init(n, "net0", &o, &mem) == 0, "%s", error_get());
}

/* Transmit slot k (descriptor k): a 60-byte frame whose first byte is k, after its header. */
static void net_publish_frame(unsigned k)
{
    uint64_t base = DATA + 0x2000ULL * k;
    memset(ptr(base, VIRTIO_NET_HDR_LEN + 60), 0, VIRTIO_NET_HDR_LEN + 60);
    *(uint8_t *)ptr(base + VIRTIO_NET_HDR_LEN, 1) = (uint8_t)(0x40 + k);
    set_desc(1, (uint16_t)k, base, VIRTIO_NET_HDR_LEN + 60, 0, 0);
    publish(1, (uint16_t)k);
}

START_TEST(net_restored_sends_the_next_frame)
{
    struct virtio_net a, b;
    struct fake_host ha, hb;
    net_make(&a, &ha, NULL);
    driver_start(&a.dev, 2);
    for (unsigned k = 0; k < 3; k++) {
        net_publish_frame(k);
        virtio_dev_kick(&a.dev, 1);
        ck_assert(wait_used(1, (uint16_t)(k + 1), 2000));
    }
    ck_assert_uint_eq(ha.sent, 3);
    take(&a.dev);
    assert_settled(&a.dev, 1, 3);
    virtio_dev_thaw(&a.dev);
    virtio_net_destroy(&a);

    restore_memory();
    for (unsigned i = 0; i < 3; i++)
        used_of(1)->ring[i] = (struct virtq_used_elem){0xdead, 0xbeef};
    net_publish_frame(3);
    net_make(&b, &hb, NULL);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    ck_assert(wait_used(1, 4, 2000));
    ck_assert_uint_eq(used_of(1)->ring[3].id, 3);
    for (unsigned i = 0; i < 3; i++)
        ck_assert_uint_eq(used_of(1)->ring[i].id, 0xdead);
    ck_assert_uint_eq(__atomic_load_n(&hb.sent, __ATOMIC_SEQ_CST), 1);
    ck_assert_uint_eq(hb.last[0], 0x43); /* the frame itself, no header: not a vnet_hdr host */
    virtio_net_destroy(&b);

    /* Other transmit limits than saved are refused. */
    restore_memory();
    struct rate_limit_config tx = {.bandwidth = {.size = 1000, .refill_ms = 100}};
    net_make(&b, &hb, &tx);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("net0: transmit bandwidth rate limiter");
    virtio_net_destroy(&b);
}
END_TEST

/* Frames taken from the ring that the host has no room for are answered when the snapshot
 * is taken (dropped and counted): nothing taken stays unanswered. */
START_TEST(net_freeze_answers_frames_held_for_room)
{
    struct virtio_net a;
    struct fake_host ha;
    net_make(&a, &ha, NULL);
    driver_start(&a.dev, 2);
    __atomic_store_n(&ha.full, true, __ATOMIC_SEQ_CST);
    net_publish_frame(0);
    net_publish_frame(1);
    virtio_dev_kick(&a.dev, 1);
    for (int i = 0; i < 2000 && !__atomic_load_n(&a.tx_pushback, __ATOMIC_SEQ_CST); i++)
        usleep(1000);
    ck_assert_uint_ge(a.tx_pushback, 1);
    ck_assert_uint_eq(used_idx(1), 0);
    int before = __atomic_load_n(&irqs[1], __ATOMIC_SEQ_CST);
    take(&a.dev);
    ck_assert_uint_eq(used_idx(1), 2);
    assert_settled(&a.dev, 1, 2);
    ck_assert_uint_eq(a.tx_frozen_drops, 2);
    ck_assert_int_gt(__atomic_load_n(&irqs[1], __ATOMIC_SEQ_CST), before);
    /* Thawed, it serves again. */
    __atomic_store_n(&ha.full, false, __ATOMIC_SEQ_CST);
    virtio_dev_thaw(&a.dev);
    net_publish_frame(2);
    virtio_dev_kick(&a.dev, 1);
    ck_assert(wait_used(1, 3, 2000));
    ck_assert_uint_eq(__atomic_load_n(&ha.sent, __ATOMIC_SEQ_CST), 1);
    virtio_net_destroy(&a);
}
END_TEST

/* ---- virtio-vsock --------------------------------------------------------------- */

#define VS_RXQ 0
#define VS_TXQ 1
#define VS_EVQ 2
#define VS_CID 3
#define EV_BUF 0x300000ULL
#define RX_BUF 0x200000ULL
#define TX_BUF 0x280000ULL

static char vdir[40], vpath[64];
static unsigned vs_tx_next;

static void vs_make(struct virtio_vsock *v)
{
    ck_assert_msg(virtio_vsock_init(v, VS_CID, vpath, &mem) == 0, "%s", error_get());
}

/* Event buffer i (descriptor i of the event queue). */
static void vs_post_event_buffer(uint16_t i)
{
    memset(ptr(EV_BUF + 0x10ULL * i, 4), 0xff, 4);
    set_desc(VS_EVQ, i, EV_BUF + 0x10ULL * i, 4, VIRTQ_DESC_F_WRITE, 0);
    publish(VS_EVQ, i);
}

/* The driver gives event buffer i back and kicks only if the device asked for it, as Linux
 * does with VIRTIO_F_EVENT_IDX (vring_need_event). */
static void vs_refill_event_buffer(struct virtio_vsock *v, uint16_t i)
{
    uint16_t old = dq[VS_EVQ].avail_idx;
    vs_post_event_buffer(i);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t event = *(uint16_t *)ptr(dq[VS_EVQ].used + 4 + 8ULL * QSIZE, 2);
    uint16_t now = dq[VS_EVQ].avail_idx;
    if ((uint16_t)(now - event - 1) < (uint16_t)(now - old))
        virtio_dev_kick(&v->dev, VS_EVQ);
}

static void vs_post_rx_buffers(void)
{
    for (uint16_t i = 0; i < 8; i++) {
        set_desc(VS_RXQ, i, RX_BUF + 0x2000ULL * i, 0x2000, VIRTQ_DESC_F_WRITE, 0);
        publish(VS_RXQ, i);
    }
}

static void vs_send(struct virtio_vsock *v, uint16_t op, uint32_t src_port, uint32_t dst_port)
{
    uint16_t slot = (uint16_t)(vs_tx_next++ % QSIZE);
    struct vsock_hdr h = {.src_cid = VS_CID,
                          .dst_cid = VSOCK_HOST_CID,
                          .src_port = src_port,
                          .dst_port = dst_port,
                          .type = VSOCK_TYPE_STREAM,
                          .op = op,
                          .buf_alloc = 65536};
    memcpy(ptr(TX_BUF + 0x100ULL * slot, sizeof(h)), &h, sizeof(h));
    set_desc(VS_TXQ, slot, TX_BUF + 0x100ULL * slot, sizeof(h), 0, 0);
    publish(VS_TXQ, slot);
    virtio_dev_kick(&v->dev, VS_TXQ);
    ck_assert(wait_used(VS_TXQ, dq[VS_TXQ].avail_idx, 2000));
}

/* The packet in the receive queue's used entry i. */
static struct vsock_hdr vs_rx_packet(uint16_t i)
{
    struct vsock_hdr h;
    uint32_t head = used_of(VS_RXQ)->ring[i % QSIZE].id;
    memcpy(&h, ptr(RX_BUF + 0x2000ULL * head, sizeof(h)), sizeof(h));
    return h;
}

static int uds_listen_at(const char *p)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", p);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fd, 4), 0);
    return fd;
}

/* A host program connects to the device's socket and asks for guest port `port`. */
static int vs_host_connect(uint32_t port)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", vpath);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    char line[32];
    int n = snprintf(line, sizeof(line), "CONNECT %u\n", port);
    ck_assert_int_eq(write(fd, line, (size_t)n), n);
    return fd;
}

/* The event the driver finds in the event queue's used entry i: TRANSPORT_RESET, 4 bytes. */
static void vs_assert_reset_event(uint16_t i)
{
    struct virtq_used_elem e = used_of(VS_EVQ)->ring[i];
    ck_assert_uint_eq(e.len, 4);
    uint32_t id;
    memcpy(&id, ptr(EV_BUF + 0x10ULL * e.id, 4), 4);
    ck_assert_uint_eq(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
}

/* Nothing reaches the guest until it hands its event buffer back (its kick of the event
 * queue, which the device must have asked for); then the host program's connection request
 * does. */
static int vs_assert_gated_until_ack(struct virtio_vsock *v, uint16_t rx_before, uint16_t evbuf)
{
    int host = vs_host_connect(77);
    usleep(200000);
    ck_assert_uint_eq(used_idx(VS_RXQ), rx_before);
    vs_refill_event_buffer(v, evbuf);
    ck_assert(wait_used(VS_RXQ, (uint16_t)(rx_before + 1), 2000));
    struct vsock_hdr h = vs_rx_packet(rx_before);
    ck_assert_uint_eq(h.op, VSOCK_OP_REQUEST);
    ck_assert_uint_eq(h.dst_port, 77);
    return host; /* closed by the caller once the test is past the receive queue */
}

static void vs_setup(void)
{
    setup();
    snprintf(vdir, sizeof(vdir), "/tmp/ember-snapvs-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(vdir));
    snprintf(vpath, sizeof(vpath), "%s/v.sock", vdir);
    vs_tx_next = 0;
}

static void vs_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", vdir);
    ck_assert_int_eq(system(cmd), 0);
    teardown();
}

START_TEST(vsock_reset_on_snapshot_and_restore)
{
    struct virtio_vsock a, b;
    vs_make(&a);
    vs_post_rx_buffers();
    for (uint16_t i = 0; i < 4; i++) /* Linux keeps eight */
        vs_post_event_buffer(i);
    driver_start(&a.dev, 3);
    /* A guest connection to host port 5000, accepted by a host program. */
    char p5000[80];
    snprintf(p5000, sizeof(p5000), "%s_5000", vpath);
    int lfd = uds_listen_at(p5000);
    vs_send(&a, VSOCK_OP_REQUEST, 1000, 5000);
    ck_assert(wait_used(VS_RXQ, 1, 2000));
    ck_assert_uint_eq(vs_rx_packet(0).op, VSOCK_OP_RESPONSE);
    int host = accept(lfd, NULL, NULL);
    ck_assert_int_ge(host, 0);

    take(&a.dev);
    /* The driver is told (event queue), the host program's socket is closed. */
    ck_assert_uint_eq(used_idx(VS_EVQ), 1);
    vs_assert_reset_event(0);
    ck_assert_int_ge(__atomic_load_n(&irqs[VS_EVQ], __ATOMIC_SEQ_CST), 1);
    ck_assert_uint_eq(a.nconns, 0);
    char c;
    struct pollfd pfd = {.fd = host, .events = POLLIN};
    ck_assert_int_eq(poll(&pfd, 1, 2000), 1);
    ck_assert_int_eq(read(host, &c, 1), 0);
    close(host);
    close(lfd);
    virtio_dev_thaw(&a.dev);
    /* The VM that goes on waits for the driver's answer before it sends anything. */
    host = vs_assert_gated_until_ack(&a, 1, 0);
    virtio_vsock_destroy(&a);
    close(host);
    unlink(p5000);

    /* The restored VM: the reset is in its used ring; its interrupt comes again, and
     * nothing is sent before the driver's answer. */
    restore_memory();
    vs_make(&b);
    int before = __atomic_load_n(&irqs[VS_EVQ], __ATOMIC_SEQ_CST);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    ck_assert_int_gt(__atomic_load_n(&irqs[VS_EVQ], __ATOMIC_SEQ_CST), before);
    ck_assert_uint_eq(used_idx(VS_EVQ), 1);
    vs_assert_reset_event(0);
    ck_assert(b.reset_unacked);
    host = vs_assert_gated_until_ack(&b, 1, 0);
    /* Guest connections work again, through the restored rings. */
    lfd = uds_listen_at(p5000);
    vs_send(&b, VSOCK_OP_REQUEST, 1001, 5000);
    ck_assert(wait_used(VS_RXQ, 3, 2000));
    ck_assert_uint_eq(vs_rx_packet(2).op, VSOCK_OP_RESPONSE);
    close(lfd);
    virtio_vsock_destroy(&b);
    close(host);

    /* Values that cannot be right are refused. */
    restore_memory();
    patch_field(0, 5);
    vs_make(&b);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("next host port 5 is below");
    virtio_vsock_destroy(&b);
    patch_field(0, 1u << 30);
    patch_field(1, 2);
    vs_make(&b);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("reset flag 2");
    virtio_vsock_destroy(&b);
}
END_TEST

/* No event buffer when the snapshot is taken: the restored device sends the reset once it
 * is active again (here the buffer is in the ring by then). */
START_TEST(vsock_reset_sent_after_restore)
{
    struct virtio_vsock a, b;
    vs_make(&a);
    vs_post_rx_buffers();
    driver_start(&a.dev, 3);
    take(&a.dev);
    ck_assert_uint_eq(used_idx(VS_EVQ), 0);
    ck_assert_uint_eq(a.reset_fails, 1);
    ck_assert(!a.reset_unacked);
    virtio_dev_thaw(&a.dev);
    virtio_vsock_destroy(&a);

    restore_memory();
    vs_post_event_buffer(0);
    vs_make(&b);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    ck_assert_uint_eq(used_idx(VS_EVQ), 1);
    vs_assert_reset_event(0);
    ck_assert_int_ge(__atomic_load_n(&irqs[VS_EVQ], __ATOMIC_SEQ_CST), 1);
    ck_assert_uint_eq(b.resets_sent, 1);
    virtio_vsock_destroy(&b);
}
END_TEST

/* ---- virtio-rng, virtio-pmem, virtio-console --------------------------------------- */

/* Request slot k (descriptor k): `len` writable bytes. */
static void rng_publish(unsigned k, uint32_t len)
{
    set_desc(0, (uint16_t)k, DATA + 0x2000ULL * k, len, VIRTQ_DESC_F_WRITE, 0);
    publish(0, (uint16_t)k);
}

START_TEST(rng_held_request_goes_back)
{
    struct virtio_rng a, b;
    ck_assert_int_eq(virtio_rng_init(&a, &mem, 100, 100), 0); /* 100 bytes/s */
    driver_start(&a.dev, 1);
    rng_publish(0, 100);
    rng_publish(1, 100);
    virtio_dev_kick(&a.dev, 0);
    ck_assert(wait_used(0, 1, 2000));
    for (int i = 0; i < 2000 && !__atomic_load_n(&a.limited, __ATOMIC_SEQ_CST); i++)
        usleep(1000);
    ck_assert_uint_ge(a.limited, 1);
    take(&a.dev);
    assert_settled(&a.dev, 0, 1);
    virtio_dev_thaw(&a.dev);
    virtio_rng_destroy(&a);

    restore_memory();
    ck_assert_int_eq(virtio_rng_init(&b, &mem, 100, 100), 0);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    usleep(100000);
    ck_assert_uint_eq(used_idx(0), 1); /* the bucket was empty when saved */
    ck_assert(wait_used(0, 2, 3000));
    ck_assert_uint_eq(used_of(0)->ring[1].id, 1);
    ck_assert_uint_eq(used_of(0)->ring[1].len, 100);
    virtio_rng_destroy(&b);

    restore_memory();
    ck_assert_int_eq(virtio_rng_init(&b, &mem, 0, 0), 0);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("rng: bandwidth rate limiter");
    virtio_rng_destroy(&b);
}
END_TEST

static char pmem_file[64];

static void pmem_make(struct virtio_pmem *p, uint64_t gpa)
{
    struct pmem_options o = {.path = pmem_file};
    ck_assert_msg(virtio_pmem_init(p, "pmem0", &o, &mem) == 0, "%s", error_get());
    virtio_pmem_set_region(p, gpa);
}

/* Slot k (descriptors 2k, 2k+1): a FLUSH and its response. */
static void pmem_publish_flush(unsigned k)
{
    uint64_t base = DATA + 0x2000ULL * k;
    memset(ptr(base, 8), 0, 4);
    memset(ptr(base + 4, 4), 0xee, 4);
    uint16_t d = (uint16_t)(2 * k);
    set_desc(0, d, base, 4, VIRTQ_DESC_F_NEXT, (uint16_t)(d + 1));
    set_desc(0, (uint16_t)(d + 1), base + 4, 4, VIRTQ_DESC_F_WRITE, 0);
    publish(0, d);
}

START_TEST(pmem_restored_serves_the_next_flush)
{
    snprintf(pmem_file, sizeof(pmem_file), "/tmp/ember-snappmem-XXXXXX");
    int fd = mkstemp(pmem_file);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
    close(fd);
    struct virtio_pmem a, b;
    pmem_make(&a, 0x100000000ULL);
    driver_start(&a.dev, 1);
    for (unsigned k = 0; k < 2; k++) {
        pmem_publish_flush(k);
        virtio_dev_kick(&a.dev, 0);
        ck_assert(wait_used(0, (uint16_t)(k + 1), 2000));
    }
    take(&a.dev);
    assert_settled(&a.dev, 0, 2);
    virtio_dev_thaw(&a.dev);
    virtio_pmem_destroy(&a);

    restore_memory();
    pmem_publish_flush(2);
    pmem_make(&b, 0x100000000ULL);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    ck_assert(wait_used(0, 3, 2000));
    ck_assert_uint_eq(used_of(0)->ring[2].id, 4);
    uint32_t resp;
    memcpy(&resp, ptr(DATA + 0x2000ULL * 2 + 4, 4), 4);
    ck_assert_uint_eq(resp, VIRTIO_PMEM_RESP_OK);
    virtio_pmem_destroy(&b);

    /* The guest's driver has the memory mapped where it was: elsewhere is refused. */
    restore_memory();
    pmem_make(&b, 0x200000000ULL);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("pmem0: the guest knows its memory at 0x100000000, 2 MiB");
    virtio_pmem_destroy(&b);
    unlink(pmem_file);
}
END_TEST

static void discard_output(void *opaque, const uint8_t *buf, size_t len)
{
    (void)opaque;
    (void)buf;
    (void)len;
}

START_TEST(console_input_survives)
{
    struct virtio_console a, b;
    ck_assert_int_eq(virtio_console_init(&a, &mem, discard_output, NULL, NULL), 0);
    driver_start(&a.dev, 2);
    /* No receive buffers: the input waits in the device. */
    ck_assert_uint_eq(virtio_console_receive(&a, (const uint8_t *)"hello", 5), 5);
    take(&a.dev);
    virtio_dev_thaw(&a.dev);
    virtio_console_destroy(&a);

    restore_memory();
    ck_assert_int_eq(virtio_console_init(&b, &mem, discard_output, NULL, NULL), 0);
    ck_assert_msg(restore_device(&b.dev) == 0, "%s", error_get());
    set_desc(0, 0, DATA, 64, VIRTQ_DESC_F_WRITE, 0);
    publish(0, 0);
    virtio_dev_kick(&b.dev, 0);
    ck_assert(wait_used(0, 1, 2000));
    ck_assert_uint_eq(used_of(0)->ring[0].len, 5);
    ck_assert_mem_eq(ptr(DATA, 5), "hello", 5);
    virtio_console_destroy(&b);

    restore_memory();
    patch_field(1, VIRTIO_CONSOLE_INPUT_BUF + 1);
    ck_assert_int_eq(virtio_console_init(&b, &mem, discard_output, NULL, NULL), 0);
    ck_assert_int_eq(restore_device(&b.dev), -1);
    assert_refused("more than the 4096 a console buffers");
    virtio_console_destroy(&b);
}
END_TEST

Suite *snapshot_devices_suite(void)
{
    Suite *s = suite_create("snapshot_devices");
    TCase *t = tcase_create("device models");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 30);
    tcase_add_test(t, blk_restored_serves_the_next_request);
    tcase_add_test(t, blk_held_request_and_budget);
    tcase_add_test(t, net_restored_sends_the_next_frame);
    tcase_add_test(t, net_freeze_answers_frames_held_for_room);
    tcase_add_test(t, rng_held_request_goes_back);
    tcase_add_test(t, pmem_restored_serves_the_next_flush);
    tcase_add_test(t, console_input_survives);
    suite_add_tcase(s, t);
    TCase *v = tcase_create("vsock");
    tcase_add_checked_fixture(v, vs_setup, vs_teardown);
    tcase_set_timeout(v, 30);
    tcase_add_test(v, vsock_reset_on_snapshot_and_restore);
    tcase_add_test(v, vsock_reset_sent_after_restore);
    suite_add_tcase(s, v);
    return s;
}
