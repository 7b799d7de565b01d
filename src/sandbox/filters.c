/* ember's seccomp filters, one per thread kind. Each list is what its kind
 * was seen to need over the whole test suite with a learning build (make
 * SECCOMP_LEARN=1, scripts/seccomp-learn.py), plus what code reading shows
 * on paths the tests cannot reach here (vhost-net), each with its reason.
 * Everything a thread does before its filter goes on (opening files,
 * creating the VM, taps, sockets, threads) is absent on purpose.
 * README.md's table counts these lists; a unit test keeps it honest. */
#include "sandbox/filters.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <linux/vhost.h>
#include <signal.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

#define R(name)                                                                                    \
    {                                                                                              \
        .nr = SCMP_SYS(name)                                                                       \
    }
#define R1(name, a)                                                                                \
    {                                                                                              \
        .nr = SCMP_SYS(name), .nconds = 1, .conds = { a }                                          \
    }
#define R2(name, a, b)                                                                             \
    {                                                                                              \
        .nr = SCMP_SYS(name), .nconds = 2, .conds = { a, b }                                       \
    }
#define R3(name, a, b, c)                                                                          \
    {                                                                                              \
        .nr = SCMP_SYS(name), .nconds = 3, .conds = { a, b, c }                                    \
    }
/* Argument i, as 32 bits, equals v. */
#define EQ(i, v)                                                                                   \
    {                                                                                              \
        .index = i, .op = SCMP_CMP_MASKED_EQ, .mask = 0xffffffffu, .value = (uint32_t)(v)          \
    }
/* None of these bits are set in argument i. */
#define NONE_OF(i, bits)                                                                           \
    {                                                                                              \
        .index = i, .op = SCMP_CMP_MASKED_EQ, .mask = (bits), .value = 0                           \
    }
/* These bits of argument i are exactly `value`. */
#define BITS(i, bits, v)                                                                           \
    {                                                                                              \
        .index = i, .op = SCMP_CMP_MASKED_EQ, .mask = (bits), .value = (v)                         \
    }
#define IOCTL(request) R1(ioctl, EQ(1, request))

#define FILTER(list)                                                                               \
    {                                                                                              \
        .default_action = SC_VIOLATION, .filter_action = SCMP_ACT_ALLOW, .rules = list,            \
        .nrules = sizeof(list) / sizeof(list[0])                                                   \
    }

/* vcpu.c's KICK_SIGNAL: SIGRTMIN, which glibc makes 34 (seccomp.c checks). */
#define KICK_SIGNAL_NR 34

/* Every thread: ending itself or the process (the violation report ends it
 * with exit_group too), returning from a signal handler, locks and
 * condition variables, log lines (write). */
#define BASE R(exit), R(exit_group), R(rt_sigreturn), R(futex), R(write)

/* The C library's memory: malloc's arenas and large blocks (anonymous
 * mappings, never executable), giving pages back (MADV_DONTNEED, also how
 * a thread's stack is released when it ends), the signal mask a thread
 * sets as it ends. No file is mapped once a thread runs. */
#define MEMORY                                                                                     \
    R2(mmap, NONE_OF(2, PROT_EXEC), BITS(3, MAP_ANONYMOUS, MAP_ANONYMOUS)),                        \
        R1(mprotect, NONE_OF(2, PROT_EXEC)), R(munmap), R1(madvise, EQ(2, MADV_DONTNEED)),         \
        R(rt_sigprocmask)

/* An event loop (util/eventloop.c, util/iothread.c): waiting, watching
 * descriptors, reading eventfds and timerfds, arming timers. */
#define EVENT_LOOP R(epoll_wait), R(epoll_ctl), R(read), R(timerfd_settime)

/* A device interrupt on a PCI INTx line (the fallback when the driver does
 * not enable MSI-X), which KVM takes as a level on the VM descriptor. */
#define INTX IOCTL(KVM_IRQ_LINE)

/* ---- main thread ---------------------------------------------------------- */

/* API connections (the listening socket exists already). */
#define MAIN_API R(accept4), R(sendto), R(recvfrom)

/* Console input into the serial port raises its interrupt; the terminal's
 * settings are restored at the end. */
#define MAIN_CONSOLE IOCTL(KVM_IRQ_LINE), IOCTL(TCGETS), IOCTL(TCSETS)

