/* prefork_bench.c - pre-fork servers: aggregate handshakes/s and total PSS of W workers with private SSL_CTXs (glibc, ossl_mem) or SSL_CTXs in ossl_mem's shared arena. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

#define PROG "prefork_bench"
#define MAX_WORKERS 64
#define MAX_WLIST 16         /* worker counts in --workers */
#define MAX_ROUNDS 1000
#define MAX_CERTS 100000
#define WARMUP_HANDSHAKES 10 /* per worker, before the start barrier (throughput) */

static const char usage[] =
    "usage: " PROG " [--workers LIST] [--rounds R] [--handshakes N] [--variants LIST]\n"
    "                     [--key ec|rsa] [--options STR] [--timeout SEC]\n"
    "                     [--pss | --both] [--pss-workers N] [--certs N] [--pss-handshakes N]\n"
    "                     [--help]\n"
    "Pre-fork TLS servers: W worker processes forked from one parent run TLS 1.3 handshakes\n"
    "with mutual certificate verification, both ends in the worker over a BIO pair. Each\n"
    "variant runs in a fresh process (this program re-executes itself), rounds interleave the\n"
    "variants and rotate their order every round. Variants:\n"
    "  glibc     OpenSSL on glibc malloc (ossl_mem never initialised); the parent makes the\n"
    "            PKI, every worker builds its own server and client SSL_CTX after the fork\n"
    "  ossl_mem  the same with ossl_mem installed (private contexts per worker)\n"
    "  shared    ossl_mem installed; the parent builds the PKI and both contexts in a shared\n"
    "            scope, registers them (ossl_mem_share_ssl_ctx) and forks; the workers use\n"
    "            them; at the end ossl_mem_worker_exited() per worker, then retire both\n"
    "Targets:\n"
    "  throughput (default): every worker builds or inherits its contexts, runs 10 warm-up\n"
    "            handshakes and waits at a start barrier; the time from the barrier to the\n"
    "            last worker's report gives the aggregate handshakes/s\n"
    "  memory (--pss): the server context also holds N extra trust anchors (self-signed\n"
    "            RSA-2048 CA certificates made once by this program, loaded from PEM in\n"
    "            memory); each worker runs M handshakes and waits; meanwhile this program\n"
    "            sums Pss: of /proc/PID/smaps_rollup over the parent and every worker\n"
    "Options:\n"
    "  --workers LIST       throughput: worker counts, comma-separated, 1..64 (default 1,2,4,8)\n"
    "  --handshakes N       throughput: timed handshakes per worker (default 300)\n"
    "  --rounds R           rounds per target (default 7)\n"
    "  --variants LIST      comma-separated from glibc, ossl_mem, shared (default glibc,shared);\n"
    "                       ratios are taken against glibc (or the first variant without it)\n"
    "  --key ec|rsa         P-256 (default) or RSA-2048 keys for the CA, server and client\n"
    "  --options STR        ossl_mem options for ossl_mem and shared (checked first; default:\n"
    "                       none, i.e. ossl_mem_init(NULL): defaults plus OSSL_MEM_OPTIONS)\n"
    "  --timeout SEC        time limit of one variant process with its workers (default:\n"
    "                       scaled from the work it is given)\n"
    "  --pss                run the memory target instead of the throughput target\n"
    "  --both               run the throughput target, then the memory target\n"
    "  --pss-workers N      memory: workers (default 8, at most 64)\n"
    "  --certs N            memory: extra trust anchors in the server context (default 200)\n"
    "  --pss-handshakes N   memory: handshakes per worker before the measurement (default 50)\n"
    "  --help               this text\n"
    "Output: one line per variant process, a table of medians per target and one summary line\n"
    "per target. Exit status 0 if every handshake verified, 1 on any failure (reason on\n"
    "stderr), 2 on bad arguments.\n";

enum variant { V_GLIBC, V_OSSL_MEM, V_SHARED, NVARIANTS };
static const char *const vname[NVARIANTS] = { "glibc", "ossl_mem", "shared" };

enum mode { M_TPUT, M_PSS };

/* What one variant process (a re-executed child) does; passed on its command line. */
struct job {
    enum variant v;        /* allocator and context placement */
    enum mode m;           /* throughput or memory */
    long workers;          /* workers to fork */
    long handshakes;       /* timed handshakes (throughput) or handshakes before the barrier (pss) */
    enum omt_key key;      /* key type of the PKI */
    long certs;            /* trust anchors in pem_fd (pss), 0 otherwise */
    int report_fd;         /* write end of the pipe to the launcher */
    int release_fd;        /* read end of the launcher's go-ahead after measuring (pss), -1 otherwise */
    int pem_fd;            /* memfd holding the anchors' PEM (pss), -1 otherwise */
    const char *options;   /* ossl_mem options, NULL: ossl_mem_init(NULL) */
};

/* Variant process -> launcher. MSG_PIDS (pss only) asks the launcher to measure the listed
 * processes and write one byte to release_fd; MSG_FINAL ends the conversation. */
enum { MSG_PIDS = 1, MSG_FINAL = 2 };
struct msg {
    int kind;                       /* MSG_* */
    int ok;                         /* MSG_FINAL: 1 if everything verified and was torn down */
    char err[256];                  /* MSG_FINAL: first failure when !ok */
    int npids;                      /* MSG_PIDS: entries in pids */
    pid_t pids[MAX_WORKERS + 1];    /* MSG_PIDS: the variant process, then its workers */
    double hs_per_s;                /* aggregate: workers * handshakes / wall */
    double wall_s;                  /* start barrier to the last worker's report */
    double wk_min, wk_max;          /* slowest and fastest worker's own rate */
    long anchors;                   /* objects in the server context's store (pss) */
    uint64_t arena_used;            /* shared: arena bytes in use once the contexts were built */
    uint64_t contexts_left;         /* shared: registered contexts left after the retires */
    int retire_rc[2];               /* shared: ossl_mem_retire_ssl_ctx() for server, client */
};

/* Worker -> variant process, through one pipe shared by all workers. */
enum { PH_READY = 1, PH_DONE = 2 };
struct worker_msg {
    int phase;        /* PH_READY: contexts built, warm-up (or pss handshakes) done; PH_DONE */
    int idx;          /* worker index */
    int ok;           /* 0: failure, err says why */
    double secs;      /* PH_DONE: time of the worker's own timed handshakes */
    long anchors;     /* PH_READY: objects in its server context's store (pss) */
    char err[200];    /* first failure */
};
_Static_assert(sizeof(struct worker_msg) <= PIPE_BUF, "worker messages must be atomic writes");

