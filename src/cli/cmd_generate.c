/* skein generate: opens a model folder for inference (model_open_weights: the weights stay
 * mapped read-only in their file dtype, shared with every other process that maps them) and
 * its tokenizer.json, then streams generated text to stdout; a summary (tokens, speed, seed,
 * why it stopped) goes to stderr.
 *
 * --mem-report: after generation, what this process's memory is made of (memstat): the
 * mapping of the folder's files (Rss, Pss, Shared_Clean/Shared_Dirty) and the private memory
 * outside it (Private_Dirty, which holds the dirty anonymous pages, with Anonymous beside:
 * heap, stacks, KV cache, workspace, tokenizer), each in bytes and as a percentage of the
 * weight files' size.
 *
 * --chat: the prompt is a user message (--system adds a system message before it), or
 * --chat-file holds the conversation; it is rendered with the folder's chat template
 * (tokenizer_config.json) or --chat-template NAME, encoded with its special tokens (the
 * template writes the BOS itself), and generation also stops at the template's end token
 * (<|eot_id|>, <|im_end|>, </s>). Only the reply is printed.
 *
 * --kv-memory BYTES|FRACTION: the engine's KV pool budget, as on the benches (kv_budget); by
 * default the pool holds just this prompt's blocks. --kv-cache-dtype auto|f32|bf16|f16: its
 * dtype (kv_dtype_resolve), named in the summary line.
 *
 * --tp K: the model split over K ranks (launch.h: started by hand it runs them under mpirun);
 * rank 0 generates, the others follow its engine. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "base/memstat.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "infer/engine.h"
#include "infer/generate.h"
#include "infer/kv.h"
#include "tokenizer/chat.h"

/* The --mem-report lines (stderr) for m, opened from dir; a failure to read /proc is reported
 * and returned. */
