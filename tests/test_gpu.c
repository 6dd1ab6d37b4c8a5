/* test_gpu.c -- the CUDA backend against the CPU reference (built only with CUDA=1; run by
 * `make test-gpu`). Without a GPU it prints why and exits 0.
 *
 * Bounds (normalised error = ||gpu - ref|| / ||ref||, over a whole output):
 *   kernels (GEMV, dequant, RMSNorm, SwiGLU, embedding):   1e-5 in f32 (only sum order differs);
 *     the SPLIT q4/q8 GEMVs against a reference on the same two-level int8 activations, and
 *     1e-4 against f32 activations (what the int8 levels cost; measured 1.5e-5); f16 dequant: 1e-3
 *   whole forward vs the CPU backend, same snapshot: prefill (GEMM path) 3e-2 (KV cache in f16,
 *     GEMMs on f16 activations; the CPU keeps both in f32); decode (GEMV path, activations in
 *     two int8 levels per block of 32) 2e-2 on SmolLM2's real weights and 1e-2 on synthetic
 *     ones. Measured on an H100 (2026-11-22): worst of 32 steps 0.0038 for SmolLM2, 0.0015 to
 *     0.0032 for the synthetic shapes; with one int8 level (before) 0.146, 0.024 and 0.071
 *   greedy agreement, SmolLM2 teacher-forced 32 steps:      >= 90 % of argmaxes equal (measured 32/32)
 *   batched (GEMM path) vs one-at-a-time (GEMV path): the decode bound; two sequences in one
 *     decode batch vs each alone: bitwise equal (the same kernels, per token independent)
 * Paged attention also against a host softmax (head sizes 64, 128, 256); RoPE through the
 * whole forward. THAW_GPU_QUICK=1 (compute-sanitizer) runs the kernels and SmolLM2 only.
 */
#include "internal.h"
#include "cuda/kernels.h"
#include "test.h"

#include <unistd.h>

/* a launcher call that must succeed; on failure its message is printed */
#define CHECK_RUN(call)                                                                                \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_)                                                                                       \
            fprintf(stderr, "  %s:%d: %s: %s\n", __FILE__, __LINE__, #call, err.msg);                   \
        CHECK(rc_ == 0);                                                                               \
    } while (0)

/* a normalised error within bound; over it, what was compared (printf arguments) and the error
 * are printed */
#define CHECK_NERR(e, bound, ...)                                                                      \
    do {                                                                                               \
        double e_ = (e);                                                                               \
        if (!(e_ <= (bound))) {                                                                        \
            fprintf(stderr, "  ");                                                                     \
            fprintf(stderr, __VA_ARGS__);                                                              \
            fprintf(stderr, ": normalised error %.3g\n", e_);                                          \
        }                                                                                              \
        CHECK(e_ <= (bound));                                                                          \
    } while (0)

static char tmp_dir[64];

/* a weight row . x in double */
static double ref_dot(const float *w, const float *x, uint64_t n)
{
    double s = 0;
    for (uint64_t i = 0; i < n; i++)
        s += (double)w[i] * x[i];
    return s;
}
static int quick;

static double nerr(const float *a, const float *ref, uint64_t n)
{
    double d = 0, r = 0;
    for (uint64_t i = 0; i < n; i++) {
        double e = (double)a[i] - ref[i];
        d += e * e;
        r += (double)ref[i] * ref[i];
        if (!isfinite(a[i]))
            return INFINITY;
    }
    return sqrt(d / (r > 0 ? r : 1));
}

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)(*s >> 40) / (float)(1u << 24) - 0.5f) * 2.0f;
}

/* ---- kernels --------------------------------------------------------------------------------- */

/* The decode GEMV for SPLIT q4/q8 quantizes activations to two int8 levels per block of 32,
 * as kernels.cu's g2_quantize does (in f32: dx = max|x| / 127, ex = dx / 254, q =
 * round-half-even(x * 127 / max|x|), l = round-half-even(fma(-q, dx, x) * 254 * 127 / max|x|),
 * zero below max|x| = 1e-36); out gets the values the kernel then multiplies with (q dx + l ex). */
static void quantize_like_gemv(const float *x, uint64_t n, float *out)
{
    for (uint64_t b = 0; b < n; b += 32) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[b + i]));
        float d = amax / 127.0f, e = d / 254.0f, id = 127.0f / amax, ie = 254.0f * id;
        for (int i = 0; i < 32; i++) {
            float q = rintf(x[b + i] * id), l = fminf(127.0f, fmaxf(-127.0f, rintf(fmaf(-q, d, x[b + i]) * ie)));
            out[b + i] = amax > 1e-36f ? q * d + l * e : 0.0f;
        }
    }
}

/* A random [rows][cols] matrix stored as dtype/layout: host bytes (as the packer writes them)
 * and the exact f32 values those bytes stand for. */
