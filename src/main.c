#include "cli.h"
#include "util/error.h"
#include "util/log.h"
#include "vmm/exit_status.h"
#include "vmm/vm.h"

#include <signal.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    struct cli cli;
    if (cli_parse(argc, argv, &cli) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_USAGE;
    }
    if (cli.action == CLI_HELP) {
        cli_usage(stdout);
        return EXIT_OK;
    }
    if (cli.action == CLI_VERSION) {
        printf("ember %s\n", cli_version());
        return EXIT_OK;
    }
    log_set_level(cli.log_level);
    /* A closed console must not kill the machine. */
    signal(SIGPIPE, SIG_IGN);

    static struct vm vm;
    if (vm_create(&vm, &cli.vm) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        int status = vm.create_status;
        vm_destroy(&vm);
        return status;
    }
    int status = vm_run(&vm);
    vm_destroy(&vm);
    return status;
}
