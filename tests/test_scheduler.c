/* test_scheduler.c -- continuous batching, the paged KV cache, preemption and prefix caching.
 *
 *   - concurrent greedy requests of different lengths, arriving at different times, give
 *     exactly the text each gives alone (default model);
 *   - a KV pool too small for all of them at once still completes every request with the
 *     same output (preemption and recompute);
 *   - a second request with the same system prompt reuses its blocks (counter) and gives
 *     identical output;
 *   - 1000 random requests with random cancellations on a tiny model leave no block leaked
 *     and the block manager's invariants hold;
 *   - the block manager on its own: states, LRU eviction, lookups, and many blocks through a
 *     small key table;
 *   - a full queue refuses, then drains; a cancelled queued request leaves at once;
 *   - the newest sequence is the one preempted; a pool smaller than the context shortens it. */
#include "../engine/kv.h"
#include "test.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

#define MODEL "models/smollm2-135m-instruct.thaw"

static eng_model *open_model(const char *path, uint64_t kv_mem, uint32_t n_ctx)
{
    eng_model *m = NULL;
    eng_err err = {{0}};
    eng_model_opts o = {.n_ctx = n_ctx, .kv_mem_bytes = kv_mem, .n_threads = 2};
    if (eng_model_open(path, &o, &m, NULL, &err) != 0)
        fprintf(stderr, "  %s\n", err.msg);
    return m;
}

/* The snapshot at path (n_ctx positions, kv_mem bytes of KV or 0 for the default) and an
 * engine on it (opts, NULL: the defaults); NULL (message printed) on failure, *m then NULL or
 * the model to close. */
static eng_engine *model_engine(const char *path, uint64_t kv_mem, uint32_t n_ctx, const eng_engine_opts *opts,
                                eng_model **m)
{
    eng_engine *e = NULL;
    eng_err err;
    if (!(*m = open_model(path, kv_mem, n_ctx)))
        return NULL;
    if (eng_engine_create(*m, opts, &e, &err) != 0)
        fprintf(stderr, "  engine: %s\n", err.msg);
    return e;
}

/* The end of a test: the engine idle with its invariants whole, then everything closed (and
 * the packed snapshot at path, when given, removed). */
static void close_all(eng_engine *e, eng_model *m, const char *path)
{
    CHECK(eng_engine_wait_idle(e, 10000));
    CHECK(eng_engine_check(e));
    eng_engine_destroy(e);
    eng_model_close(m);
    if (path)
        unlink(path);
}

typedef struct job {
    eng_engine *e;
    const eng_tokenizer *tok;
    const char *prompt;
    uint32_t max_tokens;
    unsigned delay_ms;
    char text[4096];
    int finish;
    uint32_t n_cached, n_gen;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    if (j->delay_ms)
        usleep(j->delay_ms * 1000);
    int32_t ids[1024];
    long n = eng_tokenize(j->tok, j->prompt, strlen(j->prompt), 0, 1, ids, 1024);
    eng_request_params p = {.prompt = ids, .n_prompt = (uint32_t)n, .max_tokens = j->max_tokens};
    eng_sampling_defaults(&p.sampling);
    eng_request *r = NULL;
    eng_err err = {{0}};
    if (eng_submit(j->e, &p, &r, &err) != 0) {
        snprintf(j->text, sizeof j->text, "submit failed: %s", err.msg);
        return NULL;
    }
    size_t len = 0;
    eng_event ev;
    while (eng_request_next(r, &ev, -1)) {
        if (len + ev.text_len < sizeof j->text) {
            memcpy(j->text + len, ev.text, ev.text_len);
            len += ev.text_len;
        }
        if (ev.done) {
            j->finish = ev.finish;
            j->n_cached = ev.n_cached;
            j->n_gen = ev.n_generated;
            break;
        }
    }
    j->text[len] = 0;
    eng_request_release(r);
    return NULL;
}

static const char *const prompts[] = {
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colors are",
    "<|im_start|>user\nWrite a short poem about autumn leaves falling in the park.<|im_end|>\n<|im_start|>assistant\n",
    "def add(a, b):\n",
    "Once upon a time, in a land far away, there was a little dragon who",
    "1, 2, 3, 4,",
};
#define N_PROMPTS (sizeof prompts / sizeof prompts[0])
static const uint32_t lens[N_PROMPTS] = {12, 30, 48, 20, 40, 8};

