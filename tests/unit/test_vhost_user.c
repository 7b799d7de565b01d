/* The vhost-user front-end (src/vhost_user/) against a fake back-end on a socketpair: the
 * fake's replies are queued in the socket before each call (no thread), and what the
 * front-end sent is read back and checked. Good paths, then hostile replies: wrong request,
 * flags, version or size, descriptors where none belong, a closed socket, silence (bounded
 * by the timeout), a refusal. */
#include "suites.h"
#include "util/error.h"
#include "vhost_user/proto.h"
#include "vhost_user/vhost_user.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static struct vhost_user vu;
static int peer = -1;

static void setup(void)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    peer = sv[1];
    ck_assert_int_eq(vhost_user_from_fd(&vu, "test0", sv[0], 200), 0);
}

static void teardown(void)
{
    vhost_user_close(&vu);
    if (peer >= 0)
        close(peer);
    peer = -1;
}

/* The fake back-end's reply, queued for the front-end to read. */
static void reply_fds(uint32_t req, uint32_t flags, const void *payload, uint32_t size,
                      const int *fds, unsigned nfds)
{
    struct vhu_header h = {.request = req, .flags = flags, .size = size};
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, size}};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 4)];
    } ctl;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
    if (nfds) {
        memset(&ctl, 0, sizeof(ctl));
        msg.msg_control = ctl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ck_assert_int_eq(sendmsg(peer, &msg, 0), (ssize_t)(sizeof(h) + size));
}

static void reply(uint32_t req, const void *payload, uint32_t size)
{
    reply_fds(req, VHU_VERSION | VHU_FLAG_REPLY, payload, size, NULL, 0);
}

static void reply_u64(uint32_t req, uint64_t v)
{
    reply(req, &v, sizeof(v));
}

/* What the front-end sent: header, payload (into buf), descriptors received (into fds). */
static struct vhu_header take(void *buf, size_t cap, int *fds, unsigned *nfds)
{
    struct vhu_header h;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 8)];
    } ctl;
    struct iovec iov = {&h, sizeof(h)};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl)};
    ck_assert_int_eq(recvmsg(peer, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC), sizeof(h));
    unsigned n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fds && n < 8)
                fds[n] = fd;
            else
                close(fd);
            n++;
        }
    }
    if (nfds)
        *nfds = n;
    ck_assert_uint_le(h.size, cap);
    if (h.size)
        ck_assert_int_eq(recv(peer, buf, h.size, MSG_DONTWAIT), (ssize_t)h.size);
    ck_assert_uint_eq(h.flags & VHU_VERSION_MASK, VHU_VERSION);
    ck_assert(!(h.flags & VHU_FLAG_REPLY));
    return h;
}

