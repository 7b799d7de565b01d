#include "suites.h"
#include "util/error.h"
#include "virtq_fake.h"

#include <stdlib.h>

static struct fake_queue f;
static struct virtq q;
static struct virtq_chain chain;

static void setup(void)
{
    fake_queue_init(&f, 16);
    ck_assert_int_eq(virtq_init(&q, &f.mem, &f.cfg, false, true), 0);
    ck_assert_int_eq(virtq_chain_alloc(&chain, 16), 0);
}

static void teardown(void)
{
    virtq_chain_free(&chain);
    fake_queue_free(&f);
}

static void expect_violation(const char *needle)
{
    ck_assert_int_eq(virtq_pop(&q, &chain), -1);
    ck_assert(q.broken);
    ck_assert_msg(strstr(q.error, needle), "error '%s' lacks '%s'", q.error, needle);
    /* A broken queue stays broken. */
    ck_assert_int_eq(virtq_pop(&q, &chain), -1);
}

START_TEST(pop_reads_chain_in_order)
{
    fake_set_desc(&f, 3, FAKE_DATA, 16, VIRTQ_DESC_F_NEXT, 7);
    fake_set_desc(&f, 7, FAKE_DATA + 0x1000, 100, VIRTQ_DESC_F_NEXT, 1);
    fake_set_desc(&f, 1, FAKE_DATA + 0x2000, 1, VIRTQ_DESC_F_WRITE, 0);
    ck_assert_int_eq(virtq_pop(&q, &chain), 0); /* nothing yet */
    fake_publish(&f, 3);
    ck_assert(virtq_has_avail(&q));
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.head, 3);
    ck_assert_uint_eq(chain.nout, 2);
    ck_assert_uint_eq(chain.nin, 1);
    ck_assert_uint_eq(chain.out_len, 116);
    ck_assert_uint_eq(chain.in_len, 1);
    ck_assert_ptr_eq(chain.bufs[0].hva, fake_ptr(&f, FAKE_DATA, 16));
    ck_assert_ptr_eq(chain.bufs[2].hva, fake_ptr(&f, FAKE_DATA + 0x2000, 1));
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
    /* Copy helpers span buffers. */
    memset(fake_ptr(&f, FAKE_DATA, 16), 'a', 16);
    memset(fake_ptr(&f, FAKE_DATA + 0x1000, 100), 'b', 100);
    char buf[20];
    ck_assert_uint_eq(virtq_chain_read(&chain, 12, buf, 8), 8);
    ck_assert_mem_eq(buf, "aaaabbbb", 8);
    ck_assert_uint_eq(virtq_chain_read(&chain, 110, buf, 20), 6);
    ck_assert_uint_eq(virtq_chain_write(&chain, 0, "xy", 2), 1);
    ck_assert_uint_eq(*fake_ptr(&f, FAKE_DATA + 0x2000, 1), 'x');
}
END_TEST

START_TEST(push_updates_used_ring)
{
    fake_set_desc(&f, 0, FAKE_DATA, 8, 0, 0);
    fake_publish(&f, 0);
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    virtq_push(&q, chain.head, 42);
    struct virtq_used *u = fake_used(&f);
    ck_assert_uint_eq(u->idx, 1);
    ck_assert_uint_eq(u->ring[0].id, 0);
    ck_assert_uint_eq(u->ring[0].len, 42);
}
END_TEST

START_TEST(indirect_chain)
{
    struct virtq_desc *table = (void *)fake_ptr(&f, FAKE_INDIRECT, 48);
    table[0] = (struct virtq_desc){FAKE_DATA, 16, VIRTQ_DESC_F_NEXT, 2};
    table[2] =
        (struct virtq_desc){FAKE_DATA + 0x100, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1};
    table[1] = (struct virtq_desc){FAKE_DATA + 0x400, 1, VIRTQ_DESC_F_WRITE, 0};
    fake_set_desc(&f, 5, FAKE_INDIRECT, 48, VIRTQ_DESC_F_INDIRECT, 0);
    fake_publish(&f, 5);
    ck_assert_int_eq(virtq_pop(&q, &chain), 1);
    ck_assert_uint_eq(chain.head, 5);
    ck_assert_uint_eq(chain.nout, 1);
    ck_assert_uint_eq(chain.nin, 2);
    ck_assert_uint_eq(chain.in_len, 513);
}
END_TEST

START_TEST(loop_is_caught)
{
    fake_set_desc(&f, 0, FAKE_DATA, 8, VIRTQ_DESC_F_NEXT, 1);
    fake_set_desc(&f, 1, FAKE_DATA, 8, VIRTQ_DESC_F_NEXT, 0);
    fake_publish(&f, 0);
    expect_violation("longer than the queue");
}
END_TEST

START_TEST(self_loop_of_zero_length_is_caught)
{
    /* Zero-length buffers still count towards the chain limit. */
    fake_set_desc(&f, 4, FAKE_DATA, 0, VIRTQ_DESC_F_NEXT, 4);
    fake_publish(&f, 4);
    expect_violation("longer than the queue");
}
END_TEST

