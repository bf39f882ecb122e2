/*
 * ossl-mem-stress.c - the certificate-verification stress tool: a pre-fork
 * TLS setup under load (workers, full verification on both sides, reloads,
 * killed workers) with a report that says whether memory stayed sound.
 *
 * The master makes (or loads) the certificates, installs ossl_mem (unless
 * --mode glibc), builds the server context (shared mode: once, in the
 * arena, for every worker) and forks the workers. Each worker serves
 * handshakes: with --transport bio both ends run in the worker over a BIO
 * pair; with --transport socket the workers accept on one loopback
 * listening socket and one client process per worker connects. Workers
 * write their counts and memory figures into a shared control page; the
 * master prints progress, reloads the context, kills workers at safe
 * points and replaces them, and at the end collects every worker's
 * ossl_mem_check() and safety counters into the report.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

static const char usage[] =
    "usage: ossl-mem-stress [OPTIONS]\n"
    "Stress a pre-fork TLS setup with full certificate verification and report whether memory\n"
    "stayed sound. The master forks N workers that run TLS handshakes until the budget is spent;\n"
    "optionally it rebuilds and republishes the server context (reload) and SIGKILLs workers and\n"
    "replaces them while they serve.\n"
    "  --workers N          worker processes, 1..256 (default 4)\n"
    "  --handshakes N       total handshakes (default 2000), or\n"
    "  --seconds S          run for S seconds instead\n"
    "  --key ec|rsa         key type of the generated certificates: P-256 (default) or RSA-2048\n"
    "  --tls 1.2|1.3        protocol version (default 1.3)\n"
    "  --verify mutual|server|none\n"
    "                       who verifies whom (default mutual: the server requires and verifies\n"
    "                       a client certificate, SSL_VERIFY_PEER|SSL_VERIFY_FAIL_IF_NO_PEER_CERT)\n"
    "  --mode shared|private|glibc\n"
    "                       shared (default): one server context built by the master in ossl_mem's\n"
    "                       shared arena; private: ossl_mem, each worker builds its own context;\n"
    "                       glibc: plain OpenSSL, ossl_mem never installed (the baseline)\n"
    "  --transport bio|socket\n"
    "                       bio (default): both ends in the worker over a BIO pair; socket: real\n"
    "                       loopback TCP, one client process per worker\n"
    "  --reload-every S     rebuild and republish the server context every S seconds\n"
    "  --kill-every S       every S seconds SIGKILL a random worker at a safe point (between\n"
    "                       handshakes), reap it and fork a replacement\n"
    "  --options STR        ossl_mem options for master and workers (see OSSL_MEM_OPTIONS=help)\n"
    "  --cert FILE --key-file FILE --ca FILE\n"
    "                       the server's certificate and key and the CA both sides trust, instead\n"
    "                       of generated ones; --client-cert FILE --client-key FILE give the\n"
    "                       client's pair (default: the server's pair, which then needs clientAuth)\n"
    "  --wrong-client-ca    the client presents a certificate from another CA (must fail)\n"
    "  --json FILE          write the final report as JSON\n"
    "  --timeline FILE      write one CSV row per second: handshakes, failures, shared bytes and\n"
    "                       each worker's private bytes\n"
    "  --plot FILE          draw memory and handshake rate over time as SVG (needs gnuplot)\n"
    "  --seed N             seed of the random choices (default 1)\n"
    "  --help               this text\n"
    "Exit status: 0 if every handshake verified and no unexpected safety event happened, 1\n"
    "otherwise (the report names the first failure), 2 for bad usage.\n";

#define MAX_WORKERS 256

enum mode { M_SHARED, M_PRIVATE, M_GLIBC };
enum transport { T_BIO, T_SOCKET };
static const char *const mode_name[] = {"shared", "private", "glibc"};
static const char *const transport_name[] = {"bio", "socket"};

static struct {
    long workers, handshakes, seconds, reload_every, kill_every, seed;
    enum omt_key key;
    int tls;                    /* TLS1_2_VERSION or TLS1_3_VERSION */
    enum omt_verify verify;
    enum mode mode;
    enum transport transport;
    const char *options, *cert, *key_file, *ca, *client_cert, *client_key;
    const char *json, *timeline, *plot;
    bool wrong_ca;
} opt = {4, 2000, 0, 0, 0, 1, OMT_KEY_EC, TLS1_3_VERSION, OMT_VERIFY_MUTUAL, M_SHARED, T_BIO,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false};

/* A worker's figures in the control page (written by the worker alone). */
struct slot {
    _Atomic pid_t pid;              /* 0: free */
    _Atomic long ok, failed;        /* handshakes */
    _Atomic int state;              /* S_* */
    _Atomic uint64_t live, mapped, peak;    /* private memory */
    _Atomic uint64_t faults[6];     /* double, invalid, inherited, overflow, uaf, corrupt */
    _Atomic long check;             /* ossl_mem_check() at exit, -1 not run */
};
enum { S_RUN = 0, S_PARK_REQ, S_PARKED, S_DONE };

