/* The metadata service without a device: the data store (RFC 7396 merge patch, the size
 * limit, lookups in JSON and IMDS formats), session tokens (sealing, tampering, expiry on a
 * clock the test sets). The network stack and the guest's HTTP have their own cases in
 * test_mmds_stack.c. */
#include "mmds/store.h"
#include "mmds/token.h"
#include "suites.h"

#include <stdlib.h>
#include <string.h>

static struct mmds_store store;

static void setup(void)
{
    ck_assert_int_eq(mmds_store_init(&store, MMDS_DEFAULT_SIZE_LIMIT), 0);
}

static void teardown(void)
{
    mmds_store_destroy(&store);
}

static enum mmds_result put(const char *json)
{
    cJSON *v = cJSON_Parse(json);
    ck_assert_ptr_nonnull(v);
    enum mmds_result r = mmds_store_put(&store, v);
    cJSON_Delete(v);
    return r;
}

static enum mmds_result patch(const char *json)
{
    cJSON *v = cJSON_Parse(json);
    ck_assert_ptr_nonnull(v);
    enum mmds_result r = mmds_store_patch(&store, v);
    cJSON_Delete(v);
    return r;
}

static void expect_doc(const char *want)
{
    char *got = mmds_store_json(&store);
    ck_assert_str_eq(got, want);
    free(got);
}

static enum mmds_result lookup(const char *path, enum mmds_format f, char **out)
{
    mmds_store_lock(&store);
    enum mmds_result r = mmds_store_lookup_locked(&store, path, f, out);
    mmds_store_unlock(&store);
    return r;
}

static void expect_lookup(const char *path, enum mmds_format f, const char *want)
{
    char *got = NULL;
    ck_assert_int_eq(lookup(path, f, &got), MMDS_OK);
    ck_assert_str_eq(got, want);
    free(got);
}

START_TEST(put_replaces_and_sorts)
{
    expect_doc("{}");
    ck_assert_int_eq(patch("{\"a\":1}"), MMDS_NOT_INITIALIZED);
    ck_assert_int_eq(put("{\"z\":{\"b\":1,\"a\":2},\"a\":\"x\",\"a\":\"y\"}"), MMDS_OK);
    /* Keys sorted at every level, the last of duplicates kept. */
    expect_doc("{\"a\":\"y\",\"z\":{\"a\":2,\"b\":1}}");
    ck_assert_int_eq(put("[1,2]"), MMDS_OK);
    expect_doc("[1,2]");
}
END_TEST

