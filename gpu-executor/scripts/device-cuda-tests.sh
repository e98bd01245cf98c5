#!/bin/bash
# Runs the CUDA backend tests and timings on the device machine from a carry folder laid out as
#   $C/jdk17.tgz (jlink'ed Java 17), $C/junit-console.jar, $C/lib/*.jar (module + dependency jars), $C/test-classes
# Usage (repository root on the device machine): bash .device-carry/gpu/device-cuda-tests.sh
set -o pipefail
C=${C:-.device-carry/gpu}
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/j "$OUT" && tar xzf $C/jdk17.tgz -C /tmp/j || { echo "cannot unpack the JDK"; exit 1; }
J=/tmp/j/jdk17/bin/java
NCCL=$(python3 -c 'import nvidia.nccl,os;print(os.path.dirname(nvidia.nccl.__file__)+"/lib")' 2>/dev/null)
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib:$NCCL${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  ls /usr/local/cuda/targets/x86_64-linux/lib | grep -E "cudart|cublas|nvrtc" | tr '\n' ' '; echo
  echo "NCCL: $NCCL"; $J -version 2>&1 | head -1; } | tee $OUT/env.txt
CP=$(ls $C/lib/*.jar | tr '\n' :)$C/test-classes
timeout ${LIMIT:-420} $J -Xmx8g -Dorg.bytedeco.javacpp.pathsFirst=true -Dsparkmoe.cuda.bench=${BENCH:-true} \
  -Dsparkmoe.cuda.cacheDir=/tmp/cubin -jar $C/junit-console.jar execute -cp "$CP" \
  --select-package dev.sparkmoe.gpu.cuda --details=tree --disable-banner --reports-dir=$OUT/reports 2>&1 | tee $OUT/test.log
rc=$?
echo "junit exit code: $rc"
# cublasGemmGroupedBatchedEx (experimental) in a JVM of its own, with blocking launches to place any fault
CUDA_LAUNCH_BLOCKING=1 timeout 120 $J -Dorg.bytedeco.javacpp.pathsFirst=true -Dsparkmoe.cuda.testGroupedCublas=true \
  -Dsparkmoe.cuda.cacheDir=/tmp/cubin -jar $C/junit-console.jar execute -cp "$CP" --details=tree --disable-banner \
  --select-method dev.sparkmoe.gpu.cuda.CudaBackendTest#groupedGemmBothModes 2>&1 | tee $OUT/grouped.log | grep -E "✔|✘|=>|Exception" | head -20
grep -E "tests (successful|failed|skipped)|=== timings|gemm|attention|rmsNorm|copy|memory|after scope" $OUT/test.log | tail -40
exit $rc
