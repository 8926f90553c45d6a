#!/usr/bin/env python3
"""PyTorch CPU fp32 forward of an mm1pack bundle on the `mm1pack bench forward` probe.

    python3 bench/torch_forward.py /tmp/mm1-3b.mm1 [--runs 3] [--text-tokens 64] [--threads 2]

The model is the canonical torch implementation in scripts/make_references.py (`canonical_forward`: ViT,
C-Abstractor, Llama decoder written directly in torch ops, independent of mm1pack), with every weight read from the
bundle and widened to f32 once before timing (a plain `model.float()` setup: the whole model in f32 in memory).
The probe is the one ForwardBench.swift builds: the same CLIP-normalised gradient image at the encoder's size and
the ids [1, <image>, 2 + 7i mod (V-2) ...] with T text tokens.

Prints a last line `TORCH_RESULT median_s=... runs=... threads=... weights=... last_row_logit_sum=...` that the
Swift benchmark parses.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import struct
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
import make_references as mr  # noqa: E402

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def read_bundle(path: str):
    """(config, {name: f32 tensor}) from a .mm1 bundle (formats/bundle.md)."""
    f = open(path, "rb")
    prefix = f.read(96)
    assert prefix[:8] == b"MM1PACK\x00", "not an mm1pack bundle"
    header_len, data_offset = struct.unpack("<QQ", prefix[16:32])
    header = json.loads(f.read(header_len))
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    weights = {}
    for t in header["tensors"]:
        dt = TORCH_DTYPES[t["dtype"]]
        n = 1
        for d in t["shape"]:
            n *= d
        raw = torch.frombuffer(mm, dtype=dt, count=n, offset=data_offset + t["offset"])
        weights[t["name"]] = raw.to(torch.float32).reshape(t["shape"]).contiguous()
    return header["config"], weights


def probe(cfg, text_tokens: int):
    s = cfg["vision"]["image_size"]
    d = np.float32(max(1, s - 1))
    y, x = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32), indexing="ij")
    px = np.empty((3, s, s), np.float32)
    for c in range(3):
        v = np.fmod(np.float32(0.6) * x / d + np.float32(0.3) * y / d + np.float32(0.1) * np.float32(c), np.float32(1))
        px[c] = (v - np.float32(CLIP_MEAN[c])) / np.float32(CLIP_STD[c])
    vocab = cfg["llm"]["vocab_size"]
    ids = [1, -1] + [2 + (7 * i) % max(1, vocab - 2) for i in range(max(0, text_tokens - 1))]
    return torch.from_numpy(px)[None], ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    cfg, w = read_bundle(a.bundle)
    print(f"loaded {len(w)} tensors as f32 ({sum(v.numel() for v in w.values()) * 4 / 1e9:.2f} GB) "
          f"in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    mr.T = lambda c, name: c[name]  # the canonical forward reads weights through T(c, name)
    px, ids = probe(cfg, a.text_tokens)
    times = []
    last = 0.0
    with torch.inference_mode():
        for i in range(max(1, a.runs)):
            t = time.perf_counter()
            out = mr.canonical_forward(w, cfg, ids, px, -1)
            dt = time.perf_counter() - t
            times.append(dt)
            last = float(out["logits"][-1].double().sum())
            print(f"run {i + 1}: {dt:.2f} s", flush=True)
    print(f"TORCH_RESULT median_s={statistics.median(times):.4f} runs={len(times)} threads={torch.get_num_threads()} "
          f"weights=canonical-f32-preloaded last_row_logit_sum={last:.6f}")


if __name__ == "__main__":
    main()
