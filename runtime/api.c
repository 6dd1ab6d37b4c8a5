/* api.c -- the OpenAI API: /v1/chat/completions, /v1/completions (streaming or not),
 * /tokenize, /detokenize, and /invoke's routing.
 *
 * A generation request goes: body checked as UTF-8 -> JSON parsed (cJSON, deleted in the
 * same function) -> every field validated into a `gen` (errors name the field, as OpenAI's
 * do) -> prompts rendered and tokenized -> one engine request per choice (n x prompts) ->
 * either read to the end here (one JSON body) or handed to an rt_stream that the HTTP thread
 * reads as SSE. Unknown fields are ignored, as OpenAI does; fields whose meaning this server
 * cannot honour (tools, a JSON response_format, echo, ...) are refused with a 400 that names
 * them, rather than silently answering something else.
 *
 * Sampling defaults follow vLLM: a field the request leaves out takes the model's own
 * generation default (from the snapshot) when it has one, else OpenAI's default.
 */
#include "server.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ======================================================================================
 * Field readers: each returns 0 (absent or null: *present = 0), 1 (read), or -1 with e set.
 * ====================================================================================== */
static const cJSON *field(const cJSON *o, const char *name)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return f && !cJSON_IsNull(f) ? f : NULL;
}

static int get_num(const cJSON *o, const char *name, double lo, double hi, int integer, double *out, rt_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    if (!cJSON_IsNumber(f)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", name, "'%s' must be %s", name,
                     integer ? "an integer" : "a number");
        return -1;
    }
    double v = f->valuedouble;
    if (integer && v != floor(v)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", name, "'%s' must be an integer, got %g", name, v);
        return -1;
    }
    if (!(v >= lo && v <= hi)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", name, "'%s' must be between %g and %g, got %g",
                     name, lo, hi, v);
        return -1;
    }
    *out = v;
    return 1;
}

static int get_bool(const cJSON *o, const char *name, int *out, rt_error *e)
{
    const cJSON *f = field(o, name);
    if (!f)
        return 0;
    if (!cJSON_IsBool(f)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", name, "'%s' must be a boolean (true or false)",
                     name);
        return -1;
    }
    *out = cJSON_IsTrue(f);
    return 1;
}

static int unsupported(rt_error *e, const char *name, const char *why)
{
    rt_error_set(e, 400, "invalid_request_error", "unsupported_parameter", name, "'%s' is not supported: %s", name,
                 why);
    return -1;
}

/* Parse the body as a JSON object. Returns the root (caller deletes) or NULL with e set. */
static cJSON *parse_body(const rt_request *req, rt_error *e)
{
    size_t bad;
    if (req->body_len == 0) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                     "the request body is empty; it must be a JSON object");
        return NULL;
    }
    if (!rt_utf8_valid(req->body, req->body_len, &bad)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_encoding", NULL,
                     "the request body is not valid UTF-8 (first bad byte at offset %zu)", bad);
        return NULL;
    }
    /* cJSON ends its strings at a NUL, so a NUL byte (never valid in JSON) or a \u0000 escape
     * would cut a prompt short unseen */
    for (size_t i = 0; i < req->body_len; i++) {
        if (req->body[i] == 0) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                         "the JSON body has a NUL byte at byte %zu", i);
            return NULL;
        }
        if (req->body[i] != '\\' || i + 1 == req->body_len)
            continue;
        if (i + 5 < req->body_len && !memcmp(req->body + i + 1, "u0000", 5)) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                         "the JSON body has a \\u0000 escape at byte %zu; NUL characters are not accepted", i);
            return NULL;
        }
        i++; /* the escaped character */
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(req->body, req->body_len, &end, 0);
    if (!root) {
        size_t at = end && end >= req->body ? (size_t)(end - req->body) : 0;
        rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                     "could not parse the JSON body of the request (error near byte %zu)", at);
        return NULL;
    }
    size_t at = (size_t)(end - req->body);
    while (at < req->body_len && (req->body[at] == ' ' || req->body[at] == '\t' || req->body[at] == '\r' ||
                                  req->body[at] == '\n'))
        at++;
    if (at < req->body_len) {
        cJSON_Delete(root);
        rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                     "the JSON body has more after its object, at byte %zu", at);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        rt_error_set(e, 400, "invalid_request_error", "invalid_json", NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

/* ======================================================================================
 * Prompts: chat messages rendered by the model's template, or completion prompts
 * ====================================================================================== */
typedef struct prompts {
    uint32_t n;
    int32_t *ids[RT_MAX_CHOICES];
    uint32_t len[RT_MAX_CHOICES];
} prompts;

static void prompts_free(prompts *p)
{
    for (uint32_t i = 0; i < p->n; i++)
        free(p->ids[i]);
    p->n = 0;
}

/* Tokenize text into a new prompt slot. */
static int add_text_prompt(const eng_tokenizer *tok, prompts *p, const char *text, size_t len, int add_special,
                           const char *param, rt_error *e)
{
    long n = eng_tokenize(tok, text, len, add_special, 1, NULL, 0);
    int32_t *ids = n >= 0 ? malloc(((size_t)n + 1) * sizeof *ids) : NULL;
    if (!ids || eng_tokenize(tok, text, len, add_special, 1, ids, (size_t)n) != n) {
        free(ids);
        rt_error_set(e, 500, "server_error", NULL, param, "cannot tokenize the prompt");
        return -1;
    }
    p->ids[p->n] = ids;
    p->len[p->n++] = (uint32_t)n;
    return 0;
}

static int add_token_prompt(const eng_tokenizer *tok, prompts *p, const cJSON *arr, const char *param, rt_error *e)
{
    int n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        rt_error_set(e, 500, "server_error", NULL, param, "out of memory");
        return -1;
    }
    uint32_t vocab = eng_vocab_size(tok), k = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, arr)
    {
        if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 ||
            t->valuedouble >= vocab) {
            free(ids);
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", param,
                         "'%s' holds an invalid token id (ids are integers in [0, %u))", param, vocab);
            return -1;
        }
        ids[k++] = (int32_t)t->valuedouble;
    }
    p->ids[p->n] = ids;
    p->len[p->n++] = k;
    return 0;
}

/* /v1/completions "prompt": a string, a list of strings, a list of token ids, or a list of
 * lists of token ids. */
