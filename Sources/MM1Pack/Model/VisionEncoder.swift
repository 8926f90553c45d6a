import CKernels
import COpenBLAS
import Dispatch
import Foundation

/// Typed access to one section of the canonical configuration (`vision`, `connector`).
struct ModelConfigSection {
    let name: String
    let dict: [String: Any]

    init(_ config: [String: Any], _ name: String) throws {
        guard let d = config[name] as? [String: Any] else {
            throw MM1Error("the bundle's config has no '\(name)' section")
        }
        self.name = name
        self.dict = d
    }

    func int(_ key: String) throws -> Int {
        guard let v = dict[key] else { throw MM1Error("config \(name).\(key) is missing") }
        if let i = v as? Int { return i }
        if let d = v as? Double, d == d.rounded() { return Int(d) }
        throw MM1Error("config \(name).\(key) is not an integer")
    }

    func int(_ key: String, default def: Int) throws -> Int {
        dict[key] == nil || dict[key] is NSNull ? def : try int(key)
    }

    func double(_ key: String, default def: Double) throws -> Double {
        guard let v = dict[key], !(v is NSNull) else { return def }
        if let d = v as? Double { return d }
        if let i = v as? Int { return Double(i) }
        throw MM1Error("config \(name).\(key) is not a number")
    }

    func bool(_ key: String, default def: Bool) throws -> Bool {
        guard let v = dict[key], !(v is NSNull) else { return def }
        if let b = v as? Bool { return b }
        throw MM1Error("config \(name).\(key) is not a boolean")
    }

    func string(_ key: String, default def: String) throws -> String {
        guard let v = dict[key], !(v is NSNull) else { return def }
        if let s = v as? String { return s }
        throw MM1Error("config \(name).\(key) is not a string")
    }
}

/// The CLIP-style ViT image encoder (`vit.` tensors, `config["vision"]`).
///
/// One image `[C, s, s]` → the features handed to the connector: patch convolution, class token, position
/// embeddings (bicubically resized when the patch grid differs from the trained one), pre-norm, the blocks up to
/// `feature_layer`, then `vit.post_norm` when `post_norm_features`, and the class token removed when
/// `drop_class_token`. Weights are read from the bundle block by block during `forward`.
public final class VisionEncoder: @unchecked Sendable {
    public let weights: ModelWeights
    public let hiddenSize: Int
    public let numLayers: Int
    public let numHeads: Int
    public let intermediateSize: Int
    public let patchSize: Int
    public let imageSize: Int
    public let numChannels: Int
    public let classToken: Bool
    public let patchBias: Bool
    public let preNorm: Bool
    public let eps: Float
    public let activation: String
    /// `feature_layer` as configured (Python index into [embeddings, block 1 … block L]).
    public let featureLayer: Int
    /// Number of blocks actually run: the resolved index of `feature_layer`.
    public let blocksToRun: Int
    public let postNormFeatures: Bool
    public let dropClassToken: Bool

    public init(weights: ModelWeights) throws {
        self.weights = weights
        let v = try ModelConfigSection(weights.config, "vision")
        hiddenSize = try v.int("hidden_size")
        numLayers = try v.int("num_layers")
        numHeads = try v.int("num_heads")
        intermediateSize = try v.int("intermediate_size")
        patchSize = try v.int("patch_size")
        imageSize = try v.int("image_size")
        numChannels = try v.int("num_channels", default: 3)
        classToken = try v.bool("class_token", default: true)
        patchBias = try v.bool("patch_bias", default: false)
        preNorm = try v.bool("pre_norm", default: true)
        eps = Float(try v.double("layer_norm_eps", default: 1e-5))
        activation = try v.string("activation", default: "quick_gelu")
        featureLayer = try v.int("feature_layer", default: -1)
        postNormFeatures = try v.bool("post_norm_features", default: false)
        dropClassToken = try v.bool("drop_class_token", default: false)
        guard numHeads > 0, hiddenSize % numHeads == 0 else {
            throw MM1Error("vision.hidden_size \(hiddenSize) is not a multiple of vision.num_heads \(numHeads)")
        }
        guard patchSize > 0 else { throw MM1Error("vision.patch_size must be positive") }
        let states = numLayers + 1
        let idx = featureLayer < 0 ? states + featureLayer : featureLayer
        guard idx >= 0 && idx < states else {
            throw MM1Error("vision.feature_layer \(featureLayer) is outside [embeddings, block 1 … block \(numLayers)]")
        }
        blocksToRun = idx
        guard ["quick_gelu", "gelu", "silu", "gelu_tanh", "gelu_pytorch_tanh"].contains(activation) else {
            throw MM1Error("vision.activation '\(activation)' is not supported")
        }
        if dropClassToken && !classToken {
            throw MM1Error("vision.drop_class_token is set but the encoder has no class token")
        }
        let e = hiddenSize
        try expectShape("vit.patch_embed.weight", [e, numChannels, patchSize, patchSize])
        try expectShape("vit.pos_embed", [(imageSize / patchSize) * (imageSize / patchSize) + (classToken ? 1 : 0), e])
        if postNormFeatures { try expectShape("vit.post_norm.weight", [e]) }
    }