static uint8_t *make_mat_salted(uint32_t dtype, uint32_t layout, uint64_t rows, uint64_t cols, float *vals,
                                uint64_t *bytes, uint64_t salt)
{
    uint64_t seed = dtype * 131 + layout * 7 + rows + salt * 1000003;
    uint64_t shape[2] = {rows, cols};
    uint64_t n = snap_tensor_bytes(dtype, 2, shape);
    uint8_t *blocks = malloc(n), *out = malloc(n);
    float *row = malloc(cols * sizeof *row);
    uint64_t rb = n / rows;
    for (uint64_t r = 0; r < rows; r++) {
        for (uint64_t i = 0; i < cols; i++)
            row[i] = frand(&seed);
        uint8_t *o = blocks + r * rb;
        if (dtype == SNAP_Q4)
            snap_quant_q4_row(row, o, cols);
        else if (dtype == SNAP_Q8)
            snap_quant_q8_row(row, o, cols);
        else if (dtype == SNAP_F16)
            for (uint64_t i = 0; i < cols; i++) {
                uint16_t h = snap_f32_to_f16(row[i]);
                memcpy(o + 2 * i, &h, 2);
            }
        else
            memcpy(o, row, cols * 4);
    }
    if (layout == SNAP_LAYOUT_SPLIT) { /* the packer's to_split() */
        uint32_t bb = dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES, head = dtype == SNAP_Q4 ? 4 : 2;
        uint64_t nb = n / bb;
        uint8_t *q = out, *sc = out + nb * (bb - head), *mn = sc + nb * 2;
        for (uint64_t i = 0; i < nb; i++) {
            memcpy(sc + 2 * i, blocks + i * bb, 2);
            if (dtype == SNAP_Q4)
                memcpy(mn + 2 * i, blocks + i * bb + 2, 2);
            memcpy(q + i * (bb - head), blocks + i * bb + head, bb - head);
        }
    } else {
        memcpy(out, blocks, n);
    }
    snap_tensor t = {.dtype = dtype, .layout = layout, .n_dims = 2, .shape = {rows, cols}, .size = n};
    for (uint64_t r = 0; r < rows; r++)
        snap_tensor_row_f32(&t, out, r, vals + r * cols);
    free(blocks);
    free(row);
    *bytes = n;
    return out;
}

static uint8_t *make_mat(uint32_t dtype, uint32_t layout, uint64_t rows, uint64_t cols, float *vals, uint64_t *bytes)
{
    return make_mat_salted(dtype, layout, rows, cols, vals, bytes, 0);
}

