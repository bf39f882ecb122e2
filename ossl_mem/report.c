/* report.c - ossl_mem_report(): totals, tags, top OpenSSL allocation sites and live chunks, as text or JSON. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "om.h"

#define TOP_SITES   25  /* sites listed */
#define MAX_CHUNKS  1000 /* live chunks listed in JSON */
#define TEXT_CHUNKS 30   /* live chunks listed in text */

/* Every field of struct ossl_mem_stats, in report order. */
#define STATS_FIELDS(X) \
    X(live_bytes) X(live_chunks) X(peak_bytes) X(allocs) X(frees) X(reallocs) \
    X(failed_allocs) X(double_frees) X(invalid_frees) X(inherited_frees) X(overflows) \
    X(uaf_writes) X(corrupt_headers) X(shared_size) X(shared_used) X(shared_live_chunks) \
    X(private_mapped) X(quarantine_bytes) X(quarantine_chunks) X(large_chunks) \
    X(hooks_replaced) X(threads) X(shared_peak) X(shared_failed) X(shared_lock_repairs) \
    X(shared_contexts) X(shared_reclaimed) X(lock_inits_shared) X(shared_locks_recovered)

struct live_ent {
    uintptr_t ptr;      /* user pointer */
    uint32_t size;      /* requested bytes */
    uint16_t site;      /* allocation site */
    uint8_t tag;        /* pool tag */
};

/* Scratch space of one report, mapped for its duration (never from OpenSSL's pools). */
struct agg {
    uint64_t bytes[OM_NSITES];          /* live bytes per site */
    uint32_t count[OM_NSITES];          /* live chunks per site */
    uint16_t order[OM_NSITES];          /* sites with live chunks, sorted */
    uint32_t nsites;                    /* entries in <order> */
    uint64_t nlive;                     /* live chunks seen by the walk */
    uint64_t tag_bytes[OSSL_MEM_MAX_TAGS];  /* live bytes per tag */
    uint64_t tag_chunks[OSSL_MEM_MAX_TAGS]; /* live chunks per tag */
    uint64_t tag_allocs[OSSL_MEM_MAX_TAGS]; /* chunks created per tag */
    struct live_ent shown[MAX_CHUNKS];  /* the first live chunks */
    uint64_t sh_bytes[OM_NSITES];       /* the same per site for the shared arena */
    uint32_t sh_count[OM_NSITES];
    uint16_t sh_order[OM_NSITES];
    uint32_t sh_nsites;
};

/* Live chunks of the shared arena, per allocation site. */
static void collect_shared(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct agg *a = arg;
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if ((uint8_t)(w1 >> 32) != OM_ST_LIVE || !om_hdr_valid(h, w0, w1))
        return;
    uint16_t site = (uint16_t)(w0 >> 32);
    a->sh_bytes[site] += (uint32_t)w0;
    a->sh_count[site]++;
}

static void collect(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct agg *a = arg;
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    if ((uint8_t)(w1 >> 32) != OM_ST_LIVE || !om_hdr_valid(h, w0, w1))
        return;
    uint16_t site = (uint16_t)(w0 >> 32);
    a->bytes[site] += (uint32_t)w0;
    a->count[site]++;
    uint8_t tag = (uint8_t)(w1 >> 24);
    if (tag < OSSL_MEM_MAX_TAGS) {
        a->tag_bytes[tag] += (uint32_t)w0;
        a->tag_chunks[tag]++;
    }
    if (a->nlive < MAX_CHUNKS)
        a->shown[a->nlive] = (struct live_ent){(uintptr_t)(h + 1), (uint32_t)w0, site,
                                               (uint8_t)(w1 >> 24)};
    a->nlive++;
}

struct tag_walk {
    uint64_t *bytes;    /* live bytes per tag */
    uint64_t *chunks;   /* live chunks per tag */
};

