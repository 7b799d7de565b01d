/* virtio-fs through vhost-user (virtio/vhost_user_fs.c): the tag's rules, the configuration
 * space ember emulates (through the virtio-mmio window, against the fake back-end of
 * vhu_fake.h), the queue count the back-end bounds, what is offered, and the parsers of
 * --fs and PUT /fs/{id}. */
#include "api/config.h"
#include "cli.h"
#include "suites.h"
#include "util/error.h"
#include "virtio/mmio.h"
#include "virtio/vhost_user_fs.h"
#include "vhu_fake.h"
#include "virtq_fake.h"

#include <cjson/cJSON.h>

enum {
    REG_DEVICE_ID = 0x008,
    REG_DEVICE_FEATURES = 0x010,
    REG_DEVICE_FEATURES_SEL = 0x014,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM_MAX = 0x034,
    REG_CONFIG = 0x100,
};

static struct guest_memory mem;
static struct virtio_mmio m;
static struct vhost_user_fs fs;

#define BACKEND_FEATURES                                                                           \
    ((1ULL << VIRTIO_F_VERSION_1) | (1ULL << VHOST_USER_F_PROTOCOL_FEATURES) |                     \
     (1ULL << VIRTIO_F_EVENT_IDX) | (1ULL << VIRTIO_F_RING_PACKED) |                               \
     (1ULL << 0) /* VIRTIO_FS_F_NOTIFICATION */)
#define MQ_ACK ((1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ULL << VHOST_USER_PROTOCOL_F_MQ))

static void start(uint64_t protocol, uint64_t queue_num)
{
    backend_start("vufs", BACKEND_FEATURES, protocol, NULL, 0, queue_num);
    ck_assert_int_eq(
        guest_memory_map_memfd(&mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END), 0);
}

static void stop(void)
{
    vhost_user_fs_destroy(&fs);
    backend_stop();
    guest_memory_free(&mem);
}

static uint32_t rd(uint32_t reg)
{
    uint32_t v = 0;
    virtio_mmio_io(&m, reg, (uint8_t *)&v, 4, false);
    return v;
}

static void wr(uint32_t reg, uint32_t v)
{
    virtio_mmio_io(&m, reg, (uint8_t *)&v, 4, true);
}

START_TEST(tag_rules)
{
    ck_assert_int_eq(vhost_user_fs_check_tag("myfs"), 0);
    ck_assert_int_eq(vhost_user_fs_check_tag("a-b_c.d:e/f"), 0);
    ck_assert_int_eq(vhost_user_fs_check_tag("123456789012345678901234567890123456"), 0);
    ck_assert_int_eq(vhost_user_fs_check_tag("1234567890123456789012345678901234567"), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "37 bytes long (at most 36)"));
    ck_assert_int_eq(vhost_user_fs_check_tag(""), -1);
    ck_assert_int_eq(vhost_user_fs_check_tag("a b"), -1);
    ck_assert_int_eq(vhost_user_fs_check_tag("a,b"), -1);
    ck_assert_int_eq(vhost_user_fs_check_tag("a\tb"), -1);
    ck_assert_int_eq(vhost_user_fs_check_tag("caf\xc3\xa9"), -1);
}
END_TEST

START_TEST(config_layout)
{
    uint8_t c[VHOST_USER_FS_CONFIG];
    memset(c, 0xaa, sizeof(c));
    vhost_user_fs_make_config(c, "share", 3);
    ck_assert_int_eq(memcmp(c, "share", 5), 0);
    for (unsigned i = 5; i < 36; i++)
        ck_assert_int_eq(c[i], 0); /* NUL padded */
    ck_assert_int_eq(c[36], 3);
    ck_assert_int_eq(c[37] | c[38] | c[39], 0);
    /* A tag of the full 36 bytes has no NUL. */
    vhost_user_fs_make_config(c, "123456789012345678901234567890123456", 1);
    ck_assert_int_eq(memcmp(c, "123456789012345678901234567890123456", 36), 0);
    ck_assert_int_eq(c[36], 1);
}
END_TEST

/* What the guest sees through the transport: device 26, the tag and N, 1 + N queues, the
 * back-end's features ember passes on. */
