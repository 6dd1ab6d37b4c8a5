/* test_api.c -- `thaw serve` handlers without sockets: plain rt_request in, rt_response
 * out (streams read with rt_stream_read), plus the pieces under them (JSON writer, UTF-8
 * check, config parsing, metrics). The handler tests run on the default model when
 * `make model` has fetched it and are skipped otherwise. */
#include "server.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#define MODEL "models/smollm2-135m-instruct.thaw"

/* ---- helpers ---------------------------------------------------------------------------- */
static char *json_str(const char *s, size_t n)
{
    rt_buf b = {0};
    rt_buf_json_str(&b, s, n);
    return rt_buf_take(&b, NULL);
}

static rt_server *g_srv;
static rt_config g_cfg;

static void call(rt_server *s, const char *method, const char *path, const char *body, rt_response *r)
{
    rt_request q = {.method = method, .path = path, .body = body ? body : "", .body_len = body ? strlen(body) : 0,
                    .fd = -1};
    rt_server_handle(s, &q, r);
}

/* The whole body of a streaming response. */
static char *drain_stream(rt_response *r)
{
    rt_buf b = {0};
    char buf[300];
    ssize_t n;
    while ((n = rt_stream_read(r->stream, buf, sizeof buf)) > 0)
        rt_buf_put(&b, buf, (size_t)n);
    rt_buf_put(&b, "", 0);
    return rt_buf_take(&b, NULL);
}

/* Checks status, and for errors the OpenAI error object (with param when given). */
static void expect_error(const char *method, const char *path, const char *body, int status, const char *param)
{
    rt_response r;
    call(g_srv, method, path, body, &r);
    if (r.status != status)
        fprintf(stderr, "  body %s -> %d %s\n", body ? body : "(none)", r.status, r.body ? r.body : "");
    CHECK_INT(r.status, status);
    cJSON *j = r.body ? cJSON_Parse(r.body) : NULL;
    const cJSON *e = cJSON_GetObjectItem(j, "error");
    CHECK(cJSON_IsString(cJSON_GetObjectItem(e, "message")));
    CHECK(cJSON_IsString(cJSON_GetObjectItem(e, "type")));
    CHECK(cJSON_GetObjectItem(e, "param") && cJSON_GetObjectItem(e, "code"));
    if (param) {
        const cJSON *p = cJSON_GetObjectItem(e, "param");
        CHECK(cJSON_IsString(p));
        if (cJSON_IsString(p))
            CHECK_CONTAINS(p->valuestring, param);
    }
    cJSON_Delete(j);
    rt_response_deinit(&r);
}