/* The control page: made before the first fork, MAP_SHARED. */
struct control {
    _Atomic long remaining;         /* handshakes left to start (budget mode) */
    _Atomic int stop;               /* 1: finish the current handshake and leave */
    _Atomic uint64_t gen;           /* current context generation */
    _Atomic(SSL_CTX *) ctx[2];      /* shared mode: generation g's context is ctx[g & 1] */
    _Atomic long dead_ok, dead_failed;      /* counts of replaced (killed) workers */
    _Atomic uint64_t dead_faults[6];
    _Atomic int first_set;          /* first failure recorded */
    char first[512];                /* its text */
    struct slot slot[MAX_WORKERS];
};
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2,
               "the control page's atomics must be lock-free to be shared between processes");

static struct control *ctl;
static char pki_dir[64];            /* generated PEM files */
static const char *srv_cert_f, *srv_key_f, *ca_f, *cli_cert_f, *cli_key_f;
static int listen_fd = -1;
static long listen_port;
static pid_t clients[MAX_WORKERS];

/* ------------------------------------------------------------------ */
/* Arguments                                                           */
/* ------------------------------------------------------------------ */

static void __attribute__((noreturn, format(printf, 1, 2))) usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ossl-mem-stress: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (--help lists the options)\n");
    exit(2);
}

static long num_arg(const char *o, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < min || n > max)
        usage_error("%s needs a whole number from %ld to %ld, not '%s'", o, min, max, v);
    return n;
}

static const char *file_arg(const char *o, const char *v)
{
    if (access(v, R_OK) != 0)
        usage_error("%s %s: %s", o, v, strerror(errno));
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"workers", 1, 0, 'w'}, {"handshakes", 1, 0, 'n'}, {"seconds", 1, 0, 's'},
        {"key", 1, 0, 'k'}, {"tls", 1, 0, 't'}, {"verify", 1, 0, 'v'}, {"mode", 1, 0, 'm'},
        {"transport", 1, 0, 'T'}, {"reload-every", 1, 0, 'r'}, {"kill-every", 1, 0, 'K'},
        {"options", 1, 0, 'o'}, {"cert", 1, 0, 'c'}, {"key-file", 1, 0, 'f'}, {"ca", 1, 0, 'a'},
        {"client-cert", 1, 0, 'C'}, {"client-key", 1, 0, 'F'}, {"wrong-client-ca", 0, 0, 'W'},
        {"json", 1, 0, 'j'}, {"timeline", 1, 0, 'l'}, {"plot", 1, 0, 'p'}, {"seed", 1, 0, 'S'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    bool got_n = false;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'w': opt.workers = num_arg("--workers", optarg, 1, MAX_WORKERS); break;
        case 'n': opt.handshakes = num_arg("--handshakes", optarg, 1, LONG_MAX / 2); got_n = true; break;
        case 's': opt.seconds = num_arg("--seconds", optarg, 1, 86400); break;
        case 'r': opt.reload_every = num_arg("--reload-every", optarg, 1, 86400); break;
        case 'K': opt.kill_every = num_arg("--kill-every", optarg, 1, 86400); break;
        case 'S': opt.seed = num_arg("--seed", optarg, 0, LONG_MAX); break;
        case 'k':
            if (strcmp(optarg, "ec") == 0) opt.key = OMT_KEY_EC;
            else if (strcmp(optarg, "rsa") == 0) opt.key = OMT_KEY_RSA;
            else usage_error("--key takes ec or rsa, not '%s'", optarg);
            break;
        case 't':
            if (strcmp(optarg, "1.2") == 0) opt.tls = TLS1_2_VERSION;
            else if (strcmp(optarg, "1.3") == 0) opt.tls = TLS1_3_VERSION;
            else usage_error("--tls takes 1.2 or 1.3, not '%s'", optarg);
            break;
        case 'v':
            if (strcmp(optarg, "mutual") == 0) opt.verify = OMT_VERIFY_MUTUAL;
            else if (strcmp(optarg, "server") == 0) opt.verify = OMT_VERIFY_SERVER;
            else if (strcmp(optarg, "none") == 0) opt.verify = OMT_VERIFY_NONE;
            else usage_error("--verify takes mutual, server or none, not '%s'", optarg);
            break;
        case 'm':
            if (strcmp(optarg, "shared") == 0) opt.mode = M_SHARED;
            else if (strcmp(optarg, "private") == 0) opt.mode = M_PRIVATE;
            else if (strcmp(optarg, "glibc") == 0) opt.mode = M_GLIBC;
            else usage_error("--mode takes shared, private or glibc, not '%s'", optarg);
            break;
        case 'T':
            if (strcmp(optarg, "bio") == 0) opt.transport = T_BIO;
            else if (strcmp(optarg, "socket") == 0) opt.transport = T_SOCKET;
            else usage_error("--transport takes bio or socket, not '%s'", optarg);
            break;
        case 'o': {
            char err[256];
            if (ossl_mem_options_check(optarg, err, sizeof err) != 0)
                usage_error("--options: %s", err);
            opt.options = optarg;
            break;
        }
        case 'c': opt.cert = file_arg("--cert", optarg); break;
        case 'f': opt.key_file = file_arg("--key-file", optarg); break;
        case 'a': opt.ca = file_arg("--ca", optarg); break;
        case 'C': opt.client_cert = file_arg("--client-cert", optarg); break;
        case 'F': opt.client_key = file_arg("--client-key", optarg); break;
        case 'W': opt.wrong_ca = true; break;
        case 'j': opt.json = optarg; break;
        case 'l': opt.timeline = optarg; break;
        case 'p': opt.plot = optarg; break;
        case 'h': fputs(usage, stdout); exit(0);
        default:
            for (const struct option *o = lo; optopt && o->name; o++)
                if (o->val == optopt)
                    usage_error("option --%s needs a value", o->name);
            usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (got_n && opt.seconds)
        usage_error("--handshakes and --seconds exclude each other");
    if ((opt.cert != NULL) != (opt.key_file != NULL) || (opt.cert != NULL) != (opt.ca != NULL))
        usage_error("--cert, --key-file and --ca go together");
    if ((opt.client_cert != NULL) != (opt.client_key != NULL))
        usage_error("--client-cert and --client-key go together");
    if (opt.client_cert && !opt.cert)
        usage_error("--client-cert needs --cert, --key-file and --ca");
    if (opt.wrong_ca && opt.cert)
        usage_error("--wrong-client-ca works with the generated certificates only");
    if (opt.wrong_ca && opt.verify != OMT_VERIFY_MUTUAL)
        usage_error("--wrong-client-ca needs --verify mutual (the server must check the client)");
    if (opt.options && opt.mode == M_GLIBC)
        usage_error("--options has no effect with --mode glibc");
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */
/* ------------------------------------------------------------------ */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record_first(const char *fmt, ...)
{
    int expect = 0;
    if (!atomic_compare_exchange_strong(&ctl->first_set, &expect, 1))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctl->first, sizeof ctl->first, fmt, ap);
    va_end(ap);
}

