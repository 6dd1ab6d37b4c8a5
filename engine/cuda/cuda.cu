/* cuda.cu -- the CUDA backend: streamed weight load into one device arena, a paged f16 KV
 * pool, and the forward pass of engine/cpu/cpu.c (the reference) on the device.
 *
 * Load (create):
 *   1. A thread creates the CUDA context, the streams, the weight arena (one cudaMalloc of
 *      the image size), the pinned staging ring and the cuBLAS handle, while the calling
 *      thread asks the kernel to read the snapshot ahead (posix_fadvise WILLNEED): the file
 *      is being read while the context comes up.
 *   2. snap_load_stream's worker threads read/decompress/verify chunks into the ring
 *      (ECU_RING buffers of chunk_size, pinned once, reused); each commit issues an async
 *      H2D copy on one of ECU_COPY_STREAMS streams and records the buffer's event; acquire
 *      waits for that event before a buffer is refilled (back-pressure).
 *   3. Tensors are bound to arena offsets; the KV pool takes what is free after weights and
 *      scratch: min(total x --gpu-mem-fraction (default 0.9) - used, --kv-mem).
 *   Nothing is compiled, tuned or captured on this path.
 *
 * Shapes (E, H, K, D, F, V as in cpu.c; T = tokens in the batch <= max_tokens):
 *   weights: device arena, the snapshot image as is (SPLIT q4/q8 for --target cuda; BLOCKS
 *            also read).
 *   KV pool: k, v: f16 [n_layer][n_blocks][K][16][D] (device).
 *   scratch (device, sized once): x [T][E] (the residual stream); xb [T][max(E, H*D, F)]; q, att [T][H*D];
 *            k, v [T][K*D]; g, u [T][F]; logits [T][V]; xh (f16 activations) [T][widest];
 *            wt (f16 weight tile) [ECU_TILE_ELEMS]; batch metadata (tokens, pos, seq, out,
 *            block offsets, blocks) in one buffer uploaded per forward from a pinned mirror.
 * Decode batches of <= 4 tokens use the GEMV kernels: with SPLIT q4/q8 weights (every layer
 * matrix; `fused`) six launches per layer -- QKV with the attention RMSNorm folded into its
 * input, RoPE + KV store, attention, the output projection adding into x, gate/up with the
 * FFN RMSNorm in and SwiGLU out, down adding into x -- replayed as one CUDA graph per
 * (tokens, outputs) once a background thread has captured it after ready. Larger batches
 * dequantize weight tiles to f16 and run cuBLAS GEMMs (tensor cores) with f32 accumulation.
 */
#include "kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#define ECU_RING 16 /* 16 x the 4 MiB chunk: 64 MiB pinned, every loader thread busy */
#define ECU_COPY_STREAMS 2
#define ECU_TILE_ELEMS (32ull << 20) /* f16 weight tile: 64 MiB */

typedef struct ecu_layer {
    const float *attn_norm, *ffn_norm; /* device [E] */
    const float *bq, *bk, *bv;         /* device or NULL */
    ecu_mat wq, wk, wv, wo, wg, wu, wd;
} ecu_layer;

typedef struct ecu_ring_buf {
    void *host;                        /* pinned [chunk_size] */
    cudaEvent_t done;                  /* recorded after its H2D copy */
    int busy;                          /* held by a loader worker between acquire and commit */
    int copied;                        /* an H2D copy was issued (wait on done before reuse) */
} ecu_ring_buf;

typedef struct ecu_ctx {
    snap_config c;
    int device;
    cudaStream_t stream;               /* compute */
    cudaStream_t copy[ECU_COPY_STREAMS];
    cublasHandle_t blas;
    uint8_t *d_weights;                /* the image, one allocation */
    uint64_t image_size;
    /* staging ring */
    ecu_ring_buf ring[ECU_RING];
    uint32_t chunk_size;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int mu_init;
    uint32_t n_copies;
    int sink_error;
    char sink_msg[256];
    /* model */
    ecu_mat embd, output;
    const float *output_norm;
    ecu_layer *layers;
    uint32_t fused_tokens;             /* most tokens for which every layer matrix takes the fused GEMVs
                                        * (ecu_gemv_fusable); 0: none */
    float *d_inv_freq;                 /* [D/2] */
    uint32_t max_tokens, max_ctx, n_blocks;
    void *d_kc, *d_vc;                 /* f16 KV pool */
    uint64_t kv_layer_elems;           /* halves per layer in one of k/v */
    /* scratch */
    float *x, *xb, *q, *kx, *vx, *att, *g, *u, *logits;
    void *xh, *wt;
    uint8_t *d_meta, *h_meta;          /* batch metadata, device and pinned host mirror */
    uint64_t meta_bytes;
    uint32_t max_block_entries;
    /* decode graphs [T][n_out], published by the capture thread */
    cudaGraphExec_t graphs[ECU_GEMV_MAX_TOKENS + 1][ECU_GEMV_MAX_TOKENS + 1];
    pthread_t capture_thread;
    int capture_started, graphs_stop;
    /* context-creation thread */
    pthread_t init_thread;
    int init_started;
    int init_rc;
    char init_msg[256];
} ecu_ctx;

