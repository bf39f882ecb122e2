/* prefork_server.c - example pre-fork TLS server: one SSL_CTX in ossl_mem's shared arena, N workers, reload on SIGHUP. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

static const char usage[] =
    "usage: ossl-mem-server [--port N] [--workers N] [--cert FILE --key FILE --ca FILE]\n"
    "                       [--write-pki DIR] [--port-file FILE] [--max-requests N] [--help]\n"
    "Pre-fork TLS server on 127.0.0.1 under ossl_mem (options from OSSL_MEM_OPTIONS). The master\n"
    "builds the server SSL_CTX in ossl_mem's shared arena and forks workers that serve HTTP/1.x\n"
    "over TLS 1.2+ with mandatory client certificates; each reply names the worker, the client\n"
    "certificate's CN and the context generation.\n"
    "  --port N          port to listen on (default 0: pick a free one and print it)\n"
    "  --workers N       worker processes (default 4)\n"
    "  --cert/--key FILE server certificate and key (PEM); --ca FILE: CA client certificates\n"
    "                    must chain to; all three or none (none: make a PKI in memory)\n"
    "  --write-pki DIR   with the in-memory PKI, write ca.pem, server.pem/.key, client.pem/.key\n"
    "  --port-file FILE  write the port to FILE once the workers run\n"
    "  --max-requests N  a worker exits after N requests and is replaced (default 0: never)\n"
    "Signals to the master: SIGHUP rebuilds the context (files are read again), SIGUSR1 prints\n"
    "memory figures (master and each worker), SIGTERM/SIGINT stop the workers, print ossl_mem's\n"
    "report and exit 0 if ossl_mem_check() found no problem.\n";

#define MAX_WORKERS 256

/*
 * What the master publishes to its workers, in an anonymous MAP_SHARED page made before the first
 * fork: the current generation and its context (in ctx[gen & 1]). The master writes the context,
 * then the generation (release); a worker reads the generation (acquire), then the context.
 * The master publishes a new context before it retires the old one, and a worker passes a
 * quiescent point (ossl_mem_ssl_ctx_done(NULL)) before each read, between connections: so a
 * context is destroyed only after every worker has moved past it (the RCU rule).
 */
struct publication {
    _Atomic uint64_t gen;               /* generation of the current context */
    _Atomic(SSL_CTX *) ctx[2];          /* generation g's context is ctx[g & 1] */
};
/* The page is shared between processes: its atomics must not hide a process-private lock. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
               "lock-free atomics needed in shared memory");

struct worker {
    pid_t pid;          /* 0: slot empty */
    time_t not_before;  /* do not fork a replacement before this time (crash loop brake) */
};

static struct {
    long port;              /* --port */
    long workers;           /* --workers */
    long max_requests;      /* --max-requests, 0 = unlimited */
    const char *cert, *key, *ca;  /* --cert/--key/--ca, or all NULL */
    const char *pki_dir;    /* --write-pki */
    const char *port_file;  /* --port-file */
} opt = { 0, 4, 0, NULL, NULL, NULL, NULL, NULL };

static struct publication *pub;    /* the shared page */
static struct omt_pki mem_pki;     /* in-memory PKI (no --cert), made before the first fork */
static int listen_fd = -1;
static pid_t master_pid;
static int sig_pipe[2] = { -1, -1 };             /* master: handlers write the signal number */
static volatile sig_atomic_t w_stop, w_report;   /* worker: flags set by its handlers */
static const int handled[] = { SIGHUP, SIGUSR1, SIGTERM, SIGINT, SIGCHLD };

/* Parses a number in [min, max]; exits 2 with one line on bad input. */
static long num_arg(const char *o, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || errno || *end || n < min || n > max) {
        fprintf(stderr, "ossl-mem-server: %s needs a number from %ld to %ld, got '%s'\n", o, min,
                max, v ? v : "");
        exit(2);
    }
    return n;
}

