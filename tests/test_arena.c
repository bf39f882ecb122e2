/* test_arena.c - unit tests of the shared arena in one process: placement, realloc, frees, faults, walk. */
#include <stdint.h>
#include <string.h>

#include <openssl/ssl.h>

#include "unit.h"
#include "om.h"

#define N 400

/* Sizes that cover the small classes, their edges and the arena's large chunks. */
static size_t size_of(unsigned i)
{
    static const size_t edge[] = {0, 1, 15, 16, 17, 32, 33, 128, 129, 1024, 1025, 32768, 32769,
                                  70000, 200000};
    return i < sizeof edge / sizeof edge[0] ? edge[i] : 1 + (i * 7919u) % 3000;
}

/* Inside a scope everything goes to the arena, aligned, without overlap; stats follow exactly. */
static void test_arena_placement(void)
{
    ossl_mem_shared_begin(); /* the first scope's warm-up allocates private state */
    ossl_mem_shared_end();
    struct ossl_mem_stats s0 = unit_stats();
    CU_ASSERT_EQUAL_FATAL(ossl_mem_shared_begin(), 0);
    CU_ASSERT_EQUAL(ossl_mem_shared_begin(), 0); /* nested */
    unsigned char *p[N];
    for (unsigned i = 0; i < N; i++) {
        p[i] = CRYPTO_malloc(size_of(i), __FILE__, __LINE__);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i]);
        CU_ASSERT(ossl_mem_is_shared(p[i]));
        CU_ASSERT_EQUAL((uintptr_t)p[i] % 16, 0);
        memset(p[i], (int)(i & 0xff), size_of(i));
    }
    CU_ASSERT_EQUAL(ossl_mem_shared_end(), 0);
    CU_ASSERT_EQUAL(ossl_mem_shared_end(), 0);
    CU_ASSERT_EQUAL(ossl_mem_shared_end(), OSSL_MEM_E_SCOPE);
    void *priv = CRYPTO_malloc(64, __FILE__, __LINE__);
    CU_ASSERT(!ossl_mem_is_shared(priv));
    CRYPTO_free(priv, __FILE__, __LINE__);
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.shared_live_chunks - s0.shared_live_chunks, N);
    CU_ASSERT(s1.shared_used > s0.shared_used);
    CU_ASSERT_EQUAL(s1.live_chunks, s0.live_chunks); /* private figures untouched */
    for (unsigned i = 0; i < N; i++)
        for (size_t k = 0; k < size_of(i); k++)
            if (p[i][k] != (unsigned char)(i & 0xff)) {
                CU_FAIL("shared chunks overlap");
                i = N;
                break;
            }
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
    /* the owner frees outside any scope: performed */
    for (unsigned i = 0; i < N; i++)
        CRYPTO_free(p[i], __FILE__, __LINE__);
    struct ossl_mem_stats s2 = unit_stats();
    CU_ASSERT_EQUAL(s2.shared_live_chunks, s0.shared_live_chunks);
    CU_ASSERT_EQUAL(s2.shared_used, s0.shared_used);
    CU_ASSERT_EQUAL(s2.inherited_frees, s0.inherited_frees);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* realloc keeps a shared chunk shared (in place or moving), and its contents. */