static void test_kernels_matmul(void)
{
    static const uint32_t types[][2] = {{SNAP_Q4, SNAP_LAYOUT_SPLIT}, {SNAP_Q4, SNAP_LAYOUT_BLOCKS},
                                        {SNAP_Q8, SNAP_LAYOUT_SPLIT}, {SNAP_Q8, SNAP_LAYOUT_BLOCKS},
                                        {SNAP_F16, SNAP_LAYOUT_BLOCKS}, {SNAP_F32, SNAP_LAYOUT_BLOCKS}};
    const uint64_t rows = 333, cols = 1024;
    const uint64_t ny = 4 * rows > 2 * cols ? 4 * rows : 2 * cols; /* gemv outputs, or two embedding rows */
    float *w = malloc(rows * cols * 4), *x = malloc(4 * cols * 4), *ref = malloc(4 * rows * 4), *got = malloc(ny * 4);
    float *xq = malloc(4 * cols * 4), *ref_exact = malloc(4 * rows * 4);
    float *bias = malloc(rows * 4), *deq = malloc(rows * cols * 4);
    uint16_t *h = malloc(rows * cols * 2);
    uint64_t seed = 5;
    for (uint64_t i = 0; i < 4 * cols; i++)
        x[i] = frand(&seed);
    quantize_like_gemv(x, 4 * cols, xq);
    for (uint64_t i = 0; i < rows; i++)
        bias[i] = frand(&seed);
    float *dx = ecu_malloc(4 * cols * 4), *dy = ecu_malloc(ny * 4), *db = ecu_malloc(rows * 4);
    void *dh = ecu_malloc(rows * cols * 2);
    REQUIRE(dx && dy && db && dh);
    ecu_h2d(dx, x, 4 * cols * 4);
    ecu_h2d(db, bias, rows * 4);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint64_t n;
        uint8_t *bytes = make_mat(types[k][0], types[k][1], rows, cols, w, &n);
        uint8_t *dm = ecu_malloc(n);
        REQUIRE(dm);
        ecu_h2d(dm, bytes, n);
        ecu_mat m = {types[k][0], types[k][1], rows, cols, dm};
        eng_err err = {{0}};
        for (uint32_t T = 1; T <= ECU_GEMV_MAX_TOKENS; T++) {
            int q8x = ecu_gemv_fusable(&m, T); /* the int8-activation path */
            /* ref: on the activations the kernel uses; ref_exact (q8x only): on x itself */
            for (int pass = 0; pass < 1 + q8x; pass++) {
                const float *xr = pass == 0 && q8x ? xq : x;
                float *out = pass == 0 ? ref : ref_exact;
                for (uint32_t t = 0; t < T; t++)
                    for (uint64_t r = 0; r < rows; r++)
                        out[t * rows + r] = (float)(ref_dot(w + r * cols, xr + t * cols, cols) + bias[r]);
            }
            CHECK_RUN(ecu_gemv(&m, dx, cols, T, dy, rows, db, NULL, &err));
            CHECK_INT(ecu_sync(), 0);
            ecu_d2h(got, dy, T * rows * 4);
            CHECK_NERR(nerr(got, ref, T * rows), 1e-5, "gemv %s/%u T=%u", snap_dtype_name(types[k][0]), types[k][1],
                       T);
            if (q8x) { /* what the int8 activations cost against f32 ones */
                double ex = nerr(got, ref_exact, T * rows);
                if (T == 1)
                    fprintf(stderr, "  gemv %s/%u: int8 activations, normalised error vs f32 x %.3g\n",
                            snap_dtype_name(types[k][0]), types[k][1], ex);
                CHECK(ex <= 1e-4);
            }
        }
        CHECK_RUN(ecu_dequant_f16(&m, 0, rows, dh, NULL, &err));
        ecu_sync();
        ecu_d2h(h, dh, rows * cols * 2);
        for (uint64_t i = 0; i < rows * cols; i++)
            deq[i] = snap_f16_to_f32(h[i]);
        CHECK_NERR(nerr(deq, w, rows * cols), 1e-3, "dequant %s/%u", snap_dtype_name(types[k][0]), types[k][1]);
        /* embedding rows 7 and 300 */
        int32_t toks[2] = {7, 300};
        int32_t *dt = ecu_malloc(sizeof toks);
        ecu_h2d(dt, toks, sizeof toks);
        CHECK_RUN(ecu_embed(&m, dt, 2, dy, NULL, &err));
        ecu_sync();
        ecu_d2h(got, dy, 2 * cols * 4);
        CHECK(nerr(got, w + 7 * cols, cols) <= 1e-6);
        CHECK(nerr(got + cols, w + 300 * cols, cols) <= 1e-6);
        ecu_free(dt);
        ecu_free(dm);
        free(bytes);
    }
    ecu_free(dx);
    ecu_free(dy);
    ecu_free(db);
    ecu_free(dh);
    free(w), free(x), free(ref), free(got), free(bias), free(deq), free(h), free(xq), free(ref_exact);
}

/* The fused GEMVs (SPLIT q4/q8): three matrices stacked in one launch with biases, with the
 * RMSNorm folded into the input and with the residual add into the output, and the gate/up
 * pair with SwiGLU, against f64 on the same dequantized weights and int8-quantized
 * activations; rows of odd counts, 8288 columns. */
