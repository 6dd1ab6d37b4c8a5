/* file.c -- opening a snapshot: parse and validate the header, metadata sections, tensor
 * table and chunk table (FORMAT.md). No tensor data is touched here.
 *
 * Invariants after a successful snap_open (checked once, relied on by load.c and callers):
 *   1. Every byte range named by the header or a table lies inside the file.
 *   2. Chunks tile the image in order: chunk i yields image bytes [i*chunk_size, ...) of
 *      raw_size = chunk_size, except the last, which yields the remainder.
 *   3. Chunks' stored extents are page-aligned, increasing and disjoint.
 *   4. Tensors lie inside the image, do not overlap, have unique NUL-terminated names and
 *      sizes that match their dtype and shape.
 *   5. The model's required tensors exist with the shapes its config implies, and the
 *      tokenizer's arrays are consistent (monotonic offsets, ids in range).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

_Static_assert(sizeof(snap_config) == SNAP_CONFIG_BYTES, "snap_config must match its on-disk size");
_Static_assert(sizeof(snap_gen_defaults) == SNAP_GEN_BYTES, "snap_gen_defaults must match its on-disk size");
_Static_assert(sizeof(snap_chunk) == SNAP_CHUNK_ENTRY_BYTES, "snap_chunk must match its on-disk size");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the snapshot format is little-endian; this reader maps it directly"
#endif

/* Fuzz builds skip the metadata checksums so that mutated inputs reach the table checks
 * behind them (the convention libFuzzer projects use); release builds never define it. */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define FUZZING 1
#else
#define FUZZING 0
#endif

struct snap_file {
    char *path;
    int fd;                      /* -1 for snap_open_memory */
    const uint8_t *base;         /* the whole file, mapped read-only (or the caller's buffer) */
    uint64_t size;
    int mapped;
    uint32_t version, target, quant, chunk_size;
    uint64_t image_size;
    snap_config config;
    snap_gen_defaults gen;
    snap_vocab vocab;            /* arrays point into base */
    char *chat_template;         /* NUL-terminated copy */
    snap_tensor *tensors;
    size_t n_tensors;
    snap_chunk *chunks;
    size_t n_chunks;
    uint32_t *by_name;           /* tensor indices sorted by name, for lookup */
};

/* ---- accessors ------------------------------------------------------------------------ */

const char *snap_path(const snap_file *f) { return f->path; }
uint32_t snap_version(const snap_file *f) { return f->version; }
uint32_t snap_target(const snap_file *f) { return f->target; }
uint32_t snap_quant(const snap_file *f) { return f->quant; }
uint64_t snap_file_size(const snap_file *f) { return f->size; }
uint64_t snap_image_size(const snap_file *f) { return f->image_size; }
uint32_t snap_chunk_size(const snap_file *f) { return f->chunk_size; }
const snap_config *snap_get_config(const snap_file *f) { return &f->config; }
const snap_vocab *snap_get_vocab(const snap_file *f) { return &f->vocab; }
const snap_gen_defaults *snap_get_gen_defaults(const snap_file *f) { return &f->gen; }
const char *snap_chat_template(const snap_file *f) { return f->chat_template; }
size_t snap_n_tensors(const snap_file *f) { return f->n_tensors; }
const snap_tensor *snap_tensor_at(const snap_file *f, size_t i) { return i < f->n_tensors ? &f->tensors[i] : NULL; }
size_t snap_n_chunks(const snap_file *f) { return f->n_chunks; }
const snap_chunk *snap_chunk_at(const snap_file *f, size_t i) { return i < f->n_chunks ? &f->chunks[i] : NULL; }

/* internal to the folder (load.c) */
int snap_file_fd(const snap_file *f) { return f->fd; }
const uint8_t *snap_file_base(const snap_file *f) { return f->base; }

