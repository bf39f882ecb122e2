/* ossl_mem.h - public API of ossl_mem, an OpenSSL 3.x memory provider for TLS servers. */
#ifndef OSSL_MEM_H
#define OSSL_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

#if defined(__GNUC__)
#define OSSL_MEM_API __attribute__((visibility("default")))
#else
#define OSSL_MEM_API
#endif

/*
 * Error codes. Every function that returns int returns 0 (or a documented
 * positive value) on success and one of these negative codes on failure;
 * ossl_mem_strerror() turns a code into one line of text.
 */
#define OSSL_MEM_E_TOO_LATE   (-1) /* OpenSSL already allocated memory: call ossl_mem_init() first */
#define OSSL_MEM_E_AGAIN      (-2) /* ossl_mem_init() was already called in this process */
#define OSSL_MEM_E_OPTIONS    (-3) /* bad options string (the offending word is named on stderr) */
#define OSSL_MEM_E_NOMEM      (-4) /* could not map memory for the pools */
#define OSSL_MEM_E_HOOKED     (-5) /* another allocator is already installed in OpenSSL */
#define OSSL_MEM_E_NOT_INIT   (-6) /* ossl_mem_init() has not been called */
#define OSSL_MEM_E_INVAL      (-7) /* bad argument */
#define OSSL_MEM_E_LIMIT      (-8) /* a fixed table is full (tags, tag stack depth) */
#define OSSL_MEM_E_VERSION    (-9) /* struct ossl_mem_config has an unknown version */
#define OSSL_MEM_E_NO_ARENA   (-10) /* no shared arena (shared=0, or it could not be mapped) */
#define OSSL_MEM_E_NOT_SHARED (-11) /* the object is not in the shared arena */
#define OSSL_MEM_E_NOT_OWNER  (-12) /* only the process that registered the context may do this */
#define OSSL_MEM_E_LOCKS      (-13) /* lock interposition is not in effect: shared scopes refused */
#define OSSL_MEM_E_UNKNOWN    (-14) /* not a registered shared context */
#define OSSL_MEM_E_SCOPE      (-15) /* shared scope misuse (end without begin, or too deep) */

#define OSSL_MEM_CONFIG_VERSION 1

/* Flags for ossl_mem_config.flags. */
#define OSSL_MEM_CFG_IGNORE_ENV 0x1 /* do not read OSSL_MEM_OPTIONS from the environment */

/*
 * Configuration for ossl_mem_init(). Zero it, set <version>, and put the
 * options in <options> using the same syntax as the OSSL_MEM_OPTIONS
 * environment variable ("quarantine=1M,no-zero,on-error=abort").
 * Options are applied in this order: built-in defaults, <options>, then
 * OSSL_MEM_OPTIONS (unless OSSL_MEM_CFG_IGNORE_ENV), so an operator can
 * turn debugging on for a deployed binary without rebuilding it.
 */
struct ossl_mem_config {
    unsigned int version;   /* OSSL_MEM_CONFIG_VERSION */
    unsigned int flags;     /* OSSL_MEM_CFG_* */
    const char *options;    /* options string, may be NULL */
};

/*
 * Installs ossl_mem as OpenSSL's allocator (CRYPTO_set_mem_functions).
 * Call it once, before anything in the process touches OpenSSL. <cfg> may
 * be NULL: defaults plus OSSL_MEM_OPTIONS. Returns 0, or OSSL_MEM_E_TOO_LATE
 * when OpenSSL already allocated, OSSL_MEM_E_AGAIN on a second call,
 * OSSL_MEM_E_OPTIONS for bad options, OSSL_MEM_E_HOOKED when another
 * allocator is already installed, OSSL_MEM_E_NOMEM when the pools or the
 * shared arena (option shared=SIZE) cannot be mapped. On failure nothing is
 * installed and OpenSSL is left alone. It also checks, with real
 * CRYPTO_THREAD_* calls, that libcrypto's pthread_rwlock_* calls reach
 * libossl_mem.so (the lock interposition that makes OpenSSL's locks in the
 * arena process-shared and robust); if they do not (a static link, or the library
 * loaded after libc), it says so in one line on stderr and shared scopes
 * will be refused with OSSL_MEM_E_LOCKS, while the private pools work.
 */
