/*
 * fuzz_ops.c - libFuzzer target: the input is a sequence of allocator
 * operations (malloc, zalloc, realloc, free, clear_free, tag push/pop,
 * shared scope begin/end, impossible sizes, an OpenSSL lock, deliberate
 * double, interior, libc and stack frees and reallocs) done through
 * OpenSSL's CRYPTO_* functions, and every result is checked against a simple model: contents
 * survive reallocs, the statistics equal the model's figures (live chunks
 * and bytes, chunks created and released, failed allocations, private and
 * shared, per tag, faults counted), pointers land in the pool the model
 * expects, the arena gives back what it lent, and ossl_mem_check() stays
 * clean. Any mismatch traps with a message.
 *
 * The library runs with on-error=ignore: bad frees are only counted. The
 * target is built with -DPIC (fuzz/build.sh), so that locks.c's
 * pthread_rwlock_init and pthread_mutex_init are compiled into the
 * executable, which exports them to libcrypto as a shared library would:
 * shared scopes then work as in a server, with OpenSSL's locks in the arena
 * made process-shared. If a build lacks that interposition, begin returns
 * OSSL_MEM_E_LOCKS; the target then says so once and skips the shared
 * operations rather than fail.
 *
 * Environment:
 *   FUZZ_OSSL_MEM_OPTIONS  options appended to the defaults, e.g.
 *                          "fill,canary,poison" or "quarantine=0"; each word
 *                          is probed with ossl_mem_options_check() and an
 *                          unknown one is dropped with a message. With fail=,
 *                          limit=, tag-limit= or shared= an allocation may
 *                          return NULL, which the model then accepts (with
 *                          nothing changed).
 *   FUZZ_WALK_EVERY        the per-tag figures and ossl_mem_check() (both
 *                          walk every chunk) are checked after every Nth
 *                          input; default 1, i.e. after each input.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

#define NSLOTS    32
#define NTAGS     4
#define MAX_DEPTH 16 /* the model's tag stack: OSSL_MEM_MAX_TAG_DEPTH */
#define MAX_SCOPE 4  /* shared scopes nested by the model (the library allows 16) */

struct slot {
    unsigned char *p;   /* NULL: empty */
    size_t size;        /* requested bytes */
    uint8_t seed;       /* content: byte i is seed + i * 31 */
    int tag;            /* index into tag_names, -1: the default tag */
    int shared;         /* allocated in the shared arena */
};

struct model {
    struct slot slot[NSLOTS];
    int tags[MAX_DEPTH], depth;     /* tag stack of indices */
    int scope;                      /* shared scope depth */
    uint64_t allocs, frees;         /* private chunks created and released */
    uint64_t failed;                /* allocations that returned NULL */
    uint64_t tag_allocs[NTAGS];     /* private chunks created per tag */
    uint64_t doubles, invalids;     /* deliberate faults done */
    uint64_t shared_locks;          /* OpenSSL locks made in a shared scope */
};

/* The library's figures at the start of an input: the model counts from there. */
struct base {
    struct ossl_mem_stats st;
    struct ossl_mem_tag_stats tag[NTAGS];
};

static const char *const tag_names[NTAGS] = {"fz0", "fz1", "fz2", "fz3"};
static int may_fail;      /* fail=, limit=, tag-limit= or shared= given: NULL is an answer */
static int shared_ok = 1; /* shared scopes can be opened (lock interposition in effect) */
static unsigned walk_every = 1;

#define CHECK(c, ...)                                                                      \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "fuzz_ops: model mismatch at %s:%d: ", __FILE__, __LINE__);    \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n");                                                         \
            __builtin_trap();                                                              \
        }                                                                                  \
    } while (0)

#define U(x) ((unsigned long long)(x))

/*
 * Builds "on-error=ignore" plus every word of <extra> (comma-separated) that
 * ossl_mem_options_check() accepts into <out>; names the others on stderr.
 */
