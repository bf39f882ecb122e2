/* locks.c - process-shared OpenSSL locks (O5): pthread_rwlock_init and pthread_mutex_init interposed for the arena. */
#include <dlfcn.h>

#include <openssl/crypto.h>

#include "om.h"

/*
 * OpenSSL 3.x makes every lock with CRYPTO_THREAD_lock_new(): an
 * OPENSSL_zalloc() followed by pthread_rwlock_init(lock, NULL), a
 * process-private rwlock. One that lives in the shared arena is used by
 * several processes, and a waiter in one process is then never woken by an
 * unlock in another (measured: DESIGN.md section 1). So the shared library
 * defines pthread_rwlock_init and pthread_mutex_init: for a lock inside the
 * arena they add PTHREAD_PROCESS_SHARED to the attributes; for every other
 * lock they change nothing. Every other pthread function goes to libc
 * untouched. The definitions reach libcrypto's calls when libossl_mem.so
 * comes before libc in the lookup order (it does when the program links
 * it, or with LD_PRELOAD); ossl_mem_init() checks that with a real
 * CRYPTO_THREAD_lock_new() call. They exist only in the shared library
 * (PIC): a static link keeps libc's, and shared scopes are then refused.
 */

_Atomic uint64_t om_lock_inits_shared;     /* locks made process-shared in this process */
static __thread const void *last_rwlock;    /* last rwlock initialised by this thread */

#ifdef PIC
typedef int (*rwlock_init_fn)(pthread_rwlock_t *, const pthread_rwlockattr_t *);
typedef int (*mutex_init_fn)(pthread_mutex_t *, const pthread_mutexattr_t *);

static rwlock_init_fn real_rwlock_init;
static mutex_init_fn real_mutex_init;

/* libc's definitions, found once (the next object after us in lookup order). */
static void find_real(void)
{
    if (!real_rwlock_init)
        real_rwlock_init = (rwlock_init_fn)dlsym(RTLD_NEXT, "pthread_rwlock_init");
    if (!real_mutex_init)
        real_mutex_init = (mutex_init_fn)dlsym(RTLD_NEXT, "pthread_mutex_init");
    if (!real_rwlock_init || !real_mutex_init)
        om_die(__FILE__, __LINE__, "dlsym(RTLD_NEXT) found no pthread_*_init in libc");
}

static bool share_it(const void *lock)
{
    return om_g.arena && om_g.opt.shared_locks && om_in_arena(lock);
}

__attribute__((visibility("default"))) int pthread_rwlock_init(pthread_rwlock_t *l,
                                                               const pthread_rwlockattr_t *a)
{
    find_real();
    last_rwlock = l;
    if (!share_it(l))
        return real_rwlock_init(l, a);
    pthread_rwlockattr_t sa;
    pthread_rwlockattr_init(&sa);
    if (a) {
        int kind;
        if (pthread_rwlockattr_getkind_np(a, &kind) == 0)
            pthread_rwlockattr_setkind_np(&sa, kind);
    }
    pthread_rwlockattr_setpshared(&sa, PTHREAD_PROCESS_SHARED);
    int rc = real_rwlock_init(l, &sa);
    pthread_rwlockattr_destroy(&sa);
    if (rc == 0)
        atomic_fetch_add(&om_lock_inits_shared, 1);
    return rc;
}

__attribute__((visibility("default"))) int pthread_mutex_init(pthread_mutex_t *m,
                                                              const pthread_mutexattr_t *a)
{
    find_real();
    if (!share_it(m))
        return real_mutex_init(m, a);
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
    int rc = real_mutex_init(m, &sa);
    pthread_mutexattr_destroy(&sa);
    if (rc == 0)
        atomic_fetch_add(&om_lock_inits_shared, 1);
    return rc;
}
#endif

/*
 * Whether libcrypto's pthread_rwlock_init() calls reach the definition
 * above: makes and frees one OpenSSL lock and looks whether we saw it.
 * Runs after our hooks are installed (the lock is allocated by us).
 */
bool om_locks_check(void)
{
    last_rwlock = NULL;
    CRYPTO_RWLOCK *l = CRYPTO_THREAD_lock_new();
    bool ok = l && last_rwlock == (const void *)l;
    CRYPTO_THREAD_lock_free(l);
    return ok;
}