#define CU_TRY(call, what)                                                                           \
    do {                                                                                             \
        cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                     \
            rc = eng_fail(err, e_ == cudaErrorMemoryAllocation ? ENG_ENOMEM : ENG_EBACKEND, "cuda: %s: %s", \
                          what, cudaGetErrorString(e_));                                             \
            goto fail;                                                                               \
        }                                                                                            \
    } while (0)

/* ---- context creation (own thread) ------------------------------------------------------- */

static void *init_main(void *arg)
{
    ecu_ctx *cx = (ecu_ctx *)arg;
    cudaError_t e;
    const char *what = "set device";
    if ((e = cudaSetDevice(cx->device)) != cudaSuccess)
        goto fail;
    what = "create context";
    if ((e = cudaFree(0)) != cudaSuccess)
        goto fail;
    what = "set kernel limits";
    if (ecu_prepare() != 0) {
        e = cudaGetLastError();
        goto fail;
    }
    what = "create streams";
    if ((e = cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking)) != cudaSuccess)
        goto fail;
    for (int i = 0; i < ECU_COPY_STREAMS; i++)
        if ((e = cudaStreamCreateWithFlags(&cx->copy[i], cudaStreamNonBlocking)) != cudaSuccess)
            goto fail;
    what = "allocate the weight arena";
    if ((e = cudaMalloc((void **)&cx->d_weights, cx->image_size)) != cudaSuccess)
        goto fail;
    what = "pin staging buffers";
    for (int i = 0; i < ECU_RING; i++) {
        if ((e = cudaHostAlloc(&cx->ring[i].host, cx->chunk_size, cudaHostAllocDefault)) != cudaSuccess)
            goto fail;
        if ((e = cudaEventCreateWithFlags(&cx->ring[i].done, cudaEventDisableTiming)) != cudaSuccess)
            goto fail;
    }
    if (cublasCreate(&cx->blas) != CUBLAS_STATUS_SUCCESS) {
        snprintf(cx->init_msg, sizeof cx->init_msg, "cuda: cublasCreate failed");
        cx->init_rc = ENG_EBACKEND;
        return NULL;
    }
    cublasSetStream(cx->blas, cx->stream);
    cx->init_rc = 0;
    return NULL;
fail:
    snprintf(cx->init_msg, sizeof cx->init_msg, "cuda: %s: %s", what, cudaGetErrorString(e));
    cx->init_rc = e == cudaErrorMemoryAllocation ? ENG_ENOMEM : ENG_EBACKEND;
    return NULL;
}

/* ---- the load sink ------------------------------------------------------------------------- */

static int sink_acquire(void *ctx, uint32_t index, size_t raw_size, void **buf)
{
    ecu_ctx *cx = (ecu_ctx *)ctx;
    if (raw_size > cx->chunk_size)
        return -1;
    pthread_mutex_lock(&cx->mu);
    int k = -1;
    while (k < 0) {
        for (int i = 0; i < ECU_RING && k < 0; i++)
            if (!cx->ring[i].busy)
                k = i;
        if (k < 0)
            pthread_cond_wait(&cx->cv, &cx->mu);
    }
    cx->ring[k].busy = 1;
    int wait = cx->ring[k].copied;
    pthread_mutex_unlock(&cx->mu);
    if (wait && cudaEventSynchronize(cx->ring[k].done) != cudaSuccess)
        return -1;
    *buf = cx->ring[k].host;
    return 0;
}

static int sink_commit(void *ctx, uint32_t index, uint64_t image_offset, void *buf, size_t raw_size)
{
    ecu_ctx *cx = (ecu_ctx *)ctx;
    int k = 0;
    while (k < ECU_RING && cx->ring[k].host != buf)
        k++;
    if (k == ECU_RING || image_offset + raw_size > cx->image_size)
        return -1;
    cudaSetDevice(cx->device);
    cudaStream_t s = cx->copy[index % ECU_COPY_STREAMS];
    cudaError_t e = cudaMemcpyAsync(cx->d_weights + image_offset, buf, raw_size, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess)
        e = cudaEventRecord(cx->ring[k].done, s);
    pthread_mutex_lock(&cx->mu);
    cx->ring[k].busy = 0;
    cx->ring[k].copied = 1;
    if (e != cudaSuccess && !cx->sink_error) {
        cx->sink_error = 1;
        snprintf(cx->sink_msg, sizeof cx->sink_msg, "H2D copy of chunk %u: %s", index, cudaGetErrorString(e));
    }
    pthread_cond_signal(&cx->cv);
    pthread_mutex_unlock(&cx->mu);
    return e == cudaSuccess ? 0 : -1;
}

static int sink_finish(void *ctx)
{
    ecu_ctx *cx = (ecu_ctx *)ctx;
    for (int i = 0; i < ECU_COPY_STREAMS; i++)
        if (cudaStreamSynchronize(cx->copy[i]) != cudaSuccess)
            return -1;
    return 0;
}

/* ---- binding --------------------------------------------------------------------------------- */

