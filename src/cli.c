#include "cli.h"

#include "api/server.h"
#include "backends/block.h"
#include "util/error.h"
#include "util/version.h"
#include "virtio/vhost_user_dev.h"
#include "virtio/vhost_user_fs.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cli_usage(FILE *f)
{
    fprintf(
        f,
        "ember " EMBER_VERSION ": a small, fast virtual machine monitor for Linux KVM\n"
        "\n"
        "Usage:\n"
        "  ember run --kernel FILE [options]   boot a kernel in a new virtual machine\n"
        "  ember --api-sock PATH [flags]       serve Firecracker's API on a unix socket\n"
        "  ember --config-file FILE [flags]    boot from a Firecracker configuration file\n"
        "  ember migrate --from SOCK --to SOCK --url URL   live-migrate a machine between\n"
        "                                      two embers (ember migrate --help)\n"
        "  ember --help                        this text\n"
        "  ember --version                     print the version\n"
        "\n"
        "Flags of the API mode (Firecracker's; VALUE may also be given as --flag=VALUE):\n"
        "  --api-sock PATH       the API's unix socket (default " CLI_DEFAULT_API_SOCK ";\n"
        "                        " CLI_FIRECRACKER_API_SOCK " when run as firecracker)\n"
        "  --config-file FILE    configure from FILE (Firecracker's JSON document) and start\n"
        "                        the machine at once; the API keeps serving unless --no-api\n"
        "  --no-api              no API socket (needs --config-file)\n"
        "  --id ID               instance id, in GET / and in log lines (default\n"
        "                        anonymous-instance)\n"
        "  --level LEVEL         log level: Off, Error, Warning (default), Info, Debug, Trace\n"
        "  --log-path PATH       log to a file or named pipe instead of stderr\n"
        "  --show-level          put the level in log lines\n"
        "  --show-log-origin     put the source file and line in log lines\n"
        "  --module NAME         accepted for compatibility; ember does not filter by module\n"
        "  --metrics-path PATH   write metrics (JSON lines) to a file or named pipe\n"
        "  --http-api-max-payload-size BYTES   largest request body (default 51200)\n"
        "  --http-api-request-timeout-ms MS    a request must arrive whole, and a client\n"
        "                        read its answers, within MS (default 5000)\n"
        "  --http-api-idle-timeout-ms MS       close a connection with no request in\n"
        "                        progress after MS (default 0: only to make room)\n"
        "  --enable-pci          virtio devices on PCI (default: virtio-mmio, announced on\n"
        "                        the kernel command line, as Firecracker does)\n"
        "  --no-seccomp          no system call filters (see below)\n"
        "  --seccomp-filter FILE system call filters from FILE, in Firecracker's\n"
        "                        seccompiler JSON format, instead of ember's own\n"
        "  --start-time-us US, --start-time-cpu-us US, --parent-cpu-time-us US\n"
        "                        when the jailer started (CLOCK_MONOTONIC), this process's\n"
        "                        CPU time then and the jailer's: the metrics' start-up times\n"
        "  --boot-timer          Firecracker's boot timer: a guest write of 123 at\n"
        "                        0xc0000000 logs the boot time (Info level)\n"
        "  --metadata FILE       MMDS contents (JSON), read and checked at start\n"
        "  --describe-snapshot FILE, --snapshot-version\n"
        "                        the snapshot file's format version and contents; the\n"
        "                        format version this ember writes\n"
        "  --mmds-size-limit BYTES  the MMDS data store's largest size (default: the\n"
        "                        --http-api-max-payload-size value, 51200)\n"
        "\n"
        "Options of `ember run` (VALUE may also be given as --option=VALUE):\n"
        "  --kernel FILE         kernel to boot: bzImage, vmlinux ELF, or ELF with a PVH note\n"
        "  --initrd FILE         initial ramdisk for the kernel\n"
        "  --cmdline STRING      kernel command line (default \"%s\")\n"
        "  --memory MiB[,shared=on]  guest RAM in MiB, or with a suffix: 512M, 2G (default\n"
        "                        %d); shared=on puts it in a memfd mapped shared (for a\n"
        "                        local live migration, which hands it over without copying)\n"
        "  --cpus N              number of vCPUs (default %d)\n"
        "  --cpu-template NAME   CPUID the guest sees: host (all KVM offers, default),\n"
        "                        baseline (hides CX16, POPCNT, SMAP, FSGSBASE, ERMS, FSRM, the "
        "XSAVE\n"
        "                        family and KVM paravirtual features that need hypercalls),\n"
        "                        or Firecracker's C3, T2, T2S, T2CL (Intel), T2A (AMD)\n"
        "  --cpu-placement vmm=LIST,vcpu=LIST[,poll=US|off]\n"
        "                        host CPUs (cpulists, e.g. 0-3,5): vmm, reserved for every\n"
        "                        thread of ember that is not a vCPU; vcpu, one per vCPU in\n"
        "                        vCPU order; the two must not overlap and must be CPUs ember\n"
        "                        may run on (its affinity at start, bounded by any cpuset);\n"
        "                        the device I/O threads then poll their queues after work\n"
        "                        (kicks off) in an adaptive window of at most poll=US\n"
        "                        (default 1000; off: they wait for kicks)\n"
        "  --debug-exit          add an exit port at 0xf4: a guest write of v ends ember\n"
        "                        with status (v << 1) | 1\n"
        "  --drive SPEC          a virtio-blk disk (repeatable); SPEC is path=FILE and any of\n"
        "                        the keys below, or socket=PATH (a vhost-user-blk back-end\n"
        "                        listening there serves the disk) with id, root, partuuid\n"
        "                        cache=writeback|unsafe and reconnect\n"
        "                          id=NAME          serial the guest reads (max 20 bytes)\n"
        "                          reconnect=S      vhost-user: seconds to wait for a back-end\n"
        "                                           that went away (default 10, 0: never)\n"
        "                          readonly=on      writes fail, VIRTIO_BLK_F_RO offered\n"
        "                          cache=MODE       writeback (default), none (O_DIRECT),\n"
        "                                           unsafe (flushes not offered)\n"
        "                          io=auto|uring|sync  io_uring, or synchronous I/O; auto\n"
        "                                           (default): synchronous for a file in\n"
        "                                           memory that io_uring cannot read inline\n"
        "                          queues=N         1-16 request queues (default 1)\n"
        "                          root=on          first disk (vda) and root=/dev/vda on\n"
        "                                           the command line; partuuid=ID uses\n"
        "                                           root=PARTUUID=ID instead\n"
        "                          bw=BYTES         bandwidth limit per second (K/M/G)\n"
        "                          iops=N           request limit per second\n"
        "                          poll=US          after work, poll the queues this many\n"
        "                                           microseconds before waiting for a kick\n"
        "                                           (0, the default, never polls)\n"
        "  --transport KIND      how virtio devices attach: pci (default) or mmio (announced\n"
        "                        on the kernel command line as virtio_mmio.device=...)\n"
        "  --console KIND        guest console on ember's stdio: serial (ttyS0, default) or\n"
        "                        virtio (hvc0; serial output is still shown)\n"
        "  --rng                 a virtio-rng device fed by the host's getrandom()\n"
        "  --rng-rate BYTES      its rate limit in bytes per second, K/M/G suffixes allowed\n"
        "                        (default 1M; 0 = unlimited); implies --rng\n"
        "  --blk-sync            synchronous block I/O instead of io_uring\n"
        "  --net SPEC            a virtio-net interface (repeatable); SPEC is one of\n"
        "                          tap=NAME         a host tap device (created if missing\n"
        "                                           and allowed); offloads pass through\n"
        "                          user             user-mode networking (libslirp): guest\n"
        "                                           10.0.2.15, host 10.0.2.2 (the host's\n"
        "                                           loopback), DNS 10.0.2.3, DHCP\n"
        "                          vhost-user=PATH  a vhost-user-net back-end (DPDK, a switch)\n"
        "                                           on unix socket PATH, with mode=client\n"
        "                                           (default: it listens) or mode=server\n"
        "                                           (ember listens, it connects within 10 s)\n"
        "                                           and reconnect=S (seconds to wait for a\n"
        "                                           back-end that went away, default 10, 0\n"
        "                                           never); only mac= and queues=1 besides\n"
        "                        and any of mac=XX:XX:XX:XX:XX:XX, queues=1 (one queue pair;\n"
        "                        no multiqueue yet), hostfwd=tcp:HOST:GUEST\n"
        "                        (user only, several joined with +), rx-bw=BYTES, tx-bw=BYTES,\n"
        "                        rx-pps=N, tx-pps=N (per-second limits); tap only:\n"
        "                        vhost=auto|on|off (the kernel's vhost-net data path; auto\n"
        "                        uses it when /dev/vhost-net opens), sndbuf=BYTES (frames on\n"
        "                        their way through the host, beyond which the guest waits)\n"
        "  --vsock SPEC          a virtio-vsock device; SPEC is cid=N,uds=PATH: the guest's\n"
        "                        CID (3 or more) and a unix socket; guest connections to\n"
        "                        host port P reach PATH_P, host programs connect to PATH\n"
        "                        and send \"CONNECT P\\n\" (ember answers \"OK <port>\\n\")\n"
        "  --pmem SPEC           a virtio-pmem device (repeatable): path=FILE mapped into the\n"
        "                        guest's physical memory (/dev/pmemN), and any of id=NAME,\n"
        "                        readonly=on (a read-only mapping; guest writes dropped),\n"
        "                        root=on (root=/dev/pmemN on the command line)\n"
        "  --fs SPEC             a virtio-fs device (repeatable) served by a vhost-user back-end\n"
        "                        (virtiofsd): tag=NAME,socket=PATH[,queues=N]; the guest\n"
        "                        mounts it by NAME (1-36 printable bytes, no space or ','),\n"
        "                        N request queues (1-16, default 1)\n"
        "  --log-level LEVEL     error, warn (default), info or debug; logs go to stderr\n"
        "  --boot-timer          as in the API mode\n"
        "  --api-sock PATH       also serve the API's runtime routes on PATH: pause and\n"
        "                        resume (PATCH /vm), snapshots (PUT /snapshot/create),\n"
        "                        metrics, drive and interface updates, actions\n"
        "  --track-dirty-pages   log the pages the guest and ember write, for Diff snapshots\n"
        "  --no-seccomp, --seccomp-filter FILE   as in the API mode\n"
        "\n"
        "Every thread runs under a seccomp filter of its kind unless --no-seccomp; a\n"
        "system call outside it ends ember with status 148 and a line naming both.\n"
        "\n"
        "The guest's first serial port (COM1, ttyS0) is ember's standard input and output.\n"
        "On a terminal, Ctrl-A x quits, Ctrl-A h lists the other console keys.\n"
        "\n"
        "Exit status: 0 guest powered off or reset; 2 bad usage or input; 4 host failure;\n"
        "10 guest triple fault; 12 guest halted for good; 14 KVM internal error;\n"
        "16 VM entry failure; 18 guest crash; 20 other unexpected exit; 148 a forbidden\n"
        "system call (seccomp); 128+N signal N;\n"
        "odd values come from the guest through --debug-exit.\n",
        VM_DEFAULT_CMDLINE, VM_DEFAULT_MEMORY_MIB, VM_DEFAULT_CPUS);
}

