/* ft_zero.c - zero on free: no byte of a freed buffer survives, over the whole usable size; no-zero shows the test can fail. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

/* Whether the page holding <p> is still mapped (mincore fails with ENOMEM otherwise). */
static int mapped(const void *p)
{
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char v;
    return mincore((void *)((uintptr_t)p & ~(uintptr_t)(pg - 1)), 1, &v) == 0;
}

/*
 * Bytes of the secret <s> (n bytes, none zero) still found at their place
 * in freed memory at <p>. Unmapped memory holds nothing of ours.
 */
static size_t survivors(const unsigned char *p, const unsigned char *s, size_t n)
{
    if (!mapped(p) || !mapped(p + n - 1))
        return 0;
    size_t left = 0;
    for (size_t i = 0; i < n; i++)
        left += p[i] == s[i];
    return left;
}

/* Fills <s> with n random non-zero bytes. */
static void secret(unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        do
            s[i] = (unsigned char)rand();
        while (s[i] == 0);
}

/*
 * Child: installs with <options>, then for every size 1..4096, a selection
 * up to 64 KiB and a few large ones: (a) plain free, (b) the buffer shrunk
 * in place by realloc before the free, so the bytes beyond the new size
 * are only inside the usable area, (c) a moving realloc, whose old block
 * must be wiped. Prints the number of secret bytes found and exits 0.
 */
static void child(const void *a, const void *b)
{
    (void)b;
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, a};
    if (ossl_mem_init(&cfg) != 0)
        _exit(7);
    static unsigned char s[300000];
    size_t found = 0, sizes = 0;
    srand(7);
    for (size_t n = 1; n <= 300000; n = n < 4096 ? n + 1 : n < 65536 ? n + 997 : n * 3 / 2) {
        secret(s, n);
        /* (a) */
        unsigned char *p = OPENSSL_malloc(n);
        memcpy(p, s, n);
        OPENSSL_free(p);
        found += survivors(p, s, n);
        /* (b) shrink in place (a bigger first write, then a smaller size), then free */
        if (n >= 16) {
            p = OPENSSL_malloc(n);
            memcpy(p, s, n);
            unsigned char *q = OPENSSL_realloc(p, n - n / 4);
            OPENSSL_free(q);
            found += survivors(p, s, n);
        }
        /* (c) moving realloc: the old block is wiped too */
        p = OPENSSL_malloc(n);
        memcpy(p, s, n);
        unsigned char *q = OPENSSL_realloc(p, n * 4 + 64);
        if (q != p)
            found += survivors(p, s, n);
        OPENSSL_free(q);
        sizes++;
    }
    printf("%zu %zu\n", found, sizes);
    fflush(stdout);
    _exit(0);
}

int main(void)
{
    ft_alarm(120);
    unsigned pass = 0, fail = 0;
    struct ft_child r;
    size_t found = 0, sizes = 0;

    ft_run(&r, 60, child, "", NULL);
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 &&
        sscanf(r.out, "%zu %zu", &found, &sizes) == 2 && found == 0 && sizes > 4096) {
        printf("ok: default options: no byte of %zu freed buffer sizes survives\n", sizes);
        pass++;
    } else {
        printf("FAIL: default options: %zu secret bytes survived (%s%s)\n", found, r.out, r.err);
        fail++;
    }

    ft_run(&r, 60, child, "quarantine=0", NULL);
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 &&
        sscanf(r.out, "%zu %zu", &found, &sizes) == 2 && found == 0) {
        printf("ok: quarantine=0: no byte survives either\n");
        pass++;
    } else {
        printf("FAIL: quarantine=0: %zu secret bytes survived (%s%s)\n", found, r.out, r.err);
        fail++;
    }

    /* The same test with zeroing off must find the secrets: the check has teeth. */
    ft_run(&r, 60, child, "no-zero", NULL);
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 &&
        sscanf(r.out, "%zu %zu", &found, &sizes) == 2 && found > 100000) {
        printf("ok: no-zero: %zu secret bytes left behind, as expected without zeroing\n", found);
        pass++;
    } else {
        printf("FAIL: no-zero: expected leftovers, found %zu (%s%s)\n", found, r.out, r.err);
        fail++;
    }
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
