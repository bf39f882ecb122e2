/* handshake_once.c - one variant, one process: N verified handshakes, for cachegrind/callgrind runs. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

/* Parses a count in [min, 10000000]; -1 on anything else. */
static long count(const char *s, long min)
{
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    return !*s || *end || errno || n < min || n > 10000000 ? -1 : n;
}

/*
 * usage: handshake_once VARIANT N [WARMUP]
 * VARIANT is "glibc" (OpenSSL's default allocator: libc's malloc, or whatever
 * LD_PRELOAD put in its place), "ossl_mem" (defaults) or an ossl_mem options
 * string ("no-zero,quarantine=0"). Makes the PKI (P-256) and the TLS 1.3
 * contexts with mutual verification, runs WARMUP (default 30) warm-up and N
 * timed handshakes over a BIO pair, and prints "VARIANT hs/s malloc=LIB",
 * LIB being the file the malloc symbol resolves to (libc, or a preloaded
 * allocator). Exit status 2 on bad arguments, 1 on any failure. Meant to run
 * under valgrind, where the instruction and cache-miss counts are repeatable
 * on a noisy machine; bench/cachegrind.sh runs it with N and N + 100.
 */
int main(int argc, char **argv)
{
    long n = argc >= 3 ? count(argv[2], 1) : -1;
    long warmup = argc == 4 ? count(argv[3], 0) : 30;
    if (argc < 3 || argc > 4 || n < 0 || warmup < 0) {
        fprintf(stderr, "usage: handshake_once glibc|ossl_mem|OPTIONS N [WARMUP]\n");
        return 2;
    }
    if (strcmp(argv[1], "glibc") != 0) {
        struct ossl_mem_config c = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV,
                                    strcmp(argv[1], "ossl_mem") ? argv[1] : NULL};
        int rc = ossl_mem_init(&c);
        if (rc != 0) {
            fprintf(stderr, "handshake_once: %s\n", ossl_mem_strerror(rc));
            return 2;
        }
    }
    struct omt_pki pki;
    if (omt_pki_make(&pki, OMT_KEY_EC) != 0)
        return 1;
    SSL_CTX *s = omt_server_ctx(&pki, NULL), *c = omt_client_ctx(&pki, NULL);
    if (!s || !c)
        return 1;
    struct omt_result r;
    for (long i = 0; i < warmup; i++)
        if (omt_handshake_bio(s, c, &r) != 0 || !r.ok) {
            fprintf(stderr, "handshake_once: warm-up: %s\n", r.err);
            return 1;
        }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        if (omt_handshake_bio(s, c, &r) != 0 || !r.ok) {
            fprintf(stderr, "handshake_once: %s\n", r.err);
            return 1;
        }
    clock_gettime(CLOCK_MONOTONIC, &b);
    Dl_info di;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    const char *lib = m && dladdr(m, &di) && di.dli_fname ? di.dli_fname : "?";
    printf("%s %.1f malloc=%s\n", argv[1],
           (double)n / ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9), lib);
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    omt_pki_free(&pki);
    return 0;
}
