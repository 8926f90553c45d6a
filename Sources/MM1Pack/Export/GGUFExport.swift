import Crypto
import Foundation

/// What `--requantize` turns a quantized tensor without an exact GGUF type into (formats/gguf-export.md §3.2).
public enum GGUFRequantize: String, Sendable, CaseIterable {
    /// The bundle's dequantized f32 values: exact, 4 bytes per weight.
    case f32
    /// Dequantized, then rounded to f16 (nearest even).
    case f16
    /// Dequantized, then ggml's reference Q8_0 rounding.
    case q8_0
    /// Dequantized, then ggml's reference Q4_0 rounding.
    case q4_0
}

public struct GGUFExportOptions: Sendable {
    /// nil: refuse tensors without an exact GGUF type.
    public var requantize: GGUFRequantize?
    /// Carry the bundle's `tokenizer.json` over (language model file only).
    public var tokenizer = true
    /// Replaces the detected `tokenizer.ggml.pre`.
    public var tokenizerPre: String?
    /// `general.name`; default: the bundle's file name without its extension.
    public var name: String?
    public var showProgress = true

    public init() {}
}

public struct GGUFExportResult: Sendable {
    public var path: String
    public var tensors: Int
    public var keys: Int
    public var bytes: Int
    /// Tensors written with their stored bits (float types, and codes re-packed into Q8_0/Q4_0/Q4_1).
    public var exact: Int
    /// Float tensors widened to F32 (1-D tensors, the MoE router): exact values.
    public var widened: Int
    /// Quantized tensors converted by `--requantize`, canonical names.
    public var requantized: [String]
    public var seconds: Double
}

/// An export checked and planned but not yet written: the metadata, and every tensor with its producer. The
/// producers read the bundle's mapping, which `bundle` keeps alive.
public struct GGUFPreparedExport {
    public let bundle: BundleReader
    public let metadata: [(String, GGUFValue)]
    public let tensors: [GGUFTensorPlan]
    let kinds: [GGUFTensorRecipe.Kind]
    public let requantized: [String]
    let label: String

    /// Writes the file (temporary name, renamed when complete).
    public func write(to output: String, showProgress: Bool) throws -> GGUFExportResult {
        let start = Date()
        let bytes = try withExtendedLifetime(bundle) {
            let total = tensors.reduce(0) { $0 + GGUFWriter.align($1.byteCount) }
            let progress = Progress(label: label, totalItems: tensors.count, totalBytes: total, enabled: showProgress)
            defer { progress.done() }
            return try GGUFWriter.write(path: output, metadata: metadata, tensors: tensors) { i, bytes in
                progress.update(item: i + 1, bytes: bytes, detail: tensors[i].name)
            }
        }
        return GGUFExportResult(path: output, tensors: tensors.count, keys: metadata.count + 1, bytes: bytes,
                                exact: kinds.filter { $0 == .exact }.count, widened: kinds.filter { $0 == .widened }.count,
                                requantized: requantized, seconds: Date().timeIntervalSince(start))
    }
}

/// How one GGUF tensor is made from one bundle tensor.
struct GGUFTensorRecipe {
    enum Kind { case exact, widened, requantized }
    var canonical: String
    var gguf: String
    /// Output rows in GGUF order: `perm[r]` is the bundle row written as row r (rope permutation of q/k), or nil.
    var perm: [Int]?
    /// Write float tensors as F32 whatever their stored type.
    var forceF32 = false
}

/// `mm1pack export --format gguf`: a bundle's language model as a llama.cpp `llama` GGUF, and optionally the
/// vision encoder + connector as a llama.cpp `clip` (mmproj) GGUF. formats/gguf-export.md is the specification.
public enum GGUFExport {
    // MARK: language model

    /// Writes the language model of the bundle at `bundlePath` to `output`. Everything is checked (config,
    /// every tensor's type mapping, the tokenizer) before the first byte is written.
    public static func exportLanguageModel(bundle bundlePath: String, output: String,
                                           options: GGUFExportOptions = GGUFExportOptions()) throws -> GGUFExportResult {
        try prepareLanguageModel(bundle: BundleReader(path: bundlePath), options: options)
            .write(to: output, showProgress: options.showProgress)
    }

