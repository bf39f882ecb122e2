/* router.c - OpenSSL's three memory callbacks: place each request (R1-R4) and check every free (O3). */
#include <stdio.h>

#include "om.h"

/*
 * Where a pointer handed to free or realloc lives. Found from the address
 * alone (R4), never from the caller's scope.
 */
enum where { W_NOT_OURS, W_BAD, W_SMALL, W_LARGE, W_LARGE_FREED, W_SHARED };

struct found {
    struct om_chunk *h;     /* header (W_SMALL, W_LARGE, W_LARGE_FREED) */
    size_t size;            /* requested bytes of a live chunk */
    size_t cap;             /* usable bytes of a live chunk */
    const char *why;        /* reason for W_BAD / W_NOT_OURS */
};

/*
 * Classifies <p> and, for a chunk in our pools, validates its header: a
 * header that fails its check is reported as corrupt (W_BAD). A chunk whose
 * header checks is returned whatever its state; the caller decides.
 */
static enum where locate(const void *p, struct found *f, const char *file, int line)
{
    const char *why;
    struct om_chunk *h = om_pool_find(p, &why);
    if (OM_LIKELY(h != NULL)) {
        uint64_t w0, w1;
        om_hdr_load(h, &w0, &w1);
        if (OM_UNLIKELY(!om_hdr_valid(h, w0, w1) || h->cls != om_run_class(h))) {
            if (h->state == 0 && w0 == 0 && (w1 << 16) == 0)
                f->why = "never handed out (inside ossl_mem's pools)";
            else {
                om_fault(OM_F_CORRUPT, p, NULL, file, line,
                         "header overwritten (buffer underflow or stray write)");
                f->why = NULL;
            }
            return W_BAD;
        }
        f->h = h;
        f->size = h->size;
        f->cap = om_cls[h->cls].size;
        return W_SMALL;
    }
    if (why) {
        f->why = why;
        return W_BAD;
    }
    if (om_in_arena(p)) {
        h = om_arena_find(p, &f->why, &f->cap);
        if (!h)
            return W_BAD;
        uint64_t w0, w1;
        om_hdr_load(h, &w0, &w1);
        if (OM_UNLIKELY(!om_hdr_valid(h, w0, w1))) {
            om_fault(OM_F_CORRUPT, p, NULL, file, line,
                     "header of a shared chunk overwritten (buffer underflow or stray write)");
            f->why = NULL;
            return W_BAD;
        }
        f->h = h;
        f->size = h->size;
        return W_SHARED;
    }
    int rc = om_large_find(p, &f->h, &f->size, &f->cap);
    if (rc == 1) {
        uint64_t w0, w1;
        om_hdr_load(f->h, &w0, &w1);
        if (OM_UNLIKELY(!om_hdr_valid(f->h, w0, w1))) {
            om_fault(OM_F_CORRUPT, p, NULL, file, line, "header of a large chunk overwritten");
            f->why = NULL;
            return W_BAD;
        }
        return W_LARGE;
    }
    if (rc == 2)
        return W_LARGE_FREED;
    f->why = "not allocated by ossl_mem (libc malloc, stack, static or wild pointer)";
    return W_NOT_OURS;
}

/*
 * Whether <p> is the start of a live chunk of ours whose header passes its
 * check; fills <c>. Reports nothing (the debugging entry points call it
 * before they hand the pointer to the router, which reports).
 */
bool om_chunk_live(const void *p, struct om_live *c)
{
    const char *why = NULL;
    uint64_t w0, w1;
    struct om_chunk *h = om_pool_find(p, &why);
    c->shared = false;
    if (h) {
        om_hdr_load(h, &w0, &w1);
        if (!om_hdr_valid(h, w0, w1) || h->state != OM_ST_LIVE || h->cls != om_run_class(h))
            return false;
        c->cap = om_cls[h->cls].size;
        c->size = h->size;
    } else if (why) {
        return false;
    } else if (om_in_arena(p)) {
        h = om_arena_find(p, &why, &c->cap);
        if (!h)
            return false;
        om_hdr_load(h, &w0, &w1);
        if (!om_hdr_valid(h, w0, w1) || h->state != OM_ST_LIVE)
            return false;
        c->size = h->size;
        c->shared = true;
    } else {
        if (om_large_find(p, &h, &c->size, &c->cap) != 1)
            return false;
        om_hdr_load(h, &w0, &w1);
        if (!om_hdr_valid(h, w0, w1))
            return false;
    }
    c->h = h;
    return true;
}

