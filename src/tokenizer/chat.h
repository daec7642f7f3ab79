/* chat: chat templates — a conversation rendered as the prompt text a chat model was trained
 * on, equal to what transformers' apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=...) renders with the real Jinja templates of these families:
 *
 *   llama3   Meta-Llama-3-*-Instruct: bos, then per message
 *            <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT(stripped)<|eot_id|>
 *   llama2   Llama-2-*-chat: <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s>...
 *   chatml   Qwen2-*-Instruct: <|im_start|>ROLE\nCONTENT<|im_end|>\n, with the template's default
 *            system prompt ("You are a helpful assistant.") when the conversation has none
 *   mistral  Mistral-7B-Instruct-v0.2: <s> [INST] (SYSTEM\n\n)USER [/INST] ASSISTANT</s>...
 *
 *   chat_template ct;
 *   chat_template_load("DIR/tokenizer_config.json", NULL, &ct);   // or a NAME: "llama3", ...
 *   chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
 *   char *text; size_t n;
 *   chat_render(&ct, msgs, 2, true, &text, &n);   // then tok_encode (special tokens parsed)
 *   chat_template_free(&ct);
 *
 * A folder's template is recognized from its tokenizer_config.json "chat_template" by the
 * markers each family's template carries (<|start_header_id|>, <|im_start|>, <<SYS>>,
 * [INST]); Jinja itself is not run. The templates' errors (roles that do not alternate, for
 * llama2 and mistral) are SK_EARG with the template's message. Tests: tests/test_tok2.c
 * against renders made by transformers (tests/fixtures/make_tok2_fixtures.py). */
#ifndef SKEIN_CHAT_H
#define SKEIN_CHAT_H

#include <stddef.h>

#include "base/base.h"

typedef enum chat_family { CHAT_LLAMA3 = 1, CHAT_LLAMA2, CHAT_CHATML, CHAT_MISTRAL } chat_family;

typedef struct chat_msg { const char *role, *content; } chat_msg;

typedef struct chat_template {
    chat_family family;
    char *bos, *eos;            /* bos_token / eos_token as the template sees them ("" if none) */
    char *default_system;      /* chatml: the system prompt of a conversation without one, or NULL */
} chat_template;

/* Names skein knows, for messages: "llama3, llama2, chatml, mistral". */
extern const char chat_template_names[];

/* A built-in template by name, with the family's usual bos/eos; SK_EARG naming an unknown name. */
sk_status chat_template_named(const char *name, chat_template *out);
/* Recognizes the family of a Jinja template text; SK_EFORMAT naming `what` when it is none of
 * the known ones. bos/eos: the tokenizer's tokens (NULL: the family's usual ones). */
sk_status chat_template_detect(const char *jinja, const char *bos, const char *eos, const char *what,
                               chat_template *out);
/* The template of a model folder's tokenizer_config.json; name (not NULL) picks the family
 * instead of the file's chat_template. SK_EARG when the file has no chat_template and no
 * name is given (a message naming the file and --chat-template), SK_EIO when it is missing
 * and no name is given. */
sk_status chat_template_load(const char *config_path, const char *name, chat_template *out);
void chat_template_free(chat_template *ct);

/* Renders n messages; *out is NUL-terminated, *len bytes (mem_free). */
sk_status chat_render(const chat_template *ct, const chat_msg *msgs, int n, bool add_generation_prompt,
                      char **out, size_t *len);
/* The token text that ends an assistant turn: <|eot_id|>, <|im_end|>, or the eos token. */
const char *chat_end_token(const chat_template *ct);

/* Reads a conversation file: a JSON list of {"role": ..., "content": ...}. *msgs and its
 * strings are one allocation (mem_free(*msgs)). SK_EFORMAT naming the file and the entry. */
sk_status chat_messages_load(const char *path, chat_msg **msgs, int *n);

#endif
