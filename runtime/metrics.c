/* metrics.c -- Prometheus text for GET /metrics.
 *
 * Request counters are kept per route (a fixed list, so label cardinality is bounded
 * whatever paths clients try) and per status code (a short list per route). Histograms
 * have fixed buckets. Engine gauges (running, queued, KV blocks) are read fresh from the
 * engine at each scrape. One mutex; a scrape holds it for microseconds. */
#include "server.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const char *const route_names[RT_ROUTE_COUNT] = {
    [RT_ROUTE_OTHER] = "other",
    [RT_ROUTE_HEALTH] = "/health",
    [RT_ROUTE_METRICS] = "/metrics",
    [RT_ROUTE_MODELS] = "/v1/models",
    [RT_ROUTE_CHAT] = "/v1/chat/completions",
    [RT_ROUTE_COMPLETIONS] = "/v1/completions",
    [RT_ROUTE_TOKENIZE] = "/tokenize",
    [RT_ROUTE_DETOKENIZE] = "/detokenize",
    [RT_ROUTE_INVOKE] = "/invoke",
    [RT_ROUTE_INITIALIZE] = "/initialize",
    [RT_ROUTE_PRE_STOP] = "/pre-stop",
    [RT_ROUTE_PRE_FREEZE] = "/pre-freeze",
};

const char *rt_route_name(int route)
{
    return route >= 0 && route < RT_ROUTE_COUNT ? route_names[route] : "other";
}

#define MAX_STATUSES 16 /* distinct status codes counted per route; the rest go to 0 ("other") */

static const double ttft_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double latency_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
#define N_TTFT (sizeof ttft_buckets / sizeof ttft_buckets[0])
#define N_LAT (sizeof latency_buckets / sizeof latency_buckets[0])

typedef struct histogram {
    uint64_t counts[16];       /* per bucket (not cumulative); [n] = above the last bound */
    uint64_t n;
    double sum;
} histogram;

struct rt_metrics {
    pthread_mutex_t lock;
    struct {
        int status[MAX_STATUSES];
        uint64_t count[MAX_STATUSES];
    } routes[RT_ROUTE_COUNT];
    histogram ttft, latency;
    uint64_t prompt_tokens, generated_tokens;
};

int rt_metrics_create(rt_metrics **out)
{
    rt_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return -1;
    pthread_mutex_init(&m->lock, NULL);
    *out = m;
    return 0;
}

void rt_metrics_destroy(rt_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static void observe(histogram *h, const double *bounds, size_t n, double v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    h->counts[i]++;
    h->n++;
    h->sum += v;
}

void rt_metrics_request(rt_metrics *m, int route, int status, double duration_s, double ttft_s,
                        uint32_t prompt_tokens, uint32_t generated_tokens)
{
    if (route < 0 || route >= RT_ROUTE_COUNT)
        route = RT_ROUTE_OTHER;
    pthread_mutex_lock(&m->lock);
    int slot = -1;
    for (int i = 0; i < MAX_STATUSES && slot < 0; i++) {
        if (m->routes[route].status[i] == status)
            slot = i;
        else if (m->routes[route].status[i] == 0) {
            m->routes[route].status[i] = status;
            slot = i;
        }
    }
    if (slot >= 0)
        m->routes[route].count[slot]++;
    if (route == RT_ROUTE_CHAT || route == RT_ROUTE_COMPLETIONS || route == RT_ROUTE_INVOKE) {
        observe(&m->latency, latency_buckets, N_LAT, duration_s);
        if (ttft_s >= 0)
            observe(&m->ttft, ttft_buckets, N_TTFT, ttft_s);
        m->prompt_tokens += prompt_tokens;
        m->generated_tokens += generated_tokens;
    }
    pthread_mutex_unlock(&m->lock);
}

static void render_histogram(rt_buf *o, const char *name, const char *help, const histogram *h, const double *bounds,
                             size_t n)
{
    rt_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += h->counts[i];
        rt_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    rt_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)h->n,
                  name, h->sum, name, (unsigned long long)h->n);
}

static void gauge(rt_buf *o, const char *name, const char *help, double v)
{
    rt_buf_printf(o, "# HELP %s %s\n# TYPE %s gauge\n%s %.9g\n", name, help, name, name, v);
}

static void counter(rt_buf *o, const char *name, const char *help, unsigned long long v)
{
    rt_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, v);
}

