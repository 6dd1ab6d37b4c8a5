/* hf.c -- read a Hugging Face model folder into a snap_src_model.
 *
 * A folder holds config.json, the weights (model.safetensors, or shards listed by
 * model.safetensors.index.json), tokenizer.json, and optionally tokenizer_config.json and
 * generation_config.json.
 *
 * Design notes:
 *  1. Order matters: config.json first (it gives the layer count that bounds tensor names,
 *     whether lm_head is tied, and the vocab size the tokenizer is padded to), then the
 *     weights, then tokenizer.json, then the two optional files (they name tokens, so they
 *     need the vocabulary).
 *  2. Weights are never copied: each safetensors file is mapped read-only, registered with
 *     snap_src_own_map, and tensors point into the mapping. Tensor shapes stay as
 *     safetensors stores them (outermost first), which is snap_src_tensor's convention.
 *  3. Every byte read from the folder is untrusted. Each length, offset and count is
 *     checked, with overflow-safe arithmetic, before it is used; JSON numbers are doubles,
 *     so integers are accepted only when integral and below 2^53.
 *  4. Tokens are stored exactly as the source vocabulary spells them ("Ġthe", "▁the",
 *     "<0x0A>"): mapping bytes to that alphabet is the tokenizer's job, not the reader's.
 *  5. The vocabulary is dense 0..n-1 (vocab plus added_tokens) and padded with "<unused_N>"
 *     tokens up to config.json's vocab_size, because the embedding matrix has that many rows
 *     and the snapshot requires n_tokens == n_vocab.
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HF_PATH_MAX 4096
#define HF_TEXT_MAX (1ull << 30)         /* a JSON file larger than this is not a config */
#define ST_HEADER_MAX 100000000ull       /* the safetensors library's own header limit */
#define JSON_INT_MAX 9007199254740992.0  /* 2^53: the integers a double holds exactly */
#define SPM_SPACE "\xe2\x96\x81"         /* U+2581, SentencePiece's visible space */

/* State shared by the steps of one read. */
typedef struct hf_reader {
    const char *dir;
    snap_src_model *m;
    snap_err *err;
    snap_strmap map;   /* token text -> id over the source tokens (not the padding) */
    uint32_t n_src;    /* tokens defined by tokenizer.json (vocab + added_tokens) */
    bool tie_cfg;      /* config.json: tie_word_embeddings */
} hf_reader;

/* ---- files and JSON ----------------------------------------------------------------- */

static int path_join(char *out, const char *dir, const char *name, snap_err *err)
{
    int n = snprintf(out, HF_PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= HF_PATH_MAX)
        return snap_fail(err, SNAP_EARG, "%s/%s: path too long", dir, name);
    return 0;
}

/* Read a whole file into a NUL-terminated malloc'd buffer. Returns 0, 1 when the file does
 * not exist and `optional` is set, SNAP_EIO, SNAP_EFORMAT (too large) or SNAP_ENOMEM. */
static int read_text(const char *path, bool optional, char **out, size_t *out_len, snap_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (optional && errno == ENOENT)
            return 1;
        return snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
    }
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = snap_fail(err, SNAP_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > HF_TEXT_MAX) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: %lld bytes is too large for a JSON file", path,
                       (long long)st.st_size);
        goto fail;
    }
    size_t n = (size_t)st.st_size, got = 0;
    buf = malloc(n + 1);
    if (!buf) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
        goto fail;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break; /* shrank while we read: parse what is there */
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    *out = buf;
    *out_len = got;
    return 0;
fail:
    free(buf);
    close(fd);
    return rc;
}

/* Parse `dir/name` as a JSON object. Returns 0 (caller owns *out: cJSON_Delete), 1 when an
 * optional file is absent, or a negative code. */
static int read_json(const char *dir, const char *name, bool optional, cJSON **out, snap_err *err)
{
    char path[HF_PATH_MAX];
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = path_join(path, dir, name, err);
    if (rc)
        return rc;
    if ((rc = read_text(path, optional, &text, &len, err)) != 0)
        return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t at = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        free(text);
        return snap_fail(err, SNAP_EFORMAT, "%s: not valid JSON (near byte %zu)", path, at);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return snap_fail(err, SNAP_EFORMAT, "%s: top level is not a JSON object", path);
    }
    *out = root;
    return 0;
}

