#include "migration/channel.h"
#include "migration/migration.h"

#include "arch/x86/layout.h"
#include "snapshot/format.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"
#include "vmm/devices.h"
#include "vmm/exit_status.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_MS 120000
/* What a HELLO may ask for: guest RAM a whole number of pages up to 4 TiB, vCPUs KVM counts. */
#define MAX_RAM_BYTES (4ULL << 40)
#define MAX_VCPUS     255

struct receiver {
    int fd;
    struct migration_received rx; /* guest memory, descriptors handed over */
    uint64_t timeout_ms;
    uint64_t max_ram;
    struct migration_stats *st;
    bool local;
};

static uint64_t deadline(const struct receiver *r)
{
    return migration_now_ms() + r->timeout_ms;
}

static int recv_hello(struct receiver *r)
{
    struct migration_header h;
    struct migration_hello hello;
    if (migration_recv_header(r->fd, &h, NULL, deadline(r)) < 0)
        return -1;
    if (h.type != MIGRATION_HELLO || h.length != sizeof(hello))
        return error_set("migration: the source began with message %u of %llu bytes, not HELLO",
                         h.type, (unsigned long long)h.length);
    if (migration_recv_exact(r->fd, &hello, sizeof(hello), deadline(r)) < 0)
        return -1;
    if (hello.version != MIGRATION_VERSION)
        return error_set("migration: the source speaks version %u of the protocol, this ember %u",
                         hello.version, MIGRATION_VERSION);
    if (hello.ram_size == 0 || hello.ram_size % (1 << 20) || hello.ram_size > r->max_ram ||
        hello.ncpus == 0 || hello.ncpus > MAX_VCPUS || hello.local > 1)
        return error_set("migration: the source announces %llu bytes of RAM and %u vCPUs",
                         (unsigned long long)hello.ram_size, hello.ncpus);
    r->local = hello.local;
    r->rx.ncpus = hello.ncpus;
    if (!r->local && guest_memory_map(&r->rx.mem, hello.ram_size, LAYOUT_MMIO_HOLE_START,
                                      LAYOUT_MMIO_HOLE_END) < 0)
        return -1;
    r->rx.mem.ram_size = hello.ram_size; /* local: checked against the memfd when it comes */
    return 0;
}

static int recv_memory(struct receiver *r, uint64_t length)
{
    uint64_t offset;
    if (length < sizeof(offset) || length - sizeof(offset) > MIGRATION_CHUNK)
        return error_set("migration: a memory message of %llu bytes", (unsigned long long)length);
    if (migration_recv_exact(r->fd, &offset, sizeof(offset), deadline(r)) < 0)
        return -1;
    uint64_t len = length - sizeof(offset);
    if (r->local || !r->rx.mem.base || offset % GUEST_PAGE_SIZE || len % GUEST_PAGE_SIZE ||
        offset > r->rx.mem.ram_size || len > r->rx.mem.ram_size - offset)
        return error_set("migration: memory at offset 0x%llx, %llu bytes, outside guest RAM",
                         (unsigned long long)offset, (unsigned long long)len);
    if (migration_recv_exact(r->fd, r->rx.mem.base + offset, (size_t)len, deadline(r)) < 0)
        return -1;
    r->st->pages_sent += len / GUEST_PAGE_SIZE;
    return 0;
}

static int recv_memfd(struct receiver *r, uint64_t length, int fd)
{
    if (fd < 0 || !r->local || r->rx.mem.base || length != 0) {
        if (fd >= 0)
            close(fd);
        return error_set("migration: an unexpected shared memory message");
    }
    uint64_t size = r->rx.mem.ram_size;
    return guest_memory_map_given_memfd(&r->rx.mem, fd, size, LAYOUT_MMIO_HOLE_START,
                                        LAYOUT_MMIO_HOLE_END);
}

static int recv_fd_msg(struct receiver *r, uint64_t length, int fd)
{
    struct migration_fd_msg m;
    if (fd < 0 || length != sizeof(m)) {
        if (fd >= 0)
            close(fd);
        return error_set("migration: a descriptor message of %llu bytes%s",
                         (unsigned long long)length, fd < 0 ? " without its descriptor" : "");
    }
    if (migration_recv_exact(r->fd, &m, sizeof(m), deadline(r)) < 0) {
        close(fd);
        return -1;
    }
    int *slot = m.kind == MIGRATION_FD_TAP && m.index < VM_MAX_NETS ? &r->rx.tap_fd[m.index]
                : m.kind == MIGRATION_FD_VSOCK && m.index == 0      ? &r->rx.vsock_fd
                                                                    : NULL;
    if (!slot || *slot >= 0) {
        close(fd);
        return error_set("migration: descriptor of kind %u, index %u %s", m.kind, m.index,
                         slot ? "given twice" : "unknown");
    }
    *slot = fd;
    return 0;
}

static void close_fds(struct receiver *r)
{
    for (unsigned i = 0; i < VM_MAX_NETS; i++) {
        if (r->rx.tap_fd[i] >= 0)
            close(r->rx.tap_fd[i]);
        r->rx.tap_fd[i] = -1;
    }
    if (r->rx.vsock_fd >= 0)
        close(r->rx.vsock_fd);
    r->rx.vsock_fd = -1;
}

static void reply_error(struct receiver *r, const char *why)
{
    migration_send(r->fd, MIGRATION_ERROR, why, strlen(why), NULL, 0, -1,
                   migration_now_ms() + 1000);
}

