/* skein bench load --model DIR [--device cpu|cuda]: how fast a model folder's weights become
 * usable, from a warm page cache (issue 11: the cold load of a Llama-3-8B-shapes bf16 folder,
 * `skein init --arch llama --preset llama3-8b`, onto a GPU). One JSON line:
 *
 *   file_bytes, first_read_s      the weight files, and the first read of every page through a
 *                                 fresh mapping (from the disk unless cached already): it warms
 *                                 the page cache the rest is measured from
 *   cpu_bytes, cpu_s, cpu_gb_per_s
 *                                 model_open_weights on the CPU (a read-only mapping, nothing
 *                                 copied but wts's f32 vectors) plus a read of every page of it:
 *                                 what a CPU engine needs before its first step runs at speed
 *   cpu_second_ms                 one more model over that mapping (model_open_wts: a server
 *                                 replica's weights), nothing read
 *   device, device_dtype, device_bytes, device_s, device_gb_per_s
 *                                 with --device cuda: model_open_weights there (a fresh mapping,
 *                                 converted through pinned staging into the device copy, devw.h;
 *                                 device_bytes is that copy), the backend made before the clock
 *                                 starts; null on the CPU, whose copy is the mapping itself
 *   device_second_ms              one more model over the same mapping on a second backend of
 *                                 that device: it shares the copy (devw.h), nothing uploaded
 *                                 (null with SKEIN_INFER_DTYPE=f32: model_load's copy is the
 *                                 model's own)
 *
 * GB/s are 1e9 bytes per second. The device copy's own upload rate is also logged by devw.
 *
 * With --tp K (K ranks: started by hand it runs them under mpirun) each rank opens only its
 * share of the folder (model_open_split, on --device) and reads it; rank 0 prints one line:
 * file_bytes, tp, and per rank its share's bytes (its tensors' views; on a device the copy
 * there), split_s (opened and read, or uploaded) and resident_bytes (the weight pages and
 * slices this process holds: model_resident_bytes), so a share is seen to be about 1/K. */
#include <stdio.h>
#include <string.h>

#include "base/json.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "comm/comm.h"
#include "model/devw.h"
#include "model/model.h"

#define LOAD_PAGE 4096

/* Reads one byte of every page of w's mappings (faults each page in); returns the bytes. */
static size_t load_touch(const wts *w) {
    volatile unsigned char sink = 0;
    size_t bytes = 0;
    for (int j = 0; j < wts_files(w); j++) {
        const file_map f = wts_mapping(w, j);
        const unsigned char *p = f.data;
        for (size_t k = 0; k < f.size; k += LOAD_PAGE) sink ^= p[k];
        bytes += f.size;
    }
    (void)sink;
    return bytes;
}

static double load_gbps(double bytes, double s) { return s > 0 ? bytes / s / 1e9 : 0; }

/* The CPU's numbers into j: the files' first read, the mapping opened and read, a second model. */
static sk_status load_cpu(const char *dir, cJSON *j) {
    wts *w = NULL;
    SK_TRY(wts_open(dir, WTS_KEEP_FLOAT, &w));
    double t0 = time_now();
    const size_t file_bytes = load_touch(w);
    cJSON_AddNumberToObject(j, "file_bytes", (double)file_bytes);
    cJSON_AddNumberToObject(j, "first_read_s", time_now() - t0);
    wts_free(w);

    backend *cpu = backend_create("cpu");
    if (!cpu) return SK_ENOMEM;
    model *m = NULL, *again = NULL;
    t0 = time_now();
    sk_status st = model_open_weights(dir, cpu, &m);
    if (st == SK_OK) {
        const size_t bytes = load_touch(m->weights);
        const double s = time_now() - t0;
        cJSON_AddNumberToObject(j, "cpu_bytes", (double)bytes);
        cJSON_AddNumberToObject(j, "cpu_s", s);
        cJSON_AddNumberToObject(j, "cpu_gb_per_s", load_gbps((double)bytes, s));
        t0 = time_now();
        st = model_open_wts(&m->cfg, m->weights, cpu, &again);
        cJSON_AddNumberToObject(j, "cpu_second_ms", 1e3 * (time_now() - t0));
    }
    model_free(again);
    model_free(m);
    backend_free(cpu);
    return st;
}

