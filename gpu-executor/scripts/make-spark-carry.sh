#!/bin/bash
# Builds the carry that spark-gpu-run.sh runs Spark from on a GPU host (which has no JDK, no Maven, no network, and
# takes at most 64 MiB per call with the repository): .device-carry/spark holds two archives and nothing else, so that
# they are what a GPU call carries; both unpack into spark-moe/:
#   spark-moe-spark-base.tar.xz  what changes only with Spark's dependencies or the JDK:
#     runtime/  a jlink'ed Java 17 runtime with the JDK modules the job's JVMs load (plus those Spark and Hadoop reach
#               by reflection or only on a GPU or failure path: see MODULES below; less the service providers that
#               are merely enumerated: DROP), uncompressed with a stripped libjvm.so (the archive's xz packs it better)
#     jars/     Spark and its dependencies, each jar trimmed to the classes a recorded run of the job loaded, its
#               resources and services (trim-spark-jars.py), stored; jars it never touched dropped
#   spark-moe-spark-app.tar.xz   what changes with spark-moe's code, re-packed on every build:
#     lib/      spark-moe's jars (the gpu-executor's -bench jar too, for the launcher's TrainBench), JavaCPP and the
#               CUDA presets, and the libraries spark-moe itself uses (snakeyaml, picocli, jfreechart), whole
#               (a CPU run loads no CUDA class, and a code change may reach another class of them), plus
#               bin/spark-moe-gpu for the standalone launcher
#     app/      the job jar (spark-driver) and spark-moe-tools.jar (the token parquet writer)
#     conf/, bench/qwen3moe-c1.json, RELEASE
#
# How. A full build (the first, or RECORD=1): package the modules; lay the full runtime out (jars/ as links to
# Maven's); record: run spark-gpu-run.sh on it on this CPU machine exactly as on the GPU host (FAKE_GPUS=2 through the
# GPU discovery script, BACKEND=cpu, a tiny model; modes bench and kill: a Master, a Worker, the driver, the
# executors, a killed executor, the launcher; then a job that starts from a Hugging Face checkpoint, model.hf_dir,
# the tiny fixture of core's tests) with -Xlog:class+load in every JVM; trim; jlink; pack both archives; prove: run
# spark-gpu-run.sh again from the trimmed carry (job, kill, and the job from the checkpoint). About 25 minutes on a loaded 2-core machine.
# A rebuild after code changes (the default once a recording exists): package; re-pack the app archive only, keeping
# the recording, the trimmed jars, the runtime and the base archive of the last full build (all in $D, git-ignored)
# as long as they were made from the same third-party jars, JDK and trimming settings (recorded in $D/base/key.txt);
# prove with one short job from the trimmed carry (PROOF, default "job"). A proof that fails (say, the code now
# reaches a Spark class the recording never loaded) records anew and builds everything, once.
# OpenBLAS (the CPU backend's GEMMs, 12 MB) is not in the carry: the GPU run does not load it; the local runs add it
# with EXTRA_JARS.
# Usage (repository root): bash gpu-executor/scripts/make-spark-carry.sh [BENCH_DIR (default ../shared/bench)]
#   RECORD=1      record anew and build everything
#   SKIP_BUILD=1  reuse the jars of the last Maven build
#   PROOF="job kill"  what the proof of a rebuild runs (a full build always proves job and kill)
set -euo pipefail
D=${WORK:-.device-carry/spark-build} # work folders: the recording, the trimmed base, the staged carry
C=${CARRY:-.device-carry/spark}      # the carry: the two archives alone
BENCH=${1:-../shared/bench}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HF_FIXTURE=$(cd "$HERE/../.." && pwd)/core/src/test/resources/fixtures/qwen3moe-tiny # a Hugging Face checkpoint folder
grep -qx '/.device-carry/' .gitignore || { echo "add /.device-carry/ to .gitignore first" >&2; exit 1; }
JDK=${JDK:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
[ -x "$JDK/bin/jlink" ] || { echo "no jlink in $JDK (set JDK to a full JDK 17)" >&2; exit 1; }
# JDK modules beyond those the recorded run loaded: the executors' --add-modules; Hadoop's UGI (Kerberos, JAAS);
# JMX, naming, scripting and SQL reached by reflection; the bundle's own list
MODULES=jdk.incubator.vector,java.security.jgss,jdk.security.auth,java.security.sasl,jdk.management,java.management,java.naming,java.sql,java.scripting,jdk.unsupported,jdk.crypto.ec,jdk.zipfs,java.logging,java.xml,java.net.http
# loaded in the recorded run only because the JDK enumerates every provider it has (locale data, JFR's MXBean, smart
# cards): without them the JVMs run the same, and they weigh 15 MB
DROP='^(jdk.localedata|jdk.jfr|jdk.management.jfr|java.smartcardio)$'
T0=$(date +%s)
say() { echo "make-spark-carry [$(( $(date +%s) - T0 )) s]: $*"; }

mkdir -p "$D"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  say "building ..."
  mvn -q -B -ntp -pl spark-driver -am package dependency:build-classpath \
    -Dmdep.outputFile="$PWD/$D/classpath.txt" -Dmdep.includeScope=runtime -DskipTests
  mvn -q -B -ntp -pl spark-driver -am test-compile -DskipTests
fi

# ---- the full runtime: our jars and the libraries we use whole in lib/, everything else (Spark) linked into jars/
rm -rf "$D/full" "$D/stage"
F=$D/full/spark-moe     # everything, Spark's jars as links to Maven's
STAGE=$D/stage/spark-moe # the carry unpacked: the base's jars and runtime (links) and this build's app
mkdir -p "$F"/{jars,lib,app,conf,bin,bench} "$D/cpu"
rm -f "$D"/cpu/*.jar
for j in $(tr ':' '\n' < "$D/classpath.txt"); do
  case $(basename "$j") in
    spark-moe-core-*-tests.jar) ;;
    spark-moe-*|javacpp-*|cuda-*|snakeyaml-*|picocli-*|jfreechart-*|openblas-[0-9.]*-1.5.13.jar) cp "$j" "$F/lib/" ;;
    openblas-*-linux-x86_64.jar) cp "$j" "$D/cpu/" ;;
    *) ln -s "$j" "$F/jars/" ;;
  esac
done
cp gpu-executor/target/spark-moe-gpu-executor-*-SNAPSHOT-bench.jar "$F/lib/"
cp spark-driver/target/spark-moe-spark-driver-*-SNAPSHOT.jar "$F/app/spark-moe-spark-driver.jar"
(cd spark-driver/target/test-classes && jar cf "$OLDPWD/$F/app/spark-moe-tools.jar" dev/sparkmoe/spark/gpuhost)
cp gpu-executor/src/bundle/bin/spark-moe-gpu "$F/bin/"
cp "$BENCH/qwen3moe-c1.json" "$F/bench/"
touch "$F/RELEASE"
cat > "$F/conf/log4j2.properties" <<'LOG'
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n
logger.moe.name = dev.sparkmoe
logger.moe.level = info
logger.deploy.name = org.apache.spark.deploy
logger.deploy.level = info
logger.tsm.name = org.apache.spark.scheduler.TaskSetManager
logger.tsm.level = error
LOG
cat > "$D/tiny.json" <<'JSON'
{"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
 "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true, "max_position_embeddings": 256,
 "tie_word_embeddings": false, "router_aux_loss_coef": 0.001}
JSON

# what the base is made from: the third-party jars, the JDK, the trimming script and the module lists
key() {
  ls "$F/jars" | sort
  cat "$JDK/release"
  sha256sum "$HERE/trim-spark-jars.py" | cut -d' ' -f1
  echo "$MODULES $DROP"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
local_run() { # spark-gpu-run.sh on this machine as on a GPU host; $1 = results, the rest: modes; the caller sets SMS
  # (an unpacked carry) and SPARK_MOE_JAVA_HOME, or S (a folder of archives) and UNPACK
  local out=$1; shift
  OUT=$out W=$PWD/$D/runs FAKE_GPUS=2 BACKEND=cpu MODEL=$PWD/$D/tiny.json B=2 T=64 STEPS=6 KILL_STEPS=8 EVERY=4 \
    CPT=1 EXEC_MEM=1g DRIVER_MEM=1g PORT=${PORT:-$(free_port)} \
    EXTRA_JARS=$(ls "$PWD/$D"/cpu/*.jar | tr '\n' , | sed 's/,$//') bash "$HERE/spark-gpu-run.sh" "$@"
}
base_current() {
  [ -f "$D/base/key.txt" ] && [ -d "$D/base/spark-moe/jars" ] && [ -d "$D/base/spark-moe/runtime" ] \
    && [ -f "$D/base/spark-moe-spark-base.tar.xz" ] && cmp -s <(key) "$D/base/key.txt"
}
record_and_trim() { # the expensive part: a recorded CPU run, then the trimmed jars, the runtime and their archive
  say "recording the classes a CPU run of the job loads (modes bench and kill) ..."
  rm -rf "$D/record" "$D/base"
  mkdir -p "$D/record/classes" "$D/base/spark-moe"
  JAVA_TOOL_OPTIONS="-Xshare:off -Xlog:class+load=info:file=$PWD/$D/record/classes/%p.log" \
    SMS=$PWD/$F SPARK_MOE_JAVA_HOME=$JDK local_run "$PWD/$D/record/run" bench kill
  say "recording a job that starts from a Hugging Face checkpoint (model.hf_dir: the tiny fixture) ..."
  JAVA_TOOL_OPTIONS="-Xshare:off -Xlog:class+load=info:file=$PWD/$D/record/classes/%p.log" \
    SMS=$PWD/$F SPARK_MOE_JAVA_HOME=$JDK HF_DIR=$HF_FIXTURE local_run "$PWD/$D/record/hf" job
  say "trimming Spark's jars to the recorded classes ..."
  python3 "$HERE/trim-spark-jars.py" --logs "$D"/record/classes/*.log --jars "$F/jars" --out "$D/base/spark-moe/jars" \
    --modules "$D/base/modules.txt"
  say "jlink ..."
  "$JDK/bin/jlink" --add-modules "$( (tr , '\n' < "$D/base/modules.txt"; tr , '\n' <<< "$MODULES") | sort -u \
    | grep -vE "$DROP" | paste -sd,)" --strip-debug --no-header-files --no-man-pages --compress=0 \
    --output "$D/base/spark-moe/runtime"
  strip -s "$D/base/spark-moe/runtime/lib/server/libjvm.so" 2>/dev/null \
    || echo "no strip: libjvm.so keeps its symbols (4 MB more)"
  say "packing the base (xz) ..."
  tar cf - -C "$D/base" spark-moe | xz -T2 -6 > "$D/base/spark-moe-spark-base.tar.xz"
  key > "$D/base/key.txt"
}
stage_and_pack() { # the carry from the base and this build's jars; the app archive is packed here every time
  rm -rf "$D/stage" && mkdir -p "$D/stage/spark-moe"
  ln -s "$PWD/$D/base/spark-moe/jars" "$STAGE/jars"
  ln -s "$PWD/$D/base/spark-moe/runtime" "$STAGE/runtime"
  cp -r "$F"/{lib,app,conf,bin,bench,RELEASE} "$STAGE/"
  say "packing the app (xz) ..."
  mkdir -p "$C"
  rm -f "$C"/*.tar.xz
  tar cf - -C "$D/stage" --exclude=spark-moe/jars --exclude=spark-moe/runtime spark-moe | xz -T2 -6 \
    > "$C/spark-moe-spark-app.tar.xz"
  cp "$D/base/spark-moe-spark-base.tar.xz" "$C/"
}
prove() { # spark-gpu-run.sh from the archives, unpacked as on the GPU host; $@ = modes
  say "proving it: spark-gpu-run.sh $* from the carry's archives ..."
  rm -rf "$D/proof"
  S=$PWD/$C UNPACK=$PWD/$D/proof/unpacked local_run "$PWD/$D/proof" "$@"
}

full_proof() { prove job kill && HF_DIR=$HF_FIXTURE prove job; }

full=0
if [ "${RECORD:-0}" = 1 ] || ! base_current; then
  [ "${RECORD:-0}" = 1 ] || echo "make-spark-carry: no base made from these third-party jars, JDK and settings: a full build"
  full=1
  record_and_trim
else
  say "reusing the recording, trimmed jars and runtime of $(stat -c %y "$D/base/key.txt" | cut -d. -f1)"
fi
stage_and_pack
if [ $full = 1 ]; then
  full_proof
elif ! prove ${PROOF:-job}; then
  echo "make-spark-carry: the rebuilt carry failed its proof (see $D/proof); recording anew ..."
  full=1
  record_and_trim
  stage_and_pack
  full_proof
fi
say "done ($([ $full = 1 ] && echo "full build" || echo "rebuild of the app")). Sizes (bytes): runtime" \
  "$(du -sbL "$STAGE/runtime" | cut -f1), jars $(du -sbL "$STAGE/jars" | cut -f1), lib $(du -sb "$STAGE/lib" | cut -f1)," \
  "app $(du -sb "$STAGE/app" | cut -f1); $(cd "$C" && for f in *.tar.xz; do printf '%s %s, ' "$f" "$(stat -c %s "$f")"; done)" \
  "total $(cat "$C"/*.tar.xz | wc -c)"
rm -rf "$D/full" "$D/runs" "$D/proof/unpacked"