    /// Checks and plans the language model export; nothing is written.
    public static func prepareLanguageModel(bundle b: BundleReader, options: GGUFExportOptions) throws -> GGUFPreparedExport {
        let bundlePath = b.path
        let c = try LLMConfig(b.config, file: bundlePath)
        func refuse(_ m: String) -> MM1Error { MM1Error(file: bundlePath, m) }

        // Architecture checks: llama.cpp's `llama` graph is a pre-norm SwiGLU decoder with one FFN kind for all layers.
        guard c.activation == "silu" else {
            throw refuse("config.llm.activation is '\(c.activation)'; llama.cpp's llama architecture uses SiLU (SwiGLU) only")
        }
        var expertCount = 0, expertUsed = 0
        var ffLength = c.intermediateSize
        if let m = c.moe {
            let dense = (0 ..< c.numLayers).filter { !m.layers.contains($0) }
            guard dense.isEmpty else {
                throw refuse("the language model interleaves dense layers \(dense) and mixture-of-experts layers \(m.layers.sorted()); llama.cpp's llama architecture applies one FFN kind (dense, or experts when llama.expert_count > 0) to every layer, so this model cannot be expressed as a llama GGUF")
            }
            guard m.renormalize else {
                throw refuse("config.llm.moe.renormalize is false; llama.cpp's llama architecture always renormalizes the top-k expert weights (Mixtral routing), so the exported model would compute something else")
            }
            expertCount = m.numExperts
            expertUsed = m.topK
            ffLength = m.intermediateSize
        }

        // Metadata.
        let arch = "llama"
        var kv: [(String, GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("model")),
            ("general.name", .string(options.name ?? defaultName(bundlePath))),
        ]
        let maxPos = ConfigLookup.int(b.config["llm"] as? [String: Any] ?? [:], "max_position_embeddings") ?? 2048
        kv += [
            ("\(arch).context_length", .u32(try u32(maxPos, "max_position_embeddings", bundlePath))),
            ("\(arch).embedding_length", .u32(try u32(c.hiddenSize, "hidden_size", bundlePath))),
            ("\(arch).block_count", .u32(try u32(c.numLayers, "num_layers", bundlePath))),
            ("\(arch).feed_forward_length", .u32(try u32(ffLength, "intermediate_size", bundlePath))),
            ("\(arch).attention.head_count", .u32(try u32(c.numHeads, "num_heads", bundlePath))),
            ("\(arch).attention.head_count_kv", .u32(try u32(c.numKVHeads, "num_kv_heads", bundlePath))),
            ("\(arch).attention.key_length", .u32(try u32(c.headDim, "head_dim", bundlePath))),
            ("\(arch).attention.value_length", .u32(try u32(c.headDim, "head_dim", bundlePath))),
            ("\(arch).rope.freq_base", .f32(Float(c.rope.theta))),
            ("\(arch).rope.dimension_count", .u32(try u32(c.headDim, "head_dim", bundlePath))),
            ("\(arch).attention.layer_norm_rms_epsilon", .f32(c.rmsNormEps)),
            ("\(arch).vocab_size", .u32(try u32(c.vocabSize, "vocab_size", bundlePath))),
        ]
        if expertCount > 0 {
            kv += [("\(arch).expert_count", .u32(UInt32(expertCount))), ("\(arch).expert_used_count", .u32(UInt32(expertUsed)))]
        }
        var ropeFreqs: [Float]?
        switch c.rope.scaling {
        case .none: break
        case .linear(let f):
            kv += [("\(arch).rope.scaling.type", .string("linear")), ("\(arch).rope.scaling.factor", .f32(Float(f)))]
        case .llama3(let f, let lo, let hi, let orig):
            ropeFreqs = llama3FreqFactors(headDim: c.headDim, theta: c.rope.theta, factor: f, lowFreqFactor: lo,
                                          highFreqFactor: hi, originalMax: orig)
        case .dynamic:
            throw refuse("config.llm.rope_scaling is 'dynamic' (NTK); llama.cpp's llama architecture has no dynamic NTK scaling, so positions would be encoded differently")
        }

        // Tensors, in llama.cpp's order: embedding, layers, final norm, head.
        var recipes: [GGUFTensorRecipe] = [GGUFTensorRecipe(canonical: "llm.embed.weight", gguf: "token_embd.weight")]
        for i in 0 ..< c.numLayers {
            let p = "llm.layers.\(i).", g = "blk.\(i)."
            recipes.append(.init(canonical: p + "attn_norm.weight", gguf: g + "attn_norm.weight", forceF32: true))
            let qPerm = ropePermutation(heads: c.numHeads, headDim: c.headDim)
            let kPerm = ropePermutation(heads: c.numKVHeads, headDim: c.headDim)
            recipes.append(.init(canonical: p + "attn.q.weight", gguf: g + "attn_q.weight", perm: qPerm))
            recipes.append(.init(canonical: p + "attn.k.weight", gguf: g + "attn_k.weight", perm: kPerm))
            recipes.append(.init(canonical: p + "attn.v.weight", gguf: g + "attn_v.weight"))
            recipes.append(.init(canonical: p + "attn.o.weight", gguf: g + "attn_output.weight"))
            if c.attentionBias {
                recipes.append(.init(canonical: p + "attn.q.bias", gguf: g + "attn_q.bias", perm: qPerm, forceF32: true))
                recipes.append(.init(canonical: p + "attn.k.bias", gguf: g + "attn_k.bias", perm: kPerm, forceF32: true))
                recipes.append(.init(canonical: p + "attn.v.bias", gguf: g + "attn_v.bias", forceF32: true))
            }
            if c.attentionOutBias {
                recipes.append(.init(canonical: p + "attn.o.bias", gguf: g + "attn_output.bias", forceF32: true))
            }
            recipes.append(.init(canonical: p + "mlp_norm.weight", gguf: g + "ffn_norm.weight", forceF32: true))
            if c.isMoE(i) {
                recipes.append(.init(canonical: p + "moe.router.weight", gguf: g + "ffn_gate_inp.weight", forceF32: true))
                recipes.append(.init(canonical: p + "moe.gate.weight", gguf: g + "ffn_gate_exps.weight"))
                recipes.append(.init(canonical: p + "moe.down.weight", gguf: g + "ffn_down_exps.weight"))
                recipes.append(.init(canonical: p + "moe.up.weight", gguf: g + "ffn_up_exps.weight"))
            } else {
                recipes.append(.init(canonical: p + "mlp.gate.weight", gguf: g + "ffn_gate.weight"))
                recipes.append(.init(canonical: p + "mlp.down.weight", gguf: g + "ffn_down.weight"))
                recipes.append(.init(canonical: p + "mlp.up.weight", gguf: g + "ffn_up.weight"))
            }
        }
        recipes.append(.init(canonical: "llm.norm.weight", gguf: "output_norm.weight", forceF32: true))
        if !c.tieEmbeddings { recipes.append(.init(canonical: "llm.head.weight", gguf: "output.weight")) }

        var plans: [GGUFTensorPlan] = []
        var kinds: [GGUFTensorRecipe.Kind] = []
        var requantized: [String] = []
        if let ropeFreqs {
            plans.append(GGUFTensorPlan(name: "rope_freqs.weight", ne: [ropeFreqs.count], type: .f32) { sink in
                try ropeFreqs.withUnsafeBytes { try sink($0) }
            })
            kinds.append(.exact)
        }
        try planTensors(recipes, bundle: b, bundlePath: bundlePath, options: options, plans: &plans, kinds: &kinds,
                        requantized: &requantized, kv: &kv)

        if options.tokenizer, b.section(named: "tokenizer.json") != nil {
            let l = b.config["llm"] as? [String: Any] ?? [:]
            var template: String?
            if b.section(named: "tokenizer_config.json") != nil,
               let tc = try? JSONSerialization.jsonObject(with: Data(try b.sectionData(named: "tokenizer_config.json"))) as? [String: Any] {
                template = tc["chat_template"] as? String
            }
            kv += try GGUFTokenizer.metadata(
                tokenizerJSON: try b.sectionData(named: "tokenizer.json"), vocabSize: c.vocabSize,
                bosTokenID: ConfigLookup.int(l, "bos_token_id"), eosTokenID: ConfigLookup.int(l, "eos_token_id"),
                chatTemplate: template, preOverride: options.tokenizerPre, file: bundlePath)
        } else {
            // llama.cpp needs the key; "none" loads a model that runs on token ids (llama.vocab_size of them).
            kv.append(("tokenizer.ggml.model", .string("none")))
        }
        kv += provenance(b, requantized: requantized, options: options)

        return GGUFPreparedExport(bundle: b, metadata: kv, tensors: plans, kinds: kinds, requantized: requantized, label: "export gguf")
    }

