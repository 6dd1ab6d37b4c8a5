/* test_sampler.c -- engine/sampler.c: parameter checks, greedy, seeds, temperature,
 * top-k/top-p/min-p, logit bias, penalties (exact formulas), empirical distributions,
 * logprobs against an independent log_softmax, and stop strings (every split point,
 * overlapping and multiple stops, a randomised comparison with a one-shot reference). */
#include "engine.h"
#include "test.h"

/* ------------------------------------------------------------------------------------ */
/* helpers                                                                               */
/* ------------------------------------------------------------------------------------ */

/* the test's own generator (not the sampler's), for making logits and texts */
static uint64_t t_rng = 0x1234567;
static uint32_t t_rand(void)
{
    t_rng ^= t_rng << 13;
    t_rng ^= t_rng >> 7;
    t_rng ^= t_rng << 17;
    return (uint32_t)(t_rng >> 16);
}
static double t_unif(void) { return (t_rand() + 0.5) / 4294967296.0; }
static double t_normal(void) { return sqrt(-2 * log(t_unif())) * cos(6.283185307179586 * t_unif()); }

static eng_sampling params(float temperature, uint64_t seed)
{
    eng_sampling s;
    eng_sampling_defaults(&s);
    s.temperature = temperature;
    s.seed = seed;
    return s;
}

/* softmax(l / t) in double */
static void softmax(const float *l, int n, double t, double *p)
{
    double m = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        if (l[i] > m)
            m = l[i];
    for (int i = 0; i < n; i++)
        sum += p[i] = exp((l[i] - m) / t);
    for (int i = 0; i < n; i++)
        p[i] /= sum;
}

/* Draws n_draws tokens from the same logits and returns the frequencies. */
static void draw_freq(const eng_sampling *sp, const float *logits, int n, int n_draws, double *freq)
{
    eng_sampler *s = NULL;
    if (eng_sampler_create((uint32_t)n, sp, &s) != 0) {
        CHECK(!"eng_sampler_create");
        return;
    }
    float *l = malloc((size_t)n * sizeof *l);
    for (int i = 0; i < n; i++)
        freq[i] = 0;
    for (int d = 0; d < n_draws; d++) {
        eng_sample_result r;
        memcpy(l, logits, (size_t)n * sizeof *l);
        eng_sample(s, l, &r);
        if (r.token >= 0 && r.token < n)
            freq[r.token] += 1.0 / n_draws;
        else
            CHECK(!"token out of range");
    }
    free(l);
    eng_sampler_destroy(s);
}

/* max |freq - p| < tol and a chi-square below the 0.001 critical value */
static void check_dist(const char *what, const double *freq, const double *p, int n, int n_draws, double tol)
{
    double max_diff = 0, chi2 = 0;
    int df = -1;
    for (int i = 0; i < n; i++) {
        double d = fabs(freq[i] - p[i]);
        if (d > max_diff)
            max_diff = d;
        if (p[i] == 0) {
            if (freq[i] != 0) {
                fprintf(stderr, "  %s: token %d has probability 0 but was drawn (%g)\n", what, i, freq[i]);
                test_failed_ = 1;
            }
            continue;
        }
        double e = p[i] * n_draws, o = freq[i] * n_draws;
        chi2 += (o - e) * (o - e) / e;
        df++;
    }
    /* chi-square 0.999 quantile, approximated (Wilson-Hilferty) */
    double z = 3.09, k = df > 0 ? df : 1;
    double crit = k * pow(1 - 2 / (9 * k) + z * sqrt(2 / (9 * k)), 3);
    if (!(max_diff < tol) || !(chi2 < crit)) {
        fprintf(stderr, "  %s: max |freq - p| = %g (tol %g), chi2 = %g (df %d, crit %g)\n", what, max_diff, tol, chi2,
                df, crit);
        test_failed_ = 1;
    }
}

/* ------------------------------------------------------------------------------------ */
/* parameters                                                                            */
/* ------------------------------------------------------------------------------------ */

static void expect_reject(const eng_sampling *s, const char *field)
{
    eng_err err = {{0}};
    int rc = eng_sampling_check(s, 100, &err);
    if (rc != ENG_EINVAL)
        fprintf(stderr, "  %s: not rejected (rc %d)\n", field, rc);
    CHECK_INT(rc, ENG_EINVAL);
    CHECK_CONTAINS(err.msg, field);
}

