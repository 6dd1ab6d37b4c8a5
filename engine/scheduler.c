/* scheduler.c -- continuous batching over the paged KV cache.
 *
 * Design notes
 *   One engine thread owns the model, the KV block manager and every running sequence. Any
 *   thread submits (into a bounded FCFS queue) and reads its request's events; both sides
 *   meet under `lock` (engine state) and each request's own `lock` (its events).
 *
 *   A sequence holds tokens[0 .. n_tokens) (prompt, then generated) of which the first
 *   n_computed have their K/V in the cache. Each step feeds every running sequence a chunk of
 *   its pending tokens tokens[n_computed .. n_tokens): one token for a decoding sequence, up to
 *   the remaining token budget for a prefilling one (chunked prefill; decodes go first so a
 *   long prompt never stalls them). A sequence whose chunk reaches n_tokens gets logits, samples
 *   one token and appends it (so "decode" and "prefill" are the same mechanism).
 *
 *   Blocks: before a step every scheduled sequence gets blocks for the positions it will
 *   write. When none are left, the newest running sequence is preempted -- the one asking,
 *   when that is the newest, so an older request never waits for a newer one: its blocks are
 *   released (full ones stay in the prefix cache), n_computed drops to its cached prefix, and
 *   it goes back to the head of the queue to be recomputed later -- its tokens and sampler
 *   state are kept, so its output is unchanged. A request fails for lack of KV only when it
 *   cannot fit even alone.
 *
 *   Cancellation: a cancelled request ends at the next step, running or queued, and gives
 *   back its blocks and its queue place at once.
 *
 *   Prefix cache: at admission the sequence's full blocks are looked up in order (keys chain
 *   from the previous block), stopping at the first miss and always leaving at least one
 *   token to compute (it produces the logits). After each step every newly full block is
 *   published.
 *
 *   Idle: with nothing queued or running the thread waits on `wake`; no timers, no polling.
 *   Memory: everything a request needs is allocated at submit and freed at release.
 */
#include "kv.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

enum req_state { RS_QUEUED, RS_RUNNING, RS_DONE };

struct eng_request {
    /* set at submit, read-only after */
    eng_engine *e;
    uint64_t seq_no;
    uint32_t n_prompt, max_tokens, cap;  /* cap = n_prompt + max_tokens, within the context */
    int ignore_eos, want_samples;
    double t_submit;
    eng_logit_bias *bias;
    /* engine thread only (after admission) */
    int32_t *tokens;                    /* [cap] */
    uint32_t n_tokens, n_computed, n_cached;
    int32_t *blocks;                    /* [cap / 16 + 1] */
    uint32_t n_blocks, n_published;
    uint64_t last_key;                  /* key of block n_published - 1 (root before) */
    eng_sampler *sampler;
    eng_stop stop;
    eng_detok detok;
    char *piece;                        /* [detok_max] scratch */
    int state;                          /* enum req_state, under e->lock */
    int admitted;                       /* admitted at least once (e->lock) */
    int in_batch;
    struct eng_request *next;           /* queue / running list link, under e->lock */
    atomic_int cancel;
    /* events, under lock */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char *text;                         /* all emitted text */
    size_t text_len, text_cap;
    uint32_t *text_end;                 /* [max_tokens]: text_len after token i */
    int32_t *out_tokens;                /* [max_tokens] */
    eng_sample_result *samples;         /* [max_tokens] when want_samples */
    uint32_t n_out, n_read;
    int finish;
    char error[256];
    double queue_s, ttft_s;
    int refs;                           /* engine + consumer */
    /* consumer scratch */
    char *ev_text;
    size_t ev_text_cap;
    eng_sample_result ev_sample;
};