/* Returns <v> if it names a readable file; exits 2 with one line otherwise. */
static const char *file_arg(const char *o, const char *v)
{
    if (!v || access(v, R_OK) != 0) {
        fprintf(stderr, "ossl-mem-server: %s: cannot read '%s': %s\n", o, v ? v : "",
                v ? strerror(errno) : "no file name given");
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        } else if (strcmp(a, "--port") == 0) {
            opt.port = num_arg(a, v, 0, 65535), i++;
        } else if (strcmp(a, "--workers") == 0) {
            opt.workers = num_arg(a, v, 1, MAX_WORKERS), i++;
        } else if (strcmp(a, "--max-requests") == 0) {
            opt.max_requests = num_arg(a, v, 0, LONG_MAX), i++;
        } else if (strcmp(a, "--cert") == 0) {
            opt.cert = file_arg(a, v), i++;
        } else if (strcmp(a, "--key") == 0) {
            opt.key = file_arg(a, v), i++;
        } else if (strcmp(a, "--ca") == 0) {
            opt.ca = file_arg(a, v), i++;
        } else if (strcmp(a, "--write-pki") == 0 && v && *v) {
            opt.pki_dir = v, i++;
        } else if (strcmp(a, "--port-file") == 0 && v && *v) {
            opt.port_file = v, i++;
        } else {
            fprintf(stderr, "ossl-mem-server: bad argument '%s' (try --help)\n", a);
            exit(2);
        }
    }
    if (!opt.cert != !opt.key || !opt.cert != !opt.ca) {
        fprintf(stderr, "ossl-mem-server: --cert, --key and --ca go together\n");
        exit(2);
    }
    if (opt.cert && opt.pki_dir) {
        fprintf(stderr, "ossl-mem-server: --write-pki goes with the in-memory PKI, not --cert\n");
        exit(2);
    }
}

/* Logs <what> with the first OpenSSL error (or errno) and clears the thread's error queue. */
static void log_error(const char *what)
{
    char buf[256];
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    else
        snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "connection closed by the peer");
    fprintf(stderr, "ossl-mem-server[%ld]: %s: %s\n", (long)getpid(), what, buf);
    ERR_clear_error();
}

/* Logs a failed ossl_mem call <fn> with its error <rc> (and the pid: workers log too). */
static void api_error(const char *fn, int rc)
{
    fprintf(stderr, "ossl-mem-server[%ld]: %s: %s\n", (long)getpid(), fn, ossl_mem_strerror(rc));
}

/* A server context for <pki>: TLS 1.2+, client certificate required and verified against the CA. */
static SSL_CTX *server_ctx(const struct omt_pki *pki)
{
    static const unsigned char sid_ctx[] = "ossl-mem-server";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1
        && SSL_CTX_use_certificate(ctx, pki->srv_cert) == 1
        && SSL_CTX_use_PrivateKey(ctx, pki->srv_key) == 1
        && SSL_CTX_check_private_key(ctx) == 1
        && X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), pki->ca_cert) == 1
        && SSL_CTX_add_client_CA(ctx, pki->ca_cert) == 1
        && SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1) == 1) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        return ctx;
    }
    SSL_CTX_free(ctx);
    return NULL;
}

/*
 * Master: builds a server context in a shared scope and registers it with ossl_mem. With --cert
 * the files are read inside the scope, so certificate and key live in the arena with the context
 * (objects read privately after the workers forked would be invisible to them). The in-memory PKI
 * was made before the first fork: every worker, replacements included, sees it at the same
 * address. Returns the registered context, or NULL after one line on stderr.
 */
