#include "mmds/token.h"

#include "util/clock.h"
#include "util/error.h"

#include <nettle/memops.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define NONCE_LEN   GCM_IV_SIZE /* 12 */
#define PAYLOAD_LEN 8
#define TAG_LEN     GCM_DIGEST_SIZE /* 16 */
#define RAW_LEN     (NONCE_LEN + PAYLOAD_LEN + TAG_LEN)

_Static_assert(RAW_LEN / 3 * 4 == MMDS_TOKEN_CHARS, "a token is 48 base64 characters");

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* RAW_LEN (a multiple of 3) bytes into base64, no padding needed. */
static void b64_encode(const uint8_t *in, char *out)
{
    for (size_t i = 0; i < RAW_LEN; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        for (int k = 0; k < 4; k++)
            *out++ = b64_alphabet[(v >> (18 - 6 * k)) & 63];
    }
    *out = '\0';
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Exactly MMDS_TOKEN_CHARS characters of the standard alphabet, or false. */
static bool b64_decode(const char *in, size_t len, uint8_t *out)
{
    if (len != MMDS_TOKEN_CHARS)
        return false;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            int d = b64_value(in[i + (size_t)k]);
            if (d < 0)
                return false;
            v = v << 6 | (uint32_t)d;
        }
        *out++ = (uint8_t)(v >> 16);
        *out++ = (uint8_t)(v >> 8);
        *out++ = (uint8_t)v;
    }
    return true;
}

uint64_t mmds_now_ms(void)
{
    return monotonic_ns() / 1000000u;
}

int mmds_tokens_init(struct mmds_tokens *t)
{
    memset(t, 0, sizeof(*t));
    uint8_t key[32];
    if (getrandom(key, sizeof(key), 0) != (ssize_t)sizeof(key) ||
        getrandom(t->nonce_prefix, sizeof(t->nonce_prefix), 0) != (ssize_t)sizeof(t->nonce_prefix))
        return error_errno("MMDS: getrandom");
    gcm_aes256_set_key(&t->gcm, key);
    memset(key, 0, sizeof(key));
    mmds_tokens_set_instance(t, "");
    return 0;
}

void mmds_tokens_set_instance(struct mmds_tokens *t, const char *instance_id)
{
    int n = snprintf((char *)t->aad, sizeof(t->aad), "microvmid=%s", instance_id);
    t->aad_len = n < 0 ? 0 : (size_t)n < sizeof(t->aad) ? (size_t)n : sizeof(t->aad) - 1;
}

bool mmds_token_issue(struct mmds_tokens *t, uint32_t ttl_s, uint64_t now_ms, char *out)
{
    if (ttl_s < MMDS_TOKEN_TTL_MIN || ttl_s > MMDS_TOKEN_TTL_MAX)
        return false;
    uint8_t raw[RAW_LEN];
    memcpy(raw, t->nonce_prefix, 4);
    uint64_t counter = t->issued++;
    for (int i = 0; i < 8; i++)
        raw[4 + i] = (uint8_t)(counter >> (8 * i));
    uint64_t expiry = now_ms + (uint64_t)ttl_s * 1000u;
    uint8_t plain[PAYLOAD_LEN];
    for (int i = 0; i < 8; i++)
        plain[i] = (uint8_t)(expiry >> (8 * i));
    gcm_aes256_set_iv(&t->gcm, NONCE_LEN, raw);
    gcm_aes256_update(&t->gcm, t->aad_len, t->aad);
    gcm_aes256_encrypt(&t->gcm, PAYLOAD_LEN, raw + NONCE_LEN, plain);
    gcm_aes256_digest(&t->gcm, TAG_LEN, raw + NONCE_LEN + PAYLOAD_LEN);
    b64_encode(raw, out);
    return true;
}

bool mmds_token_valid(const struct mmds_tokens *t, const char *token, size_t len, uint64_t now_ms)
{
    uint8_t raw[RAW_LEN];
    if (len > MMDS_TOKEN_MAX_LEN || !b64_decode(token, len, raw))
        return false;
    /* The context carries per-message state: work on a copy, so that checking is read-only
     * and threads may check at once. */
    struct gcm_aes256_ctx gcm = t->gcm;
    uint8_t plain[PAYLOAD_LEN], tag[TAG_LEN];
    gcm_aes256_set_iv(&gcm, NONCE_LEN, raw);
    gcm_aes256_update(&gcm, t->aad_len, t->aad);
    gcm_aes256_decrypt(&gcm, PAYLOAD_LEN, plain, raw + NONCE_LEN);
    gcm_aes256_digest(&gcm, TAG_LEN, tag);
    if (!memeql_sec(tag, raw + NONCE_LEN + PAYLOAD_LEN, TAG_LEN))
        return false;
    uint64_t expiry = 0;
    for (int i = 0; i < 8; i++)
        expiry |= (uint64_t)plain[i] << (8 * i);
    return expiry > now_ms;
}