static int bind(ecu_ctx *cx, snap_file *f, const char *name, ecu_mat *m, const float **vec, int required, eng_err *err)
{
    const snap_tensor *t;
    int rc = eng_bind_tensor(f, name, required, vec != NULL, "CUDA", &t, err);
    if (rc || !t)
        return rc;
    if (vec) {
        *vec = (const float *)(cx->d_weights + t->offset);
        return 0;
    }
    if (t->shape[1] % 32) /* the kernels read whole blocks of 32 */
        return eng_fail(err, ENG_EUNSUPPORTED, "%s: tensor '%s' has %llu columns; the CUDA backend needs a multiple of 32",
                        snap_path(f), name, (unsigned long long)t->shape[1]);
    m->dtype = t->dtype;
    m->layout = t->layout;
    m->rows = t->shape[0];
    m->cols = t->shape[1];
    m->d_base = cx->d_weights + t->offset;
    if (t->layout == SNAP_LAYOUT_R16) {
        /* a snapshot packed for the CPU: rearrange into SPLIT through the host, once
         * (`thaw pack --target cuda` avoids this) */
        uint8_t *h = (uint8_t *)malloc(t->size), *split = (uint8_t *)malloc(t->size);
        cudaError_t e = h && split ? cudaMemcpy(h, m->d_base, t->size, cudaMemcpyDeviceToHost) : cudaErrorMemoryAllocation;
        if (e == cudaSuccess) {
            snap_r16_to_split(t, h, split);
            e = cudaMemcpy((void *)m->d_base, split, t->size, cudaMemcpyHostToDevice);
        }
        free(h);
        free(split);
        if (e != cudaSuccess)
            return eng_fail(err, ENG_EBACKEND, "%s: rearranging '%s' for the GPU: %s", snap_path(f), name,
                            cudaGetErrorString(e));
        m->layout = SNAP_LAYOUT_SPLIT;
    }
    return 0;
}

/* ---- forward --------------------------------------------------------------------------------- */

/* y [T][rows] = W x [T][cols] (+ bias), on stream s (the GEMM path runs on cx->stream, cuBLAS's). */
static int matmul(ecu_ctx *cx, void *s, const ecu_mat *m, const float *x, uint32_t T, float *y, const float *bias,
                  eng_err *err)
{
    if (T <= ECU_GEMV_MAX_TOKENS)
        return ecu_gemv(m, x, m->cols, T, y, m->rows, bias, s, err);
    int rc = ecu_to_f16(x, cx->xh, (uint64_t)T * m->cols, s, err);
    if (rc)
        return rc;
    uint64_t tile = ECU_TILE_ELEMS / m->cols;
    const float one = 1.0f, zero = 0.0f;
    for (uint64_t r0 = 0; r0 < m->rows; r0 += tile) {
        uint64_t n = m->rows - r0 < tile ? m->rows - r0 : tile;
        if ((rc = ecu_dequant_f16(m, r0, n, cx->wt, s, err)))
            return rc;
        /* column-major view: C [n x T] (ldc rows) = Wt^T [n x cols] * X [cols x T] */
        cublasStatus_t bs = cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)m->cols, &one, cx->wt,
                                        CUDA_R_16F, (int)m->cols, cx->xh, CUDA_R_16F, (int)m->cols, &zero, y + r0,
                                        CUDA_R_32F, (int)m->rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS)
            return eng_fail(err, ENG_EBACKEND, "cublasGemmEx [%llu x %llu] x %u tokens failed: %d",
                            (unsigned long long)n, (unsigned long long)m->cols, T, (int)bs);
    }
    return bias ? ecu_add_bias(y, bias, m->rows, T, s, err) : 0;
}

/* ---- op profile (bench/gpu only: ecu_profile) ----------------------------------------------------
 * Events around each op of a forward; read after the forward's final synchronize. Off by
 * default: a forward then does one branch per op and records nothing. */
enum { OP_EMBED, OP_NORM, OP_QKV, OP_ROPE, OP_ATTN, OP_WO, OP_GATE_UP, OP_DOWN, OP_HEAD, OP_COPY, OP_N };
static const char *const op_names[OP_N] = {"embed", "norm", "qkv", "rope_store", "attention", "wo", "gate_up_swiglu",
                                           "down", "head", "logits_d2h"};
#define PROF_MAX 2048
static struct {
    int on;
    cudaEvent_t ev[2 * PROF_MAX];
    int op[PROF_MAX];
    uint32_t n;
    double ms[OP_N];
    uint64_t calls[OP_N];
} prof;

static int prof_begin(cudaStream_t s, int pf)
{
    if (pf && prof.on && prof.n < PROF_MAX)
        cudaEventRecord(prof.ev[2 * prof.n], s);
    return 0;
}

static int prof_end(cudaStream_t s, int pf, int op, int rc)
{
    if (pf && prof.on && prof.n < PROF_MAX) {
        cudaEventRecord(prof.ev[2 * prof.n + 1], s);
        prof.op[prof.n++] = op;
    }
    return rc;
}
#define PROF(op, call) (prof_begin(stream, pf) || prof_end(stream, pf, op, (call)))

static void prof_collect(void)
{
    for (uint32_t i = 0; i < prof.n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, prof.ev[2 * i], prof.ev[2 * i + 1]) == cudaSuccess) {
            prof.ms[prof.op[i]] += ms;
            prof.calls[prof.op[i]]++;
        }
    }
    prof.n = 0;
}

