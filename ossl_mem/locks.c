/* locks.c - OpenSSL's locks in the arena: process-shared and robust (a dead holder is recovered); every other lock goes to libc. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>

#include <openssl/crypto.h>

#include "om.h"

/*
 * OpenSSL 3.x makes every lock with CRYPTO_THREAD_lock_new(): an
 * OPENSSL_zalloc() of a pthread_rwlock_t followed by pthread_rwlock_init(lock,
 * NULL), a process-private rwlock. One that lives in the shared arena is
 * used by several processes, which breaks it twice over:
 *
 * 1. A waiter in one process is never woken by an unlock in another (a
 *    private rwlock uses private futexes). Measured: a default rwlock in a
 *    MAP_SHARED page, write-locked by one process, waited for by a second,
 *    released by the first: the second never wakes.
 * 2. A process that dies holding it (a segfault elsewhere, the OOM killer,
 *    kill -9, at any instruction) leaves it held forever: POSIX has no
 *    robust rwlocks, so every sibling, every new worker and the master
 *    block on it at their next certificate lookup.
 *
 * So the shared library defines the pthread_rwlock_* functions. A lock that
 * is not in the arena (every lock of a process that has no shared scope,
 * and every private lock of one that has) goes to libc's function at once:
 * one subtraction, one compare and a tail call. A lock that
 * pthread_rwlock_init() sees in the arena becomes an om_rlock instead
 * (below): a robust, process-shared, recursive mutex in the rwlock's own 56
 * bytes, plus a magic word that tells the other functions it is one.
 *
 * Why a recursive mutex and not a reader-writer lock:
 * - Robustness comes from the kernel: a robust mutex is on its owner
 *   thread's robust list (set_robust_list(2)), which the kernel walks when
 *   the thread dies, at whatever instruction; glibc marks the list entry it
 *   is adding or removing as "pending" before it touches the futex word, so
 *   a death in the middle of acquiring or releasing is covered too. The
 *   next locker gets EOWNERDEAD, and waiters are woken: nobody sleeps
 *   forever, and nothing waits for the master's waitpid(). A reader-writer
 *   lock has no such list (readers are anonymous), so it would need a
 *   table of readers and liveness polling to give the same guarantee.
 * - Readers then exclude each other. OpenSSL allows for that: where it has
 *   no rwlock (its threads_pthread.c without USE_RWLOCK, used on some
 *   platforms) every CRYPTO_RWLOCK is a plain mutex, so its lock order
 *   never relies on two readers holding one lock at once. The locks that
 *   land in the arena (the SSL_CTX's, its X509_STORE's, the certificates'
 *   and keys') are held for a few hundred instructions per use; README
 *   "Workers that die anywhere" has the measurement that chose this.
 * - Recursive, because an rwlock lets one thread take a read lock it
 *   already holds, and OpenSSL does.
 * The mutex's owner died bit tells that a holder died; which process it was
 * is kept in <holder>, set after each acquisition and cleared before the
 * last release (a death between the mutex operation and that store makes
 * the report say "unknown": the lock itself is recovered either way).
 *
 * pthread_mutex_init() on a mutex in the arena adds process-shared and
 * robust; pthread_mutex_lock() and its try/timed/clock variants recover an
 * arena mutex whose holder died the same way. libcrypto 3.0 makes no
 * mutexes (it imports none of these), so that part serves other code.
 *
 * The definitions reach libcrypto's calls when libossl_mem.so comes before
 * libc in the lookup order (it does when the program links it, or with
 * LD_PRELOAD); ossl_mem_init() checks that with real CRYPTO_THREAD_* calls.
 * They exist only in the shared library (PIC): a static link keeps libc's,
 * and shared scopes are then refused.
 */

_Atomic uint64_t om_lock_inits_shared;      /* locks made process-shared in this process */
static __thread const void *last_rwlock;    /* last rwlock initialised by this thread */
static int test_stop;                       /* OSSL_MEM_TEST_LOCK_*: where to stop (tests) */

