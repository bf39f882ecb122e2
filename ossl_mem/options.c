/* options.c - the one table of options: parsing of "word,word=value" strings and the help text. */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "om.h"

enum kind { K_SIZE, K_BOOL, K_POLICY, K_PATH, K_HELP, K_BYTE, K_FAIL, K_TAGLIMIT, K_COUNT };

struct option {
    const char *name;   /* word in the options string */
    enum kind kind;     /* how its value is read */
    const char *def;    /* default, as text for the help */
    const char *help;   /* one line */
    size_t off;         /* field of struct om_opts it sets */
};

#define F(field) offsetof(struct om_opts, field)

static const struct option table[] = {
    {"quarantine", K_SIZE, "4K",
     "bytes of freed chunks each thread holds back before reuse, so a late double free "
     "still finds the freed mark (0 disables)", F(quarantine)},
    {"quarantine-over", K_SIZE, "32",
     "only chunks requested with more bytes than this enter the quarantine; smaller ones "
     "are reused at once (0: every chunk)", F(quarantine_over)},
    {"zero", K_BOOL, "on",
     "wipe every freed chunk over its whole usable size, and the old block of a moving "
     "realloc (no-zero turns it off)", F(zero)},
    {"on-error", K_POLICY, "report",
     "what a double, invalid or corrupt free does: report (one line per site, skip it), "
     "abort (one line, SIGABRT) or ignore (count only)", F(policy)},
    {"report", K_PATH, "none",
     "write a report at exit: stderr, or a file name (JSON if it ends in .json; %p becomes "
     "the pid); the live chunks it lists are the leaks", F(report)},
    {"reserve", K_SIZE, "32G",
     "address space reserved for the private pools (halved until the system grants it)",
     F(reserve)},
    {"shared", K_SIZE, "64M",
     "size of the shared arena for SSL_CTX data built in shared scopes, mapped at init and "
     "seen by every process forked later (0: no arena)", F(shared)},
    {"shared-locks", K_BOOL, "on",
     "make OpenSSL's locks that live in the arena process-shared; without it a worker can "
     "wait forever for a lock a sibling released (testing only)", F(shared_locks)},
    {"robust-locks", K_BOOL, "on",
     "make those locks robust as well (OpenSSL's rwlocks in the arena become robust "
     "recursive mutexes): a worker that dies holding one, at any instruction, leaves it to "
     "the next locker instead of blocking everyone; off only to show the hang",
     F(robust_locks)},
    {"shared-prepare", K_BOOL, "on",
     "warm OpenSSL up privately before the first shared scope and fill a context's lazily "
     "computed state (and RSA blinding) at registration; off only to show what fails without",
     F(shared_prepare)},
    {"poison", K_BYTE, "off",
     "fill every new chunk with BYTE (0x50 if none is given; decimal or 0x..), so code that "
     "reads memory it never wrote sees a recognisable value", F(poison)},
    {"fill", K_BOOL, "off",
     "write a pattern (0xdf) over every freed chunk instead of zeros, and verify it when the "
     "chunk is handed out again and in ossl_mem_check: a write after free is counted in "
     "uaf_writes and reported with the allocating and freeing sites", F(fill)},
    {"canary", K_BOOL, "off",
     "keyed bytes (8 to 23) right after each chunk's requested size, checked on free, realloc "
     "and by ossl_mem_check: an overflow is counted in overflows and reported with the "
     "allocation site", F(canary)},
    {"caller", K_BOOL, "on",
     "record OpenSSL's file:line of every allocation and of the last free in the chunk's "
     "header (no cost) and print them in every report; no-caller records nothing",
     F(caller)},
    {"fail", K_FAIL, "off",
     "failure injection: fail the Nth allocation call (malloc, or realloc to a non-zero "
     "size), or each call with probability 1/N (fail=1/N, seeded by seed=); fail=0 only arms "
     "it for ossl_mem_fail_at()", F(fail_nth)},
    {"seed", K_COUNT, "1", "seed of fail=1/N (the same seed fails the same calls)", F(seed)},
    {"limit", K_SIZE, "none",
     "allocations that would take the live private bytes beyond SIZE return NULL (counted "
     "in failed_allocs)", F(limit)},
    {"tag-limit", K_TAGLIMIT, "none",
     "the same for the live bytes allocated under one tag; may be given up to 8 times",
     F(tag_limits)},
    {"check", K_COUNT, "0",
     "run ossl_mem_check() every N allocator operations (0: never)", F(check_every)},
    {"help", K_HELP, "-", "print this table on stderr", 0},
};

