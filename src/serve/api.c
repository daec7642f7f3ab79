/* api: the OpenAI-compatible routes over the server's routers (see api.h).
 *
 * A generation request (serve_req, serve_impl.h) is filled here, submitted to its model's
 * router and waited for: the handler of a whole response waits until it is done, a stream's
 * producer until it has text. Waits are timed so that a client that leaves is noticed
 * (http_peer_alive): its request is abandoned and cancelled wherever it is. Sizes are capped:
 * the body by http.h, stop strings SERVE_MAX_STOP of SERVE_STOP_BYTES, messages
 * API_MAX_MESSAGES, prompts by the context, requests in flight by the router's capacity, one
 * server-sent event by the text produced between two wakeups (at most max_tokens pieces).
 * The counts of answers by status are the server's, under its own mutex, never taken with a
 * router's. */
#include "serve/api.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json.h"
#include "serve/dashboard.h"
#include "serve/serve_impl.h"

#define API_MAX_MESSAGES 256
#define API_WAIT_MS 100      /* how often a waiting handler checks its client is still there */
#define API_MAX_N 128        /* choices a call may ask for ("n"; OpenAI's cap) */

static const int api_statuses[] = {200, 400, 401, 404, 405, 413, 500, 503};
#define API_N_STATUS ((int)(sizeof api_statuses / sizeof api_statuses[0]))

struct api_server {
    router **routers;        /* (n_routers) owned; the first answers requests that name no model */
    int n_routers;
    char key[SERVE_NAME_BYTES];
    pthread_mutex_t mu;
    uint64_t by_status[API_N_STATUS];
    uint64_t next_id;        /* requests numbered so far */
};

/* ---- errors ---- */

typedef struct api_error {
    int status;
    const char *type, *param, *code;
    char message[512];
} api_error;

static void api_fail(api_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void api_fail(api_error *e, int status, const char *param, const char *code, const char *fmt, ...) {
    e->status = status;
    e->type = status >= 500 ? "server_error" : status == 401 ? "authentication_error" : "invalid_request_error";
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

/* Hands a cJSON tree to the reply as its body (printed unformatted); frees the tree. */
static void api_reply_json(http_reply *rp, int status, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    size_t n = text ? strlen(text) : 0;
    rp->body = text ? mem_alloc(n + 1) : NULL;
    if (!rp->body) {
        cJSON_free(text);
        rp->status = 500;
        return;
    }
    memcpy(rp->body, text, n + 1);
    cJSON_free(text);
    rp->body_len = n;
    rp->status = status;
    rp->content_type = "application/json";
}

static cJSON *api_error_json(const api_error *e) {
    cJSON *j = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(j, "error");
    cJSON_AddStringToObject(o, "message", e->message);
    cJSON_AddStringToObject(o, "type", e->type);
    if (e->param) cJSON_AddStringToObject(o, "param", e->param); else cJSON_AddNullToObject(o, "param");
    if (e->code) cJSON_AddStringToObject(o, "code", e->code); else cJSON_AddNullToObject(o, "code");
    return j;
}

/* ---- handlers: waiting and replies ---- */

/* One generation call as its handler holds it: its "n" choices, each a request of the same
 * prompt (choice i is r[i], r[i]->index == i), the condition their replicas signal, and a
 * stream's progress (the connection's thread only). */
typedef struct api_call {
    router *rt;
    serve_req *r[API_MAX_N];
    int n;
    bool include_usage;      /* chat and stream: each choice's, r[0]'s */
    char id[48];
    long created;
    int fd;
    pthread_cond_t cv;       /* each choice's wake */
    int phase;               /* a stream's: 0 role chunks, 1 text, 2 usage and [DONE], 3 ended */
    int roles_sent;          /* chat role chunks sent (one a choice) */
    int next;                /* the choice looked at first for news (round robin) */
    char *ev;                /* the event being sent */
    size_t ev_n, ev_off;
} api_call;

/* The first choice (from c->next on) with news for a stream: text not yet taken, or an end
 * whose chunk is not sent; -1 when none (rt->mu held). */
static int api_news(const api_call *c) {
    for (int k = 0; k < c->n; k++) {
        const serve_req *r = c->r[(c->next + k) % c->n];
        if (r->n_out || (r->done && !r->end_sent)) return (c->next + k) % c->n;
    }
    return -1;
}

static bool api_all_done(const api_call *c) {
    for (int i = 0; i < c->n; i++)
        if (!c->r[i]->done) return false;
    return true;
}

/* Abandons every choice of c (rt->mu held): cancelled wherever it is. */
static void api_abandon(router *rt, api_call *c) {
    for (int i = 0; i < c->n; i++) router_abandon(rt, c->r[i]);
}

/* Waits (rt->mu held) until every choice is done (whole) or one has news (api_news). false
 * when the client has left (the choices are abandoned) or the server stops. */
static bool api_wait(router *rt, api_call *c, bool whole) {
    while (whole ? !api_all_done(c) : api_news(c) < 0) {
        if (rt->stopping) return false;
        serve_wait_ms(&c->cv, &rt->mu, API_WAIT_MS);
        if (!api_all_done(c) && !http_peer_alive(c->fd)) {
            api_abandon(rt, c);
            return false;
        }
    }
    return true;
}

/* Drops the handler's hold on c's choices (rt->mu held): abandoned if still running, their
 * wake cleared, the handler's references dropped; then frees c. */
static void api_call_free(router *rt, api_call *c) {
    for (int i = 0; i < c->n; i++) {
        router_abandon(rt, c->r[i]);
        c->r[i]->wake = NULL;
        req_unref(c->r[i]);
    }
    pthread_cond_destroy(&c->cv);
    mem_free(c->ev);
    mem_free(c);
}

/* Ends a call whose choices from k on were never submitted (rt->mu held): those are the
 * handler's alone (done, so router_abandon leaves them be); then api_call_free. */
static void api_call_drop(router *rt, api_call *c, int k) {
    for (int i = k; i < c->n; i++) {
        c->r[i]->done = true;
        c->r[i]->refs = 1;
    }
    api_call_free(rt, c);
}

/* How many bytes start u (n > 0 of them) as one well-formed UTF-8 character (> 0), or, when
 * they are ill-formed, minus the length of their maximal ill-formed subpart (< 0). */
static int api_utf8_next(const unsigned char *u, size_t n) {
    const unsigned b = u[0];
    const int len = b < 0x80 ? 1 : b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
    const unsigned lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80, hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
    int k = len ? 1 : 0;
    while (k > 0 && k < len && (size_t)k < n && u[k] >= (k == 1 ? lo : 0x80) && u[k] <= (k == 1 ? hi : 0xBF)) k++;
    return len && k == len ? len : k ? -k : -1;
}

/* The offset of the first ill-formed byte of s(n), or n when all of it is valid UTF-8. */
static size_t api_utf8_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int k = api_utf8_next(u + i, n - i);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return n;
}

/* A copy of s(n) that is valid UTF-8 (JSON needs it; a model may emit any bytes): each
 * maximal ill-formed subpart becomes U+FFFD, as Python's decode(errors="replace") and the
 * WHATWG decoder do. NULL when out of memory; mem_free it. */
static char *api_utf8_clean(const char *s, size_t n) {
    char *o = mem_alloc(3 * n + 1), *w = o;
    if (!o) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int k = api_utf8_next(u + i, n - i);
        if (k > 0) {
            memcpy(w, s + i, (size_t)k);
            w += k;
        } else {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
        }
        i += (size_t)(k > 0 ? k : -k);
    }
    *w = 0;
    return o;
}