OSSL_MEM_API int ossl_mem_init(const struct ossl_mem_config *cfg);

/* One line of text for an OSSL_MEM_E_* code (never NULL). */
OSSL_MEM_API const char *ossl_mem_strerror(int err);

/*
 * Validates an options string without installing anything. Returns 0 or
 * OSSL_MEM_E_OPTIONS with a message naming the bad word in <err> (which may
 * be NULL). Option words are listed by ossl_mem_options_help().
 */
OSSL_MEM_API int ossl_mem_options_check(const char *options, char *err, size_t errlen);

/* Prints the table of options with their defaults and help text to <out>. */
OSSL_MEM_API void ossl_mem_options_help(FILE *out);

/*
 * Pool tags. Allocations made by the calling thread are counted under the
 * tag on top of its stack ("openssl" when the stack is empty). Tags are
 * created on first use; at most OSSL_MEM_MAX_TAGS names (including the
 * default) and a stack depth of OSSL_MEM_MAX_TAG_DEPTH per thread.
 * ossl_mem_tag_push() returns 0, OSSL_MEM_E_LIMIT or OSSL_MEM_E_INVAL.
 * A chunk keeps the tag it was allocated under for its whole life, also
 * across realloc; free() never depends on the current tag.
 */
#define OSSL_MEM_MAX_TAGS      64
#define OSSL_MEM_MAX_TAG_DEPTH 16
#define OSSL_MEM_TAG_NAME_MAX  31
OSSL_MEM_API int ossl_mem_tag_push(const char *tag);
OSSL_MEM_API void ossl_mem_tag_pop(void);

/*
 * Process-wide statistics. Counters are exact once the threads that touch
 * OpenSSL are quiescent; while they run, each figure is a consistent sum of
 * per-thread counters read without stopping them. live_* count requested
 * bytes; allocs/frees count chunks created and released (a moving realloc
 * counts one of each), so live_chunks == allocs - frees.
 */
struct ossl_mem_stats {
    uint64_t live_bytes;        /* requested bytes in live chunks */
    uint64_t live_chunks;       /* live chunks */
    uint64_t peak_bytes;        /* highest live_bytes seen (exact within 4 KiB per thread) */
    uint64_t allocs;            /* chunks created (malloc, realloc(NULL), moving realloc) */
    uint64_t frees;             /* chunks released (free, realloc(p,0), moving realloc) */
    uint64_t reallocs;          /* realloc calls */
    uint64_t failed_allocs;     /* allocations that returned NULL */
    uint64_t double_frees;      /* frees (or reallocs) of a chunk already freed */
    uint64_t invalid_frees;     /* frees of pointers ossl_mem never handed out */
    uint64_t inherited_frees;   /* frees of shared chunks by a non-owner, refused */
    uint64_t overflows;         /* canary damage found */
    uint64_t uaf_writes;        /* writes to freed chunks found */
    uint64_t corrupt_headers;   /* chunk headers that failed their check */
    uint64_t shared_size;       /* bytes in the shared arena (0: no arena) */
    uint64_t shared_used;       /* bytes of the arena in use */
    uint64_t shared_live_chunks;/* live chunks in the arena */
    uint64_t private_mapped;    /* bytes of private segments and large mappings */
    uint64_t quarantine_bytes;  /* usable bytes of chunks held in quarantine */
    uint64_t quarantine_chunks; /* chunks held in quarantine */
    uint64_t large_chunks;      /* live chunks with their own mapping */
    uint64_t hooks_replaced;    /* 1 if someone replaced our CRYPTO_set_mem_functions hooks */
    uint64_t threads;           /* threads with a cache (alive) */
    uint64_t shared_peak;       /* highest shared_used seen by any process */
    uint64_t shared_failed;     /* arena allocations refused: arena full (all processes) */
    uint64_t shared_lock_repairs; /* arena lock found abandoned by a dead process and repaired */
    uint64_t shared_contexts;   /* registered shared contexts not yet destroyed (all processes) */
    uint64_t shared_reclaimed;  /* arena chunks released by context destruction (this process) */
    uint64_t lock_inits_shared; /* OpenSSL locks made process-shared (this process) */
    uint64_t fail_points;       /* allocation calls seen by failure injection (option fail=) */
    uint64_t injected_failures; /* of those, failed on purpose (counted in failed_allocs too) */
    uint64_t shared_locks_recovered; /* OpenSSL locks in the arena whose holder died, recovered
                                        (all processes; option robust-locks) */
};

