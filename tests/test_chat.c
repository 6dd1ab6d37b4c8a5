/* test_chat.c -- engine/chat.c against jinja2 renderings of the real templates
 * (tests/data/chat/fixtures.json, written by tests/ref/make_chat_fixtures.py), plus detection,
 * overrides and the errors. */
#include <cjson/cJSON.h>
#include <time.h>

#include "engine.h"
#include "test.h"

#define FIXTURES TEST_DATA("chat/fixtures.json")
#define MAX_MSGS 16

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf)
        buf[n] = 0;
    fclose(f);
    return buf;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *find_template(const cJSON *templates, const char *name)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, templates) {
        const char *n = jstr(t, "name");
        if (n && strcmp(n, name) == 0)
            return t;
    }
    return NULL;
}

/* Shows where two renderings part, with a little context. */
static void show_diff(const char *got, size_t n_got, const char *want, size_t n_want)
{
    size_t i = 0;
    while (i < n_got && i < n_want && got[i] == want[i])
        i++;
    size_t from = i > 20 ? i - 20 : 0;
    size_t ng = n_got - from < 60 ? n_got - from : 60, nw = n_want - from < 60 ? n_want - from : 60;
    fprintf(stderr, "    differs at byte %zu (got %zu bytes, want %zu)\n      got:  \"%.*s\"\n      want: \"%.*s\"\n",
            i, n_got, n_want, (int)ng, got + from, (int)nw, want + from);
}

static void test_fixtures(void)
{
    char *text = read_file(FIXTURES);
    REQUIRE(text != NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    REQUIRE(root != NULL);
    const cJSON *templates = cJSON_GetObjectItemCaseSensitive(root, "templates");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (!cJSON_IsArray(templates) || !cJSON_IsArray(cases) || cJSON_GetArraySize(cases) < 100) {
        cJSON_Delete(root);
        REQUIRE(!"fixtures.json has templates[] and 100+ cases[]");
    }

    /* Every template is recognised from its own text, with the right tokens and default. */
    const cJSON *t;
    cJSON_ArrayForEach(t, templates) {
        eng_chat_template ct;
        eng_err err = {{0}};
        const char *name = jstr(t, "name");
        int rc = eng_chat_template_init(&ct, jstr(t, "text"), NULL, &err);
        CHECK_INT(rc, 0);
        CHECK_STR(eng_chat_kind_name(ct.kind), jstr(t, "kind"));
        CHECK_STR(ct.default_system, jstr(t, "default_system"));
        if (ct.kind != ENG_CHAT_CHATML)
            CHECK_STR(ct.bos, jstr(t, "bos_token"));
        if (ct.kind == ENG_CHAT_LLAMA2 || ct.kind == ENG_CHAT_MISTRAL)
            CHECK_STR(ct.eos, jstr(t, "eos_token"));
        if (ct.kind == ENG_CHAT_LLAMA31) /* the template's default date, unless it asks for today's */
            CHECK_STR(ct.date, "26 Jul 2024");
        CHECK_INT(ct.date_today, jstr(t, "today") != NULL);
        if (rc != 0)
            fprintf(stderr, "    template %s: %s\n", name, err.msg);
    }

    int n_ok = 0, n_err = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *tname = jstr(c, "template"), *cname = jstr(c, "name");
        const cJSON *tpl = find_template(templates, tname);
        REQUIRE(tpl != NULL);
        eng_chat_template ct;
        REQUIRE(eng_chat_template_init(&ct, jstr(tpl, "text"), NULL, NULL) == 0);
        if (jstr(tpl, "today")) { /* the fixed date the fixture's strftime_now gave */
            ct.date_today = 0;
            snprintf(ct.date, sizeof ct.date, "%s", jstr(tpl, "today"));
        }

        eng_chat_msg msgs[MAX_MSGS];
        size_t n = 0;
        const cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(c, "messages")) {
            REQUIRE(n < MAX_MSGS);
            msgs[n].role = jstr(m, "role");
            msgs[n].content = jstr(m, "content");
            n++;
        }
        int gen = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt"));
        const char *want = jstr(c, "expected");
        char out[4096];
        eng_err err = {{0}};
        long r = eng_chat_render(&ct, msgs, n, gen, out, sizeof out, &err);
        if (want) {
            size_t n_want = strlen(want);
            if (r != (long)n_want || memcmp(out, want, n_want) != 0) {
                fprintf(stderr, "  %s / %s (gen=%d): rendering differs from jinja2 (rc %ld %s)\n", tname, cname, gen,
                        r, r < 0 ? err.msg : "");
                if (r >= 0)
                    show_diff(out, (size_t)r, want, n_want);
                test_failed_ = 1;
            }
            /* sizing call: no buffer, same count */
            CHECK_INT(eng_chat_render(&ct, msgs, n, gen, NULL, 0, NULL), (long)n_want);
            n_ok++;
        } else {
            if (r != ENG_EINVAL) {
                fprintf(stderr, "  %s / %s (gen=%d): expected ENG_EINVAL (%s), got %ld\n", tname, cname, gen,
                        jstr(c, "error"), r);
                test_failed_ = 1;
            }
            CHECK_CONTAINS(err.msg, "message ");
            n_err++;
        }
    }
    fprintf(stderr, "  %d renderings compared, %d refusals checked\n", n_ok, n_err);
    CHECK(n_ok >= 100);
    CHECK(n_err >= 10);
    cJSON_Delete(root);
}

