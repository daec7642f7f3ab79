/* skein demo: the embedded default, end to end on one CPU. It takes a real English corpus
 * that Debian ships (the reStructuredText sources of the Python documentation, package
 * python3-doc), trains a byte-level BPE tokenizer on it, prepares token shards, trains a
 * small GPT-2 with a live progress line, writes the loss curve (loss.svg) and the model
 * folder, and generates text from a prompt. */
#include <glob.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "base/file.h"
#include "base/json.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "data/data.h"
#include "infer/generate.h"
#include "infer/kv.h"
#include "train/train.h"

#define DEMO_CORPUS_GLOB "/usr/share/doc/python3*/html/_sources/*/*.txt"

/* Picks corpus files in sorted order until `budget` bytes. Returns the glob (caller frees
 * with globfree) and the number of files used in *n. */
static sk_status demo_corpus(glob_t *g, size_t budget, int *n, size_t *bytes) {
    if (glob(DEMO_CORPUS_GLOB, 0, NULL, g) != 0 || g->gl_pathc == 0)
        return sk_fail(SK_EIO, "demo: no corpus at %s; install it with: apt-get install python3-doc (or run make demo)",
                       DEMO_CORPUS_GLOB);
    *n = 0;
    *bytes = 0;
    for (size_t i = 0; i < g->gl_pathc && *bytes < budget; i++) {
        struct stat st;
        if (stat(g->gl_pathv[i], &st) != 0) continue;
        g->gl_pathv[(*n)++] = g->gl_pathv[i];
        *bytes += (size_t)st.st_size;
    }
    return SK_OK;
}

/* First and last training loss (mean of up to 10 steps each) from log.jsonl. */
static sk_status demo_loss_drop(const char *log_path, double *first, double *last) {
    char *text;
    size_t n;
    SK_TRY(file_read_all(log_path, &text, &n));
    double head[10], tail[10]; /* the first ten losses, and the last ten in a ring */
    long k = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *l = j ? cJSON_GetObjectItem(j, "loss") : NULL;
        if (cJSON_IsNumber(l)) {
            if (k < 10) head[k] = l->valuedouble;
            tail[k++ % 10] = l->valuedouble;
        }
        cJSON_Delete(j);
    }
    mem_free(text);
    if (k == 0) return sk_fail(SK_EFORMAT, "%s: no losses logged", log_path);
    int w = k < 10 ? (int)k : 10;
    *first = *last = 0;
    for (int i = 0; i < w; i++) { *first += head[i] / w; *last += tail[i] / w; }
    return SK_OK;
}