static void test_check(void)
{
    eng_sampling s = params(0, 0);
    CHECK_INT(eng_sampling_check(&s, 100, NULL), 0);
    CHECK(s.top_p == 1.0f && s.repetition_penalty == 1.0f && s.top_k == 0 && s.min_p == 0);

    /* the edges are accepted */
    eng_logit_bias edge_bias[] = {{0, -100}, {99, 100}};
    s.temperature = 2;
    s.top_p = 1;
    s.min_p = 1;
    s.presence_penalty = -2;
    s.frequency_penalty = 2;
    s.repetition_penalty = 10;
    s.top_k = 100000;
    s.logit_bias = edge_bias;
    s.n_logit_bias = 2;
    s.n_logprobs = ENG_MAX_LOGPROBS;
    CHECK_INT(eng_sampling_check(&s, 100, NULL), 0);

    static const float bad_temp[] = {-0.01f, 2.01f, NAN};
    for (int i = 0; i < 3; i++) {
        s = params(bad_temp[i], 0);
        expect_reject(&s, "temperature");
    }
    static const float bad_top_p[] = {0, -1, 1.0001f, NAN};
    for (int i = 0; i < 4; i++) {
        s = params(1, 0);
        s.top_p = bad_top_p[i];
        expect_reject(&s, "top_p");
    }
    static const float bad_min_p[] = {-0.1f, 1.1f, NAN};
    for (int i = 0; i < 3; i++) {
        s = params(1, 0);
        s.min_p = bad_min_p[i];
        expect_reject(&s, "min_p");
    }
    s = params(1, 0);
    s.top_k = -1;
    expect_reject(&s, "top_k");
    static const float bad_pen[] = {-2.01f, 2.01f, NAN};
    for (int i = 0; i < 3; i++) {
        s = params(1, 0);
        s.presence_penalty = bad_pen[i];
        expect_reject(&s, "presence_penalty");
        s = params(1, 0);
        s.frequency_penalty = bad_pen[i];
        expect_reject(&s, "frequency_penalty");
    }
    static const float bad_rep[] = {0, -1, 10.01f, NAN};
    for (int i = 0; i < 4; i++) {
        s = params(1, 0);
        s.repetition_penalty = bad_rep[i];
        expect_reject(&s, "repetition_penalty");
    }
    eng_logit_bias bad_bias[][1] = {{{-1, 1}}, {{100, 1}}, {{5, 100.5f}}, {{5, -101}}, {{5, NAN}}};
    for (int i = 0; i < 5; i++) {
        s = params(1, 0);
        s.logit_bias = bad_bias[i];
        s.n_logit_bias = 1;
        expect_reject(&s, "logit_bias");
    }
    s = params(1, 0);
    s.n_logit_bias = 3; /* and no array */
    expect_reject(&s, "logit_bias");
    s = params(1, 0);
    s.n_logprobs = ENG_MAX_LOGPROBS + 1;
    expect_reject(&s, "n_logprobs");
}

/* ------------------------------------------------------------------------------------ */
/* greedy, seeds, temperature, truncation                                                */
/* ------------------------------------------------------------------------------------ */

static void test_greedy(void)
{
    enum { N = 1000 };
    eng_sampling sp = params(0, 0);
    eng_sampler *s;
    REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
    float l[N];
    for (int round = 0; round < 50; round++) {
        int arg = 0;
        for (int i = 0; i < N; i++) {
            l[i] = (float)t_normal();
            if (l[i] > l[arg])
                arg = i;
        }
        eng_sample_result r;
        eng_sample(s, l, &r);
        CHECK_INT(r.token, arg);
    }
    /* ties go to the lowest id */
    for (int i = 0; i < N; i++)
        l[i] = 0;
    l[700] = l[300] = l[301] = 5;
    eng_sample_result r;
    eng_sample(s, l, &r);
    CHECK_INT(r.token, 300);
    /* a NaN is never chosen */
    for (int i = 0; i < N; i++)
        l[i] = (float)i / N;
    l[N - 1] = NAN;
    eng_sample(s, l, &r);
    CHECK_INT(r.token, N - 2);
    eng_sampler_destroy(s);

    CHECK_INT(eng_sampler_create(0, &sp, &s), ENG_EINVAL);
    eng_sampler_destroy(NULL);
}

/* a flat-ish distribution: every token has a fair chance */
static void flat_logits(float *l, int n)
{
    for (int i = 0; i < n; i++)
        l[i] = (float)(0.3 * t_normal());
}

static void run_seq(eng_sampler *s, const float *logit_seq, int n, int steps, int32_t *out)
{
    float l[64];
    for (int t = 0; t < steps; t++) {
        eng_sample_result r;
        memcpy(l, logit_seq + t * n, (size_t)n * sizeof *l);
        eng_sample(s, l, &r);
        out[t] = r.token;
    }
}

static void test_seed(void)
{
    enum { N = 50, STEPS = 200 };
    static float seq[STEPS * N];
    for (int t = 0; t < STEPS; t++)
        flat_logits(seq + t * N, N);
    int32_t a[STEPS], b[STEPS], c[STEPS], d[STEPS];
    eng_sampling sp = params(1.0f, 42);
    eng_sampler *s1, *s2;
    REQUIRE(eng_sampler_create(N, &sp, &s1) == 0);
    REQUIRE(eng_sampler_create(N, &sp, &s2) == 0);
    run_seq(s1, seq, N, STEPS, a);
    run_seq(s2, seq, N, STEPS, b);
    CHECK(memcmp(a, b, sizeof a) == 0);

    /* reset with the same seed replays; another seed differs */
    eng_sampler_reset(s1, &sp);
    run_seq(s1, seq, N, STEPS, c);
    CHECK(memcmp(a, c, sizeof a) == 0);
    eng_sampling other = params(1.0f, 43);
    eng_sampler_reset(s1, &other);
    run_seq(s1, seq, N, STEPS, d);
    int n_diff = 0;
    for (int t = 0; t < STEPS; t++)
        n_diff += a[t] != d[t];
    CHECK(n_diff > STEPS / 2);

    /* interleaving two sequences changes neither */
    eng_sampler_reset(s1, &sp);
    eng_sampler_reset(s2, &other);
    float l[N];
    for (int t = 0; t < STEPS; t++) {
        eng_sample_result r1, r2;
        memcpy(l, seq + t * N, sizeof l);
        eng_sample(s1, l, &r1);
        memcpy(l, seq + t * N, sizeof l);
        eng_sample(s2, l, &r2);
        CHECK_INT(r1.token, a[t]);
        CHECK_INT(r2.token, d[t]);
    }
    eng_sampler_destroy(s1);
    eng_sampler_destroy(s2);
}

