#!/usr/bin/env python3
"""Re-check the committed fixtures with numpy only (no torch, no transformers).

For every fixture under fixtures/:
  * safetensors layouts (llava, hf_causal_lm, honeybee, openclip): parse the files with a tiny
    pure-numpy safetensors reader, map the source keys to canonical names (formats/canonical.md),
    and check that the set of canonical names, their shapes and their f32 / f16 / bf16 SHA-256
    digests equal expected.json.
  * axlearn: check the `index` file against every `gda/<path>/.zarray`, that every chunk file the
    chunk grid needs is present, and that the index covers every canonical tensor of expected.json
    (through the mapping of formats/layouts/axlearn.md); then decode every chunk with the small
    pure-Python zstd decoder below (RFC 8878: raw/RLE/compressed blocks, Huffman literals, FSE
    sequences; no dictionaries), re-assemble the arrays, map them to canonical names and compare
    the digests with expected.json.

The mapping here is written from formats/canonical.md and is independent of the generator's,
which derives the canonical tensors from the in-memory torch modules instead of the file keys.

Usage: python3 scripts/check_fixtures.py [FIXTURES_DIR]   (default: fixtures/ of this repo)
Exit status is non-zero on any mismatch.  The last line is `N passed, M failed`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")

# ----------------------------------------------------------------------------------------------
# dtype helpers
# ----------------------------------------------------------------------------------------------


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (no NaN/Inf expected)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def digests(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {
        "sha256_f32": hashlib.sha256(a.astype("<f4").tobytes()).hexdigest(),
        "sha256_f16": hashlib.sha256(a.astype("<f2").tobytes()).hexdigest(),
        "sha256_bf16": hashlib.sha256(f32_to_bf16_bits(a).astype("<u2").tobytes()).hexdigest(),
    }


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8),
              "I64": ("<i8", 8), "I32": ("<i4", 4), "U8": ("u1", 1)}


def read_safetensors(path: str) -> dict:
    """Returns {key: float32 ndarray} for a .safetensors file (header checked strictly)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short")
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        raise ValueError(f"{path}: header length out of range")
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    body = memoryview(data)[8 + hlen:]
    out = {}
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dt, size = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        n = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
        if end - start != n * size or end > len(body) or start > end:
            raise ValueError(f"{path}: bad offsets for {key}")
        spans.append((start, end))
        arr = np.frombuffer(body[start:end], dtype=dt).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = bf16_bits_to_f32(arr)
        out[key] = arr.astype(np.float32)
    spans.sort()
    pos = 0
    for s, e in spans:
        if s != pos:
            raise ValueError(f"{path}: hole or overlap in data section at {pos}")
        pos = e
    if pos != len(body):
        raise ValueError(f"{path}: trailing bytes in data section")
    return out


def read_hf_dir(d: str) -> dict:
    idx = os.path.join(d, "model.safetensors.index.json")
    sd = {}
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        for fn in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(d, fn))
            for k, v in part.items():
                if wm.get(k) != fn:
                    raise ValueError(f"{k} found in {fn} but index says {wm.get(k)}")
                sd[k] = v
        missing = set(wm) - set(sd)
        if missing:
            raise ValueError(f"index lists missing keys {sorted(missing)[:5]}")
    else:
        names = [n for n in os.listdir(d) if n.endswith(".safetensors")]
        if len(names) != 1:
            raise ValueError(f"{d}: expected one .safetensors file, found {names}")
        sd = read_safetensors(os.path.join(d, names[0]))
    return sd


# ----------------------------------------------------------------------------------------------
# Source -> canonical mappings (numpy)
# ----------------------------------------------------------------------------------------------


class Mapper:
    def __init__(self, sd: dict):
        self.sd = sd
        self.used = set()
        self.out = {}

    def take(self, key):
        if key not in self.sd:
            raise KeyError(f"missing source key {key}")
        self.used.add(key)
        return self.sd[key]

    def has(self, key):
        return key in self.sd

    def put(self, name, arr):
        if name in self.out:
            raise ValueError(f"duplicate canonical {name}")
        self.out[name] = np.ascontiguousarray(arr, dtype=np.float32)

    def finish(self):
        unused = sorted(set(self.sd) - self.used)
        if unused:
            raise ValueError(f"unmapped source keys: {unused[:8]} ({len(unused)})")
        return self.out


