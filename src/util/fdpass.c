#include "util/fdpass.h"

#include <string.h>

void fdpass_attach(struct msghdr *msg, union fdpass_control *ctl, int fd)
{
    memset(ctl, 0, sizeof(*ctl));
    msg->msg_control = ctl->buf;
    msg->msg_controllen = sizeof(ctl->buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
}