    // MARK: vision encoder + connector (mmproj)

    /// Writes the ViT and an MLP connector as a llama.cpp `clip` GGUF (projector type `mlp`, LLaVA-1.5 style).
    /// A C-Abstractor or average-pool connector has no llama.cpp projector type and is refused.
    public static func exportVision(bundle bundlePath: String, output: String,
                                    options: GGUFExportOptions = GGUFExportOptions()) throws -> GGUFExportResult {
        try prepareVision(bundle: BundleReader(path: bundlePath), options: options)
            .write(to: output, showProgress: options.showProgress)
    }

    /// Checks and plans the vision export; nothing is written.
    public static func prepareVision(bundle b: BundleReader, options: GGUFExportOptions) throws -> GGUFPreparedExport {
        let bundlePath = b.path
        func refuse(_ m: String) -> MM1Error { MM1Error(file: bundlePath, m) }
        guard let v = b.config["vision"] as? [String: Any] else { throw refuse("the bundle has no vision encoder (config.vision is null)") }
        guard let conn = b.config["connector"] as? [String: Any] else {
            throw refuse("the bundle has no connector (config.connector is null); llama.cpp's mmproj needs a projector")
        }
        let kind = conn["kind"] as? String ?? "?"
        guard kind == "mlp" else {
            throw refuse("connector kind '\(kind)' has no llama.cpp projector type (llama.cpp's clip projectors are mlp, ldp, ldpv2, resampler and model-specific ones; none is a C-Abstractor or an average pool + linear), so --vision-out cannot write it")
        }
        func int(_ k: String, _ d: [String: Any] = v, _ s: String = "vision") throws -> Int {
            guard let x = ConfigLookup.int(d, k) else { throw refuse("config.\(s).\(k) is missing or not an integer") }
            return x
        }
        func num(_ k: String, _ d: [String: Any]) -> Double? { (d[k] as? NSNumber)?.doubleValue }
        let layers = try int("num_layers"), e = try int("hidden_size")
        let heads = try int("num_heads")
        let classToken = v["class_token"] as? Bool ?? false
        let feature = ConfigLookup.int(v, "feature_layer") ?? -1
        let used = feature < 0 ? layers + 1 + feature : feature
        guard used >= 1, used <= layers else { throw refuse("config.vision.feature_layer \(feature) does not select a block of the \(layers)") }
        let postNormFeatures = v["post_norm_features"] as? Bool ?? false
        guard !postNormFeatures || used == layers else {
            throw refuse("config.vision.post_norm_features with feature_layer \(feature) (not the last block) has no llama.cpp equivalent")
        }
        if classToken, v["drop_class_token"] as? Bool != true {
            throw refuse("config.vision.drop_class_token is not true; llama.cpp's mlp projector drops the class token")
        }
        let act = v["activation"] as? String ?? "quick_gelu"
        guard act == "gelu" || act == "quick_gelu" else { throw refuse("config.vision.activation '\(act)' is neither gelu nor quick_gelu") }
        let connAct = conn["activation"] as? String ?? "gelu"
        guard connAct == "gelu" else { throw refuse("config.connector.activation '\(connAct)': llama.cpp's mlp projector uses GELU") }
        guard let ip = b.config["image_processor"] as? [String: Any], let mean = ip["image_mean"] as? [NSNumber],
              let std = ip["image_std"] as? [NSNumber], mean.count == 3, std.count == 3 else {
            throw refuse("config.image_processor has no image_mean/image_std; llama.cpp's clip needs them")
        }
        let imageSize = try ConfigLookup.int(ip, "image_size") ?? int("image_size")
        var kv: [(String, GGUFValue)] = [
            ("general.architecture", .string("clip")),
            ("general.type", .string("clip-vision")),
            ("general.name", .string(options.name ?? defaultName(bundlePath))),
            ("clip.has_text_encoder", .bool(false)),
            ("clip.has_vision_encoder", .bool(true)),
            ("clip.has_llava_projector", .bool(true)),
            ("clip.projector_type", .string("mlp")),
            ("clip.use_gelu", .bool(act == "gelu")),
            ("clip.vision.image_size", .u32(UInt32(imageSize))),
            ("clip.vision.patch_size", .u32(UInt32(try int("patch_size")))),
            ("clip.vision.embedding_length", .u32(UInt32(e))),
            ("clip.vision.feed_forward_length", .u32(UInt32(try int("intermediate_size")))),
            ("clip.vision.projection_dim", .u32(UInt32(try int("output_size", conn, "connector")))),
            ("clip.vision.block_count", .u32(UInt32(used))),
            // llama.cpp's llava graph runs block_count − 1 blocks unless a feature layer is given: name the last
            // block written (hidden-state index, 0 = the embeddings) so that it runs exactly the blocks written.
            ("clip.vision.feature_layer", .i32Array([Int32(used)])),
            ("clip.vision.attention.head_count", .u32(UInt32(heads))),
            ("clip.vision.attention.layer_norm_epsilon", .f32(Float(num("layer_norm_eps", v) ?? 1e-5))),
            ("clip.vision.image_mean", .f32Array(mean.map { $0.floatValue })),
            ("clip.vision.image_std", .f32Array(std.map { $0.floatValue })),
        ]
        var recipes: [GGUFTensorRecipe] = [.init(canonical: "vit.patch_embed.weight", gguf: "v.patch_embd.weight")]
        if v["patch_bias"] as? Bool == true { recipes.append(.init(canonical: "vit.patch_embed.bias", gguf: "v.patch_embd.bias", forceF32: true)) }
        if classToken { recipes.append(.init(canonical: "vit.class_embed", gguf: "v.class_embd", forceF32: true)) }
        recipes.append(.init(canonical: "vit.pos_embed", gguf: "v.position_embd.weight", forceF32: true))
        if v["pre_norm"] as? Bool == true {
            recipes += [.init(canonical: "vit.pre_norm.weight", gguf: "v.pre_ln.weight", forceF32: true),
                        .init(canonical: "vit.pre_norm.bias", gguf: "v.pre_ln.bias", forceF32: true)]
        }
        let names: [(String, String)] = [("norm1", "ln1"), ("attn.q", "attn_q"), ("attn.k", "attn_k"), ("attn.v", "attn_v"),
                                         ("attn.o", "attn_out"), ("norm2", "ln2"), ("mlp.fc1", "ffn_up"), ("mlp.fc2", "ffn_down")]
        for i in 0 ..< used {
            for (cn, gn) in names {
                for s in ["weight", "bias"] {
                    recipes.append(.init(canonical: "vit.blocks.\(i).\(cn).\(s)", gguf: "v.blk.\(i).\(gn).\(s)", forceF32: s == "bias" || cn.hasPrefix("norm")))
                }
            }
        }
        if postNormFeatures {
            recipes += [.init(canonical: "vit.post_norm.weight", gguf: "v.post_ln.weight", forceF32: true),
                        .init(canonical: "vit.post_norm.bias", gguf: "v.post_ln.bias", forceF32: true)]
        }
        recipes += [.init(canonical: "conn.fc1.weight", gguf: "mm.0.weight"), .init(canonical: "conn.fc1.bias", gguf: "mm.0.bias", forceF32: true),
                    .init(canonical: "conn.fc2.weight", gguf: "mm.2.weight"), .init(canonical: "conn.fc2.bias", gguf: "mm.2.bias", forceF32: true)]
        var plans: [GGUFTensorPlan] = []
        var kinds: [GGUFTensorRecipe.Kind] = []
        var requantized: [String] = []
        try planTensors(recipes, bundle: b, bundlePath: bundlePath, options: options, plans: &plans, kinds: &kinds,
                        requantized: &requantized, kv: &kv)
        kv += provenance(b, requantized: requantized, options: options)
        return GGUFPreparedExport(bundle: b, metadata: kv, tensors: plans, kinds: kinds, requantized: requantized, label: "export mmproj")
    }

