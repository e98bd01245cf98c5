#!/bin/bash
# Spark GPU discovery script (spark.worker.resource.gpu.discoveryScript), as Spark's examples/src/main/scripts/
# getGpusResources.sh: prints the GPUs nvidia-smi lists, as Spark's ResourceInformation JSON:
#   {"name": "gpu", "addresses": ["0", "1", ...]}
# With FAKE_GPUS=N (no GPU; for testing the discovery path on a CPU machine) it reports N made-up GPUs instead.
set -euo pipefail
if [ -n "${FAKE_GPUS:-}" ]; then
  ids=$(seq 0 $((FAKE_GPUS - 1)))
else
  ids=$(nvidia-smi --query-gpu=index --format=csv,noheader)
fi
printf '{"name": "gpu", "addresses": [%s]}\n' "$(echo $ids | sed -e 's/\([0-9][0-9]*\)/"\1"/g' -e 's/ /, /g')"
