/* config.c -- `thaw serve` flags and their THAW_* environment variables.
 *
 * One table lists every option once: its flag, its variable, its kind and range, and its
 * help line; the parser and the usage text both come from it. Precedence: a flag, then its
 * THAW_* variable, then (port only) FC_CUSTOM_LISTEN_PORT, then the default. The port's FC
 * variable ranks below --port but above THAW_PORT: under FC the platform's port is the one
 * traffic arrives on.
 *
 * --lazy: listen first and load the model in the background (health answers 503 "loading"
 * until it is ready; API requests wait for it). The default under FC (FC_FUNCTION_NAME set),
 * where the port must answer within the platform's start-up probe and the Initializer hook
 * (POST /initialize) reports a failed load. Elsewhere the default is to load first and then
 * listen: an open port means ready, and a bad model path ends `thaw serve` at once with
 * status 1 instead of leaving a process that only ever answers 503.
 */
#include "server.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RT_DEFAULT_MODEL "models/smollm2-135m-instruct.thaw"

enum opt_kind { OPT_STR, OPT_U32, OPT_SIZE, OPT_SECONDS, OPT_BOOL, OPT_FRAC };

typedef struct opt {
    const char *flag;          /* "--max-body" */
    const char *alias;         /* "-m" or NULL */
    int kind;
    size_t offset;             /* into rt_config */
    double lo, hi;             /* numeric range */
    const char *arg, *help;
} opt;

#define OFF(f) offsetof(rt_config, f)
static const opt opts[] = {
    {"--model", "-m", OPT_STR, OFF(model), 0, 0, "SRC", "snapshot: a file, http(s):// URL or oss://BUCKET/KEY (default " RT_DEFAULT_MODEL ")"},
    {"--cache-dir", NULL, OPT_STR, OFF(cache_dir), 0, 0, "DIR", "keep a verified copy of a remote snapshot here (default: memory only)"},
    {"--oss-endpoint", NULL, OPT_STR, OFF(oss_endpoint), 0, 0, "HOST", "OSS endpoint for oss:// (default: the FC region's internal one)"},
    {"--host", NULL, OPT_STR, OFF(host), 0, 0, "ADDR", "bind address (default 0.0.0.0, as FC requires)"},
    {"--port", "-p", OPT_U32, OFF(port), 0, 65535, "N", "port (default $FC_CUSTOM_LISTEN_PORT, else $THAW_PORT, else 9000; 0 = any free port)"},
    {"--served-model-name", NULL, OPT_STR, OFF(served_model_name), 0, 0, "NAME", "model name in responses and /v1/models (default: the snapshot's)"},
    {"--api-key", NULL, OPT_STR, OFF(api_key), 0, 0, "KEY", "require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize"},
    {"--lazy", NULL, OPT_BOOL, OFF(lazy), 0, 1, NULL, "listen first, load in the background (default under FC; --no-lazy: load, then listen)"},
    {"--max-body", NULL, OPT_SIZE, OFF(max_body_bytes), 1024, 1ull << 40, "BYTES", "largest request body (default 8M; FC allows 32M)"},
    {"--max-tokens", NULL, OPT_U32, OFF(max_tokens), 0, 1u << 30, "N", "largest max_tokens a request may ask for (default 0 = the context)"},
    {"--max-streams", NULL, OPT_U32, OFF(max_streams), 1, 1u << 20, "N", "concurrent streaming responses (default 64; beyond: 429)"},
    {"--max-connections", NULL, OPT_U32, OFF(max_connections), 1, 1u << 16, "N", "HTTP connections, one thread each (default 256)"},
    {"--conn-timeout", NULL, OPT_U32, OFF(conn_timeout_s), 0, 86400, "SECONDS", "close a connection idle this long (default 120; 0 = never)"},
    {"--grace", NULL, OPT_SECONDS, OFF(grace_s), 0, 86400, "SECONDS", "on /pre-stop or SIGTERM, wait this long for in-flight requests (default 30)"},
    {"--idle-exit", NULL, OPT_SECONDS, OFF(idle_exit_s), 0, 1e9, "SECONDS", "exit 0 after this long without an API request (default 0 = never)"},
    {"--device", NULL, OPT_STR, OFF(device), 0, 0, "NAME", "cpu, cuda or auto (default cpu)"},
    {"--chat-template", NULL, OPT_STR, OFF(chat_template), 0, 0, "NAME", "chatml, llama3, llama3.1, llama2 or mistral instead of the model's own"},
    {"--threads", NULL, OPT_U32, OFF(threads), 0, 1024, "N", "CPU threads (default: all cores)"},
    {"--ctx", NULL, OPT_U32, OFF(ctx), 0, 1u << 24, "N", "context length (default: the model's)"},
    {"--max-seqs", NULL, OPT_U32, OFF(max_seqs), 0, 1u << 16, "N", "sequences decoding at once (default 16)"},
    {"--max-batch-tokens", NULL, OPT_U32, OFF(max_batch_tokens), 0, 1u << 20, "N", "tokens per engine step (default: the model's)"},
    {"--max-queue", NULL, OPT_U32, OFF(max_queue), 0, 1u << 20, "N", "waiting requests before 429 (default 64)"},
    {"--kv-mem", NULL, OPT_SIZE, OFF(kv_mem_bytes), 0, 1ull << 50, "BYTES", "KV cache budget, e.g. 512M (default: the backend's)"},
    {"--gpu-mem-fraction", NULL, OPT_FRAC, OFF(gpu_mem_fraction), 0.05, 1, "F", "CUDA: share of the GPU's memory that weights, scratch and KV may fill (default 0.9)"},
};
#define N_OPTS (sizeof opts / sizeof opts[0])

