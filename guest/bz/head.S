/*
 * The start of a guest image built as a bzImage: the Linux 64-bit boot protocol enters a
 * bzImage 0x200 bytes into its protected-mode part, which a loader puts at 1 MiB.
 */
    .section .text.bzhead, "ax"
    .code64
    .fill 0x200, 1, 0
    jmp linux64_entry
