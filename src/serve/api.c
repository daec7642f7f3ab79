/* api: the OpenAI-compatible routes and the engine thread (see api.h).
 *
 * A request (api_req) is shared by its handler and the engine thread and counted by refs:
 * the handler's reference ends when its reply is done (or its stream freed), the engine's
 * when the request finishes there (done). Fields marked "engine" are touched only by the
 * engine thread; "shared" ones only under s->mu. Sizes are capped: the body by http.h, stop
 * strings API_MAX_STOP of API_STOP_BYTES, messages API_MAX_MESSAGES, prompts by the context,
 * requests in flight by max_seqs + max_queue, one server-sent event by the text produced
 * between two wakeups (at most max_tokens pieces). */
#include "serve/api.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json.h"
#include "infer/generate.h"

#define API_MAX_STOP 4
#define API_STOP_BYTES 128
#define API_MAX_MESSAGES 256
#define API_NAME_BYTES 256
#define API_WAIT_MS 100      /* how often a waiting handler checks its client is still there */

static const int api_statuses[] = {200, 400, 401, 404, 405, 413, 500, 503};
#define API_N_STATUS ((int)(sizeof api_statuses / sizeof api_statuses[0]))

typedef struct api_server api_server;

/* One generated token's log-probabilities, as the engine gave them. */
typedef struct api_lp {
    int token, n_top;
    float logprob;
    int top_ids[ENGINE_MAX_LOGPROBS];
    float top_logprobs[ENGINE_MAX_LOGPROBS];
} api_lp;

typedef struct api_req {
    /* set by the handler before submission, read-only after */
    api_server *s;
    int *prompt;
    int n_prompt;
    engine_params p;
    char stop_buf[API_STOP_BYTES * API_MAX_STOP];
    const char *stop[API_MAX_STOP];
    int n_stop;
    bool chat, stream, include_usage;
    char id[48];
    long created;
    int fd;
    /* engine */
    int eid;
    tok_stream ts;
    gen_text text;
    /* shared */
    char *out;               /* text produced and not yet taken */
    size_t n_out, cap_out;
    int n_gen;
    api_lp *lp;              /* (n_lp) every generated token's, with p.logprobs */
    int n_lp, cap_lp;
    const char *finish;      /* "stop", "length", "cancelled" once done */
    char error[256];         /* why it failed, when it did */
    bool done, abandoned, oom;
    int refs;
    pthread_cond_t cv;
    struct api_req *next;    /* in the incoming queue or the live list */
    /* the handler's stream (its connection thread only) */
    int phase;
    int lp_sent;             /* records already in a response (also for a whole one) */
    long lp_offset;          /* characters of token text before them (text_offset) */
    char *ev;
    size_t ev_n, ev_off;
} api_req;

