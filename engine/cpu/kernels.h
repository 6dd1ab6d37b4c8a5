/* kernels.h -- CPU compute kernels, internal to engine/cpu/.
 *
 * Quantized matrices are read through a "view" of strided pointers so one kernel serves both
 * snapshot layouts: BLOCKS (d, [m,] quants interleaved per 32-weight block) and SPLIT (planes).
 *
 * Activations stay f32: a weight block is dequantized in registers and multiplied with the
 * f32 activations. Quantizing activations to int8 (llama.cpp's scheme) is faster in
 * arithmetic but flips close decisions -- on SmolLM2 Q4_1 it turns the exact computation's
 * "The capital of France is Paris" into another answer -- and decode is bound by reading the
 * weights, not by this arithmetic (bench/decode). The CPU backend is the reference, so it
 * computes what the stored weights mean.
 *
 * Kernel table: cpu_kernels_get() returns the AVX2/FMA/F16C set when the CPU has it, else
 * portable C; they differ only in float summation order.
 */
#ifndef THAW_ENGINE_CPU_KERNELS_H
#define THAW_ENGINE_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* One row of a quantized matrix: block b's quants at qs + b*q_stride (bytes), its f16 scale
 * at d + b*dm_stride, Q4's f16 minimum at m + b*dm_stride. */
typedef struct cpu_qrow {
    const uint8_t *qs;
    const uint8_t *d;
    const uint8_t *m;
    uint32_t q_stride;
    uint32_t dm_stride; /* bytes */
} cpu_qrow;

/* Decode streams every weight once per token; the hardware prefetcher falls behind that
 * stream (profiles showed the kernels stalled on the weight loads at a fifth of the machine's
 * read bandwidth), so the q4/q8 kernels prefetch this far ahead of the block they read.
 * Measured on SmolLM2 (bench/RESULTS.md): 1.5 KB ahead doubled decode speed, 4-5 KB added a
 * little more. A prefetch never faults, so running past the end of the image is harmless. */
#define CPU_PREFETCH_BYTES 4096

typedef struct cpu_kernels {
    const char *name;
    /* s[b] = sum of x[32b .. 32b+31]: the Q4 minimum's term is m * s[b] */
    void (*block_sums)(const float *x, float *s, uint64_t nb);
    /* dot of a Q4 / Q8 row (nb blocks of 32) with f32 x */
    float (*dot_q4)(const cpu_qrow *w, const float *x, const float *sx, uint64_t nb);
    float (*dot_q8)(const cpu_qrow *w, const float *x, uint64_t nb);
    /* a Q4 / Q8 row to f32 (prefill: dequantize once, reuse for every token) */
    void (*row_q4)(const cpu_qrow *w, float *out, uint64_t nb);
    void (*row_q8)(const cpu_qrow *w, float *out, uint64_t nb);
    /* f16 row . f32 vector */
    float (*dot_f16)(const uint16_t *w, const float *x, uint64_t n);
    float (*dot_f32)(const float *a, const float *b, uint64_t n);
    /* y += a * x */
    void (*axpy)(float a, const float *x, float *y, uint64_t n);
    /* Batched rows x tokens: out[t * out_stride + r] = w[r * n ..] . x[t * n ..] for r < 4,
     * t < n_tok (w: 4 rows, contiguous). Each weight row is reused across tokens in
     * registers: the prefill / batched-decode inner loop. */
    void (*dot4xT)(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n);
} cpu_kernels;

const cpu_kernels *cpu_kernels_get(void);       /* the best for this CPU */
const cpu_kernels *cpu_kernels_portable(void);  /* always available (tests compare both) */
const cpu_kernels *cpu_kernels_avx2(void);      /* NULL when the CPU lacks AVX2/FMA/F16C */

#endif
