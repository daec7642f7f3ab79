/* plot: loss curves as SVG (see plot.h). Axes are linear; the y range covers the data. */
#include "train/plot.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/file.h"
#include "base/json.h"

typedef struct series { double *x, *y; int n, cap; } series;

static sk_status series_push(series *s, double x, double y) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        double *nx = mem_realloc(s->x, sizeof(double) * (size_t)s->cap);
        if (!nx) return SK_ENOMEM;
        s->x = nx;
        double *ny = mem_realloc(s->y, sizeof(double) * (size_t)s->cap);
        if (!ny) return SK_ENOMEM;
        s->y = ny;
    }
    s->x[s->n] = x;
    s->y[s->n++] = y;
    return SK_OK;
}

static void polyline(FILE *f, const series *s, const char *color, double x0, double x1, double y0, double y1) {
    const double W = 640, H = 360, L = 60, R = 20, T = 30, B = 40;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
    for (int i = 0; i < s->n; i++) {
        double px = L + (s->x[i] - x0) / (x1 - x0) * (W - L - R);
        double py = H - B - (s->y[i] - y0) / (y1 - y0) * (H - T - B);
        fprintf(f, "%.1f,%.1f ", px, py);
    }
    fprintf(f, "\"/>\n");
}

static sk_status write_svg(const char *path, const series *train, const series *val) {
    double x0 = train->x[0], x1 = train->x[train->n - 1], y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < train->n; i++) { y0 = fmin(y0, train->y[i]); y1 = fmax(y1, train->y[i]); }
    for (int i = 0; i < val->n; i++) { y0 = fmin(y0, val->y[i]); y1 = fmax(y1, val->y[i]); }
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return sk_fail(SK_EIO, "cannot create %s", tmp);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"360\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"640\" height=\"360\" fill=\"white\"/>\n"
               "<text x=\"320\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">loss per step</text>\n"
               "<line x1=\"60\" y1=\"320\" x2=\"620\" y2=\"320\" stroke=\"black\"/>\n"
               "<line x1=\"60\" y1=\"30\" x2=\"60\" y2=\"320\" stroke=\"black\"/>\n");
    for (int k = 0; k <= 4; k++) {
        double v = y0 + (y1 - y0) * k / 4.0, py = 320 - 290.0 * k / 4.0;
        fprintf(f, "<text x=\"55\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", py + 4, v);
        fprintf(f, "<line x1=\"60\" y1=\"%.1f\" x2=\"620\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", py, py);
        double sx = x0 + (x1 - x0) * k / 4.0, px = 60 + 560.0 * k / 4.0;
        fprintf(f, "<text x=\"%.1f\" y=\"336\" text-anchor=\"middle\">%.0f</text>\n", px, sx);
    }
    fprintf(f, "<text x=\"340\" y=\"354\" text-anchor=\"middle\">step</text>\n");
    polyline(f, train, "#1f77b4", x0, x1, y0, y1);
    if (val->n > 0) polyline(f, val, "#d62728", x0, x1, y0, y1);
    fprintf(f, "<text x=\"600\" y=\"48\" text-anchor=\"end\" fill=\"#1f77b4\">train</text>\n");
    if (val->n > 0) fprintf(f, "<text x=\"600\" y=\"64\" text-anchor=\"end\" fill=\"#d62728\">validation</text>\n");
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0 || rename(tmp, path) != 0) return sk_fail(SK_EIO, "cannot write %s", path);
    return SK_OK;
}

sk_status plot_loss_svg(const char *log_jsonl, const char *svg_path) {
    char *text;
    size_t n;
    SK_TRY(file_read_all(log_jsonl, &text, &n));
    series train = {0}, val = {0};
    sk_status st = SK_OK;
    for (char *line = strtok(text, "\n"); line && st == SK_OK; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        const cJSON *step = cJSON_GetObjectItem(j, "step"), *loss = cJSON_GetObjectItem(j, "loss"),
                    *vl = cJSON_GetObjectItem(j, "val_loss");
        if (cJSON_IsNumber(step) && cJSON_IsNumber(loss)) st = series_push(&train, step->valuedouble, loss->valuedouble);
        if (st == SK_OK && cJSON_IsNumber(step) && cJSON_IsNumber(vl)) st = series_push(&val, step->valuedouble, vl->valuedouble);
        cJSON_Delete(j);
    }
    mem_free(text);
    if (st == SK_OK && train.n > 0) st = write_svg(svg_path, &train, &val);
    mem_free(train.x);
    mem_free(train.y);
    mem_free(val.x);
    mem_free(val.y);
    return st == SK_ENOMEM ? sk_fail(SK_ENOMEM, "out of memory plotting %s", log_jsonl) : st;
}
