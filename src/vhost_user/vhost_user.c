#include "vhost_user/vhost_user.h"

#include "util/clock.h"
#include "util/error.h"
#include "util/fdpass.h"
#include "vhost_user/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- checks of what the back-end sends (pure: the fuzzer's target) ------------ */

const char *vhu_request_name(uint32_t request)
{
    switch (request) {
    case VHU_GET_FEATURES:
        return "GET_FEATURES";
    case VHU_SET_FEATURES:
        return "SET_FEATURES";
    case VHU_SET_OWNER:
        return "SET_OWNER";
    case VHU_SET_MEM_TABLE:
        return "SET_MEM_TABLE";
    case VHU_SET_VRING_NUM:
        return "SET_VRING_NUM";
    case VHU_SET_VRING_ADDR:
        return "SET_VRING_ADDR";
    case VHU_SET_VRING_BASE:
        return "SET_VRING_BASE";
    case VHU_GET_VRING_BASE:
        return "GET_VRING_BASE";
    case VHU_SET_VRING_KICK:
        return "SET_VRING_KICK";
    case VHU_SET_VRING_CALL:
        return "SET_VRING_CALL";
    case VHU_GET_PROTOCOL_FEATURES:
        return "GET_PROTOCOL_FEATURES";
    case VHU_SET_PROTOCOL_FEATURES:
        return "SET_PROTOCOL_FEATURES";
    case VHU_GET_QUEUE_NUM:
        return "GET_QUEUE_NUM";
    case VHU_SET_VRING_ENABLE:
        return "SET_VRING_ENABLE";
    case VHU_GET_INFLIGHT_FD:
        return "GET_INFLIGHT_FD";
    case VHU_SET_INFLIGHT_FD:
        return "SET_INFLIGHT_FD";
    case VHU_GET_CONFIG:
        return "GET_CONFIG";
    case VHU_SET_CONFIG:
        return "SET_CONFIG";
    case VHU_SET_BACKEND_REQ_FD:
        return "SET_BACKEND_REQ_FD";
    case VHU_GET_MAX_MEM_SLOTS:
        return "GET_MAX_MEM_SLOTS";
    case VHU_ADD_MEM_REG:
        return "ADD_MEM_REG";
    default:
        return "an unknown request";
    }
}

int vhu_check_reply_header(const struct vhu_header *h, uint32_t request, uint32_t size)
{
    if ((h->flags & VHU_VERSION_MASK) != VHU_VERSION)
        return error_set("protocol version %u, not %u", h->flags & VHU_VERSION_MASK, VHU_VERSION);
    if (!(h->flags & VHU_FLAG_REPLY))
        return error_set("not marked as a reply (flags 0x%x)", h->flags);
    if (h->request != request)
        return error_set("answers request %u instead", h->request);
    if (h->size != size)
        return error_set("%u bytes of payload, not %u", h->size, size);
    return 0;
}

int vhu_check_config_reply(const struct vhu_config *c, uint32_t offset, uint32_t len)
{
    if (c->offset != offset || c->size != len)
        return error_set("reply to GET_CONFIG: bytes %u-%u of the configuration space, not the "
                         "%u-%u asked for",
                         c->offset, c->offset + c->size, offset, offset + len);
    return 0;
}

int vhu_check_vring_base_reply(const struct vhu_vring_state *s, unsigned index)
{
    if (s->index != index)
        return error_set("reply to GET_VRING_BASE: ring %u, not %u", s->index, index);
    if (s->num > 0xffff)
        return error_set("reply to GET_VRING_BASE: position %u of ring %u is not a 16-bit index",
                         s->num, index);
    return 0;
}

