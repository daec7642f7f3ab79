/* Reading the tokenizer fixtures made by tests/fixtures/make_tok*_fixtures.py, shared by
 * test_tok.c and test_tok2.c: cases.txt has one case per line, tab-separated fields (kind,
 * tokenizer name, text as hex, expected ids as decimal lists, ...); tokenizers are loaded
 * once each from fixtures/<dir>/<name>.json. */
#ifndef SKEIN_TEST_TOK_FIXTURES_H
#define SKEIN_TEST_TOK_FIXTURES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/file.h"
#include "tokenizer/tok.h"

typedef struct fx_line { char *f[6]; int nf; } fx_line;
typedef struct fx_table { fx_line *lines; int n; char *text; } fx_table;

/* Loads and splits the cases file once (empty lines skipped); false with sk_errmsg set. */
static inline bool fx_table_load(fx_table *t, const char *rel_path) {
    if (t->lines) return true;
    size_t n;
    if (file_read_all(test_path(rel_path), &t->text, &n) != SK_OK) return false;
    int cap = 4096;
    t->lines = calloc((size_t)cap, sizeof *t->lines);
    for (char *line = t->text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!*line) continue;
        if (t->n == cap) t->lines = realloc(t->lines, (size_t)(cap *= 2) * sizeof *t->lines);
        fx_line *l = &t->lines[t->n++];
        l->nf = 0;
        for (char *p = line; p && l->nf < 6;) {
            l->f[l->nf++] = p;
            p = strchr(p, '\t');
            if (p) *p++ = 0;
        }
    }
    return true;
}

/* Frees the table and the tokenizers cached from it (fx_tok_cached). */
static inline void fx_table_free(fx_table *t, tok **cache, int n) {
    for (int i = 0; i < n; i++) tok_free(cache[i]), cache[i] = NULL;
    mem_free(t->text);
    free(t->lines);
    memset(t, 0, sizeof *t);
}

/* Decodes hex into a new buffer (NUL-terminated, caller frees); *n bytes. */
static inline char *unhex(const char *h, size_t *n) {
    size_t len = strlen(h) / 2;
    char *out = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[len] = 0;
    *n = len;
    return out;
}

/* Parses space-separated ids into ids (at most cap); returns how many there are. */
static inline size_t parse_ids(const char *s, int32_t *ids, size_t cap) {
    size_t n = 0;
    char *end;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s) break;
        if (n < cap) ids[n] = (int32_t)v;
        n++;
        s = end;
    }
    return n;
}

static inline void print_ids(const char *what, const int32_t *ids, size_t n) {
    printf("  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf(n > 40 ? " ...\n" : "\n");
}

/* The tokenizer `name` of fixtures/<dir>/, loaded on first use into cache[i] where
 * names[i] == name; NULL (message printed) when unknown or unloadable. */
static inline tok *fx_tok_cached(const char *dir, const char *const *names, tok **cache, int n, const char *name) {
    for (int i = 0; i < n; i++) {
        if (strcmp(name, names[i])) continue;
        if (!cache[i]) {
            char rel[128];
            snprintf(rel, sizeof rel, "fixtures/%s/%s.json", dir, name);
            if (tok_load(test_path(rel), &cache[i]) != SK_OK) {
                printf("  loading %s: %s\n", name, sk_errmsg());
                return NULL;
            }
        }
        return cache[i];
    }
    return NULL;
}

#endif
