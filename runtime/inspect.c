/* inspect.c -- `thaw inspect FILE|URL [--verify] [--tensors]`: what a snapshot holds.
 * FILE may also be an http(s):// or oss:// source (snapshot/remote.c). */
#include "runtime.h"
#include "snapshot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum tensor_class { CLS_EMBED, CLS_ATTN, CLS_FFN, CLS_NORM, CLS_OUTPUT, CLS_OTHER, CLS_COUNT };
static const char *const class_names[CLS_COUNT] = {"embedding", "attention", "ffn", "norm", "output", "other"};

static int classify(const char *name)
{
    if (!strcmp(name, "token_embd.weight"))
        return CLS_EMBED;
    if (!strcmp(name, "output.weight"))
        return CLS_OUTPUT;
    if (strstr(name, "norm"))
        return CLS_NORM;
    if (strstr(name, ".attn_"))
        return CLS_ATTN;
    if (strstr(name, ".ffn_"))
        return CLS_FFN;
    return CLS_OTHER;
}

static void print_float(const char *label, float v)
{
    if (isnan(v))
        printf(" %s -", label);
    else
        printf(" %s %g", label, v);
}

static void print_header(const snap_file *f)
{
    const snap_config *c = snap_get_config(f);
    const snap_vocab *v = snap_get_vocab(f);
    const snap_gen_defaults *g = snap_get_gen_defaults(f);
    static const char *const rope_styles[] = {"norm", "neox"};
    static const char *const scalings[] = {"none", "linear", "llama3"};
    static const char *const pres[] = {"none", "gpt2", "smollm", "llama3", "qwen2"};
    printf("file       %s (%.1f MB, format v%u, target %s, quant %s)\n", snap_path(f), snap_file_size(f) / 1e6,
           snap_version(f), snap_target(f) == SNAP_TARGET_CUDA ? "cuda" : "cpu",
           snap_quant(f) == SNAP_QUANT_Q4 ? "q4" : snap_quant(f) == SNAP_QUANT_Q8 ? "q8" : "f16");
    printf("model      %s (arch %s)\n", c->name[0] ? c->name : "(unnamed)", snap_arch_name(c->arch));
    printf("config     layers %u, embd %u, heads %u/%u kv, head_dim %u, ff %u, vocab %u, ctx %u\n", c->n_layer,
           c->n_embd, c->n_head, c->n_head_kv, c->head_dim, c->n_ff, c->n_vocab, c->n_ctx_train);
    printf("rope       theta %g, style %s, scaling %s", c->rope_theta, rope_styles[c->rope_style & 1],
           scalings[c->rope_scaling % 3]);
    if (c->rope_scaling != SNAP_ROPE_SCALING_NONE)
        printf(" (factor %g, low %g, high %g, orig ctx %u)", c->rope_factor, c->rope_low_freq_factor,
               c->rope_high_freq_factor, c->rope_orig_ctx);
    printf("\nnorm       rms_eps %g%s%s\n", c->rms_eps, c->flags & SNAP_FLAG_TIED_EMBED ? ", tied embeddings" : "",
           c->flags & SNAP_FLAG_QKV_BIAS ? ", qkv bias" : "");
    static const char *const spaces[] = {"none", "legacy", "always", "first"};
    printf("tokenizer  %s, pre-tokenizer %s, %u tokens, %u merges, bos %d, eos %d, eot %d, add_bos %u",
           v->model == SNAP_TOK_SPM ? "sentencepiece" : "byte-level bpe", v->pre <= 4 ? pres[v->pre] : "?",
           v->n_tokens, v->n_merges, v->bos_id, v->eos_id, v->eot_id, v->add_bos);
    if (v->model == SNAP_TOK_SPM) /* file.c refuses other values */
        printf(", space prefix %s%s", spaces[v->add_space_prefix & 3], v->spm_split ? ", split" : "");
    printf("\n");
    printf("template   %zu bytes\n", strlen(snap_chat_template(f)));
    printf("defaults  ");
    print_float("temperature", g->temperature);
    print_float("top_p", g->top_p);
    printf(" top_k %d", g->top_k);
    print_float("repetition_penalty", g->repetition_penalty);
    printf(" stop_ids [");
    for (uint32_t i = 0; i < g->n_stop_ids; i++)
        printf("%s%d", i ? "," : "", g->stop_ids[i]);
    printf("]\n");
}

