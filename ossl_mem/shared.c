/* shared.c - shared scopes (R2, R5), the private-site table, shared contexts and their reclamation (O2, O4). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/bn.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "om.h"

/* ------------------------------------------------------------------ */
/* Sites that always stay private (R2)                                 */
/* ------------------------------------------------------------------ */

/*
 * OpenSSL source files whose allocations are per-thread or process-global
 * state: inside a shared scope they still go to the private pools, so no
 * worker ever writes to, or frees, a sibling's copy of them. The warm-up
 * creates most of this state before the first scope; this table catches
 * what a scope creates first (a new algorithm's method, a thread's first
 * error). A pattern matches anywhere in OpenSSL's file name.
 */
static const char *const private_files[] = {
    "crypto/err/",                      /* error queues, error strings */
    "crypto/rand/",                     /* DRBGs, entropy pools */
    "providers/implementations/rands/", /* DRBG implementations and seeding */
    "crypto/initthread.c",              /* thread-exit handler registries */
    "crypto/context.c",                 /* library context data */
    "crypto/core_namemap.c",            /* algorithm name maps */
    "crypto/core_fetch.c",              /* method construction */
    "crypto/core_algorithm.c",
    "crypto/property/",                 /* method store, property caches and definitions */
    "crypto/evp/evp_fetch.c",           /* fetched methods */
    "crypto/evp/keymgmt_meth.c",
    "crypto/evp/evp_rand.c",
    "crypto/encode_decode/decoder_meth.c",
    "crypto/encode_decode/encoder_meth.c",
    "crypto/store/store_meth.c",
    "crypto/provider_core.c",           /* provider objects */
    "crypto/provider_child.c",
    "crypto/conf/",                     /* configuration */
    "crypto/init.c",
    "ssl/ssl_init.c",
};

#define NPRIVATE (sizeof private_files / sizeof private_files[0])

static uint8_t site_class[OM_NSITES]; /* 0 unknown, 1 shared, 2 private (this process's cache) */

/* Whether allocations at <site> stay private inside a shared scope. */
bool om_site_private(uint16_t site)
{
    uint8_t c = __atomic_load_n(&site_class[site], __ATOMIC_RELAXED);
    if (OM_LIKELY(c))
        return c == 2;
    const char *file;
    int line;
    c = 1;
    if (om_site_get(site, &file, &line) && file)
        for (size_t i = 0; i < NPRIVATE; i++)
            if (strstr(file, private_files[i])) {
                c = 2;
                break;
            }
    __atomic_store_n(&site_class[site], c, __ATOMIC_RELAXED);
    return c == 2;
}

/* ------------------------------------------------------------------ */
/* Warm-up (R5)                                                        */
/* ------------------------------------------------------------------ */

static pthread_mutex_t warm_lock = PTHREAD_MUTEX_INITIALIZER;
static bool warmed;             /* the process-wide warm-up ran (inherited by children) */
static __thread bool thread_warmed;

/* Fetches (and so caches in the default library context) the algorithms TLS servers use. */
static void fetch_common(void)
{
    static const char *const mds[] = {"SHA1", "SHA2-224", "SHA2-256", "SHA2-384", "SHA2-512",
                                      "MD5", "MD5-SHA1", "SHA3-256", "SHAKE256"};
    static const char *const ciphers[] = {"AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305",
                                          "AES-128-CBC", "AES-256-CBC", "AES-128-CCM",
                                          "AES-256-CBC-HMAC-SHA1", "AES-256-CBC-HMAC-SHA256",
                                          "DES-EDE3-CBC"};
    static const char *const keys[] = {"RSA", "RSA-PSS", "EC", "X25519", "X448", "ED25519",
                                       "ED448", "DH", "DHX", "DSA"};
    static const char *const sigs[] = {"RSA", "ECDSA", "ED25519", "ED448", "DSA"};
    static const char *const kex[] = {"ECDH", "X25519", "X448", "DH"};
    static const char *const kdfs[] = {"HKDF", "TLS13-KDF", "TLS1-PRF", "PBKDF2"};
    static const char *const macs[] = {"HMAC", "CMAC"};
    for (size_t i = 0; i < sizeof mds / sizeof *mds; i++)
        EVP_MD_free(EVP_MD_fetch(NULL, mds[i], NULL));
    for (size_t i = 0; i < sizeof ciphers / sizeof *ciphers; i++)
        EVP_CIPHER_free(EVP_CIPHER_fetch(NULL, ciphers[i], NULL));
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        EVP_KEYMGMT_free(EVP_KEYMGMT_fetch(NULL, keys[i], NULL));
        EVP_PKEY *pk = NULL;
        OSSL_DECODER_CTX *d = OSSL_DECODER_CTX_new_for_pkey(&pk, "PEM", NULL, keys[i],
                                                             0, NULL, NULL);
        OSSL_DECODER_CTX_free(d);
        d = OSSL_DECODER_CTX_new_for_pkey(&pk, "DER", NULL, keys[i], 0, NULL, NULL);
        OSSL_DECODER_CTX_free(d);
    }
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        EVP_SIGNATURE_free(EVP_SIGNATURE_fetch(NULL, sigs[i], NULL));
    for (size_t i = 0; i < sizeof kex / sizeof *kex; i++)
        EVP_KEYEXCH_free(EVP_KEYEXCH_fetch(NULL, kex[i], NULL));
    for (size_t i = 0; i < sizeof kdfs / sizeof *kdfs; i++)
        EVP_KDF_free(EVP_KDF_fetch(NULL, kdfs[i], NULL));
    for (size_t i = 0; i < sizeof macs / sizeof *macs; i++)
        EVP_MAC_free(EVP_MAC_fetch(NULL, macs[i], NULL));
    EVP_KEM_free(EVP_KEM_fetch(NULL, "RSA", NULL));
}

