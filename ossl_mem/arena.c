/* arena.c - the shared arena: one MAP_SHARED mapping, its allocator, its robust lock and its process table. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "om.h"

#define ARENA_MAGIC 0x6F6D6172656E6131ull /* "omarena1" */
#define PAGE        4096u

static struct om_arena *A;      /* om_g.arena */
static uint64_t *bitmap;        /* one bit per 16 bytes of the chunk area */
static bool full_reported;      /* this process reported an exhausted arena */

static inline bool bit_get(size_t i)
{
    return (__atomic_load_n(&bitmap[i >> 6], __ATOMIC_ACQUIRE) >> (i & 63)) & 1;
}

static inline void bit_set(size_t i)
{
    __atomic_fetch_or(&bitmap[i >> 6], 1ull << (i & 63), __ATOMIC_RELEASE);
}

/* Usable bytes of arena chunk <h> (header already validated). */
static size_t chunk_cap(const struct om_chunk *h)
{
    if (h->cls < OM_NCLS)
        return om_cls[h->cls].size;
    return *(const uint64_t *)((const char *)h - 16);
}

/* Bytes a chunk takes in the arena, header (and large prefix) included. */
static size_t chunk_span(const struct om_chunk *h)
{
    return h->cls < OM_NCLS ? om_cls[h->cls].stride : chunk_cap(h) + 32;
}

static inline struct om_chunk *at(uint64_t off) { return (struct om_chunk *)(om_g.arena_lo + off); }
static inline uint64_t off_of(const struct om_chunk *h) { return (uint64_t)((const char *)h - om_g.arena_lo); }
static inline uint64_t *link_of(struct om_chunk *h) { return (uint64_t *)om_user(h); }

/* Bytes of the arena's mapping for option shared= (0: no arena). */
size_t om_arena_map_size(void)
{
    size_t size = om_g.opt.shared;
    if (size == 0)
        return 0;
    size_t ctl = (sizeof(struct om_arena) + PAGE - 1) & ~(size_t)(PAGE - 1);
    if (size < ctl + 64 * PAGE)
        size = ctl + 64 * PAGE;
    return (size + PAGE - 1) & ~(size_t)(PAGE - 1);
}

/*
 * Maps the arena of opt.shared bytes, at <where> (space the private region
 * reserved for it right above itself, see om_pool_init) or, if NULL,
 * wherever the system puts it. Returns 0 or OSSL_MEM_E_NOMEM.
 */
int om_arena_init(void *where)
{
    size_t size = om_arena_map_size();
    if (size == 0)
        return 0;
    size_t ctl = (sizeof(struct om_arena) + PAGE - 1) & ~(size_t)(PAGE - 1);
    /* chunk area c and bitmap c/128 share what the control block leaves */
    size_t cap = ((size - ctl) / 129 * 128) & ~(size_t)(PAGE - 1);
    size_t bm = ((cap / 128) + PAGE - 1) & ~(size_t)(PAGE - 1);
    void *m = NULL;
    if (where) {
        int saved = errno;
        m = mmap(where, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        errno = saved;
        if (m == MAP_FAILED)
            m = NULL;
    }
    if (!m)
        m = om_map(size, true);
    if (!m)
        return OSSL_MEM_E_NOMEM;
    A = m;
    A->magic = ARENA_MAGIC;
    A->map_size = size;
    A->cap = cap;
    pthread_mutexattr_t at;
    pthread_mutexattr_init(&at);
    pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&A->lock, &at);
    pthread_mutexattr_destroy(&at);
    bitmap = (uint64_t *)((char *)m + ctl);
    om_g.arena_lo = (char *)m + ctl + bm;
    om_g.arena_hi = om_g.arena_lo + cap;
    om_g.arena = A;
    atomic_store(&A->next_id, 2);
    A->next_set = 1;
    om_g.proc_id = 1;
    om_g.owner = 1;
    A->procs[0].pid = getpid();
    A->procs[0].id = 1;
    A->id_pid[1] = getpid();
    om_g.proc_slot = 0;
    return 0;
}

