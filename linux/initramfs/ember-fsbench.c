/*
 * ember-fsbench: the virtio-fs figures of bench/virtiofs.sh, from inside the guest.
 *
 *   ember-fsbench DIR FILES KIB
 *
 * Makes DIR (it must not exist), creates FILES files in it (open O_CREAT|O_EXCL, a 16-byte
 * write, close), writes DIR/big of KIB KiB in 128 KiB writes and fsyncs it, drops the page
 * cache, then reads DIR/big back in 128 KiB reads, checking every byte. One line on stdout:
 *   fsbench: FILES creates US us, KIB KiB written US us, read US us
 * Exit status 0, or 1 with the failing step named (2: bad usage). Freestanding, as
 * ember-vsock (freestanding.h).
 */
#include "freestanding.h"

#define AT_FDCWD_   (-100)
#define O_WRONLY_   01
#define O_CREAT_    0100
#define O_EXCL_     0200
#define O_TRUNC_    01000
#define CLOCK_MONO_ 1
#define CHUNK       (128 * 1024)
#define PATH_MAX_   256

static unsigned char buf[CHUNK];
static char path[PATH_MAX_];

struct timespec_ {
    long sec, nsec;
};

static unsigned long now_us(void)
{
    struct timespec_ ts;
    sys3(__NR_clock_gettime, CLOCK_MONO_, &ts, 0);
    return (unsigned long)ts.sec * 1000000 + (unsigned long)ts.nsec / 1000;
}

static unsigned char pattern(unsigned long i)
{
    return (unsigned char)(i * 13 + (i >> 12));
}

/* path = dir + "/" + name (+ the number n unless it is ~0). */
static int join(const char *dir, const char *name, unsigned long n)
{
    size_t len = 0;
    for (const char *s = dir; *s; s++)
        if (len < PATH_MAX_ - 32)
            path[len++] = *s;
    path[len++] = '/';
    for (const char *s = name; *s; s++)
        if (len < PATH_MAX_ - 24)
            path[len++] = *s;
    if (n != ~0UL) {
        char d[24];
        int i = sizeof(d);
        do {
            d[--i] = (char)('0' + n % 10);
            n /= 10;
        } while (n);
        while (i < (int)sizeof(d))
            path[len++] = d[i++];
    }
    path[len] = 0;
    return 0;
}

static int fail(const char *what, long err)
{
    put("fsbench: ");
    put(what);
    put(" failed: errno ");
    putnum((unsigned long)-err);
    flush();
    return 1;
}

static int run(int argc, char **argv)
{
    unsigned long files, kib;
    if (argc != 4 || parse(argv[2], &files) || parse(argv[3], &kib) || kib == 0 ||
        kib % (CHUNK / 1024)) {
        put("usage: ember-fsbench DIR FILES KIB (KIB a multiple of 128)");
        flush();
        return 2;
    }
    const char *dir = argv[1];
    long r = sys3(__NR_mkdir, dir, 0755, 0);
    if (r < 0)
        return fail("mkdir", r);

    unsigned long t0 = now_us();
    for (unsigned long i = 0; i < files; i++) {
        join(dir, "c", i);
        long fd = sys6(__NR_openat, AT_FDCWD_, (long)path, O_WRONLY_ | O_CREAT_ | O_EXCL_, 0644, 0, 0);
        if (fd < 0)
            return fail("create", fd);
        r = sys3(__NR_write, fd, "ember fsbench 0\n", 16);
        sys3(__NR_close, fd, 0, 0);
        if (r != 16)
            return fail("small write", r < 0 ? r : -5);
    }
    unsigned long t_create = now_us() - t0;

    join(dir, "big", ~0UL);
    long fd = sys6(__NR_openat, AT_FDCWD_, (long)path, O_WRONLY_ | O_CREAT_ | O_TRUNC_, 0644, 0, 0);
    if (fd < 0)
        return fail("create big", fd);
    t0 = now_us();
    for (unsigned long off = 0; off < kib * 1024; off += CHUNK) {
        for (unsigned long j = 0; j < CHUNK; j++)
            buf[j] = pattern(off + j);
        r = sys3(__NR_write, fd, buf, CHUNK);
        if (r != CHUNK)
            return fail("write", r < 0 ? r : -5);
    }
    r = sys3(__NR_fsync, fd, 0, 0);
    sys3(__NR_close, fd, 0, 0);
    if (r < 0)
        return fail("fsync", r);
    unsigned long t_write = now_us() - t0;

    long dc = sys6(__NR_openat, AT_FDCWD_, (long)"/proc/sys/vm/drop_caches", O_WRONLY_, 0, 0, 0);
    if (dc >= 0) {
        sys3(__NR_write, dc, "3\n", 2);
        sys3(__NR_close, dc, 0, 0);
    }
    fd = sys6(__NR_openat, AT_FDCWD_, (long)path, 0, 0, 0, 0);
    if (fd < 0)
        return fail("open big", fd);
    t0 = now_us();
    unsigned long off = 0;
    for (;;) {
        r = sys3(__NR_read, fd, buf, CHUNK);
        if (r < 0)
            return fail("read", r);
        if (r == 0)
            break;
        for (long j = 0; j < r; j++)
            if (buf[j] != pattern(off + (unsigned long)j))
                return fail("read back (data differs)", -5);
        off += (unsigned long)r;
    }
    sys3(__NR_close, fd, 0, 0);
    unsigned long t_read = now_us() - t0;
    if (off != kib * 1024)
        return fail("read back (short)", -5);

    put("fsbench: ");
    putnum(files);
    put(" creates ");
    putnum(t_create);
    put(" us, ");
    putnum(kib);
    put(" KiB written ");
    putnum(t_write);
    put(" us, read ");
    putnum(t_read);
    put(" us");
    flush();
    return 0;
}
