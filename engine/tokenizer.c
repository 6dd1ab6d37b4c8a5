/* tokenizer.c -- byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2) and SentencePiece-style BPE
 * (Llama 2), reproducing the Hugging Face `tokenizers` library id for id.
 *
 * Design notes:
 *  1. Encoding has four steps, each one stage of Hugging Face's pipeline:
 *     (a) Added tokens are cut out of the text first, leftmost-longest like its Aho-Corasick
 *         pass: special ones (control, unknown) only when parse_special, user-defined ones
 *         always (HF matches non-special added tokens even with encode_special_tokens). The
 *         text between two of them is encoded on its own.
 *     (b) The pre-tokenizer cuts that text into pre-tokens. Each regex is a hand-written
 *         matcher (pre_gpt2, pre_llama3) returning the end of the match that starts at a
 *         position; together with the driver (encode_bpe_text) it follows the regex's
 *         leftmost-first alternation and its backtracking into whitespace runs. Character
 *         classes come from unicode.c, generated for Unicode 16.0 as HF's Oniguruma uses.
 *     (c) A pre-token's bytes become the ids of their one-character tokens in GPT-2's
 *         byte-to-unicode alphabet (byte_tok), so no mapped string is built.
 *     (d) BPE merges the adjacent pair of lowest merge rank, leftmost first, until no pair has
 *         a merge: an array scan for short words, a heap over a linked list for long ones.
 *         Both give HF's result, whose queue is ordered by (rank, position) too.
 *  2. SentencePiece: spaces become U+2581 "▁" and, with add_space_prefix, one is put in front
 *     of the text at the start and after every added token (llama.cpp's rule, and what HF's
 *     Prepend normalizer does to each piece between added tokens), or as HF's Metaspace
 *     pre-tokenizer does it: not before a piece that starts with a space, and with "first"
 *     only at the text's start (snap_space_prefix). With spm_split every "▁" starts a word
 *     of its own for the merges (Metaspace's split). Then either llama.cpp's
 *     score-ordered merge (GGUF vocabularies carry scores) or the rank merge of (d)
 *     (tokenizer.json carries merges); a character outside the vocab falls back to its
 *     <0xXX> byte tokens.
 *  3. Invalid UTF-8 never fails: each invalid byte is a character of its own, of class
 *     "other". Byte-level BPE maps it like any byte; SentencePiece falls back to its byte
 *     token. Decoding is bytewise, so such text round-trips exactly -- except bytes a
 *     byte-level vocab has no token for, which are dropped as HF drops them (SmolLM2 lacks
 *     21: some controls, 0xC0, 0xC1, 0xF1, 0xF2 and 0xF5..0xFF).
 *  4. Not done: Qwen2's NFC normalizer (text that is already NFC, which is nearly all text,
 *     is unaffected), HF added-token options lstrip/rstrip/single_word, BPE dropout. HF's
 *     Digits pre-tokenizer (SmolLM) uses Rust's char::is_numeric, Unicode 17 in tokenizers
 *     0.23, where the tables here are 16.0: the numerals new in 17.0 differ.
 *  5. Immutable after create. eng_tokenize allocates its scratch per call and keeps no cache,
 *     so any number of threads may encode with one tokenizer.
 */
#include "internal.h"
#include "unicode.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */
#define BPE_SMALL 48             /* words up to this many symbols merge by array scan */
#define UC_INVALID 0xFFFFFFFFu   /* "code point" of an invalid UTF-8 byte: class other */

typedef struct merge_slot {
    uint64_t key;    /* ((left << 32) | right) + 1; 0 = empty slot */
    uint32_t rank;   /* position in the merge list: lower merges first */
    int32_t result;  /* id of the merged token */
} merge_slot;

typedef struct added_tok {
    const char *text;  /* the vocab's spelling, matched as raw bytes */
    uint32_t len;
    int32_t id;
    uint8_t special;   /* control/unknown: matched only when parse_special */
} added_tok;

struct eng_tokenizer {
    snap_vocab v;               /* copy of the header; arrays point into the snapshot */
    uint32_t *tok_slots;        /* [tok_mask + 1] token text -> id + 1 (0 = empty) */
    uint32_t tok_mask;
    merge_slot *merge_slots;    /* [1 << merge_bits] (left, right) -> rank, result */
    uint32_t merge_bits;
    uint32_t *dec_off;          /* [n_tokens + 1] offsets of each token's output bytes */
    char *dec_blob;             /* output bytes: byte-level mapping undone, "▁" -> " " */
    uint32_t max_dec;           /* longest output of one token */
    int32_t byte_tok[256];      /* byte-level: the token of each byte's character; SPM: <0xXX> */
    char byte_chr[256][2];      /* byte-level: each byte's character, UTF-8 (1 or 2 bytes) */
    uint8_t byte_chr_len[256];
    added_tok *added;           /* [n_added] sorted by first byte, then longest first */
    uint32_t n_added;
    uint32_t added_lo[256], added_hi[256]; /* added[lo, hi): the tokens starting with a byte */
    bool spm_scores;            /* SPM with scores: llama.cpp's merge by score */
    bool ignore_merges;         /* Llama 3: a pre-token that is a token is emitted whole */
};

/* ---- UTF-8 and character classes -------------------------------------------------------- */

/* Decode the character at s[i] (i < end) and store its length. An invalid or truncated
 * sequence is a one-byte character UC_INVALID; the second-byte ranges reject overlongs,
 * surrogates and code points past U+10FFFF, as Unicode's well-formedness table does. */