/*
 * Rebuilds the allocator's lists and figures from the chunk headers after a
 * process died holding the lock (its operation may be half done). Chunks
 * whose header does not check are left out: a small leak, never a reuse of
 * memory that may be live.
 */
static void repair(void)
{
    memset(A->freel_head, 0, sizeof A->freel_head);
    memset(A->freel_tail, 0, sizeof A->freel_tail);
    A->large_free = 0;
    A->used = A->live_chunks = 0;
    size_t end = 0;
    for (size_t i = 0; i < A->cap / 16; i++) {
        if (!bit_get(i))
            continue;
        struct om_chunk *h = (struct om_chunk *)(om_g.arena_lo + i * 16);
        uint64_t w0, w1;
        om_hdr_load(h, &w0, &w1);
        if (!om_hdr_valid(h, w0, w1) || (h->cls >= OM_NCLS && h->cls != OM_CLS_LARGE))
            continue;
        size_t span = chunk_span(h);
        size_t hend = i * 16 + span - (h->cls == OM_CLS_LARGE ? 16 : 0);
        if (hend > end)
            end = hend;
        if (h->state == OM_ST_LIVE) {
            A->used += span;
            A->live_chunks++;
        } else if (h->cls == OM_CLS_LARGE) {
            *link_of(h) = A->large_free;
            A->large_free = i * 16 + 1;
        } else {
            *link_of(h) = 0;
            if (A->freel_tail[h->cls])
                *link_of(at(A->freel_tail[h->cls] - 1)) = i * 16 + 1;
            else
                A->freel_head[h->cls] = i * 16 + 1;
            A->freel_tail[h->cls] = i * 16 + 1;
        }
    }
    if (end > A->bump)
        A->bump = end;
}

void om_arena_lock(void)
{
    int rc = pthread_mutex_lock(&A->lock);
    if (OM_UNLIKELY(rc == EOWNERDEAD)) {
        pid_t dead = A->holder;
        repair();
        pthread_mutex_consistent(&A->lock);
        atomic_fetch_add(&A->repairs, 1);
        om_msg("shared arena lock was held by process %d, which died: lists rebuilt from the "
               "chunk headers, lock made consistent (%llu bytes in %llu live chunks)",
               (int)dead, (unsigned long long)A->used, (unsigned long long)A->live_chunks);
    } else if (OM_UNLIKELY(rc != 0)) {
        om_die(__FILE__, __LINE__, "pthread_mutex_lock on the shared arena failed");
    }
    A->holder = om_g.my_pid;
}

void om_arena_unlock(void)
{
    A->holder = 0;
    pthread_mutex_unlock(&A->lock);
}

/* Takes a chunk of class <cls> from its FIFO free list, NULL if empty. Lock held. */
static struct om_chunk *freel_take(unsigned cls)
{
    uint64_t o = A->freel_head[cls];
    if (!o)
        return NULL;
    struct om_chunk *h = at(o - 1);
    uint64_t next = *link_of(h);
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if (!om_hdr_valid(h, w0, w1) || h->state != OM_ST_FREED || h->cls != cls ||
        (next && next - 1 >= A->bump)) {
        /* a freed chunk was overwritten: drop the rest of the list rather than trust it */
        om_fault(OM_F_CORRUPT, om_user(h), NULL, NULL, 0,
                 "freed chunk of the shared arena overwritten; its free list is dropped");
        A->freel_head[cls] = A->freel_tail[cls] = 0;
        return NULL;
    }
    A->freel_head[cls] = next;
    if (!next)
        A->freel_tail[cls] = 0;
    *link_of(h) = 0;
    return h;
}

