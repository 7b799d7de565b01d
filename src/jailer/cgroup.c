#include "jailer/cgroup.h"

#include "jailer/undo.h"
#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Whether word is one of the comma-separated words of list. */
static bool list_has(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, word, n))
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

/* Whether word is one of the space-separated words of list. */
static bool words_have(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\n')
            p++;
        size_t len = strcspn(p, " \n");
        if (len == n && !strncmp(p, word, n))
            return true;
        p += len;
    }
    return false;
}

/* The next space-separated field of a /proc/mounts line, with the kernel's
 * octal escapes (\040 for a space) undone. */
static bool next_field(char **line, char *out, size_t size)
{
    char *p = *line;
    while (*p == ' ')
        p++;
    if (!*p || *p == '\n')
        return false;
    size_t n = 0;
    while (*p && *p != ' ' && *p != '\n') {
        char c = *p++;
        if (c == '\\' && p[0] >= '0' && p[0] <= '3' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' &&
            p[2] <= '7') {
            c = (char)((p[0] - '0') * 64 + (p[1] - '0') * 8 + (p[2] - '0'));
            p += 3;
        }
        if (n + 1 >= size)
            return false;
        out[n++] = c;
    }
    out[n] = '\0';
    *line = p;
    return true;
}

/* The jailer's own cgroup in a hierarchy, from /proc/self/cgroup: for v1 the
 * line whose controllers include controller, for v2 the "0::" line. */
static void find_own_cgroup(int version, const char *controller, char *out, size_t size)
{
    snprintf(out, size, "/");
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return;
    char line[PATH_MAX + 256];
    while (fgets(line, sizeof(line), f)) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        char *path = c2 + 1;
        path[strcspn(path, "\n")] = '\0';
        bool match = version == 2 ? (c1 == line + 1 && line[0] == '0' && c2 == c1 + 1)
                                  : list_has(c1 + 1, controller);
        if (match) {
            snprintf(out, size, "%s", path);
            break;
        }
    }
    fclose(f);
}

