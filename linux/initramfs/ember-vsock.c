/*
 * ember-vsock: the vsock check of ember's test initramfs.
 *
 *   ember-vsock [-C cid] [-c port] [-l port] [-k conns] [-n bytes] [-t seconds]
 *
 *   -c port   connect to cid:port (cid 2, the host, unless -C), send the
 *             data, read the answer
 *   -l port   listen on port, accept connections from the host, read
 *             their data, send the answers
 *   -k conns  connections each way, open at the same time (default 1, max 16)
 *   -n bytes  bytes sent each way (default 65536)
 *   -t secs   give up after this many seconds in all (default 30)
 *
 * Protocol, the same in both directions: the side that opened the
 * connection sends n bytes, byte i being pattern(i) below, and shuts its
 * write side down; the other side checks them all, answers with n bytes
 * pattern(i) ^ 0xff and closes. So each connection carries a stream both
 * ways. The host side is in tests/linux/ (ember_linux_test.py).
 *
 * Prints one summary line on stdout and exits 0 when every stream matched,
 * 1 otherwise, 2 on bad usage; a timeout ends it with SIGALRM.
 *
 * Freestanding (no libc): a static glibc binary would be ~750 KB, and every
 * KB of the initramfs costs boot time on the emulating test hosts.
 */
#include "freestanding.h"

#include <linux/vm_sockets.h>

#define AF_VSOCK_ 40
#define SOCK_STREAM_ 1
#define SHUT_WR_ 1
#define EINTR_ 4

static unsigned char pattern(unsigned long i)
{
    return (unsigned char)(i * 7 + (i >> 10));
}

static unsigned char buf[16384];

/* Sends n bytes of pattern ^ x; returns 0 or a negative errno. */
static long send_all(int fd, unsigned long n, unsigned char x)
{
    unsigned long off = 0;
    while (off < n) {
        unsigned long len = n - off < sizeof(buf) ? n - off : sizeof(buf);
        for (unsigned long i = 0; i < len; i++)
            buf[i] = pattern(off + i) ^ x;
        unsigned long done = 0;
        while (done < len) {
            long r = sys3(__NR_write, fd, buf + done, len - done);
            if (r == -EINTR_)
                continue;
            if (r <= 0)
                return r < 0 ? r : -1;
            done += (unsigned long)r;
        }
        off += len;
    }
    return 0;
}

/*
 * Reads until end of stream and checks pattern ^ x; returns the number of
 * bytes read, or a negative errno. *bad is set to the first wrong offset + 1.
 */
static long recv_all(int fd, unsigned long limit, unsigned char x, unsigned long *bad)
{
    unsigned long off = 0;
    *bad = 0;
    for (;;) {
        long r = sys3(__NR_read, fd, buf, sizeof(buf));
        if (r == -EINTR_)
            continue;
        if (r < 0)
            return r;
        if (r == 0)
            return (long)off;
        for (long i = 0; i < r; i++)
            if (!*bad && (buf[i] != (unsigned char)(pattern(off + (unsigned long)i) ^ x)))
                *bad = off + (unsigned long)i + 1;
        off += (unsigned long)r;
        if (off > limit)
            return (long)off;
    }
}

static int report(const char *what, long r, unsigned long n, unsigned long bad)
{
    if (r < 0) {
        put(what);
        put(": error ");
        putnum((unsigned long)-r);
        flush();
        return 1;
    }
    if ((unsigned long)r != n || bad) {
        put(what);
        put(": got ");
        putnum((unsigned long)r);
        put(" of ");
        putnum(n);
        put(" bytes");
        if (bad) {
            put(", first wrong byte at ");
            putnum(bad - 1);
        }
        flush();
        return 1;
    }
    return 0;
}

#define MAX_CONNS 16