/* Best-fitting free large chunk of at least <size> usable bytes, unlinked; NULL if none. */
static struct om_chunk *large_take(size_t size)
{
    uint64_t *best = NULL;
    size_t best_cap = SIZE_MAX;
    for (uint64_t *lk = &A->large_free; *lk; lk = link_of(at(*lk - 1))) {
        struct om_chunk *h = at(*lk - 1);
        size_t c = chunk_cap(h);
        if (c >= size && c < best_cap) {
            best = lk;
            best_cap = c;
        }
    }
    if (!best)
        return NULL;
    struct om_chunk *h = at(*best - 1);
    *best = *link_of(h);
    *link_of(h) = 0;
    return h;
}

static OM_COLD void report_full(size_t size, uint16_t site)
{
    if (full_reported)
        return;
    full_reported = true;
    char s[256];
    om_msg("shared arena full: allocation of %zu bytes at %s refused (%llu of %zu bytes used in "
           "%llu live chunks, %zu carved; raise shared=SIZE); reported once per process",
           size, om_site_str(site, s, sizeof s), (unsigned long long)A->used, A->cap,
           (unsigned long long)A->live_chunks, A->bump);
}

/*
 * Allocates <size> bytes in the arena for set <set>, owned by process id
 * <owner>. Returns the user pointer, or NULL with errno ENOMEM when the
 * arena is full (counted, reported once).
 */
void *om_arena_alloc(size_t size, uint16_t site, uint8_t tag, uint8_t set, uint16_t owner)
{
    if (size > A->cap) {
        atomic_fetch_add(&A->failed, 1);
        errno = ENOMEM;
        return NULL;
    }
    om_arena_lock();
    struct om_chunk *h;
    unsigned cls;
    size_t span;
    bool reused = false;
    if (size <= OM_SMALL_MAX) {
        cls = om_size_class(size);
        span = om_cls[cls].stride;
        h = freel_take(cls);
        reused = h != NULL;
        if (!h && A->bump + span <= A->cap) {
            h = at(A->bump);
            om_hdr_store_live_f(h, 0, 0, 0, (uint8_t)cls, 0, 0);
            bit_set(A->bump / 16);
            A->bump += span;
        }
    } else {
        cls = OM_CLS_LARGE;
        h = large_take(size);
        if (h) {
            span = chunk_cap(h) + 32;
            reused = true;
        } else {
            span = (size + 32 + PAGE - 1) & ~(size_t)(PAGE - 1);
            if (A->bump + span <= A->cap) {
                *(uint64_t *)(om_g.arena_lo + A->bump) = span - 32;
                h = at(A->bump + 16);
                om_hdr_store_live_f(h, 0, 0, 0, (uint8_t)cls, 0, 0);
                bit_set(A->bump / 16 + 1);
                A->bump += span;
            }
        }
    }
    if (!h) {
        om_arena_unlock();
        atomic_fetch_add(&A->failed, 1);
        report_full(size, site);
        errno = ENOMEM;
        return NULL;
    }
    /* with fill, a chunk handed out again must still hold the pattern its free wrote */
    struct om_chunk old;
    bool uaf = reused && om_g.opt.fill && !om_freed_intact(h, chunk_cap(h));
    if (uaf)
        old = *h;
    om_hdr_store_live_f(h, size >= UINT32_MAX ? UINT32_MAX : (uint32_t)size, site, owner,
                        (uint8_t)cls, tag, set);
    A->used += span;
    A->live_chunks++;
    if (A->used > A->peak)
        A->peak = A->used;
    om_arena_unlock();
    if (OM_UNLIKELY(uaf)) {
        const char *file = NULL;
        int line = 0;
        om_site_get(site, &file, &line);
        om_fault(OM_F_UAF_WRITE, om_user(h), &old, file, line,
                 "the fill pattern of the freed shared chunk was changed; found when it was "
                 "about to be handed out again");
    }
    return om_user(h);
}

/*
 * Finds the arena chunk whose user pointer is <p> (inside the chunk area)
 * from the bitmap alone. Returns its header, or NULL with a reason.
 */
