/* The jailer's command line: Firecracker's flags, each value checked as far
 * as it can be without touching the host. */
#include "jailer/jailer.h"

#include "util/error.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jail_usage(void)
{
    printf("ember-jailer: runs ember in a chroot jail, as Firecracker's jailer runs Firecracker\n"
           "\n"
           "Usage:\n"
           "  ember-jailer --id ID --exec-file FILE --uid UID --gid GID [options] [-- EMBER ARGS]\n"
           "\n"
           "  --id ID                 the jail's id: 1 to 64 letters, digits or '-'\n"
           "  --exec-file FILE        ember's binary (a regular file, not a symbolic link); its\n"
           "                          name is the jail's <exec_name>\n"
           "  --uid UID, --gid GID    the user and group ember runs as (numbers)\n"
           "  --chroot-base-dir DIR   where jails are built (default " JAIL_DEFAULT_BASE "):\n"
           "                          the jail's root is DIR/<exec_name>/ID/root, made\n"
           "                          where missing (an existing one is taken as it is)\n"
           "  --cgroup FILE=VALUE     a cgroup setting for the jail, repeatable (e.g.\n"
           "                          cpuset.cpus=0, pids.max=64, memory.limit_in_bytes=256M)\n"
           "  --cgroup-version 1|2    the cgroup hierarchy to use (default 1)\n"
           "  --parent-cgroup PATH    the jail's cgroup is PATH/ID in each hierarchy (default\n"
           "                          <exec_name>); with version 2 and no --cgroup, an existing\n"
           "                          PATH is joined as it is\n"
           "  --netns PATH            join this network namespace (e.g. /var/run/netns/NAME)\n"
           "  --resource-limit fsize=BYTES|no-file=N   resource limits, repeatable (default\n"
           "                          no-file=%d)\n"
           "  --daemonize             detach: new session, standard streams on /dev/null\n"
           "  --new-pid-ns            run ember as process 1 of a new PID namespace\n"
           "  --help, --version\n"
           "\n"
           "Arguments after -- go to ember, after the jailer's own: --id ID --start-time-us US\n"
           "--start-time-cpu-us US --parent-cpu-time-us US.\n"
           "\n"
           "Exit status: ember's once it runs; without it 0 (--daemonize or --new-pid-ns: ember\n"
           "is running), 2 bad flags or input, 4 a step of building the jail failed. On a\n"
           "failure the jailer removes what it created, or says what it left.\n",
           JAIL_DEFAULT_NOFILE);
}

static bool id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > JAIL_MAX_ID_LEN)
        return false;
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-')
            return false;
    }
    return true;
}

/* A decimal number, digits only (no sign, no spaces), at most max. */
static bool parse_decimal(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s)
        return false;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        unsigned d = (unsigned)(*p - '0');
        if (d > max || v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* uid_t and gid_t are 32 bits; (uid_t)-1 means "unchanged" to setresuid, so
 * it would leave ember running as root. */
static int parse_id_number(const char *flag, const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_decimal(s, UINT32_MAX - 1, &v))
        return jail_bad_input("%s '%s': use a number from 0 to %u", flag, s, UINT32_MAX - 1);
    *out = (uint32_t)v;
    return 0;
}

/* A relative path of plain names: no "/" at either end, no empty, "." or ".." part. */
static bool relative_path_valid(const char *p)
{
    if (!*p || *p == '/' || strlen(p) > 1024)
        return false;
    const char *s = p;
    while (*s) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return false;
        if (!e)
            break;
        s = e + 1;
        if (!*s)
            return false;
    }
    return true;
}

/* FILE=VALUE: FILE is <controller>.<property> (letters, digits, '_', '.', '-'); VALUE one
 * line without '=' (Firecracker splits on it). */
