/*
 * A virtio-fs device served by a vhost-user back-end (virtiofsd, tests/vhost_user/): the
 * guest speaks FUSE over the first request queue (queue 1; queue 0 is the high-priority
 * queue, set up but unused). The harness shares a directory holding HOST_FILE with
 * HOST_TEXT in it and puts vfs_tag=TAG on the command line. The guest checks the tag and
 * the queue count in the configuration space, then FUSE_INIT, LOOKUP + OPEN + READ of
 * HOST_FILE (content checked), MKDIR of GUEST_DIR and CREATE + WRITE of GUEST_FILE with
 * GUEST_TEXT, which the harness then looks for on the host; then a request while its MSI-X
 * vector is masked (virtio-pci), and a reset followed by a new FUSE session.
 * With vfs_hold=1 the guest then keeps asking (GETATTR of the root), saying "# vfs: holding"
 * once, until the device says it needs a reset (the harness kills the back-end) or 60 s pass.
 */
#include "guest.h"
#include "io.h"
#include "virtio.h"

#define VIRTIO_ID_FS 26
#define CFG_TAG      0
#define CFG_NUM_RQ   36
#define TAG_MAX      36

#define HOST_FILE  "from-host.txt"
#define HOST_TEXT  "ember virtio-fs: written by the host\n"
#define GUEST_DIR  "made-by-guest"
#define GUEST_FILE "from-guest.txt"
#define GUEST_TEXT "ember virtio-fs: written by the guest\n"

#define FUSE_ROOT_ID 1
#define FUSE_LOOKUP  1
#define FUSE_GETATTR 3
#define FUSE_MKDIR   9
#define FUSE_OPEN    14
#define FUSE_READ    15
#define FUSE_WRITE   16
#define FUSE_RELEASE 18
#define FUSE_INIT    26
#define FUSE_CREATE  35
#define O_RDONLY_    0
#define O_WRONLY_    1
#define O_CREAT_     0100
#define O_TRUNC_     01000
#define WAIT_US      5000000

struct fuse_in_header {
    uint32_t len, opcode;
    uint64_t unique, nodeid;
    uint32_t uid, gid, pid;
    uint16_t total_extlen, padding;
};

struct fuse_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};

struct fuse_attr {
    uint64_t ino, size, blocks, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};

struct fuse_entry_out {
    uint64_t nodeid, generation, entry_valid, attr_valid;
    uint32_t entry_valid_nsec, attr_valid_nsec;
    struct fuse_attr attr;
};

struct fuse_open_out {
    uint64_t fh;
    uint32_t open_flags, padding;
};

struct fuse_rw_in { /* fuse_read_in and fuse_write_in have the same layout */
    uint64_t fh, offset;
    uint32_t size, rw_flags;
    uint64_t lock_owner;
    uint32_t flags, padding;
};

static struct virtio_device *fs;
static uint8_t *req, *resp;
static uint64_t unique = 1;
static uint64_t host_node, host_fh;
static bool inited;

/* One FUSE request on the first request queue: header + body (device-readable), the reply
 * (device-written) into resp. The reply's error (0 or -errno), or 1 when there was none or
 * it did not match. *out_len: the reply's payload bytes. */
