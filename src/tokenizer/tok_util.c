/* tok_util: the tokenizer's building blocks — hashing, a string map and a uint64 map, the
 * GPT-2 byte-to-unicode alphabet, UTF-8 checks with Python's replacement rule, the
 * normalizer steps (Unicode forms through libutf8proc) and the PCRE2 regex split that
 * pre-tokenization runs on.
 *
 * Invariants: a tok_strmap keeps its entries in insertion order (ents) and only indexes them
 * from slots; a tok_u64map never stores the key UINT64_MAX (it marks empty slots). */
#include "tokenizer/tok_impl.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- hashing --------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

uint64_t tok_hash(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0x100000001b3ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x87c37b91114253d5ull;
        h = (h << 31) | (h >> 33);
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    return mix64(h ^ v);
}

/* ---- string map ------------------------------------------------------------------------ */

static sk_status strmap_grow(tok_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *slots = mem_calloc(cap * sizeof *slots);
    if (!slots) return SK_ENOMEM;
    for (size_t i = 0; i < m->n; i++) {
        size_t j = m->ents[i].hash & (cap - 1);
        while (slots[j]) j = (j + 1) & (cap - 1);
        slots[j] = (uint32_t)(i + 1);
    }
    mem_free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return SK_OK;
}

/* Finds key's slot: *found says whether it holds the key, else it is the empty slot to use. */
static size_t strmap_slot(const tok_strmap *m, const char *key, size_t len, uint64_t h, bool *found) {
    size_t j = h & (m->cap - 1);
    for (;;) {
        uint32_t e = m->slots[j];
        if (!e) { *found = false; return j; }
        const struct tok_strent *en = &m->ents[e - 1];
        if (en->hash == h && en->len == len && !memcmp(m->pool + en->off, key, len)) {
            *found = true;
            return j;
        }
        j = (j + 1) & (m->cap - 1);
    }
}

sk_status tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val) {
    SK_ASSERT(len < UINT32_MAX);
    if ((m->n + 1) * 4 > m->cap * 3) SK_TRY(strmap_grow(m));
    uint64_t h = tok_hash(key, len);
    bool found;
    size_t j = strmap_slot(m, key, len, h, &found);
    if (found) { m->ents[m->slots[j] - 1].val = val; return SK_OK; }
    if (m->n == m->ents_cap) {
        size_t c = m->ents_cap ? m->ents_cap * 2 : 64;
        void *p = mem_realloc(m->ents, c * sizeof *m->ents);
        if (!p) return SK_ENOMEM;
        m->ents = p;
        m->ents_cap = c;
    }
    if (m->pool_len + len + 1 > m->pool_cap) {
        size_t c = m->pool_cap ? m->pool_cap * 2 : 1024;
        while (c < m->pool_len + len + 1) c *= 2;
        char *p = mem_realloc(m->pool, c);
        if (!p) return SK_ENOMEM;
        m->pool = p;
        m->pool_cap = c;
    }
    memcpy(m->pool + m->pool_len, key, len);
    m->pool[m->pool_len + len] = 0;
    m->ents[m->n] = (struct tok_strent){h, m->pool_len, (uint32_t)len, val};
    m->pool_len += len + 1;
    m->slots[j] = (uint32_t)++m->n;
    return SK_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    bool found;
    size_t j = strmap_slot(m, key, len, tok_hash(key, len), &found);
    return found ? m->ents[m->slots[j] - 1].val : -1;
}

void tok_strmap_free(tok_strmap *m) {
    mem_free(m->slots);
    mem_free(m->ents);
    mem_free(m->pool);
    memset(m, 0, sizeof *m);
}

/* ---- uint64 map ------------------------------------------------------------------------ */

static sk_status u64map_grow(tok_u64map *m) {
    size_t cap = m->cap ? m->cap * 2 : 256;
    uint64_t *keys = mem_alloc(cap * sizeof *keys), *vals = mem_alloc(cap * sizeof *vals);
    if (!keys || !vals) { mem_free(keys); mem_free(vals); return SK_ENOMEM; }
    memset(keys, 0xff, cap * sizeof *keys);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == UINT64_MAX) continue;
        size_t j = mix64(m->keys[i]) & (cap - 1);
        while (keys[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    mem_free(m->keys);
    mem_free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return SK_OK;
}

sk_status tok_u64map_put(tok_u64map *m, uint64_t key, uint64_t val) {
    SK_ASSERT(key != UINT64_MAX);
    if ((m->n + 1) * 2 > m->cap) SK_TRY(u64map_grow(m));
    size_t j = mix64(key) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX && m->keys[j] != key) j = (j + 1) & (m->cap - 1);
    if (m->keys[j] == UINT64_MAX) { m->keys[j] = key; m->n++; }
    m->vals[j] = val;
    return SK_OK;
}

