/* cpu.c -- the CPU backend: the reference forward pass for Llama-family and Qwen2 models,
 * reading weights in place from the snapshot image.
 *
 * Shapes (E = n_embd, H = n_head, K = n_head_kv, D = head_dim, F = n_ff, V = n_vocab,
 * T = tokens in the batch, B = KV blocks, S = 16 slots per block):
 *   weights: token_embd [V, E]; per layer attn_q [H*D, E], attn_k/v [K*D, E], attn_output
 *            [E, H*D], ffn_gate/up [F, E], ffn_down [E, F]; norms [E]; output [V, E] or tied.
 *            Read in place from the image (host mapping of the snapshot); q4/q8 matrices
 *            stored in another layout are rearranged into R16 once at load.
 *   KV pool: k_cache f16 [n_layer][B][K][D][S] (keys transposed per block), v_cache f16
 *            [n_layer][B][K][S][D] (host, allocated once). f16 as on the GPU and in
 *            llama.cpp: at 16 sequences the cache outgrows the caches and attention is
 *            bound by reading it (bench/RESULTS.md).
 *   scratch (host, sized once for max_batch_tokens): x, xb [T][E]; q, att [T][H*D];
 *            k, v [T][K*D]; g, u [T][F]; act (a matmul input quantized to int16) [T][max(E,
 *            H*D, F)]; rowbuf [threads][4][max(E, H*D, F)]; rope cos/sin [T][D]; scores
 *            [threads][H/K][max_ctx + S].
 * Q4/Q8 matmuls are integer dot products over the R16 arrangement of the weights (kernels.h),
 * the same arithmetic for one token or many; f16/f32 matrices are f32 dots, with four rows
 * at a time dequantized into rowbuf and run against every token of a batch (dot4xT).
 *
 * Per layer: xb = rmsnorm(x) * attn_norm; q,k,v = W xb (+ bias); rope(q, k); k,v -> cache;
 * att = softmax(q k^T / sqrt(D)) v over the sequence's positions 0..pos; x += Wo att;
 * xb = rmsnorm(x) * ffn_norm; x += Wd (silu(Wg xb) * Wu xb). Then logits for the requested
 * tokens: (rmsnorm(x) * output_norm) Wout^T.
 */
#include "../internal.h"
#include "kernels.h"

#include <math.h>
#include <stdatomic.h>
#include <unistd.h>

typedef struct cpu_mat {
    uint32_t dtype;
    uint64_t rows, cols;
    const uint8_t *base;      /* f16 / f32: the image */
    cpu_r16 r16;              /* q4 / q8: R16 (kernels.h) */
    uint8_t *owned;           /* R16 bytes rearranged at load, or NULL */
} cpu_mat;

typedef struct cpu_layer {
    const float *attn_norm, *ffn_norm;  /* [E] */
    const float *bq, *bk, *bv;          /* [H*D], [K*D], [K*D] or NULL */
    cpu_mat wq, wk, wv, wo, wg, wu, wd;
} cpu_layer;

typedef struct cpu_ctx {
    snap_config c;
    snap_image *img;
    const cpu_kernels *k;
    eng_pool *pool;
    cpu_mat embd, output;
    const float *output_norm;
    cpu_layer *layers;
    float *inv_freq;                  /* [D/2] after scaling */
    uint32_t max_tokens, max_ctx, n_blocks;
    uint16_t *k_cache, *v_cache;      /* f16 */
    /* scratch */
    float *x, *xb, *q, *kx, *vx, *att, *g, *u;
    float *cs;                        /* [T][2 D] RoPE tables (cpu_rope_table) */
    cpu_act act;                      /* a quantized matmul's input: [T][widest] int16 + scales */
    int amx;                          /* batches of AMX_MIN_TOKENS or more run on AMX tiles */
    uint8_t *tiles;                   /* [threads][T / 16][widest / 32] AMX A operands (kernels.h) */
    uint8_t *tiles_ahead;             /* one more such slot, shared: operands quantized ahead */
    uint64_t tiles_bytes;             /* per thread */
    float *rowbuf;                    /* [threads][4][widest] f16/f32 weight rows in f32 (prefill) */
    uint64_t widest;
    float *scores;                    /* [threads][group][max_ctx + 16] attention scratch */
    const uint16_t **blk_ptrs;        /* [threads][2][max_ctx / 16] a sequence's K / V blocks */
} cpu_ctx;

/* ---- binding weights ------------------------------------------------------------------- */

static inline int is_quant(const cpu_mat *m) { return m->dtype == SNAP_Q4 || m->dtype == SNAP_Q8; }
static int to_r16(cpu_mat *m, uint32_t layout, eng_err *err);

