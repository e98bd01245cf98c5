#!/bin/bash
# A real Qwen3-MoE checkpoint on a GPU host, end to end, as a user fine-tunes one: transformers makes it from a real
# config.json with the layers cut to what the GPUs hold (make_real_checkpoint.py: bf16, per-expert Hub tensors,
# sharded with an index); spark-moe loads it and its logits and loss on the same token ids equal transformers'
# (hf_logits_check.py: ForwardLogits on the GPU against transformers in float32); the Spark job trains from it
# (model.hf_dir, through spark-gpu-run.sh on the same carry) and saves its model, which transformers loads back with
# logits matching spark-moe's.
#
# Usage (repository root, on the GPU host): S=.device-carry/spark bash gpu-executor/scripts/real-checkpoint-run.sh
# Environment: REAL_CONFIG (default ../shared/bench/qwen3-30b-a3b-config.json, else bench/ beside this repository's
#   carry), REAL_LAYERS (2), REAL_STEPS (6), B (2), T (1024), OUT (/tmp/out), and what spark-gpu-run.sh takes
#   (S or SMS, GPUS, EP, ...).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-/tmp/out}
W=${W:-/tmp/real-checkpoint}
mkdir -p "$OUT" "$W"
CONFIG=${REAL_CONFIG:-../shared/bench/qwen3-30b-a3b-config.json}
[ -f "$CONFIG" ] || { echo "no model config at $CONFIG: set REAL_CONFIG to a Qwen3-MoE config.json"; exit 2; }
CKPT=$W/checkpoint
rm -rf "$CKPT"
T0=$(date +%s); el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }

el "transformers writes the checkpoint (${REAL_LAYERS:-2} layers of $(basename "$CONFIG"))"
python3 "$HERE/make_real_checkpoint.py" --config "$CONFIG" --layers "${REAL_LAYERS:-2}" --out "$CKPT" \
  --max-shard-size 1GB 2>&1 | tail -3 | tee "$OUT/real-checkpoint.json" || exit 1
grep -q '"hub_per_expert": true' "$OUT/real-checkpoint.json" || exit 1

# the Spark job's carry, unpacked once: both runs below and the logits checks use it
# shellcheck source=spark-carry-lib.sh
. "$HERE/spark-carry-lib.sh"
[ -n "${SMS:-}" ] || spark_carry_unpack "${S:-.device-carry/spark}" "${UNPACK:-/tmp/sms}"
export SMS
spark_carry_libs
check() { # $1 = name, $2 = model folder
  LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} python3 "$HERE/hf_logits_check.py" --model "$2" \
    --java "$SMS/runtime/bin/java" --classpath "$SMS/lib/*" --out "$W/$1" --batch 2 --seq 256 \
    2>&1 | tee "$OUT/$1.log" | tail -2
}

el "loaded as transformers wrote it: spark-moe's logits and loss against transformers'"
check real-load "$CKPT"; rc=$?

el "the Spark job trains from it (model.hf_dir) and saves its model"
OUT=$OUT W=$W/job HF_DIR=$CKPT B=${B:-2} T=${T:-1024} STEPS=${REAL_STEPS:-6} EVERY=0 \
  bash "$HERE/spark-gpu-run.sh" job 2>&1 | tail -12 | tee "$OUT/real-job.txt"
model=$W/job/run/run-001/model
[ -f "$model/config.json" ] || { echo "the job wrote no model in $model"; exit 1; }
ls -la "$model" | tee -a "$OUT/real-job.txt"

el "the saved model loaded back by transformers"
check real-saved "$model" || rc=1
el "done"
exit $rc