void rt_metrics_render(rt_metrics *m, const rt_gauges *g, rt_buf *o)
{
    pthread_mutex_lock(&m->lock);
    rt_buf_puts(o, "# HELP thaw_requests_total HTTP requests by route and status.\n"
                   "# TYPE thaw_requests_total counter\n");
    for (int r = 0; r < RT_ROUTE_COUNT; r++)
        for (int i = 0; i < MAX_STATUSES && m->routes[r].status[i]; i++)
            rt_buf_printf(o, "thaw_requests_total{route=\"%s\",status=\"%d\"} %llu\n", route_names[r],
                          m->routes[r].status[i], (unsigned long long)m->routes[r].count[i]);
    render_histogram(o, "thaw_time_to_first_token_seconds", "Request arrival to first generated token.", &m->ttft,
                     ttft_buckets, N_TTFT);
    render_histogram(o, "thaw_request_duration_seconds", "Generation request arrival to its last byte.", &m->latency,
                     latency_buckets, N_LAT);
    counter(o, "thaw_prompt_tokens_total", "Prompt tokens of finished generation requests.", m->prompt_tokens);
    counter(o, "thaw_generation_tokens_total", "Tokens generated by finished requests.", m->generated_tokens);
    pthread_mutex_unlock(&m->lock);

    gauge(o, "thaw_ready", "1 when the model is loaded and requests are admitted.", g->ready && !g->draining);
    gauge(o, "thaw_draining", "1 after /pre-stop or SIGTERM.", g->draining);
    gauge(o, "thaw_http_inflight_requests", "API requests being handled.", g->inflight);
    gauge(o, "thaw_http_active_streams", "Streaming responses open.", g->streams);
    if (g->engine) {
        const eng_stats *e = g->engine;
        gauge(o, "thaw_num_requests_running", "Sequences in the running batch.", e->running);
        gauge(o, "thaw_num_requests_waiting", "Requests queued for admission.", e->queued);
        rt_buf_printf(o,
                      "# HELP thaw_kv_blocks KV cache blocks (16 tokens) by state.\n# TYPE thaw_kv_blocks gauge\n"
                      "thaw_kv_blocks{state=\"used\"} %u\nthaw_kv_blocks{state=\"free\"} %u\n"
                      "thaw_kv_blocks{state=\"cached\"} %u\n",
                      e->kv_blocks_used, e->kv_blocks_free, e->kv_blocks_cached);
        gauge(o, "thaw_kv_blocks_total", "KV cache blocks in the pool.", e->kv_blocks_total);
        gauge(o, "thaw_kv_usage_ratio", "Fraction of KV blocks in use by sequences.",
              e->kv_blocks_total ? (double)e->kv_blocks_used / e->kv_blocks_total : 0);
        counter(o, "thaw_prefix_cache_hits_total", "Prompt blocks found in the prefix cache.", e->prefix_hits);
        counter(o, "thaw_prefix_cache_misses_total", "Prompt blocks not found in the prefix cache.", e->prefix_misses);
        counter(o, "thaw_preemptions_total", "Sequences preempted for lack of KV blocks.", e->preemptions);
        counter(o, "thaw_engine_requests_finished_total", "Requests the engine finished.", e->requests_finished);
    }
    const rt_startup *s = g->startup;
    if (s) {
        rt_buf_puts(o, "# HELP thaw_startup_seconds Cold start: phase durations, and time since `thaw serve` began "
                       "for listen and ready.\n# TYPE thaw_startup_seconds gauge\n");
        rt_buf_printf(o, "thaw_startup_seconds{phase=\"listen\"} %.6f\n", s->listen_s);
        if (s->ready_s > 0)
            rt_buf_printf(o, "thaw_startup_seconds{phase=\"ready\"} %.6f\n", s->ready_s);
        if (s->have_load) {
            const eng_load_report *l = &s->load;
            rt_buf_printf(o,
                          "thaw_startup_seconds{phase=\"model_open\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"snapshot_open\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"backend\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"tokenizer\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"load_total\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"load_read\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"load_decompress\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"load_checksum\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"load_copy\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"engine_create\"} %.6f\n"
                          "thaw_startup_seconds{phase=\"fetch\"} %.6f\n",
                          s->model_open_s, l->open_s, l->backend_s, l->tokenizer_s, l->load.total_s, l->load.read_s,
                          l->load.decompress_s, l->load.checksum_s, l->load.sink_s, s->engine_create_s,
                          s->fetch_s);
            gauge(o, "thaw_startup_load_bytes", "Snapshot bytes read at load.", (double)l->load.bytes_stored);
        }
    }
}
