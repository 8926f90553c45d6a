#!/usr/bin/env python3
"""Writes the small GGUF fixtures of GGUFReaderTests (fixtures/gguf/), with the PyPI `gguf` package's writer.

- types.gguf: one [2, 512] tensor per type mm1pack reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), plus
  expected/<TYPE>.npy, gguf's own NumPy dequantization of each (gguf.quants.dequantize): the values the Swift
  reader must reproduce bit for bit. F16/BF16/Q8_0/Q4_0/Q4_1 are made by gguf's quantizer from random floats;
  gguf has no Q4_K/Q6_K quantizer, so those blocks are random bytes with finite f16 scales (every 6-bit scale and
  min pattern, both nibbles and all high-bit pairs occur).
- tiny-llama.gguf: a 2-layer Llama (width 32, 4 query / 2 key-value heads, head_dim 8, MLP 64, vocabulary of the 256
  byte tokens + 6 merges + 2 control tokens) in mixed types, with a gpt2 tokenizer and `tokenizer.ggml.pre`
  "smollm", no output.weight (tied), for the end-to-end convert test.

Usage: pip install gguf numpy && python3 scripts/make_gguf_fixtures.py   (writes fixtures/gguf/)
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "gguf")
rng = np.random.default_rng(20260611)


def random_kquant_blocks(n_blocks, block_bytes, f16_fields):
    """Random block bytes with the given byte offsets holding finite f16 values."""
    b = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in f16_fields:
        v = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        b[:, off:off + 2] = v.view(np.uint8).reshape(n_blocks, 2)
    return b


def quantized(values, qtype):
    return quants.quantize(values, qtype)


def types_fixture():
    shape = (2, 512)
    x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    x[0, :7] = [0.0, -0.0, 1e-8, -65504.0 / 1024, 3.0, -3.0, 0.25]
    tensors = {
        "F32": (x, T.F32),
        "F16": (quantized(x, T.F16), T.F16),
        "BF16": (quantized(x, T.BF16), T.BF16),
        "Q8_0": (quantized(x, T.Q8_0), T.Q8_0),
        "Q4_0": (quantized(x, T.Q4_0), T.Q4_0),
        "Q4_1": (quantized(x, T.Q4_1), T.Q4_1),
        # Q4_K: f16 d at 0, f16 dmin at 2, scales[12], qs[128]
        "Q4_K": (random_kquant_blocks(4, 144, [0, 2]).reshape(2, 2 * 144), T.Q4_K),
        # Q6_K: ql[128], qh[64], scales[16], f16 d at 208
        "Q6_K": (random_kquant_blocks(4, 210, [208]).reshape(2, 2 * 210), T.Q6_K),
    }
    w = GGUFWriter(os.path.join(OUT, "types.gguf"), "llama")
    os.makedirs(os.path.join(OUT, "expected"), exist_ok=True)
    for name, (data, qtype) in tensors.items():
        if qtype == T.F32:
            w.add_tensor(f"t.{name}", data)
        else:
            w.add_tensor(f"t.{name}", data, raw_shape=data.shape, raw_dtype=qtype)
        deq = quants.dequantize(data, qtype).astype(np.float32).reshape(shape)
        np.save(os.path.join(OUT, "expected", f"{name}.npy"), deq)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama():
    D, L, NQ, NKV, HD, FF = 32, 2, 4, 2, 8, 64
    # byte-level vocabulary: the 256 byte symbols, some merges, two control tokens
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    sym, extra = {}, 0
    for b in range(256):
        if b in keep:
            sym[b] = chr(b)
        else:
            sym[b] = chr(256 + extra)
            extra += 1
    tokens = ["<|endoftext|>", "<|im_start|>"] + [sym[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġa n"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [3, 3] + [1] * (len(tokens) - 2)
    V = len(tokens)

    w = GGUFWriter(os.path.join(OUT, "tiny-llama.gguf"), "llama")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(NQ)
    w.add_head_count_kv(NKV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)

    def f32(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def q(name, arr, qtype):
        if qtype == T.F32:
            w.add_tensor(name, arr)
        else:
            data = quants.quantize(arr, qtype)
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)

    q("token_embd.weight", f32(V, D, scale=0.5), T.Q8_0)
    for i in range(L):
        p = f"blk.{i}."
        q(p + "attn_norm.weight", 1 + f32(D), T.F32)
        q(p + "attn_q.weight", f32(NQ * HD, D), T.Q4_1)
        q(p + "attn_k.weight", f32(NKV * HD, D), T.Q4_0)
        q(p + "attn_v.weight", f32(NKV * HD, D), T.F16)
        q(p + "attn_output.weight", f32(D, NQ * HD), T.BF16)
        q(p + "ffn_norm.weight", 1 + f32(D), T.F32)
        q(p + "ffn_gate.weight", f32(FF, D), T.Q8_0)
        q(p + "ffn_up.weight", f32(FF, D), T.Q4_1)
        q(p + "ffn_down.weight", f32(D, FF), T.Q4_0)
    q("output_norm.weight", 1 + f32(D), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    types_fixture()
    tiny_llama()
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total} bytes)")