/* Fills <st>. Returns 0 or OSSL_MEM_E_NOT_INIT / OSSL_MEM_E_INVAL. */
OSSL_MEM_API int ossl_mem_get_stats(struct ossl_mem_stats *st);

/*
 * Per-tag figures; returns 0, or OSSL_MEM_E_INVAL if the tag does not exist.
 * The live figures are found by walking every chunk's header (the hot path
 * counts only allocations per tag), so the call costs time in proportion to
 * the memory in use: fine for monitoring, not for every request.
 */
struct ossl_mem_tag_stats {
    uint64_t live_bytes;        /* requested bytes live under this tag */
    uint64_t live_chunks;       /* live chunks under this tag */
    uint64_t allocs;            /* chunks created under this tag */
};
OSSL_MEM_API int ossl_mem_get_tag_stats(const char *tag, struct ossl_mem_tag_stats *st);

/*
 * The shared arena (see README "Pre-fork servers"). ossl_mem_init() maps
 * one anonymous MAP_SHARED arena (option shared=SIZE, default 64M; 0 turns
 * it off) that every process forked later sees at the same address.
 *
 * ossl_mem_shared_begin()/ossl_mem_shared_end() bracket, per thread and
 * nestable (depth 16), the construction of objects that worker processes
 * share, normally SSL_CTX objects. Inside a scope allocations go to the
 * arena, except OpenSSL's per-thread and process-global state (error
 * queues, DRBGs, thread-init registries, name maps, method and property
 * caches), which stays private. The first begin of a process warms OpenSSL
 * up in private memory (library init, error state, DRBGs, algorithm
 * fetches, one throw-away TLS handshake) so that only objects built inside
 * the scope land in the arena. free() and realloc() find the pool from the
 * address, never from the scope; realloc keeps a shared chunk shared.
 * begin returns 0, OSSL_MEM_E_NOT_INIT, OSSL_MEM_E_NO_ARENA, OSSL_MEM_E_LOCKS
 * (OpenSSL's locks could not be made process-shared: see ossl_mem_init) or
 * OSSL_MEM_E_SCOPE (too deep); end returns 0 or OSSL_MEM_E_SCOPE.
 *
 * A free of a shared chunk by a process that did not allocate it, outside a
 * shared scope, is an inherited free: it is not performed, it is counted in
 * inherited_frees and reported once per site. So a worker's exit (OpenSSL's
 * atexit cleanup) never releases what its parent still uses.
 */
OSSL_MEM_API int ossl_mem_shared_begin(void);
OSSL_MEM_API int ossl_mem_shared_end(void);

/* 1 if <p> points into the shared arena, 0 otherwise. */
OSSL_MEM_API int ossl_mem_is_shared(const void *p);

