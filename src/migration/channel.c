#include "migration/channel.h"

#include "util/error.h"
#include "util/fdpass.h"
#include "util/ratelimit.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

uint64_t migration_now_ms(void)
{
    return monotonic_ns() / 1000000;
}

int migration_parse_url(const char *url, struct migration_url *u)
{
    memset(u, 0, sizeof(*u));
    if (!strncmp(url, "unix:", 5)) {
        const char *path = url + 5;
        if (!*path || strlen(path) >= sizeof(u->path))
            return error_set("migration URL '%s': a unix socket path of 1 to %zu bytes", url,
                             sizeof(u->path) - 1);
        snprintf(u->path, sizeof(u->path), "%s", path);
        return 0;
    }
    if (!strncmp(url, "tcp:", 4)) {
        const char *hp = url + 4, *colon;
        u->tcp = true;
        if (*hp == '[') {
            const char *end = strchr(hp, ']');
            if (!end || end == hp + 1 || end[1] != ':')
                return error_set("migration URL '%s': tcp:[ADDRESS]:PORT", url);
            if ((size_t)(end - hp - 1) >= sizeof(u->host))
                return error_set("migration URL '%s': host too long", url);
            memcpy(u->host, hp + 1, (size_t)(end - hp - 1));
            colon = end + 1;
        } else {
            colon = strrchr(hp, ':');
            if (!colon || colon == hp || (size_t)(colon - hp) >= sizeof(u->host))
                return error_set("migration URL '%s': tcp:HOST:PORT", url);
            memcpy(u->host, hp, (size_t)(colon - hp));
        }
        const char *port = colon + 1;
        char *end;
        long p = strtol(port, &end, 10);
        if (!*port || *end || p <= 0 || p > 65535)
            return error_set("migration URL '%s': port 1 to 65535", url);
        snprintf(u->port, sizeof(u->port), "%ld", p);
        return 0;
    }
    return error_set("migration URL '%s': unix:PATH or tcp:HOST:PORT", url);
}

/* Waits until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, uint64_t deadline_ms, const char *what)
{
    for (;;) {
        uint64_t now = migration_now_ms();
        if (now >= deadline_ms)
            return error_set("migration: timed out %s", what);
        struct pollfd p = {.fd = fd, .events = events};
        uint64_t left = deadline_ms - now;
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r < 0 && errno != EINTR)
            return error_errno("migration: poll");
        if (r > 0) {
            if ((p.revents & (POLLERR | POLLNVAL)) ||
                ((p.revents & POLLHUP) && !(p.revents & POLLIN)))
                return error_set("migration: the peer closed the connection %s", what);
            return 0;
        }
    }
}

static int unix_addr(const struct migration_url *u, struct sockaddr_un *a)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, u->path, strlen(u->path));
    return 0;
}

static int connect_one(int domain, const struct sockaddr *addr, socklen_t len, uint64_t deadline_ms)
{
    int fd = socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno("migration: socket");
    if (connect(fd, addr, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        error_errno("migration: connect");
        close(fd);
        errno = e;
        return -1;
    }
    /* Connected, or refused (SO_ERROR says which): a refusal is retried by the caller. */
    for (;;) {
        uint64_t now = migration_now_ms();
        if (now >= deadline_ms) {
            close(fd);
            errno = ETIMEDOUT;
            return error_set("migration: timed out connecting");
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        uint64_t left = deadline_ms - now;
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r > 0 || (r < 0 && errno != EINTR))
            break;
    }
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0 || err) {
        int e = err ? err : errno;
        errno = e;
        error_errno("migration: connect");
        close(fd);
        errno = e;
        return -1;
    }
    if (domain != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

static int connect_once(const struct migration_url *u, uint64_t deadline_ms);

int migration_connect(const struct migration_url *u, uint64_t deadline_ms)
{
    /* The destination may not listen yet (both sides are started together): try again
     * until the deadline while nobody is there. */
    for (;;) {
        int fd = connect_once(u, deadline_ms);
        if (fd >= 0 || (errno != ECONNREFUSED && errno != ENOENT) ||
            migration_now_ms() + 20 >= deadline_ms)
            return fd;
        struct timespec pause = {.tv_nsec = 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static int connect_once(const struct migration_url *u, uint64_t deadline_ms)
{
    if (!u->tcp) {
        struct sockaddr_un a;
        unix_addr(u, &a);
        int fd = connect_one(AF_UNIX, (struct sockaddr *)&a, sizeof(a), deadline_ms);
        return fd < 0 ? error_prefix("unix:%s", u->path) : fd;
    }
    /* Numeric addresses only: no name service inside the main thread's filter. */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_NUMERICHOST};
    struct addrinfo *res;
    int gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai)
        return error_set("migration: cannot resolve '%s': %s", u->host, gai_strerror(gai));
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = connect_one(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline_ms);
    freeaddrinfo(res);
    return fd < 0 ? error_prefix("tcp:%s:%s", u->host, u->port) : fd;
}

int migration_listen(const struct migration_url *u)
{
    int fd = -1;
    if (!u->tcp) {
        struct sockaddr_un a;
        unix_addr(u, &a);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return error_errno("migration: socket");
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1) < 0) {
            error_errno("migration: cannot listen on unix:%s", u->path);
            close(fd);
            return -1;
        }
        return fd;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai)
        return error_set("migration: cannot resolve '%s': %s", u->host, gai_strerror(gai));
    error_set("migration: no address for '%s'", u->host);
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1) < 0) {
            error_errno("migration: cannot listen on tcp:%s:%s", u->host, u->port);
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

int migration_accept(int listen_fd, const struct migration_url *u, uint64_t deadline_ms)
{
    int r = wait_fd(listen_fd, POLLIN, deadline_ms, "waiting for the source to connect");
    int fd = r < 0 ? -1 : accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (r == 0 && fd < 0)
        error_errno("migration: accept");
    close(listen_fd);
    if (!u->tcp)
        unlink(u->path);
    if (fd >= 0 && u->tcp) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

int migration_send(int fd, uint32_t type, const void *a, size_t alen, const void *b, size_t blen,
                   int pass_fd, uint64_t deadline_ms)
{
    struct migration_header h = {
        .magic = MIGRATION_MAGIC, .type = type, .length = (uint64_t)alen + blen};
    struct iovec iov[3] = {{&h, sizeof(h)}, {(void *)a, alen}, {(void *)b, blen}};
    int niov = 3;
    struct iovec *cur = iov;
    bool fd_sent = pass_fd < 0;
    while (niov > 0) {
        if (cur->iov_len == 0) {
            cur++;
            niov--;
            continue;
        }
        union fdpass_control ctl;
        struct msghdr msg = {.msg_iov = cur, .msg_iovlen = (size_t)niov};
        if (!fd_sent)
            fdpass_attach(&msg, &ctl, pass_fd);
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (wait_fd(fd, POLLOUT, deadline_ms, "sending") < 0)
                    return -1;
                continue;
            }
            return error_errno("migration: send");
        }
        fd_sent = true;
        size_t done = (size_t)n;
        while (niov > 0 && done >= cur->iov_len) {
            done -= cur->iov_len;
            cur++;
            niov--;
        }
        if (niov > 0) {
            cur->iov_base = (char *)cur->iov_base + done;
            cur->iov_len -= done;
        }
    }
    return 0;
}

