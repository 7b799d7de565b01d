#include "migration/channel.h"
#include "migration/migration.h"

#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/ratelimit.h"
#include "vmm/devices.h"
#include "vmm/dirty.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_DOWNTIME_MS 300
#define DEFAULT_TIMEOUT_MS  120000
#define DEFAULT_MAX_ROUNDS  30

struct sender {
    struct vm *vm;
    int fd;
    uint64_t deadline_ms;
    struct migration_stats *st;
    uint64_t *bitmap;
    size_t words;
};

/* Sends pages [first, first + n) of RAM, in chunks. */
static int send_run(struct sender *s, uint64_t first, uint64_t n)
{
    const uint64_t per_chunk = MIGRATION_CHUNK / GUEST_PAGE_SIZE;
    while (n) {
        uint64_t k = n < per_chunk ? n : per_chunk;
        uint64_t offset = first * GUEST_PAGE_SIZE;
        if (migration_send(s->fd, MIGRATION_MEMORY, &offset, sizeof(offset),
                           s->vm->mem.base + offset, k * GUEST_PAGE_SIZE, -1, s->deadline_ms) < 0)
            return -1;
        s->st->pages_sent += k;
        s->st->bytes_sent += sizeof(struct migration_header) + 8 + k * GUEST_PAGE_SIZE;
        first += k;
        n -= k;
    }
    return 0;
}

/* Sends the pages set in the bitmap (or, with all, every page that is not zero). */
static int send_pages(struct sender *s, bool all)
{
    uint64_t pages = s->vm->mem.ram_size / GUEST_PAGE_SIZE;
    uint64_t run_start = 0, run_len = 0;
    for (uint64_t i = 0; i < pages; i++) {
        bool send = all ? !guest_page_is_zero(s->vm->mem.base + i * GUEST_PAGE_SIZE)
                        : (s->bitmap[i / 64] >> (i % 64)) & 1;
        if (send) {
            if (!run_len)
                run_start = i;
            run_len++;
            continue;
        }
        if (run_len && send_run(s, run_start, run_len) < 0)
            return -1;
        run_len = 0;
    }
    return run_len ? send_run(s, run_start, run_len) : 0;
}

static int wait_reply(struct sender *s, uint32_t want, const char *what)
{
    struct migration_header h;
    if (migration_recv_header(s->fd, &h, NULL, s->deadline_ms) < 0)
        return error_prefix("waiting for the destination %s", what);
    if (h.type == MIGRATION_ERROR) {
        char why[512];
        if (migration_recv_error(s->fd, h.length, why, sizeof(why), s->deadline_ms) < 0)
            return -1;
        return error_set("the destination refused the migration: %s", why);
    }
    if (h.type != want || h.length != 0)
        return error_set("the destination answered message %u (%llu bytes) %s", h.type,
                         (unsigned long long)h.length, what);
    return 0;
}

/* Pre-copy: everything once, then what the guest dirtied, until what is left is small. */
static int precopy(struct sender *s, const struct migration_send_params *p)
{
    struct guest_memory *mem = &s->vm->mem;
    uint64_t downtime_ms = p->downtime_ms ? p->downtime_ms : DEFAULT_DOWNTIME_MS;
    unsigned max_rounds = p->max_rounds ? p->max_rounds : DEFAULT_MAX_ROUNDS;
    bool all = true;
    for (;;) {
        uint64_t start = monotonic_us();
        uint64_t before = s->st->bytes_sent;
        if (send_pages(s, all) < 0)
            return -1;
        all = false;
        s->st->rounds++;
        uint64_t took = monotonic_us() - start;
        uint64_t bytes = s->st->bytes_sent - before;
        if (took > 0 && bytes > 0)
            s->st->bandwidth_bps = bytes * 1000000ULL / took;
        if (dirty_collect(s->vm->vm_fd, mem, s->bitmap) < 0)
            return -1;
        s->st->last_dirty_pages = dirty_count(mem, s->bitmap);
        if (p->progress)
            p->progress(p->opaque, s->st);
        uint64_t left = s->st->last_dirty_pages * GUEST_PAGE_SIZE;
        uint64_t bw = s->st->bandwidth_bps ? s->st->bandwidth_bps : 1;
        if (left * 1000 / bw <= downtime_ms || s->st->rounds >= max_rounds)
            return 0;
        if (migration_now_ms() >= s->deadline_ms)
            return error_set("migration: timed out after %u rounds (%llu pages still dirty)",
                             s->st->rounds, (unsigned long long)s->st->last_dirty_pages);
    }
}