int vhu_check_inflight_reply(const struct vhu_inflight *in, int nfds, uint64_t file_size)
{
    if (nfds != 1)
        return error_set("reply to GET_INFLIGHT_FD: %d descriptors, not 1", nfds);
    if (in->mmap_size == 0 || in->mmap_size > VHU_INFLIGHT_MAX)
        return error_set("reply to GET_INFLIGHT_FD: a buffer of %llu bytes (1 to %llu)",
                         (unsigned long long)in->mmap_size, (unsigned long long)VHU_INFLIGHT_MAX);
    if (in->mmap_offset % 4096 || in->mmap_offset > UINT64_MAX - in->mmap_size)
        return error_set("reply to GET_INFLIGHT_FD: offset %llu",
                         (unsigned long long)in->mmap_offset);
    /* Mapping past the file's end would fault (SIGBUS) where the mapping is touched. */
    if (in->mmap_offset + in->mmap_size > file_size)
        return error_set("reply to GET_INFLIGHT_FD: bytes %llu+%llu of a file of %llu",
                         (unsigned long long)in->mmap_offset, (unsigned long long)in->mmap_size,
                         (unsigned long long)file_size);
    return 0;
}

int vhu_check_max_mem_slots(uint64_t slots, unsigned needed)
{
    if (slots == 0 || slots > VHU_MAX_MEM_SLOTS_LIMIT)
        return error_set("reply to GET_MAX_MEM_SLOTS: %llu memory slots (1 to %u)",
                         (unsigned long long)slots, VHU_MAX_MEM_SLOTS_LIMIT);
    if (slots < needed)
        return error_set("the back-end has %llu memory slot(s), guest RAM is %u region(s)",
                         (unsigned long long)slots, needed);
    return 0;
}

int vhu_parse_backend_request(const uint8_t *buf, size_t len, struct vhu_header *h)
{
    if (len < sizeof(*h))
        return 0;
    memcpy(h, buf, sizeof(*h));
    if ((h->flags & VHU_VERSION_MASK) != VHU_VERSION)
        return error_set("a request of protocol version %u, not %u", h->flags & VHU_VERSION_MASK,
                         VHU_VERSION);
    if (h->flags & VHU_FLAG_REPLY)
        return error_set("a reply (flags 0x%x) nobody asked for", h->flags);
    if (h->flags & ~(VHU_VERSION_MASK | VHU_FLAG_NEED_ACK))
        return error_set("request %u with unknown flags 0x%x", h->request, h->flags);
    if (h->size > VHU_BACKEND_MAX_PAYLOAD)
        return error_set("request %u with %u bytes of payload (at most %u)", h->request, h->size,
                         VHU_BACKEND_MAX_PAYLOAD);
    if (len - sizeof(*h) < h->size)
        return 0;
    return (int)(sizeof(*h) + h->size);
}

int vhu_check_ack(uint64_t ack, uint32_t request)
{
    if (ack != 0)
        return error_set("%s refused (status %llu)", vhu_request_name(request),
                         (unsigned long long)ack);
    return 0;
}

/* ---- the socket --------------------------------------------------------------- */

static int64_t now_ms(void)
{
    return (int64_t)(monotonic_ns() / 1000000);
}

/* A protocol error: the connection is no longer usable. */
static int broken(struct vhost_user *vu)
{
    vu->broken = true;
    return error_prefix("vhost-user back-end of %s", vu->name);
}

/* Waits for the socket to become ready for `events` until deadline. */
static int wait_ready(struct vhost_user *vu, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return error_set("no answer within %d ms", vu->timeout_ms);
        struct pollfd p = {.fd = vu->fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return error_errno("poll");
        if (r > 0)
            return 0;
    }
}

