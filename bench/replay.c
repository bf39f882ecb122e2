/* replay.c - replays a recorded OpenSSL allocation trace through CRYPTO_malloc/realloc/free and times it; built once per allocator. */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "bench/trace.h"

/*
 * Exactly one of these selects the allocator this binary measures:
 *   -DREPLAY_GLIBC     plain libc malloc (OpenSSL's default path)
 *   -DREPLAY_JEMALLOC  link with -ljemalloc, which replaces malloc
 *   -DREPLAY_MIMALLOC  link with -lmimalloc, which replaces malloc
 *   -DREPLAY_OSSL_MEM  link with libossl_mem; ossl_mem_init() installs it in OpenSSL
 * In every case the replay goes through CRYPTO_malloc/CRYPTO_realloc/CRYPTO_free,
 * so each variant pays OpenSSL's wrapper cost, as in a real server.
 */
#if defined(REPLAY_GLIBC) + defined(REPLAY_JEMALLOC) + defined(REPLAY_MIMALLOC) + \
        defined(REPLAY_OSSL_MEM) != 1
#error "define exactly one of REPLAY_GLIBC, REPLAY_JEMALLOC, REPLAY_MIMALLOC, REPLAY_OSSL_MEM"
#endif

#if defined(REPLAY_GLIBC)
#define VARIANT "glibc"
#define LIB_HINT "libc.so"
#elif defined(REPLAY_JEMALLOC)
#define VARIANT "jemalloc"
#define LIB_HINT "jemalloc"
/* Declared here rather than through <jemalloc/jemalloc.h>, whose malloc
 * declarations would clash with <stdlib.h>'s attributes. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
#elif defined(REPLAY_MIMALLOC)
#define VARIANT "mimalloc"
#define LIB_HINT "mimalloc"
#include <mimalloc.h>
#else
#define VARIANT "ossl_mem"
#include <ossl_mem/ossl_mem.h>
#endif

#define PROG "replay_" VARIANT
#define RFILE "replay" /* the file name OpenSSL's entry points are given */

static const char usage[] =
    "usage: " PROG " TRACE [--reps R]"
#ifdef REPLAY_OSSL_MEM
    " [--options STR]"
#endif
    " [--help]\n"
    "Loads an allocation trace written by replay_record, replays it once as warm-up, then\n"
    "R times (default 20) timed, every call through CRYPTO_malloc/CRYPTO_realloc/CRYPTO_free,\n"
    "with the allocator of this build: " VARIANT ". Objects still live at the end of a\n"
    "replay are freed outside the timing. Prints the median time per call as\n"
    "  RESULT variant=" VARIANT " ns_per_call=X calls=N\n"
#ifdef REPLAY_OSSL_MEM
    "  --options STR  ossl_mem options string (default: ossl_mem's defaults; the variant is\n"
    "                 then named ossl_mem:STR). OSSL_MEM_OPTIONS is ignored.\n"
#endif
    ;

