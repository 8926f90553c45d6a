import CKernels
import Foundation

/// The `llm` section of the canonical configuration, validated.
public struct LLMConfig: Sendable, Equatable {
    public struct MoE: Sendable, Equatable {
        public var numExperts: Int
        public var intermediateSize: Int
        public var layers: Set<Int>
        public var topK: Int
        public var renormalize: Bool
    }

    public var vocabSize: Int
    public var hiddenSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var intermediateSize: Int
    public var rmsNormEps: Float
    public var rope: RoPE
    public var tieEmbeddings: Bool
    public var attentionBias: Bool
    public var attentionOutBias: Bool
    public var activation: String
    public var moe: MoE?

    /// Reads `config["llm"]`. Missing required fields and inconsistent values throw an MM1Error naming the field.
    /// Defaults, as transformers' LlamaConfig: `rms_norm_eps` 1e-6, `rope_theta` 10000, `max_position_embeddings`
    /// 2048, `activation` silu, biases and tied embeddings off.
    public init(_ root: [String: Any], file: String? = nil) throws {
        func err(_ m: String) -> MM1Error { MM1Error(file: file, m) }
        guard let l = root["llm"] as? [String: Any] else {
            throw err("config has no language model (config.llm is \(root["llm"] == nil ? "missing" : "null"))")
        }
        func int(_ key: String, in d: [String: Any] = l, _ section: String = "llm", min lo: Int = 1) throws -> Int {
            guard d[key] != nil, !(d[key] is NSNull) else { throw err("config.\(section).\(key) is missing") }
            guard let v = ConfigLookup.int(d, key) else { throw err("config.\(section).\(key) must be an integer") }
            guard v >= lo else { throw err("config.\(section).\(key) must be at least \(lo), not \(v)") }
            return v
        }
        func num(_ key: String, default def: Double) throws -> Double {
            guard let v = l[key], !(v is NSNull) else { return def }
            if let d = v as? Double { return d }
            if let i = v as? Int { return Double(i) }
            throw err("config.llm.\(key) must be a number")
        }
        func bool(_ key: String, in d: [String: Any] = l, _ section: String = "llm", default def: Bool? = false) throws -> Bool {
            guard let v = d[key], !(v is NSNull) else {
                if let def { return def }
                throw err("config.\(section).\(key) is missing")
            }
            guard let b = v as? Bool else { throw err("config.\(section).\(key) must be true or false") }
            return b
        }
        vocabSize = try int("vocab_size")
        hiddenSize = try int("hidden_size")
        numLayers = try int("num_layers", min: 0)
        numHeads = try int("num_heads")
        numKVHeads = try int("num_kv_heads")
        headDim = try int("head_dim")
        intermediateSize = try int("intermediate_size", min: 0)
        guard numHeads % numKVHeads == 0 else {
            throw err("config.llm.num_heads (\(numHeads)) must be a multiple of num_kv_heads (\(numKVHeads))")
        }
        let eps = try num("rms_norm_eps", default: 1e-6)
        guard eps >= 0 else { throw err("config.llm.rms_norm_eps must not be negative") }
        rmsNormEps = Float(eps)
        let maxPos = ConfigLookup.int(l, "max_position_embeddings") ?? 2048
        do {
            rope = try RoPE(headDim: headDim, theta: try num("rope_theta", default: 10000),
                            scalingConfig: l["rope_scaling"], maxPositionEmbeddings: maxPos)
        } catch let e as MM1Error { throw e.inFile(file ?? "") }
        tieEmbeddings = try bool("tie_embeddings")
        attentionBias = try bool("attention_bias")
        attentionOutBias = try bool("attention_out_bias")
        if let a = l["activation"], !(a is NSNull) {
            guard let s = a as? String else { throw err("config.llm.activation must be a string") }
            activation = s
        } else {
            activation = "silu"
        }
        do { var probe: [Float] = [0]; try Activation.apply(activation, &probe) } catch {
            throw err("config.llm.activation '\(activation)' is not supported")
        }
        if let m = l["moe"] as? [String: Any] {
            let x = try int("num_experts", in: m, "llm.moe")
            let fe = try int("intermediate_size", in: m, "llm.moe", min: 0)
            guard let layers = m["layers"] as? [Int] else { throw err("config.llm.moe.layers is missing (a list of layer indices)") }
            if let bad = layers.first(where: { $0 < 0 || $0 >= numLayers }) {
                throw err("config.llm.moe.layers lists layer \(bad), but the model has \(numLayers) layers")
            }
            let k = try int("top_k", in: m, "llm.moe")
            guard k <= x else { throw err("config.llm.moe.top_k (\(k)) exceeds num_experts (\(x))") }
            moe = MoE(numExperts: x, intermediateSize: fe, layers: Set(layers), topK: k,
                      renormalize: try bool("renormalize", in: m, "llm.moe", default: nil))
        } else if let m = l["moe"], !(m is NSNull) {
            throw err("config.llm.moe must be an object or null")
        } else {
            moe = nil
        }
    }