/* A member that is present and not null, else NULL. */
static const cJSON *member(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

/* Whether a JSON value is an integer in [0, max] (max <= 2^53). */
static bool json_uint(const cJSON *it, double max, uint64_t *out)
{
    if (!cJSON_IsNumber(it))
        return false;
    double v = it->valuedouble;
    if (!(v >= 0 && v <= max && v <= JSON_INT_MAX) || v != floor(v))
        return false;
    *out = (uint64_t)v;
    return true;
}

static int get_u32(const cJSON *obj, const char *key, const char *file, bool required, uint32_t def,
                   uint32_t *out, snap_err *err)
{
    const cJSON *it = member(obj, key);
    uint64_t v;
    if (!it) {
        if (required)
            return snap_fail(err, SNAP_EFORMAT, "%s: missing key '%s'", file, key);
        *out = def;
        return 0;
    }
    if (!json_uint(it, UINT32_MAX, &v))
        return snap_fail(err, SNAP_EFORMAT, "%s: key '%s' must be a non-negative 32-bit integer", file, key);
    *out = (uint32_t)v;
    return 0;
}

static int get_f32(const cJSON *obj, const char *key, const char *file, bool required, float def,
                   float *out, snap_err *err)
{
    const cJSON *it = member(obj, key);
    if (!it) {
        if (required)
            return snap_fail(err, SNAP_EFORMAT, "%s: missing key '%s'", file, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || fabs(it->valuedouble) > 3.0e38)
        return snap_fail(err, SNAP_EFORMAT, "%s: key '%s' must be a finite number", file, key);
    *out = (float)it->valuedouble;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, const char *file, bool def, bool *out, snap_err *err)
{
    const cJSON *it = member(obj, key);
    if (!it) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(it))
        return snap_fail(err, SNAP_EFORMAT, "%s: key '%s' must be true or false", file, key);
    *out = cJSON_IsTrue(it);
    return 0;
}

/* An optional string member: *out is NULL when absent or null. */
static int get_str(const cJSON *obj, const char *key, const char *file, const char **out, snap_err *err)
{
    const cJSON *it = member(obj, key);
    *out = NULL;
    if (!it)
        return 0;
    if (!cJSON_IsString(it))
        return snap_fail(err, SNAP_EFORMAT, "%s: key '%s' must be a string", file, key);
    *out = it->valuestring;
    return 0;
}

static const char *type_of(const cJSON *obj)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* malloc n bytes owned by the model (freed by snap_src_free). NULL on failure. */
static void *own_alloc(snap_src_model *m, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p && snap_src_own(m, p) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

/* ---- config.json -------------------------------------------------------------------- */

static int read_rope_scaling(const cJSON *rs, const char *file, snap_config *c, snap_err *err)
{
    if (!cJSON_IsObject(rs))
        return snap_fail(err, SNAP_EFORMAT, "%s: key 'rope_scaling' must be an object or null", file);
    const char *type;
    int rc = get_str(rs, "rope_type", file, &type, err);
    if (!rc && !type)
        rc = get_str(rs, "type", file, &type, err);
    if (rc)
        return rc;
    if (!type)
        return snap_fail(err, SNAP_EFORMAT, "%s: rope_scaling has no 'rope_type' or 'type'", file);
    if (strcmp(type, "default") == 0)
        return 0; /* transformers writes this for plain RoPE */
    if (strcmp(type, "linear") == 0) {
        c->rope_scaling = SNAP_ROPE_SCALING_LINEAR;
        return get_f32(rs, "factor", file, true, 1, &c->rope_factor, err);
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope_scaling = SNAP_ROPE_SCALING_LLAMA3;
        if ((rc = get_f32(rs, "factor", file, true, 1, &c->rope_factor, err)) ||
            (rc = get_f32(rs, "low_freq_factor", file, true, 1, &c->rope_low_freq_factor, err)) ||
            (rc = get_f32(rs, "high_freq_factor", file, true, 1, &c->rope_high_freq_factor, err)) ||
            (rc = get_u32(rs, "original_max_position_embeddings", file, true, 0, &c->rope_orig_ctx, err)))
            return rc;
        /* the llama3 formula divides by (high - low) and by the original context */
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_orig_ctx == 0)
            return snap_fail(err, SNAP_EFORMAT,
                             "%s: rope_scaling llama3 needs high_freq_factor > low_freq_factor and "
                             "original_max_position_embeddings > 0", file);
        return 0;
    }
    return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported rope_scaling type '%s' (supported: linear, llama3)",
                     file, type);
}

static int read_config(hf_reader *r)
{
    snap_config *c = &r->m->config;
    snap_err *err = r->err;
    char file[HF_PATH_MAX];
    cJSON *root = NULL;
    int rc = path_join(file, r->dir, "config.json", err);
    if (rc || (rc = read_json(r->dir, "config.json", false, &root, err)) != 0)
        return rc;

    const char *type;
    if ((rc = get_str(root, "model_type", file, &type, err)))
        goto fail;
    if (!type) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: missing key 'model_type'", file);
        goto fail;
    }
    if (strcmp(type, "llama") == 0 || strcmp(type, "mistral") == 0) {
        c->arch = SNAP_ARCH_LLAMA;
    } else if (strcmp(type, "qwen2") == 0) {
        c->arch = SNAP_ARCH_QWEN2;
        c->flags |= SNAP_FLAG_QKV_BIAS;
    } else {
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported model_type '%s' (supported: llama, mistral, qwen2)",
                       file, type);
        goto fail;
    }
    /* Hugging Face checkpoints keep Q/K rows in their original order (GGUF conversion
     * permutes them), so RoPE rotates the two halves of each head. */
    c->rope_style = SNAP_ROPE_NEOX;

    if ((rc = get_u32(root, "vocab_size", file, true, 0, &c->n_vocab, err)) ||
        (rc = get_u32(root, "max_position_embeddings", file, true, 0, &c->n_ctx_train, err)) ||
        (rc = get_u32(root, "hidden_size", file, true, 0, &c->n_embd, err)) ||
        (rc = get_u32(root, "num_hidden_layers", file, true, 0, &c->n_layer, err)) ||
        (rc = get_u32(root, "num_attention_heads", file, true, 0, &c->n_head, err)) ||
        (rc = get_u32(root, "intermediate_size", file, true, 0, &c->n_ff, err)) ||
        (rc = get_f32(root, "rope_theta", file, false, 10000.0f, &c->rope_theta, err)) ||
        (rc = get_f32(root, "rms_norm_eps", file, true, 0, &c->rms_eps, err)))
        goto fail;
    if (c->n_head == 0 || c->n_embd == 0) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: hidden_size and num_attention_heads must be positive", file);
        goto fail;
    }
    if ((rc = get_u32(root, "num_key_value_heads", file, false, c->n_head, &c->n_head_kv, err)) ||
        (rc = get_u32(root, "head_dim", file, false, c->n_embd / c->n_head, &c->head_dim, err)))
        goto fail;
    if (!member(root, "head_dim") && c->n_embd % c->n_head != 0) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: hidden_size %u is not a multiple of num_attention_heads %u "
                       "and there is no head_dim", file, c->n_embd, c->n_head);
        goto fail;
    }

    /* Refuse what would run but compute something else. */
    const char *act;
    bool flag;
    if ((rc = get_str(root, "hidden_act", file, &act, err)))
        goto fail;
    if (act && strcmp(act, "silu") != 0) {
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported hidden_act '%s' (supported: silu)", file, act);
        goto fail;
    }
    if ((rc = get_bool(root, "attention_bias", file, false, &flag, err)))
        goto fail;
    if (flag && c->arch == SNAP_ARCH_LLAMA) {
        /* Llama's attention_bias also biases o_proj, which the engine has no slot for. */
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: attention_bias is not supported for model_type '%s'", file, type);
        goto fail;
    }
    if ((rc = get_bool(root, "mlp_bias", file, false, &flag, err)))
        goto fail;
    if (flag) {
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: mlp_bias is not supported", file);
        goto fail;
    }
    if ((rc = get_bool(root, "use_sliding_window", file, false, &flag, err)))
        goto fail;
    if (flag) {
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: use_sliding_window is not supported", file);
        goto fail;
    }
    if (strcmp(type, "mistral") == 0) {
        /* Mistral v0.1 attends over a 4096-token window; within the window that equals full
         * attention, so serving no more than the window keeps outputs exact. */
        uint32_t window;
        if ((rc = get_u32(root, "sliding_window", file, false, 0, &window, err)))
            goto fail;
        if (window > 0 && window < c->n_ctx_train)
            c->n_ctx_train = window;
    }

    if ((rc = get_bool(root, "tie_word_embeddings", file, false, &r->tie_cfg, err)))
        goto fail;
    if (r->tie_cfg)
        c->flags |= SNAP_FLAG_TIED_EMBED;

    c->rope_scaling = SNAP_ROPE_SCALING_NONE;
    c->rope_factor = 1.0f;
    const cJSON *rs = member(root, "rope_scaling");
    if (rs && (rc = read_rope_scaling(rs, file, c, err)))
        goto fail;

    /* name: the folder's basename, without trailing slashes */
    size_t len = strlen(r->dir);
    while (len > 1 && r->dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && r->dir[start - 1] != '/')
        start--;
    size_t n = len - start < sizeof c->name - 1 ? len - start : sizeof c->name - 1;
    memcpy(c->name, r->dir + start, n);
    c->name[n] = '\0';

