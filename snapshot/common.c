/* common.c -- the source model container shared by readers and the packer, error text,
 * the string -> id map the tokenizer readers use for merges, and syncing a directory. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int snap_sync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n >= sizeof dir)
        return -ENAMETOOLONG;
    memcpy(dir, path, n);
    strcpy(dir + n, slash ? (n ? "" : "/") : ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static const char *const snap_error_text[] = {
#define SNAP_X_TEXT(name, value, text) [-(value)] = text,
    SNAP_ERRORS(SNAP_X_TEXT)
#undef SNAP_X_TEXT
};

const char *snap_strerror(int code)
{
    if (code > 0 || -code >= (int)(sizeof snap_error_text / sizeof snap_error_text[0]))
        return "unknown error";
    return snap_error_text[-code];
}

int snap_fail(snap_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- source model ------------------------------------------------------------------- */

void snap_src_init(snap_src_model *m)
{
    memset(m, 0, sizeof *m);
    m->vocab.bos_id = m->vocab.eos_id = m->vocab.eot_id = -1;
    m->vocab.unk_id = m->vocab.pad_id = -1;
    m->gen.temperature = m->gen.top_p = m->gen.repetition_penalty = NAN;
    m->gen.top_k = -1;
    m->config.rope_factor = 1.0f; /* readers override for scaled RoPE */
    m->config.rope_theta = 10000.0f;
}

void snap_src_free(snap_src_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    for (size_t i = 0; i < m->n_maps; i++)
        munmap(m->maps[i].addr, m->maps[i].len);
    free(m->owned);
    free(m->maps);
    free(m->tensors);
    free(m->chat_template);
    snap_src_init(m);
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return SNAP_ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

int snap_src_own(snap_src_model *m, void *p)
{
    if (grow((void **)&m->owned, &m->cap_owned, m->n_owned + 1, sizeof *m->owned))
        return SNAP_ENOMEM;
    m->owned[m->n_owned++] = p;
    return 0;
}

int snap_src_own_map(snap_src_model *m, void *addr, size_t len)
{
    if (grow((void **)&m->maps, &m->cap_maps, m->n_maps + 1, sizeof *m->maps))
        return SNAP_ENOMEM;
    m->maps[m->n_maps].addr = addr;
    m->maps[m->n_maps].len = len;
    m->n_maps++;
    return 0;
}

int snap_src_add_tensor(snap_src_model *m, const snap_src_tensor *t)
{
    /* tensors has no separate capacity field: grow in powers of two by count */
    size_t n = m->n_tensors;
    if ((n & (n - 1)) == 0) {
        size_t ncap = n ? n * 2 : 64;
        snap_src_tensor *p = realloc(m->tensors, ncap * sizeof *p);
        if (!p)
            return SNAP_ENOMEM;
        m->tensors = p;
    }
    m->tensors[m->n_tensors++] = *t;
    return 0;
}

const snap_src_tensor *snap_src_find(const snap_src_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

/* Checks one required (or optional) tensor's presence and shape. */
static int expect(snap_shape_fn shape_of, const void *ctx, const char *path, snap_err *err,
                  const char *name, int required, uint32_t n_dims, uint64_t d0, uint64_t d1)
{
    uint32_t nd;
    const uint64_t *sh;
    if (shape_of(ctx, name, &nd, &sh) != 0)
        return required ? snap_fail(err, SNAP_EFORMAT, "%s: missing tensor '%s'", path, name) : 0;
    if (nd != n_dims || sh[0] != d0 || (n_dims > 1 && sh[1] != d1)) {
        char want[64], got[96];
        if (n_dims == 1)
            snprintf(want, sizeof want, "[%llu]", (unsigned long long)d0);
        else
            snprintf(want, sizeof want, "[%llu, %llu]", (unsigned long long)d0, (unsigned long long)d1);
        int k = snprintf(got, sizeof got, "[");
        for (uint32_t i = 0; i < nd && i < SNAP_MAX_DIMS; i++)
            k += snprintf(got + k, sizeof got - (size_t)k, "%s%llu", i ? ", " : "", (unsigned long long)sh[i]);
        snprintf(got + k, sizeof got - (size_t)k, "]");
        return snap_fail(err, SNAP_EFORMAT, "%s: tensor '%s' has shape %s, expected %s", path, name, got, want);
    }
    return 0;
}

int snap_model_check(const snap_config *c, uint32_t n_tokens, snap_shape_fn shape_of, const void *ctx,
                     const char *path, snap_err *err)
{
    if (c->arch != SNAP_ARCH_LLAMA && c->arch != SNAP_ARCH_QWEN2)
        return snap_fail(err, SNAP_EUNSUPPORTED, "%s: unsupported architecture id %u (supported: llama, qwen2)",
                         path, c->arch);
    /* Bounds far beyond any real model, tight enough that products cannot overflow. */
    if (c->n_layer < 1 || c->n_layer > 1024 || c->n_embd < 1 || c->n_embd > 65536 ||
        c->n_head < 1 || c->n_head > 1024 || c->n_head_kv < 1 || c->n_head_kv > c->n_head ||
        c->n_head % c->n_head_kv != 0 || c->head_dim < 2 || c->head_dim > 1024 || c->head_dim % 2 ||
        c->n_ff < 1 || c->n_ff > 1u << 20 || c->n_vocab < 1 || c->n_vocab > 1u << 22 ||
        c->n_ctx_train < 1 || c->rope_style > SNAP_ROPE_NEOX || c->rope_scaling > SNAP_ROPE_SCALING_LLAMA3 ||
        !(c->rms_eps > 0 && c->rms_eps < 1) || !(c->rope_theta > 0 && c->rope_theta < 1e12f) ||
        !(c->rope_factor > 0 && c->rope_factor < 1e6f))
        return snap_fail(err, SNAP_EFORMAT,
                         "%s: model config out of range (layers %u, embd %u, heads %u/%u, head_dim %u, "
                         "ff %u, vocab %u, ctx %u, rms_eps %g, rope_theta %g, rope_factor %g)",
                         path, c->n_layer, c->n_embd, c->n_head, c->n_head_kv, c->head_dim, c->n_ff,
                         c->n_vocab, c->n_ctx_train, c->rms_eps, c->rope_theta, c->rope_factor);
    if (n_tokens != c->n_vocab)
        return snap_fail(err, SNAP_EFORMAT, "%s: tokenizer has %u tokens but the model's vocabulary is %u",
                         path, n_tokens, c->n_vocab);

    uint64_t q = (uint64_t)c->n_head * c->head_dim, kv = (uint64_t)c->n_head_kv * c->head_dim;
    int rc;
    if ((rc = expect(shape_of, ctx, path, err, "token_embd.weight", 1, 2, c->n_vocab, c->n_embd)) ||
        (rc = expect(shape_of, ctx, path, err, "output_norm.weight", 1, 1, c->n_embd, 0)) ||
        (rc = expect(shape_of, ctx, path, err, "output.weight", !(c->flags & SNAP_FLAG_TIED_EMBED), 2,
                     c->n_vocab, c->n_embd)) ||
        (rc = expect(shape_of, ctx, path, err, "rope_freqs.weight", 0, 1, c->head_dim / 2, 0)))
        return rc;
    int bias = (c->flags & SNAP_FLAG_QKV_BIAS) != 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        static const struct { const char *suffix; int bias; uint32_t n_dims; int d0, d1; } want[] = {
            /* d codes: 0 = n_embd, 1 = q rows, 2 = kv rows, 3 = n_ff */
            {"attn_norm.weight", 0, 1, 0, 0}, {"attn_q.weight", 0, 2, 1, 0}, {"attn_k.weight", 0, 2, 2, 0},
            {"attn_v.weight", 0, 2, 2, 0},    {"attn_output.weight", 0, 2, 0, 1},
            {"attn_q.bias", 1, 1, 1, 0},      {"attn_k.bias", 1, 1, 2, 0}, {"attn_v.bias", 1, 1, 2, 0},
            {"ffn_norm.weight", 0, 1, 0, 0},  {"ffn_gate.weight", 0, 2, 3, 0},
            {"ffn_up.weight", 0, 2, 3, 0},    {"ffn_down.weight", 0, 2, 0, 3},
        };
        const uint64_t dim[4] = {c->n_embd, q, kv, c->n_ff};
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            char n[SNAP_NAME_MAX];
            snprintf(n, sizeof n, "blk.%u.%s", l, want[i].suffix);
            int required = want[i].bias ? bias : 1;
            if ((rc = expect(shape_of, ctx, path, err, n, required, want[i].n_dims, dim[want[i].d0], dim[want[i].d1])))
                return rc;
        }
    }
    return 0;
}

