/* load.c -- a load curve against a running `thaw serve`, and the engine's own time to first
 * token for comparison.
 *
 * usage: load [--url URL] [--curve 1,2,4,8,16,8,4,2,1] [--step-seconds S] [--max-tokens N]
 *             [--prompt TEXT] [--api-key KEY]
 *        load --engine [-m MODEL] [--requests N] [--max-tokens N] [--prompt TEXT] [--threads N]
 *
 * HTTP mode: for each concurrency level of the curve, keeps that many streaming chat requests
 * in flight (libcurl multi, one easy handle and keep-alive connection per slot) for S seconds;
 * requests started in a step are finished (and counted) in it. A 429 or an error frees its slot
 * for 50 ms before the next request. Each request is greedy, with the same prompt, and asks
 * for stream_options.include_usage so its output tokens come from the server's usage chunk.
 * TTFT is measured at the client: request start -> first chunk with content.
 *
 * Engine mode: the same prompt, rendered by the model's chat template and tokenized as the
 * server does, submitted to an in-process engine N times one after another; TTFT is submit ->
 * first token event. HTTP's cost on TTFT is the difference between the two at concurrency 1.
 *
 * Output: one `key=value` line per step (and a summary line):
 *   load step=1 concurrency=1 seconds=.. requests=.. ok=.. http429=.. errors=.. lat_mean_ms=..
 *        lat_p50_ms=.. lat_p99_ms=.. ttft_mean_ms=.. ttft_p50_ms=.. out_tokens=.. out_tok_s=..
 *   load_engine requests=.. prompt_tokens=.. ttft_mean_ms=.. ttft_p50_ms=.. ttft_min_ms=..
 */
#include "engine.h"

#include <curl/curl.h>
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

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct stats {
    double *v;
    size_t n, cap;
} stats;

static void stats_add(stats *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *p = realloc(s->v, cap * sizeof *p);
        if (!p)
            return;
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = x;
}

static double stats_mean(const stats *s)
{
    double t = 0;
    for (size_t i = 0; i < s->n; i++)
        t += s->v[i];
    return s->n ? t / s->n : NAN;
}

/* Percentile p (0..100) by nearest rank; sorts in place. */
static double stats_pct(stats *s, double p)
{
    if (!s->n)
        return NAN;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    size_t k = (size_t)ceil(p / 100.0 * s->n);
    return s->v[k ? k - 1 : 0];
}

/* ======================================================================================
 * Engine mode
 * ====================================================================================== */
static int run_engine(const char *model, const char *prompt, int n_req, int max_tokens, int threads)
{
    eng_err err = {{0}};
    eng_model_opts mo = {.n_threads = (uint32_t)threads};
    eng_model *m = NULL;
    eng_engine *e = NULL;
    eng_load_report rep;
    if (eng_model_open(model, &mo, &m, &rep, &err) || eng_engine_create(m, NULL, &e, &err)) {
        fprintf(stderr, "load --engine: %s\n", err.msg);
        eng_model_close(m);
        return 1;
    }
    const eng_chat_template *ct = eng_model_chat(m);
    const eng_tokenizer *tok = eng_model_tokenizer(m);
    eng_chat_msg msg = {"user", prompt};
    char text[8192];
    long tl = ct ? eng_chat_render(ct, &msg, 1, 1, text, sizeof text, &err) : -1;
    int32_t ids[4096];
    long n = tl > 0 && tl < (long)sizeof text ? eng_tokenize(tok, text, (size_t)tl, 0, 1, ids, 4096) : -1;
    if (n <= 0 || n > 4096) {
        fprintf(stderr, "load --engine: cannot render/tokenize the prompt\n");
        eng_engine_destroy(e);
        eng_model_close(m);
        return 1;
    }
    stats ttft = {0}, own = {0};
    for (int i = 0; i < n_req; i++) {
        eng_request_params p = {.prompt = ids, .n_prompt = (uint32_t)n, .max_tokens = (uint32_t)max_tokens};
        eng_sampling_defaults(&p.sampling);
        eng_request *r;
        double t0 = now_s();
        if (eng_submit(e, &p, &r, &err)) {
            fprintf(stderr, "load --engine: %s\n", err.msg);
            break;
        }
        eng_event ev;
        eng_request_next(r, &ev, -1);
        stats_add(&ttft, now_s() - t0);
        stats_add(&own, ev.ttft_s);
        while (!ev.done)
            eng_request_next(r, &ev, -1);
        eng_request_release(r);
    }
    double mean = stats_mean(&ttft) * 1e3, own_mean = stats_mean(&own) * 1e3;
    double p50 = stats_pct(&ttft, 50) * 1e3, mn = ttft.n ? ttft.v[0] * 1e3 : NAN;
    printf("load_engine requests=%zu prompt_tokens=%ld max_tokens=%d ttft_mean_ms=%.3f ttft_p50_ms=%.3f "
           "ttft_min_ms=%.3f engine_reported_ttft_mean_ms=%.3f\n",
           ttft.n, n, max_tokens, mean, p50, mn, own_mean);
    free(ttft.v);
    free(own.v);
    eng_engine_destroy(e);
    eng_model_close(m);
    return 0;
}