START_TEST(next_out_of_range)
{
    fake_set_desc(&f, 0, FAKE_DATA, 8, VIRTQ_DESC_F_NEXT, 16);
    fake_publish(&f, 0);
    expect_violation("next index 16");
}
END_TEST

START_TEST(head_out_of_range)
{
    fake_publish(&f, 99);
    expect_violation("descriptor 99");
}
END_TEST

START_TEST(avail_index_jump)
{
    struct virtq_avail *a = fake_avail(&f);
    __atomic_store_n(&a->idx, 17, __ATOMIC_RELEASE); /* 17 new buffers in a 16-entry ring */
    expect_violation("avail index jumped");
}
END_TEST

START_TEST(buffer_outside_ram)
{
    fake_set_desc(&f, 0, FAKE_MEM - 4, 8, 0, 0); /* straddles the end of RAM */
    fake_publish(&f, 0);
    expect_violation("not guest RAM");
}
END_TEST

START_TEST(buffer_in_mmio_hole)
{
    fake_set_desc(&f, 0, LAYOUT_IOAPIC, 4, 0, 0);
    fake_publish(&f, 0);
    expect_violation("not guest RAM");
}
END_TEST

START_TEST(huge_length)
{
    fake_set_desc(&f, 0, FAKE_DATA, 0xffffffff, 0, 0);
    fake_publish(&f, 0);
    expect_violation("not guest RAM");
}
END_TEST

START_TEST(wrapping_address)
{
    fake_set_desc(&f, 0, UINT64_MAX - 2, 16, 0, 0);
    fake_publish(&f, 0);
    expect_violation("not guest RAM");
}
END_TEST

START_TEST(writable_before_readable)
{
    fake_set_desc(&f, 0, FAKE_DATA, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    fake_set_desc(&f, 1, FAKE_DATA, 8, 0, 0);
    fake_publish(&f, 0);
    expect_violation("readable descriptor after a writable");
}
END_TEST

START_TEST(indirect_rules)
{
    /* Length not a multiple of 16. */
    fake_set_desc(&f, 0, FAKE_INDIRECT, 20, VIRTQ_DESC_F_INDIRECT, 0);
    fake_publish(&f, 0);
    expect_violation("multiple of 16");
}
END_TEST

static void indirect_case(struct virtq_desc first, uint64_t table_addr, uint32_t table_len,
                          uint16_t desc_flags, bool feature, const char *needle)
{
    struct fake_queue g;
    fake_queue_init(&g, 16);
    struct virtq vq;
    ck_assert_int_eq(virtq_init(&vq, &g.mem, &g.cfg, false, feature), 0);
    struct virtq_desc *table = (void *)fake_ptr(&g, FAKE_INDIRECT, 16);
    table[0] = first;
    fake_set_desc(&g, 0, table_addr, table_len, desc_flags, 1);
    fake_publish(&g, 0);
    struct virtq_chain c;
    virtq_chain_alloc(&c, 16);
    ck_assert_int_eq(virtq_pop(&vq, &c), -1);
    ck_assert_msg(strstr(vq.error, needle), "error '%s' lacks '%s'", vq.error, needle);
    virtq_chain_free(&c);
    fake_queue_free(&g);
}

START_TEST(indirect_violations)
{
    struct virtq_desc plain = {FAKE_DATA, 8, 0, 0};
    indirect_case(plain, FAKE_INDIRECT, 16, VIRTQ_DESC_F_INDIRECT, false, "without");
    indirect_case(plain, FAKE_INDIRECT, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, true,
                  "NEXT set");
    indirect_case(plain, FAKE_INDIRECT, 0, VIRTQ_DESC_F_INDIRECT, true, "multiple of 16");
    indirect_case(plain, FAKE_INDIRECT, 17 * 16, VIRTQ_DESC_F_INDIRECT, true,
                  "exceeds the queue size");
    indirect_case(plain, FAKE_MEM - 8, 16, VIRTQ_DESC_F_INDIRECT, true, "not guest RAM");
    struct virtq_desc nested = {FAKE_INDIRECT, 16, VIRTQ_DESC_F_INDIRECT, 0};
    indirect_case(nested, FAKE_INDIRECT, 16, VIRTQ_DESC_F_INDIRECT, true, "inside an indirect");
    struct virtq_desc far = {FAKE_DATA, 8, VIRTQ_DESC_F_NEXT, 5};
    indirect_case(far, FAKE_INDIRECT, 32, VIRTQ_DESC_F_INDIRECT, true, "outside a table of 2");
    struct virtq_desc bad_buf = {FAKE_MEM, 8, 0, 0};
    indirect_case(bad_buf, FAKE_INDIRECT, 16, VIRTQ_DESC_F_INDIRECT, true, "not guest RAM");
}
END_TEST

START_TEST(init_validates_rings)
{
    struct virtq vq;
    struct virtq_config c = f.cfg;
    c.size = 12; /* not a power of two */
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "power of two"));
    c.size = 0;
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), -1);
    c = f.cfg;
    c.desc_gpa = FAKE_DESC + 8; /* misaligned */
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), -1);
    c = f.cfg;
    c.used_gpa = FAKE_MEM - 16; /* ring runs off the end of RAM */
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "outside guest RAM"));
    c = f.cfg;
    c.avail_gpa = LAYOUT_MMIO_HOLE_START;
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), -1);
    c = f.cfg;
    c.size = 32768;
    ck_assert_int_eq(virtq_init(&vq, &f.mem, &c, false, false), 0);
    ck_assert_uint_eq(vq.size, 32768);
}
END_TEST

