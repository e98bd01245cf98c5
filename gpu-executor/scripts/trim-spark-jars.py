#!/usr/bin/env python3
"""Trims Spark's jars to what a recorded run of the job loaded (make-spark-carry.sh).

Input: the class-loading logs (-Xlog:class+load) of every JVM of a real run (driver, Master, Worker, executors) and
the folder of jars they ran from. Output: one jar per jar that served at least one class, holding
  - the classes the run loaded from it, and the nested classes of those (Outer$Inner, Outer$$anon...: code paths a
    GPU run or a failure may take that the recorded run did not),
  - every other entry (resources, META-INF/services, properties, XML), except native libraries for other platforms
    than linux x86_64 and the web UIs' static files (the UI's resource folder itself stays, Jetty looks for it);
and the JDK modules the run loaded classes from (for jlink). Jars that served no class are left out, except the
linux x86_64 natives of a library whose classes were loaded (Netty's epoll transport). The jars are
written uncompressed (stored): the carry is one xz archive, and LZMA over all the class files together packs them to
about half of what each jar's own deflate does.

usage: trim-spark-jars.py --logs LOG... --jars DIR --out DIR --modules FILE
"""
import argparse
import os
import shutil
import re
import sys
import zipfile

LOAD = re.compile(r"\]\s(\S+) source: (.*)$")
NATIVE = re.compile(r"\.(so(\.\d+)*|dll|dylib|jnilib|a)$")
OTHER_ARCH = re.compile(r"aarch64|arm|ppc|s390|riscv|loongarch|i386|musl|x86(?![-_]?64)")


def keep_native(name):
    """A native library for linux x86_64 (or for linux with no architecture named)."""
    n = name.lower()
    return "linux" in n and not OTHER_ARCH.search(n)


def native_twin_of_loaded(jar, loaded):
    """A natives-only jar (netty-transport-native-epoll-V-linux-x86_64.jar) whose classes jar
    (netty-transport-classes-epoll-V.jar) served classes: its .so is read as a resource, which the class-loading log
    does not show."""
    if not jar.endswith("-linux-x86_64.jar") or "-native-" not in jar:
        return False
    family = re.sub(r"-\d.*$", "", jar).replace("-native-", "-classes-")
    return any(j.startswith(family + "-") for j in loaded)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", nargs="+", required=True)
    ap.add_argument("--jars", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--modules", required=True)
    ap.add_argument("--nested", action="store_true", help="also keep the nested classes of every loaded class")
    a = ap.parse_args()

    loaded = {}  # jar basename -> set of class names
    modules = set()
    for log in a.logs:
        with open(log, errors="replace") as f:
            for line in f:
                m = LOAD.search(line.strip())
                if not m:
                    continue
                cls, src = m.group(1), m.group(2)
                if src.startswith("jrt:/"):
                    modules.add(src[5:].split("/")[0])
                    continue
                jm = re.search(r"([^/!]+\.jar)", src)
                if jm:
                    loaded.setdefault(jm.group(1), set()).add(cls)

    os.makedirs(a.out, exist_ok=True)
    total_in = total_out = 0
    kept_jars = 0
    for jar in sorted(os.listdir(a.jars)):
        if not jar.endswith(".jar"):
            continue
        path = os.path.join(a.jars, jar)
        size = os.path.getsize(path)
        total_in += size
        classes = loaded.get(jar)
        if not classes:
            if native_twin_of_loaded(jar, loaded):
                shutil.copyfile(path, os.path.join(a.out, jar))  # a loaded library's linux x86_64 natives
                total_out += size
                kept_jars += 1
            continue
        outers = {c.split("$")[0] for c in classes} if a.nested else set()
        dst = os.path.join(a.out, jar)
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                name = info.filename
                if name.endswith(".class"):
                    if name.startswith("META-INF/versions/"):
                        cls = re.sub(r"^META-INF/versions/\d+/", "", name)[:-6].replace("/", ".")
                    else:
                        cls = name[:-6].replace("/", ".")
                    if cls == "module-info" or cls.endswith(".module-info"):
                        continue
                    if cls not in classes and cls.split("$")[0] not in outers:
                        continue
                elif name.endswith("/"):
                    pass
                elif NATIVE.search(name) and not keep_native(name):
                    continue
                elif "/ui/static/" in name or name.startswith("webapps/") or "/webapps/" in name:
                    continue
                elif re.match(r"META-INF/.*\.(SF|DSA|RSA|EC)$", name):
                    continue
                data = zin.read(name)
                stored = zipfile.ZipInfo(name, info.date_time)
                stored.external_attr = info.external_attr
                stored.compress_type = zipfile.ZIP_STORED
                zout.writestr(stored, data)
        total_out += os.path.getsize(dst)
        kept_jars += 1
    with open(a.modules, "w") as f:
        f.write(",".join(sorted(modules)) + "\n")
    print("trim-spark-jars: %d of %d jars kept, %.1f MB -> %.1f MB; %d classes recorded from jars; JDK modules: %s"
          % (kept_jars, len([j for j in os.listdir(a.jars) if j.endswith('.jar')]), total_in / 1e6, total_out / 1e6,
             sum(len(v) for v in loaded.values()), ",".join(sorted(modules))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
