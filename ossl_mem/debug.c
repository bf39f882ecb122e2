/*
 * debug.c - the checking entry points: installed in OpenSSL instead of
 * router.c's when a debugging option is on (poison, fill, canary,
 * no-caller, fail, limit, tag-limit, check), so that with the defaults
 * none of this costs anything.
 *
 * Each entry point does its checks and its bookkeeping, then calls the
 * router for the allocation itself. With canaries the router is asked for
 * 8 bytes more than requested; the header is then set back to the
 * requested size, and the bytes from there to the next 16-byte boundary
 * past those 8 (8 to 23 bytes, never beyond the chunk's capacity) hold
 * values keyed by the chunk's address and the process's cookie.
 */
#include <stdio.h>

#include "om.h"

#define CANARY_MIN  8    /* bytes always added to a request */

static struct {
    bool on;                            /* the entry points are installed */
    bool armed;                         /* failure injection counts (from the end of init) */
    uint64_t canary_key;                /* secret of canary bytes */
    _Atomic uint64_t points;            /* allocation calls seen by failure injection */
    _Atomic uint64_t fail_at;           /* the call (value of <points>) that fails, 0: none */
    _Atomic uint64_t injected;          /* failures injected */
    _Atomic uint64_t ops;               /* operations, for check=N */
    bool limits;                        /* limit= or tag-limit= given */
    _Atomic int64_t live;               /* live private requested bytes (limit=) */
    _Atomic int64_t tag_live[OSSL_MEM_MAX_TAGS];
    int64_t tag_limit[OSSL_MEM_MAX_TAGS]; /* 0: none */
} dbg;

/* ------------------------------------------------------------------ */
/* Canaries and fill patterns                                          */
/* ------------------------------------------------------------------ */

/* End (exclusive, from the user pointer) of the canary of a chunk of <size> bytes and capacity <cap>. */
static size_t canary_end(size_t size, size_t cap)
{
    size_t end = (size + CANARY_MIN + 15) & ~(size_t)15;
    return end < cap ? end : cap;
}

/*
 * The canary word of the chunk whose user pointer is <user>: the canary
 * byte at offset j is byte j % 8 of it (little-endian), never 0, so a zeroed
 * tail is not a canary. The canary ends on a multiple of 8 (16, or the
 * capacity), so it is written as words; the first one keeps the user's
 * bytes below the requested size.
 */
static inline uint64_t canary_word(const void *user)
{
    uint64_t k = (dbg.canary_key ^ (uint64_t)(uintptr_t)user) * 0x9E3779B97F4A7C15ull;
    return (k ^ k >> 29) | 0x0101010101010101ull;
}

static inline void canary_write(void *user, size_t size, size_t cap)
{
    uint64_t w = canary_word(user), v;
    char *c = user;
    size_t j = size & ~(size_t)7, end = canary_end(size, cap);
    if (size & 7) {
        uint64_t keep = (1ull << ((size & 7) * 8)) - 1;
        memcpy(&v, c + j, 8);
        v = (v & keep) | (w & ~keep);
        memcpy(c + j, &v, 8);
        j += 8;
    }
    for (; j < end; j += 8)
        memcpy(c + j, &w, 8);
}

static inline bool canary_ok(const void *user, size_t size, size_t cap)
{
    uint64_t w = canary_word(user), v, bad = 0;
    const char *c = user;
    size_t j = size & ~(size_t)7, end = canary_end(size, cap);
    if (size & 7) {
        memcpy(&v, c + j, 8);
        bad = (v ^ w) & ~((1ull << ((size & 7) * 8)) - 1);
        j += 8;
    }
    for (; j < end; j += 8) {
        memcpy(&v, c + j, 8);
        bad |= v ^ w;
    }
    return bad == 0;
}

bool om_canary_intact(const void *user, size_t size, size_t cap)
{
    return !om_g.opt.canary || size >= UINT32_MAX || canary_ok(user, size, cap);
}

static const uint8_t *fill_ref; /* OM_SMALL_MAX bytes of the fill pattern (fill only) */

