/* tok_json: reading and writing Hugging Face tokenizer.json files (cJSON).
 *
 * Read: model of type BPE (vocab, merges as "a b" strings or ["a", "b"] pairs, unk_token,
 * ignore_merges), added_tokens, and a pre-tokenizer that is ByteLevel or a Sequence of an
 * optional Split (Regex or String pattern, behavior Isolated) followed by ByteLevel.
 * Anything else that would change the ids (another model type, a normalizer, dropout,
 * subword prefixes) is refused with a message naming the file and the field.
 *
 * Write: the document as loaded (post_processor, decoder, truncation, padding, ... kept as
 * they were), with "model" and "added_tokens" written afresh from the tok. A trained tok
 * starts from GPT-2's layout (tok_default_doc). */
#include "tokenizer/tok_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static sk_status read_pre_tokenizer(tok *t, const cJSON *pt, const char *path) {
    const char *ty = cJSON_IsObject(pt) ? type_of(pt) : NULL;
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
        return sk_fail(SK_EFORMAT, "%s: pre_tokenizer Sequence is not supported (skein reads [Split,] ByteLevel)", path);
    }
    return sk_fail(SK_EFORMAT, "%s: pre_tokenizer %s is not supported (skein reads byte-level BPE: ByteLevel)",
                   path, ty ? ty : pt && !cJSON_IsNull(pt) ? "of unknown type" : "null");
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

static sk_status load_doc(tok *t, cJSON *doc, const char *path) {
    if (!cJSON_IsObject(doc)) return sk_fail(SK_EFORMAT, "%s: not a JSON object", path);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(doc, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const char *ty = type_of(norm);
        return sk_fail(SK_EFORMAT, "%s: normalizer %s is not supported (skein reads byte-level BPE without one)",
                       path, ty ? ty : "of unknown type");
    }
    SK_TRY(read_model(t, cJSON_GetObjectItemCaseSensitive(doc, "model"), path));
    SK_TRY(read_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(doc, "pre_tokenizer"), path));
    SK_TRY(read_added(t, cJSON_GetObjectItemCaseSensitive(doc, "added_tokens"), path));
    if (t->n_ids == 0) return sk_fail(SK_EFORMAT, "%s: the vocabulary is empty", path);
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
    cJSON_AddFalseToObject(m, "fuse_unk");
    cJSON_AddFalseToObject(m, "byte_fallback");
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
