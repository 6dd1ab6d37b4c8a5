/* kernels.c -- portable CPU kernels and run-time selection of the AVX2 set. */
#include "kernels.h"
#include "snapshot.h"

#include <stdlib.h>
#include <string.h>

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return snap_f16_to_f32(h);
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
        acc += snap_f16_to_f32(w[i]) * x[i];
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

/* The best set this CPU runs. THAW_CPU_KERNELS=portable forces the portable one (benchmarks,
 * or ruling out a kernel when chasing a numeric difference). AVX-512 versions of the q4/q8
 * dots measured within 3 % of these once both prefetch, so there are none. */
const cpu_kernels *cpu_kernels_get(void)
{
    const char *want = getenv("THAW_CPU_KERNELS");
    const cpu_kernels *k = want && !strcmp(want, "portable") ? NULL : cpu_kernels_avx2();
    return k ? k : &portable;
}
