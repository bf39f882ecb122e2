/* tc.c - per-thread caches, the quarantine, thread exit and the fork handlers for them. */
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "om.h"

__thread struct om_tc *om_tls_tc __attribute__((tls_model("initial-exec")));

#define OM_QUAR_MIN 256u    /* ring slots per thread, at least (the drain keeps 64 free) */
#define OM_QUAR_MAX 16384u  /* and at most: bounds the chunk count of a large budget too */

/*
 * Ring slots for the quarantine budget: room for twice the budget in
 * 16-byte chunks, a power of two. Not more: the ring's write position
 * sweeps all of it, one new cache line every 8 frees, so a ring much
 * larger than the chunks it holds costs a cache miss every 8 frees (a
 * fixed 16384-slot ring did, 128 KiB, with the 4 KiB default budget).
 */
static uint32_t quar_entries(void)
{
    uint64_t want = om_g.opt.quarantine / 8, n = OM_QUAR_MIN;
    while (n < want && n < OM_QUAR_MAX)
        n *= 2;
    return (uint32_t)n;
}

static void tc_destroy(void *arg);

/* Maps a zeroed cache and links it into the thread list. NULL when out of memory. */
static struct om_tc *tc_new(bool orphan)
{
    struct om_tc *tc = om_map(sizeof *tc, false);
    if (!tc)
        return NULL;
    tc->orphan = orphan;
    tc->w1_tag = om_w1_tag(0);
    tc->thread = pthread_self();
    for (unsigned c = 0; c < OM_NCLS; c++)
        tc->cc[c].cap = (uint16_t)om_cls[c].tc_cap;
    pthread_mutex_lock(&om_g.threads_lock);
    tc->next = om_g.threads;
    if (om_g.threads)
        om_g.threads->prev = tc;
    om_g.threads = tc;
    pthread_mutex_unlock(&om_g.threads_lock);
    return tc;
}

/* Whether membarrier(2) can make every thread of the process see a store at once. */
static bool membarrier_ready(void)
{
    long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED))
        return false;
    return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

int om_tc_init(void)
{
    int saved = errno;
    if (!membarrier_ready())
        om_g.gate |= OM_GATE_FENCE;
    errno = saved;
    pthread_mutex_init(&om_g.threads_lock, NULL);
    pthread_mutex_init(&om_g.orphan_lock, NULL);
    if (pthread_key_create(&om_g.key, tc_destroy) != 0)
        return OSSL_MEM_E_NOMEM;
    om_g.orphan = tc_new(true);
    return om_g.orphan ? 0 : OSSL_MEM_E_NOMEM;
}

/*
 * Slow path of om_tc_enter(): makes the calling thread's cache, or, for a
 * thread whose cache was already returned by its destructor (OpenSSL frees
 * memory from its own thread-exit handlers after ours ran) or when no cache
 * can be mapped, locks and returns the shared orphan cache.
 */
struct om_tc *om_tc_enter_slow(void)
{
    if (om_tls_tc != OM_TC_DEAD) {
        struct om_tc *tc = tc_new(false);
        if (tc) {
            om_tls_tc = tc;
            pthread_setspecific(om_g.key, tc);
            return tc;
        }
    }
    pthread_mutex_lock(&om_g.orphan_lock);
    return om_g.orphan;
}

/* Moves the cached chunks of class <cls> but the <keep> most recently cached to the central store. */
void om_tc_flush_class(struct om_tc *tc, unsigned cls, unsigned keep)
{
    unsigned n = tc->cc[cls].n;
    if (n <= keep)
        return;
    /* the bottom of the stack goes: its chunks were cached longest and are the coldest, while
       the top holds the ones just freed, which the next mallocs of the class reuse hot */
    om_central_put(cls, tc->slot[cls], n - keep);
    memmove(tc->slot[cls], &tc->slot[cls][n - keep], keep * sizeof tc->slot[cls][0]);
    tc->cc[cls].n = (uint16_t)keep;
}