static int fuse_call(uint32_t opcode, uint64_t nodeid, const void *body, uint32_t body_len,
                     const void *body2, uint32_t body2_len, uint32_t resp_max, uint32_t *out_len)
{
    struct fuse_in_header *h = (struct fuse_in_header *)req;
    uint32_t len = sizeof(*h) + body_len + body2_len;
    if (len > 4096 || resp_max > 4096 - sizeof(struct fuse_out_header))
        return 1;
    memset(req, 0, 4096);
    memset(resp, 0, 4096);
    *h =
        (struct fuse_in_header){.len = len, .opcode = opcode, .unique = unique++, .nodeid = nodeid};
    if (body_len)
        memcpy(req + sizeof(*h), body, body_len);
    if (body2_len)
        memcpy(req + sizeof(*h) + body_len, body2, body2_len);
    struct vbuf bufs[2] = {
        {.addr = (uint64_t)req, .len = len},
        {.addr = (uint64_t)resp, .len = sizeof(struct fuse_out_header) + resp_max, .write = true},
    };
    int64_t got = virtq_transfer(&fs->queues[1], bufs, 2, WAIT_US);
    struct fuse_out_header *o = (struct fuse_out_header *)resp;
    if (got < (int64_t)sizeof(*o) || o->unique != h->unique || o->len != got) {
        diag("opcode %u: %s (%ld bytes written, reply len %u)", opcode,
             got < 0 ? "no reply" : "a reply that does not match", (long)got, o->len);
        return 1;
    }
    if (out_len)
        *out_len = o->len - sizeof(*o);
    if (o->error)
        diag("opcode %u: error %d", opcode, o->error);
    return o->error;
}

static void *payload(void)
{
    return resp + sizeof(struct fuse_out_header);
}

static bool set_up(void)
{
    uint64_t wanted = VIRTIO_BIT(VIRTIO_F_INDIRECT_DESC) | VIRTIO_BIT(VIRTIO_F_EVENT_IDX);
    if (!virtio_begin(fs, wanted, true))
        return false;
    diag("%s: offered 0x%lx, negotiated 0x%lx", fs->name, fs->device_features, fs->features);
    if (!virtio_queue_setup(fs, 0, 0, true) || !virtio_queue_setup(fs, 1, 0, true))
        return false;
    virtio_driver_ok(fs);
    uint8_t status = virtio_get_status(fs);
    if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        diag("status 0x%x after DRIVER_OK", status);
        return false;
    }
    return true;
}

static enum test_result bring_up(void)
{
    virtio_discover();
    fs = virtio_find(VIRTIO_ID_FS, 0);
    if (!fs || !set_up())
        return TEST_FAIL;
    req = phys_alloc_zeroed(4096, 4096);
    resp = phys_alloc_zeroed(4096, 4096);
    return TEST_PASS;
}

static enum test_result config_space(void)
{
    if (!fs)
        return skip("no device");
    char tag[TAG_MAX + 1], want[TAG_MAX + 2];
    memset(tag, 0, sizeof(tag));
    virtio_config_read(fs, CFG_TAG, tag, TAG_MAX);
    uint32_t nrq = virtio_config_read32(fs, CFG_NUM_RQ);
    uint64_t want_nrq = 1;
    cmdline_get_u64("vfs_queues", &want_nrq);
    diag("tag '%s', %u request queue(s)", tag, nrq);
    if (!cmdline_get("vfs_tag", want, sizeof(want)))
        return skip("no vfs_tag= on the command line");
    return strlen(tag) == strlen(want) && !memcmp(tag, want, strlen(want)) && nrq == want_nrq
               ? TEST_PASS
               : TEST_FAIL;
}

static enum test_result fuse_init(void)
{
    if (!req)
        return skip("no device");
    uint32_t in[4] = {7, 31, 0, 0}; /* major, minor, max_readahead, flags */
    uint32_t n = 0;
    if (fuse_call(FUSE_INIT, 0, in, sizeof(in), NULL, 0, 64, &n) != 0)
        return TEST_FAIL;
    uint32_t *out = payload();
    diag("FUSE_INIT: the back-end speaks %u.%u, max_write %u (%u bytes)", out[0], out[1], out[5],
         n);
    inited = n >= 24 && out[0] == 7;
    return inited ? TEST_PASS : TEST_FAIL;
}

