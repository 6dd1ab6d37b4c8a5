/* sampler.c -- choosing the next token from the logits, and holding back stop strings.
 *
 * The pipeline, in vLLM's (V1) order, which is also what an OpenAI-compatible client expects:
 *   1. logit_bias         added to the logits; a bias of -100 is a ban (the logit becomes -inf),
 *                         so "-100 bans" holds exactly rather than nearly.
 *   2. penalties          repetition (HF: over prompt and output tokens, l > 0 ? l / r : l * r),
 *                         then frequency and presence (OpenAI: over output tokens,
 *                         l -= frequency * count + presence * (count > 0)).
 *   3. logprobs           log_softmax of these logits, i.e. after bias and penalties, before
 *                         temperature and truncation (see "Logprobs" below).
 *   4. temperature        below 1e-5 (vLLM's epsilon) the choice is greedy: argmax, ties to the
 *                         lowest id, no random number drawn.
 *   5. min_p, top_k, top_p  each keeps a prefix of the tokens sorted by probability: min_p keeps
 *                         p >= min_p * p_max; top_k the k most likely; top_p the smallest prefix
 *                         whose mass reaches top_p of what min_p and top_k left (at least one).
 *   6. draw               one uniform double from the sequence's own xoshiro256** generator,
 *                         seeded from params->seed with splitmix64, walked over the kept mass.
 *
 * Logprobs. vLLM V1 by default reports "raw" logprobs (log_softmax of the model's logits before
 * any processing); V0 reported the processed ones (after penalties and temperature); OpenAI
 * does not document its choice but its logprobs do not move with temperature. We take the
 * logits after bias and penalties and before temperature and truncation: equal to vLLM's raw
 * logprobs for a request without bias or penalties, temperature-independent like OpenAI's, and
 * a banned token reports -inf, as it can never be chosen. res->logprob is filled unless
 * params->skip_logprob (then greedy decoding skips the pass over the vocabulary for it);
 * res->top[] has the params->n_logprobs most likely tokens, best first, ties to the lower id.
 *
 * Cost per token, n = n_vocab: one pass for bias/penalties over the touched ids only, one pass
 * for the max, one exp pass for the log-normaliser (shared with the draw when temperature is 1),
 * and then:
 *   greedy            nothing more;
 *   no top_k/top_p    one exp pass and one walk (no sort);
 *   top_k             a k-heap over the logits (O(n log k)), then work on k tokens;
 *   top_p alone       one exp pass that also collects the candidates, w >= (1 - top_p) * mass
 *                     / n: the rest together weighs less than (1 - top_p) of the mass, so the
 *                     nucleus is among them. A weighted quickselect then finds the nucleus in
 *                     O(candidates): nothing is sorted.
 * Nothing is allocated: all scratch is sized from n_vocab at create.
 *
 * Penalty state: count[id] (output occurrences) and in_prompt[id], plus the list of ids that
 * have either set ("touched"), so penalties and reset cost O(distinct ids seen), not O(n).
 * Invariant: an id is in touched[] exactly once iff count[id] > 0 || in_prompt[id].
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SAMPLING_EPS 1e-5f /* temperatures below this are greedy (as vLLM) */

typedef struct cand {
    float v;                   /* a logit, or an unnormalised probability */
    int32_t id;
} cand;

struct eng_sampler {
    uint32_t n_vocab;
    eng_sampling p;            /* p.logit_bias is the caller's array: it must outlive the request */
    uint64_t rng[4];           /* xoshiro256** state */
    uint32_t *count;           /* [n_vocab] host: times each id was sampled this request */
    uint8_t *in_prompt;        /* [n_vocab] host: 1 if the id is in the prompt */
    int32_t *touched;          /* [n_vocab] host: ids with count > 0 or in_prompt, each once */
    uint32_t n_touched;
    float *prob;               /* [n_vocab] host scratch: unnormalised probabilities by id */
    cand *cand;                /* [n_vocab] host scratch: candidates (heap, sorted lists) */
};


/* ======================================================================================
 * Parameters
 * ====================================================================================== */
void eng_sampling_defaults(eng_sampling *s)
{
    memset(s, 0, sizeof *s);
    s->temperature = 0.0f;
    s->top_k = 0;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repetition_penalty = 1.0f;
}

