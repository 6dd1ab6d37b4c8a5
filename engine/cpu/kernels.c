/* kernels.c -- portable CPU kernels, the R16 arrangement, and run-time kernel selection. */
#include "kernels.h"
#include "snapshot.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_r16_row_f32(const cpu_r16 *w, uint64_t r, float *out)
{
    snap_tensor t = {.dtype = w->dtype, .layout = SNAP_LAYOUT_R16, .n_dims = 2, .shape = {w->rows, w->nb * 32}};
    t.size = snap_r16_bytes(w->dtype, w->rows, w->nb * 32);
    snap_tensor_row_f32(&t, w->base, r, out);
}

/* ---- portable kernels --------------------------------------------------------------------- */

static void quant_act_c(const float *x, const cpu_act *a, uint32_t t)
{
    int16_t *q = a->x16 + (uint64_t)t * a->n;
    for (uint64_t b = 0; b < a->nb; b++) {
        const float *v = x + b * 32;
        float amax = 0;
        for (int k = 0; k < 32; k++)
            amax = fmaxf(amax, fabsf(v[k]));
        float s = amax / CPU_ACT_MAX, inv = amax > 0 ? CPU_ACT_MAX / amax : 0.0f;
        int32_t sum = 0;
        for (int k = 0; k < 32; k++) {
            float r = nearbyintf(v[k] * inv); /* round half to even, as the vector kernels */
            int32_t iv = r != r || r > CPU_ACT_MAX ? 32767 : r < -CPU_ACT_MAX ? -32767 : (int32_t)r;
            q[b * 32 + k] = (int16_t)iv;
            sum += iv;
        }
        a->s[(uint64_t)t * a->nb + b] = s;
        a->sx[(uint64_t)t * a->nb + b] = s * (float)sum;
    }
}

