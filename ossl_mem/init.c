/* init.c - glue: ossl_mem_init() and the public entry points for tags, stats and errors. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "om.h"

struct om_global om_g;

static atomic_int init_state;   /* 0 never, 1 in progress, 2 done */
static char options_error[256]; /* detail of the last OSSL_MEM_E_OPTIONS */

const char *ossl_mem_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case OSSL_MEM_E_TOO_LATE:
        return "OpenSSL already allocated memory: call ossl_mem_init() before anything uses OpenSSL";
    case OSSL_MEM_E_AGAIN:
        return "ossl_mem_init() was already called in this process";
    case OSSL_MEM_E_OPTIONS:
        return options_error[0] ? options_error : "bad options string";
    case OSSL_MEM_E_NOMEM:
        return "cannot map memory for ossl_mem's pools";
    case OSSL_MEM_E_HOOKED:
        return "another allocator is already installed with CRYPTO_set_mem_functions()";
    case OSSL_MEM_E_NOT_INIT:
        return "ossl_mem_init() has not been called";
    case OSSL_MEM_E_INVAL:
        return "invalid argument";
    case OSSL_MEM_E_LIMIT:
        return "a fixed ossl_mem table is full (tags or tag stack depth)";
    case OSSL_MEM_E_VERSION:
        return "struct ossl_mem_config has an unknown version";
    case OSSL_MEM_E_NO_ARENA:
        return "there is no shared arena (option shared=0, or it could not be mapped)";
    case OSSL_MEM_E_NOT_SHARED:
        return "the object is not in the shared arena: build it between "
               "ossl_mem_shared_begin() and ossl_mem_shared_end()";
    case OSSL_MEM_E_NOT_OWNER:
        return "only the process that registered the shared context may retire it";
    case OSSL_MEM_E_LOCKS:
        return "OpenSSL's locks cannot be made process-shared: link libossl_mem.so before "
               "libcrypto (as a shared library) or LD_PRELOAD it";
    case OSSL_MEM_E_UNKNOWN:
        return "not a registered shared context";
    case OSSL_MEM_E_SCOPE:
        return "shared scope misuse (end without begin, nesting too deep, or a thread that "
               "is exiting)";
    default:
        return "unknown ossl_mem error";
    }
}

/* True while OpenSSL still calls our three functions. */
bool om_hooks_ours(void)
{
    CRYPTO_malloc_fn m;
    CRYPTO_realloc_fn r;
    CRYPTO_free_fn f;
    CRYPTO_get_mem_functions(&m, &r, &f);
    if (om_dbg_on())
        return m == om_dbg_malloc && r == om_dbg_realloc && f == om_dbg_free;
    return m == om_malloc_cb && r == om_realloc_cb && f == om_free_entry();
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&om_g.tags_lock);
    om_tc_fork_prepare();
    om_pool_fork_prepare();
    om_large_fork_prepare();
}

/*
 * Both sides of a fork start a new generation of private chunks: what
 * either allocates from now on is invisible to the other, which is what the
 * cross-pool scan of ossl_mem_check() looks for in shared chunks.
 */
static void fork_parent(void)
{
    om_g.forked = true;
    om_g.owner = om_arena_new_id();
    om_large_fork_parent();
    om_pool_fork_parent();
    om_tc_fork_parent();
    pthread_mutex_unlock(&om_g.tags_lock);
}

static void fork_child(void)
{
    om_g.forked = true;
    om_g.my_pid = getpid();
    om_large_fork_child();
    om_pool_fork_child();
    om_tc_fork_child();
    om_g.owner = om_arena_new_id();
    pthread_mutex_init(&om_g.tags_lock, NULL);
    om_arena_fork_child();
    om_shared_fork_child();
}

/*
 * atexit handler for the report= option; runs after OpenSSL's own cleanup.
 * "%p" in a file name becomes the pid, so that every process of a forking
 * server writes its own report.
 */
