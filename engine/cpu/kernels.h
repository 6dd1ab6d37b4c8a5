/* kernels.h -- CPU compute kernels, internal to engine/cpu/.
 *
 * Quantized matmuls (Q4, Q8) run on integers. Each matmul input is quantized per 32-element
 * block to int16 (x = s * x16, s = max|x| / 32767: a relative error below 2^-15 of the
 * block's largest element, 256 times finer than llama.cpp's 8-bit activations). A block's
 * dot with a weight row is then an exact integer sum,
 *     isum = sum_k q[k] * x16[k]                       (int32, cannot overflow)
 *     y   += (d * s) * isum  [+ m * (s * sum_k x16[k]) for Q4]     (f32, fused multiply-add)
 * and the f32 steps are the same instructions in the same order in every kernel set, for
 * every number of tokens. So the portable, AVX2 and AVX-512 kernels return bitwise equal
 * results, and a token's logits do not depend on what else is in its batch.
 *
 * Weights are read in the R16 arrangement below, which makes the integer dot one
 * multiply-add instruction per 32 products (vpdpwssd) with no conversion of weights to
 * float: the CPU backend rearranges other layouts into it once at load.
 *
 * R16 is defined in snapshot/FORMAT.md: rows in groups of 16; per group, each block's quants
 * (Q4: 4 chunks of 64 bytes, Q8: 8), then the blocks' d[16] (f16), then Q4's m[16]. In a
 * chunk, row i's 4 bytes at 4 i hold weights whose 16-bit pairs line up with consecutive
 * activation pairs: Q4 word >> 4p & 0x000f000f is the pair (8j + 2p, 8j + 2p + 1), Q8's
 * bytes sign-extended from the low / high byte of each half are (4j, 4j+1) / (4j+2, 4j+3).
 *
 * f16 and f32 matrices (small test models) keep f32 arithmetic: dot_f16 / dot_f32 per row
 * and the register-tiled dot4xT for batches.
 *
 * Kernel table: cpu_kernels_get() returns the AVX-512 VNNI set, else AVX2, else portable C.
 */
#ifndef THAW_ENGINE_CPU_KERNELS_H
#define THAW_ENGINE_CPU_KERNELS_H

#include "snapshot.h"

#include <stddef.h>
#include <stdint.h>

#define CPU_R16_ROWS SNAP_R16_ROWS
#define CPU_R16_Q4_UNIT SNAP_R16_Q4_UNIT
#define CPU_R16_Q8_UNIT SNAP_R16_Q8_UNIT
#define CPU_ACT_MAX 32767.0f

/* A Q4 / Q8 matrix in R16: n_groups = ceil(rows / 16) groups of nb blocks. */
typedef struct cpu_r16 {
    uint32_t dtype;          /* SNAP_Q4 or SNAP_Q8 */
    uint64_t rows, nb, n_groups;
    const uint8_t *base;     /* 64-byte aligned */
} cpu_r16;

/* Quantized activations of T tokens, each n = 32 nb long: x16 [T][n] (64-byte aligned
 * rows), per block scale s [T][nb] and s * (sum of the block's x16) sx [T][nb]. */
typedef struct cpu_act {
    int16_t *x16;
    float *s, *sx;
    uint64_t n, nb;
} cpu_act;

/* The weights are read once per token; the hardware prefetcher falls behind that stream, so
 * the vector matmul kernels prefetch this far ahead of the unit they read (bench/RESULTS.md;
 * the AMX loop, slower per byte, has its own distances in kernels_amx.c). A
 * prefetch never faults, so running past the end of the weights is harmless. */
#define CPU_PREFETCH_BYTES 4096