static SSL_CTX *make_shared_ctx(void)
{
    struct omt_pki files = { 0 };
    SSL_CTX *ctx = NULL;
    int rc = ossl_mem_shared_begin();
    if (rc != 0) {
        api_error("ossl_mem_shared_begin", rc);
        return NULL;
    }
    if (opt.cert && omt_pki_load(&files, opt.cert, opt.key, opt.ca) != 0)
        log_error("cannot load --cert/--key/--ca");
    else if ((ctx = server_ctx(opt.cert ? &files : &mem_pki)) == NULL)
        log_error("cannot build the server context");
    omt_pki_free(&files); /* the context holds its own references */
    if ((rc = ossl_mem_shared_end()) != 0)
        api_error("ossl_mem_shared_end", rc);
    else if (ctx && (rc = ossl_mem_share_ssl_ctx(ctx)) != 0)
        api_error("ossl_mem_share_ssl_ctx", rc);
    if (rc != 0) {
        SSL_CTX_free(ctx); /* not registered: still ours to free */
        ctx = NULL;
    }
    return ctx;
}

/* Master: makes <ctx> the current context (generation + 1). Returns the new generation. */
static uint64_t publish(SSL_CTX *ctx)
{
    uint64_t g = atomic_load_explicit(&pub->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&pub->ctx[g & 1], ctx, memory_order_relaxed);
    atomic_store_explicit(&pub->gen, g, memory_order_release);
    return g;
}

/* Worker: one line of its memory figures; <what> says why ("stats", "exit"). */
static void stats_line(const char *what, uint64_t gen, long requests)
{
    struct ossl_mem_stats s;
    if (ossl_mem_get_stats(&s) != 0)
        return;
    fprintf(stderr, "worker %ld %s: generation %" PRIu64 ", requests %ld, live_bytes %" PRIu64
            ", live_chunks %" PRIu64 ", inherited_frees %" PRIu64 ", double_frees %" PRIu64
            ", invalid_frees %" PRIu64 "\n", (long)getpid(), what, gen, requests, s.live_bytes,
            s.live_chunks, s.inherited_frees, s.double_frees, s.invalid_frees);
}

/*
 * Worker, between connections (none uses a context now): a quiescent point. ossl_mem may destroy
 * every context the master retired so far, as far as this process is concerned; then the current
 * one is read again, for the next connection.
 */
static void adopt(uint64_t *gen, SSL_CTX **ctx)
{
    int rc = ossl_mem_ssl_ctx_done(NULL);
    if (rc != 0)
        api_error("ossl_mem_ssl_ctx_done", rc);
    *gen = atomic_load_explicit(&pub->gen, memory_order_acquire);
    *ctx = atomic_load_explicit(&pub->ctx[*gen & 1], memory_order_relaxed);
}

/* 1 once <req> holds a whole HTTP request head, or any bytes that do not start like one. */
static int request_complete(const char *req, size_t len)
{
    size_t i = 0;
    while (i < len && req[i] >= 'A' && req[i] <= 'Z')
        i++;
    if (i < len && (i == 0 || req[i] != ' '))
        return 1; /* not "METHOD ": not HTTP, answer what came */
    return strstr(req, "\r\n\r\n") != NULL;
}

/*
 * Worker: one connection on the blocking socket <fd> (owned by the caller): handshake, read the
 * request, answer it, close_notify. Errors are logged in one line; nothing is left allocated.
 */
static void serve(int fd, SSL_CTX *ctx, uint64_t gen)
{
    struct timeval tv = { 10, 0 }; /* a silent client cannot hold the worker for ever */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[4096], cn[256] = "?", resp[512];
    size_t len = 0;
    const char *step = "SSL_new";
    SSL *ssl = SSL_new(ctx);
    errno = 0;
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        goto fail;
    step = "handshake";
    if (SSL_accept(ssl) != 1)
        goto fail;
    step = "read";
    req[0] = '\0';
    while (len < sizeof req - 1 && !request_complete(req, len)) {
        int n = SSL_read(ssl, req + len, (int)(sizeof req - 1 - len));
        if (n <= 0 && len == 0)
            goto fail;
        if (n <= 0)
            break;
        len += (size_t)n;
        req[len] = '\0';
    }
    X509 *peer = SSL_get1_peer_certificate(ssl); /* verified: SSL_VERIFY_FAIL_IF_NO_PEER_CERT */
    if (peer)
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof cn);
    X509_free(peer);
    char body[384];
    int blen = snprintf(body, sizeof body, "hello from worker %ld, client CN %s, generation %"
                        PRIu64 ", %s\n", (long)getpid(), cn, gen, SSL_get_version(ssl));
    int n = snprintf(resp, sizeof resp, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s", blen, body);
    step = "write";
    if (SSL_write(ssl, resp, n) != n)
        goto fail;
    SSL_shutdown(ssl); /* send close_notify; the peer's is not awaited */
    SSL_free(ssl);
    ERR_clear_error();
    return;
fail:
    log_error(step);
    SSL_free(ssl);
}

