/* tokenize.c -- tokenizer throughput on one thread.
 *
 * usage: tokenize [SNAPSHOT] [--corpus FILE] [--reps N]
 *   SNAPSHOT defaults to models/smollm2-135m-instruct.thaw, FILE to the tokenizer test corpus
 *   (tests/data/tokenizer/corpus.txt, 1.2 MB of prose, code, many scripts, emoji and
 *   whitespace runs), N to 5.
 *
 * Encodes the whole file as one text (no special-token parsing) N times and keeps the best
 * time, then decodes the ids N times the same way.
 *
 * Output: one line per result, `key=value` pairs:
 *   tokenize corpus_bytes=... tokens=... reps=... seconds=... mb_per_s=...
 *   detokenize corpus_bytes=... tokens=... reps=... seconds=... mb_per_s=...
 */
#include "engine.h"

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

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
            fread(buf, 1, (size_t)n, f) == (size_t)n) {
            *len = (size_t)n;
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    const char *model = "models/smollm2-135m-instruct.thaw", *corpus = "tests/data/tokenizer/corpus.txt";
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--corpus") == 0 && i + 1 < argc)
            corpus = argv[++i];
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]) > 0 ? atoi(argv[i]) : 1;
        else if (argv[i][0] != '-')
            model = argv[i];
        else {
            fprintf(stderr, "usage: %s [SNAPSHOT] [--corpus FILE] [--reps N]\n", argv[0]);
            return 2;
        }
    }
    int rc = 1;
    size_t len = 0;
    char *text = read_file(corpus, &len), *out = NULL;
    int32_t *ids = NULL;
    snap_file *f = NULL;
    eng_tokenizer *t = NULL;
    snap_err serr;
    eng_err err;
    if (!text) {
        fprintf(stderr, "tokenize: cannot read %s\n", corpus);
        goto done;
    }
    if (snap_open(model, &f, &serr) != 0) {
        fprintf(stderr, "tokenize: %s\n", serr.msg);
        goto done;
    }
    if (eng_tokenizer_create(snap_get_vocab(f), &t, &err) != 0) {
        fprintf(stderr, "tokenize: %s\n", err.msg);
        goto done;
    }
    long n = eng_tokenize(t, text, len, 0, 0, NULL, 0);
    if (n < 0 || !(ids = malloc(((size_t)n + 1) * sizeof *ids)) || !(out = malloc(len + 1))) {
        fprintf(stderr, "tokenize: %s\n", n < 0 ? eng_strerror((int)n) : "out of memory");
        goto done;
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        eng_tokenize(t, text, len, 0, 0, ids, (size_t)n);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    printf("tokenize corpus_bytes=%zu tokens=%ld reps=%d seconds=%.4f mb_per_s=%.2f\n", len, n, reps, best,
           len / best / 1e6);
    best = 1e30;
    size_t m = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        m = eng_detokenize(t, ids, (size_t)n, 0, out, len + 1);
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    printf("detokenize corpus_bytes=%zu tokens=%ld reps=%d seconds=%.4f mb_per_s=%.2f\n", m, n, reps, best,
           m / best / 1e6);
    rc = 0;
done:
    free(ids);
    free(out);
    free(text);
    eng_tokenizer_destroy(t);
    snap_close(f);
    return rc;
}
