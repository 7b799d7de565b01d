/*
 * key=value lookup in the command line. Words are split at spaces outside double quotes, as
 * Linux does, so a quoted value may hold spaces; the quotes are not part of the value.
 */
#include "guest.h"

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n';
}

bool cmdline_get(const char *key, char *value, size_t size)
{
    const char *p = boot_info.cmdline;
    size_t key_len = strlen(key);
    while (*p) {
        while (is_space(*p))
            p++;
        const char *word = p;
        bool quoted = false;
        while (*p && (quoted || !is_space(*p))) {
            if (*p == '"')
                quoted = !quoted;
            p++;
        }
        if ((size_t)(p - word) > key_len && !strncmp(word, key, key_len) && word[key_len] == '=') {
            size_t n = 0;
            for (const char *v = word + key_len + 1; v < p; v++) {
                if (*v != '"' && n + 1 < size)
                    value[n++] = *v;
            }
            if (size)
                value[n] = '\0';
            return true;
        }
    }
    return false;
}

bool parse_u64(const char *s, uint64_t *value)
{
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return false;
    uint64_t v = 0;
    for (; *s; s++) {
        unsigned digit;
        if (*s >= '0' && *s <= '9')
            digit = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            digit = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            digit = *s - 'A' + 10;
        else
            return false;
        if (v > (UINT64_MAX - digit) / base)
            return false; /* too large: refused, not wrapped around to a small value */
        v = v * base + digit;
    }
    *value = v;
    return true;
}

bool cmdline_get_u64(const char *key, uint64_t *value)
{
    char text[32];
    return cmdline_get(key, text, sizeof(text)) && parse_u64(text, value);
}

bool cmdline_list_has(const char *key, const char *word)
{
    char list[512];
    if (!cmdline_get(key, list, sizeof(list)))
        return false;
    size_t want = strlen(word);
    for (const char *p = list; *p;) {
        const char *end = p;
        while (*end && *end != ',')
            end++;
        if ((size_t)(end - p) == want && !strncmp(p, word, want))
            return true;
        p = *end ? end + 1 : end;
    }
    return false;
}