/*
 * Whether the <usable> bytes at <user>, from the second word on, all hold
 * the word <pat>: small chunks word by word, larger ones with memcmp()
 * against a reference page of the pattern (libc's is vectorised).
 */
static inline bool all_words(const void *user, size_t usable, uint64_t pat)
{
    const uint64_t *q = user;
    size_t n = usable / 8;
    if (n > 16 && pat == OM_FILL_WORD && fill_ref && usable <= OM_SMALL_MAX)
        return memcmp(q + 1, fill_ref, usable - 8) == 0;
    uint64_t acc = 0;
    for (size_t i = 1; i < n; i++)
        acc |= q[i] ^ pat;
    return acc == 0;
}

/*
 * Whether the usable area of a freed chunk holds what free left there: the
 * fill pattern (fill) or zeros (zero). The first word may hold the link of
 * the central store's overflow list (used only when its stack could not
 * grow), or 0 once the chunk left that list.
 */
bool om_freed_intact(const struct om_chunk *h, size_t usable)
{
    if (!om_g.opt.zero)
        return true;
    return all_words(h + 1, usable, om_g.opt.fill ? OM_FILL_WORD : 0);
}

/* Reports a canary found damaged in live chunk <h> by an operation at <file>:<line>. */
static OM_COLD void overflow(const struct om_chunk *h, const void *user, const char *file,
                             int line, const char *when)
{
    om_fault(OM_F_OVERFLOW, user, h, file, line, when);
}

/* ------------------------------------------------------------------ */
/* Failure injection, limits, periodic checks                          */
/* ------------------------------------------------------------------ */

/* Whether this allocation call is one failure injection fails. */
static inline bool inject(void)
{
    if (!dbg.armed)
        return false;
    uint64_t k = atomic_fetch_add(&dbg.points, 1) + 1;
    bool f = k == atomic_load_explicit(&dbg.fail_at, memory_order_relaxed);
    if (!f && om_g.opt.fail_one_in) {
        uint64_t x = (k ^ om_g.opt.seed * 0xD6E8FEB86659FD93ull) * 0x9E3779B97F4A7C15ull;
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 29;
        f = x % om_g.opt.fail_one_in == 0;
    }
    if (f)
        atomic_fetch_add(&dbg.injected, 1);
    return f;
}

/* Adds <n> live private bytes under <tag>; false (and nothing added) when a limit would be passed. */
static inline bool charge(size_t n, uint8_t tag)
{
    if (!dbg.limits)
        return true;
    int64_t d = (int64_t)n;
    int64_t l = atomic_fetch_add(&dbg.live, d) + d;
    if (om_g.opt.limit && l > (int64_t)om_g.opt.limit) {
        atomic_fetch_sub(&dbg.live, d);
        return false;
    }
    l = atomic_fetch_add(&dbg.tag_live[tag], d) + d;
    if (dbg.tag_limit[tag] && l > dbg.tag_limit[tag]) {
        atomic_fetch_sub(&dbg.tag_live[tag], d);
        atomic_fetch_sub(&dbg.live, d);
        return false;
    }
    return true;
}

static inline void uncharge(size_t n, uint8_t tag)
{
    if (!dbg.limits)
        return;
    atomic_fetch_sub(&dbg.live, (int64_t)n);
    atomic_fetch_sub(&dbg.tag_live[tag], (int64_t)n);
}

/* Runs ossl_mem_check() every check=N operations. */
static inline void tick(void)
{
    size_t every = om_g.opt.check_every;
    if (every && atomic_fetch_add(&dbg.ops, 1) % every == every - 1)
        ossl_mem_check();
}