/* Token id's text (its bytes, ill-formed UTF-8 replaced; "token_id:ID" for r->ids_as_tokens;
 * mem_free it) and, when bytes is not NULL, its bytes as a JSON list (OpenAI's "bytes"). NULL
 * when out of memory. */
static char *api_token_text(const router *rt, const serve_req *r, int id, cJSON **bytes) {
    size_t n = 0;
    const unsigned char *b = tok_token_bytes(rt->t, id, &n);
    if (!b) n = 0;
    if (bytes) {
        *bytes = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(*bytes, cJSON_CreateNumber(b[i]));
    }
    if (!r->ids_as_tokens) return api_utf8_clean(b ? (const char *)b : "", n);
    char name[32];
    snprintf(name, sizeof name, "token_id:%d", id);
    return mem_strdup(name);
}

/* The log-probabilities of records r->lp_sent..r->n_lp (rt->mu held), which then count as sent:
 * chat's {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]} or the legacy
 * completions shape {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
 * "text_offset"} (offsets in characters of the token texts, continued across chunks). NULL
 * when out of memory. */
static cJSON *api_logprobs_json(const router *rt, serve_req *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON *content = r->chat ? cJSON_AddArrayToObject(j, "content") : NULL;
    cJSON *tokens = r->chat ? NULL : cJSON_AddArrayToObject(j, "tokens");
    cJSON *token_lps = r->chat ? NULL : cJSON_AddArrayToObject(j, "token_logprobs");
    cJSON *tops = r->chat ? NULL : cJSON_AddArrayToObject(j, "top_logprobs");
    cJSON *offsets = r->chat ? NULL : cJSON_AddArrayToObject(j, "text_offset");
    for (; r->lp_sent < r->n_lp; r->lp_sent++) {
        const serve_lp *l = &r->lp[r->lp_sent];
        cJSON *bytes = NULL;
        char *text = api_token_text(rt, r, l->token, r->chat ? &bytes : NULL);
        if (!text) { cJSON_Delete(bytes); cJSON_Delete(j); return NULL; }
        cJSON *top = r->chat ? cJSON_CreateArray() : cJSON_CreateObject();
        for (int k = 0; k < l->n_top; k++) {
            cJSON *tb = NULL;
            char *tt = api_token_text(rt, r, l->top_ids[k], r->chat ? &tb : NULL);
            if (!tt) { cJSON_Delete(tb); continue; }
            if (r->chat) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "token", tt);
                cJSON_AddNumberToObject(e, "logprob", l->top_logprobs[k]);
                cJSON_AddItemToObject(e, "bytes", tb);
                cJSON_AddItemToArray(top, e);
            } else if (!cJSON_GetObjectItemCaseSensitive(top, tt)) {   /* two ids, one text: the likelier */
                cJSON_AddNumberToObject(top, tt, l->top_logprobs[k]);
            }
            mem_free(tt);
        }
        if (r->chat) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "token", text);
            cJSON_AddNumberToObject(e, "logprob", l->logprob);
            cJSON_AddItemToObject(e, "bytes", bytes);
            cJSON_AddItemToObject(e, "top_logprobs", top);
            cJSON_AddItemToArray(content, e);
        } else {
            cJSON_AddItemToArray(tokens, cJSON_CreateString(text));
            cJSON_AddItemToArray(token_lps, cJSON_CreateNumber(l->logprob));
            cJSON_AddItemToArray(tops, top);
            cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)r->lp_offset));
            for (const char *c = text; *c; c++) r->lp_offset += ((unsigned char)*c & 0xC0) != 0x80;
        }
        mem_free(text);
    }
    return j;
}

/* Usage over every choice: the prompt counted once, the generated tokens of all (rt->mu held). */
static cJSON *api_usage(const api_call *c) {
    int gen = 0;
    for (int i = 0; i < c->n; i++) gen += c->r[i]->n_gen;
    const int prompt = c->r[0]->n_prompt;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", gen);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + gen);
    return u;
}

/* A response object without choices yet: id, object, created, model and an empty "choices"
 * list, returned in *choices. */
static cJSON *api_frame(const router *rt, const api_call *c, cJSON **choices) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", c->id);
    cJSON_AddStringToObject(j, "object", c->r[0]->chat ? (c->r[0]->stream ? "chat.completion.chunk" : "chat.completion")
                                                 : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)c->created);
    cJSON_AddStringToObject(j, "model", rt->name);
    *choices = cJSON_AddArrayToObject(j, "choices");
    return j;
}

/* Adds choice r to the list: whole (text is all of it, finish set) or a stream chunk's (text:
 * the new text or NULL; role: the chat chunk that opens the choice; finish: its last chunk).
 * With logprobs requested, the whole choice and every chunk but the role chunk carry the
 * log-probabilities of the tokens generated since the last chunk (rt->mu held). false when out
 * of memory. */