const snap_tensor *snap_tensor_find(const snap_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[f->by_name[mid]].name, name);
        if (c == 0)
            return &f->tensors[f->by_name[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint64_t snap_decode_bytes(const snap_file *f)
{
    int tied = (snap_get_config(f)->flags & SNAP_FLAG_TIED_EMBED) && !snap_tensor_find(f, "output.weight");
    uint64_t total = 0;
    for (size_t i = 0; i < snap_n_tensors(f); i++) {
        const snap_tensor *t = snap_tensor_at(f, i);
        if (!strcmp(t->name, "token_embd.weight") && !tied)
            total += t->size / t->shape[0]; /* the lookup reads one row */
        else
            total += t->size;
    }
    return total;
}

const char *snap_dtype_name(uint32_t dtype)
{
    static const char *const names[] = {"f32", "f16", "bf16", "q8", "q4"};
    return dtype < SNAP_DTYPE_COUNT ? names[dtype] : "unknown";
}

const char *snap_arch_name(uint32_t arch)
{
    return arch == SNAP_ARCH_LLAMA ? "llama" : arch == SNAP_ARCH_QWEN2 ? "qwen2" : "unknown";
}

uint64_t snap_tensor_bytes(uint32_t dtype, uint32_t n_dims, const uint64_t *shape)
{
    if (n_dims < 1 || n_dims > SNAP_MAX_DIMS)
        return 0;
    uint64_t n = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        if (shape[i] == 0 || shape[i] > (1ull << 40) || n > (1ull << 48) / shape[i])
            return 0;
        n *= shape[i];
    }
    uint64_t inner = shape[n_dims - 1];
    switch (dtype) {
    case SNAP_F32: return n * 4;
    case SNAP_F16:
    case SNAP_BF16: return n * 2;
    case SNAP_Q8: return inner % SNAP_QBLOCK ? 0 : n / SNAP_QBLOCK * SNAP_Q8_BLOCK_BYTES;
    case SNAP_Q4: return inner % SNAP_QBLOCK ? 0 : n / SNAP_QBLOCK * SNAP_Q4_BLOCK_BYTES;
    default: return 0;
    }
}

void snap_close(snap_file *f)
{
    if (!f)
        return;
    if (f->mapped)
        munmap((void *)f->base, f->size);
    if (f->fd >= 0)
        close(f->fd);
    free(f->path);
    free(f->chat_template);
    free(f->tensors);
    free(f->chunks);
    free(f->by_name);
    free(f);
}

/* ---- parsing -------------------------------------------------------------------------- */

static int range_ok(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
    return off >= lo && off <= hi && len <= hi - off;
}

static int parse_vocab(snap_file *f, const uint8_t *p, uint64_t len, uint64_t file_off, snap_err *err)
{
    const char *path = f->path;
    snap_vocab *v = &f->vocab;
    if (len < SNAP_VOCAB_HEAD_BYTES)
        return snap_fail(err, SNAP_EFORMAT, "%s: vocab section at offset %llu is %llu bytes, shorter than its header",
                         path, (unsigned long long)file_off, (unsigned long long)len);
    v->model = snap_rd32(p + 0);
    v->pre = snap_rd32(p + 4);
    v->n_tokens = snap_rd32(p + 8);
    v->n_merges = snap_rd32(p + 12);
    v->bos_id = (int32_t)snap_rd32(p + 16);
    v->eos_id = (int32_t)snap_rd32(p + 20);
    v->eot_id = (int32_t)snap_rd32(p + 24);
    v->unk_id = (int32_t)snap_rd32(p + 28);
    v->pad_id = (int32_t)snap_rd32(p + 32);
    v->add_bos = p[36];
    v->add_eos = p[37];
    v->add_space_prefix = p[38];
    int has_scores = p[39];
    uint32_t blob_size = snap_rd32(p + 40);
    v->spm_split = p[44];
    if (v->add_space_prefix > SNAP_SPACE_FIRST || v->spm_split > 1)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: vocab section at offset %llu: unknown space rule %u/%u", path,
                         (unsigned long long)file_off, v->add_space_prefix, v->spm_split);
    if (v->model != SNAP_TOK_BPE && v->model != SNAP_TOK_SPM)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unknown tokenizer model %u", path, v->model);
    if (v->pre > SNAP_PRE_QWEN2)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unknown pre-tokenizer %u", path, v->pre);
    if (v->n_tokens == 0 || v->n_tokens > (1u << 22) || v->n_merges > (1u << 24))
        return snap_fail(err, SNAP_EFORMAT, "%s: vocab section at offset %llu: %u tokens, %u merges out of range",
                         path, (unsigned long long)file_off, v->n_tokens, v->n_merges);
    uint64_t need = SNAP_VOCAB_HEAD_BYTES + 4ull * (v->n_tokens + 1) + (has_scores ? 4ull * v->n_tokens : 0) +
                    8ull * v->n_merges + v->n_tokens + blob_size;
    if (need > len)
        return snap_fail(err, SNAP_EFORMAT, "%s: vocab section at offset %llu needs %llu bytes, has %llu", path,
                         (unsigned long long)file_off, (unsigned long long)need, (unsigned long long)len);
    const uint8_t *q = p + SNAP_VOCAB_HEAD_BYTES;
    v->offsets = (const uint32_t *)q;
    q += 4ull * (v->n_tokens + 1);
    v->scores = has_scores ? (const float *)q : NULL;
    q += has_scores ? 4ull * v->n_tokens : 0;
    v->merges = (const uint32_t *)q;
    q += 8ull * v->n_merges;
    v->types = q;
    q += v->n_tokens;
    v->blob = (const char *)q;
    if (v->offsets[0] != 0 || v->offsets[v->n_tokens] != blob_size)
        return snap_fail(err, SNAP_EFORMAT, "%s: vocab token offsets do not span the %u-byte blob", path, blob_size);
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        if (v->offsets[i + 1] < v->offsets[i])
            return snap_fail(err, SNAP_EFORMAT, "%s: vocab token %u has a negative length", path, i);
        if (v->types[i] < SNAP_TOKT_NORMAL || v->types[i] > SNAP_TOKT_BYTE)
            return snap_fail(err, SNAP_EFORMAT, "%s: vocab token %u has unknown type %u", path, i, v->types[i]);
    }
    for (uint32_t i = 0; i < 2 * v->n_merges; i++)
        if (v->merges[i] >= v->n_tokens)
            return snap_fail(err, SNAP_EFORMAT, "%s: merge %u names token %u, past the vocabulary (%u)", path, i / 2,
                             v->merges[i], v->n_tokens);
    const int32_t ids[] = {v->bos_id, v->eos_id, v->eot_id, v->unk_id, v->pad_id};
    for (size_t i = 0; i < 5; i++)
        if (ids[i] < -1 || ids[i] >= (int32_t)v->n_tokens)
            return snap_fail(err, SNAP_EFORMAT, "%s: special token id %d out of range", path, ids[i]);
    return 0;
}