/* ======================================================================================
 * HTTP mode
 * ====================================================================================== */
typedef struct slot {
    CURL *h;
    int active;
    double t_start, t_first, next_start;
    long tokens;
    char carry[65536];         /* an SSE event cut across writes */
    size_t n_carry;
} slot;

/* Looks at one complete SSE event. */
static void sse_event(slot *s, const char *ev, size_t n)
{
    if (n < 6 || memcmp(ev, "data: ", 6) != 0)
        return;
    if (!s->t_first && memmem(ev, n, "\"content\":\"", 11) && !memmem(ev, n, "\"content\":\"\"", 12))
        s->t_first = now_s();
    const char *u = memmem(ev, n, "\"completion_tokens\":", 20);
    if (u)
        s->tokens = strtol(u + 20, NULL, 10);
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userp)
{
    slot *s = userp;
    size_t n = size * nmemb;
    for (size_t i = 0; i < n; i++) {
        if (s->n_carry < sizeof s->carry)
            s->carry[s->n_carry++] = data[i];
        if (s->n_carry >= 2 && s->carry[s->n_carry - 1] == '\n' && s->carry[s->n_carry - 2] == '\n') {
            sse_event(s, s->carry, s->n_carry);
            s->n_carry = 0;
        }
    }
    return n;
}

typedef struct step {
    stats lat, ttft;
    long requests, ok, n429, errors, tokens;
} step;