/* Adds the thread's unflushed live-byte change to the global figure and updates the peak. */
void om_stat_flush(struct om_tc *tc)
{
    int64_t d = tc->st.live - tc->st.flushed;
    int64_t live = atomic_fetch_add(&om_g.live, d) + d;
    tc->st.flushed = tc->st.live;
    int64_t peak = atomic_load(&om_g.peak);
    while (live > peak && !atomic_compare_exchange_weak(&om_g.peak, &peak, live))
        ;
}

/* Maps the thread's quarantine ring on first use. Returns false when out of memory. */
bool om_quar_init(struct om_tc *tc)
{
    uint32_t n = quar_entries();
    uint64_t *ring = om_map(n * sizeof(uint64_t), false);
    if (!ring)
        return false;
    tc->quar.ring = ring;
    tc->quar.mask = n - 1;
    return true;
}

/*
 * Lets the oldest chunks out of the quarantine until it is 4 KiB (or an
 * eighth of a smaller budget) under its budget and has a free ring slot, so
 * that the next frees only append.
 */
void om_quar_drain(struct om_tc *tc)
{
    struct om_quar *q = &tc->quar;
    size_t budget = om_g.opt.quarantine;
    size_t low = budget - (budget >= 32768 ? 4096 : budget / 8);
    /* the ring's fields in locals: the cache stores below would otherwise reload them */
    const uint64_t *ring = q->ring;
    uint32_t head = q->head, tail = q->tail, mask = q->mask;
    size_t bytes = q->bytes;
    while (head != tail && (bytes > low || tail - head > mask - 64)) {
        uint64_t e = ring[head++ & mask];
        unsigned cls = (unsigned)(e >> 48);
        bytes -= om_cls[cls].size;
        om_pool_release_cls(tc, (struct om_chunk *)(uintptr_t)(e & 0xFFFFFFFFFFFFull), cls);
    }
    q->head = head;
    q->bytes = bytes;
}

/* Empties the quarantine and every class cache of <tc> into the central stores. */
static void tc_drain(struct om_tc *tc)
{
    while (tc->quar.ring && tc->quar.head != tc->quar.tail)
        om_quar_evict_one(tc);
    tc->quar.bytes = 0;
    for (unsigned c = 0; c < OM_NCLS; c++)
        om_tc_flush_class(tc, c, 0);
}

/* Adds the counters of <from> to <to>. */
static void tstat_add(struct om_tstat *to, const struct om_tstat *from)
{
    for (unsigned t = 0; t < OSSL_MEM_MAX_TAGS; t++)
        to->tag_allocs[t] += OM_CTR_GET(from->tag_allocs[t]);
    to->live += OM_CTR_GET(from->live);
    to->frees += OM_CTR_GET(from->frees);
    to->reallocs += OM_CTR_GET(from->reallocs);
    to->failed += OM_CTR_GET(from->failed);
}

/* Unlinks <tc>, keeps its counters and unmaps it. Caller holds threads_lock. */
static void tc_retire_locked(struct om_tc *tc)
{
    tstat_add(&om_g.retired, &tc->st);
    if (tc->prev)
        tc->prev->next = tc->next;
    else
        om_g.threads = tc->next;
    if (tc->next)
        tc->next->prev = tc->prev;
    if (tc->quar.ring)
        munmap(tc->quar.ring, (tc->quar.mask + 1) * sizeof(uint64_t));
    munmap(tc, sizeof *tc);
}

/* pthread key destructor: a thread exits; its cache goes back to the process. */
static void tc_destroy(void *arg)
{
    struct om_tc *tc = arg;
    int saved = errno;
    om_op_begin(tc);
    om_stat_flush(tc);
    tc_drain(tc);
    om_op_end(tc);
    pthread_mutex_lock(&om_g.threads_lock);
    tc_retire_locked(tc);
    pthread_mutex_unlock(&om_g.threads_lock);
    om_tls_tc = OM_TC_DEAD;
    errno = saved;
}