static inline uint32_t utf8_at(const uint8_t *s, size_t i, size_t end, size_t *len)
{
    uint32_t c = s[i];
    *len = 1;
    if (c < 0x80)
        return c;
    if (c < 0xC2 || c > 0xF4)
        return UC_INVALID;
    if (c < 0xE0) {
        if (i + 1 < end && (s[i + 1] & 0xC0) == 0x80) {
            *len = 2;
            return (c & 0x1F) << 6 | (s[i + 1] & 0x3F);
        }
        return UC_INVALID;
    }
    uint32_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    uint32_t hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    if (i + 1 >= end || s[i + 1] < lo || s[i + 1] > hi)
        return UC_INVALID;
    if (c < 0xF0) {
        if (i + 2 >= end || (s[i + 2] & 0xC0) != 0x80)
            return UC_INVALID;
        *len = 3;
        return (c & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
    }
    if (i + 3 >= end || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
        return UC_INVALID;
    *len = 4;
    return (c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
           (s[i + 3] & 0x3F);
}

/* ASCII inline (most text), the rest through the generated tables. */
static const uint8_t ascii_class[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
};

/* Class of the character at s[i], and its length. */
static inline int class_at(const uint8_t *s, size_t i, size_t end, size_t *len)
{
    if (s[i] < 0x80) {
        *len = 1;
        return ascii_class[s[i]];
    }
    return eng_unicode_class(utf8_at(s, i, end, len));
}

/* End of the run of characters of class `cls` that starts at i. */
static size_t run_end(const uint8_t *s, size_t i, size_t end, int cls)
{
    size_t l;
    while (i < end && class_at(s, i, end, &l) == cls)
        i += l;
    return i;
}

/* ---- pre-tokenizers ----------------------------------------------------------------------- */

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Returns the end of the match at i (i < end); `end` is the end of the text as the regex
 * sees it (SmolLM's digit split makes shorter texts). Every character matches some
 * alternative, so matches tile the text. */
static size_t pre_gpt2(const uint8_t *s, size_t i, size_t end)
{
    if (s[i] == '\'' && i + 1 < end) {
        uint8_t a = s[i + 1], b = i + 2 < end ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return i + 3;
    }
    size_t l;
    int cls = class_at(s, i, end, &l);
    if (s[i] == ' ' && i + 1 < end) {
        size_t l2;
        int next = class_at(s, i + 1, end, &l2);
        if (next != ENG_UC_SPACE) /* " ?" joins a single space to the run after it */
            return run_end(s, i + 1 + l2, end, next);
    }
    if (cls != ENG_UC_SPACE)
        return run_end(s, i + l, end, cls);
    /* \s+(?!\S): a run followed by a non-space backs off one character, leaving that one
     * to join the next word; a run of one such character is taken whole by \s+. */
    size_t j = i + l, last = i;
    while (j < end && class_at(s, j, end, &l) == ENG_UC_SPACE) {
        last = j;
        j += l;
    }
    return (j == end || last == i) ? j : last;
}

/* Lower case for the (?i:...) contractions: ASCII, plus U+017F LATIN SMALL LETTER LONG S,
 * which Unicode case folding (and so Oniguruma) turns into 's'. */
static inline uint32_t fold_ci(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    return c == 0x17F ? 's' : c;
}

/* Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 *   |\s*[\r\n]+|\s+(?!\S)|\s+                                     (Qwen2: \p{N} for \p{N}{1,3}) */
static size_t pre_llama3(const uint8_t *s, size_t i, size_t end, int max_digits)
{
    size_t l, l1, l2;
    if (s[i] == '\'' && i + 1 < end) {
        uint32_t a = fold_ci(utf8_at(s, i + 1, end, &l1));
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 1 + l1;
        if (i + 1 + l1 < end) {
            uint32_t b = fold_ci(utf8_at(s, i + 1 + l1, end, &l2));
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 1 + l1 + l2;
        }
    }
    int cls = class_at(s, i, end, &l);
    if (cls == ENG_UC_LETTER)
        return run_end(s, i + l, end, ENG_UC_LETTER);
    /* one character that is not a newline, letter or digit may lead a word */
    if (cls != ENG_UC_NUMBER && s[i] != '\r' && s[i] != '\n' && i + l < end &&
        class_at(s, i + l, end, &l2) == ENG_UC_LETTER)
        return run_end(s, i + l + l2, end, ENG_UC_LETTER);
    if (cls == ENG_UC_NUMBER) {
        size_t j = i + l;
        for (int k = 1; k < max_digits && j < end && class_at(s, j, end, &l2) == ENG_UC_NUMBER; k++)
            j += l2;
        return j;
    }
    size_t j = 0;
    if (cls == ENG_UC_OTHER)
        j = run_end(s, i + l, end, ENG_UC_OTHER);
    else if (s[i] == ' ' && i + 1 < end && class_at(s, i + 1, end, &l2) == ENG_UC_OTHER)
        j = run_end(s, i + 1 + l2, end, ENG_UC_OTHER);
    if (j) {
        while (j < end && (s[j] == '\r' || s[j] == '\n'))
            j++;
        return j;
    }
    /* Whitespace. \s*[\r\n]+ backtracks from the end of the run to its last newline and
     * ends just after it; without a newline, \s+(?!\S) and \s+ act as in GPT-2. */
    size_t nl = 0, last = i;
    j = i;
    while (j < end && class_at(s, j, end, &l) == ENG_UC_SPACE) {
        if (s[j] == '\r' || s[j] == '\n')
            nl = j + 1;
        last = j;
        j += l;
    }
    if (nl)
        return nl;
    return (j == end || last == i) ? j : last;
}

/* ---- hash maps ------------------------------------------------------------------------------ */

static uint64_t str_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 32);
}

static inline const char *tok_text(const eng_tokenizer *t, uint32_t id, size_t *len)
{
    *len = t->v.offsets[id + 1] - t->v.offsets[id];
    return t->v.blob + t->v.offsets[id];
}

static inline uint8_t tok_type(const eng_tokenizer *t, uint32_t id)
{
    return t->v.types ? t->v.types[id] : SNAP_TOKT_NORMAL;
}

static int32_t tok_find(const eng_tokenizer *t, const char *s, size_t n)
{
    uint32_t i = (uint32_t)str_hash(s, n) & t->tok_mask;
    for (;;) {
        uint32_t slot = t->tok_slots[i];
        if (!slot)
            return -1;
        size_t len;
        const char *text = tok_text(t, slot - 1, &len);
        if (len == n && memcmp(text, s, n) == 0)
            return (int32_t)(slot - 1);
        i = (i + 1) & t->tok_mask;
    }
}

static inline uint32_t merge_index(uint64_t key, uint32_t bits)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static inline const merge_slot *merge_find(const eng_tokenizer *t, int32_t left, int32_t right)
{
    uint64_t key = ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
    uint32_t mask = (1u << t->merge_bits) - 1;
    for (uint32_t i = merge_index(key, t->merge_bits);; i = (i + 1) & mask) {
        const merge_slot *m = &t->merge_slots[i];
        if (m->key == key)
            return m;
        if (!m->key)
            return NULL;
    }
}

/* ---- per-call scratch and output ------------------------------------------------------------- */

typedef struct tok_scratch {
    size_t cap;        /* symbols the arrays hold */
    int32_t *ids;      /* [cap] symbol ids */
    int32_t *prv;      /* [cap] linked list (heap merge, SPM) */
    int32_t *nxt;      /* [cap] */
    uint32_t *start;   /* [cap] SPM score merge: symbol text start */
    uint32_t *len;     /* [cap] SPM score merge: symbol text length */
    uint64_t *heap;    /* [3 * cap] (rank << 32 | position) */
    char *str;         /* [4 * cap] a pre-token spelled in the byte-level alphabet */
} tok_scratch;

static void scratch_free(tok_scratch *sc)
{
    free(sc->ids);
    free(sc->prv);
    free(sc->nxt);
    free(sc->start);
    free(sc->len);
    free(sc->heap);
    free(sc->str);
    memset(sc, 0, sizeof *sc);
}

/* Room for n symbols. Returns 0 or ENG_ENOMEM (the old arrays stay valid). */
static int scratch_reserve(tok_scratch *sc, size_t n)
{
    if (n <= sc->cap)
        return 0;
    size_t cap = sc->cap ? sc->cap : 256;
    while (cap < n)
        cap *= 2;
#define GROW(field, count)                                           \
    do {                                                             \
        void *p_ = realloc(sc->field, (count) * sizeof *sc->field); \
        if (!p_)                                                     \
            return ENG_ENOMEM;                                       \
        sc->field = p_;                                              \
    } while (0)
    GROW(ids, cap);
    GROW(prv, cap);
    GROW(nxt, cap);
    GROW(start, cap);
    GROW(len, cap);
    GROW(heap, 3 * cap);
    GROW(str, 4 * cap);
#undef GROW
    sc->cap = cap;
    return 0;
}

typedef struct tok_out {
    int32_t *ids;
    size_t cap;
    size_t n;          /* ids needed so far (may pass cap) */
} tok_out;

static inline void out_push(tok_out *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* ---- BPE merge by rank ------------------------------------------------------------------------- */

static inline void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1] < h[c])
            c++;
        if (h[c] >= v)
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = v;
    return top;
}

