/*
 * The real-mode part of a test guest built as a bzImage: a boot sector and one setup sector,
 * of which only the setup header matters (Linux boot protocol 2.15, 64-bit entry only; the
 * 16-bit entry is never used). The protected-mode part (the guest linked after bz/head.S)
 * follows it in the file.
 */
    .section .data
    .org 0x1f1
    .byte 1                 /* setup_sects */
    .word 0                 /* root_flags */
    .long 0                 /* syssize */
    .word 0                 /* ram_size */
    .word 0xffff            /* vid_mode */
    .word 0                 /* root_dev */
    .word 0xaa55            /* boot_flag */
    .byte 0xeb, 0x66        /* jump over the header, which ends at 0x268 */
    .ascii "HdrS"           /* header */
    .word 0x020f            /* version */
    .long 0                 /* realmode_swtch */
    .word 0                 /* start_sys_seg */
    .word 0                 /* kernel_version */
    .byte 0                 /* type_of_loader */
    .byte 0x01              /* loadflags: LOADED_HIGH */
    .word 0                 /* setup_move_size */
    .long 0x100000          /* code32_start */
    .long 0                 /* ramdisk_image */
    .long 0                 /* ramdisk_size */
    .long 0                 /* bootsect_kludge */
    .word 0                 /* heap_end_ptr */
    .byte 0                 /* ext_loader_ver */
    .byte 0                 /* ext_loader_type */
    .long 0                 /* cmd_line_ptr */
    .long 0x37ffffff        /* initrd_addr_max */
    .long 0x200000          /* kernel_alignment */
    .byte 0                 /* relocatable_kernel: runs where it is linked */
    .byte 0                 /* min_alignment */
    .word 0x1               /* xloadflags: XLF_KERNEL_64 */
    .long 2047              /* cmdline_size */
    .long 0                 /* hardware_subarch */
    .quad 0                 /* hardware_subarch_data */
    .long 0                 /* payload_offset */
    .long 0                 /* payload_length */
    .quad 0                 /* setup_data */
    .quad 0x100000          /* pref_address */
    .long 0x1000000         /* init_size: image, .bss and stacks fit in 16 MiB */
    .long 0                 /* handover_offset */
    .org 0x400
