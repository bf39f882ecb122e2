/* ft.c - helpers of the fork tests: children with captured output, time limits. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ossl_mem/ossl_mem.h>

#include "fork_tests/ft.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int ft_run(struct ft_child *r, unsigned timeout, void (*fn)(const void *a, const void *b),
           const void *a, const void *b)
{
    int po[2], pe[2];
    memset(r, 0, sizeof *r);
    fflush(NULL);
    if (pipe(po) != 0)
        return -1;
    if (pipe(pe) != 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(po[1], STDOUT_FILENO);
        dup2(pe[1], STDERR_FILENO);
        close(po[0]); close(po[1]); close(pe[0]); close(pe[1]);
        fn(a, b);
        fflush(NULL);
        _exit(0);
    }
    close(po[1]);
    close(pe[1]);
    struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
    char *buf[2] = {r->out, r->err};
    size_t len[2] = {0, 0}, cap = sizeof r->out - 1;
    int open_fds = 2;
    double end = now() + timeout;
    while (open_fds > 0) {
        double left = end - now();
        if (left <= 0) {
            kill(pid, SIGKILL);
            r->timed_out = 1;
            break;
        }
        int n = poll(fds, 2, (int)(left * 1000) + 1);
        if (n < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[4096];
            ssize_t got = read(fds[i].fd, tmp, sizeof tmp);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t take = (size_t)got < cap - len[i] ? (size_t)got : cap - len[i];
            memcpy(buf[i] + len[i], tmp, take);
            len[i] += take;
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    r->out[len[0]] = 0;
    r->err[len[1]] = 0;
    /* the streams are closed; give the child the rest of its time to exit */
    for (;;) {
        pid_t w = waitpid(pid, &r->status, WNOHANG);
        if (w == pid)
            break;
        if (now() > end && !r->timed_out) {
            kill(pid, SIGKILL);
            r->timed_out = 1;
        }
        usleep(1000);
    }
    return 0;
}

unsigned ft_count_lines(const char *s)
{
    unsigned n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "fork test: time limit reached (a hang is a failure)\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to do */
    }
    _exit(124);
}

void ft_alarm(unsigned seconds)
{
    signal(SIGALRM, on_alarm);
    alarm(seconds);
}

int ft_fails;

struct ossl_mem_stats ft_stats(void)
{
    struct ossl_mem_stats s;
    ossl_mem_get_stats(&s);
    return s;
}

void ft_init_or_die(const char *options)
{
    struct ossl_mem_config cfg = {OSSL_MEM_CONFIG_VERSION, OSSL_MEM_CFG_IGNORE_ENV, options};
    int rc = ossl_mem_init(&cfg);
    if (rc != 0) {
        printf("FAIL: ossl_mem_init(%s): %s\n", options ? options : "", ossl_mem_strerror(rc));
        exit(1);
    }
}

int ft_build_shared(struct ft_shared *s, int tls_version)
{
    struct omt_opts o = {tls_version, OMT_VERIFY_MUTUAL};
    int rc = ossl_mem_shared_begin();
    if (rc != 0) {
        printf("shared_begin: %s\n", ossl_mem_strerror(rc));
        return -1;
    }
    int bad = omt_pki_make(&s->pki, OMT_KEY_EC);
    s->srv = bad ? NULL : omt_server_ctx(&s->pki, &o);
    s->cli = bad ? NULL : omt_client_ctx(&s->pki, &o);
    ossl_mem_shared_end();
    if (!s->srv || !s->cli)
        return -1;
    if ((rc = ossl_mem_share_ssl_ctx(s->srv)) != 0 || (rc = ossl_mem_share_ssl_ctx(s->cli)) != 0) {
        printf("share_ssl_ctx: %s\n", ossl_mem_strerror(rc));
        return -1;
    }
    return 0;
}
