/* Placeholder for skein tokenizer while it is being written in this session; replaced before landing. */
#include "cli/cli.h"
int cmd_tokenizer(int argc, char **argv) { (void)argc; (void)argv; return cli_fail(sk_fail(SK_ESTATE, "tokenizer: not built yet")); }
