/* chat.c -- chat templates rendered in C.
 *
 * Models ship their prompt format as a Jinja template (tokenizer.chat_template). thaw does not
 * embed a Jinja engine: it recognises the family from the template text and renders that
 * family's format here, byte for byte as Hugging Face's apply_chat_template would with the
 * model's template. tests/ref/make_chat_fixtures.py renders the same conversations with jinja2
 * and the real templates; tests/test_chat.c compares.
 *
 * Families and the templates they reproduce:
 *   chatml   SmolLM2, Qwen2/2.5: "<|im_start|>{role}\n{content}<|im_end|>\n" per message. A
 *            template that adds a default system prompt when the conversation has none keeps
 *            that text in ct->default_system (read from the template itself).
 *   llama3   Meta-Llama-3-*-Instruct: BOS, then per message a header and the content trimmed
 *            (Jinja's `trim`, i.e. Python's str.strip(): Unicode whitespace).
 *   llama3.1 Llama-3.1/3.2/3.3-*-Instruct (templates that write "Cutting Knowledge Date"): as
 *            llama3, but a system block always comes first: the knowledge and today's dates,
 *            then the conversation's system message (trimmed) if it starts with one. "Today" is
 *            the template's date_string default ("26 Jul 2024" in 3.1 and 3.3), or the local
 *            date when the template calls strftime_now (3.2), as transformers renders it. Tool
 *            definitions and tool calls are not rendered (thaw has no tools).
 *   llama2   Llama-2-*-chat-hf: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {a} </s>",
 *            each turn stripped as a whole (so an empty first user message eats the "\n\n").
 *   mistral  Mistral-7B-Instruct-v0.1/v0.2 and Mixtral-8x7B-Instruct-v0.1 as first published:
 *            "<s>[INST] {user} [/INST]{assistant}</s>[INST] ...". Their template has no system
 *            role; thaw folds a leading system message into the first user turn as
 *            "{system}\n\n{user}", as Mistral's later templates do.
 *
 * Deliberate differences from the Jinja templates (all refusals, never different bytes):
 * an empty conversation, a role other than system/user/assistant, and for llama2/mistral any
 * role order other than [system] user assistant user ... are ENG_EINVAL. (Llama 2's template
 * silently drops a system message at an odd position; Qwen2.5's raises on an empty list.)
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"


/* ---------------------------------------------------------------------------------------
 * Output: count every byte, copy what fits (the caller sizes its buffer from the count).
 * --------------------------------------------------------------------------------------- */
