/* handshake_bench.c - TLS 1.3 mutual-verified handshakes per second under glibc, jemalloc, mimalloc and ossl_mem, one child per variant and round. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

#define PROG "handshake_bench"
#define MAX_VARIANTS 16
#define MAX_ROUNDS 1000
#define WARMUP_HANDSHAKES 20
#define CHILD_ARG "--child" /* the re-executed child's first argument (internal) */

static const char usage[] =
    "usage: " PROG " [--variant NAME[:OPTIONS]]... [--rounds R] [--handshakes N]\n"
    "                       [--key ec|rsa] [--timeout SEC] [--help]\n"
    "Measures TLS 1.3 handshakes per second with mutual certificate verification, both\n"
    "ends in one process over a BIO pair. For each round the parent starts one child per\n"
    "variant (order rotated every round): a fork that re-executes this program, so that\n"
    "the child's peak RSS is its own. The child installs its allocator, makes the PKI and\n"
    "contexts, runs 20 warm-up handshakes, then times N handshakes.\n"
    "  --variant V     glibc, jemalloc, mimalloc, glibc-exec, ossl_mem or ossl_mem:OPTIONS\n"
    "                  (an ossl_mem options string, e.g. ossl_mem:no-zero); repeatable.\n"
    "                  Default: glibc, jemalloc, mimalloc, ossl_mem, ossl_mem:no-zero\n"
    "  --rounds R      rounds (default 7)\n"
    "  --handshakes N  timed handshakes per child (default 300)\n"
    "  --key ec|rsa    P-256 (default) or RSA-2048 keys\n"
    "  --timeout SEC   time limit of one child (default 60 + N*0.05 for ec, 90 + N*0.2 for rsa)\n"
    "jemalloc and mimalloc: the child runs with LD_PRELOAD of libjemalloc.so.2 or\n"
    "libmimalloc.so.2 (found next to libc, in /usr/local/lib, /usr/lib64 or /usr/lib;\n"
    "JEMALLOC_SO and MIMALLOC_SO override) and runs the glibc variant under it, after\n"
    "checking that malloc resolves to that library; the other children run without\n"
    "LD_PRELOAD. A variant whose library is not found is reported as skipped (Debian:\n"
    "apt-get install libjemalloc2 libmimalloc2.0). glibc-exec, once the control for the\n"
    "re-execution, is now the same as glibc (every child is re-executed).\n"
    "Prints one line per child as it finishes, then a table of medians. Exit status 0 if\n"
    "every handshake succeeded and ossl_mem saw no bad free, 1 on any failure, 2 on bad\n"
    "arguments.\n";

/* One allocator configuration under test. */
struct variant {
    char label[160];       /* as given on the command line, e.g. "ossl_mem:no-zero" */
    int is_om;             /* 1: install ossl_mem; 0: leave OpenSSL on its default (malloc) */
    const char *options;   /* ossl_mem options string, NULL for the defaults */
    const char *soname;    /* jemalloc/mimalloc: the library to preload, else NULL */
    char preload[4096];    /* its path, "" if not found (the variant is skipped) */
};

/* The preloadable allocators: variant name, library, variable overriding its path, package. */
static const struct {
    const char *name, *soname, *env, *package;
} preloads[] = {
    { "jemalloc", "libjemalloc.so.2", "JEMALLOC_SO", "libjemalloc2" },
    { "mimalloc", "libmimalloc.so.2", "MIMALLOC_SO", "libmimalloc2.0" },
};

/* What a child sends back through its pipe (smaller than PIPE_BUF: one atomic write). */
struct child_report {
    int ok;                /* 1 if every handshake succeeded */
    char err[256];         /* first failure when !ok */
    double hs_per_s;       /* timed handshakes per second */
    long maxrss_kib;       /* getrusage(RUSAGE_SELF).ru_maxrss at the end (re-executed: its own) */
    int has_stats;         /* 1 for ossl_mem variants: the figures below are set */
    uint64_t peak_bytes, allocs, frees, double_frees, invalid_frees;
    uint64_t timed_allocs; /* allocs made during the timed handshakes */
};

struct bench_cfg {
    long rounds, handshakes;
    enum omt_key key;
    unsigned timeout;      /* seconds per child */
};

static volatile sig_atomic_t alarm_fired;
static volatile pid_t alarm_victim; /* the running child, killed by the alarm */