struct api_server {
    model *m;
    const tok *t;
    const chat_template *ct;
    api_opts o;
    char name[API_NAME_BYTES], key[API_NAME_BYTES];
    int eos_ids[ENGINE_MAX_STOP], n_eos;            /* what ends a completion */
    int chat_eos_ids[ENGINE_MAX_STOP], n_chat_eos;  /* ... and a chat (the template's end token too) */
    engine *e;
    char *piece;
    size_t piece_cap;
    pthread_t thread;
    bool started, stopping;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    api_req *in_head, *in_tail;   /* submitted, not yet in the engine */
    api_req *live;                /* in the engine */
    int n_incoming, n_inflight, n_abandoned;
    uint64_t next_id;
    /* metrics */
    uint64_t by_status[API_N_STATUS], prompt_tokens, gen_tokens;
    int waiting, running, kv_used, kv_total;
    kv_stats kv;
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

/* ---- requests: shared state ---- */

/* Drops one reference (s->mu held); the last frees the request. */
static void api_req_unref(api_req *r) {
    if (--r->refs > 0) return;
    pthread_cond_destroy(&r->cv);
    mem_free(r->prompt);
    mem_free(r->out);
    mem_free(r->lp);
    mem_free(r->ev);
    gen_text_free(&r->text);
    mem_free(r);
}

/* gen_emit_fn: appends text to the request's output (s->mu held by the engine thread). */
static void api_emit(void *ctx, const char *text, size_t n) {
    api_req *r = ctx;
    if (r->n_out + n + 1 > r->cap_out) {
        size_t cap = (r->n_out + n + 1) * 2;
        char *p = mem_realloc(r->out, cap);
        if (!p) { r->oom = true; return; }
        r->out = p;
        r->cap_out = cap;
    }
    memcpy(r->out + r->n_out, text, n);
    r->n_out += n;
    r->out[r->n_out] = 0;
}

/* The engine thread ends r (s->mu held): off the live list, its handler woken, the engine's
 * reference dropped. err (or NULL) says why it failed. */
static void api_req_finish(api_server *s, api_req *r, const char *finish, const char *err) {
    for (api_req **p = &s->live; *p; p = &(*p)->next)
        if (*p == r) { *p = r->next; break; }
    r->done = true;
    r->finish = finish;
    if (err) snprintf(r->error, sizeof r->error, "%s", err);
    else if (r->oom) snprintf(r->error, sizeof r->error, "out of memory holding the generated text");
    if (r->abandoned) s->n_abandoned--;
    s->n_inflight--;
    pthread_cond_broadcast(&r->cv);
    api_req_unref(r);
}

/* The handler gives r up (its client left; s->mu held): the engine thread cancels it. */
static void api_req_abandon(api_server *s, api_req *r) {
    if (r->done || r->abandoned) return;
    r->abandoned = true;
    s->n_abandoned++;
    pthread_cond_signal(&s->wake);
}

/* ---- the engine thread ---- */

/* Moves submitted requests into the engine (s->mu held). */
static void api_admit(api_server *s) {
    while (s->in_head) {
        api_req *r = s->in_head;
        s->in_head = r->next;
        if (!s->in_head) s->in_tail = NULL;
        s->n_incoming--;
        r->next = s->live;
        s->live = r;
        tok_stream_init(&r->ts, s->t);
        if (engine_add_request(s->e, r->prompt, r->n_prompt, &r->p, &r->eid) != SK_OK)
            api_req_finish(s, r, "error", sk_errmsg());
    }
}

static void api_cancel_abandoned(api_server *s) {
    for (api_req *r = s->live, *next; r && s->n_abandoned; r = next) {
        next = r->next;
        if (!r->abandoned) continue;
        engine_cancel(s->e, r->eid);   /* its blocks are free now */
        api_req_finish(s, r, "cancelled", NULL);
    }
}

/* One engine output for its request: the token decoded, stop strings applied, the end. */
static void api_deliver(api_server *s, const engine_output *o) {
    api_req *r = s->live;
    while (r && r->eid != o->id) r = r->next;
    if (!r) return;   /* already finished here (a stop string, a cancel) */
    bool stopped = false;
    if (o->token >= 0 && r->p.logprobs) {
        if (r->n_lp == r->cap_lp) {
            int cap = r->cap_lp ? 2 * r->cap_lp : 16;
            api_lp *p = mem_realloc(r->lp, sizeof *p * (size_t)cap);
            if (p) { r->lp = p; r->cap_lp = cap; } else r->oom = true;
        }
        if (r->n_lp < r->cap_lp) {
            api_lp *l = &r->lp[r->n_lp++];
            *l = (api_lp){.token = o->token, .n_top = o->n_top, .logprob = o->logprob};
            memcpy(l->top_ids, o->top_ids, sizeof l->top_ids);
            memcpy(l->top_logprobs, o->top_logprobs, sizeof l->top_logprobs);
        }
    }
    if (o->token >= 0) {
        r->n_gen++;
        s->gen_tokens++;
        size_t k = tok_stream_put(&r->ts, o->token, s->piece, s->piece_cap);
        if (gen_text_put(&r->text, s->piece, k, false, api_emit, r, &stopped) != SK_OK) r->oom = true;
        if (stopped) {
            engine_cancel(s->e, r->eid);
            api_req_finish(s, r, "stop", NULL);
            return;
        }
    }
    if (!o->finish) return;
    size_t k = tok_stream_flush(&r->ts, s->piece, s->piece_cap);
    if (gen_text_put(&r->text, s->piece, k, true, api_emit, r, &stopped) != SK_OK) r->oom = true;
    api_req_finish(s, r, !strcmp(o->finish, "length") && !stopped ? "length" : "stop", NULL);
}

static void api_gauges(api_server *s) {
    engine_counts(s->e, &s->waiting, &s->running);
    const kv_pool *p = engine_pool(s->e);
    s->kv_total = kv_pool_blocks(p);
    s->kv_used = s->kv_total - kv_pool_available(p);
    s->kv = kv_pool_stats(p);
}

static void *api_engine_main(void *arg) {
    api_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        if (!s->in_head && !s->n_abandoned && !engine_has_work(s->e)) {
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        api_admit(s);
        api_cancel_abandoned(s);
        const engine_output *out = NULL;
        int n_out = 0;
        sk_status st = SK_OK;
        if (engine_has_work(s->e)) {
            pthread_mutex_unlock(&s->mu);
            st = engine_step(s->e, &out, &n_out);
            pthread_mutex_lock(&s->mu);
        }
        if (st != SK_OK) {
            fprintf(stderr, "skein serve: engine step failed: %s\n", sk_errmsg());
            while (s->live) {
                engine_cancel(s->e, s->live->eid);
                api_req_finish(s, s->live, "error", "the engine step failed");
            }
        }
        for (int i = 0; i < n_out && st == SK_OK; i++) api_deliver(s, &out[i]);
        api_gauges(s);
    }
    while (s->in_head) {   /* end every request still here */
        api_req *r = s->in_head;
        s->in_head = r->next;
        r->next = s->live;
        s->live = r;
    }
    s->in_tail = NULL;
    s->n_incoming = 0;
    while (s->live) api_req_finish(s, s->live, "error", "the server is shutting down");
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- handlers: waiting and replies ---- */

/* Waits (s->mu held) until r has text (unless whole) or is done. false when the client has
 * left (r is abandoned) or the server stops. */
static bool api_wait(api_server *s, api_req *r, bool whole) {
    while (!r->done && (whole || r->n_out == 0)) {
        if (s->stopping) return false;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += API_WAIT_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&r->cv, &s->mu, &ts);
        if (!r->done && !http_peer_alive(r->fd)) {
            api_req_abandon(s, r);
            return false;
        }
    }
    return true;
}

/* A copy of s(n) that is valid UTF-8 (JSON needs it; a model may emit any bytes): each
 * maximal ill-formed subpart becomes U+FFFD, as Python's decode(errors="replace") and the
 * WHATWG decoder do. NULL when out of memory; mem_free it. */
static char *api_utf8_clean(const char *s, size_t n) {
    char *o = mem_alloc(3 * n + 1), *w = o;
    if (!o) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned b = u[i];
        int len = b < 0x80 ? 1 : b >= 0xC2 && b <= 0xDF ? 2 : b >= 0xE0 && b <= 0xEF ? 3 : b >= 0xF0 && b <= 0xF4 ? 4 : 0;
        unsigned lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80, hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : 0xBF;
        int k = len ? 1 : 0;
        while (k > 0 && k < len && i + k < n && u[i + k] >= (k == 1 ? lo : 0x80) && u[i + k] <= (k == 1 ? hi : 0xBF)) k++;
        if (len && k == len) {
            memcpy(w, s + i, (size_t)len);
            w += len;
            i += (size_t)len;
        } else {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i += k ? (size_t)k : 1;
        }
    }
    *w = 0;
    return o;
}

