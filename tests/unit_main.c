/* unit_main.c - the one CUnit runner: installs ossl_mem, runs every suite, exits with the failure count. */
#include <stdio.h>
#include <stdlib.h>

#include <CUnit/Basic.h>

#include <ossl_mem/ossl_mem.h>

#include "unit.h"

int main(void)
{
    /* The runner is a fresh process that has not touched OpenSSL: install first. */
    struct ossl_mem_config cfg = {.version = OSSL_MEM_CONFIG_VERSION,
                                  .flags = OSSL_MEM_CFG_IGNORE_ENV,
                                  .options = "no-shared-locks"}; /* static: no lock interposition */
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        fprintf(stderr, "unit_tests: ossl_mem_init: %s\n", ossl_mem_strerror(rc));
        return 1;
    }
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    test_pool_register();
    test_stats_register();
    test_options_register();
    test_check_register();
    test_threads_register();
    test_arena_register();
    test_limits_register();
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed > 255 ? 255 : (int)failed;
}

void unit_add_suite(const char *name, const struct unit_case *cases)
{
    CU_pSuite s = CU_add_suite(name, NULL, NULL);
    for (; s && cases->name; cases++)
        CU_add_test(s, cases->name, cases->fn);
}

struct ossl_mem_stats unit_stats(void)
{
    struct ossl_mem_stats st;
    CU_ASSERT_EQUAL(ossl_mem_get_stats(&st), 0);
    return st;
}
