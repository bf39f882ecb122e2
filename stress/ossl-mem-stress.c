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
 * master prints progress, reloads the context, kills workers (at random
 * instants, or with --kill-at safe at safe points between handshakes) and
 * replaces them, and at the end collects every worker's ossl_mem_check()
 * and safety counters into the report. Socket-mode clients count their own
 * outcomes too, to tell a connection cut by a killed worker from a failure.
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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

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
    "  --kill-every S       every S seconds (a decimal from 0.01) SIGKILL a random worker, reap it\n"
    "                       and fork a replacement\n"
    "  --kill-at anywhere|safe\n"
    "                       anywhere (default): the SIGKILL comes at a random instant of each\n"
    "                       interval, unannounced, mostly inside OpenSSL (mid-handshake, maybe\n"
    "                       holding a lock of the shared context); safe: the worker is first asked\n"
    "                       to park between two handshakes\n"
    "  --options STR        ossl_mem options for master and workers (see OSSL_MEM_OPTIONS=help)\n"
    "  --cert FILE --key-file FILE --ca FILE\n"
    "                       the server's certificate and key and the CA both sides trust, instead\n"
    "                       of generated ones; --client-cert FILE --client-key FILE give the\n"
    "                       client's pair (default: the server's pair, which then must permit\n"
    "                       client authentication); all are checked before the run starts\n"
    "  --wrong-client-ca    the client presents a certificate from another CA (must fail)\n"
    "  --json FILE          write the final report as JSON\n"
    "  --timeline FILE      write one CSV row per second: handshakes, failures, shared bytes and\n"
    "                       each worker's private bytes\n"
    "  --plot FILE          draw memory and handshake rate over time as SVG (needs gnuplot)\n"
    "  --seed N             seed of the random choices (default 1)\n"
    "  --help               this text\n"
    "Exit status: 0 if every handshake verified and no unexpected safety event happened, 1\n"
    "otherwise (the report names the first failure), 2 for bad usage or unusable files. A killed\n"
    "worker's unfinished handshake is not a failure, nor (socket transport) is its client's\n"
    "connection cut by that death, at most one per kill; any other failure is, and so is a worker\n"
    "that makes no progress for 20 s.\n";

#define MAX_WORKERS 256

enum mode { M_SHARED, M_PRIVATE, M_GLIBC };
enum kill_at { K_ANYWHERE, K_SAFE };
enum transport { T_BIO, T_SOCKET };
static const char *const mode_name[] = {"shared", "private", "glibc"};
static const char *const transport_name[] = {"bio", "socket"};

static struct {
    long workers, handshakes, seconds, reload_every, seed;
    double kill_every;          /* seconds, 0: no kills */
    enum kill_at kill_at;
    enum omt_key key;
    int tls;                    /* TLS1_2_VERSION or TLS1_3_VERSION */
    enum omt_verify verify;
    enum mode mode;
    enum transport transport;
    const char *options, *cert, *key_file, *ca, *client_cert, *client_key;
    const char *json, *timeline, *plot;
    bool wrong_ca;
} opt = {4, 2000, 0, 0, 1, 0, K_ANYWHERE, OMT_KEY_EC, TLS1_3_VERSION, OMT_VERIFY_MUTUAL, M_SHARED, T_BIO,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false};

/* Safety counters a worker hands over (index into the faults arrays). */
enum { F_DOUBLE, F_INVALID, F_INHERITED, F_OVERFLOW, F_UAF, F_CORRUPT, F_HOOKS, NF };
static const char *const fault_json[NF] = {"double_frees", "invalid_frees", "inherited_frees",
                                           "overflows", "uaf_writes", "corrupt_headers",
                                           "hooks_replaced"};

/* A worker's figures in the control page (written by the worker alone, except pid and state). */
struct slot {
    _Atomic pid_t pid;              /* 0: free */
    _Atomic long ok, failed;        /* handshakes */
    _Atomic int state;              /* S_* */
    _Atomic uint64_t live, mapped, peak;    /* private memory */
    _Atomic uint64_t faults[NF];    /* F_*, this process's ossl_mem_get_stats() figures */
    _Atomic long check;             /* ossl_mem_check() at exit, -1 not run */
    _Atomic int err_set;            /* err holds this worker's first failure */
    _Atomic uint64_t done_ns;       /* CLOCK_MONOTONIC when a worker of this slot last finished a
                                       handshake (kept over replacements: the end of the serving) */
    _Atomic uint64_t beat_ns;       /* CLOCK_MONOTONIC when the worker last passed its loop's top
                                       (set by the master at the fork): the stall detector's */
    _Atomic int conn;               /* socket transport: 1 from just before accept() until the
                                       connection is closed and counted (a kill then may cut one
                                       client connection) */
    char err[256];                  /* its text (omt_result.err) */
};
enum { S_RUN = 0, S_PARK_REQ, S_PARKED, S_DONE };

