/* Every unit-test suite, run by main.c. */
#ifndef EMBER_TESTS_UNIT_SUITES_H
#define EMBER_TESTS_UNIT_SUITES_H

#include <check.h>

Suite *boot_suite(void);
Suite *bus_suite(void);
Suite *cli_suite(void);
Suite *cpuid_suite(void);
Suite *cpu_template_suite(void);
Suite *placement_suite(void);
Suite *memory_suite(void);
Suite *mptable_suite(void);
Suite *serial_suite(void);
Suite *legacy_suite(void);
Suite *virtq_suite(void);
Suite *virtq_packed_suite(void);
Suite *virtio_blk_suite(void);
Suite *ratelimit_suite(void);
Suite *api_suite(void);
Suite *keyboard_suite(void);
Suite *virtio_vsock_suite(void);
Suite *virtio_net_suite(void);
Suite *virtio_pmem_suite(void);
Suite *virtio_lifecycle_suite(void);
Suite *seccomp_suite(void);
Suite *mmds_suite(void);
Suite *mmds_stack_suite(void);
Suite *snapshot_format_suite(void);
Suite *vcpu_state_suite(void);
Suite *devices_snapshot_suite(void);
Suite *uffd_suite(void);
Suite *dirty_suite(void);
Suite *snapshot_devices_suite(void);
Suite *vhost_user_suite(void);
Suite *vhost_user_blk_suite(void);
Suite *vhost_user_fs_suite(void);
Suite *poll_window_suite(void);

#endif
