/* file: whole-file I/O, memory maps, folders (see file.h). */
#include "base/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

sk_status file_read_all(const char *path, char **out, size_t *size) {
    /* O_NONBLOCK: a FIFO (or a device) in place of a file is refused below, not waited on */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        int e = errno;
        if (fd >= 0) close(fd);
        return sk_fail(SK_EIO, "cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return sk_fail(SK_EIO, "%s is not a regular file", path);
    }
    char *buf = mem_alloc((size_t)st.st_size + 1);
    if (!buf) { fclose(f); return sk_fail_ctx(SK_ENOMEM, "reading %s", path); }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (got != (size_t)st.st_size) {
        mem_free(buf);
        return sk_fail(SK_EIO, "short read on %s", path);
    }
    buf[got] = 0;
    *out = buf;
    if (size) *size = got;
    return SK_OK;
}

sk_status file_write_all(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return sk_fail(SK_EIO, "cannot create %s: %s", path, strerror(errno));
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    int flush_err = fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0 || put != size || flush_err)
        return sk_fail(SK_EIO, "cannot write %s: %s", path, strerror(errno));
    return SK_OK;
}

sk_status file_write_atomic(const char *path, const void *data, size_t size) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    SK_TRY(file_write_all(tmp, data, size));
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return sk_fail(SK_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    return SK_OK;
}

sk_status file_map_open(const char *path, file_map *map) {
    map->data = NULL;
    map->size = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK);   /* a FIFO is refused below, not waited on */
    if (fd < 0) return sk_fail(SK_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sk_fail(SK_EIO, "%s is not a regular file", path);
    }
    if (st.st_size > 0) {
        /* MAP_SHARED: processes mapping the same file share its page-cache pages (read-only,
         * so nothing is ever copied on write either way; shared says so to the kernel). */
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            close(fd);
            return sk_fail(SK_EIO, "cannot map %s: %s", path, strerror(errno));
        }
        map->data = p;
        map->size = (size_t)st.st_size;
    }
    close(fd);
    return SK_OK;
}

void file_map_close(file_map *map) {
    if (map->data) munmap(map->data, map->size);
    map->data = NULL;
    map->size = 0;
}

void file_map_release(const void *p, size_t bytes) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = ((uintptr_t)p + page - 1) / page * page,
                    hi = ((uintptr_t)p + bytes) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);   /* advice: nothing to do when refused */
}

bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

bool file_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

sk_status file_mkdirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return sk_fail(SK_EARG, "bad folder path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return sk_fail(SK_EIO, "cannot create folder %s: %s", buf, strerror(errno));
        buf[i] = c;
    }
    if (!file_is_dir(path)) return sk_fail(SK_EIO, "%s exists and is not a folder", path);
    return SK_OK;
}

sk_status file_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return SK_OK;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return sk_fail(SK_EIO, "cannot open folder %s: %s", path, strerror(errno));
        struct dirent *e;
        char child[4096];
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            sk_status st2 = file_remove_tree(child);
            if (st2 != SK_OK) { closedir(d); return st2; }
        }
        closedir(d);
        if (rmdir(path) != 0) return sk_fail(SK_EIO, "cannot remove %s: %s", path, strerror(errno));
    } else if (unlink(path) != 0) {
        return sk_fail(SK_EIO, "cannot remove %s: %s", path, strerror(errno));
    }
    return SK_OK;
}

char *file_join(char *buf, size_t n, const char *dir, const char *name) {
    int k = snprintf(buf, n, "%s/%s", dir, name);
    SK_ASSERT(k > 0 && (size_t)k < n);
    return buf;
}