struct eng_engine {
    eng_model *m;
    eng_kv *kv;
    uint32_t max_seqs, max_batch, max_queue, n_ctx, n_vocab;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, idle;
    int stopping, draining;
    eng_request *queue_head, *queue_tail;
    uint32_t n_queued;
    int cancel_pending;                 /* a cancel since the last sweep of the queue */
    eng_request *running;               /* list, admission order */
    uint32_t n_running;
    uint64_t next_seq_no;
    eng_stats stats;
    /* step scratch, sized once */
    int32_t *b_tokens, *b_pos;
    uint32_t *b_seq, *b_out;
    eng_batch_seq *b_seqs;
    eng_request **b_reqs, **b_out_reqs, **b_cand;
    float *logits;                      /* [max_seqs][n_vocab] */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* An absolute CLOCK_REALTIME deadline timeout_ms from now, for pthread_cond_timedwait. */
static struct timespec deadline(int timeout_ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += timeout_ms / 1000;
    t.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* ---- request lifetime ------------------------------------------------------------------ */

static void request_free(eng_request *r)
{
    eng_sampler_destroy(r->sampler);
    free(r->bias);
    free(r->tokens);
    free(r->blocks);
    free(r->piece);
    free(r->text);
    free(r->text_end);
    free(r->out_tokens);
    free(r->samples);
    free(r->ev_text);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
}

/* Drops one of the two references (engine, consumer). */
static void request_put(eng_request *r)
{
    pthread_mutex_lock(&r->lock);
    int last = --r->refs == 0;
    pthread_mutex_unlock(&r->lock);
    if (last)
        request_free(r);
}

/* Engine thread: release a sequence's blocks. */
static void release_blocks(eng_engine *e, eng_request *r)
{
    for (uint32_t i = 0; i < r->n_blocks; i++)
        eng_kv_unref(e->kv, r->blocks[i]);
    r->n_blocks = 0;
    r->n_published = 0;
    r->n_computed = 0;
    r->last_key = ENG_KV_ROOT;
}

/* Engine thread, e->lock held: finish a request and hand it to its consumer alone. */
static void finish(eng_engine *e, eng_request *r, int how, const char *error)
{
    release_blocks(e, r);
    pthread_mutex_lock(&r->lock);
    r->finish = how;
    if (error)
        snprintf(r->error, sizeof r->error, "%s", error);
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    r->state = RS_DONE;
    e->stats.requests_finished++;
    request_put(r);
}

/* ---- events (engine side) ---------------------------------------------------------------- */

static int push_text(eng_request *r, const char *s, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = r->text_cap * 2 > r->text_len + n + 1 ? r->text_cap * 2 : r->text_len + n + 1;
        char *t = realloc(r->text, cap);
        if (!t)
            return ENG_ENOMEM;
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    return 0;
}

/* Engine thread: record a sampled token and its text; returns the finish reason or 0. */
static int emit_token(eng_engine *e, eng_request *r, const eng_sample_result *res)
{
    const eng_tokenizer *t = eng_model_tokenizer(e->m);
    int32_t tok = res->token;
    r->tokens[r->n_tokens++] = tok;
    int stop_tok = !r->ignore_eos && eng_model_is_stop_token(e->m, tok);
    char buf[ENG_STOP_MAX_LEN * 2 + 128];
    size_t n_text = 0;
    if (!stop_tok) {
        size_t k = eng_detok_push(t, &r->detok, tok, r->piece, eng_detok_max(t));
        n_text = eng_stop_push(&r->stop, r->piece, k, buf, sizeof buf);
    }
    int how = 0;
    if (stop_tok || r->stop.matched)
        how = ENG_FINISH_STOP;
    else if (r->n_out + 1 >= r->max_tokens || r->n_tokens >= r->cap)
        how = ENG_FINISH_LENGTH;
    if (how && !r->stop.matched) { /* ending without a stop string: emit what was held back */
        char tail[16];
        size_t k = eng_detok_flush(&r->detok, tail, sizeof tail);
        n_text += eng_stop_push(&r->stop, tail, k, buf + n_text, sizeof buf - n_text);
        if (r->stop.matched)
            how = ENG_FINISH_STOP;
        else
            n_text += eng_stop_flush(&r->stop, buf + n_text, sizeof buf - n_text);
    }
    pthread_mutex_lock(&r->lock);
    int rc = push_text(r, buf, n_text);
    if (rc == 0 && !stop_tok) { /* a stop token is not part of the output */
        r->out_tokens[r->n_out] = tok;
        if (r->want_samples)
            r->samples[r->n_out] = *res;
        r->text_end[r->n_out] = (uint32_t)r->text_len;
        if (r->n_out == 0)
            r->ttft_s = now_s() - r->t_submit;
        r->n_out++;
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return rc ? ENG_FINISH_ERROR : how;
}

/* ---- admission and preemption ------------------------------------------------------------ */

/* Blocks a sequence needs to hold positions [0, upto). */
static uint32_t blocks_for(uint32_t upto) { return (upto + ENG_BLOCK_TOKENS - 1) / ENG_BLOCK_TOKENS; }

/* The full blocks before r's last token: those the prefix cache may hold (the last token is
 * always computed: it produces the logits). */
static uint32_t lookup_blocks(const eng_request *r) { return (r->n_tokens - 1) / ENG_BLOCK_TOKENS; }

/* e->lock held. Reuse cached prefix blocks for r (from n_blocks == 0), stopping at the first
 * miss. */
static void take_prefix(eng_engine *e, eng_request *r)
{
    r->last_key = ENG_KV_ROOT;
    while (r->n_blocks < lookup_blocks(r)) {
        uint64_t key;
        int32_t id = eng_kv_lookup(e->kv, r->last_key, r->tokens + r->n_blocks * ENG_BLOCK_TOKENS, &key);
        if (id < 0)
            break;
        r->blocks[r->n_blocks++] = id;
        r->last_key = key;
    }
    r->n_published = r->n_blocks;
    r->n_computed = r->n_blocks * ENG_BLOCK_TOKENS;
}

static void unlink_running(eng_engine *e, eng_request *r)
{
    for (eng_request **p = &e->running; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            r->next = NULL;
            e->n_running--;
            return;
        }
}

/* Unlink r from the queue, prev being the request before it (NULL at the head). */
static void queue_remove(eng_engine *e, eng_request *prev, eng_request *r)
{
    if (prev)
        prev->next = r->next;
    else
        e->queue_head = r->next;
    if (e->queue_tail == r)
        e->queue_tail = prev;
    e->n_queued--;
    r->next = NULL;
}

static void queue_push_front(eng_engine *e, eng_request *r)
{
    r->next = e->queue_head;
    e->queue_head = r;
    if (!e->queue_tail)
        e->queue_tail = r;
    e->n_queued++;
    r->state = RS_QUEUED;
}

/* The newest running sequence (the latest submitted): the one preemption takes. */
static eng_request *newest_running(const eng_engine *e)
{
    eng_request *newest = NULL;
    for (eng_request *r = e->running; r; r = r->next)
        if (!newest || r->seq_no > newest->seq_no)
            newest = r;
    return newest;
}

/* Back to the head of the queue, its full blocks left in the prefix cache for its recompute. */
static void preempt(eng_engine *e, eng_request *victim)
{
    unlink_running(e, victim);
    release_blocks(e, victim);
    queue_push_front(e, victim);
    e->stats.preemptions++;
}

/* e->lock held. Move queued requests to running while there is room (FCFS: stop at the
 * first that does not fit). */
static void admit(eng_engine *e)
{
    while (e->queue_head && e->n_running < e->max_seqs) {
        eng_request *r = e->queue_head;
        /* the first chunk must be placeable; later growth preempts if needed */
        take_prefix(e, r);
        uint32_t first = r->n_tokens - r->n_computed;
        if (first > e->max_batch)
            first = e->max_batch;
        uint32_t need = blocks_for(r->n_computed + first) - r->n_blocks;
        if (need > eng_kv_available(e->kv) && e->n_running > 0) {
            release_blocks(e, r); /* undo the prefix refs; wait for blocks */
            break;
        }
        queue_remove(e, NULL, r);
        if (!r->admitted) { /* its first admission (a recompute after preemption is not a lookup of its prompt) */
            r->admitted = 1;
            e->stats.prefix_hits += r->n_blocks;
            e->stats.prefix_misses += lookup_blocks(r) - r->n_blocks;
            pthread_mutex_lock(&r->lock);
            r->queue_s = now_s() - r->t_submit;
            r->n_cached = r->n_computed;
            pthread_mutex_unlock(&r->lock);
        }
        /* append to running (admission order) */
        eng_request **p = &e->running;
        while (*p)
            p = &(*p)->next;
        *p = r;
        e->n_running++;
        r->state = RS_RUNNING;
    }
}

/* ---- one step ------------------------------------------------------------------------------ */

/* Ensure r has blocks for positions [0, upto), preempting the newest running sequences while
 * none are left. 0: done; 1: r was the newest and is preempted itself; -1: r runs alone and
 * still does not fit. */
static int grow(eng_engine *e, eng_request *r, uint32_t upto)
{
    while (r->n_blocks < blocks_for(upto)) {
        int32_t id = eng_kv_alloc(e->kv);
        if (id >= 0) {
            r->blocks[r->n_blocks++] = id;
            continue;
        }
        eng_request *victim = newest_running(e);
        if (victim == r && e->n_running == 1)
            return -1;
        preempt(e, victim);
        if (victim == r)
            return 1;
    }
    return 0;
}

/* Publish r's newly full, computed blocks to the prefix cache. */
static void publish(eng_engine *e, eng_request *r)
{
    while (r->n_published < r->n_blocks && (r->n_published + 1) * ENG_BLOCK_TOKENS <= r->n_computed) {
        uint64_t key;
        eng_kv_publish(e->kv, r->blocks[r->n_published], r->last_key,
                       r->tokens + r->n_published * ENG_BLOCK_TOKENS, &key);
        r->last_key = key;
        r->n_published++;
    }
}

/* Sampling a step's outputs, each request's on one of the backend's threads: a greedy pick
 * alone reads all 49,152 logits of SmolLM2, half of them written by the other core's part of
 * the output head (16 requests: 330 -> 177 us per step on two threads). The emits stay on the
 * engine thread: each wakes its consumer, which then runs on the other core while that core's
 * thread waits (emitting on both threads took 355 us against 177 + 100-160 this way). */
typedef struct sample_task {
    eng_engine *e;
    uint32_t n;
    eng_sample_result *res;
} sample_task;

static void sample_run(void *arg, uint32_t ith, uint32_t nth)
{
    sample_task *t = arg;
    for (uint32_t i = ith; i < t->n; i += nth)
        eng_sample(t->e->b_out_reqs[i]->sampler, t->e->logits + (size_t)i * t->e->n_vocab, &t->res[i]);
}

/* e->lock held. Cancelled requests end at once, running or queued: their blocks go back and
 * their queue places free up before anything is scheduled. */
static void reap_cancelled(eng_engine *e)
{
    for (eng_request *r = e->running, *next; r; r = next) {
        next = r->next;
        if (atomic_load(&r->cancel)) {
            unlink_running(e, r);
            finish(e, r, ENG_FINISH_CANCELLED, NULL);
        }
    }
    if (!e->cancel_pending) /* the queue only after a cancel: it may be long */
        return;
    e->cancel_pending = 0;
    eng_request *prev = NULL;
    for (eng_request *r = e->queue_head, *next; r; r = next) {
        next = r->next;
        if (!atomic_load(&r->cancel)) {
            prev = r;
            continue;
        }
        queue_remove(e, prev, r);
        finish(e, r, ENG_FINISH_CANCELLED, NULL);
    }
}

/* e->lock held on entry and exit; released around the forward pass. */
static void step(eng_engine *e)
{
    reap_cancelled(e);
    admit(e);
    if (!e->running)
        return;

    /* plan: decodes first, then prefill chunks, under the token budget. The running list
     * changes under grow() (preemption moves sequences to the queue), so walk a snapshot of
     * it and skip whatever this step has preempted. */
    uint32_t n_cand = 0, n_reqs = 0, budget = e->max_batch;
    for (eng_request *r = e->running; r; r = r->next)
        e->b_cand[n_cand++] = r;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t c = 0; c < n_cand && budget > 0; c++) {
            eng_request *r = e->b_cand[c];
            if (!r)
                continue;
            uint32_t pending = r->n_tokens - r->n_computed;
            if (r->state != RS_RUNNING || r->in_batch || (pass == 0) != (pending == 1))
                continue;
            uint32_t chunk = pending < budget ? pending : budget;
            int grown = grow(e, r, r->n_computed + chunk);
            if (grown < 0) { /* alone and still no room: it can never fit */
                e->b_cand[c] = NULL; /* finish may hand it to its consumer to free */
                unlink_running(e, r);
                finish(e, r, ENG_FINISH_ERROR, "the request does not fit in the KV cache even alone");
                continue;
            }
            if (grown > 0) /* preempted itself */
                continue;
            r->in_batch = (int)chunk;
            e->b_reqs[n_reqs++] = r;
            budget -= chunk;
        }
    }
    /* grow() may have preempted sequences planned earlier in this step: drop them */
    uint32_t k = 0;
    for (uint32_t i = 0; i < n_reqs; i++) {
        if (e->b_reqs[i]->state == RS_RUNNING)
            e->b_reqs[k++] = e->b_reqs[i];
        else
            e->b_reqs[i]->in_batch = 0;
    }
    n_reqs = k;
    if (n_reqs == 0)
        return;

    /* build the batch */
    uint32_t n_tok = 0, n_out = 0;
    for (uint32_t i = 0; i < n_reqs; i++) {
        eng_request *r = e->b_reqs[i];
        uint32_t chunk = (uint32_t)r->in_batch;
        e->b_seqs[i] = (eng_batch_seq){r->blocks, r->n_blocks};
        for (uint32_t j = 0; j < chunk; j++) {
            e->b_tokens[n_tok] = r->tokens[r->n_computed + j];
            e->b_pos[n_tok] = (int32_t)(r->n_computed + j);
            e->b_seq[n_tok] = i;
            n_tok++;
        }
        if (r->n_computed + chunk == r->n_tokens) {
            e->b_out[n_out] = n_tok - 1;
            e->b_out_reqs[n_out++] = r;
        }
        e->stats.prompt_tokens += r->n_computed < r->n_prompt ? (r->n_prompt - r->n_computed < chunk ? r->n_prompt - r->n_computed : chunk) : 0;
    }
    eng_batch b = {n_tok, e->b_tokens, e->b_pos, e->b_seq, n_reqs, e->b_seqs, n_out, e->b_out};

    pthread_mutex_unlock(&e->lock);
    /* n_computed, tokens and samplers belong to the engine thread: no lock needed for them */
    eng_err err = {{0}};
    int rc = eng_model_forward(e->m, &b, e->logits, &err);
    eng_sample_result res[64];
    int how[64] = {0};
    if (rc == 0) {
        for (uint32_t i = 0; i < n_reqs; i++)
            e->b_reqs[i]->n_computed += (uint32_t)e->b_reqs[i]->in_batch;
        sample_task st = {e, n_out, res}; /* max_seqs <= 64 (create) */
        if (n_out >= 4) /* (fewer: not worth a pass over the pool, as cpu.c's run_tokens) */
            eng_model_parallel(e->m, sample_run, &st);
        else
            sample_run(&st, 0, 1);
        for (uint32_t i = 0; i < n_out; i++)
            how[i] = emit_token(e, e->b_out_reqs[i], &res[i]);
    }
    pthread_mutex_lock(&e->lock);

    for (uint32_t i = 0; i < n_reqs; i++) {
        eng_request *r = e->b_reqs[i];
        r->in_batch = 0;
        if (rc != 0) {
            unlink_running(e, r);
            finish(e, r, ENG_FINISH_ERROR, err.msg);
            continue;
        }
        publish(e, r);
    }
    if (rc == 0)
        e->stats.generated_tokens += n_out;
    for (uint32_t i = 0; i < n_out && rc == 0; i++) {
        eng_request *r = e->b_out_reqs[i];
        if (how[i]) {
            unlink_running(e, r);
            finish(e, r, how[i], how[i] == ENG_FINISH_ERROR ? "out of memory for the output text" : NULL);
        }
    }
}

static void *engine_main(void *arg)
{
    eng_engine *e = arg;
    pthread_mutex_lock(&e->lock);
    for (;;) {
        if (e->stopping)
            break;
        if (!e->running && !e->queue_head) {
            pthread_cond_broadcast(&e->idle);
            pthread_cond_wait(&e->wake, &e->lock);
            continue;
        }
        step(e);
        if (!e->running && !e->queue_head)
            pthread_cond_broadcast(&e->idle);
    }
    /* stopping: everything still here is cancelled */
    while (e->running) {
        eng_request *r = e->running;
        unlink_running(e, r);
        finish(e, r, ENG_FINISH_CANCELLED, NULL);
    }
    while (e->queue_head) {
        eng_request *r = e->queue_head;
        queue_remove(e, NULL, r);
        finish(e, r, ENG_FINISH_CANCELLED, NULL);
    }
    pthread_cond_broadcast(&e->idle);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------------------ */

/* Everything eng_engine_create made but the thread. */
static void engine_free(eng_engine *e)
{
    eng_kv_destroy(e->kv);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->idle);
    free(e->b_tokens), free(e->b_pos), free(e->b_seq), free(e->b_out), free(e->b_seqs), free(e->b_reqs);
    free(e->b_out_reqs), free(e->b_cand), free(e->logits);
    free(e);
}

int eng_engine_create(eng_model *m, const eng_engine_opts *o, eng_engine **out, eng_err *err)
{
    *out = NULL;
    eng_engine *e = calloc(1, sizeof *e);
    if (!e)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    e->m = m;
    e->max_seqs = o && o->max_seqs ? o->max_seqs : 16;
    e->max_queue = o && o->max_queue ? o->max_queue : 64;
    e->max_batch = eng_model_max_batch(m);
    if (o && o->max_batch_tokens && o->max_batch_tokens < e->max_batch)
        e->max_batch = o->max_batch_tokens;
    if (e->max_seqs > e->max_batch)
        e->max_seqs = e->max_batch;
    e->n_ctx = eng_model_n_ctx(m);
    e->n_vocab = eng_model_config(m)->n_vocab;
    int rc = eng_kv_create(eng_model_kv_blocks(m), &e->kv);
    e->b_tokens = malloc(e->max_batch * sizeof *e->b_tokens);
    e->b_pos = malloc(e->max_batch * sizeof *e->b_pos);
    e->b_seq = malloc(e->max_batch * sizeof *e->b_seq);
    e->b_out = malloc(e->max_seqs * sizeof *e->b_out);
    e->b_seqs = malloc(e->max_seqs * sizeof *e->b_seqs);
    e->b_reqs = malloc(e->max_seqs * sizeof *e->b_reqs);
    e->b_out_reqs = malloc(e->max_seqs * sizeof *e->b_out_reqs);
    e->b_cand = malloc(e->max_seqs * sizeof *e->b_cand);
    e->logits = malloc((size_t)e->max_seqs * e->n_vocab * sizeof *e->logits);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->idle, NULL);
    if (rc || !e->b_tokens || !e->b_pos || !e->b_seq || !e->b_out || !e->b_seqs || !e->b_reqs || !e->b_out_reqs ||
        !e->b_cand || !e->logits || e->max_seqs > 64) {
        int code = e->max_seqs > 64 ? ENG_EINVAL : ENG_ENOMEM;
        engine_free(e);
        return eng_fail(err, code, code == ENG_EINVAL ? "--max-seqs is at most 64" : "out of memory");
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        engine_free(e);
        return eng_fail(err, ENG_ENOMEM, "cannot start the engine thread");
    }
    *out = e;
    return 0;
}

