/*
 * kvmstat PID: KVM's statistics of the VM that process PID runs, summed over its vCPUs, as
 * "name value" lines. Where debugfs is locked down (these hosts: "debugfs access is
 * restricted"), KVM's binary statistics still work, but KVM_GET_STATS_FD answers only the
 * process that created the VM (others get EIO). So the VMM runs with kvmstat-preload.so, which
 * opens the statistics descriptors inside it; this program copies them out with pidfd_getfd()
 * (root, or ptrace rights over the VMM) and reads them.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

#define MAX_STATS 256

struct stat_sum {
    char name[64];
    uint64_t value;
    int vcpu; /* a per-vCPU statistic (summed) */
};

static struct stat_sum sums[MAX_STATS];
static int nsums;

static void add(const char *name, uint64_t value, int vcpu)
{
    for (int i = 0; i < nsums; i++) {
        if (!strcmp(sums[i].name, name)) {
            sums[i].value += value;
            return;
        }
    }
    if (nsums == MAX_STATS)
        return;
    snprintf(sums[nsums].name, sizeof(sums[nsums].name), "%s", name);
    sums[nsums].value = value;
    sums[nsums].vcpu = vcpu;
    nsums++;
}

/* Reads every single-value statistic of one VM or vCPU statistics descriptor. */
static int read_stats(int fd, int vcpu)
{
    struct kvm_stats_header h;
    if (pread(fd, &h, sizeof(h), 0) != sizeof(h))
        return -1;
    size_t desc_size = sizeof(struct kvm_stats_desc) + h.name_size;
    char *descs = malloc(desc_size * h.num_desc);
    if (!descs || pread(fd, descs, desc_size * h.num_desc, h.desc_offset) !=
                      (ssize_t)(desc_size * h.num_desc)) {
        free(descs);
        return -1;
    }
    for (uint32_t i = 0; i < h.num_desc; i++) {
        struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * desc_size);
        if (d->size != 1)
            continue; /* histograms */
        uint64_t v;
        if (pread(fd, &v, sizeof(v), h.data_offset + d->offset) == sizeof(v))
            add(d->name, v, vcpu);
    }
    free(descs);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: kvmstat PID\n");
        return 2;
    }
    int pid = atoi(argv[1]);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        fprintf(stderr, "kvmstat: pidfd_open(%d): %s\n", pid, strerror(errno));
        return 1;
    }
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", pid);
    DIR *dp = opendir(dir);
    if (!dp) {
        fprintf(stderr, "kvmstat: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    int found = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        char path[320], target[128];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n <= 0)
            continue;
        target[n] = '\0';
        /* "anon_inode:kvm-vm-stats", "anon_inode:kvm-vcpu-stats:N" */
        int vcpu;
        if (!strcmp(target, "anon_inode:kvm-vm-stats"))
            vcpu = 0;
        else if (!strncmp(target, "anon_inode:kvm-vcpu-stats", 25))
            vcpu = 1;
        else
            continue;
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
        if (fd < 0) {
            fprintf(stderr, "kvmstat: pidfd_getfd: %s\n", strerror(errno));
            return 1;
        }
        if (read_stats(fd, vcpu) == 0)
            found++;
        close(fd);
    }
    closedir(dp);
    if (!found) {
        fprintf(stderr,
                "kvmstat: process %d has no KVM statistics descriptors (run it with "
                "LD_PRELOAD=kvmstat-preload.so)\n",
                pid);
        return 1;
    }
    for (int i = 0; i < nsums; i++)
        printf("%s %llu\n", sums[i].name, (unsigned long long)sums[i].value);
    return 0;
}