static int do_connect(unsigned int cid, unsigned int port, unsigned long n, unsigned long k)
{
    struct sockaddr_vm sa;
    long fds[MAX_CONNS], r;

    memset(&sa, 0, sizeof(sa));
    sa.svm_family = AF_VSOCK_;
    sa.svm_cid = cid;
    sa.svm_port = port;
    /* All k connections open at once, so the streams run side by side. */
    for (unsigned long i = 0; i < k; i++) {
        /* The host may not listen yet: retry until the alarm ends us. */
        for (;;) {
            fds[i] = sys3(__NR_socket, AF_VSOCK_, SOCK_STREAM_, 0);
            if (fds[i] < 0)
                return report("socket(AF_VSOCK)", fds[i], n, 0);
            r = sys3(__NR_connect, fds[i], &sa, sizeof(sa));
            if (r == 0)
                break;
            sys3(__NR_close, fds[i], 0, 0);
            struct {
                long s, ns;
            } ts = {0, 200000000};
            sys3(__NR_nanosleep, &ts, 0, 0);
        }
    }
    for (unsigned long i = 0; i < k; i++) {
        r = send_all((int)fds[i], n, 0);
        if (r < 0)
            return report("connect: send", r, n, 0);
        sys3(__NR_shutdown, fds[i], SHUT_WR_, 0);
    }
    for (unsigned long i = 0; i < k; i++) {
        unsigned long bad;
        r = recv_all((int)fds[i], n, 0xff, &bad);
        sys3(__NR_close, fds[i], 0, 0);
        if (report("connect: answer", r, n, bad))
            return 1;
    }
    return 0;
}

static int do_listen(unsigned int port, unsigned long n, unsigned long k)
{
    struct sockaddr_vm sa;
    long fd, c[MAX_CONNS], r;
    unsigned long bad;

    memset(&sa, 0, sizeof(sa));
    sa.svm_family = AF_VSOCK_;
    sa.svm_cid = VMADDR_CID_ANY;
    sa.svm_port = port;
    fd = sys3(__NR_socket, AF_VSOCK_, SOCK_STREAM_, 0);
    if (fd < 0)
        return report("socket(AF_VSOCK)", fd, n, 0);
    r = sys3(__NR_bind, fd, &sa, sizeof(sa));
    if (r < 0)
        return report("bind", r, n, 0);
    r = sys3(__NR_listen, fd, (long)k, 0);
    if (r < 0)
        return report("listen", r, n, 0);
    put("# vsock: listening on port ");
    putnum(port);
    flush();
    /* Take all k first: the host opens them together. */
    for (unsigned long i = 0; i < k; i++) {
        c[i] = sys3(__NR_accept, fd, 0, 0);
        if (c[i] < 0)
            return report("accept", c[i], n, 0);
    }
    for (unsigned long i = 0; i < k; i++) {
        r = recv_all((int)c[i], n, 0, &bad);
        if (report("listen: data from the host", r, n, bad))
            return 1;
        r = send_all((int)c[i], n, 0xff);
        sys3(__NR_close, c[i], 0, 0);
        if (report("listen: send", r < 0 ? r : (long)n, n, 0))
            return 1;
    }
    sys3(__NR_close, fd, 0, 0);
    return 0;
}

static int usage(void)
{
    put("usage: ember-vsock [-C cid] [-c port] [-l port] [-k conns] [-n bytes] [-t seconds]");
    flush();
    return 2;
}

static int run(int argc, char **argv)
{
    unsigned long cid = 2, cport = 0, lport = 0, n = 65536, secs = 30, k = 1;
    int have_c = 0, have_l = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        unsigned long *dst;
        if (a[0] != '-' || !a[1] || a[2] || i + 1 >= argc)
            return usage();
        switch (a[1]) {
        case 'C':
            dst = &cid;
            break;
        case 'c':
            dst = &cport;
            have_c = 1;
            break;
        case 'l':
            dst = &lport;
            have_l = 1;
            break;
        case 'n':
            dst = &n;
            break;
        case 't':
            dst = &secs;
            break;
        case 'k':
            dst = &k;
            break;
        default:
            return usage();
        }
        if (parse(argv[++i], dst))
            return usage();
    }
    if ((!have_c && !have_l) || k < 1 || k > MAX_CONNS)
        return usage();

    sys3(__NR_alarm, secs, 0, 0);
    if (have_c && do_connect((unsigned int)cid, (unsigned int)cport, n, k))
        return 1;
    if (have_l && do_listen((unsigned int)lport, n, k))
        return 1;
    if (have_c) {
        put("guest->host port ");
        putnum(cport);
    }
    if (have_l) {
        put(have_c ? ", " : "");
        put("host->guest port ");
        putnum(lport);
    }
    put(": ");
    putnum(k);
    put(k == 1 ? " connection, " : " connections, ");
    putnum(n);
    put(" bytes each way on each matched");
    flush();
    return 0;
}
