#include "vmm/vm.h"

#include "arch/x86/layout.h"
#include "arch/x86/mptable.h"
#include "util/error.h"
#include "util/log.h"
#include "util/teardown.h"
#include "virtio/console.h"
#include "vmm/devices.h"
#include "vmm/exit_status.h"
#include "vmm/vcpu.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

void vm_config_defaults(struct vm_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->cmdline = VM_DEFAULT_CMDLINE;
    cfg->memory_mib = VM_DEFAULT_MEMORY_MIB;
    cfg->ncpus = VM_DEFAULT_CPUS;
    cfg->cpu_template = CPU_TEMPLATE_HOST;
    cfg->kvm_path = "/dev/kvm";
    cfg->transport = TRANSPORT_PCI;
    cfg->console = CONSOLE_SERIAL;
    cfg->rng_rate = 1 << 20;
}

bool vm_is_stopping(const struct vm *vm)
{
    return __atomic_load_n(&vm->stopping, __ATOMIC_ACQUIRE);
}

void vm_request_stop(struct vm *vm, int status)
{
    pthread_mutex_lock(&vm->stop_lock);
    bool first = !vm->stopping;
    if (first) {
        vm->exit_status = status;
        __atomic_store_n(&vm->stopping, true, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&vm->pause_cond); /* parked vCPUs and pausers */
    }
    pthread_mutex_unlock(&vm->stop_lock);
    if (!first)
        return;
    /* Stop every vCPU at once so nothing runs past the event that ended
     * the machine, then let the main loop finish up. */
    for (unsigned i = 0; i < vm->ncpus; i++)
        vcpu_kick(&vm->vcpus[i]);
    if (vm->loop)
        event_loop_stop(vm->loop);
}

/* ---- device glue ----------------------------------------------------- */

static void com1_set_irq(void *opaque, int level)
{
    struct vm *vm = opaque;
    if (irqchip_set_line(&vm->irqchip, SERIAL_COM1_IRQ, level) < 0)
        log_error("serial: %s", error_get());
}

static void keyboard_set_irq(void *opaque, int level)
{
    struct vm *vm = opaque;
    if (irqchip_set_line(&vm->irqchip, I8042_KBD_IRQ, level) < 0)
        log_error("i8042: %s", error_get());
}

static size_t com1_deliver(void *opaque, const uint8_t *buf, size_t len)
{
    return serial_receive(opaque, buf, len);
}

static size_t vconsole_deliver(void *opaque, const uint8_t *buf, size_t len)
{
    return virtio_console_receive(opaque, buf, len);
}

static void com1_rx_space(void *opaque)
{
    struct vm *vm = opaque;
    stdio_console_resume(&vm->console);
}

static void on_guest_reset(void *opaque)
{
    struct vm *vm = opaque;
    log_info("guest reset the machine through the i8042");
    vm_request_stop(vm, EXIT_OK);
}

static void on_debug_exit(void *opaque, int status)
{
    struct vm *vm = opaque;
    log_info("guest wrote the debug-exit port: exit status %d", status);
    vm_request_stop(vm, status);
}

static void on_console_quit(void *opaque)
{
    struct vm *vm = opaque;
    fprintf(stderr, "\r\nember: quit from the console (Ctrl-A x)\r\n");
    vm_request_stop(vm, EXIT_OK);
}

static void com1_output(void *opaque, const uint8_t *buf, size_t len)
{
    struct vm *vm = opaque;
    stdio_console_output(&vm->console, buf, len);
}

static int create_devices(struct vm *vm)
{
    struct serial_ops ops = {
        .set_irq = com1_set_irq,
        .output = com1_output,
        .rx_space = com1_rx_space,
        .opaque = vm,
    };
    serial_init(&vm->com1, &ops);
    i8042_init(&vm->i8042, on_guest_reset, vm);
    i8042_connect_irq(&vm->i8042, keyboard_set_irq, vm);
    uint64_t below = vm->mem.regions[0].size;
    uint64_t above = vm->mem.nregions > 1 ? vm->mem.regions[1].size : 0;
    rtc_init(&vm->rtc, below, above);
    vm->debug_exit = (struct debug_exit){.on_exit = on_debug_exit, .opaque = vm};

    if (bus_register(&vm->pio, SERIAL_COM1_BASE, 8, serial_io, &vm->com1, "serial (COM1)") < 0 ||
        bus_register(&vm->pio, I8042_DATA_PORT, 1, i8042_data_io, &vm->i8042, "i8042 data") < 0 ||
        bus_register(&vm->pio, I8042_COMMAND_PORT, 1, i8042_command_io, &vm->i8042,
                     "i8042 command") < 0 ||
        bus_register(&vm->pio, RTC_PORT, RTC_PORT_LEN, rtc_io, &vm->rtc, "rtc") < 0)
        return -1;
    if (vm->cfg.debug_exit && bus_register(&vm->pio, DEBUG_EXIT_PORT, DEBUG_EXIT_SIZE,
                                           debug_exit_io, &vm->debug_exit, "debug-exit") < 0)
        return -1;
    if (vm->cfg.boot_timer && bus_register(&vm->mmio, BOOT_TIMER_ADDR, BOOT_TIMER_SIZE,
                                           boot_timer_io, &vm->boot_timer, "boot timer") < 0)
        return -1;
    return 0;
}