/* The control page: made before the first fork, MAP_SHARED. */
struct control {
    _Atomic long remaining;         /* handshakes left to start (budget mode) */
    _Atomic int stop;               /* 1: finish the current handshake and leave */
    _Atomic uint64_t gen;           /* current context generation */
    _Atomic(SSL_CTX *) ctx[2];      /* shared mode: generation g's context is ctx[g & 1] */
    _Atomic long dead_ok, dead_failed;      /* counts of replaced (killed) workers */
    _Atomic uint64_t dead_faults[NF];
    _Atomic int first_set;          /* first failure recorded */
    char first[512];                /* its text */
    /* socket transport: the client processes' own results (the server side is the workers') */
    _Atomic long client_ok;         /* exchanges the client finished and verified */
    _Atomic long client_cut;        /* ended by the server vanishing (EOF or reset, no alert) */
    _Atomic long client_failed;     /* ended by anything else */
    _Atomic int client_first_set;
    char client_first[256];         /* the first of those other failures */
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
static pid_t master_pid;

/* Per worker slot, over every worker that ran in it (the master's own figures). */
static struct {
    long ok, failed;            /* handshakes of its killed predecessors */
    long started;               /* workers forked into it */
    uint64_t peak;              /* highest private live bytes of any of them */
    long check;                 /* last worker's ossl_mem_check() at exit, -1 not run */
} per[MAX_WORKERS];

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

/* A number of seconds with up to 3 decimals, from <min> to 86400 ("0.05", "2"). */
static double sec_arg(const char *o, const char *v, double min)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    const char *dot = strchr(v, '.');
    if (errno || end == v || *end || !(d >= min && d <= 86400) || strspn(v, "0123456789.") != strlen(v)
        || (dot && (strchr(dot + 1, '.') || strlen(dot + 1) > 3)))
        usage_error("%s needs a number of seconds from %g to 86400 (up to 3 decimals), not '%s'",
                    o, min, v);
    return d;
}

/* A PEM file to read: it must exist, be readable and not be a directory. */
static const char *file_arg(const char *o, const char *v)
{
    struct stat sb;
    if (access(v, R_OK) != 0 || stat(v, &sb) != 0)
        usage_error("%s %s: %s", o, v, strerror(errno));
    if (S_ISDIR(sb.st_mode))
        usage_error("%s %s: is a directory", o, v);
    return v;
}

