/* tok_json: reading and writing Hugging Face tokenizer.json files (cJSON), and the
 * add_bos_token / add_eos_token of tokenizer_config.json.
 *
 * Read: model of type BPE (vocab, merges as "a b" strings or ["a", "b"] pairs, unk_token,
 * fuse_unk, byte_fallback, ignore_merges), added_tokens, the normalizer, the pre-tokenizer,
 * the post-processor and the decoder in the forms tok.h lists. Anything else that would
 * change the ids or the text is refused with a message naming the file and the field.
 *
 * Write: the document as loaded (post_processor, decoder, truncation, padding, ... kept as
 * they were), with "model" and "added_tokens" written afresh from the tok. A trained tok
 * starts from GPT-2's layout (tok_default_doc). */
#include "tokenizer/tok_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/json.h"

/* GPT-2's tokenizer.json around its model: what HF writes for a byte-level BPE. */
static const char default_doc[] =
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":false,\"use_regex\":true},"
    "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
    "\"model\":null}";

cJSON *tok_default_doc(void) { return cJSON_Parse(default_doc); }

static const char *type_of(const cJSON *obj) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static sk_status read_bytelevel(tok *t, const cJSON *pt, const char *path) {
    t->prefix_space = true;   /* HF's defaults for a ByteLevel without these fields */
    t->use_regex = true;
    SK_TRY(json_get_bool(pt, "add_prefix_space", false, path, &t->prefix_space));
    SK_TRY(json_get_bool(pt, "use_regex", false, path, &t->use_regex));
    return SK_OK;
}

static sk_status read_split(tok *t, const cJSON *sp, const char *path) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(sp, "pattern");
    const char *behavior = "Isolated";
    bool invert = false;
    SK_TRY(json_get_string(sp, "behavior", false, path, &behavior));
    SK_TRY(json_get_bool(sp, "invert", false, path, &invert));
    if (strcmp(behavior, "Isolated") || invert)
        return sk_fail(SK_EFORMAT, "%s: pre_tokenizer Split with behavior %s%s is not supported (only Isolated)",
                       path, behavior, invert ? " and invert" : "");
    const char *regex = NULL, *literal = NULL;
    if (cJSON_IsObject(pat)) {
        SK_TRY(json_get_string(pat, "Regex", false, path, &regex));
        SK_TRY(json_get_string(pat, "String", false, path, &literal));
    }
    if (!regex && !literal) return sk_fail(SK_EFORMAT, "%s: pre_tokenizer Split has no pattern Regex or String", path);
    t->has_split = true;
    return tok_regex_compile(&t->split_re, regex ? regex : literal, !regex, path);
}

/* Metaspace, as pre-tokenizer or decoder: replacement, prepend_scheme or the older
 * add_prefix_space (false: never; true: the scheme given, else always), split (default true). */
static sk_status read_metaspace(tok *t, const cJSON *m, const char *path, const char *what) {
    const char *rep = "\xe2\x96\x81", *scheme = NULL;
    bool aps = true, split = true;
    SK_TRY(json_get_string(m, "replacement", false, path, &rep));
    SK_TRY(json_get_string(m, "prepend_scheme", false, path, &scheme));
    SK_TRY(json_get_bool(m, "add_prefix_space", false, path, &aps));
    SK_TRY(json_get_bool(m, "split", false, path, &split));
    size_t sub;
    if (!*rep || strlen(rep) >= sizeof t->meta_rep || tok_utf8_seq((const unsigned char *)rep, strlen(rep), &sub) != strlen(rep))
        return sk_fail(SK_EFORMAT, "%s: %s Metaspace replacement \"%s\" is not one character", path, what, rep);
    int sc = TOK_PREPEND_ALWAYS;
    if (scheme && !strcmp(scheme, "first")) sc = TOK_PREPEND_FIRST;
    else if (scheme && !strcmp(scheme, "never")) sc = TOK_PREPEND_NEVER;
    else if (scheme && strcmp(scheme, "always"))
        return sk_fail(SK_EFORMAT, "%s: %s Metaspace prepend_scheme \"%s\" is not always, first or never", path, what, scheme);
    if (!aps) sc = TOK_PREPEND_NEVER;
    if (!strcmp(what, "pre_tokenizer")) {
        t->pre = TOK_PRE_METASPACE;
        t->meta_scheme = sc;
        t->meta_split = split;
        strcpy(t->meta_rep, rep);
    } else {
        if (t->pre == TOK_PRE_METASPACE && strcmp(t->meta_rep, rep))
            return sk_fail(SK_EFORMAT, "%s: decoder Metaspace replacement differs from the pre_tokenizer's", path);
        strcpy(t->meta_rep, rep);
        t->dec_meta = true;
        t->dec_meta_first = sc != TOK_PREPEND_NEVER;
    }
    return SK_OK;
}