static cpu_r16 r16_view(const cpu_mat *m, const uint8_t *bytes)
{
    return (cpu_r16){m->dtype, m->rows, m->cols / 32, (m->rows + CPU_R16_ROWS - 1) / CPU_R16_ROWS, bytes};
}

static int bind(cpu_ctx *cx, snap_file *f, const char *name, cpu_mat *m, const float **vec, int required, eng_err *err)
{
    const snap_tensor *t;
    int rc = eng_bind_tensor(f, name, required, vec != NULL, "CPU", &t, err);
    if (rc || !t)
        return rc;
    if (vec) {
        *vec = (const float *)(cx->img->data + t->offset);
        return 0;
    }
    m->dtype = t->dtype;
    m->rows = t->shape[0];
    m->cols = t->shape[1];
    m->base = cx->img->data + t->offset;
    if (!is_quant(m))
        return 0;
    if (t->layout == SNAP_LAYOUT_R16) { /* in place (256-aligned in a page-aligned image): what target cpu packs */
        m->r16 = r16_view(m, m->base);
        return 0;
    }
    return to_r16(m, t->layout, err);
}

/* Rearranges a BLOCKS / SPLIT matrix (a snapshot packed for CUDA, or rows not a multiple of
 * 16) into R16: an owned, 64-byte aligned copy, made once at load. */
static int to_r16(cpu_mat *m, uint32_t layout, eng_err *err)
{
    uint64_t bytes = snap_r16_bytes(m->dtype, m->rows, m->cols);
    m->owned = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!m->owned)
        return eng_fail(err, ENG_ENOMEM, "out of memory rearranging a %llu x %llu matrix",
                        (unsigned long long)m->rows, (unsigned long long)m->cols);
    snap_to_r16(m->dtype, layout, m->rows, m->cols, m->base, m->owned);
    m->r16 = r16_view(m, m->owned);
    return 0;
}

/* Row r of m as f32 into out[cols] (embedding lookup, f16/f32 prefill). */
static void mat_row_f32(const cpu_mat *m, uint64_t r, float *out)
{
    if (m->dtype == SNAP_F32) {
        memcpy(out, m->base + r * m->cols * 4, m->cols * 4);
    } else if (m->dtype == SNAP_F16) {
        const uint16_t *h = (const uint16_t *)(m->base + r * m->cols * 2);
        for (uint64_t i = 0; i < m->cols; i++)
            out[i] = snap_f16_to_f32(h[i]);
    } else {
        cpu_r16_row_f32(&m->r16, r, out);
    }
}

/* ---- parallel ops ------------------------------------------------------------------------ */

/* Up to three matrices sharing one input: their rows are treated as one range split over
 * threads, so q/k/v (and gate/up) run in one parallel region. Quantized matrices split in
 * R16 groups of 16 rows (every group the same bytes per matrix), f16/f32 ones in rows. */
/* From this many tokens a batch's quantized matmuls run on AMX tiles (when the CPU has
 * them): a pass over the weights on tiles costs about the same for 1 or 16 tokens, the
 * vector kernel's grows with the tokens, and they cross near 11 (bench/RESULTS.md). The
 * results are bitwise the same either way. */
#define AMX_MIN_TOKENS 12

typedef struct matmul_task {
    cpu_ctx *cx;
    int amx;
    uint32_t n_tokens;
    const float *x;          /* [T][cols] input */
    const uint8_t *ahead;    /* x already quantized into these tiles (quant_ahead), or NULL */
    uint32_t n_mats;
    const cpu_mat *mats[3];
    float *out[3];           /* [T][rows] */
    const float *bias[3];
} matmul_task;

static uint64_t split_units(const cpu_mat *m) { return is_quant(m) ? m->r16.n_groups : m->rows; }

/* f16 / f32 rows [a, b) of m: dequantized four rows at a time into row, then run against
 * every token (dot4xT), or one dot per row for a single token. */
static void matmul_float_rows(const matmul_task *t, const cpu_mat *m, float *out, uint64_t a, uint64_t b, float *row)
{
    const cpu_kernels *k = t->cx->k;
    uint64_t cols = m->cols;
    for (uint64_t r = a; r < b; r++) {
        if (t->n_tokens == 1) {
            out[r] = m->dtype == SNAP_F16 ? k->dot_f16((const uint16_t *)(m->base + r * cols * 2), t->x, cols)
                                          : k->dot_f32((const float *)(m->base + r * cols * 4), t->x, cols);
        } else if (r + 4 <= b) {
            for (int q = 0; q < 4; q++)
                mat_row_f32(m, r + q, row + (uint64_t)q * cols);
            k->dot4xT(row, t->x, t->n_tokens, out + r, m->rows, cols);
            r += 3;
        } else {
            mat_row_f32(m, r, row);
            for (uint32_t tok = 0; tok < t->n_tokens; tok++)
                out[(uint64_t)tok * m->rows + r] = k->dot_f32(row, t->x + (uint64_t)tok * cols, cols);
        }
    }
}

