/* quant.c -- element types of source tensors, their dequantization, and thaw's own
 * Q4/Q8 quantizers.
 *
 * Source formats are decoded exactly as ggml defines them (ggml-common.h block structs,
 * the dequantize_row_* reference loops), including the order of float operations, so a
 * dequantized row is bit-identical to ggml's and to gguf-py's numpy implementation (the
 * test compares against the latter).
 *
 * thaw's Q4 is byte-for-byte ggml's Q4_1 and thaw's Q8 is ggml's Q8_0, so a GGUF that is
 * already Q4_1/Q8_0 packs without requantization, and quantizing f32 here yields the same
 * bytes llama.cpp's reference quantizer (quantize_row_q4_1_ref / q8_0_ref) would.
 *
 * All multi-byte fields are little-endian and may sit at any alignment inside a mapping,
 * so they are read byte by byte. Floating point expressions are split into statements
 * where ggml's result depends on the rounding of an intermediate, so no compiler
 * contracts them into an FMA. */
#include "internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QK_K 256 /* elements per K-quant super-block */

/* ---- element types ------------------------------------------------------------------ */

static const struct {
    const char *name;
    uint32_t block_elems;
    uint32_t block_bytes;
} src_types[SRC_TYPE_COUNT] = {
    [SRC_F32] = {"F32", 1, 4},
    [SRC_F16] = {"F16", 1, 2},
    [SRC_BF16] = {"BF16", 1, 2},
    [SRC_Q8_0] = {"Q8_0", 32, 34},    /* f16 d; int8 qs[32] */
    [SRC_Q4_0] = {"Q4_0", 32, 18},    /* f16 d; uint8 qs[16] */
    [SRC_Q4_1] = {"Q4_1", 32, 20},    /* f16 d, m; uint8 qs[16] */
    [SRC_Q4_K] = {"Q4_K", QK_K, 144}, /* f16 d, dmin; uint8 scales[12]; uint8 qs[128] */
    [SRC_Q6_K] = {"Q6_K", QK_K, 210}, /* uint8 ql[128], qh[64]; int8 scales[16]; f16 d */
};

uint32_t snap_src_block_elems(uint32_t type)
{
    return type < SRC_TYPE_COUNT ? src_types[type].block_elems : 0;
}

uint32_t snap_src_block_bytes(uint32_t type)
{
    return type < SRC_TYPE_COUNT ? src_types[type].block_bytes : 0;
}

const char *snap_src_type_name(uint32_t type)
{
    return type < SRC_TYPE_COUNT ? src_types[type].name : "unknown";
}

uint64_t snap_src_bytes(uint32_t type, uint64_t n_elems)
{
    if (type >= SRC_TYPE_COUNT)
        return 0;
    uint64_t be = src_types[type].block_elems, bb = src_types[type].block_bytes;
    if (n_elems % be != 0)
        return 0;
    uint64_t n_blocks = n_elems / be;
    if (n_blocks > UINT64_MAX / bb)
        return 0;
    return n_blocks * bb;
}

/* ---- f16 / bf16 --------------------------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float snap_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf, or NaN with its payload kept */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t snap_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;

    if (ax >= 0x7f800000u) {
        if (ax == 0x7f800000u)
            return sign | 0x7c00;
        /* NaN: keep the top payload bits and force quiet, so it never becomes inf */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    }
    /* 65520 is halfway between 65504 (largest f16) and 65536; ties go to the even
     * neighbour, which is the overflow to inf. */
    if (ax >= 0x477ff000u)
        return sign | 0x7c00;
    if (ax >= 0x38800000u) {
        /* normal f16: rebias the exponent (127 -> 15) and round off 13 mantissa bits;
         * a carry out of the mantissa correctly bumps the exponent. */
        uint32_t h = (ax - (112u << 23)) >> 13;
        uint32_t rem = ax & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    /* below 2^-14: an f16 subnormal (units of 2^-24) or zero */
    uint32_t exp = ax >> 23;
    if (exp < 102) /* below 2^-25: rounds to zero (2^-25 itself is a tie, handled below) */
        return sign;
    uint32_t mant = (ax & 0x7fffff) | 0x800000; /* value = mant * 2^(exp - 150) */
    uint32_t shift = 126 - exp;                  /* 14 .. 24 */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
        h++; /* may carry into the smallest normal, whose encoding is exactly 0x400 */
    return (uint16_t)(sign | h);
}