def _layer_indices(sd, prefix):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def map_hf_clip(m: Mapper, p: str):
    """HF CLIPVisionTransformer keys under prefix p (e.g. 'vision_tower.')."""
    m.put("vit.patch_embed.weight", m.take(p + "embeddings.patch_embedding.weight"))
    m.put("vit.class_embed", m.take(p + "embeddings.class_embedding"))
    m.put("vit.pos_embed", m.take(p + "embeddings.position_embedding.weight"))
    for s in ("weight", "bias"):
        m.put(f"vit.pre_norm.{s}", m.take(p + f"pre_layrnorm.{s}"))
        if m.has(p + f"post_layernorm.{s}"):
            m.put(f"vit.post_norm.{s}", m.take(p + f"post_layernorm.{s}"))
    for i in _layer_indices(m.sd, p + "encoder.layers."):
        q = p + f"encoder.layers.{i}."
        c = f"vit.blocks.{i}."
        for s in ("weight", "bias"):
            m.put(c + f"norm1.{s}", m.take(q + f"layer_norm1.{s}"))
            m.put(c + f"norm2.{s}", m.take(q + f"layer_norm2.{s}"))
            for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                m.put(c + f"attn.{a}.{s}", m.take(q + f"self_attn.{b}.{s}"))
            m.put(c + f"mlp.fc1.{s}", m.take(q + f"mlp.fc1.{s}"))
            m.put(c + f"mlp.fc2.{s}", m.take(q + f"mlp.fc2.{s}"))


def map_hf_decoder(m: Mapper, p: str, head_key):
    """Llama / Mixtral decoder under prefix p (e.g. 'language_model.model.'), any naming era."""
    m.put("llm.embed.weight", m.take(p + "embed_tokens.weight"))
    m.put("llm.norm.weight", m.take(p + "norm.weight"))
    if head_key is not None and m.has(head_key):
        m.put("llm.head.weight", m.take(head_key))
    for i in _layer_indices(m.sd, p + "layers."):
        q = p + f"layers.{i}."
        c = f"llm.layers.{i}."
        m.put(c + "attn_norm.weight", m.take(q + "input_layernorm.weight"))
        m.put(c + "mlp_norm.weight", m.take(q + "post_attention_layernorm.weight"))
        for a in ("q", "k", "v", "o"):
            m.put(c + f"attn.{a}.weight", m.take(q + f"self_attn.{a}_proj.weight"))
            if m.has(q + f"self_attn.{a}_proj.bias"):
                m.put(c + f"attn.{a}.bias", m.take(q + f"self_attn.{a}_proj.bias"))
        if m.has(q + "mlp.gate_proj.weight"):  # dense
            for a in ("gate", "up", "down"):
                m.put(c + f"mlp.{a}.weight", m.take(q + f"mlp.{a}_proj.weight"))
        elif m.has(q + "mlp.experts.gate_up_proj"):  # v5 fused experts
            gu = m.take(q + "mlp.experts.gate_up_proj")  # [E, 2I, H], gate rows first
            half = gu.shape[1] // 2
            m.put(c + "moe.router.weight", m.take(q + "mlp.gate.weight"))
            m.put(c + "moe.gate.weight", gu[:, :half, :])
            m.put(c + "moe.up.weight", gu[:, half:, :])
            m.put(c + "moe.down.weight", m.take(q + "mlp.experts.down_proj"))
        else:  # legacy per-expert (block_sparse_moe.* or mlp.*)
            base = q + ("block_sparse_moe." if m.has(q + "block_sparse_moe.gate.weight") else "mlp.")
            m.put(c + "moe.router.weight", m.take(base + "gate.weight"))
            experts = _layer_indices(m.sd, base + "experts.")
            for a, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                m.put(c + f"moe.{a}.weight",
                      np.stack([m.take(base + f"experts.{e}.{w}.weight") for e in experts]))


def map_llava(sd):
    m = Mapper(sd)
    if any(k.startswith("model.language_model.") for k in sd):  # v5 in-memory names
        vp, mp, lp, head = "model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.weight"
    else:  # save_pretrained (legacy LM names)
        vp, mp, lp, head = "vision_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.weight"
    if any(k.startswith(vp + "vision_model.") for k in sd):
        vp += "vision_model."
    map_hf_clip(m, vp)
    for s in ("weight", "bias"):
        m.put(f"conn.fc1.{s}", m.take(mp + f"linear_1.{s}"))
        m.put(f"conn.fc2.{s}", m.take(mp + f"linear_2.{s}"))
    map_hf_decoder(m, lp, head)
    return m.finish()


def map_causal_lm(sd):
    m = Mapper(sd)
    map_hf_decoder(m, "model.", "lm_head.weight")
    return m.finish()


