/* kernels.h -- the CUDA backend's kernels, as C-callable launchers (engine/cuda/ only; the
 * GPU tests call them to compare every kernel with the CPU reference).
 *
 * All pointers named d_* are device memory. `stream` is a cudaStream_t passed as void *
 * so that this header needs no CUDA include. Launchers enqueue and return at once; they
 * return 0, or an ENG_E* code with the message in err (ENG_EBACKEND: a launch failed;
 * ENG_EINVAL / ENG_EUNSUPPORTED: arguments or matrices the launcher does not take).
 *
 * Matrix layouts are the snapshot's (FORMAT.md): [rows][cols], y = W x; q4/q8 in BLOCKS or
 * SPLIT layout (SPLIT: quant plane, f16 scale plane, q4 f16 minimum plane).
 * KV pool: f16 [n_layer][n_blocks][n_head_kv][16 slots][head_dim], k and v separate.
 */
#ifndef THAW_ENGINE_CUDA_KERNELS_H
#define THAW_ENGINE_CUDA_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "../internal.h"

typedef struct ecu_mat {
    uint32_t dtype, layout;   /* enum snap_dtype (not bf16), enum snap_layout */
    uint64_t rows, cols;      /* cols a multiple of 32 */
    const uint8_t *d_base;    /* device: the tensor's bytes inside the weight arena */
} ecu_mat;

/* The most tokens the GEMV path takes; larger batches dequantize to f16 and use cuBLAS. */
#define ECU_GEMV_MAX_TOKENS 4

/* y[t][r] (row stride ldy) = W[r] . x[t] (row stride ldx) + bias[r], t < n_tokens <= 4. */
int ecu_gemv(const ecu_mat *m, const float *d_x, uint64_t ldx, uint32_t n_tokens, float *d_y, uint64_t ldy,
             const float *d_bias, void *stream, eng_err *err);
/* RMSNorm folded into a GEMV's input: x is used as x * w / rms(x) (eps inside the root). */
typedef struct ecu_norm {
    const float *d_w;
    float eps;
} ecu_norm;

/* n (1..3) matrices of the same columns on the same x, in one launch (Q, K, V):
 * d_y[i] [T][m[i].rows] = m[i] x (+ d_bias[i] when d_bias and d_bias[i] are set); with norm,
 * x is normalised first; with accum, d_y[i] += m[i] x (the residual add). norm and accum need
 * matrices for which ecu_gemv_fusable(m, n_tokens) holds (SPLIT q4/q8 whose quantized x of
 * n_tokens fits in shared memory); other matrices run one by one. */
int ecu_gemv_multi(uint32_t n, const ecu_mat *m, const float *d_x, uint32_t n_tokens, float *const *d_y,
                   const float *const *d_bias, const ecu_norm *norm, int accum, void *stream, eng_err *err);
int ecu_gemv_fusable(const ecu_mat *m, uint32_t n_tokens);
/* d_y [T][rows] = silu(gate x) * (up x), fused (x normalised first with norm); only SPLIT
 * q4/q8 (ecu_gemv_swiglu_ok at n_tokens). */
int ecu_gemv_swiglu(const ecu_mat *gate, const ecu_mat *up, const float *d_x, uint32_t n_tokens, float *d_y,
                    const ecu_norm *norm, void *stream, eng_err *err);
int ecu_gemv_swiglu_ok(const ecu_mat *gate, const ecu_mat *up, uint32_t n_tokens);
/* Rows [r0, r0 + n_rows) of W dequantized to f16, d_out [n_rows][cols]. */
int ecu_dequant_f16(const ecu_mat *m, uint64_t r0, uint64_t n_rows, void *d_out, void *stream, eng_err *err);
/* f32 -> f16, n elements. */
int ecu_to_f16(const float *d_x, void *d_out, uint64_t n, void *stream, eng_err *err);
/* y[t][r] += bias[r] for t < n_tokens, r < rows. */
int ecu_add_bias(float *d_y, const float *d_bias, uint64_t rows, uint32_t n_tokens, void *stream, eng_err *err);
/* x[t] = row tokens[t] of the embedding, as f32 [n_tokens][cols]. */
int ecu_embed(const ecu_mat *m, const int32_t *d_tokens, uint32_t n_tokens, float *d_x, void *stream, eng_err *err);
/* out[i] = x[row_i] * w / rms(x[row_i]), row_i = d_rows ? d_rows[i] : i; i < n_rows; n = row size.
 * When d_add is set, first x[row_i] += d_add[row_i] (the residual add, fused). */
