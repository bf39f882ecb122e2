/* replay_record.c - records OpenSSL's allocator calls during verified TLS 1.3 handshakes into a trace file for bench/replay. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "common/omt.h"
#include "bench/trace.h"

/*
 * The trace file format is described in bench/trace.h: a 64-byte header, then
 * one 16-byte record per allocator call (op and OpenSSL line, object in,
 * object out, size), with pointers mapped to dense object ids.
 */

#define PROG "replay_record"

static const char usage[] =
    "usage: " PROG " OUT.trace [--handshakes N] [--key ec|rsa] [--help]\n"
    "Installs recording allocator hooks in OpenSSL (over libc malloc), makes a PKI and\n"
    "TLS 1.3 contexts with mutual verification, and records every OpenSSL allocator\n"
    "call made during N handshakes (default 100) over a BIO pair; PKI and context\n"
    "set-up are not recorded. Writes the trace to OUT.trace (format: bench/trace.h).\n";

/* ---- pointer -> object id map: open addressing, linear probing, backward-shift delete ---- */

struct pmap_slot {
    uintptr_t key; /* 0 = empty */
    uint32_t id;
};

static struct pmap_slot *pm_tab;
static size_t pm_cap, pm_len; /* capacity (power of two), used slots */

static size_t pm_hash(uintptr_t k)
{
    return (size_t)(((uint64_t)k * 0x9E3779B97F4A7C15ull) >> 17) & (pm_cap - 1);
}

static void __attribute__((noreturn)) die_oom(void)
{
    static const char msg[] = PROG ": out of memory while recording\n";
    fwrite(msg, 1, sizeof(msg) - 1, stderr);
    abort();
}

static void pm_put(uintptr_t k, uint32_t id);

/* Doubles the table (or makes the first one); keeps every entry. */
static void pm_grow(void)
{
    struct pmap_slot *old = pm_tab;
    size_t ocap = pm_cap;
    pm_cap = ocap ? ocap * 2 : 1u << 16;
    pm_tab = calloc(pm_cap, sizeof(*pm_tab));
    if (!pm_tab)
        die_oom();
    pm_len = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].key)
            pm_put(old[i].key, old[i].id);
    free(old);
}

/* Maps k (non-zero, not present) to id. */
static void pm_put(uintptr_t k, uint32_t id)
{
    if ((pm_len + 1) * 2 > pm_cap)
        pm_grow();
    size_t i = pm_hash(k);
    while (pm_tab[i].key)
        i = (i + 1) & (pm_cap - 1);
    pm_tab[i].key = k;
    pm_tab[i].id = id;
    pm_len++;
}

/* Removes k and returns its id, or returns 0 if k is not in the map. */
static uint32_t pm_take(uintptr_t k)
{
    if (!pm_cap || !k)
        return 0;
    size_t i = pm_hash(k);
    while (pm_tab[i].key != k) {
        if (!pm_tab[i].key)
            return 0;
        i = (i + 1) & (pm_cap - 1);
    }
    uint32_t id = pm_tab[i].id;
    /* Backward shift: move later entries of the cluster into the hole when their
     * home slot does not lie cyclically in (hole, their position]. */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & (pm_cap - 1);
        if (!pm_tab[j].key)
            break;
        size_t home = pm_hash(pm_tab[j].key);
        int in_range = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!in_range) {
            pm_tab[hole] = pm_tab[j];
            hole = j;
        }
    }
    pm_tab[hole].key = 0;
    pm_len--;
    return id;
}

/* ---- the log ---- */

static struct tr_rec *log_recs;
static size_t log_len, log_cap;
static uint32_t next_id = 1;
static int recording;
static struct {
    uint64_t malloc_, realloc_, realloc_null, realloc_zero, free_, free_null;
    uint64_t dropped_frees;       /* frees of objects made before recording */
    uint64_t converted_reallocs;  /* reallocs of such objects, recorded as mallocs */
} cnt;

