/* internal.h -- shared inside engine/: the backend interface, the batch a forward pass
 * takes, and the thread pool.
 *
 * A backend is a vtable plus a context pointer (ggml style). The CPU backend is the
 * reference; every other backend must agree with it on the same snapshot.
 */
#ifndef THAW_ENGINE_INTERNAL_H
#define THAW_ENGINE_INTERNAL_H

#include "engine.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENG_ASSERT(c)                                                                 \
    do {                                                                              \
        if (!(c)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

int eng_fail(eng_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Tokens per KV block (DESIGN.md: fixed blocks of 16). */
#define ENG_BLOCK_TOKENS 16

/* One sequence's view in a batch: its block table (block ids in the backend's KV pool, in
 * position order: position p lives in blocks[p / 16], slot p % 16). */
typedef struct eng_batch_seq {
    const int32_t *blocks;
    uint32_t n_blocks;
} eng_batch_seq;

/* A batch: tokens from one or more sequences at arbitrary positions (prefill chunks and
 * single decode tokens together). A token attends to positions 0..pos of its sequence; the
 * KV of earlier positions is either already in the cache or written by this same batch
 * (tokens of one sequence appear in increasing position order).
 *   tokens[n_tokens], pos[n_tokens], seq[n_tokens]: the token, its position, its sequence
 *   out[n_out]: indices of tokens whose logits are wanted, in the order logits are written */
typedef struct eng_batch {
    uint32_t n_tokens;
    const int32_t *tokens;
    const int32_t *pos;
    const uint32_t *seq;
    uint32_t n_seqs;
    const eng_batch_seq *seqs;
    uint32_t n_out;
    const uint32_t *out;
} eng_batch;

/* Sizes a backend is created for. */
typedef struct eng_backend_params {
    uint32_t n_threads;        /* CPU threads (0 = online cores) */
    uint32_t max_batch_tokens; /* most tokens in one forward */
    uint32_t max_ctx;          /* longest sequence (0 = the model's trained context) */
    uint64_t kv_mem_bytes;     /* KV pool budget (0 = backend's default) */
    double gpu_mem_fraction;   /* CUDA: share of GPU memory to fill (0 = 0.9) */
    uint32_t load_io;          /* enum snap_io for the weight load (0 = SNAP_IO_AUTO) */
} eng_backend_params;

typedef void (*eng_task_fn)(void *arg, uint32_t ith, uint32_t nth);

typedef struct eng_backend_ops {
    const char *name;
    /* Create the backend for an opened snapshot, upload its weights and size the KV pool.
     * Fills *n_kv_blocks with the pool's block count. Per-phase load timings go to stats. */
    int (*create)(snap_file *f, const eng_backend_params *p, void **ctx, uint32_t *n_kv_blocks,
                  snap_load_stats *stats, eng_err *err);
    /* Run one batch; write n_out rows of n_vocab logits. Returns 0 or ENG_E*. */
    int (*forward)(void *ctx, const eng_batch *b, float *logits, eng_err *err);
    void (*destroy)(void *ctx);
    /* Runs fn(arg, i, n) on each of the backend's n host threads (the caller's among them),
     * between forward passes; NULL where it has none. */
    void (*parallel)(void *ctx, eng_task_fn fn, void *arg);
} eng_backend_ops;

extern const eng_backend_ops eng_cpu_backend;
#ifdef THAW_CUDA
extern const eng_backend_ops eng_cuda_backend; /* engine/cuda/, built with make CUDA=1 */
int eng_cuda_device_count(void);               /* 0 when no driver or no device */
#endif

/* The per-layer tensors every backend binds, in one list: X(kind, field, name suffix) with
 * kind MAT (2-D weight), VEC (1-D f32, required) or BIAS (1-D f32, present iff the model has
 * Q/K/V biases). Backends give their layer structs these field names and expand the list. */
#define ENG_LAYER_TENSORS(X)                                                       \
    X(VEC, attn_norm, "attn_norm.weight") X(VEC, ffn_norm, "ffn_norm.weight")     \
    X(BIAS, bq, "attn_q.bias") X(BIAS, bk, "attn_k.bias") X(BIAS, bv, "attn_v.bias") \
    X(MAT, wq, "attn_q.weight") X(MAT, wk, "attn_k.weight")                       \
    X(MAT, wv, "attn_v.weight") X(MAT, wo, "attn_output.weight")                  \
    X(MAT, wg, "ffn_gate.weight") X(MAT, wu, "ffn_up.weight") X(MAT, wd, "ffn_down.weight")

/* model.c, for the backends' bind: tensor `name` of f in *t, with the checks both backends
 * make. Absent, it is ENG_ESNAPSHOT when required, else 0 with *t NULL; a vector (vec set) must
 * be 1-D f32, a matrix 2-D and not bf16 (the error names the backend). */
int eng_bind_tensor(snap_file *f, const char *name, int required, int vec, const char *backend,
                    const snap_tensor **t, eng_err *err);

/* In a backend's create function: binds layer l's tensors into *L with the backend's
 * bind(cx, f, name, mat, vec, required, err), the Q/K/V biases required only when bias is
 * set; a failure leaves its code in rc and jumps to fail. Uses cx, f, L, l, bias, rc and err
 * from the caller's scope. */
#define ENG_BIND_MAT_(field) bind(cx, f, n_, &L->field, NULL, 1, err)
#define ENG_BIND_VEC_(field) bind(cx, f, n_, NULL, &L->field, 1, err)
#define ENG_BIND_BIAS_(field) bind(cx, f, n_, NULL, &L->field, bias, err)
#define ENG_BIND_ONE_(kind, field, suffix)           \
    snprintf(n_, sizeof n_, "blk.%u." suffix, l);    \
    if ((rc = ENG_BIND_##kind##_(field)))            \
        goto fail;
#define ENG_BIND_LAYER()                              \
    do {                                              \
        char n_[SNAP_NAME_MAX];                       \
        ENG_LAYER_TENSORS(ENG_BIND_ONE_)              \
    } while (0)

/* model.c, for the scheduler: one forward pass on the model's backend, and its batch size. */
int eng_model_forward(eng_model *m, const eng_batch *b, float *logits, eng_err *err);
uint32_t eng_model_max_batch(const eng_model *m);
/* fn(arg, i, n) over the backend's host threads, or fn(arg, 0, 1) here where it has none. */
void eng_model_parallel(eng_model *m, eng_task_fn fn, void *arg);
/* RoPE inverse frequencies [head_dim / 2] with the model's scaling (model.c); factors is the
 * snapshot's rope_freqs.weight or NULL. Every backend uses this one definition. */
void eng_rope_inv_freq(const snap_config *c, const float *factors, float *out);
/* scheduler.c: the KV manager's invariants (tests) */
int eng_engine_check(eng_engine *e);

/* ---- thread pool: fork/join over n threads, the caller being thread 0 ----------------- */
typedef struct eng_pool eng_pool;
int eng_pool_create(uint32_t n_threads, eng_pool **out);
void eng_pool_destroy(eng_pool *p);
uint32_t eng_pool_size(const eng_pool *p);
/* Runs fn(arg, i, n) on every thread i in 0..n-1 and returns when all have finished.
 * Workers spin briefly for the next task (ops in a forward pass follow each other within
 * microseconds), then sleep on a condition variable: an idle pool has no runnable thread. */
void eng_pool_run(eng_pool *p, eng_task_fn fn, void *arg);

/* Split [0, n) evenly: the part of thread ith. */
static inline void eng_split(uint64_t n, uint32_t ith, uint32_t nth, uint64_t *lo, uint64_t *hi)
{
    uint64_t per = (n + nth - 1) / nth;
    *lo = per * ith < n ? per * ith : n;
    *hi = *lo + per < n ? *lo + per : n;
}

#endif