static const char *openssl_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (!e)
        snprintf(buf, len, "(no OpenSSL error)");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

/* A context of the given side, built from the PEM files (in the current scope's memory). */
static SSL_CTX *build_ctx(bool server)
{
    struct omt_pki p = {0};
    struct omt_opts o = {opt.tls, opt.verify};
    SSL_CTX *ctx = NULL;
    if (server ? omt_pki_load(&p, srv_cert_f, srv_key_f, ca_f) == 0
               : omt_pki_load(&p, cli_cert_f, cli_key_f, ca_f) == 0)
        ctx = server ? omt_server_ctx(&p, &o) : omt_client_ctx(&p, &o);
    if (!ctx) {
        char e[256];
        record_first("cannot build the %s context: %s", server ? "server" : "client",
                     openssl_error(e, sizeof e));
    }
    omt_pki_free(&p); /* the context holds its own references */
    return ctx;
}

/* Master, shared mode: a new server context in the arena, registered. NULL on failure. */
static SSL_CTX *build_shared(void)
{
    int rc = ossl_mem_shared_begin();
    if (rc != 0) {
        record_first("ossl_mem_shared_begin: %s", ossl_mem_strerror(rc));
        return NULL;
    }
    SSL_CTX *ctx = build_ctx(true);
    ossl_mem_shared_end();
    if (ctx && (rc = ossl_mem_share_ssl_ctx(ctx)) != 0) {
        record_first("ossl_mem_share_ssl_ctx: %s", ossl_mem_strerror(rc));
        SSL_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* Master, shared mode: publishes <ctx> as the next generation (context first, then the number). */
static void publish(SSL_CTX *ctx)
{
    uint64_t g = atomic_load(&ctl->gen) + 1;
    atomic_store(&ctl->ctx[g & 1], ctx);
    atomic_store(&ctl->gen, g);
}

/* ------------------------------------------------------------------ */
/* Workers and clients                                                 */
/* ------------------------------------------------------------------ */

static void snapshot(struct slot *s)
{
    if (opt.mode == M_GLIBC) {
        struct mallinfo2 mi = mallinfo2();
        atomic_store(&s->live, mi.uordblks);
        atomic_store(&s->mapped, mi.arena + mi.hblkhd);
    } else {
        struct ossl_mem_stats st;
        if (ossl_mem_get_stats(&st) != 0)
            return;
        atomic_store(&s->live, st.live_bytes);
        atomic_store(&s->mapped, st.private_mapped);
        uint64_t f[6] = {st.double_frees, st.invalid_frees, st.inherited_frees, st.overflows,
                         st.uaf_writes, st.corrupt_headers};
        for (int i = 0; i < 6; i++)
            atomic_store(&s->faults[i], f[i]);
    }
    if (atomic_load(&s->live) > atomic_load(&s->peak))
        atomic_store(&s->peak, atomic_load(&s->live));
}

/* Whether the worker may start one more handshake (budget or time). */
static bool take_one(void)
{
    if (atomic_load(&ctl->stop))
        return false;
    if (opt.seconds)
        return true;
    return atomic_fetch_sub(&ctl->remaining, 1) > 0;
}

/* A worker: serves until the budget is spent or the master says stop. */
static void __attribute__((noreturn)) worker_main(int idx)
{
    struct slot *s = &ctl->slot[idx];
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *cli = opt.transport == T_BIO ? build_ctx(false) : NULL;
    SSL_CTX *own = NULL;        /* private and glibc modes: the worker's server context */
    uint64_t own_gen = 0;
    if (opt.transport == T_BIO && !cli)
        _exit(3);
    double last = 0;
    while (take_one()) {
        /* a safe point: no handshake in progress, no context pointer held */
        if (atomic_load(&s->state) == S_PARK_REQ) {
            atomic_store(&s->state, S_PARKED);
            for (;;)
                pause(); /* the master kills it here */
        }
        SSL_CTX *srv;
        uint64_t g = atomic_load(&ctl->gen);
        if (opt.mode == M_SHARED) {
            srv = atomic_load(&ctl->ctx[g & 1]);
        } else {
            if (!own || own_gen != g) {
                SSL_CTX_free(own);
                own = build_ctx(true);
                own_gen = g;
                if (!own)
                    _exit(3);
            }
            srv = own;
        }
        struct omt_result r;
        int rc;
        if (opt.transport == T_BIO) {
            rc = omt_handshake_bio(srv, cli, &r);
        } else {
            struct pollfd pf = {listen_fd, POLLIN, 0};
            if (poll(&pf, 1, 200) <= 0) {
                if (!opt.seconds)
                    atomic_fetch_add(&ctl->remaining, 1); /* give the turn back */
                goto quiescent;
            }
            int fd = accept(listen_fd, NULL, NULL), one = 1;
            if (fd >= 0) /* small records both ways: no Nagle delay */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (fd < 0) {
                if (!opt.seconds)
                    atomic_fetch_add(&ctl->remaining, 1);
                goto quiescent;
            }
            rc = omt_handshake_fd_server(srv, fd, &r);
            close(fd);
        }
        if (rc == 0) {
            atomic_fetch_add(&s->ok, 1);
        } else {
            atomic_fetch_add(&s->failed, 1);
            /* omt's text names the OpenSSL error and, for a verification, the verify error */
            record_first("worker %d: %s", (int)getpid(), r.err);
        }
    quiescent:
        if (opt.mode == M_SHARED)
            ossl_mem_ssl_ctx_done(NULL);
        if (now() - last > 0.2) {
            snapshot(s);
            last = now();
        }
    }
    SSL_CTX_free(own);
    SSL_CTX_free(cli);
    /* OpenSSL's exit cleanup, now, so that its refused frees of shared chunks are counted */
    OPENSSL_cleanup();
    snapshot(s);
    atomic_store(&s->check, opt.mode == M_GLIBC ? 0 : ossl_mem_check());
    atomic_store(&s->state, S_DONE);
    _exit(0);
}

/* A client process (socket transport): connects and handshakes until told to stop. */
static void __attribute__((noreturn)) client_main(void)
{
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *cli = build_ctx(false);
    if (!cli)
        _exit(3);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (!atomic_load(&ctl->stop)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd >= 0)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            if (fd >= 0)
                close(fd);
            usleep(10000);
            continue;
        }
        struct omt_result r;
        omt_handshake_fd_client(cli, fd, &r); /* the server side counts and judges */
        close(fd);
        /* forked by the master, a client counts as a possible user of the shared contexts:
           it never holds one, so every point of its loop is a quiescent point */
        if (opt.mode == M_SHARED)
            ossl_mem_ssl_ctx_done(NULL);
    }
    SSL_CTX_free(cli);
    _exit(0);
}

