/* test_forward.c -- the CPU forward pass against an independent NumPy forward
 * (tests/ref/make_forward_fixtures.py) on the tiny Llama (HF layout: NEOX RoPE, llama3
 * scaling) and Qwen2 (Q/K/V biases, tied embeddings) fixtures, at every quant and both
 * layouts; prefill in one batch equals one token at a time; every kernel set agrees (the
 * quantized matmuls bitwise).
 *
 * Error is normalised: max |ours - ref| / max |ref| over all logits of all positions.
 * Bounds: f16 weights 1e-3 (measured 2.6e-4: the arithmetic itself, f32 activations against
 * float64, with K/V rounded to f16 in the cache);
 * q8 5e-2 and q4 2.5e-1 (measured 1.7e-2 and 1.3e-1 at worst): the quantization noise of
 * each type on these random weights, which the f16 case shows is not the arithmetic's. */
#include "../engine/cpu/kernels.h"
#include "../engine/internal.h"
#include "internal.h"
#include "test.h"

#include <unistd.h>

static float *read_floats(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    float *v = malloc((size_t)len);
    *n = fread(v, 1, (size_t)len, fp) / 4;
    fclose(fp);
    return v;
}

static const char *tmp_snapshot(void)
{
    static char p[256];
    snprintf(p, sizeof p, "%s/thaw-fwd-%d.thaw", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    return p;
}

/* Packs the fixture, evaluates its token sequence, returns the normalised error (and, with
 * keep, the n_keep logits, which the caller frees). */
static double run_fixture(const char *name, uint32_t quant, uint32_t target, int one_at_a_time, int *top1_agree,
                          float **keep, size_t *n_keep)
{
    char src[256], path[256];
    snprintf(src, sizeof src, "tests/data/hf/%s", name);
    snap_pack_opts po = {.quant = quant, .target = target};
    snap_err serr;
    if (snap_pack(src, tmp_snapshot(), &po, &serr) != 0) {
        fprintf(stderr, "  pack: %s\n", serr.msg);
        return 1e9;
    }
    size_t n_tok, n_ref;
    snprintf(path, sizeof path, "tests/data/forward/%s.tokens", name);
    uint32_t *tokens = (uint32_t *)read_floats(path, &n_tok);
    snprintf(path, sizeof path, "tests/data/forward/%s.logits", name);
    float *ref = read_floats(path, &n_ref);
    eng_model *m = NULL;
    eng_err err = {{0}};
    eng_model_opts mo = {.n_threads = 2, .n_ctx = 64};
    if (!tokens || !ref || eng_model_open(tmp_snapshot(), &mo, &m, NULL, &err) != 0) {
        fprintf(stderr, "  open: %s\n", err.msg);
        return 1e9;
    }
    uint32_t V = eng_model_config(m)->n_vocab;
    float *logits = malloc(n_tok * V * sizeof *logits);
    eng_seq *s = NULL;
    double result = 1e9;
    if (eng_seq_create(m, &s, &err) == 0) {
        int rc = 0;
        if (one_at_a_time)
            for (size_t i = 0; i < n_tok && !rc; i++)
                rc = eng_seq_eval(s, (const int32_t *)tokens + i, 1, 1, logits + i * V, &err);
        else
            rc = eng_seq_eval(s, (const int32_t *)tokens, (uint32_t)n_tok, 1, logits, &err);
        if (rc) {
            fprintf(stderr, "  eval: %s\n", err.msg);
        } else {
            double max_ref = 0, max_diff = 0;
            int agree = 0;
            for (size_t i = 0; i < n_tok; i++) {
                size_t a = 0, b = 0;
                for (size_t j = 0; j < V; j++) {
                    max_ref = fmax(max_ref, fabs(ref[i * V + j]));
                    max_diff = fmax(max_diff, fabs(ref[i * V + j] - logits[i * V + j]));
                    if (ref[i * V + j] > ref[i * V + a])
                        a = j;
                    if (logits[i * V + j] > logits[i * V + b])
                        b = j;
                }
                agree += a == b;
            }
            *top1_agree = agree;
            result = max_diff / max_ref;
        }
    }
    eng_seq_destroy(s);
    eng_model_close(m);
    if (keep) {
        *keep = logits;
        *n_keep = n_tok * V;
    } else {
        free(logits);
    }
    free(tokens);
    free(ref);
    unlink(tmp_snapshot());
    return result;
}

static void check_fixture(const char *name)
{
    static const double bound[] = {2.5e-1, 5e-2, 1e-3}; /* q4, q8, f16 */
    static const char *const qname[] = {"q4", "q8", "f16"};
    for (uint32_t quant = SNAP_QUANT_Q4; quant <= SNAP_QUANT_F16; quant++)
        for (uint32_t target = SNAP_TARGET_CPU; target <= SNAP_TARGET_CUDA; target++) {
            int agree = 0;
            double e = run_fixture(name, quant, target, 0, &agree, NULL, NULL);
            fprintf(stderr, "  %s %s %s: normalised error %.2e (bound %.0e), top-1 agreement %d/40\n", name, qname[quant],
                    target ? "target cuda" : "target cpu", e, bound[quant], agree);
            CHECK(e <= bound[quant]);
            if (quant == SNAP_QUANT_F16)
                CHECK_INT(agree, 40);
        }
}

static void test_llama_hf_layout(void) { check_fixture("llama-tiny"); }
static void test_qwen2_bias_tied(void) { check_fixture("qwen2-tiny"); }

/* The weight load's read mode (eng_model_opts.load_io): a mapping of the page cache or pread
 * into the image give the same model, logit for logit. */
static void test_load_io_modes_agree(void)
{
    snap_pack_opts po = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CPU};
    snap_err serr;
    REQUIRE(snap_pack("tests/data/hf/llama-tiny", tmp_snapshot(), &po, &serr) == 0);
    const int32_t ids[5] = {1, 17, 42, 99, 7};
    const uint32_t modes[2] = {SNAP_IO_MMAP, SNAP_IO_PREAD};
    float *out[2] = {NULL, NULL};
    uint32_t V = 0;
    for (int k = 0; k < 2; k++) {
        eng_model *m = NULL;
        eng_seq *sq = NULL;
        eng_err err = {{0}};
        eng_model_opts mo = {.n_threads = 2, .n_ctx = 64, .load_io = modes[k]};
        eng_load_report rep;
        REQUIRE(eng_model_open(tmp_snapshot(), &mo, &m, &rep, &err) == 0);
        CHECK_INT(rep.load.io, modes[k]); /* the mode asked for is the one used */
        V = eng_model_config(m)->n_vocab;
        out[k] = malloc(5 * V * sizeof(float));
        REQUIRE(out[k] && eng_seq_create(m, &sq, &err) == 0);
        CHECK_INT(eng_seq_eval(sq, ids, 5, 1, out[k], &err), 0);
        eng_seq_destroy(sq);
        eng_model_close(m);
    }
    CHECK(memcmp(out[0], out[1], 5 * V * sizeof(float)) == 0);
    free(out[0]);
    free(out[1]);
}

