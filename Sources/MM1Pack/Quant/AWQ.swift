import COpenBLAS
import Foundation

/// Activation-aware weight quantization (Lin et al., 2023): scaling up a weight's input channels that see large
/// activations, and scaling the activations down by the same factor, leaves the layer's output unchanged. The
/// salient channels then get relatively finer quantization.
public enum AWQ {
    /// Searches the per-input-channel scales for a group of linears that read the same input `x` ([n, cols]
    /// row-major; e.g. q/k/v, or gate/up). Candidate scales are s = a^α, with a_c = mean_n |x_nc| and
    /// α ∈ {0, 1/grid, …, (grid−1)/grid}, normalised by sqrt(max s · min s) so that they straddle 1. For each
    /// candidate, every weight W ([rows, cols]) is quantized as RTN(W·diag(s))·diag(1/s), and the error is
    /// Σ ‖x Wᵀ − x Ŵᵀ‖² over the linears (biases cancel). α = 0 is s = 1, plain RTN, and only a strictly smaller
    /// error replaces it, so the result is never worse than RTN on `x`.
    ///
    /// With `memberwise`, only scales under which no single linear's error exceeds its α = 0 error are candidates.
    ///
    /// To apply the result, multiply the weights' columns by `scales` before quantizing and divide whatever
    /// produces `x` (the preceding norm's weight, or the preceding linear's rows) by `scales`.
    /// `errorBefore` is the α = 0 error and `errorAfter` the chosen one.
    ///
    /// Channels whose mean |x| is below 10⁻⁶ of the largest use that floor, so a^α stays finite and nonzero. When
    /// x is all zero, every candidate gives error 0 and the scales stay 1.
    public static func searchScales(input x: [Float], rows n: Int, cols: Int,
                                    weights: [(w: [Float], rows: Int, bias: [Float]?)], spec: QuantSpec,
                                    grid: Int = 20, memberwise: Bool = false) throws -> (scales: [Float], alpha: Float, errorBefore: Double, errorAfter: Double) {
        try spec.validate(cols: cols)
        guard n >= 1, x.count == n * cols else { throw MM1Error("AWQ input has \(x.count) values, expected \(n) × \(cols)") }
        guard grid >= 1 else { throw MM1Error("AWQ grid must be ≥ 1, not \(grid)") }
        guard !weights.isEmpty else { throw MM1Error("AWQ needs at least one weight") }
        try GroupQuantizer.checkFinite(x, what: "AWQ input", cols: cols)
        for (i, l) in weights.enumerated() {
            guard l.w.count == l.rows * cols else {
                throw MM1Error("AWQ weight \(i) has \(l.w.count) values, expected \(l.rows) × \(cols)")
            }
            try GroupQuantizer.checkFinite(l.w, what: "weight \(i)", cols: cols)
        }

        var mag = [Double](repeating: 0, count: cols)
        for r in 0..<n { for c in 0..<cols { mag[c] += Double(abs(x[r * cols + c])) } }
        let a = mag.map { $0 / Double(n) }
        let amax = a.max() ?? 0
        let floor = amax * 1e-6

        func candidate(_ alpha: Double) -> [Float] {
            if alpha == 0 || amax == 0 { return [Float](repeating: 1, count: cols) }
            let s = a.map { pow(Swift.max($0, floor), alpha) }
            let norm = (s.max()! * s.min()!).squareRoot()
            return s.map { Float($0 / norm) }
        }

        /// Each linear's output error under scales s. Rows go in chunks of about 4M values, so the temporaries
        /// (scaled, quantized, dequantized, difference) stay small next to the weights themselves.
        func errors(_ s: [Float]) throws -> [Double] {
            try weights.map { l in
                let chunk = Swift.max(1, Swift.min(l.rows, (4 << 20) / cols))
                var total = 0.0
                for r0 in stride(from: 0, to: l.rows, by: chunk) {
                    let m = Swift.min(chunk, l.rows - r0)
                    let w = Array(l.w[(r0 * cols)..<((r0 + m) * cols)])
                    let q = try GroupQuantizer.quantize(weight: scaleColumns(w, rows: m, cols: cols, by: s), rows: m,
                                                        cols: cols, spec: spec)
                    total += outputError(x: x, rows: n, cols: cols, w: w, wHat: dequantized(q, dividingBy: s), outRows: m)
                }
                return total
            }
        }

        let ones = candidate(0)
        let base = try errors(ones)
        let before = base.reduce(0, +)
        var best = (scales: ones, alpha: Float(0), error: before)
        for k in 1..<grid where amax > 0 && best.error > 0 {
            let alpha = Double(k) / Double(grid)
            let s = candidate(alpha)
            let e = try errors(s)
            // With `memberwise`, a scale that helps the set but hurts one of its linears is not taken: the scales
            // are shared, and a report per weight must never show AWQ worse than plain rounding.
            if memberwise && zip(e, base).contains(where: { $0 > $1 }) { continue }
            let total = e.reduce(0, +)
            if total < best.error { best = (s, Float(alpha), total) }
        }
        return (best.scales, best.alpha, before, best.error)
    }

