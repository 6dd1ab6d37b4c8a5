/* server.h -- `thaw serve` internals shared by runtime/config.c, buf.c, metrics.c, watch.c,
 * server.c, api.c and http.c (the only file that includes microhttpd.h).
 *
 * The shape (ggml's server habit): the HTTP layer turns each request into a plain rt_request,
 * calls rt_server_handle, and turns the rt_response it gets back into bytes on the wire.
 * Handlers never see a socket, so tests/test_api.c drives them with structs alone. A
 * streaming response carries an rt_stream that the HTTP layer pulls bytes from (blocking)
 * until it ends; destroying the stream releases everything the request held.
 *
 * Threads: one HTTP thread per connection (bounded by --max-connections) runs the handler
 * and may block in it (on the model load, on the engine's events). The engine has its own
 * thread; the model load runs on one more (--lazy); a watcher thread (watch.c) notices
 * clients that hang up and cancels their engine requests; one thread waits for signals.
 * Nothing polls: every wait is on a condition variable, poll() without timeout, or sigwait.
 */
#ifndef THAW_RUNTIME_SERVER_H
#define THAW_RUNTIME_SERVER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "engine.h"

/* ======================================================================================
 * Growable byte buffer with JSON writers (runtime/buf.c). An allocation failure sets `oom`
 * and turns later appends into no-ops, so a writer checks once at the end.
 * ====================================================================================== */
typedef struct rt_buf {
    char *data;                /* malloc'd, NUL-terminated when len > 0; owned */
    size_t len, cap;
    int oom;
} rt_buf;