/* Token id's text (its bytes, ill-formed UTF-8 replaced; mem_free it) and, when bytes is not
 * NULL, those bytes as a JSON list (OpenAI's "bytes"). NULL when out of memory. */
static char *api_token_text(const api_server *s, int id, cJSON **bytes) {
    size_t n = 0;
    const unsigned char *b = tok_token_bytes(s->t, id, &n);
    if (!b) n = 0;
    if (bytes) {
        *bytes = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(*bytes, cJSON_CreateNumber(b[i]));
    }
    return api_utf8_clean(b ? (const char *)b : "", n);
}

/* The log-probabilities of records r->lp_sent..r->n_lp (s->mu held), which then count as sent:
 * chat's {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]} or the legacy
 * completions shape {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
 * "text_offset"} (offsets in characters of the token texts, continued across chunks). NULL
 * when out of memory. */
static cJSON *api_logprobs_json(const api_server *s, api_req *r) {
    cJSON *j = cJSON_CreateObject();
    cJSON *content = r->chat ? cJSON_AddArrayToObject(j, "content") : NULL;
    cJSON *tokens = r->chat ? NULL : cJSON_AddArrayToObject(j, "tokens");
    cJSON *token_lps = r->chat ? NULL : cJSON_AddArrayToObject(j, "token_logprobs");
    cJSON *tops = r->chat ? NULL : cJSON_AddArrayToObject(j, "top_logprobs");
    cJSON *offsets = r->chat ? NULL : cJSON_AddArrayToObject(j, "text_offset");
    for (; r->lp_sent < r->n_lp; r->lp_sent++) {
        const api_lp *l = &r->lp[r->lp_sent];
        cJSON *bytes = NULL;
        char *text = api_token_text(s, l->token, r->chat ? &bytes : NULL);
        if (!text) { cJSON_Delete(bytes); cJSON_Delete(j); return NULL; }
        cJSON *top = r->chat ? cJSON_CreateArray() : cJSON_CreateObject();
        for (int k = 0; k < l->n_top; k++) {
            cJSON *tb = NULL;
            char *tt = api_token_text(s, l->top_ids[k], r->chat ? &tb : NULL);
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

static cJSON *api_usage(const api_req *r) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + r->n_gen);
    return u;
}

/* A response object: whole (text is all of it, finish set) or a stream chunk (text: the new
 * text or NULL; role: the chat chunk that opens the stream; finish: the last chunk). With
 * logprobs requested, the whole response and every chunk but the role chunk carry the
 * log-probabilities of the tokens generated since the last chunk (s->mu held). */
static cJSON *api_choice_json(const api_server *s, api_req *r, const char *text, bool role,
                              const char *finish) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", r->id);
    cJSON_AddStringToObject(j, "object", r->chat ? (r->stream ? "chat.completion.chunk" : "chat.completion")
                                                 : "text_completion");
    cJSON_AddNumberToObject(j, "created", (double)r->created);
    cJSON_AddStringToObject(j, "model", s->name);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "choices"), c);
    char *clean = text ? api_utf8_clean(text, strlen(text)) : NULL;
    if (text && !clean) { cJSON_Delete(j); return NULL; }
    text = clean;
    cJSON_AddNumberToObject(c, "index", 0);
    if (!r->chat) {
        cJSON_AddStringToObject(c, "text", text ? text : "");
    } else {
        cJSON *m = cJSON_AddObjectToObject(c, r->stream ? "delta" : "message");
        if (role || !r->stream) cJSON_AddStringToObject(m, "role", "assistant");
        if (text) cJSON_AddStringToObject(m, "content", text);
    }
    cJSON *lp = r->p.logprobs && !role && (!r->stream || r->lp_sent < r->n_lp) ? api_logprobs_json(s, r) : NULL;
    if (r->p.logprobs && !role && !lp && (!r->stream || r->lp_sent < r->n_lp)) { mem_free(clean); cJSON_Delete(j); return NULL; }
    if (lp) cJSON_AddItemToObject(c, "logprobs", lp); else cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish); else cJSON_AddNullToObject(c, "finish_reason");
    if (!r->stream) cJSON_AddItemToObject(j, "usage", api_usage(r));
    mem_free(clean);
    return j;
}