    /// W·diag(s), rows split across the cores.
    static func scaleColumns(_ w: [Float], rows: Int, cols: Int, by s: [Float]) -> [Float] {
        var out = [Float](repeating: 0, count: w.count)
        w.withUnsafeBufferPointer { wb in
            s.withUnsafeBufferPointer { sb in
                out.withUnsafeMutableBufferPointer { ob in
                    let wp = wb.baseAddress!, sp = sb.baseAddress!, op = ob.baseAddress!
                    MM1Parallel.chunks(rows, minPerChunk: max(1, 65536 / cols)) { r0, r1 in
                        for i in (r0 * cols)..<(r1 * cols) { op[i] = wp[i] * sp[i % cols] }
                    }
                }
            }
        }
        return out
    }

    /// Q's values divided column-wise by s: the weight the runtime effectively applies to x once x is divided by s.
    /// The per-group parameters are read once per group rather than once per element as in `value(row:col:)`.
    static func dequantized(_ q: QuantizedTensor, dividingBy s: [Float]) -> [Float] {
        var out = q.dequantized()
        let cols = q.cols
        out.withUnsafeMutableBufferPointer { ob in
            s.withUnsafeBufferPointer { sb in
                let op = ob.baseAddress!, sp = sb.baseAddress!
                MM1Parallel.chunks(q.rows, minPerChunk: max(1, 65536 / max(1, cols))) { r0, r1 in
                    for r in r0..<r1 { for c in 0..<cols { op[r * cols + c] /= sp[c] } }
                }
            }
        }
        return out
    }

    /// ‖x (W − Ŵ)ᵀ‖²: the squared output error of replacing W by Ŵ ([outRows, cols]) on inputs x ([rows, cols]).
    public static func outputError(x: [Float], rows n: Int, cols: Int, w: [Float], wHat: [Float], outRows: Int) -> Double {
        precondition(x.count == n * cols && w.count == outRows * cols && wHat.count == w.count, "outputError: shape mismatch")
        var d = [Float](repeating: 0, count: w.count)
        for i in 0..<w.count { d[i] = w[i] - wHat[i] }
        return squaredOutput(x: x, rows: n, cols: cols, w: d, outRows: outRows)
    }

    /// `outputError` divided by ‖x Wᵀ‖² (0 when both are 0), for reports.
    public static func relativeOutputError(x: [Float], rows n: Int, cols: Int, w: [Float], wHat: [Float], outRows: Int) -> Double {
        let e = outputError(x: x, rows: n, cols: cols, w: w, wHat: wHat, outRows: outRows)
        let ref = squaredOutput(x: x, rows: n, cols: cols, w: w, outRows: outRows)
        if ref == 0 { return e == 0 ? 0 : .infinity }
        return e / ref
    }

    /// ‖x Mᵀ‖² for M [outRows, cols]. Rows of M go through sgemm in slices so that the product buffer stays
    /// around 16 MB whatever the sizes.
    static func squaredOutput(x: [Float], rows n: Int, cols: Int, w m: [Float], outRows: Int) -> Double {
        let slice = max(1, min(outRows, (1 << 22) / max(1, n)))
        var y = [Float](repeating: 0, count: n * slice)
        var total: Double = 0
        x.withUnsafeBufferPointer { xb in
            m.withUnsafeBufferPointer { mb in
                y.withUnsafeMutableBufferPointer { yb in
                    for r0 in stride(from: 0, to: outRows, by: slice) {
                        let k = min(slice, outRows - r0)
                        Linear.gemmNT(xb.baseAddress!, rows: n, weight: mb.baseAddress! + r0 * cols, out: k, in: cols,
                                      into: yb.baseAddress!, ldy: k)
                        for i in 0..<(n * k) { let v = Double(yb[i]); total += v * v }
                    }
                }
            }
        }
        return total
    }
}
