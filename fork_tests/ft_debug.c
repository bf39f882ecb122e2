/*
 * ft_debug.c - the debugging options at work, each case in its own process:
 * full verified handshakes with every checking option on (no false alarm),
 * poison, canaries and fill patterns found by ossl_mem_check(), no-caller,
 * failure injection (Nth, seeded random, ossl_mem_fail_at), limits and the
 * periodic check.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"
#include "fork_tests/ft.h"

/* Fails the case with a message on stdout. */
#define EXPECT(c, ...)                                  \
    do {                                                \
        if (!(c)) {                                     \
            printf("line %d: ", __LINE__);              \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
            fflush(stdout);                             \
            _exit(1);                                   \
        }                                               \
    } while (0)

static void init(const char *options)
{
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, options};
    int rc = ossl_mem_init(&cfg);
    EXPECT(rc == 0, "ossl_mem_init(%s): %s", options, ossl_mem_strerror(rc));
}

static struct ossl_mem_stats stats(void)
{
    struct ossl_mem_stats st;
    EXPECT(ossl_mem_get_stats(&st) == 0, "ossl_mem_get_stats");
    return st;
}

/* No safety counter moved. */
static void expect_clean(const char *when)
{
    struct ossl_mem_stats st = stats();
    EXPECT(st.double_frees == 0 && st.invalid_frees == 0 && st.overflows == 0 &&
               st.uaf_writes == 0 && st.corrupt_headers == 0,
           "%s: double %llu invalid %llu overflow %llu uaf %llu corrupt %llu", when,
           (unsigned long long)st.double_frees, (unsigned long long)st.invalid_frees,
           (unsigned long long)st.overflows, (unsigned long long)st.uaf_writes,
           (unsigned long long)st.corrupt_headers);
}

static void handshakes(SSL_CTX *srv, SSL_CTX *cli, int n, const char *when)
{
    for (int i = 0; i < n; i++) {
        struct omt_result r;
        omt_handshake_bio(srv, cli, &r);
        EXPECT(r.ok, "%s: handshake %d: %s", when, i, r.err);
    }
}

/*
 * Every checking option at once (abort on any fault): mutual verification
 * with a private and with a shared server context, in this process and in
 * a forked worker, then everything freed and checked.
 */
static void all_options(const void *a, const void *b)
{
    (void)a, (void)b;
    init("poison,fill,canary,quarantine=4M,check=3000,on-error=abort");
    struct ossl_mem_stats st0 = stats();
    struct omt_pki pki;
    struct omt_opts o = {0, OMT_VERIFY_MUTUAL};
    EXPECT(omt_pki_make(&pki, OMT_KEY_EC) == 0, "pki");
    SSL_CTX *cli = omt_client_ctx(&pki, &o), *srv = omt_server_ctx(&pki, &o);
    EXPECT(cli && srv, "contexts");
    handshakes(srv, cli, 20, "private context");
    EXPECT(ossl_mem_shared_begin() == 0, "shared_begin");
    SSL_CTX *shared = omt_server_ctx(&pki, &o);
    ossl_mem_shared_end();
    EXPECT(shared && ossl_mem_share_ssl_ctx(shared) == 0, "shared context");
    handshakes(shared, cli, 20, "shared context");
    pid_t pid = fork();
    if (pid == 0) {
        handshakes(shared, cli, 20, "shared context in a worker");
        expect_clean("worker");
        EXPECT(ossl_mem_check() == 0, "worker's check");
        _exit(0);
    }
    int status;
    EXPECT(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait");
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker failed (status %d)", status);
    EXPECT(ossl_mem_worker_exited(pid) == 0, "worker_exited");
    EXPECT(ossl_mem_retire_ssl_ctx(shared) == 1, "retire destroys the context");
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&pki);
    expect_clean("end");
    EXPECT(ossl_mem_check() == 0, "check");
    struct ossl_mem_stats st = stats();
    EXPECT(st.failed_allocs == 0 && st.fail_points == 0, "nothing failed");
    printf("%llu allocations, live bytes %llu at start and %llu at the end\n",
           (unsigned long long)st.allocs, (unsigned long long)st0.live_bytes,
           (unsigned long long)st.live_bytes);
}

/* Shared between the threads of threads_mixed(): slots handed from one thread to another. */
#define XSLOTS 256
static _Atomic(unsigned char *) xslot[XSLOTS];

