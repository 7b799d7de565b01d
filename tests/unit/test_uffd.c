/* The Uffd memory backend (guest_memory_map_uffd) against the example page-fault handler
 * (tools/uffd-handler, run from $EMBER_UFFD_HANDLER), and the handler against bad messages.
 * This test process plays the VMM: its own reads of guest memory are the faults served. */
#include "suites.h"
#include "vmm/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/error.h"

#define PAGE    4096u
#define MIB     (1ULL << 20)
#define RAM     (8 * MIB)
#define NPAGES  (RAM / PAGE)
#define HOLE_AT (4 * MIB) /* a small "32-bit hole": two regions, as a large guest has */
#define HOLE_TO (16 * MIB)

struct fixture {
    char dir[64], sock[96], memfile[96], log[96];
    pid_t handler;
    uint64_t data_pages, hole_pages;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Skips (false) when there is no handler to run or no userfaultfd for this process. */
static bool uffd_usable(void)
{
    if (!getenv("EMBER_UFFD_HANDLER")) {
        fprintf(stderr,
                "# %s: skipped, EMBER_UFFD_HANDLER (the example handler) is not set: "
                "run through make unit-test\n",
                tcase_name());
        return false;
    }
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev >= 0) {
            fd = ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC);
            close(dev);
        }
    }
    if (fd < 0) {
        fprintf(stderr,
                "# %s: skipped, no userfaultfd here (needs root, "
                "vm.unprivileged_userfaultfd=1 or access to /dev/userfaultfd)\n",
                tcase_name());
        return false;
    }
    close(fd);
    return true;
}

/* The byte of the memory file at off: every 8 bytes name their page and place, so that no
 * page of data equals another (or zeros). */
static uint8_t pattern(uint64_t off)
{
    uint64_t z = off / 8 + 0x9e3779b97f4a7c15ULL; /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (uint8_t)(z >> (8 * (off % 8)));
}

/* Pages [punched_from, punched_to) of the file are a hole too (a test of huge pages). */
static uint64_t punched_from, punched_to;

/* Every seventh page is a hole (zeros), the rest the pattern. */
static bool is_hole(uint64_t page)
{
    return page % 7 == 3 || (page >= punched_from && page < punched_to);
}