/* A request refused by injection or a limit: counted as a failed allocation. */
static void *refuse(struct om_tc *tc)
{
    OM_CTR_ADD(tc->st.failed, 1);
    om_tc_leave(tc);
    errno = ENOMEM;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The entry points                                                    */
/* ------------------------------------------------------------------ */

/*
 * With fill: verifies the chunk the thread cache will hand out next for a
 * request of <want> bytes, while its header still tells its last life. A
 * chunk never handed out is all zero; a freed one must hold the pattern.
 */
static inline void verify_chunk(struct om_chunk *h, unsigned cls, const char *file, int line);

static void verify_next(struct om_tc *tc, size_t want, const char *file, int line)
{
    if (tc->orphan || want > OM_SMALL_MAX)
        return;
    unsigned cls = om_size_class(want);
    if (tc->cc[cls].n == 0) {
        om_op_begin(tc);
        om_tc_refill(tc, cls);
        om_op_end(tc);
        if (tc->cc[cls].n == 0)
            return;
    }
    verify_chunk(tc->slot[cls][tc->cc[cls].n - 1], cls, file, line);
}

/* With fill: verifies chunk <h> of class <cls>, about to be handed out again, while its header still tells its last life. */
static OM_COLD void reuse_fault(struct om_chunk *h, bool header, const char *file, int line)
{
    if (header)
        om_fault(OM_F_CORRUPT, om_user(h), NULL, file, line,
                 "header of a freed chunk overwritten (buffer underflow or write after free); "
                 "found when it was about to be handed out again");
    else
        om_fault(OM_F_UAF_WRITE, om_user(h), h, file, line,
                 "the fill pattern of the freed chunk was changed; found when it was about to "
                 "be handed out again");
}

static inline void verify_chunk(struct om_chunk *h, unsigned cls, const char *file, int line)
{
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (w0 == 0 && w1 == 0)
        return;
    if (OM_UNLIKELY(!om_hdr_valid(h, w0, w1) || (uint8_t)(w1 >> 32) != OM_ST_FREED)) {
        reuse_fault(h, true, file, line);
        return;
    }
    uint64_t first = *(const uint64_t *)om_user(h);
    if (OM_UNLIKELY((first != 0 && first != OM_FILL_WORD) ||
                    !all_words(om_user(h), om_cls[cls].size, OM_FILL_WORD)))
        reuse_fault(h, false, file, line);
}

/*
 * Gives chunk <p>, obtained for <want> bytes, the requested size <n>: the
 * header says <n>, the canary follows, the live-byte count loses the extra
 * bytes, and with poison the bytes from <from> to <n> get the poison byte.
 */
static void finish(void *p, size_t n, size_t want, size_t from)
{
    if (om_g.opt.poison && n > from)
        memset((char *)p + from, om_g.opt.poison_byte, n - from);
    if (want == n)
        return;
    struct om_chunk *h = om_hdr(p);
    size_t cap, size;
    const char *why;
    bool shared = om_in_arena(p);
    if (OM_UNLIKELY(shared)) {
        om_arena_lock();
        om_arena_find(p, &why, &cap);
        h->size = (uint32_t)n;
        om_hdr_seal(h);
        om_arena_unlock();
    } else if (OM_UNLIKELY(h->cls == OM_CLS_LARGE)) {
        om_large_find(p, &h, &size, &cap);
        if (n >= UINT32_MAX)
            return; /* no canary: the header cannot hold the size */
        h->size = (uint32_t)n;
        om_hdr_seal(h);
        om_large_resize(h, n);
    } else {
        cap = om_cls[h->cls].size;
        h->size = (uint32_t)n;
        om_hdr_seal(h);
    }
    if (!shared) {
        struct om_tc *tc = om_tc_enter();
        om_stat_live(tc, -(int64_t)(want - n));
        om_tc_leave(tc);
    }
    canary_write(p, n, cap);
}

/*
 * The free path's view of <p>: a live private small chunk is recognised
 * inline, as router.c's fast path does; anything else goes to
 * om_chunk_live().
 */
static inline bool live_chunk(const void *p, struct om_live *c)
{
    uint64_t w0, w1;
    struct om_chunk *h = om_live_small_hdr(p, &w0, &w1);
    if (OM_LIKELY(h && h->cls < OM_NCLS)) {
        c->h = h;
        c->size = (uint32_t)w0;
        c->cap = om_cls[h->cls].size;
        c->shared = false;
        return true;
    }
    return om_chunk_live(p, c);
}

/*
 * Poisons the <n> first bytes of a new small chunk: up to 128 bytes as
 * inline words to the next multiple of 16 (within the chunk; a canary is
 * written after), beyond with memset.
 */
static inline void poison(void *p, size_t n)
{
    if (n <= 128) {
        uint64_t w = om_g.opt.poison_byte * 0x0101010101010101ull, *q = p;
        for (size_t i = 0; i < (n + 15) / 16 * 2; i += 2) {
            q[i] = w;
            q[i + 1] = w;
        }
    } else {
        memset(p, om_g.opt.poison_byte, n);
    }
}

/* The request size for <n> user bytes: with canaries, 8 bytes more. */
static size_t request(size_t n)
{
    return om_g.opt.canary && n <= OM_MAX_REQUEST ? n + CANARY_MIN : n;
}

void *om_dbg_malloc(size_t n, const char *file, int line)
{
    if (!om_g.opt.caller)
        file = NULL, line = 0;
    /* fast path: a small private chunk from the thread cache, as in om_malloc_cb() */
    struct om_tc *tc0 = om_tls_tc;
    size_t want0 = request(n);
    if (OM_LIKELY((uintptr_t)tc0 > (uintptr_t)OM_TC_DEAD && want0 <= OM_SMALL_MAX &&
                  !tc0->shared_depth && !tc0->orphan)) {
        unsigned cls = om_size_class(want0);
        uint32_t k = tc0->cc[cls].n;
        if (OM_LIKELY(k != 0)) {
            tick();
            if (OM_UNLIKELY(inject() || !charge(n, tc0->tag))) {
                OM_CTR_ADD(tc0->st.failed, 1);
                errno = ENOMEM;
                return NULL;
            }
            struct om_chunk *h = tc0->slot[cls][k - 1];
            /* the next chunk of the class is read (fill) or written at its turn: fetch it now */
            if (k >= 2)
                __builtin_prefetch(tc0->slot[cls][k - 2], 1, 3);
            if (om_g.opt.fill)
                verify_chunk(h, cls, file, line);
            om_op_begin(tc0);
            tc0->cc[cls].n = (uint16_t)(k - 1);
            uint8_t tag = tc0->tag;
            om_hdr_store_live(h, (uint32_t)n, om_site_id(file, line), om_g.owner, (uint8_t)cls,
                              tag);
            om_stat_alloc(tc0, tag, n);
            om_op_end(tc0);
            void *p = om_user(h);
            if (om_g.opt.poison)
                poison(p, n);
            if (om_g.opt.canary)
                canary_write(p, n, om_cls[cls].size);
            return p;
        }
    }
    tick();
    struct om_tc *tc = om_tc_enter();
    uint8_t tag = tc->tag;
    bool shared = tc->shared_depth && !om_site_private(om_site_id(file, line));
    size_t want = request(n);
    if (inject() || (!shared && !charge(n, tag)))
        return refuse(tc);
    if (om_g.opt.fill && !shared)
        verify_next(tc, want, file, line);
    om_tc_leave(tc);
    void *p = om_malloc_cb(want, file, line);
    if (!p) {
        if (!shared)
            uncharge(n, tag);
        return NULL;
    }
    finish(p, n, want, 0);
    return p;
}

/* Checks the canary of live chunk <c> before a free or realloc at <file>:<line>. */
static void check_live(const struct om_live *c, const void *p, const char *file, int line,
                       const char *when)
{
    if (!om_canary_intact(p, c->size, c->cap))
        overflow(c->h, p, file, line, when);
}

void om_dbg_free(void *p, const char *file, int line)
{
    if (!p)
        return;
    if (!om_g.opt.caller)
        file = NULL, line = 0;
    /* fast path: a live private small chunk, as in om_free_cb() */
    struct om_tc *tc = om_tls_tc;
    uint64_t w0, w1;
    struct om_chunk *h;
    unsigned cls;
    if (OM_LIKELY((uintptr_t)tc > (uintptr_t)OM_TC_DEAD && !tc->orphan &&
                  (h = om_live_small_hdr(p, &w0, &w1)) && (cls = (uint8_t)(w1 >> 16)) < OM_NCLS)) {
        tick();
        if (om_g.opt.canary && !canary_ok(p, (uint32_t)w0, om_cls[cls].size))
            overflow(h, p, file, line, "the canary after its requested size was "
                                       "overwritten; found at free");
        uncharge((uint32_t)w0, h->tag);
        om_op_begin(tc);
        om_free_small(tc, h, cls, (uint32_t)w0, om_site_id(file, line));
        om_op_end(tc);
        return;
    }
    tick();
    struct om_live c;
    if ((om_g.opt.canary || dbg.limits) && live_chunk(p, &c)) {
        check_live(&c, p, file, line, "the canary after its requested size was overwritten; "
                                       "found at free");
        if (!c.shared)
            uncharge(c.size, c.h->tag);
    }
    om_free_cb(p, file, line);
}

void *om_dbg_realloc(void *p, size_t n, const char *file, int line)
{
    if (!om_g.opt.caller)
        file = NULL, line = 0;
    if (!p || n == 0) {
        struct om_tc *tc = om_tc_enter();
        OM_CTR_ADD(tc->st.reallocs, 1);
        om_tc_leave(tc);
        if (!p)
            return om_dbg_malloc(n, file, line);
        om_dbg_free(p, file, line);
        return NULL;
    }
    tick();
    struct om_live c;
    if (!live_chunk(p, &c))
        return om_realloc_cb(p, n, file, line); /* reports the bad pointer */
    check_live(&c, p, file, line, "the canary after its requested size was overwritten; "
                                  "found at realloc");
    struct om_tc *tc = om_tc_enter();
    uint8_t tag = c.h->tag;
    size_t old = c.size, want = request(n);
    if (inject() || (!c.shared && !charge(n, tag)))
        return refuse(tc);
    if (om_g.opt.fill && !c.shared && want > c.cap)
        verify_next(tc, want, file, line);
    om_tc_leave(tc);
    void *q = om_realloc_cb(p, want, file, line);
    if (!q) {
        if (!c.shared)
            uncharge(n, tag);
        return NULL;
    }
    if (!c.shared)
        uncharge(old, tag);
    finish(q, n, want, old);
    return q;
}

/* ------------------------------------------------------------------ */
/* Set-up and the public controls                                      */
/* ------------------------------------------------------------------ */

bool om_dbg_wanted(const struct om_opts *o)
{
    return o->poison || o->fill || o->canary || !o->caller || o->fail_set || o->limit ||
           o->ntag_limits || o->check_every;
}

int om_dbg_init(void)
{
    struct om_opts *o = &om_g.opt;
    dbg.on = om_dbg_wanted(o);
    if (!dbg.on)
        return 0;
    if (o->fill) {
        o->zero = true; /* free runs the scrub, which writes the pattern */
        uint8_t *ref = om_map(OM_SMALL_MAX, false);
        if (ref)
            memset(ref, OM_FILL_BYTE, OM_SMALL_MAX);
        fill_ref = ref;
    }
    dbg.canary_key = om_g.cookie * 0xD1342543DE82EF95ull + 0x2545F4914F6CDD1Dull;
    dbg.limits = o->limit || o->ntag_limits;
    for (unsigned i = 0; i < o->ntag_limits; i++) {
        int t = om_tag_id(o->tag_limits[i].tag);
        if (t < 0)
            return OSSL_MEM_E_LIMIT;
        dbg.tag_limit[t] = (int64_t)o->tag_limits[i].bytes;
    }
    return 0;
}

/*
 * Arms failure injection at the end of ossl_mem_init(): calls are counted
 * from the program's first one (init's own lock probe is not one).
 */
void om_dbg_arm(void)
{
    if (!om_g.opt.fail_set)
        return;
    atomic_store(&dbg.fail_at, om_g.opt.fail_nth);
    dbg.armed = true;
}

bool om_dbg_on(void)
{
    return dbg.on;
}

void om_dbg_stats(struct ossl_mem_stats *st)
{
    st->fail_points = atomic_load(&dbg.points);
    st->injected_failures = atomic_load(&dbg.injected);
}

int ossl_mem_fail_at(uint64_t nth)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.opt.fail_set)
        return OSSL_MEM_E_INVAL;
    atomic_store(&dbg.fail_at, nth ? atomic_load(&dbg.points) + nth : 0);
    return 0;
}
