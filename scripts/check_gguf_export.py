#!/usr/bin/env python3
"""Checks `mm1pack export --format gguf` against formats/gguf-export.md, independently of the Swift code.

For each fixture with a language model: convert it, quantize it with recipes/gguf-q4_0.json and gguf-q8_0.json
(method rtn), export every bundle, and read the GGUF back with the `gguf` package (PyPI, llama.cpp's gguf-py).
Checks, bit for bit:
  - every metadata key, its GGUF type and value, against what this script derives from the bundle's config and the
    fixture's tokenizer.json (no key missing, none extra);
  - every tensor's name, order, dims (ggml order), ggml type, and 32-byte aligned, packed offsets;
  - values: gguf's own dequantization (gguf.quants) of every tensor equals the bundle's values, decoded here from
    the bundle bytes by formats/bundle.md §2.2 (with the rope row permutation of q/k applied);
  - raw blocks: every Q8_0 / Q4_0 / Q4_1 tensor's bytes equal blocks rebuilt here from the bundle's int codes and
    f16 scales per the GGUF block layouts (f16 d first, Q4 low nibble = element j, high nibble = element j + 16);
  - reference quantizer: for bundles quantized with rtn, gguf.quants.quantize (a bit-exact port of ggml's
    quantize_row_q8_0_ref / quantize_row_q4_0_ref) of the bundle's dequantized values gives the same bytes;
  - refusals: interleaved dense/MoE models, group sizes without a GGUF type, C-Abstractor vision export fail with
    a message naming the problem, and leave no output file;
  - --requantize f32/f16: values equal the bundle's dequantized values (f32) or their f16 rounding.

Usage: scripts/check_gguf_export.py [--mm1pack .build/debug/mm1pack] [--work DIR]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import hashlib

import numpy as np
import gguf
from gguf import GGUFReader, GGMLQuantizationType as T, GGUFValueType as V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []
counts = {"files": 0, "keys": 0, "tensors": 0, "values": 0, "blocks": 0, "ref_blocks": 0, "refusals": 0, "forward": 0}


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


# ---------------------------------------------------------------- bundle decoding (formats/bundle.md)

class Bundle:
    def __init__(self, path):
        self.path = path
        self.buf = open(path, "rb").read()
        assert self.buf[:8] == b"MM1PACK\0", path
        hl, self.data_offset = struct.unpack_from("<QQ", self.buf, 16)
        self.header_bytes = self.buf[96:96 + hl]
        assert hashlib.sha256(self.header_bytes).digest() == self.buf[40:72]
        self.header = json.loads(self.header_bytes)
        self.config = self.header["config"]
        self.tensors = {t["name"]: t for t in self.header["tensors"]}

    def raw(self, name):
        t = self.tensors[name]
        o = self.data_offset + t["offset"]
        return self.buf[o:o + t["length"]]

    def quant_parts(self, name):
        """(R, K, G, codes [R,K] as int (i8: signed, q4: unsigned nibble), scales f16 [R,K/G], zeros or None)."""
        t = self.tensors[name]
        q = t["quant"]
        buf = self.raw(name)
        K = t["shape"][-1]
        R = int(np.prod(t["shape"][:-1]))
        G = q["group_size"]
        co, so = q["codes"]["offset"], q["scales"]["offset"]
        if t["dtype"] == "i8":
            codes = np.frombuffer(buf, np.int8, R * K, co).reshape(R, K)
        else:
            b = np.frombuffer(buf, np.uint8, R * K // 2, co)
            codes = np.stack([b & 15, b >> 4], axis=-1).reshape(R, K)
        scales = np.frombuffer(buf, "<f2", R * (K // G), so).reshape(R, K // G)
        zeros = np.frombuffer(buf, "<f2", R * (K // G), q["zeros"]["offset"]).reshape(R, K // G) if "zeros" in q else None
        return R, K, G, codes, scales, zeros

    def values(self, name):
        """f32 [R, K] (or the 1-D vector) exactly as formats/bundle.md §2.2 defines them."""
        t = self.tensors[name]
        dt = t["dtype"]
        buf = self.raw(name)
        shape = t["shape"]
        if dt == "f32":
            return np.frombuffer(buf, "<f4").reshape(shape).copy()
        if dt == "f16":
            return np.frombuffer(buf, "<f2").astype(np.float32).reshape(shape)
        if dt == "bf16":
            return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        R, K, G, codes, scales, zeros = self.quant_parts(name)
        s = scales.astype(np.float32).repeat(G, axis=1)
        if dt == "i8":
            w = s * codes.astype(np.float32)
        elif zeros is None:
            w = s * (codes.astype(np.float32) - np.float32(8))
        else:
            w = s * (codes.astype(np.float32) - zeros.astype(np.float32).repeat(G, axis=1))
        return w.reshape(shape)


# ---------------------------------------------------------------- the mapping, re-derived from the spec

def rope_perm(heads, dh):
    """perm[new] = old: half-rotation dims i and Dh/2 + i become adjacent pair 2i, 2i + 1 within each head."""
    half = dh // 2
    return np.arange(heads * dh).reshape(heads, 2, half).transpose(0, 2, 1).reshape(-1)


def llm_table(cfg):
    """[(canonical, gguf name, row permutation or None, force F32)] in file order."""
    l = cfg["llm"]
    nq, nkv, dh = l["num_heads"], l["num_kv_heads"], l["head_dim"]
    qp, kp = rope_perm(nq, dh), rope_perm(nkv, dh)
    moe = set((l.get("moe") or {}).get("layers", []))
    out = [("llm.embed.weight", "token_embd.weight", None, False)]
    for i in range(l["num_layers"]):
        p, g = f"llm.layers.{i}.", f"blk.{i}."
        out += [(p + "attn_norm.weight", g + "attn_norm.weight", None, True),
                (p + "attn.q.weight", g + "attn_q.weight", qp, False),
                (p + "attn.k.weight", g + "attn_k.weight", kp, False),
                (p + "attn.v.weight", g + "attn_v.weight", None, False),
                (p + "attn.o.weight", g + "attn_output.weight", None, False)]
        if l.get("attention_bias"):
            out += [(p + "attn.q.bias", g + "attn_q.bias", qp, True), (p + "attn.k.bias", g + "attn_k.bias", kp, True),
                    (p + "attn.v.bias", g + "attn_v.bias", None, True)]
        if l.get("attention_out_bias"):
            out += [(p + "attn.o.bias", g + "attn_output.bias", None, True)]
        out += [(p + "mlp_norm.weight", g + "ffn_norm.weight", None, True)]
        if i in moe:
            out += [(p + "moe.router.weight", g + "ffn_gate_inp.weight", None, True),
                    (p + "moe.gate.weight", g + "ffn_gate_exps.weight", None, False),
                    (p + "moe.down.weight", g + "ffn_down_exps.weight", None, False),
                    (p + "moe.up.weight", g + "ffn_up_exps.weight", None, False)]
        else:
            out += [(p + "mlp.gate.weight", g + "ffn_gate.weight", None, False),
                    (p + "mlp.down.weight", g + "ffn_down.weight", None, False),
                    (p + "mlp.up.weight", g + "ffn_up.weight", None, False)]
    out.append(("llm.norm.weight", "output_norm.weight", None, True))
    if not l.get("tie_embeddings"):
        out.append(("llm.head.weight", "output.weight", None, False))
    return out


def vision_table(cfg):
    v = cfg["vision"]
    L = v["num_layers"]
    f = v.get("feature_layer", -1)
    used = L + 1 + f if f < 0 else f
    out = [("vit.patch_embed.weight", "v.patch_embd.weight", None, False)]
    if v.get("patch_bias"):
        out.append(("vit.patch_embed.bias", "v.patch_embd.bias", None, True))
    if v.get("class_token"):
        out.append(("vit.class_embed", "v.class_embd", None, True))
    out.append(("vit.pos_embed", "v.position_embd.weight", None, True))
    if v.get("pre_norm"):
        out += [("vit.pre_norm.weight", "v.pre_ln.weight", None, True), ("vit.pre_norm.bias", "v.pre_ln.bias", None, True)]
    pairs = [("norm1", "ln1"), ("attn.q", "attn_q"), ("attn.k", "attn_k"), ("attn.v", "attn_v"), ("attn.o", "attn_out"),
             ("norm2", "ln2"), ("mlp.fc1", "ffn_up"), ("mlp.fc2", "ffn_down")]
    for i in range(used):
        for c, g in pairs:
            for s in ("weight", "bias"):
                out.append((f"vit.blocks.{i}.{c}.{s}", f"v.blk.{i}.{g}.{s}", None, s == "bias" or c.startswith("norm")))
    if v.get("post_norm_features"):
        out += [("vit.post_norm.weight", "v.post_ln.weight", None, True), ("vit.post_norm.bias", "v.post_ln.bias", None, True)]
    out += [("conn.fc1.weight", "mm.0.weight", None, False), ("conn.fc1.bias", "mm.0.bias", None, True),
            ("conn.fc2.weight", "mm.2.weight", None, False), ("conn.fc2.bias", "mm.2.bias", None, True)]
    return out, used


def expected_type(bundle, name, force_f32, requantize):
    t = bundle.tensors[name]
    dt = t["dtype"]
    if dt in ("f32", "f16", "bf16"):
        if force_f32:
            return T.F32, "widened" if dt != "f32" else "exact"
        return {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}[dt], "exact"
    R, K, G, codes, scales, zeros = bundle.quant_parts(name)
    if G % 32 == 0:
        if dt == "i8":
            return T.Q8_0, "exact"
        if zeros is None:
            return T.Q4_0, "exact"
        m = -(scales.astype(np.float32) * zeros.astype(np.float32))
        if np.all(np.isfinite(m)) and np.array_equal(m.astype(np.float16).astype(np.float32), m):
            return T.Q4_1, "exact"
    if requantize is None:
        return None, "refused"
    return {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[requantize], "requantized"


def rebuild_blocks(bundle, name, perm, gtype):
    """GGUF bytes built from the bundle's codes and scales by the GGUF block layouts (not by mm1pack's code)."""
    R, K, G, codes, scales, zeros = bundle.quant_parts(name)
    if perm is not None:
        codes, scales = codes[perm], scales[perm]
        zeros = zeros[perm] if zeros is not None else None
    nb = K // 32
    # one f16 scale per 32-element block: the scale of the group holding the block
    d = scales.repeat(G // 32, axis=1).reshape(R * nb, 1).view(np.uint8).reshape(R * nb, 2)
    c = codes.reshape(R * nb, 32)
    if gtype == T.Q8_0:
        return np.concatenate([d, c.astype(np.int8).view(np.uint8)], axis=1).tobytes()
    qs = (c[:, :16] | (c[:, 16:] << 4)).astype(np.uint8)
    if gtype == T.Q4_0:
        return np.concatenate([d, qs], axis=1).tobytes()
    m = -(scales.astype(np.float32) * zeros.astype(np.float32))
    m = np.where(m == 0, np.float32(0), m).astype("<f2").repeat(G // 32, axis=1).reshape(R * nb, 1).view(np.uint8).reshape(R * nb, 2)
    return np.concatenate([d, m, qs], axis=1).tobytes()


def gguf_values(t):
    """f32 values of a GGUF tensor in numpy (row-major, reversed ne) order, by gguf's own dequantization."""
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type == T.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    if t.tensor_type == T.F16:
        return np.asarray(t.data).view(np.float16).astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)