    public convenience init(path: String) throws {
        try self.init(weights: try ModelWeights(path: path))
    }

    private func expectShape(_ name: String, _ shape: [Int]) throws {
        let s = try weights.shape(name)
        guard s == shape else { throw MM1Error(tensor: name, "has shape \(s), the config implies \(shape)") }
    }

    /// Tokens out of `forward` for an `s × s` image.
    public func outputTokens(size s: Int) -> Int {
        let g = s / patchSize
        return g * g + (classToken && !dropClassToken ? 1 : 0)
    }

    /// One image, `pixels` = `[C, s, s]` (CHW, normalised). Returns `[tokens, width]` row-major.
    /// `hooks` receive `vit.embeddings` (after the pre-norm, [T, E]), `vit.blocks.{i}.output` ([T, E]) for each
    /// block run, and `vit.features` (what is returned).
    public func forward(pixels: [Float], size s: Int, hooks: (any ForwardHooks)? = nil) throws -> (features: [Float], tokens: Int, width: Int) {
        try forward(pixels: pixels, height: s, width: s, hooks: hooks)
    }

    /// Non-square variant: `pixels` = `[C, h, w]`.
    public func forward(pixels: [Float], height h: Int, width w: Int, hooks: (any ForwardHooks)? = nil) throws -> (features: [Float], tokens: Int, width: Int) {
        var (x, t) = try embed(pixels: pixels, height: h, width: w)
        hooks.report(.named("vit.embeddings"), x, [t, hiddenSize])
        for i in 0..<blocksToRun {
            x = try block(i, x, tokens: t, hooks: hooks)
            hooks.report(.named("vit.blocks.\(i).output"), x, [t, hiddenSize])
        }
        let f = try finish(x, tokens: t)
        hooks.report(.named("vit.features"), f.features, [f.tokens, hiddenSize])
        return (f.features, f.tokens, hiddenSize)
    }

    /// The input of block 0 for an image `[C, h, w]`: patch embedding, class token, position embeddings and the
    /// pre-norm, `[t, E]`. `forward` = `embed`, then `block` for `0..<blocksToRun`, then `finish`; the quantizer
    /// runs the same three steps one block at a time over all its calibration images.
    public func embed(pixels: [Float], height h: Int, width w: Int) throws -> (x: [Float], tokens: Int) {
        guard pixels.count == numChannels * h * w else {
            throw MM1Error("image has \(pixels.count) values, expected \(numChannels)×\(h)×\(w)")
        }
        guard h >= patchSize && w >= patchSize else {
            throw MM1Error("image \(h)×\(w) is smaller than one \(patchSize)×\(patchSize) patch")
        }
        let e = hiddenSize
        let pe = Conv.patchEmbed(pixels, channels: numChannels, height: h, width: w, patch: patchSize,
                                 weight: try weights.f32("vit.patch_embed.weight"), out: e,
                                 bias: patchBias ? try weights.f32("vit.patch_embed.bias") : nil)
        let cls = classToken ? 1 : 0
        let t = pe.gh * pe.gw + cls
        var x = [Float](repeating: 0, count: t * e)
        if classToken {
            let c = try weights.f32("vit.class_embed")
            for i in 0..<e { x[i] = c[i] }
        }
        pe.tokens.withUnsafeBufferPointer { src in
            x.withUnsafeMutableBufferPointer { dst in
                for i in 0..<(pe.gh * pe.gw * e) { dst[cls * e + i] = src[i] }
            }
        }
        let pos = try Interpolate.positionEmbedding(try weights.f32("vit.pos_embed"), width: e, classToken: classToken,
                                                    toHeight: pe.gh, width: pe.gw)
        Conv.accumulate(&x, pos)
        if preNorm {
            x = Norm.layerNorm(x, rows: t, d: e, weight: try weights.f32("vit.pre_norm.weight"),
                               bias: try weights.f32("vit.pre_norm.bias"), eps: eps)
        }
        return (x, t)
    }

    /// The features handed to the connector from the last block's output: post-norm and class-token removal as
    /// configured.
    public func finish(_ input: [Float], tokens t: Int) throws -> (features: [Float], tokens: Int) {
        let e = hiddenSize
        var x = input
        if postNormFeatures {
            x = Norm.layerNorm(x, rows: t, d: e, weight: try weights.f32("vit.post_norm.weight"),
                               bias: try weights.f32("vit.post_norm.bias"), eps: eps)
        }
        if dropClassToken { x = Array(x[e...]) }
        return (x, dropClassToken ? t - 1 : t)
    }

