#!/usr/bin/env python3
"""Generate the tiny, deterministic source checkpoints under fixtures/ and their expected.json.

Requires (Python 3.11): torch, transformers 5.23, timm, open_clip_torch, tensorstore, safetensors,
tokenizers, numpy.  Run from anywhere:  python3 scripts/make_fixtures.py [--only NAME ...]

Every fixture is written by the library that normally writes it (save_pretrained, safetensors
save_file of a state_dict, tensorstore zarr).  expected.json holds, for every canonical tensor
(formats/canonical.md) the source carries, its shape and the SHA-256 of its row-major
little-endian bytes in f32 (the source values widened exactly), f16 (numpy astype, RNE) and bf16
(torch .to(bfloat16), RNE).

The canonical tensors are derived here from the in-memory torch modules (module attributes, not
file keys) and, for AXLearn, generated first and turned into AXLearn arrays by numpy inverse
transforms; the AXLearn arrays are then read back with tensorstore and mapped forward again as a
self-check.  scripts/check_fixtures.py re-derives the same digests from the files with an
independent, key-based numpy mapping.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import warnings
from functools import partial

import numpy as np
import torch
import torch.nn as nn

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Tiny shared dimensions.
VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           patch_size=4, image_size=28, num_channels=3, projection_dim=32)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def fresh_dir(name: str) -> str:
    d = os.path.join(FIXTURES, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


_NORM = re.compile(r"(norm|layrnorm|ln_|layer_norm|\.bn\.)")


def init_params(model: nn.Module, seed: int) -> None:
    """Deterministic non-trivial values: N(0, 0.02) for weights, 1 + N(0, 0.1) / N(0, 0.1) for
    norm weights / biases, so that no tensor is constant and transposes cannot pass unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = tuple(p.shape)
            if p.ndim == 1 and _NORM.search(name):
                val = 0.1 * torch.randn(shape, generator=g)
                if name.endswith("weight"):
                    val = val + 1.0
            else:
                val = 0.02 * torch.randn(shape, generator=g)
            p.copy_(val.to(p.dtype))


def t2n(t: torch.Tensor) -> np.ndarray:
    """Exact widening to float32 numpy (bf16/f16 -> f32 is exact)."""
    return t.detach().to(torch.float32).contiguous().numpy().copy()


