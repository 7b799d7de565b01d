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

#endif