/* Sets r->ev to "data: <json>\n\n" (frees j). false when out of memory. */
static bool api_event(api_req *r, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) return false;
    size_t n = strlen(text);
    mem_free(r->ev);
    r->ev = mem_alloc(n + 9);
    if (r->ev) r->ev_n = (size_t)snprintf(r->ev, n + 9, "data: %s\n\n", text);
    r->ev_off = 0;
    cJSON_free(text);
    return r->ev != NULL;
}

/* http_stream_fn of a streaming request: the role chunk (chat), text chunks as they come,
 * the chunk with finish_reason (or an error event), then "data: [DONE]". */
static ssize_t api_stream_read(void *ctx, char *buf, size_t max) {
    api_req *r = ctx;
    api_server *s = r->s;
    while (r->ev_off == r->ev_n) {
        if (r->phase == 3) return HTTP_STREAM_END;
        if (r->phase == 2 && r->include_usage) {   /* OpenAI's usage chunk: no choices */
            r->include_usage = false;
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "id", r->id);
            cJSON_AddStringToObject(j, "object", r->chat ? "chat.completion.chunk" : "text_completion");
            cJSON_AddNumberToObject(j, "created", (double)r->created);
            cJSON_AddStringToObject(j, "model", s->name);
            cJSON_AddArrayToObject(j, "choices");
            pthread_mutex_lock(&s->mu);
            cJSON_AddItemToObject(j, "usage", api_usage(r));
            pthread_mutex_unlock(&s->mu);
            if (!api_event(r, j)) return HTTP_STREAM_ABORT;
            break;
        }
        if (r->phase == 2) {
            static const char done[] = "data: [DONE]\n\n";
            mem_free(r->ev);
            if (!(r->ev = mem_alloc(sizeof done))) return HTTP_STREAM_ABORT;
            memcpy(r->ev, done, sizeof done);
            r->ev_n = sizeof done - 1;
            r->ev_off = 0;
            r->phase = 3;
            break;
        }
        if (r->phase == 0) {
            r->phase = 1;
            if (r->chat && !api_event(r, api_choice_json(s, r, NULL, true, NULL))) return HTTP_STREAM_ABORT;
            continue;
        }
        pthread_mutex_lock(&s->mu);
        bool ok = api_wait(s, r, false);
        cJSON *j = NULL;
        if (ok && r->n_out) {
            j = api_choice_json(s, r, r->out, false, NULL);
            r->n_out = 0;
        } else if (ok && r->done && !r->error[0]) {
            j = api_choice_json(s, r, NULL, false, r->finish);
            r->phase = 2;
        } else if (ok) {
            api_error e;
            api_fail(&e, 500, NULL, "engine_error", "%s", r->error);
            j = api_error_json(&e);
            r->phase = 2;
            r->include_usage = false;
        }
        pthread_mutex_unlock(&s->mu);
        if (!ok || !api_event(r, j)) return HTTP_STREAM_ABORT;
    }
    size_t n = r->ev_n - r->ev_off < max ? r->ev_n - r->ev_off : max;
    memcpy(buf, r->ev + r->ev_off, n);
    r->ev_off += n;
    return (ssize_t)n;
}