/* ---- creation -------------------------------------------------------- */

static int set_memory_regions(struct vm *vm)
{
    if (vm->cfg.track_dirty_pages && guest_memory_track_dirty(&vm->mem) < 0)
        return -1;
    for (unsigned i = 0; i < vm->mem.nregions; i++) {
        const struct guest_region *r = &vm->mem.regions[i];
        struct kvm_userspace_memory_region region = {
            .slot = i,
            .flags = vm->cfg.track_dirty_pages ? KVM_MEM_LOG_DIRTY_PAGES : 0,
            .guest_phys_addr = r->gpa,
            .memory_size = r->size,
            .userspace_addr = (uintptr_t)r->hva,
        };
        if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
            return error_errno("KVM_SET_USER_MEMORY_REGION (slot %u, %llu MiB)", i,
                               (unsigned long long)(r->size >> 20));
    }
    return 0;
}

int vm_set_dirty_logging(struct vm *vm, bool on)
{
    for (unsigned i = 0; i < vm->mem.nregions; i++) {
        const struct guest_region *r = &vm->mem.regions[i];
        struct kvm_userspace_memory_region region = {
            .slot = i,
            .flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
            .guest_phys_addr = r->gpa,
            .memory_size = r->size,
            .userspace_addr = (uintptr_t)r->hva,
        };
        if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
            return error_errno("KVM_SET_USER_MEMORY_REGION (dirty logging %s, slot %u)",
                               on ? "on" : "off", i);
    }
    return 0;
}

static int load_kernel(struct vm *vm)
{
    const struct vm_config *cfg = &vm->cfg;
    int kfd = open(cfg->kernel_path, O_RDONLY | O_CLOEXEC);
    if (kfd < 0)
        return error_errno("cannot open kernel '%s'", cfg->kernel_path);
    struct stat st;
    if (fstat(kfd, &st) < 0) {
        close(kfd);
        return error_errno("cannot stat kernel '%s'", cfg->kernel_path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(kfd);
        return error_set("kernel '%s' is not a regular file", cfg->kernel_path);
    }
    if (st.st_size == 0) {
        close(kfd);
        return error_set("kernel '%s' is empty", cfg->kernel_path);
    }
    if ((uint64_t)st.st_size > vm->mem.ram_size) {
        close(kfd);
        return error_set("kernel '%s' (%lld KiB) is larger than guest memory (%llu MiB); raise "
                         "--memory",
                         cfg->kernel_path, (long long)st.st_size >> 10,
                         (unsigned long long)(vm->mem.ram_size >> 20));
    }
    void *image = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, kfd, 0);
    close(kfd);
    if (image == MAP_FAILED)
        return error_errno("cannot map kernel '%s'", cfg->kernel_path);

    struct boot_request req = {
        .kernel = image,
        .kernel_size = (size_t)st.st_size,
        .initrd_fd = -1,
        .cmdline = vm->full_cmdline,
    };
    int ifd = -1;
    if (cfg->initrd_path) {
        ifd = open(cfg->initrd_path, O_RDONLY | O_CLOEXEC);
        if (ifd < 0) {
            munmap(image, (size_t)st.st_size);
            return error_errno("cannot open initrd '%s'", cfg->initrd_path);
        }
        struct stat ist;
        if (fstat(ifd, &ist) < 0 || !S_ISREG(ist.st_mode)) {
            close(ifd);
            munmap(image, (size_t)st.st_size);
            return error_set("initrd '%s' is not a regular file", cfg->initrd_path);
        }
        req.initrd_fd = ifd;
        req.initrd_size = (uint64_t)ist.st_size;
    }
    int r = boot_load(&vm->mem, &req, &vm->boot);
    if (r < 0 && cfg->initrd_path && strstr(error_get(), "initrd"))
        error_prefix("initrd '%s'", cfg->initrd_path);
    else if (r < 0)
        error_prefix("kernel '%s'", cfg->kernel_path);
    if (ifd >= 0)
        close(ifd);
    munmap(image, (size_t)st.st_size);
    if (r == 0)
        log_info("loaded %s kernel, entry 0x%llx%s", vm->boot.format,
                 (unsigned long long)vm->boot.entry, vm->boot.initrd_size ? ", with initrd" : "");
    return r;
}