static void tag_collect(struct om_chunk *h, size_t usable, void *arg)
{
    (void)usable;
    struct tag_walk *w = arg;
    uint64_t w0, w1;
    om_hdr_load(h, &w0, &w1);
    uint8_t tag = (uint8_t)(w1 >> 24);
    if ((uint8_t)(w1 >> 32) != OM_ST_LIVE || tag >= OSSL_MEM_MAX_TAGS || !om_hdr_valid(h, w0, w1))
        return;
    w->bytes[tag] += (uint32_t)w0;
    w->chunks[tag]++;
}

/* Live bytes and chunks per tag, found by walking every header we own. */
void om_tag_walk(uint64_t bytes[OSSL_MEM_MAX_TAGS], uint64_t chunks[OSSL_MEM_MAX_TAGS])
{
    struct tag_walk w = {bytes, chunks};
    memset(bytes, 0, OSSL_MEM_MAX_TAGS * sizeof bytes[0]);
    memset(chunks, 0, OSSL_MEM_MAX_TAGS * sizeof chunks[0]);
    om_pool_walk(tag_collect, &w);
    om_large_walk(tag_collect, &w);
}

int ossl_mem_get_tag_stats(const char *tag, struct ossl_mem_tag_stats *st)
{
    if (!st || !tag)
        return OSSL_MEM_E_INVAL;
    memset(st, 0, sizeof *st);
    if (!om_g.ready)
        return OSSL_MEM_E_NOT_INIT;
    unsigned n = atomic_load(&om_g.ntags), t;
    for (t = 0; t < n; t++)
        if (strcmp(om_g.tag_names[t], tag) == 0)
            break;
    if (t == n)
        return OSSL_MEM_E_INVAL;
    uint64_t bytes[OSSL_MEM_MAX_TAGS], chunks[OSSL_MEM_MAX_TAGS];
    om_tag_walk(bytes, chunks);
    struct om_tstat sum;
    uint64_t qb, qc, th;
    om_stats_sum(&sum, &qb, &qc, &th);
    st->live_bytes = bytes[t];
    st->live_chunks = chunks[t];
    st->allocs = sum.tag_allocs[t];
    return 0;
}

static int by_bytes(const void *x, const void *y, void *arg)
{
    const uint64_t *bytes = arg;
    uint64_t bx = bytes[*(const uint16_t *)x], by = bytes[*(const uint16_t *)y];
    return bx < by ? 1 : bx > by ? -1 : 0;
}

/* Writes <s> as a JSON string. */
static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* Human-readable bytes into <buf>. */
static const char *human(uint64_t n, char *buf, size_t len)
{
    if (n < 10 * 1024)
        snprintf(buf, len, "%" PRIu64 " B", n);
    else if (n < 10 * 1024 * 1024)
        snprintf(buf, len, "%.1f KiB", n / 1024.0);
    else
        snprintf(buf, len, "%.1f MiB", n / (1024.0 * 1024.0));
    return buf;
}

