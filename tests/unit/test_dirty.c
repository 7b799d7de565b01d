/* Dirty page tracking and Diff memory files: ember's own bitmap (marks from guest_write and
 * the virtqueues), KVM's log joined with it by dirty_collect on a real guest, and Diff files
 * written, checked for holes and merged onto their base. */
#include "snapshot/memfile.h"
#include "suites.h"
#include "util/error.h"
#include "virtio/queue.h"
#include "virtq_fake.h"
#include "vmm/dirty.h"
#include "vmm/memory.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE GUEST_PAGE_SIZE

static bool has_bit(const uint64_t *bits, uint64_t i)
{
    return bits[i / 64] >> (i % 64) & 1;
}

static void set_bit(uint64_t *bits, uint64_t i)
{
    bits[i / 64] |= 1ULL << (i % 64);
}

/* The bitmap holds exactly the pages listed (n of them), among total. */
static void assert_pages(const uint64_t *bits, uint64_t total, const uint64_t *want, unsigned n)
{
    for (uint64_t i = 0; i < total; i++) {
        bool wanted = false;
        for (unsigned j = 0; j < n; j++)
            wanted |= want[j] == i;
        ck_assert_msg(has_bit(bits, i) == wanted, "page %llu is %s, expected %s",
                      (unsigned long long)i, has_bit(bits, i) ? "dirty" : "clean",
                      wanted ? "dirty" : "clean");
    }
}

/* ---- ember's bitmap --------------------------------------------------------- */

START_TEST(marking_off_is_a_no_op)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 1 << 20, 1ULL << 31, 1ULL << 32), 0);
    ck_assert_ptr_null(m.dirty);
    guest_memory_mark_dirty(&m, m.base, 4096);
    uint32_t v = 1;
    ck_assert_int_eq(guest_write(&m, 0x2000, &v, 4), 0);
    uint64_t out[4];
    ck_assert_int_eq(dirty_collect(-1, &m, out), -1);
    ck_assert_msg(strstr(error_get(), "tracking is off"), "%s", error_get());
    guest_memory_free(&m);
}
END_TEST

START_TEST(marking_sets_the_pages_touched)
{
    struct guest_memory m;
    /* 200 pages: a last word of 8 bits. */
    ck_assert_int_eq(guest_memory_map(&m, 200 * PAGE, 1ULL << 31, 1ULL << 32), 0);
    ck_assert_int_eq(guest_memory_track_dirty(&m), 0);
    ck_assert_uint_eq(guest_memory_bitmap_words(&m), 4);
    guest_memory_mark_dirty(&m, m.base + 3 * PAGE + 17, 1);       /* one byte: page 3 */
    guest_memory_mark_dirty(&m, m.base + 10 * PAGE - 1, 2);       /* straddles 9 and 10 */
    guest_memory_mark_dirty(&m, m.base + 62 * PAGE, 4 * PAGE);    /* 62-65, across a word */
    guest_memory_mark_dirty(&m, m.base + 120 * PAGE, 0);          /* nothing */
    guest_memory_mark_dirty(&m, m.base - 1, 2);                   /* starts before RAM */
    guest_memory_mark_dirty(&m, m.base + 200 * PAGE, 5);          /* past RAM */
    guest_memory_mark_dirty(&m, m.base + 198 * PAGE, UINT64_MAX); /* clamped: 198, 199 */
    guest_memory_mark_dirty(&m, m.base + 63 * PAGE + 5, 10);      /* set already */
    uint32_t v = 7;
    ck_assert_int_eq(guest_write(&m, 150 * PAGE + 4094, &v, 4), 0); /* 150, 151 */
    ck_assert_int_eq(guest_read(&m, 170 * PAGE, &v, 4), 0);         /* reads mark nothing */
    const uint64_t want[] = {3, 9, 10, 62, 63, 64, 65, 150, 151, 198, 199};
    assert_pages(m.dirty, 200, want, sizeof(want) / sizeof(want[0]));
    ck_assert_uint_eq(m.dirty[3] >> 8, 0); /* nothing past the last page */
    ck_assert_uint_eq(dirty_count(&m, m.dirty), sizeof(want) / sizeof(want[0]));
    guest_memory_free(&m);
    ck_assert_ptr_null(m.dirty);
}
END_TEST

