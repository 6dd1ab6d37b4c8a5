/* generate.c -- `thaw generate`: one prompt, streamed to stdout, timings on stderr.
 *
 * Defaults: sampling follows the model's generation defaults when the snapshot has them,
 * else greedy (temperature 0), so a bare `thaw generate` is reproducible. The prompt is
 * tokenized with special-token text recognised (as Hugging Face and vLLM do); a raw prompt
 * gets the vocab's BOS, a chat prompt gets exactly what the template renders.
 */
#include "engine.h"
#include "runtime.h"

#include <errno.h>
#include <math.h>
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

/* to stdout with exit 0 for --help, to stderr with exit 2 for a usage error */
static int usage(FILE *to, int rc)
{
    fprintf(to,
            "usage: thaw generate -m FILE -p PROMPT [options]\n"
            "  -m, --model FILE        snapshot (default: $THAW_MODEL or models/smollm2-135m-instruct.thaw)\n"
            "  -p, --prompt TEXT       the prompt (with --chat: the user's message)\n"
            "  --chat                  apply the model's chat template\n"
            "  --system TEXT           system message (with --chat)\n"
            "  --chat-template NAME    chatml, llama3, llama3.1, llama2 or mistral, instead of the model's own\n"
            "  -n, --max-tokens N      most tokens to generate (default 256)\n"
            "  --temp T                temperature, 0 = greedy (default: the model's, else 0)\n"
            "  --top-p P, --top-k K, --min-p P, --repeat-penalty R, --seed S\n"
            "  --threads N             CPU threads (default: all cores)\n"
            "  --ctx N                 context length (default: the model's)\n");
    return rc;
}

/* Parses a number argument; on error prints which flag was wrong. */
static int num(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = v ? strtod(v, &end) : 0;
    if (!v || errno || end == v || *end || !(d >= lo && d <= hi)) {
        fprintf(stderr, "thaw generate: %s needs a number in [%g, %g], got '%s'\n", flag, lo, hi, v ? v : "");
        return -1;
    }
    *out = d;
    return 0;
}

int rt_cmd_generate(int argc, char **argv)
{
    const char *model = getenv("THAW_MODEL"), *prompt = NULL, *system = NULL, *tmpl = NULL;
    if (!model || !*model)
        model = "models/smollm2-135m-instruct.thaw";
    int chat = 0;
    double n_max = 256, threads = 0, ctx = 0, seed = 0, v;
    eng_sampling sp;
    eng_sampling_defaults(&sp);
    int temp_set = 0, top_p_set = 0, top_k_set = 0, rep_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NUM(flag, lo, hi, dst)                            \
    if (num(flag, val, lo, hi, &v))                       \
        return 2;                                         \
    dst = v;                                              \
    i++;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && val) {
            model = val;
            i++;
        } else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && val) {
            prompt = val;
            i++;
        } else if (!strcmp(a, "--system") && val) {
            system = val;
            i++;
        } else if (!strcmp(a, "--chat-template") && val) {
            tmpl = val;
            i++;
        } else if (!strcmp(a, "--chat")) {
            chat = 1;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            NUM(a, 1, 1e9, n_max)
        } else if (!strcmp(a, "--temp")) {
            NUM(a, 0, 2, sp.temperature) temp_set = 1;
        } else if (!strcmp(a, "--top-p")) {
            NUM(a, 1e-9, 1, sp.top_p) top_p_set = 1;
        } else if (!strcmp(a, "--top-k")) {
            NUM(a, 0, 1e9, sp.top_k) top_k_set = 1;
        } else if (!strcmp(a, "--min-p")) {
            NUM(a, 0, 1, sp.min_p)
        } else if (!strcmp(a, "--repeat-penalty")) {
            NUM(a, 1e-3, 10, sp.repetition_penalty) rep_set = 1;
        } else if (!strcmp(a, "--seed")) {
            NUM(a, 0, 1.8e19, seed)
        } else if (!strcmp(a, "--threads")) {
            NUM(a, 1, 1024, threads)
        } else if (!strcmp(a, "--ctx")) {
            NUM(a, 16, 1 << 24, ctx)
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            return usage(stdout, 0);
        } else {
            fprintf(stderr, "thaw generate: unexpected argument '%s'\n", a);
            return usage(stderr, 2);
        }
