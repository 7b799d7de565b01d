#include "suites.h"
#include "util/log.h"

#include <stdlib.h>

int main(void)
{
    Suite *(*const suites[])(void) = {boot_suite,
                                      bus_suite,
                                      cli_suite,
                                      cpuid_suite,
                                      memory_suite,
                                      mptable_suite,
                                      serial_suite,
                                      legacy_suite,
                                      virtq_suite,
                                      virtio_blk_suite,
                                      ratelimit_suite,
                                      api_suite,
                                      keyboard_suite,
                                      virtio_vsock_suite,
                                      virtio_net_suite,
                                      virtq_packed_suite,
                                      virtio_lifecycle_suite,
                                      seccomp_suite,
                                      cpu_template_suite,
                                      placement_suite,
                                      mmds_suite,
                                      mmds_stack_suite,
                                      virtio_pmem_suite,
                                      snapshot_format_suite,
                                      vcpu_state_suite,
                                      devices_snapshot_suite,
                                      uffd_suite,
                                      dirty_suite,
                                      snapshot_devices_suite,
                                      vhost_user_suite,
                                      vhost_user_blk_suite,
                                      vhost_user_fs_suite,
                                      poll_window_suite};
    /* Tests provoke guest errors on purpose; their log lines would only
     * clutter the report. EMBER_TEST_LOG=1 shows them. */
    if (!getenv("EMBER_TEST_LOG"))
        log_open("/dev/null");
    SRunner *runner = srunner_create(NULL);
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
        srunner_add_suite(runner, suites[i]());
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
