/* pack.c -- GGUF / Hugging Face folder -> snapshot.
 *
 * The packer reads the source into a snap_src_model, decides each tensor's stored type,
 * converts tensors one at a time into the image stream, and cuts the stream into fixed-size
 * chunks that are compressed only when LZ4 saves at least SNAP_LZ4_MIN_SAVING of a chunk
 * (int4 and bf16 weights barely compress; norms and embeddings of small models sometimes
 * do). Metadata and tables are written last, then the header, then the file is renamed
 * into place: a crash or error never leaves a file that looks complete.
 *
 * Type policy (why): a source block format that equals a target format is copied, never
 * rounded twice (GGUF Q4_1 -> Q4, Q8_0 -> Q8, bit-exact). Otherwise 2-D weights are
 * dequantized to f32 and quantized: --quant q4 stores linear layers as Q4 but the token
 * embedding and output head as Q8 (they are the most sensitive tensors and a small share of
 * a large model's bytes); q8 stores every matrix as Q8; f16 as F16. 1-D tensors (norms,
 * biases, rope factors) are always F32. A matrix whose rows are not a multiple of 32 falls
 * back to F16.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define SNAP_LZ4_MIN_SAVING 0.03 /* store LZ4 only when it saves >= 3 % of the chunk */

typedef struct plan_entry {
    const snap_src_tensor *src;
    snap_tensor t;
} plan_entry;

typedef struct writer {
    const char *path;            /* the .tmp file being written */
    int fd;
    uint32_t chunk_size;
    uint8_t *buf;                /* [chunk_size] raw bytes of the chunk being filled */
    uint32_t fill;
    char *comp;                  /* [LZ4_compressBound(chunk_size)] */
    snap_chunk *chunks;
    uint32_t n_chunks, max_chunks;
    uint64_t file_pos;           /* where the next chunk goes (page-aligned) */
    uint64_t image_pos;          /* bytes of image emitted so far */
    uint64_t image_size;
    int progress;
    double t0, last_progress;
} writer;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int write_all(int fd, const void *p, size_t n, uint64_t off, const char *path, snap_err *err)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return snap_fail(err, SNAP_EIO, "%s: write at offset %llu failed: %s", path, (unsigned long long)off,
                             k < 0 ? strerror(errno) : "no progress");
        b += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return 0;
}

static void progress(writer *w, int final)
{
    if (!w->progress)
        return;
    double t = now_s();
    if (!final && t - w->last_progress < 0.2)
        return;
    w->last_progress = t;
    double el = t - w->t0, mb = w->image_pos / 1e6, rate = el > 0 ? mb / el : 0;
    double eta = rate > 0 ? (w->image_size / 1e6 - mb) / rate : 0;
    fprintf(stderr, "\rpacking: %8.1f / %.1f MB  %7.1f MB/s  ETA %4.0fs ", mb, w->image_size / 1e6, rate, eta);
    if (final)
        fputc('\n', stderr);
}

static int flush_chunk(writer *w, snap_err *err)
{
    if (w->fill == 0)
        return 0;
    SNAP_ASSERT(w->n_chunks < w->max_chunks);
    int bound = LZ4_compressBound((int)w->fill);
    int c = LZ4_compress_default((const char *)w->buf, w->comp, (int)w->fill, bound);
    snap_chunk *ch = &w->chunks[w->n_chunks];
    const void *data;
    if (c > 0 && (double)c <= (1.0 - SNAP_LZ4_MIN_SAVING) * w->fill) {
        ch->codec = SNAP_CODEC_LZ4;
        ch->stored_size = (uint32_t)c;
        data = w->comp;
    } else {
        ch->codec = SNAP_CODEC_RAW;
        ch->stored_size = w->fill;
        data = w->buf;
    }
    ch->raw_size = w->fill;
    ch->file_offset = w->file_pos;
    ch->checksum = XXH3_64bits(data, ch->stored_size);
    int rc = write_all(w->fd, data, ch->stored_size, w->file_pos, w->path, err);
    if (rc)
        return rc;
    w->file_pos = snap_align_up(w->file_pos + ch->stored_size, SNAP_PAGE);
    w->n_chunks++;
    w->fill = 0;
    progress(w, 0);
    return 0;
}

