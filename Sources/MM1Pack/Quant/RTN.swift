import Foundation

/// Round-to-nearest quantization, group by group, with an optional search for the clip ratio of each group.
public enum RTN {
    /// Clip ratios tried by the search: 1, 0.975, …, 0.5 (21 values). Below half the range the error from clipping
    /// the group's largest weights outweighs the finer grid for the rest, and a 0.025 step is finer than the
    /// differences a group can show. Each ratio costs one pass over the group.
    public static let clipRatios: [Float] = (0...20).map { Float(40 - $0) / 40 }

    /// Quantizes a [rows, cols] row-major weight. With `clipSearch`, each group keeps the ratio from `clipRatios`
    /// that minimises Σ_c imp[c] · (w_c − ŵ_c)² over its columns. `importance` has one nonnegative value per input
    /// column (e.g. mean x² of calibration activations); nil means all ones. Ratio 1 is tried first and a smaller
    /// ratio must be strictly better, so the search never does worse than plain RTN under that weighted error.
    /// The result has shape [rows, cols].
    ///
    /// `groupHessians` ([cols / groupSize, groupSize, groupSize], the diagonal blocks of XᵀX over calibration rows X)
    /// replaces the per-channel weighting by the group's true output error dᵀ H_g d, d = w − ŵ over the group: it
    /// sees how the rounding errors of correlated channels add up or cancel, at groupSize² per ratio and group.
    public static func quantize(weight: [Float], rows: Int, cols: Int, spec: QuantSpec, clipSearch: Bool = false,
                                importance: [Float]? = nil, groupHessians: [Float]? = nil) throws -> QuantizedTensor {
        try GroupQuantizer.checkWeight(weight, rows: rows, cols: cols, spec: spec)
        if let groupHessians {
            guard groupHessians.count == cols * spec.groupSize else {
                throw MM1Error("group Hessians have \(groupHessians.count) values, expected \(cols / spec.groupSize) × \(spec.groupSize)²")
            }
        }
        if let importance {
            guard importance.count == cols else {
                throw MM1Error("importance has \(importance.count) values, expected one per input column (\(cols))")
            }
            guard importance.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw MM1Error("importance values must be finite and nonnegative")
            }
        }
        let gs = spec.groupSize, groups = cols / gs
        let (lo, hi) = GroupQuantizer.levelRange(spec)
        var codes = [UInt8](repeating: 0, count: rows * cols)
        var scales = [Float](repeating: 0, count: rows * groups)
        var zeros = [Float](repeating: 0, count: rows * groups)
        let failure = QuantWorkerError()
        let ones = importance == nil && clipSearch ? [Float](repeating: 1, count: cols) : []
        let imp = importance ?? ones
        let gh = groupHessians ?? []
        let hasHessians = groupHessians != nil  // an empty array's buffer may still have a base address
        weight.withUnsafeBufferPointer { wb in
          gh.withUnsafeBufferPointer { hb in
            imp.withUnsafeBufferPointer { ib in
                codes.withUnsafeMutableBufferPointer { cb in
                    scales.withUnsafeMutableBufferPointer { sb in
                        zeros.withUnsafeMutableBufferPointer { zb in
                            let wp = wb.baseAddress!, cp = cb.baseAddress!, sp = sb.baseAddress!, zp = zb.baseAddress!
                            let ip = ib.baseAddress
                            MM1Parallel.chunks(rows, minPerChunk: max(1, 32768 / cols)) { r0, r1 in
                                do {
                                    for r in r0..<r1 {
                                        for g in 0..<groups {
                                            let base = r * cols + g * gs
                                            let v = UnsafeBufferPointer(start: wp + base, count: gs)
                                            let st = try GroupQuantizer.stats(v)
                                            var best = try GroupQuantizer.params(st, spec: spec, clip: 1)
                                            if clipSearch && best.scale != 0, hasHessians, let hp = hb.baseAddress {
                                                let h = hp + g * gs * gs
                                                var d = [Float](repeating: 0, count: gs)
                                                var bestErr = quadraticError(v, best, h, &d, lo: lo, hi: hi)
                                                for ratio in clipRatios.dropFirst() where bestErr > 0 {
                                                    let p = try GroupQuantizer.params(st, spec: spec, clip: ratio)
                                                    let e = quadraticError(v, p, h, &d, lo: lo, hi: hi)
                                                    if e < bestErr { bestErr = e; best = p }
                                                }
                                            } else if clipSearch && best.scale != 0, let ip {
                                                let w = ip + g * gs
                                                var bestErr = weightedError(v, best, w, lo: lo, hi: hi)
                                                for ratio in clipRatios.dropFirst() where bestErr > 0 {
                                                    let p = try GroupQuantizer.params(st, spec: spec, clip: ratio)
                                                    let e = weightedError(v, p, w, lo: lo, hi: hi)
                                                    if e < bestErr { bestErr = e; best = p }
                                                }
                                            }
                                            sp[r * groups + g] = best.scale
                                            zp[r * groups + g] = best.zero
                                            for i in 0..<gs {
                                                let l = GroupQuantizer.level(v[i], best, lo: lo, hi: hi)
                                                cp[base + i] = GroupQuantizer.storedCode(l, bits: spec.bits)
                                            }
                                        }
                                    }
                                } catch {
                                    failure.record(error)
                                }
                            }
                        }
                    }
                }
            }
        }
          }
        try failure.rethrow()
        return QuantizedTensor(spec: spec, shape: [rows, cols], codes: codes, scales: scales,
                               zeros: spec.scheme == .asym ? zeros : nil)
    }

    /// dᵀ H d with d = v − ŵ for one group under parameters `p` (`d` is scratch of the group's size).
    static func quadraticError(_ v: UnsafeBufferPointer<Float>, _ p: GroupParams, _ h: UnsafePointer<Float>,
                               _ d: inout [Float], lo: Float, hi: Float) -> Double {
        let n = v.count
        for i in 0..<n { d[i] = v[i] - GroupQuantizer.dequant(GroupQuantizer.level(v[i], p, lo: lo, hi: hi), p) }
        var total = 0.0
        d.withUnsafeBufferPointer { dp in
            for i in 0..<n {
                let row = h + i * n
                var acc: Float = 0
                for j in 0..<n { acc += row[j] * dp[j] }
                total += Double(acc) * Double(dp[i])
            }
        }
        return total
    }

    /// Σ imp[i] · (v[i] − ŵ[i])² for one group under parameters `p`. Four partial sums break the serial chain of
    /// f64 additions that otherwise bounds the clip search; the order is fixed, so the result is deterministic.
    @inline(__always)
    static func weightedError(_ v: UnsafeBufferPointer<Float>, _ p: GroupParams, _ imp: UnsafePointer<Float>,
                              lo: Float, hi: Float) -> Double {
        @inline(__always) func term(_ i: Int) -> Double {
            let d = Double(v[i] - GroupQuantizer.dequant(GroupQuantizer.level(v[i], p, lo: lo, hi: hi), p))
            return Double(imp[i]) * d * d
        }
        var a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
        var i = 0
        while i + 4 <= v.count {
            a0 += term(i); a1 += term(i + 1); a2 += term(i + 2); a3 += term(i + 3)
            i += 4
        }
        while i < v.count { a0 += term(i); i += 1 }
        return (a0 + a1) + (a2 + a3)
    }
}
