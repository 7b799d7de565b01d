/* The Xen PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY) that makes a VMM enter at pvh_entry32. */
    .section .note.pvh, "a", @note
    .balign 4
    .long 4             /* name size: "Xen\0" */
    .long 4             /* descriptor size */
    .long 18            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_entry32
    .balign 4