/* A file to write at the end: its directory must exist and be writable now. */
static const char *out_arg(const char *o, const char *v)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(v, '/');
    if (!*v)
        usage_error("%s needs a file name", o);
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == v ? 1 : (int)(slash - v), v);
    if (access(dir, W_OK) != 0)
        usage_error("%s %s: cannot write in %s: %s", o, v, dir, strerror(errno));
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"workers", 1, 0, 'w'}, {"handshakes", 1, 0, 'n'}, {"seconds", 1, 0, 's'},
        {"key", 1, 0, 'k'}, {"tls", 1, 0, 't'}, {"verify", 1, 0, 'v'}, {"mode", 1, 0, 'm'},
        {"transport", 1, 0, 'T'}, {"reload-every", 1, 0, 'r'}, {"kill-every", 1, 0, 'K'},
        {"kill-at", 1, 0, 'A'},
        {"options", 1, 0, 'o'}, {"cert", 1, 0, 'c'}, {"key-file", 1, 0, 'f'}, {"ca", 1, 0, 'a'},
        {"client-cert", 1, 0, 'C'}, {"client-key", 1, 0, 'F'}, {"wrong-client-ca", 0, 0, 'W'},
        {"json", 1, 0, 'j'}, {"timeline", 1, 0, 'l'}, {"plot", 1, 0, 'p'}, {"seed", 1, 0, 'S'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    bool got_n = false, got_at = false;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'w': opt.workers = num_arg("--workers", optarg, 1, MAX_WORKERS); break;
        case 'n': opt.handshakes = num_arg("--handshakes", optarg, 1, LONG_MAX / 2); got_n = true; break;
        case 's': opt.seconds = num_arg("--seconds", optarg, 1, 86400); break;
        case 'r': opt.reload_every = num_arg("--reload-every", optarg, 1, 86400); break;
        case 'K': opt.kill_every = sec_arg("--kill-every", optarg, 0.01); break;
        case 'A':
            if (strcmp(optarg, "anywhere") == 0) opt.kill_at = K_ANYWHERE;
            else if (strcmp(optarg, "safe") == 0) opt.kill_at = K_SAFE;
            else usage_error("--kill-at takes anywhere or safe, not '%s'", optarg);
            got_at = true;
            break;
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
        case 'j': opt.json = out_arg("--json", optarg); break;
        case 'l': opt.timeline = out_arg("--timeline", optarg); break;
        case 'p': opt.plot = out_arg("--plot", optarg); break;
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
    if (got_at && !opt.kill_every)
        usage_error("--kill-at needs --kill-every");
    if (opt.options && opt.mode == M_GLIBC)
        usage_error("--options has no effect with --mode glibc");
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */
/* ------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double now(void)
{
    return (double)now_ns() / 1e9;
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
        uint64_t f[NF] = {st.double_frees, st.invalid_frees, st.inherited_frees, st.overflows,
                          st.uaf_writes, st.corrupt_headers, st.hooks_replaced};
        for (int i = 0; i < NF; i++)
            atomic_store(&s->faults[i], f[i]);
    }
    if (atomic_load(&s->live) > atomic_load(&s->peak))
        atomic_store(&s->peak, atomic_load(&s->live));
}

/*
 * Socket options of both ends of a connection: no Nagle delay (small records both ways), and
 * every blocking read or write gives up after 10 s, so that a peer that stops answering costs
 * one failed handshake (omt's own 10 s deadline), not a worker stuck for good.
 */
static void tune_socket(int fd)
{
    int one = 1;
    struct timeval tv = {10, 0};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/*
 * In a child just forked: dies with the master (SIGKILL when it goes, however it goes), so
 * that no worker or client outlives a master that crashed or was killed.
 */
static void die_with_master(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != master_pid) /* the master went before the line above */
        _exit(4);
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
    bool snap_each = opt.kill_every && opt.kill_at == K_ANYWHERE && opt.mode != M_GLIBC;
    while (take_one()) {
        atomic_store(&s->beat_ns, now_ns());
        /* a safe point: no handshake in progress, no context pointer held */
        if (atomic_load(&s->state) == S_PARK_REQ) {
            snapshot(s); /* exact counters for the master, which adds them up after the kill */
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
            atomic_store(&s->conn, 1); /* a kill from here on may cut a client's connection */
            int fd = accept(listen_fd, NULL, NULL);
            if (fd >= 0)
                tune_socket(fd);
            if (fd < 0) {
                atomic_store(&s->conn, 0);
                if (!opt.seconds)
                    atomic_fetch_add(&ctl->remaining, 1);
                goto quiescent;
            }
            rc = omt_handshake_fd_server(srv, fd, &r);
            close(fd);
        }
        atomic_store(&s->done_ns, now_ns());
        if (rc == 0) {
            atomic_fetch_add(&s->ok, 1);
        } else {
            atomic_fetch_add(&s->failed, 1);
            /* omt's text names the OpenSSL error and, for a verification, the verify error */
            record_first("worker %d: %s", (int)getpid(), r.err);
            int expect = 0;
            if (atomic_compare_exchange_strong(&s->err_set, &expect, 1))
                snprintf(s->err, sizeof s->err, "%s", r.err);
        }
        atomic_store(&s->conn, 0);
    quiescent:
        if (opt.mode == M_SHARED)
            ossl_mem_ssl_ctx_done(NULL);
        /* killed at any instant, a worker hands over the counters of its last snapshot: with
           unannounced kills they are taken after every handshake */
        if (snap_each || now() - last > 0.2) {
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
    close(listen_fd); /* so that the master's close at the end resets the connections queued */
    SSL_CTX *cli = build_ctx(false);
    if (!cli)
        _exit(3);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    while (!atomic_load(&ctl->stop)) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0)
            tune_socket(fd);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            if (fd >= 0)
                close(fd);
            usleep(10000);
            continue;
        }
        struct omt_result r;
        int rc = omt_handshake_fd_client(cli, fd, &r);
        close(fd);
        /* the server side counts and judges every handshake; the client's own outcome tells
           a connection its worker's death cut (the peer vanished: EOF or reset, no TLS alert)
           from any other failure. What ends after the stop is the end of the run: not counted */
        if (!atomic_load(&ctl->stop)) {
            if (rc == 0) {
                atomic_fetch_add(&ctl->client_ok, 1);
            } else if (r.peer_gone) {
                atomic_fetch_add(&ctl->client_cut, 1);
            } else {
                atomic_fetch_add(&ctl->client_failed, 1);
                int expect = 0;
                if (atomic_compare_exchange_strong(&ctl->client_first_set, &expect, 1))
                    snprintf(ctl->client_first, sizeof ctl->client_first, "%s", r.err);
            }
        }
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
    atomic_store(&s->conn, 0);
    atomic_store(&s->beat_ns, now_ns());
    for (int i = 0; i < NF; i++)
        atomic_store(&s->faults[i], 0);
    fflush(NULL);
    atomic_store(&s->err_set, 0);
    pid_t pid = fork();
    if (pid > 0)
        per[idx].started++;
    if (pid == 0) {
        die_with_master();
        signal(SIGINT, SIG_IGN); /* the master decides when to stop */
        signal(SIGHUP, SIG_IGN);
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
    long cuts;                  /* kills that found the worker with a connection (maybe) open */
    long rebuilds;              /* reloads made because the context had a lock recovered */
    long client_ok, client_cut, client_failed;      /* socket transport: the clients' outcomes */
    uint64_t shared_peak, priv_peak, faults[NF], shared_failed, lock_repairs, check_problems;
    uint64_t locks_recovered;   /* OpenSSL locks of the arena recovered from a dead holder */
    uint64_t shared_end, shared_left, contexts_left;   /* arena at the end, after the last retire */
    long master_check;          /* ossl_mem_check() in the master at the end, -1 not run */
    long checked, unchecked;    /* workers that ran ossl_mem_check() at exit / did not (killed) */
    double secs;                /* the whole run: from the first fork until every worker left */
    double serve;               /* from the first fork until the last handshake finished */
    bool watchdog, setup_failed, stalled;
} res = {.master_check = -1};


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
    long ok = atomic_exchange(&s->ok, 0), failed = atomic_exchange(&s->failed, 0);
    atomic_fetch_add(&ctl->dead_ok, ok);
    atomic_fetch_add(&ctl->dead_failed, failed);
    per[idx].ok += ok;
    per[idx].failed += failed;
    for (int i = 0; i < NF; i++)
        atomic_fetch_add(&ctl->dead_faults[i], atomic_exchange(&s->faults[i], 0));
    uint64_t peak = atomic_load(&s->peak);
    if (peak > per[idx].peak)
        per[idx].peak = peak;
    if (peak > res.priv_peak)
        res.priv_peak = peak;
    long c = atomic_exchange(&s->check, -1);
    if (c >= 0) {
        res.checked++;
        res.check_problems += (uint64_t)c;
    }
    else if (per[idx].started > 0)
        res.unchecked++; /* killed, or died on its own: it never reached its check */
    per[idx].check = c;
}

static int slot_of(pid_t pid)
{
    for (long i = 0; i < opt.workers; i++)
        if (atomic_load(&ctl->slot[i].pid) == pid)
            return (int)i;
    return -1;
}

static int running; /* workers the master still waits for */

/* "exit status N" or "signal NAME" for a wait status. */
static const char *status_text(int st)
{
    static char buf[64];
    if (WIFEXITED(st))
        snprintf(buf, sizeof buf, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, sizeof buf, "signal %s", strsignal(WTERMSIG(st)));
    else
        snprintf(buf, sizeof buf, "wait status %#x", (unsigned)st);
    return buf;
}

/*
 * The master's part after a worker of slot <idx> died (killed, reaped, status <st>): tells
 * ossl_mem, adds its counters to the slot's and forks the replacement.
 */
static void replace(int idx, pid_t pid)
{
    if (opt.mode != M_GLIBC)
        ossl_mem_worker_exited(pid);
    atomic_store(&ctl->slot[idx].pid, 0);
    retire_slot(idx);
    pid_t np = spawn_worker(idx);
    if (np <= 0) {
        if (np < 0)
            record_first("fork: %s", strerror(errno));
        running--; /* no replacement: one worker fewer to wait for */
    }
}

/* --kill-at safe: kills a random running worker at its next safe point, forks its replacement. */
static void kill_safe(unsigned *rnd)
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
    res.kills++;
    replace(idx, pid);
}

