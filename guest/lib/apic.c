/* Local APIC (xAPIC, MMIO) and IOAPIC helpers. */
#include "guest.h"
#include "io.h"

#define MSR_APIC_BASE     0x1b
#define APIC_BASE_ENABLE  0x800
#define SVR_APIC_ENABLE   0x100
#define ICR_PENDING       0x1000
#define IOAPIC_REGSEL     0x00
#define IOAPIC_WINDOW     0x10
#define IOAPIC_VERSION    0x01
#define IOAPIC_REDIR(pin) (0x10 + 2 * (pin))
#define REDIR_MASKED      0x10000
#define REDIR_LEVEL       0x8000
#define REDIR_ACTIVE_LOW  0x2000

uint64_t lapic_base(void)
{
    return rdmsr(MSR_APIC_BASE) & 0xffffff000ull;
}

uint32_t lapic_read(uint32_t reg)
{
    return mmio_read32(lapic_base() + reg);
}

void lapic_write(uint32_t reg, uint32_t value)
{
    mmio_write32(lapic_base() + reg, value);
}

uint8_t lapic_id(void)
{
    return (uint8_t)(lapic_read(LAPIC_ID) >> 24);
}

void lapic_enable(void)
{
    uint64_t base = rdmsr(MSR_APIC_BASE);
    if (!(base & APIC_BASE_ENABLE))
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | VECTOR_SPURIOUS);
    lapic_write(LAPIC_TPR, 0);
}

void lapic_eoi(void)
{
    lapic_write(LAPIC_EOI, 0);
}

bool lapic_send_ipi(uint8_t dest, uint32_t command)
{
    lapic_write(LAPIC_ICR_HIGH, (uint32_t)dest << 24);
    lapic_write(LAPIC_ICR_LOW, command);
    for (int i = 0; i < 100000; i++) {
        if (!(lapic_read(LAPIC_ICR_LOW) & ICR_PENDING))
            return true;
        cpu_relax();
    }
    return false;
}

static uint64_t ioapic_base(void)
{
    return platform.has_ioapic ? platform.ioapic_addr : 0xfec00000;
}

uint32_t ioapic_read(uint32_t reg)
{
    mmio_write32(ioapic_base() + IOAPIC_REGSEL, reg);
    return mmio_read32(ioapic_base() + IOAPIC_WINDOW);
}

void ioapic_write(uint32_t reg, uint32_t value)
{
    mmio_write32(ioapic_base() + IOAPIC_REGSEL, reg);
    mmio_write32(ioapic_base() + IOAPIC_WINDOW, value);
}

unsigned ioapic_pin_count(void)
{
    return ((ioapic_read(IOAPIC_VERSION) >> 16) & 0xff) + 1;
}

void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest, bool level, bool active_low)
{
    ioapic_write(IOAPIC_REDIR(pin) + 1, (uint32_t)dest << 24);
    ioapic_write(IOAPIC_REDIR(pin),
                 vector | (level ? REDIR_LEVEL : 0) | (active_low ? REDIR_ACTIVE_LOW : 0));
}

void ioapic_mask(unsigned pin)
{
    ioapic_write(IOAPIC_REDIR(pin), REDIR_MASKED);
}

void ioapic_mask_all(void)
{
    unsigned pins = ioapic_pin_count();
    for (unsigned pin = 0; pin < pins && pin < 120; pin++)
        ioapic_mask(pin);
}
