/* ft_nolocks.c - a static link keeps libc's pthread_rwlock_init: ossl_mem_init says so and shared scopes are refused. */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

/*
 * This program is linked statically (see Makefile.am), so libcrypto's
 * pthread_rwlock_init() calls go to libc, not to ossl_mem. Locks OpenSSL
 * made in the arena would stay process-private and workers could hang on
 * them, so shared scopes must be refused, with a message that says what
 * to do; the private pools must work as usual.
 */
static void child(const void *a, const void *b)
{
    (void)b;
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, a};
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        printf("init: %s\n", ossl_mem_strerror(rc));
        _exit(2);
    }
    int begin = ossl_mem_shared_begin();
    if (begin == 0)
        ossl_mem_shared_end();
    void *p = OPENSSL_malloc(100);
    int ok = p != NULL && !ossl_mem_is_shared(p);
    OPENSSL_free(p);
    printf("begin %d (%s), private allocation %s\n", begin, ossl_mem_strerror(begin),
           ok ? "ok" : "FAILED");
    fflush(stdout);
    _exit(ok ? (begin == OSSL_MEM_E_LOCKS ? 0 : begin == 0 ? 10 : 3) : 4);
}

int main(void)
{
    ft_alarm(120);
    int pass = 0, fail = 0;
    static struct ft_child r;
    ft_run(&r, 60, child, NULL, NULL);
    fputs(r.out, stdout);
    if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 &&
        strstr(r.err, "cannot be made process-shared") && strstr(r.err, "LD_PRELOAD"))
        pass++, printf("ok: without the interposition init warns and shared scopes are refused\n");
    else
        fail++, printf("FAIL: defaults: status %d, stderr: %s\n", r.status, r.err);
    /* no-shared-locks: the operator's explicit choice, no warning, scopes allowed */
    ft_run(&r, 60, child, "no-shared-locks", NULL);
    fputs(r.out, stdout);
    if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 10 && r.err[0] == 0)
        pass++, printf("ok: with no-shared-locks scopes are allowed and nothing is said\n");
    else
        fail++, printf("FAIL: no-shared-locks: status %d, stderr: %s\n", r.status, r.err);
    printf("%d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