/* The comparisons are written so that NaN fails them. */
int eng_sampling_check(const eng_sampling *s, uint32_t n_vocab, eng_err *err)
{
    if (!(s->temperature >= 0.0f && s->temperature <= 2.0f)) {
        eng_fail(err, ENG_EINVAL, "temperature must be between 0 and 2, got %g", (double)s->temperature);
        return ENG_EINVAL;
    }
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) {
        eng_fail(err, ENG_EINVAL, "top_p must be in (0, 1], got %g", (double)s->top_p);
        return ENG_EINVAL;
    }
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) {
        eng_fail(err, ENG_EINVAL, "min_p must be in [0, 1], got %g", (double)s->min_p);
        return ENG_EINVAL;
    }
    if (s->top_k < 0) {
        eng_fail(err, ENG_EINVAL, "top_k must be >= 0 (0 = off), got %d", (int)s->top_k);
        return ENG_EINVAL;
    }
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f)) {
        eng_fail(err, ENG_EINVAL, "presence_penalty must be between -2 and 2, got %g", (double)s->presence_penalty);
        return ENG_EINVAL;
    }
    if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f)) {
        eng_fail(err, ENG_EINVAL, "frequency_penalty must be between -2 and 2, got %g", (double)s->frequency_penalty);
        return ENG_EINVAL;
    }
    if (!(s->repetition_penalty > 0.0f && s->repetition_penalty <= 10.0f)) {
        eng_fail(err, ENG_EINVAL, "repetition_penalty must be in (0, 10], got %g", (double)s->repetition_penalty);
        return ENG_EINVAL;
    }
    if (s->n_logit_bias > 0 && !s->logit_bias) {
        eng_fail(err, ENG_EINVAL, "logit_bias: %u entries but no array", s->n_logit_bias);
        return ENG_EINVAL;
    }
    for (uint32_t i = 0; i < s->n_logit_bias; i++) {
        const eng_logit_bias *b = &s->logit_bias[i];
        if (b->token < 0 || (uint32_t)b->token >= n_vocab) {
            eng_fail(err, ENG_EINVAL, "logit_bias: token %d is not in the vocabulary (0..%u)", (int)b->token, n_vocab - 1);
            return ENG_EINVAL;
        }
        if (!(b->bias >= -100.0f && b->bias <= 100.0f)) {
            eng_fail(err, ENG_EINVAL, "logit_bias: the bias of token %d must be between -100 and 100, got %g", (int)b->token,
                    (double)b->bias);
            return ENG_EINVAL;
        }
    }
    if (s->n_logprobs > ENG_MAX_LOGPROBS) {
        eng_fail(err, ENG_EINVAL, "n_logprobs (top_logprobs) must be at most %d, got %u", ENG_MAX_LOGPROBS, s->n_logprobs);
        return ENG_EINVAL;
    }
    return 0;
}

/* ======================================================================================
 * Random numbers: splitmix64 to seed, xoshiro256** to draw (public-domain algorithms by
 * Vigna). Per sequence, so a request's tokens depend only on its seed and its logits.
 * ====================================================================================== */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* uniform in [0, 1) with 53 random bits */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* ======================================================================================
 * Sampler state
 * ====================================================================================== */
int eng_sampler_create(uint32_t n_vocab, const eng_sampling *params, eng_sampler **out)
{
    *out = NULL;
    if (n_vocab == 0 || n_vocab > (uint32_t)INT32_MAX)
        return ENG_EINVAL;
    eng_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return ENG_ENOMEM;
    s->n_vocab = n_vocab;
    s->count = calloc(n_vocab, sizeof *s->count);
    s->in_prompt = calloc(n_vocab, sizeof *s->in_prompt);
    s->touched = malloc(n_vocab * sizeof *s->touched);
    s->prob = malloc(n_vocab * sizeof *s->prob);
    s->cand = malloc(n_vocab * sizeof *s->cand);
    if (!s->count || !s->in_prompt || !s->touched || !s->prob || !s->cand)
        goto fail;
    eng_sampler_reset(s, params);
    *out = s;
    return 0;
fail:
    eng_sampler_destroy(s);
    return ENG_ENOMEM;
}

void eng_sampler_destroy(eng_sampler *s)
{
    if (!s)
        return;
    free(s->count);
    free(s->in_prompt);
    free(s->touched);
    free(s->prob);
    free(s->cand);
    free(s);
}