/* The same arithmetic per token whichever way the tokens arrive, to the bit: the 40 tokens in
 * one batch take the AMX path where the CPU has it (the norms and SwiGLU quantizing ahead for
 * the matmuls: cpu.c's quant_ahead), one at a time the vector kernels. */
static void test_batch_equals_one_at_a_time(void)
{
    for (uint32_t quant = SNAP_QUANT_Q4; quant <= SNAP_QUANT_Q8; quant++) {
        int a1 = 0, a2 = 0;
        float *batch = NULL, *single = NULL;
        size_t n = 0, n2 = 0, diff = 0;
        double e1 = run_fixture("qwen2-tiny", quant, SNAP_TARGET_CPU, 0, &a1, &batch, &n);
        double e2 = run_fixture("qwen2-tiny", quant, SNAP_TARGET_CPU, 1, &a2, &single, &n2);
        int ran = batch && single && n == n2 && e1 < 1e9 && e2 < 1e9; /* 1e9: the run failed */
        CHECK(ran);
        if (!ran) {
            free(batch);
            free(single);
            return;
        }
        for (size_t i = 0; i < n; i++)
            diff += memcmp(&batch[i], &single[i], sizeof *batch) != 0;
        fprintf(stderr, "  qwen2-tiny %s: %zu of %zu logits differ between batch and one at a time\n",
                quant == SNAP_QUANT_Q4 ? "q4" : "q8", diff, n);
        CHECK_INT(diff, 0);
        CHECK_INT(a1, a2);
        free(batch);
        free(single);
    }
}

