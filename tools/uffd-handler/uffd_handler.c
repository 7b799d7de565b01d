/* ember-uffd-handler: an example page-fault handler for the Uffd memory backend of
 * PUT /snapshot/load, speaking Firecracker's protocol (docs/snapshot-format.md, "Uffd backend").
 *
 * It listens on a unix socket, accepts one VMM connection, receives one message (the JSON array
 * of guest memory regions, the VMM's userfaultfd attached with SCM_RIGHTS), maps the snapshot's
 * memory file and fills guest pages from it: as the VMM faults on them (on-demand) or all of
 * them at once and then whatever faults are left (all-at-once). It ends when the VMM closes the
 * connection, and prints its counts on standard error. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define PROG          "ember-uffd-handler"
#define SMALL_PAGE    4096ULL
#define MAX_REGIONS   64
#define MAX_MESSAGE   65536
#define MAX_FDS       8
#define MSG_WAIT_MS   10000 /* for the message, once the VMM has connected */
#define BULK_CHUNK    (64ULL << 20)
#define EVENT_BATCH   64
#define PENDING_LIMIT 4096

struct region {
    uint64_t base, size, offset, page_size;
};

struct handler {
    int uffd, sock;
    pid_t peer;
    bool kill_peer;
    const uint8_t *file; /* the memory file, mapped read-only */
    uint64_t file_size;
    uint64_t *data;    /* bit per 4 KiB page of the file: holds data (else a hole) */
    uint64_t *removed; /* bit per 4 KiB page of the file: removed by the VMM, zero from now on */
    uint8_t *zeros;    /* a zeroed source for huge pages */
    uint64_t zeros_size;
    unsigned nregions;
    struct region regions[MAX_REGIONS];
    /* faults that met EAGAIN (a removal pending in the queue), retried after reading it */
    uint64_t pending[PENDING_LIMIT];
    unsigned npending;
    struct {
        uint64_t faults, copied, zeroed, present, retried, removes, removed_bytes, bulk_copied,
            bulk_zeroed, gone;
    } n;
};

static volatile sig_atomic_t stop_signal;
static const char *listening_path; /* removed if we end before a VMM connects */

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void print_counts(const struct handler *h)
{
    /* key=value, for people and for scripts */
    fprintf(stderr,
            PROG ": faults=%llu copied=%llu zeroed=%llu present=%llu retried=%llu removes=%llu "
                 "removed_kib=%llu bulk_copied=%llu bulk_zeroed=%llu gone=%llu\n",
            (unsigned long long)h->n.faults, (unsigned long long)h->n.copied,
            (unsigned long long)h->n.zeroed, (unsigned long long)h->n.present,
            (unsigned long long)h->n.retried, (unsigned long long)h->n.removes,
            (unsigned long long)(h->n.removed_bytes >> 10), (unsigned long long)h->n.bulk_copied,
            (unsigned long long)h->n.bulk_zeroed, (unsigned long long)h->n.gone);
}

/* A failure once the VMM depends on us: its faults would wait forever, so with
 * --kill-vmm-on-error it is ended, as Firecracker's example handlers do. */