def digests(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    bf = torch.from_numpy(a.copy()).to(torch.bfloat16).view(torch.int16).numpy().astype("<i2")
    return {
        "shape": list(a.shape),
        "sha256_f32": hashlib.sha256(a.astype("<f4").tobytes()).hexdigest(),
        "sha256_f16": hashlib.sha256(a.astype(np.float16).astype("<f2").tobytes()).hexdigest(),
        "sha256_bf16": hashlib.sha256(bf.tobytes()).hexdigest(),
    }


def write_expected(d: str, layout: str, source_dtype: str, canon: dict) -> None:
    for k, v in canon.items():
        assert np.all(np.isfinite(v)), k
    write_json(os.path.join(d, "expected.json"), {
        "layout": layout,
        "source_dtype": source_dtype,
        "tensors": {k: digests(canon[k]) for k in sorted(canon)},
    })


class Canon(dict):
    def put(self, name, t):
        assert name not in self, name
        self[name] = t2n(t) if isinstance(t, torch.Tensor) else np.ascontiguousarray(t, np.float32)


# ----------------------------------------------------------------------------------------------
# canonical tensors from in-memory modules (torch side)
# ----------------------------------------------------------------------------------------------


def canon_hf_clip(c: Canon, vt) -> None:
    """vt: transformers 5.23 CLIPVisionModel (flattened: .embeddings, .pre_layrnorm, .encoder, ...)."""
    emb = vt.embeddings
    c.put("vit.patch_embed.weight", emb.patch_embedding.weight)
    assert emb.patch_embedding.bias is None
    c.put("vit.class_embed", emb.class_embedding)
    c.put("vit.pos_embed", emb.position_embedding.weight)
    c.put("vit.pre_norm.weight", vt.pre_layrnorm.weight)
    c.put("vit.pre_norm.bias", vt.pre_layrnorm.bias)
    for i, layer in enumerate(vt.encoder.layers):
        p = f"vit.blocks.{i}."
        at = layer.self_attn
        for a, mod in (("q", at.q_proj), ("k", at.k_proj), ("v", at.v_proj), ("o", at.out_proj)):
            c.put(p + f"attn.{a}.weight", mod.weight)
            c.put(p + f"attn.{a}.bias", mod.bias)
        for n, mod in (("norm1", layer.layer_norm1), ("norm2", layer.layer_norm2),
                       ("mlp.fc1", layer.mlp.fc1), ("mlp.fc2", layer.mlp.fc2)):
            c.put(p + f"{n}.weight", mod.weight)
            c.put(p + f"{n}.bias", mod.bias)
    c.put("vit.post_norm.weight", vt.post_layernorm.weight)
    c.put("vit.post_norm.bias", vt.post_layernorm.bias)


def canon_hf_decoder(c: Canon, model, lm_head, tied: bool) -> None:
    """model: LlamaModel / MixtralModel (in-memory v5 modules)."""
    c.put("llm.embed.weight", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        p = f"llm.layers.{i}."
        c.put(p + "attn_norm.weight", layer.input_layernorm.weight)
        c.put(p + "mlp_norm.weight", layer.post_attention_layernorm.weight)
        sa = layer.self_attn
        for a in "qkvo":
            c.put(p + f"attn.{a}.weight", getattr(sa, f"{a}_proj").weight)
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            ex = mlp.experts
            inter = ex.down_proj.shape[-1]
            gu = ex.gate_up_proj  # [E, 2I, H]: gate rows first (chunk(2) -> gate, up)
            assert gu.shape[1] == 2 * inter
            c.put(p + "moe.router.weight", mlp.gate.weight)
            c.put(p + "moe.gate.weight", gu[:, :inter, :])
            c.put(p + "moe.up.weight", gu[:, inter:, :])
            c.put(p + "moe.down.weight", ex.down_proj)
        else:
            c.put(p + "mlp.gate.weight", mlp.gate_proj.weight)
            c.put(p + "mlp.up.weight", mlp.up_proj.weight)
            c.put(p + "mlp.down.weight", mlp.down_proj.weight)
    c.put("llm.norm.weight", model.norm.weight)
    if not tied:
        c.put("llm.head.weight", lm_head.weight)


# ----------------------------------------------------------------------------------------------
# tokenizer / processor payloads
# ----------------------------------------------------------------------------------------------


def build_tokenizer(path: str, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "a photo of a cat sitting on a mat",
        "the dog runs in the park",
        "describe the image in detail",
        "what is in this picture?",
        "there are two cats and one dog",
    ] * 3
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, initial_alphabet=[],
                                  special_tokens=["<unk>", "<s>", "</s>", "<image>"])
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    tok.save(path)
    return {k: tok.token_to_id(k) for k in ("<unk>", "<s>", "</s>", "<image>")}


def save_clip_processor(d: str) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(d)


# ----------------------------------------------------------------------------------------------
# HF fixtures
# ----------------------------------------------------------------------------------------------


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**VIT, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1,
                eos_token_id=2)
    base.update(kw)
    return LlamaConfig(**base)


