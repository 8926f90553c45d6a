import CKernels
import COpenBLAS
import Foundation

/// Dense math on row-major f32 buffers. Matrix products go through OpenBLAS; the rest are plain loops that the
/// compiler vectorises. Shapes are passed explicitly; callers own the buffers.
public enum Linear {
    /// y[T, out] = x[T, in] · W[out, in]ᵀ (+ bias[out]) — the canonical `[out, in]` weight layout.
    public static func forward(_ x: [Float], rows t: Int, weight w: [Float], out: Int, in k: Int, bias: [Float]? = nil) -> [Float] {
        precondition(x.count == t * k && w.count == out * k, "linear: shape mismatch")
        precondition(bias == nil || bias!.count == out, "linear: bias shape mismatch")
        var y = [Float](repeating: 0, count: t * out)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                y.withUnsafeMutableBufferPointer { yp in
                    if let bias {
                        bias.withUnsafeBufferPointer { bp in
                            for r in 0..<t { (yp.baseAddress! + r * out).update(from: bp.baseAddress!, count: out) }
                        }
                    }
                    gemmNT(xp.baseAddress!, rows: t, weight: wp.baseAddress!, out: out, in: k, into: yp.baseAddress!, ldy: out,
                           accumulate: bias != nil)
                }
            }
        }
        return y
    }

    /// y[t, out] (row stride `ldy`) = x[t, in] · W[out, in]ᵀ, added to y when `accumulate`. Pointer form of
    /// `forward` for weights that are slices of a larger buffer and outputs that are column blocks.
    public static func gemmNT(_ x: UnsafePointer<Float>, rows t: Int, weight w: UnsafePointer<Float>, out: Int, in k: Int,
                              into y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool = false) {
        guard t > 0, out > 0 else { return }
        if k == 0 {
            if !accumulate { for r in 0..<t { (y + r * ldy).update(repeating: 0, count: out) } }
            return
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(out), Int32(k), 1,
                    x, Int32(k), w, Int32(k), accumulate ? 1 : 0, y, Int32(ldy))
    }

    /// C[m, n] = A[m, k] · B[k, n] (row-major, no transposes).
    public static func matmul(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
        precondition(a.count == m * k && b.count == k * n, "matmul: shape mismatch")
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1,
                                ap.baseAddress, Int32(k), bp.baseAddress, Int32(n), 0, cp.baseAddress, Int32(n))
                }
            }
        }
        return c
    }

    /// The OpenBLAS kernel in use (Debian's may pick a slow generic one on some CPUs; see README).
    public static var blasCore: String { String(cString: openblas_get_corename()) }
}

public enum Norm {
    /// LayerNorm over the last dimension `d` of `rows` rows. Rows are split across the cores when there are many.
    public static func layerNorm(_ x: [Float], rows: Int, d: Int, weight: [Float], bias: [Float], eps: Float) -> [Float] {
        precondition(x.count == rows * d && weight.count >= d && bias.count >= d, "layerNorm: shape mismatch")
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xb in
            weight.withUnsafeBufferPointer { wb in
                bias.withUnsafeBufferPointer { bb in
                    y.withUnsafeMutableBufferPointer { yb in
                        let xp = xb.baseAddress!, wp = wb.baseAddress!, bp = bb.baseAddress!, yp = yb.baseAddress!
                        MM1Parallel.chunks(rows, minPerChunk: max(1, 16384 / max(1, d))) { lo, hi in
                            for r in lo..<hi {
                                let xr = xp + r * d, yr = yp + r * d
                                var mean: Float = 0
                                for i in 0..<d { mean += xr[i] }
                                mean /= Float(d)
                                var v: Float = 0
                                for i in 0..<d { let c = xr[i] - mean; v += c * c }
                                let inv = 1 / (v / Float(d) + eps).squareRoot()
                                for i in 0..<d { yr[i] = (xr[i] - mean) * inv * wp[i] + bp[i] }
                            }
                        }
                    }
                }
            }
        }
        return y
    }

    /// RMSNorm (Llama): x / sqrt(mean(x²) + eps) · weight. The statistics are accumulated in f32, as torch does
    /// for f32 inputs. Rows are split across the cores when there are many.
    public static func rmsNorm(_ x: [Float], rows: Int, d: Int, weight: [Float], eps: Float) -> [Float] {
        precondition(x.count == rows * d && weight.count == d, "rmsNorm: shape mismatch")
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xb in
            weight.withUnsafeBufferPointer { wb in
                y.withUnsafeMutableBufferPointer { yb in
                    let xp = xb.baseAddress!, wp = wb.baseAddress!, yp = yb.baseAddress!
                    MM1Parallel.chunks(rows, minPerChunk: max(1, 16384 / max(1, d))) { lo, hi in
                        for r in lo..<hi {
                            let xr = xp + r * d, yr = yp + r * d
                            var ss: Float = 0
                            for i in 0..<d { ss += xr[i] * xr[i] }
                            let inv = 1 / (ss / Float(d) + eps).squareRoot()
                            for i in 0..<d { yr[i] = (xr[i] * inv) * wp[i] }
                        }
                    }
                }
            }
        }
        return y
    }
}

public enum Activation {
    public static func apply(_ name: String, _ x: inout [Float]) throws {
        let f: (UnsafeMutablePointer<Float>, Int) -> Void
        switch name {
        case "silu": f = { p, n in mm1_sigmoid_gate_f32(p, n, 1) }
        case "quick_gelu": f = { p, n in mm1_sigmoid_gate_f32(p, n, 1.702) }
        case "gelu": f = { p, n in for i in 0..<n { p[i] = 0.5 * p[i] * (1 + erff(p[i] / Float(2).squareRoot())) } }
        case "gelu_tanh", "gelu_pytorch_tanh":
            f = { p, n in
                for i in 0..<n {
                    let v = p[i]
                    p[i] = 0.5 * v * (1 + tanhf(0.7978845608028654 * (v + 0.044715 * v * v * v)))
                }
            }
        default: throw MM1Error("activation '\(name)' is not supported")
        }
        x.withUnsafeMutableBufferPointer { xb in
            guard let base = xb.baseAddress else { return }
            let box = UnsafeSendableBox(base)
            MM1Parallel.chunks(xb.count, minPerChunk: 32768) { lo, hi in f(box.value + lo, hi - lo) }
        }
    }

    /// Softmax over the last dimension `d` of `rows` rows, in place (max-subtracted).
    public static func softmax(_ x: inout [Float], rows: Int, d: Int) {
        x.withUnsafeMutableBufferPointer { xb in
            guard let p = xb.baseAddress else { return }
            for r in 0..<rows { mm1_softmax_f32(p + r * d, d) }
        }
    }
}