/* Pause, resume and stop kick the vCPUs out of KVM_RUN (pthread_kill). */
#define MAIN_KICK R(getpid), R1(tgkill, EQ(2, KICK_SIGNAL_NR))

/* PATCH /drives opens the new image here, not on the device's thread (which
 * opens no file): its checks, its lock, its io_uring and the mapping of
 * that ring, the only file mapping after start (the opening itself is
 * MAIN_OPEN, below). The metrics read the tap's kernel-side drops in sysfs. */
#define MAIN_DRIVE_SWAP                                                                            \
    R(newfstatat), R(fstatfs), R(statx), R(flock), R(preadv2), R(lseek), R(eventfd2),              \
        R(io_uring_setup), R(io_uring_register), R(io_uring_enter),                                \
        R2(mmap, NONE_OF(2, PROT_EXEC), BITS(3, MAP_SHARED | MAP_ANONYMOUS, MAP_SHARED))

/* A request body or answer past malloc's mmap threshold (128 KiB and up, with a larger
 * --http-api-max-payload-size or MMDS document) grows or shrinks by realloc, which moves such
 * a block with mremap. */
#define MAIN_REALLOC R1(mremap, EQ(3, MREMAP_MAYMOVE))

/* PUT /snapshot/create: its two files created (exactly these flags), guest memory written
 * into the memory file with holes for zero pages, the VM-wide KVM state read (the vCPUs
 * read their own), and KVM's log of the guest's writes to RAM read and cleared: which pages
 * a Diff snapshot holds, or none after a Full one (vmm/dirty.c). */
#define MAIN_SNAPSHOT                                                                              \
    R1(openat, EQ(2, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC)), R(pwrite64), R(ftruncate),        \
        IOCTL(KVM_GET_IRQCHIP), IOCTL(KVM_GET_PIT2), IOCTL(KVM_GET_CLOCK),                         \
        IOCTL(KVM_GET_DIRTY_LOG)

/* PUT /migration/send: a stream to the destination (unix or TCP, numeric addresses: no name
 * service), waits bounded by poll, a connection retried while nobody listens yet, guest RAM's
 * memfd passed in local mode, and KVM's dirty log turned on for the memory slots. */
#define MAIN_MIGRATION                                                                             \
    R3(socket, EQ(0, AF_UNIX), EQ(1, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), EQ(2, 0)),       \
        R3(socket, EQ(0, AF_INET), EQ(1, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), EQ(2, 0)),   \
        R3(socket, EQ(0, AF_INET6), EQ(1, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), EQ(2, 0)),  \
        R(connect), R(sendmsg), R(recvmsg), R(poll), R(getsockopt), R(setsockopt),                 \
        R(clock_nanosleep), IOCTL(KVM_SET_USER_MEMORY_REGION)

/* Serving the API, the console's input, the metrics, and the end of the
 * machine (joining threads, closing devices, removing the API socket's
 * file). After InstanceStart. */
#define MAIN_RULES                                                                                 \
    BASE, MEMORY, EVENT_LOOP, R(brk), R(close), R(unlink), MAIN_API, MAIN_CONSOLE, MAIN_KICK,      \
        MAIN_DRIVE_SWAP, MAIN_REALLOC, MAIN_SNAPSHOT, MAIN_MIGRATION

/* Existing files only, once the machine runs. */
#define MAIN_OPEN R1(openat, NONE_OF(2, O_CREAT | O_TRUNC | __O_TMPFILE))

static const struct sc_rule main_rules[] = {MAIN_RULES, MAIN_OPEN};

/* API mode, before InstanceStart: the API shapes the configuration and opens
 * the log and metrics files; the machine itself is built on a thread of its
 * own (api.h). The main filter is added on top at InstanceStart, so this
 * one holds everything that one allows too. */
static const struct sc_rule preboot_rules[] = {
    MAIN_RULES,
    /* PUT /logger, /metrics: files created if missing (MAIN_OPEN after start) */
    R(openat),
    R(timerfd_create),
    /* PUT /network-interfaces attaches its tap, PUT /vsock binds its socket,
     * so that their errors answer those requests (Firecracker's order) */
    IOCTL(TUNSETIFF),
    R3(socket, EQ(0, AF_UNIX), EQ(1, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), EQ(2, 0)),
    R(bind),
    R(listen),
    /* the configuration's checks: files readable, memory not beyond the host's */
    R(access),
    R(sysinfo),
    /* InstanceStart: the main filter goes on top (one thread, no TSYNC) */
    R2(prctl, EQ(0, PR_SET_NO_NEW_PRIVS), EQ(1, 1)),
    R2(seccomp, EQ(0, SECCOMP_SET_MODE_FILTER), EQ(1, 0)),
};

