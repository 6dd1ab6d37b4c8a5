/* model.c -- a snapshot loaded into a backend, with tokenizer and chat template; and
 * eng_seq, one sequence evaluated directly (no scheduler). */
#include "internal.h"

#include <math.h>
#include <time.h>

struct eng_model {
    snap_file *f;
    const eng_backend_ops *ops;
    void *be;
    eng_tokenizer *tok;
    eng_chat_template chat;
    char chat_error[512];           /* why chat is unavailable ("" when it is) */
    snap_config cfg;
    snap_gen_defaults gen;
    uint32_t n_ctx, max_batch;
    uint32_t n_kv_blocks;
    int32_t *free_blocks;           /* stack of free KV block ids (eng_seq's allocator) */
    uint32_t n_free;
};

struct eng_seq {
    eng_model *m;
    int32_t *blocks;                /* [n_ctx / 16] */
    uint32_t n_blocks;
    uint32_t len;
    int32_t *pos;                   /* scratch [max_batch] */
    uint32_t *seq, *out;
};

static const char *const eng_error_text[] = {
#define ENG_X_TEXT(name, value, text) [-(value)] = text,
    ENG_ERRORS(ENG_X_TEXT)
#undef ENG_X_TEXT
};

const char *eng_strerror(int code)
{
    if (code > 0 || -code >= (int)(sizeof eng_error_text / sizeof eng_error_text[0]))
        return "unknown error";
    return eng_error_text[-code];
}