static void add_bias(const matmul_task *t, uint32_t i, uint32_t tok0, uint32_t tok1, uint64_t r0, uint64_t r1)
{
    for (uint32_t tok = tok0; tok < tok1 && t->bias[i]; tok++)
        for (uint64_t r = r0; r < r1; r++)
            t->out[i][(uint64_t)tok * t->mats[i]->rows + r] += t->bias[i][r];
}

/* The AMX path. From AMX_TOKEN_SPLIT tiles of 16 tokens (a prefill chunk) threads take token
 * tiles with every row and quantize those tokens into their own operand tiles, so no pass
 * over the pool precedes the matmul; below, they take row groups of every token, quantized
 * once by the op that produced them (quant_ahead) or else by each thread. */
#define AMX_TOKEN_SPLIT 8

/* Whether an AMX batch of n_tokens splits its row groups between the threads (below
 * AMX_TOKEN_SPLIT tiles) rather than its token tiles. */
static int amx_rows_split(uint32_t n_tokens) { return (n_tokens + 15) / 16 < AMX_TOKEN_SPLIT; }

/* Whether a matmul of these matrices on n_tokens runs on AMX: quantized, one dtype (one
 * operand layout), enough tokens. */
static int on_amx(const cpu_ctx *cx, uint32_t n_tokens, const cpu_mat *const *mats, uint32_t n)
{
    if (!cx->amx || n_tokens < AMX_MIN_TOKENS)
        return 0;
    for (uint32_t i = 0; i < n; i++)
        if (!is_quant(mats[i]) || mats[i]->dtype != mats[0]->dtype)
            return 0;
    return 1;
}

/* Row groups [lo, hi) of the task's matrices taken as one range (each matrix's groups after
 * the previous one's), for tokens [ta, tb) whose operands are at tiles. */
static void amx_groups(const matmul_task *t, uint64_t lo, uint64_t hi, const uint8_t *tiles, uint32_t ta, uint32_t tb)
{
    uint64_t base = 0;
    for (uint32_t i = 0; i < t->n_mats && base < hi; base += t->mats[i]->r16.n_groups, i++) {
        const cpu_mat *m = t->mats[i];
        uint64_t n = m->r16.n_groups, a = lo > base ? lo - base : 0, b = hi - base < n ? hi - base : n;
        if (a >= b)
            continue;
        cpu_amx_matmul(&m->r16, a, b, tiles, tb - ta, t->out[i] + (uint64_t)ta * m->rows, m->rows);
        add_bias(t, i, ta, tb, a * CPU_R16_ROWS, b * CPU_R16_ROWS < m->rows ? b * CPU_R16_ROWS : m->rows);
    }
}

static void amx_run(const matmul_task *t, uint32_t ith, uint32_t nth)
{
    cpu_ctx *cx = t->cx;
    uint32_t T = t->n_tokens, n_tiles = (T + 15) / 16, dtype = t->mats[0]->dtype;
    uint8_t *tiles = cx->tiles + (uint64_t)ith * cx->tiles_bytes;
    uint64_t tile_stride = cx->act.nb * CPU_AMX_TILE_BYTES;
    uint64_t total = 0; /* row groups of all the matrices */
    for (uint32_t i = 0; i < t->n_mats; i++)
        total += t->mats[i]->r16.n_groups;
    if (amx_rows_split(T)) {
        const uint8_t *ops = t->ahead;
        if (ops) { /* the other threads wrote part of them a moment ago: fetch all at once, not
                    * a line at a time as the tile loads reach them (matmuls 7.3-7.6 -> 7.0-7.4 ms
                    * in a decode step of 16) */
            for (uint64_t o = 0; o < n_tiles * tile_stride; o += 64)
                __builtin_prefetch(ops + o, 0, 3);
        } else {
            for (uint32_t tok = 0; tok < T; tok++)
                cpu_amx_quant(t->x + (uint64_t)tok * cx->act.n, &cx->act, tok, dtype, tiles);
            ops = tiles;
        }
        uint64_t lo, hi;
        eng_split(total, ith, nth, &lo, &hi);
        amx_groups(t, lo, hi, ops, 0, T);
        return;
    }
    /* the (tile, row group) pairs in tile order, split evenly: whole tiles each but for one
     * tile shared at the boundary (9 tiles split 5 / 4 left a thread idle a fifth of the time) */
    uint64_t lo, hi;
    eng_split(n_tiles * total, ith, nth, &lo, &hi);
    if (lo >= hi)
        return;
    uint32_t tile0 = (uint32_t)(lo / total), tile1 = (uint32_t)((hi - 1) / total) + 1;
    uint32_t tok1 = tile1 * 16 < T ? tile1 * 16 : T;
    for (uint32_t tok = tile0 * 16; tok < tok1; tok++)
        cpu_amx_quant(t->x + (uint64_t)tok * cx->act.n, &cx->act, tok, dtype, tiles);
    for (uint32_t tile = tile0; tile < tile1; tile++) {
        uint64_t u0 = (uint64_t)tile * total;
        uint32_t ta = tile * 16, tb = ta + 16 < T ? ta + 16 : T;
        amx_groups(t, lo > u0 ? lo - u0 : 0, hi - u0 < total ? hi - u0 : total, tiles + tile * tile_stride, ta, tb);
    }
}

