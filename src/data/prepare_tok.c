/* prepare_tok: data_prepare, the tokenizer's entry to data_prepare_encoded (prepare.c).
 *
 * Kept apart from prepare.c so that programs using only shards and the loader (the tests)
 * do not pull the tokenizer in when they link libskein.a. tok_encode takes a const tok and
 * is called from several threads at once. A copy of the tokenizer is saved in the folder. */
#include "data/data.h"

#include "base/file.h"

static sk_status encode_with_tok(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tok_encode((const tok *)ctx, text, len, ids, n);
}

sk_status data_prepare(const tok *t, const char *const *inputs, int n_inputs, const char *out_dir,
                       double val_fraction) {
    int eot = tok_eot_id(t);
    if (eot < 0)
        return sk_fail(SK_EARG, "data prepare: the tokenizer has no end-of-text token (<|endoftext|>) "
                                "to separate documents");
    data_prepare_cfg cfg = {
        .encode = encode_with_tok,
        .ctx = (void *)t,
        .eot_id = eot,
        .vocab_size = tok_vocab_size(t),
        .val_fraction = val_fraction,
    };
    SK_TRY(data_prepare_encoded(&cfg, inputs, n_inputs, out_dir));
    /* The folder carries its tokenizer, so training from a preset knows the vocabulary and
     * the model folders it writes can be used for generation. */
    char path[4096];
    return tok_save(t, file_join(path, sizeof path, out_dir, "tokenizer.json"));
}
