/* loadgen: prompts through the server's tokenizer, a Poisson schedule driven by one libcurl
 * multi handle, an event-stream parser and the summary statistics (loadgen.h has the contract).
 *
 * Invariants: a request's state (loadgen_req) exists from the moment it is handed to libcurl
 * until its transfer is reported done; only completed requests add to the samples; at most
 * o->concurrency requests are in the multi handle at any time. */
#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/rng.h"
#include "bench/loadgen.h"

#define LOADGEN_BODY_MAX ((size_t)64 << 20)   /* a setup answer (/tokenize of long prompts) */
#define LOADGEN_ERRBODY_MAX 4096              /* an error answer's body kept for its message */

loadgen_opts loadgen_opts_default(void) {
    return (loadgen_opts){.url = "http://127.0.0.1:8000", .rate = INFINITY, .num_prompts = 1000,
                          .input_len = 1024, .output_len = 128};
}

/* ---- byte strings ---- */

/* Appends n bytes (at most `max` in all: the rest is dropped, true returned); false when out
 * of memory. */
static bool loadgen_buf_add(loadgen_buf *b, const char *s, size_t n, size_t max) {
    if (b->n + n > max) n = max > b->n ? max - b->n : 0;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = mem_realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static void loadgen_buf_free(loadgen_buf *b) {
    mem_free(b->p);
    *b = (loadgen_buf){0};
}

/* Appends x to the growable array *v of *n (room for *cap); false when out of memory. */
static bool loadgen_push(double **v, long *n, long *cap, double x) {
    if (*n == *cap) {
        long c = 2 * *cap + 64;
        double *p = mem_realloc(*v, sizeof *p * (size_t)c);
        if (!p) return false;
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = x;
    return true;
}

/* ---- server-sent events ---- */

/* One complete line (in p->line): a blank one dispatches the event, a "data" field adds to it. */
static bool loadgen_sse_line(loadgen_sse *p, loadgen_event_fn on_event, void *ctx) {
    const char *l = p->line.p;
    const size_t n = p->line.n;
    p->line.n = 0;
    if (n == 0) {
        if (!p->data.n) return true;
        const size_t m = p->data.n - 1;   /* without the last line's '\n' */
        p->data.n = 0;
        p->data.p[m] = 0;
        return on_event(ctx, p->data.p, m);
    }
    if (l[0] == ':') return true;
    const char *colon = memchr(l, ':', n);
    const size_t name_n = colon ? (size_t)(colon - l) : n;
    if (name_n != 4 || memcmp(l, "data", 4)) return true;
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ') v++;
    return loadgen_buf_add(&p->data, v, (size_t)(l + n - v), SIZE_MAX) && loadgen_buf_add(&p->data, "\n", 1, SIZE_MAX);
}

bool loadgen_sse_feed(loadgen_sse *p, const char *bytes, size_t n, loadgen_event_fn on_event, void *ctx) {
    size_t i = 0;
    while (i < n) {
        if (bytes[i] == '\n' || bytes[i] == '\r') {
            const bool skip = bytes[i] == '\n' && p->cr;   /* the '\n' of "\r\n" */
            p->cr = bytes[i++] == '\r';
            if (!skip && !loadgen_sse_line(p, on_event, ctx)) return false;
            continue;
        }
        size_t j = i;
        while (j < n && bytes[j] != '\n' && bytes[j] != '\r') j++;
        p->cr = false;
        if (!loadgen_buf_add(&p->line, bytes + i, j - i, SIZE_MAX)) return false;
        i = j;
    }
    return true;
}

bool loadgen_sse_end(loadgen_sse *p, loadgen_event_fn on_event, void *ctx) {
    if (p->line.n && !loadgen_sse_line(p, on_event, ctx)) return false;
    return loadgen_sse_line(p, on_event, ctx);   /* the blank line that was not sent */
}

void loadgen_sse_free(loadgen_sse *p) {
    loadgen_buf_free(&p->line);
    loadgen_buf_free(&p->data);
}

/* ---- statistics ---- */

static int loadgen_cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-th percentile of sorted v[0..n), n >= 1. */
static double loadgen_percentile(const double *v, int n, double q) {
    const double x = q / 100.0 * (n - 1);
    const int k = (int)floor(x);
    return k + 1 < n ? v[k] + (x - k) * (v[k + 1] - v[k]) : v[n - 1];
}

loadgen_stats loadgen_summary(double *v, int n) {
    loadgen_stats s = {0};
    if (n <= 0) return s;
    qsort(v, (size_t)n, sizeof *v, loadgen_cmp);
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    for (int i = 0; i < n; i++) sq += (v[i] - s.mean) * (v[i] - s.mean);
    s.std = sqrt(sq / n);
    s.median = loadgen_percentile(v, n, 50);
    s.p99 = loadgen_percentile(v, n, 99);
    return s;
}

/* ---- the run's state ---- */

/* One request in flight. */
typedef struct loadgen_req {
    int index;
    CURL *h;
    char *body;                   /* the JSON request (libcurl reads it during the transfer) */
    double t_start, t_first, t_last, t_end;   /* time_now(): handed to libcurl, first text, last text, [DONE] */
    double now;                   /* when the bytes being parsed arrived */
    long status;                  /* HTTP status, 0 until the headers are in */
    loadgen_sse sse;
    loadgen_buf errbody;          /* a non-200 answer's body (its first LOADGEN_ERRBODY_MAX bytes) */
    double *itl;                  /* gaps between text chunks, s */
    long n_itl, cap_itl, chunks;  /* chunks: those with text */
    long in_tokens, out_tokens;   /* from the usage chunk; -1 without one */
    bool done;                    /* "data: [DONE]" seen */
    char err[384];                /* why it failed, found while parsing ("" when nothing yet) */
    char curl_err[CURL_ERROR_SIZE];
} loadgen_req;

typedef struct loadgen_ctx {
    const loadgen_opts *o;
    loadgen_result *r;
    char url[1024];               /* o->url without a final '/' */
    char model[256];
    struct curl_slist *headers;   /* JSON content type, no Expect, the key: shared by every request */
    CURL *setup;                  /* the blocking calls before the run (models, tokenize) */
    char **prompts;               /* [num_prompts] */
    long prompt_tokens;           /* planned: input_len plus the server's special tokens */
    double *ttft, *e2el, *tpot;   /* [num_prompts] each: samples of completed requests, s */
    int n_tpot;
    double *itl;                  /* every completed request's gaps */
    long n_itl, cap_itl;
} loadgen_ctx;

/* Records request q's failure (the first one's message is kept, naming the endpoint). */
static void loadgen_failed(loadgen_ctx *g, int index, const char *msg) {
    if (!g->r->failed++)
        snprintf(g->r->first_error, sizeof g->r->first_error, "request %d to %s%s: %s", index, g->url,
                 g->o->chat ? "/v1/chat/completions" : "/v1/completions", msg);
}

/* The message of an OpenAI error object {"error": {"message"}} (or the error printed) into
 * out; false when j has no "error". */
static bool loadgen_error_message(const cJSON *j, char *out, size_t cap) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (!e) return false;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    if (cJSON_IsString(m)) {
        snprintf(out, cap, "%s", m->valuestring);
    } else {
        char *s = cJSON_PrintUnformatted(e);
        snprintf(out, cap, "%s", s ? s : "an error without a message");
        cJSON_free(s);
    }
    return true;
}

/* ---- setup calls (blocking, the easy interface) ---- */

static size_t loadgen_collect(char *p, size_t size, size_t nmemb, void *ctx) {
    return loadgen_buf_add(ctx, p, size * nmemb, LOADGEN_BODY_MAX) ? size * nmemb : 0;
}

/* GET (body NULL) or POST body to g->url + path; *out: the parsed JSON of a 200 answer (the
 * caller frees it). SK_EIO naming the URL for a connection error, another status or a body
 * that is not JSON. */
static sk_status loadgen_call(loadgen_ctx *g, const char *path, const cJSON *body, cJSON **out) {
    char url[1200], err[CURL_ERROR_SIZE] = "";
    snprintf(url, sizeof url, "%s%s", g->url, path);
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    if (body && !text) return sk_fail(SK_ENOMEM, "bench serve: out of memory");
    loadgen_buf b = {0};
    CURL *h = g->setup;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, g->headers);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, loadgen_collect);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (text) curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
    const CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    cJSON_free(text);
    sk_status st = SK_OK;
    cJSON *j = b.n ? cJSON_ParseWithLength(b.p, b.n) : NULL;
    char msg[384];
    if (rc != CURLE_OK)
        st = sk_fail(SK_EIO, "%s %s: %s", body ? "POST" : "GET", url, err[0] ? err : curl_easy_strerror(rc));
    else if (status != 200)
        st = sk_fail(SK_EIO, "%s %s: HTTP %ld: %s", body ? "POST" : "GET", url, status,
                     j && loadgen_error_message(j, msg, sizeof msg) ? msg : b.p ? b.p : "no body");
    else if (!j)
        st = sk_fail(SK_EIO, "%s %s: the answer is not JSON", body ? "POST" : "GET", url);
    loadgen_buf_free(&b);
    if (st) cJSON_Delete(j); else *out = j;
    return st;
}