/* ---- pieces ----------------------------------------------------------------------------- */
static void test_json_writer(void)
{
    char *s = json_str("a\"b\\c\n\x01", 7);
    CHECK_STR(s, "\"a\\\"b\\\\c\\n\\u0001\"");
    free(s);
    s = json_str("caf\xc3\xa9 \xe4\xbd\xa0", 9);
    CHECK_STR(s, "\"caf\xc3\xa9 \xe4\xbd\xa0\"");
    free(s);
    /* one U+FFFD per maximal ill-formed subpart (Unicode's recommended practice, HF's decode):
     * a stray byte, a truncated 3-byte and 4-byte character, then bytes that cannot continue
     * their lead (E0 80, a surrogate ED A0 80, overlong C0 AF, past U+10FFFF F4 90) */
    static const struct {
        const char *in;
        int n_fffd;
    } bad[] = {{"x\xff y", 1}, {"\xe4\xbd", 1}, {"\xf0\x9f\x98", 1}, {"\xe0\x80", 2},
               {"\xed\xa0\x80", 3}, {"\xc0\xaf", 2}, {"\xf4\x90", 2}, {"\xe4\xbd" "a", 1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = json_str(bad[i].in, strlen(bad[i].in));
        int n = 0;
        for (const char *p = s; (p = strstr(p, "\xef\xbf\xbd")) != NULL; p += 3)
            n++;
        if (n != bad[i].n_fffd)
            fprintf(stderr, "  case %zu: %s\n", i, s);
        CHECK_INT(n, bad[i].n_fffd);
        free(s);
    }
    s = json_str("x\xff y\xe4\xbd" "a", 7);
    CHECK_STR(s, "\"x\xef\xbf\xbd y\xef\xbf\xbd" "a\"");
    free(s);
    rt_buf b = {0};
    rt_buf_json_num(&b, NAN);
    rt_buf_puts(&b, " ");
    rt_buf_json_num(&b, 2);
    rt_buf_puts(&b, " ");
    rt_buf_json_num(&b, -0.25);
    CHECK_STR(b.data, "null 2.0 -0.25");
    rt_buf_free(&b);
}

static void test_utf8(void)
{
    size_t at = 99;
    CHECK(rt_utf8_valid("plain", 5, NULL));
    CHECK(rt_utf8_valid("\xf0\x9f\x98\x80", 4, NULL));
    CHECK(!rt_utf8_valid("ab\xc0\x80", 4, &at)); /* overlong NUL */
    CHECK_INT(at, 2);
    CHECK(!rt_utf8_valid("\xed\xa0\x80", 3, NULL)); /* a surrogate */
    CHECK(!rt_utf8_valid("\xf4\x90\x80\x80", 4, NULL)); /* past U+10FFFF */
    CHECK(!rt_utf8_valid("\xe4\xbd", 2, NULL));
    CHECK(!rt_utf8_valid("\x80", 1, NULL));
}

static void test_config(void)
{
    rt_config c;
    char err[256];
    char *argv0[] = {"serve", NULL};
    char *env0[] = {NULL};
    CHECK_INT(rt_config_parse(&c, 1, argv0, env0, err, sizeof err), RT_CONFIG_OK);
    CHECK_INT(c.port, 9000);
    CHECK_STR(c.host, "0.0.0.0");
    CHECK_INT(c.lazy, 0);
    CHECK_INT(c.under_fc, 0);
    CHECK_INT(c.max_body_bytes, 8u << 20);

    /* FC: lazy by default, FC's port over THAW_PORT, the flag over both */
    char *env1[] = {"FC_FUNCTION_NAME=f", "FC_CUSTOM_LISTEN_PORT=9100", "THAW_PORT=9200", "THAW_MAX_BODY=1M",
                    "THAW_API_KEY=k", "THAW_GRACE=2.5", NULL};
    CHECK_INT(rt_config_parse(&c, 1, argv0, env1, err, sizeof err), RT_CONFIG_OK);
    CHECK_INT(c.lazy, 1);
    CHECK_INT(c.under_fc, 1);
    CHECK_INT(c.port, 9100);
    CHECK_INT(c.max_body_bytes, 1u << 20);
    CHECK_STR(c.api_key, "k");
    CHECK_NEAR(c.grace_s, 2.5, 1e-9);
    char *argv1[] = {"serve", "--port", "9300", "--no-lazy", "--max-body=64k", "--kv-mem", "2G", NULL};
    CHECK_INT(rt_config_parse(&c, 7, argv1, env1, err, sizeof err), RT_CONFIG_OK);
    CHECK_INT(c.port, 9300);
    CHECK_INT(c.lazy, 0);
    CHECK_INT(c.max_body_bytes, 64 * 1024);
    CHECK_INT(c.kv_mem_bytes, 2ull << 30);
    /* a fraction, from the flag or THAW_GPU_MEM_FRACTION; out of [0.05, 1] is an error */
    char *env_frac[] = {"THAW_GPU_MEM_FRACTION=0.5", NULL};
    CHECK_INT(rt_config_parse(&c, 1, argv0, env_frac, err, sizeof err), RT_CONFIG_OK);
    CHECK_NEAR(c.gpu_mem_fraction, 0.5, 1e-12);
    char *frac_bad[] = {"serve", "--gpu-mem-fraction", "1.5", NULL};
    CHECK_INT(rt_config_parse(&c, 3, frac_bad, env0, err, sizeof err), RT_CONFIG_ERROR);
    CHECK_CONTAINS(err, "a fraction");
    char *env2[] = {"THAW_LAZY=yes", NULL};
    CHECK_INT(rt_config_parse(&c, 1, argv0, env2, err, sizeof err), RT_CONFIG_OK);
    CHECK_INT(c.lazy, 1);

    char *bad1[] = {"serve", "--port", "70000", NULL};
    CHECK_INT(rt_config_parse(&c, 3, bad1, env0, err, sizeof err), RT_CONFIG_ERROR);
    CHECK_CONTAINS(err, "--port");
    char *bad2[] = {"serve", "--frobnicate", NULL};
    CHECK_INT(rt_config_parse(&c, 2, bad2, env0, err, sizeof err), RT_CONFIG_ERROR);
    CHECK_CONTAINS(err, "--frobnicate");
    char *bad3[] = {"serve", "--threads", NULL};
    CHECK_INT(rt_config_parse(&c, 2, bad3, env0, err, sizeof err), RT_CONFIG_ERROR);
    char *env3[] = {"THAW_MAX_STREAMS=lots", NULL};
    CHECK_INT(rt_config_parse(&c, 1, argv0, env3, err, sizeof err), RT_CONFIG_ERROR);
    CHECK_CONTAINS(err, "THAW_MAX_STREAMS");
    char *help[] = {"serve", "--help", NULL};
    CHECK_INT(rt_config_parse(&c, 2, help, env0, err, sizeof err), RT_CONFIG_HELP);
}

static void test_metrics(void)
{
    rt_metrics *m;
    REQUIRE(rt_metrics_create(&m) == 0);
    rt_metrics_request(m, RT_ROUTE_CHAT, 200, 0.3, 0.02, 10, 5);
    rt_metrics_request(m, RT_ROUTE_CHAT, 429, 0.001, -1, 0, 0);
    rt_metrics_request(m, RT_ROUTE_OTHER, 404, 0.001, -1, 0, 0);
    eng_stats st = {.running = 1, .kv_blocks_total = 10, .kv_blocks_used = 3, .kv_blocks_free = 7};
    rt_startup su = {.listen_s = 0.001, .ready_s = 0.03, .have_load = 1};
    rt_gauges g = {.ready = 1, .engine = &st, .startup = &su};
    rt_buf b = {0};
    rt_metrics_render(m, &g, &b);
    CHECK_CONTAINS(b.data, "thaw_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1\n");
    CHECK_CONTAINS(b.data, "thaw_requests_total{route=\"/v1/chat/completions\",status=\"429\"} 1\n");
    CHECK_CONTAINS(b.data, "thaw_requests_total{route=\"other\",status=\"404\"} 1\n");
    CHECK_CONTAINS(b.data, "thaw_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n");
    CHECK_CONTAINS(b.data, "thaw_time_to_first_token_seconds_count 1\n");
    CHECK_CONTAINS(b.data, "thaw_request_duration_seconds_count 2\n");
    CHECK_CONTAINS(b.data, "thaw_prompt_tokens_total 10\n");
    CHECK_CONTAINS(b.data, "thaw_kv_blocks{state=\"used\"} 3\n");
    CHECK_CONTAINS(b.data, "thaw_startup_seconds{phase=\"ready\"} 0.030000\n");
    rt_buf_free(&b);
    rt_metrics_destroy(m);
}

/* ---- handlers on the real model ---------------------------------------------------------- */
static int have_model(void) { return access(MODEL, R_OK) == 0 && g_srv; }

static void test_health_and_routes(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    const char *paths[] = {"/health", "/healthz", "/"};
    for (int i = 0; i < 3; i++) {
        rt_response r;
        call(g_srv, "GET", paths[i], NULL, &r);
        CHECK_INT(r.status, 200);
        CHECK_CONTAINS(r.body, "\"status\":\"ok\"");
        rt_response_deinit(&r);
    }
    expect_error("GET", "/v1/chat", NULL, 404, NULL);
    expect_error("DELETE", "/v1/models", NULL, 405, NULL);
    rt_response r;
    call(g_srv, "GET", "/v1/chat/completions", NULL, &r);
    CHECK_INT(r.status, 405);
    CHECK_STR(r.allow, "POST");
    rt_response_deinit(&r);
    call(g_srv, "GET", "/v1/models", NULL, &r);
    CHECK_INT(r.status, 200);
    CHECK_CONTAINS(r.body, "\"id\":\"test-model\"");
    rt_response_deinit(&r);
    call(g_srv, "GET", "/v1/models/test-model", NULL, &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);
    expect_error("GET", "/v1/models/other", NULL, 404, NULL);
    call(g_srv, "GET", "/metrics", NULL, &r);
    CHECK_INT(r.status, 200);
    CHECK_CONTAINS(r.body, "thaw_kv_blocks{state=\"free\"}");
    CHECK_CONTAINS(r.body, "thaw_startup_seconds{phase=\"load_read\"}");
    rt_response_deinit(&r);
    call(g_srv, "GET", "/pre-freeze", NULL, &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);
    call(g_srv, "POST", "/initialize", NULL, &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);
}

static void test_chat_and_completion(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    rt_response r;
    call(g_srv, "POST", "/v1/chat/completions",
         "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
         "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is the capital of France?\"}]}],"
         "\"max_tokens\":12,\"temperature\":0,\"unknown_field\":{\"x\":1}}",
         &r);
    CHECK_INT(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    REQUIRE(j);
    CHECK_STR(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    CHECK_STR(cJSON_GetObjectItem(j, "model")->valuestring, "test-model");
    CHECK(!strncmp(cJSON_GetObjectItem(j, "id")->valuestring, "chatcmpl-", 9));
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    const char *text = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content")->valuestring;
    CHECK_CONTAINS(text, "Paris");
    const cJSON *u = cJSON_GetObjectItem(j, "usage");
    CHECK(cJSON_GetObjectItem(u, "prompt_tokens")->valueint > 10);
    CHECK(cJSON_GetObjectItem(u, "completion_tokens")->valueint >= 1);
    cJSON_Delete(j);
    rt_response_deinit(&r);

    /* greedy completions are reproducible; a stop string ends the text before it */
    char *first = NULL;
    for (int i = 0; i < 2; i++) {
        call(g_srv, "POST", "/v1/completions",
             "{\"prompt\":\"The capital of France is\",\"max_tokens\":8,\"temperature\":0}", &r);
        CHECK_INT(r.status, 200);
        j = cJSON_Parse(r.body);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
        if (i == 0)
            first = strdup(t);
        else
            CHECK_STR(t, first);
        cJSON_Delete(j);
        rt_response_deinit(&r);
    }
    call(g_srv, "POST", "/v1/completions",
         "{\"prompt\":\"The capital of France is\",\"max_tokens\":8,\"temperature\":0,\"stop\":[\".\"]}", &r);
    CHECK_INT(r.status, 200);
    j = cJSON_Parse(r.body);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK(!strchr(cJSON_GetObjectItem(c, "text")->valuestring, '.'));
    CHECK_STR(cJSON_GetObjectItem(c, "finish_reason")->valuestring, "stop");
    if (first && strchr(first, '.'))
        CHECK(!strncmp(first, cJSON_GetObjectItem(c, "text")->valuestring, strcspn(first, ".")));
    cJSON_Delete(j);
    rt_response_deinit(&r);
    free(first);
}

static void test_stream(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    rt_response r;
    call(g_srv, "POST", "/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":6,\"stream\":true,"
         "\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":2}",
         &r);
    CHECK_INT(r.status, 200);
    REQUIRE(r.stream);
    CHECK_STR(r.content_type, "text/event-stream");
    char *all = drain_stream(&r);
    CHECK_CONTAINS(all, "\"delta\":{\"role\":\"assistant\"");
    CHECK_CONTAINS(all, "\"top_logprobs\":[{\"token\":");
    CHECK_CONTAINS(all, "\"choices\":[],\"usage\":{\"prompt_tokens\":");
    size_t n = strlen(all);
    CHECK(n > 14 && !strcmp(all + n - 14, "data: [DONE]\n\n"));
    /* every event is a JSON object */
    for (char *p = all; (p = strstr(p, "data: ")) != NULL; p += 6) {
        if (!strncmp(p, "data: [DONE]", 12))
            continue;
        char *end = strstr(p, "\n\n");
        REQUIRE(end);
        cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
        CHECK(cJSON_IsObject(j));
        cJSON_Delete(j);
    }
    free(all);
    rt_response_deinit(&r);

    /* a stream destroyed before it is read cancels its request and frees everything */
    call(g_srv, "POST", "/v1/completions",
         "{\"prompt\":\"Once upon a time\",\"max_tokens\":60,\"stream\":true,\"ignore_eos\":true}", &r);
    CHECK_INT(r.status, 200);
    REQUIRE(r.stream);
    char buf[64];
    CHECK(rt_stream_read(r.stream, buf, sizeof buf) > 0);
    rt_response_deinit(&r);
}

/* The text of a chat's content, whole or streamed (the content deltas joined), and its
 * finish_reason; NULL text when the response is not a 200. */
static char *chat_text(const char *body, int stream, char *finish, size_t finish_cap)
{
    rt_response r;
    call(g_srv, "POST", "/v1/chat/completions", body, &r);
    rt_buf t = {0};
    finish[0] = 0;
    if (r.status == 200 && !stream) {
        cJSON *j = cJSON_Parse(r.body);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
        rt_buf_puts(&t, cJSON_GetObjectItem(cJSON_GetObjectItem(c, "message"), "content")->valuestring);
        snprintf(finish, finish_cap, "%s", cJSON_GetObjectItem(c, "finish_reason")->valuestring);
        cJSON_Delete(j);
    } else if (r.status == 200) {
        char *all = drain_stream(&r);
        for (char *p = all; (p = strstr(p, "data: {")) != NULL; p += 6) {
            cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(strstr(p, "\n\n") - p - 6));
            const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
            const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "delta"), "content");
            if (cJSON_IsString(content))
                rt_buf_puts(&t, content->valuestring);
            const cJSON *f = cJSON_GetObjectItem(c, "finish_reason");
            if (cJSON_IsString(f))
                snprintf(finish, finish_cap, "%s", f->valuestring);
            cJSON_Delete(j);
        }
        free(all);
    }
    rt_buf_put(&t, "", 0);
    rt_response_deinit(&r);
    return r.status == 200 ? rt_buf_take(&t, NULL) : (rt_buf_free(&t), NULL);
}

