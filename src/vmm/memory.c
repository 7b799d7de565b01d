#include "vmm/memory.h"

#include "util/clock.h"
#include "util/error.h"
#include "util/fdpass.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mman.h>
#include <linux/sockios.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SZ_2M (2ULL << 20)

void guest_memory_layout(struct guest_memory *mem, uint8_t *base, uint64_t ram_size,
                         uint64_t hole_start, uint64_t hole_end)
{
    memset(mem, 0, sizeof(*mem));
    mem->base = base;
    mem->ram_size = ram_size;
    uint64_t low = ram_size < hole_start ? ram_size : hole_start;
    mem->regions[0] = (struct guest_region){.gpa = 0, .size = low, .hva = base};
    mem->nregions = 1;
    if (ram_size > low) {
        mem->regions[1] =
            (struct guest_region){.gpa = hole_end, .size = ram_size - low, .hva = base + low};
        mem->nregions = 2;
    }
}

int guest_memory_map(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                     uint64_t hole_end)
{
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return error_errno("cannot map %llu MiB of guest memory",
                           (unsigned long long)(ram_size >> 20));
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    /* Huge pages for the bulk of RAM. The first 2 MiB hold small boot
     * structures scattered over many pages; backing them with one huge page
     * would cost 2 MiB of host memory for a few KiB of data. */
    if (ram_size > SZ_2M)
        madvise((uint8_t *)p + SZ_2M, ram_size - SZ_2M, MADV_HUGEPAGE);
    return 0;
}

static int pool_shortfall_error(uint64_t ram_size);

/* Maps a sealed memfd shared; the fd is the memory's from now on (closed on failure). Pages
 * of a hugetlbfs memfd are reserved from the pool now (no MAP_NORESERVE). */
static int map_sealed_memfd(struct guest_memory *mem, int fd, uint64_t ram_size,
                            uint64_t hole_start, uint64_t hole_end, bool hugetlb)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < ram_size) {
        close(fd);
        return error_set("the shared guest memory given is not a file of %llu MiB",
                         (unsigned long long)(ram_size >> 20));
    }
    /* A file its other holder could still shrink would turn our accesses past its new end
     * into SIGBUS: only a memfd sealed against shrinking is taken. */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        close(fd);
        return error_set("the shared guest memory given is not sealed against shrinking");
    }
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | (hugetlb ? 0 : MAP_NORESERVE), fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        close(fd);
        if (hugetlb && e == ENOMEM)
            return pool_shortfall_error(ram_size);
        errno = e;
        return error_errno("cannot map %llu MiB of shared guest memory",
                           (unsigned long long)(ram_size >> 20));
    }
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    mem->has_memfd = true;
    mem->memfd = fd;
    return 0;
}

int guest_memory_map_given_memfd(struct guest_memory *mem, int fd, uint64_t ram_size,
                                 uint64_t hole_start, uint64_t hole_end)
{
    return map_sealed_memfd(mem, fd, ram_size, hole_start, hole_end, false);
}

static int map_new_memfd(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                         uint64_t hole_end, bool hugetlb)
{
    if (hugetlb && ram_size % SZ_2M)
        return error_set("guest memory of %llu MiB is not a whole number of 2 MiB huge pages",
                         (unsigned long long)(ram_size >> 20));
    /* MFD_HUGE_2MB is linux/memfd.h's, whose other names clash with glibc's: the size is
     * encoded as for mmap (HUGETLB_FLAG_ENCODE_2MB both). */
    unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB | MAP_HUGE_2MB : 0);
    int fd = memfd_create("ember-guest-ram", flags);
    if (fd < 0)
        return error_errno("memfd_create for %sguest memory", hugetlb ? "huge-page " : "");
    /* Its size is fixed for good: whoever maps it (the destination of a local migration)
     * can trust it. */
    if (ftruncate(fd, (off_t)ram_size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return error_errno("cannot size shared guest memory to %llu MiB",
                           (unsigned long long)(ram_size >> 20));
    }
    return map_sealed_memfd(mem, fd, ram_size, hole_start, hole_end, hugetlb);
}