static void api_stream_free(void *ctx) {
    api_req *r = ctx;
    api_server *s = r->s;
    pthread_mutex_lock(&s->mu);
    api_req_abandon(s, r);
    api_req_unref(r);
    pthread_mutex_unlock(&s->mu);
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

/* Reads "stop": a string or a list of at most API_MAX_STOP non-empty strings, each shorter
 * than API_STOP_BYTES. */
static bool api_parse_stop(const cJSON *body, api_req *r, api_error *e) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!st || cJSON_IsNull(st)) return true;
    const cJSON *one = cJSON_IsString(st) ? st : NULL;
    int n = one ? 1 : cJSON_IsArray(st) ? cJSON_GetArraySize(st) : -1;
    if (n < 0 || n > API_MAX_STOP) {
        api_fail(e, 400, "stop", "invalid_value", "request: field \"stop\" must be a string or a list of at most %d strings", API_MAX_STOP);
        return false;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *it = one ? one : cJSON_GetArrayItem(st, i);
        size_t len = cJSON_IsString(it) ? strlen(it->valuestring) : 0;
        if (len == 0 || len >= API_STOP_BYTES) {
            api_fail(e, 400, "stop", "invalid_value", "request: \"stop\" entry %d must be a non-empty string of at most %d bytes", i, API_STOP_BYTES - 1);
            return false;
        }
        char *dst = r->stop_buf + (size_t)i * API_STOP_BYTES;
        memcpy(dst, it->valuestring, len + 1);
        r->stop[r->n_stop++] = dst;
    }
    return true;
}

/* The prompt's ids: "prompt" (a string, encoded as skein generate does) or "messages"
 * rendered with the chat template. */