/* Split ring: a chain's writable buffers when popped, the used entry and index when pushed,
 * the used flags when kicks are turned off. */
START_TEST(split_queue_marks_its_writes)
{
    struct fake_queue f;
    fake_queue_init(&f, 16);
    ck_assert_int_eq(guest_memory_track_dirty(&f.mem), 0);
    fake_set_desc(&f, 0, FAKE_DATA, 64, VIRTQ_DESC_F_NEXT, 1); /* readable */
    fake_set_desc(&f, 1, FAKE_DATA + 3 * PAGE - 8, PAGE + 16, VIRTQ_DESC_F_WRITE, 0);
    fake_publish(&f, 0);
    struct virtq q;
    ck_assert_int_eq(virtq_init(&q, &f.mem, &f.cfg, false, false), 0);
    struct virtq_chain c;
    ck_assert_int_eq(virtq_chain_alloc(&c, 16), 0);
    ck_assert_int_eq(virtq_pop(&q, &c), 1);
    uint64_t d = FAKE_DATA / PAGE;
    const uint64_t popped[] = {d + 2, d + 3, d + 4};
    assert_pages(f.mem.dirty, FAKE_MEM / PAGE, popped, 3);
    memset(f.mem.dirty, 0, guest_memory_bitmap_words(&f.mem) * 8);
    virtq_push(&q, c.head, 5);
    virtq_enable_kicks(&q, false);
    const uint64_t used[] = {FAKE_USED / PAGE};
    assert_pages(f.mem.dirty, FAKE_MEM / PAGE, used, 1);
    virtq_chain_free(&c);
    fake_queue_free(&f);
}
END_TEST

/* Packed ring: the writable buffer, the descriptor the used entry overwrites, the device's
 * event area. */
START_TEST(packed_queue_marks_its_writes)
{
    struct fake_queue f;
    fake_queue_init(&f, 16);
    ck_assert_int_eq(guest_memory_track_dirty(&f.mem), 0);
    f.cfg.packed = true;
    struct virtq_packed_desc *pd = gpa_to_hva(&f.mem, FAKE_DESC, 16);
    *pd = (struct virtq_packed_desc){FAKE_DATA + 5 * PAGE, 100, 7,
                                     VIRTQ_DESC_F_WRITE | VIRTQ_PACKED_F_AVAIL};
    struct virtq q;
    ck_assert_int_eq(virtq_init(&q, &f.mem, &f.cfg, true, false), 0);
    struct virtq_chain c;
    ck_assert_int_eq(virtq_chain_alloc(&c, 16), 0);
    ck_assert_int_eq(virtq_pop(&q, &c), 1);
    const uint64_t popped[] = {FAKE_DATA / PAGE + 5};
    assert_pages(f.mem.dirty, FAKE_MEM / PAGE, popped, 1);
    memset(f.mem.dirty, 0, guest_memory_bitmap_words(&f.mem) * 8);
    virtq_push(&q, c.head, 100);
    const uint64_t pushed[] = {FAKE_DESC / PAGE};
    assert_pages(f.mem.dirty, FAKE_MEM / PAGE, pushed, 1);
    memset(f.mem.dirty, 0, guest_memory_bitmap_words(&f.mem) * 8);
    virtq_enable_kicks(&q, true);
    const uint64_t event[] = {FAKE_USED / PAGE};
    assert_pages(f.mem.dirty, FAKE_MEM / PAGE, event, 1);
    virtq_chain_free(&c);
    fake_queue_free(&f);
}
END_TEST

/* ---- Diff memory files -------------------------------------------------------- */

#define MF_PAGES 256

/* In $TMPDIR (default /tmp): TMPDIR=/dev/shm runs the memory-file tests on tmpfs. */
static int temp_file(void)
{
    const char *dir = getenv("TMPDIR");
    char path[256];
    snprintf(path, sizeof(path), "%s/ember-dirty-test-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    return fd;
}

/* The file's data extents, in pages, as [start, end) pairs; returns how many. */
static unsigned extents(int fd, uint64_t size, uint64_t (*out)[2], unsigned max)
{
    unsigned n = 0;
    off_t pos = 0;
    for (;;) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0) {
            ck_assert_int_eq(errno, ENXIO);
            return n;
        }
        off_t hole = lseek(fd, data, SEEK_HOLE);
        ck_assert_int_gt(hole, data);
        ck_assert_uint_lt(n, max);
        out[n][0] = (uint64_t)data / PAGE;
        out[n][1] = (uint64_t)hole / PAGE;
        n++;
        if ((uint64_t)hole >= size)
            return n;
        pos = hole;
    }
}