static bool api_choice(const router *rt, serve_req *r, cJSON *choices, const char *text, bool role,
                       const char *finish) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    char *clean = text ? api_utf8_clean(text, strlen(text)) : NULL;
    if (text && !clean) return false;
    text = clean;
    cJSON_AddNumberToObject(c, "index", r->index);
    if (!r->chat) {
        cJSON_AddStringToObject(c, "text", text ? text : "");
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, r->stream ? "delta" : "message");
        if (role || !r->stream) cJSON_AddStringToObject(m, "role", "assistant");
        if (text) cJSON_AddStringToObject(m, "content", text);
    }
    mem_free(clean);
    const bool want_lp = r->p.logprobs && !role && (!r->stream || r->lp_sent < r->n_lp);
    cJSON *lp = want_lp ? api_logprobs_json(rt, r) : NULL;
    if (want_lp && !lp) return false;
    if (lp) cJSON_AddItemToObject(c, "logprobs", lp); else cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish); else cJSON_AddNullToObject(c, "finish_reason");
    return true;
}

/* A stream chunk of choice r (api_choice's arguments); NULL when out of memory. */
static cJSON *api_chunk(const router *rt, const api_call *c, serve_req *r, const char *text, bool role,
                        const char *finish) {
    cJSON *choices, *j = api_frame(rt, c, &choices);
    if (api_choice(rt, r, choices, text, role, finish)) return j;
    cJSON_Delete(j);
    return NULL;
}

/* Sets c->ev to "data: <json>\n\n" (frees j). false when out of memory. */
static bool api_event(api_call *c, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) return false;
    size_t n = strlen(text);
    mem_free(c->ev);
    c->ev = mem_alloc(n + 9);
    if (c->ev) c->ev_n = (size_t)snprintf(c->ev, n + 9, "data: %s\n\n", text);
    c->ev_off = 0;
    cJSON_free(text);
    return c->ev != NULL;
}

/* The next event of a stream with rt->mu held: a choice's text, or its last chunk (with
 * finish_reason; after every choice's, phase 2), or an error event (phase 2, no usage).
 * NULL when the client has left, the server stops, or memory runs out. */
static cJSON *api_next_chunk(router *rt, api_call *c) {
    if (!api_wait(rt, c, false)) return NULL;
    const int i = api_news(c);
    serve_req *r = c->r[i];
    c->next = (i + 1) % c->n;
    if (r->n_out) {
        cJSON *j = api_chunk(rt, c, r, r->out, false, NULL);
        r->n_out = 0;
        return j;
    }
    r->end_sent = true;
    if (r->error[0]) {   /* one choice failed: the call ends with its error */
        api_error e;
        api_fail(&e, 500, NULL, "engine_error", "%s", r->error);
        c->phase = 2;
        c->include_usage = false;
        return api_error_json(&e);
    }
    bool all = true;
    for (int k = 0; k < c->n; k++) all = all && c->r[k]->end_sent;
    if (all) c->phase = 2;
    return api_chunk(rt, c, r, NULL, false, r->finish);
}

/* http_stream_fn of a streaming call: the role chunk of each choice (chat), text chunks as
 * they come, each choice's chunk with finish_reason (or an error event), the usage chunk when
 * asked, then "data: [DONE]". */
static ssize_t api_stream_read(void *ctx, char *buf, size_t max) {
    api_call *c = ctx;
    router *rt = c->rt;
    while (c->ev_off == c->ev_n) {
        if (c->phase == 3) return HTTP_STREAM_END;
        if (c->phase == 2 && c->include_usage) {   /* OpenAI's usage chunk: no choices */
            c->include_usage = false;
            cJSON *choices, *j = api_frame(rt, c, &choices);
            pthread_mutex_lock(&rt->mu);
            cJSON_AddItemToObject(j, "usage", api_usage(c));
            pthread_mutex_unlock(&rt->mu);
            if (!api_event(c, j)) return HTTP_STREAM_ABORT;
            break;
        }
        if (c->phase == 2) {
            static const char done[] = "data: [DONE]\n\n";
            mem_free(c->ev);
            if (!(c->ev = mem_alloc(sizeof done))) return HTTP_STREAM_ABORT;
            memcpy(c->ev, done, sizeof done);
            c->ev_n = sizeof done - 1;
            c->ev_off = 0;
            c->phase = 3;
            break;
        }
        if (c->phase == 0) {
            if (!c->r[0]->chat || c->roles_sent == c->n) {
                c->phase = 1;
                continue;
            }
            serve_req *r = c->r[c->roles_sent++];
            if (!api_event(c, api_chunk(rt, c, r, NULL, true, NULL))) return HTTP_STREAM_ABORT;
            continue;
        }
        pthread_mutex_lock(&rt->mu);
        cJSON *j = api_next_chunk(rt, c);
        pthread_mutex_unlock(&rt->mu);
        if (!api_event(c, j)) return HTTP_STREAM_ABORT;
    }
    size_t n = c->ev_n - c->ev_off < max ? c->ev_n - c->ev_off : max;
    memcpy(buf, c->ev + c->ev_off, n);
    c->ev_off += n;
    return (ssize_t)n;
}

static void api_stream_free(void *ctx) {
    api_call *c = ctx;
    router *rt = c->rt;
    pthread_mutex_lock(&rt->mu);
    api_call_free(rt, c);
    pthread_mutex_unlock(&rt->mu);
}

/* ---- handlers: parsing a generation request ---- */

/* A json_get_* failure as a 400 naming the field. */
static bool api_field_bad(sk_status st, api_error *e, const char *param) {
    if (st == SK_OK) return false;
    api_fail(e, 400, param, "invalid_type", "%s", sk_errmsg());
    return true;
}

static bool api_range_bad(double v, double lo, double hi, api_error *e, const char *param) {
    if (v >= lo && v <= hi) return false;
    api_fail(e, 400, param, "invalid_value", "request: field \"%s\" is %g; it must be in [%g, %g]", param, v, lo, hi);
    return true;
}

/* Reads "stop": a string or a list of at most SERVE_MAX_STOP non-empty strings, each shorter
 * than SERVE_STOP_BYTES. */
/* The JSON list a of field param as token ids, each an integer in [0, vocab), at most max of
 * them: *ids (mem_alloc'd, room for one when empty; the caller frees it) and *n. False with e
 * set (400 naming the field and the entry; 500 out of memory). */