/* The first model GET /v1/models lists, into g->model. */
static sk_status loadgen_model(loadgen_ctx *g) {
    cJSON *j;
    SK_TRY(loadgen_call(g, "/v1/models", NULL, &j));
    const cJSON *d = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "data"), 0);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(d, "id");
    sk_status st = SK_OK;
    if (cJSON_IsString(id)) snprintf(g->model, sizeof g->model, "%s", id->valuestring);
    else st = sk_fail(SK_EIO, "GET %s/v1/models: no model listed (give --model)", g->url);
    cJSON_Delete(j);
    return st;
}

/* ---- prompts ---- */

/* Common English words: a prompt is drawn from them. */
static const char *const loadgen_words[] = {
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "are", "with", "they", "be", "at", "one", "have",
    "this", "from", "by", "hot", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
    "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time",
    "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her",
    "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did",
    "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call", "first", "who",
    "may", "down", "side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place", "made",
    "live", "where", "after", "back", "little", "only", "round", "man", "year", "came", "show", "every",
    "good", "me", "give", "our", "under", "name", "very", "through", "just", "form", "sentence", "great",
    "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before", "move",
    "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also",
    "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land",
    "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light",
    "kind", "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother", "world",
    "near", "build", "self", "earth", "father", "head", "stand", "own", "page", "should", "country", "found",
    "answer", "school", "grow", "study", "still", "learn", "plant", "cover", "food", "sun", "four", "between",
    "state", "keep", "eye", "never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard",
    "start", "might", "story", "saw", "far", "sea", "draw", "left", "late", "run", "while", "press", "close",
    "night", "real", "life", "few", "north", "open", "seem", "together", "next", "white", "children", "begin",
};

