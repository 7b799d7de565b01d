#include "api/api.h"
#include "api/server.h"
#include "cli.h"
#include "sandbox/seccomp.h"
#include "util/error.h"
#include "util/eventloop.h"
#include "util/log.h"
#include "util/teardown.h"
#include "vmm/exit_status.h"
#include "vmm/vm.h"
#include "vmm/snapshot.h"
#include "migration/command.h"
#include "snapshot/format.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
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
    api_metrics_note_signal((int)si.ssi_signo); /* SIGHUP is in Firecracker's metrics */
    p->status = EXIT_SIGNAL_BASE + (int)si.ssi_signo;
    if (p->vm && p->vm->started)
        vm_request_stop(p->vm, p->status);
    else
        event_loop_stop(&p->loop);
}

static void on_sigpipe(int sig)
{
    api_metrics_note_signal(sig);
}

/* Termination signals arrive through the loop, on the main thread only:
 * blocked before any other thread exists, so all inherit the mask. */
static int process_init(struct process *p)
{
    memset(p, 0, sizeof(*p));
    p->signal_fd = -1;
    /* A closed console must not kill the machine: SIGPIPE is only counted (Firecracker's
     * signals.sigpipe), the write that raised it fails with EPIPE. */
    struct sigaction pipe_action = {.sa_handler = on_sigpipe, .sa_flags = SA_RESTART};
    sigemptyset(&pipe_action.sa_mask);
    sigaction(SIGPIPE, &pipe_action, NULL);
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

/* `ember run --api-sock PATH`: the API beside a machine the command line built, for what
 * can be done to a running machine (pause, snapshots, metrics, updates). */
static int start_run_api(struct process *p, struct vm *vm, const struct vm_config *cfg,
                         const char *path, struct api *api, struct api_server *server)
{
    if (api_init(api, &p->loop, vm, NULL, cfg->transport == TRANSPORT_PCI, 0) < 0)
        return -1;
    api->vm_created = true;
    api->configured = true;
    api->vm_cfg = *cfg;
    struct http_limits limits;
    http_limits_default(&limits);
    struct api_server_options opts;
    api_server_options_default(&opts);
    if (api_server_start(server, &p->loop, path, &limits, &opts, api_handle_request, api) < 0)
        return -1;
    api_metrics_watch_server(&api->metrics, &server->stats);
    log_info("API listening on %s", path);
    return 0;
}

static int run_vm(struct process *p, const struct vm_config *cfg, const char *api_sock)
{
    static struct vm vm;
    static struct api api;
    static struct api_server server;
    p->vm = &vm;
    if (vm_create(&vm, cfg, &p->loop) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        int status = vm.create_status;
        vm_destroy(&vm);
        return status;
    }
    if (api_sock && start_run_api(p, &vm, cfg, api_sock, &api, &server) < 0) {
        fprintf(stderr, "ember: --api-sock %s: %s\n", api_sock, error_get());
        vm_destroy(&vm);
        return EXIT_HOST_ERROR;
    }
    if (vm_start(&vm, true) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        vm_finish(&vm);
        vm_destroy(&vm);
        return EXIT_HOST_ERROR;
    }
    seccomp_enter(SECCOMP_MAIN, "main");
    if (event_loop_run(&p->loop) < 0)
        fprintf(stderr, "ember: event loop: %s\n", error_get());
    if (api_sock) {
        api_server_stop(&server);
        /* api_finish ends the machine as it does in API mode. */
        return api_finish(&api, p->status);
    }
    int status = vm_finish(&vm);
    vm_destroy(&vm);
    return status;
}

/* The configuration file: read whole, bounded (it is a small document). */
static char *read_config_file(const char *path, const char *what, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        error_errno("cannot open %s file '%s'", what, path);
        return NULL;
    }
    size_t cap = 1 << 20;
    char *buf = malloc(cap + 1);
    size_t n = buf ? fread(buf, 1, cap + 1, f) : 0;
    bool failed = ferror(f);
    fclose(f);
    if (!buf || failed || n > cap) {
        error_set("%s file '%s': %s", what, path,
                  !buf     ? "out of memory"
                  : failed ? "read error"
                           : "larger than 1 MiB");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static uint64_t clock_us(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Firecracker's start-up figures, from the flags the jailer passes: the time from the
 * jailer's start to the API listening, and the CPU time the jailer and ember spent on it. */
static void report_startup(struct api_metrics *m, const struct cli_api *o)
{
    if (!o->start_time_given && !o->start_cpu_given)
        return;
    uint64_t wall = 0, cpu = 0;
    if (o->start_time_given) {
        uint64_t now = clock_us(CLOCK_MONOTONIC);
        wall = now > o->start_time_us ? now - o->start_time_us : 0;
    }
    if (o->start_cpu_given) {
        uint64_t now = clock_us(CLOCK_PROCESS_CPUTIME_ID);
        cpu = (now > o->start_time_cpu_us ? now - o->start_time_cpu_us : 0) + o->parent_cpu_time_us;
    }
    api_metrics_set_startup(m, wall, cpu);
    log_info("started in %llu us (%llu us of CPU)", (unsigned long long)wall,
             (unsigned long long)cpu);
}

/* `ember --api-sock ...`: the API on the loop, the machine once
 * InstanceStart (or the configuration file) says so. */
static int run_api(struct process *p, const struct cli *cli)
{
    const struct cli_api *o = &cli->api;
    static struct vm vm;
    static struct api api;
    static struct api_server server;
    p->vm = &vm;
    if (o->id)
        log_set_instance(o->id);
    if (o->log_path && log_open(o->log_path) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_USAGE;
    }
    if (o->show_level || o->show_log_origin || o->log_path)
        log_set_format(o->show_level, o->show_log_origin);
    /* The metadata's limit is the API's largest body unless given, as in Firecracker. */
    size_t mmds_limit = o->mmds_size_limit_given ? (size_t)o->mmds_size_limit
                        : o->max_payload         ? (size_t)o->max_payload
                                                 : MMDS_DEFAULT_SIZE_LIMIT;
    if (api_init(&api, &p->loop, &vm, o->id, o->enable_pci, mmds_limit) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_HOST_ERROR;
    }
    api.boot_timer = o->boot_timer;
    if (o->metadata_path) {
        size_t len;
        char *text = read_config_file(o->metadata_path, "metadata", &len);
        int r = text ? api_load_metadata(&api, text, len) : -1;
        free(text);
        if (r < 0) {
            fprintf(stderr, "ember: --metadata %s: %s\n", o->metadata_path, error_get());
            api_finish(&api, 0);
            return EXIT_USAGE;
        }
    }
    /* InstanceStart builds the machine there (api.h says why). */
    static struct iothread builder;
    if (seccomp_enabled()) {
        if (iothread_start(&builder, "vmm-build", SECCOMP_NONE) < 0) {
            fprintf(stderr, "ember: %s\n", error_get());
            return EXIT_HOST_ERROR;
        }
        api.builder = &builder;
    }
    if (o->metrics_path && api_apply_metrics(&api, o->metrics_path) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        api_finish(&api, 0);
        return EXIT_USAGE;
    }
    int status = EXIT_OK;
    if (!o->no_api) {
        struct http_limits limits;
        http_limits_default(&limits);
        if (o->max_payload)
            limits.max_payload = o->max_payload;
        struct api_server_options opts;
        api_server_options_default(&opts);
        if (o->request_timeout_ms)
            opts.request_timeout_ms = o->request_timeout_ms;
        if (o->idle_timeout_given)
            opts.idle_timeout_ms = o->idle_timeout_ms;
        if (api_server_start(&server, &p->loop, o->socket_path, &limits, &opts, api_handle_request,
                             &api) < 0) {
            fprintf(stderr, "ember: %s\n", error_get());
            api_finish(&api, 0);
            return EXIT_HOST_ERROR;
        }
        api_metrics_watch_server(&api.metrics, &server.stats);
        report_startup(&api.metrics, o);
        log_info("API listening on %s", o->socket_path);
    }
    if (o->config_file) {
        size_t len;
        char *text = read_config_file(o->config_file, "configuration", &len);
        int r = text ? api_config_parse_document(&api.cfg, text, len) : -1;
        free(text);
        if (r == 0 && api.cfg.logger.set) {
            struct api_logger l = api.cfg.logger;
            api.cfg.logger = (struct api_logger){0};
            r = api_apply_logger(&api, &l);
        }
        if (r == 0 && api.cfg.metrics_path && !api_metrics_enabled(&api.metrics))
            r = api_apply_metrics(&api, api.cfg.metrics_path);
        status = EXIT_USAGE;
        if (r == 0)
            r = api_start_instance(&api, &status);
        if (r < 0) {
            fprintf(stderr, "ember: %s\n", error_get());
            if (!o->no_api)
                api_server_stop(&server);
            return api_finish(&api, status);
        }
    }
    /* Before the first client: the API may only shape the machine and start
     * it (InstanceStart narrows this further, api_start_instance). */
    if (!api_instance_started(&api))
        seccomp_enter(SECCOMP_PREBOOT, "main");
    if (event_loop_run(&p->loop) < 0)
        fprintf(stderr, "ember: event loop: %s\n", error_get());
    if (!o->no_api)
        api_server_stop(&server);
    return api_finish(&api, p->status);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "migrate"))
        return migration_command(argc - 2, argv + 2);
    /* The CPUs a CPU placement may use: those ember starts with, before it moves anything. */
    cpu_placement_note_host();
    struct cli cli;
    if (cli_parse(argc, argv, &cli) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_USAGE;
    }
    if (cli.action == CLI_HELP) {
        cli_usage(stdout);
        return EXIT_OK;
    }
    if (cli.action == CLI_SNAPSHOT_VERSION) {
        printf("v%u.0.0\n", SNAPSHOT_FORMAT_VERSION);
        return EXIT_OK;
    }
    if (cli.action == CLI_DESCRIBE_SNAPSHOT) {
        if (vm_snapshot_describe(cli.snapshot_path, stdout) < 0) {
            fprintf(stderr, "ember: --describe-snapshot: %s\n", error_get());
            return EXIT_USAGE;
        }
        return EXIT_OK;
    }
    if (cli.action == CLI_VERSION) {
        cli_print_version(stdout);
        return EXIT_OK;
    }
    log_set_level(cli.log_level);
    /* Before any thread exists (each inherits the SIGSYS handler) and before
     * the teardown helper (a copy of the handlers is taken at clone). */
    bool usage;
    if (seccomp_setup(!cli.no_seccomp, cli.seccomp_filter, &usage) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return usage ? EXIT_USAGE : EXIT_HOST_ERROR;
    }
    /* Before any thread exists: the helper shares ember's memory and files. */
    if (!cli.sync_teardown && async_teardown_start() < 0)
        log_warn("%s; the machine will be destroyed before ember exits", error_get());
    static struct process proc;
    if (process_init(&proc) < 0) {
        fprintf(stderr, "ember: %s\n", error_get());
        return EXIT_HOST_ERROR;
    }
    int status =
        cli.action == CLI_API ? run_api(&proc, &cli) : run_vm(&proc, &cli.vm, cli.run_api_sock);
    if (async_teardown_active()) {
        /* The helper shares this file table: release the standard streams
         * now, so that whoever reads ember's output sees its end at exit. */
        fflush(stdout);
        fflush(stderr);
        close(STDIN_FILENO);
        close(STDOUT_FILENO);
        close(STDERR_FILENO);
    }
    return status;
}
