/* A fake vhost-user back-end for unit tests (test_vhost_user_blk.c, test_vhost_user_fs.c): a
 * thread that listens on a unix socket, answers every request of one connection as a back-end
 * would and records it. One per test file (static state). */
#ifndef EMBER_TESTS_UNIT_VHU_FAKE_H
#define EMBER_TESTS_UNIT_VHU_FAKE_H

#include "vhost_user/proto.h"
#include "vhost_user/vhost_user.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The fake back-end. */
static struct {
    int listen_fd, conn;
    pthread_t thread;
    char path[64];
    uint64_t features, protocol, queue_num;
    uint8_t config[256];
    pthread_mutex_t lock;
    uint32_t log[128]; /* requests in the order they came */
    unsigned nlog;
    uint64_t set_features;
    unsigned mem_fds;
    int kick_fd, call_fd;
    /* GET_INFLIGHT_FD: the buffer's size and offset answered (0: 4096, 0), how many
     * descriptors come with it (-1: one), and its file's size (0: offset + size). */
    uint64_t inflight_size, inflight_offset, inflight_file;
    int inflight_nfds;
    unsigned set_inflight;  /* SET_INFLIGHT_FDs received with a descriptor */
    uint32_t vring_base[4]; /* the last SET_VRING_BASE of rings 0-3 */
    unsigned connections;   /* accepted so far */
} be;

static inline void answer_fd(uint32_t req, const void *payload, uint32_t size, const int *fds,
                             unsigned nfds)
{
    struct vhu_header h = {.request = req, .flags = VHU_VERSION | VHU_FLAG_REPLY, .size = size};
    char buf[sizeof(h) + 64];
    memcpy(buf, &h, sizeof(h));
    memcpy(buf + sizeof(h), payload, size);
    struct iovec iov = {buf, sizeof(h) + size};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 2)];
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
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
    ck_assert_int_eq(sendmsg(be.conn, &msg, MSG_NOSIGNAL), (ssize_t)(sizeof(h) + size));
}

/* The GET_INFLIGHT_FD answer: a memfd as the back-end's (libvhost-user's) would be. */
static inline void answer_inflight(struct vhu_inflight *in)
{
    in->mmap_size = be.inflight_size ? be.inflight_size : 4096;
    in->mmap_offset = be.inflight_offset;
    uint64_t file = be.inflight_file ? be.inflight_file : in->mmap_offset + in->mmap_size;
    int fd = memfd_create("fake-inflight", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)file), 0);
    int fds[2] = {fd, fd};
    unsigned n = be.inflight_nfds < 0 ? 1 : (unsigned)be.inflight_nfds;
    answer_fd(VHU_GET_INFLIGHT_FD, in, sizeof(*in), fds, n > 2 ? 2 : n);
    close(fd);
}

static inline bool recv_all(int fd, void *buf, size_t len, int *fds, unsigned *nfds)
{
    size_t got = 0;
    while (got < len) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * 8)];
        } ctl;
        struct iovec iov = {(char *)buf + got, len - got};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = ctl.buf,
                             .msg_controllen = sizeof(ctl)};
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n <= 0)
            return false;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int d;
                memcpy(&d, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (fds && *nfds < 8)
                    fds[(*nfds)++] = d;
                else
                    close(d);
            }
        }
        got += (size_t)n;
    }
    return true;
}

static inline void answer(uint32_t req, const void *payload, uint32_t size)
{
    struct vhu_header h = {.request = req, .flags = VHU_VERSION | VHU_FLAG_REPLY, .size = size};
    ck_assert_int_eq(send(be.conn, &h, sizeof(h), MSG_NOSIGNAL), sizeof(h));
    if (size)
        ck_assert_int_eq(send(be.conn, payload, size, MSG_NOSIGNAL), (ssize_t)size);
}

