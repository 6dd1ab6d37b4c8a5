/* test_hf.c -- the Hugging Face folder reader (snapshot/hf.c) against the fixtures that
 * tests/ref/make_hf_fixtures.py writes with the official safetensors and tokenizers
 * packages, plus malformed variants built here in temporary folders. */
#include "internal.h"
#include "test.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLAMA_DIR TEST_DATA("hf/llama-tiny")
#define QWEN2_DIR TEST_DATA("hf/qwen2-tiny")

static const char *tok_text(const snap_vocab *v, uint32_t id, char *buf, size_t cap)
{
    if (id >= v->n_tokens)
        return "(out of range)";
    uint32_t n = v->offsets[id + 1] - v->offsets[id];
    snprintf(buf, cap, "%.*s", (int)n, v->blob + v->offsets[id]);
    return buf;
}

static int32_t tok_id(const snap_vocab *v, const char *s)
{
    size_t len = strlen(s);
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (v->offsets[i + 1] - v->offsets[i] == len && memcmp(v->blob + v->offsets[i], s, len) == 0)
            return (int32_t)i;
    return -1;
}

#define CHECK_TOKEN(v, id, text)                                \
    do {                                                        \
        char tb_[128];                                          \
        CHECK_STR(tok_text((v), (id), tb_, sizeof tb_), (text));  \
    } while (0)

static float tensor_value(const snap_src_tensor *t, uint64_t i)
{
    uint16_t h;
    float f;
    switch (t->type) {
    case SRC_F32:
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    case SRC_F16:
        memcpy(&h, t->data + 2 * i, 2);
        return snap_f16_to_f32(h);
    case SRC_BF16:
        memcpy(&h, t->data + 2 * i, 2);
        return snap_bf16_to_f32(h);
    default:
        return NAN;
    }
}

/* Compare values against ref_values.txt, written from the safetensors package's reader. */
static void check_ref_values(const snap_src_model *m, const char *dir)
{
    char path[512], line[256];
    snprintf(path, sizeof path, "%s/ref_values.txt", dir);
    FILE *f = fopen(path, "r");
    REQUIRE(f != NULL);
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char name[SNAP_NAME_MAX];
        unsigned long long idx;
        double want;
        if (line[0] == '#' || sscanf(line, "%63s %llu %lf", name, &idx, &want) != 3)
            continue;
        const snap_src_tensor *t = snap_src_find(m, name);
        CHECK(t != NULL);
        if (!t)
            continue;
        uint64_t numel = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            numel *= t->shape[d];
        CHECK(idx < numel);
        if (idx < numel)
            CHECK_NEAR(tensor_value(t, idx), want, 0.0);
        n++;
    }
    fclose(f);
    CHECK(n >= 6);
}

static void check_tensor(const snap_src_model *m, const char *name, uint32_t type, uint32_t n_dims, uint64_t d0,
                         uint64_t d1)
{
    const snap_src_tensor *t = snap_src_find(m, name);
    if (!t) {
        fprintf(stderr, "  missing tensor %s\n", name);
        CHECK(t != NULL);
        return;
    }
    CHECK_INT(t->type, type);
    CHECK_INT(t->n_dims, n_dims);
    CHECK_INT(t->shape[0], d0);
    uint64_t numel = d0;
    if (n_dims > 1) {
        CHECK_INT(t->shape[1], d1);
        numel *= d1;
    }
    CHECK_INT(t->n_bytes, numel * (type == SRC_F32 ? 4 : 2));
}

static int read_ok(const char *dir, snap_src_model *m)
{
    snap_err err = {{0}};
    snap_src_init(m);
    int rc = snap_read_hf(dir, m, &err);
    if (rc != 0)
        fprintf(stderr, "  snap_read_hf(%s) = %d: %s\n", dir, rc, err.msg);
    return rc;
}

/* ---- the good fixtures --------------------------------------------------------------- */

