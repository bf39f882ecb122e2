/* ft_handshake.c - 200 real TLS 1.3 handshakes with mutual verification under ossl_mem: nothing leaks, check stays clean. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/err.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"
#include "fork_tests/ft.h"

#define HANDSHAKES 200

static unsigned pass, fail;

static void expect(int ok, const char *what)
{
    printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    if (ok)
        pass++;
    else
        fail++;
}

static struct ossl_mem_stats stats(void)
{
    struct ossl_mem_stats st;
    if (ossl_mem_get_stats(&st) != 0)
        abort();
    return st;
}

int main(void)
{
    ft_alarm(240);
    /* this test is its own fresh process: install before anything touches OpenSSL */
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, NULL};
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        printf("FAIL: ossl_mem_init: %s\n", ossl_mem_strerror(rc));
        return 1;
    }
    struct omt_pki pki;
    if (omt_pki_make(&pki, OMT_KEY_EC) != 0) {
        printf("FAIL: making certificates\n");
        return 1;
    }
    SSL_CTX *srv = omt_server_ctx(&pki, NULL), *cli = omt_client_ctx(&pki, NULL);
    if (!srv || !cli) {
        printf("FAIL: making contexts\n");
        return 1;
    }
    struct omt_result r;
    /* one warm-up handshake fills OpenSSL's lazy caches; after it, handshakes must not grow memory */
    expect(omt_handshake_bio(srv, cli, &r) == 0 && r.ok, "warm-up handshake verifies");
    struct ossl_mem_stats s0 = stats();

    unsigned ok = 0;
    for (int i = 0; i < HANDSHAKES; i++) {
        if (omt_handshake_bio(srv, cli, &r) == 0 && r.ok)
            ok++;
        else if (ok == (unsigned)i)
            printf("first failure: %s\n", r.err);
    }
    printf("handshakes: %u of %d verified over a BIO pair\n", ok, HANDSHAKES);
    expect(ok == HANDSHAKES, "every handshake verified (mutual, TLS 1.3)");
    struct ossl_mem_stats s1 = stats();
    printf("live before %" PRIu64 " B in %" PRIu64 " chunks, after %" PRIu64 " B in %" PRIu64
           " chunks; %" PRIu64 " allocs, peak %" PRIu64 " B\n", s0.live_bytes, s0.live_chunks,
           s1.live_bytes, s1.live_chunks, s1.allocs - s0.allocs, s1.peak_bytes);
    expect(s1.live_bytes == s0.live_bytes && s1.live_chunks == s0.live_chunks,
           "live bytes and chunks back to their pre-handshake values");
    expect(s1.allocs - s0.allocs > 1000u * HANDSHAKES, "the handshakes really went through ossl_mem");
    expect(s1.double_frees == 0 && s1.invalid_frees == 0 && s1.corrupt_headers == 0,
           "no double, invalid or corrupt frees");
    expect(ossl_mem_check() == 0, "ossl_mem_check() == 0");

    /* the same over a socketpair, then everything freed */
    ok = 0;
    for (int i = 0; i < 20; i++)
        ok += omt_handshake_socketpair(srv, cli, &r) == 0 && r.ok;
    expect(ok == 20, "20 handshakes over a socketpair verified");
    struct ossl_mem_stats s2 = stats();
    expect(s2.live_bytes == s0.live_bytes, "live bytes unchanged after the socketpair handshakes");

    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&pki);
    expect(ossl_mem_check() == 0, "ossl_mem_check() == 0 after freeing the contexts");
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
