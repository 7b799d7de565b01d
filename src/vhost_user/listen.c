/* Server mode of the vhost-user front-end: ember makes the socket and the back-end connects.
 * The peer is as hostile as in client mode: waits are bounded, one connection is served, and
 * the socket file ember made is the only one it removes. */
#include "vhost_user/vhost_user.h"

#include "util/clock.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define REFUSE_MAX 16

static int make_address(struct sockaddr_un *sa, const char *name, const char *path)
{
    *sa = (struct sockaddr_un){.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n == 0)
        return error_set("%s: the vhost-user socket path is empty", name);
    if (n >= sizeof(sa->sun_path))
        return error_set("%s: socket path '%s' is longer than %zu bytes", name, path,
                         sizeof(sa->sun_path) - 1);
    memcpy(sa->sun_path, path, n + 1);
    return 0;
}

/* Something at path already: a socket nobody listens on any more is removed; anything else
 * is refused (ember never removes what is not a stale socket). */
static int clear_stale(const struct sockaddr_un *sa, const char *name, const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : error_errno("%s: %s", name, path);
    if (!S_ISSOCK(st.st_mode))
        return error_set("%s: '%s' exists and is not a socket: ember listens on a path it "
                         "creates",
                         name, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return error_errno("%s: socket", name);
    int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int err = errno;
    close(fd);
    if (r == 0 || err == EAGAIN || err == EINPROGRESS)
        return error_set("%s: another process listens on '%s'", name, path);
    if (err != ECONNREFUSED)
        return error_set("%s: '%s': %s", name, path, strerror(err));
    if (unlink(path) < 0 && errno != ENOENT)
        return error_errno("%s: removing the stale socket '%s'", name, path);
    return 0;
}

int vhost_user_listen(struct vhost_user_listener *l, const char *name, const char *path)
{
    *l = (struct vhost_user_listener){.fd = -1};
    struct sockaddr_un sa;
    if (make_address(&sa, name, path) < 0 || clear_stale(&sa, name, path) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return error_errno("%s: socket", name);
    struct stat st;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        error_errno("%s: cannot listen on '%s'", name, path);
        close(fd);
        return -1;
    }
    if (listen(fd, 1) < 0 || stat(path, &st) < 0) {
        error_errno("%s: cannot listen on '%s'", name, path);
        close(fd);
        unlink(path);
        return -1;
    }
    l->fd = fd;
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    snprintf(l->path, sizeof(l->path), "%s", path);
    return 0;
}

int vhost_user_accept(struct vhost_user *vu, const char *name, struct vhost_user_listener *l,
                      int wait_ms, int timeout_ms)
{
    if (l->fd < 0)
        return error_set("%s: not listening", name);
    uint64_t deadline = monotonic_ns() + (uint64_t)(wait_ms > 0 ? wait_ms : 0) * 1000000;
    for (;;) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0)
            return vhost_user_from_fd(vu, name, fd, timeout_ms);
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
            return error_errno("%s: accepting on '%s'", name, l->path);
        uint64_t now = monotonic_ns();
        if (now >= deadline) {
            errno = EAGAIN;
            return error_set("%s: no vhost-user back-end connected to '%s'%s", name, l->path,
                             wait_ms > 0 ? " in time" : "");
        }
        struct pollfd p = {.fd = l->fd, .events = POLLIN};
        int left = (int)((deadline - now + 999999) / 1000000);
        if (poll(&p, 1, left) < 0 && errno != EINTR)
            return error_errno("%s: poll", name);
    }
}

unsigned vhost_user_listener_refuse(struct vhost_user_listener *l)
{
    unsigned n = 0;
    for (unsigned tries = 0; l->fd >= 0 && tries < REFUSE_MAX; tries++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            break;
        }
        close(fd);
        n++;
    }
    return n;
}

void vhost_user_listener_close(struct vhost_user_listener *l)
{
    if (l->fd < 0)
        return;
    close(l->fd);
    l->fd = -1;
    /* Only the socket ember made: someone may have put another file there meanwhile. */
    struct stat st;
    if (lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(l->path);
}
