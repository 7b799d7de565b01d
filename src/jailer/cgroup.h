/* The jail's cgroups. Version 1: for each controller named by a --cgroup
 * setting, <mount>/<parent>/<id> in that controller's hierarchy (cpuset.cpus
 * and cpuset.mems of new cpuset groups inherited from their parents).
 * Version 2: <mount>/<parent>/<id> in the unified hierarchy, the settings'
 * controllers enabled down to it; without settings an existing <parent> is
 * joined as it is. The jailer writes the values, then joins every group. */
#ifndef EMBER_JAILER_CGROUP_H
#define EMBER_JAILER_CGROUP_H

#include "jailer/jailer.h"

#include <limits.h>

#define CGROUP_MAX_HIERARCHIES 16

struct cgroup_hierarchy {
    char mount[PATH_MAX];
    char controllers[512]; /* v1: the mount's options; v2: what its root offers */
    char own[PATH_MAX];    /* the jailer's cgroup in it ("/..."), from /proc/self/cgroup */
    bool cpuset;
    unsigned settings[JAIL_MAX_CGROUPS]; /* indices into jail_args.cgroups */
    unsigned nsettings;
};

struct cgroup_plan {
    int version;
    struct cgroup_hierarchy h[CGROUP_MAX_HIERARCHIES];
    unsigned n;
    bool join_parent; /* v2 without settings: join <parent> if it exists */
};

/* Finds the hierarchies the settings need (from /proc/mounts) before anything
 * is created: a controller that is not there is bad input. */
int cgroup_plan(const struct jail_args *a, struct cgroup_plan *p);
/* Creates the groups, writes the values and moves the jailer in; every group
 * it made and every move is recorded for undo. */
int cgroup_setup(const struct jail_args *a, const struct cgroup_plan *p);

#endif
