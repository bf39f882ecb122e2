/*
 * fuzz_ops.c - libFuzzer target: the input is a sequence of allocator
 * operations (malloc, realloc, free, tag push/pop, shared scope begin/end,
 * deliberate double, interior, libc and stack frees) done through OpenSSL's
 * CRYPTO_* functions, and every result is checked against a simple model:
 * contents survive reallocs, the statistics equal the model's figures
 * (live chunks and bytes, private and shared, per tag, faults counted),
 * pointers land in the pool the model expects, and ossl_mem_check() stays
 * clean. Any mismatch traps with a message.
 *
 * The library runs with on-error=ignore (bad frees are only counted) and
 * no-shared-locks (one process: the arena's locks need not be
 * process-shared, and this static build has no lock interposition).
 * FUZZ_OSSL_MEM_OPTIONS adds options, e.g. "fill,canary,poison" or
 * "quarantine=0"; with fail= or limit= an allocation may return NULL, which
 * the model then accepts (with nothing changed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

#define NSLOTS 32
#define NTAGS  4

struct slot {
    unsigned char *p;   /* NULL: empty */
    size_t size;
    uint8_t seed;       /* content: byte i is seed + i * 31 */
    int tag;            /* index into tag_names, -1: the default tag */
    int shared;
};

static const char *const tag_names[NTAGS] = {"fz0", "fz1", "fz2", "fz3"};
static int may_fail; /* fail= or limit= given: NULL is a legitimate answer */