/* n random words joined by spaces (mem_free it); NULL when out of memory. */
static char *loadgen_text(rng *r, long n) {
    loadgen_buf b = {0};
    const uint64_t nw = sizeof loadgen_words / sizeof loadgen_words[0];
    for (long i = 0; i < n; i++) {
        const char *w = loadgen_words[rng_below(r, nw)];
        if ((i && !loadgen_buf_add(&b, " ", 1, SIZE_MAX)) || !loadgen_buf_add(&b, w, strlen(w), SIZE_MAX)) {
            loadgen_buf_free(&b);
            return NULL;
        }
    }
    return b.p ? b.p : mem_strdup("");
}

/* POST /tokenize {"model", "prompt": text}: *ids (a reference into the answer *j, which the
 * caller frees) and their count. */
static sk_status loadgen_tokenize(loadgen_ctx *g, const char *text, cJSON **j, const cJSON **ids, int *n) {
    cJSON *body = cJSON_CreateObject();
    if (!body || !cJSON_AddStringToObject(body, "model", g->model) || !cJSON_AddStringToObject(body, "prompt", text)) {
        cJSON_Delete(body);
        return sk_fail(SK_ENOMEM, "bench serve: out of memory");
    }
    sk_status st = loadgen_call(g, "/tokenize", body, j);
    cJSON_Delete(body);
    if (st) return st;
    *ids = cJSON_GetObjectItemCaseSensitive(*j, "tokens");
    *n = cJSON_IsArray(*ids) ? cJSON_GetArraySize(*ids) : -1;
    if (*n >= 0) return SK_OK;
    cJSON_Delete(*j);
    return sk_fail(SK_EIO, "POST %s/tokenize: the answer has no \"tokens\" list", g->url);
}

