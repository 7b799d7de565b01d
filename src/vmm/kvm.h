/* The KVM system device: opening it, checking the API version and every
 * capability ember relies on, and creating a VM. */
#ifndef EMBER_VMM_KVM_H
#define EMBER_VMM_KVM_H

#include <stdbool.h>
#include <stddef.h>

struct kvm {
    int fd; /* /dev/kvm */
    size_t vcpu_mmap_size;
    unsigned max_vcpus; /* hard limit per VM */
    unsigned nr_vcpus;  /* recommended limit */
    unsigned max_memslots;
    bool tsc_deadline; /* LAPIC TSC-deadline timer available */
    bool x2apic_api;
};

/* Opens path (normally "/dev/kvm") and checks the API and capabilities.
 * On failure the error says what to do about it. */
int kvm_open(struct kvm *kvm, const char *path);
void kvm_close(struct kvm *kvm);
/* KVM_CHECK_EXTENSION on the system fd. */
int kvm_check_cap(const struct kvm *kvm, int cap);
int kvm_create_vm(const struct kvm *kvm);

#endif