/* A self-signed P-256 certificate for <key>, usable as its own trust anchor. */
static X509 *self_signed(EVP_PKEY *key)
{
    X509 *x = X509_new();
    if (!x)
        return NULL;
    X509_NAME *n = X509_get_subject_name(x);
    bool ok = X509_set_version(x, 2) && ASN1_INTEGER_set(X509_get_serialNumber(x), 1) &&
              X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
              X509_gmtime_adj(X509_getm_notAfter(x), 3600) &&
              X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                         (const unsigned char *)"localhost", -1, -1, 0) &&
              X509_set_issuer_name(x, n) && X509_set_pubkey(x, key) &&
              X509_sign(x, key, EVP_sha256()) > 0;
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

/* A context of <method> that presents <cert>/<key>, trusts <cert> and verifies its peer. */
static SSL_CTX *warm_ctx(const SSL_METHOD *method, X509 *cert, EVP_PKEY *key, int version)
{
    SSL_CTX *c = SSL_CTX_new(method);
    if (!c)
        return NULL;
    if (!SSL_CTX_use_certificate(c, cert) || !SSL_CTX_use_PrivateKey(c, key) ||
        !X509_STORE_add_cert(SSL_CTX_get_cert_store(c), cert) ||
        !SSL_CTX_set_min_proto_version(c, version) || !SSL_CTX_set_max_proto_version(c, version)) {
        SSL_CTX_free(c);
        return NULL;
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return c;
}

/* One TLS handshake of <version> over a BIO pair, both ends here. Returns true if it verified. */
static bool warm_handshake(X509 *cert, EVP_PKEY *key, int version)
{
    SSL_CTX *sc = warm_ctx(TLS_server_method(), cert, key, version);
    SSL_CTX *cc = warm_ctx(TLS_client_method(), cert, key, version);
    SSL *s = sc ? SSL_new(sc) : NULL, *c = cc ? SSL_new(cc) : NULL;
    BIO *sb = NULL, *cb = NULL;
    bool ok = false;
    if (s && c && BIO_new_bio_pair(&sb, 0, &cb, 0)) {
        SSL_set_bio(s, sb, sb);
        SSL_set_bio(c, cb, cb);
        SSL_set_accept_state(s);
        SSL_set_connect_state(c);
        SSL_set_tlsext_host_name(c, "localhost");
        for (int i = 0; i < 64 && !ok; i++) {
            int rc = SSL_do_handshake(c), rs = SSL_do_handshake(s);
            ok = rc == 1 && rs == 1;
        }
        if (ok) {
            char buf[16] = "warm-up";
            ok = SSL_write(c, buf, 8) == 8 && SSL_read(s, buf, sizeof buf) == 8 &&
                 SSL_get_verify_result(s) == X509_V_OK && SSL_get_verify_result(c) == X509_V_OK;
            SSL_shutdown(c);
            SSL_shutdown(s);
        }
    }
    SSL_free(s);
    SSL_free(c);
    SSL_CTX_free(sc);
    SSL_CTX_free(cc);
    return ok;
}

/* The calling thread's OpenSSL state: its error queue and its DRBGs. */
static void warm_thread(void)
{
    unsigned char b[32];
    ERR_set_mark();
    ERR_pop_to_mark();
    RAND_bytes(b, sizeof b);
    RAND_priv_bytes(b, sizeof b);
    thread_warmed = true;
}

/*
 * The warm-up (R5): initialises OpenSSL in private memory so that a shared
 * scope only receives the objects built inside it: library init and error
 * strings, this thread's error state and DRBGs, the methods and decoders
 * of common algorithms, a PEM round trip and throw-away TLS 1.3 and 1.2
 * handshakes with mutual verification (which fill the lazy caches of a
 * handshake). Runs with the thread outside any shared scope.
 */
static void warm_up(void)
{
    pthread_mutex_lock(&warm_lock);
    if (!warmed) {
        OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS |
                             OPENSSL_INIT_LOAD_CONFIG, NULL);
        warm_thread();
        fetch_common();
        EVP_PKEY *key = EVP_EC_gen("P-256");
        X509 *cert = key ? self_signed(key) : NULL;
        bool ok = cert && warm_handshake(cert, key, TLS1_3_VERSION) &&
                  warm_handshake(cert, key, TLS1_2_VERSION);
        /* PEM round trip: fills the encoder and decoder caches */
        BIO *b = BIO_new(BIO_s_mem());
        if (b && key && cert && PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) &&
            PEM_write_bio_X509(b, cert)) {
            EVP_PKEY_free(PEM_read_bio_PrivateKey(b, NULL, NULL, NULL));
            X509_free(PEM_read_bio_X509(b, NULL, NULL, NULL));
        }
        BIO_free(b);
        X509_free(cert);
        EVP_PKEY_free(key);
        if (!ok)
            om_msg("warm-up handshake failed (%s): OpenSSL state made during the first shared "
                   "scope may land in the arena", ERR_reason_error_string(ERR_peek_error()));
        ERR_clear_error();
        warmed = true;
    }
    pthread_mutex_unlock(&warm_lock);
}

