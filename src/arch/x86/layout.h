/* Where ember puts things in the guest's physical address space (x86-64).
 *
 *   0x0000_0500  GDT used for the first instruction
 *   0x0000_6000  PVH hvm_start_info, module list, memory map
 *   0x0000_7000  Linux boot_params ("zero page")
 *   0x0000_9000  identity page tables for 64-bit entry (PML4, PDPT, 4 PDs)
 *   0x0002_0000  kernel command line
 *   0x0009_fc00  EBDA (reserved)
 *   0x000f_0000  MP table (BIOS area, reserved)
 *   0x0010_0000  RAM for the kernel and everything else
 *   0xc000_0000  32-bit MMIO hole: devices, PCI, IOAPIC, LAPIC (no RAM); the
 *                boot timer at its start
 *   0x1_0000_0000 RAM above the hole, when the guest has more than 3 GiB
 *   then, from the first 1 GiB boundary past RAM and the hole: virtio-pmem
 *                devices back to back, each 2 MiB aligned and a whole number of
 *                2 MiB long, at most 512 GiB in all. Not RAM: the e820 map does
 *                not list them; the guest learns of each from its device.
 */
#ifndef EMBER_ARCH_X86_LAYOUT_H
#define EMBER_ARCH_X86_LAYOUT_H

#define LAYOUT_GDT            0x500ULL
#define LAYOUT_PVH_INFO       0x6000ULL
#define LAYOUT_PVH_MODLIST    0x6040ULL
#define LAYOUT_PVH_MEMMAP     0x6080ULL
#define LAYOUT_PVH_MEMMAP_MAX 64
#define LAYOUT_ZERO_PAGE      0x7000ULL
#define LAYOUT_PML4           0x9000ULL
#define LAYOUT_PDPT           0xa000ULL
#define LAYOUT_PD             0xb000ULL /* four tables: identity map of 4 GiB */
#define LAYOUT_CMDLINE        0x20000ULL
#define LAYOUT_CMDLINE_MAX    0x10000ULL /* room reserved; kernels accept less */
#define LAYOUT_EBDA           0x9fc00ULL
#define LAYOUT_BIOS_START     0xf0000ULL
#define LAYOUT_MPTABLE        LAYOUT_BIOS_START
#define LAYOUT_HIMEM          0x100000ULL

#define LAYOUT_MMIO_HOLE_START 0xc0000000ULL
#define LAYOUT_MMIO_HOLE_END   0x100000000ULL

/* Inside the hole. Its first page is the boot timer's when there is one
 * (devices/boot_timer.h, at Firecracker's address). */
#define LAYOUT_VIRTIO_MMIO_BASE 0xd0000000ULL /* one 4 KiB window per device */
#define LAYOUT_IOAPIC           0xfec00000ULL
#define LAYOUT_LAPIC            0xfee00000ULL
/* KVM's private pages on Intel hosts (real-mode TSS, EPT identity map). */
#define LAYOUT_KVM_IDENTITY_MAP 0xfeffc000ULL
#define LAYOUT_KVM_TSS          0xfeffd000ULL

#define LAYOUT_PMEM_AREA_ALIGN (1ULL << 30)
#define LAYOUT_PMEM_AREA_MAX   (512ULL << 30)

#define LAYOUT_GDT_CODE_SEL 0x10
#define LAYOUT_GDT_DATA_SEL 0x18
#define LAYOUT_GDT_TSS_SEL  0x20

#endif
