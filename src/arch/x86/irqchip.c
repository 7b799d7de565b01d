#include "arch/x86/irqchip.h"

#include "arch/x86/layout.h"
#include "arch/x86/mptable.h"
#include "util/error.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

static int add_route(struct irqchip *chip, const struct kvm_irq_routing_entry *e)
{
    if (chip->routes->nr == chip->capacity) {
        unsigned cap = chip->capacity * 2;
        struct kvm_irq_routing *r =
            realloc(chip->routes, sizeof(*r) + cap * sizeof(struct kvm_irq_routing_entry));
        if (!r)
            return error_set("out of memory");
        chip->routes = r;
        chip->capacity = cap;
    }
    chip->routes->entries[chip->routes->nr++] = *e;
    return 0;
}

static int add_irqchip_route(struct irqchip *chip, unsigned gsi, unsigned irqchip, unsigned pin)
{
    struct kvm_irq_routing_entry e = {
        .gsi = gsi,
        .type = KVM_IRQ_ROUTING_IRQCHIP,
        .u.irqchip = {.irqchip = irqchip, .pin = pin},
    };
    return add_route(chip, &e);
}

static int commit_routes(struct irqchip *chip)
{
    if (ioctl(chip->vm_fd, KVM_SET_GSI_ROUTING, chip->routes) < 0)
        return error_errno("KVM_SET_GSI_ROUTING");
    return 0;
}

int irqchip_create(struct irqchip *chip, int vm_fd)
{
    memset(chip, 0, sizeof(*chip));
    chip->vm_fd = vm_fd;
    pthread_mutex_init(&chip->lock, NULL);
    /* Intel hosts need three pages for the real-mode TSS and one for the
     * EPT identity map, in guest-physical space that is not RAM. */
    if (ioctl(vm_fd, KVM_SET_TSS_ADDR, (unsigned long)LAYOUT_KVM_TSS) < 0)
        return error_errno("KVM_SET_TSS_ADDR");
    uint64_t identity = LAYOUT_KVM_IDENTITY_MAP;
    if (ioctl(vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0)
        return error_errno("KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return error_errno("KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return error_errno("KVM_CREATE_PIT2");

    chip->capacity = 64;
    chip->routes =
        calloc(1, sizeof(*chip->routes) + chip->capacity * sizeof(struct kvm_irq_routing_entry));
    if (!chip->routes)
        return error_set("out of memory");
    for (unsigned gsi = 0; gsi < 16; gsi++) {
        if (gsi == 2)
            continue; /* cascade */
        unsigned pic = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
        if (add_irqchip_route(chip, gsi, pic, gsi & 7) < 0 ||
            add_irqchip_route(chip, gsi, KVM_IRQCHIP_IOAPIC, mptable_isa_irq_to_pin(gsi)) < 0)
            return -1;
    }
    for (unsigned gsi = 16; gsi < IRQCHIP_IOAPIC_PINS; gsi++) {
        if (add_irqchip_route(chip, gsi, KVM_IRQCHIP_IOAPIC, gsi) < 0)
            return -1;
    }
    chip->next_msi_gsi = IRQCHIP_FIRST_MSI_GSI;
    chip->setting_up = true;
    return 0;
}

int irqchip_finish_setup(struct irqchip *chip)
{
    pthread_mutex_lock(&chip->lock);
    chip->setting_up = false;
    int r = commit_routes(chip);
    pthread_mutex_unlock(&chip->lock);
    return r;
}

void irqchip_destroy(struct irqchip *chip)
{
    free(chip->routes);
    chip->routes = NULL;
    pthread_mutex_destroy(&chip->lock);
}

int irqchip_set_line(struct irqchip *chip, unsigned gsi, int level)
{
    struct kvm_irq_level irq = {.irq = gsi, .level = level ? 1 : 0};
    if (ioctl(chip->vm_fd, KVM_IRQ_LINE, &irq) < 0)
        return error_errno("KVM_IRQ_LINE(%u)", gsi);
    return 0;
}

int irqchip_set_shared_line(struct irqchip *chip, unsigned gsi, unsigned source, bool level)
{
    if (gsi >= IRQCHIP_IOAPIC_PINS || source >= 64)
        return error_set("shared line %u, source %u: out of range", gsi, source);
    pthread_mutex_lock(&chip->lock);
    uint64_t before = chip->line_sources[gsi];
    uint64_t after = level ? before | (1ULL << source) : before & ~(1ULL << source);
    chip->line_sources[gsi] = after;
    int r = 0;
    if ((before != 0) != (after != 0))
        r = irqchip_set_line(chip, gsi, after != 0);
    pthread_mutex_unlock(&chip->lock);
    return r;
}

int irqchip_add_msi_route(struct irqchip *chip, uint64_t addr, uint32_t data)
{
    pthread_mutex_lock(&chip->lock);
    unsigned gsi = chip->next_msi_gsi++;
    struct kvm_irq_routing_entry e = {
        .gsi = gsi,
        .type = KVM_IRQ_ROUTING_MSI,
        .u.msi = {.address_lo = (uint32_t)addr, .address_hi = (uint32_t)(addr >> 32), .data = data},
    };
    int r = add_route(chip, &e);
    if (r == 0 && !chip->setting_up)
        r = commit_routes(chip);
    pthread_mutex_unlock(&chip->lock);
    return r < 0 ? -1 : (int)gsi;
}

int irqchip_stage_msi_route(struct irqchip *chip, unsigned gsi, uint64_t addr, uint32_t data)
{
    pthread_mutex_lock(&chip->lock);
    int r = error_set("no MSI route for GSI %u", gsi);
    for (unsigned i = 0; i < chip->routes->nr; i++) {
        struct kvm_irq_routing_entry *e = &chip->routes->entries[i];
        if (e->gsi == gsi && e->type == KVM_IRQ_ROUTING_MSI) {
            e->u.msi.address_lo = (uint32_t)addr;
            e->u.msi.address_hi = (uint32_t)(addr >> 32);
            e->u.msi.data = data;
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&chip->lock);
    return r;
}

int irqchip_commit_routes(struct irqchip *chip)
{
    pthread_mutex_lock(&chip->lock);
    int r = commit_routes(chip);
    pthread_mutex_unlock(&chip->lock);
    return r;
}