struct trace {
    struct tr_header h;
    struct tr_rec *recs;
    void **slots; /* object id -> current pointer; slots[0] stays NULL */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void __attribute__((noreturn)) die(const char *msg, const char *detail)
{
    fprintf(stderr, PROG ": %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/*
 * Loads and checks the trace at <path>: header, sizes, and a dry run over the
 * ids (every non-zero <in> names a live object, every created <out> is new),
 * so the replay can never pass a stale pointer. Exits 1 with a message if the
 * file is unreadable or inconsistent.
 */
static void load_trace(const char *path, struct trace *t)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open trace", strerror(errno));
    unsigned char hb[TR_HEADER_SIZE];
    if (fread(hb, 1, sizeof(hb), f) != sizeof(hb) || tr_decode_header(hb, &t->h) != 0)
        die("not a version 1 trace file (bad header)", path);
    if (t->h.nops == 0 || t->h.nops > (1ull << 32) || t->h.nids > (1u << 31))
        die("trace header has implausible counts", path);
    t->recs = malloc(t->h.nops * sizeof(*t->recs));
    t->slots = calloc((size_t)t->h.nids + 1, sizeof(*t->slots));
    unsigned char *live = calloc((size_t)t->h.nids + 1, 1);
    if (!t->recs || !t->slots || !live)
        die("out of memory loading the trace", NULL);
    for (uint64_t i = 0; i < t->h.nops; i++) {
        unsigned char rb[TR_RECORD_SIZE];
        if (fread(rb, 1, sizeof(rb), f) != sizeof(rb))
            die("trace is truncated", path);
        struct tr_rec *r = &t->recs[i];
        tr_decode_rec(rb, r);
        unsigned op = r->op_line & 0xff;
        int ok = r->in <= t->h.nids && r->out <= t->h.nids;
        if (ok && op == TR_MALLOC) {
            ok = r->in == 0 && (r->out == 0 || !live[r->out]);
            live[r->out] = 1;
        } else if (ok && op == TR_REALLOC) {
            ok = r->in == 0 ? (r->out == 0 || !live[r->out]) : live[r->in] && (r->out == r->in || r->out == 0);
            live[r->in] = 0;
            live[r->out] = 1;
        } else if (ok && op == TR_FREE) {
            ok = r->out == 0 && (r->in == 0 || live[r->in]);
            live[r->in] = 0;
        } else {
            ok = 0;
        }
        live[0] = 0;
        if (!ok) {
            fprintf(stderr, PROG ": %s: record %" PRIu64 " is inconsistent\n", path, i);
            exit(1);
        }
    }
    if (fgetc(f) != EOF)
        die("trace has trailing bytes", path);
    fclose(f);
    free(live);
}

/* Stray results (a non-NULL realloc(p, 0)) have no slot; they are freed untimed. */
static void *stray[64];
static unsigned nstray;

/*
 * Replays the whole trace once and returns the seconds spent in the loop of
 * calls; then frees whatever is still live (untimed), so every replay starts
 * and ends with no object allocated. Exits 1 if an allocation of a non-zero
 * size returns NULL.
 */
static double replay_once(struct trace *t)
{
    const struct tr_rec *recs = t->recs;
    void **slots = t->slots;
    uint64_t n = t->h.nops;
    int oom = 0;
    double t0 = now();
    for (uint64_t i = 0; i < n; i++) {
        const struct tr_rec *r = &recs[i];
        int line = (int)(r->op_line >> 8);
        switch (r->op_line & 0xff) {
        case TR_MALLOC: {
            void *p = CRYPTO_malloc(r->size, RFILE, line);
            oom |= !p && r->size;
            slots[r->out] = p;
            break;
        }
        case TR_REALLOC: {
            void *p = CRYPTO_realloc(slots[r->in], r->size, RFILE, line);
            oom |= !p && r->size;
            slots[r->in] = NULL;
            if (r->out)
                slots[r->out] = p;
            else if (p && nstray < sizeof(stray) / sizeof(stray[0]))
                stray[nstray++] = p;
            break;
        }
        default: /* TR_FREE, checked at load */
            CRYPTO_free(slots[r->in], RFILE, line);
            slots[r->in] = NULL;
            break;
        }
        slots[0] = NULL;
    }
    double t1 = now();
    if (oom)
        die("an allocation returned NULL during the replay", NULL);
    for (uint32_t id = 1; id <= t->h.nids; id++)
        if (slots[id]) {
            CRYPTO_free(slots[id], RFILE, 0);
            slots[id] = NULL;
        }
    while (nstray)
        CRYPTO_free(stray[--nstray], RFILE, 0);
    return t1 - t0;
}

/*
 * Checks that OpenSSL's allocations really come from the allocator this
 * binary is meant to measure, and prints one "warning:" line per doubt:
 * which shared object the global symbol malloc resolves to (what libcrypto's
 * calls bind to), plus a functional probe through CRYPTO_malloc where the
 * allocator offers one (mimalloc: mi_is_in_heap_region; jemalloc: the
 * thread.allocated counter; ossl_mem: its allocs counter).
 * Returns the number of warnings.
 */
static int check_allocator(void)
{
    int warnings = 0;
#ifndef REPLAY_OSSL_MEM
    Dl_info di;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    const char *lib = m && dladdr(m, &di) && di.dli_fname ? di.dli_fname : "?";
    if (!strstr(lib, LIB_HINT)) {
        printf("warning: malloc resolves to %s, not " VARIANT "; the figures are not " VARIANT
               "'s\n", lib);
        warnings++;
    }
#endif
#if defined(REPLAY_MIMALLOC)
    void *p = CRYPTO_malloc(100, RFILE, __LINE__);
    if (!p || !mi_is_in_heap_region(p)) {
        printf("warning: CRYPTO_malloc memory is not in mimalloc's heap; mimalloc does not "
               "replace malloc here\n");
        warnings++;
    }
    CRYPTO_free(p, RFILE, __LINE__);
#elif defined(REPLAY_JEMALLOC)
    uint64_t a0 = 0, a1 = 0;
    size_t len = sizeof(a0);
    int rc = mallctl("thread.allocated", &a0, &len, NULL, 0);
    void *p = CRYPTO_malloc(100000, RFILE, __LINE__);
    len = sizeof(a1);
    rc |= mallctl("thread.allocated", &a1, &len, NULL, 0);
    CRYPTO_free(p, RFILE, __LINE__);
    if (rc != 0) {
        printf("warning: jemalloc's thread.allocated is unavailable; only the symbol check "
               "was made\n");
        warnings++;
    } else if (a1 - a0 < 100000) {
        printf("warning: CRYPTO_malloc did not allocate from jemalloc; jemalloc does not "
               "replace malloc here\n");
        warnings++;
    }
#elif defined(REPLAY_OSSL_MEM)
    struct ossl_mem_stats s0, s1;
    int rc = ossl_mem_get_stats(&s0);
    void *p = CRYPTO_malloc(100, RFILE, __LINE__);
    rc |= ossl_mem_get_stats(&s1);
    CRYPTO_free(p, RFILE, __LINE__);
    if (rc != 0 || s1.allocs == s0.allocs) {
        printf("warning: CRYPTO_malloc did not allocate from ossl_mem\n");
        warnings++;
    }
#endif
    return warnings;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *options = NULL;
    long reps = 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--reps") == 0) {
            char *end;
            errno = 0;
            reps = v ? strtol(v, &end, 10) : 0;
            if (!v || !*v || errno || *end || reps <= 0 || reps > 100000) {
                fprintf(stderr, PROG ": --reps needs a whole number from 1 to 100000, got '%s' "
                                "(try --help)\n", v ? v : "");
                return 2;
            }
            i++;
#ifdef REPLAY_OSSL_MEM
        } else if (strcmp(a, "--options") == 0 && v) {
            char err[256];
            if (ossl_mem_options_check(v, err, sizeof(err)) != 0) {
                fprintf(stderr, PROG ": bad --options: %s\n", err[0] ? err : v);
                return 2;
            }
            options = v;
            i++;
#endif
        } else if (a[0] != '-' && !path) {
            path = a;
        } else {
            fprintf(stderr, PROG ": bad argument '%s' (try --help)\n", a);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, PROG ": missing TRACE (try --help)\n");
        return 2;
    }