/* On one host (a unix socket): the taps and the vsock socket go along, so that the
 * destination takes them over instead of finding them held here. */
static int send_fds(struct sender *s)
{
    struct vm *vm = s->vm;
    for (unsigned i = 0; i < vm->cfg.nnets; i++) {
        int fd = vm_net_tap_fd(vm, i);
        struct migration_fd_msg m = {.kind = MIGRATION_FD_TAP, .index = i};
        if (fd >= 0 &&
            migration_send(s->fd, MIGRATION_FD, &m, sizeof(m), NULL, 0, fd, s->deadline_ms) < 0)
            return -1;
    }
    int fd = vm_vsock_listen_fd(vm);
    struct migration_fd_msg m = {.kind = MIGRATION_FD_VSOCK};
    if (fd >= 0 &&
        migration_send(s->fd, MIGRATION_FD, &m, sizeof(m), NULL, 0, fd, s->deadline_ms) < 0)
        return -1;
    return 0;
}

/* With the guest paused and its devices frozen: the last pages and the state. */
static int stop_and_copy(struct sender *s, bool local, bool same_host)
{
    struct vm *vm = s->vm;
    if (!local) {
        uint64_t *more = calloc(s->words, sizeof(*more));
        if (!more)
            return error_set("out of memory");
        int r = dirty_collect(vm->vm_fd, &vm->mem, more);
        /* The pages the last pass found are still to go, with those dirtied since. */
        for (size_t i = 0; i < s->words; i++)
            s->bitmap[i] |= more[i];
        free(more);
        if (r < 0 || send_pages(s, false) < 0)
            return -1;
    }
    uint8_t *state = NULL;
    size_t len = 0;
    if (vm_snapshot_save_state(vm, VM_SNAPSHOT_FULL, &state, &len) < 0)
        return -1;
    /* The destination opens the drives when it builds the machine: on this host it would
     * find them locked. Taken back if the migration fails. */
    int r = same_host ? send_fds(s) : 0;
    if (r == 0)
        r = vm_set_drive_locks(vm, false);
    if (r == 0)
        r = migration_send(s->fd, MIGRATION_STATE, state, len, NULL, 0, -1, s->deadline_ms);
    free(state);
    if (r == 0) {
        s->st->bytes_sent += sizeof(struct migration_header) + len;
        r = wait_reply(s, MIGRATION_DONE, "to run the machine");
    }
    if (r < 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s", error_get());
        if (vm_set_drive_locks(vm, true) < 0)
            log_error("after a failed migration: %s", error_get());
        return error_set("%s", why);
    }
    return 0;
}