int cli_parse_uint(const char *s, unsigned max, unsigned *out)
{
    if (!*s)
        return error_set("empty number");
    unsigned long long v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return error_set("'%s' is not a number", s);
        v = v * 10 + (unsigned)(*p - '0');
        if (v > max)
            return error_set("%s is too large (at most %u)", s, max);
    }
    *out = (unsigned)v;
    return 0;
}

int cli_parse_size(const char *s, unsigned unit_shift, uint64_t *out)
{
    const char *p = s;
    unsigned long long v = 0;
    if (!isdigit((unsigned char)*p))
        return error_set("'%s' is not a size", s);
    while (isdigit((unsigned char)*p)) {
        if (v > (1ULL << 40))
            return error_set("'%s' is absurdly large", s);
        v = v * 10 + (unsigned)(*p++ - '0');
    }
    int shift;
    switch (toupper((unsigned char)*p)) {
    case '\0':
        shift = (int)unit_shift;
        break;
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    default:
        return error_set("'%s' has an unknown size suffix (use M or G)", s);
    }
    if (*p && p[1] && !((p[1] == 'i' || p[1] == 'I') && (p[2] == 'B' || p[2] == 'b') && !p[3]) &&
        !((p[1] == 'B' || p[1] == 'b') && !p[2]))
        return error_set("'%s' has an unknown size suffix (use M or G)", s);
    /* Convert to units of 1 << unit_shift, refusing fractions and overflow. */
    if (v > (1ULL << 40))
        return error_set("'%s' is absurdly large", s);
    unsigned __int128 bytes = (unsigned __int128)v << shift;
    unsigned __int128 unit = (unsigned __int128)1 << unit_shift;
    if (bytes % unit)
        return error_set("'%s' is not a whole number of MiB", s);
    *out = (uint64_t)(bytes / unit);
    return 0;
}

