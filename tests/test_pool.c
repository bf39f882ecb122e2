/* test_pool.c - unit tests of the private pools: classes, alignment, realloc, large chunks, limits. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "unit.h"
#include "om.h"

/* Fills <n> bytes at <p> with a pattern derived from <seed>. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31 + i * 7 + 1);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31 + i * 7 + 1))
            return 0;
    return 1;
}

/* Every size maps to the smallest class that holds it. */
static void test_pool_size_class_map(void)
{
    for (size_t n = 0; n <= OM_SMALL_MAX; n++) {
        unsigned c = om_size_class(n);
        CU_ASSERT_FATAL(c < OM_NCLS);
        CU_ASSERT_FATAL(om_cls[c].size >= n);
        if (c > 0)
            CU_ASSERT_FATAL(om_cls[c - 1].size < n);
    }
}

/* The reciprocal division used to classify pointers is exact for every offset of every run. */
static void test_pool_division_exact(void)
{
    for (unsigned c = 0; c < OM_NCLS; c++) {
        const struct om_class *k = &om_cls[c];
        CU_ASSERT(k->nslots * OM_SLOT_SIZE < OM_SEG_SIZE);
        for (uint64_t off = 0; off < (uint64_t)k->nchunks * k->stride; off++) {
            uint64_t q = (off * k->recip) >> 40;
            if (q != off / k->stride) {
                CU_FAIL("reciprocal division wrong");
                return;
            }
        }
    }
}

/* Every class: the boundary sizes land in it, are 16-aligned, fully writable and preserved. */
static void test_pool_every_class(void)
{
    for (unsigned c = 0; c < OM_NCLS; c++) {
        size_t lo = c ? om_cls[c - 1].size + 1 : 0, hi = om_cls[c].size;
        size_t sizes[] = {lo, (lo + hi) / 2, hi};
        for (unsigned i = 0; i < 3; i++) {
            unsigned char *p = CRYPTO_malloc(sizes[i], __FILE__, __LINE__);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            CU_ASSERT_EQUAL((uintptr_t)p % 16, 0);
            struct om_chunk *h = om_hdr(p);
            CU_ASSERT_EQUAL(h->cls, c);
            CU_ASSERT_EQUAL(h->size, sizes[i]);
            CU_ASSERT_EQUAL(h->state, OM_ST_LIVE);
            fill(p, sizes[i], c);
            CU_ASSERT(same(p, sizes[i], c));
            CRYPTO_free(p, __FILE__, __LINE__);
            CU_ASSERT_EQUAL(h->state, OM_ST_FREED);
        }
    }
}

