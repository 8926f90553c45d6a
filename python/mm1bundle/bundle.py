"""Reading mm1pack bundles (formats/bundle.md, version 1) with NumPy.

`Bundle(path)` maps the file and validates everything formats/bundle.md section 5 lists (steps 1-4) before it
returns, with the same rules as the C parser (Sources/CMM1Bundle): a file either opens in both or in neither.
Tensor digests (step 5) are checked on demand (`check_tensor`, `check_all`).
"""
import hashlib
import mmap
import os
import stat
import struct

import numpy as np

from . import _json

MAGIC = b"MM1PACK\x00"
FORMAT_VERSION = 1
PREFIX_SIZE = 96
MAX_HEADER_LENGTH = 64 << 20
DATA_ALIGNMENT = 4096
MAX_RANK = 8
MAX_NAME = 255
SUBBLOCK_ALIGNMENT = 64
_INT64_MAX = (1 << 63) - 1
_U64 = 1 << 64

_FLOAT_DTYPES = {"f32": ("<f4", 4), "f16": ("<f2", 2), "bf16": ("<u2", 2)}
_QUANT_DTYPES = ("i8", "q4")
_TENSOR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")
_SECTION_CHARS = _TENSOR_CHARS | {"-"}


class BundleError(ValueError):
    """A bundle that cannot be read, or a failed check. `file` and `tensor` (or None) say where, `problem` what;
    str() is "<file>: tensor '<name>': <problem>"."""

    def __init__(self, file, problem, tensor=None):
        self.file, self.tensor, self.problem = file, tensor, problem
        where = "%s: tensor '%s': " % (file, tensor) if tensor is not None else "%s: " % file
        super().__init__(where + problem)


class DigestError(BundleError):
    """A SHA-256 digest does not match."""


class Tensor:
    """One entry of the tensor table. `offset` is absolute in the file; `quant` is None for float dtypes, else a
    `Quant`."""

    __slots__ = ("index", "name", "dtype", "shape", "numel", "offset", "rel_offset", "length", "sha256", "quant")

    def __repr__(self):
        return "Tensor(%r, %s, %s, offset=%d, length=%d)" % (self.name, self.dtype, list(self.shape), self.offset,
                                                             self.length)


class Quant:
    """Validated quantization parameters (formats/bundle.md section 2.2). The tensor is an [rows, cols] matrix
    (cols = the last dimension); byte ranges are (offset, length) relative to the tensor's first byte."""

    __slots__ = ("bits", "scheme", "group_size", "rows", "cols", "codes", "scales", "zeros")

    @property
    def groups_per_row(self):
        return self.cols // self.group_size

    def __repr__(self):
        return "Quant(bits=%d, scheme=%r, group_size=%d, rows=%d, cols=%d)" % (
            self.bits, self.scheme, self.group_size, self.rows, self.cols)


class Section:
    """One entry of the section table; `offset` is absolute in the file, `length` counts stored bytes."""

    __slots__ = ("index", "name", "encoding", "offset", "rel_offset", "length", "raw_length", "sha256")

    def __repr__(self):
        return "Section(%r, %s, length=%d, raw_length=%d)" % (self.name, self.encoding, self.length, self.raw_length)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_TYPES = {"string": (str, "a string"), "int": (None, "an integer"), "object": (dict, "an object"),
          "array": (list, "an array")}


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a floating-point number"
    return {str: "a string", dict: "an object", list: "an array"}[type(v)]


def _align(x, a):
    return (x + a - 1) // a * a


def _name_problem(name, section):
    n = len(name.encode("utf-8", "surrogatepass"))
    if n == 0:
        return "is empty"
    if n > MAX_NAME:
        return "is longer than 255 bytes"
    if section and name[0] == ".":
        return "starts with '.'"
    chars = _SECTION_CHARS if section else _TENSOR_CHARS
    for i, ch in enumerate(name):
        if ch not in chars:
            return "has a character outside [A-Za-z0-9_.%s] (byte %d)" % ("-" if section else "", i)
    return None


