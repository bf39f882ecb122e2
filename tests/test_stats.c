/* test_stats.c - unit tests of statistics, tags and the report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit.h"
#include "om.h"

/* Allocations and frees move live bytes, live chunks and the call counters by exactly what was done. */
static void test_stats_arithmetic(void)
{
    enum { N = 100 };
    void *p[N];
    struct ossl_mem_stats s0 = unit_stats();
    size_t total = 0;
    for (unsigned i = 0; i < N; i++) {
        size_t n = 1 + i * 37;
        total += n;
        p[i] = CRYPTO_malloc(n, __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i]);
    }
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.live_bytes - s0.live_bytes, total);
    CU_ASSERT_EQUAL(s1.live_chunks - s0.live_chunks, N);
    CU_ASSERT_EQUAL(s1.allocs - s0.allocs, N);
    CU_ASSERT_EQUAL(s1.frees, s0.frees);
    CU_ASSERT(s1.peak_bytes >= s1.live_bytes);
    for (unsigned i = N; i-- > 0;) /* largest first: the small ones last stay in quarantine */
        CRYPTO_free(p[i], __FILE__, __LINE__);
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.live_bytes, s0.live_bytes);
    CU_ASSERT_EQUAL(s2.live_chunks, s0.live_chunks);
    CU_ASSERT_EQUAL(s2.frees - s0.frees, N);
    CU_ASSERT_EQUAL(s2.live_chunks, s2.allocs - s2.frees);
    CU_ASSERT(s2.quarantine_bytes > 0 && s2.quarantine_bytes <= om_g.opt.quarantine);
    CU_ASSERT(s2.quarantine_chunks > 0);
    CU_ASSERT_EQUAL(s2.hooks_replaced, 0);
}

/* The peak follows the highest live figure. */
static void test_stats_peak(void)
{
    struct ossl_mem_stats s0 = unit_stats();
    void *big = CRYPTO_malloc(s0.peak_bytes + (1 << 20), __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    CRYPTO_free(big, __FILE__, __LINE__);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT(s1.peak_bytes >= s0.live_bytes + s0.peak_bytes + (1 << 20));
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
}

/* Tags: nested push/pop, per-tag figures, a chunk keeps its tag when freed elsewhere. */
static void test_stats_tags(void)
{
    struct ossl_mem_tag_stats t;
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("nosuchtag", &t), OSSL_MEM_E_INVAL);
    CU_ASSERT_EQUAL(ossl_mem_tag_push("unit-a"), 0);
    void *a1 = CRYPTO_malloc(100, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_tag_push("unit-b"), 0);
    void *b1 = CRYPTO_malloc(7, __FILE__, __LINE__);
    void *b2 = CRYPTO_malloc(9, __FILE__, __LINE__);
    ossl_mem_tag_pop();
    void *a2 = CRYPTO_malloc(50, __FILE__, __LINE__);
    ossl_mem_tag_pop();
    ossl_mem_tag_pop(); /* popping an empty stack is harmless */
    CU_ASSERT_EQUAL(om_tls_tc->tag, 0);

    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-a", &t), 0);
    CU_ASSERT_EQUAL(t.live_bytes, 150);
    CU_ASSERT_EQUAL(t.live_chunks, 2);
    CU_ASSERT_EQUAL(t.allocs, 2);
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-b", &t), 0);
    CU_ASSERT_EQUAL(t.live_bytes, 16);
    CU_ASSERT_EQUAL(t.live_chunks, 2);

    /* realloc keeps the tag, even under another tag */
    CU_ASSERT_EQUAL(ossl_mem_tag_push("unit-c"), 0);
    b1 = CRYPTO_realloc(b1, 3000, __FILE__, __LINE__);
    CRYPTO_free(a1, __FILE__, __LINE__);
    ossl_mem_tag_pop();
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-b", &t), 0);
    CU_ASSERT_EQUAL(t.live_bytes, 3009);
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-a", &t), 0);
    CU_ASSERT_EQUAL(t.live_bytes, 50);
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-c", &t), 0);
    CU_ASSERT_EQUAL(t.live_chunks, 0);
    CRYPTO_free(a2, __FILE__, __LINE__);
    CRYPTO_free(b1, __FILE__, __LINE__);
    CRYPTO_free(b2, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_get_tag_stats("unit-b", &t), 0);
    CU_ASSERT_EQUAL(t.live_bytes, 0);
    CU_ASSERT_EQUAL(t.live_chunks, 0);
    CU_ASSERT_EQUAL(t.allocs, 3); /* the moving realloc made one more chunk under unit-b */

    /* limits and bad names */
    CU_ASSERT_EQUAL(ossl_mem_tag_push(""), OSSL_MEM_E_INVAL);
    CU_ASSERT_EQUAL(ossl_mem_tag_push(NULL), OSSL_MEM_E_INVAL);
    CU_ASSERT_EQUAL(ossl_mem_tag_push("a-name-that-is-much-longer-than-31-bytes"), OSSL_MEM_E_INVAL);
    for (unsigned i = 0; i < OSSL_MEM_MAX_TAG_DEPTH; i++)
        CU_ASSERT_EQUAL(ossl_mem_tag_push("unit-a"), 0);
    CU_ASSERT_EQUAL(ossl_mem_tag_push("unit-a"), OSSL_MEM_E_LIMIT);
    for (unsigned i = 0; i < OSSL_MEM_MAX_TAG_DEPTH; i++)
        ossl_mem_tag_pop();
}