/* A forked worker as its parent sees it. */
struct wk {
    pid_t pid;        /* 0 before the fork */
    int phase;        /* last phase it reported */
    int reaped;       /* 1 once waitpid() returned it */
    int status;       /* its wait status, once reaped */
    double secs;      /* its timed handshakes' duration */
    long anchors;     /* objects in its server context's store (pss) */
};

/* The anchors' PEM as a variant process sees it (mapped from the launcher's memfd). */
struct pem_buf {
    const char *p;    /* NULL when there are no anchors */
    size_t len;       /* bytes */
    long n;           /* certificates expected */
};

/* Memory figures of one process or a sum, in KiB, from smaps_rollup. */
struct pss_fig {
    long rss, pss, anon, file, shmem;
};

static volatile sig_atomic_t alarm_fired;
static volatile pid_t alarm_pgid; /* the running variant's process group, killed by the alarm */

/* SIGALRM: the variant process overran its limit; kill its whole group (it and its workers)
 * right here so that a blocked read()/waitid() in the launcher returns. */
static void on_alarm(int sig)
{
    (void)sig;
    alarm_fired = 1;
    if (alarm_pgid > 0)
        kill(-alarm_pgid, SIGKILL);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prints one line on stderr and exits with status 2 (bad command-line input). */
static void __attribute__((noreturn, format(printf, 1, 2))) bad_arg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (try --help)\n", stderr);
    va_end(ap);
    exit(2);
}

static void __attribute__((noreturn)) oom(void)
{
    fprintf(stderr, PROG ": out of memory\n");
    exit(1);
}

/* Parses a decimal integer in [min, max] for option <opt>; exits 2 on anything else. */
static long num_arg(const char *opt, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long n = v && *v ? strtol(v, &end, 10) : LONG_MIN;
    if (!v || !*v || errno || *end || n < min || n > max)
        bad_arg("%s needs a whole number from %ld to %ld, got '%s'", opt, min, max, v ? v : "");
    return n;
}

/* Records the first failure in <err> (printf-style); later ones are dropped. */
static void __attribute__((format(printf, 3, 4))) fail(char *err, size_t len, const char *fmt, ...)
{
    if (err[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    if (!err[0])
        snprintf(err, len, "unknown error");
}

/* write() of the whole buffer, retried on EINTR. Returns 0 or -1. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* read() until <len> bytes, EOF or an error; EINTR retries. Returns the bytes read. */
static size_t read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0 || errno != EINTR)
            break;
    }
    return got;
}

/* "exit status N" or "killed by signal N" for a wait status. */
static const char *status_text(int st, char *buf, size_t len)
{
    if (WIFSIGNALED(st))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
    return buf;
}

/* ------------------------------------------------------------------ */
/* Variant process: contexts, workers                                  */
/* ------------------------------------------------------------------ */

/*
 * Adds every certificate in <pem> to the trust store of <ctx>. Returns the number added, or -1
 * with <err> filled. Allocations land wherever the caller's scope sends them.
 */
static long add_anchors(SSL_CTX *ctx, const struct pem_buf *pem, char *err, size_t len)
{
    BIO *b = BIO_new_mem_buf(pem->p, (int)pem->len);
    X509_STORE *st = SSL_CTX_get_cert_store(ctx);
    long n = 0;
    if (!b || !st) {
        BIO_free(b);
        fail(err, len, "cannot read the anchors' PEM");
        return -1;
    }
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_cert(st, x);
        X509_free(x);
        if (!ok) {
            BIO_free(b);
            fail(err, len, "X509_STORE_add_cert failed at anchor %ld", n + 1);
            return -1;
        }
        n++;
    }
    ERR_clear_error(); /* the end of the PEM leaves "no start line" */
    BIO_free(b);
    return n;
}

/*
 * Makes the server and client contexts of <pki> (TLS 1.3, mutual verification); with anchors,
 * adds them to the server's store and checks they are all there. Returns 0, or -1 with <err>
 * filled and both contexts freed.
 */
static int make_ctxs(const struct omt_pki *pki, const struct pem_buf *pem, SSL_CTX **srv,
                     SSL_CTX **cli, long *anchors, char *err, size_t len)
{
    struct omt_opts o = { .tls_version = TLS1_3_VERSION, .verify = OMT_VERIFY_MUTUAL };
    *srv = omt_server_ctx(pki, &o);
    *cli = omt_client_ctx(pki, &o);
    if (!*srv || !*cli) {
        fail(err, len, "cannot make the TLS contexts");
        goto bad;
    }
    if (pem->p) {
        long n = add_anchors(*srv, pem, err, len);
        if (n < 0)
            goto bad;
        if (n != pem->n) {
            fail(err, len, "read %ld anchors from the PEM, expected %ld", n, pem->n);
            goto bad;
        }
        *anchors = sk_X509_OBJECT_num(X509_STORE_get0_objects(SSL_CTX_get_cert_store(*srv)));
    }
    return 0;
bad:
    SSL_CTX_free(*srv);
    SSL_CTX_free(*cli);
    *srv = *cli = NULL;
    return -1;
}

/* Runs <n> verified handshakes; returns 0, or -1 with the first failure in m->err. */
static int run_handshakes(SSL_CTX *srv, SSL_CTX *cli, long n, const char *what,
                          struct worker_msg *m)
{
    for (long i = 0; i < n; i++) {
        struct omt_result r;
        if (omt_handshake_bio(srv, cli, &r) != 0 || !r.ok) {
            m->ok = 0;
            snprintf(m->err, sizeof(m->err), "%s handshake %ld: %.150s", what, i + 1,
                     r.err[0] ? r.err : "failed");
            return -1;
        }
    }
    return 0;
}

/*
 * A worker's life. <srv>/<cli> are the shared contexts, or NULL: then it builds its own from
 * <pki> (and <pem>). It reports PH_READY on <res_fd> once it built them and ran its warm-up
 * (throughput) or its pss handshakes (memory), then waits for EOF on <go_fd>. Throughput: it
 * then times job->handshakes handshakes and reports PH_DONE. Exits 0, or 1 after reporting a
 * failure. Never returns.
 */
static void __attribute__((noreturn)) worker_main(const struct job *j, int idx, pid_t parent,
                                                  const struct omt_pki *pki, SSL_CTX *srv,
                                                  SSL_CTX *cli, const struct pem_buf *pem,
                                                  int res_fd, int go_fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    struct worker_msg m;
    memset(&m, 0, sizeof(m));
    m.phase = PH_READY;
    m.idx = idx;
    m.ok = 1;
    if (!srv && make_ctxs(pki, pem, &srv, &cli, &m.anchors, m.err, sizeof(m.err)) != 0)
        m.ok = 0;
    if (m.ok) {
        if (j->m == M_TPUT)
            run_handshakes(srv, cli, WARMUP_HANDSHAKES, "warm-up", &m);
        else
            run_handshakes(srv, cli, j->handshakes, "pre-measurement", &m);
    }
    if (write_all(res_fd, &m, sizeof(m)) != 0 || !m.ok)
        _exit(1);
    char c;
    while (read(go_fd, &c, 1) < 0 && errno == EINTR)
        ;
    if (j->m == M_PSS)
        _exit(0); /* contexts are left to _exit, as everything else */
    m.phase = PH_DONE;
    double t0 = now();
    run_handshakes(srv, cli, j->handshakes, "timed", &m);
    m.secs = now() - t0;
    if (write_all(res_fd, &m, sizeof(m)) != 0 || !m.ok)
        _exit(1);
    _exit(0);
}

