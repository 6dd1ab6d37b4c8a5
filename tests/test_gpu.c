/* test_gpu.c -- the CUDA backend against the CPU reference (built only with CUDA=1; run by
 * `make test-gpu`). Without a GPU it prints why and exits 0.
 *
 * Bounds (normalised error = ||gpu - ref|| / ||ref||, over a whole output):
 *   kernels (GEMV, dequant, RMSNorm, SwiGLU, embedding):   1e-5 in f32 (only sum order differs);
 *     f16 dequant: 1e-3 (f16 rounding of weights)
 *   whole forward vs the CPU backend, same snapshot:       3e-2 (KV cache in f16, prefill GEMMs on
 *     f16 activations; the CPU keeps both in f32)
 *   greedy agreement, SmolLM2 teacher-forced 32 steps:      >= 90 % of argmaxes equal
 *   batched (GEMM path) vs one-at-a-time (GEMV path):       3e-2; two sequences in one decode
 *     batch vs each alone: bitwise equal (the same kernels, per token independent)
 * RoPE and paged attention are checked through the whole forward (they have no separate
 * host reference here). THAW_GPU_QUICK=1 (compute-sanitizer) runs the kernels and SmolLM2 only.
 */
#include "internal.h"
#include "cuda/kernels.h"
#include "test.h"

#include <unistd.h>

static char tmp_dir[64];
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

/* A random [rows][cols] matrix stored as dtype/layout: host bytes (as the packer writes them)
 * and the exact f32 values those bytes stand for. */
static uint8_t *make_mat(uint32_t dtype, uint32_t layout, uint64_t rows, uint64_t cols, float *vals, uint64_t *bytes)
{
    uint64_t seed = dtype * 131 + layout * 7 + rows;
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

static void test_kernels_matmul(void)
{
    static const uint32_t types[][2] = {{SNAP_Q4, SNAP_LAYOUT_SPLIT}, {SNAP_Q4, SNAP_LAYOUT_BLOCKS},
                                        {SNAP_Q8, SNAP_LAYOUT_SPLIT}, {SNAP_Q8, SNAP_LAYOUT_BLOCKS},
                                        {SNAP_F16, SNAP_LAYOUT_BLOCKS}, {SNAP_F32, SNAP_LAYOUT_BLOCKS}};
    const uint64_t rows = 333, cols = 1024;
    float *w = malloc(rows * cols * 4), *x = malloc(4 * cols * 4), *ref = malloc(4 * rows * 4), *got = malloc(4 * rows * 4);
    float *bias = malloc(rows * 4), *deq = malloc(rows * cols * 4);
    uint16_t *h = malloc(rows * cols * 2);
    uint64_t seed = 5;
    for (uint64_t i = 0; i < 4 * cols; i++)
        x[i] = frand(&seed);
    for (uint64_t i = 0; i < rows; i++)
        bias[i] = frand(&seed);
    float *dx = ecu_malloc(4 * cols * 4), *dy = ecu_malloc(4 * rows * 4), *db = ecu_malloc(rows * 4);
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
            for (uint32_t t = 0; t < T; t++)
                for (uint64_t r = 0; r < rows; r++) {
                    double s = bias[r];
                    for (uint64_t i = 0; i < cols; i++)
                        s += (double)w[r * cols + i] * x[t * cols + i];
                    ref[t * rows + r] = (float)s;
                }
            CHECK_INT(ecu_gemv(&m, dx, cols, T, dy, rows, db, NULL, &err), 0);
            CHECK_INT(ecu_sync(), 0);
            ecu_d2h(got, dy, T * rows * 4);
            double e = nerr(got, ref, T * rows);
            if (!(e <= 1e-5))
                fprintf(stderr, "  gemv %s/%u T=%u: normalised error %.3g\n", snap_dtype_name(types[k][0]), types[k][1], T, e);
            CHECK(e <= 1e-5);
        }
        CHECK_INT(ecu_dequant_f16(&m, 0, rows, dh, NULL, &err), 0);
        ecu_sync();
        ecu_d2h(h, dh, rows * cols * 2);
        for (uint64_t i = 0; i < rows * cols; i++)
            deq[i] = snap_f16_to_f32(h[i]);
        double e = nerr(deq, w, rows * cols);
        if (!(e <= 1e-3))
            fprintf(stderr, "  dequant %s/%u: normalised error %.3g\n", snap_dtype_name(types[k][0]), types[k][1], e);
        CHECK(e <= 1e-3);
        /* embedding rows 7 and 300 */
        int32_t toks[2] = {7, 300};
        int32_t *dt = ecu_malloc(sizeof toks);
        ecu_h2d(dt, toks, sizeof toks);
        CHECK_INT(ecu_embed(&m, dt, 2, dy, NULL, &err), 0);
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
    free(w), free(x), free(ref), free(got), free(bias), free(deq), free(h);
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
    CHECK_INT(ecu_rmsnorm(dx, da, NULL, dw, dout, rows, n, 1e-5f, NULL, &err), 0);
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
    CHECK_INT(ecu_swiglu(dx, da, rows * n, NULL, &err), 0);
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
static void compare_forward(const char *path, int check_greedy)
{
    snap_file *f = NULL;
    snap_err serr = {{0}};
    REQUIRE(snap_open(path, &f, &serr) == 0);
    uint32_t V = snap_get_config(f)->n_vocab;
    be cpu = {0}, gpu = {0};
    REQUIRE(be_open(&cpu, &eng_cpu_backend, f, 64) == 0);
    REQUIRE(be_open(&gpu, &eng_cuda_backend, f, 64) == 0);
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
    CHECK(worst <= 3e-2);
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
    CHECK(e <= 3e-2);
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
    compare_forward(p, 1);
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
        compare_forward(p, 0); /* random weights: near-flat logits, argmax ties are not meaningful */
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
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/thaw-gpu-XXXXXX");
    if (!mkdtemp(tmp_dir))
        return 1;
    TEST_RUN(test_kernels_matmul);
    TEST_RUN(test_kernels_norm_swiglu);
    TEST_RUN(test_forward_smollm2);
    TEST_RUN(test_forward_synthetic);
    rmdir(tmp_dir);
    TEST_END();
}