static int src_shape_of(const void *ctx, const char *name, uint32_t *n_dims, const uint64_t **shape)
{
    const snap_src_tensor *t = snap_src_find(ctx, name);
    if (!t)
        return -1;
    *n_dims = t->n_dims;
    *shape = t->shape;
    return 0;
}

int snap_src_validate(const snap_src_model *m, const char *path, snap_err *err)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].type >= SRC_TYPE_COUNT)
            return snap_fail(err, SNAP_EUNSUPPORTED, "%s: tensor '%s' has unsupported type %u", path,
                             m->tensors[i].name, m->tensors[i].type);
    return snap_model_check(&m->config, m->vocab.n_tokens, src_shape_of, m, path, err);
}

/* ---- string map --------------------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a: short keys, good enough spread */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

int snap_strmap_build(snap_strmap *map, const uint32_t *offsets, const char *blob, uint32_t n)
{
    uint32_t cap = 16;
    while (cap < n * 2u && cap < (1u << 31))
        cap <<= 1;
    map->slots = calloc(cap, sizeof *map->slots);
    if (!map->slots)
        return SNAP_ENOMEM;
    map->cap = cap;
    map->offsets = offsets;
    map->blob = blob;
    for (uint32_t i = 0; i < n; i++) {
        const char *k = blob + offsets[i];
        size_t len = offsets[i + 1] - offsets[i];
        uint32_t s = hash_bytes(k, len) & (cap - 1);
        /* first id wins for duplicate spellings, as in Hugging Face vocabularies */
        while (map->slots[s]) {
            uint32_t j = map->slots[s] - 1;
            if (offsets[j + 1] - offsets[j] == len && memcmp(blob + offsets[j], k, len) == 0)
                break;
            s = (s + 1) & (cap - 1);
        }
        if (!map->slots[s])
            map->slots[s] = i + 1;
    }
    return 0;
}

int32_t snap_strmap_get(const snap_strmap *map, const char *key, size_t len)
{
    if (!map->slots)
        return -1;
    uint32_t s = hash_bytes(key, len) & (map->cap - 1);
    while (map->slots[s]) {
        uint32_t j = map->slots[s] - 1;
        if (map->offsets[j + 1] - map->offsets[j] == len && memcmp(map->blob + map->offsets[j], key, len) == 0)
            return (int32_t)j;
        s = (s + 1) & (map->cap - 1);
    }
    return -1;
}

void snap_strmap_free(snap_strmap *map)
{
    if (!map)
        return;
    free(map->slots);
    memset(map, 0, sizeof *map);
}