static void fatal(const struct handler *h, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void fatal(const struct handler *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (listening_path)
        unlink(listening_path);
    if (h) {
        if (h->kill_peer && h->peer > 0) {
            fprintf(stderr, PROG ": killing the VMM (pid %d)\n", (int)h->peer);
            kill(h->peer, SIGKILL);
        }
        print_counts(h);
    }
    exit(1);
}

static void bit_set(uint64_t *map, uint64_t i)
{
    map[i / 64] |= 1ULL << (i % 64);
}

static bool bit_get(const uint64_t *map, uint64_t i)
{
    return map[i / 64] >> (i % 64) & 1;
}

/* ---- setup ----------------------------------------------------------------------------- */

static void map_file(struct handler *h, const char *path, bool populate)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fatal(NULL, "cannot open the memory file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        fatal(NULL, "cannot stat %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        fatal(NULL, "the memory file %s is not a regular file", path);
    if (st.st_size <= 0)
        fatal(NULL, "the memory file %s is empty", path);
    h->file_size = (uint64_t)st.st_size;
    void *p =
        mmap(NULL, h->file_size, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0), fd, 0);
    if (p == MAP_FAILED)
        fatal(NULL, "cannot map the memory file %s: %s", path, strerror(errno));
    h->file = p;
    uint64_t pages = (h->file_size + SMALL_PAGE - 1) / SMALL_PAGE;
    h->data = calloc((pages + 63) / 64, sizeof(uint64_t));
    h->removed = calloc((pages + 63) / 64, sizeof(uint64_t));
    if (!h->data || !h->removed)
        fatal(NULL, "out of memory");
    /* The file's holes (pages of zeros in ember's memory files) become zero pages, which cost
     * no memory until written. A file system without SEEK_DATA reports it all as data. */
    off_t pos = 0;
    while ((uint64_t)pos < h->file_size) {
        off_t d = lseek(fd, pos, SEEK_DATA);
        if (d < 0)
            break; /* ENXIO: only a hole is left */
        off_t e = lseek(fd, d, SEEK_HOLE);
        if (e < 0 || (uint64_t)e > h->file_size)
            e = (off_t)h->file_size;
        for (uint64_t i = (uint64_t)d / SMALL_PAGE; i < ((uint64_t)e + SMALL_PAGE - 1) / SMALL_PAGE;
             i++)
            bit_set(h->data, i);
        pos = e;
    }
    close(fd);
}

/* Listens on path, which appears only once it accepts connections: bound under a temporary
 * name, renamed into place after listen(), so that whoever waits for the file never meets a
 * refused connection. */
static int listen_on(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char tmp[sizeof(addr.sun_path) + 16];
    int n = snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof(addr.sun_path))
        fatal(NULL, "the socket path %s is too long (at most %zu bytes here)", path,
              sizeof(addr.sun_path) - 1 - (size_t)(n - (int)strlen(path)));
    memcpy(addr.sun_path, tmp, (size_t)n + 1);
    /* A socket left by an earlier run goes; any other file stays, and rename says so. */
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
        fatal(NULL, "%s exists and is not a socket", path);
    unlink(tmp);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        fatal(NULL, "cannot create a unix socket: %s", strerror(errno));
    if (bind(l, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        fatal(NULL, "cannot bind to %s: %s", tmp, strerror(errno));
    if (listen(l, 1) < 0 || rename(tmp, path) < 0) {
        int err = errno;
        unlink(tmp);
        fatal(NULL, "cannot listen on %s: %s", path, strerror(err));
    }
    return l;
}

/* A JSON number that is a whole number a double holds exactly. */
static bool get_u64(const cJSON *obj, const char *name, bool required, uint64_t *out, char *why,
                    size_t whylen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v) {
        if (required)
            snprintf(why, whylen, "no \"%s\"", name);
        return !required;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || !isfinite(d) || d < 0 || d >= 9007199254740992.0 || d != floor(d)) {
        snprintf(why, whylen, "\"%s\" is not a whole number from 0 to 2^53", name);
        return false;
    }
    *out = (uint64_t)d;
    return true;
}

/* Checks the regions against each other and the file: every later access (a copy from the
 * file, a page of a region) then stays in bounds. */
