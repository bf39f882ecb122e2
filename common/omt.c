/* omt.c - ossl_mem test utilities: in-memory PKI, TLS contexts and verified TLS handshakes. */
#include "omt.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#define OMT_HOST "localhost"
#define OMT_MSG_LEN 64
#define OMT_TIMEOUT_MS 10000

/* ------------------------------------------------------------------ PKI -- */

enum role { ROLE_CA, ROLE_SERVER, ROLE_CLIENT };

static EVP_PKEY *gen_key(enum omt_key kt)
{
    return kt == OMT_KEY_RSA ? EVP_RSA_gen(2048) : kt == OMT_KEY_EC ? EVP_EC_gen("P-256") : NULL;
}

/* Add extension nid=value (openssl.cnf syntax) to x; 1 ok, 0 error. */
static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, v3, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;

    X509_EXTENSION_free(ext);
    return ok;
}

/*
 * Build and sign (SHA-256) a certificate for `key`, subject "O=ossl_mem test,
 * CN=cn", 63-bit random serial, valid now-1h .. now+1d. issuer NULL means
 * self-signed (issuer_key is then key itself). Extensions follow role; kt only
 * adds keyEncipherment for RSA server keys. Returns the certificate or NULL.
 */
static X509 *make_cert(enum role role, const char *cn, EVP_PKEY *key,
                       X509 *issuer, EVP_PKEY *issuer_key, enum omt_key kt)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIGNUM *bn = BN_new();
    X509V3_CTX v3;
    int ok;

    ok = x != NULL && name != NULL && bn != NULL
        && X509_set_version(x, X509_VERSION_3)
        && BN_rand(bn, 63, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY)
        && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL
        && X509_gmtime_adj(X509_getm_notBefore(x), -3600) != NULL
        && X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600) != NULL
        && X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                      (const unsigned char *)"ossl_mem test", -1, -1, 0)
        && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                      (const unsigned char *)cn, -1, -1, 0)
        && X509_set_subject_name(x, name)
        && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name)
        && X509_set_pubkey(x, key);
    if (ok) {
        memset(&v3, 0, sizeof(v3));
        X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
        if (role == ROLE_CA)
            ok = add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE")
                && add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        else
            ok = add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE")
                && add_ext(x, &v3, NID_key_usage, role == ROLE_SERVER && kt == OMT_KEY_RSA
                           ? "critical,digitalSignature,keyEncipherment"
                           : "critical,digitalSignature")
                && add_ext(x, &v3, NID_ext_key_usage,
                           role == ROLE_SERVER ? "serverAuth" : "clientAuth")
                && (role != ROLE_SERVER || add_ext(x, &v3, NID_subject_alt_name,
                                                   "DNS:" OMT_HOST ",IP:127.0.0.1"));
        /* the subject key id must exist before a self-signed cert's AKID */
        ok = ok && add_ext(x, &v3, NID_subject_key_identifier, "hash")
            && add_ext(x, &v3, NID_authority_key_identifier, "keyid:always");
    }
    ok = ok && X509_sign(x, issuer_key, EVP_sha256()) > 0;
    BN_free(bn);
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

/* Fill pki->ca_key/ca_cert with a new self-signed CA named cn; 1 ok, 0 error. */
static int make_ca(struct omt_pki *pki, enum omt_key kt, const char *cn)
{
    if ((pki->ca_key = gen_key(kt)) != NULL)
        pki->ca_cert = make_cert(ROLE_CA, cn, pki->ca_key, NULL, pki->ca_key, kt);
    return pki->ca_cert != NULL;
}

/* Create *key and a leaf certificate *cert issued by pki's CA; 1 ok, 0 error. */
static int make_leaf(const struct omt_pki *pki, enum role role, const char *cn,
                     enum omt_key kt, EVP_PKEY **key, X509 **cert)
{
    if ((*key = gen_key(kt)) != NULL)
        *cert = make_cert(role, cn, *key, pki->ca_cert, pki->ca_key, kt);
    return *cert != NULL;
}