/*
 * --kill-at anywhere: SIGKILLs a random running worker now, wherever it is (the master does not
 * coordinate with it: mid-handshake, inside OpenSSL or ossl_mem, maybe holding a lock of the
 * shared context or the arena's), reaps it and forks its replacement. A worker that finished
 * on its own just before (its budget spent) is reaped as a normal exit instead.
 */
static void kill_anywhere(unsigned *rnd)
{
    int idx = (int)(rand_r(rnd) % (unsigned)opt.workers);
    struct slot *s = &ctl->slot[idx];
    pid_t pid = atomic_load(&s->pid);
    int st;
    if (pid <= 0 || atomic_load(&s->state) != S_RUN)
        return;
    kill(pid, SIGKILL);
    if (waitpid(pid, &st, 0) != pid)
        return; /* not ours any more: the main loop reaps */
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        res.kills++;
        if (atomic_load(&s->conn)) /* the dead worker's last word: it had a connection open */
            res.cuts++;
        replace(idx, pid);
        return;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        record_first("worker %d ended with %s", (int)pid, status_text(st));
    if (opt.mode != M_GLIBC)
        ossl_mem_worker_exited(pid);
    atomic_store(&s->pid, 0);
    running--;
}

/* When kill number k, counted in the interval that starts at <from>, is due. */
static double kill_time(double from, unsigned *rnd)
{
    if (opt.kill_at == K_SAFE)
        return from + opt.kill_every;
    return from + opt.kill_every * ((double)rand_r(rnd) / ((double)RAND_MAX + 1));
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

/*
 * Whether workers may die holding a lock: only when they are killed at random instants. Then
 * a repaired arena lock and recovered OpenSSL locks are expected; otherwise nobody dies inside
 * ossl_mem or OpenSSL (safe kills park first, the clients end on their own), and either one
 * means something is wrong.
 */
static bool lock_events_allowed(void)
{
    return opt.kill_every && opt.kill_at == K_ANYWHERE;
}

/*
 * Safety events that must not happen, summed over every worker and the master: double and
 * invalid frees, overflows, writes after free, corrupt headers, replaced hooks, an exhausted
 * arena, every problem ossl_mem_check() found (including shared chunks pointing into a
 * process's private memory), inherited frees outside shared mode (no chunk is shared there),
 * and, unless workers are killed anywhere, repaired arena locks and recovered OpenSSL locks.
 * Inherited frees in shared mode are expected: the workers' exit cleanup frees shared chunks
 * and ossl_mem refuses those frees.
 */
static uint64_t unexpected_events(void)
{
    if (opt.mode == M_GLIBC)
        return 0;
    uint64_t n = res.shared_failed + res.check_problems;
    if (!lock_events_allowed())
        n += res.lock_repairs + res.locks_recovered;
    for (int i = 0; i < NF; i++)
        if (i != F_INHERITED || opt.mode != M_SHARED)
            n += res.faults[i];
    return n;
}

/* Writes <s> as a JSON string (quoted, escaped). */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 32)
            fprintf(f, "\\u%04x", (unsigned char)*s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static const char *verify_name(void)
{
    return opt.verify == OMT_VERIFY_MUTUAL ? "mutual"
           : opt.verify == OMT_VERIFY_SERVER ? "server" : "none";
}

/* The text report on stdout: aligned "label  text" lines, one table of worker slots. */
static void print_report(bool pass, const char *why, double rate)
{
    char a[32], b[32], c[32];
    bool na = opt.mode == M_GLIBC;
    printf("ossl-mem-stress report\n");
    printf("  config      mode %s, transport %s, %ld workers, %s keys, TLS %s, verify %s, "
           "seed %ld%s%s\n", mode_name[opt.mode], transport_name[opt.transport], opt.workers,
           opt.cert ? "own" : opt.key == OMT_KEY_EC ? "P-256" : "RSA-2048",
           opt.tls == TLS1_3_VERSION ? "1.3" : "1.2", verify_name(), opt.seed,
           opt.options ? ", options " : "", opt.options ? opt.options : "");
    printf("  handshakes  %ld ok, %ld failed in %.1f s (the last one at %.2f s, then the workers' "
           "exit)\n",
           res.ok, res.failed, res.secs, res.serve);
    printf("  rate        %.0f/s total, %.0f/s per worker (over the serving time)\n", rate,
           rate / (double)opt.workers);
    printf("  events      %ld reloads", res.reloads);
    if (res.rebuilds)
        printf(" (%ld of them rebuilds after a recovered lock)", res.rebuilds);
    printf(", %ld workers killed %sand replaced\n", res.kills, !opt.kill_every ? ""
           : opt.kill_at == K_SAFE ? "at safe points " : "at random instants ");
    if (opt.transport == T_SOCKET)
        printf("  clients     %ld exchanges verified, %ld other failures, %ld cut by a killed worker\n"
               "              (allowed: at most %ld, the kills that found their worker with a "
               "connection open)\n", res.client_ok, res.client_failed, res.client_cut, res.cuts);
    if (na) {
        printf("  memory      shared n/a; private peak per worker %s in use (glibc mallinfo2)\n",
               human(res.priv_peak, a, sizeof a));
    } else {
        printf("  memory      shared arena peak %s, %s in use at the end, %s after the last "
               "retire (%" PRIu64 " contexts left)\n", human(res.shared_peak, a, sizeof a),
               human(res.shared_end, b, sizeof b), human(res.shared_left, c, sizeof c),
               res.contexts_left);
        printf("              private peak per worker %s live\n",
               human(res.priv_peak, a, sizeof a));
    }
    printf("  workers     %4s %6s %10s %7s %8s %13s  %s\n", "slot", "forked", "ok", "failed",
           "rate/s", "private peak", "check at exit");
    for (long i = 0; i < opt.workers; i++) {
        char chk[48];
        if (na)
            snprintf(chk, sizeof chk, "n/a");
        else if (per[i].check >= 0)
            snprintf(chk, sizeof chk, "%ld problems", per[i].check);
        else
            snprintf(chk, sizeof chk, "not run (%s)", per[i].started ? "did not exit" : "no worker");
        printf("              %4ld %6ld %10ld %7ld %8.0f %13s  %s\n", i, per[i].started,
               per[i].ok, per[i].failed, res.serve > 0 ? per[i].ok / res.serve : 0,
               human(per[i].peak, a, sizeof a), chk);
        if (atomic_load(&ctl->slot[i].err_set))
            printf("              %4s first failure: %s\n", "", ctl->slot[i].err);
    }
    if (na) {
        printf("  safety      n/a (ossl_mem not installed: nothing counts)\n");
    } else {
        printf("  safety      unexpected (each must be 0): %" PRIu64 " double frees, %" PRIu64
               " invalid frees, %" PRIu64 " overflows,\n", res.faults[F_DOUBLE],
               res.faults[F_INVALID], res.faults[F_OVERFLOW]);
        printf("              %" PRIu64 " writes after free, %" PRIu64 " corrupt headers, %" PRIu64
               " replaced hooks, %" PRIu64 " arena exhaustions", res.faults[F_UAF],
               res.faults[F_CORRUPT], res.faults[F_HOOKS], res.shared_failed);
        if (lock_events_allowed())
            printf("\n              allowed: %" PRIu64 " arena lock repairs, %" PRIu64 " OpenSSL "
                   "locks recovered (a worker killed at a random\n              instant may die "
                   "holding one; the next locker recovers it)\n", res.lock_repairs,
                   res.locks_recovered);
        else
            printf(",\n              %" PRIu64 " arena lock repairs, %" PRIu64 " OpenSSL locks "
                   "recovered (nobody is killed inside a lock)\n", res.lock_repairs,
                   res.locks_recovered);
        if (opt.mode == M_SHARED)
            printf("              allowed: %" PRIu64 " inherited frees (a worker freeing a shared "
                   "chunk, e.g. in its exit cleanup; refused by ossl_mem)\n",
                   res.faults[F_INHERITED]);
        else
            printf("              unexpected too: %" PRIu64 " inherited frees (no chunk is "
                   "shared in %s mode)\n", res.faults[F_INHERITED], mode_name[opt.mode]);
        printf("  check       ossl_mem_check(): workers %" PRIu64 " problems (%ld checked at "
               "exit, %ld killed or dead before it), master %ld problems\n",
               res.check_problems - (uint64_t)(res.master_check > 0 ? res.master_check : 0),
               res.checked, res.unchecked, res.master_check);
    }
    printf("  verdict     %s%s%s\n", pass ? "PASS" : "FAIL", pass ? "" : ": ", why);
}

/* A counter as JSON: null where nobody counts (glibc mode), not 0. */
static const char *json_num(uint64_t n, char *buf, size_t len)
{
    if (opt.mode == M_GLIBC)
        return "null";
    snprintf(buf, len, "%" PRIu64, n);
    return buf;
}

/* The report as JSON in --json FILE (the text report's figures, and each worker slot's). */
static void write_json(const char *verdict, double rate)
{
    FILE *f = fopen(opt.json, "w");
    if (!f) {
        fprintf(stderr, "ossl-mem-stress: --json %s: %s\n", opt.json, strerror(errno));
        return;
    }
    char v[32];
    fprintf(f, "{\n  \"config\": {\"mode\": \"%s\", \"transport\": \"%s\", \"workers\": %ld, "
            "\"key\": \"%s\", \"tls\": \"%s\", \"verify\": \"%s\", \"reload_every\": %ld, "
            "\"kill_every\": %g, \"kill_at\": \"%s\", \"seed\": %ld, \"options\": ",
            mode_name[opt.mode], transport_name[opt.transport], opt.workers,
            opt.cert ? "files" : opt.key == OMT_KEY_EC ? "ec" : "rsa",
            opt.tls == TLS1_3_VERSION ? "1.3" : "1.2", verify_name(), opt.reload_every,
            opt.kill_every, opt.kill_at == K_SAFE ? "safe" : "anywhere", opt.seed);
    json_str(f, opt.options ? opt.options : "");
    fprintf(f, "},\n  \"handshakes_ok\": %ld,\n  \"handshakes_failed\": %ld,\n"
            "  \"seconds\": %.6f,\n  \"serve_seconds\": %.6f,\n  \"rate_total\": %.1f,\n"
            "  \"rate_per_worker\": %.1f,\n",
            res.ok, res.failed, res.secs, res.serve, rate, rate / (double)opt.workers);
    fprintf(f, "  \"reloads\": %ld,\n  \"rebuilds\": %ld,\n  \"kills\": %ld,\n  \"kills_cutting\": %ld,\n",
            res.reloads, res.rebuilds, res.kills, res.cuts);
    if (opt.transport == T_SOCKET) {
        fprintf(f, "  \"clients\": {\"ok\": %ld, \"cut\": %ld, \"failed\": %ld, "
                "\"first_failure\": ", res.client_ok, res.client_cut, res.client_failed);
        json_str(f, atomic_load(&ctl->client_first_set) ? ctl->client_first : "");
        fprintf(f, "},\n");
    } else {
        fprintf(f, "  \"clients\": null,\n");
    }
    fprintf(f, "  \"memory\": {\"shared_peak\": %s, ", json_num(res.shared_peak, v, sizeof v));
    fprintf(f, "\"shared_end\": %s, ", json_num(res.shared_end, v, sizeof v));
    fprintf(f, "\"shared_after_last_retire\": %s, ", json_num(res.shared_left, v, sizeof v));
    fprintf(f, "\"contexts_left\": %s, ", json_num(res.contexts_left, v, sizeof v));
    fprintf(f, "\"private_peak_per_worker\": %" PRIu64 "},\n", res.priv_peak);
    fprintf(f, "  \"safety\": {");
    for (int i = 0; i < NF; i++)
        fprintf(f, "\"%s\": %s, ", fault_json[i], json_num(res.faults[i], v, sizeof v));
    fprintf(f, "\"shared_failed\": %s, ", json_num(res.shared_failed, v, sizeof v));
    fprintf(f, "\"lock_repairs\": %s, ", json_num(res.lock_repairs, v, sizeof v));
    fprintf(f, "\"locks_recovered\": %s, ", json_num(res.locks_recovered, v, sizeof v));
    fprintf(f, "\"lock_events_expected\": %s, ", lock_events_allowed() ? "true" : "false");
    fprintf(f, "\"check_problems\": %s, ", json_num(res.check_problems, v, sizeof v));
    fprintf(f, "\"inherited_frees_expected\": %s, ", opt.mode == M_SHARED ? "true" : "false");
    fprintf(f, "\"unexpected\": %s},\n", json_num(unexpected_events(), v, sizeof v));
    fprintf(f, "  \"check\": {\"master\": %s, \"workers_checked\": %ld, "
            "\"workers_unchecked\": %ld},\n", opt.mode == M_GLIBC || res.master_check < 0 ? "null"
            : json_num((uint64_t)res.master_check, v, sizeof v), res.checked, res.unchecked);
    fprintf(f, "  \"workers\": [");
    for (long i = 0; i < opt.workers; i++) {
        fprintf(f, "%s\n    {\"slot\": %ld, \"forked\": %ld, \"ok\": %ld, \"failed\": %ld, "
                "\"private_peak\": %" PRIu64 ", \"check\": %s, \"first_failure\": ", i ? "," : "",
                i, per[i].started, per[i].ok, per[i].failed, per[i].peak,
                opt.mode == M_GLIBC || per[i].check < 0 ? "null"
                : json_num((uint64_t)per[i].check, v, sizeof v));
        json_str(f, atomic_load(&ctl->slot[i].err_set) ? ctl->slot[i].err : "");
        fprintf(f, "}");
    }
    fprintf(f, "\n  ],\n  \"first_failure\": ");
    json_str(f, atomic_load(&ctl->first_set) ? ctl->first : "");
    fprintf(f, ",\n  \"verdict\": \"%s\"\n}\n", verdict);
    fclose(f);
}

/* Writes <s> to <g> as a gnuplot single-quoted string. */
static void gp_quote(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s; s++) { /* in gnuplot's single-quoted strings a quote is written twice */
        if (*s == '\'')
            fputc('\'', g);
        fputc(*s, g);
    }
    fputc('\'', g);
}