#define RLOCK_MAGIC 0x6B6C726Fu /* "orlk" */
#define RL_REPORTED 1u

/*
 * A lock of the arena, laid over the caller's pthread_rwlock_t:
 *
 *   0                                      40      44      48      52   56
 *   +--------------------------------------+-------+-------+-------+----+
 *   | pthread_mutex_t: robust, pshared,    | magic | holder| flags | -  |
 *   | recursive                            |       | (pid) |       |    |
 *   +--------------------------------------+-------+-------+-------+----+
 */
struct om_rlock {
    pthread_mutex_t m;          /* the lock itself */
    uint32_t magic;             /* RLOCK_MAGIC while initialised by us */
    _Atomic int32_t holder;     /* pid of the process holding <m> (0: none or unknown) */
    _Atomic uint32_t flags;     /* RL_REPORTED: its recovery was reported once */
    uint32_t unused;
};
_Static_assert(sizeof(struct om_rlock) <= sizeof(pthread_rwlock_t),
               "a robust lock must fit in the caller's pthread_rwlock_t");

/*
 * The lowest address of the arena's chunk area, or the highest address
 * there is while there is no arena: every lock below it is private, which
 * is one comparison on the path of every lock operation. The arena is
 * mapped right above the private region, in the same reservation
 * (pool.c), so OpenSSL's private locks, which live in the region, are below
 * it; a lock above it (in a library's static data, on the main thread's
 * stack, in a large chunk the system mapped higher) takes the full test in
 * rlock_of().
 */
static uintptr_t lock_lo = UINTPTR_MAX;

/*
 * Sets lock_lo from the arena: in ossl_mem_init(), once the arena is mapped
 * and before any lock can be in it. A plain store (and plain loads below,
 * which the compiler folds into the comparison): it changes once, before
 * the first shared scope, and a thread that still sees the old value sends
 * only private locks to libc, which is right for them.
 */
void om_locks_init(void)
{
    if (om_g.arena)
        lock_lo = (uintptr_t)om_g.arena_lo;
}

/* Whether <l> may be one of our locks: one comparison, false for every private lock below the arena. */
static inline bool maybe_ours(const void *l)
{
    return OM_UNLIKELY((uintptr_t)l >= lock_lo);
}

/* Whether <l> is one of our locks: inside the arena's chunk area and marked. */
static inline struct om_rlock *rlock_of(const void *l)
{
    if (!om_in_arena(l))
        return NULL;
    struct om_rlock *r = (struct om_rlock *)l;
    return __atomic_load_n(&r->magic, __ATOMIC_RELAXED) == RLOCK_MAGIC ? r : NULL;
}

/* What find_owner() looks for, and what it found. */
struct owner_search {
    uintptr_t lock;             /* the lock's address */
    uint8_t set;                /* the shared scope of its chunk */
    const struct om_chunk *found;
};

/* Whether live arena chunk <h> of the lock's scope holds a pointer to the lock. */
static void find_owner(struct om_chunk *h, size_t usable, void *arg)
{
    struct owner_search *o = arg;
    (void)usable;
    if (o->found || h->state != OM_ST_LIVE || h->flags != o->set || h->size == UINT32_MAX)
        return;
    const uintptr_t *w = (const uintptr_t *)(h + 1);
    for (size_t i = 0; i < h->size / sizeof *w; i++)
        if (w[i] == o->lock) {
            o->found = h;
            return;
        }
}

/*
 * Says that a lock of the arena was found abandoned by a dead holder: counts
 * it (arena-wide, and in every registered context built in the same shared
 * scope) and reports it once per lock, with the dead process, the OpenSSL
 * site that allocated the lock and the first such context. <dead> is the
 * pid the lock recorded, 0 if unknown. The caller made it consistent already.
 */