void omt_pki_free(struct omt_pki *pki)
{
    if (pki == NULL)
        return;
    EVP_PKEY_free(pki->ca_key);
    X509_free(pki->ca_cert);
    EVP_PKEY_free(pki->srv_key);
    X509_free(pki->srv_cert);
    EVP_PKEY_free(pki->cli_key);
    X509_free(pki->cli_cert);
    memset(pki, 0, sizeof(*pki));
}

int omt_pki_make(struct omt_pki *pki, enum omt_key kt)
{
    if (pki == NULL)
        return -1;
    memset(pki, 0, sizeof(*pki));
    if (make_ca(pki, kt, "omt-ca")
        && make_leaf(pki, ROLE_SERVER, OMT_HOST, kt, &pki->srv_key, &pki->srv_cert)
        && make_leaf(pki, ROLE_CLIENT, "omt-client", kt, &pki->cli_key, &pki->cli_cert))
        return 0;
    omt_pki_free(pki);
    return -1;
}

int omt_pki_make_rogue_client(const struct omt_pki *good, enum omt_key kt,
                              struct omt_pki *rogue)
{
    if (rogue == NULL)
        return -1;
    memset(rogue, 0, sizeof(*rogue));
    if (good != NULL && good != rogue && make_ca(rogue, kt, "omt-rogue-ca")
        && (good->ca_key == NULL || EVP_PKEY_eq(good->ca_key, rogue->ca_key) != 1)
        && make_leaf(rogue, ROLE_CLIENT, "omt-client", kt, &rogue->cli_key, &rogue->cli_cert))
        return 0;
    omt_pki_free(rogue);
    return -1;
}

/* Passphrase callback that refuses, so encrypted keys never prompt. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

/* Read the first PEM certificate (or key, if want_key) of file; NULL on error. */
static void *read_pem(const char *file, int want_key)
{
    BIO *b = file ? BIO_new_file(file, "r") : NULL;
    void *obj = NULL;

    if (b != NULL)
        obj = want_key ? (void *)PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL)
                       : (void *)PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    return obj;
}

int omt_pki_load(struct omt_pki *pki, const char *cert_file,
                 const char *key_file, const char *ca_file)
{
    if (pki == NULL)
        return -1;
    memset(pki, 0, sizeof(*pki));
    if ((pki->srv_cert = read_pem(cert_file, 0)) != NULL
        && (pki->srv_key = read_pem(key_file, 1)) != NULL
        && (pki->ca_cert = read_pem(ca_file, 0)) != NULL
        && X509_check_private_key(pki->srv_cert, pki->srv_key) == 1
        && X509_up_ref(pki->srv_cert) == 1 && (pki->cli_cert = pki->srv_cert) != NULL
        && EVP_PKEY_up_ref(pki->srv_key) == 1 && (pki->cli_key = pki->srv_key) != NULL)
        return 0;
    omt_pki_free(pki);
    return -1;
}

/* Write cert, or else the unencrypted key (mode 0600), as PEM to dir/name;
 * nothing if both are NULL. 1 ok, 0 error. */
static int write_pem(const char *dir, const char *name, X509 *cert, EVP_PKEY *key)
{
    char path[4096];
    int fd, ok, n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    BIO *b;

    if (cert == NULL && key == NULL)
        return 1;
    if (n < 0 || (size_t)n >= sizeof(path)
        || (fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, cert ? 0644 : 0600)) < 0)
        return 0;
    ok = (b = BIO_new_fd(fd, BIO_NOCLOSE)) != NULL
        && (cert ? PEM_write_bio_X509(b, cert)
                 : PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)) == 1;
    BIO_free(b);
    return close(fd) == 0 && ok;
}