START_TEST(device_as_the_guest_sees_it)
{
    start(MQ_ACK, 3);
    struct vhost_user_fs_options o = {.tag = "share", .socket = be.path, .num_queues = 2};
    ck_assert_msg(vhost_user_fs_init(&fs, "fs0", &o, &mem) == 0, "%s", error_get());
    ck_assert_int_eq(virtio_mmio_init(&m, &fs.vud.dev, -1, 0xd0000000, 5), 0);
    ck_assert_int_eq(rd(REG_DEVICE_ID), 26);
    char tag[37] = {0};
    for (unsigned i = 0; i < 36; i += 4) {
        uint32_t w = rd(REG_CONFIG + i);
        memcpy(tag + i, &w, 4);
    }
    ck_assert_str_eq(tag, "share");
    ck_assert_int_eq(rd(REG_CONFIG + 36), 2);
    for (unsigned q = 0; q < 4; q++) {
        wr(REG_QUEUE_SEL, q);
        ck_assert_msg((rd(REG_QUEUE_NUM_MAX) != 0) == (q < 3), "queue %u", q);
    }
    wr(REG_DEVICE_FEATURES_SEL, 0);
    uint32_t lo = rd(REG_DEVICE_FEATURES);
    wr(REG_DEVICE_FEATURES_SEL, 1);
    uint32_t hi = rd(REG_DEVICE_FEATURES);
    uint64_t offered = ((uint64_t)hi << 32) | lo;
    ck_assert_uint_eq(offered, (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_F_EVENT_IDX));
    ck_assert(logged(VHU_GET_QUEUE_NUM));
    ck_assert(!logged(VHU_GET_CONFIG)); /* ember's own configuration space */
    virtio_mmio_destroy(&m);
    stop();
}
END_TEST

START_TEST(backend_bounds_the_queues)
{
    start(MQ_ACK, 2);
    struct vhost_user_fs_options o = {.tag = "share", .socket = be.path, .num_queues = 2};
    ck_assert_int_eq(vhost_user_fs_init(&fs, "fs0", &o, &mem), -1);
    ck_assert_msg(strstr(error_get(), "serves 2 queue(s): 2 request queue(s) and the "
                                      "high-priority queue need 3"),
                  "%s", error_get());
    stop();
}
END_TEST

/* Without PROTOCOL_F_MQ the back-end says nothing about its queues: N as asked. */
START_TEST(no_mq_no_bound)
{
    start(1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK, 1);
    struct vhost_user_fs_options o = {.tag = "t", .socket = be.path, .num_queues = 4};
    ck_assert_msg(vhost_user_fs_init(&fs, "fs0", &o, &mem) == 0, "%s", error_get());
    ck_assert_int_eq(fs.vud.dev.nqueues, 5);
    ck_assert(!logged(VHU_GET_QUEUE_NUM));
    stop();
}
END_TEST

START_TEST(bad_options_refused_before_connecting)
{
    ck_assert_int_eq(
        guest_memory_map_memfd(&mem, FAKE_MEM, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END), 0);
    struct vhost_user_fs_options o = {.tag = "", .socket = "/nonexistent"};
    ck_assert_int_eq(vhost_user_fs_init(&fs, "fs0", &o, &mem), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "tag is empty"));
    vhost_user_fs_destroy(&fs);
    o = (struct vhost_user_fs_options){.tag = "a", .socket = "/nonexistent", .num_queues = 17};
    ck_assert_int_eq(vhost_user_fs_init(&fs, "fs0", &o, &mem), -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "17 request queues"));
    vhost_user_fs_destroy(&fs);
    guest_memory_free(&mem);
}
END_TEST

START_TEST(cli_specs)
{
    struct fs_config f;
    ck_assert_int_eq(cli_parse_fs("tag=share,socket=/run/v.sock", &f), 0);
    ck_assert_str_eq(f.tag, "share");
    ck_assert_str_eq(f.socket, "/run/v.sock");
    ck_assert_uint_eq(f.num_queues, 1);
    ck_assert_uint_eq(f.reconnect_s, VHOST_USER_RECONNECT_DEFAULT_S);
    cli_free_fs(&f);
    ck_assert_int_eq(cli_parse_fs("socket=/s,queues=16,tag=x,reconnect=0", &f), 0);
    ck_assert_uint_eq(f.num_queues, 16);
    ck_assert_uint_eq(f.reconnect_s, 0);
    cli_free_fs(&f);
    static const char *const bad[] = {"tag=x",
                                      "socket=/s",
                                      "tag=,socket=/s",
                                      "tag=x,socket=",
                                      "tag=x,socket=/s,queues=0",
                                      "tag=x,socket=/s,queues=17",
                                      "tag=x,socket=/s,queues=-1",
                                      "tag=a b,socket=/s",
                                      "tag=1234567890123456789012345678901234567,socket=/s",
                                      "tag=x,socket=/s,path=/p",
                                      "tag=x,socket=/s,reconnect=3601",
                                      "tag=x,socket=/s,reconnect=-1",
                                      "x"};
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(cli_parse_fs(bad[i], &f) == -1, "%s accepted", bad[i]);
        ck_assert_ptr_null(f.storage);
    }
}
END_TEST