static int parse_sections(snap_file *f, uint64_t off, uint64_t end, snap_err *err)
{
    int have_config = 0, have_vocab = 0, have_gen = 0;
    while (off < end) {
        if (end - off < SNAP_SECTION_HEAD_BYTES)
            return snap_fail(err, SNAP_EFORMAT, "%s: section header at offset %llu runs past the metadata", f->path,
                             (unsigned long long)off);
        uint32_t tag = snap_rd32(f->base + off);
        uint64_t len = snap_rd64(f->base + off + 8);
        uint64_t data = off + SNAP_SECTION_HEAD_BYTES;
        if (!range_ok(data, len, data, end))
            return snap_fail(err, SNAP_EFORMAT, "%s: section %u at offset %llu claims %llu bytes, past the metadata",
                             f->path, tag, (unsigned long long)off, (unsigned long long)len);
        const uint8_t *p = f->base + data;
        int rc = 0;
        switch (tag) {
        case SNAP_SEC_CONFIG:
            if (len < SNAP_CONFIG_BYTES)
                return snap_fail(err, SNAP_EFORMAT, "%s: config section at offset %llu is too short", f->path,
                                 (unsigned long long)off);
            memcpy(&f->config, p, SNAP_CONFIG_BYTES);
            f->config.name[sizeof f->config.name - 1] = 0;
            have_config = 1;
            break;
        case SNAP_SEC_VOCAB:
            rc = parse_vocab(f, p, len, off, err);
            have_vocab = 1;
            break;
        case SNAP_SEC_CHAT_TEMPLATE:
            free(f->chat_template);
            f->chat_template = strndup((const char *)p, len);
            if (!f->chat_template)
                return snap_fail(err, SNAP_ENOMEM, "%s: out of memory", f->path);
            break;
        case SNAP_SEC_GEN:
            if (len < SNAP_GEN_BYTES)
                return snap_fail(err, SNAP_EFORMAT, "%s: generation section at offset %llu is too short", f->path,
                                 (unsigned long long)off);
            memcpy(&f->gen, p, SNAP_GEN_BYTES);
            have_gen = 1;
            break;
        default: /* a newer writer's section: skipping it is the forward-compatibility rule */
            break;
        }
        if (rc)
            return rc;
        off = snap_align_up(data + len, 8);
    }
    if (!have_config || !have_vocab || !have_gen)
        return snap_fail(err, SNAP_EFORMAT, "%s: missing %s section", f->path,
                         !have_config ? "config" : !have_vocab ? "vocab" : "generation");
    if (f->gen.n_stop_ids > SNAP_MAX_STOP_IDS)
        return snap_fail(err, SNAP_EFORMAT, "%s: %u stop ids (max %d)", f->path, f->gen.n_stop_ids, SNAP_MAX_STOP_IDS);
    for (uint32_t i = 0; i < f->gen.n_stop_ids; i++)
        if (f->gen.stop_ids[i] < 0 || (uint32_t)f->gen.stop_ids[i] >= f->vocab.n_tokens)
            return snap_fail(err, SNAP_EFORMAT, "%s: stop id %d out of range", f->path, f->gen.stop_ids[i]);
    return 0;
}

