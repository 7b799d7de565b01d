/*
 * LD_PRELOAD helper for bench/kvmstat: KVM answers KVM_GET_STATS_FD only to the process that
 * created the VM, so this library asks on its behalf, right after each KVM_CREATE_VM and
 * KVM_CREATE_VCPU, and keeps the statistics descriptors open. kvmstat then copies them out
 * with pidfd_getfd() and reads them; reading needs no particular process. Works for any VMM
 * that calls ioctl() through the C library (ember, QEMU).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/ioctl.h>

typedef int (*ioctl_fn)(int, unsigned long, ...);

int ioctl(int fd, unsigned long request, ...)
{
    static ioctl_fn real;
    if (!real)
        real = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int r = real(fd, request, arg);
    if (r >= 0 && (request == KVM_CREATE_VM || request == KVM_CREATE_VCPU))
        real(r, KVM_GET_STATS_FD, NULL); /* the descriptor stays open on purpose */
    return r;
}