int guest_memory_map_memfd(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                           uint64_t hole_end)
{
    return map_new_memfd(mem, ram_size, hole_start, hole_end, false);
}

int guest_memory_map_memfd_hugetlb(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                                   uint64_t hole_end)
{
    return map_new_memfd(mem, ram_size, hole_start, hole_end, true);
}

int guest_memory_map_file(struct guest_memory *mem, int fd, uint64_t ram_size, uint64_t hole_start,
                          uint64_t hole_end)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return error_errno("cannot stat the memory file");
    if (!S_ISREG(st.st_mode))
        return error_set("the memory file is not a regular file");
    if ((uint64_t)st.st_size < ram_size)
        return error_set("the memory file holds %llu bytes, less than the %llu MiB of guest memory "
                         "the snapshot describes",
                         (unsigned long long)st.st_size, (unsigned long long)(ram_size >> 20));
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED)
        return error_errno("cannot map the memory file (%llu MiB)",
                           (unsigned long long)(ram_size >> 20));
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    return 0;
}

/* A field of /proc/meminfo (a count of pages for the HugePages_ ones), or -1. */
static long long meminfo_field(const char *name)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -1;
    char line[128];
    long long v = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, name, n) && line[n] == ':') {
            v = strtoll(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* Mapping huge pages failed with ENOMEM: how many the host's pool lacks. */
static int pool_shortfall_error(uint64_t ram_size)
{
    long long free_pages = meminfo_field("HugePages_Free");
    long long reserved = meminfo_field("HugePages_Rsvd");
    if (free_pages < 0 || reserved < 0) {
        errno = ENOMEM;
        return error_errno("cannot map %llu MiB of guest memory from 2 MiB huge pages",
                           (unsigned long long)(ram_size >> 20));
    }
    return error_set("cannot back %llu MiB of guest memory with 2 MiB huge pages: it "
                     "needs %llu, the host has %lld free and not promised elsewhere "
                     "(reserve more in /proc/sys/vm/nr_hugepages)",
                     (unsigned long long)(ram_size >> 20), (unsigned long long)(ram_size / SZ_2M),
                     free_pages > reserved ? free_pages - reserved : 0);
}

int guest_memory_map_hugetlb(struct guest_memory *mem, uint64_t ram_size, uint64_t hole_start,
                             uint64_t hole_end)
{
    if (ram_size % SZ_2M)
        return error_set("guest memory of %llu MiB is not a whole number of 2 MiB huge pages",
                         (unsigned long long)(ram_size >> 20));
    /* No MAP_NORESERVE: the pages are reserved from the pool now. */
    void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        if (err == ENOMEM)
            return pool_shortfall_error(ram_size);
        errno = err;
        return error_errno("cannot map %llu MiB of guest memory from 2 MiB huge pages",
                           (unsigned long long)(ram_size >> 20));
    }
    guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
    mem->owns_mapping = true;
    return 0;
}

/* ---- the Uffd backend ------------------------------------------------------------------ */

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* A userfaultfd as Firecracker makes it: non-blocking (the handler polls it), close-on-exec,
 * and for kernel-mode faults too (KVM and system calls touch guest RAM: no
 * UFFD_USER_MODE_ONLY). */
static int uffd_create(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0)
        return fd;
    int sys_err = errno;
    if (sys_err != EPERM && sys_err != ENOSYS) {
        errno = sys_err;
        return error_errno("cannot create a userfaultfd");
    }
    /* The system call serves kernel-mode faults only with CAP_SYS_PTRACE or the sysctl
     * vm.unprivileged_userfaultfd=1; /dev/userfaultfd (Linux 6.1) answers to its file
     * permissions instead (a seccomp policy refusing the system call is covered too). */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) {
        int dev_err = errno;
        if (sys_err == ENOSYS && dev_err == ENOENT)
            return error_set("this kernel has no userfaultfd (CONFIG_USERFAULTFD), which the "
                             "Uffd memory backend needs");
        if (dev_err == ENOENT)
            return error_set("userfaultfd is not allowed here: the system call needs "
                             "CAP_SYS_PTRACE or the sysctl vm.unprivileged_userfaultfd=1, and "
                             "this host has no /dev/userfaultfd");
        return error_set("userfaultfd is not allowed here: the system call needs CAP_SYS_PTRACE "
                         "or the sysctl vm.unprivileged_userfaultfd=1, and /dev/userfaultfd "
                         "cannot be opened: %s%s",
                         strerror(dev_err),
                         dev_err == EACCES || dev_err == EPERM
                             ? " (give this user read and write access to it)"
                             : "");
    }
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int err = errno;
    close(dev);
    if (fd < 0) {
        errno = err;
        return error_errno("cannot create a userfaultfd through /dev/userfaultfd");
    }
    return fd;
}

