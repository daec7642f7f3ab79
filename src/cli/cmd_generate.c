/* Placeholder for skein generate while it is being written in this session; replaced before landing. */
#include "cli/cli.h"
int cmd_generate(int argc, char **argv) { (void)argc; (void)argv; return cli_fail(sk_fail(SK_ESTATE, "generate: not built yet")); }
