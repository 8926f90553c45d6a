#!/usr/bin/env python3
"""Writes small mm1pack bundles (formats/bundle.md v1) for the C tests and as fuzzing seeds.

usage: mkbundle.py OUT_DIR
"""
import hashlib, json, os, struct, sys


# One zstd frame (single segment, content size 3) holding one raw block "abc", written by hand (RFC 8878).
ZSTD_ABC = b"\x28\xb5\x2f\xfd" + b"\x20\x03" + b"\x19\x00\x00" + b"abc"


def bundle(tensors, sections=(), config=None, alignment=64):
    """tensors: [(name, dtype, shape, bytes, quant-or-None[, declared length])], sections: [(name, 'raw'|'zstd',
    stored, raw)]."""
    data = bytearray()
    ttab, stab = [], []
    for name, dtype, shape, payload, quant, *length in tensors:
        while len(data) % alignment:
            data.append(0)
        e = {"dtype": dtype, "length": length[0] if length else len(payload), "name": name, "offset": len(data),
             "shape": list(shape),
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


def align64(n):
    return (n + 63) // 64 * 64


def quant_tensor(dtype, shape, group, scheme="sym", seed=1):
    """A valid quantized tensor (bundle.md section 2.2): (payload, quant object). Codes and scales are arbitrary
    but deterministic; padding between sub-blocks is zero."""
    k = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    n = rows * k
    if dtype == "i8":
        codes = bytes((seed * 37 + i * 11) % 255 - 127 & 0xFF for i in range(n))
    else:
        u = [(seed + i * 7) % 16 for i in range(n)]
        codes = bytes(u[2 * j] | (u[2 * j + 1] << 4) for j in range(n // 2))
    ngroups = rows * (k // group)
    scales = b"".join(struct.pack("<e", (i % 9 + 1) / 64) for i in range(ngroups))
    payload = bytearray(codes)
    quant = {"scheme": scheme, "group_size": group, "scale_dtype": "f16",
             "codes": {"offset": 0, "length": len(codes)}}
    payload += bytes(align64(len(payload)) - len(payload))
    quant["scales"] = {"offset": len(payload), "length": len(scales)}
    payload += scales
    if scheme == "asym":
        zeros = b"".join(struct.pack("<e", float(i % 16)) for i in range(ngroups))
        payload += bytes(align64(len(payload)) - len(payload))
        quant["zeros"] = {"offset": len(payload), "length": len(zeros)}
        payload += zeros
    return bytes(payload), quant


def quant_cases(out):
    """Bundles with one quantized tensor each, and quant_cases.tsv saying what quant_test must find in each:
    'ok FILE TENSOR bits asym group rows cols codes_off codes_len scales_off scales_len zeros_off zeros_len', or
    'bad FILE TENSOR FRAGMENT' (the open fails with MM1B_EFORMAT naming TENSOR, the message contains FRAGMENT)."""
    d = os.path.join(out, "quant")
    os.makedirs(d, exist_ok=True)
    lines = []

    def write(fname, tensors):
        with open(os.path.join(d, fname), "wb") as f:
            f.write(bundle(tensors))
        return os.path.join("quant", fname)

    ok = [  # name, dtype, shape, group, scheme, expected (codes_off, codes_len, scales_off, scales_len, zeros_off, zeros_len)
        ("q4_asym_4x64_g32", "q4", [4, 64], 32, "asym", (0, 128, 128, 16, 192, 16)),  # bundle.md's worked example
        ("q4_sym_experts", "q4", [2, 3, 64], 64, "sym", (0, 192, 192, 12, 0, 0)),
        ("i8_perchannel_3x10", "i8", [3, 10], 10, "sym", (0, 30, 64, 6, 0, 0)),
        ("i8_g2_2x3x8", "i8", [2, 3, 8], 2, "sym", (0, 48, 64, 48, 0, 0)),
        ("q4_asym_g2_1x2", "q4", [1, 2], 2, "asym", (0, 1, 64, 2, 128, 2)),
    ]
    for name, dtype, shape, group, scheme, exp in ok:
        payload, quant = quant_tensor(dtype, shape, group, scheme)
        f = write(name + ".mm1", [("llm.norm", "f32", [2], b"\0" * 8, None), ("w." + name, dtype, shape, payload, quant)])
        rows = 1
        for x in shape[:-1]:
            rows *= x
        fields = [dtype == "i8" and 8 or 4, int(scheme == "asym"), group, rows, shape[-1], *exp]
        lines.append("\t".join(["ok", f, "w." + name] + [str(v) for v in fields]))

    base_payload, base_quant = quant_tensor("q4", [4, 64], 32, "asym")

    def bad(case, fragment, quant_edit=None, dtype="q4", shape=(4, 64), payload=None, quant=None, length=None):
        q = json.loads(json.dumps(quant if quant is not None else base_quant))
        if quant_edit:
            quant_edit(q)
        p = base_payload if payload is None else payload
        f = write("bad_" + case + ".mm1", [("w", dtype, list(shape), p, q, len(p) if length is None else length)])
        lines.append("\t".join(["bad", f, "w", fragment]))

    def drop(k):
        return lambda q: q.pop(k)

    def put(k, v):
        return lambda q: q.__setitem__(k, v)

    def sub(k, kk, v):
        return lambda q: q[k].__setitem__(kk, v)

    i8_payload, i8_quant = quant_tensor("i8", [3, 10], 10, "sym")
    bad("missing_scale_dtype", "quant: missing member 'scale_dtype'", drop("scale_dtype"))
    bad("missing_codes", "quant: missing member 'codes'", drop("codes"))
    bad("unknown_member", "quant: unknown member 'blocks'", put("blocks", []))
    bad("scheme_q4_0", "quant: unknown scheme 'q4_0'", put("scheme", "q4_0"))
    bad("scheme_int", "quant: member 'scheme' must be a string, not an integer", put("scheme", 4))
    bad("scale_dtype_bf16", "quant: unknown scale_dtype 'bf16'", put("scale_dtype", "bf16"))
    bad("asym_no_zeros", "quant: missing member 'zeros' (required by scheme 'asym')", drop("zeros"))
    bad("sym_with_zeros", "quant: member 'zeros' is only allowed with scheme 'asym'", put("scheme", "sym"))
    bad("i8_asym", "scheme 'asym' is not allowed with dtype i8", put("scheme", "asym"), dtype="i8", shape=(3, 10),
        payload=i8_payload + bytes(64 - 6) + bytes(6),
        quant=dict(i8_quant, zeros={"offset": 128, "length": 6}))
    bad("rank1", "needs rank >= 2", dtype="i8", shape=(30,), payload=i8_payload, quant=i8_quant)
    bad("group_not_dividing", "quant: group_size 24 does not divide the last dimension 64", put("group_size", 24))
    bad("group_odd", "quant: group_size 5 is not an even number >= 2", put("group_size", 5), dtype="i8",
        shape=(3, 10), payload=i8_payload, quant=i8_quant)
    bad("group_zero", "quant: group_size 0 is not an even number >= 2", put("group_size", 0))
    bad("group_negative", "quant: group_size is negative", put("group_size", -32))
    bad("group_float", "quant: member 'group_size' must be an integer, not a floating-point number",
        put("group_size", 32.0))
    bad("group_string", "quant: member 'group_size' must be an integer, not a string", put("group_size", "32"))
    bad("codes_not_object", "quant: member 'codes' must be an object, not an array", put("codes", [0, 128]))
    bad("codes_offset", "quant.codes: offset 64 and length 128 are not the canonical offset 0 and length 128",
        sub("codes", "offset", 64))
    bad("codes_length", "quant.codes: offset 0 and length 64 are not the canonical offset 0 and length 128",
        sub("codes", "length", 64))
    bad("codes_negative", "quant.codes: offset is negative", sub("codes", "offset", -1))
    bad("codes_extra", "quant.codes: unknown member 'stride'", sub("codes", "stride", 1))
    bad("codes_missing_length", "quant.codes: missing member 'length'", lambda q: q["codes"].pop("length"))
    bad("scales_unaligned", "quant.scales: offset 30 and length 6 are not the canonical offset 64 and length 6",
        lambda q: q["scales"].__setitem__("offset", 30), dtype="i8", shape=(3, 10),
        payload=i8_payload[:30] + i8_payload[64:], quant=i8_quant)
    bad("zeros_swapped", "quant.scales: offset 192 and length 16 are not the canonical offset 128 and length 16",
        lambda q: (q["scales"].__setitem__("offset", 192), q["zeros"].__setitem__("offset", 128)))
    bad("zeros_length", "quant.zeros: offset 192 and length 32 are not the canonical offset 192 and length 16",
        sub("zeros", "length", 32))
    bad("length_long", "length 256 is not 208, the end of its last quant sub-block ('zeros')",
        payload=base_payload + bytes(48))
    bad("length_short", "length 144 is not 208, the end of its last quant sub-block ('zeros')",
        payload=base_payload[:144])
    bad("group_huge", "quant: group_size 9223372036854775806 does not divide the last dimension 64",
        put("group_size", 9223372036854775806))
    # 2^62 elements: every canonical value is far beyond the file but computed without overflow, so the error is
    # the ordinary bounds check, not a bogus placement complaint.
    big = {"scheme": "sym", "group_size": 1 << 31, "scale_dtype": "f16", "codes": {"offset": 0, "length": 1 << 61},
           "scales": {"offset": 1 << 61, "length": 1 << 32}}
    bad("huge_shape", "are out of the data section", dtype="q4", shape=(1 << 31, 1 << 31), payload=b"\0",
        quant=big, length=(1 << 61) + (1 << 32))
    with open(os.path.join(out, "quant_cases.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    f16 = bytes(range(2 * 3))
    tens = [("llm.embed.weight", "f32", [2, 3], f32, None), ("llm.norm.weight", "f16", [3], f16, None),
            ("llm.scalar", "bf16", [], b"\x80\x3f", None),
            ("llm.q.weight", "q4", [4, 64], *quant_tensor("q4", [4, 64], 32, "asym"))]
    secs = [("tokenizer.json", "raw", b'{"a":1}', b'{"a":1}')]
    files = {
        "small.mm1": bundle(tens, secs),
        "empty.mm1": bundle([]),
        "one.mm1": bundle([("w", "f32", [1], b"\0\0\x80\x3f", None)]),
        "rank8.mm1": bundle([("a.b_c.9", "f32", [1, 1, 1, 1, 1, 1, 2, 1], bytes(8), None),
                             ("i", "i8", [3, 2], *quant_tensor("i8", [3, 2], 2))],
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
    quant_cases(out)


if __name__ == "__main__":
    main()