/* The tag table fills up with a clear error (runs last: it uses up the table). */
static void test_stats_tag_table_full(void)
{
    int rc = 0;
    for (unsigned i = 0; i < OSSL_MEM_MAX_TAGS + 1 && rc == 0; i++) {
        char name[16];
        snprintf(name, sizeof name, "fill-%u", i);
        rc = ossl_mem_tag_push(name);
        if (rc == 0)
            ossl_mem_tag_pop();
    }
    CU_ASSERT_EQUAL(rc, OSSL_MEM_E_LIMIT);
}

/* Runs "python3 -m json.tool" on <path>; returns its exit status. */
static int json_valid(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 -m json.tool '%s' > /dev/null", path);
    return system(cmd);
}

/* The JSON report parses and the text report names the live chunk's site. */
static void test_stats_report(void)
{
    char path[] = "/tmp/ossl_mem_unit_XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    FILE *f = fdopen(fd, "w+");
    void *p = CRYPTO_malloc(5 << 20, "unit-report-site.c", 4242); /* biggest site by far */
    CU_ASSERT_EQUAL(ossl_mem_report(f, OSSL_MEM_REPORT_JSON), 0);
    fclose(f);
    CU_ASSERT_EQUAL(json_valid(path), 0);
    char text[1 << 16];
    f = fopen(path, "w+");
    CU_ASSERT_EQUAL(ossl_mem_report(f, OSSL_MEM_REPORT_TEXT), 0);
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    unlink(path);
    char *sites = strstr(text, "top allocation sites");
    CU_ASSERT_PTR_NOT_NULL(sites);
    CU_ASSERT_PTR_NOT_NULL(sites ? strstr(sites, "unit-report-site.c:4242") : NULL);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "live chunks:"));
    CU_ASSERT_EQUAL(ossl_mem_report(NULL, OSSL_MEM_REPORT_TEXT), OSSL_MEM_E_INVAL);
    CU_ASSERT_EQUAL(ossl_mem_report(stdout, 99), OSSL_MEM_E_INVAL);
    CRYPTO_free(p, __FILE__, __LINE__);
}

void test_stats_register(void)
{
    static const struct unit_case cases[] = {
        {"test_stats_arithmetic", test_stats_arithmetic},
        {"test_stats_peak", test_stats_peak},
        {"test_stats_tags", test_stats_tags},
        {"test_stats_report", test_stats_report},
        {NULL, NULL},
    };
    unit_add_suite("stats", cases);
}

void test_limits_register(void)
{
    static const struct unit_case cases[] = {
        {"test_stats_tag_table_full", test_stats_tag_table_full},
        {NULL, NULL},
    };
    unit_add_suite("limits", cases);
}