static void assert_file_is(int fd, const uint8_t *want, uint64_t size)
{
    uint8_t *buf = malloc(size);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(pread(fd, buf, size, 0), (ssize_t)size);
    for (uint64_t i = 0; i < size / PAGE; i++)
        ck_assert_msg(!memcmp(buf + i * PAGE, want + i * PAGE, PAGE), "page %llu differs",
                      (unsigned long long)i);
    free(buf);
}

static void fill_page(uint8_t *p, unsigned seed)
{
    for (unsigned i = 0; i < PAGE; i++)
        p[i] = (uint8_t)(seed * 31 + i * 7 + 1);
}

START_TEST(diff_holds_dirty_pages_and_merges_onto_base)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, MF_PAGES * PAGE, 1ULL << 31, 1ULL << 32), 0);
    for (unsigned i = 0; i < MF_PAGES; i++) {
        if (i != 11 && i != 12 && i != 200) /* zero pages: holes in the Full file */
            fill_page(m.base + i * PAGE, i);
    }
    int base = temp_file();
    struct memfile_stats st;
    ck_assert_msg(memfile_write_full(&m, base, &st) == 0, "%s", error_get());
    ck_assert_uint_eq(st.pages_skipped, 3);

    /* The guest changes pages: new data, one page that had data now all zeros, a page that
     * was a hole (zeros) now data, pages across a bitmap word, the last one; one page is
     * dirty with the same content. */
    uint64_t bitmap[MF_PAGES / 64] = {0};
    fill_page(m.base + 5 * PAGE, 1000);
    memset(m.base + 6 * PAGE, 0, PAGE);
    fill_page(m.base + 11 * PAGE, 1001);
    fill_page(m.base + 63 * PAGE, 1002);
    fill_page(m.base + 64 * PAGE, 1003);
    fill_page(m.base + 255 * PAGE, 1004);
    const uint64_t dirty[] = {5, 6, 11, 63, 64, 100, 255};
    for (unsigned i = 0; i < sizeof(dirty) / sizeof(dirty[0]); i++)
        set_bit(bitmap, dirty[i]);

    int diff = temp_file();
    ck_assert_int_eq(pwrite(diff, "junk", 4, 3 * PAGE), 4); /* truncated away */
    ck_assert_msg(memfile_write_diff(&m, diff, bitmap, &st) == 0, "%s", error_get());
    ck_assert_uint_eq(st.pages_written, 7);
    ck_assert_uint_eq(st.zero_pages, 1);
    ck_assert_uint_eq(st.pages_skipped, MF_PAGES - 7);
    ck_assert_int_eq(lseek(diff, 0, SEEK_END), MF_PAGES * PAGE);
    /* Data exactly where the dirty pages are, the zero page 6 included. */
    uint64_t ext[16][2];
    ck_assert_uint_eq(extents(diff, MF_PAGES * PAGE, ext, 16), 5);
    const uint64_t want[5][2] = {{5, 7}, {11, 12}, {63, 65}, {100, 101}, {255, 256}};
    for (unsigned i = 0; i < 5; i++) {
        ck_assert_uint_eq(ext[i][0], want[i][0]);
        ck_assert_uint_eq(ext[i][1], want[i][1]);
    }

    ck_assert_msg(memfile_merge(base, diff) == 0, "%s", error_get());
    assert_file_is(base, m.base, MF_PAGES * PAGE);

    /* A second Diff merged after the first: the newer content wins. */
    memset(bitmap, 0, sizeof(bitmap));
    fill_page(m.base + 6 * PAGE, 2000);
    set_bit(bitmap, 6);
    int diff2 = temp_file();
    ck_assert_msg(memfile_write_diff(&m, diff2, bitmap, &st) == 0, "%s", error_get());
    ck_assert_uint_eq(st.pages_written, 1);
    ck_assert_int_eq(memfile_merge(base, diff), 0);
    ck_assert_int_eq(memfile_merge(base, diff2), 0);
    assert_file_is(base, m.base, MF_PAGES * PAGE);

    /* An empty Diff: all holes, merging changes nothing. */
    memset(bitmap, 0, sizeof(bitmap));
    ck_assert_int_eq(memfile_write_diff(&m, diff2, bitmap, &st), 0);
    ck_assert_uint_eq(st.pages_written, 0);
    ck_assert_uint_eq(extents(diff2, MF_PAGES * PAGE, ext, 16), 0);
    ck_assert_int_eq(memfile_merge(base, diff2), 0);
    assert_file_is(base, m.base, MF_PAGES * PAGE);

    close(diff2);
    close(diff);
    close(base);
    guest_memory_free(&m);
}
END_TEST

