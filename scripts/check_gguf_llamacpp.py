#!/usr/bin/env python3
"""Optional extra check (not in CI: it needs llama.cpp built, e.g. `pip install llama-cpp-python`, which compiles
llama.cpp): loads mm1pack's GGUF exports of the fixtures with llama.cpp itself and compares its logits on each
fixture's text probe with the reference logits (transformers, float32), and for the Q4_0/Q8_0 exports with a NumPy
forward pass of the same GGUF (scripts/check_gguf_export.py's, llama.cpp conventions). Also tokenizes the
llava-llama tokenizer cases with llama.cpp's tokenizer from the GGUF.

Usage: check_gguf_llamacpp.py [--mm1pack .build/debug/mm1pack] [--work DIR]
"""
import argparse
import ctypes
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


def llama_mmproj_embeddings(model_path, mmproj_path, rgb):
    """llama.cpp's (mtmd) image embeddings of one RGB uint8 image [H, W, 3]."""
    from llama_cpp import mtmd_cpp as M
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=128, verbose=False, n_threads=1)
    p = M.mtmd_context_params_default()
    p.use_gpu, p.print_timings, p.n_threads = False, False, 1
    ctx = M.mtmd_init_from_file(mmproj_path.encode(), llm.model, p)
    assert ctx, "llama.cpp did not load the mmproj"
    buf = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
    bm = M.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], buf)
    chunks = M.mtmd_input_chunks_init()
    text = M.mtmd_input_text()
    marker = M.mtmd_default_marker()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (M.mtmd_bitmap_p_ctypes * 1)(bm), 1) == 0
    for i in range(M.mtmd_input_chunks_size(chunks)):
        ch = M.mtmd_input_chunks_get(chunks, i)
        if M.mtmd_input_chunk_get_type(ch) != 0:
            n = M.mtmd_input_chunk_get_n_tokens(ch)
            assert M.mtmd_encode_chunk(ctx, ch) == 0
            d = llm.n_embd()
            return np.ctypeslib.as_array(M.mtmd_get_output_embd(ctx), shape=(n * d,)).reshape(n, d).copy()


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
    # mmproj: llama.cpp loads it; its output is compared with the file run in NumPy, in transformers' token order
    # and in the order of llama.cpp's current llava graph (class token appended last: an upstream regression).
    base = os.path.join(work, "llava-llama")
    subprocess.run([m, "export", base + ".mm1", "--format", "gguf", "-o", base + ".gguf", "--vision-out",
                    base + ".mmproj.gguf", "-q"], check=True)
    r = GGUFReader(base + ".mmproj.gguf")
    kv = {k: f.contents() for k, f in r.fields.items()}
    mean, std = np.array(kv["clip.vision.image_mean"]), np.array(kv["clip.vision.image_std"])
    S = kv["clip.vision.image_size"]
    rgb = np.kron(np.random.default_rng(0).integers(0, 256, (S // 2, S // 2, 3)), np.ones((2, 2, 1))).astype(np.uint8)
    pixels = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
    got = llama_mmproj_embeddings(base + ".gguf", base + ".mmproj.gguf", rgb)
    for cls_last in (False, True):
        want = C.forward_mmproj(r, pixels, cls_last=cls_last)
        err = np.abs(got - want).max() / np.abs(want).max()
        print(f"mmproj: llama.cpp vs NumPy forward of the file ({'class token last, as llama.cpp' if cls_last else 'transformers order'}): max rel. diff {err:.1e}")
    bad += not err < 1e-3

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