/* A userfaultfd after the API handshake, with the feature Firecracker asks for: removals
 * (madvise(MADV_DONTNEED) of guest RAM) reported to the handler. A kernel without it (before
 * 4.11) gets a userfaultfd without. */
static int uffd_open(void)
{
    int fd = uffd_create();
    if (fd < 0)
        return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
    if (ioctl(fd, UFFDIO_API, &api) == 0)
        return fd;
    int err = errno;
    close(fd);
    if (err != EINVAL) {
        errno = err;
        return error_errno("userfaultfd: UFFDIO_API failed");
    }
    /* The handshake happens once per userfaultfd: a new one for the plain API. */
    fd = uffd_create();
    if (fd < 0)
        return -1;
    api = (struct uffdio_api){.api = UFFD_API};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        err = errno;
        close(fd);
        errno = err;
        return error_errno("userfaultfd: UFFDIO_API failed");
    }
    return fd;
}

/* A connection to the handler's socket, connect and send bounded by timeout_ms. */
static int uffd_connect(const char *path, int timeout_ms)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!path || !*path)
        return error_set("no socket path for the Uffd memory backend");
    if (strlen(path) >= sizeof(addr.sun_path))
        return error_set("the page-fault handler's socket path %s is longer than %zu bytes", path,
                         sizeof(addr.sun_path) - 1);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return error_errno("cannot create a unix socket");
    /* A listener whose backlog is full makes connect wait: the send timeout bounds it too. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
        error_errno("cannot set a send timeout on the page-fault handler's socket");
        close(sock);
        return -1;
    }
    if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) == 0)
        return sock;
    int err = errno;
    close(sock);
    errno = err;
    /* strerror's words, as Firecracker's message has them, then what they mean here */
    if (err == ENOENT)
        return error_errno("cannot connect to the page-fault handler at %s (start the handler "
                           "first)",
                           path);
    if (err == ECONNREFUSED)
        return error_errno("cannot connect to the page-fault handler at %s (the socket file is "
                           "there, no handler listens on it)",
                           path);
    if (err == EAGAIN || err == EINPROGRESS)
        return error_set("the page-fault handler at %s did not accept the connection within %d ms",
                         path, timeout_ms);
    return error_errno("cannot connect to the page-fault handler at %s", path);
}

/* Sends the layout with the userfaultfd, then waits until the handler has read it: the
 * protocol has no reply, but a message still queued is one nobody took, and a connection
 * closed with it unread (ECONNRESET) is a handler gone before serving anything. Either would
 * otherwise show only as a guest hanging at its first fault. */