static void worker_signal(int sig)
{
    if (sig == SIGUSR1)
        w_report = 1;
    else
        w_stop = 1;
}

/*
 * Worker main loop; never returns. Called in the child right after fork with the handled signals
 * blocked; <gen>/<ctx> are the generation and context current when it was forked.
 */
static void worker_main(uint64_t gen, SSL_CTX *ctx)
{
    /* SA_RESTART: a signal does not break the connection being served (poll still returns) */
    struct sigaction sa = { .sa_handler = worker_signal, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    long served = 0;
    while (!w_stop && (opt.max_requests == 0 || served < opt.max_requests)) {
        if (w_report) {
            w_report = 0;
            stats_line("stats", gen, served);
        }
        if (getppid() != master_pid)
            break; /* the master is gone: nobody would reap or reload us */
        adopt(&gen, &ctx);
        /* poll with a timeout: signals and reloads are noticed even when no client comes */
        struct pollfd p = { .fd = listen_fd, .events = POLLIN };
        if (poll(&p, 1, 1000) <= 0)
            continue;
        int fd = accept(listen_fd, NULL, NULL); /* nonblocking listener: a sibling may win */
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                log_error("accept");
            continue;
        }
        adopt(&gen, &ctx);
        serve(fd, ctx, gen);
        close(fd);
        served++;
    }
    stats_line("exit", gen, served);
    exit(0); /* OpenSSL's exit cleanup runs: ossl_mem refuses its frees of shared chunks */
}

static void master_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    (void)!write(sig_pipe[1], &c, 1); /* pipe full: a wake-up is pending anyway */
    errno = saved;
}

/* Master: forks a worker into the empty slot <w>, serving from generation <gen>. */
static void spawn(struct worker *w, uint64_t gen, SSL_CTX *ctx)
{
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaddset(&block, handled[i]);
    sigprocmask(SIG_BLOCK, &block, &old); /* until the child has its own handlers */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        worker_main(gen, ctx);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        fprintf(stderr, "ossl-mem-server: fork: %s\n", strerror(errno));
        w->not_before = time(NULL) + 1;
        return;
    }
    w->pid = pid;
    printf("worker %ld started (generation %" PRIu64 ")\n", (long)pid, gen);
}

/* Master: sends <sig> (if not 0) to every running worker. Returns how many run. */
static long signal_workers(const struct worker *ws, int sig)
{
    long n = 0;
    for (long i = 0; i < opt.workers; i++) {
        if (ws[i].pid && sig)
            kill(ws[i].pid, sig);
        n += ws[i].pid != 0;
    }
    return n;
}

/*
 * Master: reaps every exited worker and tells ossl_mem, which then no longer waits for it to be
 * done with any context. Unless <stopping>, the slot is refilled by the main loop, after a one
 * second pause if the worker died abnormally. Returns the number of workers still running.
 */