enum opt_id {
    OPT_KERNEL,
    OPT_INITRD,
    OPT_CMDLINE,
    OPT_MEMORY,
    OPT_CPUS,
    OPT_CPU_TEMPLATE,
    OPT_DEBUG_EXIT,
    OPT_LOG_LEVEL,
    OPT_DRIVE,
    OPT_TRANSPORT,
    OPT_CONSOLE,
    OPT_RNG,
    OPT_RNG_RATE,
    OPT_BLK_SYNC,
    OPT_NET,
    OPT_SYNC_TEARDOWN,
    OPT_NO_SECCOMP,
    OPT_SECCOMP_FILTER,
    OPT_VSOCK,
    OPT_PMEM,
    OPT_FS,
    OPT_BOOT_TIMER,
    OPT_API_SOCK,
    OPT_TRACK_DIRTY_PAGES,
    OPT_CPU_PLACEMENT,
    OPT_HELP,
};

static const struct {
    const char *name;
    enum opt_id id;
    bool takes_value;
} run_options[] = {
    {"kernel", OPT_KERNEL, true},
    {"initrd", OPT_INITRD, true},
    {"cmdline", OPT_CMDLINE, true},
    {"memory", OPT_MEMORY, true},
    {"cpus", OPT_CPUS, true},
    {"cpu-template", OPT_CPU_TEMPLATE, true},
    {"debug-exit", OPT_DEBUG_EXIT, false},
    {"log-level", OPT_LOG_LEVEL, true},
    {"drive", OPT_DRIVE, true},
    {"transport", OPT_TRANSPORT, true},
    {"console", OPT_CONSOLE, true},
    {"rng", OPT_RNG, false},
    {"rng-rate", OPT_RNG_RATE, true},
    {"blk-sync", OPT_BLK_SYNC, false},
    {"net", OPT_NET, true},
    {"sync-teardown", OPT_SYNC_TEARDOWN, false},
    {"no-seccomp", OPT_NO_SECCOMP, false},
    {"seccomp-filter", OPT_SECCOMP_FILTER, true},
    {"vsock", OPT_VSOCK, true},
    {"pmem", OPT_PMEM, true},
    {"fs", OPT_FS, true},
    {"boot-timer", OPT_BOOT_TIMER, false},
    {"api-sock", OPT_API_SOCK, true},
    {"track-dirty-pages", OPT_TRACK_DIRTY_PAGES, false},
    {"cpu-placement", OPT_CPU_PLACEMENT, true},
    {"help", OPT_HELP, false},
};

static uint64_t host_ram_mib(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return UINT64_MAX;
    return ((uint64_t)pages * (uint64_t)page) >> 20;
}

static bool is_on(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
        *out = true;
    else if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0"))
        *out = false;
    else
        return false;
    return true;
}

/* --drive path=FILE[,id=NAME][,readonly=on][,cache=none|writeback][,queues=N]
 * (a bare FILE is path=FILE). Values cannot contain commas. */
static int parse_drive_items(const char *spec, char *copy, struct drive_config *d);

int cli_parse_drive(const char *spec, struct drive_config *d)
{
    memset(d, 0, sizeof(*d));
    d->queues = 1;
    char *copy = strdup(spec);
    if (!copy)
        return error_set("out of memory");
    /* The strings stay referenced by the config for the process's life (cli_free_drive). */
    d->storage = copy;
    if (parse_drive_items(spec, copy, d) < 0) {
        free(copy);
        memset(d, 0, sizeof(*d));
        return -1;
    }
    return 0;
}

void cli_free_drive(struct drive_config *d)
{
    free(d->storage);
    memset(d, 0, sizeof(*d));
}

static int parse_drive_items(const char *spec, char *copy, struct drive_config *d)
{
    char *save = NULL;
    bool reconnect_given = false;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            if (d->path)
                return error_set("--drive %s: '%s' is not key=value", spec, item);
            d->path = item;
            continue;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "path") || !strcmp(key, "file")) {
            d->path = val;
        } else if (!strcmp(key, "socket")) {
            d->socket = val;
        } else if (!strcmp(key, "id")) {
            if (strlen(val) > 20)
                return error_set("--drive id '%s' is longer than the 20 bytes virtio allows", val);
            d->id = val;
        } else if (!strcmp(key, "readonly") || !strcmp(key, "ro")) {
            if (!is_on(val, &d->readonly))
                return error_set("--drive readonly=%s: use on or off", val);
        } else if (!strcmp(key, "cache")) {
            if (!strcmp(val, "none"))
                d->direct = true;
            else if (!strcmp(val, "writeback"))
                d->direct = false;
            else if (!strcmp(val, "unsafe"))
                d->unsafe = true;
            else
                return error_set("--drive cache=%s: use none, writeback or unsafe", val);
        } else if (!strcmp(key, "io")) {
            if (!strcmp(val, "sync"))
                d->engine = BLK_ENGINE_SYNC;
            else if (!strcmp(val, "uring") || !strcmp(val, "async"))
                d->engine = BLK_ENGINE_URING;
            else if (!strcmp(val, "auto"))
                d->engine = BLK_ENGINE_AUTO;
            else
                return error_set("--drive io=%s: use auto, uring or sync", val);
        } else if (!strcmp(key, "root")) {
            if (!is_on(val, &d->is_root))
                return error_set("--drive root=%s: use on or off", val);
        } else if (!strcmp(key, "partuuid")) {
            d->partuuid = val;
        } else if (!strcmp(key, "poll")) {
            if (cli_parse_uint(val, 1000000, &d->poll_us) < 0)
                return error_prefix("--drive poll");
        } else if (!strcmp(key, "bw") || !strcmp(key, "iops")) {
            uint64_t rate;
            if (cli_parse_size(val, 0, &rate) < 0)
                return error_prefix("--drive %s", key);
            struct token_bucket_config *tb =
                !strcmp(key, "bw") ? &d->rate_limit.bandwidth : &d->rate_limit.ops;
            *tb = (struct token_bucket_config){.size = rate, .refill_ms = 1000};
        } else if (!strcmp(key, "queues")) {
            if (cli_parse_uint(val, 16, &d->queues) < 0 || d->queues == 0)
                return error_set("--drive queues=%s: use 1 to 16", val);
        } else if (!strcmp(key, "reconnect")) {
            if (cli_parse_uint(val, VHOST_USER_RECONNECT_MAX_S, &d->reconnect_s) < 0)
                return error_prefix("--drive reconnect");
            reconnect_given = true;
        } else {
            return error_set("--drive: unknown key '%s' (path, socket, id, readonly, cache, "
                             "queues, reconnect)",
                             key);
        }
        /* What a vhost-user back-end decides itself (or ember cannot do on its data path). */
        if (d->socket && strcmp(key, "socket") && strcmp(key, "id") && strcmp(key, "root") &&
            strcmp(key, "partuuid") && strcmp(key, "cache") && strcmp(key, "path") &&
            strcmp(key, "file") && strcmp(key, "reconnect"))
            return error_set("--drive %s: %s= does not apply to a vhost-user drive (socket=); "
                             "it takes id, root, partuuid, cache=writeback|unsafe and "
                             "reconnect=SECONDS",
                             spec, key);
    }
    if (reconnect_given && !d->socket)
        return error_set("--drive %s: reconnect= is for a vhost-user drive (socket=)", spec);
    if (!reconnect_given)
        d->reconnect_s = VHOST_USER_RECONNECT_DEFAULT_S;
    if (d->socket && d->path)
        return error_set("--drive %s: give path=FILE or socket=PATH, not both", spec);
    if (d->socket) {
        if (!*d->socket)
            return error_set("--drive %s: socket= is empty", spec);
        if (d->direct)
            return error_set("--drive %s: cache=none does not apply to a vhost-user drive "
                             "(the back-end opens the image)",
                             spec);
        return 0;
    }
    if (!d->path || !*d->path)
        return error_set("--drive %s: needs path=FILE (or socket=PATH)", spec);
    return 0;
}

