/* runfile: the run file of runfile.h.
 *
 * Every key the file uses becomes an entry (flag, value, the key it came from); a second key
 * for the same flag must give the same value (compared as text, numbers printed with %.17g,
 * so 1e-3 and 0.001 agree), else the two keys are named as a contradiction. DeepSpeed's
 * sections keep DeepSpeed's defaults for the parameters they leave out (a WarmupLR without
 * warmup_max_lr peaks at 0.001, as it does there). rf->argv is rebuilt from the entries after
 * each change. */
#include "cli/runfile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/json.h"

/* Appends key (and a note, or NULL) to the ignored list. */
static sk_status rf_ignore(runfile *rf, const char *key, const char *note) {
    size_t old = strlen(rf->ignored), add = strlen(key) + (note ? strlen(note) + 3 : 0) + 3;
    char *grown = realloc(rf->ignored, old + add);
    if (!grown) return sk_fail(SK_ENOMEM, "%s: out of memory", rf->path);
    rf->ignored = grown;
    snprintf(grown + old, add, "%s%s%s%s%s", old ? ", " : "", key, note ? " (" : "", note ? note : "", note ? ")" : "");
    return SK_OK;
}

/* Rebuilds rf->argv from the entries. */
static sk_status rf_argv(runfile *rf) {
    char **argv = realloc(rf->argv, (2 * (size_t)rf->n + 1) * sizeof *argv);
    if (!argv) return sk_fail(SK_ENOMEM, "%s: out of memory", rf->path);
    rf->argv = argv;
    rf->argc = 0;
    for (int i = 0; i < rf->n; i++) {
        argv[rf->argc++] = (char *)rf->e[i].flag;
        if (rf->e[i].value) argv[rf->argc++] = rf->e[i].value;
    }
    argv[rf->argc] = NULL;
    return SK_OK;
}

/* Sets flag to value (NULL: a switch) on behalf of key. */
static sk_status rf_put(runfile *rf, const char *flag, const char *value, const char *key) {
    for (int i = 0; i < rf->n; i++) {
        const runfile_entry *e = &rf->e[i];
        if (strcmp(e->flag, flag)) continue;
        if (!e->value == !value && (!value || !strcmp(e->value, value))) return SK_OK;   /* they agree */
        return sk_fail(SK_EARG, "%s: %s (%s) and %s (%s) contradict each other: both set %s", rf->path, e->key,
                       e->value ? e->value : "true", key, value ? value : "true", flag);
    }
    runfile_entry *grown = realloc(rf->e, ((size_t)rf->n + 1) * sizeof *grown);
    if (!grown) return sk_fail(SK_ENOMEM, "%s: out of memory", rf->path);
    rf->e = grown;
    runfile_entry *e = &rf->e[rf->n];
    *e = (runfile_entry){.flag = flag, .value = value ? strdup(value) : NULL, .key = strdup(key)};
    if ((value && !e->value) || !e->key) {
        free(e->value);
        free(e->key);
        return sk_fail(SK_ENOMEM, "%s: out of memory", rf->path);
    }
    rf->n++;
    return rf_argv(rf);
}

static sk_status rf_put_num(runfile *rf, const char *flag, double v, const char *key) {
    char text[32];
    snprintf(text, sizeof text, "%.17g", v);
    return rf_put(rf, flag, text, key);
}

/* "auto" (Hugging Face's DeepSpeed configs): the value is left to skein. */
static bool is_auto(const cJSON *it) { return cJSON_IsString(it) && !strcmp(it->valuestring, "auto"); }

/* The number at it (key names it): SK_EARG unless a number (an integer when `integer`). */
static sk_status rf_number(const runfile *rf, const cJSON *it, const char *key, bool integer, double *out) {
    if (!cJSON_IsNumber(it) || (integer && (it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 9e15)))
        return sk_fail(SK_EARG, "%s: %s wants %s", rf->path, key, integer ? "an integer" : "a number");
    *out = it->valuedouble;
    return SK_OK;
}

/* A key named like a flag of the table: its value in the flag's own form. */
static sk_status rf_flag(runfile *rf, const arg_spec *s, const cJSON *it, const char *key) {
    double v = 0;
    switch (s->kind) {
    case ARG_BOOL:
        if (!cJSON_IsBool(it)) return sk_fail(SK_EARG, "%s: %s wants true or false", rf->path, key);
        return cJSON_IsTrue(it) ? rf_put(rf, s->name, NULL, key) : SK_OK;
    case ARG_INT:
    case ARG_FLOAT:
        SK_TRY(rf_number(rf, it, key, s->kind == ARG_INT, &v));
        return rf_put_num(rf, s->name, v, key);
    case ARG_STR:
        if (cJSON_IsString(it)) return rf_put(rf, s->name, it->valuestring, key);
        if (cJSON_IsNumber(it)) return rf_put_num(rf, s->name, it->valuedouble, key);
        return sk_fail(SK_EARG, "%s: %s wants a string", rf->path, key);
    case ARG_LIST:
        break;
    }
    return sk_fail(SK_EARG, "%s: %s takes several values: give it on the command line", rf->path, key);
}

