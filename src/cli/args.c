/* args: table-driven flag parsing (see args.h). */
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void args_usage(const char *command, const arg_spec *specs, int n) {
    printf("usage: %s", command);
    for (int i = 0; i < n; i++) {
        const arg_spec *s = &specs[i];
        const char *mv = s->kind == ARG_BOOL ? "" : s->metavar ? s->metavar : "X";
        printf(s->required ? " %s%s%s" : " [%s%s%s]", s->name, *mv ? " " : "", mv);
    }
    printf("\n");
    for (int i = 0; i < n; i++)
        printf("  %-22s %s\n", specs[i].name, specs[i].help ? specs[i].help : "");
}

static sk_status parse_value(const char *command, arg_spec *s, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (s->kind) {
    case ARG_STR: *(const char **)s->dst = v; break;
    case ARG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end)
            return sk_fail(SK_EARG, "%s: %s wants an integer, got '%s'", command, s->name, v);
        *(long *)s->dst = x;
        break;
    }
    case ARG_FLOAT: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x))
            return sk_fail(SK_EARG, "%s: %s wants a number, got '%s'", command, s->name, v);
        *(double *)s->dst = x;
        break;
    }
    default: SK_ASSERT(!"parse_value: kind without a single value");
    }
    return SK_OK;
}

sk_status args_parse(const char *command, int argc, char **argv, arg_spec *specs, int n) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            args_usage(command, specs, n);
            return SK_ESTATE;
        }
        arg_spec *s = NULL;
        for (int k = 0; k < n && !s; k++)
            if (!strcmp(specs[k].name, a)) s = &specs[k];
        if (!s) {
            if (a[0] == '-') return sk_fail(SK_EARG, "%s: unknown flag %s (see --help)", command, a);
            return sk_fail(SK_EARG, "%s: unexpected argument '%s' (see --help)", command, a);
        }
        s->seen = true;
        if (s->kind == ARG_BOOL) {
            *(bool *)s->dst = true;
        } else if (s->kind == ARG_LIST) {
            arg_list *l = s->dst;
            l->items = (const char **)&argv[i + 1];
            l->n = 0;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) { i++; l->n++; }
            if (l->n == 0) return sk_fail(SK_EARG, "%s: %s wants at least one value", command, s->name);
        } else {
            if (i + 1 >= argc) return sk_fail(SK_EARG, "%s: %s wants a value", command, s->name);
            SK_TRY(parse_value(command, s, argv[++i]));
        }
    }
    for (int k = 0; k < n; k++)
        if (specs[k].required && !specs[k].seen)
            return sk_fail(SK_EARG, "%s: missing required flag %s", command, specs[k].name);
    return SK_OK;
}
