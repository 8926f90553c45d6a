import Foundation

/// The vision–language connector (`conn.` tensors, `config["connector"]`): image features `[n, Ec]` from the
/// `VisionEncoder` → `[Q, D]` LLM embeddings.
///
/// - `c_abstractor` (Honeybee): prenorm?, + pos_embed, RegStage s1, AdaptiveAvgPool2d to √Q×√Q, RegStage s2,
///   readout MLP. Feature maps are channels-last (see `Conv`), which is the token order of the features.
/// - `mlp` (LLaVA): fc1 → activation → fc2, per token.
/// - `avgpool_linear`: AdaptiveAvgPool2d of the token grid to √Q×√Q → `conn.proj`.
public final class Connector: @unchecked Sendable {
    public enum Kind: String, Sendable { case cAbstractor = "c_abstractor", mlp, avgpoolLinear = "avgpool_linear" }

    public let weights: ModelWeights
    public let kind: Kind
    public let inputSize: Int
    public let outputSize: Int
    /// C-Abstractor hidden width H (0 for the other kinds).
    public let hiddenSize: Int
    public let depth: Int
    public let mlpDepth: Int
    /// Output tokens per image for the pooling kinds; nil for `mlp` (one output per input token).
    public let numQueries: Int?
    public let numInputTokens: Int?
    public let posEmb: Bool
    public let prenorm: Bool
    public let eps: Float
    public let activation: String

    public init(weights: ModelWeights) throws {
        self.weights = weights
        let c = try ModelConfigSection(weights.config, "connector")
        let k = try c.string("kind", default: "")
        guard let kind = Kind(rawValue: k) else {
            throw MM1Error("connector.kind '\(k)' is not supported (c_abstractor, mlp, avgpool_linear)")
        }
        self.kind = kind
        inputSize = try c.int("input_size")
        outputSize = try c.int("output_size")
        eps = Float(try c.double("layer_norm_eps", default: 1e-5))
        activation = try c.string("activation", default: "gelu")
        numInputTokens = c.dict["num_input_tokens"] is NSNull || c.dict["num_input_tokens"] == nil
            ? nil : try c.int("num_input_tokens")
        switch kind {
        case .cAbstractor:
            hiddenSize = try c.int("hidden_size")
            depth = try c.int("depth")
            mlpDepth = try c.int("mlp_depth")
            posEmb = try c.bool("pos_emb", default: true)
            prenorm = try c.bool("prenorm", default: false)
            guard mlpDepth >= 1 else { throw MM1Error("connector.mlp_depth must be at least 1") }
        case .mlp, .avgpoolLinear:
            hiddenSize = 0
            depth = 0
            mlpDepth = kind == .mlp ? 2 : 1
            posEmb = false
            prenorm = false
        }
        if kind == .mlp {
            numQueries = nil
            guard ["gelu", "quick_gelu", "silu", "gelu_tanh", "gelu_pytorch_tanh"].contains(activation) else {
                throw MM1Error("connector.activation '\(activation)' is not supported")
            }
        } else {
            let q = try c.int("num_queries")
            let side = Int(Double(q).squareRoot().rounded())
            guard q > 0, side * side == q else { throw MM1Error("connector.num_queries \(q) is not a perfect square") }
            numQueries = q
        }
    }

    public convenience init(path: String) throws {
        try self.init(weights: try ModelWeights(path: path))
    }

    /// Output tokens for `n` input tokens.
    public func outputTokens(inputTokens n: Int) -> Int { numQueries ?? n }

    /// `features` = `[n, Ec]` row-major (one image) → `[Q, D]` (`[n, D]` for `mlp`).
    public func forward(features: [Float], tokens n: Int) throws -> [Float] {
        guard features.count == n * inputSize else {
            throw MM1Error("connector input has \(features.count) values, expected \(n) tokens × \(inputSize)")
        }
        switch kind {
        case .mlp: return try forwardMLP(features, n)
        case .avgpoolLinear: return try forwardAvgPool(features, n)
        case .cAbstractor: return try forwardCAbstractor(features, n)
        }
    }

    private func w(_ name: String) throws -> [Float] { try weights.f32("conn." + name) }

    /// Side of the square token grid; the class token must already be gone.
    private func gridSide(_ n: Int) throws -> Int {
        let s = Int(Double(n).squareRoot().rounded())
        guard s * s == n else {
            throw MM1Error("connector \(kind.rawValue) needs a square token grid, got \(n) tokens (is the class token still there?)")
        }
        return s
    }

    private func forwardMLP(_ x: [Float], _ n: Int) throws -> [Float] {
        var h = Linear.forward(x, rows: n, weight: try w("fc1.weight"), out: outputSize, in: inputSize, bias: try w("fc1.bias"))
        try Activation.apply(activation, &h)
        return Linear.forward(h, rows: n, weight: try w("fc2.weight"), out: outputSize, in: outputSize, bias: try w("fc2.bias"))
    }

