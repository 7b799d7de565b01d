/* One thread per vCPU running KVM_RUN and dispatching its exits. */
#ifndef EMBER_VMM_VCPU_H
#define EMBER_VMM_VCPU_H

#include "util/latency.h"

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct vm;

enum vcpu_exit_kind {
    VCPU_EXIT_IO_IN,
    VCPU_EXIT_IO_OUT,
    VCPU_EXIT_MMIO_READ,
    VCPU_EXIT_MMIO_WRITE
};

struct vcpu {
    struct vm *vm;
    unsigned id;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    bool started;
    unsigned work_seen; /* the last vm_run_on_vcpus work this vCPU ran */
    /* Counters for the metrics (this vCPU's thread writes them). */
    uint64_t exits, io_in_exits, io_out_exits, mmio_read_exits, mmio_write_exits, intr_exits;
    uint64_t unhandled_io;
    uint64_t failures; /* runs that ended in an error: KVM_RUN failed, or an exit ending the VM */
    struct latency_stats exit_times[4]; /* handling an exit, by enum vcpu_exit_kind */
};

/* Creates vCPU id with its CPUID and, for vCPU 0, the boot registers. */
int vcpu_create(struct vcpu *vcpu, struct vm *vm, unsigned id);
int vcpu_start(struct vcpu *vcpu);
/* Makes a vCPU leave KVM_RUN soon (any thread). */
void vcpu_kick(struct vcpu *vcpu);
void vcpu_join(struct vcpu *vcpu);
void vcpu_destroy(struct vcpu *vcpu);
/* Installs the signal used to kick vCPUs out of KVM_RUN (once per process). */
int vcpu_init_kick_signal(void);

#endif