def mixtral_config(**kw):
    from transformers import MixtralConfig

    base = dict(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                num_experts_per_tok=2, rms_norm_eps=1e-5, max_position_embeddings=256,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return MixtralConfig(**base)


def llava_canon(m) -> Canon:
    c = Canon()
    canon_hf_clip(c, m.model.vision_tower)
    pr = m.model.multi_modal_projector
    c.put("conn.fc1.weight", pr.linear_1.weight)
    c.put("conn.fc1.bias", pr.linear_1.bias)
    c.put("conn.fc2.weight", pr.linear_2.weight)
    c.put("conn.fc2.bias", pr.linear_2.bias)
    canon_hf_decoder(c, m.model.language_model, m.lm_head, tied=False)
    return c


def make_llava_llama() -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    d = fresh_dir("llava-llama")
    torch.manual_seed(101)
    ids = build_tokenizer(os.path.join(d, "tokenizer.json"), 96)
    save_clip_processor(d)
    cfg = LlavaConfig(vision_config=vision_config(),
                      text_config=llama_config(vocab_size=96, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                               pad_token_id=None),
                      image_token_index=ids["<image>"], image_seq_length=49)
    m = LlavaForConditionalGeneration(cfg).eval()
    init_params(m, 101)
    m.save_pretrained(d, safe_serialization=True)
    write_expected(d, "llava", "f32", llava_canon(m))


def make_llava_mixtral() -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    d = fresh_dir("llava-mixtral")
    torch.manual_seed(102)
    cfg = LlavaConfig(vision_config=vision_config(), text_config=mixtral_config(), image_token_index=79,
                      image_seq_length=49)
    m = LlavaForConditionalGeneration(cfg).eval()
    init_params(m, 102)
    m = m.to(torch.bfloat16)
    m.save_pretrained(d, safe_serialization=True, max_shard_size="60KB")
    write_expected(d, "llava", "bf16", llava_canon(m))


def make_llava_mixtral_v5() -> None:
    from safetensors.torch import save_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    d = fresh_dir("llava-mixtral-v5")
    torch.manual_seed(103)
    cfg = LlavaConfig(vision_config=vision_config(), text_config=mixtral_config(), image_token_index=79,
                      image_seq_length=49)
    m = LlavaForConditionalGeneration(cfg).eval()
    init_params(m, 103)
    m = m.to(torch.float16)
    m.config.save_pretrained(d)  # config.json exactly as save_pretrained writes it
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    write_expected(d, "llava", "f16", llava_canon(m))


def make_llama_text() -> None:
    from transformers import LlamaForCausalLM

    d = fresh_dir("llama-text")
    torch.manual_seed(104)
    cfg = llama_config(vocab_size=72, hidden_size=48, num_hidden_layers=3, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    init_params(m, 104)
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    m.save_pretrained(d, safe_serialization=True)
    c = Canon()
    canon_hf_decoder(c, m.model, m.lm_head, tied=True)
    write_expected(d, "hf_causal_lm", "f32", c)


# ----------------------------------------------------------------------------------------------
# Honeybee
# ----------------------------------------------------------------------------------------------


class CAbstractor(nn.Module):
    """Honeybee C-Abstractor (kakaobrain/honeybee projectors.py), rebuilt from timm pieces."""

    def __init__(self, enc: int, hidden: int, out: int, depth: int, mlp_depth: int, n_in: int, n_query: int):
        super().__init__()
        from timm.layers import LayerNorm2d
        from timm.models.regnet import RegStage

        self.pos_emb = nn.Parameter(torch.zeros(1, n_in, enc))
        block = partial(RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d)
        hw = int(math.isqrt(n_query))
        assert hw * hw == n_query
        self.net = nn.Sequential(block(depth, enc, hidden), nn.AdaptiveAvgPool2d((hw, hw)), block(depth, hidden, hidden))
        layers = [nn.Linear(hidden, out)]
        for _ in range(1, mlp_depth):
            layers += [nn.SiLU(), nn.Linear(out, out)]
        self.readout = nn.Sequential(*layers)


class Honeybee(nn.Module):
    def __init__(self, vcfg, pcfg: dict, lm):
        super().__init__()
        from transformers import CLIPVisionModel

        self.vision_model = CLIPVisionModel(vcfg)
        n_in = (vcfg.image_size // vcfg.patch_size) ** 2
        self.abstractor = CAbstractor(pcfg["encoder_hidden_size"], pcfg["hidden_size"], pcfg["output_hidden_size"],
                                      pcfg["depth"], pcfg["mlp_depth"], n_in, pcfg["num_query_tokens"])
        self.language_model = lm


def honeybee_canon(hb: Honeybee) -> Canon:
    c = Canon()
    canon_hf_clip(c, hb.vision_model)
    ab = hb.abstractor
    c.put("conn.pos_embed", ab.pos_emb[0])
    for stage, seq_idx in (("s1", 0), ("s2", 2)):
        for j, blk in enumerate(ab.net[seq_idx].children()):  # timm b1.. -> canonical b0..
            p = f"conn.{stage}.b{j}."
            for conv, norm, mod in (("conv1", "norm1", blk.conv1), ("conv2", "norm2", blk.conv2),
                                    ("conv3", "norm3", blk.conv3)):
                c.put(p + f"{conv}.weight", mod.conv.weight)
                c.put(p + f"{norm}.weight", mod.bn.weight)
                c.put(p + f"{norm}.bias", mod.bn.bias)
            c.put(p + "se.fc1.weight", blk.se.fc1.weight)
            c.put(p + "se.fc1.bias", blk.se.fc1.bias)
            c.put(p + "se.fc2.weight", blk.se.fc2.weight)
            c.put(p + "se.fc2.bias", blk.se.fc2.bias)
            if not isinstance(blk.downsample, nn.Identity):
                c.put(p + "down.weight", blk.downsample.conv.weight)
                c.put(p + "down_norm.weight", blk.downsample.bn.weight)
                c.put(p + "down_norm.bias", blk.downsample.bn.bias)
    linears = [mod for mod in ab.readout if isinstance(mod, nn.Linear)]
    for k, lin in enumerate(linears):
        c.put(f"conn.readout.{k}.weight", lin.weight)
        c.put(f"conn.readout.{k}.bias", lin.bias)
    lm = hb.language_model
    canon_hf_decoder(c, lm.model, lm.lm_head, tied=False)
    return c


def honeybee_config(vcfg, lm_cfg, out_dim: int) -> dict:
    v = vcfg.to_dict()
    v.update({"encoder_type": "openai.clip", "pretrained_vision_name_or_path": "openai/clip-vit-large-patch14",
              "image_mean": CLIP_MEAN, "image_std": CLIP_STD})
    return {
        "architectures": ["HoneybeeForConditionalGeneration"],
        "model_type": "honeybee",
        "num_query_tokens": 9,
        "vision_config": v,
        "projector_config": {"projector_type": "c-abs", "depth": 2, "mlp_depth": 2, "hidden_size": 48,
                             "num_eos_tokens": 0, "pos_emb": True, "feature_layer_index": -1, "prenorm": False,
                             "num_query_tokens": 9, "encoder_hidden_size": VIT["hidden_size"],
                             "output_hidden_size": out_dim},
        "text_config": lm_cfg.to_dict(),
    }


def make_honeybee(name: str, moe: bool) -> None:
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM, MixtralForCausalLM

    d = fresh_dir(name)
    seed = 106 if moe else 105
    torch.manual_seed(seed)
    vcfg = vision_config()
    if moe:
        lm_cfg = mixtral_config(vocab_size=88, hidden_size=32, num_hidden_layers=2)
        lm = MixtralForCausalLM(lm_cfg)
    else:
        lm_cfg = llama_config(vocab_size=88, hidden_size=32, num_hidden_layers=2)
        lm = LlamaForCausalLM(lm_cfg)
    out_dim = lm_cfg.hidden_size
    cfg = honeybee_config(vcfg, lm_cfg, out_dim)
    hb = Honeybee(vcfg, cfg["projector_config"], lm).eval()
    init_params(hb, seed)
    if moe:
        hb = hb.to(torch.bfloat16)
    sd = {k: v.contiguous() for k, v in hb.state_dict().items()}
    if not moe:
        # Released Honeybee checkpoints (transformers 4.x era) nest the CLIP tower one level deeper:
        # vision_model.vision_model.*.  transformers 5.23's CLIPVisionModel is flattened in memory
        # (vision_model.embeddings.*); the MoE fixture keeps those 5.23 names on purpose.
        sd = {("vision_model.vision_model." + k[len("vision_model."):] if k.startswith("vision_model.") else k): v
              for k, v in sd.items()}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(d, "config.json"), cfg)
    write_expected(d, "honeybee", "bf16" if moe else "f32", honeybee_canon(hb))


# ----------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------


def make_openclip() -> None:
    import open_clip  # noqa: F401
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    d = fresh_dir("openclip-vit")
    torch.manual_seed(107)
    vision_cfg = {"image_size": 28, "layers": 2, "width": 32, "head_width": 8, "patch_size": 4, "mlp_ratio": 2.0}
    text_cfg = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 4, "layers": 1}
    m = CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True).eval()
    init_params(m.visual, 107)
    vis = m.visual
    assert vis.conv1.bias is None
    sd = {"visual." + k: v.contiguous() for k, v in vis.state_dict().items()}
    save_file(sd, os.path.join(d, "open_clip_model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(d, "open_clip_config.json"), {
        "model_cfg": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": vision_cfg, "text_cfg": text_cfg},
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic", "resize_mode": "squash"},
    })
    c = Canon()
    c.put("vit.patch_embed.weight", vis.conv1.weight)
    c.put("vit.class_embed", vis.class_embedding)
    c.put("vit.pos_embed", vis.positional_embedding)
    c.put("vit.pre_norm.weight", vis.ln_pre.weight)
    c.put("vit.pre_norm.bias", vis.ln_pre.bias)
    for i, blk in enumerate(vis.transformer.resblocks):
        p = f"vit.blocks.{i}."
        at = blk.attn
        w, b = at.in_proj_weight, at.in_proj_bias
        q, k, v = w.chunk(3, dim=0)
        qb, kb, vb = b.chunk(3, dim=0)
        for a, ww, bb in (("q", q, qb), ("k", k, kb), ("v", v, vb), ("o", at.out_proj.weight, at.out_proj.bias)):
            c.put(p + f"attn.{a}.weight", ww)
            c.put(p + f"attn.{a}.bias", bb)
        for n, mod in (("norm1", blk.ln_1), ("norm2", blk.ln_2), ("mlp.fc1", blk.mlp.c_fc), ("mlp.fc2", blk.mlp.c_proj)):
            c.put(p + f"{n}.weight", mod.weight)
            c.put(p + f"{n}.bias", mod.bias)
    c.put("vit.post_norm.weight", vis.ln_post.weight)
    c.put("vit.post_norm.bias", vis.ln_post.bias)
    c.put("vit.head.weight", vis.proj.t())
    write_expected(d, "openclip", "f32", c)