static unsigned open_fds(void)
{
    unsigned n = 0;
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* GET_FEATURES, the protocol features of `wanted` and SET_OWNER. */
static void handshake_wanting(uint64_t protocol, uint64_t wanted)
{
    reply_u64(VHU_GET_FEATURES, (1ULL << 32) | (1ULL << VHOST_USER_F_PROTOCOL_FEATURES) | 0x246);
    reply_u64(VHU_GET_PROTOCOL_FEATURES, protocol | (1ULL << 40));
    reply_u64(VHU_SET_OWNER, 0);
    ck_assert_msg(vhost_user_handshake(&vu, wanted) == 0, "%s", error_get());
    uint64_t v;
    ck_assert_uint_eq(take(&v, sizeof(v), NULL, NULL).request, VHU_GET_FEATURES);
    ck_assert_uint_eq(take(&v, sizeof(v), NULL, NULL).request, VHU_GET_PROTOCOL_FEATURES);
    struct vhu_header h = take(&v, sizeof(v), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_SET_PROTOCOL_FEATURES);
    ck_assert(!(h.flags & VHU_FLAG_NEED_ACK));
    ck_assert_uint_eq(v, protocol & wanted);
    h = take(&v, sizeof(v), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_SET_OWNER);
    ck_assert_uint_eq(h.size, 0);
    ck_assert_uint_eq(!!(h.flags & VHU_FLAG_NEED_ACK),
                      !!(protocol & (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK)));
}

/* The same with REPLY_ACK, CONFIG and MQ wanted. */
static void handshake(uint64_t protocol)
{
    handshake_wanting(protocol, (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                                    (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) |
                                    (1ULL << VHOST_USER_PROTOCOL_F_MQ));
}

#define ALL_PROTOCOL                                                                               \
    ((1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) |          \
     (1ULL << VHOST_USER_PROTOCOL_F_MQ))

START_TEST(test_handshake_and_features)
{
    handshake(ALL_PROTOCOL);
    ck_assert(vhost_user_has_protocol(&vu, VHOST_USER_PROTOCOL_F_REPLY_ACK));
    ck_assert(!vhost_user_has_protocol(&vu, 40));
    /* SET_FEATURES carries the protocol bit the back-end offered, acknowledged. */
    reply_u64(VHU_SET_FEATURES, 0);
    ck_assert_int_eq(vhost_user_set_features(&vu, 1ULL << 32), 0);
    uint64_t v;
    struct vhu_header h = take(&v, sizeof(v), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_SET_FEATURES);
    ck_assert(h.flags & VHU_FLAG_NEED_ACK);
    ck_assert_uint_eq(v, (1ULL << 32) | (1ULL << VHOST_USER_F_PROTOCOL_FEATURES));
    reply_u64(VHU_GET_QUEUE_NUM, 4);
    ck_assert_int_eq(vhost_user_get_queue_num(&vu, &v), 0);
    ck_assert_uint_eq(v, 4);
    take(&v, sizeof(v), NULL, NULL);
}
END_TEST

START_TEST(test_no_reply_ack)
{
    /* Without REPLY_ACK nothing is acknowledged: the front-end reads nothing back. */
    handshake(1ULL << VHOST_USER_PROTOCOL_F_CONFIG);
    ck_assert_int_eq(vhost_user_set_vring_num(&vu, 0, 256), 0);
    struct vhu_vring_state s;
    struct vhu_header h = take(&s, sizeof(s), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_SET_VRING_NUM);
    ck_assert(!(h.flags & VHU_FLAG_NEED_ACK));
    ck_assert_uint_eq(s.index, 0);
    ck_assert_uint_eq(s.num, 256);
    uint64_t n;
    ck_assert_int_eq(vhost_user_get_queue_num(&vu, &n), -1); /* no MQ */
}
END_TEST

START_TEST(test_config)
{
    handshake(ALL_PROTOCOL);
    struct vhu_config c = {.offset = 0, .size = 8};
    uint64_t capacity = 2048;
    memcpy(c.payload, &capacity, 8);
    reply(VHU_GET_CONFIG, &c, VHU_CONFIG_HEADER + 8);
    uint64_t got = 0;
    ck_assert_int_eq(vhost_user_get_config(&vu, 0, &got, 8), 0);
    ck_assert_uint_eq(got, 2048);
    struct vhu_config sent;
    struct vhu_header h = take(&sent, sizeof(sent), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_GET_CONFIG);
    ck_assert_uint_eq(h.size, VHU_CONFIG_HEADER + 8);
    ck_assert_uint_eq(sent.size, 8);
    /* SET_CONFIG, acknowledged. */
    reply_u64(VHU_SET_CONFIG, 0);
    uint8_t wce = 1;
    ck_assert_int_eq(vhost_user_set_config(&vu, 32, &wce, 1), 0);
    h = take(&sent, sizeof(sent), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_SET_CONFIG);
    ck_assert_uint_eq(sent.offset, 32);
    ck_assert_uint_eq(sent.payload[0], 1);
    /* Out of range: refused before anything is sent. */
    ck_assert_int_eq(vhost_user_get_config(&vu, 250, &got, 8), -1);
    ck_assert_int_eq(vhost_user_get_config(&vu, 0, &got, 0), -1);
    /* A reply for other bytes than asked: a broken connection. */
    c.offset = 4;
    reply(VHU_GET_CONFIG, &c, VHU_CONFIG_HEADER + 8);
    ck_assert_int_eq(vhost_user_get_config(&vu, 0, &got, 8), -1);
    ck_assert(vu.broken);
}
END_TEST

START_TEST(test_mem_table_and_rings)
{
    handshake(ALL_PROTOCOL);
    struct guest_memory mem;
    ck_assert_int_eq(guest_memory_map_memfd(&mem, 8 << 20, 4 << 20, 6 << 20), 0);
    ck_assert_uint_eq(mem.nregions, 2);
    reply_u64(VHU_SET_MEM_TABLE, 0);
    ck_assert_msg(vhost_user_set_mem_table(&vu, &mem) == 0, "%s", error_get());
    struct vhu_mem_table t;
    int fds[8];
    unsigned nfds;
    struct vhu_header h = take(&t, sizeof(t), fds, &nfds);
    ck_assert_uint_eq(h.request, VHU_SET_MEM_TABLE);
    ck_assert_uint_eq(h.size, 8 + 2 * sizeof(struct vhu_mem_region));
    ck_assert_uint_eq(nfds, 2);
    ck_assert_uint_eq(t.nregions, 2);
    ck_assert_uint_eq(t.regions[0].guest_addr, 0);
    ck_assert_uint_eq(t.regions[0].size, 4 << 20);
    ck_assert_uint_eq(t.regions[1].guest_addr, 6 << 20);
    ck_assert_uint_eq(t.regions[1].mmap_offset, 4 << 20);
    ck_assert_uint_eq(t.regions[1].user_addr, (uintptr_t)mem.base + (4 << 20));
    for (unsigned i = 0; i < nfds; i++)
        close(fds[i]);

    int kick = eventfd(0, EFD_CLOEXEC);
    reply_u64(VHU_SET_VRING_KICK, 0);
    ck_assert_int_eq(vhost_user_set_vring_kick(&vu, 1, kick), 0);
    uint64_t v;
    h = take(&v, sizeof(v), fds, &nfds);
    ck_assert_uint_eq(h.request, VHU_SET_VRING_KICK);
    ck_assert_uint_eq(v, 1);
    ck_assert_uint_eq(nfds, 1);
    close(fds[0]);
    /* No descriptor: the NOFD bit. */
    reply_u64(VHU_SET_VRING_CALL, 0);
    ck_assert_int_eq(vhost_user_set_vring_call(&vu, 2, -1), 0);
    h = take(&v, sizeof(v), fds, &nfds);
    ck_assert_uint_eq(v, 2 | VHU_VRING_NOFD);
    ck_assert_uint_eq(nfds, 0);
    close(kick);

    reply_u64(VHU_SET_VRING_ADDR, 0);
    ck_assert_int_eq(
        vhost_user_set_vring_addr(&vu, 0, mem.base + 0x1000, mem.base + 0x2000, mem.base + 0x3000),
        0);
    struct vhu_vring_addr a;
    take(&a, sizeof(a), NULL, NULL);
    ck_assert_uint_eq(a.desc, (uintptr_t)mem.base + 0x1000);
    ck_assert_uint_eq(a.avail, (uintptr_t)mem.base + 0x2000);
    ck_assert_uint_eq(a.used, (uintptr_t)mem.base + 0x3000);

    struct vhu_vring_state s = {.index = 0, .num = 77};
    reply(VHU_GET_VRING_BASE, &s, sizeof(s));
    unsigned base;
    ck_assert_int_eq(vhost_user_get_vring_base(&vu, 0, &base), 0);
    ck_assert_uint_eq(base, 77);
    take(&s, sizeof(s), NULL, NULL);
    /* Another ring's position, or one past 16 bits: refused. */
    s = (struct vhu_vring_state){.index = 1, .num = 5};
    reply(VHU_GET_VRING_BASE, &s, sizeof(s));
    ck_assert_int_eq(vhost_user_get_vring_base(&vu, 0, &base), -1);
    guest_memory_free(&mem);

    /* Anonymous memory cannot be shared: refused before anything is sent. */
    struct guest_memory anon;
    ck_assert_int_eq(guest_memory_map(&anon, 4 << 20, 1ULL << 32, 1ULL << 32), 0);
    teardown();
    setup();
    ck_assert_int_eq(vhost_user_set_mem_table(&vu, &anon), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "not shared"));
    guest_memory_free(&anon);
}
END_TEST

/* One hostile reply to SET_VRING_NUM (acknowledged) must fail it and break the connection. */
static void expect_broken(const char *what)
{
    ck_assert_int_eq(vhost_user_set_vring_num(&vu, 0, 128), -1);
    ck_assert_msg(strstr(error_get(), what), "'%s' lacks '%s'", error_get(), what);
    ck_assert(vu.broken);
    /* Later calls fail at once, without sending. */
    ck_assert_int_eq(vhost_user_set_vring_enable(&vu, 0, true), -1);
}

START_TEST(test_bad_reply_request)
{
    handshake(ALL_PROTOCOL);
    reply_u64(VHU_SET_VRING_BASE, 0);
    expect_broken("answers request 10");
}
END_TEST

START_TEST(test_bad_reply_flags)
{
    handshake(ALL_PROTOCOL);
    uint64_t z = 0;
    reply_fds(VHU_SET_VRING_NUM, VHU_VERSION, &z, 8, NULL, 0);
    expect_broken("not marked as a reply");
}
END_TEST

START_TEST(test_bad_reply_version)
{
    handshake(ALL_PROTOCOL);
    uint64_t z = 0;
    reply_fds(VHU_SET_VRING_NUM, 2 | VHU_FLAG_REPLY, &z, 8, NULL, 0);
    expect_broken("protocol version 2");
}
END_TEST

START_TEST(test_bad_reply_size)
{
    handshake(ALL_PROTOCOL);
    uint32_t z = 0;
    reply(VHU_SET_VRING_NUM, &z, 4);
    expect_broken("4 bytes of payload, not 8");
}
END_TEST

START_TEST(test_bad_reply_huge_size)
{
    handshake(ALL_PROTOCOL);
    struct vhu_header h = {
        .request = VHU_SET_VRING_NUM, .flags = VHU_VERSION | VHU_FLAG_REPLY, .size = 0xffffffffu};
    ck_assert_int_eq(write(peer, &h, sizeof(h)), sizeof(h));
    expect_broken("4294967295 bytes");
}
END_TEST

START_TEST(test_bad_reply_fds)
{
    handshake(ALL_PROTOCOL);
    int efd = eventfd(0, EFD_CLOEXEC);
    unsigned before = open_fds();
    uint64_t z = 0;
    int fds[2] = {efd, efd};
    reply_fds(VHU_SET_VRING_NUM, VHU_VERSION | VHU_FLAG_REPLY, &z, 8, fds, 2);
    expect_broken("descriptors");
    /* The descriptors that came along were closed, not leaked. */
    ck_assert_uint_eq(open_fds(), before);
    close(efd);
}
END_TEST

START_TEST(test_closed_socket)
{
    handshake(ALL_PROTOCOL);
    close(peer);
    peer = -1;
    /* MSG_NOSIGNAL: an error, not a SIGPIPE that ends the test. */
    expect_broken("vhost-user back-end of test0");
}
END_TEST

START_TEST(test_closed_before_reply)
{
    handshake(ALL_PROTOCOL);
    shutdown(peer, SHUT_WR);
    expect_broken("closed its socket");
}
END_TEST

START_TEST(test_silent_backend)
{
    handshake(ALL_PROTOCOL);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    expect_broken("no answer within 200 ms");
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    ck_assert_msg(s >= 0.19 && s < 2, "waited %.3f s", s);
}
END_TEST

START_TEST(test_half_reply_then_silence)
{
    handshake(ALL_PROTOCOL);
    struct vhu_header h = {
        .request = VHU_SET_VRING_NUM, .flags = VHU_VERSION | VHU_FLAG_REPLY, .size = 8};
    ck_assert_int_eq(write(peer, &h, sizeof(h)), sizeof(h));
    ck_assert_int_eq(write(peer, "abc", 3), 3);
    expect_broken("no answer within");
}
END_TEST

START_TEST(test_refusal_keeps_connection)
{
    handshake(ALL_PROTOCOL);
    reply_u64(VHU_SET_VRING_NUM, 1);
    ck_assert_int_eq(vhost_user_set_vring_num(&vu, 0, 128), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "SET_VRING_NUM refused"));
    ck_assert(!vu.broken);
    reply_u64(VHU_SET_VRING_NUM, 0);
    ck_assert_int_eq(vhost_user_set_vring_num(&vu, 0, 128), 0);
}
END_TEST