/* qsort_r comparators (glibc's argument order): the context is the file, so opens on several
 * threads at once do not share a sort state */
static int cmp_by_name(const void *a, const void *b, void *ctx)
{
    const snap_file *f = ctx;
    return strcmp(f->tensors[*(const uint32_t *)a].name, f->tensors[*(const uint32_t *)b].name);
}
static int cmp_by_offset(const void *a, const void *b, void *ctx)
{
    const snap_file *f = ctx;
    uint64_t x = f->tensors[*(const uint32_t *)a].offset, y = f->tensors[*(const uint32_t *)b].offset;
    return x < y ? -1 : x > y;
}

static int parse_tensors(snap_file *f, uint64_t off, uint32_t n, snap_err *err)
{
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    uint32_t *by_off = calloc(n ? n : 1, sizeof *by_off);
    int rc = 0;
    if (!f->tensors || !f->by_name || !by_off) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory", f->path);
        goto done;
    }
    f->n_tensors = n;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *p = f->base + off + (uint64_t)i * SNAP_TENSOR_ENTRY_BYTES;
        snap_tensor *t = &f->tensors[i];
        memcpy(t->name, p, SNAP_NAME_MAX);
        t->dtype = snap_rd32(p + 64);
        t->layout = snap_rd32(p + 68);
        t->n_dims = snap_rd32(p + 72);
        for (int d = 0; d < SNAP_MAX_DIMS; d++)
            t->shape[d] = snap_rd64(p + 80 + 8 * d);
        t->offset = snap_rd64(p + 112);
        t->size = snap_rd64(p + 120);
        if (!memchr(t->name, 0, SNAP_NAME_MAX) || !t->name[0]) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensor %u: name is empty or not terminated", f->path, i);
            goto done;
        }
        if (t->dtype >= SNAP_DTYPE_COUNT) {
            rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: tensor '%s': unknown type %u", f->path, t->name, t->dtype);
            goto done;
        }
        int quant = t->dtype == SNAP_Q4 || t->dtype == SNAP_Q8;
        if (t->layout > SNAP_LAYOUT_R16 || (t->layout != SNAP_LAYOUT_BLOCKS && !quant) ||
            (t->layout == SNAP_LAYOUT_R16 && (t->n_dims != 2 || t->shape[0] % SNAP_R16_ROWS))) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': layout %u invalid for type %s", f->path, t->name,
                           t->layout, snap_dtype_name(t->dtype));
            goto done;
        }
        uint64_t want = t->n_dims >= 1 && t->n_dims <= SNAP_MAX_DIMS ? snap_tensor_bytes(t->dtype, t->n_dims, t->shape) : 0;
        if (want == 0 || want != t->size) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': %u dims, size %llu does not match its type and shape",
                           f->path, t->name, t->n_dims, (unsigned long long)t->size);
            goto done;
        }
        if (t->offset % SNAP_TENSOR_ALIGN || !range_ok(t->offset, t->size, 0, f->image_size)) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': image bytes %llu..%llu are misaligned or past the image (%llu)",
                           f->path, t->name, (unsigned long long)t->offset,
                           (unsigned long long)(t->offset + t->size), (unsigned long long)f->image_size);
            goto done;
        }
        f->by_name[i] = by_off[i] = i;
    }
    qsort_r(f->by_name, n, sizeof *f->by_name, cmp_by_name, f);
    qsort_r(by_off, n, sizeof *by_off, cmp_by_offset, f);
    for (uint32_t i = 1; i < n; i++) {
        const snap_tensor *a = &f->tensors[f->by_name[i - 1]], *b = &f->tensors[f->by_name[i]];
        if (strcmp(a->name, b->name) == 0) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s' appears twice", f->path, a->name);
            goto done;
        }
        const snap_tensor *x = &f->tensors[by_off[i - 1]], *y = &f->tensors[by_off[i]];
        if (x->offset + x->size > y->offset) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: tensors '%s' and '%s' overlap at image offset %llu", f->path,
                           x->name, y->name, (unsigned long long)y->offset);
            goto done;
        }
    }