/*
 * One of 4 threads: 200,000 random mallocs, reallocs and frees of sizes up to
 * 40 KB, each chunk filled with a byte derived from its size and checked
 * before it is freed, half of them freed by another thread.
 */
static void *mixed_worker(void *arg)
{
    uint64_t x = (uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
    unsigned char *mine[64] = {0};
    size_t len[64] = {0};
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned k = (unsigned)(x % 64);
        size_t size = (x >> 8) % 16 == 0 ? (x >> 16) % 40000 + 1 : (x >> 16) % 300 + 1;
        if (mine[k]) {
            for (size_t j = 0; j < len[k]; j++)
                if (mine[k][j] != (unsigned char)len[k])
                    return (void *)"content changed";
            if ((x >> 40) % 3 == 0) {
                unsigned char *q = OPENSSL_realloc(mine[k], size);
                if (!q)
                    return (void *)"realloc failed";
                memset(q, (unsigned char)size, size);
                mine[k] = q, len[k] = size;
                continue;
            }
            if ((x >> 40) % 3 == 1) {
                mine[k] = atomic_exchange(&xslot[(x >> 20) % XSLOTS], mine[k]);
                OPENSSL_free(mine[k]); /* another thread's chunk, or NULL */
            } else {
                OPENSSL_free(mine[k]);
            }
            mine[k] = NULL;
            continue;
        }
        mine[k] = OPENSSL_malloc(size);
        if (!mine[k])
            return (void *)"malloc failed";
        memset(mine[k], (unsigned char)size, size);
        len[k] = size;
    }
    for (int k = 0; k < 64; k++)
        OPENSSL_free(mine[k]);
    return NULL;
}

/* 4 threads under poison,fill,canary: no false alarm, exact figures after. */
static void threads_mixed(const void *a, const void *b)
{
    (void)a, (void)b;
    init("poison,fill,canary,on-error=abort");
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        EXPECT(pthread_create(&t[i], NULL, mixed_worker, (void *)(i + 1)) == 0, "thread");
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        EXPECT(r == NULL, "thread %d: %s", i, (const char *)r);
    }
    for (int i = 0; i < XSLOTS; i++)
        OPENSSL_free(atomic_exchange(&xslot[i], NULL));
    expect_clean("threads");
    EXPECT(ossl_mem_check() == 0, "check");
    struct ossl_mem_stats st = stats();
    EXPECT(st.live_chunks == 0 && st.live_bytes == 0, "live %llu bytes in %llu chunks",
           (unsigned long long)st.live_bytes, (unsigned long long)st.live_chunks);
}

/* poison=BYTE: new chunks and the grown part of a realloc hold the byte. */
static void poison(const void *a, const void *b)
{
    (void)a, (void)b;
    init("poison=0xa5");
    size_t sizes[] = {1, 13, 100, 4000, 50000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        unsigned char *p = OPENSSL_malloc(sizes[k]);
        for (size_t i = 0; i < sizes[k]; i++)
            EXPECT(p[i] == 0xa5, "byte %zu of a %zu-byte chunk is %02x", i, sizes[k], p[i]);
        memset(p, 1, sizes[k]);
        p = OPENSSL_realloc(p, sizes[k] * 3);
        for (size_t i = 0; i < sizes[k] * 3; i++)
            EXPECT(p[i] == (i < sizes[k] ? 1 : 0xa5), "byte %zu after realloc is %02x", i, p[i]);
        OPENSSL_free(p);
    }
    expect_clean("poison");
}

/* Canaries of every odd size up to 99 and of a large chunk, damaged, found by ossl_mem_check. */
static void canary_check(const void *a, const void *b)
{
    (void)a, (void)b;
    init("canary,on-error=ignore");
    unsigned char *v[51];
    unsigned n = 0;
    for (size_t size = 1; size < 100; size += 2) {
        v[n] = OPENSSL_malloc(size);
        memset(v[n], 0x33, size); /* filling the request itself is fine */
        n++;
    }
    v[n++] = OPENSSL_malloc(70001);
    EXPECT(ossl_mem_check() == 0, "clean before the overflows");
    for (unsigned i = 0; i < n - 1; i++)
        v[i][2 * i + 1] ^= 0x40; /* one byte past each requested size */
    v[n - 1][70001] ^= 0x40;
    long found = ossl_mem_check();
    EXPECT(found == (long)n, "check found %ld of %u overflows", found, n);
    EXPECT(stats().overflows == n, "overflows %llu", (unsigned long long)stats().overflows);
    for (unsigned i = 0; i < n; i++)
        OPENSSL_free(v[i]);
    EXPECT(stats().overflows == 2 * n, "the frees report them again");
    EXPECT(stats().live_chunks == 0 && stats().live_bytes == 0, "all freed");
}