static int send_msg(struct vhost_user *vu, uint32_t request, uint32_t flags, const void *payload,
                    uint32_t size, const int *fds, unsigned nfds)
{
    struct vhu_header h = {.request = request, .flags = VHU_VERSION | flags, .size = size};
    struct iovec iov[2] = {{.iov_base = &h, .iov_len = sizeof(h)},
                           {.iov_base = (void *)payload, .iov_len = size}};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_MEM_REGIONS)];
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
    int64_t deadline = now_ms() + vu->timeout_ms;
    size_t left = sizeof(h) + size;
    while (left) {
        /* MSG_NOSIGNAL: a back-end that went away is an error, not a SIGPIPE. */
        ssize_t n = sendmsg(vu->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(vu, POLLOUT, deadline) < 0)
                return error_prefix("sending %s", vhu_request_name(request));
            continue;
        }
        if (n < 0)
            return error_errno("sending %s", vhu_request_name(request));
        left -= (size_t)n;
        /* The descriptors went with the first byte; the rest of the message follows. */
        msg.msg_control = NULL;
        msg.msg_controllen = 0;
        while (n > 0 && msg.msg_iovlen) {
            size_t take = (size_t)n < msg.msg_iov->iov_len ? (size_t)n : msg.msg_iov->iov_len;
            msg.msg_iov->iov_base = (char *)msg.msg_iov->iov_base + take;
            msg.msg_iov->iov_len -= take;
            n -= (ssize_t)take;
            if (msg.msg_iov->iov_len == 0) {
                msg.msg_iov++;
                msg.msg_iovlen--;
            }
        }
    }
    return 0;
}

/* Reads exactly len bytes. Descriptors that come along are closed: no reply carries one,
 * except where keep_fd is given (GET_INFLIGHT_FD), which takes one (*keep_fd starts at -1);
 * *nkept counts every descriptor that came. */
static int recv_exact_fd(struct vhost_user *vu, void *buf, size_t len, int64_t deadline,
                         int *keep_fd, int *nkept)
{
    size_t got = 0;
    while (got < len) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
        } ctl;
        struct iovec iov = {.iov_base = (char *)buf + got, .iov_len = len - got};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = ctl.buf,
                             .msg_controllen = sizeof(ctl)};
        ssize_t n = recvmsg(vu->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(vu, POLLIN, deadline) < 0)
                return -1;
            continue;
        }
        if (n < 0)
            return error_errno("receiving");
        unsigned fds = fdpass_take(&msg, keep_fd);
        if (msg.msg_flags & MSG_CTRUNC)
            return error_set("the reply carries too many descriptors");
        if (keep_fd)
            *nkept += (int)fds;
        else if (fds)
            return error_set("the reply carries descriptors, which none should");
        if (n == 0)
            return error_set("the back-end closed its socket");
        got += (size_t)n;
    }
    return 0;
}

static int recv_exact(struct vhost_user *vu, void *buf, size_t len, int64_t deadline)
{
    return recv_exact_fd(vu, buf, len, deadline, NULL, NULL);
}

/* The reply to request, payload exactly size bytes into out. */
static int recv_reply(struct vhost_user *vu, uint32_t request, void *out, uint32_t size)
{
    int64_t deadline = now_ms() + vu->timeout_ms;
    struct vhu_header h;
    if (recv_exact(vu, &h, sizeof(h), deadline) < 0 ||
        vhu_check_reply_header(&h, request, size) < 0)
        return error_prefix("reply to %s", vhu_request_name(request));
    if (size && recv_exact(vu, out, size, deadline) < 0)
        return error_prefix("reply to %s", vhu_request_name(request));
    return 0;
}

static bool reply_ack(const struct vhost_user *vu)
{
    return vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_REPLY_ACK);
}

/* A message without an answer of its own: acknowledged when the back-end can. */
static int request(struct vhost_user *vu, uint32_t req, const void *payload, uint32_t size,
                   const int *fds, unsigned nfds)
{
    if (vu->broken || vu->fd < 0)
        return error_set("vhost-user back-end of %s: the connection is broken", vu->name);
    bool ack = reply_ack(vu);
    if (send_msg(vu, req, ack ? VHU_FLAG_NEED_ACK : 0, payload, size, fds, nfds) < 0)
        return broken(vu);
    if (!ack)
        return 0;
    uint64_t status;
    if (recv_reply(vu, req, &status, sizeof(status)) < 0)
        return broken(vu);
    /* A refusal is the back-end's answer, in step with us: the connection stays usable. */
    if (vhu_check_ack(status, req) < 0)
        return error_prefix("vhost-user back-end of %s", vu->name);
    return 0;
}

