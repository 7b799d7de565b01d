/* The machine: KVM VM, memory, interrupt controllers, buses, devices and
 * vCPUs, and its lifecycle (create, run, stop, destroy). */
#ifndef EMBER_VMM_VM_H
#define EMBER_VMM_VM_H

#include "arch/x86/boot.h"
#include "arch/x86/cpuid.h"
#include "arch/x86/irqchip.h"
#include "backends/stdio.h"
#include "bus/bus.h"
#include "devices/debug_exit.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "util/eventloop.h"
#include "vmm/kvm.h"
#include "vmm/memory.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define VM_DEFAULT_MEMORY_MIB 128
#define VM_DEFAULT_CPUS       1
#define VM_DEFAULT_CMDLINE    "console=ttyS0 reboot=k panic=1"
#define VM_MIN_MEMORY_MIB     4

struct vm_config {
    const char *kernel_path;
    const char *initrd_path;
    const char *cmdline;
    uint64_t memory_mib;
    unsigned ncpus;
    bool debug_exit;
    enum cpu_template cpu_template;
    const char *kvm_path; /* "/dev/kvm" unless testing */
};

void vm_config_defaults(struct vm_config *cfg);

struct vcpu;

struct vm {
    struct vm_config cfg;
    struct kvm kvm;
    int vm_fd;
    struct guest_memory mem;
    struct irqchip irqchip;
    struct bus pio, mmio;
    struct boot_entry boot;
    struct event_loop loop;
    int signal_fd; /* SIGINT, SIGTERM, SIGHUP, SIGQUIT */
    struct kvm_cpuid2 *supported_cpuid;
    unsigned cpuid_capacity;
    unsigned ncpus;
    struct vcpu *vcpus;

    struct serial com1;
    struct i8042 i8042;
    struct rtc rtc;
    struct debug_exit debug_exit;
    struct stdio_console console;

    pthread_mutex_t stop_lock;
    bool stopping; /* read by vCPU threads, atomically */
    int exit_status;
    int create_status; /* exit status when vm_create fails */
};

/* Builds the machine from cfg; nothing runs yet. Errors via error_get(). */
int vm_create(struct vm *vm, const struct vm_config *cfg);
/* Runs vCPUs and the event loop until the machine stops; returns the
 * process exit status. */
int vm_run(struct vm *vm);
/* Ends the run with status (the first request wins). Any thread. */
void vm_request_stop(struct vm *vm, int status);
bool vm_is_stopping(const struct vm *vm);
void vm_destroy(struct vm *vm);

#endif
