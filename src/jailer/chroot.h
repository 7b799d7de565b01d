/* The jail's directory and the process's move into it: <base>/<exec_name>/
 * <id>/root, created fresh (an existing <id> directory is another jail),
 * ember's binary copied in (and, for a dynamically linked one, its loader and
 * libraries: libs.h); then a mount namespace of its own whose root is that
 * directory, nothing of the host's mounted in it. */
#ifndef EMBER_JAILER_CHROOT_H
#define EMBER_JAILER_CHROOT_H

#include "jailer/jailer.h"

#include <limits.h>

struct jail_paths {
    char base[PATH_MAX];     /* --chroot-base-dir, resolved */
    char exec_dir[PATH_MAX]; /* base/<exec_name> */
    char id_dir[PATH_MAX];   /* exec_dir/<id> */
    char root[PATH_MAX];     /* id_dir/root: the jail's / */
};

/* Resolves and checks the base directory (a directory whose filesystem
 * allows device nodes and programs) and names the jail's paths. */
int chroot_paths(const struct jail_args *a, struct jail_paths *p);
/* Creates the jail's directories and copies ember in, owned by uid:gid. */
int chroot_create(const struct jail_args *a, const struct jail_paths *p, int exec_fd);
/* Copies src_fd's contents to the new file dst (mode), owned by uid:gid
 * unless uid is (uid_t)-1. */
int chroot_copy_file(int src_fd, const char *src_name, const char *dst, mode_t mode, uid_t uid,
                     gid_t gid);
/* Unshares the mount namespace and pivots into p->root: afterwards "/" is the
 * jail and nothing else of the host's file system is reachable by path. */
int chroot_enter(const struct jail_paths *p);
/* Inside the jail: /, /dev, /dev/net and /run, owned by uid:gid, mode 0700. */
int chroot_make_folders(uid_t uid, gid_t gid);

#endif