int omt_pki_write_pem(const struct omt_pki *pki, const char *dir)
{
    if (pki == NULL || dir == NULL || pki->ca_cert == NULL)
        return -1;
    return write_pem(dir, "ca.pem", pki->ca_cert, NULL)
        && write_pem(dir, "server.pem", pki->srv_cert, NULL)
        && write_pem(dir, "server.key", NULL, pki->srv_key)
        && write_pem(dir, "client.pem", pki->cli_cert, NULL)
        && write_pem(dir, "client.key", NULL, pki->cli_key) ? 0 : -1;
}

/* ------------------------------------------------------------- contexts -- */

/*
 * New context for method m with o's protocol version pinned and pki's CA (if
 * any) in its store; *v receives o's verify mode. NULL on error or bad options.
 */
static SSL_CTX *new_ctx(const SSL_METHOD *m, const struct omt_pki *pki,
                        const struct omt_opts *o, enum omt_verify *v)
{
    int ver = (o != NULL && o->tls_version != 0) ? o->tls_version : TLS1_3_VERSION;
    X509_STORE *st;
    SSL_CTX *ctx;

    *v = o != NULL ? o->verify : OMT_VERIFY_MUTUAL;
    if ((ver != TLS1_2_VERSION && ver != TLS1_3_VERSION)
        || (*v != OMT_VERIFY_MUTUAL && *v != OMT_VERIFY_SERVER && *v != OMT_VERIFY_NONE)
        || m == NULL || (ctx = SSL_CTX_new(m)) == NULL)
        return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, ver) == 1
        && SSL_CTX_set_max_proto_version(ctx, ver) == 1
        && (pki->ca_cert == NULL
            || ((st = SSL_CTX_get_cert_store(ctx)) != NULL
                && X509_STORE_add_cert(st, pki->ca_cert) == 1)))
        return ctx;
    SSL_CTX_free(ctx);
    return NULL;
}

/* Install cert and key into ctx and check that they match; 1 ok, 0 error. */
static int use_cert(SSL_CTX *ctx, X509 *cert, EVP_PKEY *key)
{
    return cert != NULL && key != NULL
        && SSL_CTX_use_certificate(ctx, cert) == 1
        && SSL_CTX_use_PrivateKey(ctx, key) == 1
        && SSL_CTX_check_private_key(ctx) == 1;
}

