/*
 * ft_failsweep.c - the allocation-failure sweep: one full, mutually
 * verified TLS handshake for every N from 1 to the number of allocation
 * calls a handshake makes, with the Nth call failing (ossl_mem_fail_at).
 * Each one must end without a crash, without a safety fault, with
 * ossl_mem_check() clean and with every chunk it allocated freed again.
 * Allocations of an iteration are made under the tag "sweep", so what an
 * iteration leaves behind is that tag's live figure. What an iteration
 * leaves is either kept by one of OpenSSL's caches (a fetch cached later
 * than usual because the failure hit the first try) or leaked: the
 * iteration is run once more in a child under the tag "probe", the child
 * frees everything and calls OPENSSL_cleanup(), and whatever "probe" chunk
 * survives that is a leak, printed with its site. At the end the same holds
 * for the whole process: after OPENSSL_cleanup() the live bytes are back to
 * what they were right after ossl_mem_init().
 *
 * Usage: ft_failsweep [STEP [FIRST]]   (every STEP-th N from FIRST; default 1 1)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include <ossl_mem/ossl_mem.h>

#include "common/omt.h"
#include "fork_tests/ft.h"

static SSL_CTX *srv, *cli;
static uint64_t leak_at; /* the self-check: the iteration that fails call <leak_at> also leaks */

static struct ossl_mem_stats stats(void)
{
    struct ossl_mem_stats st;
    if (ossl_mem_get_stats(&st) != 0)
        exit(2);
    return st;
}

static struct ossl_mem_tag_stats tag_stats(const char *tag)
{
    struct ossl_mem_tag_stats t = {0};
    ossl_mem_get_tag_stats(tag, &t);
    return t;
}

static uint64_t faults(const struct ossl_mem_stats *st)
{
    return st->double_frees + st->invalid_frees + st->overflows + st->uaf_writes +
           st->corrupt_headers;
}

/* One handshake under <tag> with the <n>th allocation call failing (0: none). Returns ok. */
static int one(uint64_t n, const char *tag, char *err, size_t errlen)
{
    struct omt_result r;
    ossl_mem_tag_push(tag);
    /* the thread's OpenSSL state (error queue buffers, DRBGs) starts afresh every time */
    OPENSSL_thread_stop();
    ossl_mem_fail_at(n);
    omt_handshake_bio(srv, cli, &r);
    ossl_mem_fail_at(0);
    if (n && n == leak_at)
        (void)OPENSSL_malloc(77); /* deliberately lost */
    const char *file = "", *func = "", *data = "";
    int line = 0;
    unsigned long e = ERR_peek_error_all(&file, &line, &func, &data, NULL);
    snprintf(err, errlen, "%s:%d %s: %s", file, line, func, e ? ERR_reason_error_string(e) : "");
    ERR_clear_error();
    OPENSSL_thread_stop();
    ossl_mem_tag_pop();
    return r.ok;
}

static struct omt_pki pki;

/*
 * Runs the handshake with call <n> failing once more, in a child, under the
 * tag "probe"; the child then frees everything else and cleans OpenSSL up,
 * so its JSON report lists few chunks, and prints the sites of those left
 * under "probe": the leak. Returns the number of leaked chunks.
 */