extern "C" int ecu_profile(int on, FILE *out, const char *label)
{
    if (on && !prof.on) {
        for (int i = 0; i < 2 * PROF_MAX; i++)
            if (!prof.ev[i] && cudaEventCreate(&prof.ev[i]) != cudaSuccess)
                return -1;
        memset(prof.ms, 0, sizeof prof.ms);
        memset(prof.calls, 0, sizeof prof.calls);
        prof.n = 0;
    }
    if (!on && prof.on && out) {
        double total = 0;
        for (int k = 0; k < OP_N; k++)
            total += prof.ms[k];
        for (int k = 0; k < OP_N; k++)
            if (prof.calls[k])
                fprintf(out, "gpu_profile %s op=%s calls=%llu total_ms=%.3f us_per_call=%.2f share=%.3f\n", label,
                        op_names[k], (unsigned long long)prof.calls[k], prof.ms[k], 1e3 * prof.ms[k] / prof.calls[k],
                        total > 0 ? prof.ms[k] / total : 0);
    }
    prof.on = on;
    return 0;
}

/* q, kx, vx = Wq, Wk, Wv xb: one launch on the GEMV path */
static int qkv(ecu_ctx *cx, void *s, const ecu_layer *L, uint32_t T, eng_err *err)
{
    if (T <= ECU_GEMV_MAX_TOKENS) {
        ecu_mat m[3] = {L->wq, L->wk, L->wv};
        float *y[3] = {cx->q, cx->kx, cx->vx};
        const float *bias[3] = {L->bq, L->bk, L->bv};
        return ecu_gemv_multi(3, m, cx->xb, T, y, bias, NULL, 0, s, err);
    }
    int rc;
    if ((rc = matmul(cx, s, &L->wq, cx->xb, T, cx->q, L->bq, err)) ||
        (rc = matmul(cx, s, &L->wk, cx->xb, T, cx->kx, L->bk, err)))
        return rc;
    return matmul(cx, s, &L->wv, cx->xb, T, cx->vx, L->bv, err);
}

/* g = silu(Wg att) * (Wu att): fused into one launch on the GEMV path */
static int gate_up(ecu_ctx *cx, void *s, const ecu_layer *L, uint32_t T, eng_err *err)
{
    if (ecu_gemv_swiglu_ok(&L->wg, &L->wu, T))
        return ecu_gemv_swiglu(&L->wg, &L->wu, cx->att, T, cx->g, NULL, s, err);
    int rc;
    if ((rc = matmul(cx, s, &L->wg, cx->att, T, cx->g, NULL, err)) ||
        (rc = matmul(cx, s, &L->wu, cx->att, T, cx->u, NULL, err)))
        return rc;
    return ecu_swiglu(cx->g, cx->u, (uint64_t)T * cx->c.n_ff, s, err);
}

/* Every kernel of a forward of T tokens with n_out outputs, enqueued on s. All that varies
 * between batches of the same (T, n_out) is read from the device copy of the batch metadata,
 * so this is also what a decode graph captures (pf = 0 there: no profile events). */