struct om_chunk *om_arena_find(const void *p, const char **why, size_t *cap)
{
    uint64_t off = (uint64_t)((const char *)p - om_g.arena_lo);
    size_t bump = __atomic_load_n(&A->bump, __ATOMIC_ACQUIRE);
    if ((off & 15) || off < 16 || off - 16 >= bump || !bit_get(off / 16 - 1)) {
        *why = "points into ossl_mem's shared arena but not at a chunk (interior pointer or "
               "unused space)";
        return NULL;
    }
    struct om_chunk *h = om_hdr(p);
    *cap = h->cls < OM_NCLS ? om_cls[h->cls].size
           : h->cls == OM_CLS_LARGE ? chunk_cap(h) : 0;
    return h;
}

/*
 * Releases live arena chunk <h> freed at <fsite>: wiped (zero option),
 * marked freed and queued at the tail of its free list. A chunk another
 * process freed meanwhile is left alone and counted as a double free.
 */
void om_arena_free(struct om_chunk *h, uint16_t fsite)
{
    om_arena_lock();
    if (h->state != OM_ST_LIVE) {
        om_arena_unlock();
        om_fault(OM_F_DOUBLE_FREE, om_user(h), h, NULL, 0, "freed by two processes at once");
        return;
    }
    size_t cap = chunk_cap(h), span = chunk_span(h);
    if (om_g.opt.zero)
        om_scrub(om_user(h), cap);
    om_hdr_restate(h, OM_ST_FREED, fsite);
    A->used -= span;
    A->live_chunks--;
    uint64_t o = off_of(h) + 1;
    *link_of(h) = 0;
    if (h->cls == OM_CLS_LARGE) {
        *link_of(h) = A->large_free;
        A->large_free = o;
    } else {
        if (A->freel_tail[h->cls])
            *link_of(at(A->freel_tail[h->cls] - 1)) = o;
        else
            A->freel_head[h->cls] = o;
        A->freel_tail[h->cls] = o;
    }
    full_reported = false;
    om_arena_unlock();
}

