/* kernels_avx2.c -- AVX2/FMA/F16C kernels. This file alone is compiled with -mavx2 -mfma
 * -mf16c; cpu_kernels_avx2() checks the running CPU before handing them out, so the binary
 * still runs on a CPU without AVX2 (it gets the portable set). */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include "snapshot.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define TILE 4 /* tokens per pass: 4 sums + 4 accumulators + 4 weights + scales fit 16 registers */

static inline __m256i bcast_pair(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Rows 8h..8h+7 of one group (h = 0, 1) for nt tokens: the AVX-512 kernel's arithmetic on
 * half the lanes, vpmaddwd + vpaddd in place of vpdpwssd (exact either way). */
static inline __attribute__((always_inline)) void
half_q4(const uint8_t *u, uint64_t nb, int h, const cpu_act *a, uint32_t t0, const int nt, __m256 *acc)
{
    const __m256i mask = _mm256_set1_epi32(0x000f000f);
    const uint8_t *dp = u + nb * 256 + 16 * h, *mp = dp + nb * 32;
    u += 32 * h;
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps();
    for (uint64_t b = 0; b < nb; b++, u += 256, dp += 32, mp += 32) {
        for (int p = 0; p < 256; p += 64)
            _mm_prefetch((const char *)u + CPU_PREFETCH_BYTES + p, _MM_HINT_T0);
        __m256i is[TILE];
        for (int t = 0; t < nt; t++)
            is[t] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            __m256i v = _mm256_load_si256((const __m256i *)(u + 64 * j));
            __m256i w0 = _mm256_and_si256(v, mask), w1 = _mm256_and_si256(_mm256_srli_epi32(v, 4), mask);
            __m256i w2 = _mm256_and_si256(_mm256_srli_epi32(v, 8), mask), w3 = _mm256_and_si256(_mm256_srli_epi32(v, 12), mask);
            for (int t = 0; t < nt; t++) {
                const int16_t *x = a->x16 + (uint64_t)(t0 + t) * a->n + b * 32 + 8 * j;
                __m256i p0 = _mm256_add_epi32(_mm256_madd_epi16(w0, bcast_pair(x)), _mm256_madd_epi16(w1, bcast_pair(x + 2)));
                __m256i p1 = _mm256_add_epi32(_mm256_madd_epi16(w2, bcast_pair(x + 4)), _mm256_madd_epi16(w3, bcast_pair(x + 6)));
                is[t] = _mm256_add_epi32(is[t], _mm256_add_epi32(p0, p1));
            }
        }
        __m256 d = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)dp));
        __m256 m = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)mp));
        for (int t = 0; t < nt; t++) {
            uint64_t sb = (uint64_t)(t0 + t) * a->nb + b;
            __m256 dsx = _mm256_mul_ps(d, _mm256_set1_ps(a->s[sb]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[t]), dsx, acc[t]);
            acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(a->sx[sb]), acc[t]);
        }
    }
}

static inline __attribute__((always_inline)) void
half_q8(const uint8_t *u, uint64_t nb, int h, const cpu_act *a, uint32_t t0, const int nt, __m256 *acc)
{
    const uint8_t *dp = u + nb * 512 + 16 * h;
    u += 32 * h;
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps();
    for (uint64_t b = 0; b < nb; b++, u += 512, dp += 32) {
        for (int p = 0; p < 512; p += 64)
            _mm_prefetch((const char *)u + CPU_PREFETCH_BYTES + p, _MM_HINT_T0);
        __m256i is[TILE];
        for (int t = 0; t < nt; t++)
            is[t] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            __m256i v = _mm256_load_si256((const __m256i *)(u + 64 * j));
            __m256i w0 = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8), w1 = _mm256_srai_epi16(v, 8);
            for (int t = 0; t < nt; t++) {
                const int16_t *x = a->x16 + (uint64_t)(t0 + t) * a->n + b * 32 + 4 * j;
                is[t] = _mm256_add_epi32(is[t], _mm256_add_epi32(_mm256_madd_epi16(w0, bcast_pair(x)),
                                                                 _mm256_madd_epi16(w1, bcast_pair(x + 2))));
            }
        }
        __m256 d = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)dp));
        for (int t = 0; t < nt; t++) {
            __m256 dsx = _mm256_mul_ps(d, _mm256_set1_ps(a->s[(uint64_t)(t0 + t) * a->nb + b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[t]), dsx, acc[t]);
        }
    }
}

