/* gguf.c -- read a GGUF file (llama.cpp's model format, versions 2 and 3) into a
 * snap_src_model.
 *
 * Design notes
 *   The file layout (all little-endian):
 *     "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *     n_kv x     { string key | u32 value type | value }
 *     n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
 *     padding to general.alignment (default 32), then the data section; each tensor's
 *     offset is relative to the data section's start.
 *   A string is u64 length + bytes (no NUL); an array is u32 element type + u64 count +
 *   elements. Version 1 used 32-bit counts and is refused; v2 and v3 differ only in that
 *   v3 allows big-endian files, which we refuse too.
 *
 *   The bytes are untrusted (the parser is fuzzed), so reading happens in two phases:
 *   1. A structural pass walks the whole header with a bounds-checked cursor. It records
 *      where each key's value starts and each tensor's info, and proves every length,
 *      count, nesting depth and data extent lies inside the buffer. Counts are checked
 *      against the bytes left before anything is sized from them, so a lying count costs
 *      no memory and no time.
 *   2. A semantic pass looks values up by key and builds the model. It re-reads through
 *      the same checked cursor, so it cannot go out of bounds even if phase 1 had a bug.
 *   Every failure names the file, the key or tensor, and the byte offset at fault.
 *
 *   Tensor data and the key table point into the caller's buffer (or our read-only
 *   mapping, which the model owns); the vocab arrays, scores and chat template are
 *   copied into malloc'd memory the model owns, because GGUF does not align them. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum gguf_vtype {
    GV_U8 = 0, GV_I8 = 1, GV_U16 = 2, GV_I16 = 3, GV_U32 = 4, GV_I32 = 5, GV_F32 = 6,
    GV_BOOL = 7, GV_STR = 8, GV_ARR = 9, GV_U64 = 10, GV_I64 = 11, GV_F64 = 12, GV_COUNT
};

#define GGUF_HEADER_BYTES 24
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 8      /* deeper nesting is refused: it bounds our recursion */
#define GGUF_MIN_KV_BYTES 13        /* empty key (8) + type (4) + a 1-byte value */
#define GGUF_MIN_TENSOR_BYTES 33    /* 1-byte name (9) + n_dims + one ne + type + offset */

static const char *const vtype_names[GV_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

/* One metadata entry, as found by the structural pass. */
typedef struct gguf_kv {
    const char *key;
    size_t key_len;
    size_t rec_off;   /* byte offset of the entry (its key) in the file */
    size_t val_off;   /* byte offset of the value; for arrays, of the first element */
    uint32_t type;    /* enum gguf_vtype */
    uint32_t arr_type;
    uint64_t arr_n;
} gguf_kv;

typedef struct gguf_tinfo {
    const char *name;
    size_t name_len;
    size_t rec_off;   /* byte offset of the tensor info record */
    uint32_t n_dims;
    uint64_t ne[SNAP_MAX_DIMS]; /* innermost first, as GGUF stores it */
    uint32_t ggml_type;
    uint64_t offset;  /* relative to the data section */
} gguf_tinfo;

typedef struct gguf_ctx {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    const char *name; /* file name for messages */
    snap_err *err;
    char where[160];  /* what the cursor is reading, for truncation messages */
    gguf_kv *kv;
    size_t n_kv, cap_kv;
    gguf_tinfo *ti;
    size_t n_ti, cap_ti;
    size_t data_start;
    char arch[32];
} gguf_ctx;

/* ---- messages ------------------------------------------------------------------------ */

/* Names and keys come from the file: print them escaped and shortened so a hostile name
 * cannot fill the message or smuggle control characters into logs. */
static const char *esc(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0, limit = cap - 4;
    for (size_t i = 0; i < n && o < limit; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
        if (o == limit && i + 1 < n) {
            memcpy(out + o, "...", 3);
            o += 3;
        }
    }
    out[o] = 0;
    return out;
}

static void set_where(gguf_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_where(gguf_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->where, sizeof c->where, fmt, ap);
    va_end(ap);
}

/* ---- the bounds-checked cursor --------------------------------------------------------- */

static int need(gguf_ctx *c, uint64_t n)
{
    if (n > c->len - c->pos)
        return snap_fail(c->err, SNAP_EFORMAT,
                         "%s: %s: truncated at byte %zu (%llu bytes needed, %zu left)", c->name,
                         c->where, c->pos, (unsigned long long)n, c->len - c->pos);
    return 0;
}

static uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p)
{
    return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

static int rd_u32(gguf_ctx *c, uint32_t *v)
{
    int rc = need(c, 4);
    if (rc)
        return rc;
    *v = ld32(c->buf + c->pos);
    c->pos += 4;
    return 0;
}

static int rd_u64(gguf_ctx *c, uint64_t *v)
{
    int rc = need(c, 8);
    if (rc)
        return rc;
    *v = ld64(c->buf + c->pos);
    c->pos += 8;
    return 0;
}

static int rd_str(gguf_ctx *c, const char **s, size_t *n)
{
    uint64_t len;
    int rc = rd_u64(c, &len);
    if (rc)
        return rc;
    if ((rc = need(c, len)))
        return rc;
    *s = (const char *)c->buf + c->pos;
    *n = (size_t)len;
    c->pos += (size_t)len;
    return 0;
}

/* Bytes of a fixed-size value type; 0 for string, array and unknown types. */
static size_t scalar_bytes(uint32_t t)
{
    switch (t) {
    case GV_U8: case GV_I8: case GV_BOOL: return 1;
    case GV_U16: case GV_I16: return 2;
    case GV_U32: case GV_I32: case GV_F32: return 4;
    case GV_U64: case GV_I64: case GV_F64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(uint32_t t)
{
    return t < GV_COUNT ? vtype_names[t] : "unknown";
}

/* Step over a value of type t. Arrays recurse at most GGUF_MAX_ARRAY_DEPTH deep, and
 * each array element consumes at least one byte of input, so the work is linear. */
static int skip_value(gguf_ctx *c, uint32_t t, int depth)
{
    size_t sz = scalar_bytes(t);
    if (sz) {
        int rc = need(c, sz);
        if (rc)
            return rc;
        c->pos += sz;
        return 0;
    }
    if (t == GV_STR) {
        const char *s;
        size_t n;
        return rd_str(c, &s, &n);
    }
    if (t != GV_ARR)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: %s: unknown value type %u at byte %zu",
                         c->name, c->where, t, c->pos - 4);
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: %s: arrays nested deeper than %d at byte %zu",
                         c->name, c->where, GGUF_MAX_ARRAY_DEPTH, c->pos);
    uint32_t et;
    uint64_t n;
    int rc;
    size_t at = c->pos;
    if ((rc = rd_u32(c, &et)) || (rc = rd_u64(c, &n)))
        return rc;
    size_t left = c->len - c->pos;
    size_t esz = scalar_bytes(et);
    if (esz) {
        if (n > left / esz)
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: %s: array at byte %zu claims %llu x %s, only %zu bytes left",
                             c->name, c->where, at, (unsigned long long)n, vtype_name(et), left);
        c->pos += (size_t)n * esz;
        return 0;
    }
    if (et != GV_STR && et != GV_ARR)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: %s: array at byte %zu has unknown element type %u",
                         c->name, c->where, at, et);
    /* a string element takes >= 8 bytes, a nested array >= 12 */
    uint64_t min_elem = et == GV_STR ? 8 : 12;
    if (n > left / min_elem)
        return snap_fail(c->err, SNAP_EFORMAT,
                         "%s: %s: array at byte %zu claims %llu %ss, only %zu bytes left", c->name,
                         c->where, at, (unsigned long long)n, vtype_name(et), left);
    for (uint64_t i = 0; i < n; i++)
        if ((rc = skip_value(c, et, depth + 1)))
            return rc;
    return 0;
}

