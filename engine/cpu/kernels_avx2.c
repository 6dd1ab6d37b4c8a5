/* kernels_avx2.c -- AVX2/FMA/F16C kernels. This file alone is compiled with -mavx2 -mfma
 * -mf16c; cpu_kernels_avx2() checks the running CPU before handing them out, so the binary
 * still runs on a CPU without AVX2 (it gets the portable set). */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static void block_sums_avx2(const float *x, float *s, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        const float *v = x + b * 32;
        __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8)),
                                 _mm256_add_ps(_mm256_loadu_ps(v + 16), _mm256_loadu_ps(v + 24)));
        s[b] = hsum(a);
    }
}

/* 16 bytes of nibbles -> the block's 32 weights as 4 x 8 floats (q, not yet scaled) */
static inline void q4_unpack(const uint8_t *q, __m256 *w0, __m256 *w1, __m256 *w2, __m256 *w3)
{
    const __m128i low = _mm_set1_epi8(0x0f);
    __m128i raw = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    *w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    *w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

static inline void q8_unpack(const uint8_t *q, __m256 *w0, __m256 *w1, __m256 *w2, __m256 *w3)
{
    __m128i a = _mm_loadu_si128((const __m128i *)q), b = _mm_loadu_si128((const __m128i *)(q + 16));
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
    *w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
    *w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
}

static float dot_q4_avx2(const cpu_qrow *w, const float *x, const float *sx, uint64_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    float macc = 0;
    for (uint64_t b = 0; b < nb; b++) {
        __m256 w0, w1, w2, w3;
        _mm_prefetch((const char *)(w->qs + b * w->q_stride) + CPU_PREFETCH_BYTES, _MM_HINT_T0);
        q4_unpack(w->qs + b * w->q_stride, &w0, &w1, &w2, &w3);
        const float *xb = x + b * 32;
        __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f16(w->d + b * w->dm_stride)), s, acc);
        macc += ld_f16(w->m + b * w->dm_stride) * sx[b];
    }
    return hsum(acc) + macc;
}

static float dot_q8_avx2(const cpu_qrow *w, const float *x, uint64_t nb)
{
    __m256 acc = _mm256_setzero_ps();
    for (uint64_t b = 0; b < nb; b++) {
        __m256 w0, w1, w2, w3;
        _mm_prefetch((const char *)(w->qs + b * w->q_stride) + CPU_PREFETCH_BYTES, _MM_HINT_T0);
        q8_unpack(w->qs + b * w->q_stride, &w0, &w1, &w2, &w3);
        const float *xb = x + b * 32;
        __m256 s = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_f16(w->d + b * w->dm_stride)), s, acc);
    }
    return hsum(acc);
}

static void row_q4_avx2(const cpu_qrow *w, float *out, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        __m256 w0, w1, w2, w3;
        _mm_prefetch((const char *)(w->qs + b * w->q_stride) + CPU_PREFETCH_BYTES, _MM_HINT_T0);
        q4_unpack(w->qs + b * w->q_stride, &w0, &w1, &w2, &w3);
        __m256 d = _mm256_set1_ps(ld_f16(w->d + b * w->dm_stride)), m = _mm256_set1_ps(ld_f16(w->m + b * w->dm_stride));
        _mm256_storeu_ps(out + b * 32, _mm256_fmadd_ps(d, w0, m));
        _mm256_storeu_ps(out + b * 32 + 8, _mm256_fmadd_ps(d, w1, m));
        _mm256_storeu_ps(out + b * 32 + 16, _mm256_fmadd_ps(d, w2, m));
        _mm256_storeu_ps(out + b * 32 + 24, _mm256_fmadd_ps(d, w3, m));
    }
}

static void row_q8_avx2(const cpu_qrow *w, float *out, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        __m256 w0, w1, w2, w3;
        _mm_prefetch((const char *)(w->qs + b * w->q_stride) + CPU_PREFETCH_BYTES, _MM_HINT_T0);
        q8_unpack(w->qs + b * w->q_stride, &w0, &w1, &w2, &w3);
        __m256 d = _mm256_set1_ps(ld_f16(w->d + b * w->dm_stride));
        _mm256_storeu_ps(out + b * 32, _mm256_mul_ps(d, w0));
        _mm256_storeu_ps(out + b * 32 + 8, _mm256_mul_ps(d, w1));
        _mm256_storeu_ps(out + b * 32 + 16, _mm256_mul_ps(d, w2));
        _mm256_storeu_ps(out + b * 32 + 24, _mm256_mul_ps(d, w3));
    }
}

static float dot_f16_avx2(const uint16_t *w, const float *x, uint64_t n)
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

static float dot_f32_avx2(const float *a, const float *b, uint64_t n)
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

static void axpy_avx2(float a, const float *x, float *y, uint64_t n)
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
static void dot4xT_avx2(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n)
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
        o[0] = dot_f32_avx2(w0, xa, n), o[1] = dot_f32_avx2(w1, xa, n);
        o[2] = dot_f32_avx2(w2, xa, n), o[3] = dot_f32_avx2(w3, xa, n);
    }
}

static const cpu_kernels avx2 = {
    "avx2", block_sums_avx2, dot_q4_avx2, dot_q8_avx2, row_q4_avx2, row_q8_avx2, dot_f16_avx2, dot_f32_avx2, axpy_avx2,
    dot4xT_avx2,
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
