/* synth.c -- synthetic models: random weights with the exact shapes of real models.
 *
 * Why: the device machines have no internet, yet load time, decode speed and KV sizing must be
 * measured at real sizes (an 8B model is ~4.5 GB of int4). A synthetic snapshot has the real
 * config, tensor names, shapes and stored types (the packer's policy applies as to any f32
 * source), a byte-level vocabulary of the real size and random weights.
 *
 * Weights are never materialised: every tensor is an SRC_F32 source with a generator
 * (snap_src_tensor.gen) that draws a row from a generator seeded by the tensor's name and the
 * row, so packing needs no more memory than the packer's own per-tensor buffers. Values:
 * matrices uniform in [-0.05, 0.05) times a magnitude that changes every 16 values (1/2 .. 2),
 * so that activations stay in range through many layers and quantization blocks' scales vary
 * as a real model's do; norm weights 1; biases as matrices. Rows share no runs of values, and
 * the scales vary: a synthetic snapshot's chunks are stored raw, as a real model's are, so
 * a load measured on them copies what a real one copies.
 *
 * Vocabulary: token i < 256 is byte i in the GPT-2 byte-to-character spelling (any text
 * tokenizes, byte by byte, with no merges), then "<tok_N>" fillers, then three ChatML control
 * tokens at the end: <|endoftext|>, <|im_start|>, <|im_end|> (= eos); a ChatML template.
 */
#include "internal.h"

#include <stdint.h>

typedef struct synth_spec {
    const char *name, *display;
    uint32_t arch, n_vocab, n_ctx, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    uint32_t rope_style, rope_scaling, rope_orig_ctx, flags, pre, add_bos;
    float rope_theta, rope_factor, rope_low, rope_high, rms_eps;
} synth_spec;

/* Shapes from each model's config.json (Hugging Face). Llama-3-8B carries the Llama 3.1 rope
 * scaling the task asks for; its trained context stays 8192 so default KV sizing is sane. */
static const synth_spec synth_specs[] = {
    {"smollm2-135m", "SmolLM2-135M-synthetic", SNAP_ARCH_LLAMA, 49152, 8192, 576, 30, 9, 3, 64, 1536,
     SNAP_ROPE_NORM, SNAP_ROPE_SCALING_NONE, 0, SNAP_FLAG_TIED_EMBED, SNAP_PRE_SMOLLM, 0,
     100000.0f, 1.0f, 0, 0, 1e-5f},
    {"qwen2.5-0.5b", "Qwen2.5-0.5B-synthetic", SNAP_ARCH_QWEN2, 151936, 32768, 896, 24, 14, 2, 64, 4864,
     SNAP_ROPE_NEOX, SNAP_ROPE_SCALING_NONE, 0, SNAP_FLAG_TIED_EMBED | SNAP_FLAG_QKV_BIAS, SNAP_PRE_QWEN2, 0,
     1000000.0f, 1.0f, 0, 0, 1e-6f},
    {"qwen2.5-7b", "Qwen2.5-7B-synthetic", SNAP_ARCH_QWEN2, 152064, 32768, 3584, 28, 28, 4, 128, 18944,
     SNAP_ROPE_NEOX, SNAP_ROPE_SCALING_NONE, 0, SNAP_FLAG_QKV_BIAS, SNAP_PRE_QWEN2, 0,
     1000000.0f, 1.0f, 0, 0, 1e-6f},
    {"llama-3-8b", "Llama-3-8B-synthetic", SNAP_ARCH_LLAMA, 128256, 8192, 4096, 32, 32, 8, 128, 14336,
     SNAP_ROPE_NEOX, SNAP_ROPE_SCALING_LLAMA3, 8192, 0, SNAP_PRE_LLAMA3, 1,
     500000.0f, 8.0f, 1.0f, 4.0f, 1e-5f},
};
#define N_SPECS (sizeof synth_specs / sizeof synth_specs[0])

static const char *const synth_names[N_SPECS + 1] = {"smollm2-135m", "qwen2.5-0.5b", "qwen2.5-7b", "llama-3-8b", NULL};

const char *const *snap_synthetic_names(void) { return synth_names; }

