/* pool.c - private tagged pools: size classes, segments, runs and the central free stores. */
#include <sys/mman.h>
#include <unistd.h>

#include "om.h"

struct om_class om_cls[OM_NCLS];
uint8_t om_cls_small[OM_SMALL_MAX / 16 + 1];

/*
 * Usable sizes, tuned to OpenSSL's profile: a quarter of its requests are
 * 4 bytes or less and half are 17-32 bytes, so the first classes are 16 and
 * 32; then steps of 16 up to 128 and four classes per power of two.
 */
static const uint32_t class_sizes[OM_NCLS] = {
    16,    32,    48,    64,    80,    96,    112,   128,
    160,   192,   224,   256,   320,   384,   448,   512,
    640,   768,   896,   1024,  1280,  1536,  1792,  2048,
    2560,  3072,  3584,  4096,  5120,  6144,  7168,  8192,
    10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768,
};

static struct om_seg *seg_new(void);

/*
 * Fills the class table and the size-to-class maps, and reserves the
 * private region. The region is reserved PROT_NONE once, so a pointer is
 * classified by one range check; segments are committed from its start.
 * Returns 0 or OSSL_MEM_E_NOMEM.
 */
int om_pool_init(void)
{
    for (unsigned c = 0; c < OM_NCLS; c++) {
        struct om_class *k = &om_cls[c];
        k->size = class_sizes[c];
        k->stride = k->size + (uint32_t)OM_HDR;
        k->nslots = (uint32_t)((8ull * k->stride + OM_SLOT_SIZE - 1) / OM_SLOT_SIZE);
        k->nchunks = (uint32_t)(k->nslots * OM_SLOT_SIZE / k->stride);
        k->recip = ((1ull << 40) + k->stride - 1) / k->stride;
        uint32_t cap = (uint32_t)(256 * 1024 / k->size);
        k->tc_cap = cap > OM_TC_CAP ? OM_TC_CAP : cap < 4 ? 4 : cap;
    }
    unsigned c = 0;
    for (unsigned i = 0; i <= OM_SMALL_MAX / 16; i++) {
        while (class_sizes[c] < i * 16)
            c++;
        om_cls_small[i] = (uint8_t)c;
    }
    for (c = 0; c < OM_NCLS; c++) {
        pthread_mutex_init(&om_g.central[c].lock, NULL);
        om_g.central[c].stack = NULL;
        om_g.central[c].n = om_g.central[c].cap = 0;
        om_g.central[c].list = NULL;
        om_g.central[c].bump = om_g.central[c].bump_end = NULL;
    }
    pthread_mutex_init(&om_g.seg_lock, NULL);

    /*
     * Reserve address space; halve the request until the system agrees. The
     * reservation also holds the shared arena's place, right above the
     * region, wherever the system puts the whole: every private chunk is then
     * below every arena chunk, which is how the lock interposition tells a
     * private lock from an arena lock with one comparison (locks.c).
     */
    size_t want = om_g.opt.reserve, arena = om_arena_map_size();
    void *base = MAP_FAILED;
    while (want >= 2 * OM_SEG_SIZE) {
        base = mmap(NULL, want + OM_SEG_SIZE + arena, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base != MAP_FAILED)
            break;
        want /= 2;
    }
    if (base == MAP_FAILED)
        return OSSL_MEM_E_NOMEM;
    uintptr_t b = ((uintptr_t)base + OM_SEG_SIZE - 1) & ~(uintptr_t)(OM_SEG_SIZE - 1);
    om_g.region = (char *)b;
    om_g.region_size = want;
    om_g.arena_at = arena ? (char *)b + want : NULL;
    atomic_store(&om_g.region_used, 0);
    om_g.fast_lo = b + OM_SLOT_SIZE;
    /* commit the first segment now: the free fast path relies on region_used > 0 */
    return seg_new() ? 0 : OSSL_MEM_E_NOMEM;
}

/*
 * Commits the next segment of the region. Caller holds seg_lock. Returns
 * the segment or NULL (errno ENOMEM) when the region or the system is out
 * of memory. The segment header is written before region_used publishes it,
 * so a concurrent om_pool_find() never reads an uncommitted page.
 */
