/* shard: writing and validating token shard files (format in data.h).
 *
 * Invariants: a written shard appears whole or not at all (tmp + fsync + rename); every
 * token in it is in [0, vocab_size) and fits its width. An opened shard's header agrees with
 * its file size exactly, so token reads within [0, n) never leave the mapping. */
#include "data/data.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int width_for_vocab(int vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

sk_status data_shard_write(const char *path, const int32_t *tokens, size_t n, int vocab_size) {
    return data_shard_write_width(path, tokens, n, vocab_size, 0);
}

/* Converts tokens to the shard width in chunks and streams them to "<path>.tmp", then
 * renames. Validates everything before creating the file. */
sk_status data_shard_write_width(const char *path, const int32_t *tokens, size_t n, int vocab_size,
                                 int width) {
    if (vocab_size <= 0) return sk_fail(SK_EARG, "%s: vocabulary size %d is not positive", path, vocab_size);
    if (width == 0) width = width_for_vocab(vocab_size);
    if (width != 2 && width != 4)
        return sk_fail(SK_EARG, "%s: token width %d is not 2 or 4 bytes", path, width);
    if (width == 2 && vocab_size > 65536)
        return sk_fail(SK_EARG, "%s: a vocabulary of %d does not fit 2-byte tokens (at most 65536)",
                       path, vocab_size);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            return sk_fail(SK_EFORMAT, "%s: token %zu is %d, outside the vocabulary of %d", path, i,
                           (int)tokens[i], vocab_size);

    int32_t header[DATA_HEADER_INTS] = {0};
    header[0] = DATA_MAGIC;
    header[1] = DATA_VERSION;
    header[2] = width;
    header[3] = vocab_size;
    int64_t count = (int64_t)n;
    memcpy(&header[4], &count, sizeof count);

    char tmp[4096];
    int k = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (k < 0 || (size_t)k >= sizeof tmp) return sk_fail(SK_EARG, "shard path too long: %s", path);
    enum { CHUNK = 1 << 16 };
    void *buf = mem_alloc((size_t)CHUNK * (size_t)width);
    if (!buf) return sk_fail_ctx(SK_ENOMEM, "writing %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        mem_free(buf);
        return sk_fail(SK_EIO, "cannot create %s: %s", tmp, strerror(errno));
    }
    bool ok = fwrite(header, sizeof header, 1, f) == 1;
    for (size_t i = 0; ok && i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++) {
            if (width == 2) ((uint16_t *)buf)[j] = (uint16_t)tokens[i + j];
            else ((uint32_t *)buf)[j] = (uint32_t)tokens[i + j];
        }
        ok = fwrite(buf, (size_t)width, m, f) == m;
    }
    mem_free(buf);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int saved = errno;
    if (fclose(f) != 0) ok = false;
    if (!ok) {
        unlink(tmp);
        return sk_fail(SK_EIO, "cannot write %s: %s", tmp, strerror(saved));
    }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return sk_fail(SK_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(saved));
    }
    return SK_OK;
}

/* Checks that the file holds exactly n tokens of `width` bytes after the header. */
static sk_status check_size(const char *path, size_t file_size, uint64_t n, int width) {
    uint64_t holds = (file_size - DATA_HEADER_BYTES) / (uint64_t)width;
    if (n > holds)
        return sk_fail(SK_EFORMAT, "%s: truncated: header says %llu tokens, file holds %llu", path,
                       (unsigned long long)n, (unsigned long long)holds);
    uint64_t extra = (file_size - DATA_HEADER_BYTES) - n * (uint64_t)width;
    if (extra)
        return sk_fail(SK_EFORMAT, "%s: %llu bytes after the %llu tokens the header announces", path,
                       (unsigned long long)extra, (unsigned long long)n);
    return SK_OK;
}

sk_status data_shard_open(const char *path, data_shard *s) {
    memset(s, 0, sizeof *s);
    SK_TRY(file_map_open(path, &s->map));
    sk_status st = SK_OK;
    int32_t h[DATA_HEADER_INTS];
    if (s->map.size < DATA_HEADER_BYTES) {
        st = sk_fail(SK_EFORMAT, "%s: truncated: %zu bytes, shorter than the %d-byte header", path,
                     s->map.size, DATA_HEADER_BYTES);
        goto err;
    }
    memcpy(h, s->map.data, sizeof h);
    if (h[0] == DATA_MAGIC) {
        if (h[1] != DATA_VERSION) {
            st = sk_fail(SK_EFORMAT, "%s: unsupported version %d (this build reads version %d)", path,
                         (int)h[1], DATA_VERSION);
            goto err;
        }
        if (h[2] != 2 && h[2] != 4) {
            st = sk_fail(SK_EFORMAT, "%s: unsupported token width %d (2 or 4 bytes)", path, (int)h[2]);
            goto err;
        }
        if (h[3] < 0 || (h[2] == 2 && h[3] > 65536)) {
            st = sk_fail(SK_EFORMAT, "%s: token width %d cannot hold a vocabulary of %d", path,
                         (int)h[2], (int)h[3]);
            goto err;
        }
        int64_t count;
        memcpy(&count, &h[4], sizeof count);
        if (count < 0) {
            st = sk_fail(SK_EFORMAT, "%s: negative token count %lld", path, (long long)count);
            goto err;
        }
        s->width = h[2];
        s->vocab_size = h[3];
        s->n = (size_t)count;
    } else if (h[0] == DATA_LLMC_MAGIC) {
        if (h[1] != 1) {
            st = sk_fail(SK_EFORMAT, "%s: unsupported llm.c token file version %d (reads 1)", path, (int)h[1]);
            goto err;
        }
        if (h[2] < 0) {
            st = sk_fail(SK_EFORMAT, "%s: negative token count %d", path, (int)h[2]);
            goto err;
        }
        s->width = 2;
        s->vocab_size = 0;
        s->n = (size_t)h[2];
    } else {
        st = sk_fail(SK_EFORMAT, "%s: wrong magic number %d (a skein shard has %d, an llm.c file %d)",
                     path, (int)h[0], DATA_MAGIC, DATA_LLMC_MAGIC);
        goto err;
    }
    if ((st = check_size(path, s->map.size, s->n, s->width)) != SK_OK) goto err;
    s->tokens = (const char *)s->map.data + DATA_HEADER_BYTES;
    return SK_OK;
err:
    data_shard_close(s);
    return st;
}

void data_shard_close(data_shard *s) {
    file_map_close(&s->map);
    memset(s, 0, sizeof *s);
}