static void test_llama_tiny(void)
{
    snap_src_model m;
    if (read_ok(LLAMA_DIR, &m) != 0) {
        CHECK(0);
        snap_src_free(&m);
        return;
    }
    const snap_config *c = &m.config;
    CHECK_INT(c->arch, SNAP_ARCH_LLAMA);
    CHECK_INT(c->n_vocab, 300);
    CHECK_INT(c->n_ctx_train, 2048);
    CHECK_INT(c->n_embd, 64);
    CHECK_INT(c->n_layer, 2);
    CHECK_INT(c->n_head, 4);
    CHECK_INT(c->n_head_kv, 2);
    CHECK_INT(c->head_dim, 16);
    CHECK_INT(c->n_ff, 128);
    CHECK_INT(c->rope_style, SNAP_ROPE_NEOX);
    CHECK_INT(c->rope_scaling, SNAP_ROPE_SCALING_LLAMA3);
    CHECK_NEAR(c->rope_factor, 8.0, 0);
    CHECK_NEAR(c->rope_low_freq_factor, 1.0, 0);
    CHECK_NEAR(c->rope_high_freq_factor, 4.0, 0);
    CHECK_INT(c->rope_orig_ctx, 8192);
    CHECK_NEAR(c->rope_theta, 500000.0, 0);
    CHECK_NEAR(c->rms_eps, 1e-5, 1e-12);
    CHECK_INT(c->flags, 0); /* own lm_head, no biases */
    CHECK_STR(c->name, "llama-tiny");

    /* 3 global + 9 per layer; rotary_emb.inv_freq is dropped */
    CHECK_INT(m.n_tensors, 3 + 2 * 9);
    for (size_t i = 0; i < m.n_tensors; i++)
        CHECK(strstr(m.tensors[i].name, "rotary") == NULL && strncmp(m.tensors[i].name, "model.", 6) != 0);
    check_tensor(&m, "token_embd.weight", SRC_BF16, 2, 300, 64);
    check_tensor(&m, "output.weight", SRC_BF16, 2, 300, 64);
    check_tensor(&m, "output_norm.weight", SRC_BF16, 1, 64, 0);
    check_tensor(&m, "blk.0.attn_norm.weight", SRC_BF16, 1, 64, 0);
    check_tensor(&m, "blk.1.attn_q.weight", SRC_BF16, 2, 64, 64);
    check_tensor(&m, "blk.1.attn_k.weight", SRC_BF16, 2, 32, 64);
    check_tensor(&m, "blk.1.attn_v.weight", SRC_BF16, 2, 32, 64);
    check_tensor(&m, "blk.0.attn_output.weight", SRC_BF16, 2, 64, 64);
    check_tensor(&m, "blk.1.ffn_norm.weight", SRC_BF16, 1, 64, 0);
    check_tensor(&m, "blk.0.ffn_gate.weight", SRC_BF16, 2, 128, 64);
    check_tensor(&m, "blk.0.ffn_up.weight", SRC_BF16, 2, 128, 64);
    check_tensor(&m, "blk.0.ffn_down.weight", SRC_BF16, 2, 64, 128);
    CHECK(snap_src_find(&m, "blk.0.attn_q.bias") == NULL);
    check_ref_values(&m, LLAMA_DIR);

    const snap_vocab *v = &m.vocab;
    CHECK_INT(v->model, SNAP_TOK_BPE);
    CHECK_INT(v->pre, SNAP_PRE_SMOLLM);
    CHECK_INT(v->n_tokens, 300); /* 296 trained + <think>, padded to vocab_size */
    CHECK_TOKEN(v, 0, "<|endoftext|>");
    CHECK_TOKEN(v, 1, "<|im_start|>");
    CHECK_TOKEN(v, 2, "<|im_end|>");
    CHECK_TOKEN(v, 3, "!");
    CHECK_TOKEN(v, 223, "Ġ");
    CHECK_TOKEN(v, 259, "Ġt");
    CHECK_TOKEN(v, 279, "Ġthere");
    CHECK_TOKEN(v, 296, "<think>");
    CHECK_TOKEN(v, 297, "<unused_297>");
    CHECK_TOKEN(v, 299, "<unused_299>");
    CHECK_INT(v->types[0], SNAP_TOKT_CONTROL);
    CHECK_INT(v->types[2], SNAP_TOKT_CONTROL);
    CHECK_INT(v->types[3], SNAP_TOKT_NORMAL);
    CHECK_INT(v->types[259], SNAP_TOKT_NORMAL);
    CHECK_INT(v->types[296], SNAP_TOKT_USER_DEFINED);
    CHECK_INT(v->types[297], SNAP_TOKT_UNUSED);
    CHECK(v->scores == NULL);
    /* legacy "a b" merges, in rank order */
    CHECK_INT(v->n_merges, 37);
    if (v->n_merges == 37) {
        CHECK_INT(v->merges[0], tok_id(v, "Ġ"));
        CHECK_INT(v->merges[1], tok_id(v, "t"));
        CHECK_INT(v->merges[2], 259); /* "Ġt h" */
        CHECK_INT(v->merges[3], tok_id(v, "h"));
        CHECK_INT(v->merges[2 * 36], tok_id(v, "l"));
        CHECK_INT(v->merges[2 * 36 + 1], tok_id(v, "lo"));
    }
    CHECK_INT(v->bos_id, 1);
    CHECK_INT(v->eos_id, 2); /* eos_token given as {"content": ...} */
    CHECK_INT(v->eot_id, 2);
    CHECK_INT(v->unk_id, 0);
    CHECK_INT(v->pad_id, 2);
    CHECK_INT(v->add_bos, 0);
    CHECK_INT(v->add_eos, 0);
    CHECK_INT(v->add_space_prefix, 0);

    CHECK_CONTAINS(m.chat_template, "{% for message in messages %}{{'<|im_start|>'");
    CHECK_CONTAINS(m.chat_template, "'<|im_start|>assistant\\n'");
    CHECK_NEAR(m.gen.temperature, 0.2, 1e-7);
    CHECK_NEAR(m.gen.top_p, 0.9, 1e-7);
    CHECK_INT(m.gen.top_k, -1);
    CHECK(isnan(m.gen.repetition_penalty));
    CHECK_INT(m.gen.n_stop_ids, 0); /* eos_token_id 2 is eos itself */
    snap_src_free(&m);
}