/* Settings that must behave exactly like greedy over many random distributions. */
static void check_greedy_like(const char *what, const eng_sampling *sp, float spread, float gap)
{
    enum { N = 200 };
    eng_sampler *s;
    if (eng_sampler_create(N, sp, &s) != 0) {
        CHECK(!"create");
        return;
    }
    float l[N];
    int bad = 0;
    for (int round = 0; round < 500; round++) {
        int arg = 0;
        for (int i = 0; i < N; i++) {
            l[i] = (float)(spread * t_normal());
            if (l[i] > l[arg])
                arg = i;
        }
        l[arg] += gap;
        eng_sample_result r;
        eng_sample(s, l, &r);
        bad += r.token != arg;
    }
    if (bad) {
        fprintf(stderr, "  %s: %d of 500 draws were not the argmax\n", what, bad);
        test_failed_ = 1;
    }
    eng_sampler_destroy(s);
}

static void test_greedy_limits(void)
{
    eng_sampling sp = params(1e-6f, 7); /* below the epsilon: greedy */
    check_greedy_like("temperature 1e-6", &sp, 0.01f, 0);
    sp = params(1e-3f, 7); /* a real but tiny temperature: the runner-up gets exp(-0.05 / 1e-3) */
    check_greedy_like("temperature 1e-3", &sp, 1.0f, 0.05f);
    sp = params(1.0f, 7);
    sp.top_k = 1;
    check_greedy_like("top_k 1", &sp, 0.3f, 0);
    sp = params(1.5f, 7);
    sp.top_p = 1e-6f;
    check_greedy_like("top_p 1e-6", &sp, 0.3f, 0);
    sp = params(1.0f, 7);
    sp.min_p = 1.0f;
    check_greedy_like("min_p 1", &sp, 0.3f, 0);
}

static const float KNOWN[10] = {2.0f, 1.5f, 1.2f, 1.0f, 0.5f, 0.3f, 0.0f, -0.5f, -1.0f, -2.0f};

static void test_distribution(void)
{
    enum { N = 10, DRAWS = 20000 };
    double p[N], f[N];
    eng_sampling sp = params(1.0f, 1);
    softmax(KNOWN, N, 1.0, p);
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("temperature 1", f, p, N, DRAWS, 0.01);

    sp = params(0.7f, 2);
    softmax(KNOWN, N, 0.7, p);
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("temperature 0.7", f, p, N, DRAWS, 0.01);

    sp = params(1.6f, 3);
    softmax(KNOWN, N, 1.6, p);
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("temperature 1.6", f, p, N, DRAWS, 0.01);

    /* top_k 3: the three best, renormalised; nothing else ever */
    sp = params(1.0f, 4);
    sp.top_k = 3;
    softmax(KNOWN, 3, 1.0, p);
    for (int i = 3; i < N; i++)
        p[i] = 0;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("top_k 3", f, p, N, DRAWS, 0.01);

    /* top_p 0.6: softmax is .35 .21 .16 .13 ...: cumulative .35 .56 .72 -> three tokens */
    sp = params(1.0f, 5);
    sp.top_p = 0.6f;
    softmax(KNOWN, N, 1.0, p);
    CHECK(p[0] + p[1] < 0.6 && p[0] + p[1] + p[2] >= 0.6);
    softmax(KNOWN, 3, 1.0, p);
    for (int i = 3; i < N; i++)
        p[i] = 0;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("top_p 0.6", f, p, N, DRAWS, 0.01);

    /* min_p 0.3: keep p >= 0.3 * p_max, i.e. logit >= 2 + ln 0.3 = 0.796 -> four tokens */
    sp = params(1.0f, 6);
    sp.min_p = 0.3f;
    softmax(KNOWN, 4, 1.0, p);
    for (int i = 4; i < N; i++)
        p[i] = 0;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("min_p 0.3", f, p, N, DRAWS, 0.01);

    /* min_p then top_k then top_p: min_p keeps 4, top_k 3 keeps 3, top_p 0.7 of those 3
     * (renormalised .47 .29 .21 -> cumulative .47 .76) keeps 2 */
    sp = params(1.0f, 7);
    sp.min_p = 0.3f;
    sp.top_k = 3;
    sp.top_p = 0.7f;
    softmax(KNOWN, 2, 1.0, p);
    for (int i = 2; i < N; i++)
        p[i] = 0;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("min_p+top_k+top_p", f, p, N, DRAWS, 0.01);

    /* min_p binding after top_k: top_k 6 keeps 6, min_p 0.3 then keeps 4 */
    sp = params(1.0f, 8);
    sp.min_p = 0.3f;
    sp.top_k = 6;
    softmax(KNOWN, 4, 1.0, p);
    for (int i = 4; i < N; i++)
        p[i] = 0;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    check_dist("top_k+min_p", f, p, N, DRAWS, 0.01);
}

/* top_p on a large vocabulary goes through the prefilter: the support must be exactly the
 * nucleus computed here with a full sort, and the frequencies must match. */