static long reap(struct worker *ws, int stopping)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        int rc = ossl_mem_worker_exited(pid);
        if (rc != 0)
            api_error("ossl_mem_worker_exited", rc);
        for (long i = 0; i < opt.workers; i++) {
            if (ws[i].pid != pid)
                continue;
            ws[i].pid = 0;
            int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (!clean)
                ws[i].not_before = time(NULL) + 1;
            if (stopping)
                break;
            if (clean)
                printf("worker %ld exited, replacing it\n", (long)pid);
            else if (WIFSIGNALED(st))
                printf("worker %ld killed by signal %d, replacing it\n", (long)pid, WTERMSIG(st));
            else
                printf("worker %ld exited with status %d, replacing it\n", (long)pid,
                       WEXITSTATUS(st));
        }
    }
    return signal_workers(ws, 0);
}

/* Master: the SIGUSR1 report line (stdout), then the workers print theirs (stderr). */
static void report(const struct worker *ws, uint64_t gen)
{
    struct ossl_mem_stats s;
    long problems = ossl_mem_check(), alive = signal_workers(ws, SIGUSR1);
    ossl_mem_get_stats(&s);
    printf("report: generation %" PRIu64 ", workers %ld, shared_used %" PRIu64
           ", shared_live_chunks %" PRIu64 ", shared_contexts %" PRIu64 ", live_bytes %" PRIu64
           ", inherited_frees %" PRIu64 ", double_frees %" PRIu64 ", invalid_frees %" PRIu64
           ", check %ld\n", gen, alive, s.shared_used, s.shared_live_chunks, s.shared_contexts,
           s.live_bytes, s.inherited_frees, s.double_frees, s.invalid_frees, problems);
}

/*
 * Master, on SIGHUP: builds and publishes a new context, then retires the old one: from then on
 * ossl_mem owns it and destroys it once no worker may hold it. On failure nothing changes.
 */
static void reload(SSL_CTX **ctx, uint64_t *gen)
{
    SSL_CTX *old = *ctx, *fresh = make_shared_ctx();
    if (!fresh) {
        fprintf(stderr, "ossl-mem-server: reload failed, keeping generation %" PRIu64 "\n", *gen);
        return;
    }
    *gen = publish(*ctx = fresh);
    int rc = ossl_mem_retire_ssl_ctx(old);
    if (rc < 0)
        api_error("ossl_mem_retire_ssl_ctx", rc);
    printf("reload: generation %" PRIu64 "\n", *gen);
}

/* Master: listening socket on 127.0.0.1:<port>, nonblocking (workers race for connections). */
static int listen_on(long port, long *bound)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    socklen_t alen = sizeof a;
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0
        || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0
        || getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        fprintf(stderr, "ossl-mem-server: cannot listen on 127.0.0.1:%ld: %s\n", port,
                strerror(errno));
        exit(1);
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