static int forward_body(ecu_ctx *cx, cudaStream_t stream, uint32_t T, uint32_t n_out, int pf, eng_err *err)
{
    const snap_config *c = &cx->c;
    const uint32_t E = c->n_embd;
    uint8_t *d = cx->d_meta;
    const int32_t *d_tok = (const int32_t *)d, *d_pos = d_tok + cx->max_tokens;
    const uint32_t *d_seq = (const uint32_t *)(d_pos + cx->max_tokens), *d_out = d_seq + cx->max_tokens;
    const uint32_t *d_boff = d_out + cx->max_tokens;
    ecu_kv_batch kb = {d_pos, d_seq, d_boff, (const int32_t *)(d_boff + cx->max_tokens)};
    ecu_attn_shape as = {c->n_head, c->n_head_kv, c->head_dim, cx->n_blocks, c->rope_style};
    void *s = stream;
    int rc;
    if ((rc = PROF(OP_EMBED, ecu_embed(&cx->embd, d_tok, T, cx->x, s, err))))
        return rc;
    if (T <= cx->fused_tokens) {
        /* the GEMV path: each layer's two RMSNorms ride in the QKV and gate/up products' input,
         * the two residual adds in the output and down products' (x += W a) */
        for (uint32_t l = 0; l < c->n_layer; l++) {
            const ecu_layer *L = &cx->layers[l];
            __half *kc = (__half *)cx->d_kc + l * cx->kv_layer_elems, *vc = (__half *)cx->d_vc + l * cx->kv_layer_elems;
            const ecu_norm an = {L->attn_norm, c->rms_eps}, fn = {L->ffn_norm, c->rms_eps};
            const ecu_mat mqkv[3] = {L->wq, L->wk, L->wv};
            float *yqkv[3] = {cx->q, cx->kx, cx->vx}, *yx[1] = {cx->x};
            const float *bqkv[3] = {L->bq, L->bk, L->bv};
            if ((rc = PROF(OP_QKV, ecu_gemv_multi(3, mqkv, cx->x, T, yqkv, bqkv, &an, 0, s, err))) ||
                (rc = PROF(OP_ROPE, ecu_rope_store(&as, &kb, T, cx->d_inv_freq, cx->q, cx->kx, cx->vx, kc, vc, s, err))) ||
                (rc = PROF(OP_ATTN, ecu_attention(&as, &kb, T, cx->q, kc, vc, cx->att, s, err))) ||
                (rc = PROF(OP_WO, ecu_gemv_multi(1, &L->wo, cx->att, T, yx, NULL, NULL, 1, s, err))) ||
                (rc = PROF(OP_GATE_UP, ecu_gemv_swiglu(&L->wg, &L->wu, cx->x, T, cx->g, &fn, s, err))) ||
                (rc = PROF(OP_DOWN, ecu_gemv_multi(1, &L->wd, cx->g, T, yx, NULL, NULL, 1, s, err))))
                return rc;
        }
    } else {
        for (uint32_t l = 0; l < c->n_layer; l++) {
            const ecu_layer *L = &cx->layers[l];
            __half *kc = (__half *)cx->d_kc + l * cx->kv_layer_elems, *vc = (__half *)cx->d_vc + l * cx->kv_layer_elems;
            /* layer 0 norms x; later layers first add the previous FFN output (fused residual) */
            if ((rc = PROF(OP_NORM, ecu_rmsnorm(cx->x, l ? cx->xb : NULL, NULL, L->attn_norm, cx->xb, T, E, c->rms_eps, s, err))) ||
                (rc = PROF(OP_QKV, qkv(cx, s, L, T, err))) ||
                (rc = PROF(OP_ROPE, ecu_rope_store(&as, &kb, T, cx->d_inv_freq, cx->q, cx->kx, cx->vx, kc, vc, s, err))) ||
                (rc = PROF(OP_ATTN, ecu_attention(&as, &kb, T, cx->q, kc, vc, cx->att, s, err))) ||
                (rc = PROF(OP_WO, matmul(cx, s, &L->wo, cx->att, T, cx->xb, NULL, err))) ||
                (rc = PROF(OP_NORM, ecu_rmsnorm(cx->x, cx->xb, NULL, L->ffn_norm, cx->att, T, E, c->rms_eps, s, err))) ||
                (rc = PROF(OP_GATE_UP, gate_up(cx, s, L, T, err))) ||
                (rc = PROF(OP_DOWN, matmul(cx, s, &L->wd, cx->g, T, cx->xb, NULL, err))))
                return rc;
        }
        if (n_out && (rc = PROF(OP_NORM, ecu_add(cx->x, cx->xb, (uint64_t)T * E, s, err))))
            return rc;
    }
    if (n_out == 0) /* a prefill chunk with no logits wanted: its KV is stored */
        return 0;
    if ((rc = PROF(OP_NORM, ecu_rmsnorm(cx->x, NULL, d_out, cx->output_norm, cx->att, n_out, E, c->rms_eps, s, err))))
        return rc;
    return PROF(OP_HEAD, matmul(cx, s, &cx->output, cx->att, n_out, cx->logits, NULL, err));
}

/* ---- decode graphs --------------------------------------------------------------------------------
 * Batches of T <= ECU_GEMV_MAX_TOKENS tokens replay a CUDA graph of forward_body per (T, n_out)
 * instead of 6 launches per layer. A thread started once the backend is ready captures them
 * (capture enqueues nothing, so it runs beside live forwards); until a graph is published,
 * forwards launch kernels one by one. Nothing is captured on the path to ready. */
static int graphs_off(void)
{
    const char *e = getenv("THAW_CUDA_GRAPHS");
    return e && *e == '0';
}

static int graphs_pending_n; /* capture threads running (bench/gpu waits for them) */

extern "C" int ecu_graphs_pending(void) { return __atomic_load_n(&graphs_pending_n, __ATOMIC_ACQUIRE); }

static void *capture_main(void *arg)
{
    ecu_ctx *cx = (ecu_ctx *)arg;
    cudaStream_t cs = NULL;
    if (cudaSetDevice(cx->device) != cudaSuccess || cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking) != cudaSuccess)
        goto done;
    for (uint32_t T = 1; T <= ECU_GEMV_MAX_TOKENS; T++)
        for (uint32_t n = T + 1; n-- > 0;) { /* n_out = T first: the decode step */
            if (__atomic_load_n(&cx->graphs_stop, __ATOMIC_ACQUIRE))
                goto done;
            cudaGraph_t g = NULL;
            cudaGraphExec_t ge = NULL;
            eng_err err = {{0}};
            if (cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
                goto done;
            int rc = forward_body(cx, cs, T, n, 0, &err);
            cudaError_t e = cudaStreamEndCapture(cs, &g);
            if (rc == 0 && e == cudaSuccess && cudaGraphInstantiate(&ge, g, 0) == cudaSuccess)
                __atomic_store_n(&cx->graphs[T][n], ge, __ATOMIC_RELEASE);
            else
                cudaGetLastError(); /* a failed capture leaves this (T, n_out) on plain launches */
            if (g)
                cudaGraphDestroy(g);
        }
done:
    if (cs)
        cudaStreamDestroy(cs);
    __atomic_fetch_sub(&graphs_pending_n, 1, __ATOMIC_ACQ_REL);
    return NULL;
}