/* ---- vCPUs ----------------------------------------------------------------- */

static const struct sc_rule vcpu_rules[] = {
    BASE,
    MEMORY,
    R(close),
    /* running the guest, and the registers and code bytes of a failure report */
    IOCTL(KVM_RUN),
    IOCTL(KVM_GET_REGS),
    IOCTL(KVM_GET_SREGS),
    IOCTL(KVM_TRANSLATE),
    /* the guest's register writes: legacy devices' interrupt lines (serial,
     * keyboard) and INTx, MSI-X routes and vectors, ioeventfds that follow a
     * BAR the guest moved */
    IOCTL(KVM_IRQ_LINE),
    IOCTL(KVM_SET_GSI_ROUTING),
    IOCTL(KVM_IRQFD),
    IOCTL(KVM_IOEVENTFD),
    /* the guest reads the PBA: what a vhost-user back-end signalled on a masked vector's
     * eventfd (8 bytes, never blocking) becomes its pending bit */
    R1(read, EQ(2, 8)),
    /* the serial port's output waits for a slow stdout */
    R(poll),
    /* the guest's FEATURES_OK on virtio-net tells the tap which offloads it takes */
    IOCTL(TUNSETOFFLOAD),
    /* a stop (guest reset, debug-exit, failure) kicks the other vCPUs */
    R(getpid),
    R(gettid),
    R1(tgkill, EQ(2, KICK_SIGNAL_NR)),
    /* the boot timer's CPU time (--boot-timer): this clock has no vDSO path */
    R1(clock_gettime, EQ(0, CLOCK_PROCESS_CPUTIME_ID)),
    /* a snapshot: each vCPU reads its own state while the machine is paused (vmm/snapshot.c),
     * after finding what this KVM can save (capabilities, the MSR list, MSRs tried one by one) */
    IOCTL(KVM_CHECK_EXTENSION),
    IOCTL(KVM_GET_MSR_INDEX_LIST),
    IOCTL(KVM_GET_MP_STATE),
    IOCTL(KVM_GET_SREGS2),
    IOCTL(KVM_GET_XSAVE),
    IOCTL(KVM_GET_XSAVE2),
    IOCTL(KVM_GET_XCRS),
    IOCTL(KVM_GET_LAPIC),
    IOCTL(KVM_GET_DEBUGREGS),
    IOCTL(KVM_GET_MSRS),
    IOCTL(KVM_GET_VCPU_EVENTS),
    IOCTL(KVM_GET_TSC_KHZ),
    IOCTL(KVM_GET_CPUID2),
    /* PUT /vm/nmi: each vCPU queues the NMI on itself */
    IOCTL(KVM_NMI),
};

/* ---- virtio I/O threads ---------------------------------------------------- */

static const struct sc_rule blk_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    /* io_uring (the ring only carries read, write, fsync, fallocate:
     * util/uring.h), or synchronous I/O */
    R(io_uring_enter),
    R(preadv),
    R(pwritev),
    R(fdatasync),
    R(fallocate),
};

static const struct sc_rule net_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    /* the tap: frames each way (writes batched through io_uring), and the
     * offloads the guest accepted */
    R(readv),
    R(writev),
    R(io_uring_enter),
    IOCTL(TUNSETOFFLOAD),
    /* vhost-net, when /dev/vhost-net exists: the guest's rings handed to the
     * kernel at activation, taken back at reset */
    IOCTL(VHOST_SET_MEM_TABLE),
    IOCTL(VHOST_SET_FEATURES),
    IOCTL(VHOST_SET_VRING_NUM),
    IOCTL(VHOST_SET_VRING_BASE),
    IOCTL(VHOST_GET_VRING_BASE),
    IOCTL(VHOST_SET_VRING_ADDR),
    IOCTL(VHOST_SET_VRING_KICK),
    IOCTL(VHOST_SET_VRING_CALL),
    IOCTL(VHOST_NET_SET_BACKEND),
    /* the kernel's busy polling of each ring, a CPU placement's polling bound */
    IOCTL(VHOST_SET_VRING_BUSYLOOP_TIMEOUT),
};

