#!/usr/bin/env python3
"""Optional extra check (not in CI: it needs llama.cpp built, e.g. `pip install llama-cpp-python`, which compiles
llama.cpp): loads mm1pack's GGUF exports of the fixtures with llama.cpp itself and compares its logits on each
fixture's text probe with the reference logits (transformers, float32), and for the Q4_0/Q8_0 exports with a NumPy
forward pass of the same GGUF (scripts/check_gguf_export.py's, llama.cpp conventions). Also tokenizes the
llava-llama tokenizer cases with llama.cpp's tokenizer from the GGUF.

Usage: check_gguf_llamacpp.py [--mm1pack .build/debug/mm1pack] [--work DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_gguf_export as C  # noqa: E402
from gguf import GGUFReader  # noqa: E402
import llama_cpp  # noqa: E402

ROOT = C.ROOT


def llama_logits(path, ids):
    m = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False, n_threads=1, seed=0)
    m.eval(ids)
    out = np.array(m.scores[: len(ids)], dtype=np.float64)
    m.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mm1pack", default=os.path.join(ROOT, ".build/debug/mm1pack"))
    ap.add_argument("--work", default=tempfile.mkdtemp(prefix="gguf-llamacpp-"))
    a = ap.parse_args()
    m, work, bad = a.mm1pack, a.work, 0
    os.makedirs(work, exist_ok=True)
    for fx in ["llava-llama", "llama-text", "llava-mixtral", "honeybee-dense", "honeybee-moe", "axlearn-dense"]:
        src = os.path.join(ROOT, "fixtures", fx)
        base = os.path.join(work, fx)
        subprocess.run([m, "convert", src, "-o", base + ".mm1", "-q"], check=True)
        probes = [json.loads(x) for x in open(os.path.join(src, "reference", "probes.jsonl"))]
        pr = next(p for p in probes if not p.get("images"))
        ref = np.load(os.path.join(src, "reference", pr["id"] + ".logits.npy")).astype(np.float64)
        variants = [(base + ".mm1", base + ".gguf", [])]
        for recipe in ("gguf-q4_0", "gguf-q8_0"):
            q = f"{base}-{recipe}.mm1"
            subprocess.run([m, "quantize", base + ".mm1", "-o", q, "--recipe", os.path.join(ROOT, "recipes", recipe + ".json"),
                            "--method", "rtn", "-q"], check=True)
            variants.append((q, q[:-4] + ".gguf", ["--requantize", "f32"]))  # only llama-text (K = 48) needs it
        for bp, gp, extra in variants:
            subprocess.run([m, "export", bp, "--format", "gguf", "-o", gp, "-q"] + extra, check=True)
            got = llama_logits(gp, pr["input_ids"])
            want = ref if bp.endswith(fx + ".mm1") else C.forward_llama(GGUFReader(gp), pr["input_ids"])
            err = np.abs(got - want).max() / np.abs(want).max()
            # ggml's CPU matrix products round the activations to the weights' precision class: F16 weights take
            # f16 activations, Q8_0/Q4_0 weights 8-bit quantized activations; only F32 is close to exact. Tiny
            # random models have near-tied logits, so the argmax agreement is reported, not required.
            quantized = want is not ref
            types = {t.tensor_type.name for t in GGUFReader(gp).tensors if len(t.shape) > 1}
            tol = 5e-2 if quantized else 5e-3 if types & {"F16", "BF16"} else 1e-3
            ok = err < tol
            bad += not ok
            what = "reference logits" if want is ref else "NumPy forward of the GGUF"
            print(f"{'ok  ' if ok else 'FAIL'} {os.path.basename(gp)}: llama.cpp vs {what}: max rel. diff {err:.1e}, "
                  f"argmax agree {np.mean(got.argmax(-1) == want.argmax(-1)):.2f}")
    # tokenizer: llama.cpp tokenizing with the vocabulary carried over in the GGUF
    cases = json.load(open(os.path.join(ROOT, "fixtures", "tokenizer", "llava-llama.cases.json")))["cases"]
    tok = llama_cpp.Llama(model_path=os.path.join(work, "llava-llama.gguf"), vocab_only=True, verbose=False)
    # The fixture's toy vocabulary lacks most byte symbols: the tokenizers library then emits <unk> (id 0) where
    # llama.cpp's byte-level BPE drops the byte. Real byte-level vocabularies hold all 256 bytes, so only cases
    # without <unk> are comparable.
    cases = [c for c in cases if 0 not in c["ids"]]
    agree = 0
    for c in cases:
        ids = tok.tokenize(c["text"].encode(), add_bos=False, special=True)
        agree += ids == c["ids"]
        if ids != c["ids"]:
            print(f"  tokenizer differs on {c['text']!r}: llama.cpp {ids} vs tokenizers {c['ids']}")
    print(f"tokenizer: llama.cpp matches the tokenizers library on {agree}/{len(cases)} cases")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