START_TEST(merge_refuses_mismatched_files)
{
    int base = temp_file(), diff = temp_file();
    ck_assert_int_eq(ftruncate(base, 8 * PAGE), 0);
    ck_assert_int_eq(ftruncate(diff, 4 * PAGE), 0);
    ck_assert_int_eq(memfile_merge(base, diff), -1);
    ck_assert_msg(strstr(error_get(), "differ in size"), "%s", error_get());
    ck_assert_int_eq(memfile_merge(base, base), -1);
    ck_assert_msg(strstr(error_get(), "same file"), "%s", error_get());
    ck_assert_int_eq(ftruncate(base, 4 * PAGE + 1), 0);
    ck_assert_int_eq(ftruncate(diff, 4 * PAGE + 1), 0);
    ck_assert_int_eq(memfile_merge(base, diff), -1);
    ck_assert_msg(strstr(error_get(), "whole pages"), "%s", error_get());
    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_eq(memfile_merge(base, dir), -1);
    ck_assert_msg(strstr(error_get(), "regular"), "%s", error_get());
    close(dir);
    close(diff);
    close(base);
}
END_TEST

/* ---- KVM's log joined with ember's -------------------------------------------- */

#define CODE_GPA  0x1000
#define OUT_PORT  0x10
#define HIGH_GPA  0x80000 /* the second region: real mode reaches it through DS */
#define HIGH_SIZE 0x40000 /* 64 pages */

/* Real-mode guest: writes bytes at 0x3000 and 0x5010, a word across 0x7fff-0x8000, bytes
 * at HIGH_GPA + 0x2fff and in the last page of the high region, then `out` and over again. */
static const uint8_t dirty_code[] = {
    0xb8, 0x00,     0x03, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0xaa,       /* ds=0x300 [0]=0xaa */
    0xb8, 0x00,     0x05, 0x8e, 0xd8, 0xc6, 0x06, 0x10, 0x00, 0xbb,       /* ds=0x500 [0x10] */
    0xb8, 0x00,     0x07, 0x8e, 0xd8, 0xc7, 0x06, 0xff, 0x0f, 0x34, 0x12, /* word at 0x7fff */
    0xb8, 0x00,     0x82, 0x8e, 0xd8, 0xc6, 0x06, 0xff, 0x0f, 0xcc,       /* 0x82fff */
    0xb8, 0x00,     0xbf, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0xdd,       /* 0xbf000 */
    0xe6, OUT_PORT,                                                       /* out 0x10, al */
    0xeb, 0xc9,                                                           /* jmp to the start */
};

/* Runs the guest to its next `out`. */
static void run_to_out(int vcpu_fd, struct kvm_run *run)
{
    ck_assert_int_eq(ioctl(vcpu_fd, KVM_RUN, 0), 0);
    ck_assert_msg(run->exit_reason == KVM_EXIT_IO && run->io.port == OUT_PORT,
                  "exit %u (port 0x%x)", run->exit_reason, run->io.port);
}

/* _i: the low region ends on a bitmap word (64 pages) or inside one (33 pages): KVM's log
 * of the high slot lands straight in the result, or shifted into it. */
