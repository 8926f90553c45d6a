#!/usr/bin/env python3
"""Source-file digests as mm1pack records them in a bundle's provenance (formats/bundle.md, section 4).

  source_digest.py FILE...           print each file's sha256_segments (.safetensors) or sha256 (other files)
  source_digest.py --full FILE...    print each file's whole-file sha256
  source_digest.py --check BUNDLE SOURCE_ROOT
                                     recompute every provenance.source_files entry of BUNDLE from the files
                                     under SOURCE_ROOT; exit 1 on any difference, or if it records none

Standard library only.
"""
import hashlib, json, mmap, struct, sys


def sha256_segments(path):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        n = struct.unpack("<Q", m[:8])[0]
        header = json.loads(m[8:8 + n])
        ranges = sorted((8 + n + b, 8 + n + e) for k, v in header.items() if k != "__metadata__"
                        for b, e in [v["data_offsets"]] if e > b)
        segments, pos = [(0, 8 + n)], 8 + n
        for b, e in ranges + [(len(m), len(m))]:  # the sentinel turns trailing bytes into a gap segment
            assert b >= pos, f"{path}: tensors overlap"
            segments += [(pos, b)] * (b > pos) + [(b, e)] * (e > b)
            pos = e
        listing = b"".join(b"%d %d %s\n" % (b, e - b, hashlib.sha256(memoryview(m)[b:e]).hexdigest().encode())
                           for b, e in segments)
        return hashlib.sha256(listing).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(64 << 20):
            h.update(chunk)
    return h.hexdigest()


def digest(path, full=False):
    """(provenance key, hex digest) of one file."""
    if path.endswith(".safetensors") and not full:
        return "sha256_segments", sha256_segments(path)
    return "sha256", sha256_file(path)


def check(bundle, root):
    with open(bundle, "rb") as f:
        prefix = f.read(96)
        assert prefix[:8] == b"MM1PACK\0", f"{bundle}: not a bundle"
        header = json.loads(f.read(struct.unpack_from("<Q", prefix, 16)[0]))
    provenance = header["provenance"]
    print(f"{bundle}: source_digests = {provenance['options'].get('source_digests')}")
    checked = bad = 0
    for e in provenance["source_files"]:
        for key in ("sha256", "sha256_segments"):
            if key in e:
                got = digest(f"{root}/{e['path']}", full=key == "sha256")[1]
                checked += 1
                if got != e[key]:
                    bad += 1
                    print(f"DIFF {key} {e['path']}: bundle {e[key]}, file {got}")
    print(f"{checked - bad} of {checked} digests match")
    return 1 if bad or not checked else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--check"] and len(args) == 3:
        sys.exit(check(args[1], args[2]))
    full = args[:1] == ["--full"]
    if full:
        args = args[1:]
    if not args or any(a.startswith("--") for a in args):
        sys.exit(__doc__)
    for p in args:
        key, d = digest(p, full)
        print(f"{d}  {key}  {p}")