static const char synth_chatml[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* xorshift64*: 24 random bits as a float in [0, 1) */
static float synth_uniform(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    uint32_t r = (uint32_t)((*x * 2685821657736338717ull) >> 40);
    return (float)r / (float)(1u << 24);
}

static void synth_gen(const snap_src_tensor *t, uint64_t row, float *out, uint64_t cols)
{
    static const char norm[] = "_norm.weight";
    size_t len = strlen(t->name), k = sizeof norm - 1;
    if (len > k && !strcmp(t->name + len - k, norm)) { /* attn_norm, ffn_norm, output_norm */
        for (uint64_t i = 0; i < cols; i++)
            out[i] = 1.0f;
        return;
    }
    /* the same weights on every machine: seeded by name and row only */
    uint64_t x = (hash_name(t->name) ^ (row + 1) * 0x9E3779B97F4A7C15ull) | 1;
    float g = 1.0f;
    for (uint64_t i = 0; i < cols; i++) {
        if (i % 16 == 0)
            g = exp2f(2.0f * synth_uniform(&x) - 1.0f);
        out[i] = (synth_uniform(&x) - 0.5f) * 0.1f * g;
    }
}

/* GPT-2's byte-to-character map: printable bytes stand for themselves, the others are
 * shifted to U+0100 onwards. Writes the UTF-8 of byte b's character; returns its length. */
static int gpt2_byte_utf8(unsigned b, char *out)
{
    unsigned cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        unsigned n = 0; /* rank of b among the shifted bytes */
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255)))
                n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static int synth_vocab(const synth_spec *s, snap_src_model *m, snap_err *err)
{
    uint32_t n = s->n_vocab;
    static const char *const specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    uint32_t *offsets = malloc((n + 1ull) * sizeof *offsets);
    if (!offsets || snap_src_own(m, offsets)) {
        free(offsets);
        return snap_fail(err, SNAP_ENOMEM, "synthetic %s: out of memory for the vocabulary", s->name);
    }
    uint8_t *types = malloc(n);
    if (!types || snap_src_own(m, types)) {
        free(types);
        return snap_fail(err, SNAP_ENOMEM, "synthetic %s: out of memory for the vocabulary", s->name);
    }
    char *blob = malloc((size_t)n * 16 + 64); /* "<tok_4194303>" is 13 bytes */
    if (!blob || snap_src_own(m, blob)) {
        free(blob);
        return snap_fail(err, SNAP_ENOMEM, "synthetic %s: out of memory for the vocabulary", s->name);
    }
    uint32_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
        offsets[i] = pos;
        types[i] = SNAP_TOKT_NORMAL;
        if (i < 256) {
            pos += (uint32_t)gpt2_byte_utf8(i, blob + pos);
        } else if (i >= n - 3) {
            const char *sp = specials[i - (n - 3)];
            memcpy(blob + pos, sp, strlen(sp));
            pos += (uint32_t)strlen(sp);
            types[i] = SNAP_TOKT_CONTROL;
        } else {
            pos += (uint32_t)sprintf(blob + pos, "<tok_%u>", i);
        }
    }
    offsets[n] = pos;
    snap_vocab *v = &m->vocab;
    v->model = SNAP_TOK_BPE;
    v->pre = s->pre;
    v->n_tokens = n;
    v->n_merges = 0;
    v->bos_id = s->add_bos ? (int32_t)(n - 3) : -1;
    v->eos_id = (int32_t)(n - 1);
    v->eot_id = -1;
    v->unk_id = -1;
    v->pad_id = -1;
    v->add_bos = (uint8_t)s->add_bos;
    v->offsets = offsets;
    v->blob = blob;
    v->types = types;
    return 0;
}

static int add(snap_src_model *m, const char *name, uint64_t d0, uint64_t d1)
{
    snap_src_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.type = SRC_F32;
    t.n_dims = d1 ? 2 : 1;
    t.shape[0] = d0;
    t.shape[1] = d1;
    t.gen = synth_gen;
    return snap_src_add_tensor(m, &t);
}

