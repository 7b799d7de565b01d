#include "jailer/undo.h"

#include "jailer/jailer.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_STEPS 256
/* A failed child that still exits keeps its cgroup busy for a moment. */
#define CGROUP_BUSY_TRIES 200
#define CGROUP_BUSY_WAIT  (10 * 1000 * 1000) /* ns */

enum step_kind { STEP_DIR, STEP_WRITE, STEP_MADE, STEP_ATTRS };

struct step {
    enum step_kind kind;
    enum undo_dir dir;
    int fd; /* the parent directory, the file to write, or the directory to restore */
    char name[NAME_MAX + 1];
    char text[64];
    struct stat made;    /* STEP_MADE: what was made; STEP_ATTRS: owner and mode before */
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

int undo_push_made(int parent_fd, const char *parent_path, const char *name)
{
    char path[PATH_MAX];
    if (path_format(path, sizeof(path), "%s/%s", parent_path, name) < 0)
        return -1;
    struct step *s = push(STEP_MADE, path);
    if (!s)
        return -1;
    if (strlen(name) >= sizeof(s->name))
        return error_set("'%s': name too long", name);
    snprintf(s->name, sizeof(s->name), "%s", name);
    if (fstatat(parent_fd, name, &s->made, AT_SYMLINK_NOFOLLOW) < 0)
        return error_errno("cannot stat %s", path);
    s->fd = fcntl(parent_fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0)
        return error_errno("cannot keep track of %s", path);
    nsteps++;
    return 0;
}

int undo_push_attrs(int dir_fd, const char *path)
{
    struct step *s = push(STEP_ATTRS, path);
    if (!s)
        return -1;
    if (fstat(dir_fd, &s->made) < 0)
        return error_errno("cannot stat %s", path);
    s->fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0)
        return error_errno("cannot keep track of %s", path);
    nsteps++;
    return 0;
}

/* One unlinkat of what the jailer made, never a walk into it. */
static int remove_made(const struct step *s)
{
    struct stat now;
    if (fstatat(s->fd, s->name, &now, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -1;
    /* Replaced since: not the jailer's to remove. */
    if (now.st_dev != s->made.st_dev || now.st_ino != s->made.st_ino)
        return 0;
    if (!S_ISDIR(now.st_mode))
        return unlinkat(s->fd, s->name, 0);
    if (unlinkat(s->fd, s->name, AT_REMOVEDIR) == 0)
        return 0;
    /* It holds what someone else put there, or a mount. */
    return errno == ENOTEMPTY || errno == EEXIST || errno == EBUSY ? 0 : -1;
}

static int restore_attrs(const struct step *s)
{
    if (fchown(s->fd, s->made.st_uid, s->made.st_gid) < 0)
        return -1;
    return fchmod(s->fd, s->made.st_mode & 07777);
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
    if (s->kind == STEP_MADE)
        return remove_made(s);
    if (s->kind == STEP_ATTRS)
        return restore_attrs(s);
    switch (s->dir) {
    case UNDO_CGROUP:
        return remove_cgroup(s);
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
            else if (s->kind == STEP_ATTRS)
                fprintf(stderr,
                        "ember-jailer: left behind: %s with the owner and mode the jailer gave it "
                        "(%s); it was %u:%u, mode %04o\n",
                        s->path, strerror(errno), (unsigned)s->made.st_uid,
                        (unsigned)s->made.st_gid, (unsigned)(s->made.st_mode & 07777));
            else
                fprintf(stderr, "ember-jailer: left behind: %s (%s); remove it\n", s->path,
                        strerror(errno));
        }
        close(s->fd);
    }
}