/*
 * Reads every message waiting in the nonblocking <fd>. Each must be of <phase>; it is counted in
 * *count and its arrival time goes to *t_last. Sets *eof when every writer is gone. Returns 0,
 * or -1 with <err> filled on a failure report or a bad message.
 */
static int drain(int fd, struct wk *w, long nw, int phase, long *count, double *t_last, int *eof,
                 char *err, size_t len)
{
    for (;;) {
        struct worker_msg m;
        ssize_t r = read(fd, &m, sizeof(m));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r == 0) {
            *eof = 1;
            return 0;
        }
        if (r != (ssize_t)sizeof(m)) {
            fail(err, len, "bad message from a worker (%zd bytes)", r);
            return -1;
        }
        if (m.idx < 0 || m.idx >= nw || m.phase != phase || w[m.idx].phase >= phase) {
            fail(err, len, "unexpected message from a worker (index %d, phase %d)", m.idx,
                 m.phase);
            return -1;
        }
        if (!m.ok) {
            m.err[sizeof(m.err) - 1] = 0;
            fail(err, len, "worker %d (pid %ld): %s", m.idx, (long)w[m.idx].pid, m.err);
            return -1;
        }
        w[m.idx].phase = phase;
        w[m.idx].secs = m.secs;
        if (phase == PH_READY)
            w[m.idx].anchors = m.anchors;
        (*count)++;
        *t_last = now();
    }
}

/*
 * Waits until every worker reported <phase> on <fd>; a worker that ends without doing so is a
 * failure. Returns 0 with the last arrival time in *t_last, or -1 with <err> filled.
 */
static int collect(int fd, struct wk *w, long nw, int phase, double *t_last, char *err,
                   size_t len)
{
    long count = 0;
    int eof = 0;
    while (count < nw) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 250) < 0 && errno != EINTR) {
            fail(err, len, "poll: %s", strerror(errno));
            return -1;
        }
        if (drain(fd, w, nw, phase, &count, t_last, &eof, err, len) != 0)
            return -1;
        if (count == nw)
            break;
        /* Workers that ended: after EOF at least one is ending, so wait for it. */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, eof ? 0 : WNOHANG)) > 0) {
            for (long i = 0; i < nw; i++)
                if (w[i].pid == pid) {
                    w[i].reaped = 1;
                    w[i].status = st;
                }
            eof = 0;
        }
        /* A message written just before the exit is in the pipe by now. */
        if (drain(fd, w, nw, phase, &count, t_last, &eof, err, len) != 0)
            return -1;
        for (long i = 0; i < nw; i++)
            if (w[i].reaped && w[i].phase < phase) {
                char how[48];
                fail(err, len, "worker %ld (pid %ld) ended without reporting (%s)", i,
                     (long)w[i].pid, status_text(w[i].status, how, sizeof(how)));
                return -1;
            }
    }
    return 0;
}

/* Kills (when <kill_them>) and reaps every worker not yet reaped; for the shared variant tells
 * ossl_mem each one is gone. Returns 0, or -1 with <err> filled if ossl_mem refused one. */
static int reap_all(const struct job *j, struct wk *w, long nw, int kill_them, char *err,
                    size_t len)
{
    int rc = 0;
    for (long i = 0; i < nw; i++) {
        if (w[i].pid <= 0)
            continue;
        if (!w[i].reaped) {
            if (kill_them)
                kill(w[i].pid, SIGKILL);
            while (waitpid(w[i].pid, &w[i].status, 0) < 0 && errno == EINTR)
                ;
            w[i].reaped = 1;
        }
        if (j->v == V_SHARED) {
            int e = ossl_mem_worker_exited(w[i].pid);
            if (e < 0) {
                fail(err, len, "ossl_mem_worker_exited(%ld): %s", (long)w[i].pid,
                     ossl_mem_strerror(e));
                rc = -1;
            }
        }
    }
    return rc;
}

/* Maps the anchors' PEM from <fd> (then closed) into *pem. Returns 0 or -1 with <err>. */
static int map_pem(int fd, long n, struct pem_buf *pem, char *err, size_t len)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size <= 0 || sb.st_size > INT_MAX) {
        fail(err, len, "the anchors' PEM (fd %d) is missing or empty", fd);
        return -1;
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        fail(err, len, "mmap of the anchors' PEM: %s", strerror(errno));
        return -1;
    }
    pem->p = p;
    pem->len = (size_t)sb.st_size;
    pem->n = n;
    return 0;
}

/*
 * The variant process: installs its allocator (shared, ossl_mem) or none (glibc), makes the
 * PKI (and for shared both contexts in one shared scope), forks the workers, runs the barrier,
 * and for pss hands the pids to the launcher until it releases them. Writes MSG_FINAL to
 * j->report_fd and returns the exit status (0 once the report is written).
 */