static OM_COLD void recovered(const void *lock, pid_t dead, _Atomic uint32_t *flags)
{
    struct om_arena *A = om_g.arena;
    atomic_fetch_add(&A->locks_recovered, 1);
    const struct om_chunk *h = om_arena_chunk_at(lock);
    int ctx = -1;
    for (int i = 0; i < OM_MAXCTX && h; i++)
        if (__atomic_load_n(&A->ctxs[i].state, __ATOMIC_ACQUIRE) != OM_SCTX_FREE &&
            A->ctxs[i].set == h->flags) {
            atomic_fetch_add(&A->ctxs[i].locks_recovered, 1);
            if (ctx < 0)
                ctx = i;
        }
    if (flags && (atomic_fetch_or(flags, RL_REPORTED) & RL_REPORTED))
        return;
    char site[256] = "an unknown site", osite[256] = "", who[80] = "a process that died";
    if (h)
        om_site_str(h->asite, site, sizeof site);
    /* every OpenSSL lock comes from one line: the object that points to it says more */
    struct owner_search os = {(uintptr_t)(h + 1), h ? h->flags : 0, NULL};
    if (h)
        om_arena_walk(find_owner, &os);
    if (os.found) {
        char s2[200];
        snprintf(osite, sizeof osite, ", of the object allocated at %s",
                 om_site_str(os.found->asite, s2, sizeof s2));
    }
    if (dead > 0 && kill(dead, 0) == 0)
        snprintf(who, sizeof who, "a thread of process %d, which exited holding it", (int)dead);
    else if (dead > 0)
        snprintf(who, sizeof who, "process %d, which died", (int)dead);
    char where[96] = "no registered context";
    if (ctx >= 0)
        snprintf(where, sizeof where, "registered context %p", (void *)A->ctxs[ctx].ctx);
    om_msg("OpenSSL lock %p in the shared arena (allocated at %s%s, %s) was held by %s: "
           "recovered, the next locker has it (what it protects may be half-changed: "
           "ossl_mem_ssl_ctx_locks_recovered() tells the owner to rebuild); reported once "
           "per lock", lock, site, osite, where, who);
}

/* Test hook: stops (SIGSTOP) the calling process at instant <where> of a robust lock operation. */
static OM_COLD void test_stop_here(int where)
{
    if (__atomic_load_n(&test_stop, __ATOMIC_RELAXED) == where)
        raise(SIGSTOP);
}

/*
 * Completes an acquisition of robust lock <r> whose mutex operation returned
 * <rc>: a dead holder's lock is made consistent and reported; the holder is
 * recorded. Returns what the caller returns (0, or the mutex's error).
 */
static int rl_acquired(struct om_rlock *r, int rc)
{
    if (OM_UNLIKELY(rc == EOWNERDEAD)) {
        pid_t dead = atomic_load_explicit(&r->holder, memory_order_relaxed);
        if (pthread_mutex_consistent(&r->m) != 0)
            return ENOTRECOVERABLE;
        recovered(r, dead, &r->flags);
        rc = 0;
    }
    if (rc != 0)
        return rc;
    if (OM_UNLIKELY(test_stop))
        test_stop_here(OSSL_MEM_TEST_LOCK_ACQUIRED);
    atomic_store_explicit(&r->holder, om_g.my_pid, memory_order_relaxed);
    return 0;
}

#ifdef PIC
typedef int (*rw_fn)(pthread_rwlock_t *);
typedef int (*rw_timed_fn)(pthread_rwlock_t *, const struct timespec *);
typedef int (*rw_clock_fn)(pthread_rwlock_t *, clockid_t, const struct timespec *);
typedef int (*mx_fn)(pthread_mutex_t *);
typedef int (*mx_timed_fn)(pthread_mutex_t *, const struct timespec *);
typedef int (*mx_clock_fn)(pthread_mutex_t *, clockid_t, const struct timespec *);

/*
 * libc's definitions: the next object after us in lookup order. Each
 * pointer starts at a stub that looks them all up and calls the real one,
 * so that a lock operation made before our constructor (by another
 * library's) works, and the hot path is one indirect jump with no test.
 */
static void find_real(void);

#define LAZY(name, ret, params, args)                    \
    static ret lazy_##name params                          \
    {                                                      \
        find_real();                                       \
        return real.name args;                             \
    }

