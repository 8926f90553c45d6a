import Foundation

/// Rotary position embedding in the half-rotation convention (transformers Llama): dimension `d < Dh/2` of a head
/// is rotated together with `d + Dh/2`, by the angle `position · inv_freq[d]`.
///
/// The inverse frequencies follow transformers' `ROPE_INIT_FUNCTIONS` step by step in f32:
/// - default: `inv_freq[i] = 1 / θ^(2i/Dh)`
/// - `linear`: the default divided by `factor`
/// - `dynamic` (NTK): for a sequence of `L > max_position_embeddings` positions, θ becomes
///   `θ · (factor·L/max − (factor − 1))^(Dh/(Dh−2))`; shorter sequences use the default
/// - `llama3`: low frequencies (wavelength > original_max/low_freq_factor) divided by `factor`, high ones
///   (wavelength < original_max/high_freq_factor) unchanged, and the band between interpolated smoothly.
public struct RoPE: Sendable, Equatable {
    public enum Scaling: Sendable, Equatable {
        case none
        case linear(factor: Double)
        case dynamic(factor: Double, originalMax: Int)
        case llama3(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMax: Int)
    }

    public let headDim: Int
    public let theta: Double
    public let scaling: Scaling
    public let maxPositionEmbeddings: Int

    public init(headDim: Int, theta: Double, scaling: Scaling = .none, maxPositionEmbeddings: Int = 4096) {
        precondition(headDim > 0 && headDim % 2 == 0, "RoPE needs an even head dimension")
        self.headDim = headDim
        self.theta = theta
        self.scaling = scaling
        self.maxPositionEmbeddings = maxPositionEmbeddings
    }

    /// Parses `llm.rope_scaling` (null, or an object with `rope_type` or legacy `type`).
    public init(headDim: Int, theta: Double, scalingConfig: Any?, maxPositionEmbeddings: Int) throws {
        guard headDim > 0, headDim % 2 == 0 else {
            throw MM1Error("config.llm.head_dim (\(headDim)) must be even for rotary attention")
        }
        guard theta > 0 else { throw MM1Error("config.llm.rope_theta (\(theta)) must be positive") }
        var scaling = Scaling.none
        if let cfg = scalingConfig as? [String: Any] {
            let kind = (cfg["rope_type"] as? String) ?? (cfg["type"] as? String) ?? "default"
            func num(_ key: String) throws -> Double {
                if let v = cfg[key] as? Double { return v }
                if let v = cfg[key] as? Int { return Double(v) }
                throw MM1Error("config.llm.rope_scaling (\(kind)) needs a number '\(key)'")
            }
            func int(_ key: String, default d: Int) -> Int {
                ConfigLookup.int(cfg, key) ?? d
            }
            switch kind {
            case "default":
                scaling = .none
            case "linear":
                let f = try num("factor")
                guard f > 0 else { throw MM1Error("config.llm.rope_scaling.factor must be positive") }
                scaling = .linear(factor: f)
            case "dynamic":
                let f = try num("factor")
                guard f >= 1 else { throw MM1Error("config.llm.rope_scaling.factor must be at least 1 for dynamic scaling") }
                scaling = .dynamic(factor: f, originalMax: int("original_max_position_embeddings", default: maxPositionEmbeddings))
            case "llama3":
                let f = try num("factor"), lo = try num("low_freq_factor"), hi = try num("high_freq_factor")
                guard let orig = ConfigLookup.int(cfg, "original_max_position_embeddings") else {
                    throw MM1Error("config.llm.rope_scaling (llama3) needs 'original_max_position_embeddings'")
                }
                guard f > 0, lo > 0, hi > lo else {
                    throw MM1Error("config.llm.rope_scaling (llama3): need factor > 0 and high_freq_factor > low_freq_factor > 0")
                }
                scaling = .llama3(factor: f, lowFreqFactor: lo, highFreqFactor: hi, originalMax: orig)
            default:
                throw MM1Error("config.llm.rope_scaling type '\(kind)' is not supported (default, linear, dynamic, llama3)")
            }
        }
        self.init(headDim: headDim, theta: theta, scaling: scaling, maxPositionEmbeddings: maxPositionEmbeddings)
    }

    /// `1 / base^(2i/dim)` for i < dim/2, in f32 as torch computes it (the exponent is an f32 quotient, the power
    /// is taken of the f32 base).
    static func defaultInvFreq(base: Double, dim: Int) -> [Float] {
        let b = Double(Float(base))
        return (0..<(dim / 2)).map { i in
            let e = Float(2 * i) / Float(dim)
            let p = Float(Foundation.pow(b, Double(e)))
            return 1 / p
        }
    }

