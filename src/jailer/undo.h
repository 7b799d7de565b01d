/* What the jailer created on the host, so that a failure removes it again.
 * Each step holds a file descriptor opened on the host before the jailer
 * pivots into the jail, so it can be undone from inside the jail and from a
 * forked child; every descriptor is close-on-exec, so ember never sees one. */
#ifndef EMBER_JAILER_UNDO_H
#define EMBER_JAILER_UNDO_H

#include <stdbool.h>

enum undo_dir {
    UNDO_JAIL_TREE,  /* the jail's directory: removed with everything in it */
    UNDO_CGROUP,     /* the jail's cgroup: removed once the tasks have left it (a
                      * forked child that failed may still be exiting) */
    UNDO_SHARED_DIR, /* a parent directory or cgroup the jailer made, which another jail
                      * may be using by then: left quietly when it is not empty */
    UNDO_SHARED_CGROUP,
};

/* parent_path/name is a directory the jailer made. Fails only when the parent
 * cannot be opened. */
int undo_push_dir(const char *parent_path, const char *name, enum undo_dir kind);
/* Writes text to path when undoing (e.g. "0" to a cgroup.procs file to move
 * back, or "-hugetlb" to a cgroup.subtree_control). path is opened now. */
int undo_push_write(const char *path, const char *text);
/* Undoes every step, newest first; for each that fails prints one line
 * saying what was left on the host. */
void undo_run(void);

#endif