static int completion_prompts(const eng_tokenizer *tok, const cJSON *root, prompts *p, rt_error *e)
{
    const cJSON *f = field(root, "prompt");
    if (!f) {
        rt_error_set(e, 400, "invalid_request_error", "missing_required_parameter", "prompt",
                     "'prompt' is required");
        return -1;
    }
    if (cJSON_IsString(f))
        return add_text_prompt(tok, p, f->valuestring, strlen(f->valuestring), 1, "prompt", e);
    if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) == 0) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", "prompt",
                     "'prompt' must be a string, a non-empty list of strings, or a list of token ids");
        return -1;
    }
    const cJSON *first = f->child;
    if (cJSON_IsNumber(first))
        return add_token_prompt(tok, p, f, "prompt", e);
    if (cJSON_GetArraySize(f) > RT_MAX_CHOICES) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "prompt",
                     "at most %d prompts fit in one request", RT_MAX_CHOICES);
        return -1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, f)
    {
        int rc;
        if (cJSON_IsString(it) && cJSON_IsString(first))
            rc = add_text_prompt(tok, p, it->valuestring, strlen(it->valuestring), 1, "prompt", e);
        else if (cJSON_IsArray(it) && cJSON_IsArray(first))
            rc = add_token_prompt(tok, p, it, "prompt", e);
        else {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", "prompt",
                         "'prompt' must be a string, a list of strings, a list of token ids, or a list of such lists");
            rc = -1;
        }
        if (rc)
            return -1;
    }
    return 0;
}

/* Render "messages" with the model's chat template into *text (malloc'd). As vLLM:
 * add_generation_prompt (default true) opens the assistant's turn; continue_final_message
 * (default false; needs add_generation_prompt false and an assistant message last) leaves that
 * message open, cut where its content ends, for the model to go on writing it. */
static int render_chat(const eng_model *m, const cJSON *root, char **text, long *text_len, rt_error *e)
{
    int add_gen = 1, cont = 0;
    if (get_bool(root, "add_generation_prompt", &add_gen, e) < 0 || get_bool(root, "continue_final_message", &cont, e) < 0)
        return -1;
    if (cont && add_gen) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "continue_final_message",
                     "continue_final_message needs add_generation_prompt set to false");
        return -1;
    }
    const cJSON *msgs = field(root, "messages");
    if (!msgs) {
        rt_error_set(e, 400, "invalid_request_error", "missing_required_parameter", "messages",
                     "'messages' is required");
        return -1;
    }
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "messages",
                     "'messages' must be a non-empty list of {role, content} objects");
        return -1;
    }
    const eng_chat_template *ct = eng_model_chat(m);
    if (!ct) {
        rt_error_set(e, 400, "invalid_request_error", "chat_template_unavailable", "messages",
                     "this model has no usable chat template (%s); use /v1/completions", eng_model_chat_error(m));
        return -1;
    }
    int n = cJSON_GetArraySize(msgs), rc = -1;
    eng_chat_msg *cm = calloc((size_t)n, sizeof *cm);
    char **owned = calloc((size_t)n, sizeof *owned);
    char param[64];
    if (!cm || !owned) {
        rt_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    int i = 0;
    const cJSON *msg;
    cJSON_ArrayForEach(msg, msgs)
    {
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(msg)) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", param, "'%s' must be an object", param);
            goto done;
        }
        const cJSON *role = field(msg, "role"), *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
        snprintf(param, sizeof param, "messages[%d].role", i);
        if (!cJSON_IsString(role)) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", param, "'%s' must be a string", param);
            goto done;
        }
        const char *r = role->valuestring;
        if (!strcmp(r, "developer"))
            r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", param,
                         "role '%.40s' is not supported (system, developer, user or assistant; no tools)", r);
            goto done;
        }
        const cJSON *calls = field(msg, "tool_calls");
        if (calls && (!cJSON_IsArray(calls) || cJSON_GetArraySize(calls) > 0)) {
            snprintf(param, sizeof param, "messages[%d].tool_calls", i);
            unsupported(e, param, "this server does not do tool calling");
            goto done;
        }
        snprintf(param, sizeof param, "messages[%d].content", i);
        const char *c = NULL;
        if (!content || cJSON_IsNull(content)) {
            c = "";
        } else if (cJSON_IsString(content)) {
            c = content->valuestring;
        } else if (cJSON_IsArray(content)) {
            /* content parts: text only, joined with newlines (as vLLM does) */
            rt_buf joined = {0};
            int j = 0;
            const cJSON *part;
            cJSON_ArrayForEach(part, content)
            {
                const cJSON *type = cJSON_IsObject(part) ? field(part, "type") : NULL;
                const cJSON *t = cJSON_IsObject(part) ? field(part, "text") : NULL;
                snprintf(param, sizeof param, "messages[%d].content[%d]", i, j);
                if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(t)) {
                    rt_buf_free(&joined);
                    if (cJSON_IsString(type) && strcmp(type->valuestring, "text"))
                        rt_error_set(e, 400, "invalid_request_error", "unsupported_content", param,
                                     "content of type '%.40s' is not supported (text only)", type->valuestring);
                    else
                        rt_error_set(e, 400, "invalid_request_error", "invalid_type", param,
                                     "'%s' must be {\"type\": \"text\", \"text\": \"...\"}", param);
                    goto done;
                }
                if (j++)
                    rt_buf_puts(&joined, "\n");
                rt_buf_puts(&joined, t->valuestring);
            }
            rt_buf_put(&joined, "", 0);
            owned[i] = rt_buf_take(&joined, NULL);
            if (!owned[i]) {
                rt_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
                goto done;
            }
            c = owned[i];
        } else {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", param,
                         "'%s' must be a string or a list of text parts", param);
            goto done;
        }
        cm[i] = (eng_chat_msg){r, c};
        i++;
    }
    if (cont && strcmp(cm[n - 1].role, "assistant")) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "continue_final_message",
                     "continue_final_message needs an assistant message last");
        goto done;
    }
    eng_err ee = {{0}};
    long need = eng_chat_render(ct, cm, (size_t)n, add_gen, NULL, 0, &ee);
    if (need < 0) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "messages", "%s", ee.msg);
        goto done;
    }
    *text = malloc((size_t)need + 1);
    if (!*text || eng_chat_render(ct, cm, (size_t)n, add_gen, *text, (size_t)need + 1, &ee) != need) {
        free(*text);
        *text = NULL;
        rt_error_set(e, 500, "server_error", NULL, NULL, "cannot render the conversation");
        goto done;
    }
    if (cont) {
        /* end the text where the final message's content ends, found as transformers (and so
         * vLLM) find it: the last place of the content stripped of surrounding whitespace;
         * its trailing whitespace stays when the template kept it */
        const char *c = cm[n - 1].content;
        size_t from, to, len = strlen(c), k;
        eng_chat_strip(c, len, &from, &to);
        k = to - from;
        long at = need - (long)k;
        while (at >= 0 && memcmp(*text + at, c + from, k))
            at--;
        if (at < 0) {
            free(*text);
            *text = NULL;
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", "continue_final_message",
                         "the chat template does not write the final message's content as it is");
            goto done;
        }
        if (from == 0 && (size_t)at + len <= (size_t)need && !memcmp(*text + at, c, len))
            k = len; /* written whole, trailing whitespace and all */
        need = at + (long)k;
        (*text)[need] = 0;
    }
    *text_len = need;
    rc = 0;