/* ---- phase 1: structure ----------------------------------------------------------------- */

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return SNAP_ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

typedef struct name_ref {
    const char *s;
    size_t n;
    size_t off;
} name_ref;

static int name_ref_cmp(const void *a, const void *b)
{
    const name_ref *x = a, *y = b;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    int r = memcmp(x->s, y->s, x->n);
    if (r)
        return r;
    return x->off < y->off ? -1 : x->off > y->off; /* stable: report the later record */
}

/* Duplicate keys or tensor names make lookups ambiguous; ggml refuses them too. Sorting
 * keeps this O(n log n) whatever count a hostile file claims. */
static int check_unique(gguf_ctx *c, name_ref *refs, size_t n, const char *what)
{
    if (n < 2)
        return 0;
    qsort(refs, n, sizeof *refs, name_ref_cmp);
    for (size_t i = 1; i < n; i++) {
        if (refs[i].n == refs[i - 1].n && memcmp(refs[i].s, refs[i - 1].s, refs[i].n) == 0) {
            char e[80];
            return snap_fail(c->err, SNAP_EFORMAT, "%s: %s '%s' at byte %zu is a duplicate", c->name,
                             what, esc(e, sizeof e, refs[i].s, refs[i].n), refs[i].off);
        }
    }
    return 0;
}

static int parse_kvs(gguf_ctx *c, uint64_t n_kv)
{
    int rc;
    if (n_kv > (c->len - c->pos) / GGUF_MIN_KV_BYTES)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: header claims %llu metadata keys, only %zu bytes follow",
                         c->name, (unsigned long long)n_kv, c->len - c->pos);
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv kv = {0};
        char e[80];
        kv.rec_off = c->pos;
        set_where(c, "metadata entry %llu (at byte %zu)", (unsigned long long)i, c->pos);
        if ((rc = rd_str(c, &kv.key, &kv.key_len)))
            return rc;
        set_where(c, "key '%s' (at byte %zu)", esc(e, sizeof e, kv.key, kv.key_len), kv.rec_off);
        if ((rc = rd_u32(c, &kv.type)))
            return rc;
        kv.val_off = c->pos;
        if (kv.type == GV_ARR) {
            /* remember the element type and count, then let skip_value check the rest */
            if ((rc = rd_u32(c, &kv.arr_type)) || (rc = rd_u64(c, &kv.arr_n)))
                return rc;
            kv.val_off = c->pos;
            c->pos -= 12;
        }
        if ((rc = skip_value(c, kv.type, 0)))
            return rc;
        if ((rc = grow((void **)&c->kv, &c->cap_kv, c->n_kv, sizeof *c->kv)))
            return snap_fail(c->err, rc, "%s: out of memory reading metadata", c->name);
        c->kv[c->n_kv++] = kv;
    }
    return 0;
}

