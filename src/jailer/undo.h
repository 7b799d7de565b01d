/* What the jailer did on the host, so that a failure undoes it again, step by
 * step, newest first. Each step holds a file descriptor opened when it was
 * recorded (before the jailer pivots into the jail, or inside it), so it can
 * be undone from inside the jail and from a forked child; every descriptor is
 * close-on-exec, so ember never sees one.
 *
 * Nothing is removed recursively: the jail's directory may be the caller's
 * (Kata Containers prepares it and bind-mounts files into it), so a step
 * removes exactly the one file, node or empty directory the jailer made, and
 * only while it is still that one. */
#ifndef EMBER_JAILER_UNDO_H
#define EMBER_JAILER_UNDO_H

enum undo_dir {
    UNDO_CGROUP,        /* the jail's cgroup: removed once the tasks have left it (a
                         * forked child that failed may still be exiting) */
    UNDO_SHARED_CGROUP, /* a parent cgroup the jailer made, which another jail may be
                         * using by then: left quietly when it is not empty */
};

/* parent_path/name is a cgroup directory the jailer made. Fails only when the
 * parent cannot be opened. */
int undo_push_dir(const char *parent_path, const char *name, enum undo_dir kind);
/* Writes text to path when undoing (e.g. "0" to a cgroup.procs file to move
 * back, or "-hugetlb" to a cgroup.subtree_control). path is opened now. */
int undo_push_write(const char *path, const char *text);
/* parent_fd/name is a file, device node or directory the jailer has just made
 * (parent_path names parent_fd in messages, as the host sees it). Undone by
 * one unlinkat: only while parent_fd/name is the same file (device and inode),
 * a directory only while empty (one that holds what someone else put there,
 * or has something mounted on it, is left quietly). On failure nothing was
 * recorded: the caller removes what it made. */
int undo_push_made(int parent_fd, const char *parent_path, const char *name);
/* dir_fd is a directory that was there before the jailer, whose owner and
 * mode it is about to change: put back when undoing. */
int undo_push_attrs(int dir_fd, const char *path);
/* Undoes every step, newest first; for each that fails prints one line
 * saying what was left on the host. */
void undo_run(void);

#endif