static void build_options(const char *extra, char *out, size_t len)
{
    snprintf(out, len, "on-error=ignore");
    if (!extra)
        return;
    char buf[512], err[256];
    snprintf(buf, sizeof buf, "%s", extra);
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        if (ossl_mem_options_check(w, err, sizeof err) != 0) {
            fprintf(stderr, "fuzz_ops: FUZZ_OSSL_MEM_OPTIONS: ignoring '%s': %s\n", w, err);
            continue;
        }
        size_t used = strlen(out);
        if (used + 1 + strlen(w) + 1 > len) {
            fprintf(stderr, "fuzz_ops: FUZZ_OSSL_MEM_OPTIONS: ignoring '%s': too long\n", w);
            continue;
        }
        snprintf(out + used, len - used, ",%s", w);
        if (!strncmp(w, "fail=", 5) || !strncmp(w, "limit=", 6) ||
            !strncmp(w, "tag-limit=", 10) || !strncmp(w, "shared=", 7))
            may_fail = 1;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    static char opts[1024];
    build_options(getenv("FUZZ_OSSL_MEM_OPTIONS"), opts, sizeof opts);
    const char *we = getenv("FUZZ_WALK_EVERY");
    if (we && atoi(we) > 0)
        walk_every = (unsigned)atoi(we);
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, opts};
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        fprintf(stderr, "fuzz_ops: ossl_mem_init(\"%s\"): %s\n", opts, ossl_mem_strerror(rc));
        abort();
    }
    fprintf(stderr, "fuzz_ops: options \"%s\", walks every %u input(s)\n", opts, walk_every);
    /* the first shared scope warms OpenSSL up: do it once, outside any input */
    rc = ossl_mem_shared_begin();
    if (rc == 0) {
        ossl_mem_shared_end();
    } else {
        fprintf(stderr, "fuzz_ops: shared scopes refused (%s): shared operations skipped\n",
                ossl_mem_strerror(rc));
        shared_ok = 0;
    }
    /* create the tags now, so that their statistics exist from the first input */
    for (int t = 0; t < NTAGS; t++) {
        CHECK(ossl_mem_tag_push(tag_names[t]) == 0, "tag_push(%s)", tag_names[t]);
        ossl_mem_tag_pop();
    }
    struct ossl_mem_stats st;
    CHECK(ossl_mem_get_stats(&st) == 0, "get_stats");
    fprintf(stderr, "fuzz_ops: shared scopes %s, %llu OpenSSL locks made process-shared\n",
            shared_ok ? "on" : "off", U(st.lock_inits_shared));
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

/*
 * A size from two input bytes, spread over the interesting ranges: 0 and
 * tiny, every small class up to 1 KiB, every class up to 32 KiB (the last
 * small size, 32768, included), and large chunks from 32769 to ~300 KiB.
 */
static size_t pick_size(const uint8_t **d, size_t *n)
{
    unsigned a = next(d, n), b = next(d, n), v = a << 8 | b;
    switch (a >> 6) {
    case 0: return v % 65;
    case 1: return v % 1025;
    case 2: return 1024 + (v * 7) % 31745;
    default: return 32769 + (size_t)(v % 16384) * 17;
    }
}

/* A size no allocator can give: beyond OSSL_MEM's 1 TiB cap, or near SIZE_MAX (overflow). */
static size_t impossible_size(uint8_t b)
{
    switch (b % 4) {
    case 0: return SIZE_MAX - (b >> 2);
    case 1: return SIZE_MAX / 2 + 1;
    case 2: return ((size_t)1 << 40) + 1 + b;
    default: return SIZE_MAX - 15 - 16 * (size_t)(b >> 2);
    }
}

static void fill(const struct slot *s)
{
    for (size_t i = 0; i < s->size; i++)
        s->p[i] = (unsigned char)(s->seed + i * 31);
}

static void verify(const struct slot *s, size_t upto, const unsigned char *p, const char *when)
{
    for (size_t i = 0; i < upto; i++)
        CHECK(p[i] == (unsigned char)(s->seed + i * 31), "%s: byte %zu of %zu changed (%02x)",
              when, i, s->size, p[i]);
}

static int current_tag(const struct model *m)
{
    return m->depth ? m->tags[m->depth - 1] : -1;
}

/* Counts a private chunk created under tag <tag>. */
static void count_alloc(struct model *m, int tag)
{
    m->allocs++;
    if (tag >= 0)
        m->tag_allocs[tag]++;
}

/* A NULL from an allocation of <n> bytes the model expected to succeed. */
static void null_answer(struct model *m, size_t n, const char *what)
{
    CHECK(may_fail, "%s of %zu bytes returned NULL", what, n);
    CHECK(errno == ENOMEM, "%s of %zu bytes: NULL with errno %d, not ENOMEM", what, n, errno);
    m->failed++;
}

/* A new chunk <p> of <n> bytes in slot <s>: checked, recorded and filled. */
static void take(struct model *m, struct slot *s, unsigned char *p, size_t n, uint8_t seed)
{
    CHECK(((uintptr_t)p & 15) == 0, "misaligned %p", (void *)p);
    *s = (struct slot){p, n, seed, current_tag(m), m->scope > 0};
    CHECK(ossl_mem_is_shared(p) == s->shared, "pool: shared %d, expected %d",
          ossl_mem_is_shared(p), s->shared);
    if (!s->shared)
        count_alloc(m, s->tag);
    fill(s);
}