fail:
    cJSON_Delete(root);
    return rc;
}

/* ---- tensor names ------------------------------------------------------------------- */

static const struct { const char *hf, *canon; } top_names[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

static const struct { const char *hf, *canon; bool bias; } layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight", false},
    {"self_attn.q_proj.weight", "attn_q.weight", false},
    {"self_attn.k_proj.weight", "attn_k.weight", false},
    {"self_attn.v_proj.weight", "attn_v.weight", false},
    {"self_attn.o_proj.weight", "attn_output.weight", false},
    {"self_attn.q_proj.bias", "attn_q.bias", true},
    {"self_attn.k_proj.bias", "attn_k.bias", true},
    {"self_attn.v_proj.bias", "attn_v.bias", true},
    {"post_attention_layernorm.weight", "ffn_norm.weight", false},
    {"mlp.gate_proj.weight", "ffn_gate.weight", false},
    {"mlp.up_proj.weight", "ffn_up.weight", false},
    {"mlp.down_proj.weight", "ffn_down.weight", false},
};

/* Map a Hugging Face tensor name to its canonical name. Returns 1 (out filled), 0 for a
 * tensor thaw does not use (rotary_emb.inv_freq, ...), or a negative code for one it must
 * not silently drop. */
static int map_name(const hf_reader *r, const char *path, const char *hf, char out[SNAP_NAME_MAX])
{
    for (size_t i = 0; i < sizeof top_names / sizeof top_names[0]; i++)
        if (strcmp(hf, top_names[i].hf) == 0) {
            snprintf(out, SNAP_NAME_MAX, "%s", top_names[i].canon);
            return 1;
        }
    static const char prefix[] = "model.layers.";
    if (strncmp(hf, prefix, sizeof prefix - 1) != 0 || !isdigit((unsigned char)hf[sizeof prefix - 1]))
        return 0;
    char *end;
    unsigned long layer = strtoul(hf + sizeof prefix - 1, &end, 10);
    if (*end != '.')
        return 0;
    const char *rest = end + 1;
    const snap_config *c = &r->m->config;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++) {
        if (strcmp(rest, layer_names[i].hf) != 0)
            continue;
        if (layer >= c->n_layer)
            return snap_fail(r->err, SNAP_EFORMAT, "%s: tensor '%s' is for layer %lu but config.json has "
                             "num_hidden_layers %u", path, hf, layer, c->n_layer);
        if (layer_names[i].bias && !(c->flags & SNAP_FLAG_QKV_BIAS))
            return snap_fail(r->err, SNAP_EUNSUPPORTED, "%s: tensor '%s': attention biases are not supported "
                             "for this architecture", path, hf);
        snprintf(out, SNAP_NAME_MAX, "blk.%lu.%s", layer, layer_names[i].canon);
        return 1;
    }
    /* An unknown bias inside a layer changes the output; ignoring it would serve a
     * different model, so refuse. Other unknown tensors (buffers, inv_freq) are harmless. */
    size_t n = strlen(rest);
    if (n >= 5 && strcmp(rest + n - 5, ".bias") == 0)
        return snap_fail(r->err, SNAP_EUNSUPPORTED, "%s: tensor '%s' is not supported", path, hf);
    return 0;
}

/* ---- safetensors -------------------------------------------------------------------- */

/* Element sizes of safetensors dtypes; src < 0 where thaw cannot use the type. Unused
 * tensors of any listed dtype are still bounds-checked. */
static const struct { const char *name; uint32_t size; int src; } st_dtypes[] = {
    {"F32", 4, SRC_F32}, {"F16", 2, SRC_F16}, {"BF16", 2, SRC_BF16}, {"F64", 8, -1},
    {"I64", 8, -1},      {"U64", 8, -1},      {"I32", 4, -1},        {"U32", 4, -1},
    {"I16", 2, -1},      {"U16", 2, -1},      {"I8", 1, -1},         {"U8", 1, -1},
    {"BOOL", 1, -1},     {"F8_E4M3", 1, -1},  {"F8_E5M2", 1, -1},
};

