/* Constants shared by the assembly entry code and C: segment selectors and boot protocols. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

#define SEL_CODE64      0x08
#define SEL_DATA        0x10
#define SEL_CODE32      0x18
#define SEL_USER_DATA   0x23 /* GDT slot 0x20, RPL 3 */
#define SEL_USER_CODE64 0x2b /* GDT slot 0x28, RPL 3 */
#define SEL_TSS         0x30

#define BOOT_PROTOCOL_PVH     1
#define BOOT_PROTOCOL_LINUX64 2

/* Real-mode trampoline copy for the APs; the SIPI vector is this address >> 12. */
#define AP_TRAMPOLINE_ADDR 0x8000

#define BSP_STACK_SIZE 16384
#define AP_STACK_SIZE  4096
#define MAX_CPUS       64

#define CR0_PE    0x1
#define CR0_PG    0x80000000
#define CR4_PAE   0x20
#define MSR_EFER  0xc0000080
#define EFER_LME  0x100
#define PTE_FLAGS 0x7 /* present, writable, user: one set of tables serves CPL0 and CPL3 */

#endif