static enum test_result lookup_open_read(void)
{
    if (!inited)
        return skip("no FUSE session");
    uint32_t n;
    if (fuse_call(FUSE_LOOKUP, FUSE_ROOT_ID, HOST_FILE, sizeof(HOST_FILE), NULL, 0,
                  sizeof(struct fuse_entry_out), &n) != 0 ||
        n < sizeof(struct fuse_entry_out))
        return TEST_FAIL;
    struct fuse_entry_out *e = payload();
    host_node = e->nodeid;
    diag("LOOKUP %s: node %lu, %lu bytes, mode 0x%x", HOST_FILE, host_node, e->attr.size,
         e->attr.mode);
    if (e->attr.size != sizeof(HOST_TEXT) - 1)
        return TEST_FAIL;
    uint32_t open_in[2] = {O_RDONLY_, 0};
    if (fuse_call(FUSE_OPEN, host_node, open_in, sizeof(open_in), NULL, 0,
                  sizeof(struct fuse_open_out), &n) != 0 ||
        n < sizeof(struct fuse_open_out))
        return TEST_FAIL;
    host_fh = ((struct fuse_open_out *)payload())->fh;
    struct fuse_rw_in rd = {.fh = host_fh, .offset = 0, .size = 1024};
    if (fuse_call(FUSE_READ, host_node, &rd, sizeof(rd), NULL, 0, 1024, &n) != 0)
        return TEST_FAIL;
    bool same = n == sizeof(HOST_TEXT) - 1 && !memcmp(payload(), HOST_TEXT, n);
    diag("READ: %u bytes, %s", n, same ? "the host's text" : "not the host's text");
    uint64_t rel[3] = {host_fh, 0, 0};
    fuse_call(FUSE_RELEASE, host_node, rel, sizeof(rel), NULL, 0, 0, NULL);
    return same ? TEST_PASS : TEST_FAIL;
}

static enum test_result make_dir(void)
{
    if (!inited)
        return skip("no FUSE session");
    uint32_t in[2] = {0755, 022}, n;
    if (fuse_call(FUSE_MKDIR, FUSE_ROOT_ID, in, sizeof(in), GUEST_DIR, sizeof(GUEST_DIR),
                  sizeof(struct fuse_entry_out), &n) != 0 ||
        n < sizeof(struct fuse_entry_out))
        return TEST_FAIL;
    struct fuse_entry_out *e = payload();
    diag("MKDIR %s: node %lu, mode 0x%x", GUEST_DIR, e->nodeid, e->attr.mode);
    return (e->attr.mode & 0170000) == 0040000 ? TEST_PASS : TEST_FAIL;
}

static enum test_result create_write(void)
{
    if (!inited)
        return skip("no FUSE session");
    uint32_t in[4] = {O_WRONLY_ | O_CREAT_ | O_TRUNC_, 0100644, 022, 0}, n;
    uint32_t want = sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out);
    if (fuse_call(FUSE_CREATE, FUSE_ROOT_ID, in, sizeof(in), GUEST_FILE, sizeof(GUEST_FILE), want,
                  &n) != 0 ||
        n < want)
        return TEST_FAIL;
    struct fuse_entry_out *e = payload();
    uint64_t node = e->nodeid;
    uint64_t fh = ((struct fuse_open_out *)((uint8_t *)payload() + sizeof(*e)))->fh;
    struct fuse_rw_in wr = {.fh = fh, .offset = 0, .size = sizeof(GUEST_TEXT) - 1};
    if (fuse_call(FUSE_WRITE, node, &wr, sizeof(wr), GUEST_TEXT, sizeof(GUEST_TEXT) - 1, 8, &n) !=
            0 ||
        n < 8)
        return TEST_FAIL;
    uint32_t written = *(uint32_t *)payload();
    diag("CREATE %s: node %lu; WRITE: %u bytes", GUEST_FILE, node, written);
    uint64_t rel[3] = {fh, 0, 0};
    if (fuse_call(FUSE_RELEASE, node, rel, sizeof(rel), NULL, 0, 0, NULL) != 0)
        return TEST_FAIL;
    if (written != sizeof(GUEST_TEXT) - 1)
        return TEST_FAIL;
    printf("# vfs: written\n");
    return TEST_PASS;
}

/* The back-end signals the vector's eventfd, which ember unbinds from KVM while the vector is
 * masked: its interrupt is pending in the PBA until the vector is unmasked. */