/* ------------------------------------------------------------------ */
/* Scopes                                                              */
/* ------------------------------------------------------------------ */

static bool locks_refusal_reported;

int ossl_mem_shared_begin(void)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    if (om_g.opt.shared_locks && !om_g.locks_interposed) {
        if (!locks_refusal_reported) {
            locks_refusal_reported = true;
            om_msg("shared scope refused: OpenSSL's locks cannot be made process-shared "
                   "(pthread_rwlock_init does not reach libossl_mem.so; link it before "
                   "libcrypto and libc, as a shared library, or LD_PRELOAD it)");
        }
        return OSSL_MEM_E_LOCKS;
    }
    struct om_tc *tc = om_tc_enter();
    bool orphan = tc->orphan;
    om_tc_leave(tc);
    if (orphan)
        return OSSL_MEM_E_INVAL;
    if (tc->shared_depth >= OSSL_MEM_MAX_TAG_DEPTH)
        return OSSL_MEM_E_SCOPE;
    if (tc->shared_depth == 0 && om_g.opt.shared_prepare) {
        if (!warmed)
            warm_up();
        if (!thread_warmed)
            warm_thread();
    }
    if (tc->shared_depth == 0) {
        om_arena_lock();
        tc->shared_set = om_arena_new_set();
        om_arena_unlock();
    }
    tc->shared_depth++;
    return 0;
}

int ossl_mem_shared_end(void)
{
    struct om_tc *tc = om_tls_tc;
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if ((uintptr_t)tc <= (uintptr_t)OM_TC_DEAD || tc->shared_depth == 0)
        return OSSL_MEM_E_SCOPE;
    tc->shared_depth--;
    return 0;
}

int ossl_mem_is_shared(const void *p)
{
    return om_g.arena && om_in_arena(p);
}

/* ------------------------------------------------------------------ */
/* Shared contexts (O4)                                                */
/* ------------------------------------------------------------------ */

#define PIN (1 << 28) /* references the arena holds on a registered context */

/*
 * Offset of OpenSSL's reference count inside <ctx> of <size> bytes: the
 * one int that SSL_CTX_up_ref() raises by one (and SSL_CTX_free() lowers
 * back). Returns -1 if no single such int exists.
 */
static long find_refcount(SSL_CTX *ctx, size_t size)
{
    unsigned char before[8192];
    if (size > sizeof before)
        size = sizeof before;
    memcpy(before, ctx, size);
    if (!SSL_CTX_up_ref(ctx))
        return -1;
    long off = -1;
    int hits = 0;
    for (size_t i = 0; i + sizeof(int) <= size; i += sizeof(int)) {
        int a, b;
        memcpy(&a, before + i, sizeof a);
        memcpy(&b, (unsigned char *)ctx + i, sizeof b);
        if (a >= 1 && a < 0x7fffffff && b == a + 1)
            off = (long)i, hits++;
    }
    SSL_CTX_free(ctx); /* the count was at least 2: only drops our reference */
    return hits == 1 ? off : -1;
}

/*
 * One public-key operation with <pk>: a signature check that fails, but
 * only after an RSA key cached its Montgomery context (_method_mod_n, made
 * on the first public operation). A worker verifying a peer would
 * otherwise make it with its own private memory and store it in the shared
 * key, where the other workers find a pointer they cannot follow (found by
 * ossl-mem-stress: RSA, TLS 1.2, "bignum too long" in the workers). The
 * signature is the number 1, below every modulus, so the operation runs.
 */
static void verify_once(EVP_PKEY *pk)
{
    unsigned char md[32] = {1}, sig[1024] = {0};
    int len = EVP_PKEY_get_size(pk);
    if (len <= 0 || (size_t)len > sizeof sig)
        return;
    sig[len - 1] = 1;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(pk, NULL);
    if (pc && EVP_PKEY_verify_init(pc) > 0 &&
        EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) > 0)
        EVP_PKEY_verify(pc, sig, (size_t)len, md, sizeof md);
    EVP_PKEY_CTX_free(pc);
}

/*
 * Fills the fields of <x> that OpenSSL computes on first use (extensions,
 * name encodings, the public key and its cached state).
 */
static void fill_x509(X509 *x)
{
    if (!x)
        return;
    X509_check_purpose(x, -1, 0);
    X509_NAME_hash_ex(X509_get_subject_name(x), NULL, NULL, NULL);
    X509_NAME_hash_ex(X509_get_issuer_name(x), NULL, NULL, NULL);
    EVP_PKEY *pk = X509_get0_pubkey(x);
    if (pk)
        verify_once(pk);
}

