/* buf.c -- a growable byte buffer with JSON writers, and a UTF-8 validator.
 *
 * Every response body and SSE chunk is written here by hand rather than through cJSON's
 * printer: it is one pass, it controls float formatting (logprobs), and it guarantees valid
 * UTF-8 out whatever bytes a token decodes to. */
#include "server.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rt_buf_free(rt_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

static int grow(rt_buf *b, size_t extra)
{
    if (b->oom)
        return -1;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void rt_buf_put(rt_buf *b, const void *p, size_t n)
{
    if (grow(b, n))
        return;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void rt_buf_puts(rt_buf *b, const char *s) { rt_buf_put(b, s, strlen(s)); }

void rt_buf_printf(rt_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        rt_buf_put(b, small, (size_t)n);
        return;
    }
    if (grow(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* The well-formed start of a UTF-8 sequence at s (n bytes left), by Unicode's table of
 * well-formed byte sequences (Table 3-7): sets *need to the length its lead byte calls for
 * (0 for a byte that cannot lead one) and returns how many bytes from the lead on fit the
 * table, at least 1. So the sequence is valid when the two agree; when not, the count is the
 * maximal ill-formed subpart, which gets one U+FFFD (Unicode's recommended practice, and what
 * HF's decode gives). */
static size_t utf8_prefix(const unsigned char *s, size_t n, size_t *need)
{
    unsigned c = s[0];
    *need = c < 0x80 ? 1 : c < 0xC2 || c > 0xF4 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    size_t k = 1;
    while (k < *need && k < n) {
        unsigned lo = 0x80, hi = 0xBF;
        if (k == 1) { /* the second byte excludes overlong forms, surrogates and past U+10FFFF */
            lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        }
        if (s[k] < lo || s[k] > hi)
            break;
        k++;
    }
    return k;
}

int rt_utf8_valid(const char *s, size_t n, size_t *bad_at)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t need, k = utf8_prefix(u + i, n - i, &need);
        if (k != need) {
            if (bad_at)
                *bad_at = i;
            return 0;
        }
        i += k;
    }
    return 1;
}

void rt_buf_json_str(rt_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    if (grow(b, n + 2))
        return;
    rt_buf_put(b, "\"", 1);
    size_t i = 0, run = 0; /* bytes [i - run, i) are plain and not yet copied */
    while (i < n) {
        unsigned c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++, run++;
            continue;
        }
        size_t need, k = 1; /* a sequence's length; of an ill-formed one, its subpart's */
        if (c >= 0x80) {
            k = utf8_prefix(u + i, n - i, &need);
            if (k == need) {
                i += k, run += k;
                continue;
            }
        }
        rt_buf_put(b, u + i - run, run);
        run = 0;
        char esc[8];
        switch (c) {
        case '"': rt_buf_put(b, "\\\"", 2); break;
        case '\\': rt_buf_put(b, "\\\\", 2); break;
        case '\n': rt_buf_put(b, "\\n", 2); break;
        case '\r': rt_buf_put(b, "\\r", 2); break;
        case '\t': rt_buf_put(b, "\\t", 2); break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                rt_buf_put(b, esc, 6);
            } else {
                rt_buf_put(b, "\xEF\xBF\xBD", 3); /* U+FFFD for an ill-formed subpart */
                i += k - 1;
            }
        }
        i++;
    }
    rt_buf_put(b, u + i - run, run);
    rt_buf_put(b, "\"", 1);
}

void rt_buf_json_num(rt_buf *b, double v)
{
    if (isnan(v)) {
        rt_buf_puts(b, "null");
        return;
    }
    if (isinf(v))
        v = v < 0 ? -FLT_MAX : FLT_MAX;
    if (v == floor(v) && fabs(v) < 1e15)
        rt_buf_printf(b, "%.1f", v);
    else
        rt_buf_printf(b, "%.9g", v);
}

char *rt_buf_take(rt_buf *b, size_t *len)
{
    if (b->oom) {
        rt_buf_free(b);
        return NULL;
    }
    if (!b->data)
        rt_buf_put(b, "", 0);
    if (b->oom) {
        rt_buf_free(b);
        return NULL;
    }
    char *p = b->data;
    if (len)
        *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