static const struct sc_rule console_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    /* the guest's output waits for a slow stdout */
    R(poll),
};

static const struct sc_rule rng_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    /* the entropy itself */
    R(getrandom),
};

static const struct sc_rule vsock_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    R(close),
    /* a guest connection to host port P connects to the unix socket PATH_P;
     * host programs connect to PATH */
    R3(socket, EQ(0, AF_UNIX), EQ(1, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), EQ(2, 0)),
    R(connect),
    R2(accept4, EQ(2, 0), EQ(3, SOCK_NONBLOCK | SOCK_CLOEXEC)),
    /* the streams */
    R(sendto),
    R(recvfrom),
    R(sendmsg),
    R(readv),
    R(shutdown),
};

static const struct sc_rule pmem_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    /* FLUSH: the file's mapping written back and synced (mapped, and the
     * file opened, at configuration time) */
    R1(msync, EQ(2, MS_SYNC)),
};

/* A vhost-user device: its data path is the back-end's; the thread sets the back-end up at
 * activation and takes the rings back at reset (messages on the socket, descriptors
 * attached), waits at most 5 s for each reply (poll), closes descriptors a hostile back-end
 * attaches to a reply, relays the back-end's interrupts (eventfd reads) and reconnects. */
static const struct sc_rule vhost_user_rules[] = {
    BASE,
    MEMORY,
    EVENT_LOOP,
    INTX,
    R(sendmsg),
    R(recvmsg),
    R(poll),
    R(close),
    /* reconnecting to a back-end that went away: a new unix socket, its send timeout, the
     * connect, then non-blocking (vhost_user_connect) */
    R2(socket, EQ(0, AF_UNIX), BITS(1, 0xf, SOCK_STREAM)),
    R2(setsockopt, EQ(1, SOL_SOCKET), EQ(2, SO_SNDTIMEO)),
    R(connect),
    R1(fcntl, EQ(1, F_GETFL)),
    R1(fcntl, EQ(1, F_SETFL)),
    /* server mode: a back-end connecting again, and connections beyond the one served
     * (accepted and closed), on the listener made at configuration time */
    R2(accept4, EQ(1, 0), EQ(3, SOCK_NONBLOCK | SOCK_CLOEXEC)),
    /* the back-end's inflight buffer (GET_INFLIGHT_FD): its file's size checked, then mapped
     * shared, never executable */
    R(newfstatat),
    R2(mmap, NONE_OF(2, PROT_EXEC), BITS(3, MAP_SHARED | MAP_ANONYMOUS, MAP_SHARED)),
    /* the request channel a reconnected back-end gets (BACKEND_REQ): a unix stream socketpair */
    R2(socketpair, EQ(0, AF_UNIX), BITS(1, 0xf, SOCK_STREAM)),
};

/* ---- the others ------------------------------------------------------------ */

/* libslirp's poll loop and the host sockets it opens for the guest: its
 * TCP connections and UDP flows (ICMP echo as unprivileged datagrams),
 * never raw sockets; the host's DNS server read from /etc/resolv.conf
 * (stat, then open for reading, when the guest asks 10.0.2.3); connections
 * accepted for --net user,hostfwd=. Seen with strace over Linux guests
 * fetching over HTTP, pinging and resolving, and libslirp 4.7's imports. */
#define SLIRP_SOCKET(family, type) R2(socket, EQ(0, family), BITS(1, 0xf, type))
static const struct sc_rule slirp_rules[] = {
    BASE,
    MEMORY,
    R(read),
    R(poll),
    R(close),
    SLIRP_SOCKET(AF_INET, SOCK_STREAM),
    SLIRP_SOCKET(AF_INET, SOCK_DGRAM),
    SLIRP_SOCKET(AF_INET6, SOCK_STREAM),
    SLIRP_SOCKET(AF_INET6, SOCK_DGRAM),
    R(connect),
    R(accept),
    R(shutdown),
    R(sendto),
    R(recvfrom),
    R(recvmsg),
    R(setsockopt),
    R(getsockopt),
    R(getsockname),
    R(getpeername),
    R1(ioctl, EQ(1, FIONREAD)),
    R1(fcntl, EQ(1, F_GETFL)),
    R1(fcntl, EQ(1, F_SETFL)),
    R(newfstatat),
    R1(openat, NONE_OF(2, O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | __O_TMPFILE)),
};