/* A message with an answer. */
static int query(struct vhost_user *vu, uint32_t req, const void *payload, uint32_t size, void *out,
                 uint32_t out_size)
{
    if (vu->broken || vu->fd < 0)
        return error_set("vhost-user back-end of %s: the connection is broken", vu->name);
    if (send_msg(vu, req, 0, payload, size, NULL, 0) < 0 || recv_reply(vu, req, out, out_size) < 0)
        return broken(vu);
    return 0;
}

/* ---- connection ------------------------------------------------------------- */

static void init(struct vhost_user *vu, const char *name, int timeout_ms)
{
    memset(vu, 0, sizeof(*vu));
    vu->fd = -1;
    vu->timeout_ms = timeout_ms > 0 ? timeout_ms : VHOST_USER_TIMEOUT_MS;
    snprintf(vu->name, sizeof(vu->name), "%s", name);
}

int vhost_user_from_fd(struct vhost_user *vu, const char *name, int fd, int timeout_ms)
{
    init(vu, name, timeout_ms);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        error_errno("vhost-user socket of %s", name);
        close(fd);
        return -1;
    }
    vu->fd = fd;
    return 0;
}

int vhost_user_connect(struct vhost_user *vu, const char *name, const char *path, int timeout_ms)
{
    init(vu, name, timeout_ms);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return error_set("%s: socket path '%s' is longer than %zu bytes", name, path,
                         sizeof(sa.sun_path) - 1);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno("%s: socket", name);
    /* A back-end whose backlog is full makes connect wait: bounded as the replies are. */
    struct timeval tv = {.tv_sec = vu->timeout_ms / 1000,
                         .tv_usec = (vu->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        error_errno("%s: cannot connect to the vhost-user back-end at '%s'", name, path);
        close(fd);
        return -1;
    }
    return vhost_user_from_fd(vu, name, fd, timeout_ms);
}

void vhost_user_close(struct vhost_user *vu)
{
    if (vu->fd >= 0)
        close(vu->fd);
    vu->fd = -1;
    vu->broken = true;
}

int vhost_user_fd(const struct vhost_user *vu)
{
    return vu->fd;
}

int vhost_user_check_idle(struct vhost_user *vu)
{
    if (vu->broken || vu->fd < 0)
        return error_set("the connection is broken");
    char c;
    struct iovec iov = {.iov_base = &c, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(vu->fd, &msg, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    vu->broken = true;
    if (n < 0)
        return error_errno("its socket failed");
    if (n == 0)
        return error_set("it closed its socket");
    /* Nothing comes unasked on this socket (a back-end's own requests go on its channel). */
    return error_set("it sent a message nobody asked for");
}

bool vhost_user_has_protocol(const struct vhost_user *vu, unsigned bit)
{
    return (vu->protocol_features >> bit) & 1;
}

int vhost_user_handshake(struct vhost_user *vu, uint64_t wanted_protocol)
{
    if (vhost_user_get_features(vu, &vu->features) < 0)
        return -1;
    if (vu->features & (1ULL << VHOST_USER_F_PROTOCOL_FEATURES)) {
        uint64_t offered;
        if (vhost_user_get_protocol_features(vu, &offered) < 0 ||
            vhost_user_set_protocol_features(vu, offered & wanted_protocol) < 0)
            return -1;
    }
    return vhost_user_set_owner(vu);
}

/* ---- the messages ------------------------------------------------------------ */

int vhost_user_get_features(struct vhost_user *vu, uint64_t *features)
{
    return query(vu, VHU_GET_FEATURES, NULL, 0, features, sizeof(*features));
}

int vhost_user_set_features(struct vhost_user *vu, uint64_t features)
{
    features |= vu->features & (1ULL << VHOST_USER_F_PROTOCOL_FEATURES);
    return request(vu, VHU_SET_FEATURES, &features, sizeof(features), NULL, 0);
}

int vhost_user_get_protocol_features(struct vhost_user *vu, uint64_t *features)
{
    return query(vu, VHU_GET_PROTOCOL_FEATURES, NULL, 0, features, sizeof(*features));
}

int vhost_user_set_protocol_features(struct vhost_user *vu, uint64_t features)
{
    /* Not acknowledged: REPLY_ACK itself is being agreed on here. */
    vu->protocol_features = 0;
    if (request(vu, VHU_SET_PROTOCOL_FEATURES, &features, sizeof(features), NULL, 0) < 0)
        return -1;
    vu->protocol_features = features;
    return 0;
}

int vhost_user_set_owner(struct vhost_user *vu)
{
    return request(vu, VHU_SET_OWNER, NULL, 0, NULL, 0);
}

int vhost_user_get_queue_num(struct vhost_user *vu, uint64_t *num)
{
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_MQ))
        return error_set("vhost-user back-end of %s: no multiqueue (PROTOCOL_F_MQ)", vu->name);
    if (query(vu, VHU_GET_QUEUE_NUM, NULL, 0, num, sizeof(*num)) < 0)
        return -1;
    if (*num == 0 || *num > 0xffff)
        return error_set("vhost-user back-end of %s: %llu queues", vu->name,
                         (unsigned long long)*num);
    return 0;
}

static int check_config_range(struct vhost_user *vu, uint32_t offset, uint32_t len)
{
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_CONFIG))
        return error_set("vhost-user back-end of %s does not give its configuration space "
                         "(PROTOCOL_F_CONFIG)",
                         vu->name);
    if (len == 0 || len > VHOST_USER_MAX_CONFIG || offset > VHOST_USER_MAX_CONFIG - len)
        return error_set("%s: configuration space bytes %u+%u out of range", vu->name, offset, len);
    return 0;
}

