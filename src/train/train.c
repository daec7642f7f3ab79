/* train: the single-process training loop (see train.h). */
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/file.h"
#include "base/progress.h"
#include "data/data.h"
#include "model/presets.h"
#include "tokenizer/tok.h"
#include "train/ckpt.h"
#include "train/plot.h"

typedef struct trainer {
    const train_opts *o;
    backend *be;
    model *m;
    adamw opt;
    data_loader *train_dl, *val_dl;
    char tokenizer_path[4096];   /* empty when the run has no tokenizer.json */
    int *inputs, *targets;       /* (micro_batch, seq) host buffers */
    FILE *log;
    ckpt_state st;
    long micro_batch;
} trainer;

void train_opts_default(train_opts *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
    o->steps = 100;
    o->batch = 8;
    o->seq = 256;
    o->eval_batches = 8;
    o->keep_checkpoints = 3;
    o->seed = 1337;
    opt_hparams_default(&o->hp);
}

static sk_status check_opts(const train_opts *o) {
    if (!o->model) return sk_fail(SK_EARG, "train: --model is required (a model folder or a preset name)");
    if (!o->data) return sk_fail(SK_EARG, "train: --data is required");
    if (!o->out) return sk_fail(SK_EARG, "train: --out is required");
    if (o->steps <= 0) return sk_fail(SK_EARG, "train: --steps must be positive, got %ld", o->steps);
    if (o->stop_after < 0 || o->stop_after > o->steps)
        return sk_fail(SK_EARG, "train: --stop-after must be between 1 and --steps (%ld), got %ld", o->steps, o->stop_after);
    if (o->batch <= 0) return sk_fail(SK_EARG, "train: --batch must be positive, got %ld", o->batch);
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
        FILE *f = fopen(path, "w");
        if (!f) { mem_free(text); return sk_fail(SK_EIO, "cannot rewrite %s", path); }
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            long step = 0;
            if (sscanf(line, "{\"step\": %ld", &step) == 1 && step <= tr->st.step) fprintf(f, "%s\n", line);
        }
        mem_free(text);
        tr->log = f;
        return SK_OK;
    }
    tr->log = fopen(path, "w");
    if (!tr->log) return sk_fail(SK_EIO, "cannot create %s", path);
    return SK_OK;
}

/* Fills n samples from the loader and checks every token against the vocabulary. */
static sk_status next_batch(trainer *tr, data_loader *dl, int n) {
    const int V = tr->m->cfg.vocab_size;
    const long T = tr->o->seq;
    data_loader_next(dl, n, tr->inputs, tr->targets);
    for (long i = 0; i < n * T; i++)
        if (tr->inputs[i] < 0 || tr->inputs[i] >= V || tr->targets[i] < 0 || tr->targets[i] >= V)
            return sk_fail(SK_EFORMAT, "%s: token id %d is outside the model's vocabulary of %d", tr->o->data,
                           tr->inputs[i] >= V || tr->inputs[i] < 0 ? tr->inputs[i] : tr->targets[i], V);
    return SK_OK;
}

/* Mean validation loss over eval_batches micro-batches from the start of the split. */
static sk_status evaluate(trainer *tr, double *val_loss) {
    uint64_t epoch;
    size_t index;
    data_loader_get_pos(tr->val_dl, &epoch, &index);
    SK_TRY(data_loader_set_pos(tr->val_dl, 0, 0));
    double sum = 0;
    long batches = tr->o->eval_batches, n = tr->micro_batch;
    size_t avail = data_loader_num_samples(tr->val_dl);
    if ((size_t)n > avail) n = (long)avail;
    if ((size_t)(batches * n) > avail) batches = (long)(avail / (size_t)n);
    for (long b = 0; b < batches; b++) {
        SK_TRY(next_batch(tr, tr->val_dl, (int)n));
        sum += model_forward(tr->m, tr->inputs, tr->targets, (int)n, (int)tr->o->seq);
    }
    SK_TRY(data_loader_set_pos(tr->val_dl, epoch, index));
    *val_loss = sum / (double)batches;
    return SK_OK;
}