/* --fs tag=NAME,socket=PATH[,queues=N]. Values cannot contain commas. */
int cli_parse_fs(const char *spec, struct fs_config *f)
{
    memset(f, 0, sizeof(*f));
    bool reconnect_given = false;
    char *copy = strdup(spec);
    if (!copy)
        return error_set("out of memory");
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            error_set("--fs %s: '%s' is not key=value", spec, item);
            goto fail;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "tag")) {
            f->tag = val;
        } else if (!strcmp(key, "socket")) {
            f->socket = val;
        } else if (!strcmp(key, "queues")) {
            if (cli_parse_uint(val, VHOST_USER_FS_MAX_QUEUES, &f->num_queues) < 0 ||
                f->num_queues == 0) {
                error_set("--fs queues=%s: use 1 to %d", val, VHOST_USER_FS_MAX_QUEUES);
                goto fail;
            }
        } else if (!strcmp(key, "reconnect")) {
            if (cli_parse_uint(val, VHOST_USER_RECONNECT_MAX_S, &f->reconnect_s) < 0) {
                error_prefix("--fs reconnect");
                goto fail;
            }
            reconnect_given = true;
        } else {
            error_set("--fs: unknown key '%s' (tag, socket, queues, reconnect)", key);
            goto fail;
        }
    }
    if (!f->tag) {
        error_set("--fs %s: needs tag=NAME", spec);
        goto fail;
    }
    if (vhost_user_fs_check_tag(f->tag) < 0) {
        error_prefix("--fs %s", spec);
        goto fail;
    }
    if (!f->socket || !*f->socket) {
        error_set("--fs %s: needs socket=PATH (the vhost-user back-end's)", spec);
        goto fail;
    }
    if (!f->num_queues)
        f->num_queues = 1;
    if (!reconnect_given)
        f->reconnect_s = VHOST_USER_RECONNECT_DEFAULT_S;
    f->id = f->tag;
    /* The strings stay referenced by the config for the process's life (cli_free_fs). */
    f->storage = copy;
    return 0;
fail:
    free(copy);
    memset(f, 0, sizeof(*f));
    return -1;
}

void cli_free_fs(struct fs_config *f)
{
    free(f->storage);
    memset(f, 0, sizeof(*f));
}

/* --pmem path=FILE[,id=NAME][,readonly=on][,root=on] (a bare FILE is path=FILE). */
int cli_parse_pmem(const char *spec, struct pmem_config *p)
{
    memset(p, 0, sizeof(*p));
    char *copy = strdup(spec);
    if (!copy)
        return error_set("out of memory");
    /* The strings stay referenced by the config for the process's life. */
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            if (p->path)
                return error_set("--pmem %s: '%s' is not key=value", spec, item);
            p->path = item;
            continue;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "path") || !strcmp(key, "file")) {
            p->path = val;
        } else if (!strcmp(key, "id")) {
            p->id = val;
        } else if (!strcmp(key, "readonly") || !strcmp(key, "ro")) {
            if (!is_on(val, &p->readonly))
                return error_set("--pmem readonly=%s: use on or off", val);
        } else if (!strcmp(key, "root")) {
            if (!is_on(val, &p->is_root))
                return error_set("--pmem root=%s: use on or off", val);
        } else {
            return error_set("--pmem: unknown key '%s' (path, id, readonly, root)", key);
        }
    }
    if (!p->path || !*p->path)
        return error_set("--pmem %s: needs path=FILE", spec);
    return 0;
}

static int parse_mac(const char *s, uint8_t mac[6])
{
    unsigned b[6];
    char tail;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) !=
        6)
        return error_set("'%s' is not a MAC address (use xx:xx:xx:xx:xx:xx)", s);
    if (b[0] & 1)
        return error_set("MAC %s is a multicast address", s);
    for (int i = 0; i < 6; i++)
        mac[i] = (uint8_t)b[i];
    return 0;
}

/* --net tap=NAME[,mac=MAC] | --net user[,hostfwd=tcp:H:G+...][,mac=MAC],
 * plus rx-bw, tx-bw, rx-pps, tx-pps limits. */
