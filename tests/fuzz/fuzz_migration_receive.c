/* libFuzzer target: a live migration's destination (migration_receive_stream) fed an arbitrary
 * byte stream over a socketpair, as a hostile or broken source would send it. The guest RAM a
 * HELLO may ask for is capped at MAX_RAM (the production cap is 4 TiB); the state, once it
 * comes, is checked as far as it goes without KVM (the file, the configuration, the CPUID)
 * instead of building a machine.
 *
 * Input: [flags] [cut lo] [cut hi] stream...
 *   flags bit 0: a memfd goes along with the stream bytes from offset `cut` on (SCM_RIGHTS),
 *         as a source in local mode passes guest RAM (MEMFD) or a tap or the vsock socket
 *         (FD); bits 1-3 choose its size.
 * The whole stream is written, then the writer's end is shut, so that the receiver never
 * waits for more. Checked: every refusal says why and answers ERROR; what was accepted had
 * guest memory of the announced size, mapped and readable end to end; no descriptor leaks.
 *
 * EMBER_FUZZ_WRITE_SEEDS=DIR: writes seeds to DIR (streams as ember's source sends them, a state
 * file made with ember's writer) and exits (tests/fuzz/make_seeds.py). */
#include "migration/channel.h"
#include "migration/migration.h"
#include "snapshot/format.h"
#include "util/error.h"
#include "util/log.h"
#include "vmm/memory.h"
#include "vmm/snapshot.h"
#include "vmm/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_RAM (4ULL << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned states_parsed;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_migration_receive: %s\n", what);
    abort();
}

/* The state received: the memory must be as the HELLO announced; the state file is read as
 * vm_snapshot_restore_state reads it before anything reaches KVM. */
static int on_state(void *opaque, struct migration_received *rx, const uint8_t *state, size_t len)
{
    (void)opaque;
    struct guest_memory *mem = &rx->mem;
    /* Descriptors handed over are the receiver's to close after this; each a real one. */
    for (unsigned i = 0; i < VM_MAX_NETS; i++) {
        if (rx->tap_fd[i] >= 0 && fcntl(rx->tap_fd[i], F_GETFD) < 0)
            die("a tap descriptor handed over is not open");
    }
    if (rx->vsock_fd >= 0 && fcntl(rx->vsock_fd, F_GETFD) < 0)
        die("the vsock descriptor handed over is not open");
    if (!mem->base || mem->ram_size == 0 || mem->ram_size > MAX_RAM || mem->nregions == 0)
        die("a state accepted without guest memory of the size announced");
    volatile uint8_t sink = 0;
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct guest_region *r = &mem->regions[i];
        sink ^= r->hva[0];
        sink ^= r->hva[r->size - 1];
    }
    (void)sink;
    int rc = -1;
    struct snapshot_reader *rd = snapshot_reader_open(state, len, SNAPSHOT_FILE_MAX);
    if (rd) {
        struct vm_snapshot_machine m;
        rc = vm_snapshot_read_machine(rd, &m);
        /* As vm_snapshot_restore_state checks the vCPUs HELLO announced. */
        if (rc == 0 && m.cfg.ncpus != rx->ncpus)
            rc = error_set("the state is of a machine with %u vCPUs, %u were announced",
                           m.cfg.ncpus, rx->ncpus);
        /* As vm_create checks the memory it is given. */
        if (rc == 0 && m.cfg.memory_mib << 20 != mem->ram_size)
            rc = error_set("the memory received holds %llu bytes, not %llu MiB",
                           (unsigned long long)mem->ram_size, (unsigned long long)m.cfg.memory_mib);
        vm_snapshot_machine_free(&m, false);
        snapshot_reader_free(rd);
        states_parsed++;
    }
    if (rc < 0) {
        if (!error_get()[0])
            die("a state refused without a reason");
        return -1; /* the memory stays the receiver's, which frees it */
    }
    guest_memory_free(mem); /* taken over, as the machine would */
    return 0;
}