/* Calls <fn> for every chunk ever carved in the arena, with its usable size. */
void om_arena_walk(om_chunk_fn fn, void *arg)
{
    if (!A)
        return;
    size_t n = __atomic_load_n(&A->bump, __ATOMIC_ACQUIRE) / 16;
    for (size_t w = 0; w < (n + 63) / 64; w++) {
        uint64_t bits = __atomic_load_n(&bitmap[w], __ATOMIC_ACQUIRE);
        while (bits) {
            size_t i = w * 64 + (size_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            struct om_chunk *h = (struct om_chunk *)(om_g.arena_lo + i * 16);
            size_t cap = h->cls < OM_NCLS ? om_cls[h->cls].size
                         : h->cls == OM_CLS_LARGE ? chunk_cap(h) : 0;
            fn(h, cap, arg);
        }
    }
}

/*
 * The live arena chunk whose user area holds address <p> (any address
 * inside it, not only its start), found by walking the bitmap back from
 * <p> for at most 64 KiB; NULL if none. For reports only: not under the lock.
 */
const struct om_chunk *om_arena_chunk_at(const void *p)
{
    if (!A || !om_in_arena(p))
        return NULL;
    size_t off = (size_t)((const char *)p - om_g.arena_lo);
    size_t i = off / 16, stop = i > 4096 ? i - 4096 : 0;
    for (;; i--) {
        if (bit_get(i)) {
            const struct om_chunk *h = (const struct om_chunk *)(om_g.arena_lo + i * 16);
            uint64_t w0, w1;
            om_hdr_load(h, &w0, &w1);
            if (!om_hdr_valid(h, w0, w1) || h->state != OM_ST_LIVE)
                return NULL;
            size_t cap = h->cls < OM_NCLS ? om_cls[h->cls].size
                         : h->cls == OM_CLS_LARGE ? chunk_cap(h) : 0;
            return off < i * 16 + 16 + cap ? h : NULL;
        }
        if (i == stop)
            return NULL;
    }
}

/* A new id for a process or a private generation (never 0). */
uint16_t om_arena_new_id(void)
{
    if (!A) {
        uint16_t g = (uint16_t)(om_g.owner + 1);
        return g ? g : 1;
    }
    uint16_t id;
    do
        id = (uint16_t)atomic_fetch_add(&A->next_id, 1);
    while (id == 0);
    return id;
}

/* pid of the process that had id <id> (0 if unknown). */
pid_t om_arena_id_pid(uint16_t id)
{
    return A ? A->id_pid[id] : 0;
}

/*
 * A new shared scope id (1..255), skipping sets still waiting for
 * reclamation; ids wrap, which only merges old sets. Lock held.
 */
uint8_t om_arena_new_set(void)
{
    for (int tries = 0; tries < 255; tries++) {
        uint8_t s = A->next_set++;
        if (A->next_set == 0)
            A->next_set = 1;
        if (!A->pending[s])
            return s;
    }
    return A->next_set; /* every id pending: share one (reclamation stays conservative) */
}

/*
 * Fork, child side: this process gets its own process id and a slot in the
 * process table. The arena's lock is not taken across fork: it is shared by
 * every process, so a thread of the parent that holds it keeps running in
 * the parent and releases it.
 */
void om_arena_fork_child(void)
{
    if (!A)
        return;
    om_g.proc_slot = -1;
    om_arena_lock();
    /* an id no live process holds (ids wrap after 65,535 forks; 1 is the root's forever) */
    for (;;) {
        uint16_t id = om_arena_new_id();
        bool taken = id == 1;
        for (int i = 0; i < OM_MAXPROC && !taken; i++)
            taken = A->procs[i].pid && A->procs[i].id == id;
        if (!taken) {
            om_g.proc_id = id;
            break;
        }
    }
    A->id_pid[om_g.proc_id] = om_g.my_pid;
    for (int i = 0; i < OM_MAXPROC; i++)
        if (A->procs[i].pid == 0 || (kill(A->procs[i].pid, 0) != 0 && errno == ESRCH)) {
            if (A->procs[i].pid != 0) /* a process that vanished unreported: it holds nothing */
                for (int c = 0; c < OM_MAXCTX; c++)
                    A->ctxs[c].holders[i / 64] &= ~(1ull << (i % 64));
            A->procs[i].pid = om_g.my_pid;
            A->procs[i].id = om_g.proc_id;
            om_g.proc_slot = i;
            break;
        }
    om_arena_unlock();
    if (om_g.proc_slot < 0)
        om_msg("process table of the shared arena is full (%d processes): process %d cannot "
               "hold shared contexts safely", OM_MAXPROC, (int)om_g.my_pid);
}

void om_arena_stats(struct ossl_mem_stats *st)
{
    if (!A)
        return;
    st->shared_size = A->cap;
    st->shared_used = __atomic_load_n(&A->used, __ATOMIC_RELAXED);
    st->shared_peak = __atomic_load_n(&A->peak, __ATOMIC_RELAXED);
    st->shared_live_chunks = __atomic_load_n(&A->live_chunks, __ATOMIC_RELAXED);
    st->shared_failed = atomic_load(&A->failed);
    st->shared_lock_repairs = atomic_load(&A->repairs);
    st->shared_locks_recovered = atomic_load(&A->locks_recovered);
    for (int c = 0; c < OM_MAXCTX; c++)
        st->shared_contexts += __atomic_load_n(&A->ctxs[c].state, __ATOMIC_RELAXED) != 0;
}

/* Test hook (documented in ossl_mem.h): take the arena lock and keep it. */
int ossl_mem_test_hold_arena_lock(void)
{
    if (!A)
        return OSSL_MEM_E_NO_ARENA;
    om_arena_lock();
    return 0;
}