struct real_fns {
    int (*rwlock_init)(pthread_rwlock_t *, const pthread_rwlockattr_t *);
    int (*mutex_init)(pthread_mutex_t *, const pthread_mutexattr_t *);
    rw_fn rdlock, wrlock, tryrdlock, trywrlock, unlock, destroy;
    rw_timed_fn timedrdlock, timedwrlock;
    rw_clock_fn clockrdlock, clockwrlock;
    mx_fn mlock, mtrylock;
    mx_timed_fn mtimedlock;
    mx_clock_fn mclocklock;
};

static int lazy_rwlock_init(pthread_rwlock_t *, const pthread_rwlockattr_t *);
static int lazy_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *);
static int lazy_rdlock(pthread_rwlock_t *), lazy_wrlock(pthread_rwlock_t *);
static int lazy_tryrdlock(pthread_rwlock_t *), lazy_trywrlock(pthread_rwlock_t *);
static int lazy_unlock(pthread_rwlock_t *), lazy_destroy(pthread_rwlock_t *);
static int lazy_timedrdlock(pthread_rwlock_t *, const struct timespec *);
static int lazy_timedwrlock(pthread_rwlock_t *, const struct timespec *);
static int lazy_clockrdlock(pthread_rwlock_t *, clockid_t, const struct timespec *);
static int lazy_clockwrlock(pthread_rwlock_t *, clockid_t, const struct timespec *);
static int lazy_mlock(pthread_mutex_t *), lazy_mtrylock(pthread_mutex_t *);
static int lazy_mtimedlock(pthread_mutex_t *, const struct timespec *);
static int lazy_mclocklock(pthread_mutex_t *, clockid_t, const struct timespec *);

static struct real_fns real = {
    lazy_rwlock_init, lazy_mutex_init, lazy_rdlock, lazy_wrlock, lazy_tryrdlock, lazy_trywrlock,
    lazy_unlock, lazy_destroy, lazy_timedrdlock, lazy_timedwrlock, lazy_clockrdlock,
    lazy_clockwrlock, lazy_mlock, lazy_mtrylock, lazy_mtimedlock, lazy_mclocklock};

LAZY(rwlock_init, int, (pthread_rwlock_t *l, const pthread_rwlockattr_t *a), (l, a))
LAZY(mutex_init, int, (pthread_mutex_t *m, const pthread_mutexattr_t *a), (m, a))
LAZY(rdlock, int, (pthread_rwlock_t *l), (l))
LAZY(wrlock, int, (pthread_rwlock_t *l), (l))
LAZY(tryrdlock, int, (pthread_rwlock_t *l), (l))
LAZY(trywrlock, int, (pthread_rwlock_t *l), (l))
LAZY(unlock, int, (pthread_rwlock_t *l), (l))
LAZY(destroy, int, (pthread_rwlock_t *l), (l))
LAZY(timedrdlock, int, (pthread_rwlock_t *l, const struct timespec *t), (l, t))
LAZY(timedwrlock, int, (pthread_rwlock_t *l, const struct timespec *t), (l, t))
LAZY(clockrdlock, int, (pthread_rwlock_t *l, clockid_t c, const struct timespec *t), (l, c, t))
LAZY(clockwrlock, int, (pthread_rwlock_t *l, clockid_t c, const struct timespec *t), (l, c, t))
LAZY(mlock, int, (pthread_mutex_t *m), (m))
LAZY(mtrylock, int, (pthread_mutex_t *m), (m))
LAZY(mtimedlock, int, (pthread_mutex_t *m, const struct timespec *t), (m, t))
LAZY(mclocklock, int, (pthread_mutex_t *m, clockid_t c, const struct timespec *t), (m, c, t))

static void *find(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        char msg[128];
        snprintf(msg, sizeof msg, "dlsym(RTLD_NEXT) found no %s in libc", name);
        om_die(__FILE__, __LINE__, msg);
    }
    return f;
}