# ----------------------------------------------------------------------------------------------
# AXLearn (tensorstore zarr v2)
# ----------------------------------------------------------------------------------------------


def bf16_round(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16).to(torch.float32).numpy()


def axlearn_config(moe: bool) -> dict:
    llm = {
        "kind": "decoder", "vocab_size": 72 if moe else 80, "hidden_size": 32 if moe else 48,
        "num_layers": 4 if moe else 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8 if moe else 12,
        "intermediate_size": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "max_position_embeddings": 4096, "tie_embeddings": moe, "attention_bias": False, "activation": "silu",
        "moe": ({"num_experts": 4, "top_k": 2, "intermediate_size": 48, "renormalize": True, "layers": [1, 3]}
                if moe else None),
        "bos_token_id": 1, "eos_token_id": 2,
    }
    return {
        "vision": {
            "kind": "clip_vit", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
            "patch_size": 4, "image_size": 28, "num_channels": 3, "class_token": True, "patch_bias": moe,
            "pre_norm": True, "layer_norm_eps": 1e-5, "activation": "quick_gelu", "feature_layer": -1,
            "post_norm_features": True, "drop_class_token": True,
        },
        "connector": {
            "kind": "c_abstractor", "input_size": 32, "hidden_size": 48, "output_size": llm["hidden_size"],
            "depth": 2, "mlp_depth": 2, "num_queries": 9, "pos_emb": True, "prenorm": False,
            "layer_norm_eps": 1e-5, "se_ratio": 0.25, "activation": "silu",
        },
        "llm": llm,
        "image_token_id": llm["vocab_size"] - 1,
        "image_processor": {"image_size": 28, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resize": "squash",
                            "rescale_factor": 1.0 / 255.0},
        "source_config": {"layout": "axlearn", "step": 100, "decoder_repeat_period": 2 if moe else 1,
                          "note": "side-config for an AXLearn checkpoint; the index carries no hyper-parameters"},
    }


