/* site.c - OpenSSL allocation sites (file:line -> 16-bit id) and pool tag names. */

#include "om.h"

/*
 * Site keys pack OpenSSL's file pointer (47 bits of user address space) and
 * its line (17 bits). The table is open-addressed and filled lock-free with
 * compare-and-swap, and it is mapped MAP_SHARED so that ids given out
 * before a fork mean the same site in every process of the family. A site's
 * id is its slot.
 *
 * A site goes first to one slot among the first 4096 (the hot part, 32 KiB:
 * what every lookup touches), or if another site holds that slot to the
 * other slot of its 16-byte pair (the same cache line: the fast paths probe
 * both); only if both are taken does it go to the rest of the table, by
 * linear probing from a second hash (which starts in the next 512 slots,
 * one page). A handshake uses about 400 sites: spread over all 65,536
 * slots (512 KiB) they dirtied nearly every page of the shared mapping,
 * 512 KiB of RSS; now about 10 pages. (8192 hot slots: fewer sites collide,
 * but 64 KiB; the cachegrind figures within 0.1% of each other. Before the
 * pair, the ~20 sites whose slot was taken went through the slow path on
 * every call.)
 */
#define SITE_LINE_SHIFT 47
#define SITE_LINE_MAX   ((1 << (64 - SITE_LINE_SHIFT)) - 1)

static const char nofile[] = ""; /* stands for a NULL file with a non-zero line */

int om_site_init(void)
{
    void *m = om_map(OM_NSITES * sizeof(uint64_t), true);
    if (!m)
        return OSSL_MEM_E_NOMEM;
    om_g.sites = m;
    om_g.site_mul = 0x9E3779B97F4A7C15ull;
    pthread_mutex_init(&om_g.tags_lock, NULL);
    strcpy(om_g.tag_names[0], "openssl");
    atomic_store(&om_g.ntags, 1);
    return 0;
}

/*
 * Whether slot <i> of the site table holds <key>, claiming it if it was empty (another
 * thread may claim it first, with this key or another).
 */
static bool slot_is(uint32_t i, uint64_t key)
{
    uint64_t k = atomic_load_explicit(&om_g.sites[i], memory_order_relaxed);
    if (k == key)
        return true;
    if (k != 0)
        return false;
    uint64_t expect = 0;
    return atomic_compare_exchange_strong(&om_g.sites[i], &expect, key) || expect == key;
}

/* The id of site <file>:<line>, registering it on first use; never fails. */
uint16_t om_site_id_slow(const char *file, int line)
{
    if (!file) {
        if (line == 0)
            return OM_SITE_NONE;
        file = nofile;
    }
    uintptr_t f = (uintptr_t)file;
    if (OM_UNLIKELY(f >> SITE_LINE_SHIFT || line < 0 || line > SITE_LINE_MAX))
        return OM_SITE_OTHER;
    uint64_t key = (uint64_t)f | (uint64_t)line << SITE_LINE_SHIFT;
    uint64_t h = key * om_g.site_mul;
    const uint32_t hot = 1u << OM_SITES_HOT_SHIFT;
    /* the hot slot (ids 0 and 1 are reserved: a key hashed there goes to the rest) */
    uint32_t i = (uint32_t)(h >> (64 - OM_SITES_HOT_SHIFT));
    if (i >= 2 && slot_is(i, key))
        return (uint16_t)i;
    if ((i ^ 1) >= 2 && slot_is(i ^ 1, key)) /* its pair: the same 16 bytes, the same line */
        return (uint16_t)(i ^ 1);
    /* the rest: slots hot .. OM_NSITES - 1, linear probing from a second hash into the next
       512 slots (one page: the few sites that collide share it; a crowded table probes on) */
    uint32_t span = OM_NSITES - hot;
    i = hot + (uint32_t)((h >> 16) & 511);
    for (uint32_t probes = 0; probes < span; probes++, i = i + 1 < OM_NSITES ? i + 1 : hot)
        if (slot_is(i, key))
            return (uint16_t)i;
    return OM_SITE_OTHER;
}

/* Decodes site <id>. Returns false for the reserved ids and empty slots. */
bool om_site_get(uint16_t id, const char **file, int *line)
{
    if (id < 2 || !om_g.sites)
        return false;
    uint64_t k = atomic_load_explicit(&om_g.sites[id], memory_order_relaxed);
    if (k == 0)
        return false;
    *file = (const char *)(uintptr_t)(k & ((1ull << SITE_LINE_SHIFT) - 1));
    *line = (int)(k >> SITE_LINE_SHIFT);
    return true;
}

/*
 * Returns the index of tag <name>, creating it if needed, or a negative
 * OSSL_MEM_E_* code (bad name, table full).
 */
int om_tag_id(const char *name)
{
    if (!name || !*name || strlen(name) > OSSL_MEM_TAG_NAME_MAX)
        return OSSL_MEM_E_INVAL;
    int id = OSSL_MEM_E_LIMIT;
    pthread_mutex_lock(&om_g.tags_lock);
    unsigned n = atomic_load(&om_g.ntags);
    for (unsigned t = 0; t < n; t++)
        if (strcmp(om_g.tag_names[t], name) == 0) {
            id = (int)t;
            goto out;
        }
    if (n < OSSL_MEM_MAX_TAGS) {
        strcpy(om_g.tag_names[n], name);
        atomic_store(&om_g.ntags, n + 1);
        id = (int)n;
    }
out:
    pthread_mutex_unlock(&om_g.tags_lock);
    return id;
}