static void test_detect(void)
{
    static const struct {
        const char *text;
        int kind;
    } cases[] = {
        {"{{'<|im_start|>' + message['role'] + '\\n'}}", ENG_CHAT_CHATML},
        {"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}", ENG_CHAT_LLAMA3},
        {"{{ bos_token + '[INST] <<SYS>>\\n' }}", ENG_CHAT_LLAMA2},
        {"{{ '[INST] ' + message['content'] + ' [/INST]' }}", ENG_CHAT_MISTRAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eng_chat_template ct;
        CHECK_INT(eng_chat_template_init(&ct, cases[i].text, NULL, NULL), 0);
        CHECK_INT(ct.kind, cases[i].kind);
        CHECK_STR(ct.default_system, "");
    }
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_CHATML), "chatml");
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_LLAMA3), "llama3");
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_LLAMA2), "llama2");
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_MISTRAL), "mistral");
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_LLAMA31), "llama3.1");
    CHECK_STR(eng_chat_kind_name(ENG_CHAT_N_KINDS), "unknown");
    CHECK_STR(eng_chat_kind_name(99), "unknown");

    /* a ChatML template whose system block only carries the user's system message: no default */
    eng_chat_template ct;
    CHECK_INT(eng_chat_template_init(&ct,
                                     "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + "
                                     "messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}",
                                     NULL, NULL),
              0);
    CHECK_STR(ct.default_system, "");
    /* escapes inside the default are undone as Jinja would */
    CHECK_INT(eng_chat_template_init(&ct, "{{ \"<|im_start|>system\\nSay \\\"hi\\\"\\tnow\\\\<|im_end|>\\n\" }}",
                                     NULL, NULL),
              0);
    CHECK_STR(ct.default_system, "Say \"hi\"\tnow\\");
}

static void test_unrecognised(void)
{
    eng_chat_template ct;
    eng_err err = {{0}};
    CHECK_INT(eng_chat_template_init(&ct, "{% for m in messages %}### {{ m.content }}{% endfor %}", NULL, &err),
              ENG_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "unrecognised chat template");
    CHECK_CONTAINS(err.msg, "--chat-template chatml|llama3|llama3.1|llama2|mistral");
    memset(&err, 0, sizeof err);
    CHECK_INT(eng_chat_template_init(&ct, NULL, NULL, &err), ENG_EUNSUPPORTED);
    CHECK_CONTAINS(err.msg, "--chat-template");
    CHECK_INT(eng_chat_template_init(&ct, "", NULL, NULL), ENG_EUNSUPPORTED); /* NULL err is fine */
}

