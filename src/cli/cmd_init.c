/* skein init: writes a random-initialized model folder (config.json, weights and, with
 * --tokenizer, tokenizer.json) from a preset or explicit shapes.
 *
 * --arch gpt2 creates the model in memory, initializes it as training does (gpt2.c) and
 * saves it in f32. --arch llama never creates the model: model_init_folder generates each
 * tensor in pieces and streams it into bf16 shards (5 GB, as on the Hub), so llama2-7b or
 * llama3-70b are written at disk speed in a few MB of memory. */
#include <string.h>

#include "base/file.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "model/presets.h"
#include "tokenizer/tok.h"
#include "train/ckpt.h"

typedef struct init_shape {
    long layers, heads, kv_heads, dim, context, ffn;
} init_shape;

/* Llama's default MLP width for width C: 2/3 of 4C rounded up to a multiple of 256 (what
 * Meta's reference code computes; 4096 gives 11008). */
static long llama_default_ffn(long dim) { return ((8 * dim / 3) + 255) / 256 * 256; }

/* Builds the configuration the flags describe. */
static sk_status init_config(const char *arch, const char *preset, const init_shape *s, int vocab, model_config *cfg) {
    model_arch_kind kind;
    if (!strcmp(arch, "gpt2")) kind = ARCH_GPT2;
    else if (!strcmp(arch, "llama")) kind = ARCH_LLAMA;
    else return sk_fail(SK_EARG, "init: --arch %s is not supported (gpt2, llama)", arch);
    if (kind == ARCH_GPT2 && s->kv_heads)
        return sk_fail(SK_EARG, "init: --kv-heads applies to --arch llama");
    if (preset) {
        if (s->layers || s->heads || s->dim || s->context || s->kv_heads)
            return sk_fail(SK_EARG, "init: give either --preset or --layers/--heads/--kv-heads/--dim/--context, not both");
        if (kind == ARCH_LLAMA && !strcmp(preset, "tiny")) preset = "llama-tiny";
        int pa = model_preset_arch(preset);
        if (pa >= 0 && pa != (int)kind)
            return sk_fail(SK_EARG, "init: preset '%s' is not a %s preset (--arch %s)", preset, arch, arch);
        SK_TRY(model_preset(preset, vocab, cfg));
    } else {
        if (!s->layers || !s->heads || !s->dim || !s->context)
            return sk_fail(SK_EARG, "init: without --preset, --layers, --heads, --dim and --context are required");
        if (vocab <= 0) return sk_fail(SK_EARG, "init: give --vocab-size or --tokenizer");
        if (s->layers < 0 || s->heads < 0 || s->dim < 0 || s->context < 0 || s->kv_heads < 0 || s->layers > 1000 ||
            s->heads > 1000 || s->kv_heads > 1000 || s->dim > 65536 || s->context > 1 << 20)
            return sk_fail(SK_EARG, "init: shape out of range (layers %ld, heads %ld, kv-heads %ld, dim %ld, context %ld)",
                           s->layers, s->heads, s->kv_heads, s->dim, s->context);
        if (kind == ARCH_GPT2)
            model_config_gpt2(cfg, (int)s->layers, (int)s->heads, (int)s->dim, (int)s->context, vocab);
        else
            model_config_llama(cfg, (int)s->layers, (int)s->heads, (int)(s->kv_heads ? s->kv_heads : s->heads),
                               (int)s->dim, (int)llama_default_ffn(s->dim), (int)s->context, vocab);
    }
    if (s->ffn != 0) {
        if (s->ffn < 0 || s->ffn > 1 << 20) return sk_fail(SK_EARG, "init: --ffn-dim %ld is out of range", s->ffn);
        cfg->ffn_dim = (int)s->ffn;
    }
    if (kind == ARCH_LLAMA && cfg->n_embd % cfg->n_head)
        return sk_fail(SK_EARG, "init: --dim %d is not divisible by --heads %d", cfg->n_embd, cfg->n_head);
    return model_config_validate(cfg, "init");
}