int vhost_user_get_config(struct vhost_user *vu, uint32_t offset, void *buf, uint32_t len)
{
    if (check_config_range(vu, offset, len) < 0)
        return -1;
    struct vhu_config c = {.offset = offset, .size = len};
    uint32_t size = VHU_CONFIG_HEADER + len;
    if (query(vu, VHU_GET_CONFIG, &c, size, &c, size) < 0)
        return -1;
    if (vhu_check_config_reply(&c, offset, len) < 0)
        return broken(vu);
    memcpy(buf, c.payload, len);
    return 0;
}

int vhost_user_set_config(struct vhost_user *vu, uint32_t offset, const void *buf, uint32_t len)
{
    if (check_config_range(vu, offset, len) < 0)
        return -1;
    struct vhu_config c = {.offset = offset, .size = len};
    memcpy(c.payload, buf, len);
    return request(vu, VHU_SET_CONFIG, &c, VHU_CONFIG_HEADER + len, NULL, 0);
}

int vhost_user_set_mem_table(struct vhost_user *vu, const struct guest_memory *mem)
{
    if (!mem->has_memfd)
        return error_set("%s: guest memory is not shared (a memfd), which a vhost-user back-end "
                         "needs",
                         vu->name);
    if (mem->nregions == 0 || mem->nregions > VHU_MAX_MEM_REGIONS)
        return error_set("%s: %u memory regions", vu->name, mem->nregions);
    struct vhu_mem_table t = {.nregions = mem->nregions};
    int fds[VHU_MAX_MEM_REGIONS];
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        t.regions[i] = (struct vhu_mem_region){.guest_addr = r->gpa,
                                               .size = r->size,
                                               .user_addr = (uintptr_t)r->hva,
                                               .mmap_offset = (uint64_t)(r->hva - mem->base)};
        fds[i] = mem->memfd;
    }
    uint32_t size = (uint32_t)(offsetof(struct vhu_mem_table, regions) +
                               mem->nregions * sizeof(struct vhu_mem_region));
    return request(vu, VHU_SET_MEM_TABLE, &t, size, fds, mem->nregions);
}

int vhost_user_get_max_mem_slots(struct vhost_user *vu, unsigned needed, uint64_t *slots)
{
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS))
        return error_set("vhost-user back-end of %s: no CONFIGURE_MEM_SLOTS", vu->name);
    if (query(vu, VHU_GET_MAX_MEM_SLOTS, NULL, 0, slots, sizeof(*slots)) < 0)
        return -1;
    if (vhu_check_max_mem_slots(*slots, needed) < 0)
        return error_prefix("vhost-user back-end of %s", vu->name);
    vu->max_mem_slots = *slots;
    return 0;
}