static void test_kernels_gemv_fused(void)
{
    const uint64_t cols = 8288, rows[3] = {333, 64, 95};
    const uint32_t dtypes[2] = {SNAP_Q4, SNAP_Q8};
    const float eps = 1e-5f;
    uint64_t seed = 17;
    float *x = malloc(4 * cols * 4), *xn = malloc(4 * cols * 4), *xq = malloc(4 * cols * 4), *xnq = malloc(4 * cols * 4);
    float *nw = malloc(cols * 4), *bias = malloc(333 * 4), *prev = malloc(4 * 333 * 4);
    float *ref = malloc(4 * 333 * 4), *got = malloc(4 * 333 * 4);
    for (uint64_t i = 0; i < 4 * cols; i++)
        x[i] = frand(&seed) * 2;
    for (uint64_t i = 0; i < cols; i++)
        nw[i] = frand(&seed) + 1.5f;
    for (uint64_t i = 0; i < 333; i++)
        bias[i] = frand(&seed);
    for (uint64_t i = 0; i < 4 * 333; i++)
        prev[i] = frand(&seed);
    /* what the kernels multiply with: x quantized; with the norm, x * w quantized, then / rms(x) */
    quantize_like_gemv(x, 4 * cols, xq);
    for (uint32_t t = 0; t < 4; t++) {
        double ss = 0;
        for (uint64_t i = 0; i < cols; i++)
            ss += (double)x[t * cols + i] * x[t * cols + i], xn[t * cols + i] = x[t * cols + i] * nw[i];
        quantize_like_gemv(xn + t * cols, cols, xnq + t * cols);
        double r = 1.0 / sqrt(ss / cols + eps);
        for (uint64_t i = 0; i < cols; i++)
            xnq[t * cols + i] = (float)(xnq[t * cols + i] * r);
    }
    float *dx = ecu_malloc(4 * cols * 4), *db = ecu_malloc(333 * 4), *dnw = ecu_malloc(cols * 4), *dy[3];
    REQUIRE(dx && db && dnw);
    ecu_h2d(dx, x, 4 * cols * 4);
    ecu_h2d(db, bias, 333 * 4);
    ecu_h2d(dnw, nw, cols * 4);
    const ecu_norm norm = {dnw, eps};
    for (int k = 0; k < 3; k++)
        REQUIRE((dy[k] = ecu_malloc(4 * rows[k] * 4)) != NULL);
    for (int d = 0; d < 2; d++) {
        float *w[3];
        uint8_t *bytes[3], *dm[3];
        ecu_mat m[3];
        for (int k = 0; k < 3; k++) {
            uint64_t n;
            w[k] = malloc(rows[k] * cols * 4);
            bytes[k] = make_mat(dtypes[d], SNAP_LAYOUT_SPLIT, rows[k], cols, w[k], &n);
            REQUIRE((dm[k] = ecu_malloc(n)) != NULL);
            ecu_h2d(dm[k], bytes[k], n);
            m[k] = (ecu_mat){dtypes[d], SNAP_LAYOUT_SPLIT, rows[k], cols, dm[k]};
        }
        /* an up matrix of the gate's shape but other values, so a gate/up mix-up shows */
        float *wu = malloc(rows[0] * cols * 4);
        uint64_t nu;
        uint8_t *ubytes = make_mat_salted(dtypes[d], SNAP_LAYOUT_SPLIT, rows[0], cols, wu, &nu, 1), *dmu = ecu_malloc(nu);
        REQUIRE(dmu != NULL);
        ecu_h2d(dmu, ubytes, nu);
        const ecu_mat mu = {dtypes[d], SNAP_LAYOUT_SPLIT, rows[0], cols, dmu};
        eng_err err = {{0}};
        for (uint32_t T = 1; T <= ECU_GEMV_MAX_TOKENS; T++) {
            /* variant 0: three matrices, biases; 1: the same with the norm folded in; 2: with
             * the norm and accumulating into y (the residual add) */
            /* where x of T tokens does not fit the GPU's shared memory (T4 from 4 tokens), the
             * matrices run one by one on f32 x and the fused variants are refused */
            const int fz = ecu_gemv_fusable(&m[0], T);
            for (int var = 0; var < 3; var++) {
                const float *biases[3] = {db, NULL, db}, *xr = var ? xnq : fz ? xq : x;
                if (!fz && var) {
                    CHECK_INT(ecu_gemv_multi(3, m, dx, T, dy, biases, &norm, var == 2, NULL, &err), ENG_EUNSUPPORTED);
                    continue;
                }
                for (int k = 0; k < 3; k++)
                    ecu_h2d(dy[k], prev, T * rows[k] * 4);
                CHECK_RUN(ecu_gemv_multi(3, m, dx, T, dy, biases, var ? &norm : NULL, var == 2, NULL, &err));
                CHECK_INT(ecu_sync(), 0);
                for (int k = 0; k < 3; k++) {
                    for (uint32_t t = 0; t < T; t++)
                        for (uint64_t r = 0; r < rows[k]; r++)
                            ref[t * rows[k] + r] = (float)(ref_dot(w[k] + r * cols, xr + t * cols, cols) +
                                                           (k != 1 ? bias[r] : 0) + (var == 2 ? prev[t * rows[k] + r] : 0));
                    ecu_d2h(got, dy[k], T * rows[k] * 4);
                    CHECK_NERR(nerr(got, ref, T * rows[k]), 1e-5, "gemv_multi %s variant %d matrix %d T=%u",
                               snap_dtype_name(dtypes[d]), var, k, T);
                }
            }
            /* gate = matrix 0, up = mu; without and with the norm */
            for (int var = 0; var < 2; var++) {
                const float *xr = var ? xnq : xq;
                if (!fz) {
                    CHECK_INT(ecu_gemv_swiglu(&m[0], &mu, dx, T, dy[0], var ? &norm : NULL, NULL, &err),
                              ENG_EUNSUPPORTED);
                    continue;
                }
                CHECK_RUN(ecu_gemv_swiglu(&m[0], &mu, dx, T, dy[0], var ? &norm : NULL, NULL, &err));
                CHECK_INT(ecu_sync(), 0);
                for (uint32_t t = 0; t < T; t++)
                    for (uint64_t r = 0; r < rows[0]; r++) {
                        double g = ref_dot(w[0] + r * cols, xr + t * cols, cols);
                        double u = ref_dot(wu + r * cols, xr + t * cols, cols);
                        ref[t * rows[0] + r] = (float)(g / (1.0 + exp(-g)) * u);
                    }
                ecu_d2h(got, dy[0], T * rows[0] * 4);
                CHECK_NERR(nerr(got, ref, T * rows[0]), 1e-5, "gemv_swiglu %s variant %d T=%u",
                           snap_dtype_name(dtypes[d]), var, T);
            }
        }
        for (int k = 0; k < 3; k++)
            ecu_free(dm[k]), free(bytes[k]), free(w[k]);
        ecu_free(dmu), free(ubytes), free(wu);
    }
    for (int k = 0; k < 3; k++)
        ecu_free(dy[k]);
    ecu_free(dx), ecu_free(db), ecu_free(dnw);
    free(x), free(xn), free(xq), free(xnq), free(nw), free(bias), free(prev), free(ref), free(got);
}

