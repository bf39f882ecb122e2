/* ft_badfree.c - every class of bad free under each on-error policy, each case in its own process. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

/* Runs <stmt> and records the line it is on, so the expected message can name it. */
#define AT(stmt) do { bad_line = __LINE__; stmt; } while (0)

static int bad_line;

enum ctr { C_DOUBLE, C_INVALID, C_CORRUPT };

struct bad_case {
    const char *name;       /* case name */
    void (*act)(void);      /* does the bad thing */
    enum ctr ctr;           /* counter that must move */
    unsigned count;         /* by how much */
    const char *text;       /* the message must contain this */
    const char *options;    /* extra options, may be NULL */
};

static void double_free(void)
{
    char *p = OPENSSL_malloc(24);
    OPENSSL_free(p);
    AT(OPENSSL_free(p));
}

static void double_free_large(void)
{
    char *p = OPENSSL_malloc(100000);
    OPENSSL_free(p);
    AT(OPENSSL_free(p));
}

/* The same double free three times from one site: counted three times, reported once. */
static void double_free_repeated(void)
{
    for (int i = 0; i < 3; i++) {
        char *p = OPENSSL_malloc(24);
        OPENSSL_free(p);
        AT(OPENSSL_free(p));
    }
}

/* After the freed chunk's class was busy again, the quarantine still holds the freed mark. */
static void double_free_after_reuse(void)
{
    char *p = OPENSSL_malloc(40), *v[200];
    OPENSSL_free(p);
    for (int i = 0; i < 200; i++) {
        v[i] = OPENSSL_malloc(40);
        if (v[i] == p)
            _exit(4); /* handed out again while quarantined */
    }
    for (int i = 0; i < 200; i++)
        OPENSSL_free(v[i]);
    AT(OPENSSL_free(p));
}

static void interior(void)
{
    char *p = OPENSSL_malloc(64);
    AT(OPENSSL_free(p + 16));
    OPENSSL_free(p);
}

static void interior_large(void)
{
    char *p = OPENSSL_malloc(70000);
    AT(OPENSSL_free(p + 4096));
    OPENSSL_free(p);
}

static void libc_pointer(void)
{
    char *m = malloc(32);
    AT(OPENSSL_free(m));
    free(m);
}

static void stack_pointer(void)
{
    char buf[32];
    AT(OPENSSL_free(buf));
}

static void wild_pointer(void)
{
    AT(OPENSSL_free((void *)(uintptr_t)0x5a5a5a5a5a50));
}

/* Inside the address space ossl_mem reserved but has not committed: must not be touched. */
static void reserved_unused(void)
{
    char *p = OPENSSL_malloc(16);
    uintptr_t seg = (uintptr_t)p & ~(uintptr_t)((4u << 20) - 1);
    AT(OPENSSL_free((void *)(seg + (256u << 20))));
    OPENSSL_free(p);
}

/* Into a segment's own metadata (its first slot). */
static void segment_metadata(void)
{
    char *p = OPENSSL_malloc(16);
    uintptr_t seg = (uintptr_t)p & ~(uintptr_t)((4u << 20) - 1);
    for (uintptr_t off = 16; off <= 4096; off += 4080)
        AT(OPENSSL_free((void *)(seg + off))); /* one site: counted twice, reported once */
    OPENSSL_free(p);
}

static void realloc_freed(void)
{
    char *p = OPENSSL_malloc(24), *q;
    OPENSSL_free(p);
    AT(q = OPENSSL_realloc(p, 100));
    if (q)
        _exit(5);
}

static void realloc_foreign(void)
{
    char *m = malloc(32), *q;
    AT(q = OPENSSL_realloc(m, 100));
    if (q)
        _exit(5);
    free(m);
}

/* A buffer underflow from the chunk in front rewrites the header: the free is refused. */
static void header_underflow(void)
{
    unsigned char *p = OPENSSL_malloc(40);
    p[-3] ^= 0x5a;
    AT(OPENSSL_free(p));
}

/* A chunk of the shared arena freed twice. */
static void double_free_shared(void)
{
    if (ossl_mem_shared_begin() != 0)
        _exit(8);
    char *p = OPENSSL_malloc(40);
    ossl_mem_shared_end();
    OPENSSL_free(p);
    AT(OPENSSL_free(p));
}

/* A pointer into the middle of a shared chunk. */
static void interior_shared(void)
{
    if (ossl_mem_shared_begin() != 0)
        _exit(8);
    char *p = OPENSSL_malloc(64);
    ossl_mem_shared_end();
    AT(OPENSSL_free(p + 32));
    OPENSSL_free(p);
}