/* Every kernel set this CPU runs, portable first. */
static int kernel_sets(const cpu_kernels **ks)
{
    int n = 0;
    ks[n++] = cpu_kernels_portable();
    if (cpu_kernels_avx2())
        ks[n++] = cpu_kernels_avx2();
    if (cpu_kernels_avx512())
        ks[n++] = cpu_kernels_avx512();
    return n;
}

/* A Q4 / Q8 matrix of 37 rows (not a multiple of 16: a padded group) x 256, through R16:
 * rows decode exactly as the snapshot's dequantizers; activations quantize bitwise alike in
 * every set; the matmul gives bitwise equal results in every set, for 11 tokens at once and
 * for each token alone, within 1e-4 of float64 over the dequantized weights. */
static void check_r16(uint32_t dtype, int saturated)
{
    enum { ROWS = 37, COLS = 256, NB = COLS / 32, T = 21, TPAD = 32 };
    const cpu_kernels *ks[3];
    int nk = kernel_sets(ks);
    uint64_t bytes = snap_r16_bytes(dtype, ROWS, COLS);
    uint8_t *r16 = aligned_alloc(64, bytes);
    memset(r16, 0, bytes);
    static float w[ROWS * COLS], deq[ROWS * COLS], row[COLS], x[T * COLS];
    uint8_t blocks[COLS / 32 * 34];
    for (int i = 0; i < ROWS * COLS; i++)
        w[i] = saturated ? (i / COLS % 2 ? -1.0f : 1.0f) * (1.0f - 0.003f * (float)(i % 5))
                         : sinf((float)i * 0.0173f) * (1.0f + (float)(i % 7));
    for (int r = 0; r < ROWS; r++) {
        if (dtype == SNAP_Q4) {
            snap_quant_q4_row(w + r * COLS, blocks, COLS);
            snap_dequant_q4_row(blocks, deq + r * COLS, COLS);
        } else {
            snap_quant_q8_row(w + r * COLS, blocks, COLS);
            snap_dequant_q8_row(blocks, deq + r * COLS, COLS);
        }
        for (int b = 0; b < NB; b++) {
            const uint8_t *blk = blocks + b * (dtype == SNAP_Q4 ? 20 : 34);
            int8_t q[32];
            for (int j = 0; j < 32; j++)
                q[j] = dtype == SNAP_Q4 ? (int8_t)(j < 16 ? blk[4 + j] & 15 : blk[4 + j - 16] >> 4) : (int8_t)blk[2 + j];
            snap_r16_put(r16, dtype, NB, (uint64_t)r, (uint64_t)b, (uint16_t)(blk[0] | blk[1] << 8),
                        dtype == SNAP_Q4 ? (uint16_t)(blk[2] | blk[3] << 8) : 0, q);
        }
    }
    cpu_r16 m = {dtype, ROWS, NB, (ROWS + 15) / 16, r16};
    int exact = 1;
    for (int r = 0; r < ROWS; r++) {
        cpu_r16_row_f32(&m, (uint64_t)r, row);
        exact &= memcmp(row, deq + r * COLS, sizeof row) == 0;
    }
    CHECK(exact);
    for (int i = 0; i < T * COLS; i++) /* an outlier per block, or all near the block's largest */
        x[i] = saturated ? (i / COLS % 3 ? 1.0f : -1.0f) * (1.0f - 0.0007f * (float)(i % 11))
                         : cosf((float)i * 0.029f) * (i % 32 == 5 ? 40.0f : 1.0f);
    static int16_t x16[3][T * COLS];
    static float s[3][T * NB], sx[3][T * NB], out[3][T * ROWS], one[T * ROWS];
    for (int k = 0; k < nk; k++) {
        cpu_act a = {x16[k], s[k], sx[k], COLS, NB};
        for (uint32_t t = 0; t < T; t++)
            ks[k]->quant_act(x + t * COLS, &a, t);
        CHECK(memcmp(x16[k], x16[0], sizeof x16[0]) == 0 && memcmp(s[k], s[0], sizeof s[0]) == 0 &&
              memcmp(sx[k], sx[0], sizeof sx[0]) == 0);
        ks[k]->matmul_r16(&m, 0, m.n_groups, &a, T, out[k], ROWS);
        /* one token at a time, in two group ranges */
        for (uint32_t t = 0; t < T; t++) {
            cpu_act at = {x16[k] + t * COLS, s[k] + t * NB, sx[k] + t * NB, COLS, NB};
            ks[k]->matmul_r16(&m, 0, 1, &at, 1, one + t * ROWS, ROWS);
            ks[k]->matmul_r16(&m, 1, m.n_groups, &at, 1, one + t * ROWS, ROWS);
        }
        fprintf(stderr, "  %s %s: batch == alone %d, == portable %d\n", dtype == SNAP_Q4 ? "q4" : "q8", ks[k]->name,
                memcmp(one, out[k], sizeof one) == 0, memcmp(out[k], out[0], sizeof out[0]) == 0);
        CHECK(memcmp(one, out[k], sizeof one) == 0);
        CHECK(memcmp(out[k], out[0], sizeof out[0]) == 0);
    }
    if (cpu_amx_available()) {
        static uint8_t tiles[TPAD / 16 * NB * CPU_AMX_TILE_BYTES];
        static float amx[T * ROWS];
        cpu_act a = {x16[0], s[0], sx[0], COLS, NB};
        for (uint32_t t = 0; t < T; t++)
            cpu_amx_quant(x + t * COLS, &a, t, dtype, tiles);
        cpu_amx_matmul(&m, 0, m.n_groups, tiles, T, amx, ROWS);
        fprintf(stderr, "  %s amx: == portable %d\n", dtype == SNAP_Q4 ? "q4" : "q8", memcmp(amx, out[0], sizeof amx) == 0);
        CHECK(memcmp(amx, out[0], sizeof amx) == 0);
    } else {
        fprintf(stderr, "  no AMX on this CPU: the tile kernel is not run\n");
    }
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int r = 0; r < ROWS; r++) {
            double ref = 0, mag = 0;
            for (int i = 0; i < COLS; i++) {
                ref += (double)deq[r * COLS + i] * x[t * COLS + i];
                mag += fabs((double)deq[r * COLS + i] * x[t * COLS + i]);
            }
            double e = fabs(out[0][t * ROWS + r] - ref) / mag;
            worst = e > worst ? e : worst;
        }
    fprintf(stderr, "  %s: largest error %.2e of sum |w x| (bound 1e-4)\n", dtype == SNAP_Q4 ? "q4" : "q8", worst);
    CHECK(worst < 1e-4);
    free(r16);
}