static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static void test_top_p_large(void)
{
    enum { N = 4096, DRAWS = 20000 };
    static float l[N];
    static double p[N], sorted[N], f[N];
    for (int i = 0; i < N; i++)
        l[i] = (float)(2.0 * t_normal());
    float temps[] = {1.0f, 1.3f};
    float tops[] = {0.3f, 0.1f};
    for (int c = 0; c < 2; c++) {
        softmax(l, N, temps[c], p);
        memcpy(sorted, p, sizeof p);
        qsort(sorted, N, sizeof *sorted, cmp_desc);
        double cum = 0, cut = 0;
        int k = 0;
        while (k < N) {
            cum += sorted[k++];
            if (cum >= tops[c]) {
                cut = sorted[k - 1];
                break;
            }
        }
        double mass = 0;
        for (int i = 0; i < N; i++)
            if (p[i] >= cut)
                mass += p[i];
        for (int i = 0; i < N; i++)
            p[i] = p[i] >= cut ? p[i] / mass : 0;
        eng_sampling sp = params(temps[c], 100 + c);
        sp.top_p = tops[c];
        draw_freq(&sp, l, N, DRAWS, f);
        fprintf(stderr, "  top_p %.2f at temperature %.1f: nucleus of %d tokens\n", tops[c], temps[c], k);
        CHECK(k > 5);
        check_dist("top_p large vocabulary", f, p, N, DRAWS, 0.01);
    }
}

/* A nucleus made mostly of a long tail of tiny tokens: the prefilter must not cut the tail.
 * Token 0 has weight 1, tokens 1.. about e^-8 each (decreasing with the id, so the nucleus
 * is tokens 0..K). */
static void test_top_p_tail(void)
{
    enum { N = 4096, DRAWS = 20000 };
    static float l[N];
    static double p[N], f[N];
    l[0] = 0;
    for (int i = 1; i < N; i++)
        l[i] = -8.0f - 0.0001f * (float)i;
    softmax(l, N, 1.0, p);
    const float top_p = 0.5f;
    double cum = 0;
    int k = 0;
    while (cum < top_p)
        cum += p[k++];
    double p0 = p[0] / cum;
    eng_sampling sp = params(1.0f, 5);
    sp.top_p = top_p;
    draw_freq(&sp, l, N, DRAWS, f);
    int max_id = 0;
    for (int i = 0; i < N; i++)
        if (f[i] > 0)
            max_id = i;
    fprintf(stderr, "  nucleus of %d tokens, p0 %.4f, drew token 0 %.4f, largest id drawn %d\n", k, p0, f[0], max_id);
    CHECK(k > 100);
    CHECK_NEAR(f[0], p0, 0.01);
    CHECK(max_id <= k && max_id > k * 3 / 4);
}

/* ------------------------------------------------------------------------------------ */
/* logit bias and penalties                                                              */
/* ------------------------------------------------------------------------------------ */

static void test_logit_bias(void)
{
    enum { N = 10, DRAWS = 5000 };
    double f[N];
    /* -100 bans the argmax: greedy takes the runner-up, sampling never draws it */
    eng_logit_bias ban[] = {{0, -100}};
    eng_sampling sp = params(0, 0);
    sp.logit_bias = ban;
    sp.n_logit_bias = 1;
    eng_sampler *s;
    REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
    float l[N];
    memcpy(l, KNOWN, sizeof l);
    eng_sample_result r;
    eng_sample(s, l, &r);
    CHECK_INT(r.token, 1);
    eng_sampler_destroy(s);
    sp.temperature = 1.5f;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    CHECK(f[0] == 0);
    CHECK(f[1] > 0.1);

    /* +100 forces the least likely token */
    eng_logit_bias force[] = {{9, 100}};
    sp = params(1.5f, 9);
    sp.logit_bias = force;
    sp.n_logit_bias = 1;
    draw_freq(&sp, KNOWN, N, DRAWS, f);
    CHECK_NEAR(f[9], 1.0, 1e-9);

    /* a moderate bias shifts the distribution by exactly exp(bias) */
    eng_logit_bias shift[] = {{3, 1.0f}, {5, -0.5f}};
    sp = params(1.0f, 10);
    sp.logit_bias = shift;
    sp.n_logit_bias = 2;
    float shifted[N];
    memcpy(shifted, KNOWN, sizeof shifted);
    shifted[3] += 1.0f;
    shifted[5] -= 0.5f;
    double p[N];
    softmax(shifted, N, 1.0, p);
    draw_freq(&sp, KNOWN, N, 20000, f);
    check_dist("logit_bias shift", f, p, N, 20000, 0.01);

    /* everything banned: no NaN, a token in range */
    eng_logit_bias all[N];
    for (int i = 0; i < N; i++)
        all[i] = (eng_logit_bias){i, -100};
    sp = params(1.0f, 11);
    sp.logit_bias = all;
    sp.n_logit_bias = N;
    sp.n_logprobs = 3;
    REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
    memcpy(l, KNOWN, sizeof l);
    eng_sample(s, l, &r);
    CHECK(r.token >= 0 && r.token < N);
    CHECK(r.logprob == r.logprob);
    eng_sampler_destroy(s);
}

/* The penalised logits, recomputed here: HF repetition penalty over prompt and output
 * tokens, then OpenAI frequency/presence over output tokens. */
static float expect_pen(float l, int in_prompt, int count, float rep, float pres, float freq)
{
    if (in_prompt || count > 0)
        l = l > 0 ? l / rep : l * rep;
    if (count > 0)
        l -= freq * (float)count + pres;
    return l;
}

/* skip_logprob (greedy decoding with nobody reading logprobs) must not skip the counts the
 * penalties read */
