#!/usr/bin/env python3
"""Writes small mm1pack bundles (formats/bundle.md v1) for the C tests and as fuzzing seeds.

usage: mkbundle.py OUT_DIR
"""
import hashlib, json, os, struct, sys


# One zstd frame (single segment, content size 3) holding one raw block "abc", written by hand (RFC 8878).
ZSTD_ABC = b"\x28\xb5\x2f\xfd" + b"\x20\x03" + b"\x19\x00\x00" + b"abc"


def bundle(tensors, sections=(), config=None, alignment=64):
    """tensors: [(name, dtype, shape, bytes, quant-or-None)], sections: [(name, 'raw'|'zstd', stored, raw)]."""
    data = bytearray()
    ttab, stab = [], []
    for name, dtype, shape, payload, quant in tensors:
        while len(data) % alignment:
            data.append(0)
        e = {"dtype": dtype, "length": len(payload), "name": name, "offset": len(data), "shape": list(shape),
             "sha256": hashlib.sha256(payload).hexdigest()}
        if quant is not None:
            e["quant"] = quant
        ttab.append(e)
        data += payload
    for name, enc, stored, raw in sections:
        while len(data) % alignment:
            data.append(0)
        stab.append({"encoding": enc, "length": len(stored), "name": name, "offset": len(data),
                     "raw_length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        data += stored
    header = {"alignment": alignment, "config": config or {"llm": {"hidden": 4}}, "format": "mm1pack",
              "format_version": 1, "metadata": {}, "provenance": {"tool": "mm1pack", "tool_version": "0",
              "source_layout": "synthetic", "source_files": [], "options": {}}, "sections": stab, "tensors": ttab}
    h = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    data_offset = (96 + len(h) + 4095) // 4096 * 4096
    prefix = b"MM1PACK\0" + struct.pack("<IIQQQ", 1, 0, len(h), data_offset, len(data)) + hashlib.sha256(h).digest()
    prefix += bytes(24)
    out = prefix + h
    out += bytes(data_offset - len(out))
    return out + bytes(data)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    f16 = bytes(range(2 * 3))
    tens = [("llm.embed.weight", "f32", [2, 3], f32, None), ("llm.norm.weight", "f16", [3], f16, None),
            ("llm.scalar", "bf16", [], b"\x80\x3f", None),
            ("llm.q.weight", "q4", [4, 4], bytes(range(16)), {"scheme": "q4_0", "group_size": 32})]
    secs = [("tokenizer.json", "raw", b'{"a":1}', b'{"a":1}')]
    files = {
        "small.mm1": bundle(tens, secs),
        "empty.mm1": bundle([]),
        "one.mm1": bundle([("w", "f32", [1], b"\0\0\x80\x3f", None)]),
        "rank8.mm1": bundle([("a.b_c.9", "f32", [1, 1, 1, 1, 1, 1, 2, 1], bytes(8), None),
                             ("i", "i8", [3], b"\1\2\3", {"scheme": "i8", "blocks": [{"offset": 0, "length": 3}]})],
                            [("tok.model", "zstd", ZSTD_ABC, b"abc"),
                             ("vocab-x.txt", "raw", b"", b"")]),
    }
    for name, b in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)
    # A bundle whose first tensor has a flipped data byte (digest mismatch).
    b = bytearray(files["small.mm1"])
    data_offset = struct.unpack_from("<Q", b, 24)[0]
    b[data_offset] ^= 0x01
    with open(os.path.join(out, "flipped.mm1"), "wb") as f:
        f.write(b)


if __name__ == "__main__":
    main()