static bool api_token_ids(const cJSON *a, const char *param, int vocab, int max, int32_t **ids, int *n, api_error *e) {
    const int k = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
    if (k < 0 || k > max) {
        api_fail(e, 400, param, "invalid_value", "request: field \"%s\" must be a list of at most %d token ids", param, max);
        return false;
    }
    int32_t *v = mem_alloc(sizeof *v * (size_t)(k ? k : 1));
    if (!v) {
        api_fail(e, 500, NULL, "out_of_memory", "out of memory");
        return false;
    }
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) {   /* not cJSON_GetArrayItem: that walks the list from its head each time */
        const double x = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(x >= 0 && x < vocab && x == (double)(int32_t)x)) {
            api_fail(e, 400, param, "invalid_value", "request: %s[%d] must be an integer token id in [0, %d)", param, i, vocab);
            mem_free(v);
            return false;
        }
        v[i++] = (int32_t)x;
    }
    *ids = v;
    *n = k;
    return true;
}

static bool api_parse_stop(const cJSON *body, serve_req *r, api_error *e) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!st || cJSON_IsNull(st)) return true;
    const cJSON *one = cJSON_IsString(st) ? st : NULL;
    int n = one ? 1 : cJSON_IsArray(st) ? cJSON_GetArraySize(st) : -1;
    if (n < 0 || n > SERVE_MAX_STOP) {
        api_fail(e, 400, "stop", "invalid_value", "request: field \"stop\" must be a string or a list of at most %d strings", SERVE_MAX_STOP);
        return false;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *it = one ? one : cJSON_GetArrayItem(st, i);
        size_t len = cJSON_IsString(it) ? strlen(it->valuestring) : 0;
        if (len == 0 || len >= SERVE_STOP_BYTES) {
            api_fail(e, 400, "stop", "invalid_value", "request: \"stop\" entry %d must be a non-empty string of at most %d bytes", i, SERVE_STOP_BYTES - 1);
            return false;
        }
        char *dst = r->stop_buf + (size_t)i * SERVE_STOP_BYTES;
        memcpy(dst, it->valuestring, len + 1);
        r->stop[r->n_stop++] = dst;
    }
    return true;
}

/* A message's content given as a list of parts (OpenAI's newer form): each {"type": "text",
 * "text": STRING}, joined with newlines into *out (mem_alloc'd) as vLLM joins them. False with
 * e set (400 naming message i) for any other part, such as an image. */
static bool api_text_parts(const cJSON *parts, int i, char **out, api_error *e) {
    size_t len = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, parts) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type"), *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text)) {
            api_fail(e, 400, "messages", "invalid_value", "request: messages[%d].content: this model reads only parts {\"type\": \"text\", \"text\": STRING}", i);
            return false;
        }
        len += strlen(text->valuestring) + 1;
    }
    char *s = mem_alloc(len + 1), *w = s;
    if (!s) {
        api_fail(e, 500, NULL, "out_of_memory", "out of memory");
        return false;
    }
    cJSON_ArrayForEach(p, parts) {
        const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        if (w > s) *w++ = '\n';
        const size_t n = strlen(t);
        memcpy(w, t, n);
        w += n;
    }
    *w = '\0';
    *out = s;
    return true;
}

/* The prompt's ids: "prompt" (a string, encoded as skein generate does, or a list of token ids
 * taken as they are) or "messages" rendered with the chat template. */
static bool api_parse_prompt(router *rt, const cJSON *body, serve_req *r, api_error *e) {
    int32_t *ids = NULL;
    size_t n = 0;
    sk_status st;
    const char *param = r->chat ? "messages" : "prompt";
    const cJSON *pf = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (!r->chat && cJSON_IsArray(pf)) {   /* token ids, as the model reads them (no special tokens added) */
        const cJSON *first = cJSON_GetArrayItem(pf, 0);
        if (cJSON_IsString(first) || cJSON_IsArray(first)) {
            api_fail(e, 400, "prompt", "invalid_value", "request: field \"prompt\" is a list of prompts; send one prompt a request (a string or a list of token ids)");
            return false;
        }
        int k = 0;   /* the context's limit is checked below, as for text */
        if (!api_token_ids(pf, "prompt", rt->base->cfg.vocab_size, INT_MAX, &ids, &k, e)) return false;
        n = (size_t)k;
        st = SK_OK;
    } else if (!r->chat) {
        const char *prompt = NULL;
        if (api_field_bad(json_get_string(body, "prompt", true, "request", &prompt), e, "prompt")) return false;
        st = tok_encode_ex(rt->t, prompt, strlen(prompt), true, &ids, &n);
    } else {
        if (!rt->chat) {
            api_fail(e, 400, "messages", "no_chat_template", "this model folder has no chat template; start the server with --chat-template NAME (%s)", chat_template_names);
            return false;
        }
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
        int k = cJSON_IsArray(msgs) ? cJSON_GetArraySize(msgs) : -1;
        if (k < 1 || k > API_MAX_MESSAGES) {
            api_fail(e, 400, "messages", "invalid_value", "request: field \"messages\" must be a list of 1 to %d messages", API_MAX_MESSAGES);
            return false;
        }
        chat_msg cm[API_MAX_MESSAGES];
        char *joined[API_MAX_MESSAGES] = {0};   /* contents given as lists of text parts */
        bool ok = true;
        int i = 0;
        for (const cJSON *m = msgs->child; m && ok; m = m->next, i++) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role) || !(cJSON_IsString(content) || cJSON_IsArray(content))) {
                api_fail(e, 400, "messages", "invalid_type", "request: messages[%d] must have a string \"role\" and a \"content\" string or list of text parts", i);
                ok = false;
            } else if (cJSON_IsArray(content)) {
                ok = api_text_parts(content, i, &joined[i], e);
            }
            if (ok) cm[i] = (chat_msg){role->valuestring, joined[i] ? joined[i] : content->valuestring};
        }
        char *text = NULL;
        size_t len = 0;
        if (ok && (st = chat_render(rt->chat, cm, k, true, &text, &len)) != SK_OK) {
            api_fail(e, 400, "messages", "invalid_value", "%s", sk_errmsg());
            ok = false;
        }
        for (int j = 0; j < k; j++) mem_free(joined[j]);
        if (!ok) return false;
        st = tok_encode(rt->t, text, len, &ids, &n);
        mem_free(text);
    }
    if (st != SK_OK) {
        api_fail(e, 400, param, "invalid_value", "%s", sk_errmsg());
        return false;
    }
    const int max_ctx = rt->eo.max_ctx;
    if (n == 0 || (long)n >= max_ctx) {
        api_fail(e, 400, param, n ? "context_length_exceeded" : "invalid_value",
                 "the %s has %zu tokens; it must have at least 1 and fewer than the context of %d", param, n, max_ctx);
        mem_free(ids);
        return false;
    }
    r->prompt = (int *)ids;
    r->n_prompt = (int)n;
    return true;
}

