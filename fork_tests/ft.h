/* ft.h - helpers of the fork tests: run a function in a child with captured output and a time limit. */
#ifndef FT_H
#define FT_H

#include <sys/types.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"

struct ft_child {
    int status;         /* waitpid status */
    int timed_out;      /* 1 if the child was killed by the time limit */
    char out[65536];    /* its stdout, NUL-terminated (truncated if longer) */
    char err[65536];    /* its stderr, NUL-terminated (truncated if longer) */
};

/*
 * Forks; the child runs fn(a, b) with stdout and stderr captured, then
 * exits 0 (unless fn exits first). The parent collects both streams and
 * the status; a child still running after <timeout> seconds is killed with
 * SIGKILL and reported as timed out (a hang is a failure, never a wait).
 * Returns 0, or -1 if the child could not be started.
 */
int ft_run(struct ft_child *r, unsigned timeout, void (*fn)(const void *a, const void *b),
           const void *a, const void *b);

/* Number of newline-terminated lines in <s>. */
unsigned ft_count_lines(const char *s);

/* Arms an alarm that kills the whole test after <seconds> with a clear message. */
void ft_alarm(unsigned seconds);

/*
 * Checks of a case (each case runs in a process of its own): FT_CHECK prints one line,
 * "ok: ..." or "FAIL: ...", flushed, and counts failures in ft_fails.
 */
extern int ft_fails;
#define FT_CHECK(cond, ...)                                     \
    do {                                                        \
        if (cond) {                                             \
            printf("ok: " __VA_ARGS__);                         \
        } else {                                                \
            printf("FAIL: " __VA_ARGS__);                       \
            ft_fails++;                                         \
        }                                                       \
        printf("\n");                                           \
        fflush(stdout);                                         \
    } while (0)

/* The calling process's ossl_mem_get_stats(). */
struct ossl_mem_stats ft_stats(void);

/* ossl_mem_init() with <options> (environment ignored); on failure prints FAIL and exits 1. */
void ft_init_or_die(const char *options);

/* A PKI and a mutual-verification server and client context, built in one shared scope. */
struct ft_shared {
    struct omt_pki pki;
    struct ssl_ctx_st *srv, *cli;
};

/*
 * Builds <s> in one shared scope (TLS version <tls_version>, 0: 1.3) and registers both
 * contexts. Returns 0, or -1 after printing why.
 */
int ft_build_shared(struct ft_shared *s, int tls_version);

#endif