/* Frees slot <s> after checking its contents: with OPENSSL_clear_free when <clear>. */
static void release(struct model *m, struct slot *s, int clear)
{
    verify(s, s->size, s->p, "free");
    if (clear)
        OPENSSL_clear_free(s->p, s->size);
    else
        OPENSSL_free(s->p);
    if (!s->shared)
        m->frees++;
    s->p = NULL;
}

/*
 * The model's private and shared figures against the library's; with
 * <walk>, also the per-tag figures (which walk every chunk's header) and,
 * with <end>, the arena back to its size at the start of the input.
 */
static void compare(const struct model *m, const struct base *b, int walk, int end)
{
    uint64_t pc = 0, pb = 0, sc = 0, tc[NTAGS] = {0}, tb[NTAGS] = {0};
    for (int i = 0; i < NSLOTS; i++) {
        const struct slot *s = &m->slot[i];
        if (!s->p)
            continue;
        if (s->shared) {
            sc++;
        } else {
            pc++, pb += s->size;
            if (s->tag >= 0)
                tc[s->tag]++, tb[s->tag] += s->size;
        }
    }
    const struct ossl_mem_stats *st0 = &b->st;
    struct ossl_mem_stats st;
    CHECK(ossl_mem_get_stats(&st) == 0, "get_stats");
    /* live_* and allocs/frees count private chunks only; shared_live_chunks the arena's */
    CHECK(st.live_chunks == st0->live_chunks + pc, "live_chunks %llu, expected %llu + %llu",
          U(st.live_chunks), U(st0->live_chunks), U(pc));
    CHECK(st.live_bytes == st0->live_bytes + pb, "live_bytes %llu, expected %llu + %llu",
          U(st.live_bytes), U(st0->live_bytes), U(pb));
    CHECK(st.allocs == st0->allocs + m->allocs && st.frees == st0->frees + m->frees,
          "allocs %llu frees %llu, expected %llu + %llu and %llu + %llu", U(st.allocs),
          U(st.frees), U(st0->allocs), U(m->allocs), U(st0->frees), U(m->frees));
    CHECK(st.failed_allocs == st0->failed_allocs + m->failed,
          "failed_allocs %llu, expected %llu + %llu", U(st.failed_allocs),
          U(st0->failed_allocs), U(m->failed));
    CHECK(st.shared_live_chunks == st0->shared_live_chunks + sc,
          "shared_live_chunks %llu, expected %llu + %llu", U(st.shared_live_chunks),
          U(st0->shared_live_chunks), U(sc));
    CHECK(st.double_frees == st0->double_frees + m->doubles, "double_frees %llu, expected %llu",
          U(st.double_frees), U(st0->double_frees + m->doubles));
    CHECK(st.invalid_frees == st0->invalid_frees + m->invalids,
          "invalid_frees %llu, expected %llu", U(st.invalid_frees),
          U(st0->invalid_frees + m->invalids));
    CHECK(st.overflows == st0->overflows && st.uaf_writes == st0->uaf_writes &&
              st.corrupt_headers == st0->corrupt_headers && st.inherited_frees == 0 &&
              st.hooks_replaced == 0,
          "a fault nobody made: overflows %llu, uaf_writes %llu, corrupt %llu, inherited %llu, "
          "hooks %llu",
          U(st.overflows), U(st.uaf_writes), U(st.corrupt_headers), U(st.inherited_frees),
          U(st.hooks_replaced));
    CHECK(st.lock_inits_shared == st0->lock_inits_shared + m->shared_locks,
          "lock_inits_shared %llu, expected %llu + %llu", U(st.lock_inits_shared),
          U(st0->lock_inits_shared), U(m->shared_locks));
    if (end)
        CHECK(st.shared_used == st0->shared_used && st.large_chunks == st0->large_chunks,
              "after the input: shared_used %llu (was %llu), large_chunks %llu (was %llu)",
              U(st.shared_used), U(st0->shared_used), U(st.large_chunks), U(st0->large_chunks));
    for (int t = 0; t < NTAGS && walk; t++) {
        struct ossl_mem_tag_stats ts;
        const struct ossl_mem_tag_stats *t0 = &b->tag[t];
        CHECK(ossl_mem_get_tag_stats(tag_names[t], &ts) == 0, "tag stats");
        CHECK(ts.live_chunks == t0->live_chunks + tc[t] &&
                  ts.live_bytes == t0->live_bytes + tb[t] &&
                  ts.allocs == t0->allocs + m->tag_allocs[t],
              "tag %s: %llu live chunks, %llu live bytes, %llu allocs; expected %llu, %llu, %llu",
              tag_names[t], U(ts.live_chunks), U(ts.live_bytes), U(ts.allocs),
              U(t0->live_chunks + tc[t]), U(t0->live_bytes + tb[t]),
              U(t0->allocs + m->tag_allocs[t]));
    }
}