static void report_text(FILE *out, const struct ossl_mem_stats *st, struct agg *a)
{
    char b1[32], b2[32], site[256];
    fprintf(out, "ossl_mem report (pid %ld)\n", (long)getpid());
    fprintf(out, "  live      %s in %" PRIu64 " chunks, peak %s\n",
            human(st->live_bytes, b1, sizeof b1), st->live_chunks,
            human(st->peak_bytes, b2, sizeof b2));
    fprintf(out, "  calls     %" PRIu64 " allocs, %" PRIu64 " frees, %" PRIu64 " reallocs, %"
            PRIu64 " failed\n", st->allocs, st->frees, st->reallocs, st->failed_allocs);
    fprintf(out, "  safety    %" PRIu64 " double frees, %" PRIu64 " invalid frees, %" PRIu64
            " inherited frees, %" PRIu64 " overflows, %" PRIu64 " writes after free, %" PRIu64
            " corrupt headers\n", st->double_frees, st->invalid_frees, st->inherited_frees,
            st->overflows, st->uaf_writes, st->corrupt_headers);
    fprintf(out, "  memory    %s mapped privately, quarantine %s in %" PRIu64 " chunks, %"
            PRIu64 " large chunks, %" PRIu64 " threads\n",
            human(st->private_mapped, b1, sizeof b1), human(st->quarantine_bytes, b2, sizeof b2),
            st->quarantine_chunks, st->large_chunks, st->threads);
    fprintf(out, "  hooks     %s\n", st->hooks_replaced ? "REPLACED by another allocator"
                                                        : "installed in OpenSSL");
    if (st->shared_size) {
        fprintf(out, "  shared    %s used of %s (peak %s) in %" PRIu64 " chunks, %" PRIu64
                " contexts registered, %" PRIu64 " refused (full), %" PRIu64 " lock repairs, %"
                PRIu64 " chunks reclaimed, %" PRIu64 " OpenSSL locks made process-shared, %"
                PRIu64 " recovered from a dead holder\n",
                human(st->shared_used, b1, sizeof b1), human(st->shared_size, b2, sizeof b2),
                human(st->shared_peak, site, sizeof site), st->shared_live_chunks,
                st->shared_contexts, st->shared_failed, st->shared_lock_repairs,
                st->shared_reclaimed, st->lock_inits_shared, st->shared_locks_recovered);
        fprintf(out, "top shared-arena sites by live bytes:\n");
        for (uint32_t i = 0; i < a->sh_nsites && i < TOP_SITES; i++) {
            uint16_t s = a->sh_order[i];
            fprintf(out, "  %-44s %10s in %u chunks\n", om_site_str(s, site, sizeof site),
                    human(a->sh_bytes[s], b1, sizeof b1), a->sh_count[s]);
        }
        if (a->sh_nsites == 0)
            fprintf(out, "  (none)\n");
    }
    fprintf(out, "tags:\n");
    unsigned nt = atomic_load(&om_g.ntags);
    for (unsigned t = 0; t < nt; t++)
        fprintf(out, "  %-20s %10s live in %" PRIu64 " chunks, %" PRIu64 " allocs\n",
                om_g.tag_names[t], human(a->tag_bytes[t], b1, sizeof b1), a->tag_chunks[t],
                a->tag_allocs[t]);
    fprintf(out, "top allocation sites by live bytes:\n");
    for (uint32_t i = 0; i < a->nsites && i < TOP_SITES; i++) {
        uint16_t s = a->order[i];
        fprintf(out, "  %-44s %10s in %u chunks\n", om_site_str(s, site, sizeof site),
                human(a->bytes[s], b1, sizeof b1), a->count[s]);
    }
    if (a->nsites == 0)
        fprintf(out, "  (none)\n");
    fprintf(out, "live chunks: %" PRIu64 "%s\n", a->nlive,
            a->nlive > TEXT_CHUNKS ? " (the first 30 listed; the JSON report lists 1000)" : "");
    for (uint64_t i = 0; i < a->nlive && i < TEXT_CHUNKS; i++) {
        const struct live_ent *e = &a->shown[i];
        fprintf(out, "  %#14" PRIxPTR " %8u bytes  %-12s %s\n", e->ptr, e->size,
                om_g.tag_names[e->tag < OSSL_MEM_MAX_TAGS ? e->tag : 0],
                om_site_str(e->site, site, sizeof site));
    }
}