/* Receives until the state comes, then hands it over. */
static int receive(struct receiver *r, const struct migration_receive_stream_params *p)
{
    for (;;) {
        struct migration_header h;
        int fd = -1;
        if (migration_recv_header(r->fd, &h, &fd, deadline(r)) < 0)
            return -1;
        if (h.type == MIGRATION_MEMFD) {
            if (recv_memfd(r, h.length, fd) < 0)
                return -1;
            continue;
        }
        if (h.type == MIGRATION_FD) {
            if (recv_fd_msg(r, h.length, fd) < 0)
                return -1;
            continue;
        }
        if (fd >= 0)
            close(fd);
        if (h.type == MIGRATION_MEMORY) {
            if (recv_memory(r, h.length) < 0)
                return -1;
            continue;
        }
        if (h.type == MIGRATION_ERROR) {
            char why[512];
            if (migration_recv_error(r->fd, h.length, why, sizeof(why), deadline(r)) < 0)
                return -1;
            return error_set("the source gave the migration up: %s", why);
        }
        if (h.type != MIGRATION_STATE)
            return error_set("migration: unexpected message %u", h.type);
        if (h.length > SNAPSHOT_FILE_MAX)
            return error_set("migration: a state of %llu bytes (at most %u)",
                             (unsigned long long)h.length, SNAPSHOT_FILE_MAX);
        if (!r->rx.mem.base)
            return error_set("migration: the state came before guest memory");
        uint8_t *state = malloc(h.length ? (size_t)h.length : 1);
        if (!state)
            return error_set("out of memory");
        int rc = migration_recv_exact(r->fd, state, (size_t)h.length, deadline(r));
        if (rc == 0)
            rc = p->on_state(p->opaque, &r->rx, state, (size_t)h.length);
        free(state);
        return rc;
    }
}

int migration_receive_stream(int fd, const struct migration_receive_stream_params *p,
                             struct migration_stats *st)
{
    struct receiver r = {.fd = fd, .timeout_ms = p->timeout_ms, .max_ram = p->max_ram, .st = st};
    r.rx.vsock_fd = -1;
    for (unsigned i = 0; i < VM_MAX_NETS; i++)
        r.rx.tap_fd[i] = -1;
    int rc = recv_hello(&r);
    if (rc == 0)
        rc = migration_send(r.fd, MIGRATION_READY, NULL, 0, NULL, 0, -1, deadline(&r));
    if (rc == 0)
        rc = receive(&r, p);
    /* The machine holds its own copies of the descriptors handed over. */
    close_fds(&r);
    if (rc < 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s", error_get());
        reply_error(&r, why);
        guest_memory_free(&r.rx.mem);
        return error_set("%s", why);
    }
    /* The machine runs here: the source may end. */
    migration_send(r.fd, MIGRATION_DONE, NULL, 0, NULL, 0, -1, deadline(&r));
    return 0;
}

struct build_machine {
    struct vm *vm;
    struct event_loop *loop;
    const struct migration_receive_params *p;
    struct vm_config *cfg_out;
    int *status;
};

/* The state received: the machine built on the memory and descriptors received, and run. */
static int build_machine(void *opaque, struct migration_received *rx, const uint8_t *state,
                         size_t len)
{
    struct build_machine *b = opaque;
    struct vm_snapshot_load_params load = b->p->load;
    load.ram_source = VM_RAM_GIVEN;
    load.ram_given = &rx->mem;
    load.resume_vm = true;
    load.expect_ncpus = rx->ncpus;
    for (unsigned i = 0; i < VM_MAX_NETS; i++) {
        load.has_tap_fd[i] = rx->tap_fd[i] >= 0;
        load.tap_fd[i] = rx->tap_fd[i];
    }
    load.has_vsock_listen_fd = rx->vsock_fd >= 0;
    load.vsock_listen_fd = rx->vsock_fd;
    if (vm_snapshot_restore_state(b->vm, b->loop, state, len, &load, b->cfg_out, b->status) < 0)
        return -1;
    /* What the source handed over is this ember's now (before DONE lets the source end). */
    vm_vsock_own_path(b->vm);
    return 0;
}

int migration_receive_vm(struct vm *vm, struct event_loop *loop,
                         const struct migration_receive_params *p, struct vm_config *cfg_out,
                         int *status, struct migration_stats *st)
{
    memset(st, 0, sizeof(*st));
    *status = EXIT_USAGE;
    uint64_t start = monotonic_us();
    struct migration_url url;
    if (migration_parse_url(p->url, &url) < 0)
        return -1;
    uint64_t timeout_ms = p->timeout_ms ? p->timeout_ms : DEFAULT_TIMEOUT_MS;
    int lfd = migration_listen(&url);
    if (lfd < 0)
        return -1;
    log_info("waiting for a migration on %s", p->url);
    int fd = migration_accept(lfd, &url, migration_now_ms() + timeout_ms);
    if (fd < 0)
        return -1;
    struct build_machine b = {vm, loop, p, cfg_out, status};
    struct migration_receive_stream_params sp = {.timeout_ms = timeout_ms,
                                                 .max_ram = MAX_RAM_BYTES,
                                                 .on_state = build_machine,
                                                 .opaque = &b};
    int rc = migration_receive_stream(fd, &sp, st);
    close(fd);
    if (rc < 0)
        return -1;
    st->total_us = monotonic_us() - start;
    st->completed = true;
    log_info("migration received: %llu pages, machine running", (unsigned long long)st->pages_sent);
    return 0;
}
