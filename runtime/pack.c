/* pack.c -- `thaw pack SRC -o OUT [--quant q4|q8|f16] [--target cpu|cuda] [--name NAME]` */
#include "runtime.h"
#include "snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* to stdout with exit 0 for --help, to stderr with exit 2 for a usage error */
static int pack_usage(FILE *to, int rc)
{
    fprintf(to, "usage: thaw pack SRC|--synthetic NAME -o OUT.thaw [--quant q4|q8|f16] [--target cpu|cuda] [--name NAME]\n"
                    "                 [--temperature T] [--top-p P] [--top-k K] [--repeat-penalty R]\n"
                    "  SRC: a GGUF file or a Hugging Face model folder (config.json, tokenizer.json, *.safetensors)\n"
                    "  --synthetic NAME: random weights with a real model's shapes (smollm2-135m, qwen2.5-0.5b,\n"
                    "                    qwen2.5-7b, llama-3-8b), for measuring real sizes offline\n"
                    "  sampling flags record the model's recommended generation defaults in the snapshot\n");
    return rc;
}

int rt_cmd_pack(int argc, char **argv)
{
    const char *src = NULL, *out = NULL, *synth = NULL;
    snap_pack_opts o = {.quant = SNAP_QUANT_Q4, .target = SNAP_TARGET_CPU, .progress = isatty(2)};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && v) {
            out = v;
            i++;
        } else if (!strcmp(a, "--quant") && v) {
            if (!strcmp(v, "q4"))
                o.quant = SNAP_QUANT_Q4;
            else if (!strcmp(v, "q8"))
                o.quant = SNAP_QUANT_Q8;
            else if (!strcmp(v, "f16"))
                o.quant = SNAP_QUANT_F16;
            else {
                fprintf(stderr, "thaw pack: --quant must be q4, q8 or f16, not '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--target") && v) {
            if (!strcmp(v, "cpu"))
                o.target = SNAP_TARGET_CPU;
            else if (!strcmp(v, "cuda"))
                o.target = SNAP_TARGET_CUDA;
            else {
                fprintf(stderr, "thaw pack: --target must be cpu or cuda, not '%s'\n", v);
                return 2;
            }
            i++;
        } else if ((!strcmp(a, "--temperature") || !strcmp(a, "--top-p") || !strcmp(a, "--top-k") ||
                    !strcmp(a, "--repeat-penalty")) && v) {
            char *end;
            double d = strtod(v, &end);
            int k = !strcmp(a, "--temperature") ? 0 : !strcmp(a, "--top-p") ? 1 : !strcmp(a, "--top-k") ? 2 : 3;
            static const double lo[] = {0, 1e-9, 0, 1e-3}, hi[] = {2, 1, 1e9, 10};
            if (end == v || *end || !(d >= lo[k] && d <= hi[k])) {
                fprintf(stderr, "thaw pack: %s needs a number in [%g, %g], got '%s'\n", a, lo[k], hi[k], v);
                return 2;
            }
            if (k == 0)
                o.gen.temperature = (float)d;
            else if (k == 1)
                o.gen.top_p = (float)d;
            else if (k == 2)
                o.gen.top_k = (int32_t)d;
            else
                o.gen.repetition_penalty = (float)d;
            o.gen_set |= 1u << k;
            i++;
        } else if (!strcmp(a, "--synthetic") && v) {
            synth = v;
            i++;
        } else if (!strcmp(a, "--name") && v) {
            o.name = v;
            i++;
        } else if (!strcmp(a, "--quiet")) {
            o.progress = 0;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            return pack_usage(stdout, 0);
        } else if (a[0] == '-' || src) {
            fprintf(stderr, "thaw pack: unexpected argument '%s'\n", a);
            return pack_usage(stderr, 2);
        } else {
            src = a;
        }
    }
    if (!!src == !!synth || !out)
        return pack_usage(stderr, 2);
    snap_err err = {{0}};
    int rc = synth ? snap_pack_synthetic(synth, out, &o, &err) : snap_pack(src, out, &o, &err);
    if (rc) {
        fprintf(stderr, "thaw pack: %s\n", err.msg[0] ? err.msg : snap_strerror(rc));
        return 1;
    }
    return 0;
}
