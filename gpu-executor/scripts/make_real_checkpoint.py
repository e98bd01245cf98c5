#!/usr/bin/env python3
"""A real-shaped Qwen3-MoE checkpoint made by Hugging Face transformers, as a user downloads one from the Hub: the
model of a real config.json (e.g. ../shared/bench/qwen3-30b-a3b-config.json: 128 experts top-8, head_dim 128, 32 query
and 4 key-value heads, a 151,936-token vocabulary) with its layers cut to what the GPUs at hand hold, initialised by
transformers (seeded), cast to bf16 and written by save_pretrained: per-expert tensors under the Hub's names, sharded
into model-0000k-of-0000n.safetensors with model.safetensors.index.json.

usage: make_real_checkpoint.py --config CONFIG.json --layers L --out DIR [--max-shard-size 1GB] [--seed 0]

Prints one JSON line: the parameter count, the files written, and whether every expert tensor is per expert (the
Hub's layout) rather than stacked.
"""
import argparse
import json
import os
import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-shard-size", default="1GB")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = json.load(open(a.config))
    if a.layers < 1 or a.layers > cfg["num_hidden_layers"]:
        sys.exit(f"--layers {a.layers}: the config has {cfg['num_hidden_layers']} layers; give 1 to that")
    cfg["num_hidden_layers"] = a.layers
    cfg["max_window_layers"] = min(cfg.get("max_window_layers", a.layers), a.layers)
    cfg["mlp_only_layers"] = [i for i in cfg.get("mlp_only_layers", []) if i < a.layers]
    for k in ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(k, None)
    config = Qwen3MoeConfig(**cfg)
    torch.manual_seed(a.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3MoeForCausalLM(config)
    model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, max_shard_size=a.max_shard_size, safe_serialization=True)
    files = sorted(f for f in os.listdir(a.out) if f.endswith(".safetensors"))
    index = os.path.join(a.out, "model.safetensors.index.json")
    keys = list(json.load(open(index))["weight_map"]) if os.path.exists(index) else []
    per_expert = any(".mlp.experts.0.gate_proj.weight" in k for k in keys)
    stacked = any(k.endswith("mlp.experts.gate_up_proj") for k in keys)
    print(json.dumps({"checkpoint": a.out, "layers": a.layers, "parameters": params, "files": files,
                      "tensors": len(keys), "hub_per_expert": per_expert, "stacked": stacked,
                      "device": device}), flush=True)
    if not per_expert or stacked:
        sys.exit("save_pretrained did not write the Hub's per-expert layout")


if __name__ == "__main__":
    main()
