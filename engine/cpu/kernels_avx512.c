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
#include <math.h>
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

/* e^x as 2^n e^r, |r| <= ln2/2, with e^r by its Taylor series to r^6 (truncation below 2e-7
 * relative, about an ulp). Below -104 it is 0; above 88.7 it overflows to inf. */
static inline __m512 exp_neg(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static void swiglu_avx512(float *g, const float *u, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i);
        __m512 e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(silu, _mm512_loadu_ps(u + i)));
    }
    cpu_swiglu_c(g + i, u + i, n - i);
}

#define ATT_MAXQ 8 /* query heads per KV head handled together (GQA groups are 1..8) */

/* Scores of NQ heads (a compile-time count after inlining, so the accumulators stay in
 * registers) against keys 16 positions at a time: one zmm per key dimension (the block is
 * stored transposed), every head multiplied against each load. Positions past n_pos get
 * -inf; mx[h] collects each head's running maximum. */
static inline __m512 ld16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

#define AHEAD 2

/* Scores of NB adjacent blocks (1 or 2) at once: each head's sum over the D dimensions is a
 * chain of dependent FMAs, and three heads' chains alone left the FMA units waiting on their
 * latency; two blocks give twice the independent chains (each block's sums keep their order). */
static inline __attribute__((always_inline)) void key_blocks(const float *q, uint32_t d, const uint16_t *const *k,
                                                             uint32_t i, uint32_t n_pos, float scale, float *sc,
                                                             uint32_t stride, __m512 *mx, const int NQ, const int NB)
{
    __m512 acc[2][ATT_MAXQ];
    for (int b = 0; b < NB; b++)
        for (int h = 0; h < NQ; h++)
            acc[b][h] = _mm512_setzero_ps();
    for (uint32_t j = 0; j < d; j++) {
        __m512 kj[2];
        for (int b = 0; b < NB; b++)
            kj[b] = ld16(k[i + b] + j * 16);
        for (int h = 0; h < NQ; h++) {
            __m512 qj = _mm512_set1_ps(q[h * d + j]);
            for (int b = 0; b < NB; b++)
                acc[b][h] = _mm512_fmadd_ps(qj, kj[b], acc[b][h]);
        }
    }
    for (int b = 0; b < NB; b++) {
        uint32_t left = n_pos - (i + b) * 16;
        __mmask16 live = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        for (int h = 0; h < NQ; h++) {
            __m512 sv =
                _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), live, _mm512_mul_ps(acc[b][h], _mm512_set1_ps(scale)));
            _mm512_storeu_ps(sc + h * stride + (i + b) * 16, sv);
            mx[h] = _mm512_max_ps(mx[h], sv);
        }
    }
}

static inline __attribute__((always_inline)) void keys(const float *q, uint32_t d, const uint16_t *const *k,
                                                       const uint16_t *const *v,
                                                       uint32_t n_pos, float scale, float *sc, uint32_t stride,
                                                       __m512 *mx, const int NQ)
{
    for (int h = 0; h < NQ; h++)
        mx[h] = _mm512_set1_ps(-INFINITY);
    uint32_t n_blk = (n_pos + 15) / 16;
    for (uint32_t i = 0; i < n_blk; i += 2) {
        /* blocks lie anywhere in the pool and a sequence's K/V outgrow the caches once a few
         * sequences decode together: fetch keys AHEAD blocks ahead, and these blocks' values
         * for the pass after this one */
        for (uint32_t b = i; b < i + 2 && b < n_blk; b++) {
            if (b + AHEAD < n_blk)
                for (uint32_t l = 0; l < d * 32; l += 64)
                    _mm_prefetch((const char *)k[b + AHEAD] + l, _MM_HINT_T0);
            for (uint32_t l = 0; l < d * 32; l += 64)
                _mm_prefetch((const char *)v[b] + l, _MM_HINT_T1);
        }
        if (i + 1 < n_blk)
            key_blocks(q, d, k, i, n_pos, scale, sc, stride, mx, NQ, 2);
        else
            key_blocks(q, d, k, i, n_pos, scale, sc, stride, mx, NQ, 1);
    }
}

/* out[h] = inv[h] * sum_p w[h][p] v[p] for HC heads of NC x 16 dimensions: each value row is
 * loaded once for all HC heads (HC * NC accumulators in registers). */