void eng_engine_destroy(eng_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    engine_free(e);
}

int eng_submit(eng_engine *e, const eng_request_params *p, eng_request **out, eng_err *err)
{
    *out = NULL;
    if (!p->prompt || p->n_prompt == 0)
        return eng_fail(err, ENG_EINVAL, "the prompt is empty");
    if (p->max_tokens < 1)
        return eng_fail(err, ENG_EINVAL, "max_tokens must be at least 1");
    if (p->n_prompt >= e->n_ctx)
        return eng_fail(err, ENG_ETOOLONG, "the prompt has %u tokens; the context holds %u", p->n_prompt, e->n_ctx);
    for (uint32_t i = 0; i < p->n_prompt; i++) /* one bad id would fail every request batched with it */
        if (p->prompt[i] < 0 || (uint32_t)p->prompt[i] >= e->n_vocab)
            return eng_fail(err, ENG_EINVAL, "prompt token %u: id %d is outside the vocabulary (0..%u)", i,
                            p->prompt[i], e->n_vocab - 1);
    int rc;
    if ((rc = eng_sampling_check(&p->sampling, e->n_vocab, err)))
        return rc;
    eng_request *r = calloc(1, sizeof *r);
    if (!r)
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    r->e = e;
    r->n_prompt = p->n_prompt;
    r->max_tokens = p->max_tokens;
    r->cap = (uint64_t)p->n_prompt + p->max_tokens < e->n_ctx ? p->n_prompt + p->max_tokens : e->n_ctx;
    r->ignore_eos = p->ignore_eos;
    r->want_samples = p->sampling.n_logprobs > 0 || p->logprobs;
    uint32_t n_out_max = r->cap - r->n_prompt;
    const eng_tokenizer *t = eng_model_tokenizer(e->m);
    eng_sampling sp = p->sampling;
    sp.skip_logprob = !r->want_samples;
    if (sp.n_logit_bias) {
        r->bias = malloc(sp.n_logit_bias * sizeof *r->bias);
        if (r->bias)
            memcpy(r->bias, sp.logit_bias, sp.n_logit_bias * sizeof *r->bias);
        sp.logit_bias = r->bias;
    }
    r->tokens = malloc(r->cap * sizeof *r->tokens);
    r->blocks = malloc((blocks_for(r->cap) + 1) * sizeof *r->blocks);
    r->piece = malloc(eng_detok_max(t) + 8);
    r->text_cap = 256;
    r->text = malloc(r->text_cap);
    r->text_end = malloc(n_out_max * sizeof *r->text_end);
    r->out_tokens = malloc(n_out_max * sizeof *r->out_tokens);
    r->samples = r->want_samples ? malloc(n_out_max * sizeof *r->samples) : NULL;
    r->ev_text_cap = ENG_STOP_MAX_LEN * 2 + eng_detok_max(t) + 64;
    r->ev_text = malloc(r->ev_text_cap);
    if ((sp.n_logit_bias && !r->bias) || !r->tokens || !r->blocks || !r->piece || !r->text || !r->text_end ||
        !r->out_tokens || (r->want_samples && !r->samples) || !r->ev_text ||
        eng_sampler_create(e->n_vocab, &sp, &r->sampler)) {
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->cond, NULL);
        request_free(r);
        return eng_fail(err, ENG_ENOMEM, "out of memory");
    }
    if ((rc = eng_stop_init(&r->stop, p->stop, p->n_stop, err))) {
        pthread_mutex_init(&r->lock, NULL);
        pthread_cond_init(&r->cond, NULL);
        request_free(r);
        return rc;
    }
    memcpy(r->tokens, p->prompt, p->n_prompt * sizeof *r->tokens);
    r->n_tokens = p->n_prompt;
    eng_sampler_prompt(r->sampler, p->prompt, p->n_prompt);
    eng_detok_init(&r->detok, 1);
    r->last_key = ENG_KV_ROOT;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->refs = 2;
    r->t_submit = now_s();
    atomic_init(&r->cancel, 0);

    pthread_mutex_lock(&e->lock);
    if (e->draining || e->stopping) {
        pthread_mutex_unlock(&e->lock);
        request_free(r);
        return eng_fail(err, ENG_ESTOPPED, "the server is shutting down");
    }
    if (e->n_queued >= e->max_queue) {
        pthread_mutex_unlock(&e->lock);
        request_free(r);
        return eng_fail(err, ENG_EBUSY, "the queue is full (%u waiting)", e->max_queue);
    }
    r->seq_no = e->next_seq_no++;
    r->state = RS_QUEUED;
    if (e->queue_tail)
        e->queue_tail->next = r;
    else
        e->queue_head = r;
    e->queue_tail = r;
    e->n_queued++;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    *out = r;
    return 0;
}