static pid_t spawn_worker(int idx)
{
    if (atomic_load(&ctl->stop))
        return 0;
    struct slot *s = &ctl->slot[idx];
    atomic_store(&s->ok, 0);
    atomic_store(&s->failed, 0);
    atomic_store(&s->state, S_RUN);
    atomic_store(&s->check, -1);
    atomic_store(&s->peak, 0);
    for (int i = 0; i < 6; i++)
        atomic_store(&s->faults[i], 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGINT, SIG_IGN); /* the master decides when to stop */
        signal(SIGTERM, SIG_DFL);
        worker_main(idx);
    }
    if (pid > 0)
        atomic_store(&s->pid, pid);
    return pid;
}

/* ------------------------------------------------------------------ */
/* The master                                                          */
/* ------------------------------------------------------------------ */

struct sample {
    double t;
    long ok, failed;
    uint64_t shared;
    uint64_t priv[MAX_WORKERS];
};

static struct {
    long reloads, kills, ok, failed;
    uint64_t shared_peak, priv_peak, faults[6], shared_failed, master_check, check_problems;
    double secs;
    bool watchdog, setup_failed;
} res;

static void totals(long *ok, long *failed)
{
    *ok = atomic_load(&ctl->dead_ok);
    *failed = atomic_load(&ctl->dead_failed);
    for (long i = 0; i < opt.workers; i++) {
        *ok += atomic_load(&ctl->slot[i].ok);
        *failed += atomic_load(&ctl->slot[i].failed);
    }
}

static uint64_t shared_used(void)
{
    struct ossl_mem_stats st;
    if (opt.mode == M_GLIBC || ossl_mem_get_stats(&st) != 0)
        return 0;
    return st.shared_used;
}

static const char *human(uint64_t b, char *buf, size_t len)
{
    if (b >= 10u << 20)
        snprintf(buf, len, "%.1f MiB", b / 1048576.0);
    else
        snprintf(buf, len, "%.0f KiB", b / 1024.0);
    return buf;
}

/* Adds a dead or finished worker's counters to the totals kept for replaced workers. */
static void retire_slot(int idx)
{
    struct slot *s = &ctl->slot[idx];
    atomic_fetch_add(&ctl->dead_ok, atomic_exchange(&s->ok, 0));
    atomic_fetch_add(&ctl->dead_failed, atomic_exchange(&s->failed, 0));
    for (int i = 0; i < 6; i++)
        atomic_fetch_add(&ctl->dead_faults[i], atomic_exchange(&s->faults[i], 0));
    if (atomic_load(&s->peak) > res.priv_peak)
        res.priv_peak = atomic_load(&s->peak);
}