typedef struct cpu_kernels {
    const char *name;
    /* quantizes token t's x[n] into a (x16, s, sx rows t) */
    void (*quant_act)(const float *x, const cpu_act *a, uint32_t t);
    /* out[t * out_stride + r] = row r of w . token t of a, for the rows of groups
     * [g0, g1) that exist and tokens [0, n_tok) */
    void (*matmul_r16)(const cpu_r16 *w, uint64_t g0, uint64_t g1, const cpu_act *a, uint32_t n_tok, float *out,
                       uint64_t out_stride);
    /* f16 row . f32 vector */
    float (*dot_f16)(const uint16_t *w, const float *x, uint64_t n);
    float (*dot_f32)(const float *a, const float *b, uint64_t n);
    /* y += a * x */
    void (*axpy)(float a, const float *x, float *y, uint64_t n);
    /* Batched f32 rows x tokens: out[t * out_stride + r] = w[r * n ..] . x[t * n ..] for r < 4,
     * t < n_tok (w: 4 rows, contiguous), each weight row reused across tokens in registers. */
    void (*dot4xT)(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n);
    /* Attention of n_q query heads q[n_q][d] sharing one KV head over positions 0..n_pos-1,
     * kept in f16 KV blocks of 16 positions: k[i] is block i's keys transposed, [d][16],
     * v[i] its values, [16][d]. out[n_q][d] = softmax(scale * q k^T) v; sc: n_q * (n_pos +
     * 16) floats of scratch. */
    void (*attend)(const float *q, uint32_t n_q, uint32_t d, const uint16_t *const *k, const uint16_t *const *v,
                   uint32_t n_pos, float scale, float *sc, float *out);
    /* out[i * stride] = x[i] rounded to f16 (to nearest, ties to even: the same bits in every set) */
    void (*to_f16)(const float *x, uint16_t *out, uint64_t n, uint64_t stride);
    /* g[i] = silu(g[i]) * u[i] */
    void (*swiglu)(float *g, const float *u, uint64_t n);
    /* RoPE of n vectors of d floats in place: v[j] = v[j] c[j] + v[p(j)] s[j] with cs = c[d]
     * then s[d] (cpu_rope_table), p(j) = j ^ 1 for adjacent pairs, (j + d/2) mod d for halves
     * (NEOX). Per pair (x0, x1) that is x0 cos - x1 sin and x1 cos + x0 sin, the same two
     * products and one sum in every set. */
    void (*rope)(float *v, uint32_t n, uint32_t d, const float *cs, int halves);
    /* out[i] = x[i] * scale * w[i], scale = 1 / sqrt(mean(x^2) + eps): squares summed in
     * double, element i into partial sum i % 8 (the tail's into the first), the eight added
     * pairwise (cpu_rms_scale); bitwise the same in every set */
    void (*rmsnorm)(float *out, const float *x, const float *w, uint64_t n, float eps);
} cpu_kernels;

float cpu_rms_scale(const double part[8], uint64_t n, float eps);

/* Fills cs[2 d] for cpu_kernels.rope: pair i turns by the angle pos * inv_freq[i]. */
void cpu_rope_table(float pos, const float *inv_freq, uint32_t d, int halves, float *cs);

const cpu_kernels *cpu_kernels_get(void);       /* the best for this CPU */
int cpu_kernels_use_amx(void);                  /* batches may use cpu_amx_matmul (below) */
const cpu_kernels *cpu_kernels_portable(void);  /* always available (tests compare them all) */
const cpu_kernels *cpu_kernels_avx2(void);      /* NULL when the CPU lacks AVX2/FMA/F16C */
const cpu_kernels *cpu_kernels_avx512(void);    /* NULL without AVX-512 F/BW/VL/VNNI */

/* AMX (kernels_amx.c): the quantized matmul for batches, bitwise equal to matmul_r16.
 * cpu_amx_quant quantizes token t's f32 row into tiles, laid out for matrices of the given
 * dtype: per 16-token tile and block, CPU_AMX_TILE_BYTES of A operands (high bytes [16][32],
 * low bytes [16][32]) and the tokens' scales s and sx (a gives n and nb). cpu_amx_matmul then
 * runs like matmul_r16 on those tiles. */
#define CPU_AMX_TILE_BYTES 1152
int cpu_amx_available(void);
void cpu_amx_quant(const float *x, const cpu_act *a, uint32_t t, uint32_t dtype, uint8_t *tiles);
void cpu_amx_matmul(const cpu_r16 *w, uint64_t g0, uint64_t g1, const uint8_t *tiles, uint32_t n_tok,
                    float *out, uint64_t out_stride);

/* The AVX2 set's f16/f32 kernels, which the AVX-512 set shares. */
float cpu_avx2_dot_f16(const uint16_t *w, const float *x, uint64_t n);
float cpu_avx2_dot_f32(const float *a, const float *b, uint64_t n);
void cpu_avx2_axpy(float a, const float *x, float *y, uint64_t n);
void cpu_avx2_dot4xT(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n);
void cpu_avx2_to_f16(const float *x, uint16_t *out, uint64_t n, uint64_t stride);
/* The portable attention and SwiGLU, which the AVX2 set also uses. */
void cpu_swiglu_c(float *g, const float *u, uint64_t n);
void cpu_rope_c(float *v, uint32_t n, uint32_t d, const float *cs, int halves);
void cpu_rmsnorm_c(float *out, const float *x, const float *w, uint64_t n, float eps);
void cpu_attend_c(const float *q, uint32_t n_q, uint32_t d, const uint16_t *const *k, const uint16_t *const *v,
                  uint32_t n_pos, float scale, float *sc, float *out);

/* Row r of an R16 matrix as f32 (d * q [+ m], exactly as the blocks mean). */
void cpu_r16_row_f32(const cpu_r16 *w, uint64_t r, float *out);

#endif
