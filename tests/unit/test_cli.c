#include "cli.h"
#include "suites.h"
#include "util/error.h"
#include "virtio/vhost_user_dev.h"

#include <sched.h>
#include <string.h>

static int parse(struct cli *cli, const char *const *args, int n)
{
    char *argv[32];
    argv[0] = "ember";
    for (int i = 0; i < n; i++)
        argv[i + 1] = (char *)args[i];
    return cli_parse(n + 1, argv, cli);
}

#define PARSE(cli, ...)                                                                            \
    parse(cli, (const char *const[]){__VA_ARGS__},                                                 \
          (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *)))

START_TEST(run_with_every_option)
{
    struct cli c;
    ck_assert_msg(PARSE(&c, "run", "--kernel", "k.elf", "--initrd=i.img", "--cmdline", "a=1 b",
                        "--memory", "2G", "--cpus=3", "--debug-exit", "--cpu-template", "baseline",
                        "--log-level", "debug") == 0,
                  "%s", error_get());
    ck_assert_int_eq(c.action, CLI_RUN);
    ck_assert_str_eq(c.vm.kernel_path, "k.elf");
    ck_assert_str_eq(c.vm.initrd_path, "i.img");
    ck_assert_str_eq(c.vm.cmdline, "a=1 b");
    ck_assert_uint_eq(c.vm.memory_mib, 2048);
    ck_assert_uint_eq(c.vm.ncpus, 3);
    ck_assert(c.vm.debug_exit);
    ck_assert_int_eq(c.vm.cpu_template, CPU_TEMPLATE_BASELINE);
    ck_assert_int_eq(c.log_level, LOG_DEBUG);
}
END_TEST

START_TEST(defaults)
{
    struct cli c;
    ck_assert_int_eq(PARSE(&c, "run", "--kernel", "k"), 0);
    ck_assert_uint_eq(c.vm.memory_mib, 128);
    ck_assert_uint_eq(c.vm.ncpus, 1);
    ck_assert_str_eq(c.vm.cmdline, "console=ttyS0 reboot=k panic=1");
    ck_assert(!c.vm.debug_exit);
    ck_assert_int_eq(c.vm.cpu_template, CPU_TEMPLATE_HOST);
    ck_assert_int_eq(PARSE(&c, "run", "--kernel", "k", "--cpu-template", "T2S"), 0);
    ck_assert_int_eq(c.vm.cpu_template, CPU_TEMPLATE_T2S);
    ck_assert_int_eq(PARSE(&c, "--help"), 0);
    ck_assert_int_eq(c.action, CLI_HELP);
    ck_assert_int_eq(PARSE(&c, "--version"), 0);
    ck_assert_int_eq(c.action, CLI_VERSION);
}
END_TEST

static void expect_error(int r, const char *needle)
{
    ck_assert_int_eq(r, -1);
    ck_assert_msg(strstr(error_get(), needle), "'%s' lacks '%s'", error_get(), needle);
}

START_TEST(cpu_placement_option)
{
    struct cli c;
    ck_assert_int_eq(PARSE(&c, "run", "--kernel", "k"), 0);
    ck_assert(!c.vm.placement.set);
    cpu_set_t s;
    ck_assert_int_eq(sched_getaffinity(0, sizeof(s), &s), 0);
    if (CPU_COUNT(&s) >= 2) {
        unsigned a = 0, b;
        while (!CPU_ISSET(a, &s))
            a++;
        for (b = a + 1; !CPU_ISSET(b, &s); b++)
            ;
        char spec[64];
        snprintf(spec, sizeof(spec), "vmm=%u,vcpu=%u", a, b);
        /* Checked against --cpus wherever that comes on the line. */
        ck_assert_msg(PARSE(&c, "run", "--cpu-placement", spec, "--kernel", "k") == 0, "%s",
                      error_get());
        ck_assert(c.vm.placement.set);
        ck_assert_uint_eq(c.vm.placement.vcpu[0], b);
        expect_error(PARSE(&c, "run", "--cpu-placement", spec, "--kernel", "k", "--cpus", "2"),
                     "1 vcpu CPU(s) for 2 vCPU(s)");
        expect_error(
            PARSE(&c, "run", "--kernel", "k", "--cpu-placement", spec, "--cpu-placement", spec),
            "only one --cpu-placement");
    }
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-placement", "vmm=0,vcpu=0"),
                 "--cpu-placement vmm=0,vcpu=0: CPU 0 is both");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-placement", "vmm=0,vcpu=1000"),
                 "CPU 1000 does not exist");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-placement", "vmm=0"), "no vcpu CPUs");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-placement", ""),
                 "not part of a CPU list");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-placement"), "needs a value");
}
END_TEST

