#!/bin/bash
# Builds what gpu-host-run.sh needs on a GPU host and lays it out in a git-ignored carry folder (default
# .device-carry/run, under 64 MiB with the repository): the bundle, JUnit's console launcher, gpu-executor's test
# classes, core's test-jar (fixtures) and the PyTorch baselines of shared/bench.
# Usage, from the repository root: bash gpu-executor/scripts/make-gpu-carry.sh [BENCH_DIR (default ../shared/bench)]
set -euo pipefail
D=${D:-.device-carry/run}
BENCH=${1:-../shared/bench}
grep -qx '/.device-carry/' .gitignore || { echo "add /.device-carry/ to .gitignore first" >&2; exit 1; }
mvn -q -B -pl gpu-executor -am -Pbundle package -DskipTests
mvn -q -B -pl gpu-executor -am test-compile
mkdir -p "$D/bench"
# the bundle recompressed with xz (about 3 MB less than its gzip; gpu-host-run.sh's tar detects either), so that the
# carry, the repository and a call's own extras stay under the 64 MiB one call carries
if command -v xz > /dev/null; then
  gzip -dc gpu-executor/target/spark-moe-bundle.tgz | xz -6 -T0 > "$D/spark-moe-bundle.tgz"
else
  cp gpu-executor/target/spark-moe-bundle.tgz "$D/"
fi
cp core/target/spark-moe-core-*-tests.jar "$D/core-tests.jar"
DABS=$(cd "$D" && pwd)
(cd gpu-executor/target/test-classes && jar cf "$DABS/gpu-tests.jar" .)
mvn -q -B dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:1.14.1 \
    -DoutputDirectory="$D" -Dmdep.stripVersion=true
mv "$D/junit-platform-console-standalone.jar" "$D/junit-console.jar"
if [ -d "$BENCH" ]; then cp "$BENCH"/* "$D/bench/"; else echo "no $BENCH: the benchmark mode needs the baselines" >&2; fi
du -sh "$D"