static int child_main(const struct job *j)
{
    struct msg fin;
    memset(&fin, 0, sizeof(fin));
    fin.kind = MSG_FINAL;
    char *err = fin.err;
    size_t elen = sizeof(fin.err);
    struct omt_pki pki;
    memset(&pki, 0, sizeof(pki));
    struct pem_buf pem = { 0 };
    SSL_CTX *srv = NULL, *cli = NULL;
    struct wk w[MAX_WORKERS];
    memset(w, 0, sizeof(w));
    long nw = j->workers;
    int res[2] = { -1, -1 }, go[2] = { -1, -1 };
    int rc;

    if (j->v != V_GLIBC) {
        if (j->options) {
            struct ossl_mem_config cfg;
            memset(&cfg, 0, sizeof(cfg));
            cfg.version = OSSL_MEM_CONFIG_VERSION;
            cfg.options = j->options;
            rc = ossl_mem_init(&cfg);
        } else {
            rc = ossl_mem_init(NULL);
        }
        if (rc != 0) {
            fail(err, elen, "ossl_mem_init: %s", ossl_mem_strerror(rc));
            goto out;
        }
    }
    if (j->m == M_PSS && map_pem(j->pem_fd, j->certs, &pem, err, elen) != 0)
        goto out;

    if (j->v == V_SHARED) {
        if ((rc = ossl_mem_shared_begin()) != 0) {
            fail(err, elen, "ossl_mem_shared_begin: %s (the shared variant needs ossl_mem's "
                 "shared arena)", ossl_mem_strerror(rc));
            goto out;
        }
        if (omt_pki_make(&pki, j->key) != 0)
            fail(err, elen, "omt_pki_make failed in the shared scope");
        else
            make_ctxs(&pki, &pem, &srv, &cli, &fin.anchors, err, elen);
        if ((rc = ossl_mem_shared_end()) != 0)
            fail(err, elen, "ossl_mem_shared_end: %s", ossl_mem_strerror(rc));
        if (err[0])
            goto out;
        if ((rc = ossl_mem_share_ssl_ctx(srv)) != 0 || (rc = ossl_mem_share_ssl_ctx(cli)) != 0) {
            fail(err, elen, "ossl_mem_share_ssl_ctx: %s", ossl_mem_strerror(rc));
            goto out;
        }
        struct ossl_mem_stats st;
        if (ossl_mem_get_stats(&st) == 0)
            fin.arena_used = st.shared_used;
    } else if (omt_pki_make(&pki, j->key) != 0) {
        fail(err, elen, "omt_pki_make failed");
        goto out;
    }

    if (pipe(res) != 0 || pipe(go) != 0) {
        fail(err, elen, "pipe: %s", strerror(errno));
        goto out;
    }
    fcntl(res[0], F_SETFL, fcntl(res[0], F_GETFL) | O_NONBLOCK);
    fflush(NULL);
    pid_t me = getpid();
    for (long i = 0; i < nw; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fail(err, elen, "fork: %s", strerror(errno));
            goto out;
        }
        if (pid == 0) {
            close(res[0]);
            close(go[1]);
            close(j->report_fd);
            if (j->release_fd >= 0)
                close(j->release_fd);
            worker_main(j, (int)i, me, &pki, srv, cli, &pem, res[1], go[0]);
        }
        w[i].pid = pid;
    }
    close(res[1]);
    close(go[0]);
    res[1] = go[0] = -1;

    double t_ready = 0, t_last = 0;
    if (collect(res[0], w, nw, PH_READY, &t_ready, err, elen) != 0)
        goto out;
    if (j->m == M_PSS) {
        if (j->v != V_SHARED) /* private contexts: every worker must hold the same store */
            for (long i = 0; i < nw; i++) {
                if (w[i].anchors != w[0].anchors) {
                    fail(err, elen, "worker %ld holds %ld trust store objects, worker 0 %ld", i,
                         w[i].anchors, w[0].anchors);
                    goto out;
                }
                fin.anchors = w[i].anchors;
            }
        struct msg pm;
        memset(&pm, 0, sizeof(pm));
        pm.kind = MSG_PIDS;
        pm.npids = (int)nw + 1;
        pm.pids[0] = me;
        for (long i = 0; i < nw; i++)
            pm.pids[i + 1] = w[i].pid;
        char c;
        if (write_all(j->report_fd, &pm, sizeof(pm)) != 0 || read_full(j->release_fd, &c, 1) != 1) {
            fail(err, elen, "lost the launcher while it measured");
            goto out;
        }
        close(go[1]);
        go[1] = -1;
    } else {
        double t0 = now();
        close(go[1]); /* the start barrier: every worker sees EOF */
        go[1] = -1;
        if (collect(res[0], w, nw, PH_DONE, &t_last, err, elen) != 0)
            goto out;
        fin.wall_s = t_last - t0;
        fin.hs_per_s = (double)(nw * j->handshakes) / fin.wall_s;
        fin.wk_min = fin.wk_max = (double)j->handshakes / w[0].secs;
        for (long i = 1; i < nw; i++) {
            double r = (double)j->handshakes / w[i].secs;
            fin.wk_min = r < fin.wk_min ? r : fin.wk_min;
            fin.wk_max = r > fin.wk_max ? r : fin.wk_max;
        }
    }
    if (reap_all(j, w, nw, 0, err, elen) != 0)
        goto out;
    for (long i = 0; i < nw; i++)
        if (!WIFEXITED(w[i].status) || WEXITSTATUS(w[i].status) != 0) {
            char how[48];
            fail(err, elen, "worker %ld (pid %ld) ended badly (%s)", i, (long)w[i].pid,
                 status_text(w[i].status, how, sizeof(how)));
            goto out;
        }
    if (j->v == V_SHARED) {
        /* Every worker is reported gone: the contexts can go at once. The PKI's objects are
         * the owner's to free; the contexts keep their own references until destroyed. */
        omt_pki_free(&pki);
        fin.retire_rc[0] = ossl_mem_retire_ssl_ctx(srv);
        fin.retire_rc[1] = ossl_mem_retire_ssl_ctx(cli);
        srv = cli = NULL;
        if (fin.retire_rc[0] < 0 || fin.retire_rc[1] < 0) {
            fail(err, elen, "ossl_mem_retire_ssl_ctx: %s",
                 ossl_mem_strerror(fin.retire_rc[0] < 0 ? fin.retire_rc[0] : fin.retire_rc[1]));
            goto out;
        }
        struct ossl_mem_stats st;
        if (ossl_mem_get_stats(&st) == 0)
            fin.contexts_left = st.shared_contexts;
    }
out:
    if (err[0])
        reap_all(j, w, nw, 1, err, elen);
    fin.ok = !err[0];
    /* Contexts, PKI and pipes are left to _exit: tearing them down is not measured. */
    if (write_all(j->report_fd, &fin, sizeof(fin)) != 0)
        return 1;
    return 0;
}

/* Parses the re-executed child's command line: --child VARIANT MODE WORKERS HANDSHAKES KEY CERTS
 * REPORT_FD RELEASE_FD PEM_FD OPTIONS (OPTIONS "" for none). Exits 2 on anything else. */