static sk_status read_pre_tokenizer(tok *t, const cJSON *pt, const char *path) {
    const char *ty = cJSON_IsObject(pt) ? type_of(pt) : NULL;
    t->pre = TOK_PRE_BYTELEVEL;
    if (!pt || cJSON_IsNull(pt)) { t->pre = TOK_PRE_NONE; return SK_OK; }
    if (ty && !strcmp(ty, "Metaspace")) return read_metaspace(t, pt, path, "pre_tokenizer");
    if (ty && !strcmp(ty, "ByteLevel")) return read_bytelevel(t, pt, path);
    if (ty && !strcmp(ty, "Sequence")) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        int n = cJSON_IsArray(seq) ? cJSON_GetArraySize(seq) : 0;
        const cJSON *last = n ? cJSON_GetArrayItem(seq, n - 1) : NULL;
        const char *lt = last ? type_of(last) : NULL;
        const cJSON *first = n == 2 ? cJSON_GetArrayItem(seq, 0) : NULL;
        const char *ft = first ? type_of(first) : NULL;
        if (lt && !strcmp(lt, "ByteLevel") && (n == 1 || (ft && !strcmp(ft, "Split") && n == 2))) {
            if (n == 2) SK_TRY(read_split(t, first, path));
            return read_bytelevel(t, last, path);
        }
        if (n == 1 && lt && !strcmp(lt, "Metaspace")) return read_metaspace(t, last, path, "pre_tokenizer");
        return sk_fail(SK_EFORMAT, "%s: pre_tokenizer Sequence is not supported (skein reads [Split,] ByteLevel)", path);
    }
    return sk_fail(SK_EFORMAT, "%s: pre_tokenizer %s is not supported (skein reads ByteLevel, Metaspace or none)",
                   path, ty ? ty : "of unknown type");
}

