/* test_synth.c -- synthetic models (`thaw pack --synthetic`): the real models' tensor tables,
 * loadable and runnable by the CPU engine; the large shapes checked by their planned sizes
 * only (no multi-GB file in tests). */
#include "internal.h"
#include "engine.h"
#include "test.h"

#include <unistd.h>

#define REAL_SMOLLM2 "models/smollm2-135m-instruct.thaw"

static char tmp_dir[64];

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmp_dir, name);
}

/* Published parameter counts (Hugging Face model cards / safetensors index). */
static uint64_t n_params(const snap_src_model *m)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        uint64_t k = 1;
        for (uint32_t d = 0; d < m->tensors[i].n_dims; d++)
            k *= m->tensors[i].shape[d];
        n += k;
    }
    return n;
}

static void test_param_counts(void)
{
    static const struct { const char *name; uint64_t params; size_t tensors; } want[] = {
        {"smollm2-135m", 134515008ull, 1 + 30 * 9 + 1},
        {"qwen2.5-0.5b", 494032768ull, 1 + 24 * 12 + 1},
        {"qwen2.5-7b", 7615616512ull, 1 + 28 * 12 + 2},
        {"llama-3-8b", 8030261248ull, 1 + 32 * 9 + 2},
    };
    const char *const *names = snap_synthetic_names();
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_STR(names[i], want[i].name);
        snap_src_model m;
        snap_src_init(&m);
        snap_err err = {{0}};
        int rc = snap_synth_model(want[i].name, &m, &err);
        if (rc)
            fprintf(stderr, "  %s: %s\n", want[i].name, err.msg);
        CHECK_INT(rc, 0);
        CHECK_INT(m.n_tensors, want[i].tensors);
        CHECK_INT(n_params(&m), want[i].params);
        CHECK_INT(m.vocab.n_tokens, m.config.n_vocab);
        snap_src_free(&m);
    }
    CHECK(names[4] == NULL);
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    CHECK_INT(snap_synth_model("gpt-5", &m, &err), SNAP_EARG);
    CHECK_CONTAINS(err.msg, "gpt-5");
    snap_src_free(&m);
}

/* The big shapes: planned stored bytes under the packer's q4 policy (linear layers q4,
 * embedding and head q8, vectors f32), computed here independently of pack.c. */
static void test_big_planned_bytes(void)
{
    static const struct { const char *name; uint32_t E, L, H, K, D, F, V; int tied, bias; } s[] = {
        {"qwen2.5-7b", 3584, 28, 28, 4, 128, 18944, 152064, 0, 1},
        {"llama-3-8b", 4096, 32, 32, 8, 128, 14336, 128256, 0, 0},
    };
    for (size_t i = 0; i < 2; i++) {
        snap_src_model m;
        snap_src_init(&m);
        REQUIRE(snap_synth_model(s[i].name, &m, NULL) == 0);
        uint64_t got = 0;
        for (size_t t = 0; t < m.n_tensors; t++) {
            const snap_src_tensor *x = &m.tensors[t];
            uint32_t dt = x->n_dims == 1 ? SNAP_F32
                          : (!strcmp(x->name, "token_embd.weight") || !strcmp(x->name, "output.weight")) ? SNAP_Q8
                                                                                                          : SNAP_Q4;
            got += snap_tensor_bytes(dt, x->n_dims, x->shape);
        }
        uint64_t E = s[i].E, Q = (uint64_t)s[i].H * s[i].D, KV = (uint64_t)s[i].K * s[i].D, F = s[i].F;
        uint64_t layer = (Q * E + 2 * KV * E + E * Q + 3 * F * E) / 32 * 20 + 2 * E * 4 + (s[i].bias ? (Q + 2 * KV) * 4 : 0);
        uint64_t want = (uint64_t)s[i].L * layer + E * 4 + (s[i].tied ? 1 : 2) * (uint64_t)s[i].V * E / 32 * 34;
        CHECK_INT(got, want);
        fprintf(stderr, "  %s: %.2f GB planned at q4\n", s[i].name, got / 1e9);
        CHECK(got > 4000000000ull && got < 6000000000ull);
        snap_src_free(&m);
    }
}

static void test_smollm2_matches_real(void)
{
    char p[128];
    tmp_path(p, sizeof p, "smollm2.thaw");
    snap_pack_opts o = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CPU};
    snap_err err = {{0}};
    int rc = snap_pack_synthetic("smollm2-135m", p, &o, &err);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    REQUIRE(rc == 0);
    snap_file *f = NULL;
    REQUIRE(snap_open(p, &f, &err) == 0);
    CHECK_INT(snap_get_config(f)->n_layer, 30);
    CHECK_INT(snap_get_vocab(f)->n_tokens, 49152);
    CHECK(snap_verify(f, NULL, NULL, &err) == 0);
    /* stored like a real model's: no chunk compresses (random rows, varying block scales), so
     * a load measured on a synthetic snapshot does the work a real one does */
    size_t lz4 = 0;
    for (size_t i = 0; i < snap_n_chunks(f); i++)
        lz4 += snap_chunk_at(f, i)->codec == SNAP_CODEC_LZ4;
    CHECK_INT(lz4, 0);
    snap_file *real = NULL;
    if (access(REAL_SMOLLM2, R_OK) != 0) {
        snap_close(f);
        TEST_SKIP("%s not present (run `make model`): cannot compare the tensor table", REAL_SMOLLM2);
    }
    REQUIRE(snap_open(REAL_SMOLLM2, &real, &err) == 0);
    CHECK_INT(snap_n_tensors(f), snap_n_tensors(real));
    const snap_config *a = snap_get_config(f), *b = snap_get_config(real);
    CHECK_INT(a->n_embd, b->n_embd);
    CHECK_INT(a->n_head, b->n_head);
    CHECK_INT(a->n_head_kv, b->n_head_kv);
    CHECK_INT(a->head_dim, b->head_dim);
    CHECK_INT(a->n_ff, b->n_ff);
    CHECK_INT(a->n_vocab, b->n_vocab);
    CHECK_INT(a->flags, b->flags);
    CHECK_INT(snap_image_size(f), snap_image_size(real));
    for (size_t i = 0; i < snap_n_tensors(real); i++) {
        const snap_tensor *r = snap_tensor_at(real, i), *s = snap_tensor_find(f, r->name);
        if (!s) {
            fprintf(stderr, "  synthetic lacks '%s'\n", r->name);
            CHECK(s != NULL);
            continue;
        }
        CHECK_INT(s->dtype, r->dtype);
        CHECK_INT(s->n_dims, r->n_dims);
        for (uint32_t d = 0; d < SNAP_MAX_DIMS; d++)
            CHECK_INT(s->shape[d], r->shape[d]);
        CHECK_INT(s->size, r->size);
    }
    snap_close(real);
    snap_close(f);
}