    private func forwardAvgPool(_ x: [Float], _ n: Int) throws -> [Float] {
        let g = try gridSide(n)
        let q = numQueries!, side = Int(Double(q).squareRoot().rounded())
        let pooled = Conv.adaptiveAvgPool(x, height: g, width: g, channels: inputSize, outHeight: side, outWidth: side)
        return Linear.forward(pooled, rows: q, weight: try w("proj.weight"), out: outputSize, in: inputSize,
                              bias: try w("proj.bias"))
    }

    private func forwardCAbstractor(_ input: [Float], _ n: Int) throws -> [Float] {
        let e = inputSize
        var x = input
        if prenorm {
            x = Norm.layerNorm(x, rows: n, d: e, weight: try w("prenorm.weight"), bias: try w("prenorm.bias"), eps: eps)
        }
        if posEmb {
            let shape = try weights.shape("conn.pos_embed")
            guard shape == [n, e] else {
                throw MM1Error(tensor: "conn.pos_embed", "has shape \(shape) but the connector got \(n) tokens of width \(e)")
            }
            Conv.accumulate(&x, try w("pos_embed"))
        }
        let g = try gridSide(n)
        let q = numQueries!, side = Int(Double(q).squareRoot().rounded())
        var c = e
        for j in 0..<depth {
            x = try regBlock("s1.b\(j).", x, height: g, width: g, inChannels: c)
            c = hiddenSize
        }
        x = Conv.adaptiveAvgPool(x, height: g, width: g, channels: c, outHeight: side, outWidth: side)
        for j in 0..<depth {
            x = try regBlock("s2.b\(j).", x, height: side, width: side, inChannels: c)
        }
        // Readout: Linear → (SiLU → Linear) × (mlp_depth − 1).
        for r in 0..<mlpDepth {
            if r > 0 { try Activation.apply("silu", &x) }
            let inW = r == 0 ? c : outputSize
            x = Linear.forward(x, rows: q, weight: try w("readout.\(r).weight"), out: outputSize, in: inW,
                               bias: try w("readout.\(r).bias"))
        }
        return x
    }

    /// timm RegNet `Bottleneck` (bottle_ratio 1, group_size 1, SE, LayerNorm2d, SiLU) on a channels-last map.
    private func regBlock(_ p: String, _ x: [Float], height h: Int, width wd: Int, inChannels cin: Int) throws -> [Float] {
        let hc = hiddenSize, px = h * wd
        func norm(_ y: [Float], _ name: String) throws -> [Float] {
            Norm.layerNorm(y, rows: px, d: hc, weight: try w(p + name + ".weight"), bias: try w(p + name + ".bias"), eps: eps)
        }
        var y = Conv.pointwise(x, pixels: px, weight: try w(p + "conv1.weight"), out: hc, in: cin)
        y = try norm(y, "norm1")
        try Activation.apply("silu", &y)
        y = Conv.depthwise(y, height: h, width: wd, channels: hc, weight: try w(p + "conv2.weight"), kernel: 3, padding: 1).output
        y = try norm(y, "norm2")
        try Activation.apply("silu", &y)
        // Squeeze-excite: channel means → fc1 → SiLU → fc2 → sigmoid → scale.
        let seShape = try weights.shape("conn." + p + "se.fc1.weight")
        let r = seShape[0]
        var mean = [Float](repeating: 0, count: hc)
        y.withUnsafeBufferPointer { yp in
            mean.withUnsafeMutableBufferPointer { mp in
                for i in 0..<px { let row = yp.baseAddress! + i * hc; for ch in 0..<hc { mp[ch] += row[ch] } }
                let inv = 1 / Float(px)
                for ch in 0..<hc { mp[ch] *= inv }
            }
        }
        var s = Linear.forward(mean, rows: 1, weight: try w(p + "se.fc1.weight"), out: r, in: hc, bias: try w(p + "se.fc1.bias"))
        try Activation.apply("silu", &s)
        s = Linear.forward(s, rows: 1, weight: try w(p + "se.fc2.weight"), out: hc, in: r, bias: try w(p + "se.fc2.bias"))
        for ch in 0..<hc { s[ch] = 1 / (1 + Foundation.exp(-s[ch])) }
        y.withUnsafeMutableBufferPointer { yp in
            s.withUnsafeBufferPointer { sp in
                for i in 0..<px { let row = yp.baseAddress! + i * hc; for ch in 0..<hc { row[ch] *= sp[ch] } }
            }
        }
        y = Conv.pointwise(y, pixels: px, weight: try w(p + "conv3.weight"), out: hc, in: hc)
        y = try norm(y, "norm3")
        if weights.has("conn." + p + "down.weight") {
            var sc = Conv.pointwise(x, pixels: px, weight: try w(p + "down.weight"), out: hc, in: cin)
            sc = try norm(sc, "down_norm")
            Conv.accumulate(&y, sc)
        } else {
            guard cin == hc else { throw MM1Error(tensor: "conn." + p + "down.weight", "is missing while the block changes width \(cin) → \(hc)") }
            Conv.accumulate(&y, x)
        }
        try Activation.apply("silu", &y)
        return y
    }
}
