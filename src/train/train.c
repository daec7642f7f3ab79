/* train: the training loop on one or several ranks (see train.h).
 *
 * Invariants: every rank runs the same sequence of collectives: the step's micro-batch
 * loop (at ZeRO-2/3 with static data, every rank runs the same number of micro-batches,
 * idle passes filling in), one reduction, one statistics all-reduce, checkpoints at the same
 * steps. tr->pos is the number of samples consumed since epoch 0 and equals the sum of the
 * global batches of the steps taken (plus the position a resume started from). */
#include "train/train.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/file.h"
#include "base/progress.h"
#include "data/data.h"
#include "model/presets.h"
#include "model/tp_train.h"
#include "tokenizer/tok.h"
#include "train/ckpt.h"
#include "train/plot.h"
#include "train/step.h"
#include "train/tpdp.h"
#include "train/zero.h"

typedef struct trainer {
    const train_opts *o;
    backend *be;
    model *m;
    data_loader *train_dl, *val_dl;
    char tokenizer_path[4096];   /* empty when the run has no tokenizer.json */
    int *inputs, *targets;       /* (micro_batch, seq) host buffers */
    FILE *log;
    FILE *sample_log;            /* debug: samples used by this rank */
    ckpt_state st;
    long micro_batch;
    comm *c;                     /* NULL: one process */
    int rank, world;
    tpdp g;                      /* tensor-parallel groups and data-parallel peers */
    zero *z;
    uint64_t pos;                /* samples consumed since epoch 0 */
    size_t n_samples;            /* per epoch */
    train_step step;             /* the optimizer step (step.h); its stats after each step */
    zero_mem mem;                /* this rank's plan */
    size_t baseline_rss;         /* resident bytes before the model */
    size_t dev_free0;            /* device backends: free device bytes before the model (0: host memory) */
    bool memory_written;
} trainer;

void train_opts_default(train_opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->steps = 100;
    o->batch = 8;
    o->seq = 256;
    o->eval_batches = 8;
    o->keep_checkpoints = 3;
    o->tp = 1;
    o->seed = 1337;
    o->slow_rank = -1;
    o->kill_rank = -1;
    opt_hparams_default(&o->hp);
}

static sk_status check_opts(const train_opts *o) {
    if (!o->model) return sk_fail(SK_EARG, "train: --model is required (a model folder or a preset name)");
    if (!o->data) return sk_fail(SK_EARG, "train: --data is required");
    if (!o->out) return sk_fail(SK_EARG, "train: --out is required");
    if (o->steps <= 0) return sk_fail(SK_EARG, "train: --steps must be positive, got %ld", o->steps);
    if (o->stop_after < 0 || o->stop_after > o->steps)
        return sk_fail(SK_EARG, "train: --stop-after must be between 1 and --steps (%ld), got %ld", o->steps, o->stop_after);
    if (o->batch <= 0 || o->batch > TRAIN_MAX_BATCH)
        return sk_fail(SK_EARG, "train: --batch must be in [1, %d], got %ld", TRAIN_MAX_BATCH, o->batch);
    if (o->zero < 0 || o->zero > 3) return sk_fail(SK_EARG, "train: --zero must be 0, 1, 2 or 3, got %d", o->zero);
    if (o->micro_batch < 0 || o->micro_batch > o->batch)
        return sk_fail(SK_EARG, "train: --micro-batch must be between 1 and --batch (%ld), got %ld", o->batch, o->micro_batch);
    if (o->seq <= 0) return sk_fail(SK_EARG, "train: --seq must be positive, got %ld", o->seq);
    if (!(o->hp.lr > 0) || o->hp.lr > 10) return sk_fail(SK_EARG, "train: --lr must be in (0, 10], got %g", (double)o->hp.lr);
    if (o->hp.warmup < 0) return sk_fail(SK_EARG, "train: --warmup must not be negative");
    if (o->eval_every < 0 || o->save_every < 0 || o->keep_checkpoints < 0 || o->eval_batches <= 0)
        return sk_fail(SK_EARG, "train: --eval-every, --save-every, --keep-checkpoints must not be negative");
    return SK_OK;
}

/* Picks the model: the newest checkpoint when resuming, else the --model folder, else a preset
 * whose vocabulary comes from the dataset's tokenizer. Also finds the run's tokenizer.json. */
