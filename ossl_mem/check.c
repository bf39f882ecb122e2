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
        else if (!om_canary_intact(h + 1, h->size, usable)) {
            om_hdr_load(h, &v0, &v1);
            if (v0 == w0 && v1 == w1 && !om_canary_intact(h + 1, h->size, usable))
                problem(w, OM_F_OVERFLOW, h, "canary after the requested size overwritten "
                                             "(buffer overflow)");
        }
        return;
    }
    if (state != OM_ST_FREED) {
        problem(w, OM_F_CORRUPT, h, "unknown state");
        return;
    }
    if (!om_freed_intact(h, usable)) {
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
    else if (!om_canary_intact(h + 1, h->size, usable))
        problem(arg, OM_F_OVERFLOW, h, "canary after the requested size overwritten "
                                       "(buffer overflow)");
}

/*
 * Reports a live shared chunk <h> that holds, at word <i>, a pointer into
 * live private chunk <ph> of this process's current generation: memory no
 * other process has at that address (O2's counterpart: a worker mutated
 * shared state with private memory, or a parent put post-fork memory into
 * a context it shares).
 */
static void cross_pool(struct walk *w, const struct om_chunk *h, size_t i,
                       const struct om_chunk *ph)
{
    atomic_fetch_add(&om_g.faults[OM_F_CROSS_POOL], 1);
    if (w->problems++ < MAX_LINES && om_g.opt.policy != OM_POLICY_IGNORE) {
        char a[256], b[256];
        om_msg("check: shared chunk %p (%u bytes, allocated at %s) holds at offset %zu a pointer "
               "into private chunk %p (%u bytes, allocated at %s) that other processes do not "
               "have: shared state was changed with private memory",
               (const void *)(h + 1), (unsigned)h->size, om_site_str(h->asite, a, sizeof a),
               i * 8, (const void *)(ph + 1), (unsigned)ph->size,
               om_site_str(ph->asite, b, sizeof b));
    }
}

/* Scans the words of live shared chunk <h> for pointers into fresh private chunks. */
static void scan_shared(struct walk *w, const struct om_chunk *h)
{
    const uintptr_t *q = (const uintptr_t *)(h + 1);
    uintptr_t base = (uintptr_t)om_g.region;
    size_t used = atomic_load(&om_g.region_used);
    for (size_t i = 0; i < h->size / 8; i++) {
        uintptr_t v = q[i];
        if (v - base >= used)
            continue;
        const struct om_chunk *ph = om_pool_containing(v);
        if (ph && ph->state == OM_ST_LIVE && ph->owner == om_g.owner &&
            v >= (uintptr_t)(ph + 1) && om_hdr_valid(ph, ((const uint64_t *)ph)[0],
                                                     ((const uint64_t *)ph)[1]))
            cross_pool(w, h, i, ph);
    }
}

/* Checks one chunk of the shared arena (and scans it, live, for private pointers). */
static void check_shared(struct om_chunk *h, size_t usable, void *arg)
{
    struct walk *w = arg;
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (!om_hdr_valid(h, w0, w1) || (h->cls >= OM_NCLS && h->cls != OM_CLS_LARGE)) {
        problem(w, OM_F_CORRUPT, h, "shared chunk header fails its check (overwritten)");
        return;
    }
    if (h->state == OM_ST_LIVE) {
        if (h->size > usable)
            problem(w, OM_F_CORRUPT, h, "size larger than its capacity");
        else if (!om_canary_intact(h + 1, h->size, usable))
            problem(w, OM_F_OVERFLOW, h, "canary after the requested size of a shared chunk "
                                         "overwritten (buffer overflow)");
        if (h->size <= usable && om_g.forked)
            scan_shared(w, h);
    } else if (h->state != OM_ST_FREED) {
        problem(w, OM_F_CORRUPT, h, "unknown state");
    } else if (!om_freed_intact(h, usable)) {
        problem(w, OM_F_UAF_WRITE, h, "freed shared chunk was written to after free");
    }
}

long ossl_mem_check(void)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    struct walk w = {0};
    om_pool_walk(check_small, &w);
    om_large_walk(check_large, &w);
    om_arena_walk(check_shared, &w);
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