    public func isMoE(_ layer: Int) -> Bool { moe?.layers.contains(layer) ?? false }
}

/// A Llama-style pre-norm decoder over a bundle's `llm.` tensors (formats/canonical.md).
///
/// Weights stay in the bundle's memory map and are widened to f32 one tensor at a time while a layer runs (MoE
/// experts one expert at a time, the output head in vocabulary chunks), so memory holds at most one layer in f32.
/// All projections are OpenBLAS sgemm calls; attention is sgemm per head and query block, spread over the cores.
public final class LanguageModel: @unchecked Sendable {
    public let weights: ModelWeights
    public let config: LLMConfig

    /// Vocabulary rows widened per step of the output head.
    var headChunkRows: Int { max(256, (16 << 20) / max(1, config.hiddenSize)) }

    public init(weights: ModelWeights) throws {
        self.weights = weights
        self.config = try LLMConfig(weights.config, file: weights.bundle.path)
        try validateTensors()
    }

    public convenience init(path: String) throws {
        try self.init(weights: ModelWeights(path: path))
    }

    /// A model with an explicitly given (already validated) configuration, for tests and experiments.
    init(weights: ModelWeights, config: LLMConfig) throws {
        self.weights = weights
        self.config = config
        try validateTensors()
    }

    static func layerPrefix(_ i: Int) -> String { "llm.layers.\(i)." }

    /// Every tensor the forward pass reads, with its shape.
    public var requiredTensors: [(name: String, shape: [Int])] {
        let c = config
        let d = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        var out: [(String, [Int])] = [("llm.embed.weight", [c.vocabSize, d])]
        for i in 0..<c.numLayers {
            let b = LanguageModel.layerPrefix(i)
            out += [(b + "attn_norm.weight", [d]), (b + "attn.q.weight", [q, d]), (b + "attn.k.weight", [kv, d]),
                    (b + "attn.v.weight", [kv, d]), (b + "attn.o.weight", [d, q]), (b + "mlp_norm.weight", [d])]
            if c.attentionBias { out += [(b + "attn.q.bias", [q]), (b + "attn.k.bias", [kv]), (b + "attn.v.bias", [kv])] }
            if c.attentionOutBias { out.append((b + "attn.o.bias", [d])) }
            if let m = c.moe, m.layers.contains(i) {
                out += [(b + "moe.router.weight", [m.numExperts, d]),
                        (b + "moe.gate.weight", [m.numExperts, m.intermediateSize, d]),
                        (b + "moe.up.weight", [m.numExperts, m.intermediateSize, d]),
                        (b + "moe.down.weight", [m.numExperts, d, m.intermediateSize])]
            } else {
                out += [(b + "mlp.gate.weight", [c.intermediateSize, d]), (b + "mlp.up.weight", [c.intermediateSize, d]),
                        (b + "mlp.down.weight", [d, c.intermediateSize])]
            }
        }
        out.append(("llm.norm.weight", [d]))
        out.append((headName, [c.vocabSize, d]))
        return out
    }

    /// The output projection: `llm.head.weight`, or the embedding when tied.
    public var headName: String { config.tieEmbeddings ? "llm.embed.weight" : "llm.head.weight" }

    func validateTensors() throws {
        for (name, shape) in requiredTensors {
            guard let t = weights.bundle.tensor(named: name) else {
                throw MM1Error(file: weights.bundle.path, tensor: name,
                               "is not in the bundle, but the language model config needs it")
            }
            guard t.shape == shape else {
                throw MM1Error(file: weights.bundle.path, tensor: name, "has shape \(t.shape); the config implies \(shape)")
            }
            _ = try weights.readableTensor(name)
        }
    }

    /// `count` elements of a tensor from element `offset`, widened to f32 (a whole tensor, one expert of a stacked
    /// weight, a chunk of vocabulary rows). Large ranges are split across the cores.
    func widen(_ name: String, offset: Int = 0, count: Int? = nil) throws -> [Float] {
        try weights.f32(name, offset: offset, count: count)
    }