/* The device's numbers into j: model_open_weights on a backend made beforehand, then a second
 * model over its mapping on a second backend of the same device. */
static sk_status load_device(const char *dir, const char *device, cJSON *j) {
    backend *be = backend_create(device), *be2 = be ? backend_create(device) : NULL;
    model *m = NULL, *again = NULL;
    sk_status st = be && be2 ? SK_OK : SK_EARG;
    double t0 = time_now();
    if (st == SK_OK) st = model_open_weights(dir, be, &m);
    if (st == SK_OK) {
        backend_synchronize(be);
        const double s = time_now() - t0;
        const size_t bytes = m->dev ? devw_bytes(m->dev) : m->n_params * sizeof(float);
        cJSON_AddStringToObject(j, "device", be->name);
        cJSON_AddStringToObject(j, "device_dtype", m->dev ? "bf16" : "f32");
        cJSON_AddNumberToObject(j, "device_bytes", (double)bytes);
        cJSON_AddNumberToObject(j, "device_s", s);
        cJSON_AddNumberToObject(j, "device_gb_per_s", load_gbps((double)bytes, s));
        t0 = time_now();
        if (m->weights) st = model_open_wts(&m->cfg, m->weights, be2, &again);   /* not an f32 copy */
        if (again) cJSON_AddNumberToObject(j, "device_second_ms", 1e3 * (time_now() - t0));
        else cJSON_AddNullToObject(j, "device_second_ms");
    }
    model_free(again);
    model_free(m);
    backend_free(be2);
    backend_free(be);
    return st;
}

/* Bytes of m's weights as its tensors see them (a share's slices), reading one byte of every
 * page of each on the host (rows apart: every row). */
static size_t load_share_bytes(const model *m) {
    volatile unsigned char sink = 0;
    size_t bytes = 0;
    for (int i = 0; i < m->n_specs; i++) {
        const tensor t = model_param_view(m, i);
        const size_t es = dtype_size(t.dt), rows = t.ndim == 2 ? (size_t)t.shape[0] : 1;
        const size_t row = (size_t)tensor_numel(t) / (rows ? rows : 1) * es, ld = t.ndim == 2 ? (size_t)t.stride[0] * es : row;
        bytes += row * rows;
        if (!m->be->host_memory) continue;
        for (size_t r = 0; r < rows; r++)
            for (size_t k = 0; k < row; k += LOAD_PAGE) sink ^= ((const unsigned char *)t.data)[r * ld + k];
    }
    (void)sink;
    return bytes;
}

/* --tp K under a launcher: this rank's share (load_share_bytes), its time and resident bytes,
 * gathered to rank 0, which prints the line. */
