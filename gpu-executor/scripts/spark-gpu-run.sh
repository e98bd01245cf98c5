#!/bin/bash
# Runs the spark-moe job through Spark on a GPU host, as users submit it: a standalone Master and one Worker started
# from the carry's own runtime, the Worker's GPUs found by a discovery script (get-gpus-resources.sh, as Spark's
# getGpusResources.sh), one executor and one barrier task per GPU (spark.{worker,executor,task}.resource.gpu.amount),
# the job jar submitted through org.apache.spark.deploy.SparkSubmit, training a model config inline (default
# qwen3moe-c1.json) on a parquet DataFrame of token ids that this script writes (B sequences of T tokens per rank
# and step). The carry is built by make-spark-carry.sh (spark-moe-spark-base.tar.xz: a jlink'ed Java 17 runtime and
# Spark's jars trimmed to what the job loads; spark-moe-spark-app.tar.xz: spark-moe's jars with the CUDA presets).
#
# Usage (repository root): S=.device-carry/spark bash gpu-executor/scripts/spark-gpu-run.sh MODE...
#   job     one training run; prints its steps and the log lines where each rank takes its GPU from the task's
#           resources and builds NCCL over the barrier rendezvous
#   bench   tokens/s per GPU of the Spark job against the standalone launcher (spark-moe-gpu launch ... TrainBench)
#           on the same model, batch and GPUs, in this call
#   kill    an uninterrupted run, then the same run with one executor killed (kill -9) after a committed
#           checkpoint: the stage is retried, resumes from it and must end with the same losses
#   logits  the final model of the last run loaded by transformers, its logits compared with spark-moe's
#           (hf_logits_check.py); needs python3 with torch, transformers and safetensors
#   all     bench kill logits
# Environment:
#   S (carry folder holding the spark-moe-spark-*.tar.xz archives) or SMS (an unpacked carry, e.g.
#   .device-carry/spark-build/stage/spark-moe)
#   OUT (results, default /tmp/out), GPUS (default: every GPU nvidia-smi lists), EP (default 1)
#   FAKE_GPUS=N   no GPU: the discovery script reports N made-up GPUs (use with BACKEND=cpu): the local proof
#   BACKEND (cuda | cpu | auto; default cuda), PRECISION (bf16), MODEL (model config JSON, default
#   $SMS/bench/qwen3moe-c1.json), HF_DIR (train from this Hugging Face checkpoint folder instead: model.hf_dir),
#   B (4), T (2048), STEPS (20), KILL_STEPS (30), EVERY (10), CPT (cores per task,
#   default nproc/GPUs up to 8), EXEC_MEM (executor memory, default 32g: a rank's checkpoint state is host memory),
#   DRIVER_MEM (4g), PORT (7077), KEEP_CHECKPOINTS=1 (keep each run's checkpoints; default: deleted after the run),
#   UNPACK (where S's archives are unpacked, default /tmp/sms), W (the runs' work folder, default /tmp/spark-gpu-run),
#   SPARK_MOE_JAVA_HOME (default the carry's runtime), JAVA_TOOL_OPTIONS (passed to every JVM; make-spark-carry.sh records
#   class loading with it), EXTRA_JARS (comma-separated jars added to the job, e.g. OpenBLAS for the CPU backend)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=spark-carry-lib.sh
. "$HERE/spark-carry-lib.sh"
[ -n "${SMS:-}" ] || spark_carry_unpack "${S:-.device-carry/spark}" "${UNPACK:-/tmp/sms}"
SMS=$(cd "$SMS" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export JAVA_HOME=${SPARK_MOE_JAVA_HOME:-$SMS/runtime}
JAVA=$JAVA_HOME/bin/java
export SPARK_HOME=$SMS SPARK_SCALA_VERSION=2.13 SPARK_LOCAL_IP=127.0.0.1 SPARK_CONF_DIR=$SMS/conf
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BACKEND=${BACKEND:-cuda}
PRECISION=${PRECISION:-bf16}
if [ -n "${FAKE_GPUS:-}" ]; then
  export FAKE_GPUS
  GPUS=${GPUS:-$FAKE_GPUS}
else
  GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
fi
EP=${EP:-1}
B=${B:-4}
T=${T:-2048}
STEPS=${STEPS:-20}
KILL_STEPS=${KILL_STEPS:-30}
EVERY=${EVERY:-10}
MODEL=${MODEL:-$SMS/bench/qwen3moe-c1.json}
CORES=$(nproc)
CPT=${CPT:-$(( CORES / GPUS > 8 ? 8 : (CORES / GPUS > 0 ? CORES / GPUS : 1) ))}
EXEC_MEM=${EXEC_MEM:-32g}
PORT=${PORT:-7077}
W=${W:-/tmp/spark-gpu-run}
rm -rf "$W" && mkdir -p "$W"
LIBS=""
if [ "$BACKEND" != cpu ]; then
  spark_carry_libs
fi
# what Spark's launcher adds to every JVM on Java 17 (org.apache.spark.launcher.JavaModuleOptions)
OPENS="-XX:+IgnoreUnrecognizedVMOptions --add-modules=jdk.incubator.vector --add-opens=java.base/java.lang=ALL-UNNAMED
 --add-opens=java.base/java.lang.invoke=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
 --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED
 --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
 --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
 --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/sun.nio.cs=ALL-UNNAMED
 --add-opens=java.base/sun.security.action=ALL-UNNAMED --add-opens=java.base/sun.util.calendar=ALL-UNNAMED
 -Djdk.reflect.useDirectMethodHandle=false -Dio.netty.tryReflectionSetAccessible=true
 -Dlog4j2.configurationFile=file:$SMS/conf/log4j2.properties"
PIDS=()
# (disowned first, so that bash does not report the Master and Worker it kills here as "Killed")
cleanup() { disown -a 2>/dev/null; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; pkill -9 -P "$p" 2>/dev/null; done; }
trap cleanup EXIT

# ---- the cluster: a Master and one Worker holding every GPU
# shellcheck disable=SC2086
"$JAVA" $OPENS -Xmx512m -cp "$SMS/jars/*" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$PORT" \
  --webui-port 0 > "$OUT/master.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do grep -q "elected leader" "$OUT/master.log" && break; sleep 0.2; done
# shellcheck disable=SC2086
"$JAVA" $OPENS -Xmx512m -Dspark.worker.resource.gpu.amount="$GPUS" \
  -Dspark.worker.resource.gpu.discoveryScript="$HERE/get-gpus-resources.sh" \
  -cp "$SMS/jars/*" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --cores $((GPUS * CPT)) \
  --memory 256g --work-dir "$W/work" --webui-port 0 "spark://127.0.0.1:$PORT" > "$OUT/worker.log" 2>&1 &
WORKER=$!
PIDS+=($WORKER)
for _ in $(seq 600); do grep -q "Successfully registered with master" "$OUT/worker.log" && break; sleep 0.2; done
grep -q "Successfully registered with master" "$OUT/worker.log" || { echo "the Worker did not register"; tail -20 "$OUT/worker.log"; exit 1; }
grep -E "resource|gpu" "$OUT/worker.log" | head -3

JARS=$(ls "$SMS"/lib/*.jar | tr '\n' ,)${EXTRA_JARS:-}
JARS=${JARS%,}
submit() { # SparkSubmit with the job jar's settings; $1 = log file, the rest its arguments
  local log=$1; shift
  # shellcheck disable=SC2086
  "$JAVA" $OPENS -Xmx${DRIVER_MEM:-4g} -cp "$SMS/jars/*" org.apache.spark.deploy.SparkSubmit "$@" > "$log" 2>&1
}

# ---- the data: token ids as a parquet DataFrame (the byte-level ids of data/europarl-en.txt, repeated)
submit "$OUT/data.log" --master "local[2]" --conf spark.ui.enabled=false --jars "$SMS/app/spark-moe-spark-driver.jar" \
  --class dev.sparkmoe.spark.gpuhost.TokenParquet \
  "$SMS/app/spark-moe-tools.jar" --text "$REPO/data/europarl-en.txt" --out "file:$W/data" \
  --min-tokens $(( GPUS * B * (T + 1) * (KILL_STEPS > STEPS ? KILL_STEPS : STEPS) * 12 / 10 )) \
  || { echo "writing the token parquet failed"; tail -20 "$OUT/data.log"; exit 1; }
grep "wrote" "$OUT/data.log"

# each job trains in a fresh output.dir ($W/NAME), so its run folder is $W/NAME/run-001 (checkpoints/, model/,
# metrics.png); the metrics file lies beside it
model_yaml() { # the job's model: a Hugging Face checkpoint folder (HF_DIR) or a config inline (MODEL)
  if [ -n "${HF_DIR:-}" ]; then echo "  hf_dir: \"$HF_DIR\""
  else echo "  config: {\"model_type\": \"qwen3_moe\", $(tr -d '\n' < "$MODEL" | sed -e 's/^ *{//' -e 's/} *$//')}"; fi
}
config() { # $1 = output.dir, $2 = steps, $3 = checkpoint.every
  cat <<EOF
model:
$(model_yaml)
data: {path: "file:$W/data", format: parquet}
layout: {world_size: $GPUS, ep: $EP}
training: {steps: $2, batch_sequences: $B, seq_len: $T, lr: 1.0e-4, min_lr: 1.0e-4, schedule: constant,
  warmup_steps: 0, weight_decay: 0.01, beta2: 0.999, clip: 0, seed: 0, backend: $BACKEND, precision: $PRECISION,
  comm_timeout_s: 300, max_attempts: 3, elastic_wait_s: 120}
checkpoint: {every: $3, keep_last: 2}
output: {dir: "file:$1", metrics_file: "$1/metrics.jsonl"}
EOF
}

job() { # $1 = name, $2 = steps, $3 = checkpoint.every; runs in the foreground
  local run=$W/$1
  mkdir -p "$run"
  config "$run" "$2" "$3" > "$run/run.yaml"
  submit "$OUT/$1.log" --master "spark://127.0.0.1:$PORT" --deploy-mode client --name "spark-moe-$1" \
    --conf spark.executor.cores="$CPT" --conf spark.task.cpus="$CPT" --conf spark.executor.memory="$EXEC_MEM" \
    --conf spark.executor.resource.gpu.amount=1 --conf spark.task.resource.gpu.amount=1 \
    --conf spark.executor.resource.gpu.discoveryScript="$HERE/get-gpus-resources.sh" \
    --conf spark.dynamicAllocation.enabled=false --conf spark.ui.enabled=false \
    --conf spark.driver.host=127.0.0.1 --conf spark.driver.bindAddress=127.0.0.1 \
    --conf spark.executorEnv.NCCL_NVLS_ENABLE=0 --conf spark.executorEnv.LD_LIBRARY_PATH="$LIBS" \
    --conf "spark.executor.extraJavaOptions=-Xss4m -Dorg.bytedeco.javacpp.pathsFirst=true -Dlog4j2.configurationFile=file:$SMS/conf/log4j2.properties" \
    --jars "$JARS" --class dev.sparkmoe.spark.cli.Main "$SMS/app/spark-moe-spark-driver.jar" train "$run/run.yaml"
  local rc=$?
  grep -E "^\[spark-moe\]|^trained|^error" "$OUT/$1.log" | tail -6
  # how each rank got its GPU and its world: from the executors' logs
  local app
  app=$(grep -o 'app-[0-9]*-[0-9]*' "$OUT/$1.log" | head -1)
  cat "$W/work/$app"/*/stderr 2>/dev/null | grep -E "rank [0-9]+ of [0-9]+: the task|backend: |NCCL world|nccl" | head -12 \
    | tee "$OUT/$1-ranks.txt"
  cp "$run/metrics.jsonl" "$OUT/$1-metrics.jsonl" 2>/dev/null
  cp "$run/run-001/metrics.png" "$OUT/$1-metrics.png" 2>/dev/null
  [ "${KEEP_CHECKPOINTS:-0}" = 1 ] || rm -rf "$run"/run-*/checkpoints # gigabytes each at C1's size
  return $rc
}

losses() { # the loss of every step of a metrics file, one per line
  sed -n 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1"
}

mode_job() {
  job run "$STEPS" "$EVERY" || return 1
}

mode_bench() {
  # shellcheck disable=SC2086
  local launch=("$SMS/bin/spark-moe-gpu" launch)
  [ "$BACKEND" = cpu ] && launch=("$JAVA" -Xss4m -cp "$SMS/lib/*:$(tr , : <<< "${EXTRA_JARS:-}")" \
    dev.sparkmoe.gpu.launch.Launcher launch)
  "${launch[@]}" --nproc "$GPUS" --backend "$BACKEND" --entry dev.sparkmoe.gpu.bench.TrainBench -- --config "$MODEL" \
    --batch "$B" --seq "$T" --steps 8 --warmup 3 --gemm "$PRECISION" --ep "$EP" > "$OUT/launcher.log" 2>&1 \
    || { echo "the launcher's TrainBench failed"; tail -20 "$OUT/launcher.log"; return 1; }
  local ref
  ref=$(grep -o '"tokens_per_s_per_gpu":[0-9]*' "$OUT/launcher.log" | head -1 | cut -d: -f2)
  job bench "$STEPS" 0 || return 1
  # the Spark job's tokens/s per GPU: the mean over its steps after the first three (as TrainBench's warm-up)
  local ours
  ours=$(sed -n 's/.*"step":\([0-9]*\),.*"tokens_per_second":\([0-9.Ee+-]*\).*/\1 \2/p' "$W/bench/metrics.jsonl" \
    | awk -v g="$GPUS" '$1 > 3 { s += $2; n++ } END { if (n) printf "%.0f", s / n / g }')
  echo "{\"impl\":\"spark-moe via SparkSubmit\",\"gpus\":$GPUS,\"B\":$B,\"T\":$T,\"tokens_per_s_per_gpu\":$ours,\"launcher_tokens_per_s_per_gpu\":$ref,\"ratio\":$(awk -v a="$ours" -v b="$ref" 'BEGIN { printf "%.3f", a / b }')}" \
    | tee -a "$OUT/spark-bench.jsonl"
}

mode_kill() {
  job uninterrupted "$KILL_STEPS" "$EVERY" || return 1
  local run=$W/killed marker
  marker=$run/run-001/checkpoints/step-$(printf %08d "$EVERY")/_COMMITTED
  rm -rf "$run"
  ( for _ in $(seq 3000); do grep -q committed "$marker" 2>/dev/null && break; sleep 0.1; done
    victim=$(pgrep -P "$WORKER" | tail -1)
    echo "checkpoint $EVERY committed: kill -9 executor JVM $victim" | tee "$OUT/kill.txt"
    kill -9 "$victim" ) &
  local killer=$!
  job killed "$KILL_STEPS" "$EVERY" || return 1
  wait "$killer"
  grep -E "attempt [0-9]/[0-9] failed|resuming from" "$OUT/killed.log" | cut -c1-300
  losses "$W/uninterrupted/metrics.jsonl" > "$OUT/losses-uninterrupted.txt"
  losses "$W/killed/metrics.jsonl" > "$OUT/losses-killed.txt"
  if cmp -s "$OUT/losses-uninterrupted.txt" "$OUT/losses-killed.txt"; then
    echo "KILL: the same $(wc -l < "$OUT/losses-killed.txt") losses as the uninterrupted run"
  else
    echo "KILL: losses differ:"; paste "$OUT/losses-uninterrupted.txt" "$OUT/losses-killed.txt" | head -40
    return 1
  fi
}

mode_logits() {
  local model
  model=$(ls -d "$W"/*/run-001/model 2>/dev/null | tail -1)
  [ -n "$model" ] || { job run "$STEPS" "$EVERY" || return 1; model=$W/run/run-001/model; }
  LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
  python3 "$HERE/hf_logits_check.py" --model "$model" --java "$JAVA" --classpath "$SMS/lib/*" --out "$OUT" \
    2>&1 | tee "$OUT/logits.log" | tail -8
}

rc=0
[ $# -gt 0 ] || set -- job
for m in "$@"; do
  case $m in
    job) mode_job || rc=1 ;;
    bench) mode_bench || rc=1 ;;
    kill) mode_kill || rc=1 ;;
    logits) mode_logits || rc=1 ;;
    all) { mode_bench && mode_kill && mode_logits; } || rc=1 ;;
    *) echo "unknown mode $m (job, bench, kill, logits, all)"; rc=2 ;;
  esac
done
exit $rc
