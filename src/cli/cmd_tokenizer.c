/* skein tokenizer train | encode | decode: train a byte-level BPE on text files, and turn
 * text into ids and back with a tokenizer.json (ours or one from the Hugging Face Hub). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "tokenizer/tok.h"

/* Reads all of stdin into a new buffer (*out, mem_free; NUL-terminated). */
static sk_status read_stdin(char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = mem_alloc(cap);
    if (!buf) return SK_ENOMEM;
    for (;;) {
        if (n + 1 >= cap) {
            char *p = mem_realloc(buf, cap *= 2);
            if (!p) { mem_free(buf); return SK_ENOMEM; }
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0) break;
    }
    if (ferror(stdin)) { mem_free(buf); return sk_fail(SK_EIO, "error reading standard input"); }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return SK_OK;
}

static int cmd_train_tok(int argc, char **argv) {
    arg_list inputs = {0};
    long vocab = 0;
    const char *out = NULL;
    arg_spec specs[] = {
        {"--input", ARG_LIST, &inputs, "FILE...", "text files to train on", true, false},
        {"--vocab-size", ARG_INT, &vocab, "N", "vocabulary size (256 bytes + merges + <|endoftext|>)", true, false},
        {"--out", ARG_STR, &out, "FILE", "tokenizer.json to write", true, false},
    };
    sk_status st = args_parse("skein tokenizer train", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (vocab < 257 || vocab > (1 << 24))
        return cli_fail(sk_fail(SK_EARG, "skein tokenizer train: --vocab-size %ld must be at least 257", vocab));
    tok *t;
    double t0 = time_now();
    if ((st = tok_train(inputs.items, inputs.n, (int)vocab, &t)) != SK_OK) return cli_fail(st);
    st = tok_save(t, out);
    if (st == SK_OK)
        log_info("wrote %s: %d tokens in %.1f s", out, tok_vocab_size(t), time_now() - t0);
    tok_free(t);
    return cli_fail(st);
}

static int cmd_encode(int argc, char **argv) {
    const char *path = NULL, *text = NULL;
    bool add_special = false;
    arg_spec specs[] = {
        {"--tokenizer", ARG_STR, &path, "FILE", "tokenizer.json", true, false},
        {"--text", ARG_STR, &text, "STR", "text to encode (default: standard input)", false, false},
        {"--add-special", ARG_BOOL, &add_special, NULL,
         "run the post-processor (BOS/EOS) as HF's encode(text) does by default", false, false},
    };
    sk_status st = args_parse("skein tokenizer encode", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    tok *t;
    if ((st = tok_load(path, &t)) != SK_OK) return cli_fail(st);
    char *in = NULL;
    size_t len = 0;
    if (text) len = strlen(text);
    else if ((st = read_stdin(&in, &len)) != SK_OK) { tok_free(t); return cli_fail(st); }
    int32_t *ids = NULL;
    size_t n = 0;
    st = tok_encode_ex(t, text ? text : in, len, add_special, &ids, &n);
    if (st == SK_OK) {
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    mem_free(ids);
    mem_free(in);
    tok_free(t);
    return cli_fail(st);
}

/* Parses ids separated by spaces, tabs, newlines or commas. */
static sk_status parse_ids(const char *s, const tok *t, int32_t **out, size_t *n) {
    size_t cap = 64, k = 0;
    int32_t *ids = mem_alloc(cap * sizeof *ids);
    if (!ids) return SK_ENOMEM;
    for (const char *p = s;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && !strchr(" \t\r\n,", *end)) || v < 0 || v >= tok_vocab_size(t)) {
            int w = (int)strcspn(p, " \t\r\n,");
            mem_free(ids);
            return sk_fail(SK_EARG, "skein tokenizer decode: '%.*s' is not a token id (0..%d)", w, p,
                           tok_vocab_size(t) - 1);
        }
        if (k == cap) {
            int32_t *q = mem_realloc(ids, (cap *= 2) * sizeof *ids);
            if (!q) { mem_free(ids); return SK_ENOMEM; }
            ids = q;
        }
        ids[k++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    *n = k;
    return SK_OK;
}

static int cmd_decode(int argc, char **argv) {
    const char *path = NULL, *idstr = NULL;
    arg_spec specs[] = {
        {"--tokenizer", ARG_STR, &path, "FILE", "tokenizer.json", true, false},
        {"--ids", ARG_STR, &idstr, "\"1 2 3\"", "ids to decode (default: standard input); prints the text as is",
         false, false},
    };
    sk_status st = args_parse("skein tokenizer decode", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    tok *t;
    if ((st = tok_load(path, &t)) != SK_OK) return cli_fail(st);
    char *in = NULL;
    size_t len;
    if (!idstr && (st = read_stdin(&in, &len)) != SK_OK) { tok_free(t); return cli_fail(st); }
    int32_t *ids = NULL;
    size_t n = 0;
    st = parse_ids(idstr ? idstr : in, t, &ids, &n);
    if (st == SK_OK) {
        size_t len_out;
        char *s = tok_decode_ex(t, ids, n, false, &len_out);
        if (s) fwrite(s, 1, len_out, stdout);
        else st = sk_fail(SK_ENOMEM, "out of memory decoding %zu ids", n);
        mem_free(s);
    }
    mem_free(ids);
    mem_free(in);
    tok_free(t);
    return cli_fail(st);
}

int cmd_tokenizer(int argc, char **argv) {
    const char *sub = argc > 0 ? argv[0] : "";
    if (!strcmp(sub, "train")) return cmd_train_tok(argc - 1, argv + 1);
    if (!strcmp(sub, "encode")) return cmd_encode(argc - 1, argv + 1);
    if (!strcmp(sub, "decode")) return cmd_decode(argc - 1, argv + 1);
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h")) {
        printf("usage: skein tokenizer train|encode|decode [flags]   (each takes --help)\n");
        return 0;
    }
    return cli_fail(sk_fail(SK_EARG, "skein tokenizer: unknown subcommand '%s' (train, encode or decode)", sub));
}