/* Appends one record. */
static void log_add(enum tr_op op, int line, uint32_t in, uint32_t out, size_t size)
{
    if (log_len == log_cap) {
        log_cap = log_cap ? log_cap * 2 : 1u << 20;
        struct tr_rec *n = realloc(log_recs, log_cap * sizeof(*log_recs));
        if (!n)
            die_oom();
        log_recs = n;
    }
    if (size > UINT32_MAX) {
        static const char msg[] = PROG ": allocation larger than 4 GiB cannot be recorded\n";
        fwrite(msg, 1, sizeof(msg) - 1, stderr);
        abort();
    }
    uint32_t l = line > 0 && (unsigned)line <= TR_LINE_MAX ? (uint32_t)line : 0;
    log_recs[log_len++] = (struct tr_rec){ .op_line = (uint32_t)op | l << 8, .in = in,
                                           .out = out, .size = (uint32_t)size };
}

/* Gives the new pointer p (non-NULL) the next object id and returns it. */
static uint32_t new_object(void *p)
{
    uint32_t id = next_id++;
    if (next_id == 0)
        die_oom();
    pm_put((uintptr_t)p, id);
    return id;
}

/*
 * The three hooks: libc malloc/realloc/free, and while <recording> one record
 * per call. A NULL result for a non-zero size is a fatal error (the trace
 * could not be replayed faithfully), reported before abort().
 */
static void *rec_malloc(size_t n, const char *file, int line)
{
    (void)file;
    void *p = malloc(n);
    if (!p && n)
        die_oom();
    if (recording) {
        cnt.malloc_++;
        log_add(TR_MALLOC, line, 0, p ? new_object(p) : 0, n);
    }
    return p;
}

static void *rec_realloc(void *old, size_t n, const char *file, int line)
{
    (void)file;
    if (old && n == 0) { /* OpenSSL's own meaning: free, return NULL */
        if (recording) {
            uint32_t in = pm_take((uintptr_t)old);
            if (in) {
                cnt.realloc_++;
                cnt.realloc_zero++;
                log_add(TR_REALLOC, line, in, 0, 0);
            } else {
                cnt.dropped_frees++;
            }
        }
        free(old);
        return NULL;
    }
    uint32_t in = recording ? pm_take((uintptr_t)old) : 0;
    void *p = realloc(old, n);
    if (!p && n)
        die_oom();
    if (recording) {
        if (!old) {
            cnt.realloc_++;
            cnt.realloc_null++;
            log_add(TR_REALLOC, line, 0, p ? new_object(p) : 0, n);
        } else if (in) {
            cnt.realloc_++;
            pm_put((uintptr_t)p, in); /* the object keeps its id, moved or not */
            log_add(TR_REALLOC, line, in, in, n);
        } else {
            cnt.converted_reallocs++; /* made before recording: a new object for the trace */
            cnt.malloc_++;
            log_add(TR_MALLOC, line, 0, new_object(p), n);
        }
    }
    return p;
}

static void rec_free(void *p, const char *file, int line)
{
    (void)file;
    if (recording) {
        if (!p) {
            cnt.free_++;
            cnt.free_null++;
            log_add(TR_FREE, line, 0, 0, 0);
        } else {
            uint32_t id = pm_take((uintptr_t)p);
            if (id) {
                cnt.free_++;
                log_add(TR_FREE, line, id, 0, 0);
            } else {
                cnt.dropped_frees++;
            }
        }
    }
    free(p);
}

/*
 * Writes the log to <path> in the bench/trace.h format. Returns 0, or -1
 * with a message on stderr.
 */