static void test_smollm2_forward_cpu(void)
{
    char p[128];
    tmp_path(p, sizeof p, "smollm2.thaw");
    if (access(p, R_OK) != 0) {
        snap_pack_opts o = {.quant = SNAP_QUANT_Q4};
        REQUIRE(snap_pack_synthetic("smollm2-135m", p, &o, NULL) == 0);
    }
    eng_model_opts mo = {.device = "cpu", .n_threads = 2, .n_ctx = 64, .max_batch_tokens = 16};
    eng_model *m = NULL;
    eng_err err = {{0}};
    int rc = eng_model_open(p, &mo, &m, NULL, &err);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    REQUIRE(rc == 0);
    int32_t ids[32];
    long n = eng_tokenize(eng_model_tokenizer(m), "Hello, world!", 13, 1, 0, ids, 32);
    CHECK_INT(n, 13); /* no merges: one token per byte */
    REQUIRE(n > 0 && n <= 32);
    CHECK(eng_model_chat(m) != NULL); /* ChatML recognised */
    eng_seq *s = NULL;
    REQUIRE(eng_seq_create(m, &s, &err) == 0);
    uint32_t V = eng_model_config(m)->n_vocab;
    float *logits = malloc((size_t)V * sizeof *logits);
    REQUIRE(logits);
    CHECK_INT(eng_seq_eval(s, ids, (uint32_t)n, 0, logits, &err), 0);
    int finite = 1;
    double sumsq = 0;
    for (uint32_t i = 0; i < V; i++) {
        finite &= isfinite(logits[i]);
        sumsq += (double)logits[i] * logits[i];
    }
    CHECK(finite);
    CHECK(sumsq > 0); /* random weights give non-degenerate logits */
    int32_t next = ids[0];
    CHECK_INT(eng_seq_eval(s, &next, 1, 0, logits, &err), 0); /* one decode step */
    for (uint32_t i = 0; i < V; i++)
        finite &= isfinite(logits[i]);
    CHECK(finite);
    free(logits);
    eng_seq_destroy(s);
    eng_model_close(m);
}

static void test_qwen05_packs_cuda_layout(void)
{
    char p[128];
    tmp_path(p, sizeof p, "qwen05.thaw");
    snap_pack_opts o = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CUDA};
    snap_err err = {{0}};
    int rc = snap_pack_synthetic("qwen2.5-0.5b", p, &o, &err);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    REQUIRE(rc == 0);
    snap_file *f = NULL;
    rc = snap_open(p, &f, &err);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    REQUIRE(rc == 0);
    const snap_config *c = snap_get_config(f);
    CHECK_INT(c->arch, SNAP_ARCH_QWEN2);
    CHECK_INT(c->n_layer, 24);
    CHECK_INT(c->n_embd, 896);
    CHECK_INT(c->n_head, 14);
    CHECK_INT(c->n_head_kv, 2);
    CHECK_INT(c->n_ff, 4864);
    CHECK_INT(c->n_vocab, 151936);
    CHECK_INT(c->flags, SNAP_FLAG_TIED_EMBED | SNAP_FLAG_QKV_BIAS);
    CHECK_NEAR(c->rope_theta, 1e6, 1);
    CHECK_INT(snap_target(f), SNAP_TARGET_CUDA);
    const snap_tensor *q = snap_tensor_find(f, "blk.0.attn_q.weight");
    REQUIRE(q);
    CHECK_INT(q->dtype, SNAP_Q4);
    CHECK_INT(q->layout, SNAP_LAYOUT_SPLIT);
    CHECK(snap_tensor_find(f, "blk.23.attn_v.bias") != NULL);
    CHECK(snap_tensor_find(f, "output.weight") == NULL);
    CHECK_INT(snap_verify(f, NULL, NULL, &err), 0);
    snap_close(f);
    unlink(p);
}

int main(void)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/thaw-synth-XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    TEST_RUN(test_param_counts);
    TEST_RUN(test_big_planned_bytes);
    TEST_RUN(test_smollm2_matches_real);
    TEST_RUN(test_smollm2_forward_cpu);
    TEST_RUN(test_qwen05_packs_cuda_layout);
    char p[128];
    tmp_path(p, sizeof p, "smollm2.thaw");
    unlink(p);
    rmdir(tmp_dir);
    TEST_END();
}