def check_tensors(label, r, bundle, table, requantize, reference_check):
    names = [t.name for t in r.tensors]
    rope = [t for t in r.tensors if t.name == "rope_freqs.weight"]
    exp_names = [g for _, g, _, _ in table]
    if names != ([t.name for t in rope] + exp_names):
        fail(f"{label}: tensor names/order {names} != expected {exp_names}")
        return
    pos = 0
    for t in r.tensors:
        if t.data_offset - r.data_offset != pos:
            fail(f"{label}: {t.name} at data offset {t.data_offset - r.data_offset}, expected packed {pos}")
        pos += (int(t.n_bytes) + 31) // 32 * 32
    by = {t.name: t for t in r.tensors}
    for canon, gname, perm, force in table:
        t = by[gname]
        counts["tensors"] += 1
        bt = bundle.tensors[canon]
        if list(int(x) for x in t.shape) != list(reversed(bt["shape"])):
            fail(f"{label}: {gname} dims {list(t.shape)} != reversed bundle shape {bt['shape']}")
            continue
        gt, kind = expected_type(bundle, canon, force, requantize)
        if t.tensor_type != gt:
            fail(f"{label}: {gname} type {t.tensor_type.name} != expected {gt and gt.name} ({canon} {bt['dtype']})")
            continue
        want = bundle.values(canon)
        if perm is not None:
            want = want[perm] if want.ndim == 1 else want.reshape(-1, want.shape[-1])[perm].reshape(want.shape)
        if kind == "requantized" and gt == T.F16:
            want = want.astype(np.float16).astype(np.float32)
        got = gguf_values(t)
        if kind == "requantized" and gt in (T.Q8_0, T.Q4_0):
            # lossy by request: the blocks must be ggml's reference rounding of the bundle's values
            ref = gguf.quants.quantize(want.reshape(-1, want.shape[-1]), gt).tobytes()
            if ref != bytes(np.asarray(t.data).tobytes()):
                fail(f"{label}: {gname} --requantize blocks differ from gguf.quants.quantize of the bundle values")
            counts["values"] += want.size
            continue
        if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32)):
            bad = np.argwhere(got.view(np.uint32) != want.astype(np.float32).view(np.uint32))[:3] if got.shape == want.shape else "shape"
            fail(f"{label}: {gname} values differ from the bundle's {canon} (first at {bad})")
            continue
        counts["values"] += want.size
        raw = bytes(np.asarray(t.data).tobytes())
        if gt in (T.Q8_0, T.Q4_0, T.Q4_1):
            if raw != rebuild_blocks(bundle, canon, perm, gt):
                fail(f"{label}: {gname} {gt.name} bytes differ from blocks rebuilt from the bundle's codes and scales")
            counts["blocks"] += len(raw) // {T.Q8_0: 34, T.Q4_0: 18, T.Q4_1: 20}[gt]
            if reference_check and gt in (T.Q8_0, T.Q4_0):
                ref = gguf.quants.quantize(want.reshape(-1, want.shape[-1]), gt).tobytes()
                if ref != raw:
                    n = sum(ref[i:i + 34] != raw[i:i + 34] for i in range(0, len(raw), 34))
                    fail(f"{label}: {gname} {gt.name} blocks differ from ggml's reference quantizer of the same values ({n} blocks)")
                counts["ref_blocks"] += len(raw) // {T.Q8_0: 34, T.Q4_0: 18}[gt]
        elif kind == "exact" and bt["dtype"] in ("f32", "f16", "bf16"):
            # stored bits unchanged (rows permuted for q/k)
            src = np.frombuffer(bundle.raw(canon), np.uint8)
            if perm is not None and len(bt["shape"]) > 1:
                src = src.reshape(len(perm), -1)[perm]
            if raw != src.tobytes():
                fail(f"{label}: {gname} bytes are not the bundle's stored bytes")