/* One private-key operation with <pk> (failures ignored: not every key type signs raw data). */
static void sign_once(EVP_PKEY *pk)
{
    unsigned char md[32] = {1}, sig[2048];
    size_t len = sizeof sig;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(pk, NULL);
    if (pc && EVP_PKEY_sign_init(pc) > 0 && EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) > 0)
        EVP_PKEY_sign(pc, sig, &len, md, sizeof md);
    EVP_PKEY_CTX_free(pc);
}

#define MAX_BLINDING_BNS 64

struct blinding_patch {
    uint8_t set;            /* the context's set */
    uintptr_t self;         /* pthread_self() of the calling thread */
    int patched;
    BIGNUM *bn[MAX_BLINDING_BNS]; /* numbers the blindings point to */
    int nbn;
};

/* Whether <p> is the start of a live arena chunk of <set> made by BN_new(), i.e. a BIGNUM. */
static bool is_shared_bignum(uintptr_t p, uint8_t set)
{
    const char *why, *file;
    size_t cap;
    int line;
    if (!om_in_arena((const void *)p))
        return false;
    struct om_chunk *h = om_arena_find((const void *)p, &why, &cap);
    return h && h->state == OM_ST_LIVE && h->flags == set && h->size == 24 &&
           om_site_get(h->asite, &file, &line) && file && strstr(file, "crypto/bn/bn_lib.c");
}

/*
 * An RSA blinding of set <set> that records the calling thread as its owner:
 * the owner field is overwritten with a value no thread has, so that every
 * thread of every process takes the blinding shared by all of them, under
 * its (process-shared) lock.
 */
static void patch_blinding(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct blinding_patch *bp = arg;
    const char *file;
    int line;
    if (h->state != OM_ST_LIVE || h->flags != bp->set || !om_site_get(h->asite, &file, &line) ||
        !file || !strstr(file, "crypto/bn/bn_blind.c"))
        return;
    uintptr_t *q = (uintptr_t *)(h + 1);
    for (size_t i = 0; i < h->size / sizeof *q; i++) {
        if (q[i] == bp->self) {
            q[i] = 1; /* pthread_t values are addresses: 1 is nobody's */
            bp->patched++;
        } else if (bp->nbn < MAX_BLINDING_BNS && is_shared_bignum(q[i], bp->set)) {
            bp->bn[bp->nbn++] = (BIGNUM *)q[i];
        }
    }
}

/*
 * Gives the numbers of the shared blindings room to spare: the updates and
 * renewals workers make (random values of one bit more than the modulus,
 * inverses) would otherwise grow them, now and then, with private memory.
 * Values are kept; only the capacity grows, in the arena.
 */
static void grow_blinding_numbers(struct blinding_patch *bp)
{
    int bits = 0;
    for (int i = 0; i < bp->nbn; i++)
        if (BN_num_bits(bp->bn[i]) > bits)
            bits = BN_num_bits(bp->bn[i]);
    for (int i = 0; i < bp->nbn; i++) {
        BIGNUM *keep = BN_dup(bp->bn[i]);
        if (keep && BN_set_bit(bp->bn[i], bits + 256))
            BN_copy(bp->bn[i], keep);
        BN_free(keep);
    }
}

/*
 * Fills the lazily computed state of private key <pk> in the arena: one
 * signature computes Montgomery contexts and, for RSA, the blinding. RSA
 * keeps one blinding for the thread that made it and uses it without a
 * lock; forked processes all have the same thread ids (pthread_self() is
 * an address), so every worker would take that blinding as its own and
 * race on it in shared memory. Its owner is therefore cleared, and more
 * signatures make the shared blinding that every thread then uses under
 * its lock.
 */
static void fill_key(EVP_PKEY *pk, uint8_t set)
{
    if (!pk)
        return;
    for (int i = 0; i < 4; i++)
        sign_once(pk);
    if (!EVP_PKEY_is_a(pk, "RSA") && !EVP_PKEY_is_a(pk, "RSA-PSS"))
        return;
    struct blinding_patch bp = {set, (uintptr_t)pthread_self(), 0};
    om_arena_walk(patch_blinding, &bp);
    /* the shared blinding: made by the next signature, its numbers grown to full size by the
       updates of the next ones and by one renewal (every 32 uses), all in the arena; a worker
       that grew them later would put private memory into them */
    for (int i = 0; i < 40 && bp.patched; i++)
        sign_once(pk);
    bp.nbn = 0;
    om_arena_walk(patch_blinding, &bp);
    grow_blinding_numbers(&bp);
}

static void fill_names(const STACK_OF(X509_NAME) *names)
{
    for (int i = 0; i < sk_X509_NAME_num(names); i++)
        X509_NAME_hash_ex(sk_X509_NAME_value(names, i), NULL, NULL, NULL);
}

