/* ember's process exit statuses. Guest-caused endings are even numbers so
 * that they never collide with a debug-exit status, which is always odd. */
#ifndef EMBER_VMM_EXIT_STATUS_H
#define EMBER_VMM_EXIT_STATUS_H

enum ember_exit_status {
    EXIT_OK = 0,                    /* guest powered off or reset the machine */
    EXIT_USAGE = 2,                 /* bad command line or configuration */
    EXIT_HOST_ERROR = 4,            /* KVM, files, memory: the host failed us */
    EXIT_GUEST_TRIPLE_FAULT = 10,   /* KVM_EXIT_SHUTDOWN */
    EXIT_GUEST_HLT = 12,            /* KVM_EXIT_HLT: halted with no irqchip to wake it */
    EXIT_GUEST_INTERNAL_ERROR = 14, /* KVM could not emulate or deliver */
    EXIT_GUEST_FAIL_ENTRY = 16,     /* hardware refused to enter the guest */
    EXIT_GUEST_CRASH = 18,          /* guest reported a crash (SYSTEM_EVENT) */
    EXIT_GUEST_UNEXPECTED = 20,     /* any other exit reason */
    EXIT_SECCOMP_VIOLATION = 148,   /* a thread made a system call its filter forbids
                                       (Firecracker's value; ember never stops on SIGTSTP) */
    EXIT_SIGNAL_BASE = 128,         /* stopped by signal n: 128 + n */
};

#endif