/* Batches on AMX below AMX_TOKEN_SPLIT tiles (a decode step of many sequences) have every
 * thread take row groups of every token, so each thread would quantize all the tokens. There
 * the op that produces a matmul's input (a norm, SwiGLU) quantizes each token once, on the
 * thread that computed it, into the shared tiles_ahead. Returns the matrix whose dtype and
 * width set the operands, or NULL where the matmul quantizes its input itself. */
static const cpu_mat *quant_ahead(const cpu_ctx *cx, uint32_t n_tokens, const cpu_mat *const *mats, uint32_t n)
{
    return on_amx(cx, n_tokens, mats, n) && amx_rows_split(n_tokens) ? mats[0] : NULL;
}

/* The width of m's input, in values and 32-value blocks. */
static void act_shape(cpu_act *a, const cpu_mat *m)
{
    a->n = m->cols;
    a->nb = m->cols / 32;
}

/* Token tok's input row x of matrix m into the shared operand tiles. */
static void quantize_ahead(const cpu_ctx *cx, const cpu_mat *m, const float *x, uint32_t tok)
{
    cpu_act a = {0};
    act_shape(&a, m);
    cpu_amx_quant(x, &a, tok, m->dtype, cx->tiles_ahead);
}

static void matmul_run(void *arg, uint32_t ith, uint32_t nth)
{
    matmul_task *t = arg;
    if (t->amx) {
        amx_run(t, ith, nth);
        return;
    }
    float *row = t->cx->rowbuf + (uint64_t)ith * 4 * t->cx->widest;
    uint64_t total = 0;
    for (uint32_t i = 0; i < t->n_mats; i++)
        total += split_units(t->mats[i]);
    uint64_t lo, hi;
    eng_split(total, ith, nth, &lo, &hi);
    uint64_t base = 0;
    for (uint32_t i = 0; i < t->n_mats && base < hi; base += split_units(t->mats[i]), i++) {
        const cpu_mat *m = t->mats[i];
        uint64_t n = split_units(m), a = lo > base ? lo - base : 0, b = hi - base < n ? hi - base : n;
        if (a >= b)
            continue;
        if (is_quant(m)) {
            t->cx->k->matmul_r16(&m->r16, a, b, &t->cx->act, t->n_tokens, t->out[i], m->rows);
            a *= CPU_R16_ROWS;
            b = b * CPU_R16_ROWS < m->rows ? b * CPU_R16_ROWS : m->rows;
        } else {
            matmul_float_rows(t, m, t->out[i], a, b, row);
        }
        add_bias(t, i, 0, t->n_tokens, a, b);
    }
}

typedef struct quant_task {
    cpu_ctx *cx;
    const float *x;
    uint32_t n_tokens;
} quant_task;

static void quant_run(void *arg, uint32_t ith, uint32_t nth)
{
    quant_task *t = arg;
    uint64_t lo, hi;
    eng_split(t->n_tokens, ith, nth, &lo, &hi);
    for (uint64_t tok = lo; tok < hi; tok++)
        t->cx->k->quant_act(t->x + tok * t->cx->act.n, &t->cx->act, (uint32_t)tok);
}

/* Runs matmuls that share input x [T][cols] in one parallel region, after quantizing x when
 * a matrix is quantized (in parallel once there are enough tokens to pay for a pass), unless
 * the op before quantized it ahead: `ahead` is then quant_ahead's answer for these matrices,
 * else NULL. */
static void matmul(cpu_ctx *cx, uint32_t n_tokens, const float *x, uint32_t n, const cpu_mat *const *mats,
                   float *const *outs, const float *const *biases, const cpu_mat *ahead)
{
    matmul_task t = {.cx = cx, .n_tokens = n_tokens, .x = x, .ahead = ahead ? cx->tiles_ahead : NULL, .n_mats = n};
    int quant = 0;
    for (uint32_t i = 0; i < n; i++) {
        t.mats[i] = mats[i];
        t.out[i] = outs[i];
        t.bias[i] = biases ? biases[i] : NULL;
        quant |= is_quant(mats[i]);
    }
    if (quant) {
        act_shape(&cx->act, mats[0]);
        t.amx = on_amx(cx, n_tokens, mats, n);
        quant_task q = {cx, x, n_tokens};
        if (!t.amx && n_tokens >= 16) /* (on AMX the threads quantize what they need, or the op before did: amx_run) */
            eng_pool_run(cx->pool, quant_run, &q);
        else if (!t.amx)
            quant_run(&q, 0, 1);
    }
    eng_pool_run(cx->pool, matmul_run, &t);
}