static int parse_tensor_infos(gguf_ctx *c, uint64_t n_tensors)
{
    int rc;
    if (n_tensors > (c->len - c->pos) / GGUF_MIN_TENSOR_BYTES)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: header claims %llu tensors, only %zu bytes follow",
                         c->name, (unsigned long long)n_tensors, c->len - c->pos);
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tinfo t = {0};
        char e[80];
        t.rec_off = c->pos;
        set_where(c, "tensor info %llu (at byte %zu)", (unsigned long long)i, c->pos);
        if ((rc = rd_str(c, &t.name, &t.name_len)))
            return rc;
        esc(e, sizeof e, t.name, t.name_len);
        if (t.name_len == 0 || t.name_len >= SNAP_NAME_MAX || memchr(t.name, 0, t.name_len))
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: tensor info %llu at byte %zu: invalid name '%s' (%zu bytes; 1..%d, no NUL)",
                             c->name, (unsigned long long)i, t.rec_off, e, t.name_len, SNAP_NAME_MAX - 1);
        set_where(c, "tensor '%s' (info at byte %zu)", e, t.rec_off);
        if ((rc = rd_u32(c, &t.n_dims)))
            return rc;
        if (t.n_dims < 1 || t.n_dims > SNAP_MAX_DIMS)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: tensor '%s' (info at byte %zu): %u dimensions (1..%d)",
                             c->name, e, t.rec_off, t.n_dims, SNAP_MAX_DIMS);
        for (uint32_t d = 0; d < t.n_dims; d++)
            if ((rc = rd_u64(c, &t.ne[d])))
                return rc;
        if ((rc = rd_u32(c, &t.ggml_type)) || (rc = rd_u64(c, &t.offset)))
            return rc;
        if ((rc = grow((void **)&c->ti, &c->cap_ti, c->n_ti, sizeof *c->ti)))
            return snap_fail(c->err, rc, "%s: out of memory reading tensor infos", c->name);
        c->ti[c->n_ti++] = t;
    }
    return 0;
}

static int parse_structure(gguf_ctx *c)
{
    int rc;
    set_where(c, "header");
    if ((rc = need(c, 4)))
        return rc;
    if (memcmp(c->buf, "GGUF", 4) != 0)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: not a GGUF file (bad magic at byte 0)", c->name);
    c->pos = 4;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if ((rc = rd_u32(c, &version)))
        return rc;
    if (version != 2 && version != 3) {
        if ((version & 0xffff) == 0 && (version >> 24) >= 1 && (version >> 24) <= 3)
            return snap_fail(c->err, SNAP_EVERSION, "%s: big-endian GGUF (version bytes at byte 4) is not supported",
                             c->name);
        return snap_fail(c->err, SNAP_EVERSION, "%s: GGUF version %u at byte 4 is not supported (2 or 3)",
                         c->name, version);
    }
    if ((rc = rd_u64(c, &n_tensors)) || (rc = rd_u64(c, &n_kv)))
        return rc;
    if ((rc = parse_kvs(c, n_kv)) || (rc = parse_tensor_infos(c, n_tensors)))
        return rc;

    /* uniqueness of keys and of tensor names */
    size_t n_refs = c->n_kv > c->n_ti ? c->n_kv : c->n_ti;
    name_ref *refs = malloc((n_refs ? n_refs : 1) * sizeof *refs);
    if (!refs)
        return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory", c->name);
    for (size_t i = 0; i < c->n_kv; i++)
        refs[i] = (name_ref){c->kv[i].key, c->kv[i].key_len, c->kv[i].rec_off};
    rc = check_unique(c, refs, c->n_kv, "key");
    if (!rc) {
        for (size_t i = 0; i < c->n_ti; i++)
            refs[i] = (name_ref){c->ti[i].name, c->ti[i].name_len, c->ti[i].rec_off};
        rc = check_unique(c, refs, c->n_ti, "tensor");
    }
    free(refs);
    return rc;
}

/* ---- phase 2: typed access to metadata ------------------------------------------------------ */

static const gguf_kv *kv_find(const gguf_ctx *c, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < c->n_kv; i++)
        if (c->kv[i].key_len == n && memcmp(c->kv[i].key, key, n) == 0)
            return &c->kv[i];
    return NULL;
}

static int type_error(gguf_ctx *c, const gguf_kv *kv, const char *key, const char *expected)
{
    if (kv->type == GV_ARR)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key '%s' at byte %zu: expected %s, found array of %s",
                         c->name, key, kv->rec_off, expected, vtype_name(kv->arr_type));
    return snap_fail(c->err, SNAP_EFORMAT, "%s: key '%s' at byte %zu: expected %s, found %s", c->name,
                     key, kv->rec_off, expected, vtype_name(kv->type));
}

/* An integer of any GGUF integer type at p. Returns false for non-integer types. u64
 * values above INT64_MAX saturate, which every caller rejects as out of range. */
static bool ld_int(const uint8_t *p, uint32_t t, int64_t *v)
{
    switch (t) {
    case GV_U8: *v = p[0]; return true;
    case GV_I8: *v = (int8_t)p[0]; return true;
    case GV_U16: *v = (uint16_t)(p[0] | p[1] << 8); return true;
    case GV_I16: *v = (int16_t)(uint16_t)(p[0] | p[1] << 8); return true;
    case GV_U32: *v = ld32(p); return true;
    case GV_I32: *v = (int32_t)ld32(p); return true;
    case GV_U64: {
        uint64_t u = ld64(p);
        *v = u > INT64_MAX ? INT64_MAX : (int64_t)u;
        return true;
    }
    case GV_I64: *v = (int64_t)ld64(p); return true;
    default: return false;
    }
}

static bool ld_float(const uint8_t *p, uint32_t t, double *v)
{
    int64_t i;
    if (t == GV_F32) {
        uint32_t u = ld32(p);
        float f;
        memcpy(&f, &u, sizeof f);
        *v = f;
        return true;
    }
    if (t == GV_F64) {
        uint64_t u = ld64(p);
        memcpy(v, &u, sizeof *v);
        return true;
    }
    if (ld_int(p, t, &i)) {
        *v = (double)i;
        return true;
    }
    return false;
}

/* The getters leave *out alone when the key is absent and not required, so callers set
 * the default first. They return 0, or SNAP_EFORMAT naming the key. */