/* Prompt i: random words cut to input_len ids after the `special` ids /tokenize puts first,
 * then POST /detokenize of those ids (mem_free it). */
static sk_status loadgen_prompt_cut(loadgen_ctx *g, rng *r, int special, char **out) {
    const int I = g->o->input_len;
    cJSON *tj = NULL, *dj = NULL;
    const cJSON *ids = NULL;
    int n = 0;
    /* a word is at least one id, so input_len words suffice; more where a tokenizer merges */
    for (long words = I; n - special < I; words *= 2) {
        if (words > 16L * I) return sk_fail(SK_EIO, "POST %s/tokenize: %ld words gave only %d tokens", g->url, words / 2, n);
        char *text = loadgen_text(r, words);
        if (!text) return sk_fail(SK_ENOMEM, "bench serve: out of memory");
        cJSON_Delete(tj);
        tj = NULL;
        sk_status st = loadgen_tokenize(g, text, &tj, &ids, &n);
        mem_free(text);
        if (st) return st;
    }
    cJSON *body = cJSON_CreateObject(), *cut = cJSON_AddArrayToObject(body, "tokens");
    bool ok = body && cut && cJSON_AddStringToObject(body, "model", g->model);
    const cJSON *id = cJSON_GetArrayItem(ids, special);   /* a list: walked, not indexed */
    for (int k = 0; ok && k < I; k++, id = id->next) {
        cJSON *x = cJSON_CreateNumber(id->valuedouble);
        if (!(ok = x && cJSON_AddItemToArray(cut, x))) cJSON_Delete(x);
    }
    cJSON_Delete(tj);
    sk_status st = ok ? loadgen_call(g, "/detokenize", body, &dj) : sk_fail(SK_ENOMEM, "bench serve: out of memory");
    cJSON_Delete(body);
    if (st) return st;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(dj, "prompt");
    if (!cJSON_IsString(p)) st = sk_fail(SK_EIO, "POST %s/detokenize: the answer has no \"prompt\" text", g->url);
    else if (!(*out = mem_strdup(p->valuestring))) st = SK_ENOMEM;
    cJSON_Delete(dj);
    return st;
}

/* Every prompt into g->prompts (see loadgen.h) and g->prompt_tokens. */
static sk_status loadgen_prompts(loadgen_ctx *g) {
    const loadgen_opts *o = g->o;
    rng r;
    rng_seed(&r, o->seed);
    cJSON *j = NULL;
    const cJSON *ids;
    int special = 0;
    const bool tokenize = loadgen_tokenize(g, "", &j, &ids, &special) == SK_OK;
    cJSON_Delete(j);
    if (!tokenize)
        log_warn("bench serve: %s; each prompt is %d random words instead (about as many tokens)", sk_errmsg(),
                 o->input_len);
    g->prompt_tokens = o->input_len + special;
    log_info("bench serve: %d prompts of %d tokens%s", o->num_prompts, o->input_len,
             tokenize ? " (random words cut by the server's tokenizer)" : "");
    for (int i = 0; i < o->num_prompts; i++) {
        if (tokenize) SK_TRY(loadgen_prompt_cut(g, &r, special, &g->prompts[i]));
        else if (!(g->prompts[i] = loadgen_text(&r, o->input_len))) return sk_fail(SK_ENOMEM, "bench serve: out of memory");
    }
    return SK_OK;
}

/* ---- streaming requests (the multi interface) ---- */