static sk_status load_model(trainer *tr, bool *resumed) {
    const train_opts *o = tr->o;
    char ckpt[4096], path[4096];
    *resumed = false;
    tr->tokenizer_path[0] = 0;
    if (o->resume && ckpt_find_latest(o->out, ckpt, sizeof ckpt)) {
        SK_TRY(ckpt_load_state(ckpt, &tr->st));
        if (tr->st.step > o->steps)
            return sk_fail(SK_EARG, "train: %s is at step %ld, beyond --steps %ld", ckpt, tr->st.step, o->steps);
        if (o->stop_after > 0 && o->stop_after <= tr->st.step)
            return sk_fail(SK_EARG, "train: %s is already at step %ld; --stop-after %ld would not stop the run", ckpt,
                           tr->st.step, o->stop_after);
        if (tr->st.world_size != tr->world || tr->st.zero != o->zero || tr->st.dynamic != o->dynamic)
            if (tr->rank == 0)
                log_info("resuming a run saved at world size %d, ZeRO-%d, %s data as world size %d, ZeRO-%d, %s",
                         tr->st.world_size, tr->st.zero, tr->st.dynamic ? "dynamic" : "static", tr->world,
                         o->zero, o->dynamic ? "dynamic" : "static");
        if (tr->st.batch != o->batch || tr->st.seq != o->seq)
            log_warn("resuming a run saved with batch %ld, seq %ld under batch %ld, seq %ld", tr->st.batch,
                     tr->st.seq, o->batch, o->seq);
        SK_TRY(model_load(ckpt, tr->be, &tr->m));
        if (file_exists(file_join(path, sizeof path, ckpt, "tokenizer.json")))
            snprintf(tr->tokenizer_path, sizeof tr->tokenizer_path, "%s", path);
        *resumed = true;
        log_info("resuming from %s (step %ld)", ckpt, tr->st.step);
        return SK_OK;
    }
    if (o->resume) log_info("no checkpoint in %s: starting from step 0", o->out);
    if (file_is_dir(o->data) && file_exists(file_join(path, sizeof path, o->data, "tokenizer.json")))
        snprintf(tr->tokenizer_path, sizeof tr->tokenizer_path, "%s", path);
    if (file_is_dir(o->model)) {
        SK_TRY(model_load(o->model, tr->be, &tr->m));
        if (file_exists(file_join(path, sizeof path, o->model, "tokenizer.json")))
            snprintf(tr->tokenizer_path, sizeof tr->tokenizer_path, "%s", path);
        return SK_OK;
    }
    if (!model_preset_exists(o->model))
        return sk_fail(SK_EARG, "train: --model %s is neither a model folder nor a preset", o->model);
    int vocab = 0;
    if (tr->tokenizer_path[0]) {
        tok *t;
        SK_TRY(tok_load(tr->tokenizer_path, &t));
        vocab = tok_vocab_size(t);
        tok_free(t);
    }
    model_config cfg;
    SK_TRY(model_preset(o->model, vocab, &cfg));
    SK_TRY(model_create(&cfg, tr->be, &tr->m));
    model_init_weights(tr->m, o->seed);
    return SK_OK;
}

/* Opens log.jsonl: fresh, or on resume keeping only the lines of steps already taken. */
static sk_status open_log(trainer *tr, bool resumed) {
    char path[4096];
    file_join(path, sizeof path, tr->o->out, "log.jsonl");
    if (resumed && file_exists(path)) {
        char *text;
        size_t n;
        SK_TRY(file_read_all(path, &text, &n));
        /* The lines up to the checkpoint's step, compacted in place and swapped in atomically:
         * a run killed now (or while writing) keeps its whole history. */
        size_t k = 0;
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            long step = 0;
            size_t len = strlen(line);
            if (sscanf(line, "{\"step\": %ld", &step) == 1 && step <= tr->st.step) {
                memmove(text + k, line, len);
                k += len;
                text[k++] = '\n';
            }
        }
        sk_status st = file_write_atomic(path, text, k);
        mem_free(text);
        SK_TRY(st);
        if (!(tr->log = fopen(path, "a"))) return sk_fail(SK_EIO, "cannot append to %s", path);
        return SK_OK;
    }
    tr->log = fopen(path, "w");
    if (!tr->log) return sk_fail(SK_EIO, "cannot create %s", path);
    return SK_OK;
}

/* Checks n samples of the input buffers against the vocabulary. */
static sk_status check_tokens(trainer *tr, long n) {
    const int V = tr->m->cfg.vocab_size;
    const long T = tr->o->seq;
    for (long i = 0; i < n * T; i++)
        if (tr->inputs[i] < 0 || tr->inputs[i] >= V || tr->targets[i] < 0 || tr->targets[i] >= V)
            return sk_fail(SK_EFORMAT, "%s: token id %d is outside the model's vocabulary of %d", tr->o->data,
                           tr->inputs[i] >= V || tr->inputs[i] < 0 ? tr->inputs[i] : tr->targets[i], V);
    return SK_OK;
}

/* Fills n samples from the loader's cursor (evaluation). */
static sk_status next_batch(trainer *tr, data_loader *dl, int n) {
    data_loader_next(dl, n, tr->inputs, tr->targets);
    return check_tokens(tr, n);
}

/* Mean validation loss over eval_batches evaluation batches from the start of the split. An
 * evaluation batch is the micro-batch, or under --micro-batch auto (whose pick depends on the
 * world size and the memory) the global batch, run in pieces of the micro-batch: the same
 * flags evaluate the same samples at any world size. */