/*
 * Shared SSL_CTX lifetime. <ctx> is an SSL_CTX * (struct ssl_ctx_st is
 * OpenSSL's name for it; this header does not include OpenSSL's).
 *
 * ossl_mem_share_ssl_ctx(ctx): registers a context built in a shared scope
 * by the calling process (its owner). It turns the context's internal
 * session cache off (SSL_SESS_CACHE_NO_INTERNAL: workers would insert
 * private sessions into a shared hash), sorts its X509_STORE's object
 * stack, and pins it, so that no worker's SSL_CTX_free() or exit cleanup
 * can destroy it. Returns 0, OSSL_MEM_E_NOT_SHARED (not in the arena),
 * OSSL_MEM_E_INVAL (already registered, or not a context),
 * OSSL_MEM_E_LIMIT (too many registered contexts: 64).
 *
 * From then on ossl_mem, not OpenSSL's reference count (which killed
 * workers leave too high), decides when it is destroyed:
 * - the owner calls ossl_mem_retire_ssl_ctx(ctx) when it stops handing the
 *   context out (this takes over the owner's reference: do not
 *   SSL_CTX_free() it afterwards);
 * - every process that may use it (the processes alive when it was
 *   registered and those forked before it was retired) either declares it
 *   is done with it, or is reported gone by its parent with
 *   ossl_mem_worker_exited(pid) after waitpid(); a process found to no
 *   longer exist, or that leaves through exit(), counts as gone too.
 *   A worker declares it is done with ossl_mem_ssl_ctx_done(ctx) (that one
 *   context), or, better, with ossl_mem_ssl_ctx_done(NULL) at a quiescent
 *   point of its loop, when it holds no pointer to a context read before
 *   (between connections, before it reads the published context again):
 *   that releases every context retired so far, including ones it never
 *   saw. An owner that publishes a new context before retiring the old one
 *   makes this safe (the RCU rule);
 * - then the owner destroys it: at once in retire when nobody else can hold
 *   it (retire returns 1), otherwise in a later ossl_mem_reclaim() (returns
 *   the number of contexts destroyed), ossl_mem_worker_exited(),
 *   ossl_mem_retire_ssl_ctx() or ossl_mem_share_ssl_ctx() call.
 *   Destruction frees the context and then every chunk of the arena that
 *   was allocated in the same shared scope and is no longer referenced from
 *   anything else (references that dead workers left in OpenSSL's counts do
 *   not keep memory alive). A chunk still referenced then (the owner's own
 *   certificate and key objects, until it frees them) is collected by one of
 *   those later calls of the owner, so a server that reloads stays bounded
 *   without calling ossl_mem_reclaim() itself.
 * Objects built in a shared scope belong to the process that built them:
 * a worker must not drop references to them that it did not take (only
 * registered contexts are pinned), because OpenSSL's teardown of an object
 * whose count reaches zero also writes to it (it cleanses keys and clears
 * fields) even when ossl_mem refuses the frees themselves.
 * retire returns 1 (destroyed now), 0 (deferred) or OSSL_MEM_E_UNKNOWN /
 * OSSL_MEM_E_NOT_OWNER; done returns 0 or OSSL_MEM_E_UNKNOWN (ctx not
 * registered); worker_exited returns 0 or OSSL_MEM_E_INVAL; reclaim returns
 * the number of contexts destroyed.
 */
OSSL_MEM_API int ossl_mem_share_ssl_ctx(struct ssl_ctx_st *ctx);

OSSL_MEM_API int ossl_mem_retire_ssl_ctx(struct ssl_ctx_st *ctx);
OSSL_MEM_API int ossl_mem_ssl_ctx_done(struct ssl_ctx_st *ctx);
OSSL_MEM_API int ossl_mem_worker_exited(pid_t pid);
OSSL_MEM_API int ossl_mem_reclaim(void);

