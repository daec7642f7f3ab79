/* cmd_data: `skein data prepare` — text or JSONL files -> train/val token shards.
 *
 *   skein data prepare --tokenizer tokenizer.json --input FILE... --out DIR [--val-fraction F]
 *
 * --val-fraction defaults to 0.05 (one document in twenty; at least one document when there
 * are two or more); 0 writes no val split. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "data/data.h"

static int data_prepare_cmd(int argc, char **argv) {
    const char *tok_path = NULL, *out = NULL;
    arg_list inputs = {0};
    double val = 0.05;
    arg_spec specs[] = {
        {"--tokenizer", ARG_STR, &tok_path, "FILE", "tokenizer.json (needs an end-of-text token)", true, false},
        {"--input", ARG_LIST, &inputs, "FILE...", "text files (one document each) or .jsonl (\"text\" per line)",
         true, false},
        {"--out", ARG_STR, &out, "DIR", "output folder: train_*.bin, val_*.bin, dataset.json", true, false},
        {"--val-fraction", ARG_FLOAT, &val, "F", "share of documents for validation, in [0, 1) (default 0.05)",
         false, false},
    };
    sk_status st = args_parse("skein data prepare", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (!(val >= 0 && val < 1))
        return cli_fail(sk_fail(SK_EARG, "skein data prepare: --val-fraction %g is not in [0, 1)", val));
    tok *t = NULL;
    if ((st = tok_load(tok_path, &t)) != SK_OK)
        return cli_fail(sk_fail_ctx(st, "loading tokenizer %s", tok_path));
    st = data_prepare(t, inputs.items, inputs.n, out, val);
    tok_free(t);
    return cli_fail(st);
}

int cmd_data(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "prepare")) return data_prepare_cmd(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
        printf("usage: skein data prepare --tokenizer FILE --input FILE... --out DIR [--val-fraction F]\n");
        return 0;
    }
    fprintf(stderr, "usage: skein data prepare --tokenizer FILE --input FILE... --out DIR [--val-fraction F]\n");
    return 2;
}