uint64_t *tok_u64map_get(const tok_u64map *m, uint64_t key) {
    if (!m->cap) return NULL;
    size_t j = mix64(key) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == key) return &m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

void tok_u64map_free(tok_u64map *m) {
    mem_free(m->keys);
    mem_free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- byte-level alphabet ---------------------------------------------------------------- */

uint32_t tok_byte_char[256];
static int16_t char_byte_low[256 + 68];   /* code point (< 324) -> byte, -1 */
static pthread_once_t bytelevel_once = PTHREAD_ONCE_INIT;

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes spell themselves; the other 68 bytes,
 * in increasing order, spell U+0100, U+0101, ... */
static void bytelevel_build(void) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        tok_byte_char[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
    SK_ASSERT(n == 68);
    for (int i = 0; i < 256 + 68; i++) char_byte_low[i] = -1;
    for (int b = 0; b < 256; b++) char_byte_low[tok_byte_char[b]] = (int16_t)b;
}

void tok_bytelevel_init(void) { pthread_once(&bytelevel_once, bytelevel_build); }

int tok_char_byte(uint32_t cp) { return cp < 256 + 68 ? char_byte_low[cp] : -1; }

size_t tok_bytes_to_spelling(const unsigned char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += tok_utf8_encode(tok_byte_char[s[i]], out + k);
    return k;
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

size_t tok_utf8_seq(const unsigned char *s, size_t n, size_t *sub) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xbf;   /* range of the second byte (Unicode table 3-7) */
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 2;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        *sub = 1;
        return 0;
    }
    size_t i = 1;
    for (; i <= need && i < n; i++) {
        unsigned b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) break;
    }
    if (i == need + 1) return i;
    *sub = i;
    return 0;
}

size_t tok_utf8_decode(const unsigned char *s, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xe0) { *cp = ((c & 0x1fu) << 6) | (s[1] & 0x3fu); return 2; }
    if (c < 0xf0) { *cp = ((c & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu); return 3; }
    *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
    return 4;
}

size_t tok_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xc0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

sk_status tok_utf8_fix(const char *text, size_t len, char **out_p, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)text;
    *out_p = NULL;
    size_t i = 0, sub;
    /* Fast scan: most text is valid; copy only when it is not. */
    while (i < len) {
        if (s[i] < 0x80) { i++; continue; }
        size_t k = tok_utf8_seq(s + i, len - i, &sub);
        if (!k) break;
        i += k;
    }
    if (i == len) return SK_OK;
    size_t bad = 0;
    for (size_t j = i; j < len;) {
        size_t k = tok_utf8_seq(s + j, len - j, &sub);
        if (k) j += k; else { j += sub; bad++; }
    }
    char *out = mem_alloc(len + 2 * bad + 1);
    if (!out) return SK_ENOMEM;
    memcpy(out, s, i);
    size_t o = i;
    while (i < len) {
        size_t k = tok_utf8_seq(s + i, len - i, &sub);
        if (k) { memcpy(out + o, s + i, k); o += k; i += k; }
        else { memcpy(out + o, "\xef\xbf\xbd", 3); o += 3; i += sub; }
    }
    out[o] = 0;
    *out_p = out;
    *out_len = o;
    return SK_OK;
}

/* ---- regex ------------------------------------------------------------------------------ */

/* Hugging Face runs its regexes with Oniguruma, whose classes differ from PCRE2 10.42's:
 * \s is the White_Space property there (PCRE2 adds U+180E), and \p{L} / \p{N} follow a newer
 * Unicode (16.0) than Debian 12's PCRE2 (14.0). These are the letters and numbers that
 * Unicode assigned since, found by classifying every code point through HF's ByteLevel
 * pre-tokenizer; on a newer PCRE2 they are already in the classes and change nothing. */
