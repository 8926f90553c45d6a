import CKernels
import COpenBLAS
import Foundation

/// GPTQ (Frantar et al., 2022): columns are quantized one at a time, and each column's rounding error is spread
/// over the columns not yet quantized. The spreading uses the inverse Hessian of the layer's squared output
/// error, H = XᵀX. This minimises ‖X(W − Ŵ)ᵀ‖² far better than rounding each weight on its own.
///
/// Numerics: everything is f32, including the LAPACK factorizations. Damping adds λ = damp · mean(diag H) to the
/// diagonal, which bounds the condition number of H at roughly max eig / λ. For damp = 0.01 that is ~10⁴–10⁵ in
/// practice, well within f32's 7 digits for the error-propagation weights. f64 would double the memory
/// (cols = 8192 gives 512 MB per matrix) and roughly the factorization time, for no measurable change in
/// quantization error. Memory is the caller's Hessian plus one cols × cols working matrix, which is factored in
/// place.
public enum GPTQ {
    /// Quantizes a [rows, cols] row-major weight given the Hessian `hessian` = [cols, cols] (XᵀX, summed or
    /// averaged over calibration rows; only its scale relative to `damp` matters).
    ///
    /// - Dead input channels (H_ii = 0: the input never fires) get H_ii = 1 and their weights set to 0 before
    ///   quantizing. Nothing is known about how they matter. Zeroing them costs nothing on the calibration data and
    ///   keeps their rows and columns of H⁻¹ trivial, and 0 is exactly representable in every format.
    /// - `damp` is relative to mean(diag H). If the Cholesky factorization fails (H + λI not positive definite in
    ///   f32), it is retried with 10×, 100× and 1000× the damping (damp = 0 retries with 0.001, 0.01, 0.1), then
    ///   an error is thrown.
    /// - Columns are processed in lazy blocks of `blockSize`. Inside a block the error is spread column by column.
    ///   After the block, one sgemm applies the block's errors to all remaining columns.
    /// - `actOrder` processes columns by decreasing H_ii, but groups stay runs of consecutive original columns (the
    ///   storage format has no per-column group index). A group's scale and zero are fixed when the first of its
    ///   columns comes up in the processing order, from the current error-updated values of all its columns.
    ///   For columns beyond the current block, that includes the block's pending updates. Every later column
    ///   of the group uses those parameters.
    ///
    /// The result has shape [rows, cols], with codes in the original column order.
    public static func quantize(weight: [Float], rows: Int, cols: Int, hessian: consuming [Float], spec: QuantSpec,
                                damp: Float = 0.01, blockSize: Int = 128, actOrder: Bool) throws -> QuantizedTensor {
        try run(weight: weight, rows: rows, cols: cols, hessian: consume hessian, spec: spec, damp: damp, blockSize: blockSize,
                actOrder: actOrder, keepWHat: false).tensor
    }

    /// GPTQ from the calibration rows themselves, `inputs` = X [inputRows, cols]: H = XᵀX is formed directly in the
    /// factor's buffer (and formed again on a damping retry), so only one cols × cols matrix exists at a time —
    /// for an 8192-wide input that is 256 MB less than passing H.
    public static func quantize(weight: [Float], rows: Int, cols: Int, inputs: [Float], inputRows: Int, spec: QuantSpec,
                                damp: Float = 0.01, blockSize: Int = 128, actOrder: Bool) throws -> QuantizedTensor {
        try run(weight: weight, rows: rows, cols: cols, source: .inputs(inputs, rows: inputRows), spec: spec, damp: damp,
                blockSize: blockSize, actOrder: actOrder, keepWHat: false).tensor
    }

    /// Where H comes from: the matrix, or the rows X it is the Gram matrix of.
    enum HessianSource {
        case matrix([Float])
        case inputs([Float], rows: Int)
    }

    struct Result {
        var tensor: QuantizedTensor
        /// The dequantized weight the error compensation worked with, original column order (empty unless asked).
        var wHat: [Float]
        /// The relative damping that finally factored.
        var damp: Float
    }

    static let dampAttempts = 4