/* Text held back while it could still begin a stop string is sent when the model ends
 * (end-of-sequence) before the stop string completes, whole and streamed. */
static void test_held_text_at_end(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    char finish[32], body[512];
    const char *ask = "{\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"temperature\":0,\"max_tokens\":60";
    snprintf(body, sizeof body, "%s}", ask);
    char *plain = chat_text(body, 0, finish, sizeof finish);
    REQUIRE(plain && plain[0]);
    if (strcmp(finish, "stop"))
        fprintf(stderr, "  the greedy reply did not end by itself in 60 tokens: %s\n", plain);
    REQUIRE(!strcmp(finish, "stop"));
    /* a stop string made of the reply's last character and one it never writes */
    char last[8] = {0};
    size_t n = strlen(plain), k = 1;
    while (k < n && k < 4 && ((unsigned char)plain[n - k] & 0xc0) == 0x80)
        k++;
    memcpy(last, plain + n - k, k);
    char *stop = json_str(last, k);
    stop[strlen(stop) - 1] = 0; /* the closing quote: the stop string goes on */
    for (int stream = 0; stream < 2; stream++) {
        snprintf(body, sizeof body, "%s,\"stream\":%s,\"stop\":[%s\\u0007\"]}", ask, stream ? "true" : "false", stop);
        char *held = chat_text(body, stream, finish, sizeof finish);
        REQUIRE(held);
        CHECK_STR(held, plain);
        CHECK_STR(finish, "stop");
        free(held);
    }
    free(stop);
    free(plain);
}