/* SIGALRM: the running child overran its time limit; kill it right here, so
 * that a blocked read()/waitpid() in the parent returns whenever the signal
 * lands (no window between a flag test and a blocking call). */
static void on_alarm(int sig)
{
    (void)sig;
    alarm_fired = 1;
    if (alarm_victim > 0)
        kill(alarm_victim, SIGKILL);
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

/* Parses a decimal integer in [1, max] for option <opt>; exits 2 on anything else. */
static long count_arg(const char *opt, const char *v, long max)
{
    char *end;
    errno = 0;
    long n = v ? strtol(v, &end, 10) : -1;
    if (!v || !*v || errno || *end || n <= 0 || n > max)
        bad_arg("%s needs a whole number from 1 to %ld, got '%s'", opt, max, v ? v : "");
    return n;
}

/* The file the malloc symbol resolves to in this process, "?" if unknown. */
static const char *malloc_library(void)
{
    Dl_info di;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    return m && dladdr(m, &di) && di.dli_fname ? di.dli_fname : "?";
}

/*
 * Finds <soname> for LD_PRELOAD: the path in environment variable <env> if
 * set (if that file is not readable, none), else the first readable file among the directory of the
 * libc this process uses, the same under /usr, /usr/local/lib, /usr/lib64 and
 * /usr/lib. Writes the path into out, or "" if none was found.
 */
static void find_preload(const char *soname, const char *env, char *out, size_t outsz)
{
    out[0] = 0;
    const char *e = getenv(env);
    if (e && *e) {
        if (strlen(e) < outsz && access(e, R_OK) == 0)
            strcpy(out, e);
        return;
    }
    char libc[4096];
    snprintf(libc, sizeof(libc), "%s", malloc_library());
    const char *dir = libc[0] == '/' ? dirname(libc) : "/usr/lib";
    char usrdir[4200];
    snprintf(usrdir, sizeof(usrdir), "/usr%s", dir);
    const char *dirs[] = { dir, strncmp(dir, "/usr/", 5) ? usrdir : dir, "/usr/local/lib",
                           "/usr/lib64", "/usr/lib" };
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char p[4400];
        snprintf(p, sizeof(p), "%s/%s", dirs[i], soname);
        if (strlen(p) < outsz && access(p, R_OK) == 0) {
            strcpy(out, p);
            return;
        }
    }
}

/*
 * Parses "glibc", "jemalloc", "mimalloc", "ossl_mem" or "ossl_mem:OPTIONS"
 * into *v; the options are validated with ossl_mem_options_check(), which
 * touches no OpenSSL state, and the jemalloc/mimalloc library is looked for
 * (v->preload stays "" if it is missing). Exits 2 with one line on stderr
 * for anything else.
 */
static void parse_variant(const char *s, struct variant *v)
{
    memset(v, 0, sizeof(*v));
    if (strlen(s) >= sizeof(v->label))
        bad_arg("variant '%.40s...' is too long", s);
    strcpy(v->label, s);
    if (strcmp(s, "glibc") == 0)
        return;
    if (strcmp(s, "glibc-exec") == 0) /* once the control of the re-execution: glibc now */
        return;
    for (size_t i = 0; i < sizeof(preloads) / sizeof(preloads[0]); i++)
        if (strcmp(s, preloads[i].name) == 0) {
            v->soname = preloads[i].soname;
            find_preload(preloads[i].soname, preloads[i].env, v->preload, sizeof(v->preload));
            return;
        }
    if (strcmp(s, "ossl_mem") == 0) {
        v->is_om = 1;
        return;
    }
    if (strncmp(s, "ossl_mem:", 9) == 0) {
        const char *opts = v->label + 9;
        if (!*opts)
            bad_arg("variant 'ossl_mem:' has an empty options string");
        char err[256];
        if (ossl_mem_options_check(opts, err, sizeof(err)) != 0)
            bad_arg("variant '%s': bad ossl_mem options: %s", s, err[0] ? err : "invalid");
        v->is_om = 1;
        v->options = opts;
        return;
    }
    const char *colon = strchr(s, ':');
    if (colon && (!strncmp(s, "glibc:", 6) || !strncmp(s, "jemalloc:", 9) ||
                  !strncmp(s, "mimalloc:", 9)))
        bad_arg("variant '%.*s' takes no options, got '%s'", (int)(colon - s), s, s);
    bad_arg("unknown variant '%s' (glibc, jemalloc, mimalloc, glibc-exec, ossl_mem or "
            "ossl_mem:OPTIONS)", s);
}