/*
 * Makes <ctx> safe to use read-mostly from several processes: fills, in
 * the arena and in the context's own set <set>, what OpenSSL would
 * otherwise compute lazily on first use, which a worker would do in its
 * private memory and store into shared objects (measured: the cached
 * extensions of in-memory certificates, the canonical encodings of
 * names, RSA blinding and Montgomery contexts); then sorts the trust store's object stack, which lookups would
 * otherwise sort in place under a write lock. Returns false if the calling
 * thread cannot enter a scope.
 */
static bool fill_lazy(SSL_CTX *ctx, uint8_t set)
{
    struct om_tc *tc = om_tc_enter();
    bool orphan = tc->orphan;
    om_tc_leave(tc);
    if (orphan)
        return false;
    uint8_t saved_set = tc->shared_set;
    tc->shared_depth++;
    tc->shared_set = set;
    if (SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_FIRST)) {
        do {
            STACK_OF(X509) *chain = NULL;
            fill_x509(SSL_CTX_get0_certificate(ctx));
            fill_key(SSL_CTX_get0_privatekey(ctx), set);
            if (SSL_CTX_get0_chain_certs(ctx, &chain))
                for (int i = 0; i < sk_X509_num(chain); i++)
                    fill_x509(sk_X509_value(chain, i));
        } while (SSL_CTX_set_current_cert(ctx, SSL_CERT_SET_NEXT));
    }
    fill_names(SSL_CTX_get0_CA_list(ctx));
    fill_names(SSL_CTX_get_client_CA_list(ctx));
    X509_STORE *st = SSL_CTX_get_cert_store(ctx);
    if (st && X509_STORE_lock(st)) {
        STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(st);
        for (int i = 0; i < sk_X509_OBJECT_num(objs); i++)
            fill_x509(X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i)));
        sk_X509_OBJECT_sort(objs);
        X509_STORE_unlock(st);
    }
    ERR_clear_error();
    tc->shared_set = saved_set;
    tc->shared_depth--;
    return true;
}

static _Atomic int *refcount_at(struct om_sctx *e)
{
    return (_Atomic int *)((char *)e->ctx + e->refoff);
}

static struct om_sctx *sctx_lookup(SSL_CTX *ctx)
{
    for (int i = 0; i < OM_MAXCTX; i++)
        if (om_g.arena->ctxs[i].state != OM_SCTX_FREE && om_g.arena->ctxs[i].ctx == ctx)
            return &om_g.arena->ctxs[i];
    return NULL;
}

static bool holders_empty(const struct om_sctx *e)
{
    for (int i = 0; i < OM_MAXPROC / 64; i++)
        if (e->holders[i])
            return false;
    return true;
}

static void holders_clear_slot(int slot)
{
    for (int c = 0; c < OM_MAXCTX; c++)
        om_g.arena->ctxs[c].holders[slot / 64] &= ~(1ull << (slot % 64));
}

static void purge_vanished(void);

int ossl_mem_share_ssl_ctx(SSL_CTX *ctx)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    if (!ctx)
        return OSSL_MEM_E_INVAL;
    const char *why;
    size_t cap;
    struct om_chunk *h = om_in_arena(ctx) ? om_arena_find(ctx, &why, &cap) : NULL;
    if (!h) {
        om_msg("ossl_mem_share_ssl_ctx(%p): the context is not in the shared arena; build it "
               "between ossl_mem_shared_begin() and ossl_mem_shared_end()", (void *)ctx);
        return OSSL_MEM_E_NOT_SHARED;
    }
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (!om_hdr_valid(h, w0, w1) || h->state != OM_ST_LIVE || h->owner != om_g.proc_id)
        return OSSL_MEM_E_INVAL;
    om_arena_lock();
    bool dup = sctx_lookup(ctx) != NULL;
    om_arena_unlock();
    if (dup)
        return OSSL_MEM_E_INVAL;
    long off = find_refcount(ctx, h->size);
    if (off < 0) {
        om_msg("ossl_mem_share_ssl_ctx(%p): cannot find OpenSSL's reference count in the "
               "context (not an SSL_CTX?)", (void *)ctx);
        return OSSL_MEM_E_INVAL;
    }
    /* safe to share: no internal session store, lazy fields filled, the trust store sorted */
    SSL_CTX_set_session_cache_mode(ctx, SSL_CTX_get_session_cache_mode(ctx) |
                                            SSL_SESS_CACHE_NO_INTERNAL);
    if (om_g.opt.shared_prepare && !fill_lazy(ctx, h->flags))
        return OSSL_MEM_E_SCOPE;
    om_arena_lock();
    struct om_sctx *e = NULL;
    for (int i = 0; i < OM_MAXCTX && !e; i++)
        if (om_g.arena->ctxs[i].state == OM_SCTX_FREE)
            e = &om_g.arena->ctxs[i];
    if (e) {
        memset(e, 0, sizeof *e);
        e->ctx = ctx;
        e->set = h->flags;
        e->owner_id = om_g.proc_id;
        e->owner_slot = om_g.proc_slot;
        e->refoff = (uint32_t)off;
        atomic_fetch_add(refcount_at(e), PIN);
        for (int i = 0; i < OM_MAXPROC; i++)
            if (om_g.arena->procs[i].pid && i != om_g.proc_slot)
                e->holders[i / 64] |= 1ull << (i % 64);
        __atomic_store_n(&e->state, OM_SCTX_ACTIVE, __ATOMIC_RELEASE);
    }
    /*
     * A reload is the moment to collect what earlier generations left: contexts whose last
     * holder went away unreported, and chunks that killed workers' references kept out of
     * OpenSSL's reach (retried here so that a server that reloads stays bounded by itself).
     */
    purge_vanished();
    om_shared_reclaim_locked();
    om_arena_unlock();
    return e ? 0 : OSSL_MEM_E_LIMIT;
}