#define SLOTS_PROTOCOL                                                                             \
    ((1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |                                                   \
     (1ULL << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS))

/* Nothing more was sent. */
static void nothing_sent(void)
{
    char c;
    ck_assert_int_eq(recv(peer, &c, 1, MSG_DONTWAIT | MSG_PEEK), -1);
    ck_assert_int_eq(errno, EAGAIN);
}

/* With CONFIGURE_MEM_SLOTS: GET_MAX_MEM_SLOTS, then one acknowledged ADD_MEM_REG per region
 * (padding, the region, its memfd), once per connection. */
START_TEST(test_add_mem_reg)
{
    handshake_wanting(SLOTS_PROTOCOL, SLOTS_PROTOCOL);
    struct guest_memory mem;
    ck_assert_int_eq(guest_memory_map_memfd(&mem, 8 << 20, 4 << 20, 6 << 20), 0);
    ck_assert_uint_eq(mem.nregions, 2);
    reply_u64(VHU_GET_MAX_MEM_SLOTS, 32);
    reply_u64(VHU_ADD_MEM_REG, 0);
    reply_u64(VHU_ADD_MEM_REG, 0);
    bool by_region = false;
    ck_assert_msg(vhost_user_give_memory(&vu, &mem, &by_region) == 0, "%s", error_get());
    ck_assert(by_region);
    ck_assert_uint_eq(vu.max_mem_slots, 32);
    uint64_t v;
    struct vhu_header h = take(&v, sizeof(v), NULL, NULL);
    ck_assert_uint_eq(h.request, VHU_GET_MAX_MEM_SLOTS);
    ck_assert_uint_eq(h.size, 0);
    for (unsigned i = 0; i < 2; i++) {
        struct vhu_mem_region_msg m;
        int fds[8];
        unsigned nfds;
        h = take(&m, sizeof(m), fds, &nfds);
        ck_assert_uint_eq(h.request, VHU_ADD_MEM_REG);
        ck_assert(h.flags & VHU_FLAG_NEED_ACK);
        ck_assert_uint_eq(h.size, 40);
        ck_assert_uint_eq(nfds, 1);
        ck_assert_uint_eq(m.padding, 0);
        ck_assert_uint_eq(m.region.guest_addr, i ? 6 << 20 : 0);
        ck_assert_uint_eq(m.region.size, 4 << 20);
        ck_assert_uint_eq(m.region.mmap_offset, i ? 4 << 20 : 0);
        ck_assert_uint_eq(m.region.user_addr, (uintptr_t)mem.base + m.region.mmap_offset);
        /* The descriptor holds the region. */
        off_t end = lseek(fds[0], 0, SEEK_END);
        ck_assert_int_ge(end, (off_t)(m.region.mmap_offset + m.region.size));
        close(fds[0]);
    }
    /* Again on the same connection (the driver reset the device): the back-end has them. */
    ck_assert_int_eq(vhost_user_give_memory(&vu, &mem, &by_region), 0);
    nothing_sent();
    /* A region that changed is refused, never added twice. */
    mem.regions[1].size -= 4096;
    ck_assert_int_eq(vhost_user_give_memory(&vu, &mem, &by_region), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "changed"));
    mem.regions[1].size += 4096;
    nothing_sent();
    guest_memory_free(&mem);
}
END_TEST

