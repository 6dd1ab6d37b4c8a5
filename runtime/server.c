/* server.c -- `thaw serve`: lifecycle, routing, FC hooks, health, auth, logs.
 *
 * Design notes
 *   States of the model: LOADING -> READY, or LOADING -> FAILED (the reason is kept for
 *   /health and /initialize). Independently, `draining` goes 0 -> 1 once (/pre-stop,
 *   SIGTERM, --idle-exit) and never back: from then on API requests get 503.
 *
 *   In-flight slots: an API request takes one (under `lock`) before it touches the model or
 *   the engine, and gives it back when it is completely over (for a stream, when the HTTP
 *   layer destroys the stream). So drain waits for `inflight` to reach 0, and the model and
 *   engine are destroyed only after the HTTP layer stopped -- no request can hold them then.
 *   A request that arrives while the model loads waits on `cond` for the load (or for a
 *   drain); health checks never wait on anything.
 *
 *   `cond` (CLOCK_MONOTONIC) is signalled on every state change: load finished, drain
 *   started, in-flight count dropped, stop requested. The main thread sleeps on it with a
 *   deadline only when --idle-exit is set; nothing wakes up periodically. A process frozen
 *   (SIGSTOP, FC idle mode) and thawed just carries on: no wait depends on wall-clock time.
 *
 *   Logs: one line per request (not for /health and /metrics, which probes hit constantly),
 *   FC's "FC Invoke Start/End RequestId:" lines around requests that carry x-fc-request-id,
 *   and start/stop lines. No header is ever logged, so FC's credential headers never are.
 */
#include "runtime.h"
#include "server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum model_state { MS_LOADING, MS_READY, MS_FAILED };

struct rt_server {
    const rt_config *cfg;
    rt_metrics *metrics;
    rt_watch *watch;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* under lock */
    int state;                 /* enum model_state */
    char load_error[512];
    int draining, stop_requested, stop_signo, hurry;
    uint32_t inflight, streams;
    double last_activity;
    rt_startup startup;
    /* set once by the load (before state becomes READY), read-only after */
    eng_model *model;
    eng_engine *engine;
    char model_name[128];
    char fingerprint[32];
    uint32_t n_ctx;
    /* lock-free */
    double t0;                 /* `thaw serve` began (monotonic) */
    time_t created;            /* wall-clock start, for /v1/models */
    uint64_t id_base;
    atomic_uint_fast64_t id_counter, seed_counter;
};

/* ======================================================================================
 * Small helpers: time, logs, errors, responses
 * ====================================================================================== */
