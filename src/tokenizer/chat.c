/* chat: the built-in chat templates, their recognition from tokenizer_config.json, and
 * conversation files (see chat.h). Each renderer follows its family's Jinja template line by
 * line; Jinja's `trim` and Python's str.strip() strip what Python's str.isspace() accepts. */
#include "tokenizer/chat.h"

#include <string.h>

#include <cJSON.h>

#include "base/json.h"
#include "tokenizer/tok_impl.h"

const char chat_template_names[] = "llama3, llama2, chatml, mistral";

static const struct { const char *name, *bos, *eos; chat_family fam; } families[] = {
    {"llama3", "<|begin_of_text|>", "<|eot_id|>", CHAT_LLAMA3},
    {"llama2", "<s>", "</s>", CHAT_LLAMA2},
    {"chatml", "", "<|im_end|>", CHAT_CHATML},
    {"mistral", "<s>", "</s>", CHAT_MISTRAL},
};

static char *dup_n(const char *s, size_t n) {
    char *c = mem_alloc(n + 1);
    if (!c) return NULL;
    memcpy(c, s, n);
    c[n] = 0;
    return c;
}

static sk_status fill(chat_template *out, chat_family fam, const char *bos, const char *eos, const char *sys) {
    memset(out, 0, sizeof *out);
    out->family = fam;
    const char *dbos = "", *deos = "";
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (families[i].fam == fam) { dbos = families[i].bos; deos = families[i].eos; }
    if (!bos) bos = dbos;
    if (!eos) eos = deos;
    out->bos = dup_n(bos, strlen(bos));
    out->eos = dup_n(eos, strlen(eos));
    out->default_system = sys ? dup_n(sys, strlen(sys)) : NULL;
    if (!out->bos || !out->eos || (sys && !out->default_system)) {
        chat_template_free(out);
        return sk_fail(SK_ENOMEM, "out of memory for a chat template");
    }
    return SK_OK;
}

void chat_template_free(chat_template *ct) {
    mem_free(ct->bos);
    mem_free(ct->eos);
    mem_free(ct->default_system);
    memset(ct, 0, sizeof *ct);
}

sk_status chat_template_named(const char *name, chat_template *out) {
    for (size_t i = 0; i < sizeof families / sizeof *families; i++)
        if (!strcmp(name, families[i].name))
            return fill(out, families[i].fam, NULL, NULL,
                        families[i].fam == CHAT_CHATML ? "You are a helpful assistant." : NULL);
    return sk_fail(SK_EARG, "chat template '%s' is not one skein knows (%s)", name, chat_template_names);
}

/* The default system prompt a ChatML template writes when the conversation has none: the
 * literal after "<|im_start|>system\n" up to "<|im_end|>", with Jinja's \n escapes read. */
static char *chatml_default_system(const char *jinja) {
    static const char *const marks[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int m = 0; m < 2; m++) {
        const char *p = strstr(jinja, marks[m]);
        if (!p) continue;
        p += strlen(marks[m]);
        const char *end = strstr(p, "<|im_end|>");
        if (!end || end == p) continue;
        size_t n = (size_t)(end - p);
        if (memchr(p, '{', n) || memchr(p, '\'', n) || memchr(p, '"', n) || memchr(p, '+', n)) continue;
        char *s = mem_alloc(n + 1);
        if (!s) return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] == '\\' && i + 1 < n && p[i + 1] == 'n') { s[k++] = '\n'; i++; }
            else s[k++] = p[i];
        }
        s[k] = 0;
        return s;
    }
    return NULL;
}

sk_status chat_template_detect(const char *jinja, const char *bos, const char *eos, const char *what,
                               chat_template *out) {
    chat_family fam;
    if (strstr(jinja, "<|start_header_id|>")) fam = CHAT_LLAMA3;
    else if (strstr(jinja, "<|im_start|>")) fam = CHAT_CHATML;
    else if (strstr(jinja, "<<SYS>>")) fam = CHAT_LLAMA2;
    else if (strstr(jinja, "[INST]")) fam = CHAT_MISTRAL;
    else
        return sk_fail(SK_EFORMAT, "%s: chat_template is not one skein recognizes (%s); pass --chat-template NAME",
                       what, chat_template_names);
    char *sys = fam == CHAT_CHATML ? chatml_default_system(jinja) : NULL;
    sk_status st = fill(out, fam, bos, eos, sys);
    mem_free(sys);
    return st;
}

