/* Leveled, timestamped log lines. Goes to stderr until log_open() points it
 * at a file or pipe. Safe to call from any thread. */
#ifndef EMBER_UTIL_LOG_H
#define EMBER_UTIL_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn"/"warning", "info", "debug" (case-insensitive). */
int log_level_parse(const char *name, enum log_level *out);
/* Sends log lines to path (appended; a FIFO works too). */
int log_open(const char *path);
void log_close(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Logs only the first time a given flag is seen clear, then sets it: for
 * guest-triggerable conditions that must not flood the log. */
#define log_once(flag, level, ...)                                                                 \
    do {                                                                                           \
        if (!__atomic_exchange_n(&(flag), true, __ATOMIC_RELAXED))                                 \
            log_msg(level, __VA_ARGS__);                                                           \
    } while (0)

#endif