double rt_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void rt_log(const char *fmt, ...)
{
    char line[8192];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ thaw: ", ts.tv_nsec / 1000000);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    n += (size_t)k < sizeof line - n - 1 ? (size_t)k : sizeof line - n - 2;
    line[n++] = '\n';
    /* one write(2): lines from concurrent requests never interleave */
    for (size_t off = 0; off < n;) {
        ssize_t w = write(2, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}

void rt_error_set(rt_error *e, int status, const char *type, const char *code, const char *param, const char *fmt,
                  ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

void rt_response_json(rt_response *r, int status, rt_buf *b)
{
    free(r->body);
    r->status = status;
    r->content_type = "application/json";
    r->body = rt_buf_take(b, &r->body_len);
    if (!r->body) { /* out of memory: a static-sized fallback still goes out */
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        r->status = 500;
        r->body = strdup(oom);
        r->body_len = r->body ? sizeof oom - 1 : 0;
    }
}

void rt_response_error(rt_response *r, const rt_error *e)
{
    rt_buf b = {0};
    rt_buf_puts(&b, "{\"error\":{\"message\":");
    rt_buf_json_str(&b, e->message, strlen(e->message));
    rt_buf_puts(&b, ",\"type\":");
    rt_buf_json_str(&b, e->type, strlen(e->type));
    rt_buf_puts(&b, ",\"param\":");
    if (e->param[0])
        rt_buf_json_str(&b, e->param, strlen(e->param));
    else
        rt_buf_puts(&b, "null");
    rt_buf_puts(&b, ",\"code\":");
    if (e->code)
        rt_buf_json_str(&b, e->code, strlen(e->code));
    else
        rt_buf_puts(&b, "null");
    rt_buf_puts(&b, "}}");
    rt_response_json(r, e->status, &b);
}

static void respond_error(rt_response *r, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void respond_error(rt_response *r, int status, const char *type, const char *code, const char *fmt, ...)
{
    rt_error e = {.status = status, .type = type, .code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    rt_response_error(r, &e);
}

void rt_response_deinit(rt_response *r)
{
    free(r->body);
    r->body = NULL;
    rt_stream_destroy(r->stream);
    r->stream = NULL;
}

/* ======================================================================================
 * Creation, loading, destruction
 * ====================================================================================== */
const rt_config *rt_server_config(const rt_server *s) { return s->cfg; }

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

int rt_server_create(const rt_config *cfg, rt_server **out)
{
    rt_server *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->cfg = cfg;
    s->t0 = rt_now_s();
    s->created = time(NULL);
    s->last_activity = s->t0;
    if (getrandom(&s->id_base, sizeof s->id_base, GRND_NONBLOCK) != sizeof s->id_base)
        s->id_base = splitmix64((uint64_t)s->created ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(s->t0 * 1e9));
    atomic_init(&s->id_counter, 0);
    atomic_init(&s->seed_counter, 0);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rt_metrics_create(&s->metrics) || rt_watch_create(&s->watch)) {
        rt_server_destroy(s);
        return -1;
    }
    *out = s;
    return 0;
}

void rt_server_set_listen_time(rt_server *s, double listen_s)
{
    pthread_mutex_lock(&s->lock);
    s->startup.listen_s = listen_s;
    pthread_mutex_unlock(&s->lock);
}

static void make_fingerprint(rt_server *s)
{
    /* FNV-1a over what determines outputs: the model, its shape, the backend */
    const snap_config *c = eng_model_config(s->model);
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)c;
    for (size_t i = 0; i < sizeof *c; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    for (const char *b = eng_model_backend(s->model); b && *b; b++)
        h = (h ^ (unsigned char)*b) * 0x100000001b3ull;
    snprintf(s->fingerprint, sizeof s->fingerprint, "fp_%010llx", (unsigned long long)(h & 0xFFFFFFFFFFull));
}

int rt_server_load(rt_server *s, char *err, size_t err_cap)
{
    const rt_config *c = s->cfg;
    eng_err ee = {{0}};
    eng_model_opts mo = {.device = c->device,
                         .n_threads = c->threads,
                         .chat_template = c->chat_template,
                         .n_ctx = c->ctx,
                         .max_batch_tokens = c->max_batch_tokens,
                         .kv_mem_bytes = c->kv_mem_bytes,
                         .gpu_mem_fraction = c->gpu_mem_fraction};
    eng_engine_opts eo = {.max_seqs = c->max_seqs, .max_batch_tokens = c->max_batch_tokens, .max_queue = c->max_queue};
    eng_load_report rep;
    memset(&rep, 0, sizeof rep);
    eng_model *m = NULL;
    eng_engine *e = NULL;
    double t = rt_now_s(), fetch_s = 0;
    char path[4096];
    int fd = -1;
    snprintf(path, sizeof path, "%s", c->model);
    if (snap_is_remote(c->model)) { /* download first (memfd or --cache-dir), then load as a file */
        snap_fetch_opts fo = {.oss_endpoint = c->oss_endpoint, .cache_dir = c->cache_dir, .verbose = 1};
        snap_err se = {{0}};
        if (snap_fetch(c->model, &fo, path, sizeof path, &fd, NULL, &se)) {
            snprintf(ee.msg, sizeof ee.msg, "%s", se.msg);
            goto fail;
        }
        fetch_s = rt_now_s() - t;
        t = rt_now_s();
    }
    int rc = eng_model_open(path, &mo, &m, &rep, &ee);
    if (fd >= 0)
        close(fd); /* the open snapshot keeps the memory alive */
    if (rc)
        goto fail;
    double t_open = rt_now_s();
    if (eng_engine_create(m, &eo, &e, &ee))
        goto fail;
    double t_engine = rt_now_s();

    s->model = m;
    s->engine = e;
    s->n_ctx = eng_model_n_ctx(m);
    snprintf(s->model_name, sizeof s->model_name, "%s", c->served_model_name ? c->served_model_name : eng_model_name(m));
    make_fingerprint(s);
    pthread_mutex_lock(&s->lock);
    s->startup.load = rep;
    s->startup.have_load = 1;
    s->startup.fetch_s = fetch_s;
    s->startup.model_open_s = t_open - t;
    s->startup.engine_create_s = t_engine - t_open;
    s->startup.ready_s = t_engine - s->t0;
    s->state = MS_READY;
    if (s->draining)
        eng_engine_drain(e);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    rt_log("model %s ready: %s backend, context %u, %u KV blocks; load %.1f ms (snapshot %.1f ms), engine %.1f ms",
           s->model_name, eng_model_backend(m), s->n_ctx, eng_model_kv_blocks(m), (t_open - t) * 1e3,
           rep.load.total_s * 1e3, (t_engine - t_open) * 1e3);
    return 0;
fail:
    eng_engine_destroy(e);
    eng_model_close(m);
    pthread_mutex_lock(&s->lock);
    snprintf(s->load_error, sizeof s->load_error, "%s", ee.msg[0] ? ee.msg : "cannot load the model");
    s->state = MS_FAILED;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    snprintf(err, err_cap, "%s", s->load_error);
    return -1;
}

void rt_server_destroy(rt_server *s)
{
    if (!s)
        return;
    eng_engine_destroy(s->engine);
    eng_model_close(s->model);
    rt_watch_destroy(s->watch);
    rt_metrics_destroy(s->metrics);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ======================================================================================
 * In-flight slots, streams, draining, stopping
 * ====================================================================================== */
/* Wait for the model (never for long: the load is the cold start), then take a slot.
 * Returns 0, or fills resp with the 503 that explains why not. */
static int inflight_acquire(rt_server *s, rt_reqlog *lg, rt_response *resp)
{
    pthread_mutex_lock(&s->lock);
    s->last_activity = rt_now_s();
    while (s->state == MS_LOADING && !s->draining)
        pthread_cond_wait(&s->cond, &s->lock);
    int ok = 0;
    if (s->draining) {
        respond_error(resp, 503, "service_unavailable", "shutting_down",
                      "the server is shutting down and admits no new requests");
        resp->retry_after_s = 1;
    } else if (s->state == MS_FAILED) {
        respond_error(resp, 503, "service_unavailable", "model_load_failed", "the model failed to load: %s",
                      s->load_error);
    } else {
        s->inflight++;
        lg->counted_inflight = 1;
        ok = 1;
    }
    pthread_mutex_unlock(&s->lock);
    return ok ? 0 : -1;
}

int rt_server_stream_acquire(rt_server *s)
{
    pthread_mutex_lock(&s->lock);
    int ok = s->streams < s->cfg->max_streams;
    if (ok)
        s->streams++;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void rt_server_stream_release(rt_server *s)
{
    pthread_mutex_lock(&s->lock);
    s->streams--;
    pthread_mutex_unlock(&s->lock);
}

uint64_t rt_server_next_seed(rt_server *s)
{
    return splitmix64(s->id_base ^ (atomic_fetch_add(&s->seed_counter, 1) * 0x9E3779B97F4A7C15ull));
}

static int wait_until(rt_server *s, double deadline)
{
    double d = deadline;
    struct timespec ts = {.tv_sec = (time_t)d, .tv_nsec = (long)((d - (double)(time_t)d) * 1e9)};
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

int rt_server_drain(rt_server *s, double timeout_s)
{
    pthread_mutex_lock(&s->lock);
    s->draining = 1;
    eng_engine *e = s->state == MS_READY ? s->engine : NULL;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (e) /* (a load finishing meanwhile drains its own engine: it sees `draining`) */
        eng_engine_drain(e);
    pthread_mutex_lock(&s->lock);
    double deadline = rt_now_s() + timeout_s;
    while (s->inflight > 0 && !s->hurry && rt_now_s() < deadline)
        wait_until(s, deadline);
    int idle = s->inflight == 0;
    pthread_mutex_unlock(&s->lock);
    return idle;
}

void rt_server_cancel_all(rt_server *s) { rt_watch_cancel_all(s->watch); }

void rt_server_request_stop(rt_server *s, int signo)
{
    pthread_mutex_lock(&s->lock);
    if (s->stop_requested)
        s->hurry = 1; /* a second signal: skip what is left of the grace period */
    s->stop_requested = 1;
    s->stop_signo = signo;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int rt_server_wait_stop(rt_server *s)
{
    int idle = 0;
    pthread_mutex_lock(&s->lock);
    while (!s->stop_requested) {
        if (s->cfg->idle_exit_s > 0 && s->inflight == 0) {
            double deadline = s->last_activity + s->cfg->idle_exit_s;
            if (rt_now_s() >= deadline) {
                idle = 1;
                break;
            }
            wait_until(s, deadline);
        } else {
            pthread_cond_wait(&s->cond, &s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return idle;
}

void rt_server_request_done(rt_server *s, rt_reqlog *lg, int status)
{
    double now = rt_now_s(), dur = now - lg->t_start;
    rt_metrics_request(s->metrics, lg->route, status, dur, lg->ttft_s, lg->prompt_tokens, lg->completion_tokens);
    if (lg->route != RT_ROUTE_HEALTH && lg->route != RT_ROUTE_METRICS) {
        char ttft[32] = "-";
        if (lg->ttft_s >= 0)
            snprintf(ttft, sizeof ttft, "%.1f", lg->ttft_s * 1e3);
        rt_log("request id=%s route=%s status=%d prompt_tokens=%u completion_tokens=%u cached_tokens=%u "
               "ttft_ms=%s duration_ms=%.1f%s%s",
               lg->id, lg->path, status, lg->prompt_tokens, lg->completion_tokens, lg->cached_tokens, ttft, dur * 1e3,
               lg->finish ? " finish=" : "", lg->finish ? lg->finish : "");
    }
    if (lg->fc_id) {
        const char *what = lg->route == RT_ROUTE_INITIALIZE ? "Initialize"
                           : lg->route == RT_ROUTE_PRE_STOP ? "PreStop"
                                                            : "Invoke";
        rt_log("FC %s End RequestId: %s", what, lg->id);
    }
    if (lg->counted_inflight) {
        lg->counted_inflight = 0;
        pthread_mutex_lock(&s->lock);
        s->inflight--;
        s->last_activity = now;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
}

/* ======================================================================================
 * Routes
 * ====================================================================================== */
enum { M_GET = 1, M_POST = 2 };

static const struct route {
    const char *path;
    int route;
    int methods;
    const char *allow;
} routes[] = {
    {"/health", RT_ROUTE_HEALTH, M_GET, "GET, HEAD"},
    {"/healthz", RT_ROUTE_HEALTH, M_GET, "GET, HEAD"},
    {"/", RT_ROUTE_HEALTH, M_GET, "GET, HEAD"},
    {"/metrics", RT_ROUTE_METRICS, M_GET, "GET, HEAD"},
    {"/v1/models", RT_ROUTE_MODELS, M_GET, "GET, HEAD"},
    {"/v1/chat/completions", RT_ROUTE_CHAT, M_POST, "POST"},
    {"/v1/completions", RT_ROUTE_COMPLETIONS, M_POST, "POST"},
    {"/tokenize", RT_ROUTE_TOKENIZE, M_POST, "POST"},
    {"/detokenize", RT_ROUTE_DETOKENIZE, M_POST, "POST"},
    {"/invoke", RT_ROUTE_INVOKE, M_POST, "POST"},
    {"/initialize", RT_ROUTE_INITIALIZE, M_POST | M_GET, "GET, HEAD, POST"},
    {"/pre-stop", RT_ROUTE_PRE_STOP, M_GET | M_POST, "GET, HEAD, POST"},
    {"/pre-freeze", RT_ROUTE_PRE_FREEZE, M_GET | M_POST, "GET, HEAD, POST"},
};

static void make_id(rt_server *s, const char *fc_id, rt_reqlog *lg)
{
    lg->fc_id = 0;
    if (fc_id && *fc_id) {
        /* keep what is safe in logs, headers and JSON ids */
        size_t n = 0;
        for (const char *p = fc_id; *p && n < 64; p++) {
            char ch = *p;
            int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                     ch == '_' || ch == '.';
            lg->id[n++] = ok ? ch : '_';
        }
        lg->id[n] = 0;
        lg->fc_id = 1;
        return;
    }
    uint64_t k = atomic_fetch_add(&s->id_counter, 1);
    snprintf(lg->id, sizeof lg->id, "%016llx", (unsigned long long)splitmix64(s->id_base + k));
}

/* Constant time in the length of the key: whether and where the presented token differs
 * is not observable. */
static int key_matches(const char *got, size_t n_got, const char *key)
{
    size_t n_key = strlen(key);
    volatile unsigned char diff = (unsigned char)(n_got != n_key);
    for (size_t i = 0; i < n_key; i++)
        diff |= (unsigned char)((i < n_got ? (unsigned char)got[i] : 0) ^ (unsigned char)key[i]);
    return diff == 0;
}

static int authorized(const rt_server *s, const rt_request *req, rt_response *resp)
{
    const char *key = s->cfg->api_key;
    if (!key)
        return 1;
    const char *h = req->authorization;
    if (!h || !*h) {
        respond_error(resp, 401, "invalid_request_error", "invalid_api_key",
                      "missing API key: send the header 'Authorization: Bearer YOUR_KEY'");
        return 0;
    }
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer ", 7) != 0 || !key_matches(h + 7, strlen(h + 7), key)) {
        respond_error(resp, 401, "invalid_request_error", "invalid_api_key", "incorrect API key provided");
        return 0;
    }
    return 1;
}

static void handle_health(rt_server *s, rt_response *resp)
{
    rt_buf b = {0};
    pthread_mutex_lock(&s->lock);
    int st = s->state, draining = s->draining;
    if (st == MS_FAILED) {
        rt_buf_puts(&b, "{\"status\":\"error\",\"error\":");
        rt_buf_json_str(&b, s->load_error, strlen(s->load_error));
        rt_buf_puts(&b, "}");
    }
    pthread_mutex_unlock(&s->lock);
    if (st == MS_FAILED) {
        rt_response_json(resp, 503, &b);
    } else if (draining) {
        rt_buf_puts(&b, "{\"status\":\"draining\"}");
        rt_response_json(resp, 503, &b);
    } else if (st == MS_LOADING) {
        rt_buf_puts(&b, "{\"status\":\"loading\"}");
        rt_response_json(resp, 503, &b);
    } else {
        rt_buf_puts(&b, "{\"status\":\"ok\",\"model\":");
        rt_buf_json_str(&b, s->model_name, strlen(s->model_name));
        rt_buf_puts(&b, "}");
        rt_response_json(resp, 200, &b);
    }
}

static void handle_metrics(rt_server *s, rt_response *resp)
{
    rt_buf b = {0};
    eng_stats st;
    rt_startup su;
    rt_gauges g = {0};
    pthread_mutex_lock(&s->lock);
    g.ready = s->state == MS_READY;
    g.draining = s->draining;
    g.inflight = s->inflight;
    g.streams = s->streams;
    su = s->startup;
    eng_engine *e = s->state == MS_READY ? s->engine : NULL;
    pthread_mutex_unlock(&s->lock);
    if (e) {
        eng_engine_stats(e, &st);
        g.engine = &st;
    }
    g.startup = &su;
    rt_metrics_render(s->metrics, &g, &b);
    rt_response_json(resp, 200, &b);
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
}

static void model_object(rt_server *s, rt_buf *b)
{
    rt_buf_puts(b, "{\"id\":");
    rt_buf_json_str(b, s->model_name, strlen(s->model_name));
    rt_buf_printf(b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"thaw\",\"root\":", (long long)s->created);
    rt_buf_json_str(b, s->model_name, strlen(s->model_name));
    rt_buf_printf(b, ",\"parent\":null,\"max_model_len\":%u}", s->n_ctx);
}

static void handle_initialize(rt_server *s, rt_response *resp)
{
    pthread_mutex_lock(&s->lock);
    while (s->state == MS_LOADING)
        pthread_cond_wait(&s->cond, &s->lock);
    int st = s->state;
    double ready = s->startup.ready_s;
    char why[512];
    snprintf(why, sizeof why, "%s", s->load_error);
    pthread_mutex_unlock(&s->lock);
    if (st == MS_FAILED) {
        respond_error(resp, 500, "server_error", "model_load_failed", "the model failed to load: %s", why);
        return;
    }
    rt_buf b = {0};
    rt_buf_puts(&b, "{\"status\":\"ok\",\"model\":");
    rt_buf_json_str(&b, s->model_name, strlen(s->model_name));
    rt_buf_printf(&b, ",\"ready_seconds\":%.6f}", ready);
    rt_response_json(resp, 200, &b);
}

static void handle_pre_stop(rt_server *s, rt_response *resp)
{
    int idle = rt_server_drain(s, s->cfg->grace_s);
    pthread_mutex_lock(&s->lock);
    uint32_t left = s->inflight;
    pthread_mutex_unlock(&s->lock);
    rt_buf b = {0};
    rt_buf_printf(&b, "{\"status\":\"%s\",\"inflight\":%u}", idle ? "drained" : "grace period over", left);
    rt_response_json(resp, 200, &b);
}

static void api_ctx(rt_server *s, rt_api_ctx *ctx)
{
    *ctx = (rt_api_ctx){.srv = s,
                        .cfg = s->cfg,
                        .model = s->model,
                        .engine = s->engine,
                        .model_name = s->model_name,
                        .fingerprint = s->fingerprint,
                        .watch = s->watch};
}

/* The route for a path (NULL if none); *by_id for /v1/models/{id}. */
static const struct route *find_route(const char *path, int *by_id)
{
    *by_id = 0;
    if (!path)
        return NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(path, routes[i].path))
            return &routes[i];
    if (!strncmp(path, "/v1/models/", 11) && path[11]) {
        *by_id = 1;
        return &routes[4];
    }
    return NULL;
}

static void reqlog_init(rt_server *s, const rt_request *req, rt_reqlog *lg, rt_response *resp)
{
    memset(resp, 0, sizeof *resp);
    *lg = (rt_reqlog){.t_start = rt_now_s(), .ttft_s = -1, .route = RT_ROUTE_OTHER, .path = "other"};
    make_id(s, req->request_id, lg);
    snprintf(resp->request_id, sizeof resp->request_id, "%s", lg->id);
}

void rt_server_reject_body(rt_server *s, const rt_request *req, uint64_t max_body, rt_response *resp)
{
    rt_reqlog lg;
    reqlog_init(s, req, &lg, resp);
    lg.fc_id = 0;
    int by_id;
    const struct route *r = find_route(req->path, &by_id);
    if (r)
        lg.route = r->route, lg.path = r->path;
    respond_error(resp, 413, "invalid_request_error", "request_too_large",
                  "the request body is larger than %llu bytes (--max-body)", (unsigned long long)max_body);
    resp->fc_status = lg.route == RT_ROUTE_INVOKE;
    rt_server_request_done(s, &lg, 413);
}

void rt_server_handle(rt_server *s, const rt_request *req, rt_response *resp)
{
    rt_reqlog lg;
    reqlog_init(s, req, &lg, resp);
    int lg_taken = 0;

    const char *method = req->method ? req->method : "";
    int m = !strcmp(method, "GET") || !strcmp(method, "HEAD") ? M_GET : !strcmp(method, "POST") ? M_POST : 0;
    int model_by_id;
    const struct route *r = find_route(req->path, &model_by_id);
    if (!r) {
        respond_error(resp, 404, "invalid_request_error", "not_found", "no route for %s %.200s", method,
                      req->path ? req->path : "");
        goto done;
    }
    lg.route = r->route;
    lg.path = r->path;
    if (!(r->methods & m)) {
        respond_error(resp, 405, "invalid_request_error", "method_not_allowed", "%s does not accept %.20s (use %s)",
                      r->path, method, r->allow);
        resp->allow = r->allow;
        goto done;
    }
    int fc_logged = lg.fc_id && r->route != RT_ROUTE_HEALTH && r->route != RT_ROUTE_METRICS;
    if (fc_logged)
        rt_log("FC %s Start RequestId: %s",
               r->route == RT_ROUTE_INITIALIZE ? "Initialize"
               : r->route == RT_ROUTE_PRE_STOP ? "PreStop"
                                               : "Invoke",
               lg.id);
    else
        lg.fc_id = 0;

    switch (r->route) {
    case RT_ROUTE_HEALTH: handle_health(s, resp); goto done;
    case RT_ROUTE_METRICS: handle_metrics(s, resp); goto done;
    case RT_ROUTE_PRE_FREEZE: {
        rt_buf b = {0};
        rt_buf_puts(&b, "{\"status\":\"ok\"}");
        rt_response_json(resp, 200, &b);
        goto done;
    }
    case RT_ROUTE_INITIALIZE: handle_initialize(s, resp); goto done;
    case RT_ROUTE_PRE_STOP: handle_pre_stop(s, resp); goto done;
    default: break;
    }

    /* the API: authentication (FC's own API invocations of /invoke are authenticated by FC;
     * the same path reached through an HTTP trigger is not; outside FC the header is only a
     * client's word), then the model */
    int open_invoke = r->route == RT_ROUTE_INVOKE && s->cfg->under_fc && req->fc_control_path &&
                      !strcmp(req->fc_control_path, "/invoke");
    if (!open_invoke && !authorized(s, req, resp))
        goto done;
    if (inflight_acquire(s, &lg, resp))
        goto done;
    rt_api_ctx ctx;
    api_ctx(s, &ctx);
    switch (r->route) {
    case RT_ROUTE_MODELS: {
        rt_buf b = {0};
        if (model_by_id) {
            if (strcmp(req->path + 11, s->model_name) != 0) {
                respond_error(resp, 404, "invalid_request_error", "model_not_found",
                              "the model '%.200s' does not exist; this server serves '%s'", req->path + 11,
                              s->model_name);
                break;
            }
            model_object(s, &b);
        } else {
            rt_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
            model_object(s, &b);
            rt_buf_puts(&b, "]}");
        }
        rt_response_json(resp, 200, &b);
        break;
    }
    case RT_ROUTE_CHAT: rt_api_generate(&ctx, req, 1, &lg, resp, &lg_taken); break;
    case RT_ROUTE_COMPLETIONS: rt_api_generate(&ctx, req, 0, &lg, resp, &lg_taken); break;
    case RT_ROUTE_TOKENIZE: rt_api_tokenize(&ctx, req, resp); break;
    case RT_ROUTE_DETOKENIZE: rt_api_detokenize(&ctx, req, resp); break;
    case RT_ROUTE_INVOKE: {
        rt_error e = {0};
        int kind = rt_api_invoke_kind(req, &e);
        if (kind < 0)
            rt_response_error(resp, &e);
        else
            rt_api_generate(&ctx, req, kind, &lg, resp, &lg_taken);
        break;
    }
    }
done:
    if (!resp->body && !resp->stream)
        respond_error(resp, 500, "server_error", NULL, "no response");
    /* FC reads an /invoke result from x-fc-status (absent counts as success): always set it */
    if (lg.route == RT_ROUTE_INVOKE)
        resp->fc_status = 1;
    if (!lg_taken)
        rt_server_request_done(s, &lg, resp->status);
}

/* ======================================================================================
 * `thaw serve`
 * ====================================================================================== */
typedef struct sig_ctx {
    rt_server *srv;
    sigset_t set;
} sig_ctx;

static void *signal_main(void *arg)
{
    sig_ctx *c = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&c->set, &sig) == 0)
            rt_server_request_stop(c->srv, sig);
    }
    return NULL;
}

static void *load_main(void *arg)
{
    char err[512];
    rt_server *s = arg;
    if (rt_server_load(s, err, sizeof err))
        rt_log("model load failed: %s", err);
    return NULL;
}

int rt_cmd_serve(int argc, char **argv)
{
    rt_config cfg;
    char err[512];
    int rc = rt_config_parse(&cfg, argc, argv, environ, err, sizeof err);
    if (rc == RT_CONFIG_HELP) {
        rt_config_usage(stdout);
        return 0;
    }
    if (rc != RT_CONFIG_OK) {
        fprintf(stderr, "thaw serve: %s\n", err);
        return 2;
    }
    /* every thread created from here on inherits the mask: only signal_main takes them */
    static sig_ctx sc;
    sigemptyset(&sc.set);
    sigaddset(&sc.set, SIGTERM);
    sigaddset(&sc.set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
    signal(SIGPIPE, SIG_IGN);

    rt_server *s = NULL;
    rt_http *h = NULL;
    pthread_t loader, sigt;
    int have_loader = 0;
    if (rt_server_create(&cfg, &s)) {
        fprintf(stderr, "thaw serve: out of memory\n");
        return 1;
    }
    if (!cfg.lazy && rt_server_load(s, err, sizeof err)) {
        fprintf(stderr, "thaw serve: %s\n", err);
        rt_server_destroy(s);
        return 1;
    }
    uint32_t port = 0;
    if (rt_http_start(s, &cfg, &h, &port, err, sizeof err)) {
        fprintf(stderr, "thaw serve: %s\n", err);
        rt_server_destroy(s);
        return 1;
    }
    double t_listen = rt_now_s();
    rt_server_set_listen_time(s, t_listen - s->t0);
    rt_log("listening on %s:%u (model %s, %s%s, up to %u connections)", cfg.host, port, cfg.model,
           cfg.lazy ? "loading in the background" : "loaded", cfg.api_key ? ", API key required" : "",
           cfg.max_connections);
    if (cfg.lazy) {
        if (pthread_create(&loader, NULL, load_main, s) == 0)
            have_loader = 1;
        else
            rt_server_load(s, err, sizeof err); /* no thread to spare: load here */
    }
    sc.srv = s;
    if (pthread_create(&sigt, NULL, signal_main, &sc) == 0)
        pthread_detach(sigt);

    int idle = rt_server_wait_stop(s);
    pthread_mutex_lock(&s->lock);
    int signo = s->stop_signo;
    uint32_t inflight = s->inflight;
    pthread_mutex_unlock(&s->lock);
    if (idle)
        rt_log("no request for %g s (--idle-exit): stopping", cfg.idle_exit_s);
    else
        rt_log("%s: draining %u in-flight request%s (grace %g s)", signo == SIGINT ? "SIGINT" : "SIGTERM", inflight,
               inflight == 1 ? "" : "s", cfg.grace_s);
    if (!rt_server_drain(s, cfg.grace_s)) {
        rt_log("grace period over: cancelling what is left");
        rt_server_cancel_all(s);
    }
    rt_http_stop(h);
    if (have_loader)
        pthread_join(loader, NULL);
    rt_server_destroy(s);
    rt_log("stopped");
    return 0;
}