static int load_split(const char *dir, const char *device, int K) {
    comm *c = NULL;
    sk_status st = launch_tp_join(K, device, 300.0, &c);
    if (st != SK_OK) return cli_fail(st);
    backend *be = backend_create_on(device, c->local_rank);
    model *m = NULL;
    double v[3] = {0}, *all = mem_calloc(sizeof(double) * 3 * (size_t)K);   /* bytes, seconds, resident */
    size_t resident = 0;
    const double t0 = time_now();
    st = !be || !all ? sk_fail(SK_ENOMEM, "bench load: no backend or memory") : model_open_split(dir, be, c, &m);
    if (st == SK_OK) {
        v[0] = (double)load_share_bytes(m);
        backend_synchronize(be);
        v[1] = time_now() - t0;
        if (be->host_memory) st = model_resident_bytes(m, &resident);
        v[2] = (double)resident;
        memcpy(all + 3 * c->rank, v, sizeof v);
    }
    if (st == SK_OK) st = comm_all_reduce_f64(c, all, 3 * (size_t)K);
    if (st == SK_OK && c->rank == 0) {
        size_t files = 0;
        for (int j = 0; m->weights && j < wts_files(m->weights); j++) files += wts_mapping(m->weights, j).size;
        cJSON *j = cJSON_CreateObject(), *ranks = cJSON_CreateArray();
        cJSON_AddStringToObject(j, "bench", "load");
        cJSON_AddStringToObject(j, "model", dir);
        cJSON_AddStringToObject(j, "device", be->name);
        cJSON_AddNumberToObject(j, "file_bytes", (double)files);
        cJSON_AddNumberToObject(j, "tp", K);
        for (int r = 0; r < K; r++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "rank", r);
            cJSON_AddNumberToObject(o, "share_bytes", all[3 * r]);
            cJSON_AddNumberToObject(o, "split_s", all[3 * r + 1]);
            cJSON_AddNumberToObject(o, "resident_bytes", all[3 * r + 2]);
            cJSON_AddItemToArray(ranks, o);
        }
        cJSON_AddItemToObject(j, "ranks", ranks);
        char *line = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (line) printf("%s\n", line);
        else st = sk_fail(SK_ENOMEM, "bench load: out of memory");
        cJSON_free(line);
    }
    model_free(m);
    backend_free(be);
    mem_free(all);
    if (st != SK_OK) sk_fail_ctx(st, "rank %d of %d", c->rank, c->world);
    comm_free(c);
    return cli_fail(st);
}

int cmd_bench_load(int argc, char **argv) {
    const char *dir = NULL, *device = "cpu";
    long tp = 1;
    arg_spec specs[] = {
        {"--model", ARG_STR, &dir, "DIR", "model folder (config.json and safetensors)", true, false},
        {"--device", ARG_STR, &device, "cpu|cuda", "also load onto this device's memory (default cpu: the mapping only)",
         false, false},
        {"--tp", ARG_INT, &tp, "K", "each of K ranks loads its share (tensor parallel; runs mpirun unless under a launcher)",
         false, false},
    };
    sk_status st = args_parse("skein bench load", argc, argv, specs, ARG_COUNT(specs));
    if (st != SK_OK) return cli_fail(st);
    if (strcmp(device, "cpu") && strcmp(device, "cuda"))
        return cli_fail(sk_fail(SK_EARG, "bench load: --device %s: expected cpu or cuda", device));
    if (tp < 1 || tp > 4096) return cli_fail(sk_fail(SK_EARG, "bench load: --tp must be 1 to 4096, got %ld", tp));
    if (tp > 1 && launch_by_hand()) return launch_workers("bench", argc + 1, argv - 1, (int)tp);   /* argv[-1]: "load" */
    if (tp > 1) return load_split(dir, device, (int)tp);
    cJSON *j = cJSON_CreateObject();
    if (!j) return cli_fail(sk_fail(SK_ENOMEM, "bench load: out of memory"));
    cJSON_AddStringToObject(j, "bench", "load");
    cJSON_AddStringToObject(j, "model", dir);
    st = load_cpu(dir, j);
    if (st == SK_OK && strcmp(device, "cpu")) {
        st = load_device(dir, device, j);
    } else if (st == SK_OK) {
        static const char *const none[] = {"device", "device_dtype", "device_bytes", "device_s", "device_gb_per_s",
                                           "device_second_ms"};
        for (size_t k = 0; k < sizeof none / sizeof none[0]; k++) cJSON_AddNullToObject(j, none[k]);
    }
    char *line = st == SK_OK ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (st != SK_OK) return cli_fail(st);
    if (!line) return cli_fail(sk_fail(SK_ENOMEM, "bench load: out of memory"));
    printf("%s\n", line);
    cJSON_free(line);
    return 0;
}