static int recv_some(int fd, void *buf, size_t len, int *received_fd, uint64_t deadline_ms)
{
    size_t done = 0;
    while (done < len) {
        union fdpass_control ctl;
        struct iovec iov = {(char *)buf + done, len - done};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof(ctl.buf);
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (wait_fd(fd, POLLIN, deadline_ms, "receiving") < 0)
                    return -1;
                continue;
            }
            return error_errno("migration: receive");
        }
        if (n == 0)
            return error_set("migration: the peer closed the connection");
        /* One descriptor, and only where one is expected. */
        fdpass_take(&msg, received_fd);
        done += (size_t)n;
    }
    return 0;
}

int migration_recv_exact(int fd, void *buf, size_t len, uint64_t deadline_ms)
{
    return recv_some(fd, buf, len, NULL, deadline_ms);
}

int migration_recv_header(int fd, struct migration_header *h, int *received_fd,
                          uint64_t deadline_ms)
{
    if (received_fd)
        *received_fd = -1;
    if (recv_some(fd, h, sizeof(*h), received_fd, deadline_ms) < 0)
        return -1;
    if (h->magic != MIGRATION_MAGIC) {
        if (received_fd && *received_fd >= 0) {
            close(*received_fd);
            *received_fd = -1;
        }
        return error_set("migration: not an ember migration stream (magic 0x%08x)", h->magic);
    }
    return 0;
}

int migration_recv_error(int fd, uint64_t length, char *buf, size_t cap, uint64_t deadline_ms)
{
    size_t keep = length < cap - 1 ? (size_t)length : cap - 1;
    if (migration_recv_exact(fd, buf, keep, deadline_ms) < 0)
        return -1;
    buf[keep] = '\0';
    for (uint64_t left = length - keep; left > 0;) {
        char sink[256];
        size_t n = left > sizeof(sink) ? sizeof(sink) : (size_t)left;
        if (migration_recv_exact(fd, sink, n, deadline_ms) < 0)
            return -1;
        left -= n;
    }
    for (size_t i = 0; i < keep; i++) {
        if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
            buf[i] = '?';
    }
    return 0;
}