int cgroup_plan(const struct jail_args *a, struct cgroup_plan *p)
{
    memset(p, 0, sizeof(*p));
    p->version = a->cgroup_version;
    if (a->ncgroups == 0 && a->cgroup_version == 1)
        return 0; /* nothing to create or join */
    FILE *f = fopen("/proc/mounts", "re");
    if (!f)
        return error_errno("cannot read /proc/mounts");
    static struct {
        char dir[PATH_MAX];
        char options[512];
    } v1[CGROUP_MAX_HIERARCHIES * 2];
    unsigned nv1 = 0;
    char v2[PATH_MAX] = "";
    char line[2 * PATH_MAX + 1024];
    while (fgets(line, sizeof(line), f)) {
        char *s = line;
        char source[256], dir[PATH_MAX], type[64], options[512];
        if (!next_field(&s, source, sizeof(source)) || !next_field(&s, dir, sizeof(dir)) ||
            !next_field(&s, type, sizeof(type)) || !next_field(&s, options, sizeof(options)))
            continue;
        if (!strcmp(type, "cgroup2") && !v2[0]) {
            snprintf(v2, sizeof(v2), "%s", dir);
        } else if (!strcmp(type, "cgroup") && nv1 < sizeof(v1) / sizeof(v1[0])) {
            snprintf(v1[nv1].dir, sizeof(v1[nv1].dir), "%s", dir);
            snprintf(v1[nv1].options, sizeof(v1[nv1].options), "%s", options);
            nv1++;
        }
    }
    fclose(f);

    if (p->version == 2) {
        if (!v2[0])
            return jail_bad_input("--cgroup-version 2: no cgroup v2 hierarchy is mounted");
        struct cgroup_hierarchy *h = &p->h[0];
        snprintf(h->mount, sizeof(h->mount), "%s", v2);
        int dirfd = open(v2, O_PATH | O_DIRECTORY | O_CLOEXEC);
        ssize_t n = dirfd < 0 ? -1
                              : read_small_file(dirfd, "cgroup.controllers", h->controllers,
                                                sizeof(h->controllers));
        if (dirfd >= 0)
            close(dirfd);
        if (n < 0)
            return error_prefix("cgroup v2 hierarchy %s", v2);
        h->controllers[strcspn(h->controllers, "\n")] = '\0';
        for (unsigned i = 0; i < a->ncgroups; i++) {
            if (!words_have(h->controllers, a->cgroups[i].controller))
                return jail_bad_input(
                    "--cgroup %s: the cgroup v2 controller '%s' is not available (the "
                    "hierarchy at %s offers: %s)",
                    a->cgroups[i].file, a->cgroups[i].controller, v2,
                    h->controllers[0] ? h->controllers : "none");
            h->settings[h->nsettings++] = i;
        }
        find_own_cgroup(2, NULL, h->own, sizeof(h->own));
        p->n = 1;
        p->join_parent = a->ncgroups == 0;
        return 0;
    }

    for (unsigned i = 0; i < a->ncgroups; i++) {
        const char *ctl = a->cgroups[i].controller;
        unsigned m;
        for (m = 0; m < nv1 && !list_has(v1[m].options, ctl); m++)
            ;
        if (m == nv1)
            return jail_bad_input("--cgroup %s: no cgroup v1 hierarchy has the controller '%s'",
                                  a->cgroups[i].file, ctl);
        unsigned k;
        for (k = 0; k < p->n && strcmp(p->h[k].mount, v1[m].dir); k++)
            ;
        if (k == p->n) {
            if (p->n == CGROUP_MAX_HIERARCHIES)
                return jail_bad_input("--cgroup: more than %d hierarchies", CGROUP_MAX_HIERARCHIES);
            struct cgroup_hierarchy *h = &p->h[p->n++];
            snprintf(h->mount, sizeof(h->mount), "%s", v1[m].dir);
            snprintf(h->controllers, sizeof(h->controllers), "%s", v1[m].options);
            h->cpuset = list_has(v1[m].options, "cpuset");
            find_own_cgroup(1, ctl, h->own, sizeof(h->own));
        }
        p->h[k].settings[p->h[k].nsettings++] = i;
    }
    return 0;
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = write_all(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

/* Creates every missing level of mount/rel, recording those it made; the
 * last level (the jail's id) must not exist yet. */
static int make_levels(const char *mount, const char *rel, const char *id)
{
    char path[PATH_MAX], parent[PATH_MAX];
    snprintf(path, sizeof(path), "%s", mount);
    const char *s = rel;
    for (;;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        char name[NAME_MAX + 1];
        if (n > NAME_MAX)
            return jail_bad_input("cgroup name '%.*s' is too long", (int)n, s);
        memcpy(name, s, n);
        name[n] = '\0';
        snprintf(parent, sizeof(parent), "%s", path);
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", parent, name) >= sizeof(path))
            return jail_bad_input("cgroup path under %s is too long", mount);
        bool last = !e;
        if (mkdir(path, 0755) == 0) {
            if (undo_push_dir(parent, name, last ? UNDO_CGROUP : UNDO_SHARED_CGROUP) < 0) {
                rmdir(path);
                return -1;
            }
        } else if (errno != EEXIST) {
            return error_errno("cannot create cgroup %s", path);
        } else if (last && !strcmp(name, id)) {
            return jail_bad_input("cgroup %s already exists (another jail with the id '%s', or "
                                  "one whose cgroups were not removed)",
                                  path, id);
        }
        if (last)
            return 0;
        s = e + 1;
    }
}

static bool blank(const char *s)
{
    return s[strspn(s, " \n\t")] == '\0';
}

/* A new cpuset group starts with no CPUs and no memory nodes, and a task
 * cannot join it so: each level of rel gets its parent's values when empty. */
static int inherit_cpuset(const char *mount, const char *rel)
{
    static const char *const files[] = {"cpuset.cpus", "cpuset.mems"};
    char path[PATH_MAX], parent[PATH_MAX];
    snprintf(path, sizeof(path), "%s", mount);
    const char *s = rel;
    for (;;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        snprintf(parent, sizeof(parent), "%s", path);
        if (path_format(path, sizeof(path), "%s/%.*s", parent, (int)n, s) < 0)
            return -1;
        for (size_t i = 0; i < 2; i++) {
            char mine[1024], theirs[1024];
            char file[PATH_MAX + 32];
            snprintf(file, sizeof(file), "%s/%s", path, files[i]);
            if (read_small_file(AT_FDCWD, file, mine, sizeof(mine)) < 0)
                return error_prefix("cgroup");
            if (!blank(mine))
                continue;
            snprintf(file, sizeof(file), "%s/%s", parent, files[i]);
            if (read_small_file(AT_FDCWD, file, theirs, sizeof(theirs)) < 0)
                return error_prefix("cgroup");
            if (blank(theirs))
                return error_set("cannot inherit %s for cgroup %s: its parent's is empty", files[i],
                                 path);
            snprintf(file, sizeof(file), "%s/%s", path, files[i]);
            if (write_file(file, theirs) < 0)
                return error_errno("cannot write %s", file);
        }
        if (!e)
            return 0;
        s = e + 1;
    }
}

/* The kernel's verdict on a value: EINVAL and its kind mean the value was bad. */
static int setting_failed(const struct cgroup_setting *c, const char *dir)
{
    int e = errno;
    if (e == ENOENT)
        return jail_bad_input("--cgroup %s: unknown cgroup file (no %s in %s)", c->file, c->file,
                              dir);
    if (e == EINVAL || e == ERANGE || e == EOPNOTSUPP || e == ENOTSUP || e == EACCES ||
        e == EPERM || e == EISDIR)
        return jail_bad_input("--cgroup %s=%s: refused by the kernel: %s", c->file, c->value,
                              strerror(e));
    return error_set("--cgroup %s=%s: cannot write %s/%s: %s", c->file, c->value, dir, c->file,
                     strerror(e));
}

static int write_settings(const struct jail_args *a, const struct cgroup_hierarchy *h,
                          const char *dir)
{
    for (unsigned i = 0; i < h->nsettings; i++) {
        const struct cgroup_setting *c = &a->cgroups[h->settings[i]];
        char path[PATH_MAX + 300], value[JAIL_MAX_CGROUP_LINE + 2];
        if (path_format(path, sizeof(path), "%s/%s", dir, c->file) < 0)
            return -1;
        snprintf(value, sizeof(value), "%s\n", c->value);
        if (write_file(path, value) < 0)
            return setting_failed(c, dir);
    }
    return 0;
}

/* Moves the jailer into dir, recording how to move it back. */
static int join(const struct cgroup_hierarchy *h, const char *dir)
{
    char path[2 * PATH_MAX];
    const char *own = strcmp(h->own, "/") ? h->own : "";
    if (path_format(path, sizeof(path), "%s%s/cgroup.procs", h->mount, own) < 0)
        return -1;
    if (undo_push_write(path, "0\n") < 0)
        return error_prefix("cannot record the jailer's cgroup");
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    char pid[32];
    snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (write_file(path, pid) < 0)
        return error_errno("cannot join cgroup %s", dir);
    return 0;
}

/* cgroup v2: a controller is usable in a group only when every ancestor
 * enables it for its children. */
static int enable_v2_controller(const char *mount, const char *rel, const char *controller)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s", mount);
    const char *s = rel;
    for (;;) {
        char file[PATH_MAX + 32], current[1024];
        snprintf(file, sizeof(file), "%s/cgroup.subtree_control", path);
        if (read_small_file(AT_FDCWD, file, current, sizeof(current)) < 0)
            return error_prefix("cgroup");
        if (!words_have(current, controller)) {
            char plus[80], minus[80];
            snprintf(plus, sizeof(plus), "+%s\n", controller);
            snprintf(minus, sizeof(minus), "-%s\n", controller);
            if (undo_push_write(file, minus) < 0)
                return -1;
            if (write_file(file, plus) < 0)
                return error_errno("cannot enable the %s controller in %s", controller, file);
        }
        const char *e = strchr(s, '/');
        if (!e)
            return 0; /* path is now the jail's parent group */
        size_t n = (size_t)(e - s);
        size_t len = strlen(path);
        snprintf(path + len, sizeof(path) - len, "/%.*s", (int)n, s);
        s = e + 1;
    }
}

int cgroup_setup(const struct jail_args *a, const struct cgroup_plan *p)
{
    char rel[PATH_MAX];
    snprintf(rel, sizeof(rel), "%s/%s", a->parent_cgroup, a->id);
    if (p->version == 2 && p->join_parent) {
        const struct cgroup_hierarchy *h = &p->h[0];
        char dir[PATH_MAX + 8];
        snprintf(dir, sizeof(dir), "%s/%s", h->mount, a->parent_cgroup);
        struct stat st;
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
            return 0; /* Firecracker's rule: no such group, nothing to join */
        if (join(h, dir) < 0)
            return error_prefix("--parent-cgroup %s (to create a group for the jail inside it, "
                                "pass a --cgroup setting)",
                                a->parent_cgroup);
        return 0;
    }
    char dirs[CGROUP_MAX_HIERARCHIES][PATH_MAX + 8];
    for (unsigned k = 0; k < p->n; k++) {
        const struct cgroup_hierarchy *h = &p->h[k];
        snprintf(dirs[k], sizeof(dirs[k]), "%s/%s", h->mount, rel);
        if (make_levels(h->mount, rel, a->id) < 0)
            return -1;
        if (p->version == 1 && h->cpuset && inherit_cpuset(h->mount, rel) < 0)
            return -1;
        if (p->version == 2) {
            for (unsigned i = 0; i < h->nsettings; i++) {
                if (enable_v2_controller(h->mount, rel, a->cgroups[h->settings[i]].controller) < 0)
                    return -1;
            }
        }
    }
    /* Values first: a cpuset group must have its CPUs before a task joins. */
    for (unsigned k = 0; k < p->n; k++) {
        if (write_settings(a, &p->h[k], dirs[k]) < 0)
            return -1;
    }
    for (unsigned k = 0; k < p->n; k++) {
        if (join(&p->h[k], dirs[k]) < 0)
            return -1;
    }
    return 0;
}
