#include "mmds/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mmds_store_init(struct mmds_store *s, size_t limit)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->lock, NULL);
    s->limit = limit;
    return mmds_tokens_init(&s->tokens);
}

void mmds_store_destroy(struct mmds_store *s)
{
    cJSON_Delete(s->data);
    s->data = NULL;
    memset(&s->tokens, 0, sizeof(s->tokens));
    pthread_mutex_destroy(&s->lock);
}

void mmds_store_lock(struct mmds_store *s)
{
    pthread_mutex_lock(&s->lock);
}

void mmds_store_unlock(struct mmds_store *s)
{
    pthread_mutex_unlock(&s->lock);
}

void mmds_store_configure(struct mmds_store *s, enum mmds_version version, bool imds_compat,
                          const char *instance_id)
{
    mmds_store_lock(s);
    s->version = version;
    s->imds_compat = imds_compat;
    mmds_tokens_set_instance(&s->tokens, instance_id);
    mmds_store_unlock(s);
}

/* ---- JSON --------------------------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string);
}

void mmds_json_normalize(cJSON *v)
{
    if (!v || !(cJSON_IsObject(v) || cJSON_IsArray(v)))
        return;
    for (cJSON *c = v->child; c; c = c->next)
        mmds_json_normalize(c);
    if (!cJSON_IsObject(v) || !v->child)
        return;
    /* Duplicate keys: the last one wins, as in a map filled in document order. */
    for (cJSON *c = v->child; c;) {
        cJSON *next = c->next;
        for (cJSON *d = next; d; d = d->next) {
            if (!strcmp(c->string, d->string)) {
                cJSON_Delete(cJSON_DetachItemViaPointer(v, c));
                break;
            }
        }
        c = next;
    }
    size_t n = 0;
    for (cJSON *c = v->child; c; c = c->next)
        n++;
    cJSON **items = malloc(n * sizeof(*items));
    if (!items)
        return; /* left in document order: still a valid document */
    n = 0;
    for (cJSON *c = v->child; c; c = c->next)
        items[n++] = c;
    qsort(items, n, sizeof(*items), key_cmp);
    for (size_t i = 0; i < n; i++) {
        items[i]->prev = i ? items[i - 1] : items[n - 1]; /* cJSON: the head's prev is the tail */
        items[i]->next = i + 1 < n ? items[i + 1] : NULL;
    }
    v->child = items[0];
    free(items);
}

cJSON *mmds_json_merge_patch(cJSON *target, const cJSON *patch)
{
    if (!cJSON_IsObject(patch)) {
        cJSON_Delete(target);
        return cJSON_IsNull(patch) ? NULL : cJSON_Duplicate(patch, true);
    }
    if (!cJSON_IsObject(target)) {
        cJSON_Delete(target);
        target = cJSON_CreateObject();
        if (!target)
            return NULL;
    }
    for (const cJSON *p = patch->child; p; p = p->next) {
        cJSON *old = cJSON_DetachItemFromObjectCaseSensitive(target, p->string);
        if (cJSON_IsNull(p)) {
            cJSON_Delete(old);
            continue;
        }
        cJSON *merged = mmds_json_merge_patch(old, p);
        if (!merged) {
            /* Out of memory: the caller sees a NULL member; report it as a failure there. */
            continue;
        }
        cJSON_AddItemToObject(target, p->string, merged);
    }
    return target;
}

/* v as compact JSON in a buffer of its own, when it takes at most limit bytes: NULL when it
 * does not fit (*too_large) or without memory. Printing into a buffer sized up front keeps
 * cJSON from growing one with realloc, which for large blocks is an mremap that the threads'
 * filters do not allow (and needs none). */
static char *print_bounded(const cJSON *v, size_t limit, bool *too_large)
{
    *too_large = false;
    /* cJSON may ask for up to 5 bytes more than it writes. */
    size_t cap = limit + 6;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    bool ok = v ? cJSON_PrintPreallocated((cJSON *)v, buf, (int)cap, false)
                : (snprintf(buf, cap, "null") == 4);
    if (!ok || strlen(buf) > limit) {
        free(buf);
        *too_large = true;
        return NULL;
    }
    return buf;
}

/* Whether v serialises within the limit: MMDS_OK, MMDS_TOO_LARGE or MMDS_NO_MEMORY. */
static enum mmds_result check_size(const cJSON *v, size_t limit)
{
    bool too_large;
    char *s = print_bounded(v, limit, &too_large);
    free(s);
    return s ? MMDS_OK : too_large ? MMDS_TOO_LARGE : MMDS_NO_MEMORY;
}

enum mmds_result mmds_store_put(struct mmds_store *s, const cJSON *value)
{
    cJSON *copy = cJSON_IsNull(value) ? NULL : cJSON_Duplicate(value, true);
    if (!copy && !cJSON_IsNull(value))
        return MMDS_NO_MEMORY;
    mmds_json_normalize(copy);
    mmds_store_lock(s);
    enum mmds_result r = check_size(copy, s->limit);
    if (r != MMDS_OK) {
        mmds_store_unlock(s);
        cJSON_Delete(copy);
        return r;
    }
    cJSON *old = s->data;
    s->data = copy;
    s->data_set = true;
    mmds_store_unlock(s);
    cJSON_Delete(old);
    return MMDS_OK;
}

