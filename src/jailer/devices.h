/* The device nodes ember may use inside the jail: /dev/kvm, /dev/net/tun,
 * /dev/urandom and /dev/userfaultfd, each made with the host's major and
 * minor numbers, mode 0600, owned by the jail's uid:gid. A device the host
 * does not have is skipped with one warning. */
#ifndef EMBER_JAILER_DEVICES_H
#define EMBER_JAILER_DEVICES_H

#include <stdbool.h>
#include <sys/types.h>

#define JAIL_NDEVICES 4

struct jail_devices {
    dev_t rdev[JAIL_NDEVICES];
    bool present[JAIL_NDEVICES];
};

/* On the host, before entering the jail: which devices exist and their numbers. */
void devices_probe(struct jail_devices *d);
/* Inside the jail, in its /dev and /dev/net (open; root names the jail in
 * messages); each node made is recorded in the undo log. A node already there
 * is refused. */
int devices_create(const struct jail_devices *d, const char *root, int dev_fd, int dev_net_fd,
                   uid_t uid, gid_t gid);

#endif