/* One optimizer step: accumulate micro-batches, clip, AdamW. Writes the mean loss and the
 * gradient norm before clipping. */
static sk_status train_step(trainer *tr, float lr, double *loss, double *grad_norm) {
    const train_opts *o = tr->o;
    model *m = tr->m;
    const double tokens = (double)o->batch * (double)o->seq;
    model_zero_grad(m);
    double sum = 0;
    for (long done = 0; done < o->batch;) {
        int n = (int)(o->batch - done < tr->micro_batch ? o->batch - done : tr->micro_batch);
        SK_TRY(next_batch(tr, tr->train_dl, n));
        if (m->dropout) m->dropout_seed = rng_u64(&tr->st.rng);
        float l = model_forward(m, tr->inputs, tr->targets, n, (int)o->seq);
        model_backward(m, (float)(1.0 / tokens));
        sum += (double)l * n * (double)o->seq;
        done += n;
    }
    *loss = sum / tokens;
    if (!isfinite(*loss))
        return sk_fail(SK_ESTATE, "train: the loss became %g at step %ld; try a lower --lr", *loss, tr->st.step + 1);
    *grad_norm = sqrt(m->be->ops->sum_squares(m->be, m->grads, m->n_params));
    float scale = 1.0f;
    if (o->hp.grad_clip > 0 && *grad_norm > o->hp.grad_clip) scale = (float)(o->hp.grad_clip / (*grad_norm + 1e-6));
    adamw_step(&tr->opt, m, m->grads, &o->hp, lr, scale);
    return SK_OK;
}

static sk_status save_final(trainer *tr) {
    char path[4096];
    SK_TRY(model_save(tr->m, tr->o->out));
    if (tr->tokenizer_path[0])
        SK_TRY(ckpt_copy_file(tr->tokenizer_path, file_join(path, sizeof path, tr->o->out, "tokenizer.json")));
    char log_path[4096];
    file_join(log_path, sizeof log_path, tr->o->out, "log.jsonl");
    return plot_loss_svg(log_path, file_join(path, sizeof path, tr->o->out, "loss.svg"));
}

static sk_status train_loop(trainer *tr) {
    const train_opts *o = tr->o;
    progress prog;
    progress_init(&prog, 10.0);
    const double t_start = time_now();
    const long first_step = tr->st.step;
    while (tr->st.step < o->steps) {
        const double t0 = time_now();
        const float lr = opt_lr_at(&o->hp, tr->st.step);
        double loss = 0, grad_norm = 0, val_loss = NAN;
        SK_TRY(train_step(tr, lr, &loss, &grad_norm));
        tr->st.step++;
        const long step = tr->st.step;
        const double ms = 1e3 * (time_now() - t0);
        const double tps = (double)o->batch * (double)o->seq / (ms / 1e3);
        if (tr->val_dl && o->eval_every > 0 && (step % o->eval_every == 0 || step == o->steps))
            SK_TRY(evaluate(tr, &val_loss));
        data_loader_get_pos(tr->train_dl, &tr->st.epoch, &tr->st.sample_index);
        fprintf(tr->log,
                "{\"step\": %ld, \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"ms\": %.9g, "
                "\"tokens_per_s\": %.9g, \"world_size\": 1, \"zero\": 0, \"epoch\": %llu",
                step, loss, (double)lr, grad_norm, ms, tps, (unsigned long long)tr->st.epoch);
        if (!isnan(val_loss)) fprintf(tr->log, ", \"val_loss\": %.9g", val_loss);
        fprintf(tr->log, "}\n");
        fflush(tr->log);
        if (!o->quiet) {
            char eta[32], val[48] = "";
            double per_step = (time_now() - t_start) / (double)(step - first_step);
            if (!isnan(val_loss)) snprintf(val, sizeof val, " | val %.4f", val_loss);
            progress_show(&prog, step == o->steps || step == o->stop_after || !isnan(val_loss),
                          "step %ld/%ld | loss %.4f%s | lr %.2e | %.0f tok/s | ETA %s", step, o->steps, loss,
                          val, (double)lr, tps, progress_duration(eta, sizeof eta, per_step * (double)(o->steps - step)));
        }
        bool stop = step == o->stop_after && step < o->steps;
        if ((o->save_every > 0 && step % o->save_every == 0) || stop || step == o->steps) {
            SK_TRY(ckpt_save(o->out, tr->m, &tr->opt, &tr->st, tr->tokenizer_path[0] ? tr->tokenizer_path : NULL,
                             (int)o->keep_checkpoints));
        }
        if (stop) {
            if (!o->quiet) progress_done(&prog);
            log_info("stopped after step %ld; continue with --resume", step);
            return SK_OK;
        }
    }
    if (!o->quiet) progress_done(&prog);
    return save_final(tr);
}