    /// The inverse frequencies used for a sequence of `sequenceLength` positions ([Dh/2]).
    public func inverseFrequencies(sequenceLength: Int = 0) -> [Float] {
        switch scaling {
        case .none:
            return RoPE.defaultInvFreq(base: theta, dim: headDim)
        case .linear(let f):
            let ff = Float(f)
            return RoPE.defaultInvFreq(base: theta, dim: headDim).map { $0 / ff }
        case .dynamic(let f, let orig):
            guard sequenceLength > orig else { return RoPE.defaultInvFreq(base: theta, dim: headDim) }
            let dim = Double(headDim)
            let base = theta * Foundation.pow(f * Double(sequenceLength) / Double(orig) - (f - 1), dim / (dim - 2))
            return RoPE.defaultInvFreq(base: base, dim: headDim)
        case .llama3(let f, let lo, let hi, let orig):
            let inv = RoPE.defaultInvFreq(base: theta, dim: headDim)
            let lowWavelen = Float(Double(orig) / lo)
            let highWavelen = Float(Double(orig) / hi)
            let factor = Float(f), loF = Float(lo), hiF = Float(hi), origF = Float(orig)
            let twoPi = Float(2 * Double.pi)
            return inv.map { x in
                let wavelen = twoPi / x
                let scaled = wavelen > lowWavelen ? x / factor : x
                let medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen)
                guard medium else { return scaled }
                let smooth = (origF / wavelen - loF) / (hiF - loF)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        }
    }

    /// Multiplier on cos and sin (1 for every supported scaling).
    public var attentionScaling: Float { 1 }

    /// cos and sin of `position · inv_freq` for positions 0..<count, each [count, Dh/2].
    public func table(count: Int) -> (cos: [Float], sin: [Float]) {
        let inv = inverseFrequencies(sequenceLength: count)
        let half = headDim / 2
        var c = [Float](repeating: 0, count: count * half)
        var s = [Float](repeating: 0, count: count * half)
        let scale = attentionScaling
        for p in 0..<count {
            for i in 0..<half {
                let angle = Double(Float(p) * inv[i])  // f32 product, as torch's freqs
                c[p * half + i] = Float(Foundation.cos(angle)) * scale
                s[p * half + i] = Float(Foundation.sin(angle)) * scale
            }
        }
        return (c, s)
    }

    /// Rotates `heads` heads of width `headDim` in each of `rows` rows of `x` ([rows, heads·Dh] row-major), row r
    /// at position r, using a table from `table(count:)` with at least `rows` positions.
    public func apply(_ x: inout [Float], rows: Int, heads: Int, cos: [Float], sin: [Float]) {
        let dh = headDim, half = dh / 2, width = heads * dh
        precondition(x.count == rows * width && cos.count >= rows * half && sin.count >= rows * half, "rope: shape mismatch")
        x.withUnsafeMutableBufferPointer { xb in
            cos.withUnsafeBufferPointer { cb in
                sin.withUnsafeBufferPointer { sb in
                    let xp = xb.baseAddress!, cp = cb.baseAddress!, sp = sb.baseAddress!
                    let work = rows * heads
                    let body: (Int, Int) -> Void = { lo, hi in
                        for w in lo..<hi {
                            let r = w / heads, h = w % heads
                            let o = xp + r * width + h * dh
                            let cr = cp + r * half, sr = sp + r * half
                            for i in 0..<half {
                                let a = o[i], b = o[i + half], cv = cr[i], sv = sr[i]
                                o[i] = a * cv - b * sv
                                o[i + half] = b * cv + a * sv
                            }
                        }
                    }
                    MM1Parallel.chunks(work, minPerChunk: 256, body)
                }
            }
        }
    }
}

/// Splits `0..<n` into contiguous chunks run with `DispatchQueue.concurrentPerform` (one per core), or inline when
/// `n` is too small to be worth it.
enum MM1Parallel {
    static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    static func chunks(_ n: Int, minPerChunk: Int = 1, _ body: (Int, Int) -> Void) {
        guard n > 0 else { return }
        let parts = min(cores, max(1, n / max(1, minPerChunk)))
        if parts <= 1 { body(0, n); return }
        withoutActuallyEscaping(body) { b in
            let box = UnsafeSendableBox(b)
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let lo = n * p / parts, hi = n * (p + 1) / parts
                if lo < hi { box.value(lo, hi) }
            }
        }
    }

    /// Runs `body(i)` for i in 0..<n across the cores.
    static func forEach(_ n: Int, _ body: (Int) -> Void) {
        guard n > 0 else { return }
        if n == 1 || cores == 1 { for i in 0..<n { body(i) }; return }
        withoutActuallyEscaping(body) { b in
            let box = UnsafeSendableBox(b)
            DispatchQueue.concurrentPerform(iterations: n) { box.value($0) }
        }
    }
}

/// Carries a non-Sendable value into `concurrentPerform`; callers guarantee the work items touch disjoint memory.
struct UnsafeSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