/* Points every entry of <real> at libc's function (racing callers store the same values). */
#define SET(field, name) __atomic_store_n(&real.field, (__typeof__(real.field))find(name), \
                                          __ATOMIC_RELAXED)
static void find_real(void)
{
    SET(rwlock_init, "pthread_rwlock_init");
    SET(mutex_init, "pthread_mutex_init");
    SET(rdlock, "pthread_rwlock_rdlock");
    SET(wrlock, "pthread_rwlock_wrlock");
    SET(tryrdlock, "pthread_rwlock_tryrdlock");
    SET(trywrlock, "pthread_rwlock_trywrlock");
    SET(unlock, "pthread_rwlock_unlock");
    SET(destroy, "pthread_rwlock_destroy");
    SET(timedrdlock, "pthread_rwlock_timedrdlock");
    SET(timedwrlock, "pthread_rwlock_timedwrlock");
    SET(clockrdlock, "pthread_rwlock_clockrdlock");
    SET(clockwrlock, "pthread_rwlock_clockwrlock");
    SET(mlock, "pthread_mutex_lock");
    SET(mtrylock, "pthread_mutex_trylock");
    SET(mtimedlock, "pthread_mutex_timedlock");
    SET(mclocklock, "pthread_mutex_clocklock");
}

__attribute__((constructor)) static void locks_ctor(void)
{
    find_real();
}

#define REAL(f) (__atomic_load_n(&real.f, __ATOMIC_RELAXED))

#define EXPORT __attribute__((visibility("default")))

static bool share_it(const void *lock)
{
    return om_g.arena && om_g.opt.shared_locks && om_in_arena(lock);
}

EXPORT int pthread_rwlock_init(pthread_rwlock_t *l, const pthread_rwlockattr_t *a)
{
    last_rwlock = l;
    if (!share_it(l))
        return REAL(rwlock_init)(l, a);
    if (om_g.opt.robust_locks) {
        struct om_rlock *r = (struct om_rlock *)l;
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
        memset(r, 0, sizeof *r);
        int rc = REAL(mutex_init)(&r->m, &ma);
        pthread_mutexattr_destroy(&ma);
        if (rc == 0) {
            __atomic_store_n(&r->magic, RLOCK_MAGIC, __ATOMIC_RELEASE);
            atomic_fetch_add(&om_lock_inits_shared, 1);
        }
        return rc;
    }
    /* no-robust-locks: libc's rwlock, process-shared (the lock a dead holder keeps forever) */
    pthread_rwlockattr_t sa;
    pthread_rwlockattr_init(&sa);
    if (a) {
        int kind;
        if (pthread_rwlockattr_getkind_np(a, &kind) == 0)
            pthread_rwlockattr_setkind_np(&sa, kind);
    }
    pthread_rwlockattr_setpshared(&sa, PTHREAD_PROCESS_SHARED);
    int rc = REAL(rwlock_init)(l, &sa);
    pthread_rwlockattr_destroy(&sa);
    if (rc == 0)
        atomic_fetch_add(&om_lock_inits_shared, 1);
    return rc;
}

/*
 * The lock operations. Each is one comparison and a jump to libc's for a
 * private lock; a lock at or above the arena's start goes to a function of
 * its own (never inlined, so the private path keeps no stack frame), which
 * sends it to libc all the same unless it is one of ours.
 */
#define RW_OP(name, realop, mutexop, params, args)                                 \
    static __attribute__((noinline)) int name##_arena params                        \
    {                                                                              \
        struct om_rlock *r = rlock_of(l);                                          \
        if (!r)                                                                    \
            return REAL(realop) args;                                              \
        return rl_acquired(r, mutexop);                                            \
    }                                                                              \
    EXPORT int name params                                                         \
    {                                                                              \
        if (maybe_ours(l))                                                         \
            return name##_arena args;                                              \
        return REAL(realop) args;                                                  \
    }