static int get_int(gguf_ctx *c, const char *key, int64_t lo, int64_t hi, int64_t *out, bool required)
{
    const gguf_kv *kv = kv_find(c, key);
    if (!kv) {
        if (required)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: missing key '%s'", c->name, key);
        return 0;
    }
    int64_t v;
    if (kv->type == GV_ARR || !ld_int(c->buf + kv->val_off, kv->type, &v))
        return type_error(c, kv, key, "an integer");
    if (v < lo || v > hi)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key '%s' at byte %zu: value %lld out of range %lld..%lld",
                         c->name, key, kv->rec_off, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

static int get_u32(gguf_ctx *c, const char *key, uint32_t *out, bool required)
{
    int64_t v = *out;
    int rc = get_int(c, key, 0, UINT32_MAX, &v, required);
    *out = (uint32_t)v;
    return rc;
}

static int get_f32(gguf_ctx *c, const char *key, float *out, bool required)
{
    const gguf_kv *kv = kv_find(c, key);
    if (!kv) {
        if (required)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: missing key '%s'", c->name, key);
        return 0;
    }
    double v;
    if (kv->type == GV_ARR || !ld_float(c->buf + kv->val_off, kv->type, &v))
        return type_error(c, kv, key, "a number");
    if (!isfinite(v) || fabs(v) > FLT_MAX)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key '%s' at byte %zu: value %g is not a finite f32",
                         c->name, key, kv->rec_off, v);
    *out = (float)v;
    return 0;
}

static int get_bool(gguf_ctx *c, const char *key, uint8_t *out)
{
    const gguf_kv *kv = kv_find(c, key);
    if (!kv)
        return 0;
    int64_t v;
    if (kv->type == GV_BOOL)
        v = c->buf[kv->val_off];
    else if (kv->type == GV_ARR || !ld_int(c->buf + kv->val_off, kv->type, &v))
        return type_error(c, kv, key, "a bool");
    *out = v != 0;
    return 0;
}

/* *s is NULL when the key is absent and not required. */
static int get_str(gguf_ctx *c, const char *key, const char **s, size_t *n, bool required)
{
    const gguf_kv *kv = kv_find(c, key);
    *s = NULL;
    *n = 0;
    if (!kv) {
        if (required)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: missing key '%s'", c->name, key);
        return 0;
    }
    if (kv->type != GV_STR)
        return type_error(c, kv, key, "a string");
    c->pos = kv->val_off;
    set_where(c, "key '%s' (at byte %zu)", key, kv->rec_off);
    return rd_str(c, s, n);
}

