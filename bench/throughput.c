/* throughput.c -- serving throughput of the engine (no HTTP) against concurrency.
 *
 * usage: throughput [SNAPSHOT] [--requests N] [--prompt 128] [--output 128] [--levels 1,4,16,64]
 *
 * For each concurrency level, N requests (default 64) of `prompt` tokens (distinct windows of
 * /usr/share/common-licenses/GPL-3, so the prefix cache does not shortcut them) and exactly
 * `output` generated tokens (ignore_eos, greedy) are pushed through one engine by that many
 * client threads. Prints one line per level with output tok/s and the ratio to concurrency 1
 * measured in the same run:
 *   throughput concurrency=16 requests=64 prompt=128 output=128 seconds=... output_tok_s=... ratio_c1=...
 */
#include "engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct shared {
    eng_engine *e;
    const int32_t *corpus;
    long n_corpus;
    uint32_t prompt, output, n_requests;
    atomic_uint next;
    atomic_ullong tokens;
    atomic_uint failures;
} shared;

static void *client(void *arg)
{
    shared *s = arg;
    for (;;) {
        uint32_t i = atomic_fetch_add(&s->next, 1);
        if (i >= s->n_requests)
            return NULL;
        long off = (long)(i * 977u) % (s->n_corpus - s->prompt);
        eng_request_params p = {.prompt = s->corpus + off, .n_prompt = s->prompt, .max_tokens = s->output,
                                .ignore_eos = 1};
        eng_sampling_defaults(&p.sampling);
        eng_request *r = NULL;
        eng_err err;
        if (eng_submit(s->e, &p, &r, &err) != 0) {
            atomic_fetch_add(&s->failures, 1);
            continue;
        }
        eng_event ev;
        while (eng_request_next(r, &ev, -1) && !ev.done)
            ;
        if (ev.finish != ENG_FINISH_LENGTH)
            atomic_fetch_add(&s->failures, 1);
        atomic_fetch_add(&s->tokens, ev.n_generated);
        eng_request_release(r);
    }
}

int main(int argc, char **argv)
{
    const char *path = "models/smollm2-135m-instruct.thaw", *levels = "1,4,16,64";
    uint32_t n_requests = 64, prompt = 128, output = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            n_requests = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            prompt = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--output") && i + 1 < argc)
            output = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--levels") && i + 1 < argc)
            levels = argv[++i];
        else
            path = argv[i];
    }
    /* KV for every sequence of the highest level at once: K and V in f16 (both backends); the
     * config comes from the snapshot's header, so the weights are loaded once */
    snap_file *sf = NULL;
    snap_err serr;
    if (snap_open(path, &sf, &serr) != 0) {
        fprintf(stderr, "throughput: %s\n", serr.msg);
        return 1;
    }
    const snap_config *c = snap_get_config(sf);
    uint64_t per_token = 2ull * c->n_layer * c->n_head_kv * c->head_dim * 2;
    snap_close(sf);
    eng_model *m = NULL;
    eng_err err;
    eng_model_opts mo = {.n_ctx = prompt + output + 16, .kv_mem_bytes = per_token * (prompt + output + 32) * 64};
    if (eng_model_open(path, &mo, &m, NULL, &err) != 0) {
        fprintf(stderr, "throughput: %s\n", err.msg);
        return 1;
    }

    FILE *fp = fopen("/usr/share/common-licenses/GPL-3", "rb");
    if (!fp) {
        fprintf(stderr, "throughput: cannot read /usr/share/common-licenses/GPL-3\n");
        return 1;
    }
    static char text[1 << 17];
    size_t n_text = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    int32_t *corpus = malloc(sizeof(int32_t) * (1 << 17));
    long n_corpus = eng_tokenize(eng_model_tokenizer(m), text, n_text, 0, 0, corpus, 1 << 17);
    if (n_corpus < (long)prompt + 1000) {
        fprintf(stderr, "throughput: corpus too short\n");
        return 1;
    }

    double base = 0;
    int status = 0;
    for (const char *lv = levels; *lv;) {
        uint32_t conc = (uint32_t)strtoul(lv, (char **)&lv, 10);
        if (*lv == ',')
            lv++;
        if (!conc)
            break;
        eng_engine *e = NULL;
        eng_engine_opts eo = {.max_seqs = conc < 64 ? conc : 64, .max_batch_tokens = 512, .max_queue = 1024};
        if (eng_engine_create(m, &eo, &e, &err) != 0) {
            fprintf(stderr, "throughput: %s\n", err.msg);
            return 1;
        }
        shared s = {.e = e, .corpus = corpus, .n_corpus = n_corpus, .prompt = prompt, .output = output,
                    .n_requests = n_requests};
        pthread_t *th = calloc(conc, sizeof *th);
        double t0 = now_s();
        for (uint32_t i = 0; i < conc; i++)
            pthread_create(&th[i], NULL, client, &s);
        for (uint32_t i = 0; i < conc; i++)
            pthread_join(th[i], NULL);
        double secs = now_s() - t0;
        eng_stats st;
        eng_engine_stats(e, &st);
        double tps = (double)atomic_load(&s.tokens) / secs;
        if (conc == 1)
            base = tps;
        printf("throughput concurrency=%u requests=%u prompt=%u output=%u seconds=%.3f output_tok_s=%.1f "
               "failures=%u preemptions=%llu ratio_c1=%.2f\n",
               conc, n_requests, prompt, output, secs, tps, atomic_load(&s.failures),
               (unsigned long long)st.preemptions, base > 0 ? tps / base : 0);
        fflush(stdout);
        status |= atomic_load(&s.failures) != 0;
        free(th);
        eng_engine_destroy(e);
    }
    free(corpus);
    eng_model_close(m);
    return status;
}