/* Records a failure message in *rep (first one wins). */
static void fail(struct child_report *rep, const char *what, const char *detail)
{
    if (rep->ok == 0 && rep->err[0])
        return;
    rep->ok = 0;
    snprintf(rep->err, sizeof(rep->err), "%s%s%s", what, detail && *detail ? ": " : "",
             detail ? detail : "");
}

/*
 * Runs <n> handshakes; returns 0 if all succeeded, else -1 with the first
 * failure written into *rep.
 */
static int run_handshakes(SSL_CTX *srv, SSL_CTX *cli, long n, struct child_report *rep,
                          const char *phase)
{
    for (long i = 0; i < n; i++) {
        struct omt_result r;
        if (omt_handshake_bio(srv, cli, &r) != 0 || !r.ok) {
            char what[64];
            snprintf(what, sizeof(what), "%s handshake %ld", phase, i + 1);
            fail(rep, what, r.err);
            return -1;
        }
    }
    return 0;
}

/*
 * The child's whole life: install the allocator of <v> (nothing for glibc),
 * make the PKI and contexts, warm up, time bc->handshakes handshakes and
 * write one struct child_report to <fd>. Never returns; exits 0 once the
 * report is written (success or not), 1 if even that failed.
 */
static void __attribute__((noreturn)) child_main(const struct variant *v,
                                                 const struct bench_cfg *bc, int fd)
{
    struct child_report rep;
    memset(&rep, 0, sizeof(rep));
    rep.ok = 1;
    struct omt_pki pki;
    memset(&pki, 0, sizeof(pki));
    SSL_CTX *srv = NULL, *cli = NULL;
    struct ossl_mem_stats st0, st1;
    memset(&st0, 0, sizeof(st0));
    memset(&st1, 0, sizeof(st1));

    if (v->soname) {
        /* re-executed under LD_PRELOAD: make sure it took (ld.so only warns if it did not) */
        const char *lib = malloc_library(), *slash = strrchr(lib, '/');
        if (strcmp(slash ? slash + 1 : lib, v->soname) != 0) {
            fail(&rep, "malloc does not come from the preloaded library", lib);
            goto out;
        }
    }
    if (v->is_om) {
        struct ossl_mem_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.version = OSSL_MEM_CONFIG_VERSION;
        cfg.flags = OSSL_MEM_CFG_IGNORE_ENV;
        cfg.options = v->options;
        int rc = ossl_mem_init(&cfg);
        if (rc != 0) {
            fail(&rep, "ossl_mem_init", ossl_mem_strerror(rc));
            goto out;
        }
    }
    if (omt_pki_make(&pki, bc->key) != 0) {
        fail(&rep, "omt_pki_make failed", NULL);
        goto out;
    }
    struct omt_opts o = { .tls_version = TLS1_3_VERSION, .verify = OMT_VERIFY_MUTUAL };
    srv = omt_server_ctx(&pki, &o);
    cli = omt_client_ctx(&pki, &o);
    if (!srv || !cli) {
        fail(&rep, "cannot make the TLS contexts", NULL);
        goto out;
    }
    if (run_handshakes(srv, cli, WARMUP_HANDSHAKES, &rep, "warm-up") != 0)
        goto out;

    if (v->is_om)
        ossl_mem_get_stats(&st0);
    double t0 = now();
    if (run_handshakes(srv, cli, bc->handshakes, &rep, "timed") != 0)
        goto out;
    double t1 = now();
    rep.hs_per_s = (double)bc->handshakes / (t1 - t0);
    if (v->is_om) {
        ossl_mem_get_stats(&st1);
        rep.has_stats = 1;
        rep.peak_bytes = st1.peak_bytes;
        rep.allocs = st1.allocs;
        rep.frees = st1.frees;
        rep.double_frees = st1.double_frees;
        rep.invalid_frees = st1.invalid_frees;
        rep.timed_allocs = st1.allocs - st0.allocs;
    }
out:;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        rep.maxrss_kib = ru.ru_maxrss;
    /* Contexts and PKI are left to _exit: freeing them is not measured. */
    ssize_t w;
    do
        w = write(fd, &rep, sizeof(rep));
    while (w < 0 && errno == EINTR);
    _exit(w == (ssize_t)sizeof(rep) ? 0 : 1);
}