START_TEST(notification_suppression_without_event_idx)
{
    struct virtq_avail *a = fake_avail(&f);
    struct virtq_used *u = fake_used(&f);
    fake_set_desc(&f, 0, FAKE_DATA, 8, 0, 0);
    fake_publish(&f, 0);
    virtq_pop(&q, &chain);
    virtq_push(&q, 0, 0);
    ck_assert(virtq_should_notify(&q));
    a->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    ck_assert(!virtq_should_notify(&q));
    virtq_enable_kicks(&q, false);
    ck_assert_uint_eq(u->flags & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY);
    ck_assert(!virtq_enable_kicks(&q, true));
    ck_assert_uint_eq(u->flags & VIRTQ_USED_F_NO_NOTIFY, 0);
    /* A buffer that arrived meanwhile is reported. */
    fake_publish(&f, 0);
    ck_assert(virtq_enable_kicks(&q, true));
}
END_TEST

START_TEST(notification_suppression_with_event_idx)
{
    struct fake_queue g;
    fake_queue_init(&g, 16);
    struct virtq vq;
    ck_assert_int_eq(virtq_init(&vq, &g.mem, &g.cfg, true, false), 0);
    struct virtq_chain c;
    virtq_chain_alloc(&c, 16);
    uint16_t *used_event = &fake_avail(&g)->ring[16];
    uint16_t *avail_event = (uint16_t *)&fake_used(&g)->ring[16];
    for (uint16_t i = 0; i < 4; i++) {
        fake_set_desc(&g, i, FAKE_DATA, 8, 0, 0);
        fake_publish(&g, i);
    }
    *used_event = 2; /* interrupt me when used idx passes 2 */
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(virtq_pop(&vq, &c), 1);
    virtq_push(&vq, 0, 0);               /* used 1 */
    ck_assert(virtq_should_notify(&vq)); /* first signal always goes */
    virtq_push(&vq, 1, 0);               /* used 2: event 2 not passed */
    ck_assert(!virtq_should_notify(&vq));
    virtq_push(&vq, 2, 0); /* used 3: passed 2 */
    ck_assert(virtq_should_notify(&vq));
    virtq_push(&vq, 3, 0);
    ck_assert(!virtq_should_notify(&vq));
    /* Kicks: the device asks for one at its next avail index. */
    virtq_enable_kicks(&vq, true);
    ck_assert_uint_eq(*avail_event, 4);
    virtq_chain_free(&c);
    fake_queue_free(&g);
}
END_TEST

START_TEST(index_wraparound)
{
    /* Start near 65535 on both sides: indexes are free-running. */
    struct virtq_avail *a = fake_avail(&f);
    q.last_avail = 65534;
    q.used_idx = 65534;
    f.avail_idx = 65534;
    a->idx = 65534;
    for (uint16_t i = 0; i < 4; i++) {
        fake_set_desc(&f, i, FAKE_DATA, 8, 0, 0);
        fake_publish(&f, i);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(virtq_pop(&q, &chain), 1);
        virtq_push(&q, chain.head, 0);
    }
    ck_assert_uint_eq(fake_used(&f)->idx, 2);
    ck_assert_int_eq(virtq_pop(&q, &chain), 0);
}
END_TEST

Suite *virtq_suite(void)
{
    Suite *s = suite_create("virtq");
    TCase *t = tcase_create("split");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, pop_reads_chain_in_order);
    tcase_add_test(t, push_updates_used_ring);
    tcase_add_test(t, indirect_chain);
    tcase_add_test(t, loop_is_caught);
    tcase_add_test(t, self_loop_of_zero_length_is_caught);
    tcase_add_test(t, next_out_of_range);
    tcase_add_test(t, head_out_of_range);
    tcase_add_test(t, avail_index_jump);
    tcase_add_test(t, buffer_outside_ram);
    tcase_add_test(t, buffer_in_mmio_hole);
    tcase_add_test(t, huge_length);
    tcase_add_test(t, wrapping_address);
    tcase_add_test(t, writable_before_readable);
    tcase_add_test(t, indirect_rules);
    tcase_add_test(t, indirect_violations);
    tcase_add_test(t, init_validates_rings);
    tcase_add_test(t, notification_suppression_without_event_idx);
    tcase_add_test(t, notification_suppression_with_event_idx);
    tcase_add_test(t, index_wraparound);
    suite_add_tcase(s, t);
    return s;
}