static void test_override(void)
{
    static const char *const names[] = {"chatml", "llama3", "llama2", "mistral", "llama3.1"};
    static const int kinds[] = {ENG_CHAT_CHATML, ENG_CHAT_LLAMA3, ENG_CHAT_LLAMA2, ENG_CHAT_MISTRAL, ENG_CHAT_LLAMA31};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        eng_chat_template ct;
        /* the override wins over what the text looks like, and over no text at all */
        CHECK_INT(eng_chat_template_init(&ct, "{{ '[INST]' }}", names[i], NULL), 0);
        CHECK_INT(ct.kind, kinds[i]);
        CHECK_INT(eng_chat_template_init(&ct, NULL, names[i], NULL), 0);
        CHECK_INT(ct.kind, kinds[i]);
        CHECK_STR(ct.default_system, "");
    }
    eng_chat_template ct;
    CHECK_INT(eng_chat_template_init(&ct, NULL, "llama3", NULL), 0);
    CHECK_STR(ct.bos, "<|begin_of_text|>");
    CHECK_INT(eng_chat_template_init(&ct, NULL, "llama2", NULL), 0);
    CHECK_STR(ct.bos, "<s>");
    CHECK_STR(ct.eos, "</s>");

    /* chatml forced on a template that has a default system prompt keeps it */
    CHECK_INT(eng_chat_template_init(&ct, "{{ '<|im_start|>system\\nDefault.<|im_end|>\\n' }}", "chatml", NULL), 0);
    CHECK_STR(ct.default_system, "Default.");

    eng_err err = {{0}};
    CHECK_INT(eng_chat_template_init(&ct, "<|im_start|>", "vicuna", &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "vicuna");
    CHECK_CONTAINS(err.msg, "chatml, llama3, llama3.1, llama2, mistral");

    /* llama3.1 forced: Llama 3.1's default date */
    CHECK_INT(eng_chat_template_init(&ct, NULL, "llama3.1", NULL), 0);
    CHECK_STR(ct.bos, "<|begin_of_text|>");
    CHECK_STR(ct.date, "26 Jul 2024");
    CHECK_INT(ct.date_today, 0);
}

/* A template that asks for today's date (Llama 3.2's strftime_now) gets the local date at
 * render time, in strftime's "%d %b %Y"; one with another default date literal keeps it. */
static void test_llama31_dates(void)
{
    static const char today_tpl[] = "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
                                    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
                                    "{%- set date_string = strftime_now(\"%d %b %Y\") %}";
    eng_chat_template ct;
    CHECK_INT(eng_chat_template_init(&ct, today_tpl, NULL, NULL), 0);
    CHECK_INT(ct.kind, ENG_CHAT_LLAMA31);
    CHECK_INT(ct.date_today, 1);
    eng_chat_msg m[1] = {{"user", "hi"}};
    char out[512], before[32], after[32], want[256];
    struct tm tm;
    time_t t0 = time(NULL);
    strftime(before, sizeof before, "%d %b %Y", localtime_r(&t0, &tm));
    long n = eng_chat_render(&ct, m, 1, 0, out, sizeof out, NULL);
    time_t t1 = time(NULL);
    strftime(after, sizeof after, "%d %b %Y", localtime_r(&t1, &tm));
    CHECK(n > 0);
    int hit = 0;
    for (int i = 0; i < 2; i++) { /* midnight may pass between the two clock reads */
        snprintf(want, sizeof want,
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                 "December 2023\nToday Date: %s\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
                 i ? after : before);
        hit |= n > 0 && strcmp(out, want) == 0;
    }
    if (!hit)
        fprintf(stderr, "    rendered: %s\n", n > 0 ? out : "(error)");
    CHECK(hit);

    CHECK_INT(eng_chat_template_init(&ct, "Cutting Knowledge Date <|start_header_id|> {%- set date_string = '01 Jan 2025' %}",
                                     NULL, NULL), 0);
    CHECK_STR(ct.date, "01 Jan 2025");
    CHECK_INT(ct.date_today, 0);
    /* strftime_now set first, the literal fallback after it (as in Llama 3.2) */
    static const char both[] = "<|start_header_id|>Cutting Knowledge Date{%- set date_string = strftime_now(\"%d %b %Y\") %}"
                               "{%- else %}{%- set date_string = \"02 Feb 2025\" %}";
    CHECK_INT(eng_chat_template_init(&ct, both, NULL, NULL), 0);
    CHECK_STR(ct.date, "02 Feb 2025");
    CHECK_INT(ct.date_today, 1);
    CHECK_INT(eng_chat_template_init(&ct, both, "llama3.1", NULL), 0); /* the override keeps the template's dates */
    CHECK_STR(ct.date, "02 Feb 2025");
    CHECK_INT(ct.date_today, 1);
}

