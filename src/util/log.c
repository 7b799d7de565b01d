#include "util/log.h"

#include "util/clock.h"
#include "util/error.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};
static enum log_level current_level = LOG_WARN;
static int log_fd = STDERR_FILENO;
static bool show_level = true, show_origin;
static char instance[80];
static uint64_t log_missed, log_fails;

void log_set_level(enum log_level level)
{
    current_level = level;
}

enum log_level log_get_level(void)
{
    return current_level;
}

const char *log_level_name(enum log_level level)
{
    return level == LOG_OFF ? "OFF" : level_names[level];
}

int log_level_parse(const char *name, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {{"off", LOG_OFF},      {"error", LOG_ERROR}, {"warn", LOG_WARN},
                 {"warning", LOG_WARN}, {"info", LOG_INFO},   {"debug", LOG_DEBUG},
                 {"trace", LOG_TRACE}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return error_set("unknown log level '%s' (use off, error, warning, info, debug or trace)",
                     name);
}

void log_set_format(bool level, bool origin)
{
    show_level = level;
    show_origin = origin;
}

void log_set_instance(const char *id)
{
    snprintf(instance, sizeof(instance), "%s%s", id ? ":" : "", id ? id : "");
}

int log_open(const char *path)
{
    /* Read-write and non-blocking, as Firecracker opens it: a FIFO nobody
     * reads yet opens at once (write-only would fail with ENXIO), and a
     * stalled reader costs log lines (counted), never a stuck vCPU. A line
     * is shorter than PIPE_BUF, so a FIFO takes it whole or not at all. */
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd < 0)
        return error_errno("cannot open log file '%s'", path);
    log_close();
    log_fd = fd;
    return 0;
}

void log_close(void)
{
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = STDERR_FILENO;
}

int log_get_fd(void)
{
    return log_fd;
}

static void log_vmsg(enum log_level level, const char *file, int line_no, const char *fmt,
                     va_list ap)
{
    if (level > current_level || level < LOG_ERROR)
        return;
    char line[1024];
    _Static_assert(sizeof(line) <= PIPE_BUF, "a log line must reach a FIFO whole or not at all");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ [ember%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000, instance);
    if (show_level)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%s: ", level_names[level]);
    if (show_origin && file) {
        const char *base = strstr(file, "src/");
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%s:%d: ", base ? base + 4 : file,
                      line_no);
    }
    if ((size_t)n >= sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    /* One write per line keeps lines from different threads whole. */
    if (write(log_fd, line, len) != (ssize_t)len)
        __atomic_add_fetch(&log_fails, 1, __ATOMIC_RELAXED);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, NULL, 0, fmt, ap);
    va_end(ap);
}

void log_msg_at(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, file, line, fmt, ap);
    va_end(ap);
}

void log_limited_at(struct log_limit *limit, enum log_level level, const char *file, int line,
                    const char *fmt, ...)
{
    __atomic_add_fetch(&limit->total, 1, __ATOMIC_RELAXED);
    uint64_t now = monotonic_ns();
    uint64_t next = __atomic_load_n(&limit->next_ns, __ATOMIC_RELAXED);
    /* One thread wins the slot; the others count themselves suppressed. */
    if (now < next || !__atomic_compare_exchange_n(&limit->next_ns, &next,
                                                   now + LOG_LIMIT_INTERVAL_MS * 1000000ULL, false,
                                                   __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&limit->suppressed, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&log_missed, 1, __ATOMIC_RELAXED);
        return;
    }
    uint64_t missed = __atomic_exchange_n(&limit->suppressed, 0, __ATOMIC_RELAXED);
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (missed)
        log_msg_at(level, file, line, "%s (%llu more like this not logged)", msg,
                   (unsigned long long)missed);
    else
        log_msg_at(level, file, line, "%s", msg);
}

void log_limit_flush(struct log_limit *limit, enum log_level level, const char *what)
{
    uint64_t missed = __atomic_exchange_n(&limit->suppressed, 0, __ATOMIC_RELAXED);
    if (missed)
        log_msg(level, "%s: %llu more like this not logged", what, (unsigned long long)missed);
}

uint64_t log_missed_count(void)
{
    return __atomic_load_n(&log_missed, __ATOMIC_RELAXED);
}

uint64_t log_fail_count(void)
{
    return __atomic_load_n(&log_fails, __ATOMIC_RELAXED);
}