int eng_fail(eng_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void eng_model_close(eng_model *m)
{
    if (!m)
        return;
    if (m->be)
        m->ops->destroy(m->be);
    eng_tokenizer_destroy(m->tok);
    snap_close(m->f);
    free(m->free_blocks);
    free(m);
}

int eng_model_open(const char *path, const eng_model_opts *opts, eng_model **out, eng_load_report *report,
                   eng_err *err)
{
    *out = NULL;
    eng_model_opts o = opts ? *opts : (eng_model_opts){0};
    eng_load_report rep = {0};
    eng_model *m = calloc(1, sizeof *m);
    if (!m)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    int rc;
    double t = now_s();
    snap_err serr = {{0}};
    if (snap_open(path, &m->f, &serr) != 0) {
        rc = eng_fail(err, ENG_ESNAPSHOT, "%s", serr.msg);
        goto fail;
    }
    rep.open_s = now_s() - t;
    m->cfg = *snap_get_config(m->f);
    m->gen = *snap_get_gen_defaults(m->f);
    const char *dev = o.device ? o.device : "cpu";
    if (!strcmp(dev, "cpu")) {
        m->ops = &eng_cpu_backend;
    } else if (!strcmp(dev, "auto")) {
        /* auto: CUDA when this build has it and a device is present (the CUDA backend's
         * create fails cleanly with no device, so probe first and fall back to the CPU) */
        m->ops = &eng_cpu_backend;
#ifdef THAW_CUDA
        if (eng_cuda_device_count() > 0)
            m->ops = &eng_cuda_backend;
#endif
    } else if (!strcmp(dev, "cuda")) {
#ifdef THAW_CUDA
        m->ops = &eng_cuda_backend;
#else
        rc = eng_fail(err, ENG_EUNSUPPORTED, "--device cuda: this build has no CUDA backend (build with make CUDA=1)");
        goto fail;
#endif
    } else {
        rc = eng_fail(err, ENG_EINVAL, "unknown device '%s' (cpu, cuda or auto)", dev);
        goto fail;
    }
    m->n_ctx = o.n_ctx ? o.n_ctx : m->cfg.n_ctx_train;
    if (m->n_ctx > m->cfg.n_ctx_train) {
        rc = eng_fail(err, ENG_EINVAL, "context %u is longer than the model's trained context %u", m->n_ctx,
                      m->cfg.n_ctx_train);
        goto fail;
    }
    m->max_batch = o.max_batch_tokens ? o.max_batch_tokens : 512;

    t = now_s();
    if ((rc = eng_tokenizer_create(snap_get_vocab(m->f), &m->tok, err)))
        goto fail;
    rep.tokenizer_s = now_s() - t;
    eng_err cerr = {{0}};
    if (eng_chat_template_init(&m->chat, snap_chat_template(m->f), o.chat_template, &cerr) != 0) {
        if (o.chat_template) { /* an explicit but invalid override is the user's error */
            rc = eng_fail(err, ENG_EINVAL, "%s", cerr.msg);
            goto fail;
        }
        snprintf(m->chat_error, sizeof m->chat_error, "%s", cerr.msg);
    }

    t = now_s();
    eng_backend_params bp = {.n_threads = o.n_threads, .max_batch_tokens = m->max_batch, .max_ctx = m->n_ctx,
                             .kv_mem_bytes = o.kv_mem_bytes, .gpu_mem_fraction = o.gpu_mem_fraction,
                             .load_io = o.load_io};
    if ((rc = m->ops->create(m->f, &bp, &m->be, &m->n_kv_blocks, &rep.load, err)))
        goto fail;
    rep.backend_s = now_s() - t;
    /* a KV pool smaller than one context shortens the context to what it holds (as in
     * llama.cpp, where the context is the KV size): prompts past it are refused up front and
     * generation stops there with "length", instead of failing part way */
    if ((uint64_t)m->n_kv_blocks * ENG_BLOCK_TOKENS < m->n_ctx)
        m->n_ctx = m->n_kv_blocks * ENG_BLOCK_TOKENS;
    m->free_blocks = malloc(m->n_kv_blocks * sizeof *m->free_blocks);
    if (!m->free_blocks) {
        rc = eng_fail(err, ENG_ENOMEM, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < m->n_kv_blocks; i++)
        m->free_blocks[i] = (int32_t)(m->n_kv_blocks - 1 - i);
    m->n_free = m->n_kv_blocks;
    if (report)
        *report = rep;
    *out = m;
    return 0;
fail:
    eng_model_close(m);
    return rc;
}

const snap_config *eng_model_config(const eng_model *m) { return &m->cfg; }
const snap_gen_defaults *eng_model_gen_defaults(const eng_model *m) { return &m->gen; }
const eng_tokenizer *eng_model_tokenizer(const eng_model *m) { return m->tok; }
const eng_chat_template *eng_model_chat(const eng_model *m) { return m->chat_error[0] ? NULL : &m->chat; }
const char *eng_model_chat_error(const eng_model *m) { return m->chat_error; }
const char *eng_model_name(const eng_model *m) { return m->cfg.name; }
const char *eng_model_backend(const eng_model *m) { return m->ops->name; }
uint32_t eng_model_n_ctx(const eng_model *m) { return m->n_ctx; }
uint32_t eng_model_kv_blocks(const eng_model *m) { return m->n_kv_blocks; }
uint32_t eng_model_max_batch(const eng_model *m) { return m->max_batch; }

int eng_model_forward(eng_model *m, const eng_batch *b, float *logits, eng_err *err)
{
    return m->ops->forward(m->be, b, logits, err);
}

void eng_model_parallel(eng_model *m, eng_task_fn fn, void *arg)
{
    if (m->ops->parallel)
        m->ops->parallel(m->be, fn, arg);
    else
        fn(arg, 0, 1);
}

int eng_model_is_stop_token(const eng_model *m, int32_t id)
{
    const snap_vocab *v = snap_get_vocab(m->f);
    if (id == v->eos_id || id == v->eot_id)
        return 1;
    for (uint32_t i = 0; i < m->gen.n_stop_ids; i++)
        if (id == m->gen.stop_ids[i])
            return 1;
    return 0;
}

int eng_bind_tensor(snap_file *f, const char *name, int required, int vec, const char *backend,
                    const snap_tensor **t, eng_err *err)
{
    *t = snap_tensor_find(f, name);
    if (!*t)
        return required ? eng_fail(err, ENG_ESNAPSHOT, "%s: missing tensor '%s'", snap_path(f), name) : 0;
    if (vec && ((*t)->dtype != SNAP_F32 || (*t)->n_dims != 1))
        return eng_fail(err, ENG_EUNSUPPORTED, "%s: tensor '%s' must be a 1-D f32 vector, is %s", snap_path(f), name,
                        snap_dtype_name((*t)->dtype));
    if (!vec && ((*t)->n_dims != 2 || (*t)->dtype == SNAP_BF16))
        return eng_fail(err, ENG_EUNSUPPORTED, "%s: tensor '%s': %u-D %s matrices are not supported by the %s backend",
                        snap_path(f), name, (*t)->n_dims, snap_dtype_name((*t)->dtype), backend);
    return 0;
}

/* One definition of RoPE's frequencies for every backend: theta^(-2i/D), divided by the
 * model's rope_freqs factors (GGUF Llama 3) or rescaled by Hugging Face's llama3 rule; linear
 * scaling (positions / factor) is folded in as frequency / factor. */
void eng_rope_inv_freq(const snap_config *c, const float *factors, float *out)
{
    uint32_t D = c->head_dim;
    for (uint32_t i = 0; i < D / 2; i++) {
        float f = powf(c->rope_theta, -2.0f * (float)i / (float)D);
        if (factors)
            f /= factors[i];
        if (c->rope_scaling == SNAP_ROPE_SCALING_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_scaling == SNAP_ROPE_SCALING_LLAMA3 && !factors) {
            float lo_wl = (float)c->rope_orig_ctx / c->rope_low_freq_factor;
            float hi_wl = (float)c->rope_orig_ctx / c->rope_high_freq_factor;
            float wl = 2.0f * (float)M_PI / f;
            if (wl > lo_wl) {
                f /= c->rope_factor;
            } else if (wl >= hi_wl) {
                float smooth = ((float)c->rope_orig_ctx / wl - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0f - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        out[i] = f;
    }
}

/* ---- eng_seq ------------------------------------------------------------------------------ */

int eng_seq_create(eng_model *m, eng_seq **out, eng_err *err)
{
    *out = NULL;
    uint32_t need = (m->n_ctx + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS;
    if (need > m->n_free)
        return eng_fail(err, ENG_ENOMEM, "KV pool has %u free blocks, a sequence of %u tokens needs %u", m->n_free,
                        m->n_ctx, need);
    eng_seq *s = calloc(1, sizeof *s);
    if (!s)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    s->m = m;
    s->blocks = malloc(need * sizeof *s->blocks);
    s->pos = malloc(m->max_batch * sizeof *s->pos);
    s->seq = calloc(m->max_batch, sizeof *s->seq);
    s->out = malloc(m->max_batch * sizeof *s->out);
    if (!s->blocks || !s->pos || !s->seq || !s->out) {
        free(s->blocks);
        free(s->pos);
        free(s->seq);
        free(s->out);
        free(s);
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < need; i++)
        s->blocks[i] = m->free_blocks[--m->n_free];
    s->n_blocks = need;
    *out = s;
    return 0;
}

void eng_seq_destroy(eng_seq *s)
{
    if (!s)
        return;
    for (uint32_t i = s->n_blocks; i > 0; i--)
        s->m->free_blocks[s->m->n_free++] = s->blocks[i - 1];
    free(s->blocks);
    free(s->pos);
    free(s->seq);
    free(s->out);
    free(s);
}

uint32_t eng_seq_len(const eng_seq *s) { return s->len; }

int eng_seq_eval(eng_seq *s, const int32_t *ids, uint32_t n, int all, float *logits, eng_err *err)
{
    eng_model *m = s->m;
    if (n == 0)
        return eng_fail(err, ENG_EINVAL, "no tokens to evaluate");
    if ((uint64_t)s->len + n > m->n_ctx)
        return eng_fail(err, ENG_ETOOLONG, "%u tokens after %u would pass the context of %u", n, s->len, m->n_ctx);
    eng_batch_seq bs = {s->blocks, s->n_blocks};
    uint32_t done = 0;
    while (done < n) {
        uint32_t k = n - done < m->max_batch ? n - done : m->max_batch;
        uint32_t n_out = 0;
        for (uint32_t i = 0; i < k; i++) {
            s->pos[i] = (int32_t)(s->len + i);
            if (logits && (all || done + i == n - 1))
                s->out[n_out++] = i;
        }
        eng_batch b = {k, ids + done, s->pos, s->seq, 1, &bs, n_out, s->out};
        float *dst = logits ? logits + (all ? (uint64_t)done * m->cfg.n_vocab : 0) : NULL;
        float dummy;
        int rc = m->ops->forward(m->be, &b, dst ? dst : &dummy, err);
        if (rc)
            return rc;
        s->len += k;
        done += k;
    }
    return 0;
}
