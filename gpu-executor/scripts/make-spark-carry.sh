#!/bin/bash
# Builds the carry that spark-gpu-run.sh runs Spark from on a GPU host (which has no JDK, no Maven, no network, and
# takes at most 64 MiB per call with the repository): .device-carry/spark/spark-moe-spark.tar.xz (nothing else in that
# folder, so that it is what a GPU call carries) holding spark-moe/
#   runtime/  a jlink'ed Java 17 runtime with the JDK modules the job's JVMs load (plus those Spark and Hadoop reach
#             by reflection or only on a GPU or failure path: see MODULES below; less the service providers that are
#             merely enumerated: DROP), uncompressed with a stripped libjvm.so (the archive's xz packs it better)
#   jars/     Spark and its dependencies, each jar trimmed to the classes a recorded run of the same job loaded, its
#             resources and services (trim-spark-jars.py), stored; jars it never touched dropped
#   lib/      spark-moe's jars, JavaCPP and the CUDA presets, whole (what the bundle holds; a CPU run loads no CUDA
#             class, so nothing of these is trimmed), plus bin/spark-moe-gpu for the standalone launcher
#   app/      the job jar (spark-driver) and spark-moe-tools.jar (the token parquet writer)
#   conf/, bench/qwen3moe-c1.json, RELEASE
# How: package the modules; lay the full runtime out (jars/ as links to Maven's); run spark-gpu-run.sh on it on this
# CPU machine exactly as on the GPU host (FAKE_GPUS=2 through the GPU discovery script, BACKEND=cpu, a tiny model;
# modes bench and kill: a Master, a Worker, the driver, the executors, a killed executor, the launcher) with
# -Xlog:class+load in every JVM; trim; jlink; pack; then run spark-gpu-run.sh again from the trimmed carry (job and
# kill) to prove it, and report the sizes. OpenBLAS (the CPU backend's GEMMs, 12 MB) is not in the carry: the GPU
# run does not load it; the local runs add it with EXTRA_JARS.
# Usage (repository root): bash gpu-executor/scripts/make-spark-carry.sh [BENCH_DIR (default ../shared/bench)]
# (SKIP_BUILD=1: reuse the jars of the last build)
set -euo pipefail
D=${WORK:-.device-carry/spark-build} # work folders (the recorded logs, the full and the trimmed runtime)
C=${CARRY:-.device-carry/spark}      # the carry: spark-moe-spark.tar.xz alone
BENCH=${1:-../shared/bench}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
grep -qx '/.device-carry/' .gitignore || { echo "add /.device-carry/ to .gitignore first" >&2; exit 1; }
JDK=${JDK:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
[ -x "$JDK/bin/jlink" ] || { echo "no jlink in $JDK (set JDK to a full JDK 17)" >&2; exit 1; }
# JDK modules beyond those the recorded run loaded: the executors' --add-modules; Hadoop's UGI (Kerberos, JAAS);
# JMX, naming, scripting and SQL reached by reflection; the bundle's own list
MODULES=jdk.incubator.vector,java.security.jgss,jdk.security.auth,java.security.sasl,jdk.management,java.management,java.naming,java.sql,java.scripting,jdk.unsupported,jdk.crypto.ec,jdk.zipfs,java.logging,java.xml,java.net.http
# loaded in the recorded run only because the JDK enumerates every provider it has (locale data, JFR's MXBean, smart
# cards): without them the JVMs run the same, and they weigh 15 MB
DROP='^(jdk.localedata|jdk.jfr|jdk.management.jfr|java.smartcardio)$'

# (REUSE_RECORD=1: keep the class-loading logs of the last recording and skip it)
[ "${REUSE_RECORD:-0}" = 1 ] && [ -d "$D/build/classes" ] && mv "$D/build/classes" "$D/classes.keep"
rm -rf "$D/build" "$D/full" "$D/stage"
mkdir -p "$D/build" "$D/full/spark-moe"/{jars,lib,app,conf,bin,bench} "$D/build/cpu"
[ -d "$D/classes.keep" ] && mv "$D/classes.keep" "$D/build/classes"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
echo "make-spark-carry: building ..."
mvn -q -B -pl spark-driver -am package dependency:build-classpath -Dmdep.outputFile="$PWD/$D/classpath.txt" \
    -Dmdep.includeScope=runtime -DskipTests
mvn -q -B -pl spark-driver -am test-compile -DskipTests
fi
cp "$D/classpath.txt" "$D/build/classpath.txt"
F=$D/full/spark-moe
for j in $(tr ':' '\n' < "$D/build/classpath.txt"); do
  case $(basename "$j") in
    spark-moe-core-*-tests.jar) ;;
    spark-moe-*|javacpp-*|cuda-*|snakeyaml-*|openblas-[0-9.]*-1.5.13.jar) cp "$j" "$F/lib/" ;;
    openblas-*-linux-x86_64.jar) cp "$j" "$D/build/cpu/" ;;
    *) ln -s "$j" "$F/jars/" ;;
  esac