/*
 * Sums the counters of every thread, live and retired, into <sum>, and
 * reports the quarantine's bytes and chunks and the number of threads with
 * a cache (the orphan cache not included).
 */
void om_stats_sum(struct om_tstat *sum, uint64_t *qbytes, uint64_t *qchunks, uint64_t *threads)
{
    memset(sum, 0, sizeof *sum);
    *qbytes = *qchunks = *threads = 0;
    pthread_mutex_lock(&om_g.threads_lock);
    tstat_add(sum, &om_g.retired);
    for (struct om_tc *tc = om_g.threads; tc; tc = tc->next) {
        tstat_add(sum, &tc->st);
        *qbytes += __atomic_load_n(&tc->quar.bytes, __ATOMIC_RELAXED);
        *qchunks += __atomic_load_n(&tc->quar.tail, __ATOMIC_RELAXED) -
                    __atomic_load_n(&tc->quar.head, __ATOMIC_RELAXED);
        *threads += !tc->orphan;
    }
    pthread_mutex_unlock(&om_g.threads_lock);
}

/*
 * Fork handlers. prepare first waits until no other thread is inside an
 * allocator operation (om_op_begin), then takes every allocator lock
 * (threads, orphan, centrals, segments, large table) so that no other
 * thread holds one across fork; parent releases them; child re-creates
 * them, starts a new owner generation and gives the caches of threads
 * that do not exist in the child back to the central stores.
 */
/*
 * Slow path of om_op_begin(): fence when membarrier(2) is missing, and if a
 * fork is in progress step out of its way until it is over, then go on.
 */
void om_op_wait(struct om_tc *tc)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    while (__atomic_load_n(&om_g.gate, __ATOMIC_ACQUIRE) & OM_GATE_FORKING) {
        __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
        while (__atomic_load_n(&om_g.gate, __ATOMIC_ACQUIRE) & OM_GATE_FORKING)
            sched_yield();
        __atomic_store_n(&tc->busy, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
}

void om_tc_fork_prepare(void)
{
    /* quiesce: no other thread may be half-way through changing a header or a cache */
    __atomic_fetch_or(&om_g.gate, OM_GATE_FORKING, __ATOMIC_SEQ_CST);
    int saved = errno;
    if ((om_g.gate & OM_GATE_FENCE) ||
        syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    errno = saved;
    pthread_mutex_lock(&om_g.threads_lock);
    struct om_tc *self = om_tls_tc;
    for (struct om_tc *tc = om_g.threads; tc; tc = tc->next)
        while (tc != self && __atomic_load_n(&tc->busy, __ATOMIC_ACQUIRE))
            sched_yield();
    pthread_mutex_lock(&om_g.orphan_lock);
}

void om_tc_fork_parent(void)
{
    pthread_mutex_unlock(&om_g.orphan_lock);
    pthread_mutex_unlock(&om_g.threads_lock);
    __atomic_fetch_and(&om_g.gate, (uint8_t)~OM_GATE_FORKING, __ATOMIC_RELEASE);
}

void om_tc_fork_child(void)
{
    pthread_mutex_init(&om_g.orphan_lock, NULL);
    pthread_mutex_init(&om_g.threads_lock, NULL);
    struct om_tc *self = om_tls_tc;
    struct om_tc *tc = om_g.threads, *next;
    for (; tc; tc = next) {
        next = tc->next;
        if (tc == self || tc->orphan)
            continue;
        tc_drain(tc);
        tc_retire_locked(tc);
    }
    uint16_t gen = (uint16_t)(om_g.owner + 1);
    om_g.owner = gen ? gen : 1;
    __atomic_fetch_and(&om_g.gate, (uint8_t)~OM_GATE_FORKING, __ATOMIC_RELEASE);
}
