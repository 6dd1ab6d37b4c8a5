/* decode.c -- prompt and decode speed at batch 1, against this machine's memory-bandwidth
 * roofline measured in the same run.
 *
 * usage: decode [SNAPSHOT] [--reps N] [--tokens N] [--bw-mib N] [--threads N]
 *   SNAPSHOT defaults to models/smollm2-135m-instruct.thaw; N reps (default 2, best kept, after a short warm-up) of
 *   a prompt of --tokens ids (default 128) evaluated in one eng_seq_eval, then as many decode
 *   steps of one token each, choosing the argmax of the logits (the sampler is not measured).
 *   Runs at 1 thread and at all online cores (or only at --threads N).
 *
 * Decode at batch 1 reads every weight once per token, so its limit is bytes of weights per
 * token over memory read bandwidth. Bytes per token are snap_decode_bytes' count from the
 * snapshot's tensor table. The KV cache's reads are not counted (at 256 positions they are
 * ~1 % of the weights for the default model).
 * Bandwidth is a read of a buffer far larger than the caches (default 1 GiB), split between
 * the same number of threads as the model uses, summed with 256-bit loads, best of N. A
 * second figure reads a buffer the size of the weights: when that fits in the last-level
 * cache the weights may be served from it and the ratio can pass 1.
 *
 * Output: one line per result, `key=value` pairs:
 *   membw threads=... buffer=dram|weights bytes=... seconds=... gbps=...
 *   decode threads=... prompt_tokens=... prompt_tok_s=... decode_tokens=... decode_tok_s=...
 *          bytes_per_token=... bw_gbps=... roofline_tok_s=... ratio=...
 */
#include "engine.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- memory read bandwidth ------------------------------------------------------------- */

/* Four independent accumulators keep enough loads in flight to saturate a core's share of
 * the memory system; the sum is returned so the reads cannot be optimised away. n is a
 * multiple of 128 bytes and p is 32-byte aligned. */
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t s[4];
    _mm256_storeu_si256((__m256i *)s, a0);
    return s[0] + s[1] + s[2] + s[3];
}

static uint64_t sum_plain(const uint8_t *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < n / 8; i += 4) {
        a0 += w[i];
        a1 += w[i + 1];
        a2 += w[i + 2];
        a3 += w[i + 3];
    }
    return a0 + a1 + a2 + a3;
}

typedef struct bw_job {
    const uint8_t *p;
    size_t n;
    int avx2;
    pthread_barrier_t *start;
    uint64_t sum;
    double t0, t1;            /* this thread's own start and end */
} bw_job;

static void *bw_thread(void *arg)
{
    bw_job *j = arg;
    pthread_barrier_wait(j->start);
    j->t0 = now_s();
    j->sum = j->avx2 ? sum_avx2(j->p, j->n) : sum_plain(j->p, j->n);
    j->t1 = now_s();
    return NULL;
}

/* Best read bandwidth in GB/s over reps passes of buf[0 .. n) split between threads. Each
 * pass lasts from the first thread's start to the last one's end, as the threads see it: the
 * main thread only waits, and when there are as many workers as cores it may not run again
 * until they are done. */
static double read_gbps(const uint8_t *buf, size_t n, uint32_t threads, int reps, int avx2, double *best_s)
{
    bw_job jobs[256];
    pthread_t tid[256];
    if (threads > 256)
        threads = 256;
    size_t slice = n / threads / 128 * 128;
    double best = 1e9;
    uint64_t sink = 0;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, threads + 1);
        uint32_t started = 0;
        for (uint32_t t = 0; t < threads; t++) {
            jobs[t] = (bw_job){.p = buf + t * slice, .n = slice, .avx2 = avx2, .start = &start};
            if (pthread_create(&tid[t], NULL, bw_thread, &jobs[t]))
                break;
            started++;
        }
        if (started < threads) { /* cannot happen in practice; do not deadlock on the barrier */
            fprintf(stderr, "decode: cannot start %u threads\n", threads);
            exit(1);
        }
        pthread_barrier_wait(&start);
        double t0 = 1e300, t1 = 0;
        for (uint32_t t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            sink += jobs[t].sum;
            t0 = jobs[t].t0 < t0 ? jobs[t].t0 : t0;
            t1 = jobs[t].t1 > t1 ? jobs[t].t1 : t1;
        }
        double dt = t1 - t0;
        pthread_barrier_destroy(&start);
        if (dt < best)
            best = dt;
    }
    if (sink == 42) /* keep the sums alive */
        fprintf(stderr, " ");
    *best_s = best;
    return (double)slice * threads / best / 1e9;
}

/* ---- the model ------------------------------------------------------------------------- */

static int32_t argmax(const float *x, uint32_t n)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return (int32_t)best;
}

typedef struct speed {
    double prompt_tok_s, decode_tok_s;
} speed;