static int st_tensor(hf_reader *r, const char *path, const cJSON *it, const uint8_t *data, uint64_t data_len,
                     uint64_t data_off)
{
    snap_err *err = r->err;
    const char *hf = it->string;
    if (!cJSON_IsObject(it))
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': header entry is not an object", path, hf);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': needs dtype (string), shape (array) and "
                         "data_offsets ([begin, end])", path, hf);
    uint64_t begin, end;
    if (!json_uint(cJSON_GetArrayItem(off, 0), JSON_INT_MAX, &begin) ||
        !json_uint(cJSON_GetArrayItem(off, 1), JSON_INT_MAX, &end))
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': data_offsets are not non-negative integers", path, hf);
    if (begin > end || end > data_len)
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] (file offset %llu) run "
                         "past the data section of %llu bytes", path, hf, (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)(data_off + begin),
                         (unsigned long long)data_len);

    int n_dims = cJSON_GetArraySize(sh);
    uint64_t shape[SNAP_MAX_DIMS] = {0}, numel = 1;
    bool too_big = false;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, sh) {
        uint64_t v;
        if (!json_uint(dim, JSON_INT_MAX, &v))
            return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                             path, hf, d);
        if (d < SNAP_MAX_DIMS)
            shape[d] = v;
        if (v && numel > UINT64_MAX / v)
            too_big = true;
        numel *= v;
        d++;
    }

    int di = -1;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(dt->valuestring, st_dtypes[i].name) == 0)
            di = (int)i;
    if (di >= 0 && (too_big || numel > UINT64_MAX / st_dtypes[di].size ||
                    numel * st_dtypes[di].size != end - begin)) {
        char count[32];
        if (too_big)
            snprintf(count, sizeof count, "over 2^64");
        else
            snprintf(count, sizeof count, "%llu", (unsigned long long)numel);
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': %d-dim %s shape holds %s elements, which is not "
                         "the %llu bytes its data_offsets [%llu, %llu] (file offset %llu) span", path, hf, n_dims,
                         dt->valuestring, count, (unsigned long long)(end - begin), (unsigned long long)begin,
                         (unsigned long long)end, (unsigned long long)(data_off + begin));
    }

    snap_src_tensor t;
    memset(&t, 0, sizeof t);
    int rc = map_name(r, path, hf, t.name);
    if (rc <= 0)
        return rc;
    if (strcmp(t.name, "output.weight") == 0 && r->tie_cfg)
        return 0; /* tied: the packer uses token_embd; a stored copy would be dead weight */
    if (di < 0 || st_dtypes[di].src < 0)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: tensor '%s': dtype '%s' is not supported (F32, F16, BF16)",
                         path, hf, dt->valuestring);
    if (n_dims < 1 || n_dims > SNAP_MAX_DIMS)
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s': %d dimensions (1 to %d supported)", path, hf,
                         n_dims, SNAP_MAX_DIMS);
    if (snap_src_find(r->m, t.name))
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s' (%s) appears twice", path, hf, t.name);
    t.type = (uint32_t)st_dtypes[di].src;
    t.n_dims = (uint32_t)n_dims;
    memcpy(t.shape, shape, sizeof shape);
    t.data = data + begin;
    t.n_bytes = end - begin;
    if (snap_src_add_tensor(r->m, &t) != 0)
        return snap_fail(err, SNAP_ENOMEM, "%s: out of memory adding tensor '%s'", path, hf);
    return 0;
}

static int read_safetensors(hf_reader *r, const char *fname)
{
    snap_err *err = r->err;
    char path[HF_PATH_MAX];
    int rc = path_join(path, r->dir, fname, err);
    if (rc)
        return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = snap_fail(err, SNAP_EIO, "%s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 8 || (uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return snap_fail(err, SNAP_EFORMAT, "%s: %lld bytes is not a safetensors file (header length at "
                         "offset 0 needs 8 bytes)", path, (long long)st.st_size);
    }
    uint64_t size = (uint64_t)st.st_size;
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return snap_fail(err, SNAP_EIO, "%s: mmap: %s", path, strerror(e));
    if (snap_src_own_map(r->m, map, (size_t)size) != 0) {
        munmap(map, (size_t)size);
        return snap_fail(err, SNAP_ENOMEM, "%s: out of memory", path);
    }

    const uint8_t *base = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i]; /* little-endian u64 */
    if (hlen > size - 8 || hlen > ST_HEADER_MAX)
        return snap_fail(err, SNAP_EFORMAT, "%s: header length %llu (at offset 0) runs past the end of the "
                         "file (%llu bytes)", path, (unsigned long long)hlen, (unsigned long long)size);
    const char *hdr_text = (const char *)base + 8, *end = NULL;
    cJSON *hdr = cJSON_ParseWithLengthOpts(hdr_text, (size_t)hlen, &end, 0);
    if (!hdr) {
        uint64_t at = end && end >= hdr_text && end <= hdr_text + hlen ? (uint64_t)(end - hdr_text) + 8 : 8;
        return snap_fail(err, SNAP_EFORMAT, "%s: header is not valid JSON (near offset %llu)", path,
                         (unsigned long long)at);
    }
    if (!cJSON_IsObject(hdr)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: header (offset 8) is not a JSON object", path);
        goto fail;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, hdr) {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        if ((rc = st_tensor(r, path, it, base + 8 + hlen, size - 8 - hlen, 8 + hlen)) != 0)
            goto fail;
    }
fail:
    cJSON_Delete(hdr);
    return rc;
}

/* A shard name from the index: a plain file name inside the folder, never a path. */
static bool shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int read_weights(hf_reader *r)
{
    snap_err *err = r->err;
    char path[HF_PATH_MAX], file[HF_PATH_MAX];
    const char **shards = NULL;
    cJSON *root = NULL;
    int rc = path_join(path, r->dir, "model.safetensors", err);
    if (rc)
        return rc;
    if (access(path, F_OK) == 0) {
        rc = read_safetensors(r, "model.safetensors");
        goto done;
    }
    if ((rc = path_join(file, r->dir, "model.safetensors.index.json", err)) ||
        (rc = read_json(r->dir, "model.safetensors.index.json", true, &root, err)) < 0)
        return rc;
    if (rc == 1)
        return snap_fail(err, SNAP_EIO, "%s: no model.safetensors or model.safetensors.index.json", r->dir);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: missing object 'weight_map'", file);
        goto done;
    }
    /* Each shard is read once, in order of first mention. */
    int n_entries = cJSON_GetArraySize(wm), n_shards = 0;
    shards = malloc(((size_t)n_entries + 1) * sizeof *shards);
    if (!shards) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory", file);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, wm) {
        if (!cJSON_IsString(it) || !shard_name_ok(it->valuestring)) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: weight_map['%s'] must be a file name in the folder", file,
                           it->string);
            goto done;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], it->valuestring) != 0)
            k++;
        if (k == n_shards)
            shards[n_shards++] = it->valuestring;
    }
    if (n_shards == 0) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: weight_map is empty", file);
        goto done;
    }
    for (int k = 0; k < n_shards && rc == 0; k++)
        rc = read_safetensors(r, shards[k]);