static bool same_region(const struct guest_region *a, const struct guest_region *b)
{
    return a->gpa == b->gpa && a->size == b->size && a->hva == b->hva;
}

int vhost_user_give_memory(struct vhost_user *vu, const struct guest_memory *mem, bool *by_region)
{
    *by_region = false;
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS))
        return vhost_user_set_mem_table(vu, mem);
    *by_region = true;
    if (!mem->has_memfd)
        return error_set("%s: guest memory is not shared (a memfd), which a vhost-user back-end "
                         "needs",
                         vu->name);
    if (mem->nregions == 0 || mem->nregions > GUEST_MEM_MAX_REGIONS)
        return error_set("%s: %u memory regions", vu->name, mem->nregions);
    uint64_t slots;
    if (!vu->max_mem_slots && vhost_user_get_max_mem_slots(vu, mem->nregions, &slots) < 0)
        return -1;
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        if (i < vu->nmem_added) {
            /* Given on this connection already (an earlier DRIVER_OK): the back-end keeps its
             * regions across a reset of the rings. */
            if (!same_region(r, &vu->mem_added[i]))
                return error_set("%s: guest memory region %u changed, which it never does",
                                 vu->name, i);
            continue;
        }
        struct vhu_mem_region_msg m = {.region = {.guest_addr = r->gpa,
                                                  .size = r->size,
                                                  .user_addr = (uintptr_t)r->hva,
                                                  .mmap_offset = (uint64_t)(r->hva - mem->base)}};
        if (request(vu, VHU_ADD_MEM_REG, &m, sizeof(m), &mem->memfd, 1) < 0)
            return error_prefix("region %u", i);
        vu->mem_added[i] = *r;
        vu->nmem_added = i + 1;
    }
    return 0;
}

static int vring_state(struct vhost_user *vu, uint32_t req, unsigned index, unsigned num)
{
    struct vhu_vring_state s = {.index = index, .num = num};
    return request(vu, req, &s, sizeof(s), NULL, 0);
}

int vhost_user_set_vring_num(struct vhost_user *vu, unsigned index, unsigned num)
{
    return vring_state(vu, VHU_SET_VRING_NUM, index, num);
}

int vhost_user_set_vring_base(struct vhost_user *vu, unsigned index, unsigned base)
{
    return vring_state(vu, VHU_SET_VRING_BASE, index, base);
}

int vhost_user_set_vring_enable(struct vhost_user *vu, unsigned index, bool enable)
{
    return vring_state(vu, VHU_SET_VRING_ENABLE, index, enable);
}

