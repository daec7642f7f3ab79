/* skein generate: loads a model folder and its tokenizer.json, then streams generated text
 * to stdout; a summary (tokens, speed, seed, why it stopped) goes to stderr. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/file.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "infer/generate.h"

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *device = "cpu";
    long max_tokens = 128, top_k = 40, seed = -1;
    double temperature = 0.8, top_p = 0.95;
    bool chat = false;
    arg_list stop = {0};
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder (config.json, model.safetensors, tokenizer.json)", true, false},
        {"--prompt", ARG_STR, &prompt, "STR", "text to continue", true, false},
        {"--max-tokens", ARG_INT, &max_tokens, "N", "most tokens to generate (default 128)", false, false},
        {"--temperature", ARG_FLOAT, &temperature, "X", "0 = greedy (default 0.8)", false, false},
        {"--top-k", ARG_INT, &top_k, "K", "sample among the K likeliest (default 40; 0 = all)", false, false},
        {"--top-p", ARG_FLOAT, &top_p, "P", "nucleus probability (default 0.95; 1 = off)", false, false},
        {"--seed", ARG_INT, &seed, "S", "sampling seed (default: from the clock, printed)", false, false},
        {"--stop", ARG_LIST, &stop, "STR...", "stop before any of these strings", false, false},
        {"--chat", ARG_BOOL, &chat, NULL, "treat the prompt as a chat message (models with a chat template)", false, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "where to run (default cpu)", false, false},
    };
    sk_status st = args_parse("skein generate", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (max_tokens < 0 || max_tokens > 1 << 20) return cli_fail(sk_fail(SK_EARG, "generate: --max-tokens %ld is out of range", max_tokens));
    if (temperature < 0) return cli_fail(sk_fail(SK_EARG, "generate: --temperature must not be negative"));
    if (top_k < 0) return cli_fail(sk_fail(SK_EARG, "generate: --top-k must not be negative"));
    if (!(top_p > 0 && top_p <= 1)) return cli_fail(sk_fail(SK_EARG, "generate: --top-p must be in (0, 1]"));
    if (chat) return cli_fail(sk_fail(SK_EARG, "generate: --chat needs a chat template, and GPT-2 folders have none"));
    if (seed < 0) seed = (long)((unsigned long)time(NULL) ^ ((unsigned long)getpid() << 16)) & 0x7fffffff;

    char path[4096];
    tok *t = NULL;
    model *m = NULL;
    backend *be = backend_create(device);
    if (!be) return cli_fail(SK_EARG);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if ((st = tok_load(file_join(path, sizeof path, dir, "tokenizer.json"), &t))) goto done;
    if ((st = model_load(dir, be, &m))) goto done;
    if ((st = tok_encode(t, prompt, strlen(prompt), &ids, &n_ids))) goto done;
    gen_opts o = {.max_tokens = (int)max_tokens, .seed = (uint64_t)seed, .stop = stop.items, .n_stop = stop.n,
                  .sample = {.temperature = (float)temperature, .top_k = (int)top_k, .top_p = (float)top_p}};
    gen_result res;
    fputs(prompt, stdout);
    fflush(stdout);
    if ((st = gen_run(m, t, ids, n_ids, &o, gen_emit_stdout, NULL, NULL, &res))) goto done;
    printf("\n");
    fprintf(stderr, "[%d prompt tokens in %.2f s, %d generated at %.1f tokens/s, stop: %s, seed %ld]\n", res.n_prompt,
            res.prefill_s, res.n_generated, res.decode_s > 0 ? res.n_generated / res.decode_s : 0.0, res.finish, seed);
done:
    mem_free(ids);
    model_free(m);
    tok_free(t);
    backend_free(be);
    return cli_fail(st);
}