#undef NUM
    }
    if (!prompt)
        return usage(stderr, 2);
    sp.seed = (uint64_t)seed;

    double t0 = now_s();
    eng_err err = {{0}};
    eng_model_opts mo = {.n_threads = (uint32_t)threads, .chat_template = tmpl, .n_ctx = (uint32_t)ctx};
    eng_model *m = NULL;
    eng_load_report rep;
    if (eng_model_open(model, &mo, &m, &rep, &err)) {
        fprintf(stderr, "thaw generate: %s\n", err.msg);
        return 1;
    }
    const snap_gen_defaults *gd = eng_model_gen_defaults(m);
    if (!temp_set && !isnan(gd->temperature))
        sp.temperature = gd->temperature;
    if (!top_p_set && !isnan(gd->top_p))
        sp.top_p = gd->top_p;
    if (!top_k_set && gd->top_k >= 0)
        sp.top_k = gd->top_k;
    if (!rep_set && !isnan(gd->repetition_penalty))
        sp.repetition_penalty = gd->repetition_penalty;
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    int status = 1;
    char *text = NULL, *piece = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    eng_sampler *smp = NULL;
    eng_seq *seq = NULL;
    if (eng_sampling_check(&sp, eng_vocab_size(tok), &err)) {
        fprintf(stderr, "thaw generate: %s\n", err.msg);
        goto done;
    }

    /* the prompt text */
    long text_len;
    if (chat) {
        const eng_chat_template *ct = eng_model_chat(m);
        if (!ct) {
            fprintf(stderr, "thaw generate: %s\n", eng_model_chat_error(m));
            goto done;
        }
        eng_chat_msg msgs[2];
        size_t n = 0;
        if (system)
            msgs[n++] = (eng_chat_msg){"system", system};
        msgs[n++] = (eng_chat_msg){"user", prompt};
        text_len = eng_chat_render(ct, msgs, n, 1, NULL, 0, &err);
        if (text_len < 0 || !(text = malloc((size_t)text_len + 1)) ||
            eng_chat_render(ct, msgs, n, 1, text, (size_t)text_len + 1, &err) != text_len) {
            fprintf(stderr, "thaw generate: %s\n", text_len < 0 ? err.msg : "out of memory");
            goto done;
        }
    } else {
        text_len = (long)strlen(prompt);
        text = strdup(prompt);
    }
    long n_ids = eng_tokenize(tok, text, (size_t)text_len, !chat, 1, NULL, 0);
    if (n_ids < 0 || !(ids = malloc(((size_t)n_ids + 1) * sizeof *ids)) ||
        eng_tokenize(tok, text, (size_t)text_len, !chat, 1, ids, (size_t)n_ids) != n_ids) {
        fprintf(stderr, "thaw generate: cannot tokenize the prompt\n");
        goto done;
    }
    uint32_t n_ctx = eng_model_n_ctx(m);
    if (n_ids == 0) {
        fprintf(stderr, "thaw generate: the prompt is empty\n");
        goto done;
    }
    if ((uint64_t)n_ids >= n_ctx) {
        fprintf(stderr, "thaw generate: the prompt has %ld tokens; the context holds %u (see --ctx)\n", n_ids, n_ctx);
        goto done;
    }
    uint32_t n_vocab = eng_model_config(m)->n_vocab;
    logits = malloc((size_t)n_vocab * sizeof *logits);
    piece = malloc(eng_detok_max(tok) + 8);
    if (!logits || !piece || eng_sampler_create(n_vocab, &sp, &smp) || eng_seq_create(m, &seq, &err)) {
        fprintf(stderr, "thaw generate: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    eng_sampler_prompt(smp, ids, (size_t)n_ids);

    double t_prompt = now_s();
    if (eng_seq_eval(seq, ids, (uint32_t)n_ids, 0, logits, &err)) {
        fprintf(stderr, "thaw generate: %s\n", err.msg);
        goto done;
    }
    double t_first = 0, t_end;
    eng_detok dt;
    eng_detok_init(&dt, 1);
    uint32_t n_gen = 0, n_steps = 0; /* tokens emitted; decode steps after the first sample */
    const char *finish = "length";
    for (;;) {
        eng_sample_result r;
        eng_sample(smp, logits, &r);
        if (n_gen == 0)
            t_first = now_s();
        if (eng_model_is_stop_token(m, r.token)) { /* not counted, as the server's usage does not */
            finish = "stop";
            break;
        }
        n_gen++;
        size_t k = eng_detok_push(tok, &dt, r.token, piece, eng_detok_max(tok) + 8);
        fwrite(piece, 1, k, stdout);
        fflush(stdout);
        if (n_gen >= (uint32_t)n_max)
            break;
        if (eng_seq_len(seq) + 1 >= n_ctx) {
            finish = "context";
            break;
        }
        if (eng_seq_eval(seq, &r.token, 1, 0, logits, &err)) {
            fprintf(stderr, "\nthaw generate: %s\n", err.msg);
            goto done;
        }
        n_steps++;
    }
    t_end = now_s();
    size_t k = eng_detok_flush(&dt, piece, eng_detok_max(tok) + 8);
    fwrite(piece, 1, k, stdout);
    printf("\n");
    fflush(stdout);
    double prompt_s = t_first - t_prompt, decode_s = t_end - t_first;
    fprintf(stderr,
            "\nmodel %s (%s backend) loaded in %.3f s\n"
            "prompt tokens %ld, time to first token %.1f ms, prompt %.1f tok/s\n"
            "generated %u tokens (%s), decode %.1f tok/s\n",
            eng_model_name(m), eng_model_backend(m), t_prompt - t0, n_ids, prompt_s * 1e3,
            prompt_s > 0 ? n_ids / prompt_s : 0, n_gen, finish,
            n_steps && decode_s > 0 ? n_steps / decode_s : 0);
    status = 0;
done:
    eng_seq_destroy(seq);
    eng_sampler_destroy(smp);
    free(logits);
    free(piece);
    free(ids);
    free(text);
    eng_model_close(m);
    return status;
}
