import Foundation

/// Model sizes `Synth` can write.
///
/// `mm1-3b` is a template, not MM1 itself (MM1's decoder sizes are unpublished): DFN5B-CLIP ViT-H/14 at 378 px,
/// Honeybee's C-Abstractor with MM1's 144 image tokens, and an AFM-on-device-like ~3B decoder
/// (/work/shared/reference/mm1-architecture.md §2, §3, §4.6).
public enum SynthPreset: String, CaseIterable, Sendable {
    /// ViT 32 wide, 2 layers, patch 4, image 28; C-Abstractor 32 hidden, depth 2, 9 queries; decoder 48 wide,
    /// 4 layers, 4/2 heads, vocab 96, FFN 96, untied head.
    case tiny
    /// `tiny` with layers 1 and 3 MoE (4 experts, top-2, expert FFN 96). AXLearn layout only.
    case tiny_moe = "tiny-moe"
    /// ViT-H/14-378 + C-Abstractor (1024 hidden, depth 3, 144 queries) + ~3B decoder (49152 × 3072, 26 layers,
    /// 24/8 heads of 128, FFN 8064, tied embeddings, RMSNorm 1e-5, θ 5e5). ≈ 7 GB in bf16.
    case mm1_3b = "mm1-3b"
    /// `mm1-3b` with every second decoder layer (1, 3, 5, …) MoE: 64 experts, top-2, expert FFN 8064.
    /// AXLearn layout only. Very large (≈ 9.5 GB per MoE layer in bf16); shrink with `numLayersOverride`.
    case mm1_3b_moe = "mm1-3b-moe"
}

/// On-disk layouts `Synth` can write.
public enum SynthLayout: String, CaseIterable, Sendable {
    /// transformers `LlavaForConditionalGeneration`, v4 on-disk names, safetensors + config.json (model_type
    /// "llava"). The connector is LLaVA's 2-layer MLP projector (LLaVA cannot express a C-Abstractor).
    case llava
    /// Honeybee (`vision_model.vision_model.*`, `abstractor.*`, `language_model.*`), safetensors + config.json
    /// (model_type "honeybee").
    case honeybee
    /// AXLearn TensorStore checkpoint: `checkpoints/step_00000001/{index, gda/…}` + `mm1pack_config.json`
    /// (formats/layouts/axlearn.md).
    case axlearn
}

public struct SynthReport: Sendable {
    public var directory: String
    public var preset: SynthPreset
    public var layout: SynthLayout
    public var dtype: DType
    public var seed: UInt64
    /// Files written, relative to `directory`, sorted.
    public var files: [String]
    public var tensors: Int
    public var parameters: Int
    /// Uncompressed tensor bytes.
    public var tensorBytes: Int
    /// Bytes on disk (all files).
    public var fileBytes: Int
    public var seconds: Double
}

/// Writes random-initialised checkpoints with the shapes (and config files) of real configurations, for tests and
/// benchmarks. Values come from a fixed PRNG and are generated and written piece by piece, so memory stays small
/// whatever the size, and the same preset / layout / dtype / seed always gives byte-identical files.
public enum Synth {
    /// Largest piece generated at once.
    static let pieceBytes = 16 << 20
    /// Safetensors shard limit (transformers' default `max_shard_size="5GB"`).
    static let defaultMaxShardBytes = 5_000_000_000
    /// Largest zarr chunk (uncompressed) in the AXLearn layout.
    static let maxChunkBytes = 32 << 20
    /// Step number of the AXLearn checkpoint.
    static let axlearnStep = 1

    // MARK: sizes

    struct MoE {
        var experts: Int
        var topK: Int
        var ff: Int
        var layers: [Int]
    }

    struct Dims {
        // vision
        var vWidth: Int, vLayers: Int, vHeads: Int, vMLP: Int, patch: Int, image: Int
        var patchBias = false
        // connector (C-Abstractor; llava uses an MLP projector instead)
        var cHidden: Int, cDepth: Int, cMLPDepth: Int, cQueries: Int
        // decoder
        var vocab: Int, width: Int, layers: Int, heads: Int, kvHeads: Int, headDim: Int, ff: Int
        var tied: Bool, rmsEps: Double, ropeTheta: Double, maxPositions: Int
        var moe: MoE?

        var grid: Int { image / patch }
        var patches: Int { grid * grid }
    }