SSL_CTX *omt_server_ctx(const struct omt_pki *pki, const struct omt_opts *o)
{
    static const unsigned char sid_ctx[] = "omt";
    enum omt_verify v;
    SSL_CTX *ctx;

    if (pki == NULL || pki->ca_cert == NULL
        || (ctx = new_ctx(TLS_server_method(), pki, o, &v)) == NULL)
        return NULL;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (v == OMT_VERIFY_MUTUAL)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    if (use_cert(ctx, pki->srv_cert, pki->srv_key)
        && SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) == 1
        && (v != OMT_VERIFY_MUTUAL || SSL_CTX_add_client_CA(ctx, pki->ca_cert) == 1))
        return ctx;
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *omt_client_ctx(const struct omt_pki *pki, const struct omt_opts *o)
{
    enum omt_verify v;
    SSL_CTX *ctx;

    if (pki == NULL || (ctx = new_ctx(TLS_client_method(), pki, o, &v)) == NULL)
        return NULL;
    SSL_CTX_set_verify(ctx, v == OMT_VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    if ((v == OMT_VERIFY_NONE || pki->ca_cert != NULL)
        && (v != OMT_VERIFY_MUTUAL || use_cert(ctx, pki->cli_cert, pki->cli_key)))
        return ctx;
    SSL_CTX_free(ctx);
    return NULL;
}

/* ----------------------------------------------------------- handshakes -- */

enum step { ST_HANDSHAKE, ST_READ, ST_WRITE, ST_SHUTDOWN, ST_DONE };
static const char *const step_name[] = { "handshake", "read", "write", "shutdown", "done" };

struct side {
    SSL *ssl;                        /* this end's connection, NULL before setup */
    const char *name;                /* "server" or "client" */
    int is_client;                   /* 1 for the client end */
    enum step step;                  /* step in progress */
    size_t done;                     /* bytes moved so far in a read/write step */
    int want;                        /* SSL_ERROR_WANT_READ/WRITE while blocked, else 0 */
    unsigned char msg[OMT_MSG_LEN];  /* client: message sent; server: message received */
    unsigned char echo[OMT_MSG_LEN]; /* client: echo received */
};

/* Record "who: what: detail" in r unless an earlier failure is recorded. */
static void set_err(struct omt_result *r, const char *who, const char *what,
                    const char *detail)
{
    if (r->err[0] == '\0')
        snprintf(r->err, sizeof(r->err), "%s: %s: %s", who, what, detail);
}

/* Record a setup failure with the oldest queued OpenSSL error; returns -1. */
static int setup_err(struct omt_result *r, const char *what)
{
    char buf[160] = "failed";

    if (ERR_peek_error() != 0)
        ERR_error_string_n(ERR_peek_error(), buf, sizeof(buf));
    set_err(r, "setup", what, buf);
    return -1;
}

/* Record a verification failure result vr of the first failing end. */
static void set_verify(struct omt_result *r, long vr)
{
    if (r->err[0] == '\0')
        r->verify_result = vr;
}

/*
 * Whether a failed call (SSL_get_error() <e>, errno <err_no> right after it, the error queue
 * as it was left) is the peer vanishing: an EOF without close_notify (OpenSSL 3 queues
 * "unexpected eof while reading"; SSL_ERROR_SYSCALL with errno 0 before), or a connection reset
 * or broken pipe, as an errno or a system error in the queue. A TLS alert from the peer, a
 * verification failure or a timeout is not.
 */
static int peer_vanished(int e, int err_no)
{
    unsigned long q = ERR_peek_error();

    if (q != 0) {
        if (ERR_GET_LIB(q) == ERR_LIB_SSL && ERR_GET_REASON(q) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return 1;
        if (ERR_SYSTEM_ERROR(q) || ERR_GET_LIB(q) == ERR_LIB_SYS) {
            int sys = ERR_GET_REASON(q);
            return sys == ECONNRESET || sys == EPIPE;
        }
        return 0;
    }
    return e == SSL_ERROR_SYSCALL && (err_no == 0 || err_no == ECONNRESET || err_no == EPIPE);
}

/* Record the failure of sd's current step: e is SSL_get_error() of the call,
 * err_no the errno right after it; returns -1. */
static int side_fail(struct side *sd, struct omt_result *r, int e, int err_no)
{
    char buf[200], detail[240];
    long vr = SSL_get_verify_result(sd->ssl);

    if (ERR_peek_error() != 0)
        ERR_error_string_n(ERR_peek_error(), buf, sizeof(buf));
    else if (e == SSL_ERROR_SYSCALL && err_no != 0)
        snprintf(buf, sizeof(buf), "I/O error, errno %d", err_no);
    else if (e == SSL_ERROR_SYSCALL)
        snprintf(buf, sizeof(buf), "unexpected EOF");
    else
        snprintf(buf, sizeof(buf), e == SSL_ERROR_ZERO_RETURN ? "peer closed the connection"
                                                               : "SSL error");
    if (r->err[0] == '\0')
        r->peer_gone = peer_vanished(e, err_no);
    if (sd->step == ST_HANDSHAKE && vr != X509_V_OK) {
        snprintf(detail, sizeof(detail), "%s (verify: %s)", buf, X509_verify_cert_error_string(vr));
        set_verify(r, vr);
    } else {
        snprintf(detail, sizeof(detail), "%s", buf);
    }
    set_err(r, sd->name, step_name[sd->step], detail);
    return -1;
}

/* After sd's handshake: an end that verifies its peer (and always the client)
 * needs the peer's certificate; a verifying end also needs X509_V_OK.
 * 0 ok, -1 failure recorded in r. */
static int check_peer(struct side *sd, struct omt_result *r)
{
    int verifies = (SSL_get_verify_mode(sd->ssl) & SSL_VERIFY_PEER) != 0;
    long vr = SSL_get_verify_result(sd->ssl);
    X509 *peer = SSL_get1_peer_certificate(sd->ssl);

    X509_free(peer);
    if ((verifies || sd->is_client) && peer == NULL) {
        set_err(r, sd->name, "verify", "no peer certificate");
        return -1;
    }
    if (verifies && vr != X509_V_OK) {
        set_verify(r, vr);
        set_err(r, sd->name, "verify", X509_verify_cert_error_string(vr));
        return -1;
    }
    return 0;
}

/* The step following sd's current one, for its role. */
static enum step next_step(const struct side *sd)
{
    switch (sd->step) {
    case ST_HANDSHAKE: return sd->is_client ? ST_WRITE : ST_READ;
    case ST_WRITE:     return sd->is_client ? ST_READ : ST_SHUTDOWN;
    case ST_READ:      return sd->is_client ? ST_SHUTDOWN : ST_WRITE;
    default:           return ST_DONE;
    }
}

/*
 * Advance one end as far as it gets without waiting. Client: handshake, write
 * 64 bytes, read the echo and compare, shutdown; server: handshake, read 64
 * bytes, write them back, shutdown. Returns 1 if some step completed, 0 if
 * none did (sd->want says what it waits for), -1 on failure (in r).
 */
static int side_step(struct side *sd, struct omt_result *r)
{
    int progress = 0, zeros = 0;

    while (sd->step != ST_DONE) {
        unsigned char *buf = sd->is_client && sd->step == ST_READ ? sd->echo : sd->msg;
        size_t n = 0;
        int ret, e, err_no;

        sd->want = 0;
        ERR_clear_error();  /* SSL_get_error() needs an empty queue */
        errno = 0;
        if (sd->step == ST_HANDSHAKE)
            ret = SSL_do_handshake(sd->ssl);
        else if (sd->step == ST_WRITE)
            ret = SSL_write_ex(sd->ssl, buf + sd->done, OMT_MSG_LEN - sd->done, &n);
        else if (sd->step == ST_READ)
            ret = SSL_read_ex(sd->ssl, buf + sd->done, OMT_MSG_LEN - sd->done, &n);
        else if ((ret = SSL_shutdown(sd->ssl)) == 0 && ++zeros < 8)
            continue;  /* close_notify sent: call again for the peer's (bounded) */
        err_no = errno;
        if (ret <= 0) {
            e = SSL_get_error(sd->ssl, ret);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                sd->want = e;
                return progress;
            }
            return side_fail(sd, r, e, err_no);
        }
        if ((sd->step == ST_READ || sd->step == ST_WRITE) && (sd->done += n) < OMT_MSG_LEN)
            continue;
        sd->done = 0;
        if (sd->step == ST_HANDSHAKE && check_peer(sd, r) != 0)
            return -1;
        if (sd->step == ST_READ && sd->is_client && memcmp(sd->msg, sd->echo, OMT_MSG_LEN) != 0) {
            set_err(r, sd->name, "read", "echo does not match the message sent");
            return -1;
        }
        sd->step = next_step(sd);
        progress = 1;
    }
    return progress;
}

/* Start a result: use r or, if NULL, *local; reset it. */
static struct omt_result *result_begin(struct omt_result *r, struct omt_result *local)
{
    r = r != NULL ? r : local;
    memset(r, 0, sizeof(*r));
    r->verify_result = X509_V_OK;
    return r;
}

/* Free the ends, set r->ok from rc, clear the error queue; returns rc. */
static int result_end(struct omt_result *r, int rc, struct side *a, struct side *b)
{
    SSL_free(a->ssl);
    SSL_free(b != NULL ? b->ssl : NULL);
    if (rc != 0)
        set_err(r, "io", "unknown", "failed");
    r->ok = rc == 0;
    ERR_clear_error();
    return rc;
}

/* Prepare an end: SSL from ctx in the right state; the client gets SNI and,
 * if its context verifies, host name checking. 0 ok, -1 (in r). */
static int side_init(struct side *sd, SSL_CTX *ctx, int is_client, struct omt_result *r)
{
    size_t i;

    sd->is_client = is_client;
    sd->name = is_client ? "client" : "server";
    for (i = 0; is_client && i < OMT_MSG_LEN; i++)
        sd->msg[i] = (unsigned char)(i * 37u + 11u);
    if (ctx == NULL) {
        set_err(r, "setup", sd->name, "no SSL_CTX");
        return -1;
    }
    if ((sd->ssl = SSL_new(ctx)) == NULL)
        return setup_err(r, "SSL_new");
    if (!is_client) {
        SSL_set_accept_state(sd->ssl);
        return 0;
    }
    SSL_set_connect_state(sd->ssl);
    if (SSL_set_tlsext_host_name(sd->ssl, OMT_HOST) != 1
        || ((SSL_get_verify_mode(sd->ssl) & SSL_VERIFY_PEER)
            && SSL_set1_host(sd->ssl, OMT_HOST) != 1))
        return setup_err(r, "client host name");
    return 0;
}

/* Bytes moved so far through the BIOs of the n ends. */
static uint64_t io_count(struct side **sd, int n)
{
    uint64_t sum = 0;
    int i;

    for (i = 0; i < n; i++)
        sum += BIO_number_read(SSL_get_rbio(sd[i]->ssl))
            + BIO_number_written(SSL_get_wbio(sd[i]->ssl));
    return sum;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Record an I/O failure `what` naming the step each end was at; returns -1. */
static int io_fail(struct side **sd, int n, struct omt_result *r, const char *what)
{
    char where[96];

    snprintf(where, sizeof(where), "%s at %s%s%s%s%s", sd[0]->name, step_name[sd[0]->step],
             n > 1 ? ", " : "", n > 1 ? sd[1]->name : "", n > 1 ? " at " : "",
             n > 1 ? step_name[sd[1]->step] : "");
    set_err(r, "io", what, where);
    return -1;
}

/*
 * Drive the n (1 or 2) ends, all in this thread, until all are done or one
 * fails. When no end moves: with use_poll, poll their fds for what they wait
 * on; without, fail as "stalled". Fails with "timeout" after OMT_TIMEOUT_MS.
 * 0 ok, -1 failure (in r).
 */
static int pump(struct side **sd, int n, int use_poll, struct omt_result *r)
{
    int64_t deadline = now_ms() + OMT_TIMEOUT_MS;
    struct pollfd pfd[2];
    int i;

    for (;;) {
        uint64_t before = io_count(sd, n);
        int progress = 0, all_done = 1, left, rc;

        for (i = 0; i < n; i++) {
            if ((rc = side_step(sd[i], r)) < 0)
                return -1;
            progress |= rc;
            all_done &= sd[i]->step == ST_DONE;
        }
        if (all_done)
            return 0;
        if ((left = (int)(deadline - now_ms())) <= 0)
            return io_fail(sd, n, r, "timeout");
        if (progress || io_count(sd, n) != before)
            continue;
        if (!use_poll)
            return io_fail(sd, n, r, "stalled");
        for (i = 0; i < n; i++) {
            pfd[i].fd = sd[i]->step == ST_DONE ? -1 : SSL_get_fd(sd[i]->ssl);
            pfd[i].events = sd[i]->want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
            pfd[i].revents = 0;
        }
        if ((rc = poll(pfd, (nfds_t)n, left)) == 0)
            return io_fail(sd, n, r, "timeout");
        if (rc < 0 && errno != EINTR)
            return io_fail(sd, n, r, "poll failed");
    }
}

/* Block SIGPIPE in this thread so that writing to a vanished peer fails with
 * EPIPE instead of killing the process; *old receives the previous mask. */
static void sigpipe_block(sigset_t *old)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

/* Undo sigpipe_block(), first discarding a SIGPIPE our writes left pending. */
static void sigpipe_restore(const sigset_t *old)
{
    static const struct timespec zero = { 0, 0 };
    sigset_t set;

    if (sigismember(old, SIGPIPE))
        return;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    while (sigtimedwait(&set, NULL, &zero) > 0)
        ;
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Make fd nonblocking; 0 ok, -1 error. */
static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -1 : 0;
}

/* Both ends in this thread, over a BIO pair (sockets == 0) or a nonblocking
 * AF_UNIX socketpair (sockets == 1); see the header for the contract. */
static int handshake_pair(SSL_CTX *srv, SSL_CTX *cli, int sockets, struct omt_result *r)
{
    struct omt_result local;
    struct side s = { 0 }, c = { 0 }, *both[2] = { &c, &s };
    int fd[2] = { -1, -1 }, rc = -1;
    BIO *bs, *bc;
    sigset_t old;

    r = result_begin(r, &local);
    if (sockets)
        sigpipe_block(&old);
    if (side_init(&s, srv, 0, r) != 0 || side_init(&c, cli, 1, r) != 0)
        rc = -1;
    else if (!sockets && BIO_new_bio_pair(&bs, 0, &bc, 0) != 1)
        setup_err(r, "BIO_new_bio_pair");
    else if (sockets && (socketpair(AF_UNIX, SOCK_STREAM, 0, fd) != 0
                         || set_nonblock(fd[0]) != 0 || set_nonblock(fd[1]) != 0))
        set_err(r, "setup", "socketpair", "system call failed");
    else if (sockets && (SSL_set_fd(s.ssl, fd[0]) != 1 || SSL_set_fd(c.ssl, fd[1]) != 1))
        setup_err(r, "SSL_set_fd");
    else {
        if (!sockets) {
            SSL_set_bio(s.ssl, bs, bs);  /* each SSL now owns its end of the pair */
            SSL_set_bio(c.ssl, bc, bc);
        }
        rc = pump(both, 2, sockets, r);
    }
    rc = result_end(r, rc, &s, &c);
    if (fd[0] >= 0)
        close(fd[0]);
    if (fd[1] >= 0)
        close(fd[1]);
    if (sockets)
        sigpipe_restore(&old);
    return rc;
}

int omt_handshake_bio(SSL_CTX *srv, SSL_CTX *cli, struct omt_result *r)
{
    return handshake_pair(srv, cli, 0, r);
}

int omt_handshake_socketpair(SSL_CTX *srv, SSL_CTX *cli, struct omt_result *r)
{
    return handshake_pair(srv, cli, 1, r);
}

/* One end (is_client selects which) on the caller's connected fd. */
static int handshake_fd(SSL_CTX *ctx, int fd, int is_client, struct omt_result *r)
{
    struct omt_result local;
    struct side sd = { 0 }, *one[1] = { &sd };
    sigset_t old;
    int rc = -1;

    r = result_begin(r, &local);
    sigpipe_block(&old);
    if (side_init(&sd, ctx, is_client, r) != 0)
        rc = -1;
    else if (fd < 0 || SSL_set_fd(sd.ssl, fd) != 1)
        setup_err(r, "SSL_set_fd");
    else
        rc = pump(one, 1, 1, r);
    rc = result_end(r, rc, &sd, NULL);
    sigpipe_restore(&old);
    return rc;
}

int omt_handshake_fd_server(SSL_CTX *srv, int fd, struct omt_result *r)
{
    return handshake_fd(srv, fd, 0, r);
}

int omt_handshake_fd_client(SSL_CTX *cli, int fd, struct omt_result *r)
{
    return handshake_fd(cli, fd, 1, r);
}