RW_OP(pthread_rwlock_rdlock, rdlock, REAL(mlock)(&r->m), (pthread_rwlock_t *l), (l))
RW_OP(pthread_rwlock_wrlock, wrlock, REAL(mlock)(&r->m), (pthread_rwlock_t *l), (l))
RW_OP(pthread_rwlock_tryrdlock, tryrdlock, REAL(mtrylock)(&r->m), (pthread_rwlock_t *l), (l))
RW_OP(pthread_rwlock_trywrlock, trywrlock, REAL(mtrylock)(&r->m), (pthread_rwlock_t *l), (l))
RW_OP(pthread_rwlock_timedrdlock, timedrdlock, REAL(mtimedlock)(&r->m, t),
      (pthread_rwlock_t *l, const struct timespec *t), (l, t))
RW_OP(pthread_rwlock_timedwrlock, timedwrlock, REAL(mtimedlock)(&r->m, t),
      (pthread_rwlock_t *l, const struct timespec *t), (l, t))
RW_OP(pthread_rwlock_clockrdlock, clockrdlock, REAL(mclocklock)(&r->m, c, t),
      (pthread_rwlock_t *l, clockid_t c, const struct timespec *t), (l, c, t))
RW_OP(pthread_rwlock_clockwrlock, clockwrlock, REAL(mclocklock)(&r->m, c, t),
      (pthread_rwlock_t *l, clockid_t c, const struct timespec *t), (l, c, t))

/*
 * Releases robust lock <r>. The holder is cleared before the last release
 * (glibc keeps a recursive mutex's depth in __count), and put back if the
 * release fails (EPERM: the caller did not hold it).
 */
static __attribute__((noinline)) int unlock_arena(pthread_rwlock_t *l)
{
    struct om_rlock *r = rlock_of(l);
    if (!r)
        return REAL(unlock)(l);
    int32_t was = atomic_load_explicit(&r->holder, memory_order_relaxed);
    bool last = r->m.__data.__count <= 1;
    if (last)
        atomic_store_explicit(&r->holder, 0, memory_order_relaxed);
    if (OM_UNLIKELY(test_stop))
        test_stop_here(OSSL_MEM_TEST_LOCK_RELEASING);
    int rc = pthread_mutex_unlock(&r->m);
    if (rc != 0 && last)
        atomic_store_explicit(&r->holder, was, memory_order_relaxed);
    return rc;
}

EXPORT int pthread_rwlock_unlock(pthread_rwlock_t *l)
{
    if (maybe_ours(l))
        return unlock_arena(l);
    return REAL(unlock)(l);
}

static __attribute__((noinline)) int destroy_arena(pthread_rwlock_t *l)
{
    struct om_rlock *r = rlock_of(l);
    if (!r)
        return REAL(destroy)(l);
    __atomic_store_n(&r->magic, 0, __ATOMIC_RELEASE);
    return pthread_mutex_destroy(&r->m);
}

EXPORT int pthread_rwlock_destroy(pthread_rwlock_t *l)
{
    if (maybe_ours(l))
        return destroy_arena(l);
    return REAL(destroy)(l);
}

EXPORT int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
{
    if (!share_it(m))
        return REAL(mutex_init)(m, a);
    pthread_mutexattr_t sa;
    pthread_mutexattr_init(&sa);
    if (a) {
        int v;
        if (pthread_mutexattr_gettype(a, &v) == 0)
            pthread_mutexattr_settype(&sa, v);
        if (pthread_mutexattr_getprotocol(a, &v) == 0)
            pthread_mutexattr_setprotocol(&sa, v);
        if (pthread_mutexattr_getrobust(a, &v) == 0)
            pthread_mutexattr_setrobust(&sa, v);
    }
    pthread_mutexattr_setpshared(&sa, PTHREAD_PROCESS_SHARED);
    if (om_g.opt.robust_locks)
        pthread_mutexattr_setrobust(&sa, PTHREAD_MUTEX_ROBUST);
    int rc = REAL(mutex_init)(m, &sa);
    pthread_mutexattr_destroy(&sa);
    if (rc == 0)
        atomic_fetch_add(&om_lock_inits_shared, 1);
    return rc;
}