static int cuda_forward(void *ctx, const eng_batch *b, float *logits, eng_err *err)
{
    ecu_ctx *cx = (ecu_ctx *)ctx;
    const snap_config *c = &cx->c;
    uint32_t T = b->n_tokens;
    if (T == 0 || T > cx->max_tokens || b->n_out > cx->max_tokens || b->n_seqs > cx->max_tokens)
        return eng_fail(err, ENG_EINVAL, "batch of %u tokens (%u outputs, %u sequences) exceeds the backend's %u", T,
                        b->n_out, b->n_seqs, cx->max_tokens);
    /* validate and pack the batch metadata into the pinned mirror */
    uint8_t *h = cx->h_meta;
    int32_t *tok = (int32_t *)h, *pos = tok + cx->max_tokens;
    uint32_t *seq = (uint32_t *)(pos + cx->max_tokens), *out = seq + cx->max_tokens, *boff = out + cx->max_tokens;
    int32_t *blocks = (int32_t *)(boff + cx->max_tokens);
    uint32_t n_entries = 0;
    for (uint32_t s = 0; s < b->n_seqs; s++) {
        uint32_t nb = b->seqs[s].n_blocks;
        if (nb > cx->max_block_entries - n_entries)
            return eng_fail(err, ENG_EINVAL, "batch block tables exceed %u entries", cx->max_block_entries);
        boff[s] = n_entries;
        for (uint32_t i = 0; i < nb; i++) {
            int32_t id = b->seqs[s].blocks[i];
            if (id < 0 || (uint32_t)id >= cx->n_blocks)
                return eng_fail(err, ENG_EINVAL, "sequence %u: KV block id %d out of range", s, id);
            blocks[n_entries++] = id;
        }
    }
    for (uint32_t i = 0; i < T; i++) {
        if (b->tokens[i] < 0 || (uint32_t)b->tokens[i] >= c->n_vocab)
            return eng_fail(err, ENG_EINVAL, "token id %d out of range", b->tokens[i]);
        int32_t p = b->pos[i];
        if (b->seq[i] >= b->n_seqs || p < 0 || (uint32_t)p >= cx->max_ctx ||
            (uint32_t)p / ENG_BLOCK_TOKENS >= b->seqs[b->seq[i]].n_blocks)
            return eng_fail(err, ENG_EINVAL, "token %u: position %d has no KV block", i, p);
        tok[i] = b->tokens[i];
        pos[i] = p;
        seq[i] = b->seq[i];
    }
    for (uint32_t i = 0; i < b->n_out; i++) {
        if (b->out[i] >= T)
            return eng_fail(err, ENG_EINVAL, "output index %u past the batch", b->out[i]);
        out[i] = b->out[i];
    }
    uint64_t used = (uint64_t)((uint8_t *)(blocks + n_entries) - h);
    int rc = 0;
    CU_TRY(cudaMemcpyAsync(cx->d_meta, h, used, cudaMemcpyHostToDevice, cx->stream), "upload batch");
    {
        cudaGraphExec_t ge = T <= ECU_GEMV_MAX_TOKENS && b->n_out <= T && !prof.on
                                 ? __atomic_load_n(&cx->graphs[T][b->n_out], __ATOMIC_ACQUIRE)
                                 : NULL;
        if (ge)
            CU_TRY(cudaGraphLaunch(ge, cx->stream), "launch the decode graph");
        else if ((rc = forward_body(cx, cx->stream, T, b->n_out, 1, err)))
            goto fail;
        if (b->n_out) {
            prof_begin(cx->stream, 1);
            CU_TRY(cudaMemcpyAsync(logits, cx->logits, (uint64_t)b->n_out * c->n_vocab * sizeof(float),
                                   cudaMemcpyDeviceToHost, cx->stream), "copy logits");
            prof_end(cx->stream, 1, OP_COPY, 0);
        }
        /* also with no outputs: the next call rewrites the pinned metadata this one uploads */
        CU_TRY(cudaStreamSynchronize(cx->stream), "forward");
        if (prof.on)
            prof_collect();
    }
    return 0;
fail:
    cudaStreamSynchronize(cx->stream); /* what was enqueued reads h_meta, which the next call rewrites */
    return rc;
}

/* ---- create / destroy ---------------------------------------------------------------------------- */

