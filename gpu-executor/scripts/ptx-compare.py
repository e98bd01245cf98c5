#!/usr/bin/env python3
"""Compares the PTX of every kernel of the CUDA resources at a git revision with the working tree's.

Moving kernels between .cu files (a split by concern) must not change what they compile to. This script compiles
every .cu file of gpu-executor's kernel package, as it is at REV and as it is in the working tree, with
`nvcc -arch=sm_XY -std=c++17 -ptx -I <dir>` for each architecture asked for, extracts every `.entry` (kernel) and
`.func` (non-inlined device function) from the PTX, and compares them by name: the body, byte for byte, after the one
normalisation a move needs (the PTX labels and local depots carry the function's position in its module:
`$L__BB3_7` becomes `$L__BB_7`, `__local_depot3` becomes `__local_depot`), and the module-scope declarations
(`.shared`, `.global`, `.const`) each body refers to. It exits 1 on any difference, kernel missing or kernel added.

Usage (from the repository root; needs nvcc on the PATH or NVCC=/path/to/nvcc):
    gpu-executor/scripts/ptx-compare.py REV [sm_80,sm_90]
"""
import os
import re
import subprocess
import sys
import tempfile

PKG = "gpu-executor/src/main/resources/dev/sparkmoe/gpu/cuda"
FUNC = re.compile(r"^(?:\.visible |\.weak )?(\.entry|\.func)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$]*)\s*\(", re.M)
DECL = re.compile(r"^(?:\.extern |\.visible |\.weak )?\.(?:shared|global|const)\s.*?([A-Za-z_$][\w$]*)\s*(?:\[[^\]]*\])?"
                  r"\s*(?:=.*)?;$", re.M)
DEMOTED = re.compile(r"^[ \t]*// demoted variable\n[ \t]*(\.shared\s.*?([A-Za-z_$][\w$]*)\s*(?:\[[^\]]*\])?\s*;)\n",
                     re.M)
DEMOTED_BLOCK = re.compile(r"(?:^[ \t]*// demoted variable\n[ \t]*\.shared\s[^\n]*;\n)+", re.M)


def sources_at(rev, out):
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, PKG + "/"], check=True, capture_output=True,
                           text=True).stdout.split()
    for path in names:
        if path.endswith((".cu", ".cuh")):
            text = subprocess.run(["git", "show", rev + ":" + path], check=True, capture_output=True).stdout
            with open(os.path.join(out, os.path.basename(path)), "wb") as f:
                f.write(text)
    return out


def functions(src_dir, arch, nvcc):
    """{name: (file, kind, normalised body, {declaration name: text})} over every .cu file of src_dir."""
    found = {}
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".cu"):
            continue
        target = "sm_90a" if name.endswith("_sm90.cu") and arch == "sm_90" else arch
        ptx_path = os.path.join(tempfile.mkdtemp(), name + ".ptx")
        subprocess.run([nvcc, "-arch=" + target, "-std=c++17", "-ptx", "-I", src_dir, os.path.join(src_dir, name),
                        "-o", ptx_path], check=True)
        with open(ptx_path) as f:
            ptx = f.read()
        decls = {m.group(1): re.sub(r"^\.visible ", "", m.group(0)) for m in DECL.finditer(ptx)}
        starts = list(FUNC.finditer(ptx))
        for m in starts:
            params_end = ptx.index(")", m.end()) + 1
            if ptx[params_end:].lstrip().startswith(";"):
                continue  # a declaration (prototype), not a definition
            end = ptx.index("\n}\n", params_end) + 3
            body = ptx[m.start():end]
            body = re.sub(r"\$L__BB\d+_", "$L__BB_", body)
            body = re.sub(r"__local_depot\d+", "__local_depot", body)
            # A module-scope .shared variable that only one function of the module uses is declared inside that
            # function instead ("demoted"): the same variable, so it is compared as a module-scope declaration.
            # (The block of such declarations takes the place of the empty line a function without any has.)
            demoted = {m2.group(2): m2.group(1) for m2 in DEMOTED.finditer(body)}
            body = DEMOTED_BLOCK.sub("\n", body)
            refs = {d: decls[d] for d in decls if re.search(r"(?<![\w$])" + re.escape(d) + r"(?![\w$])", body)}
            refs.update(demoted)
            fname, kind = m.group(2), m.group(1)
            if kind == ".entry":
                if fname in found:
                    sys.exit(f"kernel {fname} is defined twice: {found[fname][0]} and {name}")
                found[fname] = (name, kind, body, refs)
            else:  # a device function may be emitted by several files: compare the set of its forms
                files, _, forms, all_refs = found.get(fname, ("", kind, (), {}))
                forms = tuple(sorted(set(forms) | {body}))
                found[fname] = ((files + " " + name).strip(), kind, forms, {**all_refs, **refs})
    return found


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rev = sys.argv[1]
    archs = (sys.argv[2] if len(sys.argv) > 2 else "sm_80,sm_90").split(",")
    nvcc = os.environ.get("NVCC", "nvcc")
    before_dir = sources_at(rev, tempfile.mkdtemp())
    failed = False
    for arch in archs:
        before = functions(before_dir, arch, nvcc)
        after = functions(PKG, arch, nvcc)
        entries = sorted(n for n in before if before[n][1] == ".entry")
        same = moved = 0
        for n in sorted(set(before) | set(after)):
            if n not in after:
                print(f"{arch}: {before[n][1]} {n} ({before[n][0]}) is gone")
                failed |= before[n][1] == ".entry"
                continue
            if n not in before:
                print(f"{arch}: {after[n][1]} {n} ({after[n][0]}) is new")
                failed |= after[n][1] == ".entry"
                continue
            b, a = before[n], after[n]
            if b[2] != a[2] or b[3] != a[3]:
                print(f"{arch}: {b[1]} {n} differs ({b[0]} -> {a[0]})")
                failed = True
            elif b[1] == ".entry":
                same += 1
                moved += b[0] != a[0]
        print(f"{arch}: {same} of {len(entries)} kernels byte-identical ({moved} of them moved to another file), "
              f"{sum(1 for n in after if after[n][1] == '.entry')} kernels after")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
