/* main.c -- `thaw COMMAND ...`: dispatch to the commands in runtime/. */
#include "runtime.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"pack", rt_cmd_pack, "pack SRC -o OUT.thaw [--quant q4|q8|f16] [--target cpu|cuda]   GGUF / HF folder -> snapshot"},
    {"inspect", rt_cmd_inspect, "inspect FILE [--verify]   print config, tensors and chunk statistics"},
    {"generate", rt_cmd_generate, "generate -m FILE -p PROMPT [--chat] [-n N] [--temp T] [--seed S]   one completion"},
    {"serve", rt_cmd_serve, "serve [-m FILE] [--port N] [--lazy] [--api-key KEY] ...   OpenAI-compatible HTTP server (--help)"},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: thaw COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(to, "  %s\n", commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "thaw: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