static bool str_is(const char *s, size_t n, const char *lit)
{
    return s && n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* An array key with its element type checked; NULL (and rc 0) when absent. */
static const gguf_kv *get_array(gguf_ctx *c, const char *key, uint32_t elem_type, int *rc)
{
    const gguf_kv *kv = kv_find(c, key);
    *rc = 0;
    if (!kv)
        return NULL;
    bool ok = kv->type == GV_ARR &&
              (kv->arr_type == elem_type || (elem_type == GV_I32 && scalar_bytes(kv->arr_type) &&
                                             kv->arr_type != GV_F32 && kv->arr_type != GV_F64 &&
                                             kv->arr_type != GV_BOOL));
    if (!ok) {
        char what[40];
        snprintf(what, sizeof what, "an array of %s", elem_type == GV_I32 ? "integers" : vtype_name(elem_type));
        *rc = type_error(c, kv, key, what);
        return NULL;
    }
    return kv;
}

/* ---- phase 2: the model ------------------------------------------------------------------ */

static int own(gguf_ctx *c, snap_src_model *m, void *p)
{
    if (!p)
        return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory", c->name);
    if (snap_src_own(m, p) != 0) {
        free(p);
        return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory", c->name);
    }
    return 0;
}

static int read_config(gguf_ctx *c, snap_src_model *m)
{
    snap_config *cfg = &m->config;
    const char *s;
    size_t n;
    char key[96], e[80];
    int rc;

    if ((rc = get_str(c, "general.architecture", &s, &n, true)))
        return rc;
    if (str_is(s, n, "llama")) {
        cfg->arch = SNAP_ARCH_LLAMA;
        cfg->rope_style = SNAP_ROPE_NORM; /* convert_hf_to_gguf pre-permutes Q/K for this */
    } else if (str_is(s, n, "qwen2")) {
        cfg->arch = SNAP_ARCH_QWEN2;
        cfg->rope_style = SNAP_ROPE_NEOX;
        cfg->flags |= SNAP_FLAG_QKV_BIAS;
    } else {
        return snap_fail(c->err, SNAP_EUNSUPPORTED, "%s: unsupported architecture '%s' (supported: llama, qwen2)",
                         c->name, esc(e, sizeof e, s, n));
    }
    memcpy(c->arch, s, n); /* n is 5 here */
    c->arch[n] = 0;

#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, c->arch), key)
    if ((rc = get_u32(c, ARCH_KEY("block_count"), &cfg->n_layer, true)) ||
        (rc = get_u32(c, ARCH_KEY("context_length"), &cfg->n_ctx_train, true)) ||
        (rc = get_u32(c, ARCH_KEY("embedding_length"), &cfg->n_embd, true)) ||
        (rc = get_u32(c, ARCH_KEY("feed_forward_length"), &cfg->n_ff, true)) ||
        (rc = get_u32(c, ARCH_KEY("attention.head_count"), &cfg->n_head, true)))
        return rc;
    if (cfg->n_head == 0)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key '%s' is 0", c->name, ARCH_KEY("attention.head_count"));
    cfg->n_head_kv = cfg->n_head;
    if ((rc = get_u32(c, ARCH_KEY("attention.head_count_kv"), &cfg->n_head_kv, false)))
        return rc;
    cfg->rope_theta = 10000.0f;
    if ((rc = get_f32(c, ARCH_KEY("rope.freq_base"), &cfg->rope_theta, false)) ||
        (rc = get_f32(c, ARCH_KEY("attention.layer_norm_rms_epsilon"), &cfg->rms_eps, true)))
        return rc;

    /* head_dim: explicit key_length, else the even split of the embedding */
    if (kv_find(c, ARCH_KEY("attention.key_length"))) {
        if ((rc = get_u32(c, key, &cfg->head_dim, true)))
            return rc;
    } else {
        if (cfg->n_embd % cfg->n_head != 0)
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: embedding_length %u is not a multiple of head_count %u and there is no key_length",
                             c->name, cfg->n_embd, cfg->n_head);
        cfg->head_dim = cfg->n_embd / cfg->n_head;
    }
    uint32_t v_dim = cfg->head_dim, rot_dim = cfg->head_dim;
    if ((rc = get_u32(c, ARCH_KEY("attention.value_length"), &v_dim, false)))
        return rc;
    if (v_dim != cfg->head_dim)
        return snap_fail(c->err, SNAP_EUNSUPPORTED, "%s: value_length %u differs from key_length %u",
                         c->name, v_dim, cfg->head_dim);
    if ((rc = get_u32(c, ARCH_KEY("rope.dimension_count"), &rot_dim, false)))
        return rc;
    if (rot_dim != cfg->head_dim)
        return snap_fail(c->err, SNAP_EUNSUPPORTED,
                         "%s: partial rotary embedding (rope.dimension_count %u, head_dim %u) is not supported",
                         c->name, rot_dim, cfg->head_dim);

    /* RoPE scaling. Llama 3 style scaling arrives as a rope_freqs.weight tensor instead,
     * which we keep as a tensor and leave the scaling NONE. */
    cfg->rope_scaling = SNAP_ROPE_SCALING_NONE;
    cfg->rope_factor = 1.0f;
    if ((rc = get_str(c, ARCH_KEY("rope.scaling.type"), &s, &n, false)))
        return rc;
    if (s && str_is(s, n, "linear")) {
        cfg->rope_scaling = SNAP_ROPE_SCALING_LINEAR;
        if ((rc = get_f32(c, ARCH_KEY("rope.scaling.factor"), &cfg->rope_factor, false)))
            return rc;
    } else if (s && !str_is(s, n, "none")) {
        return snap_fail(c->err, SNAP_EUNSUPPORTED, "%s: key '%s': rope scaling '%s' is not supported (none, linear)",
                         c->name, ARCH_KEY("rope.scaling.type"), esc(e, sizeof e, s, n));
    } else if (!s && kv_find(c, ARCH_KEY("rope.scale_linear"))) {
        /* the key older converters wrote */
        if ((rc = get_f32(c, key, &cfg->rope_factor, true)))
            return rc;
        if (cfg->rope_factor != 1.0f)
            cfg->rope_scaling = SNAP_ROPE_SCALING_LINEAR;
    }
    if (!(cfg->rope_factor > 0.0f))
        return snap_fail(c->err, SNAP_EFORMAT, "%s: rope scaling factor %g is not positive", c->name,
                         (double)cfg->rope_factor);
#undef ARCH_KEY

    /* display name: general.name, else left empty for the packer's override/default */
    if ((rc = get_str(c, "general.name", &s, &n, false)))
        return rc;
    if (s) {
        const char *nul = memchr(s, 0, n);
        if (nul)
            n = (size_t)(nul - s);
        if (n > sizeof cfg->name - 1)
            n = sizeof cfg->name - 1;
        memcpy(cfg->name, s, n);
        cfg->name[n] = 0;
    }
    return 0;
}

/* Copy the string array tokenizer.ggml.tokens into offsets + blob. */
static int read_tokens(gguf_ctx *c, snap_src_model *m, const gguf_kv *kv)
{
    snap_vocab *v = &m->vocab;
    int rc;
    if (kv->arr_n == 0 || kv->arr_n > INT32_MAX)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key 'tokenizer.ggml.tokens' at byte %zu: %llu tokens",
                         c->name, kv->rec_off, (unsigned long long)kv->arr_n);
    uint32_t n_tok = (uint32_t)kv->arr_n;
    /* first pass: total bytes, which must fit the 32-bit offsets */
    uint64_t total = 0;
    c->pos = kv->val_off;
    for (uint32_t i = 0; i < n_tok; i++) {
        const char *s;
        size_t n;
        set_where(c, "key 'tokenizer.ggml.tokens' token %u (at byte %zu)", i, c->pos);
        if ((rc = rd_str(c, &s, &n)))
            return rc;
        total += n;
    }
    if (total > UINT32_MAX)
        return snap_fail(c->err, SNAP_EUNSUPPORTED, "%s: key 'tokenizer.ggml.tokens': %llu bytes of token text (max 4 GiB)",
                         c->name, (unsigned long long)total);
    uint32_t *offsets = malloc(((size_t)n_tok + 1) * sizeof *offsets);
    if ((rc = own(c, m, offsets)))
        return rc;
    char *blob = malloc(total ? (size_t)total : 1);
    if ((rc = own(c, m, blob)))
        return rc;
    c->pos = kv->val_off;
    uint32_t o = 0;
    for (uint32_t i = 0; i < n_tok; i++) {
        const char *s;
        size_t n;
        if ((rc = rd_str(c, &s, &n)))
            return rc;
        offsets[i] = o;
        memcpy(blob + o, s, n);
        o += (uint32_t)n;
    }
    offsets[n_tok] = o;
    v->n_tokens = n_tok;
    v->offsets = offsets;
    v->blob = blob;
    return 0;
}

