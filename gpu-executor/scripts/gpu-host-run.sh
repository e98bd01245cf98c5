#!/bin/bash
# Runs spark-moe on a GPU host from a carry folder, the way the closing notes' numbers were taken:
#   $D/spark-moe-bundle.tgz   the self-contained bundle (mvn -q -pl gpu-executor -am -Pbundle package -DskipTests)
#   $D/junit-console.jar      junit-platform-console-standalone
#   $D/gpu-tests.jar          gpu-executor's test classes;  $D/core-tests.jar  core's test-jar (fixtures)
#   $D/bench/                 shared/bench: the PyTorch baselines and qwen3moe-c1.json
# Usage: D=.device-carry/run bash gpu-executor/scripts/gpu-host-run.sh tests|smoke|bench|all|curve|kernels
# Env: TEST_SELECT (console-launcher selectors, default the GPU test packages), TEST_PROPS (extra -D for tests),
#      KERNELS (kernels: ops|attention|grouped|all, default all), VARIANTS (kernels: "DEFINES;DEFINES" grouped GEMM
#      tile variants, each as -Dsparkmoe.cuda.defines),
#      OURS/BASE/STEPS/GEMM/BENCH_ARGS (bench runs; BENCH_CONFIG: a config file of $D/bench, default qwen3moe-c1.json,
#      with BATCH x SEQ tokens per GPU, default 4 x 2048; LAUNCH_ARGS: extra launcher options such as
#      "--jvm-opt -XX:StartFlightRecording=filename=/tmp/jfr/,settings=profile"), CURVE_GPUS/CURVE_STEPS/CURVE_RUNS (curve;
#      CURVE_ARGS: extra LossCurve options such as "--loss-chunk 1024"; CURVE_PRIOR: comma-separated torch_losses
#      files of earlier runs of torch_loss_curve.py on the same data and config, added to the band; CURVE_OWN=0: the
#      band is CURVE_PRIOR's alone, this call's PyTorch runs (CURVE_RUNS=1 will do) give the initial weights only, so
#      that two builds are put against one band, e.g. gpu-executor/results/c1-curve-callC's).
set -o pipefail
D=${D:-.device-carry/run}
OUT=${OUT:-/tmp/out}
MODE=${1:-all}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /tmp/sm "$OUT" && tar xf "$D/spark-moe-bundle.tgz" -C /tmp/sm || { echo "cannot unpack the bundle"; exit 1; }
B=/tmp/sm/spark-moe
NCCL=$(python3 -c 'import nvidia.nccl,os;print(os.path.dirname(nvidia.nccl.__file__)+"/lib")' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:$NCCL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
J=$B/runtime/bin/java
GPUS=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpus.txt"
rc=0
if [ "$MODE" = tests ] || [ "$MODE" = all ]; then
  # the console launcher on the class path (not -jar), so that tests which start ranks see the whole class path
  CP=$(ls $B/lib/*.jar | tr '\n' :)$D/gpu-tests.jar:$D/core-tests.jar:$D/junit-console.jar
  # -Dsparkmoe.cuda.poison: uninitialised device memory (Backend.empty) reads as NaN, so a missed write fails a test
  timeout ${TEST_LIMIT:-300} $J -Xmx24g -Dorg.bytedeco.javacpp.pathsFirst=true -Dsparkmoe.cuda.cacheDir=/tmp/cubin \
    -Dsparkmoe.cuda.poison=true ${TEST_PROPS:-} \
    -cp "$CP" org.junit.platform.console.ConsoleLauncher execute \
    ${TEST_SELECT:---select-package dev.sparkmoe.gpu.cuda --select-package dev.sparkmoe.gpu.training \
      --select-package dev.sparkmoe.gpu.nccl} \
    --details=tree --disable-banner --reports-dir="$OUT/reports" > "$OUT/tests.log" 2>&1 || rc=1
  grep -E "✘|tests (successful|failed|skipped|aborted)" "$OUT/tests.log" | head -30
  grep -B2 -A12 "✘" "$OUT/tests.log" | grep -vE "^\s+at " | head -60
fi
if [ "$MODE" = smoke ] || [ "$MODE" = all ]; then
  timeout 180 $B/bin/spark-moe-gpu launch --nproc "$GPUS" --backend cuda > "$OUT/smoke.log" 2>&1 || rc=1
  grep -E "busbw|SMOKE|passed|FAIL|Exception|error" "$OUT/smoke.log" | head -12
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  # OURS: "gpus:ep" runs of spark-moe; BASE: "script:gpus" runs of the PyTorch baselines (fsdp2 = Hugging Face +
  # FSDP2, native = the grouped-GEMM trainer), all in this one call so that they share the machine.
  CFG=$D/bench/${BENCH_CONFIG:-qwen3moe-c1.json}; BATCH=${BATCH:-4}; SEQ=${SEQ:-2048}
  [ -f "$CFG" ] || { echo "no $CFG: BENCH_CONFIG names a file of $D/bench"; exit 1; }
  OURS=${OURS-"1:1 $GPUS:1"}  # set and empty: none
  BASE=${BASE-"fsdp2:1 fsdp2:$GPUS native:$GPUS"}
  for run in $OURS; do
    n=${run%%:*}; ep=${run##*:}
    timeout ${BENCH_LIMIT:-240} $B/bin/spark-moe-gpu launch --nproc $n --backend cuda ${LAUNCH_ARGS:-} \
      --entry dev.sparkmoe.gpu.bench.TrainBench -- --config "$CFG" --batch $BATCH --seq $SEQ --steps ${STEPS:-8} \
      --gemm ${GEMM:-bf16} --ep $ep ${BENCH_ARGS:-} > "$OUT/ours-$n-$ep.log" 2>&1 || { rc=1; tail -20 "$OUT/ours-$n-$ep.log"; }
    grep '"impl"' "$OUT/ours-$n-$ep.log" | sed 's/^\[rank 0\] //' | tee -a "$OUT/bench.jsonl"
  done
  for run in $BASE; do
    py=${run%%:*}; n=${run##*:}
    [ "$py" = fsdp2 ] && script=torch_fsdp2_baseline.py || script=torch_native_moe_baseline.py
    BENCH_CFG=$CFG B=$BATCH T=$SEQ STEPS=${STEPS:-8} timeout ${BENCH_LIMIT:-240} torchrun --standalone \
      --nproc_per_node=$n "$D/bench/$script" > "$OUT/$py-$n.log" 2>&1 || { rc=1; tail -5 "$OUT/$py-$n.log"; }
    grep '"impl"' "$OUT/$py-$n.log" | tee -a "$OUT/bench.jsonl"
  done
  # the runs side by side: ratios against the baselines of the same world size, scaling against one GPU
  [ -s "$OUT/bench.jsonl" ] && python3 "$(dirname "$0")/bench_summary.py" "$OUT/bench.jsonl"
fi
if [ "$MODE" = kernels ]; then
  # kernel timings on GPU 0 (dev.sparkmoe.gpu.cuda.KernelBench, from the bundle's -bench jar)
  SPARK_MOE_JAVA_OPTS="-Dsparkmoe.cuda.cacheDir=/tmp/cubin" timeout ${KERNEL_LIMIT:-600} $B/bin/spark-moe-gpu run \
    dev.sparkmoe.gpu.cuda.KernelBench ${KERNELS:-all} ${VARIANTS:+--variants "$VARIANTS"} > "$OUT/kernels.log" 2>&1 \
    || { rc=1; tail -20 "$OUT/kernels.log"; }
  grep -vE "^(INFO|WARNING|[A-Z][a-z]{2} [0-9]+, )" "$OUT/kernels.log" | head -80
fi
if [ "$MODE" = curve ]; then
  # Convergence: PyTorch FSDP2 exports its initial weights and trains, CURVE_RUNS times (default 3: their band);
  # spark-moe starts from the same weights on the same data and LossCurve decides against the band (LossBand).
  N=${CURVE_GPUS:-2}; LC=/tmp/lc; mkdir -p $LC; RUNS=""
  for k in $(seq ${CURVE_RUNS:-3}); do
    RUN=$k timeout ${CURVE_LIMIT:-240} torchrun --standalone --nproc_per_node=$N gpu-executor/scripts/torch_loss_curve.py \
      $D/bench/qwen3moe-c1.json data/europarl-en.txt $LC ${CURVE_STEPS:-200} 4 2048 > "$OUT/torch-curve-$k.log" 2>&1 \
      || { rc=1; tail -20 "$OUT/torch-curve-$k.log"; }
    RUNS=$RUNS${RUNS:+,}$LC/torch_losses_$k.json
  done
  RUNS=$RUNS${CURVE_PRIOR:+,$CURVE_PRIOR}  # earlier runs' torch_losses_K.json of the same script and data, if given
  if [ "${CURVE_OWN:-1}" = 0 ]; then  # this call's runs give the initial weights only: the band is CURVE_PRIOR's
    [ -n "${CURVE_PRIOR:-}" ] || { echo "CURVE_OWN=0 needs CURVE_PRIOR (the runs of the band)"; exit 1; }
    RUNS=$CURVE_PRIOR
  fi
  timeout ${CURVE_LIMIT:-240} $B/bin/spark-moe-gpu launch --nproc $N --backend cuda \
    --entry dev.sparkmoe.gpu.bench.LossCurve -- --init $LC/init --data data/europarl-en.txt --out $LC/ours.json \
    --steps ${CURVE_STEPS:-200} --torch "$RUNS" ${CURVE_ARGS:-} > "$OUT/ours-curve.log" 2>&1 || rc=1
  grep -E "losses|loss curve|Exception|FAILED" "$OUT"/torch-curve-*.log "$OUT/ours-curve.log" | head -20
  cp $LC/*.json "$OUT/" 2>/dev/null
fi
exit $rc
