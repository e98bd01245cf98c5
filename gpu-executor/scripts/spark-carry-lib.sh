# Sourced by spark-gpu-run.sh and real-checkpoint-run.sh: the Spark carry (make-spark-carry.sh's archives) unpacked,
# and the CUDA library path its launcher finds on this host.

# spark_carry_unpack S U: unpacks every spark-moe-spark*.tar.xz of folder S (the base: runtime and Spark's jars; the
# app: spark-moe) into U (emptied first) and sets SMS to U/spark-moe; exits the script when it cannot.
spark_carry_unpack() {
  local s=$1 u=$2 carry
  rm -rf "$u" && mkdir -p "$u"
  local carries=("$s"/spark-moe-spark*.tar.xz)
  [ -e "${carries[0]}" ] || { echo "no spark-moe-spark*.tar.xz in $s: build it with make-spark-carry.sh"; exit 1; }
  for carry in "${carries[@]}"; do # xz where there is one, else Python's lzma
    tar xJf "$carry" -C "$u" 2>/dev/null || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
      "$carry" "$u" || { echo "cannot unpack $carry"; exit 1; }
  done
  SMS=$u/spark-moe
}

# spark_carry_libs: sets LIBS to the folders that LD_LIBRARY_PATH must start with for the CUDA libraries (the
# launcher's check-libs); exits the script with check-libs' report when they are not found.
spark_carry_libs() {
  LIBS=$(bash "$SMS/bin/spark-moe-gpu" check-libs 2>&1 | sed -n 's/.*LD_LIBRARY_PATH would start with //p')
  [ -n "$LIBS" ] || { bash "$SMS/bin/spark-moe-gpu" check-libs; exit 3; }
}
