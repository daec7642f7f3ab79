/* skein: train and serve language models on CPUs and GPUs. Entry point: dispatches the
 * first word of the command line to its subcommand (cli.h). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "serve/router.h"
#include "serve/rproc.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"tokenizer", cmd_tokenizer, "train | encode   byte-level BPE tokenizers (tokenizer.json)"},
    {"data", cmd_data, "prepare          text or JSONL -> token shards"},
    {"init", cmd_init, "                 a random-weight model folder"},
    {"train", cmd_train, "                 train or fine-tune a model"},
    {"generate", cmd_generate, "                 sample text from a model"},
    {"serve", cmd_serve, "                 an OpenAI-compatible HTTP server over a model folder"},
    {"bench", cmd_bench, "train|throughput|latency|serve|attention|load  measure training, inference, serving, attention and load speed"},
    {"demo", cmd_demo, "                 the embedded demo: tokenizer, training, generation"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: skein <command> [flags]   (skein <command> --help for its flags)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (rproc_is_child(argc, argv)) router_replica_child();   /* a replica process of skein serve */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "skein: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