/* The object at it, or SK_EARG naming key. */
static sk_status rf_object(const runfile *rf, const cJSON *it, const char *key) {
    return cJSON_IsObject(it) ? SK_OK : sk_fail(SK_EARG, "%s: %s wants an object", rf->path, key);
}

/* Every member of obj (at path `at`) not in used[] is ignored. */
static sk_status rf_ignore_rest(runfile *rf, const cJSON *obj, const char *at, const char *const *used) {
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        bool known = false;
        for (const char *const *u = used; *u && !known; u++) known = !strcmp(it->string, *u);
        if (known) continue;
        char key[300];
        snprintf(key, sizeof key, "%s.%s", at, it->string);
        SK_TRY(rf_ignore(rf, key, NULL));
    }
    return SK_OK;
}

/* A number member of a DeepSpeed section (obj at path `at`, NULL: the top level): *out keeps
 * the section's default when absent or "auto"; *given says whether the file set it. */
static sk_status rf_param(runfile *rf, const cJSON *obj, const char *at, const char *name, bool integer, double *out,
                          bool *given) {
    const cJSON *it = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    char key[300];
    snprintf(key, sizeof key, "%s%s%s", at ? at : "", at ? "." : "", name);
    if (given) *given = false;
    if (!it || cJSON_IsNull(it)) return SK_OK;
    if (is_auto(it)) return rf_ignore(rf, key, "auto");
    SK_TRY(rf_number(rf, it, key, integer, out));
    if (given) *given = true;
    return SK_OK;
}

/* bf16 and fp16: enabled switches --precision; fp16 is refused. */
static sk_status rf_precision(runfile *rf, const cJSON *root) {
    const cJSON *bf = cJSON_GetObjectItemCaseSensitive(root, "bf16"), *fp = cJSON_GetObjectItemCaseSensitive(root, "fp16");
    static const char *const used[] = {"enabled", NULL};
    int on[2] = {-1, -1};   /* bf16, fp16: -1 absent (or auto), 0 off, 1 on */
    const cJSON *sec[2] = {bf, fp};
    const char *name[2] = {"bf16", "fp16"};
    for (int k = 0; k < 2; k++) {
        if (!sec[k]) continue;
        SK_TRY(rf_object(rf, sec[k], name[k]));
        const cJSON *en = cJSON_GetObjectItemCaseSensitive(sec[k], "enabled");
        char key[32];
        snprintf(key, sizeof key, "%s.enabled", name[k]);
        if (is_auto(en)) SK_TRY(rf_ignore(rf, key, "auto"));
        else if (en && !cJSON_IsBool(en)) return sk_fail(SK_EARG, "%s: %s wants true or false", rf->path, key);
        else if (en) on[k] = cJSON_IsTrue(en);
        SK_TRY(rf_ignore_rest(rf, sec[k], name[k], used));
    }
    if (on[0] == 1 && on[1] == 1)
        return sk_fail(SK_EARG, "%s: bf16.enabled and fp16.enabled are both true: pick one (skein trains in bf16)",
                       rf->path);
    if (on[1] == 1)
        return sk_fail(SK_EARG, "%s: fp16.enabled: skein has no fp16 training (with loss scaling); use bf16.enabled",
                       rf->path);
    if (on[0] >= 0) return rf_put(rf, "--precision", on[0] ? "bf16" : "f32", "bf16.enabled");
    return SK_OK;
}