static struct om_seg *seg_new(void)
{
    size_t used = atomic_load_explicit(&om_g.region_used, memory_order_relaxed);
    if (used + OM_SEG_SIZE > om_g.region_size) {
        errno = ENOMEM;
        return NULL;
    }
    char *p = om_g.region + used;
    int saved = errno;
    if (mmap(p, OM_SEG_SIZE, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    errno = saved;
    struct om_seg *s = (struct om_seg *)p;
    memset(s->slot_cls, OM_SLOT_NONE, sizeof s->slot_cls);
    memset(s->slot_first, 0, sizeof s->slot_first);
    s->next_slot = 1;
    atomic_store_explicit(&om_g.region_used, used + OM_SEG_SIZE, memory_order_release);
    atomic_store_explicit(&om_g.fast_len, used + OM_SEG_SIZE - OM_SLOT_SIZE, memory_order_release);
    om_g.cur_seg = s;
    return s;
}

/*
 * Gives class <cls> a new run and points its bump range at it. Caller holds
 * the class's central lock (lock order: central, then seg_lock). Returns 0
 * or -1 with errno ENOMEM.
 */
static int run_new(unsigned cls)
{
    const struct om_class *k = &om_cls[cls];
    int rc = 0;
    pthread_mutex_lock(&om_g.seg_lock);
    struct om_seg *s = om_g.cur_seg;
    if (!s || s->next_slot + k->nslots > OM_NSLOTS) {
        s = seg_new();
        if (!s) {
            rc = -1;
            goto out;
        }
    }
    unsigned first = s->next_slot;
    for (unsigned i = 0; i < k->nslots; i++) {
        s->slot_first[first + i] = (uint8_t)first;
        s->slot_cls[first + i] = (uint8_t)cls;
    }
    s->next_slot = first + k->nslots;
    char *run = (char *)s + ((size_t)first << OM_SLOT_SHIFT);
    om_g.central[cls].bump = run;
    om_g.central[cls].bump_end = run + (size_t)k->nchunks * k->stride;
out:
    pthread_mutex_unlock(&om_g.seg_lock);
    return rc;
}

/*
 * Moves up to half a cache of class <cls> from the central store into the
 * empty thread cache <tc>: the most recently put chunks first, then the
 * overflow list, then chunks never handed out. Leaves tc->n[cls] == 0 only
 * when memory is exhausted (errno ENOMEM).
 */
void om_tc_refill(struct om_tc *tc, unsigned cls)
{
    struct om_central *ce = &om_g.central[cls];
    unsigned want = tc->cc[cls].cap / 2, got;
    uint32_t stride = om_cls[cls].stride;

    pthread_mutex_lock(&ce->lock);
    got = ce->n < want ? ce->n : want;
    if (got) { /* (no stack is mapped before the first put) */
        ce->n -= got;
        memcpy(tc->slot[cls], ce->stack + ce->n, got * sizeof *ce->stack);
    }
    while (got < want && ce->list) {
        struct om_chunk *h = ce->list;
        struct om_chunk **link = om_user(h);
        ce->list = *link;
        *link = NULL; /* keep freed chunks all zero when zeroing is on */
        tc->slot[cls][got++] = h;
    }
    while (got < want) {
        if (ce->bump == ce->bump_end && run_new(cls) != 0)
            break;
        while (got < want && ce->bump < ce->bump_end) {
            tc->slot[cls][got++] = (struct om_chunk *)ce->bump;
            ce->bump += stride;
        }
    }
    pthread_mutex_unlock(&ce->lock);
    tc->cc[cls].n = (uint16_t)got;
}

/*
 * Makes room for <more> entries in the stack of <ce> (caller holds its
 * lock). Returns false when the system refuses the memory.
 */
static bool central_grow(struct om_central *ce, uint32_t more)
{
    if (ce->n + more <= ce->cap)
        return true;
    uint64_t cap = ce->cap ? ce->cap : 512;
    while (cap < (uint64_t)ce->n + more)
        cap *= 2;
    if (cap > UINT32_MAX)
        return false;
    struct om_chunk **v = om_map(cap * sizeof *v, false);
    if (!v)
        return false;
    if (ce->stack) {
        memcpy(v, ce->stack, ce->n * sizeof *v);
        int saved = errno;
        munmap(ce->stack, ce->cap * sizeof *v);
        errno = saved;
    }
    ce->stack = v;
    ce->cap = (uint32_t)cap;
    return true;
}

/* Puts <n> free chunks <v> of class <cls> into the central store. */
void om_central_put(unsigned cls, struct om_chunk **v, unsigned n)
{
    if (n == 0)
        return;
    struct om_central *ce = &om_g.central[cls];
    pthread_mutex_lock(&ce->lock);
    if (OM_LIKELY(central_grow(ce, n))) {
        memcpy(ce->stack + ce->n, v, n * sizeof *v);
        ce->n += n;
    } else {
        for (unsigned i = 0; i < n; i++) {
            *(struct om_chunk **)om_user(v[i]) = ce->list;
            ce->list = v[i];
        }
    }
    pthread_mutex_unlock(&ce->lock);
}

/*
 * Allocates <size> <= OM_SMALL_MAX bytes for site <site> under <tag>.
 * Returns the user pointer or NULL with errno ENOMEM.
 */
void *om_pool_alloc(struct om_tc *tc, size_t size, uint16_t site, uint8_t tag)
{
    unsigned cls = om_size_class(size);
    if (OM_UNLIKELY(tc->cc[cls].n == 0)) {
        om_tc_refill(tc, cls);
        if (tc->cc[cls].n == 0)
            return NULL;
    }
    struct om_chunk *h = tc->slot[cls][--tc->cc[cls].n];
    om_hdr_store_live(h, (uint32_t)size, site, om_g.owner, (uint8_t)cls, tag);
    return om_user(h);
}

/*
 * Finds the chunk whose user pointer is <p> in the private region without
 * touching memory outside committed segments. Returns the header, or NULL
 * with a reason in *why when <p> is in the region but not a chunk start.
 * Returns NULL with *why == NULL when <p> is outside the region.
 */
struct om_chunk *om_pool_find(const void *p, const char **why)
{
    uintptr_t a = (uintptr_t)p, base = (uintptr_t)om_g.region;
    size_t used = atomic_load_explicit(&om_g.region_used, memory_order_acquire);
    *why = NULL;
    if (a - base >= used)
        return NULL;
    struct om_seg *s = (struct om_seg *)(a & ~(uintptr_t)(OM_SEG_SIZE - 1));
    unsigned slot = (unsigned)((a - (uintptr_t)s) >> OM_SLOT_SHIFT);
    unsigned cls = s->slot_cls[slot];
    if (slot == 0 || cls >= OM_NCLS) {
        *why = "points into ossl_mem's metadata or unused space, not a chunk";
        return NULL;
    }
    const struct om_class *k = &om_cls[cls];
    uintptr_t off = a - ((uintptr_t)s + ((uintptr_t)s->slot_first[slot] << OM_SLOT_SHIFT));
    uint64_t idx = ((uint64_t)off * k->recip) >> 40;
    if (off - idx * k->stride != OM_HDR || idx >= k->nchunks) {
        *why = "interior pointer: not the start of a chunk";
        return NULL;
    }
    return om_hdr(p);
}

/*
 * The chunk of the private region whose header or usable area holds
 * address <a>, or NULL (outside committed segments, in metadata, or in a
 * run's unused tail). Pure arithmetic, like om_pool_find().
 */
struct om_chunk *om_pool_containing(uintptr_t a)
{
    uintptr_t base = (uintptr_t)om_g.region;
    size_t used = atomic_load_explicit(&om_g.region_used, memory_order_acquire);
    if (a - base >= used)
        return NULL;
    struct om_seg *s = (struct om_seg *)(a & ~(uintptr_t)(OM_SEG_SIZE - 1));
    unsigned slot = (unsigned)((a - (uintptr_t)s) >> OM_SLOT_SHIFT);
    unsigned cls = s->slot_cls[slot];
    if (slot == 0 || cls >= OM_NCLS)
        return NULL;
    const struct om_class *k = &om_cls[cls];
    uintptr_t run = (uintptr_t)s + ((uintptr_t)s->slot_first[slot] << OM_SLOT_SHIFT);
    uint64_t idx = ((uint64_t)(a - run) * k->recip) >> 40;
    if (idx >= k->nchunks)
        return NULL;
    return (struct om_chunk *)(run + idx * k->stride);
}

/* Bytes of committed private segments. */
size_t om_pool_mapped(void)
{
    return atomic_load(&om_g.region_used);
}

/*
 * Calls <fn> for every chunk that was ever carved (live, cached, freed or
 * quarantined), with its usable size. Chunks never handed out have a zero
 * header and are skipped by the callers through their state byte.
 */
void om_pool_walk(om_chunk_fn fn, void *arg)
{
    size_t used = atomic_load_explicit(&om_g.region_used, memory_order_acquire);
    for (size_t off = 0; off < used; off += OM_SEG_SIZE) {
        struct om_seg *s = (struct om_seg *)(om_g.region + off);
        for (unsigned slot = 1; slot < OM_NSLOTS; slot++) {
            unsigned cls = s->slot_cls[slot];
            if (cls >= OM_NCLS || s->slot_first[slot] != slot)
                continue;
            const struct om_class *k = &om_cls[cls];
            char *run = (char *)s + ((size_t)slot << OM_SLOT_SHIFT);
            for (uint32_t i = 0; i < k->nchunks; i++)
                fn((struct om_chunk *)(run + (size_t)i * k->stride), k->size, arg);
        }
    }
}

/* Fork handlers: no central or segment lock may be held by another thread across fork. */
void om_pool_fork_prepare(void)
{
    for (unsigned c = 0; c < OM_NCLS; c++)
        pthread_mutex_lock(&om_g.central[c].lock);
    pthread_mutex_lock(&om_g.seg_lock);
}

void om_pool_fork_parent(void)
{
    pthread_mutex_unlock(&om_g.seg_lock);
    for (unsigned c = 0; c < OM_NCLS; c++)
        pthread_mutex_unlock(&om_g.central[c].lock);
}

void om_pool_fork_child(void)
{
    pthread_mutex_init(&om_g.seg_lock, NULL);
    for (unsigned c = 0; c < OM_NCLS; c++)
        pthread_mutex_init(&om_g.central[c].lock, NULL);
}