    char variant[200] = VARIANT;
#ifdef REPLAY_OSSL_MEM
    /* First, before anything touches OpenSSL. */
    struct ossl_mem_config cfg = { .version = OSSL_MEM_CONFIG_VERSION,
                                   .flags = OSSL_MEM_CFG_IGNORE_ENV, .options = options };
    int rc = ossl_mem_init(&cfg);
    if (rc != 0)
        die("ossl_mem_init", ossl_mem_strerror(rc));
    if (options)
        snprintf(variant, sizeof(variant), "ossl_mem:%s", options);
#else
    (void)options;
#endif

    struct trace t;
    load_trace(path, &t);
    check_allocator();

    replay_once(&t); /* warm-up: faults the pages in, fills the caches */
    double *sec = malloc((size_t)reps * sizeof(*sec));
    if (!sec)
        die("out of memory", NULL);
    for (long r = 0; r < reps; r++)
        sec[r] = replay_once(&t);
    qsort(sec, (size_t)reps, sizeof(*sec), cmp_double);
    double med = reps % 2 ? sec[reps / 2] : (sec[reps / 2 - 1] + sec[reps / 2]) / 2;
    double ns = med * 1e9 / (double)t.h.nops;

    int status = 0;
#ifdef REPLAY_OSSL_MEM
    struct ossl_mem_stats st;
    if (ossl_mem_get_stats(&st) == 0 && (st.double_frees || st.invalid_frees)) {
        fprintf(stderr, PROG ": ossl_mem counted %" PRIu64 " double and %" PRIu64
                        " invalid frees during the replay\n", st.double_frees, st.invalid_frees);
        status = 1;
    }
#endif
    printf("# %s: %s: %" PRIu64 " calls (%" PRIu64 " malloc, %" PRIu64 " realloc, %" PRIu64
           " free) from %" PRIu32 " handshakes, %ld reps: median %.2f ns/call, min %.2f, max "
           "%.2f\n", variant, path, t.h.nops, t.h.n_malloc, t.h.n_realloc, t.h.n_free,
           t.h.handshakes, reps, ns, sec[0] * 1e9 / (double)t.h.nops,
           sec[reps - 1] * 1e9 / (double)t.h.nops);
    printf("RESULT variant=%s ns_per_call=%.3f calls=%" PRIu64 "\n", variant, ns, t.h.nops);
    free(sec);
    free(t.recs);
    free(t.slots);
    return status;
}