done:
    free(by_off);
    return rc;
}

static int parse_chunks(snap_file *f, uint64_t off, uint32_t n, uint64_t data_offset, snap_err *err)
{
    uint64_t want_n = (f->image_size + f->chunk_size - 1) / f->chunk_size;
    if (n != want_n)
        return snap_fail(err, SNAP_EFORMAT, "%s: %u chunks cannot hold an image of %llu bytes in %u-byte chunks",
                         f->path, n, (unsigned long long)f->image_size, f->chunk_size);
    f->chunks = calloc(n ? n : 1, sizeof *f->chunks);
    if (!f->chunks)
        return snap_fail(err, SNAP_ENOMEM, "%s: out of memory", f->path);
    f->n_chunks = n;
    memcpy(f->chunks, f->base + off, (size_t)n * SNAP_CHUNK_ENTRY_BYTES);
    uint64_t prev_end = data_offset;
    for (uint32_t i = 0; i < n; i++) {
        const snap_chunk *c = &f->chunks[i];
        uint64_t want_raw = i + 1 < n ? f->chunk_size : f->image_size - (uint64_t)i * f->chunk_size;
        if (c->raw_size != want_raw)
            return snap_fail(err, SNAP_EFORMAT, "%s: chunk %u: raw size %u, expected %llu", f->path, i, c->raw_size,
                             (unsigned long long)want_raw);
        if (c->codec > SNAP_CODEC_LZ4)
            return snap_fail(err, SNAP_EUNSUPPORTED, "%s: chunk %u: unknown codec %u", f->path, i, c->codec);
        if (c->stored_size == 0 || (c->codec == SNAP_CODEC_RAW && c->stored_size != c->raw_size) ||
            (c->codec == SNAP_CODEC_LZ4 && c->stored_size > (uint32_t)LZ4_compressBound((int)c->raw_size)))
            return snap_fail(err, SNAP_EFORMAT, "%s: chunk %u: stored size %u is impossible for codec %s and raw size %u",
                             f->path, i, c->stored_size, c->codec ? "lz4" : "raw", c->raw_size);
        if (c->file_offset % SNAP_PAGE || c->file_offset < prev_end ||
            !range_ok(c->file_offset, c->stored_size, 0, f->size))
            return snap_fail(err, SNAP_EFORMAT,
                             "%s: chunk %u: file offset %llu (+%u bytes) is misaligned, overlaps chunk %u or runs "
                             "past the end of the file (%llu bytes)",
                             f->path, i, (unsigned long long)c->file_offset, c->stored_size, i ? i - 1 : 0,
                             (unsigned long long)f->size);
        prev_end = c->file_offset + c->stored_size;
    }
    return 0;
}