/* Copies a console input that epoll cannot watch (a regular file) into a
 * pipe, then ends. */
static const struct sc_rule stdin_rules[] = {BASE, R(read), R(close), R(rt_sigprocmask),
                                             R1(madvise, EQ(2, MADV_DONTNEED))};

/* Holds the VM's descriptor until ember dies. Its violation report hands the ending to the main
 * thread (seccomp.c). */
static const struct sc_rule teardown_rules[] = {
    R(write),
    R(exit_group),
    R(exit),
    R1(tgkill, EQ(2, SIGSYS)),
    /* standard error, closed once the filter is on; the VM's descriptor received and kept */
    R(close),
    R(recvmsg),
    /* ember's pidfd: the helper ends after the last thread of ember's group (util/teardown.c) */
    R(ppoll),
};

static const struct sc_filter builtin[SECCOMP_NKINDS] = {
    [SECCOMP_PREBOOT] = FILTER(preboot_rules),   [SECCOMP_MAIN] = FILTER(main_rules),
    [SECCOMP_VCPU] = FILTER(vcpu_rules),         [SECCOMP_BLK] = FILTER(blk_rules),
    [SECCOMP_NET] = FILTER(net_rules),           [SECCOMP_CONSOLE] = FILTER(console_rules),
    [SECCOMP_RNG] = FILTER(rng_rules),           [SECCOMP_VSOCK] = FILTER(vsock_rules),
    [SECCOMP_PMEM] = FILTER(pmem_rules),         [SECCOMP_VHOST_USER] = FILTER(vhost_user_rules),
    [SECCOMP_SLIRP] = FILTER(slirp_rules),       [SECCOMP_STDIN] = FILTER(stdin_rules),
    [SECCOMP_TEARDOWN] = FILTER(teardown_rules),
};

static const char *const kind_names[SECCOMP_NKINDS] = {
    [SECCOMP_PREBOOT] = "preboot",   [SECCOMP_MAIN] = "main",
    [SECCOMP_VCPU] = "vcpu",         [SECCOMP_BLK] = "blk",
    [SECCOMP_NET] = "net",           [SECCOMP_CONSOLE] = "console",
    [SECCOMP_RNG] = "rng",           [SECCOMP_VSOCK] = "vsock",
    [SECCOMP_PMEM] = "pmem",         [SECCOMP_VHOST_USER] = "vhost_user",
    [SECCOMP_SLIRP] = "slirp",       [SECCOMP_STDIN] = "stdin",
    [SECCOMP_TEARDOWN] = "teardown",
};

const char *seccomp_kind_name(enum seccomp_kind kind)
{
    return (unsigned)kind < SECCOMP_NKINDS ? kind_names[kind] : "none";
}

const struct sc_filter *sc_builtin_filter(enum seccomp_kind kind)
{
    return (unsigned)kind < SECCOMP_NKINDS ? &builtin[kind] : NULL;
}

#if defined(__SANITIZE_ADDRESS__)
#define EMBER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMBER_ASAN 1
#endif
#endif

#ifdef EMBER_ASAN
/* What the sanitizers' runtime does in any thread, in test builds only
 * (make test-sanitize; never in the shipped binary): ASan's allocator maps,
 * unmaps and advises memory of its own; its code before every call that
 * does not return (such as the end of a violation report) asks for the
 * signal stack; LeakSanitizer, at exit, stops the world: a tracer thread
 * that attaches to every thread (clone, ptrace, wait4), lists them
 * (open, getdents of /proc/self/task) and yields meanwhile. Seen with a
 * learning build of the sanitizers over the guest, console and API tests. */
static const struct sc_rule sanitizer_rules[] = {
    BASE,        MEMORY, R(madvise),      R(sigaltstack), R(clone),   R(ptrace), R(wait4), R(open),
    R(getdents), R(dup), R(rt_sigaction), R(sched_yield), R(getppid), R(gettid), R(prctl),
};
static const struct sc_filter sanitizer = FILTER(sanitizer_rules);
#endif

const struct sc_filter *sc_sanitizer_allowance(void)
{
#ifdef EMBER_ASAN
    return &sanitizer;
#else
    return NULL;
#endif
}