static int write_mptable(struct vm *vm)
{
    struct mptable_params p = {
        .ncpus = vm->ncpus,
        .ioapic_addr = LAYOUT_IOAPIC,
        .lapic_addr = LAYOUT_LAPIC,
        .pci_slots = vm_pci_slots(vm),
        /* Without PCI, pins 16-23 are ISA lines for virtio-mmio devices. */
        .isa_irqs = vm->has_pci ? 16 : MPTABLE_MAX_ISA_IRQS,
    };
    struct kvm_cpuid_entry2 *leaf1 = cpuid_find(vm->supported_cpuid, 1, 0);
    if (leaf1) {
        p.cpu_signature = leaf1->eax;
        p.cpu_features = leaf1->edx;
    }
    return mptable_write(&vm->mem, LAYOUT_MPTABLE, &p) < 0 ? -1 : 0;
}

/* The templates change KVM's supported CPUID once, before each vCPU's
 * copy gets its topology (cpuid_filter); the MSR changes follow per vCPU
 * (vcpu_create). */
static int apply_cpu_templates(struct vm *vm)
{
    const struct cpu_modifiers *mods[2] = {cpu_template_modifiers(vm->cfg.cpu_template),
                                           vm->cfg.custom_cpu};
    if (cpu_template_check_vendor(vm->supported_cpuid, vm->cfg.cpu_template) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (!mods[i])
            continue;
        for (unsigned k = 0; k < mods[i]->ncaps; k++) {
            const struct kvm_cap_modifier *cap = &mods[i]->caps[k];
            if (!cap->remove && kvm_check_cap(&vm->kvm, (int)cap->cap) <= 0)
                return error_set("Missing KVM capabilities: %#x", cap->cap);
        }
        if (cpu_modifiers_apply_cpuid(vm->supported_cpuid, mods[i]) < 0)
            return -1;
    }
    return 0;
}