def field_value(f):
    v = f.contents()
    return v


def check_keys(label, r, want):
    got = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    if list(got) != list(want):
        fail(f"{label}: keys {list(got)}\n  != expected {list(want)}")
    for k, (vt, val) in want.items():
        if k not in got:
            continue
        f = got[k]
        counts["keys"] += 1
        types = list(f.types)
        if types != (vt if isinstance(vt, list) else [vt]):
            fail(f"{label}: key {k} has type {[x.name for x in types]}, expected {vt}")
            continue
        v = field_value(f)
        if types[0] == V.FLOAT32:
            ok = np.float32(v).tobytes() == np.float32(val).tobytes()
        elif types == [V.ARRAY, V.FLOAT32]:
            ok = np.array(v, np.float32).tobytes() == np.array(val, np.float32).tobytes()
        else:
            ok = v == val
        if not ok:
            fail(f"{label}: key {k} = {str(v)[:200]} != expected {str(val)[:200]}")


def tokenizer_keys(tok, l):
    V_ = l["vocab_size"]
    model = tok["model"]
    tokens = [None] * V_
    types = [5] * V_
    for s, i in model["vocab"].items():
        tokens[i] = s
        types[i] = 1
    for a in tok.get("added_tokens", []):
        tokens[a["id"]] = a["content"]
        types[a["id"]] = 3 if a.get("special") else 4
    unk = model.get("unk_token")
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    pre = tok["pre_tokenizer"]
    if pre["type"] == "ByteLevel":
        pre_name = "gpt-2"
    elif pre["pretokenizers"][0]["type"] == "Split":
        pre_name = "llama-bpe"
    else:
        pre_name = "smollm"
    k = {"tokenizer.ggml.model": (V.STRING, "gpt2"), "tokenizer.ggml.pre": (V.STRING, pre_name),
         "tokenizer.ggml.tokens": ([V.ARRAY, V.STRING], tokens), "tokenizer.ggml.token_type": ([V.ARRAY, V.INT32], types),
         "tokenizer.ggml.merges": ([V.ARRAY, V.STRING], merges)}
    if l.get("bos_token_id") is not None:
        k["tokenizer.ggml.bos_token_id"] = (V.UINT32, l["bos_token_id"])
    if l.get("eos_token_id") is not None:
        k["tokenizer.ggml.eos_token_id"] = (V.UINT32, l["eos_token_id"])
    if unk in model["vocab"]:
        k["tokenizer.ggml.unknown_token_id"] = (V.UINT32, model["vocab"][unk])
    pp = tok.get("post_processor") or {}
    single = pp.get("single", []) if pp.get("type") == "TemplateProcessing" else []
    k["tokenizer.ggml.add_bos_token"] = (V.BOOL, bool(single) and "SpecialToken" in single[0])
    k["tokenizer.ggml.add_eos_token"] = (V.BOOL, len(single) > 1 and "SpecialToken" in single[-1])
    return k