/* Without CONFIGURE_MEM_SLOTS (or not wanted): one SET_MEM_TABLE, as before. */
START_TEST(test_give_memory_table)
{
    handshake_wanting(SLOTS_PROTOCOL, 1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK);
    struct guest_memory mem;
    ck_assert_int_eq(guest_memory_map_memfd(&mem, 4 << 20, 1ULL << 32, 1ULL << 32), 0);
    reply_u64(VHU_SET_MEM_TABLE, 0);
    bool by_region = true;
    ck_assert_int_eq(vhost_user_give_memory(&vu, &mem, &by_region), 0);
    ck_assert(!by_region);
    struct vhu_mem_table t;
    ck_assert_uint_eq(take(&t, sizeof(t), NULL, NULL).request, VHU_SET_MEM_TABLE);
    ck_assert_uint_eq(t.nregions, 1);
    guest_memory_free(&mem);
}
END_TEST

/* GET_MAX_MEM_SLOTS' answer: 0, over KVM's slot count, or fewer than the regions: refused. */
START_TEST(test_bad_max_mem_slots)
{
    static const uint64_t bad[] = {0, VHU_MAX_MEM_SLOTS_LIMIT + 1, UINT64_MAX, 1};
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (i) {
            teardown();
            setup();
        }
        handshake_wanting(SLOTS_PROTOCOL, SLOTS_PROTOCOL);
        reply_u64(VHU_GET_MAX_MEM_SLOTS, bad[i]);
        uint64_t slots;
        ck_assert_int_eq(vhost_user_get_max_mem_slots(&vu, 2, &slots), -1);
        ck_assert_ptr_nonnull(strstr(error_get(), bad[i] == 1 ? "guest RAM is 2 region(s)"
                                                              : "memory slots (1 to 32764)"));
        ck_assert_uint_eq(vu.max_mem_slots, 0);
    }
    ck_assert_int_eq(vhu_check_max_mem_slots(VHU_MAX_MEM_SLOTS_LIMIT, 2), 0);
    ck_assert_int_eq(vhu_check_max_mem_slots(2, 2), 0);
}
END_TEST