void rt_buf_free(rt_buf *b);   /* frees data, leaves an empty buffer */
void rt_buf_put(rt_buf *b, const void *p, size_t n);
void rt_buf_puts(rt_buf *b, const char *s);
void rt_buf_printf(rt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal (quotes included). Invalid UTF-8 becomes U+FFFD, so whatever bytes
 * come in, the output is valid JSON. */
void rt_buf_json_str(rt_buf *b, const char *s, size_t n);
/* A JSON number; NaN becomes null and -inf/+inf the largest finite float of that sign. */
void rt_buf_json_num(rt_buf *b, double v);
/* Take the data out (caller frees with free()); the buffer is left empty. NULL after oom. */
char *rt_buf_take(rt_buf *b, size_t *len);

/* Is s[0..n) valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF)? On
 * failure *bad_at (may be NULL) gets the offset of the first bad byte. */
int rt_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* ======================================================================================
 * Configuration (runtime/config.c): flags, each also a THAW_* environment variable (flags
 * win); FC_CUSTOM_LISTEN_PORT and FC_FUNCTION_NAME are honoured as FC.md says.
 * ====================================================================================== */
typedef struct rt_config {
    const char *model;              /* snapshot: a path, an http(s):// URL or oss://BUCKET/KEY */
    const char *cache_dir;          /* remote snapshots: keep a verified copy here (NULL = memory) */
    const char *oss_endpoint;       /* NULL = $THAW_OSS_ENDPOINT or the FC region's */
    const char *host;               /* bind address, default 0.0.0.0 */
    uint32_t port;                  /* 0 = any free port (printed at start) */
    const char *served_model_name;  /* NULL = the snapshot's name */
    const char *api_key;            /* NULL = no authentication */
    int lazy;                       /* 1: listen first, load in the background */
    int under_fc;                   /* FC_FUNCTION_NAME is set: FC's x-fc-* headers are FC's */
    uint64_t max_body_bytes;
    uint32_t max_tokens;            /* cap on a request's max_tokens; 0 = the context */
    uint32_t max_streams;           /* concurrent streaming responses */
    uint32_t max_connections;       /* HTTP connections (= HTTP threads) */
    uint32_t conn_timeout_s;        /* idle keep-alive connections are closed after this */
    double grace_s;                 /* drain time for in-flight requests on stop */
    double idle_exit_s;             /* 0 = never */
    /* passed to the engine */
    const char *device, *chat_template;
    uint32_t threads, ctx, max_seqs, max_batch_tokens, max_queue;
    uint64_t kv_mem_bytes;
    double gpu_mem_fraction;        /* 0 = the CUDA backend's 0.9 */
} rt_config;

enum { RT_CONFIG_OK = 0, RT_CONFIG_HELP = 1, RT_CONFIG_ERROR = -1 };
/* Fill c from argv (after the command name) and the environment `env` (NULL-terminated
 * "K=V" strings; pass environ). Returns RT_CONFIG_OK, RT_CONFIG_HELP (--help: nothing else
 * done) or RT_CONFIG_ERROR with one line in err. Strings point into argv/env. */
int rt_config_parse(rt_config *c, int argc, char **argv, char **env, char *err, size_t err_cap);
void rt_config_usage(FILE *to);

/* ======================================================================================
 * Metrics (runtime/metrics.c): counters and histograms, rendered as Prometheus text.
 * Thread-safe.
 * ====================================================================================== */
enum rt_route {
    RT_ROUTE_OTHER = 0,
    RT_ROUTE_HEALTH,
    RT_ROUTE_METRICS,
    RT_ROUTE_MODELS,
    RT_ROUTE_CHAT,
    RT_ROUTE_COMPLETIONS,
    RT_ROUTE_TOKENIZE,
    RT_ROUTE_DETOKENIZE,
    RT_ROUTE_INVOKE,
    RT_ROUTE_INITIALIZE,
    RT_ROUTE_PRE_STOP,
    RT_ROUTE_PRE_FREEZE,
    RT_ROUTE_COUNT
};
const char *rt_route_name(int route);

typedef struct rt_metrics rt_metrics;
int rt_metrics_create(rt_metrics **out);
void rt_metrics_destroy(rt_metrics *m); /* accepts NULL */
/* One finished request. ttft_s < 0: no token (non-generating route or none produced). */
void rt_metrics_request(rt_metrics *m, int route, int status, double duration_s, double ttft_s,
                        uint32_t prompt_tokens, uint32_t generated_tokens);

/* Start-up phases (seconds since `thaw serve` began, or durations), for /metrics. */
typedef struct rt_startup {
    double listen_s;                /* serve start -> port open */
    double ready_s;                 /* serve start -> model and engine ready (0 until then) */
    double fetch_s;                 /* download of a remote snapshot (0 for a local file) */
    double model_open_s, engine_create_s;
    eng_load_report load;           /* the model's own breakdown */
    int have_load;
} rt_startup;

typedef struct rt_gauges {
    int ready;                      /* model loaded and serving */
    int draining;
    uint32_t inflight, streams;
    const eng_stats *engine;        /* NULL before the engine exists */
    const rt_startup *startup;
} rt_gauges;
void rt_metrics_render(rt_metrics *m, const rt_gauges *g, rt_buf *out);

/* ======================================================================================
 * Hang-up watcher (runtime/watch.c): cancels the engine requests of a connection whose
 * client went away, at once, even while its HTTP thread is blocked waiting for a token.
 * One thread in poll() on the watched sockets (POLLRDHUP) and an eventfd; no timeouts.
 * ====================================================================================== */
#define RT_MAX_CHOICES 16          /* n x prompts in one request */

typedef struct rt_watch rt_watch;
int rt_watch_create(rt_watch **out);
void rt_watch_destroy(rt_watch *w); /* accepts NULL; cancels nothing */
/* Watch fd for a hang-up; on one, cancel reqs[0..n). fd < 0 (no socket): only
 * rt_watch_cancel_all reaches them. Returns a slot id for rt_watch_remove, or -1 (out of
 * memory: not watched). The requests must stay unreleased until removed. */
int rt_watch_add(rt_watch *w, int fd, eng_request *const *reqs, uint32_t n);
/* After this returns the watcher will not touch the slot's requests again. -1 is a no-op. */
void rt_watch_remove(rt_watch *w, int slot);
/* Cancel every watched request (shutdown past its grace period). */
void rt_watch_cancel_all(rt_watch *w);

/* ======================================================================================
 * The server (runtime/server.c) and the OpenAI handlers (runtime/api.c).
 * ====================================================================================== */
typedef struct rt_server rt_server;

/* A request as the HTTP layer hands it over. All pointers stay valid during the handler
 * call (not after: a stream copies what it keeps). Header values are NULL when absent. */
typedef struct rt_request {
    const char *method;             /* "GET", "POST", "HEAD", ... */
    const char *path;               /* without the query string */
    const char *body;               /* body_len bytes, NUL-terminated; "" when none */
    size_t body_len;
    const char *request_id;         /* x-fc-request-id */
    const char *authorization;
    const char *fc_control_path;    /* x-fc-control-path */
    int fd;                         /* the client's socket (for the hang-up watcher), or -1 */
} rt_request;

typedef struct rt_stream rt_stream;

/* What the handler answers. body is malloc'd and owned by the response until the HTTP
 * layer takes it (then the HTTP layer frees it); stream likewise (rt_stream_destroy). */
typedef struct rt_response {
    int status;
    const char *content_type;       /* static string */
    char *body;
    size_t body_len;
    rt_stream *stream;              /* non-NULL: the body comes from rt_stream_read */
    int retry_after_s;              /* > 0: a Retry-After header */
    const char *allow;              /* 405: the Allow header (static string) */
    int fc_status;                  /* 1: an x-fc-status header (the /invoke contract) */
    char request_id[72];            /* x-request-id header ("" = none) */
} rt_response;

void rt_response_deinit(rt_response *r); /* frees body and stream */

/* Pull up to cap bytes of a streaming body; blocks until some are ready. Returns the count
 * (> 0), 0 at the end, or -1 when the stream failed or was cancelled (close the connection).
 * One reader thread per stream. */
ssize_t rt_stream_read(rt_stream *s, char *buf, size_t cap);
/* Finish with a stream (cancels what still runs, logs the request, frees everything). */
void rt_stream_destroy(rt_stream *s); /* accepts NULL */

/* Create the server state (no model yet). cfg must outlive the server. */
int rt_server_create(const rt_config *cfg, rt_server **out);
/* Load the model and start the engine, synchronously (from the load thread, or before
 * listening when not lazy). Returns 0 or -1 with the reason in err (also kept for /health
 * and /initialize). Call once. */
int rt_server_load(rt_server *s, char *err, size_t err_cap);
/* Handle one request; never fails (errors are responses). Thread-safe; may block. */
void rt_server_handle(rt_server *s, const rt_request *req, rt_response *resp);
/* The 413 for a body over max_body (req->body is not there), counted and logged. */
void rt_server_reject_body(rt_server *s, const rt_request *req, uint64_t max_body, rt_response *resp);
/* Stop admitting (new API requests get 503), then wait up to timeout_s for in-flight
 * requests to finish. Returns 1 when none is left. Thread-safe, repeatable. */
int rt_server_drain(rt_server *s, double timeout_s);
/* Cancel every in-flight generation (after the grace period). */
void rt_server_cancel_all(rt_server *s);
/* Block until a stop is requested (rt_server_request_stop) or --idle-exit elapses with no
 * API request. Returns 0 for a stop request, 1 for idle. */
int rt_server_wait_stop(rt_server *s);
/* Ask rt_server_wait_stop to return (a second call cuts the drain's grace short). Not
 * async-signal-safe: called from the sigwait thread. */
void rt_server_request_stop(rt_server *s, int signo);
void rt_server_set_listen_time(rt_server *s, double listen_s);
void rt_server_destroy(rt_server *s);  /* accepts NULL; the HTTP layer must be stopped */
const rt_config *rt_server_config(const rt_server *s);

/* Monotonic seconds. */
double rt_now_s(void);
/* One log line on stderr, prefixed with the UTC time ("2025-01-01T00:00:00.123Z thaw: ..."). */
void rt_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- server.c internals that api.c uses ---------------------------------------------- */
/* An OpenAI error. status 0 = none. */
typedef struct rt_error {
    int status;
    const char *type;               /* "invalid_request_error", "server_error", ... */
    const char *code;               /* NULL or e.g. "context_length_exceeded" */
    char param[64];                 /* "" = null */
    char message[512];
} rt_error;
void rt_error_set(rt_error *e, int status, const char *type, const char *code, const char *param,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error":{...}} as a response (JSON body). */
void rt_response_error(rt_response *r, const rt_error *e);
/* A JSON body (takes b's data). */
void rt_response_json(rt_response *r, int status, rt_buf *b);

/* Per-request bookkeeping: what the log line and the metrics need. */
typedef struct rt_reqlog {
    char id[72];                    /* request id (x-fc-request-id or generated) */
    int fc_id;                      /* the id came from FC: print FC Invoke Start/End */
    int route;
    const char *path;               /* static route name for the log */
    double t_start;
    uint32_t prompt_tokens, completion_tokens, cached_tokens;
    double ttft_s;                  /* < 0: none */
    const char *finish;             /* NULL or "stop", "length", ... */
    int counted_inflight;           /* holds one of the server's in-flight slots */
} rt_reqlog;
/* The request is over: log line, metrics, in-flight slot back. */
void rt_server_request_done(rt_server *s, rt_reqlog *lg, int status);

/* What api.c needs from the server: all valid while the request holds an in-flight slot. */
typedef struct rt_api_ctx {
    rt_server *srv;
    const rt_config *cfg;
    eng_model *model;
    eng_engine *engine;
    const char *model_name;         /* served name */
    const char *fingerprint;        /* system_fingerprint */
    rt_watch *watch;
} rt_api_ctx;

/* Try to take a stream slot (--max-streams); 0 when none is left. */
int rt_server_stream_acquire(rt_server *s);
void rt_server_stream_release(rt_server *s);
/* A fresh seed for a request that gave none. */
uint64_t rt_server_next_seed(rt_server *s);

/* OpenAI handlers (api.c). `chat` picks /v1/chat/completions or /v1/completions. The
 * response may be streaming; then the stream owns lg until it is destroyed (*lg_taken = 1). */
void rt_api_generate(const rt_api_ctx *ctx, const rt_request *req, int chat, rt_reqlog *lg, rt_response *resp,
                     int *lg_taken);
void rt_api_tokenize(const rt_api_ctx *ctx, const rt_request *req, rt_response *resp);
void rt_api_detokenize(const rt_api_ctx *ctx, const rt_request *req, rt_response *resp);
/* Does a JSON object body have "messages" (chat) or "prompt" (completion)? For /invoke.
 * Returns 1 chat, 0 completion, -1 neither / not JSON (e filled). */
int rt_api_invoke_kind(const rt_request *req, rt_error *e);

/* ======================================================================================
 * HTTP (runtime/http.c): libmicrohttpd, one thread per connection.
 * ====================================================================================== */
typedef struct rt_http rt_http;
/* Bind cfg->host:cfg->port and start serving s. Returns 0 or -1 with err. *port_out gets
 * the bound port. */
int rt_http_start(rt_server *s, const rt_config *cfg, rt_http **out, uint32_t *port_out, char *err, size_t err_cap);
/* Close the listening socket and every connection, join the HTTP threads. */
void rt_http_stop(rt_http *h); /* accepts NULL */

#endif