/* The decode GEMV at sizes the small cases miss: 5000 rows (more row groups than the
 * persistent grid takes in one round), 16384 columns (x past 48 KB of shared memory from 2
 * tokens on, one CTA a multiprocessor from 4 on an H100, and past what A10/Ada or T4 take
 * from 3 or 2: there the f32-x GEMV runs); and the f16 dequantization of a row range that
 * does not start at 0. */
static void test_kernels_gemv_large(void)
{
    if (quick)
        TEST_SKIP("THAW_GPU_QUICK set");
    const uint64_t rows = 5000, cols = 16384, r0 = 1000, nr = 700;
    uint64_t seed = 23, n;
    float *w = malloc(rows * cols * 4), *x = malloc(4 * cols * 4), *xq = malloc(4 * cols * 4);
    float *ref = malloc(4 * rows * 4), *got = malloc(4 * rows * 4), *deq = malloc(nr * cols * 4);
    uint16_t *h = malloc(nr * cols * 2);
    REQUIRE(w && x && xq && ref && got && deq && h);
    for (uint64_t i = 0; i < 4 * cols; i++)
        x[i] = frand(&seed);
    quantize_like_gemv(x, 4 * cols, xq);
    uint8_t *bytes = make_mat(SNAP_Q4, SNAP_LAYOUT_SPLIT, rows, cols, w, &n);
    uint8_t *dm = ecu_malloc(n);
    float *dx = ecu_malloc(4 * cols * 4), *dy = ecu_malloc(4 * rows * 4);
    void *dh = ecu_malloc(nr * cols * 2);
    REQUIRE(dm && dx && dy && dh);
    ecu_h2d(dm, bytes, n);
    ecu_h2d(dx, x, 4 * cols * 4);
    const ecu_mat m = {SNAP_Q4, SNAP_LAYOUT_SPLIT, rows, cols, dm};
    eng_err err = {{0}};
    for (uint32_t T = 1; T <= ECU_GEMV_MAX_TOKENS; T++) {
        CHECK_RUN(ecu_gemv(&m, dx, cols, T, dy, rows, NULL, NULL, &err));
        CHECK_INT(ecu_sync(), 0);
        const float *xr = ecu_gemv_fusable(&m, T) ? xq : x;
        for (uint32_t t = 0; t < T; t++)
            for (uint64_t r = 0; r < rows; r++)
                ref[t * rows + r] = (float)ref_dot(w + r * cols, xr + t * cols, cols);
        ecu_d2h(got, dy, T * rows * 4);
        CHECK_NERR(nerr(got, ref, T * rows), 1e-5, "gemv 5000 x 16384 T=%u", T);
    }
    CHECK_RUN(ecu_dequant_f16(&m, r0, nr, dh, NULL, &err));
    CHECK_INT(ecu_sync(), 0);
    ecu_d2h(h, dh, nr * cols * 2);
    for (uint64_t i = 0; i < nr * cols; i++)
        deq[i] = snap_f16_to_f32(h[i]);
    CHECK(nerr(deq, w + r0 * cols, nr * cols) <= 1e-3);
    ecu_free(dm), ecu_free(dx), ecu_free(dy), ecu_free(dh);
    free(bytes), free(w), free(x), free(xq), free(ref), free(got), free(deq), free(h);
}

/* Paged attention for head sizes 64, 128 and 256, 14 query heads on 2 KV heads, against a
 * host softmax over the same f16 cache: three tokens of two sequences whose block tables
 * are out of order, at positions 70 (five blocks), 17 and 0. */