done:
    for (int k = 0; owned && k < n; k++)
        free(owned[k]);
    free(owned);
    free(cm);
    return rc;
}

/* ======================================================================================
 * The request
 * ====================================================================================== */
typedef struct gen {
    int chat, stream, include_usage;
    int logprobs;              /* report token logprobs */
    uint32_t top_logprobs;
    uint32_t n;                /* choices per prompt */
    uint32_t max_tokens;       /* requested, or the cap */
    int ignore_eos;
    uint64_t seed;
    eng_sampling sp;
    eng_logit_bias *bias;      /* malloc'd */
    const char *stop[ENG_MAX_STOP]; /* point into the cJSON tree: valid until it is deleted */
    uint32_t n_stop;
    prompts pr;
} gen;

static void gen_free(gen *g)
{
    free(g->bias);
    g->bias = NULL;
    prompts_free(&g->pr);
}

/* Fields that would change what the answer means, and this server cannot honour. */
static int refuse_unsupported(const cJSON *root, int chat, rt_error *e)
{
    const cJSON *f;
    if ((f = field(root, "tools")) && (!cJSON_IsArray(f) || cJSON_GetArraySize(f) > 0))
        return unsupported(e, "tools", "this server does not do tool calling");
    if ((f = field(root, "functions")) && (!cJSON_IsArray(f) || cJSON_GetArraySize(f) > 0))
        return unsupported(e, "functions", "this server does not do function calling");
    if ((f = field(root, "tool_choice")) && !(cJSON_IsString(f) && !strcmp(f->valuestring, "none")))
        return unsupported(e, "tool_choice", "this server does not do tool calling (only \"none\")");
    if ((f = field(root, "function_call")) && !(cJSON_IsString(f) && !strcmp(f->valuestring, "none")))
        return unsupported(e, "function_call", "this server does not do function calling (only \"none\")");
    if ((f = field(root, "response_format"))) {
        const cJSON *t = cJSON_IsObject(f) ? field(f, "type") : NULL;
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return unsupported(e, "response_format", "only {\"type\": \"text\"}; structured output is not implemented");
    }
    if ((f = field(root, "audio")))
        return unsupported(e, "audio", "text only");
    if ((f = field(root, "modalities"))) {
        const cJSON *it;
        if (!cJSON_IsArray(f))
            return unsupported(e, "modalities", "text only");
        cJSON_ArrayForEach(it, f) if (!cJSON_IsString(it) || strcmp(it->valuestring, "text")) return unsupported(
            e, "modalities", "text only");
    }
    if (!chat) {
        int echo = 0;
        if (get_bool(root, "echo", &echo, e) < 0)
            return -1;
        if (echo)
            return unsupported(e, "echo", "the prompt is not echoed");
        if ((f = field(root, "suffix")) && !(cJSON_IsString(f) && !f->valuestring[0]))
            return unsupported(e, "suffix", "insertion is not implemented");
    }
    return 0;
}

