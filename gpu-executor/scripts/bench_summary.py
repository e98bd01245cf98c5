#!/usr/bin/env python3
"""The summary of a bench.jsonl that gpu-host-run.sh bench wrote: one row a run, and for each spark-moe run its
ratio against the PyTorch baselines of the same world size in the file and its scaling efficiency against the
file's one-GPU spark-moe run (tokens/s per GPU at N GPUs over tokens/s at 1 GPU, ep 1; the issue's goal is 90%).

Usage: python3 bench_summary.py bench.jsonl
"""
import json
import sys


def main(path):
    runs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not a JSON line ({e}): {line[:80]}")
    ours = [r for r in runs if r.get("impl") == "spark-moe"]
    base = [r for r in runs if r.get("impl") != "spark-moe"]
    one = next((r for r in ours if r.get("world") == 1 and r.get("ep", 1) == 1 and r.get("ac", "none") == "none"),
               None)
    print(f"{'run':<44} {'world':>5} {'ep':>3} {'step s':>8} {'tok/s/GPU':>10} {'MFU':>6} {'peak GB':>8}  vs")
    for r in runs:
        name = r["impl"] + (f" ac {r['ac']}" if r.get("ac", "none") != "none" else "")
        tps = r["tokens_per_s_per_gpu"]
        notes = []
        if r in ours:
            for b in base:
                if b.get("world") == r.get("world"):
                    notes.append(f"{tps / b['tokens_per_s_per_gpu']:.2f}x {b['impl']}")
            if one is not None and r.get("world", 1) > 1:
                notes.append(f"scaling {100 * tps / one['tokens_per_s_per_gpu']:.1f}% of 1 GPU")
        print(f"{name:<44} {r.get('world', 1):>5} {r.get('ep', ''):>3} {r['step_s']:>8.4f} {tps:>10,} "
              f"{100 * r['mfu_bf16_dense_989']:>5.1f}% {r['peak_mem_gb']:>8.2f}  {'; '.join(notes)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