static int slot_of(pid_t pid)
{
    for (long i = 0; i < opt.workers; i++)
        if (atomic_load(&ctl->slot[i].pid) == pid)
            return (int)i;
    return -1;
}

static int running; /* workers the master still waits for */

/* Kills a random running worker at its next safe point and forks its replacement. */
static void kill_one(unsigned *rnd)
{
    int idx = (int)(rand_r(rnd) % (unsigned)opt.workers);
    struct slot *s = &ctl->slot[idx];
    pid_t pid = atomic_load(&s->pid);
    if (pid <= 0 || atomic_load(&s->state) != S_RUN)
        return;
    atomic_store(&s->state, S_PARK_REQ);
    double t0 = now();
    while (atomic_load(&s->state) == S_PARK_REQ && now() - t0 < 10)
        usleep(1000);
    if (atomic_load(&s->state) != S_PARKED)
        return; /* it finished instead */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (opt.mode != M_GLIBC)
        ossl_mem_worker_exited(pid);
    atomic_store(&s->pid, 0);
    retire_slot(idx);
    res.kills++;
    pid_t np = spawn_worker(idx);
    if (np <= 0) {
        if (np < 0)
            record_first("fork: %s", strerror(errno));
        running--; /* no replacement: one worker fewer to wait for */
    }
}

static void reload(SSL_CTX **cur)
{
    if (opt.mode == M_SHARED) {
        SSL_CTX *n = build_shared();
        if (!n)
            return;
        SSL_CTX *old = *cur;
        publish(n);     /* first publish the new one, then retire the old one (RCU) */
        *cur = n;
        ossl_mem_retire_ssl_ctx(old);
    } else {
        atomic_fetch_add(&ctl->gen, 1); /* the workers rebuild their own */
    }
    res.reloads++;
}

static void progress(double t, long ok, long failed, double rate, bool tty, bool final)
{
    char a[32], b[32];
    uint64_t priv = 0;
    for (long i = 0; i < opt.workers; i++)
        priv += atomic_load(&ctl->slot[i].live);
    fprintf(stderr, "%s[%5.1fs] %ld handshakes (%.0f/s), %ld failed, shared %s, private %s%s",
            tty ? "\r" : "", t, ok, rate, failed,
            opt.mode == M_GLIBC ? "n/a" : human(shared_used(), a, sizeof a),
            human(priv, b, sizeof b), tty && !final ? "   " : "\n");
    fflush(stderr);
}

static int make_listener(void)
{
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(listen_fd, 256) != 0 || getsockname(listen_fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    listen_port = ntohs(a.sin_port);
    return 0;
}

/* Generates the PKI and writes it (and, with --wrong-client-ca, the rogue client) as PEM. */
static int make_pki(void)
{
    struct omt_pki pki, rogue;
    snprintf(pki_dir, sizeof pki_dir, "/tmp/ossl-mem-stress.XXXXXX");
    if (!mkdtemp(pki_dir) || omt_pki_make(&pki, opt.key) != 0 ||
        omt_pki_write_pem(&pki, pki_dir) != 0)
        return -1;
    static char f[5][96];
    snprintf(f[0], sizeof f[0], "%s/server.pem", pki_dir);
    snprintf(f[1], sizeof f[1], "%s/server.key", pki_dir);
    snprintf(f[2], sizeof f[2], "%s/ca.pem", pki_dir);
    snprintf(f[3], sizeof f[3], "%s/client.pem", pki_dir);
    snprintf(f[4], sizeof f[4], "%s/client.key", pki_dir);
    srv_cert_f = f[0], srv_key_f = f[1], ca_f = f[2], cli_cert_f = f[3], cli_key_f = f[4];
    if (opt.wrong_ca) {
        /* the rogue client's pair replaces client.pem/.key; the trust anchor stays the good CA */
        struct omt_pki only = {0};
        if (omt_pki_make_rogue_client(&pki, opt.key, &rogue) != 0)
            return -1;
        only.ca_cert = pki.ca_cert, only.cli_cert = rogue.cli_cert, only.cli_key = rogue.cli_key;
        int rc = omt_pki_write_pem(&only, pki_dir);
        omt_pki_free(&rogue);
        if (rc != 0)
            return -1;
    }
    omt_pki_free(&pki);
    return 0;
}

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    stop_signal = sig;
}

static void remove_pki(void)
{
    if (!pki_dir[0])
        return;
    static const char *const names[] = {"ca.pem", "server.pem", "server.key", "client.pem",
                                         "client.key"};
    char p[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", pki_dir, names[i]);
        unlink(p);
    }
    rmdir(pki_dir);
}