static sk_status mem_report(const char *dir, const model *m) {
    memstat all, map;
    SK_TRY(memstat_read(0, NULL, &all));
    SK_TRY(memstat_read(0, dir, &map));
    const size_t files = wts_mapped_bytes(m->weights);
    const double pct = files ? 100.0 / (double)files : 0.0;
    const size_t priv = all.private_dirty - map.private_dirty, anon = all.anonymous - map.anonymous;
    fprintf(stderr, "[mem-report] weight files: %zu bytes (%s)\n", files, wts_path(m->weights));
    fprintf(stderr, "[mem-report] mapping: rss %zu (%.1f%%) pss %zu (%.1f%%) shared_clean %zu (%.1f%%) "
            "shared_dirty %zu (%.1f%%)\n", map.rss, map.rss * pct, map.pss, map.pss * pct, map.shared_clean,
            map.shared_clean * pct, map.shared_dirty, map.shared_dirty * pct);
    fprintf(stderr, "[mem-report] private outside the mapping: %zu (%.2f%%), anonymous %zu (%.2f%%)\n", priv,
            priv * pct, anon, anon * pct);
    return SK_OK;
}

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *device = "cpu", *system = NULL, *chat_file = NULL, *chat_name = NULL;
    const char *kv_memory = NULL, *kv_dtype_s = "auto";
    long max_tokens = 128, top_k = 40, seed = -1, tp = 1;
    double temperature = 0.8, top_p = 0.95, comm_timeout = 300;
    bool chat = false, report = false;
    arg_list stop = {0};
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder (config.json, model.safetensors, tokenizer.json)", true, false},
        {"--prompt", ARG_STR, &prompt, "STR", "text to continue (with --chat: the user's message)", false, false},
        {"--max-tokens", ARG_INT, &max_tokens, "N", "most tokens to generate (default 128)", false, false},
        {"--temperature", ARG_FLOAT, &temperature, "X", "0 = greedy (default 0.8)", false, false},
        {"--top-k", ARG_INT, &top_k, "K", "sample among the K likeliest (default 40; 0 = all)", false, false},
        {"--top-p", ARG_FLOAT, &top_p, "P", "nucleus probability (default 0.95; 1 = off)", false, false},
        {"--seed", ARG_INT, &seed, "S", "sampling seed (default: from the clock, printed)", false, false},
        {"--stop", ARG_LIST, &stop, "STR...", "stop before any of these strings", false, false},
        {"--chat", ARG_BOOL, &chat, NULL, "treat the prompt as a chat message (models with a chat template)", false, false},
        {"--system", ARG_STR, &system, "STR", "with --chat: a system message before the prompt", false, false},
        {"--chat-file", ARG_STR, &chat_file, "FILE", "a conversation, [{\"role\": ..., \"content\": ...}, ...] (implies --chat)", false, false},
        {"--chat-template", ARG_STR, &chat_name, "NAME", "llama3|llama2|chatml|mistral instead of the folder's template", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "where to run (default cpu)", false, false},
        {"--kv-memory", ARG_STR, &kv_memory, "BYTES|FRACTION", "KV pool budget: bytes (k, M, G) or a fraction of free "
         "memory (default: just this prompt's blocks)", false, false},
        {"--kv-cache-dtype", ARG_STR, &kv_dtype_s, "auto|f32|bf16|f16", CLI_KV_DTYPE_HELP, false, false},
        {"--mem-report", ARG_BOOL, &report, NULL, "after generating, print to stderr the folder mapping's Rss, Pss and "
         "shared pages and this process's private memory outside it (bytes and % of the weight files)", false, false},
        {"--tp", ARG_INT, &tp, "K", "split the model over K ranks (tensor parallel; runs mpirun unless under a launcher)", false, false},
        {"--comm-timeout", ARG_FLOAT, &comm_timeout, "S", "with --tp: a collective waiting longer fails (default 300)", false, false},
    };
    sk_status st = args_parse("skein generate", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    dtype kv_dtype;
    if ((st = kv_dtype_parse(kv_dtype_s, &kv_dtype))) return cli_fail(st);
    if (max_tokens < 0 || max_tokens > 1 << 20) return cli_fail(sk_fail(SK_EARG, "generate: --max-tokens %ld is out of range", max_tokens));
    if (temperature < 0) return cli_fail(sk_fail(SK_EARG, "generate: --temperature must not be negative"));
    if (top_k < 0) return cli_fail(sk_fail(SK_EARG, "generate: --top-k must not be negative"));
    if (!(top_p > 0 && top_p <= 1)) return cli_fail(sk_fail(SK_EARG, "generate: --top-p must be in (0, 1]"));
    if (chat_file) chat = true;
    if (!chat && (system || chat_name)) return cli_fail(sk_fail(SK_EARG, "generate: --system and --chat-template need --chat"));
    if (!prompt && !chat_file) return cli_fail(sk_fail(SK_EARG, "generate: --prompt is required (or --chat-file)"));
    if (chat_file && (prompt || system)) return cli_fail(sk_fail(SK_EARG, "generate: --chat-file holds the whole conversation; leave out --prompt and --system"));
    chat_template ct = {0};
    if (chat) {
        char cfg[4096];
        file_join(cfg, sizeof cfg, dir, "tokenizer_config.json");
        if (!chat_name && access(cfg, F_OK) != 0)
            return cli_fail(sk_fail(SK_EARG, "generate: --chat needs a chat template, and %s has no tokenizer_config.json "
                                             "(GPT-2 folders have none); pass --chat-template NAME (%s)", dir, chat_template_names));
        if ((st = chat_template_load(cfg, chat_name, &ct)) != SK_OK) return cli_fail(st);
    }
    if (seed < 0) seed = (long)((unsigned long)time(NULL) ^ ((unsigned long)getpid() << 16)) & 0x7fffffff;
    if (tp > 1 && launch_by_hand()) return launch_tp("generate", argc, argv, (int)tp, dir, false);
    comm *c = NULL;
    if ((st = launch_tp_join((int)tp, device, comm_timeout, &c))) return cli_fail(st);
    if (c && c->rank > 0) return launch_tp_follow(dir, device, c);

    char path[4096];
    tok *t = NULL;
    model *m = NULL;
    backend *be = backend_create_on(device, c ? c->local_rank : 0);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *rendered = NULL;
    chat_msg *msgs = NULL;
    size_t kv_bytes = 0;
    if (!be) {
        st = SK_EARG;
        goto done;
    }
    if ((st = model_open_split(dir, be, c, &m))) goto done;
    if (kv_memory && (st = kv_budget(be, kv_memory, &kv_bytes))) goto done;
    if ((st = tok_load(file_join(path, sizeof path, dir, "tokenizer.json"), &t))) goto done;
    if ((st = tok_load_config(t, file_join(path, sizeof path, dir, "tokenizer_config.json")))) goto done;
    if (chat) {
        chat_msg two[2];
        int n_msgs = 0;
        size_t len;
        if (chat_file) {
            if ((st = chat_messages_load(chat_file, &msgs, &n_msgs))) goto done;
        } else {
            if (system) two[n_msgs++] = (chat_msg){"system", system};
            two[n_msgs++] = (chat_msg){"user", prompt};
        }
        if ((st = chat_render(&ct, msgs ? msgs : two, n_msgs, true, &rendered, &len))) goto done;
        /* The rendered text carries the special tokens (BOS included) as text: encoded without
         * the post-processor, as apply_chat_template(tokenize=True) does. */
        if ((st = tok_encode(t, rendered, len, &ids, &n_ids))) goto done;
    } else if ((st = tok_encode_ex(t, prompt, strlen(prompt), true, &ids, &n_ids))) {
        /* As transformers' tokenizer(prompt): with the BOS its post-processor adds (Llama). */
        goto done;
    }
    gen_opts o = {.max_tokens = (int)max_tokens, .seed = (uint64_t)seed, .stop = stop.items, .n_stop = stop.n,
                  .kv_bytes = kv_bytes, .kv_dtype = kv_dtype, .chat = chat ? &ct : NULL,
                  .sample = {.temperature = (float)temperature, .top_k = (int)top_k, .top_p = (float)top_p}};
    gen_result res;
    if (!chat) fputs(prompt, stdout);
    fflush(stdout);
    if ((st = gen_run(m, t, ids, n_ids, &o, gen_emit_stdout, NULL, NULL, &res))) goto done;
    printf("\n");
    fprintf(stderr, "[%d prompt tokens in %.2f s, %d generated at %.1f tokens/s, stop: %s, seed %ld, kv cache %s]\n",
            res.n_prompt, res.prefill_s, res.n_generated, res.decode_s > 0 ? res.n_generated / res.decode_s : 0.0,
            res.finish, seed, kv_dtype_name(res.kv_dtype));
    if (report) st = mem_report(dir, m);
done:
    chat_template_free(&ct);
    mem_free(rendered);
    mem_free(msgs);
    mem_free(ids);
    engine_tp_release(c);
    model_free(m);
    tok_free(t);
    backend_free(be);
    int rc = cli_fail(st);
    comm_free(c);
    return rc;
}