void rt_config_usage(FILE *to)
{
    fprintf(to, "usage: thaw serve [options]   OpenAI-compatible server (FC custom-container contract)\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s%s", opts[i].alias ? opts[i].alias : "", opts[i].alias ? ", " : "",
                 opts[i].flag, opts[i].arg ? " " : "", opts[i].arg ? opts[i].arg : "");
        fprintf(to, "  %-28s %s\n", left, opts[i].help);
    }
    fprintf(to, "Every option is also an environment variable: --max-body -> THAW_MAX_BODY (flags win).\n"
                "Booleans take 1/0, true/false, yes/no, on/off.\n");
}

/* "--max-body" -> "THAW_MAX_BODY" */
static void env_name(const char *flag, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "THAW_");
    for (const char *p = flag + 2; *p && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = 0;
}

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (char **e = env; e && *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static int parse_bool(const char *v, int *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i]))
            return *out = 1, 0;
        if (!strcasecmp(v, no[i]))
            return *out = 0, 0;
    }
    return -1;
}

/* Applies value v (from `where`) to option o. */
static int apply(rt_config *c, const opt *o, const char *v, const char *where, char *err, size_t cap)
{
    char *base = (char *)c + o->offset;
    if (o->kind == OPT_STR) {
        *(const char **)base = v;
        return 0;
    }
    if (o->kind == OPT_BOOL) {
        if (parse_bool(v, (int *)base)) {
            snprintf(err, cap, "%s needs 1/0, true/false, yes/no or on/off, got '%s'", where, v);
            return -1;
        }
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || errno)
        goto bad;
    if (o->kind == OPT_SIZE) {
        double mul = 1;
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1024.0; end++; break;
        case 'M': mul = 1024.0 * 1024; end++; break;
        case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
        case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
        }
        if (mul > 1 && (*end == 'i' || *end == 'I'))
            end++;
        if (mul > 1 && (*end == 'b' || *end == 'B'))
            end++;
        d *= mul;
    } else if (o->kind == OPT_SECONDS && *end == 's') {
        end++;
    }
    if (*end || !(d >= o->lo && d <= o->hi))
        goto bad;
    if ((o->kind == OPT_U32 || o->kind == OPT_SIZE) && d != (double)(uint64_t)d)
        goto bad;
    switch (o->kind) {
    case OPT_U32: *(uint32_t *)base = (uint32_t)d; break;
    case OPT_SIZE: *(uint64_t *)base = (uint64_t)d; break;
    case OPT_SECONDS:
    case OPT_FRAC: *(double *)base = d; break;
    }
    return 0;