    // MARK: shared pieces

    static func defaultName(_ path: String) -> String {
        URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
    }

    static func u32(_ v: Int, _ key: String, _ file: String) throws -> UInt32 {
        guard let x = UInt32(exactly: v) else { throw MM1Error(file: file, "config.llm.\(key) (\(v)) does not fit GGUF's u32") }
        return x
    }

    static func provenance(_ b: BundleReader, requantized: [String], options: GGUFExportOptions) -> [(String, GGUFValue)] {
        let digest = SHA256.hash(data: Data(b.headerText.utf8)).map { String(format: "%02x", $0) }.joined()
        var kv: [(String, GGUFValue)] = [
            ("mm1pack.tool_version", .string(Converter.toolVersion)),
            ("mm1pack.source_header_sha256", .string(digest)),
        ]
        if let r = options.requantize, !requantized.isEmpty {
            kv.append(("mm1pack.requantize", .string(r.rawValue)))
            kv.append(("mm1pack.requantized_tensors", .stringArray(requantized)))
        }
        return kv
    }

    /// Plans every tensor of `recipes` in order (type mapping, refusals, requantization) and adds the file-type
    /// keys: the type of the majority of weight elements (llama.cpp shows it; it does not read tensors by it).
    static func planTensors(_ recipes: [GGUFTensorRecipe], bundle b: BundleReader, bundlePath: String,
                            options: GGUFExportOptions, plans: inout [GGUFTensorPlan], kinds: inout [GGUFTensorRecipe.Kind],
                            requantized: inout [String], kv: inout [(String, GGUFValue)]) throws {
        for r in recipes {
            guard let t = b.tensor(named: r.canonical) else {
                throw MM1Error(file: bundlePath, tensor: r.canonical, "missing from the bundle (the config requires it)")
            }
            let (plan, kind) = try makePlan(r, t, bundle: b, options: options)
            plans.append(plan)
            kinds.append(kind)
            if kind == .requantized { requantized.append(r.canonical) }
        }
        kv.append(("general.file_type", .u32(fileType(plans))))
        if plans.contains(where: { $0.type == .q4_0 || $0.type == .q4_1 || $0.type == .q8_0 }) {
            kv.append(("general.quantization_version", .u32(2)))
        }
    }