int vm_create(struct vm *vm, const struct vm_config *cfg, struct event_loop *loop)
{
    memset(vm, 0, sizeof(*vm));
    vm->vm_fd = -1;
    vm->kvm.fd = -1;
    vm->loop = loop;
    vm->cfg = *cfg;
    vm->ncpus = cfg->ncpus;
    /* Firecracker's boot timer counts from the request to build the machine. */
    boot_timer_init(&vm->boot_timer);
    pthread_mutex_init(&vm->stop_lock, NULL);
    pthread_cond_init(&vm->pause_cond, NULL);
    bus_init(&vm->pio, "pio");
    bus_init(&vm->mmio, "mmio");

    vm->create_status = EXIT_HOST_ERROR;
    if (kvm_open(&vm->kvm, cfg->kvm_path) < 0)
        return -1;
    unsigned max_cpus = vm->kvm.max_vcpus < MPTABLE_MAX_CPUS ? vm->kvm.max_vcpus : MPTABLE_MAX_CPUS;
    vm->create_status = EXIT_USAGE; /* what the user asked for cannot be done */
    if (cfg->ncpus == 0 || cfg->ncpus > max_cpus)
        return error_set("--cpus %u: this host allows 1 to %u vCPUs", cfg->ncpus, max_cpus);
    if (cpu_placement_check_host(&cfg->placement, cfg->ncpus) < 0)
        return error_prefix("CPU placement");
    vm->create_status = EXIT_HOST_ERROR;
    /* Before any of the machine's threads exists: each inherits the reserved CPUs from the
     * thread that makes it (each vCPU thread then moves itself to its own: vcpu.c). */
    if (cpu_placement_apply(&cfg->placement) < 0)
        return -1;
    vm->supported_cpuid = cpuid_get_supported(vm->kvm.fd, 8, &vm->cpuid_capacity);
    if (!vm->supported_cpuid)
        return -1;
    vm->create_status = EXIT_USAGE; /* a template this host cannot apply */
    if (apply_cpu_templates(vm) < 0)
        return -1;
    vm->create_status = EXIT_HOST_ERROR;
    vm->vm_fd = kvm_create_vm(&vm->kvm);
    if (vm->vm_fd < 0)
        return -1;
    /* Its destruction (RCU grace periods) happens in the teardown helper, after ember's exit. */
    async_teardown_keep(vm->vm_fd);
    /* Memory before the irqchip: on some hosts a memslot change costs a
     * grace period per in-kernel device already registered. */
    vm->uffd_socket = -1;
    if (cfg->ram_source == VM_RAM_FILE) {
        vm->create_status = EXIT_USAGE; /* the snapshot's memory file */
        if (guest_memory_map_file(&vm->mem, cfg->ram_fd, cfg->memory_mib << 20,
                                  LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END) < 0)
            return -1;
        vm->create_status = EXIT_HOST_ERROR;
    } else if (cfg->ram_source == VM_RAM_GIVEN) {
        if (cfg->ram_given->ram_size != cfg->memory_mib << 20)
            return error_set("the memory received holds %llu bytes, not %llu MiB",
                             (unsigned long long)cfg->ram_given->ram_size,
                             (unsigned long long)cfg->memory_mib);
        vm->mem = *cfg->ram_given;
        memset(cfg->ram_given, 0, sizeof(*cfg->ram_given));
    } else if (cfg->ram_source == VM_RAM_UFFD) {
        vm->create_status = EXIT_USAGE; /* the page-fault handler */
        if (guest_memory_map_uffd(&vm->mem, cfg->ram_uffd_path, cfg->memory_mib << 20,
                                  LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END, cfg->hugetlb, 0,
                                  &vm->uffd_socket) < 0)
            return -1;
        vm->create_status = EXIT_HOST_ERROR;
    } else if (cfg->hugetlb && (cfg->ram_shared || vm_config_wants_vhost_user(cfg))) {
        /* Shared and huge: a memfd from the hugetlbfs pool. */
        vm->create_status = EXIT_USAGE; /* the host's pool is the operator's to fill */
        if (guest_memory_map_memfd_hugetlb(&vm->mem, cfg->memory_mib << 20, LAYOUT_MMIO_HOLE_START,
                                           LAYOUT_MMIO_HOLE_END) < 0)
            return -1;
        vm->create_status = EXIT_HOST_ERROR;
    } else if (cfg->ram_shared || vm_config_wants_vhost_user(cfg)) {
        /* A vhost-user back-end maps guest RAM itself: it must be a shared memfd. */
        if (guest_memory_map_memfd(&vm->mem, cfg->memory_mib << 20, LAYOUT_MMIO_HOLE_START,
                                   LAYOUT_MMIO_HOLE_END) < 0)
            return -1;
    } else if (cfg->hugetlb) {
        vm->create_status = EXIT_USAGE; /* the host's pool is the operator's to fill */
        if (guest_memory_map_hugetlb(&vm->mem, cfg->memory_mib << 20, LAYOUT_MMIO_HOLE_START,
                                     LAYOUT_MMIO_HOLE_END) < 0)
            return -1;
        vm->create_status = EXIT_HOST_ERROR;
    } else if (guest_memory_map(&vm->mem, cfg->memory_mib << 20, LAYOUT_MMIO_HOLE_START,
                                LAYOUT_MMIO_HOLE_END) < 0) {
        return -1;
    }
    if (set_memory_regions(vm) < 0)
        return -1;
    vm->create_status = EXIT_USAGE; /* a pmem file that cannot be had */
    if (vm_create_pmem_regions(vm) < 0)
        return -1;
    vm->create_status = EXIT_HOST_ERROR;
    if (irqchip_create(&vm->irqchip, vm->vm_fd) < 0)
        return -1;
    vm->create_status = EXIT_USAGE; /* bad drive files, bad images */
    if (create_devices(vm) < 0 || vm_create_virtio_devices(vm) < 0)
        return -1;
    vm->create_status = EXIT_HOST_ERROR;
    /* Every device's interrupt routes in one call (one grace period). */
    if (irqchip_finish_setup(&vm->irqchip) < 0)
        return -1;
    vm->create_status = EXIT_USAGE;
    /* A restored machine's memory holds its kernel and tables already. */
    if (cfg->ram_source == VM_RAM_FRESH && load_kernel(vm) < 0)
        return -1;
    vm->create_status = EXIT_HOST_ERROR;
    if (cfg->ram_source == VM_RAM_FRESH && write_mptable(vm) < 0)
        return -1;

    vm->vcpus = calloc(vm->ncpus, sizeof(*vm->vcpus));
    if (!vm->vcpus)
        return error_set("out of memory");
    for (unsigned i = 0; i < vm->ncpus; i++)
        vm->vcpus[i].fd = -1;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        if (vcpu_create(&vm->vcpus[i], vm, i) < 0)
            return -1;
    }
    return 0;
}