static bool api_parse_prompt(api_server *s, const cJSON *body, api_req *r, api_error *e) {
    int32_t *ids = NULL;
    size_t n = 0;
    sk_status st;
    const char *param = r->chat ? "messages" : "prompt";
    if (!r->chat) {
        const char *prompt = NULL;
        if (api_field_bad(json_get_string(body, "prompt", true, "request", &prompt), e, "prompt")) return false;
        st = tok_encode_ex(s->t, prompt, strlen(prompt), true, &ids, &n);
    } else {
        if (!s->ct) {
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
        for (int i = 0; i < k; i++) {
            const cJSON *m = cJSON_GetArrayItem(msgs, i);
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
                api_fail(e, 400, "messages", "invalid_type", "request: messages[%d] must have string \"role\" and \"content\"", i);
                return false;
            }
            cm[i] = (chat_msg){role->valuestring, content->valuestring};
        }
        char *text = NULL;
        size_t len = 0;
        if ((st = chat_render(s->ct, cm, k, true, &text, &len)) != SK_OK) {
            api_fail(e, 400, "messages", "invalid_value", "%s", sk_errmsg());
            return false;
        }
        st = tok_encode(s->t, text, len, &ids, &n);
        mem_free(text);
    }
    if (st != SK_OK) {
        api_fail(e, 400, param, "invalid_value", "%s", sk_errmsg());
        return false;
    }
    const int max_ctx = s->o.engine.max_ctx;
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

/* Fills r from the body (its "model" already checked by api_body); false with e set (400)
 * when a field is bad. */
static bool api_parse(api_server *s, const cJSON *body, api_req *r, api_error *e) {
    bool ignore_eos = false;
    long n = 1, max_tokens = r->chat ? 0 : 16, top_k = 0, seed = -1;
    double temperature = 1, top_p = 1, min_p = 0, rep = 1, presence = 0, frequency = 0;
    if (api_field_bad(json_get_int(body, "n", false, "request", &n), e, "n")) return false;
    if (n != 1) {
        api_fail(e, 400, "n", "invalid_value", "request: field \"n\" is %ld; this server supports only n=1", n);
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
        api_field_bad(json_get_bool(body, "ignore_eos", false, "request", &ignore_eos), e, "ignore_eos"))
        return false;
    const int max_ctx = s->o.engine.max_ctx;
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
        if (api_field_bad(json_get_bool(so, "include_usage", false, "request.stream_options", &r->include_usage), e, "stream_options"))
            return false;
    }
    if (!api_parse_stop(body, r, e) || !api_parse_prompt(s, body, r, e)) return false;
    if (!max_tokens) max_tokens = max_ctx - r->n_prompt;   /* chat without a limit: the context */
    r->p = (engine_params){.max_tokens = (int)max_tokens,
                           .seed = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) * 6364136223846793005ull + s->next_id,
                           .sample = {.temperature = (float)temperature, .top_k = top_k > 0 ? (int)top_k : 0,
                                      .top_p = (float)top_p, .min_p = (float)min_p, .repetition_penalty = (float)rep,
                                      .presence_penalty = (float)presence, .frequency_penalty = (float)frequency},
                           .logprobs = logprobs, .n_logprobs = (int)n_logprobs};
    if (ignore_eos) return true;   /* vLLM's extension: generate max_tokens whatever comes */
    memcpy(r->p.stop_ids, r->chat ? s->chat_eos_ids : s->eos_ids, sizeof s->eos_ids);
    r->p.n_stop_ids = r->chat ? s->n_chat_eos : s->n_eos;
    return true;
}

/* The body as a JSON object whose "model", when given, is ours; NULL with e set. */
static cJSON *api_body(api_server *s, const http_req *rq, api_error *e) {
    const char *end = NULL, *name = NULL;
    cJSON *body = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, false);
    if (!body || !cJSON_IsObject(body)) {
        api_fail(e, 400, NULL, "invalid_json", body ? "the request body must be a JSON object"
                                                     : "the request body is not valid JSON (near byte %zu)",
                 end ? (size_t)(end - rq->body) : (size_t)0);
        cJSON_Delete(body);
        return NULL;
    }
    if (api_field_bad(json_get_string(body, "model", false, "request", &name), e, "model")) { cJSON_Delete(body); return NULL; }
    if (name && strcmp(name, s->name)) {
        api_fail(e, 404, "model", "model_not_found", "The model `%s` does not exist (this server serves `%s`)", name, s->name);
        cJSON_Delete(body);
        return NULL;
    }
    return body;
}

/* POST /v1/completions and /v1/chat/completions. */
static void api_generate(api_server *s, const http_req *rq, bool chat, http_reply *rp, api_error *e) {
    cJSON *body = api_body(s, rq, e);
    if (!body) return;
    api_req *r = mem_calloc(sizeof *r);
    if (!r) { cJSON_Delete(body); api_fail(e, 500, NULL, "out_of_memory", "out of memory"); return; }
    r->s = s;
    r->chat = chat;
    r->fd = rq->fd;
    r->text = (gen_text){.stop = r->stop, .n_stop = 0};
    bool ok = api_parse(s, body, r, e);
    cJSON_Delete(body);
    r->text.n_stop = r->n_stop;
    if (!ok) { mem_free(r->prompt); mem_free(r); return; }
    pthread_cond_init(&r->cv, NULL);
    r->created = (long)time(NULL);
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->n_inflight >= s->o.engine.max_seqs + s->o.max_queue) {
        pthread_mutex_unlock(&s->mu);
        api_fail(e, 503, NULL, "server_overloaded", s->stopping ? "the server is shutting down"
                 : "the server has %d requests in flight, its limit; retry later", s->o.engine.max_seqs + s->o.max_queue);
        r->refs = 1;
        api_req_unref(r);
        return;
    }
    snprintf(r->id, sizeof r->id, "%s-%llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)++s->next_id);
    r->refs = 2;
    if (s->in_tail) s->in_tail->next = r; else s->in_head = r;
    s->in_tail = r;
    s->n_incoming++;
    s->n_inflight++;
    s->prompt_tokens += (uint64_t)r->n_prompt;
    pthread_cond_signal(&s->wake);
    if (r->stream) {
        pthread_mutex_unlock(&s->mu);
        rp->status = 200;
        rp->content_type = "text/event-stream";
        rp->stream = api_stream_read;
        rp->stream_ctx = r;
        rp->stream_free = api_stream_free;
        return;
    }
    bool ok_wait = api_wait(s, r, true);
    cJSON *j = NULL;
    if (ok_wait && !r->error[0]) j = api_choice_json(s, r, r->out ? r->out : "", false, r->finish);
    else if (ok_wait) api_fail(e, 500, NULL, "engine_error", "%s", r->error);
    else api_fail(e, 503, NULL, "unavailable", s->stopping ? "the server is shutting down" : "the client left");
    api_req_abandon(s, r);
    api_req_unref(r);
    pthread_mutex_unlock(&s->mu);
    if (j) api_reply_json(rp, 200, j);
}

