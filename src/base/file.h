/* file: whole-file reads and writes, read-only memory maps, folders and paths.
 *
 * Every function returns SK_OK or a status with a message naming the path (base.h).
 * file_write_atomic writes to "<path>.tmp" and renames, so readers never see half a file. */
#ifndef SKEIN_FILE_H
#define SKEIN_FILE_H

#include "base/base.h"

typedef struct file_map {
    void *data;      /* read-only shared view of the whole file (PROT_READ, MAP_SHARED: other
                      * processes mapping it share the pages); NULL when empty */
    size_t size;
} file_map;

/* Reads the whole file into a new NUL-terminated buffer (*out, owned by the caller, mem_free). */
sk_status file_read_all(const char *path, char **out, size_t *size);
sk_status file_write_all(const char *path, const void *data, size_t size);
sk_status file_write_atomic(const char *path, const void *data, size_t size);
sk_status file_map_open(const char *path, file_map *map);
void file_map_close(file_map *map);
/* Drops this process's hold on the whole pages inside [p, p + bytes) of a read-only shared
 * mapping (madvise MADV_DONTNEED): the page cache keeps them, this process's resident set no
 * longer counts them, and a later read maps them back. For data read once through a mapping
 * (a tensor-parallel rank copying its slice of a matrix out of the file). */
void file_map_release(const void *p, size_t bytes);

bool file_exists(const char *path);
bool file_is_dir(const char *path);
/* Creates the folder and its parents; fine when it exists. */
sk_status file_mkdirs(const char *path);
/* Removes a folder and everything in it (rm -rf); fine when it does not exist. */
sk_status file_remove_tree(const char *path);
/* Writes "dir/name" into buf (size n); asserts it fits. Returns buf. */
char *file_join(char *buf, size_t n, const char *dir, const char *name);

#endif
