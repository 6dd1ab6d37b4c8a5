/* remote.c -- snapshot sources beyond a local path: http(s):// and oss://bucket/key.
 *
 * Design notes.
 *  - Whole-file download, then the ordinary open/load path. The snapshot's checksums
 *    (header, tables, every chunk) are the integrity check, so nothing here trusts the
 *    bytes; a corrupt or truncated download fails snap_open/snap_verify/the load.
 *  - Where the bytes go: a memfd (an anonymous in-memory file) whose /proc/self/fd/N path
 *    snap_open maps like any file. The CPU backend then uses raw chunks in place (zero
 *    copy) and no temporary file touches the disk. With a cache directory the file is
 *    written there instead, verified, and renamed into place (atomic: a crash leaves only
 *    a *.tmp.PID, never a half file under the final name).
 *  - Parallelism: the first range (0 .. range_bytes) is fetched alone; its Content-Range
 *    gives the total size. The rest is cut into ranges of range_bytes handed out to
 *    n_conns threads from an atomic counter, each with its own curl handle (connection
 *    reuse between its ranges). Each write lands at its absolute offset with pwrite.
 *  - Retries: a range remembers how far it got; a dropped connection or a 5xx/408/429
 *    answer re-requests only the rest (Range: bytes=cur-end), with exponential backoff.
 *    A range fails after max_retries attempts in a row that made no progress. Other 4xx
 *    answers (403, 404...) are final at once. The first failure stops every thread.
 *  - A server that ignores Range and answers 200 is handled: bytes before the wanted
 *    offset are skipped, so the download still completes (on one stream).
 *  - Messages name the URL without its query string (presigned URLs carry signatures
 *    there) and never contain credentials.
 */
#include "internal.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define DEFAULT_CONNS 8u
#define DEFAULT_RANGE (16u << 20)
#define MAX_RANGE (1u << 30) /* a range is one request's body: larger ones only lose parallelism */
#define DEFAULT_RETRIES 6u
#define MAX_CONNS 64u

int snap_is_remote(const char *src)
{
    return src && (!strncmp(src, "http://", 7) || !strncmp(src, "https://", 8) || !strncmp(src, "oss://", 6));
}

/* ---- OSS V1 signing ----------------------------------------------------------------- */

int snap_oss_sign(const char *secret, const char *string_to_sign, char *out, size_t out_cap)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (!secret || !string_to_sign || out_cap < 29)
        return SNAP_EARG;
    if (!HMAC(EVP_sha1(), secret, (int)strlen(secret), (const unsigned char *)string_to_sign, strlen(string_to_sign),
              md, &md_len))
        return SNAP_EARG;
    EVP_EncodeBlock((unsigned char *)out, md, (int)md_len); /* 20 bytes -> 28 chars + NUL */
    return 0;
}

/* RFC 1123 date in GMT, locale-independent (OSS rejects a localized day name). */
static void http_date(char *out, size_t cap)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- one download ------------------------------------------------------------------- */

typedef struct fetch_job {
    char url[8192];          /* what is requested */
    char shown[2048];        /* what messages name: the source without its query string */
    /* OSS: canonical resource "/bucket/key" and credentials (NULL id = anonymous) */
    int is_oss;
    char resource[1100];
    const char *key_id, *secret, *token;
    int oss_debug;

    int fd;                  /* destination file (memfd or cache tmp) */
    int whole;               /* the server ignores Range: one stream, no parallel ranges */
    uint64_t total;          /* bytes in the object (UINT64_MAX until known) */
    uint32_t range_bytes, max_retries;

    atomic_uint_fast64_t next_range; /* next range index a worker takes */
    uint64_t n_ranges;
    atomic_int abort;
    atomic_uint_fast64_t bytes;
    atomic_uint n_requests, n_retries;

    pthread_mutex_t mu;      /* guards rc/err: the first failure wins */
    int rc;
    snap_err err;
} fetch_job;