/* realloc of slot <s> (live) to <sz> bytes, which may be 0 or impossible. */
static void do_realloc(struct model *m, struct slot *s, size_t sz, uint8_t seed, int impossible)
{
    verify(s, s->size, s->p, "before realloc");
    errno = 0;
    unsigned char *q = OPENSSL_realloc(s->p, sz);
    if (sz == 0) {
        CHECK(q == NULL, "realloc(p, 0) returned %p", (void *)q);
        if (!s->shared)
            m->frees++;
        s->p = NULL;
        return;
    }
    if (!q) {
        if (impossible) {
            CHECK(errno == ENOMEM, "realloc to %zu: NULL with errno %d", sz, errno);
            m->failed++;
        } else {
            null_answer(m, sz, "realloc");
        }
        verify(s, s->size, s->p, "after a failed realloc");
        return;
    }
    CHECK(!impossible, "realloc(%p, %zu) succeeded", (void *)s->p, sz);
    CHECK(((uintptr_t)q & 15) == 0, "misaligned %p", (void *)q);
    verify(s, s->size < sz ? s->size : sz, q, "realloc");
    CHECK(ossl_mem_is_shared(q) == s->shared, "realloc changed the pool");
    if (q != s->p && !s->shared) { /* moved: a chunk created under the chunk's own tag */
        count_alloc(m, s->tag);
        m->frees++;
    }
    s->p = q;
    s->size = sz;
    s->seed = seed;
    fill(s);
}

