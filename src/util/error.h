/* Error messages travel with a -1 return: the failing layer records one
 * line saying what failed and why, the caller decides whether to print it. */
#ifndef EMBER_UTIL_ERROR_H
#define EMBER_UTIL_ERROR_H

#include <stddef.h>

/* Records a formatted message for this thread and returns -1. */
int error_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like error_set, with ": strerror(errno)" appended (errno read on entry). */
int error_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Puts "prefix: " in front of the current message; returns -1. */
int error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last message recorded on this thread ("" if none). */
const char *error_get(void);
void error_clear(void);

#endif
