/* test_logits.c -- the CPU engine on the default model against three independent references
 * reading the same GGUF (tests/ref/make_logits_fixtures.py and make_hf_logits_fixture.py: 24
 * prompts, 613 positions). The engine keeps K/V in f16 and quantizes matmul inputs to int16
 * per 32 (engine/cpu/kernels.h); both stay far below the quantization of the weights.
 *
 *   exact:     the gguf package's dequantized weights through a float64 NumPy forward.
 *              Bounds: top-1 agreement >= 99.5 % and largest logit difference <= 0.08 over
 *              each position's reference top 32 (measured: 100 %; 0.036 with the AVX-512
 *              kernels, 0.041 with the AVX2 and portable ones, whose attention sums in
 *              another order).
 *   transformers: Hugging Face transformers loading the GGUF (dequantized to an f32 PyTorch
 *              Llama). Bounds: top-1 agreement >= 99 % (the bound), largest logit
 *              difference <= 0.08, perplexity within 1 % (measured: 100 %, 0.036, 0.9999).
 *   llama.cpp: rounds activations to 8 bits and keeps K/V in f16, so it sits ~0.5 logits from
 *              the exact values on average and picks a different top-1 token than the exact
 *              computation at 2.0 % of these positions. Bounds: top-1 agreement >= 97 %,
 *              largest logit difference <= 2.5 (its own distance from exact is 1.8), and
 *              perplexity on GPL-3 (4 windows of 512 tokens) within 1 %. */
#include "../engine/internal.h"
#include "test.h"

#include <unistd.h>

#define MODEL "models/smollm2-135m-instruct.thaw"
#define TOP 32

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc(*len);
    if (b && fread(b, 1, *len, fp) != *len) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    return b;
}

static eng_model *open_model(void)
{
    eng_model *m = NULL;
    eng_err err = {{0}};
    eng_model_opts o = {.n_ctx = 2048};
    if (eng_model_open(MODEL, &o, &m, NULL, &err) != 0)
        fprintf(stderr, "  %s\n", err.msg);
    return m;
}