/* Runs every prompt alone, then all together (staggered); outputs must be identical. */
static void concurrent_equals_alone(uint64_t kv_mem, int expect_preemption)
{
    if (access(MODEL, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    eng_model *m = NULL;
    eng_engine_opts o = {.max_seqs = 8, .max_batch_tokens = 64};
    eng_engine *e = model_engine(MODEL, kv_mem, 512, &o, &m);
    REQUIRE(e != NULL);
    static job alone[N_PROMPTS], together[N_PROMPTS];
    for (size_t i = 0; i < N_PROMPTS; i++) {
        alone[i] = (job){e, eng_model_tokenizer(m), prompts[i], lens[i], 0, {0}, 0, 0, 0};
        run_job(&alone[i]);
        CHECK(alone[i].finish == ENG_FINISH_LENGTH || alone[i].finish == ENG_FINISH_STOP);
    }
    eng_stats before;
    eng_engine_stats(e, &before);
    pthread_t th[N_PROMPTS];
    for (size_t i = 0; i < N_PROMPTS; i++) {
        together[i] = (job){e, eng_model_tokenizer(m), prompts[i], lens[i], (unsigned)(i * 37 % 100), {0}, 0, 0, 0};
        pthread_create(&th[i], NULL, run_job, &together[i]);
    }
    for (size_t i = 0; i < N_PROMPTS; i++)
        pthread_join(th[i], NULL);
    for (size_t i = 0; i < N_PROMPTS; i++) {
        if (strcmp(alone[i].text, together[i].text) != 0)
            fprintf(stderr, "  prompt %zu differs:\n    alone:    %s\n    together: %s\n", i, alone[i].text,
                    together[i].text);
        CHECK_STR(together[i].text, alone[i].text);
        CHECK_INT(together[i].finish, alone[i].finish);
    }
    eng_stats after;
    REQUIRE(eng_engine_wait_idle(e, 5000));
    eng_engine_stats(e, &after);
    fprintf(stderr, "  kv blocks %u, preemptions %llu, prefix hits %llu\n", after.kv_blocks_total,
            (unsigned long long)(after.preemptions - before.preemptions),
            (unsigned long long)(after.prefix_hits - before.prefix_hits));
    if (expect_preemption)
        CHECK(after.preemptions > before.preemptions);
    CHECK_INT(after.kv_blocks_used, 0);
    close_all(e, m, NULL);
}

static void test_concurrent_equals_alone(void) { concurrent_equals_alone(0, 0); }

static void test_preemption_keeps_output(void)
{
    /* 6 blocks of 16 positions: the largest request needs 5 alone, all six together ~20 */
    uint64_t per_block = 2ull * 30 * 3 * 16 * 64 * 2; /* K and V, f16 */
    concurrent_equals_alone(per_block * 6, 1);
}

static void test_prefix_cache_reuse(void)
{
    if (access(MODEL, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    eng_model *m = NULL;
    eng_engine *e = model_engine(MODEL, 0, 512, NULL, &m);
    REQUIRE(e != NULL);
    const char *sys = "<|im_start|>system\nYou are a careful assistant who answers in one short sentence and "
                      "never adds anything else, not even a greeting or a closing remark.<|im_end|>\n";
    char p1[1024], p2[1024];
    snprintf(p1, sizeof p1, "%s<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n", sys);
    snprintf(p2, sizeof p2, "%s<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n", sys);
    job a = {e, eng_model_tokenizer(m), p1, 16, 0, {0}, 0, 0, 0}, b = a;
    b.prompt = p2;
    eng_stats s0, s1, s2;
    eng_engine_stats(e, &s0);
    run_job(&a);
    eng_engine_stats(e, &s1);
    run_job(&b);
    eng_engine_stats(e, &s2);
    CHECK_STR(b.text, a.text);
    CHECK_INT(a.n_cached, 0);
    CHECK(b.n_cached >= 32); /* the system prompt's full blocks */
    CHECK(s2.prefix_hits - s1.prefix_hits >= 2);
    CHECK_INT(s1.prefix_hits - s0.prefix_hits, 0);
    /* counted per block: every full block the first missed, the second (same prompt) found */
    CHECK_INT(s2.prefix_hits - s1.prefix_hits, s1.prefix_misses - s0.prefix_misses);
    CHECK_INT(s2.prefix_misses - s1.prefix_misses, 0);
    CHECK(s2.kv_blocks_cached > 0);
    fprintf(stderr, "  second request: %u prompt tokens from the cache, hits %llu\n", b.n_cached,
            (unsigned long long)(s2.prefix_hits - s1.prefix_hits));
    /* a different system prompt shares nothing */
    job c = a;
    c.prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n";
    run_job(&c);
    CHECK_INT(c.n_cached, 0);
    CHECK(eng_engine_check(e));
    eng_engine_destroy(e);
    eng_model_close(m);
}

/* ---- tiny-model helpers ------------------------------------------------------------------ */

/* The tiny model packed (quant: SNAP_QUANT_*) to a temporary snapshot named by tag (its path
 * in path[cap]), opened with a pool of kv_blocks blocks (0: the default) and an n_ctx-token
 * context, and an engine on it, as model_engine. */
static eng_engine *tiny_engine(char *path, size_t cap, const char *tag, uint32_t quant, uint32_t kv_blocks,
                               uint32_t n_ctx, const eng_engine_opts *opts, eng_model **m)
{
    *m = NULL;
    snprintf(path, cap, "%s/thaw-%s-%d.thaw", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", tag, (int)getpid());
    snap_err serr;
    snap_pack_opts po = {.quant = quant};
    if (snap_pack("tests/data/hf/llama-tiny", path, &po, &serr) != 0) {
        fprintf(stderr, "  pack: %s\n", serr.msg);
        return NULL;
    }
    uint64_t per_block = 2ull * 2 * 2 * 16 * 16 * 2; /* K and V, f16: 2 layers, 2 KV heads of 16 */
    return model_engine(path, per_block * kv_blocks, n_ctx, opts, m);
}

static eng_request *submit_n(eng_engine *e, uint32_t n_prompt, uint32_t max_tokens)
{
    static int32_t prompt[2048];
    for (uint32_t i = 0; i < n_prompt; i++)
        prompt[i] = (int32_t)(3 + i % 290);
    eng_request_params p = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = max_tokens, .ignore_eos = 1};
    eng_sampling_defaults(&p.sampling);
    eng_request *r = NULL;
    eng_err err;
    if (eng_submit(e, &p, &r, &err) != 0)
        fprintf(stderr, "  submit: %s\n", err.msg);
    return r;
}

/* Reads r's events until done (timeout_ms < 0) or until none is waiting (0); 1 if done. */
static int read_events(eng_request *r, int timeout_ms, eng_event *ev)
{
    while (eng_request_next(r, ev, timeout_ms))
        if (ev->done)
            return 1;
    return 0;
}

/* ---- stress on a tiny model ------------------------------------------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void test_random_requests_no_leak(void)
{
    char path[256];
    /* a small pool so that preemption and eviction happen */
    eng_engine_opts o = {.max_seqs = 8, .max_batch_tokens = 48, .max_queue = 2000};
    eng_model *m = NULL;
    eng_engine *e = tiny_engine(path, sizeof path, "sched", SNAP_QUANT_Q8, 40, 256, &o, &m);
    REQUIRE(e != NULL);
    eng_err err;
    enum { N = 1000 };
    static eng_request *reqs[N];
    int32_t prompt[200];
    uint32_t n_ok = 0, n_cancelled = 0, n_error = 0;
    for (int i = 0; i < N; i++) {
        /* shared prefixes now and then, so the prefix cache is exercised too */
        uint32_t n = 1 + rnd(120);
        for (uint32_t k = 0; k < n; k++)
            prompt[k] = (int32_t)(k < 40 && (i % 3) == 0 ? k + 3 : 3 + rnd(290));
        eng_request_params p = {.prompt = prompt, .n_prompt = n, .max_tokens = 1 + rnd(24), .ignore_eos = 1};
        eng_sampling_defaults(&p.sampling);
        p.sampling.temperature = 0.8f;
        p.sampling.seed = (uint64_t)i;
        if (eng_submit(e, &p, &reqs[i], &err) != 0) {
            fprintf(stderr, "  submit %d: %s\n", i, err.msg);
            reqs[i] = NULL;
        }
        if (rnd(4) == 0 && reqs[i])
            eng_request_cancel(reqs[i]);
        /* consume some earlier ones as we go, releasing others without reading */
        if (i >= 50 && reqs[i - 50]) {
            eng_event ev;
            if (rnd(2)) {
                read_events(reqs[i - 50], -1, &ev);
                n_ok += ev.finish == ENG_FINISH_LENGTH;
                n_cancelled += ev.finish == ENG_FINISH_CANCELLED;
                n_error += ev.finish == ENG_FINISH_ERROR;
            }
            eng_request_release(reqs[i - 50]);
            reqs[i - 50] = NULL;
        }
    }
    for (int i = 0; i < N; i++)
        eng_request_release(reqs[i]);
    CHECK(eng_engine_wait_idle(e, 60000));
    eng_stats st;
    eng_engine_stats(e, &st);
    fprintf(stderr, "  %llu finished (%u read to length, %u cancelled), preemptions %llu, prefix hits %llu, "
                    "blocks used %u cached %u free %u of %u\n",
            (unsigned long long)st.requests_finished, n_ok, n_cancelled, (unsigned long long)st.preemptions,
            (unsigned long long)st.prefix_hits, st.kv_blocks_used, st.kv_blocks_cached, st.kv_blocks_free,
            st.kv_blocks_total);
    CHECK_INT(st.requests_finished, N);
    CHECK_INT(n_error, 0); /* every request fits alone: none may fail */
    CHECK_INT(st.kv_blocks_used, 0);
    CHECK_INT(st.kv_blocks_free + st.kv_blocks_cached, st.kv_blocks_total);
    CHECK(st.preemptions > 0);
    CHECK(st.prefix_hits > 0);
    close_all(e, m, path);
}

static void test_queue_full_and_drain(void)
{
    char path[256];
    eng_engine_opts o = {.max_seqs = 1, .max_queue = 2};
    eng_model *m = NULL;
    eng_engine *e = tiny_engine(path, sizeof path, "sched2", SNAP_QUANT_Q4, 0, 256, &o, &m);
    REQUIRE(e != NULL);
    eng_err err;
    int32_t prompt[4] = {5, 6, 7, 8};
    eng_request_params p = {.prompt = prompt, .n_prompt = 4, .max_tokens = 200, .ignore_eos = 1};
    eng_sampling_defaults(&p.sampling);
    eng_request *r[6] = {0};
    int busy = 0;
    for (int i = 0; i < 6; i++)
        busy += eng_submit(e, &p, &r[i], &err) == ENG_EBUSY;
    CHECK(busy >= 1); /* one runs, two wait, the rest are refused */
    /* bad parameters are refused with the field named */
    eng_request *x = NULL;
    p.max_tokens = 0;
    CHECK_INT(eng_submit(e, &p, &x, &err), ENG_EINVAL);
    p.max_tokens = 4;
    p.n_prompt = 300;
    int32_t big[300] = {0};
    p.prompt = big;
    CHECK_INT(eng_submit(e, &p, &x, &err), ENG_ETOOLONG);
    CHECK_CONTAINS(err.msg, "context");
    eng_engine_drain(e);
    p.prompt = prompt;
    p.n_prompt = 4;
    CHECK_INT(eng_submit(e, &p, &x, &err), ENG_ESTOPPED);
    for (int i = 0; i < 6; i++)
        eng_request_release(r[i]); /* cancels the rest */
    CHECK(eng_engine_wait_idle(e, 10000));
    eng_stats st;
    eng_engine_stats(e, &st);
    CHECK_INT(st.kv_blocks_used, 0);
    eng_engine_destroy(e);
    eng_model_close(m);
    unlink(path);
}

static void test_kv_manager(void)
{
    eng_kv *kv = NULL;
    REQUIRE(eng_kv_create(4, &kv) == 0);
    int32_t toks[2][ENG_BLOCK_TOKENS];
    for (int i = 0; i < ENG_BLOCK_TOKENS; i++)
        toks[0][i] = i, toks[1][i] = 100 + i;
    int32_t a = eng_kv_alloc(kv), b = eng_kv_alloc(kv);
    uint64_t ka, kb, k;
    CHECK(eng_kv_publish(kv, a, ENG_KV_ROOT, toks[0], &ka) == 1);
    CHECK(eng_kv_publish(kv, b, ka, toks[1], &kb) == 1);
    int32_t c = eng_kv_alloc(kv);
    CHECK(eng_kv_publish(kv, c, ENG_KV_ROOT, toks[0], &k) == 0); /* same content as a: stays private */
    CHECK(eng_kv_check(kv));
    eng_kv_unref(kv, a);
    eng_kv_unref(kv, b);
    eng_kv_unref(kv, c);
    uint32_t f, u, ca;
    eng_kv_counts(kv, &f, &u, &ca);
    CHECK(f == 2 && u == 0 && ca == 2);
    /* a prefix hit brings a cached block back; the wrong parent misses */
    CHECK_INT(eng_kv_lookup(kv, ENG_KV_ROOT, toks[0], &k), a);
    CHECK_INT(eng_kv_lookup(kv, ENG_KV_ROOT, toks[1], &k), -1);
    CHECK(eng_kv_check(kv));
    /* exhaust: free blocks first, then the LRU cached block (b) is evicted */
    int32_t x1 = eng_kv_alloc(kv), x2 = eng_kv_alloc(kv), x3 = eng_kv_alloc(kv);
    CHECK(x1 >= 0 && x2 >= 0 && x3 == b);
    CHECK_INT(eng_kv_alloc(kv), -1);
    CHECK_INT(eng_kv_lookup(kv, ka, toks[1], &k), -1);
    CHECK(eng_kv_check(kv));
    eng_kv_destroy(kv);
}

/* Publishing and evicting many blocks through a small key table (8 blocks, 16 slots: long
 * probe runs) keeps every cached block findable and the table free of leftovers. */
static void test_kv_churn(void)
{
    enum { N = 8, ROUNDS = 20000 };
    eng_kv *kv = NULL;
    REQUIRE(eng_kv_create(N, &kv) == 0);
    uint32_t lcg = 12345;
    int32_t toks[N][ENG_BLOCK_TOKENS]; /* what each block holds while it is cached */
    int cached[N] = {0};
    int bad = 0;
    for (int round = 0; round < ROUNDS && !bad; round++) {
        int32_t id = eng_kv_alloc(kv); /* a free block, else the least recently used is evicted */
        REQUIRE(id >= 0);
        cached[id] = 0;
        int32_t t[ENG_BLOCK_TOKENS];
        for (int i = 0; i < ENG_BLOCK_TOKENS; i++)
            t[i] = (int32_t)((lcg = lcg * 1103515245u + 12345u) >> 16) % 64;
        uint64_t key;
        if (eng_kv_publish(kv, id, ENG_KV_ROOT, t, &key) == 1) {
            memcpy(toks[id], t, sizeof t);
            cached[id] = 1;
        }
        eng_kv_unref(kv, id);
        for (int32_t b = 0; b < N; b++) {
            if (!cached[b])
                continue;
            int32_t hit = eng_kv_lookup(kv, ENG_KV_ROOT, toks[b], &key);
            bad |= hit != b;
            if (hit >= 0)
                eng_kv_unref(kv, hit);
        }
        bad |= !eng_kv_check(kv);
        if (bad)
            fprintf(stderr, "  round %d: a cached block was lost or the table is inconsistent\n", round);
    }
    CHECK(!bad);
    eng_kv_destroy(kv);
}

/* ---- scheduling rules on a tiny model ----------------------------------------------------- */

/* A queued request that is cancelled ends at once and gives its queue place back, though the
 * sequence running ahead of it is far from done (2000 tokens of the default model: seconds,
 * against the one step the cancel takes). */
static void test_cancel_queued(void)
{
    if (access(MODEL, R_OK) != 0)
        TEST_SKIP("default model not present (run `make model`)");
    eng_model *m = NULL;
    eng_engine_opts o = {.max_seqs = 1, .max_queue = 1};
    eng_engine *e = model_engine(MODEL, 0, 2048, &o, &m);
    REQUIRE(e != NULL);
    eng_request *a = submit_n(e, 4, 2000);
    REQUIRE(a);
    eng_event ev;
    REQUIRE(eng_request_next(a, &ev, -1) && !ev.done); /* a runs */
    eng_request *b = submit_n(e, 4, 8);
    REQUIRE(b);
    eng_request_cancel(b);
    CHECK(read_events(b, -1, &ev));
    CHECK_INT(ev.finish, ENG_FINISH_CANCELLED);
    int a_done = read_events(a, 0, &ev);
    if (a_done)
        fprintf(stderr, "  the running request finished before the cancelled one's end\n");
    CHECK(!a_done);
    eng_request *c = submit_n(e, 4, 8); /* b's place in the queue is free again */
    CHECK(c != NULL);
    eng_request_release(a);
    eng_request_release(b);
    eng_request_release(c);
    close_all(e, m, NULL);
}

/* When blocks run out the newest sequence is the one preempted, even when it is the one
 * asking: an older request never waits for a newer one. */
static void test_preempts_newest(void)
{
    char path[256];
    eng_engine_opts o = {.max_seqs = 4, .max_batch_tokens = 16};
    eng_model *m = NULL;
    eng_engine *e = tiny_engine(path, sizeof path, "newest", SNAP_QUANT_Q4, 20, 2048, &o, &m);
    REQUIRE(e != NULL);
    /* a: 204 positions (13 blocks); b, arriving later: 250 (16); together more than 20 */
    eng_request *a = submit_n(e, 4, 200);
    REQUIRE(a);
    eng_event ev;
    REQUIRE(eng_request_next(a, &ev, -1) && !ev.done);
    eng_request *b = submit_n(e, 150, 100);
    REQUIRE(b);
    /* b cannot finish while a holds its blocks: when b is done, a must be */
    CHECK(read_events(b, -1, &ev));
    CHECK_INT(ev.finish, ENG_FINISH_LENGTH);
    int a_done = read_events(a, 0, &ev);
    if (!a_done)
        fprintf(stderr, "  the newer request finished first\n");
    CHECK(a_done);
    CHECK_INT(ev.finish, ENG_FINISH_LENGTH);
    eng_stats st;
    eng_engine_stats(e, &st);
    CHECK(st.preemptions > 0);
    eng_request_release(a);
    eng_request_release(b);
    close_all(e, m, path);
}

/* A pool smaller than the context shortens the context to what the pool holds: a long
 * generation ends with "length" where the pool is full, a prompt that cannot fit is refused at
 * submit, and concurrent requests still all finish. */
static void test_pool_smaller_than_context(void)
{
    char path[256];
    eng_model *m = NULL;
    eng_engine *e = tiny_engine(path, sizeof path, "smallpool", SNAP_QUANT_Q4, 4, 2048, NULL, &m);
    REQUIRE(e != NULL);
    eng_err err;
    CHECK_INT(eng_model_n_ctx(m), 4 * ENG_BLOCK_TOKENS);
    for (int round = 0; round < 20; round++) {
        eng_request *big = submit_n(e, 10, 200), *small = submit_n(e, 3, 4);
        REQUIRE(big && small);
        eng_event ev;
        CHECK(read_events(big, -1, &ev));
        CHECK_INT(ev.finish, ENG_FINISH_LENGTH);
        CHECK_INT(ev.n_generated, 4 * ENG_BLOCK_TOKENS - 10);
        eng_request_release(big);
        CHECK(read_events(small, -1, &ev));
        CHECK_INT(ev.finish, ENG_FINISH_LENGTH);
        eng_request_release(small);
    }
    int32_t prompt[64] = {0};
    eng_request_params p = {.prompt = prompt, .n_prompt = 64, .max_tokens = 1};
    eng_sampling_defaults(&p.sampling);
    eng_request *r = NULL;
    CHECK_INT(eng_submit(e, &p, &r, &err), ENG_ETOOLONG);
    close_all(e, m, path);
}

int main(void)
{
    TEST_RUN(test_kv_manager);
    TEST_RUN(test_kv_churn);
    TEST_RUN(test_queue_full_and_drain);
    TEST_RUN(test_cancel_queued);
    TEST_RUN(test_preempts_newest);
    TEST_RUN(test_pool_smaller_than_context);
    TEST_RUN(test_random_requests_no_leak);
    TEST_RUN(test_concurrent_equals_alone);
    TEST_RUN(test_preemption_keeps_output);
    TEST_RUN(test_prefix_cache_reuse);
    TEST_END();
}
