"""Tests of python/mm1bundle. Run: python3 -m unittest discover -s python/tests (or pytest python/tests).

Bundles come from tests/c/mkbundle.py (the C tests' writer) and from small edits of them. Where the C library is
built (c/build/libmm1bundle.so, or MM1B_LIBRARY), every edited file must be accepted or refused by both readers
alike; MM1B_REQUIRE_C=1 (set by CI) makes a missing library a failure instead of a skip.
"""
import ctypes
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "c"))

import mkbundle  # noqa: E402
from mm1bundle import Bundle, BundleError, DigestError, bf16_to_f32  # noqa: E402
from mm1bundle.__main__ import main as cli_main  # noqa: E402

TMP = tempfile.mkdtemp(prefix="mm1bundle-test-")
subprocess.run([sys.executable, os.path.join(ROOT, "tests", "c", "mkbundle.py"), TMP], check=True)


def _c_library():
    path = os.environ.get("MM1B_LIBRARY", os.path.join(ROOT, "c", "build", "libmm1bundle.so"))
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)
    lib.mm1b_open_memory.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                     ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
    lib.mm1b_close.argtypes = [ctypes.c_void_p]
    return lib


CLIB = _c_library()


def c_accepts(data):
    """(accepted, message) from the C parser on bytes."""
    b = ctypes.c_void_p()
    err = ctypes.create_string_buffer(2048)
    rc = CLIB.mm1b_open_memory(data, len(data), b"mem", ctypes.byref(b), err, len(err))
    if rc == 0:
        CLIB.mm1b_close(b)
    return rc == 0, err.value.decode("utf-8", "replace")