/* optimizer: AdamW (or Adam in DeepSpeed's default AdamW mode) and its params. */
static sk_status rf_optimizer(runfile *rf, const cJSON *opt) {
    static const char *const used[] = {"type", "params", NULL};
    static const char *const used_params[] = {"lr", "betas", "eps", "weight_decay", "adam_w_mode", NULL};
    SK_TRY(rf_object(rf, opt, "optimizer"));
    SK_TRY(rf_ignore_rest(rf, opt, "optimizer", used));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(opt, "type");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(opt, "params");
    if (params) SK_TRY(rf_object(rf, params, "optimizer.params"));
    const cJSON *wmode = params ? cJSON_GetObjectItemCaseSensitive(params, "adam_w_mode") : NULL;
    if (!cJSON_IsString(type)) return sk_fail(SK_EARG, "%s: optimizer.type wants a string (AdamW)", rf->path);
    bool adam = !strcasecmp(type->valuestring, "Adam");
    if (!adam && strcasecmp(type->valuestring, "AdamW"))
        return sk_fail(SK_EARG, "%s: optimizer.type %s: skein trains with AdamW only", rf->path, type->valuestring);
    if (wmode && !cJSON_IsBool(wmode))
        return sk_fail(SK_EARG, "%s: optimizer.params.adam_w_mode wants true or false", rf->path);
    if (adam && cJSON_IsFalse(wmode))
        return sk_fail(SK_EARG, "%s: optimizer Adam with adam_w_mode false (L2 regularisation): skein trains with "
                       "AdamW (decoupled weight decay) only", rf->path);
    if (!params) return SK_OK;
    SK_TRY(rf_ignore_rest(rf, params, "optimizer.params", used_params));
    static const struct { const char *name, *flag; } map[] = {
        {"lr", "--lr"}, {"eps", "--eps"}, {"weight_decay", "--weight-decay"}};
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
        double v;
        bool given;
        char key[64];
        snprintf(key, sizeof key, "optimizer.params.%s", map[k].name);
        SK_TRY(rf_param(rf, params, "optimizer.params", map[k].name, false, &v, &given));
        if (given) SK_TRY(rf_put_num(rf, map[k].flag, v, key));
    }
    const cJSON *betas = cJSON_GetObjectItemCaseSensitive(params, "betas");
    if (betas && !is_auto(betas)) {
        if (!cJSON_IsArray(betas) || cJSON_GetArraySize(betas) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(betas, 0)) ||
            !cJSON_IsNumber(cJSON_GetArrayItem(betas, 1)))
            return sk_fail(SK_EARG, "%s: optimizer.params.betas wants two numbers, [beta1, beta2]", rf->path);
        SK_TRY(rf_put_num(rf, "--beta1", cJSON_GetArrayItem(betas, 0)->valuedouble, "optimizer.params.betas"));
        SK_TRY(rf_put_num(rf, "--beta2", cJSON_GetArrayItem(betas, 1)->valuedouble, "optimizer.params.betas"));
    } else if (betas) SK_TRY(rf_ignore(rf, "optimizer.params.betas", "auto"));
    return SK_OK;
}