/* Legacy completions' top_logprobs always hold the sampled token (up to logprobs + 1). */
static void test_completion_logprobs(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    for (int want = 0; want <= 1; want++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"The capital of France is\",\"max_tokens\":6,\"temperature\":1,\"seed\":7,"
                 "\"logprobs\":%d}", want);
        rt_response r;
        call(g_srv, "POST", "/v1/completions", body, &r);
        CHECK_INT(r.status, 200);
        cJSON *j = cJSON_Parse(r.body);
        const cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
        const cJSON *toks = cJSON_GetObjectItem(lp, "tokens"), *lps = cJSON_GetObjectItem(lp, "token_logprobs"),
                    *top = cJSON_GetObjectItem(lp, "top_logprobs");
        REQUIRE(cJSON_GetArraySize(toks) >= 1 && cJSON_GetArraySize(top) == cJSON_GetArraySize(toks));
        for (int i = 0; i < cJSON_GetArraySize(toks); i++) {
            const cJSON *t = cJSON_GetArrayItem(top, i);
            const char *tok = cJSON_GetArrayItem(toks, i)->valuestring;
            const cJSON *mine = cJSON_GetObjectItemCaseSensitive(t, tok);
            CHECK(cJSON_GetArraySize(t) >= 1 && cJSON_GetArraySize(t) <= want + 1);
            CHECK(cJSON_IsNumber(mine));
            if (cJSON_IsNumber(mine))
                CHECK_NEAR(mine->valuedouble, cJSON_GetArrayItem(lps, i)->valuedouble, 1e-6);
        }
        cJSON_Delete(j);
        rt_response_deinit(&r);
    }
}