/* The body of request i (cJSON's allocation: cJSON_free). */
static char *loadgen_request_body(const loadgen_ctx *g, int i) {
    const loadgen_opts *o = g->o;
    cJSON *j = cJSON_CreateObject();
    bool ok = j && cJSON_AddStringToObject(j, "model", g->model);
    if (ok && o->chat) {
        cJSON *m = cJSON_CreateObject(), *list = NULL;
        ok = m && cJSON_AddStringToObject(m, "role", "user") && cJSON_AddStringToObject(m, "content", g->prompts[i]) &&
             (list = cJSON_AddArrayToObject(j, "messages")) && cJSON_AddItemToArray(list, m);
        if (!ok) cJSON_Delete(m);   /* not in the list: still ours */
    } else if (ok) {
        ok = cJSON_AddStringToObject(j, "prompt", g->prompts[i]) != NULL;
    }
    cJSON *so = ok ? cJSON_AddObjectToObject(j, "stream_options") : NULL;
    ok = ok && so && cJSON_AddTrueToObject(so, "include_usage") && cJSON_AddNumberToObject(j, "max_tokens", o->output_len) &&
         cJSON_AddNumberToObject(j, "temperature", 0) && cJSON_AddTrueToObject(j, "ignore_eos") &&
         cJSON_AddTrueToObject(j, "stream");
    char *s = ok ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

/* loadgen_event_fn of a request: [DONE], an error, a chunk with text (timed), usage. */
static bool loadgen_on_event(void *ctx, const char *data, size_t n) {
    loadgen_req *q = ctx;
    if (n == 6 && !memcmp(data, "[DONE]", 6)) {
        q->done = true;
        q->t_end = q->now;
        return true;
    }
    cJSON *j = cJSON_ParseWithLength(data, n);
    if (!j) {
        snprintf(q->err, sizeof q->err, "an event that is not JSON: %.80s", data);
        return false;
    }
    if (loadgen_error_message(j, q->err, sizeof q->err)) {
        cJSON_Delete(j);
        return false;
    }
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");   /* completions; chat: delta.content */
    if (!text) text = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "delta"), "content");
    bool ok = true;
    if (cJSON_IsString(text) && text->valuestring[0]) {
        if (!q->chunks++) q->t_first = q->now;
        else ok = loadgen_push(&q->itl, &q->n_itl, &q->cap_itl, q->now - q->t_last);
        q->t_last = q->now;
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    if (cJSON_IsNumber(ct)) q->out_tokens = (long)ct->valuedouble;
    if (cJSON_IsNumber(pt)) q->in_tokens = (long)pt->valuedouble;
    cJSON_Delete(j);
    if (!ok) snprintf(q->err, sizeof q->err, "out of memory");
    return ok;
}

/* CURLOPT_WRITEFUNCTION of a request: events of a 200 answer, else the error body. */
static size_t loadgen_on_data(char *p, size_t size, size_t nmemb, void *ctx) {
    loadgen_req *q = ctx;
    const size_t n = size * nmemb;
    if (!q->status) curl_easy_getinfo(q->h, CURLINFO_RESPONSE_CODE, &q->status);
    if (q->status != 200) return loadgen_buf_add(&q->errbody, p, n, LOADGEN_ERRBODY_MAX) ? n : 0;
    q->now = time_now();
    if (loadgen_sse_feed(&q->sse, p, n, loadgen_on_event, q)) return n;
    if (!q->err[0]) snprintf(q->err, sizeof q->err, "out of memory");
    return 0;   /* libcurl ends the transfer */
}

static void loadgen_req_free(loadgen_req *q) {
    if (!q) return;
    if (q->h) curl_easy_cleanup(q->h);
    cJSON_free(q->body);
    loadgen_sse_free(&q->sse);
    loadgen_buf_free(&q->errbody);
    mem_free(q->itl);
    mem_free(q);
}

/* Hands request i to the multi handle; false (the request counted as failed) when it could
 * not be built. */
static bool loadgen_start(loadgen_ctx *g, CURLM *multi, int i) {
    loadgen_req *q = mem_calloc(sizeof *q);
    char url[1100];
    snprintf(url, sizeof url, "%s%s", g->url, g->o->chat ? "/v1/chat/completions" : "/v1/completions");
    if (q) {
        q->index = i;
        q->in_tokens = q->out_tokens = -1;
        q->body = loadgen_request_body(g, i);
        q->h = q->body ? curl_easy_init() : NULL;
    }
    if (!q || !q->h) {
        loadgen_req_free(q);
        loadgen_failed(g, i, "out of memory");
        return false;
    }
    CURL *h = q->h;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, g->headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, q->curl_err);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, loadgen_on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(h, CURLOPT_PRIVATE, q);
    q->t_start = time_now();
    if (curl_multi_add_handle(multi, h) != CURLM_OK) {
        loadgen_req_free(q);
        loadgen_failed(g, i, "curl_multi_add_handle failed");
        return false;
    }
    return true;
}