static void exit_report(void)
{
    const char *opt = om_g.opt.report;
    if (strcmp(opt, "stderr") == 0) {
        ossl_mem_report(stderr, OSSL_MEM_REPORT_TEXT);
        return;
    }
    char dest[sizeof om_g.opt.report + 32];
    size_t n = 0;
    for (const char *c = opt; *c && n + 24 < sizeof dest; c++) {
        if (c[0] == '%' && c[1] == 'p') {
            n += (size_t)snprintf(dest + n, sizeof dest - n, "%ld", (long)getpid());
            c++;
        } else {
            dest[n++] = *c;
        }
    }
    dest[n] = 0;
    FILE *out = fopen(dest, "w");
    if (!out) {
        om_msg("cannot write the exit report to %s: %s", dest, strerror(errno));
        return;
    }
    size_t len = strlen(dest);
    bool json = len > 5 && strcmp(dest + len - 5, ".json") == 0;
    ossl_mem_report(out, json ? OSSL_MEM_REPORT_JSON : OSSL_MEM_REPORT_TEXT);
    fclose(out);
}

/* A random key for header checks; falls back to weaker sources without getrandom. */
static uint64_t make_cookie(void)
{
    uint64_t c = 0;
    if (getrandom(&c, sizeof c, GRND_NONBLOCK) != (ssize_t)sizeof c) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        c = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() << 32 ^
            (uint64_t)(uintptr_t)&c;
    }
    return c | 1;
}

/* Reads cfg and the environment into om_g.opt. Returns 0 or OSSL_MEM_E_OPTIONS. */
static int load_options(const struct ossl_mem_config *cfg)
{
    om_opts_default(&om_g.opt);
    options_error[0] = 0;
    int rc = 0;
    if (cfg && cfg->options)
        rc = om_opts_parse(&om_g.opt, cfg->options, "the config options", options_error,
                           sizeof options_error);
    if (rc == 0 && !(cfg && (cfg->flags & OSSL_MEM_CFG_IGNORE_ENV))) {
        const char *env = secure_getenv("OSSL_MEM_OPTIONS");
        if (env)
            rc = om_opts_parse(&om_g.opt, env, "OSSL_MEM_OPTIONS", options_error,
                               sizeof options_error);
    }
    if (rc)
        om_msg("%s", options_error);
    return rc;
}

int ossl_mem_init(const struct ossl_mem_config *cfg)
{
    if (cfg && cfg->version != OSSL_MEM_CONFIG_VERSION)
        return OSSL_MEM_E_VERSION;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&init_state, &expect, 1))
        return OSSL_MEM_E_AGAIN;
    int rc = load_options(cfg);
    if (rc)
        goto fail;
    om_g.wipe_whole = om_g.opt.fill || om_g.opt.canary;

    /* Someone else's allocator, or OpenSSL already allocating: refuse before mapping anything. */
    CRYPTO_malloc_fn m;
    CRYPTO_realloc_fn r;
    CRYPTO_free_fn f;
    CRYPTO_get_mem_functions(&m, &r, &f);
    if (m != CRYPTO_malloc || r != CRYPTO_realloc || f != CRYPTO_free) {
        rc = OSSL_MEM_E_HOOKED;
        goto fail;
    }
    /* Setting the defaults again changes nothing but tells whether it is too late. */
    if (!CRYPTO_set_mem_functions(CRYPTO_malloc, CRYPTO_realloc, CRYPTO_free)) {
        rc = OSSL_MEM_E_TOO_LATE;
        goto fail;
    }

    om_g.cookie = make_cookie();
    om_g.hmul0 = 0x9E3779B97F4A7C15ull;
    om_g.hmul1 = 0xC2B2AE3D27D4EB4Full;
    om_g.hmask1 = 0xFF00FFFFFFFFull;
    om_g.state_key = (om_g.cookie * 0xBF58476D1CE4E5B9ull) | 1;
    om_g.site_key = ((om_g.cookie >> 17 | om_g.cookie << 47) * 0x94D049BB133111EBull) | 1;
    uint16_t live = om_mix16(OM_ST_LIVE, om_g.state_key), nosite = om_mix16(0, om_g.site_key);
    om_g.k_live = live ^ nosite;
    om_g.k_free_freed = live ^ om_mix16(OM_ST_FREED, om_g.state_key) ^ nosite;
    om_g.owner = 1;
    om_g.proc_id = 1;
    om_g.proc_slot = -1;
    om_g.my_pid = getpid();
    /* the private region reserves the arena's place right above itself (pool.c) */
    if ((rc = om_site_init()) || (rc = om_pool_init()) || (rc = om_large_init()) ||
        (rc = om_tc_init()) || (rc = om_arena_init(om_g.arena_at)) || (rc = om_dbg_init()))
        goto fail; /* mappings made so far stay: a process that cannot map 1 MiB is going down */
    om_locks_init();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (om_dbg_on() ? !CRYPTO_set_mem_functions(om_dbg_malloc, om_dbg_realloc, om_dbg_free)
                    : !CRYPTO_set_mem_functions(om_malloc_cb, om_realloc_cb, om_free_entry())) {
        rc = OSSL_MEM_E_TOO_LATE;
        goto fail;
    }
    om_g.locks_interposed = om_locks_check();
    if (om_g.arena && om_g.opt.shared_locks && !om_g.locks_interposed)
        om_msg("OpenSSL's locks cannot be made process-shared: its pthread_rwlock_* calls "
               "do not reach libossl_mem.so (link it as a shared library before libcrypto, or "
               "LD_PRELOAD it); shared scopes will be refused, private pools work");
    atexit(om_shared_exit);
    if (om_g.opt.report[0])
        atexit(exit_report);
    om_dbg_arm();
    om_g.ready = true;
    atomic_store(&init_state, 2);
    return 0;