done:
    free(shards);
    cJSON_Delete(root);
    if (rc == 0 && !snap_src_find(r->m, "output.weight"))
        r->m->config.flags |= SNAP_FLAG_TIED_EMBED; /* no lm_head: the embedding is the output */
    return rc;
}

/* ---- tokenizer.json ----------------------------------------------------------------- */

/* Kind of a Split pre-tokenizer from its regex, or -1. Qwen2 and Llama 3 share the regex
 * except for numbers: single digits ("\p{N}") versus runs of up to three ("\p{N}{1,3}");
 * GPT-2's " ?\p{N}+" is neither. */
static int split_kind(const cJSON *split)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    if (!cJSON_IsString(re))
        return -1;
    if (strstr(re->valuestring, "\\p{N}{1,3}"))
        return SNAP_PRE_LLAMA3;
    if (strstr(re->valuestring, "\\p{N}") && !strstr(re->valuestring, "\\p{N}+"))
        return SNAP_PRE_QWEN2;
    return -1;
}

static bool byte_level_ok(const cJSON *bl, bool *use_regex)
{
    const cJSON *ap = cJSON_GetObjectItemCaseSensitive(bl, "add_prefix_space");
    const cJSON *ur = cJSON_GetObjectItemCaseSensitive(bl, "use_regex");
    *use_regex = !cJSON_IsFalse(ur); /* tokenizers' default is true */
    return !cJSON_IsTrue(ap);        /* a leading-space variant is a different tokenizer */
}

/* The byte-level BPE pre-tokenizer, or SNAP_EUNSUPPORTED naming it. */
static int pre_kind(const cJSON *pt, const char *file, uint32_t *out, snap_err *err)
{
    const char *type = pt ? type_of(pt) : NULL;
    bool use_regex = false;
    int kind = -1;
    if (type && strcmp(type, "ByteLevel") == 0) {
        if (byte_level_ok(pt, &use_regex) && use_regex)
            kind = SNAP_PRE_GPT2;
    } else if (type && strcmp(type, "Split") == 0) {
        kind = split_kind(pt);
    } else if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"), *p;
        int split = -1, n_split = 0, n_bl = 0, n_other = 0;
        bool digits = false, bl_regex = false, bl_ok = true;
        cJSON_ArrayForEach(p, list) {
            const char *t = type_of(p);
            if (t && strcmp(t, "Split") == 0) {
                split = split_kind(p);
                n_split++;
            } else if (t && strcmp(t, "ByteLevel") == 0) {
                bl_ok = bl_ok && byte_level_ok(p, &use_regex);
                bl_regex = bl_regex || use_regex;
                n_bl++;
            } else if (t && strcmp(t, "Digits") == 0 &&
                       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "individual_digits"))) {
                digits = true;
            } else {
                n_other++;
            }
        }
        if (n_other == 0 && n_bl == 1 && bl_ok) {
            if (n_split == 1 && !digits)
                kind = split;
            else if (n_split == 0 && digits && bl_regex)
                kind = SNAP_PRE_SMOLLM;
            else if (n_split == 0 && !digits && bl_regex)
                kind = SNAP_PRE_GPT2;
        }
    }
    if (kind < 0)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported pre_tokenizer '%s' (supported: ByteLevel, "
                         "Digits+ByteLevel, and the Llama 3 and Qwen2 Split regexes)", file, type ? type : "null");
    *out = (uint32_t)kind;
    return 0;
}

/* The normalizer or pre-tokenizer of type `type` in root[key], itself or inside a Sequence. */
static const cJSON *find_step(const cJSON *root, const char *key, const char *list, const char *type)
{
    const cJSON *it = member(root, key), *s;
    const char *t = type_of(it);
    if (t && strcmp(t, type) == 0)
        return it;
    if (t && strcmp(t, "Sequence") == 0)
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(it, list)) {
            const char *st = type_of(s);
            if (st && strcmp(st, type) == 0)
                return s;
        }
    return NULL;
}

/* Where SentencePiece's "▁" goes before the text, from the two ways tokenizer.json says it:
 * the legacy Prepend normalizer (every piece between added tokens gets one), or a Metaspace
 * pre-tokenizer's prepend_scheme (older files: add_prefix_space) and split. */