def expected_file_type(tensors):
    count = {}
    for t in tensors:
        if len(t.shape) >= 2:
            count[t.tensor_type] = count.get(t.tensor_type, 0) + int(np.prod(t.shape))
    top = max(sorted(count, key=int), key=lambda k: count[k])
    return {T.F32: 0, T.F16: 1, T.Q4_0: 2, T.Q4_1: 3, T.Q8_0: 7, T.BF16: 32}[top]


def llm_keys(bundle, name, r, tok, requantized, requantize):
    l = bundle.config["llm"]
    moe = l.get("moe")
    k = {"general.alignment": (V.UINT32, 32), "general.architecture": (V.STRING, "llama"),
         "general.type": (V.STRING, "model"), "general.name": (V.STRING, name),
         "llama.context_length": (V.UINT32, l.get("max_position_embeddings", 2048)),
         "llama.embedding_length": (V.UINT32, l["hidden_size"]), "llama.block_count": (V.UINT32, l["num_layers"]),
         "llama.feed_forward_length": (V.UINT32, moe["intermediate_size"] if moe else l["intermediate_size"]),
         "llama.attention.head_count": (V.UINT32, l["num_heads"]),
         "llama.attention.head_count_kv": (V.UINT32, l["num_kv_heads"]),
         "llama.attention.key_length": (V.UINT32, l["head_dim"]), "llama.attention.value_length": (V.UINT32, l["head_dim"]),
         "llama.rope.freq_base": (V.FLOAT32, l.get("rope_theta", 10000.0)),
         "llama.rope.dimension_count": (V.UINT32, l["head_dim"]),
         "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, l.get("rms_norm_eps", 1e-6)),
         "llama.vocab_size": (V.UINT32, l["vocab_size"])}
    if moe:
        k["llama.expert_count"] = (V.UINT32, moe["num_experts"])
        k["llama.expert_used_count"] = (V.UINT32, moe["top_k"])
    assert not l.get("rope_scaling"), "fixtures have no rope scaling"
    k["general.file_type"] = (V.UINT32, expected_file_type(r.tensors))
    if any(t.tensor_type in (T.Q8_0, T.Q4_0, T.Q4_1) for t in r.tensors):
        k["general.quantization_version"] = (V.UINT32, 2)
    if tok is not None:
        k.update(tokenizer_keys(tok, l))
    else:
        k["tokenizer.ggml.model"] = (V.STRING, "none")
    k.update(provenance_keys(bundle, requantized, requantize))
    return k