/* ------------------------------------------------------------------ */
/* Destruction and reclamation                                         */
/* ------------------------------------------------------------------ */

/* Live arena chunks of one set, in address order, with a mark each. */
struct set_chunks {
    struct om_chunk **h;
    uint8_t *mark;
    size_t n, cap;
    uint8_t set;
    size_t *stack;          /* indices to scan */
    size_t sp;
    uint64_t *buf;          /* SCAN_BUF bytes for scan_copy(), inside the skipped mapping */
};

static void set_collect(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct set_chunks *s = arg;
    if (h->state != OM_ST_LIVE || h->flags != s->set)
        return;
    if (s->h && s->n < s->cap)
        s->h[s->n] = h;
    s->n++;
}

/* Index of the set chunk whose user area holds address <w>, or -1. */
static long set_find(const struct set_chunks *s, uintptr_t w)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((uintptr_t)(s->h[mid] + 1) <= w)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const struct om_chunk *h = s->h[lo - 1];
    size_t len = h->size == UINT32_MAX ? 0 : h->size;
    return w < (uintptr_t)(h + 1) + (len ? len : 1) ? (long)(lo - 1) : -1;
}

/* Marks every set chunk that a word of [p, p + len) points into. */
static void scan_words(struct set_chunks *s, const void *p, size_t len)
{
    const uintptr_t *q = (const uintptr_t *)(((uintptr_t)p + 7) & ~(uintptr_t)7);
    const uintptr_t *end = (const uintptr_t *)(((uintptr_t)p + len) & ~(uintptr_t)7);
    uintptr_t lo = (uintptr_t)om_g.arena_lo, span = (uintptr_t)(om_g.arena_hi - om_g.arena_lo);
    for (; q < end; q++) {
        uintptr_t w = *(volatile const uintptr_t *)q;
        if (w - lo >= span)
            continue;
        long i = set_find(s, w);
        if (i >= 0 && !s->mark[i]) {
            s->mark[i] = 1;
            s->stack[s->sp++] = (size_t)i;
        }
    }
}

/* Roots in the arena: live chunks that are not of the set. */
static void scan_other_shared(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct set_chunks *s = arg;
    if (h->state == OM_ST_LIVE && h->flags != s->set)
        scan_words(s, om_user(h), h->size == UINT32_MAX ? usable : h->size);
}

/* Roots in the private pools: live chunks (freed ones hold nothing that counts). */
static void scan_private(struct om_chunk *h, size_t usable, void *arg)
{
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if ((uint8_t)(w1 >> 32) == OM_ST_LIVE && om_hdr_valid(h, w0, w1))
        scan_words(arg, h + 1, h->size == UINT32_MAX ? usable : h->size);
}

#define SCAN_MAX_MAPPING ((uintptr_t)16 << 30) /* larger: sanitizer shadows, reservations */
#define SCAN_BUF 65536

/*
 * Scans [a, b) of this process through process_vm_readv(2) into a buffer:
 * a page that cannot be read (a guard page, a range unmapped meanwhile by
 * another thread, a sanitizer's protected shadow) is skipped instead of
 * faulting.
 */
static void scan_copy(struct set_chunks *s, uintptr_t a, uintptr_t b)
{
    uint64_t *buf = s->buf;
    pid_t self = getpid();
    while (a < b) {
        size_t n = b - a < SCAN_BUF ? b - a : SCAN_BUF;
        struct iovec local = {buf, n}, remote = {(void *)a, n};
        ssize_t got = process_vm_readv(self, &local, 1, &remote, 1, 0);
        if (got <= 0) {
            a = (a & ~(uintptr_t)4095) + 4096; /* the first page failed: skip it */
            continue;
        }
        scan_words(s, buf, (size_t)got & ~(size_t)7);
        a += (uintptr_t)got;
    }
}

/*
 * Roots in this process: the live chunks of our private pools, and every
 * other readable and writable mapping (data segments, heaps, stacks from
 * the current frame up, other shared mappings) except the arena (scanned
 * chunk by chunk), our own arrays, and mappings above 16 GiB, which are
 * reservations such as a sanitizer's shadow memory, not data.
 */