def map_honeybee(sd):
    m = Mapper(sd)
    vp = "vision_model.vision_model." if any(k.startswith("vision_model.vision_model.") for k in sd) else "vision_model."
    map_hf_clip(m, vp)
    a = "abstractor."
    if m.has(a + "pos_emb"):
        pe = m.take(a + "pos_emb")
        m.put("conn.pos_embed", pe.reshape(pe.shape[-2], pe.shape[-1]))
    for s in ("weight", "bias"):
        if m.has(a + f"prenorm.{s}"):
            m.put(f"conn.prenorm.{s}", m.take(a + f"prenorm.{s}"))
    for stage, idx in (("s1", 0), ("s2", 2)):
        for b in _layer_indices(sd, a + f"net.{idx}.b"):
            src = a + f"net.{idx}.b{b}."
            dst = f"conn.{stage}.b{b - 1}."
            for cv, nm in (("conv1", "norm1"), ("conv2", "norm2"), ("conv3", "norm3"), ("downsample", "down_norm")):
                if not m.has(src + f"{cv}.conv.weight"):
                    continue
                m.put(dst + ("down" if cv == "downsample" else cv) + ".weight", m.take(src + f"{cv}.conv.weight"))
                for s in ("weight", "bias"):
                    m.put(dst + f"{nm}.{s}", m.take(src + f"{cv}.bn.{s}"))
            for fc in ("fc1", "fc2"):
                for s in ("weight", "bias"):
                    m.put(dst + f"se.{fc}.{s}", m.take(src + f"se.{fc}.{s}"))
    lin = sorted(int(k.split(".")[2]) for k in sd if k.startswith(a + "readout.") and k.endswith(".weight"))
    for j, li in enumerate(lin):
        for s in ("weight", "bias"):
            m.put(f"conn.readout.{j}.{s}", m.take(a + f"readout.{li}.{s}"))
    map_hf_decoder(m, "language_model.model.", "language_model.lm_head.weight")
    return m.finish()


def map_openclip(sd):
    m = Mapper(sd)
    p = "visual."
    m.put("vit.patch_embed.weight", m.take(p + "conv1.weight"))
    if m.has(p + "conv1.bias"):
        m.put("vit.patch_embed.bias", m.take(p + "conv1.bias"))
    m.put("vit.class_embed", m.take(p + "class_embedding"))
    m.put("vit.pos_embed", m.take(p + "positional_embedding"))
    for s in ("weight", "bias"):
        m.put(f"vit.pre_norm.{s}", m.take(p + f"ln_pre.{s}"))
        m.put(f"vit.post_norm.{s}", m.take(p + f"ln_post.{s}"))
    for i in _layer_indices(sd, p + "transformer.resblocks."):
        q = p + f"transformer.resblocks.{i}."
        c = f"vit.blocks.{i}."
        w = m.take(q + "attn.in_proj_weight")
        bb = m.take(q + "attn.in_proj_bias")
        e = w.shape[1]
        for j, a in enumerate("qkv"):
            m.put(c + f"attn.{a}.weight", w[j * e:(j + 1) * e])
            m.put(c + f"attn.{a}.bias", bb[j * e:(j + 1) * e])
        for s in ("weight", "bias"):
            m.put(c + f"attn.o.{s}", m.take(q + f"attn.out_proj.{s}"))
            m.put(c + f"norm1.{s}", m.take(q + f"ln_1.{s}"))
            m.put(c + f"norm2.{s}", m.take(q + f"ln_2.{s}"))
            m.put(c + f"mlp.fc1.{s}", m.take(q + f"mlp.c_fc.{s}"))
            m.put(c + f"mlp.fc2.{s}", m.take(q + f"mlp.c_proj.{s}"))
    if m.has(p + "proj"):
        m.put("vit.head.weight", m.take(p + "proj").T)
    return m.finish()


# ----------------------------------------------------------------------------------------------
# AXLearn (zarr v2 written by tensorstore)
# ----------------------------------------------------------------------------------------------


# ---- minimal pure-Python zstd decoder (RFC 8878), written for check_fixtures ----
LL_DEFAULT = [4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1,
              -1, -1, -1, -1]
ML_DEFAULT = [1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
              1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1]