static void fixture_init(struct fixture *f, uint64_t size)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/ember-uffd-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    snprintf(f->sock, sizeof(f->sock), "%s/uffd.sock", f->dir);
    snprintf(f->memfile, sizeof(f->memfile), "%s/mem", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/handler.log", f->dir);
    int fd = open(f->memfile, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    punched_from = punched_to = 0;
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    static uint8_t buf[PAGE];
    for (uint64_t p = 0; p < size / PAGE; p++) {
        if (is_hole(p)) {
            f->hole_pages++;
            continue;
        }
        for (unsigned i = 0; i < PAGE; i++)
            buf[i] = pattern(p * PAGE + i);
        ck_assert_int_eq(pwrite(fd, buf, PAGE, (off_t)(p * PAGE)), PAGE);
        f->data_pages++;
    }
    close(fd);
}

static void fixture_cleanup(struct fixture *f)
{
    if (f->handler > 0) {
        kill(f->handler, SIGKILL);
        waitpid(f->handler, NULL, 0);
    }
    unlink(f->sock);
    unlink(f->memfile);
    unlink(f->log);
    rmdir(f->dir);
}

/* Runs the handler (its standard error into f->log) and waits for its socket. */
static void handler_start_with(struct fixture *f, const char *mode, const char *extra)
{
    f->handler = fork();
    ck_assert_int_ge(f->handler, 0);
    if (f->handler == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no handler behind */
        int log = open(f->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (log < 0 || dup2(log, 2) < 0)
            _exit(127);
        const char *h = getenv("EMBER_UFFD_HANDLER");
        execl(h, h, "--socket", f->sock, "--mem-file", f->memfile, "--mode", mode, extra,
              (char *)NULL);
        _exit(127);
    }
    int64_t end = now_ms() + 5000;
    struct stat st;
    while (stat(f->sock, &st) != 0 || !S_ISSOCK(st.st_mode)) {
        ck_assert_msg(now_ms() < end, "the handler did not listen on %s", f->sock);
        ck_assert_int_eq(waitpid(f->handler, NULL, WNOHANG), 0);
        usleep(2000);
    }
}

static void handler_start(struct fixture *f, const char *mode)
{
    handler_start_with(f, mode, NULL);
}

/* Waits (5 s at most) for the handler to end; its exit status, its log in log. */
static int handler_wait(struct fixture *f, char *log, size_t loglen)
{
    int status = 0;
    int64_t end = now_ms() + 5000;
    while (waitpid(f->handler, &status, WNOHANG) == 0) {
        ck_assert_msg(now_ms() < end, "the handler did not end");
        usleep(2000);
    }
    f->handler = 0;
    log[0] = 0;
    FILE *l = fopen(f->log, "re");
    if (l) {
        size_t n = fread(log, 1, loglen - 1, l);
        log[n] = 0;
        fclose(l);
    }
    ck_assert_msg(WIFEXITED(status), "the handler was killed: %s", log);
    return WEXITSTATUS(status);
}

/* A count from the handler's last line ("name=N"). */
static uint64_t count(const char *log, const char *name)
{
    char key[32];
    snprintf(key, sizeof(key), " %s=", name);
    const char *p = strstr(log, key);
    ck_assert_msg(p != NULL, "no %s in the handler's log: %s", name, log);
    return strtoull(p + strlen(key), NULL, 10);
}

/* Every page, through the guest-physical view of both regions, holds the file's bytes at
 * its offset (host address - base). */
static void check_contents(const struct guest_memory *m)
{
    static uint8_t want[PAGE];
    uint64_t checked = 0;
    for (unsigned r = 0; r < m->nregions; r++) {
        for (uint64_t gpa = m->regions[r].gpa; gpa < m->regions[r].gpa + m->regions[r].size;
             gpa += PAGE) {
            const uint8_t *hva = gpa_to_hva(m, gpa, PAGE);
            ck_assert_ptr_nonnull(hva);
            uint64_t off = (uint64_t)(hva - m->base);
            for (unsigned i = 0; i < PAGE; i++)
                want[i] = is_hole(off / PAGE) ? 0 : pattern(off + i);
            ck_assert_msg(!memcmp(hva, want, PAGE), "gpa 0x%llx (file offset 0x%llx) differs",
                          (unsigned long long)gpa, (unsigned long long)off);
            checked++;
        }
    }
    ck_assert_uint_eq(checked, NPAGES);
}

START_TEST(on_demand_serves_each_page_once)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, RAM);
    handler_start(&f, "on-demand");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    ck_assert_int_ge(sock, 0);
    ck_assert(m.owns_uffd);
    ck_assert_uint_eq(m.nregions, 2);
    ck_assert_uint_eq(m.regions[1].gpa, HOLE_TO);
    check_contents(&m);
    /* The pages are the guest's now: writable, private. */
    uint8_t *p = gpa_to_hva(&m, HOLE_TO + 5 * PAGE, 8);
    memcpy(p, "written!", 8);
    ck_assert(!memcmp(gpa_to_hva(&m, HOLE_TO + 5 * PAGE, 8), "written!", 8));
    guest_memory_free(&m);
    close(sock); /* the VM's end: the handler ends too */
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    /* One fault per page touched, holes served as zero pages. */
    ck_assert_uint_eq(count(log, "faults"), NPAGES);
    ck_assert_uint_eq(count(log, "copied"), f.data_pages);
    ck_assert_uint_eq(count(log, "zeroed"), f.hole_pages);
    ck_assert_uint_eq(count(log, "present"), 0);
    fixture_cleanup(&f);
}
END_TEST

/* A removal (madvise(MADV_DONTNEED), what a balloon does) reaches the handler, which from then
 * on serves those pages as zeros: the file no longer says what they hold. */
START_TEST(removed_pages_read_as_zeros)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, RAM);
    handler_start(&f, "on-demand");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    check_contents(&m);
    uint8_t *gone = m.base + 64 * PAGE;
    ck_assert_int_eq(madvise(gone, 16 * PAGE, MADV_DONTNEED), 0);
    for (unsigned i = 0; i < 16 * PAGE; i++)
        ck_assert_msg(gone[i] == 0, "byte %u of a removed range is 0x%x", i, gone[i]);
    /* the rest is untouched */
    ck_assert(!is_hole(81));
    ck_assert_uint_eq(m.base[81 * PAGE + 9], pattern(81 * PAGE + 9));
    guest_memory_free(&m);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_eq(count(log, "removes"), 1);
    ck_assert_uint_eq(count(log, "removed_kib"), 64);
    ck_assert_uint_eq(count(log, "faults"), NPAGES + 16);
    ck_assert_uint_eq(count(log, "zeroed"), f.hole_pages + 16);
    fixture_cleanup(&f);
}
END_TEST

