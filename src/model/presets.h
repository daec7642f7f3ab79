/* presets: model shapes by name, the real shapes of their namesakes ("gpt2" is GPT-2 124M
 * with HF's vocabulary of 50257), for `skein init`, `skein train --model PRESET` and the
 * benchmarks. */
#ifndef SKEIN_PRESETS_H
#define SKEIN_PRESETS_H

#include "model/model.h"

/* Fills cfg for the named preset; vocab > 0 overrides its vocabulary size. SK_EARG with the
 * list of names when unknown. */
sk_status model_preset(const char *name, int vocab, model_config *cfg);
bool model_preset_exists(const char *name);

#endif
