/* unit.h - registration functions of the CUnit suites and small helpers they share. */
#ifndef UNIT_H
#define UNIT_H

#include <CUnit/CUnit.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

void test_pool_register(void);
void test_stats_register(void);
void test_options_register(void);
void test_check_register(void);
void test_threads_register(void);
void test_arena_register(void);
void test_limits_register(void);

/* Adds a suite <name> with the NULL-terminated list of {name, fn} pairs. */
struct unit_case {
    const char *name;   /* test name */
    CU_TestFunc fn;     /* test function */
};
void unit_add_suite(const char *name, const struct unit_case *cases);

/* Current stats (asserts the call works). */
struct ossl_mem_stats unit_stats(void);

#endif