/* fill: a write after free found by ossl_mem_check() while the chunk sits in quarantine. */
static void fill_check(const void *a, const void *b)
{
    (void)a, (void)b;
    init("fill,on-error=ignore");
    unsigned char *p = OPENSSL_malloc(200);
    OPENSSL_free(p);
    for (int i = 8; i < 208; i++)
        EXPECT(p[i] == 0xdf, "freed byte %d is %02x, not the fill pattern", i, p[i]);
    EXPECT(ossl_mem_check() == 0, "clean");
    p[100] = 0;
    EXPECT(ossl_mem_check() == 1, "check did not find the write after free");
    EXPECT(stats().uaf_writes == 1, "uaf_writes");
}

/* check=N finds the same write after free without being asked. */
static void periodic_check(const void *a, const void *b)
{
    (void)a, (void)b;
    init("fill,check=100,quarantine=1M,on-error=ignore");
    unsigned char *p = OPENSSL_malloc(200);
    OPENSSL_free(p);
    p[50] = 1;
    for (int i = 0; i < 99; i++)
        OPENSSL_free(OPENSSL_malloc(3000));
    EXPECT(stats().uaf_writes >= 1, "no periodic check ran in 200 operations");
}

/* no-caller: sites are not recorded, reports say so. */
static void no_caller(const void *a, const void *b)
{
    (void)a, (void)b;
    init("no-caller");
    char *p = OPENSSL_malloc(10);
    OPENSSL_free(p);
    OPENSSL_free(p);
    EXPECT(stats().double_frees == 1, "double free counted");
}

/* fail=N fails exactly the Nth call; ossl_mem_fail_at re-arms; a failed realloc keeps the block. */
static void fail_nth(const void *a, const void *b)
{
    (void)a, (void)b;
    init("fail=5");
    void *v[8];
    for (int i = 0; i < 8; i++) {
        v[i] = OPENSSL_malloc(32);
        EXPECT((v[i] == NULL) == (i == 4), "call %d returned %p", i + 1, v[i]);
    }
    struct ossl_mem_stats st = stats();
    EXPECT(st.injected_failures == 1 && st.failed_allocs == 1 && st.fail_points == 8,
           "injected %llu failed %llu points %llu", (unsigned long long)st.injected_failures,
           (unsigned long long)st.failed_allocs, (unsigned long long)st.fail_points);
    EXPECT(ossl_mem_fail_at(2) == 0, "fail_at");
    char *p = OPENSSL_malloc(32);
    EXPECT(p, "first call after fail_at(2)");
    memcpy(p, "keep me", 8);
    char *q = OPENSSL_realloc(p, 5000);
    EXPECT(!q && strcmp(p, "keep me") == 0, "the failed realloc lost the block");
    q = OPENSSL_realloc(p, 5000);
    EXPECT(q && strcmp(q, "keep me") == 0, "the next realloc");
    OPENSSL_free(q);
    for (int i = 0; i < 8; i++)
        OPENSSL_free(v[i]);
    EXPECT(stats().live_chunks == 0 && stats().live_bytes == 0, "all freed");
    EXPECT(stats().injected_failures == 2, "two injected");
}

/* fail=1/N with a seed: which calls fail depends on the seed only; prints them as a bitmap. */
static void fail_random(const void *seed, const void *b)
{
    (void)b;
    char opts[64];
    snprintf(opts, sizeof opts, "fail=1/10,seed=%s", (const char *)seed);
    init(opts);
    unsigned failed = 0;
    for (int i = 0; i < 2000; i++) {
        void *p = OPENSSL_malloc(24);
        putchar(p ? '.' : 'x');
        failed += !p;
        OPENSSL_free(p);
    }
    putchar('\n');
    EXPECT(failed > 100 && failed < 300, "%u of 2000 failed with fail=1/10", failed);
    EXPECT(stats().injected_failures == failed, "injected");
}