START_TEST(bad_input_gets_one_clear_error)
{
    struct cli c;
    expect_error(PARSE(&c, "run", "--kernel", "k", "--frobnicate"),
                 "unknown option '--frobnicate'");
    expect_error(PARSE(&c, "run", "--kernel"), "needs a value");
    expect_error(PARSE(&c, "run", "--cmdline", "x"), "needs --kernel");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--memory", "0"), "at least");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--memory", "lots"), "not a size");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--memory", "99999999999"), "RAM");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--memory", "12Q"), "suffix");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--memory", "1536K"), "whole number");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpus", "0"), "at least one");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpus", "-1"), "not a number");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpus", "99999999999"), "too large");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--cpu-template", "fast"), "unknown CPU");
    expect_error(PARSE(&c, "run", "--kernel", "k", "--debug-exit=1"), "takes no value");
    expect_error(PARSE(&c, "run", "stray"), "unexpected argument");
    expect_error(PARSE(&c, "fly"), "unknown command");
    expect_error(PARSE(&c, "--bogus"), "unknown option");
    char *argv[] = {"ember"};
    expect_error(cli_parse(1, argv, &c), "no command");
}
END_TEST

START_TEST(size_parsing)
{
    uint64_t v;
    ck_assert_int_eq(cli_parse_size("512", 20, &v), 0);
    ck_assert_uint_eq(v, 512);
    ck_assert_int_eq(cli_parse_size("1G", 20, &v), 0);
    ck_assert_uint_eq(v, 1024);
    ck_assert_int_eq(cli_parse_size("256MiB", 20, &v), 0);
    ck_assert_uint_eq(v, 256);
    ck_assert_int_eq(cli_parse_size("2048K", 20, &v), 0);
    ck_assert_uint_eq(v, 2);
    ck_assert_int_eq(cli_parse_size("", 20, &v), -1);
    ck_assert_int_eq(cli_parse_size("1GG", 20, &v), -1);
    ck_assert_int_eq(cli_parse_size("99999999999999999999999", 20, &v), -1);
}
END_TEST

START_TEST(net_specs)
{
    struct net_config n;
    ck_assert_msg(
        cli_parse_net("tap=tap0,mac=52:54:00:12:34:56,vhost=off,sndbuf=64K,tx-pps=2000", &n) == 0,
        "%s", error_get());
    ck_assert_str_eq(n.tap, "tap0");
    ck_assert(n.has_mac && n.mac[0] == 0x52 && n.mac[5] == 0x56);
    ck_assert_int_eq(n.vhost, 1);
    ck_assert_uint_eq(n.sndbuf, 65536);
    ck_assert_uint_eq(n.tx_limit.ops.size, 2000);
    ck_assert_uint_eq(n.tx_limit.ops.refill_ms, 1000);
    cli_free_net(&n);
    ck_assert_int_eq(cli_parse_net("tap=t,vhost=on", &n), 0);
    ck_assert_int_eq(n.vhost, 2);
    cli_free_net(&n);
    ck_assert_int_eq(cli_parse_net("user,hostfwd=tcp:8080:80", &n), 0);
    ck_assert(n.user && !n.tap && !n.sndbuf);
    ck_assert_str_eq(n.forwards, "tcp:8080:80");
    cli_free_net(&n);
    expect_error(cli_parse_net("user,sndbuf=1M", &n), "with a tap only");
    expect_error(cli_parse_net("tap=t,sndbuf=lots", &n), "not a size");
    expect_error(cli_parse_net("tap=t,vhost=maybe", &n), "auto, on or off");
    expect_error(cli_parse_net("tap=t,hostfwd=tcp:1:2", &n), "user networking only");
    expect_error(cli_parse_net("tap=t,mac=01:00:00:00:00:01", &n), "multicast");
    expect_error(cli_parse_net("mac=52:54:00:12:34:56", &n),
                 "either tap=NAME, user or vhost-user=PATH");
    expect_error(cli_parse_net("tap=t,speed=10G", &n), "unknown key 'speed'");
    ck_assert_int_eq(cli_parse_net("tap=t,queues=1", &n), 0);
    cli_free_net(&n);
    expect_error(cli_parse_net("tap=t,queues=0", &n), "1 or more");
    expect_error(cli_parse_net("tap=t,queues=4", &n), "one queue pair");
}
END_TEST