/* A special token of tokenizer_config.json: a string or {"content": ...}; NULL if absent or null. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

sk_status chat_template_load(const char *config_path, const char *name, chat_template *out) {
    cJSON *cfg = NULL;
    sk_status st = json_load_file(config_path, &cfg);
    if (st != SK_OK) {
        if (!name) return st;
        return chat_template_named(name, out);   /* no config: the family's usual tokens */
    }
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *jinja = cJSON_IsString(ct) ? ct->valuestring : NULL;
    if (cJSON_IsArray(ct)) {   /* [{"name": "default", "template": ...}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (cJSON_IsString(nm) && cJSON_IsString(tp) && !strcmp(nm->valuestring, "default")) jinja = tp->valuestring;
        }
    }
    if (name) {
        st = chat_template_named(name, out);
        if (st == SK_OK) {
            chat_family fam = out->family;
            char *sys = out->default_system ? dup_n(out->default_system, strlen(out->default_system)) : NULL;
            chat_template_free(out);
            if (fam == CHAT_CHATML && jinja && strstr(jinja, "<|im_start|>")) {
                mem_free(sys);
                sys = chatml_default_system(jinja);
            }
            st = fill(out, fam, bos, eos, sys);
            mem_free(sys);
        }
    } else if (!jinja) {
        st = sk_fail(SK_EARG, "%s: no chat_template; pass --chat-template NAME (%s)", config_path, chat_template_names);
    } else {
        st = chat_template_detect(jinja, bos, eos, config_path, out);
    }
    cJSON_Delete(cfg);
    return st;
}

/* ---- rendering ------------------------------------------------------------------------------ */

typedef struct sbuf { char *p; size_t n, cap; bool oom; } sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = mem_realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

/* Python's str.isspace(). */
static bool py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Writes s without the leading and trailing whitespace Python's strip() removes. Content is
 * valid UTF-8 here (chat_render checks). */
static void put_stripped(sbuf *b, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), start = 0, end = n;
    while (start < n) {
        uint32_t cp;
        size_t k = tok_utf8_decode(u + start, &cp);
        if (!py_space(cp)) break;
        start += k;
    }
    while (end > start) {
        size_t p = end - 1;
        while (p > start && (u[p] & 0xc0) == 0x80) p--;
        uint32_t cp;
        tok_utf8_decode(u + p, &cp);
        if (!py_space(cp)) break;
        end = p;
    }
    put(b, s + start, end - start);
}

static bool valid_utf8(const char *s) {
    size_t n = strlen(s), sub;
    for (size_t i = 0; i < n;) {
        size_t k = tok_utf8_seq((const unsigned char *)s + i, n - i, &sub);
        if (!k) return false;
        i += k;
    }
    return true;
}

static sk_status alternate_error(const char *msg) { return sk_fail(SK_EARG, "chat template: %s", msg); }