static int uffd_send(int sock, const char *path, const char *json, int uffd, int timeout_ms)
{
    union fdpass_control ctl;
    size_t len = strlen(json), sent = 0;
    while (sent < len) {
        struct iovec iov = {.iov_base = (char *)json + sent, .iov_len = len - sent};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (sent == 0) /* the descriptor travels with the first byte */
            fdpass_attach(&msg, &ctl, uffd);
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                return error_set("the page-fault handler at %s closed the connection before "
                                 "taking the guest memory layout",
                                 path);
            if (errno == EAGAIN)
                return error_set("the page-fault handler at %s did not take the guest memory "
                                 "layout within %d ms",
                                 path, timeout_ms);
            return error_errno("cannot send the guest memory layout to the page-fault handler "
                               "at %s",
                               path);
        }
        sent += (size_t)n;
    }
    int64_t deadline = (int64_t)monotonic_ns() + (int64_t)timeout_ms * 1000000;
    long pause_ns = 20000;
    for (;;) {
        int queued = 0, soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (ioctl(sock, SIOCOUTQ, &queued) < 0)
            return error_errno("cannot see whether the page-fault handler read its message");
        /* After SIOCOUTQ: a peer closing unread sets the error before it drops the message. */
        if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            return error_errno("cannot read the state of the page-fault handler's connection");
        if (soerr)
            return error_set("the page-fault handler at %s closed the connection without "
                             "reading the guest memory layout (%s)",
                             path, strerror(soerr));
        if (queued == 0)
            return 0;
        if ((int64_t)monotonic_ns() >= deadline)
            return error_set("the page-fault handler at %s did not read the guest memory "
                             "layout within %d ms",
                             path, timeout_ms);
        struct timespec ts = {.tv_nsec = pause_ns};
        nanosleep(&ts, NULL);
        if (pause_ns < 5000000)
            pause_ns *= 2;
    }
}

int guest_memory_map_uffd(struct guest_memory *mem, const char *socket_path, uint64_t ram_size,
                          uint64_t hole_start, uint64_t hole_end, bool hugetlb, int timeout_ms,
                          int *sock_out)
{
    *sock_out = -1;
    memset(mem, 0, sizeof(*mem));
    if (timeout_ms <= 0)
        timeout_ms = GUEST_MEM_UFFD_TIMEOUT_MS;
    uint64_t page = hugetlb ? SZ_2M : 4096;
    if (ram_size == 0 || ram_size % page || (hugetlb && hole_start % page))
        return error_set("guest memory of %llu bytes cannot be served in %llu KiB pages",
                         (unsigned long long)ram_size, (unsigned long long)(page >> 10));
    if (hugetlb) {
        if (guest_memory_map_hugetlb(mem, ram_size, hole_start, hole_end) < 0)
            return -1;
    } else {
        /* No MADV_HUGEPAGE: the handler fills 4 KiB pages (Firecracker's page_size 4096). */
        void *p = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return error_errno("cannot map %llu MiB of guest memory",
                               (unsigned long long)(ram_size >> 20));
        guest_memory_layout(mem, p, ram_size, hole_start, hole_end);
        mem->owns_mapping = true;
    }
    int sock = -1;
    int uffd = uffd_open();
    if (uffd < 0)
        goto fail;
    char json[512];
    size_t used = 0;
    json[used++] = '[';
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        struct uffdio_register reg = {
            .range = {.start = (uintptr_t)r->hva, .len = r->size},
            .mode = UFFDIO_REGISTER_MODE_MISSING,
        };
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
            error_errno("cannot register guest memory (%llu MiB at 0x%llx) with the userfaultfd",
                        (unsigned long long)(r->size >> 20), (unsigned long long)r->gpa);
            goto fail;
        }
        if (!(reg.ioctls & (1ULL << _UFFDIO_COPY))) {
            error_set("the userfaultfd offers no UFFDIO_COPY for guest memory");
            goto fail;
        }
        /* Field names and order as Firecracker's GuestRegionUffdMapping; page_size_kib is its
         * deprecated twin, in bytes despite the name. */
        int n = snprintf(json + used, sizeof(json) - used,
                         "%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,"
                         "\"page_size\":%llu,\"page_size_kib\":%llu}",
                         i ? "," : "", (unsigned long long)(uintptr_t)r->hva,
                         (unsigned long long)r->size, (unsigned long long)(r->hva - mem->base),
                         (unsigned long long)page, (unsigned long long)page);
        if (n < 0 || (size_t)n >= sizeof(json) - used - 1) {
            error_set("the guest memory layout does not fit its message");
            goto fail;
        }
        used += (size_t)n;
    }
    json[used++] = ']';
    json[used] = 0;
    sock = uffd_connect(socket_path, timeout_ms);
    if (sock < 0 || uffd_send(sock, socket_path, json, uffd, timeout_ms) < 0)
        goto fail;
    mem->uffd = uffd;
    mem->owns_uffd = true;
    *sock_out = sock;
    return 0;