/*
 * Forks one child for variant <v>, waits for its report at most bc->timeout
 * seconds (the SIGALRM handler kills an overrunning child with SIGKILL, which
 * ends the parent's read and wait) and reaps it. Returns 0 with *rep filled
 * from a child that exited 0 and reported success; otherwise -1 with rep->err
 * describing the failure.
 */
static int run_child(const struct variant *v, const struct bench_cfg *bc, struct child_report *rep)
{
    memset(rep, 0, sizeof(*rep));
    int p[2];
    if (pipe(p) != 0) {
        snprintf(rep->err, sizeof(rep->err), "pipe: %s", strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(rep->err, sizeof(rep->err), "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        alarm(0);
        signal(SIGALRM, SIG_DFL);
        {
            /* Run this program again: a preloaded allocator must be there before anything
             * runs, and a forked child's ru_maxrss would start at the parent's RSS. The new
             * image goes straight to child_main with the same pipe. */
            char fd[16], n[32];
            snprintf(fd, sizeof(fd), "%d", p[1]);
            snprintf(n, sizeof(n), "%ld", bc->handshakes);
            char *args[] = { (char *)PROG, (char *)CHILD_ARG, fd, (char *)v->label, n,
                             (char *)(bc->key == OMT_KEY_RSA ? "rsa" : "ec"), NULL };
            if (v->soname)
                setenv("LD_PRELOAD", v->preload, 1);
            else
                unsetenv("LD_PRELOAD");
            execv("/proc/self/exe", args);
            struct child_report er;
            memset(&er, 0, sizeof(er));
            fail(&er, "cannot re-execute /proc/self/exe", strerror(errno));
            ssize_t w = write(p[1], &er, sizeof(er));
            _exit(w == (ssize_t)sizeof(er) ? 0 : 1);
        }
    }
    close(p[1]);

    alarm_fired = 0;
    alarm_victim = pid;
    alarm(bc->timeout);
    /* Read until the whole report, EOF (child gone) or an error; EINTR just retries:
     * after the alarm the child is dead and the next read sees EOF. */
    size_t got = 0;
    while (got < sizeof(*rep)) {
        ssize_t r = read(p[0], (char *)rep + got, sizeof(*rep) - got);
        if (r > 0)
            got += (size_t)r;
        else if (r == 0 || errno != EINTR)
            break;
    }
    /* Wait for the exit but leave the zombie (WNOWAIT), so the pid cannot be reused
     * while the alarm may still kill it; disarm, then reap. */
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    alarm(0);
    alarm_victim = 0;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int timed_out = alarm_fired;
    close(p[0]);

    if (timed_out) {
        snprintf(rep->err, sizeof(rep->err), "child timed out after %u s (killed)", bc->timeout);
        rep->ok = 0;
        return -1;
    }
    if (got != sizeof(*rep)) {
        char how[64];
        if (WIFSIGNALED(status))
            snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(status));
        else
            snprintf(how, sizeof(how), "exit status %d", WEXITSTATUS(status));
        memset(rep, 0, sizeof(*rep));
        snprintf(rep->err, sizeof(rep->err), "child died without a report (%s)", how);
        return -1;
    }
    rep->err[sizeof(rep->err) - 1] = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(rep->err, sizeof(rep->err), "child ended abnormally (status 0x%x)", status);
        rep->ok = 0;
        return -1;
    }
    return rep->ok ? 0 : -1;
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
    if (!c) {
        fprintf(stderr, PROG ": out of memory\n");
        exit(1);
    }
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

/*
 * The re-executed child of a variant: argv = PROG --child FD
 * VARIANT HANDSHAKES ec|rsa, with the library in LD_PRELOAD for jemalloc
 * and mimalloc. Never returns.
 */
static void __attribute__((noreturn)) reexec_child(int argc, char **argv)
{
    if (argc != 6)
        _exit(1);
    static struct variant v; /* parse_variant() points v.options into v.label */
    parse_variant(argv[3], &v);
    struct bench_cfg bc = { .rounds = 1, .handshakes = atol(argv[4]),
                            .key = strcmp(argv[5], "rsa") ? OMT_KEY_EC : OMT_KEY_RSA };
    if (bc.handshakes <= 0)
        _exit(1);
    child_main(&v, &bc, atoi(argv[2]));
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], CHILD_ARG) == 0)
        reexec_child(argc, argv);
    struct variant vars[MAX_VARIANTS];
    int nvars = 0;
    struct bench_cfg bc = { .rounds = 7, .handshakes = 300, .key = OMT_KEY_EC, .timeout = 0 };

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
        } else if (strcmp(a, "--variant") == 0) {
            if (!v)
                bad_arg("--variant needs a value");
            if (nvars == MAX_VARIANTS)
                bad_arg("at most %d variants", MAX_VARIANTS);
            parse_variant(v, &vars[nvars++]);
        } else if (strcmp(a, "--rounds") == 0) {
            bc.rounds = count_arg(a, v, MAX_ROUNDS);
        } else if (strcmp(a, "--handshakes") == 0) {
            bc.handshakes = count_arg(a, v, 10000000);
        } else if (strcmp(a, "--timeout") == 0) {
            bc.timeout = (unsigned)count_arg(a, v, 86400);
        } else if (strcmp(a, "--key") == 0) {
            if (v && strcmp(v, "ec") == 0)
                bc.key = OMT_KEY_EC;
            else if (v && strcmp(v, "rsa") == 0)
                bc.key = OMT_KEY_RSA;
            else
                bad_arg("--key needs ec or rsa, got '%s'", v ? v : "");
        } else {
            bad_arg("unknown argument '%s'", argv[i]);
        }
        if (consumed)
            i++;
    }
    if (nvars == 0) {
        parse_variant("glibc", &vars[nvars++]);
        parse_variant("jemalloc", &vars[nvars++]);
        parse_variant("mimalloc", &vars[nvars++]);
        parse_variant("ossl_mem", &vars[nvars++]);
        parse_variant("ossl_mem:no-zero", &vars[nvars++]);
    }
    if (bc.timeout == 0) {
        double t = bc.key == OMT_KEY_RSA ? 90 + (double)bc.handshakes * 0.2
                                           : 60 + (double)bc.handshakes * 0.05;
        bc.timeout = t > 86400 ? 86400 : (unsigned)t;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: the alarm must interrupt read() and waitpid() */
    sigaction(SIGALRM, &sa, NULL);

    /* Per variant, per round figures. */
    long R = bc.rounds;
    double *hs = calloc((size_t)(nvars * R), sizeof(double));
    double *rss = calloc((size_t)(nvars * R), sizeof(double));
    double *peak = calloc((size_t)(nvars * R), sizeof(double));
    double *apl = calloc((size_t)(nvars * R), sizeof(double));
    uint64_t bad_frees[MAX_VARIANTS] = { 0 };
    if (!hs || !rss || !peak || !apl) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }

    /* A preloaded allocator whose library is missing is skipped, and said so. */
    int skipped[MAX_VARIANTS] = { 0 }, nrun = 0;
    for (int k = 0; k < nvars; k++) {
        skipped[k] = vars[k].soname && !vars[k].preload[0];
        nrun += !skipped[k];
    }
    printf("# %s: %ld rounds x %d variants, %ld timed handshakes each (+%d warm-up), "
           "TLS 1.3, mutual verification, %s keys, BIO pair; child time limit %u s\n",
           PROG, R, nrun, bc.handshakes, WARMUP_HANDSHAKES,
           bc.key == OMT_KEY_RSA ? "RSA-2048" : "P-256", bc.timeout);
    for (int k = 0; k < nvars; k++)
        if (vars[k].soname && !skipped[k])
            printf("# %s: LD_PRELOAD=%s\n", vars[k].label, vars[k].preload);
        else if (skipped[k])
            printf("# %s: SKIPPED: %s not found (set %s, or apt-get install %s)\n", vars[k].label,
                   vars[k].soname, vars[k].soname == preloads[0].soname ? preloads[0].env
                   : preloads[1].env, vars[k].soname == preloads[0].soname ? preloads[0].package
                   : preloads[1].package);
    if (nrun == 0) {
        fprintf(stderr, PROG ": every variant was skipped: nothing to run\n");
        return 1;
    }
    int lw = 8;
    for (int k = 0; k < nvars; k++)
        lw = (int)strlen(vars[k].label) > lw ? (int)strlen(vars[k].label) : lw;

    int rdig = snprintf(NULL, 0, "%ld", R);
    for (long r = 0; r < R; r++) {
        for (int k = 0; k < nvars; k++) {
            int vi = (int)((r + k) % nvars); /* rotated: each variant leads some rounds */
            if (skipped[vi])
                continue;
            struct child_report rep;
            if (run_child(&vars[vi], &bc, &rep) != 0) {
                fprintf(stderr, PROG ": round %ld, variant %s: FAILED: %s\n", r + 1,
                        vars[vi].label, rep.err[0] ? rep.err : "unknown error");
                return 1;
            }
            long j = vi * R + r;
            hs[j] = rep.hs_per_s;
            rss[j] = (double)rep.maxrss_kib;
            peak[j] = (double)rep.peak_bytes;
            apl[j] = rep.has_stats ? (double)rep.timed_allocs / (double)bc.handshakes : 0;
            bad_frees[vi] += rep.double_frees + rep.invalid_frees;
            printf("round %*ld/%ld  %-*s  %9.1f hs/s  rss %6ld KiB", rdig, r + 1, R, lw,
                   vars[vi].label, rep.hs_per_s, rep.maxrss_kib);
            if (rep.has_stats)
                printf("  peak %" PRIu64 " B  allocs %" PRIu64 " frees %" PRIu64
                       " double_frees %" PRIu64 " invalid_frees %" PRIu64,
                       rep.peak_bytes, rep.allocs, rep.frees, rep.double_frees,
                       rep.invalid_frees);
            printf("\n");
            fflush(stdout);
        }
    }

    /* the reference: the first glibc variant, else the first one that ran; and mimalloc's */
    int base = -1, mi = -1;
    for (int k = 0; k < nvars; k++)
        if (!skipped[k] && strcmp(vars[k].label, "glibc") == 0) {
            base = k;
            break;
        }
    for (int k = 0; k < nvars; k++) {
        if (base < 0 && !skipped[k])
            base = k;
        if (mi < 0 && !skipped[k] && strcmp(vars[k].label, "mimalloc") == 0)
            mi = k;
    }
    double base_med = median(hs + base * R, R);
    char ratio_hdr[48];
    snprintf(ratio_hdr, sizeof(ratio_hdr), "vs %s", vars[base].label);

    int rw = strlen(ratio_hdr) > 8 ? (int)strlen(ratio_hdr) : 8;
    printf("\n%-*s  %11s  %10s  %10s  %*s  %7s  %10s  %12s  %9s  %9s", lw, "variant",
           "median hs/s", "min", "max", rw, ratio_hdr, "paired", "RSS KiB", "om peak KiB",
           "allocs/hs", "bad frees");
    printf(mi >= 0 ? "  %11s\n" : "\n", "vs mimalloc");
    int any_bad = 0;
    double *pr = calloc((size_t)R, sizeof(*pr));
    for (int k = 0; k < nvars; k++) {
        if (skipped[k]) {
            printf("%-*s  skipped: %s not found\n", lw, vars[k].label, vars[k].soname);
            continue;
        }
        const double *h = hs + k * R;
        double med = median(h, R);
        /* paired: the median of this variant's rate over the base's rate in the same round,
           which cancels the slow drift of a shared machine */
        for (long r = 0; r < R && pr; r++)
            pr[r] = h[r] / hs[base * R + r];
        printf("%-*s  %11.1f  %10.1f  %10.1f  %*.3f  %7.3f  %10.0f", lw, vars[k].label, med,
               dmin(h, R), dmax(h, R), rw, med / base_med, pr ? median(pr, R) : 0.0,
               median(rss + k * R, R));
        if (vars[k].is_om)
            printf("  %12.0f  %9.1f  %9" PRIu64, median(peak + k * R, R) / 1024.0,
                   median(apl + k * R, R), bad_frees[k]);
        else
            printf("  %12s  %9s  %9s", "-", "-", "-");
        if (mi >= 0) {
            for (long r = 0; r < R && pr; r++)
                pr[r] = h[r] / hs[mi * R + r];
            printf("  %11.3f", pr ? median(pr, R) : 0.0);
        }
        printf("\n");
        any_bad |= bad_frees[k] != 0;
    }
    printf("(medians over %ld rounds; paired = median of per-round ratios to %s%s; RSS = peak RSS "
           "of the child; om peak = ossl_mem peak_bytes; allocs/hs = ossl_mem allocs per timed "
           "handshake)\n", R, vars[base].label, mi >= 0 ? ", vs mimalloc likewise to mimalloc" : "");
    free(pr);
    free(hs);
    free(rss);
    free(peak);
    free(apl);
    if (any_bad) {
        fprintf(stderr, PROG ": ossl_mem counted double or invalid frees during the run\n");
        return 1;
    }
    return 0;
}