static int read_scores_and_types(gguf_ctx *c, snap_src_model *m)
{
    snap_vocab *v = &m->vocab;
    int rc;
    const gguf_kv *kv = get_array(c, "tokenizer.ggml.scores", GV_F32, &rc);
    if (rc)
        return rc;
    if (kv) {
        if (kv->arr_n != v->n_tokens)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: key 'tokenizer.ggml.scores' at byte %zu: %llu scores for %u tokens",
                             c->name, kv->rec_off, (unsigned long long)kv->arr_n, v->n_tokens);
        float *scores = malloc((size_t)v->n_tokens * sizeof *scores);
        if ((rc = own(c, m, scores)))
            return rc;
        for (uint32_t i = 0; i < v->n_tokens; i++) {
            uint32_t u = ld32(c->buf + kv->val_off + (size_t)i * 4);
            memcpy(&scores[i], &u, sizeof u);
        }
        v->scores = scores;
    }

    uint8_t *types = malloc(v->n_tokens);
    if ((rc = own(c, m, types)))
        return rc;
    memset(types, SNAP_TOKT_NORMAL, v->n_tokens);
    v->types = types;
    kv = get_array(c, "tokenizer.ggml.token_type", GV_I32, &rc);
    if (rc)
        return rc;
    if (kv) {
        if (kv->arr_n != v->n_tokens)
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: key 'tokenizer.ggml.token_type' at byte %zu: %llu types for %u tokens", c->name,
                             kv->rec_off, (unsigned long long)kv->arr_n, v->n_tokens);
        size_t esz = scalar_bytes(kv->arr_type);
        for (uint32_t i = 0; i < v->n_tokens; i++) {
            int64_t t = 0;
            ld_int(c->buf + kv->val_off + (size_t)i * esz, kv->arr_type, &t);
            if (t < 0 || t > SNAP_TOKT_BYTE)
                return snap_fail(c->err, SNAP_EFORMAT,
                                 "%s: key 'tokenizer.ggml.token_type' at byte %zu: token %u has type %lld (0..6)",
                                 c->name, kv->rec_off, i, (long long)t);
            /* 0 is GGUF's "undefined"; the tokenizer treats such tokens as normal text */
            types[i] = t == 0 ? SNAP_TOKT_NORMAL : (uint8_t)t;
        }
    }
    return 0;
}

/* Merges are "left right" strings in rank order; we store them as token id pairs. The
 * separator is the first space after the first byte, as llama.cpp splits them. */
static int read_merges(gguf_ctx *c, snap_src_model *m)
{
    snap_vocab *v = &m->vocab;
    int rc;
    const gguf_kv *kv = get_array(c, "tokenizer.ggml.merges", GV_STR, &rc);
    if (rc || !kv || kv->arr_n == 0)
        return rc;
    if (kv->arr_n > UINT32_MAX / 2)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key 'tokenizer.ggml.merges': %llu merges", c->name,
                         (unsigned long long)kv->arr_n);
    uint32_t n_merges = (uint32_t)kv->arr_n;
    uint32_t *pairs = malloc((size_t)n_merges * 2 * sizeof *pairs);
    if ((rc = own(c, m, pairs)))
        return rc;
    snap_strmap map;
    memset(&map, 0, sizeof map);
    if (snap_strmap_build(&map, v->offsets, v->blob, v->n_tokens) != 0)
        return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory indexing the vocabulary", c->name);
    c->pos = kv->val_off;
    for (uint32_t i = 0; i < n_merges; i++) {
        const char *s;
        size_t n;
        char e[80];
        size_t at = c->pos;
        set_where(c, "key 'tokenizer.ggml.merges' merge %u (at byte %zu)", i, at);
        if ((rc = rd_str(c, &s, &n)))
            goto out;
        const char *sp = n > 1 ? memchr(s + 1, ' ', n - 1) : NULL;
        if (!sp) {
            rc = snap_fail(c->err, SNAP_EFORMAT, "%s: key 'tokenizer.ggml.merges' merge %u at byte %zu: '%s' has no space",
                           c->name, i, at, esc(e, sizeof e, s, n));
            goto out;
        }
        size_t ln = (size_t)(sp - s);
        int32_t l = snap_strmap_get(&map, s, ln);
        int32_t r = snap_strmap_get(&map, sp + 1, n - ln - 1);
        if (l < 0 || r < 0) {
            rc = snap_fail(c->err, SNAP_EFORMAT,
                           "%s: key 'tokenizer.ggml.merges' merge %u at byte %zu: '%s' names a token not in the vocabulary",
                           c->name, i, at, esc(e, sizeof e, s, n));
            goto out;
        }
        pairs[2 * i] = (uint32_t)l;
        pairs[2 * i + 1] = (uint32_t)r;
    }
    v->merges = pairs;
    v->n_merges = n_merges;
out:
    snap_strmap_free(&map);
    return rc;
}

/* A special token id, or -1 when absent. Ids outside the vocabulary are dropped rather
 * than refused: llama.cpp loads such files (with a warning) and so should we. */
static int get_token_id(gguf_ctx *c, const char *key, uint32_t n_tokens, int32_t *out)
{
    int64_t id = -1;
    int rc = get_int(c, key, INT64_MIN, INT64_MAX, &id, false);
    *out = (id >= 0 && id < (int64_t)n_tokens) ? (int32_t)id : -1;
    return rc;
}