static void parse_layout(struct handler *h, const char *msg, size_t len)
{
    char why[160] = "";
    if (strlen(msg) != len)
        fatal(h, "the VMM's message holds a NUL byte");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(msg, &end, true);
    if (!root)
        fatal(h, "the VMM's message is not JSON (at byte %zu): %.200s",
              end ? (size_t)(end - msg) : 0, msg);
    if (!cJSON_IsArray(root))
        fatal(h, "the VMM's message is not a JSON array: %.200s", msg);
    int count = cJSON_GetArraySize(root);
    if (count < 1 || count > MAX_REGIONS)
        fatal(h, "the VMM sent %d memory regions (1 to %d expected)", count, MAX_REGIONS);
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        struct region *r = &h->regions[h->nregions];
        unsigned i = h->nregions++;
        if (!cJSON_IsObject(e))
            fatal(h, "region %u is not a JSON object", i);
        uint64_t kib_field = 0;
        bool has_kib = cJSON_GetObjectItemCaseSensitive(e, "page_size_kib") != NULL;
        /* page_size_kib, in bytes despite its name, is what older VMMs send instead of
         * page_size; newer ones send both, equal. */
        if (!get_u64(e, "base_host_virt_addr", true, &r->base, why, sizeof(why)) ||
            !get_u64(e, "size", true, &r->size, why, sizeof(why)) ||
            !get_u64(e, "offset", true, &r->offset, why, sizeof(why)) ||
            !get_u64(e, "page_size_kib", false, &kib_field, why, sizeof(why)) ||
            !get_u64(e, "page_size", !has_kib, &r->page_size, why, sizeof(why)))
            fatal(h, "region %u: %s", i, why);
        if (!cJSON_GetObjectItemCaseSensitive(e, "page_size"))
            r->page_size = kib_field;
        else if (has_kib && kib_field != r->page_size)
            fatal(h, "region %u: page_size %llu and page_size_kib %llu differ", i,
                  (unsigned long long)r->page_size, (unsigned long long)kib_field);
        uint64_t ps = r->page_size;
        if (ps < SMALL_PAGE || ps > (1ULL << 30) || (ps & (ps - 1)))
            fatal(h, "region %u: page size %llu is not a power of two from 4 KiB to 1 GiB", i,
                  (unsigned long long)ps);
        if (r->size == 0 || r->size % ps || r->base % ps || r->offset % ps)
            fatal(h,
                  "region %u: address 0x%llx, size %llu and offset %llu must be non-zero "
                  "multiples of its page size %llu",
                  i, (unsigned long long)r->base, (unsigned long long)r->size,
                  (unsigned long long)r->offset, (unsigned long long)ps);
        if (r->offset > h->file_size || r->size > h->file_size - r->offset)
            fatal(h,
                  "region %u: bytes %llu to %llu of the memory file are asked for, it holds "
                  "%llu",
                  i, (unsigned long long)r->offset, (unsigned long long)(r->offset + r->size),
                  (unsigned long long)h->file_size);
        for (unsigned j = 0; j < i; j++) {
            const struct region *o = &h->regions[j];
            if (r->base < o->base + o->size && o->base < r->base + r->size)
                fatal(h, "regions %u and %u overlap", j, i);
        }
        if (ps > SMALL_PAGE && ps > h->zeros_size)
            h->zeros_size = ps;
    }
    cJSON_Delete(root);
    if (h->zeros_size) {
        h->zeros = mmap(NULL, h->zeros_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (h->zeros == MAP_FAILED)
            fatal(h, "cannot map a zeroed page: %s", strerror(errno));
    }
}

