/* A minimal printf: enough for TAP lines and diagnostics, formatted into a line buffer. */
#include "guest.h"

struct output {
    char *buf;
    size_t size; /* capacity of buf, 0 for none */
    size_t len;  /* characters produced, also those that did not fit */
};

static void emit(struct output *out, char c)
{
    if (out->len + 1 < out->size)
        out->buf[out->len] = c;
    out->len++;
}

static void emit_padded(struct output *out, const char *s, size_t len, int width, bool left,
                        char pad)
{
    int fill = width > (int)len ? width - (int)len : 0;
    if (!left) {
        /* Zero padding goes after a sign. */
        if (pad == '0' && len > 0 && s[0] == '-') {
            emit(out, '-');
            s++;
            len--;
        }
        for (; fill > 0; fill--)
            emit(out, pad);
    }
    for (size_t i = 0; i < len; i++)
        emit(out, s[i]);
    for (; fill > 0; fill--)
        emit(out, ' ');
}

static size_t format_unsigned(char *buf, uint64_t value, unsigned base, bool upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = digits[value % base];
        value /= base;
    } while (value);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static void format(struct output *out, const char *fmt, va_list args)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(out, *fmt);
            continue;
        }
        fmt++;
        bool left = false;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-')
                left = true;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int longs = 0;
        while (*fmt == 'l' || *fmt == 'z') {
            longs = *fmt == 'z' ? 2 : longs + 1;
            fmt++;
        }
        char num[24];
        size_t len;
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = longs ? va_arg(args, int64_t) : va_arg(args, int);
            uint64_t magnitude = v < 0 ? -(uint64_t)v : (uint64_t)v;
            len = 0;
            if (v < 0)
                num[len++] = '-';
            len += format_unsigned(num + len, magnitude, 10, false);
            emit_padded(out, num, len, width, left, pad);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            uint64_t v = longs ? va_arg(args, uint64_t) : va_arg(args, unsigned);
            len = format_unsigned(num, v, *fmt == 'u' ? 10 : 16, *fmt == 'X');
            emit_padded(out, num, len, width, left, pad);
            break;
        }
        case 'p':
            emit(out, '0');
            emit(out, 'x');
            len = format_unsigned(num, (uint64_t)va_arg(args, void *), 16, false);
            emit_padded(out, num, len, width, left, pad);
            break;
        case 's': {
            const char *s = va_arg(args, const char *);
            if (!s)
                s = "(null)";
            emit_padded(out, s, strlen(s), width, left, ' ');
            break;
        }
        case 'c':
            num[0] = (char)va_arg(args, int);
            emit_padded(out, num, 1, width, left, ' ');
            break;
        case '%':
            emit(out, '%');
            break;
        default: /* unknown conversion (or a lone % at the end): show it */
            emit(out, '%');
            if (!*fmt)
                return;
            emit(out, *fmt);
        }
    }
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    struct output out = {buf, size, 0};
    va_list args;
    va_start(args, fmt);
    format(&out, fmt, args);
    va_end(args);
    if (size)
        buf[out.len < size ? out.len : size - 1] = '\0';
    return (int)out.len;
}

int vprintf(const char *fmt, va_list args)
{
    /* Longer output is cut: one buffer keeps this usable from interrupt handlers. */
    char line[512];
    struct output out = {line, sizeof(line), 0};
    format(&out, fmt, args);
    size_t len = out.len < sizeof(line) ? out.len : sizeof(line) - 1;
    serial_write(line, len);
    return (int)len;
}

int printf(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int len = vprintf(fmt, args);
    va_end(args);
    return len;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i] || !a[i])
            return (unsigned char)a[i] - (unsigned char)b[i];
    }
    return 0;
}