float snap_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t snap_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate and force quiet (as ggml does) */
        return (uint16_t)((x >> 16) | 64);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* ---- little-endian loads ------------------------------------------------------------- */

static uint16_t ld16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static float ld_f16(const uint8_t *p)
{
    return snap_f16_to_f32(ld16(p));
}

static void st16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---- dequantization of source types --------------------------------------------------- */

static void dq_f32(const uint8_t *s, float *y, uint64_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(y, s, n * 4); /* the file's byte order is ours */
#else
    for (uint64_t i = 0; i < n; i++, s += 4)
        y[i] = bits_f32((uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 |
                        (uint32_t)s[3] << 24);
#endif
}

static void dq_f16(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++, s += 2)
        y[i] = ld_f16(s);
}

static void dq_bf16(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++, s += 2)
        y[i] = snap_bf16_to_f32(ld16(s));
}

static void dq_q8_0(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t b = 0; b < n / 32; b++, s += 34, y += 32) {
        float d = ld_f16(s);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)s[2 + j] * d;
    }
}

static void dq_q4_0(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t b = 0; b < n / 32; b++, s += 18, y += 32) {
        float d = ld_f16(s);
        const uint8_t *qs = s + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

/* Q4_1 and thaw's Q4 share this: w = d * q + m, rounded after the product */
static void dq_q4_1(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t b = 0; b < n / 32; b++, s += 20, y += 32) {
        float d = ld_f16(s), m = ld_f16(s + 2);
        const uint8_t *qs = s + 4;
        for (int j = 0; j < 16; j++) {
            float p0 = (float)(qs[j] & 0x0f) * d;
            float p1 = (float)(qs[j] >> 4) * d;
            y[j] = p0 + m;
            y[j + 16] = p1 + m;
        }
    }
}

/* Q4_K keeps 8 sub-block scales and mins of 6 bits each in 12 bytes: sub-blocks 0-3 in
 * the low 6 bits of bytes 0-3 (scale) and 4-7 (min); sub-blocks 4-7 put their low 4 bits
 * in the nibbles of bytes 8-11 and their top 2 bits in the spare high bits of 0-7. */
static void q4_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dq_q4_k(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t b = 0; b < n / QK_K; b++, s += 144) {
        float d = ld_f16(s), dmin = ld_f16(s + 2);
        const uint8_t *scales = s + 4, *q = s + 16;
        /* 4 groups of 64 elements; each group is 32 bytes of quants, low nibbles for the
         * first 32 elements, high nibbles for the next, each half with its own scale/min */
        for (int g = 0; g < 4; g++, q += 32) {
            uint8_t sc, mn;
            q4_k_scale_min(2 * g, scales, &sc, &mn);
            float d1 = d * (float)sc, m1 = dmin * (float)mn;
            q4_k_scale_min(2 * g + 1, scales, &sc, &mn);
            float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++) {
                float p = d1 * (float)(q[l] & 0x0f);
                *y++ = p - m1;
            }
            for (int l = 0; l < 32; l++) {
                float p = d2 * (float)(q[l] >> 4);
                *y++ = p - m2;
            }
        }
    }
}

static void dq_q6_k(const uint8_t *s, float *y, uint64_t n)
{
    for (uint64_t b = 0; b < n / QK_K; b++, s += 210) {
        const uint8_t *ql = s, *qh = s + 128;
        const int8_t *sc = (const int8_t *)(s + 192);
        float d = ld_f16(s + 208);
        /* two halves of 128 elements; each element is 4 low bits from ql and 2 high bits
         * from qh, offset by -32, scaled per 16 elements */
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                float s1 = d * (float)sc[is], s2 = d * (float)sc[is + 2];
                float s3 = d * (float)sc[is + 4], s4 = d * (float)sc[is + 6];
                y[l] = s1 * (float)q1;
                y[l + 32] = s2 * (float)q2;
                y[l + 64] = s3 * (float)q3;
                y[l + 96] = s4 * (float)q4;
            }
        }
    }
}

