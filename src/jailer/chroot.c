#include "jailer/chroot.h"

#include "jailer/libs.h"
#include "jailer/undo.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#define OLD_ROOT "old_root"

int chroot_paths(const struct jail_args *a, struct jail_paths *p)
{
    memset(p, 0, sizeof(*p));
    p->root_fd = -1;
    char *real = realpath(a->chroot_base, NULL);
    if (!real)
        return jail_bad_input("--chroot-base-dir %s: %s", a->chroot_base, strerror(errno));
    snprintf(p->base, sizeof(p->base), "%s", real);
    free(real);
    struct stat st;
    if (stat(p->base, &st) < 0 || !S_ISDIR(st.st_mode))
        return jail_bad_input("--chroot-base-dir %s: not a directory", a->chroot_base);
    /* Room for the longest path the jailer makes below the root. */
    if (strlen(p->base) + strlen(a->exec_name) + strlen(a->id) + 3 * NAME_MAX > PATH_MAX)
        return jail_bad_input("--chroot-base-dir %s: path too long", p->base);
    const char *base = strcmp(p->base, "/") ? p->base : "";
    if (path_format(p->exec_dir, sizeof(p->exec_dir), "%s/%s", base, a->exec_name) < 0 ||
        path_format(p->id_dir, sizeof(p->id_dir), "%s/%s", p->exec_dir, a->id) < 0 ||
        path_format(p->root, sizeof(p->root), "%s/root", p->id_dir) < 0)
        return -1;
    return 0;
}

int chroot_open_dir(int parent_fd, const char *parent_path, const char *name, mode_t mode,
                    bool *made)
{
    char path[PATH_MAX];
    if (path_format(path, sizeof(path), "%s/%s", parent_path, name) < 0)
        return -1;
    bool created = mkdirat(parent_fd, name, mode) == 0;
    if (!created && errno != EEXIST)
        return error_errno("cannot create %s", path);
    if (created && undo_push_made(parent_fd, parent_path, name) < 0) {
        unlinkat(parent_fd, name, AT_REMOVEDIR);
        return -1;
    }
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int saved = errno;
        struct stat st;
        if (fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
            return jail_bad_input("%s is a symbolic link: the jailer follows none on the jail's "
                                  "path or in it",
                                  path);
        if (saved == ENOTDIR)
            return jail_bad_input("%s is there but is not a directory", path);
        errno = saved;
        return error_errno("cannot open %s", path);
    }
    if (made)
        *made = created;
    return fd;
}