/* Long words: a min-heap of (rank, position) over a linked list of symbols. An entry is
 * stale when its left symbol was merged away or its pair changed; it is then skipped. */
static size_t bpe_merge_heap(const eng_tokenizer *t, tok_scratch *sc, size_t n)
{
    int32_t *ids = sc->ids, *prv = sc->prv, *nxt = sc->nxt;
    uint64_t *heap = sc->heap;
    size_t nh = 0;
    for (size_t k = 0; k < n; k++) {
        prv[k] = (int32_t)k - 1;
        nxt[k] = k + 1 < n ? (int32_t)k + 1 : -1;
        const merge_slot *m = k + 1 < n ? merge_find(t, ids[k], ids[k + 1]) : NULL;
        if (m)
            heap_push(heap, &nh, (uint64_t)m->rank << 32 | k);
    }
    while (nh) {
        uint64_t top = heap_pop(heap, &nh);
        uint32_t rank = (uint32_t)(top >> 32), pos = (uint32_t)top;
        int32_t nx = nxt[pos];
        if (ids[pos] < 0 || nx < 0)
            continue;
        const merge_slot *m = merge_find(t, ids[pos], ids[nx]);
        if (!m || m->rank != rank)
            continue; /* a rank names one pair, so an equal rank means the same pair */
        ids[pos] = m->result;
        ids[nx] = -1;
        nxt[pos] = nxt[nx];
        if (nxt[nx] >= 0)
            prv[nxt[nx]] = (int32_t)pos;
        if (prv[pos] >= 0 && (m = merge_find(t, ids[prv[pos]], ids[pos])))
            heap_push(heap, &nh, (uint64_t)m->rank << 32 | (uint32_t)prv[pos]);
        if (nxt[pos] >= 0 && (m = merge_find(t, ids[pos], ids[nxt[pos]])))
            heap_push(heap, &nh, (uint64_t)m->rank << 32 | pos);
    }
    size_t out = 0;
    for (int32_t k = 0; k >= 0; k = nxt[k]) /* symbol 0 is never merged away: merges keep the left */
        ids[out++] = ids[k];
    return out;
}

