/* handshake_once.c - one variant, one process: N verified handshakes, for cachegrind/callgrind runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

/*
 * usage: handshake_once VARIANT N
 * VARIANT is "glibc" (OpenSSL's default allocator), "ossl_mem" (defaults) or
 * an ossl_mem options string ("no-zero,quarantine=0"). Makes the PKI and
 * contexts, runs 30 warm-up and N timed TLS 1.3 handshakes with mutual
 * verification over a BIO pair, prints "VARIANT hs/s". Exit status 2 on bad
 * arguments, 1 on any failure. Meant to run under valgrind, where the
 * instruction and cache-miss counts are repeatable on a noisy machine.
 */
int main(int argc, char **argv)
{
    if (argc != 3 || atoi(argv[2]) <= 0) {
        fprintf(stderr, "usage: handshake_once glibc|ossl_mem|OPTIONS N\n");
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
    struct omt_result r;
    for (int i = 0; i < 30; i++)
        if (omt_handshake_bio(s, c, &r) != 0 || !r.ok)
            return 1;
    int n = atoi(argv[2]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++)
        if (omt_handshake_bio(s, c, &r) != 0 || !r.ok) {
            fprintf(stderr, "handshake_once: %s\n", r.err);
            return 1;
        }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%s %.1f\n", argv[1], n / ((double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
    SSL_CTX_free(s);
    SSL_CTX_free(c);
    omt_pki_free(&pki);
    return 0;
}