    static func run(weight: [Float], rows: Int, cols: Int, hessian: consuming [Float], spec: QuantSpec, damp: Float,
                    blockSize: Int, actOrder: Bool, keepWHat: Bool) throws -> Result {
        try run(weight: weight, rows: rows, cols: cols, source: .matrix(consume hessian), spec: spec, damp: damp,
                blockSize: blockSize, actOrder: actOrder, keepWHat: keepWHat)
    }

    static func run(weight: [Float], rows: Int, cols: Int, source: consuming HessianSource, spec: QuantSpec, damp: Float,
                    blockSize: Int, actOrder: Bool, keepWHat: Bool) throws -> Result {
        try GroupQuantizer.checkWeight(weight, rows: rows, cols: cols, spec: spec)
        guard blockSize >= 1 else { throw MM1Error("GPTQ block size must be ≥ 1, not \(blockSize)") }
        guard damp >= 0, damp.isFinite else { throw MM1Error("GPTQ damping must be finite and ≥ 0, not \(damp)") }
        guard cols <= Int(Int32.max) / max(1, cols) else { throw MM1Error("GPTQ: \(cols) columns is too many") }
        var diag: [Float]
        switch source {
        case .matrix(let hessian):
            guard hessian.count == cols * cols else {
                throw MM1Error("Hessian has \(hessian.count) values, expected \(cols) × \(cols)")
            }
            try GroupQuantizer.checkFinite(hessian, what: "Hessian", cols: cols)
            diag = (0..<cols).map { hessian[$0 * cols + $0] }
        case .inputs(let x, let n):
            guard n >= 0, x.count == n * cols else { throw MM1Error("GPTQ inputs have \(x.count) values, expected \(n) × \(cols)") }
            try GroupQuantizer.checkFinite(x, what: "GPTQ inputs", cols: cols)
            var d = [Double](repeating: 0, count: cols)
            for r in 0..<n { for c in 0..<cols { let v = Double(x[r * cols + c]); d[c] += v * v } }
            diag = d.map { Float($0) }
        }
        if let i = diag.firstIndex(where: { $0 < 0 }) {
            throw MM1Error("Hessian diagonal [\(i)] is \(diag[i]) < 0: not a sum of squares XᵀX")
        }
        let dead = diag.map { $0 == 0 }
        for i in 0..<cols where dead[i] { diag[i] = 1 }
        let perm: [Int] = actOrder
            ? (0..<cols).sorted { diag[$0] != diag[$1] ? diag[$0] > diag[$1] : $0 < $1 }
            : Array(0..<cols)
        let meanDiag = Float(diag.reduce(0 as Double) { $0 + Double($1) } / Double(cols))

        // U: upper Cholesky factor of (P(H + λI)Pᵀ)⁻¹, row-major, so that UᵀU = H⁻¹ in processing order.
        var u = [Float](repeating: 0, count: cols * cols)
        var used: Float = -1
        let attempts = (0..<dampAttempts).map { k -> Float in
            let base = damp > 0 ? damp : (k == 0 ? 0 : 1e-4)
            return base * Float(pow(10, Double(k)))
        }
        for d in attempts {
            if try factor(&u, source: source, cols: cols, perm: perm, dead: dead, lambda: d * meanDiag) {
                used = d
                break
            }
        }
        guard used >= 0 else {
            throw MM1Error("GPTQ: the Hessian is not positive definite even with damping \(attempts.last!) × mean(diag H)"
                           + " (tried \(attempts.map { "\($0)" }.joined(separator: ", ")))")
        }
        // H is not needed once factored; when the caller handed it over (consuming), this frees cols² floats.
        source = .inputs([], rows: 0)

        // The weight in processing order, dead columns zeroed. Columns are replaced by their dequantized values as
        // they are quantized, so at the end this is Ŵ.
        var wp = [Float](repeating: 0, count: rows * cols)
        weight.withUnsafeBufferPointer { src in
            wp.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!
                MM1Parallel.chunks(rows, minPerChunk: max(1, 65536 / cols)) { r0, r1 in
                    for r in r0..<r1 {
                        for p in 0..<cols where !dead[perm[p]] { d[r * cols + p] = s[r * cols + perm[p]] }
                    }
                }
            }
        }