static inline __attribute__((always_inline)) void pass(const cpu_r16 *w, uint64_t g, const cpu_act *a, uint32_t t0,
                                                       const int nt, float *out, uint64_t out_stride)
{
    uint64_t left = w->rows - g * CPU_R16_ROWS;
    for (int h = 0; h < 2 && left > (uint64_t)8 * h; h++) {
        __m256 acc[TILE];
        if (w->dtype == SNAP_Q4)
            half_q4(w->base + g * w->nb * CPU_R16_Q4_UNIT, w->nb, h, a, t0, nt, acc);
        else
            half_q8(w->base + g * w->nb * CPU_R16_Q8_UNIT, w->nb, h, a, t0, nt, acc);
        uint64_t n = left - 8 * h >= 8 ? 8 : left - 8 * h;
        for (int t = 0; t < nt; t++) {
            float *o = out + (uint64_t)(t0 + t) * out_stride + g * CPU_R16_ROWS + 8 * h;
            if (n == 8) {
                _mm256_storeu_ps(o, acc[t]);
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, acc[t]);
                memcpy(o, tmp, n * sizeof *o);
            }
        }
    }
}

#define PASS(n) \
    case n: pass(w, g, a, t0, n, out, out_stride); break;

static void matmul_r16_avx2(const cpu_r16 *w, uint64_t g0, uint64_t g1, const cpu_act *a, uint32_t n_tok, float *out,
                            uint64_t out_stride)
{
    for (uint64_t g = g0; g < g1; g++)
        for (uint32_t t0 = 0; t0 < n_tok; t0 += TILE) {
            switch (n_tok - t0 >= TILE ? TILE : n_tok - t0) {
                PASS(1) PASS(2) PASS(3) PASS(4)
            }
        }
}

static void quant_act_avx2(const float *x, const cpu_act *a, uint32_t t)
{
    int16_t *q = a->x16 + (uint64_t)t * a->n;
    const __m256 lim = _mm256_set1_ps(CPU_ACT_MAX), nlim = _mm256_set1_ps(-CPU_ACT_MAX);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (uint64_t b = 0; b < a->nb; b++) {
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + b * 32 + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float s = amax / CPU_ACT_MAX, inv = amax > 0 ? CPU_ACT_MAX / amax : 0.0f;
        __m256 iv = _mm256_set1_ps(inv);
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < 4; k += 2) {
            __m256i i0 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[k], iv), nlim), lim));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[k + 1], iv), nlim), lim));
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(i0, i1));
            /* packs interleaves 128-bit lanes: put them back in order */
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xd8);
            _mm256_storeu_si256((__m256i *)(q + b * 32 + 8 * k), p);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        a->s[(uint64_t)t * a->nb + b] = s;
        a->sx[(uint64_t)t * a->nb + b] = s * (float)_mm_cvtsi128_si32(s4);
    }
}

float cpu_avx2_dot_f16(const uint16_t *w, const float *x, uint64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))),
                               _mm256_loadu_ps(x + i + 8), acc1);
    }
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += _cvtsh_ss(w[i]) * x[i];
    return s;
}