    static func fileType(_ plans: [GGUFTensorPlan]) -> UInt32 {
        var count: [GGMLType: Int] = [:]
        for p in plans where p.ne.count >= 2 { count[p.type, default: 0] += p.ne.reduce(1, *) }
        let top = count.max { $0.value < $1.value || ($0.value == $1.value && $0.key.rawValue > $1.key.rawValue) }?.key ?? .f32
        switch top {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q4_K: return 15  // "mostly Q4_K_M"; the export never writes K-quants, the switch covers every type
        case .q6_K: return 18
        case .bf16: return 32
        }
    }

    /// Row permutation that turns the half-rotation (transformers) q/k layout into ggml's adjacent-pair RoPE
    /// layout (`rope` mode 0 of the llama architecture): within each head, dimension i < Dh/2 moves to 2i and
    /// dimension Dh/2 + i to 2i + 1. `perm[new] = old`.
    public static func ropePermutation(heads: Int, headDim: Int) -> [Int] {
        let half = headDim / 2
        var perm = [Int](repeating: 0, count: heads * headDim)
        for h in 0 ..< heads {
            for i in 0 ..< half {
                for j in 0 ..< 2 { perm[h * headDim + 2 * i + j] = h * headDim + j * half + i }
            }
        }
        return perm
    }

