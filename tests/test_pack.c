/* test_pack.c -- GGUF -> snapshot -> loaded image, compared with an independent
 * dequantization of the source (tests/data/gguf/NAME.ref.bin, written by the `gguf` Python
 * package's own dequantizers; see tests/ref/make_gguf_fixtures.py).
 *
 * Exact where a source block format equals the stored one (Q4_1 -> q4, Q8_0 -> q8, F32, F16);
 * otherwise within the rounding of the stored type,
 * a bound computed per block from the reference values themselves. Every quant, both targets. */
#include "internal.h"
#include "test.h"

#include <unistd.h>

static const char *const stems[] = {"llama-f32", "llama-f16", "llama-bf16", "llama-q8_0",
                                    "llama-q4_0", "llama-q4_1", "llama-q4_k", "llama-q6_k"};

typedef struct ref_tensor {
    char name[64];
    uint64_t n;
    float *v;
} ref_tensor;

static int load_refs(const char *stem, ref_tensor *out, int max)
{
    char p[256];
    snprintf(p, sizeof p, "tests/data/gguf/%s.ref.txt", stem);
    FILE *txt = fopen(p, "r");
    snprintf(p, sizeof p, "tests/data/gguf/%s.ref.bin", stem);
    FILE *bin = fopen(p, "rb");
    int n = 0;
    while (txt && bin && n < max) {
        unsigned long long count;
        if (fscanf(txt, "%63s %llu", out[n].name, &count) != 2)
            break;
        out[n].n = count;
        out[n].v = malloc(count * sizeof(float));
        if (fread(out[n].v, sizeof(float), count, bin) != count)
            break;
        n++;
    }
    if (txt)
        fclose(txt);
    if (bin)
        fclose(bin);
    return n;
}

/* The largest error the stored type may add to reference values x[0..n) of one row. */
static double block_bound(uint32_t dtype, const float *x, uint64_t n)
{
    double worst = 0;
    for (uint64_t b = 0; b < n; b += 32) {
        double mn = x[b], mx = x[b], amax = 0;
        for (uint64_t j = b; j < b + 32 && j < n; j++) {
            mn = fmin(mn, x[j]);
            mx = fmax(mx, x[j]);
            amax = fmax(amax, fabs(x[j]));
        }
        double bound;
        if (dtype == SNAP_Q4) {
            double step = (mx - mn) / 15;
            /* half a step, plus f16 rounding of the scale (over 15 steps) and of the minimum */
            bound = 0.5 * step + 15 * step * 0x1p-11 + fabs(mn) * 0x1p-11;
        } else if (dtype == SNAP_Q8) {
            double step = amax / 127;
            bound = 0.5 * step + 127 * step * 0x1p-11;
        } else if (dtype == SNAP_F16) {
            bound = amax * 0x1p-11 + 0x1p-24;
        } else {
            bound = 0;
        }
        worst = fmax(worst, bound);
    }
    return worst * 1.0001 + 1e-9;
}

static int exact_pair(uint32_t src, uint32_t dtype)
{
    return (src == SRC_Q4_1 && dtype == SNAP_Q4) || (src == SRC_Q8_0 && dtype == SNAP_Q8) ||
           (src == SRC_F32 && dtype == SNAP_F32) || (src == SRC_F16 && dtype == SNAP_F16);
}