static bool is_userfaultfd(int fd)
{
    char link[64], target[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        return errno == ENOENT && access("/proc/self", F_OK) != 0; /* no /proc: cannot tell */
    target[n] = 0;
    return !strcmp(target, "anon_inode:[userfaultfd]");
}

/* The one message: the layout, with the userfaultfd. */
static void receive_layout(struct handler *h)
{
    struct pollfd p = {.fd = h->sock, .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, MSG_WAIT_MS);
    while (r < 0 && errno == EINTR && !stop_signal);
    if (r == 0)
        fatal(h, "the VMM sent nothing within %d ms", MSG_WAIT_MS);
    if (r < 0)
        fatal(h, "poll: %s", strerror(errno));
    static char buf[MAX_MESSAGE + 1];
    union {
        char b[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = MAX_MESSAGE};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b)};
    ssize_t n = recvmsg(h->sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0)
        fatal(h, "cannot receive the VMM's message: %s", strerror(errno));
    int fds[MAX_FDS], nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && nfds < MAX_FDS; i++)
            memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (n == 0)
        fatal(h, "the VMM closed the connection without sending anything");
    if (msg.msg_flags & MSG_CTRUNC)
        fatal(h, "the VMM sent more than %d descriptors", MAX_FDS);
    if (nfds != 1)
        fatal(h, "the VMM's message carries %d descriptors, 1 (the userfaultfd) expected", nfds);
    if (!is_userfaultfd(fds[0]))
        fatal(h, "the descriptor the VMM sent is not a userfaultfd");
    h->uffd = fds[0];
    /* Reads see the VMM's O_NONBLOCK already; made sure, the loop depends on it. */
    fcntl(h->uffd, F_SETFL, fcntl(h->uffd, F_GETFL) | O_NONBLOCK);
    buf[n] = 0;
    parse_layout(h, buf, (size_t)n);
}

/* ---- serving ----------------------------------------------------------------------------- */

static const struct region *find_region(const struct handler *h, uint64_t addr)
{
    for (unsigned i = 0; i < h->nregions; i++) {
        const struct region *r = &h->regions[i];
        if (addr >= r->base && addr - r->base < r->size)
            return r;
    }
    return NULL;
}

/* A removal (madvise(MADV_DONTNEED) in the VMM, a balloon's doing): the file no longer says
 * what those pages hold; they read as zeros when next touched. */
static void note_removed(struct handler *h, uint64_t start, uint64_t end)
{
    h->n.removes++;
    for (uint64_t a = start & ~(SMALL_PAGE - 1); a < end; a += SMALL_PAGE) {
        const struct region *r = find_region(h, a);
        if (!r)
            continue;
        bit_set(h->removed, (r->offset + (a - r->base)) / SMALL_PAGE);
        h->n.removed_bytes += SMALL_PAGE;
    }
}

enum fill { FILL_DONE, FILL_PRESENT, FILL_AGAIN, FILL_GONE };

/* One ioctl filling [dst, dst+len): from src, or zeros when src is NULL. *done is what it
 * filled before stopping. */
static enum fill fill(struct handler *h, uint64_t dst, uint64_t len, const void *src,
                      uint64_t *done)
{
    int rc;
    int64_t result;
    *done = 0;
    if (src) {
        struct uffdio_copy c = {.dst = dst, .src = (uintptr_t)src, .len = len};
        rc = ioctl(h->uffd, UFFDIO_COPY, &c);
        result = c.copy;
    } else {
        struct uffdio_zeropage z = {.range = {.start = dst, .len = len}};
        rc = ioctl(h->uffd, UFFDIO_ZEROPAGE, &z);
        result = z.zeropage;
    }
    if (rc == 0) {
        *done = len;
        return FILL_DONE;
    }
    int err = errno;
    if (result > 0) /* a partial fill: the kernel says how far (and EAGAIN) */
        *done = (uint64_t)result;
    if (err == EEXIST)
        return FILL_PRESENT; /* another fault for the page, already served */
    if (err == EAGAIN || err == EINTR)
        return FILL_AGAIN; /* a removal waits to be read, or the VMM's mappings change */
    if (err == ENOENT || err == ESRCH)
        return FILL_GONE; /* the VMM unmapped it or exited */
    fatal(h, "%s at 0x%llx (%llu bytes): %s", src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE",
          (unsigned long long)dst, (unsigned long long)len, strerror(err));
}