typedef struct out_buf {
    char *p;
    size_t cap;
    size_t len;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - o->len;
        memcpy(o->p + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void puts_(out_buf *o, const char *s) { put(o, s, strlen(s)); }

/* ---------------------------------------------------------------------------------------
 * Python's str.strip(): the templates strip with Jinja's `trim` / `.strip()`, which remove
 * every code point Python calls whitespace, not only ASCII. These are all of them (at most
 * three bytes in UTF-8). Invalid UTF-8 is never whitespace.
 * --------------------------------------------------------------------------------------- */
static size_t py_space_len(const unsigned char *p, size_t n)
{
    if (n == 0)
        return 0;
    unsigned c = p[0];
    if (c < 0x80)
        return (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) ? 1 : 0;
    if (c == 0xc2 && n >= 2)
        return (p[1] == 0x85 || p[1] == 0xa0) ? 2 : 0; /* U+0085, U+00A0 */
    if (n < 3)
        return 0;
    if (c == 0xe1 && p[1] == 0x9a && p[2] == 0x80) /* U+1680 */
        return 3;
    if (c == 0xe2 && p[1] == 0x80 &&
        ((p[2] >= 0x80 && p[2] <= 0x8a) || p[2] == 0xa8 || p[2] == 0xa9 || p[2] == 0xaf))
        return 3; /* U+2000-200A, U+2028, U+2029, U+202F */
    if (c == 0xe2 && p[1] == 0x81 && p[2] == 0x9f) /* U+205F */
        return 3;
    if (c == 0xe3 && p[1] == 0x80 && p[2] == 0x80) /* U+3000 */
        return 3;
    return 0;
}

/* Length of the whitespace code point that ends s[0..n), or 0. */
static size_t py_space_len_back(const unsigned char *s, size_t n)
{
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (py_space_len(s + n - k, k) == k)
            return k;
    return 0;
}

void eng_chat_strip(const char *s, size_t n, size_t *begin, size_t *end)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t b = 0, e = n, l;
    while (b < n && (l = py_space_len(u + b, n - b)) > 0)
        b += l;
    while (e > b && (l = py_space_len_back(u, e)) > 0)
        e -= l;
    *begin = b, *end = e;
}

typedef struct seg {
    const char *s;
    size_t n;
} seg;

/* Emit the concatenation of segs[] stripped of leading and trailing whitespace, as Python's
 * (a + b + c).strip() would. */
static void put_stripped(out_buf *o, const seg *segs, int n_segs)
{
    int ks = 0, ke = n_segs - 1;
    size_t ps = 0, pe = 0, end_ks, start_ke;
    for (; ks < n_segs; ks++) { /* the first segment that is not all whitespace, from its first non-space */
        eng_chat_strip(segs[ks].s, segs[ks].n, &ps, &end_ks);
        if (ps < segs[ks].n)
            break;
    }
    if (ks == n_segs)
        return; /* all whitespace */
    for (;; ke--) { /* the last one, to its last non-space (segment ks at the latest) */
        eng_chat_strip(segs[ke].s, segs[ke].n, &start_ke, &pe);
        if (start_ke < segs[ke].n)
            break;
    }
    for (int k = ks; k <= ke; k++) {
        size_t b = k == ks ? ps : 0, e = k == ke ? pe : segs[k].n;
        put(o, segs[k].s + b, e - b);
    }
}

static void put_stripped1(out_buf *o, const char *s)
{
    seg g = {s, strlen(s)};
    put_stripped(o, &g, 1);
}

/* ---------------------------------------------------------------------------------------
 * Recognising the family, and ChatML's default system prompt
 * --------------------------------------------------------------------------------------- */
static const char *const kind_names[ENG_CHAT_N_KINDS] = {NULL, "chatml", "llama3", "llama2", "mistral", "llama3.1"};
/* the names above, as the messages list them */
#define KIND_LIST "chatml, llama3, llama3.1, llama2, mistral"
#define KIND_CHOICES "chatml|llama3|llama3.1|llama2|mistral"

const char *eng_chat_kind_name(int kind)
{
    if (kind >= ENG_CHAT_CHATML && kind < ENG_CHAT_N_KINDS)
        return kind_names[kind];
    return "unknown";
}

/* Undo a Jinja (Python) string literal's escapes into out (cap includes the NUL). Returns 0,
 * or -1 when it does not fit. */
static int unescape(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            char e = s[++i];
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '\\': case '\'': case '"': c = e; break;
            default: /* Python keeps unknown escapes as written */
                if (o + 1 >= cap)
                    return -1;
                out[o++] = '\\';
                c = e;
            }
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = c;
    }
    out[o] = 0;
    return 0;
}

/* Find the literal system block the template emits when the conversation has none:
 * a string literal '<|im_start|>system\n TEXT <|im_end|>' with no concatenation inside
 * (the block that carries messages[0]['content'] closes its quote before <|im_end|>).
 * The newline may be written as a real newline or as the escape \n. */
static int chatml_default_system(const char *text, char *out, size_t cap, eng_err *err)
{
    static const char head[] = "<|im_start|>system";
    static const char tail[] = "<|im_end|>";
    out[0] = 0;
    for (const char *p = strstr(text, head); p; p = strstr(p + 1, head)) {
        if (p == text || (p[-1] != '\'' && p[-1] != '"'))
            continue;
        char quote = p[-1];
        const char *q = p + sizeof head - 1;
        if (q[0] == '\n')
            q += 1;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *e = strstr(q, tail);
        if (!e)
            continue;
        int closed = 0;
        for (const char *c = q; c < e; c++) {
            if (*c == '\\' && c + 1 < e)
                c++;
            else if (*c == quote)
                closed = 1;
        }
        if (closed)
            continue;
        if (unescape(q, (size_t)(e - q), out, cap) != 0) {
            out[0] = 0;
            eng_fail(err, ENG_EINVAL, "the chat template's default system prompt is longer than %zu bytes", cap - 1);
            return ENG_EUNSUPPORTED;
        }
        return 0;
    }
    return 0;
}

/* Llama 3.1's "Today Date:": the literal the template sets date_string to when the caller
 * passes none (`set date_string = "26 Jul 2024"`), that date when the template has no such
 * literal (or none was given), and today's when it calls strftime_now. */
static void llama31_date(eng_chat_template *ct, const char *text)
{
    strcpy(ct->date, "26 Jul 2024");
    if (!text)
        return;
    ct->date_today = strstr(text, "strftime_now") != NULL;
    static const char set[] = "set date_string = ";
    for (const char *p = strstr(text, set); p; p = strstr(p + 1, set)) {
        const char *q = p + strlen(set), *e; /* the first quoted literal (3.2 sets strftime_now's first) */
        if ((*q == '"' || *q == '\'') && (e = strchr(q + 1, *q)) && (size_t)(e - q - 1) < sizeof ct->date) {
            memcpy(ct->date, q + 1, (size_t)(e - q - 1));
            ct->date[e - q - 1] = 0;
            return;
        }
    }
}

