/* ft_init.c - ossl_mem_init() and the callback contract: too late, twice, bad options, foreign hooks, NULL/0 cases, exit report. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

/* Each case runs in a child and exits 0 when everything it checks holds. */
#define EXPECT(c) do { if (!(c)) { printf("failed: %s (line %d)\n", #c, __LINE__); _exit(3); } } while (0)

static const struct ossl_mem_config quiet = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, NULL};

/* One SHA-256 through OpenSSL: proves it works after init. */
static int openssl_works(void)
{
    unsigned char md[32];
    unsigned int len = 0;
    return EVP_Digest("abc", 3, md, &len, EVP_sha256(), NULL) == 1 && len == 32;
}

static void too_late(void)
{
    void *p = OPENSSL_malloc(10); /* OpenSSL's default allocator is now in use */
    int rc = ossl_mem_init(&quiet);
    EXPECT(rc == OSSL_MEM_E_TOO_LATE);
    EXPECT(strstr(ossl_mem_strerror(rc), "already allocated"));
    OPENSSL_free(p);
    EXPECT(openssl_works()); /* OpenSSL was left alone */
}

static void twice(void)
{
    EXPECT(ossl_mem_init(&quiet) == 0);
    EXPECT(ossl_mem_init(&quiet) == OSSL_MEM_E_AGAIN);
    EXPECT(ossl_mem_init(NULL) == OSSL_MEM_E_AGAIN);
    EXPECT(openssl_works());
}

static void bad_options_then_good(void)
{
    struct ossl_mem_config cfg = quiet;
    cfg.options = "quarantine=1M,bogus-word";
    int rc = ossl_mem_init(&cfg);
    EXPECT(rc == OSSL_MEM_E_OPTIONS);
    EXPECT(strstr(ossl_mem_strerror(rc), "'bogus-word'"));
    cfg.options = "quarantine=1M";
    EXPECT(ossl_mem_init(&cfg) == 0); /* a failed init installs nothing and can be retried */
    EXPECT(openssl_works());
}

static void env_options(void)
{
    setenv("OSSL_MEM_OPTIONS", "no-zero,frobnicate", 1);
    EXPECT(ossl_mem_init(NULL) == OSSL_MEM_E_OPTIONS);
    EXPECT(ossl_mem_init(&quiet) == 0); /* IGNORE_ENV skips it */
}

static void bad_version(void)
{
    struct ossl_mem_config cfg = quiet;
    cfg.version = 99;
    EXPECT(ossl_mem_init(&cfg) == OSSL_MEM_E_VERSION);
}

static void *other_malloc(size_t n, const char *f, int l) { (void)f; (void)l; return malloc(n); }
static void *other_realloc(void *p, size_t n, const char *f, int l) { (void)f; (void)l; return realloc(p, n); }
static void other_free(void *p, const char *f, int l) { (void)f; (void)l; free(p); }

static void hooked_before(void)
{
    EXPECT(CRYPTO_set_mem_functions(other_malloc, other_realloc, other_free) == 1);
    int rc = ossl_mem_init(&quiet);
    EXPECT(rc == OSSL_MEM_E_HOOKED);
    EXPECT(openssl_works());
}

/* Someone installs their own functions after us: stats and check say so. */
static void hooked_after(void)
{
    EXPECT(ossl_mem_init(&quiet) == 0);
    CRYPTO_malloc_fn m;
    CRYPTO_realloc_fn r;
    CRYPTO_free_fn f;
    CRYPTO_get_mem_functions(&m, &r, &f);
    struct ossl_mem_stats st;
    EXPECT(ossl_mem_get_stats(&st) == 0 && st.hooks_replaced == 0);
    EXPECT(ossl_mem_check() == 0);
    EXPECT(CRYPTO_set_mem_functions(other_malloc, other_realloc, other_free) == 1);
    EXPECT(ossl_mem_get_stats(&st) == 0 && st.hooks_replaced == 1);
    EXPECT(ossl_mem_check() == 1);
    EXPECT(CRYPTO_set_mem_functions(m, r, f) == 1);
    EXPECT(ossl_mem_get_stats(&st) == 0 && st.hooks_replaced == 0);
    EXPECT(ossl_mem_check() == 0);
}

