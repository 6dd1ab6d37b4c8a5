/* kernels_avx512.c -- AVX-512 VNNI kernels for the quantized matmuls. This file alone is
 * compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma -mf16c;
 * cpu_kernels_avx512() checks the running CPU before handing them out. The f16/f32 helpers
 * are the AVX2 set's (kernels_avx2.c).
 *
 * One zmm lane per row of a 16-row group: a 64-byte load is 4 bytes of each row, unpacked
 * with shifts and masks into 16-bit pairs, and vpdpwssd multiplies every row's pair by the
 * same broadcast activation pair. Up to 8 tokens share each unpacked load. */
#include "kernels.h"

#if defined(__x86_64__)
#include "snapshot.h"

#include <immintrin.h>
#include <string.h>

#define TILE 8 /* tokens per pass: 8 int32 sums + 8 f32 accumulators + 4 weights + scales fit the 32 registers */

static inline __m512i bcast_pair(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

static inline __attribute__((always_inline)) void
group_q4(const uint8_t *u, uint64_t nb, const cpu_act *a, uint32_t t0, const int nt, __m512 *acc)
{
    const __m512i mask = _mm512_set1_epi32(0x000f000f);
    const uint8_t *dp = u + nb * 256, *mp = dp + nb * 32;
    for (int t = 0; t < nt; t++)
        acc[t] = _mm512_setzero_ps();
    for (uint64_t b = 0; b < nb; b++, u += 256, dp += 32, mp += 32) {
        for (int p = 0; p < 256; p += 64)
            _mm_prefetch((const char *)u + CPU_PREFETCH_BYTES + p, _MM_HINT_T0);
        __m512i is[TILE];
        for (int t = 0; t < nt; t++)
            is[t] = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            __m512i v = _mm512_load_si512((const void *)(u + 64 * j));
            __m512i w0 = _mm512_and_si512(v, mask), w1 = _mm512_and_si512(_mm512_srli_epi32(v, 4), mask);
            __m512i w2 = _mm512_and_si512(_mm512_srli_epi32(v, 8), mask), w3 = _mm512_and_si512(_mm512_srli_epi32(v, 12), mask);
            for (int t = 0; t < nt; t++) {
                const int16_t *x = a->x16 + (uint64_t)(t0 + t) * a->n + b * 32 + 8 * j;
                is[t] = _mm512_dpwssd_epi32(is[t], w0, bcast_pair(x));
                is[t] = _mm512_dpwssd_epi32(is[t], w1, bcast_pair(x + 2));
                is[t] = _mm512_dpwssd_epi32(is[t], w2, bcast_pair(x + 4));
                is[t] = _mm512_dpwssd_epi32(is[t], w3, bcast_pair(x + 6));
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)dp));
        __m512 m = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)mp));
        for (int t = 0; t < nt; t++) {
            uint64_t sb = (uint64_t)(t0 + t) * a->nb + b;
            __m512 dsx = _mm512_mul_ps(d, _mm512_set1_ps(a->s[sb]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[t]), dsx, acc[t]);
            acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(a->sx[sb]), acc[t]);
        }
    }
}

static inline __attribute__((always_inline)) void
group_q8(const uint8_t *u, uint64_t nb, const cpu_act *a, uint32_t t0, const int nt, __m512 *acc)
{
    const uint8_t *dp = u + nb * 512;
    for (int t = 0; t < nt; t++)
        acc[t] = _mm512_setzero_ps();
    for (uint64_t b = 0; b < nb; b++, u += 512, dp += 32) {
        for (int p = 0; p < 512; p += 64)
            _mm_prefetch((const char *)u + CPU_PREFETCH_BYTES + p, _MM_HINT_T0);
        __m512i is[TILE];
        for (int t = 0; t < nt; t++)
            is[t] = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) {
            __m512i v = _mm512_load_si512((const void *)(u + 64 * j));
            __m512i w0 = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8), w1 = _mm512_srai_epi16(v, 8);
            for (int t = 0; t < nt; t++) {
                const int16_t *x = a->x16 + (uint64_t)(t0 + t) * a->n + b * 32 + 4 * j;
                is[t] = _mm512_dpwssd_epi32(is[t], w0, bcast_pair(x));
                is[t] = _mm512_dpwssd_epi32(is[t], w1, bcast_pair(x + 2));
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)dp));
        for (int t = 0; t < nt; t++) {
            __m512 dsx = _mm512_mul_ps(d, _mm512_set1_ps(a->s[(uint64_t)(t0 + t) * a->nb + b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[t]), dsx, acc[t]);
        }
    }
}