done
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
cat > "$D/build/tiny.json" <<'JSON'
{"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
 "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true, "max_position_embeddings": 256,
 "tie_word_embeddings": false, "router_aux_loss_coef": 0.001}
JSON
local_run() { # $1 = carry folder, $2 = JAVA_HOME, $3 = results, the rest: modes
  local sms=$1 jh=$2 out=$3; shift 3
  SMS=$sms SPARK_MOE_JAVA_HOME=$jh OUT=$out FAKE_GPUS=2 BACKEND=cpu MODEL=$PWD/$D/build/tiny.json B=2 T=64 STEPS=6 \
    KILL_STEPS=8 EVERY=4 CPT=1 EXEC_MEM=1g DRIVER_MEM=1g PORT=${PORT:-7177} \
    EXTRA_JARS=$(ls "$PWD/$D"/build/cpu/*.jar | tr '\n' , | sed 's/,$//') bash "$HERE/spark-gpu-run.sh" "$@"
}
if [ ! -d "$D/build/classes" ]; then
  echo "make-spark-carry: recording the classes a CPU run of the job loads ..."
  mkdir -p "$D/build/classes"
  JAVA_TOOL_OPTIONS="-Xshare:off -Xlog:class+load=info:file=$PWD/$D/build/classes/%p.log" \
    local_run "$PWD/$F" "$JDK" "$PWD/$D/build/record" bench kill
fi
echo "make-spark-carry: trimming ..."
S=$D/stage/spark-moe
mkdir -p "$S"
python3 "$HERE/trim-spark-jars.py" --logs "$D"/build/classes/*.log --jars "$F/jars" --out "$S/jars" \
  --modules "$D/build/modules.txt"
"$JDK/bin/jlink" --add-modules "$( (tr , '\n' < "$D/build/modules.txt"; tr , '\n' <<< "$MODULES") | sort -u \
  | grep -vE "$DROP" | paste -sd,)" --strip-debug --no-header-files --no-man-pages --compress=0 --output "$S/runtime"
strip -s "$S/runtime/lib/server/libjvm.so" 2>/dev/null || echo "no strip: libjvm.so keeps its symbols (4 MB more)"
cp -r "$F"/{lib,app,conf,bin,bench,RELEASE} "$S/"
echo "make-spark-carry: packing (xz) ..."
rm -rf "$C" && mkdir -p "$C"
tar cf - -C "$D/stage" spark-moe | xz -T2 -6 > "$C/spark-moe-spark.tar.xz"
echo "make-spark-carry: proving it: the same script from the trimmed carry ..."
local_run "$PWD/$S" "$PWD/$S/runtime" "$PWD/$D/build/proof" job kill
echo "make-spark-carry: sizes (bytes): runtime $(du -sb "$S/runtime" | cut -f1), jars $(du -sb "$S/jars" | cut -f1)," \
  "lib $(du -sb "$S/lib" | cut -f1), app $(du -sb "$S/app" | cut -f1); spark-moe-spark.tar.xz" \
  "$(stat -c %s "$C/spark-moe-spark.tar.xz") (runtime alone $(tar cf - -C "$S" runtime | xz -T2 -6 | wc -c), jars alone" \
  "$(tar cf - -C "$S" jars | xz -T2 -6 | wc -c))"
rm -rf "$D/full"
