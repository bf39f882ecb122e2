/* test_options.c - unit tests of the options parser. */
#include <string.h>

#include "unit.h"
#include "om.h"

static void test_options_good(void)
{
    struct om_opts o;
    char err[256];
    om_opts_default(&o);
    CU_ASSERT_EQUAL(o.quarantine, 4 * 1024);
    CU_ASSERT_EQUAL(o.quarantine_over, 32);
    CU_ASSERT(o.zero);
    CU_ASSERT_EQUAL(o.policy, OM_POLICY_REPORT);
    CU_ASSERT_EQUAL(om_opts_parse(&o, " quarantine=4M , no-zero,on-error=abort,report=/tmp/x.json,"
                                      "reserve=1G,", "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(o.quarantine, 4u << 20);
    CU_ASSERT_EQUAL(om_opts_parse(&o, "quarantine-over=0", "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(o.quarantine_over, 0);
    CU_ASSERT_EQUAL(o.quarantine, 4u << 20); /* the one word does not touch the other */
    CU_ASSERT(!o.zero);
    CU_ASSERT_EQUAL(o.policy, OM_POLICY_ABORT);
    CU_ASSERT_STRING_EQUAL(o.report, "/tmp/x.json");
    CU_ASSERT_EQUAL(o.reserve, (size_t)1 << 30);
    CU_ASSERT_EQUAL(om_opts_parse(&o, "zero,quarantine=0,on-error=ignore,report=none,quarantine=12k",
                                  "test", err, sizeof err), 0);
    CU_ASSERT(o.zero);
    CU_ASSERT_EQUAL(o.quarantine, 12 * 1024);
    CU_ASSERT_EQUAL(o.policy, OM_POLICY_IGNORE);
    CU_ASSERT_STRING_EQUAL(o.report, "");
    CU_ASSERT_EQUAL(om_opts_parse(&o, "", "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(om_opts_parse(&o, NULL, "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(ossl_mem_options_check("quarantine=1M", NULL, 0), 0);
}

/* The debugging options and their values. */
static void test_options_debug(void)
{
    struct om_opts o;
    char err[256];
    om_opts_default(&o);
    CU_ASSERT(!o.poison && !o.fill && !o.canary && o.caller && !o.fail_set);
    CU_ASSERT(!om_dbg_wanted(&o));
    CU_ASSERT_EQUAL(om_opts_parse(&o, "poison,fill,canary,no-caller,fail=1/100,seed=0x2a,"
                                      "limit=2M,tag-limit=ctx:64K,tag-limit=session:1K,check=500",
                                  "test", err, sizeof err), 0);
    CU_ASSERT(o.poison && o.fill && o.canary && !o.caller && o.fail_set);
    CU_ASSERT_EQUAL(o.poison_byte, 0x50);
    CU_ASSERT_EQUAL(o.fail_one_in, 100);
    CU_ASSERT_EQUAL(o.fail_nth, 0);
    CU_ASSERT_EQUAL(o.seed, 42);
    CU_ASSERT_EQUAL(o.limit, 2u << 20);
    CU_ASSERT_EQUAL(o.ntag_limits, 2);
    CU_ASSERT_STRING_EQUAL(o.tag_limits[0].tag, "ctx");
    CU_ASSERT_EQUAL(o.tag_limits[0].bytes, 64 * 1024);
    CU_ASSERT_STRING_EQUAL(o.tag_limits[1].tag, "session");
    CU_ASSERT_EQUAL(o.tag_limits[1].bytes, 1024);
    CU_ASSERT_EQUAL(o.check_every, 500);
    CU_ASSERT(om_dbg_wanted(&o));
    CU_ASSERT_EQUAL(om_opts_parse(&o, "poison=0xa5,fail=7,seed=010", "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(o.poison_byte, 0xa5);
    CU_ASSERT_EQUAL(o.fail_nth, 7);
    CU_ASSERT_EQUAL(o.fail_one_in, 0);
    CU_ASSERT_EQUAL(o.seed, 10); /* decimal, not octal */
    om_opts_default(&o);
    CU_ASSERT_EQUAL(om_opts_parse(&o, "fail=0", "test", err, sizeof err), 0);
    CU_ASSERT(o.fail_set && om_dbg_wanted(&o));
    om_opts_default(&o);
    CU_ASSERT_EQUAL(om_opts_parse(&o, "no-caller", "test", err, sizeof err), 0);
    CU_ASSERT(om_dbg_wanted(&o));
}

/* Every bad word is an error whose message names the word. */
static void test_options_bad(void)
{
    static const struct {
        const char *opts;   /* options string */
        const char *word;   /* must appear in the message */
    } bad[] = {
        {"bogus", "'bogus'"},
        {"quarantine=1M,frobnicate=3", "'frobnicate=3'"},
        {"quarantine", "'quarantine'"},
        {"quarantine=", "'quarantine='"},
        {"quarantine=12Q", "'quarantine=12Q'"},
        {"quarantine=-1", "'quarantine=-1'"},
        {"quarantine=99999999999999999999", "'quarantine=99999999999999999999'"},
        {"zero=1", "'zero=1'"},
        {"no-quarantine", "'no-quarantine'"},
        {"on-error=explode", "'on-error=explode'"},
        {"ZERO", "'ZERO'"},
        {"poison=256", "'poison=256'"},
        {"poison=", "'poison='"},
        {"poison=0x", "'poison=0x'"},
        {"fail", "'fail'"},
        {"fail=1/0", "'fail=1/0'"},
        {"fail=1/x", "'fail=1/x'"},
        {"fail=-3", "'fail=-3'"},
        {"seed=1k", "'seed=1k'"},
        {"check=", "'check='"},
        {"tag-limit=64K", "'tag-limit=64K'"},
        {"tag-limit=:64K", "'tag-limit=:64K'"},
        {"tag-limit=ctx:", "'tag-limit=ctx:'"},
        {"tag-limit=a234567890123456789012345678901234:1K", "'tag-limit=a2345"},
        {"fill=1", "'fill=1'"},
        {"limit=lots", "'limit=lots'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        CU_ASSERT_EQUAL(ossl_mem_options_check(bad[i].opts, err, sizeof err), OSSL_MEM_E_OPTIONS);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, bad[i].word));
    }
}

void test_options_register(void)
{
    static const struct unit_case cases[] = {
        {"test_options_good", test_options_good},
        {"test_options_bad", test_options_bad},
        {"test_options_debug", test_options_debug},
        {NULL, NULL},
    };
    unit_add_suite("options", cases);
}