int chroot_copy_file(int src_fd, const char *src_name, int dir_fd, const char *dir_path,
                     const char *name, mode_t mode, uid_t uid, gid_t gid)
{
    char dst[PATH_MAX];
    if (path_format(dst, sizeof(dst), "%s/%s", dir_path, name) < 0)
        return -1;
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return error_errno("cannot stat %s", src_name);
    int out = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (out < 0) {
        int saved = errno;
        error_errno("cannot create %s", dst);
        errno = saved;
        return -1;
    }
    if (undo_push_made(dir_fd, dir_path, name) < 0) {
        close(out);
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    /* Owned before it has contents, as Firecracker does. */
    if (uid != (uid_t)-1 && fchown(out, uid, gid) < 0) {
        error_errno("cannot change the owner of %s", dst);
        close(out);
        return -1;
    }
    /* The mode asked for, whatever the umask took away. */
    if (fchmod(out, mode) < 0) {
        error_errno("cannot set the mode of %s", dst);
        close(out);
        return -1;
    }
    off_t off = 0;
    while (off < st.st_size) {
        size_t chunk =
            (size_t)(st.st_size - off) > (1u << 30) ? (1u << 30) : (size_t)(st.st_size - off);
        ssize_t n = sendfile(out, src_fd, &off, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO; /* the file shrank while it was copied */
            error_errno("cannot copy %s to %s", src_name, dst);
            close(out);
            return -1;
        }
    }
    if (close(out) < 0)
        return error_errno("cannot write %s", dst);
    return 0;
}

int chroot_create(const struct jail_args *a, struct jail_paths *p, int exec_fd)
{
    int base_fd = open(p->base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (base_fd < 0)
        return error_errno("cannot open %s", p->base);
    int exec_dir_fd = chroot_open_dir(base_fd, p->base, a->exec_name, 0755, NULL);
    close(base_fd);
    if (exec_dir_fd < 0)
        return -1;
    int id_fd = chroot_open_dir(exec_dir_fd, p->exec_dir, a->id, 0755, NULL);
    close(exec_dir_fd);
    if (id_fd < 0)
        return -1;
    p->root_fd = chroot_open_dir(id_fd, p->id_dir, "root", 0700, NULL);
    close(id_fd);
    if (p->root_fd < 0)
        return -1;
    /* Device nodes on a nodev mount cannot be opened, nor ember run from a noexec one. The
     * root's own mount counts: Kata Containers remounts a root under a noexec /run. */
    struct statvfs vfs;
    if (fstatvfs(p->root_fd, &vfs) == 0 && (vfs.f_flag & (ST_NODEV | ST_NOEXEC)))
        return jail_bad_input("the jail's root %s is on a file system mounted %s: the jail's "
                              "%s would not work there",
                              p->root, vfs.f_flag & ST_NODEV ? "nodev" : "noexec",
                              vfs.f_flag & ST_NODEV ? "device nodes" : "ember");
    struct stat st;
    if (fstat(exec_fd, &st) < 0)
        return error_errno("cannot stat %s", a->exec_file);
    /* A copy, not a link: no two jailed embers share the pages of one file. O_EXCL makes
     * it the jail's claim on the id: of two jailers with one id, one gets EEXIST. */
    if (chroot_copy_file(exec_fd, a->exec_file, p->root_fd, p->root, a->exec_name,
                         st.st_mode & 0755, a->uid, a->gid) < 0) {
        if (errno == EEXIST)
            return jail_bad_input("%s/%s already exists: another jail has the id '%s', or one "
                                  "that ended was not removed",
                                  p->root, a->exec_name, a->id);
        return -1;
    }
    return libs_copy(exec_fd, a->exec_file, p->root_fd, p->root);
}

/* From the bind mount of the jail's root on itself to the pivot into it. */
static int pivot_into(const struct jail_paths *p)
{
    if (chdir(p->root) < 0)
        return error_errno("cannot enter %s", p->root);
    /* The directory checked and filled is the one entered: nothing was swapped in by path. */
    struct stat want, here;
    if (fstat(p->root_fd, &want) < 0 || stat(".", &here) < 0)
        return error_errno("cannot stat %s", p->root);
    if (want.st_dev != here.st_dev || want.st_ino != here.st_ino)
        return jail_bad_input("%s changed while the jailer built the jail", p->root);
    if (mkdir(OLD_ROOT, 0700) < 0)
        return error_errno("cannot create %s/" OLD_ROOT, p->root);
    if (undo_push_made(p->root_fd, p->root, OLD_ROOT) < 0) {
        rmdir(OLD_ROOT);
        return -1;
    }
    if (syscall(SYS_pivot_root, ".", OLD_ROOT) < 0)
        return error_errno("pivot_root into %s", p->root);
    return 0;
}

int chroot_enter(const struct jail_paths *p)
{
    if (unshare(CLONE_NEWNS) < 0)
        return error_errno("cannot enter a new mount namespace");
    /* Nothing mounted or unmounted here may reach the host's namespace; what the caller
     * mounts into the jail later (or unmounts) does reach it, as with Firecracker's jailer.
     * pivot_root also refuses shared mounts. */
    if (mount(NULL, "/", NULL, MS_SLAVE | MS_REC, NULL) < 0)
        return error_errno("cannot make the mounts slaves of the host's");
    /* pivot_root wants the new root to be a mount point of its own. */
    if (mount(p->root, p->root, NULL, MS_BIND | MS_REC, NULL) < 0)
        return error_errno("cannot bind-mount %s", p->root);
    if (pivot_into(p) < 0) {
        /* Until the pivot the bind mount covers the root, which could not be removed. */
        chdir("/");
        umount2(p->root, MNT_DETACH);
        return -1;
    }
    if (chdir("/") < 0)
        return error_errno("cannot enter the jail's /");
    if (umount2(OLD_ROOT, MNT_DETACH) < 0)
        return error_errno("cannot unmount the old root");
    if (rmdir(OLD_ROOT) < 0)
        return error_errno("cannot remove /" OLD_ROOT " in the jail");
    /* For good measure, as Firecracker does: the root directory is the jail's. */
    if (chroot(".") < 0)
        return error_errno("chroot");
    return 0;
}

/* A directory that was there before: a mount point there is something of the host's, whose
 * owner the jailer must not change. */
static bool is_mount_point(int fd)
{
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) < 0)
        return false;
    return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
           (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

/* One of the jail's folders, owned by uid:gid, mode 0700 (Firecracker's). */
static int make_folder(int parent_fd, const char *parent_path, const char *name, uid_t uid,
                       gid_t gid)
{
    char path[PATH_MAX];
    bool made = false;
    int fd;
    if (parent_fd < 0) {
        snprintf(path, sizeof(path), "%s", parent_path);
        fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return error_errno("cannot open the jail's /");
    } else {
        if (path_format(path, sizeof(path), "%s/%s", parent_path, name) < 0)
            return -1;
        fd = chroot_open_dir(parent_fd, parent_path, name, 0700, &made);
        if (fd < 0)
            return -1;
        if (!made && is_mount_point(fd)) {
            close(fd);
            return jail_bad_input("%s is a mount point: the jailer would change the owner of "
                                  "what is mounted there",
                                  path);
        }
    }
    if (!made && undo_push_attrs(fd, path) < 0) {
        close(fd);
        return -1;
    }
    if (fchmod(fd, 0700) < 0 || fchown(fd, uid, gid) < 0) {
        error_errno("cannot set the owner and mode of %s", path);
        close(fd);
        return -1;
    }
    return fd;
}

int chroot_make_folders(const struct jail_paths *p, uid_t uid, gid_t gid, struct jail_dirs *d)
{
    char dev_path[PATH_MAX];
    if (path_format(dev_path, sizeof(dev_path), "%s/dev", p->root) < 0)
        return -1;
    d->root = make_folder(-1, p->root, NULL, uid, gid);
    if (d->root < 0)
        return -1;
    d->dev = make_folder(d->root, p->root, "dev", uid, gid);
    if (d->dev < 0)
        return -1;
    d->dev_net = make_folder(d->dev, dev_path, "net", uid, gid);
    if (d->dev_net < 0)
        return -1;
    int run = make_folder(d->root, p->root, "run", uid, gid);
    if (run < 0)
        return -1;
    close(run);
    return 0;
}