int eng_request_next(eng_request *r, eng_event *ev, int timeout_ms)
{
    pthread_mutex_lock(&r->lock);
    struct timespec until = deadline(timeout_ms >= 0 ? timeout_ms : 0);
    while (r->n_read == r->n_out && r->finish == ENG_FINISH_NONE) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&r->cond, &r->lock);
        } else if (pthread_cond_timedwait(&r->cond, &r->lock, &until) != 0) {
            pthread_mutex_unlock(&r->lock);
            return 0;
        }
    }
    memset(ev, 0, sizeof *ev);
    ev->n_prompt = r->n_prompt;
    ev->n_cached = r->n_cached;
    ev->queue_s = r->queue_s;
    ev->ttft_s = r->ttft_s;
    if (r->n_read < r->n_out) {
        uint32_t i = r->n_read++;
        size_t lo = i ? r->text_end[i - 1] : 0, hi = r->text_end[i];
        size_t n = hi - lo < r->ev_text_cap ? hi - lo : r->ev_text_cap;
        memcpy(r->ev_text, r->text + lo, n);
        ev->token = r->out_tokens[i];
        ev->text = r->ev_text;
        ev->text_len = n;
        if (r->want_samples) {
            r->ev_sample = r->samples[i];
            ev->sample = &r->ev_sample;
        }
        ev->n_generated = r->n_read;
    } else {
        /* done: text emitted after the last token (a flush at the end) rides on this event */
        size_t lo = r->n_out ? r->text_end[r->n_out - 1] : 0;
        size_t n = r->text_len - lo < r->ev_text_cap ? r->text_len - lo : r->ev_text_cap;
        memcpy(r->ev_text, r->text + lo, n);
        ev->text = r->ev_text;
        ev->text_len = n;
        ev->done = 1;
        ev->finish = r->finish;
        ev->error = r->error[0] ? r->error : NULL;
        ev->n_generated = r->n_out;
        ev->token = -1;
    }
    pthread_mutex_unlock(&r->lock);
    return 1;
}

