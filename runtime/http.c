/* http.c -- libmicrohttpd glue: the one file that includes microhttpd.h.
 *
 * Threading: MHD_USE_THREAD_PER_CONNECTION with its internal accept thread. Each
 * connection's thread runs the handler, which may block (waiting for the model load or the
 * engine's events), and the content-reader callback of a streaming response, which blocks
 * in rt_stream_read until the next token -- MHD allows both in this mode, and it needs no
 * suspend/resume. Threads are bounded by MHD_OPTION_CONNECTION_LIMIT (--max-connections);
 * beyond it MHD refuses connections. Idle connections sleep in poll(); the accept thread
 * sleeps in poll() without timeout: 0 % CPU when idle.
 *
 * Timeouts: MHD closes a connection idle for --conn-timeout seconds, measuring from its
 * last socket activity -- and it checks right after our callbacks return. A handler or a
 * stream that blocked for longer than that on the engine (a long queue wait, a slow prefill)
 * is not idleness of the client, so after each blocking read the stream resets the clock
 * (setting the timeout to 0 and back refreshes MHD's last-activity time); MHD_queue_response
 * does the same for whole responses.
 *
 * Body limit: a body over --max-body is discarded as it arrives and answered 413 at its end,
 * so a client that writes its whole body before reading still gets the answer; a declared
 * Content-Length far over it (discard_limit) is answered 413 at once (MHD then closes the
 * connection without reading the body), and a chunked body that keeps going past that limit
 * has its connection cut.
 *
 * Ownership: each response says who frees its buffer -- whole bodies are malloc'd by the
 * handler and handed to MHD with MHD_RESPMEM_MUST_FREE (MHD calls free()); a stream is owned
 * by its MHD response and destroyed in stream_free when MHD lets go of the response.
 * Headers: FC forbids responses that set x-fc-* (except x-fc-status on /invoke), date,
 * server, connection or keep-alive, so the Date header is suppressed and none of those is
 * added here.
 */
#include "server.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rt_http {
    struct MHD_Daemon *d;
    rt_server *srv;
    uint64_t max_body;
    unsigned timeout_s;
};

/* Per-request state (*con_cls): the body as it arrives. Freed in on_completed. */
typedef struct conn_req {
    char *body;
    size_t len, cap;
    uint64_t seen;             /* body bytes received, kept or not */
    int too_large;
} conn_req;

typedef struct stream_ctx {
    rt_stream *s;              /* owned */
    struct MHD_Connection *c;  /* outlives the response's reads */
    unsigned timeout_s;
} stream_ctx;

/* Bodies over --max-body up to this size are read and dropped before the 413; beyond it the
 * 413 goes out at once and the connection is closed. */
static uint64_t discard_limit(const rt_http *h) { return 2 * h->max_body + (1u << 20); }

static void touch(struct MHD_Connection *c, unsigned timeout_s)
{
    if (!timeout_s)
        return;
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, timeout_s);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream_ctx *x = cls;
    (void)pos;
    ssize_t n = rt_stream_read(x->s, buf, max);
    touch(x->c, x->timeout_s);
    if (n > 0)
        return n;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
    stream_ctx *x = cls;
    rt_stream_destroy(x->s);
    free(x);
}

/* Turn resp into an MHD response and queue it. Consumes resp's body and stream. */
static enum MHD_Result send_response(rt_http *h, struct MHD_Connection *c, rt_response *resp)
{
    struct MHD_Response *mr;
    if (resp->stream) {
        stream_ctx *x = malloc(sizeof *x);
        if (!x) {
            rt_response_deinit(resp);
            return MHD_NO;
        }
        *x = (stream_ctx){resp->stream, c, h->timeout_s};
        resp->stream = NULL;
        mr = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, x, stream_free);
        if (!mr) {
            stream_free(x);
            rt_response_deinit(resp);
            return MHD_NO;
        }
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(mr, "X-Accel-Buffering", "no");
    } else {
        /* MHD frees body with free() when it is done with the response */
        mr = MHD_create_response_from_buffer(resp->body_len, resp->body, MHD_RESPMEM_MUST_FREE);
        if (!mr) {
            rt_response_deinit(resp);
            return MHD_NO;
        }
        resp->body = NULL;
    }
    if (resp->content_type)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, resp->content_type);
    if (resp->request_id[0])
        MHD_add_response_header(mr, "x-request-id", resp->request_id);
    if (resp->retry_after_s > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", resp->retry_after_s);
        MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (resp->allow)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, resp->allow);
    if (resp->fc_status) {
        char v[16];
        snprintf(v, sizeof v, "%d", resp->status);
        MHD_add_response_header(mr, "x-fc-status", v);
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)resp->status, mr);
    MHD_destroy_response(mr); /* the connection keeps its own reference */
    return ret;
}