/* Best prompt and decode speed over reps; returns 0 or an ENG_E* code with err filled. */
static int measure(eng_model *m, const int32_t *prompt, uint32_t n_tokens, int reps, speed *out, eng_err *err)
{
    uint32_t n_vocab = eng_model_config(m)->n_vocab;
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    eng_seq *seq = NULL;
    int rc = ENG_ENOMEM;
    if (!logits)
        goto done;
    out->prompt_tok_s = out->decode_tok_s = 0;
    for (int r = 0; r <= reps; r++) { /* rep 0 warms up: page faults, pool threads */
        if ((rc = eng_seq_create(m, &seq, err)))
            goto done;
        uint32_t n_prompt = r == 0 ? 8 : n_tokens, n_decode = r == 0 ? 8 : n_tokens;
        double t0 = now_s();
        if ((rc = eng_seq_eval(seq, prompt, n_prompt, 0, logits, err)))
            goto done;
        double t1 = now_s();
        for (uint32_t i = 0; i < n_decode; i++) {
            int32_t id = argmax(logits, n_vocab);
            if ((rc = eng_seq_eval(seq, &id, 1, 0, logits, err)))
                goto done;
        }
        double t2 = now_s();
        eng_seq_destroy(seq);
        seq = NULL;
        if (r > 0 && n_prompt / (t1 - t0) > out->prompt_tok_s)
            out->prompt_tok_s = n_prompt / (t1 - t0);
        if (r > 0 && n_decode / (t2 - t1) > out->decode_tok_s)
            out->decode_tok_s = n_decode / (t2 - t1);
    }
    rc = 0;
done:
    eng_seq_destroy(seq);
    free(logits);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = "models/smollm2-135m-instruct.thaw";
    int reps = 2;
    uint32_t n_tokens = 128, only_threads = 0;
    size_t bw_bytes = (size_t)1 << 30;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]) > 0 ? atoi(argv[i]) : 1;
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
            n_tokens = atoi(argv[++i]) > 0 ? (uint32_t)atoi(argv[i]) : 1;
        else if (!strcmp(argv[i], "--bw-mib") && i + 1 < argc)
            bw_bytes = (size_t)(atoi(argv[++i]) > 0 ? atoi(argv[i]) : 1) << 20;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            only_threads = (uint32_t)atoi(argv[++i]);
        else if (argv[i][0] != '-')
            path = argv[i];
        else {
            fprintf(stderr, "usage: decode [SNAPSHOT] [--reps N] [--tokens N] [--bw-mib N] [--threads N]\n");
            return 2;
        }
    }

    snap_err serr;
    snap_file *f = NULL;
    if (snap_open(path, &f, &serr)) {
        fprintf(stderr, "decode: %s\n", serr.msg);
        return 1;
    }
    uint64_t bytes_per_token = snap_decode_bytes(f);
    snap_close(f);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t all = ncpu > 0 ? (uint32_t)ncpu : 1;
    uint32_t thread_counts[2] = {1, all};
    size_t n_counts = all > 1 ? 2 : 1;
    if (only_threads) {
        thread_counts[0] = only_threads;
        n_counts = 1;
    }

    /* pre-faulted, so the timed reads never take a page fault */
    uint8_t *buf = aligned_alloc(4096, bw_bytes);
    if (!buf) {
        fprintf(stderr, "decode: cannot allocate %zu bytes for the bandwidth test\n", bw_bytes);
        return 1;
    }
    memset(buf, 1, bw_bytes);
    int avx2 = __builtin_cpu_supports("avx2");

    int status = 0;
    for (size_t c = 0; c < n_counts; c++) {
        uint32_t nt = thread_counts[c];
        double s, s_ws;
        double gbps = read_gbps(buf, bw_bytes, nt, 5, avx2, &s);
        size_t ws = bytes_per_token < bw_bytes ? (size_t)bytes_per_token : bw_bytes;
        double ws_gbps = read_gbps(buf, ws, nt, 10, avx2, &s_ws);
        printf("membw threads=%u buffer=dram bytes=%zu seconds=%.6f gbps=%.3f loads=%s\n", nt, bw_bytes, s, gbps,
               avx2 ? "avx2" : "scalar");
        printf("membw threads=%u buffer=weights bytes=%zu seconds=%.6f gbps=%.3f loads=%s\n", nt, ws, s_ws, ws_gbps,
               avx2 ? "avx2" : "scalar");
        fflush(stdout);

        eng_err err = {{0}};
        eng_model_opts mo = {.n_threads = nt, .n_ctx = 2 * n_tokens + 64};
        eng_model *m = NULL;
        if (eng_model_open(path, &mo, &m, NULL, &err)) {
            fprintf(stderr, "decode: %s\n", err.msg);
            status = 1;
            break;
        }
        /* a prompt: some text's tokens, repeated to length */
        static const char text[] = "The quick brown fox jumps over the lazy dog. Memory bandwidth bounds decoding "
                                   "at batch one, because every weight is read once for every token produced.";
        int32_t tmp[256], *prompt = malloc(n_tokens * sizeof *prompt);
        long n_text = eng_tokenize(eng_model_tokenizer(m), text, sizeof text - 1, 0, 0, tmp, 256);
        if (!prompt || n_text <= 0 || n_text > 256) {
            fprintf(stderr, "decode: cannot build the prompt\n");
            free(prompt);
            eng_model_close(m);
            status = 1;
            break;
        }
        for (uint32_t i = 0; i < n_tokens; i++)
            prompt[i] = tmp[i % (uint32_t)n_text];

        speed sp;
        if (measure(m, prompt, n_tokens, reps, &sp, &err)) {
            fprintf(stderr, "decode: %s\n", err.msg);
            status = 1;
        } else {
            double roofline = gbps * 1e9 / (double)bytes_per_token;
            printf("decode threads=%u prompt_tokens=%u prompt_tok_s=%.1f decode_tokens=%u decode_tok_s=%.1f "
                   "bytes_per_token=%llu bw_gbps=%.3f roofline_tok_s=%.1f ratio=%.3f reps=%d\n",
                   nt, n_tokens, sp.prompt_tok_s, n_tokens, sp.decode_tok_s, (unsigned long long)bytes_per_token,
                   gbps, roofline, sp.decode_tok_s / roofline, reps);
            fflush(stdout);
        }
        free(prompt);
        eng_model_close(m);
    }
    free(buf);
    return status;
}