/* Serves the page holding addr. False: retry once pending events are read. */
static bool serve_fault(struct handler *h, uint64_t addr)
{
    const struct region *r = find_region(h, addr);
    if (!r)
        fatal(h, "a fault at 0x%llx, outside every region the VMM described",
              (unsigned long long)addr);
    uint64_t ps = r->page_size;
    uint64_t page = addr & ~(ps - 1);
    uint64_t off = r->offset + (page - r->base);
    bool removed = false, data = false;
    for (uint64_t i = off / SMALL_PAGE; i < (off + ps) / SMALL_PAGE; i++) {
        removed |= bit_get(h->removed, i);
        data |= bit_get(h->data, i);
    }
    /* Zeros for holes and removed pages: the zero page, or (no UFFDIO_ZEROPAGE for huge
     * pages) a copy of zeros. */
    bool zero = removed || !data;
    const void *src = zero ? (ps == SMALL_PAGE ? NULL : h->zeros) : h->file + off;
    uint64_t done;
    switch (fill(h, page, ps, src, &done)) {
    case FILL_DONE:
        if (zero)
            h->n.zeroed++;
        else
            h->n.copied++;
        return true;
    case FILL_PRESENT:
        h->n.present++;
        return true;
    case FILL_GONE:
        h->n.gone++;
        return true;
    case FILL_AGAIN:
        break;
    }
    h->n.retried++;
    return false;
}

static void defer(struct handler *h, uint64_t addr)
{
    if (h->npending == PENDING_LIMIT)
        fatal(h, "more than %d faults wait behind removals", PENDING_LIMIT);
    h->pending[h->npending++] = addr;
}

/* Reads every queued event: removals are noted at once, faults queued for serving. False
 * when the userfaultfd reports that its VMM is gone. */
static bool read_events(struct handler *h)
{
    struct uffd_msg msgs[EVENT_BATCH];
    for (;;) {
        ssize_t n = read(h->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return true;
            fatal(h, "cannot read the userfaultfd: %s", strerror(errno));
        }
        if (n == 0)
            return false;
        if (n % (ssize_t)sizeof(msgs[0]))
            fatal(h, "a userfaultfd read of %zd bytes", n);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            const struct uffd_msg *m = &msgs[i];
            switch (m->event) {
            case UFFD_EVENT_PAGEFAULT:
                h->n.faults++;
                defer(h, m->arg.pagefault.address);
                break;
            case UFFD_EVENT_REMOVE:
                note_removed(h, m->arg.remove.start, m->arg.remove.end);
                break;
            case UFFD_EVENT_FORK: /* not asked for by the VMM; its new descriptor is not ours */
                close((int)m->arg.fork.ufd);
                break;
            default:
                fprintf(stderr, PROG ": userfaultfd event 0x%x ignored\n", m->event);
                break;
            }
        }
    }
}

/* Reads events and serves faults until none is left; faults that meet a pending removal
 * (EAGAIN) are retried after the next read. */
static bool drain(struct handler *h)
{
    for (;;) {
        if (!read_events(h))
            return false;
        if (h->npending == 0)
            return true;
        unsigned kept = 0;
        for (unsigned i = 0; i < h->npending; i++) {
            if (!serve_fault(h, h->pending[i]))
                h->pending[kept++] = h->pending[i];
        }
        h->npending = kept;
        if (kept == 0)
            return true;
    }
}

/* all-at-once: every page of every region, runs of file data copied, runs of holes as zero
 * pages (small pages only), pages the VMM removed meanwhile left alone. */
static void fill_all(struct handler *h)
{
    for (unsigned ri = 0; ri < h->nregions; ri++) {
        const struct region *r = &h->regions[ri];
        uint64_t ps = r->page_size, pos = 0;
        while (pos < r->size) {
            uint64_t off = r->offset + pos;
            bool removed = bit_get(h->removed, off / SMALL_PAGE);
            bool data = ps > SMALL_PAGE || bit_get(h->data, off / SMALL_PAGE);
            uint64_t run = ps;
            while (pos + run < r->size && run < BULK_CHUNK &&
                   bit_get(h->removed, (off + run) / SMALL_PAGE) == removed &&
                   (ps > SMALL_PAGE || bit_get(h->data, (off + run) / SMALL_PAGE) == data))
                run += ps;
            if (removed) {
                pos += run;
                continue;
            }
            uint64_t done;
            enum fill f = fill(h, r->base + pos, run, data ? h->file + off : NULL, &done);
            if (data)
                h->n.bulk_copied += done / SMALL_PAGE;
            else
                h->n.bulk_zeroed += done / SMALL_PAGE;
            pos += done;
            if (f == FILL_PRESENT) /* a page a fault already filled */
                pos += ps;
            else if (f == FILL_GONE)
                return;
            else if (f == FILL_AGAIN && done == 0 && !drain(h))
                return; /* read the removal that blocks us; faults are served meanwhile */
        }
    }
}