/* scheduler: WarmupLR, WarmupDecayLR, WarmupCosineLR with DeepSpeed's defaults. */
static sk_status rf_scheduler(runfile *rf, const cJSON *sch) {
    static const char *const used[] = {"type", "params", NULL};
    static const char *const used_params[] = {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type",
                                              "total_num_steps", "warmup_min_ratio", "cos_min_ratio", NULL};
    SK_TRY(rf_object(rf, sch, "scheduler"));
    SK_TRY(rf_ignore_rest(rf, sch, "scheduler", used));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sch, "type");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(sch, "params");
    if (p) SK_TRY(rf_object(rf, p, "scheduler.params"));
    if (!cJSON_IsString(type)) return sk_fail(SK_EARG, "%s: scheduler.type wants a string", rf->path);
    const char *t = type->valuestring;
    bool cosine = !strcmp(t, "WarmupCosineLR"), decay = !strcmp(t, "WarmupDecayLR");
    if (!cosine && !decay && strcmp(t, "WarmupLR"))
        return sk_fail(SK_EARG, "%s: scheduler.type %s is not supported (WarmupLR, WarmupDecayLR or WarmupCosineLR)",
                       rf->path, t);
    if (p) SK_TRY(rf_ignore_rest(rf, p, "scheduler.params", used_params));
    const char *at = "scheduler.params";
    double min_lr = 0, max_lr = 0.001, warmup = 1000, total = 0, min_ratio = 0, cos_min = 0.0001;
    bool has_total = false;
    SK_TRY(rf_param(rf, p, at, "warmup_num_steps", true, &warmup, NULL));
    SK_TRY(rf_param(rf, p, at, cosine ? "warmup_min_ratio" : "warmup_min_lr", false, cosine ? &min_ratio : &min_lr, NULL));
    if (min_lr != 0 || min_ratio != 0)
        return sk_fail(SK_EARG, "%s: scheduler.params.%s: skein's warmup starts at 0; other starts are not supported",
                       rf->path, cosine ? "warmup_min_ratio" : "warmup_min_lr");
    if (cosine || decay) {
        SK_TRY(rf_param(rf, p, at, "total_num_steps", true, &total, &has_total));
        if (!has_total) return sk_fail(SK_EARG, "%s: scheduler %s needs params.total_num_steps", rf->path, t);
        SK_TRY(rf_put_num(rf, "--steps", total, "scheduler.params.total_num_steps"));
    }
    const cJSON *wt = p ? cJSON_GetObjectItemCaseSensitive(p, "warmup_type") : NULL;
    const char *shape = "log";   /* DeepSpeed's default */
    if (wt && (!cJSON_IsString(wt) || (strcmp(wt->valuestring, "log") && strcmp(wt->valuestring, "linear"))))
        return sk_fail(SK_EARG, "%s: scheduler.params.warmup_type wants \"log\" or \"linear\"", rf->path);
    if (wt) shape = wt->valuestring;
    SK_TRY(rf_put_num(rf, "--warmup", warmup, "scheduler.params.warmup_num_steps"));
    SK_TRY(rf_put(rf, "--warmup-shape", shape, "scheduler.params.warmup_type"));
    if (cosine) {
        SK_TRY(rf_param(rf, p, at, "cos_min_ratio", false, &cos_min, NULL));
        SK_TRY(rf_put_num(rf, "--min-lr-frac", cos_min, "scheduler.params.cos_min_ratio"));
        return rf_put(rf, "--lr-decay", "cosine", "scheduler.type WarmupCosineLR");
    }
    bool given;
    SK_TRY(rf_param(rf, p, at, "warmup_max_lr", false, &max_lr, &given));
    SK_TRY(rf_put_num(rf, "--lr", max_lr, given ? "scheduler.params.warmup_max_lr"
                                                : "the scheduler's default warmup_max_lr"));
    if (decay) {
        SK_TRY(rf_put(rf, "--lr-decay", "linear", "scheduler.type WarmupDecayLR"));
        return rf_put_num(rf, "--min-lr-frac", 0, "scheduler.type WarmupDecayLR");
    }
    return rf_put_num(rf, "--min-lr-frac", 1, "scheduler.type WarmupLR");
}

/* zero_optimization: stage; offload mapped where the command has --offload, else refused. */
static sk_status rf_zero(runfile *rf, const cJSON *z, const arg_spec *specs, int n) {
    static const char *const used[] = {"stage", "offload_optimizer", "offload_param", NULL};
    SK_TRY(rf_object(rf, z, "zero_optimization"));
    SK_TRY(rf_ignore_rest(rf, z, "zero_optimization", used));
    double stage;
    bool given;
    SK_TRY(rf_param(rf, z, "zero_optimization", "stage", true, &stage, &given));
    if (given) SK_TRY(rf_put_num(rf, "--zero", stage, "zero_optimization.stage"));
    bool has_offload = false;
    for (int i = 0; i < n; i++) has_offload |= !strcmp(specs[i].name, "--offload");
    const char *what[2] = {"offload_optimizer", "offload_param"};
    for (int k = 0; k < 2; k++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(z, what[k]);
        if (!o) continue;
        char key[64];
        snprintf(key, sizeof key, "zero_optimization.%s", what[k]);
        SK_TRY(rf_object(rf, o, key));
        const cJSON *dev = cJSON_GetObjectItemCaseSensitive(o, "device");
        const char *d = cJSON_IsString(dev) ? dev->valuestring : "none";
        if (!strcmp(d, "none")) continue;
        if (k == 0 && has_offload && !strcmp(d, "cpu")) {
            SK_TRY(rf_put(rf, "--offload", "optimizer", key));
            continue;
        }
        return sk_fail(SK_EARG, "%s: %s with device %s: %s is not supported yet", rf->path, key, d,
                       k == 0 ? (strcmp(d, "cpu") ? "offload to NVMe" : "ZeRO-Offload of the optimizer")
                              : "offloading the parameters");
    }
    return SK_OK;
}

/* DeepSpeed's batch keys, kept for runfile_batch (-1: absent). */
static sk_status rf_batch_keys(runfile *rf, const cJSON *root) {
    static const char *const names[3] = {"train_batch_size", "train_micro_batch_size_per_gpu",
                                         "gradient_accumulation_steps"};
    long *dst[3] = {&rf->tbs, &rf->mb, &rf->gas};
    for (int k = 0; k < 3; k++) {
        double v = -1;
        SK_TRY(rf_param(rf, root, NULL, names[k], true, &v, NULL));
        if (v != -1 && v < 1) return sk_fail(SK_EARG, "%s: %s must be at least 1, got %.0f", rf->path, names[k], v);
        *dst[k] = (long)v;
    }
    return SK_OK;
}

