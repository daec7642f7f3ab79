#!/usr/bin/env python3
"""Loads a Llama-family folder written by skein (model_save, model_save_as, skein init
--arch llama) with transformers and checks it: AutoModelForCausalLM.from_pretrained must
pick the class config.json names (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)
and report no missing, unexpected or mismatched weights; every stored tensor (one file or
the shards the index names) must equal the model's bit for bit, in the stored dtype; a tied
head must share the embedding; the config's rotary settings must survive transformers'
reading. Prints "OK" and the logits of the last position of a fixed sequence (one line,
%.9g), or "FAIL: why" and exits 1.

usage: check_hf_load_llama.py DIR [TOKEN_ID...]"""
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ARCHS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def stored_tensors(folder):
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_file(os.path.join(folder, shard))
        out.update(part)
    if set(out) != set(index["weight_map"]):
        raise ValueError("index weight_map and shard contents differ")
    total = sum(t.numel() * t.element_size() for t in out.values())
    if index["metadata"]["total_size"] != total:
        raise ValueError(f"index total_size {index['metadata']['total_size']} != {total}")
    return out


def main():
    folder = sys.argv[1]
    tokens = [int(t) for t in sys.argv[2:]] or [1, 2, 3, 4, 5]
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype="auto")
    model.eval()
    if type(model).__name__ != ARCHS[cfg["model_type"]]:
        print(f"FAIL: loaded as {type(model).__name__}")
        return 1
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys") or info.get("error_msgs"):
        print(f"FAIL: loading info {info}")
        return 1
    stored = stored_tensors(folder)
    state = model.state_dict()
    for name, t in stored.items():
        if name not in state:
            print(f"FAIL: {name} not in the model")
            return 1
        if state[name].dtype != t.dtype or not torch.equal(state[name], t):
            print(f"FAIL: {name} differs after loading ({state[name].dtype} vs {t.dtype})")
            return 1
    expected = set(state) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set())
    if set(stored) != expected:
        print(f"FAIL: stored tensors differ from the model's: {sorted(set(stored) ^ expected)[:5]}")
        return 1
    if cfg["tie_word_embeddings"] and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        print("FAIL: lm_head is not tied to embed_tokens")
        return 1
    rp = model.config.rope_parameters
    want = cfg.get("rope_scaling") or cfg["rope_parameters"]
    if rp["rope_type"] != want["rope_type"] or rp["rope_theta"] != cfg["rope_theta"]:
        print(f"FAIL: rope parameters read as {rp}")
        return 1
    if cfg["model_type"] != "llama" and (model.config.sliding_window or 0) != (cfg["sliding_window"] or 0):
        print(f"FAIL: sliding_window read as {model.config.sliding_window}")
        return 1
    with torch.no_grad():
        logits = model.float()(torch.tensor([tokens])).logits[0, -1]
    print("OK")
    print(" ".join(f"{x:.9g}" for x in logits.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