static void test_errors(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    static const struct {
        const char *body;
        const char *param;
    } bad[] = {
        {"", NULL},
        {"{", NULL},
        {"[1,2]", NULL},
        {"\"just a string\"", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", NULL},
        {"{}", "messages"},
        {"{\"messages\":\"hi\"}", "messages"},
        {"{\"messages\":[]}", "messages"},
        {"{\"messages\":[\"hi\"]}", "messages[0]"},
        {"{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].role"},
        {"{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":7}]}", "messages[0].content"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
         "messages[0].content[0]"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":\"ten\"}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":100000}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}", "temperature"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":-1}", "top_p"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":100}", "n"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "stream"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}",
         "stream_options"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}", "stop"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"abc\":1}}", "logit_bias"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"5\":500}}", "logit_bias"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}", "top_logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"auto\"}", "tool_choice"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"functions\":[{}]}", "functions"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}",
         "response_format"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":5}", "model"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":\"s\"}", "seed"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} trailing", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}{}", NULL},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\\u0000y\"}]}", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error("POST", "/v1/chat/completions", bad[i].body, 400, bad[i].param);
    expect_error("POST", "/v1/completions", "{\"max_tokens\":5}", 400, "prompt");
    { /* a raw NUL byte inside a string (JSON never allows one): refused, not cut short */
        static const char nul_body[] = "{\"prompt\":\"a\0b\"}";
        rt_request q = {.method = "POST", .path = "/v1/completions", .body = nul_body,
                        .body_len = sizeof nul_body - 1, .fd = -1};
        rt_response r;
        rt_server_handle(g_srv, &q, &r);
        CHECK_INT(r.status, 400);
        CHECK_CONTAINS(r.body, "NUL byte");
        rt_response_deinit(&r);
    }
    expect_error("POST", "/v1/completions", "{\"prompt\":[]}", 400, "prompt");
    expect_error("POST", "/v1/completions", "{\"prompt\":[1,\"a\"]}", 400, "prompt");
    expect_error("POST", "/v1/completions", "{\"prompt\":[999999999]}", 400, "prompt");
    expect_error("POST", "/v1/completions", "{\"prompt\":\"x\",\"echo\":true}", 400, "echo");
    expect_error("POST", "/v1/completions", "{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs");
    expect_error("POST", "/v1/completions", "{\"prompt\":\"\"}", 400, "prompt");
    /* a prompt longer than the context (--ctx 256 here) */
    rt_buf b = {0};
    rt_buf_puts(&b, "{\"prompt\":\"");
    for (int i = 0; i < 400; i++)
        rt_buf_puts(&b, "word ");
    rt_buf_puts(&b, "\"}");
    rt_response r;
    call(g_srv, "POST", "/v1/completions", b.data, &r);
    CHECK_INT(r.status, 400);
    CHECK_CONTAINS(r.body, "context_length_exceeded");
    rt_response_deinit(&r);
    rt_buf_free(&b);
    /* nesting deeper than cJSON allows */
    rt_buf_puts(&b, "{\"prompt\":");
    for (int i = 0; i < 5000; i++)
        rt_buf_puts(&b, "[");
    expect_error("POST", "/v1/completions", b.data, 400, NULL);
    rt_buf_free(&b);
    expect_error("POST", "/invoke", "{\"model\":\"x\"}", 400, NULL);
}