static int parse_gen(const rt_api_ctx *ctx, const cJSON *root, int chat, gen *g, rt_error *e)
{
    const eng_tokenizer *tok = eng_model_tokenizer(ctx->model);
    const snap_gen_defaults *gd = eng_model_gen_defaults(ctx->model);
    uint32_t n_ctx = eng_model_n_ctx(ctx->model), vocab = eng_vocab_size(tok);
    double v;
    int rc;
    memset(g, 0, sizeof *g);
    g->chat = chat;
    g->n = 1;
    eng_sampling_defaults(&g->sp);
    g->sp.temperature = isnan(gd->temperature) ? 1.0f : gd->temperature;
    g->sp.top_p = isnan(gd->top_p) ? 1.0f : gd->top_p;
    g->sp.top_k = gd->top_k >= 0 ? gd->top_k : 0;
    g->sp.repetition_penalty = isnan(gd->repetition_penalty) ? 1.0f : gd->repetition_penalty;

    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (f && !cJSON_IsNull(f) && !cJSON_IsString(f)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", "model", "'model' must be a string");
        return -1;
    }
    if (refuse_unsupported(root, chat, e))
        return -1;
    if (get_bool(root, "stream", &g->stream, e) < 0)
        return -1;
    if ((f = field(root, "stream_options"))) {
        if (!g->stream) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", "stream_options",
                         "'stream_options' is only allowed when 'stream' is true");
            return -1;
        }
        if (!cJSON_IsObject(f)) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", "stream_options",
                         "'stream_options' must be an object");
            return -1;
        }
        if (get_bool(f, "include_usage", &g->include_usage, e) < 0)
            return -1;
    }
    uint32_t cap = ctx->cfg->max_tokens ? ctx->cfg->max_tokens : n_ctx;
    g->max_tokens = cap;
    const char *mt_name = field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((rc = get_num(root, mt_name, 1, 1e18, 1, &v, e)) < 0)
        return -1;
    if (rc) {
        if (v > cap) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", mt_name,
                         "'%s' is %.0f; this server allows at most %u%s", mt_name, v, cap,
                         ctx->cfg->max_tokens ? " (--max-tokens)" : " (the context length)");
            return -1;
        }
        g->max_tokens = (uint32_t)v;
    }
    if ((rc = get_num(root, "n", 1, RT_MAX_CHOICES, 1, &v, e)) < 0)
        return -1;
    if (rc)
        g->n = (uint32_t)v;
    if ((rc = get_num(root, "best_of", 1, RT_MAX_CHOICES, 1, &v, e)) < 0)
        return -1;
    if (rc && (uint32_t)v != g->n && v > 1)
        return unsupported(e, "best_of", "only best_of equal to n");
    if ((rc = get_num(root, "temperature", 0, 2, 0, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.temperature = (float)v;
    if ((rc = get_num(root, "top_p", 0, 1, 0, &v, e)) < 0)
        return -1;
    if (rc) {
        if (v == 0) /* OpenAI accepts 0: only the most likely token survives */
            g->sp.temperature = 0, v = 1;
        g->sp.top_p = (float)v;
    }
    if ((rc = get_num(root, "top_k", -1, 1e9, 1, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.top_k = v < 0 ? 0 : (int32_t)v; /* -1 = off (vLLM) */
    if ((rc = get_num(root, "min_p", 0, 1, 0, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.min_p = (float)v;
    if ((rc = get_num(root, "presence_penalty", -2, 2, 0, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.presence_penalty = (float)v;
    if ((rc = get_num(root, "frequency_penalty", -2, 2, 0, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.frequency_penalty = (float)v;
    if ((rc = get_num(root, "repetition_penalty", 1e-6, 10, 0, &v, e)) < 0)
        return -1;
    if (rc)
        g->sp.repetition_penalty = (float)v;
    if ((rc = get_num(root, "seed", -9.2e18, 1.8e19, 1, &v, e)) < 0)
        return -1;
    g->seed = rc ? (v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v) : rt_server_next_seed(ctx->srv);
    if ((f = field(root, "user")) && !cJSON_IsString(f)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_type", "user", "'user' must be a string");
        return -1;
    }
    if (get_bool(root, "ignore_eos", &g->ignore_eos, e) < 0)
        return -1;

    /* logprobs: a boolean plus top_logprobs (chat), or an integer count (completions) */
    if (chat) {
        if (get_bool(root, "logprobs", &g->logprobs, e) < 0)
            return -1;
        if ((rc = get_num(root, "top_logprobs", 0, ENG_MAX_LOGPROBS, 1, &v, e)) < 0)
            return -1;
        if (rc && !g->logprobs && v > 0) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", "top_logprobs",
                         "'top_logprobs' needs 'logprobs' set to true");
            return -1;
        }
        if (rc)
            g->top_logprobs = (uint32_t)v;
    } else {
        if ((rc = get_num(root, "logprobs", 0, ENG_MAX_LOGPROBS, 1, &v, e)) < 0)
            return -1;
        if (rc)
            g->logprobs = 1, g->top_logprobs = (uint32_t)v;
    }
    g->sp.n_logprobs = g->top_logprobs;

    /* stop: a string or up to 4 strings */
    if ((f = field(root, "stop"))) {
        if (cJSON_IsString(f)) {
            g->stop[g->n_stop++] = f->valuestring;
        } else if (cJSON_IsArray(f)) {
            const cJSON *it;
            cJSON_ArrayForEach(it, f)
            {
                if (!cJSON_IsString(it)) {
                    rt_error_set(e, 400, "invalid_request_error", "invalid_type", "stop",
                                 "'stop' must be a string or a list of strings");
                    return -1;
                }
                if (g->n_stop == ENG_MAX_STOP) {
                    rt_error_set(e, 400, "invalid_request_error", "invalid_value", "stop",
                                 "'stop' holds at most %d strings", ENG_MAX_STOP);
                    return -1;
                }
                g->stop[g->n_stop++] = it->valuestring;
            }
        } else {
            rt_error_set(e, 400, "invalid_request_error", "invalid_type", "stop",
                         "'stop' must be a string or a list of strings");
            return -1;
        }
        for (uint32_t i = 0; i < g->n_stop; i++)
            if (!g->stop[i][0] || strlen(g->stop[i]) >= ENG_STOP_MAX_LEN) {
                rt_error_set(e, 400, "invalid_request_error", "invalid_value", "stop",
                             "each stop string must be 1 to %d bytes long", ENG_STOP_MAX_LEN - 1);
                return -1;
            }
    }

    /* logit_bias: {"token id": bias} */
    if ((f = field(root, "logit_bias"))) {
        int nb = cJSON_IsObject(f) ? cJSON_GetArraySize(f) : -1;
        if (nb < 0 || nb > 1024) {
            rt_error_set(e, 400, "invalid_request_error", nb < 0 ? "invalid_type" : "invalid_value", "logit_bias",
                         "'logit_bias' must be an object of at most 1024 {\"token id\": bias} entries");
            return -1;
        }
        g->bias = malloc(((size_t)nb + 1) * sizeof *g->bias);
        if (!g->bias) {
            rt_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
            return -1;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, f)
        {
            char *end;
            long id = strtol(it->string, &end, 10);
            if (!it->string[0] || *end || id < 0 || id >= (long)vocab || !cJSON_IsNumber(it) ||
                !(it->valuedouble >= -100 && it->valuedouble <= 100)) {
                rt_error_set(e, 400, "invalid_request_error", "invalid_value", "logit_bias",
                             "'logit_bias' entry \"%.32s\" is invalid: keys are token ids in [0, %u), values "
                             "numbers in [-100, 100]",
                             it->string, vocab);
                return -1;
            }
            g->bias[g->sp.n_logit_bias++] = (eng_logit_bias){(int32_t)id, (float)it->valuedouble};
        }
        g->sp.logit_bias = g->bias;
    }
    eng_err ee = {{0}};
    if (eng_sampling_check(&g->sp, vocab, &ee)) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", NULL, "%s", ee.msg);
        return -1;
    }

    /* the prompts, last: the most expensive part */
    if (chat) {
        char *text = NULL;
        long len = 0;
        if (render_chat(ctx->model, root, &text, &len, e))
            return -1;
        rc = add_text_prompt(tok, &g->pr, text, (size_t)len, 0, "messages", e);
        free(text);
        if (rc)
            return -1;
    } else if (completion_prompts(tok, root, &g->pr, e)) {
        return -1;
    }
    const char *pname = chat ? "messages" : "prompt";
    if (g->pr.n * g->n > RT_MAX_CHOICES) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", "n",
                     "n x prompts is %u; at most %d choices fit in one request", g->pr.n * g->n, RT_MAX_CHOICES);
        return -1;
    }
    /* Each choice waits in the queue as a request of its own. A request needing more places than
     * the queue has is refused outright (a policy: the engine might drain the queue while the
     * choices are submitted, but a client cannot count on that, and a 429 would invite retries) */
    uint32_t max_queue = eng_engine_max_queue(ctx->engine);
    if (g->pr.n * g->n > max_queue) {
        rt_error_set(e, 400, "invalid_request_error", "invalid_value", g->n > 1 ? "n" : pname,
                     "n x prompts is %u, more than the server's request queue holds (%u, --max-queue)",
                     g->pr.n * g->n, max_queue);
        return -1;
    }
    for (uint32_t i = 0; i < g->pr.n; i++) {
        if (g->pr.len[i] == 0) {
            rt_error_set(e, 400, "invalid_request_error", "invalid_value", pname, "the prompt is empty");
            return -1;
        }
        if (g->pr.len[i] >= n_ctx) {
            rt_error_set(e, 400, "invalid_request_error", "context_length_exceeded", pname,
                         "this model's maximum context length is %u tokens; the prompt has %u tokens", n_ctx,
                         g->pr.len[i]);
            return -1;
        }
    }
    return 0;
}

/* ======================================================================================
 * Output pieces shared by the JSON body and the SSE chunks
 * ====================================================================================== */
static const char *finish_name(int f)
{
    switch (f) {
    case ENG_FINISH_STOP: return "stop";
    case ENG_FINISH_LENGTH: return "length";
    case ENG_FINISH_CANCELLED: return "cancelled";
    case ENG_FINISH_ERROR: return "error";
    }
    return "unknown";
}

/* The token's own bytes (its text in the vocab for control tokens), at most cap. */
static size_t token_bytes(const eng_tokenizer *tok, int32_t id, char *buf, size_t cap)
{
    size_t n = eng_token_bytes(tok, id, buf, cap);
    if (n == 0) {
        size_t len = 0;
        const char *t = eng_token_text(tok, id, &len);
        if (t) {
            n = len < cap ? len : cap;
            memcpy(buf, t, n);
        }
    }
    return n < cap ? n : cap;
}

static void logprob_num(rt_buf *b, float lp)
{
    rt_buf_json_num(b, isfinite(lp) ? lp : -9999.0); /* OpenAI's spelling of -inf */
}

/* Chat: one entry of logprobs.content: {"token","logprob","bytes","top_logprobs":[...]} */
static void chat_logprob_entry(rt_buf *b, const eng_tokenizer *tok, int32_t token, const eng_sample_result *s)
{
    char t[256];
    int32_t ids[1 + ENG_MAX_LOGPROBS];
    float lps[1 + ENG_MAX_LOGPROBS];
    uint32_t n = 1;
    ids[0] = token;
    lps[0] = s ? s->logprob : NAN;
    for (uint32_t i = 0; s && i < s->n_top; i++)
        ids[n] = s->top[i].token, lps[n++] = s->top[i].logprob;
    for (uint32_t i = 0; i < n; i++) {
        if (i == 1)
            rt_buf_puts(b, ",\"top_logprobs\":[");
        else if (i > 1)
            rt_buf_puts(b, ",");
        size_t k = token_bytes(tok, ids[i], t, sizeof t);
        rt_buf_puts(b, "{\"token\":");
        rt_buf_json_str(b, t, k);
        rt_buf_puts(b, ",\"logprob\":");
        logprob_num(b, lps[i]);
        rt_buf_puts(b, ",\"bytes\":[");
        for (size_t j = 0; j < k; j++)
            rt_buf_printf(b, "%s%u", j ? "," : "", (unsigned char)t[j]);
        rt_buf_puts(b, "]");
        if (i > 0)
            rt_buf_puts(b, "}");
    }
    if (n == 1)
        rt_buf_puts(b, ",\"top_logprobs\":[");
    rt_buf_puts(b, "]}");
}

/* Completions: the four parallel arrays, accumulated per token. */
typedef struct cmpl_lp {
    rt_buf tokens, token_logprobs, top, offsets;
    uint32_t n;
} cmpl_lp;

/* One "token":logprob entry of a position's top_logprobs object. */
static void top_entry(cmpl_lp *c, const eng_tokenizer *tok, const char *sep, eng_token_logprob e)
{
    char t[256];
    size_t k = token_bytes(tok, e.token, t, sizeof t);
    rt_buf_puts(&c->top, sep);
    rt_buf_json_str(&c->top, t, k);
    rt_buf_puts(&c->top, ":");
    logprob_num(&c->top, e.logprob);
}

static void cmpl_lp_add(cmpl_lp *c, const eng_tokenizer *tok, int32_t token, const eng_sample_result *s, size_t off)
{
    char t[256];
    const char *sep = c->n++ ? "," : "";
    size_t k = token_bytes(tok, token, t, sizeof t);
    rt_buf_puts(&c->tokens, sep);
    rt_buf_json_str(&c->tokens, t, k);
    rt_buf_puts(&c->token_logprobs, sep);
    logprob_num(&c->token_logprobs, s ? s->logprob : NAN);
    rt_buf_printf(&c->offsets, "%s%zu", sep, off);
    /* the top candidates and, as OpenAI's legacy completions do, the sampled token when it
     * is not among them (so up to logprobs + 1 entries) */
    rt_buf_puts(&c->top, sep);
    rt_buf_puts(&c->top, "{");
    int sampled_in = 0;
    for (uint32_t i = 0; s && i < s->n_top; i++) {
        top_entry(c, tok, i ? "," : "", s->top[i]);
        sampled_in |= s->top[i].token == token;
    }
    if (s && !sampled_in)
        top_entry(c, tok, s->n_top ? "," : "", (eng_token_logprob){token, s->logprob});
    rt_buf_puts(&c->top, "}");
}

static void cmpl_lp_write(rt_buf *b, cmpl_lp *c)
{
    rt_buf_puts(b, "{\"tokens\":[");
    rt_buf_put(b, c->tokens.data ? c->tokens.data : "", c->tokens.len);
    rt_buf_puts(b, "],\"token_logprobs\":[");
    rt_buf_put(b, c->token_logprobs.data ? c->token_logprobs.data : "", c->token_logprobs.len);
    rt_buf_puts(b, "],\"top_logprobs\":[");
    rt_buf_put(b, c->top.data ? c->top.data : "", c->top.len);
    rt_buf_puts(b, "],\"text_offset\":[");
    rt_buf_put(b, c->offsets.data ? c->offsets.data : "", c->offsets.len);
    rt_buf_puts(b, "]}");
    if (c->tokens.oom || c->token_logprobs.oom || c->top.oom || c->offsets.oom)
        b->oom = 1;
}

static void cmpl_lp_free(cmpl_lp *c)
{
    rt_buf_free(&c->tokens);
    rt_buf_free(&c->token_logprobs);
    rt_buf_free(&c->top);
    rt_buf_free(&c->offsets);
    c->n = 0;
}

static void usage_json(rt_buf *b, uint32_t prompt, uint32_t completion, uint32_t cached)
{
    rt_buf_printf(b,
                  "{\"prompt_tokens\":%u,\"completion_tokens\":%u,\"total_tokens\":%u,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":%u}}",
                  prompt, completion, prompt + completion, cached);
}

/* `{"id":...,"object":...,"created":...,"model":...,"system_fingerprint":...,` */
static void head_json(rt_buf *b, const rt_api_ctx *ctx, int chat, int chunk, const char *id, long long created)
{
    rt_buf_printf(b, "{\"id\":\"%s%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", chat ? "chatcmpl-" : "cmpl-",
                  id, chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion", created);
    rt_buf_json_str(b, ctx->model_name, strlen(ctx->model_name));
    rt_buf_printf(b, ",\"system_fingerprint\":\"%s\",", ctx->fingerprint);
}

/* ======================================================================================
 * Submission
 * ====================================================================================== */
typedef struct batch {
    uint32_t k;                /* choices */
    eng_request *reqs[RT_MAX_CHOICES];
    uint32_t prompt_of[RT_MAX_CHOICES];
    int watch_slot;
} batch;

static void batch_release(const rt_api_ctx *ctx, batch *bt)
{
    rt_watch_remove(ctx->watch, bt->watch_slot);
    bt->watch_slot = -1;
    for (uint32_t i = 0; i < bt->k; i++)
        eng_request_release(bt->reqs[i]);
    bt->k = 0;
}

static int submit_all(const rt_api_ctx *ctx, const rt_request *req, gen *g, batch *bt, rt_error *e,
                      int *retry_after)
{
    uint32_t n_ctx = eng_model_n_ctx(ctx->model);
    bt->k = 0;
    bt->watch_slot = -1;
    for (uint32_t p = 0; p < g->pr.n; p++) {
        for (uint32_t j = 0; j < g->n; j++) {
            eng_request_params rp = {.prompt = g->pr.ids[p],
                                     .n_prompt = g->pr.len[p],
                                     .max_tokens = g->max_tokens,
                                     .sampling = g->sp,
                                     .stop = g->stop,
                                     .n_stop = g->n_stop,
                                     .ignore_eos = g->ignore_eos,
                                     .logprobs = g->logprobs};
            uint32_t room = n_ctx - g->pr.len[p];
            if (rp.max_tokens > room)
                rp.max_tokens = room; /* the engine stops there anyway (finish: length) */
            rp.sampling.seed = g->seed + j;
            eng_err ee = {{0}};
            eng_request *r = NULL;
            int rc = eng_submit(ctx->engine, &rp, &r, &ee);
            if (rc) {
                batch_release(ctx, bt);
                const char *pname = g->chat ? "messages" : "prompt";
                switch (rc) {
                case ENG_EBUSY:
                    rt_error_set(e, 429, "rate_limit_exceeded", "queue_full", NULL,
                                 "the server is at capacity (request queue full); retry shortly");
                    *retry_after = 1;
                    break;
                case ENG_ETOOLONG:
                    rt_error_set(e, 400, "invalid_request_error", "context_length_exceeded", pname, "%s",
                                 ee.msg[0] ? ee.msg : "the prompt does not fit in the context");
                    break;
                case ENG_ESTOPPED:
                    rt_error_set(e, 503, "service_unavailable", "shutting_down", NULL,
                                 "the server is shutting down and admits no new requests");
                    *retry_after = 1;
                    break;
                case ENG_EINVAL:
                    rt_error_set(e, 400, "invalid_request_error", "invalid_value", NULL, "%s",
                                 ee.msg[0] ? ee.msg : "invalid request");
                    break;
                default:
                    rt_error_set(e, 500, "server_error", NULL, NULL, "cannot start the request: %s",
                                 ee.msg[0] ? ee.msg : eng_strerror(rc));
                }
                return -1;
            }
            bt->prompt_of[bt->k] = p;
            bt->reqs[bt->k++] = r;
        }
    }
    bt->watch_slot = rt_watch_add(ctx->watch, req->fd, bt->reqs, bt->k);
    return 0;
}

/* ======================================================================================
 * Non-streaming: read every choice to its end, then one JSON body
 * ====================================================================================== */
static void respond_whole(const rt_api_ctx *ctx, gen *g, batch *bt, rt_reqlog *lg, rt_response *resp)
{
    const eng_tokenizer *tok = eng_model_tokenizer(ctx->model);
    rt_buf out = {0}, text = {0}, lp = {0};
    cmpl_lp clp = {0};
    rt_error e = {0};
    uint32_t prompt_tokens = 0, completion_tokens = 0, cached = 0;
    uint32_t prompt_seen = UINT32_MAX;

    head_json(&out, ctx, g->chat, 0, lg->id, (long long)time(NULL));
    rt_buf_puts(&out, "\"choices\":[");
    for (uint32_t i = 0; i < bt->k; i++) {
        eng_event ev;
        text.len = 0;
        lp.len = 0;
        cmpl_lp_free(&clp);
        int n_lp = 0;
        for (;;) {
            eng_request_next(bt->reqs[i], &ev, -1);
            if (ev.done)
                break;
            if (lg->ttft_s < 0)
                lg->ttft_s = rt_now_s() - lg->t_start;
            if (g->logprobs) {
                if (g->chat) {
                    rt_buf_puts(&lp, n_lp++ ? "," : "");
                    chat_logprob_entry(&lp, tok, ev.token, ev.sample);
                } else {
                    cmpl_lp_add(&clp, tok, ev.token, ev.sample, text.len);
                }
            }
            rt_buf_put(&text, ev.text, ev.text_len);
        }
        rt_buf_put(&text, ev.text, ev.text_len); /* what was held back until the end */
        if (ev.finish == ENG_FINISH_CANCELLED) {
            rt_error_set(&e, 503, "service_unavailable", "cancelled", NULL,
                         "the request was cancelled (client gone or server shutting down)");
            lg->finish = "cancelled";
            break;
        }
        if (ev.finish == ENG_FINISH_ERROR) {
            rt_error_set(&e, 500, "server_error", NULL, NULL, "generation failed: %s",
                         ev.error ? ev.error : "unknown error");
            lg->finish = "error";
            break;
        }
        if (bt->prompt_of[i] != prompt_seen) {
            prompt_seen = bt->prompt_of[i];
            prompt_tokens += ev.n_prompt;
            cached += ev.n_cached;
        }
        completion_tokens += ev.n_generated;
        lg->finish = finish_name(ev.finish);
        rt_buf_printf(&out, "%s{\"index\":%u,", i ? "," : "", i);
        if (g->chat) {
            rt_buf_puts(&out, "\"message\":{\"role\":\"assistant\",\"content\":");
            rt_buf_json_str(&out, text.data ? text.data : "", text.len);
            rt_buf_puts(&out, "},\"logprobs\":");
            if (g->logprobs) {
                rt_buf_puts(&out, "{\"content\":[");
                rt_buf_put(&out, lp.data ? lp.data : "", lp.len);
                rt_buf_puts(&out, "],\"refusal\":null}");
            } else {
                rt_buf_puts(&out, "null");
            }
        } else {
            rt_buf_puts(&out, "\"text\":");
            rt_buf_json_str(&out, text.data ? text.data : "", text.len);
            rt_buf_puts(&out, ",\"logprobs\":");
            if (g->logprobs)
                cmpl_lp_write(&out, &clp);
            else
                rt_buf_puts(&out, "null");
        }
        rt_buf_printf(&out, ",\"finish_reason\":\"%s\"}", finish_name(ev.finish));
    }
    lg->prompt_tokens = prompt_tokens;
    lg->completion_tokens = completion_tokens;
    lg->cached_tokens = cached;
    if (e.status) {
        rt_response_error(resp, &e);
    } else {
        rt_buf_puts(&out, "],\"usage\":");
        usage_json(&out, prompt_tokens, completion_tokens, cached);
        rt_buf_puts(&out, "}");
        if (text.oom || lp.oom)
            out.oom = 1;
        rt_response_json(resp, 200, &out);
    }
    rt_buf_free(&out);
    rt_buf_free(&text);
    rt_buf_free(&lp);
    cmpl_lp_free(&clp);
}

/* ======================================================================================
 * Streaming: Server-Sent Events pulled by the HTTP thread
 * ====================================================================================== */
enum { ST_CHOICE_START, ST_TOKENS, ST_TRAILER, ST_END };

struct rt_stream {
    rt_api_ctx ctx;            /* copies: valid while the in-flight slot is held */
    const eng_tokenizer *tok;
    int chat, include_usage, logprobs;
    batch bt;
    uint32_t cur;              /* the choice being read (choices go one after another) */
    int state;
    int failed;                /* cancelled: the connection is cut, not ended */
    size_t text_off;           /* completions text_offset of the current choice */
    uint32_t prompt_seen;
    uint32_t prompt_tokens, completion_tokens, cached;
    rt_buf head;               /* the chunk prefix up to "choices": */
    rt_buf out;                /* bytes ready to go */
    size_t out_pos;
    rt_reqlog lg;
};

static void chunk_open(rt_stream *s, uint32_t index)
{
    rt_buf_puts(&s->out, "data: ");
    rt_buf_put(&s->out, s->head.data, s->head.len);
    rt_buf_printf(&s->out, "\"choices\":[{\"index\":%u,", index);
}

static void chunk_close(rt_stream *s, const char *finish)
{
    if (finish)
        rt_buf_printf(&s->out, ",\"finish_reason\":\"%s\"}]", finish);
    else
        rt_buf_puts(&s->out, ",\"finish_reason\":null}]");
    rt_buf_puts(&s->out, s->include_usage ? ",\"usage\":null}\n\n" : "}\n\n");
}

/* One chunk of text; with ev, the logprobs of its token (ev->token), else "logprobs": null. */
static void stream_piece(rt_stream *s, const char *text, size_t len, const eng_event *ev)
{
    chunk_open(s, s->cur);
    if (s->chat) {
        rt_buf_puts(&s->out, "\"delta\":{\"content\":");
        rt_buf_json_str(&s->out, text, len);
        rt_buf_puts(&s->out, "},\"logprobs\":");
        if (ev) {
            rt_buf_puts(&s->out, "{\"content\":[");
            chat_logprob_entry(&s->out, s->tok, ev->token, ev->sample);
            rt_buf_puts(&s->out, "],\"refusal\":null}");
        } else {
            rt_buf_puts(&s->out, "null");
        }
    } else {
        rt_buf_puts(&s->out, "\"text\":");
        rt_buf_json_str(&s->out, text, len);
        rt_buf_puts(&s->out, ",\"logprobs\":");
        if (ev) {
            cmpl_lp c = {0};
            cmpl_lp_add(&c, s->tok, ev->token, ev->sample, s->text_off);
            cmpl_lp_write(&s->out, &c);
            cmpl_lp_free(&c);
        } else {
            rt_buf_puts(&s->out, "null");
        }
    }
    s->text_off += len;
    chunk_close(s, NULL);
}

static void stream_token(rt_stream *s, const eng_event *ev)
{
    if (s->lg.ttft_s < 0)
        s->lg.ttft_s = rt_now_s() - s->lg.t_start;
    if (ev->text_len == 0 && !s->logprobs)
        return; /* held back (partial character, possible stop string): nothing to say yet */
    stream_piece(s, ev->text, ev->text_len, s->logprobs ? ev : NULL);
}

static void stream_error(rt_stream *s, const char *msg)
{
    rt_buf_puts(&s->out, "data: {\"error\":{\"message\":");
    rt_buf_json_str(&s->out, msg, strlen(msg));
    rt_buf_puts(&s->out, ",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n");
}

/* Make more bytes (blocking for the engine when needed). */
static void stream_produce(rt_stream *s)
{
    if (s->state == ST_CHOICE_START) {
        s->text_off = 0;
        if (s->chat) { /* OpenAI's first chunk of a choice names the role */
            chunk_open(s, s->cur);
            rt_buf_puts(&s->out, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null");
            chunk_close(s, NULL);
        }
        s->state = ST_TOKENS;
        if (s->chat)
            return;
    }
    if (s->state == ST_TOKENS) {
        eng_request *r = s->bt.reqs[s->cur];
        eng_event ev;
        eng_request_next(r, &ev, -1);
        /* take whatever else is already there in the same write */
        while (!ev.done) {
            stream_token(s, &ev);
            if (s->out.len >= 8192 || eng_request_next(r, &ev, 0) != 1)
                return;
        }
        s->completion_tokens += ev.n_generated;
        if (s->bt.prompt_of[s->cur] != s->prompt_seen) {
            s->prompt_seen = s->bt.prompt_of[s->cur];
            s->prompt_tokens += ev.n_prompt;
            s->cached += ev.n_cached;
        }
        s->lg.finish = finish_name(ev.finish);
        if (ev.finish == ENG_FINISH_CANCELLED) {
            s->failed = 1;
            s->state = ST_END;
            return;
        }
        if (ev.finish == ENG_FINISH_ERROR) {
            char msg[300];
            snprintf(msg, sizeof msg, "generation failed: %s", ev.error ? ev.error : "unknown error");
            stream_error(s, msg);
            rt_buf_puts(&s->out, "data: [DONE]\n\n");
            s->state = ST_END;
            return;
        }
        if (ev.text_len) /* held back until the end */
            stream_piece(s, ev.text, ev.text_len, NULL);
        chunk_open(s, s->cur);
        rt_buf_puts(&s->out, s->chat ? "\"delta\":{},\"logprobs\":null" : "\"text\":\"\",\"logprobs\":null");
        chunk_close(s, finish_name(ev.finish));
        if (++s->cur < s->bt.k)
            s->state = ST_CHOICE_START;
        else
            s->state = ST_TRAILER;
        return;
    }
    if (s->state == ST_TRAILER) {
        if (s->include_usage) {
            rt_buf_puts(&s->out, "data: ");
            rt_buf_put(&s->out, s->head.data, s->head.len);
            rt_buf_puts(&s->out, "\"choices\":[],\"usage\":");
            usage_json(&s->out, s->prompt_tokens, s->completion_tokens, s->cached);
            rt_buf_puts(&s->out, "}\n\n");
        }
        rt_buf_puts(&s->out, "data: [DONE]\n\n");
        s->state = ST_END;
    }
}

ssize_t rt_stream_read(rt_stream *s, char *buf, size_t cap)
{
    while (s->out_pos >= s->out.len) {
        s->out.len = s->out_pos = 0;
        if (s->state == ST_END)
            return s->failed ? -1 : 0;
        stream_produce(s);
        if (s->out.oom) {
            s->failed = 1;
            s->state = ST_END;
            s->out.len = 0;
            s->out.oom = 0;
        }
    }
    size_t n = s->out.len - s->out_pos;
    if (n > cap)
        n = cap;
    memcpy(buf, s->out.data + s->out_pos, n);
    s->out_pos += n;
    return (ssize_t)n;
}

void rt_stream_destroy(rt_stream *s)
{
    if (!s)
        return;
    if (s->state != ST_END || s->failed) {
        /* the client went away (or the stream was never read): whatever ran is counted */
        if (!s->lg.finish || s->state != ST_END)
            s->lg.finish = "cancelled";
    }
    batch_release(&s->ctx, &s->bt);
    s->lg.prompt_tokens = s->prompt_tokens;
    s->lg.completion_tokens = s->completion_tokens;
    s->lg.cached_tokens = s->cached;
    rt_server_stream_release(s->ctx.srv);
    rt_server_request_done(s->ctx.srv, &s->lg, 200);
    rt_buf_free(&s->head);
    rt_buf_free(&s->out);
    free(s);
}

/* ======================================================================================
 * Handlers
 * ====================================================================================== */
void rt_api_generate(const rt_api_ctx *ctx, const rt_request *req, int chat, rt_reqlog *lg, rt_response *resp,
                     int *lg_taken)
{
    rt_error e = {0};
    gen g;
    memset(&g, 0, sizeof g);
    batch bt = {.watch_slot = -1};
    int stream_slot = 0, retry_after = 0;
    cJSON *root = parse_body(req, &e);
    if (!root)
        goto fail;
    if (parse_gen(ctx, root, chat, &g, &e))
        goto fail;
    if (g.stream && !(stream_slot = rt_server_stream_acquire(ctx->srv))) {
        rt_error_set(&e, 429, "rate_limit_exceeded", "too_many_streams", "stream",
                     "too many concurrent streams (at most %u, --max-streams); retry shortly", ctx->cfg->max_streams);
        retry_after = 1;
        goto fail;
    }
    if (submit_all(ctx, req, &g, &bt, &e, &retry_after))
        goto fail;
    cJSON_Delete(root); /* the engine copied the stop strings */
    root = NULL;

    if (!g.stream) {
        respond_whole(ctx, &g, &bt, lg, resp);
        batch_release(ctx, &bt);
        gen_free(&g);
        return;
    }
    rt_stream *s = calloc(1, sizeof *s);
    if (!s) {
        batch_release(ctx, &bt);
        rt_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
        goto fail;
    }
    s->ctx = *ctx;
    s->tok = eng_model_tokenizer(ctx->model);
    s->chat = chat;
    s->include_usage = g.include_usage;
    s->logprobs = g.logprobs;
    s->bt = bt;
    s->prompt_seen = UINT32_MAX;
    s->lg = *lg;
    head_json(&s->head, ctx, chat, 1, lg->id, (long long)time(NULL));
    resp->status = 200;
    resp->content_type = "text/event-stream";
    resp->stream = s;
    *lg_taken = 1;
    gen_free(&g);
    return;
fail:
    cJSON_Delete(root);
    gen_free(&g);
    if (stream_slot)
        rt_server_stream_release(ctx->srv);
    rt_response_error(resp, &e);
    resp->retry_after_s = retry_after;
}

static const char *token_list_error(const cJSON *arr, uint32_t vocab)
{
    const cJSON *t;
    if (!cJSON_IsArray(arr))
        return "must be a list of token ids";
    cJSON_ArrayForEach(t, arr) if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) ||
                                   t->valuedouble < 0 || t->valuedouble >= vocab) return "holds an invalid token id";
    return NULL;
}

void rt_api_tokenize(const rt_api_ctx *ctx, const rt_request *req, rt_response *resp)
{
    rt_error e = {0};
    prompts pr = {0};
    char *text = NULL;
    const eng_tokenizer *tok = eng_model_tokenizer(ctx->model);
    cJSON *root = parse_body(req, &e);
    if (!root)
        goto fail;
    int add_special = -1;
    if (get_bool(root, "add_special_tokens", &add_special, &e) < 0)
        goto fail;
    const cJSON *p = field(root, "prompt");
    if (field(root, "messages")) {
        long len;
        if (render_chat(ctx->model, root, &text, &len, &e) ||
            add_text_prompt(tok, &pr, text, (size_t)len, add_special == 1, "messages", &e))
            goto fail;
    } else if (cJSON_IsString(p)) {
        if (add_text_prompt(tok, &pr, p->valuestring, strlen(p->valuestring), add_special != 0, "prompt", &e))
            goto fail;
    } else {
        rt_error_set(&e, 400, "invalid_request_error", p ? "invalid_type" : "missing_required_parameter", "prompt",
                     "'prompt' (a string) or 'messages' is required");
        goto fail;
    }
    rt_buf b = {0};
    rt_buf_printf(&b, "{\"count\":%u,\"max_model_len\":%u,\"tokens\":[", pr.len[0], eng_model_n_ctx(ctx->model));
    for (uint32_t i = 0; i < pr.len[0]; i++)
        rt_buf_printf(&b, "%s%d", i ? "," : "", pr.ids[0][i]);
    rt_buf_puts(&b, "]}");
    rt_response_json(resp, 200, &b);
    cJSON_Delete(root);
    prompts_free(&pr);
    free(text);
    return;
fail:
    cJSON_Delete(root);
    prompts_free(&pr);
    free(text);
    rt_response_error(resp, &e);
}

void rt_api_detokenize(const rt_api_ctx *ctx, const rt_request *req, rt_response *resp)
{
    rt_error e = {0};
    const eng_tokenizer *tok = eng_model_tokenizer(ctx->model);
    int32_t *ids = NULL;
    char *text = NULL;
    cJSON *root = parse_body(req, &e);
    if (!root)
        goto fail;
    const cJSON *t = field(root, "tokens");
    const char *why = t ? token_list_error(t, eng_vocab_size(tok)) : "is required";
    if (why) {
        rt_error_set(&e, 400, "invalid_request_error", t ? "invalid_value" : "missing_required_parameter", "tokens",
                     "'tokens' %s (integers in [0, %u))", why, eng_vocab_size(tok));
        goto fail;
    }
    size_t n = (size_t)cJSON_GetArraySize(t), k = 0;
    ids = malloc((n + 1) * sizeof *ids);
    if (!ids)
        goto oom;
    const cJSON *it;
    cJSON_ArrayForEach(it, t) ids[k++] = (int32_t)it->valuedouble;
    size_t need = eng_detokenize(tok, ids, n, 1, NULL, 0);
    text = malloc(need + 1);
    if (!text)
        goto oom;
    eng_detokenize(tok, ids, n, 1, text, need + 1);
    rt_buf b = {0};
    rt_buf_puts(&b, "{\"prompt\":");
    rt_buf_json_str(&b, text, need);
    rt_buf_puts(&b, "}");
    rt_response_json(resp, 200, &b);
    cJSON_Delete(root);
    free(ids);
    free(text);
    return;
oom:
    rt_error_set(&e, 500, "server_error", NULL, NULL, "out of memory");
fail:
    cJSON_Delete(root);
    free(ids);
    free(text);
    rt_response_error(resp, &e);
}

int rt_api_invoke_kind(const rt_request *req, rt_error *e)
{
    cJSON *root = parse_body(req, e);
    if (!root)
        return -1;
    int kind = field(root, "messages") ? 1 : field(root, "prompt") ? 0 : -1;
    cJSON_Delete(root);
    if (kind < 0)
        rt_error_set(e, 400, "invalid_request_error", "missing_required_parameter", "messages",
                     "the body must be an OpenAI chat request (with 'messages') or completion request (with "
                     "'prompt')");
    return kind;
}