#define TOK_NEW_LETTERS \
    "\\x{1c89}-\\x{1c8a}\\x{a7cb}-\\x{a7cd}\\x{a7da}-\\x{a7dc}\\x{105c0}-\\x{105f3}" \
    "\\x{10d4a}-\\x{10d65}\\x{10d6f}-\\x{10d85}\\x{10ec2}-\\x{10ec4}\\x{1123f}-\\x{11240}" \
    "\\x{11380}-\\x{11389}\\x{1138b}\\x{1138e}\\x{11390}-\\x{113b5}\\x{113b7}\\x{113d1}\\x{113d3}" \
    "\\x{11bc0}-\\x{11be0}\\x{11f02}\\x{11f04}-\\x{11f10}\\x{11f12}-\\x{11f33}\\x{1342f}" \
    "\\x{13441}-\\x{13446}\\x{13460}-\\x{143fa}\\x{16100}-\\x{1611d}\\x{16d40}-\\x{16d6c}\\x{18cff}" \
    "\\x{1b132}\\x{1b155}\\x{1df25}-\\x{1df2a}\\x{1e030}-\\x{1e06d}\\x{1e4d0}-\\x{1e4eb}" \
    "\\x{1e5d0}-\\x{1e5ed}\\x{1e5f0}\\x{2b739}\\x{2ebf0}-\\x{2ee5d}\\x{31350}-\\x{323af}"
#define TOK_NEW_NUMBERS \
    "\\x{10d40}-\\x{10d49}\\x{116d0}-\\x{116e3}\\x{11bf0}-\\x{11bf9}\\x{11f50}-\\x{11f59}" \
    "\\x{16130}-\\x{16139}\\x{16d70}-\\x{16d79}\\x{1ccf0}-\\x{1ccf9}\\x{1d2c0}-\\x{1d2d3}" \
    "\\x{1e4f0}-\\x{1e4f9}\\x{1e5f1}-\\x{1e5fa}"

/* Rewrites \s, \S, \p{L} and \p{N} of pattern so that PCRE2 classifies characters as
 * Oniguruma does (above); inside a [...] class the additions go in without brackets.
 * Returns a new string (mem_free) or NULL when out of memory. */
static char *oniguruma_classes(const char *p) {
    size_t n = strlen(p), cap = n + 1, k = 0, count = 0;
    for (size_t i = 0; i + 1 < n; i++) count += p[i] == '\\';
    cap += count * (sizeof TOK_NEW_LETTERS + 16);
    char *out = mem_alloc(cap);
    if (!out) return NULL;
    bool in_class = false;
#define PUT(str) do { size_t l_ = strlen(str); memcpy(out + k, str, l_); k += l_; } while (0)
    for (size_t i = 0; i < n;) {
        if (p[i] == '\\' && i + 1 < n) {
            const char *rest = p + i;
            if (p[i + 1] == 's') { PUT("\\p{White_Space}"); i += 2; }
            else if (p[i + 1] == 'S') { PUT("\\P{White_Space}"); i += 2; }
            else if (!strncmp(rest, "\\p{L}", 5)) { PUT(in_class ? "\\p{L}" TOK_NEW_LETTERS : "[\\p{L}" TOK_NEW_LETTERS "]"); i += 5; }
            else if (!strncmp(rest, "\\p{N}", 5)) { PUT(in_class ? "\\p{N}" TOK_NEW_NUMBERS : "[\\p{N}" TOK_NEW_NUMBERS "]"); i += 5; }
            else { out[k++] = p[i++]; out[k++] = p[i++]; }
            continue;
        }
        if (!in_class && p[i] == '[') {
            in_class = true;
            out[k++] = p[i++];
            if (i < n && p[i] == '^') out[k++] = p[i++];
            if (i < n && p[i] == ']') out[k++] = p[i++];   /* a literal ] first in a class */
            continue;
        }
        if (in_class && p[i] == '[' && i + 1 < n && p[i + 1] == ':') {   /* [:alpha:] */
            const char *end = strstr(p + i + 2, ":]");
            size_t l = end ? (size_t)(end - (p + i)) + 2 : n - i;
            memcpy(out + k, p + i, l);
            k += l;
            i += l;
            continue;
        }
        if (in_class && p[i] == ']') in_class = false;
        out[k++] = p[i++];
    }
#undef PUT
    SK_ASSERT(k < cap);
    out[k] = 0;
    return out;
}

