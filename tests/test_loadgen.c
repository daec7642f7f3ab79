/* loadgen's parts that need no server (bench/loadgen.h): the summary statistics against values
 * worked by hand from numpy's definitions (np.mean, np.median, np.std with ddof 0,
 * np.percentile's linear interpolation), and the event-stream parser against the events the
 * WHATWG format defines for a stream with every line ending, comments, other fields, multi-line
 * data and a last event without its blank line, fed whole and split at every byte. The
 * schedule and the HTTP side are tested end to end by tests/cli_bench_serve.sh. */
#include "bench/loadgen.h"
#include "test.h"

TEST(summary_matches_numpy) {
    double v[100];
    for (int i = 0; i < 100; i++) v[i] = (double)((i * 37) % 100 + 1);   /* 1..100, shuffled */
    loadgen_stats s = loadgen_summary(v, 100);
    CHECK_NEAR(s.mean, 50.5, 1e-12);
    CHECK_NEAR(s.median, 50.5, 1e-12);
    CHECK_NEAR(s.p99, 99.01, 1e-9);                  /* 99 + 0.01 (100 - 99) */
    CHECK_NEAR(s.std, sqrt(9999.0 / 12.0), 1e-9);    /* population std of 1..n: sqrt((n^2 - 1) / 12) */
    for (int i = 1; i < 100; i++) CHECK(v[i - 1] <= v[i]);
    double two[] = {3, 1};
    s = loadgen_summary(two, 2);
    CHECK_NEAR(s.median, 2, 1e-12);
    CHECK_NEAR(s.p99, 2.98, 1e-12);                  /* 1 + 0.99 (3 - 1) */
    CHECK_NEAR(s.std, 1, 1e-12);
    double one[] = {7};
    s = loadgen_summary(one, 1);
    CHECK(s.mean == 7 && s.median == 7 && s.p99 == 7 && s.std == 0);
    s = loadgen_summary(NULL, 0);
    CHECK(s.mean == 0 && s.median == 0 && s.p99 == 0 && s.std == 0);
}

/* Collects events as "<data>|" into a buffer. */
typedef struct seen { char text[512]; size_t n; int events; } seen;

static bool collect(void *ctx, const char *data, size_t n) {
    seen *s = ctx;
    if (strlen(data) != n || s->n + n + 2 > sizeof s->text) return false;
    memcpy(s->text + s->n, data, n);
    s->text[s->n + n] = '|';
    s->n += n + 1;
    s->text[s->n] = 0;
    s->events++;
    return true;
}

static const char stream[] =
    ": a comment\r\n"
    "data: {\"a\":1}\r\n"
    "\r\n"
    "data: crlf\r\n"          /* "\r\n" ends one line, not two */
    "data: lines\r\n"
    "\r\n"
    "event: chunk\n"
    "data:first\n"
    "data: second\n"
    "id: 7\n"
    "retry: 10\n"
    "\n"
    "\n"                       /* a blank line with no data: no event */
    "data\r"                   /* a field without a colon: empty data */
    "\r"
    "datum: not data\n"
    "data: [DONE]\r\n\r\n"
    "data: tail";              /* no blank line: reported at the end */
static const char stream_events[] = "{\"a\":1}|crlf\nlines|first\nsecond||[DONE]|tail|";

TEST(sse_events_split_anywhere) {
    const size_t n = sizeof stream - 1;
    for (size_t step = 1; step <= n; step = step < 8 ? step + 1 : step * 2) {
        loadgen_sse p = {0};
        seen s = {0};
        bool ok = true;
        for (size_t i = 0; ok && i < n; i += step)
            ok = loadgen_sse_feed(&p, stream + i, i + step < n ? step : n - i, collect, &s);
        ok = ok && loadgen_sse_end(&p, collect, &s);
        loadgen_sse_free(&p);
        CHECK_MSG(ok, "parse stopped, reads of %zu bytes", step);
        CHECK_MSG(!strcmp(s.text, stream_events) && s.events == 6, "reads of %zu bytes: events '%s'", step, s.text);
    }
}

static bool stop_at_second(void *ctx, const char *data, size_t n) {
    return ++*(int *)ctx < 2;
}

TEST(sse_callback_stops_the_parse) {
    loadgen_sse p = {0};
    int calls = 0;
    const char two[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    CHECK(!loadgen_sse_feed(&p, two, sizeof two - 1, stop_at_second, &calls));
    loadgen_sse_free(&p);
    CHECK(calls == 2);
}

TEST(run_refuses_bad_options) {
    loadgen_opts o = loadgen_opts_default();
    loadgen_result r;
    o.rate = 0;
    CHECK(loadgen_run(&o, &r) == SK_EARG);
    o = loadgen_opts_default();
    o.num_prompts = 0;
    CHECK(loadgen_run(&o, &r) == SK_EARG);
    o = loadgen_opts_default();
    o.concurrency = -1;
    CHECK(loadgen_run(&o, &r) == SK_EARG);
}

TEST_MAIN()