/* Reads one entry of "merges" into its two token ids. */
static sk_status read_merge(tok *t, const cJSON *m, int rank, const char *path, int32_t *l, int32_t *r) {
    const char *a = NULL, *b = NULL;
    char buf[512], *own = NULL;
    if (cJSON_IsString(m)) {
        /* "a b": exactly one space, as HF requires */
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return sk_fail(SK_EFORMAT, "%s: merge %d \"%s\" is not two tokens separated by one space", path, rank + 1, s);
        size_t n = strlen(s);
        char *c = n < sizeof buf ? buf : (own = mem_alloc(n + 1));
        if (!c) return SK_ENOMEM;
        memcpy(c, s, n + 1);
        c[sp - s] = 0;
        a = c;
        b = c + (sp - s) + 1;
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        a = cJSON_GetArrayItem(m, 0)->valuestring;
        b = cJSON_GetArrayItem(m, 1)->valuestring;
    } else {
        return sk_fail(SK_EFORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", path, rank + 1);
    }
    *l = tok_strmap_get(&t->vocab, a, strlen(a));
    *r = tok_strmap_get(&t->vocab, b, strlen(b));
    sk_status st = SK_OK;
    if (*l < 0 || *r < 0)
        st = sk_fail(SK_EFORMAT, "%s: merge %d uses token \"%s\" missing from the vocabulary", path, rank + 1,
                     *l < 0 ? a : b);
    mem_free(own);
    return st;
}

static sk_status read_model(tok *t, const cJSON *model, const char *path) {
    if (!cJSON_IsObject(model)) return sk_fail(SK_EFORMAT, "%s: missing field \"model\"", path);
    const char *ty = type_of(model);
    if (ty && strcmp(ty, "BPE"))
        return sk_fail(SK_EFORMAT, "%s: model type %s is not supported (skein reads byte-level BPE)", path, ty);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) return sk_fail(SK_EFORMAT, "%s: model has no \"vocab\" object", path);
    if (!cJSON_IsArray(merges)) return sk_fail(SK_EFORMAT, "%s: model has no \"merges\" list", path);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const char *f = affixes[i], *v = NULL;
        SK_TRY(json_get_string(model, f, false, path, &v));
        if (v && *v) return sk_fail(SK_EFORMAT, "%s: model.%s \"%s\" is not supported (byte-level BPE has none)", path, f, v);
    }
    double dropout = 0;
    SK_TRY(json_get_double(model, "dropout", false, path, &dropout));
    if (dropout != 0) return sk_fail(SK_EFORMAT, "%s: model.dropout %g is not supported (encoding would be random)", path, dropout);
    SK_TRY(json_get_bool(model, "ignore_merges", false, path, &t->ignore_merges));
    SK_TRY(json_get_bool(model, "byte_fallback", false, path, &t->byte_fallback));
    SK_TRY(json_get_bool(model, "fuse_unk", false, path, &t->fuse_unk));

    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        double id = v->valuedouble;
        if (!cJSON_IsNumber(v) || id < 0 || id >= (1 << 24) || id != (double)(int32_t)id)
            return sk_fail(SK_EFORMAT, "%s: vocab entry \"%s\" has no valid id", path, v->string);
        SK_TRY(tok_set_token(t, (int32_t)id, v->string, false));
        SK_TRY(tok_strmap_put(&t->vocab, v->string, strlen(v->string), (int32_t)id));
    }
    int rank = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        int32_t l, r;
        SK_TRY(read_merge(t, m, rank, path, &l, &r));
        SK_TRY(tok_add_merge(t, l, r, path));
        rank++;
    }
    const char *unk = NULL;
    SK_TRY(json_get_string(model, "unk_token", false, path, &unk));
    if (unk) t->unk_id = tok_strmap_get(&t->vocab, unk, strlen(unk));
    return SK_OK;
}

static sk_status read_added(tok *t, const cJSON *list, const char *path) {
    if (!list || cJSON_IsNull(list)) return SK_OK;
    if (!cJSON_IsArray(list)) return sk_fail(SK_EFORMAT, "%s: \"added_tokens\" is not a list", path);
    const cJSON *it;
    int k = 0;
    cJSON_ArrayForEach(it, list) {
        char what[600];
        snprintf(what, sizeof what, "%s: added_tokens[%d]", path, k++);
        long id = -1;
        const char *content = NULL;
        tok_added a = {0};
        SK_TRY(json_get_int(it, "id", true, what, &id));
        SK_TRY(json_get_string(it, "content", true, what, &content));
        if (id < 0 || id >= (1 << 24)) return sk_fail(SK_EFORMAT, "%s: id %ld out of range", what, id);
        SK_TRY(json_get_bool(it, "special", false, what, &a.special));
        a.normalized = !a.special;
        SK_TRY(json_get_bool(it, "single_word", false, what, &a.single_word));
        SK_TRY(json_get_bool(it, "lstrip", false, what, &a.lstrip));
        SK_TRY(json_get_bool(it, "rstrip", false, what, &a.rstrip));
        SK_TRY(json_get_bool(it, "normalized", false, what, &a.normalized));
        a.content = (char *)content;
        a.len = strlen(content);
        a.id = (int32_t)id;
        SK_TRY(tok_add_added(t, &a));
    }
    return SK_OK;
}

/* Replaces obj[key] by a placeholder null, so that save can put the new value in its place. */
static void detach(cJSON *obj, const char *key) {
    if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, cJSON_CreateNull());
}

/* A string field that may be missing (NULL). */
static char *dup_str(const char *s) {
    size_t n = strlen(s);
    char *c = mem_alloc(n + 1);
    if (c) memcpy(c, s, n + 1);
    return c;
}

/* The String of a Replace pattern; Regex patterns are refused. */
static sk_status replace_pattern(const cJSON *r, const char *path, const char *what, const char **pat, const char **content) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(r, "pattern");
    const char *re = NULL;
    *pat = NULL;
    if (cJSON_IsObject(p)) {
        SK_TRY(json_get_string(p, "String", false, path, pat));
        SK_TRY(json_get_string(p, "Regex", false, path, &re));
    }
    if (re) return sk_fail(SK_EFORMAT, "%s: %s Replace with a Regex pattern (/%s/) is not supported (only String)", path, what, re);
    if (!*pat || !**pat) return sk_fail(SK_EFORMAT, "%s: %s Replace has no pattern String", path, what);
    return json_get_string(r, "content", true, path, content);
}