static void penalty_formulas(int skip_logprob)
{
    enum { N = 12 };
    const float rep = 1.3f, pres = 0.4f, freq = 0.25f;
    eng_sampling sp = params(0, 0);
    sp.skip_logprob = skip_logprob;
    sp.repetition_penalty = rep;
    sp.presence_penalty = pres;
    sp.frequency_penalty = freq;
    eng_sampler *s;
    REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
    int32_t prompt[] = {1, 2, 2, 7, 99, -3}; /* out-of-range ids are ignored */
    eng_sampler_prompt(s, prompt, 6);

    /* output: token 2 once, token 3 twice, token 4 three times (forced by a huge logit) */
    int count[N] = {0}, in_prompt[N] = {0, 1, 1, 0, 0, 0, 0, 1};
    const int forced[] = {2, 3, 3, 4, 4, 4};
    float l[N];
    for (int t = 0; t < 6; t++) {
        for (int i = 0; i < N; i++)
            l[i] = 0;
        l[forced[t]] = 1000;
        eng_sample_result r;
        eng_sample(s, l, &r);
        CHECK_INT(r.token, forced[t]);
        count[forced[t]]++;
    }

    /* positive and negative logits, every combination of prompt/output */
    const float base[N] = {1.0f, 2.0f, -1.5f, 0.8f, -0.6f, 3.0f, 0.0f, -2.0f, 0.5f, 0.1f, -0.1f, 0.2f};
    memcpy(l, base, sizeof l);
    eng_sample_result r;
    eng_sample(s, l, &r); /* eng_sample leaves the processed logits in place */
    int arg = 0;
    for (int i = 0; i < N; i++) {
        float want = expect_pen(base[i], in_prompt[i], count[i], rep, pres, freq);
        CHECK_NEAR(l[i], want, 1e-6);
        if (want > expect_pen(base[arg], in_prompt[arg], count[arg], rep, pres, freq))
            arg = i;
    }
    CHECK_INT(r.token, arg); /* token 5: 3.0 untouched */
    eng_sampler_destroy(s);
}

static void test_penalty_formulas(void)
{
    penalty_formulas(0);
    penalty_formulas(1);
}

/* Greedy picks flipped by each penalty alone. */
static int pick(const eng_sampling *sp, const int32_t *prompt, size_t n_prompt, const int32_t *out, size_t n_out,
                float l0, float l1)
{
    eng_sampler *s;
    if (eng_sampler_create(4, sp, &s) != 0)
        return -1;
    eng_sampler_prompt(s, prompt, n_prompt);
    for (size_t t = 0; t < n_out; t++) { /* force the output history */
        float f[4] = {0, 0, 0, 0};
        f[out[t]] = 1000;
        eng_sample_result r;
        eng_sample(s, f, &r);
    }
    float l[4] = {l0, l1, -50, -50};
    eng_sample_result r;
    eng_sample(s, l, &r);
    eng_sampler_destroy(s);
    return r.token;
}

static void test_penalty_flips(void)
{
    int32_t zero[] = {0, 0, 0};
    eng_sampling sp = params(0, 0);
    /* repetition 1.1 over the prompt: 2.0 -> 1.818 < 1.9 */
    sp.repetition_penalty = 1.1f;
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, 2.0f, 1.9f), 1);
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, 2.0f, 1.8f), 0);   /* 1.818 > 1.8 */
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, -1.0f, -1.05f), 1); /* negative: -1.1 < -1.05 */
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, -1.0f, -1.15f), 0);
    CHECK_INT(pick(&sp, NULL, 0, zero, 1, 2.0f, 1.9f), 1);    /* output tokens count too */
    /* a repetition penalty below 1 favours repeats */
    sp.repetition_penalty = 0.5f;
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, 1.0f, 1.5f), 0);    /* 1.0 / 0.5 = 2 */

    /* presence 0.2 over output only, not the prompt */
    sp = params(0, 0);
    sp.presence_penalty = 0.2f;
    CHECK_INT(pick(&sp, NULL, 0, zero, 1, 2.0f, 1.85f), 1);
    CHECK_INT(pick(&sp, NULL, 0, zero, 3, 2.0f, 1.75f), 0); /* count does not matter */
    CHECK_INT(pick(&sp, zero, 1, NULL, 0, 2.0f, 1.85f), 0); /* prompt does not count */
    sp.presence_penalty = -0.2f;                           /* negative encourages */
    CHECK_INT(pick(&sp, NULL, 0, zero, 1, 1.85f, 2.0f), 0);

    /* frequency 0.05 x count 3 = 0.15 */
    sp = params(0, 0);
    sp.frequency_penalty = 0.05f;
    CHECK_INT(pick(&sp, NULL, 0, zero, 3, 2.0f, 1.9f), 1);
    CHECK_INT(pick(&sp, NULL, 0, zero, 1, 2.0f, 1.9f), 0); /* 0.05 only */
    CHECK_INT(pick(&sp, zero, 3, NULL, 0, 2.0f, 1.9f), 0); /* prompt does not count */

    /* reset forgets the prompt and the output */
    sp = params(0, 0);
    sp.repetition_penalty = 2.0f;
    eng_sampler *s;
    REQUIRE(eng_sampler_create(4, &sp, &s) == 0);
    eng_sampler_prompt(s, zero, 1);
    float l[4] = {2.0f, 1.5f, 0, 0};
    eng_sample_result r;
    eng_sample(s, l, &r);
    CHECK_INT(r.token, 1); /* 2.0 / 2 = 1 < 1.5 */
    eng_sampler_reset(s, &sp);
    float l2[4] = {2.0f, 1.5f, 0, 0};
    eng_sample(s, l2, &r);
    CHECK_INT(r.token, 0);
    CHECK(l2[0] == 2.0f);
    eng_sampler_destroy(s);
}

