/* ft.h - helpers of the fork tests: run a function in a child with captured output and a time limit. */
#ifndef FT_H
#define FT_H

#include <sys/types.h>

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

#endif