sk_status runfile_load(const char *path, const arg_spec *specs, int n, runfile *rf) {
    memset(rf, 0, sizeof *rf);
    rf->path = path;
    rf->tbs = rf->mb = rf->gas = -1;
    rf->ignored = calloc(1, 1);
    if (!rf->ignored) return sk_fail(SK_ENOMEM, "%s: out of memory", path);
    cJSON *root;
    SK_TRY(json_load_file(path, &root));
    sk_status st = SK_OK;
    if (!cJSON_IsObject(root)) {
        st = sk_fail(SK_EARG, "%s: a run file is one JSON object ({\"steps\": 100, ...})", path);
        goto done;
    }
    static const char *const ds[] = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                     "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler", "zero_optimization"};
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        bool deepspeed = false;
        for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) deepspeed |= !strcmp(it->string, ds[k]);
        if (deepspeed) continue;
        char name[300];
        snprintf(name, sizeof name, "--%s", it->string);
        const arg_spec *s = NULL;
        for (int k = 0; k < n && !s; k++)
            if (!strcmp(specs[k].name, name) && strcmp(name, "--config")) s = &specs[k];
        st = s ? rf_flag(rf, s, it, it->string) : rf_ignore(rf, it->string, NULL);
        if (st) goto done;
    }
    double clip = 0;
    bool given;
    if ((st = rf_batch_keys(rf, root)) || (st = rf_precision(rf, root)) ||
        (st = rf_param(rf, root, NULL, "gradient_clipping", false, &clip, &given)) ||
        (given && (st = rf_put_num(rf, "--grad-clip", clip, "gradient_clipping"))))
        goto done;
    const cJSON *opt = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
    const cJSON *sch = cJSON_GetObjectItemCaseSensitive(root, "scheduler");
    const cJSON *z = cJSON_GetObjectItemCaseSensitive(root, "zero_optimization");
    if ((opt && (st = rf_optimizer(rf, opt))) || (sch && (st = rf_scheduler(rf, sch))) || (z && (st = rf_zero(rf, z, specs, n))))
        goto done;
    st = rf_argv(rf);
done:
    cJSON_Delete(root);
    return st;
}

sk_status runfile_batch(runfile *rf, int world) {
    const long tbs = rf->tbs, mb = rf->mb, gas = rf->gas, W = world;
    char key[200];
    if (gas > 0 && tbs < 0 && mb < 0)
        return sk_fail(SK_EARG, "%s: gradient_accumulation_steps needs train_batch_size or "
                       "train_micro_batch_size_per_gpu beside it", rf->path);
    if (tbs > 0 && mb > 0 && gas > 0 && tbs != mb * gas * W)
        return sk_fail(SK_EARG, "%s: train_batch_size %ld is not train_micro_batch_size_per_gpu %ld x "
                       "gradient_accumulation_steps %ld x %ld rank%s (= %ld)", rf->path, tbs, mb, gas, W,
                       W > 1 ? "s" : "", mb * gas * W);
    if (tbs > 0 && mb < 0 && gas > 0 && tbs % (gas * W))
        return sk_fail(SK_EARG, "%s: train_batch_size %ld is not a multiple of gradient_accumulation_steps %ld x "
                       "%ld rank%s", rf->path, tbs, gas, W, W > 1 ? "s" : "");
    if (tbs > 0) SK_TRY(rf_put_num(rf, "--batch", (double)tbs, "train_batch_size"));
    if (mb > 0) SK_TRY(rf_put_num(rf, "--micro-batch", (double)mb, "train_micro_batch_size_per_gpu"));
    if (tbs > 0 && mb < 0 && gas > 0)
        SK_TRY(rf_put_num(rf, "--micro-batch", (double)(tbs / (gas * W)),
                          "train_batch_size / (gradient_accumulation_steps x ranks)"));
    if (tbs < 0 && mb > 0) {
        snprintf(key, sizeof key, "train_micro_batch_size_per_gpu x gradient_accumulation_steps x %ld rank%s", W,
                 W > 1 ? "s" : "");
        SK_TRY(rf_put_num(rf, "--batch", (double)(mb * (gas > 0 ? gas : 1) * W), key));
    }
    return SK_OK;
}

void runfile_free(runfile *rf) {
    for (int i = 0; i < rf->n; i++) {
        free(rf->e[i].value);
        free(rf->e[i].key);
    }
    free(rf->e);
    free(rf->argv);
    free(rf->ignored);
    memset(rf, 0, sizeof *rf);
}