typedef struct attn_task {
    cpu_ctx *cx;
    const eng_batch *b;
    uint32_t layer;
    atomic_uint next_unit; /* the next unit of work not yet taken by a thread */
} attn_task;

/* KV block `block` of kv head kvh in layer `layer`: D x 16 floats, keys transposed ([D][16])
 * in k_cache, values as rows ([16][D]) in v_cache (the layouts the attend kernel reads). */
static inline uint16_t *kv_block(const cpu_ctx *cx, uint16_t *cache, uint32_t layer, int32_t block, uint32_t kvh)
{
    const snap_config *c = &cx->c;
    return cache + (((uint64_t)layer * cx->n_blocks + (uint64_t)block) * c->n_head_kv + kvh) * ENG_BLOCK_TOKENS * c->head_dim;
}

/* One kernel call per (token, KV head): the query heads sharing that KV head go together.
 * A thread takes a token at a time, all its KV heads in turn, so the heads' K/V blocks,
 * adjacent in the pool, are read one after another by one core (per layer at 16 sequences:
 * 118 -> 101 us against (token, head) pairs dealt out alternately); units are taken as
 * threads ask, since a prefill chunk's later tokens attend to more positions. */
static void attn_run(void *arg, uint32_t ith, uint32_t nth)
{
    attn_task *t = arg;
    cpu_ctx *cx = t->cx;
    const snap_config *c = &cx->c;
    const eng_batch *b = t->b;
    uint32_t D = c->head_dim, H = c->n_head, K = c->n_head_kv, group = H / K;
    float scale = 1.0f / sqrtf((float)D);
    uint32_t max_blk = (cx->max_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS;
    float *sc = cx->scores + (uint64_t)ith * group * (cx->max_ctx + ENG_BLOCK_TOKENS);
    const uint16_t **kb = cx->blk_ptrs + (uint64_t)ith * 2 * max_blk, **vb = kb + max_blk;
    /* a unit of work: a token's KV heads, or with fewer tokens than two per thread (a
     * decode of one sequence) one head, so every thread still has work */
    uint32_t per = b->n_tokens >= 2 * nth ? K : 1, n_units = b->n_tokens * K / per;
    for (uint32_t u; (u = atomic_fetch_add_explicit(&t->next_unit, 1, memory_order_relaxed)) < n_units;) {
        for (uint32_t w = u * per; w < (u + 1) * per; w++) {
            uint32_t tok = w / K, kvh = w % K;
            const eng_batch_seq *s = &b->seqs[b->seq[tok]];
            uint32_t n_pos = (uint32_t)b->pos[tok] + 1;
            for (uint32_t i = 0; i < (n_pos + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS; i++) {
                kb[i] = kv_block(cx, cx->k_cache, t->layer, s->blocks[i], kvh);
                vb[i] = kv_block(cx, cx->v_cache, t->layer, s->blocks[i], kvh);
            }
            uint64_t q0 = ((uint64_t)tok * H + (uint64_t)kvh * group) * D;
            cx->k->attend(cx->q + q0, group, D, kb, vb, n_pos, scale, sc, cx->att + q0);
        }
    }
}

/* Per-token work that is cheap and sequential per token: norms (after the residual add that
 * precedes them), rope, cache writes, SwiGLU; and the quantization of what they produce for
 * the next matmul where quant_ahead says so. */
enum { TOK_ATTN_NORM, TOK_ROPE, TOK_FFN_NORM, TOK_SWIGLU, TOK_OUT_NORM };

typedef struct token_task {
    cpu_ctx *cx;
    const eng_batch *b;
    uint32_t layer;
    int what;             /* TOK_* */
    uint32_t n;           /* tokens it runs over: the batch's, or its outputs' for TOK_OUT_NORM */
    const cpu_mat *ahead; /* the next matmul, when its input is quantized here (quant_ahead) */
} token_task;

static void add_into(float *x, const float *y, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void token_run(void *arg, uint32_t ith, uint32_t nth)
{
    token_task *t = arg;
    cpu_ctx *cx = t->cx;
    const snap_config *c = &cx->c;
    const cpu_layer *L = &cx->layers[t->layer];
    uint32_t E = c->n_embd, D = c->head_dim, H = c->n_head, K = c->n_head_kv;
    uint64_t lo, hi;
    eng_split(t->n, ith, nth, &lo, &hi);
    for (uint64_t tok = lo; tok < hi; tok++) {
        float *x = cx->x + tok * E, *xb = cx->xb + tok * E;
        switch (t->what) {
        case TOK_ATTN_NORM:
            if (t->layer > 0) /* x += the previous layer's FFN output */
                add_into(x, xb, E);
            cx->k->rmsnorm(xb, x, L->attn_norm, E, c->rms_eps);
            break;
        case TOK_ROPE: {
            const float *cs = cx->cs + tok * 2 * D;
            int halves = c->rope_style == SNAP_ROPE_NEOX;
            cx->k->rope(cx->q + tok * H * D, H, D, cs, halves);
            cx->k->rope(cx->kx + tok * K * D, K, D, cs, halves);
            const eng_batch_seq *s = &t->b->seqs[t->b->seq[tok]];
            int32_t p = t->b->pos[tok];
            uint32_t slot = (uint32_t)p % ENG_BLOCK_TOKENS;
            for (uint32_t h = 0; h < K; h++) {
                float *kv = cx->kx + (tok * K + h) * D;
                uint16_t *kc = kv_block(cx, cx->k_cache, t->layer, s->blocks[p / ENG_BLOCK_TOKENS], h);
                uint16_t *vc = kv_block(cx, cx->v_cache, t->layer, s->blocks[p / ENG_BLOCK_TOKENS], h) + slot * D;
                cx->k->to_f16(kv, kc + slot, D, ENG_BLOCK_TOKENS);
                cx->k->to_f16(cx->vx + (tok * K + h) * D, vc, D, 1);
            }
            break;
        }
        case TOK_FFN_NORM:
            add_into(x, xb, E); /* x += the attention output */
            cx->k->rmsnorm(xb, x, L->ffn_norm, E, c->rms_eps);
            break;
        case TOK_SWIGLU: cx->k->swiglu(cx->g + tok * c->n_ff, cx->u + tok * c->n_ff, c->n_ff); break;
        case TOK_OUT_NORM: /* gather the output tokens (the residual is in x: see cpu_forward) */
            cx->k->rmsnorm(xb, cx->x + (uint64_t)t->b->out[tok] * E, cx->output_norm, E, c->rms_eps);
            break;
        }
        if (t->ahead)
            quantize_ahead(cx, t->ahead, t->what == TOK_SWIGLU ? cx->g + tok * c->n_ff : xb, (uint32_t)tok);
    }
}

/* Per-token ops of a few tokens cost less than waking the pool: run them here. */
static void run_tokens(cpu_ctx *cx, token_task *tt, int what, const cpu_mat *ahead)
{
    tt->what = what;
    tt->n = what == TOK_OUT_NORM ? tt->b->n_out : tt->b->n_tokens;
    tt->ahead = ahead;
    if (tt->n < 4)
        token_run(tt, 0, 1);
    else
        eng_pool_run(cx->pool, token_run, tt);
}

static int cpu_forward(void *ctx, const eng_batch *b, float *logits, eng_err *err)
{
    cpu_ctx *cx = ctx;
    const snap_config *c = &cx->c;
    uint32_t T = b->n_tokens, E = c->n_embd, D = c->head_dim;
    if (T == 0 || T > cx->max_tokens || b->n_out > cx->max_tokens)
        return eng_fail(err, ENG_EINVAL, "batch of %u tokens (%u outputs) exceeds the backend's %u", T, b->n_out,
                        cx->max_tokens);
    for (uint32_t i = 0; i < T; i++) {
        if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= c->n_vocab)
            return eng_fail(err, ENG_EINVAL, "token id %d out of range", b->tokens[i]);
        int32_t p = b->pos[i];
        if (b->seq[i] >= b->n_seqs || p < 0 || (uint32_t)p >= cx->max_ctx ||
            (uint32_t)p / ENG_BLOCK_TOKENS >= b->seqs[b->seq[i]].n_blocks)
            return eng_fail(err, ENG_EINVAL, "token %u: position %d has no KV block", i, p);
    }
    for (uint32_t i = 0; i < b->n_out; i++)
        if (b->out[i] >= T)
            return eng_fail(err, ENG_EINVAL, "output index %u past the batch", b->out[i]);
    /* embeddings and rope angles */
    for (uint32_t i = 0; i < T; i++) {
        mat_row_f32(&cx->embd, (uint64_t)b->tokens[i], cx->x + (uint64_t)i * E);
        cpu_rope_table((float)b->pos[i], cx->inv_freq, D, c->rope_style == SNAP_ROPE_NEOX, cx->cs + (uint64_t)i * 2 * D);
    }
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const cpu_layer *L = &cx->layers[l];
        const cpu_mat *qkv[3] = {&L->wq, &L->wk, &L->wv}, *wo[1] = {&L->wo}, *gu[2] = {&L->wg, &L->wu},
                      *wd[1] = {&L->wd};
        const cpu_mat *qkv_ahead = quant_ahead(cx, T, qkv, 3), *gu_ahead = quant_ahead(cx, T, gu, 2),
                      *wd_ahead = quant_ahead(cx, T, wd, 1);
        token_task tt = {.cx = cx, .b = b, .layer = l};
        run_tokens(cx, &tt, TOK_ATTN_NORM, qkv_ahead);
        float *qkv_out[3] = {cx->q, cx->kx, cx->vx};
        const float *qkv_bias[3] = {L->bq, L->bk, L->bv};
        matmul(cx, T, cx->xb, 3, qkv, qkv_out, qkv_bias, qkv_ahead);
        run_tokens(cx, &tt, TOK_ROPE, NULL);
        attn_task at = {cx, b, l, 0};
        eng_pool_run(cx->pool, attn_run, &at);
        float *wo_out[1] = {cx->xb};
        matmul(cx, T, cx->att, 1, wo, wo_out, NULL, NULL);
        run_tokens(cx, &tt, TOK_FFN_NORM, gu_ahead);
        float *gu_out[2] = {cx->g, cx->u};
        matmul(cx, T, cx->xb, 2, gu, gu_out, NULL, gu_ahead);
        run_tokens(cx, &tt, TOK_SWIGLU, wd_ahead);
        float *wd_out[1] = {cx->xb};
        matmul(cx, T, cx->g, 1, wd, wd_out, NULL, wd_ahead);
    }
    add_into(cx->x, cx->xb, (uint64_t)T * E); /* the last layer's FFN output */
    /* logits for the requested tokens: gather, norm, head */
    const cpu_mat *head[1] = {&cx->output};
    const cpu_mat *head_ahead = quant_ahead(cx, b->n_out, head, 1);
    token_task tt = {.cx = cx, .b = b};
    run_tokens(cx, &tt, TOK_OUT_NORM, head_ahead);
    float *head_out[1] = {logits};
    matmul(cx, b->n_out, cx->xb, 1, head, head_out, NULL, head_ahead);
    return 0;
}

/* ---- create / destroy ------------------------------------------------------------------- */

static void cpu_destroy(void *ctx)
{
    cpu_ctx *cx = ctx;
    if (!cx)
        return;
    eng_pool_destroy(cx->pool);
    snap_image_free(cx->img);
    for (uint32_t l = 0; cx->layers && l < cx->c.n_layer; l++) {
        cpu_layer *L = &cx->layers[l];
        cpu_mat *mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            free(mats[i]->owned);
    }
    if (cx->output.owned != cx->embd.owned)
        free(cx->output.owned);
    free(cx->embd.owned);
    free(cx->layers);
    free(cx->inv_freq);
    free(cx->k_cache);
    free(cx->v_cache);
    free(cx->x);
    free(cx->xb);
    free(cx->q);
    free(cx->kx);
    free(cx->vx);
    free(cx->att);
    free(cx->g);
    free(cx->u);
    free(cx->cs);
    free(cx->act.x16);
    free(cx->act.s);
    free(cx->act.sx);
    free(cx->tiles);
    free(cx->rowbuf);
    free(cx->scores);
    free(cx->blk_ptrs);
    free(cx);
}

static int cpu_create(snap_file *f, const eng_backend_params *p, void **out, uint32_t *n_kv_blocks,
                      snap_load_stats *stats, eng_err *err)
{
    *out = NULL;
    cpu_ctx *cx = calloc(1, sizeof *cx);
    if (!cx)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    cx->c = *snap_get_config(f);
    const snap_config *c = &cx->c;
    cx->k = cpu_kernels_get();
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t nt = p->n_threads ? p->n_threads : (uint32_t)(ncpu > 0 ? ncpu : 1);
    int rc = 0;
    snap_err serr = {{0}};
    snap_load_opts lo = {.n_threads = nt, .io = p->load_io, .verify = 1};
    if (snap_load_host(f, &lo, &cx->img, stats, &serr) != 0) {
        rc = eng_fail(err, ENG_ESNAPSHOT, "%s", serr.msg);
        goto fail;
    }
    if ((rc = eng_pool_create(nt, &cx->pool)))
        goto fail;
    cx->layers = calloc(c->n_layer, sizeof *cx->layers);
    cx->inv_freq = calloc(c->head_dim / 2, sizeof *cx->inv_freq);
    if (!cx->layers || !cx->inv_freq)
        goto nomem;
    const float *factors = NULL;
    if ((rc = bind(cx, f, "token_embd.weight", &cx->embd, NULL, 1, err)) ||
        (rc = bind(cx, f, "output_norm.weight", NULL, &cx->output_norm, 1, err)) ||
        (rc = bind(cx, f, "rope_freqs.weight", NULL, &factors, 0, err)))
        goto fail;
    if (c->flags & SNAP_FLAG_TIED_EMBED)
        cx->output = cx->embd;
    else if ((rc = bind(cx, f, "output.weight", &cx->output, NULL, 1, err)))
        goto fail;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        cpu_layer *L = &cx->layers[l];
        int bias = (c->flags & SNAP_FLAG_QKV_BIAS) != 0;
        ENG_BIND_LAYER();
    }
    eng_rope_inv_freq(c, factors, cx->inv_freq);

    /* KV pool: the budget, or enough for a full context of 4 sequences by default */
    uint64_t per_block = 2ull * c->n_layer * c->n_head_kv * ENG_BLOCK_TOKENS * c->head_dim * sizeof(uint16_t);
    cx->max_ctx = p->max_ctx ? p->max_ctx : c->n_ctx_train;
    uint64_t budget = p->kv_mem_bytes ? p->kv_mem_bytes : per_block * ((cx->max_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS) * 4;
    uint64_t nb = budget / per_block;
    if (nb < 1 || nb > (1u << 30)) {
        rc = eng_fail(err, ENG_EINVAL, "KV budget of %llu bytes holds %llu blocks of %llu bytes",
                      (unsigned long long)budget, (unsigned long long)nb, (unsigned long long)per_block);
        goto fail;
    }
    cx->n_blocks = (uint32_t)nb;
    uint64_t half = per_block / 2 * nb / sizeof(uint16_t);
    cx->k_cache = calloc(half, sizeof(uint16_t));
    cx->v_cache = calloc(half, sizeof(uint16_t));

    uint32_t T = cx->max_tokens = p->max_batch_tokens ? p->max_batch_tokens : 512;
    uint64_t E = c->n_embd, QD = (uint64_t)c->n_head * c->head_dim, KD = (uint64_t)c->n_head_kv * c->head_dim;
    uint64_t widest = E > QD ? E : QD;
    if (c->n_ff > widest)
        widest = c->n_ff;
    cx->x = malloc(T * E * sizeof(float));
    cx->xb = malloc(T * widest * sizeof(float));
    cx->q = malloc(T * QD * sizeof(float));
    cx->kx = malloc(T * KD * sizeof(float));
    cx->vx = malloc(T * KD * sizeof(float));
    cx->att = malloc(T * QD * sizeof(float));
    cx->g = malloc(T * (uint64_t)c->n_ff * sizeof(float));
    cx->u = malloc(T * (uint64_t)c->n_ff * sizeof(float));
    cx->cs = malloc(T * 2 * (uint64_t)c->head_dim * sizeof(float));
    cx->widest = widest;
    cx->act.x16 = aligned_alloc(64, (T * widest * sizeof(int16_t) + 63) / 64 * 64);
    cx->act.s = malloc(T * (widest / 32) * sizeof(float));
    cx->act.sx = malloc(T * (widest / 32) * sizeof(float));
    cx->amx = cpu_kernels_use_amx();
    cx->tiles_bytes = (T + 15) / 16 * (widest / 32) * CPU_AMX_TILE_BYTES;
    if (cx->amx && !(cx->tiles = aligned_alloc(64, (eng_pool_size(cx->pool) + 1) * cx->tiles_bytes)))
        goto nomem;
    if (cx->amx)
        cx->tiles_ahead = cx->tiles + eng_pool_size(cx->pool) * cx->tiles_bytes;
    cx->rowbuf = malloc((uint64_t)eng_pool_size(cx->pool) * 4 * widest * sizeof(float));
    uint64_t nth = eng_pool_size(cx->pool), group = c->n_head / c->n_head_kv;
    cx->scores = malloc(nth * group * (cx->max_ctx + ENG_BLOCK_TOKENS) * sizeof(float));
    cx->blk_ptrs = malloc(nth * 2 * ((cx->max_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS) * sizeof *cx->blk_ptrs);
    if (!cx->k_cache || !cx->v_cache || !cx->x || !cx->xb || !cx->q || !cx->kx || !cx->vx || !cx->att || !cx->g ||
        !cx->u || !cx->cs || !cx->act.x16 || !cx->act.s || !cx->act.sx || !cx->rowbuf || !cx->scores || !cx->blk_ptrs)
        goto nomem;
    *n_kv_blocks = cx->n_blocks;
    *out = cx;
    return 0;
nomem:
    rc = eng_fail(err, ENG_ENOMEM, "out of memory sizing the CPU backend");
fail:
    cpu_destroy(cx);
    return rc;
}

static void cpu_parallel(void *ctx, eng_task_fn fn, void *arg) { eng_pool_run(((cpu_ctx *)ctx)->pool, fn, arg); }

const eng_backend_ops eng_cpu_backend = {"cpu", cpu_create, cpu_forward, cpu_destroy, cpu_parallel};
