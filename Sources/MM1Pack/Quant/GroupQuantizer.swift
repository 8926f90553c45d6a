import CKernels
import Foundation

/// The parameters of one group. Every format dequantizes as `scale · (level − zero)`, where `level` is the integer
/// the code stands for: q ∈ [−127, 127] for int8 (zero 0), u ∈ [0, 15] for int4 (zero 8 for sym, the stored zero
/// point for asym). Folding the sym offset into `zero` lets one code path serve all three formats.
public struct GroupParams: Sendable, Equatable {
    /// Exactly representable in f16. Negative for sym int4 when the group's largest-magnitude value is positive
    /// (see `GroupQuantizer`); positive otherwise, 0 for an all-zero group.
    public var scale: Float
    public var zero: Float

    public init(scale: Float, zero: Float) {
        self.scale = scale
        self.zero = zero
    }
}

/// Scale, zero point and codes for groups of consecutive weights.
///
/// Rules (with a clip ratio r ∈ (0, 1], 1 = no clipping; every scale is rounded to f16 first and the codes are then
/// computed with the rounded scale, so they are the nearest levels for the value actually stored):
///
/// - int8 sym: s = r · max|w| / 127, q = clamp(round(w / s), −127, 127). −128 is never used, so the grid is
///   symmetric and negation-exact.
/// - int4 sym: let e be the group's value of largest magnitude (the negative one on a tie); s = −r · e / 8 and
///   u = clamp(round(w / s) + 8, 0, 15). The extreme lands exactly on level −8 and the other side reaches 7·|s|.
///   This uses all 16 levels. The alternative, s = max|w| / 7 over levels −7…7, wastes one level. On random
///   groups (Gaussian, Laplace, Student-t3; group sizes 32–128) the signed rule has 21–23% lower mean-square error
///   than max/7, and 6–16% lower than an unsigned max/8 that clips a positive extreme to 7/8 of its value. The
///   price is a scale that may be negative, which the dequant formula s·(u − 8) handles as is. It is also the
///   layout of GGUF's Q4_0 (d = e / −8), so that export needs no requantization.
/// - int4 asym: the range is widened to include 0, [min(w_min, 0), max(w_max, 0)], then s = r · range / 15,
///   z = clamp(round(−r · min / s), 0, 15), u = clamp(round(w / s) + z, 0, 15). With an integer zero point in 0…15
///   the grid s·(u − z) always contains 0, so a range that excluded 0 would waste levels below or above the grid.
///   This also makes z well defined for a constant group.
///
/// Edge cases:
/// - An all-zero group gets s = 0 and the level that is 0 (q = 0; u = 8 sym; u = z = 0 asym). It dequantizes
///   to exactly +0.
/// - If every nonzero value of the group equals the same c (a constant group, possibly mixed with zeros) and
///   r = 1, the smallest error is 0 when some f16 s and allowed level k give s·k == c in f32. The candidate
///   levels are tried from the largest magnitude down, so an f16-representable c always round-trips (k = ±1
///   works at worst). Otherwise the general rule applies.
/// - A nonzero scale that rounds to 0 in f16 becomes the smallest f16 subnormal (2⁻²⁴) with the same sign. The
///   codes then clamp, but the error stays below 2⁻²⁴ · 127.
/// - A scale that overflows f16 (≥ 65520 before rounding) is an error, as are NaN and ±Inf weights. The caller
///   adds the tensor name.
public enum GroupQuantizer {
    /// The clamping range of levels for a spec.
    @inline(__always)
    static func levelRange(_ spec: QuantSpec) -> (lo: Float, hi: Float) {
        spec.bits == 8 ? (-127, 127) : (0, 15)
    }

    /// The nearest level to `w` on the grid of `p` (ties to even), clamped to the format's range.
    @inline(__always)
    static func level(_ w: Float, _ p: GroupParams, lo: Float, hi: Float) -> Float {
        if p.scale == 0 { return p.zero }
        let v = roundEven(w / p.scale) + p.zero
        return v < lo ? lo : (v > hi ? hi : v)
    }