static void serve(struct handler *h)
{
    for (;;) {
        struct pollfd p[2] = {{.fd = h->uffd, .events = POLLIN},
                              {.fd = h->sock, .events = POLLRDHUP}};
        int r = poll(p, 2, -1);
        if (stop_signal)
            return;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fatal(h, "poll: %s", strerror(errno));
        }
        if (p[0].revents & POLLIN && !drain(h))
            return;
        if (p[0].revents & (POLLERR | POLLHUP))
            return;
        if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            /* The VMM is done: serve what it queued before closing, then end. */
            drain(h);
            return;
        }
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " --socket PATH --mem-file FILE [--mode on-demand|all-at-once]\n"
               "                          [--kill-vmm-on-error]\n"
               "Serves the guest memory of a snapshot to a VMM restoring it with the Uffd\n"
               "memory backend (PUT /snapshot/load, mem_backend.backend_path = PATH).\n"
               "  --socket PATH        unix socket to listen on for one VMM connection\n"
               "  --mem-file FILE      the snapshot's guest memory file\n"
               "  --mode on-demand     fill each page when the VMM first touches it (default)\n"
               "  --mode all-at-once   fill every page as soon as the VMM connects\n"
               "  --kill-vmm-on-error  SIGKILL the VMM when the handler cannot go on\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'}, {"mem-file", required_argument, NULL, 'm'},
        {"mode", required_argument, NULL, 'o'},   {"kill-vmm-on-error", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    const char *socket_path = NULL, *mem_path = NULL;
    bool all_at_once = false, kill_peer = false;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            socket_path = optarg;
            break;
        case 'm':
            mem_path = optarg;
            break;
        case 'o':
            if (!strcmp(optarg, "all-at-once"))
                all_at_once = true;
            else if (strcmp(optarg, "on-demand") != 0)
                fatal(NULL, "unknown --mode %s (on-demand, all-at-once)", optarg);
            break;
        case 'k':
            kill_peer = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!socket_path || !mem_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: poll returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    static struct handler h = {.uffd = -1, .sock = -1};
    h.kill_peer = kill_peer;
    map_file(&h, mem_path, all_at_once);
    int l = listen_on(socket_path);
    listening_path = socket_path;
    fprintf(stderr, PROG ": listening on %s\n", socket_path);
    for (;;) {
        h.sock = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (h.sock >= 0)
            break;
        if (stop_signal)
            fatal(NULL, "stopped by signal %d before a VMM connected", (int)stop_signal);
        if (errno != EINTR)
            fatal(NULL, "accept on %s: %s", socket_path, strerror(errno));
    }
    /* One VMM: a second one finds nothing rather than a backlog nobody serves. */
    close(l);
    unlink(socket_path);
    listening_path = NULL;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(h.sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0)
        h.peer = cred.pid;
    receive_layout(&h);
    uint64_t total = 0;
    for (unsigned i = 0; i < h.nregions; i++)
        total += h.regions[i].size;
    fprintf(stderr, PROG ": serving %u region%s (%llu KiB) of pid %d, %s\n", h.nregions,
            h.nregions == 1 ? "" : "s", (unsigned long long)(total >> 10), (int)h.peer,
            all_at_once ? "all at once" : "on demand");
    if (all_at_once)
        fill_all(&h);
    if (!stop_signal)
        serve(&h);
    print_counts(&h);
    return 0;
}