/* ---- the back-end's request channel --------------------------------------------- */

static int changes;
static int change_result;

static int on_change(void *opaque)
{
    (void)opaque;
    changes++;
    return change_result;
}

/* The channel made and handed over; *backend is the back-end's end. */
static void open_channel(struct vhost_user_channel *ch, int *backend)
{
    uint64_t wanted =
        (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ULL << VHOST_USER_PROTOCOL_F_BACKEND_REQ);
    handshake_wanting(wanted, wanted);
    reply_u64(VHU_SET_BACKEND_REQ_FD, 0);
    ck_assert_msg(vhost_user_open_channel(&vu, ch) == 0, "%s", error_get());
    int fds[8];
    unsigned nfds;
    uint64_t v;
    struct vhu_header h = take(&v, sizeof(v), fds, &nfds);
    ck_assert_uint_eq(h.request, VHU_SET_BACKEND_REQ_FD);
    ck_assert_uint_eq(h.size, 0);
    ck_assert_uint_eq(nfds, 1);
    *backend = fds[0];
    ck_assert_int_ge(ch->fd, 0);
    ck_assert(fcntl(ch->fd, F_GETFL) & O_NONBLOCK);
}

static void backend_send(int fd, uint32_t req, uint32_t flags, const void *payload, uint32_t size)
{
    struct vhu_header h = {.request = req, .flags = flags, .size = size};
    ck_assert_int_eq(send(fd, &h, sizeof(h), MSG_DONTWAIT), sizeof(h));
    if (size)
        ck_assert_int_eq(send(fd, payload, size, MSG_DONTWAIT), (ssize_t)size);
}