/* Request q's transfer ended with rc: its samples, or its failure. Frees q. */
static void loadgen_finish(loadgen_ctx *g, loadgen_req *q, CURLcode rc) {
    char msg[512] = "";
    if (rc == CURLE_OK && q->status == 200 && !q->err[0] && !loadgen_sse_end(&q->sse, loadgen_on_event, q) && !q->err[0])
        snprintf(q->err, sizeof q->err, "out of memory");
    if (q->err[0]) {
        snprintf(msg, sizeof msg, "%s", q->err);
    } else if (rc != CURLE_OK) {
        snprintf(msg, sizeof msg, "%s", q->curl_err[0] ? q->curl_err : curl_easy_strerror(rc));
    } else if (q->status != 200) {
        cJSON *j = q->errbody.n ? cJSON_ParseWithLength(q->errbody.p, q->errbody.n) : NULL;
        char m[384];
        snprintf(msg, sizeof msg, "HTTP %ld: %s", q->status, j && loadgen_error_message(j, m, sizeof m) ? m
                                                             : q->errbody.n ? q->errbody.p : "no body");
        cJSON_Delete(j);
    } else if (!q->done) {
        snprintf(msg, sizeof msg, "the stream ended without \"data: [DONE]\"");
    } else if (!q->chunks) {
        snprintf(msg, sizeof msg, "the stream has no text");
    }
    for (long k = 0; !msg[0] && k < q->n_itl; k++)
        if (!loadgen_push(&g->itl, &g->n_itl, &g->cap_itl, q->itl[k])) snprintf(msg, sizeof msg, "out of memory");
    if (msg[0]) {
        loadgen_failed(g, q->index, msg);
        loadgen_req_free(q);
        return;
    }
    loadgen_result *r = g->r;
    const long out = q->out_tokens >= 0 ? q->out_tokens : q->chunks;
    const double ttft = q->t_first - q->t_start, e2el = q->t_end - q->t_start;
    g->ttft[r->completed] = ttft;
    g->e2el[r->completed] = e2el;
    if (out > 1) g->tpot[g->n_tpot++] = (e2el - ttft) / (double)(out - 1);
    r->completed++;
    r->output_tokens += out;
    r->input_tokens += q->in_tokens >= 0 ? q->in_tokens : g->prompt_tokens;
    loadgen_req_free(q);
}

/* The schedule: arrivals at the times of a Poisson process, at most o->concurrency in
 * flight, until every request has ended; sets r->duration. */
static sk_status loadgen_schedule(loadgen_ctx *g, CURLM *multi) {
    const loadgen_opts *o = g->o;
    const int N = o->num_prompts;
    double *arrive = mem_alloc(sizeof *arrive * (size_t)N);
    if (!arrive) return SK_ENOMEM;
    rng r;
    rng_seed(&r, o->seed ^ 0x5eed5eedULL);
    arrive[0] = 0;
    for (int i = 1; i < N; i++) {
        const double u = (double)(rng_u64(&r) >> 11) * 0x1p-53;   /* [0, 1) */
        arrive[i] = arrive[i - 1] + (isinf(o->rate) ? 0 : -log1p(-u) / o->rate);
    }
    sk_status st = SK_OK;
    int started = 0, ended = 0, running = 0;
    const double t0 = time_now();
    while (ended < N) {
        while (started < N && arrive[started] <= time_now() - t0 && (!o->concurrency || running < o->concurrency)) {
            if (loadgen_start(g, multi, started++)) running++;
            else ended++;
        }
        int active;
        CURLMcode mc = curl_multi_perform(multi, &active);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            char *q = NULL;
            CURL *h = m->easy_handle;
            const CURLcode rc = m->data.result;
            curl_easy_getinfo(h, CURLINFO_PRIVATE, &q);
            curl_multi_remove_handle(multi, h);
            loadgen_finish(g, (loadgen_req *)q, rc);
            running--;
            ended++;
        }
        if (mc == CURLM_OK && ended < N) {
            /* sleep until traffic, or the next arrival when a slot is free for it */
            double wait = 1.0;
            if (started < N && (!o->concurrency || running < o->concurrency))
                wait = fmin(wait, fmax(0, arrive[started] - (time_now() - t0)));
            mc = curl_multi_poll(multi, NULL, 0, (int)ceil(wait * 1e3), NULL);
        }
        if (mc != CURLM_OK) {
            st = sk_fail(SK_EIO, "bench serve: libcurl: %s", curl_multi_strerror(mc));
            break;
        }
    }
    g->r->duration = time_now() - t0;
    mem_free(arrive);
    return st;
}