void eng_sampler_reset(eng_sampler *s, const eng_sampling *params)
{
    for (uint32_t i = 0; i < s->n_touched; i++) {
        s->count[s->touched[i]] = 0;
        s->in_prompt[s->touched[i]] = 0;
    }
    s->n_touched = 0;
    if (params)
        s->p = *params;
    else
        eng_sampling_defaults(&s->p);
    uint64_t x = s->p.seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
}

static void touch(eng_sampler *s, int32_t id)
{
    if (s->count[id] == 0 && !s->in_prompt[id])
        s->touched[s->n_touched++] = id; /* at most n_vocab distinct ids: never overflows */
}

/* Ids outside the vocabulary are ignored: prompts may arrive as token arrays from a client. */
void eng_sampler_prompt(eng_sampler *s, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (uint32_t)id >= s->n_vocab)
            continue;
        touch(s, id);
        s->in_prompt[id] = 1;
    }
}

/* ======================================================================================
 * Selection helpers
 * ====================================================================================== */

/* a ranks below b: smaller value, or the same value and a higher id (ties go to low ids) */
static inline int worse(const cand *a, const cand *b) { return a->v < b->v || (a->v == b->v && a->id > b->id); }

static void swap_cand(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

static void sift_down(cand *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && worse(&h[l], &h[w]))
            w = l;
        if (r < n && worse(&h[r], &h[w]))
            w = r;
        if (w == i)
            return;
        swap_cand(&h[i], &h[w]);
        i = w;
    }
}

/* The k best (value, id) of v[0..n), best first, into out[0..k). A heap of the k best seen
 * so far with the worst on top: most tokens cost one comparison. Returns min(k, n). */
static uint32_t select_top(const float *v, uint32_t n, uint32_t k, cand *out)
{
    if (k > n)
        k = n;
    if (k == 0)
        return 0;
    for (uint32_t i = 0; i < k; i++)
        out[i] = (cand){v[i], (int32_t)i};
    for (uint32_t i = k / 2; i-- > 0;)
        sift_down(out, k, i);
    for (uint32_t i = k; i < n; i++) {
        if (v[i] > out[0].v) { /* an equal value has a higher id: it ranks lower */
            out[0] = (cand){v[i], (int32_t)i};
            sift_down(out, k, 0);
        }
    }
    for (uint32_t end = k - 1; end > 0; end--) { /* heap sort: worst to the back */
        swap_cand(&out[0], &out[end]);
        sift_down(out, end, 0);
    }
    return k;
}

static int cmp_cand_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Draw from the first n entries of a list of unnormalised probabilities (any order). */
static int32_t draw_list(eng_sampler *s, const cand *c, uint32_t n)
{
    double mass = 0;
    for (uint32_t j = 0; j < n; j++)
        mass += c[j].v;
    double u = rng_uniform(s->rng) * mass, cum = 0;
    for (uint32_t j = 0; j < n; j++) {
        cum += c[j].v;
        if (u < cum)
            return c[j].id;
    }
    return c[n - 1].id; /* rounding: u within an ulp of the total */
}

/* Cuts a best-first list of unnormalised probabilities (c[0].v == 1, the most likely token)
 * by min_p and then top_p; returns the new length (>= 1). */
static uint32_t cut_min_p_top_p(const cand *c, uint32_t n, float min_p, float top_p, double mass)
{
    if (min_p > 0) {
        uint32_t keep = 1;
        while (keep < n && c[keep].v >= min_p)
            keep++;
        if (keep < n) {
            for (uint32_t j = keep; j < n; j++)
                mass -= c[j].v;
            n = keep;
        }
    }
    if (top_p < 1.0f) {
        double target = (double)top_p * mass, cum = 0;
        for (uint32_t j = 0; j < n; j++) {
            cum += c[j].v;
            if (cum >= target)
                return j + 1;
        }
    }
    return n;
}

/* The nucleus without sorting it: reorders c[0..n) so that c[0..k) are the k best entries
 * (order of worse()), k the smallest count whose mass reaches need, and returns k (n if
 * rounding leaves the total just short). A quickselect that recurses only into the side
 * holding the cut: O(n) expected; after 64 rounds (never on real logits) it sorts what is left. */