/* limit=: allocations beyond the live-byte limit fail; freeing makes room again. */
static void limit(const void *a, const void *b)
{
    (void)a, (void)b;
    init("limit=64K,tag-limit=ctx:4K");
    static void *v[100];
    int n = 0;
    while (n < 100 && (v[n] = OPENSSL_malloc(1024)))
        n++;
    EXPECT(n == 64, "%d chunks of 1 KiB fit under limit=64K", n);
    EXPECT(stats().failed_allocs == 1, "failed_allocs");
    OPENSSL_free(v[--n]);
    EXPECT((v[n] = OPENSSL_malloc(1024)), "room again after a free");
    n++;
    while (n > 50)
        OPENSSL_free(v[--n]);
    EXPECT(ossl_mem_tag_push("ctx") == 0, "tag");
    int c = 0;
    static void *w[10];
    while (c < 10 && (w[c] = OPENSSL_malloc(1000)))
        c++;
    ossl_mem_tag_pop();
    EXPECT(c == 4, "%d chunks of 1000 bytes fit under tag-limit=ctx:4K", c);
    void *other = OPENSSL_malloc(1000);
    EXPECT(other, "the default tag is not limited by ctx's limit");
    OPENSSL_free(other);
    /* a chunk keeps its tag: freeing it elsewhere gives room back to ctx */
    OPENSSL_free(w[--c]);
    EXPECT(ossl_mem_tag_push("ctx") == 0, "tag");
    EXPECT((w[c] = OPENSSL_malloc(1000)), "room under ctx after a free");
    ossl_mem_tag_pop();
    c++;
    while (c > 0)
        OPENSSL_free(w[--c]);
    while (n > 0)
        OPENSSL_free(v[--n]);
    EXPECT(stats().live_bytes == 0, "all freed");
}

struct dcase {
    const char *name;
    void (*fn)(const void *, const void *);
    const void *arg;
    const char *err_has;    /* stderr must contain this, may be NULL */
    bool err_empty;         /* stderr must be empty */
};

int main(void)
{
    static const struct dcase cases[] = {
        {"handshakes under poison,fill,canary,quarantine=4M,check", all_options, NULL, NULL,
         true},
        {"4 threads, 800,000 operations under poison,fill,canary", threads_mixed, NULL, NULL,
         true},
        {"poison=0xa5", poison, NULL, NULL, true},
        {"canary: odd sizes and a large chunk, ossl_mem_check", canary_check, NULL, NULL, true},
        {"fill: write after free found by ossl_mem_check", fill_check, NULL, NULL, true},
        {"check=100 finds a write after free by itself", periodic_check, NULL, NULL, true},
        {"no-caller", no_caller, NULL, "at unknown site", false},
        {"fail=5 and ossl_mem_fail_at", fail_nth, NULL, NULL, true},
        {"limit and tag-limit", limit, NULL, NULL, true},
    };
    ft_alarm(300);
    unsigned pass = 0, fail = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct dcase *c = &cases[i];
        static struct ft_child r;
        const char *why = NULL;
        if (ft_run(&r, 120, c->fn, c->arg, NULL) != 0)
            why = "could not run the child";
        else if (r.timed_out)
            why = "timed out";
        else if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0)
            why = "failed";
        else if (c->err_empty && r.err[0])
            why = "unexpected output on stderr";
        else if (c->err_has && !strstr(r.err, c->err_has))
            why = "stderr lacks the expected text";
        if (why) {
            printf("FAIL: %s: %s\n--- stdout:\n%s--- stderr:\n%s---\n", c->name, why, r.out, r.err);
            fail++;
        } else {
            printf("ok: %s%s%s", c->name, r.out[0] ? ": " : "\n", r.out);
            pass++;
        }
    }
    /* the same seed fails the same calls, another seed others */
    static struct ft_child r1, r2, r3;
    const char *why = NULL;
    if (ft_run(&r1, 60, fail_random, "7", NULL) || ft_run(&r2, 60, fail_random, "7", NULL) ||
        ft_run(&r3, 60, fail_random, "8", NULL))
        why = "could not run the children";
    else if (!WIFEXITED(r1.status) || WEXITSTATUS(r1.status) || !WIFEXITED(r3.status) ||
             WEXITSTATUS(r3.status))
        why = "a child failed";
    else if (strcmp(r1.out, r2.out) != 0)
        why = "seed 7 failed different calls in two runs";
    else if (strcmp(r1.out, r3.out) == 0)
        why = "seeds 7 and 8 failed the same calls";
    if (why) {
        printf("FAIL: fail=1/10 with seeds: %s\n%s%s%s", why, r1.out, r1.err, r3.out);
        fail++;
    } else {
        printf("ok: fail=1/10,seed=7 twice fails the same calls, seed=8 others\n");
        pass++;
    }
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