static int parse_net_items(char *copy, const char *spec, struct net_config *n)
{
    char *save = NULL;
    bool mode_given = false, reconnect_given = false;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            if (!strcmp(item, "user"))
                n->user = true;
            else
                return error_set("--net %s: '%s' is not key=value (tap=NAME or user)", spec, item);
            continue;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        if (!strcmp(key, "tap")) {
            n->tap = val;
        } else if (!strcmp(key, "vhost-user")) {
            n->vhost_user_socket = val;
        } else if (!strcmp(key, "mode")) {
            if (!strcmp(val, "client"))
                n->vhost_user_server = false;
            else if (!strcmp(val, "server"))
                n->vhost_user_server = true;
            else
                return error_set("--net mode=%s: use client or server", val);
            mode_given = true;
        } else if (!strcmp(key, "reconnect")) {
            if (cli_parse_uint(val, VHOST_USER_RECONNECT_MAX_S, &n->reconnect_s) < 0)
                return error_prefix("--net reconnect");
            reconnect_given = true;
        } else if (!strcmp(key, "id")) {
            n->id = val;
        } else if (!strcmp(key, "mac")) {
            if (parse_mac(val, n->mac) < 0)
                return error_prefix("--net mac");
            n->has_mac = true;
        } else if (!strcmp(key, "hostfwd")) {
            n->forwards = val;
        } else if (!strcmp(key, "queues")) {
            unsigned queues;
            if (cli_parse_uint(val, 64, &queues) < 0 || queues == 0)
                return error_set("--net queues=%s: a number of queue pairs, 1 or more", val);
            if (queues > 1)
                return error_set("--net queues=%u: ember's virtio-net has one queue pair "
                                 "(no multiqueue yet)",
                                 queues);
        } else if (!strcmp(key, "sndbuf")) {
            if (cli_parse_size(val, 0, &n->sndbuf) < 0)
                return error_prefix("--net sndbuf");
        } else if (!strcmp(key, "vhost")) {
            if (!strcmp(val, "auto"))
                n->vhost = 0;
            else if (!strcmp(val, "off"))
                n->vhost = 1;
            else if (!strcmp(val, "on"))
                n->vhost = 2;
            else
                return error_set("--net vhost=%s: use auto, on or off", val);
        } else if (!strcmp(key, "rx-bw") || !strcmp(key, "tx-bw") || !strcmp(key, "rx-pps") ||
                   !strcmp(key, "tx-pps")) {
            uint64_t rate;
            if (cli_parse_size(val, 0, &rate) < 0)
                return error_prefix("--net %s", key);
            struct rate_limit_config *rl = key[0] == 'r' ? &n->rx_limit : &n->tx_limit;
            struct token_bucket_config *tb = strstr(key, "bw") ? &rl->bandwidth : &rl->ops;
            *tb = (struct token_bucket_config){.size = rate, .refill_ms = 1000};
        } else {
            return error_set("--net: unknown key '%s' (tap, user, vhost-user, mac, queues, "
                             "hostfwd, rx-bw, tx-bw, rx-pps, tx-pps, vhost, sndbuf, mode, "
                             "reconnect)",
                             key);
        }
        /* What a vhost-user back-end's data path decides (or ember cannot do on it). */
        if (n->vhost_user_socket && strcmp(key, "vhost-user") && strcmp(key, "mode") &&
            strcmp(key, "reconnect") && strcmp(key, "mac") && strcmp(key, "id") &&
            strcmp(key, "queues"))
            return error_set("--net %s: %s= does not apply to a vhost-user interface; it takes "
                             "mac=, queues=1, mode=client|server and reconnect=SECONDS",
                             spec, key);
    }
    if ((mode_given || reconnect_given) && !n->vhost_user_socket)
        return error_set("--net %s: mode= and reconnect= are for a vhost-user interface "
                         "(vhost-user=PATH)",
                         spec);
    if (n->vhost_user_socket) {
        if (n->tap || n->user)
            return error_set("--net %s: give one of tap=NAME, user and vhost-user=PATH", spec);
        if (!*n->vhost_user_socket)
            return error_set("--net %s: vhost-user= is empty", spec);
        /* Given before vhost-user=: the same refusal. */
        if (n->forwards || n->sndbuf || n->vhost || n->rx_limit.bandwidth.size ||
            n->rx_limit.ops.size || n->tx_limit.bandwidth.size || n->tx_limit.ops.size)
            return error_set("--net %s: rate limits, hostfwd=, sndbuf= and vhost= do not apply "
                             "to a vhost-user interface",
                             spec);
        if (!reconnect_given)
            n->reconnect_s = VHOST_USER_RECONNECT_DEFAULT_S;
        return 0;
    }
    if (!n->tap == !n->user)
        return error_set("--net %s: give either tap=NAME, user or vhost-user=PATH", spec);
    if (n->forwards && !n->user)
        return error_set("--net hostfwd= works with user networking only");
    if (n->sndbuf && !n->tap)
        return error_set("--net sndbuf= works with a tap only");
    return 0;
}

int cli_parse_net(const char *spec, struct net_config *n)
{
    memset(n, 0, sizeof(*n));
    char *copy = strdup(spec);
    if (!copy)
        return error_set("out of memory");
    int r = parse_net_items(copy, spec, n);
    if (r == 0) {
        /* The strings the configuration keeps get their own copies. */
        char *tap = n->tap ? strdup(n->tap) : NULL, *id = n->id ? strdup(n->id) : NULL,
             *forwards = n->forwards ? strdup(n->forwards) : NULL,
             *vus = n->vhost_user_socket ? strdup(n->vhost_user_socket) : NULL;
        if ((n->tap && !tap) || (n->id && !id) || (n->forwards && !forwards) ||
            (n->vhost_user_socket && !vus)) {
            free(tap);
            free(id);
            free(forwards);
            free(vus);
            r = error_set("out of memory");
        } else {
            n->tap = tap;
            n->id = id;
            n->forwards = forwards;
            n->vhost_user_socket = vus;
        }
    }
    free(copy);
    if (r < 0)
        memset(n, 0, sizeof(*n));
    return r;
}

void cli_free_net(struct net_config *n)
{
    free((char *)n->tap);
    free((char *)n->id);
    free((char *)n->forwards);
    free((char *)n->vhost_user_socket);
    n->tap = n->id = n->forwards = n->vhost_user_socket = NULL;
}

/* --vsock cid=N,uds=PATH[,id=NAME]. The strings kept are the caller's to
 * free (or to keep for the process's life). */
int cli_parse_vsock(const char *spec, struct vsock_config *v)
{
    memset(v, 0, sizeof(*v));
    char *copy = strdup(spec);
    if (!copy)
        return error_set("out of memory");
    int r = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item && r == 0;
         item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) {
            r = error_set("--vsock %s: '%s' is not key=value", spec, item);
            break;
        }
        *eq = '\0';
        const char *key = item, *val = eq + 1;
        unsigned cid;
        if (!strcmp(key, "cid") || !strcmp(key, "guest_cid")) {
            if (cli_parse_uint(val, 0xfffffffeu, &cid) < 0 || cid < 3)
                r = error_set("--vsock cid=%s: use 3 to 4294967294 (0-2 are reserved)", val);
            else
                v->guest_cid = cid;
        } else if (!strcmp(key, "uds") || !strcmp(key, "uds_path")) {
            free((char *)v->uds_path);
            if (!(v->uds_path = strdup(val)))
                r = error_set("out of memory");
        } else if (!strcmp(key, "id")) {
            free((char *)v->id);
            if (!(v->id = strdup(val)))
                r = error_set("out of memory");
        } else {
            r = error_set("--vsock: unknown key '%s' (cid, uds, id)", key);
        }
    }
    free(copy);
    if (r == 0 && (!v->guest_cid || !v->uds_path || !*v->uds_path))
        r = error_set("--vsock %s: needs cid=N and uds=PATH", spec);
    if (r < 0) {
        free((char *)v->uds_path);
        free((char *)v->id);
        memset(v, 0, sizeof(*v));
    }
    return r;
}