    /// llama.cpp's `rope_freqs` for Llama 3 scaling: the divisor of each frequency (the rotation angle of pair i
    /// is pos · θ^(−2i/Dh) / f[i]), which reproduces transformers' llama3 inverse frequencies.
    static func llama3FreqFactors(headDim: Int, theta: Double, factor: Double, lowFreqFactor: Double,
                                  highFreqFactor: Double, originalMax: Int) -> [Float] {
        let lowWavelen = Double(originalMax) / lowFreqFactor, highWavelen = Double(originalMax) / highFreqFactor
        return (0 ..< headDim / 2).map { i in
            let freq = 1 / pow(theta, Double(2 * i) / Double(headDim))
            let wavelen = 2 * Double.pi / freq
            if wavelen < highWavelen { return 1 }
            if wavelen > lowWavelen { return Float(factor) }
            let smooth = (Double(originalMax) / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor)
            return Float(1 / ((1 - smooth) / factor + smooth))
        }
    }

    /// Decides the GGUF type of one tensor (formats/gguf-export.md §3) and returns the producer of its bytes.
    /// Refuses, naming the tensor, what has no exact GGUF type when `--requantize` is not given.
    static func makePlan(_ r: GGUFTensorRecipe, _ t: BundleTensor, bundle b: BundleReader,
                         options: GGUFExportOptions) throws -> (GGUFTensorPlan, GGUFTensorRecipe.Kind) {
        var (plan, kind) = try makePlanReadingPages(r, t, bundle: b, options: options)
        // Once written, the tensor's pages of the bundle mapping leave the resident set (they stay in the page
        // cache), so the process holds about one tensor of the bundle at a time, not everything it has read.
        let produce = plan.produce
        plan.produce = { sink in
            try produce(sink)
            if let p = t.data.baseAddress { Widen.releasePages(p, bytes: t.data.count) }
        }
        return (plan, kind)
    }