static void fill_request(struct MHD_Connection *c, const char *url, const char *method, rt_request *req)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    *req = (rt_request){
        .method = method,
        .path = url,
        .body = "",
        .request_id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-request-id"),
        .authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .fc_control_path = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-fc-control-path"),
        .fd = ci ? ci->connect_fd : -1,
    };
}

static enum MHD_Result send_413(rt_http *h, struct MHD_Connection *c, const char *url, const char *method)
{
    rt_request req;
    rt_response resp;
    fill_request(c, url, method, &req);
    rt_server_reject_body(h->srv, &req, h->max_body, &resp);
    return send_response(h, c, &resp);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    rt_http *h = cls;
    conn_req *cr = *con_cls;
    (void)version;
    if (!cr) { /* headers are in; the body (if any) comes in the next calls */
        cr = calloc(1, sizeof *cr);
        if (!cr)
            return MHD_NO;
        *con_cls = cr;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        uint64_t declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > discard_limit(h)) {
            cr->too_large = 1;
            return send_413(h, c, url, method); /* early: MHD will not read the body and closes afterwards */
        }
        /* a body somewhat over the limit is read and dropped, then answered: clients that
         * write the whole body before reading (most do) see the 413, not a broken pipe */
        cr->too_large = declared > h->max_body;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        cr->seen += n;
        if (cr->too_large || cr->len + n > h->max_body) {
            if (!cr->too_large) {
                free(cr->body);
                cr->body = NULL;
                cr->len = cr->cap = 0;
                cr->too_large = 1;
            }
            /* discard it, up to a point: then cut the connection */
            return cr->seen > discard_limit(h) ? MHD_NO : MHD_YES;
        }
        if (cr->len + n + 1 > cr->cap) {
            size_t cap = cr->cap ? cr->cap : 4096;
            while (cap < cr->len + n + 1)
                cap *= 2;
            char *p = realloc(cr->body, cap);
            if (!p)
                return MHD_NO;
            cr->body = p;
            cr->cap = cap;
        }
        memcpy(cr->body + cr->len, upload_data, n);
        cr->len += n;
        cr->body[cr->len] = 0;
        return MHD_YES;
    }
    if (cr->too_large)
        return send_413(h, c, url, method);

    rt_request req;
    fill_request(c, url, method, &req);
    if (cr->body)
        req.body = cr->body, req.body_len = cr->len;
    rt_response resp;
    rt_server_handle(h->srv, &req, &resp);
    /* the body is no longer needed: the handler copied what it keeps */
    free(cr->body);
    cr->body = NULL;
    cr->len = cr->cap = 0;
    return send_response(h, c, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    conn_req *cr = *con_cls;
    if (cr) {
        free(cr->body);
        free(cr);
        *con_cls = NULL;
    }
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    rt_log("http: %s", msg);
}

int rt_http_start(rt_server *s, const rt_config *cfg, rt_http **out, uint32_t *port_out, char *err, size_t err_cap)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &sa.sin_addr) != 1) {
        snprintf(err, err_cap, "--host must be an IPv4 address, got '%s'", cfg->host);
        return -1;
    }
    rt_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, err_cap, "out of memory");
        return -1;
    }
    h->srv = s;
    h->max_body = cfg->max_body_bytes;
    h->timeout_s = cfg->conn_timeout_s;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC |
                     MHD_USE_SUPPRESS_DATE_NO_CLOCK | MHD_USE_ERROR_LOG;
    errno = 0;
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, or MHD complains */
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, err_cap, "cannot listen on %s:%u%s%s", cfg->host, cfg->port, errno ? ": " : "",
                 errno ? strerror(errno) : "");
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    *port_out = di && di->port ? di->port : cfg->port;
    *out = h;
    return 0;
}

void rt_http_stop(rt_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