static int apply_option(struct cli *cli, enum opt_id id, const char *name, const char *value)
{
    struct vm_config *vm = &cli->vm;
    switch (id) {
    case OPT_KERNEL:
        vm->kernel_path = value;
        return 0;
    case OPT_INITRD:
        vm->initrd_path = value;
        return 0;
    case OPT_CMDLINE:
        vm->cmdline = value;
        return 0;
    case OPT_MEMORY: {
        uint64_t mib;
        char size[64];
        const char *opts = strchr(value, ',');
        size_t len = opts ? (size_t)(opts - value) : strlen(value);
        if (len >= sizeof(size))
            return error_set("--memory %s: the size is too long", value);
        memcpy(size, value, len);
        size[len] = '\0';
        if (opts && !strcmp(opts, ",shared=on"))
            vm->ram_shared = true;
        else if (opts && strcmp(opts, ",shared=off"))
            return error_set("--memory %s: after the size only shared=on or shared=off", value);
        if (cli_parse_size(size, 20, &mib) < 0)
            return error_prefix("--memory");
        if (mib < VM_MIN_MEMORY_MIB)
            return error_set("--memory %s: a guest needs at least %d MiB", value,
                             VM_MIN_MEMORY_MIB);
        uint64_t host = host_ram_mib();
        if (mib > host)
            return error_set("--memory %s: more than this host's %llu MiB of RAM", value,
                             (unsigned long long)host);
        vm->memory_mib = mib;
        return 0;
    }
    case OPT_CPUS:
        if (cli_parse_uint(value, 1u << 20, &vm->ncpus) < 0)
            return error_prefix("--cpus");
        if (vm->ncpus == 0)
            return error_set("--cpus 0: a guest needs at least one vCPU");
        return 0;
    case OPT_CPU_TEMPLATE:
        return cpu_template_parse(value, &vm->cpu_template);
    case OPT_DEBUG_EXIT:
        vm->debug_exit = true;
        return 0;
    case OPT_LOG_LEVEL:
        return log_level_parse(value, &cli->log_level);
    case OPT_DRIVE:
        if (vm->ndrives == VM_MAX_DRIVES)
            return error_set("at most %d --drive options", VM_MAX_DRIVES);
        if (cli_parse_drive(value, &vm->drives[vm->ndrives]) < 0)
            return -1;
        vm->ndrives++;
        return 0;
    case OPT_TRANSPORT:
        if (!strcmp(value, "pci"))
            vm->transport = TRANSPORT_PCI;
        else if (!strcmp(value, "mmio"))
            vm->transport = TRANSPORT_MMIO;
        else
            return error_set("--transport %s: use pci or mmio", value);
        return 0;
    case OPT_CONSOLE:
        if (!strcmp(value, "serial"))
            vm->console = CONSOLE_SERIAL;
        else if (!strcmp(value, "virtio"))
            vm->console = CONSOLE_VIRTIO;
        else
            return error_set("--console %s: use serial or virtio", value);
        return 0;
    case OPT_RNG:
        vm->rng = true;
        return 0;
    case OPT_RNG_RATE: {
        uint64_t rate;
        if (cli_parse_size(value, 0, &rate) < 0)
            return error_prefix("--rng-rate");
        vm->rng = true;
        vm->rng_rate = rate;
        return 0;
    }
    case OPT_BLK_SYNC:
        vm->blk_sync = true;
        return 0;
    case OPT_SYNC_TEARDOWN:
        cli->sync_teardown = true;
        return 0;
    case OPT_NO_SECCOMP:
        cli->no_seccomp = true;
        return 0;
    case OPT_SECCOMP_FILTER:
        if (!*value)
            return error_set("--seccomp-filter needs a file");
        cli->seccomp_filter = value;
        return 0;
    case OPT_NET:
        if (vm->nnets == VM_MAX_NETS)
            return error_set("at most %d --net options", VM_MAX_NETS);
        if (cli_parse_net(value, &vm->nets[vm->nnets]) < 0)
            return -1;
        if (!vm->nets[vm->nnets].id) {
            /* A name for the API (PATCH /network-interfaces, a migration's
             * network_overrides): netN, as the guest's device is named. */
            char net_id[16];
            snprintf(net_id, sizeof(net_id), "net%u", vm->nnets);
            vm->nets[vm->nnets].id = strdup(net_id);
            if (!vm->nets[vm->nnets].id)
                return error_set("out of memory");
        }
        vm->nnets++;
        return 0;
    case OPT_VSOCK:
        if (vm->vsock.uds_path)
            return error_set("only one --vsock device");
        return cli_parse_vsock(value, &vm->vsock);
    case OPT_PMEM:
        if (vm->npmem == VM_MAX_PMEM)
            return error_set("at most %d --pmem options", VM_MAX_PMEM);
        if (cli_parse_pmem(value, &vm->pmem[vm->npmem]) < 0)
            return -1;
        vm->npmem++;
        return 0;
    case OPT_FS:
        if (vm->nfs == VM_MAX_FS)
            return error_set("at most %d --fs options", VM_MAX_FS);
        if (cli_parse_fs(value, &vm->fs[vm->nfs]) < 0)
            return -1;
        for (unsigned i = 0; i < vm->nfs; i++) {
            if (!strcmp(vm->fs[i].tag, vm->fs[vm->nfs].tag)) {
                cli_free_fs(&vm->fs[vm->nfs]);
                return error_set("--fs %s: another --fs has that tag already", value);
            }
        }
        vm->nfs++;
        return 0;
    case OPT_BOOT_TIMER:
        vm->boot_timer = true;
        return 0;
    case OPT_TRACK_DIRTY_PAGES:
        vm->track_dirty_pages = true;
        return 0;
    case OPT_CPU_PLACEMENT:
        if (vm->placement.set)
            return error_set("only one --cpu-placement");
        if (cpu_placement_parse(value, &vm->placement) < 0)
            return error_prefix("--cpu-placement %.80s", value);
        return 0;
    case OPT_API_SOCK:
        if (!*value)
            return error_set("--api-sock needs a path");
        cli->run_api_sock = value;
        return 0;
    case OPT_HELP:
        cli->action = CLI_HELP;
        return 0;
    }
    return error_set("internal: unhandled option --%s", name);
}