static int tensor_shape_of(const void *ctx, const char *name, uint32_t *n_dims, const uint64_t **shape)
{
    const snap_tensor *t = snap_tensor_find(ctx, name);
    if (!t)
        return -1;
    *n_dims = t->n_dims;
    *shape = t->shape;
    return 0;
}

static int parse(snap_file *f, snap_err *err)
{
    const uint8_t *h = f->base;
    if (f->size < SNAP_HEADER_BYTES)
        return snap_fail(err, SNAP_EFORMAT, "%s: %s (%llu bytes): not a thaw snapshot", f->path,
                         f->size ? "too short" : "empty file", (unsigned long long)f->size);
    if (memcmp(h, SNAP_MAGIC, 8) != 0)
        return snap_fail(err, SNAP_EFORMAT, "%s: bad magic at offset 0: not a thaw snapshot", f->path);
    f->version = snap_rd32(h + 8);
    if (f->version != SNAP_VERSION)
        return snap_fail(err, SNAP_EVERSION, "%s: format version %u, this build reads version %u%s", f->path,
                         f->version, SNAP_VERSION, f->version > SNAP_VERSION ? " (repack or upgrade thaw)" : "");
    if (snap_rd32(h + 12) != SNAP_HEADER_BYTES)
        return snap_fail(err, SNAP_EFORMAT, "%s: header size %u, expected %u", f->path, snap_rd32(h + 12), SNAP_HEADER_BYTES);
    if (!FUZZING && XXH3_64bits(h, 120) != snap_rd64(h + 120))
        return snap_fail(err, SNAP_ECHECKSUM, "%s: header checksum mismatch (bytes 0..120)", f->path);
    uint64_t file_size = snap_rd64(h + 16);
    if (file_size != f->size)
        return snap_fail(err, SNAP_EFORMAT, "%s: file is %llu bytes but its header says %llu (truncated or extended?)",
                         f->path, (unsigned long long)f->size, (unsigned long long)file_size);
    f->target = snap_rd32(h + 24);
    f->quant = snap_rd32(h + 28);
    f->chunk_size = snap_rd32(h + 32);
    uint32_t n_tensors = snap_rd32(h + 36), n_chunks = snap_rd32(h + 40);
    f->image_size = snap_rd64(h + 48);
    uint64_t meta_off = snap_rd64(h + 56), meta_size = snap_rd64(h + 64);
    uint64_t tt_off = snap_rd64(h + 72), ct_off = snap_rd64(h + 80), data_off = snap_rd64(h + 88);
    if (f->target > SNAP_TARGET_CUDA || f->quant > SNAP_QUANT_F16)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unknown target %u or quantization %u", f->path, f->target, f->quant);
    if (f->chunk_size < SNAP_PAGE || f->chunk_size % SNAP_PAGE || f->chunk_size > (1u << 30))
        return snap_fail(err, SNAP_EFORMAT, "%s: chunk size %u is not a page multiple in 4 KiB..1 GiB", f->path, f->chunk_size);
    if (f->image_size == 0 || f->image_size > (1ull << 44))
        return snap_fail(err, SNAP_EFORMAT, "%s: image size %llu out of range", f->path, (unsigned long long)f->image_size);
    if (!range_ok(meta_off, meta_size, SNAP_HEADER_BYTES, f->size) || n_tensors > (1u << 20) || n_chunks > (1u << 26) ||
        !range_ok(tt_off, (uint64_t)n_tensors * SNAP_TENSOR_ENTRY_BYTES, meta_off, meta_off + meta_size) ||
        !range_ok(ct_off, (uint64_t)n_chunks * SNAP_CHUNK_ENTRY_BYTES, meta_off, meta_off + meta_size) ||
        tt_off % 8 || ct_off % 8 || meta_off % 8 || data_off % SNAP_PAGE || data_off < meta_off + meta_size)
        return snap_fail(err, SNAP_EFORMAT,
                         "%s: header tables out of range (metadata %llu+%llu, tensors at %llu x%u, chunks at %llu x%u, "
                         "data at %llu, file %llu bytes)",
                         f->path, (unsigned long long)meta_off, (unsigned long long)meta_size,
                         (unsigned long long)tt_off, n_tensors, (unsigned long long)ct_off, n_chunks,
                         (unsigned long long)data_off, (unsigned long long)f->size);
    if (!FUZZING && XXH3_64bits(f->base + meta_off, meta_size) != snap_rd64(h + 96))
        return snap_fail(err, SNAP_ECHECKSUM, "%s: metadata checksum mismatch (bytes %llu..%llu)", f->path,
                         (unsigned long long)meta_off, (unsigned long long)(meta_off + meta_size));
    if (tt_off < meta_off || tt_off > ct_off)
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor table at %llu must follow the sections and precede the chunk table",
                         f->path, (unsigned long long)tt_off);
    int rc;
    if ((rc = parse_sections(f, meta_off, tt_off, err)) || (rc = parse_tensors(f, tt_off, n_tensors, err)) ||
        (rc = parse_chunks(f, ct_off, n_chunks, data_off, err)))
        return rc;
    return snap_model_check(&f->config, f->vocab.n_tokens, tensor_shape_of, f, f->path, err);
}