#define NOPT (sizeof table / sizeof table[0])

void om_opts_default(struct om_opts *o)
{
    memset(o, 0, sizeof *o);
    o->quarantine = 4 * 1024;
    o->quarantine_over = 32;
    o->zero = true;
    o->policy = OM_POLICY_REPORT;
    o->reserve = (size_t)32 << 30;
    o->shared = (size_t)64 << 20;
    o->shared_locks = true;
    o->robust_locks = true;
    o->shared_prepare = true;
    o->caller = true;
    o->poison_byte = 0x50;
    o->seed = 1;
}

void ossl_mem_options_help(FILE *out)
{
    fprintf(out, "ossl_mem options (OSSL_MEM_OPTIONS=\"word,word=value,...\"; sizes take K, M or G):\n");
    for (size_t i = 0; i < NOPT; i++) {
        const struct option *op = &table[i];
        const char *form = op->kind == K_SIZE     ? "=SIZE"
                           : op->kind == K_POLICY ? "=report|abort|ignore"
                           : op->kind == K_PATH   ? "=stderr|FILE"
                           : op->kind == K_BYTE   ? "[=BYTE]"
                           : op->kind == K_FAIL   ? "=N|1/N"
                           : op->kind == K_TAGLIMIT ? "=TAG:SIZE"
                           : op->kind == K_COUNT  ? "=N"
                                                  : "";
        char head[64];
        snprintf(head, sizeof head, "%s%s%s", op->kind == K_BOOL ? "[no-]" : "", op->name, form);
        fprintf(out, "  %-28s %s (default: %s)\n", head, op->help, op->def);
    }
}

/*
 * Reads the number at the start of value <v> (<len> bytes, which must start
 * with a digit): decimal, or 0x hexadecimal when <hex_ok>. The value is
 * copied into <buf> to be NUL-terminated; *rest points at what follows the
 * number there. Returns 0 or -1.
 */
static int lead_number(const char *v, size_t len, bool hex_ok, char buf[32],
                       unsigned long long *n, char **rest)
{
    if (len == 0 || len > 30 || *v < '0' || *v > '9')
        return -1;
    memcpy(buf, v, len);
    buf[len] = 0;
    bool hex = hex_ok && len > 2 && buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X');
    if (hex && !isxdigit((unsigned char)buf[2]))
        return -1;
    errno = 0;
    *n = strtoull(hex ? buf + 2 : buf, rest, hex ? 16 : 10);
    return errno ? -1 : 0;
}

/* Parses a size with an optional K/M/G suffix (and B). Returns 0 or -1. */
static int parse_size(const char *v, size_t len, size_t *out)
{
    char buf[32], *end;
    unsigned long long n;
    if (lead_number(v, len, false, buf, &n, &end) != 0)
        return -1;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || (shift && n > (~0ull >> shift)))
        return -1;
    *out = (size_t)(n << shift);
    return 0;
}

/* Parses a plain number, decimal or 0x hexadecimal, without suffix. Returns 0 or -1. */
static int parse_number(const char *v, size_t len, size_t *out)
{
    char buf[32], *end;
    unsigned long long n;
    if (lead_number(v, len, true, buf, &n, &end) != 0 || *end)
        return -1;
    *out = (size_t)n;
    return 0;
}

/*
 * Applies the options string <s> (from <origin>, for messages) to <o>.
 * Returns 0, or OSSL_MEM_E_OPTIONS with a message naming the bad word in
 * <err>. Words are separated by commas; spaces around them are ignored.
 */