/* A field of /proc/meminfo, or -1. */
static long long meminfo(const char *name)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[128];
    long long v = -1;
    size_t n = strlen(name);
    while (f && fgets(line, sizeof(line), f)) {
        if (!strncmp(line, name, n) && line[n] == ':')
            v = strtoll(line + n + 1, NULL, 10);
    }
    if (f)
        fclose(f);
    return v;
}

static void write_nr_hugepages(long long n)
{
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "we");
    if (f) {
        fprintf(f, "%lld\n", n);
        fclose(f);
    }
}

/* Guest RAM of 2 MiB hugetlbfs pages (Firecracker's huge_pages "2M", which its snapshots
 * restore only through Uffd): the handler fills whole huge pages, zeros by copy. */
START_TEST(huge_pages)
{
    if (!uffd_usable())
        return;
    long long old = meminfo("HugePages_Total");
    if (old < 0) {
        fprintf(stderr, "# %s: skipped, no hugetlbfs in this kernel\n", tcase_name());
        return;
    }
    write_nr_hugepages(old + 4);
    if (meminfo("HugePages_Free") - meminfo("HugePages_Rsvd") < 4) {
        write_nr_hugepages(old);
        fprintf(stderr, "# %s: skipped, cannot reserve 4 huge pages (root needed)\n", tcase_name());
        return;
    }
    struct fixture f;
    fixture_init(&f, RAM);
    /* the third huge page all hole: served as zeros */
    int fd = open(f.memfile, O_RDWR | O_CLOEXEC);
    ck_assert_int_eq(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(4 * MIB),
                               (off_t)(2 * MIB)),
                     0);
    close(fd);
    punched_from = 4 * MIB / PAGE;
    punched_to = 6 * MIB / PAGE;
    handler_start(&f, "on-demand");
    struct guest_memory m;
    int sock = -1;
    int rc = guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, true, 3000, &sock);
    if (rc < 0)
        write_nr_hugepages(old);
    ck_assert_msg(rc == 0, "%s", error_get());
    ck_assert_uint_eq(m.nregions, 2);
    check_contents(&m);
    guest_memory_free(&m);
    write_nr_hugepages(old);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_eq(count(log, "faults"), 4);
    ck_assert_uint_eq(count(log, "copied"), 3);
    ck_assert_uint_eq(count(log, "zeroed"), 1);
    fixture_cleanup(&f);
}
END_TEST

/* A vCPU's own faults, taken inside KVM_RUN (instruction fetch and data read), served by the
 * handler: real-mode code from the memory file reads a word of it and writes it to a port. */
START_TEST(vcpu_faults_are_served)
{
    if (!uffd_usable())
        return;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        fprintf(stderr, "# %s: skipped, cannot open /dev/kvm\n", tcase_name());
        return;
    }
    struct fixture f;
    fixture_init(&f, MIB);
    /* mov eax, [0x2000]; out 0x10, eax; hlt */
    static const uint8_t code[] = {0x66, 0xa1, 0x00, 0x20, 0x66, 0xe7, 0x10, 0xf4};
    int fd = open(f.memfile, O_RDWR | O_CLOEXEC);
    ck_assert_int_eq(pwrite(fd, code, sizeof(code), 0x1000), (ssize_t)sizeof(code));
    close(fd);
    ck_assert(!is_hole(0x2000 / PAGE));
    uint32_t want = 0;
    for (unsigned i = 0; i < 4; i++)
        want |= (uint32_t)pattern(0x2000 + i) << (8 * i);
    handler_start(&f, "on-demand");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, MIB, 4 * MIB, 8 * MIB, false, 3000, &sock) == 0,
                  "%s", error_get());
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    ck_assert_int_ge(vm, 0);
    ck_assert_int_eq(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL), 0);
    struct kvm_userspace_memory_region slot = {
        .slot = 0, .memory_size = MIB, .userspace_addr = (uintptr_t)m.base};
    ck_assert_int_eq(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot), 0);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    ck_assert_int_ge(vcpu, 0);
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    ck_assert_int_gt(size, 0);
    struct kvm_run *run = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    ck_assert_ptr_ne(run, MAP_FAILED);
    struct kvm_sregs sregs;
    ck_assert_int_eq(ioctl(vcpu, KVM_GET_SREGS, &sregs), 0);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    ck_assert_int_eq(ioctl(vcpu, KVM_SET_SREGS, &sregs), 0);
    struct kvm_regs regs = {.rip = 0x1000, .rflags = 0x2};
    ck_assert_int_eq(ioctl(vcpu, KVM_SET_REGS, &regs), 0);
    ck_assert_int_eq(ioctl(vcpu, KVM_RUN, 0), 0);
    ck_assert_uint_eq(run->exit_reason, KVM_EXIT_IO);
    ck_assert_uint_eq(run->io.port, 0x10);
    uint32_t got;
    memcpy(&got, (uint8_t *)run + run->io.data_offset, 4);
    ck_assert_uint_eq(got, want);
    munmap(run, (size_t)size);
    close(vcpu);
    close(vm);
    close(kvm);
    guest_memory_free(&m);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_ge(count(log, "copied"), 2); /* the code's page and the data's */
    fixture_cleanup(&f);
}
END_TEST

