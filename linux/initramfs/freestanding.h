/*
 * What the initramfs's freestanding helpers (ember-vsock, ember-fsbench) share: system calls
 * without libc, memset/memcpy for the compiler, a line buffer for stdout, decimal parsing,
 * and the entry point, which calls the program's run(argc, argv) and exits with its status.
 * Each program is one file that includes this once.
 */
#ifndef EMBER_INITRAMFS_FREESTANDING_H
#define EMBER_INITRAMFS_FREESTANDING_H

#include <asm/unistd.h>
#include <stddef.h>

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

static char out[512];
static size_t outlen;

static void put(const char *s)
{
    while (*s && outlen < sizeof(out) - 1)
        out[outlen++] = *s++;
}

static void putnum(unsigned long v)
{
    char b[24];
    int i = sizeof(b);
    b[--i] = 0;
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b + i);
}

static void flush(void)
{
    put("\n");
    sys3(__NR_write, 1, out, outlen);
    outlen = 0;
}

static int parse(const char *s, unsigned long *v)
{
    *v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || *v > 0xffffffffUL)
            return -1;
        *v = *v * 10 + (unsigned long)(*s - '0');
    }
    return 0;
}

static int run(int argc, char **argv);

__attribute__((used)) void ember_main(long *sp)
{
    int rc = run((int)sp[0], (char **)(sp + 1));
    sys3(__NR_exit_group, rc, 0, 0);
    for (;;)
        ;
}

__attribute__((naked, noreturn)) void _start(void)
{
    __asm__ volatile("xor %ebp, %ebp\n\t"
                     "mov %rsp, %rdi\n\t"
                     "and $-16, %rsp\n\t"
                     "call ember_main\n\t"
                     "ud2\n\t");
}

#endif
