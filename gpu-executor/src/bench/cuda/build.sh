#!/usr/bin/env bash
# Builds the standalone grouped GEMM check (grouped_gemm_check.cu) into gpu-executor/target/${NAME:-grouped_gemm_check};
# extra arguments go to nvcc (tuning macros, e.g. -DGS_BN=256 -DGS_STAGES=4).
set -euo pipefail; here="$(cd "$(dirname "$0")" && pwd)"; out="$here/../../../target"; mkdir -p "$out"; nvcc -O3 -arch=sm_90a -std=c++17 -lineinfo -cudart static -Xptxas -v -I "$here/../../main/resources/dev/sparkmoe/gpu/cuda" "$@" "$here/grouped_gemm_check.cu" -o "$out/${NAME:-grouped_gemm_check}"