static void test_qwen2_tiny(void)
{
    snap_src_model m;
    if (read_ok(QWEN2_DIR, &m) != 0) {
        CHECK(0);
        snap_src_free(&m);
        return;
    }
    const snap_config *c = &m.config;
    CHECK_INT(c->arch, SNAP_ARCH_QWEN2);
    CHECK_INT(c->flags, SNAP_FLAG_TIED_EMBED | SNAP_FLAG_QKV_BIAS);
    CHECK_INT(c->n_vocab, 288);
    CHECK_INT(c->n_ctx_train, 4096);
    CHECK_INT(c->n_embd, 64);
    CHECK_INT(c->n_layer, 2);
    CHECK_INT(c->n_head, 4);
    CHECK_INT(c->n_head_kv, 2);
    CHECK_INT(c->head_dim, 16);
    CHECK_INT(c->n_ff, 128);
    CHECK_INT(c->rope_style, SNAP_ROPE_NEOX);
    CHECK_INT(c->rope_scaling, SNAP_ROPE_SCALING_NONE); /* "rope_scaling": null */
    CHECK_NEAR(c->rope_factor, 1.0, 0);
    CHECK_NEAR(c->rope_theta, 1e6, 0);
    CHECK_NEAR(c->rms_eps, 1e-6, 1e-13);
    CHECK_STR(c->name, "qwen2-tiny");

    /* two shards: 2 global + 12 per layer, no output.weight */
    CHECK_INT(m.n_tensors, 2 + 2 * 12);
    CHECK(snap_src_find(&m, "output.weight") == NULL);
    check_tensor(&m, "token_embd.weight", SRC_F16, 2, 288, 64);
    check_tensor(&m, "output_norm.weight", SRC_F16, 1, 64, 0); /* from shard 2 */
    check_tensor(&m, "blk.0.attn_q.weight", SRC_F16, 2, 64, 64);
    check_tensor(&m, "blk.0.attn_q.bias", SRC_F16, 1, 64, 0);
    check_tensor(&m, "blk.1.attn_k.bias", SRC_F16, 1, 32, 0);
    check_tensor(&m, "blk.1.attn_v.bias", SRC_F16, 1, 32, 0);
    check_tensor(&m, "blk.1.ffn_down.weight", SRC_F16, 2, 64, 128);
    check_ref_values(&m, QWEN2_DIR);

    const snap_vocab *v = &m.vocab;
    CHECK_INT(v->model, SNAP_TOK_BPE);
    CHECK_INT(v->pre, SNAP_PRE_QWEN2);
    CHECK_INT(v->n_tokens, 288);
    CHECK_TOKEN(v, 3, "$");
    CHECK_TOKEN(v, 220, "Ġ");
    CHECK_TOKEN(v, 258, "er");
    CHECK_TOKEN(v, 279, "Ġworld");
    CHECK_TOKEN(v, 280, "<|endoftext|>");
    CHECK_TOKEN(v, 282, "<|im_end|>");
    CHECK_TOKEN(v, 283, "<unused_283>");
    CHECK_TOKEN(v, 287, "<unused_287>");
    CHECK_INT(v->types[279], SNAP_TOKT_NORMAL);
    CHECK_INT(v->types[281], SNAP_TOKT_CONTROL);
    CHECK_INT(v->types[287], SNAP_TOKT_UNUSED);
    /* [a, b] merges */
    CHECK_INT(v->n_merges, 24);
    if (v->n_merges == 24) {
        CHECK_INT(v->merges[0], 220);
        CHECK_INT(v->merges[1], tok_id(v, "t"));
        CHECK_INT(v->merges[2 * 23], tok_id(v, "Ġwor"));
        CHECK_INT(v->merges[2 * 23 + 1], tok_id(v, "ld"));
    }
    CHECK_INT(v->bos_id, -1);
    CHECK_INT(v->eos_id, 282);
    CHECK_INT(v->eot_id, 282);
    CHECK_INT(v->pad_id, 280);
    CHECK_INT(v->unk_id, -1);
    CHECK_INT(v->add_bos, 0);
    CHECK_INT(v->add_eos, 0);

    /* a list of named templates: "default" wins over the first */
    CHECK_CONTAINS(m.chat_template, "<|im_start|>");
    CHECK(m.chat_template && strstr(m.chat_template, "tools") == NULL);
    CHECK_NEAR(m.gen.temperature, 0.7, 1e-7);
    CHECK_NEAR(m.gen.top_p, 0.8, 1e-7);
    CHECK_INT(m.gen.top_k, 20);
    CHECK_NEAR(m.gen.repetition_penalty, 1.05, 1e-7);
    CHECK_INT(m.gen.n_stop_ids, 1); /* [282, 280]: 282 is eos */
    CHECK_INT(m.gen.stop_ids[0], 280);
    snap_src_free(&m);
}