void snap_dequant_row(uint32_t type, const void *src, float *dst, uint64_t n)
{
    const uint8_t *s = src;
    SNAP_ASSERT(type < SRC_TYPE_COUNT);
    SNAP_ASSERT(n % src_types[type].block_elems == 0);
    switch (type) {
    case SRC_F32: dq_f32(s, dst, n); break;
    case SRC_F16: dq_f16(s, dst, n); break;
    case SRC_BF16: dq_bf16(s, dst, n); break;
    case SRC_Q8_0: dq_q8_0(s, dst, n); break;
    case SRC_Q4_0: dq_q4_0(s, dst, n); break;
    case SRC_Q4_1: dq_q4_1(s, dst, n); break;
    case SRC_Q4_K: dq_q4_k(s, dst, n); break;
    case SRC_Q6_K: dq_q6_k(s, dst, n); break;
    }
}

/* ---- thaw's Q4 / Q8 -------------------------------------------------------------------- */

/* Saturating float -> int for quant codes: NaN (from inf or NaN weights) becomes 0 rather
 * than undefined behaviour, so garbage in never means a crash. */
static int clamp_code(float v, int lo, int hi)
{
    if (v != v)
        return 0;
    if (v <= (float)lo)
        return lo;
    if (v >= (float)hi)
        return hi;
    return (int)v; /* truncates toward zero, as ggml's cast does */
}