static int spm_space_rule(const cJSON *root, const char *file, snap_vocab *v, snap_err *err)
{
    const cJSON *pre = find_step(root, "normalizer", "normalizers", "Prepend");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(pre, "prepend");
    v->add_space_prefix = cJSON_IsString(p) && strcmp(p->valuestring, SPM_SPACE) == 0 ? SNAP_SPACE_LEGACY : SNAP_SPACE_NONE;
    const cJSON *pt = member(root, "pre_tokenizer"), *ms = NULL, *s;
    const char *pt_type = type_of(pt);
    if (pt_type && strcmp(pt_type, "Metaspace") == 0)
        ms = pt;
    else if (pt_type && strcmp(pt_type, "Sequence") == 0) /* other steps would tokenize differently */
        cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers")) {
            const char *st = type_of(s);
            if (!st || strcmp(st, "Metaspace") != 0)
                return snap_fail(err, SNAP_EUNSUPPORTED,
                                 "%s: SentencePiece pre-tokenizer step '%.32s' is not supported (only Metaspace)", file,
                                 st ? st : "?");
            if (!ms)
                ms = s;
        }
    if (!ms) /* spm_split stays 0 (snap_src_init) */
        return 0;
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(ms, "prepend_scheme");
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(ms, "add_prefix_space");
    const cJSON *split = cJSON_GetObjectItemCaseSensitive(ms, "split");
    const cJSON *repl = cJSON_GetObjectItemCaseSensitive(ms, "replacement");
    if (repl && (!cJSON_IsString(repl) || strcmp(repl->valuestring, SPM_SPACE) != 0))
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: Metaspace replacement other than U+2581 is not supported", file);
    uint8_t rule = SNAP_SPACE_ALWAYS; /* the tokenizers library's default */
    if (cJSON_IsString(scheme)) {
        if (strcmp(scheme->valuestring, "always") == 0)
            rule = SNAP_SPACE_ALWAYS;
        else if (strcmp(scheme->valuestring, "first") == 0)
            rule = SNAP_SPACE_FIRST;
        else if (strcmp(scheme->valuestring, "never") == 0)
            rule = SNAP_SPACE_NONE;
        else
            return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unknown Metaspace prepend_scheme '%.32s' (expected always, first or never)",
                             file, scheme->valuestring);
    } else if (cJSON_IsBool(add)) {
        rule = cJSON_IsTrue(add) ? SNAP_SPACE_ALWAYS : SNAP_SPACE_NONE;
    }
    /* the library refuses add_prefix_space false beside a scheme that prepends */
    if (cJSON_IsFalse(add) && rule != SNAP_SPACE_NONE)
        return snap_fail(err, SNAP_EFORMAT, "%s: Metaspace add_prefix_space false contradicts prepend_scheme '%.32s'",
                         file, scheme->valuestring);
    if (split && !cJSON_IsBool(split))
        return snap_fail(err, SNAP_EFORMAT, "%s: Metaspace 'split' must be true or false", file);
    if (v->add_space_prefix == SNAP_SPACE_NONE)
        v->add_space_prefix = rule;
    v->spm_split = !split || cJSON_IsTrue(split); /* absent: split, the library's default */
    return 0;
}

/* SentencePiece-style BPE (Llama 2, Mistral): byte fallback, or U+2581 for spaces. */
static bool is_spm(const cJSON *root, const cJSON *model)
{
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return true;
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    const char *t = type_of(pt);
    if (t && strcmp(t, "Metaspace") == 0)
        return true;
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder"), *d;
    t = type_of(dec);
    if (t && strcmp(t, "Metaspace") == 0)
        return true;
    if (t && strcmp(t, "Sequence") == 0)
        cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(dec, "decoders")) {
            const char *dt = type_of(d);
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(d, "pattern"),
                                                              "String");
            if (dt && strcmp(dt, "Replace") == 0 && cJSON_IsString(s) && strcmp(s->valuestring, SPM_SPACE) == 0)
                return true;
        }
    return false;
}

/* Whether the post-processor adds special tokens before / after the text (Llama 3 adds
 * <|begin_of_text|> this way, with no add_bos_token in tokenizer_config.json). */
static void post_adds(const cJSON *pp, bool *bos, bool *eos)
{
    const char *t = type_of(pp);
    if (t && strcmp(t, "Sequence") == 0) {
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(pp, "processors"))
            post_adds(p, bos, eos);
        return;
    }
    if (!t || strcmp(t, "TemplateProcessing") != 0)
        return;
    bool seen_text = false;
    const cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(pp, "single")) {
        if (cJSON_GetObjectItemCaseSensitive(item, "Sequence"))
            seen_text = true;
        else if (cJSON_GetObjectItemCaseSensitive(item, "SpecialToken"))
            *(seen_text ? eos : bos) = true;
    }
}

static bool is_byte_token(const char *s)
{
    return strlen(s) == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && isxdigit((unsigned char)s[3]) &&
           isxdigit((unsigned char)s[4]) && s[5] == '>';
}

static int read_merges(hf_reader *r, const cJSON *merges, const char *file, size_t max_len)
{
    snap_err *err = r->err;
    snap_vocab *v = &r->m->vocab;
    int n = cJSON_GetArraySize(merges), rc = 0;
    uint32_t *pairs = own_alloc(r->m, (size_t)n * 2 * sizeof *pairs);
    char *cat = malloc(2 * max_len + 1);
    if (!pairs || !cat) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory for %d merges", file, n);
        goto fail;
    }
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(it)) {
            /* legacy "a b": tokens never hold a plain space (it is Ġ or ▁) */
            const char *sp = strchr(it->valuestring, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                a = it->valuestring;
                la = (size_t)(sp - a);
                b = sp + 1;
                lb = strlen(b);
            }
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            la = strlen(a);
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            lb = strlen(b);
        }
        if (!a) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", file, i);
            goto fail;
        }
        int32_t ia = snap_strmap_get(&r->map, a, la), ib = snap_strmap_get(&r->map, b, lb), ic = -1;
        if (ia >= 0 && ib >= 0) {
            /* both known, so each fits max_len */
            memcpy(cat, a, la);
            memcpy(cat + la, b, lb);
            ic = snap_strmap_get(&r->map, cat, la + lb);
        }
        if (ic < 0) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: merge %d ('%.*s' '%.*s') names a token not in the vocab", file,
                           i, (int)(la < 64 ? la : 64), a, (int)(lb < 64 ? lb : 64), b);
            goto fail;
        }
        pairs[2 * i] = (uint32_t)ia;
        pairs[2 * i + 1] = (uint32_t)ib;
        i++;
    }
    v->merges = pairs;
    v->n_merges = (uint32_t)n;
fail:
    free(cat);
    return rc;
}

