/* test_options.c - unit tests of the options parser. */
#include <string.h>

#include "unit.h"
#include "om.h"

static void test_options_good(void)
{
    struct om_opts o;
    char err[256];
    om_opts_default(&o);
    CU_ASSERT_EQUAL(o.quarantine, 64 * 1024);
    CU_ASSERT(o.zero);
    CU_ASSERT_EQUAL(o.policy, OM_POLICY_REPORT);
    CU_ASSERT_EQUAL(om_opts_parse(&o, " quarantine=4M , no-zero,on-error=abort,report=/tmp/x.json,"
                                      "reserve=1G,", "test", err, sizeof err), 0);
    CU_ASSERT_EQUAL(o.quarantine, 4u << 20);
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
        {NULL, NULL},
    };
    unit_add_suite("options", cases);
}