int vhost_user_set_vring_addr(struct vhost_user *vu, unsigned index, const void *desc,
                              const void *avail, const void *used)
{
    struct vhu_vring_addr a = {.index = index,
                               .desc = (uintptr_t)desc,
                               .used = (uintptr_t)used,
                               .avail = (uintptr_t)avail};
    return request(vu, VHU_SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
}

int vhost_user_get_vring_base(struct vhost_user *vu, unsigned index, unsigned *base)
{
    struct vhu_vring_state s = {.index = index};
    if (query(vu, VHU_GET_VRING_BASE, &s, sizeof(s), &s, sizeof(s)) < 0)
        return -1;
    if (vhu_check_vring_base_reply(&s, index) < 0)
        return broken(vu);
    *base = s.num;
    return 0;
}

static int vring_fd(struct vhost_user *vu, uint32_t req, unsigned index, int fd)
{
    if (index > VHU_VRING_INDEX_MASK)
        return error_set("%s: ring %u", vu->name, index);
    uint64_t v = index | (fd < 0 ? VHU_VRING_NOFD : 0);
    return request(vu, req, &v, sizeof(v), fd < 0 ? NULL : &fd, fd < 0 ? 0 : 1);
}

int vhost_user_set_vring_kick(struct vhost_user *vu, unsigned index, int fd)
{
    return vring_fd(vu, VHU_SET_VRING_KICK, index, fd);
}

int vhost_user_set_vring_call(struct vhost_user *vu, unsigned index, int fd)
{
    return vring_fd(vu, VHU_SET_VRING_CALL, index, fd);
}

/* ---- inflight tracking (PROTOCOL_F_INFLIGHT_SHMFD) ----------------------------- */

int vhost_user_get_inflight_fd(struct vhost_user *vu, unsigned nqueues, unsigned queue_size,
                               struct vhost_user_inflight *out)
{
    out->fd = -1;
    out->addr = NULL;
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD))
        return error_set("vhost-user back-end of %s: no INFLIGHT_SHMFD", vu->name);
    if (vu->broken || vu->fd < 0)
        return error_set("vhost-user back-end of %s: the connection is broken", vu->name);
    struct vhu_inflight in = {.num_queues = (uint16_t)nqueues, .queue_size = (uint16_t)queue_size};
    if (send_msg(vu, VHU_GET_INFLIGHT_FD, 0, &in, sizeof(in), NULL, 0) < 0)
        return broken(vu);
    int64_t deadline = now_ms() + vu->timeout_ms;
    struct vhu_header h;
    int fd = -1, nfds = 0;
    /* The descriptor comes with the message's first byte, the header's. */
    if (recv_exact_fd(vu, &h, sizeof(h), deadline, &fd, &nfds) < 0 ||
        vhu_check_reply_header(&h, VHU_GET_INFLIGHT_FD, sizeof(in)) < 0 ||
        recv_exact_fd(vu, &in, sizeof(in), deadline, &fd, &nfds) < 0) {
        if (fd >= 0)
            close(fd);
        error_prefix("reply to GET_INFLIGHT_FD");
        return broken(vu);
    }
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) < 0) {
        error_errno("the inflight buffer's descriptor");
        close(fd);
        return broken(vu);
    }
    if (vhu_check_inflight_reply(&in, nfds, fd >= 0 ? (uint64_t)st.st_size : 0) < 0) {
        if (fd >= 0)
            close(fd);
        return broken(vu);
    }
    void *addr =
        mmap(NULL, in.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)in.mmap_offset);
    if (addr == MAP_FAILED) {
        error_errno("vhost-user back-end of %s: mapping its inflight buffer (%llu bytes)", vu->name,
                    (unsigned long long)in.mmap_size);
        close(fd);
        return -1;
    }
    *out = (struct vhost_user_inflight){.fd = fd,
                                        .addr = addr,
                                        .size = in.mmap_size,
                                        .offset = in.mmap_offset,
                                        .nqueues = nqueues,
                                        .queue_size = queue_size};
    return 0;
}

int vhost_user_set_inflight_fd(struct vhost_user *vu, const struct vhost_user_inflight *in)
{
    struct vhu_inflight m = {.mmap_size = in->size,
                             .mmap_offset = in->offset,
                             .num_queues = (uint16_t)in->nqueues,
                             .queue_size = (uint16_t)in->queue_size};
    return request(vu, VHU_SET_INFLIGHT_FD, &m, sizeof(m), &in->fd, 1);
}

void vhost_user_inflight_free(struct vhost_user_inflight *in)
{
    if (in->addr)
        munmap(in->addr, in->size);
    if (in->fd >= 0)
        close(in->fd);
    in->addr = NULL;
    in->fd = -1;
}

/* ---- the back-end's request channel (PROTOCOL_F_BACKEND_REQ) ------------------- */

int vhost_user_open_channel(struct vhost_user *vu, struct vhost_user_channel *ch)
{
    ch->fd = -1;
    ch->have = 0;
    if (!vhost_user_has_protocol(vu, VHOST_USER_PROTOCOL_F_BACKEND_REQ))
        return error_set("vhost-user back-end of %s: no BACKEND_REQ", vu->name);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return error_errno("%s: the back-end's request channel (socketpair)", vu->name);
    /* The back-end's end goes over the socket; ember keeps no copy of it, so that the channel
     * reads as closed once the back-end is gone. */
    int r = request(vu, VHU_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1);
    close(sv[1]);
    if (r < 0) {
        close(sv[0]);
        return -1;
    }
    ch->fd = sv[0];
    return 0;
}