/* ------------------------------------------------------------------------------------ */
/* logprobs                                                                              */
/* ------------------------------------------------------------------------------------ */

static void test_logprobs(void)
{
    enum { N = 300 };
    float base[N], l[N];
    double lp[N];
    for (int i = 0; i < N; i++)
        base[i] = (float)(1.5 * t_normal());
    base[17] = base[18] = 6.0f; /* a tie at the top: lower id first */
    eng_logit_bias bias[] = {{40, 2.5f}, {17, -100}};
    float temps[] = {0.0f, 0.8f, 1.0f, 1.7f};
    for (int c = 0; c < 4; c++) {
        eng_sampling sp = params(temps[c], 77 + c);
        sp.n_logprobs = c == 3 ? ENG_MAX_LOGPROBS : 5;
        sp.top_k = c == 1 ? 50 : 0;
        sp.top_p = c == 3 ? 0.9f : 1.0f;
        sp.logit_bias = bias;
        sp.n_logit_bias = 2;
        eng_sampler *s;
        REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
        for (int step = 0; step < 20; step++) {
            /* independent log_softmax (double) of the biased logits; temperature plays no part */
            float b[N];
            memcpy(b, base, sizeof b);
            b[40] += 2.5f;
            b[17] = -INFINITY;
            double m = -INFINITY, sum = 0;
            for (int i = 0; i < N; i++)
                m = b[i] > m ? b[i] : m;
            for (int i = 0; i < N; i++)
                sum += exp(b[i] - m);
            for (int i = 0; i < N; i++)
                lp[i] = b[i] - m - log(sum);

            memcpy(l, base, sizeof l);
            eng_sample_result r;
            eng_sample(s, l, &r);
            REQUIRE(r.token >= 0 && r.token < N);
            CHECK_NEAR(r.logprob, lp[r.token], 1e-5);
            CHECK_INT(r.n_top, sp.n_logprobs);
            /* top-N: the N largest, best first, ties to the lower id */
            int used[N] = {0};
            for (uint32_t j = 0; j < r.n_top; j++) {
                int best = -1;
                for (int i = 0; i < N; i++)
                    if (!used[i] && (best < 0 || lp[i] > lp[best]))
                        best = i;
                used[best] = 1;
                CHECK_INT(r.top[j].token, best);
                CHECK_NEAR(r.top[j].logprob, lp[best], 1e-5);
            }
            CHECK_INT(r.top[0].token, 18); /* 17 is banned, 18 ties at 6.0 ... */
        }
        eng_sampler_destroy(s);
    }
    /* no logprobs requested: none reported, the chosen one still is */
    eng_sampling sp = params(0, 0);
    eng_sampler *s;
    REQUIRE(eng_sampler_create(N, &sp, &s) == 0);
    memcpy(l, base, sizeof l);
    eng_sample_result r;
    eng_sample(s, l, &r);
    CHECK_INT(r.n_top, 0);
    CHECK_INT(r.token, 17); /* the tie 17/18 goes to 17 */
    CHECK(r.logprob < -0.69f && r.logprob > -10); /* at most half: 18 ties with it */
    eng_sampler_destroy(s);
}

/* ------------------------------------------------------------------------------------ */
/* stop strings                                                                          */
/* ------------------------------------------------------------------------------------ */

/* One-shot reference: cut at the occurrence that ends first (ties: starts first). */
static size_t ref_stop(const char *text, size_t len, const char *const *stops, int n, int *matched)
{
    size_t best_end = (size_t)-1, best_start = 0;
    for (int i = 0; i < n; i++) {
        size_t ls = strlen(stops[i]);
        for (size_t b = 0; b + ls <= len; b++) {
            if (memcmp(text + b, stops[i], ls) == 0) {
                if (b + ls < best_end || (b + ls == best_end && b < best_start)) {
                    best_end = b + ls;
                    best_start = b;
                }
                break;
            }
        }
    }
    *matched = best_end != (size_t)-1;
    return *matched ? best_start : len;
}

/* Pushes text in the pieces given by cut points, then flushes; returns the output length. */
static size_t run_stop(eng_stop *st, const char *text, size_t len, const size_t *cuts, int n_cuts, char *out)
{
    size_t n = 0, from = 0;
    for (int c = 0; c <= n_cuts; c++) {
        size_t to = c < n_cuts ? cuts[c] : len;
        n += eng_stop_push(st, text + from, to - from, out + n, len + ENG_STOP_MAX_LEN);
        from = to;
    }
    n += eng_stop_flush(st, out + n, ENG_STOP_MAX_LEN);
    return n;
}

