#include "jailer/devices.h"

#include "jailer/jailer.h"
#include "util/error.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define MISC_MAJOR 10

static const struct {
    const char *path;
    const char *misc_name; /* its name in /proc/misc, for a host without the node */
    const char *what;      /* what its absence means for ember */
} devices[JAIL_NDEVICES] = {
    {"/dev/kvm", "kvm", "no machine can start"},
    {"/dev/net/tun", "tun", "no tap network interfaces"},
    {"/dev/urandom", NULL, "ember reads randomness with getrandom()"},
    {"/dev/userfaultfd", "userfaultfd", "ember does not use it yet"},
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

int devices_create(const struct jail_devices *d, uid_t uid, gid_t gid)
{
    for (int i = 0; i < JAIL_NDEVICES; i++) {
        const char *path = devices[i].path;
        if (!d->present[i]) {
            jail_warn("the host has no %s: not created in the jail (%s)", path, devices[i].what);
            continue;
        }
        if (mknod(path, S_IFCHR | S_IRUSR | S_IWUSR, d->rdev[i]) < 0)
            return error_errno("cannot create %s in the jail", path);
        if (chown(path, uid, gid) < 0)
            return error_errno("cannot change the owner of %s in the jail", path);
    }
    return 0;
}
