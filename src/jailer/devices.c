#include "jailer/devices.h"

#include "jailer/jailer.h"
#include "jailer/undo.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define MISC_MAJOR 10

static const struct {
    const char *path;
    bool in_net; /* in /dev/net, else in /dev */
    const char *name;
    const char *misc_name; /* its name in /proc/misc, for a host without the node */
    const char *what;      /* what its absence means for ember */
} devices[JAIL_NDEVICES] = {
    {"/dev/kvm", false, "kvm", "kvm", "no machine can start"},
    {"/dev/net/tun", true, "tun", "tun", "no tap network interfaces"},
    {"/dev/urandom", false, "urandom", NULL, "ember reads randomness with getrandom()"},
    {"/dev/userfaultfd", false, "userfaultfd", "userfaultfd",
     "a snapshot's Uffd memory backend then needs vm.unprivileged_userfaultfd=1"},
};

/* A misc device's minor number from /proc/misc ("minor name" lines). */
static bool misc_minor(const char *name, unsigned *minor)
{
    FILE *f = fopen("/proc/misc", "re");
    if (!f)
        return false;
    char line[128], n[64];
    unsigned m;
    bool found = false;
    while (!found && fgets(line, sizeof(line), f))
        found = sscanf(line, "%u %63s", &m, n) == 2 && !strcmp(n, name);
    fclose(f);
    if (found)
        *minor = m;
    return found;
}

void devices_probe(struct jail_devices *d)
{
    memset(d, 0, sizeof(*d));
    for (int i = 0; i < JAIL_NDEVICES; i++) {
        struct stat st;
        unsigned minor;
        if (stat(devices[i].path, &st) == 0 && S_ISCHR(st.st_mode)) {
            d->rdev[i] = st.st_rdev;
            d->present[i] = true;
        } else if (devices[i].misc_name && misc_minor(devices[i].misc_name, &minor)) {
            d->rdev[i] = makedev(MISC_MAJOR, minor);
            d->present[i] = true;
        }
    }
}

int devices_create(const struct jail_devices *d, const char *root, int dev_fd, int dev_net_fd,
                   uid_t uid, gid_t gid)
{
    for (int i = 0; i < JAIL_NDEVICES; i++) {
        const char *path = devices[i].path;
        if (!d->present[i]) {
            jail_warn("the host has no %s: not created in the jail (%s)", path, devices[i].what);
            continue;
        }
        char dir_path[PATH_MAX];
        if (path_format(dir_path, sizeof(dir_path), "%s%s", root,
                        devices[i].in_net ? "/dev/net" : "/dev") < 0)
            return -1;
        int dir_fd = devices[i].in_net ? dev_net_fd : dev_fd;
        const char *name = devices[i].name;
        if (mknodat(dir_fd, name, S_IFCHR | S_IRUSR | S_IWUSR, d->rdev[i]) < 0) {
            if (errno == EEXIST)
                return jail_bad_input("%s%s is already there: the jailer makes its own device "
                                      "nodes",
                                      root, path);
            return error_errno("cannot create %s in the jail", path);
        }
        if (undo_push_made(dir_fd, dir_path, name) < 0) {
            unlinkat(dir_fd, name, 0);
            return -1;
        }
        if (fchownat(dir_fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
            return error_errno("cannot change the owner of %s in the jail", path);
    }
    return 0;
}
