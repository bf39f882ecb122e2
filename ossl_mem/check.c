/* check.c - ossl_mem_check(): the integrity walk over every chunk ossl_mem owns. */
#include "om.h"

#define MAX_LINES 20 /* problems printed per call; all are counted */

struct walk {
    long problems;  /* found so far */
};

/* Counts a problem of kind <f> and prints it while under MAX_LINES. */
static void problem(struct walk *w, enum om_fault f, const struct om_chunk *h, const char *what)
{
    atomic_fetch_add(&om_g.faults[f], 1);
    if (w->problems++ < MAX_LINES && om_g.opt.policy != OM_POLICY_IGNORE) {
        char a[256], b[256];
        om_msg("check: %s at chunk %p (%u bytes, allocated at %s, last freed at %s)", what,
               (const void *)(h + 1), (unsigned)h->size, om_site_str(h->asite, a, sizeof a),
               om_site_str(h->fsite, b, sizeof b));
    }
}

/* Whether the usable area of a freed chunk is still all zero (the first word may hold a link). */
static bool body_clean(const struct om_chunk *h, size_t usable)
{
    const uint64_t *q = (const uint64_t *)(h + 1);
    for (size_t i = 1; i < usable / 8; i++)
        if (q[i])
            return false;
    return true;
}

/*
 * Checks one private chunk. Headers are read twice and a chunk whose header
 * changed between the reads is being used by another thread: skipped.
 */
static void check_small(struct om_chunk *h, size_t usable, void *arg)
{
    struct walk *w = arg;
    uint64_t w0, w1, v0, v1;
    om_hdr_load(h, &w0, &w1);
    if (w0 == 0 && w1 == 0)
        return; /* never handed out */
    if (!om_hdr_valid(h, w0, w1) || h->cls != om_run_class(h)) {
        om_hdr_load(h, &v0, &v1);
        if (v0 == w0 && v1 == w1)
            problem(w, OM_F_CORRUPT, h, "header fails its check (overwritten)");
        return;
    }
    uint8_t state = (uint8_t)(w1 >> 32);
    if (state == OM_ST_LIVE) {
        if (h->size > usable)
            problem(w, OM_F_CORRUPT, h, "size larger than its class");
        return;
    }
    if (state != OM_ST_FREED && state != OM_ST_QUAR) {
        problem(w, OM_F_CORRUPT, h, "unknown state");
        return;
    }
    if (om_g.opt.zero && !body_clean(h, usable)) {
        om_hdr_load(h, &v0, &v1);
        if (v0 == w0 && v1 == w1)
            problem(w, OM_F_UAF_WRITE, h, "freed chunk was written to after free");
    }
}

static void check_large(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (!om_hdr_valid(h, w0, w1) || h->cls != OM_CLS_LARGE || h->state != OM_ST_LIVE)
        problem(arg, OM_F_CORRUPT, h, "large chunk header fails its check (overwritten)");
}

long ossl_mem_check(void)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    struct walk w = {0};
    om_pool_walk(check_small, &w);
    om_large_walk(check_large, &w);
    if (!om_hooks_ours()) {
        atomic_fetch_add(&om_g.faults[OM_F_HOOKS], 1);
        if (om_g.opt.policy != OM_POLICY_IGNORE)
            om_msg("check: OpenSSL's memory functions were replaced after ossl_mem_init(): "
                   "memory allocated from now on is not ours");
        w.problems++;
    }
    if (w.problems > MAX_LINES && om_g.opt.policy != OM_POLICY_IGNORE)
        om_msg("check: %ld problems in all (first %d shown)", w.problems, MAX_LINES);
    return w.problems;
}