/* ---- running --------------------------------------------------------- */

int vm_start(struct vm *vm, bool attach_console)
{
    if (vcpu_init_kick_signal() < 0)
        return -1;
    if (attach_console) {
        struct stdio_sink sink = {.deliver = com1_deliver, .opaque = &vm->com1};
        if (vm->vconsole)
            sink = (struct stdio_sink){.deliver = vconsole_deliver, .opaque = vm->vconsole};
        int out = vm->cfg.has_serial_out ? vm->cfg.serial_out_fd : STDOUT_FILENO;
        if (stdio_console_start(&vm->console, vm->loop, STDIN_FILENO, out, &sink, on_console_quit,
                                vm) < 0)
            return error_prefix("console");
        /* A file of the API's is never waited for (a FIFO nobody reads). */
        stdio_console_set_lossy(&vm->console, vm->cfg.has_serial_out);
        vm->console_attached = true;
    }
    for (unsigned i = 0; i < vm->ncpus; i++) {
        if (vcpu_start(&vm->vcpus[i]) < 0) {
            vm_request_stop(vm, EXIT_HOST_ERROR);
            return -1;
        }
    }
    vm->started = true;
    return 0;
}

int vm_finish(struct vm *vm)
{
    /* Whoever ended the run has kicked the vCPUs; kick again for a stop
     * that came from elsewhere (the event loop failing). */
    vm_request_stop(vm, EXIT_HOST_ERROR);
    pthread_mutex_lock(&vm->stop_lock);
    vm->paused = false;
    pthread_cond_broadcast(&vm->pause_cond);
    pthread_mutex_unlock(&vm->stop_lock);
    for (unsigned i = 0; i < vm->ncpus; i++)
        vcpu_kick(&vm->vcpus[i]);
    for (unsigned i = 0; i < vm->ncpus; i++)
        vcpu_join(&vm->vcpus[i]);
    if (vm->console_attached)
        stdio_console_stop(&vm->console);
    vm->console_attached = false;
    return vm->exit_status;
}

int vm_pause(struct vm *vm)
{
    if (!vm->started)
        return error_set("the machine is not running");
    pthread_mutex_lock(&vm->stop_lock);
    if (vm->stopping) {
        pthread_mutex_unlock(&vm->stop_lock);
        return error_set("the machine is stopping");
    }
    if (!vm->paused) {
        vm->paused = true;
        for (unsigned i = 0; i < vm->ncpus; i++)
            vcpu_kick(&vm->vcpus[i]);
        /* Wait until every vCPU has left KVM_RUN and parked. */
        while (vm->parked < vm->ncpus && !vm->stopping)
            pthread_cond_wait(&vm->pause_cond, &vm->stop_lock);
    }
    pthread_mutex_unlock(&vm->stop_lock);
    return 0;
}

int vm_resume(struct vm *vm)
{
    if (!vm->started)
        return error_set("the machine is not running");
    pthread_mutex_lock(&vm->stop_lock);
    vm->paused = false;
    pthread_cond_broadcast(&vm->pause_cond);
    pthread_mutex_unlock(&vm->stop_lock);
    return 0;
}

bool vm_is_paused(struct vm *vm)
{
    pthread_mutex_lock(&vm->stop_lock);
    bool p = vm->paused;
    pthread_mutex_unlock(&vm->stop_lock);
    return p;
}