float cpu_avx2_dot_f32(const float *a, const float *b, uint64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void cpu_avx2_axpy(float a, const float *x, float *y, uint64_t n)
{
    __m256 av = _mm256_set1_ps(a);
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* 4 rows x 2 tokens per pass: 8 accumulators, 6 loads per 8 FMAs (one dot per pair would
 * need 2 loads per FMA). n is a multiple of 8 for every matrix thaw stores (32-blocks). */
void cpu_avx2_dot4xT(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n)
{
    const float *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    uint32_t t = 0;
    for (; t + 2 <= n_tok; t += 2) {
        const float *xa = x + (uint64_t)t * n, *xb = xa + n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (uint64_t i = 0; i < n; i += 8) {
            __m256 va = _mm256_loadu_ps(xa + i), vb = _mm256_loadu_ps(xb + i);
            __m256 r0 = _mm256_loadu_ps(w0 + i), r1 = _mm256_loadu_ps(w1 + i);
            __m256 r2 = _mm256_loadu_ps(w2 + i), r3 = _mm256_loadu_ps(w3 + i);
            a0 = _mm256_fmadd_ps(r0, va, a0);
            a1 = _mm256_fmadd_ps(r1, va, a1);
            a2 = _mm256_fmadd_ps(r2, va, a2);
            a3 = _mm256_fmadd_ps(r3, va, a3);
            b0 = _mm256_fmadd_ps(r0, vb, b0);
            b1 = _mm256_fmadd_ps(r1, vb, b1);
            b2 = _mm256_fmadd_ps(r2, vb, b2);
            b3 = _mm256_fmadd_ps(r3, vb, b3);
        }
        float *oa = out + (uint64_t)t * out_stride, *ob = oa + out_stride;
        oa[0] = hsum(a0), oa[1] = hsum(a1), oa[2] = hsum(a2), oa[3] = hsum(a3);
        ob[0] = hsum(b0), ob[1] = hsum(b1), ob[2] = hsum(b2), ob[3] = hsum(b3);
    }
    for (; t < n_tok; t++) {
        float *o = out + (uint64_t)t * out_stride;
        const float *xa = x + (uint64_t)t * n;
        o[0] = cpu_avx2_dot_f32(w0, xa, n), o[1] = cpu_avx2_dot_f32(w1, xa, n);
        o[2] = cpu_avx2_dot_f32(w2, xa, n), o[3] = cpu_avx2_dot_f32(w3, xa, n);
    }
}

void cpu_avx2_to_f16(const float *x, uint16_t *out, uint64_t n, uint64_t stride)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) { /* eight conversions at once, then stored one by one where strided */
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        if (stride == 1) {
            _mm_storeu_si128((__m128i *)(out + i), h);
            continue;
        }
        uint16_t v[8];
        _mm_storeu_si128((__m128i *)v, h);
        for (int j = 0; j < 8; j++)
            out[(i + j) * stride] = v[j];
    }
    for (; i < n; i++)
        out[i * stride] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

/* e^x, as kernels_avx512.c's exp_neg on 8 lanes: 2^n e^r, |r| <= ln2/2, Taylor to r^6. */
static inline __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n by the exponent field: n in [-126, 127] after the clamps above */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 ld8h(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

#define ATT_HC 4 /* query heads per pass over the keys: 8 accumulators of 16 registers */

/* The AVX-512 attention's algorithm on 8 lanes: keys 16 positions at a time as two halves,
 * up to four query heads per pass; values one position and one head at a time. */
static void attend_avx2(const float *q, uint32_t n_q, uint32_t d, const uint16_t *const *k, const uint16_t *const *v,
                        uint32_t n_pos, float scale, float *sc, float *out)
{
    if (d % 8) {
        cpu_attend_c(q, n_q, d, k, v, n_pos, scale, sc, out);
        return;
    }
    uint32_t stride = (n_pos + 15) / 16 * 16;
    for (uint32_t h0 = 0; h0 < n_q; h0 += ATT_HC) {
        uint32_t hc = n_q - h0 < ATT_HC ? n_q - h0 : ATT_HC;
        for (uint32_t i = 0; i * 16 < n_pos; i++) {
            __m256 lo[ATT_HC], hi[ATT_HC];
            for (uint32_t h = 0; h < ATT_HC; h++)
                lo[h] = hi[h] = _mm256_setzero_ps();
            for (uint32_t j = 0; j < d; j++) {
                __m256 k0 = ld8h(k[i] + j * 16), k1 = ld8h(k[i] + j * 16 + 8);
                for (uint32_t h = 0; h < ATT_HC; h++) {
                    if (h < hc) {
                        __m256 qv = _mm256_set1_ps(q[(h0 + h) * d + j]);
                        lo[h] = _mm256_fmadd_ps(qv, k0, lo[h]);
                        hi[h] = _mm256_fmadd_ps(qv, k1, hi[h]);
                    }
                }
            }
            for (uint32_t h = 0; h < hc; h++) {
                float *s = sc + (h0 + h) * stride + i * 16;
                _mm256_storeu_ps(s, _mm256_mul_ps(lo[h], _mm256_set1_ps(scale)));
                _mm256_storeu_ps(s + 8, _mm256_mul_ps(hi[h], _mm256_set1_ps(scale)));
            }
        }
    }
    for (uint32_t h = 0; h < n_q; h++) {
        float *s = sc + h * stride, mx = -INFINITY, sum = 0;
        for (uint32_t p = 0; p < n_pos; p++)
            mx = s[p] > mx ? s[p] : mx;
        for (uint32_t p = n_pos; p < stride; p++)
            s[p] = -INFINITY;
        __m256 mv = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
        for (uint32_t p = 0; p < stride; p += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + p), mv));
            e = _mm256_and_ps(e, _mm256_cmp_ps(_mm256_loadu_ps(s + p), _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
            _mm256_storeu_ps(s + p, e);
            acc = _mm256_add_ps(acc, e);
        }
        sum = hsum(acc);
        float inv = 1.0f / sum, *o = out + (uint64_t)h * d;
        for (uint32_t c = 0; c < d; c += 32) {
            uint32_t w = d - c < 32 ? d - c : 32;
            __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
            for (uint32_t p = 0; p < n_pos; p++) {
                const uint16_t *vp = v[p / 16] + (uint64_t)(p % 16) * d + c;
                __m256 wv = _mm256_set1_ps(s[p]);
                o0 = _mm256_fmadd_ps(wv, ld8h(vp), o0);
                if (w > 8)
                    o1 = _mm256_fmadd_ps(wv, ld8h(vp + 8), o1);
                if (w > 16)
                    o2 = _mm256_fmadd_ps(wv, ld8h(vp + 16), o2);
                if (w > 24)
                    o3 = _mm256_fmadd_ps(wv, ld8h(vp + 24), o3);
            }
            __m256 iv = _mm256_set1_ps(inv);
            _mm256_storeu_ps(o + c, _mm256_mul_ps(o0, iv));
            if (w > 8)
                _mm256_storeu_ps(o + c + 8, _mm256_mul_ps(o1, iv));
            if (w > 16)
                _mm256_storeu_ps(o + c + 16, _mm256_mul_ps(o2, iv));
            if (w > 24)
                _mm256_storeu_ps(o + c + 24, _mm256_mul_ps(o3, iv));
        }
    }
}

static void swiglu_avx2(float *g, const float *u, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    cpu_swiglu_c(g + i, u + i, n - i);
}

static const cpu_kernels avx2 = {
    "avx2", quant_act_avx2, matmul_r16_avx2, cpu_avx2_dot_f16, cpu_avx2_dot_f32, cpu_avx2_axpy, cpu_avx2_dot4xT,
    attend_avx2, cpu_avx2_to_f16, swiglu_avx2, cpu_rope_c, cpu_rmsnorm_c,
};

const cpu_kernels *cpu_kernels_avx2(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return &avx2;
    return NULL;
}
#else
const cpu_kernels *cpu_kernels_avx2(void) { return NULL; }
#endif