static int read_tokenizer(hf_reader *r)
{
    snap_src_model *m = r->m;
    snap_vocab *v = &m->vocab;
    snap_err *err = r->err;
    char file[HF_PATH_MAX];
    cJSON *root = NULL;
    const char **text = NULL;
    int rc = path_join(file, r->dir, "tokenizer.json", err);
    if (rc || (rc = read_json(r->dir, "tokenizer.json", false, &root, err)) != 0)
        return rc;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: missing object 'model'", file);
        goto fail;
    }
    const char *mtype = type_of(model);
    if (mtype && strcmp(mtype, "BPE") != 0) {
        rc = snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported tokenizer model '%s' (supported: BPE)", file, mtype);
        goto fail;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: missing object 'model.vocab'", file);
        goto fail;
    }

    /* Slots for every id the embedding has; config.json has bounded n_vocab. */
    uint32_t cap = m->config.n_vocab;
    if (cap == 0 || cap > (1u << 24)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: config vocab_size %u out of range", file, cap);
        goto fail;
    }
    text = calloc(cap, sizeof *text);
    uint8_t *types = own_alloc(m, cap);
    if (!text || !types) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory for %u tokens", file, cap);
        goto fail;
    }
    uint64_t id;
    uint32_t n_src = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!json_uint(it, (double)cap - 1, &id)) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: token '%.64s' has an id that is not an integer below config.json's "
                           "vocab_size %u", file, it->string, cap);
            goto fail;
        }
        if (text[id]) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: id %llu is used by both '%.64s' and '%.64s'", file,
                           (unsigned long long)id, text[id], it->string);
            goto fail;
        }
        text[id] = it->string;
        types[id] = SNAP_TOKT_NORMAL;
        if (id + 1 > n_src)
            n_src = (uint32_t)id + 1;
    }
    int i = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!json_uint(cJSON_GetObjectItemCaseSensitive(it, "id"), (double)cap - 1, &id) || !cJSON_IsString(content)) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: added_tokens[%d] needs an integer id below config.json's "
                           "vocab_size %u and a string content", file, i, cap);
            goto fail;
        }
        /* Added tokens usually repeat a vocab entry; a different text at the same id is a conflict. */
        if (text[id] && strcmp(text[id], content->valuestring) != 0) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: added_tokens[%d] '%.64s' takes id %llu of '%.64s'", file, i,
                           content->valuestring, (unsigned long long)id, text[id]);
            goto fail;
        }
        text[id] = content->valuestring;
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")) ? SNAP_TOKT_CONTROL
                                                                                   : SNAP_TOKT_USER_DEFINED;
        if (id + 1 > n_src)
            n_src = (uint32_t)id + 1;
        i++;
    }
    if (n_src == 0) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: empty vocabulary", file);
        goto fail;
    }

    bool spm = is_spm(root, model);
    uint64_t total = 0;
    size_t max_len = 0;
    for (uint32_t t = 0; t < n_src; t++) {
        if (!text[t]) {
            rc = snap_fail(err, SNAP_EFORMAT, "%s: token ids are not dense: id %u of %u has no token", file, t, n_src);
            goto fail;
        }
        size_t len = strlen(text[t]);
        if (len > max_len)
            max_len = len;
        total += len;
        if (spm && types[t] == SNAP_TOKT_NORMAL && is_byte_token(text[t]))
            types[t] = SNAP_TOKT_BYTE;
    }
    for (uint32_t t = n_src; t < cap; t++) {
        char name[32];
        total += (uint64_t)snprintf(name, sizeof name, "<unused_%u>", t);
        types[t] = SNAP_TOKT_UNUSED;
    }
    if (total > UINT32_MAX) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: token text is %llu bytes (4 GiB at most)", file,
                       (unsigned long long)total);
        goto fail;
    }
    uint32_t *offsets = own_alloc(m, ((size_t)cap + 1) * sizeof *offsets);
    char *blob = own_alloc(m, (size_t)total + 1); /* +1: snprintf's NUL after the last pad */
    if (!offsets || !blob) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory for %llu bytes of tokens", file,
                       (unsigned long long)total);
        goto fail;
    }
    uint32_t pos = 0;
    for (uint32_t t = 0; t < cap; t++) {
        offsets[t] = pos;
        if (t < n_src) {
            size_t len = strlen(text[t]);
            memcpy(blob + pos, text[t], len);
            pos += (uint32_t)len;
        } else {
            pos += (uint32_t)snprintf(blob + pos, (size_t)total + 1 - pos, "<unused_%u>", t);
        }
    }
    offsets[cap] = pos;
    v->n_tokens = cap;
    v->offsets = offsets;
    v->blob = blob;
    v->types = types;
    v->scores = NULL; /* tokenizer.json ranks by merges, not scores */
    r->n_src = n_src;
    /* The map covers only source tokens, so a padding name can never shadow a real token. */
    if (snap_strmap_build(&r->map, offsets, blob, n_src) != 0) {
        rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory for the token map", file);
        goto fail;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges && !cJSON_IsArray(merges)) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: 'model.merges' must be an array", file);
        goto fail;
    }
    if ((rc = read_merges(r, merges, file, max_len)))
        goto fail;

    const char *unk;
    if ((rc = get_str(model, "unk_token", file, &unk, err)))
        goto fail;
    if (unk) {
        v->unk_id = snap_strmap_get(&r->map, unk, strlen(unk));
        if (v->unk_id >= 0)
            types[v->unk_id] = SNAP_TOKT_UNKNOWN;
    }

    bool add_bos = false, add_eos = false;
    post_adds(cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &add_bos, &add_eos);
    if (spm) {
        v->model = SNAP_TOK_SPM;
        v->pre = SNAP_PRE_NONE;
        if ((rc = spm_space_rule(root, file, v, err)))
            goto fail;
        add_bos = true;
    } else {
        v->model = SNAP_TOK_BPE;
        v->add_space_prefix = SNAP_SPACE_NONE;
        if ((rc = pre_kind(member(root, "pre_tokenizer"), file, &v->pre, err)))
            goto fail;
    }
    v->add_bos = add_bos;
    v->add_eos = add_eos;

fail:
    free(text);
    cJSON_Delete(root);
    return rc;
}

/* ---- tokenizer_config.json and generation_config.json ------------------------------- */

/* A token named by tokenizer_config.json: a string, {"content": ...}, or null/absent
 * (*id unchanged). A name missing from the vocabulary is an inconsistent model. */