int cmd_init(int argc, char **argv) {
    const char *arch = "gpt2", *preset = NULL, *tokenizer = NULL, *out = NULL, *dtype_s = "bf16";
    init_shape s = {0};
    long vocab = 0, seed = 1337, shard_mb = 0;
    arg_spec specs[] = {
        {"--arch", ARG_STR, &arch, "gpt2|llama", "architecture (default gpt2)", false, false},
        {"--preset", ARG_STR, &preset, "NAME", "gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-tiny; llama-tiny (or tiny), "
         "llama-1b, llama2-7b, llama2-13b, llama-30b, llama2-70b, llama3-8b, llama3-70b", false, false},
        {"--layers", ARG_INT, &s.layers, "L", "transformer blocks", false, false},
        {"--heads", ARG_INT, &s.heads, "H", "attention heads", false, false},
        {"--dim", ARG_INT, &s.dim, "C", "model width", false, false},
        {"--context", ARG_INT, &s.context, "T", "maximum sequence length", false, false},
        {"--kv-heads", ARG_INT, &s.kv_heads, "K", "key/value heads (Llama; default H)", false, false},
        {"--ffn-dim", ARG_INT, &s.ffn, "F", "MLP width (default 4C for GPT-2, 8C/3 rounded to 256 for Llama)", false, false},
        {"--vocab-size", ARG_INT, &vocab, "V", "vocabulary size", false, false},
        {"--tokenizer", ARG_STR, &tokenizer, "FILE", "tokenizer.json: sets the vocabulary and is copied", false, false},
        {"--seed", ARG_INT, &seed, "S", "initialization seed (default 1337)", false, false},
        {"--dtype", ARG_STR, &dtype_s, "bf16|f16|f32", "Llama weight dtype (default bf16)", false, false},
        {"--max-shard-mb", ARG_INT, &shard_mb, "MB", "Llama shard size (default 5000, as on the Hub)", false, false},
        {"--out", ARG_STR, &out, "DIR", "model folder to write", true, false},
    };
    sk_status st = args_parse("skein init", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (vocab < 0 || vocab > 1 << 24) return cli_fail(sk_fail(SK_EARG, "init: --vocab-size %ld is out of range", vocab));
    if (shard_mb < 0 || shard_mb > 1 << 30) return cli_fail(sk_fail(SK_EARG, "init: --max-shard-mb %ld is out of range", shard_mb));
    dtype dt;
    if (!strcmp(dtype_s, "bf16")) dt = DT_BF16;
    else if (!strcmp(dtype_s, "f16")) dt = DT_F16;
    else if (!strcmp(dtype_s, "f32")) dt = DT_F32;
    else return cli_fail(sk_fail(SK_EARG, "init: --dtype %s (bf16, f16 or f32)", dtype_s));
    int eot = -1, bos = -1;
    if (tokenizer) {
        tok *t;
        if ((st = tok_load(tokenizer, &t))) return cli_fail(st);
        if (vocab && vocab != tok_vocab_size(t))
            log_warn("--vocab-size %ld differs from the tokenizer's %d: using %ld", vocab, tok_vocab_size(t), vocab);
        if (!vocab) vocab = tok_vocab_size(t);
        eot = tok_eot_id(t);
        /* The beginning-of-text token where the vocabulary has one (Llama), else the
         * end-of-text token, as GPT-2 uses it for both. */
        bos = tok_token_id(t, "<|begin_of_text|>");
        if (bos < 0) bos = tok_token_id(t, "<s>");
        if (bos < 0) bos = eot;
        tok_free(t);
    }
    model_config cfg;
    if ((st = init_config(arch, preset, &s, (int)vocab, &cfg))) return cli_fail(st);
    if (bos >= 0 && bos < cfg.vocab_size) cfg.bos_token_id = bos;
    if (eot >= 0 && eot < cfg.vocab_size) {
        cfg.n_eos = 1;
        cfg.eos_token_ids[0] = eot;
    }
    char path[4096];
    if (cfg.arch == ARCH_LLAMA) {
        size_t shard = shard_mb ? (size_t)shard_mb * 1000000 : MODEL_SHARD_BYTES;
        st = model_init_folder(&cfg, out, (uint64_t)seed, dt, shard);
        if (!st && tokenizer) st = ckpt_copy_file(tokenizer, file_join(path, sizeof path, out, "tokenizer.json"));
        if (!st) log_info("wrote %s: %s, %d layers, %s", out, cfg.model_type, cfg.n_layer, dtype_name(dt));
        return cli_fail(st);
    }
    backend *be = backend_create("cpu");
    if (!be) return cli_fail(SK_EARG);
    model *m = NULL;
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