/* Appends "stop_token_ids" (vLLM's: generation ends at any of them, not output) to r's stop
 * ids, the end-of-sequence ones before them; false with e set (400) when they are not token
 * ids or do not fit beside those in ENGINE_MAX_STOP. */
static bool api_parse_stop_ids(router *rt, const cJSON *body, serve_req *r, api_error *e) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(body, "stop_token_ids");
    if (!a || cJSON_IsNull(a)) return true;
    const int room = ENGINE_MAX_STOP - r->p.n_stop_ids;
    int32_t *ids = NULL;
    int n = 0;
    if (!api_token_ids(a, "stop_token_ids", rt->base->cfg.vocab_size, room, &ids, &n, e)) return false;
    for (int i = 0; i < n; i++) r->p.stop_ids[r->p.n_stop_ids++] = ids[i];
    mem_free(ids);
    return true;
}

/* Fills r (choice 0) and c's include_usage from the body (its "model" already checked by
 * api_body) and sets *n to its "n"; false with e set (400) when a field is bad. num: the
 * call's number (a seed when the body gives none). */
static bool api_parse(router *rt, const cJSON *body, api_call *c, serve_req *r, long *n, api_error *e, uint64_t num) {
    bool ignore_eos = false, skip_special = true;
    long max_tokens = r->chat ? 0 : 16, top_k = 0, seed = -1;
    double temperature = 1, top_p = 1, min_p = 0, rep = 1, presence = 0, frequency = 0;
    *n = 1;
    if (api_field_bad(json_get_int(body, "n", false, "request", n), e, "n") || api_range_bad((double)*n, 1, API_MAX_N, e, "n"))
        return false;
    const int hold = rt->o.max_replicas * rt->eo.max_seqs + rt->o.max_queue;   /* in flight at the most */
    if (*n > hold) {   /* never admitted: a 503 would be retried forever */
        api_fail(e, 400, "n", "invalid_value", "request: field \"n\" is %ld; this model's limit of requests in flight is %d", *n, hold);
        return false;
    }
    if (api_field_bad(json_get_bool(body, "stream", false, "request", &r->stream), e, "stream") ||
        api_field_bad(json_get_int(body, "max_tokens", false, "request", &max_tokens), e, "max_tokens") ||
        api_field_bad(json_get_double(body, "temperature", false, "request", &temperature), e, "temperature") ||
        api_field_bad(json_get_double(body, "top_p", false, "request", &top_p), e, "top_p") ||
        api_field_bad(json_get_int(body, "top_k", false, "request", &top_k), e, "top_k") ||
        api_field_bad(json_get_double(body, "min_p", false, "request", &min_p), e, "min_p") ||
        api_field_bad(json_get_double(body, "repetition_penalty", false, "request", &rep), e, "repetition_penalty") ||
        api_field_bad(json_get_double(body, "presence_penalty", false, "request", &presence), e, "presence_penalty") ||
        api_field_bad(json_get_double(body, "frequency_penalty", false, "request", &frequency), e, "frequency_penalty") ||
        api_field_bad(json_get_int(body, "seed", false, "request", &seed), e, "seed") ||
        api_field_bad(json_get_bool(body, "ignore_eos", false, "request", &ignore_eos), e, "ignore_eos") ||
        api_field_bad(json_get_bool(body, "return_tokens_as_token_ids", false, "request", &r->ids_as_tokens), e,
                      "return_tokens_as_token_ids") ||
        api_field_bad(json_get_bool(body, "skip_special_tokens", false, "request", &skip_special), e, "skip_special_tokens"))
        return false;
    r->keep_special = !skip_special;
    const cJSON *mct = cJSON_GetObjectItemCaseSensitive(body, "max_completion_tokens");
    if (r->chat && mct && !cJSON_IsNull(mct)) {   /* OpenAI's newer name in chat; it wins over max_tokens, as in vLLM */
        if (api_field_bad(json_get_int(body, "max_completion_tokens", false, "request", &max_tokens), e, "max_completion_tokens") ||
            api_range_bad((double)max_tokens, 1, rt->eo.max_ctx, e, "max_completion_tokens"))
            return false;
    }
    const int max_ctx = rt->eo.max_ctx;
    if ((max_tokens || !r->chat) && api_range_bad((double)max_tokens, 1, max_ctx, e, "max_tokens")) return false;
    if (api_range_bad(temperature, 0, 2, e, "temperature") || api_range_bad(min_p, 0, 1, e, "min_p") ||
        api_range_bad(presence, -2, 2, e, "presence_penalty") || api_range_bad(frequency, -2, 2, e, "frequency_penalty") ||
        api_range_bad((double)top_k, -1, 1 << 30, e, "top_k") || api_range_bad(rep, 1e-3, 100, e, "repetition_penalty"))
        return false;
    if (!(top_p > 0 && top_p <= 1)) {
        api_fail(e, 400, "top_p", "invalid_value", "request: field \"top_p\" is %g; it must be in (0, 1]", top_p);
        return false;
    }
    long n_logprobs = 0;
    bool logprobs = false;
    const cJSON *lpf = cJSON_GetObjectItemCaseSensitive(body, "logprobs");
    if (lpf && !cJSON_IsNull(lpf)) {   /* completions: an integer; chat: a bool and top_logprobs */
        if (!r->chat && api_field_bad(json_get_int(body, "logprobs", false, "request", &n_logprobs), e, "logprobs")) return false;
        if (r->chat && api_field_bad(json_get_bool(body, "logprobs", false, "request", &logprobs), e, "logprobs")) return false;
        if (!r->chat && api_range_bad((double)n_logprobs, 0, ENGINE_MAX_LOGPROBS, e, "logprobs")) return false;
        logprobs = logprobs || !r->chat;
    }
    const cJSON *tlp = cJSON_GetObjectItemCaseSensitive(body, "top_logprobs");
    if (r->chat && tlp && !cJSON_IsNull(tlp)) {
        if (api_field_bad(json_get_int(body, "top_logprobs", false, "request", &n_logprobs), e, "top_logprobs") ||
            api_range_bad((double)n_logprobs, 0, ENGINE_MAX_LOGPROBS, e, "top_logprobs"))
            return false;
        if (!logprobs) {
            api_fail(e, 400, "top_logprobs", "invalid_value", "request: field \"top_logprobs\" needs \"logprobs\": true");
            return false;
        }
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so) || !r->stream) {
            api_fail(e, 400, "stream_options", "invalid_value", "request: field \"stream_options\" must be an object, and only with \"stream\": true");
            return false;
        }
        if (api_field_bad(json_get_bool(so, "include_usage", false, "request.stream_options", &c->include_usage), e, "stream_options"))
            return false;
    }
    if (!api_parse_stop(body, r, e) || !api_parse_prompt(rt, body, r, e)) return false;
    if (!max_tokens) max_tokens = max_ctx - r->n_prompt;   /* chat without a limit: the context */
    r->p = (engine_params){.max_tokens = (int)max_tokens,
                           .seed = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) * 6364136223846793005ull + num,
                           .sample = {.temperature = (float)temperature, .top_k = top_k > 0 ? (int)top_k : 0,
                                      .top_p = (float)top_p, .min_p = (float)min_p, .repetition_penalty = (float)rep,
                                      .presence_penalty = (float)presence, .frequency_penalty = (float)frequency},
                           .logprobs = logprobs, .n_logprobs = (int)n_logprobs};
    if (!ignore_eos) {   /* ignore_eos (vLLM's): generate max_tokens whatever comes, but the stop_token_ids */
        memcpy(r->p.stop_ids, r->chat ? rt->chat_eos_ids : rt->eos_ids, sizeof rt->eos_ids);
        r->p.n_stop_ids = r->chat ? rt->n_chat_eos : rt->n_eos;
    }
    return api_parse_stop_ids(rt, body, r, e);
}