/* ---- failures ------------------------------------------------------------------------ */

static void expect_fail(const char *dir, int code, const char *in_msg1, const char *in_msg2)
{
    snap_src_model m;
    snap_err err = {{0}};
    snap_src_init(&m);
    int rc = snap_read_hf(dir, &m, &err);
    if (getenv("TEST_VERBOSE"))
        fprintf(stderr, "  %d: %s\n", rc, err.msg);
    CHECK_INT(rc, code);
    if (in_msg1)
        CHECK_CONTAINS(err.msg, in_msg1);
    if (in_msg2)
        CHECK_CONTAINS(err.msg, in_msg2);
    snap_src_free(&m);
}

static void test_bad_fixtures(void)
{
    expect_fail(TEST_DATA("hf/bad-model-type"), SNAP_EUNSUPPORTED, "bad-model-type/config.json",
                "unsupported model_type 'gpt2'");
    expect_fail(TEST_DATA("hf/bad-truncated"), SNAP_EFORMAT, "bad-truncated/model.safetensors", "header length");
    expect_fail(TEST_DATA("hf/bad-offsets"), SNAP_EFORMAT, "bad-offsets/model.safetensors",
                "'model.embed_tokens.weight': data_offsets [0, 38400]");
    expect_fail(TEST_DATA("hf/no-such-folder"), SNAP_EIO, "no-such-folder/config.json", NULL);
}