sk_status tok_regex_compile(tok_regex *re, const char *pattern, bool literal, const char *what) {
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    char *rewritten = literal ? NULL : oniguruma_classes(pattern);
    if (!literal && !rewritten) return sk_fail(SK_ENOMEM, "%s: out of memory compiling a regex", what);
    re->code = pcre2_compile((PCRE2_SPTR)(literal ? pattern : rewritten), PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    mem_free(rewritten);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return sk_fail(SK_EFORMAT, "%s: regex /%s/ does not compile: %s", what, pattern, (const char *)msg);
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return SK_OK;
}

void tok_regex_free(tok_regex *re) {
    if (re->code) pcre2_code_free(re->code);
    re->code = NULL;
}

sk_status tok_regex_split(const tok_regex *re, const char *s, size_t n, tok_piece_fn fn, void *ctx) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re->code, NULL);
    if (!md) return sk_fail(SK_ENOMEM, "out of memory for regex match data");
    sk_status st = SK_OK;
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = re->jit ? pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, pos, 0, md, NULL)
                         : pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            st = sk_fail(SK_EARG, "pre-tokenizer regex failed at byte %zu: %s", pos, (const char *)msg);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {   /* empty match: step over one character */
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xc0) == 0x80) pos++;
            continue;
        }
        if (ms > last && (st = fn(ctx, s + last, ms - last)) != SK_OK) break;
        if ((st = fn(ctx, s + ms, me - ms)) != SK_OK) break;
        last = pos = me;
    }
    if (st == SK_OK && last < n) st = fn(ctx, s + last, n - last);
    pcre2_match_data_free(md);
    return st;
}

/* ---- normalizer -------------------------------------------------------------------------- */

/* One step over cur[0..n): a new buffer (mem_free) in *out, or NULL when out of memory. */
static sk_status norm_step(const tok_norm *st, const char *cur, size_t n, char **out, size_t *out_n) {
    *out = NULL;
    if (st->kind == TOK_NORM_PREPEND) {
        size_t lp = strlen(st->a);
        if (!n) return SK_OK;   /* HF prepends nothing to an empty string */
        char *p = mem_alloc(n + lp + 1);
        if (!p) return SK_ENOMEM;
        memcpy(p, st->a, lp);
        memcpy(p + lp, cur, n);
        p[n + lp] = 0;
        *out = p;
        *out_n = n + lp;
        return SK_OK;
    }
    if (st->kind == TOK_NORM_REPLACE) {
        size_t lp = strlen(st->a), lr = strlen(st->b), count = 0;
        for (size_t i = 0; i + lp <= n;) {
            if (!memcmp(cur + i, st->a, lp)) { count++; i += lp; } else i++;
        }
        if (!count) return SK_OK;
        char *p = mem_alloc(n + count * lr + 1);
        if (!p) return SK_ENOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n;) {
            if (i + lp <= n && !memcmp(cur + i, st->a, lp)) { memcpy(p + k, st->b, lr); k += lr; i += lp; }
            else p[k++] = cur[i++];
        }
        p[k] = 0;
        *out = p;
        *out_n = k;
        return SK_OK;
    }
    int opts = UTF8PROC_STABLE;
    switch (st->kind) {
    case TOK_NORM_NFC: opts |= UTF8PROC_COMPOSE; break;
    case TOK_NORM_NFD: opts |= UTF8PROC_DECOMPOSE; break;
    case TOK_NORM_NFKC: opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *res = NULL;
    utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)cur, (utf8proc_ssize_t)n, &res, (utf8proc_option_t)opts);
    if (len < 0) {
        if (len == UTF8PROC_ERROR_NOMEM) return SK_ENOMEM;
        return sk_fail(SK_EARG, "Unicode normalization failed: %s", utf8proc_errmsg(len));
    }
    /* utf8proc allocates with malloc; the text moves to skein's allocator. */
    char *p = mem_alloc((size_t)len + 1);
    if (p) {
        memcpy(p, res, (size_t)len);
        p[len] = 0;
    }
    free(res);
    if (!p) return SK_ENOMEM;
    *out = p;
    *out_n = (size_t)len;
    return SK_OK;
}

sk_status tok_normalize(const tok *t, const char *s, size_t n, char **out, size_t *out_n) {
    char *cur = NULL;
    size_t cn = n;
    for (int i = 0; i < t->n_norm; i++) {
        char *next;
        size_t nn;
        sk_status st = norm_step(&t->norm[i], cur ? cur : s, cn, &next, &nn);
        if (st != SK_OK) { mem_free(cur); return st; }
        if (!next) continue;
        mem_free(cur);
        cur = next;
        cn = nn;
    }
    *out = cur;
    *out_n = cur ? cn : n;
    return SK_OK;
}