static void print_tensors(const snap_file *f)
{
    printf("\n%-32s %-5s %-6s %-22s %12s %12s\n", "tensor", "type", "layout", "shape", "offset", "bytes");
    for (size_t i = 0; i < snap_n_tensors(f); i++) {
        const snap_tensor *t = snap_tensor_at(f, i);
        char shape[64];
        int k = snprintf(shape, sizeof shape, "[");
        for (uint32_t d = 0; d < t->n_dims; d++)
            k += snprintf(shape + k, sizeof shape - (size_t)k, "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
        snprintf(shape + k, sizeof shape - (size_t)k, "]");
        printf("%-32s %-5s %-6s %-22s %12llu %12llu\n", t->name, snap_dtype_name(t->dtype),
               t->layout == SNAP_LAYOUT_SPLIT ? "split" : t->layout == SNAP_LAYOUT_R16 ? "r16" : "blocks", shape, (unsigned long long)t->offset,
               (unsigned long long)t->size);
    }
}

/* Chunk statistics. A chunk's stored bytes are shared among the tensors it holds in
 * proportion to their raw bytes, so the per-class ratio reflects what LZ4 did for them. */
static void print_chunks(const snap_file *f)
{
    uint64_t raw_bytes[2] = {0}, stored_bytes[2] = {0};
    uint32_t count[2] = {0};
    double cls_raw[CLS_COUNT] = {0}, cls_stored[CLS_COUNT] = {0};
    uint64_t cs = snap_chunk_size(f);
    for (size_t i = 0; i < snap_n_chunks(f); i++) {
        const snap_chunk *c = snap_chunk_at(f, i);
        int k = c->codec == SNAP_CODEC_LZ4;
        count[k]++;
        raw_bytes[k] += c->raw_size;
        stored_bytes[k] += c->stored_size;
        uint64_t lo = i * cs, hi = lo + c->raw_size;
        double ratio = (double)c->stored_size / c->raw_size;
        for (size_t j = 0; j < snap_n_tensors(f); j++) {
            const snap_tensor *t = snap_tensor_at(f, j);
            uint64_t a = t->offset > lo ? t->offset : lo, b = t->offset + t->size < hi ? t->offset + t->size : hi;
            if (a < b) {
                int cl = classify(t->name);
                cls_raw[cl] += (double)(b - a);
                cls_stored[cl] += (double)(b - a) * ratio;
            }
        }
    }
    uint64_t raw = raw_bytes[0] + raw_bytes[1], stored = stored_bytes[0] + stored_bytes[1];
    printf("\nchunks     %zu x %llu KiB: %u raw (%.1f MB), %u lz4 (%.1f MB -> %.1f MB)\n", snap_n_chunks(f),
           (unsigned long long)(cs >> 10), count[0], raw_bytes[0] / 1e6, count[1], raw_bytes[1] / 1e6,
           stored_bytes[1] / 1e6);
    printf("image      %.1f MB raw, %.1f MB stored, ratio %.3f\n", raw / 1e6, stored / 1e6,
           raw ? (double)stored / raw : 0);
    printf("%-10s %12s %12s %7s\n", "class", "raw MB", "stored MB", "ratio");
    for (int c = 0; c < CLS_COUNT; c++)
        if (cls_raw[c] > 0)
            printf("%-10s %12.2f %12.2f %7.3f\n", class_names[c], cls_raw[c] / 1e6, cls_stored[c] / 1e6,
                   cls_stored[c] / cls_raw[c]);
}

/* to stdout with exit 0 for --help, to stderr with exit 2 for a usage error */
static int inspect_usage(FILE *to, int rc)
{
    fprintf(to, "usage: thaw inspect FILE|URL [--verify] [--no-tensors] [--oss-endpoint HOST] [--cache-dir DIR]\n");
    return rc;
}

int rt_cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    int verify = 0, tensors = 1;
    snap_fetch_opts fo = {.verbose = 1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--oss-endpoint") && i + 1 < argc)
            fo.oss_endpoint = argv[++i];
        else if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc)
            fo.cache_dir = argv[++i];
        else if (!strcmp(argv[i], "--verify"))
            verify = 1;
        else if (!strcmp(argv[i], "--no-tensors"))
            tensors = 0;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return inspect_usage(stdout, 0);
        else if (argv[i][0] != '-' && !path)
            path = argv[i];
        else
            return inspect_usage(stderr, 2);
    }
    if (!path)
        return inspect_usage(stderr, 2);
    snap_err err = {{0}};
    snap_file *f = NULL;
    int rc = snap_open_source(path, &fo, &f, NULL, &err);
    if (rc) {
        fprintf(stderr, "thaw inspect: %s\n", err.msg);
        return 1;
    }
    print_header(f);
    if (tensors)
        print_tensors(f);
    print_chunks(f);
    int status = 0;
    if (verify) {
        snap_load_stats st;
        fflush(stdout);
        rc = snap_verify(f, NULL, &st, &err);
        if (rc) {
            fprintf(stderr, "thaw inspect: verify failed: %s\n", err.msg);
            status = 1;
        } else {
            printf("verify     ok: %zu chunks, %.1f MB in %.3f s (%.2f GB/s, %u threads)\n", snap_n_chunks(f),
                   st.bytes_stored / 1e6, st.total_s, st.bytes_stored / 1e9 / (st.total_s > 0 ? st.total_s : 1e-9),
                   st.n_threads);
        }
    }
    snap_close(f);
    return status;
}