    /// x[t, in] · Wᵀ + b, the weight widened into a reused scratch buffer for the duration of the sgemm.
    func linear(_ name: String, _ x: [Float], rows t: Int, out: Int, in k: Int, bias: String,
                hooks: (any ForwardHooks)? = nil) throws -> [Float] {
        precondition(x.count == t * k, "linear: shape mismatch")
        let b = try weights.f32(bias)
        var y = [Float](unsafeUninitializedCapacity: t * out) { buf, n in
            let yp = buf.baseAddress!
            b.withUnsafeBufferPointer { bp in
                for r in 0..<t { (yp + r * out).initialize(from: bp.baseAddress!, count: out) }
            }
            n = t * out
        }
        let wt = try weights.readableTensor(name)
        guard wt.elementCount == out * k else {
            throw MM1Error(file: weights.bundle.path, tensor: name, "has shape \(wt.shape), not [\(out), \(k)]")
        }
        hooks.report(.linearInput(name), x, [t, k])
        try weights.withF32(name) { w in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    Linear.gemmNT(xp.baseAddress!, rows: t, weight: w, out: out, in: k, into: yp.baseAddress!, ldy: out, accumulate: true)
                }
            }
        }
        return y
    }

    /// One pre-norm transformer block on `[t, E]`.
    public func block(_ i: Int, _ x: [Float], tokens t: Int, hooks: (any ForwardHooks)? = nil) throws -> [Float] {
        let e = hiddenSize
        let p = "vit.blocks.\(i)."
        func w(_ n: String) throws -> [Float] { try weights.f32(p + n) }
        let h = Norm.layerNorm(x, rows: t, d: e, weight: try w("norm1.weight"), bias: try w("norm1.bias"), eps: eps)
        let q = try linear(p + "attn.q.weight", h, rows: t, out: e, in: e, bias: p + "attn.q.bias", hooks: hooks)
        let k = try linear(p + "attn.k.weight", h, rows: t, out: e, in: e, bias: p + "attn.k.bias", hooks: hooks)
        let v = try linear(p + "attn.v.weight", h, rows: t, out: e, in: e, bias: p + "attn.v.bias", hooks: hooks)
        let a = VisionEncoder.attention(q: q, k: k, v: v, tokens: t, heads: numHeads, width: e)
        var x1 = try linear(p + "attn.o.weight", a, rows: t, out: e, in: e, bias: p + "attn.o.bias", hooks: hooks)
        Conv.accumulate(&x1, x)
        let h2 = Norm.layerNorm(x1, rows: t, d: e, weight: try w("norm2.weight"), bias: try w("norm2.bias"), eps: eps)
        var f = try linear(p + "mlp.fc1.weight", h2, rows: t, out: intermediateSize, in: e, bias: p + "mlp.fc1.bias", hooks: hooks)
        try Activation.apply(activation, &f)
        var out = try linear(p + "mlp.fc2.weight", f, rows: t, out: e, in: intermediateSize, bias: p + "mlp.fc2.bias", hooks: hooks)
        Conv.accumulate(&out, x1)
        return out
    }

    /// Unmasked multi-head attention: softmax(q_h k_hᵀ / √Dh) v_h for every head, heads in parallel.
    /// `q`, `k`, `v` are `[t, width]`; the result is `[t, width]` with head h in columns h·Dh ..< (h+1)·Dh.
    static func attention(q: [Float], k: [Float], v: [Float], tokens t: Int, heads nh: Int, width e: Int) -> [Float] {
        let dh = e / nh
        let scale = 1 / Float(dh).squareRoot()
        var out = [Float](repeating: 0, count: t * e)
        q.withUnsafeBufferPointer { qp in
            k.withUnsafeBufferPointer { kp in
                v.withUnsafeBufferPointer { vp in
                    out.withUnsafeMutableBufferPointer { op in
                        let ptrs = AttentionPointers(q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!, out: op.baseAddress!)
                        // Heads on all cores, each sgemm single-threaded (OpenBLAS's threads fight when several
                        // threads call it at once).
                        BLASThreads.single { DispatchQueue.concurrentPerform(iterations: nh) { head in
                            let qb = ptrs.q, kb = ptrs.k, vb = ptrs.v, ob = ptrs.out
                            let col = head * dh
                            let scores = UnsafeMutablePointer<Float>.allocate(capacity: t * t)
                            defer { scores.deallocate() }
                            // scores = scale · Q_h · K_hᵀ, reading the head's columns in place (ld = e).
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(t), Int32(dh), scale,
                                        qb + col, Int32(e), kb + col, Int32(e), 0, scores, Int32(t))
                            for r in 0..<t { mm1_softmax_f32(scores + r * t, t) }
                            // out_h = P · V_h, written into the head's columns (ld = e).
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(dh), Int32(t), 1,
                                        scores, Int32(t), vb + col, Int32(e), 0, ob + col, Int32(e))
                        } }
                    }
                }
            }
        }
        return out
    }
}

/// The attention buffers shared by the per-head workers; each head writes only its own columns of `out`.
private struct AttentionPointers: @unchecked Sendable {
    let q: UnsafePointer<Float>
    let k: UnsafePointer<Float>
    let v: UnsafePointer<Float>
    let out: UnsafeMutablePointer<Float>
}