/* Frees, or with <re> reallocs to 64 bytes, pointer <p> that is not a live chunk of ours. */
static void bad_op(void *p, int re)
{
    if (re) {
        errno = 0;
        void *q = OPENSSL_realloc(p, 64);
        CHECK(q == NULL, "realloc of a bad pointer %p returned %p", p, q);
        CHECK(errno == ENOMEM, "realloc of a bad pointer: errno %d", errno);
    } else {
        OPENSSL_free(p);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct model m;
    static struct base b;
    static unsigned inputs;
    memset(&m, 0, sizeof m);
    int walk = inputs % walk_every == 0;
    CHECK(ossl_mem_get_stats(&b.st) == 0, "get_stats");
    /*
     * The per-tag figures walk every chunk: read once, then carried from
     * input to input (each input leaves the live figures as it found them
     * and adds its allocations), which halves the walks.
     */
    for (int t = 0; t < NTAGS && inputs == 0; t++)
        CHECK(ossl_mem_get_tag_stats(tag_names[t], &b.tag[t]) == 0, "tag stats");
    inputs++;
    const uint8_t *d = data;
    size_t n = size;
    unsigned ops = 0;
    while (n > 0 && ops++ < 2000) {
        uint8_t op = next(&d, &n);
        struct slot *s = &m.slot[next(&d, &n) % NSLOTS];
        switch (op % 13) {
        case 0: { /* malloc, or zalloc when the seed is odd */
            if (s->p)
                release(&m, s, 0);
            size_t sz = pick_size(&d, &n);
            uint8_t seed = next(&d, &n);
            errno = 0;
            unsigned char *p = seed & 1 ? OPENSSL_zalloc(sz) : OPENSSL_malloc(sz);
            if (!p) {
                null_answer(&m, sz, seed & 1 ? "zalloc" : "malloc");
                break;
            }
            for (size_t i = 0; seed & 1 && i < sz; i++)
                CHECK(p[i] == 0, "zalloc(%zu): byte %zu is %02x", sz, i, p[i]);
            take(&m, s, p, sz, seed);
            break;
        }
        case 1: { /* realloc: grow, shrink, to 0, of NULL */
            size_t sz = pick_size(&d, &n);
            uint8_t seed = next(&d, &n);
            if (s->p) {
                do_realloc(&m, s, sz, seed, 0);
                break;
            }
            errno = 0;
            unsigned char *p = OPENSSL_realloc(NULL, sz);
            if (!p)
                null_answer(&m, sz, "realloc(NULL)");
            else
                take(&m, s, p, sz, seed);
            break;
        }
        case 2: /* free, or clear_free (cleanses, then frees) */
            if (s->p)
                release(&m, s, next(&d, &n) & 1);
            else
                OPENSSL_free(NULL);
            break;
        case 3: /* tag push */
            if (m.depth < MAX_DEPTH) {
                int t = next(&d, &n) % NTAGS;
                CHECK(ossl_mem_tag_push(tag_names[t]) == 0, "tag_push");
                m.tags[m.depth++] = t;
            }
            break;
        case 4: /* tag pop (also on an empty stack, which does nothing) */
            ossl_mem_tag_pop();
            if (m.depth > 0)
                m.depth--;
            break;
        case 5: /* shared scope begin */
            if (shared_ok && m.scope < MAX_SCOPE) {
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
        case 7: { /* double free or realloc after free, at once, while the freed mark is certain */
            if (!s->p)
                break;
            unsigned char *p = s->p;
            uint8_t how = next(&d, &n);
            if (how & 2)
                do_realloc(&m, s, 0, 0, 0); /* realloc(p, 0) frees too */
            else
                release(&m, s, 0);
            bad_op(p, how & 1);
            m.doubles++;
            break;
        }
        case 8: /* free or realloc of an interior pointer: aligned or not */
            if (s->p && s->size >= 32) {
                uint8_t how = next(&d, &n), off = next(&d, &n);
                size_t o = how & 2 ? 1 + off % 15 : 16 * (1 + off % ((s->size - 16) / 16));
                bad_op(s->p + o, how & 1);
                m.invalids++;
                verify(s, s->size, s->p, "after an interior free");
            }
            break;
        case 9: { /* free or realloc of a libc pointer (small or mmapped) or of a stack address */
            uint8_t how = next(&d, &n);
            if (how & 2) {
                size_t sz = how & 4 ? 200000 : 24;
                void *p = malloc(sz);
                CHECK(p, "libc malloc");
                bad_op(p, how & 1);
                free(p);
            } else {
                _Alignas(16) char buf[64];
                bad_op(buf + 16, how & 1);
            }
            m.invalids++;
            break;
        }
        case 10: { /* an impossible size: malloc fails, realloc fails and keeps the chunk */
            size_t sz = impossible_size(next(&d, &n));
            if (s->p) {
                do_realloc(&m, s, sz, 0, 1);
                break;
            }
            errno = 0;
            void *p = OPENSSL_malloc(sz);
            CHECK(p == NULL, "malloc(%zu) returned %p", sz, p);
            CHECK(errno == ENOMEM, "malloc(%zu): errno %d", sz, errno);
            m.failed++;
            break;
        }
        case 11: /* realloc to the same size, or one byte more or less */
            if (s->p) {
                size_t sz = s->size + (size_t)(next(&d, &n) % 3) - 1;
                if (sz != (size_t)-1)
                    do_realloc(&m, s, sz, s->seed, 0);
            }
            break;
        case 12: { /* an OpenSSL lock: in a scope it lives in the arena and is made process-shared */
            CRYPTO_RWLOCK *l = CRYPTO_THREAD_lock_new();
            if (!l) {
                null_answer(&m, 0, "CRYPTO_THREAD_lock_new");
                break;
            }
            CHECK(ossl_mem_is_shared(l) == (m.scope > 0), "lock: shared %d in scope depth %d",
                  ossl_mem_is_shared(l), m.scope);
            CHECK(CRYPTO_THREAD_write_lock(l) && CRYPTO_THREAD_unlock(l) &&
                      CRYPTO_THREAD_read_lock(l) && CRYPTO_THREAD_unlock(l),
                  "lock/unlock");
            CRYPTO_THREAD_lock_free(l);
            if (m.scope > 0) {
                m.shared_locks++;
            } else {
                count_alloc(&m, current_tag(&m));
                m.frees++;
            }
            break;
        }
        }
        compare(&m, &b, 0, 0);
    }
    compare(&m, &b, walk, 0);
    /* leave nothing behind: the next input starts from the same state */
    for (int i = 0; i < NSLOTS; i++)
        if (m.slot[i].p)
            release(&m, &m.slot[i], 0);
    for (; m.depth > 0; m.depth--)
        ossl_mem_tag_pop();
    for (; m.scope > 0; m.scope--)
        CHECK(ossl_mem_shared_end() == 0, "shared_end");
    compare(&m, &b, walk, 1);
    for (int t = 0; t < NTAGS; t++)
        b.tag[t].allocs += m.tag_allocs[t];
    long c = walk ? ossl_mem_check() : 0;
    CHECK(c == 0, "ossl_mem_check() found %ld problems", c);
    return 0;
}
