import Foundation

/// The per-token comparisons of verification (formats/verify.md §4), in Double.
public enum VerifyMath {
    public static func logSumExp(_ row: UnsafeBufferPointer<Float>) -> Double {
        var m = -Double.infinity
        for v in row where Double(v) > m { m = Double(v) }
        guard m.isFinite else { return m }
        var s = 0.0
        for v in row { s += exp(Double(v) - m) }
        return m + log(s)
    }

    /// Indices of the `k` largest values, descending; ties keep the lower index.
    static func topIndices(_ row: UnsafeBufferPointer<Float>, k: Int) -> [Int] {
        var best: [Int] = []
        best.reserveCapacity(k + 1)
        for i in 0..<row.count {
            let v = row[i]
            if best.count == k, let last = best.last, !(v > row[last]) { continue }
            var at = best.count
            while at > 0 && v > row[best[at - 1]] { at -= 1 }
            best.insert(i, at: at)
            if best.count > k { best.removeLast() }
        }
        return best
    }

    /// One position compared.
    public struct Token: Sendable {
        /// KL(reference ‖ packed) in nats.
        public var kld: Double
        public var top1Agrees: Bool
        /// |top-5(reference) ∩ top-5(packed)|, 0…5.
        public var top5Common: Int
        /// p_reference(t) − p_packed(t) for the reference's top token t.
        public var deltaTopP: Double
        /// Over the compared logits (all, or the reference's kept top k).
        public var maxAbsDelta: Double
        public var sumSqDelta: Double
        public var sumSqRef: Double
    }

    /// Compares the packed model's full logits row with the reference's row, given whole (`refFull`) or as its k
    /// largest entries (ids descending) plus log-sum-exp. With the top k only, the KL divergence is the one between
    /// the two distributions over k + 1 outcomes (the kept tokens and "any other token"): never more than the full
    /// divergence, and equal to it when the rest carries no mass (formats/verify.md §3).
    public static func compare(packed q: UnsafeBufferPointer<Float>, refFull: UnsafeBufferPointer<Float>?,
                               refIDs: ArraySlice<Int32>, refValues: ArraySlice<Float>, refLSE: Double) -> Token {
        let lseQ = logSumExp(q)
        let topQ = topIndices(q, k: 5)
        var kld = 0.0, maxD = 0.0, sd = 0.0, sr = 0.0
        let refTop: [Int]
        let pTop: Double
        if let p = refFull {
            let lseP = logSumExp(p)
            for i in 0..<p.count {
                let lp = Double(p[i]) - lseP, lq = Double(q[i]) - lseQ
                let pi = exp(lp)
                if pi > 0 { kld += pi * (lp - lq) }
                let d = Double(q[i]) - Double(p[i])
                maxD = max(maxD, abs(d)); sd += d * d; sr += Double(p[i]) * Double(p[i])
            }
            refTop = topIndices(p, k: 5)
            pTop = exp(Double(p[refTop[0]]) - lseP)
        } else {
            var massP = 0.0, massQ = 0.0
            for (id, v) in zip(refIDs, refValues) {
                let lp = Double(v) - refLSE, lq = Double(q[Int(id)]) - lseQ
                let pi = exp(lp)
                massP += pi; massQ += exp(lq)
                if pi > 0 { kld += pi * (lp - lq) }
                let d = Double(q[Int(id)]) - Double(v)
                maxD = max(maxD, abs(d)); sd += d * d; sr += Double(v) * Double(v)
            }
            let restP = max(0, 1 - massP), restQ = max(0, 1 - massQ)
            if restP > 1e-12 { kld += restP * (log(restP) - log(max(restQ, 1e-300))) }
            kld = max(0, kld)
            refTop = refIDs.prefix(5).map { Int($0) }
            pTop = exp(Double(refValues[refValues.startIndex]) - refLSE)
        }
        let qTop = exp(Double(q[refTop[0]]) - lseQ)
        return Token(kld: kld, top1Agrees: refTop[0] == topQ[0], top5Common: Set(refTop).intersection(topQ).count,
                     deltaTopP: pTop - qTop, maxAbsDelta: maxD, sumSqDelta: sd, sumSqRef: sr)
    }

    /// Nearest-rank percentile of unsorted values (q in 0…1).
    public static func percentile(_ values: [Double], _ q: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let s = values.sorted()
        let rank = max(1, Int((q * Double(s.count)).rounded(.up)))
        return s[min(rank, s.count) - 1]
    }

    /// Σ(a − b)² and Σb² of two equal-length vectors (b is the reference).
    public static func squaredError(_ a: [Float], _ b: [Float]) -> (delta: Double, ref: Double) {
        precondition(a.count == b.count)
        var sd = 0.0, sr = 0.0
        for i in 0..<a.count {
            let d = Double(a[i]) - Double(b[i])
            sd += d * d
            sr += Double(b[i]) * Double(b[i])
        }
        return (sd, sr)
    }
}