/* The answer the back-end reads for its request req. */
static uint64_t backend_answer(int fd, uint32_t req)
{
    struct {
        struct vhu_header h;
        uint64_t v;
    } __attribute__((packed)) m;
    ck_assert_int_eq(recv(fd, &m, sizeof(m), MSG_DONTWAIT), sizeof(m));
    ck_assert_uint_eq(m.h.request, req);
    ck_assert_uint_eq(m.h.flags, VHU_VERSION | VHU_FLAG_REPLY);
    ck_assert_uint_eq(m.h.size, 8);
    return m.v;
}

START_TEST(test_channel_config_change)
{
    static struct vhost_user_channel ch;
    int be;
    open_channel(&ch, &be);
    struct vhost_user_channel_stats st;
    /* Nothing there: nothing done. */
    changes = change_result = 0;
    ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), 0);
    ck_assert_uint_eq(st.requests, 0);
    /* Three notices, one asking for an answer, an unknown request asking for one, an IOTLB
     * message that does not, and half of the next header: the configuration is read once. */
    backend_send(be, VHU_BACKEND_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0);
    backend_send(be, VHU_BACKEND_CONFIG_CHANGE_MSG, VHU_VERSION | VHU_FLAG_NEED_ACK, NULL, 0);
    backend_send(be, 99, VHU_VERSION | VHU_FLAG_NEED_ACK, "abcd", 4);
    backend_send(be, VHU_BACKEND_IOTLB_MSG, VHU_VERSION, "0123456789abcdef", 16);
    backend_send(be, VHU_BACKEND_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0);
    struct vhu_header half = {.request = VHU_BACKEND_CONFIG_CHANGE_MSG,
                              .flags = VHU_VERSION | VHU_FLAG_NEED_ACK};
    ck_assert_int_eq(send(be, &half, 6, MSG_DONTWAIT), 6);
    ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), 0);
    ck_assert_int_eq(changes, 1);
    ck_assert_uint_eq(st.requests, 5);
    ck_assert_uint_eq(st.config_changes, 3);
    ck_assert_uint_eq(st.refused, 2);
    ck_assert_ptr_nonnull(strstr(st.why, "request 99"));
    ck_assert_uint_eq(backend_answer(be, VHU_BACKEND_CONFIG_CHANGE_MSG), 0);
    ck_assert_uint_eq(backend_answer(be, 99), 1);
    char c;
    ck_assert_int_eq(recv(be, &c, 1, MSG_DONTWAIT), -1);
    /* The rest of the half message: served, its answer the refresh's failure. */
    change_result = -1;
    ck_assert_int_eq(send(be, (char *)&half + 6, 6, MSG_DONTWAIT), 6);
    ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), 0);
    ck_assert_int_eq(changes, 2);
    ck_assert_uint_eq(backend_answer(be, VHU_BACKEND_CONFIG_CHANGE_MSG), 1);
    /* A device whose configuration is ember's refuses the notice. */
    backend_send(be, VHU_BACKEND_CONFIG_CHANGE_MSG, VHU_VERSION | VHU_FLAG_NEED_ACK, NULL, 0);
    ck_assert_int_eq(vhost_user_channel_serve(&ch, NULL, NULL, &st), 0);
    ck_assert_uint_eq(st.refused, 1);
    ck_assert_uint_eq(backend_answer(be, VHU_BACKEND_CONFIG_CHANGE_MSG), 1);
    /* A notice with a payload is not one. */
    backend_send(be, VHU_BACKEND_CONFIG_CHANGE_MSG, VHU_VERSION | VHU_FLAG_NEED_ACK, "x", 1);
    ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), 0);
    ck_assert_int_eq(changes, 2);
    ck_assert_uint_eq(backend_answer(be, VHU_BACKEND_CONFIG_CHANGE_MSG), 1);
    /* The back-end closes its end. */
    close(be);
    ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), -1);
    ck_assert(st.closed);
    vhost_user_channel_close(&ch);
    ck_assert_int_eq(ch.fd, -1);
}
END_TEST

