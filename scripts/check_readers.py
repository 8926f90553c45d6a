#!/usr/bin/env python3
"""Checks the C library and the Python reader against the Swift tool on every fixture (issue 6).

For each fixture directory with an expected.json: converts it with the built mm1pack (auto dtype, f16 and bf16),
quantizes the auto bundle (int4 and int8 built-in recipes, int4 with --group-size 32, and a recipe forcing the sym
scheme; --method rtn), then for every bundle:
  - `mm1pack inspect --dump` writes every tensor as float32 as Swift reads it;
  - python/mm1bundle opens it, checks every tensor's SHA-256 against the table, and its float32 values
    (stored floats widened, i8/q4 dequantized) must equal Swift's bit for bit (compared as uint32 patterns, so
    -0 vs +0 or a NaN payload would count); stored f32 tensors must also be the very bytes of the file;
  - c/build/mm1b_values (linked against libmm1bundle.so) prints each tensor's table entry and the SHA-256 of its
    float32 values, which must equal the SHA-256 of Swift's dumped values; its table (names, dtypes, shapes,
    digests) must equal Python's, and every section must decode and match its digest in both.

usage: scripts/check_readers.py [--mm1pack .build/debug/mm1pack] [--c-values c/build/mm1b_values] [--work DIR]
                                [--fixtures NAME ...]
exit status 0 when everything is equal; the summary line gives the counts.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
from mm1bundle import Bundle  # noqa: E402


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit("command failed (%d): %s\n%s%s" % (r.returncode, " ".join(cmd), r.stdout, r.stderr))
    return r.stdout


def read_npy_f32(path):
    a = np.load(path)
    if a.dtype != np.dtype("<f4"):
        raise SystemExit("%s: dtype %s, expected little-endian float32" % (path, a.dtype))
    return a


def sym_recipe(work):
    """The built-in int4 recipe with every quantized rule switched to the sym scheme (q4 sym is otherwise not
    produced by the built-in recipes)."""
    with open(os.path.join(ROOT, "recipes", "mm1-int4.json")) as f:
        r = json.load(f)
    r["name"] = "check-readers-sym"
    for rule in r["rules"]:
        if "scheme" in rule:
            rule["scheme"] = "sym"
        if rule.get("bits") == 4:
            rule["group_size"] = 16
    path = os.path.join(work, "sym-recipe.json")
    with open(path, "w") as f:
        json.dump(r, f)
    return path


def check_bundle(mm1pack, c_values, path, dump, stats):
    problems = []
    shutil.rmtree(dump, ignore_errors=True)
    run([mm1pack, "inspect", path, "--dump", dump])
    c_lines = run([c_values, path]).splitlines()
    c_tensors = {}
    c_sections = {}
    for line in c_lines:
        f = line.split(" ")
        if f[0] == "tensor":
            c_tensors[f[1]] = {"dtype": f[2], "shape": f[3], "sha256": f[4], "ok": f[5], "f32": f[6]}
        elif f[0] == "section":
            c_sections[f[1]] = {"encoding": f[2], "raw_length": int(f[3]), "sha256": f[4], "ok": " ".join(f[5:])}
    swift_files = sorted(n[:-4] for n in os.listdir(dump) if n.endswith(".npy"))
    with Bundle(path) as b:
        names = [t.name for t in b.tensors]
        if sorted(names) != swift_files:
            problems.append("tensor names differ from Swift's dump: %s" % sorted(set(names) ^ set(swift_files)))
        if list(c_tensors) != names:
            problems.append("tensor table differs from the C library's")
        for t in b.tensors:
            where = "tensor '%s'" % t.name
            stats["tensors"] += 1
            stats["by_dtype"][t.dtype] = stats["by_dtype"].get(t.dtype, 0) + 1
            if t.quant is not None:
                key = "%s %s g%d" % (t.dtype, t.quant.scheme, t.quant.group_size)
                stats["quant_kinds"][key] = stats["quant_kinds"].get(key, 0) + 1
            if b.tensor_sha256(t) != t.sha256:
                problems.append("%s: Python: stored bytes do not hash to the table's sha256" % where)
            mine = np.ascontiguousarray(b.float32(t), dtype="<f4")
            swift = read_npy_f32(os.path.join(dump, t.name + ".npy"))
            if mine.shape != swift.shape or tuple(swift.shape) != tuple(t.shape):
                problems.append("%s: shape %s (Python) vs %s (Swift)" % (where, mine.shape, swift.shape))
                continue
            if not np.array_equal(mine.view(np.uint32), swift.view(np.uint32)):
                diff = int(np.count_nonzero(mine.view(np.uint32) != swift.view(np.uint32)))
                problems.append("%s: Python float32 values differ from Swift's in %d of %d elements"
                                % (where, diff, mine.size))
            if t.dtype == "f32" and bytes(b.raw(t)) != swift.tobytes():
                problems.append("%s: Swift's f32 values are not the stored bytes" % where)
            c = c_tensors.get(t.name)
            if c is None:
                continue
            if (c["dtype"], c["shape"], c["sha256"]) != (t.dtype, "[" + ",".join(map(str, t.shape)) + "]", t.sha256):
                problems.append("%s: C table entry %s differs from Python's" % (where, c))
            if c["ok"] != "ok":
                problems.append("%s: C: digest check failed" % where)
            if c["f32"] != hashlib.sha256(swift.tobytes()).hexdigest():
                problems.append("%s: C float32 values differ from Swift's (digest of the values)" % where)
        for s in b.sections:
            stats["sections"] += 1
            data = b.section_bytes(s)  # raises on a bad digest or size
            c = c_sections.get(s.name)
            if c is None or c["ok"] != "ok" or c["raw_length"] != len(data) or c["sha256"] != s.sha256:
                problems.append("section '%s': C says %s" % (s.name, c))
        if list(c_sections) != [s.name for s in b.sections]:
            problems.append("section table differs from the C library's")
    stats["bundles"] += 1
    return ["%s: %s" % (path, p) for p in problems]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mm1pack", default=os.path.join(ROOT, ".build", "debug", "mm1pack"))
    ap.add_argument("--c-values", default=os.path.join(ROOT, "c", "build", "mm1b_values"))
    ap.add_argument("--work", help="keep the bundles and dumps here (default: a temporary directory)")
    ap.add_argument("--fixtures", nargs="*", help="only these fixture directories (default: all with expected.json)")
    a = ap.parse_args()
    for p in (a.mm1pack, a.c_values):
        if not os.access(p, os.X_OK):
            raise SystemExit("%s is not built (swift build; make -C c)" % p)
    work = a.work or tempfile.mkdtemp(prefix="check-readers-")
    os.makedirs(work, exist_ok=True)
    fixtures = sorted(d for d in os.listdir(os.path.join(ROOT, "fixtures"))
                      if os.path.isfile(os.path.join(ROOT, "fixtures", d, "expected.json"))
                      and (not a.fixtures or d in a.fixtures))
    recipe = sym_recipe(work)
    bundles = []
    for fx in fixtures:
        src = os.path.join(ROOT, "fixtures", fx)
        base = os.path.join(work, fx + ".mm1")
        run([a.mm1pack, "convert", src, "-o", base, "-q"])
        bundles.append(base)
        for dt in ("f16", "bf16"):
            out = os.path.join(work, "%s-%s.mm1" % (fx, dt))
            run([a.mm1pack, "convert", src, "-o", out, "--dtype", dt, "-q"])
            bundles.append(out)
        for tag, opts in (("q4", ["--bits", "4"]), ("q8", ["--bits", "8"]),
                          ("q4g32", ["--bits", "4", "--group-size", "32"]), ("q4sym", ["--recipe", recipe])):
            out = os.path.join(work, "%s-%s.mm1" % (fx, tag))
            run([a.mm1pack, "quantize", base, "-o", out, "--method", "rtn", "-q"] + opts)
            bundles.append(out)
    stats = {"bundles": 0, "tensors": 0, "sections": 0, "by_dtype": {}, "quant_kinds": {}}
    problems = []
    for i, path in enumerate(bundles):
        problems += check_bundle(a.mm1pack, a.c_values, path, os.path.join(work, "dump-%d" % i), stats)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    for p in problems[:50]:
        print("MISMATCH " + p)
    print("check_readers: %d fixtures, %d bundles, %d tensors (%s), %d sections; quantized kinds: %s"
          % (len(fixtures), stats["bundles"], stats["tensors"],
             ", ".join("%s %d" % kv for kv in sorted(stats["by_dtype"].items())), stats["sections"],
             ", ".join("%s: %d" % kv for kv in sorted(stats["quant_kinds"].items()))))
    if problems:
        print("check_readers: %d mismatch(es)" % len(problems))
        return 1
    print("check_readers: Python and C values equal Swift's for every tensor (bit for bit), digests and sections "
          "agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
