/* ft_fork.c - fork while other threads allocate: no lock held across fork, child caches sane, new generation. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

#define FORKS 150

static atomic_int stop;

/* Allocates and frees mixed sizes until told to stop. */
static void *hammer(void *arg)
{
    unsigned x = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    void *keep[64] = {0};
    while (!atomic_load(&stop)) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        unsigned i = x % 64;
        OPENSSL_free(keep[i]);
        keep[i] = OPENSSL_malloc(x % 7 == 0 ? 40000 + x % 9000 : 1 + x % 700);
    }
    for (unsigned i = 0; i < 64; i++)
        OPENSSL_free(keep[i]);
    return NULL;
}

/*
 * Reads the JSON report: the live-chunk count kept by the counters and the
 * one found by walking the headers. They agree only if fork copied no
 * operation half done.
 */
static int counts_agree(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f || ossl_mem_report(f, OSSL_MEM_REPORT_JSON) != 0)
        return 0;
    fclose(f);
    unsigned long long counted = 0, walked = 1;
    const char *a = strstr(buf, "\"live_chunks\": "), *b = strstr(buf, "\"live_chunks\": {\"count\": ");
    int ok = a && b && sscanf(a, "\"live_chunks\": %llu", &counted) == 1 &&
             sscanf(b, "\"live_chunks\": {\"count\": %llu", &walked) == 1 && counted == walked;
    if (!ok)
        printf("counters say %llu live chunks, the headers %llu\n", counted, walked);
    free(buf);
    return ok;
}

/* In the child: only this thread exists; allocate, free and check. */
static int child_work(void)
{
    struct ossl_mem_stats s0, s1;
    if (ossl_mem_get_stats(&s0) != 0 || s0.threads != 1)
        return 3; /* the hammer threads' caches must be gone */
    if (!counts_agree())
        return 7; /* an operation of a vanished thread was copied half done */
    for (int i = 0; i < 20000; i++) {
        void *p = OPENSSL_malloc((size_t)(i % 900) + 1);
        if (!p)
            return 4;
        memset(p, 0xab, (size_t)(i % 900) + 1);
        OPENSSL_free(p);
    }
    if (ossl_mem_check() != 0)
        return 5;
    if (ossl_mem_get_stats(&s1) != 0 || s1.live_bytes != s0.live_bytes ||
        s1.double_frees || s1.invalid_frees)
        return 6;
    return 0;
}

int main(void)
{
    ft_alarm(120);
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, NULL};
    if (ossl_mem_init(&cfg) != 0) {
        printf("FAIL: init\n");
        return 1;
    }
    OPENSSL_free(OPENSSL_malloc(1)); /* this thread gets its cache before the fork */
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer, (void *)(uintptr_t)(i + 1));
    unsigned pass = 0, fail = 0;
    for (int k = 0; k < FORKS; k++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20); /* a child stuck on a lock held across fork dies instead of hanging */
            _exit(child_work());
        }
        int st;
        waitpid(pid, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            pass++;
        else {
            fail++;
            printf("FAIL: child %d: %s %d (3: other threads' caches left, 4: out of memory, 5: check "
                   "failed, 6: stats wrong, 7: half-done operation copied)\n", k, WIFEXITED(st) ? "exit" : "signal",
                   WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    struct ossl_mem_stats st;
    ossl_mem_get_stats(&st);
    if (ossl_mem_check() == 0 && st.double_frees == 0 && st.invalid_frees == 0 && st.threads == 1)
        pass++, printf("ok: parent clean after %d forks under load\n", FORKS);
    else
        fail++, printf("FAIL: parent after forks: threads %llu\n", (unsigned long long)st.threads);
    printf("%u passed, %u failed\n", pass, fail);
    return fail ? 1 : 0;
}
