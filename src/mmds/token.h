/* MMDS V2 session tokens. A token carries its own expiry, sealed with AES-256-GCM (Nettle)
 * under a key drawn at random for this machine, with the instance id as associated data, as
 * Firecracker seals its tokens: the host keeps no table of tokens, and a guest can neither
 * forge one nor stretch its lifetime. A token is the base64 of a 12-byte nonce, the 8-byte
 * sealed expiry (milliseconds of CLOCK_MONOTONIC) and the 16-byte tag: 48 characters. Nonces
 * are a random prefix and a counter, so no two tokens under one key share one. */
#ifndef EMBER_MMDS_TOKEN_H
#define EMBER_MMDS_TOKEN_H

#include <nettle/gcm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MMDS_TOKEN_TTL_MIN 1
#define MMDS_TOKEN_TTL_MAX 21600 /* six hours */
#define MMDS_TOKEN_CHARS   48
#define MMDS_TOKEN_MAX_LEN 70 /* longer strings are refused before any work */
#define MMDS_TOKEN_AAD_MAX 80

struct mmds_tokens {
    struct gcm_aes256_ctx gcm;
    uint8_t nonce_prefix[4];
    uint64_t issued; /* the nonce counter */
    uint8_t aad[MMDS_TOKEN_AAD_MAX];
    size_t aad_len;
};

/* Draws the key and the nonce prefix (getrandom). */
int mmds_tokens_init(struct mmds_tokens *t);
/* Binds tokens to an instance ("microvmid=ID" as associated data). */
void mmds_tokens_set_instance(struct mmds_tokens *t, const char *instance_id);
/* A token valid for ttl_s seconds from now_ms into out (MMDS_TOKEN_CHARS + 1 bytes); false
 * when ttl_s is outside MMDS_TOKEN_TTL_MIN..MAX. */
bool mmds_token_issue(struct mmds_tokens *t, uint32_t ttl_s, uint64_t now_ms, char *out);
/* Whether token (len bytes, not NUL-terminated) was issued under this key and instance and
 * has not expired at now_ms. */
bool mmds_token_valid(const struct mmds_tokens *t, const char *token, size_t len, uint64_t now_ms);
/* CLOCK_MONOTONIC in milliseconds. */
uint64_t mmds_now_ms(void);

#endif