/* Appends bytes (or zeros when p is NULL) to the image stream. */
static int emit(writer *w, const void *p, uint64_t n, snap_err *err)
{
    const uint8_t *b = p;
    while (n) {
        uint32_t k = w->chunk_size - w->fill;
        if (k > n)
            k = (uint32_t)n;
        if (b) {
            memcpy(w->buf + w->fill, b, k);
            b += k;
        } else {
            memset(w->buf + w->fill, 0, k);
        }
        w->fill += k;
        w->image_pos += k;
        n -= k;
        if (w->fill == w->chunk_size) {
            int rc = flush_chunk(w, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ---- planning ------------------------------------------------------------------------- */

static int is_embedding_or_head(const char *name)
{
    return strcmp(name, "token_embd.weight") == 0 || strcmp(name, "output.weight") == 0;
}

static uint32_t choose_dtype(const snap_src_tensor *s, uint32_t quant)
{
    if (s->n_dims == 1)
        return SNAP_F32;
    if (s->shape[s->n_dims - 1] % SNAP_QBLOCK)
        return SNAP_F16;
    if (quant == SNAP_QUANT_F16)
        return SNAP_F16;
    if (quant == SNAP_QUANT_Q8)
        return SNAP_Q8;
    /* q4 */
    if (s->type == SRC_Q4_1)
        return SNAP_Q4; /* exact copy, whatever the tensor */
    return is_embedding_or_head(s->name) ? SNAP_Q8 : SNAP_Q4;
}

/* Image order: embedding, layers in order, then the rest (so a streaming consumer can start
 * on early layers first, and tensors of one layer are close together). */
static int order_key(const char *name, long *layer)
{
    if (strcmp(name, "token_embd.weight") == 0) {
        *layer = -1;
        return 0;
    }
    if (strncmp(name, "blk.", 4) == 0) {
        *layer = strtol(name + 4, NULL, 10);
        return 1;
    }
    *layer = 0;
    return 2;
}

static int cmp_plan(const void *a, const void *b)
{
    const plan_entry *x = a, *y = b;
    long lx, ly;
    int kx = order_key(x->src->name, &lx), ky = order_key(y->src->name, &ly);
    if (kx != ky)
        return kx - ky;
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return 0;
}

/* ---- conversion ----------------------------------------------------------------------- */

/* Converts a source tensor into its stored bytes (BLOCKS layout) in dst[t->size]. */
static int convert(const snap_src_tensor *s, const snap_tensor *t, uint8_t *dst, float *row, snap_err *err)
{
    uint64_t cols = s->shape[s->n_dims - 1], rows = 1;
    for (uint32_t d = 0; d + 1 < s->n_dims; d++)
        rows *= s->shape[d];
    uint64_t src_row_bytes = snap_src_bytes(s->type, cols);
    if (!s->gen && (src_row_bytes == 0 || src_row_bytes * rows != s->n_bytes))
        return snap_fail(err, SNAP_EFORMAT, "tensor '%s': %llu source bytes do not hold [%llu x %llu] of %s", s->name,
                         (unsigned long long)s->n_bytes, (unsigned long long)rows, (unsigned long long)cols,
                         snap_src_type_name(s->type));
    if (!s->gen && ((t->dtype == SNAP_Q4 && s->type == SRC_Q4_1) || (t->dtype == SNAP_Q8 && s->type == SRC_Q8_0) ||
                    (t->dtype == SNAP_F32 && s->type == SRC_F32) || (t->dtype == SNAP_F16 && s->type == SRC_F16))) {
        memcpy(dst, s->data, t->size);
        return 0;
    }
    uint64_t dst_row = t->size / rows;
    for (uint64_t r = 0; r < rows; r++) {
        if (s->gen)
            s->gen(s, r, row, cols);
        else
            snap_dequant_row(s->type, s->data + r * src_row_bytes, row, cols);
        /* f16 scales, minimums and values overflow past 65504: refuse rather than store inf */
        for (uint64_t i = 0; t->dtype != SNAP_F32 && i < cols; i++)
            if (!(fabsf(row[i]) <= 65504.0f))
                return snap_fail(err, SNAP_EFORMAT, "tensor '%s': value %g at row %llu, column %llu cannot be stored as %s",
                                 s->name, row[i], (unsigned long long)r, (unsigned long long)i, snap_dtype_name(t->dtype));
        uint8_t *o = dst + r * dst_row;
        switch (t->dtype) {
        case SNAP_F32: memcpy(o, row, cols * 4); break;
        case SNAP_F16:
            for (uint64_t i = 0; i < cols; i++) {
                uint16_t h = snap_f32_to_f16(row[i]);
                memcpy(o + 2 * i, &h, 2);
            }
            break;
        case SNAP_Q8: snap_quant_q8_row(row, o, cols); break;
        case SNAP_Q4: snap_quant_q4_row(row, o, cols); break;
        default: SNAP_ASSERT(!"unplanned dtype");
        }
    }
    return 0;
}

/* BLOCKS -> SPLIT: quants plane, then scales, then (Q4) minimums. */
static void to_split(const snap_tensor *t, const uint8_t *blocks, uint8_t *out)
{
    uint32_t bb = t->dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES;
    uint32_t head = t->dtype == SNAP_Q4 ? 4 : 2, qbytes = bb - head;
    uint64_t nb = t->size / bb;
    uint8_t *q = out, *sc = out + nb * qbytes, *mn = sc + nb * 2;
    for (uint64_t i = 0; i < nb; i++) {
        const uint8_t *b = blocks + i * bb;
        memcpy(sc + 2 * i, b, 2);
        if (t->dtype == SNAP_Q4)
            memcpy(mn + 2 * i, b + 2, 2);
        memcpy(q + i * qbytes, b + head, qbytes);
    }
}

/* ---- metadata ------------------------------------------------------------------------- */

static uint64_t vocab_bytes(const snap_vocab *v)
{
    return SNAP_VOCAB_HEAD_BYTES + 4ull * (v->n_tokens + 1) + (v->scores ? 4ull * v->n_tokens : 0) +
           8ull * v->n_merges + v->n_tokens + v->offsets[v->n_tokens];
}

static uint8_t *put_section(uint8_t *p, uint32_t tag, const void *data, uint64_t len)
{
    snap_wr32(p, tag);
    snap_wr32(p + 4, 0);
    snap_wr64(p + 8, len);
    if (data)
        memcpy(p + SNAP_SECTION_HEAD_BYTES, data, len);
    return p + SNAP_SECTION_HEAD_BYTES + snap_align_up(len, 8);
}

static void put_vocab(uint8_t *p, const snap_vocab *v)
{
    snap_wr32(p + 0, v->model);
    snap_wr32(p + 4, v->pre);
    snap_wr32(p + 8, v->n_tokens);
    snap_wr32(p + 12, v->n_merges);
    const int32_t ids[] = {v->bos_id, v->eos_id, v->eot_id, v->unk_id, v->pad_id};
    for (int i = 0; i < 5; i++)
        snap_wr32(p + 16 + 4 * i, (uint32_t)ids[i]);
    p[36] = v->add_bos;
    p[37] = v->add_eos;
    p[38] = v->add_space_prefix;
    p[39] = v->scores != NULL;
    snap_wr32(p + 40, v->offsets[v->n_tokens]);
    p[44] = v->spm_split;
    p[45] = p[46] = p[47] = 0;
    uint8_t *q = p + SNAP_VOCAB_HEAD_BYTES;
    memcpy(q, v->offsets, 4ull * (v->n_tokens + 1));
    q += 4ull * (v->n_tokens + 1);
    if (v->scores) {
        memcpy(q, v->scores, 4ull * v->n_tokens);
        q += 4ull * v->n_tokens;
    }
    if (v->n_merges)
        memcpy(q, v->merges, 8ull * v->n_merges);
    q += 8ull * v->n_merges;
    memcpy(q, v->types, v->n_tokens);
    q += v->n_tokens;
    memcpy(q, v->blob, v->offsets[v->n_tokens]);
}

static void put_tensor_entry(uint8_t *p, const snap_tensor *t)
{
    memset(p, 0, SNAP_TENSOR_ENTRY_BYTES);
    memcpy(p, t->name, strnlen(t->name, SNAP_NAME_MAX - 1));
    snap_wr32(p + 64, t->dtype);
    snap_wr32(p + 68, t->layout);
    snap_wr32(p + 72, t->n_dims);
    for (int d = 0; d < SNAP_MAX_DIMS; d++)
        snap_wr64(p + 80 + 8 * d, d < (int)t->n_dims ? t->shape[d] : 0);
    snap_wr64(p + 112, t->offset);
    snap_wr64(p + 120, t->size);
}

/* ---- the whole pack --------------------------------------------------------------------- */

static int read_source(const char *src, snap_src_model *m, snap_err *err)
{
    struct stat st;
    if (stat(src, &st) != 0)
        return snap_fail(err, SNAP_EIO, "%s: %s", src, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return snap_read_hf(src, m, err);
    return snap_read_gguf(src, m, err);
}

int snap_pack_model(const snap_src_model *m, const char *out, const snap_pack_opts *opts, snap_err *err)
{
    int rc = 0;
    uint32_t quant = opts ? opts->quant : SNAP_QUANT_Q4, target = opts ? opts->target : SNAP_TARGET_CPU;
    uint32_t chunk_size = opts && opts->chunk_size ? opts->chunk_size : SNAP_DEFAULT_CHUNK;
    if (chunk_size % SNAP_PAGE || quant > SNAP_QUANT_F16 || target > SNAP_TARGET_CUDA)
        return snap_fail(err, SNAP_EARG, "pack: invalid options (quant %u, target %u, chunk size %u)", quant, target,
                         chunk_size);
    size_t n = m->n_tensors;
    /* written under a new name of its own (mkostemps), then renamed: a pack never truncates or
     * removes a file it did not create (the source itself may be called OUT.tmp), and two
     * packs to one output do not write into each other */
    char tmp[4096];
    int made_tmp = 0;
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX.tmp", out) >= (int)sizeof tmp)
        return snap_fail(err, SNAP_EARG, "%s: path too long", out);

    plan_entry *plan = calloc(n ? n : 1, sizeof *plan);
    writer w = {.path = tmp, .fd = -1, .chunk_size = chunk_size, .progress = opts && opts->progress};
    uint8_t *meta = NULL, *tbuf = NULL, *sbuf = NULL;
    float *row = NULL;
    if (!plan)
        return snap_fail(err, SNAP_ENOMEM, "pack: out of memory");

    /* plan types, order and image offsets */
    uint64_t max_bytes = 0, max_cols = 0;
    for (size_t i = 0; i < n; i++) {
        const snap_src_tensor *s = &m->tensors[i];
        plan[i].src = s;
        snap_tensor *t = &plan[i].t;
        memcpy(t->name, s->name, SNAP_NAME_MAX);
        t->name[SNAP_NAME_MAX - 1] = 0;
        t->n_dims = s->n_dims;
        memcpy(t->shape, s->shape, sizeof t->shape);
        t->dtype = choose_dtype(s, quant);
        int quant2d = (t->dtype == SNAP_Q4 || t->dtype == SNAP_Q8) && t->n_dims == 2;
        t->layout = !quant2d                           ? SNAP_LAYOUT_BLOCKS
                    : target == SNAP_TARGET_CUDA       ? SNAP_LAYOUT_SPLIT
                    : t->shape[0] % SNAP_R16_ROWS == 0 ? SNAP_LAYOUT_R16
                                                       : SNAP_LAYOUT_BLOCKS;
        t->size = snap_tensor_bytes(t->dtype, t->n_dims, t->shape);
        if (t->size == 0) {
            rc = snap_fail(err, SNAP_EFORMAT, "tensor '%s': shape cannot be stored as %s", s->name,
                           snap_dtype_name(t->dtype));
            goto fail;
        }
        if (t->size > max_bytes)
            max_bytes = t->size;
        if (s->shape[s->n_dims - 1] > max_cols)
            max_cols = s->shape[s->n_dims - 1];
    }
    /* insertion sort: stable (ties keep the reader's order) and n is at most a few thousand */
    for (size_t i = 1; i < n; i++) {
        plan_entry x = plan[i];
        size_t j = i;
        while (j > 0 && cmp_plan(&plan[j - 1], &x) > 0) {
            plan[j] = plan[j - 1];
            j--;
        }
        plan[j] = x;
    }
    uint64_t image_size = 0;
    for (size_t i = 0; i < n; i++) {
        plan[i].t.offset = snap_align_up(image_size, SNAP_TENSOR_ALIGN);
        image_size = plan[i].t.offset + plan[i].t.size;
    }
    if (image_size == 0) {
        rc = snap_fail(err, SNAP_EFORMAT, "pack: model has no tensors");
        goto fail;
    }
    uint32_t n_chunks = (uint32_t)((image_size + chunk_size - 1) / chunk_size);

    /* metadata layout */
    snap_config cfg = m->config;
    if (opts && opts->name) {
        memset(cfg.name, 0, sizeof cfg.name);
        strncpy(cfg.name, opts->name, sizeof cfg.name - 1);
    }
    snap_gen_defaults gen = m->gen;
    if (opts && (opts->gen_set & SNAP_GEN_SET_TEMPERATURE))
        gen.temperature = opts->gen.temperature;
    if (opts && (opts->gen_set & SNAP_GEN_SET_TOP_P))
        gen.top_p = opts->gen.top_p;
    if (opts && (opts->gen_set & SNAP_GEN_SET_TOP_K))
        gen.top_k = opts->gen.top_k;
    if (opts && (opts->gen_set & SNAP_GEN_SET_REPETITION))
        gen.repetition_penalty = opts->gen.repetition_penalty;
    const char *tmpl = m->chat_template ? m->chat_template : "";
    uint64_t sec_bytes = 4 * SNAP_SECTION_HEAD_BYTES + snap_align_up(SNAP_CONFIG_BYTES, 8) +
                         snap_align_up(vocab_bytes(&m->vocab), 8) + snap_align_up(strlen(tmpl), 8) +
                         snap_align_up(SNAP_GEN_BYTES, 8);
    uint64_t meta_off = SNAP_PAGE;
    uint64_t tt_off = meta_off + sec_bytes, ct_off = tt_off + (uint64_t)n * SNAP_TENSOR_ENTRY_BYTES;
    uint64_t meta_size = ct_off + (uint64_t)n_chunks * SNAP_CHUNK_ENTRY_BYTES - meta_off;
    uint64_t data_off = snap_align_up(meta_off + meta_size, SNAP_PAGE);

    meta = calloc(1, meta_size);
    w.buf = malloc(chunk_size);
    w.comp = malloc((size_t)LZ4_compressBound((int)chunk_size));
    w.chunks = calloc(n_chunks, sizeof *w.chunks);
    tbuf = malloc(max_bytes);
    sbuf = malloc(max_bytes); /* the tensor rearranged (SPLIT / R16) */
    row = malloc(max_cols * sizeof *row);
    if (!meta || !w.buf || !w.comp || !w.chunks || !tbuf || !row || !sbuf) {
        rc = snap_fail(err, SNAP_ENOMEM, "pack: out of memory (largest tensor %llu bytes)", (unsigned long long)max_bytes);
        goto fail;
    }
    w.max_chunks = n_chunks;
    w.image_size = image_size;
    w.file_pos = data_off;
    w.t0 = now_s();

    w.fd = mkostemps(tmp, 4, O_CLOEXEC);
    made_tmp = w.fd >= 0;
    if (w.fd < 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto fail;
    }
    mode_t mask = umask(0); /* read the umask to honour it, as open(.., 0644) would */
    umask(mask);
    if (fchmod(w.fd, 0644 & ~mask) != 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: cannot set its mode: %s", tmp, strerror(errno));
        goto fail;
    }

    /* data */
    for (size_t i = 0; i < n; i++) {
        snap_tensor *t = &plan[i].t;
        if ((rc = emit(&w, NULL, t->offset - w.image_pos, err)))
            goto fail;
        if ((rc = convert(plan[i].src, t, tbuf, row, err)))
            goto fail;
        const uint8_t *bytes = tbuf;
        if (t->layout == SNAP_LAYOUT_SPLIT) {
            to_split(t, tbuf, sbuf);
            bytes = sbuf;
        } else if (t->layout == SNAP_LAYOUT_R16) {
            snap_to_r16(t->dtype, SNAP_LAYOUT_BLOCKS, t->shape[0], t->shape[1], tbuf, sbuf);
            bytes = sbuf;
        }
        if ((rc = emit(&w, bytes, t->size, err)))
            goto fail;
    }
    if ((rc = flush_chunk(&w, err)))
        goto fail;
    progress(&w, 1);
    SNAP_ASSERT(w.n_chunks == n_chunks && w.image_pos == image_size);

    /* metadata */
    uint8_t *p = meta;
    p = put_section(p, SNAP_SEC_CONFIG, &cfg, SNAP_CONFIG_BYTES);
    uint8_t *vp = p + SNAP_SECTION_HEAD_BYTES;
    p = put_section(p, SNAP_SEC_VOCAB, NULL, vocab_bytes(&m->vocab));
    put_vocab(vp, &m->vocab);
    p = put_section(p, SNAP_SEC_CHAT_TEMPLATE, tmpl, strlen(tmpl));
    p = put_section(p, SNAP_SEC_GEN, &gen, SNAP_GEN_BYTES);
    SNAP_ASSERT((uint64_t)(p - meta) == sec_bytes);
    for (size_t i = 0; i < n; i++)
        put_tensor_entry(meta + (tt_off - meta_off) + i * SNAP_TENSOR_ENTRY_BYTES, &plan[i].t);
    memcpy(meta + (ct_off - meta_off), w.chunks, (size_t)n_chunks * SNAP_CHUNK_ENTRY_BYTES);

    uint8_t hdr[SNAP_HEADER_BYTES] = {0};
    uint64_t file_size = w.file_pos; /* page-aligned end of the last chunk */
    memcpy(hdr, SNAP_MAGIC, 8);
    snap_wr32(hdr + 8, SNAP_VERSION);
    snap_wr32(hdr + 12, SNAP_HEADER_BYTES);
    snap_wr64(hdr + 16, file_size);
    snap_wr32(hdr + 24, target);
    snap_wr32(hdr + 28, quant);
    snap_wr32(hdr + 32, chunk_size);
    snap_wr32(hdr + 36, (uint32_t)n);
    snap_wr32(hdr + 40, n_chunks);
    snap_wr32(hdr + 44, 4); /* sections written */
    snap_wr64(hdr + 48, image_size);
    snap_wr64(hdr + 56, meta_off);
    snap_wr64(hdr + 64, meta_size);
    snap_wr64(hdr + 72, tt_off);
    snap_wr64(hdr + 80, ct_off);
    snap_wr64(hdr + 88, data_off);
    snap_wr64(hdr + 96, XXH3_64bits(meta, meta_size));
    snap_wr64(hdr + 120, XXH3_64bits(hdr, 120));
    if ((rc = write_all(w.fd, meta, meta_size, meta_off, tmp, err)) ||
        (rc = write_all(w.fd, hdr, sizeof hdr, 0, tmp, err)))
        goto fail;
    if (ftruncate(w.fd, (off_t)file_size) != 0 || fsync(w.fd) != 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: cannot finish file: %s", tmp, strerror(errno));
        goto fail;
    }
    close(w.fd);
    w.fd = -1;
    if (rename(tmp, out) != 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: cannot rename to %s: %s", tmp, out, strerror(errno));
        goto fail;
    }
    (void)snap_sync_dir(out); /* best effort: the file itself is synced */
    goto done;
fail:
    if (w.fd >= 0) {
        close(w.fd);
        w.fd = -1;
    }
    if (w.progress)
        fputc('\n', stderr);
    if (made_tmp)
        unlink(tmp);
done:
    free(plan);
    free(meta);
    free(w.buf);
    free(w.comp);
    free(w.chunks);
    free(tbuf);
    free(sbuf);
    free(row);
    return rc;
}

int snap_pack(const char *src, const char *out, const snap_pack_opts *opts, snap_err *err)
{
    snap_src_model m;
    snap_src_init(&m);
    int rc = read_source(src, &m, err);
    if (rc == 0)
        rc = snap_pack_model(&m, out, opts, err);
    snap_src_free(&m);
    return rc;
}