static sk_status evaluate(trainer *tr, double *val_loss) {
    const train_opts *o = tr->o;
    uint64_t epoch;
    size_t index;
    data_loader_get_pos(tr->val_dl, &epoch, &index);
    SK_TRY(data_loader_set_pos(tr->val_dl, 0, 0));
    long unit = o->micro_auto ? o->batch : tr->micro_batch, batches = o->eval_batches;
    size_t avail = data_loader_num_samples(tr->val_dl);
    if ((size_t)unit > avail) unit = (long)avail;
    if ((size_t)(batches * unit) > avail) batches = (long)(avail / (size_t)unit);
    const long total = batches * unit;
    const bool dropout = tr->m->dropout;
    tr->m->dropout = false;   /* evaluation runs the model as inference does */
    sk_status st = SK_OK;
    double sum = 0;
    for (long done = 0, n; done < total && st == SK_OK; done += n) {
        n = total - done < tr->micro_batch ? total - done : tr->micro_batch;
        if ((st = next_batch(tr, tr->val_dl, (int)n)) == SK_OK)
            sum += (double)model_forward(tr->m, tr->inputs, tr->targets, (int)n, (int)o->seq) * (double)n;
    }
    tr->m->dropout = dropout;
    SK_TRY(st);
    SK_TRY(data_loader_set_pos(tr->val_dl, epoch, index));
    *val_loss = sum / (double)total;
    return SK_OK;
}

/* Sums a flag over the ranks: returns local when it failed, SK_ECOMM when another rank did,
 * so every rank leaves a collective phase (a checkpoint) together. */
static sk_status agree(trainer *tr, sk_status local, const char *what) {
    if (!tr->c || tr->world == 1) return local;
    double failed = local != SK_OK;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", sk_errmsg());
    sk_status st = comm_all_reduce_f64(tr->c, &failed, 1);
    if (st != SK_OK) return st;
    if (local != SK_OK) return sk_fail(local, "%s", msg);
    if (failed > 0) return sk_fail(SK_ECOMM, "%s failed on another rank", what);
    return SK_OK;
}

/* train_fill_fn: reads samples [first, first+n) of the step from the epoch's order into the
 * input buffers and checks them against the vocabulary. */