/* vhost-user=PATH: a vhost-user-net back-end, which takes only mac=, id=, queues=1, mode= and
 * reconnect=. */
START_TEST(vhost_user_net_specs)
{
    struct net_config n;
    ck_assert_msg(cli_parse_net("vhost-user=/run/vun.sock,mac=52:54:00:12:34:56", &n) == 0, "%s",
                  error_get());
    ck_assert_str_eq(n.vhost_user_socket, "/run/vun.sock");
    ck_assert(!n.vhost_user_server && n.has_mac && !n.tap && !n.user);
    ck_assert_uint_eq(n.reconnect_s, VHOST_USER_RECONNECT_DEFAULT_S);
    cli_free_net(&n);
    ck_assert_int_eq(cli_parse_net("mode=server,vhost-user=/s,reconnect=0,queues=1", &n), 0);
    ck_assert(n.vhost_user_server);
    ck_assert_uint_eq(n.reconnect_s, 0);
    cli_free_net(&n);
    expect_error(cli_parse_net("vhost-user=/s,mode=maybe", &n), "client or server");
    expect_error(cli_parse_net("vhost-user=/s,tap=t", &n), "does not apply");
    expect_error(cli_parse_net("tap=t,vhost-user=/s", &n), "one of tap=NAME, user and vhost-user");
    expect_error(cli_parse_net("vhost-user=/s,rx-bw=1M", &n), "does not apply");
    expect_error(cli_parse_net("rx-pps=5,vhost-user=/s", &n), "rate limits");
    expect_error(cli_parse_net("vhost-user=/s,sndbuf=1M", &n), "does not apply");
    expect_error(cli_parse_net("vhost-user=/s,queues=2", &n), "one queue pair");
    expect_error(cli_parse_net("vhost-user=/s,reconnect=3601", &n), "reconnect");
    expect_error(cli_parse_net("vhost-user=", &n), "is empty");
    expect_error(cli_parse_net("tap=t,mode=client", &n), "for a vhost-user interface");
    expect_error(cli_parse_net("user,reconnect=1", &n), "for a vhost-user interface");
}
END_TEST

/* socket= instead of path=: a vhost-user drive, which takes only what its back-end does not
 * decide. */
START_TEST(vhost_user_drive_specs)
{
    struct drive_config d;
    ck_assert_msg(cli_parse_drive("socket=/run/vub.sock,id=data,root=on,cache=unsafe", &d) == 0,
                  "%s", error_get());
    ck_assert_str_eq(d.socket, "/run/vub.sock");
    ck_assert_ptr_null(d.path);
    ck_assert_str_eq(d.id, "data");
    ck_assert(d.is_root && d.unsafe);
    ck_assert_uint_eq(d.reconnect_s, VHOST_USER_RECONNECT_DEFAULT_S);
    cli_free_drive(&d);
    ck_assert_msg(cli_parse_drive("socket=/s,reconnect=0", &d) == 0, "%s", error_get());
    ck_assert_uint_eq(d.reconnect_s, 0);
    cli_free_drive(&d);
    ck_assert_msg(cli_parse_drive("socket=/s,reconnect=3600", &d) == 0, "%s", error_get());
    ck_assert_uint_eq(d.reconnect_s, 3600);
    cli_free_drive(&d);
    expect_error(cli_parse_drive("socket=/s,reconnect=3601", &d), "--drive reconnect");
    expect_error(cli_parse_drive("path=/img,reconnect=5", &d), "reconnect= is for a vhost-user");
    expect_error(cli_parse_drive("socket=/s,path=/img", &d), "not both");
    expect_error(cli_parse_drive("socket=", &d), "socket= is empty");
    expect_error(cli_parse_drive("socket=/s,readonly=on", &d), "readonly= does not apply");
    expect_error(cli_parse_drive("socket=/s,queues=2", &d), "queues= does not apply");
    expect_error(cli_parse_drive("socket=/s,bw=1M", &d), "bw= does not apply");
    expect_error(cli_parse_drive("socket=/s,cache=none", &d), "cache=none does not apply");
    expect_error(cli_parse_drive("id=x", &d), "needs path=FILE (or socket=PATH)");
}
END_TEST

