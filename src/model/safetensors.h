/* safetensors: read (by mmap) and write the safetensors format, single files and sharded
 * folders (model.safetensors.index.json).
 *
 * Format: 8 bytes little-endian u64 N, then N bytes of JSON, then the data section.
 * The JSON maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * offsets relative to the data section; an optional "__metadata__" maps strings to strings.
 * Writers pad the JSON with spaces so the data section starts 8-byte aligned.
 *
 *   st_file f;
 *   if (st_open("model.safetensors", &f) != SK_OK) { puts(sk_errmsg()); ... }
 *   const st_tensor *t = st_find(&f, "transformer.wte.weight");
 *   // t->data points into the read-only mapping, t->nbytes bytes, valid until st_close
 *   st_close(&f);
 *
 * st_open validates everything before it returns SK_OK, so a caller can trust every field:
 * known dtype, ndim <= ST_MAX_DIMS, numel * dtype size == nbytes without overflow, each
 * tensor inside the file, tensors packed back to back in offset order covering the whole
 * data section (as the reference implementation requires), names unique. A bad file is
 * SK_EFORMAT with a message naming the file and the tensor or field. */
#ifndef SKEIN_SAFETENSORS_H
#define SKEIN_SAFETENSORS_H

#include "base/base.h"
#include "base/file.h"
#include "tensor/dtype.h"

#define ST_MAX_DIMS 8
/* Headers larger than this are refused (the reference implementation's limit). */
#define ST_MAX_HEADER ((uint64_t)100000000)

typedef struct st_tensor {
    const char *name;          /* owned by the st_file */
    dtype dtype;
    int ndim;                  /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    const void *data;          /* into the mapping; alignment not guaranteed */
    size_t nbytes;
} st_tensor;

typedef struct st_meta {
    const char *key, *value;
} st_meta;

typedef struct st_file {
    char *path;
    file_map map;
    st_tensor *tensors;        /* sorted by name (st_find is a binary search) */
    int n_tensors;
    st_meta *meta;             /* "__metadata__" entries, in file order */
    int n_meta;
    char *strings;             /* storage for names, keys and values */
} st_file;

/* Maps and validates the file. On failure *f is left closed (st_close is harmless). */
sk_status st_open(const char *path, st_file *f);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Value of a "__metadata__" key, or NULL. */
const char *st_meta_get(const st_file *f, const char *key);

/* A model's tensors over one file or several shards. */
typedef struct st_set {
    st_file *files;
    int n_files;
    char *weights_path;        /* what was opened: model.safetensors or the index file */
} st_set;

/* Opens dir/model.safetensors, or else dir/model.safetensors.index.json and every shard its
 * weight_map names (plain file names inside dir). Checks that every name the index maps is
 * in its shard and that no name is in two shards. SK_EIO when neither file exists. */
sk_status st_set_open_dir(const char *dir, st_set *s);
void st_set_close(st_set *s);
const st_tensor *st_set_find(const st_set *s, const char *name);
/* Every tensor: index i counts through the files in order. */
int st_set_count(const st_set *s);
const st_tensor *st_set_at(const st_set *s, int i);

/* Writing. A tensor to write: data may be NULL with the streaming writer below. */
typedef struct st_entry {
    const char *name;
    dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_entry;

/* Writes the tensors (in the order given) and metadata atomically: "<path>.tmp", fsync,
 * rename. Names must be unique (checked: SK_EARG). */
sk_status st_write(const char *path, const st_entry *entries, int n, const st_meta *meta, int n_meta);

/* Streaming writer, for data that is produced tensor by tensor (downloaded from a device):
 * st_writer_open writes the header; st_writer_put appends bytes in entry order (any chunking);
 * st_writer_finish checks every byte was given, fsyncs and renames, and frees the writer;
 * st_writer_abort removes the temporary file and frees it. */
typedef struct st_writer st_writer;
sk_status st_writer_open(const char *path, const st_entry *entries, int n, const st_meta *meta,
                         int n_meta, st_writer **out);
sk_status st_writer_put(st_writer *w, const void *data, size_t bytes);
sk_status st_writer_finish(st_writer *w);
void st_writer_abort(st_writer *w);

/* Writes model.safetensors.index.json at path (atomically): "metadata" with total_size (data
 * bytes) and total_parameters, and "weight_map" mapping names[i] to files[i]. */
sk_status st_index_save(const char *path, const char *const *names, const char *const *files, int n,
                        uint64_t total_size, uint64_t total_params);

/* Bytes of one entry's data (numel * dtype size); asserts no overflow. */
size_t st_entry_bytes(const st_entry *e);

#endif