/* ---- the run ---- */

/* loadgen_summary of seconds, in milliseconds. */
static loadgen_stats loadgen_summary_ms(double *v, long n) {
    loadgen_stats s = loadgen_summary(v, (int)n);
    return (loadgen_stats){1e3 * s.mean, 1e3 * s.median, 1e3 * s.std, 1e3 * s.p99};
}

sk_status loadgen_run(const loadgen_opts *o, loadgen_result *r) {
    *r = (loadgen_result){0};
    if (!o->url || !(o->rate > 0) || o->num_prompts < 1 || o->input_len < 1 || o->output_len < 1 || o->concurrency < 0)
        return sk_fail(SK_EARG, "bench serve: a url, a rate > 0, and num_prompts, input_len, output_len >= 1 are needed");
    size_t len = strlen(o->url);
    while (len && o->url[len - 1] == '/') len--;
    if (len >= sizeof ((loadgen_ctx *)0)->url) return sk_fail(SK_EARG, "bench serve: the url is too long");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return sk_fail(SK_EIO, "bench serve: curl_global_init failed");
    const size_t N = (size_t)o->num_prompts;
    loadgen_ctx g = {.o = o, .r = r};
    memcpy(g.url, o->url, len);
    CURLM *multi = curl_multi_init();
    g.setup = curl_easy_init();
    g.prompts = mem_calloc(sizeof *g.prompts * N);
    g.ttft = mem_alloc(sizeof *g.ttft * N);
    g.e2el = mem_alloc(sizeof *g.e2el * N);
    g.tpot = mem_alloc(sizeof *g.tpot * N);
    char auth[1100] = "";
    if (o->api_key) snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->api_key);
    /* "Expect:" drops libcurl's 100-continue round trip before large bodies */
    const char *headers[] = {"Content-Type: application/json", "Expect:", auth};
    bool ok = multi && g.setup && g.prompts && g.ttft && g.e2el && g.tpot;
    for (int k = 0; ok && k < 3; k++) {
        struct curl_slist *l = headers[k][0] ? curl_slist_append(g.headers, headers[k]) : g.headers;
        if ((ok = l != NULL)) g.headers = l;
    }
    sk_status st = ok ? SK_OK : sk_fail(SK_ENOMEM, "bench serve: out of memory");
    if (!st) {
        if (o->model) snprintf(g.model, sizeof g.model, "%s", o->model);
        else st = loadgen_model(&g);
    }
    if (!st) st = loadgen_prompts(&g);
    if (!st) st = loadgen_schedule(&g, multi);
    if (!st) {
        snprintf(r->model, sizeof r->model, "%s", g.model);
        r->ttft_ms = loadgen_summary_ms(g.ttft, r->completed);
        r->e2el_ms = loadgen_summary_ms(g.e2el, r->completed);
        r->tpot_ms = loadgen_summary_ms(g.tpot, g.n_tpot);
        r->itl_ms = loadgen_summary_ms(g.itl, g.n_itl);
    }
    for (size_t i = 0; g.prompts && i < N; i++) mem_free(g.prompts[i]);
    mem_free(g.prompts);
    mem_free(g.ttft);
    mem_free(g.e2el);
    mem_free(g.tpot);
    mem_free(g.itl);
    curl_slist_free_all(g.headers);
    if (g.setup) curl_easy_cleanup(g.setup);
    if (multi) curl_multi_cleanup(multi);
    curl_global_cleanup();
    return st;
}
