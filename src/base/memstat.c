/* memstat: sums of /proc/PID/smaps fields, optionally over the mappings of one file or folder
 * (see memstat.h). A mapping's header line is "start-end perms offset dev inode [path]"; its
 * fields follow as "Name:  N kB" lines until the next header. */
#include "base/memstat.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether the mapped file `mapped` is `want` or lies under the folder `want`. */
static bool path_covers(const char *want, const char *mapped) {
    size_t n = strlen(want);
    return !strncmp(mapped, want, n) && (mapped[n] == 0 || mapped[n] == '/' || (n > 0 && want[n - 1] == '/'));
}

/* The path of a header line (NULL when it has none: anonymous memory), newline removed. */
static const char *header_path(char *line) {
    char *p = line;
    for (int field = 0; field < 5; field++) {   /* skip range, perms, offset, dev, inode */
        while (*p && *p != ' ') p++;
        while (*p == ' ') p++;
    }
    p[strcspn(p, "\n")] = 0;
    return *p ? p : NULL;
}

/* Sums the mappings of pid (0: this process) that a header selects: of the file or folder
 * want (realpath'd) when not NULL, else those overlapping [lo, hi) when hi > lo, else all. */
static sk_status memstat_sum(int pid, const char *want, uintptr_t lo, uintptr_t hi, memstat *out) {
    memset(out, 0, sizeof *out);
    char smaps[64];
    if (pid > 0) snprintf(smaps, sizeof smaps, "/proc/%d/smaps", pid);
    else snprintf(smaps, sizeof smaps, "/proc/self/smaps");
    FILE *f = fopen(smaps, "r");
    if (!f) return sk_fail(SK_EIO, "cannot open %s: %s", smaps, strerror(errno));
    static const struct { const char *name; size_t off; } fields[] = {
        {"Rss", offsetof(memstat, rss)},
        {"Pss", offsetof(memstat, pss)},
        {"Shared_Clean", offsetof(memstat, shared_clean)},
        {"Shared_Dirty", offsetof(memstat, shared_dirty)},
        {"Private_Clean", offsetof(memstat, private_clean)},
        {"Private_Dirty", offsetof(memstat, private_dirty)},
        {"Anonymous", offsetof(memstat, anonymous)},
        {"Swap", offsetof(memstat, swap)},
    };
    char line[PATH_MAX + 256], name[64];
    bool counting = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb, start, end;
        int used = 0;
        if (sscanf(line, "%63[A-Za-z_]: %llu kB%n", name, &kb, &used) == 2 && used > 0) {
            if (!counting) continue;
            for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
                if (!strcmp(name, fields[i].name)) *(size_t *)((char *)out + fields[i].off) += (size_t)kb * 1024;
        } else if (sscanf(line, "%llx-%llx ", &start, &end) == 2) {   /* a header: "start-end ..." */
            const char *mapped = header_path(line);
            counting = want ? mapped && path_covers(want, mapped) : hi <= lo || (start < hi && end > lo);
            out->n_maps += counting;
        }
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) return sk_fail(SK_EIO, "cannot read %s", smaps);
    return SK_OK;
}

sk_status memstat_read(int pid, const char *path, memstat *out) {
    char want[PATH_MAX];
    if (path && !realpath(path, want)) {
        memset(out, 0, sizeof *out);
        return sk_fail(SK_EIO, "memstat: %s: %s", path, strerror(errno));
    }
    return memstat_sum(pid, path ? want : NULL, 0, 0, out);
}

sk_status memstat_read_range(const void *p, size_t bytes, memstat *out) {
    return memstat_sum(0, NULL, (uintptr_t)p, (uintptr_t)p + (bytes ? bytes : 1), out);
}