static sk_status add_norm(tok *t, int kind, const char *a, const char *b) {
    void *p = mem_realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *t->norm);
    if (!p) return SK_ENOMEM;
    t->norm = p;
    tok_norm *n = &t->norm[t->n_norm++];
    n->kind = kind;
    n->a = a ? dup_str(a) : NULL;
    n->b = b ? dup_str(b) : NULL;
    if ((a && !n->a) || (b && !n->b)) return SK_ENOMEM;
    return SK_OK;
}

static sk_status read_normalizer(tok *t, const cJSON *nm, const char *path, int depth) {
    if (!nm || cJSON_IsNull(nm)) return SK_OK;
    const char *ty = cJSON_IsObject(nm) ? type_of(nm) : NULL;
    if (!ty) return sk_fail(SK_EFORMAT, "%s: normalizer of unknown type", path);
    if (!strcmp(ty, "Sequence") && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nm, "normalizers"), *it;
        if (!cJSON_IsArray(list)) return sk_fail(SK_EFORMAT, "%s: normalizer Sequence has no \"normalizers\" list", path);
        cJSON_ArrayForEach(it, list) SK_TRY(read_normalizer(t, it, path, depth + 1));
        return SK_OK;
    }
    if (!strcmp(ty, "Prepend")) {
        const char *pre;
        SK_TRY(json_get_string(nm, "prepend", true, path, &pre));
        return add_norm(t, TOK_NORM_PREPEND, pre, NULL);
    }
    if (!strcmp(ty, "Replace")) {
        const char *pat, *content;
        SK_TRY(replace_pattern(nm, path, "normalizer", &pat, &content));
        return add_norm(t, TOK_NORM_REPLACE, pat, content);
    }
    static const char *const forms[] = {"NFC", "NFD", "NFKC", "NFKD"};
    static const int kinds[] = {TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD};
    for (int i = 0; i < 4; i++)
        if (!strcmp(ty, forms[i])) return add_norm(t, kinds[i], NULL, NULL);
    return sk_fail(SK_EFORMAT, "%s: normalizer %s is not supported (skein reads Prepend, Replace, NFC, NFD, NFKC, "
                               "NFKD and Sequences of them)", path, ty);
}