static int put(struct api_config *c, const char *path_id, const char *json)
{
    cJSON *body = cJSON_Parse(json);
    ck_assert_ptr_nonnull(body);
    int r = api_put_fs(c, path_id, body);
    cJSON_Delete(body);
    return r;
}

START_TEST(api_bodies)
{
    start(MQ_ACK, 2);
    struct api_config c;
    api_config_init(&c);
    char ok[256], body[512];
    snprintf(ok, sizeof(ok), "\"fs_id\": \"a\", \"tag\": \"share\", \"socket\": \"%s\"", be.path);
    snprintf(body, sizeof(body), "{%s}", ok);
    ck_assert_msg(put(&c, "a", body) == 0, "%s", error_get());
    ck_assert_uint_eq(c.nfs, 1);
    ck_assert_uint_eq(c.fs[0].num_queues, 1);
    snprintf(body, sizeof(body), "{%s, \"num_queues\": 16}", ok);
    ck_assert_msg(put(&c, "a", body) == 0, "%s", error_get()); /* replaces */
    ck_assert_uint_eq(c.nfs, 1);
    ck_assert_uint_eq(c.fs[0].num_queues, 16);
    static const char *const extra[] = {", \"num_queues\": 0", ", \"num_queues\": 17",
                                        ", \"num_queues\": 1.5", ", \"num_queues\": \"2\"",
                                        ", \"cache\": \"none\""};
    for (unsigned i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        snprintf(body, sizeof(body), "{%s%s}", ok, extra[i]);
        ck_assert_msg(put(&c, "a", body) == -1, "%s accepted", extra[i]);
    }
    snprintf(body, sizeof(body), "{\"fs_id\": \"b\", \"tag\": \"share\", \"socket\": \"%s\"}",
             be.path);
    ck_assert_int_eq(put(&c, "b", body), -1); /* the tag is a's */
    ck_assert_ptr_nonnull(strstr(error_get(), "already"));
    ck_assert_int_eq(put(&c, "b", "{\"fs_id\": \"b\", \"tag\": \"t\", \"socket\": \"/dev/null\"}"),
                     -1);
    ck_assert_ptr_nonnull(strstr(error_get(), "not a socket"));
    ck_assert_int_eq(put(&c, "b", "{\"fs_id\": \"b\", \"tag\": \"\", \"socket\": \"/dev/null\"}"),
                     -1);
    ck_assert_int_eq(put(&c, "b", "{\"fs_id\": \"c\", \"tag\": \"t\", \"socket\": \"/dev/null\"}"),
                     -1);
    ck_assert_uint_eq(c.nfs, 1);
    struct vm_config vm = {0};
    c.has_boot_source = true; /* what the conversion needs besides */
    c.kernel_path = strdup("/k");
    ck_assert_msg(api_config_to_vm(&c, &vm) == 0, "%s", error_get());
    ck_assert_uint_eq(vm.nfs, 1);
    ck_assert_str_eq(vm.fs[0].tag, "share");
    ck_assert_uint_eq(vm.fs[0].num_queues, 16);
    api_config_free(&c);
    backend_stop();
    guest_memory_free(&mem);
}
END_TEST

Suite *vhost_user_fs_suite(void)
{
    Suite *s = suite_create("vhost_user_fs");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, tag_rules);
    tcase_add_test(tc, config_layout);
    tcase_add_test(tc, device_as_the_guest_sees_it);
    tcase_add_test(tc, backend_bounds_the_queues);
    tcase_add_test(tc, no_mq_no_bound);
    tcase_add_test(tc, bad_options_refused_before_connecting);
    tcase_add_test(tc, cli_specs);
    tcase_add_test(tc, api_bodies);
    suite_add_tcase(s, tc);
    return s;
}