/* One pass of nt (compile-time after inlining) tokens over group g. */
static inline __attribute__((always_inline)) void pass(const cpu_r16 *w, uint64_t g, const cpu_act *a, uint32_t t0,
                                                       const int nt, float *out, uint64_t out_stride)
{
    __m512 acc[TILE];
    if (w->dtype == SNAP_Q4)
        group_q4(w->base + g * w->nb * CPU_R16_Q4_UNIT, w->nb, a, t0, nt, acc);
    else
        group_q8(w->base + g * w->nb * CPU_R16_Q8_UNIT, w->nb, a, t0, nt, acc);
    uint64_t left = w->rows - g * CPU_R16_ROWS;
    __mmask16 keep = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    for (int t = 0; t < nt; t++)
        _mm512_mask_storeu_ps(out + (uint64_t)(t0 + t) * out_stride + g * CPU_R16_ROWS, keep, acc[t]);
}

#define PASS(n) \
    case n: pass(w, g, a, t0, n, out, out_stride); break;

static void matmul_r16_avx512(const cpu_r16 *w, uint64_t g0, uint64_t g1, const cpu_act *a, uint32_t n_tok, float *out,
                              uint64_t out_stride)
{
    for (uint64_t g = g0; g < g1; g++)
        for (uint32_t t0 = 0; t0 < n_tok; t0 += TILE) {
            switch (n_tok - t0 >= TILE ? TILE : n_tok - t0) {
                PASS(1) PASS(2) PASS(3) PASS(4) PASS(5) PASS(6) PASS(7) PASS(8)
            }
        }
}

static void quant_act_avx512(const float *x, const cpu_act *a, uint32_t t)
{
    int16_t *q = a->x16 + (uint64_t)t * a->n;
    const __m512 lim = _mm512_set1_ps(CPU_ACT_MAX), nlim = _mm512_set1_ps(-CPU_ACT_MAX);
    for (uint64_t b = 0; b < a->nb; b++) {
        __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float s = amax / CPU_ACT_MAX, inv = amax > 0 ? CPU_ACT_MAX / amax : 0.0f;
        __m512 iv = _mm512_set1_ps(inv);
        __m512 r0 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v0, iv), nlim), lim);
        __m512 r1 = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v1, iv), nlim), lim);
        __m512i i0 = _mm512_cvtps_epi32(r0), i1 = _mm512_cvtps_epi32(r1);
        _mm256_storeu_si256((__m256i *)(q + b * 32), _mm512_cvtepi32_epi16(i0));
        _mm256_storeu_si256((__m256i *)(q + b * 32 + 16), _mm512_cvtepi32_epi16(i1));
        int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        a->s[(uint64_t)t * a->nb + b] = s;
        a->sx[(uint64_t)t * a->nb + b] = s * (float)sum;
    }
}

static const cpu_kernels avx512 = {
    "avx512", quant_act_avx512, matmul_r16_avx512, cpu_avx2_dot_f16, cpu_avx2_dot_f32, cpu_avx2_axpy, cpu_avx2_dot4xT,
};

const cpu_kernels *cpu_kernels_avx512(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni") && cpu_kernels_avx2())
        return &avx512;
    return NULL;
}
#else
const cpu_kernels *cpu_kernels_avx512(void) { return NULL; }
#endif