/* Many live chunks of random sizes never overlap and keep their contents. */
static void test_pool_no_overlap(void)
{
    enum { N = 3000 };
    static unsigned char *p[N];
    static size_t n[N];
    srand(1);
    for (unsigned i = 0; i < N; i++) {
        n[i] = (size_t)rand() % (i % 50 == 0 ? 70000 : 600);
        p[i] = CRYPTO_malloc(n[i], __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i]);
        CU_ASSERT_EQUAL((uintptr_t)p[i] % 16, 0);
        fill(p[i], n[i], i);
    }
    unsigned bad = 0;
    for (unsigned i = 0; i < N; i++) {
        bad += !same(p[i], n[i], i);
        CRYPTO_free(p[i], __FILE__, __LINE__);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_pool_zero_size(void)
{
    void *a = CRYPTO_malloc(0, __FILE__, __LINE__);
    void *b = CRYPTO_malloc(0, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL(a);
    CU_ASSERT_PTR_NOT_NULL(b);
    CU_ASSERT_PTR_NOT_EQUAL(a, b);
    CRYPTO_free(a, __FILE__, __LINE__);
    CRYPTO_free(b, __FILE__, __LINE__);
    CRYPTO_free(NULL, __FILE__, __LINE__); /* must be a no-op */
}

/* realloc: in place within a class, moving across classes, shrinking, NULL and 0. */
static void test_pool_realloc(void)
{
    struct ossl_mem_stats s0 = unit_stats();
    unsigned char *p = CRYPTO_realloc(NULL, 40, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    fill(p, 40, 9);
    unsigned char *q = CRYPTO_realloc(p, 48, __FILE__, __LINE__); /* same class: in place */
    CU_ASSERT_PTR_EQUAL(q, p);
    CU_ASSERT(same(q, 40, 9));
    CU_ASSERT_EQUAL(om_hdr(q)->size, 48);
    p = CRYPTO_realloc(q, 5000, __FILE__, __LINE__); /* grows across classes: moves */
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_PTR_NOT_EQUAL(p, q);
    CU_ASSERT(same(p, 40, 9));
    CU_ASSERT_EQUAL(om_hdr(q)->state, OM_ST_FREED);
    fill(p, 5000, 3);
    q = CRYPTO_realloc(p, 4000, __FILE__, __LINE__); /* shrink within the class: in place */
    CU_ASSERT_PTR_EQUAL(q, p);
    CU_ASSERT(same(q, 4000, 3));
    p = CRYPTO_realloc(q, 100, __FILE__, __LINE__); /* shrink far: moves to a small class */
    CU_ASSERT_PTR_NOT_EQUAL(p, q);
    CU_ASSERT(same(p, 100, 3));
    CU_ASSERT(om_cls[om_hdr(p)->cls].size == 112);
    q = CRYPTO_realloc(p, 200000, __FILE__, __LINE__); /* small to large */
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT(same(q, 100, 3));
    CU_ASSERT_EQUAL(om_hdr(q)->cls, OM_CLS_LARGE);
    fill(q, 200000, 4);
    p = CRYPTO_realloc(q, 150000, __FILE__, __LINE__); /* large, in place */
    CU_ASSERT_PTR_EQUAL(p, q);
    q = CRYPTO_realloc(p, 1000, __FILE__, __LINE__); /* large to small */
    CU_ASSERT_EQUAL(om_hdr(q)->cls, om_size_class(1000));
    CU_ASSERT(same(q, 1000, 4));
    CU_ASSERT_PTR_NULL(CRYPTO_realloc(q, 0, __FILE__, __LINE__)); /* frees, returns NULL */
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    CU_ASSERT_EQUAL(s1.live_chunks, s0.live_chunks);
    CU_ASSERT_EQUAL(s1.reallocs - s0.reallocs, 9);
    CU_ASSERT_EQUAL(s1.allocs - s0.allocs, 5);
    CU_ASSERT_EQUAL(s1.frees - s0.frees, 5);
    CU_ASSERT_EQUAL(s1.double_frees, s0.double_frees);
    CU_ASSERT_EQUAL(s1.invalid_frees, s0.invalid_frees);
}

/* Large chunks get their own mapping, counted while live. */
static void test_pool_large(void)
{
    struct ossl_mem_stats s0 = unit_stats();
    size_t n = 3u << 20;
    unsigned char *p = CRYPTO_malloc(n, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL((uintptr_t)p % 16, 0);
    memset(p, 0x5a, n);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.large_chunks, s0.large_chunks + 1);
    CU_ASSERT(s1.private_mapped >= s0.private_mapped + n);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes + n);
    CU_ASSERT(s1.peak_bytes >= s1.live_bytes);
    const char *why;
    CU_ASSERT_PTR_NULL(om_pool_find(p, &why)); /* not in the small pools */
    CRYPTO_free(p, __FILE__, __LINE__);
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.large_chunks, s0.large_chunks);
    CU_ASSERT_EQUAL(s2.live_bytes, s0.live_bytes);
}

/* Requests that cannot be met fail with NULL and ENOMEM, never a short block. */
static void test_pool_size_overflow(void)
{
    struct ossl_mem_stats s0 = unit_stats();
    errno = 0;
    CU_ASSERT_PTR_NULL(CRYPTO_malloc(SIZE_MAX, __FILE__, __LINE__));
    CU_ASSERT_EQUAL(errno, ENOMEM);
    errno = 0;
    CU_ASSERT_PTR_NULL(CRYPTO_malloc(SIZE_MAX - 8, __FILE__, __LINE__));
    CU_ASSERT_EQUAL(errno, ENOMEM);
    CU_ASSERT_PTR_NULL(CRYPTO_malloc(OM_MAX_REQUEST + 1, __FILE__, __LINE__));
    void *p = CRYPTO_malloc(10, __FILE__, __LINE__);
    CU_ASSERT_PTR_NULL(CRYPTO_realloc(p, SIZE_MAX, __FILE__, __LINE__));
    CU_ASSERT_EQUAL(om_hdr(p)->state, OM_ST_LIVE); /* the old block is untouched */
    CRYPTO_free(p, __FILE__, __LINE__);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.failed_allocs - s0.failed_allocs, 4);
}