/* The decoder: ByteLevel, or the steps of a SentencePiece-style chain in their order. */
static sk_status read_decoder(tok *t, const cJSON *dec, const char *path) {
    t->dec_strip_char = ' ';
    t->dec_bytelevel = false;
    if (!dec || cJSON_IsNull(dec)) {
        t->dec_bytelevel = t->pre == TOK_PRE_BYTELEVEL;   /* keeps what skein always did for these */
        t->dec_join_space = !t->dec_bytelevel;
        return SK_OK;
    }
    const char *ty = cJSON_IsObject(dec) ? type_of(dec) : NULL;
    if (ty && !strcmp(ty, "ByteLevel")) { t->dec_bytelevel = true; return SK_OK; }
    const cJSON *one[1] = {dec}, *it;
    const cJSON *list = NULL;
    if (ty && !strcmp(ty, "Sequence")) {
        list = cJSON_GetObjectItemCaseSensitive(dec, "decoders");
        if (!cJSON_IsArray(list)) return sk_fail(SK_EFORMAT, "%s: decoder Sequence has no \"decoders\" list", path);
    }
    /* stage: 0 per-token steps, 1 after ByteFallback, 2 after Fuse, 3 after Strip */
    int stage = 0, k = 0, n = list ? cJSON_GetArraySize(list) : 1;
    for (int i = 0; i < n; i++) {
        it = list ? cJSON_GetArrayItem(list, i) : one[0];
        const char *st = cJSON_IsObject(it) ? type_of(it) : NULL;
        k++;
        if (st && !strcmp(st, "Replace") && stage == 0) {
            const char *pat, *content;
            SK_TRY(replace_pattern(it, path, "decoder", &pat, &content));
            void *p = mem_realloc(t->dec_repl, (size_t)(t->n_dec_repl + 1) * sizeof *t->dec_repl);
            if (!p) return SK_ENOMEM;
            t->dec_repl = p;
            tok_decstep *d = &t->dec_repl[t->n_dec_repl++];
            d->pattern = dup_str(pat);
            d->content = dup_str(content);
            if (!d->pattern || !d->content) return SK_ENOMEM;
        } else if (st && !strcmp(st, "Metaspace") && stage == 0 && !t->dec_meta) {
            SK_TRY(read_metaspace(t, it, path, "decoder"));
        } else if (st && !strcmp(st, "ByteFallback") && stage == 0) {
            t->dec_byte_fallback = true;
            stage = 1;
        } else if (st && !strcmp(st, "Fuse") && stage <= 1) {
            stage = 2;
        } else if (st && !strcmp(st, "Strip") && stage == 2) {
            const char *content = " ";
            long start = 0, stop = 0;
            SK_TRY(json_get_string(it, "content", false, path, &content));
            SK_TRY(json_get_int(it, "start", false, path, &start));
            SK_TRY(json_get_int(it, "stop", false, path, &stop));
            size_t sub, cl = strlen(content);
            if (!cl || tok_utf8_seq((const unsigned char *)content, cl, &sub) != cl || start < 0 || stop < 0 ||
                start > 1000 || stop > 1000)
                return sk_fail(SK_EFORMAT, "%s: decoder Strip needs one content character and small start/stop", path);
            tok_utf8_decode((const unsigned char *)content, &t->dec_strip_char);
            t->dec_strip_start = (int)start;
            t->dec_strip_stop = (int)stop;
            stage = 3;
        } else {
            return sk_fail(SK_EFORMAT, "%s: decoder %s%s%s is not supported (skein reads ByteLevel, Metaspace, or "
                                       "Replace/Metaspace, ByteFallback, Fuse, Strip in that order)",
                           path, list ? "Sequence step " : "", st ? st : "of unknown type",
                           list ? (k == 1 ? " (first)" : " (out of order)") : "");
        }
    }
    return SK_OK;
}

/* The ids of a TemplateProcessing special token, by name, from its special_tokens map. */
static sk_status template_ids(tok *t, const cJSON *tp, const char *name, const char *path, int32_t *ids, int *n, int cap) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tp, "special_tokens"), name);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(sp, "ids"), *v;
    if (!cJSON_IsArray(list))
        return sk_fail(SK_EFORMAT, "%s: post_processor TemplateProcessing has no special_tokens entry for \"%s\"", path, name);
    cJSON_ArrayForEach(v, list) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (1 << 24) ||
            v->valuedouble != (double)(int32_t)v->valuedouble || *n >= cap)
            return sk_fail(SK_EFORMAT, "%s: post_processor special token \"%s\" has a bad id list", path, name);
        ids[(*n)++] = (int32_t)v->valuedouble;
    }
    (void)t;
    return SK_OK;
}

static sk_status read_post(tok *t, const cJSON *pp, const char *path, int depth) {
    if (!pp || cJSON_IsNull(pp)) return SK_OK;
    const char *ty = cJSON_IsObject(pp) ? type_of(pp) : NULL;
    if (ty && !strcmp(ty, "ByteLevel")) return SK_OK;   /* offsets only */
    if (ty && !strcmp(ty, "Sequence") && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pp, "processors"), *it;
        if (!cJSON_IsArray(list)) return sk_fail(SK_EFORMAT, "%s: post_processor Sequence has no \"processors\" list", path);
        cJSON_ArrayForEach(it, list) SK_TRY(read_post(t, it, path, depth + 1));
        return SK_OK;
    }
    if (ty && !strcmp(ty, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single"), *it;
        if (!cJSON_IsArray(single)) return sk_fail(SK_EFORMAT, "%s: post_processor TemplateProcessing has no \"single\" list", path);
        bool seen_a = false;
        t->n_post_pre = t->n_post_post = 0;
        cJSON_ArrayForEach(it, single) {
            const cJSON *spt = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            const cJSON *seq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
            const char *id = NULL;
            if (spt) {
                SK_TRY(json_get_string(spt, "id", true, path, &id));
                if (seen_a) SK_TRY(template_ids(t, pp, id, path, t->post_post, &t->n_post_post, 8));
                else SK_TRY(template_ids(t, pp, id, path, t->post_pre, &t->n_post_pre, 8));
            } else if (seq) {
                SK_TRY(json_get_string(seq, "id", true, path, &id));
                if (strcmp(id, "A") || seen_a)
                    return sk_fail(SK_EFORMAT, "%s: post_processor TemplateProcessing single has sequence %s (only one A)", path, id);
                seen_a = true;
            } else {
                return sk_fail(SK_EFORMAT, "%s: post_processor TemplateProcessing single has an item that is neither "
                                           "SpecialToken nor Sequence", path);
            }
        }
        if (!seen_a) return sk_fail(SK_EFORMAT, "%s: post_processor TemplateProcessing single has no $A", path);
        return SK_OK;
    }
    return sk_fail(SK_EFORMAT, "%s: post_processor %s is not supported (skein reads ByteLevel, TemplateProcessing "
                               "and Sequences of them)", path, ty ? ty : "of unknown type");
}

