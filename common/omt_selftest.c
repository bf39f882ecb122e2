/* omt_selftest.c - self-test of common/omt (usage: omt_selftest [count], default 20). */
#include "omt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

/* Test state; this program is single-threaded (a fork child has its own copy). */
static int n_pass, n_fail;  /* check tallies */
static long live_blocks;    /* blocks currently allocated through OpenSSL */
static long alloc_calls;    /* OpenSSL allocation calls so far */
static long fail_at;        /* value of alloc_calls whose call fails; 0 = none */

static void *t_malloc(size_t n, const char *file, int line)
{
    void *p = NULL;

    (void)file; (void)line;
    if (++alloc_calls != fail_at && (p = malloc(n)) != NULL)
        live_blocks++;
    return p;
}

static void t_free(void *p, const char *file, int line)
{
    (void)file; (void)line;
    live_blocks -= p != NULL;
    free(p);
}

static void *t_realloc(void *p, size_t n, const char *file, int line)
{
    if (p == NULL)
        return t_malloc(n, file, line);
    if (n == 0) {
        t_free(p, file, line);
        return NULL;
    }
    return ++alloc_calls == fail_at ? NULL : realloc(p, n);
}

/* Count one check; print what failed (with r's message if given). */
static void report(int ok, const char *what, const struct omt_result *r)
{
    if (ok) {
        n_pass++;
    } else {
        n_fail++;
        fprintf(stderr, "FAIL %s%s%s\n", what, r ? ": " : "", r ? r->err : "");
    }
}

/* For both TLS versions: count bio and count socketpair handshakes in each
 * verify mode; a rogue client and a client without certificate must be
 * refused by the server, the rogue one with the verify error named. */
static void handshakes(const struct omt_pki *pki, enum omt_key kt, int count)
{
    static const char *const vnames[] = { "mutual", "server", "none" };
    const char *kn = kt == OMT_KEY_EC ? "EC" : "RSA";
    struct omt_pki rogue, mix = *pki;
    struct omt_result r;
    char what[64];
    int v, m, i, rc;

    report(omt_pki_make_rogue_client(pki, kt, &rogue) == 0, "rogue pki", NULL);
    mix.cli_key = rogue.cli_key;  /* trusts the good CA, presents the rogue cert */
    mix.cli_cert = rogue.cli_cert;
    for (v = TLS1_2_VERSION; v <= TLS1_3_VERSION; v++) {
        struct omt_opts srv_only = { v, OMT_VERIFY_SERVER };
        SSL_CTX *srv, *cli;

        for (m = OMT_VERIFY_MUTUAL; m <= OMT_VERIFY_NONE; m++) {
            struct omt_opts o = { v, (enum omt_verify)m };

            srv = omt_server_ctx(pki, &o);
            cli = omt_client_ctx(pki, &o);
            snprintf(what, sizeof(what), "%s TLS1.%d %s", kn, v - TLS1_VERSION, vnames[m]);
            for (i = 0; i < count; i++) {
                rc = omt_handshake_bio(srv, cli, &r);
                report(rc == 0 && r.ok, what, &r);
                rc = omt_handshake_socketpair(srv, cli, &r);
                report(rc == 0 && r.ok, what, &r);
            }
            SSL_CTX_free(cli);
            if (m == OMT_VERIFY_MUTUAL) {
                cli = omt_client_ctx(&mix, &o);
                rc = omt_handshake_bio(srv, cli, &r);
                printf("%s: rogue client -> %s\n", what, r.err);
                report(rc == -1 && !r.ok && r.verify_result != X509_V_OK
                       && strncmp(r.err, "server: handshake", 17) == 0
                       && strstr(r.err, X509_verify_cert_error_string(r.verify_result)) != NULL,
                       "rogue client must fail verification", &r);
                SSL_CTX_free(cli);
                cli = omt_client_ctx(pki, &srv_only);
                rc = omt_handshake_socketpair(srv, cli, &r);
                printf("%s: client without cert -> %s\n", what, r.err);
                report(rc == -1 && strncmp(r.err, "server: handshake", 17) == 0,
                       "client without cert must fail", &r);
                SSL_CTX_free(cli);
            }
            SSL_CTX_free(srv);
        }
    }
    omt_pki_free(&rogue);
}

/* Write the PKI as PEM, load the server pair back and handshake with it. */
static void pem_roundtrip(const struct omt_pki *pki)
{
    static const char *const files[] = { "ca.pem", "server.pem", "server.key",
                                         "client.pem", "client.key" };
    char dir[] = "/tmp/omt_selftest.XXXXXX", path[5][64];
    struct omt_opts o = { 0, OMT_VERIFY_SERVER };
    struct omt_pki loaded;
    struct omt_result r;
    SSL_CTX *srv, *cli;
    int i;

    report(mkdtemp(dir) != NULL && omt_pki_write_pem(pki, dir) == 0, "write PEM", NULL);
    for (i = 0; i < 5; i++)
        snprintf(path[i], sizeof(path[i]), "%s/%s", dir, files[i]);
    report(omt_pki_load(&loaded, path[1], path[2], path[0]) == 0, "omt_pki_load", NULL);
    srv = omt_server_ctx(&loaded, &o);
    cli = omt_client_ctx(&loaded, &o);
    report(omt_handshake_bio(srv, cli, &r) == 0, "handshake with loaded PEM", &r);
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&loaded);
    report(omt_pki_load(&loaded, path[1], path[4], path[0]) == -1, "mismatched key refused", NULL);
    ERR_clear_error();
    for (i = 0; i < 5; i++)
        unlink(path[i]);
    rmdir(dir);
}

