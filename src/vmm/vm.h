/* The machine: KVM VM, memory, interrupt controllers, buses, devices and
 * vCPUs, and its lifecycle (create, run, stop, destroy). */
#ifndef EMBER_VMM_VM_H
#define EMBER_VMM_VM_H

#include "arch/x86/boot.h"
#include "arch/x86/cpuid.h"
#include "arch/x86/irqchip.h"
#include "backends/stdio.h"
#include "bus/bus.h"
#include "bus/pci.h"
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
#define VM_MAX_DRIVES         16

enum virtio_transport_kind { TRANSPORT_PCI, TRANSPORT_MMIO };
enum console_kind { CONSOLE_SERIAL, CONSOLE_VIRTIO };

struct drive_config {
    const char *path;
    const char *id;
    bool readonly;
    bool direct;
    unsigned queues;
};

struct vm_config {
    const char *kernel_path;
    const char *initrd_path;
    const char *cmdline;
    uint64_t memory_mib;
    unsigned ncpus;
    bool debug_exit;
    enum cpu_template cpu_template;
    const char *kvm_path; /* "/dev/kvm" unless testing */
    enum virtio_transport_kind transport;
    enum console_kind console;
    unsigned ndrives;
    struct drive_config drives[VM_MAX_DRIVES];
    bool rng;
    uint64_t rng_rate; /* bytes per second; 0 = unlimited */
    bool blk_sync;     /* synchronous block I/O instead of io_uring */
};

void vm_config_defaults(struct vm_config *cfg);

struct vcpu;
struct vm_virtio;

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

    struct pci_bus pci;
    bool has_pci;
    unsigned nvirtio;
    struct vm_virtio *virtio[VM_MAX_DRIVES + 4];
    unsigned next_mmio_irq;
    struct virtio_console *vconsole;
    char *full_cmdline; /* user command line plus device announcements */

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