START_TEST(collect_reports_guest_and_ember_writes)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        fprintf(stderr, "# %s: skipped, cannot open /dev/kvm\n", tcase_name());
        return;
    }
    uint64_t low_pages = _i ? 64 : 33;
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, low_pages * PAGE + HIGH_SIZE, low_pages * PAGE, HIGH_GPA),
                     0);
    ck_assert_uint_eq(m.nregions, 2);
    ck_assert_int_eq(guest_memory_track_dirty(&m), 0);
    memcpy(m.base + CODE_GPA, dirty_code, sizeof(dirty_code));
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    ck_assert_int_ge(vm, 0);
    ck_assert_int_eq(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL), 0);
    for (unsigned i = 0; i < m.nregions; i++) {
        struct kvm_userspace_memory_region r = {.slot = i,
                                                .flags = KVM_MEM_LOG_DIRTY_PAGES,
                                                .guest_phys_addr = m.regions[i].gpa,
                                                .memory_size = m.regions[i].size,
                                                .userspace_addr = (uintptr_t)m.regions[i].hva};
        ck_assert_int_eq(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), 0);
    }
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    ck_assert_int_ge(vcpu, 0);
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    ck_assert_int_gt(run_size, 0);
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    ck_assert_ptr_ne(run, MAP_FAILED);
    struct kvm_sregs sregs;
    ck_assert_int_eq(ioctl(vcpu, KVM_GET_SREGS, &sregs), 0);
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    ck_assert_int_eq(ioctl(vcpu, KVM_SET_SREGS, &sregs), 0);
    struct kvm_regs regs = {.rip = CODE_GPA, .rflags = 0x2};
    ck_assert_int_eq(ioctl(vcpu, KVM_SET_REGS, &regs), 0);

    uint64_t total = m.ram_size / PAGE, hi = low_pages; /* the high region's first page */
    size_t words = guest_memory_bitmap_words(&m);
    uint64_t *bits = calloc(words, sizeof(uint64_t));
    ck_assert_ptr_nonnull(bits);

    run_to_out(vcpu, run);
    /* ember's writes: one byte, and a range across the two regions' pages in the host. */
    guest_memory_mark_dirty(&m, m.base + 20 * PAGE + 100, 1);
    guest_memory_mark_dirty(&m, m.base + hi * PAGE - 10, 20);
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    const uint64_t first[] = {3, 5, 7, 8, 20, hi - 1, hi, hi + 2, hi + 63};
    assert_pages(bits, total, first, sizeof(first) / sizeof(first[0]));

    /* Both logs were cleared: nothing since. */
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    ck_assert_uint_eq(dirty_count(&m, bits), 0);

    /* KVM protects the pages again: the guest's next round is logged anew. */
    run_to_out(vcpu, run);
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    const uint64_t second[] = {3, 5, 7, 8, hi + 2, hi + 63};
    assert_pages(bits, total, second, sizeof(second) / sizeof(second[0]));

    /* A Diff that failed gives its pages back: the next collection has them again, with the
     * guest's new round. */
    guest_memory_mark_dirty(&m, m.base + 25 * PAGE, 1);
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    const uint64_t marked[] = {25};
    assert_pages(bits, total, marked, 1);
    dirty_requeue(&m, bits);
    run_to_out(vcpu, run);
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    const uint64_t requeued[] = {3, 5, 7, 8, 25, hi + 2, hi + 63};
    assert_pages(bits, total, requeued, sizeof(requeued) / sizeof(requeued[0]));

    /* A reset after a Full snapshot: collected and dropped. */
    run_to_out(vcpu, run);
    guest_memory_mark_dirty(&m, m.base + 30 * PAGE, 1);
    ck_assert_msg(dirty_reset(vm, &m) == 0, "%s", error_get());
    ck_assert_msg(dirty_collect(vm, &m, bits) == 0, "%s", error_get());
    ck_assert_uint_eq(dirty_count(&m, bits), 0);

    free(bits);
    munmap(run, (size_t)run_size);
    close(vcpu);
    close(vm);
    close(kvm);
    guest_memory_free(&m);
}
END_TEST

Suite *dirty_suite(void)
{
    Suite *s = suite_create("dirty");
    TCase *t = tcase_create("bitmap");
    tcase_add_test(t, marking_off_is_a_no_op);
    tcase_add_test(t, marking_sets_the_pages_touched);
    tcase_add_test(t, split_queue_marks_its_writes);
    tcase_add_test(t, packed_queue_marks_its_writes);
    suite_add_tcase(s, t);
    t = tcase_create("memfile");
    tcase_add_test(t, diff_holds_dirty_pages_and_merges_onto_base);
    tcase_add_test(t, merge_refuses_mismatched_files);
    suite_add_tcase(s, t);
    t = tcase_create("kvm");
    tcase_set_timeout(t, 30);
    tcase_add_loop_test(t, collect_reports_guest_and_ember_writes, 0, 2);
    suite_add_tcase(s, t);
    return s;
}