/* RFC 7396, appendix A, every example. */
START_TEST(merge_patch_rfc7396_examples)
{
    static const char *const cases[][3] = {
        {"{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}"},
        {"{\"a\":\"b\"}", "{\"a\":null}", "{}"},
        {"{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}"},
        {"{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}"},
        {"{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}"},
        {"{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}", "{\"a\":{\"b\":\"d\"}}"},
        {"{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}"},
        {"[\"a\",\"b\"]", "[\"c\",\"d\"]", "[\"c\",\"d\"]"},
        {"{\"a\":\"b\"}", "[\"c\"]", "[\"c\"]"},
        {"{\"e\":null}", "{\"a\":1}", "{\"a\":1,\"e\":null}"},
        {"[1,2]", "{\"a\":\"b\",\"c\":null}", "{\"a\":\"b\"}"},
        {"{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_int_eq(put(cases[i][0]), MMDS_OK);
        ck_assert_int_eq(patch(cases[i][1]), MMDS_OK);
        expect_doc(cases[i][2]);
    }
    /* A patch that is null itself replaces the document with null, shown as {}. */
    ck_assert_int_eq(put("{\"a\":1}"), MMDS_OK);
    ck_assert_int_eq(patch("null"), MMDS_OK);
    expect_doc("{}");
}
END_TEST

START_TEST(size_limit)
{
    mmds_store_destroy(&store);
    ck_assert_int_eq(mmds_store_init(&store, 20), 0);
    ck_assert_int_eq(put("{\"a\":\"0123456789\"}"), MMDS_OK); /* 18 bytes */
    ck_assert_int_eq(put("{\"a\":\"0123456789abc\"}"), MMDS_TOO_LARGE);
    expect_doc("{\"a\":\"0123456789\"}");
    ck_assert_int_eq(patch("{\"b\":\"x\"}"), MMDS_TOO_LARGE); /* 26 bytes merged */
    expect_doc("{\"a\":\"0123456789\"}");                     /* unchanged */
    ck_assert_int_eq(patch("{\"a\":\"01234567890\"}"), MMDS_OK);
    expect_doc("{\"a\":\"01234567890\"}");
}
END_TEST

START_TEST(lookups_json_and_imds)
{
    ck_assert_int_eq(put("{\"latest\":{\"meta-data\":{\"ami-id\":\"ami-1\",\"res\":\"r-2\","
                         "\"net\":{\"x\":\"y\"}}},\"age\":43,\"list\":[\"a\",{\"k\":\"v\"}],"
                         "\"a/b\":\"slash\",\"t~\":\"tilde\"}"),
                     MMDS_OK);
    expect_lookup("/latest/meta-data/ami-id", MMDS_FORMAT_JSON, "\"ami-1\"");
    expect_lookup("/latest/meta-data/ami-id", MMDS_FORMAT_IMDS, "ami-1");
    expect_lookup("/latest/meta-data", MMDS_FORMAT_IMDS, "ami-id\nnet/\nres");
    expect_lookup("/latest/meta-data/", MMDS_FORMAT_IMDS, "ami-id\nnet/\nres");
    expect_lookup("//latest///meta-data//net", MMDS_FORMAT_JSON, "{\"x\":\"y\"}");
    expect_lookup("/latest", MMDS_FORMAT_IMDS, "meta-data/");
    expect_lookup("/", MMDS_FORMAT_IMDS, "a/b\nage\nlatest/\nlist\nt~");
    expect_lookup("/list/1/k", MMDS_FORMAT_JSON, "\"v\"");
    expect_lookup("/a~1b", MMDS_FORMAT_IMDS, "slash");
    expect_lookup("/t~0", MMDS_FORMAT_IMDS, "tilde");
    expect_lookup("/age", MMDS_FORMAT_JSON, "43");
    char *out = NULL;
    ck_assert_int_eq(lookup("/age", MMDS_FORMAT_IMDS, &out), MMDS_UNSUPPORTED);
    ck_assert_int_eq(lookup("/list", MMDS_FORMAT_IMDS, &out), MMDS_UNSUPPORTED);
    ck_assert_int_eq(lookup("/nothing", MMDS_FORMAT_JSON, &out), MMDS_NOT_FOUND);
    ck_assert_int_eq(lookup("/list/01", MMDS_FORMAT_JSON, &out), MMDS_NOT_FOUND);
    ck_assert_int_eq(lookup("/list/2", MMDS_FORMAT_JSON, &out), MMDS_NOT_FOUND);
    ck_assert_int_eq(lookup("/list/-1", MMDS_FORMAT_JSON, &out), MMDS_NOT_FOUND);
    ck_assert_int_eq(lookup("/latest/meta-data/ami-id/more", MMDS_FORMAT_JSON, &out),
                     MMDS_NOT_FOUND);
    ck_assert_int_eq(lookup("latest", MMDS_FORMAT_JSON, &out), MMDS_NOT_FOUND);
    ck_assert_ptr_null(out);
    /* IMDS compatibility answers in IMDS whatever was asked. */
    mmds_store_configure(&store, MMDS_V2, true, "vm");
    expect_lookup("/latest/meta-data/ami-id", MMDS_FORMAT_JSON, "ami-1");
}
END_TEST

START_TEST(token_issue_and_check)
{
    struct mmds_tokens t;
    ck_assert_int_eq(mmds_tokens_init(&t), 0);
    mmds_tokens_set_instance(&t, "vm-1");
    char tok[MMDS_TOKEN_CHARS + 1];
    uint64_t now = 1000000;
    ck_assert(!mmds_token_issue(&t, 0, now, tok));
    ck_assert(!mmds_token_issue(&t, MMDS_TOKEN_TTL_MAX + 1, now, tok));
    ck_assert(mmds_token_issue(&t, 60, now, tok));
    ck_assert_uint_eq(strlen(tok), MMDS_TOKEN_CHARS);
    ck_assert(mmds_token_valid(&t, tok, strlen(tok), now));
    ck_assert(mmds_token_valid(&t, tok, strlen(tok), now + 59999));
    ck_assert(!mmds_token_valid(&t, tok, strlen(tok), now + 60000)); /* expired */
    /* Every character matters: one changed anywhere and the seal breaks. */
    for (size_t i = 0; i < MMDS_TOKEN_CHARS; i++) {
        char bad[MMDS_TOKEN_CHARS + 1];
        memcpy(bad, tok, sizeof(bad));
        bad[i] = bad[i] == 'A' ? 'B' : 'A';
        ck_assert(!mmds_token_valid(&t, bad, MMDS_TOKEN_CHARS, now));
    }
    ck_assert(!mmds_token_valid(&t, tok, MMDS_TOKEN_CHARS - 4, now));
    ck_assert(!mmds_token_valid(&t, "", 0, now));
    char longer[MMDS_TOKEN_MAX_LEN + 2];
    memset(longer, 'A', sizeof(longer));
    ck_assert(!mmds_token_valid(&t, longer, sizeof(longer), now));
    ck_assert(!mmds_token_valid(&t, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", 48, now));
    /* Bound to the instance and to this machine's key. */
    mmds_tokens_set_instance(&t, "vm-2");
    ck_assert(!mmds_token_valid(&t, tok, MMDS_TOKEN_CHARS, now));
    mmds_tokens_set_instance(&t, "vm-1");
    ck_assert(mmds_token_valid(&t, tok, MMDS_TOKEN_CHARS, now));
    struct mmds_tokens other;
    ck_assert_int_eq(mmds_tokens_init(&other), 0);
    mmds_tokens_set_instance(&other, "vm-1");
    ck_assert(!mmds_token_valid(&other, tok, MMDS_TOKEN_CHARS, now));
    /* Two tokens with the same lifetime differ (fresh nonces). */
    char tok2[MMDS_TOKEN_CHARS + 1];
    ck_assert(mmds_token_issue(&t, 60, now, tok2));
    ck_assert_str_ne(tok, tok2);
    ck_assert(mmds_token_issue(&t, MMDS_TOKEN_TTL_MAX, now, tok2));
    ck_assert(mmds_token_valid(&t, tok2, MMDS_TOKEN_CHARS, now + MMDS_TOKEN_TTL_MAX * 1000ull - 1));
}
END_TEST

Suite *mmds_suite(void)
{
    Suite *s = suite_create("mmds");
    TCase *t = tcase_create("store and tokens");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, put_replaces_and_sorts);
    tcase_add_test(t, merge_patch_rfc7396_examples);
    tcase_add_test(t, size_limit);
    tcase_add_test(t, lookups_json_and_imds);
    tcase_add_test(t, token_issue_and_check);
    suite_add_tcase(s, t);
    return s;
}
