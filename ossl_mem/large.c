/* large.c - requests above OM_SMALL_MAX: one mapping each, found through a table, with tombstones. */
#include <sys/mman.h>
#include <unistd.h>

#include "om.h"

/*
 * One entry per large mapping. After a free the mapping is returned to the
 * system at once and the entry stays as a tombstone (state OM_ST_FREED) so
 * that a second free of the same pointer is still recognised as a double
 * free, with both sites, until the table is rebuilt or the address is
 * mapped again.
 */
struct large_ent {
    uintptr_t ptr;      /* user pointer, 0 = empty slot */
    size_t size;        /* requested bytes */
    size_t maplen;      /* length of the mapping */
    uint16_t asite;     /* allocation site */
    uint16_t fsite;     /* free site (tombstones) */
    uint8_t state;      /* OM_ST_LIVE or OM_ST_FREED */
    uint8_t tag;        /* pool tag */
};

static pthread_mutex_t large_lock = PTHREAD_MUTEX_INITIALIZER;
static struct large_ent *tab;   /* open addressing, linear probing */
static size_t tab_cap;          /* power of two */
static size_t tab_used;         /* non-empty slots, tombstones included */
static size_t tab_live;         /* live entries */
static size_t page_size;

static size_t slot_of(uintptr_t p, size_t cap)
{
    return (size_t)(((uint64_t)p * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

/* Maps a table of <cap> slots and moves the live entries (only) into it. */
static int tab_rebuild(size_t cap)
{
    void *m = om_map(cap * sizeof *tab, false);
    if (!m)
        return -1;
    struct large_ent *nt = m;
    size_t used = 0;
    for (size_t i = 0; i < tab_cap; i++) {
        if (tab[i].ptr == 0 || tab[i].state != OM_ST_LIVE)
            continue;
        size_t j = slot_of(tab[i].ptr, cap);
        while (nt[j].ptr)
            j = (j + 1) & (cap - 1);
        nt[j] = tab[i];
        used++;
    }
    if (tab)
        munmap(tab, tab_cap * sizeof *tab);
    tab = nt;
    tab_cap = cap;
    tab_used = used;
    return 0;
}

int om_large_init(void)
{
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    return tab_rebuild(1024) == 0 ? 0 : OSSL_MEM_E_NOMEM;
}

/* The slot holding <p> (any state), or NULL. Caller holds large_lock. */
static struct large_ent *tab_find(uintptr_t p)
{
    for (size_t j = slot_of(p, tab_cap);; j = (j + 1) & (tab_cap - 1)) {
        if (tab[j].ptr == p)
            return &tab[j];
        if (tab[j].ptr == 0)
            return NULL;
    }
}

/* Inserts or revives the entry for <p>. Caller holds large_lock. NULL if the table cannot grow. */
static struct large_ent *tab_insert(uintptr_t p)
{
    struct large_ent *e = tab_find(p);
    if (e)
        return e;
    if ((tab_used + 1) * 2 > tab_cap) {
        size_t cap = (tab_live + 1) * 4 > tab_cap ? tab_cap * 2 : tab_cap;
        if (tab_rebuild(cap) != 0)
            return NULL;
    }
    size_t j = slot_of(p, tab_cap);
    while (tab[j].ptr)
        j = (j + 1) & (tab_cap - 1);
    tab_used++;
    tab[j].ptr = p;
    return &tab[j];
}

/*
 * Allocates <size> bytes in a mapping of their own. Returns the user
 * pointer, 16 bytes into the mapping, or NULL with errno ENOMEM.
 */
void *om_large_alloc(struct om_tc *tc, size_t size, uint16_t site, uint8_t tag)
{
    (void)tc;
    size_t maplen = (size + OM_HDR + page_size - 1) & ~(page_size - 1);
    int saved = errno;
    void *m = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    errno = saved;
    struct om_chunk *h = m;
    uint32_t hsize = size >= UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    om_hdr_store_live(h, hsize, site, om_g.owner, OM_CLS_LARGE, tag);

    pthread_mutex_lock(&large_lock);
    struct large_ent *e = tab_insert((uintptr_t)om_user(h));
    if (e) {
        e->size = size;
        e->maplen = maplen;
        e->asite = site;
        e->fsite = 0;
        e->state = OM_ST_LIVE;
        e->tag = tag;
        tab_live++;
    }
    pthread_mutex_unlock(&large_lock);
    if (!e) {
        munmap(m, maplen);
        errno = ENOMEM;
        return NULL;
    }
    atomic_fetch_add(&om_g.large_mapped, maplen);
    atomic_fetch_add(&om_g.large_live, 1);
    return om_user(h);
}

/*
 * Whether the page at <a> (page-aligned) is mapped now, by anyone: mincore()
 * fails with ENOMEM on an unmapped page. Keeps errno.
 */
static bool page_mapped(uintptr_t a)
{
    unsigned char v;
    int saved = errno;
    bool mapped = mincore((void *)a, page_size, &v) == 0;
    errno = saved;
    return mapped;
}

/*
 * Looks <p> up among large chunks. Returns 1 (live: *hp, *size and *cap
 * set), 2 (tombstone of a freed chunk: *hp points to a header copy that
 * stays valid until the next call from this thread, for the report), or 0
 * (not a large chunk). A tombstone whose first page is mapped again, by
 * another of our mappings (<p> is then inside a live large chunk) or by
 * anyone else (glibc's mmapped chunks also start 16 bytes into a page), no
 * longer says anything about <p>: 0. Never touches memory that is not
 * mapped.
 */
int om_large_find(const void *p, struct om_chunk **hp, size_t *size, size_t *cap)
{
    static __thread struct om_chunk ghost;
    int rc = 0;
    pthread_mutex_lock(&large_lock);
    struct large_ent *e = tab_find((uintptr_t)p);
    if (e && e->state == OM_ST_LIVE) {
        *hp = om_hdr(p);
        *size = e->size;
        *cap = e->maplen - OM_HDR;
        rc = 1;
    } else if (e && !page_mapped(e->ptr - OM_HDR)) {
        memset(&ghost, 0, sizeof ghost);
        ghost.size = e->size >= UINT32_MAX ? UINT32_MAX : (uint32_t)e->size;
        ghost.asite = e->asite;
        ghost.fsite = e->fsite;
        ghost.cls = OM_CLS_LARGE;
        ghost.tag = e->tag;
        ghost.state = OM_ST_FREED;
        *hp = &ghost;
        *size = e->size;
        *cap = 0;
        rc = 2;
    }
    pthread_mutex_unlock(&large_lock);
    return rc;
}

/* Records the new requested size of live large chunk <h> after an in-place realloc. */
void om_large_resize(struct om_chunk *h, size_t size)
{
    pthread_mutex_lock(&large_lock);
    struct large_ent *e = tab_find((uintptr_t)om_user(h));
    if (e && e->state == OM_ST_LIVE)
        e->size = size;
    pthread_mutex_unlock(&large_lock);
}

/*
 * Frees live large chunk <h>: the mapping goes back to the system (which
 * hands out only zeroed pages, so nothing is left to wipe) and its entry
 * becomes a tombstone that remembers the free site.
 */
void om_large_free(struct om_tc *tc, struct om_chunk *h, uint16_t fsite)
{
    (void)tc;
    size_t maplen = 0;
    pthread_mutex_lock(&large_lock);
    struct large_ent *e = tab_find((uintptr_t)om_user(h));
    if (e && e->state == OM_ST_LIVE) {
        maplen = e->maplen;
        e->state = OM_ST_FREED;
        e->fsite = fsite;
        tab_live--;
    }
    pthread_mutex_unlock(&large_lock);
    if (!maplen)
        return;
    int saved = errno;
    munmap(h, maplen);
    errno = saved;
    atomic_fetch_sub(&om_g.large_mapped, maplen);
    atomic_fetch_sub(&om_g.large_live, 1);
}

/* Calls <fn> for every live large chunk, with its usable size. */
void om_large_walk(om_chunk_fn fn, void *arg)
{
    pthread_mutex_lock(&large_lock);
    for (size_t i = 0; i < tab_cap; i++)
        if (tab[i].ptr && tab[i].state == OM_ST_LIVE)
            fn(om_hdr((void *)tab[i].ptr), tab[i].maplen - OM_HDR, arg);
    pthread_mutex_unlock(&large_lock);
}

void om_large_fork_prepare(void) { pthread_mutex_lock(&large_lock); }
void om_large_fork_parent(void) { pthread_mutex_unlock(&large_lock); }
void om_large_fork_child(void) { pthread_mutex_init(&large_lock, NULL); }