static void parse_child(int argc, char **argv, struct job *j)
{
    if (argc != 12)
        bad_arg("--child takes 10 values (it is for this program's own use)");
    memset(j, 0, sizeof(*j));
    int v;
    for (v = 0; v < NVARIANTS; v++)
        if (strcmp(argv[2], vname[v]) == 0)
            break;
    if (v == NVARIANTS)
        bad_arg("--child: unknown variant '%s'", argv[2]);
    j->v = (enum variant)v;
    if (strcmp(argv[3], "throughput") == 0)
        j->m = M_TPUT;
    else if (strcmp(argv[3], "pss") == 0)
        j->m = M_PSS;
    else
        bad_arg("--child: unknown mode '%s'", argv[3]);
    j->workers = num_arg("--child workers", argv[4], 1, MAX_WORKERS);
    j->handshakes = num_arg("--child handshakes", argv[5], 1, 10000000);
    if (strcmp(argv[6], "ec") == 0)
        j->key = OMT_KEY_EC;
    else if (strcmp(argv[6], "rsa") == 0)
        j->key = OMT_KEY_RSA;
    else
        bad_arg("--child: unknown key '%s'", argv[6]);
    j->certs = num_arg("--child certs", argv[7], 0, MAX_CERTS);
    j->report_fd = (int)num_arg("--child report fd", argv[8], 0, INT_MAX);
    j->release_fd = (int)num_arg("--child release fd", argv[9], -1, INT_MAX);
    j->pem_fd = (int)num_arg("--child pem fd", argv[10], -1, INT_MAX);
    j->options = argv[11][0] ? argv[11] : NULL;
    if (j->m == M_PSS && (j->release_fd < 0 || j->pem_fd < 0 || j->certs == 0))
        bad_arg("--child: pss needs a release fd, a pem fd and certs");
}

/* ------------------------------------------------------------------ */
/* Launcher                                                            */
/* ------------------------------------------------------------------ */

struct cfg {
    int variants[NVARIANTS];      /* in command-line order */
    int nvars;
    long wlist[MAX_WLIST];        /* --workers */
    int nw;
    long rounds, handshakes;
    enum omt_key key;
    const char *options;          /* --options or NULL */
    unsigned timeout;             /* 0: scaled per job */
    int tput, pss;                /* targets to run */
    long pss_workers, certs, pss_handshakes;
};

/* Reads the KiB figures of /proc/<pid>/smaps_rollup (or, on kernels without it, sums
 * /proc/<pid>/smaps) into *f. Returns 0 or -1 with <err>. */