/* Reports a free or realloc of something that is not a live chunk. */
static OM_COLD void bad_pointer(enum where w, const struct found *f, void *p, const char *file,
                                int line, bool is_realloc)
{
    if (w == W_SMALL || w == W_LARGE_FREED || w == W_SHARED)
        om_fault(is_realloc ? OM_F_DOUBLE_REALLOC : OM_F_DOUBLE_FREE, p, f->h, file, line, NULL);
    else if (f->why)
        om_fault(is_realloc ? OM_F_INVALID_REALLOC : OM_F_INVALID_FREE, p, NULL, file, line,
                 f->why);
}

/* Allocates for the caller's thread; NULL with errno ENOMEM on failure. */
static void *alloc_in(struct om_tc *tc, size_t n, uint16_t site, uint8_t tag)
{
    void *p;
    if (OM_LIKELY(n <= OM_SMALL_MAX))
        p = om_pool_alloc(tc, n, site, tag);
    else if (n <= OM_MAX_REQUEST)
        p = om_large_alloc(tc, n, site, tag);
    else
        p = NULL;
    if (OM_UNLIKELY(!p)) {
        OM_CTR_ADD(tc->st.failed, 1);
        errno = ENOMEM;
        return NULL;
    }
    om_stat_alloc(tc, tag, n);
    return p;
}

/* Releases any validated live chunk, small or large, freed at <fsite>. */
static void release(struct om_tc *tc, struct om_chunk *h, size_t size, uint16_t fsite,
                    bool large)
{
    if (large) {
        om_stat_free(tc, size);
        om_large_free(tc, h, fsite);
        return;
    }
    om_free_small(tc, h, h->cls, size, fsite);
}

/*
 * Allocates in the shared arena for a thread inside a shared scope (R2).
 * Not counted in the process's private figures; a refusal (arena full)
 * counts as a failed allocation.
 */
static void *alloc_shared(struct om_tc *tc, size_t n, uint16_t site, uint8_t tag)
{
    void *p = om_arena_alloc(n, site, tag, tc->shared_set, om_g.proc_id);
    if (OM_UNLIKELY(!p))
        OM_CTR_ADD(tc->st.failed, 1);
    return p;
}

/*
 * Slow path of om_malloc_cb(): large requests, empty caches, shared scopes, the orphan cache, a
 * fork; <site> is the site's id, looked up by the caller.
 */
static OM_COLD void *malloc_slow_site(size_t n, uint16_t site)
{
    struct om_tc *tc = om_tc_enter();
    om_op_begin(tc);
    void *p;
    if (tc->shared_depth && !om_site_private(site))
        p = alloc_shared(tc, n, site, tc->tag);
    else
        p = alloc_in(tc, n, site, tc->tag);
    om_op_end(tc);
    om_tc_leave(tc);
    return p;
}

/* malloc_slow_site() for a site the fast path did not find in the table. */
static OM_COLD void *malloc_slow(size_t n, const char *file, int line)
{
    return malloc_slow_site(n, om_site_id(file, line));
}

/* Whether a live-byte change to <l> needs om_stat_flush(). */
static inline bool stat_due(const struct om_tc *tc, int64_t l)
{
    return (uint64_t)(l - tc->st.flushed + 4095) > 8190;
}

/* The end of an operation whose live-byte change must reach the global figure first. */
static OM_COLD void *end_flush(struct om_tc *tc, void *p)
{
    om_stat_flush(tc);
    om_op_end(tc);
    return p;
}

/*
 * OpenSSL's malloc. The fast path (a small request, a thread cache with a
 * chunk of the class, a known site) touches only the thread's own cache
 * and counters (the cache's first line, its count for the class and the
 * slot), the site table's entry and the chunk's header. It makes no calls:
 * whatever it does not handle goes, before anything is changed, to
 * malloc_slow_site() (a tail call, with the site looked up first so that
 * <file> and <line> are dead early: no register is saved), which does the
 * whole allocation; an unknown site goes to malloc_slow(), which registers it.
 */
