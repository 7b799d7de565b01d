#include "vmm/kvm.h"

#include "util/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* What ember cannot run without, with the name a user can search for. */
static const struct {
    int cap;
    const char *name;
} required_caps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
};

int kvm_check_cap(const struct kvm *kvm, int cap)
{
    int r = ioctl(kvm->fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

int kvm_open(struct kvm *kvm, const char *path)
{
    memset(kvm, 0, sizeof(*kvm));
    kvm->fd = open(path, O_RDWR | O_CLOEXEC);
    if (kvm->fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return error_set("cannot open %s: no such device; load the kvm module (modprobe "
                             "kvm_intel or kvm_amd) or run on a host with KVM",
                             path);
        if (e == EACCES || e == EPERM)
            return error_set("cannot open %s: permission denied; add your user to group kvm "
                             "(sudo usermod -aG kvm $USER, then log in again) or run as root",
                             path);
        return error_set("cannot open %s: %s", path, strerror(e));
    }
    int version = ioctl(kvm->fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
        error_set("%s speaks KVM API version %d; ember needs version %d", path, version,
                  KVM_API_VERSION);
        kvm_close(kvm);
        return -1;
    }
    for (size_t i = 0; i < sizeof(required_caps) / sizeof(required_caps[0]); i++) {
        if (!kvm_check_cap(kvm, required_caps[i].cap)) {
            error_set("this host's KVM lacks %s, which ember needs", required_caps[i].name);
            kvm_close(kvm);
            return -1;
        }
    }
    int mmap_size = ioctl(kvm->fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size <= 0) {
        error_errno("KVM_GET_VCPU_MMAP_SIZE");
        kvm_close(kvm);
        return -1;
    }
    kvm->vcpu_mmap_size = (size_t)mmap_size;
    kvm->nr_vcpus = (unsigned)kvm_check_cap(kvm, KVM_CAP_NR_VCPUS);
    kvm->max_vcpus = (unsigned)kvm_check_cap(kvm, KVM_CAP_MAX_VCPUS);
    if (kvm->nr_vcpus == 0)
        kvm->nr_vcpus = 4; /* the API's documented default */
    if (kvm->max_vcpus == 0)
        kvm->max_vcpus = kvm->nr_vcpus;
    kvm->max_memslots = (unsigned)kvm_check_cap(kvm, KVM_CAP_NR_MEMSLOTS);
    kvm->tsc_deadline = kvm_check_cap(kvm, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    kvm->x2apic_api = kvm_check_cap(kvm, KVM_CAP_X2APIC_API) > 0;
    return 0;
}

void kvm_close(struct kvm *kvm)
{
    if (kvm->fd >= 0)
        close(kvm->fd);
    kvm->fd = -1;
}

int kvm_create_vm(const struct kvm *kvm)
{
    int fd;
    do {
        fd = ioctl(kvm->fd, KVM_CREATE_VM, 0);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return error_errno("KVM_CREATE_VM");
    return fd;
}