void eng_request_cancel(eng_request *r)
{
    if (!r)
        return;
    eng_engine *e = r->e;
    atomic_store(&r->cancel, 1);
    pthread_mutex_lock(&e->lock);
    e->cancel_pending = 1; /* after r->cancel: the sweep that clears it sees r, wherever r is */
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

void eng_request_release(eng_request *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    int done = r->finish != ENG_FINISH_NONE;
    pthread_mutex_unlock(&r->lock);
    if (!done)
        eng_request_cancel(r);
    request_put(r);
}

void eng_engine_drain(eng_engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->draining = 1;
    pthread_mutex_unlock(&e->lock);
}

int eng_engine_wait_idle(eng_engine *e, int timeout_ms)
{
    struct timespec until = deadline(timeout_ms);
    pthread_mutex_lock(&e->lock);
    int idle;
    while (!(idle = !e->running && !e->queue_head))
        if (pthread_cond_timedwait(&e->idle, &e->lock, &until) != 0)
            break;
    idle = !e->running && !e->queue_head;
    pthread_mutex_unlock(&e->lock);
    return idle;
}

void eng_engine_stats(eng_engine *e, eng_stats *st)
{
    pthread_mutex_lock(&e->lock);
    *st = e->stats;
    st->queued = e->n_queued;
    st->running = e->n_running;
    eng_kv_counts(e->kv, &st->kv_blocks_free, &st->kv_blocks_used, &st->kv_blocks_cached);
    st->kv_blocks_total = eng_kv_total(e->kv);
    pthread_mutex_unlock(&e->lock);
}

uint32_t eng_engine_max_queue(const eng_engine *e) { return e->max_queue; }

int eng_engine_check(eng_engine *e)
{
    pthread_mutex_lock(&e->lock);
    int ok = eng_kv_check(e->kv);
    pthread_mutex_unlock(&e->lock);
    return ok;
}