/* Writes <port> to <path> through a temporary file, so a reader never sees half of it. */
static void write_port_file(const char *path, long port)
{
    char tmp[4096];
    FILE *f = NULL;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp
        || (f = fopen(tmp, "w")) == NULL || fprintf(f, "%ld\n", port) < 0 || fclose(f) != 0
        || rename(tmp, path) != 0) {
        fprintf(stderr, "ossl-mem-server: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    /* 1. Install before anything touches OpenSSL. */
    int rc = ossl_mem_init(NULL);
    if (rc != 0) {
        fprintf(stderr, "ossl-mem-server: ossl_mem_init: %s\n", ossl_mem_strerror(rc));
        return 1;
    }
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN); /* a vanished client is an error on its connection, not our death */
    master_pid = getpid();

    /* 2. Certificates: files (read in each shared scope) or a PKI made now, before any fork. */
    if (!opt.cert) {
        if (omt_pki_make(&mem_pki, OMT_KEY_EC) != 0) {
            log_error("cannot make the in-memory PKI");
            return 1;
        }
        if (opt.pki_dir && omt_pki_write_pem(&mem_pki, opt.pki_dir) != 0) {
            fprintf(stderr, "ossl-mem-server: cannot write the PKI into %s\n", opt.pki_dir);
            return 1;
        }
    }

    /* 3. Socket, publication page, signals, then the first shared context. */
    long port;
    listen_fd = listen_on(opt.port, &port);
    pub = mmap(NULL, sizeof *pub, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (pub == MAP_FAILED || pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        fprintf(stderr, "ossl-mem-server: cannot set up: %s\n", strerror(errno));
        return 1;
    }
    struct sigaction sa = { .sa_handler = master_signal, .sa_flags = SA_RESTART | SA_NOCLDSTOP };
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof handled / sizeof handled[0]; i++)
        sigaction(handled[i], &sa, NULL);
    SSL_CTX *ctx = make_shared_ctx();
    if (!ctx)
        return 1;
    uint64_t gen = publish(ctx);

    /* 4. Workers, then serve signals until told to stop. */
    struct worker ws[MAX_WORKERS] = { { 0 } };
    for (long i = 0; i < opt.workers; i++)
        spawn(&ws[i], gen, ctx);
    printf("listening on 127.0.0.1:%ld, %ld workers, generation %" PRIu64 "\n", port,
           opt.workers, gen);
    if (opt.port_file)
        write_port_file(opt.port_file, port);
    int stopping = 0;
    time_t deadline = 0;
    for (;;) {
        struct pollfd p = { .fd = sig_pipe[0], .events = POLLIN };
        poll(&p, 1, stopping ? 200 : 1000);
        unsigned char sigs[64];
        ssize_t n = read(sig_pipe[0], sigs, sizeof sigs);
        for (ssize_t i = 0; i < n; i++) {
            if (sigs[i] == SIGHUP && !stopping) {
                reload(&ctx, &gen);
            } else if (sigs[i] == SIGUSR1) {
                report(ws, gen);
            } else if ((sigs[i] == SIGTERM || sigs[i] == SIGINT) && !stopping) {
                stopping = 1;
                deadline = time(NULL) + 20; /* then SIGKILL: a stuck worker must not block us */
                printf("stopping: waiting for the workers\n");
                signal_workers(ws, SIGTERM);
            }
        }
        long alive = reap(ws, stopping);
        if (stopping && alive == 0)
            break;
        /*
         * A worker that died holding one of the context's locks left it to the next locker
         * (ossl_mem recovers it), but what the lock protected may be half-changed: serve from a
         * fresh context, as for a reload.
         */
        if (!stopping && ossl_mem_ssl_ctx_locks_recovered(ctx) > 0) {
            printf("a worker died holding a lock of generation %" PRIu64 ": rebuilding\n", gen);
            reload(&ctx, &gen);
        }
        if (stopping && time(NULL) > deadline) {
            signal_workers(ws, SIGKILL);
            deadline = time(NULL) + 20;
        }
        if ((rc = ossl_mem_reclaim()) < 0) /* destroys retired contexts all workers are done with */
            api_error("ossl_mem_reclaim", rc);
        for (long w = 0; w < opt.workers && !stopping; w++)
            if (ws[w].pid == 0 && time(NULL) >= ws[w].not_before)
                spawn(&ws[w], gen, ctx);
    }

    /* 5. Every worker is gone: the current context can go too, then the final report. */
    if ((rc = ossl_mem_retire_ssl_ctx(ctx)) < 0)
        api_error("ossl_mem_retire_ssl_ctx", rc);
    ossl_mem_reclaim();
    omt_pki_free(&mem_pki);
    close(listen_fd);
    long problems = ossl_mem_check();
    struct ossl_mem_stats s;
    ossl_mem_get_stats(&s);
    ossl_mem_report(stderr, OSSL_MEM_REPORT_TEXT);
    printf("final: generation %" PRIu64 ", shared_used %" PRIu64 ", shared_live_chunks %" PRIu64
           ", shared_contexts %" PRIu64 ", inherited_frees %" PRIu64 ", double_frees %" PRIu64
           ", invalid_frees %" PRIu64 ", check %ld\n", gen, s.shared_used, s.shared_live_chunks,
           s.shared_contexts, s.inherited_frees, s.double_frees, s.invalid_frees, problems);
    return problems == 0 ? 0 : 1;
}