/*
 * A mutex lock of any kind returned <rc>: an arena mutex whose holder died
 * is made consistent and reported, and the caller gets it as if nothing had
 * happened. Any other mutex (including the arena's own lock, which is not
 * in the chunk area and repairs itself, and an application's robust
 * mutexes) keeps libc's answer.
 */
static inline int mx_acquired(pthread_mutex_t *m, int rc)
{
    if (OM_LIKELY(rc != EOWNERDEAD) || !om_in_arena(m) || !om_g.opt.robust_locks)
        return rc;
    if (pthread_mutex_consistent(m) != 0)
        return ENOTRECOVERABLE;
    recovered(m, 0, NULL);
    return 0;
}

EXPORT int pthread_mutex_lock(pthread_mutex_t *m)
{
    return mx_acquired(m, REAL(mlock)(m));
}

EXPORT int pthread_mutex_trylock(pthread_mutex_t *m)
{
    return mx_acquired(m, REAL(mtrylock)(m));
}

EXPORT int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *t)
{
    return mx_acquired(m, REAL(mtimedlock)(m, t));
}

EXPORT int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t c, const struct timespec *t)
{
    return mx_acquired(m, REAL(mclocklock)(m, c, t));
}
#endif

#ifdef PIC
/*
 * Whether libcrypto's lock operations reach ours: a robust lock made in a
 * chunk of the arena is read-locked, write-locked and released through
 * OpenSSL's own CRYPTO_THREAD_* calls, and each step must show in the lock.
 */
static bool ops_reach_us(void)
{
    void *p = om_arena_alloc(sizeof(pthread_rwlock_t), OM_SITE_NONE, 0, 0, om_g.proc_id);
    if (!p)
        return false;
    struct om_rlock *r = p;
    bool ok = pthread_rwlock_init(p, NULL) == 0 && rlock_of(p) == r;
    ok = ok && CRYPTO_THREAD_read_lock(p) && atomic_load(&r->holder) == om_g.my_pid &&
         CRYPTO_THREAD_unlock(p) && atomic_load(&r->holder) == 0;
    ok = ok && CRYPTO_THREAD_write_lock(p) && atomic_load(&r->holder) == om_g.my_pid &&
         CRYPTO_THREAD_unlock(p) && atomic_load(&r->holder) == 0;
    if (rlock_of(p))
        pthread_rwlock_destroy(p);
    om_arena_free(om_hdr(p), OM_SITE_NONE);
    return ok;
}
#endif

/*
 * Whether libcrypto's lock calls reach the definitions above: makes and
 * frees one OpenSSL lock and looks whether we saw its initialisation; with
 * robust locks, also whether its lock operations reach us. Runs after our
 * hooks are installed (the lock is allocated by us).
 */
bool om_locks_check(void)
{
    last_rwlock = NULL;
    CRYPTO_RWLOCK *l = CRYPTO_THREAD_lock_new();
    bool ok = l && last_rwlock == (const void *)l;
    CRYPTO_THREAD_lock_free(l);
#ifdef PIC
    if (ok && om_g.arena && om_g.opt.shared_locks && om_g.opt.robust_locks)
        ok = ops_reach_us();
#endif
    return ok;
}

/* Test hook (documented in ossl_mem.h). */
int ossl_mem_test_lock_stop(int where)
{
    if (where < 0 || where > OSSL_MEM_TEST_LOCK_RELEASING)
        return OSSL_MEM_E_INVAL;
    __atomic_store_n(&test_stop, where, __ATOMIC_RELAXED);
    return 0;
}

int ossl_mem_ssl_ctx_locks_recovered(struct ssl_ctx_st *ctx)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    if (!om_g.arena)
        return OSSL_MEM_E_NO_ARENA;
    for (int i = 0; i < OM_MAXCTX; i++) {
        const struct om_sctx *e = &om_g.arena->ctxs[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != OM_SCTX_FREE && e->ctx == ctx)
            return (int)atomic_load(&e->locks_recovered);
    }
    return OSSL_MEM_E_UNKNOWN;
}