static inline __attribute__((always_inline)) void values(const float *sc, uint32_t stride, const uint16_t *const *v,
                                                         uint32_t n_pos, const float *inv, float *out, const int NC,
                                                         const int HC)
{
    __m512 o[24];
    for (int i = 0; i < HC * NC; i++)
        o[i] = _mm512_setzero_ps();
    for (uint32_t p = 0; p < n_pos; p++) {
        const uint16_t *vp = v[p / 16] + (uint64_t)(p % 16) * NC * 16;

        for (int c = 0; c < NC; c++) {
            __m512 vc = ld16(vp + 16 * c);
            for (int h = 0; h < HC; h++)
                o[h * NC + c] = _mm512_fmadd_ps(_mm512_set1_ps(sc[h * stride + p]), vc, o[h * NC + c]);
        }
    }
    for (int h = 0; h < HC; h++)
        for (int c = 0; c < NC; c++)
            _mm512_storeu_ps(out + (h * NC + c) * 16, _mm512_mul_ps(o[h * NC + c], _mm512_set1_ps(inv[h])));
}

#define KEYS(n) \
    case n: keys(q, d, k, v, n_pos, scale, sc, stride, mx, n); break;
#define VALUES(nc, hc) \
    case hc: values(sc + h0 * stride, stride, v, n_pos, inv + h0, out + h0 * d, nc, hc); break;

/* Attention for head dims 64 and 128 (others take the portable path). */
static void attend_avx512(const float *q, uint32_t n_q, uint32_t d, const uint16_t *const *k, const uint16_t *const *v,
                          uint32_t n_pos, float scale, float *sc, float *out)
{
    if ((d != 64 && d != 128) || n_q > ATT_MAXQ) {
        cpu_attend_c(q, n_q, d, k, v, n_pos, scale, sc, out);
        return;
    }
    uint32_t stride = (n_pos + 15) / 16 * 16;
    __m512 mx[ATT_MAXQ];
    switch (n_q) {
        KEYS(1) KEYS(2) KEYS(3) KEYS(4) KEYS(5) KEYS(6) KEYS(7) KEYS(8)
    }
    float inv[ATT_MAXQ];
    for (uint32_t h = 0; h < n_q; h++) {
        __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx[h])), sum = _mm512_setzero_ps();
        float *sh = sc + h * stride;
        for (uint32_t i = 0; i < stride; i += 16) {
            __m512 e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(sh + i), mv));
            _mm512_storeu_ps(sh + i, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv[h] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    uint32_t hmax = d == 64 ? 6 : 3;
    for (uint32_t h0 = 0; h0 < n_q; h0 += hmax) {
        uint32_t hc = n_q - h0 < hmax ? n_q - h0 : hmax;
        if (d == 64) {
            switch (hc) {
                VALUES(4, 1) VALUES(4, 2) VALUES(4, 3) VALUES(4, 4) VALUES(4, 5) VALUES(4, 6)
            }
        } else {
            switch (hc) {
                VALUES(8, 1) VALUES(8, 2) VALUES(8, 3)
            }
        }
    }
}

/* cpu_rope_c's arithmetic on 16 lanes: the partner of each lane comes from a swap within
 * pairs (adjacent) or from the chunk d/2 further on (halves). */
static void rope_avx512(float *v, uint32_t n, uint32_t d, const float *cs, int halves)
{
    if (d % 16 || d > 256 || (halves && d % 32)) {
        cpu_rope_c(v, n, d, cs, halves);
        return;
    }
    uint32_t nc = d / 16;
    for (uint32_t h = 0; h < n; h++, v += d) {
        __m512 x[16]; /* the old values: partners are overwritten */
        for (uint32_t c = 0; c < nc; c++)
            x[c] = _mm512_loadu_ps(v + 16 * c);
        for (uint32_t c = 0; c < nc; c++) {
            __m512 p = halves ? x[(c + nc / 2) % nc] : _mm512_permute_ps(x[c], 0xB1);
            __m512 r = _mm512_add_ps(_mm512_mul_ps(x[c], _mm512_loadu_ps(cs + 16 * c)),
                                     _mm512_mul_ps(p, _mm512_loadu_ps(cs + d + 16 * c)));
            _mm512_storeu_ps(v + 16 * c, r);
        }
    }
}

/* cpu_rmsnorm_c's sums in the eight lanes of one double vector: the product of two floats is
 * exact in double, so each fused multiply-add rounds once, as the scalar add does. */
static void rmsnorm_avx512(float *out, const float *x, const float *w, uint64_t n, float eps)
{
    __m512d acc = _mm512_setzero_pd();
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    double part[8];
    _mm512_storeu_pd(part, acc);
    for (; i < n; i++)
        part[0] += (double)x[i] * x[i];
    float scale = cpu_rms_scale(part, n, eps);
    __m512 sv = _mm512_set1_ps(scale);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), sv), _mm512_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static const cpu_kernels avx512 = {
    "avx512", quant_act_avx512, matmul_r16_avx512, cpu_avx2_dot_f16, cpu_avx2_dot_f32, cpu_avx2_axpy, cpu_avx2_dot4xT,
    attend_avx512, cpu_avx2_to_f16, swiglu_avx512, rope_avx512, rmsnorm_avx512,
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