int cli_check_placement(const struct vm_config *vm)
{
    if (vm->placement.set && cpu_placement_check_host(&vm->placement, vm->ncpus) < 0)
        return error_prefix("--cpu-placement");
    return 0;
}

static int parse_run(int argc, char **argv, struct cli *cli)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return error_set("unexpected argument '%s' (options start with --; see ember --help)",
                             arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        size_t k;
        for (k = 0; k < sizeof(run_options) / sizeof(run_options[0]); k++) {
            if (strlen(run_options[k].name) == name_len &&
                strncmp(run_options[k].name, name, name_len) == 0)
                break;
        }
        if (k == sizeof(run_options) / sizeof(run_options[0]))
            return error_set("unknown option '--%.*s' (see ember --help)", (int)name_len, name);
        const char *value = NULL;
        if (run_options[k].takes_value) {
            if (eq)
                value = eq + 1;
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return error_set("option '--%s' needs a value", run_options[k].name);
        } else if (eq) {
            return error_set("option '--%s' takes no value", run_options[k].name);
        }
        if (apply_option(cli, run_options[k].id, run_options[k].name, value) < 0)
            return -1;
    }
    if (cli->action == CLI_RUN && !cli->vm.kernel_path)
        return error_set("ember run needs --kernel FILE (see ember --help)");
    /* Once --cpus is known, wherever it came on the line. */
    if (cli_check_placement(&cli->vm) < 0)
        return -1;
    return 0;
}

enum top_flag {
    TOP_API_SOCK,
    TOP_CONFIG_FILE,
    TOP_NO_API,
    TOP_ID,
    TOP_LEVEL,
    TOP_LOG_PATH,
    TOP_SHOW_LEVEL,
    TOP_SHOW_LOG_ORIGIN,
    TOP_MODULE,
    TOP_METRICS_PATH,
    TOP_MAX_PAYLOAD,
    TOP_REQUEST_TIMEOUT,
    TOP_IDLE_TIMEOUT,
    TOP_ENABLE_PCI,
    TOP_BOOT_TIMER,
    TOP_METADATA,
    TOP_DESCRIBE_SNAPSHOT,
    TOP_SNAPSHOT_VERSION,
    TOP_SYNC_TEARDOWN,
    TOP_NO_SECCOMP,
    TOP_SECCOMP_FILTER,
    TOP_START_TIME_US,
    TOP_START_TIME_CPU_US,
    TOP_PARENT_CPU_TIME_US,
    TOP_MMDS_SIZE_LIMIT,
    TOP_IGNORED_FLAG,
};

static const struct {
    const char *name;
    enum top_flag id;
    bool takes_value;
} top_flags[] = {
    {"api-sock", TOP_API_SOCK, true},
    {"config-file", TOP_CONFIG_FILE, true},
    {"no-api", TOP_NO_API, false},
    {"id", TOP_ID, true},
    {"level", TOP_LEVEL, true},
    {"log-path", TOP_LOG_PATH, true},
    {"show-level", TOP_SHOW_LEVEL, false},
    {"show-log-origin", TOP_SHOW_LOG_ORIGIN, false},
    {"module", TOP_MODULE, true},
    {"metrics-path", TOP_METRICS_PATH, true},
    {"http-api-max-payload-size", TOP_MAX_PAYLOAD, true},
    {"http-api-request-timeout-ms", TOP_REQUEST_TIMEOUT, true},
    {"http-api-idle-timeout-ms", TOP_IDLE_TIMEOUT, true},
    {"enable-pci", TOP_ENABLE_PCI, false},
    {"sync-teardown", TOP_SYNC_TEARDOWN, false},
    /* The jailer passes these. */
    {"start-time-us", TOP_START_TIME_US, true},
    {"start-time-cpu-us", TOP_START_TIME_CPU_US, true},
    {"parent-cpu-time-us", TOP_PARENT_CPU_TIME_US, true},
    {"mmds-size-limit", TOP_MMDS_SIZE_LIMIT, true},
    {"no-seccomp", TOP_NO_SECCOMP, false},
    {"seccomp-filter", TOP_SECCOMP_FILTER, true},
    {"boot-timer", TOP_BOOT_TIMER, false},
    {"metadata", TOP_METADATA, true},
    /* Firecracker's snapshot queries (vmm/snapshot.c answers them). */
    {"describe-snapshot", TOP_DESCRIBE_SNAPSHOT, true},
    {"snapshot-version", TOP_SNAPSHOT_VERSION, false},
};

static bool instance_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (const char *p = id; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-')
            return false;
    }
    return true;
}

/* A count of microseconds: decimal digits, 64 bits. */
static int parse_us(const char *name, const char *value, uint64_t *out)
{
    uint64_t v = 0;
    for (const char *p = value; *p; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (!isdigit((unsigned char)*p) || v > (UINT64_MAX - d) / 10)
            return error_set("--%s %s: use a number of microseconds", name, value);
        v = v * 10 + d;
    }
    if (!*value)
        return error_set("--%s needs a number of microseconds", name);
    *out = v;
    return 0;
}

