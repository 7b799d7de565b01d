/* CPU placement (vmm/placement.h): the cpulist parser, the vmm=/vcpu= spec, and the checks
 * against a machine and a host given here (not this host's). */
#include "suites.h"
#include "util/error.h"
#include "vmm/placement.h"

#include <string.h>

#define ck_error_has(s) ck_assert_msg(strstr(error_get(), s), "'%s' lacks '%s'", error_get(), s)

static unsigned set_count(const cpu_set_t *s)
{
    return (unsigned)CPU_COUNT(s);
}

START_TEST(cpulist_set_forms)
{
    cpu_set_t s;
    ck_assert_int_eq(cpulist_parse_set("0", &s), 0);
    ck_assert_uint_eq(set_count(&s), 1);
    ck_assert(CPU_ISSET(0, &s));
    ck_assert_int_eq(cpulist_parse_set("0-3,5,7-7,1023", &s), 0);
    ck_assert_uint_eq(set_count(&s), 7);
    ck_assert(CPU_ISSET(3, &s) && CPU_ISSET(5, &s) && CPU_ISSET(7, &s) && CPU_ISSET(1023, &s));
    ck_assert(!CPU_ISSET(4, &s) && !CPU_ISSET(6, &s));
    char buf[64];
    cpulist_format_set(&s, buf, sizeof(buf));
    ck_assert_str_eq(buf, "0-3,5,7,1023");
    /* Order does not matter to a set. */
    ck_assert_int_eq(cpulist_parse_set("9,2", &s), 0);
    cpulist_format_set(&s, buf, sizeof(buf));
    ck_assert_str_eq(buf, "2,9");
}
END_TEST

START_TEST(cpulist_refusals)
{
    static const struct {
        const char *text, *error;
    } bad[] = {
        {"", "empty CPU list"},      {",", "empty item"},        {"1,", "empty item"},
        {",1", "empty item"},        {"1,,2", "empty item"},     {"-1", "empty item"},
        {"1-", "empty item"},        {"1--2", "empty item"},     {"3-1", "goes down"},
        {"1 ", "unexpected ' '"},    {" 1", "not a CPU number"}, {"+1", "not a CPU number"},
        {"0x1", "unexpected 'x'"},   {"1024", "below 1024"},     {"99999999999999999999", "below"},
        {"1,1", "listed twice"},     {"0-2,1", "listed twice"},  {"a", "not a CPU number"},
        {"1-2-3", "unexpected '-'"}, {"1;2", "unexpected ';'"},
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cpu_set_t s;
        uint16_t list[8];
        unsigned n;
        ck_assert_msg(cpulist_parse_set(bad[i].text, &s) == -1, "'%s' taken", bad[i].text);
        ck_assert_msg(strstr(error_get(), bad[i].error), "'%s': '%s' lacks '%s'", bad[i].text,
                      error_get(), bad[i].error);
        ck_assert_int_eq(cpulist_parse_ordered(bad[i].text, list, 8, &n), -1);
    }
    /* Bounded: a list longer than the text limit, and more CPUs than the room given. */
    static char longer[PLACEMENT_MAX_TEXT + 8];
    memset(longer, '1', sizeof(longer) - 1);
    cpu_set_t s;
    ck_assert_int_eq(cpulist_parse_set(longer, &s), -1);
    uint16_t list[4];
    unsigned n;
    ck_assert_int_eq(cpulist_parse_ordered("0-4", list, 4, &n), -1);
    ck_error_has("more than 4");
    ck_assert_int_eq(cpulist_parse_ordered("0-1023", list, 4, &n), -1);
}
END_TEST