    /// Runs `body` on `count` f32 values of a tensor from element `offset` (`ModelWeights.withF32`: overrides,
    /// f32 in place, widened or dequantized into a pooled buffer).
    func withWeight<R>(_ name: String, offset: Int = 0, count: Int? = nil,
                       _ body: (UnsafePointer<Float>) throws -> R) throws -> R {
        try weights.withF32(name, offset: offset, count: count, body)
    }

    /// x[t, in] · Wᵀ (+ bias) with W = `count` values of `name` from `offset`, shaped [out, in].
    func project(_ x: [Float], rows t: Int, weight name: String, offset: Int = 0, out: Int, in k: Int,
                 bias: [Float]? = nil) throws -> [Float] {
        precondition(x.count == t * k)
        var y = [Float](repeating: 0, count: t * out)
        guard t > 0 else { return y }
        try withWeight(name, offset: offset, count: out * k) { w in
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    if let bias {
                        for r in 0..<t { for j in 0..<out { yp[r * out + j] = bias[j] } }
                    }
                    Linear.gemmNT(xp.baseAddress!, rows: t, weight: w, out: out, in: k, into: yp.baseAddress!, ldy: out,
                                  accumulate: bias != nil)
                }
            }
        }
        return y
    }

    // MARK: embedding

    /// The embedding rows of `ids`, [T, D].
    public func embed(_ ids: [Int]) throws -> [Float] {
        let d = config.hiddenSize, v = config.vocabSize
        let name = "llm.embed.weight"
        let t = try weights.readableTensor(name)
        if let (pos, bad) = ids.enumerated().first(where: { $0.element < 0 || $0.element >= v }) {
            throw MM1Error(file: weights.bundle.path, "token id \(bad) at position \(pos) is outside the vocabulary (0..<\(v))")
        }
        var out = [Float](repeating: 0, count: ids.count * d)
        if weights.overrides[name] == nil, !t.isQuantized, let dtype = t.dtype {
            // Gather the rows straight from the map: a lookup must not widen the whole table.
            out.withUnsafeMutableBytes { dst in
                for (r, id) in ids.enumerated() {
                    ElementCopy.gather(src: t.data.baseAddress!, from: dtype, base: id * d, loops: [(d, 1)],
                                       dst: dst.baseAddress! + r * d * 4, to: .f32)
                }
            }
            return out
        }
        try out.withUnsafeMutableBufferPointer { dst in
            for (r, id) in ids.enumerated() {
                try weights.withF32(name, offset: id * d, count: d) { row in
                    (dst.baseAddress! + r * d).update(from: row, count: d)
                }
            }
        }
        return out
    }

    // MARK: forward

    /// Logits [T, V] for token ids, positions 0..<T.
    public func forward(ids: [Int], hooks: (any ForwardHooks)? = nil) throws -> [Float] {
        try forward(embeddings: embed(ids), count: ids.count, hooks: hooks)
    }

    /// Runs the decoder on input embeddings [T, D] at positions 0..<T and returns the logits [T, V].
    public func forward(embeddings: [Float], count t: Int, hooks: (any ForwardHooks)? = nil) throws -> [Float] {
        let c = config, d = c.hiddenSize
        guard t >= 0, embeddings.count == t * d else {
            throw MM1Error("forward: \(embeddings.count) embedding values are not \(t) rows of width \(d)")
        }
        var x = embeddings
        let rope = c.rope.table(count: t)
        for i in 0..<c.numLayers {
            hooks.report(.llmLayerInput(i), x, [t, d])
            try layer(i, &x, count: t, rope: rope, hooks: hooks)
            hooks.report(.named("llm.layers.\(i).output"), x, [t, d])
        }
        let normed = Norm.rmsNorm(x, rows: t, d: d, weight: try widen("llm.norm.weight"), eps: c.rmsNormEps)
        x = []
        hooks.report(.llmFinalNorm, normed, [t, d])
        let logits = try head(normed, count: t, hooks: hooks)
        hooks.report(.logits, logits, [t, c.vocabSize])
        return logits
    }

    /// x · headᵀ, widening the head in chunks of vocabulary rows.
    func head(_ x: [Float], count t: Int, hooks: (any ForwardHooks)?) throws -> [Float] {
        let d = config.hiddenSize, v = config.vocabSize
        let name = headName
        hooks.report(.linearInput(name), x, [t, d])
        var logits = [Float](repeating: 0, count: t * v)
        guard t > 0 else { return logits }
        let step = headChunkRows
        var v0 = 0
        while v0 < v {
            let n = min(step, v - v0)
            try withWeight(name, offset: v0 * d, count: n * d) { w in
                x.withUnsafeBufferPointer { xp in
                    logits.withUnsafeMutableBufferPointer { lp in
                        Linear.gemmNT(xp.baseAddress!, rows: t, weight: w, out: n, in: d, into: lp.baseAddress! + v0, ldy: v)
                    }
                }
            }
            v0 += n
        }
        return logits
    }

    /// x · Wᵀ (+ b) for a canonical weight, reporting the input first. The weight lives only during the call.
    func linear(_ name: String, _ x: [Float], rows t: Int, out: Int, in k: Int, bias: String? = nil,
                hooks: (any ForwardHooks)?) throws -> [Float] {
        hooks.report(.linearInput(name), x, [t, k])
        let b = try bias.map { try widen($0) }
        return try project(x, rows: t, weight: name, out: out, in: k, bias: b)
    }

    /// One decoder layer, updating the residual stream `x` [T, D] in place.
    func layer(_ i: Int, _ x: inout [Float], count t: Int, rope: (cos: [Float], sin: [Float]),
               hooks: (any ForwardHooks)?) throws {
        let c = config, d = c.hiddenSize, b = LanguageModel.layerPrefix(i)
        let qd = c.numHeads * c.headDim, kvd = c.numKVHeads * c.headDim

        // Attention block.
        let h = Norm.rmsNorm(x, rows: t, d: d, weight: try widen(b + "attn_norm.weight"), eps: c.rmsNormEps)
        var q = try linear(b + "attn.q.weight", h, rows: t, out: qd, in: d, bias: c.attentionBias ? b + "attn.q.bias" : nil, hooks: hooks)
        var k = try linear(b + "attn.k.weight", h, rows: t, out: kvd, in: d, bias: c.attentionBias ? b + "attn.k.bias" : nil, hooks: hooks)
        let v = try linear(b + "attn.v.weight", h, rows: t, out: kvd, in: d, bias: c.attentionBias ? b + "attn.v.bias" : nil, hooks: hooks)
        c.rope.apply(&q, rows: t, heads: c.numHeads, cos: rope.cos, sin: rope.sin)
        c.rope.apply(&k, rows: t, heads: c.numKVHeads, cos: rope.cos, sin: rope.sin)
        let a = Attention.causal(q: q, k: k, v: v, count: t, heads: c.numHeads, kvHeads: c.numKVHeads, headDim: c.headDim)
        q = []; k = []
        let o = try linear(b + "attn.o.weight", a, rows: t, out: d, in: qd, bias: c.attentionOutBias ? b + "attn.o.bias" : nil, hooks: hooks)
        LanguageModel.addInPlace(&x, o)

        // MLP block.
        let h2 = Norm.rmsNorm(x, rows: t, d: d, weight: try widen(b + "mlp_norm.weight"), eps: c.rmsNormEps)
        let m: [Float]
        if let moe = c.moe, moe.layers.contains(i) {
            m = try moeBlock(i, h2, count: t, moe: moe, hooks: hooks)
        } else {
            let f = c.intermediateSize
            let g = try linear(b + "mlp.gate.weight", h2, rows: t, out: f, in: d, hooks: hooks)
            let u = try linear(b + "mlp.up.weight", h2, rows: t, out: f, in: d, hooks: hooks)
            let gu = try LanguageModel.gatedActivation(g, u, c.activation)
            m = try linear(b + "mlp.down.weight", gu, rows: t, out: d, in: f, hooks: hooks)
        }
        LanguageModel.addInPlace(&x, m)
    }

    /// Routing of each token: the selected experts (by decreasing probability, ties to the lower index) and their
    /// weights (renormalised to sum 1 when configured). `logits` is [T, X]; the softmax is taken in f32.
    static func route(logits: [Float], count t: Int, experts x: Int, topK k: Int, renormalize: Bool)
        -> [(experts: [Int], weights: [Float])] {
        var p = logits
        Activation.softmax(&p, rows: t, d: x)
        var out: [(experts: [Int], weights: [Float])] = []
        out.reserveCapacity(t)
        var taken = [Bool](repeating: false, count: x)
        for r in 0..<t {
            for e in 0..<x { taken[e] = false }
            var ex: [Int] = [], w: [Float] = []
            for _ in 0..<k {
                var best = -1
                var bv = -Float.infinity
                for e in 0..<x where !taken[e] {
                    let v = p[r * x + e]
                    if best < 0 || v > bv { best = e; bv = v }  // strict: ties keep the lower index
                }
                taken[best] = true
                ex.append(best)
                w.append(bv)
            }
            if renormalize {
                var s: Float = 0
                for v in w { s += v }
                w = w.map { $0 / s }
            }
            out.append((ex, w))
        }
        return out
    }

    /// The mixture-of-experts MLP (dropless): tokens are grouped per expert so that each expert's weights are
    /// widened once and used in one sgemm per projection.
    func moeBlock(_ i: Int, _ h: [Float], count t: Int, moe: LLMConfig.MoE, hooks: (any ForwardHooks)?) throws -> [Float] {
        let d = config.hiddenSize, fe = moe.intermediateSize, nx = moe.numExperts
        let b = LanguageModel.layerPrefix(i) + "moe."
        let logits = try linear(b + "router.weight", h, rows: t, out: nx, in: d, hooks: hooks)
        let routes = LanguageModel.route(logits: logits, count: t, experts: nx, topK: moe.topK, renormalize: moe.renormalize)
        // The chosen experts of each token, in rank order, as floats (exact for any realistic expert count).
        hooks.report(.named(b + "experts"), routes.flatMap { $0.experts.map(Float.init) }, [t, moe.topK])
        var tokens = [[Int]](repeating: [], count: nx)
        var gates = [[Float]](repeating: [], count: nx)
        for (r, route) in routes.enumerated() {
            for (e, w) in zip(route.experts, route.weights) {
                tokens[e].append(r)
                gates[e].append(w)
            }
        }
        var out = [Float](repeating: 0, count: t * d)
        for e in 0..<nx where !tokens[e].isEmpty {
            let rows = tokens[e], n = rows.count
            var xe = [Float](repeating: 0, count: n * d)
            h.withUnsafeBufferPointer { hp in
                xe.withUnsafeMutableBufferPointer { xp in
                    for (j, r) in rows.enumerated() { (xp.baseAddress! + j * d).update(from: hp.baseAddress! + r * d, count: d) }
                }
            }
            hooks.report(.expertLinearInput(b + "gate.weight", expert: e), xe, [n, d])
            let g = try project(xe, rows: n, weight: b + "gate.weight", offset: e * fe * d, out: fe, in: d)
            hooks.report(.expertLinearInput(b + "up.weight", expert: e), xe, [n, d])
            let u = try project(xe, rows: n, weight: b + "up.weight", offset: e * fe * d, out: fe, in: d)
            let gu = try LanguageModel.gatedActivation(g, u, config.activation)
            hooks.report(.expertLinearInput(b + "down.weight", expert: e), gu, [n, fe])
            let y = try project(gu, rows: n, weight: b + "down.weight", offset: e * d * fe, out: d, in: fe)
            let ws = gates[e]
            out.withUnsafeMutableBufferPointer { op in
                y.withUnsafeBufferPointer { yp in
                    for (j, r) in rows.enumerated() {
                        let w = ws[j], dst = op.baseAddress! + r * d, src = yp.baseAddress! + j * d
                        for c in 0..<d { dst[c] += src[c] * w }
                    }
                }
            }
        }
        return out
    }

    /// act(g) ⊙ u, elementwise (SwiGLU for silu), split across the cores.
    static func gatedActivation(_ g: [Float], _ u: [Float], _ act: String) throws -> [Float] {
        precondition(g.count == u.count)
        if act == "silu" {
            var out = [Float](repeating: 0, count: g.count)
            g.withUnsafeBufferPointer { gb in
                u.withUnsafeBufferPointer { ub in
                    out.withUnsafeMutableBufferPointer { ob in
                        let gp = gb.baseAddress!, up = ub.baseAddress!, op = ob.baseAddress!
                        MM1Parallel.chunks(g.count, minPerChunk: 32768) { lo, hi in
                            (op + lo).update(from: gp + lo, count: hi - lo)
                            mm1_sigmoid_gate_f32(op + lo, hi - lo, 1)
                            for j in lo..<hi { op[j] *= up[j] }
                        }
                    }
                }
            }
            return out
        }
        var a = g
        try Activation.apply(act, &a)
        for j in a.indices { a[j] *= u[j] }
        return a
    }

    static func addInPlace(_ x: inout [Float], _ y: [Float]) {
        precondition(x.count == y.count)
        x.withUnsafeMutableBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                for j in 0..<xp.count { xp[j] += yp[j] }
            }
        }
    }
}
