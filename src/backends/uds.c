#include "backends/uds.h"

#include "util/error.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int make_addr(const char *path, struct sockaddr_un *a)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(a->sun_path))
        return error_set("socket path '%s' is too long", path);
    memcpy(a->sun_path, path, strlen(path));
    return 0;
}

int uds_listen(const char *path)
{
    struct sockaddr_un a;
    if (make_addr(path, &a) < 0)
        return -1;
    struct stat st;
    if (lstat(path, &st) == 0) {
        /* A socket left by an earlier run is replaced; anything else is not ours. */
        if (!S_ISSOCK(st.st_mode))
            return error_set("%s exists and is not a socket", path);
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno("socket");
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return error_errno("bind %s", path);
    }
    if (listen(fd, 64) < 0) {
        int e = errno;
        close(fd);
        unlink(path);
        errno = e;
        return error_errno("listen %s", path);
    }
    return fd;
}

int uds_accept(int listen_fd)
{
    return accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int uds_connect(const char *path)
{
    struct sockaddr_un a;
    if (make_addr(path, &a) < 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return error_errno("socket");
    /* A unix connect completes at once or fails (EAGAIN: backlog full). */
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return error_errno("connect %s", path);
    }
    return fd;
}