def provenance_keys(bundle, requantized, requantize):
    k = {"mm1pack.tool_version": (V.STRING, bundle.header["provenance"]["tool_version"]),
         "mm1pack.source_header_sha256": (V.STRING, hashlib.sha256(bundle.header_bytes).hexdigest())}
    if requantized:
        k["mm1pack.requantize"] = (V.STRING, requantize)
        k["mm1pack.requantized_tensors"] = ([V.ARRAY, V.STRING], requantized)
    return k


def vision_keys(bundle, name, r, used):
    v, c, ip = bundle.config["vision"], bundle.config["connector"], bundle.config["image_processor"]
    k = {"general.alignment": (V.UINT32, 32), "general.architecture": (V.STRING, "clip"),
         "general.type": (V.STRING, "clip-vision"), "general.name": (V.STRING, name),
         "clip.has_text_encoder": (V.BOOL, False), "clip.has_vision_encoder": (V.BOOL, True),
         "clip.has_llava_projector": (V.BOOL, True), "clip.projector_type": (V.STRING, "mlp"),
         "clip.use_gelu": (V.BOOL, v.get("activation") == "gelu"),
         "clip.vision.image_size": (V.UINT32, ip.get("image_size", v["image_size"])),
         "clip.vision.patch_size": (V.UINT32, v["patch_size"]),
         "clip.vision.embedding_length": (V.UINT32, v["hidden_size"]),
         "clip.vision.feed_forward_length": (V.UINT32, v["intermediate_size"]),
         "clip.vision.projection_dim": (V.UINT32, c["output_size"]),
         "clip.vision.block_count": (V.UINT32, used),
         "clip.vision.feature_layer": ([V.ARRAY, V.INT32], [used]),
         "clip.vision.attention.head_count": (V.UINT32, v["num_heads"]),
         "clip.vision.attention.layer_norm_epsilon": (V.FLOAT32, v.get("layer_norm_eps", 1e-5)),
         "clip.vision.image_mean": ([V.ARRAY, V.FLOAT32], ip["image_mean"]),
         "clip.vision.image_std": ([V.ARRAY, V.FLOAT32], ip["image_std"])}
    k["general.file_type"] = (V.UINT32, expected_file_type(r.tensors))
    if any(t.tensor_type in (T.Q8_0, T.Q4_0, T.Q4_1) for t in r.tensors):
        k["general.quantization_version"] = (V.UINT32, 2)
    k.update(provenance_keys(bundle, [], None))
    return k


# ---------------------------------------------------------------- forward pass from the GGUF alone