static int read_pss(pid_t pid, struct pss_fig *f, char *err, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/smaps_rollup", (long)pid);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(path, sizeof(path), "/proc/%ld/smaps", (long)pid);
        fp = fopen(path, "r");
    }
    if (!fp) {
        fail(err, len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    memset(f, 0, sizeof(*f));
    char line[256];
    int seen = 0;
    while (fgets(line, sizeof(line), fp)) {
        long kb;
        if (sscanf(line, "Pss: %ld kB", &kb) == 1)
            f->pss += kb, seen = 1;
        else if (sscanf(line, "Rss: %ld kB", &kb) == 1)
            f->rss += kb;
        else if (sscanf(line, "Pss_Anon: %ld kB", &kb) == 1)
            f->anon += kb;
        else if (sscanf(line, "Pss_File: %ld kB", &kb) == 1)
            f->file += kb;
        else if (sscanf(line, "Pss_Shmem: %ld kB", &kb) == 1)
            f->shmem += kb;
    }
    fclose(fp);
    if (!seen) {
        fail(err, len, "no Pss: line in %s", path);
        return -1;
    }
    return 0;
}

/* One measured memory run: the parent and each worker. */
struct pss_run {
    struct pss_fig parent;               /* the variant process */
    struct pss_fig wk[MAX_WORKERS];      /* its workers */
    struct pss_fig total;                /* parent + workers */
};

/*
 * Runs one variant process for <j> (its fds are filled in here) from the executable <self>:
 * forks, re-executes, serves its MSG_PIDS requests by measuring into *pr, and waits for its
 * MSG_FINAL in *fin, at most <timeout> s. Returns 0 if it reported success and exited 0, else -1
 * with fin->err describing the failure.
 */
static int run_child(const struct job *jin, unsigned timeout, struct msg *fin, struct pss_run *pr)
{
    struct job j = *jin;
    memset(fin, 0, sizeof(*fin));
    int rep[2] = { -1, -1 }, rel[2] = { -1, -1 };
    if (pipe(rep) != 0 || (j.m == M_PSS && pipe(rel) != 0)) {
        snprintf(fin->err, sizeof(fin->err), "pipe: %s", strerror(errno));
        return -1;
    }
    j.report_fd = rep[1];
    j.release_fd = rel[0];
    char a_w[24], a_n[24], a_c[24], a_rep[24], a_rel[24], a_pem[24];
    snprintf(a_w, sizeof(a_w), "%ld", j.workers);
    snprintf(a_n, sizeof(a_n), "%ld", j.handshakes);
    snprintf(a_c, sizeof(a_c), "%ld", j.certs);
    snprintf(a_rep, sizeof(a_rep), "%d", j.report_fd);
    snprintf(a_rel, sizeof(a_rel), "%d", j.release_fd);
    snprintf(a_pem, sizeof(a_pem), "%d", j.pem_fd);
    char *argv[] = { PROG, "--child", (char *)vname[j.v], j.m == M_PSS ? "pss" : "throughput",
                     a_w, a_n, j.key == OMT_KEY_RSA ? "rsa" : "ec", a_c, a_rep, a_rel, a_pem,
                     (char *)(j.options ? j.options : ""), NULL };
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(fin->err, sizeof(fin->err), "fork: %s", strerror(errno));
        close(rep[0]);
        close(rep[1]);
        if (rel[0] >= 0) {
            close(rel[0]);
            close(rel[1]);
        }
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        alarm(0);
        signal(SIGPIPE, SIG_DFL); /* an ignored signal would survive the exec */
        close(rep[0]);
        if (rel[1] >= 0)
            close(rel[1]);
        execv("/proc/self/exe", argv);
        fprintf(stderr, PROG ": cannot re-execute /proc/self/exe: %s\n", strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: the group must exist before the alarm can kill it */
    close(rep[1]);
    if (rel[0] >= 0)
        close(rel[0]);

    alarm_fired = 0;
    alarm_pgid = pid;
    alarm(timeout);
    int got_final = 0;
    char why[256] = "";
    for (;;) {
        struct msg m;
        if (read_full(rep[0], &m, sizeof(m)) != sizeof(m))
            break;
        if (m.kind == MSG_FINAL) {
            *fin = m;
            got_final = 1;
            break;
        }
        if (m.kind != MSG_PIDS || !pr || m.npids < 1 || m.npids > MAX_WORKERS + 1) {
            fail(why, sizeof(why), "bad message from the variant process");
            break;
        }
        memset(pr, 0, sizeof(*pr));
        for (int i = 0; i < m.npids && !why[0]; i++) {
            struct pss_fig f;
            if (read_pss(m.pids[i], &f, why, sizeof(why)) != 0)
                break;
            if (i == 0)
                pr->parent = f;
            else
                pr->wk[i - 1] = f;
            pr->total.rss += f.rss;
            pr->total.pss += f.pss;
            pr->total.anon += f.anon;
            pr->total.file += f.file;
            pr->total.shmem += f.shmem;
        }
        if (why[0])
            break;
        if (write_all(rel[1], "g", 1) != 0) {
            fail(why, sizeof(why), "cannot release the variant process: %s", strerror(errno));
            break;
        }
    }
    if (why[0] || !got_final)
        kill(-pid, SIGKILL); /* the leader is not reaped yet: the group id is still ours */
    /* Wait for the exit but leave the zombie, so the group cannot be reused while the alarm may
     * still kill it; disarm, then reap. */
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    alarm(0);
    alarm_pgid = 0;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    close(rep[0]);
    if (rel[1] >= 0)
        close(rel[1]);

    if (alarm_fired) {
        snprintf(fin->err, sizeof(fin->err), "timed out after %u s (killed with its workers)",
                 timeout);
        return -1;
    }
    if (why[0]) {
        snprintf(fin->err, sizeof(fin->err), "%s", why);
        return -1;
    }
    if (!got_final) {
        char how[48];
        snprintf(fin->err, sizeof(fin->err), "variant process died without a report (%s)",
                 status_text(status, how, sizeof(how)));
        return -1;
    }
    fin->err[sizeof(fin->err) - 1] = 0;
    if (!fin->ok)
        return -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char how[48];
        snprintf(fin->err, sizeof(fin->err), "variant process ended abnormally (%s)",
                 status_text(status, how, sizeof(how)));
        return -1;
    }
    return 0;
}

/*
 * Makes <n> self-signed RSA-2048 CA certificates with distinct subjects (one key for all: the
 * cost per certificate in a trust store is the same) and writes them as PEM into a new memfd
 * that survives exec. Returns the fd, or -1 with a message on stderr. Uses OpenSSL in the
 * launcher, which never installs ossl_mem; the variants run in fresh processes.
 */
static int make_anchors(long n)
{
    int fd = -1;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    BIO *mem = BIO_new(BIO_s_mem());
    X509 *x = NULL;
    if (!key || !mem)
        goto bad;
    uint64_t base = (uint64_t)time(NULL) << 20;
    for (long i = 0; i < n; i++) {
        char cn[64];
        X509V3_CTX v3;
        X509_EXTENSION *ext;
        static const struct { int nid; const char *value; } exts[] = {
            { NID_basic_constraints, "critical,CA:TRUE" },
            { NID_key_usage, "critical,keyCertSign,cRLSign" },
            { NID_subject_key_identifier, "hash" },
        };
        snprintf(cn, sizeof(cn), "prefork_bench trust anchor %05ld", i + 1);
        if (!(x = X509_new()) || !X509_set_version(x, 2)
            || !ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), base + (uint64_t)i)
            || !X509_gmtime_adj(X509_getm_notBefore(x), -3600)
            || !X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 86400)
            || !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "O", MBSTRING_ASC,
                                           (const unsigned char *)"ossl_mem bench", -1, -1, 0)
            || !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                           (const unsigned char *)cn, -1, -1, 0)
            || !X509_set_issuer_name(x, X509_get_subject_name(x)) || !X509_set_pubkey(x, key))
            goto bad;
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        for (size_t e = 0; e < sizeof(exts) / sizeof(exts[0]); e++) {
            ext = X509V3_EXT_nconf_nid(NULL, &v3, exts[e].nid, exts[e].value);
            int ok = ext && X509_add_ext(x, ext, -1);
            X509_EXTENSION_free(ext);
            if (!ok)
                goto bad;
        }
        if (!X509_sign(x, key, EVP_sha256()) || !PEM_write_bio_X509(mem, x))
            goto bad;
        X509_free(x);
        x = NULL;
    }
    char *data;
    long len = BIO_get_mem_data(mem, &data);
    fd = memfd_create(PROG "-anchors", 0); /* no MFD_CLOEXEC: the variants inherit it */
    if (fd < 0 || len <= 0 || write_all(fd, data, (size_t)len) != 0) {
        fprintf(stderr, PROG ": cannot store the anchors' PEM: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    goto out;
bad:;
    const char *why = ERR_reason_error_string(ERR_peek_last_error());
    fprintf(stderr, PROG ": cannot make the trust anchors: %s\n", why ? why : "unknown error");
out:
    X509_free(x);
    BIO_free(mem);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return fd;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of a[0..n-1] (n >= 1); sorts a copy, leaves a alone. */
static double median(const double *a, long n)
{
    double *c = malloc((size_t)n * sizeof(*c));
    if (!c)
        oom();
    memcpy(c, a, (size_t)n * sizeof(*c));
    qsort(c, (size_t)n, sizeof(*c), cmp_double);
    double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

static double dmin(const double *a, long n)
{
    double m = a[0];
    for (long i = 1; i < n; i++)
        m = a[i] < m ? a[i] : m;
    return m;
}

static double dmax(const double *a, long n)
{
    double m = a[0];
    for (long i = 1; i < n; i++)
        m = a[i] > m ? a[i] : m;
    return m;
}

/* Median over the rounds of a[r] / b[r]. */
static double paired(const double *a, const double *b, long n)
{
    double *q = malloc((size_t)n * sizeof(*q));
    if (!q)
        oom();
    for (long r = 0; r < n; r++)
        q[r] = a[r] / b[r];
    double m = median(q, n);
    free(q);
    return m;
}

/* The reference variant for ratios: glibc if it runs, else the first. Returns its index. */
static int base_index(const struct cfg *c)
{
    for (int k = 0; k < c->nvars; k++)
        if (c->variants[k] == V_GLIBC)
            return k;
    return 0;
}

/* Time limit of one variant process: the configured one, or one scaled from its work. */
static unsigned limit(const struct cfg *c, double secs)
{
    if (c->timeout)
        return c->timeout;
    return secs > 86400 ? 86400 : (unsigned)secs;
}

/* Announces and exits 1 after a failed variant process. */
static void __attribute__((noreturn)) job_failed(const char *target, long r, long w, int v,
                                                 const char *why)
{
    if (w)
        fprintf(stderr, PROG ": %s, round %ld, %ld workers, variant %s: FAILED: %s\n", target,
                r + 1, w, vname[v], why[0] ? why : "unknown error");
    else
        fprintf(stderr, PROG ": %s, round %ld, variant %s: FAILED: %s\n", target, r + 1,
                vname[v], why[0] ? why : "unknown error");
    exit(1);
}

/* The throughput target: rounds x worker counts x variants (rotated), then the table and the
 * summary line. Exits 1 on a failure. */
static void throughput(const struct cfg *c)
{
    long R = c->rounds;
    int nv = c->nvars, base = base_index(c);
    double *hs = calloc((size_t)(c->nw * nv * R), sizeof(double));
    if (!hs)
        oom();
    printf("# " PROG " throughput: workers %ld", c->wlist[0]);
    for (int i = 1; i < c->nw; i++)
        printf(",%ld", c->wlist[i]);
    printf(", %ld rounds, %ld timed handshakes per worker (+%d warm-up), TLS 1.3, mutual "
           "verification, %s keys, BIO pair; %ld CPUs online\n",
           R, c->handshakes, WARMUP_HANDSHAKES, c->key == OMT_KEY_RSA ? "RSA-2048" : "P-256",
           sysconf(_SC_NPROCESSORS_ONLN));
    int rdig = snprintf(NULL, 0, "%ld", R);
    for (long r = 0; r < R; r++)
        for (int wi = 0; wi < c->nw; wi++)
            for (int k = 0; k < nv; k++) {
                int vi = (int)((r + k) % nv); /* rotated: each variant leads some rounds */
                long W = c->wlist[wi];
                struct job j = { .v = c->variants[vi], .m = M_TPUT, .workers = W,
                                 .handshakes = c->handshakes, .key = c->key, .pem_fd = -1,
                                 .release_fd = -1, .options = c->options };
                double per = c->key == OMT_KEY_RSA ? 0.1 : 0.02;
                struct msg fin;
                if (run_child(&j, limit(c, 60 + per * (double)(W * (c->handshakes + 20))), &fin,
                              NULL) != 0)
                    job_failed("throughput", r, W, j.v, fin.err);
                hs[(wi * nv + vi) * R + r] = fin.hs_per_s;
                printf("round %*ld/%ld  W=%-2ld  %-8s  %9.1f hs/s  wall %7.3f s  per worker "
                       "%.1f..%.1f hs/s", rdig, r + 1, R, W, vname[j.v], fin.hs_per_s,
                       fin.wall_s, fin.wk_min, fin.wk_max);
                if (j.v == V_SHARED)
                    printf("  arena %" PRIu64 " KiB, retire %d %d", fin.arena_used / 1024,
                           fin.retire_rc[0], fin.retire_rc[1]);
                printf("\n");
                fflush(stdout);
            }

    char rh[32];
    snprintf(rh, sizeof(rh), "vs %s", vname[c->variants[base]]);
    printf("\n%7s  %-8s  %11s  %10s  %10s  %11s  %11s  %7s\n", "workers", "variant",
           "median hs/s", "min", "max", "hs/s/worker", rh, "paired");
    for (int wi = 0; wi < c->nw; wi++) {
        const double *b = hs + (wi * nv + base) * R;
        for (int k = 0; k < nv; k++) {
            const double *h = hs + (wi * nv + k) * R;
            double med = median(h, R);
            printf("%7ld  %-8s  %11.1f  %10.1f  %10.1f  %11.1f  %11.3f  %7.3f\n", c->wlist[wi],
                   vname[c->variants[k]], med, dmin(h, R), dmax(h, R),
                   med / (double)c->wlist[wi], med / median(b, R), paired(h, b, R));
        }
    }
    printf("(aggregate handshakes/s of all workers, start barrier to the last report; medians "
           "over %ld rounds; paired = median of the per-round ratios, the figure to quote)\n", R);
    printf("summary throughput:");
    if (nv == 1)
        printf(" %s only, no ratio", vname[c->variants[0]]);
    const char *sep = "";
    for (int k = 0; k < nv; k++) {
        if (k == base)
            continue;
        printf("%s %s/%s paired median ratio", sep, vname[c->variants[k]],
               vname[c->variants[base]]);
        for (int wi = 0; wi < c->nw; wi++)
            printf("%s W=%ld %.3f", wi ? "," : "", c->wlist[wi],
                   paired(hs + (wi * nv + k) * R, hs + (wi * nv + base) * R, R));
        sep = ";";
    }
    if (nv > 1)
        printf(" (above 1: faster than %s)", vname[c->variants[base]]);
    printf("\n");
    fflush(stdout);
    free(hs);
}

/* The memory target: makes the anchors, runs rounds x variants (rotated) with the launcher
 * measuring PSS, then the table and the summary line. Exits 1 on a failure. */
static void memory(const struct cfg *c)
{
    long R = c->rounds, W = c->pss_workers;
    int nv = c->nvars, base = base_index(c);
    double t0 = now();
    int pem_fd = make_anchors(c->certs);
    if (pem_fd < 0)
        exit(1);
    double *tot = calloc((size_t)(nv * R), sizeof(double));
    double *par = calloc((size_t)(nv * R), sizeof(double));
    double *per = calloc((size_t)(nv * R), sizeof(double));
    double *wkk = calloc((size_t)W, sizeof(double));
    if (!tot || !par || !per || !wkk)
        oom();
    printf("# " PROG " memory: %ld workers, %ld extra trust anchors (RSA-2048, made in %.1f s) "
           "in the server context, %ld handshakes per worker before the measurement, %ld "
           "rounds, %s keys; total PSS = Pss: of /proc/PID/smaps_rollup, summed over the "
           "parent and its workers\n", W, c->certs, now() - t0, c->pss_handshakes, R,
           c->key == OMT_KEY_RSA ? "RSA-2048" : "P-256");
    int rdig = snprintf(NULL, 0, "%ld", R);
    for (long r = 0; r < R; r++)
        for (int k = 0; k < nv; k++) {
            int vi = (int)((r + k) % nv);
            struct job j = { .v = c->variants[vi], .m = M_PSS, .workers = W,
                             .handshakes = c->pss_handshakes, .key = c->key, .certs = c->certs,
                             .pem_fd = pem_fd, .release_fd = -1, .options = c->options };
            double secs = 120 + 0.05 * (double)(W * c->pss_handshakes) +
                          0.005 * (double)(W * c->certs);
            struct msg fin;
            struct pss_run pr;
            if (run_child(&j, limit(c, secs), &fin, &pr) != 0)
                job_failed("memory", r, 0, j.v, fin.err);
            for (long i = 0; i < W; i++)
                wkk[i] = (double)pr.wk[i].pss;
            long i0 = vi * R + r;
            tot[i0] = (double)pr.total.pss;
            par[i0] = (double)pr.parent.pss;
            per[i0] = median(wkk, W);
            printf("round %*ld/%ld  %-8s  total PSS %8ld KiB = parent %6ld + workers %ld x "
                   "%.0f (%.0f..%.0f)  [anon %ld, shmem %ld, file %ld; RSS %ld]  store %ld",
                   rdig, r + 1, R, vname[j.v], pr.total.pss, pr.parent.pss, W, per[i0],
                   dmin(wkk, W), dmax(wkk, W), pr.total.anon, pr.total.shmem, pr.total.file,
                   pr.total.rss, fin.anchors);
            if (j.v == V_SHARED)
                printf("  arena %" PRIu64 " KiB, retire %d %d", fin.arena_used / 1024,
                       fin.retire_rc[0], fin.retire_rc[1]);
            printf("\n");
            fflush(stdout);
        }
    close(pem_fd);

    char rh[32];
    snprintf(rh, sizeof(rh), "vs %s", vname[c->variants[base]]);
    printf("\n%-8s  %13s  %10s  %10s  %10s  %14s  %11s  %7s\n", "variant", "total PSS KiB",
           "min", "max", "parent KiB", "per worker KiB", rh, "paired");
    const double *b = tot + base * R;
    for (int k = 0; k < nv; k++) {
        const double *t = tot + k * R;
        printf("%-8s  %13.0f  %10.0f  %10.0f  %10.0f  %14.0f  %11.3f  %7.3f\n",
               vname[c->variants[k]], median(t, R), dmin(t, R), dmax(t, R), median(par + k * R, R),
               median(per + k * R, R), median(t, R) / median(b, R), paired(t, b, R));
    }
    printf("(medians over %ld rounds of the total PSS of the variant process and its %ld workers "
           "while they wait after their handshakes; per worker = median worker; paired = "
           "median of the per-round ratios)\n", R, W);
    printf("summary memory: total PSS with %ld workers and %ld anchors:", W, c->certs);
    for (int k = 0; k < nv; k++)
        printf("%s %s %.1f MiB", k ? "," : "", vname[c->variants[k]],
               median(tot + k * R, R) / 1024.0);
    for (int k = 0; k < nv; k++)
        if (k != base)
            printf("; %s/%s %.3f (paired %.3f)", vname[c->variants[k]], vname[c->variants[base]],
                   median(tot + k * R, R) / median(b, R), paired(tot + k * R, b, R));
    printf("%s\n", nv > 1 ? " (below 1: less memory)" : "");
    fflush(stdout);
    free(tot);
    free(par);
    free(per);
    free(wkk);
}

/* Parses a comma-separated list into out[] through <item> (which exits 2 on a bad item). */
static int split_list(const char *opt, const char *v, long *out, int max,
                      long (*item)(const char *opt, const char *s))
{
    if (!v || !*v)
        bad_arg("%s needs a comma-separated list", opt);
    char buf[256];
    if (strlen(v) >= sizeof(buf))
        bad_arg("%s: list too long", opt);
    strcpy(buf, v);
    int n = 0;
    char *s = buf;
    for (;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = 0;
        if (n == max)
            bad_arg("%s: at most %d entries", opt, max);
        long x = item(opt, s);
        for (int i = 0; i < n; i++)
            if (out[i] == x)
                bad_arg("%s: '%s' given twice", opt, s);
        out[n++] = x;
        if (!comma)
            return n;
        s = comma + 1;
    }
}

static long worker_item(const char *opt, const char *s)
{
    return num_arg(opt, s, 1, MAX_WORKERS);
}

static long variant_item(const char *opt, const char *s)
{
    for (int v = 0; v < NVARIANTS; v++)
        if (strcmp(s, vname[v]) == 0)
            return v;
    bad_arg("%s: unknown variant '%s' (glibc, ossl_mem or shared)", opt, s);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--child") == 0) {
        struct job j;
        parse_child(argc, argv, &j);
        int rc = child_main(&j);
        fflush(NULL);
        _exit(rc);
    }

    struct cfg c = { .rounds = 7, .handshakes = 300, .key = OMT_KEY_EC, .tput = 1,
                     .pss_workers = 8, .certs = 200, .pss_handshakes = 50 };
    int have_workers = 0, have_variants = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        char name[32];
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) == 0 && eq && (size_t)(eq - a) < sizeof(name)) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            v = eq + 1;
            a = name;
        } else if (i + 1 < argc) {
            v = argv[i + 1];
        }
        int consumed = !eq; /* "--opt value" takes the next argument, "--opt=value" does not */
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(a, "--pss") == 0 || strcmp(a, "--both") == 0) {
            if (eq)
                bad_arg("%s takes no value", a);
            c.pss = 1;
            c.tput = strcmp(a, "--both") == 0;
            consumed = 0;
        } else if (strcmp(a, "--workers") == 0) {
            c.nw = split_list(a, v, c.wlist, MAX_WLIST, worker_item);
            have_workers = 1;
        } else if (strcmp(a, "--variants") == 0) {
            long vv[NVARIANTS];
            c.nvars = split_list(a, v, vv, NVARIANTS, variant_item);
            for (int k = 0; k < c.nvars; k++)
                c.variants[k] = (int)vv[k];
            have_variants = 1;
        } else if (strcmp(a, "--rounds") == 0) {
            c.rounds = num_arg(a, v, 1, MAX_ROUNDS);
        } else if (strcmp(a, "--handshakes") == 0) {
            c.handshakes = num_arg(a, v, 1, 10000000);
        } else if (strcmp(a, "--pss-workers") == 0) {
            c.pss_workers = num_arg(a, v, 1, MAX_WORKERS);
        } else if (strcmp(a, "--certs") == 0) {
            c.certs = num_arg(a, v, 1, MAX_CERTS);
        } else if (strcmp(a, "--pss-handshakes") == 0) {
            c.pss_handshakes = num_arg(a, v, 1, 10000000);
        } else if (strcmp(a, "--timeout") == 0) {
            c.timeout = (unsigned)num_arg(a, v, 1, 86400);
        } else if (strcmp(a, "--key") == 0) {
            if (v && strcmp(v, "ec") == 0)
                c.key = OMT_KEY_EC;
            else if (v && strcmp(v, "rsa") == 0)
                c.key = OMT_KEY_RSA;
            else
                bad_arg("--key needs ec or rsa, got '%s'", v ? v : "");
        } else if (strcmp(a, "--options") == 0) {
            char err[256] = "";
            if (!v || !*v)
                bad_arg("--options needs an ossl_mem options string");
            if (ossl_mem_options_check(v, err, sizeof(err)) != 0)
                bad_arg("--options: %s", err[0] ? err : "invalid ossl_mem options");
            c.options = v;
        } else if (strcmp(a, "--child") == 0) {
            bad_arg("--child must come first (it is for this program's own use)");
        } else {
            bad_arg("unknown argument '%s'", argv[i]);
        }
        if (consumed)
            i++;
    }
    if (!have_workers) {
        static const long dflt[] = { 1, 2, 4, 8 };
        c.nw = 4;
        memcpy(c.wlist, dflt, sizeof(dflt));
    }
    if (!have_variants) {
        c.variants[0] = V_GLIBC;
        c.variants[1] = V_SHARED;
        c.nvars = 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the alarm must interrupt read() and waitid() */
    sigaction(SIGALRM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a variant process that dies is reported, not fatal */

    if (c.tput)
        throughput(&c);
    if (c.tput && c.pss)
        printf("\n");
    if (c.pss)
        memory(&c);
    return 0;
}