    /// Round half to even without a libm call. `rounded()` becomes a call to rintf on baseline x86-64, which has no
    /// SSE4.1 rounding instruction. That call kept the per-element loops scalar, and it was most of the clip
    /// search's time. Adding 1.5·2²³ moves x to where floats are spaced 1 apart, so the addition itself rounds to
    /// nearest even, and subtracting it back is exact. This matches rint for |x| < 2²². A larger |x| (only with a
    /// clamped tiny scale) comes out at least 2²² − 2 with the same sign, so it clamps to the same end.
    @inline(__always)
    static func roundEven(_ x: Float) -> Float {
        let m: Float = 12_582_912
        return (x + m) - m
    }

    /// The stored byte for a level: two's complement for int8, the unsigned nibble value for int4.
    @inline(__always)
    static func storedCode(_ level: Float, bits: Int) -> UInt8 {
        bits == 8 ? UInt8(bitPattern: Int8(level)) : UInt8(level)
    }

    /// The level a stored byte stands for.
    @inline(__always)
    static func levelOf(code: UInt8, bits: Int) -> Float {
        bits == 8 ? Float(Int8(bitPattern: code)) : Float(code)
    }

    /// Same operations, in the same order, as `QuantizedTensor.value`, so the floats are identical.
    @inline(__always)
    static func dequant(_ level: Float, _ p: GroupParams) -> Float { p.scale * (level - p.zero) }

    /// The code for `w` in a group with parameters `p`.
    public static func code(_ w: Float, params p: GroupParams, spec: QuantSpec) -> UInt8 {
        let (lo, hi) = levelRange(spec)
        return storedCode(level(w, p, lo: lo, hi: hi), bits: spec.bits)
    }

    /// The value a code dequantizes to.
    public static func dequantize(code: UInt8, params p: GroupParams, spec: QuantSpec) -> Float {
        dequant(levelOf(code: code, bits: spec.bits), p)
    }

    /// What the parameter rules need to know about a group, gathered in one pass.
    struct Stats {
        var min: Float
        var max: Float
        /// The common value when all nonzero values are equal (nil for an all-zero group or two distinct nonzeros).
        var single: Float?
    }

    static func stats(_ v: UnsafeBufferPointer<Float>) throws -> Stats {
        var lo = Float.infinity, hi = -Float.infinity
        var single: Float = 0
        var distinct = false
        for x in v {
            guard x.isFinite else { throw MM1Error("weight \(x) is not finite (NaN and ±Inf cannot be quantized)") }
            lo = Swift.min(lo, x)
            hi = Swift.max(hi, x)
            if x != 0 {
                if single == 0 { single = x } else if x != single { distinct = true }
            }
        }
        if v.isEmpty { lo = 0; hi = 0 }
        return Stats(min: lo, max: hi, single: (distinct || single == 0) ? nil : single)
    }

    /// Rounds a scale to f16, refusing overflow and keeping tiny nonzero scales nonzero.
    static func f16Scale(_ s: Float, spec: QuantSpec, extent: Float) throws -> Float {
        let h = Float(Float16(s))
        guard h.isFinite else {
            throw MM1Error("a group scale (\(s), from values up to \(extent) in magnitude) overflows f16 for \(spec)")
        }
        if h == 0 && s != 0 {
            let tiny = Float(Float16.leastNonzeroMagnitude)
            return s < 0 ? -tiny : tiny
        }
        return h
    }

    /// An exact representation of a group whose nonzero values all equal `c`, if one exists.
    static func exactSingle(_ c: Float, spec: QuantSpec) -> GroupParams? {
        // (level − zero) candidates, largest magnitude first, and the zero point that goes with them.
        let candidates: [(k: Float, zero: Float)]
        switch (spec.bits, spec.scheme) {
        case (8, _): candidates = (1...127).reversed().map { (c < 0 ? -Float($0) : Float($0), 0) }
        case (_, .sym): candidates = (1...8).reversed().map { (-Float($0), 8) }
        case (_, .asym): candidates = (1...15).reversed().map { c < 0 ? (-Float($0), 15) : (Float($0), 0) }
        }
        for (k, zero) in candidates {
            let s = Float(Float16(c / k))
            if s.isFinite && s != 0 && s * k == c { return GroupParams(scale: s, zero: zero) }
        }
        return nil
    }