static int check_splits(const char *text, const char *const *stops, int n_stops)
{
    size_t len = strlen(text);
    int matched;
    size_t want = ref_stop(text, len, stops, n_stops, &matched);
    char out[1024];
    int bad = 0;
    eng_stop st;
    /* one push, every single split, every pair of splits */
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            size_t cuts[2] = {i, j};
            if (eng_stop_init(&st, stops, (uint32_t)n_stops, NULL) != 0)
                return 1;
            size_t n = run_stop(&st, text, len, cuts, 2, out);
            if (n != want || memcmp(out, text, want) != 0 || st.matched != matched) {
                if (!bad)
                    fprintf(stderr, "  \"%s\" split at %zu,%zu: got \"%.*s\" (matched %d), want \"%.*s\" (%d)\n",
                            text, i, j, (int)n, out, st.matched, (int)want, text, matched);
                bad = 1;
            }
        }
    }
    /* a byte at a time */
    if (eng_stop_init(&st, stops, (uint32_t)n_stops, NULL) != 0)
        return 1;
    size_t cuts[1024];
    for (size_t i = 0; i < len; i++)
        cuts[i] = i;
    size_t n = run_stop(&st, text, len, cuts, (int)len, out);
    if (n != want || memcmp(out, text, want) != 0) {
        fprintf(stderr, "  \"%s\" byte by byte: got \"%.*s\"\n", text, (int)n, out);
        bad = 1;
    }
    return bad;
}

static void test_stop_splits(void)
{
    const char *one[] = {"STOP"};
    CHECK(!check_splits("Hello STOP world", one, 1));
    CHECK(!check_splits("STOP at the start", one, 1));
    CHECK(!check_splits("at the end STOP", one, 1));
    CHECK(!check_splits("STO P ST OP S TOP STOPP", one, 1));
    CHECK(!check_splits("near misses STO STOx SSTOP", one, 1));
    CHECK(!check_splits("nothing here at all", one, 1));
    CHECK(!check_splits("", one, 1));
    CHECK(!check_splits("ends with a prefix ST", one, 1));

    /* self-overlapping stop strings */
    const char *aab[] = {"aab"};
    CHECK(!check_splits("xaaab", aab, 1));
    CHECK(!check_splits("aaaaaaaaab", aab, 1));
    CHECK(!check_splits("aaaaaa", aab, 1));
    const char *abab[] = {"abab"};
    CHECK(!check_splits("abababab", abab, 1));
    CHECK(!check_splits("abacababa", abab, 1));

    /* several stops, overlapping each other */
    const char *over[] = {"abcd", "bc"};
    CHECK(!check_splits("xxabcdxx", over, 2)); /* "bc" completes first */
    const char *same_end[] = {"b", "ab"};
    CHECK(!check_splits("xxab", same_end, 2)); /* both end together: the longer one */
    const char *multi[] = {"\n\nUser:", "</s>", "###", "<|im_end|>"};
    CHECK(!check_splits("The answer is 4.\n\nUser: next", multi, 4));
    CHECK(!check_splits("Sure ## # ##x ###", multi, 4));
    CHECK(!check_splits("a </ s> </s", multi, 4));
    CHECK(!check_splits("text<|im_end|>\n\nUser:", multi, 4));
    CHECK(!check_splits("unicode é→✓ <|im_end", multi, 4));
}

static void test_stop_basics(void)
{
    eng_stop st;
    char out[1024];
    const char *stops[] = {"STOP"};
    REQUIRE(eng_stop_init(&st, stops, 1, NULL) == 0);
    size_t n = eng_stop_push(&st, "Hello ST", 8, out, sizeof out);
    CHECK_INT(n, 6); /* "ST" held back */
    CHECK(memcmp(out, "Hello ", 6) == 0);
    CHECK_INT(st.matched, 0);
    n = eng_stop_push(&st, "OP and more", 11, out, sizeof out);
    CHECK_INT(n, 0);
    CHECK_INT(st.matched, 1);
    CHECK_INT(eng_stop_push(&st, "later", 5, out, sizeof out), 0); /* nothing after a match */
    CHECK_INT(eng_stop_flush(&st, out, sizeof out), 0);

    /* a false start is released as soon as it cannot be a stop any more */
    REQUIRE(eng_stop_init(&st, stops, 1, NULL) == 0);
    CHECK_INT(eng_stop_push(&st, "ST", 2, out, sizeof out), 0);
    n = eng_stop_push(&st, "ART", 3, out, sizeof out);
    CHECK_INT(n, 5);
    CHECK(memcmp(out, "START", 5) == 0);
    /* flush emits what is held at the end */
    CHECK_INT(eng_stop_push(&st, " STO", 4, out, sizeof out), 1);
    n = eng_stop_flush(&st, out, sizeof out);
    CHECK_INT(n, 3);
    CHECK(memcmp(out, "STO", 3) == 0);
    CHECK_INT(st.matched, 0);

    /* no stops: everything passes straight through */
    REQUIRE(eng_stop_init(&st, NULL, 0, NULL) == 0);
    CHECK_INT(eng_stop_push(&st, "anything", 8, out, sizeof out), 8);
    CHECK_INT(eng_stop_push(&st, NULL, 0, out, sizeof out), 0);
    CHECK_INT(eng_stop_flush(&st, out, sizeof out), 0);

    /* the output never goes past cap */
    REQUIRE(eng_stop_init(&st, stops, 1, NULL) == 0);
    memset(out, 'X', sizeof out);
    CHECK_INT(eng_stop_push(&st, "abcdefgh", 8, out, 3), 3);
    CHECK(out[3] == 'X');
}