static int parse_cgroup(const char *spec, struct jail_args *a)
{
    if (a->ncgroups == JAIL_MAX_CGROUPS)
        return jail_bad_input("at most %d --cgroup settings", JAIL_MAX_CGROUPS);
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1] || strchr(eq + 1, '='))
        return jail_bad_input("--cgroup '%s': use FILE=VALUE (e.g. cpuset.cpus=0)", spec);
    struct cgroup_setting *c = &a->cgroups[a->ncgroups];
    size_t flen = (size_t)(eq - spec);
    if (flen >= sizeof(c->file))
        return jail_bad_input("--cgroup '%s': the file name is too long", spec);
    memcpy(c->file, spec, flen);
    c->file[flen] = '\0';
    const char *dot = strchr(c->file, '.');
    bool ok = dot && dot != c->file && dot[1] && (size_t)(dot - c->file) < sizeof(c->controller);
    for (const char *p = c->file; ok && *p; p++)
        ok = isalnum((unsigned char)*p) || *p == '_' || *p == '.' || *p == '-';
    if (!ok)
        return jail_bad_input("--cgroup '%s': '%s' is not a cgroup file name "
                              "(<controller>.<property>, e.g. pids.max)",
                              spec, c->file);
    memcpy(c->controller, c->file, (size_t)(dot - c->file));
    c->controller[dot - c->file] = '\0';
    const char *value = eq + 1;
    if (strlen(value) >= sizeof(c->value))
        return jail_bad_input("--cgroup '%s': the value is too long", c->file);
    for (const char *p = value; *p; p++) {
        if (*p == '\n' || *p == '\r' || !isprint((unsigned char)*p))
            return jail_bad_input("--cgroup %s: the value has a control character", c->file);
    }
    snprintf(c->value, sizeof(c->value), "%s", value);
    a->ncgroups++;
    return 0;
}

static int parse_resource_limit(const char *spec, struct jail_args *a)
{
    const char *eq = strchr(spec, '=');
    if (!eq)
        return jail_bad_input("--resource-limit '%s': use fsize=BYTES or no-file=N", spec);
    uint64_t v;
    if (!parse_decimal(eq + 1, UINT64_MAX, &v))
        return jail_bad_input("--resource-limit '%s': '%s' is not a number", spec, eq + 1);
    size_t n = (size_t)(eq - spec);
    if (n == 5 && !strncmp(spec, "fsize", 5)) {
        a->fsize_set = true;
        a->fsize = v;
    } else if (n == 7 && !strncmp(spec, "no-file", 7)) {
        a->nofile = v;
    } else {
        return jail_bad_input("--resource-limit '%s': unknown resource '%.*s' (fsize or no-file)",
                              spec, (int)n, spec);
    }
    return 0;
}

enum flag {
    F_ID,
    F_EXEC_FILE,
    F_UID,
    F_GID,
    F_CGROUP_VERSION,
    F_CGROUP,
    F_PARENT_CGROUP,
    F_CHROOT_BASE,
    F_NETNS,
    F_RESOURCE_LIMIT,
    F_DAEMONIZE,
    F_NEW_PID_NS,
    F_HELP,
    F_VERSION,
    F_COUNT
};

static const struct {
    const char *name;
    bool takes_value;
    bool repeatable;
} flags[F_COUNT] = {
    [F_ID] = {"id", true, false},
    [F_EXEC_FILE] = {"exec-file", true, false},
    [F_UID] = {"uid", true, false},
    [F_GID] = {"gid", true, false},
    [F_CGROUP_VERSION] = {"cgroup-version", true, false},
    [F_CGROUP] = {"cgroup", true, true},
    [F_PARENT_CGROUP] = {"parent-cgroup", true, false},
    [F_CHROOT_BASE] = {"chroot-base-dir", true, false},
    [F_NETNS] = {"netns", true, false},
    [F_RESOURCE_LIMIT] = {"resource-limit", true, true},
    [F_DAEMONIZE] = {"daemonize", false, false},
    [F_NEW_PID_NS] = {"new-pid-ns", false, false},
    [F_HELP] = {"help", false, true},
    [F_VERSION] = {"version", false, true},
};