def forward_llama(r, ids):
    """Logits of a llama GGUF computed with llama.cpp's conventions, from the file alone: RMSNorm, rope on
    adjacent pairs (ggml rope mode 0, the reason q/k rows are permuted), grouped-query causal attention, SwiGLU, and
    for expert_count > 0 Mixtral routing (softmax, top-k, weights renormalized)."""
    kv = {k: f.contents() for k, f in r.fields.items()}
    W = {t.name: gguf_values(t).astype(np.float64) for t in r.tensors}
    D, L = kv["llama.embedding_length"], kv["llama.block_count"]
    nq, nkv = kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]
    dh, base = kv["llama.rope.dimension_count"], kv["llama.rope.freq_base"]
    eps = kv["llama.attention.layer_norm_rms_epsilon"]
    nx, k = kv.get("llama.expert_count", 0), kv.get("llama.expert_used_count", 0)
    T_ = len(ids)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, heads):
        x = x.reshape(T_, heads, dh // 2, 2)
        ang = np.arange(T_)[:, None] * base ** (-np.arange(0, dh, 2) / dh)[None, :]
        c, s_ = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * c - b * s_, a * s_ + b * c], -1).reshape(T_, heads, dh)

    silu = lambda v: v / (1 + np.exp(-v))
    x = W["token_embd.weight"][ids]
    for i in range(L):
        g = f"blk.{i}."
        h = norm(x, W[g + "attn_norm.weight"])
        q = rope(h @ W[g + "attn_q.weight"].T, nq)
        kk = rope(h @ W[g + "attn_k.weight"].T, nkv)
        v = (h @ W[g + "attn_v.weight"].T).reshape(T_, nkv, dh)
        rep = nq // nkv
        kk, v = np.repeat(kk, rep, axis=1), np.repeat(v, rep, axis=1)
        sc = np.einsum("thd,shd->hts", q, kk) / np.sqrt(dh)
        sc = sc + np.triu(np.full((T_, T_), -np.inf), 1)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", p, v).reshape(T_, nq * dh)
        x = x + o @ W[g + "attn_output.weight"].T
        h = norm(x, W[g + "ffn_norm.weight"])
        if nx:
            logits = h @ W[g + "ffn_gate_inp.weight"].T
            pr = np.exp(logits - logits.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            out = np.zeros_like(h)
            for t in range(T_):
                top = np.argsort(-pr[t], kind="stable")[:k]
                w = pr[t, top] / pr[t, top].sum()
                for e, we in zip(top, w):
                    y = silu(W[g + "ffn_gate_exps.weight"][e] @ h[t]) * (W[g + "ffn_up_exps.weight"][e] @ h[t])
                    out[t] += we * (W[g + "ffn_down_exps.weight"][e] @ y)
            x = x + out
        else:
            x = x + (silu(h @ W[g + "ffn_gate.weight"].T) * (h @ W[g + "ffn_up.weight"].T)) @ W[g + "ffn_down.weight"].T
    x = norm(x, W["output_norm.weight"])
    return x @ W.get("output.weight", W["token_embd.weight"]).T


def check_forward(gguf_path, fixture):
    """The unquantized export, run with llama.cpp's conventions, reproduces the fixture's reference logits
    (transformers, float32) on its text probe."""
    ref = os.path.join(fixture, "reference")
    probes = [json.loads(x) for x in open(os.path.join(ref, "probes.jsonl"))]
    for pr in probes:
        if pr.get("images"):
            continue
        want = np.load(os.path.join(ref, pr["id"] + ".logits.npy")).astype(np.float64)
        got = forward_llama(GGUFReader(gguf_path), pr["input_ids"])
        err = np.abs(got - want).max() / max(1e-6, np.abs(want).max())
        counts["forward"] += 1
        if not err < 1e-4:
            fail(f"{os.path.basename(gguf_path)}: probe {pr['id']}: logits from the GGUF (llama.cpp conventions) differ from the reference by {err:.2e} (relative max)")
        else:
            print(f"  forward {os.path.basename(gguf_path)} probe {pr['id']}: max rel. difference to reference logits {err:.1e}")


def forward_mmproj(r, pixels, cls_last=False):
    """Connector output of a clip/mmproj GGUF with projector type mlp, from the file alone: patch convolution,
    class token and position embeddings (transformers order: class token first, or with cls_last the order of
    llama.cpp's current llava graph), pre-LayerNorm, `clip.vision.feature_layer` blocks, post-LayerNorm if
    present, class token dropped, mm.0 → GELU (erf) → mm.2. `pixels` is [3, S, S], normalized."""
    from math import erf
    kv = {k: f.contents() for k, f in r.fields.items()}
    W = {t.name: gguf_values(t).astype(np.float64) for t in r.tensors}
    P, E = kv["clip.vision.patch_size"], kv["clip.vision.embedding_length"]
    H, eps = kv["clip.vision.attention.head_count"], kv["clip.vision.attention.layer_norm_epsilon"]
    nb = kv["clip.vision.feature_layer"][-1]
    act = (lambda v: v / (1 + np.exp(-1.702 * v))) if not kv["clip.use_gelu"] else np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    C_, S, _ = pixels.shape
    n = S // P
    x = pixels.reshape(C_, n, P, n, P).transpose(1, 3, 0, 2, 4).reshape(n * n, -1) @ W["v.patch_embd.weight"].reshape(E, -1).T
    if "v.patch_embd.bias" in W:
        x = x + W["v.patch_embd.bias"]
    cls = "v.class_embd" in W
    if cls:
        x = np.concatenate([x, W["v.class_embd"][None]]) if cls_last else np.concatenate([W["v.class_embd"][None], x])
    x = x + W["v.position_embd.weight"]

    def ln(x, g, b):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * g + b
    if "v.pre_ln.weight" in W:
        x = ln(x, W["v.pre_ln.weight"], W["v.pre_ln.bias"])
    for i in range(nb):
        g = f"v.blk.{i}."
        h = ln(x, W[g + "ln1.weight"], W[g + "ln1.bias"])
        q, k, v = [(h @ W[g + f"attn_{c}.weight"].T + W[g + f"attn_{c}.bias"]).reshape(-1, H, E // H) for c in "qkv"]
        sc = np.einsum("thd,shd->hts", q, k) / np.sqrt(E // H)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(-1, E) @ W[g + "attn_out.weight"].T + W[g + "attn_out.bias"]
        h = ln(x, W[g + "ln2.weight"], W[g + "ln2.bias"])
        x = x + act(h @ W[g + "ffn_up.weight"].T + W[g + "ffn_up.bias"]) @ W[g + "ffn_down.weight"].T + W[g + "ffn_down.bias"]
    if "v.post_ln.weight" in W:
        x = ln(x, W["v.post_ln.weight"], W["v.post_ln.bias"])
    if cls:
        x = x[1:]  # llama.cpp's "patches" rows 1..n (with cls_last this drops patch 0 and keeps the class token)
    return gelu(x @ W["mm.0.weight"].T + W["mm.0.bias"]) @ W["mm.2.weight"].T + W["mm.2.bias"]


def check_vision_forward(gguf_path, fixture):
    """The unquantized mmproj, run from the file alone, reproduces the fixture's reference connector output
    (transformers) from the reference pixel values."""
    ref = os.path.join(fixture, "reference")
    r = GGUFReader(gguf_path)
    for pr in (json.loads(x) for x in open(os.path.join(ref, "probes.jsonl"))):
        if not pr.get("images") or not os.path.exists(os.path.join(ref, pr["id"] + ".pixel_values.npy")):
            continue
        pv = np.load(os.path.join(ref, pr["id"] + ".pixel_values.npy")).astype(np.float64)
        want = np.load(os.path.join(ref, pr["id"] + ".connector.npy")).astype(np.float64)
        for j in range(pv.shape[0]):
            got = forward_mmproj(r, pv[j])
            err = np.abs(got - want[j]).max() / np.abs(want[j]).max()
            counts["forward"] += 1
            if not err < 1e-4:
                fail(f"{os.path.basename(gguf_path)}: probe {pr['id']} image {j}: connector output from the mmproj differs from the reference by {err:.2e}")
            else:
                print(f"  forward {os.path.basename(gguf_path)} probe {pr['id']} image {j}: max rel. difference to reference connector {err:.1e}")


# ---------------------------------------------------------------- driver

def run(cmd, expect_ok=True):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and p.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{p.stderr}")
    return p


def check_llm(mm1pack, bundle_path, gguf_path, fixture, requantize=None):
    args = [mm1pack, "export", bundle_path, "--format", "gguf", "-o", gguf_path, "-q"]
    if requantize:
        args += ["--requantize", requantize]
    run(args)
    b = Bundle(bundle_path)
    r = GGUFReader(gguf_path)
    counts["files"] += 1
    label = os.path.basename(gguf_path)
    table = llm_table(b.config)
    requantized = [c for c, _, _, f in table if expected_type(b, c, f, requantize)[1] == "requantized"]
    tokp = os.path.join(fixture, "tokenizer.json")
    tok = json.load(open(tokp)) if os.path.exists(tokp) else None
    name = os.path.splitext(os.path.basename(bundle_path))[0]
    check_keys(label, r, llm_keys(b, name, r, tok, requantized, requantize))
    ref = b.header["provenance"].get("quantize", {}).get("method") == "rtn"
    check_tensors(label, r, b, table, requantize, ref)


def check_vision(mm1pack, bundle_path, gguf_path):
    run([mm1pack, "export", bundle_path, "--format", "gguf", "--vision-out", gguf_path, "-q"])
    b = Bundle(bundle_path)
    r = GGUFReader(gguf_path)
    counts["files"] += 1
    label = os.path.basename(gguf_path)
    table, used = vision_table(b.config)
    check_keys(label, r, vision_keys(b, os.path.splitext(os.path.basename(bundle_path))[0], r, used))
    ref = b.header["provenance"].get("quantize", {}).get("method") == "rtn"
    check_tensors(label, r, b, table, None, ref)


def check_refused(mm1pack, bundle_path, out, args, must_contain):
    if os.path.exists(out):
        os.remove(out)
    p = run([mm1pack, "export", bundle_path, "--format", "gguf", "-q"] + args, expect_ok=False)
    counts["refusals"] += 1
    if p.returncode == 0:
        fail(f"export {args} of {bundle_path} succeeded; expected a refusal")
    elif not all(s in p.stderr for s in must_contain):
        fail(f"export {args} of {bundle_path}: message {p.stderr.strip()!r} lacks {must_contain}")
    leftovers = [f for f in os.listdir(os.path.dirname(out)) if os.path.basename(out) in f]
    if leftovers:
        fail(f"export {args} of {bundle_path} left {leftovers} behind")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mm1pack", default=os.path.join(ROOT, ".build/debug/mm1pack"))
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="gguf-check-")
    os.makedirs(work, exist_ok=True)
    try:
        check_all(a, work)
    finally:
        if a.work is None:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def check_all(a, work):
    m = a.mm1pack
    fixtures = ["llava-llama", "llama-text", "llava-mixtral", "honeybee-dense", "honeybee-moe", "axlearn-dense", "axlearn-moe"]
    for fx in fixtures:
        src = os.path.join(ROOT, "fixtures", fx)
        base = os.path.join(work, fx)
        run([m, "convert", src, "-o", base + ".mm1", "-q"])
        bundles = [base + ".mm1"]
        for recipe in ("gguf-q4_0", "gguf-q8_0"):
            run([m, "quantize", base + ".mm1", "-o", f"{base}-{recipe}.mm1", "--recipe",
                 os.path.join(ROOT, "recipes", recipe + ".json"), "--method", "rtn", "-q"])
            bundles.append(f"{base}-{recipe}.mm1")
        # int4 asym g32 (the built-in int4 recipe at group size 32): Q4_1 where exact, else refused
        run([m, "quantize", base + ".mm1", "-o", f"{base}-asym32.mm1", "--bits", "4", "--group-size", "32",
             "--method", "rtn", "-q"])
        bundles.append(f"{base}-asym32.mm1")
        cfg = Bundle(bundles[0]).config
        l = cfg["llm"]
        moe = l.get("moe")
        interleaved = moe and len(moe["layers"]) != l["num_layers"]
        for bp in bundles:
            out = bp[:-4] + ".gguf"
            if interleaved:
                check_refused(m, bp, out, ["-o", out], ["interleaves dense layers", "llama.expert_count"])
                continue
            b = Bundle(bp)
            refused = [c for c, _, _, f in llm_table(cfg) if expected_type(b, c, f, None)[1] == "refused"]
            if refused:
                check_refused(m, bp, out, ["-o", out], [f"tensor '{refused[0]}'", "has no exact GGUF type", "--requantize"])
                for rq in ("f32", "f16"):
                    check_llm(m, bp, out, src, requantize=rq)
                if l["hidden_size"] % 32 == 0 and l["intermediate_size"] % 32 == 0:
                    check_llm(m, bp, out, src, requantize="q8_0")
                    check_llm(m, bp, out, src, requantize="q4_0")
            else:
                check_llm(m, bp, out, src)
                if bp == bundles[0]:
                    check_forward(out, src)
            if cfg.get("connector") and cfg["connector"]["kind"] == "mlp" and cfg.get("image_processor"):
                vt, _ = vision_table(cfg)
                if any(expected_type(b, c, f, None)[1] == "refused" for c, _, _, f in vt):
                    check_refused(m, bp, bp[:-4] + ".mmproj.gguf", ["--vision-out", bp[:-4] + ".mmproj.gguf"],
                                  ["has no exact GGUF type"])
                else:
                    check_vision(m, bp, bp[:-4] + ".mmproj.gguf")
                    if bp == bundles[0]:
                        check_vision_forward(bp[:-4] + ".mmproj.gguf", src)
            elif cfg.get("connector") and cfg["connector"]["kind"] != "mlp":
                check_refused(m, bp, bp[:-4] + ".mmproj.gguf", ["--vision-out", bp[:-4] + ".mmproj.gguf"],
                              ["connector kind", "no llama.cpp projector type"])
    print(f"checked {counts['files']} GGUF files: {counts['keys']} keys, {counts['tensors']} tensors, "
          f"{counts['values']} values, {counts['blocks']} Q8_0/Q4_0/Q4_1 blocks rebuilt from codes, "
          f"{counts['ref_blocks']} blocks against ggml's reference quantizer, {counts['refusals']} refusals, "
          f"{counts['forward']} forward passes against reference logits/connector outputs")
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("all equal")


if __name__ == "__main__":
    main()