/* Merge sc->ids[0, n) in place; returns the new count. */
static size_t bpe_merge(const eng_tokenizer *t, tok_scratch *sc, size_t n)
{
    if (n < 2)
        return n;
    if (n > BPE_SMALL)
        return bpe_merge_heap(t, sc, n);
    int32_t *ids = sc->ids;
    uint32_t rank[BPE_SMALL]; /* rank[k]: of pair (k, k + 1); UINT32_MAX = no merge */
    int32_t res[BPE_SMALL];
    for (size_t k = 0; k + 1 < n; k++) {
        const merge_slot *m = merge_find(t, ids[k], ids[k + 1]);
        rank[k] = m ? m->rank : UINT32_MAX;
        res[k] = m ? m->result : -1;
    }
    for (;;) {
        size_t best = 0;
        uint32_t br = UINT32_MAX;
        for (size_t k = 0; k + 1 < n; k++)
            if (rank[k] < br) {
                br = rank[k];
                best = k;
            }
        if (br == UINT32_MAX)
            break;
        ids[best] = res[best];
        /* drop symbol best + 1 and pair best; pairs after it move down one */
        memmove(ids + best + 1, ids + best + 2, (n - best - 2) * sizeof *ids);
        if (n >= best + 3) {
            memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof *rank);
            memmove(res + best + 1, res + best + 2, (n - best - 3) * sizeof *res);
        }
        n--;
        for (size_t k = best > 0 ? best - 1 : 0; k <= best && k + 1 < n; k++) {
            const merge_slot *m = merge_find(t, ids[k], ids[k + 1]);
            rank[k] = m ? m->rank : UINT32_MAX;
            res[k] = m ? m->result : -1;
        }
    }
    return n;
}

/* ---- byte-level BPE ----------------------------------------------------------------------------- */

/* GPT-2's byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68
 * bytes for U+0100.. in byte order. Returns the code point for byte b. */