/*
 * Locks of shared objects and dead workers. OpenSSL's locks that live in
 * the arena (the context's, its trust store's, its certificates' and keys')
 * are robust (option robust-locks, on by default): when a process dies
 * holding one, at any instruction (a crash, the OOM killer, kill -9), the
 * next locker in any process gets it, and no waiter sleeps forever. That
 * needs no call from the master. Each recovery is counted in
 * shared_locks_recovered and reported once per lock with the dead pid, the
 * OpenSSL site that allocated the lock and its registered context.
 * A holder that died while writing may have left the structure the lock
 * protects half-changed (a certificate half inserted into the trust store,
 * say). ossl_mem_ssl_ctx_locks_recovered(ctx) returns how many locks of the
 * shared scope that built <ctx> were recovered since it was registered (or
 * OSSL_MEM_E_UNKNOWN, OSSL_MEM_E_NOT_INIT, OSSL_MEM_E_NO_ARENA): an owner
 * that sees it above 0 should build a new context, publish it and retire
 * this one, as for a reload (examples/prefork_server.c does). Readers of one
 * lock in different processes exclude each other (README "Workers that die
 * anywhere").
 */
OSSL_MEM_API int ossl_mem_ssl_ctx_locks_recovered(struct ssl_ctx_st *ctx);

/*
 * Failure injection, for tests of OpenSSL's error paths: makes the <nth>
 * allocation call from now on fail (1: the next one; malloc, and realloc to
 * a non-zero size, count; shared and private alike), and no other; 0
 * cancels. It needs the option fail= at init (fail=0 arms it without
 * failing anything), because only then are the checking entry points
 * installed. Returns 0, OSSL_MEM_E_NOT_INIT, or OSSL_MEM_E_INVAL when fail=
 * was not given.
 */
OSSL_MEM_API int ossl_mem_fail_at(uint64_t nth);

/*
 * For tests of the arena lock's robustness only: takes the shared arena's
 * lock and returns holding it (a process that then dies leaves it for the
 * next locker to repair). Returns 0 or OSSL_MEM_E_NO_ARENA.
 */
OSSL_MEM_API int ossl_mem_test_hold_arena_lock(void);

/*
 * For tests of the robust OpenSSL locks only: from now on, the calling
 * process stops itself (SIGSTOP) at instant <where> of every operation on a
 * robust lock of the arena, so that a test can kill it there:
 * OSSL_MEM_TEST_LOCK_ACQUIRED (the lock is taken, its holder not yet
 * recorded) or OSSL_MEM_TEST_LOCK_RELEASING (the holder is cleared, the
 * lock not yet released); 0 turns it off. Returns 0 or OSSL_MEM_E_INVAL.
 */
#define OSSL_MEM_TEST_LOCK_ACQUIRED  1
#define OSSL_MEM_TEST_LOCK_RELEASING 2
OSSL_MEM_API int ossl_mem_test_lock_stop(int where);

/*
 * Writes a report to <out>: totals, per-tag figures, the top OpenSSL
 * allocation sites by live bytes (file:line, bytes, chunks) and the live
 * chunks at the time of the call (at exit, after OpenSSL's cleanup, that is
 * the leak list). <format> is OSSL_MEM_REPORT_TEXT or OSSL_MEM_REPORT_JSON.
 * Returns 0 or a negative code.
 */
#define OSSL_MEM_REPORT_TEXT 1
#define OSSL_MEM_REPORT_JSON 2
OSSL_MEM_API int ossl_mem_report(FILE *out, int format);

/*
 * Walks every chunk ossl_mem owns (live, cached and quarantined, private
 * and in the shared arena) and checks headers, states, the canaries of live
 * chunks (option canary), the contents of freed chunks (zeros, or the
 * pattern of option fill: a write after free) and the hooks installed in
 * OpenSSL. It also scans every live shared chunk for words
 * that point into a live private chunk that other processes cannot see (one
 * this process allocated after it forked, or after it forked its workers):
 * shared state mutated with private memory; both allocation sites are
 * reported. Returns the number of problems found, each reported on stderr,
 * or a negative code. Exact when no other thread allocates during the walk.
 */
OSSL_MEM_API long ossl_mem_check(void);

#ifdef __cplusplus
}
#endif
#endif /* OSSL_MEM_H */