void *om_malloc_cb(size_t n, const char *file, int line)
{
    uint32_t site = om_site_probe(file, line);
    if (OM_UNLIKELY(site > 0xFFFF))
        return malloc_slow(n, file, line);
    struct om_tc *tc = om_tls_tc;
    if (OM_UNLIKELY((uintptr_t)tc <= (uintptr_t)OM_TC_DEAD || n > OM_SMALL_MAX))
        return malloc_slow_site(n, (uint16_t)site);
    unsigned cls = om_size_class(n);
    uint32_t k = tc->cc[cls].n;
    if (OM_UNLIKELY(k == 0))
        return malloc_slow_site(n, (uint16_t)site);
    if (OM_UNLIKELY(tc->shared_depth))
        return malloc_slow_site(n, (uint16_t)site);
    __atomic_store_n(&tc->busy, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (OM_UNLIKELY(__atomic_load_n(&om_g.gate, __ATOMIC_RELAXED)))
        return malloc_slow_site(n, (uint16_t)site); /* waits there, nothing changed yet */
    struct om_chunk *h = tc->slot[cls][k - 1];
    tc->cc[cls].n = (uint16_t)(k - 1);
    om_hdr_store_live_w1(h, (uint32_t)n, (uint16_t)site,
                         tc->w1_tag | om_g.owner | (uint64_t)cls << 16);
    OM_CTR_ADD(tc->st.tag_allocs[tc->tag], 1);
    int64_t l = tc->st.live + (int64_t)n;
    OM_CTR_SET(tc->st.live, l);
    if (OM_UNLIKELY(stat_due(tc, l)))
        return end_flush(tc, om_user(h));
    om_op_end(tc);
    return om_user(h);
}

/*
 * Whether the calling process may free live shared chunk <h> (O2): it
 * allocated it, or the thread is inside a shared scope, or it is
 * destroying a shared context. Otherwise the free is an inherited one:
 * counted, reported once per site, not performed.
 */
static bool may_free_shared(const struct om_chunk *h, void *p, const char *file, int line)
{
    struct om_tc *tc = om_tls_tc;
    if (h->owner == om_g.proc_id ||
        ((uintptr_t)tc > (uintptr_t)OM_TC_DEAD && (tc->shared_depth || tc->reclaiming)))
        return true;
    char why[96];
    snprintf(why, sizeof why, "the chunk belongs to process %d; not performed",
             (int)om_arena_id_pid(h->owner));
    om_fault(OM_F_INHERITED, p, h, file, line, why);
    return false;
}

/* Slow path of om_free_cb(): large and shared chunks, bad pointers, the orphan cache. */
static OM_COLD void free_slow(void *p, const char *file, int line)
{
    if (!p)
        return;
    struct found f;
    enum where w = locate(p, &f, file, line);
    if (OM_UNLIKELY(w != W_SMALL && w != W_LARGE && w != W_SHARED) ||
        OM_UNLIKELY(f.h->state != OM_ST_LIVE)) {
        bad_pointer(w, &f, p, file, line, false);
        return;
    }
    if (w == W_SHARED) {
        if (may_free_shared(f.h, p, file, line))
            om_arena_free(f.h, om_site_id(file, line));
        return;
    }
    struct om_tc *tc = om_tc_enter();
    om_op_begin(tc);
    release(tc, f.h, f.size, om_site_id(file, line), w == W_LARGE);
    om_op_end(tc);
    om_tc_leave(tc);
}

/*
 * free_slow() called from the fast path once <file>:<line> became site id
 * <site> (a site the table holds, or 0 for none): decoded back for the reports.
 */
static OM_COLD void free_slow_site(void *p, uint32_t site)
{
    const char *file = NULL;
    int line = 0;
    om_site_get((uint16_t)site, &file, &line);
    free_slow(p, file, line);
}

/*
 * The rest of a free that the fast path validated but does not finish
 * itself (a full cache, an unmapped quarantine ring, a fork in progress, a
 * debugging scrub), its site known. Nothing was changed yet; the busy flag
 * may be up. Not marked cold: gcc would compile it for size.
 */
static __attribute__((noinline)) void free_rest_site(struct om_tc *tc, struct om_chunk *h,
                                                      uint32_t site)
{
    om_op_begin(tc);
    om_free_small(tc, h, h->cls, h->size, (uint16_t)site);
    om_op_end(tc);
}

/* The end of a free that must drain the quarantine and/or flush the live bytes. */
static OM_COLD void end_free(struct om_tc *tc, bool drain, bool flush)
{
    if (drain)
        om_quar_drain(tc);
    if (flush)
        om_stat_flush(tc);
    om_op_end(tc);
}

/*
 * The part of a fast free common to both destinations: counters, the wipe
 * of the requested bytes, the header marked freed with its free site.
 * Returns whether the live bytes must be flushed.
 */
static inline __attribute__((always_inline)) bool free_commit(struct om_tc *tc,
                                                              struct om_chunk *h, uint32_t size,
                                                              uint32_t site, bool zero)
{
    if (zero)
        om_wipe(om_user(h), (size + 15) & ~15u);
    OM_CTR_ADD(tc->st.frees, 1);
    int64_t l = tc->st.live - (int64_t)size;
    OM_CTR_SET(tc->st.live, l);
    /* a live header has free site 0: the check changes by constants and the new site's mix */
    h->fsite = (uint16_t)site;
    h->state = OM_ST_FREED;
    h->check ^= om_g.k_free_freed ^ om_mix16(site, om_g.site_key);
    return stat_due(tc, l);
}

/*
 * OpenSSL's free, specialised for zeroing <zero> and a quarantine <quar>
 * (constants in each entry point; om_free_cb() reads the options). The fast
 * path takes a pointer inside the private region whose header is live and
 * passes its keyed check: the check covers the header's address, so a
 * pointer that is not a chunk start would need 16 bytes in front of it that
 * forge a live header for that very address under this process's secret
 * cookie. Everything else (large chunks, NULL, double frees, interior and
 * foreign pointers, damaged headers) goes through free_slow(), which
 * classifies by address arithmetic and reports (with the site decoded back,
 * free_slow_site(), once it was looked up). The fast path makes no calls:
 * what it does not finish goes to free_rest_site() before anything is
 * changed, and a quarantine drain or a statistics flush to end_free() at
 * the end, both as tail calls.
 */
static inline __attribute__((always_inline)) void free_fast(void *p, const char *file, int line,
                                                            bool zero, bool quar, bool whole)
{
    if (OM_UNLIKELY(!p))
        return; /* one free in seven */
    uintptr_t a = (uintptr_t)p;
    /* the site first: after it <file> and <line> are dead, which leaves enough registers for
       the rest without saving any; each test has its own branch (combined, the compiler
       materialises every flag) */
    uint32_t site = om_site_probe(file, line);
    if (OM_UNLIKELY(site > 0xFFFF))
        return free_slow(p, file, line);
    if (OM_UNLIKELY(a - om_g.fast_lo >= atomic_load_explicit(&om_g.fast_len, memory_order_relaxed)))
        return free_slow_site(p, site); /* NULL too */
    if (OM_UNLIKELY(a & 15))
        return free_slow_site(p, site);
    struct om_chunk *h = om_hdr(p);
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (OM_UNLIKELY((uint8_t)(w1 >> 32) != OM_ST_LIVE))
        return free_slow_site(p, site);
    if (OM_UNLIKELY((uint16_t)(w1 >> 48) != (om_check_base(h, w0, w1) ^ om_g.k_live)))
        return free_slow_site(p, site);
    unsigned cls = (uint8_t)(w1 >> 16);
    if (OM_UNLIKELY(cls >= OM_NCLS))
        return free_slow_site(p, site); /* reports the header */
    uint32_t size = (uint32_t)w0;
    struct om_tc *tc = om_tls_tc;
    if (OM_UNLIKELY((uintptr_t)tc <= (uintptr_t)OM_TC_DEAD))
        return free_slow_site(p, site);
    if (OM_UNLIKELY(whole))
        return free_rest_site(tc, h, site);
    __atomic_store_n(&tc->busy, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (OM_UNLIKELY(__atomic_load_n(&om_g.gate, __ATOMIC_RELAXED)))
        return free_rest_site(tc, h, site);
    if (quar && size > om_g.opt.quarantine_over) {
        struct om_quar *q = &tc->quar;
        uint64_t *ring = q->ring;
        if (OM_UNLIKELY(!ring))
            return free_rest_site(tc, h, site);
        bool flush = free_commit(tc, h, size, site, zero);
        uint32_t t = q->tail;
        ring[t & q->mask] = (uint64_t)(uintptr_t)h | (uint64_t)cls << 48;
        q->tail = ++t;
        size_t bytes = q->bytes + om_cls[cls].size;
        q->bytes = bytes;
        bool drain = bytes > om_g.opt.quarantine || t - q->head > q->mask;
        if (OM_UNLIKELY(drain | flush))
            return end_free(tc, drain, flush);
    } else {
        uint32_t n = tc->cc[cls].n;
        if (OM_UNLIKELY(n >= tc->cc[cls].cap))
            return free_rest_site(tc, h, site);
        bool flush = free_commit(tc, h, size, site, zero);
        tc->slot[cls][n] = h;
        tc->cc[cls].n = (uint16_t)(n + 1);
        if (OM_UNLIKELY(flush))
            return end_free(tc, false, true);
    }
    om_op_end(tc);
}

/* The free entry point that reads the options (internal callers, the debugging entry points). */
void om_free_cb(void *p, const char *file, int line)
{
    free_fast(p, file, line, om_g.opt.zero, om_g.opt.quarantine != 0, om_g.wipe_whole);
}

/* The free entry points installed without debugging options, one per option set. */
static void free_zq(void *p, const char *file, int line) { free_fast(p, file, line, 1, 1, 0); }
static void free_z(void *p, const char *file, int line) { free_fast(p, file, line, 1, 0, 0); }
static void free_q(void *p, const char *file, int line) { free_fast(p, file, line, 0, 1, 0); }
static void free_n(void *p, const char *file, int line) { free_fast(p, file, line, 0, 0, 0); }

/* The free entry point OpenSSL gets when no debugging option is on: the options are fixed at init. */
void (*om_free_entry(void))(void *p, const char *file, int line)
{
    bool q = om_g.opt.quarantine != 0;
    if (om_g.wipe_whole)
        return om_free_cb;
    return om_g.opt.zero ? (q ? free_zq : free_z) : (q ? free_q : free_n);
}

/*
 * realloc of a live shared chunk: it stays in the arena (R3), with its
 * owner and set, whoever calls (a worker that grows a shared structure
 * mutates shared state; the old block must go, as OpenSSL drops it).
 */
static void *realloc_shared(struct om_chunk *h, void *p, size_t n, size_t size, size_t cap,
                            uint16_t site)
{
    struct om_tc *tc = om_tc_enter();
    OM_CTR_ADD(tc->st.reallocs, 1);
    om_tc_leave(tc);
    if (n <= cap && (n > cap / 2 || cap <= 16)) {
        om_arena_lock();
        h->size = n >= UINT32_MAX ? UINT32_MAX : (uint32_t)n;
        h->asite = site;
        om_hdr_seal(h);
        om_arena_unlock();
        return p;
    }
    void *q = om_arena_alloc(n, site, h->tag, h->flags, h->owner);
    if (!q) {
        tc = om_tc_enter();
        OM_CTR_ADD(tc->st.failed, 1);
        om_tc_leave(tc);
        return NULL;
    }
    memcpy(q, p, n < size ? n : size);
    om_arena_free(h, site);
    return q;
}

/*
 * realloc with OpenSSL's semantics: realloc(NULL, n) allocates, realloc(p,
 * 0) frees and returns NULL. A chunk stays in place when the new size fits
 * its usable size and is more than half of it; otherwise it moves within
 * its pool (R3), keeps its tag, and the old block is wiped like any free.
 * A pointer that is not a live chunk is reported and NULL is returned, so
 * the caller keeps (and does not lose) what it had.
 */
void *om_realloc_cb(void *p, size_t n, const char *file, int line)
{
    if (!p || n == 0) {
        struct om_tc *tc = om_tc_enter();
        OM_CTR_ADD(tc->st.reallocs, 1);
        om_tc_leave(tc);
        if (!p)
            return om_malloc_cb(n, file, line);
        om_free_cb(p, file, line);
        return NULL;
    }
    struct found f;
    enum where w = locate(p, &f, file, line);
    if (OM_UNLIKELY(w != W_SMALL && w != W_LARGE && w != W_SHARED) ||
        OM_UNLIKELY(f.h->state != OM_ST_LIVE)) {
        bad_pointer(w, &f, p, file, line, true);
        errno = ENOMEM;
        return NULL;
    }
    if (w == W_SHARED)
        return realloc_shared(f.h, p, n, f.size, f.cap, om_site_id(file, line));
    struct om_tc *tc = om_tc_enter();
    om_op_begin(tc);
    uint16_t site = om_site_id(file, line);
    struct om_chunk *h = f.h;
    void *q = p;
    OM_CTR_ADD(tc->st.reallocs, 1);
    if (n <= f.cap && (n > f.cap / 2 || (w == W_SMALL && h->cls == 0))) {
        om_stat_live(tc, (int64_t)n - (int64_t)f.size);
        /* the free of a small chunk wipes its requested bytes only: what it gives up goes now */
        if (w == W_SMALL && n < f.size && om_g.opt.zero && !om_g.wipe_whole)
            om_wipe_tail((char *)p + n, f.size - n);
        h->size = n >= UINT32_MAX ? UINT32_MAX : (uint32_t)n;
        h->asite = site;
        om_hdr_seal(h);
        if (w == W_LARGE)
            om_large_resize(h, n);
        goto out;
    }
    q = alloc_in(tc, n, site, h->tag);
    if (!q)
        goto out;
    memcpy(q, p, n < f.size ? n : f.size);
    release(tc, h, f.size, site, w == W_LARGE);
out:
    om_op_end(tc);
    om_tc_leave(tc);
    return q;
}