static uint32_t select_mass(cand *c, uint32_t n, double need)
{
    uint32_t lo = 0, hi = n;
    double acc = 0; /* mass of c[0..lo), all of it in the nucleus */
    for (int round = 0; hi - lo > 32 && round < 64; round++) {
        uint32_t a = lo, b = lo + (hi - lo) / 2, d = hi - 1, piv; /* median of three */
        if (worse(&c[a], &c[b]))
            piv = worse(&c[b], &c[d]) ? b : (worse(&c[a], &c[d]) ? d : a);
        else
            piv = worse(&c[a], &c[d]) ? a : (worse(&c[b], &c[d]) ? d : b);
        swap_cand(&c[piv], &c[hi - 1]);
        const cand pv = c[hi - 1];
        uint32_t i = lo;
        double better = 0;
        for (uint32_t j = lo; j < hi - 1; j++) {
            if (worse(&pv, &c[j])) {
                swap_cand(&c[i], &c[j]);
                better += c[i].v;
                i++;
            }
        }
        swap_cand(&c[i], &c[hi - 1]); /* the pivot, between the better and the worse */
        if (acc + better >= need) {
            hi = i;
        } else if (acc + better + pv.v >= need) {
            return i + 1;
        } else {
            acc += better + pv.v;
            lo = i + 1;
        }
    }
    qsort(c + lo, hi - lo, sizeof *c, cmp_cand_desc);
    for (uint32_t j = lo; j < hi; j++) {
        acc += c[j].v;
        if (acc >= need)
            return j + 1;
    }
    return hi > 0 ? hi : 1;
}

/* Temperature, truncation and the draw. m is the largest logit (finite). If it computes the
 * log-normaliser's sum on the way (temperature 1), stores it in *sum_exp. */
static int32_t sample_random(eng_sampler *s, const float *logits, float m, double *sum_exp)
{
    const eng_sampling *p = &s->p;
    uint32_t n = s->n_vocab;
    float inv_t = 1.0f / p->temperature;
    int unit_t = p->temperature == 1.0f;
    float min_p = p->min_p > 0 ? p->min_p : 0; /* unchecked params must not misbehave */
    float top_p = p->top_p > 0 ? p->top_p : 0; /* 0: keep only the most likely */

    if (p->top_k > 0 && (uint32_t)p->top_k < n) {
        uint32_t k = select_top(logits, n, (uint32_t)p->top_k, s->cand);
        double mass = 0;
        for (uint32_t j = 0; j < k; j++) {
            s->cand[j].v = expf((s->cand[j].v - m) * inv_t);
            mass += s->cand[j].v;
        }
        return draw_list(s, s->cand, cut_min_p_top_p(s->cand, k, min_p, top_p, mass));
    }

    double mass = 0, all = 0;
    if (top_p < 1.0f) {
        /* Candidates: w >= tau = (1 - top_p) * M / n, M the mass seen so far, at least 1 (the
         * argmax weighs 1). Tau only grows towards its final value, so every token left out
         * was under the final tau, and together those weigh less than (1 - top_p) of the
         * mass: the nucleus lies among the candidates, collected in the same pass. */
        float tau_per_mass = 0.999f * (1.0f - top_p) / (float)n, tau = tau_per_mass; /* 0.999: float slack */
        uint32_t nc = 0;
        for (uint32_t i = 0; i < n; i++) {
            float w = expf((logits[i] - m) * inv_t);
            all += w;
            if (w >= min_p) {
                mass += w;
                if (w >= tau) {
                    s->cand[nc++] = (cand){w, (int32_t)i};
                    if (mass > 1)
                        tau = tau_per_mass * (float)mass;
                }
            }
        }
        if (unit_t)
            *sum_exp = all;
        return draw_list(s, s->cand, select_mass(s->cand, nc, (double)top_p * mass));
    }

    /* no truncation but min_p: weights by id, then one walk */
    for (uint32_t i = 0; i < n; i++) {
        float w = expf((logits[i] - m) * inv_t);
        all += w;
        if (w < min_p)
            w = 0;
        s->prob[i] = w;
        mass += w;
    }
    if (unit_t)
        *sum_exp = all;
    double u = rng_uniform(s->rng) * mass, cum = 0;
    int32_t last = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (s->prob[i] <= 0)
            continue;
        cum += s->prob[i];
        last = (int32_t)i;
        if (u < cum)
            return (int32_t)i;
    }
    return last;
}

/* ======================================================================================
 * eng_sample
 * ====================================================================================== */