def canonical_shapes(cfg: dict) -> dict:
    """name -> (shape, kind) where kind in {'w', 'norm_w', 'norm_b', 'bias'}."""
    v, cn, l = cfg["vision"], cfg["connector"], cfg["llm"]
    E, P, Cf = v["hidden_size"], v["patch_size"], v["intermediate_size"]
    n_patch = (v["image_size"] // P) ** 2
    s = {"vit.patch_embed.weight": ([E, 3, P, P], "w"), "vit.class_embed": ([E], "bias"),
         "vit.pos_embed": ([n_patch + 1, E], "w"),
         "vit.pre_norm.weight": ([E], "norm_w"), "vit.pre_norm.bias": ([E], "norm_b"),
         "vit.post_norm.weight": ([E], "norm_w"), "vit.post_norm.bias": ([E], "norm_b")}
    if v["patch_bias"]:
        s["vit.patch_embed.bias"] = ([E], "bias")
    for i in range(v["num_layers"]):
        p = f"vit.blocks.{i}."
        for n in ("norm1", "norm2"):
            s[p + n + ".weight"] = ([E], "norm_w")
            s[p + n + ".bias"] = ([E], "norm_b")
        for a in "qkvo":
            s[p + f"attn.{a}.weight"] = ([E, E], "w")
            s[p + f"attn.{a}.bias"] = ([E], "bias")
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = ([Cf, E], "w"), ([Cf], "bias")
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = ([E, Cf], "w"), ([E], "bias")
    H, D = cn["hidden_size"], cn["output_size"]
    s["conn.pos_embed"] = ([n_patch, E], "w")
    for st in ("s1", "s2"):
        for b in range(cn["depth"]):
            cin = E if (st == "s1" and b == 0) else H
            r = int(round(cin * cn["se_ratio"]))
            p = f"conn.{st}.b{b}."
            s[p + "conv1.weight"] = ([H, cin, 1, 1], "w")
            s[p + "conv2.weight"] = ([H, 1, 3, 3], "w")
            s[p + "conv3.weight"] = ([H, H, 1, 1], "w")
            s[p + "se.fc1.weight"], s[p + "se.fc1.bias"] = ([r, H, 1, 1], "w"), ([r], "bias")
            s[p + "se.fc2.weight"], s[p + "se.fc2.bias"] = ([H, r, 1, 1], "w"), ([H], "bias")
            norms = ["norm1", "norm2", "norm3"]
            if cin != H:
                s[p + "down.weight"] = ([H, cin, 1, 1], "w")
                norms.append("down_norm")
            for n in norms:
                s[p + n + ".weight"] = ([H], "norm_w")
                s[p + n + ".bias"] = ([H], "norm_b")
    for k in range(cn["mlp_depth"]):
        fin = H if k == 0 else D
        s[f"conn.readout.{k}.weight"], s[f"conn.readout.{k}.bias"] = ([D, fin], "w"), ([D], "bias")
    V, nq, nkv, dh, F = l["vocab_size"], l["num_heads"], l["num_kv_heads"], l["head_dim"], l["intermediate_size"]
    s["llm.embed.weight"] = ([V, D], "w")
    s["llm.norm.weight"] = ([D], "norm_w")
    if not l["tie_embeddings"]:
        s["llm.head.weight"] = ([V, D], "w")
    moe_layers = set(l["moe"]["layers"]) if l["moe"] else set()
    for i in range(l["num_layers"]):
        p = f"llm.layers.{i}."
        s[p + "attn_norm.weight"] = ([D], "norm_w")
        s[p + "mlp_norm.weight"] = ([D], "norm_w")
        s[p + "attn.q.weight"] = ([nq * dh, D], "w")
        s[p + "attn.k.weight"] = ([nkv * dh, D], "w")
        s[p + "attn.v.weight"] = ([nkv * dh, D], "w")
        s[p + "attn.o.weight"] = ([D, nq * dh], "w")
        if i in moe_layers:
            X, Fe = l["moe"]["num_experts"], l["moe"]["intermediate_size"]
            s[p + "moe.router.weight"] = ([X, D], "w")
            s[p + "moe.gate.weight"] = ([X, Fe, D], "w")
            s[p + "moe.up.weight"] = ([X, Fe, D], "w")
            s[p + "moe.down.weight"] = ([X, D, Fe], "w")
        else:
            s[p + "mlp.gate.weight"] = ([F, D], "w")
            s[p + "mlp.up.weight"] = ([F, D], "w")
            s[p + "mlp.down.weight"] = ([D, F], "w")
    return s


def gen_canonical(shapes: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape, kind = shapes[name]
        x = rng.standard_normal(shape, dtype=np.float32)
        if kind == "norm_w":
            out[name] = (1.0 + 0.1 * x).astype(np.float32)  # stored float32 in AXLearn
        elif kind == "norm_b":
            out[name] = (0.1 * x).astype(np.float32)
        else:
            out[name] = bf16_round(0.02 * x)  # stored bfloat16: values chosen bf16-exact
    return out


def half_to_interleaved(w: np.ndarray, axis: int) -> np.ndarray:
    """Half rotation (pairs i, i+Dh/2) -> AXLearn interleaved (pairs 2i, 2i+1) along `axis`:
    out[2i] = in[i], out[2i+1] = in[i + Dh/2]."""
    w = np.moveaxis(w, axis, -1)
    dh = w.shape[-1]
    w = w.reshape(w.shape[:-1] + (2, dh // 2)).swapaxes(-1, -2).reshape(w.shape[:-1] + (dh,))
    return np.moveaxis(w, -1, axis)


def canonical_to_axlearn(c: dict, cfg: dict) -> dict:
    """Inverse transforms: canonical tensors -> {AXLearn path (under model/): array}."""
    a = {}
    v, cn, l = cfg["vision"], cfg["connector"], cfg["llm"]
    E, nh = v["hidden_size"], v["num_heads"]
    hd = E // nh
    V = "model/vision_encoder/image_encoder/"
    a[V + "visual_embed/convert_to_sequence/conv/weight"] = c["vit.patch_embed.weight"].transpose(2, 3, 1, 0)
    if "vit.patch_embed.bias" in c:
        a[V + "visual_embed/convert_to_sequence/conv/bias"] = c["vit.patch_embed.bias"]
    a[V + "cls_token"] = c["vit.class_embed"].reshape(1, 1, E)
    a[V + "encoder_1d/pos_emb/weight"] = c["vit.pos_embed"][None]
    a[V + "encoder_1d/input_norm/scale"] = c["vit.pre_norm.weight"]
    a[V + "encoder_1d/input_norm/bias"] = c["vit.pre_norm.bias"]
    a[V + "encoder_1d/output_norm/scale"] = c["vit.post_norm.weight"]
    a[V + "encoder_1d/output_norm/bias"] = c["vit.post_norm.bias"]
    T = V + "encoder_1d/transformer/repeat/layer/"
    L = v["num_layers"]

    def stack(fn):
        return np.stack([fn(i) for i in range(L)])

    blk = lambda i, n: c[f"vit.blocks.{i}.{n}"]  # noqa: E731
    a[T + "self_attention/norm/scale"] = stack(lambda i: blk(i, "norm1.weight"))
    a[T + "self_attention/norm/bias"] = stack(lambda i: blk(i, "norm1.bias"))
    for q in "qkv":
        a[T + f"self_attention/attention/i_proj/{q}_proj/weight"] = stack(lambda i: blk(i, f"attn.{q}.weight").T.reshape(E, nh, hd))
        a[T + f"self_attention/attention/i_proj/{q}_proj/bias"] = stack(lambda i: blk(i, f"attn.{q}.bias").reshape(nh, hd))
    a[T + "self_attention/attention/o_proj/weight"] = stack(lambda i: blk(i, "attn.o.weight").reshape(E, nh, hd))
    a[T + "self_attention/attention/o_proj/bias"] = stack(lambda i: blk(i, "attn.o.bias"))
    a[T + "feed_forward/norm/scale"] = stack(lambda i: blk(i, "norm2.weight"))
    a[T + "feed_forward/norm/bias"] = stack(lambda i: blk(i, "norm2.bias"))
    for j in (1, 2):
        a[T + f"feed_forward/linear{j}/weight"] = stack(lambda i: blk(i, f"mlp.fc{j}.weight").T)
        a[T + f"feed_forward/linear{j}/bias"] = stack(lambda i: blk(i, f"mlp.fc{j}.bias"))

    C = "model/vision_encoder/connector/"
    a[C + "pos_emb/weight"] = c["conn.pos_embed"][None]
    for name, val in c.items():
        m = re.fullmatch(r"conn\.(s[12])\.b(\d+)\.(.+)\.(weight|bias)", name)
        if not m:
            continue
        st, b, mod, wb = m.groups()
        p = C + f"{st}/b{b}/" + mod.replace(".", "/") + "/"
        if mod.startswith("norm") or mod == "down_norm":
            a[p + ("scale" if wb == "weight" else "bias")] = val
        elif wb == "weight":
            a[p + "weight"] = val.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        else:
            a[p + "bias"] = val
    for k in range(cn["mlp_depth"]):
        a[C + f"readout/linear{k}/weight"] = c[f"conn.readout.{k}.weight"].T
        a[C + f"readout/linear{k}/bias"] = c[f"conn.readout.{k}.bias"]

    D = "model/decoder/"
    nq, nkv, dh = l["num_heads"], l["num_kv_heads"], l["head_dim"]
    dm = l["hidden_size"]
    a[D + "emb/token_emb/weight"] = c["llm.embed.weight"]
    a[D + "output_norm/scale"] = c["llm.norm.weight"]
    if "llm.head.weight" in c:
        a[D + "lm_head/weight"] = c["llm.head.weight"]
    moe_layers = set(l["moe"]["layers"]) if l["moe"] else set()
    period = 2 if moe_layers else 1
    reps = l["num_layers"] // period
    for k in range(period):
        base = D + "transformer/repeat/layer/" + (f"layer{k}/" if period > 1 else "")
        layers = [r * period + k for r in range(reps)]
        g = lambda i, n: c[f"llm.layers.{i}.{n}"]  # noqa: E731
        st = lambda fn: np.stack([fn(i) for i in layers])  # noqa: E731
        a[base + "self_attention/norm/scale"] = st(lambda i: g(i, "attn_norm.weight"))
        a[base + "feed_forward/norm/scale"] = st(lambda i: g(i, "mlp_norm.weight"))

        def qkv(i):
            q = half_to_interleaved(g(i, "attn.q.weight").reshape(nq, dh, dm), 1)
            kk = half_to_interleaved(g(i, "attn.k.weight").reshape(nkv, dh, dm), 1)
            vv = g(i, "attn.v.weight").reshape(nkv, dh, dm)
            return np.concatenate([q, kk, vv], axis=0).transpose(2, 0, 1)  # [D, nq+2nkv, dh]

        a[base + "self_attention/attention/i_proj/i_proj/qkv_proj/weight"] = st(qkv)
        a[base + "self_attention/attention/o_proj/weight"] = st(lambda i: g(i, "attn.o.weight").reshape(dm, nq, dh))
        if layers[0] in moe_layers:
            assert all(i in moe_layers for i in layers)
            a[base + "feed_forward/gate_weight"] = st(lambda i: g(i, "moe.router.weight").T)
            a[base + "feed_forward/wi_0_weight"] = st(lambda i: g(i, "moe.gate.weight").transpose(0, 2, 1))
            a[base + "feed_forward/wi_1_weight"] = st(lambda i: g(i, "moe.up.weight").transpose(0, 2, 1))
            a[base + "feed_forward/wo_weight"] = st(lambda i: g(i, "moe.down.weight").transpose(0, 2, 1))
        else:
            assert not any(i in moe_layers for i in layers)
            a[base + "feed_forward/linear1_0/weight"] = st(lambda i: g(i, "mlp.gate.weight").T)
            a[base + "feed_forward/linear1_1/weight"] = st(lambda i: g(i, "mlp.up.weight").T)
            a[base + "feed_forward/linear2/weight"] = st(lambda i: g(i, "mlp.down.weight").T)
    return {k: np.ascontiguousarray(x, np.float32) for k, x in a.items()}


def is_f32_path(path: str) -> bool:
    """Norm parameters are kept in float32; everything else is bfloat16."""
    return bool(re.search(r"(^|/)(input_norm|output_norm|norm\d?|down_norm)/(scale|bias)$", path))


def chunk_shape(path: str, shape: tuple) -> list:
    """Per-'device' shard shapes, as jax's _get_metadata would record them: split the leading
    (repeat / vocab) axis and, for rank >= 3, the next axis, giving several chunk files."""
    ch = list(shape)
    if path.endswith("emb/token_emb/weight") or path.endswith("lm_head/weight"):
        ch[0] = 32  # vocab not a multiple of 32 -> a partial edge chunk
    elif len(shape) >= 2:
        ch[0] = max(1, math.ceil(shape[0] / 2))
        if len(shape) >= 3:
            ch[1] = max(1, math.ceil(shape[1] / 2))
    return ch


def tree_sorted(paths):
    """jax.tree_util flattening order of a nested dict: sorted keys at every level."""
    return sorted(paths, key=lambda p: p.split("/"))


def write_axlearn(name: str, moe: bool) -> None:
    import tensorstore as ts

    d = fresh_dir(name)
    step = 100
    step_dir = os.path.join(d, "checkpoints", f"step_{step:08d}")
    cfg = axlearn_config(moe)
    shapes = canonical_shapes(cfg)
    canon = gen_canonical(shapes, 201 if moe else 200)
    arrays = canonical_to_axlearn(canon, cfg)
    # Compressor: AXLearn (via jax serialization) asks for {"id": "zstd"}, which tensorstore
    # records as level 1.  The dense fixture pins level 3 explicitly; the MoE one uses the
    # library default, so both spellings are covered.
    compressor = {"id": "zstd"} if moe else {"id": "zstd", "level": 3}
    entries = {}
    for path, val in arrays.items():
        dtype = "float32" if is_f32_path(path) else "bfloat16"
        entries[path] = (val, dtype)
    # Non-model state every real TrainerState checkpoint also carries (a reader must skip it).
    entries["prng_key"] = (np.array([0, 42], dtype=np.uint32), "uint32")
    entries["learner/optimizer/0/count"] = (np.array(step, dtype=np.int32), "int32")
    index = [["step", step]]
    order = ["prng_key"] + tree_sorted([p for p in entries if p.startswith("model/")]) + \
        tree_sorted([p for p in entries if p.startswith("learner/")])
    for path in order:
        val, dtype = entries[path]
        shape = tuple(int(x) for x in val.shape)
        if dtype == "bfloat16":
            assert np.array_equal(bf16_round(val), val), path
            data = val.astype(ts.bfloat16.numpy_dtype)
        else:
            data = val
        spec = {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": os.path.join(step_dir, "gda", path)},
            "dtype": dtype,
            "metadata": {"compressor": compressor, "shape": list(shape),
                         "chunks": chunk_shape(path, shape) if shape else []},
        }
        t = ts.open(spec, create=True, open=True).result()
        t.write(data).result()
        index.append([path, {"dtype": dtype, "shape": str(shape)}])
    # AXLearn's write_index_file: json.dumps(index) with default separators, written last.
    with open(os.path.join(step_dir, "index"), "w") as f:
        f.write(json.dumps(index))
    write_json(os.path.join(d, "mm1pack_config.json"), cfg)

    # Self-check: read everything back through tensorstore and map forward independently.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_fixtures  # numpy-only forward mapping

    back = {}
    for path in arrays:
        t = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(step_dir, "gda", path)}}).result()
        back[path] = np.asarray(t.read().result()).astype(np.float32)
    fwd = check_fixtures.map_axlearn(back, cfg)
    assert sorted(fwd) == sorted(canon), (sorted(set(fwd) ^ set(canon)))[:5]
    for k in canon:
        assert np.array_equal(fwd[k], canon[k]), k
    write_expected(d, "axlearn", "bf16+f32", canon)


# ----------------------------------------------------------------------------------------------


FIXTURE_MAKERS = {
    "llava-llama": make_llava_llama,
    "llava-mixtral": make_llava_mixtral,
    "llava-mixtral-v5": make_llava_mixtral_v5,
    "llama-text": make_llama_text,
    "honeybee-dense": lambda: make_honeybee("honeybee-dense", moe=False),
    "honeybee-moe": lambda: make_honeybee("honeybee-moe", moe=True),
    "axlearn-dense": lambda: write_axlearn("axlearn-dense", moe=False),
    "axlearn-moe": lambda: write_axlearn("axlearn-moe", moe=True),
    "openclip-vit": make_openclip,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURE_MAKERS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(FIXTURES, exist_ok=True)
    for name in args.only or FIXTURE_MAKERS:
        FIXTURE_MAKERS[name]()
        print(f"wrote fixtures/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
