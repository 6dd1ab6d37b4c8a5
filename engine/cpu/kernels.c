/* kernels.c -- portable CPU kernels and run-time selection of the AVX2 set. */
#include "kernels.h"

#include <string.h>

float cpu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t cpu_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
        half++; /* may carry into the exponent, which is the correct rounding */
    return (uint16_t)half;
}

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return cpu_f16_to_f32(h);
}

static void block_sums_c(const float *x, float *s, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        float acc = 0;
        for (int j = 0; j < 32; j++)
            acc += x[b * 32 + j];
        s[b] = acc;
    }
}

static float dot_q4_c(const cpu_qrow *w, const float *x, const float *sx, uint64_t nb)
{
    float acc = 0;
    for (uint64_t b = 0; b < nb; b++) {
        const uint8_t *q = w->qs + b * w->q_stride;
        const float *xb = x + b * 32;
        float sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (float)(q[j] & 0x0f) * xb[j] + (float)(q[j] >> 4) * xb[j + 16];
        acc += ld_f16(w->d + b * w->dm_stride) * sum + ld_f16(w->m + b * w->dm_stride) * sx[b];
    }
    return acc;
}

static float dot_q8_c(const cpu_qrow *w, const float *x, uint64_t nb)
{
    float acc = 0;
    for (uint64_t b = 0; b < nb; b++) {
        const int8_t *q = (const int8_t *)(w->qs + b * w->q_stride);
        const float *xb = x + b * 32;
        float sum = 0;
        for (int j = 0; j < 32; j++)
            sum += (float)q[j] * xb[j];
        acc += ld_f16(w->d + b * w->dm_stride) * sum;
    }
    return acc;
}

static void row_q4_c(const cpu_qrow *w, float *out, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        const uint8_t *q = w->qs + b * w->q_stride;
        float d = ld_f16(w->d + b * w->dm_stride), m = ld_f16(w->m + b * w->dm_stride);
        for (int j = 0; j < 16; j++) {
            out[b * 32 + j] = d * (float)(q[j] & 0x0f) + m;
            out[b * 32 + j + 16] = d * (float)(q[j] >> 4) + m;
        }
    }
}

static void row_q8_c(const cpu_qrow *w, float *out, uint64_t nb)
{
    for (uint64_t b = 0; b < nb; b++) {
        const int8_t *q = (const int8_t *)(w->qs + b * w->q_stride);
        float d = ld_f16(w->d + b * w->dm_stride);
        for (int j = 0; j < 32; j++)
            out[b * 32 + j] = d * (float)q[j];
    }
}

static float dot_f16_c(const uint16_t *w, const float *x, uint64_t n)
{
    float acc = 0;
    for (uint64_t i = 0; i < n; i++)
        acc += cpu_f16_to_f32(w[i]) * x[i];
    return acc;
}

static float dot_f32_c(const float *a, const float *b, uint64_t n)
{
    float acc = 0;
    for (uint64_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

static void axpy_c(float a, const float *x, float *y, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void dot4xT_c(const float *w, const float *x, uint32_t n_tok, float *out, uint64_t out_stride, uint64_t n)
{
    for (uint32_t t = 0; t < n_tok; t++)
        for (int r = 0; r < 4; r++)
            out[t * out_stride + (uint64_t)r] = dot_f32_c(w + (uint64_t)r * n, x + (uint64_t)t * n, n);
}

static const cpu_kernels portable = {
    "portable", block_sums_c, dot_q4_c, dot_q8_c, row_q4_c, row_q8_c, dot_f16_c, dot_f32_c, axpy_c, dot4xT_c,
};

const cpu_kernels *cpu_kernels_portable(void) { return &portable; }

const cpu_kernels *cpu_kernels_get(void)
{
    const cpu_kernels *k = cpu_kernels_avx2();
    return k ? k : &portable;
}