static void test_arena_realloc(void)
{
    ossl_mem_shared_begin();
    unsigned char *p = CRYPTO_malloc(100, __FILE__, __LINE__);
    ossl_mem_shared_end();
    for (int i = 0; i < 100; i++)
        p[i] = (unsigned char)i;
    unsigned char *q = CRYPTO_realloc(p, 110, __FILE__, __LINE__); /* fits its class */
    CU_ASSERT_PTR_EQUAL(q, p);
    q = CRYPTO_realloc(q, 5000, __FILE__, __LINE__); /* moves, outside any scope */
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT(ossl_mem_is_shared(q));
    q = CRYPTO_realloc(q, 100000, __FILE__, __LINE__); /* to a large arena chunk */
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT(ossl_mem_is_shared(q));
    int same = 1;
    for (int i = 0; i < 100; i++)
        same &= q[i] == (unsigned char)i;
    CU_ASSERT(same);
    q = CRYPTO_realloc(q, 20, __FILE__, __LINE__);
    CU_ASSERT(ossl_mem_is_shared(q));
    CU_ASSERT_EQUAL(q[19], 19);
    CRYPTO_free(q, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* Double, interior and realloc-after-free on shared chunks are detected and skipped. */
static void test_arena_faults(void)
{
    struct ossl_mem_stats s0 = unit_stats();
    ossl_mem_shared_begin();
    char *p = CRYPTO_malloc(48, __FILE__, __LINE__);
    char *big = CRYPTO_malloc(50000, __FILE__, __LINE__);
    ossl_mem_shared_end();
    CRYPTO_free(p + 16, __FILE__, __LINE__);          /* interior */
    CRYPTO_free(big + 4096, __FILE__, __LINE__);      /* interior of a large one */
    CRYPTO_free(p, __FILE__, __LINE__);
    CRYPTO_free(p, __FILE__, __LINE__);               /* double */
    CU_ASSERT_PTR_NULL(CRYPTO_realloc(p, 64, __FILE__, __LINE__)); /* realloc after free */
    CRYPTO_free(big, __FILE__, __LINE__);
    CRYPTO_free(big, __FILE__, __LINE__);             /* double, large */
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.invalid_frees - s0.invalid_frees, 2);
    CU_ASSERT_EQUAL(s1.double_frees - s0.double_frees, 3);
    CU_ASSERT_EQUAL(s1.shared_live_chunks, s0.shared_live_chunks);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* A chunk freed in the arena is wiped; a write into it is found by the check. */
static void test_arena_write_after_free(void)
{
    ossl_mem_shared_begin();
    char *p = CRYPTO_malloc(200, __FILE__, __LINE__);
    ossl_mem_shared_end();
    memset(p, 'k', 200);
    CRYPTO_free(p, __FILE__, __LINE__);
    int wiped = 1;
    for (int i = 8; i < 200; i++)
        wiped &= p[i] == 0;
    CU_ASSERT(wiped);
    struct ossl_mem_stats s0 = unit_stats();
    p[100] = 'x';
    CU_ASSERT_EQUAL(ossl_mem_check(), 1);
    CU_ASSERT_EQUAL(unit_stats().uaf_writes, s0.uaf_writes + 1);
    p[100] = 0;
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

/* Registration refuses what is not a context in the arena; a context goes through its life. */
static void test_arena_contexts(void)
{
    int x;
    CU_ASSERT_EQUAL(ossl_mem_share_ssl_ctx(NULL), OSSL_MEM_E_INVAL);
    CU_ASSERT_EQUAL(ossl_mem_share_ssl_ctx((struct ssl_ctx_st *)&x), OSSL_MEM_E_NOT_SHARED);
    CU_ASSERT_EQUAL(ossl_mem_retire_ssl_ctx((struct ssl_ctx_st *)&x), OSSL_MEM_E_UNKNOWN);
    CU_ASSERT_EQUAL(ossl_mem_ssl_ctx_done((struct ssl_ctx_st *)&x), OSSL_MEM_E_UNKNOWN);
    CU_ASSERT_EQUAL(ossl_mem_ssl_ctx_done(NULL), 0);
    CU_ASSERT_EQUAL(ossl_mem_worker_exited(0), OSSL_MEM_E_INVAL);
    struct ossl_mem_stats s0 = unit_stats();
    CU_ASSERT_EQUAL_FATAL(ossl_mem_shared_begin(), 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char *not_ctx = CRYPTO_malloc(24, __FILE__, __LINE__);
    ossl_mem_shared_end();
    CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
    CU_ASSERT_EQUAL(ossl_mem_share_ssl_ctx((struct ssl_ctx_st *)not_ctx), OSSL_MEM_E_INVAL);
    CRYPTO_free(not_ctx, __FILE__, __LINE__);
    CU_ASSERT_EQUAL(ossl_mem_share_ssl_ctx(ctx), 0);
    CU_ASSERT_EQUAL(ossl_mem_share_ssl_ctx(ctx), OSSL_MEM_E_INVAL); /* twice */
    CU_ASSERT_EQUAL(unit_stats().shared_contexts, s0.shared_contexts + 1);
    SSL_CTX_free(ctx); /* pinned: nothing happens */
    CU_ASSERT_EQUAL(SSL_CTX_get_session_cache_mode(ctx) & SSL_SESS_CACHE_NO_INTERNAL,
                    SSL_SESS_CACHE_NO_INTERNAL);
    CU_ASSERT_EQUAL(ossl_mem_retire_ssl_ctx(ctx), 1); /* nobody else: destroyed now */
    struct ossl_mem_stats s1 = unit_stats();
    CU_ASSERT_EQUAL(s1.shared_contexts, s0.shared_contexts);
    CU_ASSERT_EQUAL(s1.shared_live_chunks, s0.shared_live_chunks);
    CU_ASSERT_EQUAL(s1.double_frees, s0.double_frees);
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

void test_arena_register(void)
{
    static const struct unit_case cases[] = {
        {"placement, alignment, stats", test_arena_placement},
        {"realloc keeps shared chunks shared", test_arena_realloc},
        {"double, interior and realloc-after-free", test_arena_faults},
        {"wipe and write after free", test_arena_write_after_free},
        {"context registration and destruction", test_arena_contexts},
        {NULL, NULL},
    };
    unit_add_suite("arena", cases);
}