static sk_status load_doc(tok *t, cJSON *doc, const char *path) {
    if (!cJSON_IsObject(doc)) return sk_fail(SK_EFORMAT, "%s: not a JSON object", path);
    SK_TRY(read_normalizer(t, cJSON_GetObjectItemCaseSensitive(doc, "normalizer"), path, 0));
    SK_TRY(read_model(t, cJSON_GetObjectItemCaseSensitive(doc, "model"), path));
    SK_TRY(read_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(doc, "pre_tokenizer"), path));
    SK_TRY(read_decoder(t, cJSON_GetObjectItemCaseSensitive(doc, "decoder"), path));
    SK_TRY(read_post(t, cJSON_GetObjectItemCaseSensitive(doc, "post_processor"), path, 0));
    SK_TRY(read_added(t, cJSON_GetObjectItemCaseSensitive(doc, "added_tokens"), path));
    if (t->n_ids == 0) return sk_fail(SK_EFORMAT, "%s: the vocabulary is empty", path);
    /* The post-processor's ids go straight into encodings (and to the model): each must be a
     * token of this vocabulary. */
    for (int i = 0; i < t->n_post_pre + t->n_post_post; i++) {
        int32_t id = i < t->n_post_pre ? t->post_pre[i] : t->post_post[i - t->n_post_pre];
        if (id >= t->n_ids || !t->id_str[id])
            return sk_fail(SK_EFORMAT, "%s: post_processor special token id %d is not in the vocabulary (%d ids)", path,
                           id, t->n_ids);
    }
    return tok_finish(t);
}

sk_status tok_load(const char *path, tok **out) {
    cJSON *doc;
    SK_TRY(json_load_file(path, &doc));
    tok *t = NULL;
    sk_status st = tok_new(&t);
    if (st == SK_OK) st = load_doc(t, doc, path);
    if (st != SK_OK) {
        cJSON_Delete(doc);
        tok_free(t);
        return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "%s: out of memory loading the tokenizer", path) : st;
    }
    detach(doc, "model");
    detach(doc, "added_tokens");
    t->doc = doc;
    *out = t;
    return SK_OK;
}

/* ---- save ---------------------------------------------------------------------------------- */

static const tok_strmap *sort_map;
static int by_id(const void *a, const void *b) {
    int32_t x = sort_map->ents[*(const uint32_t *)a].val, y = sort_map->ents[*(const uint32_t *)b].val;
    return (x > y) - (x < y);
}