static void test_r16_q4(void) { check_r16(SNAP_Q4, 0); }
static void test_r16_q8(void) { check_r16(SNAP_Q8, 0); }

/* Weights and activations near their largest everywhere: Q8 block sums pass 2^24, where
 * the conversion to f32 rounds, and every kernel (AMX included) must round alike. */
static void test_r16_saturated(void)
{
    check_r16(SNAP_Q4, 1);
    check_r16(SNAP_Q8, 1);
}

static void test_float_kernels_agree(void)
{
    const cpu_kernels *ks[3];
    int nk = kernel_sets(ks);
    if (nk == 1)
        TEST_SKIP("this CPU has no AVX2/FMA/F16C: only the portable kernels run here");
    const cpu_kernels *p = ks[0], *v = ks[nk - 1];
    enum { N = 256 };
    float x[N], y[N], y2[N];
    uint16_t h[N];
    for (int i = 0; i < N; i++) {
        x[i] = sinf((float)i * 0.37f) * 3.0f;
        y[i] = y2[i] = cosf((float)i * 0.11f);
        h[i] = snap_f32_to_f16(cosf((float)i * 0.23f));
    }
    CHECK_NEAR(p->dot_f16(h, x, N), v->dot_f16(h, x, N), 1e-4);
    CHECK_NEAR(p->dot_f32(x, y, N), v->dot_f32(x, y, N), 1e-4);
    p->axpy(0.5f, x, y, N);
    v->axpy(0.5f, x, y2, N);
    for (int i = 0; i < N; i++)
        CHECK_NEAR(y[i], y2[i], 1e-6);
    /* f16 rounding: bitwise the snapshot's converter in every set; SwiGLU within float error */
    uint16_t f1[N], f2[N];
    float big[N], g1[N], g2[N];
    for (int i = 0; i < N; i++)
        big[i] = x[i] * (float)(1 << (i % 20)) * 1e-3f + (i % 3 ? 0.0f : 1e-7f);
    p->to_f16(big, f1, N, 1);
    v->to_f16(big, f2, N, 1);
    int same = 1;
    for (int i = 0; i < N; i++)
        same &= f1[i] == snap_f32_to_f16(big[i]) && f2[i] == f1[i];
    CHECK(same);
    static uint16_t s1[N * 16], s2[N * 16]; /* strided, as keys go into the cache */
    p->to_f16(big, s1, N - 3, 16);
    v->to_f16(big, s2, N - 3, 16);
    CHECK(memcmp(s1, s2, sizeof s1) == 0);
    for (int i = 0; i < N - 3; i++)
        same &= s1[i * 16] == f1[i];
    CHECK(same);
    for (int i = 0; i < N; i++)
        g1[i] = g2[i] = x[i] * 4.0f;
    p->swiglu(g1, y, N);
    v->swiglu(g2, y, N);
    for (int i = 0; i < N; i++)
        CHECK_NEAR(g1[i], g2[i], 1e-5 * (1 + fabs(g1[i])));
    /* RMS norm, bitwise, over all N and over 37 (a tail past the last 8 and 16) */
    static const int lens[] = {N, 37};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int len = lens[li];
        float r1[N], r2[N];
        p->rmsnorm(r1, x, y, (uint64_t)len, 1e-5f);
        for (int k = 1; k < nk; k++) {
            ks[k]->rmsnorm(r2, x, y, (uint64_t)len, 1e-5f);
            CHECK(memcmp(r1, r2, (size_t)len * sizeof(float)) == 0);
        }
    }
    /* attention over 3 query heads sharing a KV head, 37 positions in 3 blocks */
    enum { D = 64, NQ = 3, NPOS = 37 };
    static uint16_t kb[3][D * 16], vb[3][16 * D];
    static float qh[NQ * D], sc[NQ * (NPOS + 16)], a1[NQ * D], a2[NQ * D];
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < D * 16; i++) {
            kb[b][i] = snap_f32_to_f16(sinf((float)(b * 1000 + i) * 0.7f));
            vb[b][i] = snap_f32_to_f16(cosf((float)(b * 1000 + i) * 0.3f));
        }
    for (int i = 0; i < NQ * D; i++)
        qh[i] = sinf((float)i * 0.05f) * 2.0f;
    const uint16_t *kp[3] = {kb[0], kb[1], kb[2]}, *vp[3] = {vb[0], vb[1], vb[2]};
    p->attend(qh, NQ, D, kp, vp, NPOS, 0.125f, sc, a1);
    for (int k = 1; k < nk; k++) { /* every vector set's own attention and SwiGLU */
        ks[k]->attend(qh, NQ, D, kp, vp, NPOS, 0.125f, sc, a2);
        for (int i = 0; i < NQ * D; i++)
            CHECK_NEAR(a1[i], a2[i], 1e-5);
        for (int i = 0; i < N; i++)
            g2[i] = x[i] * 4.0f;
        ks[k]->swiglu(g2, y, N);
        for (int i = 0; i < N; i++)
            CHECK_NEAR(g1[i], g2[i], 1e-5 * (1 + fabs(g1[i])));
    }
    /* the tiled kernel: 4 rows x 5 tokens (an odd count exercises the tail) */
    static float w4[4 * N], xs[5 * N], o1[5 * 7], o2[5 * 7];
    for (int i = 0; i < 4 * N; i++)
        w4[i] = sinf((float)i * 0.013f);
    for (int i = 0; i < 5 * N; i++)
        xs[i] = cosf((float)i * 0.029f);
    p->dot4xT(w4, xs, 5, o1, 7, N);
    v->dot4xT(w4, xs, 5, o2, 7, N);
    for (int t = 0; t < 5; t++)
        for (int r = 0; r < 4; r++) {
            double ref = 0;
            for (int i = 0; i < N; i++)
                ref += (double)w4[r * N + i] * xs[t * N + i];
            CHECK_NEAR(o1[t * 7 + r], ref, 1e-3);
            CHECK_NEAR(o2[t * 7 + r], ref, 1e-3);
        }
}