static void matmul_r16_c(const cpu_r16 *w, uint64_t g0, uint64_t g1, const cpu_act *a, uint32_t n_tok, float *out,
                         uint64_t out_stride)
{
    for (uint64_t g = g0; g < g1; g++) {
        uint64_t rows = w->rows - g * CPU_R16_ROWS < CPU_R16_ROWS ? w->rows - g * CPU_R16_ROWS : CPU_R16_ROWS;
        for (uint32_t t = 0; t < n_tok; t++) {
            const int16_t *x = a->x16 + (uint64_t)t * a->n;
            const float *s = a->s + (uint64_t)t * a->nb, *sx = a->sx + (uint64_t)t * a->nb;
            for (uint64_t i = 0; i < rows; i++) {
                float acc = 0;
                for (uint64_t b = 0; b < w->nb; b++) {
                    uint16_t d, m;
                    int8_t q[32];
                    int32_t isum = 0;
                    snap_r16_get(w->base, w->dtype, w->nb, g * CPU_R16_ROWS + i, b, &d, &m, q);
                    for (int k = 0; k < 32; k++)
                        isum += q[k] * x[b * 32 + k];
                    float dsx = snap_f16_to_f32(d) * s[b];
                    acc = fmaf((float)isum, dsx, acc);
                    if (w->dtype == SNAP_Q4)
                        acc = fmaf(snap_f16_to_f32(m), sx[b], acc);
                }
                out[(uint64_t)t * out_stride + g * CPU_R16_ROWS + i] = acc;
            }
        }
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

void cpu_attend_c(const float *q, uint32_t n_q, uint32_t d, const uint16_t *const *k, const uint16_t *const *v,
                  uint32_t n_pos, float scale, float *sc, float *out)
{
    uint32_t n_blk = (n_pos + 15) / 16, stride = n_blk * 16;
    for (uint32_t h = 0; h < n_q; h++) {
        const float *qh = q + (uint64_t)h * d;
        float *s = sc + (uint64_t)h * stride, mx = -INFINITY, sum = 0;
        for (uint32_t i = 0; i < n_blk; i++) {
            float acc[16] = {0};
            for (uint32_t j = 0; j < d; j++)
                for (int slot = 0; slot < 16; slot++)
                    acc[slot] += qh[j] * snap_f16_to_f32(k[i][j * 16 + slot]);
            for (int slot = 0; slot < 16; slot++)
                s[i * 16 + slot] = acc[slot] * scale;
        }
        for (uint32_t p = 0; p < n_pos; p++)
            mx = s[p] > mx ? s[p] : mx;
        for (uint32_t p = 0; p < n_pos; p++)
            sum += s[p] = expf(s[p] - mx);
        float inv = 1.0f / sum, *o = out + (uint64_t)h * d;
        memset(o, 0, d * sizeof *o);
        for (uint32_t p = 0; p < n_pos; p++) {
            const uint16_t *vp = v[p / 16] + (uint64_t)(p % 16) * d;
            float w = s[p] * inv;
            for (uint32_t j = 0; j < d; j++)
                o[j] += w * snap_f16_to_f32(vp[j]);
        }
    }
}

static void to_f16_c(const float *x, uint16_t *out, uint64_t n, uint64_t stride)
{
    for (uint64_t i = 0; i < n; i++)
        out[i * stride] = snap_f32_to_f16(x[i]);
}

void cpu_swiglu_c(float *g, const float *u, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_rope_table(float pos, const float *inv_freq, uint32_t d, int halves, float *cs)
{
    for (uint32_t i = 0; i < d / 2; i++) {
        uint32_t a = halves ? i : 2 * i, b = halves ? i + d / 2 : 2 * i + 1; /* the pair's positions */
        float angle = pos * inv_freq[i], sn = sinf(angle);
        cs[a] = cs[b] = cosf(angle);
        cs[d + a] = -sn;
        cs[d + b] = sn;
    }
}

void cpu_rope_c(float *v, uint32_t n, uint32_t d, const float *cs, int halves)
{
    for (uint32_t h = 0; h < n; h++, v += d)
        for (uint32_t j = 0; j < d; j++) {
            uint32_t p = halves ? (j + d / 2) % d : j ^ 1;
            if (p > j) { /* each pair once, both results from the old values */
                float x0 = v[j], x1 = v[p];
                v[j] = x0 * cs[j] + x1 * cs[d + j];
                v[p] = x1 * cs[p] + x0 * cs[d + p];
            }
        }
}

float cpu_rms_scale(const double part[8], uint64_t n, float eps)
{
    double ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    return (float)(1.0 / sqrt(ss / (double)n + eps));
}

void cpu_rmsnorm_c(float *out, const float *x, const float *w, uint64_t n, float eps)
{
    /* eight partial sums, so the additions do not wait on each other (one chain of n
     * dependent adds was most of the norm's time) */
    double part[8] = {0};
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            part[j] += (double)x[i + j] * x[i + j];
    for (; i < n; i++)
        part[0] += (double)x[i] * x[i];
    float scale = cpu_rms_scale(part, n, eps);
    for (i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

static const cpu_kernels portable = {
    "portable", quant_act_c, matmul_r16_c, dot_f16_c, dot_f32_c, axpy_c, dot4xT_c, cpu_attend_c, to_f16_c, cpu_swiglu_c,
    cpu_rope_c, cpu_rmsnorm_c,
};

const cpu_kernels *cpu_kernels_portable(void) { return &portable; }

/* The best set this CPU runs. THAW_CPU_KERNELS=portable|avx2|avx512 caps the choice
 * (benchmarks, or ruling out a kernel when chasing a difference; the quantized matmuls agree
 * bitwise whichever runs); unset, or amx, lets batches use AMX tiles too. */
int cpu_kernels_use_amx(void)
{
    const char *want = getenv("THAW_CPU_KERNELS");
    return (!want || !strcmp(want, "amx")) && cpu_kernels_avx512() && cpu_amx_available();
}

const cpu_kernels *cpu_kernels_get(void)
{
    const char *want = getenv("THAW_CPU_KERNELS");
    if (want && !strcmp(want, "amx"))
        want = NULL;
    const cpu_kernels *k = NULL;
    if (!want || !strcmp(want, "avx512"))
        k = cpu_kernels_avx512();
    if (!k && (!want || strcmp(want, "portable")))
        k = cpu_kernels_avx2();
    return k ? k : &portable;
}
