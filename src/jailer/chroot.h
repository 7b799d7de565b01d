/* The jail's directory and the process's move into it: <base>/<exec_name>/
 * <id>/root, made where missing or taken as it is (Kata Containers makes it,
 * mounts it and bind-mounts its files into it before it starts the jailer, as
 * Firecracker's jailer allows), ember's binary copied in (and, for a
 * dynamically linked one, its loader and libraries: libs.h); then a mount
 * namespace of its own whose root is that directory, nothing else of the
 * host's mounted in it.
 *
 * Every directory on that path and in the jail is walked with openat and
 * O_NOFOLLOW: a symbolic link where the jailer makes or takes something is
 * refused. Everything the jailer makes goes into the undo log (undo.h), one
 * step each; nothing that was there before is ever removed. */
#ifndef EMBER_JAILER_CHROOT_H
#define EMBER_JAILER_CHROOT_H

#include "jailer/jailer.h"

#include <limits.h>
#include <stdbool.h>

struct jail_paths {
    char base[PATH_MAX];     /* --chroot-base-dir, resolved */
    char exec_dir[PATH_MAX]; /* base/<exec_name> */
    char id_dir[PATH_MAX];   /* exec_dir/<id> */
    char root[PATH_MAX];     /* id_dir/root: the jail's / */
    int root_fd;             /* root, opened by chroot_create; kept until exec */
};

/* The jail's folders inside it, open: where the device nodes and the pid file go. */
struct jail_dirs {
    int root, dev, dev_net;
};

/* Resolves and checks the base directory and names the jail's paths. */
int chroot_paths(const struct jail_args *a, struct jail_paths *p);
/* Makes the jail's directories where missing (an existing one must be a
 * directory, not a symbolic link), checks that its file system allows device
 * nodes and programs, and copies ember in, owned by uid:gid (a file of that
 * name already there is refused: it is another jail's, or one not removed). */
int chroot_create(const struct jail_args *a, struct jail_paths *p, int exec_fd);
/* Copies src_fd's contents to the new file dir_fd/name (dir_path names dir_fd
 * in messages; mode), owned by uid:gid unless uid is (uid_t)-1, and records it
 * in the undo log. A name already there fails with errno EEXIST. */
int chroot_copy_file(int src_fd, const char *src_name, int dir_fd, const char *dir_path,
                     const char *name, mode_t mode, uid_t uid, gid_t gid);
/* parent_fd/name as a directory: made with mode (and recorded in the undo log)
 * if missing, else the directory there, which must not be a symbolic link.
 * Returns it open, or -1. *made says which, if made is not NULL. */
int chroot_open_dir(int parent_fd, const char *parent_path, const char *name, mode_t mode,
                    bool *made);
/* Unshares the mount namespace and pivots into p->root: afterwards "/" is the
 * jail and nothing else of the host's file system is reachable by path. The
 * jail's mounts are slaves of the host's: what the caller mounts into the jail
 * later (Kata Containers' files) reaches it, nothing reaches the host from it. */
int chroot_enter(const struct jail_paths *p);
/* Inside the jail: /, /dev, /dev/net and /run, owned by uid:gid, mode 0700.
 * Ones that were there keep their contents, get their old owner and mode back
 * on a failure, and must not be mount points (a host directory bind-mounted
 * there would change owner). d receives /, /dev and /dev/net open. */
int chroot_make_folders(const struct jail_paths *p, uid_t uid, gid_t gid, struct jail_dirs *d);

#endif