/* Messages that break the channel: another version, a reply, unknown flags, a payload over
 * the limit, descriptors (closed). */
START_TEST(test_channel_broken)
{
    static struct vhost_user_channel ch;
    struct {
        uint32_t flags, size;
        int with_fd;
        const char *why;
    } bad[] = {
        {2, 0, 0, "version 2"},
        {VHU_VERSION | VHU_FLAG_REPLY, 0, 0, "nobody asked for"},
        {VHU_VERSION | 0x10, 0, 0, "unknown flags"},
        {VHU_VERSION, VHU_BACKEND_MAX_PAYLOAD + 1, 0, "bytes of payload"},
        {VHU_VERSION, 0, 1, "descriptors"},
    };
    unsigned before = open_fds();
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (i) {
            teardown();
            setup();
        }
        int be;
        open_channel(&ch, &be);
        struct vhu_header h = {.request = 2, .flags = bad[i].flags, .size = bad[i].size};
        if (bad[i].with_fd) {
            int e = eventfd(0, EFD_CLOEXEC);
            union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
            } ctl;
            memset(&ctl, 0, sizeof(ctl));
            struct iovec iov = {&h, sizeof(h)};
            struct msghdr msg = {.msg_iov = &iov,
                                 .msg_iovlen = 1,
                                 .msg_control = ctl.buf,
                                 .msg_controllen = sizeof(ctl.buf)};
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &e, sizeof(int));
            ck_assert_int_eq(sendmsg(be, &msg, 0), sizeof(h));
            close(e);
        } else {
            ck_assert_int_eq(send(be, &h, sizeof(h), 0), sizeof(h));
        }
        struct vhost_user_channel_stats st;
        changes = 0;
        ck_assert_int_eq(vhost_user_channel_serve(&ch, on_change, NULL, &st), -1);
        ck_assert_msg(strstr(error_get(), bad[i].why), "'%s' lacks '%s'", error_get(), bad[i].why);
        ck_assert_int_eq(changes, 0);
        vhost_user_channel_close(&ch);
        close(be);
    }
    teardown();
    setup();
    ck_assert_uint_eq(open_fds(), before);
}
END_TEST

/* A back-end that asks for answers and never reads them: the channel breaks, nothing waits. */
START_TEST(test_channel_unread_answers)
{
    static struct vhost_user_channel ch;
    int be;
    open_channel(&ch, &be);
    struct vhost_user_channel_stats st;
    int r = 0;
    changes = change_result = 0;
    for (unsigned i = 0; i < 100000 && r == 0; i++) {
        struct vhu_header h[16];
        for (unsigned k = 0; k < 16; k++)
            h[k] = (struct vhu_header){.request = VHU_BACKEND_CONFIG_CHANGE_MSG,
                                       .flags = VHU_VERSION | VHU_FLAG_NEED_ACK};
        ck_assert_int_eq(send(be, h, sizeof(h), MSG_DONTWAIT), sizeof(h));
        r = vhost_user_channel_serve(&ch, on_change, NULL, &st);
    }
    ck_assert_int_eq(r, -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "answer"));
    vhost_user_channel_close(&ch);
    close(be);
}
END_TEST

