/* cli: the subcommands of ./skein, one file each (cmd_*.c). Each takes the arguments after
 * its command words and returns the process exit status; on failure it has already printed
 * a message naming the problem (cli_fail). */
#ifndef SKEIN_CLI_H
#define SKEIN_CLI_H

#include "base/base.h"
#include "tensor/dtype.h"

int cmd_tokenizer(int argc, char **argv);   /* skein tokenizer train|encode */
int cmd_data(int argc, char **argv);        /* skein data prepare */
int cmd_init(int argc, char **argv);        /* skein init */
int cmd_train(int argc, char **argv);       /* skein train */
int cmd_generate(int argc, char **argv);    /* skein generate */
int cmd_serve(int argc, char **argv);       /* skein serve */
int cmd_bench(int argc, char **argv);       /* skein bench train|throughput|latency|serve|load|attention */
int cmd_bench_serve(int argc, char **argv); /* skein bench serve (cmd_bench dispatches to it) */
int cmd_bench_load(int argc, char **argv);  /* skein bench load (cmd_bench dispatches to it) */
int cmd_demo(int argc, char **argv);        /* skein demo */

/* --kv-cache-dtype's help (generate, serve, bench throughput|latency: kv_dtype_parse reads it). */
#define CLI_KV_DTYPE_HELP "KV cache dtype (default auto: the model's inference dtype, f32 on the CPU, bf16 on " \
    "CUDA); bf16 or f16 on the CPU halve its bytes: twice the blocks for the same --kv-memory"

/* Prints "skein: <message of st>" to stderr and returns the exit status for st (0 for the
 * SK_ESTATE that args_parse returns after --help). */
int cli_fail(sk_status st);
/* The dtype a --precision flag of command cmd names ("f32", "bf16"); SK_EARG naming it
 * otherwise. */
sk_status cli_precision(const char *cmd, const char *text, dtype *out);
/* --offload's value: "optimizer" (ZeRO-Offload) sets *out, "none" clears it; "nvme" and anything
 * else are SK_EARG naming cmd. */
sk_status cli_offload(const char *cmd, const char *text, bool *out);

#endif
