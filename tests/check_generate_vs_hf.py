"""The issue's "done when" for the Llama family, checked as a user would: a Hugging Face
folder written by transformers (random weights, a real tokenizer.json) and a text prompt;
transformers' greedy generate and `skein generate --temperature 0` must print the same text.

usage: check_generate_vs_hf.py SKEIN OUT_DIR
Builds one folder per family (Llama with a Llama-3-style byte-level tokenizer and BOS,
Mistral with a SentencePiece-style tokenizer, Qwen2 with its ChatML-style tokenizer), runs
both programs and prints "PASS name" / "FAIL name: ..." lines."""
import os
import shutil
import subprocess
import sys

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, attn_implementation="eager")
CASES = [
    ("llama_bytelevel", LlamaConfig, LlamaForCausalLM, "llama3.json",
     dict(bos_token_id=0, eos_token_id=1, tie_word_embeddings=False), "The quick brown fox"),
    ("mistral_sentencepiece", MistralConfig, MistralForCausalLM, "sp_meta.json",
     dict(bos_token_id=1, eos_token_id=2, sliding_window=8), "hello world, again"),
    ("qwen2_chatml_tokenizer", Qwen2Config, Qwen2ForCausalLM, "qwen2.json",
     dict(bos_token_id=None, eos_token_id=0, tie_word_embeddings=True), "Numbers 12345 and more"),
]


def main():
    skein, out = sys.argv[1], sys.argv[2]
    for name, cfg_cls, model_cls, tok_file, extra, prompt in CASES:
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        shutil.copy(os.path.join(HERE, "fixtures", "tok2", tok_file), os.path.join(folder, "tokenizer.json"))
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
        torch.manual_seed(7)
        model = model_cls(cfg_cls(vocab_size=len(tok), **TINY, **extra)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.25)
        model.save_pretrained(folder, safe_serialization=True)
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                 pad_token_id=extra["eos_token_id"])
        want = prompt + tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)
        got = subprocess.run([skein, "generate", "--model", folder, "--prompt", prompt, "--max-tokens", "24",
                              "--temperature", "0"], capture_output=True, text=True)
        text = got.stdout[:-1] if got.stdout.endswith("\n") else got.stdout
        if got.returncode == 0 and text == want:
            print(f"PASS {name}")
        else:
            print(f"FAIL {name}: skein {text!r} (exit {got.returncode}: {got.stderr.strip()[-200:]}) vs transformers {want!r}")


if __name__ == "__main__":
    main()