/* res->token's logprob and the top n_logprobs, under the distribution in logits (max m);
 * sum_exp is its sum of exp(l - m) when sampling computed it, else < 0. */
static void put_logprobs(const eng_sampling *p, const float *logits, uint32_t n, float m, double sum_exp,
                         eng_sample_result *res)
{
    if (sum_exp < 0) {
        sum_exp = 0;
        for (uint32_t i = 0; i < n; i++)
            sum_exp += expf(logits[i] - m);
    }
    float lse = m + (float)log(sum_exp);
    res->logprob = logits[res->token] - lse;
    uint32_t k = p->n_logprobs < ENG_MAX_LOGPROBS ? p->n_logprobs : ENG_MAX_LOGPROBS;
    if (k > 0) {
        cand top[ENG_MAX_LOGPROBS];
        k = select_top(logits, n, k, top);
        for (uint32_t j = 0; j < k; j++) {
            res->top[j].token = top[j].id;
            res->top[j].logprob = top[j].v - lse;
        }
        res->n_top = k;
    }
}
void eng_sample(eng_sampler *s, float *logits, eng_sample_result *res)
{
    const eng_sampling *p = &s->p;
    uint32_t n = s->n_vocab;

    for (uint32_t i = 0; i < p->n_logit_bias && p->logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        if (t < 0 || (uint32_t)t >= n)
            continue;
        if (p->logit_bias[i].bias <= -100.0f)
            logits[t] = -INFINITY;
        else
            logits[t] += p->logit_bias[i].bias;
    }

    float rep = p->repetition_penalty > 0 ? p->repetition_penalty : 1.0f;
    int do_rep = rep != 1.0f, do_out = p->presence_penalty != 0 || p->frequency_penalty != 0;
    if (do_rep || do_out) {
        for (uint32_t j = 0; j < s->n_touched; j++) {
            int32_t id = s->touched[j];
            float l = logits[id];
            if (do_rep)
                l = l > 0 ? l / rep : l * rep;
            if (s->count[id] > 0)
                l -= p->frequency_penalty * (float)s->count[id] + p->presence_penalty;
            logits[id] = l;
        }
    }

    /* max and argmax (first, i.e. lowest id, on ties). A broken model or an overflowing
     * penalty must not poison the sums: NaN becomes -inf and +inf the largest float. The
     * common case, no NaN or +inf, takes a max in eight independent lanes (which the
     * compiler turns into vector code) and one search for its first position. */
    float m = -INFINITY;
    int32_t best = 0;
    uint32_t n_scan = n; /* the careful loop below, unless the fast path found no NaN or +inf */
    if (n % 8 == 0) {
        float lane[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        int ok = 1; /* no NaN, no +inf (-inf, a banned token, is fine) */
        for (uint32_t i = 0; i < n; i += 8)
            for (int j = 0; j < 8; j++) {
                float l = logits[i + j];
                ok &= l <= FLT_MAX;
                lane[j] = l > lane[j] ? l : lane[j];
            }
        if (ok) {
            float mx = lane[0];
            for (int j = 1; j < 8; j++)
                mx = lane[j] > mx ? lane[j] : mx;
            uint32_t i = 0;
            while (logits[i] != mx)
                i++;
            m = mx, best = (int32_t)i, n_scan = 0;
        }
    }
    for (uint32_t i = 0; i < n_scan; i++) {
        float l = logits[i];
        if (!(l <= FLT_MAX))
            logits[i] = l = l != l ? -INFINITY : FLT_MAX;
        if (l > m) {
            m = l;
            best = (int32_t)i;
        }
    }

    /* every token banned (m is -inf): nothing is likelier than anything else; the lowest id */
    res->token = best;
    res->logprob = 0;
    res->n_top = 0;
    if (m > -INFINITY) {
        double sum_exp = -1;
        if (p->temperature >= SAMPLING_EPS)
            res->token = sample_random(s, logits, m, &sum_exp);
        if (sum_exp >= 0 || !p->skip_logprob || p->n_logprobs > 0)
            put_logprobs(p, logits, n, m, sum_exp, res);
    }

    touch(s, res->token);
    if (s->count[res->token] < UINT32_MAX)
        s->count[res->token]++;
}

/* ======================================================================================
 * Stop strings
 *
 * held[] is the work area: the bytes kept back from earlier pushes (at most 254, the longest
 * proper prefix of a stop string) followed by as much new text as fits. In it we look for the
 * stop occurrence that ENDS first -- the point where a streaming client would have stopped --
 * (ties: the one starting first), so the result does not depend on how the text was split
 * into pushes. Without a match, the longest suffix that could still grow into a stop string
 * stays held and the rest is emitted. A stop string therefore never reaches the output, whole
 * or in part, as long as it goes on to complete.
 *
 * Output: at most len + n_held bytes per push (< len + ENG_STOP_MAX_LEN); bytes past cap are
 * dropped, so callers size cap for that.
 * ====================================================================================== */
int eng_stop_init(eng_stop *st, const char *const *stops, uint32_t n, eng_err *err)
{
    memset(st, 0, sizeof *st);
    if (n > ENG_MAX_STOP) {
        eng_fail(err, ENG_EINVAL, "stop: at most %d stop sequences, got %u", ENG_MAX_STOP, n);
        return ENG_EINVAL;
    }
    if (n > 0 && !stops) {
        eng_fail(err, ENG_EINVAL, "stop: %u stop sequences but no array", n);
        return ENG_EINVAL;
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t len = stops[i] ? strlen(stops[i]) : 0;
        if (len == 0) {
            eng_fail(err, ENG_EINVAL, "stop[%u] is empty", i);
            return ENG_EINVAL;
        }
        if (len >= ENG_STOP_MAX_LEN) {
            eng_fail(err, ENG_EINVAL, "stop[%u] is %zu bytes long; at most %d", i, len, ENG_STOP_MAX_LEN - 1);
            return ENG_EINVAL;
        }
        memcpy(st->stops[i], stops[i], len + 1);
    }
    st->n_stops = n;
    return 0;
}

static void stop_emit(char *out, size_t cap, size_t *n_out, const char *s, size_t n)
{
    if (n > 0 && *n_out < cap) {
        size_t room = cap - *n_out;
        memcpy(out + *n_out, s, n < room ? n : room);
    }
    *n_out = *n_out + n < cap ? *n_out + n : cap;
}

/* longest suffix of buf[0..n) that is a proper prefix of some stop string */
static size_t stop_partial(const eng_stop *st, const char *buf, size_t n)
{
    size_t best = 0;
    for (uint32_t i = 0; i < st->n_stops; i++) {
        size_t ls = strlen(st->stops[i]);
        for (size_t k = (ls - 1 < n ? ls - 1 : n); k > best; k--) {
            if (memcmp(buf + n - k, st->stops[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

size_t eng_stop_push(eng_stop *st, const char *text, size_t len, char *out, size_t cap)
{
    size_t n_out = 0;
    if (st->matched)
        return 0;
    if (st->n_stops == 0) {
        stop_emit(out, cap, &n_out, text, len);
        return n_out;
    }
    while (len > 0) {
        size_t room = sizeof st->held - st->n_held; /* >= ENG_STOP_MAX_LEN + 1: always progress */
        size_t take = len < room ? len : room;
        memcpy(st->held + st->n_held, text, take);
        st->n_held += (uint32_t)take;
        text += take;
        len -= take;

        size_t end = SIZE_MAX, start = 0;
        for (uint32_t i = 0; i < st->n_stops; i++) {
            size_t ls = strlen(st->stops[i]);
            const char *hit = memmem(st->held, st->n_held, st->stops[i], ls);
            if (!hit)
                continue;
            size_t b = (size_t)(hit - st->held);
            if (b + ls < end || (b + ls == end && b < start)) {
                end = b + ls;
                start = b;
            }
        }
        if (end != SIZE_MAX) {
            stop_emit(out, cap, &n_out, st->held, start);
            st->matched = 1;
            st->n_held = 0;
            return n_out;
        }
        size_t keep = stop_partial(st, st->held, st->n_held);
        stop_emit(out, cap, &n_out, st->held, st->n_held - keep);
        memmove(st->held, st->held + st->n_held - keep, keep);
        st->n_held = (uint32_t)keep;
    }
    return n_out;
}

size_t eng_stop_flush(eng_stop *st, char *out, size_t cap)
{
    size_t n_out = 0;
    if (!st->matched)
        stop_emit(out, cap, &n_out, st->held, st->n_held);
    st->n_held = 0;
    return n_out;
}
