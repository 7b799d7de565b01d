/* The machine: KVM VM, memory, interrupt controllers, buses, devices and
 * vCPUs, and its lifecycle (create, run, stop, destroy). */
#ifndef EMBER_VMM_VM_H
#define EMBER_VMM_VM_H

#include "arch/x86/boot.h"
#include "arch/x86/cpu_template.h"
#include "arch/x86/cpuid.h"
#include "arch/x86/irqchip.h"
#include "backends/stdio.h"
#include "bus/bus.h"
#include "bus/pci.h"
#include "devices/boot_timer.h"
#include "devices/debug_exit.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/serial.h"
#include "util/eventloop.h"
#include "util/ratelimit.h"
#include "vmm/kvm.h"
#include "vmm/memory.h"
#include "vmm/placement.h"

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
    const char *socket; /* instead of path: a vhost-user-blk back-end listening here */
    const char *id;
    bool readonly;
    bool direct;  /* cache=none: O_DIRECT */
    bool unsafe;  /* flushes ignored, not offered (Firecracker's "Unsafe") */
    int engine;   /* enum blk_engine: auto (0), io_uring, synchronous */
    bool is_root; /* becomes /dev/vda and root= on the command line */
    const char *partuuid;
    unsigned queues;
    unsigned poll_us;     /* iothread polls the rings this long after work */
    unsigned reconnect_s; /* vhost-user: how long to wait for a back-end that went away */
    struct rate_limit_config rate_limit;
    char *storage; /* --drive: the copy of its spec the strings point into */
};

#define VM_MAX_NETS 16
/* virtio-mmio devices with an interrupt line each (vmm/devices.c). */
#define VM_MAX_MMIO_DEVICES 19

struct net_config {
    const char *id;       /* the API's iface_id */
    const char *tap;      /* host tap name (Firecracker's host_dev_name) */
    bool has_tap_fd;      /* tap attached already (the API's PUT): a descriptor of it, */
    int tap_fd;           /* which the device takes over */
    bool user;            /* user-mode networking instead of a tap */
    const char *forwards; /* user: "tcp:HOSTPORT:GUESTPORT" items, '+'-separated */
    uint8_t mac[6];
    bool has_mac;
    unsigned mtu;    /* 0: not announced */
    int vhost;       /* enum vhost_mode: auto (0), off, on */
    uint64_t sndbuf; /* tap: the socket's send buffer in bytes; 0: the kernel's (unlimited) */
    struct rate_limit_config rx_limit, tx_limit;
    uint32_t mmds_ipv4; /* MMDS answers at this address (host order) on this interface; 0: no */
    /* instead of tap/user: a vhost-user-net back-end's socket (virtio/vhost_user_net.h) */
    const char *vhost_user_socket;
    bool vhost_user_server; /* ember listens on it, the back-end connects */
    unsigned reconnect_s;   /* vhost-user: how long to wait for a back-end that went away */
};

/* virtio-pmem: a host file as guest persistent memory (virtio/pmem.h). */
#define VM_MAX_PMEM 16
struct pmem_config {
    const char *id; /* the API's id */
    const char *path;
    bool readonly;
    bool is_root; /* root=/dev/pmemN on the command line */
    struct rate_limit_config rate_limit;
};

/* virtio-fs through a vhost-user back-end (virtio/vhost_user_fs.h). */
#define VM_MAX_FS 8
struct fs_config {
    const char *id;       /* the API's fs_id */
    const char *tag;      /* what the guest mounts by */
    const char *socket;   /* the back-end (virtiofsd) listening here */
    unsigned num_queues;  /* request queues; 0: 1 */
    unsigned reconnect_s; /* how long to wait for a back-end that went away; 0: never */
    char *storage;        /* --fs: the copy of its spec the strings point into */
};

struct mmds_store;

/* Firecracker's vsock: guest CID and the host's unix socket. */
struct vsock_config {
    const char *id;       /* the API's vsock_id */
    uint64_t guest_cid;   /* any 32-bit value, as Firecracker takes it */
    const char *uds_path; /* NULL: no vsock device; PATH: host connections; PATH_<port>:
                           * guest connections */
    bool has_listen_fd;   /* PATH bound and listening already (the API's PUT): a */
    int listen_fd;        /* descriptor of it, which the device takes over */
    bool path_shared;     /* another process's socket too (a migration's source): the device
                           * leaves PATH in place when it ends, until vm_vsock_own_path */
};

/* Where guest RAM comes from: fresh memory for a boot, or a snapshot's memory
 * (vmm/snapshot.c) through its file or a page-fault handler process. */
enum vm_ram_source { VM_RAM_FRESH, VM_RAM_FILE, VM_RAM_UFFD, VM_RAM_GIVEN };