sk_status train_run(const train_opts *o) {
    SK_TRY(check_opts(o));
    trainer tr = {.o = o};
    sk_status st = SK_OK;
    bool resumed = false;
    tr.st.total_steps = o->steps;
    tr.st.seed = o->seed;
    tr.st.batch = o->batch;
    tr.st.seq = o->seq;
    tr.st.world_size = 1;
    rng_seed(&tr.st.rng, o->seed ^ 0x5eedf00dull);
    tr.micro_batch = o->micro_batch > 0 ? o->micro_batch : o->batch;

    if (!(tr.be = backend_create(o->device))) return SK_EARG;
    if ((st = file_mkdirs(o->out))) goto done;
    if ((st = load_model(&tr, &resumed))) goto done;
    tr.st.total_steps = o->steps;
    if (o->seq > tr.m->cfg.n_positions) {
        st = sk_fail(SK_EARG, "train: --seq %ld exceeds the model's context of %d", o->seq, tr.m->cfg.n_positions);
        goto done;
    }
    tr.m->dropout = o->dropout;
    if ((st = data_loader_open(o->data, "train", (int)o->seq, o->seed, &tr.train_dl))) goto done;
    if (resumed && (st = data_loader_set_pos(tr.train_dl, tr.st.epoch, tr.st.sample_index))) goto done;
    if (data_loader_vocab_size(tr.train_dl) > tr.m->cfg.vocab_size) {
        st = sk_fail(SK_EFORMAT, "train: %s was tokenized with a vocabulary of %d, larger than the model's %d", o->data,
                     data_loader_vocab_size(tr.train_dl), tr.m->cfg.vocab_size);
        goto done;
    }
    if (o->eval_every > 0 && file_is_dir(o->data) &&
        data_loader_open(o->data, "val", (int)o->seq, o->seed, &tr.val_dl) != SK_OK) {
        log_warn("no usable validation split in %s: %s", o->data, sk_errmsg());
        tr.val_dl = NULL;
    }
    if ((st = adamw_init(&tr.opt, tr.be, 0, tr.m->n_params))) goto done;
    if (resumed) {
        char ckpt[4096], path[4096];
        ckpt_find_latest(o->out, ckpt, sizeof ckpt);
        if ((st = adamw_load(&tr.opt, tr.m->n_params, file_join(path, sizeof path, ckpt, "optimizer.bin")))) goto done;
    }
    if ((st = model_train_prepare(tr.m, (int)tr.micro_batch, (int)o->seq))) goto done;
    tr.inputs = mem_alloc(sizeof(int) * (size_t)(tr.micro_batch * o->seq));
    tr.targets = mem_alloc(sizeof(int) * (size_t)(tr.micro_batch * o->seq));
    if (!tr.inputs || !tr.targets) { st = SK_ENOMEM; goto done; }
    if ((st = open_log(&tr, resumed))) goto done;
    log_info("training %s: %zu parameters, %ld steps of %ld x %ld tokens (micro-batch %ld) on %s", tr.m->arch->name,
             tr.m->n_params, o->steps, o->batch, o->seq, tr.micro_batch, tr.be->name);
    st = train_loop(&tr);
done:
    if (tr.log) fclose(tr.log);
    mem_free(tr.inputs);
    mem_free(tr.targets);
    adamw_free(&tr.opt);
    data_loader_free(tr.train_dl);
    data_loader_free(tr.val_dl);
    model_free(tr.m);
    backend_free(tr.be);
    return st;
}