static void scan_process(struct set_chunks *s, const void *skip_lo, const void *skip_hi)
{
    om_pool_walk(scan_private, s);
    om_large_walk(scan_private, s);
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[512];
    uintptr_t alo = (uintptr_t)om_g.arena, ahi = alo + om_g.arena->map_size;
    uintptr_t rlo = (uintptr_t)om_g.region, rhi = rlo + om_g.region_size;
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0); /* below it: dead frames */
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perm[5];
        if (sscanf(line, "%lx-%lx %4s", &a, &b, perm) != 3 || perm[0] != 'r' || perm[1] != 'w')
            continue;
        if (strstr(line, "[vvar]") || strstr(line, "[vsyscall]") || b - a > SCAN_MAX_MAPPING)
            continue;
        if ((a < ahi && b > alo) || (a < rhi && b > rlo) ||
            (a < (uintptr_t)skip_hi && b > (uintptr_t)skip_lo))
            continue;
        if (sp >= a && sp < b)
            a = sp & ~(uintptr_t)7;
        scan_copy(s, a, b);
    }
    fclose(f);
}

/*
 * Frees the live chunks of set <set> that nothing else references. They
 * are what a destroyed context leaves behind when OpenSSL's reference
 * counts in the arena were raised by workers that died without lowering
 * them (certificates, keys). Conservative: a chunk any word of this
 * process's writable memory or of another live shared chunk points into
 * is kept, with whatever it points to, and the set is left pending: later
 * reclamations try again. Returns the number freed.
 */
static size_t reclaim_set(uint8_t set)
{
    struct set_chunks s = {.set = set};
    om_arena_walk(set_collect, &s);
    if (s.n == 0)
        return 0;
    __atomic_store_n(&om_g.arena->pending[set], om_g.proc_id, __ATOMIC_RELAXED);
    s.cap = s.n + 64;
    size_t bytes = SCAN_BUF + s.cap * (sizeof *s.h + 1 + sizeof *s.stack);
    void *m = om_map(bytes, false);
    if (!m)
        return 0;
    s.buf = m;
    s.h = (struct om_chunk **)((char *)m + SCAN_BUF);
    s.stack = (size_t *)(s.h + s.cap);
    s.mark = (uint8_t *)(s.stack + s.cap);
    s.n = 0;
    om_arena_walk(set_collect, &s);
    if (s.n > s.cap)
        s.n = s.cap;
    scan_process(&s, m, (char *)m + bytes);
    om_arena_walk(scan_other_shared, &s);
    while (s.sp > 0) {
        const struct om_chunk *h = s.h[s.stack[--s.sp]];
        scan_words(&s, h + 1, h->size == UINT32_MAX ? 0 : h->size);
    }
    size_t freed = 0;
    for (size_t i = 0; i < s.n; i++)
        if (!s.mark[i] && s.h[i]->state == OM_ST_LIVE && s.h[i]->flags == set) {
            om_arena_free(s.h[i], OM_SITE_NONE);
            freed++;
        }
    munmap(m, bytes);
    if (freed == s.n)
        __atomic_store_n(&om_g.arena->pending[set], 0, __ATOMIC_RELAXED);
    return freed;
}

/* Whether set <set> has a registered context or is the calling thread's open scope. Lock held. */
static bool set_busy(uint8_t set)
{
    struct om_tc *tc = om_tls_tc;
    if ((uintptr_t)tc > (uintptr_t)OM_TC_DEAD && tc->shared_depth && tc->shared_set == set)
        return true;
    for (int i = 0; i < OM_MAXCTX; i++)
        if (om_g.arena->ctxs[i].state != OM_SCTX_FREE && om_g.arena->ctxs[i].set == set)
            return true;
    return false;
}

/*
 * Destroys registered context <e> (state RETIRED, no holders, owned by this
 * process, already unlinked from the registry by the caller as <copy>):
 * OpenSSL's reference count is set to one and SSL_CTX_free() runs with
 * every shared free performed; then, if no other registered context was
 * built in the same scope, what is left of that scope is reclaimed.
 */
static void destroy(const struct om_sctx *copy)
{
    struct om_tc *tc = om_tc_enter();
    bool orphan = tc->orphan;
    om_tc_leave(tc);
    if (!orphan)
        tc->reclaiming = 1;
    atomic_store((_Atomic int *)((char *)copy->ctx + copy->refoff), 1);
    SSL_CTX_free(copy->ctx);
    if (!orphan)
        tc->reclaiming = 0;
    om_arena_lock();
    bool busy = set_busy(copy->set);
    om_arena_unlock();
    if (!busy)
        atomic_fetch_add(&om_g.shared_reclaimed, reclaim_set(copy->set));
}

/*
 * Destroys every context this process owns that is retired and no longer
 * held. Caller holds the arena lock; it is released and taken again around
 * each destruction. Returns the number destroyed.
 */
int om_shared_reclaim_locked(void)
{
    int n = 0;
    for (int i = 0; i < OM_MAXCTX; i++) {
        struct om_sctx *e = &om_g.arena->ctxs[i];
        if (e->state != OM_SCTX_RETIRED || e->owner_id != om_g.proc_id || !holders_empty(e))
            continue;
        struct om_sctx copy = *e;
        e->state = OM_SCTX_FREE;
        e->ctx = NULL;
        om_arena_unlock();
        destroy(&copy);
        n++;
        om_arena_lock();
    }
    /* sets this process destroyed whose last chunks were still referenced then: try again */
    for (unsigned set = 1; set < 256; set++) {
        if (om_g.arena->pending[set] != om_g.proc_id || set_busy((uint8_t)set))
            continue;
        om_arena_unlock();
        atomic_fetch_add(&om_g.shared_reclaimed, reclaim_set((uint8_t)set));
        om_arena_lock();
    }
    return n;
}

