/* args: flag parsing for the subcommands, driven by a table.
 *
 *   const char *out = NULL; long steps = 40;
 *   arg_spec specs[] = {
 *       {"--out", ARG_STR, &out, "DIR", "where to write", true},
 *       {"--steps", ARG_INT, &steps, "N", "optimizer steps", false},
 *   };
 *   if (args_parse("skein train", argc, argv, specs, ARG_COUNT(specs)) != SK_OK) ...
 *
 * argv[0] is the first flag (the command words are already consumed). An unknown flag, a
 * missing or malformed value, or a missing required flag is SK_EARG with a message naming
 * the flag. "--help" prints the table and returns SK_ESTATE (the caller exits 0). */
#ifndef SKEIN_ARGS_H
#define SKEIN_ARGS_H

#include "base/base.h"

typedef enum arg_kind {
    ARG_STR,    /* const char ** */
    ARG_INT,    /* long * */
    ARG_FLOAT,  /* double * */
    ARG_BOOL,   /* bool *: the flag alone sets true */
    ARG_LIST,   /* arg_list *: one or more values up to the next flag */
} arg_kind;

typedef struct arg_list { const char **items; int n; } arg_list;

typedef struct arg_spec {
    const char *name;
    arg_kind kind;
    void *dst;
    const char *metavar;
    const char *help;
    bool required;
    bool seen;         /* set by args_parse */
} arg_spec;

#define ARG_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

sk_status args_parse(const char *command, int argc, char **argv, arg_spec *specs, int n);
void args_usage(const char *command, const arg_spec *specs, int n);

#endif