static void check_stem(const char *stem)
{
    char src[256];
    snprintf(src, sizeof src, "tests/data/gguf/%s.gguf", stem);
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    REQUIRE(snap_read_gguf(src, &m, &err) == 0);
    ref_tensor refs[8];
    int n_refs = load_refs(stem, refs, 8);
    REQUIRE(n_refs > 0);
    char out[256];
    snprintf(out, sizeof out, "%s/thaw-pack-%d.thaw", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    for (uint32_t quant = SNAP_QUANT_Q4; quant <= SNAP_QUANT_F16; quant++) {
        for (uint32_t target = SNAP_TARGET_CPU; target <= SNAP_TARGET_CUDA; target++) {
            snap_pack_opts o = {.quant = quant, .target = target, .chunk_size = 8192};
            REQUIRE(snap_pack(src, out, &o, &err) == 0);
            snap_file *f = NULL;
            REQUIRE(snap_open(out, &f, &err) == 0);
            snap_image *img = NULL;
            REQUIRE(snap_load_host(f, NULL, &img, NULL, &err) == 0);
            for (int r = 0; r < n_refs; r++) {
                const snap_tensor *t = snap_tensor_find(f, refs[r].name);
                const snap_src_tensor *s = snap_src_find(&m, refs[r].name);
                REQUIRE(t && s);
                uint64_t cols = t->shape[t->n_dims - 1], rows = refs[r].n / cols;
                CHECK_INT(rows * cols, refs[r].n);
                float *row = malloc(cols * sizeof *row);
                int exact = exact_pair(s->type, t->dtype);
                double worst = 0, worst_allowed = 0;
                int ok = 1;
                for (uint64_t i = 0; i < rows; i++) {
                    const float *want = refs[r].v + i * cols;
                    snap_tensor_row_f32(t, img->data, i, row);
                    double bound = exact ? 0 : block_bound(t->dtype, want, cols);
                    for (uint64_t j = 0; j < cols; j++) {
                        double e = fabs((double)row[j] - want[j]);
                        if (e > worst) {
                            worst = e;
                            worst_allowed = bound;
                        }
                        if (exact ? memcmp(&row[j], &want[j], 4) != 0 : e > bound)
                            ok = 0;
                    }
                }
                if (!ok)
                    fprintf(stderr, "  %s %s quant %u target %u (%s from %s): worst error %g, allowed %g\n", stem,
                            refs[r].name, quant, target, snap_dtype_name(t->dtype), snap_src_type_name(s->type), worst,
                            worst_allowed);
                CHECK(ok);
                free(row);
            }
            snap_image_free(img);
            snap_close(f);
        }
    }
    unlink(out);
    for (int r = 0; r < n_refs; r++)
        free(refs[r].v);
    snap_src_free(&m);
}

static void test_round_trip_against_gguf_package(void)
{
    for (size_t i = 0; i < sizeof stems / sizeof stems[0]; i++)
        check_stem(stems[i]);
}

/* An R16 tensor's bytes back in BLOCKS (ggml) form, and its SPLIT form (what the CUDA backend
 * makes of a CPU snapshot) checked against planes taken straight from the blocks. */
static int r16_matches_blocks(const snap_tensor *t, const uint8_t *r16, const uint8_t *blocks)
{
    uint32_t bb = t->dtype == SNAP_Q4 ? SNAP_Q4_BLOCK_BYTES : SNAP_Q8_BLOCK_BYTES, head = t->dtype == SNAP_Q4 ? 4 : 2;
    uint64_t nb = t->shape[1] / 32, total = t->shape[0] * nb;
    uint8_t *split = malloc(t->size);
    snap_r16_to_split(t, r16, split);
    int ok = 1;
    for (uint64_t r = 0; r < t->shape[0] && ok; r++)
        for (uint64_t b = 0; b < nb && ok; b++) {
            const uint8_t *blk = blocks + (r * nb + b) * bb;
            uint16_t d, m;
            int8_t q[32];
            snap_r16_get(r16, t->dtype, nb, r, b, &d, &m, q);
            uint8_t re[SNAP_Q8_BLOCK_BYTES] = {(uint8_t)d, (uint8_t)(d >> 8), (uint8_t)m, (uint8_t)(m >> 8)};
            for (int j = 0; j < 32; j++) {
                if (t->dtype == SNAP_Q4)
                    re[4 + j % 16] |= (uint8_t)(q[j] << (j < 16 ? 0 : 4));
                else
                    re[2 + j] = (uint8_t)q[j];
            }
            uint64_t k = r * nb + b, qb = bb - head;
            ok = memcmp(re, blk, bb) == 0 && memcmp(split + total * qb + 2 * k, blk, 2) == 0 &&
                 memcmp(split + k * qb, blk + head, qb) == 0 &&
                 (t->dtype != SNAP_Q4 || memcmp(split + total * (qb + 2) + 2 * k, blk + 2, 2) == 0);
        }
    free(split);
    return ok;
}

/* The default model: every Q4_1 / Q8_0 tensor keeps its bytes exactly through packing (the
 * CPU's R16 arrangement of them turns back into the same bytes). */
static void test_default_model_bit_exact(void)
{
    const char *gguf = "models/SmolLM2-135M-Instruct.Q4_1.gguf", *snap = "models/smollm2-135m-instruct.thaw";
    if (access(gguf, R_OK) != 0 || access(snap, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    REQUIRE(snap_read_gguf(gguf, &m, &err) == 0);
    snap_file *f = NULL;
    REQUIRE(snap_open(snap, &f, &err) == 0);
    snap_image *img = NULL;
    REQUIRE(snap_load_host(f, NULL, &img, NULL, &err) == 0);
    size_t n_exact = 0, n_r16 = 0;
    for (size_t i = 0; i < m.n_tensors; i++) {
        const snap_src_tensor *s = &m.tensors[i];
        const snap_tensor *t = snap_tensor_find(f, s->name);
        REQUIRE(t != NULL);
        CHECK_INT(t->size, s->n_bytes);
        if (t->layout == SNAP_LAYOUT_R16) {
            CHECK(r16_matches_blocks(t, img->data + t->offset, s->data));
            n_r16++;
        } else {
            CHECK(memcmp(img->data + t->offset, s->data, s->n_bytes) == 0);
        }
        n_exact++;
    }
    CHECK_INT(n_exact, 272);
    CHECK_INT(n_r16, 211); /* every matrix: 30 layers x 7 and the embedding */
    snap_image_free(img);
    snap_close(f);
    snap_src_free(&m);
}

int main(void)
{
    TEST_RUN(test_round_trip_against_gguf_package);
    TEST_RUN(test_default_model_bit_exact);
    TEST_END();
}
