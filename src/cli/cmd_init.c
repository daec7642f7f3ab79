/* skein init: writes a random-initialized model folder (config.json, model.safetensors and,
 * with --tokenizer, tokenizer.json) from a preset or explicit shapes. */
#include <string.h>

#include "base/file.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "model/presets.h"
#include "tokenizer/tok.h"
#include "train/ckpt.h"

/* Builds the configuration the flags describe. */
static sk_status init_config(const char *arch, const char *preset, long layers, long heads, long dim, long context,
                             long ffn, int vocab, model_config *cfg) {
    if (strcmp(arch, "gpt2") != 0)
        return sk_fail(SK_EARG, "init: --arch %s is not supported yet (gpt2; llama comes with the Llama issue)", arch);
    if (preset) {
        if (layers || heads || dim || context)
            return sk_fail(SK_EARG, "init: give either --preset or --layers/--heads/--dim/--context, not both");
        SK_TRY(model_preset(preset, vocab, cfg));
    } else {
        if (!layers || !heads || !dim || !context)
            return sk_fail(SK_EARG, "init: without --preset, --layers, --heads, --dim and --context are required");
        if (vocab <= 0) return sk_fail(SK_EARG, "init: give --vocab-size or --tokenizer");
        if (layers < 0 || heads < 0 || dim < 0 || context < 0 || layers > 1000 || heads > 1000 || dim > 65536 || context > 1 << 20)
            return sk_fail(SK_EARG, "init: shape out of range (layers %ld, heads %ld, dim %ld, context %ld)", layers, heads, dim, context);
        model_config_gpt2(cfg, (int)layers, (int)heads, (int)dim, (int)context, vocab);
    }
    if (ffn > 0) cfg->ffn_dim = (int)ffn;
    return model_config_validate(cfg, "init");
}

int cmd_init(int argc, char **argv) {
    const char *arch = "gpt2", *preset = NULL, *tokenizer = NULL, *out = NULL;
    long layers = 0, heads = 0, dim = 0, context = 0, kv_heads = 0, ffn = 0, vocab = 0, seed = 1337;
    arg_spec specs[] = {
        {"--arch", ARG_STR, &arch, "gpt2", "architecture (default gpt2)", false, false},
        {"--preset", ARG_STR, &preset, "NAME", "gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-tiny", false, false},
        {"--layers", ARG_INT, &layers, "L", "transformer blocks", false, false},
        {"--heads", ARG_INT, &heads, "H", "attention heads", false, false},
        {"--dim", ARG_INT, &dim, "C", "model width", false, false},
        {"--context", ARG_INT, &context, "T", "maximum sequence length", false, false},
        {"--kv-heads", ARG_INT, &kv_heads, "K", "key/value heads (Llama)", false, false},
        {"--ffn-dim", ARG_INT, &ffn, "F", "MLP width (default 4C)", false, false},
        {"--vocab-size", ARG_INT, &vocab, "V", "vocabulary size", false, false},
        {"--tokenizer", ARG_STR, &tokenizer, "FILE", "tokenizer.json: sets the vocabulary and is copied", false, false},
        {"--seed", ARG_INT, &seed, "S", "initialization seed (default 1337)", false, false},
        {"--out", ARG_STR, &out, "DIR", "model folder to write", true, false},
    };
    sk_status st = args_parse("skein init", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (kv_heads) return cli_fail(sk_fail(SK_EARG, "init: --kv-heads applies to --arch llama, which is not built yet"));
    if (vocab < 0 || vocab > 1 << 24) return cli_fail(sk_fail(SK_EARG, "init: --vocab-size %ld is out of range", vocab));
    int eot = -1;
    if (tokenizer) {
        tok *t;
        if ((st = tok_load(tokenizer, &t))) return cli_fail(st);
        if (vocab && vocab != tok_vocab_size(t))
            log_warn("--vocab-size %ld differs from the tokenizer's %d: using %ld", vocab, tok_vocab_size(t), vocab);
        if (!vocab) vocab = tok_vocab_size(t);
        eot = tok_eot_id(t);
        tok_free(t);
    }
    model_config cfg;
    if ((st = init_config(arch, preset, layers, heads, dim, context, ffn, (int)vocab, &cfg))) return cli_fail(st);
    if (eot >= 0 && eot < cfg.vocab_size) {
        cfg.bos_token_id = eot;
        cfg.n_eos = 1;
        cfg.eos_token_ids[0] = eot;
    }
    backend *be = backend_create("cpu");
    if (!be) return cli_fail(SK_EARG);
    model *m = NULL;
    char path[4096];
    if (!(st = model_create(&cfg, be, &m))) {
        model_init_weights(m, (uint64_t)seed);
        st = model_save(m, out);
        if (!st && tokenizer) st = ckpt_copy_file(tokenizer, file_join(path, sizeof path, out, "tokenizer.json"));
        if (!st) log_info("wrote %s: %s, %zu parameters", out, m->arch->name, m->n_params);
    }
    model_free(m);
    backend_free(be);
    return cli_fail(st);
}