    static func dims(_ preset: SynthPreset, numLayersOverride: Int?) throws -> Dims {
        var d: Dims
        switch preset {
        case .tiny, .tiny_moe:
            d = Dims(vWidth: 32, vLayers: 2, vHeads: 4, vMLP: 128, patch: 4, image: 28,
                     cHidden: 32, cDepth: 2, cMLPDepth: 2, cQueries: 9,
                     vocab: 96, width: 48, layers: 4, heads: 4, kvHeads: 2, headDim: 12, ff: 96,
                     tied: false, rmsEps: 1e-5, ropeTheta: 10000, maxPositions: 2048)
            if preset == .tiny_moe { d.moe = MoE(experts: 4, topK: 2, ff: 96, layers: []) }
        case .mm1_3b, .mm1_3b_moe:
            d = Dims(vWidth: 1280, vLayers: 32, vHeads: 16, vMLP: 5120, patch: 14, image: 378,
                     cHidden: 1024, cDepth: 3, cMLPDepth: 2, cQueries: 144,
                     vocab: 49152, width: 3072, layers: 26, heads: 24, kvHeads: 8, headDim: 128, ff: 8064,
                     tied: true, rmsEps: 1e-5, ropeTheta: 500_000, maxPositions: 4096)
            if preset == .mm1_3b_moe { d.moe = MoE(experts: 64, topK: 2, ff: 8064, layers: []) }
        }
        if let n = numLayersOverride {
            guard n >= 1 else { throw MM1Error("numLayersOverride must be at least 1 (got \(n))") }
            d.layers = n
        }
        if d.moe != nil {
            guard d.layers % 2 == 0 else {
                throw MM1Error("preset \(preset.rawValue) alternates dense and MoE decoder layers, so it needs an even number of layers (got \(d.layers))")
            }
            d.moe!.layers = Array(stride(from: 1, to: d.layers, by: 2))
        }
        return d
    }

    // MARK: tensor plan

    enum Values {
        /// Weights, biases, embeddings: N(0, 0.02²)-ish.
        case weight
        /// Norm scales: 1 + N(0, 0.02²)-ish.
        case scale
    }

    struct Planned {
        var name: String
        var dtype: DType
        var shape: [Int]
        var values: Values
        /// AXLearn: the leading axis is the layer repeat axis (one chunk run per layer).
        var stacked = false
        var elements: Int { shape.reduce(1, *) }
        var bytes: Int { elements * dtype.byteSize }
    }

