/* ckpt: checkpoint folders written atomically, found, pruned and read (see ckpt.h). */
#include "train/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"

#define STATE_FORMAT "skein-train-state"
#define STATE_VERSION 1

sk_status ckpt_copy_file(const char *src, const char *dst) {
    char *buf;
    size_t n;
    SK_TRY(file_read_all(src, &buf, &n));
    sk_status st = file_write_atomic(dst, buf, n);
    mem_free(buf);
    return st;
}

static sk_status state_save(const ckpt_state *s, const char *path) {
    cJSON *j = cJSON_CreateObject();
    char num[32];
    cJSON_AddStringToObject(j, "format", STATE_FORMAT);
    cJSON_AddNumberToObject(j, "version", STATE_VERSION);
    cJSON_AddNumberToObject(j, "step", (double)s->step);
    cJSON_AddNumberToObject(j, "total_steps", (double)s->total_steps);
    cJSON_AddNumberToObject(j, "epoch", (double)s->epoch);
    cJSON_AddNumberToObject(j, "sample_index", (double)s->sample_index);
    snprintf(num, sizeof num, "%" PRIu64, s->seed);
    cJSON_AddStringToObject(j, "seed", num);
    cJSON_AddNumberToObject(j, "batch", (double)s->batch);
    cJSON_AddNumberToObject(j, "seq", (double)s->seq);
    cJSON_AddNumberToObject(j, "world_size", s->world_size);
    cJSON_AddNumberToObject(j, "zero", s->zero);
    cJSON_AddStringToObject(j, "data_dist", s->dynamic ? "dynamic" : "static");
    cJSON *r = cJSON_AddArrayToObject(j, "rng");
    for (int i = 0; i < 4; i++) {
        snprintf(num, sizeof num, "%" PRIu64, s->rng.s[i]);
        cJSON_AddItemToArray(r, cJSON_CreateString(num));
    }
    sk_status st = json_save_file(path, j);
    cJSON_Delete(j);
    return st;
}

static sk_status parse_u64(const cJSON *item, const char *what, const char *field, uint64_t *out) {
    char *end = NULL;
    if (!cJSON_IsString(item)) return sk_fail(SK_EFORMAT, "%s: field \"%s\" must be a decimal string", what, field);
    errno = 0;
    *out = strtoull(item->valuestring, &end, 10);
    if (errno || end == item->valuestring || *end)
        return sk_fail(SK_EFORMAT, "%s: field \"%s\" is not a number", what, field);
    return SK_OK;
}

sk_status ckpt_load_state(const char *ckpt_dir, ckpt_state *s) {
    char path[4096];
    file_join(path, sizeof path, ckpt_dir, "skein_state.json");
    cJSON *j;
    SK_TRY(json_load_file(path, &j));
    memset(s, 0, sizeof *s);
    const char *format = NULL;
    long version = 0, step = 0, total = 0, epoch = 0, index = 0, batch = 0, seq = 0, ws = 1, zero = 0;
    sk_status st;
    if ((st = json_get_string(j, "format", true, path, &format)) ||
        (st = json_get_int(j, "version", true, path, &version)) ||
        (st = json_get_int(j, "step", true, path, &step)) ||
        (st = json_get_int(j, "total_steps", true, path, &total)) ||
        (st = json_get_int(j, "epoch", true, path, &epoch)) ||
        (st = json_get_int(j, "sample_index", true, path, &index)) ||
        (st = json_get_int(j, "batch", true, path, &batch)) ||
        (st = json_get_int(j, "seq", true, path, &seq)) ||
        (st = json_get_int(j, "world_size", false, path, &ws)) ||
        (st = json_get_int(j, "zero", false, path, &zero)) ||
        (st = parse_u64(cJSON_GetObjectItem(j, "seed"), path, "seed", &s->seed)))
        goto done;
    if (strcmp(format, STATE_FORMAT) != 0 || version != STATE_VERSION) {
        st = sk_fail(SK_EFORMAT, "%s: not a skein training state of version %d", path, STATE_VERSION);
        goto done;
    }
    const cJSON *r = cJSON_GetObjectItem(j, "rng");
    if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 4) {
        st = sk_fail(SK_EFORMAT, "%s: field \"rng\" must be a list of 4 numbers", path);
        goto done;
    }
    for (int i = 0; i < 4; i++)
        if ((st = parse_u64(cJSON_GetArrayItem(r, i), path, "rng", &s->rng.s[i]))) goto done;
    if (step < 0 || total < step || epoch < 0 || index < 0 || batch <= 0 || seq <= 0) {
        st = sk_fail(SK_EFORMAT, "%s: inconsistent values (step %ld of %ld, batch %ld, seq %ld)", path, step,
                     total, batch, seq);
        goto done;
    }
    s->step = step;
    s->total_steps = total;
    s->epoch = (uint64_t)epoch;
    s->sample_index = (uint64_t)index;
    s->batch = batch;
    s->seq = seq;
    s->world_size = (int)ws;
    s->zero = (int)zero;
    const cJSON *dd = cJSON_GetObjectItem(j, "data_dist");
    s->dynamic = cJSON_IsString(dd) && !strcmp(dd->valuestring, "dynamic");