static int apply_top_flag(struct cli *cli, enum top_flag id, const char *name, const char *value)
{
    struct cli_api *a = &cli->api;
    uint64_t n;
    switch (id) {
    case TOP_API_SOCK:
        if (!*value)
            return error_set("--api-sock needs a path");
        a->socket_path = value;
        return 0;
    case TOP_CONFIG_FILE:
        a->config_file = value;
        return 0;
    case TOP_NO_API:
        a->no_api = true;
        return 0;
    case TOP_ID:
        if (!instance_id_valid(value))
            return error_set("--id '%s': use 1 to 64 letters, digits or '-'", value);
        a->id = value;
        return 0;
    case TOP_LEVEL:
        a->level_given = true;
        return log_level_parse(value, &cli->log_level) < 0 ? error_prefix("--level") : 0;
    case TOP_LOG_PATH:
        a->log_path = value;
        return 0;
    case TOP_SHOW_LEVEL:
        a->show_level = true;
        return 0;
    case TOP_SHOW_LOG_ORIGIN:
        a->show_log_origin = true;
        return 0;
    case TOP_MODULE:
        a->module = value;
        return 0;
    case TOP_METRICS_PATH:
        a->metrics_path = value;
        return 0;
    case TOP_MAX_PAYLOAD:
        if (cli_parse_size(value, 0, &n) < 0)
            return error_prefix("--http-api-max-payload-size");
        if (n == 0 || n > (64u << 20))
            return error_set("--http-api-max-payload-size %s: use 1 byte to 64 MiB", value);
        a->max_payload = n;
        return 0;
    case TOP_REQUEST_TIMEOUT:
        if (cli_parse_uint(value, API_SERVER_MAX_TIMEOUT_MS, &a->request_timeout_ms) < 0 ||
            a->request_timeout_ms == 0)
            return error_set("--%s %s: use 1 to %u milliseconds", name, value,
                             API_SERVER_MAX_TIMEOUT_MS);
        return 0;
    case TOP_IDLE_TIMEOUT:
        if (cli_parse_uint(value, API_SERVER_MAX_TIMEOUT_MS, &a->idle_timeout_ms) < 0)
            return error_set("--%s %s: use 0 to %u milliseconds", name, value,
                             API_SERVER_MAX_TIMEOUT_MS);
        a->idle_timeout_given = true;
        return 0;
    case TOP_ENABLE_PCI:
        a->enable_pci = true;
        return 0;
    case TOP_BOOT_TIMER:
        a->boot_timer = true;
        return 0;
    case TOP_METADATA:
        if (!*value)
            return error_set("--metadata needs a file");
        a->metadata_path = value;
        return 0;
    case TOP_DESCRIBE_SNAPSHOT:
        if (!*value)
            return error_set("--describe-snapshot needs a snapshot state file");
        cli->action = CLI_DESCRIBE_SNAPSHOT;
        cli->snapshot_path = value;
        return 0;
    case TOP_SNAPSHOT_VERSION:
        cli->action = CLI_SNAPSHOT_VERSION;
        return 0;
    case TOP_SYNC_TEARDOWN:
        cli->sync_teardown = true;
        return 0;
    case TOP_NO_SECCOMP:
        cli->no_seccomp = true;
        return 0;
    case TOP_SECCOMP_FILTER:
        if (!*value)
            return error_set("--seccomp-filter needs a file");
        cli->seccomp_filter = value;
        return 0;
    case TOP_START_TIME_US:
        a->start_time_given = true;
        return parse_us(name, value, &a->start_time_us);
    case TOP_START_TIME_CPU_US:
        a->start_cpu_given = true;
        return parse_us(name, value, &a->start_time_cpu_us);
    case TOP_PARENT_CPU_TIME_US:
        return parse_us(name, value, &a->parent_cpu_time_us);
    case TOP_MMDS_SIZE_LIMIT:
        if (parse_us(name, value, &n) < 0 || n > (64u << 20))
            return error_set("--%s %s: use a number of bytes, at most 64 MiB", name, value);
        a->mmds_size_limit = n;
        a->mmds_size_limit_given = true;
        return 0;
    case TOP_IGNORED_FLAG:
        return 0;
    }
    return error_set("internal: unhandled flag --%s", name);
}

static int parse_top_level(int argc, char **argv, struct cli *cli)
{
    cli->action = CLI_API;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            cli->action = CLI_HELP;
            return 0;
        }
        if (!strcmp(arg, "--version") || !strcmp(arg, "-V")) {
            cli->action = CLI_VERSION;
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return error_set("unexpected argument '%s' (see ember --help)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        size_t k;
        for (k = 0; k < sizeof(top_flags) / sizeof(top_flags[0]); k++) {
            if (strlen(top_flags[k].name) == name_len &&
                strncmp(top_flags[k].name, name, name_len) == 0)
                break;
        }
        if (k == sizeof(top_flags) / sizeof(top_flags[0]))
            return error_set("unknown option '--%.*s' (see ember --help)", (int)name_len, name);
        const char *value = NULL;
        if (top_flags[k].takes_value) {
            if (eq)
                value = eq + 1;
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return error_set("option '--%s' needs a value", top_flags[k].name);
        } else if (eq) {
            return error_set("option '--%s' takes no value", top_flags[k].name);
        }
        if (apply_top_flag(cli, top_flags[k].id, top_flags[k].name, value) < 0)
            return -1;
    }
    if (cli->api.no_api && !cli->api.config_file)
        return error_set("--no-api needs --config-file FILE (nothing could configure the machine)");
    return 0;
}

bool cli_named_firecracker(const char *argv0)
{
    const char *slash = argv0 ? strrchr(argv0, '/') : NULL;
    const char *name = slash ? slash + 1 : argv0;
    return name && !strncmp(name, "firecracker", strlen("firecracker"));
}

int cli_parse(int argc, char **argv, struct cli *out)
{
    memset(out, 0, sizeof(*out));
    vm_config_defaults(&out->vm);
    out->log_level = LOG_WARN;
    /* Installed as firecracker, ember answers where Firecracker's clients
     * look for it by name (Kata Containers: <jail>/run/firecracker.socket),
     * and, as Firecracker, serves the API when given no flags at all. */
    bool as_firecracker = argc > 0 && cli_named_firecracker(argv[0]);
    out->api.socket_path = as_firecracker ? CLI_FIRECRACKER_API_SOCK : CLI_DEFAULT_API_SOCK;
    if (argc < 2 && as_firecracker)
        return parse_top_level(0, argv + argc, out);
    if (argc < 2)
        return error_set("no command given (try ember --help)");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        out->action = CLI_HELP;
        return 0;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0 || strcmp(cmd, "version") == 0) {
        out->action = CLI_VERSION;
        return 0;
    }
    if (strcmp(cmd, "run") == 0) {
        out->action = CLI_RUN;
        if (parse_run(argc - 2, argv + 2, out) == 0)
            return 0;
        /* What the options parsed so far hold (ember ends with the usage error). */
        for (unsigned i = 0; i < out->vm.ndrives; i++)
            cli_free_drive(&out->vm.drives[i]);
        for (unsigned i = 0; i < out->vm.nfs; i++)
            cli_free_fs(&out->vm.fs[i]);
        out->vm.ndrives = out->vm.nfs = 0;
        return -1;
    }
    if (cmd[0] == '-' && cmd[1] == '-')
        return parse_top_level(argc - 1, argv + 1, out);
    if (cmd[0] == '-')
        return error_set("unknown option '%s' (see ember --help)", cmd);
    return error_set("unknown command '%s' (see ember --help)", cmd);
}

const char *cli_version(void)
{
    return EMBER_VERSION;
}

void cli_print_version(FILE *f)
{
    /* The first line is what Firecracker's clients parse (util/version.h). */
    fprintf(f, "ember v" EMBER_FIRECRACKER_VERSION "\n"
               "ember " EMBER_VERSION ", answering Firecracker's API as of Firecracker "
               "v" EMBER_FIRECRACKER_API "\n");
}