int om_opts_parse(struct om_opts *o, const char *s, const char *origin, char *err,
                  size_t errlen)
{
    char dummy[1];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    while (s && *s) {
        while (*s == ',' || *s == ' ' || *s == '\t')
            s++;
        if (!*s)
            break;
        const char *w = s;
        while (*s && *s != ',')
            s++;
        size_t wlen = (size_t)(s - w);
        while (wlen && (w[wlen - 1] == ' ' || w[wlen - 1] == '\t'))
            wlen--;
        const char *eq = memchr(w, '=', wlen);
        size_t nlen = eq ? (size_t)(eq - w) : wlen;
        const char *v = eq ? eq + 1 : NULL;
        size_t vlen = eq ? wlen - nlen - 1 : 0;
        bool neg = false;
        const struct option *op = NULL;
        for (size_t i = 0; i < NOPT && !op; i++) {
            const char *n = table[i].name;
            if (strlen(n) == nlen && memcmp(n, w, nlen) == 0)
                op = &table[i];
            else if (table[i].kind == K_BOOL && nlen == strlen(n) + 3 &&
                     memcmp(w, "no-", 3) == 0 && memcmp(w + 3, n, nlen - 3) == 0)
                op = &table[i], neg = true;
        }
        if (!op) {
            snprintf(err, errlen, "unknown option '%.*s' in %s (OSSL_MEM_OPTIONS=help lists them)",
                     (int)wlen, w, origin);
            return OSSL_MEM_E_OPTIONS;
        }
        bool need_value = op->kind != K_BOOL && op->kind != K_HELP;
        if ((op->kind == K_BYTE ? false : need_value != (v != NULL)) || (v && vlen == 0)) {
            snprintf(err, errlen, "option '%.*s' in %s %s", (int)wlen, w, origin,
                     need_value ? "needs a value (name=value)" : "takes no value");
            return OSSL_MEM_E_OPTIONS;
        }
        int bad = 0;
        char *field = (char *)o + op->off;
        switch (op->kind) {
        case K_SIZE:
            bad = parse_size(v, vlen, (size_t *)field);
            break;
        case K_BOOL:
            *(bool *)field = !neg;
            break;
        case K_POLICY: {
            enum om_policy *pol = (enum om_policy *)field;
            if (vlen == 6 && memcmp(v, "report", 6) == 0)
                *pol = OM_POLICY_REPORT;
            else if (vlen == 5 && memcmp(v, "abort", 5) == 0)
                *pol = OM_POLICY_ABORT;
            else if (vlen == 6 && memcmp(v, "ignore", 6) == 0)
                *pol = OM_POLICY_IGNORE;
            else
                bad = 1;
            break;
        }
        case K_PATH:
            if (vlen >= sizeof o->report)
                bad = 1;
            else if (vlen == 4 && memcmp(v, "none", 4) == 0)
                field[0] = 0;
            else {
                memcpy(field, v, vlen);
                field[vlen] = 0;
            }
            break;
        case K_HELP:
            ossl_mem_options_help(stderr);
            break;
        case K_BYTE: {
            size_t b = o->poison_byte;
            bad = v && (parse_number(v, vlen, &b) || b > 255);
            o->poison = true;
            o->poison_byte = (uint8_t)b;
            break;
        }
        case K_COUNT:
            bad = parse_number(v, vlen, (size_t *)field);
            break;
        case K_FAIL: {
            size_t n = 0;
            o->fail_set = true;
            if (vlen > 2 && memcmp(v, "1/", 2) == 0) {
                bad = parse_number(v + 2, vlen - 2, &n) || n == 0;
                o->fail_one_in = n;
                o->fail_nth = 0;
            } else {
                bad = parse_number(v, vlen, &n);
                o->fail_nth = n;
                o->fail_one_in = 0;
            }
            break;
        }
        case K_TAGLIMIT: {
            const char *colon = memchr(v, ':', vlen);
            size_t tlen = colon ? (size_t)(colon - v) : 0;
            if (!colon || tlen == 0 || tlen > OSSL_MEM_TAG_NAME_MAX ||
                o->ntag_limits >= sizeof o->tag_limits / sizeof o->tag_limits[0]) {
                bad = 1;
                break;
            }
            struct om_tag_limit *tl = &o->tag_limits[o->ntag_limits];
            bad = parse_size(colon + 1, vlen - tlen - 1, &tl->bytes);
            if (!bad) {
                memcpy(tl->tag, v, tlen);
                tl->tag[tlen] = 0;
                o->ntag_limits++;
            }
            break;
        }
        }
        if (bad) {
            snprintf(err, errlen, "bad value in option '%.*s' in %s", (int)wlen, w, origin);
            return OSSL_MEM_E_OPTIONS;
        }
    }
    return 0;
}

int ossl_mem_options_check(const char *options, char *err, size_t errlen)
{
    struct om_opts o;
    om_opts_default(&o);
    if (err && errlen)
        err[0] = 0;
    return om_opts_parse(&o, options, "options", err, errlen);
}