START_TEST(test_connect_errors)
{
    struct vhost_user c;
    ck_assert_int_eq(vhost_user_connect(&c, "x", "/nonexistent/vhost.sock", 100), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "cannot connect"));
    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = '\0';
    ck_assert_int_eq(vhost_user_connect(&c, "x", longpath, 100), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "longer than"));
}
END_TEST

/* Server mode's listener: a stale socket replaced, a file or a live listener refused, bounded
 * accepts, extra connections closed, only its own socket file removed. */
START_TEST(test_listener)
{
    char path[64], other[80];
    snprintf(path, sizeof(path), "/tmp/ember-test-vul-%d.sock", (int)getpid());
    unlink(path);
    struct vhost_user_listener l;
    struct vhost_user conn;

    /* A regular file stays and is refused. */
    int f = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(f, 0);
    close(f);
    ck_assert_int_eq(vhost_user_listen(&l, "t", path), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "is not a socket"));
    ck_assert_int_eq(access(path, F_OK), 0);
    unlink(path);

    /* A live listener is refused; once it is gone, its socket file is stale and replaced. */
    ck_assert_int_eq(vhost_user_listen(&l, "t", path), 0);
    struct vhost_user_listener l2;
    ck_assert_int_eq(vhost_user_listen(&l2, "t", path), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "another process listens"));
    close(l.fd); /* as a process that died: the file stays */
    ck_assert_int_eq(access(path, F_OK), 0);
    ck_assert_int_eq(vhost_user_listen(&l, "t", path), 0);

    /* Nobody connecting: a bounded wait. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ck_assert_int_eq(vhost_user_accept(&conn, "t", &l, 100, 1000), -1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    ck_assert_int_ge(ms, 90);
    ck_assert_int_lt(ms, 1000);
    ck_assert_int_eq(vhost_user_accept(&conn, "t", &l, 0, 1000), -1);

    /* A back-end connects and is served; a second connection is closed at once. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int c1 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(c1, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(vhost_user_accept(&conn, "t", &l, 1000, 1000), 0);
    ck_assert_int_ge(vhost_user_fd(&conn), 0);
    int c2 = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(c2, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_uint_eq(vhost_user_listener_refuse(&l), 1);
    char b;
    ck_assert_int_eq(read(c2, &b, 1), 0);
    ck_assert_uint_eq(vhost_user_listener_refuse(&l), 0);
    close(c2);
    close(c1);
    vhost_user_close(&conn);

    /* Closing removes the socket file ember made... */
    vhost_user_listener_close(&l);
    ck_assert_int_eq(access(path, F_OK), -1);
    /* ...and not another file put at its path meanwhile. */
    ck_assert_int_eq(vhost_user_listen(&l, "t", path), 0);
    snprintf(other, sizeof(other), "%s.other", path);
    f = open(other, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ck_assert_int_ge(f, 0);
    close(f);
    ck_assert_int_eq(rename(other, path), 0);
    vhost_user_listener_close(&l);
    ck_assert_int_eq(access(path, F_OK), 0);
    unlink(path);
}
END_TEST

Suite *vhost_user_suite(void)
{
    Suite *s = suite_create("vhost_user");
    TCase *tc = tcase_create("front-end");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_handshake_and_features);
    tcase_add_test(tc, test_no_reply_ack);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_mem_table_and_rings);
    tcase_add_test(tc, test_bad_reply_request);
    tcase_add_test(tc, test_bad_reply_flags);
    tcase_add_test(tc, test_bad_reply_version);
    tcase_add_test(tc, test_bad_reply_size);
    tcase_add_test(tc, test_bad_reply_huge_size);
    tcase_add_test(tc, test_bad_reply_fds);
    tcase_add_test(tc, test_closed_socket);
    tcase_add_test(tc, test_closed_before_reply);
    tcase_add_test(tc, test_silent_backend);
    tcase_add_test(tc, test_half_reply_then_silence);
    tcase_add_test(tc, test_refusal_keeps_connection);
    tcase_add_test(tc, test_connect_errors);
    tcase_add_test(tc, test_add_mem_reg);
    tcase_add_test(tc, test_give_memory_table);
    tcase_add_test(tc, test_bad_max_mem_slots);
    tcase_add_test(tc, test_channel_config_change);
    tcase_add_test(tc, test_channel_broken);
    tcase_add_test(tc, test_channel_unread_answers);
    tcase_add_test(tc, test_listener);
    suite_add_tcase(s, tc);
    return s;
}