done:
    cJSON_Delete(j);
    return st;
}

/* Step number of a complete checkpoint folder name, or -1. */
static long ckpt_step_of(const char *out_dir, const char *name) {
    char *end;
    if (strncmp(name, "checkpoint-", 11) != 0) return -1;
    long step = strtol(name + 11, &end, 10);
    if (end == name + 11 || *end || step < 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/skein_state.json", out_dir, name);
    return file_exists(path) ? step : -1;
}

/* Lists complete checkpoint steps in ascending order into *steps (caller frees). */
static int ckpt_list(const char *out_dir, long **steps) {
    *steps = NULL;
    DIR *d = opendir(out_dir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long step = ckpt_step_of(out_dir, e->d_name);
        if (step < 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            long *grown = mem_realloc(*steps, sizeof(long) * (size_t)cap);
            if (!grown) break;
            *steps = grown;
        }
        (*steps)[n++] = step;
    }
    closedir(d);
    for (int i = 1; i < n; i++)   /* insertion sort: a handful of entries */
        for (int k = i; k > 0 && (*steps)[k - 1] > (*steps)[k]; k--) {
            long t = (*steps)[k];
            (*steps)[k] = (*steps)[k - 1];
            (*steps)[k - 1] = t;
        }
    return n;
}

bool ckpt_find_latest(const char *out_dir, char *path, size_t n) {
    long *steps;
    int count = ckpt_list(out_dir, &steps);
    if (count > 0) snprintf(path, n, "%s/checkpoint-%ld", out_dir, steps[count - 1]);
    mem_free(steps);
    return count > 0;
}

char *ckpt_tmp_path(const char *out_dir, long step, char *path, size_t n) {
    snprintf(path, n, "%s/.checkpoint-%ld.tmp", out_dir, step);
    return path;
}

sk_status ckpt_begin(const char *out_dir, long step) {
    char tmp[4096];
    ckpt_tmp_path(out_dir, step, tmp, sizeof tmp);
    SK_TRY(file_remove_tree(tmp));
    return file_mkdirs(tmp);
}

sk_status ckpt_write_model(const char *dir, const model *m, const float *host_params, const char *tokenizer_path) {
    char path[4096];
    SK_TRY(host_params ? model_save_host(m, host_params, dir) : model_save(m, dir));
    if (tokenizer_path) SK_TRY(ckpt_copy_file(tokenizer_path, file_join(path, sizeof path, dir, "tokenizer.json")));
    return SK_OK;
}

sk_status ckpt_commit(const char *out_dir, const ckpt_state *s, int keep) {
    char tmp[4096], final[4096], path[4096];
    ckpt_tmp_path(out_dir, s->step, tmp, sizeof tmp);
    snprintf(final, sizeof final, "%s/checkpoint-%ld", out_dir, s->step);
    SK_TRY(state_save(s, file_join(path, sizeof path, tmp, "skein_state.json")));
    SK_TRY(file_remove_tree(final));
    if (rename(tmp, final) != 0)
        return sk_fail(SK_EIO, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
    if (keep > 0) {
        long *steps;
        int count = ckpt_list(out_dir, &steps);
        for (int i = 0; i + keep < count; i++) {
            snprintf(path, sizeof path, "%s/checkpoint-%ld", out_dir, steps[i]);
            sk_status st = file_remove_tree(path);
            if (st != SK_OK) log_warn("%s", sk_errmsg());
        }
        mem_free(steps);
    }
    return SK_OK;
}

sk_status ckpt_save(const char *out_dir, const model *m, const adamw *opt, const ckpt_state *s,
                    const char *tokenizer_path, int keep) {
    char tmp[4096], path[4096];
    ckpt_tmp_path(out_dir, s->step, tmp, sizeof tmp);
    SK_TRY(ckpt_begin(out_dir, s->step));
    SK_TRY(ckpt_write_model(tmp, m, NULL, tokenizer_path));
    SK_TRY(adamw_save(opt, m->n_params, file_join(path, sizeof path, tmp, "optimizer.bin")));
    return ckpt_commit(out_dir, s, keep);
}