static int make_memfd(uint8_t sel)
{
    static const off_t sizes[] = {1 << 20, 2 << 20,          4 << 20, 0,
                                  4096,    (1 << 20) + 4096, 8 << 20, -1};
    if (sizes[sel & 7] < 0)
        return open("/dev/null", O_RDWR | O_CLOEXEC); /* not a regular file */
    /* Sealed against shrinking as ember's own shared RAM is (the destination takes no
     * other), except for one size choice, which the destination must refuse. */
    int fd = memfd_create("fuzz-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, sizes[sel & 7]) < 0 ||
        ((sel & 8) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0))
        die("memfd");
    return fd;
}

/* All of buf, with fd (>= 0) going along with its first byte. */
static void write_all(int s, const uint8_t *buf, size_t len, int fd)
{
    while (len > 0 || fd >= 0) {
        union {
            struct cmsghdr hdr;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        uint8_t zero = 0;
        struct iovec iov = {len ? (void *)buf : &zero, len ? len : 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fd >= 0) {
            memset(&ctl, 0, sizeof(ctl));
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof(ctl.buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        ssize_t n = sendmsg(s, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* the socket is full: the rest is cut off, as a source that stops */
        }
        fd = -1;
        if (!len)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

static int lowest_free_fd(void)
{
    int fd = dup(0);
    if (fd < 0)
        die("dup");
    close(fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3 || size > (1 << 20))
        return 0;
    uint8_t flags = data[0];
    size_t cut = (size_t)data[1] | (size_t)data[2] << 8;
    data += 3;
    size -= 3;
    if (cut > size)
        cut = size;
    int before = lowest_free_fd();

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    int big = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    /* The receiver's end is non-blocking, as migration_accept makes it. */
    if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0)
        die("fcntl");
    if (flags & 1) {
        write_all(sv[1], data, cut, -1);
        int mfd = make_memfd(flags >> 1);
        write_all(sv[1], data + cut, size - cut, mfd);
        close(mfd);
    } else {
        write_all(sv[1], data, size, -1);
    }
    shutdown(sv[1], SHUT_WR);

    struct migration_stats st;
    memset(&st, 0, sizeof(st));
    struct migration_receive_stream_params p = {
        .timeout_ms = 2000, .max_ram = MAX_RAM, .on_state = on_state, .opaque = NULL};
    error_clear();
    int rc = migration_receive_stream(sv[0], &p, &st);
    if (rc < 0 && !error_get()[0])
        die("a refusal without a reason");
    if (getenv("FUZZ_MIGRATION_TRACE"))
        fprintf(stderr, "received: %s (%llu pages, %u states read)\n", rc == 0 ? "ok" : error_get(),
                (unsigned long long)st.pages_sent, states_parsed);
    if (st.pages_sent * 4096 > size)
        die("more pages counted than came");

    /* The source hears the outcome: READY first if the HELLO was good, then DONE or ERROR. */
    uint8_t reply[4096];
    ssize_t n = recv(sv[1], reply, sizeof(reply), MSG_DONTWAIT);
    if (n < 16)
        die("the source heard nothing");
    close(sv[0]);
    close(sv[1]);
    if (lowest_free_fd() != before)
        die("a descriptor leaked");
    return 0;
}

/* ---- seeds: streams as ember's source sends them -------------------------------------------- */

struct stream {
    uint8_t *buf;
    size_t len;
};

static void append(struct stream *s, const void *p, size_t n)
{
    if (!n)
        return;
    s->buf = realloc(s->buf, s->len + n);
    if (!s->buf)
        die("out of memory");
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void message(struct stream *s, uint32_t type, const void *a, size_t alen, const void *b,
                    size_t blen)
{
    struct migration_header h = {
        .magic = MIGRATION_MAGIC, .type = type, .length = (uint64_t)alen + blen};
    append(s, &h, sizeof(h));
    append(s, a, alen);
    append(s, b, blen);
}

static void hello(struct stream *s, uint32_t local)
{
    struct migration_hello m = {
        .version = MIGRATION_VERSION, .ncpus = 1, .ram_size = MAX_RAM, .local = local};
    message(s, MIGRATION_HELLO, &m, sizeof(m), NULL, 0);
}

/* A state file for a 4 MiB machine with one vCPU, as far as vm_snapshot_read_machine reads. */
static uint8_t *state_file(size_t *len)
{
    struct vm_config cfg;
    vm_config_defaults(&cfg);
    cfg.memory_mib = MAX_RAM >> 20;
    cfg.ncpus = 1;
    cfg.kernel_path = "/boot/vmlinux";
    struct snapshot_writer *w = snapshot_writer_new();
    snapshot_begin_section(w, "meta");
    snapshot_put_string(w, "ember fuzz seed");
    snapshot_put_u8(w, 0);
    snapshot_put_u64(w, MAX_RAM);
    snapshot_put_u32(w, 1);
    snapshot_put_u64(w, 1700000000);
    snapshot_begin_section(w, "config");
    vm_snapshot_put_config(w, &cfg);
    snapshot_begin_section(w, "vcpu.0");
    snapshot_put_u8(w, 1);
    snapshot_put_u32(w, 4096);
    snapshot_put_u32(w, 0);
    snapshot_put_bytes(w, NULL, 0);
    uint32_t entries[10] = {0}; /* one kvm_cpuid_entry2: 40 bytes */
    snapshot_put_u32(w, 1);
    snapshot_put_bytes(w, entries, sizeof(entries));
    uint8_t *out;
    if (snapshot_writer_finish(w, &out, len) < 0)
        die("seed state");
    snapshot_writer_free(w);
    return out;
}

static void write_seed(const char *dir, const char *name, uint8_t flags, uint16_t cut,
                       const struct stream *s)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    uint8_t head[3] = {flags, (uint8_t)cut, (uint8_t)(cut >> 8)};
    if (!f || fwrite(head, 1, 3, f) != 3 || fwrite(s->buf, 1, s->len, f) != s->len ||
        fclose(f) != 0)
        die("cannot write a seed");
}

static void write_seeds(const char *dir)
{
    size_t state_len;
    uint8_t *state = state_file(&state_len);
    static uint8_t pages[3 * 4096];
    for (size_t i = 0; i < sizeof(pages); i++)
        pages[i] = (uint8_t)(i * 7);

    struct stream s = {0};
    hello(&s, 0);
    uint64_t offset = 0;
    message(&s, MIGRATION_MEMORY, &offset, sizeof(offset), pages, 4096);
    offset = 1 << 20;
    message(&s, MIGRATION_MEMORY, &offset, sizeof(offset), pages, sizeof(pages));
    message(&s, MIGRATION_STATE, state, state_len, NULL, 0);
    write_seed(dir, "copy", 0, 0, &s);
    s.len = 0;

    /* Local mode: guest RAM's memfd (4 MiB, size choice 2) along with the MEMFD message. */
    hello(&s, 1);
    uint16_t cut = (uint16_t)s.len;
    message(&s, MIGRATION_MEMFD, NULL, 0, NULL, 0);
    message(&s, MIGRATION_STATE, state, state_len, NULL, 0);
    write_seed(dir, "local", 1 | 2 << 1, cut, &s);
    s.len = 0;

    /* A tap handed over (a memfd stands for it) before the memory and the state. */
    hello(&s, 0);
    cut = (uint16_t)s.len;
    struct migration_fd_msg fdm = {.kind = MIGRATION_FD_TAP, .index = 0};
    message(&s, MIGRATION_FD, &fdm, sizeof(fdm), NULL, 0);
    offset = 0;
    message(&s, MIGRATION_MEMORY, &offset, sizeof(offset), pages, 4096);
    message(&s, MIGRATION_STATE, state, state_len, NULL, 0);
    write_seed(dir, "tap-fd", 1, cut, &s);
    s.len = 0;

    hello(&s, 0);
    const char why[] = "the source gave up";
    message(&s, MIGRATION_ERROR, why, strlen(why), NULL, 0);
    write_seed(dir, "error", 0, 0, &s);
    free(s.buf);
    free(state);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* The refusals are logged nowhere: each input would print its reason. */
    log_set_level(LOG_OFF);
    const char *dir = getenv("EMBER_FUZZ_WRITE_SEEDS");
    if (dir) {
        write_seeds(dir);
        exit(0);
    }
    return 0;
}