static void start(CURLM *mh, slot *s, const char *url, const char *body, struct curl_slist *hdrs)
{
    if (!s->h) {
        s->h = curl_easy_init();
        curl_easy_setopt(s->h, CURLOPT_URL, url);
        curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(s->h, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
        curl_easy_setopt(s->h, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(s->h, CURLOPT_TIMEOUT, 600L);
    }
    curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, body);
    s->t_start = now_s();
    s->t_first = 0;
    s->tokens = 0;
    s->n_carry = 0;
    s->active = 1;
    curl_multi_add_handle(mh, s->h);
}

static int run_curve(const char *base, const int *curve, int n_steps, double step_s, const char *body,
                     const char *api_key)
{
    char url[512];
    snprintf(url, sizeof url, "%s/v1/chat/completions", base);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[512];
    if (api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
        hdrs = curl_slist_append(hdrs, auth);
    }
    CURLM *mh = curl_multi_init();
    int max_c = 0;
    for (int i = 0; i < n_steps; i++)
        max_c = curve[i] > max_c ? curve[i] : max_c;
    slot *slots = calloc((size_t)max_c, sizeof *slots);
    step all = {0};
    double t_all = now_s();
    for (int k = 0; k < n_steps; k++) {
        int c = curve[k];
        step st = {0};
        double t0 = now_s(), t_end = t0 + step_s;
        for (int i = 0; i < c; i++)
            slots[i].next_start = t0;
        int running = 0;
        for (;;) {
            double t = now_s();
            int active = 0;
            for (int i = 0; i < c; i++) {
                if (!slots[i].active && t < t_end && slots[i].next_start <= t)
                    start(mh, &slots[i], url, body, hdrs);
                active += slots[i].active;
            }
            if (!active && t >= t_end)
                break;
            curl_multi_perform(mh, &running);
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(mh, &left))) {
                if (msg->msg != CURLMSG_DONE)
                    continue;
                slot *s;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
                long code = 0;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
                double t_done = now_s();
                st.requests++;
                if (msg->data.result == CURLE_OK && code == 200 && s->t_first) {
                    st.ok++;
                    stats_add(&st.lat, t_done - s->t_start);
                    stats_add(&st.ttft, s->t_first - s->t_start);
                    st.tokens += s->tokens;
                    s->next_start = t_done;
                } else {
                    if (code == 429)
                        st.n429++;
                    else
                        st.errors++;
                    s->next_start = t_done + 0.05;
                }
                curl_multi_remove_handle(mh, s->h);
                s->active = 0;
            }
            /* sleep until a socket is ready, or the next delayed start */
            double wake = 1.0;
            for (int i = 0; i < c; i++)
                if (!slots[i].active && t < t_end && slots[i].next_start - t < wake)
                    wake = slots[i].next_start - t;
            int ms = wake <= 0 ? 0 : (int)(wake * 1e3) + 1;
            curl_multi_poll(mh, NULL, 0, ms, NULL);
        }
        double secs = now_s() - t0;
        double lat_mean = stats_mean(&st.lat), ttft_mean = stats_mean(&st.ttft);
        printf("load step=%d concurrency=%d seconds=%.2f requests=%ld ok=%ld http429=%ld errors=%ld "
               "lat_mean_ms=%.1f lat_p50_ms=%.1f lat_p99_ms=%.1f ttft_mean_ms=%.2f ttft_p50_ms=%.2f "
               "out_tokens=%ld out_tok_s=%.1f\n",
               k + 1, c, secs, st.requests, st.ok, st.n429, st.errors, lat_mean * 1e3, stats_pct(&st.lat, 50) * 1e3,
               stats_pct(&st.lat, 99) * 1e3, ttft_mean * 1e3, stats_pct(&st.ttft, 50) * 1e3, st.tokens,
               st.tokens / secs);
        fflush(stdout);
        all.requests += st.requests, all.ok += st.ok, all.n429 += st.n429, all.errors += st.errors;
        all.tokens += st.tokens;
        free(st.lat.v);
        free(st.ttft.v);
    }
    double secs = now_s() - t_all;
    printf("load total seconds=%.1f requests=%ld ok=%ld http429=%ld errors=%ld success_rate=%.4f out_tok_s=%.1f\n",
           secs, all.requests, all.ok, all.n429, all.errors, all.requests ? (double)all.ok / all.requests : 0,
           all.tokens / secs);
    for (int i = 0; i < max_c; i++)
        if (slots[i].h)
            curl_easy_cleanup(slots[i].h);
    free(slots);
    curl_multi_cleanup(mh);
    curl_slist_free_all(hdrs);
    return all.errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *url = "http://127.0.0.1:9000", *prompt = "Write a short poem about the sea.", *api_key = NULL;
    const char *model = "models/smollm2-135m-instruct.thaw", *curve_s = "1,2,4,8,16,8,4,2,1";
    double step_s = 10;
    int max_tokens = 32, engine = 0, n_req = 20, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--engine")) {
            engine = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "load: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--url"))
            url = v;
        else if (!strcmp(a, "--curve"))
            curve_s = v;
        else if (!strcmp(a, "--step-seconds"))
            step_s = atof(v);
        else if (!strcmp(a, "--max-tokens"))
            max_tokens = atoi(v);
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--api-key"))
            api_key = v;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--requests"))
            n_req = atoi(v);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else {
            fprintf(stderr, "load: unknown option %s (see the comment at the top of bench/load.c)\n", a);
            return 2;
        }
    }
    if (max_tokens < 1 || n_req < 1 || step_s <= 0) {
        fprintf(stderr, "load: --max-tokens, --requests and --step-seconds must be positive\n");
        return 2;
    }
    if (engine)
        return run_engine(model, prompt, n_req, max_tokens, threads);

    int curve[64], n_steps = 0;
    for (const char *p = curve_s; *p && n_steps < 64;) {
        int c = atoi(p);
        if (c < 1 || c > 1024) {
            fprintf(stderr, "load: bad --curve '%s'\n", curve_s);
            return 2;
        }
        curve[n_steps++] = c;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    /* the prompt as a JSON string (escape quotes and backslashes; control bytes dropped) */
    char esc[4096];
    size_t k = 0;
    for (const char *p = prompt; *p && k + 3 < sizeof esc; p++) {
        if (*p == '"' || *p == '\\')
            esc[k++] = '\\';
        if ((unsigned char)*p >= 0x20)
            esc[k++] = *p;
    }
    esc[k] = 0;
    char body[8192];
    snprintf(body, sizeof body,
             "{\"model\":\"bench\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":%d,"
             "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
             esc, max_tokens);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = run_curve(url, curve, n_steps, step_s, body, api_key);
    curl_global_cleanup();
    return rc;
}
