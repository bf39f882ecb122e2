/* omt.h - ossl_mem test utilities: in-memory PKI, TLS contexts and verified TLS handshakes. */
#ifndef OMT_H
#define OMT_H

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Thread safety: the library keeps no global mutable state; every function may
 * be called concurrently from several threads as long as each call works on its
 * own omt_pki / omt_result (SSL_CTX objects may be shared, OpenSSL makes them
 * thread-safe). Failures leave details in the calling thread's OpenSSL error
 * queue only where documented; the handshake functions clear it.
 *
 * The socket-based handshakes block SIGPIPE in the calling thread while they
 * run (a vanished peer gives an error, not a dead process) and restore the
 * signal mask afterwards.
 */

enum omt_key { OMT_KEY_EC = 0 /* P-256 */, OMT_KEY_RSA = 1 /* RSA-2048 */ };

struct omt_pki {
    EVP_PKEY *ca_key;   /* CA private key (NULL after omt_pki_load) */
    X509 *ca_cert;      /* self-signed CA, CA:TRUE, keyCertSign; the trust anchor */
    EVP_PKEY *srv_key;  /* server private key */
    X509 *srv_cert;     /* CN=localhost, SAN DNS:localhost + IP:127.0.0.1, serverAuth */
    EVP_PKEY *cli_key;  /* client private key */
    X509 *cli_cert;     /* CN=omt-client, clientAuth */
};

/* Generate a CA plus server and client certificates of key type kt, all in
 * memory (X509v3, random serial, valid now-1h .. now+1d, SHA-256).
 * 0 ok, -1 error (*pki zeroed, OpenSSL error queue left for the caller). */
int omt_pki_make(struct omt_pki *pki, enum omt_key kt);

/* Make a client certificate+key issued by a different, freshly made CA:
 * rogue->ca_* is that other CA, rogue->cli_* the client, rogue->srv_* NULL.
 * To present it to a server of `good`, build the client context from a copy
 * of *good whose cli_key/cli_cert are replaced by rogue's. 0 ok, -1 error. */
int omt_pki_make_rogue_client(const struct omt_pki *good, enum omt_key kt,
                              struct omt_pki *rogue);

/* Load PEM files: the cert/key pair is used for both the server and the client
 * role (reference counted), the first certificate of ca_file is the trust
 * anchor; ca_key stays NULL. Encrypted keys are refused (no prompt).
 * 0 ok, -1 error (*pki zeroed, OpenSSL error queue left for the caller). */
int omt_pki_load(struct omt_pki *pki, const char *cert_file,
                 const char *key_file, const char *ca_file);

/* Write ca.pem, server.pem, server.key, client.pem, client.key into the
 * existing directory dir (keys unencrypted, mode 0600); files whose objects are
 * NULL in *pki are skipped. 0 ok, -1 error. */
int omt_pki_write_pem(const struct omt_pki *pki, const char *dir);

/* Free everything in *pki (NULL members allowed) and zero it. */
void omt_pki_free(struct omt_pki *pki);

enum omt_verify {
    OMT_VERIFY_MUTUAL = 0, /* both ends present and verify certificates */
    OMT_VERIFY_SERVER = 1, /* only the client verifies the server */
    OMT_VERIFY_NONE = 2    /* nobody verifies (server still has a cert) */
};

struct omt_opts {
    int tls_version;         /* TLS1_3_VERSION (default if 0) or TLS1_2_VERSION; pins min and max */
    enum omt_verify verify;  /* who verifies whom */
};

/* Server context: srv cert+key, CA in the store; MUTUAL additionally sets
 * SSL_VERIFY_PEER|SSL_VERIFY_FAIL_IF_NO_PEER_CERT and the client CA list.
 * The session cache is off so every handshake is a full one.
 * o may be NULL (TLS 1.3, mutual). NULL on error. */
SSL_CTX *omt_server_ctx(const struct omt_pki *pki, const struct omt_opts *o);

/* Client context: cli cert+key (MUTUAL only), CA in the store, SSL_VERIFY_PEER
 * unless NONE. Client connections get SNI "localhost" and, when verifying,
 * host name verification against "localhost". o may be NULL. NULL on error. */
SSL_CTX *omt_client_ctx(const struct omt_pki *pki, const struct omt_opts *o);

struct omt_result {
    int ok;              /* 1 if the whole exchange succeeded and was verified */
    long verify_result;  /* X509_V_OK, or the failing side's SSL_get_verify_result() */
    char err[256];       /* first failure: "side: step: reason", "" when ok */
    int peer_gone;       /* 1 if that first failure was the peer vanishing: an EOF without
                            close_notify, or a reset or broken pipe on the socket, and no TLS
                            alert (what a peer process killed mid-exchange looks like) */
};

/*
 * Each handshake function runs one full handshake; then the client writes 64
 * bytes, the server reads and echoes them, the client checks them and both ends
 * do a bidirectional SSL_shutdown. An end whose context verifies the peer must
 * see its peer's certificate and X509_V_OK; the client always needs the
 * server's certificate. Everything is freed on every path (also when OpenSSL
 * allocations fail) and the calling thread's OpenSSL error queue is cleared
 * before returning. r may be NULL. Return 0 ok, -1 failure (details in r).
 */

/* Both ends in this thread over a BIO pair; fails with "stalled" if neither
 * end can move and with "timeout" after 10 s. */
int omt_handshake_bio(SSL_CTX *srv, SSL_CTX *cli, struct omt_result *r);

/* Both ends in this thread over a nonblocking AF_UNIX socketpair, poll-driven,
 * failing with "timeout" after 10 s. */
int omt_handshake_socketpair(SSL_CTX *srv, SSL_CTX *cli, struct omt_result *r);

/* Only the server (resp. client) end, on a connected fd owned by the caller
 * (not closed). With a blocking fd the calls block as long as the peer does;
 * with a nonblocking fd waits are poll-driven and bounded by 10 s. */
int omt_handshake_fd_server(SSL_CTX *srv, int fd, struct omt_result *r);
int omt_handshake_fd_client(SSL_CTX *cli, int fd, struct omt_result *r);

#ifdef __cplusplus
}
#endif

#endif /* OMT_H */