void vhost_user_channel_close(struct vhost_user_channel *ch)
{
    if (ch->fd >= 0)
        close(ch->fd);
    ch->fd = -1;
    ch->have = 0;
}

/* An answer to the back-end's request: u64 0 for success, 1 for a failure. Never waits: a
 * back-end that does not read its answers breaks the channel. */
static int channel_reply(struct vhost_user_channel *ch, uint32_t request, uint64_t status)
{
    struct {
        struct vhu_header h;
        uint64_t status;
    } __attribute__((packed))
    m = {.h = {.request = request, .flags = VHU_VERSION | VHU_FLAG_REPLY, .size = sizeof(uint64_t)},
         .status = status};
    struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    do {
        n = sendmsg(ch->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return error_errno("answering its request %u", request);
    if ((size_t)n != sizeof(m))
        return error_set("it does not read the answers it asks for");
    return 0;
}

static void refuse(struct vhost_user_channel_stats *st, const char *fmt, uint32_t request)
{
    if (!st->refused++)
        snprintf(st->why, sizeof(st->why), fmt, request);
}

int vhost_user_channel_serve(struct vhost_user_channel *ch, int (*config_changed)(void *opaque),
                             void *opaque, struct vhost_user_channel_stats *st)
{
    memset(st, 0, sizeof(*st));
    if (ch->fd < 0)
        return error_set("the channel is closed");
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * VHU_MAX_FDS)];
    } ctl;
    struct iovec iov = {.iov_base = ch->buf + ch->have, .iov_len = sizeof(ch->buf) - ch->have};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl)};
    ssize_t n = recvmsg(ch->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n < 0)
        return error_errno("its request channel failed");
    unsigned fds = fdpass_take(&msg, NULL);
    /* No request ember serves carries one (BACKEND_SEND_FD is never agreed on). */
    if (fds || (msg.msg_flags & MSG_CTRUNC))
        return error_set("it attached descriptors to a request on its channel");
    if (n == 0) {
        st->closed = true;
        return error_set("it closed its request channel");
    }
    ch->have += (uint32_t)n;

    /* The whole requests read: the configuration is read again once for all of them. */
    size_t off = 0, end = 0;
    struct vhu_header h;
    int len;
    while ((len = vhu_parse_backend_request(ch->buf + end, ch->have - end, &h)) > 0) {
        if (h.request == VHU_BACKEND_CONFIG_CHANGE_MSG && h.size == 0)
            st->config_changes++;
        st->requests++;
        end += (size_t)len;
    }
    if (len < 0)
        return error_prefix("on its request channel");
    int status = 0;
    if (st->config_changes)
        status = config_changed ? config_changed(opaque) : -1;
    for (off = 0; off < end; off += sizeof(h) + h.size) {
        memcpy(&h, ch->buf + off, sizeof(h));
        uint64_t answer = 0;
        if (h.request == VHU_BACKEND_CONFIG_CHANGE_MSG && h.size == 0) {
            if (!config_changed)
                refuse(st, "CONFIG_CHANGE_MSG (%u) for a device whose configuration is ember's",
                       h.request);
            answer = status < 0;
        } else if (h.request == VHU_BACKEND_CONFIG_CHANGE_MSG) {
            refuse(st, "CONFIG_CHANGE_MSG (%u) with a payload", h.request);
            answer = 1;
        } else {
            refuse(st, "request %u, which ember does not serve", h.request);
            answer = 1;
        }
        if ((h.flags & VHU_FLAG_NEED_ACK) && channel_reply(ch, h.request, answer) < 0)
            return -1;
    }
    memmove(ch->buf, ch->buf + end, ch->have - end);
    ch->have -= (uint32_t)end;
    return 0;
}