static const struct bad_case cases[] = {
    {"double free", double_free, C_DOUBLE, 1, "double free of", NULL},
    {"double free, large chunk", double_free_large, C_DOUBLE, 1, "double free of", NULL},
    {"double free x3, one site", double_free_repeated, C_DOUBLE, 3, "double free of", NULL},
    {"double free after reuse (quarantine)", double_free_after_reuse, C_DOUBLE, 1,
     "double free of", NULL},
    {"interior pointer", interior, C_INVALID, 1, "interior pointer", NULL},
    {"interior pointer, large chunk", interior_large, C_INVALID, 1, "not allocated by ossl_mem",
     NULL},
    {"libc malloc pointer", libc_pointer, C_INVALID, 1, "not allocated by ossl_mem", NULL},
    {"stack address", stack_pointer, C_INVALID, 1, "not allocated by ossl_mem", NULL},
    {"wild address", wild_pointer, C_INVALID, 1, "not allocated by ossl_mem", NULL},
    {"reserved, uncommitted address", reserved_unused, C_INVALID, 1, "invalid free of", NULL},
    {"segment metadata address", segment_metadata, C_INVALID, 2, "metadata", NULL},
    {"realloc of freed chunk", realloc_freed, C_DOUBLE, 1, "realloc after free of", NULL},
    {"realloc of foreign pointer", realloc_foreign, C_INVALID, 1, "invalid realloc", NULL},
    {"header underflow", header_underflow, C_CORRUPT, 1, "corrupt chunk header", NULL},
    {"double free, shared chunk", double_free_shared, C_DOUBLE, 1, "double free of", NULL},
    {"interior pointer, shared chunk", interior_shared, C_INVALID, 1, "shared arena", NULL},
};

static uint64_t counter(enum ctr c)
{
    struct ossl_mem_stats st;
    if (ossl_mem_get_stats(&st) != 0)
        _exit(6);
    return c == C_DOUBLE ? st.double_frees : c == C_INVALID ? st.invalid_frees
                                                            : st.corrupt_headers;
}

/* Child: install with <policy>, do the bad thing, check the counter; exit 0 when right. */
static void child(const struct bad_case *c, const char *policy)
{
    char opts[128];
    snprintf(opts, sizeof opts, "on-error=%s%s%s", policy, c->options ? "," : "",
             c->options ? c->options : "");
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, opts};
    if (ossl_mem_init(&cfg) != 0)
        _exit(7);
    uint64_t before = counter(c->ctr);
    c->act();
    fprintf(stdout, "%d\n", bad_line);
    fflush(stdout);
    _exit(counter(c->ctr) - before == c->count ? 0 : 3);
}

int main(void)
{
    static const char *const policies[] = {"report", "ignore", "abort"};
    unsigned pass = 0, fail = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (unsigned k = 0; k < 3; k++) {
            const struct bad_case *c = &cases[i];
            const char *pol = policies[k];
            struct ft_child r;
            if (ft_run(&r, 10, (void (*)(const void *, const void *))child, c, pol) != 0) {
                printf("FAIL: %s [%s]: could not run the child\n", c->name, pol);
                fail++;
                continue;
            }
            int line = atoi(r.out);
            char site[64];
            snprintf(site, sizeof site, "ft_badfree.c:%d", line);
            const char *why = NULL;
            unsigned lines = ft_count_lines(r.err);
            if (strcmp(pol, "abort") == 0) {
                /* the bad call never returns: stdout stays empty, so look for the text only */
                if (!WIFSIGNALED(r.status) || WTERMSIG(r.status) != SIGABRT)
                    why = "did not die with SIGABRT";
                else if (lines != 1 || !strstr(r.err, c->text) || !strstr(r.err, "aborting") ||
                         !strstr(r.err, "ft_badfree.c:"))
                    why = "not exactly one clear line naming the site";
            } else if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
                why = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 3
                          ? "counter did not move by the expected amount"
                          : "did not survive";
            } else if (strcmp(pol, "report") == 0 &&
                       (lines != 1 || !strstr(r.err, c->text) || !strstr(r.err, site))) {
                why = "report is not one line with the message and the site";
            } else if (strcmp(pol, "ignore") == 0 && lines != 0) {
                why = "ignore printed something";
            }
            if (why) {
                printf("FAIL: %s [%s]: %s\n--- stderr:\n%s---\n", c->name, pol, why, r.err);
                fail++;
            } else {
                printf("ok: %s [%s]%s%s", c->name, pol, lines ? ": " : "\n", lines ? r.err : "");
                pass++;
            }
        }
    }
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