static void report_json(FILE *out, const struct ossl_mem_stats *st, struct agg *a)
{
    char site[256];
    fprintf(out, "{\n  \"pid\": %ld,\n  \"totals\": {", (long)getpid());
    const char *sep = "";
#define X(f) fprintf(out, "%s\n    \"" #f "\": %" PRIu64, sep, st->f), sep = ",";
    STATS_FIELDS(X)
#undef X
    fprintf(out, "\n  },\n  \"tags\": [");
    unsigned nt = atomic_load(&om_g.ntags);
    for (unsigned t = 0; t < nt; t++) {
        fprintf(out, "%s\n    {\"name\": ", t ? "," : "");
        json_str(out, om_g.tag_names[t]);
        fprintf(out, ", \"live_bytes\": %" PRIu64 ", \"live_chunks\": %" PRIu64
                ", \"allocs\": %" PRIu64 "}", a->tag_bytes[t], a->tag_chunks[t],
                a->tag_allocs[t]);
    }
    fprintf(out, "\n  ],\n  \"top_sites\": [");
    for (uint32_t i = 0; i < a->nsites && i < TOP_SITES; i++) {
        uint16_t s = a->order[i];
        fprintf(out, "%s\n    {\"site\": ", i ? "," : "");
        json_str(out, om_site_str(s, site, sizeof site));
        fprintf(out, ", \"live_bytes\": %" PRIu64 ", \"chunks\": %u}", a->bytes[s], a->count[s]);
    }
    fprintf(out, "\n  ],\n  \"shared_sites\": [");
    for (uint32_t i = 0; i < a->sh_nsites && i < TOP_SITES; i++) {
        uint16_t s = a->sh_order[i];
        fprintf(out, "%s\n    {\"site\": ", i ? "," : "");
        json_str(out, om_site_str(s, site, sizeof site));
        fprintf(out, ", \"live_bytes\": %" PRIu64 ", \"chunks\": %u}", a->sh_bytes[s],
                a->sh_count[s]);
    }
    fprintf(out, "\n  ],\n  \"live_chunks\": {\"count\": %" PRIu64 ", \"listed\": [", a->nlive);
    for (uint64_t i = 0; i < a->nlive && i < MAX_CHUNKS; i++) {
        const struct live_ent *e = &a->shown[i];
        fprintf(out, "%s\n    {\"ptr\": \"%#" PRIxPTR "\", \"size\": %u, \"tag\": ",
                i ? "," : "", e->ptr, e->size);
        json_str(out, om_g.tag_names[e->tag < OSSL_MEM_MAX_TAGS ? e->tag : 0]);
        fprintf(out, ", \"site\": ");
        json_str(out, om_site_str(e->site, site, sizeof site));
        fputc('}', out);
    }
    fprintf(out, "\n  ]}\n}\n");
}

int ossl_mem_report(FILE *out, int format)
{
    if (!out || (format != OSSL_MEM_REPORT_TEXT && format != OSSL_MEM_REPORT_JSON))
        return OSSL_MEM_E_INVAL;
    struct ossl_mem_stats st;
    int rc = ossl_mem_get_stats(&st);
    if (rc)
        return rc;
    int saved = errno;
    struct agg *a = om_map(sizeof *a, false);
    if (!a)
        return OSSL_MEM_E_NOMEM;
    om_pool_walk(collect, a);
    om_large_walk(collect, a);
    struct om_tstat sum;
    uint64_t qb, qc, th;
    om_stats_sum(&sum, &qb, &qc, &th);
    memcpy(a->tag_allocs, sum.tag_allocs, sizeof a->tag_allocs);
    for (uint32_t s = 0; s < OM_NSITES; s++)
        if (a->count[s])
            a->order[a->nsites++] = (uint16_t)s;
    qsort_r(a->order, a->nsites, sizeof a->order[0], by_bytes, a->bytes);
    om_arena_walk(collect_shared, a);
    for (uint32_t s = 0; s < OM_NSITES; s++)
        if (a->sh_count[s])
            a->sh_order[a->sh_nsites++] = (uint16_t)s;
    qsort_r(a->sh_order, a->sh_nsites, sizeof a->sh_order[0], by_bytes, a->sh_bytes);
    if (format == OSSL_MEM_REPORT_TEXT)
        report_text(out, &st, a);
    else
        report_json(out, &st, a);
    fflush(out);
    munmap(a, sizeof *a);
    errno = saved;
    return 0;
}