struct vm_config {
    const char *kernel_path;
    const char *initrd_path;
    const char *cmdline;
    uint64_t memory_mib;
    unsigned ncpus;
    bool debug_exit;
    bool boot_timer; /* Firecracker's boot timer device (devices/boot_timer.h) */
    bool hugetlb;    /* guest RAM from the host's 2 MiB hugetlbfs pages */
    bool ram_shared; /* guest RAM in a memfd, mapped shared (guest_memory_map_memfd) */
    /* KVM logs the guest's writes to RAM and ember its own (vmm/dirty.h): Diff snapshots */
    bool track_dirty_pages;
    /* PUT /serial: the serial port's output to this descriptor (a file or
     * FIFO, non-blocking, the caller's) instead of stdout; input stays stdin. */
    bool has_serial_out;
    int serial_out_fd;
    enum cpu_template cpu_template;
    const struct cpu_modifiers *custom_cpu; /* a custom template (PUT /cpu-config), or NULL */
    bool smt;                               /* two threads per core in the CPUID topology */
    const char *kvm_path;                   /* "/dev/kvm" unless testing */
    enum virtio_transport_kind transport;
    enum console_kind console;
    unsigned ndrives;
    struct drive_config drives[VM_MAX_DRIVES];
    bool rng;
    uint64_t rng_rate;                    /* bytes per second; 0 = unlimited */
    struct token_bucket_config rng_limit; /* when set (size > 0), overrides rng_rate */
    bool blk_sync;                        /* synchronous block I/O instead of io_uring */
    unsigned nnets;
    struct net_config nets[VM_MAX_NETS];
    struct vsock_config vsock;
    unsigned npmem;
    struct pmem_config pmem[VM_MAX_PMEM];
    unsigned nfs;
    struct fs_config fs[VM_MAX_FS];
    struct mmds_store *mmds; /* the metadata the interfaces with mmds_ipv4 serve */
    /* Restoring a snapshot: RAM from ram_fd (VM_RAM_FILE) or through the handler listening
     * on ram_uffd_path (VM_RAM_UFFD); no kernel is loaded; each vCPU gets the CPUID it had
     * (restore_cpuid[i]) instead of one made from the templates. */
    enum vm_ram_source ram_source;
    int ram_fd;
    const char *ram_uffd_path;
    struct guest_memory *ram_given; /* VM_RAM_GIVEN (live migration): taken over */
    struct kvm_cpuid2 *const *restore_cpuid;
    /* --cpu-placement, machine-config's cpu_placement: the host CPUs of ember's threads
     * (vmm/placement.h); not set: affinity left as ember started with */
    struct cpu_placement placement;
};

void vm_config_defaults(struct vm_config *cfg);

struct vcpu;
struct vm_virtio;
struct virtio_pmem;

struct vm {
    struct vm_config cfg;
    struct kvm kvm;
    int vm_fd;
    struct guest_memory mem;
    struct irqchip irqchip;
    struct bus pio, mmio;
    struct boot_entry boot;
    struct event_loop *loop; /* the main thread's, borrowed */
    struct kvm_cpuid2 *supported_cpuid;
    unsigned cpuid_capacity;
    unsigned ncpus;
    struct vcpu *vcpus;

    struct serial com1;
    struct i8042 i8042;
    struct rtc rtc;
    struct debug_exit debug_exit;
    struct boot_timer boot_timer;
    struct stdio_console console;

    struct pci_bus pci;
    bool has_pci;
    unsigned nvirtio;
    struct vm_virtio *virtio[VM_MAX_DRIVES + VM_MAX_NETS + VM_MAX_PMEM + 4];
    /* pmem devices, mapped and placed before the irqchip exists (a memory
     * slot is cheaper then); attached with the other devices, which then
     * own them (NULL here) */
    struct virtio_pmem *pmem[VM_MAX_PMEM];
    unsigned next_mmio_irq;
    struct virtio_console *vconsole;
    char *full_cmdline; /* user command line plus device announcements */

    pthread_mutex_t stop_lock; /* stop and pause state */
    pthread_cond_t pause_cond;
    bool stopping; /* read by vCPU threads, atomically */
    bool paused;
    unsigned parked; /* vCPUs waiting while paused */
    bool started, console_attached;
    /* vm_run_on_vcpus: work each parked vCPU runs once on its own thread. */
    int (*vcpu_work)(struct vcpu *vcpu, void *arg);
    void *vcpu_work_arg;
    unsigned vcpu_work_gen, vcpu_work_done;
    bool vcpu_work_failed;
    char vcpu_work_error[256];
    bool migrated;   /* handed over to another ember: its devices are left as they are */
    int uffd_socket; /* VM_RAM_UFFD: the connection to the page-fault handler, kept open */
    int exit_status;
    int create_status; /* exit status when vm_create fails */
};

/* Builds the machine from cfg; nothing runs yet. loop is the main thread's
 * event loop: ember stops it when the machine stops. Errors via
 * error_get(); vm->create_status says which exit status fits. */
int vm_create(struct vm *vm, const struct vm_config *cfg, struct event_loop *loop);
/* Starts the vCPUs; with attach_console, stdin/stdout become the guest's
 * console (on the loop). */
int vm_start(struct vm *vm, bool attach_console);
/* After the loop stopped: stops and joins the vCPUs; returns the exit
 * status the machine ended with. */
int vm_finish(struct vm *vm);
/* Parks every vCPU outside KVM_RUN (returns when all are parked) / lets
 * them run again. Devices keep serving what is in flight. */
int vm_pause(struct vm *vm);
int vm_resume(struct vm *vm);
bool vm_is_paused(struct vm *vm);
/* Called by a vCPU thread that was kicked: waits while the VM is paused,
 * running the work vm_run_on_vcpus hands it. */
void vm_vcpu_park(struct vm *vm, struct vcpu *vcpu);
/* While paused: every vCPU runs fn once on its own thread (vCPU ioctls belong
 * there, under its seccomp filter). Returns when all have, -1 with the first
 * failure's error. */
int vm_run_on_vcpus(struct vm *vm, int (*fn)(struct vcpu *vcpu, void *arg), void *arg);
/* An NMI to every vCPU (each queues it on its own thread, the machine paused for the
 * moment if it was running): what a user sends a hung guest for its backtraces. */
int vm_inject_nmi(struct vm *vm);
/* Ends the run with status (the first request wins). Any thread. */
void vm_request_stop(struct vm *vm, int status);
bool vm_is_stopping(const struct vm *vm);
void vm_destroy(struct vm *vm);
/* KVM's dirty page log on guest RAM's slots, on or off (live migration turns it on for its
 * duration). */
int vm_set_dirty_logging(struct vm *vm, bool on);

#endif