void vm_vcpu_park(struct vm *vm, struct vcpu *vcpu)
{
    pthread_mutex_lock(&vm->stop_lock);
    if (vm->paused && !vm->stopping) {
        vm->parked++;
        pthread_cond_broadcast(&vm->pause_cond);
        while (vm->paused && !vm->stopping) {
            if (vcpu->work_seen != vm->vcpu_work_gen) {
                vcpu->work_seen = vm->vcpu_work_gen;
                int (*fn)(struct vcpu *, void *) = vm->vcpu_work;
                void *arg = vm->vcpu_work_arg;
                pthread_mutex_unlock(&vm->stop_lock);
                int r = fn(vcpu, arg);
                pthread_mutex_lock(&vm->stop_lock);
                if (r < 0 && !vm->vcpu_work_failed) {
                    vm->vcpu_work_failed = true;
                    snprintf(vm->vcpu_work_error, sizeof(vm->vcpu_work_error), "vCPU %u: %s",
                             vcpu->id, error_get());
                }
                vm->vcpu_work_done++;
                pthread_cond_broadcast(&vm->pause_cond);
                continue;
            }
            pthread_cond_wait(&vm->pause_cond, &vm->stop_lock);
        }
        vm->parked--;
    }
    pthread_mutex_unlock(&vm->stop_lock);
}

int vm_run_on_vcpus(struct vm *vm, int (*fn)(struct vcpu *vcpu, void *arg), void *arg)
{
    pthread_mutex_lock(&vm->stop_lock);
    /* A machine loaded paused answers before its vCPU threads have parked: they park before
     * their first KVM_RUN, at once. */
    while (vm->paused && !vm->stopping && vm->parked < vm->ncpus)
        pthread_cond_wait(&vm->pause_cond, &vm->stop_lock);
    if (!vm->paused || vm->stopping) {
        pthread_mutex_unlock(&vm->stop_lock);
        return error_set("the machine is not paused");
    }
    vm->vcpu_work = fn;
    vm->vcpu_work_arg = arg;
    vm->vcpu_work_done = 0;
    vm->vcpu_work_failed = false;
    vm->vcpu_work_gen++;
    pthread_cond_broadcast(&vm->pause_cond);
    while (vm->vcpu_work_done < vm->ncpus && !vm->stopping)
        pthread_cond_wait(&vm->pause_cond, &vm->stop_lock);
    bool done = vm->vcpu_work_done == vm->ncpus, failed = vm->vcpu_work_failed;
    pthread_mutex_unlock(&vm->stop_lock);
    if (!done)
        return error_set("the machine stopped");
    if (failed)
        return error_set("%s", vm->vcpu_work_error);
    return 0;
}

static int nmi_on_vcpu(struct vcpu *vcpu, void *arg)
{
    (void)arg;
    if (ioctl(vcpu->fd, KVM_NMI) < 0)
        return error_errno("KVM_NMI");
    return 0;
}

int vm_inject_nmi(struct vm *vm)
{
    bool was_paused = vm_is_paused(vm);
    if (!was_paused && vm_pause(vm) < 0)
        return -1;
    int r = vm_run_on_vcpus(vm, nmi_on_vcpu, NULL);
    if (!was_paused)
        vm_resume(vm);
    return r;
}

void vm_destroy(struct vm *vm)
{
    /* Devices first: disk images, taps and sockets are released now, so a
     * next machine can take them at once. A machine that migrated away is
     * left as it is: its devices' threads stay held (another ember serves
     * its guest now) until ember exits. */
    if (vm->migrated)
        return;
    vm_destroy_virtio_devices(vm);
    /* With the teardown helper, the VM itself (vCPUs, guest memory, the VM
     * and KVM fds) is left to it: the kernel destroys it when the helper
     * exits, after ember's exit has been reported. */
    bool leave_to_helper = async_teardown_active();
    if (vm->vcpus) {
        for (unsigned i = 0; i < vm->ncpus; i++) {
            if (vm->vcpus[i].fd >= 0 && !leave_to_helper)
                vcpu_destroy(&vm->vcpus[i]);
        }
        free(vm->vcpus);
        vm->vcpus = NULL;
    }
    if (vm->irqchip.routes)
        irqchip_destroy(&vm->irqchip);
    if (!leave_to_helper)
        guest_memory_free(&vm->mem);
    if (vm->uffd_socket >= 0)
        close(vm->uffd_socket);
    vm->uffd_socket = -1;
    free(vm->supported_cpuid);
    vm->supported_cpuid = NULL;
    if (vm->vm_fd >= 0 && !leave_to_helper)
        close(vm->vm_fd);
    vm->vm_fd = -1;
    if (!leave_to_helper)
        kvm_close(&vm->kvm);
    bus_destroy(&vm->pio);
    bus_destroy(&vm->mmio);
}
