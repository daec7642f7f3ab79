#!/usr/bin/env python3
"""Loads a model folder written by skein (model_save) with transformers and checks it:
GPT2LMHeadModel.from_pretrained must report no missing or unexpected weights, every tensor
of the model must equal the one in model.safetensors bit for bit, and the head must be tied.
Prints "OK" and then the logits of the last position for a fixed token sequence (one line,
%.9g), or "FAIL: why" and exits 1.

usage: check_hf_load.py DIR [TOKEN_ID...]"""
import sys

import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def main():
    folder = sys.argv[1]
    tokens = [int(t) for t in sys.argv[2:]] or [1, 2, 3, 4, 5]
    model, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    model.eval()
    missing = [k for k in info["missing_keys"] if not k.endswith(".attn.bias")]
    if missing or info["unexpected_keys"] or info.get("mismatched_keys"):
        print(f"FAIL: loading info {info}")
        return 1
    stored = load_file(f"{folder}/model.safetensors")
    state = model.state_dict()
    for name, t in stored.items():
        if name not in state:
            print(f"FAIL: {name} not in the model")
            return 1
        if not torch.equal(state[name], t):
            print(f"FAIL: {name} differs after loading")
            return 1
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        print("FAIL: lm_head is not tied to wte")
        return 1
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, -1]
    print("OK")
    print(" ".join(f"{x:.9g}" for x in logits.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