/* The whole callback contract, called the way OpenSSL calls it, with NULL, "" and 0 sites. */
static void contract(void)
{
    EXPECT(ossl_mem_init(&quiet) == 0);
    CRYPTO_malloc_fn m;
    CRYPTO_realloc_fn r;
    CRYPTO_free_fn f;
    CRYPTO_get_mem_functions(&m, &r, &f);
    struct ossl_mem_stats s0, s1;
    EXPECT(ossl_mem_get_stats(&s0) == 0);
    void *z = m(0, NULL, 0);
    EXPECT(z != NULL);
    f(NULL, NULL, 0);
    f(NULL, "", 0);
    void *p = r(NULL, 10, "", 0);
    EXPECT(p != NULL);
    memset(p, 1, 10);
    p = r(p, 100, NULL, 0);
    EXPECT(p != NULL && ((unsigned char *)p)[9] == 1);
    errno = 0;
    EXPECT(r(p, 0, NULL, 0) == NULL); /* frees */
    errno = 0;
    EXPECT(m(SIZE_MAX, NULL, 0) == NULL && errno == ENOMEM);
    errno = 0;
    EXPECT(m(SIZE_MAX / 2 + 1, "x.c", 1) == NULL && errno == ENOMEM);
    f(z, "", 0);
    EXPECT(ossl_mem_get_stats(&s1) == 0);
    EXPECT(s1.live_chunks == s0.live_chunks && s1.live_bytes == s0.live_bytes);
    EXPECT(s1.failed_allocs - s0.failed_allocs == 2);
    EXPECT(s1.reallocs - s0.reallocs == 3);
    /* bad frees with no site information still produce a clear line */
    f(z, NULL, 0);
    f(z, "", 0);
    EXPECT(ossl_mem_get_stats(&s1) == 0 && s1.double_frees - s0.double_frees == 2);
}

static void exit_report_stderr(void)
{
    setenv("OSSL_MEM_OPTIONS", "report=stderr", 1);
    EXPECT(ossl_mem_init(NULL) == 0);
    EXPECT(openssl_works());
    OPENSSL_malloc(1234); /* a deliberate leak, listed at exit */
    exit(0);
}

static void exit_report_json(const char *path)
{
    char opts[300];
    snprintf(opts, sizeof opts, "report=%s", path);
    struct ossl_mem_config cfg = quiet;
    cfg.options = opts;
    EXPECT(ossl_mem_init(&cfg) == 0);
    EXPECT(openssl_works());
    exit(0);
}

struct init_case {
    const char *name;   /* case */
    void (*fn)(void);   /* body, run in a child */
    const char *err;    /* text its stderr must contain, or NULL for "must be empty" */
};

static const struct init_case cases[] = {
    {"init after OpenSSL allocated: too late", too_late, NULL},
    {"init twice", twice, NULL},
    {"bad options, then good ones", bad_options_then_good, "'bogus-word'"},
    {"bad OSSL_MEM_OPTIONS", env_options, "'frobnicate'"},
    {"bad config version", bad_version, NULL},
    {"another allocator installed before", hooked_before, NULL},
    {"another allocator installed after", hooked_after, "replaced"},
    {"callback contract", contract, "unknown site"},
    {"exit report on stderr", exit_report_stderr, "ft_init.c:"},
};

static void run_case(const void *a, const void *b)
{
    (void)b;
    ((const struct init_case *)a)->fn();
}

static void run_json(const void *a, const void *b)
{
    (void)b;
    exit_report_json(a);
}

int main(void)
{
    ft_alarm(120);
    unsigned pass = 0, fail = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct init_case *c = &cases[i];
        struct ft_child r;
        const char *why = NULL;
        if (ft_run(&r, 20, run_case, c, NULL) != 0)
            why = "could not fork";
        else if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0)
            why = r.out[0] ? r.out : "child died";
        else if (c->err && !strstr(r.err, c->err))
            why = "stderr lacks the expected text";
        else if (!c->err && r.err[0])
            why = "unexpected output on stderr";
        if (why) {
            printf("FAIL: %s: %s\n--- stderr:\n%s---\n", c->name, why, r.err);
            fail++;
        } else {
            printf("ok: %s\n", c->name);
            pass++;
        }
    }
    /* the leak report names what is still live at exit */
    {
        struct ft_child r;
        ft_run(&r, 20, run_case, &cases[8], NULL);
        if (strstr(r.err, "ossl_mem report") && strstr(r.err, "live chunks:") &&
            strstr(r.err, "1234 bytes"))
            printf("ok: exit report lists the leaked chunk\n"), pass++;
        else
            printf("FAIL: exit report lacks the leaked chunk:\n%s\n", r.err), fail++;
    }
    /* report=FILE.json writes JSON that parses */
    {
        char path[] = "/tmp/ft_init_XXXXXX.json";
        int fd = mkstemps(path, 5);
        close(fd);
        struct ft_child r;
        char cmd[256];
        snprintf(cmd, sizeof cmd, "python3 -m json.tool %s > /dev/null", path);
        if (ft_run(&r, 20, run_json, path, NULL) == 0 && WIFEXITED(r.status) &&
            WEXITSTATUS(r.status) == 0 && system(cmd) == 0)
            printf("ok: exit report as JSON\n"), pass++;
        else
            printf("FAIL: exit report as JSON: %s%s\n", r.out, r.err), fail++;
        unlink(path);
    }
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