/*
 * Draws the timeline with gnuplot (fed on a pipe: no shell sees the file names) into --plot
 * FILE: handshakes/s on the left axis, shared and total private MiB on the right one.
 */
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
    if (!f) {
        fprintf(stderr, "ossl-mem-stress: --plot: %s; no plot written\n", strerror(errno));
        return;
    }
    for (long i = 1; i < n; i++) {
        uint64_t priv = 0;
        for (long w = 0; w < opt.workers; w++)
            priv += tl[i].priv[w];
        fprintf(f, "%.1f %.1f %.3f %.3f\n", tl[i].t,
                (tl[i].ok - tl[i - 1].ok) / (tl[i].t - tl[i - 1].t), tl[i].shared / 1048576.0,
                priv / 1048576.0);
    }
    fclose(f);
    fflush(NULL);
    FILE *g = popen("gnuplot", "w");
    int rc = -1;
    if (g) {
        fprintf(g, "set terminal svg size 900,500\nset output ");
        gp_quote(g, opt.plot);
        fprintf(g, "\nset title 'ossl-mem-stress: %s mode, %s transport, %ld workers'\n"
                "set xlabel 'seconds'\nset ylabel 'handshakes/s'\nset y2label 'MiB'\n"
                "set y2tics\nset ytics nomirror\nset key top left\nset yrange [0:*]\n"
                "set y2range [0:*]\nplot ", mode_name[opt.mode], transport_name[opt.transport],
                opt.workers);
        gp_quote(g, data);
        fprintf(g, " using 1:2 with lines title 'handshakes/s', '' using 1:3 axes x1y2 with "
                "lines title 'shared MiB', '' using 1:4 axes x1y2 with lines title 'private MiB "
                "(all workers)'\n");
        rc = pclose(g);
    }
    if (rc != 0)
        fprintf(stderr, "ossl-mem-stress: gnuplot failed; no plot written\n");
    unlink(data);
}