static void set_tokens(eng_chat_template *ct)
{
    switch (ct->kind) {
    case ENG_CHAT_LLAMA3:
    case ENG_CHAT_LLAMA31:
        strcpy(ct->bos, "<|begin_of_text|>");
        break;
    case ENG_CHAT_LLAMA2:
    case ENG_CHAT_MISTRAL:
        strcpy(ct->bos, "<s>");
        strcpy(ct->eos, "</s>");
        break;
    default:
        break;
    }
}

int eng_chat_template_init(eng_chat_template *ct, const char *template_text, const char *override_name,
                           eng_err *err)
{
    memset(ct, 0, sizeof *ct);
    if (override_name) {
        for (int k = ENG_CHAT_CHATML; k < ENG_CHAT_N_KINDS; k++)
            if (strcmp(override_name, kind_names[k]) == 0)
                ct->kind = k;
        if (!ct->kind) {
            eng_fail(err, ENG_EINVAL, "--chat-template: unknown template '%.64s' (valid: " KIND_LIST ")",
                    override_name);
            return ENG_EINVAL;
        }
    } else if (template_text && strstr(template_text, "<|im_start|>")) {
        ct->kind = ENG_CHAT_CHATML;
    } else if (template_text && strstr(template_text, "<|start_header_id|>")) {
        ct->kind = strstr(template_text, "Cutting Knowledge Date") ? ENG_CHAT_LLAMA31 : ENG_CHAT_LLAMA3;
    } else if (template_text && strstr(template_text, "<<SYS>>")) {
        ct->kind = ENG_CHAT_LLAMA2;
    } else if (template_text && strstr(template_text, "[INST]")) {
        ct->kind = ENG_CHAT_MISTRAL;
    } else {
        eng_fail(err, ENG_EINVAL, "%s; choose one with --chat-template " KIND_CHOICES,
                template_text && template_text[0] ? "unrecognised chat template" : "the model has no chat template");
        return ENG_EUNSUPPORTED;
    }
    set_tokens(ct);
    if (ct->kind == ENG_CHAT_LLAMA31)
        llama31_date(ct, template_text); /* also under the override: the model's template says which date */
    if (ct->kind == ENG_CHAT_CHATML && template_text) {
        int rc = chatml_default_system(template_text, ct->default_system, sizeof ct->default_system, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Rendering
 * --------------------------------------------------------------------------------------- */
enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

static int role_of(const char *r)
{
    if (!r)
        return -1;
    if (strcmp(r, "system") == 0)
        return ROLE_SYSTEM;
    if (strcmp(r, "user") == 0)
        return ROLE_USER;
    if (strcmp(r, "assistant") == 0)
        return ROLE_ASSISTANT;
    return -1;
}

/* A NULL content (an assistant turn that only called tools) renders as empty. */
static const char *content_of(const eng_chat_msg *m) { return m->content ? m->content : ""; }

/* Checks roles; for the [INST] families also the order [system] user assistant user ... */
static int check_roles(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, eng_err *err)
{
    if (n == 0 || !msgs) {
        eng_fail(err, ENG_EINVAL, "empty conversation: at least one message is needed");
        return ENG_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (role_of(msgs[i].role) < 0) {
            eng_fail(err, ENG_EINVAL, "message %zu: unknown role '%.32s' (expected system, user or assistant)", i,
                    msgs[i].role ? msgs[i].role : "(null)");
            return ENG_EINVAL;
        }
    }
    if (ct->kind != ENG_CHAT_LLAMA2 && ct->kind != ENG_CHAT_MISTRAL)
        return 0;
    size_t i0 = role_of(msgs[0].role) == ROLE_SYSTEM ? 1 : 0;
    for (size_t i = i0; i < n; i++) {
        int want = (i - i0) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        if (role_of(msgs[i].role) != want) {
            eng_fail(err, ENG_EINVAL,
                    "message %zu: expected role '%s', got '%s' (%s needs an optional system message, "
                    "then user and assistant alternating, starting with user)",
                    i, want == ROLE_USER ? "user" : "assistant", msgs[i].role, eng_chat_kind_name(ct->kind));
            return ENG_EINVAL;
        }
    }
    return 0;
}

static void render_chatml(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, int gen, out_buf *o)
{
    if (ct->default_system[0] && role_of(msgs[0].role) != ROLE_SYSTEM) {
        puts_(o, "<|im_start|>system\n");
        puts_(o, ct->default_system);
        puts_(o, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        puts_(o, "<|im_start|>");
        puts_(o, msgs[i].role);
        puts_(o, "\n");
        puts_(o, content_of(&msgs[i]));
        puts_(o, "<|im_end|>\n");
    }
    if (gen)
        puts_(o, "<|im_start|>assistant\n");
}

/* Llama 3.1's system block: the dates, then the conversation's own system message. Returns
 * the index of the first message after it. */
static size_t llama31_system(const eng_chat_template *ct, const eng_chat_msg *msgs, out_buf *o)
{
    char today[32];
    const char *date = ct->date;
    if (ct->date_today) { /* transformers' strftime_now: local time; thaw never sets a locale, so "C" names */
        time_t now = time(NULL);
        struct tm tm;
        if (localtime_r(&now, &tm) && strftime(today, sizeof today, "%d %b %Y", &tm) > 0)
            date = today;
    }
    puts_(o, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ");
    puts_(o, date);
    puts_(o, "\n\n");
    size_t i0 = 0;
    if (role_of(msgs[0].role) == ROLE_SYSTEM) {
        put_stripped1(o, content_of(&msgs[0]));
        i0 = 1;
    }
    puts_(o, "<|eot_id|>");
    return i0;
}

static void render_llama3(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, int gen, out_buf *o)
{
    puts_(o, ct->bos);
    size_t i0 = ct->kind == ENG_CHAT_LLAMA31 ? llama31_system(ct, msgs, o) : 0;
    for (size_t i = i0; i < n; i++) {
        puts_(o, "<|start_header_id|>");
        puts_(o, msgs[i].role);
        puts_(o, "<|end_header_id|>\n\n");
        put_stripped1(o, content_of(&msgs[i]));
        puts_(o, "<|eot_id|>");
    }
    if (gen)
        puts_(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* The template has no generation prompt: the text ends after [/INST] either way. */
static void render_llama2(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, out_buf *o)
{
    size_t i0 = 0;
    const char *sys = NULL;
    if (role_of(msgs[0].role) == ROLE_SYSTEM) {
        sys = content_of(&msgs[0]);
        i0 = 1;
    }
    for (size_t i = i0; i < n; i++) {
        const char *c = content_of(&msgs[i]);
        if (role_of(msgs[i].role) == ROLE_USER) {
            puts_(o, ct->bos);
            puts_(o, "[INST] ");
            if (i == i0 && sys) {
                /* the template strips "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + user as one string */
                seg g[4] = {{"<<SYS>>\n", 8}, {sys, strlen(sys)}, {"\n<</SYS>>\n\n", 11}, {c, strlen(c)}};
                put_stripped(o, g, 4);
            } else {
                put_stripped1(o, c);
            }
            puts_(o, " [/INST]");
        } else {
            puts_(o, " ");
            put_stripped1(o, c);
            puts_(o, " ");
            puts_(o, ct->eos);
        }
    }
}

static void render_mistral(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, out_buf *o)
{
    size_t i0 = 0;
    const char *sys = NULL;
    if (role_of(msgs[0].role) == ROLE_SYSTEM) {
        sys = content_of(&msgs[0]);
        i0 = 1;
    }
    puts_(o, ct->bos);
    for (size_t i = i0; i < n; i++) {
        if (role_of(msgs[i].role) == ROLE_USER) {
            puts_(o, "[INST] ");
            if (i == i0 && sys) {
                puts_(o, sys);
                puts_(o, "\n\n");
            }
            puts_(o, content_of(&msgs[i]));
            puts_(o, " [/INST]");
        } else {
            puts_(o, content_of(&msgs[i]));
            puts_(o, ct->eos);
        }
    }
}

long eng_chat_render(const eng_chat_template *ct, const eng_chat_msg *msgs, size_t n, int add_generation_prompt,
                     char *out, size_t cap, eng_err *err)
{
    int rc = check_roles(ct, msgs, n, err);
    if (rc != 0)
        return rc;
    out_buf o = {out, out ? cap : 0, 0};
    switch (ct->kind) {
    case ENG_CHAT_CHATML: render_chatml(ct, msgs, n, add_generation_prompt, &o); break;
    case ENG_CHAT_LLAMA3:
    case ENG_CHAT_LLAMA31: render_llama3(ct, msgs, n, add_generation_prompt, &o); break;
    case ENG_CHAT_LLAMA2: render_llama2(ct, msgs, n, &o); break;
    case ENG_CHAT_MISTRAL: render_mistral(ct, msgs, n, &o); break;
    default:
        eng_fail(err, ENG_EINVAL, "chat template not initialised");
        return ENG_EINVAL;
    }
    if (o.len < o.cap)
        out[o.len] = 0;
    return (long)o.len;
}