/* Two threads reading the same pages at once: a page's second fault finds it present. */
struct reader {
    const struct guest_memory *m;
    uint64_t sum;
};

static void *read_all(void *arg)
{
    struct reader *r = arg;
    for (uint64_t off = 0; off < r->m->ram_size; off += PAGE / 4)
        r->sum += r->m->base[off];
    return NULL;
}

START_TEST(concurrent_faults)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, RAM);
    handler_start(&f, "on-demand");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    struct reader a = {.m = &m}, b = {.m = &m};
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, read_all, &a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, read_all, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_uint_eq(a.sum, b.sum);
    check_contents(&m);
    guest_memory_free(&m);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_eq(count(log, "copied") + count(log, "zeroed"), NPAGES);
    ck_assert_uint_eq(count(log, "faults"), NPAGES + count(log, "present"));
    fixture_cleanup(&f);
}
END_TEST

START_TEST(all_at_once_fills_before_any_fault)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, RAM);
    handler_start(&f, "all-at-once");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    /* mincore sees pages without touching them: wait until the handler has filled all. */
    static unsigned char vec[NPAGES];
    int64_t end = now_ms() + 5000;
    for (;;) {
        ck_assert_int_eq(mincore(m.base, RAM, vec), 0);
        uint64_t resident = 0;
        for (uint64_t i = 0; i < NPAGES; i++)
            resident += vec[i] & 1;
        if (resident == NPAGES)
            break;
        ck_assert_msg(now_ms() < end, "only %llu of %llu pages filled",
                      (unsigned long long)resident, (unsigned long long)NPAGES);
        usleep(1000);
    }
    check_contents(&m);
    guest_memory_free(&m);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_eq(count(log, "faults"), 0);
    ck_assert_uint_eq(count(log, "bulk_copied"), f.data_pages);
    ck_assert_uint_eq(count(log, "bulk_zeroed"), f.hole_pages);
    fixture_cleanup(&f);
}
END_TEST

/* Touching memory at once: pages the bulk fill has not reached yet fault, and every page is
 * filled exactly once, by one or the other. */
START_TEST(all_at_once_races_faults)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, RAM);
    handler_start(&f, "all-at-once");
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    /* from the end, where the bulk fill arrives last */
    volatile uint8_t sink = 0;
    for (uint64_t off = RAM; off > 0; off -= PAGE)
        sink ^= m.base[off - PAGE];
    (void)sink;
    check_contents(&m);
    guest_memory_free(&m);
    close(sock);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_uint_eq(count(log, "bulk_copied") + count(log, "bulk_zeroed") + count(log, "copied") +
                          count(log, "zeroed"),
                      NPAGES);
    fixture_cleanup(&f);
}
END_TEST

/* What ember sends, read as Firecracker's example handlers read it (one recvmsg into 1 KiB):
 * byte for byte what Firecracker sends for the same layout (serde's field order, no spaces),
 * with one descriptor, a userfaultfd. */
static int listener(const char *path, int backlog);

struct capture {
    int listener;
    char msg[1024];
    ssize_t len;
    int fds;
    char fd_kind[64];
};

static void *capture_message(void *arg)
{
    struct capture *c = arg;
    int s = accept(c->listener, NULL, NULL);
    if (s < 0)
        return NULL;
    union {
        char b[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = c->msg, .iov_len = sizeof(c->msg) - 1};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b)};
    c->len = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < (h->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
            char link[64];
            snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, c->fd_kind, sizeof(c->fd_kind) - 1);
            c->fd_kind[n > 0 ? n : 0] = 0;
            close(fd);
            c->fds++;
        }
    }
    close(s);
    return NULL;
}