static void write_json(const char *verdict, double rate)
{
    FILE *f = fopen(opt.json, "w");
    if (!f) {
        fprintf(stderr, "ossl-mem-stress: --json %s: %s\n", opt.json, strerror(errno));
        return;
    }
    fprintf(f, "{\n  \"config\": {\"mode\": \"%s\", \"transport\": \"%s\", \"workers\": %ld, "
            "\"key\": \"%s\", \"tls\": \"%s\", \"verify\": \"%s\", \"reload_every\": %ld, "
            "\"kill_every\": %ld, \"options\": \"%s\", \"seed\": %ld},\n",
            mode_name[opt.mode], transport_name[opt.transport], opt.workers,
            opt.key == OMT_KEY_EC ? "ec" : "rsa", opt.tls == TLS1_3_VERSION ? "1.3" : "1.2",
            opt.verify == OMT_VERIFY_MUTUAL ? "mutual"
            : opt.verify == OMT_VERIFY_SERVER ? "server" : "none",
            opt.reload_every, opt.kill_every, opt.options ? opt.options : "", opt.seed);
    fprintf(f, "  \"handshakes_ok\": %ld,\n  \"handshakes_failed\": %ld,\n  \"seconds\": %.3f,\n"
            "  \"rate_total\": %.1f,\n  \"rate_per_worker\": %.1f,\n", res.ok, res.failed,
            res.secs, rate, rate / (double)opt.workers);
    fprintf(f, "  \"reloads\": %ld,\n  \"kills\": %ld,\n", res.reloads, res.kills);
    fprintf(f, "  \"memory\": {\"shared_peak\": %" PRIu64 ", \"private_peak_per_worker\": %" PRIu64
            "},\n", res.shared_peak, res.priv_peak);
    static const char *const fname[6] = {"double_frees", "invalid_frees", "inherited_frees",
                                         "overflows", "uaf_writes", "corrupt_headers"};
    /* without ossl_mem (glibc mode) nobody counts: null, not 0 */
    bool na = opt.mode == M_GLIBC;
    char v[32];
    fprintf(f, "  \"safety\": {");
    for (int i = 0; i < 6; i++) {
        snprintf(v, sizeof v, "%" PRIu64, res.faults[i]);
        fprintf(f, "\"%s\": %s, ", fname[i], na ? "null" : v);
    }
    snprintf(v, sizeof v, "%" PRIu64, res.shared_failed);
    fprintf(f, "\"shared_failed\": %s, ", na ? "null" : v);
    snprintf(v, sizeof v, "%" PRIu64, res.check_problems);
    fprintf(f, "\"check_problems\": %s},\n", na ? "null" : v);
    fprintf(f, "  \"first_failure\": \"");
    for (const char *p = atomic_load(&ctl->first_set) ? ctl->first : ""; *p; p++)
        fprintf(f, (*p == '"' || *p == '\\') ? "\\%c" : ((unsigned char)*p < 32 ? "?" : "%c"), *p);
    fprintf(f, "\",\n  \"verdict\": \"%s\"\n}\n", verdict);
    fclose(f);
}