START_TEST(cpulist_ordered_keeps_order)
{
    uint16_t list[16];
    unsigned n;
    ck_assert_int_eq(cpulist_parse_ordered("5,2-4,9", list, 16, &n), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_uint_eq(list[0], 5);
    ck_assert_uint_eq(list[1], 2);
    ck_assert_uint_eq(list[3], 4);
    ck_assert_uint_eq(list[4], 9);
    char buf[64];
    cpulist_format_ordered(list, n, buf, sizeof(buf));
    ck_assert_str_eq(buf, "5,2-4,9");
    /* Truncated, never overrun. */
    cpulist_format_ordered(list, n, buf, 4);
    ck_assert_uint_lt(strlen(buf), 4);
}
END_TEST

START_TEST(spec_parse)
{
    struct cpu_placement p;
    ck_assert_int_eq(cpu_placement_parse("vmm=0,vcpu=1", &p), 0);
    ck_assert(p.set);
    ck_assert_uint_eq(set_count(&p.vmm), 1);
    ck_assert_uint_eq(p.nvcpu, 1);
    ck_assert_uint_eq(p.vcpu[0], 1);
    ck_assert_uint_eq(p.poll_us, PLACEMENT_POLL_DEFAULT_US); /* polling on by default */
    ck_assert_int_eq(cpu_placement_parse("vmm=0,poll=off,vcpu=1", &p), 0);
    ck_assert_uint_eq(p.poll_us, 0);
    ck_assert_uint_eq(p.nvcpu, 1);
    ck_assert_int_eq(cpu_placement_parse("poll=250,vmm=0,vcpu=1", &p), 0);
    ck_assert_uint_eq(p.poll_us, 250);
    ck_assert_int_eq(cpu_placement_parse("vmm=0,vcpu=1,poll=1000000", &p), 0);
    ck_assert_uint_eq(p.poll_us, 1000000);
    /* Items without a key continue the list before them; keys in either order. */
    ck_assert_int_eq(cpu_placement_parse("vcpu=7,3,4-5,vmm=0-1,8", &p), 0);
    ck_assert_uint_eq(p.nvcpu, 4);
    ck_assert_uint_eq(p.vcpu[0], 7);
    ck_assert_uint_eq(p.vcpu[1], 3);
    ck_assert_uint_eq(p.vcpu[3], 5);
    ck_assert_uint_eq(set_count(&p.vmm), 3);
    ck_assert(CPU_ISSET(8, &p.vmm));
    static const struct {
        const char *spec, *error;
    } bad[] = {
        {"", "not part of a CPU list"},
        {"0,vcpu=1", "not part of a CPU list"},
        {"vmm=0", "no vcpu CPUs"},
        {"vcpu=1", "no vmm CPUs"},
        {"vmm=0,vcpu=1,vmm=2", "vmm given twice"},
        {"vmm=0,vcpu=1,polling=on", "unknown key"},
        {"vmm=0,vcpu=1,poll=on", "polling bound"},
        {"vmm=0,vcpu=1,poll=0", "polling bound"},
        {"vmm=0,vcpu=1,poll=-5", "polling bound"},
        {"vmm=0,vcpu=1,poll=1000001", "polling bound"},
        {"vmm=0,vcpu=1,poll=99999999999999999999", "polling bound"},
        {"vmm=0,vcpu=1,poll=", "polling bound"},
        {"vmm=0,vcpu=1,poll=5,poll=5", "poll given twice"},
        {"vmm=0,vcpu=1,poll=5,2", "not part of a CPU list"},
        {"vmm=0,vcpu=0", "must not overlap"},
        {"vmm=0-3,vcpu=5,2", "CPU 2 is both"},
        {"vmm=0,vcpu=1,1", "listed twice"},
        {"vmm=0,vcpu=", "empty CPU list"},
        {"vmm=0,,vcpu=1", "empty item"},
        {"vmm=0,vcpu=1,", "empty item"},
        {"vmm==0,vcpu=1", "not a CPU number"},
        {"vmm=0,vcpu=1=2", "unexpected '='"},
        {"VMM=0,vcpu=1", "unknown key"},
    };
    for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(cpu_placement_parse(bad[i].spec, &p) == -1, "'%s' taken", bad[i].spec);
        ck_assert_msg(strstr(error_get(), bad[i].error), "'%s': '%s' lacks '%s'", bad[i].spec,
                      error_get(), bad[i].error);
        ck_assert(!p.set);
    }
}
END_TEST

START_TEST(check_against_machine_and_host)
{
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    for (unsigned c = 0; c < 4; c++)
        CPU_SET(c, &allowed);
    CPU_CLR(2, &allowed); /* a host of 8 CPUs, ember given 0, 1 and 3 */
    struct cpu_placement p;
    ck_assert_int_eq(cpu_placement_from_lists("0", "1,3", &p), 0);
    ck_assert_int_eq(cpu_placement_check(&p, 2, &allowed, 8), 0);
    ck_assert_int_eq(cpu_placement_check(&p, 1, &allowed, 8), -1);
    ck_error_has("2 vcpu CPU(s) for 1 vCPU(s)");
    ck_assert_int_eq(cpu_placement_check(&p, 3, &allowed, 8), -1);
    ck_assert_int_eq(cpu_placement_from_lists("0", "1,2", &p), 0);
    ck_assert_int_eq(cpu_placement_check(&p, 2, &allowed, 8), -1);
    ck_error_has("CPU 2 is not one ember may run on (its CPUs: 0-1,3)");
    ck_assert_int_eq(cpu_placement_from_lists("2", "1,3", &p), 0);
    ck_assert_int_eq(cpu_placement_check(&p, 2, &allowed, 8), -1);
    ck_error_has("CPU 2 is not one");
    ck_assert_int_eq(cpu_placement_from_lists("0", "1,9", &p), 0);
    ck_assert_int_eq(cpu_placement_check(&p, 2, &allowed, 8), -1);
    ck_error_has("CPU 9 does not exist: this host has 8");
    /* No placement: nothing to check. */
    struct cpu_placement none = {0};
    ck_assert_int_eq(cpu_placement_check(&none, 5, &allowed, 8), 0);
}
END_TEST

Suite *placement_suite(void)
{
    Suite *s = suite_create("placement");
    TCase *t = tcase_create("parse");
    tcase_add_test(t, cpulist_set_forms);
    tcase_add_test(t, cpulist_refusals);
    tcase_add_test(t, cpulist_ordered_keeps_order);
    tcase_add_test(t, spec_parse);
    tcase_add_test(t, check_against_machine_and_host);
    suite_add_tcase(s, t);
    return s;
}