static int write_trace(const char *path, uint32_t handshakes)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    unsigned char hb[TR_HEADER_SIZE];
    struct tr_header h = { .nops = log_len, .nids = next_id - 1, .handshakes = handshakes,
                           .n_malloc = cnt.malloc_, .n_realloc = cnt.realloc_,
                           .n_free = cnt.free_ };
    tr_encode_header(hb, &h);
    int ok = fwrite(hb, 1, sizeof(hb), f) == sizeof(hb);
    for (size_t i = 0; ok && i < log_len; i++) {
        unsigned char rb[TR_RECORD_SIZE];
        tr_encode_rec(rb, &log_recs[i]);
        ok = fwrite(rb, 1, sizeof(rb), f) == sizeof(rb);
    }
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, PROG ": error writing %s: %s\n", path, strerror(errno));
        remove(path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *out = NULL;
    long handshakes = 100;
    enum omt_key key = OMT_KEY_EC;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--handshakes") == 0) {
            char *end;
            errno = 0;
            handshakes = v ? strtol(v, &end, 10) : 0;
            if (!v || !*v || errno || *end || handshakes <= 0 || handshakes > 1000000) {
                fprintf(stderr, PROG ": --handshakes needs a whole number from 1 to 1000000, "
                                "got '%s' (try --help)\n", v ? v : "");
                return 2;
            }
            i++;
        } else if (strcmp(a, "--key") == 0 && v && (!strcmp(v, "ec") || !strcmp(v, "rsa"))) {
            key = strcmp(v, "ec") == 0 ? OMT_KEY_EC : OMT_KEY_RSA;
            i++;
        } else if (a[0] != '-' && !out) {
            out = a;
        } else {
            fprintf(stderr, PROG ": bad argument '%s' (try --help)\n", a);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, PROG ": missing OUT.trace (try --help)\n");
        return 2;
    }

    /* Before anything touches OpenSSL. */
    if (!CRYPTO_set_mem_functions(rec_malloc, rec_realloc, rec_free)) {
        fprintf(stderr, PROG ": CRYPTO_set_mem_functions refused (OpenSSL already allocated)\n");
        return 1;
    }

    struct omt_pki pki;
    if (omt_pki_make(&pki, key) != 0) {
        fprintf(stderr, PROG ": omt_pki_make failed\n");
        return 1;
    }
    struct omt_opts o = { .tls_version = TLS1_3_VERSION, .verify = OMT_VERIFY_MUTUAL };
    SSL_CTX *srv = omt_server_ctx(&pki, &o), *cli = omt_client_ctx(&pki, &o);
    if (!srv || !cli) {
        fprintf(stderr, PROG ": cannot make the TLS contexts\n");
        return 1;
    }

    recording = 1;
    long failed = 0;
    struct omt_result r;
    for (long i = 0; i < handshakes; i++)
        if (omt_handshake_bio(srv, cli, &r) != 0 || !r.ok) {
            if (!failed++)
                fprintf(stderr, PROG ": handshake %ld failed: %s\n", i + 1, r.err);
        }
    recording = 0;
    size_t live_at_end = pm_len;

    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&pki);
    OPENSSL_cleanup();
    if (failed) {
        fprintf(stderr, PROG ": %ld of %ld handshakes failed; no trace written\n", failed,
                handshakes);
        return 1;
    }
    if (write_trace(out, (uint32_t)handshakes) != 0)
        return 1;

    printf("%s: %ld handshakes, %zu ops, %" PRIu32 " objects, %zu bytes\n", out, handshakes,
           log_len, next_id - 1, TR_HEADER_SIZE + log_len * TR_RECORD_SIZE);
    printf("  malloc  %10" PRIu64 "  (incl. %" PRIu64 " reallocs of pre-recording objects)\n",
           cnt.malloc_, cnt.converted_reallocs);
    printf("  realloc %10" PRIu64 "  (incl. %" PRIu64 " realloc(NULL,n), %" PRIu64
           " realloc(p,0))\n", cnt.realloc_, cnt.realloc_null, cnt.realloc_zero);
    printf("  free    %10" PRIu64 "  (incl. %" PRIu64 " free(NULL))\n", cnt.free_, cnt.free_null);
    printf("  dropped %10" PRIu64 "  frees of objects allocated before recording\n",
           cnt.dropped_frees);
    printf("  live    %10zu  objects still allocated when recording stopped (freed by the "
           "replayer, untimed)\n", live_at_end);
    free(log_recs);
    free(pm_tab);
    return 0;
}