/* ---- the other routes ---- */

/* POST /tokenize (vLLM's): {"prompt"} -> {"tokens", "count", "max_model_len"}, the ids a
 * completion's prompt gets (special tokens added as there). */
static void api_tokenize(api_server *s, const http_req *rq, http_reply *rp, api_error *e) {
    cJSON *body = api_body(s, rq, e);
    if (!body) return;
    const char *prompt = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    if (api_field_bad(json_get_string(body, "prompt", true, "request", &prompt), e, "prompt")) { cJSON_Delete(body); return; }
    sk_status st = tok_encode_ex(s->t, prompt, strlen(prompt), true, &ids, &n);
    cJSON_Delete(body);
    if (st != SK_OK) { api_fail(e, 400, "prompt", "invalid_value", "%s", sk_errmsg()); return; }
    cJSON *j = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(j, "tokens");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    mem_free(ids);
    cJSON_AddNumberToObject(j, "count", (double)n);
    cJSON_AddNumberToObject(j, "max_model_len", s->o.engine.max_ctx);
    api_reply_json(rp, 200, j);
}

/* POST /detokenize (vLLM's): {"tokens": [ids]} -> {"prompt": text}; every id an integer in
 * the vocabulary, at most the context's count of them. */
static void api_detokenize(api_server *s, const http_req *rq, http_reply *rp, api_error *e) {
    cJSON *body = api_body(s, rq, e);
    if (!body) return;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(body, "tokens");
    const int vocab = tok_vocab_size(s->t), max = s->o.engine.max_ctx;
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
    if (n < 0 || n > max) {
        api_fail(e, 400, "tokens", "invalid_value", "request: field \"tokens\" must be a list of at most %d token ids", max);
        cJSON_Delete(body);
        return;
    }
    int32_t *ids = mem_alloc(sizeof *ids * (size_t)(n ? n : 1));
    if (!ids) { cJSON_Delete(body); api_fail(e, 500, NULL, "out_of_memory", "out of memory"); return; }
    for (int i = 0; i < n; i++) {
        const cJSON *it = cJSON_GetArrayItem(a, i);
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(v >= 0 && v < vocab && v == (double)(int32_t)v)) {
            api_fail(e, 400, "tokens", "invalid_value", "request: tokens[%d] must be an integer token id in [0, %d)", i, vocab);
            mem_free(ids);
            cJSON_Delete(body);
            return;
        }
        ids[i] = (int32_t)v;
    }
    cJSON_Delete(body);
    size_t len = 0;
    char *text = tok_decode_ex(s->t, ids, (size_t)n, false, &len);
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
    cJSON *j = cJSON_CreateObject(), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "data"), m);
    cJSON_AddStringToObject(m, "id", s->name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "skein");
    cJSON_AddNumberToObject(m, "max_model_len", s->o.engine.max_ctx);
    api_reply_json(rp, 200, j);
}