    static func makePlanReadingPages(_ r: GGUFTensorRecipe, _ t: BundleTensor, bundle b: BundleReader,
                                     options: GGUFExportOptions) throws -> (GGUFTensorPlan, GGUFTensorRecipe.Kind) {
        func fail(_ m: String) -> MM1Error { MM1Error(file: b.path, tensor: t.name, m) }
        guard (1 ... GGUFWriter.maxDims).contains(t.shape.count) else {
            throw fail("rank \(t.shape.count) does not fit GGUF's 1 to 4 dimensions")
        }
        let ne = Array(t.shape.reversed())
        let cols = ne[0], rows = t.elementCount / cols
        if let p = r.perm, p.count != (t.shape.count == 1 ? cols : rows) {
            throw fail("shape \(t.shape) does not match the attention heads of the config (rope permutation of \(p.count) rows)")
        }
        let perm = r.perm

        if let dt = t.dtype {
            // Float tensors: the stored type, or F32 (exact widening) for 1-D tensors and the router.
            let srcSize = dt.byteSize
            let type: GGMLType = r.forceF32 ? .f32 : (dt == .f32 ? .f32 : dt == .f16 ? .f16 : .bf16)
            let kind: GGUFTensorRecipe.Kind = type == .f32 && dt != .f32 ? .widened : .exact
            let base = t.data.baseAddress!
            func widen(_ i: Int) -> Float {
                switch dt {
                case .f16: return Float(Float16(bitPattern: UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                case .bf16: return Float(bitPattern: UInt32(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
                default: return Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                }
            }
            let plan = GGUFTensorPlan(name: r.gguf, ne: ne, type: type) { sink in
                if t.shape.count == 1, let perm {
                    // A q/k bias: permute its elements.
                    var out = [UInt8](repeating: 0, count: cols * 4)
                    let vals = (0 ..< cols).map { widen(perm[$0]) }
                    vals.withUnsafeBufferPointer { GGUFBlocks.toF32($0.baseAddress!, cols: cols, out: &out) }
                    try out.withUnsafeBytes { try sink($0) }
                    return
                }
                let rowOut = type.rowBytes(cols)
                let chunk = max(1, (1 << 22) / max(1, rowOut))
                var buf = [UInt8](repeating: 0, count: min(rows, chunk) * rowOut)
                var tmp = [Float](repeating: 0, count: cols)
                var r0 = 0
                while r0 < rows {
                    let n = min(chunk, rows - r0)
                    buf.withUnsafeMutableBytes { o in
                        for k in 0 ..< n {
                            let src = perm?[r0 + k] ?? (r0 + k)
                            let dst = o.baseAddress! + k * rowOut
                            if type == .f32 && dt != .f32 {
                                for j in 0 ..< cols { tmp[j] = widen(src * cols + j) }
                                tmp.withUnsafeBufferPointer {
                                    GGUFBlocks.toF32($0.baseAddress!, cols: cols, out: dst.assumingMemoryBound(to: UInt8.self))
                                }
                            } else {
                                dst.copyMemory(from: base + src * cols * srcSize, byteCount: rowOut)
                            }
                        }
                    }
                    try buf.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0 ..< n * rowOut])) }
                    r0 += n
                }
            }
            return (plan, kind)
        }

        // Quantized tensors.
        guard let q = t.quant else { throw fail("unknown dtype \(t.dtypeName)") }
        let view = try QuantizedView(t, file: b.path)
        let spec = q.spec, g = spec.groupSize
        let base = t.data.baseAddress!
        let codes = (base + q.codes.lowerBound).assumingMemoryBound(to: UInt8.self)
        let scales = base + q.scales.lowerBound
        let zeros = q.zeros.map { base + $0.lowerBound }
        let groups = cols / g
        let codeRow = spec.bits == 8 ? cols : cols / 2

        var exactType: GGMLType?
        var why = ""
        if g % GGUFBlocks.block != 0 {
            why = "its group size \(g) is not a multiple of 32 (GGUF's Q8_0/Q4_0/Q4_1 blocks have one scale per 32 elements)"
        } else if spec.bits == 8 {
            exactType = .q8_0
        } else if spec.scheme == .sym {
            exactType = .q4_0
        } else if let zeros {
            // Q4_1 is exact only if every group's −s·z is an f16: check them all before writing.
            exactType = .q4_1
            for gi in 0 ..< rows * groups {
                if GGUFBlocks.q4_1Min(scale: GGUFBlocks.getU16(scales, gi), zero: GGUFBlocks.getU16(zeros, gi)) == nil {
                    let s = Float(Float16(bitPattern: GGUFBlocks.getU16(scales, gi)))
                    let z = Float(Float16(bitPattern: GGUFBlocks.getU16(zeros, gi)))
                    why = "int4 asym maps onto Q4_1 (x = d·q + m) only when m = −scale·zero is exactly an f16, and at row \(gi / groups), group \(gi % groups) it is not (scale \(s), zero \(z), −scale·zero = \(-(s * z)))"
                    exactType = nil
                    break
                }
            }
        }

        if let type = exactType {
            let rowOut = type.rowBytes(cols)
            let plan = GGUFTensorPlan(name: r.gguf, ne: ne, type: type) { sink in
                let chunk = max(1, (1 << 22) / rowOut)
                var buf = [UInt8](repeating: 0, count: min(rows, chunk) * rowOut)
                var r0 = 0
                while r0 < rows {
                    let n = min(chunk, rows - r0)
                    try buf.withUnsafeMutableBufferPointer { o in
                        for k in 0 ..< n {
                            let src = perm?[r0 + k] ?? (r0 + k)
                            let dst = o.baseAddress! + k * rowOut
                            let c = codes + src * codeRow, s = scales + src * groups * 2
                            switch type {
                            case .q8_0: GGUFBlocks.q8_0(codes: c, scales: s, cols: cols, group: g, out: dst)
                            case .q4_0: GGUFBlocks.q4_0(codes: c, scales: s, cols: cols, group: g, out: dst)
                            default:
                                if let bad = GGUFBlocks.q4_1(codes: c, scales: s, zeros: zeros! + src * groups * 2, cols: cols, group: g, out: dst) {
                                    throw fail("internal error: group \(bad) of row \(src) changed between the check and the write")
                                }
                            }
                        }
                    }
                    try buf.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[0 ..< n * rowOut])) }
                    r0 += n
                }
            }
            return (plan, .exact)
        }

        guard let rq = options.requantize else {
            throw fail("\(spec) has no exact GGUF type: \(why). Re-export with --requantize f32 (the bundle's dequantized values, exact, 4 bytes per weight), f16, q8_0 or q4_0 (lossy, ggml's reference rounding of the dequantized values), or quantize the bundle with recipes/gguf-q4_0.json or recipes/gguf-q8_0.json")
        }
        let type: GGMLType = rq == .f32 ? .f32 : rq == .f16 ? .f16 : rq == .q8_0 ? .q8_0 : .q4_0
        guard cols % type.blockSize == 0 else {
            throw fail("--requantize \(rq.rawValue) needs rows of a multiple of 32 elements, not \(cols); use --requantize f32 or f16")
        }
        let rowOut = type.rowBytes(cols)
        let plan = GGUFTensorPlan(name: r.gguf, ne: ne, type: type) { sink in
            var row = [Float](repeating: 0, count: cols)
            var out = [UInt8](repeating: 0, count: rowOut)
            for k in 0 ..< rows {
                let src = perm?[k] ?? k
                row.withUnsafeMutableBufferPointer { view.dequantize(rows: src ..< src + 1, into: $0.baseAddress!) }
                row.withUnsafeBufferPointer { x in
                    out.withUnsafeMutableBufferPointer { o in
                        switch type {
                        case .f32: GGUFBlocks.toF32(x.baseAddress!, cols: cols, out: o.baseAddress!)
                        case .f16: GGUFBlocks.toF16(x.baseAddress!, cols: cols, out: o.baseAddress!)
                        case .q8_0: GGUFBlocks.quantizeQ8_0(x.baseAddress!, cols: cols, out: o.baseAddress!)
                        default: GGUFBlocks.quantizeQ4_0(x.baseAddress!, cols: cols, out: o.baseAddress!)
                        }
                    }
                }
                try out.withUnsafeBytes { try sink($0) }
            }
        }
        return (plan, .requantized)
    }
}