/* One line on stderr about input files that cannot be used, and exit status 2. */
static void __attribute__((noreturn, format(printf, 1, 2))) input_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ossl-mem-stress: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    remove_pki();
    exit(2);
}

/*
 * The user's files (--cert ...), before anything is forked: each pair must load and make a
 * context (a key that does not match its certificate, a CA file without a certificate), and a
 * server certificate that also serves as the client's (mutual, no --client-cert) must permit
 * client authentication (extended key usage clientAuth, or none). In the master's private
 * memory; runs after ossl_mem_init(), which must come before any OpenSSL call.
 */
static void check_files(void)
{
    char e[256];
    struct omt_pki p = {0};
    struct omt_opts o = {opt.tls, opt.verify};
    SSL_CTX *ctx = NULL;
    if (omt_pki_load(&p, srv_cert_f, srv_key_f, ca_f) != 0 || !(ctx = omt_server_ctx(&p, &o)))
        input_error("--cert %s --key-file %s --ca %s: unusable: %s", srv_cert_f, srv_key_f, ca_f,
                    openssl_error(e, sizeof e));
    SSL_CTX_free(ctx);
    omt_pki_free(&p);
    if (opt.verify != OMT_VERIFY_MUTUAL)
        return;
    if (omt_pki_load(&p, cli_cert_f, cli_key_f, ca_f) != 0 || !(ctx = omt_client_ctx(&p, &o)))
        input_error("--client-cert %s --client-key %s: unusable: %s", cli_cert_f, cli_key_f,
                    openssl_error(e, sizeof e));
    SSL_CTX_free(ctx);
    int purpose = X509_check_purpose(p.cli_cert, X509_PURPOSE_SSL_CLIENT, 0);
    omt_pki_free(&p);
    if (purpose != 1 && !opt.client_cert)
        input_error("--cert %s cannot be the client's certificate too (its key usage does not "
                    "permit TLS client authentication): give --client-cert and --client-key",
                    srv_cert_f);
    ERR_clear_error();
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    master_pid = getpid();
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
    if (opt.cert)
        check_files();
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
    signal(SIGHUP, on_stop);

    double t0 = now();
    running = 0;
    for (long i = 0; i < opt.workers; i++) {
        if (spawn_worker((int)i) < 0) {
            record_first("fork of a worker: %s", strerror(errno));
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
                die_with_master();
                signal(SIGINT, SIG_IGN);
                signal(SIGHUP, SIG_IGN);
                signal(SIGTERM, SIG_DFL);
                client_main();
            }
            if (clients[i] < 0) {
                record_first("fork of a client process: %s", strerror(errno));
                atomic_store(&ctl->stop, 1);
                clients[i] = 0;
            }
        }

    bool tty = isatty(STDERR_FILENO);
    unsigned rnd = (unsigned)opt.seed;
    long cap = (opt.seconds ? opt.seconds : 3600) + 2, n = 0;
    struct sample *tl = calloc((size_t)cap + 1, sizeof *tl);
    double next_sample = t0, next_progress = t0 + (tty ? 0.5 : 5), next_reload =
        t0 + (double)opt.reload_every;
    /* kill k falls in [t0 + k S, t0 + (k + 1) S): at its end for safe kills (then the worker is
       asked to park), at a uniformly random instant of it for kills anywhere */
    double kill_from = t0, next_kill = kill_time(kill_from, &rnd);
    double last_change = t0, stop_time = 0;
    long last_total = -1;
    while (running > 0) {
        double t = now();
        /* reap the workers that finished */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            /* clients, forked after the shared context was registered, are possible users */
            if (opt.mode != M_GLIBC)
                ossl_mem_worker_exited(pid);
            int idx = slot_of(pid);
            if (idx < 0) { /* a client: it leaves only when told to */
                for (long i = 0; i < opt.workers; i++)
                    if (clients[i] == pid)
                        clients[i] = 0;
                if (!atomic_load(&ctl->stop))
                    record_first("client process %d ended by itself (%s)", (int)pid,
                                 status_text(st));
                continue;
            }
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                record_first("worker %d ended with %s", (int)pid, status_text(st));
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
            record_first("interrupted by signal %d (%s)", (int)stop_signal,
                         strsignal(stop_signal));
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
                if (opt.kill_at == K_SAFE)
                    kill_safe(&rnd);
                else
                    kill_anywhere(&rnd);
                kill_from += opt.kill_every;
                next_kill = kill_time(kill_from, &rnd);
                /* a lock of the current context recovered from a dead holder: what it protected
                   may be half-changed, so rebuild the context as ossl_mem's documentation says */
                if (opt.mode == M_SHARED && cur && ossl_mem_ssl_ctx_locks_recovered(cur) > 0) {
                    reload(&cur);
                    res.rebuilds++;
                }
            }
            /* a worker that has not come back to the top of its loop for 20 s is stuck (a
               handshake gives up after 10 s): a stall, even while its siblings go on */
            for (long i = 0; i < opt.workers && !atomic_load(&ctl->stop); i++) {
                struct slot *s = &ctl->slot[i];
                uint64_t beat = atomic_load(&s->beat_ns), tn = now_ns();
                if (atomic_load(&s->pid) > 0 && atomic_load(&s->state) == S_RUN && tn > beat &&
                    tn - beat > 20000000000u) {
                    record_first("watchdog: worker %d (slot %ld) made no progress for 20 s "
                                 "(stalled); killed, run stopped", (int)atomic_load(&s->pid), i);
                    res.stalled = true;
                    atomic_store(&ctl->stop, 1);
                    kill(atomic_load(&s->pid), SIGKILL); /* reaped above, next time round */
                }
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
        /* every 20 ms, or at the instant of the next kill */
        double wake = t + 0.02;
        if (opt.kill_every && !atomic_load(&ctl->stop) && next_kill < wake)
            wake = next_kill;
        wake -= now();
        if (wake > 0)
            usleep((useconds_t)(wake * 1e6));
    }
    res.secs = now() - t0;
    /* the rate counts the serving only, not the workers' exit (OpenSSL's cleanup and, except in
       glibc mode, ossl_mem_check(): some milliseconds each, 1% of a 2-second run at 8 workers) */
    uint64_t last_ns = 0;
    for (long i = 0; i < opt.workers; i++)
        if (atomic_load(&ctl->slot[i].done_ns) > last_ns)
            last_ns = atomic_load(&ctl->slot[i].done_ns);
    res.serve = last_ns ? (double)last_ns / 1e9 - t0 : res.secs;
    atomic_store(&ctl->stop, 1);
    /* the clients leave by themselves: closing the listener (every worker is gone, and each
       client closed its copy) resets the connections still queued on it, and a client that sees
       the stop leaves (ossl_mem_ssl_ctx_done() takes the arena lock now and then: a client
       killed there would leave a repair behind). What is still there after 2 s is killed. */
    if (listen_fd >= 0) {
        close(listen_fd);
        listen_fd = -1;
    }
    for (double give_up = now() + 2; opt.transport == T_SOCKET;) {
        bool left = false;
        for (long i = 0; i < opt.workers; i++) {
            int st;
            if (clients[i] > 0 && now() >= give_up)
                kill(clients[i], SIGKILL);
            if (clients[i] > 0 && waitpid(clients[i], &st, now() >= give_up ? 0 : WNOHANG) == 0) {
                left = true;
                continue;
            }
            if (clients[i] > 0 && opt.mode != M_GLIBC)
                ossl_mem_worker_exited(clients[i]);
            clients[i] = 0;
        }
        if (!left)
            break;
        usleep(5000);
    }
    for (long i = 0; i < opt.workers; i++)
        retire_slot((int)i);
    totals(&res.ok, &res.failed);
    res.client_ok = atomic_load(&ctl->client_ok);
    res.client_cut = atomic_load(&ctl->client_cut);
    res.client_failed = atomic_load(&ctl->client_failed);
    for (int i = 0; i < NF; i++)
        res.faults[i] = atomic_load(&ctl->dead_faults[i]);
    if (opt.mode != M_GLIBC)
        res.shared_end = shared_used();
    if (opt.mode == M_SHARED && cur) {
        ossl_mem_retire_ssl_ctx(cur); /* every other process is gone: destroyed now */
        ossl_mem_reclaim();
    }
    if (opt.mode != M_GLIBC) {
        struct ossl_mem_stats st;
        res.master_check = ossl_mem_check();
        if (res.master_check > 0)
            res.check_problems += (uint64_t)res.master_check;
        if (ossl_mem_get_stats(&st) == 0) {
            uint64_t f[NF] = {st.double_frees, st.invalid_frees, st.inherited_frees,
                              st.overflows, st.uaf_writes, st.corrupt_headers, st.hooks_replaced};
            for (int i = 0; i < NF; i++)
                res.faults[i] += f[i];
            res.shared_failed = st.shared_failed;
            res.lock_repairs = st.shared_lock_repairs;
            res.locks_recovered = st.shared_locks_recovered;
            res.shared_left = st.shared_used;
            res.contexts_left = st.shared_contexts;
            if (st.shared_peak > res.shared_peak)
                res.shared_peak = st.shared_peak;
        }
    }
    double rate = res.serve > 0 ? res.ok / res.serve : 0;
    progress(res.secs, res.ok, res.failed, rate, tty, true);

    /* the verdict: every handshake verified, nothing unexpected */
    uint64_t unexpected = unexpected_events();
    char why[640] = "";
    if (res.failed)
        snprintf(why, sizeof why, "%ld handshakes failed; first failure: %s", res.failed,
                 atomic_load(&ctl->first_set) ? ctl->first : "?");
    else if (atomic_load(&ctl->first_set))
        snprintf(why, sizeof why, "%s", ctl->first);
    else if (res.client_failed)
        snprintf(why, sizeof why, "%ld client handshakes failed; first failure: %s",
                 res.client_failed, ctl->client_first);
    else if (res.client_cut > res.cuts)
        snprintf(why, sizeof why, "%ld client connections ended with the server vanishing, but "
                 "only %ld kills found a worker with a connection open", res.client_cut, res.cuts);
    else if (unexpected)
        snprintf(why, sizeof why, "%" PRIu64 " unexpected safety events (see the safety and "
                 "check lines)", unexpected);
    else if (res.ok == 0)
        snprintf(why, sizeof why, "no handshake was done");
    bool pass = why[0] == 0;
    print_report(pass, why, rate);
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