/* The body as a JSON object and the router of its "model" (the first when it names none);
 * NULL with e set: 400 for a body that is not UTF-8 or not a JSON object, 404 for a model this server does not serve. */
static cJSON *api_body(api_server *s, const http_req *rq, api_error *e, router **rt) {
    const char *end = NULL, *name = NULL;
    const size_t bad = api_utf8_check(rq->body, rq->body_len);
    if (bad < rq->body_len) {   /* JSON is UTF-8 (RFC 8259): refused as vLLM's server does */
        api_fail(e, 400, NULL, "invalid_utf8", "the request body is not valid UTF-8 (byte %zu)", bad);
        return NULL;
    }
    cJSON *body = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, false);
    if (!body || !cJSON_IsObject(body)) {
        api_fail(e, 400, NULL, "invalid_json", body ? "the request body must be a JSON object"
                                                     : "the request body is not valid JSON (near byte %zu)",
                 end ? (size_t)(end - rq->body) : (size_t)0);
        cJSON_Delete(body);
        return NULL;
    }
    if (api_field_bad(json_get_string(body, "model", false, "request", &name), e, "model")) { cJSON_Delete(body); return NULL; }
    *rt = name ? NULL : s->routers[0];
    for (int i = 0; i < s->n_routers && !*rt; i++)
        if (!strcmp(name, router_name(s->routers[i]))) *rt = s->routers[i];
    if (!*rt) {
        char names[512] = "";
        for (int i = 0, n = 0; i < s->n_routers && n < (int)sizeof names; i++)
            n += snprintf(names + n, sizeof names - (size_t)n, "%s`%s`", i ? ", " : "", router_name(s->routers[i]));
        api_fail(e, 404, "model", "model_not_found", "The model `%s` does not exist (this server serves %s)", name, names);
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

/* Choice i of a call, from its choice 0 before submission: the same prompt (a copy of its
 * own), parameters and stop strings, the seed + i (vLLM's children's). NULL when out of memory. */
static serve_req *api_sibling(const serve_req *r0, int i) {
    serve_req *r = mem_alloc(sizeof *r);
    int *prompt = mem_alloc(sizeof *prompt * (size_t)r0->n_prompt);
    if (!r || !prompt) {
        mem_free(r);
        mem_free(prompt);
        return NULL;
    }
    *r = *r0;   /* only fields the handler set: nothing runs yet */
    memcpy(prompt, r0->prompt, sizeof *prompt * (size_t)r0->n_prompt);
    r->prompt = prompt;
    for (int k = 0; k < r->n_stop; k++) r->stop[k] = r->stop_buf + (r0->stop[k] - r0->stop_buf);
    r->text = (gen_text){.stop = r->stop, .n_stop = r->n_stop};
    r->index = i;
    r->p.seed = r0->p.seed + (uint64_t)i;
    return r;
}

/* Adds choices to c (choice 0 parsed) up to n; false when out of memory. */
static bool api_choices(api_call *c, long n) {
    for (; c->n < n && (c->r[c->n] = api_sibling(c->r[0], c->n)); c->n++) c->r[c->n]->wake = &c->cv;
    return c->n == n;
}

/* The whole response of a call whose choices are done, each without error (rt->mu held);
 * NULL when out of memory. */
static cJSON *api_whole(router *rt, api_call *c) {
    cJSON *choices, *j = api_frame(rt, c, &choices);
    for (int i = 0; i < c->n; i++)
        if (!api_choice(rt, c->r[i], choices, c->r[i]->out ? c->r[i]->out : "", false, c->r[i]->finish)) {
            cJSON_Delete(j);
            return NULL;
        }
    cJSON_AddItemToObject(j, "usage", api_usage(c));
    return j;
}

/* POST /v1/completions and /v1/chat/completions: a call of "n" choices, each a request of
 * the router, all answered in one response or one stream. */
static void api_generate(api_server *s, const http_req *rq, bool chat, http_reply *rp, api_error *e) {
    router *rt = NULL;
    cJSON *body = api_body(s, rq, e, &rt);
    if (!body) return;
    api_call *c = mem_calloc(sizeof *c);
    serve_req *r = mem_calloc(sizeof *r);
    if (!c || !r) {
        mem_free(c);
        mem_free(r);
        cJSON_Delete(body);
        api_fail(e, 500, NULL, "out_of_memory", "out of memory");
        return;
    }
    pthread_mutex_lock(&s->mu);
    const uint64_t num = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    *c = (api_call){.rt = rt, .fd = rq->fd, .created = (long)time(NULL)};
    snprintf(c->id, sizeof c->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)num);
    pthread_cond_init(&c->cv, NULL);
    r->rt = rt;
    r->chat = chat;
    r->text = (gen_text){.stop = r->stop, .n_stop = 0};
    r->wake = &c->cv;
    c->r[0] = r;
    c->n = 1;
    long n = 1;
    const bool parsed = api_parse(rt, body, c, r, &n, e, num);
    cJSON_Delete(body);
    r->text.n_stop = r->n_stop;
    const bool made = parsed && api_choices(c, n);
    if (parsed && !made) api_fail(e, 500, NULL, "out_of_memory", "out of memory");
    char why[256];
    int k = 0;   /* choices submitted */
    pthread_mutex_lock(&rt->mu);
    while (made && k < c->n && router_submit(rt, c->r[k], why, sizeof why)) k++;
    if (made && k < c->n) api_fail(e, 503, NULL, "server_overloaded", "%s", why);
    if (!made || k < c->n) {
        api_call_drop(rt, c, k);
        pthread_mutex_unlock(&rt->mu);
        return;
    }
    if (r->stream) {
        pthread_mutex_unlock(&rt->mu);
        rp->status = 200;
        rp->content_type = "text/event-stream";
        rp->stream = api_stream_read;
        rp->stream_ctx = c;
        rp->stream_free = api_stream_free;
        return;
    }
    const bool waited = api_wait(rt, c, true);
    const serve_req *bad = NULL;
    for (int i = 0; waited && i < c->n && !bad; i++) bad = c->r[i]->error[0] ? c->r[i] : NULL;
    cJSON *j = waited && !bad ? api_whole(rt, c) : NULL;
    if (bad) api_fail(e, 500, NULL, "engine_error", "%s", bad->error);
    else if (!waited) api_fail(e, 503, NULL, "unavailable", rt->stopping ? "the server is shutting down" : "the client left");
    else if (!j) api_fail(e, 500, NULL, "out_of_memory", "out of memory");
    api_call_free(rt, c);
    pthread_mutex_unlock(&rt->mu);
    if (j) api_reply_json(rp, 200, j);
}

