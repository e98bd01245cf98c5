#!/usr/bin/env python3
"""Loads a spark-moe model (a Spark job's output.dir/model: config.json + model.safetensors) with Hugging Face
transformers and compares its logits with spark-moe's own on the same token ids.

spark-moe's logits come from dev.sparkmoe.gpu.tools.ForwardLogits (CUDA backend with exact f32 products where a GPU is
usable, else the CPU backend); transformers runs in float32 (on the GPU when there is one). Prints one JSON line and
exits 0 when the logits agree: max |difference| <= --tol times max |logit|, and the same argmax at >= 99.9% of the
positions; and when the next-token losses of the two agree within --tol relatively (a first training step's loss).

usage: hf_logits_check.py --model DIR --java JAVA --classpath 'CARRY/lib/*' [--out DIR] [--batch 2] [--seq 128]
                          [--tol 1e-4] [--backend auto|cuda|cpu]
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def next_token_loss(logits, ids):
    """Mean cross-entropy of positions 0..T-2 predicting ids 1..T-1, in float64."""
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--java", default="java")
    ap.add_argument("--classpath", required=True)
    ap.add_argument("--out", default="/tmp/out")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--backend", default="auto")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    config = json.load(open(os.path.join(a.model, "config.json")))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config["vocab_size"], (a.batch, a.seq), generator=g, dtype=torch.int64)
    inputs = os.path.join(a.out, "logits-inputs.safetensors")
    ours_file = os.path.join(a.out, "logits-spark-moe.safetensors")
    save_file({"input_ids": ids}, inputs)
    cmd = [a.java, "-Xss4m", "-Dorg.bytedeco.javacpp.pathsFirst=true", "-cp", a.classpath,
           "dev.sparkmoe.gpu.tools.ForwardLogits", "--checkpoint", a.model, "--inputs", inputs, "--out", ours_file,
           "--backend", a.backend]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout.strip())
    if r.returncode != 0:
        print(r.stderr[-4000:], file=sys.stderr)
        print(json.dumps({"check": "hf-logits", "ok": False, "error": "ForwardLogits failed"}))
        return 1
    ours = load_file(ours_file)["logits"].double()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        theirs = model(ids.to(device)).logits.double().cpu()
    diff = (ours - theirs).abs()
    scale = theirs.abs().max().item()
    same_argmax = (ours.argmax(-1) == theirs.argmax(-1)).double().mean().item()
    # the language-model loss of each (every position predicting the next id), as a training step's first loss
    loss_ours, loss_theirs = next_token_loss(ours, ids), next_token_loss(theirs, ids)
    ok = (diff.max().item() <= a.tol * scale and same_argmax >= 0.999
          and abs(loss_ours - loss_theirs) <= a.tol * max(1.0, abs(loss_theirs)))
    print(json.dumps({"check": "hf-logits", "model": a.model, "transformers_class": type(model).__name__,
                      "shape": list(theirs.shape), "max_abs_diff": diff.max().item(),
                      "mean_abs_diff": diff.mean().item(), "max_abs_logit": scale, "same_argmax": same_argmax,
                      "loss_spark_moe": loss_ours, "loss_transformers": loss_theirs,
                      "tol": a.tol, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