static int read_tokenizer(gguf_ctx *c, snap_src_model *m)
{
    snap_vocab *v = &m->vocab;
    const char *s;
    size_t n;
    char e[80];
    int rc;

    if ((rc = get_str(c, "tokenizer.ggml.model", &s, &n, true)))
        return rc;
    if (str_is(s, n, "gpt2"))
        v->model = SNAP_TOK_BPE;
    else if (str_is(s, n, "llama"))
        v->model = SNAP_TOK_SPM;
    else
        return snap_fail(c->err, SNAP_EUNSUPPORTED,
                         "%s: key 'tokenizer.ggml.model': tokenizer '%s' is not supported (gpt2, llama)", c->name,
                         esc(e, sizeof e, s, n));

    if ((rc = get_str(c, "tokenizer.ggml.pre", &s, &n, false)))
        return rc;
    if (v->model == SNAP_TOK_SPM)
        v->pre = SNAP_PRE_NONE; /* SentencePiece has no regex pre-tokenizer */
    else if (!s || str_is(s, n, "default") || str_is(s, n, "gpt-2"))
        v->pre = SNAP_PRE_GPT2;
    else if (str_is(s, n, "smollm"))
        v->pre = SNAP_PRE_SMOLLM;
    else if (str_is(s, n, "llama-bpe") || str_is(s, n, "llama3"))
        v->pre = SNAP_PRE_LLAMA3;
    else if (str_is(s, n, "qwen2"))
        v->pre = SNAP_PRE_QWEN2;
    else
        return snap_fail(c->err, SNAP_EUNSUPPORTED,
                         "%s: key 'tokenizer.ggml.pre': pre-tokenizer '%s' is not supported "
                         "(gpt-2, default, smollm, llama-bpe, llama3, qwen2)",
                         c->name, esc(e, sizeof e, s, n));

    const gguf_kv *kv = get_array(c, "tokenizer.ggml.tokens", GV_STR, &rc);
    if (rc)
        return rc;
    if (!kv)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: missing key 'tokenizer.ggml.tokens'", c->name);
    if ((rc = read_tokens(c, m, kv)) || (rc = read_scores_and_types(c, m)) || (rc = read_merges(c, m)))
        return rc;

    if ((rc = get_token_id(c, "tokenizer.ggml.bos_token_id", v->n_tokens, &v->bos_id)) ||
        (rc = get_token_id(c, "tokenizer.ggml.eos_token_id", v->n_tokens, &v->eos_id)) ||
        (rc = get_token_id(c, "tokenizer.ggml.eot_token_id", v->n_tokens, &v->eot_id)) ||
        (rc = get_token_id(c, "tokenizer.ggml.unknown_token_id", v->n_tokens, &v->unk_id)) ||
        (rc = get_token_id(c, "tokenizer.ggml.padding_token_id", v->n_tokens, &v->pad_id)))
        return rc;
    v->add_bos = v->model == SNAP_TOK_SPM;
    v->add_eos = 0;
    v->add_space_prefix = v->model == SNAP_TOK_SPM;
    if ((rc = get_bool(c, "tokenizer.ggml.add_bos_token", &v->add_bos)) ||
        (rc = get_bool(c, "tokenizer.ggml.add_eos_token", &v->add_eos)) ||
        (rc = get_bool(c, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix)))
        return rc;

    if ((rc = get_str(c, "tokenizer.chat_template", &s, &n, false)))
        return rc;
    if (s) {
        /* not in `owned`: snap_src_free releases chat_template itself */
        free(m->chat_template);
        m->chat_template = malloc(n + 1);
        if (!m->chat_template)
            return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory", c->name);
        memcpy(m->chat_template, s, n);
        m->chat_template[n] = 0;
    }
    return 0;
}

/* Generation defaults: GGUF only carries the model's recommendations in the optional
 * general.sampling.* keys; everything else stays "not set". The end-of-turn token, when
 * it is not eos itself, must stop generation too. */
static int read_gen_defaults(gguf_ctx *c, snap_src_model *m)
{
    snap_gen_defaults *g = &m->gen;
    int rc;
    int64_t top_k = -1;
    g->temperature = NAN;
    g->top_p = NAN;
    g->top_k = -1;
    g->repetition_penalty = NAN;
    g->n_stop_ids = 0;
    if ((rc = get_f32(c, "general.sampling.temp", &g->temperature, false)) ||
        (rc = get_f32(c, "general.sampling.top_p", &g->top_p, false)) ||
        (rc = get_f32(c, "general.sampling.penalty_repeat", &g->repetition_penalty, false)) ||
        (rc = get_int(c, "general.sampling.top_k", 0, INT32_MAX, &top_k, false)))
        return rc;
    g->top_k = (int32_t)top_k;
    if (m->vocab.eot_id >= 0 && m->vocab.eot_id != m->vocab.eos_id)
        g->stop_ids[g->n_stop_ids++] = m->vocab.eot_id;
    return 0;
}

static const char *const ggml_type_names[] = {
    "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
    "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
    "IQ4_NL_8_8", "MXFP4",
};

static int src_type_of(uint32_t ggml_type)
{
    switch (ggml_type) {
    case 0: return SRC_F32;
    case 1: return SRC_F16;
    case 2: return SRC_Q4_0;
    case 3: return SRC_Q4_1;
    case 8: return SRC_Q8_0;
    case 12: return SRC_Q4_K;
    case 14: return SRC_Q6_K;
    case 30: return SRC_BF16;
    default: return -1;
    }
}