/* Pointer classification never mistakes an interior, stack or foreign pointer for a chunk. */
static void test_pool_classify(void)
{
    unsigned char *p = CRYPTO_malloc(100, __FILE__, __LINE__);
    const char *why = NULL;
    CU_ASSERT_PTR_EQUAL(om_pool_find(p, &why), om_hdr(p));
    for (unsigned off = 1; off < 112; off++) {
        CU_ASSERT_PTR_NULL(om_pool_find(p + off, &why));
        CU_ASSERT_PTR_NOT_NULL(why);
    }
    int local;
    CU_ASSERT_PTR_NULL(om_pool_find(&local, &why));
    CU_ASSERT_PTR_NULL(why);
    void *m = malloc(32);
    CU_ASSERT_PTR_NULL(om_pool_find(m, &why));
    CU_ASSERT_PTR_NULL(why);
    free(m);
    CU_ASSERT_PTR_NULL(om_pool_find(om_g.region + OM_HDR, &why)); /* segment header */
    CU_ASSERT_PTR_NOT_NULL(why);
    CRYPTO_free(p, __FILE__, __LINE__);
}

/* Whether the <n> bytes at <p> are all zero. */
static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/*
 * With zeroing (the unit tests' default), a freed chunk is zero over its whole usable size,
 * although free wipes only the requested bytes: a chunk is handed out zero and its owner
 * writes within its request; a realloc that shrinks in place wipes the bytes it gives up.
 */
static void test_pool_freed_all_zero(void)
{
    for (unsigned c = 0; c < OM_NCLS; c++) {
        size_t lo = c ? om_cls[c - 1].size + 1 : 1, hi = om_cls[c].size;
        size_t sizes[] = {lo, (lo + hi) / 2 + 1, hi};
        for (unsigned i = 0; i < 3; i++) {
            unsigned char *p = CRYPTO_malloc(sizes[i], __FILE__, __LINE__);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            CU_ASSERT(all_zero(p, hi)); /* handed out zero */
            fill(p, sizes[i], c + i);
            CRYPTO_free(p, __FILE__, __LINE__);
            CU_ASSERT(all_zero(p, hi));
        }
        /* shrink in place (more than half the class), then free */
        unsigned char *p = CRYPTO_malloc(hi, __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        fill(p, hi, c);
        size_t small = hi / 2 + 1;
        unsigned char *q = CRYPTO_realloc(p, small, __FILE__, __LINE__);
        CU_ASSERT_PTR_EQUAL(q, p);
        CU_ASSERT(same(q, small, c));
        if (c > 0) /* class 0 shrinks in place whatever the size: check its tail too */
            CU_ASSERT(all_zero(q + small, hi - small));
        CRYPTO_free(q, __FILE__, __LINE__);
        CU_ASSERT(all_zero(p, hi));
    }
}

/*
 * Chunks leave the quarantine without being touched: their headers still say freed with a
 * good check (ossl_mem_check finds nothing), a second free is still a double free, and they
 * are handed out again.
 */
static void test_pool_quarantine_exit(void)
{
    enum { N = 4096 }; /* 4096 x 64 bytes: 64 times the default 4 KiB budget */
    static unsigned char *p[N];
    struct ossl_mem_stats s0 = unit_stats();
    for (unsigned i = 0; i < N; i++)
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i] = CRYPTO_malloc(64, __FILE__, __LINE__));
    for (unsigned i = 0; i < N; i++)
        CRYPTO_free(p[i], __FILE__, __LINE__);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT(s1.quarantine_bytes <= om_g.opt.quarantine);
    CU_ASSERT(s1.quarantine_chunks < N / 2); /* most have left it */
    for (unsigned i = 0; i < N; i++)
        CU_ASSERT_EQUAL(om_hdr(p[i])->state, OM_ST_FREED);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
    CRYPTO_free(p[0], __FILE__, __LINE__); /* the first freed: long out of the quarantine */
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.double_frees, s1.double_frees + 1);
    CU_ASSERT_EQUAL(s2.frees, s1.frees);
    unsigned again = 0;
    for (unsigned i = 0; i < N / 2; i++) {
        unsigned char *q = CRYPTO_malloc(64, __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(q);
        CU_ASSERT_EQUAL(om_hdr(q)->state, OM_ST_LIVE);
        for (unsigned j = 0; j < N && !again; j++)
            again = q == p[j];
        p[i] = q;
    }
    CU_ASSERT(again); /* old chunks came back */
    for (unsigned i = 0; i < N / 2; i++)
        CRYPTO_free(p[i], __FILE__, __LINE__);
    CU_ASSERT_EQUAL(unit_stats().live_bytes, s0.live_bytes);
}