START_TEST(message_is_firecrackers)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, PAGE);
    struct capture c = {.listener = listener(f.sock, 1)};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, capture_message, &c), 0);
    struct guest_memory m;
    int sock = -1;
    ck_assert_msg(guest_memory_map_uffd(&m, f.sock, RAM, HOLE_AT, HOLE_TO, false, 3000, &sock) == 0,
                  "%s", error_get());
    pthread_join(t, NULL);
    char want[1024];
    snprintf(want, sizeof(want),
             "[{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":0,\"page_size\":4096,"
             "\"page_size_kib\":4096},"
             "{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,\"page_size\":4096,"
             "\"page_size_kib\":4096}]",
             (unsigned long long)(uintptr_t)m.base, (unsigned long long)HOLE_AT,
             (unsigned long long)(uintptr_t)(m.base + HOLE_AT), (unsigned long long)(RAM - HOLE_AT),
             (unsigned long long)HOLE_AT);
    ck_assert_int_eq(c.len, (ssize_t)strlen(want));
    c.msg[c.len] = 0;
    ck_assert_str_eq(c.msg, want);
    ck_assert_int_eq(c.fds, 1);
    ck_assert_str_eq(c.fd_kind, "anon_inode:[userfaultfd]");
    guest_memory_free(&m);
    close(sock);
    close(c.listener);
    fixture_cleanup(&f);
}
END_TEST

/* ---- ember facing a missing or misbehaving handler ------------------------------------- */

static void expect_failure(const char *path, int timeout_ms, const char *words)
{
    struct guest_memory m;
    int sock = 7;
    int64_t t0 = now_ms();
    ck_assert_int_eq(
        guest_memory_map_uffd(&m, path, RAM, HOLE_AT, HOLE_TO, false, timeout_ms, &sock), -1);
    ck_assert_msg(strstr(error_get(), words) != NULL, "'%s' lacks '%s'", error_get(), words);
    ck_assert_msg(strstr(error_get(), path) != NULL, "'%s' lacks the path", error_get());
    ck_assert_int_eq(sock, -1);
    ck_assert_ptr_null(m.base); /* nothing left mapped */
    ck_assert(!m.owns_uffd);
    ck_assert_int_lt(now_ms() - t0, timeout_ms + 2000);
}

static int listener(const char *path, int backlog)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(l, 0);
    ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(l, backlog), 0);
    return l;
}

static void *accept_and_close(void *arg)
{
    int l = *(int *)arg;
    int c = accept(l, NULL, NULL);
    if (c >= 0)
        close(c);
    close(l);
    return NULL;
}

struct holder {
    int listener;
    int release[2]; /* a pipe: the holder lets go when it is written to */
};

static void *accept_and_hold(void *arg)
{
    struct holder *h = arg;
    int c = accept(h->listener, NULL, NULL);
    char b;
    if (read(h->release[0], &b, 1) < 0) /* never reads the connection */
        b = 0;
    if (c >= 0)
        close(c);
    return NULL;
}

START_TEST(no_handler)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, PAGE);
    expect_failure(f.sock, 1000, "No such file or directory");
    /* a socket file nobody listens on */
    close(listener(f.sock, 1));
    expect_failure(f.sock, 1000, "Connection refused");
    unlink(f.sock);
    fixture_cleanup(&f);
}
END_TEST

START_TEST(handler_closes_at_once)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, PAGE);
    int l = listener(f.sock, 1);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, accept_and_close, &l), 0);
    expect_failure(f.sock, 3000, "closed the connection");
    pthread_join(t, NULL);
    fixture_cleanup(&f);
}
END_TEST