static void test_kernels_attention(void)
{
    const uint32_t H = 14, K = 2, NB = 12, T = 3;
    const int32_t pos[3] = {70, 17, 0}, blocks[7] = {5, 2, 9, 0, 7, 1, 11};
    const uint32_t seq[3] = {0, 1, 0}, off[2] = {0, 5};
    static const uint32_t dims[3] = {64, 128, 256};
    for (int di = 0; di < 3; di++) {
        const uint32_t D = dims[di];
        const uint64_t pool = (uint64_t)NB * K * ENG_BLOCK_TOKENS * D;
        uint64_t seed = 31 + D;
        uint16_t *kc = malloc(pool * 2), *vc = malloc(pool * 2);
        float *q = malloc(T * H * D * 4), *ref = malloc(T * H * D * 4), *got = malloc(T * H * D * 4);
        double *p = malloc(128 * sizeof *p);
        for (uint64_t i = 0; i < pool; i++)
            kc[i] = snap_f32_to_f16(frand(&seed) * 2), vc[i] = snap_f32_to_f16(frand(&seed));
        for (uint64_t i = 0; i < (uint64_t)T * H * D; i++)
            q[i] = frand(&seed);
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t hh = 0; hh < H; hh++) {
                uint32_t kvh = hh / (H / K);
                const float *qv = q + ((uint64_t)t * H + hh) * D;
                double mx = -INFINITY, sum = 0;
                for (int32_t j = 0; j <= pos[t]; j++) {
                    int32_t blk = blocks[off[seq[t]] + j / ENG_BLOCK_TOKENS];
                    const uint16_t *kr = kc + (((uint64_t)blk * K + kvh) * ENG_BLOCK_TOKENS + j % ENG_BLOCK_TOKENS) * D;
                    double d = 0;
                    for (uint32_t i = 0; i < D; i++)
                        d += (double)qv[i] * snap_f16_to_f32(kr[i]);
                    p[j] = d / sqrt((double)D);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int32_t j = 0; j <= pos[t]; j++)
                    sum += (p[j] = exp(p[j] - mx));
                for (uint32_t i = 0; i < D; i++) {
                    double o = 0;
                    for (int32_t j = 0; j <= pos[t]; j++) {
                        int32_t blk = blocks[off[seq[t]] + j / ENG_BLOCK_TOKENS];
                        o += p[j] * snap_f16_to_f32(
                                        vc[(((uint64_t)blk * K + kvh) * ENG_BLOCK_TOKENS + j % ENG_BLOCK_TOKENS) * D + i]);
                    }
                    ref[((uint64_t)t * H + hh) * D + i] = (float)(o / sum);
                }
            }
        void *dkc = ecu_malloc(pool * 2), *dvc = ecu_malloc(pool * 2);
        float *dq = ecu_malloc(T * H * D * 4), *dout = ecu_malloc(T * H * D * 4);
        int32_t *dpos = ecu_malloc(sizeof pos), *dblocks = ecu_malloc(sizeof blocks);
        uint32_t *dseq = ecu_malloc(sizeof seq), *doff = ecu_malloc(sizeof off);
        REQUIRE(dkc && dvc && dq && dout && dpos && dblocks && dseq && doff);
        ecu_h2d(dkc, kc, pool * 2), ecu_h2d(dvc, vc, pool * 2), ecu_h2d(dq, q, T * H * D * 4);
        ecu_h2d(dpos, pos, sizeof pos), ecu_h2d(dblocks, blocks, sizeof blocks);
        ecu_h2d(dseq, seq, sizeof seq), ecu_h2d(doff, off, sizeof off);
        const ecu_attn_shape as = {H, K, D, NB, SNAP_ROPE_NORM};
        const ecu_kv_batch kb = {dpos, dseq, doff, dblocks};
        eng_err err = {{0}};
        CHECK_RUN(ecu_attention(&as, &kb, T, dq, dkc, dvc, dout, NULL, &err));
        CHECK_INT(ecu_sync(), 0);
        ecu_d2h(got, dout, T * H * D * 4);
        CHECK_NERR(nerr(got, ref, (uint64_t)T * H * D), 1e-5, "attention head_dim %u", D);
        ecu_free(dkc), ecu_free(dvc), ecu_free(dq), ecu_free(dout);
        ecu_free(dpos), ecu_free(dblocks), ecu_free(dseq), ecu_free(doff);
        free(kc), free(vc), free(q), free(ref), free(got), free(p);
    }
}

static void test_kernels_norm_swiglu(void)
{
    const uint32_t rows = 5, n = 896;
    float *x = malloc(rows * n * 4), *add = malloc(rows * n * 4), *w = malloc(n * 4), *ref = malloc(rows * n * 4),
          *got = malloc(rows * n * 4), *xs = malloc(rows * n * 4);
    uint64_t seed = 9;
    for (uint32_t i = 0; i < rows * n; i++)
        x[i] = frand(&seed) * 3, add[i] = frand(&seed);
    for (uint32_t i = 0; i < n; i++)
        w[i] = frand(&seed);
    float *dx = ecu_malloc(rows * n * 4), *da = ecu_malloc(rows * n * 4), *dw = ecu_malloc(n * 4), *dout = ecu_malloc(rows * n * 4);
    REQUIRE(dx && da && dw && dout);
    ecu_h2d(dx, x, rows * n * 4);
    ecu_h2d(da, add, rows * n * 4);
    ecu_h2d(dw, w, n * 4);
    eng_err err = {{0}};
    CHECK_RUN(ecu_rmsnorm(dx, da, NULL, dw, dout, rows, n, 1e-5f, NULL, &err));
    ecu_sync();
    for (uint32_t r = 0; r < rows; r++) { /* cpu.c rmsnorm after x += add */
        double ss = 0;
        for (uint32_t i = 0; i < n; i++) {
            xs[r * n + i] = x[r * n + i] + add[r * n + i];
            ss += (double)xs[r * n + i] * xs[r * n + i];
        }
        float sc = (float)(1.0 / sqrt(ss / n + 1e-5));
        for (uint32_t i = 0; i < n; i++)
            ref[r * n + i] = xs[r * n + i] * sc * w[i];
    }
    ecu_d2h(got, dout, rows * n * 4);
    CHECK(nerr(got, ref, rows * n) <= 1e-5);
    ecu_d2h(got, dx, rows * n * 4);
    CHECK(nerr(got, xs, rows * n) <= 1e-7); /* the residual was written back */
    CHECK_RUN(ecu_swiglu(dx, da, rows * n, NULL, &err));
    ecu_sync();
    for (uint32_t i = 0; i < rows * n; i++)
        ref[i] = xs[i] / (1.0f + expf(-xs[i])) * add[i];
    ecu_d2h(got, dx, rows * n * 4);
    CHECK(nerr(got, ref, rows * n) <= 1e-5);
    ecu_free(dx), ecu_free(da), ecu_free(dw), ecu_free(dout);
    free(x), free(add), free(w), free(ref), free(got), free(xs);
}