    /// HF names shared by llava and honeybee: CLIP vision tower under `vt`, Llama decoder under
    /// `language_model.`.
    static func hfVision(_ d: Dims, prefix vt: String, dtype: DType) -> [Planned] {
        let e = d.vWidth
        var out = [Planned(name: vt + "embeddings.class_embedding", dtype: dtype, shape: [e], values: .weight),
                   Planned(name: vt + "embeddings.patch_embedding.weight", dtype: dtype, shape: [e, 3, d.patch, d.patch], values: .weight),
                   Planned(name: vt + "embeddings.position_embedding.weight", dtype: dtype, shape: [d.patches + 1, e], values: .weight),
                   Planned(name: vt + "pre_layrnorm.weight", dtype: dtype, shape: [e], values: .scale),
                   Planned(name: vt + "pre_layrnorm.bias", dtype: dtype, shape: [e], values: .weight)]
        for i in 0..<d.vLayers {
            let b = vt + "encoder.layers.\(i)."
            out += [Planned(name: b + "layer_norm1.weight", dtype: dtype, shape: [e], values: .scale),
                    Planned(name: b + "layer_norm1.bias", dtype: dtype, shape: [e], values: .weight)]
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                out += [Planned(name: b + "self_attn.\(p).weight", dtype: dtype, shape: [e, e], values: .weight),
                        Planned(name: b + "self_attn.\(p).bias", dtype: dtype, shape: [e], values: .weight)]
            }
            out += [Planned(name: b + "layer_norm2.weight", dtype: dtype, shape: [e], values: .scale),
                    Planned(name: b + "layer_norm2.bias", dtype: dtype, shape: [e], values: .weight),
                    Planned(name: b + "mlp.fc1.weight", dtype: dtype, shape: [d.vMLP, e], values: .weight),
                    Planned(name: b + "mlp.fc1.bias", dtype: dtype, shape: [d.vMLP], values: .weight),
                    Planned(name: b + "mlp.fc2.weight", dtype: dtype, shape: [e, d.vMLP], values: .weight),
                    Planned(name: b + "mlp.fc2.bias", dtype: dtype, shape: [e], values: .weight)]
        }
        out += [Planned(name: vt + "post_layernorm.weight", dtype: dtype, shape: [e], values: .scale),
                Planned(name: vt + "post_layernorm.bias", dtype: dtype, shape: [e], values: .weight)]
        return out
    }

    static func hfDecoder(_ d: Dims, dtype: DType) -> [Planned] {
        let lm = "language_model.model.", dm = d.width
        var out = [Planned(name: lm + "embed_tokens.weight", dtype: dtype, shape: [d.vocab, dm], values: .weight)]
        for i in 0..<d.layers {
            let b = lm + "layers.\(i)."
            out += [Planned(name: b + "input_layernorm.weight", dtype: dtype, shape: [dm], values: .scale),
                    Planned(name: b + "self_attn.q_proj.weight", dtype: dtype, shape: [d.heads * d.headDim, dm], values: .weight),
                    Planned(name: b + "self_attn.k_proj.weight", dtype: dtype, shape: [d.kvHeads * d.headDim, dm], values: .weight),
                    Planned(name: b + "self_attn.v_proj.weight", dtype: dtype, shape: [d.kvHeads * d.headDim, dm], values: .weight),
                    Planned(name: b + "self_attn.o_proj.weight", dtype: dtype, shape: [dm, d.heads * d.headDim], values: .weight),
                    Planned(name: b + "post_attention_layernorm.weight", dtype: dtype, shape: [dm], values: .scale),
                    Planned(name: b + "mlp.gate_proj.weight", dtype: dtype, shape: [d.ff, dm], values: .weight),
                    Planned(name: b + "mlp.up_proj.weight", dtype: dtype, shape: [d.ff, dm], values: .weight),
                    Planned(name: b + "mlp.down_proj.weight", dtype: dtype, shape: [dm, d.ff], values: .weight)]
        }
        out.append(Planned(name: lm + "norm.weight", dtype: dtype, shape: [dm], values: .scale))
        if !d.tied { out.append(Planned(name: "language_model.lm_head.weight", dtype: dtype, shape: [d.vocab, dm], values: .weight)) }
        return out
    }

    static func seRatioWidth(_ cin: Int) -> Int { Int((Double(cin) * 0.25).rounded(.toNearestOrEven)) }

    static func llavaTensors(_ d: Dims, dtype: DType) -> [Planned] {
        let mp = "multi_modal_projector."
        return hfVision(d, prefix: "vision_tower.vision_model.", dtype: dtype)
            + [Planned(name: mp + "linear_1.weight", dtype: dtype, shape: [d.width, d.vWidth], values: .weight),
               Planned(name: mp + "linear_1.bias", dtype: dtype, shape: [d.width], values: .weight),
               Planned(name: mp + "linear_2.weight", dtype: dtype, shape: [d.width, d.width], values: .weight),
               Planned(name: mp + "linear_2.bias", dtype: dtype, shape: [d.width], values: .weight)]
            + hfDecoder(d, dtype: dtype)
    }

    static func honeybeeTensors(_ d: Dims, dtype: DType) -> [Planned] {
        var conn = [Planned(name: "abstractor.pos_emb", dtype: dtype, shape: [1, d.patches, d.vWidth], values: .weight)]
        let h = d.cHidden
        for (stage, stageIn) in [("abstractor.net.0.", d.vWidth), ("abstractor.net.2.", h)] {
            for j in 0..<d.cDepth {
                let cin = j == 0 ? stageIn : h, r = seRatioWidth(cin)
                let b = stage + "b\(j + 1)."
                func norm(_ n: String) -> [Planned] {
                    [Planned(name: b + n + ".bn.weight", dtype: dtype, shape: [h], values: .scale),
                     Planned(name: b + n + ".bn.bias", dtype: dtype, shape: [h], values: .weight)]
                }
                conn.append(Planned(name: b + "conv1.conv.weight", dtype: dtype, shape: [h, cin, 1, 1], values: .weight))
                conn += norm("conv1")
                conn.append(Planned(name: b + "conv2.conv.weight", dtype: dtype, shape: [h, 1, 3, 3], values: .weight))
                conn += norm("conv2")
                conn += [Planned(name: b + "se.fc1.weight", dtype: dtype, shape: [r, h, 1, 1], values: .weight),
                         Planned(name: b + "se.fc1.bias", dtype: dtype, shape: [r], values: .weight),
                         Planned(name: b + "se.fc2.weight", dtype: dtype, shape: [h, r, 1, 1], values: .weight),
                         Planned(name: b + "se.fc2.bias", dtype: dtype, shape: [h], values: .weight)]
                conn.append(Planned(name: b + "conv3.conv.weight", dtype: dtype, shape: [h, h, 1, 1], values: .weight))
                conn += norm("conv3")
                if cin != h {
                    conn.append(Planned(name: b + "downsample.conv.weight", dtype: dtype, shape: [h, cin, 1, 1], values: .weight))
                    conn += norm("downsample")
                }
            }
        }
        var width = d.cDepth > 0 ? h : d.vWidth
        for k in 0..<d.cMLPDepth {
            conn += [Planned(name: "abstractor.readout.\(2 * k).weight", dtype: dtype, shape: [d.width, width], values: .weight),
                     Planned(name: "abstractor.readout.\(2 * k).bias", dtype: dtype, shape: [d.width], values: .weight)]
            width = d.width
        }
        return hfVision(d, prefix: "vision_model.vision_model.", dtype: dtype) + conn + hfDecoder(d, dtype: dtype)
    }

    /// AXLearn index paths, per formats/layouts/axlearn.md §2. Norm parameters
    /// are float32 as AXLearn keeps them; everything else `dtype`.
    static func axlearnTensors(_ d: Dims, dtype: DType) -> [Planned] {
        let f32 = DType.f32
        var out: [Planned] = []
        func w(_ n: String, _ s: [Int], stacked: Bool = false) { out.append(Planned(name: n, dtype: dtype, shape: s, values: .weight, stacked: stacked)) }
        func ln(_ n: String, _ s: [Int], bias: Bool = true, stacked: Bool = false) {
            out.append(Planned(name: n + "/scale", dtype: f32, shape: s, values: .scale, stacked: stacked))
            if bias { out.append(Planned(name: n + "/bias", dtype: f32, shape: s, values: .weight, stacked: stacked)) }
        }

        // Decoder.
        w("model/decoder/emb/token_emb/weight", [d.vocab, d.width])
        if !d.tied { w("model/decoder/lm_head/weight", [d.vocab, d.width]) }
        ln("model/decoder/output_norm", [d.width], bias: false)
        let period = d.moe == nil ? 1 : 2
        let reps = d.layers / period
        for k in 0..<period {
            let p = "model/decoder/transformer/repeat/layer/" + (period == 1 ? "" : "layer\(k)/")
            let isMoE = d.moe.map { $0.layers.contains(k) } ?? false
            ln(p + "self_attention/norm", [reps, d.width], bias: false, stacked: true)
            w(p + "self_attention/attention/i_proj/i_proj/qkv_proj/weight", [reps, d.width, d.heads + 2 * d.kvHeads, d.headDim], stacked: true)
            w(p + "self_attention/attention/o_proj/weight", [reps, d.width, d.heads, d.headDim], stacked: true)
            ln(p + "feed_forward/norm", [reps, d.width], bias: false, stacked: true)
            if isMoE, let m = d.moe {
                w(p + "feed_forward/gate_weight", [reps, d.width, m.experts], stacked: true)
                w(p + "feed_forward/wi_0_weight", [reps, m.experts, d.width, m.ff], stacked: true)
                w(p + "feed_forward/wi_1_weight", [reps, m.experts, d.width, m.ff], stacked: true)
                w(p + "feed_forward/wo_weight", [reps, m.experts, m.ff, d.width], stacked: true)
            } else {
                w(p + "feed_forward/linear1_0/weight", [reps, d.width, d.ff], stacked: true)
                w(p + "feed_forward/linear1_1/weight", [reps, d.width, d.ff], stacked: true)
                w(p + "feed_forward/linear2/weight", [reps, d.ff, d.width], stacked: true)
            }
        }

        // Connector.
        let c = "model/vision_encoder/connector/", h = d.cHidden
        w(c + "pos_emb/weight", [1, d.patches, d.vWidth])
        for k in 0..<d.cMLPDepth {
            let inW = k == 0 ? (d.cDepth > 0 ? h : d.vWidth) : d.width
            w(c + "readout/linear\(k)/bias", [d.width])
            w(c + "readout/linear\(k)/weight", [inW, d.width])
        }
        for (s, stageIn) in [("s1", d.vWidth), ("s2", h)] {
            for j in 0..<d.cDepth {
                let cin = j == 0 ? stageIn : h, r = seRatioWidth(cin), b = c + "\(s)/b\(j)/"
                w(b + "conv1/weight", [1, 1, cin, h])
                w(b + "conv2/weight", [3, 3, 1, h])
                w(b + "conv3/weight", [1, 1, h, h])
                if cin != h {
                    w(b + "down/weight", [1, 1, cin, h])
                    ln(b + "down_norm", [h])
                }
                ln(b + "norm1", [h])
                ln(b + "norm2", [h])
                ln(b + "norm3", [h])
                w(b + "se/fc1/bias", [r])
                w(b + "se/fc1/weight", [1, 1, h, r])
                w(b + "se/fc2/bias", [h])
                w(b + "se/fc2/weight", [1, 1, r, h])
            }
        }

        // Image encoder.
        let v = "model/vision_encoder/image_encoder/", e = d.vWidth, dh = e / d.vHeads, l = d.vLayers
        w(v + "cls_token", [1, 1, e])
        ln(v + "encoder_1d/input_norm", [e])
        ln(v + "encoder_1d/output_norm", [e])
        w(v + "encoder_1d/pos_emb/weight", [1, d.patches + 1, e])
        let t = v + "encoder_1d/transformer/repeat/layer/"
        w(t + "feed_forward/linear1/bias", [l, d.vMLP], stacked: true)
        w(t + "feed_forward/linear1/weight", [l, e, d.vMLP], stacked: true)
        w(t + "feed_forward/linear2/bias", [l, e], stacked: true)
        w(t + "feed_forward/linear2/weight", [l, d.vMLP, e], stacked: true)
        ln(t + "feed_forward/norm", [l, e], stacked: true)
        for p in ["k_proj", "q_proj", "v_proj"] {
            w(t + "self_attention/attention/i_proj/\(p)/bias", [l, d.vHeads, dh], stacked: true)
            w(t + "self_attention/attention/i_proj/\(p)/weight", [l, e, d.vHeads, dh], stacked: true)
        }
        w(t + "self_attention/attention/o_proj/bias", [l, e], stacked: true)
        w(t + "self_attention/attention/o_proj/weight", [l, e, d.vHeads, dh], stacked: true)
        ln(t + "self_attention/norm", [l, e], stacked: true)
        w(v + "visual_embed/convert_to_sequence/conv/weight", [d.patch, d.patch, 3, e])
        if d.patchBias { w(v + "visual_embed/convert_to_sequence/conv/bias", [e]) }

        // AXLearn lists each level's keys sorted (jax tree order); with [a-z0-9_] names that is plain string order.
        out.sort { $0.name < $1.name }
        return out
    }

    // MARK: config files

    static let clipMean = [0.48145466, 0.4578275, 0.40821073]
    static let clipStd = [0.26862954, 0.26130258, 0.27577711]

    static func hfVisionConfig(_ d: Dims) -> [String: Any] {
        [
            "model_type": "clip_vision_model",
            "hidden_size": d.vWidth,
            "intermediate_size": d.vMLP,
            "num_hidden_layers": d.vLayers,
            "num_attention_heads": d.vHeads,
            "patch_size": d.patch,
            "image_size": d.image,
            "num_channels": 3,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "projection_dim": d.vWidth,
        ]
    }

    static func hfTextConfig(_ d: Dims) -> [String: Any] {
        [
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": d.vocab,
            "hidden_size": d.width,
            "intermediate_size": d.ff,
            "num_hidden_layers": d.layers,
            "num_attention_heads": d.heads,
            "num_key_value_heads": d.kvHeads,
            "head_dim": d.headDim,
            "hidden_act": "silu",
            "rms_norm_eps": d.rmsEps,
            "rope_theta": d.ropeTheta,
            "rope_scaling": NSNull(),
            "max_position_embeddings": d.maxPositions,
            "tie_word_embeddings": d.tied,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": NSNull(),
            "use_cache": true,
        ]
    }

    static func torchDType(_ t: DType) -> String {
        switch t {
        case .f32: return "float32"
        case .f16: return "float16"
        default: return "bfloat16"
        }
    }

    static func llavaConfig(_ d: Dims, dtype: DType) -> [String: Any] {
        [
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": d.vocab - 1,
            "image_seq_length": d.patches,
            "multimodal_projector_bias": true,
            "projector_hidden_act": "gelu",
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": d.tied,
            "torch_dtype": torchDType(dtype),
            "transformers_version": "4.57.1",
            "vision_config": hfVisionConfig(d),
            "text_config": hfTextConfig(d),
        ]
    }

    static func honeybeeConfig(_ d: Dims, dtype: DType) -> [String: Any] {
        var vision = hfVisionConfig(d)
        vision["encoder_type"] = "openai.clip"
        vision["image_mean"] = clipMean
        vision["image_std"] = clipStd
        return [
            "architectures": ["HoneybeeForConditionalGeneration"],
            "model_type": "honeybee",
            "num_query_tokens": d.cQueries,
            "torch_dtype": torchDType(dtype),
            "projector_config": [
                "projector_type": "c-abs",
                "depth": d.cDepth,
                "mlp_depth": d.cMLPDepth,
                "hidden_size": d.cHidden,
                "num_query_tokens": d.cQueries,
                "encoder_hidden_size": d.vWidth,
                "output_hidden_size": d.width,
                "pos_emb": true,
                "prenorm": false,
                "feature_layer_index": -1,
                "num_eos_tokens": 0,
            ] as [String: Any],
            "vision_config": vision,
            "text_config": hfTextConfig(d),
        ]
    }

    /// CLIP image processor at the ViT's native size with DFN5B's squash resize (no crop).
    static func preprocessorConfig(_ d: Dims) -> [String: Any] {
        [
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true,
            "size": ["height": d.image, "width": d.image],
            "resample": 3,
            "do_center_crop": false,
            "crop_size": ["height": d.image, "width": d.image],
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": clipMean,
            "image_std": clipStd,
            "do_convert_rgb": true,
        ]
    }

    /// The canonical config (formats/canonical.md) for `mm1pack_config.json`.
    static func canonicalConfig(_ d: Dims, preset: SynthPreset, seed: UInt64) -> [String: Any] {
        var moe: Any = NSNull()
        if let m = d.moe {
            moe = ["num_experts": m.experts, "top_k": m.topK, "intermediate_size": m.ff, "renormalize": true,
                   "layers": m.layers] as [String: Any]
        }
        return [
            "vision": [
                "kind": "clip_vit",
                "hidden_size": d.vWidth,
                "num_layers": d.vLayers,
                "num_heads": d.vHeads,
                "intermediate_size": d.vMLP,
                "patch_size": d.patch,
                "image_size": d.image,
                "num_channels": 3,
                "class_token": true,
                "patch_bias": d.patchBias,
                "pre_norm": true,
                "post_norm": true,
                "layer_norm_eps": 1e-5,
                "activation": "quick_gelu",
                "feature_layer": -1,
                "post_norm_features": true,
                "drop_class_token": true,
            ] as [String: Any],
            "connector": [
                "kind": "c_abstractor",
                "input_size": d.vWidth,
                "hidden_size": d.cHidden,
                "output_size": d.width,
                "depth": d.cDepth,
                "mlp_depth": d.cMLPDepth,
                "num_queries": d.cQueries,
                "num_input_tokens": d.patches,
                "pos_emb": true,
                "prenorm": false,
                "layer_norm_eps": 1e-5,
                "se_ratio": 0.25,
                "activation": "silu",
            ] as [String: Any],
            "llm": [
                "kind": "decoder",
                "vocab_size": d.vocab,
                "hidden_size": d.width,
                "num_layers": d.layers,
                "num_heads": d.heads,
                "num_kv_heads": d.kvHeads,
                "head_dim": d.headDim,
                "intermediate_size": d.ff,
                "rms_norm_eps": d.rmsEps,
                "rope_theta": d.ropeTheta,
                "rope_scaling": NSNull(),
                "max_position_embeddings": d.maxPositions,
                "tie_embeddings": d.tied,
                "attention_bias": false,
                "activation": "silu",
                "moe": moe,
                "bos_token_id": 1,
                "eos_token_id": 2,
            ] as [String: Any],
            "image_token_id": d.vocab - 1,
            "image_processor": [
                "image_size": d.image,
                "image_mean": clipMean,
                "image_std": clipStd,
                "resize": "squash",
                "rescale_factor": 1.0 / 255.0,
            ] as [String: Any],
            "source_config": [
                "layout": "axlearn",
                "step": axlearnStep,
                "decoder_repeat_period": d.moe == nil ? 1 : 2,
                "note": "synthetic random-initialised checkpoint written by mm1pack Synth (preset \(preset.rawValue), seed \(seed)); not trained weights",
            ] as [String: Any],
        ]
    }

    static func jsonBytes(_ obj: Any) throws -> [UInt8] {
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return [UInt8](data) + [0x0A]
    }

    // MARK: writing

    /// Writes a complete checkpoint of `preset` in `layout` into `directory`, which must not exist or be empty.
    /// The checkpoint is assembled in a sibling temporary directory and renamed into place when complete.
    ///
    /// - Parameters:
    ///   - dtype: element type of the weights (f32, f16 or bf16). The AXLearn layout keeps norm parameters in f32.
    ///   - seed: PRNG seed; the same preset, layout, dtype and seed give byte-identical files.
    ///   - numLayersOverride: number of decoder layers instead of the preset's (even for MoE presets).
    ///   - progress: draw progress on standard error when it is a terminal.
    public static func write(preset: SynthPreset, layout: SynthLayout, to directory: String, dtype: DType = .bf16,
                             seed: UInt64 = 0, numLayersOverride: Int? = nil, progress: Bool) throws -> SynthReport {
        try write(preset: preset, layout: layout, to: directory, dtype: dtype, seed: seed,
                  numLayersOverride: numLayersOverride, progress: progress, maxShardBytes: defaultMaxShardBytes)
    }

    static func write(preset: SynthPreset, layout: SynthLayout, to directory: String, dtype: DType, seed: UInt64,
                      numLayersOverride: Int?, progress: Bool, maxShardBytes: Int) throws -> SynthReport {
        let t0 = Date()
        guard dtype.isConvertibleFloat else {
            throw MM1Error("synthetic checkpoints are written in f32, f16 or bf16, not \(dtype.rawValue)")
        }
        let d = try dims(preset, numLayersOverride: numLayersOverride)
        if d.moe != nil && layout != .axlearn {
            throw MM1Error("preset \(preset.rawValue) interleaves dense and MoE decoder layers, which the \(layout.rawValue) layout cannot express: its config.json text_config is read as Llama (all dense) or Mixtral (every layer MoE) and has no field naming the MoE layers; use the axlearn layout, whose mm1pack_config.json lists llm.moe.layers")
        }

        let fm = FileManager.default
        let target = URL(fileURLWithPath: directory).standardizedFileURL.path
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: target, isDirectory: &isDir) {
            guard isDir.boolValue else { throw MM1Error(file: target, "exists and is not a directory") }
            let entries = try fm.contentsOfDirectory(atPath: target)
            guard entries.isEmpty else {
                throw MM1Error(file: target, "is not empty; synthetic checkpoints are written only into a new or empty directory")
            }
        }
        let parent = (target as NSString).deletingLastPathComponent
        try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let temp = parent + "/." + (target as NSString).lastPathComponent + ".synth-\(getpid())"
        if fm.fileExists(atPath: temp) { try fm.removeItem(atPath: temp) }
        try fm.createDirectory(atPath: temp, withIntermediateDirectories: false)
        var done = false
        defer { if !done { try? fm.removeItem(atPath: temp) } }

        let planned: [Planned]
        switch layout {
        case .llava: planned = llavaTensors(d, dtype: dtype)
        case .honeybee: planned = honeybeeTensors(d, dtype: dtype)
        case .axlearn: planned = axlearnTensors(d, dtype: dtype)
        }
        let totalBytes = planned.reduce(0) { $0 + $1.bytes }
        let meter = Progress(label: "synth \(preset.rawValue) \(layout.rawValue)", totalItems: planned.count,
                             totalBytes: totalBytes, enabled: progress)

        switch layout {
        case .llava, .honeybee:
            let config = layout == .llava ? llavaConfig(d, dtype: dtype) : honeybeeConfig(d, dtype: dtype)
            try writeFileAtomically(temp + "/config.json", try jsonBytes(config))
            try writeFileAtomically(temp + "/preprocessor_config.json", try jsonBytes(preprocessorConfig(d)))
            let writer = try SafetensorsWriter(
                directory: temp, tensors: planned.map { .init(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                maxShardBytes: maxShardBytes)
            do {
                var written = 0
                try PiecePipeline(tensors: planned, seed: seed).run(begin: { i in
                    try writer.beginTensor(planned[i].name)
                }, piece: { i, piece in
                    try writer.write(piece)
                    written += piece.count
                    meter.update(item: i + 1, bytes: written, detail: planned[i].name)
                }, end: { _ in })
                try writer.finish()
            } catch {
                writer.abort()
                throw error
            }
        case .axlearn:
            let stepDir = temp + "/checkpoints/" + String(format: "step_%08d", axlearnStep)
            try fm.createDirectory(atPath: stepDir + "/gda", withIntermediateDirectories: true)
            var index: [AXLearnIndex.Entry] = []
            // prng_key (a jax uint32[2] key) first, as in TrainerState.
            var key = SplitMix64(seed: seed, key: "prng_key")
            let keyWords: [UInt32] = [UInt32(truncatingIfNeeded: key.next()), UInt32(truncatingIfNeeded: key.next())]
            try writeSmallArray(stepDir + "/gda/prng_key", dtype: .u32, shape: [2], words: keyWords)
            index.append(.init(path: "prng_key", dtype: .u32, shape: [2]))
            var written = 0
            var array: ZarrArrayWriter?
            let scratch = ZarrArrayWriter.Scratch()
            try PiecePipeline(tensors: planned, seed: seed).run(begin: { i in
                let t = planned[i]
                let chunks = ZarrArrayWriter.streamingChunks(shape: t.shape, elementSize: t.dtype.byteSize,
                                                             maxChunkBytes: maxChunkBytes, unitLeadingAxis: t.stacked)
                array = try ZarrArrayWriter(directory: stepDir + "/gda/" + t.name, dtype: t.dtype, shape: t.shape,
                                            chunks: chunks, zstdLevel: 1, scratch: scratch)
            }, piece: { i, piece in
                try array!.write(piece)
                written += piece.count
                meter.update(item: i + 1, bytes: written, detail: planned[i].name)
            }, end: { i in
                try array!.finish()
                array = nil
                index.append(.init(path: planned[i].name, dtype: planned[i].dtype, shape: planned[i].shape))
            })
            // An optimizer step counter, so that readers meet a non-model leaf (AXLearn's learner state).
            try writeSmallArray(stepDir + "/gda/learner/optimizer/0/count", dtype: .i32, shape: [], words: [UInt32(axlearnStep)])
            index.append(.init(path: "learner/optimizer/0/count", dtype: .i32, shape: []))
            try AXLearnIndex.write(stepDir: stepDir, step: axlearnStep, entries: index)
            try writeFileAtomically(temp + "/mm1pack_config.json",
                                    try jsonBytes(canonicalConfig(d, preset: preset, seed: seed)))
        }
        meter.done()

        // Into place.
        if fm.fileExists(atPath: target) { try fm.removeItem(atPath: target) }  // empty, checked above
        try renameIntoPlace(temp, target)
        done = true

        var files: [String] = []
        var fileBytes = 0
        if let e = fm.enumerator(atPath: target) {
            while let rel = e.nextObject() as? String {
                var st = stat()
                if stat(target + "/" + rel, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG {
                    files.append(rel)
                    fileBytes += Int(st.st_size)
                }
            }
        }
        files.sort()
        return SynthReport(directory: target, preset: preset, layout: layout, dtype: dtype, seed: seed, files: files,
                           tensors: planned.count, parameters: planned.reduce(0) { $0 + $1.elements },
                           tensorBytes: totalBytes, fileBytes: fileBytes, seconds: Date().timeIntervalSince(t0))
    }

    static func writeSmallArray(_ dir: String, dtype: DType, shape: [Int], words: [UInt32]) throws {
        let a = try ZarrArrayWriter(directory: dir, dtype: dtype, shape: shape, chunks: shape, zstdLevel: 1)
        try words.withUnsafeBytes { try a.write($0) }
        try a.finish()
    }
}

// MARK: values

/// splitmix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a Weyl constant and mixed. Fast, and every
/// seed gives a full-period stream.
struct SplitMix64 {
    var state: UInt64

    init(state: UInt64) { self.state = state }

    /// A stream keyed by the seed and a name (FNV-1a of the name), so each tensor has its own sequence.
    init(seed: UInt64, key: String) {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in key.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        state = h ^ (seed &* 0x9E37_79B9_7F4A_7C15)
        _ = next()
    }

    @inline(__always)
    mutating func next() -> UInt64 {
        state = state &+ 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Generates a tensor's values in pieces of at most `Synth.pieceBytes` and hands each to a sink.
///
/// Each value is an Irwin–Hall(4) approximation of a standard normal (the sum of the four 16-bit lanes of one
/// splitmix64 output, centred and scaled to unit variance, so bounded by ±3.46), times 0.02; norm scales are
/// 1 + that. bf16 is rounded to nearest even from f32, f16 by the hardware conversion.
final class PieceGenerator {
    let seed: UInt64
    private let buffer: UnsafeMutableRawPointer
    private let capacity = Synth.pieceBytes

    init(seed: UInt64) {
        self.seed = seed
        buffer = .allocate(byteCount: Synth.pieceBytes, alignment: 64)
    }

    deinit { buffer.deallocate() }

    func stream(_ t: Synth.Planned, _ sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var rng = SplitMix64(seed: seed, key: t.name)
        let size = t.dtype.byteSize
        let perPiece = capacity / size
        var left = t.elements
        let offset: Float = t.values == .scale ? 1 : 0
        while left > 0 {
            let n = min(left, perPiece)
            switch t.dtype {
            case .f32: PieceGenerator.fillF32(buffer, n, &rng, offset)
            case .f16: PieceGenerator.fillF16(buffer, n, &rng, offset)
            case .bf16: PieceGenerator.fillBF16(buffer, n, &rng, offset)
            default: throw MM1Error(tensor: t.name, "cannot generate \(t.dtype.rawValue) values")
            }
            try sink(UnsafeRawBufferPointer(start: buffer, count: n * size))
            left -= n
        }
    }

    /// Sum of four 16-bit lanes: mean 131070, standard deviation sqrt((65536² − 1) / 3).
    static let lanesMean: Float = 131_070
    static let scale: Float = 0.02 / 37_837.2265

    @inline(__always)
    static func value(_ r: UInt64, _ offset: Float) -> Float {
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48)
        return (Float(s) - lanesMean) * scale + offset
    }

    static func fillF32(_ p: UnsafeMutableRawPointer, _ n: Int, _ rng: inout SplitMix64, _ offset: Float) {
        for i in 0..<n { p.storeBytes(of: value(rng.next(), offset).bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
    }

    static func fillF16(_ p: UnsafeMutableRawPointer, _ n: Int, _ rng: inout SplitMix64, _ offset: Float) {
        for i in 0..<n {
            p.storeBytes(of: Float16(value(rng.next(), offset)).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
        }
    }

    static func fillBF16(_ p: UnsafeMutableRawPointer, _ n: Int, _ rng: inout SplitMix64, _ offset: Float) {
        for i in 0..<n {
            let bits = value(rng.next(), offset).bitPattern
            let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
            p.storeBytes(of: UInt16(truncatingIfNeeded: rounded >> 16).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
        }
    }
}

/// Generates the values of a list of tensors on a background thread while the caller's thread writes them, so
/// generation (user time) and writing (mostly kernel time) overlap on two cores. Three piece buffers circulate;
/// every tensor yields at least one (possibly empty) piece, in order. Values depend only on the seed and each
/// tensor's name, so the output is the same as a sequential run.
final class PiecePipeline: @unchecked Sendable {
    let tensors: [Synth.Planned]
    let seed: UInt64
    private let cond = NSCondition()
    private var free: [Int]
    private var filled: [(slot: Int, tensor: Int, bytes: Int)] = []
    private var producerDone = false
    private var cancelled = false
    private var producerError: Error?
    private let slots: [UnsafeMutableRawPointer]

    init(tensors: [Synth.Planned], seed: UInt64, buffers: Int = 3) {
        self.tensors = tensors
        self.seed = seed
        slots = (0..<buffers).map { _ in UnsafeMutableRawPointer.allocate(byteCount: Synth.pieceBytes, alignment: 64) }
        free = Array(0..<buffers)
    }

    deinit { for s in slots { s.deallocate() } }

    private func produce() {
        do {
            for (ti, t) in tensors.enumerated() {
                var rng = SplitMix64(seed: seed, key: t.name)
                let size = t.dtype.byteSize
                let perPiece = Synth.pieceBytes / size
                let offset: Float = t.values == .scale ? 1 : 0
                var left = t.elements
                repeat {
                    cond.lock()
                    while free.isEmpty && !cancelled { cond.wait() }
                    if cancelled {
                        cond.unlock()
                        return
                    }
                    let slot = free.removeFirst()
                    cond.unlock()
                    let n = min(left, perPiece)
                    let p = slots[slot]
                    switch t.dtype {
                    case .f32: PieceGenerator.fillF32(p, n, &rng, offset)
                    case .f16: PieceGenerator.fillF16(p, n, &rng, offset)
                    case .bf16: PieceGenerator.fillBF16(p, n, &rng, offset)
                    default: throw MM1Error(tensor: t.name, "cannot generate \(t.dtype.rawValue) values")
                    }
                    cond.lock()
                    filled.append((slot, ti, n * size))
                    cond.signal()
                    cond.unlock()
                    left -= n
                } while left > 0
            }
        } catch {
            cond.lock()
            producerError = error
            cond.unlock()
        }
        cond.lock()
        producerDone = true
        cond.broadcast()
        cond.unlock()
    }

    /// Calls `begin(i)`, then `piece(i, bytes)` for each piece, then `end(i)` for every tensor in order.
    func run(begin: (Int) throws -> Void, piece: (Int, UnsafeRawBufferPointer) throws -> Void,
             end: (Int) throws -> Void) throws {
        let finished = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            produce()
            finished.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        var current = -1
        do {
            while true {
                cond.lock()
                while filled.isEmpty && !producerDone { cond.wait() }
                if filled.isEmpty {
                    let e = producerError
                    cond.unlock()
                    if let e { throw e }
                    break
                }
                let item = filled.removeFirst()
                cond.unlock()
                if item.tensor != current {
                    if current >= 0 { try end(current) }
                    current = item.tensor
                    try begin(current)
                }
                try piece(current, UnsafeRawBufferPointer(start: slots[item.slot], count: item.bytes))
                cond.lock()
                free.append(item.slot)
                cond.signal()
                cond.unlock()
            }
            if current >= 0 { try end(current) }
        } catch {
            cond.lock()
            cancelled = true
            cond.broadcast()
            cond.unlock()
            finished.wait()
            throw error
        }
        finished.wait()
    }
}