static long render(const char *kind, const eng_chat_msg *m, size_t n, char *out, size_t cap, eng_err *err)
{
    eng_chat_template ct;
    if (eng_chat_template_init(&ct, NULL, kind, NULL) != 0)
        return -100;
    return eng_chat_render(&ct, m, n, 1, out, cap, err);
}

static void test_llama2_alternation(void)
{
    char out[512];
    eng_err err = {{0}};
    eng_chat_msg two_users[] = {{"user", "a"}, {"user", "b"}};
    CHECK_INT(render("llama2", two_users, 2, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "message 1");
    CHECK_CONTAINS(err.msg, "expected role 'assistant', got 'user'");

    eng_chat_msg sys_assistant[] = {{"system", "s"}, {"assistant", "b"}};
    CHECK_INT(render("llama2", sys_assistant, 2, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "message 1");

    eng_chat_msg late[] = {{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"system", "d"}};
    CHECK_INT(render("llama2", late, 4, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "message 3");
    CHECK_INT(render("mistral", late, 4, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "message 3");

    /* ChatML and Llama 3 accept any order */
    CHECK(render("chatml", two_users, 2, out, sizeof out, NULL) > 0);
    CHECK(render("llama3", late, 4, out, sizeof out, NULL) > 0);

    /* a valid Llama 2 conversation, spelled out */
    eng_chat_msg ok[] = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
    long r = render("llama2", ok, 4, out, sizeof out, NULL);
    CHECK_STR(out, "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]");
    CHECK_INT(r, (long)strlen(out));
}

static void test_bad_input(void)
{
    char out[256];
    eng_err err = {{0}};
    eng_chat_msg tool[] = {{"user", "a"}, {"tool", "b"}};
    CHECK_INT(render("chatml", tool, 2, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "message 1");
    CHECK_CONTAINS(err.msg, "'tool'");
    eng_chat_msg null_role[] = {{NULL, "a"}};
    CHECK_INT(render("llama3", null_role, 1, out, sizeof out, &err), ENG_EINVAL);
    CHECK_INT(render("chatml", tool, 0, out, sizeof out, &err), ENG_EINVAL);
    CHECK_CONTAINS(err.msg, "empty conversation");

    /* NULL content renders as empty */
    eng_chat_msg null_content[] = {{"user", "q"}, {"assistant", NULL}};
    CHECK_INT(render("chatml", null_content, 2, out, sizeof out, NULL) > 0, 1);
    CHECK_STR(out, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n");

    /* an uninitialised template is refused, not rendered */
    eng_chat_template zero;
    memset(&zero, 0, sizeof zero);
    CHECK_INT(eng_chat_render(&zero, tool, 1, 1, out, sizeof out, NULL), ENG_EINVAL);
}

static void test_truncation(void)
{
    eng_chat_msg m[] = {{"system", "sys"}, {"user", "hello there"}};
    char full[256];
    long need = render("chatml", m, 2, full, sizeof full, NULL);
    REQUIRE(need > 10 && need < (long)sizeof full);
    CHECK_INT((long)strlen(full), need);
    for (size_t cap = 0; cap <= (size_t)need + 1; cap++) {
        char buf[300];
        memset(buf, 'X', sizeof buf);
        CHECK_INT(render("chatml", m, 2, buf, cap, NULL), need);
        CHECK(memcmp(buf, full, cap < (size_t)need ? cap : (size_t)need) == 0);
        CHECK(buf[cap] == 'X'); /* nothing written past cap */
        if (cap > (size_t)need)
            CHECK(buf[need] == 0);
    }
}

int main(void)
{
    TEST_RUN(test_fixtures);
    TEST_RUN(test_detect);
    TEST_RUN(test_unrecognised);
    TEST_RUN(test_override);
    TEST_RUN(test_llama31_dates);
    TEST_RUN(test_llama2_alternation);
    TEST_RUN(test_bad_input);
    TEST_RUN(test_truncation);
    TEST_END();
}