int snap_synth_model(const char *name, snap_src_model *m, snap_err *err)
{
    const synth_spec *s = NULL;
    for (size_t i = 0; i < N_SPECS; i++)
        if (name && !strcmp(name, synth_specs[i].name))
            s = &synth_specs[i];
    if (!s)
        return snap_fail(err, SNAP_EARG, "unknown synthetic model '%s' (smollm2-135m, qwen2.5-0.5b, qwen2.5-7b, "
                         "llama-3-8b)", name ? name : "(null)");
    snap_config *c = &m->config;
    memset(c, 0, sizeof *c);
    c->arch = s->arch;
    c->n_vocab = s->n_vocab;
    c->n_ctx_train = s->n_ctx;
    c->n_embd = s->n_embd;
    c->n_layer = s->n_layer;
    c->n_head = s->n_head;
    c->n_head_kv = s->n_head_kv;
    c->head_dim = s->head_dim;
    c->n_ff = s->n_ff;
    c->rope_style = s->rope_style;
    c->rope_scaling = s->rope_scaling;
    c->rope_orig_ctx = s->rope_orig_ctx;
    c->rope_theta = s->rope_theta;
    c->rope_factor = s->rope_factor;
    c->rope_low_freq_factor = s->rope_low;
    c->rope_high_freq_factor = s->rope_high;
    c->rms_eps = s->rms_eps;
    c->flags = s->flags;
    snprintf(c->name, sizeof c->name, "%s", s->display);
    m->gen = (snap_gen_defaults){.temperature = NAN, .top_p = NAN, .top_k = -1, .repetition_penalty = NAN};
    m->chat_template = strdup(synth_chatml);
    if (!m->chat_template)
        return snap_fail(err, SNAP_ENOMEM, "synthetic %s: out of memory", s->name);
    int rc = synth_vocab(s, m, err);
    if (rc)
        return rc;

    uint64_t E = s->n_embd, Q = (uint64_t)s->n_head * s->head_dim, KV = (uint64_t)s->n_head_kv * s->head_dim;
    char n[SNAP_NAME_MAX];
    int bias = (s->flags & SNAP_FLAG_QKV_BIAS) != 0;
    if ((rc = add(m, "token_embd.weight", s->n_vocab, E)))
        goto nomem;
    for (uint32_t l = 0; l < s->n_layer; l++) {
        static const struct { const char *suffix; int bias; int d0, d1; } want[] = {
            /* 0 = none, 1 = n_embd, 2 = q rows, 3 = kv rows, 4 = n_ff */
            {"attn_norm.weight", 0, 1, 0}, {"attn_q.weight", 0, 2, 1}, {"attn_k.weight", 0, 3, 1},
            {"attn_v.weight", 0, 3, 1},    {"attn_output.weight", 0, 1, 2},
            {"attn_q.bias", 1, 2, 0},      {"attn_k.bias", 1, 3, 0}, {"attn_v.bias", 1, 3, 0},
            {"ffn_norm.weight", 0, 1, 0},  {"ffn_gate.weight", 0, 4, 1},
            {"ffn_up.weight", 0, 4, 1},    {"ffn_down.weight", 0, 1, 4},
        };
        const uint64_t dim[5] = {0, E, Q, KV, s->n_ff};
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            if (want[i].bias && !bias)
                continue;
            snprintf(n, sizeof n, "blk.%u.%s", l, want[i].suffix);
            if ((rc = add(m, n, dim[want[i].d0], dim[want[i].d1])))
                goto nomem;
        }
    }
    if ((rc = add(m, "output_norm.weight", E, 0)))
        goto nomem;
    if (!(s->flags & SNAP_FLAG_TIED_EMBED) && (rc = add(m, "output.weight", s->n_vocab, E)))
        goto nomem;
    return snap_src_validate(m, s->name, err);
nomem:
    return snap_fail(err, SNAP_ENOMEM, "synthetic %s: out of memory", s->name);
}

int snap_pack_synthetic(const char *name, const char *out, const snap_pack_opts *opts, snap_err *err)
{
    snap_src_model m;
    snap_src_init(&m);
    int rc = snap_synth_model(name, &m, err);
    if (rc == 0)
        rc = snap_pack_model(&m, out, opts, err);
    snap_src_free(&m);
    return rc;
}