OF_DEFAULT = [1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1]
LL_BASE = list(range(16)) + [16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                             16384, 32768, 65536]
LL_BITS = [0] * 16 + [1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
ML_BASE = [i + 3 for i in range(32)] + [35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027, 2051,
                                        4099, 8195, 16387, 32771, 65539]
ML_BITS = [0] * 32 + [1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]


class ZstdError(Exception):
    pass


class _BackBits:
    """Backward bit reader (zstd 'reverse' bitstreams: start marker in the last byte)."""

    def __init__(self, data: bytes):
        if not data or data[-1] == 0:
            raise ZstdError("bad bitstream end")
        self.v = int.from_bytes(data, "little")
        self.pos = self.v.bit_length() - 1  # bits left below the marker

    def read(self, n: int) -> int:
        if n == 0:
            return 0
        self.pos -= n
        if self.pos >= 0:
            return (self.v >> self.pos) & ((1 << n) - 1)
        return (self.v << -self.pos) & ((1 << n) - 1)

    def peek(self, n: int) -> int:
        p = self.pos - n
        return ((self.v >> p) if p >= 0 else (self.v << -p)) & ((1 << n) - 1)


def _fse_read_ncount(data: bytes, pos: int, max_al: int):
    """Reads an FSE table description (forward bits). Returns (norm, accuracy_log, new_pos)."""
    v = int.from_bytes(data[pos:pos + 512], "little")
    bit = 0

    def take(n):
        nonlocal bit
        r = (v >> bit) & ((1 << n) - 1)
        bit += n
        return r

    al = take(4) + 5
    if al > max_al:
        raise ZstdError("accuracy log too large")
    remaining = (1 << al) + 1
    threshold = 1 << al
    nb = al + 1
    norm = []
    while remaining > 1:
        mx = (2 * threshold - 1) - remaining
        low = (v >> bit) & (threshold - 1)
        if low < mx:
            count = low
            bit += nb - 1
        else:
            count = (v >> bit) & (2 * threshold - 1)
            if count >= threshold:
                count -= mx
            bit += nb
        count -= 1
        remaining -= abs(count)
        norm.append(count)
        if count == 0:
            while True:
                rep = take(2)
                norm.extend([0] * rep)
                if rep != 3:
                    break
        while remaining < threshold:
            nb -= 1
            threshold >>= 1
    if remaining != 1:
        raise ZstdError("bad FSE description")
    return norm, al, pos + (bit + 7) // 8


def _fse_table(norm, al):
    size = 1 << al
    sym = [0] * size
    high = size - 1
    nxt = []
    for s, c in enumerate(norm):
        if c == -1:
            sym[high] = s
            high -= 1
            nxt.append(1)
        else:
            nxt.append(c)
    step = (size >> 1) + (size >> 3) + 3
    p = 0
    for s, c in enumerate(norm):
        for _ in range(max(c, 0)):
            sym[p] = s
            p = (p + step) & (size - 1)
            while p > high:
                p = (p + step) & (size - 1)
    nbits = [0] * size
    base = [0] * size
    for st in range(size):
        s = sym[st]
        x = nxt[s]
        nxt[s] += 1
        nb = al - (x.bit_length() - 1)
        nbits[st] = nb
        base[st] = (x << nb) - size
    return (sym, nbits, base, al)


def _rle_table(symbol):
    return ([symbol], [0], [0], 0)


def _huf_table(weights):
    total = sum((1 << (w - 1)) for w in weights if w > 0)
    if total == 0:
        raise ZstdError("empty huffman weights")
    max_bits = total.bit_length()
    left = (1 << max_bits) - total
    if left & (left - 1):
        raise ZstdError("bad huffman weights")
    weights = list(weights) + [left.bit_length()]
    size = 1 << max_bits
    counts = [0] * (max_bits + 2)
    for w in weights:
        if w:
            counts[w] += 1
    start = [0] * (max_bits + 2)
    acc = 0
    for w in range(1, max_bits + 1):
        start[w] = acc
        acc += counts[w] << (w - 1)
    syms = [0] * size
    lens = [0] * size
    for s, w in enumerate(weights):
        if w:
            n = 1 << (w - 1)
            a = start[w]
            for i in range(a, a + n):
                syms[i] = s
                lens[i] = max_bits + 1 - w
            start[w] += n
    return (syms, lens, max_bits)


def _huf_read_table(data, pos):
    hb = data[pos]
    pos += 1
    if hb >= 128:
        n = hb - 127
        raw = data[pos:pos + (n + 1) // 2]
        weights = []
        for b in raw:
            weights += [b >> 4, b & 15]
        return _huf_table(weights[:n]), pos + (n + 1) // 2
    end = pos + hb
    norm, al, p2 = _fse_read_ncount(data[:end], pos, 6)
    sym, nbits, base, _ = _fse_table(norm, al)
    br = _BackBits(data[p2:end])
    s1 = br.read(al)
    s2 = br.read(al)
    weights = []
    while True:
        weights.append(sym[s1])
        s1 = base[s1] + br.read(nbits[s1])
        if br.pos < 0:
            weights.append(sym[s2])
            break
        weights.append(sym[s2])
        s2 = base[s2] + br.read(nbits[s2])
        if br.pos < 0:
            weights.append(sym[s1])
            break
        if len(weights) > 255:
            raise ZstdError("too many huffman weights")
    return _huf_table(weights), end


def _huf_decode_stream(table, data, n):
    syms, lens, mb = table
    br = _BackBits(data)
    out = bytearray()
    for _ in range(n):
        i = br.peek(mb)
        out.append(syms[i])
        br.pos -= lens[i]
    if br.pos != 0:
        raise ZstdError("huffman stream not fully consumed")
    return out


def _decode_literals(data, pos, st):
    b0 = data[pos]
    ltype, sf = b0 & 3, (b0 >> 2) & 3
    if ltype in (0, 1):
        if sf in (0, 2):
            regen, hl = b0 >> 3, 1
        elif sf == 1:
            regen, hl = (b0 >> 4) + (data[pos + 1] << 4), 2
        else:
            regen, hl = (b0 >> 4) + (data[pos + 1] << 4) + (data[pos + 2] << 12), 3
        pos += hl
        if ltype == 0:
            return bytes(data[pos:pos + regen]), pos + regen
        return bytes([data[pos]]) * regen, pos + 1
    hl = {0: 3, 1: 3, 2: 4, 3: 5}[sf]
    h = int.from_bytes(data[pos:pos + hl], "little")
    bits = {3: 10, 4: 14, 5: 18}[hl]
    regen = (h >> 4) & ((1 << bits) - 1)
    comp = (h >> (4 + bits)) & ((1 << bits) - 1)
    pos += hl
    end = pos + comp
    if ltype == 2:
        st["huf"], pos = _huf_read_table(data, pos)
    elif st.get("huf") is None:
        raise ZstdError("treeless literals without a previous table")
    table = st["huf"]
    if sf == 0:
        return bytes(_huf_decode_stream(table, data[pos:end], regen)), end
    s1, s2, s3 = (int.from_bytes(data[pos + 2 * i:pos + 2 * i + 2], "little") for i in range(3))
    p = pos + 6
    per = (regen + 3) // 4
    out = bytearray()
    for i, size in enumerate((s1, s2, s3, end - p - s1 - s2 - s3)):
        out += _huf_decode_stream(table, data[p:p + size], per if i < 3 else regen - 3 * per)
        p += size
    return bytes(out), end


def _decode_block(data, out, st):
    lits, pos = _decode_literals(data, 0, st)
    b0 = data[pos]
    if b0 == 0:
        out += lits
        return
    if b0 < 128:
        nseq, pos = b0, pos + 1
    elif b0 < 255:
        nseq, pos = ((b0 - 128) << 8) + data[pos + 1], pos + 2
    else:
        nseq, pos = data[pos + 1] + (data[pos + 2] << 8) + 0x7F00, pos + 3
    modes = data[pos]
    pos += 1
    tables = []
    for key, shift, default, dal, max_al in (("ll", 6, LL_DEFAULT, 6, 9), ("of", 4, OF_DEFAULT, 5, 8),
                                             ("ml", 2, ML_DEFAULT, 6, 9)):
        mode = (modes >> shift) & 3
        if mode == 0:
            t = _fse_table(default, dal)
        elif mode == 1:
            t = _rle_table(data[pos])
            pos += 1
        elif mode == 2:
            norm, al, pos = _fse_read_ncount(data, pos, max_al)
            t = _fse_table(norm, al)
        else:
            t = st.get(key)
            if t is None:
                raise ZstdError("repeat mode without a previous table")
        st[key] = t
        tables.append(t)
    ll_t, of_t, ml_t = tables
    br = _BackBits(data[pos:])
    s_ll = br.read(ll_t[3])
    s_of = br.read(of_t[3])
    s_ml = br.read(ml_t[3])
    rep = st["rep"]
    lp = 0
    for n in range(nseq):
        of_code, ll_code, ml_code = of_t[0][s_of], ll_t[0][s_ll], ml_t[0][s_ml]
        ov = (1 << of_code) + br.read(of_code)
        ml = ML_BASE[ml_code] + br.read(ML_BITS[ml_code])
        ll = LL_BASE[ll_code] + br.read(LL_BITS[ll_code])
        if ov > 3:
            off = ov - 3
            rep[:] = [off, rep[0], rep[1]]
        else:
            if ll == 0:
                ov += 1
            if ov == 1:
                off = rep[0]
            elif ov == 2:
                off = rep[1]
                rep[:] = [off, rep[0], rep[2]]
            elif ov == 3:
                off = rep[2]
                rep[:] = [off, rep[0], rep[1]]
            else:
                off = rep[0] - 1
                rep[:] = [off, rep[0], rep[1]]
        out += lits[lp:lp + ll]
        lp += ll
        if off > len(out) or off <= 0:
            raise ZstdError("offset out of range")
        if off >= ml:
            s = len(out) - off
            out += out[s:s + ml]
        else:
            for _ in range(ml):
                out.append(out[-off])
        if n != nseq - 1:
            s_ll = ll_t[2][s_ll] + br.read(ll_t[1][s_ll])
            s_ml = ml_t[2][s_ml] + br.read(ml_t[1][s_ml])
            s_of = of_t[2][s_of] + br.read(of_t[1][s_of])
    if br.pos != 0:
        raise ZstdError("sequence bitstream not fully consumed")
    out += lits[lp:]


def zstd_decompress(frame: bytes) -> bytes:
    if frame[:4] != b"\x28\xb5\x2f\xfd":
        raise ZstdError("not a zstd frame")
    fhd = frame[4]
    fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if dict_flag:
        raise ZstdError("dictionaries not supported")
    pos = 5 + (0 if single else 1)
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    fcs = int.from_bytes(frame[pos:pos + fcs_len], "little") + (256 if fcs_len == 2 else 0) if fcs_len else None
    pos += fcs_len
    out = bytearray()
    st = {"rep": [1, 4, 8]}
    while True:
        bh = int.from_bytes(frame[pos:pos + 3], "little")
        pos += 3
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 0:
            out += frame[pos:pos + bsize]
            pos += bsize
        elif btype == 1:
            out += frame[pos:pos + 1] * bsize
            pos += 1
        elif btype == 2:
            _decode_block(frame[pos:pos + bsize], out, st)
            pos += bsize
        else:
            raise ZstdError("reserved block type")
        if last:
            break
    if fcs is not None and len(out) != fcs:
        raise ZstdError("frame content size mismatch")
    return bytes(out)


_ZARR_DT = {"bfloat16": ("<u2", True), "<f4": ("<f4", False), "<f2": ("<f2", False),
            "<u4": ("<u4", False), "<i4": ("<i4", False)}
_INDEX_DT = {"bfloat16": "bfloat16", "float32": "<f4", "float16": "<f2", "uint32": "<u4", "int32": "<i4"}


def read_zarr(d: str, meta: dict):
    """Returns the array as float32 (or its native integer type)."""
    shape, chunks = meta["shape"], meta["chunks"]
    dt, is_bf16 = _ZARR_DT[meta["dtype"]]
    sep = meta.get("dimension_separator", ".")
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    full = np.zeros([g * c for g, c in zip(grid, chunks)], dtype=dt)
    for cidx in np.ndindex(*grid) if grid else [()]:
        name = sep.join(str(i) for i in cidx) if cidx else "0"
        raw = zstd_decompress(open(os.path.join(d, name), "rb").read())
        block = np.frombuffer(raw, dtype=dt).reshape(chunks)
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(cidx, chunks))
        full[sl] = block
    arr = full[tuple(slice(0, s) for s in shape)]
    if is_bf16:
        return bf16_bits_to_f32(arr)
    return arr.astype(np.float32) if dt in ("<f4", "<f2") else arr


def interleaved_to_half(w: np.ndarray, axis: int) -> np.ndarray:
    """AXLearn RoFormer (pairs 2i, 2i+1) -> half rotation (pairs i, i + Dh/2) along axis."""
    w = np.moveaxis(w, axis, -1)
    w = np.concatenate([w[..., 0::2], w[..., 1::2]], axis=-1)
    return np.moveaxis(w, -1, axis)


def map_axlearn(arrays: dict, cfg: dict) -> dict:
    """AXLearn model/... paths -> canonical names, per formats/layouts/axlearn.md."""
    out = {}
    used = set()

    def take(k):
        used.add(k)
        return arrays[k]

    def has(k):
        return k in arrays

    V = "model/vision_encoder/image_encoder/"
    vis = cfg["vision"]
    E, nh = vis["hidden_size"], vis["num_heads"]
    out["vit.patch_embed.weight"] = take(V + "visual_embed/convert_to_sequence/conv/weight").transpose(3, 2, 0, 1)
    if has(V + "visual_embed/convert_to_sequence/conv/bias"):
        out["vit.patch_embed.bias"] = take(V + "visual_embed/convert_to_sequence/conv/bias")
    out["vit.class_embed"] = take(V + "cls_token").reshape(E)
    pe = take(V + "encoder_1d/pos_emb/weight")
    out["vit.pos_embed"] = pe.reshape(pe.shape[1], E)
    for s, t in (("weight", "scale"), ("bias", "bias")):
        out[f"vit.pre_norm.{s}"] = take(V + f"encoder_1d/input_norm/{t}")
        out[f"vit.post_norm.{s}"] = take(V + f"encoder_1d/output_norm/{t}")
    T = V + "encoder_1d/transformer/repeat/layer/"
    for i in range(vis["num_layers"]):
        c = f"vit.blocks.{i}."
        for s, t in (("weight", "scale"), ("bias", "bias")):
            out[c + f"norm1.{s}"] = take(T + f"self_attention/norm/{t}")[i]
            out[c + f"norm2.{s}"] = take(T + f"feed_forward/norm/{t}")[i]
        for a in "qkv":
            w = take(T + f"self_attention/attention/i_proj/{a}_proj/weight")[i]  # [E, N, Dh]
            out[c + f"attn.{a}.weight"] = w.reshape(E, -1).T
            out[c + f"attn.{a}.bias"] = take(T + f"self_attention/attention/i_proj/{a}_proj/bias")[i].reshape(-1)
        out[c + "attn.o.weight"] = take(T + "self_attention/attention/o_proj/weight")[i].reshape(E, -1)
        out[c + "attn.o.bias"] = take(T + "self_attention/attention/o_proj/bias")[i]
        for j in (1, 2):
            out[c + f"mlp.fc{j}.weight"] = take(T + f"feed_forward/linear{j}/weight")[i].T
            out[c + f"mlp.fc{j}.bias"] = take(T + f"feed_forward/linear{j}/bias")[i]

    C = "model/vision_encoder/connector/"
    con = cfg["connector"]
    if has(C + "pos_emb/weight"):
        pe = take(C + "pos_emb/weight")
        out["conn.pos_embed"] = pe.reshape(pe.shape[1], pe.shape[2])
    for st in ("s1", "s2"):
        for b in range(con["depth"]):
            p, c = C + f"{st}/b{b}/", f"conn.{st}.b{b}."
            for cv in ("conv1", "conv2", "conv3", "down"):
                if has(p + f"{cv}/weight"):
                    out[c + f"{cv}.weight"] = take(p + f"{cv}/weight").transpose(3, 2, 0, 1)
            for nm in ("norm1", "norm2", "norm3", "down_norm"):
                if has(p + f"{nm}/scale"):
                    out[c + f"{nm}.weight"] = take(p + f"{nm}/scale")
                    out[c + f"{nm}.bias"] = take(p + f"{nm}/bias")
            for fc in ("fc1", "fc2"):
                out[c + f"se.{fc}.weight"] = take(p + f"se/{fc}/weight").transpose(3, 2, 0, 1)
                out[c + f"se.{fc}.bias"] = take(p + f"se/{fc}/bias")
    for k in range(con["mlp_depth"]):
        out[f"conn.readout.{k}.weight"] = take(C + f"readout/linear{k}/weight").T
        out[f"conn.readout.{k}.bias"] = take(C + f"readout/linear{k}/bias")

    D = "model/decoder/"
    llm = cfg["llm"]
    nq, nkv, dh = llm["num_heads"], llm["num_kv_heads"], llm["head_dim"]
    out["llm.embed.weight"] = take(D + "emb/token_emb/weight")
    out["llm.norm.weight"] = take(D + "output_norm/scale")
    if has(D + "lm_head/weight"):
        out["llm.head.weight"] = take(D + "lm_head/weight")
    moe_layers = set(llm["moe"]["layers"]) if llm.get("moe") else set()
    period = 2 if moe_layers else 1
    for i in range(llm["num_layers"]):
        r, k = divmod(i, period)
        L = D + "transformer/repeat/layer/" + (f"layer{k}/" if period > 1 else "")
        c = f"llm.layers.{i}."
        out[c + "attn_norm.weight"] = take(L + "self_attention/norm/scale")[r]
        out[c + "mlp_norm.weight"] = take(L + "feed_forward/norm/scale")[r]
        qkv = take(L + "self_attention/attention/i_proj/i_proj/qkv_proj/weight")[r]  # [D, nq+2nkv, dh]
        q, kk, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
        out[c + "attn.q.weight"] = interleaved_to_half(q, 2).reshape(q.shape[0], -1).T
        out[c + "attn.k.weight"] = interleaved_to_half(kk, 2).reshape(kk.shape[0], -1).T
        out[c + "attn.v.weight"] = v.reshape(v.shape[0], -1).T
        o = take(L + "self_attention/attention/o_proj/weight")[r]  # [D, nq, dh]
        out[c + "attn.o.weight"] = o.reshape(o.shape[0], -1)
        if i in moe_layers:
            out[c + "moe.router.weight"] = take(L + "feed_forward/gate_weight")[r].T
            out[c + "moe.gate.weight"] = take(L + "feed_forward/wi_0_weight")[r].transpose(0, 2, 1)
            out[c + "moe.up.weight"] = take(L + "feed_forward/wi_1_weight")[r].transpose(0, 2, 1)
            out[c + "moe.down.weight"] = take(L + "feed_forward/wo_weight")[r].transpose(0, 2, 1)
        else:
            out[c + "mlp.gate.weight"] = take(L + "feed_forward/linear1_0/weight")[r].T
            out[c + "mlp.up.weight"] = take(L + "feed_forward/linear1_1/weight")[r].T
            out[c + "mlp.down.weight"] = take(L + "feed_forward/linear2/weight")[r].T
    unused = sorted(k for k in arrays if k.startswith("model/") and k not in used)
    if unused:
        raise ValueError(f"unmapped AXLearn paths: {unused[:8]}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _zarray_files_ok(d: str, meta: dict) -> list:
    errs = []
    grid = [math.ceil(s / c) for s, c in zip(meta["shape"], meta["chunks"])]
    sep = meta.get("dimension_separator", ".")
    for cidx in (np.ndindex(*grid) if grid else [()]):
        name = sep.join(str(i) for i in cidx) if cidx else "0"
        if not os.path.isfile(os.path.join(d, name)):
            errs.append(f"missing chunk {d}/{name}")
    return errs


def check_axlearn(fx_dir: str, expected: dict, report):
    ck = os.path.join(fx_dir, "checkpoints")
    steps = sorted(n for n in os.listdir(ck) if re.fullmatch(r"step_\d{8}", n))
    report(bool(steps), "checkpoint step directory present")
    step_dir = os.path.join(ck, steps[-1])
    with open(os.path.join(step_dir, "index")) as f:
        index = json.load(f)
    entries = {}
    step = None
    for path, val in index:
        if path == "step":
            step = val
        elif isinstance(val, dict):
            entries[path] = val
    report(step == int(steps[-1][5:]), f"index step {step} matches directory {steps[-1]}")
    with open(os.path.join(fx_dir, "mm1pack_config.json")) as f:
        cfg = json.load(f)
    arrays = {}
    errs = []
    for path, val in entries.items():
        d = os.path.join(step_dir, "gda", path)
        with open(os.path.join(d, ".zarray")) as f:
            meta = json.load(f)
        shape = tuple(meta["shape"])
        if val["shape"] != str(shape):
            errs.append(f"{path}: index shape {val['shape']} vs .zarray {shape}")
        if _INDEX_DT[val["dtype"]] != meta["dtype"]:
            errs.append(f"{path}: index dtype {val['dtype']} vs .zarray {meta['dtype']}")
        if meta.get("zarr_format") != 2 or meta.get("compressor", {}).get("id") != "zstd":
            errs.append(f"{path}: not zarr v2 + zstd")
        errs += _zarray_files_ok(d, meta)
        try:
            arrays[path] = read_zarr(d, meta)
        except (ZstdError, ValueError, IndexError) as e:
            errs.append(f"{path}: cannot decode: {e}")
    report(not errs, f"index/.zarray/chunk files consistent ({len(entries)} arrays)" + ("" if not errs else ": " + "; ".join(errs[:5])))
    multi = sum(1 for p in entries if len(os.listdir(os.path.join(step_dir, "gda", p))) > 2)
    report(multi > 0, f"{multi} arrays have several chunk files")
    canon = map_axlearn(arrays, cfg)
    compare(canon, expected, report)


# ----------------------------------------------------------------------------------------------


def compare(canon: dict, expected: dict, report):
    exp = expected["tensors"]
    report(sorted(canon) == sorted(exp),
           f"canonical names match expected.json ({len(canon)} tensors)"
           + ("" if sorted(canon) == sorted(exp) else f": extra {sorted(set(canon) - set(exp))[:5]} missing {sorted(set(exp) - set(canon))[:5]}"))
    bad = []
    for name in sorted(set(canon) & set(exp)):
        a = canon[name]
        if list(a.shape) != exp[name]["shape"]:
            bad.append(f"{name}: shape {list(a.shape)} vs {exp[name]['shape']}")
            continue
        d = digests(a)
        for key in ("sha256_f32", "sha256_f16", "sha256_bf16"):
            if d[key] != exp[name][key]:
                bad.append(f"{name}: {key}")
    report(not bad, "shapes and f32/f16/bf16 digests reproduce" + ("" if not bad else ": " + "; ".join(bad[:6])))


MAPPERS = {"llava": map_llava, "hf_causal_lm": map_causal_lm, "honeybee": map_honeybee}


def main() -> int:
    passed = failed = 0

    def report(ok, msg):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"  ok   {msg}")
        else:
            failed += 1
            print(f"  FAIL {msg}")

    fixtures = sys.argv[1] if len(sys.argv) > 1 else FIXTURES
    names = sorted(n for n in os.listdir(fixtures) if os.path.isfile(os.path.join(fixtures, n, "expected.json")))
    if not names:
        report(False, "no fixtures found")
    for name in names:
        d = os.path.join(fixtures, name)
        print(f"{name}:")
        try:
            with open(os.path.join(d, "expected.json")) as f:
                expected = json.load(f)
            layout = expected["layout"]
            if layout == "axlearn":
                check_axlearn(d, expected, report)
                continue
            if layout == "openclip":
                sd = read_safetensors(os.path.join(d, "open_clip_model.safetensors"))
                canon = map_openclip(sd)
            else:
                sd = read_hf_dir(d)
                canon = MAPPERS[layout](sd)
            report(True, f"parsed {len(sd)} source tensors, every key mapped")
            compare(canon, expected, report)
        except Exception as e:  # noqa: BLE001 - any error is a failed check
            report(False, f"{type(e).__name__}: {e}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
