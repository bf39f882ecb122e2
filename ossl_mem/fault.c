/* fault.c - the one place that reports corruption and bad frees: counts, one line each, never allocates. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "om.h"

/* Writes all of <buf> to stderr, retrying on EINTR; keeps errno. */
static void write_all(const char *buf, size_t len)
{
    int saved = errno;
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        buf += w;
        len -= (size_t)w;
    }
    errno = saved;
}

/* printf-style message on stderr, prefixed "ossl_mem: ", without allocating. */
void om_msg(const char *fmt, ...)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "ossl_mem: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + ((size_t)m < sizeof buf - (size_t)n - 1 ? (size_t)m
                                                                      : sizeof buf - (size_t)n - 2);
    buf[len++] = '\n';
    write_all(buf, len);
}

void om_die(const char *file, int line, const char *what)
{
    om_msg("internal invariant failed at %s:%d: %s; aborting", file, line, what);
    abort();
}

/* "file:line" of site <site> into <buf>; "unknown site" when nothing was recorded. */
const char *om_site_str(uint16_t site, char *buf, size_t len)
{
    const char *file;
    int line;
    if (!om_site_get(site, &file, &line))
        snprintf(buf, len, "%s", site == OM_SITE_OTHER ? "(site table full)" : "unknown site");
    else
        snprintf(buf, len, "%s:%d", *file ? file : "?", line);
    return buf;
}

static const char *const fault_name[OM_F_COUNT] = {
    [OM_F_DOUBLE_FREE] = "double free",
    [OM_F_DOUBLE_REALLOC] = "realloc after free",
    [OM_F_INVALID_FREE] = "invalid free",
    [OM_F_INVALID_REALLOC] = "invalid realloc",
    [OM_F_CORRUPT] = "corrupt chunk header",
    [OM_F_UAF_WRITE] = "write after free",
    [OM_F_HOOKS] = "allocator hooks replaced",
    [OM_F_INHERITED] = "inherited free",
    [OM_F_CROSS_POOL] = "private pointer in shared memory",
    [OM_F_OVERFLOW] = "buffer overflow",
};

static const char *const fault_action[OM_F_COUNT] = {
    [OM_F_DOUBLE_FREE] = "skipped",
    [OM_F_DOUBLE_REALLOC] = "returned NULL",
    [OM_F_INVALID_FREE] = "left alone",
    [OM_F_INVALID_REALLOC] = "returned NULL",
    [OM_F_CORRUPT] = "left alone",
    [OM_F_UAF_WRITE] = "reported",
    [OM_F_HOOKS] = "reported",
    [OM_F_INHERITED] = "left to its owner",
    [OM_F_CROSS_POOL] = "reported",
    [OM_F_OVERFLOW] = "reported",
};

/*
 * Counts fault <f> and, under policy report or abort, writes one line:
 * the pointer <p>, what the header <h> (may be NULL) says about the chunk
 * (size, allocating and first freeing site), the caller's <file>:<line>
 * and <detail>. Under report each (fault, caller site) pair is written
 * once; the counter keeps counting. Under abort the line ends with
 * "aborting" and the process dies with SIGABRT. An inherited free is an
 * expected event (a worker's exit cleanup), never fatal: it is reported
 * like under report.
 */
void om_fault(enum om_fault f, const void *p, const struct om_chunk *h, const char *file,
              int line, const char *detail)
{
    atomic_fetch_add(&om_g.faults[f], 1);
    enum om_policy pol = om_g.opt.policy;
    if (f == OM_F_INHERITED && pol == OM_POLICY_ABORT)
        pol = OM_POLICY_REPORT;
    if (pol == OM_POLICY_IGNORE)
        return;
    uint16_t site = om_site_id(file, line);
    if (pol == OM_POLICY_REPORT) {
        uint64_t bit = 1ull << (site & 63);
        if (atomic_fetch_or(&om_g.reported[f][site >> 6], bit) & bit)
            return;
    }
    char at[256], alloc[256], freed[256], chunk[640] = "";
    if (file || line)
        snprintf(at, sizeof at, "%s:%d", file && *file ? file : "?", line);
    else
        snprintf(at, sizeof at, "unknown site");
    if (h) {
        om_site_str(h->asite, alloc, sizeof alloc);
        if (h->fsite != OM_SITE_NONE && h->state != OM_ST_LIVE)
            snprintf(chunk, sizeof chunk, " (%u-byte chunk allocated at %s, first freed at %s)",
                     (unsigned)h->size, alloc, om_site_str(h->fsite, freed, sizeof freed));
        else
            snprintf(chunk, sizeof chunk, " (%u-byte chunk allocated at %s)", (unsigned)h->size,
                     alloc);
    }
    om_msg("%s of %p%s at %s%s%s; %s", fault_name[f], p, chunk, at, detail ? ": " : "",
           detail ? detail : "", pol == OM_POLICY_ABORT ? "aborting (on-error=abort)"
                                                        : fault_action[f]);
    if (pol == OM_POLICY_ABORT)
        abort();
}