static void test_tokenize_invoke(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    rt_response r;
    call(g_srv, "POST", "/tokenize", "{\"prompt\":\"Hello world\"}", &r);
    CHECK_INT(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    const cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    CHECK_INT(cJSON_GetObjectItem(j, "count")->valueint, cJSON_GetArraySize(toks));
    char *toks_json = cJSON_PrintUnformatted(toks);
    cJSON_Delete(j);
    rt_response_deinit(&r);
    char body[512];
    snprintf(body, sizeof body, "{\"tokens\":%s}", toks_json);
    free(toks_json);
    call(g_srv, "POST", "/detokenize", body, &r);
    CHECK_INT(r.status, 200);
    CHECK_CONTAINS(r.body, "\"prompt\":\"Hello world\"");
    rt_response_deinit(&r);
    /* add_generation_prompt and continue_final_message shape the rendered chat (vLLM's) */
    static const struct {
        const char *flags, *tail;
    } chat_ends[] = {
        {"", "<|im_start|>assistant\n"},
        {",\"add_generation_prompt\":false", "Hello, I<|im_end|>\n"},
        {",\"add_generation_prompt\":false,\"continue_final_message\":true", "<|im_start|>assistant\nHello, I"},
    };
    /* (the message is "Hello, I": the ChatML template writes it whole, so nothing is trimmed) */
    for (size_t i = 0; i < sizeof chat_ends / sizeof chat_ends[0]; i++) {
        char req[512];
        snprintf(req, sizeof req,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
                 "\"content\":\"Hello, I\"}]%s}",
                 chat_ends[i].flags);
        call(g_srv, "POST", "/tokenize", req, &r);
        REQUIRE(r.status == 200);
        cJSON *tj = cJSON_Parse(r.body);
        char *ids = cJSON_PrintUnformatted(cJSON_GetObjectItem(tj, "tokens"));
        rt_response_deinit(&r);
        char dreq[4096];
        snprintf(dreq, sizeof dreq, "{\"tokens\":%s}", ids);
        call(g_srv, "POST", "/detokenize", dreq, &r);
        REQUIRE(r.status == 200);
        cJSON *dj = cJSON_Parse(r.body);
        const char *text = cJSON_GetObjectItem(dj, "prompt")->valuestring;
        size_t tl = strlen(text), wl = strlen(chat_ends[i].tail);
        if (tl < wl || strcmp(text + tl - wl, chat_ends[i].tail))
            fprintf(stderr, "  case %zu: %s\n", i, text);
        CHECK(tl >= wl && !strcmp(text + tl - wl, chat_ends[i].tail));
        cJSON_Delete(dj);
        cJSON_Delete(tj);
        free(ids);
        rt_response_deinit(&r);
    }
    expect_error("POST", "/v1/chat/completions",
                 "{\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}],\"continue_final_message\":true}", 400,
                 "continue_final_message");
    expect_error("POST", "/v1/chat/completions",
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"continue_final_message\":true,"
                 "\"add_generation_prompt\":false}",
                 400, "continue_final_message");
    /* special tokens keep their text, as vLLM's (tokenizer.decode's default) */
    call(g_srv, "POST", "/detokenize", "{\"tokens\":[1,28120,2]}", &r);
    CHECK_INT(r.status, 200);
    CHECK_CONTAINS(r.body, "\"prompt\":\"<|im_start|>hello<|im_end|>\"");
    rt_response_deinit(&r);
    expect_error("POST", "/detokenize", "{\"tokens\":[-1]}", 400, "tokens");
    expect_error("POST", "/tokenize", "{}", 400, "prompt");
    /* an escaped backslash before u0000 is text, not a NUL; whitespace may follow the object */
    call(g_srv, "POST", "/tokenize", "{\"prompt\":\"a\\\\u0000b\"}\r\n", &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);

    rt_request q = {.method = "POST",
                    .path = "/invoke",
                    .body = "{\"prompt\":\"Hello\",\"max_tokens\":2}",
                    .request_id = "fc-req-1",
                    .fd = -1};
    q.body_len = strlen(q.body);
    rt_server_handle(g_srv, &q, &r);
    CHECK_INT(r.status, 200);
    CHECK_INT(r.fc_status, 1);
    CHECK_STR(r.request_id, "fc-req-1");
    CHECK_CONTAINS(r.body, "\"id\":\"cmpl-fc-req-1\"");
    rt_response_deinit(&r);
}

static void test_api_key_and_drain(void)
{
    if (!have_model())
        TEST_SKIP("no %s (make model)", MODEL);
    rt_config c = g_cfg;
    c.api_key = "s3cret";
    c.under_fc = 1; /* as with FC_FUNCTION_NAME set */
    rt_server *s;
    char err[256];
    REQUIRE(rt_server_create(&c, &s) == 0);
    REQUIRE(rt_server_load(s, err, sizeof err) == 0);
    const char *body = "{\"prompt\":\"Hi\",\"max_tokens\":1}";
    struct {
        const char *auth, *control;
        int status;
    } cases[] = {
        {NULL, NULL, 401}, {"Bearer nope", NULL, 401}, {"Bearer s3cre", NULL, 401}, {"Bearer s3cret!", NULL, 401},
        {"s3cret", NULL, 401}, {"Bearer s3cret", NULL, 200}, {"bearer s3cret", NULL, 200},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rt_request q = {.method = "POST", .path = "/v1/completions", .body = body, .body_len = strlen(body),
                        .authorization = cases[i].auth, .fd = -1};
        rt_response r;
        rt_server_handle(s, &q, &r);
        CHECK_INT(r.status, cases[i].status);
        rt_response_deinit(&r);
    }
    /* under FC, FC's own /invoke calls are open; the same path from an HTTP trigger is not
     * (outside FC the header opens nothing: tests/test_server.py) */
    rt_request q = {.method = "POST", .path = "/invoke", .body = body, .body_len = strlen(body), .fd = -1};
    rt_response r;
    rt_server_handle(s, &q, &r);
    CHECK_INT(r.status, 401);
    rt_response_deinit(&r);
    q.fc_control_path = "/invoke";
    rt_server_handle(s, &q, &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);
    call(s, "GET", "/health", NULL, &r);
    CHECK_INT(r.status, 200);
    rt_response_deinit(&r);

    /* drain: new API requests 503, health 503 "draining" */
    CHECK_INT(rt_server_drain(s, 1), 1);
    q.fc_control_path = "/invoke";
    rt_server_handle(s, &q, &r);
    CHECK_INT(r.status, 503);
    CHECK(r.retry_after_s > 0);
    rt_response_deinit(&r);
    call(s, "GET", "/health", NULL, &r);
    CHECK_INT(r.status, 503);
    CHECK_CONTAINS(r.body, "draining");
    rt_response_deinit(&r);
    rt_server_destroy(s);
}

static void test_load_failure(void)
{
    rt_config c = g_cfg;
    c.model = "tests/data/does-not-exist.thaw";
    rt_server *s;
    char err[256];
    REQUIRE(rt_server_create(&c, &s) == 0);
    CHECK_INT(rt_server_load(s, err, sizeof err), -1);
    CHECK_CONTAINS(err, "does-not-exist");
    rt_response r;
    call(s, "GET", "/health", NULL, &r);
    CHECK_INT(r.status, 503);
    CHECK_CONTAINS(r.body, "does-not-exist");
    rt_response_deinit(&r);
    call(s, "POST", "/initialize", NULL, &r);
    CHECK_INT(r.status, 500);
    CHECK_CONTAINS(r.body, "does-not-exist");
    rt_response_deinit(&r);
    call(s, "POST", "/v1/completions", "{\"prompt\":\"x\"}", &r);
    CHECK_INT(r.status, 503);
    rt_response_deinit(&r);
    rt_server_destroy(s);
}

int main(void)
{
    char err[256];
    char *argv[] = {"serve", "-m", MODEL, "--served-model-name", "test-model", "--ctx", "256", "--max-tokens", "64",
                    "--threads", "2", NULL};
    char *env[] = {NULL};
    if (rt_config_parse(&g_cfg, 11, argv, env, err, sizeof err) != RT_CONFIG_OK) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    if (access(MODEL, R_OK) == 0) {
        if (rt_server_create(&g_cfg, &g_srv) || rt_server_load(g_srv, err, sizeof err)) {
            fprintf(stderr, "cannot load %s: %s\n", MODEL, err);
            return 1;
        }
    }
    TEST_RUN(test_json_writer);
    TEST_RUN(test_utf8);
    TEST_RUN(test_config);
    TEST_RUN(test_metrics);
    TEST_RUN(test_health_and_routes);
    TEST_RUN(test_chat_and_completion);
    TEST_RUN(test_stream);
    TEST_RUN(test_held_text_at_end);
    TEST_RUN(test_completion_logprobs);
    TEST_RUN(test_errors);
    TEST_RUN(test_tokenize_invoke);
    TEST_RUN(test_api_key_and_drain);
    TEST_RUN(test_load_failure);
    rt_server_destroy(g_srv);
    TEST_END();
}