static sk_status demo_run(const char *out, long steps, double corpus_mb, long vocab, long layers, long dim,
                          const char *prompt) {
    char path[4096], data_dir[4096], model_dir[4096], init_dir[4096], tok_path[4096];
    glob_t g = {0};
    int n_files = 0;
    size_t bytes = 0;
    double t0 = time_now();
    SK_TRY(file_mkdirs(out));
    sk_status st = demo_corpus(&g, (size_t)(corpus_mb * 1e6), &n_files, &bytes);
    if (st) { globfree(&g); return st; }
    printf("== skein demo: %d files of the Python documentation (%.1f MB) from python3-doc\n", n_files, bytes / 1e6);

    tok *t = NULL;
    model *m = NULL;
    backend *be = NULL;
    file_join(tok_path, sizeof tok_path, out, "tokenizer.json");
    printf("== 1/4 training a byte-level BPE tokenizer, vocabulary %ld\n", vocab);
    fflush(stdout);
    if ((st = tok_train((const char *const *)g.gl_pathv, n_files, (int)vocab, &t)) || (st = tok_save(t, tok_path))) goto done;

    printf("== 2/4 tokenizing into shards (%.0f s so far)\n", time_now() - t0);
    fflush(stdout);
    file_join(data_dir, sizeof data_dir, out, "data");
    if ((st = data_prepare(t, (const char *const *)g.gl_pathv, n_files, data_dir, 0.05))) goto done;

    printf("== 3/4 training GPT-2 (%ld layers, width %ld) for %ld steps (%.0f s so far)\n", layers, dim, steps,
           time_now() - t0);
    fflush(stdout);
    model_config cfg;
    model_config_gpt2(&cfg, (int)layers, (int)(dim / 64 > 0 ? dim / 64 : 1), (int)dim, 128, tok_vocab_size(t));
    cfg.bos_token_id = cfg.eos_token_ids[0] = tok_eot_id(t);
    cfg.n_eos = 1;
    file_join(init_dir, sizeof init_dir, out, "init");
    if (!(be = backend_create("cpu"))) { st = SK_EARG; goto done; }
    if ((st = model_config_validate(&cfg, "demo")) || (st = model_create(&cfg, be, &m))) goto done;
    model_init_weights(m, 1337);
    if ((st = model_save(m, init_dir))) goto done;
    model_free(m);
    m = NULL;

    train_opts o;
    train_opts_default(&o);
    file_join(model_dir, sizeof model_dir, out, "model");
    o.model = init_dir;
    o.data = data_dir;
    o.out = model_dir;
    o.steps = steps;
    o.batch = 16;
    o.seq = 128;
    o.eval_every = steps / 5 > 0 ? steps / 5 : 1;
    o.eval_batches = 4;
    o.keep_checkpoints = 1;
    o.hp.lr = 2e-3f;
    o.hp.warmup = steps / 10;
    o.hp.total_steps = steps;
    o.hp.weight_decay = 0.1f;
    if ((st = train_run(&o))) goto done;

    double first = 0, last = 0;
    if ((st = demo_loss_drop(file_join(path, sizeof path, model_dir, "log.jsonl"), &first, &last))) goto done;
    printf("   loss %.3f -> %.3f (%s); loss curve: %s/loss.svg\n", first, last,
           last < first - 1.0 ? "falls clearly" : "did NOT fall clearly", model_dir);

    printf("== 4/4 generating from the trained model (%.0f s so far)\n\n", time_now() - t0);
    fflush(stdout);
    if ((st = model_open_weights(model_dir, be, &m))) goto done;
    int32_t *ids;
    size_t n_ids;
    if ((st = tok_encode(t, prompt, strlen(prompt), &ids, &n_ids))) goto done;
    gen_opts go = {.max_tokens = 120, .seed = 42, .kv_dtype = KV_DTYPE_AUTO, .sample = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f}};
    gen_result res;
    fputs(prompt, stdout);
    st = gen_run(m, t, ids, n_ids, &go, gen_emit_stdout, NULL, NULL, &res);
    mem_free(ids);
    if (st) goto done;
    printf("\n\n== done in %.0f s. Try: ./skein generate --model %s --prompt \"The list\"\n", time_now() - t0, model_dir);
    if (last >= first - 1.0) st = sk_fail(SK_ESTATE, "demo: the loss did not fall clearly (%.3f -> %.3f)", first, last);
done:
    model_free(m);
    backend_free(be);
    tok_free(t);
    globfree(&g);
    return st;
}

int cmd_demo(int argc, char **argv) {
    const char *out = "demo-out", *prompt = "The Python interpreter";
    long steps = 600, vocab = 2048, layers = 6, dim = 256;
    double corpus_mb = 5.0;
    arg_spec specs[] = {
        {"--out", ARG_STR, &out, "DIR", "where to write everything (default demo-out)", false, false},
        {"--steps", ARG_INT, &steps, "N", "training steps (default 600)", false, false},
        {"--corpus-mb", ARG_FLOAT, &corpus_mb, "MB", "how much of the corpus to use (default 5)", false, false},
        {"--vocab-size", ARG_INT, &vocab, "V", "tokenizer vocabulary (default 2048)", false, false},
        {"--layers", ARG_INT, &layers, "L", "GPT-2 layers (default 6)", false, false},
        {"--dim", ARG_INT, &dim, "C", "GPT-2 width, a multiple of 64 (default 256)", false, false},
        {"--prompt", ARG_STR, &prompt, "STR", "prompt for the generation at the end", false, false},
    };
    sk_status st = args_parse("skein demo", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    /* upper bounds: the values are narrowed to int (and the corpus size to size_t) below */
    if (steps <= 0 || steps > 1000000000 || vocab < 300 || vocab > 1 << 24 || layers <= 0 || layers > 1024 || dim < 64 ||
        dim > 65536 || dim % 64 || !(corpus_mb > 0 && corpus_mb <= 1e6))
        return cli_fail(sk_fail(SK_EARG, "demo: --steps in [1, 1e9], --layers in [1, 1024], --vocab-size in [300, 2^24], "
                                         "--dim a multiple of 64 up to 65536, --corpus-mb in (0, 1e6]"));
    return cli_fail(demo_run(out, steps, corpus_mb, vocab, layers, dim, prompt));
}