static uint32_t byte_to_unicode(unsigned b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    uint32_t n = 0;
    for (unsigned c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            n++;
    return 256 + n;
}

static size_t put_utf8(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Encode one pre-token w[0, n). */
static int bpe_word(const eng_tokenizer *t, tok_scratch *sc, const uint8_t *w, size_t n, tok_out *o)
{
    if (n == 1 && t->byte_tok[w[0]] >= 0) {
        out_push(o, t->byte_tok[w[0]]);
        return 0;
    }
    if (scratch_reserve(sc, n))
        return ENG_ENOMEM;
    if (t->ignore_merges) {
        size_t len = 0;
        for (size_t k = 0; k < n; k++) {
            memcpy(sc->str + len, t->byte_chr[w[k]], 2);
            len += t->byte_chr_len[w[k]];
        }
        int32_t id = tok_find(t, sc->str, len);
        uint8_t ty = id >= 0 ? tok_type(t, (uint32_t)id) : SNAP_TOKT_CONTROL;
        if (ty != SNAP_TOKT_CONTROL && ty != SNAP_TOKT_UNUSED) {
            out_push(o, id);
            return 0;
        }
    }
    /* A byte whose character is not in the vocab is dropped, as HF does with no unk token
     * (SmolLM2 lacks 21 bytes: some controls and bytes that never occur in UTF-8). */
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (t->byte_tok[w[k]] >= 0)
            sc->ids[m++] = t->byte_tok[w[k]];
    m = bpe_merge(t, sc, m);
    for (size_t k = 0; k < m; k++)
        out_push(o, sc->ids[k]);
    return 0;
}

/* Pre-tokenize s[0, n) (text between added tokens) and encode each pre-token. */
static int encode_bpe_text(const eng_tokenizer *t, tok_scratch *sc, const uint8_t *s, size_t n, tok_out *o)
{
    size_t i = 0, seg_end = 0;
    while (i < n) {
        size_t j, l;
        switch (t->v.pre) {
        case SNAP_PRE_SMOLLM:
            /* HF Digits(individual_digits): every numeric character is a piece of its own,
             * and the GPT-2 regex runs on the text between them as if it ended there. */
            if (i >= seg_end) {
                if (class_at(s, i, n, &l) == ENG_UC_NUMBER) {
                    j = i + l;
                    break;
                }
                seg_end = i;
                while (seg_end < n && class_at(s, seg_end, n, &l) != ENG_UC_NUMBER)
                    seg_end += l;
            }
            j = pre_gpt2(s, i, seg_end);
            break;
        case SNAP_PRE_LLAMA3:
            j = pre_llama3(s, i, n, 3);
            break;
        case SNAP_PRE_QWEN2:
            j = pre_llama3(s, i, n, 1);
            break;
        default:
            j = pre_gpt2(s, i, n);
            break;
        }
        int rc = bpe_word(t, sc, s + i, j - i, o);
        if (rc)
            return rc;
        i = j;
    }
    return 0;
}

/* ---- SentencePiece ----------------------------------------------------------------------------- */

/* Tokens text may merge into: not control, unknown, unused or byte tokens (SentencePiece
 * never produces those from text; llama.cpp's lookup would, e.g. "<s>" from "<", "s", ">"). */
static inline bool spm_mergeable(const eng_tokenizer *t, int32_t id)
{
    uint8_t ty = tok_type(t, (uint32_t)id);
    return ty == SNAP_TOKT_NORMAL || ty == SNAP_TOKT_USER_DEFINED;
}

/* A <0xXX> token may stand for its byte unless the vocab made it a control token. */
static inline bool spm_byte_ok(const eng_tokenizer *t, int32_t id)
{
    return tok_type(t, (uint32_t)id) != SNAP_TOKT_CONTROL;
}

/* Bytes of an unmatched character as <0xXX> tokens (unk if the vocab lacks one). */
static void spm_bytes(const eng_tokenizer *t, const uint8_t *p, size_t n, tok_out *o)
{
    for (size_t k = 0; k < n; k++) {
        int32_t id = t->byte_tok[p[k]] >= 0 ? t->byte_tok[p[k]] : t->v.unk_id;
        if (id >= 0)
            out_push(o, id);
    }
}

typedef struct spm_bigram {
    float score;
    int32_t left, right;
    uint32_t size;     /* bytes of the merged text: stale if the symbols changed since */
} spm_bigram;

static inline bool bigram_before(const spm_bigram *a, const spm_bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void bigram_push(spm_bigram *h, size_t *n, spm_bigram v)
{
    size_t i = (*n)++;
    while (i > 0 && bigram_before(&v, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static spm_bigram bigram_pop(spm_bigram *h, size_t *n)
{
    spm_bigram top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && bigram_before(&h[c + 1], &h[c]))
            c++;
        if (!bigram_before(&h[c], &v))
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = v;
    return top;
}

static void spm_try_bigram(const eng_tokenizer *t, const tok_scratch *sc, const uint8_t *buf, int32_t left,
                           int32_t right, spm_bigram *heap, size_t *nh)
{
    if (left < 0 || right < 0)
        return;
    uint32_t size = sc->len[left] + sc->len[right];
    int32_t id = tok_find(t, (const char *)buf + sc->start[left], size);
    if (id < 0 || !spm_mergeable(t, id))
        return;
    spm_bigram b = {t->v.scores[id], left, right, size};
    bigram_push(heap, nh, b);
}

/* llama.cpp's llm_tokenizer_spm: merge the adjacent pair whose union is the token of the
 * highest score (leftmost on ties) while any union is a token. */
static int spm_by_score(const eng_tokenizer *t, tok_scratch *sc, const uint8_t *buf, size_t n, tok_out *o)
{
    size_t m = 0, l;
    for (size_t i = 0; i < n; i += l) {
        utf8_at(buf, i, n, &l);
        sc->start[m] = (uint32_t)i;
        sc->len[m] = (uint32_t)l;
        sc->prv[m] = (int32_t)m - 1;
        sc->nxt[m] = i + l < n ? (int32_t)m + 1 : -1;
        m++;
    }
    /* every merge adds at most two bigrams to the m - 1 first ones */
    spm_bigram *heap = malloc((3 * m + 1) * sizeof *heap);
    if (!heap)
        return ENG_ENOMEM;
    size_t nh = 0;
    for (size_t k = 1; k < m; k++)
        spm_try_bigram(t, sc, buf, (int32_t)k - 1, (int32_t)k, heap, &nh);
    while (nh) {
        spm_bigram b = bigram_pop(heap, &nh);
        uint32_t *len = sc->len;
        if (len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.size)
            continue;
        len[b.left] += len[b.right];
        len[b.right] = 0;
        sc->nxt[b.left] = sc->nxt[b.right];
        if (sc->nxt[b.right] >= 0)
            sc->prv[sc->nxt[b.right]] = b.left;
        spm_try_bigram(t, sc, buf, sc->prv[b.left], b.left, heap, &nh);
        spm_try_bigram(t, sc, buf, b.left, sc->nxt[b.left], heap, &nh);
    }
    free(heap);
    for (int32_t k = m ? 0 : -1; k >= 0; k = sc->nxt[k]) {
        const uint8_t *p = buf + sc->start[k];
        int32_t id = tok_find(t, (const char *)p, sc->len[k]);
        if (id >= 0 && spm_mergeable(t, id))
            out_push(o, id);
        else /* only single characters are left unmatched: merges always form tokens */
            spm_bytes(t, p, sc->len[k], o);
    }
    return 0;
}

/* Hugging Face BPE with byte_fallback: characters (or their byte tokens) merged by rank. */
static int spm_by_rank(const eng_tokenizer *t, tok_scratch *sc, const uint8_t *buf, size_t n, tok_out *o)
{
    size_t m = 0, l;
    for (size_t i = 0; i < n; i += l) {
        utf8_at(buf, i, n, &l);
        int32_t id = tok_find(t, (const char *)buf + i, l);
        if (id >= 0 && spm_mergeable(t, id)) {
            sc->ids[m++] = id;
            continue;
        }
        bool all = true;
        for (size_t k = 0; k < l; k++)
            all = all && t->byte_tok[buf[i + k]] >= 0;
        if (all) {
            for (size_t k = 0; k < l; k++)
                sc->ids[m++] = t->byte_tok[buf[i + k]];
        } else if (t->v.unk_id >= 0) {
            sc->ids[m++] = t->v.unk_id;
        }
    }
    m = bpe_merge(t, sc, m);
    for (size_t k = 0; k < m; k++)
        out_push(o, sc->ids[k]);
    return 0;
}

/* Metaspace's split: the word that starts at w0 ends where the next "▁" begins (or at len).
 * A byte-wise search is exact: "▁"'s first byte, 0xE2, is never inside another character. */
static size_t spm_word_end(const uint8_t *buf, size_t w0, size_t len)
{
    for (size_t k = w0 + 1; k + 3 <= len; k++)
        if (memcmp(buf + k, SPM_SPACE, 3) == 0)
            return k;
    return len;
}

static int encode_spm_text(const eng_tokenizer *t, tok_scratch *sc, const uint8_t *s, size_t n, bool prefix,
                           tok_out *o)
{
    /* the text with "▁" for spaces: at most three bytes for each, plus the prefix */
    size_t cap = 3 * n + 3;
    int rc = scratch_reserve(sc, cap);
    if (rc)
        return rc;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return ENG_ENOMEM;
    size_t len = 0;
    if (prefix) {
        memcpy(buf, SPM_SPACE, 3);
        len = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + len, SPM_SPACE, 3);
            len += 3;
        } else {
            buf[len++] = s[i];
        }
    }
    for (size_t w0 = 0, w1; w0 < len && rc == 0; w0 = w1) {
        w1 = t->v.spm_split ? spm_word_end(buf, w0, len) : len;
        rc = t->spm_scores ? spm_by_score(t, sc, buf + w0, w1 - w0, o) : spm_by_rank(t, sc, buf + w0, w1 - w0, o);
    }
    free(buf);
    return rc;
}

/* ---- encode ------------------------------------------------------------------------------------ */

/* The leftmost-longest added token at or after *pos in s[0, n), or NULL. */
static const added_tok *next_added(const eng_tokenizer *t, const uint8_t *s, size_t n, size_t *pos,
                                   int parse_special)
{
    for (size_t p = *pos; p < n; p++) {
        uint32_t lo = t->added_lo[s[p]], hi = t->added_hi[s[p]];
        for (uint32_t k = lo; k < hi; k++) {
            const added_tok *a = &t->added[k];
            if ((a->special && !parse_special) || a->len > n - p || memcmp(s + p, a->text, a->len) != 0)
                continue;
            *pos = p;
            return a;
        }
    }
    return NULL;
}

long eng_tokenize(const eng_tokenizer *t, const char *text, size_t len, int add_special, int parse_special,
                  int32_t *ids, size_t cap)
{
    if (!t || (!text && len))
        return ENG_EINVAL;
    const uint8_t *s = (const uint8_t *)text;
    tok_out o = {ids, ids ? cap : 0, 0};
    tok_scratch sc = {0};
    int rc = 0;
    if (add_special && t->v.add_bos && t->v.bos_id >= 0)
        out_push(&o, t->v.bos_id);
    bool after_added = true; /* SentencePiece's space prefix: at the start and after added tokens */
    uint8_t rule = t->v.model == SNAP_TOK_SPM ? t->v.add_space_prefix : SNAP_SPACE_NONE;
    size_t i = 0;
    while (i < len && rc == 0) {
        size_t p = i;
        const added_tok *a = t->n_added ? next_added(t, s, len, &p, parse_special) : NULL;
        if (!a)
            p = len;
        if (p > i) {
            bool spaced = s[i] == ' ' || (p - i >= 3 && memcmp(s + i, SPM_SPACE, 3) == 0); /* Metaspace: no second */
            bool prefix = rule == SNAP_SPACE_LEGACY ? after_added
                          : rule == SNAP_SPACE_ALWAYS ? after_added && !spaced
                          : rule == SNAP_SPACE_FIRST ? i == 0 && !spaced
                          : false;
            if (t->v.model == SNAP_TOK_SPM)
                rc = encode_spm_text(t, &sc, s + i, p - i, prefix, &o);
            else
                rc = encode_bpe_text(t, &sc, s + i, p - i, &o);
            after_added = false;
        }
        if (a) {
            out_push(&o, a->id);
            after_added = true;
            p += a->len;
        }
        i = p;
    }
    if (add_special && t->v.add_eos && t->v.eos_id >= 0)
        out_push(&o, t->v.eos_id);
    scratch_free(&sc);
    return rc ? rc : (long)o.n;
}

/* ---- create / destroy -------------------------------------------------------------------------- */

static int cmp_added(const void *pa, const void *pb)
{
    const added_tok *a = pa, *b = pb;
    uint8_t fa = (uint8_t)a->text[0], fb = (uint8_t)b->text[0];
    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1; /* longest first: leftmost-longest matching */
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Bytes token `id` stands for in output, written to out (room for its text's length). */
static size_t decode_token(const eng_tokenizer *t, uint32_t id, const int16_t *uni_to_byte, char *out)
{
    size_t n;
    const char *text = tok_text(t, id, &n);
    uint8_t ty = tok_type(t, id);
    if (ty == SNAP_TOKT_CONTROL || ty == SNAP_TOKT_UNKNOWN || ty == SNAP_TOKT_UNUSED)
        return 0;
    if (t->v.model == SNAP_TOK_SPM) {
        unsigned hex;
        char tail;
        if (ty == SNAP_TOKT_BYTE && n == 6 && sscanf(text, "<0x%2x%c", &hex, &tail) == 2 && tail == '>') {
            out[0] = (char)hex;
            return 1;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (i + 3 <= n && memcmp(text + i, SPM_SPACE, 3) == 0) {
                out[k++] = ' ';
                i += 2;
            } else {
                out[k++] = text[i];
            }
        }
        return k;
    }
    /* Byte-level: undo the byte-to-unicode mapping. A token with a character outside the
     * alphabet (user-defined tokens are spelled raw) is output as spelled, as HF does. */
    if (ty != SNAP_TOKT_USER_DEFINED) {
        size_t k = 0, l;
        for (size_t i = 0; i < n; i += l) {
            uint32_t cp = utf8_at((const uint8_t *)text, i, n, &l);
            if (cp >= 324 || uni_to_byte[cp] < 0)
                goto raw;
            out[k++] = (char)uni_to_byte[cp];
        }
        return k;
    }
raw:
    memcpy(out, text, n);
    return n;
}

int eng_tokenizer_create(const snap_vocab *v, eng_tokenizer **out, eng_err *err)
{
    if (!v || !out)
        return eng_fail(err, ENG_EINVAL, "eng_tokenizer_create: NULL argument");
    *out = NULL;
    if (v->model != SNAP_TOK_BPE && v->model != SNAP_TOK_SPM)
        return eng_fail(err, ENG_EUNSUPPORTED, "tokenizer: unknown model %u", v->model);
    if (v->model == SNAP_TOK_BPE && (v->pre < SNAP_PRE_GPT2 || v->pre > SNAP_PRE_QWEN2))
        return eng_fail(err, ENG_EUNSUPPORTED, "tokenizer: unknown byte-level pre-tokenizer %u", v->pre);
    if (v->n_tokens == 0 || v->n_tokens > (1u << 30) || !v->offsets || !v->blob)
        return eng_fail(err, ENG_EINVAL, "tokenizer: empty or oversized vocabulary (%u tokens)", v->n_tokens);
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (v->offsets[i + 1] < v->offsets[i])
            return eng_fail(err, ENG_EINVAL, "tokenizer: token offsets decrease at id %u", i);

    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return eng_fail(err, ENG_ENOMEM, "tokenizer: out of memory");
    t->v = *v;
    uint32_t n = v->n_tokens;
    t->spm_scores = v->model == SNAP_TOK_SPM && v->scores != NULL;
    /* Llama 3's tokenizer.json sets ignore_merges; GPT-2, SmolLM and Qwen2 leave it off. */
    t->ignore_merges = v->model == SNAP_TOK_BPE && v->pre == SNAP_PRE_LLAMA3;

    /* token text -> id; the lowest id wins when a vocab spells two tokens alike */
    uint32_t slots = 16;
    while (slots < 2 * (uint64_t)n)
        slots *= 2;
    t->tok_mask = slots - 1;
    t->tok_slots = calloc(slots, sizeof *t->tok_slots);
    if (!t->tok_slots)
        goto nomem;
    for (uint32_t id = 0; id < n; id++) {
        size_t len;
        const char *text = tok_text(t, id, &len);
        if (tok_find(t, text, len) >= 0)
            continue;
        uint32_t i = (uint32_t)str_hash(text, len) & t->tok_mask;
        while (t->tok_slots[i])
            i = (i + 1) & t->tok_mask;
        t->tok_slots[i] = id + 1;
    }

    /* merges: (left, right) -> rank and result; the first (lowest) rank of a repeated pair
     * wins, and a merge whose result is not a token is dropped */
    uint32_t bits = 4;
    while ((1ull << bits) < 2 * (uint64_t)v->n_merges)
        bits++;
    t->merge_bits = bits;
    t->merge_slots = calloc((size_t)1 << bits, sizeof *t->merge_slots);
    size_t max_len = 0;
    for (uint32_t id = 0; id < n; id++)
        if (v->offsets[id + 1] - v->offsets[id] > max_len)
            max_len = v->offsets[id + 1] - v->offsets[id];
    char *cat = malloc(2 * max_len + 1);
    if (!t->merge_slots || !cat) {
        free(cat);
        goto nomem;
    }
    for (uint32_t r = 0; r < v->n_merges && v->merges; r++) {
        uint32_t a = v->merges[2 * r], b = v->merges[2 * r + 1];
        if (a >= n || b >= n)
            continue;
        size_t la, lb;
        const char *ta = tok_text(t, a, &la), *tb = tok_text(t, b, &lb);
        memcpy(cat, ta, la);
        memcpy(cat + la, tb, lb);
        int32_t res = tok_find(t, cat, la + lb);
        if (res < 0)
            continue;
        uint64_t key = ((uint64_t)a << 32 | b) + 1;
        uint32_t mask = (1u << bits) - 1, i = merge_index(key, bits);
        while (t->merge_slots[i].key && t->merge_slots[i].key != key)
            i = (i + 1) & mask;
        if (t->merge_slots[i].key)
            continue;
        t->merge_slots[i] = (merge_slot){key, r, res};
    }
    free(cat);

    /* the token of each byte */
    for (unsigned b = 0; b < 256; b++) {
        char buf[8];
        size_t len;
        if (v->model == SNAP_TOK_SPM) {
            len = (size_t)snprintf(buf, sizeof buf, "<0x%02X>", b);
        } else {
            len = put_utf8(buf, byte_to_unicode(b));
            memcpy(t->byte_chr[b], buf, 2);
            t->byte_chr_len[b] = (uint8_t)len;
        }
        t->byte_tok[b] = tok_find(t, buf, len);
        if (v->model == SNAP_TOK_SPM && t->byte_tok[b] >= 0 && !spm_byte_ok(t, t->byte_tok[b]))
            t->byte_tok[b] = -1;
    }

    /* output bytes of every token */
    int16_t uni_to_byte[324];
    for (unsigned c = 0; c < 324; c++)
        uni_to_byte[c] = -1;
    for (unsigned b = 0; b < 256; b++)
        uni_to_byte[byte_to_unicode(b)] = (int16_t)b;
    t->dec_off = malloc(((size_t)n + 1) * sizeof *t->dec_off);
    t->dec_blob = malloc((size_t)v->offsets[n] + 1);
    if (!t->dec_off || !t->dec_blob)
        goto nomem;
    uint32_t pos = 0;
    for (uint32_t id = 0; id < n; id++) {
        t->dec_off[id] = pos;
        uint32_t k = (uint32_t)decode_token(t, id, uni_to_byte, t->dec_blob + pos);
        pos += k;
        if (k > t->max_dec)
            t->max_dec = k;
    }
    t->dec_off[n] = pos;

    /* added tokens: control and unknown (when parsing specials) and user-defined */
    for (int pass = 0; pass < 2; pass++) {
        uint32_t k = 0;
        for (uint32_t id = 0; id < n; id++) {
            uint8_t ty = tok_type(t, id);
            size_t len;
            const char *text = tok_text(t, id, &len);
            if (len == 0 || (ty != SNAP_TOKT_CONTROL && ty != SNAP_TOKT_UNKNOWN && ty != SNAP_TOKT_USER_DEFINED))
                continue;
            if (pass == 1)
                t->added[k] = (added_tok){text, (uint32_t)len, (int32_t)id, ty != SNAP_TOKT_USER_DEFINED};
            k++;
        }
        if (pass == 0) {
            t->n_added = k;
            if (k && !(t->added = malloc(k * sizeof *t->added)))
                goto nomem;
        }
    }
    if (t->n_added)
        qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    for (uint32_t k = 0; k < t->n_added; k++) {
        uint8_t f = (uint8_t)t->added[k].text[0];
        if (t->added_hi[f] == 0)
            t->added_lo[f] = k;
        t->added_hi[f] = k + 1;
    }
    *out = t;
    return 0;

nomem:
    eng_tokenizer_destroy(t);
    return eng_fail(err, ENG_ENOMEM, "tokenizer: out of memory for %u tokens", n);
}

void eng_tokenizer_destroy(eng_tokenizer *t)
{
    if (!t)
        return;
    free(t->tok_slots);
    free(t->merge_slots);
    free(t->dec_off);
    free(t->dec_blob);
    free(t->added);
    free(t);
}

/* ---- queries ----------------------------------------------------------------------------------- */

uint32_t eng_vocab_size(const eng_tokenizer *t)
{
    return t->v.n_tokens;
}

/* The decoded bytes of token id (in range): what it adds to output text. */
static inline const char *dec_piece(const eng_tokenizer *t, int32_t id, size_t *len)
{
    *len = t->dec_off[id + 1] - t->dec_off[id];
    return t->dec_blob + t->dec_off[id];
}

size_t eng_token_bytes(const eng_tokenizer *t, int32_t id, char *buf, size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->v.n_tokens)
        return 0;
    size_t n;
    const char *p = dec_piece(t, id, &n);
    if (buf)
        memcpy(buf, p, n < cap ? n : cap);
    return n;
}

const char *eng_token_text(const eng_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->v.n_tokens)
        return NULL;
    size_t n;
    const char *text = tok_text(t, (uint32_t)id, &n);
    if (len)
        *len = n;
    return text;
}

int32_t eng_token_lookup(const eng_tokenizer *t, const char *text, size_t len)
{
    return text || !len ? tok_find(t, text ? text : "", len) : -1;
}

int eng_token_is_control(const eng_tokenizer *t, int32_t id)
{
    if (id < 0 || (uint32_t)id >= t->v.n_tokens)
        return 0;
    uint8_t ty = tok_type(t, (uint32_t)id);
    return ty == SNAP_TOKT_CONTROL || ty == SNAP_TOKT_UNKNOWN;
}

int32_t eng_token_bos(const eng_tokenizer *t)
{
    return t->v.bos_id;
}

int32_t eng_token_eos(const eng_tokenizer *t)
{
    return t->v.eos_id;
}

/* ---- decode ------------------------------------------------------------------------------------ */

/* SentencePiece output starts with the space the prefix added: HF's Strip decoder and
 * llama.cpp both drop it once, from the first piece that has text. */
static inline bool strips_first_space(const eng_tokenizer *t)
{
    return t->v.model == SNAP_TOK_SPM && t->v.add_space_prefix;
}

/* While *first is set, the first piece with text clears it and, where the tokenizer strips,
 * loses a leading space. */
static inline void skip_first_space(const eng_tokenizer *t, int *first, const char **p, size_t *len)
{
    if (!*len || !*first)
        return;
    *first = 0;
    if (strips_first_space(t) && (*p)[0] == ' ')
        (*p)++, (*len)--;
}

void eng_detok_init(eng_detok *d, int follows_text)
{
    memset(d, 0, sizeof *d);
    d->first = !follows_text;
}

size_t eng_detok_max(const eng_tokenizer *t)
{
    /* every byte may become a 3-byte U+FFFD, and up to 3 held-back bytes come first */
    return 3 * ((size_t)t->max_dec + 4);
}

/* Output: n counts every byte written or not (what a whole decode needs); out takes the
 * first cap. */
typedef struct detok_w {
    char *out;
    size_t cap, n;
} detok_w;

static inline void w_bytes(detok_w *w, const void *p, size_t len)
{
    if (w->n < w->cap)
        memcpy(w->out + w->n, p, len < w->cap - w->n ? len : w->cap - w->n);
    w->n += len;
}

static inline void w_replacement(detok_w *w)
{
    w_bytes(w, "\xef\xbf\xbd", 3);
}

/* Bytes a sequence led by `lead` needs in all (lead must be C2..F4). */
static inline uint32_t utf8_need(uint8_t lead)
{
    return lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

/* Feed one byte through the hold-back state. Well-formed characters go out when complete;
 * an ill-formed sequence becomes one U+FFFD per maximal subpart (Unicode's recommended
 * practice, what HF's from_utf8_lossy does), so the stream is always valid UTF-8. */
static void detok_byte(eng_detok *d, uint8_t b, detok_w *w)
{
    if (d->n_pending) {
        uint8_t lead = d->pending[0];
        uint8_t lo = 0x80, hi = 0xBF;
        if (d->n_pending == 1) {
            lo = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
            hi = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
        }
        if (b >= lo && b <= hi) {
            d->pending[d->n_pending++] = b;
            if (d->n_pending == utf8_need(lead)) {
                w_bytes(w, d->pending, d->n_pending);
                d->n_pending = 0;
            }
            return;
        }
        w_replacement(w);
        d->n_pending = 0;
    }
    if (b < 0x80)
        w_bytes(w, &b, 1);
    else if (b >= 0xC2 && b <= 0xF4)
        d->pending[d->n_pending++] = b;
    else
        w_replacement(w);
}

size_t eng_detok_push(const eng_tokenizer *t, eng_detok *d, int32_t id, char *out, size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->v.n_tokens)
        return 0;
    size_t len;
    const char *p = dec_piece(t, id, &len);
    skip_first_space(t, &d->first, &p, &len);
    detok_w w = {out, cap, 0};
    for (size_t i = 0; i < len; i++)
        detok_byte(d, (uint8_t)p[i], &w);
    return w.n;
}

size_t eng_detok_flush(eng_detok *d, char *out, size_t cap)
{
    detok_w w = {out, cap, 0};
    if (d->n_pending)
        w_replacement(&w);
    d->n_pending = 0;
    return w.n;
}

size_t eng_detokenize(const eng_tokenizer *t, const int32_t *ids, size_t n, int keep_special, char *out, size_t cap)
{
    detok_w w = {out, cap, 0};
    int first = 1; /* only the start of the whole text loses its space */
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->v.n_tokens)
            continue;
        size_t len;
        const char *p = keep_special && eng_token_is_control(t, ids[i]) ? tok_text(t, (uint32_t)ids[i], &len)
                                                                          : dec_piece(t, ids[i], &len);
        skip_first_space(t, &first, &p, &len);
        w_bytes(&w, p, len);
    }
    return w.n;
}