START_TEST(handler_never_reads)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, PAGE);
    struct holder h = {.listener = listener(f.sock, 1)};
    ck_assert_int_eq(pipe2(h.release, O_CLOEXEC), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, accept_and_hold, &h), 0);
    expect_failure(f.sock, 300, "did not read the guest memory layout within 300 ms");
    ck_assert_int_eq(write(h.release[1], "x", 1), 1);
    pthread_join(t, NULL);
    close(h.listener);
    close(h.release[0]);
    close(h.release[1]);
    /* Never accepting: the connection waits in the backlog, the message with it. */
    unlink(f.sock);
    int l = listener(f.sock, 1);
    expect_failure(f.sock, 300, "did not read");
    close(l);
    /* A full backlog: connect itself waits, bounded by the same timeout. */
    unlink(f.sock);
    l = listener(f.sock, 0);
    int first = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", f.sock);
    ck_assert_int_eq(connect(first, (struct sockaddr *)&a, sizeof(a)), 0);
    expect_failure(f.sock, 300, "did not accept the connection within 300 ms");
    close(first);
    close(l);
    fixture_cleanup(&f);
}
END_TEST

START_TEST(bad_socket_path)
{
    if (!uffd_usable())
        return;
    struct guest_memory m;
    int sock;
    char path[200];
    memset(path, 'a', sizeof(path) - 1);
    path[sizeof(path) - 1] = 0;
    ck_assert_int_eq(guest_memory_map_uffd(&m, path, RAM, HOLE_AT, HOLE_TO, false, 100, &sock), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "longer than"));
    ck_assert_int_eq(guest_memory_map_uffd(&m, "", RAM, HOLE_AT, HOLE_TO, false, 100, &sock), -1);
    ck_assert_int_eq(
        guest_memory_map_uffd(&m, "/nonexistent", RAM + 1, HOLE_AT, HOLE_TO, false, 100, &sock),
        -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "pages"));
}
END_TEST

/* ---- the handler facing a bad VMM ------------------------------------------------------ */

/* Connects to the handler, sends msg with fd attached (none if fd < 0), and returns the
 * connection. */
static int send_to_handler(const char *path, const char *msg, int fd)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = strlen(msg)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        mh.msg_control = ctl.b;
        mh.msg_controllen = sizeof(ctl.b);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ck_assert_int_eq(sendmsg(s, &mh, MSG_NOSIGNAL), (ssize_t)strlen(msg));
    return s;
}

static int new_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(dev, 0);
        fd = ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC | O_NONBLOCK);
        close(dev);
    }
    ck_assert_int_ge(fd, 0);
    struct uffdio_api api = {.api = UFFD_API};
    ck_assert_int_eq(ioctl(fd, UFFDIO_API, &api), 0);
    return fd;
}

/* The handler (memory file of 1 MiB) given msg: exit status 1 and words in its log. */
static void handler_rejects(const char *msg, bool with_uffd, const char *words)
{
    struct fixture f;
    fixture_init(&f, MIB);
    handler_start(&f, "on-demand");
    int fd = with_uffd ? new_uffd() : open("/dev/null", O_RDONLY | O_CLOEXEC);
    int s = send_to_handler(f.sock, msg, fd);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 1, "accepted %s: %s", msg, log);
    ck_assert_msg(strstr(log, words) != NULL, "for %s: '%s' lacks '%s'", msg, log, words);
    close(s);
    close(fd);
    fixture_cleanup(&f);
}

#define REGION(base, size, off, ps)                                                                \
    "{\"base_host_virt_addr\":" #base ",\"size\":" #size ",\"offset\":" #off ",\"page_size\":" #ps \
    ",\"page_size_kib\":" #ps "}"

START_TEST(handler_validates_the_layout)
{
    if (!uffd_usable())
        return;
    handler_rejects("garbage", true, "not JSON");
    handler_rejects("[" REGION(1048576, 4096, 0, 4096) "] trailing", true, "not JSON");
    handler_rejects("{}", true, "not a JSON array");
    handler_rejects("[]", true, "0 memory regions");
    handler_rejects("[1]", true, "not a JSON object");
    handler_rejects("[{\"base_host_virt_addr\":4096,\"offset\":0,\"page_size\":4096}]", true,
                    "no \"size\"");
    handler_rejects("[" REGION(1048576, 0, 0, 4096) "]", true, "non-zero multiples");
    handler_rejects("[" REGION(1048577, 4096, 0, 4096) "]", true, "non-zero multiples");
    handler_rejects("[" REGION(1048576, 4096, 100, 4096) "]", true, "non-zero multiples");
    handler_rejects("[" REGION(1048576, 4096, 0, 3000) "]", true, "power of two");
    handler_rejects("[" REGION(1048576, 4096, 0, 1024) "]", true, "power of two");
    handler_rejects("[" REGION(1048576, 4096, -4096, 4096) "]", true, "whole number");
    handler_rejects("[" REGION(1048576.5, 4096, 0, 4096) "]", true, "whole number");
    handler_rejects("[" REGION(1048576, 4096, 1e300, 4096) "]", true, "whole number");
    handler_rejects("[" REGION("1048576", 4096, 0, 4096) "]", true, "whole number");
    handler_rejects("[" REGION(1048576, 4096, 1048576, 4096) "]", true, "memory file");
    handler_rejects("[" REGION(1048576, 2097152, 0, 4096) "]", true, "memory file");
    handler_rejects("[" REGION(1048576, 8192, 0, 4096) "," REGION(1052672, 4096, 8192, 4096) "]",
                    true, "overlap");
    handler_rejects("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096,"
                    "\"page_size_kib\":4}]",
                    true, "differ");
    handler_rejects("[" REGION(1048576, 4096, 0, 4096) "]", false, "not a userfaultfd");
}
END_TEST