/* Forgets process slots whose process no longer exists (reaped without a report). Lock held. */
static void purge_vanished(void)
{
    for (int i = 0; i < OM_MAXPROC; i++) {
        pid_t pid = om_g.arena->procs[i].pid;
        if (pid && i != om_g.proc_slot && kill(pid, 0) != 0 && errno == ESRCH) {
            holders_clear_slot(i);
            om_g.arena->procs[i].pid = 0;
        }
    }
}

int ossl_mem_retire_ssl_ctx(SSL_CTX *ctx)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    om_arena_lock();
    struct om_sctx *e = sctx_lookup(ctx);
    int rc = 0;
    if (!e || e->state != OM_SCTX_ACTIVE)
        rc = OSSL_MEM_E_UNKNOWN;
    else if (e->owner_id != om_g.proc_id)
        rc = OSSL_MEM_E_NOT_OWNER;
    else {
        e->state = OM_SCTX_RETIRED;
        purge_vanished();
        rc = holders_empty(e);
        om_shared_reclaim_locked();
    }
    om_arena_unlock();
    return rc;
}

int ossl_mem_ssl_ctx_done(SSL_CTX *ctx)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    int slot = om_g.proc_slot;
    uint64_t bit = slot >= 0 ? 1ull << (slot % 64) : 0;
    if (!ctx) {
        /*
         * The common case, a quiescent point with nothing to release: no
         * retired context still counts on this process. Read without the
         * lock: a context retired meanwhile is released at a later point,
         * which RCU allows (only contexts retired before the point must be).
         */
        bool any = false;
        for (int i = 0; i < OM_MAXCTX && !any; i++) {
            const struct om_sctx *e = &om_g.arena->ctxs[i];
            any = __atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == OM_SCTX_RETIRED &&
                  ((slot >= 0 && (__atomic_load_n(&e->holders[slot / 64], __ATOMIC_RELAXED) &
                                  bit)) ||
                   __atomic_load_n(&e->owner_id, __ATOMIC_RELAXED) == om_g.proc_id);
        }
        /* and no set of this process waits for a retry of its reclamation */
        for (unsigned set = 1; set < 256 && !any; set++)
            any = __atomic_load_n(&om_g.arena->pending[set], __ATOMIC_RELAXED) == om_g.proc_id;
        if (!any)
            return 0;
    }
    om_arena_lock();
    int rc = 0;
    if (!ctx) {
        /* a quiescent state: done with every context retired so far */
        for (int i = 0; i < OM_MAXCTX && slot >= 0; i++)
            if (om_g.arena->ctxs[i].state == OM_SCTX_RETIRED)
                om_g.arena->ctxs[i].holders[slot / 64] &= ~bit;
    } else {
        struct om_sctx *e = sctx_lookup(ctx);
        if (!e)
            rc = OSSL_MEM_E_UNKNOWN;
        else if (slot >= 0)
            e->holders[slot / 64] &= ~bit;
    }
    om_shared_reclaim_locked();
    om_arena_unlock();
    return rc;
}

int ossl_mem_worker_exited(pid_t pid)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    if (pid <= 0 || pid == om_g.my_pid)
        return OSSL_MEM_E_INVAL;
    om_arena_lock();
    for (int i = 0; i < OM_MAXPROC; i++)
        if (om_g.arena->procs[i].pid == pid) {
            holders_clear_slot(i);
            om_g.arena->procs[i].pid = 0;
        }
    om_shared_reclaim_locked();
    om_arena_unlock();
    return 0;
}

int ossl_mem_reclaim(void)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    om_arena_lock();
    purge_vanished();
    int n = om_shared_reclaim_locked();
    om_arena_unlock();
    return n;
}

/*
 * Fork, child side: the child may use every context that is still being
 * handed out (registered, not retired): it becomes one of their holders.
 */
void om_shared_fork_child(void)
{
    if (!om_g.arena || om_g.proc_slot < 0)
        return;
    om_arena_lock();
    for (int i = 0; i < OM_MAXCTX; i++)
        if (om_g.arena->ctxs[i].state == OM_SCTX_ACTIVE)
            om_g.arena->ctxs[i].holders[om_g.proc_slot / 64] |= 1ull << (om_g.proc_slot % 64);
    om_arena_unlock();
}

/*
 * atexit, after OpenSSL's own cleanup: a forked process that leaves through
 * exit() uses no shared context any more; it gives up its slot so that its
 * parent does not have to report it.
 */
void om_shared_exit(void)
{
    if (!om_g.arena || om_g.proc_slot < 0 || om_g.proc_id == 1)
        return;
    om_arena_lock();
    if (om_g.arena->procs[om_g.proc_slot].pid == om_g.my_pid) {
        holders_clear_slot(om_g.proc_slot);
        om_g.arena->procs[om_g.proc_slot].pid = 0;
    }
    om_arena_unlock();
}
