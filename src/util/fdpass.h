/* Passing a descriptor along with a message on a unix socket (SCM_RIGHTS). */
#ifndef EMBER_UTIL_FDPASS_H
#define EMBER_UTIL_FDPASS_H

#include <sys/socket.h>

/* Room for the control message of one descriptor, aligned as the kernel wants it. */
union fdpass_control {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
};

/* Makes msg carry fd: its control message is set up in ctl (which must outlive the send). */
void fdpass_attach(struct msghdr *msg, union fdpass_control *ctl, int fd);

/* Goes through the descriptors a received message carried: the first goes to *keep_fd when
 * keep_fd is given and *keep_fd is still -1, every other one is closed (none is left open by
 * mistake). Returns how many came. */
unsigned fdpass_take(struct msghdr *msg, int *keep_fd);

#endif