static cJSON *build_model(const tok *t) {
    cJSON *m = cJSON_CreateObject();
    if (!m) return NULL;
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    if (t->unk_id >= 0) cJSON_AddStringToObject(m, "unk_token", t->id_str[t->unk_id]);
    else cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddNullToObject(m, "continuing_subword_prefix");
    cJSON_AddNullToObject(m, "end_of_word_suffix");
    cJSON_AddBoolToObject(m, "fuse_unk", t->fuse_unk);
    cJSON_AddBoolToObject(m, "byte_fallback", t->byte_fallback);
    cJSON_AddBoolToObject(m, "ignore_merges", t->ignore_merges);
    cJSON *vocab = cJSON_AddObjectToObject(m, "vocab");
    cJSON *merges = cJSON_AddArrayToObject(m, "merges");
    uint32_t *order = mem_alloc((t->vocab.n + 1) * sizeof *order);
    if (!vocab || !merges || !order) { mem_free(order); cJSON_Delete(m); return NULL; }
    for (size_t i = 0; i < t->vocab.n; i++) order[i] = (uint32_t)i;
    sort_map = &t->vocab;   /* qsort has no context argument in C11 */
    qsort(order, t->vocab.n, sizeof *order, by_id);
    for (size_t i = 0; i < t->vocab.n; i++) {
        const struct tok_strent *e = &t->vocab.ents[order[i]];
        cJSON_AddItemToObject(vocab, t->vocab.pool + e->off, cJSON_CreateNumber(e->val));
    }
    mem_free(order);
    for (int i = 0; i < t->n_merges; i++) {
        const char *pair[2] = {t->id_str[t->merge_list[i][0]], t->id_str[t->merge_list[i][1]]};
        cJSON_AddItemToArray(merges, cJSON_CreateStringArray(pair, 2));
    }
    return m;
}

static cJSON *build_added(const tok *t) {
    cJSON *list = cJSON_CreateArray();
    for (int i = 0; list && i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", a->id);
        cJSON_AddStringToObject(o, "content", a->content);
        cJSON_AddBoolToObject(o, "single_word", a->single_word);
        cJSON_AddBoolToObject(o, "lstrip", a->lstrip);
        cJSON_AddBoolToObject(o, "rstrip", a->rstrip);
        cJSON_AddBoolToObject(o, "normalized", a->normalized);
        cJSON_AddBoolToObject(o, "special", a->special);
        cJSON_AddItemToArray(list, o);
    }
    return list;
}

static void put(cJSON *doc, const char *key, cJSON *item) {
    if (cJSON_GetObjectItemCaseSensitive(doc, key)) cJSON_ReplaceItemInObjectCaseSensitive(doc, key, item);
    else cJSON_AddItemToObject(doc, key, item);
}

sk_status tok_save(const tok *t, const char *path) {
    cJSON *doc = t->doc ? cJSON_Duplicate(t->doc, 1) : tok_default_doc();
    cJSON *model = build_model(t), *added = build_added(t);
    if (!doc || !model || !added) {
        cJSON_Delete(doc);
        cJSON_Delete(model);
        cJSON_Delete(added);
        return sk_fail(SK_ENOMEM, "out of memory writing %s", path);
    }
    put(doc, "added_tokens", added);
    put(doc, "model", model);
    sk_status st = json_save_file(path, doc);
    cJSON_Delete(doc);
    return st;
}

/* ---- tokenizer_config.json ------------------------------------------------------------------ */

/* A special token named in tokenizer_config.json: a string or {"content": ...}; NULL if absent. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

sk_status tok_load_config(tok *t, const char *path) {
    if (access(path, F_OK) != 0) return SK_OK;
    cJSON *cfg;
    SK_TRY(json_load_file(path, &cfg));
    sk_status st = SK_OK;
    const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
    const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
    if (cJSON_IsBool(ab) || cJSON_IsBool(ae)) {
        /* transformers rebuilds the post-processor from these: bos? $A eos? */
        int32_t pre = -1, post = -1;
        const char *names[2] = {config_token(cfg, "bos_token"), config_token(cfg, "eos_token")};
        bool want[2] = {cJSON_IsTrue(ab), cJSON_IsTrue(ae)};
        int32_t *dst[2] = {&pre, &post};
        for (int i = 0; i < 2 && st == SK_OK; i++) {
            if (!want[i] || !names[i]) continue;   /* transformers: no token, nothing added */
            *dst[i] = tok_token_id(t, names[i]);
            if (*dst[i] < 0)
                st = sk_fail(SK_EFORMAT, "%s: %s \"%s\" is not in the tokenizer's vocabulary", path,
                             i ? "eos_token" : "bos_token", names[i]);
        }
        if (st == SK_OK) {
            t->n_post_pre = pre >= 0;
            t->post_pre[0] = pre;
            t->n_post_post = post >= 0;
            t->post_post[0] = post;
        }
    }
    cJSON_Delete(cfg);
    return st;
}