/* ---- the other routes ---- */

/* POST /tokenize (vLLM's): {"prompt"} -> {"tokens", "count", "max_model_len"}, the ids a
 * completion's prompt gets (special tokens added as there). */
static void api_tokenize(api_server *s, const http_req *rq, http_reply *rp, api_error *e) {
    router *rt = NULL;
    cJSON *body = api_body(s, rq, e, &rt);
    if (!body) return;
    const char *prompt = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (api_field_bad(json_get_string(body, "prompt", true, "request", &prompt), e, "prompt")) { cJSON_Delete(body); return; }
    sk_status st = tok_encode_ex(rt->t, prompt, strlen(prompt), true, &ids, &n);
    cJSON_Delete(body);
    if (st != SK_OK) { api_fail(e, 400, "prompt", "invalid_value", "%s", sk_errmsg()); return; }
    cJSON *j = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(j, "tokens");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    mem_free(ids);
    cJSON_AddNumberToObject(j, "count", (double)n);
    cJSON_AddNumberToObject(j, "max_model_len", rt->eo.max_ctx);
    api_reply_json(rp, 200, j);
}

/* POST /detokenize (vLLM's): {"tokens": [ids]} -> {"prompt": text}; every id an integer in
 * the vocabulary, at most the context's count of them. */
static void api_detokenize(api_server *s, const http_req *rq, http_reply *rp, api_error *e) {
    router *rt = NULL;
    cJSON *body = api_body(s, rq, e, &rt);
    if (!body) return;
    int32_t *ids = NULL;
    int n = 0;
    if (!api_token_ids(cJSON_GetObjectItemCaseSensitive(body, "tokens"), "tokens", tok_vocab_size(rt->t), rt->eo.max_ctx,
                       &ids, &n, e)) {
        cJSON_Delete(body);
        return;
    }
    cJSON_Delete(body);
    size_t len = 0;
    char *text = tok_decode_ex(rt->t, ids, (size_t)n, false, &len);
    mem_free(ids);
    char *clean = text ? api_utf8_clean(text, len) : NULL;
    mem_free(text);
    if (!clean) { api_fail(e, 500, NULL, "out_of_memory", "out of memory"); return; }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "prompt", clean);
    mem_free(clean);
    api_reply_json(rp, 200, j);
}

/* Whether header is "Bearer KEY", compared in time independent of where they differ. */
static bool api_key_ok(const char *header, const char *key) {
    static const char bearer[] = "Bearer ";
    if (!header || strncmp(header, bearer, sizeof bearer - 1)) return false;
    const char *given = header + sizeof bearer - 1;
    size_t lg = strlen(given), lk = strlen(key);
    volatile unsigned char d = lg != lk;
    for (size_t i = 0; i < lk; i++) d |= (unsigned char)key[i] ^ (unsigned char)given[i < lg ? i : 0];
    return d == 0;
}

static void api_models(api_server *s, http_reply *rp) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(j, "data");
    for (int i = 0; i < s->n_routers; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(data, m);
        cJSON_AddStringToObject(m, "id", router_name(s->routers[i]));
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "skein");
        cJSON_AddNumberToObject(m, "max_model_len", s->routers[i]->eo.max_ctx);
    }
    api_reply_json(rp, 200, j);
}

/* GET /metrics: every router's snapshot, the GPUs' figures (NVML) when a model runs on CUDA, then the
 * page (metrics.h). */
