/* presets: model shapes by name, the real shapes of their namesakes ("gpt2" is GPT-2 124M
 * with HF's vocabulary of 50257; "llama2-7b" is Llama-2-7b-hf, "llama3-8b" Meta-Llama-3-8B,
 * ...), for `skein init`, `skein train --model PRESET` and the benchmarks (the 13B to 70B
 * shapes are there for benchmarks that need no files). */
#ifndef SKEIN_PRESETS_H
#define SKEIN_PRESETS_H

#include "model/model.h"

/* Fills cfg for the named preset; vocab > 0 overrides its vocabulary size (the preset's
 * bos/eos ids are then dropped). SK_EARG with the list of names when unknown. */
sk_status model_preset(const char *name, int vocab, model_config *cfg);
bool model_preset_exists(const char *name);
/* The preset's model_arch_kind, or -1 when unknown. */
int model_preset_arch(const char *name);

/* Fills a Llama config ("llama", untied head, rope_theta 10000, RMSNorm eps 1e-5, head_dim
 * C/NH, no special tokens, bf16) for the shape given; model_config_validate checks it. */
void model_config_llama(model_config *cfg, int n_layer, int n_head, int n_kv_head, int n_embd, int ffn_dim,
                        int n_ctx, int vocab);

#endif
