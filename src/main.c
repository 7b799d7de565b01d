#include "cli.h"
#include "util/error.h"
#include "util/eventloop.h"
#include "util/log.h"
#include "vmm/exit_status.h"
#include "vmm/vm.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

/* The process: one event loop on the main thread, termination signals
 * through it, and at most one machine. */
struct process {
    struct event_loop loop;
    int signal_fd;
    struct vm *vm;
    int status;
};

static void on_signal(void *opaque, uint32_t events)
{
    struct process *p = opaque;
    (void)events;
    struct signalfd_siginfo si;
    if (read(p->signal_fd, &si, sizeof(si)) != sizeof(si))
        return;
    fprintf(stderr, "ember: stopping on %s\n", strsignal((int)si.ssi_signo));
    p->status = EXIT_SIGNAL_BASE + (int)si.ssi_signo;
    if (p->vm && p->vm->started)
        vm_request_stop(p->vm, p->status);
    else
        event_loop_stop(&p->loop);
}

/* Termination signals arrive through the loop, on the main thread only:
 * blocked before any other thread exists, so all inherit the mask. */
static int process_init(struct process *p)
{
    memset(p, 0, sizeof(*p));
    p->signal_fd = -1;
    signal(SIGPIPE, SIG_IGN); /* a closed console must not kill the machine */
    if (event_loop_init(&p->loop) < 0)
        return -1;
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    sigaddset(&stop, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    p->signal_fd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
    if (p->signal_fd < 0)
        return error_errno("signalfd");
    if (!event_loop_add(&p->loop, p->signal_fd, EPOLLIN, on_signal, p))
        return -1;
    return 0;
}

static int run_vm(struct process *p, const struct vm_config *cfg)
{
    static struct vm vm;
    p->vm = &vm;
    if (vm_create(&vm, cfg, &p->loop) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        int status = vm.create_status;
        vm_destroy(&vm);
        return status;
    }
    if (vm_start(&vm, true) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        vm_finish(&vm);
        vm_destroy(&vm);
        return EXIT_HOST_ERROR;
    }
    if (event_loop_run(&p->loop) < 0)
        fprintf(stderr, "ember: event loop: %s\n", error_get());
    int status = vm_finish(&vm);
    vm_destroy(&vm);
    return status;
}

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
    static struct process proc;
    if (process_init(&proc) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_HOST_ERROR;
    }
    return run_vm(&proc, &cli.vm);
}
