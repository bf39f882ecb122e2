/* demo.c - the main job until the stress tool exists: verified TLS handshakes under ossl_mem, then its report. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

static const char usage[] =
    "usage: ossl-mem-demo [--handshakes N] [--key ec|rsa] [--json FILE] [--help]\n"
    "Installs ossl_mem (options from OSSL_MEM_OPTIONS), makes a CA, a server and a client\n"
    "certificate, runs N TLS 1.3 handshakes with mutual certificate verification (both ends\n"
    "in this process, alternating a BIO pair and a socketpair), prints ossl_mem's report, then\n"
    "frees everything and calls OPENSSL_cleanup(). Exit status 0 only if every handshake\n"
    "verified, memory did not grow across handshakes, nothing was left after the cleanup and\n"
    "ossl_mem_check() found no problem.\n"
    "  --handshakes N   handshakes to run (default 2000)\n"
    "  --key ec|rsa     P-256 (default) or RSA-2048 keys\n"
    "  --json FILE      also write the JSON report to FILE\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Parses a positive count; exits 2 with one line on bad input. */
static long count_arg(const char *opt, const char *v)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : -1;
    if (!v || errno || *end || n <= 0) {
        fprintf(stderr, "ossl-mem-demo: %s needs a positive number, got '%s'\n", opt, v ? v : "");
        exit(2);
    }
    return n;
}

int main(int argc, char **argv)
{
    long handshakes = 2000;
    enum omt_key key = OMT_KEY_EC;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--handshakes") == 0) {
            handshakes = count_arg(a, v), i++;
        } else if (strcmp(a, "--key") == 0 && v && (!strcmp(v, "ec") || !strcmp(v, "rsa"))) {
            key = strcmp(v, "ec") == 0 ? OMT_KEY_EC : OMT_KEY_RSA, i++;
        } else if (strcmp(a, "--json") == 0 && v) {
            json = v, i++;
        } else {
            fprintf(stderr, "ossl-mem-demo: bad argument '%s' (try --help)\n", a);
            return 2;
        }
    }

    /* 1. Install before anything touches OpenSSL. */
    int rc = ossl_mem_init(NULL);
    if (rc != 0) {
        fprintf(stderr, "ossl-mem-demo: ossl_mem_init: %s\n", ossl_mem_strerror(rc));
        return 1;
    }
    struct ossl_mem_stats s0, s1, s2;
    ossl_mem_get_stats(&s0);

    /* 2. Certificates and contexts, counted under their own tag. */
    ossl_mem_tag_push("pki");
    struct omt_pki pki;
    SSL_CTX *srv = NULL, *cli = NULL;
    if (omt_pki_make(&pki, key) == 0) {
        srv = omt_server_ctx(&pki, NULL);
        cli = omt_client_ctx(&pki, NULL);
    }
    ossl_mem_tag_pop();
    if (!srv || !cli) {
        fprintf(stderr, "ossl-mem-demo: cannot make certificates or contexts\n");
        return 1;
    }

    /* 3. Handshakes, under the "tls" tag. */
    ossl_mem_tag_push("tls");
    struct omt_result r;
    long ok = 0, failed = 0;
    char first_err[256] = "";
    double t0 = now();
    for (long i = 0; i < handshakes; i++) {
        int res = i % 2 ? omt_handshake_socketpair(srv, cli, &r) : omt_handshake_bio(srv, cli, &r);
        if (res == 0 && r.ok)
            ok++;
        else if (failed++ == 0)
            snprintf(first_err, sizeof first_err, "%s", r.err);
        if (i == 0)
            ossl_mem_get_stats(&s1); /* after the first handshake filled OpenSSL's caches */
        if ((i + 1) % (handshakes >= 10 ? handshakes / 10 : 1) == 0)
            fprintf(stderr, "  %ld/%ld handshakes, %ld failed, %.0f/s\n", i + 1, handshakes,
                    failed, (i + 1) / (now() - t0));
    }
    double secs = now() - t0;
    ossl_mem_tag_pop();
    ossl_mem_get_stats(&s2);

    /* 4. Report while the contexts are live, free everything, then look for leaks. */
    printf("=== ossl_mem report after %ld handshakes, contexts still live ===\n", handshakes);
    ossl_mem_report(stdout, OSSL_MEM_REPORT_TEXT);
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&pki);
    long problems = ossl_mem_check();
    OPENSSL_cleanup(); /* OpenSSL's global state goes too: what is left now is a leak */
    struct ossl_mem_stats s3;
    ossl_mem_get_stats(&s3);
    printf("\n=== after SSL_CTX_free and OPENSSL_cleanup(): %" PRIu64 " B in %" PRIu64
           " chunks still live ===\n", s3.live_bytes, s3.live_chunks);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f || ossl_mem_report(f, OSSL_MEM_REPORT_JSON) != 0)
            fprintf(stderr, "ossl-mem-demo: cannot write %s\n", json);
        if (f)
            fclose(f);
    }
    int leak = s2.live_bytes != s1.live_bytes || s3.live_chunks != 0;
    uint64_t unsafe = s2.double_frees + s2.invalid_frees + s2.corrupt_headers + s2.uaf_writes;
    printf("\nsummary: %ld of %ld handshakes verified (TLS 1.3, mutual, %s) in %.1f s, %.0f/s\n",
           ok, handshakes, key == OMT_KEY_EC ? "P-256" : "RSA-2048", secs, handshakes / secs);
    printf("         %.0f allocations per handshake, live memory after the first handshake "
           "%" PRIu64 " B, after the last %" PRIu64 " B, after cleanup %" PRIu64 " B (%s)\n",
           (double)(s2.allocs - s0.allocs) / (double)handshakes, s1.live_bytes, s2.live_bytes,
           s3.live_bytes, leak ? "LEAK" : "no leak");
    printf("         safety events %" PRIu64 ", ossl_mem_check(): %ld problems\n", unsafe, problems);
    if (failed)
        printf("         first failure: %s\n", first_err);
    int good = failed == 0 && !leak && unsafe == 0 && problems == 0;
    printf("result: %s\n", good ? "PASS" : "FAIL");
    return good ? 0 : 1;
}