/* ---- whole forward ------------------------------------------------------------------------------ */

typedef struct be {
    const eng_backend_ops *ops;
    void *ctx;
    uint32_t n_blocks;
} be;

static int be_open(be *b, const eng_backend_ops *ops, snap_file *f, uint32_t max_tokens)
{
    b->ops = ops;
    eng_backend_params p = {.n_threads = 0, .max_batch_tokens = max_tokens, .max_ctx = 256, .kv_mem_bytes = 64u << 20};
    eng_err err = {{0}};
    snap_load_stats st;
    int rc = ops->create(f, &p, &b->ctx, &b->n_blocks, &st, &err);
    if (rc)
        fprintf(stderr, "  %s create: %s\n", ops->name, err.msg);
    return rc;
}

/* Runs tokens[0..n) of one sequence (blocks 0..15) as one batch; logits of every token. */
static int run_seq(be *b, const int32_t *tokens, uint32_t n, uint32_t pos0, const int32_t *blocks, float *logits)
{
    int32_t pos[256];
    uint32_t seq[256] = {0}, out[256];
    for (uint32_t i = 0; i < n; i++)
        pos[i] = (int32_t)(pos0 + i), out[i] = i;
    eng_batch_seq s = {blocks, 16};
    eng_batch bt = {n, tokens, pos, seq, 1, &s, n, out};
    eng_err err = {{0}};
    int rc = b->ops->forward(b->ctx, &bt, logits, &err);
    if (rc)
        fprintf(stderr, "  %s forward: %s\n", b->ops->name, err.msg);
    return rc;
}

static uint32_t argmax(const float *v, uint32_t n)
{
    uint32_t k = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[k])
            k = i;
    return k;
}

