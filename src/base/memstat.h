/* memstat: what a process's resident memory is made of, read from /proc/PID/smaps (Linux).
 *
 *   memstat all, w;
 *   memstat_read(0, NULL, &all);             // this whole process
 *   memstat_read(pid, "models/llama-1b", &w); // only mappings of files in that folder
 *   printf("weights: rss %zu pss %zu shared %zu\n", w.rss, w.pss, w.shared_clean + w.shared_dirty);
 *
 * The numbers are the kernel's per-mapping sums (bytes): Rss resident pages; Pss the
 * proportional share (a page mapped by k processes counts 1/k); Shared_* pages also mapped
 * by another process; Private_* pages only this process maps; Anonymous pages with no file
 * behind them (heap, stacks, copy-on-write copies). A read-only file mapping that two
 * processes touched entirely shows Shared_Clean ~ its size and Pss ~ half its Rss in each;
 * files on tmpfs show their shared pages as Shared_Dirty instead (they have no backing store).
 * Used by tests/test_weights_map.c and by measurements of `skein generate`. */
#ifndef SKEIN_MEMSTAT_H
#define SKEIN_MEMSTAT_H

#include <stddef.h>

#include "base/base.h"

typedef struct memstat {
    size_t rss, pss, shared_clean, shared_dirty, private_clean, private_dirty, anonymous, swap;
    int n_maps;            /* mappings summed */
} memstat;

/* Sums /proc/PID/smaps (pid 0: this process) over every mapping, or, with path not NULL,
 * over the mappings of that file or of files under that folder (path is resolved with
 * realpath, as the kernel names mapped files). SK_EIO naming the file when /proc cannot be
 * read or path does not exist. */
sk_status memstat_read(int pid, const char *path, memstat *out);
/* The same over this process's mappings that overlap [p, p + bytes): one mapping of a file
 * even when the process maps the file more than once (two models over one folder). */
sk_status memstat_read_range(const void *p, size_t bytes, memstat *out);

#endif