enum mmds_result mmds_store_patch(struct mmds_store *s, const cJSON *patch)
{
    cJSON *p = cJSON_Duplicate(patch, true);
    if (!p)
        return MMDS_NO_MEMORY;
    mmds_json_normalize(p);
    mmds_store_lock(s);
    enum mmds_result r = MMDS_OK;
    cJSON *copy = NULL;
    if (!s->data_set) {
        r = MMDS_NOT_INITIALIZED;
        goto out;
    }
    copy = s->data ? cJSON_Duplicate(s->data, true) : NULL;
    if (s->data && !copy) {
        r = MMDS_NO_MEMORY;
        goto out;
    }
    copy = mmds_json_merge_patch(copy, p);
    mmds_json_normalize(copy);
    if ((r = check_size(copy, s->limit)) != MMDS_OK)
        goto out;
    cJSON *old = s->data;
    s->data = copy;
    copy = old;
out:
    mmds_store_unlock(s);
    cJSON_Delete(copy);
    cJSON_Delete(p);
    return r;
}

char *mmds_store_json(struct mmds_store *s)
{
    mmds_store_lock(s);
    bool too_large;
    /* What is stored fits the limit (checked when it came in). */
    char *out = s->data ? print_bounded(s->data, s->limit, &too_large) : strdup("{}");
    mmds_store_unlock(s);
    return out;
}

/* ---- lookups ------------------------------------------------------------ */

/* One reference token of a JSON pointer, unescaped (~1 is '/', ~0 is '~'). */
static size_t unescape_token(const char *p, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '~' && i + 1 < len && (p[i + 1] == '0' || p[i + 1] == '1')) {
            out[n++] = p[i + 1] == '1' ? '/' : '~';
            i++;
        } else {
            out[n++] = p[i];
        }
    }
    out[n] = '\0';
    return n;
}

/* An array index as RFC 6901 writes it: digits, no leading zero, no sign. */
static bool array_index(const char *t, size_t *out)
{
    if (!*t || (t[0] == '0' && t[1]))
        return false;
    size_t v = 0;
    for (const char *p = t; *p; p++) {
        if (*p < '0' || *p > '9' || v > (SIZE_MAX - 9) / 10)
            return false;
        v = v * 10 + (size_t)(*p - '0');
    }
    *out = v;
    return true;
}

/* The value a pointer names; *found false when none. A NULL value with found is null. */
static const cJSON *resolve(const cJSON *root, const char *ptr, size_t len, bool *found)
{
    *found = false;
    if (len == 0) {
        *found = true;
        return root;
    }
    if (ptr[0] != '/')
        return NULL;
    char *token = malloc(len + 1);
    if (!token)
        return NULL;
    const cJSON *cur = root;
    size_t i = 1;
    for (;;) {
        size_t end = i;
        while (end < len && ptr[end] != '/')
            end++;
        unescape_token(ptr + i, end - i, token);
        const cJSON *next = NULL;
        size_t index;
        if (cJSON_IsObject(cur))
            next = cJSON_GetObjectItemCaseSensitive(cur, token);
        else if (cJSON_IsArray(cur) && array_index(token, &index) &&
                 index < (size_t)cJSON_GetArraySize(cur))
            next = cJSON_GetArrayItem(cur, (int)index);
        if (!next) {
            free(token);
            return NULL;
        }
        cur = next;
        if (end == len)
            break;
        i = end + 1;
    }
    free(token);
    *found = true;
    return cur;
}

/* An object's keys, one a line, objects marked with a trailing '/'; a string as it is. */
static enum mmds_result format_imds(const cJSON *v, char **out)
{
    if (cJSON_IsString(v)) {
        *out = strdup(v->valuestring);
        return *out ? MMDS_OK : MMDS_NO_MEMORY;
    }
    if (!cJSON_IsObject(v))
        return MMDS_UNSUPPORTED;
    size_t len = 1;
    for (const cJSON *c = v->child; c; c = c->next)
        len += strlen(c->string) + 2;
    char *s = malloc(len), *p = s;
    if (!s)
        return MMDS_NO_MEMORY;
    for (const cJSON *c = v->child; c; c = c->next) {
        if (c != v->child)
            *p++ = '\n';
        size_t n = strlen(c->string);
        memcpy(p, c->string, n);
        p += n;
        if (cJSON_IsObject(c))
            *p++ = '/';
    }
    *p = '\0';
    *out = s;
    return MMDS_OK;
}

enum mmds_result mmds_store_lookup_locked(struct mmds_store *s, const char *path,
                                          enum mmds_format format, char **out)
{
    *out = NULL;
    size_t n = strlen(path);
    char *ptr = malloc(n + 1);
    if (!ptr)
        return MMDS_NO_MEMORY;
    /* Runs of '/' count as one, and a trailing '/' names the same value. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '/' && k && ptr[k - 1] == '/')
            continue;
        ptr[k++] = path[i];
    }
    if (k && ptr[k - 1] == '/')
        k--;
    ptr[k] = '\0';
    bool found;
    const cJSON *v = resolve(s->data, ptr, k, &found);
    free(ptr);
    if (!found)
        return MMDS_NOT_FOUND;
    if (s->imds_compat || format == MMDS_FORMAT_IMDS)
        return format_imds(v, out);
    bool too_large; /* a part of the document is no larger than the whole, which fits */
    *out = print_bounded(v, s->limit, &too_large);
    return *out ? MMDS_OK : MMDS_NO_MEMORY;
}