static void test_stop_init_errors(void)
{
    eng_stop st;
    eng_err err = {{0}};
    const char *five[] = {"a", "b", "c", "d", "e"};
    CHECK_INT(eng_stop_init(&st, five, 5, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "at most 4");
    CHECK_INT(eng_stop_init(&st, five, 4, &err), 0);
    const char *empty[] = {"ok", ""};
    CHECK_INT(eng_stop_init(&st, empty, 2, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "stop[1]");
    const char *null_entry[] = {NULL};
    CHECK_INT(eng_stop_init(&st, null_entry, 1, &err), ENG_EINVAL);
    char long_stop[300];
    memset(long_stop, 'x', sizeof long_stop);
    long_stop[256] = 0;
    const char *too_long[] = {long_stop};
    CHECK_INT(eng_stop_init(&st, too_long, 1, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "255");
    long_stop[255] = 0; /* 255 bytes: fine */
    CHECK_INT(eng_stop_init(&st, too_long, 1, &err), 0);
    CHECK_INT(eng_stop_init(&st, NULL, 2, &err), ENG_EINVAL);
}

/* Long texts: a push bigger than the work area, a stop across its edge, the longest stop. */
static void test_stop_long(void)
{
    static char text[4000], stop[256], out[8000];
    const char *stops[] = {stop};
    for (int i = 0; i < 255; i++)
        stop[i] = (char)('a' + i % 7);
    stop[255] = 0;
    for (size_t where = 0; where < 1200; where += 37) {
        memset(text, '.', sizeof text);
        memcpy(text + where, stop, 255);
        text[3000] = 0;
        size_t len = 3000;
        int matched;
        size_t want = ref_stop(text, len, stops, 1, &matched);
        CHECK(matched && want == where);
        for (size_t piece = 1; piece <= 1500; piece = piece * 3 + 1) {
            eng_stop st;
            REQUIRE(eng_stop_init(&st, stops, 1, NULL) == 0);
            size_t n = 0;
            for (size_t at = 0; at < len; at += piece) {
                size_t k = len - at < piece ? len - at : piece;
                n += eng_stop_push(&st, text + at, k, out + n, sizeof out - n);
            }
            n += eng_stop_flush(&st, out + n, sizeof out - n);
            if (n != want || !st.matched) {
                fprintf(stderr, "  stop at %zu, pieces of %zu: got %zu bytes, want %zu\n", where, piece, n, want);
                test_failed_ = 1;
            }
        }
    }
    /* the longest stop minus its last byte, then something else: all of it comes back */
    eng_stop st;
    REQUIRE(eng_stop_init(&st, stops, 1, NULL) == 0);
    size_t n = eng_stop_push(&st, stop, 254, out, sizeof out);
    CHECK_INT(n, 0);
    n += eng_stop_push(&st, "!", 1, out + n, sizeof out - n);
    n += eng_stop_flush(&st, out + n, sizeof out - n);
    CHECK_INT(n, 255);
    CHECK(memcmp(out, stop, 254) == 0 && out[254] == '!');
}

/* Random texts and stops over a tiny alphabet (many overlaps), random pieces. */
static void test_stop_random(void)
{
    int bad = 0;
    for (int trial = 0; trial < 20000 && !bad; trial++) {
        char stops_buf[4][8], text[64], out[512];
        const char *stops[4];
        int n_stops = 1 + (int)(t_rand() % 4);
        for (int i = 0; i < n_stops; i++) {
            int l = 1 + (int)(t_rand() % 5);
            for (int k = 0; k < l; k++)
                stops_buf[i][k] = (char)('a' + t_rand() % 3);
            stops_buf[i][l] = 0;
            stops[i] = stops_buf[i];
        }
        size_t len = t_rand() % 40;
        for (size_t k = 0; k < len; k++)
            text[k] = (char)('a' + t_rand() % 4);
        text[len] = 0;
        int matched;
        size_t want = ref_stop(text, len, stops, n_stops, &matched);
        eng_stop st;
        REQUIRE(eng_stop_init(&st, stops, (uint32_t)n_stops, NULL) == 0);
        size_t n = 0, at = 0;
        while (at < len) {
            size_t k = 1 + t_rand() % 6;
            if (k > len - at)
                k = len - at;
            n += eng_stop_push(&st, text + at, k, out + n, sizeof out - n);
            at += k;
        }
        n += eng_stop_flush(&st, out + n, sizeof out - n);
        if (n != want || memcmp(out, text, want) != 0 || st.matched != matched) {
            fprintf(stderr, "  text \"%s\" stops", text);
            for (int i = 0; i < n_stops; i++)
                fprintf(stderr, " \"%s\"", stops[i]);
            fprintf(stderr, ": got \"%.*s\" (%d), want \"%.*s\" (%d)\n", (int)n, out, st.matched, (int)want, text,
                    matched);
            bad = 1;
        }
        /* no emitted text may contain a stop string */
        for (int i = 0; i < n_stops; i++)
            if (n >= strlen(stops[i]) && memmem(out, n, stops[i], strlen(stops[i])))
                bad = 1;
    }
    CHECK(!bad);
}

int main(void)
{
    TEST_RUN(test_check);
    TEST_RUN(test_greedy);
    TEST_RUN(test_seed);
    TEST_RUN(test_greedy_limits);
    TEST_RUN(test_distribution);
    TEST_RUN(test_top_p_large);
    TEST_RUN(test_top_p_tail);
    TEST_RUN(test_logit_bias);
    TEST_RUN(test_penalty_formulas);
    TEST_RUN(test_penalty_flips);
    TEST_RUN(test_logprobs);
    TEST_RUN(test_stop_basics);
    TEST_RUN(test_stop_splits);
    TEST_RUN(test_stop_init_errors);
    TEST_RUN(test_stop_long);
    TEST_RUN(test_stop_random);
    TEST_END();
}