static void cuda_destroy(void *ctx)
{
    ecu_ctx *cx = (ecu_ctx *)ctx;
    if (!cx)
        return;
    if (cx->init_started)
        pthread_join(cx->init_thread, NULL);
    if (cx->capture_started) {
        __atomic_store_n(&cx->graphs_stop, 1, __ATOMIC_RELEASE);
        pthread_join(cx->capture_thread, NULL);
    }
    if (cx->stream) /* a graph may still run */
        cudaStreamSynchronize(cx->stream);
    for (int t = 0; t <= ECU_GEMV_MAX_TOKENS; t++)
        for (int n = 0; n <= ECU_GEMV_MAX_TOKENS; n++)
            if (cx->graphs[t][n])
                cudaGraphExecDestroy(cx->graphs[t][n]);
    for (int i = 0; i < ECU_COPY_STREAMS; i++)
        if (cx->copy[i]) {
            cudaStreamSynchronize(cx->copy[i]);
            cudaStreamDestroy(cx->copy[i]);
        }
    for (int i = 0; i < ECU_RING; i++) {
        if (cx->ring[i].done)
            cudaEventDestroy(cx->ring[i].done);
        cudaFreeHost(cx->ring[i].host);
    }
    if (cx->blas)
        cublasDestroy(cx->blas);
    if (cx->stream)
        cudaStreamDestroy(cx->stream);
    cudaFree(cx->d_weights);
    cudaFree(cx->d_inv_freq);
    cudaFree(cx->d_kc);
    cudaFree(cx->d_vc);
    float *bufs[] = {cx->x, cx->xb, cx->q, cx->kx, cx->vx, cx->att, cx->g, cx->u, cx->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        cudaFree(bufs[i]);
    cudaFree(cx->xh);
    cudaFree(cx->wt);
    cudaFree(cx->d_meta);
    cudaFreeHost(cx->h_meta);
    if (cx->mu_init) {
        pthread_mutex_destroy(&cx->mu);
        pthread_cond_destroy(&cx->cv);
    }
    free(cx->layers);
    free(cx);
}

static int cuda_create(snap_file *f, const eng_backend_params *p, void **out, uint32_t *n_kv_blocks,
                       snap_load_stats *stats, eng_err *err)
{
    *out = NULL;
    int n_dev = ecu_device_count();
    if (n_dev <= 0)
        return eng_fail(err, ENG_EUNSUPPORTED, "cuda: no CUDA device found");
    uint32_t hd = snap_get_config(f)->head_dim;
    if (!ecu_attention_ok(hd))
        return eng_fail(err, ENG_EUNSUPPORTED, "cuda: head_dim %u (the CUDA backend takes 64, 128 or 256)", hd);
    ecu_ctx *cx = (ecu_ctx *)calloc(1, sizeof *cx);
    if (!cx)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    int rc = 0;
    cx->c = *snap_get_config(f);
    const snap_config *c = &cx->c;
    cx->image_size = snap_image_size(f);
    cx->chunk_size = snap_chunk_size(f);
    pthread_mutex_init(&cx->mu, NULL);
    pthread_cond_init(&cx->cv, NULL);
    cx->mu_init = 1;

    /* 1. context in its own thread while the page cache fills */
    if (pthread_create(&cx->init_thread, NULL, init_main, cx) != 0) {
        rc = eng_fail(err, ENG_EBACKEND, "cuda: cannot start the init thread");
        goto fail;
    }
    cx->init_started = 1;
    {
        int fd = open(snap_path(f), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
            close(fd);
        }
    }
    pthread_join(cx->init_thread, NULL);
    cx->init_started = 0;
    if (cx->init_rc) {
        rc = eng_fail(err, cx->init_rc, "%s", cx->init_msg);
        goto fail;
    }

    /* 2. stream the image */
    {
        snap_sink sink = {cx, sink_acquire, sink_commit, sink_finish};
        snap_load_opts lo = {p->n_threads, p->load_io, 1};
        snap_err serr = {{0}};
        if (snap_load_stream(f, &sink, &lo, stats, &serr) != 0) {
            rc = eng_fail(err, ENG_ESNAPSHOT, "%s%s%s", serr.msg, cx->sink_error ? ": " : "", cx->sink_msg);
            goto fail;
        }
    }

    /* 3. bind */
    cx->layers = (ecu_layer *)calloc(c->n_layer, sizeof *cx->layers);
    if (!cx->layers)
        goto nomem;
    {
        const float *d_factors = NULL;
        if ((rc = bind(cx, f, "token_embd.weight", &cx->embd, NULL, 1, err)) ||
            (rc = bind(cx, f, "output_norm.weight", NULL, &cx->output_norm, 1, err)) ||
            (rc = bind(cx, f, "rope_freqs.weight", NULL, &d_factors, 0, err)))
            goto fail;
        if (c->flags & SNAP_FLAG_TIED_EMBED)
            cx->output = cx->embd;
        else if ((rc = bind(cx, f, "output.weight", &cx->output, NULL, 1, err)))
            goto fail;
        cx->fused_tokens = ECU_GEMV_MAX_TOKENS;
        for (uint32_t l = 0; l < c->n_layer; l++) {
            ecu_layer *L = &cx->layers[l];
            int bias = (c->flags & SNAP_FLAG_QKV_BIAS) != 0;
            ENG_BIND_LAYER();
            const ecu_mat *ms[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
            for (int i = 0; i < 7; i++) {
                if (ms[i]->dtype != L->wq.dtype)
                    cx->fused_tokens = 0;
                while (cx->fused_tokens && !ecu_gemv_fusable(ms[i], cx->fused_tokens))
                    cx->fused_tokens--; /* x of fewer tokens needs less shared memory */
            }
        }
        uint32_t half = c->head_dim / 2;
        float *hf = (float *)malloc(2 * half * sizeof(float));
        if (!hf)
            goto nomem;
        if (d_factors && cudaMemcpy(hf + half, d_factors, half * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess) {
            free(hf);
            rc = eng_fail(err, ENG_EBACKEND, "cuda: reading rope_freqs.weight failed");
            goto fail;
        }
        eng_rope_inv_freq(c, d_factors ? hf + half : NULL, hf);
        cudaError_t e = cudaMalloc((void **)&cx->d_inv_freq, half * sizeof(float));
        if (e == cudaSuccess)
            e = cudaMemcpy(cx->d_inv_freq, hf, half * sizeof(float), cudaMemcpyHostToDevice);
        free(hf);
        CU_TRY(e, "upload rope frequencies");
    }

    /* 4. scratch */
    {
        uint32_t T = cx->max_tokens = p->max_batch_tokens ? p->max_batch_tokens : 512;
        cx->max_ctx = p->max_ctx ? p->max_ctx : c->n_ctx_train;
        uint64_t E = c->n_embd, QD = (uint64_t)c->n_head * c->head_dim, KD = (uint64_t)c->n_head_kv * c->head_dim;
        uint64_t widest = E > QD ? E : QD;
        if (c->n_ff > widest)
            widest = c->n_ff;
        struct { float **p; uint64_t n; } bufs[] = {
            {&cx->x, T * E}, {&cx->xb, T * widest}, {&cx->q, T * QD}, {&cx->kx, T * KD}, {&cx->vx, T * KD},
            {&cx->att, T * widest}, {&cx->g, T * (uint64_t)c->n_ff}, {&cx->u, T * (uint64_t)c->n_ff},
            {&cx->logits, T * (uint64_t)c->n_vocab},
        };
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            CU_TRY(cudaMalloc((void **)bufs[i].p, bufs[i].n * sizeof(float)), "allocate scratch");
        CU_TRY(cudaMalloc(&cx->xh, T * widest * 2), "allocate scratch");
        CU_TRY(cudaMalloc(&cx->wt, ECU_TILE_ELEMS * 2), "allocate the weight tile");
        cx->max_block_entries = T * ((cx->max_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS);
        cx->meta_bytes = 5ull * T * 4 + (uint64_t)cx->max_block_entries * 4;
        CU_TRY(cudaMalloc((void **)&cx->d_meta, cx->meta_bytes), "allocate batch metadata");
        CU_TRY(cudaHostAlloc((void **)&cx->h_meta, cx->meta_bytes, cudaHostAllocDefault), "pin batch metadata");
    }

    /* 5. KV pool from what is free */
    {
        uint64_t per_block = 2ull * c->n_layer * c->n_head_kv * ENG_BLOCK_TOKENS * c->head_dim * 2; /* f16 */
        size_t free_b = 0, total_b = 0;
        CU_TRY(cudaMemGetInfo(&free_b, &total_b), "query memory");
        double frac = p->gpu_mem_fraction > 0 && p->gpu_mem_fraction <= 1 ? p->gpu_mem_fraction : 0.9;
        uint64_t used = total_b - free_b, allowed = (uint64_t)(frac * (double)total_b);
        uint64_t budget = allowed > used ? allowed - used : 0;
        if (p->kv_mem_bytes && p->kv_mem_bytes < budget)
            budget = p->kv_mem_bytes;
        uint64_t nb = budget / per_block;
        if (nb > (1u << 30))
            nb = 1u << 30;
        /* (stricter than engine/model.c, which shortens the context to a smaller pool on CPU) */
        uint64_t need = (cx->max_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS;
        if (nb < need) {
            rc = eng_fail(err, ENG_ENOMEM,
                          "cuda: KV budget of %llu bytes (free %llu of %llu, fraction %.2f) holds %llu blocks; one "
                          "sequence of %u tokens needs %llu",
                          (unsigned long long)budget, (unsigned long long)free_b, (unsigned long long)total_b, frac,
                          (unsigned long long)nb, cx->max_ctx, (unsigned long long)need);
            goto fail;
        }
        cx->n_blocks = (uint32_t)nb;
        cx->kv_layer_elems = nb * c->n_head_kv * ENG_BLOCK_TOKENS * c->head_dim;
        CU_TRY(cudaMalloc(&cx->d_kc, cx->kv_layer_elems * c->n_layer * 2), "allocate the KV pool");
        CU_TRY(cudaMalloc(&cx->d_vc, cx->kv_layer_elems * c->n_layer * 2), "allocate the KV pool");
    }
    *n_kv_blocks = cx->n_blocks;
    *out = cx;
    if (!graphs_off()) {
        __atomic_fetch_add(&graphs_pending_n, 1, __ATOMIC_ACQ_REL);
        if (pthread_create(&cx->capture_thread, NULL, capture_main, cx) == 0)
            cx->capture_started = 1;
        else
            __atomic_fetch_sub(&graphs_pending_n, 1, __ATOMIC_ACQ_REL);
    }
    return 0;
nomem:
    rc = eng_fail(err, ENG_ENOMEM, "out of memory sizing the CUDA backend");
fail:
    cuda_destroy(cx);
    return rc;
}

/* no host threads of its own to lend: the engine samples on its thread (parallel NULL) */
extern "C" const eng_backend_ops eng_cuda_backend = {"cuda", cuda_create, cuda_forward, cuda_destroy, NULL};