static void job_fail(fetch_job *j, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void job_fail(fetch_job *j, int rc, const char *fmt, ...)
{
    pthread_mutex_lock(&j->mu);
    if (!j->rc) {
        j->rc = rc;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err.msg, sizeof j->err.msg, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&j->mu);
    atomic_store(&j->abort, 1);
}

/* One GET attempt's state, shared by the header and write callbacks. */
typedef struct xfer {
    fetch_job *job;
    CURL *h;
    uint64_t cur, end;       /* want [cur, end); cur advances as bytes land */
    long status;             /* of the last response (redirects reset it) */
    uint64_t body_pos;       /* file offset of the next body byte */
    uint64_t cr_total;       /* total from Content-Range, UINT64_MAX if none */
    int have_cr;
    int io_errno;            /* pwrite failure */
    int overrun;             /* a 206 that sent bytes outside what was asked */
    int first;               /* the first range: learns the size; a 200 answer takes it all */
    char errbody[200];       /* start of a non-2xx body (OSS: XML with <Code>) */
    size_t errlen;
} xfer;

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = sz * n;
    if (len > 5 && !strncmp(p, "HTTP/", 5)) { /* a new response (after a redirect or 100) */
        x->status = 0;
        x->have_cr = 0;
        x->cr_total = UINT64_MAX;
        const char *sp = memchr(p, ' ', len);
        if (sp)
            x->status = strtol(sp + 1, NULL, 10);
    } else if (len > 14 && !strncasecmp(p, "content-range:", 14)) {
        char buf[128];
        size_t m = len < sizeof buf ? len : sizeof buf - 1;
        memcpy(buf, p, m);
        buf[m] = 0;
        unsigned long long a, b, t;
        if (sscanf(buf + 14, " bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
            x->have_cr = 1;
            x->body_pos = a;
            x->cr_total = t;
        }
    }
    return len;
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = sz * n;
    fetch_job *j = x->job;
    if (atomic_load(&j->abort))
        return 0;
    if (x->status != 200 && x->status != 206) { /* keep the start of the error body */
        size_t m = sizeof x->errbody - 1 - x->errlen;
        m = len < m ? len : m;
        memcpy(x->errbody + x->errlen, p, m);
        x->errlen += m;
        x->errbody[x->errlen] = 0;
        return len;
    }
    if (x->status == 200 && !x->have_cr) {
        x->have_cr = 1; /* whole-object answer (Range ignored): the body starts at offset 0 */
        x->body_pos = 0;
        if (x->first) { /* then take all of it on this one stream */
            curl_off_t cl = -1;
            curl_easy_getinfo(x->h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
            x->end = cl >= 0 ? (uint64_t)cl : UINT64_MAX;
        }
    }
    uint64_t pos = x->body_pos, endp = pos + len;
    x->body_pos = endp;
    if (x->status == 200 && x->cur >= x->end)
        return 0; /* the rest of a whole-object answer is beyond this range: stop here */
    if (x->status == 206 && (pos > x->cur || endp > x->end)) {
        x->overrun = 1;
        return 0;
    }
    /* the part of [pos, endp) that is wanted: [max(pos,cur), min(endp,end)) */
    uint64_t a = pos > x->cur ? pos : x->cur, b = endp < x->end ? endp : x->end;
    if (a > x->cur) { /* a gap: cannot happen with a consistent server */
        x->overrun = 1;
        return 0;
    }
    while (a < b) {
        ssize_t w = pwrite(j->fd, p + (a - pos), (size_t)(b - a), (off_t)a);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            x->io_errno = errno;
            return 0;
        }
        a += (uint64_t)w;
        x->cur = a;
        atomic_fetch_add(&j->bytes, (uint64_t)w);
    }
    return len;
}

static void print_escaped(FILE *to, const char *s)
{
    for (; *s; s++)
        if (*s == '\n')
            fputs("\\n", to);
        else
            fputc(*s, to);
}

/* Request headers for one attempt: OSS signature (fresh Date each time). */
static struct curl_slist *request_headers(fetch_job *j)
{
    struct curl_slist *hs = NULL;
    if (!j->is_oss || !j->key_id)
        return NULL;
    char date[64], sts[4096], sig[64], line[4200];
    http_date(date, sizeof date);
    if (j->token && *j->token)
        snprintf(sts, sizeof sts, "GET\n\n\n%s\nx-oss-security-token:%s\n%s", date, j->token, j->resource);
    else
        snprintf(sts, sizeof sts, "GET\n\n\n%s\n%s", date, j->resource);
    if (snap_oss_sign(j->secret, sts, sig, sizeof sig))
        return NULL;
    if (j->oss_debug) {
        /* the token is a credential: shown redacted, with its length */
        char red[4096];
        if (j->token && *j->token)
            snprintf(red, sizeof red, "GET\n\n\n%s\nx-oss-security-token:<token:%zu bytes>\n%s", date,
                     strlen(j->token), j->resource);
        else
            snprintf(red, sizeof red, "%s", sts);
        flockfile(stderr); /* one block per request, even with parallel connections */
        fprintf(stderr, "oss: string-to-sign: ");
        print_escaped(stderr, red);
        fprintf(stderr, "\noss: signature: %s\n", sig);
        funlockfile(stderr);
    }
    snprintf(line, sizeof line, "Date: %s", date);
    hs = curl_slist_append(hs, line);
    snprintf(line, sizeof line, "Authorization: OSS %s:%s", j->key_id, sig);
    hs = curl_slist_append(hs, line);
    if (j->token && *j->token) {
        snprintf(line, sizeof line, "x-oss-security-token: %s", j->token);
        hs = curl_slist_append(hs, line);
    }
    return hs;
}

static int retryable_status(long s)
{
    return s >= 500 || s == 408 || s == 429;
}

/* Fetch [start, end) into the job's file, resuming after drops. end = UINT64_MAX: the
 * first range, whose end becomes min(range_bytes, total) once the answer says the total.
 * Returns 0 or the job's error code (after job_fail). */
static int get_range(fetch_job *j, CURL *h, uint64_t start, uint64_t end)
{
    xfer x = {.job = j, .h = h, .cur = start, .end = end};
    uint32_t stalls = 0;
    int first = end == UINT64_MAX;
    x.first = first;
    if (first)
        x.end = j->range_bytes;
    char errbuf[CURL_ERROR_SIZE];
    while (x.cur < x.end) {
        if (atomic_load(&j->abort))
            return j->rc ? j->rc : SNAP_ENET;
        char range[64];
        if (x.end == UINT64_MAX) /* a whole-object answer of unknown length, resumed */
            snprintf(range, sizeof range, "%" PRIu64 "-", x.cur);
        else
            snprintf(range, sizeof range, "%" PRIu64 "-%" PRIu64, x.cur, x.end - 1);
        struct curl_slist *hs = request_headers(j);
        if (j->is_oss && j->key_id && !hs) {
            job_fail(j, SNAP_ENOMEM, "%s: cannot sign the request", j->shown);
            return SNAP_ENOMEM;
        }
        errbuf[0] = 0;
        x.status = 0;
        x.have_cr = 0;
        x.cr_total = UINT64_MAX;
        x.errlen = 0;
        x.errbody[0] = 0;
        x.overrun = 0;
        curl_easy_setopt(h, CURLOPT_URL, j->url);
        curl_easy_setopt(h, CURLOPT_RANGE, range);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hs);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &x);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        uint64_t before = x.cur;
        atomic_fetch_add(&j->n_requests, 1);
        CURLcode cc = curl_easy_perform(h);
        curl_slist_free_all(hs);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
        if (atomic_load(&j->abort))
            return j->rc ? j->rc : SNAP_ENET;
        if (x.io_errno) {
            job_fail(j, SNAP_EIO, "%s: writing the download: %s", j->shown, strerror(x.io_errno));
            return SNAP_EIO;
        }
        if (x.status && x.status != 200 && x.status != 206) {
            if (x.status == 416 && first) {
                job_fail(j, SNAP_ENET, "%s: HTTP 416 (empty object?)", j->shown);
                return SNAP_ENET;
            }
            if (!retryable_status(x.status)) {
                /* the first line of the body often says why (OSS: <Code>AccessDenied</Code>) */
                const char *code = strstr(x.errbody, "<Code>");
                char why[80] = "";
                if (code) {
                    code += 6;
                    const char *e = strchr(code, '<');
                    snprintf(why, sizeof why, " (%.*s)", e ? (int)(e - code) : 40, code);
                }
                job_fail(j, SNAP_ENET, "%s: HTTP %ld%s", j->shown, x.status, why);
                return SNAP_ENET;
            }
        }
        if (x.overrun) {
            job_fail(j, SNAP_ENET, "%s: server sent bytes outside the range %s asked for", j->shown, range);
            return SNAP_ENET;
        }
        if (first && x.cur > before) {
            /* learn the total once: Content-Range, else (200) the whole body's length */
            uint64_t total = UINT64_MAX;
            if (x.status == 206 && x.cr_total != UINT64_MAX)
                total = x.cr_total;
            else if (x.status == 200) {
                j->whole = 1;
                total = x.end != UINT64_MAX ? x.end : cc == CURLE_OK ? x.cur : UINT64_MAX;
                if (total == UINT64_MAX) /* length unknown and the stream broke: only a full retry helps */
                    x.cur = before;
            }
            if (total == UINT64_MAX && x.status == 200) {
                /* fall through to the retry below */
            } else if (total == UINT64_MAX) {
                job_fail(j, SNAP_ENET, "%s: the server said neither Content-Range nor Content-Length", j->shown);
                return SNAP_ENET;
            }
            if (total != UINT64_MAX) {
                j->total = total;
                if (x.end > total)
                    x.end = total;
                first = 0;
            }
        } else if (x.status == 206 && x.cr_total != UINT64_MAX && j->total != UINT64_MAX && x.cr_total != j->total) {
            job_fail(j, SNAP_ENET, "%s: object size changed during the download (%" PRIu64 " -> %" PRIu64 " bytes)",
                     j->shown, j->total, x.cr_total);
            return SNAP_ENET;
        }
        if (x.cur >= x.end)
            break;
        /* dropped, stalled or a retryable status: resume from x.cur */
        stalls = x.cur > before ? 0 : stalls + 1;
        if (stalls >= j->max_retries) {
            if (x.status && x.status != 200 && x.status != 206)
                job_fail(j, SNAP_ENET, "%s: HTTP %ld after %u attempts", j->shown, x.status, stalls);
            else
                job_fail(j, SNAP_ENET, "%s: %s after %u attempts (at byte %" PRIu64 ")", j->shown,
                         cc != CURLE_OK ? (errbuf[0] ? errbuf : curl_easy_strerror(cc)) : "connection closed early",
                         stalls, x.cur);
            return SNAP_ENET;
        }
        atomic_fetch_add(&j->n_retries, 1);
        if (stalls) { /* back off only when an attempt made no progress: 100 ms, 200 ms, ... 3.2 s */
            uint32_t ms = 100u << (stalls - 1 < 5 ? stalls - 1 : 5);
            struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

static CURL *new_handle(void)
{
    CURL *h = curl_easy_init();
    if (!h)
        return NULL;
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L); /* < 1 KB/s for 30 s: a stalled connection */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 30L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "thaw/1 (libcurl)");
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, NULL); /* byte ranges of the stored object */
    return h;
}