sk_status chat_render(const chat_template *ct, const chat_msg *msgs, int n, bool gen, char **out, size_t *len) {
    if (n <= 0) return sk_fail(SK_EARG, "chat template: the conversation has no messages");
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content || !valid_utf8(msgs[i].role) || !valid_utf8(msgs[i].content))
            return sk_fail(SK_EARG, "chat template: message %d has no role or content, or is not UTF-8", i);
    sbuf b = {0};
    sk_status st = SK_OK;
    bool has_sys = !strcmp(msgs[0].role, "system");
    const chat_msg *loop = has_sys ? msgs + 1 : msgs;
    int nl = has_sys ? n - 1 : n;
    switch (ct->family) {
    case CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0) puts_(&b, ct->bos);
            puts_(&b, "<|start_header_id|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "<|end_header_id|>\n\n");
            put_stripped(&b, msgs[i].content);
            puts_(&b, "<|eot_id|>");
        }
        if (gen) puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case CHAT_LLAMA2:
        for (int k = 0; k < nl && st == SK_OK; k++) {
            bool user = !strcmp(loop[k].role, "user");
            if (user != (k % 2 == 0)) { st = alternate_error("Conversation roles must alternate user/assistant/user/assistant/..."); break; }
            sbuf c = {0};
            if (k == 0 && has_sys) {
                puts_(&c, "<<SYS>>\n");
                puts_(&c, msgs[0].content);
                puts_(&c, "\n<</SYS>>\n\n");
            }
            puts_(&c, loop[k].content);
            if (c.oom) { st = SK_ENOMEM; mem_free(c.p); break; }
            if (user) {
                puts_(&b, ct->bos);
                puts_(&b, "[INST] ");
                put_stripped(&b, c.p);
                puts_(&b, " [/INST]");
            } else if (!strcmp(loop[k].role, "assistant")) {
                puts_(&b, " ");
                put_stripped(&b, c.p);
                puts_(&b, " ");
                puts_(&b, ct->eos);
            }
            mem_free(c.p);
        }
        break;
    case CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            if (i == 0 && !has_sys && ct->default_system) {
                puts_(&b, "<|im_start|>system\n");
                puts_(&b, ct->default_system);
                puts_(&b, "<|im_end|>\n");
            }
            puts_(&b, "<|im_start|>");
            puts_(&b, msgs[i].role);
            puts_(&b, "\n");
            puts_(&b, msgs[i].content);
            puts_(&b, "<|im_end|>\n");
        }
        if (gen) puts_(&b, "<|im_start|>assistant\n");
        break;
    case CHAT_MISTRAL:
        puts_(&b, ct->bos);
        for (int k = 0; k < nl && st == SK_OK; k++) {
            bool user = !strcmp(loop[k].role, "user");
            if (user != (k % 2 == 0)) {
                st = alternate_error("After the optional system message, conversation roles must alternate "
                                     "user/assistant/user/assistant/...");
            } else if (user) {
                puts_(&b, " [INST] ");
                if (k == 0 && has_sys) {
                    puts_(&b, msgs[0].content);
                    puts_(&b, "\n\n");
                }
                puts_(&b, loop[k].content);
                puts_(&b, " [/INST]");
            } else if (!strcmp(loop[k].role, "assistant")) {
                puts_(&b, " ");
                puts_(&b, loop[k].content);
                puts_(&b, ct->eos);
            } else {
                st = alternate_error("Only user and assistant roles are supported, with the exception of an "
                                     "initial optional system message!");
            }
        }
        break;
    default:
        SK_ASSERT(!"unknown chat family");
    }
    if (st == SK_OK && (b.oom || !b.p)) {
        put(&b, "", 0);
        if (b.oom || !b.p) st = sk_fail(SK_ENOMEM, "out of memory rendering a chat");
    }
    if (st != SK_OK) {
        mem_free(b.p);
        return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "out of memory rendering a chat") : st;
    }
    *out = b.p;
    *len = b.n;
    return SK_OK;
}

const char *chat_end_token(const chat_template *ct) {
    switch (ct->family) {
    case CHAT_LLAMA3: return "<|eot_id|>";
    case CHAT_CHATML: return "<|im_end|>";
    default: return ct->eos;
    }
}

/* ---- conversation files ------------------------------------------------------------------ */

sk_status chat_messages_load(const char *path, chat_msg **msgs, int *n) {
    cJSON *doc;
    SK_TRY(json_load_file(path, &doc));
    sk_status st = SK_OK;
    int count = cJSON_IsArray(doc) ? cJSON_GetArraySize(doc) : -1;
    size_t bytes = 0;
    const cJSON *it;
    if (count <= 0) st = sk_fail(SK_EFORMAT, "%s: a conversation is a non-empty JSON list of {\"role\", \"content\"}", path);
    int k = 0;
    if (st == SK_OK) cJSON_ArrayForEach(it, doc) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "role"), *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c)) {
            st = sk_fail(SK_EFORMAT, "%s: message %d needs string \"role\" and \"content\"", path, k);
            break;
        }
        bytes += strlen(r->valuestring) + strlen(c->valuestring) + 2;
        k++;
    }
    chat_msg *m = st == SK_OK ? mem_alloc((size_t)count * sizeof *m + bytes) : NULL;
    if (st == SK_OK && !m) st = sk_fail(SK_ENOMEM, "%s: out of memory reading the conversation", path);
    if (st == SK_OK) {
        char *pool = (char *)(m + count);
        k = 0;
        cJSON_ArrayForEach(it, doc) {
            const char *f[2] = {cJSON_GetObjectItemCaseSensitive(it, "role")->valuestring,
                                cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring};
            for (int j = 0; j < 2; j++) {
                size_t l = strlen(f[j]) + 1;
                memcpy(pool, f[j], l);
                if (j == 0) m[k].role = pool; else m[k].content = pool;
                pool += l;
            }
            k++;
        }
        *msgs = m;
        *n = count;
    }
    cJSON_Delete(doc);
    return st;
}