/* fd_server here, fd_client in a forked child, over a blocking socketpair. */
static void fork_test(struct omt_pki *pki)
{
    SSL_CTX *srv = omt_server_ctx(pki, NULL), *cli = omt_client_ctx(pki, NULL);
    struct omt_result r;
    int sv[2] = { -1, -1 }, st = 0, rc = -1;
    pid_t pid = -1;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0) {
        fflush(NULL);
        if ((pid = fork()) == 0) {
            close(sv[0]);
            rc = omt_handshake_fd_client(cli, sv[1], &r);
            if (rc != 0)
                fprintf(stderr, "fork child: %s\n", r.err);
            close(sv[1]);
            SSL_CTX_free(srv);
            SSL_CTX_free(cli);
            omt_pki_free(pki);
            exit(rc != 0);
        }
        close(sv[1]);
        rc = pid > 0 ? omt_handshake_fd_server(srv, sv[0], &r) : -1;
        close(sv[0]);
    }
    report(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "fork: fd_client", NULL);
    report(rc == 0 && r.ok, "fork: fd_server", &r);
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
}

/* Run operation op once, freeing what it made; returns its 0/-1. */
static int run_op(int op, const struct omt_pki *pki, SSL_CTX *srv, SSL_CTX *cli,
                  struct omt_result *r)
{
    struct omt_pki p;
    SSL_CTX *a, *b;
    int rc;

    memset(r, 0, sizeof(*r));
    if (op >= 2)
        return op == 2 ? omt_handshake_bio(srv, cli, r) : omt_handshake_socketpair(srv, cli, r);
    if (op == 0) {
        rc = omt_pki_make(&p, OMT_KEY_EC);
        omt_pki_free(&p);
    } else {
        a = omt_server_ctx(pki, NULL);
        b = omt_client_ctx(pki, NULL);
        rc = a && b ? 0 : -1;
        SSL_CTX_free(a);
        SSL_CTX_free(b);
    }
    ERR_clear_error();
    return rc;
}

/*
 * Allocation-failure injection: for up to `runs` positions k spread over the
 * allocations an operation makes, fail exactly the k-th one. The operation
 * must report consistently, leave the error queue empty and leave the number
 * of live blocks unchanged (this thread's cached error/RNG state is dropped
 * with OPENSSL_thread_stop() before counting).
 */
static void inject(const struct omt_pki *pki, int runs)
{
    static const char *const names[] = { "omt_pki_make", "omt_*_ctx", "omt_handshake_bio",
                                         "omt_handshake_socketpair" };
    SSL_CTX *srv = omt_server_ctx(pki, NULL), *cli = omt_client_ctx(pki, NULL);
    struct omt_result r;
    int op, rc, queued;

    for (op = 0; op < 4; op++) {
        long start = alloc_calls, total, k, base, bad = 0, fails = 0;

        run_op(op, pki, srv, cli, &r);  /* warm up and count the allocations */
        total = alloc_calls - start;
        for (k = 1; k <= total; k += total / runs + 1) {
            OPENSSL_thread_stop();
            base = live_blocks;
            fail_at = alloc_calls + k;
            rc = run_op(op, pki, srv, cli, &r);
            fail_at = 0;
            fails += rc != 0;
            queued = ERR_peek_error() != 0;
            OPENSSL_thread_stop();
            if ((op >= 2 && ((rc == 0) != r.ok || (rc != 0 && r.err[0] == '\0')))
                || live_blocks != base || queued) {
                if (bad++ < 3)
                    fprintf(stderr, "inject %s #%ld: rc %d, %ld blocks leaked, %s\n",
                            names[op], k, rc, live_blocks - base, r.err);
            }
        }
        printf("inject %s: %ld allocations, %ld runs failed cleanly, %ld bad\n",
               names[op], total, fails, bad);
        report(bad == 0, names[op], NULL);
        report(run_op(op, pki, srv, cli, &r) == 0, "run after injection", &r);
    }
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
}

int main(int argc, char **argv)
{
    int count = argc > 1 && atoi(argv[1]) > 0 ? atoi(argv[1]) : 20;
    struct omt_pki ec, rsa;

    if (!CRYPTO_set_mem_functions(t_malloc, t_realloc, t_free))
        fprintf(stderr, "warning: allocation hooks not installed\n");
    report(omt_pki_make(&ec, OMT_KEY_EC) == 0, "omt_pki_make EC", NULL);
    report(omt_pki_make(&rsa, OMT_KEY_RSA) == 0, "omt_pki_make RSA", NULL);
    if (ec.ca_cert != NULL) {
        handshakes(&ec, OMT_KEY_EC, count);
        pem_roundtrip(&ec);
        fork_test(&ec);
        inject(&ec, count * 25);
    }
    if (rsa.ca_cert != NULL)
        handshakes(&rsa, OMT_KEY_RSA, count);
    omt_pki_free(&ec);
    omt_pki_free(&rsa);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail != 0;
}
