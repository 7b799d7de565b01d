#include "jailer/undo.h"

#include "jailer/jailer.h"
#include "util/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_STEPS      256
#define MAX_TREE_DEPTH 64
/* A failed child that still exits keeps its cgroup busy for a moment. */
#define CGROUP_BUSY_TRIES 200
#define CGROUP_BUSY_WAIT  (10 * 1000 * 1000) /* ns */

enum step_kind { STEP_DIR, STEP_WRITE };

struct step {
    enum step_kind kind;
    enum undo_dir dir;
    int fd; /* the parent directory (O_PATH), or the file to write */
    char name[NAME_MAX + 1];
    char text[64];
    char path[PATH_MAX]; /* for the message when it cannot be undone */
};

static struct step steps[MAX_STEPS];
static unsigned nsteps;

static struct step *push(enum step_kind kind, const char *path)
{
    if (nsteps == MAX_STEPS) {
        error_set("too many things to keep track of (%d)", MAX_STEPS);
        return NULL;
    }
    struct step *s = &steps[nsteps];
    memset(s, 0, sizeof(*s));
    s->kind = kind;
    s->fd = -1;
    snprintf(s->path, sizeof(s->path), "%s", path);
    return s;
}

int undo_push_dir(const char *parent_path, const char *name, enum undo_dir kind)
{
    char path[PATH_MAX];
    if (path_format(path, sizeof(path), "%s/%s", parent_path, name) < 0)
        return -1;
    struct step *s = push(STEP_DIR, path);
    if (!s)
        return -1;
    if (strlen(name) >= sizeof(s->name))
        return error_set("'%s': name too long", name);
    s->dir = kind;
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->fd = open(parent_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (s->fd < 0)
        return error_errno("cannot open '%s'", parent_path);
    nsteps++;
    return 0;
}

int undo_push_write(const char *path, const char *text)
{
    struct step *s = push(STEP_WRITE, path);
    if (!s)
        return -1;
    snprintf(s->text, sizeof(s->text), "%s", text);
    s->fd = open(path, O_WRONLY | O_CLOEXEC);
    if (s->fd < 0)
        return error_errno("cannot open '%s'", path);
    nsteps++;
    return 0;
}

/* Removes parent_fd/name and, if it is a directory, everything below it, without following
 * symbolic links. */
static int remove_tree(int parent_fd, const char *name, int depth)
{
    if (unlinkat(parent_fd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -1;
    if (depth == MAX_TREE_DEPTH) {
        errno = ELOOP;
        return -1;
    }
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int result = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (remove_tree(dirfd(d), e->d_name, depth + 1) < 0)
            result = -1;
    }
    int saved = errno;
    closedir(d);
    if (result < 0) {
        errno = saved;
        return -1;
    }
    return unlinkat(parent_fd, name, AT_REMOVEDIR);
}

static int remove_cgroup(const struct step *s)
{
    for (int tries = 0;; tries++) {
        if (unlinkat(s->fd, s->name, AT_REMOVEDIR) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY || tries == CGROUP_BUSY_TRIES)
            return -1;
        struct timespec wait = {0, CGROUP_BUSY_WAIT};
        nanosleep(&wait, NULL);
    }
}

static int undo_step(const struct step *s)
{
    if (s->kind == STEP_WRITE)
        return write_all(s->fd, s->text, strlen(s->text));
    int r;
    switch (s->dir) {
    case UNDO_JAIL_TREE:
        return remove_tree(s->fd, s->name, 0);
    case UNDO_CGROUP:
        return remove_cgroup(s);
    case UNDO_SHARED_DIR:
    case UNDO_SHARED_CGROUP:
        r = unlinkat(s->fd, s->name, AT_REMOVEDIR);
        /* In use by another jail, or holding what a line above said was left. */
        if (r < 0 && (errno == ENOENT || errno == ENOTEMPTY || errno == EEXIST || errno == EBUSY ||
                      errno == EACCES || errno == EPERM))
            r = 0;
        return r;
    }
    return -1;
}

void undo_run(void)
{
    while (nsteps > 0) {
        struct step *s = &steps[--nsteps];
        if (undo_step(s) < 0) {
            if (s->kind == STEP_WRITE)
                fprintf(stderr, "ember-jailer: left behind: could not write '%.*s' to %s (%s)\n",
                        (int)strcspn(s->text, "\n"), s->text, s->path, strerror(errno));
            else
                fprintf(stderr, "ember-jailer: left behind: %s (%s); remove it\n", s->path,
                        strerror(errno));
        }
        close(s->fd);
    }
}