        // Groups in processing-order positions: each group's positions (ascending) and the first of them.
        let gs = spec.groupSize, groups = cols / gs
        var posOf = [Int](repeating: 0, count: cols)
        for p in 0..<cols { posOf[perm[p]] = p }
        var groupPos = [Int](repeating: 0, count: cols)
        for g in 0..<groups {
            let sorted = (g * gs..<(g + 1) * gs).map { posOf[$0] }.sorted()
            for i in 0..<gs { groupPos[g * gs + i] = sorted[i] }
        }
        let firstPos = (0..<groups).map { groupPos[$0 * gs] }
        let groupOfPos = perm.map { $0 / gs }

        var codes = [UInt8](repeating: 0, count: rows * cols)
        var scales = [Float](repeating: 0, count: rows * groups)
        var zeros = [Float](repeating: 0, count: rows * groups)
        let bs = min(blockSize, cols)
        var err = [Float](repeating: 0, count: rows * bs)
        try u.withUnsafeBufferPointer { ub in
            try wp.withUnsafeMutableBufferPointer { wb in
                try err.withUnsafeMutableBufferPointer { eb in
                    try codes.withUnsafeMutableBufferPointer { cb in
                        try scales.withUnsafeMutableBufferPointer { sb in
                            try zeros.withUnsafeMutableBufferPointer { zb in
                                let work = Work(spec: spec, rows: rows, cols: cols, perm: perm, groupPos: groupPos,
                                                firstPos: firstPos, groupOfPos: groupOfPos, u: ub.baseAddress!,
                                                w: wb.baseAddress!, err: eb.baseAddress!, codes: cb.baseAddress!,
                                                scales: sb.baseAddress!, zeros: zb.baseAddress!)
                                for i1 in stride(from: 0, to: cols, by: bs) {
                                    let i2 = min(i1 + bs, cols)
                                    try work.block(i1, i2)
                                    if i2 < cols {
                                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(cols - i2),
                                                    Int32(i2 - i1), -1, work.err, Int32(i2 - i1), work.u + i1 * cols + i2,
                                                    Int32(cols), 1, work.w + i2, Int32(cols))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        var wHat: [Float] = []
        if keepWHat {
            wHat = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows { for p in 0..<cols { wHat[r * cols + perm[p]] = wp[r * cols + p] } }
        }
        let tensor = QuantizedTensor(spec: spec, shape: [rows, cols], codes: codes, scales: scales,
                                     zeros: spec.scheme == .asym ? zeros : nil)
        return Result(tensor: tensor, wHat: wHat, damp: used)
    }

    /// The state of one GPTQ pass, all in processing order except `codes` (original column order). Row-parallel
    /// workers write disjoint rows of `w`, `err`, `codes`, `scales` and `zeros`.
    struct Work {
        let spec: QuantSpec
        let rows: Int, cols: Int
        let perm: [Int]
        /// Each group's positions, ascending, `groupSize` per group.
        let groupPos: [Int]
        let firstPos: [Int]
        let groupOfPos: [Int]
        let u: UnsafePointer<Float>
        let w: UnsafeMutablePointer<Float>
        /// [rows, i2 − i1] scaled errors of the current block, the left operand of the block's sgemm.
        let err: UnsafeMutablePointer<Float>
        let codes: UnsafeMutablePointer<UInt8>
        let scales: UnsafeMutablePointer<Float>
        let zeros: UnsafeMutablePointer<Float>

        /// Quantizes positions i1..<i2 of every row, spreading each column's error over the rest of the block.
        func block(_ i1: Int, _ i2: Int) throws {
            let nb = i2 - i1, gs = spec.groupSize, groups = cols / gs
            // A group whose parameters are fixed inside this block may have columns past it, which have not yet
            // received the block's updates. The U entries that carry those updates are gathered once for all
            // rows (0 for the group's columns inside the block, which are updated eagerly).
            var pendingAt = [Int](repeating: -1, count: groups)
            var pending: [Float] = []
            for g in 0..<groups where firstPos[g] >= i1 && firstPos[g] < i2 {
                let p = firstPos[g]
                guard groupPos[g * gs + gs - 1] >= i2, p > i1 else { continue }
                pendingAt[g] = pending.count
                for j in i1..<p {
                    for k in 0..<gs {
                        let q = groupPos[g * gs + k]
                        pending.append(q >= i2 ? u[j * cols + q] : 0)
                    }
                }
            }
            let (lo, hi) = GroupQuantizer.levelRange(spec)
            let failure = QuantWorkerError()
            pending.withUnsafeBufferPointer { pb in
                MM1Parallel.chunks(rows, minPerChunk: max(1, 16384 / (nb * nb))) { r0, r1 in
                    let vals = UnsafeMutablePointer<Float>.allocate(capacity: gs)
                    defer { vals.deallocate() }
                    do {
                        for r in r0..<r1 {
                            let wr = w + r * cols, er = err + r * nb
                            for p in i1..<i2 {
                                let g = groupOfPos[p], gi = r * groups + g
                                if firstPos[g] == p {
                                    for k in 0..<gs { vals[k] = wr[groupPos[g * gs + k]] }
                                    if pendingAt[g] >= 0 {
                                        var ug = pb.baseAddress! + pendingAt[g]
                                        for j in 0..<(p - i1) {
                                            let e = er[j]
                                            if e != 0 { for k in 0..<gs { vals[k] -= e * ug[k] } }
                                            ug += gs
                                        }
                                    }
                                    let prm = try GroupQuantizer.params(for: UnsafeBufferPointer(start: vals, count: gs), spec: spec)
                                    scales[gi] = prm.scale
                                    zeros[gi] = prm.zero
                                }
                                let prm = GroupParams(scale: scales[gi], zero: zeros[gi])
                                let x = wr[p]
                                guard x.isFinite else {
                                    throw MM1Error("GPTQ: error compensation produced a non-finite weight at column \(perm[p]);"
                                                   + " the Hessian is too ill-conditioned (raise the damping)")
                                }
                                let l = GroupQuantizer.level(x, prm, lo: lo, hi: hi)
                                let dq = GroupQuantizer.dequant(l, prm)
                                codes[r * cols + perm[p]] = GroupQuantizer.storedCode(l, bits: spec.bits)
                                let urow = u + p * cols
                                let e = (x - dq) / urow[p]
                                wr[p] = dq
                                er[p - i1] = e
                                if e != 0 { for j in (p + 1)..<i2 { wr[j] -= e * urow[j] } }
                            }
                        }
                    } catch {
                        failure.record(error)
                    }
                }
            }
            try failure.rethrow()
        }
    }

    /// Fills `u` with the upper Cholesky factor U of (P(H + λI)Pᵀ)⁻¹, row-major, UᵀU = H⁻¹ in processing order.
    /// Returns false when H + λI is not positive definite in f32.
    ///
    /// U comes from one factorization and one triangular inverse, without forming H⁻¹. If H = R·Rᵀ with R upper
    /// triangular, then U = R⁻¹. An upper-times-transpose factor is the ordinary Cholesky factor of H with rows
    /// and columns in reverse order (J H J = L Lᵀ gives R = J L J). So the reversed matrix is written, factored
    /// and inverted in place, and the buffer is reversed back. The usual route (factor, invert, factor the
    /// inverse) does twice the work and loses accuracy forming H⁻¹.
    ///
    /// LAPACK is column-major. With potrf('U') on the reversed matrix B = J H J, the buffer holds Ũ = Lᵀ at
    /// column-major (j, i), j ≤ i. strtri('U') replaces it with Ũ⁻¹ = (L⁻¹)ᵀ. Row-major U[a][b] = L⁻¹[n−1−a][n−1−b]
    /// then sits at flat index n² − 1 − (a·n + b), so reversing the flat buffer yields U. The lower triangle keeps
    /// stale values and is never read.
    static func factor(_ u: inout [Float], source: HessianSource, cols n: Int, perm: [Int], dead: [Bool], lambda: Float) throws -> Bool {
        switch source {
        case .matrix(let hessian): gather(&u, hessian: hessian, cols: n, perm: perm, dead: dead, lambda: lambda)
        case .inputs(let x, let rows): gram(&u, inputs: x, rows: rows, cols: n, perm: perm, dead: dead, lambda: lambda)
        }
        return try factorInPlace(&u, cols: n)
    }

    /// B = J P (XᵀX + λI) Pᵀ J formed from the rows: the columns of X are reordered once (n × cols), then one ssyrk.
    static func gram(_ u: inout [Float], inputs x: [Float], rows m: Int, cols n: Int, perm: [Int], dead: [Bool], lambda: Float) {
        var xr = [Float](repeating: 0, count: max(1, m * n))
        for r in 0..<m {
            for j in 0..<n { xr[r * n + j] = x[r * n + perm[n - 1 - j]] }
        }
        u.withUnsafeMutableBufferPointer { ub in
            xr.withUnsafeBufferPointer { xb in
                let d = ub.baseAddress!
                if m > 0 {
                    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(m), 1, xb.baseAddress!, Int32(n), 0, d, Int32(n))
                } else {
                    d.update(repeating: 0, count: n * n)
                }
                // ssyrk filled the upper triangle: mirror it (writes only below the diagonal, reads only above),
                // then, in a second pass that touches only its own row, zero dead channels and add λ.
                MM1Parallel.chunks(n, minPerChunk: max(1, 65536 / n)) { i0, i1 in
                    for i in i0..<i1 {
                        let row = d + i * n
                        for j in 0..<i { row[j] = d[j * n + i] }
                    }
                }
                MM1Parallel.chunks(n, minPerChunk: max(1, 65536 / n)) { i0, i1 in
                    for i in i0..<i1 {
                        let row = d + i * n
                        if dead[perm[n - 1 - i]] {
                            for j in 0..<n { row[j] = 0 }
                            row[i] = 1 + lambda
                        } else {
                            for j in 0..<n where dead[perm[n - 1 - j]] { row[j] = 0 }
                            row[i] += lambda
                        }
                    }
                }
            }
        }
    }

    static func gather(_ u: inout [Float], hessian: [Float], cols n: Int, perm: [Int], dead: [Bool], lambda: Float) {
        hessian.withUnsafeBufferPointer { hb in
            u.withUnsafeMutableBufferPointer { ub in
                let h = hb.baseAddress!, d = ub.baseAddress!
                MM1Parallel.chunks(n, minPerChunk: max(1, 65536 / n)) { i0, i1 in
                    for i in i0..<i1 {
                        // Reversed processing order: row i of B is position n − 1 − i.
                        let pi = perm[n - 1 - i], row = d + i * n
                        if dead[pi] {
                            row.update(repeating: 0, count: n)
                            row[i] = 1 + lambda
                            continue
                        }
                        let src = h + pi * n
                        for j in 0..<n {
                            let pj = perm[n - 1 - j]
                            row[j] = dead[pj] ? 0 : src[pj]
                        }
                        row[i] += lambda
                    }
                }
            }
        }
    }

    /// Cholesky-factors and inverts the prepared B in place (see `factor`); false when B is not positive definite.
    static func factorInPlace(_ u: inout [Float], cols n: Int) throws -> Bool {
        var info: Int32 = 0
        var n32 = Int32(n)
        var upper: CChar = 0x55, nonUnit: CChar = 0x4E  // "U", "N"
        try u.withUnsafeMutableBufferPointer { ub in
            spotrf_(&upper, &n32, ub.baseAddress, &n32, &info, 1)
            if info < 0 { throw MM1Error("GPTQ: LAPACK spotrf rejected argument \(-info)") }
            guard info == 0 else { return }
            strtri_(&upper, &nonUnit, &n32, ub.baseAddress, &n32, &info, 1, 1)
            if info < 0 { throw MM1Error("GPTQ: LAPACK strtri rejected argument \(-info)") }
        }
        guard info == 0 else { return false }
        u.withUnsafeMutableBufferPointer { ub in
            let p = ub.baseAddress!, total = n * n
            MM1Parallel.chunks(total / 2, minPerChunk: 1 << 18) { lo, hi in
                for k in lo..<hi { let t = p[k]; p[k] = p[total - 1 - k]; p[total - 1 - k] = t }
            }
        }
        for i in 0..<n {
            let v = u[i * n + i]
            if !(v.isFinite && v > 0) { return false }
        }
        return true
    }
}