static sk_status fill_micro(void *ctx, long first, long n, const int **inputs, const int **targets) {
    trainer *tr = ctx;
    const train_opts *o = tr->o;
    const long T = o->seq;
    for (long j = 0; j < n; j++) {
        uint64_t p = tr->pos + (uint64_t)(first + j);
        data_loader_sample(tr->train_dl, p / tr->n_samples, p % tr->n_samples, tr->inputs + j * T, tr->targets + j * T);
        if (tr->sample_log)
            fprintf(tr->sample_log, "%llu %llu\n", (unsigned long long)(p / tr->n_samples),
                    (unsigned long long)(p % tr->n_samples));
    }
    SK_TRY(check_tokens(tr, n));
    if (tr->rank == o->slow_rank && o->slow_ms > 0) {   /* debug: a slow rank, before each of its micro-batches */
        struct timespec ts = {o->slow_ms / 1000, (o->slow_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    *inputs = tr->inputs;
    *targets = tr->targets;
    return SK_OK;
}

/* Collective: rank 0 writes the consolidated (whole, unsharded) model into dir, a checkpoint's
 * (with the tokenizer) or the final one: gathered over the ZeRO-3 shards (or the offloaded
 * masters) and, under tensor parallelism, over the shares of data-parallel rank 0's group
 * (tp_train_gather). */
static sk_status write_consolidated(trainer *tr, const char *dir, bool checkpoint) {
    float *full = NULL;
    model *whole = NULL;
    sk_status st = SK_OK;
    const bool gather = !zero_full_params(tr->z) || tr->g.K > 1;
    if (tr->g.dp_rank == 0 && gather && !(full = mem_alloc(tr->m->n_params * sizeof(float)))) st = SK_ENOMEM;
    SK_TRY(agree(tr, st, "allocating the consolidated model"));
    st = zero_gather_params(tr->z, full);
    if (st == SK_OK && tr->g.K > 1 && tr->g.dp_rank == 0) st = tp_train_gather(tr->m, full, &whole);
    if (st == SK_OK && tr->rank == 0) {
        /* full is host memory, which the model's backend may not read: it goes as host_params;
         * the whole model of a TP group holds its parameters on its backend */
        const model *m = whole ? whole : tr->m;
        const float *host = whole ? NULL : full;
        const char *tokenizer = tr->tokenizer_path[0] ? tr->tokenizer_path : NULL;
        st = checkpoint ? ckpt_write_model(dir, m, host, tokenizer) : host ? model_save_host(m, host, dir) : model_save(m, dir);
    }
    model_free(whole);
    mem_free(full);
    return agree(tr, st, checkpoint ? "writing the checkpoint's model" : "writing the final model");
}

/* Writes checkpoint-<step>: every rank its optimizer shard, rank 0 the consolidated model and
 * the state, renamed once every rank's part is known to be written. */
static sk_status save_checkpoint(trainer *tr) {
    const train_opts *o = tr->o;
    char tmp[4096];
    ckpt_tmp_path(o->out, tr->st.step, tmp, sizeof tmp);
    sk_status st = tr->rank == 0 ? ckpt_begin(o->out, tr->st.step) : SK_OK;
    SK_TRY(agree(tr, st, "creating the checkpoint folder"));
    st = zero_save_opt(tr->z, tmp);
    SK_TRY(agree(tr, st, "writing an optimizer shard"));
    SK_TRY(write_consolidated(tr, tmp, true));
    st = tr->rank == 0 ? ckpt_commit(o->out, &tr->st, (int)o->keep_checkpoints) : SK_OK;
    /* The tokenizer is copied from the checkpoint just committed from now on: after --resume
     * it came from a checkpoint that pruning (--keep-checkpoints) deletes. */
    if (st == SK_OK && tr->rank == 0 && tr->tokenizer_path[0])
        snprintf(tr->tokenizer_path, sizeof tr->tokenizer_path, "%s/checkpoint-%ld/tokenizer.json", o->out, tr->st.step);
    return agree(tr, st, "committing the checkpoint");
}

static sk_status save_final(trainer *tr) {
    char path[4096];
    SK_TRY(write_consolidated(tr, tr->o->out, false));
    if (tr->rank != 0) return SK_OK;
    if (tr->tokenizer_path[0])
        SK_TRY(ckpt_copy_file(tr->tokenizer_path, file_join(path, sizeof path, tr->o->out, "tokenizer.json")));
    char log_path[4096];
    file_join(log_path, sizeof log_path, tr->o->out, "log.jsonl");
    return plot_loss_svg(log_path, file_join(path, sizeof path, tr->o->out, "loss.svg"));
}

/* Fields of the memory report, in the order ranks send them. */
enum { MEM_PARAMS, MEM_GRADS, MEM_OPT, MEM_BUCKETS, MEM_GATHERED, MEM_STAGING, MEM_SCRATCH, MEM_ACTS, MEM_TOTAL, MEM_TRANSIENT,
       MEM_PEAK_PLAN, MEM_BASELINE, MEM_MEASURED, MEM_HOST_PINNED, MEM_RSS_PEAK, MEM_N };

/* Collects every rank's plan (and, when measured, what it holds) on every rank. */
static sk_status gather_memory(trainer *tr, bool measured, double *all) {
    const zero_mem *p = &tr->mem;
    memset(all, 0, sizeof(double) * (size_t)(MEM_N * tr->world));
    double *me = all + MEM_N * tr->rank;
    me[MEM_PARAMS] = (double)p->params;
    me[MEM_GRADS] = (double)p->grads;
    me[MEM_OPT] = (double)p->optimizer;
    me[MEM_BUCKETS] = (double)p->buckets;
    me[MEM_GATHERED] = (double)p->gathered;
    me[MEM_STAGING] = (double)p->staging;
    me[MEM_SCRATCH] = (double)p->comm_scratch;
    me[MEM_ACTS] = (double)p->activations;
    me[MEM_TOTAL] = (double)p->total;
    me[MEM_TRANSIENT] = (double)p->load_transient;
    me[MEM_PEAK_PLAN] = (double)p->peak;
    me[MEM_BASELINE] = (double)tr->baseline_rss;
    me[MEM_MEASURED] = measured ? (double)zero_held_bytes(tr->be, tr->dev_free0) : 0;
    me[MEM_HOST_PINNED] = (double)p->host_pinned;
    me[MEM_RSS_PEAK] = (double)zero_proc_bytes(true);
    if (tr->c && tr->world > 1) return comm_all_reduce_f64(tr->c, all, (size_t)(MEM_N * tr->world));
    return SK_OK;
}

/* Rank 0: one line per rank on stderr (at start). */
static void print_memory(trainer *tr, const double *all) {
    const double MB = 1048576.0;
    log_info("memory per rank (ZeRO-%d, %d rank%s, %s data, %zu parameters, MiB): model states = parameters + "
             "gradients + optimizer; buffers listed apart%s", tr->o->zero, tr->world, tr->world > 1 ? "s" : "",
             tr->o->dynamic ? "dynamic" : "static", tr->m->n_params,
             tr->o->zero == 2 && tr->o->dynamic ? "; dynamic data: ZeRO-2 holds a full local gradient during the step" : "");
    const int sharers = comm_device_sharers(tr->c, backend_device_count(tr->be->name));
    if (tr->dev_free0 && sharers > 1)
        log_info("  %d ranks share each GPU: the memory a rank measures as taken is theirs together", sharers);
    for (int r = 0; r < tr->world; r++) {
        const double *v = all + MEM_N * r;
        log_info("  rank %d: params %.2f + grads %.2f + optimizer %.2f | buckets %.2f, gathered %.2f, staging %.2f, "
                 "comm scratch %.2f, activations %.2f | total %.2f%s", r, v[MEM_PARAMS] / MB, v[MEM_GRADS] / MB, v[MEM_OPT] / MB,
                 v[MEM_BUCKETS] / MB, v[MEM_GATHERED] / MB, v[MEM_STAGING] / MB, v[MEM_SCRATCH] / MB, v[MEM_ACTS] / MB, v[MEM_TOTAL] / MB,
                 v[MEM_TRANSIENT] > 0 ? " (+ full parameters while sharding at start)" : "");
        if (tr->o->offload)
            log_info("  rank %d: host: %.2f MiB pinned for the offloaded optimizer (master weights, moments, staging), "
                     "process peak resident %.2f MiB", r, v[MEM_HOST_PINNED] / MB, v[MEM_RSS_PEAK] / MB);
        if (tr->dev_free0 && v[MEM_MEASURED] > 0)
            log_info("  rank %d: %s memory taken since start %.2f MiB (the device's free memory before and now), "
                     "%.1f%% of the plan's total", r, tr->be->name, v[MEM_MEASURED] / MB,
                     100.0 * v[MEM_MEASURED] / v[MEM_TOTAL]);
    }
}

/* Rank 0: OUT/memory.json with every rank's plan, the paper's formulas and the measured peaks. */
static sk_status write_memory_json(trainer *tr, const double *all) {
    static const char *const names[MEM_N] = {"params", "grads", "optimizer", "buckets", "gathered", "staging",
                                             "comm_scratch", "activations", "total", "load_transient", "peak_plan",
                                             "baseline_rss", "measured_peak", "host_pinned", "host_peak_rss"};
    char path[4096];
    file_join(path, sizeof path, tr->o->out, "memory.json");
    FILE *f = fopen(path, "w");
    if (!f) return sk_fail(SK_EIO, "cannot create %s", path);
    double formula[3];
    zero_formula(tr->o->zero, tr->world, 4, (double)tr->m->n_params, formula);
    fprintf(f, "{\"world_size\": %d, \"zero\": %d, \"data_dist\": \"%s\", \"n_params\": %zu, \"micro_batch\": %ld, "
               "\"dtype\": \"%s\", \"formula\": {\"params\": %.9g, \"grads\": %.9g, \"optimizer\": %.9g}, "
               "\"full_local_grads\": %s, \"offload\": %s, \"ranks\": [",
            tr->world, tr->o->zero, tr->o->dynamic ? "dynamic" : "static", tr->m->n_params, tr->micro_batch,
            tr->m->act_dt == DT_BF16 ? "bf16 mixed (f32 master)" : "f32", formula[0], formula[1], formula[2], tr->o->zero == 2 && tr->o->dynamic ? "true" : "false",
            tr->o->offload ? "\"optimizer\"" : "null");
    for (int r = 0; r < tr->world; r++) {
        fprintf(f, "%s{\"rank\": %d", r ? ", " : "", r);
        for (int k = 0; k < MEM_N; k++) fprintf(f, ", \"%s\": %.0f", names[k], all[MEM_N * r + k]);
        fprintf(f, "}");
    }
    fprintf(f, "]}\n");
    return fclose(f) == 0 ? SK_OK : sk_fail(SK_EIO, "cannot write %s", path);
}

static sk_status train_loop(trainer *tr) {
    const train_opts *o = tr->o;
    progress prog;
    progress_init(&prog, 10.0);
    const double t_start = time_now();
    const long first_step = tr->st.step;
    const bool lead = tr->rank == 0;
    double *mem_all = mem_alloc(sizeof(double) * (size_t)(MEM_N * tr->world));
    if (!mem_all) return SK_ENOMEM;
    sk_status st = SK_OK;
    while (tr->st.step < o->steps) {
        const double t0 = time_now();
        const float lr = opt_lr_at(&o->hp, tr->st.step);
        double loss = 0, grad_norm = 0, val_loss = NAN;
        const uint64_t dropout_seed = tr->m->dropout ? rng_u64(&tr->st.rng) : 0;
        const double tp_comm0 = tr->m->tp.comm_s;   /* tensor parallel: this rank's seconds in its collectives */
        if ((st = train_step_run(&tr->step, &o->hp, lr, dropout_seed, &loss, &grad_norm))) break;
        const double tp_comm_ms = 1e3 * (tr->m->tp.comm_s - tp_comm0);
        tr->st.step++;
        tr->pos += (uint64_t)o->batch;
        const long step = tr->st.step;
        const double ms = 1e3 * (time_now() - t0);
        const double tps = (double)o->batch * (double)o->seq / (ms / 1e3);
        if (!tr->memory_written) {
            /* the measured peak after the first step: every buffer has been touched */
            if ((st = gather_memory(tr, true, mem_all))) break;
            if (lead && (st = write_memory_json(tr, mem_all))) break;
            tr->memory_written = true;
        }
        if (tr->val_dl && o->eval_every > 0 && (step % o->eval_every == 0 || step == o->steps))
            if ((st = evaluate(tr, &val_loss))) break;
        tr->st.epoch = tr->pos / tr->n_samples;
        tr->st.sample_index = tr->pos % tr->n_samples;
        const double *stats = tr->step.stats;
        if (lead) {
            fprintf(tr->log,
                    "{\"step\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"ms\": %.9g, "
                    "\"tokens_per_s\": %.9g, \"world_size\": %d, \"zero\": %d, \"data_dist\": \"%s\", \"epoch\": %llu",
                    step, loss, (double)lr, grad_norm, ms, tps, tr->world, o->zero, o->dynamic ? "dynamic" : "static",
                    (unsigned long long)tr->st.epoch);
            if (tr->g.K > 1) fprintf(tr->log, ", \"tp\": %d, \"tp_comm_ms\": %.9g", tr->g.K, tp_comm_ms);
            if (!isnan(val_loss)) fprintf(tr->log, ", \"val_loss\": %.9g", val_loss);
            fprintf(tr->log, ", \"workers\": [");   /* the step's ranks: data parallel ones under --tp */
            for (int r = 0; r < tr->step.world; r++) {
                const double *w = stats + 1 + TRAIN_STAT_N * r;
                fprintf(tr->log, "%s{\"rank\": %d, \"micro_batches\": %.0f, \"tokens\": %.0f, \"share\": %.9g, "
                                 "\"wait_ms\": %.9g}", r ? ", " : "", r, w[TRAIN_STAT_MB], w[TRAIN_STAT_TOKENS],
                        w[TRAIN_STAT_TOKENS] / ((double)o->batch * (double)o->seq), w[TRAIN_STAT_WAIT]);
            }
            fprintf(tr->log, "]}\n");
            fflush(tr->log);
        }
        if (lead && !o->quiet) {
            char eta[32], val[48] = "", shares[160] = "";
            double per_step = (time_now() - t_start) / (double)(step - first_step);
            if (!isnan(val_loss)) snprintf(val, sizeof val, " | val %.4f", val_loss);
            if (tr->step.world > 1 || o->dynamic) {
                size_t k = (size_t)snprintf(shares, sizeof shares, " | mb/share/wait");
                for (int r = 0; r < tr->step.world && k < sizeof shares; r++) {
                    const double *w = stats + 1 + TRAIN_STAT_N * r;
                    k += (size_t)snprintf(shares + k, sizeof shares - k, " r%d %.0f/%.0f%%/%.0fms", r, w[TRAIN_STAT_MB],
                                          100.0 * w[TRAIN_STAT_TOKENS] / ((double)o->batch * (double)o->seq), w[TRAIN_STAT_WAIT]);
                }
            }
            progress_show(&prog, step == o->steps || step == o->stop_after || !isnan(val_loss),
                          "step %ld/%ld | loss %.4f%s | lr %.2e | %.0f tok/s%s | ETA %s", step, o->steps, loss, val,
                          (double)lr, tps, shares, progress_duration(eta, sizeof eta, per_step * (double)(o->steps - step)));
        }
        bool stop = step == o->stop_after && step < o->steps;
        if ((o->save_every > 0 && step % o->save_every == 0) || stop || step == o->steps)
            if ((st = save_checkpoint(tr))) break;
        if (tr->rank == o->kill_rank && step == o->kill_step) {
            if (tr->sample_log) fflush(tr->sample_log);
            raise(SIGKILL);   /* debug: a rank lost without warning */
        }
        if (stop) {
            if (lead && !o->quiet) progress_done(&prog);
            if (lead) log_info("stopped after step %ld; continue with --resume", step);
            mem_free(mem_all);
            return SK_OK;
        }
    }
    mem_free(mem_all);
    if (st) return st;
    if (lead && !o->quiet) progress_done(&prog);
    if (lead && o->offload)
        log_info("host memory (rank 0): %.2f MiB pinned for the offloaded optimizer, process peak resident %.2f MiB",
                 (double)zero_pinned_bytes(tr->z) / 1048576.0, (double)zero_proc_bytes(true) / 1048576.0);
    return save_final(tr);
}

/* This rank's device plan for micro-batch mb (zero_plan, turned into the offload's). */
static void plan_memory(const trainer *tr, long mb, zero_mem *p) {
    zero_plan(tr->m, tr->g.dp_world, tr->o->zero, tr->o->dynamic, 4, (int)mb, (int)tr->o->seq, p);
    if (tr->o->offload) zero_plan_offload(tr->m, tr->g.dp_world, p);
}

/* Bytes a rank may plan for: --mem-limit, else on a device zero_device_budget of its free
 * memory before the model (split among the ranks that share the device), else the host's
 * available memory shared by the ranks (all assumed on this host). */
static size_t memory_budget(const trainer *tr) {
    if (tr->o->mem_limit) return tr->o->mem_limit;
    if (tr->dev_free0)   /* ranks that share a GPU share its memory */
        return zero_device_budget(tr->dev_free0) / (size_t)comm_device_sharers(tr->c, backend_device_count(tr->be->name));
    size_t avail = mem_available();
    return avail == SIZE_MAX ? SIZE_MAX : avail / (size_t)tr->world;
}

/* --micro-batch auto: the largest micro-batch (at most a rank's share of the batch) whose
 * plan fits the budget. */
static sk_status pick_micro_batch(trainer *tr) {
    const train_opts *o = tr->o;
    if (!o->micro_auto) {
        /* A plan beyond the host's memory would be granted by overcommit and the rank killed
         * while filling it: refused up front (the plan undercounts, so nothing that fits is). */
        tr->micro_batch = o->micro_batch > 0 ? o->micro_batch : o->batch;
        const size_t budget = memory_budget(tr);
        zero_mem p;
        plan_memory(tr, tr->micro_batch, &p);
        if (p.peak > budget)
            return sk_fail(SK_ENOMEM, "train: a micro-batch of %ld x %ld tokens needs %.1f MiB per rank at ZeRO-%d, "
                           "beyond the %.1f MiB%s; lower --micro-batch, --batch or --seq, or use --micro-batch auto",
                           tr->micro_batch, o->seq, (double)p.peak / 1048576.0, o->zero, (double)budget / 1048576.0,
                           o->mem_limit ? " of --mem-limit" : " available");
        return SK_OK;
    }
    if (!tr->m->arch->train_bytes)
        return sk_fail(SK_EARG, "train: --micro-batch auto: the %s architecture has no memory plan", tr->m->arch->name);
    const size_t budget = memory_budget(tr);
    long most = o->dynamic ? o->batch : (o->batch + tr->g.dp_world - 1) / tr->g.dp_world;
    zero_mem p;
    for (long mb = most; mb >= 1; mb--) {
        plan_memory(tr, mb, &p);
        if (p.peak <= budget) {
            tr->micro_batch = mb;
            if (tr->rank == 0)
                log_info("--micro-batch auto: %ld (plan %.1f MiB of a %.1f MiB budget per rank)", mb,
                         (double)p.peak / 1048576.0, (double)budget / 1048576.0);
            return SK_OK;
        }
    }
    return sk_fail(SK_ENOMEM, "train: --micro-batch auto: even a micro-batch of 1 needs %zu bytes per rank at ZeRO-%d "
                              "(%zu of them model states), beyond the budget of %zu bytes%s", p.peak, o->zero,
                   p.params + p.grads + p.optimizer, budget, o->mem_limit ? " (--mem-limit)" : " (available memory)");
}

sk_status train_run(const train_opts *o) {
    SK_TRY(check_opts(o));
    trainer tr = {.o = o};
    sk_status st = SK_OK;
    bool resumed = false;
    tr.c = o->comm;
    tr.rank = tr.c ? tr.c->rank : 0;
    tr.world = tr.c ? tr.c->world : 1;
    tr.baseline_rss = zero_proc_bytes(false);
    tr.st.total_steps = o->steps;
    tr.st.seed = o->seed;
    tr.st.batch = o->batch;
    tr.st.seq = o->seq;
    rng_seed(&tr.st.rng, o->seed ^ 0x5eedf00dull);
    if (o->zero == 3 && o->dynamic)
        return sk_fail(SK_EARG, "train: --zero 3 with --data-dist dynamic is not supported: ZeRO-3 gathers each layer "
                                "with every rank at every micro-batch, while dynamic distribution gives ranks different "
                                "numbers of micro-batches; use --zero 2 (or below) or --data-dist static");
    if (o->tp > 1 && o->dynamic)
        return sk_fail(SK_EARG, "train: --tp %d with --data-dist dynamic is not supported: the ranks of a tensor-parallel "
                                "group must run the same micro-batches", o->tp);
    if ((st = tpdp_init(tr.c, o->tp, &tr.g))) return st;

    if (!(tr.be = backend_create_on(o->device, tr.c ? tr.c->local_rank : 0))) return SK_EARG;
    if (!tr.be->host_memory && (st = backend_mem_info(tr.be, &tr.dev_free0, NULL))) goto done;
    if (tr.rank == 0 && (st = file_mkdirs(o->out))) goto done;
    if ((st = agree(&tr, st, "creating --out"))) goto done;
    if ((st = load_model(&tr, &resumed))) goto done;
    if (tr.g.K > 1) {   /* this rank's share of the whole model it loaded (tp_train.h) */
        model *share;
        if ((st = tp_train_check(&tr.m->cfg, tr.g.K, o->dropout, o->precision)) ||
            (st = tp_train_split(tr.m, tr.g.tp, &share)))
            goto done;
        model_free(tr.m);
        tr.m = share;
    }
    tr.st.total_steps = o->steps;
    tr.st.world_size = tr.world;
    tr.st.zero = o->zero;
    tr.st.dynamic = o->dynamic;
    if (o->seq > tr.m->cfg.n_positions) {
        st = sk_fail(SK_EARG, "train: --seq %ld exceeds the model's context of %d", o->seq, tr.m->cfg.n_positions);
        goto done;
    }
    tr.m->dropout = o->dropout;
    if ((st = model_set_precision(tr.m, o->precision))) goto done;
    tr.m->recompute = o->recompute;
    if ((st = data_loader_open(o->data, "train", (int)o->seq, o->seed, &tr.train_dl))) goto done;
    tr.n_samples = data_loader_num_samples(tr.train_dl);
    if (resumed) {
        if ((st = data_loader_set_pos(tr.train_dl, tr.st.epoch, tr.st.sample_index))) goto done;
        tr.pos = tr.st.epoch * tr.n_samples + tr.st.sample_index;
    }
    if (data_loader_vocab_size(tr.train_dl) > tr.m->cfg.vocab_size) {
        st = sk_fail(SK_EFORMAT, "train: %s was tokenized with a vocabulary of %d, larger than the model's %d", o->data,
                     data_loader_vocab_size(tr.train_dl), tr.m->cfg.vocab_size);
        goto done;
    }
    if (o->eval_every > 0 && file_is_dir(o->data) &&
        data_loader_open(o->data, "val", (int)o->seq, o->seed, &tr.val_dl) != SK_OK) {
        if (tr.rank == 0) log_warn("no usable validation split in %s: %s", o->data, sk_errmsg());
        tr.val_dl = NULL;
    }
    if ((st = pick_micro_batch(&tr))) goto done;
    plan_memory(&tr, tr.micro_batch, &tr.mem);
    if ((st = zero_init(tr.m, tr.g.dp, o->zero, o->dynamic, o->offload, &tr.z))) goto done;
    if (resumed) {
        char ckpt[4096];
        ckpt_find_latest(o->out, ckpt, sizeof ckpt);
        if ((st = zero_load_opt(tr.z, ckpt))) goto done;
    }
    if ((st = model_train_prepare(tr.m, (int)tr.micro_batch, (int)o->seq))) goto done;
    tr.inputs = mem_alloc(sizeof(int) * (size_t)(tr.micro_batch * o->seq));
    tr.targets = mem_alloc(sizeof(int) * (size_t)(tr.micro_batch * o->seq));
    if (!tr.inputs || !tr.targets) { st = SK_ENOMEM; goto done; }
    tr.step = (train_step){.m = tr.m, .z = tr.z, .c = tr.g.dp, .batch = o->batch, .micro_batch = tr.micro_batch,
                           .seq = o->seq, .dynamic = o->dynamic, .fill = fill_micro, .fill_ctx = &tr};
    if ((st = train_step_init(&tr.step))) goto done;
    if (o->sample_log) {
        char path[4096], name[64];
        snprintf(name, sizeof name, "samples-rank%d.txt", tr.rank);
        if (!(tr.sample_log = fopen(file_join(path, sizeof path, o->out, name), resumed ? "a" : "w"))) {
            st = sk_fail(SK_EIO, "cannot create %s", path);
            goto done;
        }
    }
    if (tr.rank == 0 && (st = open_log(&tr, resumed))) goto done;
    {
        double *all = mem_alloc(sizeof(double) * (size_t)(MEM_N * tr.world));
        if (!all) { st = SK_ENOMEM; goto done; }
        st = gather_memory(&tr, tr.dev_free0 > 0, all);   /* a device's use is known once allocated */
        if (st == SK_OK && tr.rank == 0) print_memory(&tr, all);
        mem_free(all);
        if (st) goto done;
    }
    if (tr.rank == 0)
        log_info("training %s: %zu parameters, %ld steps of %ld x %ld tokens (micro-batch %ld) on %s, %d rank%s%s, "
                 "ZeRO-%d%s, %s data%s", tr.m->arch->name, tr.m->n_params, o->steps, o->batch, o->seq, tr.micro_batch,
                 tr.be->name, tr.world, tr.world > 1 ? "s over " : "", tr.world > 1 ? o->comm->name : "",
                 o->zero, o->offload ? " with the optimizer offloaded to the host" : "", o->dynamic ? "dynamic" : "static",
                 tr.g.K > 1 ? ", tensor parallel in groups of consecutive ranks (parameters: this rank's share)" : "");
    st = train_loop(&tr);
done:
    if (tr.log) fclose(tr.log);
    if (tr.sample_log) fclose(tr.sample_log);
    mem_free(tr.inputs);
    mem_free(tr.targets);
    train_step_free(&tr.step);
    zero_free(tr.z);
    data_loader_free(tr.train_dl);
    data_loader_free(tr.val_dl);
    model_free(tr.m);
    tpdp_free(&tr.g);
    backend_free(tr.be);
    return st;
}
