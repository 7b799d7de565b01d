/* Leveled, timestamped log lines. Goes to stderr until log_open() points it
 * at a file or pipe. Safe to call from any thread; reconfigure (level,
 * destination, format) only while no other thread logs. */
#ifndef EMBER_UTIL_LOG_H
#define EMBER_UTIL_LOG_H

#include <stdbool.h>
#include <stdint.h>

/* LOG_OFF silences everything; TRACE is the most verbose. */
enum log_level { LOG_OFF = -1, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "off", "error", "warn"/"warning", "info", "debug", "trace"
 * (case-insensitive). */
int log_level_parse(const char *name, enum log_level *out);
const char *log_level_name(enum log_level level);
/* Whether lines carry the level and the source file:line of the call. */
void log_set_format(bool show_level, bool show_origin);
/* Names the instance in every line ("[ember:ID]"); NULL for plain "[ember]". */
void log_set_instance(const char *id);
/* Sends log lines to path (appended; a FIFO works too, if it has a reader). */
int log_open(const char *path);
void log_close(void);
/* Where lines go now (stderr or the log file), for writers that cannot
 * take the usual path (a signal handler). */
int log_get_fd(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_msg_at(enum log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_error(...) log_msg_at(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...)  log_msg_at(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...)  log_msg_at(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_msg_at(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define log_trace(...) log_msg_at(LOG_TRACE, __FILE__, __LINE__, __VA_ARGS__)

/* A rate limit for one kind of line that a guest (or any other untrusted
 * peer) can cause: the first line is written, then at most one per
 * LOG_LIMIT_INTERVAL_MS, each carrying the number of lines suppressed since
 * the last one. Zero-initialised is ready; safe from any thread. */
#define LOG_LIMIT_INTERVAL_MS 5000

struct log_limit {
    uint64_t next_ns;    /* monotonic time before which lines are suppressed */
    uint64_t suppressed; /* since the last line written */
    uint64_t total;      /* lines asked for, written or not */
};

void log_limited_at(struct log_limit *limit, enum log_level level, const char *file, int line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define log_limited(limit, level, ...) log_limited_at(limit, level, __FILE__, __LINE__, __VA_ARGS__)
/* Writes one line for what `limit` suppressed since its last line, if anything (at the end of a
 * device's life, so that no count is lost). */
void log_limit_flush(struct log_limit *limit, enum log_level level, const char *what);

/* Lines suppressed by every rate limit so far, and lines that could not be
 * written (a full FIFO): Firecracker's logger.missed_log_count and
 * logger.log_fails. */
uint64_t log_missed_count(void);
uint64_t log_fail_count(void);

#endif