static int config_token(hf_reader *r, const cJSON *root, const char *key, const char *file, int32_t *id)
{
    const cJSON *it = member(root, key);
    if (!it)
        return 0;
    if (cJSON_IsObject(it))
        it = cJSON_GetObjectItemCaseSensitive(it, "content");
    if (!cJSON_IsString(it))
        return snap_fail(r->err, SNAP_EFORMAT, "%s: key '%s' must be a string or {\"content\": string}", file, key);
    int32_t t = snap_strmap_get(&r->map, it->valuestring, strlen(it->valuestring));
    if (t < 0)
        return snap_fail(r->err, SNAP_EFORMAT, "%s: %s '%.64s' is not in the vocabulary", file, key,
                         it->valuestring);
    *id = t;
    return 0;
}

static int read_tokenizer_config(hf_reader *r)
{
    snap_src_model *m = r->m;
    snap_vocab *v = &m->vocab;
    snap_err *err = r->err;
    char file[HF_PATH_MAX];
    cJSON *root = NULL;
    int rc = path_join(file, r->dir, "tokenizer_config.json", err);
    if (rc || (rc = read_json(r->dir, "tokenizer_config.json", true, &root, err)) != 0)
        return rc < 0 ? rc : 0;

    const cJSON *ct = member(root, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) {
        /* named templates: "default", else the first */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(t)) {
                rc = snap_fail(err, SNAP_EFORMAT, "%s: chat_template entries need a string 'template'", file);
                goto fail;
            }
            if (!tmpl || (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0))
                tmpl = t->valuestring;
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0)
                break;
        }
    } else if (ct) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: key 'chat_template' must be a string or a list", file);
        goto fail;
    }
    if (tmpl) {
        free(m->chat_template); /* snap_src_free owns chat_template directly */
        m->chat_template = strdup(tmpl);
        if (!m->chat_template) {
            rc = snap_fail(err, SNAP_ENOMEM, "%s: out of memory", file);
            goto fail;
        }
    }

    bool add_bos = v->add_bos, add_eos = v->add_eos;
    if ((rc = config_token(r, root, "bos_token", file, &v->bos_id)) ||
        (rc = config_token(r, root, "eos_token", file, &v->eos_id)) ||
        (rc = config_token(r, root, "unk_token", file, &v->unk_id)) ||
        (rc = config_token(r, root, "pad_token", file, &v->pad_id)) ||
        (rc = get_bool(root, "add_bos_token", file, add_bos, &add_bos, err)) ||
        (rc = get_bool(root, "add_eos_token", file, add_eos, &add_eos, err)))
        goto fail;
    v->add_bos = add_bos;
    v->add_eos = add_eos;
fail:
    cJSON_Delete(root);
    return rc;
}

static int gen_eos_id(hf_reader *r, const cJSON *it, const char *file)
{
    snap_src_model *m = r->m;
    snap_gen_defaults *g = &m->gen;
    uint64_t id;
    if (!json_uint(it, (double)m->vocab.n_tokens - 1, &id))
        return snap_fail(r->err, SNAP_EFORMAT, "%s: eos_token_id entries must be token ids below %u", file,
                         m->vocab.n_tokens);
    if (m->vocab.eos_id < 0)
        m->vocab.eos_id = (int32_t)id;
    if ((int32_t)id == m->vocab.eos_id)
        return 0;
    for (uint32_t k = 0; k < g->n_stop_ids; k++)
        if (g->stop_ids[k] == (int32_t)id)
            return 0;
    if (g->n_stop_ids < SNAP_MAX_STOP_IDS)
        g->stop_ids[g->n_stop_ids++] = (int32_t)id;
    return 0;
}

static int read_generation_config(hf_reader *r)
{
    snap_src_model *m = r->m;
    snap_gen_defaults *g = &m->gen;
    snap_err *err = r->err;
    char file[HF_PATH_MAX];
    cJSON *root = NULL;
    int rc = path_join(file, r->dir, "generation_config.json", err);
    if (rc || (rc = read_json(r->dir, "generation_config.json", true, &root, err)) != 0)
        return rc < 0 ? rc : 0;

    uint32_t top_k = 0;
    bool has_top_k = member(root, "top_k") != NULL;
    if ((rc = get_f32(root, "temperature", file, false, NAN, &g->temperature, err)) ||
        (rc = get_f32(root, "top_p", file, false, NAN, &g->top_p, err)) ||
        (rc = get_f32(root, "repetition_penalty", file, false, NAN, &g->repetition_penalty, err)) ||
        (rc = get_u32(root, "top_k", file, false, 0, &top_k, err)))
        goto fail;
    if (has_top_k)
        g->top_k = top_k > INT32_MAX ? INT32_MAX : (int32_t)top_k;

    /* eos_token_id: an int or a list. The first fills eos_id if tokenizer_config.json did
     * not; the rest are extra stop tokens (e.g. Llama 3's <|eom_id|>, <|eot_id|>). */
    const cJSON *eos = member(root, "eos_token_id");
    if (cJSON_IsNumber(eos)) {
        rc = gen_eos_id(r, eos, file);
    } else if (cJSON_IsArray(eos)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, eos) {
            if ((rc = gen_eos_id(r, it, file)))
                break;
        }
    } else if (eos) {
        rc = snap_fail(err, SNAP_EFORMAT, "%s: key 'eos_token_id' must be an integer or a list", file);
    }
fail:
    cJSON_Delete(root);
    return rc;
}

/* ---- entry point -------------------------------------------------------------------- */

int snap_read_hf(const char *dir, snap_src_model *m, snap_err *err)
{
    hf_reader r = {.dir = dir, .m = m, .err = err};
    int rc;
    if (!dir || !m)
        return snap_fail(err, SNAP_EARG, "snap_read_hf: NULL argument");
    if ((rc = read_config(&r)) || (rc = read_weights(&r)) || (rc = read_tokenizer(&r)) ||
        (rc = read_tokenizer_config(&r)) || (rc = read_generation_config(&r)))
        goto fail;

    /* end of turn, as the chat templates of the supported families spell it */
    static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>"};
    m->vocab.eot_id = -1;
    for (size_t i = 0; i < sizeof eot_names / sizeof eot_names[0] && m->vocab.eot_id < 0; i++)
        m->vocab.eot_id = snap_strmap_get(&r.map, eot_names[i], strlen(eot_names[i]));

    rc = snap_src_validate(m, dir, err);
fail:
    snap_strmap_free(&r.map);
    return rc;
}
