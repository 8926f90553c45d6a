#!/usr/bin/env python3
"""Reference forward-pass outputs for the fixtures (formats/probes.md).

Requires what scripts/make_fixtures.py requires (torch, transformers 5.23, timm, open_clip_torch,
safetensors, tokenizers, numpy, Pillow).  Run from anywhere:
    python3 scripts/make_references.py [--only NAME ...] [--skip-images]

Writes, deterministically:
  fixtures/images/*.png, preprocess.json, *.npy, *.png (336 crops), grids.json
  fixtures/<name>/reference/probes.jsonl and <probe>.{pixel_values,vit_features,connector,
  hidden_states,logits}.npy

How the references are computed:
  * The torch model is loaded from the fixture files with the library (transformers
    from_pretrained / load_state_dict, make_fixtures.Honeybee + load_state_dict, open_clip CLIP +
    load_state_dict).  The canonical tensors are re-derived from the loaded modules with
    make_fixtures' functions (AXLearn: regenerated with make_fixtures.gen_canonical) and their f32
    digests are checked against the fixture's expected.json, so the references belong to exactly
    the checkpoint on disk.
  * Library forward (transformers / timm / open_clip), in float32 (bf16/f16 weights widened
    exactly), gives the references for llava-*, llama-text, honeybee-*, openclip-vit.
  * canonical_forward() below, an independent float32 torch implementation over canonical tensors
    and the canonical config, is checked against the library forward on every fixture that has
    one, and gives the references for axlearn-* (interleaved MoE has no transformers class).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import warnings
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402  (builders, canonical mappings; importing has no side effects)

ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "fixtures")
IMAGES = os.path.join(FIXTURES, "images")

CLIP_MEAN, CLIP_STD = mf.CLIP_MEAN, mf.CLIP_STD
AGREEMENT = {}  # fixture -> {stage: max |library - canonical|}
ROUTER_GAP = [float("inf")]  # smallest (k-th - (k+1)-th) router probability seen: how fragile expert choice is

# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------

# name -> (width, height, seed).  a-c are the probe images; all five are preprocessing tests.
TEST_IMAGES = {
    "a_37x23": (37, 23, 11),   # wider than tall, one side above 28 and one below
    "b_28x28": (28, 28, 12),   # exactly the model size
    "c_45x61": (45, 61, 13),   # taller than wide, larger than 28
    "d_19x13": (19, 13, 14),   # smaller than 28 on both sides
    "e_57x41": (57, 41, 15),  # larger, non-square
}
PROBE_IMAGES = ["a_37x23", "b_28x28", "c_45x61"]


def make_image(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth fixed-seed RGB pattern (a few sinusoids + a gradient + a little noise), uint8 HWC."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy = rng.uniform(0.05, 0.4, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        v = 0.5 + 0.25 * np.sin(fx * x + ph[0]) * np.cos(fy * y + ph[1])
        v += 0.2 * (x / max(w - 1, 1) - 0.5) * (1 if c != 1 else -1) + 0.15 * (y / max(h - 1, 1) - 0.5)
        v += 0.02 * rng.standard_normal((h, w))
        out[..., c] = v
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def write_png(path: str, arr: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", optimize=False, compress_level=9)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def load_image(name: str):
    from PIL import Image

    return Image.open(os.path.join(IMAGES, name + ".png")).convert("RGB")


def pil_processor(**kw):
    """CLIPImageProcessorPil = the PIL/NumPy backend, i.e. the classic CLIPImageProcessor of
    transformers 4.x (PIL bicubic resize with PIL's antialiasing, uint8 result, floor-centred crop)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kw)


def tv_processor(**kw):
    """transformers 5.23's CLIPImageProcessor, which is the torchvision backend."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(**kw)


PROC_CROP = lambda s: dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s},  # noqa: E731
                           do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3,
                           rescale_factor=1 / 255, do_resize=True, do_rescale=True, do_normalize=True,
                           do_convert_rgb=True)
PROC_SQUASH = lambda s: dict(size={"height": s, "width": s}, do_center_crop=False,  # noqa: E731
                             image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3, rescale_factor=1 / 255,
                             do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)


def run_proc(proc, names) -> np.ndarray:
    out = proc([load_image(n) for n in names], return_tensors="np")["pixel_values"]
    return np.ascontiguousarray(out, np.float32)


def unnormalise_u8(px: np.ndarray) -> np.ndarray:
    """Processor float output [3,S,S] -> the uint8 pixels it was made from (exact for PIL backend)."""
    m = np.array(CLIP_MEAN, np.float64)[:, None, None]
    s = np.array(CLIP_STD, np.float64)[:, None, None]
    v = (px.astype(np.float64) * s + m) * 255.0
    u = np.round(v)
    assert np.abs(v - u).max() < 1e-3, np.abs(v - u).max()
    return u.astype(np.uint8)


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, "<f4").tobytes()).hexdigest()


def make_images() -> None:
    os.makedirs(IMAGES, exist_ok=True)
    for n, (w, h, seed) in TEST_IMAGES.items():
        write_png(os.path.join(IMAGES, n + ".png"), make_image(w, h, seed))
    cases = {
        "crop28": ("shortest_edge_crop", PROC_CROP(28)),
        "crop336": ("shortest_edge_crop", PROC_CROP(336)),
        "squash28": ("squash", PROC_SQUASH(28)),
    }
    doc = {
        "note": "pixel_values of transformers 5.23 CLIPImageProcessorPil (PIL backend = classic "
                "CLIPImageProcessor) for each image and case. 28-pixel cases: <image>.<case>.npy float32 "
                "[3,S,S] exactly as returned. 336-pixel case: <image>.<case>.png holds the uint8 pixels after "
                "resize+crop (before rescale/normalise); the float output is (float32(u8 * rescale_factor computed "
                "in float64) - mean) / std in float32, and its sha256 is recorded. tv_max_abs_u8: the largest difference, in uint8 levels, "
                "between the PIL backend and 5.23's default torchvision-backend CLIPImageProcessor.",
        "cases": {}, "images": {},
    }
    for case, (kind, kw) in cases.items():
        cfg = {k: v for k, v in kw.items()}
        cfg["image_processor_type"] = "CLIPImageProcessorPil"
        doc["cases"][case] = {"resize": kind, "processor_config": cfg}
    for n, (w, h, _) in TEST_IMAGES.items():
        ent = {"file": n + ".png", "width": w, "height": h, "outputs": {}}
        for case, (kind, kw) in cases.items():
            px = run_proc(pil_processor(**kw), [n])[0]
            tv = run_proc(tv_processor(**kw), [n])[0]
            u8 = unnormalise_u8(px)
            tv_diff = int(np.abs(unnormalise_u8_loose(tv).astype(int) - u8.astype(int)).max())
            o = {"shape": list(px.shape), "sha256_f32": sha(px), "tv_max_abs_u8": tv_diff}
            if px.shape[-1] <= 28:
                f = f"{n}.{case}.npy"
                np.save(os.path.join(IMAGES, f), px)
                o["npy"] = f
            else:
                f = f"{n}.{case}.png"
                write_png(os.path.join(IMAGES, f), u8.transpose(1, 2, 0))
                o["png_u8"] = f
            ent["outputs"][case] = o
        doc["images"][n] = ent
    mf.write_json(os.path.join(IMAGES, "preprocess.json"), doc)
    make_grids()


def unnormalise_u8_loose(px: np.ndarray) -> np.ndarray:
    m = np.array(CLIP_MEAN, np.float64)[:, None, None]
    s = np.array(CLIP_STD, np.float64)[:, None, None]
    return np.clip(np.round((px.astype(np.float64) * s + m) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# dynamic image splitting (formats/probes.md, "Dynamic image splitting")
# ----------------------------------------------------------------------------------------------


def select_grid(h: int, w: int, r: int, n_min: int, n_max: int):
    """Returns (n_h, n_w, regime, value) with value the padding or the kept area (exact fractions)."""
    cands = [(nh, nw) for nh in range(1, n_max + 1) for nw in range(1, n_max + 1) if n_min <= nh * nw <= n_max]
    assert cands, (n_min, n_max)

    def fitted_area(nh, nw):  # h_g * w_g with s = min(nh r / h, nw r / w), exact
        s = min(Fraction(nh * r, h), Fraction(nw * r, w))
        return h * w * s * s

    cover = [(nh, nw) for nh, nw in cands if nh * r >= h and nw * r >= w]
    if cover:
        key = lambda g: (g[0] * g[1] * r * r - fitted_area(*g), g[0] * g[1], g[0])  # noqa: E731
        best = min(cover, key=key)
        return best[0], best[1], "cover", key(best)[0]
    key = lambda g: (-fitted_area(*g), g[0] * g[1], g[0])  # noqa: E731
    best = min(cands, key=key)
    return best[0], best[1], "downscale", -key(best)[0]


GRID_CASES = [
    # (h, w, r, n_min, n_max)
    (800, 1200, 400, 1, 4),    # the worked example -> 2x2
    (400, 400, 400, 1, 4), (800, 800, 400, 1, 4), (1200, 1200, 400, 1, 9), (400, 800, 400, 1, 4),
    (800, 400, 400, 1, 4), (399, 401, 400, 1, 4), (401, 399, 400, 1, 4), (401, 401, 400, 1, 4),
    (10, 10, 400, 1, 4), (1, 1, 378, 1, 9), (10, 10, 400, 2, 4), (300, 300, 400, 4, 4),
    (50, 2000, 400, 1, 4), (2000, 50, 400, 1, 4), (30, 4000, 378, 1, 9), (100, 1000, 400, 1, 9),
    (2000, 2000, 400, 1, 4), (4000, 3000, 378, 1, 9), (1080, 1920, 378, 1, 9), (1920, 1080, 378, 1, 9),
    (756, 1134, 378, 1, 9), (378, 1512, 378, 1, 4), (378, 1513, 378, 1, 4), (500, 700, 378, 4, 9),
    (640, 480, 336, 1, 6), (1000, 1000, 336, 3, 3), (123, 4567, 224, 2, 16), (768, 1024, 400, 1, 4),
    (800, 1201, 400, 1, 4),
]


def make_grids() -> None:
    out = []
    for h, w, r, a, b in GRID_CASES:
        nh, nw, regime, val = select_grid(h, w, r, a, b)
        out.append({"height": h, "width": w, "r": r, "n_min": a, "n_max": b, "n_h": nh, "n_w": nw,
                    "regime": regime, ("padding" if regime == "cover" else "fitted_area"): float(val)})
    assert (out[0]["n_h"], out[0]["n_w"]) == (2, 2)
    mf.write_json(os.path.join(IMAGES, "grids.json"), {
        "note": "MM1.5 dynamic image splitting grid selection, formats/probes.md 'Dynamic image splitting'. "
                "height/width of the image in pixels, tile side r, n_min <= n_h*n_w <= n_max; expected (n_h, n_w). "
                "padding / fitted_area are informative (float of the exact rational).",
        "cases": out})


# ----------------------------------------------------------------------------------------------
# canonical forward (independent of the libraries' model code)
# ----------------------------------------------------------------------------------------------


def T(c, name):
    return torch.from_numpy(np.ascontiguousarray(c[name], np.float32))


def layer_norm(x, c, p, eps):
    return F.layer_norm(x, (x.shape[-1],), T(c, p + ".weight"), T(c, p + ".bias"), eps)


def act(name, x):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(name)


def vit_forward(c, v, px):
    """px [B,3,S,S] -> (hidden list [embeddings, block1..L], features handed to the connector)."""
    E, P, nh = v["hidden_size"], v["patch_size"], v["num_heads"]
    eps = v["layer_norm_eps"]
    x = F.conv2d(px, T(c, "vit.patch_embed.weight"), T(c, "vit.patch_embed.bias") if v["patch_bias"] else None, stride=P)
    B = x.shape[0]
    x = x.flatten(2).transpose(1, 2)  # [B, g*g, E], row-major patches
    if v["class_token"]:
        x = torch.cat([T(c, "vit.class_embed").expand(B, 1, E), x], 1)
    x = x + T(c, "vit.pos_embed")[None]
    if v["pre_norm"]:
        x = layer_norm(x, c, "vit.pre_norm", eps)
    hs = [x]
    hd = E // nh
    for i in range(v["num_layers"]):
        p = f"vit.blocks.{i}."
        y = layer_norm(x, c, p + "norm1", eps)
        q, k, vv = (F.linear(y, T(c, p + f"attn.{a}.weight"), T(c, p + f"attn.{a}.bias")).view(B, -1, nh, hd).transpose(1, 2)
                    for a in "qkv")
        a = torch.softmax((q @ k.transpose(-1, -2)) * hd ** -0.5, -1) @ vv
        x = x + F.linear(a.transpose(1, 2).reshape(B, -1, E), T(c, p + "attn.o.weight"), T(c, p + "attn.o.bias"))
        y = layer_norm(x, c, p + "norm2", eps)
        y = F.linear(act(v["activation"], F.linear(y, T(c, p + "mlp.fc1.weight"), T(c, p + "mlp.fc1.bias"))),
                     T(c, p + "mlp.fc2.weight"), T(c, p + "mlp.fc2.bias"))
        x = x + y
        hs.append(x)
    f = hs[v["feature_layer"]]
    if v["post_norm_features"]:
        f = layer_norm(f, c, "vit.post_norm", eps)
    if v["drop_class_token"]:
        f = f[:, 1:]
    return hs, f


def ln2d(x, c, p, eps):
    return layer_norm(x.permute(0, 2, 3, 1), c, p, eps).permute(0, 3, 1, 2)


def regblock(x, c, p, eps):
    sc = x
    y = F.silu(ln2d(F.conv2d(x, T(c, p + "conv1.weight")), c, p + "norm1", eps))
    H = y.shape[1]
    y = F.silu(ln2d(F.conv2d(y, T(c, p + "conv2.weight"), padding=1, groups=H), c, p + "norm2", eps))
    s = y.mean((2, 3), keepdim=True)
    s = F.silu(F.conv2d(s, T(c, p + "se.fc1.weight"), T(c, p + "se.fc1.bias")))
    y = y * torch.sigmoid(F.conv2d(s, T(c, p + "se.fc2.weight"), T(c, p + "se.fc2.bias")))
    y = ln2d(F.conv2d(y, T(c, p + "conv3.weight")), c, p + "norm3", eps)
    if p + "down.weight" in c:
        sc = ln2d(F.conv2d(sc, T(c, p + "down.weight")), c, p + "down_norm", eps)
    return F.silu(y + sc)


def connector_forward(c, cn, f):
    if cn["kind"] == "mlp":
        return F.linear(act(cn.get("activation", "gelu"), F.linear(f, T(c, "conn.fc1.weight"), T(c, "conn.fc1.bias"))),
                        T(c, "conn.fc2.weight"), T(c, "conn.fc2.bias"))
    assert cn["kind"] == "c_abstractor"
    eps = cn["layer_norm_eps"]
    x = f
    if cn["prenorm"]:
        x = layer_norm(x, c, "conn.prenorm", eps)
    if cn["pos_emb"]:
        x = x + T(c, "conn.pos_embed")[None]
    B, N, E = x.shape
    g = math.isqrt(N)
    x = x.transpose(1, 2).reshape(B, E, g, g)
    for b in range(cn["depth"]):
        x = regblock(x, c, f"conn.s1.b{b}.", eps)
    hw = math.isqrt(cn["num_queries"])
    x = F.adaptive_avg_pool2d(x, (hw, hw))
    for b in range(cn["depth"]):
        x = regblock(x, c, f"conn.s2.b{b}.", eps)
    x = x.flatten(2).transpose(1, 2)
    for k in range(cn["mlp_depth"]):
        if k:
            x = F.silu(x)
        x = F.linear(x, T(c, f"conn.readout.{k}.weight"), T(c, f"conn.readout.{k}.bias"))
    return x


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def decoder_forward(c, l, emb):
    """emb [T, D] -> (hidden [L+1, T, D]: inputs of layers 0..L-1, then final normed; logits [T, V])."""
    Tn, D = emb.shape
    nq, nkv, dh, eps = l["num_heads"], l["num_kv_heads"], l["head_dim"], l["rms_norm_eps"]
    assert not l.get("rope_scaling"), "rope_scaling not implemented"
    inv = 1.0 / (l["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    fr = torch.arange(Tn).float()[:, None] * inv[None]
    cos, sin = torch.cat([fr, fr], -1).cos(), torch.cat([fr, fr], -1).sin()

    def rope(x):  # [h, T, dh], half rotation
        x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    mask = torch.full((Tn, Tn), float("-inf")).triu(1)
    moe_layers = set(l["moe"]["layers"]) if l.get("moe") else set()
    x = emb
    hs = []
    for i in range(l["num_layers"]):
        hs.append(x)
        p = f"llm.layers.{i}."
        y = rms(x, T(c, p + "attn_norm.weight"), eps)
        bias = (lambda a: T(c, p + f"attn.{a}.bias")) if l.get("attention_bias") else (lambda a: None)
        q = F.linear(y, T(c, p + "attn.q.weight"), bias("q")).view(Tn, nq, dh).transpose(0, 1)
        k = F.linear(y, T(c, p + "attn.k.weight"), bias("k")).view(Tn, nkv, dh).transpose(0, 1)
        v = F.linear(y, T(c, p + "attn.v.weight"), bias("v")).view(Tn, nkv, dh).transpose(0, 1)
        q, k = rope(q), rope(k)
        rep = nq // nkv
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        a = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5 + mask, -1) @ v
        x = x + F.linear(a.transpose(0, 1).reshape(Tn, nq * dh), T(c, p + "attn.o.weight"))
        y = rms(x, T(c, p + "mlp_norm.weight"), eps)
        if i in moe_layers:
            m = l["moe"]
            probs = torch.softmax(F.linear(y, T(c, p + "moe.router.weight")), -1)
            top_w, top_i = torch.topk(probs, m["top_k"], -1)
            if m["top_k"] < m["num_experts"]:
                srt = probs.sort(-1, descending=True).values
                ROUTER_GAP[0] = min(ROUTER_GAP[0], float((srt[:, m["top_k"] - 1] - srt[:, m["top_k"]]).min()))
            if m.get("renormalize", True):
                top_w = top_w / top_w.sum(-1, keepdim=True)
            G, U, Dn = T(c, p + "moe.gate.weight"), T(c, p + "moe.up.weight"), T(c, p + "moe.down.weight")
            out = torch.zeros_like(y)
            for e in range(m["num_experts"]):
                sel = (top_i == e)
                tok = sel.any(-1).nonzero()[:, 0]
                if len(tok) == 0:
                    continue
                w = (top_w * sel)[tok].sum(-1, keepdim=True)
                ye = y[tok]
                out[tok] += w * F.linear(F.silu(F.linear(ye, G[e])) * F.linear(ye, U[e]), Dn[e])
            y = out
        else:
            y = F.linear(act(l.get("activation", "silu"), F.linear(y, T(c, p + "mlp.gate.weight"))) *
                         F.linear(y, T(c, p + "mlp.up.weight")), T(c, p + "mlp.down.weight"))
        x = x + y
    x = rms(x, T(c, "llm.norm.weight"), eps)
    hs.append(x)
    head = T(c, "llm.embed.weight") if l.get("tie_embeddings") else T(c, "llm.head.weight")
    return torch.stack(hs), F.linear(x, head)


def expand_embeddings(c, ids, image_token, image_embeds):
    """Each image token is replaced in place by its image's Q embeddings (images in order)."""
    E = T(c, "llm.embed.weight")
    parts, k = [], 0
    for t in ids:
        if t == image_token:
            parts.append(image_embeds[k])
            k += 1
        else:
            parts.append(E[t][None])
    assert k == (0 if image_embeds is None else len(image_embeds))
    return torch.cat(parts, 0)


def canonical_forward(c, cfg, ids, px, image_token):
    out = {}
    emb_img = None
    if px is not None:
        _, f = vit_forward(c, cfg["vision"], px)
        out["vit_features"] = f
        if cfg.get("connector"):
            emb_img = connector_forward(c, cfg["connector"], f)
            out["connector"] = emb_img
    if ids is not None and cfg.get("llm"):
        emb = expand_embeddings(c, ids, image_token, emb_img)
        out["hidden_states"], out["logits"] = decoder_forward(c, cfg["llm"], emb)
    return out


# ----------------------------------------------------------------------------------------------
# fixtures: loading, canonical tensors, library forward
# ----------------------------------------------------------------------------------------------


def check_digests(name, canon):
    exp = json.load(open(os.path.join(FIXTURES, name, "expected.json")))["tensors"]
    assert sorted(exp) == sorted(canon), (name, sorted(set(exp) ^ set(canon))[:5])
    for k, v in canon.items():
        assert sha(v) == exp[k]["sha256_f32"], (name, k)


def clip_vision_cfg(vc, feature_layer, drop_class):
    return {"hidden_size": vc.hidden_size, "num_layers": vc.num_hidden_layers, "num_heads": vc.num_attention_heads,
            "patch_size": vc.patch_size, "image_size": vc.image_size, "class_token": True, "patch_bias": False,
            "pre_norm": True, "layer_norm_eps": vc.layer_norm_eps, "activation": vc.hidden_act,
            "feature_layer": feature_layer, "post_norm_features": False, "drop_class_token": drop_class}


def decoder_cfg(tc, tie):
    rp = getattr(tc, "rope_parameters", None) or {}
    moe = None
    if getattr(tc, "num_local_experts", None):
        moe = {"num_experts": tc.num_local_experts, "top_k": tc.num_experts_per_tok, "renormalize": True,
               "intermediate_size": tc.intermediate_size, "layers": list(range(tc.num_hidden_layers))}
    return {"vocab_size": tc.vocab_size, "hidden_size": tc.hidden_size, "num_layers": tc.num_hidden_layers,
            "num_heads": tc.num_attention_heads, "num_kv_heads": tc.num_key_value_heads,
            "head_dim": getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            "rms_norm_eps": tc.rms_norm_eps, "rope_theta": rp.get("rope_theta", 10000.0),
            "rope_scaling": None if rp.get("rope_type", "default") == "default" else rp,
            "tie_embeddings": tie, "activation": tc.hidden_act, "moe": moe}


def to_f32(m):
    return m.to(torch.float32).eval()


def set_eager(m):
    for mod in m.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            try:
                cfg._attn_implementation = "eager"
            except Exception:
                pass


class Fixture:
    """name, cfg (canonical config), canon (canonical f32 tensors), image_token, processor kwargs,
    lib(ids, px) -> dict of library outputs or None."""


def load_llava(name):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    d = os.path.join(FIXTURES, name)
    if name.endswith("-v5"):
        # a plain state_dict under transformers 5.23's in-memory names: build from config and load it
        from safetensors.torch import load_file

        cfg = LlavaConfig.from_pretrained(d)
        cfg._attn_implementation = "eager"
        sd = load_file(os.path.join(d, "model.safetensors"))
        m = LlavaForConditionalGeneration(cfg).to(next(iter(sd.values())).dtype)
        m.load_state_dict(sd, strict=True)
    else:
        m = LlavaForConditionalGeneration.from_pretrained(d, attn_implementation="eager")
    src_dtype = next(m.parameters()).dtype
    m = to_f32(m)
    set_eager(m)
    canon = mf.llava_canon(m)
    check_digests(name, canon)
    mc = m.config
    fx = Fixture()
    fx.name, fx.canon = name, canon
    fx.cfg = {"vision": clip_vision_cfg(mc.vision_config, mc.vision_feature_layer,
                                        mc.vision_feature_select_strategy == "default"),
              "connector": {"kind": "mlp", "activation": mc.projector_hidden_act},
              "llm": decoder_cfg(mc.text_config, False)}
    fx.image_token = mc.image_token_id
    fx.vocab = mc.text_config.vocab_size
    pp = os.path.join(d, "preprocessor_config.json")
    if os.path.exists(pp):
        kw = {k: v for k, v in json.load(open(pp)).items() if k != "image_processor_type"}
        fx.proc_kw, fx.proc_note = kw, "preprocessor_config.json of the fixture (CLIPImageProcessorPil)"
    else:
        fx.proc_kw = PROC_CROP(mc.vision_config.image_size)
        fx.proc_note = ("no preprocessor_config.json: CLIPImageProcessorPil with shortest_edge = crop = "
                        f"{mc.vision_config.image_size} (vision_config.image_size), OpenAI CLIP mean/std")
    fx.tokenizer = os.path.join(d, "tokenizer.json") if os.path.exists(os.path.join(d, "tokenizer.json")) else None

    def lib(ids, px):
        out = {}
        q = None
        if px is not None:
            vt = m.model.vision_tower(torch.from_numpy(px), output_hidden_states=True)
            f = vt.hidden_states[mc.vision_feature_layer]
            if mc.vision_feature_select_strategy == "default":
                f = f[:, 1:]
            out["vit_features"] = f
            feats = m.model.get_image_features(pixel_values=torch.from_numpy(px))
            feats = getattr(feats, "pooler_output", feats)
            feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
            out["connector"] = feats
            assert torch.equal(feats, m.model.multi_modal_projector(f)), "projector(features) != get_image_features"
            q = feats.shape[1]
        exp = []
        for t in ids:
            exp += [t] * q if t == mc.image_token_id else [t]
        kw = {"pixel_values": torch.from_numpy(px)} if px is not None else {}
        r = m(input_ids=torch.tensor([exp]), output_hidden_states=True, **kw)
        out["hidden_states"] = torch.stack([h[0] for h in r.hidden_states])
        out["logits"] = r.logits[0]
        out["_expanded_ids"] = exp
        return out

    fx.lib = lib
    fx.src_dtype = str(src_dtype)
    return fx


def load_llama_text(name):
    from transformers import LlamaForCausalLM

    d = os.path.join(FIXTURES, name)
    m = to_f32(LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager"))
    c = mf.Canon()
    mf.canon_hf_decoder(c, m.model, m.lm_head, tied=True)
    check_digests(name, c)
    fx = Fixture()
    fx.name, fx.canon = name, c
    fx.cfg = {"vision": None, "connector": None, "llm": decoder_cfg(m.config, m.config.tie_word_embeddings)}
    fx.image_token, fx.vocab, fx.tokenizer, fx.proc_kw = None, m.config.vocab_size, None, None

    def lib(ids, px):
        r = m(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return {"hidden_states": torch.stack([h[0] for h in r.hidden_states]), "logits": r.logits[0]}

    fx.lib = lib
    return fx


HONEYBEE_IMAGE_TOKEN = -1  # Honeybee's own convention: negative ids in input_ids mark images


def load_honeybee(name):
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    d = os.path.join(FIXTURES, name)
    hc = json.load(open(os.path.join(d, "config.json")))
    vd = {k: v for k, v in hc["vision_config"].items()
          if k not in ("encoder_type", "pretrained_vision_name_or_path", "image_mean", "image_std")}
    vcfg = CLIPVisionConfig(**vd)
    td = dict(hc["text_config"])
    moe = td.get("model_type") == "mixtral"
    tcfg = (MixtralConfig if moe else LlamaConfig)(**td)
    for c_ in (vcfg, tcfg):
        c_._attn_implementation = "eager"
    lm = (MixtralForCausalLM if moe else LlamaForCausalLM)(tcfg)
    hb = mf.Honeybee(vcfg, hc["projector_config"], lm)
    sd = load_file(os.path.join(d, "model.safetensors"))
    sd = {("vision_model." + k[len("vision_model.vision_model."):] if k.startswith("vision_model.vision_model.") else k): v
          for k, v in sd.items()}
    src_dtype = next(iter(sd.values())).dtype
    hb = hb.to(src_dtype)
    hb.load_state_dict(sd, strict=True)
    hb = to_f32(hb)
    set_eager(hb)
    canon = mf.honeybee_canon(hb)
    check_digests(name, canon)
    pc = hc["projector_config"]
    fx = Fixture()
    fx.name, fx.canon = name, canon
    fx.cfg = {"vision": clip_vision_cfg(vcfg, pc["feature_layer_index"], True),
              "connector": {"kind": "c_abstractor", "depth": pc["depth"], "mlp_depth": pc["mlp_depth"],
                            "num_queries": pc["num_query_tokens"], "pos_emb": pc["pos_emb"], "prenorm": pc["prenorm"],
                            "layer_norm_eps": 1e-5},
              "llm": decoder_cfg(tcfg, False)}
    fx.image_token, fx.vocab, fx.tokenizer = HONEYBEE_IMAGE_TOKEN, tcfg.vocab_size, None
    fx.proc_kw = PROC_CROP(vcfg.image_size)
    fx.proc_note = ("no preprocessor_config.json (canonical image_processor is null): CLIPImageProcessorPil with "
                    f"shortest_edge = crop = {vcfg.image_size} (vision_config.image_size) and vision_config.image_mean/std")
    assert hc["vision_config"]["image_mean"] == CLIP_MEAN and hc["vision_config"]["image_std"] == CLIP_STD
    fx.src_dtype = str(src_dtype)
    ab = hb.abstractor

    def lib(ids, px):
        out = {}
        img = None
        if px is not None:
            vt = hb.vision_model(torch.from_numpy(px), output_hidden_states=True)
            f = vt.hidden_states[pc["feature_layer_index"]][:, 1:]  # postprocess_for_projector drops CLS
            out["vit_features"] = f
            x = f + ab.pos_emb  # Projector.forward: (prenorm) -> + pos_emb -> _forward
            B, L, E = x.shape
            g = math.isqrt(L)
            x = x.transpose(1, 2).reshape(B, E, g, g)  # ConvProjector._forward ('b (h w) d -> b d h w')
            x = ab.net(x)
            x = x.flatten(2).transpose(1, 2)
            img = ab.readout(x)
            out["connector"] = img
        E_ = hb.language_model.model.embed_tokens
        parts, k = [], 0
        for t in ids:
            if t == HONEYBEE_IMAGE_TOKEN:
                parts.append(img[k])
                k += 1
            else:
                parts.append(E_(torch.tensor([t])))
        emb = torch.cat(parts, 0)[None]
        r = hb.language_model(inputs_embeds=emb, output_hidden_states=True)
        out["hidden_states"] = torch.stack([h[0] for h in r.hidden_states])
        out["logits"] = r.logits[0]
        return out

    fx.lib = lib
    return fx


def load_axlearn(name):
    d = os.path.join(FIXTURES, name)
    cfg = json.load(open(os.path.join(d, "mm1pack_config.json")))
    moe = name.endswith("moe")
    assert cfg == json.loads(json.dumps(mf.axlearn_config(moe)))
    canon = mf.gen_canonical(mf.canonical_shapes(cfg), 201 if moe else 200)
    check_digests(name, canon)
    fx = Fixture()
    fx.name, fx.canon, fx.cfg = name, canon, cfg
    fx.image_token, fx.vocab, fx.tokenizer = cfg["image_token_id"], cfg["llm"]["vocab_size"], None
    ip = cfg["image_processor"]
    assert ip["resize"] == "squash" and ip["image_mean"] == CLIP_MEAN and ip["image_std"] == CLIP_STD
    fx.proc_kw = PROC_SQUASH(ip["image_size"])
    fx.proc_note = (f"canonical image_processor (mm1pack_config.json): squash resize to {ip['image_size']}x"
                    f"{ip['image_size']} -> CLIPImageProcessorPil(do_center_crop=False, size={{height, width}})")
    fx.lib = None
    fx.src_dtype = "bf16 (+ f32 norms)"
    return fx


def load_openclip(name):
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    d = os.path.join(FIXTURES, name)
    oc = json.load(open(os.path.join(d, "open_clip_config.json")))
    mc = oc["model_cfg"]
    m = CLIP(embed_dim=mc["embed_dim"], vision_cfg=mc["vision_cfg"], text_cfg=mc["text_cfg"],
             quick_gelu=mc["quick_gelu"]).eval()
    vis = m.visual
    sd = load_file(os.path.join(d, "open_clip_model.safetensors"))
    vis.load_state_dict({k[len("visual."):]: v for k, v in sd.items()}, strict=True)
    c = mf.Canon()
    c.put("vit.patch_embed.weight", vis.conv1.weight)
    c.put("vit.class_embed", vis.class_embedding)
    c.put("vit.pos_embed", vis.positional_embedding)
    c.put("vit.pre_norm.weight", vis.ln_pre.weight)
    c.put("vit.pre_norm.bias", vis.ln_pre.bias)
    for i, blk in enumerate(vis.transformer.resblocks):
        p = f"vit.blocks.{i}."
        at = blk.attn
        for a, ww, bb in zip("qkv", at.in_proj_weight.chunk(3, 0), at.in_proj_bias.chunk(3, 0)):
            c.put(p + f"attn.{a}.weight", ww)
            c.put(p + f"attn.{a}.bias", bb)
        c.put(p + "attn.o.weight", at.out_proj.weight)
        c.put(p + "attn.o.bias", at.out_proj.bias)
        for n, mod in (("norm1", blk.ln_1), ("norm2", blk.ln_2), ("mlp.fc1", blk.mlp.c_fc), ("mlp.fc2", blk.mlp.c_proj)):
            c.put(p + f"{n}.weight", mod.weight)
            c.put(p + f"{n}.bias", mod.bias)
    c.put("vit.post_norm.weight", vis.ln_post.weight)
    c.put("vit.post_norm.bias", vis.ln_post.bias)
    c.put("vit.head.weight", vis.proj.t())
    check_digests(name, c)
    vc = mc["vision_cfg"]
    fx = Fixture()
    fx.name, fx.canon = name, c
    fx.cfg = {"vision": {"hidden_size": vc["width"], "num_layers": vc["layers"], "num_heads": vc["width"] // vc["head_width"],
                         "patch_size": vc["patch_size"], "image_size": vc["image_size"], "class_token": True,
                         "patch_bias": False, "pre_norm": True, "layer_norm_eps": 1e-5, "activation": "quick_gelu",
                         "feature_layer": -1, "post_norm_features": True, "drop_class_token": False},
              "connector": None, "llm": None}
    fx.image_token, fx.vocab, fx.tokenizer = None, None, None
    fx.proc_kw = PROC_SQUASH(vc["image_size"])
    fx.proc_note = ("open_clip preprocess_cfg resize_mode squash, bicubic: CLIPImageProcessorPil(do_center_crop=False, "
                    f"size={{height: {vc['image_size']}, width: {vc['image_size']}}}); checked equal to "
                    "open_clip.image_transform(..., resize_mode='squash') within 1e-6")
    fx.oc_transform = lambda: __import__("open_clip").image_transform(
        vc["image_size"], is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode="squash", interpolation="bicubic")
    fx.src_dtype = "f32"

    def lib(ids, px):
        cap = {}
        h = vis.ln_post.register_forward_hook(lambda mod, i, o: cap.__setitem__("t", o))
        vis(torch.from_numpy(px))
        h.remove()
        return {"vit_features": cap["t"]}  # ln_post over all 50 tokens (final_ln_after_pool False)

    fx.lib = lib
    return fx


LOADERS = {
    "llava-llama": load_llava, "llama-text": load_llama_text, "llava-mixtral": load_llava,
    "llava-mixtral-v5": load_llava, "honeybee-dense": load_honeybee, "honeybee-moe": load_honeybee,
    "axlearn-dense": load_axlearn, "axlearn-moe": load_axlearn, "openclip-vit": load_openclip,
}

# ----------------------------------------------------------------------------------------------
# probes
# ----------------------------------------------------------------------------------------------

PROBE_TEXTS = {  # llava-llama has a tokenizer: probes there carry `text` as well
    "text": "<s>what is in this picture? describe the dog",
    "one_image": "<s><image> describe the image",
    "two_images": "<s><image> a cat<image> two cats",
}


# llava-mixtral-v5 has the same layout and architecture as llava-mixtral (only the storage differs), so it
# gets two probes, to keep all new files under 1.5 MB.
PROBE_SUBSET = {"llava-mixtral-v5": ("text", "one_image")}


def make_probes(fx, seed):
    rng = np.random.default_rng(seed)
    probes = []
    if fx.cfg.get("llm") is None:  # vision-only: one probe per image count
        probes.append({"id": "one_image", "images": PROBE_IMAGES[:1]})
        probes.append({"id": "two_images", "images": PROBE_IMAGES[1:3]})
        return probes
    if fx.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(fx.tokenizer)
        for pid, text in PROBE_TEXTS.items():
            ids = tok.encode(text).ids
            assert ids.count(fx.image_token) == {"text": 0, "one_image": 1, "two_images": 2}[pid], (pid, ids)
            assert 0 not in ids, (pid, ids)  # no <unk>
            probes.append({"id": pid, "text": text, "input_ids": ids})
    else:
        lo, hi = 4, fx.vocab - (1 if fx.image_token == fx.vocab - 1 else 0)
        r = lambda n: [int(x) for x in rng.integers(lo, hi, n)]  # noqa: E731
        it = fx.image_token
        probes.append({"id": "text", "input_ids": [1] + r(11)})
        if fx.cfg.get("vision"):
            probes.append({"id": "one_image", "input_ids": [1] + r(2) + [it] + r(5)})
            probes.append({"id": "two_images", "input_ids": [1] + r(1) + [it] + r(3) + [it] + r(2)})
    if fx.name in PROBE_SUBSET:
        probes = [p for p in probes if p["id"] in PROBE_SUBSET[fx.name]]
    imgs = {"text": [], "one_image": PROBE_IMAGES[:1], "two_images": PROBE_IMAGES[1:3]}
    for p in probes:
        p["images"] = imgs[p["id"]]
    return probes


MIN_ROUTER_GAP = 1e-5


def choose_probes(fx, seed):
    """For MoE models, the first seed (seed, seed + 7919, ...) whose token ids give every routing decision a
    margin of at least MIN_ROUTER_GAP in router probability, so that float32 rounding differences between
    implementations cannot flip an expert choice (the tiny random routers give near-uniform probabilities)."""
    moe = bool(fx.cfg.get("llm") and fx.cfg["llm"].get("moe"))
    for attempt in range(200):
        probes = make_probes(fx, seed + 7919 * attempt)
        if not moe:
            return probes
        ROUTER_GAP[0] = float("inf")
        with torch.no_grad():
            for p in probes:
                px = run_proc(pil_processor(**fx.proc_kw), p["images"]) if p["images"] else None
                canonical_forward(fx.canon, fx.cfg, p["input_ids"], None if px is None else torch.from_numpy(px),
                                  fx.image_token)
        if ROUTER_GAP[0] >= MIN_ROUTER_GAP:
            return probes
    raise RuntimeError(f"{fx.name}: no probe ids with router margin >= {MIN_ROUTER_GAP}")


def maxdiff(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


def write_fixture(name):
    fx = LOADERS[name](name)
    out_dir = os.path.join(FIXTURES, name, "reference")
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    probes = choose_probes(fx, 1000 + sorted(LOADERS).index(name))
    agree = {}
    ROUTER_GAP[0] = float("inf")
    lines, text_lines = [], []
    shapes = {}
    for p in probes:
        px = None
        if p["images"]:
            px = run_proc(pil_processor(**fx.proc_kw), p["images"])
            if hasattr(fx, "oc_transform"):
                tr = fx.oc_transform()
                oc = torch.stack([tr(load_image(n)) for n in p["images"]]).numpy()
                d = float(np.abs(oc - px).max())
                assert d < 1e-5, d
                agree["pixel_values(open_clip transform vs CLIPImageProcessorPil)"] = max(
                    d, agree.get("pixel_values(open_clip transform vs CLIPImageProcessorPil)", 0.0))
        ids = p.get("input_ids")
        with torch.no_grad():
            can = canonical_forward(fx.canon, fx.cfg, ids, None if px is None else torch.from_numpy(px), fx.image_token)
            lib = fx.lib(ids, px) if fx.lib else None
        ref = {}
        if lib is not None:
            for k in ("vit_features", "connector", "hidden_states", "logits"):
                if k in can:
                    assert lib[k].shape == can[k].shape, (name, k, lib[k].shape, can[k].shape)
                    agree[k] = max(agree.get(k, 0.0), maxdiff(lib[k], can[k]))
                    ref[k] = lib[k]
        else:
            ref = {k: can[k] for k in ("vit_features", "connector", "hidden_states", "logits") if k in can}
        arrays = {}
        if px is not None:
            arrays["pixel_values"] = px
        for k, v in ref.items():
            arrays[k] = np.ascontiguousarray(v.detach().to(torch.float32).numpy())
        for k, v in arrays.items():
            assert np.all(np.isfinite(v)), (name, p["id"], k)
            np.save(os.path.join(out_dir, f"{p['id']}.{k}.npy"), v.astype("<f4"))
        shapes[p["id"]] = {k: list(v.shape) for k, v in arrays.items()}
        imgs = ["../../images/" + n + ".png" for n in p["images"]]
        line = {"id": p["id"]}
        if ids is not None:
            line["input_ids"] = ids
        line["images"] = imgs
        lines.append(json.dumps(line, separators=(", ", ": ")))
        if "text" in p:
            text_lines.append(json.dumps({"id": p["id"], "text": p["text"], "images": imgs}, separators=(", ", ": ")))
    with open(os.path.join(out_dir, "probes.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if text_lines:  # same probes, same ids, same references: `text` that the tokenizer turns into input_ids
        with open(os.path.join(out_dir, "probes_text.jsonl"), "w") as f:
            f.write("\n".join(text_lines) + "\n")
    meta = {
        "fixture": name,
        "source_dtype": getattr(fx, "src_dtype", "f32"),
        "compute_dtype": "float32 (weights widened exactly)",
        "image_token_id": fx.image_token,
        "image_token_note": ("config image_token_id is null: images are marked by the negative id -1 "
                             "(Honeybee's convention)" if fx.image_token == HONEYBEE_IMAGE_TOKEN else
                             "the canonical config's image_token_id"),
        "image_processor": getattr(fx, "proc_note", None),
        "image_processor_config": fx.proc_kw,
        "reference_from": ("canonical_forward (scripts/make_references.py)" if fx.lib is None else
                           {"llama-text": "transformers LlamaForCausalLM",
                            "openclip-vit": "open_clip VisionTransformer (ln_post output hook)"}.get(
                                name, "transformers + timm modules (see scripts/make_references.py)")),
        "agreement_library_vs_canonical_max_abs": agree if fx.lib else None,
        "shapes": shapes,
        "min_router_topk_gap": None if ROUTER_GAP[0] == float("inf") else ROUTER_GAP[0],
    }
    mf.write_json(os.path.join(out_dir, "meta.json"), meta)
    AGREEMENT[name] = agree
    print(f"{name}: " + ", ".join(f"{k}={v:.2e}" for k, v in agree.items()), flush=True)
    for k, v in agree.items():
        if not k.startswith("pixel"):
            assert v <= 1e-5, (name, k, v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(LOADERS))
    ap.add_argument("--skip-images", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if not args.skip_images:
        make_images()
        print("wrote fixtures/images")
    for name in args.only or LOADERS:
        write_fixture(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