static enum test_result msix_masking(void)
{
    if (!inited)
        return skip("no FUSE session");
    if (fs->transport != VIRTIO_PCI)
        return skip("MSI-X is virtio-pci's");
    struct virtq *q = &fs->queues[1];
    struct fuse_in_header *h = (struct fuse_in_header *)req;
    memset(req, 0, 4096);
    *h = (struct fuse_in_header){
        .len = sizeof(*h) + 16, .opcode = FUSE_GETATTR, .unique = unique++, .nodeid = FUSE_ROOT_ID};
    struct vbuf bufs[2] = {
        {.addr = (uint64_t)req, .len = h->len},
        {.addr = (uint64_t)resp, .len = 1024, .write = true},
    };
    static char token;
    struct msix_masked_request r;
    bool ok = virtq_msix_masked_request(fs, q, bufs, 2, &token, WAIT_US, &r);
    bool done = r.done && ((struct fuse_out_header *)resp)->error == 0;
    diag("GETATTR %s, %s while masked, PBA bit %s; on unmask the interrupt %s, PBA bit %s",
         done ? "answered" : "lost", r.quiet ? "no interrupt" : "an interrupt",
         r.pending ? "set" : "clear", r.delivered ? "arrived" : "did not arrive",
         r.cleared ? "cleared" : "still set");
    return ok && done ? TEST_PASS : TEST_FAIL;
}

/* A reset takes the rings back from the back-end (GET_VRING_BASE); the next DRIVER_OK hands
 * them over again from the start, and a new FUSE session reads the host's file again. */
static enum test_result reset_and_again(void)
{
    if (!inited)
        return skip("no FUSE session");
    inited = false;
    if (!virtio_reset(fs) || !set_up())
        return TEST_FAIL;
    if (fuse_init() != TEST_PASS)
        return TEST_FAIL;
    return lookup_open_read();
}

/* The back-end is killed meanwhile: requests stop being answered and the device, told by
 * ember, sets DEVICE_NEEDS_RESET. */
static enum test_result hold_until_gone(void)
{
    uint64_t hold = 0;
    if (!cmdline_get_u64("vfs_hold", &hold) || !hold)
        return skip("no vfs_hold=1");
    if (!inited)
        return skip("no FUSE session");
    printf("# vfs: holding\n");
    uint64_t start = time_us();
    while (time_us() - start < 60000000) {
        uint8_t status = virtio_get_status(fs);
        if (status & VIRTIO_STATUS_NEEDS_RESET) {
            diag("DEVICE_NEEDS_RESET after %lu ms", (time_us() - start) / 1000);
            return virtio_reset(fs) ? TEST_PASS : TEST_FAIL;
        }
        uint64_t getattr_in[2] = {0, 0};
        if (fuse_call(FUSE_GETATTR, FUSE_ROOT_ID, getattr_in, sizeof(getattr_in), NULL, 0, 104,
                      NULL) == 1)
            udelay(100000); /* no answer: the status says why soon */
    }
    diag("the device never said it needs a reset");
    return TEST_FAIL;
}

static const struct guest_test tests[] = {
    {"virtio-fs device found, features negotiated, DRIVER_OK", bring_up},
    {"configuration space: the tag and the request queue count", config_space},
    {"FUSE_INIT answered by the back-end", fuse_init},
    {"LOOKUP, OPEN, READ of the host's file: its text", lookup_open_read},
    {"MKDIR", make_dir},
    {"CREATE and WRITE of a file, RELEASE", create_write},
    {"MSI-X: a masked vector's interrupt waits in the PBA, arrives on unmask", msix_masking},
    {"reset, set up again: a new FUSE session reads the host's file", reset_and_again},
    {"back-end gone: the device needs a reset, ember answers the reset", hold_until_gone},
};

void guest_main(void)
{
    tsc_calibrate();
    tap_run(tests, ARRAY_SIZE(tests));
}