void snap_quant_q4_row(const float *src, uint8_t *dst, uint64_t n)
{
    SNAP_ASSERT(n % SNAP_QBLOCK == 0);
    for (uint64_t b = 0; b < n / SNAP_QBLOCK; b++, src += 32, dst += SNAP_Q4_BLOCK_BYTES) {
        float mn = src[0], mx = src[0];
        for (int j = 1; j < 32; j++) {
            if (src[j] < mn)
                mn = src[j];
            if (src[j] > mx)
                mx = src[j];
        }
        /* a constant (or all-zero) block gets d = 0 and all codes 0: it decodes to m */
        float d = (mx - mn) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        st16(dst, snap_f32_to_f16(d));
        st16(dst + 2, snap_f32_to_f16(mn));
        for (int j = 0; j < 16; j++) {
            float x0 = (src[j] - mn) * id;
            float x1 = (src[j + 16] - mn) * id;
            x0 += 0.5f; /* round half up; codes are never negative */
            x1 += 0.5f;
            int q0 = clamp_code(x0, 0, 15), q1 = clamp_code(x1, 0, 15);
            dst[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void snap_quant_q8_row(const float *src, uint8_t *dst, uint64_t n)
{
    SNAP_ASSERT(n % SNAP_QBLOCK == 0);
    for (uint64_t b = 0; b < n / SNAP_QBLOCK; b++, src += 32, dst += SNAP_Q8_BLOCK_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(src[j]);
            if (a > amax)
                amax = a;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        st16(dst, snap_f32_to_f16(d));
        for (int j = 0; j < 32; j++) {
            float x = src[j] * id;
            x = roundf(x); /* half away from zero, like ggml */
            dst[2 + j] = (uint8_t)(int8_t)clamp_code(x, -127, 127);
        }
    }
}

void snap_dequant_q4_row(const uint8_t *src, float *dst, uint64_t n)
{
    SNAP_ASSERT(n % SNAP_QBLOCK == 0);
    dq_q4_1(src, dst, n);
}

void snap_dequant_q8_row(const uint8_t *src, float *dst, uint64_t n)
{
    SNAP_ASSERT(n % SNAP_QBLOCK == 0);
    dq_q8_0(src, dst, n);
}

/* Block k (row-major over the matrix's rows x nb blocks) of a BLOCKS or SPLIT Q4/Q8 matrix
 * of `total` blocks as whole-block (BLOCKS) bytes: in place for BLOCKS, reassembled from the
 * planes into blk for SPLIT. */
static const uint8_t *block_at(uint32_t dtype, uint32_t layout, const uint8_t *src, uint64_t total, uint64_t k,
                               uint8_t blk[SNAP_Q8_BLOCK_BYTES])
{
    uint32_t bb = dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES, head = dtype == SNAP_Q4 ? 4 : 2;
    uint32_t qb = bb - head;
    if (layout == SNAP_LAYOUT_BLOCKS)
        return src + k * bb;
    const uint8_t *sc = src + total * qb, *mn = sc + total * 2;
    memcpy(blk, sc + 2 * k, 2);
    if (dtype == SNAP_Q4)
        memcpy(blk + 2, mn + 2 * k, 2);
    memcpy(blk + head, src + k * qb, qb);
    return blk;
}

/* ---- R16 (FORMAT.md) -------------------------------------------------------------------- */

static uint64_t r16_unit(uint32_t dtype) { return dtype == SNAP_Q4 ? SNAP_R16_Q4_UNIT : SNAP_R16_Q8_UNIT; }
static uint64_t r16_qbytes(uint32_t dtype) { return dtype == SNAP_Q4 ? 256 : 512; }

uint64_t snap_r16_bytes(uint32_t dtype, uint64_t rows, uint64_t cols)
{
    return (rows + SNAP_R16_ROWS - 1) / SNAP_R16_ROWS * (cols / SNAP_QBLOCK) * r16_unit(dtype);
}

/* Where block b of row r keeps its quants (row 0 of the group's chunks), d and m. */
static void r16_locate(uint32_t dtype, uint64_t nb, uint64_t r, uint64_t b, uint64_t *q, uint64_t *d, uint64_t *m)
{
    uint64_t grp = r / SNAP_R16_ROWS * nb * r16_unit(dtype), i = r % SNAP_R16_ROWS;
    *q = grp + b * r16_qbytes(dtype) + 4 * i;
    *d = grp + nb * r16_qbytes(dtype) + b * 32 + 2 * i;
    *m = *d + nb * 32;
}

void snap_r16_put(uint8_t *dst, uint32_t dtype, uint64_t nb, uint64_t r, uint64_t b, uint16_t d, uint16_t m,
                  const int8_t q[32])
{
    uint64_t qo, dof, mo;
    r16_locate(dtype, nb, r, b, &qo, &dof, &mo);
    if (dtype == SNAP_Q4) {
        for (int j = 0; j < 4; j++) {
            uint32_t word = 0;
            for (int p = 0; p < 4; p++)
                word |= (uint32_t)(q[8 * j + 2 * p] & 15) << 4 * p | (uint32_t)(q[8 * j + 2 * p + 1] & 15) << (16 + 4 * p);
            snap_wr32(dst + qo + 64 * j, word);
        }
        st16(dst + mo, m);
    } else {
        for (int j = 0; j < 8; j++) {
            uint8_t *w = dst + qo + 64 * j;
            w[0] = (uint8_t)q[4 * j], w[1] = (uint8_t)q[4 * j + 2], w[2] = (uint8_t)q[4 * j + 1], w[3] = (uint8_t)q[4 * j + 3];
        }
    }
    st16(dst + dof, d);
}

void snap_r16_get(const uint8_t *src, uint32_t dtype, uint64_t nb, uint64_t r, uint64_t b, uint16_t *d, uint16_t *m,
                  int8_t q[32])
{
    uint64_t qo, dof, mo;
    r16_locate(dtype, nb, r, b, &qo, &dof, &mo);
    if (dtype == SNAP_Q4) {
        for (int j = 0; j < 4; j++) {
            uint32_t word = snap_rd32(src + qo + 64 * j);
            for (int p = 0; p < 4; p++) {
                q[8 * j + 2 * p] = (int8_t)(word >> 4 * p & 15);
                q[8 * j + 2 * p + 1] = (int8_t)(word >> (16 + 4 * p) & 15);
            }
        }
        *m = ld16(src + mo);
    } else {
        for (int j = 0; j < 8; j++) {
            const uint8_t *w = src + qo + 64 * j;
            q[4 * j] = (int8_t)w[0], q[4 * j + 2] = (int8_t)w[1], q[4 * j + 1] = (int8_t)w[2], q[4 * j + 3] = (int8_t)w[3];
        }
        *m = 0;
    }
    *d = ld16(src + dof);
}

void snap_to_r16(uint32_t dtype, uint32_t layout, uint64_t rows, uint64_t cols, const uint8_t *src, uint8_t *dst)
{
    uint64_t nb = cols / SNAP_QBLOCK;
    memset(dst, 0, snap_r16_bytes(dtype, rows, cols));
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t b = 0; b < nb; b++) {
            uint8_t tmp[SNAP_Q8_BLOCK_BYTES];
            const uint8_t *blk = block_at(dtype, layout, src, rows * nb, r * nb + b, tmp);
            int8_t q[32];
            for (int j = 0; j < 32; j++)
                q[j] = dtype == SNAP_Q4 ? (int8_t)(j < 16 ? blk[4 + j] & 15 : blk[4 + j - 16] >> 4) : (int8_t)blk[2 + j];
            snap_r16_put(dst, dtype, nb, r, b, ld16(blk), dtype == SNAP_Q4 ? ld16(blk + 2) : 0, q);
        }
}

void snap_r16_to_split(const snap_tensor *t, const uint8_t *src, uint8_t *dst)
{
    uint64_t rows = t->shape[0], nb = t->shape[1] / SNAP_QBLOCK, total = rows * nb;
    uint32_t qb = t->dtype == SNAP_Q4 ? 16 : 32;
    uint8_t *q = dst, *sc = dst + total * qb, *mn = sc + total * 2;
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t b = 0; b < nb; b++) {
            uint16_t d, m;
            int8_t v[32];
            uint64_t k = r * nb + b;
            snap_r16_get(src, t->dtype, nb, r, b, &d, &m, v);
            st16(sc + 2 * k, d);
            if (t->dtype == SNAP_Q4) {
                st16(mn + 2 * k, m);
                for (int j = 0; j < 16; j++)
                    q[k * 16 + j] = (uint8_t)(v[j] | v[j + 16] << 4);
            } else {
                memcpy(q + k * 32, v, 32);
            }
        }
}

void snap_tensor_row_f32(const snap_tensor *t, const uint8_t *image, uint64_t row, float *out)
{
    uint64_t cols = t->shape[t->n_dims - 1], rows = t->size / snap_tensor_bytes(t->dtype, 1, &cols);
    const uint8_t *base = image + t->offset;
    uint64_t nb = cols / SNAP_QBLOCK;
    switch (t->dtype) {
    case SNAP_F32: memcpy(out, base + row * cols * 4, cols * 4); return;
    case SNAP_F16:
    case SNAP_BF16:
        for (uint64_t i = 0; i < cols; i++) {
            uint16_t h;
            memcpy(&h, base + (row * cols + i) * 2, 2);
            out[i] = t->dtype == SNAP_F16 ? snap_f16_to_f32(h) : snap_bf16_to_f32(h);
        }
        return;
    case SNAP_Q4:
    case SNAP_Q8: {
        uint32_t bb = t->dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES;
        if (t->layout == SNAP_LAYOUT_R16) {
            for (uint64_t b = 0; b < nb; b++) {
                uint16_t d, m;
                int8_t q[32];
                snap_r16_get(base, t->dtype, nb, row, b, &d, &m, q);
                float df = snap_f16_to_f32(d), mf = snap_f16_to_f32(m);
                for (int k = 0; k < 32; k++)
                    out[b * 32 + k] = t->dtype == SNAP_Q4 ? df * (float)q[k] + mf : df * (float)q[k];
            }
            return;
        }
        if (t->layout == SNAP_LAYOUT_BLOCKS) {
            if (t->dtype == SNAP_Q4)
                snap_dequant_q4_row(base + row * nb * bb, out, cols);
            else
                snap_dequant_q8_row(base + row * nb * bb, out, cols);
            return;
        }
        /* SPLIT: reassemble each block from the planes, then decode it */
        for (uint64_t b = 0; b < nb; b++) {
            uint8_t tmp[SNAP_Q8_BLOCK_BYTES];
            const uint8_t *blk = block_at(t->dtype, t->layout, base, rows * nb, row * nb + b, tmp);
            if (t->dtype == SNAP_Q4)
                snap_dequant_q4_row(blk, out + b * SNAP_QBLOCK, SNAP_QBLOCK);
            else
                snap_dequant_q8_row(blk, out + b * SNAP_QBLOCK, SNAP_QBLOCK);
        }
        return;
    }
    }
}
