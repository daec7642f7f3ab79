/* cli: what the subcommands share (cli.h), in the library rather than main.c, so that the
 * modules of src/cli/ that the tests link (launch.c) reach it too. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

int cli_fail(sk_status st) {
    if (st == SK_OK || st == SK_ESTATE) return 0;
    fprintf(stderr, "skein: %s\n", sk_errmsg());
    return st == SK_EARG ? 2 : 1;
}

sk_status cli_precision(const char *cmd, const char *text, dtype *out) {
    if (!strcmp(text, "f32")) *out = DT_F32;
    else if (!strcmp(text, "bf16")) *out = DT_BF16;
    else return sk_fail(SK_EARG, "%s: --precision wants f32 or bf16, got '%s'", cmd, text);
    return SK_OK;
}


sk_status cli_offload(const char *cmd, const char *text, bool *out) {
    if (!strcmp(text, "optimizer") || !strcmp(text, "none")) *out = !strcmp(text, "optimizer");
    else if (!strcmp(text, "nvme"))
        return sk_fail(SK_EARG, "%s: --offload nvme is not supported: the optimizer state offloads to host memory "
                                "(--offload optimizer)", cmd);
    else return sk_fail(SK_EARG, "%s: --offload wants optimizer or none, got '%s'", cmd, text);
    return SK_OK;
}
