/* trace.h - binary format of the allocation traces written by replay_record and read by replay. */
#ifndef BENCH_TRACE_H
#define BENCH_TRACE_H

#include <stdint.h>
#include <string.h>

/*
 * Trace file format, version 1. All integers are little-endian, unsigned.
 *
 * Header, 64 bytes:
 *   off  0  8 bytes  magic "OMTRACE1"
 *   off  8  u32      version (1)
 *   off 12  u32      record size in bytes (16)
 *   off 16  u64      number of records (ops)
 *   off 24  u32      number of object ids (ids are 1..nids; 0 stands for NULL)
 *   off 28  u32      handshakes recorded (informational)
 *   off 32  u64      malloc records      (informational, for printing)
 *   off 40  u64      realloc records     (informational)
 *   off 48  u64      free records        (informational)
 *   off 56  u64      reserved, 0
 *
 * Then <number of records> records of 16 bytes, in call order:
 *   off  0  u32  op | line << 8: op in the low 8 bits (TR_MALLOC, TR_REALLOC,
 *                TR_FREE), OpenSSL's source line in the upper 24 bits
 *                (0 if it did not fit)
 *   off  4  u32  in:   the object passed in (realloc, free); 0 = NULL; 0 for malloc
 *   off  8  u32  out:  the object returned (malloc, realloc); 0 = NULL; 0 for free
 *   off 12  u32  size: bytes requested (malloc, realloc); 0 for free
 *
 * Object ids. Every pointer an allocator call returned gets an id when it
 * first appears, in trace order, densely from 1. An object keeps its id across
 * realloc, moved or not (out == in); realloc(NULL, n) creates a new id;
 * realloc(p, 0) frees p (out == 0). free(NULL) and realloc(NULL, n) are kept
 * as recorded (in == 0). An object that existed before recording started has
 * no id: its frees are left out of the trace and a realloc of it is recorded
 * as a malloc of the new size. So a trace replays safely: every non-zero in
 * names a live object and every created out is new. Objects still live at
 * the end of the trace are freed by the replayer, outside the timing.
 */
#define TR_MAGIC "OMTRACE1"
#define TR_VERSION 1u
#define TR_HEADER_SIZE 64u
#define TR_RECORD_SIZE 16u
#define TR_LINE_MAX 0xffffffu

enum tr_op { TR_MALLOC = 1, TR_REALLOC = 2, TR_FREE = 3 };

/* A record as held in memory (same four fields as on disk). */
struct tr_rec {
    uint32_t op_line; /* op | line << 8 */
    uint32_t in, out, size;
};

struct tr_header {
    uint64_t nops;
    uint32_t nids;
    uint32_t handshakes;
    uint64_t n_malloc, n_realloc, n_free;
};

static inline void tr_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void tr_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint32_t tr_get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static inline uint64_t tr_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Encodes *h into the 64 header bytes at b. */
static inline void tr_encode_header(unsigned char *b, const struct tr_header *h)
{
    memset(b, 0, TR_HEADER_SIZE);
    memcpy(b, TR_MAGIC, 8);
    tr_put32(b + 8, TR_VERSION);
    tr_put32(b + 12, TR_RECORD_SIZE);
    tr_put64(b + 16, h->nops);
    tr_put32(b + 24, h->nids);
    tr_put32(b + 28, h->handshakes);
    tr_put64(b + 32, h->n_malloc);
    tr_put64(b + 40, h->n_realloc);
    tr_put64(b + 48, h->n_free);
}

/* Decodes the 64 header bytes at b into *h; returns 0, or -1 if the magic,
 * version or record size is not the one this code reads. */
static inline int tr_decode_header(const unsigned char *b, struct tr_header *h)
{
    if (memcmp(b, TR_MAGIC, 8) != 0 || tr_get32(b + 8) != TR_VERSION ||
        tr_get32(b + 12) != TR_RECORD_SIZE)
        return -1;
    h->nops = tr_get64(b + 16);
    h->nids = tr_get32(b + 24);
    h->handshakes = tr_get32(b + 28);
    h->n_malloc = tr_get64(b + 32);
    h->n_realloc = tr_get64(b + 40);
    h->n_free = tr_get64(b + 48);
    return 0;
}

static inline void tr_encode_rec(unsigned char *b, const struct tr_rec *r)
{
    tr_put32(b, r->op_line);
    tr_put32(b + 4, r->in);
    tr_put32(b + 8, r->out);
    tr_put32(b + 12, r->size);
}

static inline void tr_decode_rec(const unsigned char *b, struct tr_rec *r)
{
    r->op_line = tr_get32(b);
    r->in = tr_get32(b + 4);
    r->out = tr_get32(b + 8);
    r->size = tr_get32(b + 12);
}

#endif /* BENCH_TRACE_H */
