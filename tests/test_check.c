/* test_check.c - unit tests of ossl_mem_check(): clean pools pass, planted damage is found. */
#include <string.h>

#include "unit.h"
#include "om.h"

static void test_check_clean(void)
{
    void *p = CRYPTO_malloc(77, __FILE__, __LINE__);
    void *q = CRYPTO_malloc(100000, __FILE__, __LINE__);
    CRYPTO_free(p, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
    CRYPTO_free(q, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* A flipped header byte (an underflow from the previous chunk) is found, then repaired. */
static void test_check_header_damage(void)
{
    unsigned char *p = CRYPTO_malloc(40, __FILE__, __LINE__);
    struct om_chunk *h = om_hdr(p);
    struct om_chunk saved = *h;
    struct ossl_mem_stats s0 = unit_stats();
    ((unsigned char *)h)[1] ^= 0x40; /* size field */
    CU_ASSERT_EQUAL(ossl_mem_check(), 1);
    *h = saved;
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.corrupt_headers, s0.corrupt_headers + 1);
    /* a free through a damaged header is refused, not trusted */
    ((unsigned char *)h)[14] ^= 0xff; /* the check itself */
    CRYPTO_free(p, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(h->state, OM_ST_LIVE);
    *h = saved;
    CRYPTO_free(p, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(h->state, OM_ST_FREED);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* A write into a freed (wiped) chunk is found as a write after free. */
static void test_check_write_after_free(void)
{
    unsigned char *p = CRYPTO_malloc(64, __FILE__, __LINE__);
    CRYPTO_free(p, __FILE__, __LINE__);
    struct ossl_mem_stats s0 = unit_stats();
    p[40] = 0x77;
    CU_ASSERT_EQUAL(ossl_mem_check(), 1);
    p[40] = 0;
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.uaf_writes, s0.uaf_writes + 1);
}

void test_check_register(void)
{
    static const struct unit_case cases[] = {
        {"test_check_clean", test_check_clean},
        {"test_check_header_damage", test_check_header_damage},
        {"test_check_write_after_free", test_check_write_after_free},
        {NULL, NULL},
    };
    unit_add_suite("check", cases);
}