/* What the jailer passes ember, kept for the start-up metrics. */
START_TEST(jailer_flags)
{
    struct cli c;
    ck_assert_msg(PARSE(&c, "--id", "j-1", "--start-time-us", "123456789012",
                        "--start-time-cpu-us=45", "--parent-cpu-time-us", "678") == 0,
                  "%s", error_get());
    ck_assert(c.api.start_time_given && c.api.start_cpu_given);
    ck_assert_uint_eq(c.api.start_time_us, 123456789012ull);
    ck_assert_uint_eq(c.api.start_time_cpu_us, 45);
    ck_assert_uint_eq(c.api.parent_cpu_time_us, 678);
    ck_assert_int_eq(PARSE(&c, "--id", "j-1"), 0);
    ck_assert(!c.api.start_time_given && !c.api.start_cpu_given);
    expect_error(PARSE(&c, "--start-time-us", "12a"), "microseconds");
    expect_error(PARSE(&c, "--start-time-us", "-5"), "microseconds");
    expect_error(PARSE(&c, "--start-time-cpu-us", "18446744073709551616"), "microseconds");
    expect_error(PARSE(&c, "--parent-cpu-time-us="), "microseconds");
}
END_TEST

/* Installed under Firecracker's name, ember listens where Firecracker's clients look. */
START_TEST(named_firecracker)
{
    struct cli c;
    char *fc[] = {"/usr/local/bin/firecracker", "--id", "vm-1"};
    ck_assert_int_eq(cli_parse(3, fc, &c), 0);
    ck_assert_int_eq(c.action, CLI_API);
    ck_assert_str_eq(c.api.socket_path, "/run/firecracker.socket");
    char *bare[] = {"firecracker"};
    ck_assert_int_eq(cli_parse(1, bare, &c), 0);
    ck_assert_int_eq(c.action, CLI_API);
    ck_assert_str_eq(c.api.socket_path, "/run/firecracker.socket");
    char *given[] = {"/firecracker", "--api-sock", "/tmp/a.sock"};
    ck_assert_int_eq(cli_parse(3, given, &c), 0);
    ck_assert_str_eq(c.api.socket_path, "/tmp/a.sock");
    ck_assert_int_eq(PARSE(&c, "--id", "vm-1"), 0);
    ck_assert_str_eq(c.api.socket_path, "/run/ember.socket");
    char *ember_bare[] = {"/usr/bin/ember"};
    ck_assert_int_eq(cli_parse(1, ember_bare, &c), -1);
    ck_assert(cli_named_firecracker("firecracker-v1.14.0-x86_64"));
    ck_assert(!cli_named_firecracker("/opt/firecracker/ember"));
    ck_assert(!cli_named_firecracker(NULL));
}
END_TEST

/* flintlock's launch line, and Firecracker's snapshot queries. */
START_TEST(flintlock_flags)
{
    struct cli c;
    ck_assert_msg(PARSE(&c, "--id", "01HQ4V9A3M6Q2W1E8R7T5Y0U9I", "--boot-timer", "--no-api",
                        "--config-file", "/var/lib/flintlock/vm/firecracker.cfg", "--metadata",
                        "/var/lib/flintlock/vm/metadata.json") == 0,
                  "%s", error_get());
    ck_assert_int_eq(c.action, CLI_API);
    ck_assert(c.api.boot_timer && c.api.no_api);
    ck_assert_str_eq(c.api.metadata_path, "/var/lib/flintlock/vm/metadata.json");
    ck_assert_int_eq(PARSE(&c, "--describe-snapshot", "/tmp/state"), 0);
    ck_assert_int_eq(c.action, CLI_DESCRIBE_SNAPSHOT);
    ck_assert_str_eq(c.snapshot_path, "/tmp/state");
    ck_assert_int_eq(PARSE(&c, "--snapshot-version"), 0);
    ck_assert_int_eq(c.action, CLI_SNAPSHOT_VERSION);
    ck_assert_int_eq(PARSE(&c, "--api-sock", "/tmp/a", "--metadata", ""), -1);
    ck_assert_int_eq(PARSE(&c, "run", "--kernel", "k", "--boot-timer"), 0);
    ck_assert(c.vm.boot_timer);
}
END_TEST

Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *t = tcase_create("parse");
    tcase_add_test(t, run_with_every_option);
    tcase_add_test(t, defaults);
    tcase_add_test(t, bad_input_gets_one_clear_error);
    tcase_add_test(t, cpu_placement_option);
    tcase_add_test(t, size_parsing);
    tcase_add_test(t, net_specs);
    tcase_add_test(t, vhost_user_net_specs);
    tcase_add_test(t, vhost_user_drive_specs);
    tcase_add_test(t, jailer_flags);
    tcase_add_test(t, named_firecracker);
    tcase_add_test(t, flintlock_flags);
    suite_add_tcase(s, t);
    return s;
}
