/* om.h - private types, invariants and inline helpers shared by every ossl_mem source file. */
#ifndef OM_H
#define OM_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>

#include "ossl_mem.h"

#define OM_LIKELY(x)   __builtin_expect(!!(x), 1)
#define OM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define OM_HIDDEN      __attribute__((visibility("hidden")))
#define OM_COLD        __attribute__((cold, noinline))

/*
 * Assertions. OM_ASSERT guards memory safety and is always on: it reports
 * through om_die() (no allocation, one line) and aborts. OM_DASSERT is for
 * expensive checks and exists only in --enable-debug builds.
 */
#define OM_ASSERT(c) \
    do { if (OM_UNLIKELY(!(c))) om_die(__FILE__, __LINE__, #c); } while (0)
#ifdef OM_DEBUG
#define OM_DASSERT(c) OM_ASSERT(c)
#else
#define OM_DASSERT(c) ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* Chunk header                                                        */
/* ------------------------------------------------------------------ */

/*
 * Every chunk, private or large, starts with this 16-byte header; the user
 * pointer is the address right after it and is 16-byte aligned.
 *
 *   0        4        6        8        10   11   12   13   14       16
 *   +--------+--------+--------+--------+----+----+----+----+--------+----------
 *   | size   | asite  | fsite  | owner  |cls |tag |st  |flg | check  | user ...
 *   +--------+--------+--------+--------+----+----+----+----+--------+----------
 *
 * <check> is a 16-bit hash of the other 14 bytes, of the header's address
 * and of a random per-process cookie: it is the header's keyed magic, so a
 * header overwritten by a stray write, or 16 bytes of user data in front of
 * an interior pointer, is detected instead of trusted.
 */
struct om_chunk {
    uint32_t size;      /* requested bytes (UINT32_MAX: see the large table) */
    uint16_t asite;     /* site of the allocation (or last realloc) */
    uint16_t fsite;     /* site of the last free (0 if never freed) */
    uint16_t owner;     /* owner: process generation that allocated it */
    uint8_t  cls;       /* size class, or OM_CLS_LARGE */
    uint8_t  tag;       /* pool tag index */
    uint8_t  state;     /* OM_ST_* */
    uint8_t  flags;     /* OM_CF_* */
    uint16_t check;     /* keyed checksum of the above */
};
_Static_assert(sizeof(struct om_chunk) == 16, "chunk header must be 16 bytes");

#define OM_HDR          ((size_t)sizeof(struct om_chunk))
#define OM_ALIGN        16

/*
 * Chunk states: distinctive byte values, never 0 (0 = never handed out).
 * A chunk is freed from the moment it is released, whether it is still in
 * the quarantine or already in a cache: leaving the quarantine does not
 * touch the chunk (the ring says which chunks are in it).
 */
#define OM_ST_LIVE      0xA5
#define OM_ST_FREED     0xF4

#define OM_CLS_LARGE    0xFE

/* ------------------------------------------------------------------ */
/* Size classes and segments                                           */
/* ------------------------------------------------------------------ */

#define OM_NCLS         40              /* small classes: 16 B .. 32 KiB */
#define OM_SMALL_MAX    32768           /* larger requests get their own mapping */
#define OM_MAX_REQUEST  ((size_t)1 << 40) /* anything larger fails with ENOMEM */

#define OM_SEG_SHIFT    22              /* 4 MiB segments, aligned to their size */
#define OM_SEG_SIZE     ((size_t)1 << OM_SEG_SHIFT)
#define OM_SLOT_SHIFT   16              /* divided into 64 slots of 64 KiB */
#define OM_SLOT_SIZE    ((size_t)1 << OM_SLOT_SHIFT)
#define OM_NSLOTS       (OM_SEG_SIZE / OM_SLOT_SIZE)
#define OM_SLOT_NONE    0xFF

/*
 * A segment's first slot holds this header; every other slot belongs to a
 * run (one or more consecutive slots) of one size class. Runs are carved in
 * order and never change class, so a pointer's run, class and chunk index
 * can be computed without touching the chunk itself.
 */
struct om_seg {
    uint8_t slot_cls[OM_NSLOTS];    /* class of the run covering each slot, OM_SLOT_NONE if free */
    uint8_t slot_first[OM_NSLOTS];  /* first slot of that run */
    uint32_t next_slot;             /* next uncarved slot */
};

/* Per-class constants, filled once by om_pool_init(). */
struct om_class {
    uint32_t size;      /* usable bytes */
    uint32_t stride;    /* size + header */
    uint32_t nchunks;   /* chunks in one run */
    uint32_t nslots;    /* slots in one run */
    uint32_t tc_cap;    /* thread-cache capacity */
    uint64_t recip;     /* ceil(2^40 / stride): exact division for offsets in a run */
};

/*
 * Central free store of one size class, shared by the process's threads.
 * Free chunks are kept by address in <stack>, so that moving them between
 * a thread cache and this store never touches the chunks themselves: a
 * chunk that left the quarantine is cold, and linking it through its own
 * memory cost one cache miss to put it here and another to take it back.
 * <list>, linked through the chunks' first user word, takes the chunks the
 * stack cannot hold when it cannot grow (the system refused memory).
 */
struct om_central {
    pthread_mutex_t lock;   /* protects everything below */
    struct om_chunk **stack; /* free chunks, most recently put last (mapped, grows by doubling) */
    uint32_t n;             /* entries in <stack> */
    uint32_t cap;           /* capacity of <stack> */
    struct om_chunk *list;  /* overflow free chunks, linked through their first user word */
    char *bump;             /* next uncarved chunk of the current run */
    char *bump_end;         /* end of the current run */
} __attribute__((aligned(64)));

/* ------------------------------------------------------------------ */
/* Sites and tags                                                      */
/* ------------------------------------------------------------------ */

#define OM_NSITES       65536
#define OM_SITES_HOT_SHIFT 12   /* a site's first slot is among the table's first 4096 */
#define OM_SITE_NONE    0   /* file NULL and line 0, or nothing recorded */
#define OM_SITE_OTHER   1   /* table full or unencodable file:line */

/* ------------------------------------------------------------------ */
/* Thread caches and statistics                                        */
/* ------------------------------------------------------------------ */

#define OM_TC_CAP       64

/*
 * Counters owned by one thread (written by it alone, read by any). Per-tag
 * live figures are not counted here but found by walking the headers
 * (every header names its tag), which keeps the hot path to three counters.
 */
struct om_tstat {
    /* the fields every call touches first: with the thread cache's flags they fill one cache line */
    uint64_t frees;                         /* chunks released */
    int64_t live;                           /* this thread's share of live requested bytes */
    int64_t flushed;                        /* part of <live> already added to om_g.live */
    uint64_t reallocs;                      /* realloc calls */
    uint64_t failed;                        /* allocations that returned NULL */
    uint64_t tag_allocs[OSSL_MEM_MAX_TAGS]; /* chunks created per tag (tag 0 first: in that line) */
};

/* Per-thread quarantine: a FIFO ring of freed chunks, bounded in bytes. */
struct om_quar {
    uint64_t *ring;         /* chunk address | class << 48; mapped on first use */
    uint32_t head;          /* oldest entry */
    uint32_t tail;          /* next free entry */
    uint32_t mask;          /* ring size - 1 */
    size_t bytes;           /* usable bytes held */
};

/* Cached chunks of one class in a thread cache, and the cache's capacity for the class. */
struct om_tcc {
    uint16_t n;                             /* cached chunks */
    uint16_t cap;                           /* capacity (om_cls[].tc_cap) */
};

/*
 * A thread's cache. Its first cache line holds everything a malloc or a
 * free touches besides its class's count and slot: the flags, the tag and
 * the hot counters (tag 0's allocations included).
 */
struct om_tc {
    uint8_t busy;                           /* 1 while the thread changes allocator state (fork waits) */
    uint8_t tag;                            /* current tag (top of stack) */
    uint8_t shared_depth;                   /* nesting of ossl_mem_shared_begin() */
    bool orphan;                            /* the shared fallback cache (under om_g.orphan_lock) */
    uint8_t depth;                          /* tag stack depth */
    uint8_t shared_set;                     /* set id of the outermost open shared scope */
    uint8_t reclaiming;                     /* destroying a shared context: frees of shared chunks are performed */
    uint64_t w1_tag;                        /* om_w1_tag(tag): the tag's part of a new header's second word */
    struct om_tstat st;                     /* this thread's counters */
    struct om_tcc cc[OM_NCLS];              /* per class: cached chunks and capacity */
    struct om_quar quar;                    /* quarantine */
    uint8_t tags[OSSL_MEM_MAX_TAG_DEPTH];   /* tag stack */
    pthread_t thread;                       /* owning thread */
    struct om_tc *next, *prev;              /* om_g.threads list */
    struct om_chunk *slot[OM_NCLS][OM_TC_CAP] __attribute__((aligned(64))); /* cached free chunks */
} __attribute__((aligned(64)));

/* ------------------------------------------------------------------ */
/* Options and global state                                            */
/* ------------------------------------------------------------------ */

enum om_policy { OM_POLICY_REPORT = 0, OM_POLICY_ABORT, OM_POLICY_IGNORE };

struct om_opts {
    size_t quarantine;      /* bytes held back per thread */
    size_t quarantine_over; /* only chunks requested with more bytes than this enter it */
    bool zero;              /* wipe chunks on free */
    enum om_policy policy;  /* what a detected error does */
    char report[256];       /* "" none, "stderr", or a file name: report at exit */
    size_t reserve;         /* private address space to reserve */
    size_t shared;          /* bytes of the shared arena (0: none) */
    bool shared_locks;      /* make OpenSSL's locks in the arena process-shared */
    bool robust_locks;      /* ... and robust: a dead holder's lock is recovered (locks.c) */
    bool shared_prepare;    /* warm-up before the first scope, lazy fill at registration */
    /* debugging options: any of them installs the checking entry points (debug.c) */
    bool poison;            /* fill new chunks with <poison_byte> */
    uint8_t poison_byte;
    bool fill;              /* pattern on free, verified at reuse and by ossl_mem_check */
    bool canary;            /* keyed bytes after the requested size */
    bool caller;            /* record OpenSSL's allocation and free sites (default on) */
    bool fail_set;          /* a fail= option was given: failure injection is armed */
    uint64_t fail_nth;      /* fail this allocation call (1: the first), 0: none */
    uint64_t fail_one_in;   /* fail one call in this many, at random, 0: none */
    uint64_t seed;          /* seed of fail=1/N */
    size_t limit;           /* most live private bytes, 0: none */
    size_t check_every;     /* run ossl_mem_check() every this many operations, 0: never */
    unsigned ntag_limits;
    struct om_tag_limit {
        char tag[OSSL_MEM_TAG_NAME_MAX + 1];
        size_t bytes;
    } tag_limits[8];        /* tag-limit=TAG:SIZE */
};

/* Fault kinds, each with its counter. */
enum om_fault {
    OM_F_DOUBLE_FREE = 0,   /* free of a freed chunk */
    OM_F_DOUBLE_REALLOC,    /* realloc of a freed chunk */
    OM_F_INVALID_FREE,      /* free of a pointer that is not a chunk of ours */
    OM_F_INVALID_REALLOC,   /* realloc of such a pointer */
    OM_F_CORRUPT,           /* header failed its check */
    OM_F_UAF_WRITE,         /* freed chunk was written to */
    OM_F_HOOKS,             /* our OpenSSL hooks were replaced */
    OM_F_INHERITED,         /* free of a shared chunk by a non-owner outside a scope: refused */
    OM_F_CROSS_POOL,        /* a shared chunk points into private memory others cannot see */
    OM_F_OVERFLOW,          /* the canary after a chunk's requested size was overwritten */
    OM_F_COUNT
};

struct __attribute__((aligned(64))) om_global {
    /* first two cache lines: what the malloc and free fast paths read (with opt, below) */
    uint8_t gate;                   /* OM_GATE_*: any bit sends om_op_begin() to its slow path */
    uint16_t k_live;                /* state and free-site part of a live header's check */
    uint16_t k_free_freed;          /* check change of a free: live -> freed, no free site */
    uint16_t owner;                 /* generation of this process's private chunks (new at each fork, both sides) */
    uint64_t cookie;                /* random key of header checks */
    uint64_t site_key;              /* odd key mixing the free site into the check */
    uint64_t hmul0, hmul1;          /* multipliers of the check's hash (memory operands, not immediates) */
    uint64_t hmask1;                /* the fields of a header's second word that om_check_base() covers */
    uint64_t site_mul;              /* multiplier of the site table's hash */
    _Atomic uint64_t *sites;        /* OM_NSITES keys: file pointer | line << 47 */
    uintptr_t fast_lo;              /* region + OM_SLOT_SIZE: the first possible chunk start */
    _Atomic size_t fast_len;        /* region_used - OM_SLOT_SIZE: committed bytes from fast_lo */
    struct om_opts opt;             /* parsed options (quarantine and quarantine_over first: hot) */

    bool ready;                     /* ossl_mem_init() succeeded */
    uint64_t state_key;             /* odd key mixing the state into the check */
    uint16_t proc_id;               /* this process's identity: owner of its shared chunks */
    int proc_slot;                  /* its slot in the arena's process table (-1: none) */
    bool forked;                    /* this process forked, or was forked, since init */
    bool wipe_whole;                /* fill or canary: free scrubs the whole usable size, not the requested bytes */
    pid_t my_pid;                   /* getpid(), kept current by the fork handler */
    _Atomic uint64_t shared_reclaimed; /* arena chunks released by context destruction */
    bool locks_interposed;          /* pthread_rwlock_init/pthread_mutex_init reach us from libcrypto */
    struct om_arena *arena;         /* the shared arena, NULL when there is none */
    char *arena_lo, *arena_hi;      /* chunk area of the arena: [lo, hi) */

    /* private region: reserved once, segments committed in order */
    char *region;                   /* base, OM_SEG_SIZE aligned */
    size_t region_size;             /* reserved bytes */
    char *arena_at;                 /* where the arena goes: reserved right above the region */
    _Atomic size_t region_used;     /* committed bytes (whole segments) */
    pthread_mutex_t seg_lock;       /* carving of segments and runs */
    struct om_seg *cur_seg;         /* segment being carved */

    struct om_central central[OM_NCLS];

    /* threads */
    pthread_key_t key;              /* destructor returns a thread's cache */
    pthread_mutex_t threads_lock;   /* protects the list and <retired> */
    struct om_tc *threads;          /* live caches, orphan included */
    struct om_tstat retired;        /* counters of exited threads */
    pthread_mutex_t orphan_lock;    /* serialises use of <orphan> */
    struct om_tc *orphan;           /* cache for threads past their destructor */

    /* statistics kept globally */
    _Atomic int64_t live;           /* flushed live bytes */
    _Atomic int64_t peak;           /* highest flushed live bytes */
    _Atomic uint64_t faults[OM_F_COUNT];
    _Atomic uint64_t large_mapped;  /* bytes in large mappings */
    _Atomic uint64_t large_live;    /* live large chunks */

    /* sites and tags */
    pthread_mutex_t tags_lock;      /* protects tag creation */
    _Atomic unsigned ntags;         /* tags in use */
    char tag_names[OSSL_MEM_MAX_TAGS][OSSL_MEM_TAG_NAME_MAX + 1];

    /* error reporting: one message per (fault, site) */
    _Atomic uint64_t reported[OM_F_COUNT][OM_NSITES / 64];
};

OM_HIDDEN extern struct om_global om_g;
OM_HIDDEN extern struct om_class om_cls[OM_NCLS];
OM_HIDDEN extern uint8_t om_cls_small[OM_SMALL_MAX / 16 + 1]; /* by (size + 15) >> 4: one load, no branch */
extern __thread struct om_tc *om_tls_tc __attribute__((tls_model("initial-exec")));

#define OM_TC_DEAD ((struct om_tc *)1)

#define OM_GATE_FORKING 0x1 /* the fork prepare handler runs: new operations wait */
#define OM_GATE_FENCE   0x2 /* no membarrier(2): each operation fences itself */

/* ------------------------------------------------------------------ */
/* The shared arena                                                    */
/* ------------------------------------------------------------------ */

/*
 * One anonymous MAP_SHARED mapping made by ossl_mem_init(), seen at the same
 * address by every process forked later. It starts with this control
 * block, then a bitmap with one bit per 16 bytes of the chunk area (set at
 * every chunk header ever carved: a pointer is a chunk start exactly when
 * the bit before it is set), then the chunk area. Chunks have the private
 * pools' header; their owner field is the allocating process's id and their
 * flags byte the id of the shared scope (set) that made them. Small chunks
 * use the private classes; larger ones take whole pages and keep their
 * usable size in the 16 bytes before the header. Freed chunks go to FIFO
 * lists per class, which delays their reuse like a quarantine.
 * Everything here is protected by <lock>, a robust process-shared mutex.
 */
#define OM_MAXPROC      4096    /* processes that can use the arena at once */
#define OM_MAXCTX       64      /* registered shared contexts */

/* A process of the tree that uses the arena (pid 0: free slot). */
struct om_proc {
    pid_t pid;
    uint16_t id;                /* its process id for chunk ownership */
};

enum om_sctx_state { OM_SCTX_FREE = 0, OM_SCTX_ACTIVE, OM_SCTX_RETIRED };

/* A registered shared SSL_CTX. */
struct om_sctx {
    struct ssl_ctx_st *ctx;
    uint8_t state;              /* enum om_sctx_state */
    uint8_t set;                /* shared scope that built it */
    uint16_t owner_id;          /* owner's process id */
    int32_t owner_slot;         /* owner's process slot */
    uint32_t refoff;            /* offset of OpenSSL's reference count in the context */
    _Atomic uint32_t locks_recovered; /* locks of its scope recovered from a dead holder */
    uint64_t holders[OM_MAXPROC / 64]; /* process slots that may still use it */
};

struct om_arena {
    uint64_t magic;
    pthread_mutex_t lock;       /* robust, process-shared: protects everything below */
    pid_t holder;               /* pid holding <lock> (for repair messages) */
    size_t map_size;            /* bytes of the mapping */
    size_t cap;                 /* bytes of the chunk area */
    size_t bump;                /* carved bytes of the chunk area */
    uint64_t used;              /* bytes (header included) of live chunks */
    uint64_t peak;              /* highest <used> */
    uint64_t live_chunks;
    uint64_t freel_head[OM_NCLS], freel_tail[OM_NCLS]; /* FIFO free lists: offsets + 1, 0 none */
    uint64_t large_free;        /* free large chunks: offset + 1 of the first, 0 none */
    _Atomic uint64_t failed;    /* allocations refused: arena full */
    _Atomic uint64_t repairs;   /* abandoned locks repaired */
    _Atomic uint64_t locks_recovered; /* OpenSSL locks of the arena recovered from a dead holder */
    _Atomic uint32_t next_id;   /* process ids and private generations */
    uint8_t next_set;           /* shared scope ids */
    uint16_t pending[256];      /* per set: id of the process that must reclaim what is left of it
                                   (its contexts are gone, some chunks were still referenced), or 0 */
    struct om_proc procs[OM_MAXPROC];
    struct om_sctx ctxs[OM_MAXCTX];
    pid_t id_pid[65536];        /* process id -> pid, for reports */
};


/* ------------------------------------------------------------------ */
/* Inline helpers                                                      */
/* ------------------------------------------------------------------ */

/* Size class of a request of <size> <= OM_SMALL_MAX bytes. */
static inline unsigned om_size_class(size_t size)
{
    return om_cls_small[(size + 15) >> 4];
}

/* A keyed 16-bit mix of a small field value. */
static inline uint16_t om_mix16(uint64_t v, uint64_t key)
{
    return (uint16_t)(((v + 1) * key) >> 48);
}

/* The part of the check that covers everything but the state and the free site. */
static inline uint16_t om_check_base(const struct om_chunk *h, uint64_t w0, uint64_t w1)
{
    uint64_t x = ((w0 << 16) ^ om_g.cookie) * om_g.hmul0; /* the free site left out */
    x ^= ((w1 & om_g.hmask1) + (uint64_t)(uintptr_t)h) * om_g.hmul1; /* state and check left out */
    return (uint16_t)(x >> 48);
}

/*
 * The 16-bit keyed check of header <h> whose other fields are in <w0>,
 * <w1>: a keyed multiplicative hash of the fields, the header's address and
 * the cookie, XORed with keyed mixes of the state and the free site so that
 * the free path can change those two by XOR (om_hdr_restate) instead of
 * rehashing. A live header always has free site 0, so its check is
 * om_check_base() ^ om_g.k_live.
 */
static inline uint16_t om_check16(const struct om_chunk *h, uint64_t w0, uint64_t w1)
{
    return om_check_base(h, w0, w1) ^ om_mix16((w1 >> 32) & 0xFF, om_g.state_key) ^
           om_mix16(w0 >> 48, om_g.site_key);
}

/* Reads the two words of a header. */
static inline void om_hdr_load(const struct om_chunk *h, uint64_t *w0, uint64_t *w1)
{
    memcpy(w0, h, 8);
    memcpy(w1, (const char *)h + 8, 8);
}

/* Whether the check in words <w0>, <w1> of header <h> is right. */
static inline bool om_hdr_valid(const struct om_chunk *h, uint64_t w0, uint64_t w1)
{
    return (uint16_t)(w1 >> 48) == om_check16(h, w0, w1);
}

/* Writes the header of a chunk being handed out (state live, no free site) with <flags>. */
static inline void om_hdr_store_live_f(struct om_chunk *h, uint32_t size, uint16_t asite,
                                       uint16_t owner, uint8_t cls, uint8_t tag, uint8_t flags)
{
    uint64_t w0 = (uint64_t)size | (uint64_t)asite << 32;
    uint64_t w1 = (uint64_t)owner | (uint64_t)cls << 16 | (uint64_t)tag << 24 |
                  (uint64_t)OM_ST_LIVE << 32 | (uint64_t)flags << 40;
    w1 |= (uint64_t)(uint16_t)(om_check_base(h, w0, w1) ^ om_g.k_live) << 48;
    memcpy(h, &w0, 8);
    memcpy((char *)h + 8, &w1, 8);
}

/* The tag's and the live state's part of the second word of a new chunk's header. */
static inline uint64_t om_w1_tag(uint8_t tag)
{
    return (uint64_t)tag << 24 | (uint64_t)OM_ST_LIVE << 32;
}

/*
 * Writes the header of a private chunk being handed out, from its second
 * word without the check, <w1> (owner, class, tag, state live, no flags).
 */
static inline void om_hdr_store_live_w1(struct om_chunk *h, uint32_t size, uint16_t asite,
                                        uint64_t w1)
{
    uint64_t w0 = (uint64_t)size | (uint64_t)asite << 32;
    w1 |= (uint64_t)(uint16_t)(om_check_base(h, w0, w1) ^ om_g.k_live) << 48;
    memcpy(h, &w0, 8);
    memcpy((char *)h + 8, &w1, 8);
}

/* Writes the header of a private chunk being handed out. */
static inline void om_hdr_store_live(struct om_chunk *h, uint32_t size, uint16_t asite,
                                     uint16_t owner, uint8_t cls, uint8_t tag)
{
    om_hdr_store_live_f(h, size, asite, owner, cls, tag, 0);
}

/* Whether <p> lies in the shared arena's chunk area. */
static inline bool om_in_arena(const void *p)
{
    return (uintptr_t)p - (uintptr_t)om_g.arena_lo < (uintptr_t)(om_g.arena_hi - om_g.arena_lo);
}

/*
 * Moves valid header <h> to <state> with free site <fsite>, updating its
 * check by XOR instead of a full rehash (the free path's hot spot).
 */
static inline void om_hdr_restate(struct om_chunk *h, uint8_t state, uint16_t fsite)
{
    h->check ^= om_mix16(h->state, om_g.state_key) ^ om_mix16(state, om_g.state_key) ^
                om_mix16(h->fsite, om_g.site_key) ^ om_mix16(fsite, om_g.site_key);
    h->state = state;
    h->fsite = fsite;
}

/* Rewrites the check after fields of <h> were changed in place. */
static inline void om_hdr_seal(struct om_chunk *h)
{
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    h->check = om_check16(h, w0, w1);
}

static inline void *om_user(struct om_chunk *h) { return h + 1; }
static inline struct om_chunk *om_hdr(const void *p) { return (struct om_chunk *)p - 1; }

/*
 * The free fast path's test, shared by router.c and debug.c: <p> is 16-aligned,
 * lies in the private region's committed segments (the first segment is
 * committed at init, so any pointer in [region + one slot, region + used)
 * has a committed header), and its header is live with a free site of 0
 * and passes its keyed check, which covers the header's address. Returns
 * the header with its two words in *w0, *w1, or NULL (then the slow path
 * classifies the pointer).
 */
static inline struct om_chunk *om_live_small_hdr(const void *p, uint64_t *w0, uint64_t *w1)
{
    uintptr_t a = (uintptr_t)p;
    if (OM_UNLIKELY((a & 15) != 0 ||
                    a - om_g.fast_lo >= atomic_load_explicit(&om_g.fast_len, memory_order_relaxed)))
        return NULL;
    struct om_chunk *h = om_hdr(p);
    om_hdr_load(h, w0, w1);
    if (OM_UNLIKELY((uint8_t)(*w1 >> 32) != OM_ST_LIVE ||
                    (uint16_t)(*w1 >> 48) != (om_check_base(h, *w0, *w1) ^ om_g.k_live)))
        return NULL;
    return h;
}

/* Class of the run that holds chunk <h> (a chunk of the private region). */
static inline unsigned om_run_class(const struct om_chunk *h)
{
    const struct om_seg *s = (const struct om_seg *)((uintptr_t)h & ~(uintptr_t)(OM_SEG_SIZE - 1));
    return s->slot_cls[((uintptr_t)h - (uintptr_t)s) >> OM_SLOT_SHIFT];
}

/* 16 bytes, stored with one instruction where the machine has 16-byte registers. */
typedef uint64_t om_v16 __attribute__((vector_size(16), may_alias));

/*
 * Zeroes <n> bytes (a multiple of 16) at 16-aligned <p>, which has at least
 * max(n, 16) usable bytes: a few 16-byte stores up to 128 bytes,
 * overlapping when <n> is not a power of two (n == 0 stores the first 16
 * bytes, zero already), and a loop of 64 bytes per turn beyond. Not memset:
 * its calls cost registers on the free fast path, and for 2 KiB and more it
 * is a rep stosb, which valgrind counts as one instruction per byte.
 */
static inline __attribute__((always_inline)) void om_wipe(void *p, size_t n)
{
    char *c = p;
    const om_v16 z = {0, 0};
    if (n <= 32) {
        *(om_v16 *)c = z;
        *(om_v16 *)(c + (n > 16 ? 16 : 0)) = z;
    } else if (n <= 64) {
        *(om_v16 *)c = z;
        *(om_v16 *)(c + 16) = z;
        *(om_v16 *)(c + n - 32) = z;
        *(om_v16 *)(c + n - 16) = z;
    } else {
        char *end = c + n - 64;
        for (; c < end; c += 64) {
            *(om_v16 *)c = z;
            *(om_v16 *)(c + 16) = z;
            *(om_v16 *)(c + 32) = z;
            *(om_v16 *)(c + 48) = z;
        }
        *(om_v16 *)end = z;
        *(om_v16 *)(end + 16) = z;
        *(om_v16 *)(end + 32) = z;
        *(om_v16 *)(end + 48) = z;
    }
    __asm__ volatile("" : : "r"(p) : "memory"); /* the wipe must not be optimised away */
}

/* Zeroes <n> bytes at <p>, any alignment: the part of a chunk a shrinking realloc gives up. */
static inline void om_wipe_tail(void *p, size_t n)
{
    memset(p, 0, n);
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* The pattern the fill option writes over freed chunks. */
#define OM_FILL_BYTE 0xDF
#define OM_FILL_WORD 0xDFDFDFDFDFDFDFDFull

/*
 * Scrubs the <n> usable bytes of a chunk being freed (a multiple of 16):
 * zeros, or the fill pattern with the fill option (which sets zero too).
 */
static inline void om_scrub(void *p, size_t n)
{
    if (OM_UNLIKELY(om_g.opt.fill)) {
        if (n <= 128) {
            uint64_t *q = p;
            for (size_t i = 0; i < n / 8; i += 2) {
                q[i] = OM_FILL_WORD;
                q[i + 1] = OM_FILL_WORD;
            }
        } else {
            memset(p, OM_FILL_BYTE, n);
        }
        __asm__ volatile("" : : "r"(p) : "memory");
    } else {
        om_wipe(p, n);
    }
}

/*
 * Maps <len> zeroed bytes of our own metadata (MAP_SHARED when <shared>, so
 * that the mapping is seen by every process forked later). Returns NULL
 * when the system refuses; errno is left as it was.
 */
static inline void *om_map(size_t len, bool shared)
{
    int saved = errno;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    errno = saved;
    return m == MAP_FAILED ? NULL : m;
}

/*
 * Relaxed add to a counter that only the calling thread writes (others may
 * read it at any time). On x86-64 one add to memory, which is what a relaxed
 * load and store of an aligned word amount to there, in one instruction.
 */
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define OM_CTR_ADD(c, v) __asm__("addq %1, %0" : "+m"(c) : "er"((uint64_t)(v)))
#else
#define OM_CTR_ADD(c, v) \
    __atomic_store_n(&(c), __atomic_load_n(&(c), __ATOMIC_RELAXED) + (v), __ATOMIC_RELAXED)
#endif
#define OM_CTR_GET(c) __atomic_load_n(&(c), __ATOMIC_RELAXED)
#define OM_CTR_SET(c, v) __atomic_store_n(&(c), (v), __ATOMIC_RELAXED)

/* ------------------------------------------------------------------ */
/* Internal functions (om_ prefix: shared between files, never exported) */
/* ------------------------------------------------------------------ */

/* fault.c */
OM_HIDDEN void om_die(const char *file, int line, const char *what) __attribute__((noreturn));
OM_HIDDEN void om_fault(enum om_fault f, const void *p, const struct om_chunk *h,
                        const char *file, int line, const char *detail);
OM_HIDDEN void om_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
OM_HIDDEN const char *om_site_str(uint16_t site, char *buf, size_t len);

/* options.c */
OM_HIDDEN void om_opts_default(struct om_opts *o);
OM_HIDDEN int om_opts_parse(struct om_opts *o, const char *s, const char *origin, char *err,
                            size_t errlen);

/* site.c */
OM_HIDDEN int om_site_init(void);
OM_HIDDEN uint16_t om_site_id_slow(const char *file, int line);
OM_HIDDEN bool om_site_get(uint16_t id, const char **file, int *line);
OM_HIDDEN int om_tag_id(const char *name);

/* pool.c */
OM_HIDDEN int om_pool_init(void);
OM_HIDDEN void *om_pool_alloc(struct om_tc *tc, size_t size, uint16_t site, uint8_t tag);
OM_HIDDEN struct om_chunk *om_pool_find(const void *p, const char **why);
OM_HIDDEN struct om_chunk *om_pool_containing(uintptr_t a);
OM_HIDDEN void om_central_put(unsigned cls, struct om_chunk **v, unsigned n);
OM_HIDDEN size_t om_pool_mapped(void);
typedef void (*om_chunk_fn)(struct om_chunk *h, size_t usable, void *arg);
OM_HIDDEN void om_pool_walk(om_chunk_fn fn, void *arg);
OM_HIDDEN void om_pool_fork_prepare(void);
OM_HIDDEN void om_pool_fork_parent(void);
OM_HIDDEN void om_pool_fork_child(void);

/* large.c */
OM_HIDDEN int om_large_init(void);
OM_HIDDEN void *om_large_alloc(struct om_tc *tc, size_t size, uint16_t site, uint8_t tag);
OM_HIDDEN int om_large_find(const void *p, struct om_chunk **hp, size_t *size, size_t *cap);
OM_HIDDEN void om_large_resize(struct om_chunk *h, size_t size);
OM_HIDDEN void om_large_free(struct om_tc *tc, struct om_chunk *h, uint16_t fsite);
OM_HIDDEN void om_large_walk(om_chunk_fn fn, void *arg);
OM_HIDDEN void om_large_fork_prepare(void);
OM_HIDDEN void om_large_fork_parent(void);
OM_HIDDEN void om_large_fork_child(void);

/* tc.c */
OM_HIDDEN int om_tc_init(void);
OM_HIDDEN struct om_tc *om_tc_enter_slow(void);
OM_HIDDEN void om_tc_flush_class(struct om_tc *tc, unsigned cls, unsigned keep);
OM_HIDDEN void om_tc_refill(struct om_tc *tc, unsigned cls);
OM_HIDDEN bool om_quar_init(struct om_tc *tc);
OM_HIDDEN void om_quar_drain(struct om_tc *tc);
OM_HIDDEN void om_stat_flush(struct om_tc *tc);
OM_HIDDEN void om_op_wait(struct om_tc *tc);
OM_HIDDEN void om_tc_fork_prepare(void);
OM_HIDDEN void om_tc_fork_parent(void);
OM_HIDDEN void om_tc_fork_child(void);

OM_HIDDEN void om_tag_walk(uint64_t bytes[OSSL_MEM_MAX_TAGS], uint64_t chunks[OSSL_MEM_MAX_TAGS]);
OM_HIDDEN void om_stats_sum(struct om_tstat *sum, uint64_t *qbytes, uint64_t *qchunks,
                           uint64_t *threads);

/* router.c */
OM_HIDDEN void *om_malloc_cb(size_t n, const char *file, int line);
OM_HIDDEN void *om_realloc_cb(void *p, size_t n, const char *file, int line);
OM_HIDDEN void om_free_cb(void *p, const char *file, int line);
OM_HIDDEN void (*om_free_entry(void))(void *p, const char *file, int line);

/* check.c */
OM_HIDDEN bool om_hooks_ours(void);

/* A live chunk found by om_chunk_live(). */
struct om_live {
    struct om_chunk *h;     /* its header */
    size_t size;            /* requested bytes */
    size_t cap;             /* usable bytes */
    bool shared;            /* in the shared arena */
};
OM_HIDDEN bool om_chunk_live(const void *p, struct om_live *c);

/* debug.c: the checking entry points */
OM_HIDDEN bool om_dbg_wanted(const struct om_opts *o);
OM_HIDDEN int om_dbg_init(void);
OM_HIDDEN bool om_dbg_on(void);
OM_HIDDEN void om_dbg_arm(void);
OM_HIDDEN void om_dbg_stats(struct ossl_mem_stats *st);
OM_HIDDEN void *om_dbg_malloc(size_t n, const char *file, int line);
OM_HIDDEN void *om_dbg_realloc(void *p, size_t n, const char *file, int line);
OM_HIDDEN void om_dbg_free(void *p, const char *file, int line);
OM_HIDDEN bool om_canary_intact(const void *user, size_t size, size_t cap);
OM_HIDDEN bool om_freed_intact(const struct om_chunk *h, size_t usable);

/* arena.c: the shared arena (allocator, robust lock, process table) */
OM_HIDDEN size_t om_arena_map_size(void);
OM_HIDDEN int om_arena_init(void *at);
OM_HIDDEN void *om_arena_alloc(size_t size, uint16_t site, uint8_t tag, uint8_t set,
                               uint16_t owner);
OM_HIDDEN struct om_chunk *om_arena_find(const void *p, const char **why, size_t *cap);
OM_HIDDEN void om_arena_free(struct om_chunk *h, uint16_t fsite);
OM_HIDDEN void om_arena_walk(om_chunk_fn fn, void *arg);
OM_HIDDEN void om_arena_lock(void);
OM_HIDDEN void om_arena_unlock(void);
OM_HIDDEN uint8_t om_arena_new_set(void);
OM_HIDDEN uint16_t om_arena_new_id(void);
OM_HIDDEN pid_t om_arena_id_pid(uint16_t id);
OM_HIDDEN void om_arena_fork_child(void);
OM_HIDDEN void om_arena_stats(struct ossl_mem_stats *st);
OM_HIDDEN bool om_site_private(uint16_t site);
OM_HIDDEN const struct om_chunk *om_arena_chunk_at(const void *p);

/* shared.c: scopes, warm-up, shared contexts, reclamation */
OM_HIDDEN void om_shared_fork_child(void);
OM_HIDDEN void om_shared_exit(void);
OM_HIDDEN int om_shared_reclaim_locked(void);

/* locks.c: process-shared OpenSSL locks */
OM_HIDDEN bool om_locks_check(void);
OM_HIDDEN void om_locks_init(void);
OM_HIDDEN extern _Atomic uint64_t om_lock_inits_shared;

/*
 * The id of OpenSSL site <file>:<line> if the shared site table holds it at
 * its first probe (the common case) or the second (the other slot of the
 * pair), else 0xFFFFFFFF. The probes are in the table's first 4096 slots
 * (32 KiB), where most sites live: site.c says why. The allocator's fast
 * paths take their slow path on 0xFFFFFFFF; om_site_id() registers the site.
 */
static inline __attribute__((always_inline)) uint32_t om_site_probe(const char *file, int line)
{
    uint64_t key = (uint64_t)(uintptr_t)file | (uint64_t)(uint32_t)line << 47;
    uint32_t i = (uint32_t)((key * om_g.site_mul) >> (64 - OM_SITES_HOT_SHIFT));
    /* slots 0 and 1 hold 0, which only the key of (NULL, 0), site 0, matches */
    if (OM_LIKELY(atomic_load_explicit(&om_g.sites[i], memory_order_relaxed) == key))
        return i;
    if (atomic_load_explicit(&om_g.sites[i ^ 1], memory_order_relaxed) == key)
        return i ^ 1;
    return 0xFFFFFFFFu;
}

/* The id of OpenSSL site <file>:<line>: om_site_probe(), om_site_id_slow() when it fails. */
static inline uint16_t om_site_id(const char *file, int line)
{
    uint32_t site = om_site_probe(file, line);
    return OM_LIKELY(site <= 0xFFFF) ? (uint16_t)site : om_site_id_slow(file, line);
}

/* Returns the calling thread's cache, making one if needed. Pair with om_tc_leave(). */
static inline struct om_tc *om_tc_enter(void)
{
    struct om_tc *tc = om_tls_tc;
    if (OM_LIKELY((uintptr_t)tc > (uintptr_t)OM_TC_DEAD))
        return tc;
    return om_tc_enter_slow();
}

static inline void om_tc_leave(struct om_tc *tc)
{
    if (OM_UNLIKELY(tc->orphan))
        pthread_mutex_unlock(&om_g.orphan_lock);
}

/*
 * Brackets every change of allocator state by a thread (header writes,
 * cache and quarantine updates), so that fork() never copies a half-done
 * operation of a thread that will not exist in the child. The fork prepare
 * handler raises OM_GATE_FORKING, makes every thread see it (membarrier(2), so
 * this fast path needs no fence of its own) and waits until no thread is
 * busy; a thread that finds the gate raised waits until the fork is
 * over. The orphan cache is serialised by its mutex, which fork takes.
 */
static inline void om_op_begin(struct om_tc *tc)
{
    __atomic_store_n(&tc->busy, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (OM_UNLIKELY(__atomic_load_n(&om_g.gate, __ATOMIC_RELAXED)))
        om_op_wait(tc);
}

static inline void om_op_end(struct om_tc *tc)
{
    __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
}

/* Returns freed chunk <h> of class <cls> to the thread cache, spilling half of a full cache. */
static inline void om_pool_release_cls(struct om_tc *tc, struct om_chunk *h, unsigned cls)
{
    if (OM_UNLIKELY(tc->cc[cls].n >= tc->cc[cls].cap))
        om_tc_flush_class(tc, cls, tc->cc[cls].cap / 2);
    tc->slot[cls][tc->cc[cls].n++] = h;
}

static inline void om_pool_release(struct om_tc *tc, struct om_chunk *h)
{
    om_pool_release_cls(tc, h, h->cls);
}

/*
 * Moves the oldest quarantined chunk into the thread cache. Its header
 * already says freed, and the ring holds its class, so nothing is read from
 * or written to the chunk: it is cold by now, and a write here would cost a
 * cache miss for every free.
 */
static inline void om_quar_evict_one(struct om_tc *tc)
{
    struct om_quar *q = &tc->quar;
    uint64_t e = q->ring[q->head++ & q->mask];
    struct om_chunk *o = (struct om_chunk *)(uintptr_t)(e & 0xFFFFFFFFFFFFull);
    unsigned cls = (unsigned)(e >> 48);
    q->bytes -= om_cls[cls].size;
    om_pool_release_cls(tc, o, cls);
}

/*
 * Puts freed chunk <h> (wiped, state OM_ST_FREED) of <usable> bytes into the
 * thread's quarantine, and makes the oldest chunks beyond the byte budget
 * reusable.
 */
static inline void om_quar_push(struct om_tc *tc, struct om_chunk *h, unsigned cls,
                                uint32_t usable)
{
    struct om_quar *q = &tc->quar;
    if (OM_UNLIKELY(!q->ring) && !om_quar_init(tc)) {
        om_pool_release_cls(tc, h, cls);
        return;
    }
    q->ring[q->tail++ & q->mask] = (uint64_t)(uintptr_t)h | (uint64_t)cls << 48;
    q->bytes += usable;
    /* chunks leave in batches (om_quar_drain), which keeps this path to a few instructions */
    if (OM_UNLIKELY(q->bytes > om_g.opt.quarantine || q->tail - q->head > q->mask))
        om_quar_drain(tc);
}

/* Accounts a live-byte change of <d> in thread <tc>; flushes to the global peak now and then. */
static inline void om_stat_live(struct om_tc *tc, int64_t d)
{
    int64_t l = tc->st.live + d;
    OM_CTR_SET(tc->st.live, l);
    if (OM_UNLIKELY((uint64_t)(l - tc->st.flushed + 4095) > 8190))
        om_stat_flush(tc);
}

/* Counts a chunk of <n> bytes created under <tag>. */
static inline void om_stat_alloc(struct om_tc *tc, uint8_t tag, size_t n)
{
    OM_CTR_ADD(tc->st.tag_allocs[tag], 1);
    om_stat_live(tc, (int64_t)n);
}

/* Counts a chunk of <n> bytes released. */
static inline void om_stat_free(struct om_tc *tc, size_t n)
{
    OM_CTR_ADD(tc->st.frees, 1);
    om_stat_live(tc, -(int64_t)n);
}

/*
 * Releases live small chunk <h> of class <cls> (already validated), of <size> requested bytes,
 * freed at <fsite>: wiped when zeroing is on, marked freed, and put in quarantine when it is
 * larger than quarantine-over (or straight back into the cache: with a zero quarantine, and
 * by default for chunks of 32 bytes or less, the strings and ASN.1 leaves that make up three
 * quarters of OpenSSL's frees and most of the quarantine's cost; an object freed twice is
 * still caught, and its wiped fields no longer point at its freed children).
 *
 * With zeroing alone the wipe covers the requested bytes rounded up to 16, which leaves the
 * whole usable size zero: a free chunk is all zero (a new one comes zeroed from the system,
 * a freed one was wiped), its owner may write only its requested bytes, and a realloc that
 * shrinks a chunk in place wipes what it gives up. So a 17 KiB record buffer in the 20 KiB
 * class costs 17 KiB of wiping, not 20; the wipe cannot know which of those 17 KiB OpenSSL
 * wrote, and the lines it never touched are most of zeroing's cache misses.
 * With fill or canary, which write beyond the requested bytes, the whole usable size is
 * scrubbed.
 */
static inline __attribute__((always_inline)) void om_free_small(struct om_tc *tc,
                                                                 struct om_chunk *h, unsigned cls,
                                                                 size_t size, uint16_t fsite)
{
    om_stat_free(tc, size);
    uint32_t usable = om_cls[cls].size;
    if (om_g.opt.zero)
        om_scrub(om_user(h), om_g.wipe_whole ? usable : ((uint32_t)size + 15) & ~15u);
    /* a live header has free site 0: the check changes by constants and the new site's mix */
    uint16_t sitemix = om_mix16(fsite, om_g.site_key);
    h->fsite = fsite;
    h->state = OM_ST_FREED;
    h->check ^= om_g.k_free_freed ^ sitemix;
    if (om_g.opt.quarantine && size > om_g.opt.quarantine_over)
        om_quar_push(tc, h, cls, usable);
    else
        om_pool_release_cls(tc, h, cls);
}

#endif /* OM_H */