/* RoPE in every kernel set, both pairings, equals the rotation written out per pair
 * (x0 cos - x1 sin, x0 sin + x1 cos) bitwise; d = 48 takes the halves fallback. */
static void test_rope(void)
{
    const cpu_kernels *ks[3];
    int nk = kernel_sets(ks);
    enum { N = 3, DMAX = 128 };
    static const uint32_t dims[] = {64, 128, 48};
    float inv[DMAX / 2], cs[2 * DMAX], v[N * DMAX], want[N * DMAX];
    for (int halves = 0; halves < 2; halves++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            uint32_t d = dims[di];
            for (uint32_t i = 0; i < d / 2; i++)
                inv[i] = powf(10000.0f, -2.0f * (float)i / (float)d);
            float pos = 37.0f;
            cpu_rope_table(pos, inv, d, halves, cs);
            for (uint32_t h = 0; h < N; h++)
                for (uint32_t i = 0; i < d / 2; i++) {
                    uint32_t a = halves ? i : 2 * i, b = halves ? i + d / 2 : 2 * i + 1;
                    float x0 = sinf((float)(h * d + a) * 0.7f), x1 = cosf((float)(h * d + b) * 0.3f);
                    float c = cosf(pos * inv[i]), sn = sinf(pos * inv[i]);
                    want[h * d + a] = x0 * c - x1 * sn;
                    want[h * d + b] = x0 * sn + x1 * c;
                }
            for (int k = 0; k < nk; k++) {
                for (uint32_t h = 0; h < N; h++)
                    for (uint32_t j = 0; j < d; j++)
                        v[h * d + j] = (halves ? j < d / 2 : j % 2 == 0) ? sinf((float)(h * d + j) * 0.7f)
                                                                       : cosf((float)(h * d + j) * 0.3f);
                ks[k]->rope(v, N, d, cs, halves);
                int same = 1;
                for (uint32_t j = 0; j < N * d; j++)
                    same &= memcmp(&v[j], &want[j], sizeof(float)) == 0;
                if (!same)
                    fprintf(stderr, "  rope: %s kernels, d %u, %s differ\n", ks[k]->name, d, halves ? "halves" : "pairs");
                CHECK(same);
            }
        }
}

int main(void)
{
    TEST_RUN(test_llama_hf_layout);
    TEST_RUN(test_qwen2_bias_tied);
    TEST_RUN(test_load_io_modes_agree);
    TEST_RUN(test_batch_equals_one_at_a_time);
    TEST_RUN(test_r16_q4);
    TEST_RUN(test_r16_q8);
    TEST_RUN(test_r16_saturated);
    TEST_RUN(test_float_kernels_agree);
    TEST_RUN(test_rope);
    TEST_END();
}