static int open_common(snap_file *f, snap_file **out, snap_err *err)
{
    if (!f->chat_template)
        f->chat_template = strdup("");
    int rc = f->chat_template ? parse(f, err) : snap_fail(err, SNAP_ENOMEM, "%s: out of memory", f->path);
    if (rc) {
        snap_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int snap_open(const char *path, snap_file **out, snap_err *err)
{
    *out = NULL;
    snap_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return snap_fail(err, SNAP_ENOMEM, "%s: out of memory", path);
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        int e = errno;
        snap_close(f);
        return snap_fail(err, SNAP_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snap_close(f);
        return snap_fail(err, SNAP_EIO, "%s: not a regular file", path);
    }
    f->size = (uint64_t)st.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            snap_close(f);
            return snap_fail(err, SNAP_EIO, "%s: cannot map %llu bytes: %s", path, (unsigned long long)st.st_size,
                             strerror(e));
        }
        f->base = p;
        f->mapped = 1;
    }
    return open_common(f, out, err);
}

int snap_open_memory(const void *buf, size_t len, const char *name, snap_file **out, snap_err *err)
{
    *out = NULL;
    snap_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name ? name : "(memory)"))) {
        free(f);
        return snap_fail(err, SNAP_ENOMEM, "(memory): out of memory");
    }
    f->fd = -1;
    f->base = buf;
    f->size = len;
    if (((uintptr_t)buf & 7) != 0) { /* the tables are read in place and need alignment */
        int rc = snap_fail(err, SNAP_EARG, "%s: buffer must be 8-byte aligned", f->path);
        snap_close(f);
        return rc;
    }
    return open_common(f, out, err);
}