#define CHECK(c, ...)                                                  \
    do {                                                               \
        if (!(c)) {                                                    \
            fprintf(stderr, "fuzz_ops: model mismatch at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                              \
            fprintf(stderr, "\n");                                     \
            __builtin_trap();                                          \
        }                                                              \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    static char opts[512];
    const char *extra = getenv("FUZZ_OSSL_MEM_OPTIONS");
    char err[256];
    if (extra && ossl_mem_options_check(extra, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_ops: ignoring FUZZ_OSSL_MEM_OPTIONS: %s\n", err);
        extra = NULL;
    }
    snprintf(opts, sizeof opts, "on-error=ignore,no-shared-locks%s%s", extra ? "," : "",
             extra ? extra : "");
    may_fail = extra && (strstr(extra, "fail=") || strstr(extra, "limit="));
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, opts};
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        fprintf(stderr, "fuzz_ops: ossl_mem_init(%s): %s\n", opts, ossl_mem_strerror(rc));
        abort();
    }
    /* the first shared scope warms OpenSSL up: do it once, outside any input */
    if (ossl_mem_shared_begin() == 0)
        ossl_mem_shared_end();
    for (int t = 0; t < NTAGS; t++) {
        ossl_mem_tag_push(tag_names[t]);
        ossl_mem_tag_pop();
    }
    return 0;
}

/* Reads the next byte of the input, 0 past its end. */
static uint8_t next(const uint8_t **d, size_t *n)
{
    if (*n == 0)
        return 0;
    (*n)--;
    return *(*d)++;
}

/* A size from two input bytes, spread over the interesting ranges. */
static size_t pick_size(const uint8_t **d, size_t *n)
{
    unsigned a = next(d, n), b = next(d, n), v = a << 8 | b;
    switch (a >> 6) {
    case 0: return v % 65;                          /* tiny, 0 included */
    case 1: return v % 1025;                        /* small classes */
    case 2: return 1024 + (v * 7) % 31745;          /* up to 32 KiB */
    default: return 32769 + (size_t)(v % 16384) * 4; /* large: up to ~96 KiB */
    }
}

static void fill(struct slot *s)
{
    for (size_t i = 0; i < s->size; i++)
        s->p[i] = (unsigned char)(s->seed + i * 31);
}

static void verify(const struct slot *s, size_t upto, const unsigned char *p, const char *when)
{
    for (size_t i = 0; i < upto; i++)
        CHECK(p[i] == (unsigned char)(s->seed + i * 31),
              "%s: byte %zu of %zu changed (%02x)", when, i, s->size, p[i]);
}

struct model {
    struct slot slot[NSLOTS];
    int tags[16], depth;        /* tag stack of indices */
    int scope;                  /* shared scope depth */
    uint64_t doubles, invalids; /* deliberate faults done */
};

static int current_tag(const struct model *m)
{
    return m->depth ? m->tags[m->depth - 1] : -1;
}

static void release(struct model *m, struct slot *s)
{
    (void)m;
    verify(s, s->size, s->p, "free");
    OPENSSL_free(s->p);
    s->p = NULL;
}

/* The model's private and shared figures against the library's. */
static void compare(const struct model *m, const struct ossl_mem_stats *st0,
                    const uint64_t tag0[NTAGS], int walk)
{
    uint64_t pc = 0, pb = 0, sc = 0, tc[NTAGS] = {0};
    for (int i = 0; i < NSLOTS; i++) {
        const struct slot *s = &m->slot[i];
        if (!s->p)
            continue;
        if (s->shared) {
            sc++;
        } else {
            pc++, pb += s->size;
            if (s->tag >= 0)
                tc[s->tag]++;
        }
    }
    struct ossl_mem_stats st;
    CHECK(ossl_mem_get_stats(&st) == 0, "get_stats");
    CHECK(st.live_chunks == st0->live_chunks + pc, "live_chunks %llu, expected %llu + %llu",
          (unsigned long long)st.live_chunks, (unsigned long long)st0->live_chunks,
          (unsigned long long)pc);
    CHECK(st.live_bytes == st0->live_bytes + pb, "live_bytes %llu, expected %llu + %llu",
          (unsigned long long)st.live_bytes, (unsigned long long)st0->live_bytes,
          (unsigned long long)pb);
    CHECK(st.shared_live_chunks == st0->shared_live_chunks + sc,
          "shared_live_chunks %llu, expected %llu + %llu",
          (unsigned long long)st.shared_live_chunks, (unsigned long long)st0->shared_live_chunks,
          (unsigned long long)sc);
    CHECK(st.double_frees == st0->double_frees + m->doubles, "double_frees %llu, expected %llu",
          (unsigned long long)st.double_frees,
          (unsigned long long)(st0->double_frees + m->doubles));
    CHECK(st.invalid_frees == st0->invalid_frees + m->invalids,
          "invalid_frees %llu, expected %llu", (unsigned long long)st.invalid_frees,
          (unsigned long long)(st0->invalid_frees + m->invalids));
    CHECK(st.overflows == st0->overflows && st.uaf_writes == st0->uaf_writes &&
              st.corrupt_headers == st0->corrupt_headers && st.inherited_frees == 0,
          "a fault nobody made");
    /* per-tag live figures come from a walk of every header: at the end of an input only */
    for (int t = 0; t < NTAGS && walk; t++) {
        struct ossl_mem_tag_stats ts;
        CHECK(ossl_mem_get_tag_stats(tag_names[t], &ts) == 0, "tag stats");
        CHECK(ts.live_chunks == tag0[t] + tc[t], "tag %s: %llu live chunks, expected %llu",
              tag_names[t], (unsigned long long)ts.live_chunks,
              (unsigned long long)(tag0[t] + tc[t]));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct model m;
    memset(&m, 0, sizeof m);
    struct ossl_mem_stats st0;
    CHECK(ossl_mem_get_stats(&st0) == 0, "get_stats");
    uint64_t tag0[NTAGS];
    for (int t = 0; t < NTAGS; t++) {
        struct ossl_mem_tag_stats ts;
        ossl_mem_get_tag_stats(tag_names[t], &ts);
        tag0[t] = ts.live_chunks;
    }
    const uint8_t *d = data;
    size_t n = size;
    unsigned ops = 0;
    while (n > 0 && ops++ < 2000) {
        uint8_t op = next(&d, &n);
        struct slot *s = &m.slot[next(&d, &n) % NSLOTS];
        switch (op % 10) {
        case 0: { /* malloc */
            if (s->p)
                release(&m, s);
            size_t sz = pick_size(&d, &n);
            unsigned char *p = OPENSSL_malloc(sz);
            if (!p) {
                CHECK(may_fail, "malloc(%zu) failed", sz);
                break;
            }
            CHECK(((uintptr_t)p & 15) == 0, "misaligned %p", (void *)p);
            *s = (struct slot){p, sz, next(&d, &n), current_tag(&m), m.scope > 0};
            CHECK(ossl_mem_is_shared(p) == s->shared, "pool: shared %d, expected %d",
                  ossl_mem_is_shared(p), s->shared);
            fill(s);
            break;
        }
        case 1: { /* realloc */
            size_t sz = pick_size(&d, &n);
            if (!s->p) {
                unsigned char *p = OPENSSL_realloc(NULL, sz);
                if (!p) {
                    CHECK(may_fail, "realloc(NULL, %zu) failed", sz);
                    break;
                }
                *s = (struct slot){p, sz, next(&d, &n), current_tag(&m), m.scope > 0};
                fill(s);
                break;
            }
            verify(s, s->size, s->p, "before realloc");
            unsigned char *q = OPENSSL_realloc(s->p, sz);
            if (sz == 0) {
                CHECK(q == NULL, "realloc(p, 0) returned %p", (void *)q);
                s->p = NULL;
                break;
            }
            if (!q) {
                CHECK(may_fail, "realloc(%zu -> %zu) failed", s->size, sz);
                verify(s, s->size, s->p, "after a failed realloc");
                break;
            }
            verify(s, s->size < sz ? s->size : sz, q, "realloc");
            CHECK(ossl_mem_is_shared(q) == s->shared, "realloc changed the pool");
            s->p = q;
            s->size = sz;
            fill(s);
            break;
        }
        case 2: /* free */
            if (s->p)
                release(&m, s);
            else
                OPENSSL_free(NULL);
            break;
        case 3: /* tag push */
            if (m.depth < 16) {
                int t = next(&d, &n) % NTAGS;
                CHECK(ossl_mem_tag_push(tag_names[t]) == 0, "tag_push");
                m.tags[m.depth++] = t;
            }
            break;
        case 4: /* tag pop */
            if (m.depth > 0) {
                ossl_mem_tag_pop();
                m.depth--;
            }
            break;
        case 5: /* shared scope begin */
            if (m.scope < 4) {
                int rc = ossl_mem_shared_begin();
                CHECK(rc == 0, "shared_begin: %s", ossl_mem_strerror(rc));
                m.scope++;
            }
            break;
        case 6: /* shared scope end */
            if (m.scope > 0) {
                CHECK(ossl_mem_shared_end() == 0, "shared_end");
                m.scope--;
            } else {
                CHECK(ossl_mem_shared_end() == OSSL_MEM_E_SCOPE, "end without begin");
            }
            break;
        case 7: /* double free: freed and at once freed again, while the freed mark is certain */
            if (s->p) {
                unsigned char *p = s->p;
                release(&m, s);
                OPENSSL_free(p);
                m.doubles++;
            }
            break;
        case 8: /* free of an interior pointer */
            if (s->p && s->size >= 32) {
                OPENSSL_free(s->p + 16);
                m.invalids++;
                verify(s, s->size, s->p, "after an interior free");
            }
            break;
        case 9: { /* free of a libc pointer or of a stack address */
            if (next(&d, &n) & 1) {
                void *p = malloc(24);
                CHECK(p, "libc malloc");
                OPENSSL_free(p);
                free(p);
            } else {
                _Alignas(16) char buf[64];
                OPENSSL_free(buf + 16);
            }
            m.invalids++;
            break;
        }
        }
        compare(&m, &st0, tag0, 0);
    }
    /*
     * The walks (per-tag figures, ossl_mem_check) visit every chunk: every
     * 32nd input, which keeps thousands of runs per second; what they would
     * find (a wrong tag count, a damaged chunk) persists until then.
     */
    static unsigned inputs;
    int walk = inputs++ % 32 == 0;
    compare(&m, &st0, tag0, walk);
    /* leave nothing behind: the next input starts from the same state */
    for (int i = 0; i < NSLOTS; i++)
        if (m.slot[i].p)
            release(&m, &m.slot[i]);
    while (m.depth-- > 0)
        ossl_mem_tag_pop();
    while (m.scope-- > 0)
        ossl_mem_shared_end();
    m.depth = m.scope = 0;
    compare(&m, &st0, tag0, walk);
    long c = walk ? ossl_mem_check() : 0;
    CHECK(c == 0, "ossl_mem_check() found %ld problems", c);
    return 0;
}
