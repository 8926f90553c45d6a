"""python -m mm1bundle info BUNDLE [--check] [--json]: the table of a bundle, after full validation."""
import argparse
import json
import sys

from .bundle import Bundle, BundleError


def _info(b, check):
    bad = set(b.check_all()) if check else set()
    out = {
        "file": b.path, "format_version": b.format_version, "data_offset": b.data_offset,
        "data_length": b.data_length, "alignment": b.alignment,
        "tensors": [], "sections": [],
    }
    for t in b.tensors:
        e = {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offset": t.offset, "length": t.length,
             "sha256": t.sha256}
        if t.quant is not None:
            e["quant"] = {"bits": t.quant.bits, "scheme": t.quant.scheme, "group_size": t.quant.group_size}
        if check:
            e["ok"] = t.name not in bad
        out["tensors"].append(e)
    for s in b.sections:
        e = {"name": s.name, "encoding": s.encoding, "length": s.length, "raw_length": s.raw_length,
             "sha256": s.sha256}
        if check:
            try:
                b.section_bytes(s)
                e["ok"] = True
            except BundleError as err:
                e["ok"], e["error"] = False, err.problem
        out["sections"].append(e)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mm1bundle", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="validate a bundle and print its tensor and section tables")
    i.add_argument("bundle")
    i.add_argument("--check", action="store_true", help="also check every tensor and section digest (exit 1 on a "
                                                        "mismatch)")
    i.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    try:
        with Bundle(a.bundle) as b:
            info = _info(b, a.check)
    except BundleError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print("%s: format_version %d, %d tensors, %d sections, data %d bytes at %d, alignment %d" % (
            info["file"], info["format_version"], len(info["tensors"]), len(info["sections"]), info["data_length"],
            info["data_offset"], info["alignment"]))
        for t in info["tensors"]:
            q = t.get("quant")
            qs = " %s g%d" % (q["scheme"], q["group_size"]) if q else ""
            ok = "" if "ok" not in t else (" ok" if t["ok"] else " MISMATCH")
            print("  %-60s %-4s %-20s %12d %s%s%s" % (t["name"], t["dtype"], t["shape"], t["length"], t["sha256"],
                                                      qs, ok))
        for s in info["sections"]:
            ok = "" if "ok" not in s else (" ok" if s["ok"] else " " + s["error"])
            print("  section %-52s %-4s %12d -> %d %s%s" % (s["name"], s["encoding"], s["length"], s["raw_length"],
                                                             s["sha256"], ok))
    failed = [x["name"] for x in info["tensors"] + info["sections"] if x.get("ok") is False]
    if failed:
        print("error: %s: %d digest(s) do not match: %s" % (a.bundle, len(failed), ", ".join(failed)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
