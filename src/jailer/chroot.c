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
    char *real = realpath(a->chroot_base, NULL);
    if (!real)
        return jail_bad_input("--chroot-base-dir %s: %s", a->chroot_base, strerror(errno));
    snprintf(p->base, sizeof(p->base), "%s", real);
    free(real);
    struct stat st;
    if (stat(p->base, &st) < 0 || !S_ISDIR(st.st_mode))
        return jail_bad_input("--chroot-base-dir %s: not a directory", a->chroot_base);
    /* Device nodes on a nodev mount cannot be opened, nor ember run from a noexec one. */
    struct statvfs vfs;
    if (statvfs(p->base, &vfs) == 0 && (vfs.f_flag & (ST_NODEV | ST_NOEXEC)))
        return jail_bad_input("--chroot-base-dir %s is on a file system mounted %s: the jail's "
                              "%s would not work there",
                              p->base, vfs.f_flag & ST_NODEV ? "nodev" : "noexec",
                              vfs.f_flag & ST_NODEV ? "device nodes" : "ember");
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

int chroot_copy_file(int src_fd, const char *src_name, const char *dst, mode_t mode, uid_t uid,
                     gid_t gid)
{
    struct stat st;
    if (fstat(src_fd, &st) < 0)
        return error_errno("cannot stat %s", src_name);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (out < 0)
        return error_errno("cannot create %s", dst);
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

int chroot_create(const struct jail_args *a, const struct jail_paths *p, int exec_fd)
{
    if (mkdir(p->exec_dir, 0755) == 0) {
        if (undo_push_dir(p->base, a->exec_name, UNDO_SHARED_DIR) < 0) {
            rmdir(p->exec_dir);
            return -1;
        }
    } else if (errno != EEXIST) {
        return error_errno("cannot create %s", p->exec_dir);
    }
    /* mkdir is atomic: of two jailers with one id, one gets EEXIST here. */
    if (mkdir(p->id_dir, 0755) < 0) {
        if (errno == EEXIST)
            return jail_bad_input("%s already exists: another jail has the id '%s', or one that "
                                  "ended was not removed",
                                  p->id_dir, a->id);
        return error_errno("cannot create %s", p->id_dir);
    }
    if (undo_push_dir(p->exec_dir, a->id, UNDO_JAIL_TREE) < 0) {
        rmdir(p->id_dir);
        return -1;
    }
    if (mkdir(p->root, 0700) < 0)
        return error_errno("cannot create %s", p->root);
    char dst[PATH_MAX];
    if (path_format(dst, sizeof(dst), "%s/%s", p->root, a->exec_name) < 0)
        return -1;
    struct stat st;
    if (fstat(exec_fd, &st) < 0)
        return error_errno("cannot stat %s", a->exec_file);
    /* A copy, not a link: no two jailed embers share the pages of one file. */
    if (chroot_copy_file(exec_fd, a->exec_file, dst, st.st_mode & 0755, a->uid, a->gid) < 0)
        return -1;
    return libs_copy(exec_fd, a->exec_file, p->root);
}

int chroot_enter(const struct jail_paths *p)
{
    if (unshare(CLONE_NEWNS) < 0)
        return error_errno("cannot enter a new mount namespace");
    /* Nothing mounted or unmounted here may reach the host's namespace, nor the
     * other way round; pivot_root also refuses shared mounts. */
    if (mount(NULL, "/", NULL, MS_PRIVATE | MS_REC, NULL) < 0)
        return error_errno("cannot make the mounts private");
    /* pivot_root wants the new root to be a mount point of its own. */
    if (mount(p->root, p->root, NULL, MS_BIND | MS_REC, NULL) < 0)
        return error_errno("cannot bind-mount %s", p->root);
    if (chdir(p->root) < 0)
        return error_errno("cannot enter %s", p->root);
    if (mkdir(OLD_ROOT, 0700) < 0)
        return error_errno("cannot create %s/" OLD_ROOT, p->root);
    if (syscall(SYS_pivot_root, ".", OLD_ROOT) < 0)
        return error_errno("pivot_root into %s", p->root);
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

int chroot_make_folders(uid_t uid, gid_t gid)
{
    static const char *const folders[] = {"/", "/dev", "/dev/net", "/run"};
    for (size_t i = 0; i < sizeof(folders) / sizeof(folders[0]); i++) {
        const char *f = folders[i];
        if (mkdir(f, 0700) < 0 && errno != EEXIST)
            return error_errno("cannot create %s in the jail", f);
        if (chmod(f, 0700) < 0)
            return error_errno("cannot set the mode of %s in the jail", f);
        if (chown(f, uid, gid) < 0)
            return error_errno("cannot change the owner of %s in the jail", f);
    }
    return 0;
}