static void api_metrics(api_server *s, http_reply *rp) {
    metrics_model *models = mem_calloc(sizeof *models * (size_t)s->n_routers);
    metrics_replica **reps = mem_calloc(sizeof *reps * (size_t)s->n_routers);
    bool ok = models && reps;
    for (int i = 0; i < s->n_routers && ok; i++) ok = router_snapshot(s->routers[i], &models[i], &reps[i]) == SK_OK;
    uint64_t by_status[API_N_STATUS];
    pthread_mutex_lock(&s->mu);
    memcpy(by_status, s->by_status, sizeof by_status);
    pthread_mutex_unlock(&s->mu);
    nvml_gpu gpus[NVML_MAX_GPUS];
    int n_gpus = 0;
    for (int i = 0; i < s->n_routers && !n_gpus; i++)
        if (!strcmp(s->routers[i]->o.device, "cuda")) n_gpus = nvml_sample(gpus, NVML_MAX_GPUS);
    const metrics_page page = {api_statuses, by_status, API_N_STATUS, models, s->n_routers, gpus, n_gpus};
    size_t n = 0;
    char *text = ok ? metrics_render(&page, &n) : NULL;
    for (int i = 0; reps && i < s->n_routers; i++) mem_free(reps[i]);
    mem_free(reps);
    mem_free(models);
    if (!text) { rp->status = 500; return; }
    rp->status = 200;
    rp->content_type = "text/plain; version=0.0.4";
    rp->body = text;
    rp->body_len = n;
}

/* GET /: the dashboard page (dashboard.h). */
static void api_dashboard(http_reply *rp) {
    if (!(rp->body = mem_alloc(dashboard_html_len))) { rp->status = 500; return; }
    memcpy(rp->body, dashboard_html, dashboard_html_len);
    rp->body_len = dashboard_html_len;
    rp->status = 200;
    rp->content_type = "text/html; charset=utf-8";
}

/* GET /health: 200 while every model has a replica up, else 503. */
static void api_health(api_server *s, http_reply *rp, api_error *e) {
    for (int i = 0; i < s->n_routers; i++)
        if (!router_up(s->routers[i])) {
            api_fail(e, 503, NULL, "no_replica", "the model %s has no replica up", router_name(s->routers[i]));
            return;
        }
    api_reply_json(rp, 200, cJSON_CreateObject());
}

void api_handle(void *ctx, const http_req *rq, http_reply *rp) {
    api_server *s = ctx;
    api_error e = {0};
    const bool get = !strcmp(rq->method, "GET"), post = !strcmp(rq->method, "POST");
    const bool v1 = !strncmp(rq->path, "/v1/", 4);
    const bool completions = !strcmp(rq->path, "/v1/completions"), chat = !strcmp(rq->path, "/v1/chat/completions");
    const bool models = !strcmp(rq->path, "/v1/models"), health = !strcmp(rq->path, "/health"),
               metrics = !strcmp(rq->path, "/metrics"), dashboard = !strcmp(rq->path, "/");
    const bool tokenize = !strcmp(rq->path, "/tokenize"), detokenize = !strcmp(rq->path, "/detokenize");
    if ((v1 || tokenize || detokenize) && s->key[0] && !api_key_ok(rq->authorization, s->key))
        api_fail(&e, 401, NULL, "invalid_api_key", "a missing or incorrect API key: send the header \"Authorization: Bearer KEY\"");
    else if (rq->body_too_large)
        api_fail(&e, 413, NULL, "request_too_large", "the request body is over the server's cap");
    else if ((completions || chat) && post) api_generate(s, rq, chat, rp, &e);
    else if (models && get) api_models(s, rp);
    else if (tokenize && post) api_tokenize(s, rq, rp, &e);
    else if (detokenize && post) api_detokenize(s, rq, rp, &e);
    else if (metrics && get) api_metrics(s, rp);
    else if (health && get) api_health(s, rp, &e);
    else if (dashboard && get) api_dashboard(rp);
    else if (completions || chat || models || metrics || health || tokenize || detokenize || dashboard)
        api_fail(&e, 405, NULL, "method_not_allowed", "%s is not allowed on %s", rq->method, rq->path);
    else
        api_fail(&e, 404, NULL, "not_found", "no route %s %s", rq->method, rq->path);
    if (e.status) {
        api_reply_json(rp, e.status, api_error_json(&e));
        if (e.status == 503) rp->retry_after = "1";
    }
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < API_N_STATUS; i++)
        if (api_statuses[i] == rp->status) s->by_status[i]++;
    pthread_mutex_unlock(&s->mu);
}

/* ---- lifetime ---- */

sk_status api_server_create(router **routers, int n_routers, const api_opts *o, api_server **out) {
    *out = NULL;
    sk_status st = SK_OK;
    api_server *s = NULL;
    if (n_routers < 1) return sk_fail(SK_EARG, "serve: no model to serve");
    if (o->api_key && strlen(o->api_key) >= SERVE_NAME_BYTES)
        st = sk_fail(SK_EARG, "serve: --api-key must be shorter than %d bytes", SERVE_NAME_BYTES);
    for (int i = 0; i < n_routers && st == SK_OK; i++)
        for (int k = 0; k < i && st == SK_OK; k++)
            if (!strcmp(router_name(routers[i]), router_name(routers[k])))
                st = sk_fail(SK_EARG, "serve: two models are named %s (give one --served-model-name)", router_name(routers[i]));
    if (st == SK_OK && (!(s = mem_calloc(sizeof *s)) || !(s->routers = mem_alloc(sizeof *s->routers * (size_t)n_routers))))
        st = sk_fail(SK_ENOMEM, "serve: out of memory");
    if (st != SK_OK) {
        if (s) mem_free(s);
        for (int i = 0; i < n_routers; i++) router_free(routers[i]);
        return st;
    }
    memcpy(s->routers, routers, sizeof *routers * (size_t)n_routers);
    s->n_routers = n_routers;
    snprintf(s->key, sizeof s->key, "%s", o->api_key ? o->api_key : "");
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return SK_OK;
}

void api_server_stop(api_server *s) {
    for (int i = 0; s && i < s->n_routers; i++) router_stop(s->routers[i]);
}

void api_server_free(api_server *s) {
    if (!s) return;
    for (int i = 0; i < s->n_routers; i++) router_free(s->routers[i]);
    mem_free(s->routers);
    pthread_mutex_destroy(&s->mu);
    mem_free(s);
}