fail:
    if (sock >= 0)
        close(sock);
    if (uffd >= 0)
        close(uffd);
    guest_memory_free(mem);
    return -1;
}

void guest_memory_free(struct guest_memory *mem)
{
    if (mem->owns_mapping && mem->base)
        munmap(mem->base, mem->ram_size);
    if (mem->has_memfd)
        close(mem->memfd);
    if (mem->owns_uffd)
        close(mem->uffd);
    free(mem->dirty);
    memset(mem, 0, sizeof(*mem));
}

size_t guest_memory_bitmap_words(const struct guest_memory *mem)
{
    uint64_t pages = (mem->ram_size + GUEST_PAGE_SIZE - 1) / GUEST_PAGE_SIZE;
    return (size_t)((pages + 63) / 64);
}

int guest_memory_track_dirty(struct guest_memory *mem)
{
    if (mem->dirty)
        return 0;
    size_t words = guest_memory_bitmap_words(mem);
    mem->dirty = calloc(words ? words : 1, sizeof(uint64_t));
    if (!mem->dirty)
        return error_set("out of memory for the dirty page bitmap");
    return 0;
}

void guest_memory_mark_dirty_range(const struct guest_memory *mem, const void *hva, uint64_t len)
{
    uintptr_t start = (uintptr_t)hva, base = (uintptr_t)mem->base;
    if (!len || start < base || start - base >= mem->ram_size)
        return;
    uint64_t off = start - base;
    uint64_t end = len > mem->ram_size - off ? mem->ram_size : off + len;
    uint64_t first = off / GUEST_PAGE_SIZE, last = (end - 1) / GUEST_PAGE_SIZE;
    for (uint64_t w = first / 64; w <= last / 64; w++) {
        uint64_t lo = w == first / 64 ? first % 64 : 0;
        uint64_t hi = w == last / 64 ? last % 64 : 63;
        uint64_t mask = (~0ULL >> (63 - hi)) & (~0ULL << lo);
        /* A plain load first: pages written again and again (a used ring) stay set, and
         * their cache line is not taken exclusive by every request. */
        if ((__atomic_load_n(&mem->dirty[w], __ATOMIC_RELAXED) & mask) != mask)
            __atomic_fetch_or(&mem->dirty[w], mask, __ATOMIC_RELAXED);
    }
}

void *gpa_to_hva(const struct guest_memory *mem, uint64_t gpa, uint64_t len)
{
    if (len == 0)
        len = 1;
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
            return r->hva + (gpa - r->gpa);
    }
    return NULL;
}

uint64_t guest_region_end(const struct guest_memory *mem, uint64_t gpa)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r->gpa + r->size;
    }
    return 0;
}

int guest_write(const struct guest_memory *mem, uint64_t gpa, const void *src, uint64_t len)
{
    void *dst = gpa_to_hva(mem, gpa, len);
    if (!dst)
        return error_set("guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                         (unsigned long long)len);
    if (len) {
        memcpy(dst, src, len);
        guest_memory_mark_dirty(mem, dst, len);
    }
    return 0;
}

int guest_read(const struct guest_memory *mem, uint64_t gpa, void *dst, uint64_t len)
{
    const void *src = gpa_to_hva(mem, gpa, len);
    if (!src)
        return error_set("guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                         (unsigned long long)len);
    if (len)
        memcpy(dst, src, len);
    return 0;
}