static void *worker(void *arg)
{
    fetch_job *j = arg;
    CURL *h = new_handle();
    if (!h) {
        job_fail(j, SNAP_ENOMEM, "%s: curl_easy_init failed", j->shown);
        return NULL;
    }
    for (;;) {
        uint64_t i = atomic_fetch_add(&j->next_range, 1);
        if (i >= j->n_ranges || atomic_load(&j->abort))
            break;
        uint64_t a = i * j->range_bytes, b = a + j->range_bytes;
        if (b > j->total)
            b = j->total;
        if (get_range(j, h, a, b))
            break;
    }
    curl_easy_cleanup(h);
    return NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Percent-encode an object key for the URL path ('/' stays). */
static int encode_key(const char *key, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        int keep = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
                   strchr("-_.~/", *p);
        if (n + 4 > cap)
            return -1;
        if (keep)
            out[n++] = (char)*p;
        else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = 0;
    return 0;
}

/* Fill url/shown/resource/credentials from `src`. */
static int job_setup(fetch_job *j, const char *src, const snap_fetch_opts *o, snap_err *err)
{
    size_t qlen = strcspn(src, "?");
    snprintf(j->shown, sizeof j->shown, "%.*s", (int)(qlen < 2000 ? qlen : 2000), src);
    if (strncmp(src, "oss://", 6)) {
        if (strlen(src) >= sizeof j->url)
            return snap_fail(err, SNAP_EARG, "%s: URL too long", j->shown);
        snprintf(j->url, sizeof j->url, "%s", src);
        return 0;
    }
    const char *b = src + 6, *slash = strchr(b, '/');
    if (!slash || slash == b || !slash[1] || (size_t)(slash - b) > 63)
        return snap_fail(err, SNAP_EARG, "%s: expected oss://BUCKET/KEY", j->shown);
    char bucket[64], key[1024], ekey[3072];
    snprintf(bucket, sizeof bucket, "%.*s", (int)(slash - b), b);
    if (strlen(slash + 1) >= sizeof key)
        return snap_fail(err, SNAP_EARG, "%s: object key too long", j->shown);
    snprintf(key, sizeof key, "%s", slash + 1);
    if (encode_key(key, ekey, sizeof ekey))
        return snap_fail(err, SNAP_EARG, "%s: object key too long", j->shown);

    char region_ep[128];
    const char *ep = o->oss_endpoint && *o->oss_endpoint ? o->oss_endpoint : getenv("THAW_OSS_ENDPOINT");
    if (!ep || !*ep) {
        const char *region = getenv("FC_REGION");
        if (!region || !*region)
            return snap_fail(err, SNAP_EARG,
                             "%s: no OSS endpoint: give --oss-endpoint (e.g. oss-cn-hangzhou-internal.aliyuncs.com) "
                             "or THAW_OSS_ENDPOINT",
                             j->shown);
        snprintf(region_ep, sizeof region_ep, "oss-%s-internal.aliyuncs.com", region);
        ep = region_ep;
    }
    const char *scheme = "https://", *host = ep;
    const char *sep = strstr(ep, "://");
    char sch[16];
    if (sep) {
        snprintf(sch, sizeof sch, "%.*s://", (int)(sep - ep < 8 ? sep - ep : 8), ep);
        scheme = sch;
        host = sep + 3;
    }
    size_t hl = strcspn(host, "/");
    /* path-style for IP addresses and localhost (test servers, private gateways);
     * virtual-hosted style (bucket.endpoint) for OSS itself */
    int path_style = (host[0] >= '0' && host[0] <= '9') || host[0] == '[' || !strncmp(host, "localhost", 9);
    int n;
    if (path_style)
        n = snprintf(j->url, sizeof j->url, "%s%.*s/%s/%s", scheme, (int)hl, host, bucket, ekey);
    else
        n = snprintf(j->url, sizeof j->url, "%s%s.%.*s/%s", scheme, bucket, (int)hl, host, ekey);
    if (n < 0 || (size_t)n >= sizeof j->url)
        return snap_fail(err, SNAP_EARG, "%s: URL too long", j->shown);
    snprintf(j->resource, sizeof j->resource, "/%s/%s", bucket, key);
    j->is_oss = 1;
    j->key_id = getenv("ALIBABA_CLOUD_ACCESS_KEY_ID");
    j->secret = getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET");
    j->token = getenv("ALIBABA_CLOUD_SECURITY_TOKEN");
    if (j->key_id && !*j->key_id)
        j->key_id = NULL;
    if (j->key_id && (!j->secret || !*j->secret))
        return snap_fail(err, SNAP_EARG, "%s: ALIBABA_CLOUD_ACCESS_KEY_ID is set but ALIBABA_CLOUD_ACCESS_KEY_SECRET is not",
                         j->shown);
    const char *dbg = getenv("THAW_OSS_DEBUG");
    j->oss_debug = dbg && *dbg && strcmp(dbg, "0");
    return 0;
}

/* A positive integer from the environment, or `def`. */
static uint32_t env_u32(const char *name, uint32_t def)
{
    const char *v = getenv(name);
    char *end;
    unsigned long x = v && *v ? strtoul(v, &end, 10) : 0;
    return v && *v && !*end && x > 0 && x <= UINT32_MAX ? (uint32_t)x : def;
}

/* Download into fd. Returns 0 or an error (err filled). */
static int download(fetch_job *j, const snap_fetch_opts *o, snap_fetch_stats *st, snap_err *err)
{
    uint32_t n_conns = o->n_conns ? o->n_conns : env_u32("THAW_FETCH_CONNS", DEFAULT_CONNS);
    if (n_conns > MAX_CONNS)
        n_conns = MAX_CONNS;
    uint64_t rb = o->range_bytes ? o->range_bytes : env_u32("THAW_FETCH_RANGE_BYTES", DEFAULT_RANGE);
    if (rb > MAX_RANGE)
        rb = MAX_RANGE;
    rb = (rb + 65535) / 65536 * 65536;
    j->range_bytes = (uint32_t)rb;
    j->max_retries = o->max_retries ? o->max_retries : DEFAULT_RETRIES;
    j->total = UINT64_MAX;
    pthread_mutex_init(&j->mu, NULL);

    CURL *h = new_handle();
    if (!h) {
        pthread_mutex_destroy(&j->mu);
        return snap_fail(err, SNAP_ENOMEM, "%s: curl_easy_init failed", j->shown);
    }
    int rc = get_range(j, h, 0, UINT64_MAX);
    curl_easy_cleanup(h);
    if (!rc && !j->whole && j->total > j->range_bytes) {
        if (ftruncate(j->fd, (off_t)j->total) != 0)
            job_fail(j, SNAP_EIO, "%s: sizing the download to %" PRIu64 " bytes: %s", j->shown, j->total,
                     strerror(errno));
        j->n_ranges = (j->total + j->range_bytes - 1) / j->range_bytes;
        atomic_store(&j->next_range, 1);
        uint64_t rest = j->n_ranges - 1;
        uint32_t nt = rest < n_conns ? (uint32_t)rest : n_conns;
        pthread_t tids[MAX_CONNS];
        uint32_t started = 0;
        for (; started < nt && !j->rc; started++)
            if (pthread_create(&tids[started], NULL, worker, j) != 0)
                break;
        if (started == 0 && !j->rc)
            job_fail(j, SNAP_ENOMEM, "%s: cannot start download threads", j->shown);
        for (uint32_t i = 0; i < started; i++)
            pthread_join(tids[i], NULL);
        if (!j->rc && atomic_load(&j->next_range) < j->n_ranges)
            job_fail(j, SNAP_ENOMEM, "%s: download threads stopped early", j->shown);
    }
    rc = j->rc;
    if (rc && err)
        *err = j->err;
    if (st) {
        st->bytes = atomic_load(&j->bytes);
        st->n_requests = atomic_load(&j->n_requests);
        st->n_retries = atomic_load(&j->n_retries);
    }
    pthread_mutex_destroy(&j->mu);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Appends " (downloaded from SRC)" to a message about a fetched file (which names a
 * /proc/self/fd or cache path the user never typed). */
static void note_source(snap_err *err, const char *src, size_t src_len)
{
    if (!err)
        return;
    size_t n = strnlen(err->msg, sizeof err->msg - 1), cap = sizeof err->msg;
    int w = snprintf(err->msg + n, cap - n, " (downloaded from ");
    if (w < 0 || (size_t)w >= cap - n)
        return;
    n += (size_t)w;
    if (n + 2 > cap)
        return;
    size_t m = src_len < cap - n - 2 ? src_len : cap - n - 2;
    memcpy(err->msg + n, src, m);
    err->msg[n + m] = ')';
    err->msg[n + m + 1] = 0;
}

/* An existing cache file that opens and whose every chunk verifies. */
static int cache_ok(const char *path)
{
    snap_file *f = NULL;
    snap_err e;
    if (access(path, R_OK) != 0 || snap_open(path, &f, &e) != 0)
        return 0;
    int ok = snap_verify(f, NULL, NULL, &e) == 0;
    snap_close(f);
    return ok;
}

int snap_fetch(const char *src, const snap_fetch_opts *opts, char *path_out, size_t path_cap, int *fd_out,
               snap_fetch_stats *stats, snap_err *err)
{
    snap_fetch_opts defaults = {0};
    const snap_fetch_opts *o = opts ? opts : &defaults;
    snap_fetch_stats st = {0};
    if (fd_out)
        *fd_out = -1;
    if (!src || !*src || !path_out || !path_cap || !fd_out)
        return snap_fail(err, SNAP_EARG, "snap_fetch: no source");
    if (!snap_is_remote(src)) {
        if (strlen(src) >= path_cap)
            return snap_fail(err, SNAP_EARG, "%s: path too long", src);
        snprintf(path_out, path_cap, "%s", src);
        return 0;
    }
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return snap_fail(err, SNAP_ENET, "curl_global_init: %s", curl_easy_strerror(curl_init_rc));

    fetch_job *j = calloc(1, sizeof *j);
    if (!j)
        return snap_fail(err, SNAP_ENOMEM, "out of memory");
    j->fd = -1;
    char final_path[4096] = "", tmp_path[4200] = ""; /* before any goto fail: it unlinks tmp_path */
    int rc = job_setup(j, src, o, err);
    if (rc)
        goto fail;

    /* the object's name: for the memfd's label and the cache file's name */
    const char *base = strrchr(j->shown, '/');
    base = base ? base + 1 : j->shown;
    char label[96];
    size_t bl = 0;
    for (const char *p = base; *p && bl < 63; p++)
        label[bl++] = (isalnum((unsigned char)*p) || strchr("-_.", *p)) ? *p : '_';
    label[bl] = 0;

    double t0 = now_s();
    if (o->cache_dir && *o->cache_dir) {
        unsigned long long hsh = (unsigned long long)XXH3_64bits(src, strcspn(src, "?") /* presign-independent */);
        snprintf(final_path, sizeof final_path, "%s/%016llx-%s", o->cache_dir, hsh, label);
        if (strlen(final_path) >= path_cap) {
            rc = snap_fail(err, SNAP_EARG, "%s: cache path too long", final_path);
            goto fail;
        }
        if (cache_ok(final_path)) {
            snprintf(path_out, path_cap, "%s", final_path);
            st.from_cache = 1;
            st.total_s = now_s() - t0;
            if (o->verbose)
                fprintf(stderr, "thaw: %s: cached copy %s verified\n", j->shown, final_path);
            goto done;
        }
        if (mkdir(o->cache_dir, 0755) != 0 && errno != EEXIST) {
            rc = snap_fail(err, SNAP_EIO, "%s: cannot create cache directory: %s", o->cache_dir, strerror(errno));
            goto fail;
        }
        snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", final_path, (long)getpid());
        j->fd = open(tmp_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (j->fd < 0) {
            rc = snap_fail(err, SNAP_EIO, "%s: %s", tmp_path, strerror(errno));
            goto fail;
        }
    } else {
        char name[128];
        snprintf(name, sizeof name, "thaw:%s", label);
        j->fd = memfd_create(name, MFD_CLOEXEC);
        if (j->fd < 0) {
            rc = snap_fail(err, SNAP_EIO, "memfd_create: %s", strerror(errno));
            goto fail;
        }
    }

    rc = download(j, o, &st, err);
    st.total_s = now_s() - t0;
    if (rc)
        goto fail;
    if (o->verbose)
        fprintf(stderr, "thaw: fetched %s: %.1f MB in %.2f s (%.0f MB/s, %u requests, %u retries)\n", j->shown,
                st.bytes / 1e6, st.total_s, st.bytes / 1e6 / (st.total_s > 0 ? st.total_s : 1e-9), st.n_requests,
                st.n_retries);

    if (tmp_path[0]) {
        /* only a file that verifies takes the final name */
        if (fsync(j->fd) != 0) {
            rc = snap_fail(err, SNAP_EIO, "%s: fsync: %s", tmp_path, strerror(errno));
            goto fail;
        }
        close(j->fd);
        j->fd = -1;
        snap_file *f = NULL;
        rc = snap_open(tmp_path, &f, err);
        if (!rc)
            rc = snap_verify(f, NULL, NULL, err);
        snap_close(f);
        if (rc) {
            note_source(err, j->shown, strlen(j->shown));
            goto fail;
        }
        if (rename(tmp_path, final_path) != 0) {
            rc = snap_fail(err, SNAP_EIO, "rename %s -> %s: %s", tmp_path, final_path, strerror(errno));
            goto fail;
        }
        (void)snap_sync_dir(final_path); /* best effort: the file itself is synced */
        tmp_path[0] = 0;
        snprintf(path_out, path_cap, "%s", final_path);
    } else {
        snprintf(path_out, path_cap, "/proc/self/fd/%d", j->fd);
        *fd_out = j->fd;
        j->fd = -1;
    }
done:
    if (stats)
        *stats = st;
    free(j);
    return 0;
fail:
    if (j->fd >= 0)
        close(j->fd);
    if (tmp_path[0])
        unlink(tmp_path);
    if (stats)
        *stats = st;
    free(j);
    return rc;
}

int snap_open_source(const char *src, const snap_fetch_opts *opts, snap_file **out, snap_fetch_stats *stats,
                     snap_err *err)
{
    char path[4096];
    int fd = -1;
    int rc = snap_fetch(src, opts, path, sizeof path, &fd, stats, err);
    if (rc)
        return rc;
    rc = snap_open(path, out, err);
    if (fd >= 0)
        close(fd); /* snap_open holds its own descriptor and mapping of the memfd */
    if (rc && snap_is_remote(src))
        note_source(err, src, strcspn(src, "?"));
    return rc;
}