START_TEST(handler_needs_the_descriptor)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, MIB);
    handler_start(&f, "on-demand");
    int s = send_to_handler(f.sock, "[" REGION(1048576, 4096, 0, 4096) "]", -1);
    char log[4096];
    ck_assert_int_eq(handler_wait(&f, log, sizeof(log)), 1);
    ck_assert_ptr_nonnull(strstr(log, "0 descriptors"));
    close(s);
    fixture_cleanup(&f);
}
END_TEST

/* --kill-vmm-on-error: a handler that cannot go on ends its VMM (the socket's peer) rather
 * than leave it frozen at its next fault. */
START_TEST(handler_kills_the_vmm_on_error)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, MIB);
    handler_start_with(&f, "on-demand", "--kill-vmm-on-error");
    pid_t vmm = fork();
    ck_assert_int_ge(vmm, 0);
    if (vmm == 0) {
        int fd = new_uffd();
        send_to_handler(f.sock, "[" REGION(1048576, 4096, 0, 3000) "]", fd);
        pause();
        _exit(0);
    }
    char log[4096];
    ck_assert_int_eq(handler_wait(&f, log, sizeof(log)), 1);
    ck_assert_ptr_nonnull(strstr(log, "power of two"));
    int status;
    ck_assert_int_eq(waitpid(vmm, &status, 0), vmm);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    fixture_cleanup(&f);
}
END_TEST

/* What older VMMs send (page_size_kib alone, in bytes) is accepted; the handler then serves
 * until the VMM closes the connection. */
START_TEST(handler_accepts_page_size_kib_alone)
{
    if (!uffd_usable())
        return;
    struct fixture f;
    fixture_init(&f, MIB);
    handler_start(&f, "on-demand");
    int fd = new_uffd();
    int s = send_to_handler(f.sock,
                            "[{\"base_host_virt_addr\":1048576,\"size\":1048576,\"offset\":0,"
                            "\"page_size_kib\":4096}]",
                            fd);
    close(fd);
    usleep(100000);
    close(s);
    char log[4096];
    ck_assert_msg(handler_wait(&f, log, sizeof(log)) == 0, "%s", log);
    ck_assert_ptr_nonnull(strstr(log, "serving 1 region (1024 KiB)"));
    ck_assert_uint_eq(count(log, "faults"), 0);
    fixture_cleanup(&f);
}
END_TEST

Suite *uffd_suite(void)
{
    Suite *s = suite_create("uffd");
    TCase *t = tcase_create("backend");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, on_demand_serves_each_page_once);
    tcase_add_test(t, concurrent_faults);
    tcase_add_test(t, removed_pages_read_as_zeros);
    tcase_add_test(t, huge_pages);
    tcase_add_test(t, vcpu_faults_are_served);
    tcase_add_test(t, all_at_once_fills_before_any_fault);
    tcase_add_test(t, all_at_once_races_faults);
    tcase_add_test(t, message_is_firecrackers);
    tcase_add_test(t, no_handler);
    tcase_add_test(t, handler_closes_at_once);
    tcase_add_test(t, handler_never_reads);
    tcase_add_test(t, bad_socket_path);
    suite_add_tcase(s, t);
    TCase *h = tcase_create("handler");
    tcase_set_timeout(h, 60);
    tcase_add_test(h, handler_validates_the_layout);
    tcase_add_test(h, handler_needs_the_descriptor);
    tcase_add_test(h, handler_kills_the_vmm_on_error);
    tcase_add_test(h, handler_accepts_page_size_kib_alone);
    suite_add_tcase(s, h);
    return s;
}