/*
 * The default quarantine's window: a chunk freed and followed by 40 alloc/free pairs of its
 * class (1,920 bytes, under the 4 KiB budget) is not handed out to any of them, and a late
 * second free of it is still a double free (counted, not performed). The quarantine then holds
 * its whole budget in 16-byte chunks (its ring is sized to hold them).
 */
static void test_pool_quarantine_window(void)
{
    CU_ASSERT_EQUAL(om_g.opt.quarantine, 4 * 1024);
    unsigned char *p = CRYPTO_malloc(40, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CRYPTO_free(p, __FILE__, __LINE__);
    for (int i = 0; i < 40; i++) {
        unsigned char *q = CRYPTO_malloc(40, __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(q);
        CU_ASSERT_PTR_NOT_EQUAL(q, p);
        CRYPTO_free(q, __FILE__, __LINE__);
    }
    struct ossl_mem_stats s1 = unit_stats();
    CRYPTO_free(p, __FILE__, __LINE__);
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.double_frees, s1.double_frees + 1);
    CU_ASSERT_EQUAL(s2.frees, s1.frees);
    /* the ring, sized to the budget, holds the budget's worth of the smallest chunks */
    enum { M = 300 };
    static void *v[M];
    om_g.opt.quarantine_over = 0; /* (as quarantine-over=0) */
    for (int i = 0; i < M; i++)
        CU_ASSERT_PTR_NOT_NULL_FATAL(v[i] = CRYPTO_malloc(16, __FILE__, __LINE__));
    for (int i = 0; i < M; i++)
        CRYPTO_free(v[i], __FILE__, __LINE__);
    om_g.opt.quarantine_over = 32;
    struct ossl_mem_stats s3 = unit_stats();
    CU_ASSERT(s3.quarantine_bytes > 4096 - 512 && s3.quarantine_bytes <= 4096);
    CU_ASSERT_EQUAL(s3.quarantine_chunks * 16, s3.quarantine_bytes);
}

/*
 * quarantine-over: by default a chunk of 32 requested bytes or less skips the quarantine (the
 * next allocation of its class gets it back, wiped), one of 33 enters it; its freed mark still
 * catches a second free before the chunk is handed out again.
 */
static void test_pool_quarantine_over(void)
{
    CU_ASSERT_EQUAL(om_g.opt.quarantine_over, 32);
    unsigned char *p = CRYPTO_malloc(32, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(p, 0xAB, 32);
    struct ossl_mem_stats s0 = unit_stats();
    CRYPTO_free(p, __FILE__, __LINE__);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.quarantine_chunks, s0.quarantine_chunks);
    CRYPTO_free(p, __FILE__, __LINE__); /* still unused: a double free */
    CU_ASSERT_EQUAL(unit_stats().double_frees, s1.double_frees + 1);
    unsigned char *q = CRYPTO_malloc(32, __FILE__, __LINE__);
    CU_ASSERT_PTR_EQUAL(q, p);
    CU_ASSERT(all_zero(q, 32));
    CRYPTO_free(q, __FILE__, __LINE__);
    /* a 33-byte chunk is held back: the next allocation of its class gets another one (a
       count of the quarantine could move either way here, as the push may drain older ones) */
    unsigned char *r = CRYPTO_malloc(33, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CRYPTO_free(r, __FILE__, __LINE__);
    unsigned char *t = CRYPTO_malloc(33, __FILE__, __LINE__);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_PTR_NOT_EQUAL(t, r);
    CRYPTO_free(t, __FILE__, __LINE__);
}

/*
 * An OpenSSL object freed twice within the quarantine's window: the second EVP_MD_CTX_free()
 * finds the context wiped (its digest state pointer is NULL), so it frees nothing but the
 * context itself, which is refused as one double free. Small allocations in between (they skip
 * the quarantine) and a few larger ones do not get the context back.
 */
static void test_pool_object_double_free(void)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_FATAL(EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1);
    CU_ASSERT(EVP_DigestUpdate(c, "abc", 3) == 1);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < 30; i++) {
        void *a = CRYPTO_malloc(24, __FILE__, __LINE__), *b = CRYPTO_malloc(40, __FILE__, __LINE__);
        CU_ASSERT(a != (void *)c && b != (void *)c);
        CRYPTO_free(a, __FILE__, __LINE__);
        CRYPTO_free(b, __FILE__, __LINE__);
    }
    struct ossl_mem_stats s1 = unit_stats();
    EVP_MD_CTX_free(c);
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.double_frees, s1.double_frees + 1);
    CU_ASSERT_EQUAL(s2.invalid_frees, s1.invalid_frees);
    CU_ASSERT_EQUAL(s2.corrupt_headers, s1.corrupt_headers);
    CU_ASSERT_EQUAL(s2.frees, s1.frees);
    CU_ASSERT_EQUAL(s2.live_bytes, s1.live_bytes);
}