fail:
    atomic_store(&init_state, 0);
    return rc;
}

int ossl_mem_tag_push(const char *tag)
{
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    struct om_tc *tc = om_tc_enter();
    int id = OSSL_MEM_E_LIMIT;
    if (tc->depth < OSSL_MEM_MAX_TAG_DEPTH)
        id = om_tag_id(tag);
    if (id >= 0) {
        tc->tags[tc->depth++] = (uint8_t)id;
        tc->tag = (uint8_t)id;
        tc->w1_tag = om_w1_tag(tc->tag);
    }
    om_tc_leave(tc);
    return id < 0 ? id : 0;
}

void ossl_mem_tag_pop(void)
{
    if (!om_g.ready)
        return;
    struct om_tc *tc = om_tc_enter();
    if (tc->depth > 0)
        tc->depth--;
    tc->tag = tc->depth ? tc->tags[tc->depth - 1] : 0;
    tc->w1_tag = om_w1_tag(tc->tag);
    om_tc_leave(tc);
}

int ossl_mem_get_stats(struct ossl_mem_stats *st)
{
    if (!st)
        return OSSL_MEM_E_INVAL;
    memset(st, 0, sizeof *st);
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    struct om_tstat sum;
    om_stats_sum(&sum, &st->quarantine_bytes, &st->quarantine_chunks, &st->threads);
    for (unsigned t = 0; t < OSSL_MEM_MAX_TAGS; t++)
        st->allocs += sum.tag_allocs[t];
    st->live_bytes = sum.live > 0 ? (uint64_t)sum.live : 0;
    st->live_chunks = st->allocs > sum.frees ? st->allocs - sum.frees : 0;
    int64_t peak = atomic_load(&om_g.peak);
    st->peak_bytes = (uint64_t)(peak > sum.live ? peak : sum.live);
    st->frees = sum.frees;
    st->reallocs = sum.reallocs;
    st->failed_allocs = sum.failed;
    st->double_frees = om_g.faults[OM_F_DOUBLE_FREE] + om_g.faults[OM_F_DOUBLE_REALLOC];
    st->invalid_frees = om_g.faults[OM_F_INVALID_FREE] + om_g.faults[OM_F_INVALID_REALLOC];
    st->uaf_writes = om_g.faults[OM_F_UAF_WRITE];
    st->overflows = om_g.faults[OM_F_OVERFLOW];
    om_dbg_stats(st);
    st->corrupt_headers = om_g.faults[OM_F_CORRUPT];
    st->private_mapped = om_pool_mapped() + atomic_load(&om_g.large_mapped);
    st->large_chunks = atomic_load(&om_g.large_live);
    st->hooks_replaced = !om_hooks_ours();
    st->inherited_frees = om_g.faults[OM_F_INHERITED];
    st->shared_reclaimed = atomic_load(&om_g.shared_reclaimed);
    st->lock_inits_shared = atomic_load(&om_lock_inits_shared);
    om_arena_stats(st);
    return 0;
}