static void plot(struct sample *tl, long n)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "ossl-mem-stress: --plot: gnuplot is not installed (Debian: apt-get "
                        "install gnuplot-nox); no plot written\n");
        return;
    }
    char data[] = "/tmp/ossl-mem-stress-plot.XXXXXX";
    int fd = mkstemp(data);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f)
        return;
    for (long i = 1; i < n; i++) {
        uint64_t priv = 0;
        for (long w = 0; w < opt.workers; w++)
            priv += tl[i].priv[w];
        fprintf(f, "%.1f %.1f %.3f %.3f\n", tl[i].t,
                (tl[i].ok - tl[i - 1].ok) / (tl[i].t - tl[i - 1].t), tl[i].shared / 1048576.0,
                priv / 1048576.0);
    }
    fclose(f);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "gnuplot -e \"set terminal svg size 900,500; set output '%s'; "
             "set title 'ossl-mem-stress: %s mode, %ld workers'; set xlabel 'seconds'; "
             "set ylabel 'handshakes/s'; set y2label 'MiB'; set y2tics; set ytics nomirror; "
             "set key top left; plot '%s' using 1:2 with lines title 'handshakes/s', "
             "'' using 1:3 axes x1y2 with lines title 'shared MiB', "
             "'' using 1:4 axes x1y2 with lines title 'private MiB (all workers)'\"",
             opt.plot, mode_name[opt.mode], opt.workers, data);
    if (system(cmd) != 0)
        fprintf(stderr, "ossl-mem-stress: gnuplot failed; no plot written\n");
    unlink(data);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    if (opt.cert) {
        srv_cert_f = opt.cert, srv_key_f = opt.key_file, ca_f = opt.ca;
        cli_cert_f = opt.client_cert ? opt.client_cert : opt.cert;
        cli_key_f = opt.client_key ? opt.client_key : opt.key_file;
    }
    FILE *tlf = NULL;
    if (opt.timeline && !(tlf = fopen(opt.timeline, "w")))
        usage_error("--timeline %s: %s", opt.timeline, strerror(errno));
    if (opt.json) {
        FILE *j = fopen(opt.json, "a");
        if (!j)
            usage_error("--json %s: %s", opt.json, strerror(errno));
        fclose(j);
    }
    if (opt.mode != M_GLIBC) {
        struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, 0, opt.options};
        int rc = ossl_mem_init(&cfg);
        if (rc != 0) {
            fprintf(stderr, "ossl-mem-stress: ossl_mem_init: %s\n", ossl_mem_strerror(rc));
            return 1;
        }
    }
    ctl = mmap(NULL, sizeof *ctl, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ctl == MAP_FAILED) {
        perror("ossl-mem-stress: mmap");
        return 1;
    }
    atomic_store(&ctl->remaining, opt.handshakes);
    if (!opt.cert && make_pki() != 0) {
        char e[256];
        fprintf(stderr, "ossl-mem-stress: cannot make the certificates: %s\n",
                openssl_error(e, sizeof e));
        remove_pki();
        return 1;
    }
    SSL_CTX *cur = NULL;
    if (opt.mode == M_SHARED && !(cur = build_shared())) {
        fprintf(stderr, "ossl-mem-stress: %s\n", ctl->first);
        remove_pki();
        return 1;
    }
    if (cur)
        publish(cur);
    if (opt.transport == T_SOCKET && make_listener() != 0) {
        fprintf(stderr, "ossl-mem-stress: cannot listen on 127.0.0.1: %s\n", strerror(errno));
        remove_pki();
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_stop);    /* the workers finish their handshake and leave */
    signal(SIGTERM, on_stop);

    double t0 = now();
    running = 0;
    for (long i = 0; i < opt.workers; i++) {
        if (spawn_worker((int)i) < 0) {
            perror("ossl-mem-stress: fork");
            atomic_store(&ctl->stop, 1);
            res.setup_failed = true;
            break;
        }
        running++;
    }
    if (opt.transport == T_SOCKET)
        for (long i = 0; i < opt.workers && !res.setup_failed; i++) {
            fflush(NULL);
            if ((clients[i] = fork()) == 0) {
                signal(SIGINT, SIG_IGN);
                signal(SIGTERM, SIG_DFL);
                client_main();
            }
        }

    bool tty = isatty(STDERR_FILENO);
    unsigned rnd = (unsigned)opt.seed;
    long cap = (opt.seconds ? opt.seconds : 3600) + 2, n = 0;
    struct sample *tl = calloc((size_t)cap + 1, sizeof *tl);
    double next_sample = t0, next_progress = t0 + (tty ? 0.5 : 5), next_reload =
        t0 + (double)opt.reload_every, next_kill = t0 + (double)opt.kill_every;
    double last_change = t0, stop_time = 0;
    long last_total = -1;
    while (running > 0) {
        double t = now();
        /* reap the workers that finished */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            int idx = slot_of(pid);
            if (idx < 0)
                continue; /* a client */
            if (opt.mode != M_GLIBC)
                ossl_mem_worker_exited(pid);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                record_first("worker %d ended with status %d", (int)pid, st);
            atomic_store(&ctl->slot[idx].pid, 0);
            running--;
        }
        long ok, failed;
        totals(&ok, &failed);
        if (opt.seconds && t - t0 >= (double)opt.seconds)
            atomic_store(&ctl->stop, 1);
        if (ok + failed != last_total) {
            last_total = ok + failed;
            last_change = t;
        } else if (t - last_change > 30 && !atomic_load(&ctl->stop)) {
            record_first("watchdog: no handshake finished in 30 s; stopping everything");
            res.watchdog = true;
            atomic_store(&ctl->stop, 1);
            for (long i = 0; i < opt.workers; i++)
                if (atomic_load(&ctl->slot[i].pid) > 0)
                    kill(atomic_load(&ctl->slot[i].pid), SIGKILL);
        }
        if (stop_signal && !atomic_load(&ctl->stop)) {
            record_first("interrupted by signal %d", (int)stop_signal);
            atomic_store(&ctl->stop, 1);
        }
        /* the end of the run is bounded too: 15 s after the stop, what is left is killed */
        if (atomic_load(&ctl->stop) && stop_time == 0)
            stop_time = t;
        if (stop_time && t - stop_time > 15 && !res.watchdog) {
            record_first("watchdog: workers still running 15 s after the stop; killed");
            res.watchdog = true;
            for (long i = 0; i < opt.workers; i++)
                if (atomic_load(&ctl->slot[i].pid) > 0)
                    kill(atomic_load(&ctl->slot[i].pid), SIGKILL);
        }
        if (!atomic_load(&ctl->stop)) {
            if (opt.reload_every && t >= next_reload) {
                reload(&cur);
                next_reload += (double)opt.reload_every;
            }
            if (opt.kill_every && t >= next_kill) {
                kill_one(&rnd);
                next_kill += (double)opt.kill_every;
            }
            if (opt.mode == M_SHARED)
                ossl_mem_reclaim();
        }
        uint64_t sh = shared_used();
        if (sh > res.shared_peak)
            res.shared_peak = sh;
        if (t >= next_sample && n <= cap) {
            tl[n].t = t - t0, tl[n].ok = ok, tl[n].failed = failed, tl[n].shared = sh;
            for (long i = 0; i < opt.workers; i++)
                tl[n].priv[i] = atomic_load(&ctl->slot[i].live);
            n++;
            next_sample += 1;
        }
        if (t >= next_progress) {
            double dt = t - t0;
            progress(dt, ok, failed, dt > 0 ? ok / dt : 0, tty, false);
            next_progress += tty ? 0.5 : 5;
        }
        usleep(20000);
    }
    res.secs = now() - t0;
    atomic_store(&ctl->stop, 1);
    for (long i = 0; i < opt.workers && opt.transport == T_SOCKET; i++)
        if (clients[i] > 0) {
            kill(clients[i], SIGTERM);
            waitpid(clients[i], NULL, 0);
        }
    for (long i = 0; i < opt.workers; i++) {
        retire_slot((int)i);
        if (atomic_load(&ctl->slot[i].check) > 0)
            res.check_problems += (uint64_t)atomic_load(&ctl->slot[i].check);
    }
    totals(&res.ok, &res.failed);
    for (int i = 0; i < 6; i++)
        res.faults[i] = atomic_load(&ctl->dead_faults[i]);
    if (opt.mode == M_SHARED && cur) {
        ossl_mem_retire_ssl_ctx(cur);
        ossl_mem_reclaim();
    }
    if (opt.mode != M_GLIBC) {
        struct ossl_mem_stats st;
        long c = ossl_mem_check();
        if (c > 0)
            res.check_problems += (uint64_t)c;
        if (ossl_mem_get_stats(&st) == 0) {
            uint64_t f[6] = {st.double_frees, st.invalid_frees, st.inherited_frees,
                             st.overflows, st.uaf_writes, st.corrupt_headers};
            for (int i = 0; i < 6; i++)
                res.faults[i] += f[i];
            res.shared_failed = st.shared_failed;
            if (st.shared_peak > res.shared_peak)
                res.shared_peak = st.shared_peak;
        }
    }
    double rate = res.secs > 0 ? res.ok / res.secs : 0;
    progress(res.secs, res.ok, res.failed, rate, tty, true);

    /* the verdict: every handshake verified, nothing unexpected */
    uint64_t unexpected = res.faults[0] + res.faults[1] + res.faults[3] + res.faults[4] +
                          res.faults[5] + res.shared_failed + res.check_problems;
    char why[640] = "";
    if (res.failed)
        snprintf(why, sizeof why, "%ld handshakes failed; first failure: %s", res.failed,
                 atomic_load(&ctl->first_set) ? ctl->first : "?");
    else if (atomic_load(&ctl->first_set))
        snprintf(why, sizeof why, "%s", ctl->first);
    else if (unexpected)
        snprintf(why, sizeof why, "%" PRIu64 " unexpected safety events", unexpected);
    else if (res.ok == 0)
        snprintf(why, sizeof why, "no handshake was done");
    bool pass = why[0] == 0;

    char a[32], b[32];
    printf("ossl-mem-stress report\n");
    printf("  config      mode %s, transport %s, %ld workers, %s keys, TLS %s, verify %s%s%s\n",
           mode_name[opt.mode], transport_name[opt.transport], opt.workers,
           opt.key == OMT_KEY_EC ? "P-256" : "RSA-2048", opt.tls == TLS1_3_VERSION ? "1.3" : "1.2",
           opt.verify == OMT_VERIFY_MUTUAL ? "mutual" : opt.verify == OMT_VERIFY_SERVER ? "server"
                                                                                       : "none",
           opt.options ? ", options " : "", opt.options ? opt.options : "");
    printf("  handshakes  %ld ok, %ld failed in %.1f s\n", res.ok, res.failed, res.secs);
    printf("  rate        %.0f/s total, %.0f/s per worker\n", rate, rate / (double)opt.workers);
    printf("  events      %ld reloads, %ld workers killed and replaced\n", res.reloads, res.kills);
    if (opt.mode == M_GLIBC) {
        printf("  memory      private peak per worker %s in use (glibc mallinfo2); shared n/a\n",
               human(res.priv_peak, a, sizeof a));
        printf("  safety      n/a (ossl_mem not installed)\n");
    } else {
        printf("  memory      shared arena peak %s; private peak per worker %s live\n",
               human(res.shared_peak, a, sizeof a), human(res.priv_peak, b, sizeof b));
        printf("  safety      %" PRIu64 " double frees, %" PRIu64 " invalid frees, %" PRIu64
               " overflows, %" PRIu64 " writes after free, %" PRIu64 " corrupt headers, %" PRIu64
               " arena exhaustions\n", res.faults[0], res.faults[1], res.faults[3], res.faults[4],
               res.faults[5], res.shared_failed);
        printf("              %" PRIu64 " inherited frees (expected: frees of shared chunks by "
               "workers, refused)\n", res.faults[2]);
        printf("  check       ossl_mem_check(): %" PRIu64 " problems (every worker at its exit, "
               "and the master)\n", res.check_problems);
    }
    printf("  verdict     %s%s%s\n", pass ? "PASS" : "FAIL", pass ? "" : ": ", why);
    fflush(stdout);

    if (tlf) {
        fprintf(tlf, "seconds,handshakes,failures,shared_bytes");
        for (long w = 0; w < opt.workers; w++)
            fprintf(tlf, ",worker%ld_private_bytes", w);
        fprintf(tlf, "\n");
        for (long i = 0; i < n; i++) {
            fprintf(tlf, "%.1f,%ld,%ld,%" PRIu64, tl[i].t, tl[i].ok, tl[i].failed, tl[i].shared);
            for (long w = 0; w < opt.workers; w++)
                fprintf(tlf, ",%" PRIu64, tl[i].priv[w]);
            fprintf(tlf, "\n");
        }
        fclose(tlf);
    }
    if (opt.json)
        write_json(pass ? "PASS" : "FAIL", rate);
    if (opt.plot)
        plot(tl, n);
    free(tl);
    remove_pki();
    return pass ? 0 : 1;
}
