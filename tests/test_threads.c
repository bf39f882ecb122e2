/* test_threads.c - 8 threads allocating and freeing across each other; stats and check stay exact. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "unit.h"

#define THREADS     8
#define SLOTS       4096
#define OPS         400000  /* per thread: about a second of work here, more under valgrind */

/* Slots shared by all threads: a chunk put here by one thread is often freed by another. */
static _Atomic(unsigned char *) slot[SLOTS];
static atomic_uint corrupt;

struct worker {
    pthread_t th;       /* the thread */
    unsigned seed;      /* xorshift state */
    unsigned id;        /* 0..THREADS-1 */
};

static unsigned next_rand(unsigned *s)
{
    unsigned x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* A chunk stores its own size in its first bytes and a pattern after it. */
static unsigned char *make(size_t n, unsigned char v)
{
    unsigned char *p = CRYPTO_malloc(n, __FILE__, __LINE__);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    memset(p + sizeof n, v, n - sizeof n);
    return p;
}

static void verify_and_free(unsigned char *p)
{
    size_t n;
    memcpy(&n, p, sizeof n);
    unsigned char v = p[n - 1];
    for (size_t i = sizeof n; i < n; i++)
        if (p[i] != v) {
            atomic_fetch_add(&corrupt, 1);
            break;
        }
    CRYPTO_free(p, __FILE__, __LINE__);
}

static void *work(void *arg)
{
    struct worker *w = arg;
    char tag[16] = "thr-0";
    tag[4] = (char)('0' + w->id);
    ossl_mem_tag_push(tag);
    for (unsigned i = 0; i < OPS; i++) {
        unsigned r = next_rand(&w->seed);
        size_t n = sizeof(size_t) + 1 + (r % 8 == 0 ? r % 3000 : r % 60);
        if (r % 997 == 0)
            n = 40000 + r % 50000; /* now and then a large chunk */
        unsigned char *p = make(n, (unsigned char)r);
        if (!p) {
            atomic_fetch_add(&corrupt, 1);
            continue;
        }
        unsigned char *old = atomic_exchange(&slot[(r >> 8) % SLOTS], p);
        if (old)
            verify_and_free(old);
        if (r % 5 == 0) {
            unsigned char *q = atomic_exchange(&slot[(r >> 3) % SLOTS], NULL);
            if (q) {
                size_t m = sizeof(size_t) + 1 + r % 200;
                size_t on;
                memcpy(&on, q, sizeof on);
                unsigned char v = q[on - 1];
                unsigned char *g = CRYPTO_realloc(q, on > m ? on : m, __FILE__, __LINE__);
                if (g) {
                    memset(g + on, v, (on > m ? on : m) - on);
                    size_t nn = on > m ? on : m;
                    memcpy(g, &nn, sizeof nn);
                    verify_and_free(g);
                } else {
                    verify_and_free(q);
                }
            }
        }
    }
    ossl_mem_tag_pop();
    return NULL;
}

static void test_threads_cross_free(void)
{
    struct ossl_mem_stats s0;
    CU_ASSERT_EQUAL_FATAL(ossl_mem_get_stats(&s0), 0);
    static struct worker w[THREADS];
    for (unsigned i = 0; i < THREADS; i++) {
        w[i].seed = 2463534242u + i * 7919;
        w[i].id = i;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&w[i].th, NULL, work, &w[i]), 0);
    }
    for (unsigned i = 0; i < THREADS; i++)
        pthread_join(w[i].th, NULL);
    for (unsigned i = 0; i < SLOTS; i++) {
        unsigned char *p = atomic_exchange(&slot[i], NULL);
        if (p)
            verify_and_free(p);
    }
    struct ossl_mem_stats s1;
    CU_ASSERT_EQUAL(ossl_mem_get_stats(&s1), 0);
    CU_ASSERT_EQUAL(atomic_load(&corrupt), 0);
    CU_ASSERT_EQUAL(s1.live_bytes, s0.live_bytes);
    CU_ASSERT_EQUAL(s1.live_chunks, s0.live_chunks);
    CU_ASSERT_EQUAL(s1.allocs - s0.allocs, s1.frees - s0.frees);
    CU_ASSERT(s1.allocs - s0.allocs >= (uint64_t)THREADS * OPS);
    CU_ASSERT_EQUAL(s1.double_frees, s0.double_frees);
    CU_ASSERT_EQUAL(s1.invalid_frees, s0.invalid_frees);
    CU_ASSERT_EQUAL(s1.threads, s0.threads); /* the workers' caches went back at exit */
    CU_ASSERT_EQUAL(s1.large_chunks, s0.large_chunks);
    for (unsigned i = 0; i < THREADS; i++) {
        char tag[16] = "thr-0";
        struct ossl_mem_tag_stats t;
        tag[4] = (char)('0' + i);
        CU_ASSERT_EQUAL(ossl_mem_get_tag_stats(tag, &t), 0);
        CU_ASSERT_EQUAL(t.live_chunks, 0);
        CU_ASSERT_EQUAL(t.live_bytes, 0);
        CU_ASSERT(t.allocs >= OPS);
    }
    CU_ASSERT_EQUAL(ossl_mem_check(), 0);
}

void test_threads_register(void)
{
    static const struct unit_case cases[] = {
        {"test_threads_cross_free", test_threads_cross_free},
        {NULL, NULL},
    };
    unit_add_suite("threads", cases);
}