/* Comparison of pointers for qsort. */
static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

/*
 * The central store (an address stack): 30,000 chunks of one class pass through it and come
 * back, no chunk twice, and the private segments do not grow to serve the second round.
 */
static void test_pool_central_reuse(void)
{
    enum { N = 30000 };
    static unsigned char *p[N];
    for (unsigned i = 0; i < N; i++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i] = CRYPTO_malloc(32, __FILE__, __LINE__));
        p[i][0] = (unsigned char)i;
    }
    for (unsigned i = 0; i < N; i++)
        CRYPTO_free(p[i], __FILE__, __LINE__);
    size_t mapped = unit_stats().private_mapped;
    for (unsigned i = 0; i < N; i++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i] = CRYPTO_malloc(32, __FILE__, __LINE__));
        CU_ASSERT_EQUAL(p[i][0], 0);
        p[i][0] = 1;
    }
    CU_ASSERT_EQUAL(unit_stats().private_mapped, mapped);
    qsort(p, N, sizeof p[0], cmp_ptr);
    unsigned dup = 0;
    for (unsigned i = 1; i < N; i++)
        dup += p[i] == p[i - 1];
    CU_ASSERT_EQUAL(dup, 0);
    for (unsigned i = 0; i < N; i++)
        CRYPTO_free(p[i], __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

void test_pool_register(void)
{
    static const struct unit_case cases[] = {
        {"test_pool_size_class_map", test_pool_size_class_map},
        {"test_pool_division_exact", test_pool_division_exact},
        {"test_pool_every_class", test_pool_every_class},
        {"test_pool_no_overlap", test_pool_no_overlap},
        {"test_pool_zero_size", test_pool_zero_size},
        {"test_pool_realloc", test_pool_realloc},
        {"test_pool_large", test_pool_large},
        {"test_pool_size_overflow", test_pool_size_overflow},
        {"test_pool_classify", test_pool_classify},
        {"test_pool_freed_all_zero", test_pool_freed_all_zero},
        {"test_pool_quarantine_exit", test_pool_quarantine_exit},
        {"test_pool_quarantine_window", test_pool_quarantine_window},
        {"test_pool_quarantine_over", test_pool_quarantine_over},
        {"test_pool_object_double_free", test_pool_object_double_free},
        {"test_pool_central_reuse", test_pool_central_reuse},
        {NULL, NULL},
    };
    unit_add_suite("pool", cases);
}