def write(name, data):
    p = os.path.join(TMP, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def with_header(data, header):
    """`data` (a valid bundle) with its header replaced by the bytes `header`, prefix fields and digest updated,
    the data section kept."""
    hl, do, dl = struct.unpack_from("<QQQ", data, 16)
    body = data[do:]
    new_do = (96 + len(header) + 4095) // 4096 * 4096
    prefix = data[:16] + struct.pack("<QQQ", len(header), new_do, dl) + hashlib.sha256(header).digest() + bytes(24)
    return prefix + header + bytes(new_do - 96 - len(header)) + body


def header_of(data):
    hl = struct.unpack_from("<Q", data, 16)[0]
    return data[96:96 + hl]


SMALL = open(os.path.join(TMP, "small.mm1"), "rb").read()


class Opening(unittest.TestCase):
    def test_small(self):
        with Bundle(os.path.join(TMP, "small.mm1")) as b:
            self.assertEqual([t.name for t in b], ["llm.embed.weight", "llm.norm.weight", "llm.scalar",
                                                   "llm.q.weight"])
            self.assertEqual(b.check_all(), [])
            e = b.array("llm.embed.weight")
            self.assertEqual(e.dtype, np.float32)
            self.assertFalse(e.flags.writeable)
            np.testing.assert_array_equal(e, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
            self.assertEqual(b.array("llm.scalar").shape, ())
            self.assertEqual(b.float32("llm.scalar").item(), 1.0)  # 0x3F80
            f16 = b.array("llm.norm.weight")
            self.assertEqual(f16.dtype, np.float16)
            np.testing.assert_array_equal(b.float32("llm.norm.weight"), f16.astype(np.float32))
            self.assertEqual(b.section_bytes("tokenizer.json"), b'{"a":1}')
            q = b.tensor("llm.q.weight").quant
            self.assertEqual((q.bits, q.scheme, q.group_size, q.rows, q.cols, q.codes, q.scales, q.zeros),
                             (4, "asym", 32, 4, 64, (0, 128), (128, 16), (192, 16)))
            self.assertEqual(b.config, {"llm": {"hidden": 4}})

    def test_digest_mismatch_names_tensor(self):
        with Bundle(os.path.join(TMP, "flipped.mm1")) as b:
            self.assertEqual(b.check_all(), ["llm.embed.weight"])
            with self.assertRaises(DigestError) as cm:
                b.check_tensor("llm.embed.weight")
            self.assertIn("flipped.mm1: tensor 'llm.embed.weight': sha256 mismatch", str(cm.exception))
            b.check_tensor("llm.norm.weight")

    def test_truncated_and_not_regular(self):
        p = write("trunc.mm1", SMALL[:-1])
        with self.assertRaisesRegex(BundleError, "trunc.mm1: .*the file is truncated"):
            Bundle(p)
        with self.assertRaisesRegex(BundleError, "not a regular file"):
            Bundle(TMP)
        with self.assertRaisesRegex(BundleError, "cannot open"):
            Bundle(os.path.join(TMP, "absent.mm1"))

    def test_views_outlive_close(self):
        b = Bundle(os.path.join(TMP, "small.mm1"))
        a = b.array("llm.embed.weight")
        b.close()
        self.assertEqual(float(a[1, 2]), 6.0)
        with self.assertRaisesRegex(BundleError, "closed"):
            b.array("llm.embed.weight")

    def test_cli(self):
        from contextlib import redirect_stdout, redirect_stderr
        import io
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli_main(["info", os.path.join(TMP, "rank8.mm1"), "--check", "--json"]), 0)
        info = json.loads(out.getvalue())
        self.assertEqual([t["name"] for t in info["tensors"]], ["a.b_c.9", "i"])
        self.assertTrue(all(s["ok"] for s in info["sections"]))
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            self.assertEqual(cli_main(["info", os.path.join(TMP, "flipped.mm1"), "--check"]), 1)
            self.assertEqual(cli_main(["info", write("t2.mm1", SMALL[:200])]), 2)


class Values(unittest.TestCase):
    def quant_bundle(self, dtype, shape, group, scheme, codes, scales, zeros=None):
        rows = int(np.prod(shape[:-1]))
        payload = bytearray(codes)
        q = {"scheme": scheme, "group_size": group, "scale_dtype": "f16",
             "codes": {"offset": 0, "length": len(codes)}}
        payload += bytes(mkbundle.align64(len(payload)) - len(payload))
        sb = np.asarray(scales, "<f2").tobytes()
        q["scales"] = {"offset": len(payload), "length": len(sb)}
        payload += sb
        if zeros is not None:
            zb = np.asarray(zeros, "<f2").tobytes()
            payload += bytes(mkbundle.align64(len(payload)) - len(payload))
            q["zeros"] = {"offset": len(payload), "length": len(zb)}
            payload += zb
        self.assertEqual(len(sb), rows * (shape[-1] // group) * 2)
        return Bundle(write("v.mm1", mkbundle.bundle([("w", dtype, shape, bytes(payload), q)])))

    def test_q4_nibbles_and_asym(self):
        # Row 0 is bundle.md's nibble example u = 1 2 3 4 15 0 7 8 (bytes 0x21 0x43 0x0F 0x87), row 1 u = 0..7.
        codes = bytes([0x21, 0x43, 0x0F, 0x87, 0x10, 0x32, 0x54, 0x76])
        with self.quant_bundle("q4", [2, 1, 8], 4, "asym", codes, [0.5, -2, 0.25, 3], [8, 0, 15, 1]) as b:
            w = b.dequantize("w")
            self.assertEqual(w.shape, (2, 1, 8))
            want = np.array([0.5 * (1 - 8), 0.5 * (2 - 8), 0.5 * (3 - 8), 0.5 * (4 - 8), -2 * 15, -0.0, -2 * 7,
                             -2 * 8, 0.25 * -15, 0.25 * -14, 0.25 * -13, 0.25 * -12, 9, 12, 15, 18],
                            np.float32).reshape(2, 1, 8)
            np.testing.assert_array_equal(w.view(np.uint32), want.view(np.uint32))  # -0.0 included
            np.testing.assert_array_equal(b.dequantize("w", rows=(1, 2)), want.reshape(2, 8)[1:])
            with self.assertRaisesRegex(BundleError, "tensor 'w': rows"):
                b.dequantize("w", rows=(1, 3))
            codes_v, scales_v, zeros_v = b.quant_parts("w")
            self.assertEqual(codes_v.shape, (2, 4))
            self.assertEqual(zeros_v.tolist(), [[8, 0], [15, 1]])

    def test_q4_sym_subnormal_scale(self):
        with self.quant_bundle("q4", [1, 4], 2, "sym", bytes([0xF0, 0x98]), [1.5, 2.0 ** -24]) as b:
            self.assertEqual(b.float32("w").tolist(), [[-12.0, 10.5, 0.0, 2.0 ** -24]])

    def test_i8(self):
        with self.quant_bundle("i8", [2, 2], 2, "sym", bytes([0x81, 0xFF, 0x80, 0x7F]), [-0.5, 65504]) as b:
            self.assertEqual(b.dequantize("w").tolist(), [[63.5, 0.5], [65504.0 * -128, 65504.0 * 127]])

    def test_spec_numpy_snippet(self):
        """The reader equals bundle.md's NumPy lines, run verbatim on a random tensor of each kind."""
        rng = np.random.default_rng(0)
        for dtype, scheme, shape, g in (("i8", "sym", [3, 2, 64], 32), ("q4", "sym", [5, 32], 8),
                                        ("q4", "asym", [2, 3, 16], 16)):
            R, K = int(np.prod(shape[:-1])), shape[-1]
            if dtype == "i8":
                codes = rng.integers(-128, 128, R * K).astype(np.int8).tobytes()
            else:
                codes = rng.integers(0, 256, R * K // 2).astype(np.uint8).tobytes()
            scales = rng.standard_normal(R * K // g).astype(np.float16)
            zeros = rng.integers(0, 16, R * K // g).astype(np.float16) if scheme == "asym" else None
            with self.quant_bundle(dtype, shape, g, scheme, codes, scales, zeros) as b:
                t = b.tensor("w")
                buf = bytes(b.raw("w"))
                G = g
                co, so = t.quant.codes[0], t.quant.scales[0]
                zo = t.quant.zeros[0] if t.quant.zeros else None

                def f16(o):
                    return np.frombuffer(buf, "<f2", R * (K // G), o).astype(np.float32).reshape(
                        R, K // G).repeat(G, axis=1)

                def nib(o):
                    bb = np.frombuffer(buf, np.uint8, R * K // 2, o)
                    return np.stack([bb & 15, bb >> 4], axis=-1).reshape(R, K).astype(np.float32)

                if dtype == "i8":
                    w = f16(so) * np.frombuffer(buf, np.int8, R * K, co).reshape(R, K).astype(np.float32)
                elif scheme == "sym":
                    w = f16(so) * (nib(co) - np.float32(8))
                else:
                    w = f16(so) * (nib(co) - f16(zo))
                got = b.dequantize("w")
                self.assertEqual(got.dtype, np.float32)
                np.testing.assert_array_equal(got.view(np.uint32), w.reshape(shape).view(np.uint32))

    def test_bf16(self):
        bits = np.arange(65536, dtype=np.uint16)
        f = bf16_to_f32(bits)
        np.testing.assert_array_equal(f.view(np.uint32), bits.astype(np.uint32) << 16)
        with self.assertRaises(TypeError):
            bf16_to_f32(np.zeros(2, np.float32))


class Sections(unittest.TestCase):
    def test_zstd_and_empty(self):
        with Bundle(os.path.join(TMP, "rank8.mm1")) as b:
            self.assertEqual(b.section_bytes("vocab-x.txt"), b"")
            try:
                import zstandard  # noqa: F401
            except ImportError:
                self.skipTest("zstandard not installed")
            self.assertEqual(b.section_bytes("tok.model"), b"abc")

    def test_zstd_missing_package(self):
        with Bundle(os.path.join(TMP, "rank8.mm1")) as b, mock.patch.dict(sys.modules, {"zstandard": None}):
            with self.assertRaisesRegex(BundleError, "rank8.mm1: section 'tok.model' is zstd-encoded and the "
                                                     "'zstandard' package is not installed"):
                b.section_bytes("tok.model")

    def test_zstd_bad_frames(self):
        try:
            import zstandard  # noqa: F401
        except ImportError:
            self.skipTest("zstandard not installed")
        abc = mkbundle.ZSTD_ABC
        cases = [
            ("trailing", abc + b"\0", b"abc", "trailing data"),
            ("two frames", abc + abc, b"abc", "trailing data"),
            ("declared size", abc, b"abcd", "declares 3 bytes, raw_length is 4"),
            ("corrupt", abc[:-1] + b"d", b"abc", "sha256"),
            ("skippable then frame", struct.pack("<II", 0x184D2A50, 3) + b"xyz" + abc, b"abc", "magic 28 B5 2F FD"),
        ]
        skip = struct.pack("<II", 0x184D2A50, 0)  # decodes to nothing: must not pass as an empty section
        cases.append(("skippable only", skip, b"", "magic 28 B5 2F FD"))
        for what, stored, raw, fragment in cases:
            p = write("z.mm1", mkbundle.bundle([], [("t.json", "zstd", stored, raw)]))
            with Bundle(p) as b, self.subTest(what):
                with self.assertRaises(BundleError) as cm:
                    b.section_bytes("t.json")
                self.assertIn("section 't.json'", str(cm.exception))
                self.assertIn(fragment, str(cm.exception))


class QuantCases(unittest.TestCase):
    """mkbundle.py's quant_cases.tsv, which the C quant_test also runs: the same parameters for valid tensors and
    the same messages for invalid ones."""

    def test_cases(self):
        n = 0
        with open(os.path.join(TMP, "quant_cases.tsv")) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                path = os.path.join(TMP, fields[1])
                with self.subTest(fields[1]):
                    if fields[0] == "ok":
                        with Bundle(path) as b:
                            t = b.tensor(fields[2])
                            q = t.quant
                            got = [q.bits, int(q.scheme == "asym"), q.group_size, q.rows, q.cols, *q.codes,
                                   *q.scales, *(q.zeros or (0, 0))]
                            self.assertEqual(got, [int(x) for x in fields[3:]])
                            b.check_tensor(t)
                            self.assertEqual(b.dequantize(t).shape, t.shape)
                    else:
                        with self.assertRaises(BundleError) as cm:
                            Bundle(path)
                        self.assertEqual(cm.exception.tensor, fields[2])
                        self.assertIn(fields[3], cm.exception.problem)
                        self.assertIn(fields[1], str(cm.exception))
                n += 1
        self.assertGreater(n, 30)


def mutations():
    """(name, bytes) of edited bundles: header JSON strictness, members, table rules, prefix fields."""
    h = header_of(SMALL).decode()
    hj = json.loads(h)
    out = []

    def hdr(name, text):
        out.append((name, with_header(SMALL, text.encode() if isinstance(text, str) else text)))

    def edit(name, fn):
        j = json.loads(h)
        fn(j)
        hdr(name, json.dumps(j, sort_keys=True, separators=(",", ":")))

    hdr("valid", h)
    hdr("whitespace around", " \n" + h + "\t\r\n")
    hdr("bom", b"\xef\xbb\xbf" + h.encode())
    hdr("dup key", h.replace('{"alignment":64,', '{"alignment":64,"alignment":64,'))
    hdr("escaped dup key", h.replace('{"alignment":64,', '{"alignment":64,"\\u0061lignment":64,'))
    hdr("nul in key", h.replace('"metadata":{}', '"metadata":{"a\\u0000":1}'))
    hdr("nul in value", h.replace('"metadata":{}', '"metadata":{"a":"\\u0000"}'))
    hdr("nan", h.replace('"metadata":{}', '"metadata":{"a":NaN}'))
    hdr("infinity", h.replace('"metadata":{}', '"metadata":{"a":-Infinity}'))
    hdr("huge float", h.replace('"metadata":{}', '"metadata":{"a":1e400}'))
    hdr("tiny float", h.replace('"metadata":{}', '"metadata":{"a":1e-400}'))
    hdr("int64 max", h.replace('"metadata":{}', '"metadata":{"a":9223372036854775807}'))
    hdr("int64 min", h.replace('"metadata":{}', '"metadata":{"a":-9223372036854775808}'))
    hdr("int64 max + 1", h.replace('"metadata":{}', '"metadata":{"a":9223372036854775808}'))
    hdr("int64 min - 1", h.replace('"metadata":{}', '"metadata":{"a":-9223372036854775809}'))
    hdr("leading zero", h.replace('"metadata":{}', '"metadata":{"a":01}'))
    hdr("lone surrogate", h.replace('"metadata":{}', '"metadata":{"a":"\\ud800"}'))
    hdr("surrogate pair", h.replace('"metadata":{}', '"metadata":{"a":"\\ud83d\\ude00"}'))
    hdr("raw control char", h.replace('"metadata":{}', '"metadata":{"a":"\x01"}'))
    hdr("overlong utf8", h.encode().replace(b'"metadata":{}', b'"metadata":{"a":"\xc0\xaf"}'))
    hdr("encoded surrogate", h.encode().replace(b'"metadata":{}', b'"metadata":{"a":"\xed\xa0\x80"}'))
    hdr("utf8 ok", h.encode().replace(b'"metadata":{}', '"metadata":{"a":"é€𝄞"}'.encode()))
    hdr("trailing comma", h.replace('"metadata":{}', '"metadata":{"a":1,}'))
    hdr("trailing garbage", h + "x")
    hdr("single quotes", h.replace('"metadata":{}', "'metadata':{}"))
    # The root is at depth 1, metadata at 2, so n nested arrays in metadata.a reach depth n + 2 (limit 24).
    for n in (21, 22, 23):
        hdr("depth %d" % (n + 2), h.replace('"metadata":{}', '"metadata":{"a":' + "[" * n + "]" * n + "}"))
    hdr("not object", "[" + h + "]")
    edit("unknown top member", lambda j: j.__setitem__("extra", 1))
    edit("missing sections", lambda j: j.pop("sections"))
    edit("alignment 32", lambda j: j.__setitem__("alignment", 32))
    edit("alignment 128", lambda j: j.__setitem__("alignment", 128))
    edit("alignment float", lambda j: j.__setitem__("alignment", 64.0))
    edit("format_version 2", lambda j: j.__setitem__("format_version", 2))
    edit("format other", lambda j: j.__setitem__("format", "gguf"))
    edit("config array", lambda j: j.__setitem__("config", []))
    t0 = lambda j: j["tensors"][0]  # noqa: E731
    edit("tensor unknown member", lambda j: t0(j).__setitem__("stride", 1))
    edit("tensor missing sha", lambda j: t0(j).pop("sha256"))
    edit("tensor bad name", lambda j: t0(j).__setitem__("name", "llm/embed"))
    edit("tensor name dash", lambda j: t0(j).__setitem__("name", "llm-embed"))
    edit("tensor long name", lambda j: t0(j).__setitem__("name", "a" * 256))
    edit("tensor dup name", lambda j: j["tensors"][1].__setitem__("name", "llm.embed.weight"))
    edit("tensor dtype", lambda j: t0(j).__setitem__("dtype", "f64"))
    edit("tensor shape zero", lambda j: t0(j).__setitem__("shape", [0, 3]))
    edit("tensor shape float", lambda j: t0(j).__setitem__("shape", [2.0, 3]))
    edit("tensor rank 9", lambda j: t0(j).__setitem__("shape", [1] * 7 + [2, 3]))
    edit("tensor length", lambda j: t0(j).__setitem__("length", 28))
    edit("tensor offset", lambda j: t0(j).__setitem__("offset", 64))
    edit("tensor offset negative", lambda j: t0(j).__setitem__("offset", -64))
    edit("tensor sha upper", lambda j: t0(j).__setitem__("sha256", t0(j)["sha256"].upper()))
    edit("tensor quant on f32", lambda j: t0(j).__setitem__("quant", {}))
    edit("tensor huge numel", lambda j: t0(j).__setitem__("shape", [1 << 32, 1 << 31]))
    edit("tensors swapped", lambda j: j["tensors"].__setitem__(slice(0, 2), j["tensors"][1::-1]))
    edit("section name dot", lambda j: j["sections"][0].__setitem__("name", ".hidden"))
    edit("section encoding", lambda j: j["sections"][0].__setitem__("encoding", "gzip"))
    edit("section raw length", lambda j: j["sections"][0].__setitem__("raw_length", 8))
    edit("section offset", lambda j: j["sections"][0].__setitem__("offset", 0))
    edit("section as tensor name", lambda j: j["sections"][0].__setitem__("name", "llm.embed.weight"))
    deep = '"metadata":' + "[" * 30 + "]" * 30
    hdr("depth 30", h.replace('"metadata":{}', deep))
    hdr("very deep", h.replace('"metadata":{}', '"metadata":' + "[" * 100000 + "]" * 100000))

    def prefix(name, off, fmt, value):
        b = bytearray(SMALL)
        struct.pack_into(fmt, b, off, value)
        out.append((name, bytes(b)))

    prefix("version 2", 8, "<I", 2)
    prefix("flags", 12, "<I", 1)
    prefix("reserved", 90, "<B", 1)
    prefix("header digest", 40, "<B", SMALL[40] ^ 1)
    prefix("data_length overflow", 32, "<Q", (1 << 64) - 1)
    prefix("data_offset unaligned", 24, "<Q", 4000)
    prefix("header_length 1", 16, "<Q", 1)
    out.append(("trailing byte", SMALL + b"\0"))
    one = open(os.path.join(TMP, "one.mm1"), "rb").read()  # one 4-byte tensor, data_length 4
    for name, tail in (("zero tail", bytes(4)), ("nonzero tail", b"\0\0\0\1"), ("tail of 63", bytes(63)), ("tail of 64", bytes(64))):
        b = bytearray(one + tail)
        struct.pack_into("<Q", b, 32, 4 + len(tail))
        out.append((name, bytes(b)))
    b = bytearray(SMALL)
    b[96 + struct.unpack_from("<Q", SMALL, 16)[0]] = 1
    out.append(("nonzero header padding", bytes(b)))
    return out


class Strictness(unittest.TestCase):
    EXPECT_OK = {"valid", "whitespace around", "tiny float", "int64 max", "int64 min", "surrogate pair", "utf8 ok",
                 "depth 23", "depth 24", "nul in value", "section as tensor name", "zero tail", "tail of 63"}

    def test_mutations(self):
        for name, data in mutations():
            with self.subTest(name):
                p = write("m.mm1", data)
                try:
                    Bundle(p).close()
                    ok, msg = True, ""
                except BundleError as e:
                    ok, msg = False, str(e)
                    self.assertTrue(msg.startswith(p + ": "), msg)
                self.assertEqual(ok, name in self.EXPECT_OK, "%s: %s" % (name, msg))
                if CLIB is not None:
                    c_ok, c_msg = c_accepts(data)
                    self.assertEqual(ok, c_ok, "%s: Python %s, C %s" % (name, msg or "accepts", c_msg or "accepts"))
                    if name.startswith("tensor ") and not ok and "tensor '" in c_msg:
                        self.assertIn(c_msg.split("tensor '")[1].split("'")[0], msg)

    def test_c_library_present_when_required(self):
        if os.environ.get("MM1B_REQUIRE_C") == "1":
            self.assertIsNotNone(CLIB, "MM1B_REQUIRE_C=1 but the C library is not built (make -C c)")


if __name__ == "__main__":
    unittest.main()