/* ---- variants built in a temporary folder -------------------------------------------- */

/* A folder holding the given files (text == NULL: a link to llama-tiny's copy). */
typedef struct tmp_dir {
    char path[256];
} tmp_dir;

static const char *const tmp_names[] = {
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
};

static void tmp_clear(tmp_dir *d)
{
    char p[512];
    for (size_t i = 0; i < sizeof tmp_names / sizeof tmp_names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", d->path, tmp_names[i]);
        unlink(p);
    }
}

static int tmp_put(tmp_dir *d, const char *name, const char *text, size_t len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", d->path, name);
    unlink(p);
    if (!text) {
        char src[256], abs_src[PATH_MAX];
        snprintf(src, sizeof src, "%s/%s", LLAMA_DIR, name);
        if (!realpath(src, abs_src))
            return -1;
        return symlink(abs_src, p);
    }
    FILE *f = fopen(p, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(text, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

static int tmp_text(tmp_dir *d, const char *name, const char *text)
{
    return tmp_put(d, name, text, text ? strlen(text) : 0);
}

/* llama-tiny's config for a model_type, with `extra` keys appended. */
static const char *const base_config =
    "{\"model_type\": \"%s\", \"vocab_size\": 300, \"max_position_embeddings\": 2048, \"hidden_size\": 64, "
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 128, "
    "\"rms_norm_eps\": 1e-5%s}";

static int put_config(tmp_dir *d, const char *type, const char *extra)
{
    char buf[1024];
    snprintf(buf, sizeof buf, base_config, type, extra);
    return tmp_text(d, "config.json", buf);
}

/* A folder with llama-tiny's weights and tokenizer but no optional files. */
static int tmp_setup(tmp_dir *d, const char *type, const char *config_extra)
{
    tmp_clear(d);
    if (put_config(d, type, config_extra) || tmp_text(d, "model.safetensors", NULL) ||
        tmp_text(d, "tokenizer.json", NULL))
        return -1;
    return 0;
}

/* A safetensors file from a header and `data_len` zero bytes. */
static int put_safetensors(tmp_dir *d, const char *header, size_t data_len)
{
    size_t hlen = strlen(header), n = 8 + hlen + data_len;
    char *buf = calloc(1, n);
    if (!buf)
        return -1;
    for (int i = 0; i < 8; i++)
        buf[i] = (char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    int rc = tmp_put(d, "model.safetensors", buf, n);
    free(buf);
    return rc;
}

static tmp_dir g_tmp;

static void test_config_variants(void)
{
    tmp_dir *d = &g_tmp;
    snap_src_model m;

    /* linear RoPE scaling, "type" spelling; no tokenizer_config / generation_config */
    REQUIRE(tmp_setup(d, "llama", ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}") == 0);
    if (read_ok(d->path, &m) == 0) {
        CHECK_INT(m.config.rope_scaling, SNAP_ROPE_SCALING_LINEAR);
        CHECK_NEAR(m.config.rope_factor, 2.0, 0);
        CHECK_NEAR(m.config.rope_theta, 10000.0, 0); /* default */
        CHECK_INT(m.config.n_head_kv, 2);
        CHECK(m.chat_template == NULL);
        CHECK_INT(m.vocab.bos_id, -1);
        CHECK_INT(m.vocab.eos_id, -1);
        CHECK_INT(m.vocab.eot_id, 2); /* found by name */
        CHECK_INT(m.vocab.add_bos, 0);
        CHECK(isnan(m.gen.temperature));
        CHECK_INT(m.gen.top_k, -1);
    } else {
        CHECK(0);
    }
    snap_src_free(&m);

    /* mistral is the llama architecture; a tied config drops the stored lm_head */
    REQUIRE(tmp_setup(d, "mistral", ", \"tie_word_embeddings\": true") == 0);
    if (read_ok(d->path, &m) == 0) {
        CHECK_INT(m.config.arch, SNAP_ARCH_LLAMA);
        CHECK_INT(m.config.flags, SNAP_FLAG_TIED_EMBED);
        CHECK(snap_src_find(&m, "output.weight") == NULL);
        CHECK_INT(m.n_tensors, 2 + 2 * 9);
    } else {
        CHECK(0);
    }
    snap_src_free(&m);

    REQUIRE(tmp_setup(d, "llama", ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}") == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/config.json", "'yarn'");

    REQUIRE(tmp_setup(d, "llama", "") == 0);
    REQUIRE(tmp_text(d, "config.json", "{\"model_type\": \"llama\", \"vocab_size\": 300, "
                                       "\"max_position_embeddings\": 2048, \"num_hidden_layers\": 2}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/config.json", "'hidden_size'");

    REQUIRE(tmp_setup(d, "llama", "") == 0);
    REQUIRE(tmp_text(d, "config.json", "{\"model_type\": \"llama\", \"vocab_size\": 300, "
                                       "\"max_position_embeddings\": 2048, \"hidden_size\": 64, "
                                       "\"num_hidden_layers\": 2, \"num_attention_heads\": \"4\"}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/config.json", "'num_attention_heads'");

    REQUIRE(tmp_setup(d, "llama", "") == 0);
    REQUIRE(tmp_text(d, "config.json", "{\"model_type\": \"llama\", \"vocab_size\": 300,") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/config.json", "not valid JSON");

    /* tokenizer_config naming a token the vocabulary lacks */
    REQUIRE(tmp_setup(d, "llama", "") == 0);
    REQUIRE(tmp_text(d, "tokenizer_config.json", "{\"eos_token\": \"</s>\"}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/tokenizer_config.json", "'</s>'");
    tmp_clear(d);
}

static void test_safetensors_variants(void)
{
    tmp_dir *d = &g_tmp;
    REQUIRE(tmp_setup(d, "llama", "") == 0);

    REQUIRE(put_safetensors(d, "{\"model.embed_tokens.weight\": {\"dtype\": \"I8\", \"shape\": [2], "
                               "\"data_offsets\": [0, 2]}}", 2) == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/model.safetensors", "'model.embed_tokens.weight': dtype 'I8'");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4], "
                               "\"data_offsets\": [0, 8]}}", 8) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "'model.norm.weight': 1-dim F32 shape holds 4 elements");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
                               "\"data_offsets\": [0, 0]}}", 0) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "over 2^64");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [2], "
                               "\"data_offsets\": [8, 4]}}", 16) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "data_offsets [8, 4]");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": {\"dtype\": \"F32\", \"shape\": [2], "
                               "\"data_offsets\": [-8, 0]}}", 16) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "'model.norm.weight'");

    REQUIRE(put_safetensors(d, "{\"model.layers.7.input_layernorm.weight\": {\"dtype\": \"F32\", \"shape\": [1], "
                               "\"data_offsets\": [0, 4]}}", 4) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "layer 7");

    REQUIRE(put_safetensors(d, "{\"model.layers.0.self_attn.q_proj.bias\": {\"dtype\": \"F32\", \"shape\": [1], "
                               "\"data_offsets\": [0, 4]}}", 4) == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/model.safetensors", "q_proj.bias");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": [1, 2]}", 0) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "'model.norm.weight'");

    REQUIRE(put_safetensors(d, "{\"model.norm.weight\": {\"dtype\": \"F32\"", 0) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", "not valid JSON");

    REQUIRE(tmp_put(d, "model.safetensors", "\x01\x02\x03", 3) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/model.safetensors", NULL);

    /* every tensor ignored or unknown: the reader passes, validation names what is missing */
    REQUIRE(put_safetensors(d, "{\"__metadata__\": {\"format\": \"pt\"}, \"model.rotary.inv_freq\": "
                               "{\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16) == 0);
    expect_fail(d->path, SNAP_EFORMAT, "missing tensor", NULL);

    /* no weights at all */
    char p[512];
    snprintf(p, sizeof p, "%s/model.safetensors", d->path);
    unlink(p);
    expect_fail(d->path, SNAP_EIO, "model.safetensors.index.json", NULL);
    tmp_clear(d);
}

static void test_tokenizer_variants(void)
{
    tmp_dir *d = &g_tmp;
    snap_src_model m;
    REQUIRE(tmp_setup(d, "llama", "") == 0);

    /* SentencePiece-style: byte fallback, <0xXX> tokens, BOS by default */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
                     " {\"id\": 1, \"content\": \"<s>\", \"special\": true},"
                     " {\"id\": 2, \"content\": \"</s>\", \"special\": true}],"
                     " \"pre_tokenizer\": null,"
                     " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": "
                     "{\"String\": \"\\u2581\"}, \"content\": \" \"}]},"
                     " \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, \"unk_token\": \"<unk>\","
                     " \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"<0x0A>\": 3, \"\\u2581\": 4, \"a\": 5,"
                     " \"\\u2581a\": 6}, \"merges\": [\"\\u2581 a\"]}}") == 0);
    REQUIRE(tmp_text(d, "tokenizer_config.json", "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}") == 0);
    if (read_ok(d->path, &m) == 0) {
        const snap_vocab *v = &m.vocab;
        CHECK_INT(v->model, SNAP_TOK_SPM);
        CHECK_INT(v->pre, SNAP_PRE_NONE);
        CHECK_INT(v->add_bos, 1);
        CHECK_INT(v->add_space_prefix, SNAP_SPACE_NONE); /* no Prepend normalizer, no Metaspace: none, as HF */
        CHECK_INT(v->types[0], SNAP_TOKT_UNKNOWN);
        CHECK_INT(v->types[1], SNAP_TOKT_CONTROL);
        CHECK_INT(v->types[3], SNAP_TOKT_BYTE);
        CHECK_INT(v->types[6], SNAP_TOKT_NORMAL);
        CHECK_INT(v->types[7], SNAP_TOKT_UNUSED);
        CHECK_TOKEN(v, 6, "\xe2\x96\x81" "a");
        CHECK_INT(v->unk_id, 0);
        CHECK_INT(v->bos_id, 1);
        CHECK_INT(v->eos_id, 2);
        CHECK_INT(v->eot_id, -1);
        CHECK_INT(v->n_merges, 1);
        CHECK_INT(v->n_tokens, 300);
    } else {
        CHECK(0);
    }
    snap_src_free(&m);

    /* where the "▁" before the text comes from: the legacy normalizer or a Metaspace step */
    static const struct {
        const char *normalizer, *pre;
        int space, split;
        const char *error; /* what the refusal names, for the rules that are refused */
    } rules[] = {
        {"{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, "
         "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]}",
         "null", SNAP_SPACE_LEGACY, 0, NULL},
        {"null", "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false}",
         SNAP_SPACE_FIRST, 0, NULL},
        {"null", "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"add_prefix_space\": true}", SNAP_SPACE_ALWAYS, 1, NULL},
        {"null", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Metaspace\", \"prepend_scheme\": \"never\"}]}",
         SNAP_SPACE_NONE, 1, NULL},
        {"null", "{\"type\": \"Metaspace\", \"prepend_scheme\": \"sometimes\"}", -1, 0, "prepend_scheme 'sometimes'"},
        {"null", "{\"type\": \"Metaspace\", \"add_prefix_space\": false, \"prepend_scheme\": \"first\"}", -1, 0,
         "contradicts prepend_scheme 'first'"},
        {"null", "{\"type\": \"Metaspace\", \"split\": \"yes\"}", -1, 0, "'split' must be true or false"},
        {"null", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Metaspace\"}, {\"type\": \"Digits\"}]}", -1, 0,
         "step 'Digits' is not supported"},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        char json[2048];
        snprintf(json, sizeof json,
                 "{\"normalizer\": %s, \"pre_tokenizer\": %s, \"model\": {\"type\": \"BPE\", \"byte_fallback\": true, "
                 "\"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"\\u2581\": 3, \"a\": 4}, \"merges\": []}}",
                 rules[i].normalizer, rules[i].pre);
        REQUIRE(tmp_text(d, "tokenizer.json", json) == 0);
        snap_err err;
        snap_src_init(&m);
        int rc = snap_read_hf(d->path, &m, &err);
        if (rules[i].space < 0) {
            CHECK(rc == SNAP_EUNSUPPORTED || rc == SNAP_EFORMAT);
            CHECK_CONTAINS(err.msg, rules[i].error);
        } else if (rc == 0) {
            CHECK_INT(m.vocab.model, SNAP_TOK_SPM);
            CHECK_INT(m.vocab.add_space_prefix, rules[i].space);
            CHECK_INT(m.vocab.spm_split, rules[i].split);
        } else {
            fprintf(stderr, "    rule %zu: %s\n", i, err.msg);
            CHECK(0);
        }
        snap_src_free(&m);
    }
    REQUIRE(tmp_text(d, "tokenizer_config.json", "{}") == 0);

    /* Llama 3: the Split regex with runs of 1-3 digits; BOS comes from the post-processor */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"added_tokens\": [{\"id\": 2, \"content\": \"<|begin_of_text|>\", \"special\": true}],"
                     " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                     "\"pattern\": {\"Regex\": \"(?i:'s|'t)|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+\"}, "
                     "\"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
                     "\"use_regex\": false}]},"
                     " \"post_processor\": {\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\"}, "
                     "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": "
                     "\"<|begin_of_text|>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}]}]},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": []}}") == 0);
    if (read_ok(d->path, &m) == 0) {
        CHECK_INT(m.vocab.model, SNAP_TOK_BPE);
        CHECK_INT(m.vocab.pre, SNAP_PRE_LLAMA3);
        CHECK_INT(m.vocab.add_bos, 1);
        CHECK_INT(m.vocab.n_merges, 0);
    } else {
        CHECK(0);
    }
    snap_src_free(&m);

    /* plain GPT-2 ByteLevel */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
                     " \"model\": {\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}") == 0);
    if (read_ok(d->path, &m) == 0) {
        CHECK_INT(m.vocab.pre, SNAP_PRE_GPT2);
        CHECK_INT(m.vocab.n_merges, 1);
        if (m.vocab.n_merges == 1) {
            CHECK_INT(m.vocab.merges[0], 0);
            CHECK_INT(m.vocab.merges[1], 1);
        }
    } else {
        CHECK(0);
    }
    snap_src_free(&m);

    /* a merge naming an unknown token */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
                     " \"merges\": [\"a b\", \"a zz\"]}}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/tokenizer.json", "merge 1");

    /* ids with a hole */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []}}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/tokenizer.json", "id 1");

    /* an id beyond config.json's vocab_size */
    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 300}, \"merges\": []}}") == 0);
    expect_fail(d->path, SNAP_EFORMAT, "/tokenizer.json", "'b'");

    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"Whitespace\"},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}") == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/tokenizer.json", "'Whitespace'");

    REQUIRE(tmp_text(d, "tokenizer.json",
                     "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \" ?\\\\p{N}+\"}},"
                     " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}") == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/tokenizer.json", "'Split'");

    REQUIRE(tmp_text(d, "tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}") == 0);
    expect_fail(d->path, SNAP_EUNSUPPORTED, "/tokenizer.json", "'Unigram'");
    tmp_clear(d);
}

int main(void)
{
    snprintf(g_tmp.path, sizeof g_tmp.path, "/tmp/thaw_test_hf.XXXXXX");
    if (!mkdtemp(g_tmp.path)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    TEST_RUN(test_llama_tiny);
    TEST_RUN(test_qwen2_tiny);
    TEST_RUN(test_bad_fixtures);
    TEST_RUN(test_config_variants);
    TEST_RUN(test_safetensors_variants);
    TEST_RUN(test_tokenizer_variants);
    tmp_clear(&g_tmp);
    rmdir(g_tmp.path);
    TEST_END();
}