static inline void *backend_thread(void *arg)
{
    (void)arg;
    be.conn = accept4(be.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (be.conn < 0)
        return NULL;
    __atomic_add_fetch(&be.connections, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        struct vhu_header h;
        union {
            struct vhu_config config;
            struct vhu_vring_state state;
            struct vhu_inflight inflight;
            uint64_t u64;
            uint8_t bytes[512];
        } p;
        int fds[8];
        unsigned nfds = 0;
        if (!recv_all(be.conn, &h, sizeof(h), fds, &nfds) || h.size > sizeof(p) ||
            !recv_all(be.conn, &p, h.size, fds, &nfds))
            break;
        pthread_mutex_lock(&be.lock);
        if (be.nlog < 128)
            be.log[be.nlog++] = h.request;
        if (h.request == VHU_SET_FEATURES)
            be.set_features = p.u64;
        if (h.request == VHU_SET_MEM_TABLE)
            be.mem_fds = nfds;
        if (h.request == VHU_SET_INFLIGHT_FD && nfds == 1)
            be.set_inflight++;
        if (h.request == VHU_SET_VRING_BASE && p.state.index < 4)
            be.vring_base[p.state.index] = p.state.num;
        for (unsigned i = 0; i < nfds; i++) {
            if (h.request == VHU_SET_VRING_KICK && be.kick_fd < 0)
                be.kick_fd = fds[i];
            else if (h.request == VHU_SET_VRING_CALL && be.call_fd < 0)
                be.call_fd = fds[i];
            else
                close(fds[i]);
        }
        pthread_mutex_unlock(&be.lock);
        switch (h.request) {
        case VHU_GET_FEATURES:
            answer(h.request, &be.features, 8);
            break;
        case VHU_GET_PROTOCOL_FEATURES:
            answer(h.request, &be.protocol, 8);
            break;
        case VHU_GET_QUEUE_NUM:
            answer(h.request, &be.queue_num, 8);
            break;
        case VHU_GET_CONFIG:
            if (p.config.offset > sizeof(be.config) ||
                p.config.size > sizeof(be.config) - p.config.offset)
                return NULL;
            memcpy(p.config.payload, be.config + p.config.offset, p.config.size);
            answer(h.request, &p.config, h.size);
            break;
        case VHU_GET_INFLIGHT_FD:
            answer_inflight(&p.inflight);
            break;
        case VHU_GET_VRING_BASE:
            p.state.num = 0;
            answer(h.request, &p.state, sizeof(p.state));
            break;
        default:
            if (h.flags & VHU_FLAG_NEED_ACK) {
                uint64_t ok = 0;
                answer(h.request, &ok, 8);
            }
        }
    }
    return NULL;
}

/* Listens at a fresh path; the thread answers one connection with these features, protocol
 * features, configuration space (GET_CONFIG) and queue count (GET_QUEUE_NUM). */
static inline void backend_start(const char *name, uint64_t features, uint64_t protocol,
                                 const void *config, size_t config_len, uint64_t queue_num)
{
    memset(&be, 0, sizeof(be));
    be.inflight_nfds = -1;
    pthread_mutex_init(&be.lock, NULL);
    be.kick_fd = be.call_fd = be.conn = -1;
    be.features = features;
    be.protocol = protocol;
    be.queue_num = queue_num;
    if (config_len)
        memcpy(be.config, config, config_len < sizeof(be.config) ? config_len : sizeof(be.config));
    snprintf(be.path, sizeof(be.path), "/tmp/ember-test-%s-%d.sock", name, (int)getpid());
    unlink(be.path);
    be.listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", be.path);
    ck_assert_int_eq(bind(be.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(be.listen_fd, 1), 0);
    ck_assert_int_eq(pthread_create(&be.thread, NULL, backend_thread, NULL), 0);
}

/* The back-end goes away: its end of the connection closes. */
static inline void backend_die(void)
{
    shutdown(be.conn, SHUT_RDWR);
    pthread_join(be.thread, NULL);
    be.thread = 0;
}

/* A new back-end on the same socket (after backend_die): the next connection is answered.
 * protocol: what it offers now. */
static inline void backend_revive(uint64_t protocol)
{
    close(be.conn);
    be.conn = -1;
    pthread_mutex_lock(&be.lock);
    be.protocol = protocol;
    be.nlog = 0;
    if (be.kick_fd >= 0)
        close(be.kick_fd);
    if (be.call_fd >= 0)
        close(be.call_fd);
    be.kick_fd = be.call_fd = -1;
    pthread_mutex_unlock(&be.lock);
    ck_assert_int_eq(pthread_create(&be.thread, NULL, backend_thread, NULL), 0);
}

static inline void backend_stop(void)
{
    if (be.thread) {
        if (be.conn >= 0)
            shutdown(be.conn, SHUT_RDWR);
        else
            shutdown(be.listen_fd, SHUT_RDWR);
        pthread_join(be.thread, NULL);
    }
    if (be.conn >= 0)
        close(be.conn);
    close(be.listen_fd);
    if (be.kick_fd >= 0)
        close(be.kick_fd);
    if (be.call_fd >= 0)
        close(be.call_fd);
    unlink(be.path);
    pthread_mutex_destroy(&be.lock);
}

static inline bool logged(uint32_t req)
{
    pthread_mutex_lock(&be.lock);
    bool found = false;
    for (unsigned i = 0; i < be.nlog; i++)
        found |= be.log[i] == req;
    pthread_mutex_unlock(&be.lock);
    return found;
}

#endif