int migration_send_vm(struct vm *vm, const struct migration_send_params *p,
                      struct migration_stats *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t start = monotonic_us();
    if (!vm->started || vm_is_stopping(vm))
        return error_set("the machine is not running");
    if (vm->cfg.ram_source == VM_RAM_UFFD)
        return error_set("a machine whose memory a page-fault handler serves cannot migrate");
    const char *vhu = vm_vhost_user_device(vm);
    if (vhu)
        return error_set("a machine with a vhost-user device (%s) cannot migrate yet: its "
                         "back-end's writes to guest memory are not logged and its state is "
                         "not ember's to move",
                         vhu);
    if (p->local && !vm->mem.has_memfd)
        return error_set("local migration hands guest memory over and needs it shared: start "
                         "the machine with --memory SIZE,shared=on");
    struct migration_url url;
    if (migration_parse_url(p->url, &url) < 0)
        return -1;
    if (p->local && url.tcp)
        return error_set("local migration passes guest memory over a unix socket, not TCP");
    struct sender s = {
        .vm = vm,
        .fd = -1,
        .deadline_ms = migration_now_ms() + (p->timeout_ms ? p->timeout_ms : DEFAULT_TIMEOUT_MS),
        .st = st,
        .words = (size_t)((vm->mem.ram_size / GUEST_PAGE_SIZE + 63) / 64),
    };
    bool tracking_was_on = vm->mem.dirty != NULL, logging_on = false;
    bool we_paused = false, frozen = false;
    int r = -1;
    s.bitmap = calloc(s.words, sizeof(*s.bitmap));
    if (!s.bitmap) {
        error_set("out of memory");
        goto fail;
    }
    s.fd = migration_connect(&url, s.deadline_ms);
    if (s.fd < 0)
        goto fail;
    struct migration_hello hello = {.version = MIGRATION_VERSION,
                                    .ncpus = vm->ncpus,
                                    .ram_size = vm->mem.ram_size,
                                    .local = p->local};
    if (migration_send(s.fd, MIGRATION_HELLO, &hello, sizeof(hello), NULL, 0, -1, s.deadline_ms) <
            0 ||
        wait_reply(&s, MIGRATION_READY, "to get ready") < 0)
        goto fail;
    if (p->local) {
        if (migration_send(s.fd, MIGRATION_MEMFD, NULL, 0, NULL, 0, vm->mem.memfd, s.deadline_ms) <
            0)
            goto fail;
    } else {
        /* Both logs on, then emptied: the first pass copies everything after this. */
        if (!tracking_was_on && guest_memory_track_dirty(&vm->mem) < 0)
            goto fail;
        if (!vm->cfg.track_dirty_pages && vm_set_dirty_logging(vm, true) < 0)
            goto fail;
        logging_on = true;
        if (dirty_reset(vm->vm_fd, &vm->mem) < 0 || precopy(&s, p) < 0)
            goto fail;
    }
    uint64_t paused_at = monotonic_us();
    if (!vm_is_paused(vm)) {
        if (vm_pause(vm) < 0)
            goto fail;
        we_paused = true;
    }
    if (vm_snapshot_freeze_devices(vm) < 0)
        goto fail;
    frozen = true;
    if (stop_and_copy(&s, p->local, !url.tcp) < 0)
        goto fail;
    st->downtime_us = monotonic_us() - paused_at;
    st->total_us = monotonic_us() - start;
    st->completed = true;
    close(s.fd);
    free(s.bitmap);
    /* The machine runs elsewhere now: nothing here may touch its memory or devices again
     * (their I/O threads stay held until ember exits). */
    vm->migrated = true;
    if (p->progress)
        p->progress(p->opaque, st);
    log_info("migrated to %s: %u rounds, %llu pages, %llu ms in all, guest stopped for %llu us",
             p->url, st->rounds, (unsigned long long)st->pages_sent,
             (unsigned long long)(st->total_us / 1000), (unsigned long long)st->downtime_us);
    vm_request_stop(vm, 0);
    return 0;
fail:;
    char why[512];
    snprintf(why, sizeof(why), "%s", error_get());
    if (s.fd >= 0) {
        /* Best effort: tell the destination why, so that it gives up at once. */
        migration_send(s.fd, MIGRATION_ERROR, why, strlen(why), NULL, 0, -1,
                       migration_now_ms() + 1000);
        close(s.fd);
    }
    if (frozen)
        vm_snapshot_thaw_devices(vm);
    if (we_paused)
        vm_resume(vm);
    if (logging_on && !vm->cfg.track_dirty_pages)
        vm_set_dirty_logging(vm, false);
    free(s.bitmap);
    st->total_us = monotonic_us() - start;
    (void)r;
    return error_set("%s; the machine keeps running here", why);
}