bad:
    snprintf(err, cap, "%s needs %s in [%g, %g], got '%s'", where,
             o->kind == OPT_SIZE      ? "a size (e.g. 8M)"
             : o->kind == OPT_SECONDS ? "seconds"
             : o->kind == OPT_FRAC    ? "a fraction"
                                      : "a whole number",
             o->lo, o->hi, v);
    return -1;
}

int rt_config_parse(rt_config *c, int argc, char **argv, char **env, char *err, size_t err_cap)
{
    memset(c, 0, sizeof *c);
    c->model = RT_DEFAULT_MODEL;
    c->host = "0.0.0.0";
    c->port = 9000;
    c->max_body_bytes = 8u << 20;
    c->max_streams = 64;
    c->max_connections = 256;
    c->conn_timeout_s = 120;
    c->grace_s = 30;
    c->under_fc = env_get(env, "FC_FUNCTION_NAME") != NULL;
    c->lazy = c->under_fc;
    const char *fc_port = env_get(env, "FC_CUSTOM_LISTEN_PORT");

    /* environment first, flags override */
    for (size_t i = 0; i < N_OPTS; i++) {
        char name[64];
        env_name(opts[i].flag, name, sizeof name);
        const char *v = env_get(env, name);
        if (v && *v) {
            if (apply(c, &opts[i], v, name, err, err_cap))
                return RT_CONFIG_ERROR;
        }
    }
    if (fc_port && *fc_port) {
        const opt *po = NULL;
        for (size_t i = 0; i < N_OPTS; i++)
            if (opts[i].offset == OFF(port))
                po = &opts[i];
        if (apply(c, po, fc_port, "FC_CUSTOM_LISTEN_PORT", err, err_cap))
            return RT_CONFIG_ERROR;
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return RT_CONFIG_HELP;
        const opt *o = NULL;
        const char *val = NULL;
        int negated = 0;
        for (size_t k = 0; k < N_OPTS && !o; k++) {
            size_t n = strlen(opts[k].flag);
            if (!strcmp(a, opts[k].flag) || (opts[k].alias && !strcmp(a, opts[k].alias))) {
                o = &opts[k];
            } else if (!strncmp(a, opts[k].flag, n) && a[n] == '=') {
                o = &opts[k];
                val = a + n + 1;
            } else if (opts[k].kind == OPT_BOOL && !strncmp(a, "--no-", 5) && !strcmp(a + 5, opts[k].flag + 2)) {
                o = &opts[k];
                negated = 1;
            }
        }
        if (!o) {
            snprintf(err, err_cap, "unknown option '%s' (see thaw serve --help)", a);
            return RT_CONFIG_ERROR;
        }
        if (o->kind == OPT_BOOL && !val) {
            *(int *)((char *)c + o->offset) = !negated;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, err_cap, "%s needs a value", a);
                return RT_CONFIG_ERROR;
            }
            val = argv[++i];
        }
        if (apply(c, o, val, o->flag, err, err_cap))
            return RT_CONFIG_ERROR;
    }
    if (!c->model || !*c->model) {
        snprintf(err, err_cap, "--model needs a file");
        return RT_CONFIG_ERROR;
    }
    if (c->api_key && !*c->api_key)
        c->api_key = NULL;
    if (c->served_model_name && !*c->served_model_name)
        c->served_model_name = NULL;
    return RT_CONFIG_OK;
}