/* CPU vs CUDA on one snapshot: prefill of 24 tokens, then teacher-forced decode steps. */
static void compare_forward(const char *path, int check_greedy, double decode_bound)
{
    snap_file *f = NULL;
    snap_err serr = {{0}};
    REQUIRE(snap_open(path, &f, &serr) == 0);
    uint32_t V = snap_get_config(f)->n_vocab;
    be cpu = {0}, gpu = {0};
    REQUIRE(be_open(&cpu, &eng_cpu_backend, f, 64) == 0);
    REQUIRE(be_open(&gpu, &eng_cuda_backend, f, 64) == 0);
    /* decode steps replay the graphs captured after create: wait for them, so the GEMV path is
     * checked as serving runs it, not whichever way the capture race went */
    for (int i = 0; i < 30000 && ecu_graphs_pending() > 0; i++)
        usleep(1000);
    CHECK_INT(ecu_graphs_pending(), 0);
    int32_t blocks[16];
    for (int i = 0; i < 16; i++)
        blocks[i] = i;
    int32_t toks[64];
    for (int i = 0; i < 24; i++)
        toks[i] = (int32_t)((i * 7919 + 13) % V);
    float *a = malloc((size_t)64 * V * 4), *g = malloc((size_t)64 * V * 4), *g1 = malloc((size_t)V * 4);
    REQUIRE(run_seq(&cpu, toks, 24, 0, blocks, a) == 0);
    REQUIRE(run_seq(&gpu, toks, 24, 0, blocks, g) == 0);
    double e = nerr(g, a, (uint64_t)24 * V);
    fprintf(stderr, "  %s: prefill (24 tokens, GEMM path) normalised error %.3g\n", path, e);
    CHECK(e <= 3e-2);
    uint32_t steps = 32, agree = 0;
    double worst = 0;
    int32_t next = (int32_t)argmax(a + (size_t)23 * V, V);
    for (uint32_t s = 0; s < steps; s++) {
        REQUIRE(run_seq(&cpu, &next, 1, 24 + s, blocks, a) == 0);
        REQUIRE(run_seq(&gpu, &next, 1, 24 + s, blocks, g) == 0);
        double es = nerr(g, a, V);
        worst = es > worst ? es : worst;
        uint32_t ka = argmax(a, V), kg = argmax(g, V);
        agree += ka == kg;
        next = (int32_t)ka;
    }
    fprintf(stderr, "  %s: decode (GEMV path) worst normalised error %.3g, greedy agreement %u/%u\n", path, worst,
            agree, steps);
    CHECK(worst <= decode_bound);
    if (check_greedy)
        CHECK(agree * 10 >= steps * 9);

    /* batched vs one at a time on the GPU: the 24-token prefill (GEMM) against 24 single steps (GEMV) */
    int32_t blocks2[16];
    for (int i = 0; i < 16; i++)
        blocks2[i] = 16 + i;
    REQUIRE(run_seq(&gpu, toks, 24, 0, blocks, g) == 0);
    for (uint32_t i = 0; i < 24; i++)
        REQUIRE(run_seq(&gpu, toks + i, 1, i, blocks2, g1) == 0);
    e = nerr(g1, g + (size_t)23 * V, V);
    fprintf(stderr, "  %s: batched vs one-at-a-time normalised error %.3g\n", path, e);
    CHECK(e <= decode_bound);
    /* two sequences in one decode batch vs each alone: bitwise */
    {
        int32_t tk[2] = {toks[3], toks[5]}, ps[2] = {24, 24};
        uint32_t sq[2] = {0, 1}, out[2] = {0, 1};
        eng_batch_seq ss[2] = {{blocks, 16}, {blocks2, 16}};
        eng_batch bt = {2, tk, ps, sq, 2, ss, 2, out};
        eng_err err = {{0}};
        REQUIRE(gpu.ops->forward(gpu.ctx, &bt, g, &err) == 0);
        REQUIRE(run_seq(&gpu, &tk[0], 1, 24, blocks, a) == 0);
        CHECK(memcmp(a, g, (size_t)V * 4) == 0);
        REQUIRE(run_seq(&gpu, &tk[1], 1, 24, blocks2, a) == 0);
        CHECK(memcmp(a, g + V, (size_t)V * 4) == 0);
    }
    free(a), free(g), free(g1);
    cpu.ops->destroy(cpu.ctx);
    gpu.ops->destroy(gpu.ctx);
    snap_close(f);
}

static void test_forward_smollm2(void)
{
    const char *gguf = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(gguf, R_OK) != 0)
        TEST_SKIP("%s not present (make model)", gguf);
    char p[128];
    snprintf(p, sizeof p, "%s/smollm2-cuda.thaw", tmp_dir);
    snap_pack_opts o = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CUDA};
    snap_err err = {{0}};
    REQUIRE(snap_pack(gguf, p, &o, &err) == 0);
    compare_forward(p, 1, 2e-2);
    unlink(p);
}

static void test_forward_synthetic(void)
{
    if (quick)
        TEST_SKIP("THAW_GPU_QUICK set");
    static const struct { const char *name; uint32_t quant, target; } cases[] = {
        {"smollm2-135m", SNAP_QUANT_Q4, SNAP_TARGET_CUDA}, {"smollm2-135m", SNAP_QUANT_Q8, SNAP_TARGET_CUDA},
        {"smollm2-135m", SNAP_QUANT_Q4, SNAP_TARGET_CPU},  {"qwen2.5-0.5b", SNAP_QUANT_Q4, SNAP_TARGET_CUDA},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s/synth-%zu.thaw", tmp_dir, i);
        snap_pack_opts o = {.quant = cases[i].quant, .target = cases[i].target};
        snap_err err = {{0}};
        REQUIRE(snap_pack_synthetic(cases[i].name, p, &o, &err) == 0);
        compare_forward(p, 0, 1e-2); /* random weights: near-flat logits, argmax ties are not meaningful */
        unlink(p);
    }
}

int main(void)
{
    int n = ecu_device_count();
    if (n <= 0) {
        printf("no GPU: skipping (cudaGetDeviceCount found no device)\n");
        return 0;
    }
    quick = getenv("THAW_GPU_QUICK") != NULL;
    fprintf(stderr, "device: %s\n", ecu_device_name());
    if (ecu_prepare() != 0) {
        fprintf(stderr, "ecu_prepare failed\n");
        return 1;
    }
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/thaw-gpu-XXXXXX");
    if (!mkdtemp(tmp_dir))
        return 1;
    TEST_RUN(test_kernels_matmul);
    TEST_RUN(test_kernels_gemv_fused);
    TEST_RUN(test_kernels_gemv_large);
    TEST_RUN(test_kernels_attention);
    TEST_RUN(test_kernels_norm_swiglu);
    TEST_RUN(test_forward_smollm2);
    TEST_RUN(test_forward_synthetic);
    rmdir(tmp_dir);
    TEST_END();
}