class Bundle:
    """An opened, validated bundle.

    >>> with Bundle("tiny.mm1") as b:
    ...     w = b.float32("llm.layers.0.attn.q.weight")   # any dtype, as float32

    Arrays returned by `array` are read-only views of the mapping: they keep it alive after `close`.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._mm = None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise BundleError(self.path, "cannot open: %s" % e.strerror) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(self.path, "not a regular file")
            if st.st_size < PREFIX_SIZE:
                raise BundleError(self.path, "file is %d bytes, smaller than the 96-byte prefix of a bundle"
                                  % st.st_size)
            self._mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.file_size = len(self._mm)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- context manager ------------------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Unmaps the file unless NumPy views still use it; then the mapping goes with the last view."""
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None

    def _fail(self, problem, tensor=None):
        raise BundleError(self.path, problem, tensor)

    # -- parsing --------------------------------------------------------------------------------------------------
    def _parse(self):
        m = self._mm
        if m[:8] != MAGIC:
            self._fail("bad magic: not an mm1pack bundle")
        version, flags, header_length, data_offset, data_length = struct.unpack_from("<IIQQQ", m, 8)
        if version != FORMAT_VERSION:
            self._fail("unsupported format_version %d (this reader knows version 1)" % version)
        if flags != 0:
            self._fail("flags is 0x%08x, must be 0" % flags)
        if any(m[72:96]):
            self._fail("reserved prefix bytes 72..95 are not zero")
        if not 2 <= header_length <= MAX_HEADER_LENGTH:
            self._fail("header_length %d is out of range (2 to 67108864 bytes)" % header_length)
        if data_offset % DATA_ALIGNMENT:
            self._fail("data_offset %d is not a multiple of 4096" % data_offset)
        header_end = PREFIX_SIZE + header_length
        if data_offset < header_end:
            self._fail("data_offset %d is inside the header (which ends at %d)" % (data_offset, header_end))
        end = data_offset + data_length
        if end >= _U64:
            self._fail("data_offset %d + data_length %d overflows" % (data_offset, data_length))
        if end != self.file_size:
            self._fail("file size is %d bytes but data_offset + data_length is %d (%s)" % (
                self.file_size, end, "the file is truncated" if end > self.file_size else
                "trailing bytes after the data section"))
        pad = m[header_end:data_offset]
        if any(pad):
            self._fail("padding between the header and data_offset is not zero (byte %d)"
                       % (header_end + next(i for i, c in enumerate(pad) if c)))
        self.format_version = version
        self.data_offset, self.data_length = data_offset, data_length
        self.header_sha256 = bytes(m[40:72]).hex()
        header = m[PREFIX_SIZE:header_end]
        got = hashlib.sha256(header).hexdigest()
        if got != self.header_sha256:
            self._fail("header sha256 mismatch: the prefix says %s, the header hashes to %s"
                       % (self.header_sha256, got))
        self.header_bytes = header
        try:
            h = _json.loads(header)
        except _json.HeaderJSONError as e:
            self._fail("header: %s" % e)
        self.header = h
        self._check_members(h, {"format": "string", "format_version": "int", "alignment": "int", "config": "object",
                                "tensors": "array", "sections": "array", "provenance": "object",
                                "metadata": "object"}, "header: ")
        if h["format"] != "mm1pack":
            self._fail("header: format is %r, not 'mm1pack'" % h["format"])
        if h["format_version"] != version:
            self._fail("header: format_version %d differs from the prefix's %d" % (h["format_version"], version))
        al = h["alignment"]
        if not 64 <= al <= DATA_ALIGNMENT or al & (al - 1):
            self._fail("header: alignment %d is not a power of two between 64 and 4096" % al)
        self.alignment = al
        self.config, self.provenance, self.metadata = h["config"], h["provenance"], h["metadata"]
        cursor = self._parse_tensors(h["tensors"])
        cursor = self._parse_sections(h["sections"], cursor)
        tail = data_length - cursor
        if tail >= al:
            self._fail("the data section has %d unused bytes after its last payload (at most %d)" % (tail, al - 1))
        if any(m[data_offset + cursor:data_offset + data_length]):
            self._fail("the padding at the end of the data section is not zero")

    def _check_members(self, obj, spec, what, tensor=None, optional=()):
        for k, v in obj.items():
            if k not in spec:
                self._fail("%sunknown member '%s'" % (what, k), tensor)
            want = spec[k]
            ok = _is_int(v) if want == "int" else isinstance(v, _TYPES[want][0])
            if not ok:
                self._fail("%smember '%s' must be %s, not %s" % (what, k, _TYPES[want][1], _json_type(v)), tensor)
        for k in spec:
            if k not in obj and k not in optional:
                self._fail("%smissing member '%s'" % (what, k), tensor)

    def _uint(self, obj, key, what, tensor=None):
        v = obj[key]
        if v < 0:
            self._fail("%s%s is negative (%d)" % (what, key, v), tensor)
        return v

    def _digest(self, v, what, tensor=None):
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            self._fail("%ssha256 must be 64 lowercase hex digits, got '%s'" % (what, v[:80]), tensor)
        return v

    def _zero_gap(self, start, end):
        return not any(self._mm[self.data_offset + start:self.data_offset + end])

    def _parse_tensors(self, table):
        spec = {"name": "string", "dtype": "string", "shape": "array", "offset": "int", "length": "int",
                "sha256": "string", "quant": "object"}
        self.tensors = []
        self._tensor_index = {}
        cursor = 0
        prev = None
        for i, e in enumerate(table):
            if not isinstance(e, dict):
                self._fail("tensors[%d] is not an object" % i)
            what = "tensor #%d: " % i
            if "name" not in e:
                self._fail("%smissing member 'name'" % what)
            name = e["name"]
            if not isinstance(name, str):
                self._fail("%smember 'name' must be a string" % what)
            prob = _name_problem(name, section=False)
            if prob:
                self._fail("%sname %r %s" % (what, name[:300], prob))
            self._check_members(e, spec, "", name, optional=("quant",))
            t = Tensor()
            t.index, t.name, t.dtype = i, name, e["dtype"]
            quantized = t.dtype in _QUANT_DTYPES
            if not quantized and t.dtype not in _FLOAT_DTYPES:
                self._fail("unknown dtype '%s' (known: f32, f16, bf16; i8 and q4 with 'quant')" % t.dtype[:300],
                           name)
            if quantized and "quant" not in e:
                self._fail("quantized dtype '%s' without a 'quant' object" % t.dtype, name)
            if not quantized and "quant" in e:
                self._fail("'quant' is only allowed on quantized dtypes, not on '%s'" % t.dtype, name)
            shape = e["shape"]
            if len(shape) > MAX_RANK:
                self._fail("rank %d is more than 8" % len(shape), name)
            numel = 1
            for d, dv in enumerate(shape):
                if not _is_int(dv):
                    self._fail("shape[%d] is not an integer" % d, name)
                if dv < 1:
                    self._fail("shape[%d] is %d, dimensions must be >= 1" % (d, dv), name)
                numel *= dv
                if numel > _INT64_MAX:
                    self._fail("the number of elements of shape overflows (more than 2^63 - 1)", name)
            t.shape, t.numel = tuple(shape), numel
            t.rel_offset = self._uint(e, "offset", "", name)
            t.length = self._uint(e, "length", "", name)
            t.quant = None
            if not quantized:
                want = numel * _FLOAT_DTYPES[t.dtype][1]
                if want != t.length:
                    self._fail("length %d is not %d (%d elements of %s)" % (t.length, want, numel, t.dtype), name)
            else:
                t.quant = self._parse_quant(t, e["quant"])
            t.sha256 = self._digest(e["sha256"], "", name)
            if t.rel_offset % self.alignment:
                self._fail("offset %d is not a multiple of %d" % (t.rel_offset, self.alignment), name)
            if prev is not None and t.rel_offset < prev.rel_offset:
                self._fail("offset %d is before the offset %d of the previous tensor '%s' (the table must be in "
                           "increasing offset order)" % (t.rel_offset, prev.rel_offset, prev.name), name)
            if t.rel_offset < cursor:
                self._fail("offset %d overlaps the previous tensor '%s' (which ends at %d)"
                           % (t.rel_offset, prev.name if prev else "?", cursor), name)
            end = t.rel_offset + t.length
            if end >= _U64 or end > self.data_length:
                self._fail("bytes [%d, %d + %d) are out of the data section (data_length %d)"
                           % (t.rel_offset, t.rel_offset, t.length, self.data_length), name)
            gap = t.rel_offset - cursor
            if gap >= self.alignment:
                self._fail("hole of %d bytes before offset %d (at most %d bytes of padding)"
                           % (gap, t.rel_offset, self.alignment - 1), name)
            if not self._zero_gap(cursor, t.rel_offset):
                self._fail("padding before offset %d is not zero" % t.rel_offset, name)
            t.offset = self.data_offset + t.rel_offset
            if name in self._tensor_index:
                self._fail("duplicate tensor name (entries #%d and #%d)" % (self._tensor_index[name], i), name)
            self._tensor_index[name] = i
            self.tensors.append(t)
            cursor = end
            prev = t
        return cursor

    def _parse_quant(self, t, q):
        name = t.name
        if len(t.shape) < 2:
            self._fail("a quantized tensor needs rank >= 2 (groups run along the last dimension), not rank %d"
                       % len(t.shape), name)
        self._check_members(q, {"scheme": "string", "group_size": "int", "scale_dtype": "string", "codes": "object",
                                "scales": "object", "zeros": "object"}, "quant: ", name, optional=("zeros",))
        i8 = t.dtype == "i8"
        scheme = q["scheme"]
        if scheme not in ("sym", "asym"):
            self._fail("quant: unknown scheme '%s' (known: sym, asym)" % scheme[:300], name)
        asym = scheme == "asym"
        if asym and i8:
            self._fail("quant: scheme 'asym' is not allowed with dtype i8 (int8 is symmetric only)", name)
        if asym and "zeros" not in q:
            self._fail("quant: missing member 'zeros' (required by scheme 'asym')", name)
        if not asym and "zeros" in q:
            self._fail("quant: member 'zeros' is only allowed with scheme 'asym'", name)
        if q["scale_dtype"] != "f16":
            self._fail("quant: unknown scale_dtype '%s' (known: f16)" % q["scale_dtype"][:300], name)
        g = self._uint(q, "group_size", "quant: ", name)
        k = t.shape[-1]
        if g < 2 or g % 2:
            self._fail("quant: group_size %d is not an even number >= 2" % g, name)
        if k % g:
            self._fail("quant: group_size %d does not divide the last dimension %d" % (g, k), name)
        codes_len = t.numel if i8 else t.numel // 2
        scales_len = t.numel // g * 2
        scales_off = _align(codes_len, SUBBLOCK_ALIGNMENT)
        end = scales_off + scales_len
        zeros_off = zeros_len = 0
        if asym:
            zeros_len = scales_len
            zeros_off = _align(end, SUBBLOCK_ALIGNMENT)
            end = zeros_off + zeros_len
        if end >= _U64:
            self._fail("quant: sub-block sizes overflow 64 bits", name)
        blocks = [("codes", 0, codes_len), ("scales", scales_off, scales_len)]
        if asym:
            blocks.append(("zeros", zeros_off, zeros_len))
        for which, want_off, want_len in blocks:
            what = "quant.%s: " % which
            o = q[which]
            self._check_members(o, {"offset": "int", "length": "int"}, what, name)
            off = self._uint(o, "offset", what, name)
            ln = self._uint(o, "length", what, name)
            if off != want_off or ln != want_len:
                self._fail("quant.%s: offset %d and length %d are not the canonical offset %d and length %d"
                           % (which, off, ln, want_off, want_len), name)
        if t.length != end:
            self._fail("length %d is not %d, the end of its last quant sub-block ('%s')"
                       % (t.length, end, "zeros" if asym else "scales"), name)
        p = Quant()
        p.bits, p.scheme, p.group_size = 8 if i8 else 4, scheme, g
        p.rows, p.cols = t.numel // k, k
        p.codes, p.scales = (0, codes_len), (scales_off, scales_len)
        p.zeros = (zeros_off, zeros_len) if asym else None
        return p

    def _parse_sections(self, table, cursor):
        spec = {"name": "string", "encoding": "string", "offset": "int", "length": "int", "raw_length": "int",
                "sha256": "string"}
        self.sections = []
        self._section_index = {}
        prev = None
        for i, e in enumerate(table):
            if not isinstance(e, dict):
                self._fail("sections[%d] is not an object" % i)
            name = e.get("name")
            if not isinstance(name, str):
                self._fail("section #%d: member 'name' is missing or not a string" % i)
            prob = _name_problem(name, section=True)
            if prob:
                self._fail("section #%d: name %r %s" % (i, name[:300], prob))
            what = "section '%s': " % name
            self._check_members(e, spec, what)
            s = Section()
            s.index, s.name, s.encoding = i, name, e["encoding"]
            if s.encoding not in ("raw", "zstd"):
                self._fail("%sunknown encoding '%s' (known: raw, zstd)" % (what, s.encoding[:300]))
            s.rel_offset = self._uint(e, "offset", what)
            s.length = self._uint(e, "length", what)
            s.raw_length = self._uint(e, "raw_length", what)
            s.sha256 = self._digest(e["sha256"], what)
            if s.encoding == "raw" and s.raw_length != s.length:
                self._fail("%sraw_length %d differs from length %d of a raw section" % (what, s.raw_length, s.length))
            if s.encoding == "zstd" and s.length == 0:
                self._fail("%sa zstd section cannot be empty" % what)
            if s.rel_offset % self.alignment:
                self._fail("%soffset %d is not a multiple of %d" % (what, s.rel_offset, self.alignment))
            if s.rel_offset < cursor:
                if prev is not None:
                    self._fail("%soffset %d is before the end (%d) of the previous section '%s' (sections are stored "
                               "in increasing order without overlap)" % (what, s.rel_offset, cursor, prev.name))
                self._fail("%soffset %d is before the end (%d) of the tensors (sections are stored after them)"
                           % (what, s.rel_offset, cursor))
            end = s.rel_offset + s.length
            if end >= _U64 or end > self.data_length:
                self._fail("%sbytes [%d, %d + %d) are out of the data section (data_length %d)"
                           % (what, s.rel_offset, s.rel_offset, s.length, self.data_length))
            gap = s.rel_offset - cursor
            # The gap between the last tensor and the first section is free: §3.
            if prev is not None and gap >= self.alignment:
                self._fail("%shole of %d bytes before offset %d (at most %d bytes of padding)"
                           % (what, gap, s.rel_offset, self.alignment - 1))
            if not self._zero_gap(cursor, s.rel_offset):
                self._fail("%spadding before offset %d is not zero" % (what, s.rel_offset))
            s.offset = self.data_offset + s.rel_offset
            if name in self._section_index:
                self._fail("section '%s': duplicate section name (entries #%d and #%d)"
                           % (name, self._section_index[name], i))
            self._section_index[name] = i
            self.sections.append(s)
            cursor = end
            prev = s
        return cursor

    # -- access ---------------------------------------------------------------------------------------------------
    def _mapping(self):
        if self._mm is None:
            raise BundleError(self.path, "the bundle is closed")
        return self._mm

    def tensor(self, name):
        """The table entry of `name` (a Tensor); KeyError naming the file if absent."""
        if isinstance(name, Tensor):
            return name
        i = self._tensor_index.get(name)
        if i is None:
            raise KeyError("%s: no tensor '%s'" % (self.path, name))
        return self.tensors[i]

    def section(self, name):
        if isinstance(name, Section):
            return name
        i = self._section_index.get(name)
        if i is None:
            raise KeyError("%s: no section '%s'" % (self.path, name))
        return self.sections[i]

    def __contains__(self, name):
        return name in self._tensor_index

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    def raw(self, name):
        """The tensor's stored bytes, a read-only uint8 view of the mapping (`length` bytes)."""
        t = self.tensor(name)
        return np.frombuffer(self._mapping(), np.uint8, t.length, t.offset)

    def array(self, name):
        """The stored values as a read-only NumPy view of the mapping, in the tensor's shape: float32 for f32,
        float16 for f16, and uint16 bit patterns for bf16 (NumPy has no bfloat16; widen with `bf16_to_f32`). For
        i8/q4 tensors use `dequantize` (or `quant_parts` for the codes and scales)."""
        t = self.tensor(name)
        if t.quant is not None:
            raise BundleError(self.path, "dtype %s is quantized: use dequantize()" % t.dtype, t.name)
        dt = _FLOAT_DTYPES[t.dtype][0]
        return np.frombuffer(self._mapping(), dt, t.numel, t.offset).reshape(t.shape)

    def quant_parts(self, name):
        """(codes, scales, zeros) of a quantized tensor as read-only views: i8 codes int8 [rows, cols]; q4 codes
        uint8 [rows, cols / 2] (two per byte, element 2j in the low nibble); scales and zeros float16
        [rows, cols / group_size] (zeros is None for sym)."""
        t = self.tensor(name)
        q = t.quant
        if q is None:
            raise BundleError(self.path, "dtype %s is not quantized" % t.dtype, t.name)
        m = self._mapping()
        g = q.groups_per_row
        if q.bits == 8:
            codes = np.frombuffer(m, np.int8, q.rows * q.cols, t.offset + q.codes[0]).reshape(q.rows, q.cols)
        else:
            codes = np.frombuffer(m, np.uint8, q.rows * q.cols // 2, t.offset + q.codes[0]).reshape(q.rows,
                                                                                                    q.cols // 2)
        scales = np.frombuffer(m, "<f2", q.rows * g, t.offset + q.scales[0]).reshape(q.rows, g)
        zeros = None
        if q.zeros is not None:
            zeros = np.frombuffer(m, "<f2", q.rows * g, t.offset + q.zeros[0]).reshape(q.rows, g)
        return codes, scales, zeros

    def dequantize(self, name, rows=None):
        """A quantized tensor as float32, exactly as formats/bundle.md section 2.2 says (one f32 multiplication per
        element after exact widening and subtraction, so the bits equal every conforming reader's). Without `rows`
        the result has the logical shape (e.g. [E, out, in] for stacked experts); with rows=(start, stop) it is
        rows [start, stop) of the [R, K] matrix view, shape [stop - start, K]."""
        t = self.tensor(name)
        q = t.quant
        if q is None:
            raise BundleError(self.path, "dtype %s is not quantized" % t.dtype, t.name)
        r0, r1 = (0, q.rows) if rows is None else rows
        if not 0 <= r0 <= r1 <= q.rows:
            raise BundleError(self.path, "rows [%d, %d) outside [0, %d)" % (r0, r1, q.rows), t.name)
        codes, scales, zeros = self.quant_parts(t)
        g = q.group_size
        s = scales[r0:r1].astype(np.float32).repeat(g, axis=1)
        if q.bits == 8:
            w = s * codes[r0:r1].astype(np.float32)
        else:
            b = codes[r0:r1]
            u = np.stack([b & 15, b >> 4], axis=-1).reshape(r1 - r0, q.cols).astype(np.float32)
            z = np.float32(8) if zeros is None else zeros[r0:r1].astype(np.float32).repeat(g, axis=1)
            w = s * (u - z)
        return w.reshape(t.shape) if rows is None else w

    def float32(self, name):
        """Any tensor as float32 in its shape: f32 as stored (a read-only view), f16 and bf16 widened exactly,
        i8/q4 dequantized."""
        t = self.tensor(name)
        if t.quant is not None:
            return self.dequantize(t)
        a = self.array(t)
        if t.dtype == "bf16":
            return bf16_to_f32(a)
        return a if t.dtype == "f32" else a.astype(np.float32)

    def tensor_sha256(self, name):
        """SHA-256 (hex) recomputed over the tensor's stored bytes."""
        t = self.tensor(name)
        return hashlib.sha256(memoryview(self._mapping())[t.offset:t.offset + t.length]).hexdigest()

    def check_tensor(self, name):
        """Raises DigestError naming the file and tensor if the stored bytes do not hash to the table's sha256."""
        t = self.tensor(name)
        got = self.tensor_sha256(t)
        if got != t.sha256:
            raise DigestError(self.path, "sha256 mismatch: the table says %s, the bytes hash to %s" % (t.sha256, got),
                              t.name)

    def check_all(self):
        """Names of the tensors whose digest does not match (empty when all do)."""
        return [t.name for t in self.tensors if self.tensor_sha256(t) != t.sha256]

    def section_bytes(self, name):
        """A section's decoded bytes, checked against its raw_length and sha256 (BundleError / DigestError
        otherwise). zstd sections need the `zstandard` package (pip install 'mm1bundle[zstd]')."""
        s = self.section(name)
        stored = bytes(memoryview(self._mapping())[s.offset:s.offset + s.length])
        if s.encoding == "raw":
            data = stored
        else:
            data = _zstd_decode(self.path, s, stored)
        got = hashlib.sha256(data).hexdigest()
        if got != s.sha256:
            raise DigestError(self.path, "section '%s': sha256 of the decoded bytes is %s, the table says %s"
                              % (s.name, got, s.sha256))
        return data


def _zstd_decode(path, s, stored):
    try:
        import zstandard
    except ImportError:
        raise BundleError(path, "section '%s' is zstd-encoded and the 'zstandard' package is not installed "
                                "(pip install 'mm1bundle[zstd]' or pip install zstandard)" % s.name) from None
    what = "section '%s': " % s.name
    # A skippable frame would decode to nothing, so "one frame" means one Zstandard frame (bundle.md section 3).
    if stored[:4] != b"\x28\xb5\x2f\xfd":
        raise BundleError(path, "%sthe stored bytes do not start with a Zstandard frame (magic 28 B5 2F FD)" % what)
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as e:
        raise BundleError(path, "%snot a zstd frame: %s" % (what, e)) from None
    if declared != -1 and declared != s.raw_length:
        raise BundleError(path, "%sthe zstd frame declares %d bytes, raw_length is %d" % (what, declared,
                                                                                            s.raw_length))
    try:
        # max_output_size bounds a frame that declares no size; one that does was checked above. Trailing bytes
        # after the frame (a second frame included) are refused: a section is exactly one frame.
        data = zstandard.ZstdDecompressor().decompress(stored, max_output_size=s.raw_length,
                                                       allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise BundleError(path, "%szstd decoding failed (more bytes than raw_length %d, trailing data, or corrupt): "
                                "%s" % (what, s.raw_length, e)) from None
    if len(data) != s.raw_length:
        raise BundleError(path, "%sdecodes to %d bytes, raw_length is %d" % (what, len(data), s.raw_length))
    return data


def bf16_to_f32(a):
    """bfloat16 bit patterns (uint16) widened to float32, exactly (a bfloat16 is the upper half of a binary32)."""
    a = np.asarray(a)
    if a.dtype != np.uint16:
        raise TypeError("bf16_to_f32 expects uint16 bit patterns, not %s" % a.dtype)
    return (a.astype("<u4") << 16).view("<f4")


def open_bundle(path):
    """Opens and validates `path`; same as Bundle(path)."""
    return Bundle(path)
