import CKernels
import COpenBLAS
import Foundation

/// Scaled dot-product attention over row-major `[T, heads·Dh]` buffers (the layout the q/k/v projections produce),
/// so a head is a strided column block and needs no copy.
public enum Attention {
    /// Query rows per work item: bounds the score buffer to `block × T` and skips the masked upper triangle.
    static let block = 64

    /// Causal grouped-query attention: query head h reads key/value head `h / (heads/kvHeads)`. Query row i attends
    /// to key rows 0...i. Scores are `q·k · scale` (default `1/√Dh`), softmax in f32. Returns [T, heads·Dh].
    public static func causal(q: [Float], k: [Float], v: [Float], count t: Int, heads nq: Int, kvHeads nkv: Int,
                              headDim dh: Int, scale: Float? = nil) -> [Float] {
        causal(q: q, k: k, v: v, count: t, heads: nq, kvHeads: nkv, headDim: dh, scale: scale, spread: true)
    }

    /// `spread`: run the (head, block) work items on all cores with single-threaded sgemm calls (OpenBLAS's own
    /// threads fight when several threads call it at once, 4× slower at T = 2048); otherwise one after another,
    /// each sgemm threaded by OpenBLAS.
    static func causal(q: [Float], k: [Float], v: [Float], count t: Int, heads nq: Int, kvHeads nkv: Int,
                       headDim dh: Int, scale: Float?, spread: Bool) -> [Float] {
        precondition(nkv > 0 && nq % nkv == 0, "attention: heads must be a multiple of kv heads")
        precondition(q.count == t * nq * dh && k.count == t * nkv * dh && v.count == t * nkv * dh, "attention: shape mismatch")
        let scale = scale ?? 1 / Float(dh).squareRoot()
        let group = nq / nkv
        let qw = nq * dh, kw = nkv * dh
        var out = [Float](repeating: 0, count: t * qw)
        guard t > 0 else { return out }
        let blocks = (t + block - 1) / block
        q.withUnsafeBufferPointer { qb in
            k.withUnsafeBufferPointer { kb in
                v.withUnsafeBufferPointer { vb in
                    out.withUnsafeMutableBufferPointer { ob in
                        let qp = qb.baseAddress!, kp = kb.baseAddress!, vp = vb.baseAddress!, op = ob.baseAddress!
                        let run: (Int) -> Void = { job in
                            // Larger blocks first (they are the later rows), for better balance.
                            let h = job % nq, b = blocks - 1 - job / nq
                            let g = h / group
                            let r0 = b * block, r1 = min(t, r0 + block), m = r1 - r0, n = r1
                            let s = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
                            defer { s.deallocate() }
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(dh), scale,
                                        qp + r0 * qw + h * dh, Int32(qw), kp + g * dh, Int32(kw), 0, s, Int32(n))
                            for i in 0..<m {
                                let row = s + i * n
                                let valid = r0 + i + 1
                                softmaxRow(row, valid)
                                if valid < n { (row + valid).update(repeating: 0, count: n - valid) }
                            }
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(dh), Int32(n), 1,
                                        s, Int32(n), vp + g * dh, Int32(kw), 0, op + r0 * qw + h * dh, Int32(qw))
                        }
                        if spread && MM1Parallel.cores > 1 {
                            BLASThreads.single { MM1Parallel.forEach(nq * blocks, run) }
                        } else {
                            for job in 0..<(nq * blocks) { run(job) }
                        }
                    }
                }
            }
        }
        return out
    }

    /// Max-subtracted softmax of `n` values in place.
    @inline(__always)
    static func softmaxRow(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        mm1_softmax_f32(p, n)
    }

    /// Straightforward reference implementation (loops, no BLAS), for tests.
    static func causalReference(q: [Float], k: [Float], v: [Float], count t: Int, heads nq: Int, kvHeads nkv: Int,
                                headDim dh: Int) -> [Float] {
        let group = nq / nkv, qw = nq * dh, kw = nkv * dh
        let scale = 1 / Double(dh).squareRoot()
        var out = [Float](repeating: 0, count: t * qw)
        for h in 0..<nq {
            let g = h / group
            for i in 0..<t {
                var sc = [Double](repeating: 0, count: i + 1)
                for j in 0...i {
                    var d = 0.0
                    for c in 0..<dh { d += Double(q[i * qw + h * dh + c]) * Double(k[j * kw + g * dh + c]) }
                    sc[j] = d * scale
                }
                let m = sc.max()!
                let e = sc.map { Foundation.exp($0 - m) }
                let z = e.reduce(0, +)
                for c in 0..<dh {
                    var acc = 0.0
                    for j in 0...i { acc += e[j] / z * Double(v[j * kw + g * dh + c]) }
                    out[i * qw + h * dh + c] = Float(acc)
                }
            }
        }
        return out
    }
}

/// OpenBLAS's thread count is process-wide. `single` runs `body` with it set to 1 (for code that calls sgemm from
/// several threads at once) and restores the previous count afterwards. A BLAS call made by another thread meanwhile
/// still computes correctly, only on one thread.
enum BLASThreads {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var depth = 0
    nonisolated(unsafe) private static var saved: Int32 = 1

    static func single<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        if depth == 0 {
            saved = openblas_get_num_threads()
            if saved != 1 { openblas_set_num_threads(1) }
        }
        depth += 1
        lock.unlock()
        defer {
            lock.lock()
            depth -= 1
            if depth == 0 && saved != 1 { openblas_set_num_threads(saved) }
            lock.unlock()
        }
        return try body()
    }
}