    static func params(_ st: Stats, spec: QuantSpec, clip: Float) throws -> GroupParams {
        guard clip > 0 && clip <= 1 else { throw MM1Error("clip ratio \(clip) is outside (0, 1]") }
        if st.min == 0 && st.max == 0 { return GroupParams(scale: 0, zero: spec.bits == 8 ? 0 : (spec.scheme == .sym ? 8 : 0)) }
        if clip == 1, let c = st.single, let p = exactSingle(c, spec: spec) { return p }
        switch (spec.bits, spec.scheme) {
        case (8, _):
            let amax = Swift.max(-st.min, st.max)
            return GroupParams(scale: try f16Scale(clip * amax / 127, spec: spec, extent: amax), zero: 0)
        case (_, .sym):
            let e = -st.min >= st.max ? st.min : st.max
            return GroupParams(scale: try f16Scale(-(clip * e) / 8, spec: spec, extent: abs(e)), zero: 8)
        case (_, .asym):
            let lo = Swift.min(st.min, 0), hi = Swift.max(st.max, 0)
            let s = try f16Scale(clip * (hi - lo) / 15, spec: spec, extent: Swift.max(-lo, hi))
            let z = Swift.min(Swift.max((-(clip * lo) / s).rounded(.toNearestOrEven), 0), 15)
            return GroupParams(scale: s, zero: z)
        }
    }

    /// The parameters for one group of values under `spec`, with an optional clip ratio in (0, 1].
    public static func params(for values: UnsafeBufferPointer<Float>, spec: QuantSpec, clip: Float = 1) throws -> GroupParams {
        try params(stats(values), spec: spec, clip: clip)
    }

    public static func params(for values: [Float], spec: QuantSpec, clip: Float = 1) throws -> GroupParams {
        try values.withUnsafeBufferPointer { try params(for: $0, spec: spec, clip: clip) }
    }

    /// Parameters and codes for one group, in one call.
    public static func quantizeGroup(_ values: [Float], spec: QuantSpec, clip: Float = 1) throws -> (params: GroupParams, codes: [UInt8]) {
        let p = try params(for: values, spec: spec, clip: clip)
        return (p, values.map { code($0, params: p, spec: spec) })
    }

    /// Plain round-to-nearest of a [rows, cols] row-major weight, no clipping. The result has shape [rows, cols];
    /// callers with more leading dimensions set `shape` afterwards.
    public static func quantize(weight: [Float], rows: Int, cols: Int, spec: QuantSpec) throws -> QuantizedTensor {
        try RTN.quantize(weight: weight, rows: rows, cols: cols, spec: spec, clipSearch: false, importance: nil)
    }

    /// Validates shapes and refuses NaN/±Inf with the index of the first one (one vectorised scan, so the hot loops
    /// never meet a non-finite value).
    static func checkWeight(_ weight: [Float], rows: Int, cols: Int, spec: QuantSpec) throws {
        try spec.validate(cols: cols)
        guard rows >= 1, cols >= 1, weight.count == rows * cols else {
            throw MM1Error("weight has \(weight.count) values, expected \(rows) × \(cols)")
        }
        try checkFinite(weight, what: "weight", cols: cols)
    }

    static func checkFinite(_ v: [Float], what: String, cols: Int) throws {
        let bad = v.withUnsafeBytes { mm1_first_nonfinite_f32($0.baseAddress, v.count) }
        if bad >= 0 {
            let i = Int(bad)
            throw MM1Error("\(what) [\(i / cols), \(i % cols)] is \(v[i]): NaN and ±Inf cannot be quantized")
        }
    }
}

/// Remembers the first error thrown by any worker of a parallel loop.
final class QuantWorkerError: @unchecked Sendable {
    private let lock = NSLock()
    private var error: Error?

    func record(_ e: Error) {
        lock.lock()
        if error == nil { error = e }
        lock.unlock()
    }

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return error != nil
    }

    func rethrow() throws {
        lock.lock()
        let e = error
        lock.unlock()
        if let e { throw e }
    }
}
