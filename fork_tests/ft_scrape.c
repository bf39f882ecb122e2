/* ft_scrape.c - after TLS work is freed, no private key or handshake secret is left in any page ossl_mem owns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "om.h"
#include "common/omt.h"
#include "fork_tests/ft.h"

/*
 * Linked statically so that it can read ossl_mem's own ranges. The secrets:
 * the private scalars of the CA, server and client keys, every TLS secret
 * OpenSSL logs through the keylog callback (handshake and traffic secrets,
 * the exporter secret), which OpenSSL keeps in its own structures while
 * the connection lives, and each context's session-ticket keys (which
 * OpenSSL frees without cleansing them; two of the four contexts live in
 * the shared arena). After everything is freed, the test searches every
 * committed page of the private region (live, cached and quarantined
 * chunks), every live large mapping and the whole shared arena for each
 * secret (its first 16 bytes). With the default options none may be found;
 * with no-zero the same run must find some, which shows the test can fail.
 */

#define MAX_SECRETS 512

static unsigned char secret[MAX_SECRETS][48];
static size_t secret_len[MAX_SECRETS];
static int nsecrets;

static void add_secret(const unsigned char *s, size_t len)
{
    if (nsecrets < MAX_SECRETS && len >= 16) {
        len = len > 48 ? 48 : len;
        memcpy(secret[nsecrets], s, len);
        secret_len[nsecrets++] = len;
    }
}

static int unhex(const char *h, unsigned char *out, size_t max)
{
    size_t n = 0;
    for (; h[0] && h[1] && n < max; h += 2) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1)
            break;
        out[n++] = (unsigned char)v;
    }
    return (int)n;
}

/* "LABEL <client random hex> <secret hex>" */
static void keylog(const SSL *ssl, const char *line)
{
    (void)ssl;
    const char *last = strrchr(line, ' ');
    unsigned char s[64];
    int n = last ? unhex(last + 1, s, sizeof s) : 0;
    add_secret(s, (size_t)n);
}

static void add_key(EVP_PKEY *pk)
{
    BIGNUM *priv = NULL;
    unsigned char b[66];
    if (EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_PRIV_KEY, &priv)) {
        int n = BN_bn2binpad(priv, b, 32);
        /* OpenSSL stores bignums as little-endian words: look for those bytes too */
        unsigned char le[32];
        for (int i = 0; i < 32; i++)
            le[i] = b[31 - i];
        add_secret(b, (size_t)n);
        add_secret(le, 32);
    }
    BN_clear_free(priv);
}

/* Number of secrets found in [p, p + len). */
static long search(const void *p, size_t len)
{
    long found = 0;
    for (int i = 0; i < nsecrets; i++)
        if (memmem(p, len, secret[i], 16))
            found++;
    return found;
}

struct large_scan {
    long found;
};

static void scan_large(struct om_chunk *h, size_t usable, void *arg)
{
    ((struct large_scan *)arg)->found += search(h + 1, usable);
}

static void child(const void *options, const void *b)
{
    (void)b;
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, options};
    if (ossl_mem_init(&cfg) != 0)
        _exit(2);
    struct omt_pki pki;
    struct omt_opts o = {0, OMT_VERIFY_MUTUAL};
    /* half the work in the shared arena (one process: no process-shared locks needed) */
    if (ossl_mem_shared_begin() != 0)
        _exit(3);
    int bad = omt_pki_make(&pki, OMT_KEY_EC);
    SSL_CTX *ssrv = bad ? NULL : omt_server_ctx(&pki, &o);
    SSL_CTX *scli = bad ? NULL : omt_client_ctx(&pki, &o);
    ossl_mem_shared_end();
    SSL_CTX *srv = bad ? NULL : omt_server_ctx(&pki, &o), *cli = bad ? NULL : omt_client_ctx(&pki, &o);
    if (!ssrv || !scli || !srv || !cli || ossl_mem_share_ssl_ctx(ssrv) || ossl_mem_share_ssl_ctx(scli))
        _exit(4);
    add_key(pki.srv_key);
    add_key(pki.cli_key);
    add_key(pki.ca_key);
    SSL_CTX *all[] = {ssrv, scli, srv, cli};
    for (int i = 0; i < 4; i++) {
        unsigned char keys[80];
        SSL_CTX_set_keylog_callback(all[i], keylog);
        if (SSL_CTX_get_tlsext_ticket_keys(all[i], keys, sizeof keys) == 1) {
            add_secret(keys + 16, 32); /* HMAC key */
            add_secret(keys + 48, 32); /* AES key */
        }
    }
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        struct omt_result r;
        ok += omt_handshake_bio(i & 1 ? ssrv : srv, i & 1 ? scli : cli, &r) == 0 && r.ok;
    }
    omt_pki_free(&pki);
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    if (ossl_mem_retire_ssl_ctx(ssrv) != 1 || ossl_mem_retire_ssl_ctx(scli) != 1)
        _exit(5);
    /* the search itself must not allocate through OpenSSL: everything is in place now */
    long found = 0;
    size_t used = atomic_load(&om_g.region_used);
    found += search(om_g.region, used);
    struct large_scan ls = {0};
    om_large_walk(scan_large, &ls);
    found += ls.found;
    long in_arena = search(om_g.arena_lo, (size_t)(om_g.arena_hi - om_g.arena_lo));
    printf("%d/20 handshakes, %d secrets, found %ld in the private pools and large chunks, %ld "
           "in the arena (%zu bytes of pools searched)\n", ok, nsecrets, found, in_arena, used);
    fflush(stdout);
    _exit(ok == 20 && nsecrets >= 20 ? (found + in_arena > 0 ? 10 : 0) : 6);
}

int main(void)
{
    ft_alarm(120);
    int pass = 0, fail = 0;
    static struct ft_child r;
    ft_run(&r, 60, child, "no-shared-locks", NULL);
    fputs(r.out, stdout);
    if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0)
        pass++, printf("ok: defaults: no private key or TLS secret left in any page ossl_mem owns\n");
    else
        fail++, printf("FAIL: defaults: status %d%s\n%s", r.status, r.timed_out ? " (hung)" : "",
                       r.err);
    /* fill writes its pattern instead of zeros: the secrets go as well */
    ft_run(&r, 60, child, "no-shared-locks,fill,canary,poison", NULL);
    fputs(r.out, stdout);
    if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0)
        pass++, printf("ok: fill,canary,poison: no secret left either\n");
    else
        fail++, printf("FAIL: fill: status %d%s\n%s", r.status, r.timed_out ? " (hung)" : "",
                       r.err);
    ft_run(&r, 60, child, "no-shared-locks,no-zero", NULL);
    fputs(r.out, stdout);
    if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 10)
        pass++, printf("ok: no-zero: secrets are found, so the search works\n");
    else
        fail++, printf("FAIL: no-zero: status %d: expected secrets to be found\n%s", r.status,
                       r.err);
    printf("%d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