static int probe(uint64_t n)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char err[512];
        one(n, "probe", err, sizeof err);
        SSL_CTX_free(srv);
        SSL_CTX_free(cli);
        omt_pki_free(&pki);
        OPENSSL_cleanup();
        char *buf = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&buf, &len);
        if (!m)
            _exit(1);
        ossl_mem_report(m, OSSL_MEM_REPORT_JSON);
        fclose(m);
        int left = 0;
        for (char *p = buf; (p = strstr(p, "\"tag\": \"probe\"")); p++) {
            char *s = strstr(p, "\"site\": ");
            char *e = s ? strchr(s, '}') : NULL;
            if (s && e)
                printf("      leaked: %.*s\n", (int)(e - s), s);
            left++;
        }
        fflush(stdout);
        _exit(left > 100 ? 100 : left);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return 1000;
    return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
    uint64_t step = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
    uint64_t first = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    if (step == 0)
        step = 1;
    ft_alarm(1200);
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV,
                                  "fail=0,on-error=report"};
    if (ossl_mem_init(&cfg) != 0)
        return 2;
    uint64_t live_at_init = stats().live_bytes;
    struct omt_opts o = {0, OMT_VERIFY_MUTUAL};
    if (omt_pki_make(&pki, OMT_KEY_EC) != 0 || !(srv = omt_server_ctx(&pki, &o)) ||
        !(cli = omt_client_ctx(&pki, &o)))
        return 2;
    char err[512];
    /* warm up: lazily created state (DRBGs, caches) is made here, not in the sweep */
    for (int i = 0; i < 3; i++)
        if (!one(0, "warm", err, sizeof err))
            return 2;
    uint64_t p0 = stats().fail_points;
    if (!one(0, "sweep", err, sizeof err)) {
        printf("FAIL: a handshake without injected failure failed\n");
        return 1;
    }
    uint64_t calls = stats().fail_points - p0;
    printf("one handshake makes %llu allocation calls; sweeping N = %llu..%llu step %llu\n",
           (unsigned long long)calls, (unsigned long long)first, (unsigned long long)calls,
           (unsigned long long)step);
    fflush(stdout);

    /* self-check: a deliberate leak must be seen and attributed */
    leak_at = calls / 2;
    printf("self-check, a deliberate leak of 77 bytes:\n");
    if (probe(leak_at) < 1) {
        printf("FAIL: the probe does not see a deliberate leak\n");
        return 1;
    }
    leak_at = 0;

    unsigned long long runs = 0, ok = 0, leaks = 0, cached = 0, checks_bad = 0;
    struct ossl_mem_stats st0 = stats();
    struct ossl_mem_tag_stats t0 = tag_stats("sweep");
    for (uint64_t n = first; n <= calls; n += step) {
        int r = one(n, "sweep", err, sizeof err);
        runs++;
        ok += r;
        struct ossl_mem_tag_stats t = tag_stats("sweep");
        if (t.live_chunks != t0.live_chunks) {
            int left = probe(n);
            if (left) {
                leaks++;
                printf("LEAK: with call %llu failing (first error: %s) %d chunks survive "
                       "OPENSSL_cleanup()\n", (unsigned long long)n, err, left);
            } else {
                cached++;
            }
            t0 = tag_stats("sweep");
        }
        if (n % 64 == 0 || n + step > calls) {
            long c = ossl_mem_check();
            if (c != 0) {
                checks_bad++;
                printf("FAIL: ossl_mem_check() found %ld problems after call %llu failed\n", c,
                       (unsigned long long)n);
            }
        }
    }
    struct ossl_mem_stats st = stats();
    printf("%llu handshakes with one failed allocation: %llu still succeeded, %llu failed "
           "cleanly; %llu left memory in OpenSSL's caches (freed by OPENSSL_cleanup), %llu "
           "leaked; %llu injected failures\n",
           runs, ok, runs - ok, cached, leaks,
           (unsigned long long)(st.injected_failures - st0.injected_failures));
    int bad = 0;
    if (faults(&st) != faults(&st0)) {
        printf("FAIL: safety faults during the sweep: %llu\n",
               (unsigned long long)(faults(&st) - faults(&st0)));
        bad = 1;
    }
    if (st.injected_failures - st0.injected_failures != runs) {
        printf("FAIL: %llu failures injected for %llu runs\n",
               (unsigned long long)(st.injected_failures - st0.injected_failures), runs);
        bad = 1;
    }
    if (leaks || checks_bad)
        bad = 1;
    SSL_CTX_free(srv);
    SSL_CTX_free(cli);
    omt_pki_free(&pki);
    OPENSSL_cleanup();
    st = stats();
    if (st.live_bytes != live_at_init) {
        printf("FAIL: after OPENSSL_cleanup() %llu bytes are live, %llu were at init\n",
               (unsigned long long)st.live_bytes, (unsigned long long)live_at_init);
        bad = 1;
    } else {
        printf("after OPENSSL_cleanup() the live bytes are back to %llu, as at init\n",
               (unsigned long long)live_at_init);
    }
    printf("%d passed, %d failed\n", !bad, bad);
    return bad;
}