static void api_metrics(api_server *s, http_reply *rp) {
    enum { CAP = 4096 };
    char *b = mem_alloc(CAP);
    if (!b) { rp->status = 500; return; }
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    n += (size_t)snprintf(b + n, CAP - n, "# HELP skein_requests_total HTTP requests answered, by status.\n"
                                          "# TYPE skein_requests_total counter\n");
    for (int i = 0; i < API_N_STATUS; i++)
        n += (size_t)snprintf(b + n, CAP - n, "skein_requests_total{status=\"%d\"} %llu\n", api_statuses[i],
                              (unsigned long long)s->by_status[i]);
    n += (size_t)snprintf(b + n, CAP - n,
        "# TYPE skein_prompt_tokens_total counter\nskein_prompt_tokens_total %llu\n"
        "# TYPE skein_generation_tokens_total counter\nskein_generation_tokens_total %llu\n"
        "# TYPE skein_queue_depth gauge\nskein_queue_depth %d\n"
        "# TYPE skein_running_sequences gauge\nskein_running_sequences %d\n"
        "# TYPE skein_kv_blocks_used gauge\nskein_kv_blocks_used %d\n"
        "# TYPE skein_kv_blocks_total gauge\nskein_kv_blocks_total %d\n"
        "# TYPE skein_prefix_cache_hits_total counter\nskein_prefix_cache_hits_total %llu\n"
        "# TYPE skein_prefix_cache_misses_total counter\nskein_prefix_cache_misses_total %llu\n",
        (unsigned long long)s->prompt_tokens, (unsigned long long)s->gen_tokens, s->n_incoming + s->waiting,
        s->running, s->kv_used, s->kv_total, (unsigned long long)s->kv.hits, (unsigned long long)s->kv.misses);
    pthread_mutex_unlock(&s->mu);
    rp->status = 200;
    rp->content_type = "text/plain; version=0.0.4";
    rp->body = b;
    rp->body_len = n < CAP ? n : CAP - 1;
}

void api_handle(void *ctx, const http_req *rq, http_reply *rp) {
    api_server *s = ctx;
    api_error e = {0};
    const bool get = !strcmp(rq->method, "GET"), post = !strcmp(rq->method, "POST");
    const bool v1 = !strncmp(rq->path, "/v1/", 4);
    const bool completions = !strcmp(rq->path, "/v1/completions"), chat = !strcmp(rq->path, "/v1/chat/completions");
    const bool models = !strcmp(rq->path, "/v1/models"), health = !strcmp(rq->path, "/health"),
               metrics = !strcmp(rq->path, "/metrics");
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
    else if (health && get) api_reply_json(rp, 200, cJSON_CreateObject());
    else if (completions || chat || models || metrics || health || tokenize || detokenize)
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

sk_status api_server_create(model *m, const tok *t, const chat_template *ct, const api_opts *o, api_server **out) {
    *out = NULL;
    if (strlen(o->model_name) >= API_NAME_BYTES || (o->api_key && strlen(o->api_key) >= API_NAME_BYTES))
        return sk_fail(SK_EARG, "serve: the model name and --api-key must be shorter than %d bytes", API_NAME_BYTES);
    api_server *s = mem_calloc(sizeof *s);
    if (!s) return sk_fail(SK_ENOMEM, "serve: out of memory");
    s->m = m;
    s->t = t;
    s->ct = ct;
    s->o = *o;
    if (s->o.engine.max_ctx <= 0 || s->o.engine.max_ctx > m->cfg.n_positions) s->o.engine.max_ctx = m->cfg.n_positions;
    snprintf(s->name, sizeof s->name, "%s", o->model_name);
    snprintf(s->key, sizeof s->key, "%s", o->api_key ? o->api_key : "");
    s->n_eos = gen_eos_ids(m, t, NULL, s->eos_ids);
    s->n_chat_eos = gen_eos_ids(m, t, ct, s->chat_eos_ids);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    sk_status st = engine_create(m, &s->o.engine, &s->e);
    if (st != SK_OK) goto err;
    s->piece_cap = tok_stream_cap(t);
    if (!(s->piece = mem_alloc(s->piece_cap))) { st = sk_fail(SK_ENOMEM, "serve: out of memory"); goto err; }
    api_gauges(s);
    if (pthread_create(&s->thread, NULL, api_engine_main, s)) { st = sk_fail(SK_ESTATE, "serve: cannot start the engine thread"); goto err; }
    s->started = true;
    *out = s;
    return SK_OK;
err:
    api_server_free(s);
    return st;
}

void api_server_stop(api_server *s) {
    if (!s || !s->started) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->started = false;
}

void api_server_free(api_server *s) {
    if (!s) return;
    api_server_stop(s);
    engine_free(s->e);
    mem_free(s->piece);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    mem_free(s);
}