static int read_tensors(gguf_ctx *c, snap_src_model *m)
{
    size_t data_len = c->len - c->data_start;
    bool has_output = false;
    for (size_t i = 0; i < c->n_ti; i++) {
        const gguf_tinfo *t = &c->ti[i];
        snap_src_tensor st;
        memset(&st, 0, sizeof st);
        memcpy(st.name, t->name, t->name_len); /* < SNAP_NAME_MAX, checked in phase 1 */

        int type = src_type_of(t->ggml_type);
        if (type < 0) {
            const char *tn = t->ggml_type < sizeof ggml_type_names / sizeof *ggml_type_names
                                 ? ggml_type_names[t->ggml_type] : "unknown";
            return snap_fail(c->err, SNAP_EUNSUPPORTED,
                             "%s: tensor '%s' (info at byte %zu): ggml type %s (%u) is not supported "
                             "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                             c->name, st.name, t->rec_off, tn, t->ggml_type);
        }
        uint64_t n_elems = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = t->ne[d];
            if (ne > INT64_MAX || (ne != 0 && n_elems > (uint64_t)INT64_MAX / ne))
                return snap_fail(c->err, SNAP_EFORMAT,
                                 "%s: tensor '%s' (info at byte %zu): element count overflows", c->name,
                                 st.name, t->rec_off);
            n_elems *= ne;
        }
        uint32_t be = snap_src_block_elems((uint32_t)type);
        if (t->ne[0] % be != 0)
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: tensor '%s' (info at byte %zu): rows of %llu elements are not whole %s blocks of %u",
                             c->name, st.name, t->rec_off, (unsigned long long)t->ne[0],
                             snap_src_type_name((uint32_t)type), be);
        uint64_t n_bytes;
        if (__builtin_mul_overflow(n_elems / be, (uint64_t)snap_src_block_bytes((uint32_t)type), &n_bytes))
            n_bytes = UINT64_MAX; /* past any file: refused just below */
        if (t->offset > data_len || n_bytes > data_len - t->offset)
            return snap_fail(c->err, SNAP_EFORMAT,
                             "%s: tensor '%s' (info at byte %zu): data [%llu, +%llu) past the end of the file "
                             "(data section at byte %zu, %zu bytes)",
                             c->name, st.name, t->rec_off, (unsigned long long)t->offset,
                             (unsigned long long)n_bytes, c->data_start, data_len);
        st.type = (uint32_t)type;
        st.n_dims = t->n_dims;
        for (uint32_t d = 0; d < t->n_dims; d++)
            st.shape[d] = t->ne[t->n_dims - 1 - d]; /* GGUF lists innermost first */
        st.data = c->buf + c->data_start + t->offset;
        st.n_bytes = n_bytes;
        if (strcmp(st.name, "output.weight") == 0)
            has_output = true;
        if (snap_src_add_tensor(m, &st) != 0)
            return snap_fail(c->err, SNAP_ENOMEM, "%s: out of memory adding tensor '%s'", c->name, st.name);
    }
    if (!has_output)
        m->config.flags |= SNAP_FLAG_TIED_EMBED; /* the output projection reuses token_embd */
    return 0;
}

/* The data section starts at the first multiple of general.alignment after the tensor
 * infos, which end at byte infos_end. */
static int read_alignment(gguf_ctx *c, size_t infos_end)
{
    uint32_t align = GGUF_DEFAULT_ALIGNMENT;
    int rc = get_u32(c, "general.alignment", &align, false);
    if (rc)
        return rc;
    if (align == 0 || (align & (align - 1)) != 0)
        return snap_fail(c->err, SNAP_EFORMAT, "%s: key 'general.alignment': %u is not a power of two", c->name,
                         align);
    uint64_t start = ((uint64_t)infos_end + align - 1) / align * align;
    if (start > c->len) {
        if (c->n_ti > 0)
            return snap_fail(c->err, SNAP_EFORMAT, "%s: data section at byte %llu starts past the end of the file (%zu bytes)",
                             c->name, (unsigned long long)start, c->len);
        start = c->len;
    }
    c->data_start = (size_t)start;
    for (size_t i = 0; i < c->n_ti; i++)
        if (c->ti[i].offset % align != 0) {
            char e[80];
            return snap_fail(c->err, SNAP_EFORMAT, "%s: tensor '%s' (info at byte %zu): offset %llu is not %u-aligned",
                             c->name, esc(e, sizeof e, c->ti[i].name, c->ti[i].name_len), c->ti[i].rec_off,
                             (unsigned long long)c->ti[i].offset, align);
        }
    return 0;
}

int snap_read_gguf_memory(const uint8_t *buf, size_t len, const char *name, snap_src_model *m, snap_err *err)
{
    gguf_ctx c;
    memset(&c, 0, sizeof c);
    c.buf = buf;
    c.len = buf ? len : 0;
    c.name = name ? name : "<memory>";
    c.err = err;
    int rc;
    if ((rc = parse_structure(&c)))
        goto out;
    if ((rc = read_alignment(&c, c.pos)))
        goto out;
    if ((rc = read_config(&c, m)) || (rc = read_tokenizer(&c, m)) || (rc = read_gen_defaults(&c, m)) ||
        (rc = read_tensors(&c, m)))
        goto out;
    m->config.n_vocab = m->vocab.n_tokens;
    rc = snap_src_validate(m, c.name, err);
out:
    free(c.kv);
    free(c.ti);
    return rc;
}

int snap_read_gguf(const char *path, snap_src_model *m, snap_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return snap_fail(err, SNAP_EIO, "%s: not a regular file", path);
    }
    if (st.st_size < GGUF_HEADER_BYTES) {
        close(fd);
        return snap_fail(err, SNAP_EFORMAT, "%s: %lld bytes is too small for a GGUF header", path,
                         (long long)st.st_size);
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED)
        return snap_fail(err, SNAP_EIO, "%s: mmap: %s", path, strerror(e));
    if (snap_src_own_map(m, map, len) != 0) {
        munmap(map, len);
        return snap_fail(err, SNAP_ENOMEM, "%s: out of memory", path);
    }
    return snap_read_gguf_memory(map, len, path, m, err);
}
