#include "migration/channel.h"
#include "migration/migration.h"

#include "arch/x86/layout.h"
#include "snapshot/format.h"
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

static uint64_t now_us(void)
{
    return monotonic_ns() / 1000;
}

struct receiver {
    int fd;
    int tap_fd[VM_MAX_NETS]; /* what came with MIGRATION_FD, -1 where nothing */
    int vsock_fd;
    uint64_t timeout_ms;
    struct migration_stats *st;
    struct guest_memory mem;
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
    if (hello.ram_size == 0 || hello.ram_size % (1 << 20) || hello.ram_size > MAX_RAM_BYTES ||
        hello.ncpus == 0 || hello.ncpus > MAX_VCPUS || hello.local > 1)
        return error_set("migration: the source announces %llu bytes of RAM and %u vCPUs",
                         (unsigned long long)hello.ram_size, hello.ncpus);
    r->local = hello.local;
    if (!r->local &&
        guest_memory_map(&r->mem, hello.ram_size, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END) < 0)
        return -1;
    r->mem.ram_size = hello.ram_size; /* local: checked against the memfd when it comes */
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
    if (r->local || !r->mem.base || offset % GUEST_PAGE_SIZE || len % GUEST_PAGE_SIZE ||
        offset > r->mem.ram_size || len > r->mem.ram_size - offset)
        return error_set("migration: memory at offset 0x%llx, %llu bytes, outside guest RAM",
                         (unsigned long long)offset, (unsigned long long)len);
    if (migration_recv_exact(r->fd, r->mem.base + offset, (size_t)len, deadline(r)) < 0)
        return -1;
    r->st->pages_sent += len / GUEST_PAGE_SIZE;
    return 0;
}

static int recv_memfd(struct receiver *r, uint64_t length, int fd)
{
    if (fd < 0 || !r->local || r->mem.base || length != 0) {
        if (fd >= 0)
            close(fd);
        return error_set("migration: an unexpected shared memory message");
    }
    uint64_t size = r->mem.ram_size;
    return guest_memory_map_given_memfd(&r->mem, fd, size, LAYOUT_MMIO_HOLE_START,
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
    int *slot = m.kind == MIGRATION_FD_TAP && m.index < VM_MAX_NETS ? &r->tap_fd[m.index]
                : m.kind == MIGRATION_FD_VSOCK && m.index == 0      ? &r->vsock_fd
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
        if (r->tap_fd[i] >= 0)
            close(r->tap_fd[i]);
        r->tap_fd[i] = -1;
    }
    if (r->vsock_fd >= 0)
        close(r->vsock_fd);
    r->vsock_fd = -1;
}

static void reply_error(struct receiver *r, const char *why)
{
    migration_send(r->fd, MIGRATION_ERROR, why, strlen(why), NULL, 0, -1,
                   migration_now_ms() + 1000);
}

/* Receives until the state comes, then builds and runs the machine. */
static int receive(struct receiver *r, struct vm *vm, struct event_loop *loop,
                   const struct migration_receive_params *p, struct vm_config *cfg_out, int *status)
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
        if (!r->mem.base)
            return error_set("migration: the state came before guest memory");
        uint8_t *state = malloc(h.length ? (size_t)h.length : 1);
        if (!state)
            return error_set("out of memory");
        int rc = migration_recv_exact(r->fd, state, (size_t)h.length, deadline(r));
        if (rc == 0) {
            struct vm_snapshot_load_params load = p->load;
            load.ram_source = VM_RAM_GIVEN;
            load.ram_given = &r->mem;
            load.resume_vm = true;
            for (unsigned i = 0; i < VM_MAX_NETS; i++) {
                load.has_tap_fd[i] = r->tap_fd[i] >= 0;
                load.tap_fd[i] = r->tap_fd[i];
            }
            load.has_vsock_listen_fd = r->vsock_fd >= 0;
            load.vsock_listen_fd = r->vsock_fd;
            rc = vm_snapshot_restore_state(vm, loop, state, (size_t)h.length, &load, cfg_out,
                                           status);
        }
        free(state);
        return rc;
    }
}

int migration_receive_vm(struct vm *vm, struct event_loop *loop,
                         const struct migration_receive_params *p, struct vm_config *cfg_out,
                         int *status, struct migration_stats *st)
{
    memset(st, 0, sizeof(*st));
    *status = EXIT_USAGE;
    uint64_t start = now_us();
    struct migration_url url;
    if (migration_parse_url(p->url, &url) < 0)
        return -1;
    struct receiver r = {.fd = -1,
                         .vsock_fd = -1,
                         .timeout_ms = p->timeout_ms ? p->timeout_ms : DEFAULT_TIMEOUT_MS,
                         .st = st};
    for (unsigned i = 0; i < VM_MAX_NETS; i++)
        r.tap_fd[i] = -1;
    int lfd = migration_listen(&url);
    if (lfd < 0)
        return -1;
    log_info("waiting for a migration on %s", p->url);
    r.fd = migration_accept(lfd, &url, deadline(&r));
    if (r.fd < 0)
        return -1;
    int rc = recv_hello(&r);
    if (rc == 0)
        rc = migration_send(r.fd, MIGRATION_READY, NULL, 0, NULL, 0, -1, deadline(&r));
    if (rc == 0)
        rc = receive(&r, vm, loop, p, cfg_out, status);
    /* The machine holds its own copies of the descriptors handed over. */
    close_fds(&r);
    if (rc < 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s", error_get());
        reply_error(&r, why);
        close(r.fd);
        guest_memory_free(&r.mem);
        return error_set("%s", why);
    }
    /* The machine runs here: the source may end, and what it handed over is this ember's. */
    vm_vsock_own_path(vm);
    migration_send(r.fd, MIGRATION_DONE, NULL, 0, NULL, 0, -1, deadline(&r));
    close(r.fd);
    st->total_us = now_us() - start;
    st->completed = true;
    log_info("migration received: %llu pages, machine running", (unsigned long long)st->pages_sent);
    return 0;
}
