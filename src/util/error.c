#include "util/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[512];

int error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -1;
}

int error_errno(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    size_t len = strlen(last_error);
    snprintf(last_error + len, sizeof(last_error) - len, ": %s", strerror(saved));
    errno = saved;
    return -1;
}

int error_prefix(const char *fmt, ...)
{
    char old[sizeof(last_error)];
    memcpy(old, last_error, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    size_t len = strlen(last_error);
    snprintf(last_error + len, sizeof(last_error) - len, ": %s", old);
    return -1;
}

const char *error_get(void)
{
    return last_error;
}

void error_clear(void)
{
    last_error[0] = '\0';
}