static int apply_flag(struct jail_args *a, enum flag f, const char *v)
{
    uint64_t n;
    switch (f) {
    case F_ID:
        if (!id_valid(v))
            return jail_bad_input("--id '%s': use 1 to %d letters, digits or '-'", v,
                                  JAIL_MAX_ID_LEN);
        a->id = v;
        return 0;
    case F_EXEC_FILE:
        if (!*v)
            return jail_bad_input("--exec-file needs a path");
        a->exec_file = v;
        return 0;
    case F_UID:
        return parse_id_number("--uid", v, &a->uid);
    case F_GID:
        return parse_id_number("--gid", v, &a->gid);
    case F_CGROUP_VERSION:
        if (!parse_decimal(v, 2, &n) || n < 1)
            return jail_bad_input("--cgroup-version '%s': use 1 or 2", v);
        a->cgroup_version = (int)n;
        return 0;
    case F_CGROUP:
        return parse_cgroup(v, a);
    case F_PARENT_CGROUP:
        if (!relative_path_valid(v))
            return jail_bad_input("--parent-cgroup '%s': use a relative path of names, "
                                  "without '.' or '..'",
                                  v);
        a->parent_cgroup = v;
        return 0;
    case F_CHROOT_BASE:
        if (!*v)
            return jail_bad_input("--chroot-base-dir needs a path");
        a->chroot_base = v;
        return 0;
    case F_NETNS:
        if (!*v)
            return jail_bad_input("--netns needs a path");
        a->netns = v;
        return 0;
    case F_RESOURCE_LIMIT:
        return parse_resource_limit(v, a);
    case F_DAEMONIZE:
        a->daemonize = true;
        return 0;
    case F_NEW_PID_NS:
        a->new_pid_ns = true;
        return 0;
    case F_HELP:
        a->help = true;
        return 0;
    case F_VERSION:
        a->version = true;
        return 0;
    case F_COUNT:
        break;
    }
    return error_set("internal: unhandled flag");
}

int jail_parse_args(int argc, char **argv, struct jail_args *a)
{
    memset(a, 0, sizeof(*a));
    a->cgroup_version = 1;
    a->chroot_base = JAIL_DEFAULT_BASE;
    a->nofile = JAIL_DEFAULT_NOFILE;
    bool seen[F_COUNT] = {false};
    int i;
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            i++;
            break;
        }
        if (!strcmp(arg, "-h")) {
            a->help = true;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0)
            return jail_bad_input("unexpected argument '%s' (ember's arguments go after --)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int f;
        for (f = 0; f < F_COUNT; f++) {
            if (strlen(flags[f].name) == len && !strncmp(flags[f].name, name, len))
                break;
        }
        if (f == F_COUNT)
            return jail_bad_input("unknown flag '--%.*s' (see ember-jailer --help)", (int)len,
                                  name);
        if (seen[f] && !flags[f].repeatable)
            return jail_bad_input("--%s given twice", flags[f].name);
        seen[f] = true;
        const char *value = NULL;
        if (flags[f].takes_value) {
            if (eq)
                value = eq + 1;
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return jail_bad_input("--%s needs a value", flags[f].name);
        } else if (eq) {
            return jail_bad_input("--%s takes no value", flags[f].name);
        }
        if (apply_flag(a, (enum flag)f, value) < 0)
            return -1;
    }
    a->ember_argv = argv + i;
    a->ember_argc = i < argc ? argc - i : 0;
    if (a->help || a->version)
        return 0;
    static const enum flag required[] = {F_ID, F_EXEC_FILE, F_UID, F_GID};
    for (size_t k = 0; k < sizeof(required) / sizeof(required[0]); k++) {
        if (!seen[required[k]])
            return jail_bad_input("--%s is required (see ember-jailer --help)",
                                  flags[required[k]].name);
    }
    return 0;
}