int ecu_rmsnorm(float *d_x, const float *d_add, const uint32_t *d_rows, const float *d_w, float *d_out,
                uint32_t n_rows, uint32_t n, float eps, void *stream, eng_err *err);
/* x += y, n elements. */
int ecu_add(float *d_x, const float *d_y, uint64_t n, void *stream, eng_err *err);
/* g = silu(g) * u, n elements. */
int ecu_swiglu(float *d_g, const float *d_u, uint64_t n, void *stream, eng_err *err);

/* Where each token's KV lives: token t of sequence seq[t] at position pos[t] uses block
 * d_blocks[d_block_off[seq[t]] + pos / 16]. */
typedef struct ecu_kv_batch {
    const int32_t *d_pos;       /* [T] */
    const uint32_t *d_seq;      /* [T] */
    const uint32_t *d_block_off;/* [n_seqs] */
    const int32_t *d_blocks;    /* concatenated block tables */
} ecu_kv_batch;

typedef struct ecu_attn_shape {
    uint32_t n_head, n_head_kv, head_dim;
    uint32_t n_blocks;          /* blocks in the pool (per layer) */
    uint32_t rope_style;        /* enum snap_rope_style (any rope scaling is in the frequencies) */
} ecu_attn_shape;

/* Rotate q [T][H*D] and k [T][K*D] in place by each token's position (d_inv_freq [D/2]),
 * then store k and v (f16) into the layer's cache slots. d_kc/d_vc point at the layer. */
int ecu_rope_store(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_inv_freq,
                   float *d_q, float *d_k, const float *d_v, void *d_kc, void *d_vc, void *stream, eng_err *err);
/* out [T][H*D] = softmax(q k^T / sqrt(D)) v over positions 0..pos of each token's sequence. */
int ecu_attention(const ecu_attn_shape *s, const ecu_kv_batch *kb, uint32_t n_tokens, const float *d_q,
                  const void *d_kc, const void *d_vc, float *d_out, void *stream, eng_err *err);
int ecu_attention_ok(uint32_t head_dim); /* the head sizes ecu_attention takes (64, 128, 256) */

/* Once per process, with the device's context current, before any launch: sets the kernels'
 * shared-memory limits (0 or -1). */
int ecu_prepare(void);

/* Small helpers for tests and benches (no CUDA include needed by the caller). */
int ecu_device_count(void);
void *ecu_malloc(uint64_t n);                       /* device memory, NULL on failure */
void ecu_free(void *d);
int ecu_h2d(void *d, const void *h, uint64_t n);    /* synchronous; 0 or -1 */
int ecu_d2h(void *h, const void *d, uint64_t n);
int ecu_sync(void);
/* Pinned H2D bandwidth (bytes/s) over n bytes, and device-to-device copy bandwidth
 * (bytes read + written per second), for bench rooflines; 0 on failure. */
double ecu_h2d_bandwidth(uint64_t n);
double ecu_d2d_bandwidth(uint64_t n);
const char *ecu_device_name(void);
/* bench/gpu: time every op of the forwards between ecu_profile(1, ..) and ecu_profile(0, out,
 * label), which prints one gpu_profile line per op (device time between events). */
int ecu_profile(int on, FILE *out, const char *label);
/* Decode-graph capture threads still running (bench/gpu waits for 0 before timing decode). */
int ecu_graphs_pending(void);

#ifdef __cplusplus
}
#endif

#endif