/* Compares our logits for every fixture prompt with a reference's top-32 file. */
static void compare(const char *ref_file, const char *label, double min_agree, double max_diff)
{
    if (access(MODEL, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    size_t plen, tlen;
    uint8_t *prompts = slurp("tests/data/logits/prompts.bin", &plen), *top = slurp(ref_file, &tlen);
    REQUIRE(prompts && top);
    eng_model *m = open_model();
    REQUIRE(m != NULL);
    uint32_t V = eng_model_config(m)->n_vocab;
    size_t off = 0, toff = 0, n_pos = 0, agree = 0, n_prompts = 0;
    double worst = 0, sum_diff = 0, worst_lp = 0;
    float *logits = malloc((size_t)2048 * V * sizeof *logits);
    eng_err err = {{0}};
    while (off + 4 <= plen) {
        uint32_t n;
        memcpy(&n, prompts + off, 4);
        const int32_t *ids = (const int32_t *)(prompts + off + 4);
        off += 4 + 4ull * n;
        eng_seq *s = NULL;
        REQUIRE(eng_seq_create(m, &s, &err) == 0);
        REQUIRE(eng_seq_eval(s, ids, n, 1, logits, &err) == 0);
        eng_seq_destroy(s);
        for (uint32_t p = 0; p < n && toff + 4 + TOP * 8 <= tlen; p++, n_pos++) {
            const float *row = logits + (size_t)p * V;
            float lse_ref;
            memcpy(&lse_ref, top + toff, 4);
            const uint8_t *pairs = top + toff + 4;
            toff += 4 + TOP * 8;
            uint32_t best = 0;
            double mx = row[0];
            for (uint32_t j = 1; j < V; j++)
                if (row[j] > mx) {
                    mx = row[j];
                    best = j;
                }
            double lse = 0;
            for (uint32_t j = 0; j < V; j++)
                lse += exp(row[j] - mx);
            lse = mx + log(lse);
            uint32_t ref_best;
            memcpy(&ref_best, pairs, 4);
            agree += best == ref_best;
            for (int k = 0; k < TOP; k++) {
                uint32_t id;
                float lg;
                memcpy(&id, pairs + 8 * k, 4);
                memcpy(&lg, pairs + 8 * k + 4, 4);
                double d = fabs(row[id] - lg);
                worst = fmax(worst, d);
                sum_diff += d;
                if (k == 0) /* log-probability of the reference's top token */
                    worst_lp = fmax(worst_lp, fabs((row[id] - lse) - (lg - lse_ref)));
            }
        }
        n_prompts++;
    }
    CHECK_INT(toff, tlen);
    double rate = (double)agree / (double)n_pos;
    fprintf(stderr, "  vs %s: %zu prompts, %zu positions: top-1 agreement %.4f (bound %.3f), largest logit difference "
                    "%.2e (bound %.2f, mean %.2e), largest top-1 log-prob difference %.2e\n",
            label, n_prompts, n_pos, rate, min_agree, worst, max_diff, sum_diff / (double)(n_pos * TOP), worst_lp);
    CHECK(n_prompts >= 20 && n_pos >= 500);
    CHECK(rate >= min_agree);
    CHECK(worst <= max_diff);
    free(logits);
    free(prompts);
    free(top);
    eng_model_close(m);
}

static void test_logits_match_exact(void) { compare("tests/data/logits/exact.bin", "exact float64", 0.995, 0.08); }
static void test_logits_match_transformers(void) { compare("tests/data/logits/hf.bin", "transformers", 0.99, 0.08); }
static void test_logits_match_llama_cpp(void) { compare("tests/data/logits/top.bin", "llama.cpp", 0.97, 2.5); }

static void test_perplexity_gpl3(void)
{
    if (access(MODEL, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    size_t len;
    uint8_t *b = slurp("tests/data/logits/ppl.bin", &len);
    FILE *fp = fopen("tests/data/logits/ppl.txt", "r"), *fh = fopen("tests/data/logits/hf_ppl.txt", "r");
    double ref_ppl = 0, hf_ppl = 0;
    REQUIRE(b && fp && fscanf(fp, "%lf", &ref_ppl) == 1 && fh && fscanf(fh, "%lf", &hf_ppl) == 1);
    fclose(fp);
    fclose(fh);
    uint32_t window, n_windows;
    memcpy(&window, b, 4);
    memcpy(&n_windows, b + 4, 4);
    const int32_t *ids = (const int32_t *)(b + 8);
    eng_model *m = open_model();
    REQUIRE(m != NULL);
    uint32_t V = eng_model_config(m)->n_vocab;
    float *logits = malloc((size_t)window * V * sizeof *logits);
    double nll = 0;
    size_t count = 0;
    eng_err err;
    for (uint32_t w = 0; w < n_windows; w++) {
        const int32_t *chunk = ids + (size_t)w * window;
        eng_seq *s = NULL;
        REQUIRE(eng_seq_create(m, &s, &err) == 0);
        REQUIRE(eng_seq_eval(s, chunk, window, 1, logits, &err) == 0);
        eng_seq_destroy(s);
        for (uint32_t i = 0; i + 1 < window; i++) {
            const float *row = logits + (size_t)i * V;
            double mx = row[0], sum = 0;
            for (uint32_t j = 1; j < V; j++)
                mx = fmax(mx, row[j]);
            for (uint32_t j = 0; j < V; j++)
                sum += exp(row[j] - mx);
            nll += mx + log(sum) - row[chunk[i + 1]];
            count++;
        }
    }
    double ppl = exp(nll / (double)count);
    fprintf(stderr, "  perplexity on GPL-3 (%u x %u tokens): %.4f; llama.cpp %.4f, ratio %.4f; transformers %.4f, ratio %.4f\n",
            n_windows, window, ppl, ref_ppl, ppl / ref_ppl, hf_ppl, ppl / hf_ppl);
    CHECK(fabs(ppl / ref_ppl - 1.0) <= 0.01);
    CHECK(fabs(ppl / hf_ppl - 1.0) <= 0.01);
    free(logits);
    free(b);
    eng_model_close(m);
}

int main(void)
{
    TEST_RUN(test_logits_match_exact);
    TEST_RUN(test_logits_match_transformers);
    TEST_RUN(test_logits_match_llama_cpp);
    TEST_RUN(test_perplexity_gpl3);
    TEST_END();
}
